/* ops_math.h — per-element math shared by the CPU and CUDA backends (kernels/cpu, kernels/cuda).
 *
 * Every function is `static inline` and, under nvcc, `__host__ __device__`, so both backends
 * compute the same formula in the same order. Formulas follow PyTorch's CPU kernels where the
 * rounding order matters (SiLU, RMSNorm, AdamW), because the tests compare against PyTorch /
 * Hugging Face transformers.
 *
 * OPS_EXPF is the exp used by the element functions; a backend may define it before including
 * this header (the CPU backend uses a vectorisable polynomial exp, the CUDA backend expf). */
#ifndef CHORD_KERNELS_OPS_MATH_H
#define CHORD_KERNELS_OPS_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define OPS_HD __host__ __device__ /* the functions are already `static inline` */
#else
#define OPS_HD
#endif

#ifndef OPS_EXPF
#define OPS_EXPF expf
#endif

/* ---- bf16: the top 16 bits of a float32. Rounding is to nearest, ties to even (as PyTorch's
 * .to(torch.bfloat16) and CUDA's __float2bfloat16_rn); a NaN stays a (quiet) NaN; a value past
 * bf16's largest rounds to infinity. Widening is exact. ---- */
static inline OPS_HD uint32_t ops_f32_bits(float f) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
#endif
}
static inline OPS_HD uint16_t ops_f32_to_bf16(float f) {
    uint32_t u = ops_f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
static inline OPS_HD float ops_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
#endif
}
/* f rounded to the nearest bf16, as a float32 */
static inline OPS_HD float ops_bf16_round(float f) {
    return ops_bf16_to_f32(ops_f32_to_bf16(f));
}

/* ---- dropout: element (row, col) is kept when the SplitMix64 hash of (seed, row, col), top 24
 * bits as a fraction, is >= p (the same draw on every backend, recomputable in the backward) ---- */
static inline OPS_HD unsigned long long ops_mix64(unsigned long long x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}
static inline OPS_HD int ops_dropout_keep(unsigned long long seed, long long row, long long col,
                                          float p) {
    unsigned long long h = ops_mix64(ops_mix64(seed ^ ops_mix64((unsigned long long)row)) ^
                                     (unsigned long long)col);
    return (float)(h >> 40) * (1.0f / 16777216.0f) >= p;
}

/* ---- RoPE, rotate-half: (x0, x1) = (x[i], x[i + D/2]), angle = (float)pos * inv_freq[i] ---- */
static inline OPS_HD float ops_rope_angle(int pos, float inv_freq) {
    return (float)pos * inv_freq;
}
/* x0' = x0 cos - x1 sin;  x1' = x1 cos + x0 sin */
static inline OPS_HD void ops_rope_rotate(float *x0, float *x1, float c, float s) {
    float a = *x0, b = *x1;
    *x0 = a * c - b * s;
    *x1 = b * c + a * s;
}
/* the transpose rotation (the backward of ops_rope_rotate) */
static inline OPS_HD void ops_rope_rotate_t(float *d0, float *d1, float c, float s) {
    float a = *d0, b = *d1;
    *d0 = a * c + b * s;
    *d1 = b * c - a * s;
}

/* ---- SiLU / SwiGLU (PyTorch: silu(x) = x / (1 + exp(-x))) ---- */
static inline OPS_HD float ops_sigmoid(float x) {
    return 1.0f / (1.0f + OPS_EXPF(-x));
}
static inline OPS_HD float ops_silu(float x) {
    return x / (1.0f + OPS_EXPF(-x));
}
/* out = silu(gate) * up */
static inline OPS_HD float ops_swiglu(float gate, float up) {
    return ops_silu(gate) * up;
}
/* d/dgate and d/dup of silu(gate) * up, given dout */
static inline OPS_HD void ops_swiglu_grad(float dout, float gate, float up, float *dgate,
                                          float *dup) {
    float sg = ops_sigmoid(gate);
    float silu = gate * sg;
    *dup = dout * silu;
    /* PyTorch silu_backward: dy * sig * (1 + x * (1 - sig)) */
    *dgate = (dout * up) * (sg * (1.0f + gate * (1.0f - sg)));
}

/* ---- RMSNorm (Hugging Face Llama/Qwen2: w * (x * rsqrt(mean(x^2) + eps))) ---- */
/* rstd from the (double-accumulated) sum of squares of a row of C values */
static inline OPS_HD float ops_rms_rstd(double sum_sq, int C, float eps) {
    float var = (float)(sum_sq / (double)C);
    return 1.0f / sqrtf(var + eps);
}
static inline OPS_HD float ops_rms_out(float x, float rstd, float w) {
    return w * (x * rstd);
}
/* dx = rstd * (w dy) - x * rstd^3 / C * sum_j(w_j dy_j x_j);  dot = that sum (double) */
static inline OPS_HD float ops_rms_dx(float x, float w, float dy, float rstd, float coef) {
    /* coef = rstd^3 * dot / C */
    return rstd * (w * dy) - x * coef;
}

/* ---- log-softmax / entropy pieces (z = logits * inv_temp, lse of z) ----
 * d logp_t / dz_k = [k == t] - p_k;   d H / dz_k = -p_k (log p_k + H) */
static inline OPS_HD float ops_logprob_dz(float z, float lse, float H, float dlogp, float dent,
                                          int is_target) {
    float logp = z - lse;
    float p = OPS_EXPF(logp);
    float g = -p * (dlogp + dent * (logp + H));
    return is_target ? g + dlogp : g;
}

/* ---- AdamW, torch.optim.AdamW (single-tensor path) element update ----
 * Scalars precomputed per step by ops_adamw_scalars (as PyTorch computes them in double and
 * casts to float when it applies them to a float tensor). */
typedef struct ops_adamw_scalars {
    float decay;    /* 1 - lr * wd */
    float w1;       /* 1 - beta1 (lerp weight) */
    float beta2;    /* beta2 */
    float w2;       /* 1 - beta2 */
    float bc2_sqrt; /* sqrt(1 - beta2^t) */
    float eps;
    float neg_step; /* -lr / (1 - beta1^t) */
    float grad_scale;
} ops_adamw_scalars;

static inline OPS_HD ops_adamw_scalars ops_adamw_make(float lr, float beta1, float beta2, float eps,
                                                      float wd, int t, float grad_scale) {
    ops_adamw_scalars s;
    double bc1 = 1.0 - pow((double)beta1, (double)t);
    double bc2 = 1.0 - pow((double)beta2, (double)t);
    s.decay = (float)(1.0 - (double)lr * (double)wd);
    s.w1 = (float)(1.0 - (double)beta1);
    s.beta2 = beta2;
    s.w2 = (float)(1.0 - (double)beta2);
    s.bc2_sqrt = (float)sqrt(bc2);
    s.eps = eps;
    s.neg_step = (float)(-((double)lr / bc1));
    s.grad_scale = grad_scale;
    return s;
}

/* one element: p, m, v updated in place, in PyTorch's order of operations
 * (param.mul_; exp_avg.lerp_ (vectorised fmadd form); exp_avg_sq.mul_.addcmul_;
 *  denom = sqrt(v) / bc2_sqrt + eps; param.addcdiv_(m, denom, -step)) */
static inline OPS_HD void ops_adamw_elem(float *p, float *m, float *v, float grad,
                                         const ops_adamw_scalars *s) {
    float g = grad * s->grad_scale;
    float pp = *p * s->decay;
    float mm = *m;
    mm = s->w1 < 0.5f ? fmaf(s->w1, g - mm, mm) : fmaf(s->w1 - 1.0f, g - mm, g);
    float vv = *v * s->beta2;
    vv = vv + (s->w2 * g) * g;
    float denom = sqrtf(vv) / s->bc2_sqrt + s->eps;
    *p = pp + (s->neg_step * mm) / denom;
    *m = mm;
    *v = vv;
}

#endif
