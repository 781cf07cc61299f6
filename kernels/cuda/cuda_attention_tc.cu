// cuda_attention_tc.cu — causal grouped-query attention over a packed batch on tensor cores
// (forward, backward): bf16 products, fp32 softmax, accumulation and storage. The flash
// algorithm of cuda_attention.cu with the dot products moved from CUDA cores to tensor cores: no
// T x T matrix exists, lse is saved, and the backward recomputes P from it. Used when the
// attention mode is `tensor`, or `auto` with bf16 GEMMs (ops_cuda.h), for head sizes D % 16 == 0
// and D <= 128; other sizes use the fp32 kernels.
//
// Operands: one elementwise kernel per call copies q, k, v (and dout for the backward) to packed
// bf16 (N, H * D) in the context's scratch, so tile loads are 16-byte copies with no conversion.
//
// Two sets of kernels share that and the tile table (a block has 4 warps and owns a 64-row tile,
// 16 rows per warp; the other operand streams through shared memory 64 rows at a time):
//   mma (the default): mma.sync m16n8k16 through inline PTX with register-resident fragments in
//     the style of FlashAttention-2 (section "on registers" below): softmax and dS on the
//     accumulator registers, P fed to the next product from registers, ldmatrix reads, streamed
//     tiles double-buffered with cp.async. One instantiation per head size.
//   wmma (CHORD_CUDA_ATTENTION=wmma, kept for comparison): the warp matrix API (16 x 16 x 16)
//     through shared memory. A warp's scores (16 x 64) go from the accumulator fragments to shared
//     memory, where lane pair (2r, 2r + 1) applies the causal mask and the softmax to row r (32
//     columns each), writes P as bf16, and rescales the row of the fp32 output accumulator
//     (shared memory too, since wmma's register layout is unspecified); then the warp multiplies
//     P by V into that accumulator.
// Both compute
//   forward:   S = Q K^T, online softmax, O += P V; out = O / l, lse = m + log l
//   dQ:        per key tile S, dP = dO V^T, dS = P (dP - Di) scale, dQ += dS K
//   dK, dV:    blocks over (key tile, query head), looping over the query tiles at or after
//              the keys: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q; with GQA each
//              query head's share goes to a scratch (N, Hq, D) pair and a second kernel sums a
//              group's heads into dK, dV (one block per kv head looping over its group left 2
//              waves of 1-block-per-SM blocks on an H200 at 0.5B: 98 ms of a 300 ms step)
// Every output row is written by exactly one block, no atomics; Di = rowsum(dO * O) comes from
// cuda_attention.cu's att_bwd_di_kernel. Errors against the fp32 kernels are those of bf16
// operands (about 2e-3 relative), the bf16 GEMM mode's bound; P and dS are rounded to bf16
// before their products in both sets. The PTX instructions are wrapped in one function each
// (tc_mma16816, tc_ldsm, tc_cp16 ...), which the CPU emulator (tests/gpu/emu) implements with
// the ISA's per-lane layouts.
#include <cuda_bf16.h>
#include <mma.h>
#include <stdlib.h>
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
// the mma kernels compute exp(x) as exp2(x log2 e) (one ex2 instruction, the scale folded into
// the scores' multiply); lse is stored in natural units
#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

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

// ---- the PTX instructions of the mma kernels (each emulated by tests/gpu/emu) ----

// d (16 x 8, fp32) += a (16 x 16, bf16, row) . b (16 x 8, bf16, col); lane 4 g + t holds
// a = A(g, 2t..), A(g+8, 2t..), A(g, 2t+8..), A(g+8, 2t+8..); b = B(2t.., g), B(2t+8.., g);
// d = C(g, 2t), C(g, 2t+1), C(g+8, 2t), C(g+8, 2t+1) (bf16 pairs: lower index in the low half)
static __device__ __forceinline__ void tc_mma16816(float d[4], const uint32_t a[4],
                                                   const uint32_t b[2]) {
#ifdef CHORD_CUDA_EMU
    emu_mma_m16n8k16_bf16(d, a, b);
#else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                 "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// four 8 x 8 bf16 matrices from shared memory: lanes 8i .. 8i + 7 point at the rows (16 bytes,
// 16-byte aligned) of matrix i; r[i] of lane 4 g + t = its (g, 2t..2t+1), or transposed
// (tc_ldsm_t) its (2t, g) and (2t + 1, g)
static __device__ __forceinline__ void tc_ldsm(uint32_t r[4], const bf16 *row) {
#ifdef CHORD_CUDA_EMU
    emu_ldmatrix_x4(r, row, 0);
#else
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}
static __device__ __forceinline__ void tc_ldsm_t(uint32_t r[4], const bf16 *row) {
#ifdef CHORD_CUDA_EMU
    emu_ldmatrix_x4(r, row, 1);
#else
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(row);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
#endif
}

// 16 bytes global -> shared without a register round trip (cp.async; the emulator copies at once):
// tc_cp_commit closes a group of copies, tc_cp_wait<N> waits until at most N groups are pending
// (then a __syncthreads makes every thread's copies visible to the block)
static __device__ __forceinline__ void tc_cp16(void *dst, const void *src) {
#ifdef CHORD_CUDA_EMU
    memcpy(dst, src, 16);
#else
    const unsigned int a = (unsigned int)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(a), "l"(src));
#endif
}
static __device__ __forceinline__ void tc_cp_commit(void) {
#ifndef CHORD_CUDA_EMU
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N> static __device__ __forceinline__ void tc_cp_wait(void) {
#ifndef CHORD_CUDA_EMU
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

// rows [0, n) of a 64-row tile of bf16 rows (row r at src + r * ld, D values) into shared rows of
// stride ldd by cp.async; rows n .. 63 become zeros (plain stores)
template <int D>
static __device__ __forceinline__ void tc_load_async(bf16 *dst, int ldd, const bf16 *src, int ld,
                                                     int n) {
    constexpr int VPR = D / 8;
#pragma unroll
    for (int idx = threadIdx.x; idx < TC_B * VPR; idx += TC_THREADS) {
        const int r = idx / VPR, c = (idx - r * VPR) * 8;
        if (r < n)
            tc_cp16(dst + r * ldd + c, src + (size_t)r * ld + c);
        else
            *(uint4 *)(dst + r * ldd + c) = make_uint4(0u, 0u, 0u, 0u);
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

// ---- forward and backward on registers (mma.sync) ----
// A warp owns 16 rows of the block's 64-row tile. Products land in accumulator fragments of
// 16 x 8 (a lane 4 g + t holds rows g and g + 8, columns 2t and 2t + 1); the softmax (or dS)
// runs on them in registers, row max and sum over the quad's 4 lanes by shuffles; a 16 x 64
// probability block is repacked in place as the A fragments of the next product, whose fp32
// accumulator (16 x D) stays in registers to the end. Streamed tiles are double-buffered in
// shared memory (cp.async) and read by ldmatrix. D is a template parameter so that every
// fragment array lives in registers. The forward and dQ kernels take the tile table from its end:
// a tile's work grows with its position in the sequence, and the longest blocks then start first
// instead of forming the grid's tail.

// ldmatrix row addresses of a lane: for an A operand of 16 rows x 16 (or a B operand read
// transposed: 16 rows of k x 16 columns of n) and for a B operand stored as 16 rows of n x 16 of k
struct tc_lane {
    int a_row, a_col, b_row, b_col;
};
static __device__ __forceinline__ tc_lane tc_lane_of(int lane) {
    tc_lane r;
    r.a_row = ((lane >> 3) & 1) * 8 + (lane & 7);
    r.a_col = (lane >> 4) * 8;
    r.b_row = (lane >> 4) * 8 + (lane & 7);
    r.b_col = ((lane >> 3) & 1) * 8;
    return r;
}

// s (16 x NC) = A (16 rows x D, shared, stride D + 8) . B^T, B NC rows x D (shared, same stride)
template <int D, int NC>
static __device__ __forceinline__ void tc_mma_scores(float s[NC / 8][4], const bf16 *A,
                                                     const bf16 *B, const tc_lane &ln) {
    constexpr int LDH = D + 8;
#pragma unroll
    for (int j = 0; j < NC / 8; j++)
        s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
        uint32_t a[4];
        tc_ldsm(a, A + ln.a_row * LDH + kk * 16 + ln.a_col);
#pragma unroll
        for (int jj = 0; jj < NC / 16; jj++) {
            uint32_t b[4];
            tc_ldsm(b, B + (jj * 16 + ln.b_row) * LDH + kk * 16 + ln.b_col);
            tc_mma16816(s[2 * jj], a, b);
            tc_mma16816(s[2 * jj + 1], a, b + 2);
        }
    }
}

// acc (16 x D) += P (16 x NC, accumulator fragments, rounded to bf16 here) . B, B NC rows x D
// (shared, stride D + 8, read transposed)
template <int D, int NC>
static __device__ __forceinline__ void
tc_mma_accumulate(float acc[D / 8][4], const float p[NC / 8][4], const bf16 *B, const tc_lane &ln) {
    constexpr int LDH = D + 8;
#pragma unroll
    for (int kk = 0; kk < NC / 16; kk++) {
        uint32_t a[4];
        a[0] = tc_pack(p[2 * kk][0], p[2 * kk][1]);
        a[1] = tc_pack(p[2 * kk][2], p[2 * kk][3]);
        a[2] = tc_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]);
        a[3] = tc_pack(p[2 * kk + 1][2], p[2 * kk + 1][3]);
#pragma unroll
        for (int nn = 0; nn < D / 16; nn++) {
            uint32_t b[4];
            tc_ldsm_t(b, B + (kk * 16 + ln.a_row) * LDH + nn * 16 + ln.a_col);
            tc_mma16816(acc[2 * nn], a, b);
            tc_mma16816(acc[2 * nn + 1], a, b + 2);
        }
    }
}

// forward: the 16 x 64 scores of keys kb .. kb + 63 scaled (by scale log2 e), masked to -inf where
// key > row or key >= nkeys (MASK), and the running maxima of the lane's rows A and B
template <bool MASK>
static __device__ __forceinline__ void tc_fwd_mask(float s[TC_B / 8][4], int kb, int t, int rowA,
                                                   int rowB, int nkeys, float scale, float &mxA,
                                                   float &mxB) {
#pragma unroll
    for (int j = 0; j < TC_B / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = kb + 8 * j + 2 * t + (e & 1), row = e < 2 ? rowA : rowB;
            const float x = !MASK || (key <= row && key < nkeys) ? s[j][e] * scale : -INFINITY;
            s[j][e] = x;
            if (e < 2)
                mxA = fmaxf(mxA, x);
            else
                mxB = fmaxf(mxB, x);
        }
}

// the dQ kernel's two rows of a lane (sequence positions, valid, lse log2 e, Di)
struct tc_rows {
    int rowA, rowB;
    bool okA, okB;
    float lsA, lsB, diA, diB;
};

// dQ: sc (scores) becomes dS = P (dP - Di) scale, P = exp2(s sl2 - lse log2 e) where valid (MASK:
// the row is valid and key <= row; key0 = the first key of the lane's columns), else 0
template <bool MASK>
static __device__ __forceinline__ void tc_dq_ds(float sc[TC_B / 8][4], const float dp[TC_B / 8][4],
                                                int key0, const tc_rows &rw, float scale,
                                                float sl2) {
#pragma unroll
    for (int j = 0; j < TC_B / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int key = key0 + 8 * j + (e & 1);
            const bool valid =
                !MASK || (e < 2 ? rw.okA && key <= rw.rowA : rw.okB && key <= rw.rowB);
            const float p = valid ? exp2f(sc[j][e] * sl2 - (e < 2 ? rw.lsA : rw.lsB)) : 0.0f;
            sc[j][e] = p * (dp[j][e] - (e < 2 ? rw.diA : rw.diB)) * scale;
        }
}

// dK/dV: pt (S^T) becomes P^T, dst (dP^T) becomes dS^T, over queries q0 .. q0 + QC - 1 (lse and
// Di at Lt, Dt, lse in log2 units; sl2 = scale log2 e); MASK: P^T = 0 unless query < L, the key row
// is valid and query >= key
template <bool MASK, int QC>
static __device__ __forceinline__ void
tc_dkv_p_ds(float pt[QC / 8][4], float dst[QC / 8][4], const float *Lt, const float *Dt, int q0,
            int t, int keyA, int keyB, bool okA, bool okB, int L, float scale, float sl2) {
#pragma unroll
    for (int j = 0; j < QC / 8; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int col = 8 * j + 2 * t + (e & 1), query = q0 + col;
            const bool valid =
                !MASK || (query < L && (e < 2 ? okA && query >= keyA : okB && query >= keyB));
            const float p = valid ? exp2f(pt[j][e] * sl2 - Lt[col]) : 0.0f;
            pt[j][e] = p;
            dst[j][e] = p * (dst[j][e] - Dt[col]) * scale;
        }
}

// forward: the Q fragments stay in registers; per 64-key tile S = Q K^T, the online softmax,
// O += P V
template <int D>
__global__ void __launch_bounds__(TC_THREADS, D > 96 ? 2 : 3)
    att_mma_fwd_kernel(float *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v,
                       const int32_t *cu, const int2 *tiles, const int *ntiles, int Hq, int Hkv,
                       float scale) {
    constexpr int LDH = D + 8, KD = D / 16, ND = D / 8, NK = TC_B / 8;
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv), HqD = Hq * D, HkvD = Hkv * D;
    const int2 tl = tiles[*ntiles - 1 - (int)blockIdx.x]; // the longest rows first
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)TC_B, L - i0), nkeys = i0 + nq;
    extern __shared__ float4 tc_smem[];
    bf16 *Qs = (bf16 *)tc_align(tc_smem); // (64, LDH)
    bf16 *Ks = Qs + TC_B * LDH;           // 2 x (64, LDH)
    bf16 *Vs = Ks + 2 * TC_B * LDH;       // 2 x (64, LDH)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;
    const int g = lane >> 2, t = lane & 3;
    const int rowA = i0 + r0 + g, rowB = rowA + 8; // the lane's two query rows (positions)
    const tc_lane ln = tc_lane_of(lane);

    const bf16 *kg = k + (size_t)base * HkvD + kvh * D, *vg = v + (size_t)base * HkvD + kvh * D;
    tc_load_async<D>(Qs, LDH, q + (size_t)(base + i0) * HqD + h * D, HqD, nq);
    tc_load_async<D>(Ks, LDH, kg, HkvD, min((int)TC_B, nkeys));
    tc_load_async<D>(Vs, LDH, vg, HkvD, min((int)TC_B, nkeys));
    tc_cp_commit();
    tc_cp_wait<0>();
    __syncthreads();
    uint32_t qf[KD][4];
#pragma unroll
    for (int kk = 0; kk < KD; kk++)
        tc_ldsm(qf[kk], Qs + (r0 + ln.a_row) * LDH + kk * 16 + ln.a_col);
    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float mA = -INFINITY, mB = -INFINITY, lA = 0.0f, lB = 0.0f;
    for (int kb = 0, buf = 0; kb < nkeys; kb += TC_B, buf ^= 1) {
        if (kb + TC_B < nkeys) { // prefetch the next tile into the other buffer
            const int nn = min((int)TC_B, nkeys - kb - TC_B);
            tc_load_async<D>(Ks + (buf ^ 1) * TC_B * LDH, LDH, kg + (size_t)(kb + TC_B) * HkvD,
                             HkvD, nn);
            tc_load_async<D>(Vs + (buf ^ 1) * TC_B * LDH, LDH, vg + (size_t)(kb + TC_B) * HkvD,
                             HkvD, nn);
            tc_cp_commit();
            tc_cp_wait<1>();
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads();          // this tile's copies are visible
        if (kb <= i0 + r0 + 15) { // warp-uniform: some key is at or before this warp's rows
            const bf16 *Kt = Ks + buf * TC_B * LDH, *Vt = Vs + buf * TC_B * LDH;
            float s[NK][4];
#pragma unroll
            for (int j = 0; j < NK; j++)
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < KD; kk++)
#pragma unroll
                for (int jj = 0; jj < NK / 2; jj++) {
                    uint32_t b[4];
                    tc_ldsm(b, Kt + (jj * 16 + ln.b_row) * LDH + kk * 16 + ln.b_col);
                    tc_mma16816(s[2 * jj], qf[kk], b);
                    tc_mma16816(s[2 * jj + 1], qf[kk], b + 2);
                }
            // mask (key <= row, key < nkeys; only where the tile reaches past the warp's first
            // row or the last key), scale, the rows' running max
            float mxA = -INFINITY, mxB = -INFINITY;
            if (kb + TC_B - 1 <= i0 + r0 && kb + TC_B <= nkeys)
                tc_fwd_mask<false>(s, kb, t, rowA, rowB, nkeys, scale * TC_LOG2E, mxA, mxB);
            else
                tc_fwd_mask<true>(s, kb, t, rowA, rowB, nkeys, scale * TC_LOG2E, mxA, mxB);
            mxA = fmaxf(mxA, __shfl_xor_sync(CU_FULL_MASK, mxA, 1));
            mxA = fmaxf(mxA, __shfl_xor_sync(CU_FULL_MASK, mxA, 2));
            mxB = fmaxf(mxB, __shfl_xor_sync(CU_FULL_MASK, mxB, 1));
            mxB = fmaxf(mxB, __shfl_xor_sync(CU_FULL_MASK, mxB, 2));
            // the first tile holds key 0, valid for every row: m is finite from then on
            const float nA = fmaxf(mA, mxA), nB = fmaxf(mB, mxB);
            const float alA = exp2f(mA - nA), alB = exp2f(mB - nB);
            mA = nA, mB = nB;
            float sA = 0.0f, sB = 0.0f;
#pragma unroll
            for (int j = 0; j < NK; j++) {
                s[j][0] = exp2f(s[j][0] - nA), s[j][1] = exp2f(s[j][1] - nA);
                s[j][2] = exp2f(s[j][2] - nB), s[j][3] = exp2f(s[j][3] - nB);
                sA += s[j][0] + s[j][1];
                sB += s[j][2] + s[j][3];
            }
            sA += __shfl_xor_sync(CU_FULL_MASK, sA, 1);
            sA += __shfl_xor_sync(CU_FULL_MASK, sA, 2);
            sB += __shfl_xor_sync(CU_FULL_MASK, sB, 1);
            sB += __shfl_xor_sync(CU_FULL_MASK, sB, 2);
            lA = lA * alA + sA, lB = lB * alB + sB;
#pragma unroll
            for (int n = 0; n < ND; n++) {
                o[n][0] *= alA, o[n][1] *= alA;
                o[n][2] *= alB, o[n][3] *= alB;
            }
            tc_mma_accumulate<D, TC_B>(o, s, Vt, ln); // O += P V
        }
        __syncthreads(); // every warp is done with this buffer before it is refilled
    }
    const float invA = 1.0f / lA, invB = 1.0f / lB;
    const bool okA = r0 + g < nq, okB = r0 + g + 8 < nq;
    float *oA = out + (size_t)(base + rowA) * HqD + h * D + 2 * t;
    float *oB = out + (size_t)(base + rowB) * HqD + h * D + 2 * t;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (okA) oA[8 * n] = o[n][0] * invA, oA[8 * n + 1] = o[n][1] * invA;
        if (okB) oB[8 * n] = o[n][2] * invB, oB[8 * n + 1] = o[n][3] * invB;
    }
    if (lse && t == 0) {
        if (okA) lse[(size_t)(base + rowA) * Hq + h] = mA * TC_LN2 + logf(lA);
        if (okB) lse[(size_t)(base + rowB) * Hq + h] = mB * TC_LN2 + logf(lB);
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

// dQ over query tiles: per 64-key tile S = Q K^T and dP = dO V^T (Q and dO read from shared
// memory: kept in registers they would spill at D = 128), dS = P (dP - Di) scale in place,
// dQ += dS K
template <int D>
__global__ void __launch_bounds__(TC_THREADS, D > 96 ? 2 : 3)
    att_mma_bwd_dq_kernel(float *dq, int ldq, const bf16 *dout, const bf16 *q, const bf16 *k,
                          const bf16 *v, const float *lse, const float *Di, const int32_t *cu,
                          const int2 *tiles, const int *ntiles, int Hq, int Hkv, float scale) {
    constexpr int LDH = D + 8, ND = D / 8, NK = TC_B / 8;
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, kvh = h / (Hq / Hkv), HqD = Hq * D, HkvD = Hkv * D;
    const int2 tl = tiles[*ntiles - 1 - (int)blockIdx.x]; // the longest rows first
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, i0 = tl.y;
    const int nq = min((int)TC_B, L - i0), nkeys = i0 + nq;
    extern __shared__ float4 tc_smem[];
    bf16 *Qs = (bf16 *)tc_align(tc_smem); // (64, LDH)
    bf16 *dOs = Qs + TC_B * LDH;          // (64, LDH)
    bf16 *Ks = dOs + TC_B * LDH;          // 2 x (64, LDH)
    bf16 *Vs = Ks + 2 * TC_B * LDH;       // 2 x (64, LDH)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;
    const int g = lane >> 2, t = lane & 3;
    const int rowA = i0 + r0 + g, rowB = rowA + 8; // sequence positions
    const bool okA = r0 + g < nq, okB = r0 + g + 8 < nq;
    const tc_lane ln = tc_lane_of(lane);

    const bf16 *kg = k + (size_t)base * HkvD + kvh * D, *vg = v + (size_t)base * HkvD + kvh * D;
    tc_load_async<D>(Qs, LDH, q + (size_t)(base + i0) * HqD + h * D, HqD, nq);
    tc_load_async<D>(dOs, LDH, dout + (size_t)(base + i0) * HqD + h * D, HqD, nq);
    tc_load_async<D>(Ks, LDH, kg, HkvD, min((int)TC_B, nkeys));
    tc_load_async<D>(Vs, LDH, vg, HkvD, min((int)TC_B, nkeys));
    tc_cp_commit();
    const float lsA = okA ? lse[(size_t)(base + rowA) * Hq + h] * TC_LOG2E : 0.0f;
    const float lsB = okB ? lse[(size_t)(base + rowB) * Hq + h] * TC_LOG2E : 0.0f;
    const float diA = okA ? Di[(size_t)(base + rowA) * Hq + h] : 0.0f;
    const float diB = okB ? Di[(size_t)(base + rowB) * Hq + h] : 0.0f;
    float acc[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
        acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
    for (int kb = 0, buf = 0; kb < nkeys; kb += TC_B, buf ^= 1) {
        if (kb + TC_B < nkeys) {
            const int nn = min((int)TC_B, nkeys - kb - TC_B);
            tc_load_async<D>(Ks + (buf ^ 1) * TC_B * LDH, LDH, kg + (size_t)(kb + TC_B) * HkvD,
                             HkvD, nn);
            tc_load_async<D>(Vs + (buf ^ 1) * TC_B * LDH, LDH, vg + (size_t)(kb + TC_B) * HkvD,
                             HkvD, nn);
            tc_cp_commit();
            tc_cp_wait<1>();
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads();
        if (kb <= i0 + r0 + 15) { // warp-uniform
            const bf16 *Kt = Ks + buf * TC_B * LDH, *Vt = Vs + buf * TC_B * LDH;
            float sc[NK][4], dp[NK][4];
            tc_mma_scores<D, TC_B>(sc, Qs + r0 * LDH, Kt, ln);
            tc_mma_scores<D, TC_B>(dp, dOs + r0 * LDH, Vt, ln);
            const tc_rows rw = {rowA, rowB, okA, okB, lsA, lsB, diA, diB};
            if (r0 + 15 < nq && kb + TC_B - 1 <= i0 + r0) // every key at or before every row
                tc_dq_ds<false>(sc, dp, kb + 2 * t, rw, scale, scale * TC_LOG2E);
            else
                tc_dq_ds<true>(sc, dp, kb + 2 * t, rw, scale, scale * TC_LOG2E);
            tc_mma_accumulate<D, TC_B>(acc, sc, Kt, ln); // dQ += dS K
        }
        __syncthreads();
    }
    float *oA = dq + (size_t)(base + rowA) * ldq + h * D + 2 * t;
    float *oB = dq + (size_t)(base + rowB) * ldq + h * D + 2 * t;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (okA) oA[8 * n] = acc[n][0], oA[8 * n + 1] = acc[n][1];
        if (okB) oB[8 * n] = acc[n][2], oB[8 * n + 1] = acc[n][3];
    }
}

// a query tile of the dK/dV kernel (positions qb .. qb + 63 of the sequence at base): Q and dO
// rows by cp.async (uncommitted), their lse (times log2 e) and Di by plain stores; rows past L
// are zeros
template <int D>
static __device__ __forceinline__ void
tc_dkv_load_queries(bf16 *Qt, bf16 *dOt, float *Lt, float *Dt, const bf16 *qg, const bf16 *dg,
                    const float *lse, const float *Di, int base, int qb, int L, int Hq, int h) {
    const int nq = min((int)TC_B, L - qb), HqD = Hq * D;
    tc_load_async<D>(Qt, D + 8, qg + (size_t)qb * HqD, HqD, nq);
    tc_load_async<D>(dOt, D + 8, dg + (size_t)qb * HqD, HqD, nq);
    for (int i = threadIdx.x; i < TC_B; i += TC_THREADS) {
        const size_t row = (size_t)(base + qb + (i < nq ? i : 0));
        Lt[i] = i < nq ? lse[row * Hq + h] * TC_LOG2E : 0.0f;
        Dt[i] = i < nq ? Di[row * Hq + h] : 0.0f;
    }
}

// dK, dV of query head blockIdx.y's share over key tiles (outputs as att_tc_bwd_dkv_kernel's):
// per query tile at or after the keys S^T = K Q^T, dP^T = V dO^T, P^T and dS^T in place,
// dV += P^T dO, dK += dS^T Q; query tiles, their lse and Di double-buffered
template <int D>
__global__ void __launch_bounds__(TC_THREADS, 2)
    att_mma_bwd_dkv_kernel(float *ok_base, float *ov_base, int ldok, int ldov, const bf16 *dout,
                           const bf16 *q, const bf16 *k, const bf16 *v, const float *lse,
                           const float *Di, const int32_t *cu, const int2 *tiles, const int *ntiles,
                           int Hq, int Hkv, float scale) {
    constexpr int LDH = D + 8, ND = D / 8, QC = D > 96 ? 32 : TC_B;
    if ((int)blockIdx.x >= *ntiles) return;
    const int h = blockIdx.y, G = Hq / Hkv, kvh = h / G, HqD = Hq * D, HkvD = Hkv * D;
    const int ocol = G == 1 ? kvh * D : h * D;
    const int2 tl = tiles[blockIdx.x];
    const int base = cu[tl.x], L = cu[tl.x + 1] - base, j0 = tl.y;
    const int nk = min((int)TC_B, L - j0);
    extern __shared__ float4 tc_smem[];
    bf16 *Kt = (bf16 *)tc_align(tc_smem);        // (64, LDH) this block's keys
    bf16 *Vt = Kt + TC_B * LDH;                  // (64, LDH)
    bf16 *Qs = Vt + TC_B * LDH;                  // 2 x (64, LDH) query tiles
    bf16 *dOs = Qs + 2 * TC_B * LDH;             // 2 x (64, LDH)
    float *Ls = (float *)(dOs + 2 * TC_B * LDH); // 2 x 64 lse of the query tile
    float *Ds = Ls + 2 * TC_B;                   // 2 x 64 Di
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, r0 = warp * 16;
    const int g = lane >> 2, t = lane & 3;
    const int keyA = j0 + r0 + g, keyB = keyA + 8; // sequence positions
    const bool okA = r0 + g < nk, okB = r0 + g + 8 < nk;
    const tc_lane ln = tc_lane_of(lane);

    const bf16 *qg = q + (size_t)base * HqD + h * D, *dg = dout + (size_t)base * HqD + h * D;
    tc_load_async<D>(Kt, LDH, k + (size_t)(base + j0) * HkvD + kvh * D, HkvD, nk);
    tc_load_async<D>(Vt, LDH, v + (size_t)(base + j0) * HkvD + kvh * D, HkvD, nk);
    tc_dkv_load_queries<D>(Qs, dOs, Ls, Ds, qg, dg, lse, Di, base, j0, L, Hq, h);
    tc_cp_commit();
    float dk[ND][4], dv[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++) {
        dk[n][0] = dk[n][1] = dk[n][2] = dk[n][3] = 0.0f;
        dv[n][0] = dv[n][1] = dv[n][2] = dv[n][3] = 0.0f;
    }
    for (int qb = j0, buf = 0; qb < L;
         qb += TC_B, buf ^= 1) { // rows before j0 see none of the keys
        if (qb + TC_B < L) {     // prefetch the next query tile into the other buffer
            const int o = buf ^ 1;
            tc_dkv_load_queries<D>(Qs + o * TC_B * LDH, dOs + o * TC_B * LDH, Ls + o * TC_B,
                                   Ds + o * TC_B, qg, dg, lse, Di, base, qb + TC_B, L, Hq, h);
            tc_cp_commit();
            tc_cp_wait<1>();
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads();
        // QC query columns at a time: 64 would spill at D > 96 (dK, dV and both score blocks)
#pragma unroll 1
        for (int c0 = 0; c0 < TC_B; c0 += QC) {
            const bf16 *Qt = Qs + (buf * TC_B + c0) * LDH, *dOt = dOs + (buf * TC_B + c0) * LDH;
            const float *Lt = Ls + buf * TC_B + c0, *Dt = Ds + buf * TC_B + c0;
            float pt[QC / 8][4], dst[QC / 8][4];
            tc_mma_scores<D, QC>(pt, Kt + r0 * LDH, Qt, ln);
            tc_mma_scores<D, QC>(dst, Vt + r0 * LDH, dOt, ln);
            // every query of the block after every key of the warp, none past the end: no mask
            if (r0 + 15 < nk && qb + c0 >= j0 + r0 + 15 && qb + c0 + QC <= L)
                tc_dkv_p_ds<false, QC>(pt, dst, Lt, Dt, qb + c0, t, keyA, keyB, okA, okB, L, scale,
                                       scale * TC_LOG2E);
            else
                tc_dkv_p_ds<true, QC>(pt, dst, Lt, Dt, qb + c0, t, keyA, keyB, okA, okB, L, scale,
                                      scale * TC_LOG2E);
            tc_mma_accumulate<D, QC>(dv, pt, dOt, ln); // dV += P^T dO
            tc_mma_accumulate<D, QC>(dk, dst, Qt, ln); // dK += dS^T Q
        }
        __syncthreads();
    }
    float *kA = ok_base + (size_t)(base + keyA) * ldok + ocol + 2 * t;
    float *kB = ok_base + (size_t)(base + keyB) * ldok + ocol + 2 * t;
    float *vA = ov_base + (size_t)(base + keyA) * ldov + ocol + 2 * t;
    float *vB = ov_base + (size_t)(base + keyB) * ldov + ocol + 2 * t;
#pragma unroll
    for (int n = 0; n < ND; n++) {
        if (okA) kA[8 * n] = dk[n][0], kA[8 * n + 1] = dk[n][1];
        if (okA) vA[8 * n] = dv[n][0], vA[8 * n + 1] = dv[n][1];
        if (okB) kB[8 * n] = dk[n][2], kB[8 * n + 1] = dk[n][3];
        if (okB) vB[8 * n] = dv[n][2], vB[8 * n + 1] = dv[n][3];
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
static size_t tc_mma_fwd_smem(int D) {
    return 32 + (size_t)5 * TC_B * tc_ldh(D) * 2;
}
static size_t tc_mma_dq_smem(int D) {
    return 32 + (size_t)6 * TC_B * tc_ldh(D) * 2;
}
static size_t tc_mma_dkv_smem(int D) {
    return 32 + (size_t)6 * TC_B * tc_ldh(D) * 2 + (size_t)4 * TC_B * 4;
}
static size_t tc_dq_smem(int D) {
    return 32 + (size_t)4 * TC_B * tc_ldh(D) * 2 + (size_t)TC_B * tc_ldf(D) * 4 +
           (size_t)2 * TC_B * TC_LDS * 4 + (size_t)TC_B * TC_LDP * 2;
}
static size_t tc_dkv_smem(int D) {
    return 32 + (size_t)4 * TC_B * tc_ldh(D) * 2 + (size_t)2 * TC_B * tc_ldf(D) * 4 +
           (size_t)2 * TC_B * TC_LDS * 4 + (size_t)2 * TC_B * TC_LDP * 2 + (size_t)2 * TC_B * 4;
}

// a call for each head size the mma kernels take (D % 16 == 0, D <= TC_MAXD): `call` sees DV
#define TC_DISPATCH_D(D, call)                                                                     \
    do {                                                                                           \
        switch (D) {                                                                               \
        case 16: {                                                                                 \
            constexpr int DV = 16;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 32: {                                                                                 \
            constexpr int DV = 32;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 48: {                                                                                 \
            constexpr int DV = 48;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 64: {                                                                                 \
            constexpr int DV = 64;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 80: {                                                                                 \
            constexpr int DV = 80;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 96: {                                                                                 \
            constexpr int DV = 96;                                                                 \
            call;                                                                                  \
        } break;                                                                                   \
        case 112: {                                                                                \
            constexpr int DV = 112;                                                                \
            call;                                                                                  \
        } break;                                                                                   \
        default: {                                                                                 \
            constexpr int DV = 128;                                                                \
            call;                                                                                  \
        } break;                                                                                   \
        }                                                                                          \
    } while (0)

template <int D> static int tc_mma_init(ops_ctx *c) {
    CU_CHECK(cudaFuncSetAttribute(att_mma_fwd_kernel<D>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)tc_mma_fwd_smem(D)));
    CU_CHECK(cudaFuncSetAttribute(att_mma_bwd_dq_kernel<D>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)tc_mma_dq_smem(D)));
    CU_CHECK(cudaFuncSetAttribute(att_mma_bwd_dkv_kernel<D>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  (int)tc_mma_dkv_smem(D)));
    return 0;
}

int cuda_attention_tc_init(ops_ctx *c) {
    const int optin = cu_impl(c)->smem_optin;
    const char *env = getenv("CHORD_CUDA_ATTENTION");
    cu_impl(c)->attention_tc_wmma = env && strcmp(env, "wmma") == 0;
    for (int D = 16; D <= TC_MAXD; D += 16)
        if (tc_mma_dkv_smem(D) <= (size_t)optin) {
            int rc = 0;
            TC_DISPATCH_D(D, rc = tc_mma_init<DV>(c));
            if (rc != 0) return -1;
        }
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
    if (!im->attention_tc_wmma) {
        TC_DISPATCH_D(
            D, (att_mma_fwd_kernel<DV><<<grid, TC_THREADS, tc_mma_fwd_smem(DV), im->stream>>>(
                   out, lse, b[0], b[1], b[2], cu_seqlens, tiles, ntiles, Hq, Hkv, scale)));
        CU_LAUNCHED("att_mma_fwd_kernel");
        return 0;
    }
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
    if (!im->attention_tc_wmma) {
        TC_DISPATCH_D(
            D, (att_mma_bwd_dq_kernel<DV><<<grid, TC_THREADS, tc_mma_dq_smem(DV), im->stream>>>(
                   dq, ldq, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles, Hq, Hkv,
                   scale)));
        CU_LAUNCHED("att_mma_bwd_dq_kernel");
        TC_DISPATCH_D(
            D, (att_mma_bwd_dkv_kernel<DV><<<grid, TC_THREADS, tc_mma_dkv_smem(DV), im->stream>>>(
                   ok, ov, ldok, ldov, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles,
                   Hq, Hkv, scale)));
        CU_LAUNCHED("att_mma_bwd_dkv_kernel");
    } else {
        att_tc_bwd_dq_kernel<<<grid, TC_THREADS, tc_dq_smem(D), im->stream>>>(
            dq, ldq, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles, Hq, Hkv, D, scale);
        CU_LAUNCHED("att_tc_bwd_dq_kernel");
        att_tc_bwd_dkv_kernel<<<grid, TC_THREADS, tc_dkv_smem(D), im->stream>>>(
            ok, ov, ldok, ldov, b[3], b[0], b[1], b[2], lse, Di, cu_seqlens, tiles, ntiles, Hq, Hkv,
            D, scale);
        CU_LAUNCHED("att_tc_bwd_dkv_kernel");
    }
    if (shared) {
        att_tc_sum_heads_kernel<<<cu_blocks((size_t)N * Hkv * D, 256, im->num_sms), 256, 0,
                                  im->stream>>>(dk, ldk, dv, ldv, ok, ov, N, Hq, Hkv, D);
        CU_LAUNCHED("att_tc_sum_heads_kernel");
    }
    return 0;
}
