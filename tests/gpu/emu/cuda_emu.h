// cuda_emu.h — a CPU emulator for the CUDA subset kernels/cuda uses, so the CUDA backend's
// kernels run (slowly, one host thread) where no GPU exists and can be compared against the CPU
// backend by tests/gpu/gpu_check (tests/gpu/emu/run.sh).
//
// What it emulates: a launch runs its blocks one after another; a block's threads are fibers on
// one host thread, switched only at __syncthreads, __syncthreads_or and warp shuffles, which
// therefore behave as on the GPU (a divergent barrier or shuffle is reported as a deadlock, not
// hidden). __shared__ variables become statics (blocks never overlap); dynamic shared memory is
// a fresh NaN-filled allocation per block of exactly the requested size. Device memory is host
// memory. cuBLAS GEMMs run through OpenBLAS, with the inputs rounded to bf16 / tf32 for the
// fast compute types. Streams are synchronous.
//
// What it does not: timing, concurrency between blocks, memory-model races, the GPU's own
// rounding of expf / sincosf (host libm is used), illegal-address faults (use ASan builds).
// The sources are translated first (tests/gpu/emu/translate.py: <<<...>>> launches and extern
// __shared__); this header stands in for cuda_runtime.h, cuda_runtime_api.h and cublas_v2.h.
#ifndef CHORD_TESTS_GPU_EMU_CUDA_EMU_H
#define CHORD_TESTS_GPU_EMU_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- runtime API (host) ----
typedef enum {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorNoDevice = 100
} cudaError_t;
typedef enum {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3
} cudaMemcpyKind;
typedef struct emu_stream *cudaStream_t;
#define cudaStreamNonBlocking 1u
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount;
    size_t totalGlobalMem;
};
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
typedef enum { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97 } cudaDeviceAttr;

const char *cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int *d);
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d);
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t emu_malloc(void **p, size_t n);
cudaError_t cudaFree(void *p);
cudaError_t emu_malloc_host(void **p, size_t n);
cudaError_t cudaFreeHost(void *p);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind k, cudaStream_t s);
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s);
cudaError_t cudaMemset(void *p, int v, size_t n);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);

// ---- cuBLAS ----
typedef struct emu_blas *cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum {
    CUBLAS_COMPUTE_32F = 68,
    CUBLAS_COMPUTE_32F_FAST_16BF = 75,
    CUBLAS_COMPUTE_32F_FAST_TF32 = 77
} cublasComputeType_t;
typedef enum { CUDA_R_32F = 0, CUDA_R_16BF = 14 } cudaDataType;
typedef enum { CUBLAS_GEMM_DEFAULT = -1 } cublasGemmAlgo_t;
typedef enum { CUBLAS_POINTER_MODE_HOST = 0 } cublasPointerMode_t;
cublasStatus_t cublasCreate(cublasHandle_t *h);
cublasStatus_t cublasDestroy(cublasHandle_t h);
cublasStatus_t cublasSetStream(cublasHandle_t h, cudaStream_t s);
cublasStatus_t cublasSetWorkspace(cublasHandle_t h, void *ws, size_t bytes);
cublasStatus_t cublasSetPointerMode(cublasHandle_t h, cublasPointerMode_t m);
const char *cublasGetStatusString(cublasStatus_t s);
cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t algo);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
// ---- C++ side: the device language ----
template <typename T> static inline cudaError_t cudaMalloc(T **p, size_t n) {
    return emu_malloc((void **)p, n);
}
template <typename T> static inline cudaError_t cudaMallocHost(T **p, size_t n) {
    return emu_malloc_host((void **)p, n);
}
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) {
    return cudaSuccess;
}

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};
struct int2 {
    int x, y;
};
struct float4 {
    float x, y, z, w;
};
struct uint4 {
    unsigned int x, y, z, w;
};
static inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) {
    uint4 r = {x, y, z, w};
    return r;
}
static inline int2 make_int2(int x, int y) {
    int2 r = {x, y};
    return r;
}
static inline int min(int a, int b) {
    return a < b ? a : b;
}
static inline int max(int a, int b) {
    return a > b ? a : b;
}

extern uint3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

// synchronisation points (fiber switches)
void __syncthreads(void);
int __syncthreads_or(int p);
uint64_t emu_warp_exchange(uint64_t bits, int src_lane); // returns src_lane's bits
int emu_lane(void);
void *emu_dyn_smem(void);

template <typename T> static inline uint64_t emu_to_bits(T v) {
    uint64_t b = 0;
    memcpy(&b, &v, sizeof v);
    return b;
}
template <typename T> static inline T emu_from_bits(uint64_t b) {
    T v;
    memcpy(&v, &b, sizeof v);
    return v;
}
template <typename T> static inline T __shfl_sync(unsigned int, T v, int src, int width = 32) {
    (void)width;
    return emu_from_bits<T>(emu_warp_exchange(emu_to_bits(v), src & 31));
}
template <typename T> static inline T __shfl_xor_sync(unsigned int, T v, int m, int width = 32) {
    (void)width;
    return emu_from_bits<T>(emu_warp_exchange(emu_to_bits(v), (emu_lane() ^ m) & 31));
}
template <typename T>
static inline T __shfl_up_sync(unsigned int, T v, unsigned int d, int width = 32) {
    (void)width;
    int lane = emu_lane();
    int src = lane - (int)d;
    T r = emu_from_bits<T>(emu_warp_exchange(emu_to_bits(v), src < 0 ? lane : src));
    return r;
}

// ---- tensor-core and asynchronous-copy instructions ----
// kernels/cuda wraps each PTX instruction it uses in one __device__ function, which calls these
// under CHORD_CUDA_EMU. The warp-collective ones reproduce the PTX ISA's per-lane register
// layouts exactly (a kernel that assumes the wrong layout gets wrong results here too).
#define CHORD_CUDA_EMU 1
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32, d += a b: lane = 4 g + t holds
// a[0..3] = A(g, 2t..2t+1), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..); b[0..1] = B(2t..2t+1, g),
// B(2t+8.., g); d[0..3] = C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1); pairs of bf16 in a
// 32-bit register, the lower column / row in the low half. Products exact, sums in fp32.
void emu_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]);
// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lanes 8i .. 8i + 7 give the addresses of the
// 8 rows (16 bytes each) of matrix i; r[i] of lane 4 g + t = matrix i's (g, 2t..2t+1), or with
// trans its (2t, g) and (2t+1, g)
void emu_ldmatrix_x4(uint32_t r[4], const void *row, int trans);

// a warp barrier: every live lane of the warp reaches it before any goes on
static inline void __syncwarp(unsigned int = 0xffffffffu) {
    (void)emu_warp_exchange(0, emu_lane());
}

// a warp vote: bit i set when lane i's predicate holds (an OR over the warp's lanes)
static inline unsigned int __ballot_sync(unsigned int, int pred) {
    unsigned int v = pred ? 1u << emu_lane() : 0u;
    for (int o = 16; o > 0; o >>= 1)
        v |= __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static inline int __all_sync(unsigned int mask, int pred) {
    return (__ballot_sync(mask, pred) & mask) == mask;
}
static inline int __popc(unsigned int v) {
    return __builtin_popcount(v);
}
static inline int __ffs(int v) {
    return __builtin_ffs(v);
}

// one host thread runs every fiber and switches only at the sync points: plain updates are atomic
static inline float atomicAdd(float *p, float v) {
    float o = *p;
    *p = o + v;
    return o;
}
static inline double atomicAdd(double *p, double v) {
    double o = *p;
    *p = o + v;
    return o;
}
static inline int atomicAdd(int *p, int v) {
    int o = *p;
    *p = o + v;
    return o;
}
static inline unsigned int atomicOr(unsigned int *p, unsigned int v) {
    unsigned int o = *p;
    *p = o | v;
    return o;
}

static inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __uint_as_float(unsigned int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __int_as_float(int u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
// the emulator's objects are built with -ffp-contract=off: these are plain roundings
static inline float __fmul_rn(float a, float b) {
    return a * b;
}
static inline float __fsub_rn(float a, float b) {
    return a - b;
}

// a launch: every block of cfg runs fn (the kernel call) in blockDim fibers
struct emu_cfg {
    dim3 grid, block;
    size_t smem;
    emu_cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}
};
void emu_launch_raw(const emu_cfg &cfg, const char *name, void (*invoke)(const void *),
                    const void *closure);
template <typename F>
static inline void emu_launch(const emu_cfg &cfg, const char *name, const F &fn) {
    emu_launch_raw(
        cfg, name, [](const void *c) { (*(const F *)c)(); }, &fn);
}
#endif

#endif
