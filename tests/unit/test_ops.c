/* test_ops.c — the CPU backend of kernels/ops.h against direct double-precision references and
 * central finite differences (every backward op). Shapes are small so finite differences stay
 * cheap; a few larger cases cross the attention block size and the threaded GEMM split. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/cpu/cpu_vmath.h"
#include "kernels/ops.h"

/* OpenBLAS (cblas.h is not included: its <complex.h> `I` macro clashes with ops.h) */
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);

/* ---- helpers ---- */

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static void rng_seed(uint64_t s) {
    rng_state = s * 0x9E3779B97F4A7C15ull + 1;
}
static double urand(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}
static float frand(float a) {
    return (float)((urand() * 2.0 - 1.0) * a);
}
static void fill(float *x, size_t n, float a) {
    for (size_t i = 0; i < n; i++)
        x[i] = frand(a);
}

static ops_ctx *open_cpu(int threads) {
    char err[256] = "";
    ops_ctx *c = ops_open("cpu", threads, err, sizeof err);
    if (!c) fail_msg("ops_open: %s", err);
    assert_string_equal(c->be->name, "cpu");
    return c;
}

/* every buffer of a test is remembered and freed by done() (so ASan's leak check passes) */
enum { MAXBUF = 256 };
static void *bufs[MAXBUF];
static int nbufs;
static void *dalloc(ops_ctx *c, size_t bytes) {
    void *p = ops_alloc(c, bytes);
    assert_non_null(p);
    assert_true(nbufs < MAXBUF);
    bufs[nbufs++] = p;
    return p;
}
static float *falloc(ops_ctx *c, size_t n) {
    return dalloc(c, n * sizeof(float));
}
static int32_t *ialloc(ops_ctx *c, size_t n) {
    return dalloc(c, n * sizeof(int32_t));
}
static void dfree(ops_ctx *c, void *p) {
    for (int i = 0; i < nbufs; i++)
        if (bufs[i] == p) {
            bufs[i] = bufs[--nbufs];
            ops_free(c, p);
            return;
        }
    fail_msg("dfree: unknown buffer");
}
static void done(ops_ctx *c) {
    while (nbufs > 0)
        ops_free(c, bufs[--nbufs]);
    ops_close(c);
}

#define OK(call)                                                                                   \
    do {                                                                                           \
        if ((call) != 0) fail_msg("%s failed: %s", #call, ops_last_error(c));                      \
    } while (0)

static void expect_close(const char *what, size_t i, double got, double want, double atol,
                         double rtol) {
    double d = fabs(got - want);
    if (!(d <= atol + rtol * fabs(want)))
        fail_msg("%s[%zu]: got %.9g want %.9g (|diff| %.3g)", what, i, got, want, d);
}
static void expect_all_close(const char *what, const float *got, const double *want, size_t n,
                             double atol, double rtol) {
    for (size_t i = 0; i < n; i++)
        expect_close(what, i, got[i], want[i], atol, rtol);
}

/* central finite differences of loss() with respect to x[0..n) against grad */
typedef double (*loss_fn)(void *ud);
static void check_fd(const char *what, float *x, size_t n, const float *grad, loss_fn loss,
                     void *ud, float h, double atol, double rtol) {
    for (size_t i = 0; i < n; i++) {
        float save = x[i];
        x[i] = save + h;
        double lp = loss(ud);
        x[i] = save - h;
        double lm = loss(ud);
        x[i] = save;
        double fd = (lp - lm) / (2.0 * (double)h);
        expect_close(what, i, grad[i], fd, atol, rtol);
    }
}
static double wsum(const float *y, const float *r, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)y[i] * (double)r[i];
    return s;
}

/* ---- open / close / errors ---- */

static void test_open_close(void **state) {
    (void)state;
    char err[256];
    ops_ctx *c = ops_cpu_open(0, err, sizeof err);
    assert_non_null(c);
    assert_true(c->threads >= 1);
    assert_int_equal(c->device_index, -1);
    float *a = falloc(c, 1000);
    for (int i = 0; i < 1000; i++)
        assert_true(a[i] == 0.0f);
    float host[4] = {1, 2, 3, 4}, back[4] = {0};
    OK(ops_to_device(c, a, host, sizeof host));
    OK(ops_copy(c, a + 4, a, sizeof host));
    OK(ops_to_host(c, back, a + 4, sizeof back));
    assert_memory_equal(host, back, sizeof host);
    OK(ops_zero(c, a, 8 * sizeof(float)));
    assert_true(a[5] == 0.0f);
    OK(ops_sync(c));
    /* a bad shape fails with a message */
    assert_int_equal(ops_rmsnorm_forward(c, a, NULL, a, 2, a, 1, 4, 1e-6f), -1);
    assert_true(strlen(ops_last_error(c)) > 0);
    int32_t tok[1] = {7};
    assert_int_equal(ops_embedding_forward(c, a, tok, a, 1, 2, 5), -1);
    dfree(c, a);
    ops_free(c, NULL);
    ops_close(c);
    ops_close(NULL);
    assert_null(ops_open("tpu", 1, err, sizeof err));
}

/* ops_mem_usage: the bytes of ops_alloc's live buffers and their high-water mark, counted per
 * context, a freed buffer taken off, the peak restarted from what is live by ops_mem_reset_peak */
static void test_mem_usage(void **state) {
    (void)state;
    char err[256];
    ops_ctx *c = ops_cpu_open(1, err, sizeof err), *d = ops_cpu_open(1, err, sizeof err);
    assert_non_null(c);
    assert_non_null(d);
    size_t live = 1, peak = 1;
    ops_mem_usage(c, &live, &peak);
    assert_true(live == 0 && peak == 0);
    void *p[40];
    for (int i = 0; i < 40; i++) /* more than the first array holds: it grows */
        assert_non_null(p[i] = ops_alloc(c, 1000 + (size_t)i));
    void *q = ops_alloc(d, 12345);
    assert_non_null(q);
    const size_t all = 40 * 1000 + 39 * 40 / 2;
    ops_mem_usage(c, &live, &peak);
    assert_true(live == all && peak == all);
    ops_free(c, p[7]);
    ops_free(c, p[0]);
    ops_mem_usage(c, &live, &peak);
    assert_true(live == all - 1007 - 1000 && peak == all);
    ops_mem_reset_peak(c);
    ops_mem_usage(c, NULL, &peak);
    assert_true(peak == all - 2007);
    ops_mem_usage(d, &live, &peak);
    assert_true(live == 12345 && peak == 12345);
    for (int i = 1; i < 40; i++)
        if (i != 7) ops_free(c, p[i]);
    ops_mem_usage(c, &live, &peak);
    assert_true(live == 0 && peak == all - 2007);
    assert_non_null(p[0] = ops_alloc(c, 5)); /* counting starts again after the arrays went */
    ops_mem_usage(c, &live, NULL);
    assert_true(live == 5);
    ops_free(c, p[0]);
    ops_free(d, q);
    ops_close(c);
    ops_close(d);
}

/* ops_<op> runs the slot of the table c->be points to at the time of the call */
static int g_scale_calls;
static int counting_scale(ops_ctx *c, float *a, float s, size_t n) {
    g_scale_calls++;
    return 0;
}

static void test_calls_dispatch_through_table(void **state) {
    (void)state;
    ops_ctx *c = open_cpu(1);
    float *a = falloc(c, 4);
    OK(ops_scale_inplace(c, a, 2.0f, 4));
    assert_int_equal(g_scale_calls, 0);
    const ops_backend *real = c->be;
    ops_backend counting = *real;
    counting.scale_inplace = counting_scale;
    c->be = &counting;
    OK(ops_scale_inplace(c, a, 2.0f, 4));
    c->be = real;
    assert_int_equal(g_scale_calls, 1);
    done(c);
}

/* a backend table with an empty slot is refused by name, not called */
static void test_backend_check(void **state) {
    (void)state;
    char err[256];
    ops_ctx *c = ops_cpu_open(1, err, sizeof err);
    assert_non_null(c);
    assert_int_equal(ops_backend_check(c->be, err, sizeof err), 0);
    ops_backend holes = *c->be;
    holes.swiglu_backward = NULL;
    assert_int_equal(ops_backend_check(&holes, err, sizeof err), -1);
    assert_non_null(strstr(err, "swiglu_backward"));
    holes = *c->be;
    holes.close = NULL;
    assert_int_equal(ops_backend_check(&holes, err, sizeof err), -1);
    assert_non_null(strstr(err, "close"));
    assert_int_equal(ops_backend_check(NULL, err, sizeof err), -1);
    ops_close(c);
}

static void test_expf(void **state) {
    (void)state;
    double worst = 0.0;
    for (int i = 0; i <= 200000; i++) {
        float x = -87.0f + 175.0f * (float)i / 200000.0f;
        double want = exp((double)x), got = cpu_expf(x);
        double rel = fabs(got - want) / want;
        if (rel > worst) worst = rel;
    }
    assert_true(worst < 3e-7);
    assert_true(cpu_expf(-INFINITY) == 0.0f);
    assert_true(cpu_expf(0.0f) == 1.0f);
    assert_true(isnan(cpu_expf(NAN)));
}

/* ---- matmul ---- */

typedef struct {
    ops_ctx *c;
    float *out, *inp, *w, *b, *r;
    int N, C, OC;
} mm_case;

static double mm_loss(void *ud) {
    mm_case *m = ud;
    ops_ctx *c = m->c;
    OK(ops_matmul_forward(c, m->out, m->inp, m->w, m->b, m->N, m->C, m->OC));
    return wsum(m->out, m->r, (size_t)m->N * m->OC);
}

static void matmul_case(ops_ctx *c, int N, int C, int OC, int fd) {
    mm_case m = {c,
                 falloc(c, (size_t)N * OC),
                 falloc(c, (size_t)N * C),
                 falloc(c, (size_t)OC * C),
                 falloc(c, OC),
                 falloc(c, (size_t)N * OC),
                 N,
                 C,
                 OC};
    fill(m.inp, (size_t)N * C, 1.0f);
    fill(m.w, (size_t)OC * C, 0.5f);
    fill(m.b, OC, 0.5f);
    fill(m.r, (size_t)N * OC, 1.0f);
    OK(ops_matmul_forward(c, m.out, m.inp, m.w, m.b, N, C, OC));
    double *want = calloc((size_t)N * OC, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = m.b[o];
            for (int i = 0; i < C; i++)
                s += (double)m.inp[n * C + i] * m.w[o * C + i];
            want[n * OC + o] = s;
        }
    expect_all_close("matmul out", m.out, want, (size_t)N * OC, 1e-4, 1e-4);
    /* no bias */
    OK(ops_matmul_forward(c, m.out, m.inp, m.w, NULL, N, C, OC));
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++)
            want[n * OC + o] -= m.b[o];
    expect_all_close("matmul out (no bias)", m.out, want, (size_t)N * OC, 1e-4, 1e-4);

    /* backward: dout = r; dweight and dbias accumulate onto 1.0; dinp overwrite, then += */
    float *dinp = falloc(c, (size_t)N * C), *dw = falloc(c, (size_t)OC * C), *db = falloc(c, OC);
    for (size_t i = 0; i < (size_t)OC * C; i++)
        dw[i] = 1.0f;
    for (int i = 0; i < OC; i++)
        db[i] = 1.0f;
    for (size_t i = 0; i < (size_t)N * C; i++)
        dinp[i] = 123.0f;
    OK(ops_matmul_backward(c, dinp, dw, db, m.r, m.inp, m.w, N, C, OC, 0));
    double *wdi = calloc((size_t)N * C, sizeof(double)),
           *wdw = calloc((size_t)OC * C, sizeof(double)), *wdb = calloc((size_t)OC, sizeof(double));
    for (int n = 0; n < N; n++)
        for (int i = 0; i < C; i++) {
            double s = 0;
            for (int o = 0; o < OC; o++)
                s += (double)m.r[n * OC + o] * m.w[o * C + i];
            wdi[n * C + i] = s;
        }
    for (int o = 0; o < OC; o++) {
        double sb = 1.0;
        for (int n = 0; n < N; n++)
            sb += m.r[n * OC + o];
        wdb[o] = sb;
        for (int i = 0; i < C; i++) {
            double s = 1.0;
            for (int n = 0; n < N; n++)
                s += (double)m.r[n * OC + o] * m.inp[n * C + i];
            wdw[o * C + i] = s;
        }
    }
    expect_all_close("matmul dinp", dinp, wdi, (size_t)N * C, 1e-4, 1e-4);
    expect_all_close("matmul dweight", dw, wdw, (size_t)OC * C, 1e-4, 1e-4);
    expect_all_close("matmul dbias", db, wdb, OC, 1e-4, 1e-4);
    /* dinp accumulate: a second call doubles dinp; dweight gets a second contribution */
    OK(ops_matmul_backward(c, dinp, NULL, NULL, m.r, m.inp, m.w, N, C, OC, 1));
    for (size_t i = 0; i < (size_t)N * C; i++)
        wdi[i] *= 2.0;
    expect_all_close("matmul dinp (accumulate)", dinp, wdi, (size_t)N * C, 1e-4, 1e-4);

    if (fd) {
        float *g = falloc(c, (size_t)N * C), *gw = falloc(c, (size_t)OC * C), *gb = falloc(c, OC);
        OK(ops_matmul_backward(c, g, gw, gb, m.r, m.inp, m.w, N, C, OC, 0));
        check_fd("matmul d/dinp", m.inp, (size_t)N * C, g, mm_loss, &m, 1e-2f, 2e-3, 1e-2);
        check_fd("matmul d/dweight", m.w, (size_t)OC * C, gw, mm_loss, &m, 1e-2f, 2e-3, 1e-2);
        check_fd("matmul d/dbias", m.b, OC, gb, mm_loss, &m, 1e-2f, 2e-3, 1e-2);
        dfree(c, g);
        dfree(c, gw);
        dfree(c, gb);
    }
    free(want);
    free(wdi);
    free(wdw);
    free(wdb);
    dfree(c, dinp);
    dfree(c, dw);
    dfree(c, db);
    dfree(c, m.out);
    dfree(c, m.inp);
    dfree(c, m.w);
    dfree(c, m.b);
    dfree(c, m.r);
}

static void test_matmul(void **state) {
    (void)state;
    rng_seed(1);
    ops_ctx *c = open_cpu(2);
    matmul_case(c, 5, 7, 6, 1);
    matmul_case(c, 1, 33, 17, 1);
    matmul_case(c, 203, 96, 161, 0); /* threaded split over rows */
    matmul_case(c, 9, 128, 700, 0);  /* threaded split over columns */
    matmul_case(c, 1, 300, 5000, 0); /* one row: GEMV split over columns */
    /* someone else set BLAS to 2 threads: the backend puts it back to 1 before its GEMMs */
    openblas_set_num_threads(2);
    matmul_case(c, 203, 96, 161, 0);
    assert_int_equal(openblas_get_num_threads(), 1);
    done(c);
}

/* ---- embedding ---- */

static void test_embedding(void **state) {
    (void)state;
    rng_seed(2);
    ops_ctx *c = open_cpu(2);
    int N = 9, C = 200, V = 6;
    int32_t *tok = ialloc(c, N);
    int32_t t[9] = {1, 3, 3, 0, 5, 1, 1, 2, 3};
    memcpy(tok, t, sizeof t);
    float *wte = falloc(c, (size_t)V * C), *out = falloc(c, (size_t)N * C);
    float *dout = falloc(c, (size_t)N * C), *dwte = falloc(c, (size_t)V * C);
    fill(wte, (size_t)V * C, 1.0f);
    fill(dout, (size_t)N * C, 1.0f);
    OK(ops_embedding_forward(c, out, tok, wte, N, C, V));
    for (int n = 0; n < N; n++)
        assert_memory_equal(out + n * C, wte + t[n] * C, C * sizeof(float));
    for (size_t i = 0; i < (size_t)V * C; i++)
        dwte[i] = 0.5f;
    OK(ops_embedding_backward(c, dwte, dout, tok, N, C, V));
    for (int v = 0; v < V; v++)
        for (int i = 0; i < C; i++) {
            double s = 0.5;
            for (int n = 0; n < N; n++)
                if (t[n] == v) s += dout[n * C + i];
            expect_close("embedding dwte", (size_t)v * C + i, dwte[v * C + i], s, 1e-6, 1e-6);
        }
    tok[2] = V;
    assert_int_equal(ops_embedding_backward(c, dwte, dout, tok, N, C, V), -1);
    done(c);
}

/* ---- RMSNorm ---- */

typedef struct {
    ops_ctx *c;
    float *out, *rstd, *inp, *w, *r;
    int N, C, ldi;
} rms_case;

static double rms_loss(void *ud) {
    rms_case *m = ud;
    ops_ctx *c = m->c;
    OK(ops_rmsnorm_forward(c, m->out, m->rstd, m->inp, m->ldi, m->w, m->N, m->C, 1e-5f));
    return wsum(m->out, m->r, (size_t)m->N * m->C);
}

static void test_rmsnorm(void **state) {
    (void)state;
    rng_seed(3);
    ops_ctx *c = open_cpu(2);
    int N = 4, C = 11, ldi = 16;
    rms_case m = {c,
                  falloc(c, (size_t)N * C),
                  falloc(c, N),
                  falloc(c, (size_t)N * ldi),
                  falloc(c, C),
                  falloc(c, (size_t)N * C),
                  N,
                  C,
                  ldi};
    fill(m.inp, (size_t)N * ldi, 1.5f);
    fill(m.w, C, 1.0f);
    fill(m.r, (size_t)N * C, 1.0f);
    rms_loss(&m);
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int i = 0; i < C; i++)
            ss += (double)m.inp[n * ldi + i] * m.inp[n * ldi + i];
        double r = 1.0 / sqrt(ss / C + 1e-5);
        expect_close("rmsnorm rstd", n, m.rstd[n], r, 1e-6, 1e-6);
        for (int i = 0; i < C; i++)
            expect_close("rmsnorm out", n * C + i, m.out[n * C + i],
                         m.inp[n * ldi + i] * r * m.w[i], 1e-6, 1e-5);
    }
    float *dinp = falloc(c, (size_t)N * ldi), *dw = falloc(c, C);
    /* dinp accumulates: start from 0.25 everywhere, padding columns must stay 0.25 */
    for (size_t i = 0; i < (size_t)N * ldi; i++)
        dinp[i] = 0.25f;
    for (int i = 0; i < C; i++)
        dw[i] = 0.5f;
    OK(ops_rmsnorm_backward(c, dinp, ldi, dw, m.r, m.inp, m.w, m.rstd, N, C));
    float *g = calloc((size_t)N * ldi, sizeof(float)), *gw = calloc(C, sizeof(float));
    for (size_t i = 0; i < (size_t)N * ldi; i++)
        g[i] = dinp[i] - 0.25f;
    for (int i = 0; i < C; i++)
        gw[i] = dw[i] - 0.5f;
    for (int n = 0; n < N; n++)
        for (int i = C; i < ldi; i++)
            assert_true(dinp[n * ldi + i] == 0.25f);
    /* finite differences on the valid columns only */
    for (int n = 0; n < N; n++)
        check_fd("rmsnorm d/dinp", m.inp + n * ldi, C, g + n * ldi, rms_loss, &m, 1e-2f, 2e-3,
                 1e-2);
    check_fd("rmsnorm d/dweight", m.w, C, gw, rms_loss, &m, 1e-2f, 2e-3, 1e-2);
    free(g);
    free(gw);
    done(c);
}

/* ---- RoPE ---- */

typedef struct {
    ops_ctx *c;
    float *x, *y, *r, *freq;
    int32_t *pos;
    int N, H, D, ldx;
} rope_case;

static double rope_loss(void *ud) {
    rope_case *m = ud;
    ops_ctx *c = m->c;
    memcpy(m->y, m->x, (size_t)m->N * m->ldx * sizeof(float));
    OK(ops_rope_forward(c, m->y, m->ldx, m->pos, m->freq, m->N, m->H, m->D));
    return wsum(m->y, m->r, (size_t)m->N * m->ldx);
}

static void test_rope(void **state) {
    (void)state;
    rng_seed(4);
    ops_ctx *c = open_cpu(2);
    int N = 5, H = 3, D = 8, ldx = 30, half = D / 2;
    rope_case m = {c,
                   falloc(c, (size_t)N * ldx),
                   falloc(c, (size_t)N * ldx),
                   falloc(c, (size_t)N * ldx),
                   falloc(c, half),
                   ialloc(c, N),
                   N,
                   H,
                   D,
                   ldx};
    int32_t pos[5] = {0, 1, 7, 300, 2};
    memcpy(m.pos, pos, sizeof pos);
    for (int i = 0; i < half; i++)
        m.freq[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
    fill(m.x, (size_t)N * ldx, 1.0f);
    fill(m.r, (size_t)N * ldx, 1.0f);
    rope_loss(&m);
    for (int n = 0; n < N; n++)
        for (int j = 0; j < ldx; j++) {
            float want;
            if (j >= H * D) {
                want = m.x[n * ldx + j];
            } else {
                int h = j / D, i = j % D, i0 = i % half;
                float a = (float)pos[n] * m.freq[i0], cs = cosf(a), sn = sinf(a);
                const float *xh = m.x + n * ldx + h * D;
                want = i < half ? xh[i] * cs - xh[i + half] * sn : xh[i] * cs + xh[i - half] * sn;
            }
            expect_close("rope out", n * ldx + j, m.y[n * ldx + j], want, 1e-6, 1e-5);
        }
    /* backward = transpose: gradient of sum(y * r) w.r.t. x */
    float *g = falloc(c, (size_t)N * ldx);
    memcpy(g, m.r, (size_t)N * ldx * sizeof(float));
    OK(ops_rope_backward(c, g, ldx, m.pos, m.freq, N, H, D));
    check_fd("rope d/dx", m.x, (size_t)N * ldx, g, rope_loss, &m, 1e-2f, 1e-3, 1e-3);
    /* the rotation is orthogonal: backward undoes forward */
    memcpy(g, m.x, (size_t)N * ldx * sizeof(float));
    OK(ops_rope_forward(c, g, ldx, m.pos, m.freq, N, H, D));
    OK(ops_rope_backward(c, g, ldx, m.pos, m.freq, N, H, D));
    for (size_t i = 0; i < (size_t)N * ldx; i++)
        expect_close("rope round trip", i, g[i], m.x[i], 1e-6, 1e-5);
    /* a new frequency vector rebuilds the cached table */
    for (int i = 0; i < half; i++)
        m.freq[i] *= 0.5f;
    rope_loss(&m);
    float a = (float)pos[3] * m.freq[1];
    expect_close("rope rescaled", 0, m.y[3 * ldx + 1],
                 m.x[3 * ldx + 1] * cosf(a) - m.x[3 * ldx + 1 + half] * sinf(a), 1e-6, 1e-5);
    done(c);
}

/* ---- SwiGLU ---- */

typedef struct {
    ops_ctx *c;
    float *out, *gu, *r;
    int N, I, ld;
} sw_case;

static double sw_loss(void *ud) {
    sw_case *m = ud;
    ops_ctx *c = m->c;
    OK(ops_swiglu_forward(c, m->out, m->gu, m->ld, m->gu + m->I, m->ld, m->N, m->I));
    return wsum(m->out, m->r, (size_t)m->N * m->I);
}

static void test_swiglu(void **state) {
    (void)state;
    rng_seed(5);
    ops_ctx *c = open_cpu(2);
    int N = 6, I = 300, ld = 2 * I; /* fused gate|up rows */
    sw_case m = {
        c, falloc(c, (size_t)N * I), falloc(c, (size_t)N * ld), falloc(c, (size_t)N * I), N, I, ld};
    fill(m.gu, (size_t)N * ld, 4.0f);
    fill(m.r, (size_t)N * I, 1.0f);
    sw_loss(&m);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < I; i++) {
            double g = m.gu[n * ld + i], u = m.gu[n * ld + I + i];
            expect_close("swiglu out", n * I + i, m.out[n * I + i], g / (1.0 + exp(-g)) * u, 1e-6,
                         1e-5);
        }
    float *dgu = falloc(c, (size_t)N * ld);
    OK(ops_swiglu_backward(c, dgu, dgu + I, ld, m.r, m.gu, m.gu + I, ld, N, I));
    check_fd("swiglu d/dgate,up", m.gu, (size_t)N * ld, dgu, sw_loss, &m, 1e-2f, 2e-3, 1e-2);
    done(c);
}

/* ---- attention ---- */

/* naive double reference: out, lse; q/k/v strided */
static void attn_ref(double *out, double *lse, const float *q, int ldq, const float *k, int ldk,
                     const float *v, int ldv, const int32_t *cu, int S, int Hq, int Hkv, int D) {
    int G = Hq / Hkv;
    double scale = 1.0 / sqrt((double)D);
    for (int s = 0; s < S; s++)
        for (int i = cu[s]; i < cu[s + 1]; i++)
            for (int h = 0; h < Hq; h++) {
                int kh = h / G;
                int L = i - cu[s] + 1;
                double *sc = calloc((size_t)L, sizeof(double)), mx = -INFINITY, l = 0;
                for (int j = 0; j < L; j++) {
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += (double)q[(size_t)i * ldq + h * D + e] *
                             k[(size_t)(cu[s] + j) * ldk + kh * D + e];
                    sc[j] = d * scale;
                    if (sc[j] > mx) mx = sc[j];
                }
                for (int j = 0; j < L; j++)
                    l += exp(sc[j] - mx);
                for (int e = 0; e < D; e++) {
                    double o = 0;
                    for (int j = 0; j < L; j++)
                        o += exp(sc[j] - mx) / l * v[(size_t)(cu[s] + j) * ldv + kh * D + e];
                    out[(size_t)i * Hq * D + h * D + e] = o;
                }
                lse[(size_t)i * Hq + h] = mx + log(l);
                free(sc);
            }
}

/* naive double backward reference */
static void attn_ref_bwd(double *dq, double *dk, double *dv, const float *dout, const float *q,
                         int ldq, const float *k, int ldk, const float *v, int ldv,
                         const int32_t *cu, int S, int N, int Hq, int Hkv, int D) {
    int G = Hq / Hkv;
    double scale = 1.0 / sqrt((double)D);
    memset(dq, 0, (size_t)N * Hq * D * sizeof(double));
    memset(dk, 0, (size_t)N * Hkv * D * sizeof(double));
    memset(dv, 0, (size_t)N * Hkv * D * sizeof(double));
    for (int s = 0; s < S; s++)
        for (int i = cu[s]; i < cu[s + 1]; i++)
            for (int h = 0; h < Hq; h++) {
                int kh = h / G, L = i - cu[s] + 1;
                double *p = calloc((size_t)L, sizeof(double)),
                       *dp = calloc((size_t)L, sizeof(double));
                double mx = -INFINITY, l = 0;
                for (int j = 0; j < L; j++) {
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += (double)q[(size_t)i * ldq + h * D + e] *
                             k[(size_t)(cu[s] + j) * ldk + kh * D + e];
                    p[j] = d * scale;
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < L; j++)
                    l += exp(p[j] - mx);
                double dsum = 0;
                for (int j = 0; j < L; j++) {
                    p[j] = exp(p[j] - mx) / l;
                    double d = 0;
                    for (int e = 0; e < D; e++)
                        d += (double)dout[(size_t)i * Hq * D + h * D + e] *
                             v[(size_t)(cu[s] + j) * ldv + kh * D + e];
                    dp[j] = d;
                    dsum += p[j] * d;
                }
                for (int j = 0; j < L; j++) {
                    double ds = p[j] * (dp[j] - dsum) * scale;
                    for (int e = 0; e < D; e++) {
                        size_t kr = (size_t)(cu[s] + j) * Hkv * D + kh * D + e;
                        dq[(size_t)i * Hq * D + h * D + e] +=
                            ds * k[(size_t)(cu[s] + j) * ldk + kh * D + e];
                        dk[kr] += ds * q[(size_t)i * ldq + h * D + e];
                        dv[kr] += p[j] * dout[(size_t)i * Hq * D + h * D + e];
                    }
                }
                free(p);
                free(dp);
            }
}

typedef struct {
    ops_ctx *c;
    float *qkv, *out, *lse, *r;
    int32_t *cu;
    int S, N, Hq, Hkv, D, ld;
} at_case;

static double at_loss(void *ud) {
    at_case *m = ud;
    ops_ctx *c = m->c;
    const float *q = m->qkv, *k = q + m->Hq * m->D, *v = k + m->Hkv * m->D;
    OK(ops_attention_forward(c, m->out, m->lse, q, m->ld, k, m->ld, v, m->ld, m->cu, m->S, m->N,
                             m->Hq, m->Hkv, m->D));
    return wsum(m->out, m->r, (size_t)m->N * m->Hq * m->D);
}

static void attention_case(ops_ctx *c, const int *lens, int S, int Hq, int Hkv, int D, int fd) {
    at_case m = {0};
    m.c = c;
    m.S = S;
    m.Hq = Hq;
    m.Hkv = Hkv;
    m.D = D;
    m.cu = ialloc(c, S + 1);
    m.cu[0] = 0;
    for (int s = 0; s < S; s++)
        m.cu[s + 1] = m.cu[s] + lens[s];
    m.N = m.cu[S];
    int N = m.N, HqD = Hq * D;
    m.ld = (Hq + 2 * Hkv) * D + 3; /* fused qkv rows with padding */
    m.qkv = falloc(c, (size_t)N * m.ld);
    m.out = falloc(c, (size_t)N * HqD);
    m.lse = falloc(c, (size_t)N * Hq);
    m.r = falloc(c, (size_t)N * HqD);
    fill(m.qkv, (size_t)N * m.ld, 1.5f);
    fill(m.r, (size_t)N * HqD, 1.0f);
    at_loss(&m);
    const float *q = m.qkv, *k = q + HqD, *v = k + Hkv * D;
    double *wo = calloc((size_t)N * HqD, sizeof(double)),
           *wl = calloc((size_t)N * Hq, sizeof(double));
    attn_ref(wo, wl, q, m.ld, k, m.ld, v, m.ld, m.cu, S, Hq, Hkv, D);
    expect_all_close("attention out", m.out, wo, (size_t)N * HqD, 1e-5, 1e-4);
    expect_all_close("attention lse", m.lse, wl, (size_t)N * Hq, 1e-5, 1e-5);

    /* backward into a fused dqkv buffer; the padding columns must be left alone */
    float *dqkv = falloc(c, (size_t)N * m.ld);
    for (size_t i = 0; i < (size_t)N * m.ld; i++)
        dqkv[i] = 7.0f;
    float *dq = dqkv, *dk = dq + HqD, *dv = dk + Hkv * D;
    OK(ops_attention_backward(c, dq, dk, dv, m.r, q, m.ld, k, m.ld, v, m.ld, m.out, m.lse, m.cu, S,
                              N, Hq, Hkv, D));
    for (int n = 0; n < N; n++)
        for (int j = (Hq + 2 * Hkv) * D; j < m.ld; j++)
            assert_true(dqkv[(size_t)n * m.ld + j] == 7.0f);
    double *rdq = calloc((size_t)N * HqD, sizeof(double)),
           *rdk = calloc((size_t)N * Hkv * D, sizeof(double)),
           *rdv = calloc((size_t)N * Hkv * D, sizeof(double));
    attn_ref_bwd(rdq, rdk, rdv, m.r, q, m.ld, k, m.ld, v, m.ld, m.cu, S, N, Hq, Hkv, D);
    for (int n = 0; n < N; n++) {
        for (int j = 0; j < HqD; j++)
            expect_close("attention dq", (size_t)n * HqD + j, dq[(size_t)n * m.ld + j],
                         rdq[(size_t)n * HqD + j], 1e-4, 1e-3);
        for (int j = 0; j < Hkv * D; j++) {
            expect_close("attention dk", (size_t)n * Hkv * D + j, dk[(size_t)n * m.ld + j],
                         rdk[(size_t)n * Hkv * D + j], 1e-4, 1e-3);
            expect_close("attention dv", (size_t)n * Hkv * D + j, dv[(size_t)n * m.ld + j],
                         rdv[(size_t)n * Hkv * D + j], 1e-4, 1e-3);
        }
    }
    if (fd) {
        /* every q/k/v element (padding columns have zero gradient) */
        float *g = calloc((size_t)N * m.ld, sizeof(float));
        memcpy(g, dqkv, (size_t)N * m.ld * sizeof(float));
        for (int n = 0; n < N; n++)
            for (int j = (Hq + 2 * Hkv) * D; j < m.ld; j++)
                g[(size_t)n * m.ld + j] = 0.0f;
        check_fd("attention d/dqkv", m.qkv, (size_t)N * m.ld, g, at_loss, &m, 5e-3f, 3e-3, 1e-2);
        free(g);
    }
    free(wo);
    free(wl);
    free(rdq);
    free(rdk);
    free(rdv);
    dfree(c, dqkv);
    dfree(c, m.qkv);
    dfree(c, m.out);
    dfree(c, m.lse);
    dfree(c, m.r);
    dfree(c, m.cu);
}

static void test_attention(void **state) {
    (void)state;
    rng_seed(6);
    ops_ctx *c = open_cpu(2);
    int small[3] = {3, 1, 6};
    attention_case(c, small, 3, 2, 2, 4, 1); /* MHA */
    attention_case(c, small, 3, 4, 2, 4, 1); /* GQA 2 */
    attention_case(c, small, 3, 4, 1, 4, 1); /* GQA 4 (MQA) */
    int big[4] = {70, 1, 130, 64};           /* cross the 64-row blocks */
    attention_case(c, big, 4, 4, 4, 16, 0);
    attention_case(c, big, 4, 4, 2, 8, 0);
    attention_case(c, big, 4, 8, 2, 32, 0);
    int one[1] = {200};
    attention_case(c, one, 1, 2, 1, 64, 0);
    done(c);
}

static void decode_case(int Hq, int Hkv, int D);
static void test_attention_decode(void **state) {
    (void)state;
    decode_case(8, 2, 16); /* GQA: one GEMM per kv head */
    decode_case(3, 3, 8);  /* MHA: GEMV per head */
    decode_case(4, 1, 32); /* MQA */
}

static void decode_case(int Hq, int Hkv, int D) {
    rng_seed(7);
    ops_ctx *c = open_cpu(2);
    int lens[3] = {5, 1, 90};
    int S = 3, max_T = 100, slots = 4;
    int32_t slot_of[3] = {2, 0, 3};
    int32_t *cu = ialloc(c, S + 1);
    cu[0] = 0;
    for (int s = 0; s < S; s++)
        cu[s + 1] = cu[s] + lens[s];
    int N = cu[S], ld = (Hq + 2 * Hkv) * D;
    float *qkv = falloc(c, (size_t)N * ld), *out = falloc(c, (size_t)N * Hq * D),
          *lse = falloc(c, (size_t)N * Hq);
    fill(qkv, (size_t)N * ld, 1.5f);
    const float *q = qkv, *k = q + Hq * D, *v = k + Hkv * D;
    OK(ops_attention_forward(c, out, lse, q, ld, k, ld, v, ld, cu, S, N, Hq, Hkv, D));
    /* store every row into its sequence's slot, then decode the last row of each sequence */
    float *kc = falloc(c, (size_t)slots * max_T * Hkv * D),
          *vc = falloc(c, (size_t)slots * max_T * Hkv * D);
    int32_t *slot = ialloc(c, N), *pos = ialloc(c, N);
    for (int s = 0; s < S; s++)
        for (int i = cu[s]; i < cu[s + 1]; i++) {
            slot[i] = slot_of[s];
            pos[i] = i - cu[s];
        }
    OK(ops_kv_store(c, kc, vc, k, ld, v, ld, slot, pos, N, max_T, Hkv, D));
    float *qd = falloc(c, (size_t)S * ld), *od = falloc(c, (size_t)S * Hq * D);
    int32_t *dslot = ialloc(c, S), *dlen = ialloc(c, S);
    for (int s = 0; s < S; s++) {
        memcpy(qd + (size_t)s * ld, qkv + (size_t)(cu[s + 1] - 1) * ld, (size_t)ld * sizeof(float));
        dslot[s] = slot_of[s];
        dlen[s] = lens[s];
    }
    OK(ops_attention_decode(c, od, qd, ld, kc, vc, dslot, dlen, S, max_T, Hq, Hkv, D));
    for (int s = 0; s < S; s++)
        for (int j = 0; j < Hq * D; j++)
            expect_close("decode vs packed", (size_t)s * Hq * D + j, od[(size_t)s * Hq * D + j],
                         out[(size_t)(cu[s + 1] - 1) * Hq * D + j], 1e-5, 1e-4);
    /* and every prefix: decoding row i with length pos+1 reproduces the packed row i */
    for (int i = cu[2]; i < cu[3]; i += 7) {
        int32_t sl = slot_of[2], ln = i - cu[2] + 1;
        memcpy(dslot, &sl, sizeof sl);
        memcpy(dlen, &ln, sizeof ln);
        OK(ops_attention_decode(c, od, qkv + (size_t)i * ld, ld, kc, vc, dslot, dlen, 1, max_T, Hq,
                                Hkv, D));
        for (int j = 0; j < Hq * D; j++)
            expect_close("decode prefix", (size_t)j, od[j], out[(size_t)i * Hq * D + j], 1e-5,
                         1e-4);
    }
    pos[0] = max_T;
    assert_int_equal(ops_kv_store(c, kc, vc, k, ld, v, ld, slot, pos, N, max_T, Hkv, D), -1);
    done(c);
}

/* ---- log-prob / entropy ---- */

typedef struct {
    ops_ctx *c;
    float *logits, *logp, *ent, *lse, *a, *b;
    int32_t *tg;
    int N, V;
    float it;
} lp_case;

static double lp_loss(void *ud) {
    lp_case *m = ud;
    ops_ctx *c = m->c;
    OK(ops_logprob_forward(c, m->logp, m->ent, m->lse, m->logits, m->tg, m->N, m->V, m->it));
    return wsum(m->logp, m->a, m->N) + wsum(m->ent, m->b, m->N);
}

static void logprob_ref(const float *x, int V, float it, int t, double *logp, double *ent,
                        double *lse) {
    double mx = -INFINITY, s = 0, h = 0;
    for (int j = 0; j < V; j++)
        mx = fmax(mx, (double)x[j] * it);
    for (int j = 0; j < V; j++)
        s += exp((double)x[j] * it - mx);
    *lse = mx + log(s);
    for (int j = 0; j < V; j++) {
        double lp = (double)x[j] * it - *lse;
        h -= exp(lp) * lp;
    }
    *ent = h;
    *logp = t >= 0 ? (double)x[t] * it - *lse : 0.0;
}

static void test_logprob(void **state) {
    (void)state;
    rng_seed(8);
    ops_ctx *c = open_cpu(2);
    /* direct formulas, several vocab sizes (chunk boundaries), large logits, temperature */
    int Vs[4] = {7, 2048, 5000, 151936};
    for (int vi = 0; vi < 4; vi++) {
        int N = vi == 3 ? 3 : 6, V = Vs[vi];
        float *x = falloc(c, (size_t)N * V), *lp = falloc(c, N), *en = falloc(c, N),
              *ls = falloc(c, N);
        int32_t *tg = ialloc(c, N);
        fill(x, (size_t)N * V, 8.0f);
        /* a growing maximum across chunks exercises the online rescale */
        for (int j = 0; j < V; j++)
            x[j] = 0.001f * (float)j;
        for (int n = 0; n < N; n++)
            tg[n] = (n * 7919) % V;
        tg[1] = -1;
        float it = vi == 2 ? 1.0f / 0.7f : 1.0f;
        OK(ops_logprob_forward(c, lp, en, ls, x, tg, N, V, it));
        for (int n = 0; n < N; n++) {
            double wl, we, wz;
            logprob_ref(x + (size_t)n * V, V, it, tg[n], &wl, &we, &wz);
            expect_close("logp", n, lp[n], wl, 1e-5, 1e-5);
            expect_close("entropy", n, en[n], we, 1e-5, 1e-5);
            expect_close("lse", n, ls[n], wz, 1e-5, 1e-6);
        }
        dfree(c, x);
        dfree(c, lp);
        dfree(c, en);
        dfree(c, ls);
        dfree(c, tg);
    }
    /* gradient: d(sum a logp + b H)/dlogits by finite differences */
    lp_case m = {0};
    m.c = c;
    m.N = 4;
    m.V = 13;
    m.it = 1.3f;
    m.logits = falloc(c, (size_t)m.N * m.V);
    m.logp = falloc(c, m.N);
    m.ent = falloc(c, m.N);
    m.lse = falloc(c, m.N);
    m.a = falloc(c, m.N);
    m.b = falloc(c, m.N);
    m.tg = ialloc(c, m.N);
    fill(m.logits, (size_t)m.N * m.V, 2.0f);
    fill(m.a, m.N, 1.0f);
    fill(m.b, m.N, 1.0f);
    int32_t tg[4] = {3, -1, 12, 0};
    memcpy(m.tg, tg, sizeof tg);
    m.b[3] = 0.0f; /* a row without entropy gradient (single pass) */
    lp_loss(&m);
    float *g = falloc(c, (size_t)m.N * m.V);
    OK(ops_logprob_backward(c, g, m.a, m.b, m.logits, m.lse, m.tg, m.N, m.V, m.it));
    for (int j = 0; j < m.V; j++)
        assert_true(g[m.V + j] == 0.0f); /* negative target: no gradient */
    m.b[1] = 0.0f;                       /* ... so the loss must not see row 1's entropy either */
    check_fd("logprob d/dlogits", m.logits, (size_t)m.N * m.V, g, lp_loss, &m, 1e-2f, 1e-3, 1e-2);
    /* in place: dlogits == logits gives the same gradient */
    {
        size_t nv = (size_t)m.N * m.V;
        float *y = falloc(c, nv);
        for (int n = 0; n < m.N; n++)
            m.b[n] = n == 1 ? 0.0f : 0.5f;
        OK(ops_logprob_backward(c, g, m.a, m.b, m.logits, m.lse, m.tg, m.N, m.V, m.it));
        memcpy(y, m.logits, nv * sizeof(float));
        OK(ops_logprob_backward(c, y, m.a, m.b, y, m.lse, m.tg, m.N, m.V, m.it));
        assert_memory_equal(y, g, nv * sizeof(float));
        memcpy(y, m.logits, nv * sizeof(float));
        OK(ops_logprob_backward(c, g, m.a, NULL, m.logits, m.lse, m.tg, m.N, m.V, m.it));
        OK(ops_logprob_backward(c, y, m.a, NULL, y, m.lse, m.tg, m.N, m.V, m.it));
        assert_memory_equal(y, g, nv * sizeof(float));
    }
    /* dentropy NULL: logp only */
    OK(ops_logprob_backward(c, g, m.a, NULL, m.logits, m.lse, m.tg, m.N, m.V, m.it));
    for (int n = 0; n < m.N; n++)
        m.b[n] = 0.0f;
    check_fd("logprob d/dlogits (no entropy)", m.logits, (size_t)m.N * m.V, g, lp_loss, &m, 1e-2f,
             1e-3, 1e-2);
    done(c);
}

/* ---- AdamW ---- */

static void test_adamw(void **state) {
    (void)state;
    rng_seed(9);
    ops_ctx *c = open_cpu(2);
    size_t n = 100003;
    float *p = falloc(c, n), *g = falloc(c, n), *m = falloc(c, n), *v = falloc(c, n);
    double *rp = calloc(n, sizeof(double)), *rm = calloc(n, sizeof(double)),
           *rv = calloc(n, sizeof(double));
    fill(p, n, 1.0f);
    for (size_t i = 0; i < n; i++)
        rp[i] = p[i];
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    for (int t = 1; t <= 5; t++) {
        fill(g, n, 2.0f);
        OK(ops_adamw_update(c, p, g, m, v, n, lr, b1, b2, eps, wd, t, gs));
        /* torch.optim.AdamW, in double */
        double bc1 = 1.0 - pow(b1, t), bc2 = 1.0 - pow(b2, t);
        for (size_t i = 0; i < n; i++) {
            double gg = (double)g[i] * gs;
            rp[i] *= 1.0 - (double)lr * wd;
            rm[i] = b1 * rm[i] + (1.0 - b1) * gg;
            rv[i] = b2 * rv[i] + (1.0 - b2) * gg * gg;
            rp[i] -= lr / bc1 * rm[i] / (sqrt(rv[i]) / sqrt(bc2) + eps);
        }
        for (size_t i = 0; i < n; i += 97) {
            expect_close("adamw p", i, p[i], rp[i], 1e-6, 1e-5);
            expect_close("adamw m", i, m[i], rm[i], 1e-7, 1e-5);
            expect_close("adamw v", i, v[i], rv[i], 1e-9, 1e-5);
        }
    }
    /* step 1 on one element by hand: m = 0.1 g, v = 0.001 g^2, update = lr * sign(g) */
    float p1 = 1.0f, g1 = 0.3f, m1 = 0.0f, v1 = 0.0f;
    OK(ops_adamw_update(c, &p1, &g1, &m1, &v1, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, 1.0f));
    /* (the float betas: 1 - 0.9f and 1 - 0.999f, as PyTorch would see them) */
    expect_close("adamw hand m", 0, m1, (1.0 - (double)0.9f) * 0.3f, 1e-9, 1e-6);
    expect_close("adamw hand v", 0, v1, (1.0 - (double)0.999f) * 0.3f * 0.3f, 1e-12, 1e-6);
    expect_close("adamw hand p", 0, p1, 0.9, 1e-6, 1e-6);
    assert_int_equal(ops_adamw_update(c, p, g, m, v, n, lr, b1, b2, eps, wd, 0, gs), -1);
    free(rp);
    free(rm);
    free(rv);
    done(c);
}

/* ---- sampling ---- */

static void test_sample(void **state) {
    (void)state;
    rng_seed(10);
    ops_ctx *c = open_cpu(2);
    int B = 3, V = 4;
    float *x = falloc(c, (size_t)B * V);
    /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1, in shuffled positions */
    const float pr[4] = {0.15f, 0.5f, 0.05f, 0.3f};
    for (int b = 0; b < B; b++)
        for (int j = 0; j < V; j++)
            x[b * V + j] = logf(pr[j]) + (float)b;
    int32_t tok[3];
    float lp[3], u[3] = {0.1f, 0.6f, 0.99f};
    /* greedy = argmax, with the temperature-1 log-prob */
    OK(ops_sample(c, tok, lp, x, B, V, 0.0f, 1.0f, NULL));
    for (int b = 0; b < B; b++) {
        assert_int_equal(tok[b], 1);
        expect_close("greedy logp", b, lp[b], log(0.5), 1e-6, 1e-5);
    }
    /* top-p 0.75: nucleus {1, 3}; u maps onto 0.5/0.8 and 0.3/0.8 in descending order */
    for (int trial = 0; trial < 200; trial++) {
        float uu = (float)urand();
        OK(ops_sample(c, tok, lp, x, 1, V, 1.0f, 0.75f, &uu));
        assert_true(tok[0] == 1 || tok[0] == 3);
        expect_close("top-p logp (full distribution)", 0, lp[0], log(pr[tok[0]]), 1e-6, 1e-5);
    }
    OK(ops_sample(c, tok, lp, x, B, V, 1.0f, 0.75f, u));
    /* full distribution: every token reachable, logp of the tempered distribution */
    int seen[4] = {0};
    for (int trial = 0; trial < 2000; trial++) {
        float uu = (float)urand();
        OK(ops_sample(c, tok, lp, x, 1, V, 2.0f, 1.0f, &uu));
        seen[tok[0]]++;
        double z[4], mx = -INFINITY, s = 0;
        for (int j = 0; j < V; j++)
            z[j] = (double)x[j] * 0.5, mx = fmax(mx, z[j]);
        for (int j = 0; j < V; j++)
            s += exp(z[j] - mx);
        expect_close("tempered logp", 0, lp[0], z[tok[0]] - mx - log(s), 1e-6, 1e-5);
    }
    for (int j = 0; j < V; j++)
        assert_true(seen[j] > 0);
    /* the frequencies follow the tempered distribution (loose bound) */
    {
        double z[4], s = 0;
        for (int j = 0; j < V; j++)
            s += (z[j] = pow(pr[j], 0.5));
        for (int j = 0; j < V; j++)
            assert_true(fabs(seen[j] / 2000.0 - z[j] / s) < 0.05);
    }
    /* logp agrees with logprob_forward at inv_temp = 1/T */
    {
        int32_t *tg = ialloc(c, 1);
        float *l2 = falloc(c, 1), *ls = falloc(c, 1);
        float uu = 0.37f;
        OK(ops_sample(c, tok, lp, x, 1, V, 0.8f, 0.9f, &uu));
        tg[0] = tok[0];
        OK(ops_logprob_forward(c, l2, NULL, ls, x, tg, 1, V, 1.0f / 0.8f));
        assert_true(l2[0] == lp[0]);
    }
    /* large vocabulary: the sampled token lies in the reference nucleus */
    {
        int VV = 50000;
        float *y = falloc(c, VV);
        fill(y, VV, 6.0f);
        double *p = calloc(VV, sizeof(double)), mx = -INFINITY, s = 0;
        for (int j = 0; j < VV; j++)
            mx = fmax(mx, y[j]);
        for (int j = 0; j < VV; j++)
            s += (p[j] = exp(y[j] - mx));
        for (int trial = 0; trial < 20; trial++) {
            float uu = (float)urand();
            OK(ops_sample(c, tok, lp, y, 1, VV, 1.0f, 0.9f, &uu));
            /* tokens strictly more probable than the sampled one carry < 0.9 of the mass */
            double above = 0;
            for (int j = 0; j < VV; j++)
                if (p[j] > p[tok[0]]) above += p[j] / s;
            assert_true(above < 0.9 + 1e-6);
        }
        free(p);
    }
    done(c);
}

/* ---- elementwise ---- */

static void test_elementwise(void **state) {
    (void)state;
    rng_seed(11);
    ops_ctx *c = open_cpu(2);
    size_t n = 300007;
    float *a = falloc(c, n), *b = falloc(c, n), *a0 = calloc(n, sizeof(float));
    fill(a, n, 1.0f);
    fill(b, n, 1.0f);
    memcpy(a0, a, n * sizeof(float));
    OK(ops_add_inplace(c, a, b, n));
    for (size_t i = 0; i < n; i++)
        assert_true(a[i] == a0[i] + b[i]);
    OK(ops_scale_inplace(c, a, 0.5f, n));
    for (size_t i = 0; i < n; i++)
        assert_true(a[i] == (a0[i] + b[i]) * 0.5f);
    double ss = 0, want = 0;
    OK(ops_sum_squares(c, &ss, b, n));
    for (size_t i = 0; i < n; i++)
        want += (double)b[i] * b[i];
    expect_close("sum_squares", 0, ss, want, 1e-9, 1e-12);
    free(a0);
    done(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_close),
        cmocka_unit_test(test_mem_usage),
        cmocka_unit_test(test_backend_check),
        cmocka_unit_test(test_calls_dispatch_through_table),
        cmocka_unit_test(test_expf),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_embedding),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_decode),
        cmocka_unit_test(test_logprob),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_sample),
        cmocka_unit_test(test_elementwise),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
