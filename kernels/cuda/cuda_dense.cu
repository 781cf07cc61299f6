// cuda_dense.cu — CUDA matmul (cuBLAS), embedding, RMSNorm, RoPE, SwiGLU, elementwise ops,
// sum of squares and AdamW (kernels/ops.h). Per-element formulas come from kernels/ops_math.h,
// the same definitions the CPU backend uses.
//
// GEMMs keep fp32 storage; the compute type (cuda_impl::gemm_compute) picks bf16 tensor-core
// products with fp32 accumulation (default), TF32, or exact fp32 (ops_cuda.h).
// Column sums (dbias, RMSNorm dweight) are two-stage and in a fixed order, so they are
// deterministic; the embedding backward uses atomicAdd (its order, and so its last bits, vary).
//
// The gradient rule (ops.h): parameter gradients accumulate (+=), activation gradients overwrite,
// rmsnorm_backward adds into dinp (the residual stream).
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/ops_math.h"

// ---- matmul ----
// Row-major X (R, K) is column-major X^T (K, R), so each row-major product is computed as its
// transpose in cuBLAS's column-major terms.

__global__ void bias_broadcast_kernel(float *out, const float *bias, int N, int OC) {
    size_t n = (size_t)N * OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = bias[i % (size_t)OC];
}

static int gemm(ops_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                const float *A, int lda, const float *B, int ldb, float beta, float *Cm, int ldc) {
    cuda_impl *im = cu_impl(c);
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(im->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_32F, lda, B, CUDA_R_32F,
                              ldb, &beta, Cm, CUDA_R_32F, ldc, im->gemm_compute,
                              CUBLAS_GEMM_DEFAULT));
    return 0;
}

// part (P, C) = per-row-block column sums of f(n, c), then out (C) += the sum of the P parts
// in order. grid (ceil(C/32), P), block (32, 8).
template <typename F>
__global__ void colsum_partial_kernel(float *part, int N, int C, int rows_per, F f) {
    __shared__ float sh[8][33];
    int col = blockIdx.x * 32 + threadIdx.x;
    int r0 = blockIdx.y * rows_per, r1 = min(N, r0 + rows_per);
    float s = 0.0f;
    if (col < C)
        for (int n = r0 + threadIdx.y; n < r1; n += 8)
            s += f(n, col);
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < C) {
        float t = 0.0f;
#pragma unroll
        for (int y = 0; y < 8; y++)
            t += sh[y][threadIdx.x];
        part[(size_t)blockIdx.y * C + col] = t;
    }
}

__global__ void colsum_finish_kernel(float *out, const float *part, int P, int C) {
    int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= C) return;
    float s = 0.0f;
    for (int p = 0; p < P; p++)
        s += part[(size_t)p * C + col];
    out[col] += s;
}

struct dbias_term {
    const float *dout;
    int OC;
    __device__ float operator()(int n, int col) const { return dout[(size_t)n * OC + col]; }
};

struct rms_dweight_term {
    const float *dout, *inp, *rstd;
    int C, ldi;
    __device__ float operator()(int n, int col) const {
        return dout[(size_t)n * C + col] * (inp[(size_t)n * ldi + col] * rstd[n]);
    }
};

template <typename F> static int colsum_add(ops_ctx *c, float *out, int N, int C, F f) {
    cuda_impl *im = cu_impl(c);
    int cb = (C + 31) / 32;
    int P = (N + 63) / 64; // at least 64 rows per block
    int want = (4 * im->num_sms + cb - 1) / cb;
    if (want < 1) want = 1;
    if (P > want) P = want;
    if (P < 1) P = 1;
    int rows_per = (N + P - 1) / P;
    float *part = (float *)cu_scratch(c, (size_t)P * C * sizeof(float));
    if (!part) return -1;
    colsum_partial_kernel<F><<<dim3(cb, P), dim3(32, 8), 0, im->stream>>>(part, N, C, rows_per, f);
    CU_LAUNCHED("colsum_partial_kernel");
    colsum_finish_kernel<<<(C + 255) / 256, 256, 0, im->stream>>>(out, part, P, C);
    CU_LAUNCHED("colsum_finish_kernel");
    return 0;
}

extern "C" int cuda_matmul_forward(ops_ctx *c, float *out, const float *inp, const float *weight,
                                   const float *bias, int N, int C, int OC) {
    CU_REQUIRE(N >= 0 && C >= 0 && OC >= 0, "matmul_forward: bad shape N=%d C=%d OC=%d", N, C, OC);
    if (N == 0 || OC == 0) return 0;
    CU_REQUIRE(out && inp && weight, "matmul_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    float beta = 0.0f;
    if (bias) {
        bias_broadcast_kernel<<<cu_blocks((size_t)N * OC, 256, im->num_sms), 256, 0, im->stream>>>(
            out, bias, N, OC);
        CU_LAUNCHED("bias_broadcast_kernel");
        beta = 1.0f;
    }
    if (C == 0) {
        if (!bias) CU_CHECK(cudaMemsetAsync(out, 0, (size_t)N * OC * sizeof(float), im->stream));
        return 0;
    }
    // out^T (OC, N) = W (OC, C) . inp^T (C, N)
    return gemm(c, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, inp, C, beta, out, OC);
}

extern "C" int cuda_matmul_backward(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                                    const float *dout, const float *inp, const float *weight, int N,
                                    int C, int OC, int dinp_accumulate) {
    CU_REQUIRE(N >= 0 && C >= 0 && OC >= 0, "matmul_backward: bad shape N=%d C=%d OC=%d", N, C, OC);
    CU_REQUIRE(dout, "matmul_backward: NULL dout");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    if (dinp && N > 0 && C > 0) {
        CU_REQUIRE(weight, "matmul_backward: NULL weight");
        if (OC == 0) {
            if (!dinp_accumulate)
                CU_CHECK(cudaMemsetAsync(dinp, 0, (size_t)N * C * sizeof(float), im->stream));
        } else {
            // dinp^T (C, N) (+)= W^T (C, OC) . dout^T (OC, N)
            if (gemm(c, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, dout, OC,
                     dinp_accumulate ? 1.0f : 0.0f, dinp, C) != 0)
                return -1;
        }
    }
    if (dweight && N > 0 && C > 0 && OC > 0) {
        CU_REQUIRE(inp, "matmul_backward: NULL inp");
        // dweight^T (C, OC) += inp^T (C, N) . dout (N, OC)
        if (gemm(c, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, inp, C, dout, OC, 1.0f, dweight, C) != 0)
            return -1;
    }
    if (dbias && N > 0 && OC > 0) {
        dbias_term f = {dout, OC};
        if (colsum_add(c, dbias, N, OC, f) != 0) return -1;
    }
    return 0;
}

// ---- bf16 weights ----
// The weights arrive in bf16 (a model's copy of its fp32 masters); float32 activations and
// gradients are rounded to bf16 into the context's scratch by one elementwise pass, and cuBLAS
// multiplies bf16 x bf16 with fp32 accumulation into float32 outputs. The rounding is
// ops_f32_to_bf16's (nearest even), the CPU backend's too.

__global__ void cast_bf16_kernel(uint16_t *dst, const float *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        dst[i] = ops_f32_to_bf16(src[i]);
}

static int cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n) {
    if (n == 0) return 0;
    cuda_impl *im = cu_impl(c);
    cast_bf16_kernel<<<cu_blocks(n, 256, im->num_sms), 256, 0, im->stream>>>(dst, src, n);
    CU_LAUNCHED("cast_bf16_kernel");
    return 0;
}

extern "C" int cuda_cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n) {
    CU_REQUIRE(n == 0 || (dst && src), "cast_bf16: NULL buffer");
    CU_ENTER();
    return cast_bf16(c, dst, src, n);
}

static int gemm_bf16(ops_ctx *c, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                     const uint16_t *A, int lda, const uint16_t *B, int ldb, float beta, float *Cm,
                     int ldc) {
    cuda_impl *im = cu_impl(c);
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(im->blas, ta, tb, m, n, k, &alpha, A, CUDA_R_16BF, lda, B,
                              CUDA_R_16BF, ldb, &beta, Cm, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                              CUBLAS_GEMM_DEFAULT));
    return 0;
}

static size_t align256(size_t bytes) {
    return (bytes + 255) & ~(size_t)255;
}

// out16 (N,OC) = bf16(y + bias): the epilogue of a GEMM whose output is stored in bf16
__global__ void bias_cast_bf16_kernel(uint16_t *out, const float *y, const float *bias, int N,
                                      int OC) {
    size_t n = (size_t)N * OC;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = ops_f32_to_bf16(bias ? y[i] + bias[i % (size_t)OC] : y[i]);
}

extern "C" int cuda_matmul_forward_bf16(ops_ctx *c, void *out, int out_bf16, const void *inp,
                                        int inp_bf16, const uint16_t *weight, const float *bias,
                                        int N, int C, int OC) {
    CU_REQUIRE(N >= 0 && C >= 0 && OC >= 0, "matmul_forward_bf16: bad shape N=%d C=%d OC=%d", N,
               C, OC);
    if (N == 0 || OC == 0) return 0;
    CU_REQUIRE(out && inp && weight, "matmul_forward_bf16: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    // scratch: the input rounded to bf16 (unless it is bf16), then a float32 result to round
    size_t xbytes = inp_bf16 ? 0 : align256((size_t)N * C * sizeof(uint16_t));
    size_t ybytes = out_bf16 ? (size_t)N * OC * sizeof(float) : 0;
    char *scr = xbytes + ybytes ? (char *)cu_scratch(c, xbytes + ybytes) : NULL;
    if (xbytes + ybytes && !scr) return -1;
    const uint16_t *x = (const uint16_t *)inp;
    if (!inp_bf16) {
        x = (const uint16_t *)scr;
        if (cast_bf16(c, (uint16_t *)scr, (const float *)inp, (size_t)N * C) != 0) return -1;
    }
    float *y = out_bf16 ? (float *)(scr + xbytes) : (float *)out;
    float beta = 0.0f;
    if (bias && !out_bf16) {
        bias_broadcast_kernel<<<cu_blocks((size_t)N * OC, 256, im->num_sms), 256, 0, im->stream>>>(
            y, bias, N, OC);
        CU_LAUNCHED("bias_broadcast_kernel");
        beta = 1.0f;
    }
    if (C == 0) {
        if (beta == 0.0f) CU_CHECK(cudaMemsetAsync(y, 0, (size_t)N * OC * sizeof(float), im->stream));
    } else {
        // out^T (OC, N) = W (OC, C) . inp^T (C, N)
        if (gemm_bf16(c, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, weight, C, x, C, beta, y, OC) != 0)
            return -1;
    }
    if (out_bf16) {
        bias_cast_bf16_kernel<<<cu_blocks((size_t)N * OC, 256, im->num_sms), 256, 0,
                                im->stream>>>((uint16_t *)out, y, bias, N, OC);
        CU_LAUNCHED("bias_cast_bf16_kernel");
    }
    return 0;
}

extern "C" int cuda_matmul_backward_bf16(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                                         const float *dout, const void *inp, int inp_bf16,
                                         const uint16_t *weight, int N, int C, int OC,
                                         int dinp_accumulate) {
    CU_REQUIRE(N >= 0 && C >= 0 && OC >= 0, "matmul_backward_bf16: bad shape N=%d C=%d OC=%d", N,
               C, OC);
    CU_REQUIRE(dout, "matmul_backward_bf16: NULL dout");
    CU_REQUIRE(!dinp || weight, "matmul_backward_bf16: NULL weight");
    CU_REQUIRE(!dweight || N == 0 || inp, "matmul_backward_bf16: NULL inp");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    // dbias from the float32 dout first: colsum_add takes the scratch the casts take below
    if (dbias && N > 0 && OC > 0) {
        dbias_term f = {dout, OC};
        if (colsum_add(c, dbias, N, OC, f) != 0) return -1;
    }
    if (N == 0 || C == 0) return 0;
    if (OC == 0) {
        if (dinp && !dinp_accumulate)
            CU_CHECK(cudaMemsetAsync(dinp, 0, (size_t)N * C * sizeof(float), im->stream));
        return 0;
    }
    if (!dinp && !dweight) return 0;
    size_t dbytes = align256((size_t)N * OC * sizeof(uint16_t));
    size_t xbytes = dweight && !inp_bf16 ? (size_t)N * C * sizeof(uint16_t) : 0;
    char *scr = (char *)cu_scratch(c, dbytes + xbytes);
    if (!scr) return -1;
    uint16_t *d = (uint16_t *)scr;
    if (cast_bf16(c, d, dout, (size_t)N * OC) != 0) return -1;
    // dinp^T (C, N) (+)= W^T (C, OC) . dout^T (OC, N)
    if (dinp && gemm_bf16(c, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, weight, C, d, OC,
                          dinp_accumulate ? 1.0f : 0.0f, dinp, C) != 0)
        return -1;
    if (dweight) {
        const uint16_t *x = (const uint16_t *)inp;
        if (!inp_bf16) {
            x = (const uint16_t *)(scr + dbytes);
            if (cast_bf16(c, (uint16_t *)(scr + dbytes), (const float *)inp, (size_t)N * C) != 0)
                return -1;
        }
        // dweight^T (C, OC) += inp^T (C, N) . dout (N, OC)
        if (gemm_bf16(c, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, x, C, d, OC, 1.0f, dweight, C) != 0)
            return -1;
    }
    return 0;
}

// ---- embedding ----

__global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const float *wte, int N,
                                         int C, int V, unsigned int *flags) {
    size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / (size_t)C, col = i % (size_t)C;
        int t = tokens[n];
        if (t < 0 || t >= V) {
            if (col == 0) cu_raise(flags, CU_EFLAG_TOKEN);
            out[i] = 0.0f;
        } else {
            out[i] = wte[(size_t)t * C + col];
        }
    }
}

__global__ void embedding_backward_kernel(float *dwte, const float *dout, const int32_t *tokens,
                                          int N, int C, int V, unsigned int *flags) {
    size_t total = (size_t)N * C;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / (size_t)C, col = i % (size_t)C;
        int t = tokens[n];
        if (t < 0 || t >= V) {
            if (col == 0) cu_raise(flags, CU_EFLAG_TOKEN);
            continue;
        }
        atomicAdd(&dwte[(size_t)t * C + col], dout[i]);
    }
}

extern "C" int cuda_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens,
                                      const float *wte, int N, int C, int V) {
    CU_REQUIRE(N >= 0 && C >= 0 && V >= 0, "embedding_forward: bad shape");
    if (N == 0 || C == 0) return 0;
    CU_REQUIRE(out && tokens && wte, "embedding_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    embedding_forward_kernel<<<cu_blocks((size_t)N * C, 256, im->num_sms), 256, 0, im->stream>>>(
        out, tokens, wte, N, C, V, im->flags_dev);
    CU_LAUNCHED("embedding_forward_kernel");
    return 0;
}

extern "C" int cuda_embedding_backward(ops_ctx *c, float *dwte, const float *dout,
                                       const int32_t *tokens, int N, int C, int V) {
    CU_REQUIRE(N >= 0 && C >= 0 && V >= 0, "embedding_backward: bad shape");
    if (N == 0 || C == 0) return 0;
    CU_REQUIRE(dwte && tokens && dout, "embedding_backward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    embedding_backward_kernel<<<cu_blocks((size_t)N * C, 256, im->num_sms), 256, 0, im->stream>>>(
        dwte, dout, tokens, N, C, V, im->flags_dev);
    CU_LAUNCHED("embedding_backward_kernel");
    return 0;
}

// ---- RMSNorm: one warp per row ----

__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, int ldi,
                                       const float *weight, int N, int C, float eps) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *x = inp + (size_t)row * ldi;
    float *o = out + (size_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32)
        ss = fmaf(x[i], x[i], ss);
    ss = cu_warp_sum(ss);
    float r = ops_rms_rstd((double)ss, C, eps);
    for (int i = lane; i < C; i += 32)
        o[i] = ops_rms_out(x[i], r, weight[i]);
    if (rstd && lane == 0) rstd[row] = r;
}

__global__ void rmsnorm_backward_dinp_kernel(float *dinp, int ldi, const float *dout,
                                             const float *inp, const float *weight,
                                             const float *rstd, int N, int C) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const float *x = inp + (size_t)row * ldi;
    const float *dy = dout + (size_t)row * C;
    float *dx = dinp + (size_t)row * ldi;
    float r = rstd[row];
    float dot = 0.0f;
    for (int i = lane; i < C; i += 32)
        dot = fmaf(weight[i] * dy[i], x[i], dot);
    dot = cu_warp_sum(dot);
    float coef = (float)((double)r * r * r * (double)dot / C);
    for (int i = lane; i < C; i += 32)
        dx[i] += ops_rms_dx(x[i], weight[i], dy[i], r, coef);
}

extern "C" int cuda_rmsnorm_forward(ops_ctx *c, float *out, float *rstd, const float *inp, int ldi,
                                    const float *weight, int N, int C, float eps) {
    CU_REQUIRE(N >= 0 && C > 0 && ldi >= C, "rmsnorm_forward: bad shape N=%d C=%d ldi=%d", N, C,
               ldi);
    if (N == 0) return 0;
    CU_REQUIRE(out && inp && weight, "rmsnorm_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    rmsnorm_forward_kernel<<<(N + 7) / 8, 256, 0, im->stream>>>(out, rstd, inp, ldi, weight, N, C,
                                                                eps);
    CU_LAUNCHED("rmsnorm_forward_kernel");
    return 0;
}

extern "C" int cuda_rmsnorm_backward(ops_ctx *c, float *dinp, int ldi, float *dweight,
                                     const float *dout, const float *inp, const float *weight,
                                     const float *rstd, int N, int C) {
    CU_REQUIRE(N >= 0 && C > 0 && ldi >= C, "rmsnorm_backward: bad shape N=%d C=%d ldi=%d", N, C,
               ldi);
    if (N == 0) return 0;
    CU_REQUIRE(dout && inp && weight && rstd, "rmsnorm_backward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    if (dweight) {
        rms_dweight_term f = {dout, inp, rstd, C, ldi};
        if (colsum_add(c, dweight, N, C, f) != 0) return -1;
    }
    if (dinp) {
        rmsnorm_backward_dinp_kernel<<<(N + 7) / 8, 256, 0, im->stream>>>(dinp, ldi, dout, inp,
                                                                          weight, rstd, N, C);
        CU_LAUNCHED("rmsnorm_backward_dinp_kernel");
    }
    return 0;
}

// ---- RoPE (rotate-half), in place: one thread per (row, head, i < D/2) ----

__global__ void rope_kernel(float *x, int ldx, const int32_t *positions, const float *inv_freq,
                            int N, int H, int D, int transpose, unsigned int *flags) {
    int half = D / 2;
    size_t total = (size_t)N * H * half;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        int i = (int)(idx % (size_t)half);
        size_t nh = idx / (size_t)half;
        int h = (int)(nh % (size_t)H);
        size_t n = nh / (size_t)H;
        int pos = positions[n];
        if (pos < 0) {
            if (h == 0 && i == 0) cu_raise(flags, CU_EFLAG_POS);
            continue;
        }
        float s, co;
        sincosf(ops_rope_angle(pos, inv_freq[i]), &s, &co);
        float *x0 = x + n * (size_t)ldx + (size_t)h * D + i;
        float *x1 = x0 + half;
        if (!transpose)
            ops_rope_rotate(x0, x1, co, s);
        else
            ops_rope_rotate_t(x0, x1, co, s);
    }
}

static int rope_apply(ops_ctx *c, const char *what, float *x, int ldx, const int32_t *positions,
                      const float *inv_freq, int N, int H, int D, int transpose) {
    CU_REQUIRE(N >= 0 && H >= 0 && D > 0 && D % 2 == 0 && ldx >= H * D,
               "%s: bad shape N=%d H=%d D=%d ldx=%d", what, N, H, D, ldx);
    if (N == 0 || H == 0) return 0;
    CU_REQUIRE(x && positions && inv_freq, "%s: NULL buffer", what);
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    size_t total = (size_t)N * H * (D / 2);
    rope_kernel<<<cu_blocks(total, 256, im->num_sms), 256, 0, im->stream>>>(
        x, ldx, positions, inv_freq, N, H, D, transpose, im->flags_dev);
    CU_LAUNCHED("rope_kernel");
    return 0;
}

extern "C" int cuda_rope_forward(ops_ctx *c, float *x, int ldx, const int32_t *positions,
                                 const float *inv_freq, int N, int H, int D) {
    return rope_apply(c, "rope_forward", x, ldx, positions, inv_freq, N, H, D, 0);
}

extern "C" int cuda_rope_backward(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                                  const float *inv_freq, int N, int H, int D) {
    return rope_apply(c, "rope_backward", dx, ldx, positions, inv_freq, N, H, D, 1);
}

// ---- SwiGLU ----

// gate and up in float32, or in bf16 (an activation stored in bf16: widened exactly)
__device__ __forceinline__ float cu_load(float x) {
    return x;
}
__device__ __forceinline__ float cu_load(uint16_t x) {
    return ops_bf16_to_f32(x);
}

template <typename T>
__global__ void swiglu_forward_kernel(float *out, const T *gate, int ldg, const T *up, int ldu,
                                      int N, int I) {
    size_t total = (size_t)N * I;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t n = idx / (size_t)I, i = idx % (size_t)I;
        out[idx] = ops_swiglu(cu_load(gate[n * ldg + i]), cu_load(up[n * ldu + i]));
    }
}

// dgate / dup may alias gate / up element for element (float32): each thread reads both, then
// writes
template <typename T>
__global__ void swiglu_backward_kernel(float *dgate, float *dup, int ld_dgu, const float *dout,
                                       const T *gate, const T *up, int ld_gu, int N, int I) {
    size_t total = (size_t)N * I;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        size_t n = idx / (size_t)I, i = idx % (size_t)I;
        float g = cu_load(gate[n * ld_gu + i]), u = cu_load(up[n * ld_gu + i]), dg, du;
        ops_swiglu_grad(dout[idx], g, u, &dg, &du);
        dgate[n * ld_dgu + i] = dg;
        dup[n * ld_dgu + i] = du;
    }
}

template <typename T>
static int swiglu_forward(ops_ctx *c, float *out, const T *gate, int ldg, const T *up, int ldu,
                          int N, int I) {
    CU_REQUIRE(N >= 0 && I >= 0 && ldg >= I && ldu >= I, "swiglu_forward: bad shape");
    if (N == 0 || I == 0) return 0;
    CU_REQUIRE(out && gate && up, "swiglu_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    swiglu_forward_kernel<T><<<cu_blocks((size_t)N * I, 256, im->num_sms), 256, 0, im->stream>>>(
        out, gate, ldg, up, ldu, N, I);
    CU_LAUNCHED("swiglu_forward_kernel");
    return 0;
}

template <typename T>
static int swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                           const T *gate, const T *up, int ld_gu, int N, int I) {
    CU_REQUIRE(N >= 0 && I >= 0 && ld_dgu >= I && ld_gu >= I, "swiglu_backward: bad shape");
    if (N == 0 || I == 0) return 0;
    CU_REQUIRE(dgate && dup && dout && gate && up, "swiglu_backward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    swiglu_backward_kernel<T><<<cu_blocks((size_t)N * I, 256, im->num_sms), 256, 0, im->stream>>>(
        dgate, dup, ld_dgu, dout, gate, up, ld_gu, N, I);
    CU_LAUNCHED("swiglu_backward_kernel");
    return 0;
}

extern "C" int cuda_swiglu_forward(ops_ctx *c, float *out, const float *gate, int ldg,
                                   const float *up, int ldu, int N, int I) {
    return swiglu_forward(c, out, gate, ldg, up, ldu, N, I);
}

extern "C" int cuda_swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu,
                                    const float *dout, const float *gate, const float *up,
                                    int ld_gu, int N, int I) {
    return swiglu_backward(c, dgate, dup, ld_dgu, dout, gate, up, ld_gu, N, I);
}

extern "C" int cuda_swiglu_forward_bf16(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                                        const uint16_t *up, int ldu, int N, int I) {
    return swiglu_forward(c, out, gate, ldg, up, ldu, N, I);
}

extern "C" int cuda_swiglu_backward_bf16(ops_ctx *c, float *dgate, float *dup, int ld_dgu,
                                         const float *dout, const uint16_t *gate,
                                         const uint16_t *up, int ld_gu, int N, int I) {
    return swiglu_backward(c, dgate, dup, ld_dgu, dout, gate, up, ld_gu, N, I);
}

// ---- elementwise ----

__global__ void add_kernel(float *a, const float *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        a[i] += b[i];
}

__global__ void scale_kernel(float *a, float s, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        a[i] *= s;
}

extern "C" int cuda_add_inplace(ops_ctx *c, float *a, const float *b, size_t n) {
    if (n == 0) return 0;
    CU_REQUIRE(a && b, "add_inplace: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    add_kernel<<<cu_blocks(n, 256, im->num_sms), 256, 0, im->stream>>>(a, b, n);
    CU_LAUNCHED("add_kernel");
    return 0;
}

__global__ void axpy2d_kernel(float *y, int ldy, const float *x, int ldx, int rows, int cols,
                              float alpha, int accumulate) {
    size_t total = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t r = i / (size_t)cols, j = i % (size_t)cols;
        float v = alpha * x[r * (size_t)ldx + j];
        float *dst = y + r * (size_t)ldy + j;
        *dst = accumulate ? *dst + v : v;
    }
}

extern "C" int cuda_axpy2d(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows,
                           int cols, float alpha, int accumulate) {
    CU_REQUIRE(rows >= 0 && cols >= 0 && ldy >= cols && ldx >= cols, "axpy2d: bad shape");
    if (rows == 0 || cols == 0) return 0;
    CU_REQUIRE(y && x, "axpy2d: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    size_t total = (size_t)rows * cols;
    axpy2d_kernel<<<cu_blocks(total, 256, im->num_sms), 256, 0, im->stream>>>(
        y, ldy, x, ldx, rows, cols, alpha, accumulate);
    CU_LAUNCHED("axpy2d_kernel");
    return 0;
}

__global__ void dropout_kernel(float *out, const float *inp, int N, int C, float p,
                               unsigned long long seed, int accumulate) {
    size_t total = (size_t)N * C;
    const float scale = 1.0f / (1.0f - p);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        long long n = (long long)(i / (size_t)C), j = (long long)(i % (size_t)C);
        float v = ops_dropout_keep(seed, n, j, p) ? inp[i] * scale : 0.0f;
        out[i] = accumulate ? out[i] + v : v;
    }
}

extern "C" int cuda_dropout(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                            unsigned long long seed, int accumulate) {
    CU_REQUIRE(N >= 0 && C >= 0 && p >= 0.0f && p < 1.0f, "dropout: bad shape or p");
    if (N == 0 || C == 0) return 0;
    CU_REQUIRE(out && inp, "dropout: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    dropout_kernel<<<cu_blocks((size_t)N * C, 256, im->num_sms), 256, 0, im->stream>>>(
        out, inp, N, C, p, seed, accumulate);
    CU_LAUNCHED("dropout_kernel");
    return 0;
}

extern "C" int cuda_scale_inplace(ops_ctx *c, float *a, float s, size_t n) {
    if (n == 0) return 0;
    CU_REQUIRE(a, "scale_inplace: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    scale_kernel<<<cu_blocks(n, 256, im->num_sms), 256, 0, im->stream>>>(a, s, n);
    CU_LAUNCHED("scale_kernel");
    return 0;
}

// ---- sum of squares: fixed grid, per-block partials, one ordered final sum (deterministic) ----

enum { SS_BLOCKS = 1024, SS_THREADS = 512 };

__global__ void sum_squares_partial_kernel(double *part, const float *x, size_t n) {
    __shared__ double sh[33];
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        s += (double)x[i] * (double)x[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_squares_finish_kernel(double *out, const double *part, int P) {
    __shared__ double sh[33];
    double s = 0.0;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        s += part[i];
    s = cu_block_sum(s, sh);
    if (threadIdx.x == 0) *out = s;
}

extern "C" int cuda_sum_squares(ops_ctx *c, double *out_host, const float *x, size_t n) {
    CU_REQUIRE(out_host, "sum_squares: NULL output");
    *out_host = 0.0;
    if (n == 0) return 0;
    CU_REQUIRE(x, "sum_squares: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    size_t want = (n + SS_THREADS - 1) / SS_THREADS;
    int P = want < SS_BLOCKS ? (int)want : SS_BLOCKS;
    double *part = (double *)cu_scratch(c, (size_t)(P + 1) * sizeof(double));
    double *host = (double *)cu_pinned(c, sizeof(double));
    if (!part || !host) return -1;
    sum_squares_partial_kernel<<<P, SS_THREADS, 0, im->stream>>>(part + 1, x, n);
    CU_LAUNCHED("sum_squares_partial_kernel");
    sum_squares_finish_kernel<<<1, 1024, 0, im->stream>>>(part, part + 1, P);
    CU_LAUNCHED("sum_squares_finish_kernel");
    CU_CHECK(cudaMemcpyAsync(host, part, sizeof(double), cudaMemcpyDeviceToHost, im->stream));
    if (cu_sync_check(c, "sum_squares") != 0) return -1;
    *out_host = *host;
    return 0;
}

// ---- AdamW (ops_math.h's element update, PyTorch's order of operations) ----

__global__ void adamw_kernel(float *param, const float *grad, float *m, float *v, size_t n,
                             ops_adamw_scalars s) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float p = param[i], mm = m[i], vv = v[i];
        ops_adamw_elem(&p, &mm, &vv, grad[i], &s);
        param[i] = p;
        m[i] = mm;
        v[i] = vv;
    }
}

extern "C" int cuda_adamw_update(ops_ctx *c, float *param, const float *grad, float *m, float *v,
                                 size_t n, float lr, float beta1, float beta2, float eps,
                                 float weight_decay, int t, float grad_scale) {
    CU_REQUIRE(t >= 1, "adamw_update: step t=%d (counts from 1)", t);
    if (n == 0) return 0;
    CU_REQUIRE(param && grad && m && v, "adamw_update: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    ops_adamw_scalars s = ops_adamw_make(lr, beta1, beta2, eps, weight_decay, t, grad_scale);
    adamw_kernel<<<cu_blocks(n, 256, im->num_sms), 256, 0, im->stream>>>(param, grad, m, v, n, s);
    CU_LAUNCHED("adamw_kernel");
    return 0;
}
