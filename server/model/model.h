/* model.h — the transformer engine: a Llama/Qwen2/Qwen3-family decoder (RMSNorm, RoPE,
 * grouped-query attention, SwiGLU, optional q/k/v/o/MLP biases, optional tied embeddings, optional
 * Qwen3 q/k norm) with forward, backward, AdamW and a KV-cache decoder, over the ops.h backend.
 *
 * Three structs tell the story (llama2.c): model_config (config.h), model_weights (pointers into
 * ONE flat device buffer carved from a size table; the same table carves the gradient buffer
 * and the two AdamW moment buffers) and the run state (activations for a packed batch, private
 * to model.c). q/k/v are fused into one (Hq+2Hkv)*D x C matrix and gate/up into one 2I x C matrix
 * (one GEMM each); load and save split them back to Hugging Face names.
 *
 * All tensor data lives in backend (device) memory. Functions read back to the host only what
 * the caller asks for (per-token log-probs, logits for tests, the gradient norm).
 *
 * What this is not: no tokenizer, no sampling policy (ops.h samples), no training loss — the
 * trainer turns per-token log-probs into a loss and hands back d loss / d logp. */
#ifndef CHORD_MODEL_MODEL_H
#define CHORD_MODEL_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/model/config.h"
#include "server/model/safetensors.h"

/* One decoder layer's parameters (or gradients): device pointers, NULL when the config has none. */
typedef struct model_layer_weights {
    float *ln1;    /* input_layernorm (C) */
    float *wqkv;   /* q, k, v projections fused (QKV, C), QKV = (Hq + 2 Hkv) D */
    float *bqkv;   /* (QKV) when attention_bias */
    float *q_norm; /* Qwen3 (D) */
    float *k_norm; /* Qwen3 (D) */
    float *wo;     /* o_proj (C, Hq D) */
    float *bo;     /* (C) when o_proj_bias */
    float *ln2;    /* post_attention_layernorm (C) */
    float *wgu;    /* gate, up fused (2I, C): rows 0..I-1 gate, I..2I-1 up */
    float *bgu;    /* (2I) when mlp_bias */
    float *wdown;  /* down_proj (C, I) */
    float *bdown;  /* (C) when mlp_bias */
} model_layer_weights;

typedef struct model_weights {
    float *wte;                  /* embed_tokens (V, C) */
    model_layer_weights *layers; /* (L) */
    float *final_norm;           /* (C) */
    float *lm_head;              /* (V, C); == wte when tie_word_embeddings */
} model_weights;

/* One Hugging Face tensor and where it lives in the flat buffers (offset in floats). */
typedef struct model_tensor {
    char name[96];
    int ndim;
    int64_t shape[2];
    size_t offset;
    size_t numel;
} model_tensor;

typedef struct model_run model_run; /* activations (model.c) */
typedef struct model_lora model_lora; /* an attached LoRA adapter (model_lora.c) */

typedef struct model {
    model_config cfg;
    ops_ctx *ops;           /* not owned */
    size_t num_params;      /* floats in each flat buffer */
    size_t num_decay;       /* the first num_decay floats are matrices (weight decay applies) */
    float *params;          /* (num_params) device */
    uint16_t *params16;     /* (num_decay) device: the matrices in bf16 for the GEMMs, or NULL
                               (precision below; a view shares its base's) */
    float *grads;           /* (num_params) device, allocated on first use */
    float *adam_m, *adam_v; /* (num_params) device, allocated on the first step */
    int adam_t;             /* AdamW steps taken */
    /* ZeRO-1 (model_set_optimizer_shard): the moments (the model's or the adapter's) hold only
     * [opt_lo, opt_hi) of the trainable buffer; opt_hi == 0: all of it */
    size_t opt_lo, opt_hi;
    model_weights w;        /* into params */
    model_weights g;        /* into grads (valid once grads exist) */
    model_tensor *tensors;  /* Hugging Face names, in file order */
    int n_tensors;
    float *inv_freq;            /* (D/2) device */
    size_t logits_budget_bytes; /* max bytes of one logits chunk (rows x V floats) */
    model_run *run;
    model_lora *lora; /* attached adapter: the base is frozen, training updates the adapter */
    struct model *base; /* a view (model_create_view): the model whose weights these are */
    /* model_set_grad_hook: told during model_backward which gradients are final */
    int (*grad_hook)(void *user, size_t final_from, chord_err *err);
    void *grad_hook_user;
} model;

/* A packed batch: S sequences in N rows; every array is host memory, copied in by the call.
 * Sequence s owns rows cu_seqlens[s] .. cu_seqlens[s+1]-1; positions restart per sequence.
 *
 * Shared prefixes (seg_parent != NULL): the S row ranges are segments, and segment s continues
 * segment seg_parent[s] (-1: it starts a sequence). A segment with children is a prompt prefix
 * computed ONCE: each child attends to all of its parent's rows and causally to its own, exactly
 * as if the parent's rows were repeated in front of it; the parent's rows attend among
 * themselves. The gradients of every child flow into the shared rows. One level only (a parent
 * has no parent, parent < s), and a child's first position is its parent's last plus one.
 * Attention itself runs on the expanded (unshared) layout, gathered from and scattered back to
 * the shared rows; every other op (the projections, MLP, norms, logits) runs once per row. */
typedef struct model_batch {
    int N, S;
    const int32_t *tokens;     /* (N) */
    const int32_t *positions;  /* (N) */
    const int32_t *cu_seqlens; /* (S+1), cu_seqlens[0] = 0, cu_seqlens[S] = N */
    const int32_t *targets;    /* (N) next-token ids, -1 = no target; NULL = none at all */
    const int32_t *seg_parent; /* (S) or NULL: every segment is a whole sequence */
} model_batch;

/* ---- life cycle ---- */

/* A model with zeroed parameters for cfg on the backend ops (not owned; must outlive it). */
int model_create(const model_config *cfg, ops_ctx *ops, model **out, chord_err *err);
/* DIR/config.json + DIR's safetensors (single or sharded; F32/BF16/F16 read as float32). */
int model_load(const char *dir, ops_ctx *ops, model **out, chord_err *err);
/* model_load, or for a PEFT LoRA directory (config.h model_config_adapter_base) its base with
 * the adapter attached: the weights of whatever model directory a user names. */
int model_open(const char *dir, ops_ctx *ops, model **out, chord_err *err);
/* Hugging Face's init: normal(0, initializer_range) for linear and embedding weights (the
 * pad_token_id row of the embedding zeroed), zeros for biases, ones for norms. Own seeded RNG. */
int model_init_random(model *m, uint64_t seed, chord_err *err);
/* Writes DIR/config.json + model.safetensors (or shards + index when the data exceeds
 * max_shard_bytes > 0) in Hugging Face naming; dtype ST_F32, ST_BF16 or ST_F16. */
int model_save(const model *m, const char *dir, st_dtype dtype, size_t max_shard_bytes,
               chord_err *err);
void model_free(model *m);
/* A view of base: the same weights (no copy: base->params itself), its own activations,
 * gradients and adapter. Views of one base each attach their own LoRA adapter and train and
 * sample at once — several users' adapters over one copy of the base. A view trains only an
 * adapter (the shared weights never change); base must outlive its views and not be trained
 * while they exist.
 *
 * ops: the backend context the view runs on (NULL: the base's). Views on different contexts of
 * the same device (one per worker thread: a context is not thread-safe) read the base's weights
 * concurrently; a context of another backend or device is refused. The base's weights must be
 * on the device (its loading synchronised) before another context reads them. */
int model_create_view(model *base, ops_ctx *ops, model **out, chord_err *err);

/* ---- precision ----
 * A model created on a context with bf16_weights (ops.h; CHORD_WEIGHTS, the default on a GPU
 * whose GEMMs are bf16) keeps, beside its float32 parameters (the master weights, which the
 * gradients, AdamW and every save use), a bf16 copy of its matrices (the first num_decay floats:
 * embeddings, projections, lm_head), and every GEMM of a matrix multiplies bf16 operands with
 * fp32 accumulation (ops.h matmul_*_bf16: the activation or gradient operand rounded to bf16).
 * Without an adapter attached, the activations the GEMMs read are stored in bf16 too: each
 * layer's two norm outputs (the q/k/v and gate/up GEMMs' inputs) and its gate/up projections
 * (the largest activation; SwiGLU reads them widened) — 37 % less per layer and token on
 * Qwen2.5-0.5B shapes (5760 of 15376 floats' worth). The residual stream, q/k/v, the attention output, the logits, the
 * embedding lookup, norms' weights, biases and every gradient stay float32; with an adapter the
 * activations stay float32 (the adapter reads and adds to them). The copy follows the masters:
 * loading, random init and model_adamw_step refresh it; whoever writes the parameters any other
 * way (an all-gather of ZeRO-1 slices into model_trainable_weights) calls
 * model_weights_changed. A model without the copy runs float32 GEMMs on float32 activations. */
int model_weights_changed(model *m, chord_err *err);

/* ---- training ---- */

/* Runs the packed batch and computes, per row n, logp[n] = log softmax(logits[n] * inv_temp)
 * [targets[n]] (0 where there is no target) and the entropy of that distribution. The logits are
 * processed in chunks of rows of at most logits_budget_bytes, so (N x V) need not exist at once.
 * logp_out (N) and entropy_out (N) are host arrays; either may be NULL (not read back).
 * Activations are kept for model_backward. */
int model_forward(model *m, const model_batch *b, float inv_temp, float *logp_out,
                  float *entropy_out, chord_err *err);
/* Back-propagates d loss / d logp (N) and d loss / d entropy (N, or NULL) of the last forward
 * (rows without a target get no gradient at all, their entropy included: ops.h) into the
 * gradient buffer: gradients ACCUMULATE across calls (micro-batching) until
 * model_zero_grad. Host arrays. */
int model_backward(model *m, const float *dlogp, const float *dentropy, chord_err *err);
int model_zero_grad(model *m, chord_err *err);
/* During each model_backward, after the logits, after each layer and at the end, calls
 * hook(user, final_from, err): the backward will write no gradient of the trainable buffer
 * (model_trainable_grads) at or above offset final_from any more (it only decreases; 0 at the
 * end). A gradient bucket of data parallelism can then be summed while the backward goes on
 * (the buffer's layout puts later layers higher; where it does not, final_from stays high until
 * the end). A non-zero return ends the backward with the hook's error. NULL: no hook. */
void model_set_grad_hook(model *m, int (*hook)(void *user, size_t final_from, chord_err *err),
                         void *user);
/* Full logits (N, V) of the last forward, copied to the host (tests, scoring tools). */
int model_read_logits(model *m, float *logits_host, chord_err *err);
/* Copies of the flat buffers to the host (num_params floats); index them with m->tensors. */
int model_read_params(const model *m, float *host, chord_err *err);
int model_read_grads(const model *m, float *host, chord_err *err);
/* Global L2 norm of the gradient buffer. */
int model_grad_norm(model *m, double *norm_out, chord_err *err);
/* Global-norm clip (grad_clip <= 0: none) then one AdamW step (PyTorch semantics, bias
 * correction) over every parameter; weight decay applies to matrices (embeddings, projections,
 * lm_head) and not to norms or biases, as Hugging Face's Trainer does. *grad_norm_out (may be
 * NULL) receives the pre-clip norm. */
int model_adamw_step(model *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                     float grad_clip, double *grad_norm_out, chord_err *err);

/* The AdamW state (moments m, v and the step count) to / from one safetensors file (tensors
 * adam_m, adam_v (num_params) F32 and adam_t (1)), for checkpoints that resume exactly. Loading
 * checks the sizes against this model. Saving before any step writes zero moments. Loading
 * with a ZeRO-1 slice set keeps the slice's moments only (model_set_optimizer_shard). */
int model_save_optimizer(const model *m, const char *path, chord_err *err);
int model_load_optimizer(model *m, const char *path, chord_err *err);

/* ---- LoRA (Hu et al. 2021, as PEFT implements it) ----
 * An adapter adds (alpha / rank) · B A x to each target projection W x: A (rank, in) and
 * B (out, rank) per layer and target. With one attached, every forward (training, prefill,
 * decode) runs base + adapter without merging; the base is frozen — no gradients or AdamW
 * moments exist for it — and model_zero_grad / model_backward / model_grad_norm /
 * model_adamw_step act on the adapter's own flat buffers (every A and B is a matrix: weight
 * decay applies to all). model_read_grads refuses (the base has none): read the adapter's. */

typedef enum model_lora_target {
    MODEL_LORA_Q,
    MODEL_LORA_K,
    MODEL_LORA_V,
    MODEL_LORA_O,
    MODEL_LORA_GATE,
    MODEL_LORA_UP,
    MODEL_LORA_DOWN,
    MODEL_LORA_N_TARGETS
} model_lora_target;

/* PEFT's module names, by target: q_proj k_proj v_proj o_proj gate_proj up_proj down_proj */
extern const char *const model_lora_target_names[MODEL_LORA_N_TARGETS];
/* The target a module name means, or -1 (name NULL or none of those). */
int model_lora_target_of(const char *name);

typedef struct model_lora_config {
    int rank;          /* r >= 1 */
    double alpha;      /* lora_alpha > 0; the scale is alpha / rank */
    unsigned targets;  /* bit (1u << target) for each adapted projection; not 0 */
    /* 1: the embeddings train too (PEFT's modules_to_save): a copy of embed_tokens, and of
     * lm_head when it is not tied (a tied lm_head uses the trained copy: PEFT's
     * ensure_weight_tying), in the adapter's buffer, initialised from the base's */
    int train_embeddings;
} model_lora_config;

/* Attaches a fresh adapter: A from PEFT's default (kaiming_uniform_, a = sqrt(5): uniform in
 * ±1/sqrt(in)) with its own seeded RNG, B = 0 (so the model's output is the base's). Replaces
 * nothing: fails when one is attached already. */
int model_lora_attach(model *m, const model_lora_config *cfg, uint64_t seed, chord_err *err);
/* The adapter's tensors under PEFT's names (base_model.model.model.layers.L.self_attn.q_proj.
 * lora_A.weight, ...), in the flat buffers' order; NULL / 0 without an adapter. */
const model_tensor *model_lora_tensors(const model *m, int *n_out, size_t *num_params_out);
/* Host copies of the adapter's parameters / gradients (num_params floats), and the way in. */
int model_lora_read_params(const model *m, float *host, chord_err *err);
int model_lora_read_grads(const model *m, float *host, chord_err *err);
int model_lora_write_params(model *m, const float *host, chord_err *err);
/* The attached adapter's config (rank, alpha, targets, train_embeddings); -1 without one. */
int model_lora_get_config(const model *m, model_lora_config *out);
/* LoRA dropout (PEFT's lora_dropout) on the adapter's input in the training forward and
 * backward (model_forward / model_backward; never in prefill or decode): each element of x is
 * kept with probability 1 - p and scaled 1 / (1 - p), the mask a hash of (seed, layer, target,
 * row, column) (kernels/ops_math.h ops_dropout_keep), recomputed in the backward. p = 0: off
 * (the default). The trainer sets a seed per step, epoch and micro-batch. */
int model_lora_set_dropout(model *m, float p, uint64_t seed, chord_err *err);
/* Runs the adapter in every forward (on, the default) or the base alone (off: the frozen
 * starting policy, e.g. the KL's reference, without a second copy of the weights). */
int model_lora_set_enabled(model *m, int on, chord_err *err);
/* The AdamW steps taken by what trains (the adapter when one is attached), and its size. */
int model_adam_steps(const model *m);
size_t model_trainable_params(const model *m);
/* The gradient buffer of what trains (device memory, model_trainable_params floats; NULL before
 * the first model_zero_grad / model_backward): data parallelism sums it over the ranks. */
float *model_trainable_grads(model *m);
/* The parameter buffer of what trains (device memory, model_trainable_params floats). */
float *model_trainable_weights(model *m);

/* ---- ZeRO-1: optimizer state for a slice of the parameters (docs/distributed.md) ----
 * Each rank keeps the AdamW moments of one contiguous slice [lo, hi) of the trainable buffer
 * and updates only that slice; the caller sums the gradients over the ranks (a reduce-scatter
 * suffices: only [lo, hi) must be the sum), the squares for the global norm, and all-gathers
 * the updated parameters. AdamW is elementwise, so a slice's update is the whole update's on
 * those elements. Set the slice before the first step or model_load_optimizer (moments already
 * allocated are refused); (0, n) or (0, 0) means the whole buffer. With a slice set,
 * model_adamw_step and model_save_optimizer refuse (they need every moment). */
int model_set_optimizer_shard(model *m, size_t lo, size_t hi, chord_err *err);
/* Sum of the squares of the trainable gradients [lo, hi) (double accumulation). */
int model_grad_sum_squares(model *m, size_t lo, size_t hi, double *ss, chord_err *err);
/* model_adamw_step over the slice only, clipping with grad_norm: the global norm the caller
 * computed (the square root of the squares summed over every slice). */
int model_adamw_step_shard(model *m, double grad_norm, float lr, float beta1, float beta2,
                           float eps, float weight_decay, float grad_clip, chord_err *err);
/* The slice's moments to the host (hi - lo floats each; zeros before the first step). */
int model_read_optimizer_shard(const model *m, float *adam_m, float *adam_v, chord_err *err);
/* model_save_optimizer's file from whole moments on the host (model_trainable_params floats
 * each, gathered from the ranks' slices) and this model's step count. */
int model_save_optimizer_from(const model *m, const char *path, const float *adam_m,
                              const float *adam_v, chord_err *err);
/* A PEFT adapter directory: adapter_config.json (LORA, CAUSAL_LM, r, lora_alpha, target_modules,
 * base_model_name_or_path = base_name, may be NULL; with train_embeddings modules_to_save
 * ["embed_tokens"] + "lm_head" when untied, and ensure_weight_tying when tied) +
 * adapter_model.safetensors (F32, PEFT's names: a tied lm_head's copy is written too, as PEFT
 * does), loadable with peft.PeftModel.from_pretrained onto the same base. */
int model_lora_save(const model *m, const char *dir, const char *base_name, chord_err *err);
/* Attaches the adapter of a PEFT directory (what model_lora_save writes, or PEFT's own LoRA
 * without DoRA, rsLoRA, biases, per-layer patterns or trained modules other than the embeddings
 * as train_embeddings trains them: refused by name). */
int model_lora_load(model *m, const char *dir, chord_err *err);
/* A Hugging Face model directory with the adapter merged in (W + alpha/r · B A), as
 * model_save writes one; the model in memory is unchanged. */
int model_save_merged(const model *m, const char *dir, st_dtype dtype, size_t max_shard_bytes,
                      chord_err *err);

/* ---- KV-cache decoding (rollouts) ---- */

typedef struct model_kv_cache model_kv_cache;

/* A cache of `slots` sequences of up to max_T positions for every layer. */
int model_kv_create(model *m, int slots, int max_T, model_kv_cache **out, chord_err *err);
void model_kv_free(model_kv_cache *kv);
/* Runs S prompts packed (tokens (N) host, cu_seqlens (S+1) host, positions 0..len-1) and stores
 * their keys/values in slots[s] (host (S)). *logits_out (device, (S, V), valid until the next
 * call on kv) receives each prompt's last-position logits. */
int model_prefill(model *m, model_kv_cache *kv, const int32_t *tokens, const int32_t *cu_seqlens,
                  int S, const int32_t *slots, const float **logits_out, chord_err *err);
/* Copies positions 0..len-1 of slot src into the n slots dst (host (n)): a group's G rollouts
 * prefill their prompt once. */
int model_kv_copy(model *m, model_kv_cache *kv, int src, const int32_t *dst, int n, int len,
                  chord_err *err);
/* One decoding step: token b (host (B)) at position positions[b] in slot slots[b]; the slot must
 * hold positions 0..positions[b]-1. *logits_out (device, (B, V), valid until the next call on kv)
 * equals the full forward's logits at those positions. */
int model_decode(model *m, model_kv_cache *kv, const int32_t *tokens, const int32_t *positions,
                 const int32_t *slots, int B, const float **logits_out, chord_err *err);

#endif
