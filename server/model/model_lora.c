/* model_lora.c — a LoRA adapter on the engine's projections (model.h, "LoRA"): its layout over one
 * flat buffer (per layer, per adapted target: A (rank, in) then B (out, rank), named as PEFT
 * names them), PEFT's initialisation, host reads and writes, and the two passes model.c runs per
 * target: y += s · B A x forward, and the gradients of A, B and x backward. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/rng.h"
#include "server/model/model_lora_internal.h"

const char *const model_lora_target_names[MODEL_LORA_N_TARGETS] = {
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};

#define OP(name, ...)                                                                              \
    do {                                                                                           \
        if (ops_##name(m->ops, __VA_ARGS__) != 0)                                                  \
            return chord_err_setc(err, CHORD_E_INTERNAL, "lora: backend op %s failed: %s", #name,  \
                                  ops_last_error(m->ops));                                         \
    } while (0)

static int oom(chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "lora: out of host memory");
}

void model_lora_free(model *m) {
    model_lora *a = m->lora;
    if (!a) return;
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
    return off;
}

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
    a->tensors = calloc((size_t)a->n_tensors, sizeof *a->tensors);
    if (!a->w || !a->g || !a->tensors) {
        model_lora_free(m);
        return oom(err);
    }
    a->num_params = lora_layout(m, a, NULL, NULL, a->tensors);
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
        int is_b = strstr(t->name, ".lora_B.") != NULL;
        double bound = 1.0 / sqrt((double)t->shape[1]);
        for (size_t j = 0; j < t->numel; j++) {
            double u = (double)(chord_splitmix64_next(&st) >> 11) * 0x1.0p-53;
            host[t->offset + j] = is_b ? 0.0f : (float)((2.0 * u - 1.0) * bound);
        }
    }
    int rc = ops_to_device(m->ops, a->params, host, a->num_params * sizeof(float));
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

int model_lora_forward(model *m, int l, model_lora_target t, const float *x, int N, float *y,
                       int ldy, float *u, float *tmp, chord_err *err) {
    const model_lora *a = m->lora;
    const model_lora_pair *p = &a->w[l * MODEL_LORA_N_TARGETS + t];
    if (!p->A) return 0;
    const int r = a->cfg.rank, in = a->in[t], out = a->out[t];
    OP(matmul_forward, u, x, p->A, NULL, N, in, r);
    OP(matmul_forward, tmp, u, p->B, NULL, N, r, out);
    OP(axpy2d, y, ldy, tmp, out, N, out, a->scale, 1);
    return 0;
}

int model_lora_backward(model *m, int l, model_lora_target t, const float *x, int N,
                        const float *dy, int lddy, float *dx, const float *u, float *tmp, float *du,
                        chord_err *err) {
    const model_lora *a = m->lora;
    const model_lora_pair *p = &a->w[l * MODEL_LORA_N_TARGETS + t];
    const model_lora_pair *g = &a->g[l * MODEL_LORA_N_TARGETS + t];
    if (!p->A) return 0;
    const int r = a->cfg.rank, in = a->in[t], out = a->out[t];
    OP(axpy2d, tmp, out, dy, lddy, N, out, a->scale, 0);             /* s dy */
    OP(matmul_backward, du, g->B, NULL, tmp, u, p->B, N, r, out, 0); /* du = s dy B */
    OP(matmul_backward, dx, g->A, NULL, du, x, p->A, N, in, r, 1);   /* dx += du A */
    return 0;
}
