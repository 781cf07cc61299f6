/* bench_engine.c — chord's side of tests/bench/bench_engine.py: times the transformer engine
 * (server/model/model.h on the CPU backend) and the machine's BLAS, and prints one JSON object.
 *
 *   bench_engine sgemm  [--threads T] [--size N] [--reps R]
 *       a square N x N x N cblas_sgemm with OpenBLAS's own threads (T) and with one thread: the
 *       roof chord's GEMMs are measured against. Best of R.
 *   bench_engine train  (--model DIR | --config CONFIG.json [--seed S]) --batch BATCH.json
 *                       [--threads T] [--steps K] [--warmup W]
 *       W + K training steps on the same packed batch: zero_grad, forward (mean next-token NLL),
 *       backward, global-norm clip 1.0 + AdamW. Per step: forward, backward, optimizer seconds.
 *       BATCH.json: {"sequences": [[ids], ...]}; positions restart per sequence.
 *   bench_engine decode (--model DIR | --config CONFIG.json [--seed S]) --prompts PROMPTS.json
 *                       [--threads T] [--new G] [--reps R] [--warmup W]
 *       prefill the B prompts (all the same length), then G greedy KV-cache decode steps of the
 *       whole batch (the backend's sampler, temperature 0). R timed repeats after W warm-ups.
 *       PROMPTS.json: {"prompts": [[ids], ...]}.
 *
 * It only measures; the comparison with PyTorch and the table are the Python side's. Not a test:
 * the timings are never checked. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/model/model.h"

/* after ops.h: OpenBLAS's cblas.h pulls in <complex.h>, whose `I` macro clashes with ops.h */
#include <cblas.h>
#undef I

static void die(const char *what, const char *msg) {
    fprintf(stderr, "bench_engine: %s: %s\n", what, msg);
    exit(1);
}

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if ((x) != 0) die(#x, err.msg);                                                            \
    } while (0)

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("calloc", "out of memory");
    return p;
}

typedef struct opts {
    const char *model_dir, *config, *batch, *prompts;
    int threads, steps, warmup, reps, size, new_tokens;
    unsigned long long seed;
} opts;

static void parse(int argc, char **argv, opts *o) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) die(a, "needs a value");
        const char *v = argv[++i];
        if (strcmp(a, "--model") == 0)
            o->model_dir = v;
        else if (strcmp(a, "--config") == 0)
            o->config = v;
        else if (strcmp(a, "--batch") == 0)
            o->batch = v;
        else if (strcmp(a, "--prompts") == 0)
            o->prompts = v;
        else if (strcmp(a, "--threads") == 0)
            o->threads = atoi(v);
        else if (strcmp(a, "--steps") == 0)
            o->steps = atoi(v);
        else if (strcmp(a, "--warmup") == 0)
            o->warmup = atoi(v);
        else if (strcmp(a, "--reps") == 0)
            o->reps = atoi(v);
        else if (strcmp(a, "--size") == 0)
            o->size = atoi(v);
        else if (strcmp(a, "--new") == 0)
            o->new_tokens = atoi(v);
        else if (strcmp(a, "--seed") == 0)
            o->seed = strtoull(v, NULL, 10);
        else
            die(a, "unknown option");
    }
    if (o->steps < 1 || o->warmup < 0 || o->reps < 1 || o->size < 1 || o->new_tokens < 1)
        die("options", "--steps, --reps, --size, --new must be >= 1 and --warmup >= 0");
}

/* ---- sgemm: the roof ---- */

static double sgemm_best(int n, int reps, const float *a, const float *b, float *c) {
    double best = 1e30;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    for (int r = 0; r < reps; r++) {
        double t0 = chord_now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        double dt = chord_now() - t0;
        if (dt < best) best = dt;
    }
    return 2.0 * n * (double)n * (double)n / best / 1e9;
}

static int cmd_sgemm(const opts *o) {
    const int n = o->size;
    float *a = xcalloc((size_t)n * n, sizeof *a), *b = xcalloc((size_t)n * n, sizeof *b);
    float *c = xcalloc((size_t)n * n, sizeof *c);
    unsigned s = 1;
    for (size_t i = 0; i < (size_t)n * n; i++) {
        s = s * 1664525u + 1013904223u;
        a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
        b[i] = (float)(s >> 9) / 8388608.0f - 0.5f;
    }
    int threads = o->threads > 0 ? o->threads : 1;
    openblas_set_num_threads(threads);
    double g_t = sgemm_best(n, o->reps, a, b, c);
    openblas_set_num_threads(1);
    double g_1 = sgemm_best(n, o->reps, a, b, c);
    printf("{\"size\": %d, \"threads\": %d, \"gflops\": %.3f, \"gflops_1thread\": %.3f, "
           "\"openblas\": \"%s\", \"core\": \"%s\"}\n",
           n, threads, g_t, g_1, openblas_get_config(), openblas_get_corename());
    free(a);
    free(b);
    free(c);
    return 0;
}

/* ---- the model ---- */

static model *open_model(const opts *o, ops_ctx *ops) {
    chord_err err = {0};
    model *m = NULL;
    if (o->model_dir) {
        CHECK(model_load(o->model_dir, ops, &m, &err));
    } else if (o->config) {
        char *text = NULL;
        size_t len = 0;
        model_config cfg;
        CHECK(chord_read_file(o->config, &text, &len, &err));
        CHECK(model_config_parse(text, &cfg, &err));
        free(text);
        CHECK(model_create(&cfg, ops, &m, &err));
        CHECK(model_init_random(m, o->seed, &err));
    } else {
        die("model", "needs --model DIR or --config CONFIG.json");
    }
    return m;
}

/* Reads {"key": [[ids], ...]} into packed tokens (host), cu (S+1); returns S. */
static int read_sequences(const char *path, const char *key, int32_t **tokens_out, int32_t **cu_out,
                          int *n_out) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) die(path, jerr.text);
    json_t *seqs = json_object_get(root, key);
    if (!json_is_array(seqs) || json_array_size(seqs) == 0) die(path, "needs a non-empty array");
    const int S = (int)json_array_size(seqs);
    int N = 0;
    for (int s = 0; s < S; s++) {
        json_t *seq = json_array_get(seqs, s);
        if (!json_is_array(seq) || json_array_size(seq) == 0)
            die(path, "every sequence must be a non-empty array of ids");
        N += (int)json_array_size(seq);
    }
    int32_t *tokens = xcalloc((size_t)N, sizeof *tokens), *cu = xcalloc((size_t)S + 1, sizeof *cu);
    for (int s = 0, n = 0; s < S; s++) {
        json_t *seq = json_array_get(seqs, s);
        cu[s] = n;
        for (size_t i = 0; i < json_array_size(seq); i++, n++) {
            json_t *id = json_array_get(seq, i);
            if (!json_is_integer(id)) die(path, "token ids must be integers");
            tokens[n] = (int32_t)json_integer_value(id);
        }
    }
    cu[S] = N;
    json_decref(root);
    *tokens_out = tokens;
    *cu_out = cu;
    *n_out = N;
    return S;
}

static void print_array(const char *name, const double *x, int n) {
    printf("\"%s\": [", name);
    for (int i = 0; i < n; i++)
        printf("%s%.6f", i ? ", " : "", x[i]);
    printf("]");
}

static int cmd_train(const opts *o) {
    chord_err err = {0};
    char oerr[256];
    ops_ctx *ops = ops_open("cpu", o->threads, oerr, sizeof oerr);
    if (!ops) die("ops_open", oerr);
    model *m = open_model(o, ops);
    if (!o->batch) die("train", "needs --batch BATCH.json");
    int32_t *tokens, *cu;
    int N;
    const int S = read_sequences(o->batch, "sequences", &tokens, &cu, &N);
    int32_t *pos = xcalloc((size_t)N, sizeof *pos), *targets = xcalloc((size_t)N, sizeof *targets);
    int n_targets = 0;
    for (int s = 0; s < S; s++)
        for (int n = cu[s]; n < cu[s + 1]; n++) {
            pos[n] = n - cu[s];
            targets[n] = n + 1 < cu[s + 1] ? tokens[n + 1] : -1;
            n_targets += targets[n] >= 0;
        }
    if (n_targets == 0) die("train", "the batch has no next-token targets");
    model_batch b = {
        .N = N, .S = S, .tokens = tokens, .positions = pos, .cu_seqlens = cu, .targets = targets};
    float *logp = xcalloc((size_t)N, sizeof *logp), *dlogp = xcalloc((size_t)N, sizeof *dlogp);
    for (int n = 0; n < N; n++)
        dlogp[n] = targets[n] >= 0 ? -1.0f / (float)n_targets : 0.0f;

    const int total = o->warmup + o->steps;
    double *fwd = xcalloc((size_t)total, sizeof *fwd), *bwd = xcalloc((size_t)total, sizeof *bwd);
    double *opt = xcalloc((size_t)total, sizeof *opt), *loss = xcalloc((size_t)total, sizeof *loss);
    for (int k = 0; k < total; k++) {
        double t0 = chord_now();
        CHECK(model_zero_grad(m, &err));
        CHECK(model_forward(m, &b, 1.0f, logp, NULL, &err));
        double t1 = chord_now();
        CHECK(model_backward(m, dlogp, NULL, &err));
        double t2 = chord_now();
        CHECK(model_adamw_step(m, 1e-4f, 0.9f, 0.999f, 1e-8f, 0.1f, 1.0f, NULL, &err));
        double t3 = chord_now();
        double sum = 0.0;
        for (int n = 0; n < N; n++)
            if (targets[n] >= 0) sum -= logp[n];
        loss[k] = sum / n_targets;
        fwd[k] = t1 - t0;
        bwd[k] = t2 - t1;
        opt[k] = t3 - t2;
    }
    printf("{\"tokens\": %d, \"sequences\": %d, \"targets\": %d, \"num_params\": %zu, "
           "\"threads\": %d, \"warmup\": %d, ",
           N, S, n_targets, m->num_params, ops->threads, o->warmup);
    print_array("loss", loss, total);
    printf(", ");
    print_array("fwd_s", fwd + o->warmup, o->steps);
    printf(", ");
    print_array("bwd_s", bwd + o->warmup, o->steps);
    printf(", ");
    print_array("opt_s", opt + o->warmup, o->steps);
    printf("}\n");

    free(fwd);
    free(bwd);
    free(opt);
    free(loss);
    free(logp);
    free(dlogp);
    free(pos);
    free(targets);
    free(tokens);
    free(cu);
    model_free(m);
    ops_close(ops);
    return 0;
}

static int cmd_decode(const opts *o) {
    chord_err err = {0};
    char oerr[256];
    ops_ctx *ops = ops_open("cpu", o->threads, oerr, sizeof oerr);
    if (!ops) die("ops_open", oerr);
    model *m = open_model(o, ops);
    if (!o->prompts) die("decode", "needs --prompts PROMPTS.json");
    int32_t *prompts, *cu;
    int N;
    const int B = read_sequences(o->prompts, "prompts", &prompts, &cu, &N);
    const int P = cu[1] - cu[0], G = o->new_tokens, V = m->cfg.vocab_size;
    for (int s = 0; s < B; s++)
        if (cu[s + 1] - cu[s] != P) die("decode", "every prompt must have the same length");

    model_kv_cache *kv = NULL;
    CHECK(model_kv_create(m, B, P + G, &kv, &err));
    int32_t *slots = xcalloc((size_t)B, sizeof *slots), *tok = xcalloc((size_t)B, sizeof *tok);
    int32_t *posn = xcalloc((size_t)B, sizeof *posn);
    int32_t *gen = xcalloc((size_t)G * B, sizeof *gen); /* (G, B) */
    float *lp = xcalloc((size_t)B, sizeof *lp), *uni = xcalloc((size_t)B, sizeof *uni);
    for (int s = 0; s < B; s++)
        slots[s] = s;
    const int total = o->warmup + o->reps;
    double *pre_s = xcalloc((size_t)total, sizeof *pre_s),
           *dec_s = xcalloc((size_t)total, sizeof *dec_s);
    for (int r = 0; r < total; r++) {
        const float *logits = NULL;
        double t0 = chord_now();
        /* the prefill's last-position logits give the first new token */
        CHECK(model_prefill(m, kv, prompts, cu, B, slots, &logits, &err));
        if (ops_sample(ops, tok, lp, logits, B, V, 0.0f, 1.0f, uni) != 0)
            die("sample", ops_last_error(ops));
        double t1 = chord_now();
        for (int g = 0; g < G; g++) {
            memcpy(gen + (size_t)g * B, tok, (size_t)B * sizeof *tok);
            if (g + 1 == G) break;
            for (int s = 0; s < B; s++)
                posn[s] = P + g;
            CHECK(model_decode(m, kv, tok, posn, slots, B, &logits, &err));
            if (ops_sample(ops, tok, lp, logits, B, V, 0.0f, 1.0f, uni) != 0)
                die("sample", ops_last_error(ops));
        }
        double t2 = chord_now();
        pre_s[r] = t1 - t0;
        dec_s[r] = t2 - t1;
    }
    /* G new tokens per sequence: the first from the prefill, G - 1 decode steps */
    printf("{\"batch\": %d, \"prompt\": %d, \"new\": %d, \"decode_steps\": %d, \"threads\": %d, ",
           B, P, G, G - 1, ops->threads);
    print_array("prefill_s", pre_s + o->warmup, o->reps);
    printf(", ");
    print_array("decode_s", dec_s + o->warmup, o->reps);
    printf(", \"generated\": [");
    for (int s = 0; s < B; s++) {
        printf("%s[", s ? ", " : "");
        for (int g = 0; g < G; g++)
            printf("%s%d", g ? ", " : "", gen[(size_t)g * B + s]);
        printf("]");
    }
    printf("]}\n");

    free(pre_s);
    free(dec_s);
    free(slots);
    free(tok);
    free(posn);
    free(gen);
    free(lp);
    free(uni);
    free(prompts);
    free(cu);
    model_kv_free(kv);
    model_free(m);
    ops_close(ops);
    return 0;
}

int main(int argc, char **argv) {
    opts o = {.threads = 0,
              .steps = 3,
              .warmup = 1,
              .reps = 3,
              .size = 2048,
              .new_tokens = 32,
              .seed = 1};
    if (argc < 2) {
        fprintf(stderr, "usage: bench_engine sgemm|train|decode [options] (see the source)\n");
        return 2;
    }
    parse(argc, argv, &o);
    if (strcmp(argv[1], "sgemm") == 0) return cmd_sgemm(&o);
    if (strcmp(argv[1], "train") == 0) return cmd_train(&o);
    if (strcmp(argv[1], "decode") == 0) return cmd_decode(&o);
    fprintf(stderr, "bench_engine: unknown command %s\n", argv[1]);
    return 2;
}
