/* ops_tool.c — runs one CPU op of kernels/ops.h on raw float32 / int32 files, for
 * tests/reference/ops_reference.py (which compares the results with PyTorch).
 *
 * usage: ops_tool OP DIR ARGS...   (inputs DIR/<name>.bin, outputs DIR/<name>.out.bin)
 *   matmul    DIR N C OC              x w b dout            -> out dx dw db
 *   rmsnorm   DIR N C eps             x w dout              -> out dx dw
 *   rope      DIR N H D               x pos inv_freq dout   -> out dx
 *   swiglu    DIR N I                 g u dout              -> out dg du
 *   attention DIR S N Hq Hkv D        q k v cu dout         -> out lse dq dk dv
 *   logprob   DIR N V inv_temp        logits targets dlogp dent -> logp ent lse dlogits
 *   adamw     DIR n steps lr b1 b2 eps wd grad_scale   p g(steps x n) -> p m v */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"

static const char *dir;

static void *load(const char *name, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.bin", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "ops_tool: cannot open %s\n", path);
        exit(2);
    }
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p || fread(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "ops_tool: %s: short read (want %zu bytes)\n", path, bytes);
        exit(2);
    }
    fclose(f);
    return p;
}

static void save(const char *name, const void *p, size_t bytes) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.out.bin", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(p, 1, bytes, f) != bytes) {
        fprintf(stderr, "ops_tool: cannot write %s\n", path);
        exit(2);
    }
    fclose(f);
}

static void *zalloc(size_t bytes) {
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) exit(3);
    return p;
}

#define RUN(call)                                                                \
    do {                                                                         \
        if ((call) != 0) {                                                       \
            fprintf(stderr, "ops_tool: %s: %s\n", #call, ops_last_error(c));     \
            return 1;                                                            \
        }                                                                        \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ops_tool OP DIR ARGS...\n");
        return 2;
    }
    const char *op = argv[1];
    dir = argv[2];
    char err[256];
    ops_ctx *c = ops_open("cpu", 0, err, sizeof err);
    if (!c) {
        fprintf(stderr, "ops_tool: %s\n", err);
        return 1;
    }
    const ops_backend *be = c->be;
    const size_t F = sizeof(float);
    if (strcmp(op, "matmul") == 0 && argc == 6) {
        int N = atoi(argv[3]), C = atoi(argv[4]), OC = atoi(argv[5]);
        float *x = load("x", (size_t)N * C * F), *w = load("w", (size_t)OC * C * F),
              *b = load("b", OC * F), *dout = load("dout", (size_t)N * OC * F);
        float *out = zalloc((size_t)N * OC * F), *dx = zalloc((size_t)N * C * F),
              *dw = zalloc((size_t)OC * C * F), *db = zalloc(OC * F);
        RUN(be->matmul_forward(c, out, x, w, b, N, C, OC));
        RUN(be->matmul_backward(c, dx, dw, db, dout, x, w, N, C, OC, 0));
        save("out", out, (size_t)N * OC * F);
        save("dx", dx, (size_t)N * C * F);
        save("dw", dw, (size_t)OC * C * F);
        save("db", db, OC * F);
    } else if (strcmp(op, "rmsnorm") == 0 && argc == 6) {
        int N = atoi(argv[3]), C = atoi(argv[4]);
        float eps = strtof(argv[5], NULL);
        float *x = load("x", (size_t)N * C * F), *w = load("w", C * F),
              *dout = load("dout", (size_t)N * C * F);
        float *out = zalloc((size_t)N * C * F), *rstd = zalloc(N * F),
              *dx = zalloc((size_t)N * C * F), *dw = zalloc(C * F);
        RUN(be->rmsnorm_forward(c, out, rstd, x, C, w, N, C, eps));
        RUN(be->rmsnorm_backward(c, dx, C, dw, dout, x, w, rstd, N, C));
        save("out", out, (size_t)N * C * F);
        save("dx", dx, (size_t)N * C * F);
        save("dw", dw, C * F);
    } else if (strcmp(op, "rope") == 0 && argc == 6) {
        int N = atoi(argv[3]), H = atoi(argv[4]), D = atoi(argv[5]);
        size_t n = (size_t)N * H * D;
        float *x = load("x", n * F), *fr = load("inv_freq", (size_t)(D / 2) * F),
              *dout = load("dout", n * F);
        int32_t *pos = load("pos", N * sizeof(int32_t));
        RUN(be->rope_forward(c, x, H * D, pos, fr, N, H, D));
        RUN(be->rope_backward(c, dout, H * D, pos, fr, N, H, D));
        save("out", x, n * F);
        save("dx", dout, n * F);
    } else if (strcmp(op, "swiglu") == 0 && argc == 5) {
        int N = atoi(argv[3]), I = atoi(argv[4]);
        size_t n = (size_t)N * I;
        float *g = load("g", n * F), *u = load("u", n * F), *dout = load("dout", n * F);
        float *out = zalloc(n * F), *dg = zalloc(n * F), *du = zalloc(n * F);
        RUN(be->swiglu_forward(c, out, g, I, u, I, N, I));
        RUN(be->swiglu_backward(c, dg, du, I, dout, g, u, I, N, I));
        save("out", out, n * F);
        save("dg", dg, n * F);
        save("du", du, n * F);
    } else if (strcmp(op, "attention") == 0 && argc == 8) {
        int S = atoi(argv[3]), N = atoi(argv[4]), Hq = atoi(argv[5]), Hkv = atoi(argv[6]),
            D = atoi(argv[7]);
        size_t nq = (size_t)N * Hq * D, nk = (size_t)N * Hkv * D;
        float *q = load("q", nq * F), *k = load("k", nk * F), *v = load("v", nk * F),
              *dout = load("dout", nq * F);
        int32_t *cu = load("cu", (size_t)(S + 1) * sizeof(int32_t));
        float *out = zalloc(nq * F), *lse = zalloc((size_t)N * Hq * F), *dq = zalloc(nq * F),
              *dk = zalloc(nk * F), *dv = zalloc(nk * F);
        RUN(be->attention_forward(c, out, lse, q, Hq * D, k, Hkv * D, v, Hkv * D, cu, S, N, Hq,
                                  Hkv, D));
        RUN(be->attention_backward(c, dq, dk, dv, dout, q, Hq * D, k, Hkv * D, v, Hkv * D, out,
                                   lse, cu, S, N, Hq, Hkv, D));
        save("out", out, nq * F);
        save("lse", lse, (size_t)N * Hq * F);
        save("dq", dq, nq * F);
        save("dk", dk, nk * F);
        save("dv", dv, nk * F);
    } else if (strcmp(op, "logprob") == 0 && argc == 6) {
        int N = atoi(argv[3]), V = atoi(argv[4]);
        float it = strtof(argv[5], NULL);
        float *x = load("logits", (size_t)N * V * F), *dl = load("dlogp", N * F),
              *de = load("dent", N * F);
        int32_t *tg = load("targets", N * sizeof(int32_t));
        float *lp = zalloc(N * F), *en = zalloc(N * F), *ls = zalloc(N * F),
              *dx = zalloc((size_t)N * V * F);
        RUN(be->logprob_forward(c, lp, en, ls, x, tg, N, V, it));
        RUN(be->logprob_backward(c, dx, dl, de, x, ls, tg, N, V, it));
        save("logp", lp, N * F);
        save("ent", en, N * F);
        save("lse", ls, N * F);
        save("dlogits", dx, (size_t)N * V * F);
    } else if (strcmp(op, "adamw") == 0 && argc == 11) {
        size_t n = strtoul(argv[3], NULL, 10);
        int steps = atoi(argv[4]);
        float lr = strtof(argv[5], NULL), b1 = strtof(argv[6], NULL), b2 = strtof(argv[7], NULL),
              eps = strtof(argv[8], NULL), wd = strtof(argv[9], NULL),
              gs = strtof(argv[10], NULL);
        float *p = load("p", n * F), *g = load("g", (size_t)steps * n * F);
        float *m = zalloc(n * F), *v = zalloc(n * F);
        for (int t = 1; t <= steps; t++)
            RUN(be->adamw_update(c, p, g + (size_t)(t - 1) * n, m, v, n, lr, b1, b2, eps, wd, t,
                                 gs));
        save("p", p, n * F);
        save("m", m, n * F);
        save("v", v, n * F);
    } else {
        fprintf(stderr, "ops_tool: unknown op or wrong arguments: %s\n", op);
        return 2;
    }
    ops_close(c);
    return 0;
}
