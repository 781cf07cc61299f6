/* cpu_meminfo.c — ops_mem_info (ops.h): the host's available memory for the CPU backend, and the
 * dispatch to the CUDA backend's device query. It does not track the backend's own allocations
 * and does not read cgroup limits. */
#include <stdio.h>

#include "kernels/ops.h"

static int host_mem_info(size_t *free_bytes, size_t *total_bytes) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    unsigned long long avail = 0, total = 0;
    int have_avail = 0, have_total = 0;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemAvailable: %llu kB", &avail) == 1)
            have_avail = 1;
        else if (sscanf(line, "MemTotal: %llu kB", &total) == 1)
            have_total = 1;
    }
    fclose(f);
    if (!have_avail || !have_total) return -1;
    *free_bytes = (size_t)(avail * 1024ull);
    *total_bytes = (size_t)(total * 1024ull);
    return 0;
}

int ops_mem_info(const ops_ctx *c, size_t *free_bytes, size_t *total_bytes) {
    if (!free_bytes || !total_bytes) return -1;
    *free_bytes = *total_bytes = 0;
    if (c && c->device_index >= 0)
        return ops_cuda_mem_info(c->device_index, free_bytes, total_bytes);
    return host_mem_info(free_bytes, total_bytes);
}

#ifndef CHORD_HAVE_CUDA
int ops_cuda_mem_info(int device_index, size_t *free_bytes, size_t *total_bytes) {
    (void)device_index;
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return -1;
}
#endif
