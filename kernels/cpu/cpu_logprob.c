/* cpu_logprob.c — per-token log-prob / entropy of targets (forward, backward) and sampling.
 *
 * A row of V logits is read once: chunks of CH values are scaled by inv_temp into a local
 * buffer, the chunk maximum found, and exp(z - running max) summed (in double) with an online
 * rescale when the maximum grows. Entropy comes from the same pass:
 *   H = log s - sum e (z - m) / s,  s = sum e,  e = exp(z - m),
 * which avoids the cancellation of lse - E[z] when logits are large. */
#include <omp.h>
#include <stdlib.h>

#include "kernels/cpu/cpu_internal.h"
#include "kernels/cpu/cpu_vmath.h"

enum { CH = 2048 };

/* lse of z = x * it over a row; entropy of softmax(z) when ent != NULL */
static void row_stats(const float *restrict x, int V, float it, float *lse, float *ent) {
    float z[CH], e[CH];
    float m = -INFINITY;
    double s = 0.0, w = 0.0;
    for (int c0 = 0; c0 < V; c0 += CH) {
        int n = V - c0 < CH ? V - c0 : CH;
        for (int j = 0; j < n; j++)
            z[j] = x[c0 + j] * it;
        float cm = cpu_max_f(z, n);
        if (cm > m) {
            if (s > 0.0) {
                double a = exp((double)m - (double)cm);
                w = a * (w + ((double)m - (double)cm) * s);
                s *= a;
            }
            m = cm;
        }
        if (m == -INFINITY) continue;
        for (int j = 0; j < n; j++)
            z[j] -= m;
        cpu_exp_sub(e, z, 0.0f, n);
        s += cpu_sum_d(e, n);
        if (ent) w += cpu_dot_d(e, z, n);
    }
    double ls = log(s);
    *lse = (float)((double)m + ls);
    if (ent) *ent = s > 0.0 ? (float)(ls - w / s) : 0.0f;
}

int cpu_logprob_forward(ops_ctx *c, float *logp, float *entropy, float *lse, const float *logits,
                        const int32_t *targets, int N, int V, float inv_temp) {
    if (N < 0 || V <= 0) return cpu_fail(c, "logprob_forward: bad shape N=%d V=%d", N, V);
    if (N == 0) return 0;
    if (!logp || !lse || !logits || !targets) return cpu_fail(c, "logprob_forward: NULL buffer");
    for (int n = 0; n < N; n++)
        if (targets[n] >= V)
            return cpu_fail(c, "logprob_forward: target %d at row %d is outside V=%d", targets[n],
                            n, V);
    int nt = cpu_threads(c);
    if (nt > N) nt = N;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float L, H;
        row_stats(x, V, inv_temp, &L, entropy ? &H : NULL);
        lse[n] = L;
        if (entropy) entropy[n] = H;
        int t = targets[n];
        logp[n] = t >= 0 ? x[t] * inv_temp - L : 0.0f;
    }
    return 0;
}

int cpu_logprob_backward(ops_ctx *c, float *dlogits, const float *dlogp, const float *dentropy,
                         const float *logits, const float *lse, const int32_t *targets, int N,
                         int V, float inv_temp) {
    if (N < 0 || V <= 0) return cpu_fail(c, "logprob_backward: bad shape N=%d V=%d", N, V);
    if (N == 0) return 0;
    if (!dlogits || !dlogp || !logits || !lse || !targets)
        return cpu_fail(c, "logprob_backward: NULL buffer");
    for (int n = 0; n < N; n++)
        if (targets[n] >= V)
            return cpu_fail(c, "logprob_backward: target %d at row %d is outside V=%d", targets[n],
                            n, V);
    int nt = cpu_threads(c);
    if (nt > N) nt = N;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V; /* may alias g */
        float *g = dlogits + (size_t)n * V;
        int t = targets[n];
        if (t < 0) {
            memset(g, 0, (size_t)V * sizeof(float));
            continue;
        }
        const float L = lse[n], it = inv_temp, dl = dlogp[n];
        const float de = dentropy ? dentropy[n] : 0.0f;
        if (de == 0.0f) {
            /* dz = dl * (onehot - p) */
            for (int j = 0; j < V; j++)
                g[j] = -dl * cpu_expf(x[j] * it - L) * it;
        } else {
            /* pass 1: H = -sum p log p;  pass 2: dz = -p (dl + de (log p + H)).
             * Both read logits before writing the same chunk, so dlogits may alias logits. */
            double hs = 0.0;
            float lp[CH], pb[CH];
            for (int c0 = 0; c0 < V; c0 += CH) {
                int nn = V - c0 < CH ? V - c0 : CH;
                for (int j = 0; j < nn; j++)
                    lp[j] = x[c0 + j] * it - L;
                cpu_exp_sub(pb, lp, 0.0f, nn);
                hs += cpu_dot_d(pb, lp, nn);
            }
            const float H = (float)-hs;
            for (int c0 = 0; c0 < V; c0 += CH) {
                int nn = V - c0 < CH ? V - c0 : CH;
                for (int j = 0; j < nn; j++)
                    lp[j] = x[c0 + j] * it - L;
                cpu_exp_sub(pb, lp, 0.0f, nn);
                float *gc = g + c0;
                for (int j = 0; j < nn; j++)
                    gc[j] = -pb[j] * (dl + de * (lp[j] + H)) * it;
            }
        }
        g[t] += dl * it;
    }
    return 0;
}

/* ---- sampling ---- */

typedef struct {
    float p;
    int32_t i;
} pidx;

static void pswap(pidx *a, pidx *b) {
    pidx t = *a;
    *a = *b;
    *b = t;
}

static int cmp_idx(const void *a, const void *b) {
    const pidx *x = a, *y = b;
    return (x->i > y->i) - (x->i < y->i);
}

/* Reorders a[0..n) so that a[0..k) is the nucleus: the smallest set of the most probable
 * tokens (ties: lower index first) whose mass reaches `need`. Returns k (expected O(n)). */
static int nucleus(pidx *a, int n, double need) {
    int lo = 0, hi = n;
    double acc = 0.0; /* mass of a[0..lo), always < need */
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        float x = a[lo].p, y = a[mid].p, z = a[hi - 1].p;
        float pv = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
        /* 3-way partition: [lo,lt) > pv, [lt,i) == pv, [gt,hi) < pv */
        int lt = lo, i = lo, gt = hi;
        while (i < gt) {
            if (a[i].p > pv)
                pswap(&a[lt++], &a[i++]);
            else if (a[i].p < pv)
                pswap(&a[i], &a[--gt]);
            else
                i++;
        }
        double mg = 0.0;
        for (int j = lo; j < lt; j++)
            mg += a[j].p;
        if (acc + mg >= need) {
            hi = lt;
            continue;
        }
        acc += mg;
        int ne = i - lt;
        double me = (double)pv * ne;
        if (acc + me >= need) {
            qsort(a + lt, (size_t)ne, sizeof *a, cmp_idx);
            int k = pv > 0.0f ? (int)ceil((need - acc) / (double)pv) : ne;
            if (k < 1) k = 1;
            if (k > ne) k = ne;
            return lt + k;
        }
        acc += me;
        lo = i;
    }
    return lo;
}

/* Probabilities in [0, 1] bucketed by their float exponent and top 4 mantissa bits: a bucket
 * holds values within a factor 2^(1/16), and higher buckets hold strictly larger values. */
enum { NBUCKET = 2048, BUCKET_SHIFT = 19 };

static int bucket_of(float p) {
    uint32_t u;
    memcpy(&u, &p, sizeof u);
    u >>= BUCKET_SHIFT;
    return u < NBUCKET ? (int)u : NBUCKET - 1;
}

/* The nucleus of pr[0..V) (mass `need`) into buf[0..k), returns k: whole buckets from the top
 * while they fit, then an exact selection (nucleus) inside the boundary bucket only. */
static int top_p_select(pidx *buf, const float *pr, int V, double need, double *hmass,
                        int *hcount) {
    for (int b = 0; b < NBUCKET; b++) {
        hmass[b] = 0.0;
        hcount[b] = 0;
    }
    for (int j = 0; j < V; j++) {
        int b = bucket_of(pr[j]);
        hmass[b] += (double)pr[j];
        hcount[b]++;
    }
    double acc = 0.0;
    int bb = NBUCKET - 1;
    for (; bb > 0; bb--) {
        if (acc + hmass[bb] >= need) break;
        acc += hmass[bb];
    }
    /* tokens above the boundary bucket first (index order), then the boundary bucket */
    int k1 = 0;
    for (int b = bb + 1; b < NBUCKET; b++)
        k1 += hcount[b];
    int ia = 0, ib = k1;
    for (int j = 0; j < V; j++) {
        int b = bucket_of(pr[j]);
        if (b > bb) {
            buf[ia].p = pr[j];
            buf[ia++].i = j;
        } else if (b == bb) {
            buf[ib].p = pr[j];
            buf[ib++].i = j;
        }
    }
    if (need - acc <= 0.0) return k1 > 0 ? k1 : 1;
    return k1 + nucleus(buf + k1, ib - k1, need - acc);
}

int cpu_sample(ops_ctx *c, int32_t *tokens_host, float *logp_host, const float *logits, int B,
               int V, float temperature, float top_p, const float *uniforms_host) {
    if (B < 0 || V <= 0) return cpu_fail(c, "sample: bad shape B=%d V=%d", B, V);
    if (B == 0) return 0;
    if (!tokens_host || !logits) return cpu_fail(c, "sample: NULL buffer");
    int greedy = !(temperature > 0.0f);
    int use_top_p = !greedy && top_p > 0.0f && top_p < 1.0f;
    if (!greedy && !uniforms_host) return cpu_fail(c, "sample: NULL uniforms");
    int nt = cpu_threads(c);
    if (nt > B) nt = B;
    int fail = 0;
#pragma omp parallel num_threads(nt)
    {
        float *pr = greedy ? NULL : malloc((size_t)V * sizeof(float));
        pidx *buf = use_top_p ? malloc((size_t)V * sizeof(pidx)) : NULL;
        double *hmass = use_top_p ? malloc(NBUCKET * sizeof(double)) : NULL;
        int *hcount = use_top_p ? malloc(NBUCKET * sizeof(int)) : NULL;
        int ok = (greedy || pr) && (!use_top_p || (buf && hmass && hcount));
        if (!ok) {
#pragma omp atomic write
            fail = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < B; b++) {
            if (!ok) continue;
            const float *restrict x = logits + (size_t)b * V;
            float it = greedy ? 1.0f : 1.0f / temperature;
            float L;
            row_stats(x, V, it, &L, NULL);
            int tok = 0;
            if (greedy) {
                /* first index of the maximum */
                float mx = cpu_max_f(x, V);
                for (int j = 0; j < V; j++)
                    if (x[j] == mx) {
                        tok = j;
                        break;
                    }
            } else {
                double u = uniforms_host[b];
                if (u < 0.0) u = 0.0;
                if (u >= 1.0) u = 0.99999999;
                for (int j = 0; j < V; j++)
                    pr[j] = cpu_expf(x[j] * it - L);
                if (!use_top_p) {
                    double r = u * cpu_sum_d(pr, V), cum = 0.0;
                    tok = -1;
                    for (int j = 0; j < V; j++) {
                        if (pr[j] <= 0.0f) continue;
                        tok = j;
                        cum += (double)pr[j];
                        if (cum > r) break;
                    }
                    if (tok < 0) tok = 0;
                } else {
                    int k =
                        top_p_select(buf, pr, V, (double)top_p * cpu_sum_d(pr, V), hmass, hcount);
                    double mass = 0.0;
                    for (int j = 0; j < k; j++)
                        mass += (double)buf[j].p;
                    double r = u * mass, cum = 0.0;
                    tok = buf[k - 1].i;
                    for (int j = 0; j < k; j++) {
                        cum += (double)buf[j].p;
                        if (cum > r && buf[j].p > 0.0f) {
                            tok = buf[j].i;
                            break;
                        }
                    }
                }
            }
            tokens_host[b] = tok;
            if (logp_host) logp_host[b] = x[tok] * it - L;
        }
        free(pr);
        free(buf);
        free(hmass);
        free(hcount);
    }
    if (fail) return cpu_fail(c, "sample: out of memory");
    return 0;
}
