/* jobconfig.h — the job document (DESIGN.md, docs/job.md) parsed into one struct.
 *
 * One contract for REST, gRPC and `chordd train`: the JSON document is parsed with jansson,
 * every omitted field takes ALGORITHM.md's default for the chosen preset, and every error names
 * the field by its JSON path ("grpo.clip_low: must be in [0, 1)", "unknown field
 * \"grpo.clipp_low\""). jobconfig_to_json writes the fully resolved document back, which parses
 * to the same struct.
 *
 * Not here: the reward object is kept as JSON and parsed by reward.h (jobconfig_parse checks it
 * once through reward_verifier_new, so a bad reward fails at submission); model.init.config is kept
 * as JSON and parsed by server/model/config.h; dataset ids are not resolved (the service does
 * that); nothing here touches a model or a file other than the document itself. */
#ifndef CHORD_TRAIN_JOBCONFIG_H
#define CHORD_TRAIN_JOBCONFIG_H

#include <jansson.h>
#include <stdint.h>

#include "server/base/err.h"

typedef enum {
    JOB_ALGO_SFT = 0,
    JOB_ALGO_GRPO,
    JOB_ALGO_SFT_THEN_GRPO,
    JOB_ALGO_CHORD_MU,
    JOB_ALGO_CHORD_PHI,
    JOB_ALGO_CHORD,
    JOB_ALGO_COUNT
} job_algorithm;

/* How μ is chosen at each step. The first three are fixed by the sft / grpo / sft_then_grpo
 * presets; the chord presets use a schedule or the reward-adaptive rule. */
typedef enum {
    JOB_MU_SFT = 0,       /* μ ≡ 1 */
    JOB_MU_GRPO,          /* μ ≡ 0 */
    JOB_MU_SFT_THEN_GRPO, /* μ = 1 for s <= sft_steps, then 0 */
    JOB_MU_SCHEDULE,      /* warmup to peak, cosine decay to valley (ALGORITHM.md) */
    JOB_MU_ADAPTIVE       /* μ = max(0, tau - mean reward of the step) */
} job_mu_kind;

typedef enum { JOB_LR_CONSTANT = 0, JOB_LR_LINEAR, JOB_LR_COSINE } job_lr_schedule;

typedef struct job_mu {
    job_mu_kind kind;
    int64_t warmup_steps; /* W (JOB_MU_SCHEDULE) */
    int64_t decay_steps;  /* D */
    double peak;          /* μ_p */
    double valley;        /* μ_v */
    double tau;           /* JOB_MU_ADAPTIVE */
} job_mu;

typedef struct job_grpo {
    int64_t group_size;       /* G */
    int64_t prompts_per_step; /* B */
    double clip_low;          /* ε_low, in [0, 1) */
    double clip_high;         /* ε_high, >= 0 */
    double dual_clip;         /* c > 1, or 0 when off (JSON null) */
    double kl_coef;           /* weight of the KL to the reference policy (0 = no reference) */
    int kl_estimator;         /* chord_kl_estimator (loss.h): k3 (0, default), k1, k2 */
    int kl_in_reward;         /* 1 = KL as a reward penalty, not a loss term */
    int loss_agg_mode;        /* chord_loss_agg (loss.h) of L_GRPO: token-mean (0, default) */
    int norm_adv_by_std; /* 1 (default): A = (r − mean) / std; 0: A = r − mean (Dr. GRPO) */
    int policy_loss;     /* chord_policy_loss (loss.h): ppo (0, default) or cispo */
    int ratio_level;     /* chord_ratio_level (loss.h): token (0, default) or sequence */
    int64_t ppo_epochs;  /* optimizer updates per step over the same batch (>= 1; default 1) */
    int filter_groups;   /* 1 = DAPO's dynamic sampling: drop all-equal groups, draw more */
    int64_t max_sample_batches; /* with filter_groups: batches of B prompts drawn at most a step */
    int share_prompt; /* 1 = a group's prompt runs once in the training forward/backward */
    double entropy_coef;
} job_grpo;

/* sampling.overlong: what a response that ran to max_new_tokens (or near it) gets */
typedef enum { JOB_OVERLONG_NONE = 0, JOB_OVERLONG_MASK, JOB_OVERLONG_PENALTY } job_overlong_mode;

typedef struct job_sampling {
    double temperature; /* > 0 */
    double top_p;       /* (0, 1] */
    int64_t max_new_tokens;
    job_overlong_mode overlong; /* none (default), mask, penalty */
    int64_t overlong_buffer;    /* penalty: L_cache, in [1, max_new_tokens] */
    double overlong_penalty;    /* penalty: the factor at max_new_tokens (> 0, default 1) */
} job_sampling;

typedef struct job_optimizer {
    double lr;
    job_lr_schedule schedule;
    int64_t warmup_steps;
    double weight_decay;
    double beta1, beta2;
    double eps;
    double grad_clip;    /* global-norm clip; 0 = off */
    double min_lr_ratio; /* floor of linear / cosine decay, as a fraction of lr */
} job_optimizer;

typedef struct job_eval {
    int64_t every; /* steps between evaluations; 0 = never during training */
    int64_t k;     /* samples per eval prompt (avg@k, pass@k) */
    double temperature;
    int64_t max_new_tokens;
} job_eval;

/* lora: a LoRA adapter trains instead of the whole model (model.h "LoRA"); rank 0 = none */
typedef struct job_lora {
    int64_t rank;     /* 1..1024 */
    double alpha;     /* > 0 (PEFT's default 8); the adapter's scale is alpha / rank */
    double dropout;   /* [0, 1): PEFT's lora_dropout on the adapter's input while training */
    unsigned targets; /* bit (1u << model_lora_target) per adapted projection */
    int train_embeddings; /* 1: embed_tokens (and an untied lm_head) train too (model.h) */
} job_lora;

typedef struct job_config {
    char *name;
    /* model: exactly one of path / init_config */
    char *model_path;          /* a directory under --models-root (or a path for chordd train) */
    json_t *model_init_config; /* the Hugging Face config.json fields (owned reference) */
    uint64_t model_init_seed;
    char *model_init_tokenizer; /* tokenizer directory or tokenizer.json; NULL = not given */
    /* data: dataset ids or JSONL paths; NULL when absent */
    char *data_prompts;
    char *data_expert;
    char *data_eval;
    job_algorithm algorithm;
    job_mu mu;
    int phi;               /* 1 = φ-weighted SFT term (CHORD-φ) */
    int sft_loss_agg_mode; /* chord_loss_agg (loss.h) of L_SFT: token-mean (0, default) */
    int64_t sft_steps;     /* sft_then_grpo only */
    job_grpo grpo;
    int64_t expert_per_step;
    job_sampling sampling;
    job_optimizer optimizer;
    int64_t micro_batch_tokens;
    job_lora lora;
    json_t *reward; /* the "reward" object as given (owned reference); parsed by reward.h */
    int64_t steps;
    uint64_t seed;
    int64_t checkpoint_every; /* 0 = only at the end */
    int64_t keep_checkpoints; /* 0 = keep all */
    job_eval eval;
    char *device; /* "auto", "cpu", "cuda" or "cuda:N[,N...]" */
} job_config;

/* Parses a job document (JSON text). On failure cfg is left empty (nothing to free) and err
 * names the field; JSON syntax errors name the line and column. */
int jobconfig_parse(const char *json_text, job_config *cfg, chord_err *err);
/* Same from a parsed document (not modified, no reference taken). */
int jobconfig_from_json(const json_t *doc, job_config *cfg, chord_err *err);
/* Reads and parses a job file; errors are prefixed with the path. */
int jobconfig_load(const char *path, job_config *cfg, chord_err *err);
/* The fully resolved document (every default filled in); a new reference, NULL on OOM. */
json_t *jobconfig_to_json(const job_config *cfg);
/* Releases what cfg owns and zeroes it; safe on a zeroed or already freed struct. */
void jobconfig_free(job_config *cfg);

/* "sft", "grpo", ... */
const char *jobconfig_algorithm_name(job_algorithm algorithm);
/* Parses an algorithm name; -1 when unknown. */
int jobconfig_algorithm_from_name(const char *name, job_algorithm *algorithm);
const char *jobconfig_lr_schedule_name(job_lr_schedule schedule);
/* 1 when the algorithm samples rollouts (uses prompts and the GRPO term). */
int jobconfig_uses_rollouts(job_algorithm algorithm);
/* 1 when the algorithm trains on expert demonstrations (the SFT term). */
int jobconfig_uses_expert(job_algorithm algorithm);

#endif
