/* gpu_check.c — the CUDA backend against the CPU backend (kernels/ops.h), for a machine with an
 * NVIDIA GPU (tests/gpu/run.sh builds and runs it; docs/cuda.md).
 *
 * Checks (each one a row of the results table):
 *   - every op of ops.h on random inputs, run on both backends, compared with
 *     err = ||gpu - cpu||_2 / ||cpu||_2 per output tensor; bounds: 1e-4 for fp32 paths, 1e-2 for
 *     the bf16 tensor-core GEMM path; a non-finite value on either side never passes;
 *   - the bf16-weight ops (cast_bf16 bit for bit, matmul_*_bf16 to 1e-4: the same rounded
 *     products on both);
 *   - sampling: greedy tokens equal; tempered tokens land in the CPU's nucleus (computed here in
 *     double) and their log-probs equal the CPU's log-softmax at those tokens;
 *   - deferred device-side errors (a bad token id, a bad cu_seqlens) are reported by sync;
 *   - a full forward / backward / AdamW step (server/model/model.h) on both backends: per-token
 *     log-probs, loss, every gradient tensor, the gradient norm, the loss after the step, and
 *     prefill + decode logits — once with exact fp32 GEMMs (bound 1e-4) and once with bf16 GEMMs
 *     (bound 1e-2), and with bf16 weights (model.h precision, the GPU default) against the CPU
 *     with bf16 weights; for three small models (Qwen2, Qwen3 with q/k norm, Llama with biases) and a
 *     ~100M-parameter Qwen2-style model; and for the small models again with a shared prompt
 *     (model_batch.seg_parent: two responses continuing one prefix segment, grpo.share_prompt),
 *     and with a LoRA adapter of rank 4 on every projection (its gradients compared).
 * Benchmarks (GPU only; not pass/fail): training tokens/s and MFU against 989 TFLOP/s (dense bf16,
 * H100 SXM) for the ~100M config and a Qwen2.5-0.5B-shaped config at sequence length 1024, decode
 * tokens/s at batch 1 / 32 / 256 (both with bf16 weights, then the 0.5B again with float32
 * weights for the ratio), and GB/s of memory-bound kernels against the measured
 * device-to-device copy bandwidth.
 *
 * Output: a Markdown table and JSON (gpu_check.md, gpu_check.json) in --out DIR (default $OUT,
 * else the current directory), and the same table on stdout.
 * Exit: 0 every check passed, 1 a check failed, 2 bad usage, 77 no CUDA device (ctest SKIP).
 * Options: --out DIR, --no-bench (checks only), --no-step (skip the 100M step; the small models
 * still run), --quick (smaller benchmarks), --tiny-bench (the benchmark code on a small model and
 * small buffers: for the CPU emulator, tests/gpu/emu; its numbers mean nothing), --bench NAME (no
 * checks; only the benchmark NAME: bandwidth, train-100m, train-0.5b, train-0.5b-lora or
 * decode-0.5b), --profile B
 * (bracket one timed training step, and one decode step at batch B, with cudaProfilerStart/Stop,
 * for `ncu --profile-from-start off`: tests/gpu/profile.sh). */
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops_math.h"
#include "kernels/ops.h"
#include "server/model/config.h"
#include "server/model/model.h"

/* ---- results ---- */

enum { MAX_CHECKS = 512, MAX_BENCH = 64 };
#define TOL_FP32 1e-4
#define TOL_BF16 1e-2
#define PEAK_BF16_TFLOPS 989.0

typedef struct {
    char name[112];
    double err, tol;
    int pass;
    char note[160];
} check_rec;

typedef struct {
    char name[112];
    double value;
    char unit[24];
    char note[200];
} bench_rec;

static int profile_mode; /* --profile B: cudaProfilerStart/Stop around one training step and the
                          * decode step at batch B (B > 0) */

static check_rec checks[MAX_CHECKS];
static int nchecks, nfailed;
static bench_rec benches[MAX_BENCH];
static int nbench;

static void record(const char *name, double err, double tol, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void record(const char *name, double err, double tol, const char *fmt, ...) {
    if (nchecks >= MAX_CHECKS) return;
    check_rec *r = &checks[nchecks++];
    snprintf(r->name, sizeof r->name, "%s", name);
    r->err = err;
    r->tol = tol;
    r->pass = err <= tol; /* NaN never passes */
    r->note[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(r->note, sizeof r->note, fmt, ap);
        va_end(ap);
    }
    if (!r->pass) nfailed++;
    printf("%-4s %-58s err %-10.3g tol %-8.1g %s\n", r->pass ? "ok" : "FAIL", r->name, r->err,
           r->tol, r->note);
    fflush(stdout);
}

static void bench(const char *name, double value, const char *unit, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void bench(const char *name, double value, const char *unit, const char *fmt, ...) {
    if (nbench >= MAX_BENCH) return;
    bench_rec *b = &benches[nbench++];
    snprintf(b->name, sizeof b->name, "%s", name);
    b->value = value;
    snprintf(b->unit, sizeof b->unit, "%s", unit);
    b->note[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->note, sizeof b->note, fmt, ap);
        va_end(ap);
    }
    printf("bench %-50s %12.2f %-8s %s\n", b->name, value, unit, b->note);
    fflush(stdout);
}

/* ||g - c|| / ||c|| (absolute when c is all zero); NaN when either side has a non-finite value */
static double rel_err(const float *g, const float *c, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(g[i]) || !isfinite(c[i])) return NAN;
        double d = (double)g[i] - (double)c[i];
        num += d * d;
        den += (double)c[i] * (double)c[i];
    }
    return den > 0.0 ? sqrt(num / den) : sqrt(num);
}

/* the same with the denominator at least `floor` (for tensors whose exact value is ~0) */
static double rel_err_floor(const float *g, const float *c, size_t n, double floor) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(g[i]) || !isfinite(c[i])) return NAN;
        double d = (double)g[i] - (double)c[i];
        num += d * d;
        den += (double)c[i] * (double)c[i];
    }
    den = sqrt(den);
    return sqrt(num) / (den > floor ? den : floor);
}

/* ---- inputs ---- */

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static void seed(uint64_t s) {
    rng = s * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
}
static double urand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) / 9007199254740992.0;
}
static float *frand(size_t n, float a) {
    float *x = malloc((n ? n : 1) * sizeof *x);
    if (!x) {
        fprintf(stderr, "gpu_check: out of host memory\n");
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((urand() * 2.0 - 1.0) * a);
    return x;
}
static void *xmalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "gpu_check: out of host memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return p;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- both backends ---- */

static ops_ctx *CPU, *GPU;

/* a buffer on both backends */
typedef struct {
    void *c, *g;
    size_t bytes;
} dbuf;

/* NULL host: zero-filled (alloc zeroes) */
static dbuf dnew(size_t bytes, const void *host) {
    dbuf b = {ops_alloc(CPU, bytes), ops_alloc(GPU, bytes), bytes};
    if (!b.c || !b.g) {
        fprintf(stderr, "gpu_check: alloc of %zu bytes failed: cpu: %s / cuda: %s\n", bytes,
                ops_last_error(CPU), ops_last_error(GPU));
        exit(1);
    }
    if (host &&
        (ops_to_device(CPU, b.c, host, bytes) != 0 || ops_to_device(GPU, b.g, host, bytes) != 0)) {
        fprintf(stderr, "gpu_check: upload failed: %s / %s\n", ops_last_error(CPU),
                ops_last_error(GPU));
        exit(1);
    }
    return b;
}
static dbuf dnewf(size_t n, const float *host) {
    return dnew(n * sizeof(float), host);
}
static dbuf dnewi(size_t n, const int32_t *host) {
    return dnew(n * sizeof(int32_t), host);
}
static void dfree(dbuf *b) {
    if (b->c) ops_free(CPU, b->c);
    if (b->g) ops_free(GPU, b->g);
    b->c = b->g = NULL;
}
/* both sides to the host; returns 0, or -1 (recorded as a failed check named `what`) */
static int dget(const dbuf *b, void *hc, void *hg, const char *what) {
    if (ops_to_host(CPU, hc, b->c, b->bytes) != 0) {
        record(what, NAN, 0, "cpu to_host: %s", ops_last_error(CPU));
        return -1;
    }
    if (ops_to_host(GPU, hg, b->g, b->bytes) != 0) {
        record(what, NAN, 0, "cuda to_host: %s", ops_last_error(GPU));
        return -1;
    }
    return 0;
}
/* compares a float buffer of both sides as one check */
static void cmp(const char *name, const dbuf *b, double tol) {
    size_t n = b->bytes / sizeof(float);
    float *hc = xmalloc(b->bytes), *hg = xmalloc(b->bytes);
    if (dget(b, hc, hg, name) == 0) record(name, rel_err(hg, hc, n), tol, "%zu values", n);
    free(hc);
    free(hg);
}

/* side 0 = CPU, 1 = GPU: F(b) / I(b) pick that side's pointer */
#define F(b) ((float *)(side ? (b).g : (b).c))
#define I(b) ((int32_t *)(side ? (b).g : (b).c))
#define CTX (side ? GPU : CPU)
/* runs an op on CTX; a failure is a failed check and leaves the calling test */
#define CALL(what, op, ...)                                                                        \
    do {                                                                                           \
        if (ops_##op(CTX, __VA_ARGS__) != 0) {                                                     \
            record(what, NAN, 0, "%s on %s failed: %s", #op, CTX->be->name, ops_last_error(CTX));  \
            return;                                                                                \
        }                                                                                          \
    } while (0)

static void set_matmul(ops_cuda_matmul_mode m) {
    if (ops_cuda_set_matmul_mode(GPU, m) != 0) {
        fprintf(stderr, "gpu_check: %s\n", ops_last_error(GPU));
        exit(1);
    }
}
static void set_attention(ops_cuda_attention_mode m) {
    if (ops_cuda_set_attention_mode(GPU, m) != 0) {
        fprintf(stderr, "gpu_check: %s\n", ops_last_error(GPU));
        exit(1);
    }
}

/* ---- op checks ---- */

static void t_memory(void) {
    size_t n = (1 << 20) + 3;
    float *h = frand(n, 1.0f), *back = xmalloc(n * sizeof(float));
    float *z = ops_alloc(GPU, n * sizeof(float));
    float *y = ops_alloc(GPU, n * sizeof(float));
    if (!z || !y) {
        record("memory: alloc", NAN, 0, "%s", ops_last_error(GPU));
        return;
    }
    double bad = 0;
    if (ops_to_host(GPU, back, z, n * sizeof(float)) != 0) bad = NAN;
    for (size_t i = 0; i < n && bad == 0; i++)
        bad += back[i] != 0.0f;
    record("memory: alloc is zero-filled", bad, 0, NULL);
    bad = 0;
    if (ops_to_device(GPU, z, h, n * sizeof(float)) != 0 ||
        ops_copy(GPU, y, z, n * sizeof(float)) != 0 ||
        ops_to_host(GPU, back, y, n * sizeof(float)) != 0)
        bad = NAN;
    for (size_t i = 0; i < n && bad == 0; i++)
        bad += back[i] != h[i];
    record("memory: to_device / copy / to_host exact", bad, 0, NULL);
    bad = 0;
    if (ops_zero(GPU, y + 5, 100 * sizeof(float)) != 0 ||
        ops_to_host(GPU, back, y, n * sizeof(float)) != 0)
        bad = NAN;
    for (size_t i = 0; i < n && bad == 0; i++)
        bad += back[i] != ((i >= 5 && i < 105) ? 0.0f : h[i]);
    record("memory: zero of a sub-range", bad, 0, NULL);
    size_t fb = 0, tb = 0;
    int rc = ops_mem_info(GPU, &fb, &tb);
    record("memory: ops_mem_info (cuda)", rc == 0 && fb > 0 && tb >= fb ? 0 : 1, 0,
           "%.2f GiB free of %.2f GiB", fb / 1073741824.0, tb / 1073741824.0);
    rc = ops_mem_info(CPU, &fb, &tb);
    record("memory: ops_mem_info (cpu)", rc == 0 && fb > 0 && tb >= fb ? 0 : 1, 0,
           "%.2f GiB available of %.2f GiB", fb / 1073741824.0, tb / 1073741824.0);
    ops_free(GPU, z);
    ops_free(GPU, y);
    free(h);
    free(back);
}

static void t_matmul(const char *tag, double tol) {
    static const int shapes[][3] = {{1, 64, 32}, {77, 96, 130}, {512, 896, 1152}, {300, 333, 70}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2];
        char name[112];
        seed(100 + si);
        float *inp = frand((size_t)N * C, 1.0f), *w = frand((size_t)OC * C, 0.1f);
        float *bias = frand(OC, 1.0f), *dout = frand((size_t)N * OC, 1.0f);
        float *dw0 = frand((size_t)OC * C, 1.0f), *db0 = frand(OC, 1.0f);
        float *di0 = frand((size_t)N * C, 1.0f);
        dbuf bi = dnewf((size_t)N * C, inp), bw = dnewf((size_t)OC * C, w), bb = dnewf(OC, bias);
        dbuf bo = dnewf((size_t)N * OC, NULL), bo2 = dnewf((size_t)N * OC, NULL);
        dbuf bd = dnewf((size_t)N * OC, dout), bdw = dnewf((size_t)OC * C, dw0);
        dbuf bdb = dnewf(OC, db0), bdi = dnewf((size_t)N * C, di0);
        dbuf bdi2 = dnewf((size_t)N * C, di0);
        for (int side = 0; side < 2; side++) {
            CALL("matmul", matmul_forward, F(bo), F(bi), F(bw), F(bb), N, C, OC);
            CALL("matmul", matmul_forward, F(bo2), F(bi), F(bw), NULL, N, C, OC);
            CALL("matmul", matmul_backward, F(bdi), F(bdw), F(bdb), F(bd), F(bi), F(bw), N, C, OC,
                 0);
            CALL("matmul", matmul_backward, F(bdi2), NULL, NULL, F(bd), F(bi), F(bw), N, C, OC, 1);
        }
        snprintf(name, sizeof name, "matmul_forward %s N=%d C=%d OC=%d +bias", tag, N, C, OC);
        cmp(name, &bo, tol);
        snprintf(name, sizeof name, "matmul_forward %s N=%d C=%d OC=%d", tag, N, C, OC);
        cmp(name, &bo2, tol);
        snprintf(name, sizeof name, "matmul_backward %s dinp N=%d C=%d OC=%d", tag, N, C, OC);
        cmp(name, &bdi, tol);
        snprintf(name, sizeof name, "matmul_backward %s dinp += N=%d C=%d OC=%d", tag, N, C, OC);
        cmp(name, &bdi2, tol);
        snprintf(name, sizeof name, "matmul_backward %s dweight += N=%d C=%d OC=%d", tag, N, C, OC);
        cmp(name, &bdw, tol);
        snprintf(name, sizeof name, "matmul_backward dbias += N=%d OC=%d", N, OC);
        cmp(name, &bdb, TOL_FP32);
        dbuf *all[] = {&bi, &bw, &bb, &bo, &bo2, &bd, &bdw, &bdb, &bdi, &bdi2};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
            dfree(all[k]);
        free(inp), free(w), free(bias), free(dout), free(dw0), free(db0), free(di0);
    }
}

/* The bf16-weight ops (ops.h matmul_*_bf16, cast_bf16): both backends round the same float32
 * operands to bf16 (the casts must agree bit for bit) and sum the same products in fp32, so the
 * results differ only in summation order: the fp32 bound. */
static void t_matmul_bf16(void) {
    static const int shapes[][3] = {{1, 64, 32}, {77, 96, 130}, {512, 896, 1152}, {300, 333, 70}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int N = shapes[si][0], C = shapes[si][1], OC = shapes[si][2];
        char name[112];
        seed(200 + si);
        float *inp = frand((size_t)N * C, 1.0f), *w = frand((size_t)OC * C, 0.1f);
        float *bias = frand(OC, 1.0f), *dout = frand((size_t)N * OC, 1.0f);
        float *dw0 = frand((size_t)OC * C, 1.0f), *db0 = frand(OC, 1.0f);
        float *di0 = frand((size_t)N * C, 1.0f);
        w[0] = NAN, w[1] = 3.0e38f, w[2] = -1.0f / 3.0f; /* NaN, overflow to inf, a tie-free value */
        dbuf bi = dnewf((size_t)N * C, inp), bw = dnewf((size_t)OC * C, w), bb = dnewf(OC, bias);
        dbuf bw16 = dnew((size_t)OC * C * sizeof(uint16_t), NULL);
        dbuf bo = dnewf((size_t)N * OC, NULL), bo2 = dnewf((size_t)N * OC, NULL);
        dbuf bd = dnewf((size_t)N * OC, dout), bdw = dnewf((size_t)OC * C, dw0);
        dbuf bdb = dnewf(OC, db0), bdi = dnewf((size_t)N * C, di0);
        dbuf bdi2 = dnewf((size_t)N * C, di0);
        for (int side = 0; side < 2; side++) {
            uint16_t *w16 = side ? bw16.g : bw16.c;
            CALL("cast_bf16", cast_bf16, w16, F(bw), (size_t)OC * C);
        }
        uint16_t *hc = xmalloc(bw16.bytes), *hg = xmalloc(bw16.bytes);
        snprintf(name, sizeof name, "cast_bf16 n=%d (NaN, inf, round to nearest even)", OC * C);
        if (dget(&bw16, hc, hg, name) == 0) {
            size_t diff = 0;
            for (size_t i = 0; i < (size_t)OC * C; i++)
                diff += hc[i] != hg[i] || hc[i] != ops_f32_to_bf16(w[i]);
            record(name, (double)diff, 0, "%zu of %d values differ", diff, OC * C);
        }
        free(hc), free(hg);
        /* a finite weight for the products; the input in bf16 too (an activation stored so),
         * and an output stored in bf16 */
        w[0] = w[1] = 0.05f;
        dbuf bi16 = dnew((size_t)N * C * sizeof(uint16_t), NULL);
        dbuf bo16 = dnew((size_t)N * OC * sizeof(uint16_t), NULL);
        dbuf bo3 = dnewf((size_t)N * OC, NULL), bdw2 = dnewf((size_t)OC * C, dw0);
        for (int side = 0; side < 2; side++) {
            uint16_t *w16 = side ? bw16.g : bw16.c, *x16 = side ? bi16.g : bi16.c;
            uint16_t *o16 = side ? bo16.g : bo16.c;
            if (ops_to_device(CTX, F(bw), w, 2 * sizeof(float)) != 0) return;
            CALL("cast_bf16", cast_bf16, w16, F(bw), (size_t)OC * C);
            CALL("cast_bf16", cast_bf16, x16, F(bi), (size_t)N * C);
            CALL("matmul_bf16", matmul_forward_bf16, F(bo), 0, F(bi), 0, w16, F(bb), N, C, OC);
            CALL("matmul_bf16", matmul_forward_bf16, F(bo2), 0, F(bi), 0, w16, NULL, N, C, OC);
            CALL("matmul_bf16", matmul_forward_bf16, F(bo3), 0, x16, 1, w16, F(bb), N, C, OC);
            CALL("matmul_bf16", matmul_forward_bf16, o16, 1, x16, 1, w16, F(bb), N, C, OC);
            CALL("matmul_bf16", matmul_backward_bf16, F(bdi), F(bdw), F(bdb), F(bd), F(bi), 0, w16,
                 N, C, OC, 0);
            CALL("matmul_bf16", matmul_backward_bf16, F(bdi2), NULL, NULL, F(bd), F(bi), 0, w16, N,
                 C, OC, 1);
            CALL("matmul_bf16", matmul_backward_bf16, NULL, F(bdw2), NULL, F(bd), x16, 1, w16, N,
                 C, OC, 0);
        }
        snprintf(name, sizeof name, "matmul_forward_bf16 N=%d C=%d OC=%d +bias", N, C, OC);
        cmp(name, &bo, TOL_FP32);
        snprintf(name, sizeof name, "matmul_forward_bf16 N=%d C=%d OC=%d", N, C, OC);
        cmp(name, &bo2, TOL_FP32);
        snprintf(name, sizeof name, "matmul_forward_bf16 bf16 input N=%d C=%d OC=%d", N, C, OC);
        cmp(name, &bo3, TOL_FP32);
        snprintf(name, sizeof name, "matmul_backward_bf16 dinp N=%d C=%d OC=%d", N, C, OC);
        cmp(name, &bdi, TOL_FP32);
        snprintf(name, sizeof name, "matmul_backward_bf16 dinp += N=%d C=%d OC=%d", N, C, OC);
        cmp(name, &bdi2, TOL_FP32);
        snprintf(name, sizeof name, "matmul_backward_bf16 dweight += N=%d C=%d OC=%d", N, C, OC);
        cmp(name, &bdw, TOL_FP32);
        snprintf(name, sizeof name, "matmul_backward_bf16 dweight, bf16 input N=%d C=%d OC=%d", N,
                 C, OC);
        cmp(name, &bdw2, TOL_FP32);
        snprintf(name, sizeof name, "matmul_backward_bf16 dbias += N=%d OC=%d", N, OC);
        cmp(name, &bdb, TOL_FP32);
        /* the bf16 output: the two sides' float32 sums differ in their last bits, so a value near
         * a rounding boundary may round the other way: one bf16 step (2^-8 relative) at most */
        {
            uint16_t *c16 = xmalloc(bo16.bytes), *g16 = xmalloc(bo16.bytes);
            float *cf = xmalloc((size_t)N * OC * sizeof(float)),
                  *gf = xmalloc((size_t)N * OC * sizeof(float));
            snprintf(name, sizeof name, "matmul_forward_bf16 bf16 output N=%d C=%d OC=%d", N, C,
                     OC);
            if (dget(&bo16, c16, g16, name) == 0) {
                for (size_t i = 0; i < (size_t)N * OC; i++)
                    cf[i] = ops_bf16_to_f32(c16[i]), gf[i] = ops_bf16_to_f32(g16[i]);
                record(name, rel_err(gf, cf, (size_t)N * OC), 1.0 / 256, "%d values", N * OC);
            }
            free(c16), free(g16), free(cf), free(gf);
        }
        dfree(&bi16), dfree(&bo16), dfree(&bo3), dfree(&bdw2);
        dbuf *all[] = {&bi, &bw, &bw16, &bb, &bo, &bo2, &bd, &bdw, &bdb, &bdi, &bdi2};
        for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
            dfree(all[k]);
        free(inp), free(w), free(bias), free(dout), free(dw0), free(db0), free(di0);
    }
}

static void t_embedding(void) {
    const int N = 1000, C = 200, V = 300;
    seed(2);
    int32_t *tok = xmalloc(N * sizeof *tok);
    for (int n = 0; n < N; n++)
        tok[n] = (int32_t)(urand() * V) % 17 * 13 % V; /* many repeats */
    float *wte = frand((size_t)V * C, 1.0f), *dout = frand((size_t)N * C, 1.0f);
    float *dw0 = frand((size_t)V * C, 1.0f);
    dbuf bt = dnewi(N, tok), bw = dnewf((size_t)V * C, wte), bo = dnewf((size_t)N * C, NULL);
    dbuf bd = dnewf((size_t)N * C, dout), bdw = dnewf((size_t)V * C, dw0);
    for (int side = 0; side < 2; side++) {
        CALL("embedding", embedding_forward, F(bo), I(bt), F(bw), N, C, V);
        CALL("embedding", embedding_backward, F(bdw), F(bd), I(bt), N, C, V);
    }
    cmp("embedding_forward", &bo, TOL_FP32);
    cmp("embedding_backward (repeated tokens) +=", &bdw, TOL_FP32);
    dfree(&bt), dfree(&bw), dfree(&bo), dfree(&bd), dfree(&bdw);
    free(tok), free(wte), free(dout), free(dw0);
}

static void t_rmsnorm(void) {
    static const int shapes[][3] = {{5, 64, 64}, {333, 896, 1000}, {64, 4096, 4096}};
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        int N = shapes[si][0], C = shapes[si][1], ldi = shapes[si][2];
        seed(30 + si);
        float *x = frand((size_t)N * ldi, 2.0f), *w = frand(C, 1.0f),
              *dy = frand((size_t)N * C, 1.0f);
        float *dx0 = frand((size_t)N * ldi, 1.0f), *dw0 = frand(C, 1.0f);
        dbuf bx = dnewf((size_t)N * ldi, x), bw = dnewf(C, w), bo = dnewf((size_t)N * C, NULL);
        dbuf br = dnewf(N, NULL), bdy = dnewf((size_t)N * C, dy);
        dbuf bdx = dnewf((size_t)N * ldi, dx0), bdw = dnewf(C, dw0);
        for (int side = 0; side < 2; side++) {
            CALL("rmsnorm", rmsnorm_forward, F(bo), F(br), F(bx), ldi, F(bw), N, C, 1e-6f);
            CALL("rmsnorm", rmsnorm_backward, F(bdx), ldi, F(bdw), F(bdy), F(bx), F(bw), F(br), N,
                 C);
        }
        char name[112];
        snprintf(name, sizeof name, "rmsnorm_forward out N=%d C=%d ldi=%d", N, C, ldi);
        cmp(name, &bo, TOL_FP32);
        snprintf(name, sizeof name, "rmsnorm_forward rstd N=%d C=%d", N, C);
        cmp(name, &br, TOL_FP32);
        snprintf(name, sizeof name, "rmsnorm_backward dinp += N=%d C=%d", N, C);
        cmp(name, &bdx, TOL_FP32);
        snprintf(name, sizeof name, "rmsnorm_backward dweight += N=%d C=%d", N, C);
        cmp(name, &bdw, TOL_FP32);
        dfree(&bx), dfree(&bw), dfree(&bo), dfree(&br), dfree(&bdy), dfree(&bdx), dfree(&bdw);
        free(x), free(w), free(dy), free(dx0), free(dw0);
    }
}

static void t_rope(void) {
    const int N = 300, H = 6, D = 64, ldx = H * D + 40;
    seed(4);
    float *x = frand((size_t)N * ldx, 1.0f), *inv = xmalloc(D / 2 * sizeof(float));
    int32_t *pos = xmalloc(N * sizeof *pos);
    for (int i = 0; i < D / 2; i++)
        inv[i] = (float)pow(1e6, -2.0 * i / D);
    for (int n = 0; n < N; n++)
        pos[n] = n < 100 ? n : (int32_t)(urand() * 32768);
    dbuf bx = dnewf((size_t)N * ldx, x), bx2 = dnewf((size_t)N * ldx, x), bi = dnewf(D / 2, inv);
    dbuf bp = dnewi(N, pos);
    for (int side = 0; side < 2; side++) {
        CALL("rope", rope_forward, F(bx), ldx, I(bp), F(bi), N, H, D);
        CALL("rope", rope_backward, F(bx2), ldx, I(bp), F(bi), N, H, D);
    }
    cmp("rope_forward (positions to 32k, strided)", &bx, TOL_FP32);
    cmp("rope_backward", &bx2, TOL_FP32);
    dfree(&bx), dfree(&bx2), dfree(&bi), dfree(&bp);
    free(x), free(inv), free(pos);
}

static void t_attention_heads(int D, ops_cuda_attention_mode mode, int Hq, int Hkv) {
    static const int lens[] = {1, 0, 31, 32, 33, 100, 257, 64};
    const int S = (int)(sizeof lens / sizeof lens[0]);
    const int QKV = (Hq + 2 * Hkv) * D;
    int32_t cu[16];
    cu[0] = 0;
    for (int s = 0; s < S; s++)
        cu[s + 1] = cu[s] + lens[s];
    const int N = cu[S];
    set_attention(mode);
    seed(50 + D);
    float *qkv = frand((size_t)N * QKV, 1.0f), *dout = frand((size_t)N * Hq * D, 1.0f);
    float *junk = frand((size_t)N * QKV, 5.0f);
    dbuf bqkv = dnewf((size_t)N * QKV, qkv), bcu = dnewi(S + 1, cu);
    dbuf bo = dnewf((size_t)N * Hq * D, NULL), bl = dnewf((size_t)N * Hq, NULL);
    dbuf bd = dnewf((size_t)N * Hq * D, dout), bdq = dnewf((size_t)N * QKV, junk);
    for (int side = 0; side < 2; side++) {
        float *q = F(bqkv), *k = q + Hq * D, *v = k + Hkv * D;
        float *dq = F(bdq), *dk = dq + Hq * D, *dv = dk + Hkv * D;
        CALL("attention", attention_forward, F(bo), F(bl), q, QKV, k, QKV, v, QKV, I(bcu), S, N, Hq,
             Hkv, D);
        CALL("attention", attention_backward, dq, dk, dv, F(bd), q, QKV, k, QKV, v, QKV, F(bo),
             F(bl), I(bcu), S, N, Hq, Hkv, D);
    }
    const char *mn = mode == OPS_CUDA_ATTENTION_NAIVE    ? "naive"
                     : mode == OPS_CUDA_ATTENTION_TENSOR ? "tensor"
                                                         : "flash";
    /* tensor cores take bf16 operands: the bf16 GEMM bound */
    const double tol = mode == OPS_CUDA_ATTENTION_TENSOR ? TOL_BF16 : TOL_FP32;
    char name[112];
    snprintf(name, sizeof name, "attention_forward %s out D=%d (packed, GQA %d/%d)", mn, D, Hq,
             Hkv);
    cmp(name, &bo, tol);
    snprintf(name, sizeof name, "attention_forward %s lse D=%d", mn, D);
    cmp(name, &bl, tol);
    snprintf(name, sizeof name, "attention_backward %s dq,dk,dv D=%d (overwrite)", mn, D);
    cmp(name, &bdq, tol);
    set_attention(OPS_CUDA_ATTENTION_AUTO);
    dfree(&bqkv), dfree(&bcu), dfree(&bo), dfree(&bl), dfree(&bd), dfree(&bdq);
    free(qkv), free(dout), free(junk);
}

static void t_attention(int D, ops_cuda_attention_mode mode) {
    t_attention_heads(D, mode, 8, 2);
}

static void t_decode(int D) {
    static const int lens[] = {1, 17, 32, 33, 64, 200, 0};
    const int B = (int)(sizeof lens / sizeof lens[0]), Hq = 8, Hkv = 2, max_T = 256, slots = 9;
    const int row = Hkv * D, ldq = Hq * D + 8;
    int Nst = 0;
    for (int b = 0; b < B; b++)
        Nst += lens[b];
    seed(60 + D);
    int32_t *slot = xmalloc(B * sizeof *slot), *len = xmalloc(B * sizeof *len);
    int32_t *sst = xmalloc(Nst * sizeof *sst), *pst = xmalloc(Nst * sizeof *pst);
    for (int b = 0, at = 0; b < B; b++) {
        slot[b] = (b * 5 + 2) % slots;
        len[b] = lens[b];
        for (int t = 0; t < lens[b]; t++, at++) {
            sst[at] = slot[b];
            pst[at] = t;
        }
    }
    float *k = frand((size_t)Nst * (row + 4), 1.0f), *v = frand((size_t)Nst * (row + 4), 1.0f);
    float *q = frand((size_t)B * ldq, 1.0f);
    size_t cache = (size_t)slots * max_T * row;
    dbuf bkc = dnewf(cache, NULL), bvc = dnewf(cache, NULL), bk = dnewf((size_t)Nst * (row + 4), k);
    dbuf bv = dnewf((size_t)Nst * (row + 4), v), bs = dnewi(Nst, sst), bp = dnewi(Nst, pst);
    dbuf bq = dnewf((size_t)B * ldq, q), bsl = dnewi(B, slot), bln = dnewi(B, len);
    dbuf bo = dnewf((size_t)B * Hq * D, NULL);
    for (int side = 0; side < 2; side++) {
        CALL("decode", kv_store, F(bkc), F(bvc), F(bk), row + 4, F(bv), row + 4, I(bs), I(bp), Nst,
             max_T, Hkv, D);
        CALL("decode", attention_decode, F(bo), F(bq), ldq, F(bkc), F(bvc), I(bsl), I(bln), B,
             max_T, Hq, Hkv, D);
    }
    char name[112];
    snprintf(name, sizeof name, "kv_store D=%d", D);
    cmp(name, &bkc, 0.0);
    snprintf(name, sizeof name, "attention_decode D=%d (lens 0..200)", D);
    cmp(name, &bo, TOL_FP32);
    dbuf *all[] = {&bkc, &bvc, &bk, &bv, &bs, &bp, &bq, &bsl, &bln, &bo};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        dfree(all[i]);
    free(slot), free(len), free(sst), free(pst), free(k), free(v), free(q);
}

static void t_swiglu(void) {
    const int N = 257, I = 1000, ld = 2 * I;
    seed(7);
    float *gu = frand((size_t)N * ld, 4.0f), *dy = frand((size_t)N * I, 1.0f);
    dbuf bgu = dnewf((size_t)N * ld, gu), bo = dnewf((size_t)N * I, NULL);
    dbuf bdy = dnewf((size_t)N * I, dy), bdgu = dnewf((size_t)N * ld, NULL);
    for (int side = 0; side < 2; side++) {
        CALL("swiglu", swiglu_forward, F(bo), F(bgu), ld, F(bgu) + I, ld, N, I);
        CALL("swiglu", swiglu_backward, F(bdgu), F(bdgu) + I, ld, F(bdy), F(bgu), F(bgu) + I, ld, N,
             I);
    }
    cmp("swiglu_forward (strided gate|up)", &bo, TOL_FP32);
    cmp("swiglu_backward dgate|dup", &bdgu, TOL_FP32);
    dfree(&bgu), dfree(&bo), dfree(&bdy), dfree(&bdgu);
    free(gu), free(dy);
}

/* swiglu on gate/up stored in bf16: both sides widen the same values, so the fp32 bound */
static void t_swiglu_bf16(void) {
    const int N = 300, I = 500;
    seed(31);
    float *gu = frand((size_t)N * 2 * I, 4.0f), *dout = frand((size_t)N * I, 1.0f);
    dbuf bgu = dnewf((size_t)N * 2 * I, gu), bgu16 = dnew((size_t)N * 2 * I * sizeof(uint16_t), NULL);
    dbuf bo = dnewf((size_t)N * I, NULL), bd = dnewf((size_t)N * I, dout);
    dbuf bdgu = dnewf((size_t)N * 2 * I, NULL);
    for (int side = 0; side < 2; side++) {
        uint16_t *g16 = side ? bgu16.g : bgu16.c;
        CALL("swiglu_bf16", cast_bf16, g16, F(bgu), (size_t)N * 2 * I);
        CALL("swiglu_bf16", swiglu_forward_bf16, F(bo), g16, 2 * I, g16 + I, 2 * I, N, I);
        CALL("swiglu_bf16", swiglu_backward_bf16, F(bdgu), F(bdgu) + I, 2 * I, F(bd), g16,
             g16 + I, 2 * I, N, I);
    }
    cmp("swiglu_forward_bf16 N=300 I=500", &bo, TOL_FP32);
    cmp("swiglu_backward_bf16 N=300 I=500", &bdgu, TOL_FP32);
    dfree(&bgu), dfree(&bgu16), dfree(&bo), dfree(&bd), dfree(&bdgu);
    free(gu), free(dout);
}

static void t_elementwise(void) {
    const size_t n = 3000017;
    seed(8);
    float *a = frand(n, 1.0f), *b = frand(n, 1.0f);
    dbuf ba = dnewf(n, a), bb = dnewf(n, b);
    double ss[2] = {0, 0};
    for (int side = 0; side < 2; side++) {
        CALL("elementwise", add_inplace, F(ba), F(bb), n);
        CALL("elementwise", scale_inplace, F(ba), 0.37f, n);
        CALL("sum_squares", sum_squares, &ss[side], F(ba), n);
    }
    cmp("add_inplace + scale_inplace", &ba, TOL_FP32);
    /* axpy2d: 1000 rows of 37 columns, from a stride-53 view into a stride-41 one, copy then
     * accumulate (LoRA's views into fused q/k/v and gate/up) */
    dbuf by = dnewf(41000, a), bx = dnewf(53000, b);
    for (int side = 0; side < 2; side++) {
        CALL("axpy2d", axpy2d, F(by) + 3, 41, F(bx) + 5, 53, 1000, 37, 0.5f, 0);
        CALL("axpy2d", axpy2d, F(by) + 2, 41, F(bx) + 7, 53, 1000, 37, -1.25f, 1);
    }
    cmp("axpy2d (strided copy, then accumulate)", &by, TOL_FP32);
    /* dropout: the same hashed mask on both (copy with p 0.3, then accumulate with p 0.1) */
    dbuf bd = dnewf(41000, a);
    for (int side = 0; side < 2; side++) {
        CALL("dropout", dropout, F(bd), F(bx), 1000, 41, 0.3f, 12345ull, 0);
        CALL("dropout", dropout, F(bd), F(bx) + 41000, 1000, 12, 0.1f, 99ull, 1);
    }
    cmp("dropout (hashed mask, copy then accumulate)", &bd, TOL_FP32);
    dfree(&bd);
    dfree(&by), dfree(&bx);
    record("sum_squares (3M values, one read-back)", fabs(ss[1] - ss[0]) / ss[0], TOL_FP32,
           "cpu %.9g cuda %.9g", ss[0], ss[1]);
    dfree(&ba), dfree(&bb);
    free(a), free(b);
}

static void t_logprob(void) {
    const int N = 37, V = 50257;
    const float inv_temp = 1.0f / 0.7f;
    seed(9);
    float *x = frand((size_t)N * V, 8.0f), *dl = frand(N, 1.0f), *de = frand(N, 1.0f);
    int32_t *t = xmalloc(N * sizeof *t);
    for (int n = 0; n < N; n++)
        t[n] = n % 7 == 3 ? -1 : (int32_t)(urand() * V);
    dbuf bx = dnewf((size_t)N * V, x), bx2 = dnewf((size_t)N * V, x), bt = dnewi(N, t);
    dbuf blp = dnewf(N, NULL), ben = dnewf(N, NULL), bl = dnewf(N, NULL);
    dbuf bdl = dnewf(N, dl), bde = dnewf(N, de), bg = dnewf((size_t)N * V, NULL);
    dbuf bg2 = dnewf((size_t)N * V, NULL);
    for (int side = 0; side < 2; side++) {
        CALL("logprob", logprob_forward, F(blp), F(ben), F(bl), F(bx), I(bt), N, V, inv_temp);
        CALL("logprob", logprob_backward, F(bg), F(bdl), F(bde), F(bx), F(bl), I(bt), N, V,
             inv_temp);
        CALL("logprob", logprob_backward, F(bg2), F(bdl), NULL, F(bx), F(bl), I(bt), N, V,
             inv_temp);
        /* in place: dlogits is the logits buffer */
        CALL("logprob", logprob_backward, F(bx2), F(bdl), F(bde), F(bx2), F(bl), I(bt), N, V,
             inv_temp);
    }
    cmp("logprob_forward logp (V=50257, T=0.7, no-target rows)", &blp, TOL_FP32);
    cmp("logprob_forward entropy", &ben, TOL_FP32);
    cmp("logprob_forward lse", &bl, TOL_FP32);
    cmp("logprob_backward dlogits (logp + entropy)", &bg, TOL_FP32);
    cmp("logprob_backward dlogits (logp only)", &bg2, TOL_FP32);
    cmp("logprob_backward in place (dlogits == logits)", &bx2, TOL_FP32);
    dbuf *all[] = {&bx, &bx2, &bt, &blp, &ben, &bl, &bdl, &bde, &bg, &bg2};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        dfree(all[i]);
    free(x), free(dl), free(de), free(t);
}

static void t_adamw(void) {
    const size_t n = 1000003;
    seed(10);
    float *p = frand(n, 1.0f), *g = frand(n, 1e-2f), *m = frand(n, 1e-3f), *v = frand(n, 1e-5f);
    for (size_t i = 0; i < n; i++)
        v[i] = fabsf(v[i]);
    dbuf bp = dnewf(n, p), bg = dnewf(n, g), bm = dnewf(n, m), bv = dnewf(n, v);
    for (int side = 0; side < 2; side++)
        CALL("adamw", adamw_update, F(bp), F(bg), F(bm), F(bv), n, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.1f,
             7, 0.5f);
    cmp("adamw_update param", &bp, TOL_FP32);
    cmp("adamw_update m", &bm, TOL_FP32);
    cmp("adamw_update v", &bv, TOL_FP32);
    dfree(&bp), dfree(&bg), dfree(&bm), dfree(&bv);
    free(p), free(g), free(m), free(v);
}

/* For one row: the nucleus membership of token tok under softmax(x * it), top_p (in double):
 * the mass of tokens strictly more probable than tok must be below top_p (with slack). */
static int in_nucleus(const float *x, int V, float it, float top_p, int tok) {
    double mx = -INFINITY, s = 0.0, above = 0.0;
    for (int j = 0; j < V; j++)
        mx = fmax(mx, (double)x[j] * it);
    for (int j = 0; j < V; j++)
        s += exp((double)x[j] * it - mx);
    double pt = exp((double)x[tok] * it - mx);
    for (int j = 0; j < V; j++) {
        double pj = exp((double)x[j] * it - mx);
        if (pj > pt * (1.0 + 1e-6)) above += pj;
    }
    return above / s < (double)top_p + 1e-6;
}

static void t_sample(void) {
    const int B = 48, V = 32000;
    seed(11);
    float *x = frand((size_t)B * V, 3.0f), *u = xmalloc(B * sizeof *u);
    for (int b = 0; b < B; b++)
        u[b] = (float)urand();
    dbuf bx = dnewf((size_t)B * V, x);
    int32_t tok[2][48];
    float lp[2][48];
    const struct {
        const char *name;
        float temp, top_p;
    } modes[] = {{"greedy", 0.0f, 1.0f},
                 {"T=0.8", 0.8f, 1.0f},
                 {"T=0.8 top-p 0.9", 0.8f, 0.9f},
                 {"T=1.3 top-p 0.5", 1.3f, 0.5f}};
    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
        for (int side = 0; side < 2; side++)
            CALL("sample", sample, tok[side], lp[side], F(bx), B, V, modes[mi].temp,
                 modes[mi].top_p, u);
        char name[112];
        float it = modes[mi].temp > 0.0f ? 1.0f / modes[mi].temp : 1.0f;
        /* logp of the GPU's tokens against the CPU's log-softmax at those tokens */
        dbuf bt = dnewi(B, tok[1]), blp = dnewf(B, NULL), bl = dnewf(B, NULL);
        if (ops_logprob_forward(CPU, blp.c, NULL, bl.c, bx.c, bt.c, B, V, it) != 0) {
            record("sample", NAN, 0, "cpu logprob_forward: %s", ops_last_error(CPU));
            return;
        }
        float ref[48];
        ops_to_host(CPU, ref, blp.c, B * sizeof(float));
        snprintf(name, sizeof name, "sample %s: logp of the chosen token", modes[mi].name);
        record(name, rel_err(lp[1], ref, B), TOL_FP32, NULL);
        dfree(&bt), dfree(&blp), dfree(&bl);
        int same = 0, member = 0;
        for (int b = 0; b < B; b++) {
            same += tok[0][b] == tok[1][b];
            if (modes[mi].top_p < 1.0f)
                member += in_nucleus(x + (size_t)b * V, V, it, modes[mi].top_p, tok[1][b]);
        }
        if (modes[mi].temp <= 0.0f) {
            snprintf(name, sizeof name, "sample %s: tokens equal the CPU's", modes[mi].name);
            record(name, B - same, 0, "%d of %d equal", same, B);
        } else if (modes[mi].top_p >= 1.0f) {
            /* both walk the CDF in index order: only rounding at a boundary may differ */
            snprintf(name, sizeof name, "sample %s: tokens equal the CPU's (<= 2 differ)",
                     modes[mi].name);
            record(name, B - same, 2, "%d of %d equal", same, B);
        } else {
            snprintf(name, sizeof name, "sample %s: tokens inside the nucleus", modes[mi].name);
            record(name, B - member, 0, "%d of %d inside; %d equal the CPU's", member, B, same);
        }
    }
    /* ties: all-equal logits, top-p 0.5 keeps the lowest-index half */
    {
        const int V2 = 1000;
        float *flat = xmalloc((size_t)4 * V2 * sizeof(float));
        float uu[4] = {0.0f, 0.3f, 0.7f, 0.999f};
        dbuf bf = dnewf((size_t)4 * V2, flat);
        int32_t t2[4];
        float l2[4];
        int bad = 0;
        if (ops_sample(GPU, t2, l2, bf.g, 4, V2, 1.0f, 0.5f, uu) != 0) {
            record("sample ties", NAN, 0, "%s", ops_last_error(GPU));
        } else {
            for (int b = 0; b < 4; b++)
                bad += t2[b] < 0 || t2[b] >= V2 / 2 || fabsf(l2[b] + logf((float)V2)) > 1e-4f;
            record("sample ties: top-p 0.5 of a flat row keeps the lowest-index half", bad, 0,
                   "tokens %d %d %d %d", t2[0], t2[1], t2[2], t2[3]);
        }
        dfree(&bf);
        free(flat);
    }
    dfree(&bx);
    free(x), free(u);
}

/* device-side input errors are reported by the next synchronising call, and the context lives on */
static void t_deferred_errors(void) {
    const int N = 4, C = 8, V = 10;
    int32_t tok[4] = {1, 2, 10, 3}; /* 10 is outside V */
    float *w = frand((size_t)V * C, 1.0f);
    float *out = ops_alloc(GPU, (size_t)N * C * sizeof(float));
    float *wte = ops_alloc(GPU, (size_t)V * C * sizeof(float));
    int32_t *t = ops_alloc(GPU, sizeof tok);
    ops_to_device(GPU, wte, w, (size_t)V * C * sizeof(float));
    ops_to_device(GPU, t, tok, sizeof tok);
    int rc_op = ops_embedding_forward(GPU, out, t, wte, N, C, V);
    int rc_sync = ops_sync(GPU);
    int named = strstr(ops_last_error(GPU), "vocabulary") != NULL;
    int rc_again = ops_sync(GPU);
    record("deferred error: bad token reported by sync", !(rc_op == 0 && rc_sync != 0 && named), 0,
           "%s", ops_last_error(GPU));
    record("deferred error: the context works afterwards", rc_again != 0, 0, NULL);
    int32_t cu[3] = {0, 3, 2}; /* decreasing and not ending at N */
    int32_t *dcu = ops_alloc(GPU, sizeof cu);
    float *qkv = ops_alloc(GPU, (size_t)N * 3 * 64 * sizeof(float));
    float *att = ops_alloc(GPU, (size_t)N * 64 * sizeof(float));
    float *lse = ops_alloc(GPU, (size_t)N * sizeof(float));
    ops_to_device(GPU, dcu, cu, sizeof cu);
    rc_op = ops_attention_forward(GPU, att, lse, qkv, 192, qkv + 64, 192, qkv + 128, 192, dcu, 2, N,
                                  1, 1, 64);
    rc_sync = ops_sync(GPU);
    named = strstr(ops_last_error(GPU), "cu_seqlens") != NULL;
    record("deferred error: bad cu_seqlens reported by sync",
           !(rc_op == 0 && rc_sync != 0 && named), 0, "%s", ops_last_error(GPU));
    ops_free(GPU, out), ops_free(GPU, wte), ops_free(GPU, t);
    ops_free(GPU, dcu), ops_free(GPU, qkv), ops_free(GPU, att);
    ops_free(GPU, lse);
    free(w);
}

/* ---- the full step ---- */

/* ~100M parameters, Qwen2-shaped (GQA 12/2, q/k/v bias, tied embeddings) */
static const char *CFG_100M =
    "{\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 32000,"
    " \"hidden_size\": 768, \"num_hidden_layers\": 12, \"num_attention_heads\": 12,"
    " \"num_key_value_heads\": 2, \"intermediate_size\": 2048, \"max_position_embeddings\": 4096,"
    " \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true}";
/* small models covering every layer variant: Qwen2 (q/k/v bias, tied), Qwen3 (q/k norm, head_dim
 * given, untied), Llama (attention and MLP biases, o_proj bias) */
static const char *CFG_SMALL[] = {
    "{\"model_type\": \"qwen2\", \"vocab_size\": 512, \"hidden_size\": 64,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2,"
    " \"intermediate_size\": 160, \"tie_word_embeddings\": true}",
    "{\"model_type\": \"qwen3\", \"vocab_size\": 300, \"hidden_size\": 96,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 6, \"num_key_value_heads\": 2,"
    " \"head_dim\": 32, \"intermediate_size\": 200, \"tie_word_embeddings\": false}",
    "{\"model_type\": \"llama\", \"vocab_size\": 400, \"hidden_size\": 128,"
    " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 1,"
    " \"intermediate_size\": 256, \"attention_bias\": true, \"mlp_bias\": true,"
    " \"rope_theta\": 500000.0}",
};
/* the shapes of Qwen2.5-0.5B (494M parameters) */
static const char *CFG_05B =
    "{\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 151936,"
    " \"hidden_size\": 896, \"num_hidden_layers\": 24, \"num_attention_heads\": 14,"
    " \"num_key_value_heads\": 2, \"intermediate_size\": 4864, \"max_position_embeddings\": 32768,"
    " \"rope_theta\": 1000000.0, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true}";

typedef struct {
    int N, S;
    int32_t *tokens, *positions, *cu, *targets;
    const int32_t *parent; /* seg_parent (S) or NULL */
    int lora;              /* 1: a LoRA adapter on every projection trains (the base frozen) */
    float *dlogp, *dent;
} step_batch;

/* parent (S) or NULL: segment i continues segment parent[i] (its positions go on from there) */
static void batch_make(step_batch *b, const int *lens, const int32_t *parent, int S, int V,
                       uint64_t s) {
    seed(s);
    b->S = S;
    b->N = 0;
    for (int i = 0; i < S; i++)
        b->N += lens[i];
    b->tokens = xmalloc((size_t)b->N * sizeof(int32_t));
    b->positions = xmalloc((size_t)b->N * sizeof(int32_t));
    b->targets = xmalloc((size_t)b->N * sizeof(int32_t));
    b->cu = xmalloc((size_t)(S + 1) * sizeof(int32_t));
    b->dlogp = xmalloc((size_t)b->N * sizeof(float));
    b->dent = xmalloc((size_t)b->N * sizeof(float));
    int count = 0;
    b->parent = parent;
    b->cu[0] = 0;
    for (int i = 0; i < S; i++) {
        b->cu[i + 1] = b->cu[i] + lens[i];
        for (int t = 0; t < lens[i]; t++) {
            int n = b->cu[i] + t;
            b->tokens[n] = (int32_t)(urand() * V);
            b->positions[n] = t + (parent && parent[i] >= 0 ? lens[parent[i]] : 0);
        }
    }
    for (int i = 0; i < S; i++)
        for (int t = 0; t < lens[i]; t++) {
            int n = b->cu[i] + t;
            b->targets[n] = t + 1 < lens[i] ? b->tokens[n + 1] : -1;
            count += b->targets[n] >= 0;
        }
    /* loss = -mean(logp) - 0.01 mean(entropy) over the targeted rows */
    for (int n = 0; n < b->N; n++) {
        b->dlogp[n] = b->targets[n] >= 0 ? -1.0f / (float)count : 0.0f;
        b->dent[n] = b->targets[n] >= 0 ? -0.01f / (float)count : 0.0f;
    }
}

static void batch_free(step_batch *b) {
    free(b->tokens), free(b->positions), free(b->targets), free(b->cu), free(b->dlogp);
    free(b->dent);
}

static double batch_loss(const step_batch *b, const float *logp) {
    double s = 0.0;
    for (int n = 0; n < b->N; n++)
        s += (double)b->dlogp[n] * logp[n];
    return s;
}

typedef struct {
    float *logp, *ent, *grads, *logits_dec;
    double loss, loss_after, gnorm;
} step_out;

/* one forward / backward / AdamW step, then a forward of the same batch, then prefill + one
 * decode step; everything read back into o */
static int run_step(ops_ctx *ops, const model_config *cfg, const step_batch *b, step_out *o,
                    chord_err *err) {
    model *m = NULL;
    model_kv_cache *kv = NULL;
    int rc = -1;
    const model_batch mb = {b->N, b->S, b->tokens, b->positions, b->cu, b->targets, b->parent};
    if (model_create(cfg, ops, &m, err) != 0 || model_init_random(m, 1234, err) != 0) goto done;
    if (b->lora) { /* rank 4 on all seven projections; B nonzero (the same values on both) */
        model_lora_config lc = {
            .rank = 4, .alpha = 8.0, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
        size_t np = 0;
        if (model_lora_attach(m, &lc, 7, err) != 0) goto done;
        model_lora_tensors(m, NULL, &np);
        float *p = xmalloc(np * sizeof *p);
        int r = model_lora_read_params(m, p, err);
        for (size_t i = 0; r == 0 && i < np; i++)
            if (p[i] == 0.0f) p[i] = 0.02f * sinf(0.31f * (float)i);
        if (r == 0) r = model_lora_write_params(m, p, err);
        free(p);
        if (r != 0) goto done;
    }
    o->logp = xmalloc((size_t)b->N * sizeof(float));
    o->ent = xmalloc((size_t)b->N * sizeof(float));
    o->grads = xmalloc(model_trainable_params(m) * sizeof(float));
    if (model_zero_grad(m, err) != 0 || model_forward(m, &mb, 1.0f, o->logp, o->ent, err) != 0 ||
        model_backward(m, b->dlogp, b->dent, err) != 0 ||
        (b->lora ? model_lora_read_grads(m, o->grads, err) : model_read_grads(m, o->grads, err)) !=
            0 ||
        model_adamw_step(m, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, &o->gnorm, err) != 0)
        goto done;
    o->loss = batch_loss(b, o->logp);
    float *lp2 = xmalloc((size_t)b->N * sizeof(float));
    if (model_forward(m, &mb, 1.0f, lp2, NULL, err) != 0) {
        free(lp2);
        goto done;
    }
    o->loss_after = batch_loss(b, lp2);
    free(lp2);
    /* prefill the first 3 sequences minus their last token, decode that token */
    {
        int32_t cu[4] = {0}, slots[3] = {2, 0, 1}, dec_tok[3], dec_pos[3];
        int32_t *ptok = xmalloc((size_t)b->N * sizeof(int32_t));
        int np = 0;
        for (int s = 0; s < 3; s++) {
            int L = b->cu[s + 1] - b->cu[s] - 1;
            memcpy(ptok + np, b->tokens + b->cu[s], (size_t)L * sizeof(int32_t));
            np += L;
            cu[s + 1] = np;
            dec_tok[s] = b->tokens[b->cu[s + 1] - 1];
            dec_pos[s] = L;
        }
        const float *dl = NULL;
        int V = cfg->vocab_size;
        o->logits_dec = xmalloc((size_t)3 * V * sizeof(float));
        int r = model_kv_create(m, 3, 512, &kv, err);
        if (r == 0) r = model_prefill(m, kv, ptok, cu, 3, slots, &dl, err);
        if (r == 0) r = model_decode(m, kv, dec_tok, dec_pos, slots, 3, &dl, err);
        free(ptok);
        if (r != 0) goto done;
        if (ops_to_host(ops, o->logits_dec, dl, (size_t)3 * V * sizeof(float)) != 0) {
            chord_err_set(err, "to_host: %s", ops_last_error(ops));
            goto done;
        }
    }
    rc = 0;
done:
    if (kv) model_kv_free(kv);
    model_free(m);
    return rc;
}

static void step_out_free(step_out *o) {
    free(o->logp), free(o->ent), free(o->grads), free(o->logits_dec);
    memset(o, 0, sizeof *o);
}

/* shared: the batch's prompt shared (seg_parent); lora: an adapter trains (its gradients are
 * the ones compared) */
static void t_full_step(const char *label, const char *json, int shared, int lora) {
    model_config cfg;
    chord_err err = {0};
    if (model_config_parse(json, &cfg, &err) != 0) {
        record("step: config", NAN, 0, "%s: %s", label, err.msg);
        return;
    }
    static const int lens[] = {100, 64, 37, 55};
    static const int32_t parent[] = {-1, 0, 0, -1}; /* shared: a prompt, two responses, a lone */
    step_batch b;
    batch_make(&b, lens, shared ? parent : NULL, 4, cfg.vocab_size, 77);
    b.lora = lora;
    /* the reference layout: tensor names and offsets (identical on both backends) */
    model *probe = NULL;
    model_lora_config plc = {.rank = 4, .alpha = 8.0, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
    if (model_create(&cfg, CPU, &probe, &err) != 0 ||
        (lora && model_lora_attach(probe, &plc, 7, &err) != 0)) {
        record("step: model_create", NAN, 0, "%s: %s", label, err.msg);
        model_free(probe);
        batch_free(&b);
        return;
    }
    int n_tensors = probe->n_tensors;
    const model_tensor *tensors =
        lora ? model_lora_tensors(probe, &n_tensors, NULL) : probe->tensors;
    printf("step %s: %s config, %zu parameters, %d tokens in %d sequences\n", label, cfg.model_type,
           probe->num_params, b.N, b.S);
    step_out ref32 = {0};
    double t0 = now_s();
    if (run_step(CPU, &cfg, &b, &ref32, &err) != 0) {
        record("step: cpu", NAN, 0, "%s: %s", label, err.msg);
        model_free(probe);
        batch_free(&b);
        return;
    }
    printf("step %s: cpu done in %.1f s\n", label, now_s() - t0);
    /* bf16: bf16 GEMMs with the fp32 attention kernels; bf16+tc: the training default, bf16
     * GEMMs and tensor-core attention (bf16 operands there too). The gradient of a small tensor
     * that only the attention backward feeds (a q/k norm weight) sums bf16-rounded dS = P (dP - Di)
     * terms whose difference cancels (as in FlashAttention's bf16 backward): about 1 % off, so
     * its per-tensor bound is 2e-2 there; every other check keeps the bf16 bound. A LoRA
     * adapter's gradients go through two more bf16 GEMMs (du = s dy B, then dA = du^T x) after
     * the bf16-rounded dy: about 1 % off too (1.2 % seen on the emulator, where fp32 mode agrees
     * to 1e-6), so their bound is 2e-2 in both bf16 modes. */
    /* bf16w: models with bf16 weights (model.h "precision", the GPU's default), against the CPU
     * with bf16 weights too: the same bf16 products summed in fp32, so with the fp32 attention
     * kernels only summation order and an operand rounding to the neighbouring bf16 after a
     * last-bit difference upstream separate them (the bf16 bound, and in practice far below);
     * bf16w+tc adds the tensor-core attention (the default training path). */
    static const struct {
        const char *tag;
        ops_cuda_matmul_mode mode;
        ops_cuda_attention_mode att;
        double tol, tol_grads;
        int w16;
    } modes[] = {
        {"fp32", OPS_CUDA_MATMUL_FP32, OPS_CUDA_ATTENTION_AUTO, TOL_FP32, TOL_FP32, 0},
        {"bf16", OPS_CUDA_MATMUL_BF16, OPS_CUDA_ATTENTION_FLASH, TOL_BF16, TOL_BF16, 0},
        {"bf16+tc", OPS_CUDA_MATMUL_BF16, OPS_CUDA_ATTENTION_AUTO, TOL_BF16, 2 * TOL_BF16, 0},
        {"bf16w", OPS_CUDA_MATMUL_BF16, OPS_CUDA_ATTENTION_FLASH, TOL_BF16, TOL_BF16, 1},
        {"bf16w+tc", OPS_CUDA_MATMUL_BF16, OPS_CUDA_ATTENTION_AUTO, TOL_BF16, 2 * TOL_BF16, 1}};
    step_out ref16 = {0};
    CPU->bf16_weights = 1;
    int have16 = run_step(CPU, &cfg, &b, &ref16, &err) == 0;
    CPU->bf16_weights = 0;
    if (!have16) record("step: cpu bf16 weights", NAN, 0, "%s: %s", label, err.msg);
    for (size_t mi = 0; mi < sizeof modes / sizeof modes[0]; mi++) {
        if (modes[mi].w16 && !have16) continue;
        set_matmul(modes[mi].mode);
        set_attention(modes[mi].att);
        GPU->bf16_weights = modes[mi].w16;
        const step_out ref = modes[mi].w16 ? ref16 : ref32;
        step_out g = {0};
        char name[112];
        if (run_step(GPU, &cfg, &b, &g, &err) != 0) {
            snprintf(name, sizeof name, "step %s %s: cuda", label, modes[mi].tag);
            record(name, NAN, 0, "%s", err.msg);
            step_out_free(&g);
            continue;
        }
        double tol = modes[mi].tol;
        snprintf(name, sizeof name, "step %s %s: per-token logp", label, modes[mi].tag);
        record(name, rel_err(g.logp, ref.logp, b.N), tol, NULL);
        snprintf(name, sizeof name, "step %s %s: per-token entropy", label, modes[mi].tag);
        record(name, rel_err(g.ent, ref.ent, b.N), tol, NULL);
        snprintf(name, sizeof name, "step %s %s: loss", label, modes[mi].tag);
        record(name, fabs(g.loss - ref.loss) / fabs(ref.loss), tol, "cpu %.7f cuda %.7f", ref.loss,
               g.loss);
        snprintf(name, sizeof name, "step %s %s: gradient norm", label, modes[mi].tag);
        record(name, fabs(g.gnorm - ref.gnorm) / ref.gnorm, tol, "cpu %.6g cuda %.6g", ref.gnorm,
               g.gnorm);
        /* A tensor whose gradient nearly cancels (the k_proj bias: a shift of every key moves
         * the softmax only through RoPE's rotation) holds mostly rounding noise; its error is
         * taken relative to 1e-3 of the global gradient norm at least. */
        double worst = 0.0, floor = 1e-3 * ref.gnorm;
        const double tol_grads =
            lora && modes[mi].mode == OPS_CUDA_MATMUL_BF16 ? 2 * TOL_BF16 : modes[mi].tol_grads;
        const char *worst_name = "";
        int bad = 0;
        for (int t = 0; t < n_tensors; t++) {
            const model_tensor *mt = &tensors[t];
            double e =
                rel_err_floor(g.grads + mt->offset, ref.grads + mt->offset, mt->numel, floor);
            if (!(e <= tol_grads)) bad++;
            if (!(e <= worst)) {
                worst = e;
                worst_name = mt->name;
            }
        }
        snprintf(name, sizeof name, "step %s %s: every gradient tensor (worst)", label,
                 modes[mi].tag);
        record(name, worst, tol_grads, "%d tensors, %d over; worst %s (norm floor %.2g)", n_tensors,
               bad, worst_name, floor);
        snprintf(name, sizeof name, "step %s %s: loss after the AdamW step", label, modes[mi].tag);
        record(name, fabs(g.loss_after - ref.loss_after) / fabs(ref.loss_after), tol,
               "cpu %.7f cuda %.7f", ref.loss_after, g.loss_after);
        snprintf(name, sizeof name, "step %s %s: prefill + decode logits", label, modes[mi].tag);
        record(name, rel_err(g.logits_dec, ref.logits_dec, (size_t)3 * cfg.vocab_size), tol, NULL);
        step_out_free(&g);
    }
    set_matmul(OPS_CUDA_MATMUL_BF16);
    set_attention(OPS_CUDA_ATTENTION_AUTO);
    GPU->bf16_weights = 1;
    step_out_free(&ref32);
    step_out_free(&ref16);
    model_free(probe);
    batch_free(&b);
}

/* ---- benchmarks (GPU only) ---- */

#define BCALL(what, call)                                                                          \
    do {                                                                                           \
        if ((call) != 0) {                                                                         \
            bench(what, NAN, "", "failed: %s", ops_last_error(GPU));                               \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

/* matmul FLOPs of one token's forward + backward (6 per weight) plus causal attention
 * (forward 2 x 2 x T/2 x D per head and layer, backward twice that: 6 L Hq D T) */
static double train_flops_per_token(const model_config *c, int T) {
    double C = c->hidden_size, I = c->intermediate_size, D = c->head_dim;
    double Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, L = c->num_hidden_layers;
    double per_layer = C * (Hq + 2 * Hkv) * D + Hq * D * C + 3 * C * I;
    double weights = L * per_layer + (double)c->vocab_size * C; /* + lm_head */
    return 6.0 * weights + 6.0 * L * Hq * D * (double)T;
}

/* lora_rank > 0: a LoRA adapter of that rank on all seven projections trains (the base
 * frozen: no weight-gradient GEMMs, no optimizer state for it) */
static void b_train(const char *label, const char *json, int T, int seqs, int steps,
                    int lora_rank) {
    model_config cfg;
    chord_err err = {0};
    model *m = NULL;
    step_batch b = {0};
    char what[112];
    snprintf(what, sizeof what, "train %s T=%d x %d", label, T, seqs);
    if (model_config_parse(json, &cfg, &err) != 0) {
        bench(what, NAN, "", "config: %s", err.msg);
        return;
    }
    int *lens = xmalloc((size_t)seqs * sizeof(int));
    for (int s = 0; s < seqs; s++)
        lens[s] = T;
    batch_make(&b, lens, NULL, seqs, cfg.vocab_size, 5);
    free(lens);
    size_t fb = 0, tb = 0;
    ops_mem_info(GPU, &fb, &tb);
    model_lora_config lc = {
        .rank = lora_rank, .alpha = 2.0 * lora_rank, .targets = (1u << MODEL_LORA_N_TARGETS) - 1};
    if (model_create(&cfg, GPU, &m, &err) != 0 || model_init_random(m, 1, &err) != 0 ||
        (lora_rank > 0 && model_lora_attach(m, &lc, 1, &err) != 0)) {
        bench(what, NAN, "", "%s (%.1f GiB free)", err.msg, fb / 1073741824.0);
        goto out;
    }
    const model_batch mb = {b.N, b.S, b.tokens, b.positions, b.cu, b.targets, NULL};
    double t = 0.0;
    for (int it = 0; it < steps + 1; it++) {
        if (profile_mode && it == 1) cudaProfilerStart();
        double t0 = now_s();
        if (model_zero_grad(m, &err) != 0 || model_forward(m, &mb, 1.0f, NULL, NULL, &err) != 0 ||
            model_backward(m, b.dlogp, NULL, &err) != 0 ||
            model_adamw_step(m, 1e-5f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, NULL, &err) != 0 ||
            ops_sync(GPU) != 0) {
            bench(what, NAN, "", "%s %s", err.msg, ops_last_error(GPU));
            goto out;
        }
        if (it > 0) t += now_s() - t0; /* the first step allocates */
        if (profile_mode && it == 1) {
            cudaProfilerStop();
            printf("profile: train %s step %d took %.2f ms (wall, synchronised)\n", label, it,
                   1e3 * (now_s() - t0));
        }
    }
    double tps = (double)b.N * steps / t;
    double flops = train_flops_per_token(&cfg, T);
    size_t fa = 0;
    ops_mem_info(GPU, &fa, &tb);
    bench(what, tps, "tok/s",
          "%zu params (%zu trained), %.1f ms/step, MFU %.1f%% of %.0f TFLOP/s (full-model FLOPs), "
          "%.2f GiB in use",
          m->num_params, model_trainable_params(m), 1e3 * t / steps,
          100.0 * tps * flops / (PEAK_BF16_TFLOPS * 1e12), PEAK_BF16_TFLOPS,
          (double)(fb - fa) / 1073741824.0);
out:
    model_free(m);
    batch_free(&b);
}

static void b_decode(const char *label, const char *json, int prompt, int steps) {
    static const int batches[] = {1, 32, 256};
    model_config cfg;
    chord_err err = {0};
    model *m = NULL;
    model_kv_cache *kv = NULL;
    int32_t *tok = NULL, *cu = NULL, *slots = NULL, *pos = NULL, *next = NULL;
    float *u = NULL, *lp = NULL;
    char what[112];
    if (model_config_parse(json, &cfg, &err) != 0) return;
    const int maxB = 256;
    if (model_create(&cfg, GPU, &m, &err) != 0 || model_init_random(m, 1, &err) != 0 ||
        model_kv_create(m, maxB, prompt + steps + 1, &kv, &err) != 0) {
        snprintf(what, sizeof what, "decode %s", label);
        bench(what, NAN, "", "%s", err.msg);
        goto out;
    }
    tok = xmalloc((size_t)maxB * prompt * sizeof *tok);
    cu = xmalloc((size_t)(maxB + 1) * sizeof *cu);
    slots = xmalloc(maxB * sizeof *slots);
    pos = xmalloc(maxB * sizeof *pos);
    next = xmalloc(maxB * sizeof *next);
    u = xmalloc(maxB * sizeof *u);
    lp = xmalloc(maxB * sizeof *lp);
    seed(3);
    for (int i = 0; i < maxB * prompt; i++)
        tok[i] = (int32_t)(urand() * cfg.vocab_size);
    for (int s = 0; s <= maxB; s++)
        cu[s] = s * prompt;
    for (int s = 0; s < maxB; s++)
        slots[s] = s;
    const float *logits = NULL;
    /* prefill in groups of 32 prompts */
    for (int s0 = 0; s0 < maxB; s0 += 32) {
        int32_t cu2[33];
        for (int i = 0; i <= 32; i++)
            cu2[i] = i * prompt;
        if (model_prefill(m, kv, tok + (size_t)s0 * prompt, cu2, 32, slots + s0, &logits, &err)) {
            snprintf(what, sizeof what, "decode %s", label);
            bench(what, NAN, "", "prefill: %s", err.msg);
            goto out;
        }
    }
    for (size_t bi = 0; bi < sizeof batches / sizeof batches[0]; bi++) {
        int B = batches[bi];
        snprintf(what, sizeof what, "decode %s batch %d (model + sample)", label, B);
        for (int b = 0; b < B; b++)
            next[b] = tok[(size_t)b * prompt + prompt - 1];
        double t = 0.0;
        for (int st = 0; st < steps + 1; st++) {
            for (int b = 0; b < B; b++) {
                pos[b] = prompt + st;
                u[b] = (float)urand();
            }
            const int prof = profile_mode && st == 1 && B == profile_mode;
            if (prof) cudaProfilerStart();
            double t0 = now_s();
            if (model_decode(m, kv, next, pos, slots, B, &logits, &err) != 0) {
                bench(what, NAN, "", "%s", err.msg);
                goto out;
            }
            BCALL(what, ops_sample(GPU, next, lp, logits, B, cfg.vocab_size, 0.8f, 0.95f, u));
            if (st > 0) t += now_s() - t0;
            if (prof) {
                cudaProfilerStop();
                printf("profile: decode %s batch %d step took %.3f ms (wall)\n", label, B,
                       1e3 * (now_s() - t0));
            }
        }
        bench(what, (double)B * steps / t, "tok/s", "%.2f ms/step, context %d..%d", 1e3 * t / steps,
              prompt, prompt + steps);
    }
out:
    if (kv) model_kv_free(kv);
    model_free(m);
    free(tok), free(cu), free(slots), free(pos), free(next), free(u), free(lp);
}

/* scale: 0 full, 1 quick, 2 tiny (the emulator) */
static void b_bandwidth(int scale) {
    const size_t n = scale == 2   ? ((size_t)1 << 20)
                     : scale == 1 ? ((size_t)64 << 20)
                                  : ((size_t)256 << 20); /* floats */
    const int iters = 10;
    float *a = ops_alloc(GPU, n * sizeof(float));
    float *b = ops_alloc(GPU, n * sizeof(float));
    float *c = ops_alloc(GPU, n / 4 * sizeof(float));
    float *d = ops_alloc(GPU, n / 4 * sizeof(float));
    int32_t *tok = NULL, *tg = NULL;
    double copy_gbs = 0.0, t0, t;
    char what[112];
    if (!a || !b || !c || !d) {
        bench("bandwidth", NAN, "", "alloc: %s", ops_last_error(GPU));
        goto out;
    }
#define TIME_OP(label, bytes, call)                                                                \
    do {                                                                                           \
        BCALL(label, call);                                                                        \
        BCALL(label, ops_sync(GPU));                                                               \
        t0 = now_s();                                                                              \
        for (int it_ = 0; it_ < iters; it_++)                                                      \
            BCALL(label, call);                                                                    \
        BCALL(label, ops_sync(GPU));                                                               \
        t = (now_s() - t0) / iters;                                                                \
    } while (0)
    TIME_OP("copy", 0, ops_copy(GPU, b, a, n * sizeof(float)));
    copy_gbs = 2.0 * n * sizeof(float) / t / 1e9;
    bench("device copy (cudaMemcpy D2D, read + write)", copy_gbs, "GB/s", "%.0f MiB",
          n * 4.0 / 1048576.0);
#define REPORT(label, bytes)                                                                       \
    do {                                                                                           \
        double gbs_ = (double)(bytes) / t / 1e9;                                                   \
        bench(label, gbs_, "GB/s", "%.0f%% of copy", 100.0 * gbs_ / copy_gbs);                     \
    } while (0)
    TIME_OP("add_inplace", 0, ops_add_inplace(GPU, a, b, n));
    REPORT("add_inplace", 3.0 * n * 4);
    TIME_OP("scale_inplace", 0, ops_scale_inplace(GPU, a, 0.999f, n));
    REPORT("scale_inplace", 2.0 * n * 4);
    {
        double ss;
        TIME_OP("sum_squares", 0, ops_sum_squares(GPU, &ss, a, n));
        REPORT("sum_squares (incl. read-back)", 1.0 * n * 4);
    }
    {
        size_t m4 = n / 4;
        ops_zero(GPU, d, m4 * sizeof(float));
        TIME_OP("adamw_update", 0,
                ops_adamw_update(GPU, a, b, c, d, m4, 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1, 1.0f));
        REPORT("adamw_update (4 reads, 3 writes)", 28.0 * m4);
    }
    {
        const int C = 4096, N = (int)(n / 4 / C);
        TIME_OP("rmsnorm", 0, ops_rmsnorm_forward(GPU, c, d, a, C, b, N, C, 1e-6f));
        snprintf(what, sizeof what, "rmsnorm_forward N=%d C=%d", N, C);
        REPORT(what, 2.0 * N * C * 4);
    }
    {
        const int I = 4864, N = (int)(n / 4 / I);
        TIME_OP("swiglu", 0, ops_swiglu_forward(GPU, c, a, 2 * I, a + I, 2 * I, N, I));
        snprintf(what, sizeof what, "swiglu_forward N=%d I=%d", N, I);
        REPORT(what, 3.0 * N * I * 4);
    }
    {
        const int V = 151936, N = (int)(n / 4 / V);
        tg = ops_alloc(GPU, (size_t)N * sizeof(int32_t));
        BCALL("logprob", tg ? 0 : -1);
        TIME_OP("logprob", 0, ops_logprob_forward(GPU, b, b + N, b + 2 * N, a, tg, N, V, 1.0f));
        snprintf(what, sizeof what, "logprob_forward N=%d V=%d (+entropy)", N, V);
        REPORT(what, 1.0 * N * V * 4);
        TIME_OP("logprob_backward", 0,
                ops_logprob_backward(GPU, c, b, b + N, a, b + 2 * N, tg, N, V, 1.0f));
        snprintf(what, sizeof what, "logprob_backward N=%d V=%d (+entropy)", N, V);
        REPORT(what, 3.0 * N * V * 4);
    }
    {
        const int C = 896, N = (int)(n / 4 / C);
        tok = ops_alloc(GPU, (size_t)N * sizeof(int32_t));
        BCALL("embedding", tok ? 0 : -1);
        TIME_OP("embedding", 0, ops_embedding_forward(GPU, c, tok, a, N, C, 1000));
        snprintf(what, sizeof what, "embedding_forward N=%d C=%d", N, C);
        REPORT(what, 2.0 * N * C * 4);
    }
#undef TIME_OP
#undef REPORT
out:
    if (a) ops_free(GPU, a);
    if (b) ops_free(GPU, b);
    if (c) ops_free(GPU, c);
    if (d) ops_free(GPU, d);
    if (tok) ops_free(GPU, tok);
    if (tg) ops_free(GPU, tg);
}

/* ---- output ---- */

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fprintf(f, "\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            fprintf(f, "\\u%04x", *s);
        else
            fputc(*s, f);
    }
    fputc('"', f);
}

static void json_num(FILE *f, double v) {
    if (isfinite(v))
        fprintf(f, "%.9g", v);
    else
        fprintf(f, "null");
}

static int write_results(const char *dir, const char *device, const char *when) {
    char path[4096];
    snprintf(path, sizeof path, "%s/gpu_check.md", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "gpu_check: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "# gpu_check — %s, %s\n\n", device, when);
    fprintf(f,
            "%d checks, %d failed. err = ||cuda - cpu|| / ||cpu|| (see tests/gpu/gpu_check.c)."
            "\n\n",
            nchecks, nfailed);
    fprintf(f, "| check | err | bound | result | note |\n|---|---|---|---|---|\n");
    for (int i = 0; i < nchecks; i++)
        fprintf(f, "| %s | %.3g | %.0e | %s | %s |\n", checks[i].name, checks[i].err, checks[i].tol,
                checks[i].pass ? "ok" : "**FAIL**", checks[i].note);
    if (nbench > 0) {
        fprintf(f, "\n| benchmark | value | unit | note |\n|---|---|---|---|\n");
        for (int i = 0; i < nbench; i++)
            fprintf(f, "| %s | %.2f | %s | %s |\n", benches[i].name, benches[i].value,
                    benches[i].unit, benches[i].note);
    }
    fclose(f);
    snprintf(path, sizeof path, "%s/gpu_check.json", dir);
    f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "gpu_check: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "{\n  \"device\": ");
    json_str(f, device);
    fprintf(f, ",\n  \"when\": ");
    json_str(f, when);
    fprintf(f, ",\n  \"checks_failed\": %d,\n  \"checks\": [\n", nfailed);
    for (int i = 0; i < nchecks; i++) {
        fprintf(f, "    {\"name\": ");
        json_str(f, checks[i].name);
        fprintf(f, ", \"err\": ");
        json_num(f, checks[i].err);
        fprintf(f, ", \"bound\": ");
        json_num(f, checks[i].tol);
        fprintf(f, ", \"pass\": %s, \"note\": ", checks[i].pass ? "true" : "false");
        json_str(f, checks[i].note);
        fprintf(f, "}%s\n", i + 1 < nchecks ? "," : "");
    }
    fprintf(f, "  ],\n  \"benchmarks\": [\n");
    for (int i = 0; i < nbench; i++) {
        fprintf(f, "    {\"name\": ");
        json_str(f, benches[i].name);
        fprintf(f, ", \"value\": ");
        json_num(f, benches[i].value);
        fprintf(f, ", \"unit\": ");
        json_str(f, benches[i].unit);
        fprintf(f, ", \"note\": ");
        json_str(f, benches[i].note);
        fprintf(f, "}%s\n", i + 1 < nbench ? "," : "");
    }
    fprintf(f, "  ]\n}\n");
    fclose(f);
    printf("gpu_check: results in %s/gpu_check.md and gpu_check.json\n", dir);
    return 0;
}

int main(int argc, char **argv) {
    const char *out = getenv("OUT");
    int do_bench = 1, do_step = 1, quick = 0;
    const char *only = NULL; /* --bench NAME */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            out = argv[++i];
        else if (strcmp(argv[i], "--no-bench") == 0)
            do_bench = 0;
        else if (strcmp(argv[i], "--no-step") == 0)
            do_step = 0;
        else if (strcmp(argv[i], "--quick") == 0)
            quick = 1;
        else if (strcmp(argv[i], "--tiny-bench") == 0)
            quick = 2;
        else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc &&
                 (strcmp(argv[i + 1], "bandwidth") == 0 || strcmp(argv[i + 1], "train-100m") == 0 ||
                  strcmp(argv[i + 1], "train-0.5b") == 0 ||
                  strcmp(argv[i + 1], "train-0.5b-lora") == 0 ||
                  strcmp(argv[i + 1], "decode-0.5b") == 0))
            only = argv[++i];
        else if (strcmp(argv[i], "--profile") == 0 && i + 1 < argc && atoi(argv[i + 1]) > 0)
            profile_mode = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: gpu_check [--out DIR] [--no-bench] [--no-step] [--quick] "
                            "[--tiny-bench] [--bench "
                            "bandwidth|train-100m|train-0.5b|train-0.5b-lora|decode-0.5b] "
                            "[--profile BATCH]\n");
            return 2;
        }
    }
    if (!out || !*out) out = ".";
    if (ops_cuda_device_count() == 0) {
        printf("SKIP: no CUDA device (ops_cuda_device_count() == 0); nothing was checked\n");
        return 77;
    }
    char err[512];
    CPU = ops_open("cpu", 0, err, sizeof err);
    if (!CPU) {
        fprintf(stderr, "gpu_check: %s\n", err);
        return 1;
    }
    GPU = ops_open("cuda:0", 0, err, sizeof err);
    if (!GPU) {
        fprintf(stderr, "gpu_check: %s\n", err);
        ops_close(CPU);
        return 1;
    }
    char device[320] = "unknown CUDA device";
    struct cudaDeviceProp prop;
    int drv = 0, rt = 0;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess) {
        cudaDriverGetVersion(&drv);
        cudaRuntimeGetVersion(&rt);
        snprintf(device, sizeof device, "%s (sm_%d%d, %d SMs, %.1f GiB; driver %d, runtime %d)",
                 prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                 prop.totalGlobalMem / 1073741824.0, drv, rt);
    }
    char when[64];
    time_t tt = time(NULL);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", gmtime(&tt));
    printf("gpu_check on %s, CPU reference with %d threads\n", device, CPU->threads);

    if (only) { /* one benchmark, no checks */
        set_matmul(OPS_CUDA_MATMUL_BF16);
        const int steps = quick ? 2 : 5, seqs = quick ? 2 : 8;
        if (strcmp(only, "bandwidth") == 0) b_bandwidth(quick);
        if (strcmp(only, "train-100m") == 0) b_train("~100M", CFG_100M, 1024, seqs, steps, 0);
        if (strcmp(only, "train-0.5b") == 0)
            b_train("0.5B (Qwen2.5-0.5B shapes)", CFG_05B, 1024, seqs, steps, 0);
        if (strcmp(only, "train-0.5b-lora") == 0)
            b_train("0.5B LoRA r=16 all-linear", CFG_05B, 1024, seqs, steps, 16);
        if (strcmp(only, "decode-0.5b") == 0) b_decode("0.5B", CFG_05B, 64, quick ? 8 : 32);
        write_results(out, device, when);
        ops_close(GPU);
        ops_close(CPU);
        return 0;
    }
    t_memory();
    set_matmul(OPS_CUDA_MATMUL_FP32);
    t_matmul("fp32", TOL_FP32);
    set_matmul(OPS_CUDA_MATMUL_BF16);
    t_matmul("bf16", TOL_BF16);
    t_matmul_bf16();
    t_embedding();
    t_rmsnorm();
    t_rope();
    static const int heads[] = {64, 80, 128, 256};
    for (size_t i = 0; i < sizeof heads / sizeof heads[0]; i++)
        t_attention(heads[i], OPS_CUDA_ATTENTION_FLASH);
    t_attention(64, OPS_CUDA_ATTENTION_NAIVE);
    t_attention(80, OPS_CUDA_ATTENTION_NAIVE);
    static const int tc_heads[] = {64, 80, 128};
    for (size_t i = 0; i < sizeof tc_heads / sizeof tc_heads[0]; i++)
        t_attention(tc_heads[i], OPS_CUDA_ATTENTION_TENSOR);
    t_attention_heads(64, OPS_CUDA_ATTENTION_TENSOR, 4, 4); /* no GQA: dK/dV written directly */
    t_decode(64);
    t_decode(128);
    t_swiglu();
    t_swiglu_bf16();
    t_elementwise();
    t_logprob();
    t_adamw();
    t_sample();
    t_deferred_errors();
    for (size_t i = 0; i < sizeof CFG_SMALL / sizeof CFG_SMALL[0]; i++) {
        char label[32];
        snprintf(label, sizeof label, "small-%zu", i + 1);
        t_full_step(label, CFG_SMALL[i], 0, 0);
        snprintf(label, sizeof label, "small-%zu shared", i + 1);
        t_full_step(label, CFG_SMALL[i], 1, 0);
        snprintf(label, sizeof label, "small-%zu LoRA", i + 1);
        t_full_step(label, CFG_SMALL[i], 0, 1);
    }
    if (do_step) t_full_step("100M", CFG_100M, 0, 0);
    if (do_bench) {
        set_matmul(OPS_CUDA_MATMUL_BF16);
        b_bandwidth(quick);
        if (quick == 2) { /* the benchmark code paths on a small model (emulator) */
            b_train("small-1", CFG_SMALL[0], 64, 2, 1, 0);
            b_train("small-1 LoRA r=4", CFG_SMALL[0], 64, 2, 1, 4);
            b_decode("small-1", CFG_SMALL[0], 8, 2);
        } else {
            b_train("~100M", CFG_100M, 1024, quick ? 2 : 8, quick ? 2 : 5, 0);
            b_train("0.5B (Qwen2.5-0.5B shapes)", CFG_05B, 1024, quick ? 2 : 8, quick ? 2 : 5, 0);
            b_train("0.5B LoRA r=16 all-linear", CFG_05B, 1024, quick ? 2 : 8, quick ? 2 : 5, 16);
            GPU->bf16_weights = 0; /* float32 weights (bf16 products inside cuBLAS), for the ratio */
            b_train("0.5B, fp32 weights", CFG_05B, 1024, quick ? 2 : 8, quick ? 2 : 5, 0);
            b_decode("0.5B, fp32 weights", CFG_05B, 64, quick ? 8 : 32);
            GPU->bf16_weights = 1;
            set_attention(OPS_CUDA_ATTENTION_FLASH); /* the fp32 CUDA-core kernels, for the ratio */
            b_train("0.5B, fp32 flash attention", CFG_05B, 1024, quick ? 2 : 8, quick ? 2 : 5, 0);
            set_attention(OPS_CUDA_ATTENTION_AUTO);
            b_decode("0.5B", CFG_05B, 64, quick ? 8 : 32);
        }
    }
    printf("\n%d checks, %d failed\n", nchecks, nfailed);
    write_results(out, device, when);
    ops_close(GPU);
    ops_close(CPU);
    return nfailed ? 1 : 0;
}
