// cuda_attention.cu — causal grouped-query attention over a packed batch (forward, backward),
// the KV cache store and single-token decode attention, on the GPU (kernels/ops.h).
//
// Packed batches: a one-block kernel turns cu_seqlens into a table of (sequence, first row)
// tiles of ATT_BQ rows, so the attention grids need no host read-back of the sequence lengths
// (grid.x is the upper bound ceil(N / ATT_BQ) + S; surplus blocks exit). It also validates
// cu_seqlens: a bad one raises CU_EFLAG_CU and the kernels do nothing.
//
// Tensor-core kernels (cuda_attention_tc.cu; the default with bf16 GEMMs): launched from here
// over a table of their own tile size. Flash kernels: fp32 on CUDA cores; a block owns ATT_BQ query
// rows of one head, keys and values stream through shared memory ATT_BK at a time, one warp handles
// ATT_RPW rows with one key per lane and an online softmax, so no T x T matrix exists; lse is
// saved.
//   backward: Di = rowsum(dO * O); a dQ kernel (blocks over query tiles) and a dK/dV kernel
//   (blocks over key tiles of one kv head, looping over the query heads of its group) both
//   recompute P = exp(S - lse); each output row is written by exactly one block, no atomics.
// Naive kernels (CHORD_CUDA_ATTENTION=naive, the simple reference): one warp per (row, head),
// keys one at a time; the backward adds dK/dV with atomics.
// Head size D <= 256 (ATT_MAXD).
#include "kernels/cuda/cuda_internal.cuh"

enum {
    ATT_BQ = 32,                  // query rows per tile
    ATT_BK = 32,                  // keys per tile: one per lane
    ATT_WARPS = 8,                // warps per block
    ATT_RPW = ATT_BQ / ATT_WARPS, // rows (or keys) per warp
    ATT_THREADS = ATT_WARPS * 32, //
    ATT_MAXD = 256,               // largest head size
    DEC_WARPS = 4                 // decode: warps per (row, head)
};

// ---- the tile table ----

// tiles[t] = (sequence, first row within it) for every bq-row tile; *ntiles = the count, or 0
// with CU_EFLAG_CU raised when cu_seqlens is not 0 .. N non-decreasing. One block of 1024.
__global__ void att_tiles_kernel(int2 *tiles, int *ntiles, const int32_t *cu, int S, int N, int cap,
                                 int bq, unsigned int *flags) {
    __shared__ int sh[33];
    int per = (S + (int)blockDim.x - 1) / (int)blockDim.x;
    int s0 = (int)threadIdx.x * per, s1 = min(S, s0 + per);
    int cnt = 0, bad = 0;
    for (int s = s0; s < s1; s++) {
        int L = cu[s + 1] - cu[s];
        if (L < 0)
            bad = 1;
        else
            cnt += (L + bq - 1) / bq;
    }
    if (threadIdx.x == 0 && (cu[0] != 0 || cu[S] != N)) bad = 1;
    int total = 0;
    int off = cu_block_scan_excl(cnt, sh, &total);
    if (__syncthreads_or(bad) || total > cap) {
        if (threadIdx.x == 0) {
            *ntiles = 0;
            cu_raise(flags, CU_EFLAG_CU);
        }
        return;
    }
    for (int s = s0; s < s1; s++) {
        int L = cu[s + 1] - cu[s];
        for (int i0 = 0; i0 < L; i0 += bq)
            tiles[off++] = make_int2(s, i0);
    }
    if (threadIdx.x == 0) *ntiles = total;
}

// ---- flash forward ----

template <int ND>
__global__ void __launch_bounds__(ATT_THREADS)
    att_fwd_kernel(float *out, float *lse, const float *q, int ldq, const float *k, int ldk,
                   const float *v, int ldv, const int32_t *cu, const int2 *tiles, const int *ntiles,
                   int Hq, int Hkv, int D, float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv);
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)ATT_BQ, L - i0), nkeys = i0 + nq;
    const int ks = D | 1; // odd stride: lane j reading row j is bank-conflict free
    extern __shared__ float smem[];
    float *Qs = smem;             // (ATT_BQ, D)
    float *Ks = Qs + ATT_BQ * D;  // (ATT_BK, ks)
    float *Vs = Ks + ATT_BK * ks; // (ATT_BK, D)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int idx = tid; idx < nq * D; idx += ATT_THREADS) {
        int r = idx / D, d = idx - r * D;
        Qs[idx] = q[(size_t)(base + i0 + r) * ldq + (size_t)h * D + d];
    }
    float m[ATT_RPW], l[ATT_RPW], acc[ATT_RPW][ND];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        m[rr] = -INFINITY;
        l[rr] = 0.0f;
#pragma unroll
        for (int dd = 0; dd < ND; dd++)
            acc[rr][dd] = 0.0f;
    }
    for (int kb = 0; kb < nkeys; kb += ATT_BK) {
        const int nk = min((int)ATT_BK, nkeys - kb);
        __syncthreads(); // the previous tile is consumed (and Qs is written)
        for (int idx = tid; idx < nk * D; idx += ATT_THREADS) {
            int r = idx / D, d = idx - r * D;
            size_t row = (size_t)(base + kb + r);
            Ks[r * ks + d] = k[row * ldk + (size_t)kvh * D + d];
            Vs[r * D + d] = v[row * ldv + (size_t)kvh * D + d];
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            const int i = warp * ATT_RPW + rr, qi = i0 + i;
            if (i >= nq || kb > qi) continue; // warp-uniform
            const bool valid = lane < nk && kb + lane <= qi;
            float sc = -INFINITY;
            if (valid) {
                const float *qr = Qs + i * D, *kr = Ks + lane * ks;
                float a = 0.0f;
                for (int d = 0; d < D; d++)
                    a = fmaf(qr[d], kr[d], a);
                sc = a * scale;
            }
            // key kb <= qi is valid, so mnew is finite
            const float mnew = fmaxf(m[rr], cu_warp_max(sc));
            const float p = valid ? expf(sc - mnew) : 0.0f;
            const float alpha = expf(m[rr] - mnew);
            l[rr] = l[rr] * alpha + cu_warp_sum(p);
            m[rr] = mnew;
#pragma unroll
            for (int dd = 0; dd < ND; dd++)
                acc[rr][dd] *= alpha;
            const int jmax = min(nk, qi - kb + 1);
            for (int jj = 0; jj < jmax; jj++) {
                const float pj = __shfl_sync(CU_FULL_MASK, p, jj);
                const float *vr = Vs + jj * D;
#pragma unroll
                for (int dd = 0; dd < ND; dd++) {
                    const int d = lane + 32 * dd;
                    if (d < D) acc[rr][dd] = fmaf(pj, vr[d], acc[rr][dd]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        const int i = warp * ATT_RPW + rr;
        if (i >= nq) continue;
        const size_t row = (size_t)(base + i0 + i);
        const float inv = 1.0f / l[rr];
        float *o = out + row * (size_t)Hq * D + (size_t)h * D;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) o[d] = acc[rr][dd] * inv;
        }
        if (lse && lane == 0) lse[row * Hq + h] = m[rr] + logf(l[rr]);
    }
}

// ---- flash backward ----

// Di (N, Hq) = sum_d dout * out, one warp per (row, head)
__global__ void att_bwd_di_kernel(float *Di, const float *dout, const float *out, int N, int Hq,
                                  int D) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (w >= (size_t)N * Hq) return;
    const float *a = dout + w * D, *b = out + w * D; // (N, Hq*D) dense: (row, head) is w * D
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
        s = fmaf(a[d], b[d], s);
    s = cu_warp_sum(s);
    if (lane == 0) Di[w] = s;
}

template <int ND>
__global__ void __launch_bounds__(ATT_THREADS)
    att_bwd_dq_kernel(float *dq, const float *dout, const float *q, int ldq, const float *k,
                      int ldk, const float *v, int ldv, const float *lse, const float *Di,
                      const int32_t *cu, const int2 *tiles, const int *ntiles, int Hq, int Hkv,
                      int D, float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv), HqD = Hq * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)ATT_BQ, L - i0), nkeys = i0 + nq;
    const int ks = D | 1;
    extern __shared__ float smem[];
    float *Qs = smem;             // (ATT_BQ, D)
    float *dOs = Qs + ATT_BQ * D; // (ATT_BQ, D)
    float *Ks = dOs + ATT_BQ * D; // (ATT_BK, ks)
    float *Vs = Ks + ATT_BK * ks; // (ATT_BK, ks)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int idx = tid; idx < nq * D; idx += ATT_THREADS) {
        int r = idx / D, d = idx - r * D;
        size_t row = (size_t)(base + i0 + r);
        Qs[idx] = q[row * ldq + (size_t)h * D + d];
        dOs[idx] = dout[row * HqD + (size_t)h * D + d];
    }
    float rl[ATT_RPW], rd[ATT_RPW], acc[ATT_RPW][ND];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        const int i = warp * ATT_RPW + rr;
        const size_t row = (size_t)(base + i0 + (i < nq ? i : 0));
        rl[rr] = lse[row * Hq + h];
        rd[rr] = Di[row * Hq + h];
#pragma unroll
        for (int dd = 0; dd < ND; dd++)
            acc[rr][dd] = 0.0f;
    }
    for (int kb = 0; kb < nkeys; kb += ATT_BK) {
        const int nk = min((int)ATT_BK, nkeys - kb);
        __syncthreads();
        for (int idx = tid; idx < nk * D; idx += ATT_THREADS) {
            int r = idx / D, d = idx - r * D;
            size_t row = (size_t)(base + kb + r);
            Ks[r * ks + d] = k[row * ldk + (size_t)kvh * D + d];
            Vs[r * ks + d] = v[row * ldv + (size_t)kvh * D + d];
        }
        __syncthreads();
#pragma unroll
        for (int rr = 0; rr < ATT_RPW; rr++) {
            const int i = warp * ATT_RPW + rr, qi = i0 + i;
            if (i >= nq || kb > qi) continue; // warp-uniform
            const bool valid = lane < nk && kb + lane <= qi;
            float ds = 0.0f;
            if (valid) {
                const float *qr = Qs + i * D, *dor = dOs + i * D;
                const float *kr = Ks + lane * ks, *vr = Vs + lane * ks;
                float s = 0.0f, dp = 0.0f;
                for (int d = 0; d < D; d++) {
                    s = fmaf(qr[d], kr[d], s);
                    dp = fmaf(dor[d], vr[d], dp);
                }
                const float p = expf(s * scale - rl[rr]);
                ds = p * (dp - rd[rr]) * scale;
            }
            const int jmax = min(nk, qi - kb + 1);
            for (int jj = 0; jj < jmax; jj++) {
                const float dsj = __shfl_sync(CU_FULL_MASK, ds, jj);
                const float *kr = Ks + jj * ks;
#pragma unroll
                for (int dd = 0; dd < ND; dd++) {
                    const int d = lane + 32 * dd;
                    if (d < D) acc[rr][dd] = fmaf(dsj, kr[d], acc[rr][dd]);
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        const int i = warp * ATT_RPW + rr;
        if (i >= nq) continue;
        float *o = dq + (size_t)(base + i0 + i) * ldq + (size_t)h * D;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) o[d] = acc[rr][dd];
        }
    }
}

// blocks over key tiles (the same table: tiles of ATT_BK == ATT_BQ rows) of one kv head
template <int ND>
__global__ void __launch_bounds__(ATT_THREADS)
    att_bwd_dkv_kernel(float *dk, float *dv, const float *dout, const float *q, int ldq,
                       const float *k, int ldk, const float *v, int ldv, const float *lse,
                       const float *Di, const int32_t *cu, const int2 *tiles, const int *ntiles,
                       int Hq, int Hkv, int D, float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int kvh = blockIdx.y, G = Hq / Hkv, HqD = Hq * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, j0 = tl.y;
    const int nk = min((int)ATT_BK, L - j0);
    const int qs = D | 1;
    extern __shared__ float smem[];
    float *Kt = smem;              // (ATT_BK, D) this block's keys
    float *Vt = Kt + ATT_BK * D;   // (ATT_BK, D)
    float *Qs = Vt + ATT_BK * D;   // (ATT_BQ, qs)
    float *dOs = Qs + ATT_BQ * qs; // (ATT_BQ, qs)
    float *Ls = dOs + ATT_BQ * qs; // (ATT_BQ) lse
    float *Ds = Ls + ATT_BQ;       // (ATT_BQ) Di
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int idx = tid; idx < nk * D; idx += ATT_THREADS) {
        int r = idx / D, d = idx - r * D;
        size_t row = (size_t)(base + j0 + r);
        Kt[idx] = k[row * ldk + (size_t)kvh * D + d];
        Vt[idx] = v[row * ldv + (size_t)kvh * D + d];
    }
    float dka[ATT_RPW][ND], dva[ATT_RPW][ND];
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++)
#pragma unroll
        for (int dd = 0; dd < ND; dd++)
            dka[rr][dd] = dva[rr][dd] = 0.0f;

    for (int g = 0; g < G; g++) {
        const int h = kvh * G + g;
        for (int qb = j0; qb < L; qb += ATT_BQ) { // rows before j0 see none of these keys
            const int nq = min((int)ATT_BQ, L - qb);
            __syncthreads();
            for (int idx = tid; idx < nq * D; idx += ATT_THREADS) {
                int r = idx / D, d = idx - r * D;
                size_t row = (size_t)(base + qb + r);
                Qs[r * qs + d] = q[row * ldq + (size_t)h * D + d];
                dOs[r * qs + d] = dout[row * HqD + (size_t)h * D + d];
            }
            if (tid < nq) {
                size_t row = (size_t)(base + qb + tid);
                Ls[tid] = lse[row * Hq + h];
                Ds[tid] = Di[row * Hq + h];
            }
            __syncthreads();
#pragma unroll
            for (int rr = 0; rr < ATT_RPW; rr++) {
                const int kk = warp * ATT_RPW + rr, kj = j0 + kk;
                if (kk >= nk) continue; // warp-uniform
                const int qi = qb + lane;
                const bool valid = lane < nq && qi >= kj;
                float p = 0.0f, ds = 0.0f;
                if (valid) {
                    const float *qr = Qs + lane * qs, *dor = dOs + lane * qs;
                    const float *kr = Kt + kk * D, *vr = Vt + kk * D;
                    float s = 0.0f, dp = 0.0f;
                    for (int d = 0; d < D; d++) {
                        s = fmaf(qr[d], kr[d], s);
                        dp = fmaf(dor[d], vr[d], dp);
                    }
                    p = expf(s * scale - Ls[lane]);
                    ds = p * (dp - Ds[lane]) * scale;
                }
                for (int jj = max(0, kj - qb); jj < nq; jj++) {
                    const float pj = __shfl_sync(CU_FULL_MASK, p, jj);
                    const float dsj = __shfl_sync(CU_FULL_MASK, ds, jj);
                    const float *dor = dOs + jj * qs, *qr = Qs + jj * qs;
#pragma unroll
                    for (int dd = 0; dd < ND; dd++) {
                        const int d = lane + 32 * dd;
                        if (d < D) {
                            dva[rr][dd] = fmaf(pj, dor[d], dva[rr][dd]);
                            dka[rr][dd] = fmaf(dsj, qr[d], dka[rr][dd]);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < ATT_RPW; rr++) {
        const int kk = warp * ATT_RPW + rr;
        if (kk >= nk) continue;
        const size_t row = (size_t)(base + j0 + kk);
        float *ok = dk + row * ldk + (size_t)kvh * D, *ov = dv + row * ldv + (size_t)kvh * D;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) {
                ok[d] = dka[rr][dd];
                ov[d] = dva[rr][dd];
            }
        }
    }
}

// ---- naive kernels: one warp per (row, head) ----

// the sequence holding row n: the largest s with cu[s] <= n
static __device__ int att_find_seq(const int32_t *cu, int S, int n) {
    int lo = 0, hi = S;
    while (hi - lo > 1) {
        int mid = (lo + hi) >> 1;
        if (cu[mid] <= n)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

template <int ND>
__global__ void att_naive_fwd_kernel(float *out, float *lse, const float *q, int ldq,
                                     const float *k, int ldk, const float *v, int ldv,
                                     const int32_t *cu, const int *ntiles, int S, int N, int Hq,
                                     int Hkv, int D, float scale) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (*ntiles == 0 || w >= (size_t)N * Hq) return;
    const int n = (int)(w / Hq), h = (int)(w % Hq), kvh = h / (Hq / Hkv);
    const int base = cu[att_find_seq(cu, S, n)];
    float qr[ND], acc[ND];
#pragma unroll
    for (int dd = 0; dd < ND; dd++) {
        const int d = lane + 32 * dd;
        qr[dd] = d < D ? q[(size_t)n * ldq + (size_t)h * D + d] : 0.0f;
        acc[dd] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = base; j <= n; j++) {
        const float *kr = k + (size_t)j * ldk + (size_t)kvh * D;
        const float *vr = v + (size_t)j * ldv + (size_t)kvh * D;
        float s = 0.0f;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) s = fmaf(qr[dd], kr[d], s);
        }
        s = cu_warp_sum(s) * scale;
        const float mnew = fmaxf(m, s), alpha = expf(m - mnew), p = expf(s - mnew);
        l = l * alpha + p;
        m = mnew;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            acc[dd] = acc[dd] * alpha + (d < D ? p * vr[d] : 0.0f);
        }
    }
    float *o = out + (size_t)n * Hq * D + (size_t)h * D;
#pragma unroll
    for (int dd = 0; dd < ND; dd++) {
        const int d = lane + 32 * dd;
        if (d < D) o[d] = acc[dd] / l;
    }
    if (lse && lane == 0) lse[(size_t)n * Hq + h] = m + logf(l);
}

// rows (N) of a strided view (N, ld): columns [0, width) set to zero
__global__ void att_zero_rows_kernel(float *x, int ld, int N, int width) {
    size_t total = (size_t)N * width;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x)
        x[(i / width) * ld + i % width] = 0.0f;
}

template <int ND>
__global__ void att_naive_bwd_kernel(float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, int ldq, const float *k, int ldk,
                                     const float *v, int ldv, const float *out, const float *lse,
                                     const int32_t *cu, const int *ntiles, int S, int N, int Hq,
                                     int Hkv, int D, float scale) {
    size_t w = (blockIdx.x * (size_t)blockDim.x + threadIdx.x) >> 5;
    const int lane = threadIdx.x & 31;
    if (*ntiles == 0 || w >= (size_t)N * Hq) return;
    const int n = (int)(w / Hq), h = (int)(w % Hq), kvh = h / (Hq / Hkv);
    const int base = cu[att_find_seq(cu, S, n)];
    const size_t orow = (size_t)n * Hq * D + (size_t)h * D;
    float qr[ND], dor[ND], dqa[ND];
    float di = 0.0f;
#pragma unroll
    for (int dd = 0; dd < ND; dd++) {
        const int d = lane + 32 * dd;
        qr[dd] = d < D ? q[(size_t)n * ldq + (size_t)h * D + d] : 0.0f;
        dor[dd] = d < D ? dout[orow + d] : 0.0f;
        di += d < D ? dor[dd] * out[orow + d] : 0.0f;
        dqa[dd] = 0.0f;
    }
    di = cu_warp_sum(di);
    const float lr = lse[(size_t)n * Hq + h];
    for (int j = base; j <= n; j++) {
        const float *kr = k + (size_t)j * ldk + (size_t)kvh * D;
        const float *vr = v + (size_t)j * ldv + (size_t)kvh * D;
        float s = 0.0f, dp = 0.0f;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) {
                s = fmaf(qr[dd], kr[d], s);
                dp = fmaf(dor[dd], vr[d], dp);
            }
        }
        s = cu_warp_sum(s);
        dp = cu_warp_sum(dp);
        const float p = expf(s * scale - lr), ds = p * (dp - di) * scale;
        float *dkr = dk + (size_t)j * ldk + (size_t)kvh * D;
        float *dvr = dv + (size_t)j * ldv + (size_t)kvh * D;
#pragma unroll
        for (int dd = 0; dd < ND; dd++) {
            const int d = lane + 32 * dd;
            if (d < D) {
                dqa[dd] = fmaf(ds, kr[d], dqa[dd]);
                atomicAdd(&dkr[d], ds * qr[dd]);
                atomicAdd(&dvr[d], p * dor[dd]);
            }
        }
    }
#pragma unroll
    for (int dd = 0; dd < ND; dd++) {
        const int d = lane + 32 * dd;
        if (d < D) dq[(size_t)n * ldq + (size_t)h * D + d] = dqa[dd];
    }
}

// ---- host side ----

static size_t fwd_smem(int D) {
    return (size_t)(ATT_BQ * D + ATT_BK * (D | 1) + ATT_BK * D) * sizeof(float);
}
static size_t dq_smem(int D) {
    return (size_t)(2 * ATT_BQ * D + 2 * ATT_BK * (D | 1)) * sizeof(float);
}
static size_t dkv_smem(int D) {
    return (size_t)(2 * ATT_BK * D + 2 * ATT_BQ * (D | 1) + 2 * ATT_BQ) * sizeof(float);
}

// Opts the flash kernels of head sizes up to 32 ND into the shared memory they need, or into what
// the device allows (a consumer card allows less than an A100 / H100: there the largest head
// sizes are refused at launch with a message, see att_smem_ok).
template <int ND> static int att_init_nd(ops_ctx *c, int optin) {
    const int Dmax = 32 * ND;
    int f = (int)fwd_smem(Dmax), q = (int)dq_smem(Dmax), kv = (int)dkv_smem(Dmax);
    CU_CHECK(cudaFuncSetAttribute(att_fwd_kernel<ND>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  f < optin ? f : optin));
    CU_CHECK(cudaFuncSetAttribute(
        att_bwd_dq_kernel<ND>, cudaFuncAttributeMaxDynamicSharedMemorySize, q < optin ? q : optin));
    CU_CHECK(cudaFuncSetAttribute(att_bwd_dkv_kernel<ND>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kv < optin ? kv : optin));
    return 0;
}

int cuda_attention_init(ops_ctx *c) {
    cuda_impl *im = cu_impl(c);
    int optin = 0;
    CU_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, im->device));
    im->smem_optin = optin;
    if (att_init_nd<2>(c, optin) != 0 || att_init_nd<4>(c, optin) != 0 ||
        att_init_nd<8>(c, optin) != 0 || cuda_attention_tc_init(c) != 0)
        return -1;
    return 0;
}

// the flash kernels' shared memory for head size D fits this device
static int att_smem_ok(ops_ctx *c, const char *what, size_t need) {
    if (need <= (size_t)cu_impl(c)->smem_optin) return 0;
    return cu_fail(c,
                   "%s: the flash kernels need %zu bytes of shared memory per block for this head "
                   "size; this GPU allows %d (CHORD_CUDA_ATTENTION=naive works)",
                   what, need, cu_impl(c)->smem_optin);
}

// registers per lane for a head of D: 2 (D <= 64), 4 (<= 128) or 8 (<= 256)
static int att_nd(int D) {
    return D <= 64 ? 2 : D <= 128 ? 4 : 8;
}

#define ATT_DISPATCH(nd, call)                                                                     \
    do {                                                                                           \
        if ((nd) == 2) {                                                                           \
            constexpr int NDV = 2;                                                                 \
            call;                                                                                  \
        } else if ((nd) == 4) {                                                                    \
            constexpr int NDV = 4;                                                                 \
            call;                                                                                  \
        } else {                                                                                   \
            constexpr int NDV = 8;                                                                 \
            call;                                                                                  \
        }                                                                                          \
    } while (0)

static int check_packed(ops_ctx *c, const char *what, const int32_t *cu, int S, int N, int Hq,
                        int Hkv, int D, int ldq, int ldk, int ldv) {
    if (S < 0 || N < 0 || Hq <= 0 || Hkv <= 0 || D <= 0 || Hq % Hkv != 0)
        return cu_fail(c, "%s: bad shape S=%d N=%d Hq=%d Hkv=%d D=%d", what, S, N, Hq, Hkv, D);
    if (D > ATT_MAXD)
        return cu_fail(c, "%s: head size D=%d is above the CUDA kernels' limit %d", what, D,
                       (int)ATT_MAXD);
    if (ldq < Hq * D || ldk < Hkv * D || ldv < Hkv * D)
        return cu_fail(c, "%s: row strides ldq=%d ldk=%d ldv=%d below the head widths", what, ldq,
                       ldk, ldv);
    if (!cu) return cu_fail(c, "%s: NULL cu_seqlens", what);
    if (N > 0 && S == 0) return cu_fail(c, "%s: N=%d rows but no sequence", what, N);
    return 0;
}

// the tile table in scratch: tiles (cap int2), ntiles (1 int), then `extra` bytes for the caller
static int att_tiles(ops_ctx *c, const int32_t *cu, int S, int N, int bq, size_t extra,
                     int2 **tiles, int **ntiles, int *cap, void **extra_out) {
    cuda_impl *im = cu_impl(c);
    *cap = (N + bq - 1) / bq + S;
    size_t tb = ((size_t)*cap * sizeof(int2) + sizeof(int) + 255) & ~(size_t)255;
    char *s = (char *)cu_scratch(c, tb + extra);
    if (!s) return -1;
    *tiles = (int2 *)s;
    *ntiles = (int *)(s + (size_t)*cap * sizeof(int2));
    if (extra_out) *extra_out = s + tb;
    att_tiles_kernel<<<1, 1024, 0, im->stream>>>(*tiles, *ntiles, cu, S, N, *cap, bq,
                                                 im->flags_dev);
    CU_LAUNCHED("att_tiles_kernel");
    return 0;
}

// the tensor-core kernels for this call: mode tensor, or auto with bf16 GEMMs (ops_cuda.h), and a
// head size they take on this device
static int att_use_tc(ops_ctx *c, int D) {
    const cuda_impl *im = cu_impl(c);
    const int want =
        im->attention_mode == OPS_CUDA_ATTENTION_TENSOR ||
        (im->attention_mode == OPS_CUDA_ATTENTION_AUTO && im->matmul_mode == OPS_CUDA_MATMUL_BF16);
    return want && cuda_attention_tc_usable(c, D);
}

extern "C" int cuda_attention_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                                      const float *k, int ldk, const float *v, int ldv,
                                      const int32_t *cu_seqlens, int S, int N, int Hq, int Hkv,
                                      int D) {
    if (check_packed(c, "attention_forward", cu_seqlens, S, N, Hq, Hkv, D, ldq, ldk, ldv) != 0)
        return -1;
    if (N == 0) return 0;
    CU_REQUIRE(out && q && k && v, "attention_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    const float scale = 1.0f / sqrtf((float)D);
    int2 *tiles;
    int *ntiles, cap;
    if (att_use_tc(c, D)) {
        void *bf = NULL;
        if (att_tiles(c, cu_seqlens, S, N, cuda_attention_tc_tile_rows(),
                      cuda_attention_tc_forward_scratch(N, Hq, Hkv, D), &tiles, &ntiles, &cap,
                      &bf) != 0)
            return -1;
        return cuda_attention_tc_forward(c, out, lse, q, ldq, k, ldk, v, ldv, bf, cu_seqlens,
                                         tiles, ntiles, cap, N, Hq, Hkv, D, scale);
    }
    if (att_tiles(c, cu_seqlens, S, N, ATT_BQ, 0, &tiles, &ntiles, &cap, NULL) != 0) return -1;
    const int nd = att_nd(D);
    if (im->attention_mode == OPS_CUDA_ATTENTION_NAIVE) {
        size_t warps = (size_t)N * Hq;
        unsigned int blocks = (unsigned int)((warps + 7) / 8);
        ATT_DISPATCH(nd, (att_naive_fwd_kernel<NDV><<<blocks, 256, 0, im->stream>>>(
                             out, lse, q, ldq, k, ldk, v, ldv, cu_seqlens, ntiles, S, N, Hq, Hkv, D,
                             scale)));
        CU_LAUNCHED("att_naive_fwd_kernel");
        return 0;
    }
    if (att_smem_ok(c, "attention_forward", fwd_smem(D)) != 0) return -1;
    dim3 grid((unsigned int)cap, (unsigned int)Hq);
    ATT_DISPATCH(
        nd, (att_fwd_kernel<NDV><<<grid, ATT_THREADS, fwd_smem(D), im->stream>>>(
                out, lse, q, ldq, k, ldk, v, ldv, cu_seqlens, tiles, ntiles, Hq, Hkv, D, scale)));
    CU_LAUNCHED("att_fwd_kernel");
    return 0;
}

extern "C" int cuda_attention_backward(ops_ctx *c, float *dq, float *dk, float *dv,
                                       const float *dout, const float *q, int ldq, const float *k,
                                       int ldk, const float *v, int ldv, const float *out,
                                       const float *lse, const int32_t *cu_seqlens, int S, int N,
                                       int Hq, int Hkv, int D) {
    if (check_packed(c, "attention_backward", cu_seqlens, S, N, Hq, Hkv, D, ldq, ldk, ldv) != 0)
        return -1;
    if (N == 0) return 0;
    CU_REQUIRE(dq && dk && dv && dout && q && k && v && out && lse,
               "attention_backward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    const float scale = 1.0f / sqrtf((float)D);
    const int nd = att_nd(D);
    int2 *tiles;
    int *ntiles, cap;
    void *extra = NULL;
    const int use_tc = att_use_tc(c, D);
    const size_t di_bytes = ((size_t)N * Hq * sizeof(float) + 255) & ~(size_t)255;
    if (att_tiles(c, cu_seqlens, S, N, use_tc ? cuda_attention_tc_tile_rows() : (int)ATT_BQ,
                  di_bytes + (use_tc ? cuda_attention_tc_scratch(N, Hq, Hkv, D) : 0), &tiles,
                  &ntiles, &cap, &extra) != 0)
        return -1;
    if (use_tc) {
        float *Di = (float *)extra;
        void *tc_scratch = (char *)extra + di_bytes;
        size_t warps = (size_t)N * Hq;
        att_bwd_di_kernel<<<(unsigned int)((warps + 7) / 8), 256, 0, im->stream>>>(Di, dout, out, N,
                                                                                   Hq, D);
        CU_LAUNCHED("att_bwd_di_kernel");
        return cuda_attention_tc_backward(c, dq, dk, dv, dout, q, ldq, k, ldk, v, ldv, lse, Di,
                                          tc_scratch, cu_seqlens, tiles, ntiles, cap, N, Hq, Hkv, D,
                                          scale);
    }
    if (im->attention_mode == OPS_CUDA_ATTENTION_NAIVE) {
        att_zero_rows_kernel<<<cu_blocks((size_t)N * Hkv * D, 256, im->num_sms), 256, 0,
                               im->stream>>>(dk, ldk, N, Hkv * D);
        CU_LAUNCHED("att_zero_rows_kernel");
        att_zero_rows_kernel<<<cu_blocks((size_t)N * Hkv * D, 256, im->num_sms), 256, 0,
                               im->stream>>>(dv, ldv, N, Hkv * D);
        CU_LAUNCHED("att_zero_rows_kernel");
        size_t warps = (size_t)N * Hq;
        unsigned int blocks = (unsigned int)((warps + 7) / 8);
        ATT_DISPATCH(nd, (att_naive_bwd_kernel<NDV><<<blocks, 256, 0, im->stream>>>(
                             dq, dk, dv, dout, q, ldq, k, ldk, v, ldv, out, lse, cu_seqlens, ntiles,
                             S, N, Hq, Hkv, D, scale)));
        CU_LAUNCHED("att_naive_bwd_kernel");
        return 0;
    }
    if (att_smem_ok(c, "attention_backward", dq_smem(D)) != 0 ||
        att_smem_ok(c, "attention_backward", dkv_smem(D)) != 0)
        return -1;
    float *Di = (float *)extra;
    size_t warps = (size_t)N * Hq;
    att_bwd_di_kernel<<<(unsigned int)((warps + 7) / 8), 256, 0, im->stream>>>(Di, dout, out, N, Hq,
                                                                               D);
    CU_LAUNCHED("att_bwd_di_kernel");
    const dim3 gq((unsigned int)cap, (unsigned int)Hq), gkv((unsigned int)cap, (unsigned int)Hkv);
    ATT_DISPATCH(nd, (att_bwd_dq_kernel<NDV><<<gq, ATT_THREADS, dq_smem(D), im->stream>>>(
                         dq, dout, q, ldq, k, ldk, v, ldv, lse, Di, cu_seqlens, tiles, ntiles, Hq,
                         Hkv, D, scale)));
    CU_LAUNCHED("att_bwd_dq_kernel");
    ATT_DISPATCH(nd, (att_bwd_dkv_kernel<NDV><<<gkv, ATT_THREADS, dkv_smem(D), im->stream>>>(
                         dk, dv, dout, q, ldq, k, ldk, v, ldv, lse, Di, cu_seqlens, tiles, ntiles,
                         Hq, Hkv, D, scale)));
    CU_LAUNCHED("att_bwd_dkv_kernel");
    return 0;
}

// ---- KV cache ----

__global__ void kv_store_kernel(float *kcache, float *vcache, const float *k, int ldk,
                                const float *v, int ldv, const int32_t *slot, const int32_t *pos,
                                int N, int max_T, int row, unsigned int *flags) {
    size_t total = (size_t)N * row;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t n = i / (size_t)row, e = i % (size_t)row;
        int sl = slot[n], p = pos[n];
        if (sl < 0 || p < 0 || p >= max_T) {
            if (e == 0) cu_raise(flags, CU_EFLAG_KV);
            continue;
        }
        size_t off = ((size_t)sl * max_T + (size_t)p) * row + e;
        kcache[off] = k[n * ldk + e];
        vcache[off] = v[n * ldv + e];
    }
}

extern "C" int cuda_kv_store(ops_ctx *c, float *kcache, float *vcache, const float *k, int ldk,
                             const float *v, int ldv, const int32_t *slot, const int32_t *pos,
                             int N, int max_T, int Hkv, int D) {
    CU_REQUIRE(N >= 0 && max_T > 0 && Hkv > 0 && D > 0 && ldk >= Hkv * D && ldv >= Hkv * D,
               "kv_store: bad shape N=%d max_T=%d Hkv=%d D=%d", N, max_T, Hkv, D);
    if (N == 0) return 0;
    CU_REQUIRE(kcache && vcache && k && v && slot && pos, "kv_store: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    int row = Hkv * D;
    kv_store_kernel<<<cu_blocks((size_t)N * row, 256, im->num_sms), 256, 0, im->stream>>>(
        kcache, vcache, k, ldk, v, ldv, slot, pos, N, max_T, row, im->flags_dev);
    CU_LAUNCHED("kv_store_kernel");
    return 0;
}

// One level of the transpose-reduction: lanes l and l ^ OFF swap halves of v[0 .. 2 OFF) and add,
// keeping the half named by their OFF bit. A template so every index is a constant (v stays in
// registers); the select is done on bits so the compiler cannot turn it into a local-memory index.
template <int OFF>
static __device__ __forceinline__ void dec_reduce_level(float (&v)[32], int lane) {
    const int upper = (lane & OFF) ? -1 : 0;
#pragma unroll
    for (int kk = 0; kk < OFF; kk++) {
        const int lo = __float_as_int(v[kk]), hi = __float_as_int(v[kk + OFF]);
        const float send = __int_as_float((lo & upper) | (hi & ~upper));
        const float keep = __int_as_float((hi & upper) | (lo & ~upper));
        v[kk] = keep + __shfl_xor_sync(CU_FULL_MASK, send, OFF);
    }
}

// lane l ends with the sum over the warp's lanes of v[l] (32 values per lane, 31 shuffles)
static __device__ __forceinline__ float dec_transpose_reduce(float (&v)[32], int lane) {
    dec_reduce_level<16>(v, lane);
    dec_reduce_level<8>(v, lane);
    dec_reduce_level<4>(v, lane);
    dec_reduce_level<2>(v, lane);
    dec_reduce_level<1>(v, lane);
    return v[0];
}

// one block of DEC_WARPS warps per (sequence b, query head h); warp w takes the 32-key chunks
// w, w + DEC_WARPS, ... with an online softmax, then the warps' partial results are merged.
template <int ND>
__global__ void __launch_bounds__(DEC_WARPS * 32)
    att_decode_kernel(float *out, const float *q, int ldq, const float *kcache, const float *vcache,
                      const int32_t *slot, const int32_t *lens, int max_T, int Hq, int Hkv, int D,
                      float scale, unsigned int *flags) {
    __shared__ float sm[DEC_WARPS], sl_[DEC_WARPS], sacc[DEC_WARPS][32 * ND];
    const int b = blockIdx.x, h = blockIdx.y, kvh = h / (Hq / Hkv);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int len = lens[b], sl = slot[b];
    float *o = out + (size_t)b * Hq * D + (size_t)h * D;
    if (sl < 0 || len < 0 || len > max_T || len == 0) {
        if ((sl < 0 || len < 0 || len > max_T) && threadIdx.x == 0)
            cu_raise(flags, CU_EFLAG_DECODE);
        for (int d = threadIdx.x; d < D; d += blockDim.x)
            o[d] = 0.0f;
        return;
    }
    const size_t row = (size_t)Hkv * D;
    const float *kb = kcache + (size_t)sl * max_T * row + (size_t)kvh * D;
    const float *vb = vcache + (size_t)sl * max_T * row + (size_t)kvh * D;
    float qr[ND], acc[ND];
#pragma unroll
    for (int dd = 0; dd < ND; dd++) {
        const int d = lane + 32 * dd;
        qr[dd] = d < D ? q[(size_t)b * ldq + (size_t)h * D + d] : 0.0f;
        acc[dd] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int t0 = warp * 32; t0 < len; t0 += DEC_WARPS * 32) {
        const int nk = min(32, len - t0);
        float part[32];
#pragma unroll
        for (int kk = 0; kk < 32; kk++) {
            float a = 0.0f;
            if (kk < nk) {
                const float *kr = kb + (size_t)(t0 + kk) * row;
#pragma unroll
                for (int dd = 0; dd < ND; dd++) {
                    const int d = lane + 32 * dd;
                    if (d < D) a = fmaf(qr[dd], kr[d], a);
                }
            }
            part[kk] = a;
        }
        float sc = dec_transpose_reduce(part, lane);
        const bool valid = lane < nk;
        sc = valid ? sc * scale : -INFINITY;
        const float mnew = fmaxf(m, cu_warp_max(sc)); // key t0 is valid: finite
        const float p = valid ? expf(sc - mnew) : 0.0f;
        const float alpha = expf(m - mnew);
        l = l * alpha + cu_warp_sum(p);
        m = mnew;
#pragma unroll
        for (int dd = 0; dd < ND; dd++)
            acc[dd] *= alpha;
        for (int jj = 0; jj < nk; jj++) {
            const float pj = __shfl_sync(CU_FULL_MASK, p, jj);
            const float *vr = vb + (size_t)(t0 + jj) * row;
#pragma unroll
            for (int dd = 0; dd < ND; dd++) {
                const int d = lane + 32 * dd;
                if (d < D) acc[dd] = fmaf(pj, vr[d], acc[dd]);
            }
        }
    }
    if (lane == 0) {
        sm[warp] = m;
        sl_[warp] = l;
    }
#pragma unroll
    for (int dd = 0; dd < ND; dd++)
        sacc[warp][lane + 32 * dd] = acc[dd];
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++)
        M = fmaxf(M, sm[w]);
    float den = 0.0f, wt[DEC_WARPS];
#pragma unroll
    for (int w = 0; w < DEC_WARPS; w++) {
        wt[w] = sl_[w] > 0.0f ? expf(sm[w] - M) : 0.0f; // a warp without keys has m = -inf
        den += wt[w] * sl_[w];
    }
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float num = 0.0f;
#pragma unroll
        for (int w = 0; w < DEC_WARPS; w++)
            num += wt[w] * sacc[w][d];
        o[d] = num / den;
    }
}

extern "C" int cuda_attention_decode(ops_ctx *c, float *out, const float *q, int ldq,
                                     const float *kcache, const float *vcache, const int32_t *slot,
                                     const int32_t *lens, int B, int max_T, int Hq, int Hkv,
                                     int D) {
    CU_REQUIRE(B >= 0 && max_T > 0 && Hq > 0 && Hkv > 0 && D > 0 && Hq % Hkv == 0 && ldq >= Hq * D,
               "attention_decode: bad shape B=%d max_T=%d Hq=%d Hkv=%d D=%d", B, max_T, Hq, Hkv, D);
    CU_REQUIRE(D <= ATT_MAXD, "attention_decode: head size D=%d is above the limit %d", D,
               (int)ATT_MAXD);
    if (B == 0) return 0;
    CU_REQUIRE(out && q && kcache && vcache && slot && lens, "attention_decode: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    const float scale = 1.0f / sqrtf((float)D);
    dim3 grid((unsigned int)B, (unsigned int)Hq);
    ATT_DISPATCH(att_nd(D), (att_decode_kernel<NDV><<<grid, DEC_WARPS * 32, 0, im->stream>>>(
                                out, q, ldq, kcache, vcache, slot, lens, max_T, Hq, Hkv, D, scale,
                                im->flags_dev)));
    CU_LAUNCHED("att_decode_kernel");
    return 0;
}
