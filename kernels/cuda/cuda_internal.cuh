// cuda_internal.cuh — private declarations of the CUDA backend (kernels/cuda): the context's
// state, the error macros every op uses, the deferred-error flags kernels raise, and small device
// helpers (warp/block reductions and scans) shared by the op files.
//
// Error model: every CUDA and cuBLAS call goes through CU_CHECK / CUBLAS_CHECK, every launch is
// followed by CU_LAUNCHED; a failure writes ctx->last_error and returns -1. Bad *device-side*
// input (a token id outside the vocabulary, a bad cu_seqlens) cannot be seen by the host without
// a read-back, so kernels set a bit in a device flag word instead and skip the bad row; the next
// synchronising call (sync, to_host, sum_squares, sample) reads the word back and reports it.
//
// Not here: nothing knows about models; no multi-GPU (one context = one device, one stream).
#ifndef CHORD_KERNELS_CUDA_INTERNAL_CUH
#define CHORD_KERNELS_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"
}

// ---- deferred device-side errors (bits of cuda_impl::flags) ----
enum {
    CU_EFLAG_TOKEN = 1 << 0,    // embedding: token id outside [0, V)
    CU_EFLAG_CU = 1 << 1,       // attention: cu_seqlens not 0..N non-decreasing
    CU_EFLAG_POS = 1 << 2,      // rope: negative position
    CU_EFLAG_KV = 1 << 3,       // kv_store: slot / position outside the cache
    CU_EFLAG_DECODE = 1 << 4,   // attention_decode: slot / length outside the cache
    CU_EFLAG_TARGET = 1 << 5,   // logprob: target >= V
    CU_EFLAG_NONFINITE = 1 << 6 // sample: a row whose log-sum-exp is not finite
};

typedef struct cuda_impl {
    int device;
    int num_sms;
    int smem_optin; // the most shared memory a block may opt into
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasComputeType_t gemm_compute; // CUBLAS_COMPUTE_32F_FAST_16BF (default), _FAST_TF32, _32F
    ops_cuda_matmul_mode matmul_mode;
    ops_cuda_attention_mode attention_mode;
    int attention_tc_wmma; // CHORD_CUDA_ATTENTION=wmma: the wmma tensor-core kernels, not mma.sync
    void *blas_workspace;
    size_t blas_workspace_bytes;
    unsigned int *flags_dev;  // device word: CU_EFLAG_* bits raised by kernels
    unsigned int *flags_host; // pinned host word it is read back into
    void *scratch;            // grow-only device scratch (reductions, tile tables)
    size_t scratch_bytes;
    void *pinned; // grow-only pinned host staging for read-backs
    size_t pinned_bytes;
} cuda_impl;

static inline cuda_impl *cu_impl(ops_ctx *c) {
    return (cuda_impl *)c->impl;
}

int cu_fail(ops_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
// Makes the context's device current on the calling thread (-1 on failure).
int cu_enter(ops_ctx *c);
// Device scratch of at least `bytes` (stream-ordered reuse; growing synchronises the device).
void *cu_scratch(ops_ctx *c, size_t bytes);
// Pinned host staging of at least `bytes`.
void *cu_pinned(ops_ctx *c, size_t bytes);
// Synchronises the stream and reports (then clears) deferred device-side errors. `what` names
// the call for the message.
int cu_sync_check(ops_ctx *c, const char *what);

#define CU_CHECK(call)                                                                             \
    do {                                                                                           \
        cudaError_t cu_e_ = (call);                                                                \
        if (cu_e_ != cudaSuccess)                                                                  \
            return cu_fail(c, "%s: %s failed: %s (%s:%d)", __func__, #call,                        \
                           cudaGetErrorString(cu_e_), __FILE__, __LINE__);                         \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t cb_e_ = (call);                                                             \
        if (cb_e_ != CUBLAS_STATUS_SUCCESS)                                                        \
            return cu_fail(c, "%s: %s failed: %s (%s:%d)", __func__, #call,                        \
                           cublasGetStatusString(cb_e_), __FILE__, __LINE__);                      \
    } while (0)

// after every kernel launch
#define CU_LAUNCHED(kernel_name)                                                                   \
    do {                                                                                           \
        cudaError_t cu_e_ = cudaGetLastError();                                                    \
        if (cu_e_ != cudaSuccess)                                                                  \
            return cu_fail(c, "%s: launch of %s failed: %s", __func__, kernel_name,                \
                           cudaGetErrorString(cu_e_));                                             \
    } while (0)

#define CU_REQUIRE(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) return cu_fail(c, __VA_ARGS__);                                               \
    } while (0)

#define CU_ENTER()                                                                                 \
    do {                                                                                           \
        if (cu_enter(c) != 0) return -1;                                                           \
    } while (0)

// blocks for a grid-stride elementwise kernel over n elements
static inline unsigned int cu_blocks(size_t n, int threads, int num_sms) {
    size_t b = (n + (size_t)threads - 1) / (size_t)threads;
    size_t cap = (size_t)num_sms * 32;
    if (b > cap) b = cap;
    return b > 0 ? (unsigned int)b : 1u;
}

// ---- device helpers ----
#define CU_FULL_MASK 0xffffffffu

static __device__ __forceinline__ void cu_raise(unsigned int *flags, unsigned int bit) {
    atomicOr(flags, bit);
}

static __device__ __forceinline__ float cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(CU_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ double cu_warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(CU_FULL_MASK, v, o);
    return v;
}
static __device__ __forceinline__ float cu_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(CU_FULL_MASK, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `sh` holds 33 values of T. Contains __syncthreads: call from every thread.
template <typename T> static __device__ T cu_block_sum(T v, T *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(CU_FULL_MASK, v, o);
    __syncthreads(); // sh may still be read by a previous call
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        T x = lane < nw ? sh[lane] : (T)0;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            x += __shfl_xor_sync(CU_FULL_MASK, x, o);
        if (lane == 0) sh[32] = x;
    }
    __syncthreads();
    return sh[32];
}

// Exclusive prefix sum over the block in thread order; *total receives the block's sum.
// `sh` holds 33 values of T. Contains __syncthreads: call from every thread.
template <typename T> static __device__ T cu_block_scan_excl(T v, T *sh, T *total) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    T x = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        T y = __shfl_up_sync(CU_FULL_MASK, x, o);
        if (lane >= o) x += y;
    }
    __syncthreads();
    if (lane == 31) sh[warp] = x; // warp inclusive totals
    __syncthreads();
    if (warp == 0) {
        T w = lane < nw ? sh[lane] : (T)0;
        T wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            T y = __shfl_up_sync(CU_FULL_MASK, wi, o);
            if (lane >= o) wi += y;
        }
        if (lane < nw) sh[lane] = wi - w; // exclusive warp offsets
        if (lane == 31) sh[32] = wi;
    }
    __syncthreads();
    *total = sh[32];
    return sh[warp] + x - v;
}

// ---- the ops (table in cuda_device.cu) ----
extern "C" {
int cuda_matmul_forward(ops_ctx *c, float *out, const float *inp, const float *weight,
                        const float *bias, int N, int C, int OC);
int cuda_matmul_backward(ops_ctx *c, float *dinp, float *dweight, float *dbias, const float *dout,
                         const float *inp, const float *weight, int N, int C, int OC,
                         int dinp_accumulate);
int cuda_cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n);
int cuda_matmul_forward_bf16(ops_ctx *c, void *out, int out_bf16, const void *inp, int inp_bf16,
                             const uint16_t *weight, const float *bias, int N, int C, int OC);
int cuda_matmul_backward_bf16(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                              const float *dout, const void *inp, int inp_bf16,
                              const uint16_t *weight, int N, int C, int OC, int dinp_accumulate);
int cuda_swiglu_forward_bf16(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                             const uint16_t *up, int ldu, int N, int I);
int cuda_swiglu_backward_bf16(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                              const uint16_t *gate, const uint16_t *up, int ld_gu, int N, int I);
int cuda_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens, const float *wte, int N,
                           int C, int V);
int cuda_embedding_backward(ops_ctx *c, float *dwte, const float *dout, const int32_t *tokens,
                            int N, int C, int V);
int cuda_rmsnorm_forward(ops_ctx *c, float *out, float *rstd, const float *inp, int ldi,
                         const float *weight, int N, int C, float eps);
int cuda_rmsnorm_backward(ops_ctx *c, float *dinp, int ldi, float *dweight, const float *dout,
                          const float *inp, const float *weight, const float *rstd, int N, int C);
int cuda_rope_forward(ops_ctx *c, float *x, int ldx, const int32_t *positions,
                      const float *inv_freq, int N, int H, int D);
int cuda_rope_backward(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                       const float *inv_freq, int N, int H, int D);
int cuda_attention_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                           const float *k, int ldk, const float *v, int ldv,
                           const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv, int D);
int cuda_attention_backward(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                            const float *q, int ldq, const float *k, int ldk, const float *v,
                            int ldv, const float *out, const float *lse, const int32_t *cu_seqlens,
                            int S, int N, int Hq, int Hkv, int D);
int cuda_kv_store(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk, const float *v,
                  int ldv, const int32_t *slot, const int32_t *pos, int N, int max_T, int Hkv,
                  int D);
int cuda_attention_decode(ops_ctx *c, float *out, const float *q, int ldq, const float *kcache,
                          const float *vcache, const int32_t *slot, const int32_t *lens, int B,
                          int max_T, int Hq, int Hkv, int D);
int cuda_swiglu_forward(ops_ctx *c, float *out, const float *gate, int ldg, const float *up,
                        int ldu, int N, int I);
int cuda_swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                         const float *gate, const float *up, int ld_gu, int N, int I);
int cuda_add_inplace(ops_ctx *c, float *a, const float *b, size_t n);
int cuda_axpy2d(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows, int cols,
                float alpha, int accumulate);
int cuda_scale_inplace(ops_ctx *c, float *a, float s, size_t n);
int cuda_dropout(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                 unsigned long long seed, int accumulate);
int cuda_sum_squares(ops_ctx *c, double *out_host, const float *x, size_t n);
int cuda_logprob_forward(ops_ctx *c, float *logp, float *entropy, float *lse, const float *logits,
                         const int32_t *targets, int N, int V, float inv_temp);
int cuda_logprob_backward(ops_ctx *c, float *dlogits, const float *dlogp, const float *dentropy,
                          const float *logits, const float *lse, const int32_t *targets, int N,
                          int V, float inv_temp);
int cuda_adamw_update(ops_ctx *c, float *param, const float *grad, float *m, float *v, size_t n,
                      float lr, float beta1, float beta2, float eps, float weight_decay, int t,
                      float grad_scale);
int cuda_sample(ops_ctx *c, int32_t *tokens_host, float *logp_host, const float *logits, int B,
                int V, float temperature, float top_p, const float *uniforms_host);
}

// Opt-in shared memory for the attention kernels (cuda_attention.cu), called once at open.
int cuda_attention_init(ops_ctx *c);
// The tensor-core attention kernels (cuda_attention_tc.cu), launched by cuda_attention.cu over
// its tile table of cuda_attention_tc_tile_rows() rows per tile; Di = rowsum(dout * out) (N, Hq).
int cuda_attention_tc_init(ops_ctx *c);
int cuda_attention_tc_usable(ops_ctx *c, int D);
int cuda_attention_tc_tile_rows(void);
// Device scratch (bytes) that cuda_attention_tc_forward takes: the bf16 copies of q, k, v.
size_t cuda_attention_tc_forward_scratch(int N, int Hq, int Hkv, int D);
int cuda_attention_tc_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                              const float *k, int ldk, const float *v, int ldv, void *scratch,
                              const int32_t *cu_seqlens, const int2 *tiles, const int *ntiles,
                              int cap, int N, int Hq, int Hkv, int D, float scale);
// bytes of device scratch cuda_attention_tc_backward needs beside Di: the bf16 copies of q, k, v
// and dout, and with GQA each query head's dK/dV share before the group's sum
size_t cuda_attention_tc_scratch(int N, int Hq, int Hkv, int D);
int cuda_attention_tc_backward(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, int ldq, const float *k, int ldk, const float *v,
                               int ldv, const float *lse, const float *Di, void *scratch,
                               const int32_t *cu_seqlens, const int2 *tiles, const int *ntiles,
                               int cap, int N, int Hq, int Hkv, int D, float scale);

#endif
