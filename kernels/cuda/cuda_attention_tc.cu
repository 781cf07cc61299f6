// cuda_attention_tc.cu — causal grouped-query attention over a packed batch on tensor cores
// (forward, backward): bf16 products through the warp matrix API (wmma, 16 x 16 x 16), fp32
// softmax, accumulation and storage. The flash algorithm of cuda_attention.cu with the dot
// products moved from CUDA cores to tensor cores: no T x T matrix exists, lse is saved, and the
// backward recomputes P from it. Used when the attention mode is `tensor`, or `auto` with bf16
// GEMMs (ops_cuda.h), for head sizes D % 16 == 0 and D <= 128; other sizes use the fp32 kernels.
//
// Operands: one elementwise kernel per call copies q, k, v (and dout for the backward) to packed
// bf16 (N, H * D) in the context's scratch, so tile loads are 16-byte copies with no conversion.
//
// Layout: a block has 4 warps and owns a 64-row tile; each warp owns 16 rows of it. Tiles of the
// other operand (64 keys, or 64 queries) stream through shared memory as bf16. A warp's scores
// (16 x 64) go from the accumulator fragments to shared memory, where lane pair (2r, 2r + 1)
// applies the causal mask and the softmax to row r (32 columns each), writes P as bf16, and
// rescales the row of the fp32 output accumulator (shared memory too, since the fragments'
// register layout is unspecified); then the warp multiplies P by V into that accumulator.
//   forward:   S = Q K^T, online softmax, O += P V; out = O / l, lse = m + log l
//   dQ:        per key tile S, dP = dO V^T, dS = P (dP - Di) scale, dQ += dS K
//   dK, dV:    blocks over (key tile, query head), looping over the query tiles at or after
//              the keys: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q; with GQA each
//              query head's share goes to a scratch (N, Hq, D) pair and a second kernel sums a
//              group's heads into dK, dV (one block per kv head looping over its group left 2
//              waves of 1-block-per-SM blocks on an H200 at 0.5B: 98 ms of a 300 ms step)
// Every output row is written by exactly one block, no atomics; Di = rowsum(dO * O) comes from
// cuda_attention.cu's att_bwd_di_kernel. Errors against the fp32 kernels are those of bf16
// operands (about 1e-3 relative), the bf16 GEMM mode's bound.
#include <cuda_bf16.h>
#include <mma.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

enum {
    TC_B = 64,         // rows of a block's tile, and of the streamed tiles
    TC_WARPS = 4,      // warps per block, 16 rows each
    TC_THREADS = 128,  //
    TC_LDS = TC_B + 4, // fp32 score rows in shared memory
    TC_LDP = TC_B + 8, // bf16 probability rows
    TC_MAXD = 128      // largest head size
};

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> tc_acc;
typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major> tc_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major> tc_bt; // B^T in memory
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major> tc_b;

// strides of a head's rows in shared memory: bf16 (multiple of 8), fp32 (multiple of 4)
static __host__ __device__ __forceinline__ int tc_ldh(int D) {
    return D + 8;
}
static __host__ __device__ __forceinline__ int tc_ldf(int D) {
    return D + 4;
}

// 32-byte aligned start of dynamic shared memory (wmma pointers must be)
static __device__ __forceinline__ char *tc_align(void *p) {
    return (char *)(((uintptr_t)p + 31) & ~(uintptr_t)31);
}

// two floats as a bf16 pair (lo in the low half, as the tensor-core operands want it)
static __device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    const bf16 a = __float2bfloat16(lo), b = __float2bfloat16(hi);
    return (uint32_t)__bfloat16_as_ushort(a) | ((uint32_t)__bfloat16_as_ushort(b) << 16);
}

// rows [0, n) of a tile of bf16 rows (row r at src + r * ld) into shared rows of stride ldd, 16
// bytes at a time (D, ld and ldd are multiples of 8, src is 16-byte aligned); rows n .. TC_B - 1
// become zeros
static __device__ void tc_load(bf16 *dst, int ldd, const bf16 *src, int ld, int n, int D) {
    const int vpr = D / 8; // 16-byte vectors per row
#pragma unroll 1
    for (int idx = threadIdx.x; idx < TC_B * vpr; idx += TC_THREADS) {
        const int r = idx / vpr, c = (idx - r * vpr) * 8;
        *(uint4 *)(dst + r * ldd + c) =
            r < n ? *(const uint4 *)(src + (size_t)r * ld + c) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// C (16 x 64, fp32, stride TC_LDS) = A (16 x D rows, stride lda) . B^T where B is 64 x D rows
// (stride ldb): a warp's scores against a tile
static __device__ void tc_scores(float *C, const bf16 *A, int lda, const bf16 *B, int ldb, int D) {
    for (int n = 0; n < TC_B / 16; n++) {
        tc_acc acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D; kk += 16) {
            tc_a a;
            tc_bt b;
            wmma::load_matrix_sync(a, A + kk, lda);
            wmma::load_matrix_sync(b, B + n * 16 * ldb + kk, ldb);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(C + n * 16, acc, TC_LDS, wmma::mem_row_major);
    }
}

// C (16 x D, fp32, stride ldc) += P (16 x 64, bf16, stride TC_LDP) . B (64 x D rows, stride ldb)
static __device__ void tc_accumulate(float *C, int ldc, const bf16 *P, const bf16 *B, int ldb,
                                     int D) {
    for (int n = 0; n < D / 16; n++) {
        tc_acc acc;
        wmma::load_matrix_sync(acc, C + n * 16, ldc, wmma::mem_row_major);
        for (int kk = 0; kk < TC_B; kk += 16) {
            tc_a a;
            tc_b b;
            wmma::load_matrix_sync(a, P + kk, TC_LDP);
            wmma::load_matrix_sync(b, B + kk * ldb + n * 16, ldb);
            wmma::mma_sync(acc, a, b, acc);
        }
        wmma::store_matrix_sync(C + n * 16, acc, ldc, wmma::mem_row_major);
    }
}

// ---- forward ----

__global__ void __launch_bounds__(TC_THREADS)
    att_tc_fwd_kernel(float *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                      const int32_t *cu, const int2 *tiles, const int *ntiles, int Hq, int Hkv,
                      int D, float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv), HqD = Hq * D, HkvD = Hkv * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)TC_B, L - i0), nkeys = i0 + nq;
    const int ldh = tc_ldh(D), ldf = tc_ldf(D);
    extern __shared__ float4 tc_smem[];
    char *sp = tc_align(tc_smem);
    bf16 *Qs = (bf16 *)sp;                   // (64, ldh)
    bf16 *Ks = Qs + TC_B * ldh;              // (64, ldh)
    bf16 *Vs = Ks + TC_B * ldh;              // (64, ldh)
    float *Os = (float *)(Vs + TC_B * ldh);  // (64, ldf) unnormalised output
    float *Ss = Os + TC_B * ldf;             // (64, TC_LDS) scores
    bf16 *Ps = (bf16 *)(Ss + TC_B * TC_LDS); // (64, TC_LDP) probabilities
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;
    const int rr = lane >> 1, half = lane & 1, qi = i0 + r0 + rr; // this lane pair's row

    tc_load(Qs, ldh, q + (size_t)(base + i0) * HqD + h * D, HqD, nq, D);
    for (int idx = threadIdx.x; idx < TC_B * D; idx += TC_THREADS)
        Os[(idx / D) * ldf + idx % D] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int kb = 0; kb < nkeys; kb += TC_B) {
        const int nk = min((int)TC_B, nkeys - kb);
        __syncthreads(); // the previous tile is consumed (and Qs, Os are written)
        tc_load(Ks, ldh, k + (size_t)(base + kb) * HkvD + kvh * D, HkvD, nk, D);
        tc_load(Vs, ldh, v + (size_t)(base + kb) * HkvD + kvh * D, HkvD, nk, D);
        __syncthreads();
        if (kb > i0 + r0 + 15) continue; // warp-uniform: every key is after this warp's rows
        tc_scores(Ss + r0 * TC_LDS, Qs + r0 * ldh, ldh, Ks, ldh, D);
        __syncwarp();
        // the row's online softmax; key kb + c is valid when <= qi (and < nkeys): the first tile
        // holds the sequence's first key, so m is finite from then on
        float *srow = Ss + (r0 + rr) * TC_LDS + half * 32;
        bf16 *prow = Ps + (r0 + rr) * TC_LDP + half * 32;
        float mx = -INFINITY;
        for (int c = 0; c < 32; c++) {
            const int key = kb + half * 32 + c;
            const float s = key <= qi && key < nkeys ? srow[c] * scale : -INFINITY;
            srow[c] = s;
            mx = fmaxf(mx, s);
        }
        mx = fmaxf(mx, __shfl_xor_sync(CU_FULL_MASK, mx, 1));
        const float mnew = fmaxf(m, mx), alpha = expf(m - mnew);
        float sum = 0.0f;
        for (int c = 0; c < 32; c++) {
            const float p = expf(srow[c] - mnew);
            sum += p;
            prow[c] = __float2bfloat16(p);
        }
        sum += __shfl_xor_sync(CU_FULL_MASK, sum, 1);
        l = l * alpha + sum;
        m = mnew;
        float *orow = Os + (r0 + rr) * ldf;
        for (int d = half; d < D; d += 2)
            orow[d] *= alpha;
        __syncwarp();
        tc_accumulate(Os + r0 * ldf, ldf, Ps + r0 * TC_LDP, Vs, ldh, D);
        __syncwarp();
    }
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const float lr = __shfl_sync(CU_FULL_MASK, l, 2 * r);
        const float mr = __shfl_sync(CU_FULL_MASK, m, 2 * r);
        const int i = r0 + r;
        if (i >= nq) continue; // warp-uniform
        const size_t row = (size_t)(base + i0 + i);
        const float inv = 1.0f / lr;
        float *o = out + row * (size_t)Hq * D + (size_t)h * D;
        for (int d = lane; d < D; d += 32)
            o[d] = Os[i * ldf + d] * inv;
        if (lse && lane == 0) lse[row * Hq + h] = mr + logf(lr);
    }
}

// ---- backward ----

// dS for a warp's 16 rows against a tile of 64 columns, from S and dP in shared memory (fp32,
// stride TC_LDS): p = exp(s * scale - lse) where valid(row, col), dS = p (dP - Di) scale; P and
// dS stored as bf16 (stride TC_LDP; P only when Pb is non-NULL). Row r of the warp is handled by
// lane pair (2r, 2r + 1), 32 columns each; lse and Di of the row or column come from the caller.
struct tc_mask {
    int row0, col0, nrows, ncols; // sequence positions of row 0 / column 0, valid counts
    bool rows_are_queries;        // true: query >= key is row >= col; false: col >= row
};

static __device__ void tc_dscores(bf16 *Pb, bf16 *dSb, const float *S, const float *dP,
                                  const tc_mask &mk, const float *lse_c, const float *di_c,
                                  float lse_r, float di_r, float scale) {
    const int lane = threadIdx.x & 31, rr = lane >> 1, half = lane & 1;
    const float *srow = S + rr * TC_LDS + half * 32, *dprow = dP + rr * TC_LDS + half * 32;
    bf16 *prow = Pb ? Pb + rr * TC_LDP + half * 32 : NULL;
    bf16 *dsrow = dSb + rr * TC_LDP + half * 32;
    const int rowpos = mk.row0 + rr;
    for (int c = 0; c < 32; c++) {
        const int col = half * 32 + c, colpos = mk.col0 + col;
        bool valid = rr < mk.nrows && col < mk.ncols;
        valid = valid && (mk.rows_are_queries ? rowpos >= colpos : colpos >= rowpos);
        float p = 0.0f, ds = 0.0f;
        if (valid) {
            const float ls = lse_c ? lse_c[col] : lse_r, dd = di_c ? di_c[col] : di_r;
            p = expf(srow[c] * scale - ls);
            ds = p * (dprow[c] - dd) * scale;
        }
        if (prow) prow[c] = __float2bfloat16(p);
        dsrow[c] = __float2bfloat16(ds);
    }
}

__global__ void __launch_bounds__(TC_THREADS)
    att_tc_bwd_dq_kernel(float *dq, int ldq, const bf16 *dout, const bf16 *q, const bf16 *k,
                         const bf16 *v, const float *lse, const float *Di, const int32_t *cu,
                         const int2 *tiles, const int *ntiles, int Hq, int Hkv, int D,
                         float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv), HqD = Hq * D, HkvD = Hkv * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)TC_B, L - i0), nkeys = i0 + nq;
    const int ldh = tc_ldh(D), ldf = tc_ldf(D);
    extern __shared__ float4 tc_smem[];
    char *sp = tc_align(tc_smem);
    bf16 *Qs = (bf16 *)sp;                     // (64, ldh)
    bf16 *dOs = Qs + TC_B * ldh;               // (64, ldh)
    bf16 *Ks = dOs + TC_B * ldh;               // (64, ldh)
    bf16 *Vs = Ks + TC_B * ldh;                // (64, ldh)
    float *dQs = (float *)(Vs + TC_B * ldh);   // (64, ldf)
    float *Ss = dQs + TC_B * ldf;              // (64, TC_LDS)
    float *dPs = Ss + TC_B * TC_LDS;           // (64, TC_LDS)
    bf16 *dSs = (bf16 *)(dPs + TC_B * TC_LDS); // (64, TC_LDP)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;
    const int rr = lane >> 1;

    tc_load(Qs, ldh, q + (size_t)(base + i0) * HqD + h * D, HqD, nq, D);
    tc_load(dOs, ldh, dout + (size_t)(base + i0) * HqD + h * D, HqD, nq, D);
    for (int idx = threadIdx.x; idx < TC_B * D; idx += TC_THREADS)
        dQs[(idx / D) * ldf + idx % D] = 0.0f;
    float lse_r = 0.0f, di_r = 0.0f;
    if (r0 + rr < nq) {
        const size_t row = (size_t)(base + i0 + r0 + rr);
        lse_r = lse[row * Hq + h];
        di_r = Di[row * Hq + h];
    }
    for (int kb = 0; kb < nkeys; kb += TC_B) {
        const int nk = min((int)TC_B, nkeys - kb);
        __syncthreads();
        tc_load(Ks, ldh, k + (size_t)(base + kb) * HkvD + kvh * D, HkvD, nk, D);
        tc_load(Vs, ldh, v + (size_t)(base + kb) * HkvD + kvh * D, HkvD, nk, D);
        __syncthreads();
        if (kb > i0 + r0 + 15) continue; // warp-uniform
        tc_scores(Ss + r0 * TC_LDS, Qs + r0 * ldh, ldh, Ks, ldh, D);
        tc_scores(dPs + r0 * TC_LDS, dOs + r0 * ldh, ldh, Vs, ldh, D);
        __syncwarp();
        const tc_mask mk = {i0 + r0, kb, nq - r0, nk, true};
        tc_dscores(NULL, dSs + r0 * TC_LDP, Ss + r0 * TC_LDS, dPs + r0 * TC_LDS, mk, NULL, NULL,
                   lse_r, di_r, scale);
        __syncwarp();
        tc_accumulate(dQs + r0 * ldf, ldf, dSs + r0 * TC_LDP, Ks, ldh, D);
        __syncwarp();
    }
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const int i = r0 + r;
        if (i >= nq) break; // warp-uniform
        float *o = dq + (size_t)(base + i0 + i) * ldq + (size_t)h * D;
        for (int d = lane; d < D; d += 32)
            o[d] = dQs[i * ldf + d];
    }
}

// dK, dV of query head blockIdx.y's share: rows at ok + row * ldo (G == 1: dk itself; else the
// (N, Hq * D) scratch, column h * D)
__global__ void __launch_bounds__(TC_THREADS)
    att_tc_bwd_dkv_kernel(float *ok_base, float *ov_base, int ldok, int ldov, const bf16 *dout,
                          const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
                          const float *Di, const int32_t *cu, const int2 *tiles, const int *ntiles,
                          int Hq, int Hkv, int D, float scale) {
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, G = Hq / Hkv, kvh = h / G, HqD = Hq * D, HkvD = Hkv * D;
    const int ocol = G == 1 ? kvh * D : h * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, j0 = tl.y;
    const int nk = min((int)TC_B, L - j0);
    const int ldh = tc_ldh(D), ldf = tc_ldf(D);
    extern __shared__ float4 tc_smem[];
    char *sp = tc_align(tc_smem);
    bf16 *Kt = (bf16 *)sp;                      // (64, ldh) this block's keys
    bf16 *Vt = Kt + TC_B * ldh;                 // (64, ldh)
    bf16 *Qs = Vt + TC_B * ldh;                 // (64, ldh) a query tile
    bf16 *dOs = Qs + TC_B * ldh;                // (64, ldh)
    float *dKs = (float *)(dOs + TC_B * ldh);   // (64, ldf)
    float *dVs = dKs + TC_B * ldf;              // (64, ldf)
    float *Ss = dVs + TC_B * ldf;               // (64, TC_LDS) S^T
    float *dPs = Ss + TC_B * TC_LDS;            // (64, TC_LDS) dP^T
    bf16 *Ps = (bf16 *)(dPs + TC_B * TC_LDS);   // (64, TC_LDP) P^T
    bf16 *dSs = Ps + TC_B * TC_LDP;             // (64, TC_LDP) dS^T
    float *Ls = (float *)(dSs + TC_B * TC_LDP); // (64) lse of the query tile
    float *Ds = Ls + TC_B;                      // (64) Di
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;

    tc_load(Kt, ldh, k + (size_t)(base + j0) * HkvD + kvh * D, HkvD, nk, D);
    tc_load(Vt, ldh, v + (size_t)(base + j0) * HkvD + kvh * D, HkvD, nk, D);
    for (int idx = threadIdx.x; idx < TC_B * D; idx += TC_THREADS) {
        const int o = (idx / D) * ldf + idx % D;
        dKs[o] = 0.0f;
        dVs[o] = 0.0f;
    }
    for (int qb = j0; qb < L; qb += TC_B) { // rows before j0 see none of these keys
        const int nq = min((int)TC_B, L - qb);
        __syncthreads();
        tc_load(Qs, ldh, q + (size_t)(base + qb) * HqD + h * D, HqD, nq, D);
        tc_load(dOs, ldh, dout + (size_t)(base + qb) * HqD + h * D, HqD, nq, D);
        for (int i = threadIdx.x; i < TC_B; i += TC_THREADS) {
            const size_t row = (size_t)(base + qb + (i < nq ? i : 0));
            Ls[i] = i < nq ? lse[row * Hq + h] : 0.0f;
            Ds[i] = i < nq ? Di[row * Hq + h] : 0.0f;
        }
        __syncthreads();
        tc_scores(Ss + r0 * TC_LDS, Kt + r0 * ldh, ldh, Qs, ldh, D);
        tc_scores(dPs + r0 * TC_LDS, Vt + r0 * ldh, ldh, dOs, ldh, D);
        __syncwarp();
        const tc_mask mk = {j0 + r0, qb, nk - r0, nq, false};
        tc_dscores(Ps + r0 * TC_LDP, dSs + r0 * TC_LDP, Ss + r0 * TC_LDS, dPs + r0 * TC_LDS, mk, Ls,
                   Ds, 0.0f, 0.0f, scale);
        __syncwarp();
        tc_accumulate(dVs + r0 * ldf, ldf, Ps + r0 * TC_LDP, dOs, ldh, D);
        tc_accumulate(dKs + r0 * ldf, ldf, dSs + r0 * TC_LDP, Qs, ldh, D);
        __syncwarp();
    }
    __syncwarp();
    for (int r = 0; r < 16; r++) {
        const int kk = r0 + r;
        if (kk >= nk) break; // warp-uniform
        const size_t row = (size_t)(base + j0 + kk);
        float *ok = ok_base + row * ldok + ocol, *ov = ov_base + row * ldov + ocol;
        for (int d = lane; d < D; d += 32) {
            ok[d] = dKs[kk * ldf + d];
            ov[d] = dVs[kk * ldf + d];
        }
    }
}

// dk, dv (rows of ldk / ldv, kv head columns) = the sum of their group's query-head shares
// (N, Hq * D)
__global__ void att_tc_sum_heads_kernel(float *dk, int ldk, float *dv, int ldv, const float *pk,
                                        const float *pv, int N, int Hq, int Hkv, int D) {
    const int G = Hq / Hkv, row_w = Hkv * D;
    const size_t total = (size_t)N * row_w;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t n = i / (size_t)row_w;
        const int e = (int)(i - n * (size_t)row_w), kvh = e / D, d = e - kvh * D;
        const float *a = pk + n * (size_t)Hq * D + (size_t)kvh * G * D + d;
        const float *b = pv + n * (size_t)Hq * D + (size_t)kvh * G * D + d;
        float sk = 0.0f, sv = 0.0f;
        for (int g = 0; g < G; g++) {
            sk += a[(size_t)g * D];
            sv += b[(size_t)g * D];
        }
        dk[n * ldk + e] = sk;
        dv[n * ldv + e] = sv;
    }
}

// ---- bf16 copies of the operands ----

// up to 4 tensors of fp32 rows (n rows of `width` values, row stride ld) to packed bf16 (n, width),
// 8 values a thread; blockIdx.y picks the tensor. vec: src 16-byte aligned, ld % 4 == 0 (two
// float4 loads), else 8 scalar loads. width % 8 == 0.
struct tc_convert_job {
    bf16 *dst[4];
    const float *src[4];
    int ld[4], width[4], vec[4];
    int n;
};

__global__ void att_tc_to_bf16_kernel(tc_convert_job job) {
    const int t = blockIdx.y, W = job.width[t], vpr = W / 8, ld = job.ld[t];
    const float *src = job.src[t];
    bf16 *dst = job.dst[t];
    const size_t total = (size_t)job.n * vpr;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)gridDim.x * blockDim.x) {
        const size_t r = i / (size_t)vpr;
        const int c = (int)(i - r * (size_t)vpr) * 8;
        const float *s = src + r * (size_t)ld + c;
        float x[8];
        if (job.vec[t]) {
            const float4 a = *(const float4 *)s, b = *(const float4 *)(s + 4);
            x[0] = a.x, x[1] = a.y, x[2] = a.z, x[3] = a.w;
            x[4] = b.x, x[5] = b.y, x[6] = b.z, x[7] = b.w;
        } else {
            for (int e = 0; e < 8; e++)
                x[e] = s[e];
        }
        uint4 o;
        o.x = tc_pack(x[0], x[1]);
        o.y = tc_pack(x[2], x[3]);
        o.z = tc_pack(x[4], x[5]);
        o.w = tc_pack(x[6], x[7]);
        *(uint4 *)(dst + r * (size_t)W + c) = o;
    }
}

static size_t tc_align256(size_t n) {
    return (n + 255) & ~(size_t)255;
}

// carves the packed bf16 copies (N, width) out of scratch and queues their conversion
static int tc_convert(ops_ctx *c, char **scratch, int N, int count, bf16 **dst,
                      const float *const *src, const int *ld, const int *width) {
    cuda_impl *im = cu_impl(c);
    tc_convert_job job;
    memset(&job, 0, sizeof job);
    job.n = N;
    size_t most = 0;
    for (int t = 0; t < count; t++) {
        dst[t] = (bf16 *)*scratch;
        *scratch += tc_align256((size_t)N * width[t] * sizeof(bf16));
        job.dst[t] = dst[t];
        job.src[t] = src[t];
        job.ld[t] = ld[t];
        job.width[t] = width[t];
        job.vec[t] = ((uintptr_t)src[t] % 16 == 0 && ld[t] % 4 == 0);
        if ((size_t)width[t] > most) most = (size_t)width[t];
    }
    const dim3 grid(cu_blocks((size_t)N * most / 8, 256, im->num_sms), (unsigned int)count);
    att_tc_to_bf16_kernel<<<grid, 256, 0, im->stream>>>(job);
    CU_LAUNCHED("att_tc_to_bf16_kernel");
    return 0;
}

// ---- launchers (called by cuda_attention.cu, which validated the shapes) ----

static size_t tc_fwd_smem(int D) {
    return 32 + (size_t)3 * TC_B * tc_ldh(D) * 2 + (size_t)TC_B * tc_ldf(D) * 4 +
           (size_t)TC_B * TC_LDS * 4 + (size_t)TC_B * TC_LDP * 2;
}
static size_t tc_dq_smem(int D) {
    return 32 + (size_t)4 * TC_B * tc_ldh(D) * 2 + (size_t)TC_B * tc_ldf(D) * 4 +
           (size_t)2 * TC_B * TC_LDS * 4 + (size_t)TC_B * TC_LDP * 2;
}
static size_t tc_dkv_smem(int D) {
    return 32 + (size_t)4 * TC_B * tc_ldh(D) * 2 + (size_t)2 * TC_B * tc_ldf(D) * 4 +
           (size_t)2 * TC_B * TC_LDS * 4 + (size_t)2 * TC_B * TC_LDP * 2 + (size_t)2 * TC_B * 4;
}

int cuda_attention_tc_init(ops_ctx *c) {
    const int optin = cu_impl(c)->smem_optin;
    const int f = (int)tc_fwd_smem(TC_MAXD), q = (int)tc_dq_smem(TC_MAXD),
              kv = (int)tc_dkv_smem(TC_MAXD);
    CU_CHECK(cudaFuncSetAttribute(att_tc_fwd_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  f < optin ? f : optin));
    CU_CHECK(cudaFuncSetAttribute(att_tc_bwd_dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  q < optin ? q : optin));
    CU_CHECK(cudaFuncSetAttribute(att_tc_bwd_dkv_kernel,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kv < optin ? kv : optin));
    return 0;
}

int cuda_attention_tc_usable(ops_ctx *c, int D) {
    if (D % 16 != 0 || D > TC_MAXD) return 0;
    return tc_dkv_smem(D) <= (size_t)cu_impl(c)->smem_optin;
}

int cuda_attention_tc_tile_rows(void) {
    return TC_B;
}

size_t cuda_attention_tc_forward_scratch(int N, int Hq, int Hkv, int D) {
    return tc_align256((size_t)N * Hq * D * sizeof(bf16)) +
           2 * tc_align256((size_t)N * Hkv * D * sizeof(bf16));
}

int cuda_attention_tc_forward(ops_ctx *c, float *out, float *lse, const float *q, int ldq,
                              const float *k, int ldk, const float *v, int ldv, void *scratch,
                              const int32_t *cu_seqlens, const int2 *tiles, const int *ntiles,
                              int cap, int N, int Hq, int Hkv, int D, float scale) {
    cuda_impl *im = cu_impl(c);
    char *s = (char *)scratch;
    bf16 *b[3];
    const float *src[3] = {q, k, v};
    const int ld[3] = {ldq, ldk, ldv}, width[3] = {Hq * D, Hkv * D, Hkv * D};
    if (tc_convert(c, &s, N, 3, b, src, ld, width) != 0) return -1;
    const dim3 grid((unsigned int)cap, (unsigned int)Hq);
    att_tc_fwd_kernel<<<grid, TC_THREADS, tc_fwd_smem(D), im->stream>>>(
        out, lse, b[0], b[1], b[2], cu_seqlens, tiles, ntiles, Hq, Hkv, D, scale);
    CU_LAUNCHED("att_tc_fwd_kernel");
    return 0;
}

size_t cuda_attention_tc_scratch(int N, int Hq, int Hkv, int D) {
    const size_t shares = Hq == Hkv ? 0 : tc_align256((size_t)2 * N * Hq * D * sizeof(float));
    return shares + 2 * tc_align256((size_t)N * Hq * D * sizeof(bf16)) +
           2 * tc_align256((size_t)N * Hkv * D * sizeof(bf16));
}

int cuda_attention_tc_backward(ops_ctx *c, float *dq, float *dk, float *dv, const float *dout,
                               const float *q, int ldq, const float *k, int ldk, const float *v,
                               int ldv, const float *lse, const float *Di, void *scratch,
                               const int32_t *cu_seqlens, const int2 *tiles, const int *ntiles,
                               int cap, int N, int Hq, int Hkv, int D, float scale) {
    cuda_impl *im = cu_impl(c);
    const int shared = Hq != Hkv; // GQA: per-query-head shares, then their sum
    float *ok = shared ? (float *)scratch : dk;
    float *ov = shared ? (float *)scratch + (size_t)N * Hq * D : dv;
    char *s = (char *)scratch + (shared ? tc_align256((size_t)2 * N * Hq * D * sizeof(float)) : 0);
    bf16 *b[4];
    const float *src[4] = {q, k, v, dout};
    const int ld[4] = {ldq, ldk, ldv, Hq * D}, width[4] = {Hq * D, Hkv * D, Hkv * D, Hq * D};
    if (tc_convert(c, &s, N, 4, b, src, ld, width) != 0) return -1;
    const dim3 grid((unsigned int)cap, (unsigned int)Hq);
    const int ldok = shared ? Hq * D : ldk, ldov = shared ? Hq * D : ldv;
    att_tc_bwd_dq_kernel<<<grid, TC_THREADS, tc_dq_smem(D), im->stream>>>(
        dq, ldq, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles, Hq, Hkv, D, scale);
    CU_LAUNCHED("att_tc_bwd_dq_kernel");
    att_tc_bwd_dkv_kernel<<<grid, TC_THREADS, tc_dkv_smem(D), im->stream>>>(
        ok, ov, ldok, ldov, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles, Hq, Hkv, D,
        scale);
    CU_LAUNCHED("att_tc_bwd_dkv_kernel");
    if (shared) {
        att_tc_sum_heads_kernel<<<cu_blocks((size_t)N * Hkv * D, 256, im->num_sms), 256, 0,
                                  im->stream>>>(dk, ldk, dv, ldv, ok, ov, N, Hq, Hkv, D);
        CU_LAUNCHED("att_tc_sum_heads_kernel");
    }
    return 0;
}
