/* model.c — the transformer engine's compute: the parameter layout (one size table carving the
 * flat parameter, gradient and AdamW buffers), the activations of a packed batch, forward,
 * backward, AdamW, and KV-cache prefill/decode. Every number is computed by ops.h; this file
 * only sequences ops and owns device memory. Loading, saving and random init: model_io.c.
 *
 * The gradient rule (ops.h): parameter gradients ACCUMULATE (+=) so micro-batches add up until
 * model_zero_grad; activation gradients OVERWRITE; the residual stream ADDS (rmsnorm_backward
 * adds into the residual gradient, which carries the skip connection for free). */
#include "server/model/model.h"
#include "server/model/model_lora_internal.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OP(name, ...)                                                                              \
    do {                                                                                           \
        if (ops_##name(m->ops, __VA_ARGS__) != 0) return op_fail(m, #name, err);                   \
    } while (0)

static int op_fail(const model *m, const char *name, chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "model: backend op %s failed: %s", name,
                          ops_last_error(m->ops));
}

/* ---------------------------------------------------------------------------------------------
 * Precision (model.h): with a bf16 copy of the weights, every GEMM whose weight is one of the
 * model's matrices reads the copy (bf16 operands, fp32 accumulation); a weight elsewhere (a LoRA
 * adapter's, the adapter's trained embeddings) runs the float32 GEMM. */

static const uint16_t *weights_bf16(const model *m, const float *w) {
    if (!m->params16 || !w) return NULL;
    uintptr_t p = (uintptr_t)w, lo = (uintptr_t)m->params,
              hi = (uintptr_t)(m->params + m->num_decay);
    return p >= lo && p < hi ? m->params16 + (w - m->params) : NULL;
}

/* inp16: the input stored in bf16 (an activation of a bf16 run), else NULL and inp float32 */
static int mm_forward(model *m, float *out, const float *inp, const uint16_t *inp16,
                      const float *w, const float *bias, int N, int C, int OC) {
    const uint16_t *w16 = weights_bf16(m, w);
    if (w16)
        return ops_matmul_forward_bf16(m->ops, out, 0, inp16 ? (const void *)inp16 : inp,
                                       inp16 != NULL, w16, bias, N, C, OC);
    return ops_matmul_forward(m->ops, out, inp, w, bias, N, C, OC); /* inp16 is never set here */
}

static int mm_backward(model *m, float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const uint16_t *inp16, const float *w, int N, int C,
                       int OC, int accumulate) {
    const uint16_t *w16 = weights_bf16(m, w);
    if (w16)
        return ops_matmul_backward_bf16(m->ops, dinp, dweight, dbias, dout,
                                        inp16 ? (const void *)inp16 : inp, inp16 != NULL, w16, N,
                                        C, OC, accumulate);
    return ops_matmul_backward(m->ops, dinp, dweight, dbias, dout, inp, w, N, C, OC, accumulate);
}

/* MM(forward, ...) / MM(backward, ...): a GEMM of the model's, in its precision */
#define MM(name, ...)                                                                              \
    do {                                                                                           \
        if (mm_##name(m, __VA_ARGS__) != 0) return op_fail(m, "matmul_" #name, err);               \
    } while (0)

int model_weights_changed(model *m, chord_err *err) {
    if (!m->params16 || m->base) return 0;
    OP(cast_bf16, m->params16, m->params, m->num_decay);
    return 0;
}

/* the bf16 copy of [lo, hi) of the parameters, after an update of that slice */
static int weights_changed_slice(model *m, size_t lo, size_t hi, chord_err *err) {
    if (!m->params16 || m->base || m->lora) return 0;
    if (hi > m->num_decay) hi = m->num_decay;
    if (hi > lo) OP(cast_bf16, m->params16 + lo, m->params + lo, hi - lo);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Parameter layout. Matrices first (weight decay applies to them), then vectors (norms, biases).
 * Walked once to count and name, then once per flat buffer to set pointers. */

typedef struct layout_walk {
    const model_config *c;
    float *base;      /* NULL: count only */
    model_weights *w; /* pointers to fill (when base) */
    model_tensor *t;  /* names to fill (may be NULL) */
    int nt;
    size_t off;
} layout_walk;

static float *take(layout_walk *lw, size_t n) {
    float *p = lw->base ? lw->base + lw->off : NULL;
    lw->off += n;
    return p;
}

/* Names the HF tensor at offset `at` (floats into the flat buffer). */
static void name_tensor(layout_walk *lw, size_t at, int64_t rows, int64_t cols, const char *fmt,
                        int layer) {
    if (lw->t) {
        model_tensor *t = &lw->t[lw->nt];
        snprintf(t->name, sizeof t->name, fmt, layer);
        t->ndim = cols > 0 ? 2 : 1;
        t->shape[0] = rows;
        t->shape[1] = cols > 0 ? cols : 0;
        t->offset = at;
        t->numel = (size_t)rows * (size_t)(cols > 0 ? cols : 1);
    }
    lw->nt++;
}

static size_t layout(layout_walk *lw, size_t *num_decay) {
    const model_config *c = lw->c;
    const size_t C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    const size_t D = (size_t)c->head_dim, I = (size_t)c->intermediate_size;
    const size_t HqD = (size_t)c->num_attention_heads * D,
                 HkvD = (size_t)c->num_key_value_heads * D;
    const size_t QKV = HqD + 2 * HkvD;
    const int L = c->num_hidden_layers;
    model_weights scratch;
    model_layer_weights lscratch;
    model_weights *w = lw->base ? lw->w : &scratch;
    lw->off = 0;
    lw->nt = 0;

    size_t at = lw->off;
    w->wte = take(lw, V * C);
    name_tensor(lw, at, (int64_t)V, (int64_t)C, "model.embed_tokens.weight", 0);
    for (int l = 0; l < L; l++) {
        model_layer_weights *lay = lw->base ? &w->layers[l] : &lscratch;
        at = lw->off;
        lay->wqkv = take(lw, QKV * C);
        name_tensor(lw, at, (int64_t)HqD, (int64_t)C, "model.layers.%d.self_attn.q_proj.weight", l);
        name_tensor(lw, at + HqD * C, (int64_t)HkvD, (int64_t)C,
                    "model.layers.%d.self_attn.k_proj.weight", l);
        name_tensor(lw, at + (HqD + HkvD) * C, (int64_t)HkvD, (int64_t)C,
                    "model.layers.%d.self_attn.v_proj.weight", l);
        at = lw->off;
        lay->wo = take(lw, C * HqD);
        name_tensor(lw, at, (int64_t)C, (int64_t)HqD, "model.layers.%d.self_attn.o_proj.weight", l);
        at = lw->off;
        lay->wgu = take(lw, 2 * I * C);
        name_tensor(lw, at, (int64_t)I, (int64_t)C, "model.layers.%d.mlp.gate_proj.weight", l);
        name_tensor(lw, at + I * C, (int64_t)I, (int64_t)C, "model.layers.%d.mlp.up_proj.weight",
                    l);
        at = lw->off;
        lay->wdown = take(lw, C * I);
        name_tensor(lw, at, (int64_t)C, (int64_t)I, "model.layers.%d.mlp.down_proj.weight", l);
    }
    if (c->tie_word_embeddings) {
        w->lm_head = w->wte;
    } else {
        at = lw->off;
        w->lm_head = take(lw, V * C);
        name_tensor(lw, at, (int64_t)V, (int64_t)C, "lm_head.weight", 0);
    }
    if (num_decay) *num_decay = lw->off;

    for (int l = 0; l < L; l++) {
        model_layer_weights *lay = lw->base ? &w->layers[l] : &lscratch;
        at = lw->off;
        lay->ln1 = take(lw, C);
        name_tensor(lw, at, (int64_t)C, 0, "model.layers.%d.input_layernorm.weight", l);
        lay->bqkv = NULL;
        if (c->attention_bias) {
            at = lw->off;
            lay->bqkv = take(lw, QKV);
            name_tensor(lw, at, (int64_t)HqD, 0, "model.layers.%d.self_attn.q_proj.bias", l);
            name_tensor(lw, at + HqD, (int64_t)HkvD, 0, "model.layers.%d.self_attn.k_proj.bias", l);
            name_tensor(lw, at + HqD + HkvD, (int64_t)HkvD, 0,
                        "model.layers.%d.self_attn.v_proj.bias", l);
        }
        lay->q_norm = lay->k_norm = NULL;
        if (c->qk_norm) {
            at = lw->off;
            lay->q_norm = take(lw, D);
            name_tensor(lw, at, (int64_t)D, 0, "model.layers.%d.self_attn.q_norm.weight", l);
            at = lw->off;
            lay->k_norm = take(lw, D);
            name_tensor(lw, at, (int64_t)D, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        lay->bo = NULL;
        if (c->o_proj_bias) {
            at = lw->off;
            lay->bo = take(lw, C);
            name_tensor(lw, at, (int64_t)C, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        }
        at = lw->off;
        lay->ln2 = take(lw, C);
        name_tensor(lw, at, (int64_t)C, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        lay->bgu = lay->bdown = NULL;
        if (c->mlp_bias) {
            at = lw->off;
            lay->bgu = take(lw, 2 * I);
            name_tensor(lw, at, (int64_t)I, 0, "model.layers.%d.mlp.gate_proj.bias", l);
            name_tensor(lw, at + I, (int64_t)I, 0, "model.layers.%d.mlp.up_proj.bias", l);
            at = lw->off;
            lay->bdown = take(lw, C);
            name_tensor(lw, at, (int64_t)C, 0, "model.layers.%d.mlp.down_proj.bias", l);
        }
    }
    at = lw->off;
    w->final_norm = take(lw, C);
    name_tensor(lw, at, (int64_t)C, 0, "model.norm.weight", 0);
    return lw->off;
}

static int carve_weights(model *m, float *base, model_weights *w, chord_err *err) {
    w->layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *w->layers);
    if (!w->layers) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    layout_walk lw = {.c = &m->cfg, .base = base, .w = w};
    layout(&lw, NULL);
    return 0;
}

/* With an adapter attached the base is frozen: its gradient pointers stay NULL (every op skips a
 * NULL weight gradient) and the adapter's buffer takes the gradients. */
static int ensure_grads(model *m, chord_err *err) {
    if (m->base && !m->lora)
        return chord_err_set(err, "model: a view of a shared base trains an adapter only "
                                  "(model_lora_attach first)");
    if (m->lora) {
        if (!m->g.layers) {
            m->g.layers = calloc((size_t)m->cfg.num_hidden_layers, sizeof *m->g.layers);
            if (!m->g.layers) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of memory");
        }
        return model_lora_ensure_grads(m, err);
    }
    if (m->grads) return 0;
    m->grads = ops_alloc(m->ops, m->num_params * sizeof(float));
    if (!m->grads)
        return chord_err_setc(
            err, CHORD_E_TOO_LARGE, "model: cannot allocate %zu bytes of gradients on %s: %s",
            m->num_params * sizeof(float), m->ops->be->name, ops_last_error(m->ops));
    return carve_weights(m, m->grads, &m->g, err);
}

int model_create(const model_config *cfg, ops_ctx *ops, model **out, chord_err *err) {
    *out = NULL;
    if (!cfg || !ops) return chord_err_set(err, "model_create: config and backend are required");
    if (cfg->vocab_size <= 0 || cfg->hidden_size <= 0 || cfg->num_hidden_layers <= 0 ||
        cfg->num_attention_heads <= 0 || cfg->num_key_value_heads <= 0 || cfg->head_dim <= 0 ||
        cfg->intermediate_size <= 0)
        return chord_err_set(err, "model_create: config sizes must be positive");
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return chord_err_set(err,
                             "model_create: num_attention_heads %d is not a multiple of "
                             "num_key_value_heads %d",
                             cfg->num_attention_heads, cfg->num_key_value_heads);
    if (cfg->head_dim % 2 != 0)
        return chord_err_set(err, "model_create: head_dim %d must be even (RoPE)", cfg->head_dim);
    model *m = calloc(1, sizeof *m);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    m->cfg = *cfg;
    m->ops = ops;
    m->logits_budget_bytes = (size_t)256 << 20;

    layout_walk lw = {.c = &m->cfg};
    m->num_params = layout(&lw, &m->num_decay);
    m->n_tensors = lw.nt;
    m->tensors = calloc((size_t)lw.nt, sizeof *m->tensors);
    if (!m->tensors) {
        chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
        goto fail;
    }
    lw.t = m->tensors;
    layout(&lw, NULL);

    m->params = ops_alloc(ops, m->num_params * sizeof(float));
    if (!m->params) {
        chord_err_setc(err, CHORD_E_TOO_LARGE,
                       "model: cannot allocate %zu bytes of parameters on %s: %s",
                       m->num_params * sizeof(float), ops->be->name, ops_last_error(ops));
        goto fail;
    }
    if (carve_weights(m, m->params, &m->w, err) != 0) goto fail;
    if (ops->bf16_weights) {
        m->params16 = ops_alloc(ops, (m->num_decay ? m->num_decay : 1) * sizeof(uint16_t));
        if (!m->params16) {
            chord_err_setc(err, CHORD_E_TOO_LARGE,
                           "model: cannot allocate %zu bytes of bf16 weights on %s: %s",
                           m->num_decay * sizeof(uint16_t), ops->be->name, ops_last_error(ops));
            goto fail;
        }
    }

    int half = cfg->head_dim / 2;
    float *inv = malloc((size_t)half * sizeof *inv);
    if (!inv) {
        chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
        goto fail;
    }
    model_config_rope_inv_freq(cfg, inv);
    m->inv_freq = ops_alloc(ops, (size_t)half * sizeof(float));
    int rc = m->inv_freq ? ops_to_device(ops, m->inv_freq, inv, (size_t)half * sizeof(float)) : -1;
    free(inv);
    if (rc != 0) {
        op_fail(m, "to_device", err);
        goto fail;
    }
    *out = m;
    return 0;
fail:
    model_free(m);
    return -1;
}

static void run_free(model *m, model_run *r);

int model_create_view(model *base, ops_ctx *ops, model **out, chord_err *err) {
    *out = NULL;
    if (!base || base->base)
        return chord_err_set(err, "model_create_view: needs a model that is not a view itself");
    if (base->lora)
        return chord_err_set(err, "model_create_view: the base carries an adapter of its own");
    if (!ops) ops = base->ops;
    if (ops->be != base->ops->be || ops->device_index != base->ops->device_index)
        return chord_err_set(err, "model_create_view: the view's backend (%s, device %d) is not "
                                  "its base's (%s, device %d)",
                             ops->be->name, ops->device_index, base->ops->be->name,
                             base->ops->device_index);
    model *m = calloc(1, sizeof *m);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    m->cfg = base->cfg;
    m->ops = ops;
    m->num_params = base->num_params;
    m->num_decay = base->num_decay;
    m->params = base->params;
    m->params16 = base->params16;
    m->inv_freq = base->inv_freq;
    m->logits_budget_bytes = base->logits_budget_bytes;
    m->base = base;
    m->n_tensors = base->n_tensors;
    m->tensors = malloc((size_t)base->n_tensors * sizeof *m->tensors);
    m->w.layers = malloc((size_t)base->cfg.num_hidden_layers * sizeof *m->w.layers);
    if (!m->tensors || !m->w.layers) {
        model_free(m);
        return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    }
    memcpy(m->tensors, base->tensors, (size_t)base->n_tensors * sizeof *m->tensors);
    model_layer_weights *layers = m->w.layers;
    m->w = base->w;
    m->w.layers = layers;
    memcpy(layers, base->w.layers, (size_t)base->cfg.num_hidden_layers * sizeof *layers);
    *out = m;
    return 0;
}

void model_free(model *m) {
    if (!m) return;
    ops_ctx *o = m->ops;
    run_free(m, m->run);
    model_lora_free(m);
    if (!m->base) { /* a view's weights are its base's */
        ops_free(o, m->params);
        ops_free(o, m->params16);
        ops_free(o, m->inv_freq);
    }
    ops_free(o, m->grads);
    ops_free(o, m->adam_m);
    ops_free(o, m->adam_v);
    free(m->w.layers);
    free(m->g.layers);
    free(m->tensors);
    free(m);
}

/* ---------------------------------------------------------------------------------------------
 * Run state: the activations of one packed batch, carved from one device allocation.
 * Training keeps every layer's activations for backward; inference (prefill/decode) keeps one
 * layer's worth and reuses it for every layer. */

typedef struct layer_acts {
    float *ln1, *rstd1; /* (N,C), (N) */
    float *qkv;         /* (N,QKV): fused [q|k|v] rows, or (qk_norm) split blocks q,k,v pre-norm */
    float *qk;          /* qk_norm: normed + roped q (N,HqD) then k (N,HkvD) */
    float *rstd_q, *rstd_k; /* qk_norm: (N Hq), (N Hkv) */
    float *att, *lse;       /* (N, Hq D), (N, Hq) */
    float *res_mid;         /* (N,C) residual after attention */
    float *ln2, *rstd2;     /* (N,C), (N) */
    float *gu;              /* (N, 2I) [gate|up] */
    float *h;               /* (N, I) silu(gate) * up; one buffer shared by all layers */
    float *lora_u;          /* LoRA: (targets, N, rank) x A^T of each adapted projection */
    float *lora_tmp;        /* LoRA scratch shared by all layers (model_run's) */
    float *lora_xd;         /* LoRA dropout scratch (training runs with dropout; else NULL) */
    /* bf16 activations (a run of a model with bf16 weights and no adapter: model.h precision):
     * ln1, ln2 and gu are stored in bf16 here instead (the float32 pointers are then NULL), and
     * the norms write their float32 output to lnx (N,C), shared by the layers, first */
    uint16_t *ln1h, *ln2h, *guh;
    float *lnx;
} layer_acts;

struct model_run {
    int cap_N, cap_rows, kept, backward;
    int lora_rank;             /* the adapter's rank these buffers were laid out for (0: none) */
    int lora_drop;             /* laid out with the dropout scratch (a training run) */
    int act16;                 /* bf16 activations (layer_acts) */
    float *lora_tmp, *lora_du; /* LoRA scratch: (N, widest projection), (N, rank) */
    float *lora_xd, *lora_dxd; /* dropout: (N, widest) each */
    void *buf;
    float *res;              /* (kept+1 or 1, N, C) residual stream: res[l] enters layer l */
    layer_acts *layers;      /* (kept) */
    float *xf, *rstdf;       /* (N,C), (N): final norm output */
    float *logits, *dlogits; /* (chunk_rows, V) */
    int chunk_rows;
    float *logp, *entropy, *lse_out, *dlogp, *dentropy;        /* (N) */
    int32_t *tokens, *positions, *targets, *cu, *slots, *lens; /* (N) each, cu (N+1) */
    float *dres, *dln, *dqkv, *dqk, *datt, *dgu, *dh;          /* backward scratch */
    /* Shared prefixes (model_batch.seg_parent): attention's expanded layout of NX rows in SX
     * sequences, one scratch for every layer. Expanded row x is shared row xsrc[x]; shared row
     * n's attention output is expanded row xprim[n]'s (its first copy); in the backward, xdsrc[x]
     * is xsrc[x] for that first copy and N (datt's zero row) for the other copies. */
    int cap_X, NX, SX;
    int32_t *xsrc, *xcu, *xprim, *xdsrc; /* (cap_X), (cap_X+1), (N), (cap_X) */
    float *xqkv, *xqk, *xatt, *xlse;     /* like qkv, qk, att, lse with cap_X rows */
    float *dxqkv, *dxqk, *dxatt;         /* backward */
    /* the last forward */
    int N, S, has_forward;
    float inv_temp;
};

static size_t round16(size_t n) {
    return (n + 15) & ~(size_t)15;
}

/* Lays the run state out over base (NULL: size only). Returns the size in floats. */
static size_t run_layout(const model *m, model_run *r, float *base) {
    const model_config *c = &m->cfg;
    const size_t N = (size_t)r->cap_N, C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    const size_t D = (size_t)c->head_dim, I = (size_t)c->intermediate_size;
    const size_t Hq = (size_t)c->num_attention_heads, Hkv = (size_t)c->num_key_value_heads;
    const size_t QKV = (Hq + 2 * Hkv) * D;
    size_t off = 0;
#define CARVE(p, n)                                                                                \
    do {                                                                                           \
        if (base) (p) = (void *)(base + off);                                                      \
        off += round16(n);                                                                         \
    } while (0)
#define CARVE16(p, n) CARVE(p, ((n) + 1) / 2) /* n bf16 values */
    CARVE(r->res, (size_t)(r->backward ? r->kept + 1 : 1) * N * C);
    for (int l = 0; l < r->kept; l++) {
        layer_acts *a = base ? &r->layers[l] : &(layer_acts){0};
        if (r->act16)
            CARVE16(a->ln1h, N * C);
        else
            CARVE(a->ln1, N * C);
        CARVE(a->rstd1, N);
        CARVE(a->qkv, N * QKV);
        if (c->qk_norm) {
            CARVE(a->qk, N * (Hq + Hkv) * D);
            CARVE(a->rstd_q, N * Hq);
            CARVE(a->rstd_k, N * Hkv);
        }
        CARVE(a->att, N * Hq * D);
        CARVE(a->lse, N * Hq);
        CARVE(a->res_mid, N * C);
        if (r->act16) {
            CARVE16(a->ln2h, N * C);
            CARVE16(a->guh, N * 2 * I);
        } else {
            CARVE(a->ln2, N * C);
            CARVE(a->gu, N * 2 * I);
        }
        CARVE(a->rstd2, N);
        if (r->lora_rank) CARVE(a->lora_u, (size_t)MODEL_LORA_N_TARGETS * N * r->lora_rank);
    }
    if (r->lora_rank) {
        size_t widest = C > I ? C : I;
        if (Hq * D > widest) widest = Hq * D;
        CARVE(r->lora_tmp, N * widest);
        CARVE(r->lora_du, N * (size_t)r->lora_rank);
        if (r->lora_drop) {
            CARVE(r->lora_xd, N * widest);
            CARVE(r->lora_dxd, N * widest);
        }
        for (int l = 0; base && l < r->kept; l++) {
            r->layers[l].lora_tmp = r->lora_tmp;
            r->layers[l].lora_xd = r->lora_drop ? r->lora_xd : NULL;
        }
    }
    /* h = silu(gate) * up is cheap to recompute from gu: one (N, I) buffer serves every layer,
     * which saves a quarter of the activations of a typical layer */
    float *h = NULL, *lnx = NULL;
    CARVE(h, N * I);
    if (r->act16) CARVE(lnx, N * C);
    for (int l = 0; base && l < r->kept; l++) {
        r->layers[l].h = h;
        r->layers[l].lnx = lnx;
    }
    CARVE(r->xf, N * C);
    CARVE(r->rstdf, N);
    CARVE(r->logits, (size_t)r->chunk_rows * V);
    CARVE(r->logp, N);
    CARVE(r->entropy, N);
    CARVE(r->lse_out, N);
    CARVE(r->tokens, N);
    CARVE(r->positions, N);
    CARVE(r->targets, N);
    CARVE(r->cu, N + 1);
    CARVE(r->slots, N);
    CARVE(r->lens, N);
    if (r->cap_X > 0) {
        const size_t X = (size_t)r->cap_X;
        CARVE(r->xsrc, X);
        CARVE(r->xcu, X + 1);
        CARVE(r->xprim, N);
        CARVE(r->xdsrc, X);
        CARVE(r->xqkv, X * QKV);
        if (c->qk_norm) CARVE(r->xqk, X * (Hq + Hkv) * D);
        CARVE(r->xatt, X * Hq * D);
        CARVE(r->xlse, X * Hq);
        if (r->backward) {
            CARVE(r->dxqkv, X * QKV);
            if (c->qk_norm) CARVE(r->dxqk, X * (Hq + Hkv) * D);
            CARVE(r->dxatt, X * Hq * D);
        }
    }
    if (r->backward) {
        CARVE(r->dlogits, (size_t)r->chunk_rows * V);
        CARVE(r->dlogp, N);
        CARVE(r->dentropy, N);
        CARVE(r->dres, N * C);
        CARVE(r->dln, N * C);
        CARVE(r->dqkv, N * QKV);
        if (c->qk_norm) CARVE(r->dqk, N * (Hq + Hkv) * D);
        CARVE(r->datt, (N + 1) * Hq * D); /* + a zero row (shared prefixes) */
        CARVE(r->dgu, N * 2 * I);
        CARVE(r->dh, N * I);
    }
#undef CARVE
    return off;
}

static void run_free(model *m, model_run *r) {
    if (!r) return;
    ops_free(m->ops, r->buf);
    free(r->layers);
    free(r);
}

/* Makes *rp hold at least N rows (and, for inference, `rows` logits rows; for shared prefixes,
 * X expanded attention rows). */
static int run_ensure(model *m, model_run **rp, int N, int rows, int X, int training,
                      chord_err *err) {
    model_run *r = *rp;
    const size_t V = (size_t)m->cfg.vocab_size;
    const int lora_rank = m->lora ? m->lora->cfg.rank : 0;
    const int lora_drop = training && m->lora && m->lora->dropout > 0.0f;
    /* an adapter reads and adds to the float32 activations (model_lora.c) */
    const int act16 = m->params16 && !m->lora;
    if (r && r->cap_N >= N && r->cap_X >= X && r->lora_rank == lora_rank && r->act16 == act16 &&
        (!lora_drop || r->lora_drop) && (training || r->cap_rows >= rows))
        return 0;
    int cap = N;
    if (r && r->cap_N > cap) cap = r->cap_N;
    int cap_X = X;
    if (r && r->cap_X > cap_X) cap_X = r->cap_X;
    int cap_rows = training ? 0 : rows;
    if (r && !training && r->cap_rows > cap_rows) cap_rows = r->cap_rows;
    run_free(m, r);
    *rp = NULL;
    r = calloc(1, sizeof *r);
    if (!r) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    r->cap_N = cap;
    r->cap_X = cap_X;
    r->lora_rank = lora_rank;
    r->lora_drop = lora_drop;
    r->act16 = act16;
    r->cap_rows = cap_rows;
    r->backward = training;
    r->kept = training ? m->cfg.num_hidden_layers : 1;
    if (training) {
        size_t rows_budget = m->logits_budget_bytes / (V * sizeof(float));
        if (rows_budget < 1) rows_budget = 1;
        r->chunk_rows = (size_t)cap < rows_budget ? cap : (int)rows_budget;
    } else {
        r->chunk_rows = cap_rows;
    }
    r->layers = calloc((size_t)r->kept, sizeof *r->layers);
    if (!r->layers) {
        free(r);
        return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    }
    size_t floats = run_layout(m, r, NULL);
    r->buf = ops_alloc(m->ops, floats * sizeof(float));
    if (!r->buf) {
        int rc = chord_err_setc(err, CHORD_E_TOO_LARGE,
                                "model: cannot allocate %zu bytes of activations for %d tokens "
                                "(%d expanded attention rows) on %s: %s",
                                floats * sizeof(float), cap, cap_X, m->ops->be->name,
                                ops_last_error(m->ops));
        free(r->layers);
        free(r);
        return rc;
    }
    run_layout(m, r, r->buf);
    *rp = r;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * One decoder layer. */

typedef struct qkv_view {
    float *q, *k, *v;
    int ldq, ldk, ldv;
} qkv_view;

/* Where attention reads q, k, v: inside the fused (N,QKV) rows, or, with q/k norm, the normed
 * blocks of qk and the v block of the split qkv. */
static qkv_view view_qkv(const model *m, float *qkv, float *qk, int N) {
    const model_config *c = &m->cfg;
    const int D = c->head_dim, HqD = c->num_attention_heads * D, HkvD = c->num_key_value_heads * D;
    qkv_view v;
    if (!c->qk_norm) {
        v.q = qkv;
        v.k = qkv + HqD;
        v.v = qkv + HqD + HkvD;
        v.ldq = v.ldk = v.ldv = HqD + 2 * HkvD;
    } else {
        v.q = qk;
        v.k = qk + (size_t)N * HqD;
        v.v = qkv + (size_t)N * (HqD + HkvD);
        v.ldq = HqD;
        v.ldk = v.ldv = HkvD;
    }
    return v;
}

/* How a layer attends: packed causal attention over cu (S), and/or the KV cache. */
typedef struct attn_mode {
    const int32_t *cu; /* packed (training, prefill) */
    int S;
    float *kv; /* cache base (NULL: none); layer l at kv + 2 l layer_floats */
    size_t layer_floats;
    const int32_t *slot, *pos; /* (N) where each row's k, v are stored */
    int max_T;
    const int32_t *lens; /* decode: attend to the cache rows 0..lens[b]-1 instead */
    model_run *shared;   /* shared prefixes: attention over r's expanded layout (model_batch) */
} attn_mode;

/* ---- shared prefixes: attention on the expanded layout (model_batch.seg_parent) ----
 * The row gather is the embedding lookup (out[x] = table[ids[x]]) and its scatter-add the
 * embedding gradient (dtable[ids[x]] += dout[x]), on rows of any width. */

/* q, k, v of the N shared rows (qkv, qk as view_qkv reads them) -> the X expanded rows. */
static int gather_qkv(model *m, float *xqkv, float *xqk, int X, const float *qkv, const float *qk,
                      int N, const int32_t *ids, chord_err *err) {
    const model_config *c = &m->cfg;
    const int D = c->head_dim, HqD = c->num_attention_heads * D, HkvD = c->num_key_value_heads * D;
    if (!c->qk_norm) {
        OP(embedding_forward, xqkv, ids, qkv, X, HqD + 2 * HkvD, N);
        return 0;
    }
    OP(embedding_forward, xqk, ids, qk, X, HqD, N);
    OP(embedding_forward, xqk + (size_t)X * HqD, ids, qk + (size_t)N * HqD, X, HkvD, N);
    OP(embedding_forward, xqkv + (size_t)X * (HqD + HkvD), ids, qkv + (size_t)N * (HqD + HkvD), X,
       HkvD, N);
    return 0;
}

/* d q, k, v of the X expanded rows summed into the N shared rows (overwritten). */
static int scatter_dqkv(model *m, float *dqkv, float *dqk, int N, const float *dxqkv,
                        const float *dxqk, int X, const int32_t *ids, chord_err *err) {
    const model_config *c = &m->cfg;
    const int D = c->head_dim, HqD = c->num_attention_heads * D, HkvD = c->num_key_value_heads * D;
    if (!c->qk_norm) {
        OP(zero, dqkv, (size_t)N * (HqD + 2 * HkvD) * sizeof(float));
        OP(embedding_backward, dqkv, dxqkv, ids, X, HqD + 2 * HkvD, N);
        return 0;
    }
    float *dv = dqkv + (size_t)N * (HqD + HkvD);
    OP(zero, dqk, (size_t)N * (HqD + HkvD) * sizeof(float));
    OP(zero, dv, (size_t)N * HkvD * sizeof(float));
    OP(embedding_backward, dqk, dxqk, ids, X, HqD, N);
    OP(embedding_backward, dqk + (size_t)N * HqD, dxqk + (size_t)X * HqD, ids, X, HkvD, N);
    OP(embedding_backward, dv, dxqkv + (size_t)X * (HqD + HkvD), ids, X, HkvD, N);
    return 0;
}

static int shared_attention_forward(model *m, model_run *r, layer_acts *a, int N, chord_err *err) {
    const model_config *c = &m->cfg;
    const int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim;
    if (gather_qkv(m, r->xqkv, r->xqk, r->NX, a->qkv, a->qk, N, r->xsrc, err) != 0) return -1;
    qkv_view xv = view_qkv(m, r->xqkv, r->xqk, r->NX);
    OP(attention_forward, r->xatt, r->xlse, xv.q, xv.ldq, xv.k, xv.ldk, xv.v, xv.ldv, r->xcu, r->SX,
       r->NX, Hq, Hkv, D);
    OP(embedding_forward, a->att, r->xprim, r->xatt, N, Hq * D, r->NX);
    OP(embedding_forward, a->lse, r->xprim, r->xlse, N, Hq, r->NX);
    return 0;
}

/* r->datt (N rows) -> r->dqkv / r->dqk, as attention_backward would on the unshared batch. */
static int shared_attention_backward(model *m, model_run *r, layer_acts *a, chord_err *err) {
    const model_config *c = &m->cfg;
    const int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads, D = c->head_dim;
    const int N = r->N, X = r->NX;
    if (gather_qkv(m, r->xqkv, r->xqk, X, a->qkv, a->qk, N, r->xsrc, err) != 0) return -1;
    qkv_view xv = view_qkv(m, r->xqkv, r->xqk, X);
    qkv_view dxv = view_qkv(m, r->dxqkv, r->dxqk, X);
    /* every copy of a shared row sees its output and lse; only the first copy its gradient */
    OP(embedding_forward, r->xatt, r->xsrc, a->att, X, Hq * D, N);
    OP(embedding_forward, r->xlse, r->xsrc, a->lse, X, Hq, N);
    OP(zero, r->datt + (size_t)N * Hq * D, (size_t)Hq * D * sizeof(float));
    OP(embedding_forward, r->dxatt, r->xdsrc, r->datt, X, Hq * D, N + 1);
    OP(attention_backward, dxv.q, dxv.k, dxv.v, r->dxatt, xv.q, xv.ldq, xv.k, xv.ldk, xv.v, xv.ldv,
       r->xatt, r->xlse, r->xcu, r->SX, X, Hq, Hkv, D);
    return scatter_dqkv(m, r->dqkv, r->dqk, N, r->dxqkv, r->dxqk, X, r->xsrc, err);
}

/* LoRA on target t of layer l (model_lora.c): y (N, ldy) += s B A x; u kept in a->lora_u. */
#define LORA_FWD(t, x, y, ldy)                                                                     \
    do {                                                                                           \
        if (m->lora && model_lora_forward(m, l, t, x, N, y, ldy,                                   \
                                          a->lora_u + (size_t)(t)*N * m->lora->cfg.rank,           \
                                          a->lora_tmp, a->lora_xd, err) != 0)                      \
            return -1;                                                                             \
    } while (0)

/* res_out (N,C) = layer l (res_in (N,C)); res_out may equal res_in. */
static int layer_forward(model *m, int l, layer_acts *a, const float *res_in, float *res_out, int N,
                         const int32_t *positions, const attn_mode *am, chord_err *err) {
    const model_config *c = &m->cfg;
    const model_layer_weights *w = &m->w.layers[l];
    const int C = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    const int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    const int HqD = Hq * D, HkvD = Hkv * D, QKV = HqD + 2 * HkvD;
    const float eps = (float)c->rms_norm_eps;

    if (a->ln1h) {
        OP(rmsnorm_forward, a->lnx, a->rstd1, res_in, C, w->ln1, N, C, eps);
        OP(cast_bf16, a->ln1h, a->lnx, (size_t)N * C);
    } else {
        OP(rmsnorm_forward, a->ln1, a->rstd1, res_in, C, w->ln1, N, C, eps);
    }
    qkv_view v = view_qkv(m, a->qkv, a->qk, N);
    if (!c->qk_norm) {
        MM(forward, a->qkv, a->ln1, a->ln1h, w->wqkv, w->bqkv, N, C, QKV);
        LORA_FWD(MODEL_LORA_Q, a->ln1, a->qkv, QKV);
        LORA_FWD(MODEL_LORA_K, a->ln1, a->qkv + HqD, QKV);
        LORA_FWD(MODEL_LORA_V, a->ln1, a->qkv + HqD + HkvD, QKV);
    } else {
        float *qpre = a->qkv, *kpre = a->qkv + (size_t)N * HqD;
        MM(forward, qpre, a->ln1, a->ln1h, w->wqkv, w->bqkv, N, C, HqD);
        MM(forward, kpre, a->ln1, a->ln1h, w->wqkv + (size_t)HqD * C, w->bqkv ? w->bqkv + HqD : NULL,
           N, C, HkvD);
        MM(forward, v.v, a->ln1, a->ln1h, w->wqkv + (size_t)(HqD + HkvD) * C,
           w->bqkv ? w->bqkv + HqD + HkvD : NULL, N, C, HkvD);
        LORA_FWD(MODEL_LORA_Q, a->ln1, qpre, HqD);
        LORA_FWD(MODEL_LORA_K, a->ln1, kpre, HkvD);
        LORA_FWD(MODEL_LORA_V, a->ln1, v.v, HkvD);
        OP(rmsnorm_forward, v.q, a->rstd_q, qpre, D, w->q_norm, N * Hq, D, eps);
        OP(rmsnorm_forward, v.k, a->rstd_k, kpre, D, w->k_norm, N * Hkv, D, eps);
    }
    OP(rope_forward, v.q, v.ldq, positions, m->inv_freq, N, Hq, D);
    OP(rope_forward, v.k, v.ldk, positions, m->inv_freq, N, Hkv, D);
    if (am->kv) {
        float *kc = am->kv + (size_t)2 * l * am->layer_floats, *vc = kc + am->layer_floats;
        OP(kv_store, kc, vc, v.k, v.ldk, v.v, v.ldv, am->slot, am->pos, N, am->max_T, Hkv, D);
        if (am->lens)
            OP(attention_decode, a->att, v.q, v.ldq, kc, vc, am->slot, am->lens, N, am->max_T, Hq,
               Hkv, D);
    }
    if (am->shared) {
        if (shared_attention_forward(m, am->shared, a, N, err) != 0) return -1;
    } else if (!am->lens) {
        OP(attention_forward, a->att, a->lse, v.q, v.ldq, v.k, v.ldk, v.v, v.ldv, am->cu, am->S, N,
           Hq, Hkv, D);
    }
    MM(forward, a->res_mid, a->att, NULL, w->wo, w->bo, N, HqD, C);
    LORA_FWD(MODEL_LORA_O, a->att, a->res_mid, C);
    OP(add_inplace, a->res_mid, res_in, (size_t)N * C);
    if (a->guh) { /* bf16 activations: no adapter here */
        const uint16_t *wgu16 = weights_bf16(m, w->wgu);
        OP(rmsnorm_forward, a->lnx, a->rstd2, a->res_mid, C, w->ln2, N, C, eps);
        OP(cast_bf16, a->ln2h, a->lnx, (size_t)N * C);
        OP(matmul_forward_bf16, a->guh, 1, a->ln2h, 1, wgu16, w->bgu, N, C, 2 * I);
        OP(swiglu_forward_bf16, a->h, a->guh, 2 * I, a->guh + I, 2 * I, N, I);
    } else {
        OP(rmsnorm_forward, a->ln2, a->rstd2, a->res_mid, C, w->ln2, N, C, eps);
        MM(forward, a->gu, a->ln2, NULL, w->wgu, w->bgu, N, C, 2 * I);
        LORA_FWD(MODEL_LORA_GATE, a->ln2, a->gu, 2 * I);
        LORA_FWD(MODEL_LORA_UP, a->ln2, a->gu + I, 2 * I);
        OP(swiglu_forward, a->h, a->gu, 2 * I, a->gu + I, 2 * I, N, I);
    }
    MM(forward, res_out, a->h, NULL, w->wdown, w->bdown, N, I, C);
    LORA_FWD(MODEL_LORA_DOWN, a->h, res_out, C);
    OP(add_inplace, res_out, a->res_mid, (size_t)N * C);
    return 0;
}

/* LoRA's backward on target t of layer l: its gradients, and dx += its share of dy's. */
#define LORA_BWD(t, x, dy, lddy, dx)                                                               \
    do {                                                                                           \
        if (m->lora &&                                                                             \
            model_lora_backward(m, l, t, x, N, dy, lddy, dx,                                       \
                                a->lora_u + (size_t)(t)*N * m->lora->cfg.rank, r->lora_tmp,        \
                                r->lora_du, a->lora_xd, r->lora_dxd, err) != 0)                    \
            return -1;                                                                             \
    } while (0)

/* On entry r->dres holds d loss / d res_out (N,C); on exit d loss / d res_in. */
static int layer_backward(model *m, int l, layer_acts *a, const float *res_in, model_run *r,
                          chord_err *err) {
    const model_config *c = &m->cfg;
    const model_layer_weights *w = &m->w.layers[l];
    const model_layer_weights *g = &m->g.layers[l];
    const int N = r->N;
    const int C = c->hidden_size, D = c->head_dim, I = c->intermediate_size;
    const int Hq = c->num_attention_heads, Hkv = c->num_key_value_heads;
    const int HqD = Hq * D, HkvD = Hkv * D, QKV = HqD + 2 * HkvD;

    /* MLP: res_out = res_mid + down(silu(gate) * up); h is shared by the layers: recompute it */
    if (a->guh)
        OP(swiglu_forward_bf16, a->h, a->guh, 2 * I, a->guh + I, 2 * I, N, I);
    else
        OP(swiglu_forward, a->h, a->gu, 2 * I, a->gu + I, 2 * I, N, I);
    MM(backward, r->dh, g->wdown, g->bdown, r->dres, a->h, NULL, w->wdown, N, I, C, 0);
    LORA_BWD(MODEL_LORA_DOWN, a->h, r->dres, C, r->dh);
    if (a->guh)
        OP(swiglu_backward_bf16, r->dgu, r->dgu + I, 2 * I, r->dh, a->guh, a->guh + I, 2 * I, N,
           I);
    else
        OP(swiglu_backward, r->dgu, r->dgu + I, 2 * I, r->dh, a->gu, a->gu + I, 2 * I, N, I);
    MM(backward, r->dln, g->wgu, g->bgu, r->dgu, a->ln2, a->ln2h, w->wgu, N, C, 2 * I, 0);
    LORA_BWD(MODEL_LORA_GATE, a->ln2, r->dgu, 2 * I, r->dln);
    LORA_BWD(MODEL_LORA_UP, a->ln2, r->dgu + I, 2 * I, r->dln);
    OP(rmsnorm_backward, r->dres, C, g->ln2, r->dln, a->res_mid, w->ln2, a->rstd2, N, C);

    /* attention: res_mid = res_in + o_proj(attention(rope(q), rope(k), v)) */
    MM(backward, r->datt, g->wo, g->bo, r->dres, a->att, NULL, w->wo, N, HqD, C, 0);
    LORA_BWD(MODEL_LORA_O, a->att, r->dres, C, r->datt);
    qkv_view v = view_qkv(m, a->qkv, a->qk, N);
    qkv_view dv = view_qkv(m, r->dqkv, r->dqk, N);
    if (r->NX > 0) {
        if (shared_attention_backward(m, r, a, err) != 0) return -1;
    } else {
        OP(attention_backward, dv.q, dv.k, dv.v, r->datt, v.q, v.ldq, v.k, v.ldk, v.v, v.ldv,
           a->att, a->lse, r->cu, r->S, N, Hq, Hkv, D);
    }
    OP(rope_backward, dv.q, dv.ldq, r->positions, m->inv_freq, N, Hq, D);
    OP(rope_backward, dv.k, dv.ldk, r->positions, m->inv_freq, N, Hkv, D);
    if (!c->qk_norm) {
        MM(backward, r->dln, g->wqkv, g->bqkv, r->dqkv, a->ln1, a->ln1h, w->wqkv, N, C, QKV, 0);
        LORA_BWD(MODEL_LORA_Q, a->ln1, r->dqkv, QKV, r->dln);
        LORA_BWD(MODEL_LORA_K, a->ln1, r->dqkv + HqD, QKV, r->dln);
        LORA_BWD(MODEL_LORA_V, a->ln1, r->dqkv + HqD + HkvD, QKV, r->dln);
    } else {
        float *dqpre = r->dqkv, *dkpre = r->dqkv + (size_t)N * HqD;
        const float *qpre = a->qkv, *kpre = a->qkv + (size_t)N * HqD;
        OP(zero, r->dqkv, (size_t)N * (HqD + HkvD) * sizeof(float));
        OP(rmsnorm_backward, dqpre, D, g->q_norm, dv.q, qpre, w->q_norm, a->rstd_q, N * Hq, D);
        OP(rmsnorm_backward, dkpre, D, g->k_norm, dv.k, kpre, w->k_norm, a->rstd_k, N * Hkv, D);
        MM(backward, r->dln, g->wqkv, g->bqkv, dqpre, a->ln1, a->ln1h, w->wqkv, N, C, HqD, 0);
        /* a frozen base (LoRA) has no gradient buffers: NULL stays NULL */
        float *gk = g->wqkv ? g->wqkv + (size_t)HqD * C : NULL;
        float *gv = g->wqkv ? g->wqkv + (size_t)(HqD + HkvD) * C : NULL;
        MM(backward, r->dln, gk, g->bqkv ? g->bqkv + HqD : NULL, dkpre, a->ln1, a->ln1h,
           w->wqkv + (size_t)HqD * C, N, C, HkvD, 1);
        MM(backward, r->dln, gv, g->bqkv ? g->bqkv + HqD + HkvD : NULL, dv.v, a->ln1, a->ln1h,
           w->wqkv + (size_t)(HqD + HkvD) * C, N, C, HkvD, 1);
        LORA_BWD(MODEL_LORA_Q, a->ln1, dqpre, HqD, r->dln);
        LORA_BWD(MODEL_LORA_K, a->ln1, dkpre, HkvD, r->dln);
        LORA_BWD(MODEL_LORA_V, a->ln1, dv.v, HkvD, r->dln);
    }
    OP(rmsnorm_backward, r->dres, C, g->ln1, r->dln, res_in, w->ln1, a->rstd1, N, C);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Training forward / backward. */

static int check_tokens(const model *m, const int32_t *tokens, int N, const char *what,
                        chord_err *err) {
    for (int n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= m->cfg.vocab_size)
            return chord_err_set(err, "%s[%d] = %d is out of range [0, %d)", what, n, tokens[n],
                                 m->cfg.vocab_size);
    return 0;
}

static int check_batch(const model *m, const model_batch *b, chord_err *err) {
    if (!b || b->N <= 0 || b->S <= 0 || b->S > b->N || !b->tokens || !b->positions ||
        !b->cu_seqlens)
        return chord_err_set(err, "batch: needs N > 0 rows, 0 < S <= N sequences, tokens, "
                                  "positions and cu_seqlens");
    if (b->cu_seqlens[0] != 0 || b->cu_seqlens[b->S] != b->N)
        return chord_err_set(err, "batch: cu_seqlens must start at 0 and end at N = %d", b->N);
    for (int s = 0; s < b->S; s++)
        if (b->cu_seqlens[s + 1] <= b->cu_seqlens[s])
            return chord_err_set(err, "batch: cu_seqlens[%d] = %d is not above cu_seqlens[%d]",
                                 s + 1, b->cu_seqlens[s + 1], s);
    if (check_tokens(m, b->tokens, b->N, "batch: tokens", err) != 0) return -1;
    for (int s = 0; b->seg_parent && s < b->S; s++) {
        int p = b->seg_parent[s];
        if (p == -1) continue;
        if (p < 0 || p >= s || b->seg_parent[p] != -1)
            return chord_err_set(err,
                                 "batch: seg_parent[%d] = %d must be -1 or an earlier segment "
                                 "that has no parent itself",
                                 s, p);
        if (b->positions[b->cu_seqlens[s]] != b->positions[b->cu_seqlens[p + 1] - 1] + 1)
            return chord_err_set(err,
                                 "batch: segment %d starts at position %d, not after its parent "
                                 "%d's last (%d)",
                                 s, b->positions[b->cu_seqlens[s]], p,
                                 b->positions[b->cu_seqlens[p + 1] - 1]);
    }
    for (int n = 0; n < b->N; n++) {
        if (b->positions[n] < 0)
            return chord_err_set(err, "batch: positions[%d] = %d is negative", n, b->positions[n]);
        if (b->targets && (b->targets[n] < -1 || b->targets[n] >= m->cfg.vocab_size))
            return chord_err_set(err, "batch: targets[%d] = %d is out of range [-1, %d)", n,
                                 b->targets[n], m->cfg.vocab_size);
    }
    return 0;
}

/* The expanded attention layout of a batch with shared prefixes (model_run's x* arrays), host
 * side: one sequence per segment without children, its parent's rows (if any) then its own.
 * *x_out (one block: xsrc (NX), xcu (SX+1), xprim (N), xdsrc (NX)) is NULL with NX = 0 when no
 * segment has a parent. Returns -1 when out of memory or past INT_MAX rows. */
static int expand_batch(const model_batch *b, int32_t **x_out, int *NX, int *SX) {
    *x_out = NULL;
    *NX = *SX = 0;
    if (!b->seg_parent) return 0;
    uint8_t *has_child = calloc((size_t)b->S, 1);
    if (!has_child) return -1;
    int any = 0;
    for (int s = 0; s < b->S; s++)
        if (b->seg_parent[s] >= 0) has_child[b->seg_parent[s]] = any = 1;
    int64_t nx = 0;
    int sx = 0;
    for (int s = 0; s < b->S; s++) {
        if (has_child[s]) continue;
        int p = b->seg_parent[s];
        nx += b->cu_seqlens[s + 1] - b->cu_seqlens[s];
        if (p >= 0) nx += b->cu_seqlens[p + 1] - b->cu_seqlens[p];
        sx++;
    }
    int32_t *x = NULL;
    if (any && nx < INT_MAX / 2)
        x = malloc(((size_t)nx * 2 + (size_t)sx + 1 + (size_t)b->N) * sizeof *x);
    if (!any || !x) {
        free(has_child);
        return any ? -1 : 0;
    }
    int32_t *xsrc = x, *xcu = x + nx, *xprim = xcu + sx + 1, *xdsrc = xprim + b->N;
    int64_t row = 0;
    for (int s = 0, k = 0; s < b->S; s++) {
        if (has_child[s]) continue;
        int p = b->seg_parent[s];
        xcu[k++] = (int32_t)row;
        if (p >= 0)
            for (int n = b->cu_seqlens[p]; n < b->cu_seqlens[p + 1]; n++)
                xsrc[row++] = n;
        for (int n = b->cu_seqlens[s]; n < b->cu_seqlens[s + 1]; n++)
            xsrc[row++] = n;
    }
    xcu[sx] = (int32_t)nx;
    for (int n = 0; n < b->N; n++)
        xprim[n] = -1;
    for (int64_t i = 0; i < nx; i++) {
        int n = xsrc[i];
        xdsrc[i] = xprim[n] < 0 ? n : b->N; /* b->N: datt's zero row */
        if (xprim[n] < 0) xprim[n] = (int32_t)i;
    }
    free(has_child);
    *x_out = x;
    *NX = (int)nx;
    *SX = sx;
    return 0;
}

static int logits_chunk(model *m, model_run *r, int r0, int R, chord_err *err) {
    const model_config *c = &m->cfg;
    MM(forward, r->logits, r->xf + (size_t)r0 * c->hidden_size, NULL, m->w.lm_head, NULL, R,
       c->hidden_size, c->vocab_size);
    return 0;
}

int model_forward(model *m, const model_batch *b, float inv_temp, float *logp_out,
                  float *entropy_out, chord_err *err) {
    if (check_batch(m, b, err) != 0) return -1;
    int32_t *x = NULL;
    int nx, sx;
    if (expand_batch(b, &x, &nx, &sx) != 0)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "model: cannot lay out the shared-prefix batch's attention "
                              "(out of host memory or too many rows)");
    if (run_ensure(m, &m->run, b->N, 0, nx, 1, err) != 0) {
        free(x);
        return -1;
    }
    model_run *r = m->run;
    const model_config *c = &m->cfg;
    const int N = b->N, C = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    r->has_forward = 0;
    r->N = N;
    r->S = b->S;
    r->NX = nx;
    r->SX = sx;
    if (x) {
        int rc = ops_to_device(m->ops, r->xsrc, x, (size_t)nx * sizeof(int32_t)) ||
                 ops_to_device(m->ops, r->xcu, x + nx, (size_t)(sx + 1) * sizeof(int32_t)) ||
                 ops_to_device(m->ops, r->xprim, x + nx + sx + 1, (size_t)N * sizeof(int32_t)) ||
                 ops_to_device(m->ops, r->xdsrc, x + nx + sx + 1 + N, (size_t)nx * sizeof(int32_t));
        free(x);
        if (rc != 0) return op_fail(m, "to_device", err);
    }
    r->inv_temp = inv_temp;
    OP(to_device, r->tokens, b->tokens, (size_t)N * sizeof(int32_t));
    OP(to_device, r->positions, b->positions, (size_t)N * sizeof(int32_t));
    OP(to_device, r->cu, b->cu_seqlens, (size_t)(b->S + 1) * sizeof(int32_t));
    if (b->targets) {
        OP(to_device, r->targets, b->targets, (size_t)N * sizeof(int32_t));
    } else {
        int32_t *none = malloc((size_t)N * sizeof *none);
        if (!none) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
        for (int n = 0; n < N; n++)
            none[n] = -1;
        int rc = ops_to_device(m->ops, r->targets, none, (size_t)N * sizeof(int32_t));
        free(none);
        if (rc != 0) return op_fail(m, "to_device", err);
    }

    OP(embedding_forward, r->res, r->tokens, m->w.wte, N, C, V);
    attn_mode am = {.cu = r->cu, .S = b->S, .shared = nx > 0 ? r : NULL};
    for (int l = 0; l < L; l++)
        if (layer_forward(m, l, &r->layers[l], r->res + (size_t)l * N * C,
                          r->res + (size_t)(l + 1) * N * C, N, r->positions, &am, err) != 0)
            return chord_err_prefix(err, "layer %d forward", l);
    OP(rmsnorm_forward, r->xf, r->rstdf, r->res + (size_t)L * N * C, C, m->w.final_norm, N, C,
       (float)c->rms_norm_eps);
    for (int r0 = 0; r0 < N; r0 += r->chunk_rows) {
        int R = N - r0 < r->chunk_rows ? N - r0 : r->chunk_rows;
        if (logits_chunk(m, r, r0, R, err) != 0) return -1;
        OP(logprob_forward, r->logp + r0, r->entropy + r0, r->lse_out + r0, r->logits,
           r->targets + r0, R, V, inv_temp);
    }
    if (logp_out) OP(to_host, logp_out, r->logp, (size_t)N * sizeof(float));
    if (entropy_out) OP(to_host, entropy_out, r->entropy, (size_t)N * sizeof(float));
    r->has_forward = 1;
    return 0;
}

/* What training updates: the whole model, or (an adapter attached) the adapter alone. */
typedef struct trainable {
    float *params, *grads, **adam_m, **adam_v;
    size_t n, n_decay; /* the first n_decay floats are matrices (weight decay applies) */
    int *adam_t;
} trainable;

static trainable trainable_of(model *m) {
    if (m->lora)
        return (trainable){m->lora->params,  m->lora->grads,      &m->lora->adam_m,
                           &m->lora->adam_v, m->lora->num_params, m->lora->num_params,
                           &m->lora->adam_t};
    return (trainable){m->params,     m->grads,     &m->adam_m, &m->adam_v,
                       m->num_params, m->num_decay, &m->adam_t};
}

int model_zero_grad(model *m, chord_err *err) {
    if (ensure_grads(m, err) != 0) return -1;
    trainable tr = trainable_of(m);
    OP(zero, tr.grads, tr.n * sizeof(float));
    return 0;
}

void model_set_grad_hook(model *m, int (*hook)(void *user, size_t final_from, chord_err *err),
                         void *user) {
    m->grad_hook = hook;
    m->grad_hook_user = user;
}

/* Widens *end to the end offset of g[0, count) in the trainable gradient buffer, when g is in it
 * (a frozen base's tensors are not). */
static void grad_end(const trainable *tr, const float *g, size_t count, size_t *end) {
    if (!g || g < tr->grads || g >= tr->grads + tr->n) return;
    size_t e = (size_t)(g - tr->grads) + count;
    if (e > *end) *end = e;
}

/* The backward's stages in order — 0 the logits (lm_head, final norm), 1 + k layer L-1-k, L + 1
 * the embedding — and final_from after each: the highest end offset any later stage writes
 * (suffix maxima). final_from has L + 2 entries. */
static int grad_stages(model *m, size_t *final_from, chord_err *err) {
    const int L = m->cfg.num_hidden_layers;
    const size_t C = (size_t)m->cfg.hidden_size, VC = (size_t)m->cfg.vocab_size * C;
    size_t *end = calloc((size_t)L + 2, sizeof *end);
    if (!end) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    trainable tr = trainable_of(m);
    grad_end(&tr, m->g.lm_head, VC, &end[0]);
    grad_end(&tr, m->g.final_norm, C, &end[0]);
    grad_end(&tr, m->g.wte, VC, &end[L + 1]);
    if (m->lora) {
        const model_lora *a = m->lora;
        for (int l = 0; l < L; l++)
            for (int t = 0; t < MODEL_LORA_N_TARGETS; t++) {
                const model_lora_pair *g = &a->g[l * MODEL_LORA_N_TARGETS + t];
                grad_end(&tr, g->A, (size_t)a->cfg.rank * (size_t)a->in[t], &end[L - l]);
                grad_end(&tr, g->B, (size_t)a->out[t] * (size_t)a->cfg.rank, &end[L - l]);
            }
    } else {
        for (int i = 0; i < m->n_tensors; i++) {
            int l = -1;
            if (sscanf(m->tensors[i].name, "model.layers.%d.", &l) == 1 && l >= 0 && l < L)
                grad_end(&tr, tr.grads + m->tensors[i].offset, m->tensors[i].numel, &end[L - l]);
        }
    }
    size_t later = 0;
    for (int k = L + 1; k >= 0; k--) {
        final_from[k] = later;
        if (end[k] > later) later = end[k];
    }
    free(end);
    return 0;
}

static int backward_stages(model *m, int with_entropy, size_t *final_from, chord_err *err);

int model_backward(model *m, const float *dlogp, const float *dentropy, chord_err *err) {
    model_run *r = m->run;
    if (!r || !r->has_forward) return chord_err_set(err, "model_backward: no forward to go back");
    if (!dlogp) return chord_err_set(err, "model_backward: dlogp is required");
    if (m->lora && m->lora->disabled)
        return chord_err_set(err, "model_backward: the adapter is disabled (the frozen base "
                                  "alone has nothing to train)");
    if (ensure_grads(m, err) != 0) return -1;
    const int N = r->N, L = m->cfg.num_hidden_layers;
    OP(to_device, r->dlogp, dlogp, (size_t)N * sizeof(float));
    if (dentropy) OP(to_device, r->dentropy, dentropy, (size_t)N * sizeof(float));

    size_t *final_from = NULL; /* with a hook: after each stage (grad_stages) */
    if (m->grad_hook) {
        if (!(final_from = malloc(((size_t)L + 2) * sizeof *final_from)))
            return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
        if (grad_stages(m, final_from, err) != 0) {
            free(final_from);
            return -1;
        }
    }
    int rc = backward_stages(m, dentropy != NULL, final_from, err);
    free(final_from);
    return rc;
}

/* model_backward's work, calling the hook (final_from non-NULL) after each stage. */
static int backward_stages(model *m, int with_entropy, size_t *final_from, chord_err *err) {
    model_run *r = m->run;
    const model_config *c = &m->cfg;
    const int N = r->N, C = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
    /* logits -> final norm output; r->dln holds d xf */
    for (int r0 = 0; r0 < N; r0 += r->chunk_rows) {
        int R = N - r0 < r->chunk_rows ? N - r0 : r->chunk_rows;
        if (r->chunk_rows < N && logits_chunk(m, r, r0, R, err) != 0) return -1;
        OP(logprob_backward, r->dlogits, r->dlogp + r0, with_entropy ? r->dentropy + r0 : NULL,
           r->logits, r->lse_out + r0, r->targets + r0, R, V, r->inv_temp);
        MM(backward, r->dln + (size_t)r0 * C, m->g.lm_head, NULL, r->dlogits,
           r->xf + (size_t)r0 * C, NULL, m->w.lm_head, R, C, V, 0);
    }
    OP(zero, r->dres, (size_t)N * C * sizeof(float));
    OP(rmsnorm_backward, r->dres, C, m->g.final_norm, r->dln, r->res + (size_t)L * N * C,
       m->w.final_norm, r->rstdf, N, C);
    if (final_from && m->grad_hook(m->grad_hook_user, final_from[0], err) != 0) return -1;
    for (int l = L - 1; l >= 0; l--) {
        if (layer_backward(m, l, &r->layers[l], r->res + (size_t)l * N * C, r, err) != 0)
            return chord_err_prefix(err, "layer %d backward", l);
        if (final_from && m->grad_hook(m->grad_hook_user, final_from[L - l], err) != 0) return -1;
    }
    if (m->g.wte) OP(embedding_backward, m->g.wte, r->dres, r->tokens, N, C, V);
    if (final_from && m->grad_hook(m->grad_hook_user, 0, err) != 0) return -1;
    return 0;
}

int model_read_logits(model *m, float *logits_host, chord_err *err) {
    model_run *r = m->run;
    if (!r || !r->has_forward) return chord_err_set(err, "model_read_logits: no forward yet");
    const int N = r->N, V = m->cfg.vocab_size;
    for (int r0 = 0; r0 < N; r0 += r->chunk_rows) {
        int R = N - r0 < r->chunk_rows ? N - r0 : r->chunk_rows;
        if (r->chunk_rows < N && logits_chunk(m, r, r0, R, err) != 0) return -1;
        OP(to_host, logits_host + (size_t)r0 * V, r->logits, (size_t)R * V * sizeof(float));
    }
    return 0;
}

int model_read_params(const model *m, float *host, chord_err *err) {
    OP(to_host, host, m->params, m->num_params * sizeof(float));
    return 0;
}

int model_read_grads(const model *m, float *host, chord_err *err) {
    if (m->lora)
        return chord_err_set(err, "model_read_grads: the base is frozen under a LoRA adapter "
                                  "(model_lora_read_grads)");
    if (!m->grads) return chord_err_set(err, "model_read_grads: no gradients yet");
    OP(to_host, host, m->grads, m->num_params * sizeof(float));
    return 0;
}

int model_grad_norm(model *m, double *norm_out, chord_err *err) {
    if (ensure_grads(m, err) != 0) return -1;
    trainable tr = trainable_of(m);
    double ss = 0.0;
    OP(sum_squares, &ss, tr.grads, tr.n);
    *norm_out = sqrt(ss);
    return 0;
}

/* The slice of the trainable buffer the AdamW moments cover (ZeRO-1), whole by default. */
static void opt_slice(const model *m, size_t n, size_t *lo, size_t *hi) {
    *lo = m->opt_hi ? m->opt_lo : 0;
    *hi = m->opt_hi ? m->opt_hi : n;
}

/* Clip at grad_norm, then AdamW over the moments' slice [lo, hi) of the trainable buffer (its
 * moments indexed from lo). */
static int adamw_slice(model *m, double norm, float lr, float beta1, float beta2, float eps,
                       float weight_decay, float grad_clip, chord_err *err) {
    trainable tr = trainable_of(m);
    size_t lo, hi;
    opt_slice(m, tr.n, &lo, &hi);
    if (hi > tr.n || lo > hi)
        return chord_err_set(err,
                             "model: the optimizer slice [%zu, %zu) is outside the %zu "
                             "trainable parameters",
                             lo, hi, tr.n);
    const size_t k = hi - lo;
    if (!*tr.adam_m) *tr.adam_m = ops_alloc(m->ops, (k ? k : 1) * sizeof(float));
    if (*tr.adam_m && !*tr.adam_v) *tr.adam_v = ops_alloc(m->ops, (k ? k : 1) * sizeof(float));
    if (!*tr.adam_v)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "model: cannot allocate AdamW moments (2 x %zu bytes): %s",
                              k * sizeof(float), ops_last_error(m->ops));
    /* torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1 */
    float scale = 1.0f;
    if (grad_clip > 0.0f) {
        double coef = grad_clip / (norm + 1e-6);
        if (coef < 1.0) scale = (float)coef;
    }
    /* the step counter advances only with an update that happened (a failed one is not a step:
     * bias correction and a resumed run's schedule count from it) */
    const int t = *tr.adam_t + 1;
    float *am = *tr.adam_m, *av = *tr.adam_v;
    /* the slice's part with weight decay (matrices), then the rest */
    const size_t decay_hi = tr.n_decay < lo ? lo : tr.n_decay > hi ? hi : tr.n_decay;
    if (decay_hi > lo)
        OP(adamw_update, tr.params + lo, tr.grads + lo, am, av, decay_hi - lo, lr, beta1, beta2,
           eps, weight_decay, t, scale);
    if (hi > decay_hi)
        OP(adamw_update, tr.params + decay_hi, tr.grads + decay_hi, am + (decay_hi - lo),
           av + (decay_hi - lo), hi - decay_hi, lr, beta1, beta2, eps, 0.0f, t, scale);
    *tr.adam_t = t;
    return weights_changed_slice(m, lo, hi, err);
}

int model_adamw_step(model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                     float grad_clip, double *grad_norm_out, chord_err *err) {
    if (m->opt_hi)
        return chord_err_set(err, "model_adamw_step: the optimizer state is sharded (ZeRO-1): "
                                  "model_adamw_step_shard");
    double norm = 0.0;
    if (model_grad_norm(m, &norm, err) != 0) return -1;
    if (grad_norm_out) *grad_norm_out = norm;
    if (!isfinite(norm))
        return chord_err_set(err, "model_adamw_step: gradient norm is %g; step skipped", norm);
    return adamw_slice(m, norm, lr, beta1, beta2, eps, weight_decay, grad_clip, err);
}

int model_set_optimizer_shard(model *m, size_t lo, size_t hi, chord_err *err) {
    trainable tr = trainable_of(m);
    if (*tr.adam_m || *tr.adam_v)
        return chord_err_set(err, "model_set_optimizer_shard: the moments exist already");
    if (lo > hi || hi > tr.n)
        return chord_err_set(err,
                             "model_set_optimizer_shard: [%zu, %zu) is not a slice of the "
                             "%zu trainable parameters",
                             lo, hi, tr.n);
    if (lo == 0 && hi == tr.n) hi = 0; /* the whole buffer */
    m->opt_lo = hi ? lo : 0;
    m->opt_hi = hi;
    return 0;
}

int model_grad_sum_squares(model *m, size_t lo, size_t hi, double *ss, chord_err *err) {
    if (ensure_grads(m, err) != 0) return -1;
    trainable tr = trainable_of(m);
    if (lo > hi || hi > tr.n)
        return chord_err_set(err, "model_grad_sum_squares: [%zu, %zu) outside %zu", lo, hi, tr.n);
    *ss = 0.0;
    if (hi > lo) OP(sum_squares, ss, tr.grads + lo, hi - lo);
    return 0;
}

int model_adamw_step_shard(model *m, double grad_norm, float lr, float beta1, float beta2,
                           float eps, float weight_decay, float grad_clip, chord_err *err) {
    if (!isfinite(grad_norm))
        return chord_err_set(err, "model_adamw_step: gradient norm is %g; step skipped", grad_norm);
    if (ensure_grads(m, err) != 0) return -1;
    return adamw_slice(m, grad_norm, lr, beta1, beta2, eps, weight_decay, grad_clip, err);
}

int model_read_optimizer_shard(const model *m, float *adam_m, float *adam_v, chord_err *err) {
    trainable tr = trainable_of((model *)m);
    size_t lo, hi;
    opt_slice(m, tr.n, &lo, &hi);
    if (!*tr.adam_m) {
        memset(adam_m, 0, (hi - lo) * sizeof(float));
        memset(adam_v, 0, (hi - lo) * sizeof(float));
        return 0;
    }
    OP(to_host, adam_m, *tr.adam_m, (hi - lo) * sizeof(float));
    OP(to_host, adam_v, *tr.adam_v, (hi - lo) * sizeof(float));
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * KV-cache decoding. Cache layout per layer: k then v, each (slots, max_T, Hkv, D). */

struct model_kv_cache {
    model *m;
    int slots, max_T;
    size_t layer_floats; /* slots * max_T * Hkv * D */
    float *kv;           /* (L, 2, slots, max_T, Hkv, D) */
    int *len;            /* host (slots): positions stored, for checks */
    model_run *run;      /* inference activations (one layer's worth) */
};

int model_kv_create(model *m, int slots, int max_T, model_kv_cache **out, chord_err *err) {
    *out = NULL;
    if (slots <= 0 || max_T <= 0)
        return chord_err_set(err, "model_kv_create: slots (%d) and max_T (%d) must be positive",
                             slots, max_T);
    model_kv_cache *kv = calloc(1, sizeof *kv);
    if (!kv) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    kv->m = m;
    kv->slots = slots;
    kv->max_T = max_T;
    kv->layer_floats = (size_t)slots * max_T * m->cfg.num_key_value_heads * m->cfg.head_dim;
    size_t bytes = 2 * (size_t)m->cfg.num_hidden_layers * kv->layer_floats * sizeof(float);
    kv->kv = ops_alloc(m->ops, bytes);
    kv->len = calloc((size_t)slots, sizeof *kv->len);
    if (!kv->kv || !kv->len) {
        chord_err_setc(err, CHORD_E_TOO_LARGE,
                       "model_kv_create: cannot allocate a KV cache of %zu bytes (%d slots x %d "
                       "positions): %s",
                       bytes, slots, max_T, ops_last_error(m->ops));
        model_kv_free(kv);
        return -1;
    }
    *out = kv;
    return 0;
}

void model_kv_free(model_kv_cache *kv) {
    if (!kv) return;
    ops_free(kv->m->ops, kv->kv);
    run_free(kv->m, kv->run);
    free(kv->len);
    free(kv);
}

/* Runs the layers over N rows whose k, v go to (slot, pos) in the cache, then writes the logits
 * of `rows` of them (row indices last (rows) host) to kv->run->logits. */
static int infer(model *m, model_kv_cache *kv, int N, const int32_t *last, int rows,
                 const attn_mode *am_in, chord_err *err) {
    model_run *r = kv->run;
    const model_config *c = &m->cfg;
    const int C = c->hidden_size, V = c->vocab_size;
    attn_mode am = *am_in;
    am.kv = kv->kv;
    am.layer_floats = kv->layer_floats;
    am.slot = r->slots;
    am.pos = r->positions;
    am.max_T = kv->max_T;
    OP(embedding_forward, r->res, r->tokens, m->w.wte, N, C, V);
    for (int l = 0; l < c->num_hidden_layers; l++)
        if (layer_forward(m, l, &r->layers[0], r->res, r->res, N, r->positions, &am, err) != 0)
            return chord_err_prefix(err, "layer %d", l);
    if (last) {
        for (int i = 0; i < rows; i++)
            OP(rmsnorm_forward, r->xf + (size_t)i * C, r->rstdf + i, r->res + (size_t)last[i] * C,
               C, m->w.final_norm, 1, C, (float)c->rms_norm_eps);
    } else {
        OP(rmsnorm_forward, r->xf, r->rstdf, r->res, C, m->w.final_norm, rows, C,
           (float)c->rms_norm_eps);
    }
    MM(forward, r->logits, r->xf, NULL, m->w.lm_head, NULL, rows, C, V);
    return 0;
}

int model_prefill(model *m, model_kv_cache *kv, const int32_t *tokens, const int32_t *cu_seqlens,
                  int S, const int32_t *slots, const float **logits_out, chord_err *err) {
    *logits_out = NULL;
    if (S <= 0 || S > kv->slots || !tokens || !cu_seqlens || !slots)
        return chord_err_set(err,
                             "model_prefill: needs 0 < S <= %d prompts with tokens, "
                             "cu_seqlens and slots",
                             kv->slots);
    if (cu_seqlens[0] != 0) return chord_err_set(err, "model_prefill: cu_seqlens[0] must be 0");
    for (int s = 0; s < S; s++) {
        int len = cu_seqlens[s + 1] - cu_seqlens[s];
        if (len <= 0 || len > kv->max_T)
            return chord_err_set(err, "model_prefill: prompt %d has %d tokens (cache holds 1..%d)",
                                 s, len, kv->max_T);
        if (slots[s] < 0 || slots[s] >= kv->slots)
            return chord_err_set(err, "model_prefill: slots[%d] = %d is out of range [0, %d)", s,
                                 slots[s], kv->slots);
    }
    const int N = cu_seqlens[S];
    if (check_tokens(m, tokens, N, "model_prefill: tokens", err) != 0) return -1;
    if (run_ensure(m, &kv->run, N, kv->slots, 0, 0, err) != 0) return -1;
    model_run *r = kv->run;
    int32_t *host = malloc((size_t)(2 * N + S) * sizeof *host);
    if (!host) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    int32_t *pos = host, *slot = host + N, *last = host + 2 * N;
    for (int s = 0; s < S; s++) {
        for (int n = cu_seqlens[s]; n < cu_seqlens[s + 1]; n++) {
            pos[n] = n - cu_seqlens[s];
            slot[n] = slots[s];
        }
        last[s] = cu_seqlens[s + 1] - 1;
    }
    int rc = -1;
    ops_ctx *o = m->ops;
    if (ops_to_device(o, r->tokens, tokens, (size_t)N * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->positions, pos, (size_t)N * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->slots, slot, (size_t)N * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->cu, cu_seqlens, (size_t)(S + 1) * sizeof(int32_t)) != 0) {
        op_fail(m, "to_device", err);
        goto done;
    }
    attn_mode am = {.cu = r->cu, .S = S};
    if (infer(m, kv, N, last, S, &am, err) != 0) {
        chord_err_prefix(err, "model_prefill");
        goto done;
    }
    for (int s = 0; s < S; s++)
        kv->len[slots[s]] = cu_seqlens[s + 1] - cu_seqlens[s];
    *logits_out = r->logits;
    rc = 0;
done:
    free(host);
    return rc;
}

int model_kv_copy(model *m, model_kv_cache *kv, int src, const int32_t *dst, int n, int len,
                  chord_err *err) {
    if (src < 0 || src >= kv->slots)
        return chord_err_set(err, "model_kv_copy: source slot %d is out of range [0, %d)", src,
                             kv->slots);
    if (len < 0 || len > kv->len[src])
        return chord_err_set(err, "model_kv_copy: slot %d holds %d positions, not %d", src,
                             kv->len[src], len);
    const size_t row = (size_t)m->cfg.num_key_value_heads * m->cfg.head_dim;
    const size_t slot_floats = (size_t)kv->max_T * row;
    for (int i = 0; i < n; i++) {
        if (dst[i] < 0 || dst[i] >= kv->slots)
            return chord_err_set(err, "model_kv_copy: dst[%d] = %d is out of range [0, %d)", i,
                                 dst[i], kv->slots);
        if (dst[i] == src) continue;
        for (int l = 0; l < 2 * m->cfg.num_hidden_layers; l++) {
            float *base = kv->kv + (size_t)l * kv->layer_floats;
            OP(copy, base + (size_t)dst[i] * slot_floats, base + (size_t)src * slot_floats,
               (size_t)len * row * sizeof(float));
        }
        kv->len[dst[i]] = len;
    }
    return 0;
}

int model_decode(model *m, model_kv_cache *kv, const int32_t *tokens, const int32_t *positions,
                 const int32_t *slots, int B, const float **logits_out, chord_err *err) {
    *logits_out = NULL;
    if (B <= 0 || B > kv->slots || !tokens || !positions || !slots)
        return chord_err_set(err,
                             "model_decode: needs 0 < B <= %d rows of tokens, positions and "
                             "slots",
                             kv->slots);
    if (check_tokens(m, tokens, B, "model_decode: tokens", err) != 0) return -1;
    for (int b = 0; b < B; b++) {
        if (slots[b] < 0 || slots[b] >= kv->slots)
            return chord_err_set(err, "model_decode: slots[%d] = %d is out of range [0, %d)", b,
                                 slots[b], kv->slots);
        if (positions[b] < 0 || positions[b] >= kv->max_T)
            return chord_err_set(err,
                                 "model_decode: positions[%d] = %d is outside the cache "
                                 "[0, %d)",
                                 b, positions[b], kv->max_T);
        if (positions[b] > kv->len[slots[b]])
            return chord_err_set(err,
                                 "model_decode: slot %d holds %d positions; position %d "
                                 "would leave a gap",
                                 slots[b], kv->len[slots[b]], positions[b]);
        for (int b2 = 0; b2 < b; b2++)
            if (slots[b2] == slots[b])
                return chord_err_set(err, "model_decode: slot %d appears twice", slots[b]);
    }
    if (run_ensure(m, &kv->run, B, kv->slots, 0, 0, err) != 0) return -1;
    model_run *r = kv->run;
    int32_t *lens = malloc((size_t)B * sizeof *lens);
    if (!lens) return chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
    for (int b = 0; b < B; b++)
        lens[b] = positions[b] + 1;
    ops_ctx *o = m->ops;
    int rc = -1;
    if (ops_to_device(o, r->tokens, tokens, (size_t)B * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->positions, positions, (size_t)B * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->slots, slots, (size_t)B * sizeof(int32_t)) != 0 ||
        ops_to_device(o, r->lens, lens, (size_t)B * sizeof(int32_t)) != 0) {
        op_fail(m, "to_device", err);
        goto done;
    }
    attn_mode am = {.lens = r->lens};
    if (infer(m, kv, B, NULL, B, &am, err) != 0) {
        chord_err_prefix(err, "model_decode");
        goto done;
    }
    for (int b = 0; b < B; b++)
        kv->len[slots[b]] = positions[b] + 1;
    *logits_out = r->logits;
    rc = 0;
done:
    free(lens);
    return rc;
}
