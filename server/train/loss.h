/* loss.h — the CHORD loss of one training step, per token, on the host; and GRPO advantages.
 *
 *   L = (1 − μ) · L_GRPO + μ · L_SFT + kl_coef · KL − entropy_coef · H
 *
 * L_GRPO: the PPO-clipped term (dual clip optional) over the step's on-policy tokens; L_SFT:
 * −log p (plain) or −sg(p(1 − p)) · log p (φ) over the step's expert tokens; each aggregated by
 * its own mode (chord_loss_agg; a token-mean by default). KL (k1, k2 or k3 against a reference
 * policy, only when reference log-probs are given; chord_kl_token) and H (per-token entropy) are
 * aggregated over the on-policy tokens like L_GRPO, outside the μ mix as in the reference's
 * separate entropy / KL losses. A stream with no tokens adds 0. Exactly ALGORITHM.md (and the
 * aggregation modes of verl / Trinity-RFT); tested against a PyTorch autograd implementation
 * (tests/reference).
 *
 * A step is usually packed into several micro-batches: the step's token counts (the
 * denominators) are passed up front in chord_loss_params, each micro-batch gets its own
 * per-token gradient, and the sums in chord_loss_accum add up across micro-batches so that
 * chord_loss_finish gives the step's loss and metrics, whatever the split.
 *
 * Not here: log-probs, entropies and their backward through the model (the engine computes
 * them); rewards (reward.h). */
#ifndef CHORD_TRAIN_LOSS_H
#define CHORD_TRAIN_LOSS_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

/* What a token is, per position of a packed micro-batch. */
enum {
    CHORD_TOKEN_IGNORE = 0, /* prompt, padding, anything not trained */
    CHORD_TOKEN_POLICY = 1, /* on-policy response token (GRPO term) */
    CHORD_TOKEN_EXPERT = 2  /* expert response token (SFT term) */
};

/* The per-token KL estimators of π_θ against the reference π_ref at a sampled token, with
 * d = log π_ref − log π_θ (Schulman, "Approximating KL divergence"; verl's kl_penalty names):
 *   k1 = −d                       ("kl": unbiased, high variance, can be negative)
 *   k2 = d² / 2                   ("mse")
 *   k3 = exp(d) − d − 1           ("low_var_kl": unbiased, >= 0; d clamped to ±20, k3 to ±10)
 * chord_kl_token returns the gradient with respect to log π_θ and the value in *kl_t. */
typedef enum chord_kl_estimator {
    CHORD_KL_K3 = 0,
    CHORD_KL_K1 = 1,
    CHORD_KL_K2 = 2
} chord_kl_estimator;
double chord_kl_token(chord_kl_estimator est, double logp, double ref_logp, double *kl_t);

/* How a term's per-token values ℓ_t become the term (verl's / Trinity's loss_agg_mode), over
 * the step's S sequences with tokens of the term's kind, n_s such tokens in sequence s, N in all:
 *   TOKEN_MEAN               Σ_t ℓ_t / N               every token weighs the same: a long
 *                                                      response weighs more (DAPO's choice)
 *   SEQ_MEAN_TOKEN_MEAN      (1/S) Σ_s (Σ_t ℓ_t / n_s)  every sequence weighs the same: a token
 *                                                      of a short response weighs more (GRPO's
 *                                                      paper)
 *   SEQ_MEAN_TOKEN_SUM       (1/S) Σ_s Σ_t ℓ_t          tokens weigh the same within a step, the
 *                                                      scale grows with response length
 *   SEQ_MEAN_TOKEN_SUM_NORM  (1/S) Σ_s Σ_t ℓ_t / M      M a constant (norm_tokens: the job's
 *                                                      max_new_tokens): Dr. GRPO's, no length bias
 * The weight of token t is agg_weight(); the sequence-level modes need the batch's seq_tokens. */
typedef enum chord_loss_agg {
    CHORD_AGG_TOKEN_MEAN = 0,
    CHORD_AGG_SEQ_MEAN_TOKEN_MEAN = 1,
    CHORD_AGG_SEQ_MEAN_TOKEN_SUM = 2,
    CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM = 3
} chord_loss_agg;
/* "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm" */
const char *chord_loss_agg_name(chord_loss_agg a);
int chord_loss_agg_parse(const char *name, chord_loss_agg *out); /* 0, or -1 when unknown */

/* The policy term per on-policy token, r = π_θ / π_old (the rollout's), ε = clip_low/high:
 *   PPO    ℓ = max(−A r, −A clip(r, 1 − ε_low, 1 + ε_high)), dual clip optional (GRPO, DAPO)
 *   CISPO  ℓ = −sg(clip(r, 1 − ε_low, 1 + ε_high)) · A · log π_θ: the clipped ratio only weighs
 *          the REINFORCE gradient, no token's gradient is ever zeroed (MiniMax-M1)
 * and the ratio r per token, or per sequence (GSPO: r_s = exp(mean over the sequence's
 * on-policy tokens of log π_θ − log π_old), the same at each of its tokens). */
typedef enum chord_policy_loss {
    CHORD_POLICY_LOSS_PPO = 0,
    CHORD_POLICY_LOSS_CISPO = 1
} chord_policy_loss;
typedef enum chord_ratio_level {
    CHORD_RATIO_TOKEN = 0,
    CHORD_RATIO_SEQUENCE = 1
} chord_ratio_level;

typedef struct chord_loss_params {
    double mu;           /* SFT weight μ in [0, 1] */
    int phi;             /* 1 = φ-weighted SFT term */
    double clip_low;     /* ε_low */
    double clip_high;    /* ε_high */
    double dual_clip;    /* c > 1, or 0 = off */
    double entropy_coef; /* bonus on the on-policy entropy (0 = off) */
    double kl_coef;      /* KL to the reference policy; has effect only with ref_logp */
    chord_kl_estimator kl_estimator;
    chord_policy_loss policy_loss; /* PPO (default) or CISPO (token ratio, no dual clip) */
    chord_ratio_level ratio_level; /* token (default) or sequence (GSPO) */
    chord_loss_agg grpo_agg;       /* of L_GRPO and the entropy and KL terms */
    chord_loss_agg sft_agg;        /* of L_SFT (not SEQ_MEAN_TOKEN_SUM_NORM) */
    double norm_tokens;            /* M of SEQ_MEAN_TOKEN_SUM_NORM (> 0 when used) */
    /* the step's denominators: every micro-batch of the step together */
    int64_t n_policy_tokens; /* on-policy tokens in the step */
    int64_t n_expert_tokens; /* expert tokens in the step */
    int64_t n_policy_seqs;   /* sequences with on-policy tokens (the sequence-level modes) */
    int64_t n_expert_seqs;   /* sequences with expert tokens */
} chord_loss_params;

/* One micro-batch of N tokens. Arrays are (N); optional ones may be NULL. */
typedef struct chord_loss_batch {
    size_t n;
    const uint8_t *kind;       /* (N) CHORD_TOKEN_* */
    const float *logp;         /* (N) log π_θ(token) of the current policy */
    const float *logp_old;     /* (N) log-prob recorded at rollout (read at POLICY tokens) */
    const float *advantage;    /* (N) GRPO advantage (read at POLICY tokens) */
    const float *entropy;      /* (N) policy entropy at the position, or NULL */
    const float *ref_logp;     /* (N) reference-policy log-prob, or NULL (KL term off) */
    const int32_t *seq_tokens; /* (N) tokens of this token's kind in its sequence (n_s); needed
                                  by the sequence-level modes and ratio, else may be NULL */
    const int32_t *seq;        /* (N) the token's sequence (ids distinct within the micro-batch,
                                  a sequence's tokens contiguous and all in this micro-batch);
                                  needed by the sequence-level ratio, else may be NULL */
} chord_loss_batch;

/* Sums over the micro-batches seen so far (zero it with chord_loss_accum_init). */
typedef struct chord_loss_accum {
    double loss;         /* Σ of each micro-batch's share of L */
    double clipped;      /* on-policy tokens where the clipped branch is active */
    double dual_clipped; /* A < 0 tokens where the dual clip is active */
    double ppo_kl_sum;   /* Σ (logp_old − logp) */
    double ratio_sum;    /* Σ ratio */
    double pg_agg;       /* Σ aggregation weight · ℓ_t over on-policy tokens: L_GRPO */
    double sft_agg;      /* Σ aggregation weight · ℓ_t over expert tokens: L_SFT */
    double nll_sum;      /* Σ −log p over expert tokens (plain, whatever φ) */
    double phi_sum;      /* Σ p(1 − p) over expert tokens */
    double entropy_sum;  /* Σ entropy over on-policy tokens (when given) */
    double kl_sum;       /* Σ KL estimate over on-policy tokens (when ref_logp given) */
    int64_t n_policy;    /* on-policy tokens seen */
    int64_t n_expert;    /* expert tokens seen */
    int64_t n_entropy;   /* on-policy tokens that had an entropy */
    int64_t n_kl;        /* on-policy tokens that had a reference log-prob */
} chord_loss_accum;

typedef struct chord_loss_metrics {
    double loss;
    double pg_loss;           /* L_GRPO (aggregated by its mode) */
    double pg_clipfrac;       /* fraction of on-policy tokens where clipping is active */
    double pg_clipfrac_lower; /* fraction where the dual clip is active */
    double ppo_kl;            /* mean (logp_old − logp) over on-policy tokens */
    double ratio_mean;
    double sft_loss; /* L_SFT, plain or φ-weighted as configured (aggregated by its mode) */
    double sft_nll;  /* mean −log p over expert tokens (plain, for comparison) */
    double phi_mean; /* mean p(1 − p) over expert tokens */
    double entropy;  /* mean entropy over on-policy tokens (0 when none given) */
    double kl;       /* mean KL estimate (0 when no reference) */
    int64_t n_policy_tokens;
    int64_t n_expert_tokens;
} chord_loss_metrics;

/* The parameters a job's step uses: μ of the step (schedule.h), φ, the clip ranges, dual clip
 * (0 = off), the KL and entropy coefficients and the aggregation modes from cfg (M =
 * sampling.max_new_tokens), and the step's token and sequence counts. */
struct job_config;
chord_loss_params chord_loss_params_for_job(const struct job_config *cfg, double mu,
                                            int64_t n_policy_tokens, int64_t n_expert_tokens,
                                            int64_t n_policy_seqs, int64_t n_expert_seqs);

/* Checks the parameters (μ in [0,1], ε ranges, dual clip 0 or > 1, counts >= 0). */
int chord_loss_params_check(const chord_loss_params *p, chord_err *err);

void chord_loss_accum_init(chord_loss_accum *acc);

/* One micro-batch: writes dL/dlogp (N) for every token (0 where ignored) and, when dentropy
 * is not NULL, dL/dentropy (N); adds the micro-batch's share of L and the metric sums to acc.
 * The gradients are of the step's L (the step denominators already applied), so accumulating
 * them over the micro-batches gives the step's gradient. Errors: an unknown kind, a non-finite
 * log-prob at a trained token, more tokens of a kind than the step declared; err names the
 * token index. */
int chord_loss_micro_batch(const chord_loss_params *p, const chord_loss_batch *batch, float *dlogp,
                           float *dentropy, chord_loss_accum *acc, chord_err *err);

/* The step's loss and metrics; fails when the tokens seen differ from the declared counts. */
int chord_loss_finish(const chord_loss_params *p, const chord_loss_accum *acc,
                      chord_loss_metrics *out, chord_err *err);

/* GRPO advantages, outcome level: for each group g of group_sizes[g] consecutive rewards,
 * A_i = (r_i − mean) / (std + 1e-6) with the unbiased std, or A_i = r_i − mean when
 * norm_by_std is 0 (Dr. GRPO); a group of one uses mean 0 and std 1; a group (size >= 2) whose
 * rewards are all equal gets A = 0 and is counted in *zero_adv_groups (may be NULL). rewards and
 * advantages are (Σ group_sizes). */
/* DAPO's soft overlong punishment, added to the reward of a response of len tokens when the
 * limit is max_tokens and the buffer B: 0 up to max_tokens − B, then linear down to −factor at
 * max_tokens, −factor beyond. */
double chord_overlong_penalty(int64_t len, int64_t max_tokens, int64_t buffer, double factor);

int chord_grpo_advantages(const float *rewards, const int *group_sizes, size_t n_groups,
                          int norm_by_std, float *advantages, int64_t *zero_adv_groups,
                          chord_err *err);

#endif
