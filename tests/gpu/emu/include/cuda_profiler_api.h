/* cuda_profiler_api.h — stands in for the CUDA header of that name in the CPU emulator: the
 * profiler brackets (gpu_check --profile) do nothing there. */
#include "../cuda_emu.h"
static inline cudaError_t cudaProfilerStart(void) {
    return cudaSuccess;
}
static inline cudaError_t cudaProfilerStop(void) {
    return cudaSuccess;
}
