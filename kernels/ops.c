/* ops.c — opening a backend by device name (ops.h). Backends live in kernels/cpu and
 * kernels/cuda; this file only dispatches and supplies the CUDA stubs when CUDA is not built. */
#include "kernels/ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

ops_ctx *ops_open(const char *device, int threads, char *err, size_t errlen) {
    if (!device || !*device || strcmp(device, "auto") == 0) {
        if (ops_cuda_device_count() > 0) return ops_cuda_open(0, err, errlen);
        return ops_cpu_open(threads, err, errlen);
    }
    if (strcmp(device, "cpu") == 0) return ops_cpu_open(threads, err, errlen);
    if (strcmp(device, "cuda") == 0) return ops_cuda_open(0, err, errlen);
    if (strncmp(device, "cuda:", 5) == 0) {
        char *end = NULL;
        long idx = strtol(device + 5, &end, 10);
        if (end == device + 5 || *end != '\0' || idx < 0 || idx > 1024) {
            snprintf(err, errlen, "device: '%s' is not cuda:N", device);
            return NULL;
        }
        return ops_cuda_open((int)idx, err, errlen);
    }
    snprintf(err, errlen, "device: unknown device '%s' (expected auto, cpu, cuda or cuda:N)",
             device);
    return NULL;
}

const char *ops_last_error(const ops_ctx *c) { return c ? c->last_error : "no backend"; }

void ops_close(ops_ctx *c) {
    if (!c) return;
    if (c->be && c->be->close)
        c->be->close(c);
    else
        free(c);
}

#ifndef CHORD_HAVE_CUDA
int ops_cuda_device_count(void) { return 0; }

ops_ctx *ops_cuda_open(int device_index, char *err, size_t errlen) {
    snprintf(err, errlen, "device: cuda:%d requested but this build has no CUDA backend",
             device_index);
    return NULL;
}
#endif
