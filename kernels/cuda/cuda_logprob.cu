// cuda_logprob.cu — per-token log-prob / entropy over the vocabulary (forward, backward) and
// sampling (greedy, temperature, top-p) on the GPU (kernels/ops.h). One block per row.
//
// Forward reads a row once: each thread keeps an online (max m, sum s = sum e, w = sum e (z - m))
// with e = exp(z - m), and the block merges them in double; lse = m + log s and the entropy
// H = log s - w / s (no cancellation of lse - E[z] for large logits), as the CPU backend does.
// Backward recomputes p = exp(z - lse) from the saved lse; with an entropy gradient it first
// reduces H = -sum p log p (a read-only pass), then writes — never a stored softmax, and dlogits
// may alias logits (each element is read by the thread that writes it).
//
// Sampling: the full tempered log-sum-exp, then
//   greedy: arg max (ties: lowest index);
//   temperature only: inverse CDF in index order — contiguous per-thread chunks, a block scan of
//     the chunk masses, the first index whose cumulative mass exceeds u * total;
//   top-p: the nucleus threshold by a 4-pass radix select (8 bits at a time, from the top) over
//     the float bits of p (non-negative, so bit order is value order), on histograms of
//     probability mass; ties at the threshold are taken lowest index first, as the CPU backend
//     does; then the same inverse CDF walk restricted to the nucleus.
// The nucleus and its renormalised distribution equal the CPU backend's; the map from a uniform
// to a token inside it is in index order here (the CPU walks its partition order), so the same
// uniform can pick a different token of the same distribution. logp is the full tempered
// log-softmax of the chosen token (greedy: temperature 1), as ops.h specifies.
#include "kernels/cuda/cuda_internal.cuh"
#include "kernels/ops_math.h"

// The sampler and logprob_forward share the thread count and the reduction, so on the same logits
// they compute the same lse bit for bit (the rollout log-prob equals the trainer's).
enum { LP_THREADS = 512, SAMPLE_THREADS = LP_THREADS };

// z * it - lse without contraction into an FMA (the CPU backend's rounding, and one rounding
// everywhere in this file: the sampler compares probabilities for equality)
static __device__ __forceinline__ float lp_shift(float x, float it, float L) {
    return __fsub_rn(__fmul_rn(x, it), L);
}

// (m, s, w) of a set of values: max, sum of exp(z - m), sum of exp(z - m) (z - m)
struct lp_stat {
    float m;
    double s, w;
};

static __device__ __forceinline__ lp_stat lp_merge(lp_stat a, lp_stat b) {
    if (b.s == 0.0) return a;
    if (a.s == 0.0) return b;
    float M = fmaxf(a.m, b.m);
    double da = (double)a.m - (double)M, db = (double)b.m - (double)M;
    double ea = exp(da), eb = exp(db);
    lp_stat r;
    r.m = M;
    r.s = ea * a.s + eb * b.s;
    r.w = ea * (a.w + da * a.s) + eb * (b.w + db * b.s);
    return r;
}

// every thread of the block gets the merged statistic; sh holds 32 entries
static __device__ lp_stat lp_block_merge(lp_stat v, lp_stat *sh) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        lp_stat u;
        u.m = __shfl_xor_sync(CU_FULL_MASK, v.m, o);
        u.s = __shfl_xor_sync(CU_FULL_MASK, v.s, o);
        u.w = __shfl_xor_sync(CU_FULL_MASK, v.w, o);
        v = lp_merge(v, u);
    }
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    lp_stat r = sh[0];
    for (int i = 1; i < nw; i++)
        r = lp_merge(r, sh[i]);
    return r;
}

// a thread's statistic over x[j] * it for j = j0, j0 + step, ... < V (want_w: track w too)
static __device__ lp_stat lp_thread_stat(const float *x, int V, float it, int j0, int step,
                                         bool want_w) {
    float m = -INFINITY, s = 0.0f, w = 0.0f;
    for (int j = j0; j < V; j += step) {
        float z = __fmul_rn(x[j], it);
        if (z > m) {
            if (s > 0.0f) {
                float a = expf(m - z);
                w = a * (w + (m - z) * s);
                s *= a;
            }
            m = z;
        }
        if (m == -INFINITY) continue;
        float e = expf(z - m);
        if (e > 0.0f) {
            s += e;
            if (want_w) w = fmaf(e, z - m, w);
        }
    }
    lp_stat r;
    r.m = m;
    r.s = s;
    r.w = w;
    return r;
}

__global__ void __launch_bounds__(LP_THREADS)
    logprob_forward_kernel(float *logp, float *entropy, float *lse, const float *logits,
                           const int32_t *targets, int V, float it, unsigned int *flags) {
    __shared__ lp_stat sh[32];
    const int n = blockIdx.x;
    const float *x = logits + (size_t)n * V;
    lp_stat st = lp_thread_stat(x, V, it, threadIdx.x, blockDim.x, entropy != NULL);
    st = lp_block_merge(st, sh);
    if (threadIdx.x != 0) return;
    double ls = log(st.s);
    float L = (float)((double)st.m + ls);
    lse[n] = L;
    if (entropy) entropy[n] = st.s > 0.0 ? (float)(ls - st.w / st.s) : 0.0f;
    int t = targets[n];
    if (t >= V) {
        cu_raise(flags, CU_EFLAG_TARGET);
        logp[n] = 0.0f;
        return;
    }
    logp[n] = t >= 0 ? lp_shift(x[t], it, L) : 0.0f;
}

__global__ void __launch_bounds__(LP_THREADS)
    logprob_backward_kernel(float *dlogits, const float *dlogp, const float *dentropy,
                            const float *logits, const float *lse, const int32_t *targets, int V,
                            float it, unsigned int *flags) {
    __shared__ double sh[33];
    const int n = blockIdx.x;
    const float *x = logits + (size_t)n * V; // may alias g: each element is read, then written
    float *g = dlogits + (size_t)n * V;      // by the same thread
    const int t = targets[n];
    if (t < 0 || t >= V) {
        if (t >= V && threadIdx.x == 0) cu_raise(flags, CU_EFLAG_TARGET);
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            g[j] = 0.0f;
        return;
    }
    const float L = lse[n], dl = dlogp[n];
    const float de = dentropy ? dentropy[n] : 0.0f;
    if (de == 0.0f) { // block-uniform
        for (int j = threadIdx.x; j < V; j += blockDim.x) {
            float v = -dl * expf(lp_shift(x[j], it, L)) * it;
            g[j] = j == t ? v + dl * it : v;
        }
        return;
    }
    double hs = 0.0;
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float lp = lp_shift(x[j], it, L);
        float p = expf(lp);
        if (p > 0.0f) hs += (double)p * (double)lp;
    }
    const float H = (float)-cu_block_sum(hs, sh); // all reads of this pass precede any write
    for (int j = threadIdx.x; j < V; j += blockDim.x) {
        float lp = lp_shift(x[j], it, L);
        float p = expf(lp);
        float v = -p * (dl + de * (lp + H)) * it;
        g[j] = j == t ? v + dl * it : v;
    }
}

extern "C" int cuda_logprob_forward(ops_ctx *c, float *logp, float *entropy, float *lse,
                                    const float *logits, const int32_t *targets, int N, int V,
                                    float inv_temp) {
    CU_REQUIRE(N >= 0 && V > 0, "logprob_forward: bad shape N=%d V=%d", N, V);
    if (N == 0) return 0;
    CU_REQUIRE(logp && lse && logits && targets, "logprob_forward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    logprob_forward_kernel<<<N, LP_THREADS, 0, im->stream>>>(logp, entropy, lse, logits, targets, V,
                                                             inv_temp, im->flags_dev);
    CU_LAUNCHED("logprob_forward_kernel");
    return 0;
}

extern "C" int cuda_logprob_backward(ops_ctx *c, float *dlogits, const float *dlogp,
                                     const float *dentropy, const float *logits, const float *lse,
                                     const int32_t *targets, int N, int V, float inv_temp) {
    CU_REQUIRE(N >= 0 && V > 0, "logprob_backward: bad shape N=%d V=%d", N, V);
    if (N == 0) return 0;
    CU_REQUIRE(dlogits && dlogp && logits && lse && targets, "logprob_backward: NULL buffer");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    logprob_backward_kernel<<<N, LP_THREADS, 0, im->stream>>>(dlogits, dlogp, dentropy, logits, lse,
                                                              targets, V, inv_temp, im->flags_dev);
    CU_LAUNCHED("logprob_backward_kernel");
    return 0;
}

// ---- sampling ----

// (value, index) arg max: larger value, then lower index
static __device__ __forceinline__ void amax_merge(float &v, int &i, float v2, int i2) {
    if (v2 > v || (v2 == v && i2 < i)) {
        v = v2;
        i = i2;
    }
}

enum { SAMPLE_WARPS = SAMPLE_THREADS / 32 };

struct sample_shared {
    double dsh[33];
    int ish[33];
    lp_stat st[32];
    double hist[256];
    int cnt[256];
    float wmass[SAMPLE_WARPS][256]; // per-warp histograms of one radix pass
    int wcnt[SAMPLE_WARPS][256];
    int sel_digit;
    double sel_above;
    int besti[32];
    float bestv[32];
};

// the first index j of the chunk whose running mass (from `start`) exceeds r with p > 0, or
// INT_MAX; *last_pos receives the last index with p > 0 (or -1). member(j, p) filters the
// nucleus; tie ranks are tracked by the caller's functor.
template <typename M>
static __device__ int walk_chunk(const float *x, float it, float L, int j0, int j1, double start,
                                 double r, M &member, int *last_pos) {
    double cum = start;
    int found = 0x7fffffff;
    *last_pos = -1;
    for (int j = j0; j < j1; j++) {
        float p = expf(lp_shift(x[j], it, L));
        if (!member(j, p)) continue;
        cum += (double)p;
        if (p > 0.0f) *last_pos = j;
        if (cum > r && p > 0.0f) {
            found = j;
            break;
        }
    }
    return found;
}

struct member_all {
    __device__ bool operator()(int, float) { return true; }
};

// p > thr, or p == thr among the first k ties in index order (rank counted from tie_base)
struct member_nucleus {
    float thr;
    int k, rank;
    __device__ bool operator()(int, float p) {
        if (p > thr) return true;
        if (p == thr) return rank++ < k;
        return false;
    }
};

__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(int32_t *tok_out, float *logp_out, const float *logits, int V, float temperature,
                  float top_p, const float *uniforms, unsigned int *flags) {
    __shared__ sample_shared sh;
    const int b = blockIdx.x, tid = threadIdx.x, T = blockDim.x;
    const float *x = logits + (size_t)b * V;
    const bool greedy = !(temperature > 0.0f);
    const bool use_top_p = !greedy && top_p > 0.0f && top_p < 1.0f;
    const float it = greedy ? 1.0f : 1.0f / temperature;

    lp_stat st = lp_block_merge(lp_thread_stat(x, V, it, tid, T, false), sh.st);
    const float L = (float)((double)st.m + log(st.s));
    if (!isfinite(L)) {
        if (tid == 0) {
            cu_raise(flags, CU_EFLAG_NONFINITE);
            tok_out[b] = 0;
            logp_out[b] = -INFINITY;
        }
        return;
    }
    if (greedy) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int j = tid; j < V; j += T)
            amax_merge(bv, bi, x[j], j);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1)
            amax_merge(bv, bi, __shfl_xor_sync(CU_FULL_MASK, bv, o),
                       __shfl_xor_sync(CU_FULL_MASK, bi, o));
        if ((tid & 31) == 0) {
            sh.bestv[tid >> 5] = bv;
            sh.besti[tid >> 5] = bi;
        }
        __syncthreads();
        if (tid == 0) {
            for (int w = 1; w < T / 32; w++)
                amax_merge(bv, bi, sh.bestv[w], sh.besti[w]);
            const int tok = bi == 0x7fffffff ? 0 : bi; // no comparable value: token 0
            tok_out[b] = tok;
            logp_out[b] = lp_shift(x[tok], 1.0f, L);
        }
        return;
    }
    double u = uniforms[b];
    if (u < 0.0) u = 0.0;
    if (u >= 1.0) u = 0.99999999;
    // contiguous chunks for the index-order walks
    const int chunk = (V + T - 1) / T;
    const int j0 = min(V, tid * chunk), j1 = min(V, j0 + chunk);

    float thr = -1.0f; // nucleus threshold (p > thr always true when no top-p)
    int k_ties = 0;
    if (use_top_p) {
        // total mass, then the radix select of the threshold
        double tot = 0.0;
        for (int j = tid; j < V; j += T)
            tot += (double)expf(lp_shift(x[j], it, L));
        tot = cu_block_sum(tot, sh.dsh);
        const double need = (double)top_p * tot;
        unsigned int prefix = 0, mask = 0;
        double above = 0.0; // mass strictly above the current prefix range
        for (int shift = 24; shift >= 0; shift -= 8) {
            // Per-warp histograms: no shared atomics across warps. Where a whole warp's lanes
            // share one digit (probabilities of a flat vocabulary share their top bits) the warp
            // adds them first; otherwise each lane adds its own, rarely on the same bin. (One
            // histogram for the block serialised on a few bins: 3.2 ms a row at V = 152k on an
            // H200; a warp loop over its distinct digits still took 2.3 ms.) Every lane takes the
            // same number of turns; the warps' float bins merge in double below.
            float *wm = sh.wmass[tid >> 5];
            int *wc = sh.wcnt[tid >> 5];
            for (int i = tid; i < SAMPLE_WARPS * 256; i += T) {
                (&sh.wmass[0][0])[i] = 0.0f;
                (&sh.wcnt[0][0])[i] = 0;
            }
            __syncthreads();
            for (int j0w = 0; j0w < V; j0w += T) {
                const int j = j0w + tid;
                float p = 0.0f;
                int dgt = -1;
                if (j < V) {
                    p = expf(lp_shift(x[j], it, L));
                    const unsigned int bits = __float_as_uint(p);
                    if ((bits & mask) == prefix) dgt = (int)((bits >> shift) & 255u);
                }
                const int d0 = __shfl_sync(CU_FULL_MASK, dgt, 0);
                if (__all_sync(CU_FULL_MASK, dgt == d0)) {
                    const float sum = cu_warp_sum(p);
                    if (d0 >= 0 && (tid & 31) == 0) {
                        atomicAdd(&wm[d0], sum);
                        atomicAdd(&wc[d0], 32);
                    }
                } else if (dgt >= 0) {
                    atomicAdd(&wm[dgt], p);
                    atomicAdd(&wc[dgt], 1);
                }
            }
            __syncthreads();
            for (int i = tid; i < 256; i += T) {
                double mass = 0.0;
                int cnt = 0;
                for (int w = 0; w < SAMPLE_WARPS; w++) {
                    mass += (double)sh.wmass[w][i];
                    cnt += sh.wcnt[w][i];
                }
                sh.hist[i] = mass;
                sh.cnt[i] = cnt;
            }
            __syncthreads();
            if (tid == 0) {
                double cum = above;
                int sel = -1, lowest = -1;
                for (int dgt = 255; dgt >= 0; dgt--) {
                    if (sh.cnt[dgt] == 0) continue;
                    lowest = dgt;
                    if (cum + sh.hist[dgt] >= need) {
                        sel = dgt;
                        break;
                    }
                    cum += sh.hist[dgt];
                }
                if (sel < 0) { // rounding left need unreached: take everything down to the lowest
                    sel = lowest;
                    cum -= sh.hist[lowest];
                }
                sh.sel_digit = sel;
                sh.sel_above = cum;
            }
            __syncthreads();
            prefix |= (unsigned int)sh.sel_digit << shift;
            mask |= 255u << shift;
            above = sh.sel_above;
        }
        thr = __uint_as_float(prefix);
        const int ne = sh.cnt[sh.sel_digit]; // items equal to the threshold
        int k = thr > 0.0f ? (int)ceil((need - above) / (double)thr) : ne;
        if (k < 1) k = 1;
        if (k > ne) k = ne;
        k_ties = k;
    }
    // tie ranks: ties before this chunk
    int ties = 0;
    if (use_top_p)
        for (int j = j0; j < j1; j++)
            ties += expf(lp_shift(x[j], it, L)) == thr;
    int tie_total;
    const int tie_base = cu_block_scan_excl(ties, sh.ish, &tie_total);
    // member mass per chunk, then its block scan
    double mass = 0.0;
    if (use_top_p) {
        member_nucleus mem = {thr, k_ties, tie_base};
        for (int j = j0; j < j1; j++) {
            float p = expf(lp_shift(x[j], it, L));
            if (mem(j, p)) mass += (double)p;
        }
    } else {
        for (int j = j0; j < j1; j++)
            mass += (double)expf(lp_shift(x[j], it, L));
    }
    double total;
    const double start = cu_block_scan_excl(mass, sh.dsh, &total);
    const double r = u * total;
    int last = -1, found;
    if (use_top_p) {
        member_nucleus mem = {thr, k_ties, tie_base};
        found = walk_chunk(x, it, L, j0, j1, start, r, mem, &last);
    } else {
        member_all mem;
        found = walk_chunk(x, it, L, j0, j1, start, r, mem, &last);
    }
    // the first found index over the block, else the last member with p > 0
    int f = found, lp = last;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        f = min(f, __shfl_xor_sync(CU_FULL_MASK, f, o));
        lp = max(lp, __shfl_xor_sync(CU_FULL_MASK, lp, o));
    }
    __syncthreads();
    if ((tid & 31) == 0) {
        sh.ish[tid >> 5] = f;
        sh.besti[tid >> 5] = lp;
    }
    __syncthreads();
    if (tid == 0) {
        for (int w = 1; w < T / 32; w++) {
            f = min(f, sh.ish[w]);
            lp = max(lp, sh.besti[w]);
        }
        const int tok = f != 0x7fffffff ? f : (lp >= 0 ? lp : 0);
        tok_out[b] = tok;
        logp_out[b] = lp_shift(x[tok], it, L);
    }
}

extern "C" int cuda_sample(ops_ctx *c, int32_t *tokens_host, float *logp_host, const float *logits,
                           int B, int V, float temperature, float top_p,
                           const float *uniforms_host) {
    CU_REQUIRE(B >= 0 && V > 0, "sample: bad shape B=%d V=%d", B, V);
    if (B == 0) return 0;
    CU_REQUIRE(tokens_host && logits, "sample: NULL buffer");
    const bool greedy = !(temperature > 0.0f);
    CU_REQUIRE(greedy || uniforms_host, "sample: NULL uniforms");
    CU_ENTER();
    cuda_impl *im = cu_impl(c);
    // device: tokens (B int32), logp (B float), uniforms (B float)
    size_t bytes = (size_t)B * 3 * 4;
    char *dev = (char *)cu_scratch(c, bytes);
    char *host = (char *)cu_pinned(c, bytes);
    if (!dev || !host) return -1;
    int32_t *dtok = (int32_t *)dev;
    float *dlogp = (float *)(dev + (size_t)B * 4);
    float *duni = (float *)(dev + (size_t)B * 8);
    if (!greedy) {
        memcpy(host + (size_t)B * 8, uniforms_host, (size_t)B * sizeof(float));
        CU_CHECK(cudaMemcpyAsync(duni, host + (size_t)B * 8, (size_t)B * sizeof(float),
                                 cudaMemcpyHostToDevice, im->stream));
    }
    sample_kernel<<<B, SAMPLE_THREADS, 0, im->stream>>>(dtok, dlogp, logits, V, temperature, top_p,
                                                        duni, im->flags_dev);
    CU_LAUNCHED("sample_kernel");
    CU_CHECK(cudaMemcpyAsync(host, dev, (size_t)B * 8, cudaMemcpyDeviceToHost, im->stream));
    if (cu_sync_check(c, "sample") != 0) return -1;
    memcpy(tokens_host, host, (size_t)B * sizeof(int32_t));
    if (logp_host) memcpy(logp_host, host + (size_t)B * 4, (size_t)B * sizeof(float));
    return 0;
}
