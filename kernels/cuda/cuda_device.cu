// cuda_device.cu — device discovery and the CUDA backend's entry points.
// The CUDA op table is being built (issue: the CUDA backend); until it is, opening a CUDA device
// reports so, and "auto" selects the CPU backend.
#include <cuda_runtime.h>
#include <stdio.h>

extern "C" {
#include "kernels/ops.h"

int ops_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();  // clear the sticky "no driver / no device" error
        return 0;
    }
    return n;
}

ops_ctx *ops_cuda_open(int device_index, char *err, size_t errlen) {
    int n = ops_cuda_device_count();
    if (device_index >= n) {
        snprintf(err, errlen, "device: cuda:%d requested but %d CUDA device(s) are present",
                 device_index, n);
        return NULL;
    }
    snprintf(err, errlen, "device: the CUDA op table is not implemented yet");
    return NULL;
}
}
