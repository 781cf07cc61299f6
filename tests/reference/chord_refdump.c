/* chord_refdump.c — a test tool: runs a chord model over a packed batch and dumps what the
 * PyTorch reference (model_reference.py) compares, into one safetensors file:
 *   logits (N,V), logp (N), entropy (N), loss (1) = mean next-token NLL over the batch,
 *   grad.<hf name> for every parameter (d loss / d param),
 *   decode_logits (M,V): per sequence, prefill its first prefix[s] tokens, then decode the rest
 *     one token per step (all sequences batched) — rows for positions prefix[s]-1 .. n_s-1,
 *   decode_copy_logits: the same for sequence 0 decoded from a copy of its prefilled slot,
 *   and, when "adamw" is given, adamw.<hf name> (parameters after `steps` AdamW steps, each on
 *   the same batch's mean NLL) and grad_norms (steps);
 *   with "shared_prompts" [{"first": s, "count": g, "prompt_len": p}, ...] (sequences s .. s+g-1
 *   begin with the same p tokens), the batch again with each group's prompt run once
 *   (model_batch.seg_parent) and the mean NLL over every target but those inside a shared
 *   prompt: shared.loss (1), shared.logp (its targets, in sequence order) and shared.grad.<hf
 *   name> — the reference computes that loss on the unshared sequences;
 *   with "lora" {"rank", "alpha", "targets": ["q_proj", ...], "seed"} instead of all that: a
 *   LoRA adapter attached (B set to small nonzero values so every tensor matters), and
 *   lora.logits (N,V), lora.loss (1), lora.param.<PEFT name> and lora.grad.<PEFT name> of the
 *   batch's mean NLL, then (with "adamw") lora.adamw.<PEFT name> after `steps` AdamW steps;
 *   "save": DIR and "save_merged": DIR also write that adapter as a PEFT directory and the
 *   merged model (model_lora_save, model_save_merged); with "load": DIR the adapter is read from
 *   a PEFT directory instead (model_lora_load) and only lora.logits is written.
 * usage: chord_refdump --model DIR --batch batch.json --out out.safetensors [--threads N]
 * batch.json: {"sequences": [[ids], ...], "prefix": [p, ...], "logits_budget_bytes": B,
 *              "adamw": {"steps": 2, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-6,
 *                        "weight_decay": 0.1, "grad_clip": 1.0},
 *              "shared_prompts": [{"first": 0, "count": 3, "prompt_len": 9}]}
 * It checks nothing itself: the comparison is the Python side's. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "server/model/model.h"

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        if ((x) != 0) {                                                                            \
            fprintf(stderr, "chord_refdump: %s\n", err.msg);                                       \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)

static void die(const char *msg) {
    fprintf(stderr, "chord_refdump: %s\n", msg);
    exit(1);
}

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die("out of memory");
    return p;
}

static double num(json_t *obj, const char *key, double def) {
    json_t *v = json_object_get(obj, key);
    return v ? json_number_value(v) : def;
}

/* The shared-prompt pass ("shared_prompts"): fills *loss_out, logp_out (its targets, at most
 * N) and grads (num_params); returns the number of targets. */
static int shared_pass(model *m, json_t *groups, const int32_t *tokens, const int32_t *cu, int S,
                       float *loss_out, float *logp_out, float *grads) {
    chord_err err = {0};
    const int N = cu[S];
    int *group_p = xcalloc((size_t)S, sizeof *group_p),
        *group_first = xcalloc((size_t)S, sizeof(int));
    for (int s = 0; s < S; s++)
        group_first[s] = -1;
    for (size_t i = 0; i < json_array_size(groups); i++) {
        json_t *g = json_array_get(groups, i);
        int first = (int)json_integer_value(json_object_get(g, "first"));
        int count = (int)json_integer_value(json_object_get(g, "count"));
        int p = (int)json_integer_value(json_object_get(g, "prompt_len"));
        if (first < 0 || count < 1 || first + count > S || p < 2)
            die("shared_prompts: needs first, count within the sequences and prompt_len >= 2");
        for (int s = first; s < first + count; s++) {
            if (p >= cu[s + 1] - cu[s] ||
                memcmp(tokens + cu[s], tokens + cu[first], (size_t)p * sizeof *tokens) != 0)
                die("shared_prompts: a group's sequences must begin with the same prompt_len "
                    "tokens and go on past them");
            group_p[s] = p;
            group_first[s] = first;
        }
    }
    int32_t *tok = xcalloc((size_t)N, sizeof *tok), *pos = xcalloc((size_t)N, sizeof *pos);
    int32_t *tgt = xcalloc((size_t)N, sizeof *tgt), *scu = xcalloc(2 * (size_t)S + 1, sizeof *scu);
    int32_t *parent = xcalloc(2 * (size_t)S, sizeof *parent);
    int n = 0, segs = 0, prefix = -1, n_targets = 0;
    for (int s = 0; s < S; s++) {
        const int len = cu[s + 1] - cu[s], p = group_p[s];
        int j0 = 0;
        if (group_first[s] == s) { /* the group's prompt but its last token, once */
            prefix = segs;
            for (int j = 0; j < p - 1; j++, n++) {
                tok[n] = tokens[cu[s] + j];
                pos[n] = j;
                tgt[n] = -1;
            }
            parent[segs] = -1;
            scu[++segs] = n;
        }
        if (group_first[s] >= 0) j0 = p - 1;
        for (int j = j0; j < len; j++, n++) {
            tok[n] = tokens[cu[s] + j];
            pos[n] = j;
            tgt[n] = j + 1 < len ? tokens[cu[s] + j + 1] : -1;
            n_targets += tgt[n] >= 0;
        }
        parent[segs] = group_first[s] >= 0 ? prefix : -1;
        scu[++segs] = n;
    }
    model_batch b = {.N = n,
                     .S = segs,
                     .tokens = tok,
                     .positions = pos,
                     .cu_seqlens = scu,
                     .targets = tgt,
                     .seg_parent = parent};
    float *lp = xcalloc((size_t)n, sizeof *lp), *dlogp = xcalloc((size_t)n, sizeof *dlogp);
    CHECK(model_forward(m, &b, 1.0f, lp, NULL, &err));
    double sum = 0.0;
    for (int r = 0, k = 0; r < n; r++)
        if (tgt[r] >= 0) {
            sum -= lp[r];
            logp_out[k++] = lp[r];
            dlogp[r] = -1.0f / (float)n_targets;
        }
    *loss_out = (float)(sum / n_targets);
    CHECK(model_zero_grad(m, &err));
    CHECK(model_backward(m, dlogp, NULL, &err));
    CHECK(model_read_grads(m, grads, &err));
    free(group_p);
    free(group_first);
    free(tok);
    free(pos);
    free(tgt);
    free(scu);
    free(parent);
    free(lp);
    free(dlogp);
    return n_targets;
}

/* The "lora" mode: see the header. Writes out_path itself. */
static void lora_dump(model *m, json_t *lj, json_t *adamw, const model_batch *b, const char *out) {
    chord_err err = {0};
    model_lora_config lc = {.rank = (int)json_integer_value(json_object_get(lj, "rank")),
                            .alpha = num(lj, "alpha", 0.0),
                            .train_embeddings = json_is_true(json_object_get(lj, "train_embeddings"))};
    json_t *targets = json_object_get(lj, "targets");
    for (size_t i = 0; i < json_array_size(targets); i++) {
        const char *t = json_string_value(json_array_get(targets, i));
        int k = model_lora_target_of(t);
        if (k < 0) die("lora: unknown target");
        lc.targets |= 1u << k;
    }
    const char *load = json_string_value(json_object_get(lj, "load"));
    if (load) {
        CHECK(model_lora_load(m, load, &err));
    } else {
        CHECK(model_lora_attach(m, &lc, (uint64_t)num(lj, "seed", 1), &err));
    }
    int nt = 0;
    size_t np = 0;
    const model_tensor *lt = model_lora_tensors(m, &nt, &np);
    float *p = xcalloc(np, sizeof *p), *g = xcalloc(np, sizeof *g);
    CHECK(model_lora_read_params(m, p, &err));
    for (int i = 0; !load && i < nt; i++) { /* B = 0 would hide every A gradient */
        if (strstr(lt[i].name, ".lora_B."))
            for (size_t j = 0; j < lt[i].numel; j++)
                p[lt[i].offset + j] = 0.05f * sinf(0.37f * (float)j + (float)i);
        if (!strstr(lt[i].name, ".lora_")) /* an embedding copy: moved off the base's */
            for (size_t j = 0; j < lt[i].numel; j++)
                p[lt[i].offset + j] += 0.02f * cosf(0.23f * (float)j + (float)i);
    }
    CHECK(model_lora_write_params(m, p, &err));
    const char *save = json_string_value(json_object_get(lj, "save"));
    const char *merged = json_string_value(json_object_get(lj, "save_merged"));
    if (save) CHECK(model_lora_save(m, save, NULL, &err));
    if (merged) CHECK(model_save_merged(m, merged, ST_F32, 0, &err));
    const int N = b->N, V = m->cfg.vocab_size;
    int n_targets = 0;
    for (int n = 0; n < N; n++)
        n_targets += b->targets[n] >= 0;
    float *logits = xcalloc((size_t)N * V, sizeof *logits),
          *logp = xcalloc((size_t)N, sizeof *logp);
    float *dlogp = xcalloc((size_t)N, sizeof *dlogp);
    for (int n = 0; n < N; n++)
        dlogp[n] = b->targets[n] >= 0 ? -1.0f / (float)n_targets : 0.0f;
    /* "dropout": PEFT's lora_dropout with chord's masks (seed "dropout_seed"), every pass after
     * this one: the eval-mode logits (lora.logits_eval) first */
    float *logits_eval = NULL;
    if (num(lj, "dropout", 0.0) > 0.0) {
        logits_eval = xcalloc((size_t)N * V, sizeof *logits_eval);
        CHECK(model_forward(m, b, 1.0f, NULL, NULL, &err));
        CHECK(model_read_logits(m, logits_eval, &err));
    }
    if (num(lj, "dropout", 0.0) > 0.0)
        CHECK(model_lora_set_dropout(m, (float)num(lj, "dropout", 0.0),
                                     (uint64_t)num(lj, "dropout_seed", 1.0), &err));
    CHECK(model_forward(m, b, 1.0f, logp, NULL, &err));
    CHECK(model_read_logits(m, logits, &err));
    if (load) { /* the loaded adapter's logits only */
        st_writer *w = st_writer_new();
        int64_t shp[2] = {N, V};
        CHECK(st_writer_add(w, "lora.logits", logits, shp, 2, ST_F32, &err));
        CHECK(st_writer_save(w, out, &err));
        st_writer_free(w);
        free(p), free(g), free(logits), free(logp), free(dlogp);
        return;
    }
    double sum = 0.0;
    for (int n = 0; n < N; n++)
        sum -= b->targets[n] >= 0 ? logp[n] : 0.0f;
    float loss = (float)(sum / n_targets);
    CHECK(model_zero_grad(m, &err));
    CHECK(model_backward(m, dlogp, NULL, &err));
    CHECK(model_lora_read_grads(m, g, &err));
    float *after = NULL;
    if (adamw) {
        int steps = (int)json_integer_value(json_object_get(adamw, "steps"));
        for (int k = 0; k < steps; k++) {
            CHECK(model_zero_grad(m, &err));
            CHECK(model_forward(m, b, 1.0f, NULL, NULL, &err));
            CHECK(model_backward(m, dlogp, NULL, &err));
            CHECK(
                model_adamw_step(m, (float)num(adamw, "lr", 1e-3), (float)num(adamw, "beta1", 0.9),
                                 (float)num(adamw, "beta2", 0.999), (float)num(adamw, "eps", 1e-8),
                                 (float)num(adamw, "weight_decay", 0.0),
                                 (float)num(adamw, "grad_clip", 0.0), NULL, &err));
        }
        after = xcalloc(np, sizeof *after);
        CHECK(model_lora_read_params(m, after, &err));
    }
    st_writer *w = st_writer_new();
    int64_t shp[2] = {N, V};
    char name[200];
    CHECK(st_writer_add(w, "lora.logits", logits, shp, 2, ST_F32, &err));
    if (logits_eval) CHECK(st_writer_add(w, "lora.logits_eval", logits_eval, shp, 2, ST_F32, &err));
    shp[0] = 1;
    CHECK(st_writer_add(w, "lora.loss", &loss, shp, 1, ST_F32, &err));
    for (int i = 0; i < nt; i++) {
        const model_tensor *t = &lt[i];
        snprintf(name, sizeof name, "lora.param.%s", t->name);
        CHECK(st_writer_add(w, name, p + t->offset, t->shape, t->ndim, ST_F32, &err));
        snprintf(name, sizeof name, "lora.grad.%s", t->name);
        CHECK(st_writer_add(w, name, g + t->offset, t->shape, t->ndim, ST_F32, &err));
        if (after) {
            snprintf(name, sizeof name, "lora.adamw.%s", t->name);
            CHECK(st_writer_add(w, name, after + t->offset, t->shape, t->ndim, ST_F32, &err));
        }
    }
    CHECK(st_writer_save(w, out, &err));
    st_writer_free(w);
    free(p), free(g), free(after), free(logits), free(logp), free(dlogp), free(logits_eval);
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *batch_path = NULL, *out_path = NULL;
    int threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--model") == 0)
            model_dir = argv[i + 1];
        else if (strcmp(argv[i], "--batch") == 0)
            batch_path = argv[i + 1];
        else if (strcmp(argv[i], "--out") == 0)
            out_path = argv[i + 1];
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else
            die("unknown option");
    }
    if (!model_dir || !batch_path || !out_path)
        die("usage: chord_refdump --model DIR --batch batch.json --out out.safetensors");

    chord_err err = {0};
    json_error_t jerr;
    json_t *batch = json_load_file(batch_path, 0, &jerr);
    if (!batch) die(jerr.text);
    json_t *seqs = json_object_get(batch, "sequences"), *prefix = json_object_get(batch, "prefix");
    if (!json_is_array(seqs) || !json_is_array(prefix) ||
        json_array_size(prefix) != json_array_size(seqs))
        die("batch: needs sequences and prefix arrays of the same length");

    char oerr[256];
    ops_ctx *ops = ops_open("cpu", threads, oerr, sizeof oerr);
    if (!ops) die(oerr);
    model *m = NULL;
    CHECK(model_load(model_dir, ops, &m, &err));
    json_t *budget = json_object_get(batch, "logits_budget_bytes");
    if (budget) m->logits_budget_bytes = (size_t)json_integer_value(budget);
    const int V = m->cfg.vocab_size;

    /* the packed batch */
    const int S = (int)json_array_size(seqs);
    int N = 0;
    for (int s = 0; s < S; s++)
        N += (int)json_array_size(json_array_get(seqs, s));
    int32_t *tokens = xcalloc((size_t)N, sizeof *tokens), *pos = xcalloc((size_t)N, sizeof *pos);
    int32_t *targets = xcalloc((size_t)N, sizeof *targets),
            *cu = xcalloc((size_t)S + 1, sizeof *cu);
    int n_targets = 0;
    for (int s = 0, n = 0; s < S; s++) {
        json_t *seq = json_array_get(seqs, s);
        int len = (int)json_array_size(seq);
        cu[s] = n;
        for (int i = 0; i < len; i++, n++) {
            tokens[n] = (int32_t)json_integer_value(json_array_get(seq, i));
            pos[n] = i;
        }
        for (int i = 0; i < len; i++) {
            targets[cu[s] + i] = i + 1 < len ? tokens[cu[s] + i + 1] : -1;
            n_targets += i + 1 < len;
        }
    }
    cu[S] = N;
    model_batch b = {
        .N = N, .S = S, .tokens = tokens, .positions = pos, .cu_seqlens = cu, .targets = targets};
    json_t *lora = json_object_get(batch, "lora");
    if (lora) { /* its own mode: the adapter's checks only */
        lora_dump(m, lora, json_object_get(batch, "adamw"), &b, out_path);
        free(tokens), free(pos), free(targets), free(cu);
        json_decref(batch);
        model_free(m);
        ops_close(ops);
        return 0;
    }

    float *logits = xcalloc((size_t)N * V, sizeof *logits);
    float *logp = xcalloc((size_t)N, sizeof *logp), *entropy = xcalloc((size_t)N, sizeof *entropy);
    float *dlogp = xcalloc((size_t)N, sizeof *dlogp);
    float loss = 0.0f;
    CHECK(model_forward(m, &b, 1.0f, logp, entropy, &err));
    CHECK(model_read_logits(m, logits, &err));
    double sum = 0.0;
    for (int n = 0; n < N; n++) {
        if (targets[n] >= 0) {
            sum -= logp[n];
            dlogp[n] = -1.0f / (float)n_targets;
        }
    }
    loss = (float)(sum / n_targets);
    CHECK(model_zero_grad(m, &err));
    CHECK(model_backward(m, dlogp, NULL, &err));
    float *grads = xcalloc(m->num_params, sizeof *grads);
    CHECK(model_read_grads(m, grads, &err));

    /* the shared-prompt pass, before anything updates the weights */
    json_t *shared = json_object_get(batch, "shared_prompts");
    float shared_loss = 0.0f, *shared_logp = NULL, *shared_grads = NULL;
    int shared_targets = 0;
    if (shared) {
        if (!json_is_array(shared)) die("batch: shared_prompts must be an array");
        shared_logp = xcalloc((size_t)N, sizeof *shared_logp);
        shared_grads = xcalloc(m->num_params, sizeof *shared_grads);
        shared_targets =
            shared_pass(m, shared, tokens, cu, S, &shared_loss, shared_logp, shared_grads);
    }

    /* KV-cache decode: slot s holds sequence s; slot S holds a copy of slot 0 */
    int max_len = 0, rows = 0;
    for (int s = 0; s < S; s++) {
        int len = cu[s + 1] - cu[s], p = (int)json_integer_value(json_array_get(prefix, s));
        if (p < 1 || p > len) die("batch: prefix[s] must be in 1..len(sequence s)");
        if (len > max_len) max_len = len;
        rows += len - p + 1;
    }
    int32_t *ptoks = xcalloc((size_t)N, sizeof *ptoks), *pcu = xcalloc((size_t)S + 1, sizeof *pcu);
    int32_t *slots = xcalloc((size_t)S + 1, sizeof *slots);
    int *pre = xcalloc((size_t)S, sizeof *pre), *row0 = xcalloc((size_t)S + 1, sizeof *row0);
    int np = 0;
    for (int s = 0; s < S; s++) {
        pre[s] = (int)json_integer_value(json_array_get(prefix, s));
        pcu[s] = np;
        memcpy(ptoks + np, tokens + cu[s], (size_t)pre[s] * sizeof *ptoks);
        np += pre[s];
        slots[s] = s;
        row0[s + 1] = row0[s] + (cu[s + 1] - cu[s]) - pre[s] + 1;
    }
    pcu[S] = np;
    const int copy_rows = (cu[1] - cu[0]) - pre[0] + 1;
    float *dec = xcalloc((size_t)rows * V, sizeof *dec);
    float *dec_copy = xcalloc((size_t)copy_rows * V, sizeof *dec_copy);
    model_kv_cache *kv = NULL;
    CHECK(model_kv_create(m, S + 1, max_len, &kv, &err));
    const float *dl = NULL;
    CHECK(model_prefill(m, kv, ptoks, pcu, S, slots, &dl, &err));
    for (int s = 0; s < S; s++)
        if (ops_to_host(ops, dec + (size_t)row0[s] * V, dl + (size_t)s * V,
                        (size_t)V * sizeof(float)) != 0)
            die(ops_last_error(ops));
    memcpy(dec_copy, dec, (size_t)V * sizeof(float));
    int32_t copy_dst = S;
    CHECK(model_kv_copy(m, kv, 0, &copy_dst, 1, pre[0], &err));
    int32_t *btok = xcalloc((size_t)S + 1, sizeof *btok),
            *bpos = xcalloc((size_t)S + 1, sizeof *bpos);
    int32_t *bslot = xcalloc((size_t)S + 1, sizeof *bslot),
            *bseq = xcalloc((size_t)S + 1, sizeof *bseq);
    for (int t = 1; t < max_len; t++) {
        int B = 0;
        for (int s = 0; s <= S; s++) {
            int q = s == S ? 0 : s, len = cu[q + 1] - cu[q];
            if (t < pre[q] || t >= len) continue;
            btok[B] = tokens[cu[q] + t];
            bpos[B] = t;
            bslot[B] = s;
            bseq[B] = s;
            B++;
        }
        if (B == 0) continue;
        CHECK(model_decode(m, kv, btok, bpos, bslot, B, &dl, &err));
        for (int i = 0; i < B; i++) {
            int s = bseq[i], q = s == S ? 0 : s;
            float *dst = s == S ? dec_copy + (size_t)(bpos[i] - pre[0] + 1) * V
                                : dec + (size_t)(row0[q] + bpos[i] - pre[q] + 1) * V;
            if (ops_to_host(ops, dst, dl + (size_t)i * V, (size_t)V * sizeof(float)) != 0)
                die(ops_last_error(ops));
        }
    }
    model_kv_free(kv);

    /* optional AdamW steps on the same batch */
    json_t *adamw = json_object_get(batch, "adamw");
    float *after = NULL, *norms = NULL;
    int steps = 0;
    if (adamw) {
        steps = (int)json_integer_value(json_object_get(adamw, "steps"));
        norms = xcalloc((size_t)steps, sizeof *norms);
        for (int k = 0; k < steps; k++) {
            double gn = 0.0;
            CHECK(model_zero_grad(m, &err));
            CHECK(model_forward(m, &b, 1.0f, NULL, NULL, &err));
            CHECK(model_backward(m, dlogp, NULL, &err));
            CHECK(
                model_adamw_step(m, (float)num(adamw, "lr", 1e-3), (float)num(adamw, "beta1", 0.9),
                                 (float)num(adamw, "beta2", 0.999), (float)num(adamw, "eps", 1e-8),
                                 (float)num(adamw, "weight_decay", 0.0),
                                 (float)num(adamw, "grad_clip", 0.0), &gn, &err));
            norms[k] = (float)gn;
        }
        after = xcalloc(m->num_params, sizeof *after);
        CHECK(model_read_params(m, after, &err));
    }

    /* the dump */
    st_writer *w = st_writer_new();
    int64_t shp[2];
    shp[0] = N;
    shp[1] = V;
    CHECK(st_writer_add(w, "logits", logits, shp, 2, ST_F32, &err));
    CHECK(st_writer_add(w, "logp", logp, shp, 1, ST_F32, &err));
    CHECK(st_writer_add(w, "entropy", entropy, shp, 1, ST_F32, &err));
    shp[0] = 1;
    CHECK(st_writer_add(w, "loss", &loss, shp, 1, ST_F32, &err));
    shp[0] = rows;
    CHECK(st_writer_add(w, "decode_logits", dec, shp, 2, ST_F32, &err));
    shp[0] = copy_rows;
    CHECK(st_writer_add(w, "decode_copy_logits", dec_copy, shp, 2, ST_F32, &err));
    char name[160];
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        snprintf(name, sizeof name, "grad.%s", t->name);
        CHECK(st_writer_add(w, name, grads + t->offset, t->shape, t->ndim, ST_F32, &err));
        if (after) {
            snprintf(name, sizeof name, "adamw.%s", t->name);
            CHECK(st_writer_add(w, name, after + t->offset, t->shape, t->ndim, ST_F32, &err));
        }
    }
    if (norms) {
        shp[0] = steps;
        CHECK(st_writer_add(w, "grad_norms", norms, shp, 1, ST_F32, &err));
    }
    if (shared) {
        shp[0] = 1;
        CHECK(st_writer_add(w, "shared.loss", &shared_loss, shp, 1, ST_F32, &err));
        shp[0] = shared_targets;
        CHECK(st_writer_add(w, "shared.logp", shared_logp, shp, 1, ST_F32, &err));
        for (int i = 0; i < m->n_tensors; i++) {
            const model_tensor *t = &m->tensors[i];
            snprintf(name, sizeof name, "shared.grad.%s", t->name);
            CHECK(
                st_writer_add(w, name, shared_grads + t->offset, t->shape, t->ndim, ST_F32, &err));
        }
    }
    CHECK(st_writer_save(w, out_path, &err));
    st_writer_free(w);

    free(after);
    free(norms);
    free(shared_logp);
    free(shared_grads);
    free(btok);
    free(bpos);
    free(bslot);
    free(bseq);
    free(dec);
    free(dec_copy);
    free(ptoks);
    free(pcu);
    free(slots);
    free(pre);
    free(row0);
    free(grads);
    free(logits);
    free(logp);
    free(entropy);
    free(dlogp);
    free(tokens);
    free(pos);
    free(targets);
    free(cu);
    json_decref(batch);
    model_free(m);
    ops_close(ops);
    return 0;
}
