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
 *   bench_engine prefix (--model DIR | --config CONFIG.json [--seed S]) --prompt-len P
 *                       --group G --response-len R [--groups K] [--backend B] [--threads T]
 *                       [--steps K] [--warmup W]
 *       K groups of G responses (R tokens) to one prompt (P tokens), random ids: forward +
 *       backward of the response tokens' mean NLL with each prompt run G times (unshared) and
 *       once (model_batch.seg_parent), the two alternating step by step in the same run; the
 *       ratio, and the largest gradient difference relative to the largest gradient (exit 1
 *       above 1e-4: the shared pass must compute the same thing).
 *
 * It only measures; the comparison with PyTorch and the table are the Python side's. Not a test:
 * the timings are never checked. */
#include <jansson.h>
#include <math.h>
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
    const char *model_dir, *config, *batch, *prompts, *backend;
    int threads, steps, warmup, reps, size, new_tokens;
    int prompt_len, group, response_len, groups;
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
        else if (strcmp(a, "--backend") == 0)
            o->backend = v;
        else if (strcmp(a, "--prompt-len") == 0)
            o->prompt_len = atoi(v);
        else if (strcmp(a, "--group") == 0)
            o->group = atoi(v);
        else if (strcmp(a, "--response-len") == 0)
            o->response_len = atoi(v);
        else if (strcmp(a, "--groups") == 0)
            o->groups = atoi(v);
        else
            die(a, "unknown option");
    }
    if (o->steps < 1 || o->warmup < 0 || o->reps < 1 || o->size < 1 || o->new_tokens < 1)
        die("options", "--steps, --reps, --size, --new must be >= 1 and --warmup >= 0");
    if (o->prompt_len < 2 || o->group < 1 || o->response_len < 1 || o->groups < 1)
        die("options", "--prompt-len must be >= 2, --group, --response-len, --groups >= 1");
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

/* ---- prefix: the prompt shared in the training pass ---- */

/* One layout of the K groups: rows, segments, and the loss weights (-1/targets per target). */
typedef struct prefix_layout {
    int N, S;
    int32_t *tokens, *pos, *targets, *cu, *parent;
    float *dlogp;
} prefix_layout;

static void prefix_layout_build(const opts *o, const int32_t *prompts, const int32_t *responses,
                                int shared, prefix_layout *L) {
    const int P = o->prompt_len, G = o->group, R = o->response_len, K = o->groups;
    const int rows = shared ? K * (P - 1 + G * (R + 1)) : K * G * (P + R);
    const int segs = shared ? K * (G + 1) : K * G;
    L->tokens = xcalloc((size_t)rows, sizeof *L->tokens);
    L->pos = xcalloc((size_t)rows, sizeof *L->pos);
    L->targets = xcalloc((size_t)rows, sizeof *L->targets);
    L->dlogp = xcalloc((size_t)rows, sizeof *L->dlogp);
    L->cu = xcalloc((size_t)segs + 1, sizeof *L->cu);
    L->parent = xcalloc((size_t)segs, sizeof *L->parent);
    int n = 0, s = 0;
    const float w = -1.0f / (float)(K * G * R);
    for (int k = 0; k < K; k++) {
        const int32_t *pr = prompts + (size_t)k * P;
        int prefix = -1;
        if (shared) { /* the prompt but its last token, once */
            prefix = s;
            for (int j = 0; j < P - 1; j++, n++) {
                L->tokens[n] = pr[j];
                L->pos[n] = j;
                L->targets[n] = -1;
            }
            L->parent[s] = -1;
            L->cu[++s] = n;
        }
        for (int g = 0; g < G; g++) {
            const int32_t *re = responses + ((size_t)k * G + g) * R;
            for (int j = shared ? P - 1 : 0; j < P + R; j++, n++) {
                L->tokens[n] = j < P ? pr[j] : re[j - P];
                L->pos[n] = j;
                L->targets[n] = j >= P - 1 && j + 1 < P + R ? re[j + 1 - P] : -1;
                L->dlogp[n] = L->targets[n] >= 0 ? w : 0.0f;
            }
            L->parent[s] = prefix;
            L->cu[++s] = n;
        }
    }
    L->N = n;
    L->S = s;
}

static void prefix_layout_free(prefix_layout *L) {
    free(L->tokens);
    free(L->pos);
    free(L->targets);
    free(L->dlogp);
    free(L->cu);
    free(L->parent);
}

static int cmd_prefix(const opts *o) {
    chord_err err = {0};
    char oerr[256];
    ops_ctx *ops = ops_open(o->backend ? o->backend : "cpu", o->threads, oerr, sizeof oerr);
    if (!ops) die("ops_open", oerr);
    model *m = open_model(o, ops);
    const int P = o->prompt_len, G = o->group, R = o->response_len, K = o->groups;
    int32_t *prompts = xcalloc((size_t)K * P, sizeof *prompts);
    int32_t *responses = xcalloc((size_t)K * G * R, sizeof *responses);
    unsigned long long st = o->seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < (size_t)K * P + (size_t)K * G * R; i++) {
        st = st * 6364136223846793005ull + 1442695040888963407ull;
        int32_t id = (int32_t)((st >> 33) % (unsigned long long)m->cfg.vocab_size);
        if (i < (size_t)K * P)
            prompts[i] = id;
        else
            responses[i - (size_t)K * P] = id;
    }
    prefix_layout L[2];
    for (int sh = 0; sh < 2; sh++)
        prefix_layout_build(o, prompts, responses, sh, &L[sh]);
    float *logp = xcalloc((size_t)L[0].N, sizeof *logp);
    float *grads[2] = {xcalloc(m->num_params, sizeof(float)),
                       xcalloc(m->num_params, sizeof(float))};
    double fwd[2] = {0, 0}, bwd[2] = {0, 0}, loss[2] = {0, 0};
    for (int k = 0; k < o->warmup + o->steps; k++)
        for (int sh = 0; sh < 2; sh++) {
            model_batch b = {.N = L[sh].N,
                             .S = L[sh].S,
                             .tokens = L[sh].tokens,
                             .positions = L[sh].pos,
                             .cu_seqlens = L[sh].cu,
                             .targets = L[sh].targets,
                             .seg_parent = sh ? L[sh].parent : NULL};
            double t0 = chord_now();
            CHECK(model_zero_grad(m, &err));
            CHECK(model_forward(m, &b, 1.0f, logp, NULL, &err));
            double t1 = chord_now();
            CHECK(model_backward(m, L[sh].dlogp, NULL, &err));
            CHECK(model_read_grads(m, grads[sh], &err)); /* also waits for the device */
            double t2 = chord_now();
            if (k < o->warmup) continue;
            fwd[sh] += (t1 - t0) / o->steps;
            bwd[sh] += (t2 - t1) / o->steps;
            double sum = 0.0;
            for (int n = 0; n < L[sh].N; n++)
                sum += (double)L[sh].dlogp[n] * logp[n];
            loss[sh] = sum;
        }
    double gmax = 0.0, dmax = 0.0;
    for (size_t i = 0; i < m->num_params; i++) {
        double a = grads[0][i], d = fabs(a - (double)grads[1][i]);
        if (fabs(a) > gmax) gmax = fabs(a);
        if (d > dmax) dmax = d;
    }
    const double rel = gmax > 0 ? dmax / gmax : dmax;
    const double t_un = fwd[0] + bwd[0], t_sh = fwd[1] + bwd[1];
    printf("{\"backend\": \"%s\", \"threads\": %d, \"num_params\": %zu, \"prompt_len\": %d, "
           "\"group\": %d, \"response_len\": %d, \"groups\": %d, \"rows_unshared\": %d, "
           "\"rows_shared\": %d, \"loss_unshared\": %.7f, \"loss_shared\": %.7f, "
           "\"unshared_fwd_s\": %.4f, \"unshared_bwd_s\": %.4f, \"shared_fwd_s\": %.4f, "
           "\"shared_bwd_s\": %.4f, \"speedup\": %.3f, \"grad_max_rel_diff\": %.3g}\n",
           ops->be->name, ops->threads, m->num_params, P, G, R, K, L[0].N, L[1].N, loss[0], loss[1],
           fwd[0], bwd[0], fwd[1], bwd[1], t_sh > 0 ? t_un / t_sh : 0.0, rel);
    for (int sh = 0; sh < 2; sh++) {
        prefix_layout_free(&L[sh]);
        free(grads[sh]);
    }
    free(logp);
    free(prompts);
    free(responses);
    model_free(m);
    ops_close(ops);
    if (!(rel <= 1e-4)) {
        fprintf(stderr, "bench_engine prefix: shared and unshared gradients differ (%.3g)\n", rel);
        return 1;
    }
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
              .prompt_len = 512,
              .group = 8,
              .response_len = 64,
              .groups = 2,
              .seed = 1};
    if (argc < 2) {
        fprintf(stderr,
                "usage: bench_engine sgemm|train|decode|prefix [options] (see the source)\n");
        return 2;
    }
    parse(argc, argv, &o);
    if (strcmp(argv[1], "sgemm") == 0) return cmd_sgemm(&o);
    if (strcmp(argv[1], "train") == 0) return cmd_train(&o);
    if (strcmp(argv[1], "decode") == 0) return cmd_decode(&o);
    if (strcmp(argv[1], "prefix") == 0) return cmd_prefix(&o);
    fprintf(stderr, "bench_engine: unknown command %s\n", argv[1]);
    return 2;
}
