/* cpu_attention.c — causal GQA attention over a packed batch (flash-style), KV cache, decode.
 *
 * Forward: for each (sequence, kv head, block of BQ query rows) — one OpenMP task — the keys up
 * to the block's last row are packed transposed once and shared by the query heads of the group;
 * scores are computed BQ x BK at a time with an online softmax, so no T x T matrix exists.
 * The block products are single-threaded OpenBLAS calls.
 * Backward: one task per (sequence, kv head); it owns that head's dK/dV rows and its group's dQ
 * rows, so no two threads write the same output; P is recomputed from the saved lse. */
#include <omp.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/cpu_vmath.h"

/* after ops.h: cblas.h pulls in <complex.h> and its `I` macro */
#include <cblas.h>
#undef I

/* query rows x keys per block; a block's keys never start after its first query row */
enum { BQ = 32, BK = 128 };
_Static_assert(BK % BQ == 0, "BK must be a multiple of BQ");

/* Block GEMMs: single-threaded OpenBLAS calls from inside the OpenMP tasks (cpu_backend.c keeps
 * OpenBLAS at one thread, so concurrent calls run in their caller's thread). */

/* C (M,N) = / += A (M,K) @ B (K,N), row-major with row strides */
static void mm_nn(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                  int ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb,
                accumulate ? 1.0f : 0.0f, C, ldc);
}

/* C (M,N) += A^T @ B with A (K,M), B (K,N) */
static void mm_tn(int M, int N, int K, const float *A, int lda, const float *B, int ldb, float *C,
                  int ldc) {
    if (M <= 0 || N <= 0 || K <= 0) return;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, B, ldb, 1.0f, C,
                ldc);
}

/* dst (D, ld) = transpose of rows [0, n) of src (n rows of stride lds, D floats each) */
static void pack_t(float *restrict dst, int ld, const float *restrict src, int lds, int n, int D) {
    for (int j0 = 0; j0 < n; j0 += 16) {
        int nj = n - j0 < 16 ? n - j0 : 16;
        for (int d = 0; d < D; d++) {
            float *o = dst + (size_t)d * ld + j0;
            for (int j = 0; j < nj; j++)
                o[j] = src[(size_t)(j0 + j) * lds + d];
        }
    }
}

static int check_packed(ops_ctx *c, const char *what, const int32_t *cu, int S, int N, int Hq,
                        int Hkv, int D, int ldq, int ldk, int ldv, int *maxlen) {
    if (S < 0 || N < 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || Hq % Hkv != 0)
        return cpu_fail(c, "%s: bad shape S=%d N=%d Hq=%d Hkv=%d D=%d", what, S, N, Hq, Hkv, D);
    if (ldq < Hq * D || ldk < Hkv * D || ldv < Hkv * D)
        return cpu_fail(c, "%s: row strides ldq=%d ldk=%d ldv=%d below the head widths", what, ldq,
                        ldk, ldv);
    if (!cu) return cpu_fail(c, "%s: NULL cu_seqlens", what);
    if (cu[0] != 0 || cu[S] != N)
        return cpu_fail(c, "%s: cu_seqlens must run from 0 to N=%d (got %d..%d)", what, N, cu[0],
                        cu[S]);
    int mx = 0;
    for (int s = 0; s < S; s++) {
        int L = cu[s + 1] - cu[s];
        if (L < 0) return cpu_fail(c, "%s: cu_seqlens decreases at %d", what, s);
        if (L > mx) mx = L;
    }
    *maxlen = mx;
    return 0;
}

int cpu_attention_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv,
                          const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv, int D) {
    int maxlen = 0;
    if (check_packed(c, "attention_forward", cu_seqlens, S, N, Hq, Hkv, D, ldq, ldk, ldv, &maxlen))
        return -1;
    if (N == 0) return 0;
    if (!out || !q || !k || !v) return cpu_fail(c, "attention_forward: NULL buffer");
    cpu_blas_single();
    const int G = Hq / Hkv, HqD = Hq * D;
    const float scale = 1.0f / sqrtf((float)D);

    /* tasks: (sequence, kv head, query block), larger blocks (more keys) first */
    int ntask = 0;
    for (int s = 0; s < S; s++)
        ntask += Hkv * ((cu_seqlens[s + 1] - cu_seqlens[s] + BQ - 1) / BQ);
    int *task = malloc((size_t)(ntask > 0 ? ntask : 1) * 3 * sizeof(int));
    if (!task) return cpu_fail(c, "attention_forward: out of memory");
    int nmaxb = (maxlen + BQ - 1) / BQ, t = 0;
    for (int qb = nmaxb - 1; qb >= 0; qb--)
        for (int s = 0; s < S; s++) {
            int L = cu_seqlens[s + 1] - cu_seqlens[s];
            if (qb * BQ >= L) continue;
            for (int h = 0; h < Hkv; h++) {
                task[3 * t] = s;
                task[3 * t + 1] = h;
                task[3 * t + 2] = qb;
                t++;
            }
        }
    int nt = cpu_threads(c);
    if (nt > ntask) nt = ntask > 0 ? ntask : 1;
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
        size_t ktn = (size_t)D * (size_t)(nmaxb * BQ);
        float *kt = malloc(ktn * sizeof(float));
        float *sc = malloc((size_t)BQ * BK * sizeof(float));
        float *acc = malloc((size_t)BQ * D * sizeof(float));
        float mrow[BQ];
        double lrow[BQ];
        int ok = kt && sc && acc;
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        }
        {
#pragma omp for schedule(dynamic, 1)
            for (int ti = 0; ti < ntask; ti++) {
                if (!ok) continue;
                int s = task[3 * ti], kvh = task[3 * ti + 1], qb = task[3 * ti + 2];
                int base = cu_seqlens[s], L = cu_seqlens[s + 1] - base;
                int i0 = qb * BQ, ni = L - i0 < BQ ? L - i0 : BQ, nkeys = i0 + ni;
                pack_t(kt, nkeys, k + (size_t)base * ldk + (size_t)kvh * D, ldk, nkeys, D);
                for (int g = 0; g < G; g++) {
                    int h = kvh * G + g;
                    const float *qb_ptr = q + (size_t)(base + i0) * ldq + (size_t)h * D;
                    for (int i = 0; i < ni; i++) {
                        mrow[i] = -INFINITY;
                        lrow[i] = 0.0;
                    }
                    memset(acc, 0, (size_t)ni * D * sizeof(float));
                    for (int kb = 0; kb < nkeys; kb += BK) {
                        int nk = nkeys - kb < BK ? nkeys - kb : BK;
                        mm_nn(ni, nk, D, qb_ptr, ldq, kt + kb, nkeys, sc, BK, 0);
                        for (int i = 0; i < ni; i++) {
                            float *restrict sr = sc + (size_t)i * BK;
                            int lim = i0 + i - kb + 1;
                            if (lim > nk) lim = nk;
                            float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
                            for (int j = 0; j < lim; j++) {
                                float x = sr[j] * scale;
                                sr[j] = x;
                                mx = x > mx ? x : mx;
                            }
                            float mnew = mrow[i] > mx ? mrow[i] : mx;
                            float alpha = cpu_expf(mrow[i] - mnew);
                            float ps = 0.0f;
#pragma omp simd reduction(+ : ps)
                            for (int j = 0; j < lim; j++) {
                                float p = cpu_expf(sr[j] - mnew);
                                sr[j] = p;
                                ps += p;
                            }
                            for (int j = lim; j < nk; j++)
                                sr[j] = 0.0f;
                            lrow[i] = lrow[i] * alpha + ps;
                            if (alpha != 1.0f) {
                                float *restrict ar = acc + (size_t)i * D;
                                for (int d = 0; d < D; d++)
                                    ar[d] *= alpha;
                            }
                            mrow[i] = mnew;
                        }
                        mm_nn(ni, D, nk, sc, BK, v + (size_t)(base + kb) * ldv + (size_t)kvh * D,
                              ldv, acc, D, 1);
                    }
                    for (int i = 0; i < ni; i++) {
                        float *restrict o = out + (size_t)(base + i0 + i) * HqD + (size_t)h * D;
                        const float *restrict ar = acc + (size_t)i * D;
                        float inv = (float)(1.0 / lrow[i]);
                        for (int d = 0; d < D; d++)
                            o[d] = ar[d] * inv;
                        if (lse)
                            lse[(size_t)(base + i0 + i) * Hq + h] = mrow[i] + (float)log(lrow[i]);
                    }
                }
            }
        }
        free(kt);
        free(sc);
        free(acc);
    }
    free(task);
    if (fail) return cpu_fail(c, "attention_forward: out of memory");
    return 0;
}

int cpu_attention_backward(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                           const float *q, int ldq, const float *k, int ldk, const float *v,
                           int ldv, const float *out, const float *lse, const int32_t *cu_seqlens,
                           int S, int N, int Hq, int Hkv, int D) {
    int maxlen = 0;
    if (check_packed(c, "attention_backward", cu_seqlens, S, N, Hq, Hkv, D, ldq, ldk, ldv, &maxlen))
        return -1;
    if (N == 0) return 0;
    if (!dq || !dk || !dv || !dout || !q || !k || !v || !out || !lse)
        return cpu_fail(c, "attention_backward: NULL buffer");
    cpu_blas_single();
    const int G = Hq / Hkv, HqD = Hq * D;
    const float scale = 1.0f / sqrtf((float)D);

    /* tasks: (sequence, kv head), longest sequences first */
    int ntask = S * Hkv;
    int *task = malloc((size_t)(ntask > 0 ? ntask : 1) * 2 * sizeof(int));
    if (!task) return cpu_fail(c, "attention_backward: out of memory");
    {
        int *ord = malloc((size_t)(S > 0 ? S : 1) * sizeof(int));
        if (!ord) {
            free(task);
            return cpu_fail(c, "attention_backward: out of memory");
        }
        for (int s = 0; s < S; s++)
            ord[s] = s;
        /* insertion sort by length, descending (S is small) */
        for (int a = 1; a < S; a++) {
            int x = ord[a], lx = cu_seqlens[x + 1] - cu_seqlens[x], b = a - 1;
            while (b >= 0 && cu_seqlens[ord[b] + 1] - cu_seqlens[ord[b]] < lx) {
                ord[b + 1] = ord[b];
                b--;
            }
            ord[b + 1] = x;
        }
        int t = 0;
        for (int a = 0; a < S; a++)
            for (int h = 0; h < Hkv; h++) {
                task[2 * t] = ord[a];
                task[2 * t + 1] = h;
                t++;
            }
        free(ord);
    }
    int nt = cpu_threads(c);
    if (nt > ntask) nt = ntask > 0 ? ntask : 1;
    int fail = 0;
    size_t Lp = (size_t)((maxlen + BK - 1) / BK * BK);
#pragma omp parallel num_threads(nt)
    {
        float *kt = malloc((size_t)D * Lp * sizeof(float));
        float *vt = malloc((size_t)D * Lp * sizeof(float));
        float *dka = malloc(Lp * D * sizeof(float));
        float *dva = malloc(Lp * D * sizeof(float));
        float *sc = malloc((size_t)BQ * BK * sizeof(float));
        float *dp = malloc((size_t)BQ * BK * sizeof(float));
        float *dqa = malloc((size_t)BQ * D * sizeof(float));
        float di[BQ], li[BQ];
        int ok = kt && vt && dka && dva && sc && dp && dqa;
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        }
        {
#pragma omp for schedule(dynamic, 1)
            for (int ti = 0; ti < ntask; ti++) {
                if (!ok) continue;
                int s = task[2 * ti], kvh = task[2 * ti + 1];
                int base = cu_seqlens[s], L = cu_seqlens[s + 1] - base;
                if (L == 0) continue;
                const float *kh = k + (size_t)base * ldk + (size_t)kvh * D;
                const float *vh = v + (size_t)base * ldv + (size_t)kvh * D;
                pack_t(kt, L, kh, ldk, L, D);
                pack_t(vt, L, vh, ldv, L, D);
                memset(dka, 0, (size_t)L * D * sizeof(float));
                memset(dva, 0, (size_t)L * D * sizeof(float));
                for (int g = 0; g < G; g++) {
                    int h = kvh * G + g;
                    for (int i0 = 0; i0 < L; i0 += BQ) {
                        int ni = L - i0 < BQ ? L - i0 : BQ, nkeys = i0 + ni;
                        const float *qb = q + (size_t)(base + i0) * ldq + (size_t)h * D;
                        const float *dob = dout + (size_t)(base + i0) * HqD + (size_t)h * D;
                        const float *ob = out + (size_t)(base + i0) * HqD + (size_t)h * D;
                        for (int i = 0; i < ni; i++) {
                            const float *a = dob + (size_t)i * HqD, *b = ob + (size_t)i * HqD;
                            double sum = 0.0;
#pragma omp simd reduction(+ : sum)
                            for (int d = 0; d < D; d++)
                                sum += (double)a[d] * (double)b[d];
                            di[i] = (float)sum;
                            li[i] = lse[(size_t)(base + i0 + i) * Hq + h];
                        }
                        memset(dqa, 0, (size_t)ni * D * sizeof(float));
                        for (int kb = 0; kb < nkeys; kb += BK) {
                            int nk = nkeys - kb < BK ? nkeys - kb : BK;
                            mm_nn(ni, nk, D, qb, ldq, kt + kb, L, sc, BK, 0);
                            mm_nn(ni, nk, D, dob, HqD, vt + kb, L, dp, BK, 0);
                            for (int i = 0; i < ni; i++) {
                                float *restrict sr = sc + (size_t)i * BK;
                                float *restrict pr = dp + (size_t)i * BK;
                                int lim = i0 + i - kb + 1;
                                if (lim > nk) lim = nk;
                                float l = li[i], dd = di[i];
#pragma omp simd
                                for (int j = 0; j < lim; j++) {
                                    float p = cpu_expf(sr[j] * scale - l);
                                    sr[j] = p;
                                    pr[j] = p * (pr[j] - dd) * scale;
                                }
                                for (int j = lim > 0 ? lim : 0; j < nk; j++)
                                    sr[j] = pr[j] = 0.0f;
                            }
                            /* dQ += dS K;  dK += dS^T Q;  dV += P^T dO */
                            mm_nn(ni, D, nk, dp, BK, kh + (size_t)kb * ldk, ldk, dqa, D, 1);
                            mm_tn(nk, D, ni, dp, BK, qb, ldq, dka + (size_t)kb * D, D);
                            mm_tn(nk, D, ni, sc, BK, dob, HqD, dva + (size_t)kb * D, D);
                        }
                        for (int i = 0; i < ni; i++)
                            memcpy(dq + (size_t)(base + i0 + i) * ldq + (size_t)h * D,
                                   dqa + (size_t)i * D, (size_t)D * sizeof(float));
                    }
                }
                for (int j = 0; j < L; j++) {
                    memcpy(dk + (size_t)(base + j) * ldk + (size_t)kvh * D, dka + (size_t)j * D,
                           (size_t)D * sizeof(float));
                    memcpy(dv + (size_t)(base + j) * ldv + (size_t)kvh * D, dva + (size_t)j * D,
                           (size_t)D * sizeof(float));
                }
            }
        }
        free(kt);
        free(vt);
        free(dka);
        free(dva);
        free(sc);
        free(dp);
        free(dqa);
    }
    free(task);
    if (fail) return cpu_fail(c, "attention_backward: out of memory");
    return 0;
}

/* ---- KV cache ---- */

int cpu_kv_store(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk, const float *v,
                 int ldv, const int32_t *slot, const int32_t *pos, int N, int max_T, int Hkv,
                 int D) {
    if (N < 0 || max_T <= 0 || Hkv <= 0 || D <= 0 || ldk < Hkv * D || ldv < Hkv * D)
        return cpu_fail(c, "kv_store: bad shape N=%d max_T=%d Hkv=%d D=%d", N, max_T, Hkv, D);
    if (N == 0) return 0;
    if (!kcache || !vcache || !k || !v || !slot || !pos)
        return cpu_fail(c, "kv_store: NULL buffer");
    for (int n = 0; n < N; n++)
        if (slot[n] < 0 || pos[n] < 0 || pos[n] >= max_T)
            return cpu_fail(c, "kv_store: row %d has slot %d position %d (max_T %d)", n, slot[n],
                            pos[n], max_T);
    size_t row = (size_t)Hkv * D;
    int nt = cpu_threads_for(c, (double)N * row * 2);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        size_t off = ((size_t)slot[n] * max_T + (size_t)pos[n]) * row;
        memcpy(kcache + off, k + (size_t)n * ldk, row * sizeof(float));
        memcpy(vcache + off, v + (size_t)n * ldv, row * sizeof(float));
    }
    return 0;
}

int cpu_attention_decode(ops_ctx *c, float *out, const float *q, int ldq, const float *kcache,
                         const float *vcache, const int32_t *slot, const int32_t *lens, int B,
                         int max_T, int Hq, int Hkv, int D) {
    if (B < 0 || max_T <= 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || Hq % Hkv != 0 || ldq < Hq * D)
        return cpu_fail(c, "attention_decode: bad shape B=%d max_T=%d Hq=%d Hkv=%d D=%d", B, max_T,
                        Hq, Hkv, D);
    if (B == 0) return 0;
    if (!out || !q || !kcache || !vcache || !slot || !lens)
        return cpu_fail(c, "attention_decode: NULL buffer");
    for (int b = 0; b < B; b++)
        if (slot[b] < 0 || lens[b] < 0 || lens[b] > max_T)
            return cpu_fail(c, "attention_decode: row %d has slot %d length %d (max_T %d)", b,
                            slot[b], lens[b], max_T);
    cpu_blas_single();
    const int G = Hq / Hkv;
    const float scale = 1.0f / sqrtf((float)D);
    const size_t row = (size_t)Hkv * D;
    int ntask = B * Hkv;
    int nt = cpu_threads(c);
    if (nt > ntask) nt = ntask;
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
        float *sc = malloc((size_t)G * max_T * sizeof(float));
        float *inv = malloc((size_t)G * sizeof(float));
        int ok = sc && inv;
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int ti = 0; ti < ntask; ti++) {
            if (!ok) continue;
            int b = ti / Hkv, kvh = ti % Hkv, len = lens[b];
            const float *kc = kcache + (size_t)slot[b] * max_T * row + (size_t)kvh * D;
            const float *vc = vcache + (size_t)slot[b] * max_T * row + (size_t)kvh * D;
            /* the group's G query heads are contiguous in q and in out */
            const float *qg = q + (size_t)b * ldq + (size_t)kvh * G * D;
            float *og = out + (size_t)b * Hq * D + (size_t)kvh * G * D;
            if (len == 0) {
                memset(og, 0, (size_t)G * D * sizeof(float));
                continue;
            }
            /* scores (G, len) = Q K^T: K and V are read once for the whole group */
            if (G == 1)
                cblas_sgemv(CblasRowMajor, CblasNoTrans, len, D, scale, kc, (int)row, qg, 1, 0.0f,
                            sc, 1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, G, len, D, scale, qg, D, kc,
                            (int)row, 0.0f, sc, len);
            for (int g = 0; g < G; g++) {
                float *sg = sc + (size_t)g * len;
                float mx = cpu_max_f(sg, len);
                for (int t = 0; t < len; t++)
                    sg[t] = cpu_expf(sg[t] - mx);
                double l = cpu_sum_d(sg, len);
                inv[g] = (float)(1.0 / l);
            }
            /* out (G, D) = P V, then each row / its denominator */
            if (G == 1)
                cblas_sgemv(CblasRowMajor, CblasTrans, len, D, 1.0f, vc, (int)row, sc, 1, 0.0f, og,
                            1);
            else
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, G, D, len, 1.0f, sc, len, vc,
                            (int)row, 0.0f, og, D);
            for (int g = 0; g < G; g++) {
                float w = g < 64 ? inv[g] : (float)(1.0 / cpu_sum_d(sc + (size_t)g * len, len));
                float *o = og + (size_t)g * D;
                for (int d = 0; d < D; d++)
                    o[d] *= w;
            }
        }
        free(sc);
        free(inv);
    }
    if (fail) return cpu_fail(c, "attention_decode: out of memory");
    return 0;
}
