/* model_lora_internal.h — the attached LoRA adapter's state, shared by model.c (which runs it in
 * every layer and trains it) and model_lora.c (which lays it out, initialises, reads and writes
 * it). Not for callers outside server/model: model.h is the interface. */
#ifndef CHORD_MODEL_LORA_INTERNAL_H
#define CHORD_MODEL_LORA_INTERNAL_H

#include "server/model/model.h"

typedef struct model_lora_pair {
    float *A; /* (rank, in) device, NULL when the target is not adapted */
    float *B; /* (out, rank) */
} model_lora_pair;

struct model_lora {
    model_lora_config cfg;
    float scale;       /* alpha / rank */
    size_t num_params; /* floats in each flat buffer; every one is a matrix entry (decayed) */
    float *params, *grads, *adam_m, *adam_v; /* device; grads and moments on first use */
    int adam_t;
    int disabled;  /* model_lora_set_enabled(0): forwards run the base alone */
    float dropout; /* model_lora_set_dropout: p, and the mask's seed */
    unsigned long long dropout_seed;
    model_lora_pair *w, *g; /* (L x MODEL_LORA_N_TARGETS) into params / grads */
    model_tensor *tensors;  /* PEFT names */
    int n_tensors;
    int in[MODEL_LORA_N_TARGETS], out[MODEL_LORA_N_TARGETS]; /* each target's projection shape */
    /* train_embeddings: the trained copies of embed_tokens and lm_head in the flat buffers
     * (head_off == emb_off when tied), and the base's own, which the model runs while the
     * adapter is off and gets back when it is freed */
    size_t emb_off, head_off;
    float *base_wte, *base_lm_head;
};

void model_lora_free(model *m);
/* Points the model's embedding and lm_head (and their gradients) at the trained copies, or at
 * the base's while the adapter is off; nothing without train_embeddings. */
void model_lora_point(model *m);
/* host (the base's num_params floats, model->tensors' layout) += scale · B A per adapted target */
int model_lora_merge_into(const model *m, float *host, chord_err *err);
int model_lora_ensure_grads(model *m, chord_err *err);
/* y (N, ldy) += scale · (x (N, in) A^T) B^T; u (N, rank) keeps x A^T for the backward, tmp
 * (N, out) is scratch. Nothing when the target is not adapted. */
int model_lora_forward(model *m, int l, model_lora_target t, const float *x, int N, float *y,
                       int ldy, float *u, float *tmp, float *xd, chord_err *err);
/* xd (N, in): the dropout scratch of a training run (NULL: no dropout, as in prefill and
 * decode). The adapter's gradients (+=) and dx (N, in) += its share, from dy (N, lddy) of the
 * target's output; u as the forward left it; tmp (N, out), du (N, rank), xd and dxd (N, in)
 * are scratch (xd, dxd NULL: no dropout). */
int model_lora_backward(model *m, int l, model_lora_target t, const float *x, int N,
                        const float *dy, int lddy, float *dx, const float *u, float *tmp, float *du,
                        float *xd, float *dxd, chord_err *err);

#endif
