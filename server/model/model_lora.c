/* model_lora.c — a LoRA adapter on the engine's projections (model.h, "LoRA"): its layout over one
 * flat buffer (per layer, per adapted target: A (rank, in) then B (out, rank), named as PEFT
 * names them), PEFT's initialisation, host reads and writes, and the two passes model.c runs per
 * target: y += s · B A x forward, and the gradients of A, B and x backward. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops_math.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/rng.h"
#include "server/model/model_lora_internal.h"

const char *const model_lora_target_names[MODEL_LORA_N_TARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

int model_lora_target_of(const char *name) {
    for (int k = 0; name && k < MODEL_LORA_N_TARGETS; k++)
        if (strcmp(name, model_lora_target_names[k]) == 0) return k;
    return -1;
}

#define OP(name, ...)                                                                              \
    do {                                                                                           \
        if (ops_##name(m->ops, __VA_ARGS__) != 0)                                                  \
            return chord_err_setc(err, CHORD_E_INTERNAL, "lora: backend op %s failed: %s", #name,  \
                                  ops_last_error(m->ops));                                         \
    } while (0)

static int oom(chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "lora: out of host memory");
}

void model_lora_point(model *m) {
    model_lora *a = m->lora;
    if (!a || !a->cfg.train_embeddings) return;
    const int on = !a->disabled;
    m->w.wte = on ? a->params + a->emb_off : a->base_wte;
    m->w.lm_head = on ? a->params + a->head_off : a->base_lm_head;
    m->g.wte = on && a->grads ? a->grads + a->emb_off : NULL;
    m->g.lm_head = on && a->grads ? a->grads + a->head_off : NULL;
}

void model_lora_free(model *m) {
    model_lora *a = m->lora;
    if (!a) return;
    if (a->cfg.train_embeddings && a->base_wte) { /* the base's own back */
        m->w.wte = a->base_wte;
        m->w.lm_head = a->base_lm_head;
        m->g.wte = m->g.lm_head = NULL;
    }
    ops_free(m->ops, a->params);
    ops_free(m->ops, a->grads);
    ops_free(m->ops, a->adam_m);
    ops_free(m->ops, a->adam_v);
    free(a->w);
    free(a->g);
    free(a->tensors);
    free(a);
    m->lora = NULL;
}

/* Points pairs (L x targets) into base (NULL: counts only); names the tensors when t != NULL.
 * Returns the floats laid out. */
static size_t lora_layout(const model *m, const model_lora *a, float *base, model_lora_pair *pairs,
                          model_tensor *t) {
    const int L = m->cfg.num_hidden_layers, r = a->cfg.rank;
    size_t off = 0;
    int nt = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < MODEL_LORA_N_TARGETS; k++) {
            if (!(a->cfg.targets & (1u << k))) continue;
            const char *mod = k <= MODEL_LORA_O ? "self_attn" : "mlp";
            for (int ab = 0; ab < 2; ab++) {
                size_t rows = ab ? (size_t)a->out[k] : (size_t)r;
                size_t cols = ab ? (size_t)r : (size_t)a->in[k];
                if (pairs) {
                    float *p = base ? base + off : NULL;
                    if (ab)
                        pairs[l * MODEL_LORA_N_TARGETS + k].B = p;
                    else
                        pairs[l * MODEL_LORA_N_TARGETS + k].A = p;
                }
                if (t) {
                    model_tensor *x = &t[nt];
                    snprintf(x->name, sizeof x->name,
                             "base_model.model.model.layers.%d.%s.%s.lora_%c.weight", l, mod,
                             model_lora_target_names[k], ab ? 'B' : 'A');
                    x->ndim = 2;
                    x->shape[0] = (int64_t)rows;
                    x->shape[1] = (int64_t)cols;
                    x->offset = off;
                    x->numel = rows * cols;
                }
                nt++;
                off += rows * cols;
            }
        }
    if (a->cfg.train_embeddings) { /* PEFT's modules_to_save: embed_tokens, an untied lm_head */
        const size_t V = (size_t)m->cfg.vocab_size, C = (size_t)m->cfg.hidden_size;
        const int untied = !m->cfg.tie_word_embeddings;
        for (int h = 0; h <= untied; h++) {
            if (t) {
                model_tensor *x = &t[nt];
                snprintf(x->name, sizeof x->name, "%s",
                         h ? "base_model.model.lm_head.weight"
                           : "base_model.model.model.embed_tokens.weight");
                x->ndim = 2;
                x->shape[0] = (int64_t)V;
                x->shape[1] = (int64_t)C;
                x->offset = off;
                x->numel = V * C;
            }
            nt++;
            off += V * C;
        }
    }
    return off;
}

/* The name PEFT also writes for a tied lm_head (ensure_weight_tying): the embedding's copy. */
static const char tied_head_name[] = "base_model.model.lm_head.weight";

int model_lora_attach(model *m, const model_lora_config *cfg, uint64_t seed, chord_err *err) {
    if (m->lora) return chord_err_set(err, "lora: the model has an adapter already");
    if (!cfg || cfg->rank < 1 || !(cfg->alpha > 0.0) || !isfinite(cfg->alpha) ||
        (cfg->targets & ((1u << MODEL_LORA_N_TARGETS) - 1)) == 0 ||
        (cfg->targets >> MODEL_LORA_N_TARGETS) != 0)
        return chord_err_set(err, "lora: needs rank >= 1, alpha > 0 and at least one known "
                                  "target module");
    const model_config *c = &m->cfg;
    const int C = c->hidden_size, I = c->intermediate_size;
    const int HqD = c->num_attention_heads * c->head_dim,
              HkvD = c->num_key_value_heads * c->head_dim;
    model_lora *a = calloc(1, sizeof *a);
    if (!a) return oom(err);
    a->cfg = *cfg;
    a->scale = (float)(cfg->alpha / cfg->rank);
    const int in[] = {C, C, C, HqD, C, C, I}, out[] = {HqD, HkvD, HkvD, C, I, I, C};
    memcpy(a->in, in, sizeof a->in);
    memcpy(a->out, out, sizeof a->out);
    m->lora = a;
    const size_t pairs = (size_t)c->num_hidden_layers * MODEL_LORA_N_TARGETS;
    a->w = calloc(pairs, sizeof *a->w);
    a->g = calloc(pairs, sizeof *a->g);
    for (int k = 0; k < MODEL_LORA_N_TARGETS; k++)
        a->n_tensors += (cfg->targets & (1u << k)) ? 2 * c->num_hidden_layers : 0;
    if (cfg->train_embeddings) a->n_tensors += c->tie_word_embeddings ? 1 : 2;
    a->tensors = calloc((size_t)a->n_tensors, sizeof *a->tensors);
    if (!a->w || !a->g || !a->tensors) {
        model_lora_free(m);
        return oom(err);
    }
    a->num_params = lora_layout(m, a, NULL, NULL, a->tensors);
    if (cfg->train_embeddings) {
        const size_t VC = (size_t)c->vocab_size * (size_t)c->hidden_size;
        a->emb_off = a->tensors[a->n_tensors - (c->tie_word_embeddings ? 1 : 2)].offset;
        a->head_off = c->tie_word_embeddings ? a->emb_off : a->emb_off + VC;
        a->base_wte = m->w.wte;
        a->base_lm_head = m->w.lm_head;
    }
    a->params = ops_alloc(m->ops, a->num_params * sizeof(float));
    float *host = malloc(a->num_params * sizeof *host);
    if (!a->params || !host) {
        free(host);
        int rc = chord_err_setc(err, CHORD_E_TOO_LARGE,
                                "lora: cannot allocate %zu bytes of adapter parameters on %s",
                                a->num_params * sizeof(float), m->ops->be->name);
        model_lora_free(m);
        return rc;
    }
    lora_layout(m, a, a->params, a->w, NULL);
    /* A: kaiming_uniform_(a = sqrt(5)) = uniform(-1/sqrt(in), 1/sqrt(in)); B: zeros */
    uint64_t st = chord_splitmix64(seed ^ 0x4C6F5241ull);
    for (int i = 0; i < a->n_tensors; i++) {
        const model_tensor *t = &a->tensors[i];
        if (!strstr(t->name, ".lora_")) continue; /* an embedding copy: the base's, below */
        int is_b = strstr(t->name, ".lora_B.") != NULL;
        double bound = 1.0 / sqrt((double)t->shape[1]);
        for (size_t j = 0; j < t->numel; j++) {
            double u = (double)(chord_splitmix64_next(&st) >> 11) * 0x1.0p-53;
            host[t->offset + j] = is_b ? 0.0f : (float)((2.0 * u - 1.0) * bound);
        }
    }
    int rc = 0;
    if (cfg->train_embeddings) { /* the copies start as the base's embedding and lm_head */
        const size_t VC = (size_t)c->vocab_size * (size_t)c->hidden_size;
        rc = ops_to_host(m->ops, host + a->emb_off, a->base_wte, VC * sizeof(float));
        if (rc == 0 && a->head_off != a->emb_off)
            rc = ops_to_host(m->ops, host + a->head_off, a->base_lm_head, VC * sizeof(float));
    }
    if (rc == 0) rc = ops_to_device(m->ops, a->params, host, a->num_params * sizeof(float));
    free(host);
    if (rc != 0) {
        rc = chord_err_setc(err, CHORD_E_INTERNAL, "lora: to_device: %s", ops_last_error(m->ops));
        model_lora_free(m);
        return rc;
    }
    /* the base is frozen from now on: whatever gradients or moments it had are released */
    ops_free(m->ops, m->grads);
    ops_free(m->ops, m->adam_m);
    ops_free(m->ops, m->adam_v);
    m->grads = m->adam_m = m->adam_v = NULL;
    free(m->g.layers);
    memset(&m->g, 0, sizeof m->g);
    model_lora_point(m);
    return 0;
}

const model_tensor *model_lora_tensors(const model *m, int *n_out, size_t *num_params_out) {
    if (n_out) *n_out = m->lora ? m->lora->n_tensors : 0;
    if (num_params_out) *num_params_out = m->lora ? m->lora->num_params : 0;
    return m->lora ? m->lora->tensors : NULL;
}

int model_lora_ensure_grads(model *m, chord_err *err) {
    model_lora *a = m->lora;
    if (a->grads) return 0;
    a->grads = ops_alloc(m->ops, a->num_params * sizeof(float));
    if (!a->grads)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "lora: cannot allocate %zu bytes of adapter gradients on %s: %s",
                              a->num_params * sizeof(float), m->ops->be->name,
                              ops_last_error(m->ops));
    lora_layout(m, a, a->grads, a->g, NULL);
    model_lora_point(m);
    return 0;
}

static int lora_copy(const model *m, float *dst_host, const float *src, chord_err *err) {
    if (!m->lora) return chord_err_set(err, "lora: the model has no adapter");
    if (!src) return chord_err_set(err, "lora: the adapter has no gradients yet");
    if (ops_to_host(m->ops, dst_host, src, m->lora->num_params * sizeof(float)) != 0)
        return chord_err_setc(err, CHORD_E_INTERNAL, "lora: to_host: %s", ops_last_error(m->ops));
    return 0;
}

int model_lora_read_params(const model *m, float *host, chord_err *err) {
    return lora_copy(m, host, m->lora ? m->lora->params : NULL, err);
}

int model_lora_read_grads(const model *m, float *host, chord_err *err) {
    return lora_copy(m, host, m->lora ? m->lora->grads : NULL, err);
}

int model_lora_write_params(model *m, const float *host, chord_err *err) {
    if (!m->lora) return chord_err_set(err, "lora: the model has no adapter");
    for (size_t i = 0; i < m->lora->num_params; i++)
        if (!isfinite(host[i]))
            return chord_err_set(err, "lora: parameter %zu is not finite (%g)", i, host[i]);
    OP(to_device, m->lora->params, host, m->lora->num_params * sizeof(float));
    return 0;
}

int model_lora_get_config(const model *m, model_lora_config *out) {
    if (!m->lora) return -1;
    *out = m->lora->cfg;
    return 0;
}

int model_lora_set_dropout(model *m, float p, uint64_t seed, chord_err *err) {
    if (!m->lora) return chord_err_set(err, "lora: the model has no adapter");
    if (!(p >= 0.0f && p < 1.0f)) return chord_err_set(err, "lora: dropout %g is not in [0, 1)", p);
    m->lora->dropout = p;
    m->lora->dropout_seed = seed;
    return 0;
}

/* The mask seed of target t in layer l. */
static unsigned long long drop_seed(const model_lora *a, int l, model_lora_target t) {
    return ops_mix64(a->dropout_seed ^
                     ops_mix64((unsigned long long)(l * MODEL_LORA_N_TARGETS + t)));
}

int model_lora_set_enabled(model *m, int on, chord_err *err) {
    if (!m->lora) return chord_err_set(err, "lora: the model has no adapter");
    m->lora->disabled = !on;
    model_lora_point(m);
    return 0;
}

int model_adam_steps(const model *m) {
    return m->lora ? m->lora->adam_t : m->adam_t;
}

size_t model_trainable_params(const model *m) {
    return m->lora ? m->lora->num_params : m->num_params;
}

float *model_trainable_grads(model *m) { return m->lora ? m->lora->grads : m->grads; }

float *model_trainable_weights(model *m) { return m->lora ? m->lora->params : m->params; }

int model_lora_forward(model *m, int l, model_lora_target t, const float *x, int N, float *y,
                       int ldy, float *u, float *tmp, float *xd, chord_err *err) {
    const model_lora *a = m->lora;
    const model_lora_pair *p = &a->w[l * MODEL_LORA_N_TARGETS + t];
    if (!p->A || a->disabled) return 0;
    const int r = a->cfg.rank, in = a->in[t], out = a->out[t];
    if (xd && a->dropout > 0.0f) { /* PEFT: lora_B(lora_A(dropout(x))) */
        OP(dropout, xd, x, N, in, a->dropout, drop_seed(a, l, t), 0);
        x = xd;
    }
    OP(matmul_forward, u, x, p->A, NULL, N, in, r);
    OP(matmul_forward, tmp, u, p->B, NULL, N, r, out);
    OP(axpy2d, y, ldy, tmp, out, N, out, a->scale, 1);
    return 0;
}

int model_lora_backward(model *m, int l, model_lora_target t, const float *x, int N,
                        const float *dy, int lddy, float *dx, const float *u, float *tmp, float *du,
                        float *xd, float *dxd, chord_err *err) {
    const model_lora *a = m->lora;
    const model_lora_pair *p = &a->w[l * MODEL_LORA_N_TARGETS + t];
    const model_lora_pair *g = &a->g[l * MODEL_LORA_N_TARGETS + t];
    if (!p->A) return 0;
    const int r = a->cfg.rank, in = a->in[t], out = a->out[t];
    OP(axpy2d, tmp, out, dy, lddy, N, out, a->scale, 0);             /* s dy */
    OP(matmul_backward, du, g->B, NULL, tmp, u, p->B, N, r, out, 0); /* du = s dy B */
    if (xd && dxd && a->dropout > 0.0f) {                            /* the forward's mask again */
        const unsigned long long seed = drop_seed(a, l, t);
        OP(dropout, xd, x, N, in, a->dropout, seed, 0);
        OP(matmul_backward, dxd, g->A, NULL, du, xd, p->A, N, in, r, 0); /* dxd = du A */
        OP(dropout, dx, dxd, N, in, a->dropout, seed, 1);                /* dx += mask dxd */
        return 0;
    }
    OP(matmul_backward, dx, g->A, NULL, du, x, p->A, N, in, r, 1); /* dx += du A */
    return 0;
}

/* ---- merge, PEFT files ---- */

/* Where target t of layer l lives in the base's flat buffer: its matrix's first row (out rows of
 * in floats each). */
static size_t base_rows_offset(const model *m, int l, model_lora_target t) {
    const model_layer_weights *w = &m->w.layers[l];
    const model_config *c = &m->cfg;
    const size_t C = (size_t)c->hidden_size, I = (size_t)c->intermediate_size;
    const size_t HqD = (size_t)c->num_attention_heads * c->head_dim,
                 HkvD = (size_t)c->num_key_value_heads * c->head_dim;
    switch (t) {
    case MODEL_LORA_Q:
        return (size_t)(w->wqkv - m->params);
    case MODEL_LORA_K:
        return (size_t)(w->wqkv - m->params) + HqD * C;
    case MODEL_LORA_V:
        return (size_t)(w->wqkv - m->params) + (HqD + HkvD) * C;
    case MODEL_LORA_O:
        return (size_t)(w->wo - m->params);
    case MODEL_LORA_GATE:
        return (size_t)(w->wgu - m->params);
    case MODEL_LORA_UP:
        return (size_t)(w->wgu - m->params) + I * C;
    default:
        return (size_t)(w->wdown - m->params);
    }
}

int model_lora_merge_into(const model *m, float *host, chord_err *err) {
    const model_lora *a = m->lora;
    float *p = malloc(a->num_params * sizeof *p);
    if (!p) return oom(err);
    if (model_lora_read_params(m, p, err) != 0) {
        free(p);
        return -1;
    }
    const int r = a->cfg.rank;
    for (int l = 0; l < m->cfg.num_hidden_layers; l++)
        for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
            const model_lora_pair *q = &a->w[l * MODEL_LORA_N_TARGETS + t];
            if (!q->A) continue;
            const float *A = p + (q->A - a->params), *B = p + (q->B - a->params);
            const int in = a->in[t], out = a->out[t];
            float *W = host + base_rows_offset(m, l, (model_lora_target)t);
            for (int o = 0; o < out; o++)
                for (int i = 0; i < in; i++) {
                    double d = 0.0;
                    for (int j = 0; j < r; j++)
                        d += (double)B[(size_t)o * r + j] * A[(size_t)j * in + i];
                    W[(size_t)o * in + i] += (float)(a->scale * d);
                }
        }
    if (a->cfg.train_embeddings) { /* the trained copies replace the base's */
        const size_t VC = (size_t)m->cfg.vocab_size * (size_t)m->cfg.hidden_size;
        memcpy(host + (a->base_wte - m->params), p + a->emb_off, VC * sizeof(float));
        if (a->head_off != a->emb_off)
            memcpy(host + (a->base_lm_head - m->params), p + a->head_off, VC * sizeof(float));
    }
    free(p);
    return 0;
}

int model_lora_save(const model *m, const char *dir, const char *base_name, chord_err *err) {
    const model_lora *a = m->lora;
    if (!a) return chord_err_set(err, "lora: the model has no adapter to save");
    if (chord_mkdirs(dir, err) != 0) return -1;
    float *p = malloc(a->num_params * sizeof *p);
    st_writer *w = st_writer_new();
    json_t *cfg = json_object(), *mods = json_array();
    char path[4096], *text = NULL;
    int rc = -1;
    if (!p || !w || !cfg || !mods) {
        oom(err);
        goto done;
    }
    if (model_lora_read_params(m, p, err) != 0) goto done;
    for (int i = 0; i < a->n_tensors; i++) {
        const model_tensor *t = &a->tensors[i];
        if (st_writer_add(w, t->name, p + t->offset, t->shape, t->ndim, ST_F32, err) != 0)
            goto done;
    }
    const int tied_copy = a->cfg.train_embeddings && a->head_off == a->emb_off;
    if (tied_copy) { /* PEFT writes the tied lm_head's copy too */
        const model_tensor *e = &a->tensors[a->n_tensors - 1];
        if (st_writer_add(w, tied_head_name, p + e->offset, e->shape, e->ndim, ST_F32, err) != 0)
            goto done;
    }
    json_t *save_mods = json_null();
    if (a->cfg.train_embeddings)
        save_mods = tied_copy ? json_pack("[s]", "embed_tokens")
                              : json_pack("[s,s]", "embed_tokens", "lm_head");
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (st_writer_metadata(w, "format", "pt", err) != 0 || st_writer_save(w, path, err) != 0)
        goto done;
    for (int k = 0; k < MODEL_LORA_N_TARGETS; k++)
        if (a->cfg.targets & (1u << k))
            json_array_append_new(mods, json_string(model_lora_target_names[k]));
    int bad = json_object_set_new(cfg, "peft_type", json_string("LORA")) ||
              json_object_set_new(cfg, "task_type", json_string("CAUSAL_LM")) ||
              json_object_set_new(cfg, "r", json_integer(a->cfg.rank)) ||
              json_object_set_new(cfg, "lora_alpha", json_real(a->cfg.alpha)) ||
              json_object_set_new(cfg, "lora_dropout", json_real(0.0)) ||
              json_object_set(cfg, "target_modules", mods) ||
              json_object_set_new(cfg, "bias", json_string("none")) ||
              json_object_set_new(cfg, "fan_in_fan_out", json_false()) ||
              json_object_set_new(cfg, "inference_mode", json_true()) ||
              json_object_set_new(cfg, "init_lora_weights", json_true()) ||
              json_object_set_new(cfg, "use_rslora", json_false()) ||
              json_object_set_new(cfg, "use_dora", json_false()) ||
              json_object_set_new(cfg, "modules_to_save", save_mods) ||
              json_object_set_new(cfg, "ensure_weight_tying", json_boolean(tied_copy)) ||
              json_object_set_new(cfg, "base_model_name_or_path",
                                  base_name ? json_string(base_name) : json_null());
    text = bad ? NULL : json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) {
        oom(err);
        goto done;
    }
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (chord_write_file_atomic(path, text, strlen(text), err) != 0) goto done;
    rc = 0;
done:
    if (rc != 0) chord_err_prefix(err, "lora: saving %s", dir);
    free(text);
    json_decref(mods);
    json_decref(cfg);
    st_writer_free(w);
    free(p);
    return rc;
}

/* modules_to_save -> cfg->train_embeddings: none (null, []), or the embeddings as
 * train_embeddings trains them — ["embed_tokens"] (tied, with ensure_weight_tying; PEFT also
 * lists "model.embed_tokens") or ["embed_tokens", "lm_head"] (untied), with or without a
 * "model." prefix. */
static int read_modules_to_save(const json_t *doc, int tied, model_lora_config *cfg,
                                chord_err *err) {
    const json_t *v = chord_json_field(doc, "modules_to_save");
    cfg->train_embeddings = 0;
    if (!v || json_is_null(v) || (json_is_array(v) && json_array_size(v) == 0)) return 0;
    if (!json_is_array(v)) return chord_err_set(err, "modules_to_save: not a list");
    int emb = 0, head = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        const char *s = json_string_value(json_array_get(v, i));
        if (s && !strncmp(s, "model.", 6)) s += 6;
        if (s && !strcmp(s, "embed_tokens"))
            emb = 1;
        else if (s && !strcmp(s, "lm_head"))
            head = 1;
        else
            return chord_err_set(err,
                                 "modules_to_save[%zu]: %s%s%s is not supported by chord (only "
                                 "embed_tokens and lm_head: the embeddings)",
                                 i, s ? "\"" : "", s ? s : "not a string", s ? "\"" : "");
    }
    int tie = 0;
    if (chord_json_get_bool(doc, "", "ensure_weight_tying", 0, &tie, err)) return -1;
    if (!emb || (!tied && !head))
        return chord_err_set(err, "modules_to_save: chord trains the embeddings whole "
                                  "(embed_tokens%s), not one of them",
                             tied ? "" : " and lm_head");
    if (tied && !tie)
        return chord_err_set(err, "modules_to_save: the base's lm_head is tied to embed_tokens: "
                                  "chord trains them as one (ensure_weight_tying true)");
    cfg->train_embeddings = 1;
    return 0;
}

/* adapter_config.json -> cfg, refusing what chord does not run (by field). tied: the base ties
 * lm_head to embed_tokens. */
static int read_peft_config(const char *path, int tied, model_lora_config *cfg, chord_err *err) {
    char *text = NULL;
    size_t len = 0;
    if (chord_read_file(path, &text, &len, err) != 0) return -1;
    json_error_t je;
    json_t *doc = json_loadb(text, len, 0, &je);
    free(text);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return chord_err_set(err, "%s: not a JSON object (line %d: %s)", path, je.line, je.text);
    }
    int rc = -1;
    const char *peft_type = "LORA", *bias = "none";
    int64_t rank = 0;
    double alpha = 0.0;
    int rslora = 0, dora = 0, fifo = 0;
    json_t *mods = NULL;
    if (chord_json_get_string(doc, "", "peft_type", 0, &peft_type, err) ||
        chord_json_get_int(doc, "", "r", CHORD_JSON_REQUIRED, 1, 65536, &rank, err) ||
        chord_json_get_number(doc, "", "lora_alpha", CHORD_JSON_REQUIRED | CHORD_JSON_LO_OPEN, 0.0,
                              INFINITY, &alpha, err) ||
        chord_json_get_string(doc, "", "bias", 0, &bias, err) ||
        chord_json_get_bool(doc, "", "use_rslora", 0, &rslora, err) ||
        chord_json_get_bool(doc, "", "use_dora", 0, &dora, err) ||
        chord_json_get_bool(doc, "", "fan_in_fan_out", 0, &fifo, err))
        goto done;
    if (strcmp(peft_type, "LORA") != 0) {
        chord_err_set(err, "peft_type: \"%s\" is not LORA", peft_type);
        goto done;
    }
    if (strcmp(bias, "none") != 0 || rslora || dora || fifo) {
        chord_err_set(err,
                      "%s: chord runs plain LoRA (bias \"none\", no use_rslora, use_dora or "
                      "fan_in_fan_out)",
                      strcmp(bias, "none") != 0 ? "bias"
                      : rslora                  ? "use_rslora"
                      : dora                    ? "use_dora"
                                                : "fan_in_fan_out");
        goto done;
    }
    if (read_modules_to_save(doc, tied, cfg, err)) goto done;
    static const char *const unsupported[] = {"layers_to_transform", "rank_pattern",
                                              "alpha_pattern", "trainable_token_indices", NULL};
    for (int i = 0; unsupported[i]; i++) {
        json_t *v = chord_json_field(doc, unsupported[i]);
        if (v && !((json_is_array(v) && json_array_size(v) == 0) ||
                   (json_is_object(v) && json_object_size(v) == 0))) {
            chord_err_set(err, "%s: not supported by chord (plain LoRA on every layer)",
                          unsupported[i]);
            goto done;
        }
    }
    if (chord_json_get_array(doc, "", "target_modules", CHORD_JSON_REQUIRED, &mods, err)) goto done;
    cfg->rank = (int)rank;
    cfg->alpha = alpha;
    cfg->targets = 0;
    for (size_t i = 0; i < json_array_size(mods); i++) {
        const char *name = json_string_value(json_array_get(mods, i));
        int k = model_lora_target_of(name);
        if (k < 0) {
            chord_err_set(err,
                          "target_modules[%zu]: \"%s\" is none of q_proj, k_proj, v_proj, "
                          "o_proj, gate_proj, up_proj, down_proj",
                          i, name ? name : "(not a string)");
            goto done;
        }
        cfg->targets |= 1u << k;
    }
    if (!cfg->targets) {
        chord_err_set(err, "target_modules: empty");
        goto done;
    }
    rc = 0;
done:
    json_decref(doc);
    return rc;
}

int model_lora_load(model *m, const char *dir, chord_err *err) {
    char path[4096];
    model_lora_config cfg = {0};
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (read_peft_config(path, m->cfg.tie_word_embeddings, &cfg, err) != 0)
        return chord_err_prefix(err, "%s", path);
    if (model_lora_attach(m, &cfg, 0, err) != 0) return -1;
    const model_lora *a = m->lora;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    st_reader *rd = NULL;
    float *p = malloc(a->num_params * sizeof *p);
    int rc = -1;
    if (!p) {
        oom(err);
        goto done;
    }
    if (st_open(path, &rd, err) != 0) goto done;
    for (int i = 0; i < st_count(rd); i++) { /* every tensor of the file must be one of ours */
        const char *name = st_get(rd, i)->name;
        int found = a->cfg.train_embeddings && a->head_off == a->emb_off &&
                    strcmp(name, tied_head_name) == 0; /* PEFT's copy of the tied lm_head */
        for (int k = 0; k < a->n_tensors && !found; k++)
            found = strcmp(a->tensors[k].name, name) == 0;
        if (!found) {
            chord_err_set(err, "tensor %s is not in the adapter adapter_config.json describes",
                          name);
            goto done;
        }
    }
    for (int k = 0; k < a->n_tensors; k++) {
        const model_tensor *t = &a->tensors[k];
        if (st_read_f32(rd, t->name, p + t->offset, t->shape, t->ndim, err) != 0) goto done;
    }
    if (model_lora_write_params(m, p, err) != 0) goto done;
    rc = 0;
done:
    if (rd) st_close(rd);
    free(p);
    if (rc != 0) {
        chord_err_prefix(err, "%s", path);
        model_lora_free(m);
    }
    return rc;
}
