/* cpu_dense.c — CPU matmul, embedding, RMSNorm, RoPE, SwiGLU, elementwise ops and AdamW. */
#include <omp.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/cpu_vmath.h"
#define OPS_EXPF cpu_expf
#include "kernels/ops_math.h"

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) return cpu_fail(c, __VA_ARGS__);                                              \
    } while (0)

/* ---- matmul ---- */

int cpu_matmul_forward(ops_ctx *c, float *out, const float *inp, const float *weight,
                       const float *bias, int N, int C, int OC) {
    CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_forward: bad shape N=%d C=%d OC=%d", N, C, OC);
    if (N == 0 || OC == 0) return 0;
    CHECK(out && inp && weight, "matmul_forward: NULL buffer");
    float beta = 0.0f;
    if (bias) {
        int nt = cpu_threads_for(c, (double)N * OC);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
        beta = 1.0f;
    }
    cpu_gemm(c, 0, 1, N, OC, C, 1.0f, inp, C, weight, C, beta, out, OC);
    return 0;
}

int cpu_matmul_backward(ops_ctx *c, float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int C, int OC,
                        int dinp_accumulate) {
    CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_backward: bad shape N=%d C=%d OC=%d", N, C, OC);
    CHECK(dout, "matmul_backward: NULL dout");
    if (dinp) {
        CHECK(weight, "matmul_backward: NULL weight");
        /* dinp (N,C) (+)= dout (N,OC) @ weight (OC,C) */
        cpu_gemm(c, 0, 0, N, C, OC, 1.0f, dout, OC, weight, C, dinp_accumulate ? 1.0f : 0.0f, dinp,
                 C);
    }
    if (dweight && N > 0) {
        CHECK(inp, "matmul_backward: NULL inp");
        /* dweight (OC,C) += dout^T (OC,N) @ inp (N,C) */
        cpu_gemm(c, 1, 0, OC, C, N, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    }
    if (dbias && N > 0) {
        /* column sums in double, over column blocks in parallel */
        enum { CB = 256 };
        int nb = (OC + CB - 1) / CB;
        int nt = cpu_threads_for(c, (double)N * OC);
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int b = 0; b < nb; b++) {
            double acc[CB];
            int j0 = b * CB, nj = OC - j0 < CB ? OC - j0 : CB;
            for (int j = 0; j < nj; j++)
                acc[j] = 0.0;
            for (int n = 0; n < N; n++) {
                const float *row = dout + (size_t)n * OC + j0;
                for (int j = 0; j < nj; j++)
                    acc[j] += (double)row[j];
            }
            for (int j = 0; j < nj; j++)
                dbias[j0 + j] += (float)acc[j];
        }
    }
    return 0;
}

/* ---- bf16 weights: the same GEMMs on operands rounded to bf16 (widened back to float32, which
 * is exact), so the sums are fp32 as on tensor cores. The widened copies are temporary: the CPU
 * path is for checking the GPU's and for running a bf16 model anywhere, not for speed. ---- */

int cpu_cast_bf16(ops_ctx *c, uint16_t *dst, const float *src, size_t n) {
    CHECK(n == 0 || (dst && src), "cast_bf16: NULL buffer");
    int nt = cpu_threads_for(c, (double)n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        dst[i] = ops_f32_to_bf16(src[i]);
    return 0;
}

/* a float32 copy of bf16 (n), or of float32 (n) rounded to bf16; NULL when out of memory */
static float *widened(ops_ctx *c, const uint16_t *h, const float *f, size_t n) {
    float *w = malloc((n ? n : 1) * sizeof *w);
    if (!w) return NULL;
    int nt = cpu_threads_for(c, (double)n);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        w[i] = h ? ops_bf16_to_f32(h[i]) : ops_bf16_round(f[i]);
    return w;
}

int cpu_matmul_forward_bf16(ops_ctx *c, void *out, int out_bf16, const void *inp, int inp_bf16,
                            const uint16_t *weight, const float *bias, int N, int C, int OC) {
    CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_forward_bf16: bad shape N=%d C=%d OC=%d", N, C,
          OC);
    if (N == 0 || OC == 0) return 0;
    CHECK(out && inp && weight, "matmul_forward_bf16: NULL buffer");
    float *x = inp_bf16 ? widened(c, inp, NULL, (size_t)N * C) : widened(c, NULL, inp, (size_t)N * C);
    float *w = widened(c, weight, NULL, (size_t)OC * C);
    float *y = out_bf16 ? malloc((size_t)N * OC * sizeof *y) : out;
    int rc = x && w && y ? cpu_matmul_forward(c, y, x, w, bias, N, C, OC)
                         : cpu_fail(c, "matmul_forward_bf16: out of memory");
    if (rc == 0 && out_bf16) rc = cpu_cast_bf16(c, out, y, (size_t)N * OC);
    free(x);
    free(w);
    if (out_bf16) free(y);
    return rc;
}

int cpu_matmul_backward_bf16(ops_ctx *c, float *dinp, float *dweight, float *dbias,
                             const float *dout, const void *inp, int inp_bf16,
                             const uint16_t *weight, int N, int C, int OC, int dinp_accumulate) {
    CHECK(N >= 0 && C >= 0 && OC >= 0, "matmul_backward_bf16: bad shape N=%d C=%d OC=%d", N, C,
          OC);
    CHECK(dout, "matmul_backward_bf16: NULL dout");
    CHECK(!dinp || weight, "matmul_backward_bf16: NULL weight");
    CHECK(!dweight || N == 0 || inp, "matmul_backward_bf16: NULL inp");
    /* dbias from the float32 dout, then both products from bf16(dout) */
    if (dbias && cpu_matmul_backward(c, NULL, NULL, dbias, dout, NULL, NULL, N, C, OC, 0) != 0)
        return -1;
    if (!dinp && !dweight) return 0;
    float *d = widened(c, NULL, dout, (size_t)N * OC);
    float *w = dinp ? widened(c, weight, NULL, (size_t)OC * C) : NULL;
    float *x = !dweight ? NULL
               : inp_bf16 ? widened(c, inp, NULL, (size_t)N * C)
                          : widened(c, NULL, inp, (size_t)N * C);
    int rc = d && (!dinp || w) && (!dweight || x)
                 ? cpu_matmul_backward(c, dinp, dweight, NULL, d, x, w, N, C, OC, dinp_accumulate)
                 : cpu_fail(c, "matmul_backward_bf16: out of memory");
    free(d);
    free(w);
    free(x);
    return rc;
}

/* ---- embedding ---- */

int cpu_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens, const float *wte, int N,
                          int C, int V) {
    CHECK(N >= 0 && C >= 0 && V >= 0, "embedding_forward: bad shape");
    if (N == 0 || C == 0) return 0;
    CHECK(out && tokens && wte, "embedding_forward: NULL buffer");
    for (int n = 0; n < N; n++)
        CHECK(tokens[n] >= 0 && tokens[n] < V,
              "embedding_forward: token %d at row %d is outside the vocabulary (V=%d)", tokens[n],
              n, V);
    int nt = cpu_threads_for(c, (double)N * C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++)
        memcpy(out + (size_t)n * C, wte + (size_t)tokens[n] * C, (size_t)C * sizeof(float));
    return 0;
}

int cpu_embedding_backward(ops_ctx *c, float *dwte, const float *dout, const int32_t *tokens, int N,
                           int C, int V) {
    CHECK(N >= 0 && C >= 0 && V >= 0, "embedding_backward: bad shape");
    if (N == 0 || C == 0) return 0;
    CHECK(dwte && tokens && dout, "embedding_backward: NULL buffer");
    for (int n = 0; n < N; n++)
        CHECK(tokens[n] >= 0 && tokens[n] < V,
              "embedding_backward: token %d at row %d is outside the vocabulary (V=%d)", tokens[n],
              n, V);
    /* threads own disjoint column ranges, so repeated tokens never race */
    int nt = cpu_threads_for(c, (double)N * C);
    if (C < 64 * nt) nt = 1;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        int j0 = (int)((long)C * tid / T) & ~15,
            j1 = tid == T - 1 ? C : (int)((long)C * (tid + 1) / T) & ~15;
        for (int n = 0; n < N; n++) {
            float *restrict d = dwte + (size_t)tokens[n] * C;
            const float *restrict g = dout + (size_t)n * C;
            for (int j = j0; j < j1; j++)
                d[j] += g[j];
        }
    }
    return 0;
}

/* ---- RMSNorm ---- */

int cpu_rmsnorm_forward(ops_ctx *c, float *out, float *rstd, const float *inp, int ldi,
                        const float *weight, int N, int C, float eps) {
    CHECK(N >= 0 && C > 0 && ldi >= C, "rmsnorm_forward: bad shape N=%d C=%d ldi=%d", N, C, ldi);
    if (N == 0) return 0;
    CHECK(out && inp && weight, "rmsnorm_forward: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * ldi;
        float *restrict o = out + (size_t)n * C;
        double ss = 0.0;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < C; i++)
            ss += (double)x[i] * (double)x[i];
        float r = ops_rms_rstd(ss, C, eps);
        for (int i = 0; i < C; i++)
            o[i] = ops_rms_out(x[i], r, weight[i]);
        if (rstd) rstd[n] = r;
    }
    return 0;
}

int cpu_rmsnorm_backward(ops_ctx *c, float *dinp, int ldi, float *dweight, const float *dout,
                         const float *inp, const float *weight, const float *rstd, int N, int C) {
    CHECK(N >= 0 && C > 0 && ldi >= C, "rmsnorm_backward: bad shape N=%d C=%d ldi=%d", N, C, ldi);
    if (N == 0) return 0;
    CHECK(dout && inp && weight && rstd, "rmsnorm_backward: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * C);
    if (dinp) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * ldi;
            const float *restrict dy = dout + (size_t)n * C;
            float *restrict dx = dinp + (size_t)n * ldi;
            float r = rstd[n];
            double dot = 0.0;
#pragma omp simd reduction(+ : dot)
            for (int i = 0; i < C; i++)
                dot += (double)(weight[i] * dy[i]) * (double)x[i];
            float coef = (float)((double)r * r * r * dot / C);
            for (int i = 0; i < C; i++)
                dx[i] += ops_rms_dx(x[i], weight[i], dy[i], r, coef);
        }
    }
    if (dweight) {
        /* dweight[i] += sum_n dy[n,i] * x[n,i] * rstd[n], over column blocks */
        enum { CB = 256 };
        int nb = (C + CB - 1) / CB;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int b = 0; b < nb; b++) {
            double acc[CB];
            int j0 = b * CB, nj = C - j0 < CB ? C - j0 : CB;
            for (int j = 0; j < nj; j++)
                acc[j] = 0.0;
            for (int n = 0; n < N; n++) {
                const float *x = inp + (size_t)n * ldi + j0;
                const float *dy = dout + (size_t)n * C + j0;
                float r = rstd[n];
                for (int j = 0; j < nj; j++)
                    acc[j] += (double)(dy[j] * (x[j] * r));
            }
            for (int j = 0; j < nj; j++)
                dweight[j0 + j] += (float)acc[j];
        }
    }
    return 0;
}

/* ---- RoPE ----
 * cos/sin rows come from a per-context table for positions 0..npos-1, rebuilt when inv_freq
 * changes or a larger position appears. Entries are exactly cosf/sinf((float)pos * inv_freq). */

static const float *rope_table(ops_ctx *c, const int32_t *positions, const float *inv_freq, int N,
                               int half) {
    cpu_impl *im = c->impl;
    int maxpos = -1;
    for (int n = 0; n < N; n++) {
        if (positions[n] < 0) {
            cpu_fail(c, "rope: negative position %d at row %d", positions[n], n);
            return NULL;
        }
        if (positions[n] > maxpos) maxpos = positions[n];
    }
    int same = im->rope_tab && im->rope_half == half &&
               memcmp(im->rope_freq, inv_freq, (size_t)half * sizeof(float)) == 0;
    if (same && maxpos < im->rope_npos) return im->rope_tab;
    int npos = maxpos + 1;
    if (same && npos < 2 * im->rope_npos) npos = 2 * im->rope_npos;
    if (npos < 256) npos = 256;
    float *tab = malloc((size_t)npos * 2 * half * sizeof(float));
    float *fr = malloc((size_t)half * sizeof(float));
    if (!tab || !fr) {
        free(tab);
        free(fr);
        cpu_fail(c, "rope: out of memory for a %d-position table", npos);
        return NULL;
    }
    memcpy(fr, inv_freq, (size_t)half * sizeof(float));
    int nt = cpu_threads_for(c, (double)npos * half * 8);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int p = 0; p < npos; p++) {
        float *row = tab + (size_t)p * 2 * half;
        for (int i = 0; i < half; i++) {
            float a = ops_rope_angle(p, fr[i]);
            row[i] = cosf(a);
            row[half + i] = sinf(a);
        }
    }
    free(im->rope_tab);
    free(im->rope_freq);
    im->rope_tab = tab;
    im->rope_freq = fr;
    im->rope_npos = npos;
    im->rope_half = half;
    return tab;
}

static int rope_apply(ops_ctx *c, const char *what, float *x, int ldx, const int32_t *positions,
                      const float *inv_freq, int N, int H, int D, int transpose) {
    CHECK(N >= 0 && H >= 0 && D > 0 && D % 2 == 0 && ldx >= H * D,
          "%s: bad shape N=%d H=%d D=%d ldx=%d", what, N, H, D, ldx);
    if (N == 0 || H == 0) return 0;
    CHECK(x && positions && inv_freq, "%s: NULL buffer", what);
    int half = D / 2;
    const float *tab = rope_table(c, positions, inv_freq, N, half);
    if (!tab) return -1;
    int nt = cpu_threads_for(c, (double)N * H * D);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict cs = tab + (size_t)positions[n] * 2 * half;
        const float *restrict sn = cs + half;
        for (int h = 0; h < H; h++) {
            float *restrict x0 = x + (size_t)n * ldx + (size_t)h * D;
            float *restrict x1 = x0 + half;
            if (!transpose)
                for (int i = 0; i < half; i++)
                    ops_rope_rotate(&x0[i], &x1[i], cs[i], sn[i]);
            else
                for (int i = 0; i < half; i++)
                    ops_rope_rotate_t(&x0[i], &x1[i], cs[i], sn[i]);
        }
    }
    return 0;
}

int cpu_rope_forward(ops_ctx *c, float *x, int ldx, const int32_t *positions, const float *inv_freq,
                     int N, int H, int D) {
    return rope_apply(c, "rope_forward", x, ldx, positions, inv_freq, N, H, D, 0);
}

int cpu_rope_backward(ops_ctx *c, float *dx, int ldx, const int32_t *positions,
                      const float *inv_freq, int N, int H, int D) {
    return rope_apply(c, "rope_backward", dx, ldx, positions, inv_freq, N, H, D, 1);
}

/* ---- SwiGLU ---- */

int cpu_swiglu_forward(ops_ctx *c, float *out, const float *gate, int ldg, const float *up, int ldu,
                       int N, int I) {
    CHECK(N >= 0 && I >= 0 && ldg >= I && ldu >= I, "swiglu_forward: bad shape");
    if (N == 0 || I == 0) return 0;
    CHECK(out && gate && up, "swiglu_forward: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * I * 4);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict g = gate + (size_t)n * ldg;
        const float *restrict u = up + (size_t)n * ldu;
        float *restrict o = out + (size_t)n * I;
        for (int i = 0; i < I; i++)
            o[i] = ops_swiglu(g[i], u[i]);
    }
    return 0;
}

int cpu_swiglu_backward(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                        const float *gate, const float *up, int ld_gu, int N, int I) {
    CHECK(N >= 0 && I >= 0 && ld_dgu >= I && ld_gu >= I, "swiglu_backward: bad shape");
    if (N == 0 || I == 0) return 0;
    CHECK(dgate && dup && dout && gate && up, "swiglu_backward: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * I * 4);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict g = gate + (size_t)n * ld_gu;
        const float *restrict u = up + (size_t)n * ld_gu;
        const float *restrict dy = dout + (size_t)n * I;
        float *dg = dgate + (size_t)n * ld_dgu;
        float *du = dup + (size_t)n * ld_dgu;
        float tg[256], tu[256];
        for (int i0 = 0; i0 < I; i0 += 256) {
            int ni = I - i0 < 256 ? I - i0 : 256;
            for (int i = 0; i < ni; i++)
                ops_swiglu_grad(dy[i0 + i], g[i0 + i], u[i0 + i], &tg[i], &tu[i]);
            /* dgate/dup may alias gate/up (in-place backward), so write after reading */
            memcpy(dg + i0, tg, (size_t)ni * sizeof(float));
            memcpy(du + i0, tu, (size_t)ni * sizeof(float));
        }
    }
    return 0;
}

int cpu_swiglu_forward_bf16(ops_ctx *c, float *out, const uint16_t *gate, int ldg,
                            const uint16_t *up, int ldu, int N, int I) {
    CHECK(N >= 0 && I >= 0 && ldg >= I && ldu >= I, "swiglu_forward_bf16: bad shape");
    if (N == 0 || I == 0) return 0;
    CHECK(out && gate && up, "swiglu_forward_bf16: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * I * 4);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const uint16_t *restrict g = gate + (size_t)n * ldg;
        const uint16_t *restrict u = up + (size_t)n * ldu;
        float *restrict o = out + (size_t)n * I;
        for (int i = 0; i < I; i++)
            o[i] = ops_swiglu(ops_bf16_to_f32(g[i]), ops_bf16_to_f32(u[i]));
    }
    return 0;
}

int cpu_swiglu_backward_bf16(ops_ctx *c, float *dgate, float *dup, int ld_dgu, const float *dout,
                             const uint16_t *gate, const uint16_t *up, int ld_gu, int N, int I) {
    CHECK(N >= 0 && I >= 0 && ld_dgu >= I && ld_gu >= I, "swiglu_backward_bf16: bad shape");
    if (N == 0 || I == 0) return 0;
    CHECK(dgate && dup && dout && gate && up, "swiglu_backward_bf16: NULL buffer");
    int nt = cpu_threads_for(c, (double)N * I * 4);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const uint16_t *g = gate + (size_t)n * ld_gu, *u = up + (size_t)n * ld_gu;
        const float *dy = dout + (size_t)n * I;
        float *dg = dgate + (size_t)n * ld_dgu, *du = dup + (size_t)n * ld_dgu;
        for (int i = 0; i < I; i++)
            ops_swiglu_grad(dy[i], ops_bf16_to_f32(g[i]), ops_bf16_to_f32(u[i]), &dg[i], &du[i]);
    }
    return 0;
}

/* ---- elementwise ---- */

int cpu_add_inplace(ops_ctx *c, float *a, const float *b, size_t n) {
    if (n == 0) return 0;
    CHECK(a && b, "add_inplace: NULL buffer");
    int nt = cpu_threads_for(c, (double)n);
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] += b[i];
    return 0;
}

int cpu_axpy2d(ops_ctx *c, float *y, int ldy, const float *x, int ldx, int rows, int cols,
               float alpha, int accumulate) {
    CHECK(rows >= 0 && cols >= 0 && ldy >= cols && ldx >= cols,
          "axpy2d: bad shape rows=%d cols=%d ldy=%d ldx=%d", rows, cols, ldy, ldx);
    if (rows == 0 || cols == 0) return 0;
    CHECK(y && x, "axpy2d: NULL buffer");
    int nt = cpu_threads_for(c, (double)rows * cols);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * ldy;
        const float *restrict xr = x + (size_t)r * ldx;
        if (accumulate)
            for (int j = 0; j < cols; j++)
                yr[j] += alpha * xr[j];
        else
            for (int j = 0; j < cols; j++)
                yr[j] = alpha * xr[j];
    }
    return 0;
}

int cpu_dropout(ops_ctx *c, float *out, const float *inp, int N, int C, float p,
                unsigned long long seed, int accumulate) {
    CHECK(N >= 0 && C >= 0 && p >= 0.0f && p < 1.0f, "dropout: bad shape or p (N=%d C=%d p=%g)", N,
          C, (double)p);
    if (N == 0 || C == 0) return 0;
    CHECK(out && inp, "dropout: NULL buffer");
    const float scale = 1.0f / (1.0f - p);
    int nt = cpu_threads_for(c, (double)N * C);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < C; j++) {
            size_t i = (size_t)n * C + j;
            float v = ops_dropout_keep(seed, n, j, p) ? inp[i] * scale : 0.0f;
            out[i] = accumulate ? out[i] + v : v;
        }
    return 0;
}

int cpu_scale_inplace(ops_ctx *c, float *a, float s, size_t n) {
    if (n == 0) return 0;
    CHECK(a, "scale_inplace: NULL buffer");
    int nt = cpu_threads_for(c, (double)n);
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] *= s;
    return 0;
}

int cpu_sum_squares(ops_ctx *c, double *out_host, const float *x, size_t n) {
    CHECK(out_host, "sum_squares: NULL output");
    *out_host = 0.0;
    if (n == 0) return 0;
    CHECK(x, "sum_squares: NULL buffer");
    /* fixed partition and fixed combination order: the result does not depend on timing */
    enum { MAXT = 64 };
    double part[MAXT] = {0};
    int nt = cpu_threads_for(c, (double)n);
    if (nt > MAXT) nt = MAXT;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), T = omp_get_num_threads();
        size_t i0 = n * (size_t)tid / (size_t)T, i1 = n * (size_t)(tid + 1) / (size_t)T;
        double s = 0.0;
#pragma omp simd reduction(+ : s)
        for (size_t i = i0; i < i1; i++)
            s += (double)x[i] * (double)x[i];
        part[tid] = s;
    }
    double s = 0.0;
    for (int t = 0; t < nt; t++)
        s += part[t];
    *out_host = s;
    return 0;
}

/* ---- AdamW ---- */

int cpu_adamw_update(ops_ctx *c, float *param, const float *grad, float *m, float *v, size_t n,
                     float lr, float beta1, float beta2, float eps, float weight_decay, int t,
                     float grad_scale) {
    CHECK(t >= 1, "adamw_update: step t=%d (counts from 1)", t);
    if (n == 0) return 0;
    CHECK(param && grad && m && v, "adamw_update: NULL buffer");
    ops_adamw_scalars s = ops_adamw_make(lr, beta1, beta2, eps, weight_decay, t, grad_scale);
    int nt = cpu_threads_for(c, (double)n * 4);
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++)
        ops_adamw_elem(&param[i], &m[i], &v[i], grad[i], &s);
    return 0;
}
