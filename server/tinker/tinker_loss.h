/* tinker_loss.h — the losses of the Tinker-compatible forward_backward (docs/tinker.md), per
 * datum, on the host, as functions of the model's log-probs of the target tokens.
 *
 * Notation per position t of a datum: lp_t = log p_θ(target_t | prefix) (the model's, what the
 * answer returns as "logprobs"), q_t = the "logprobs" input (the sampler's), A_t = "advantages",
 * w_t = "weights". Every loss is a SUM over positions and datums, never a mean (the client
 * normalises through weights and advantages), and minimised:
 *
 *   cross_entropy        ℓ_t = −w_t lp_t
 *   importance_sampling  ℓ_t = −exp(lp_t − q_t) A_t
 *   ppo                  ℓ_t = −min(r_t A_t, clip(r_t, lo, hi) A_t),  r_t = exp(lp_t − q_t),
 *                        lo = clip_low_threshold (0.8), hi = clip_high_threshold (1.2): ratio
 *                        bounds, not epsilons
 *   cispo                ℓ_t = −sg(clip(r_t, lo, hi)) A_t lp_t
 *   chord                CHORD as one primitive over a mixed batch: a datum with "advantages"
 *                        is on-policy, ℓ_t = (1 − μ) × the ppo term; a datum without is an expert
 *                        demonstration, ℓ_t = μ × w_t × (−lp_t), or with φ (phi = 1)
 *                        μ × w_t × (−sg(p_t (1 − p_t)) lp_t), p_t = exp(lp_t). Config: mu
 *                        (required, [0, 1]), phi (0 or 1, default 0), clip_low_threshold,
 *                        clip_high_threshold.
 *
 * Where the server's own per-token functions exist (server/train/loss.h: the clipped policy
 * terms, φ) these use them: one implementation of each formula. As there, the ratio is
 * r_t = exp(clamp(lp_t − q_t, −20, 20)) (the same as Tinker's wherever the loss is finite).
 *
 * Inputs: "weights" may be absent (cross_entropy, chord's expert datums): every weight is then 1,
 * so forward() on bare target_tokens gives the plain NLL; weights are real-valued (negative ones
 * too: forward_backward_custom sends −dC/dlp). A position with w_t = 0, or with A_t = 0 (the
 * cookbook's prompt positions, whose q_t is 0), contributes nothing and is not counted in the
 * stats. On-policy datums ignore "weights". 2-D (multi-target) target_tokens and per-position
 * clip thresholds are refused; inputs no loss reads ("mask", ...) are ignored.
 *
 * Not here: log-probs and the backward through the model (the service runs the engine), the
 * wire format (api/tinker/tinker_pb.h). */
#ifndef CHORD_TINKER_LOSS_H
#define CHORD_TINKER_LOSS_H

#include <stddef.h>

#include "server/base/err.h"
#include "server/tinker/tinker_types.h"

typedef enum tk_loss_kind {
    TK_LOSS_CROSS_ENTROPY = 0,
    TK_LOSS_IMPORTANCE_SAMPLING,
    TK_LOSS_PPO,
    TK_LOSS_CISPO,
    TK_LOSS_CHORD
} tk_loss_kind;

typedef struct tk_loss_config {
    tk_loss_kind kind;
    double clip_low, clip_high; /* ratio bounds (ppo, cispo, chord) */
    double mu;                  /* chord */
    int phi;                    /* chord: 1 = φ-weighted SFT term */
} tk_loss_config;

/* The loss named `name` with its config (keys the loss does not take, values out of range, a
 * text where a number goes: refused naming the key; an unknown loss: refused listing the
 * known ones, code CHORD_E_INVALID). */
int tk_loss_parse(const char *name, const tk_config_value *config, int n_config,
                  tk_loss_config *out, chord_err *err);

/* Sums over a request's datums, for its metrics. */
typedef struct tk_loss_stats {
    double loss_sum;      /* Σ ℓ_t */
    double parity_max;    /* max |lp_t − q_t| over positions with a "logprobs" input and
                             A_t ≠ 0 (the sampler-trainer parity figure), 0 when none */
    double clipfrac_num;  /* positions whose clip was active (ppo, chord: the clipped branch
                             is the smaller; cispo: clip(r_t) ≠ r_t) */
    double policy_tokens; /* positions with advantages, A_t ≠ 0 */
    double expert_tokens; /* chord: positions of expert datums with non-zero weight */
} tk_loss_stats;

/* Checks datum d's inputs against the loss before any compute: target_tokens (int64, one per
 * model-input position, each in [0, vocab)), and what the loss needs (weights, logprobs,
 * advantages: float32 of the same length; NaN or infinity refused). Errors name the datum
 * index and the input: "data[3].loss_fn_inputs.advantages: 7 values for 8 positions". */
int tk_loss_check(const tk_loss_config *c, const tk_datum *d, size_t index, int vocab_size,
                  chord_err *err);

/* One datum of length n: its loss terms ℓ_t into elementwise[n] (may be NULL), the gradient
 * dℓ/dlp_t into dlp[n] (may be NULL: forward only), and the sums into *st (added). lp[n] are
 * the model's log-probs of the datum's target tokens. */
void tk_loss_datum(const tk_loss_config *c, const tk_datum *d, const float *lp, size_t n,
                   float *elementwise, float *dlp, tk_loss_stats *st);

/* The metrics a forward_backward answers ("loss:sum" always; "parity_max:max" when any position
 * had sampler log-probs and an advantage; "clipfrac:mean" (ppo, cispo, chord, over the policy
 * positions, when there are any), "policy_tokens:sum" (all but cross_entropy),
 * "expert_tokens:sum" (chord)), appended to o (keys and values malloc'd). 0, or -1 out of
 * memory. */
int tk_loss_metrics(const tk_loss_config *c, const tk_loss_stats *st, tk_fb_output *o,
                    chord_err *err);

#endif
