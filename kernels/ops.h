/* ops.h — the op table every compute backend implements (CPU: kernels/cpu, CUDA: kernels/cuda),
 * and the ops_* functions callers use to run it.
 *
 * What this is: a vtable of forward and backward ops over opaque *device* buffers owned by a
 * backend context. On the CPU backend device memory is host memory; on CUDA it is GPU memory.
 * Backends fill the table (ops_backend); callers never touch it: they call ops_<op>(c, ...)
 * (ops_matmul_forward, ops_to_host, ...; one per slot, at the end of this file), which dispatch
 * through c->be. Callers never dereference a buffer pointer themselves: they move data with
 * ops_to_device / ops_to_host. Nothing here knows about models: shapes are passed explicitly.
 *
 * Conventions (every backend):
 * - Tensors are row-major float32 unless said otherwise; token ids and positions are int32.
 * - Every op returns 0 on success and -1 on failure (with ops_last_error() set). Ops are
 *   asynchronous on CUDA; ops_sync() waits and reports any deferred error.
 * - The gradient rule: parameter gradients ACCUMULATE (+=), activation gradients OVERWRITE (=),
 *   except where an op says otherwise (rmsnorm_backward adds into dinp because its input is the
 *   residual stream; matmul_backward's dinp has an explicit accumulate flag).
 * - Shapes are written as comments: `inp (N,C)` means N rows of C floats. An `ld*` argument is the
 *   row stride in floats of a strided view (e.g. q inside a fused qkv buffer).
 * - Only ops_sample, ops_sum_squares and ops_to_host move values back to the host.
 * - bf16 values are uint16_t: the top half of a float32, rounded to nearest even
 *   (kernels/ops_math.h ops_f32_to_bf16). The *_bf16 matmuls take bf16 weights (a model's copy
 *   of its fp32 master weights, model.h) and compute the products of bf16 operands with fp32
 *   accumulation; every other buffer stays float32. */
#ifndef CHORD_KERNELS_OPS_H
#define CHORD_KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ops_ctx ops_ctx;

typedef struct ops_backend {
    const char *name; /* "cpu" or "cuda" */

    /* ---- memory ---- */
    void *(*alloc)(ops_ctx *c, size_t bytes); /* zero-filled; NULL on failure */
    void (*free)(ops_ctx *c, void *p);
    int (*to_device)(ops_ctx *c, void *dst, const void *src_host, size_t bytes);
    int (*to_host)(ops_ctx *c, void *dst_host, const void *src, size_t bytes);
    int (*copy)(ops_ctx *c, void *dst, const void *src, size_t bytes); /* device to device */
    int (*zero)(ops_ctx *c, void *p, size_t bytes);
    int (*sync)(ops_ctx *c);

    /* ---- dense ---- */
    /* out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC, may be NULL) */
    int (*matmul_forward)(ops_ctx *c, float *out, const float *inp, const float *weight,
                          const float *bias, int N, int C, int OC);
    /* dinp (N,C) = dout @ weight   (or += when dinp_accumulate; dinp may be NULL)
     * dweight (OC,C) += dout^T @ inp;  dbias (OC) += colsum(dout) (may be NULL) */
    int (*matmul_backward)(ops_ctx *c, float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, int N, int C, int OC,
                           int dinp_accumulate);

    /* ---- bf16 weights ---- */
    /* dst (n) = src (n) rounded to bf16 */
    int (*cast_bf16)(ops_ctx *c, uint16_t *dst, const float *src, size_t n);
    /* matmul_forward with a bf16 weight (OC,C): out = bf16(inp) @ weight^T + bias — the
     * products of bf16 operands accumulated in fp32, the bias added in fp32. inp (N,C) is
     * float32 (rounded to bf16 here) or, with inp_bf16, bf16; out (N,OC) is float32 or, with
     * out_bf16, that result rounded to bf16 (an activation stored in bf16). */
    int (*matmul_forward_bf16)(ops_ctx *c, void *out, int out_bf16, const void *inp, int inp_bf16,
                               const uint16_t *weight, const float *bias, int N, int C, int OC);
    /* matmul_backward with a bf16 weight: dinp (N,C) (+)= bf16(dout) @ weight;
     * dweight (OC,C) float32 += bf16(dout)^T @ bf16(inp); dbias (OC) += colsum(dout) of the
     * float32 dout. inp as in the forward (bf16 when inp_bf16). dinp, dweight, dbias may be
     * NULL. */
    int (*matmul_backward_bf16)(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                                const float *dout, const void *inp, int inp_bf16,
                                const uint16_t *weight, int N, int C, int OC, int dinp_accumulate);
    /* swiglu_forward / swiglu_backward on gate and up stored in bf16 (widened exactly); out,
     * dout, dgate and dup are float32 (dgate/dup may not alias gate/up) */
    int (*swiglu_forward_bf16)(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                               const uint16_t *up, int ldu, int N, int I);
    int (*swiglu_backward_bf16)(ops_ctx *c, float *dgate, float *dup, int ld_dgu,
                                const float *dout, const uint16_t *gate, const uint16_t *up,
                                int ld_gu, int N, int I);

    /* ---- embedding ---- */
    /* out (N,C) = wte (V,C)[tokens (N)] */
    int (*embedding_forward)(ops_ctx *c, float *out, const int32_t *tokens, const float *wte, int N,
                             int C, int V);
    /* dwte (V,C) += scatter of dout (N,C) by tokens (N) */
    int (*embedding_backward)(ops_ctx *c, float *dwte, const float *dout, const int32_t *tokens,
                              int N, int C, int V);

    /* ---- RMSNorm: out = inp * rsqrt(mean(inp^2) + eps) * weight ---- */
    /* out (N,C), rstd (N) saved for backward, inp (N, ldi), weight (C). out is dense (N,C). */
    int (*rmsnorm_forward)(ops_ctx *c, float *out, float *rstd, const float *inp, int ldi,
                           const float *weight, int N, int C, float eps);
    /* dinp (N, ldi) += ..., dweight (C) += ..., dout (N,C) */
    int (*rmsnorm_backward)(ops_ctx *c, float *dinp, int ldi, float *dweight, const float *dout,
                            const float *inp, const float *weight, const float *rstd, int N, int C);

    /* ---- RoPE, rotate-half (Hugging Face Llama/Qwen2), in place ----
     * x (N, ldx) holds H heads of D per row; angle = positions[n] * inv_freq[i], i < D/2 (fp32).
     * x'[i] = x[i] cos - x[i+D/2] sin;  x'[i+D/2] = x[i+D/2] cos + x[i] sin.
     * inv_freq (D/2) is a device buffer (it carries any rope_scaling). */
    int (*rope_forward)(ops_ctx *c, float *x, int ldx, const int32_t *positions,
                        const float *inv_freq, int N, int H, int D);
    /* the transpose rotation applied to dx in place */
    int (*rope_backward)(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                         const float *inv_freq, int N, int H, int D);

    /* ---- causal grouped-query attention over a packed batch ----
     * Sequences s = 0..S-1 occupy rows cu_seqlens[s] .. cu_seqlens[s+1]-1 (cu_seqlens (S+1) int32,
     * cu_seqlens[0] = 0, cu_seqlens[S] = N). Query head h reads kv head h / (Hq/Hkv).
     * q (N,ldq) Hq heads of D; k (N,ldk), v (N,ldv) Hkv heads of D; scale = 1/sqrt(D).
     * out (N, Hq*D) dense; lse (N, Hq) saved log-sum-exp of the scaled scores (for backward). */
    int (*attention_forward)(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                             const float *k, int ldk, const float *v, int ldv,
                             const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv, int D);
    /* dq (N,ldq), dk (N,ldk), dv (N,ldv) OVERWRITTEN; dout (N, Hq*D); out and lse from forward */
    int (*attention_backward)(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                              const float *q, int ldq, const float *k, int ldk, const float *v,
                              int ldv, const float *out, const float *lse,
                              const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv, int D);

    /* ---- KV cache: per layer kcache/vcache (slots, max_T, Hkv, D) ---- */
    /* writes row n of k (N,ldk) / v (N,ldv) at [slot[n], pos[n]] */
    int (*kv_store)(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk,
                    const float *v, int ldv, const int32_t *slot, const int32_t *pos, int N,
                    int max_T, int Hkv, int D);
    /* one query row per sequence b attends to cache rows 0..lens[b]-1 of slot[b]
     * out (B, Hq*D), q (B, ldq) */
    int (*attention_decode)(ops_ctx *c, float *out, const float *q, int ldq, const float *kcache,
                            const float *vcache, const int32_t *slot, const int32_t *lens, int B,
                            int max_T, int Hq, int Hkv, int D);

    /* ---- SwiGLU: out = silu(gate) * up ---- */
    /* out (N,I) dense; gate (N,ldg), up (N,ldu) */
    int (*swiglu_forward)(ops_ctx *c, float *out, const float *gate, int ldg, const float *up,
                          int ldu, int N, int I);
    /* dgate (N,ldg), dup (N,ldu) OVERWRITTEN from dout (N,I) */
    int (*swiglu_backward)(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                           const float *gate, const float *up, int ld_gu, int N, int I);

    /* ---- elementwise ---- */
    int (*add_inplace)(ops_ctx *c, float *a, const float *b, size_t n); /* a += b */
    /* y (rows, ldy) = alpha x (rows, ldx) (+ y when accumulate), over the first cols columns of
     * each row: a strided view in or out of a fused buffer (LoRA on q inside qkv) */
    int (*axpy2d)(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows, int cols,
                  float alpha, int accumulate);
    int (*scale_inplace)(ops_ctx *c, float *a, float s, size_t n);      /* a *= s */
    /* out (N,C) (+)= inp (N,C) with each element kept (ops_dropout_keep(seed, n, c, p), scaled
     * 1 / (1 - p)) or zeroed: inverted dropout with a mask recomputable from seed; += when
     * accumulate. p in [0, 1). */
    int (*dropout)(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                   unsigned long long seed, int accumulate);
    /* *out_host = sum of x^2 (double accumulation) — a host read-back */
    int (*sum_squares)(ops_ctx *c, double *out_host, const float *x, size_t n);

    /* ---- per-token log-prob and entropy of targets under softmax(logits * inv_temp) ----
     * logits (N,V); targets (N) (a negative target gives logp 0 and no gradient: its whole
     * dlogits row is 0, dentropy included; its entropy is still computed);
     * logp (N), entropy (N, may be NULL), lse (N) saved for backward. */
    int (*logprob_forward)(ops_ctx *c, float *logp, float *entropy, float *lse, const float *logits,
                           const int32_t *targets, int N, int V, float inv_temp);
    /* dlogits (N,V) OVERWRITTEN from dlogp (N) and dentropy (N, may be NULL); dlogits may be
     * the logits buffer itself (in place, saving an N x V buffer). */
    int (*logprob_backward)(ops_ctx *c, float *dlogits, const float *dlogp, const float *dentropy,
                            const float *logits, const float *lse, const int32_t *targets, int N,
                            int V, float inv_temp);

    /* ---- AdamW (decoupled weight decay, bias-corrected, PyTorch semantics) ----
     * p -= lr * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p), with g = grad * grad_scale;
     * step t counts from 1. */
    int (*adamw_update)(ops_ctx *c, float *param, const float *grad, float *m, float *v, size_t n,
                        float lr, float beta1, float beta2, float eps, float weight_decay, int t,
                        float grad_scale);

    /* ---- sampling for rollouts ----
     * logits (B,V) on the device; for each row: temperature (<= 0: greedy, the first index of
     * the maximum), top-p nucleus (top_p outside (0,1): the full distribution); the
     * uniform (B) (host, in [0,1)) chooses the token. Writes tokens_host (B) and logp_host (B) =
     * log softmax(logits / temperature)[token] of the FULL tempered distribution (the number the
     * trainer computes with logprob_forward; top-p does not renormalise it; greedy gives the
     * temperature-1 log-prob). */
    int (*sample)(ops_ctx *c, int32_t *tokens_host, float *logp_host, const float *logits, int B,
                  int V, float temperature, float top_p, const float *uniforms_host);

    /* ---- lifetime ----
     * frees everything the backend owns for this context, and the context itself (ops_close
     * calls it; buffers from alloc must be freed before). */
    void (*close)(ops_ctx *c);
} ops_backend;

/* A context is used by one thread at a time (ops are not thread-safe on the same context). */
struct ops_ctx {
    const ops_backend *be;
    void *impl;       /* backend-private state: thread count, streams, cuBLAS handles */
    int threads;      /* CPU threads the backend may use */
    int device_index; /* CUDA ordinal, -1 for the CPU */
    /* 1: models created on this context keep a bf16 copy of their weights for the GEMMs
     * (model.h "Precision"). Set by ops_open: the environment's CHORD_WEIGHTS (fp32, bf16, or
     * auto = the backend's choice: bf16 on CUDA while its GEMMs are bf16, fp32 on the CPU). */
    int bf16_weights;
    struct ops_mem_track *mem; /* ops_alloc's accounting (ops_mem_usage), made at the first one */
    char last_error[512];
};

/* Opens a backend: "cpu", "cuda", "cuda:N" or "auto" (CUDA when a GPU is present, else the CPU).
 * threads <= 0 means all cores. Returns NULL with a message in err (size errlen) on failure. */
ops_ctx *ops_open(const char *device, int threads, char *err, size_t errlen);
/* 0 when every op of the table is set, else -1 with the first missing op named in err: ops_open
 * refuses a backend whose table has an empty slot instead of crashing at its first call. */
int ops_backend_check(const ops_backend *be, char *err, size_t errlen);
/* What ops_open(device) would set bf16_weights to (device as ops_open takes it; NULL = auto):
 * CHORD_WEIGHTS when it is fp32 or bf16; else 1 for a CUDA device while CHORD_CUDA_MATMUL is
 * unset or bf16 (the GPU's bf16 GEMMs), 0 for the CPU. The memory estimate asks it
 * (server/train/mem_estimate.h) without opening the device. */
int ops_device_bf16_weights(const char *device);
/* Closes any backend's context (through be->close); NULL is a no-op. */
void ops_close(ops_ctx *c);
const char *ops_last_error(const ops_ctx *c);

/* Backend constructors (a backend that is not built returns NULL with a message). */
ops_ctx *ops_cpu_open(int threads, char *err, size_t errlen);
ops_ctx *ops_cuda_open(int device_index, char *err, size_t errlen);
/* Number of usable CUDA devices (0 when the CUDA backend is not built or no GPU is present). */
int ops_cuda_device_count(void);
/* The cudaStream_t every op of a CUDA context runs on (as void *), so that another stream can
 * wait for its work with an event (server/dist: NCCL's gradient buckets); NULL for another
 * backend. */
void *ops_cuda_stream(ops_ctx *c);

/* Memory accounting, so a caller can refuse work that cannot fit: free and total bytes of the
 * memory context c allocates from — the GPU's (cudaMemGetInfo) for CUDA, the host's available
 * and total RAM (/proc/meminfo) for the CPU. Returns 0, or -1 when unknown (both then 0). */
int ops_mem_info(const ops_ctx *c, size_t *free_bytes, size_t *total_bytes);
/* The same for CUDA device `device_index` (-1 when the CUDA backend is not built or it fails). */
int ops_cuda_mem_info(int device_index, size_t *free_bytes, size_t *total_bytes);

/* ---- calling ops ----
 * ops_<op>(c, ...) runs slot <op> of c's backend: the arguments, shapes and result are the
 * slot's, documented in ops_backend above. ops_open has checked that no slot is empty, and every
 * call dispatches through c->be at the time of the call. A caller checks each result (0 / -1,
 * NULL from ops_alloc) and reports ops_last_error(c). */

/* alloc, counted in ops_mem_usage */
void *ops_alloc(ops_ctx *c, size_t bytes);
/* NULL is a no-op */
void ops_free(ops_ctx *c, void *p);
/* What the buffers of ops_alloc on c hold: *live the bytes handed out and not freed yet, *peak
 * the most there were at once since the context opened or ops_mem_reset_peak (either pointer
 * may be NULL). These are the buffers the memory estimate counts (server/train/mem_estimate.h:
 * weights and their bf16 copies, gradients, AdamW moments, run state, KV caches), not a
 * backend's own workspaces (cuBLAS's, the CUDA scratch, the CPU's per-op temporaries). */
void ops_mem_usage(const ops_ctx *c, size_t *live, size_t *peak);
/* The peak starts again from what is live now. */
void ops_mem_reset_peak(ops_ctx *c);
static inline int ops_to_device(ops_ctx *c, void *dst, const void *src_host, size_t bytes) {
    return c->be->to_device(c, dst, src_host, bytes);
}
static inline int ops_to_host(ops_ctx *c, void *dst_host, const void *src, size_t bytes) {
    return c->be->to_host(c, dst_host, src, bytes);
}
static inline int ops_copy(ops_ctx *c, void *dst, const void *src, size_t bytes) {
    return c->be->copy(c, dst, src, bytes);
}
static inline int ops_zero(ops_ctx *c, void *p, size_t bytes) {
    return c->be->zero(c, p, bytes);
}
static inline int ops_sync(ops_ctx *c) {
    return c->be->sync(c);
}

static inline int ops_matmul_forward(ops_ctx *c, float *out, const float *inp, const float *weight,
                                     const float *bias, int N, int C, int OC) {
    return c->be->matmul_forward(c, out, inp, weight, bias, N, C, OC);
}
static inline int ops_matmul_backward(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                                      const float *dout, const float *inp, const float *weight,
                                      int N, int C, int OC, int dinp_accumulate) {
    return c->be->matmul_backward(c, dinp, dweight, dbias, dout, inp, weight, N, C, OC,
                                  dinp_accumulate);
}

static inline int ops_cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n) {
    return c->be->cast_bf16(c, dst, src, n);
}
static inline int ops_matmul_forward_bf16(ops_ctx *c, void *out, int out_bf16, const void *inp,
                                          int inp_bf16, const uint16_t *weight, const float *bias,
                                          int N, int C, int OC) {
    return c->be->matmul_forward_bf16(c, out, out_bf16, inp, inp_bf16, weight, bias, N, C, OC);
}
static inline int ops_matmul_backward_bf16(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                                           const float *dout, const void *inp, int inp_bf16,
                                           const uint16_t *weight, int N, int C, int OC,
                                           int dinp_accumulate) {
    return c->be->matmul_backward_bf16(c, dinp, dweight, dbias, dout, inp, inp_bf16, weight, N, C,
                                       OC, dinp_accumulate);
}
static inline int ops_swiglu_forward_bf16(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                                          const uint16_t *up, int ldu, int N, int I) {
    return c->be->swiglu_forward_bf16(c, out, gate, ldg, up, ldu, N, I);
}
static inline int ops_swiglu_backward_bf16(ops_ctx *c, float *dgate, float *dup, int ld_dgu,
                                           const float *dout, const uint16_t *gate,
                                           const uint16_t *up, int ld_gu, int N, int I) {
    return c->be->swiglu_backward_bf16(c, dgate, dup, ld_dgu, dout, gate, up, ld_gu, N, I);
}

static inline int ops_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens,
                                        const float *wte, int N, int C, int V) {
    return c->be->embedding_forward(c, out, tokens, wte, N, C, V);
}
static inline int ops_embedding_backward(ops_ctx *c, float *dwte, const float *dout,
                                         const int32_t *tokens, int N, int C, int V) {
    return c->be->embedding_backward(c, dwte, dout, tokens, N, C, V);
}

static inline int ops_rmsnorm_forward(ops_ctx *c, float *out, float *rstd, const float *inp,
                                      int ldi, const float *weight, int N, int C, float eps) {
    return c->be->rmsnorm_forward(c, out, rstd, inp, ldi, weight, N, C, eps);
}
static inline int ops_rmsnorm_backward(ops_ctx *c, float *dinp, int ldi, float *dweight,
                                       const float *dout, const float *inp, const float *weight,
                                       const float *rstd, int N, int C) {
    return c->be->rmsnorm_backward(c, dinp, ldi, dweight, dout, inp, weight, rstd, N, C);
}

static inline int ops_rope_forward(ops_ctx *c, float *x, int ldx, const int32_t *positions,
                                   const float *inv_freq, int N, int H, int D) {
    return c->be->rope_forward(c, x, ldx, positions, inv_freq, N, H, D);
}
static inline int ops_rope_backward(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                                    const float *inv_freq, int N, int H, int D) {
    return c->be->rope_backward(c, dx, ldx, positions, inv_freq, N, H, D);
}

static inline int ops_attention_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                                        const float *k, int ldk, const float *v, int ldv,
                                        const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv,
                                        int D) {
    return c->be->attention_forward(c, out, lse, q, ldq, k, ldk, v, ldv, cu_seqlens, S, N, Hq, Hkv,
                                    D);
}
static inline int ops_attention_backward(ops_ctx *c, float *dq, float *dk, float *dv,
                                         const float *dout, const float *q, int ldq, const float *k,
                                         int ldk, const float *v, int ldv, const float *out,
                                         const float *lse, const int32_t *cu_seqlens, int S, int N,
                                         int Hq, int Hkv, int D) {
    return c->be->attention_backward(c, dq, dk, dv, dout, q, ldq, k, ldk, v, ldv, out, lse,
                                     cu_seqlens, S, N, Hq, Hkv, D);
}

static inline int ops_kv_store(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk,
                               const float *v, int ldv, const int32_t *slot, const int32_t *pos,
                               int N, int max_T, int Hkv, int D) {
    return c->be->kv_store(c, kcache, vcache, k, ldk, v, ldv, slot, pos, N, max_T, Hkv, D);
}
static inline int ops_attention_decode(ops_ctx *c, float *out, const float *q, int ldq,
                                       const float *kcache, const float *vcache,
                                       const int32_t *slot, const int32_t *lens, int B, int max_T,
                                       int Hq, int Hkv, int D) {
    return c->be->attention_decode(c, out, q, ldq, kcache, vcache, slot, lens, B, max_T, Hq, Hkv,
                                   D);
}

static inline int ops_swiglu_forward(ops_ctx *c, float *out, const float *gate, int ldg,
                                     const float *up, int ldu, int N, int I) {
    return c->be->swiglu_forward(c, out, gate, ldg, up, ldu, N, I);
}
static inline int ops_swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu,
                                      const float *dout, const float *gate, const float *up,
                                      int ld_gu, int N, int I) {
    return c->be->swiglu_backward(c, dgate, dup, ld_dgu, dout, gate, up, ld_gu, N, I);
}

static inline int ops_add_inplace(ops_ctx *c, float *a, const float *b, size_t n) {
    return c->be->add_inplace(c, a, b, n);
}
static inline int ops_dropout(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                              unsigned long long seed, int accumulate) {
    return c->be->dropout(c, out, inp, N, C, p, seed, accumulate);
}
static inline int ops_axpy2d(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows,
                             int cols, float alpha, int accumulate) {
    return c->be->axpy2d(c, y, ldy, x, ldx, rows, cols, alpha, accumulate);
}
static inline int ops_scale_inplace(ops_ctx *c, float *a, float s, size_t n) {
    return c->be->scale_inplace(c, a, s, n);
}
static inline int ops_sum_squares(ops_ctx *c, double *out_host, const float *x, size_t n) {
    return c->be->sum_squares(c, out_host, x, n);
}

static inline int ops_logprob_forward(ops_ctx *c, float *logp, float *entropy, float *lse,
                                      const float *logits, const int32_t *targets, int N, int V,
                                      float inv_temp) {
    return c->be->logprob_forward(c, logp, entropy, lse, logits, targets, N, V, inv_temp);
}
static inline int ops_logprob_backward(ops_ctx *c, float *dlogits, const float *dlogp,
                                       const float *dentropy, const float *logits, const float *lse,
                                       const int32_t *targets, int N, int V, float inv_temp) {
    return c->be->logprob_backward(c, dlogits, dlogp, dentropy, logits, lse, targets, N, V,
                                   inv_temp);
}

static inline int ops_adamw_update(ops_ctx *c, float *param, const float *grad, float *m, float *v,
                                   size_t n, float lr, float beta1, float beta2, float eps,
                                   float weight_decay, int t, float grad_scale) {
    return c->be->adamw_update(c, param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t,
                               grad_scale);
}

static inline int ops_sample(ops_ctx *c, int32_t *tokens_host, float *logp_host,
                             const float *logits, int B, int V, float temperature, float top_p,
                             const float *uniforms_host) {
    return c->be->sample(c, tokens_host, logp_host, logits, B, V, temperature, top_p,
                         uniforms_host);
}

#endif
