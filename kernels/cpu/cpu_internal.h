/* cpu_internal.h — private declarations of the CPU backend (kernels/cpu).
 *
 * Threading: every parallel loop is an OpenMP region of ctx->threads threads. OpenBLAS runs
 * single-threaded (openblas_set_num_threads(1)) and cpu_gemm splits a GEMM across the OpenMP
 * threads itself, so BLAS worker threads and OpenMP threads never compete for cores.
 * An ops_ctx is not thread-safe: one caller thread per context. */
#ifndef CHORD_KERNELS_CPU_INTERNAL_H
#define CHORD_KERNELS_CPU_INTERNAL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "kernels/ops.h"

typedef struct cpu_impl {
    int threads;
    /* RoPE cos/sin table cache: rows 0..rope_npos-1 of (cos[half], sin[half]) for rope_freq */
    float *rope_tab;
    float *rope_freq;
    int rope_npos;
    int rope_half;
} cpu_impl;

int cpu_fail(ops_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static inline int cpu_threads(const ops_ctx *c) {
    return c->threads > 0 ? c->threads : 1;
}
/* threads worth using for `work` elementwise operations */
static inline int cpu_threads_for(const ops_ctx *c, double work) {
    int t = cpu_threads(c);
    if (work < 32768.0) return 1;
    return t;
}

/* Puts OpenBLAS back to one thread if something else in the process changed it (its thread
 * count is process-global); every op that calls BLAS starts with it. */
void cpu_blas_single(void);

/* C (M,N) = alpha * op(A) op(B) + beta * C, row-major, split over the OpenMP threads. */
void cpu_gemm(ops_ctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* ---- ops (the table in cpu_backend.c) ---- */
int cpu_matmul_forward(ops_ctx *c, float *out, const float *inp, const float *weight,
                       const float *bias, int N, int C, int OC);
int cpu_matmul_backward(ops_ctx *c, float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int C, int OC,
                        int dinp_accumulate);
int cpu_cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n);
int cpu_matmul_forward_bf16(ops_ctx *c, void *out, int out_bf16, const void *inp, int inp_bf16,
                            const uint16_t *weight, const float *bias, int N, int C, int OC);
int cpu_matmul_backward_bf16(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                             const float *dout, const void *inp, int inp_bf16,
                             const uint16_t *weight, int N, int C, int OC, int dinp_accumulate);
int cpu_swiglu_forward_bf16(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                            const uint16_t *up, int ldu, int N, int I);
int cpu_swiglu_backward_bf16(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                             const uint16_t *gate, const uint16_t *up, int ld_gu, int N, int I);
int cpu_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens, const float *wte, int N,
                          int C, int V);
int cpu_embedding_backward(ops_ctx *c, float *dwte, const float *dout, const int32_t *tokens, int N,
                           int C, int V);
int cpu_rmsnorm_forward(ops_ctx *c, float *out, float *rstd, const float *inp, int ldi,
                        const float *weight, int N, int C, float eps);
int cpu_rmsnorm_backward(ops_ctx *c, float *dinp, int ldi, float *dweight, const float *dout,
                         const float *inp, const float *weight, const float *rstd, int N, int C);
int cpu_rope_forward(ops_ctx *c, float *x, int ldx, const int32_t *positions, const float *inv_freq,
                     int N, int H, int D);
int cpu_rope_backward(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                      const float *inv_freq, int N, int H, int D);
int cpu_attention_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv,
                          const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv, int D);
int cpu_attention_backward(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, int ldq, const float *k, int ldk, const float *v,
                           int ldv, const float *out, const float *lse, const int32_t *cu_seqlens,
                           int S, int N, int Hq, int Hkv, int D);
int cpu_kv_store(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk, const float *v,
                 int ldv, const int32_t *slot, const int32_t *pos, int N, int max_T, int Hkv,
                 int D);
int cpu_attention_decode(ops_ctx *c, float *out, const float *q, int ldq, const float *kcache,
                         const float *vcache, const int32_t *slot, const int32_t *lens, int B,
                         int max_T, int Hq, int Hkv, int D);
int cpu_swiglu_forward(ops_ctx *c, float *out, const float *gate, int ldg, const float *up, int ldu,
                       int N, int I);
int cpu_swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                        const float *gate, const float *up, int ld_gu, int N, int I);
int cpu_add_inplace(ops_ctx *c, float *a, const float *b, size_t n);
int cpu_dropout(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                unsigned long long seed, int accumulate);
int cpu_axpy2d(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows, int cols,
               float alpha, int accumulate);
int cpu_scale_inplace(ops_ctx *c, float *a, float s, size_t n);
int cpu_sum_squares(ops_ctx *c, double *out_host, const float *x, size_t n);
int cpu_logprob_forward(ops_ctx *c, float *logp, float *entropy, float *lse, const float *logits,
                        const int32_t *targets, int N, int V, float inv_temp);
int cpu_logprob_backward(ops_ctx *c, float *dlogits, const float *dlogp, const float *dentropy,
                         const float *logits, const float *lse, const int32_t *targets, int N,
                         int V, float inv_temp);
int cpu_adamw_update(ops_ctx *c, float *param, const float *grad, float *m, float *v, size_t n,
                     float lr, float beta1, float beta2, float eps, float weight_decay, int t,
                     float grad_scale);
int cpu_sample(ops_ctx *c, int32_t *tokens_host, float *logp_host, const float *logits, int B,
               int V, float temperature, float top_p, const float *uniforms_host);

#endif
