/* mem_estimate.h — how much device memory a training job, a rollout request or a model's weights
 * need, and the check that refuses what does not fit with the figures and what to lower.
 *
 * One estimate, used where work is accepted (the service, at submission: 413 /
 * RESOURCE_EXHAUSTED) and where it starts (the trainer's set-up, a worker's rollout), so a refusal
 * reads the same wherever it happens. Every tensor is float32 but the bf16 copy of the weights
 * some devices keep and the bf16 activations of such a model (model.h precision: the lines
 * marked bf16 below); the figures mirror what model.c allocates (server/model/model.h: one flat
 * buffer each for parameters, gradients and the AdamW moments; the run state of run_layout; the
 * KV cache of model_kv_create) and stay on the safe side where the data is not known yet.
 * ops_mem_usage counts the same buffers as they are allocated: each training step's metrics report
 * its peak beside this estimate (memory/peak_mib, memory/estimate_mib), and integration.train_cli
 * (test_memory_estimate_bounds_the_real_peak) checks the one never exceeds the other:
 *
 *   weights      4 P                               P = model_config_num_params
 *   + 2 P        the bf16 copy of the matrices     on a device whose models keep one
 *                (and of the KL's reference)       (mem_budget.bf16_weights; model.h precision)
 *   reference    4 P + activations                 the KL's reference policy (grpo.kl_coef > 0):
 *                                                  its weights, and its run state for the same
 *                                                  micro-batches (float32)
 *   optimizer    12 P                              gradients + AdamW m and v (training only);
 *                12 P_a with a LoRA adapter         P_a = L Σ_targets rank (in + out): the base
 *                                                  is frozen (no gradients or moments), the
 *                                                  adapter adds 4 P_a to the weights, and the
 *                                                  KL's reference is the base itself (no copy)
 *   activations  4 (N (F + B) + 2 R V)             N the rows of the largest micro-batch: F / B
 *                                                  the floats per row kept forward / scratch
 *                                                  backward, R the logits chunk rows
 *                                                  (min(N, 256 MiB / 4V)). N = micro_batch_tokens
 *                                                  but at most a step's rows (B G min(T_p + new,
 *                                                  max_position) + E min(T_e, max_position)) and
 *                                                  at least the longest sequence's (one longer
 *                                                  than micro_batch_tokens trains alone)
 *   - bf16       N (L (2C + 2I) 2 - 4C)            ln1, ln2 and gate/up stored in bf16 (no LoRA)
 *   sampling     4 (max(S T_p, S G) F_1 + S G V)   one layer's run state for the prefill of S
 *                                                  prompts and the decode logits of S x G slots
 *   kv_cache     4 * 2 L (S G) T Hkv D             T = min(T_p + new tokens, max_position)
 *
 * with T_p a bound on a prompt's tokens: for a job, from its datasets' files (the longest
 * record's bytes plus the chat template's tokens, mem_prompt_tokens_of_file), MEM_PROMPT_TOKENS
 * when a file cannot be read; for a rollout request, the text's bytes plus the chat template's
 * tokens (a byte-level BPE token covers at least one byte; a JSON record's bytes cover its
 * text's), and T_e the same bound on an expert record (prompt and response). A job with an eval
 * set adds the sampling and KV cache of one eval chunk (MEM_EVAL_CHUNK prompts x eval.k).
 *
 * Not here: asking a device for its free memory (kernels/ops.h ops_mem_info); reading config.json
 * (server/model/config.h). */
#ifndef CHORD_TRAIN_MEM_ESTIMATE_H
#define CHORD_TRAIN_MEM_ESTIMATE_H

#include <stddef.h>

#include "server/base/err.h"
#include "server/model/config.h"
#include "server/train/jobconfig.h"

#define MEM_PROMPT_TOKENS 2048 /* a job's prompt length bound when its datasets cannot be read */
#define MEM_EVAL_CHUNK 64      /* eval prompts sampled together (trainer_evaluate) */
#define MEM_TEMPLATE_TOKENS 64 /* chat template tokens around a prompt (a default system turn) */
#define MEM_MESSAGE_TOKENS 8   /* and around each message */

typedef enum { MEM_KIND_JOB = 0, MEM_KIND_ROLLOUT, MEM_KIND_WEIGHTS } mem_kind;

/* Bytes (doubles: an absurd config cannot wrap around), and the figures behind them. */
typedef struct mem_estimate {
    mem_kind kind;
    double params;           /* P */
    double weights;          /* 4 P */
    double weights16;        /* 2 P (+ 2 P for the KL's reference): the bf16 copies, counted only
                                against a budget with bf16_weights (mem_estimate_need) */
    double reference;        /* 4 P + activations for a job with grpo.kl_coef > 0 (the frozen
                                reference and its run state), else 0 */
    double optimizer;        /* 12 P for a job (12 P_a with LoRA), else 0; ZeRO-1: 4 P + 8 P / R */
    int zero_ranks;          /* ZeRO-1's ranks (mem_estimate_zero1), else 0 */
    double lora_params;      /* P_a: the adapter's parameters (lora), else 0 */
    double full_optimizer;   /* with LoRA: the 12 P full fine-tuning would need (for the message) */
    double lora_activations; /* with LoRA: the adapter's share of the activations */
    double activations;      /* one training micro-batch, logits chunks included (float32) */
    double act16_saving;     /* what bf16 activations save of it (no LoRA): counted only against
                                a budget with bf16_weights (mem_estimate_need) */
    double sampling;         /* the rollout engines' run state (prefill, decode logits) */
    double kv_cache;         /* the rollout engines' KV caches */
    double eval;             /* the eval chunk's share of sampling + kv_cache */
    double total;
    double tokens;                     /* activations: rows of the largest micro-batch */
    double slots, positions;           /* kv_cache: the rollouts' (a job's, or the request's) */
    double eval_slots, eval_positions; /* and the eval chunk's (a job with an eval set) */
} mem_estimate;

/* What a piece of work may use on one device. */
typedef struct mem_budget {
    char device[32];  /* "cpu", "cuda:0", ... (for the message) */
    double bytes;     /* < 0: unknown (nothing is refused) */
    int limited;      /* 1 when the operator's limit, not the free memory, set bytes */
    int bf16_weights; /* models on the device keep bf16 copies (ops_device_bf16_weights) */
} mem_budget;

/* A training job of cfg on model mc: everything the trainer holds at its peak (an eval step),
 * with prompts of at most prompt_tokens (the training prompts) and eval_prompt_tokens (the eval
 * set) tokens and expert records (prompt and response) of at most expert_tokens:
 * mem_prompt_tokens_of_file of the datasets, or MEM_PROMPT_TOKENS. */
void mem_estimate_job(const model_config *mc, const job_config *cfg, double prompt_tokens,
                      double expert_tokens, double eval_prompt_tokens, mem_estimate *out);
/* A job run with ZeRO-1 over `ranks` ranks (docs/distributed.md): each rank keeps the AdamW
 * moments of 1/ranks of the trainable parameters, so its optimizer share is 4 P (gradients) +
 * 8 ceil(P / ranks) (P_a for P with LoRA). */
void mem_estimate_zero1(mem_estimate *e, int ranks);
/* A bound on the prompt tokens of any record of a JSONL dataset: the largest over its lines of
 * the line's bytes plus the chat template's tokens (MEM_TEMPLATE_TOKENS, and MEM_MESSAGE_TOKENS
 * per "role" key); MEM_PROMPT_TOKENS when path is NULL or cannot be read. */
double mem_prompt_tokens_of_file(const char *path);
/* A rollout request: `prompts` prompts of at most prompt_tokens tokens, n samples each, up to
 * new_tokens new tokens; weights_loaded = 0 when the model is already on the device (a running
 * job's). */
void mem_estimate_rollout(const model_config *mc, double prompts, double n, double prompt_tokens,
                          double new_tokens, int weights_loaded, mem_estimate *out);
/* The weights alone (a model that cannot even be loaded). */
void mem_estimate_weights(const model_config *mc, mem_estimate *out);
/* A bound on the tokens of a prompt of text_bytes bytes in n_messages messages, chat template
 * included. */
double mem_prompt_tokens_bound(double text_bytes, int n_messages);

/* free_bytes < 0 when the device cannot tell; limit_bytes <= 0 for no limit. The budget is the
 * smaller of the two known figures. */
void mem_budget_make(mem_budget *b, const char *device, double free_bytes, double limit_bytes);
/* The bytes e needs on b's device: e->total, plus the bf16 copies where the device keeps them. */
double mem_estimate_need(const mem_estimate *e, const mem_budget *b);
/* 0 when e fits in b (or b is unknown); else CHORD_E_TOO_LARGE with a message naming the total,
 * the budget, the breakdown and the fields to lower, biggest share first. */
int mem_estimate_check(const mem_estimate *e, const mem_budget *b, chord_err *err);

#endif
