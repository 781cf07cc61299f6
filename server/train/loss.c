/* loss.c — the CHORD loss per token, forward and gradient together (see loss.h).
 *
 * Everything is computed in double from the fp32 inputs; gradients are written as fp32.
 * Gradient rule: dlogp and dentropy are overwritten for every token of the micro-batch (the
 * engine accumulates them into the model's parameter gradients). Where the forward takes a max or
 * min of two equal branches, the gradient is split half and half, the way autograd does it, so
 * the reference test can compare every token. */
#include "server/train/loss.h"

#include <math.h>
#include <string.h>

#include "server/train/jobconfig.h"

static const char *const agg_names[] = {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                        "seq-mean-token-sum-norm"};

const char *chord_loss_agg_name(chord_loss_agg a) {
    return (unsigned)a < sizeof agg_names / sizeof agg_names[0] ? agg_names[a] : "?";
}

int chord_loss_agg_parse(const char *name, chord_loss_agg *out) {
    for (size_t i = 0; name && i < sizeof agg_names / sizeof agg_names[0]; i++)
        if (!strcmp(name, agg_names[i])) {
            *out = (chord_loss_agg)i;
            return 0;
        }
    return -1;
}

chord_loss_params chord_loss_params_for_job(const struct job_config *cfg, double mu,
                                            int64_t n_policy_tokens, int64_t n_expert_tokens,
                                            int64_t n_policy_seqs, int64_t n_expert_seqs) {
    return (chord_loss_params){.mu = mu,
                               .phi = cfg->phi,
                               .clip_low = cfg->grpo.clip_low,
                               .clip_high = cfg->grpo.clip_high,
                               .dual_clip = cfg->grpo.dual_clip,
                               .entropy_coef = cfg->grpo.entropy_coef,
                               .kl_coef = cfg->grpo.kl_coef,
                               .kl_estimator = (chord_kl_estimator)cfg->grpo.kl_estimator,
                               .grpo_agg = (chord_loss_agg)cfg->grpo.loss_agg_mode,
                               .sft_agg = (chord_loss_agg)cfg->sft_loss_agg_mode,
                               .norm_tokens = (double)cfg->sampling.max_new_tokens,
                               .n_policy_tokens = n_policy_tokens,
                               .n_expert_tokens = n_expert_tokens,
                               .policy_loss = (chord_policy_loss)cfg->grpo.policy_loss,
                               .ratio_level = (chord_ratio_level)cfg->grpo.ratio_level,
                               .n_policy_seqs = n_policy_seqs,
                               .n_expert_seqs = n_expert_seqs};
}

int chord_loss_params_check(const chord_loss_params *p, chord_err *err) {
    if (!(p->mu >= 0.0 && p->mu <= 1.0)) return chord_err_set(err, "loss: mu must be in [0, 1]");
    if (!(p->clip_low >= 0.0 && p->clip_low < 1.0))
        return chord_err_set(err, "loss: clip_low must be in [0, 1)");
    if (!(p->clip_high >= 0.0 && isfinite(p->clip_high)))
        return chord_err_set(err, "loss: clip_high must be >= 0");
    if (!(p->dual_clip == 0.0 || (p->dual_clip > 1.0 && isfinite(p->dual_clip))))
        return chord_err_set(err, "loss: dual_clip must be 0 (off) or > 1");
    if (!(p->entropy_coef >= 0.0 && isfinite(p->entropy_coef)))
        return chord_err_set(err, "loss: entropy_coef must be >= 0");
    if (!(p->kl_coef >= 0.0 && isfinite(p->kl_coef)))
        return chord_err_set(err, "loss: kl_coef must be >= 0");
    if (p->n_policy_tokens < 0 || p->n_expert_tokens < 0 || p->n_policy_seqs < 0 ||
        p->n_expert_seqs < 0)
        return chord_err_set(err, "loss: token and sequence counts must be >= 0");
    if ((unsigned)p->grpo_agg > CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM ||
        (unsigned)p->sft_agg > CHORD_AGG_SEQ_MEAN_TOKEN_SUM)
        return chord_err_set(err, "loss: unknown aggregation mode");
    if (p->grpo_agg == CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM && !(p->norm_tokens > 0.0))
        return chord_err_set(err, "loss: seq-mean-token-sum-norm needs norm_tokens > 0");
    if ((unsigned)p->policy_loss > CHORD_POLICY_LOSS_CISPO ||
        (unsigned)p->ratio_level > CHORD_RATIO_SEQUENCE)
        return chord_err_set(err, "loss: unknown policy loss or ratio level");
    if (p->policy_loss == CHORD_POLICY_LOSS_CISPO &&
        (p->ratio_level != CHORD_RATIO_TOKEN || p->dual_clip > 0.0))
        return chord_err_set(err, "loss: cispo takes a token-level ratio and no dual clip");
    return 0;
}

/* GSPO's sequence ratio at token t (the first of its sequence's on-policy tokens, which must
 * all be in this micro-batch, contiguous with the same seq id): the mean over them of
 * logp − logp_old. */
static int sequence_log_ratio(const chord_loss_batch *b, size_t t, double *out, chord_err *err) {
    double sum = 0.0;
    int32_t n = 0;
    for (size_t u = t; u < b->n && b->seq[u] == b->seq[t]; u++)
        if (b->kind[u] == CHORD_TOKEN_POLICY) {
            sum += (double)b->logp[u] - (double)b->logp_old[u];
            n++;
        }
    if (n != b->seq_tokens[t])
        return chord_err_set(err,
                             "loss: token %zu: a sequence-level ratio needs all %d on-policy "
                             "tokens of the sequence in one micro-batch (found %d)",
                             t, (int)b->seq_tokens[t], (int)n);
    *out = sum / n;
    return 0;
}

void chord_loss_accum_init(chord_loss_accum *acc) {
    memset(acc, 0, sizeof *acc);
}

static double clampd(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

/* d/dx clamp(x, lo, hi) as autograd has it: 1 inside the closed interval, else 0. */
static double clamp_grad(double x, double lo, double hi) {
    return (x >= lo && x <= hi) ? 1.0 : 0.0;
}

/* The share of the gradient max(a, b) passes to a (1, 0 or ½ on a tie). */
static double max_share_a(double a, double b) {
    return a > b ? 1.0 : (a == b ? 0.5 : 0.0);
}

/* On-policy token: adds ℓ_t to acc's sums, returns dℓ_t/dlogp. log_ratio is the token's
 * logp − logp_old, or (sequence-level ratio, GSPO) its sequence's mean of them: ℓ is then the
 * same at every token of the sequence and depends on each token's logp through the mean, with
 * d mean / d logp_t = 1/n_s — summed over the sequence's n_s equally weighted tokens that is the
 * same expression as the token-level gradient, so one formula serves both. */
static double policy_token(const chord_loss_params *p, double logp, double logp_old,
                           double log_ratio, double adv, double *loss_t, chord_loss_accum *acc) {
    double ratio = exp(clampd(log_ratio, -20.0, 20.0));
    double dratio_dlogp = ratio * clamp_grad(log_ratio, -20.0, 20.0);
    double lo = 1.0 - p->clip_low, hi = 1.0 + p->clip_high;
    acc->ppo_kl_sum += logp_old - logp;
    acc->ratio_sum += ratio;
    if (p->policy_loss == CHORD_POLICY_LOSS_CISPO) {
        /* ℓ = −sg(clip(ratio)) · A · logp: the clipped ratio weighs the REINFORCE term and
         * never zeroes a token's gradient */
        double w = clampd(ratio, lo, hi);
        if (w != ratio) acc->clipped += 1.0;
        *loss_t = -w * adv * logp;
        return -w * adv;
    }
    double unclipped = -adv * ratio;
    double clipped = -adv * clampd(ratio, lo, hi);
    double share = max_share_a(unclipped, clipped);
    double loss = share == 1.0 ? unclipped : clipped;
    /* d/dratio of each branch: −A, and −A inside the clip range (0 outside) */
    double dloss_dratio = share * -adv + (1.0 - share) * -adv * clamp_grad(ratio, lo, hi);
    if (clipped > unclipped) acc->clipped += 1.0;
    if (p->dual_clip > 0.0 && adv < 0.0) {
        double bound = -adv * p->dual_clip;
        /* min(loss, bound) = −max(−loss, −bound): the share that stays with loss */
        double keep = max_share_a(-loss, -bound);
        if (bound < loss) acc->dual_clipped += 1.0;
        loss = keep == 1.0 ? loss : bound;
        dloss_dratio *= keep;
    }
    *loss_t = loss;
    return dloss_dratio * dratio_dlogp;
}

double chord_kl_token(chord_kl_estimator est, double logp, double ref_logp, double *kl_t) {
    double diff = ref_logp - logp; /* d; d d / d logp = −1 */
    switch (est) {
    case CHORD_KL_K1:
        *kl_t = -diff;
        return 1.0;
    case CHORD_KL_K2:
        *kl_t = 0.5 * diff * diff;
        return -diff;
    case CHORD_KL_K3:
    default: {
        double dc = clampd(diff, -20.0, 20.0);
        double r = exp(dc);
        double k3 = r - dc - 1.0;
        *kl_t = clampd(k3, -10.0, 10.0);
        /* d k3 / d diff = r − 1 (inside both clamps) */
        return -(r - 1.0) * clamp_grad(diff, -20.0, 20.0) * clamp_grad(k3, -10.0, 10.0);
    }
    }
}

/* The aggregation weight of one token of a term (loss.h, chord_loss_agg): n_tok and n_seq are
 * the step's tokens and sequences of the term's kind, seq_tok its own sequence's tokens. */
static double agg_weight(chord_loss_agg mode, int64_t n_tok, int64_t n_seq, int32_t seq_tok,
                         double norm_tokens) {
    switch (mode) {
    case CHORD_AGG_SEQ_MEAN_TOKEN_MEAN:
        return 1.0 / ((double)n_seq * (double)seq_tok);
    case CHORD_AGG_SEQ_MEAN_TOKEN_SUM:
        return 1.0 / (double)n_seq;
    case CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM:
        return 1.0 / ((double)n_seq * norm_tokens);
    case CHORD_AGG_TOKEN_MEAN:
    default:
        return 1.0 / (double)n_tok;
    }
}

int chord_loss_micro_batch(const chord_loss_params *p, const chord_loss_batch *batch, float *dlogp,
                           float *dentropy, chord_loss_accum *acc, chord_err *err) {
    if (chord_loss_params_check(p, err)) return -1;
    if (batch->n && (!batch->kind || !batch->logp || !dlogp))
        return chord_err_set(err, "loss: kind, logp and dlogp are required");
    if (p->entropy_coef > 0.0 && !batch->entropy)
        return chord_err_set(err, "loss: entropy_coef > 0 needs per-token entropy");
    int seq_modes = p->grpo_agg != CHORD_AGG_TOKEN_MEAN || p->sft_agg != CHORD_AGG_TOKEN_MEAN ||
                    p->ratio_level == CHORD_RATIO_SEQUENCE;
    if (batch->n && seq_modes && !batch->seq_tokens)
        return chord_err_set(err, "loss: a sequence-level aggregation or ratio needs seq_tokens");
    if (batch->n && p->ratio_level == CHORD_RATIO_SEQUENCE && !batch->seq)
        return chord_err_set(err, "loss: a sequence-level ratio needs seq");
    double seq_log_ratio = 0.0; /* of the sequence the current on-policy token belongs to */
    int have_seq = 0;
    int32_t seq_id = 0;
    chord_loss_accum sum = *acc; /* committed only on success */
    double loss = 0.0;
    for (size_t t = 0; t < batch->n; t++) {
        double grad = 0.0, grad_entropy = 0.0;
        int kind = batch->kind[t];
        double logp = batch->logp[t];
        if (kind != CHORD_TOKEN_IGNORE && !isfinite(logp))
            return chord_err_set(err, "loss: token %zu: logp is not finite", t);
        int32_t seq_tok = batch->seq_tokens ? batch->seq_tokens[t] : 1;
        if (kind != CHORD_TOKEN_IGNORE && seq_modes && seq_tok < 1)
            return chord_err_set(err, "loss: token %zu: seq_tokens must be >= 1", t);
        if (kind == CHORD_TOKEN_POLICY) {
            if (!batch->logp_old || !batch->advantage)
                return chord_err_set(err, "loss: on-policy tokens need logp_old and advantage");
            double logp_old = batch->logp_old[t], adv = batch->advantage[t];
            if (!isfinite(logp_old) || !isfinite(adv))
                return chord_err_set(err, "loss: token %zu: logp_old or advantage is not finite",
                                     t);
            if (++sum.n_policy > p->n_policy_tokens)
                return chord_err_set(err,
                                     "loss: token %zu: more on-policy tokens than the step's "
                                     "n_policy_tokens (%lld)",
                                     t, (long long)p->n_policy_tokens);
            /* a: the token's aggregation weight; the term enters L with (1 − μ) */
            double a = agg_weight(p->grpo_agg, p->n_policy_tokens, p->n_policy_seqs, seq_tok,
                                  p->norm_tokens);
            double w_pg = (1.0 - p->mu) * a, loss_t, log_ratio = logp - logp_old;
            if (p->ratio_level == CHORD_RATIO_SEQUENCE) {
                if (!have_seq || seq_id != batch->seq[t]) { /* the sequence's first token */
                    if (sequence_log_ratio(batch, t, &seq_log_ratio, err) != 0) return -1;
                    have_seq = 1;
                    seq_id = batch->seq[t];
                }
                log_ratio = seq_log_ratio;
            }
            grad = w_pg * policy_token(p, logp, logp_old, log_ratio, adv, &loss_t, &sum);
            loss += w_pg * loss_t;
            sum.pg_agg += a * loss_t;
            if (batch->entropy) {
                double h = batch->entropy[t];
                if (!isfinite(h))
                    return chord_err_set(err, "loss: token %zu: entropy is not finite", t);
                sum.entropy_sum += h;
                sum.n_entropy++;
                loss -= p->entropy_coef * a * h;
                grad_entropy = -p->entropy_coef * a;
            }
            if (batch->ref_logp) {
                double ref = batch->ref_logp[t];
                if (!isfinite(ref))
                    return chord_err_set(err, "loss: token %zu: ref_logp is not finite", t);
                double kl_t;
                double dkl = chord_kl_token(p->kl_estimator, logp, ref, &kl_t);
                sum.kl_sum += kl_t;
                sum.n_kl++;
                loss += p->kl_coef * a * kl_t;
                grad += p->kl_coef * a * dkl;
            }
        } else if (kind == CHORD_TOKEN_EXPERT) {
            if (++sum.n_expert > p->n_expert_tokens)
                return chord_err_set(err,
                                     "loss: token %zu: more expert tokens than the step's "
                                     "n_expert_tokens (%lld)",
                                     t, (long long)p->n_expert_tokens);
            double prob = exp(logp);
            double phi = prob * (1.0 - prob);
            double weight = p->phi ? phi : 1.0; /* sg(φ): a constant in the backward */
            double loss_t = -weight * logp;
            double a = agg_weight(p->sft_agg, p->n_expert_tokens, p->n_expert_seqs, seq_tok, 0.0);
            double w_sft = p->mu * a;
            sum.sft_agg += a * loss_t;
            sum.nll_sum += -logp;
            sum.phi_sum += phi;
            loss += w_sft * loss_t;
            grad = -w_sft * weight;
        } else if (kind != CHORD_TOKEN_IGNORE) {
            return chord_err_set(err, "loss: token %zu: kind %d is not 0, 1 or 2", t, kind);
        }
        dlogp[t] = (float)grad;
        if (dentropy) dentropy[t] = (float)grad_entropy;
    }
    sum.loss += loss;
    *acc = sum;
    return 0;
}

static double mean_of(double total, int64_t n) {
    return n > 0 ? total / (double)n : 0.0;
}

int chord_loss_finish(const chord_loss_params *p, const chord_loss_accum *acc,
                      chord_loss_metrics *out, chord_err *err) {
    if (acc->n_policy != p->n_policy_tokens || acc->n_expert != p->n_expert_tokens)
        return chord_err_set(err,
                             "loss: the step declared %lld on-policy and %lld expert tokens but "
                             "the micro-batches held %lld and %lld",
                             (long long)p->n_policy_tokens, (long long)p->n_expert_tokens,
                             (long long)acc->n_policy, (long long)acc->n_expert);
    memset(out, 0, sizeof *out);
    out->loss = acc->loss;
    out->pg_loss = acc->pg_agg;
    out->pg_clipfrac = mean_of(acc->clipped, acc->n_policy);
    out->pg_clipfrac_lower = mean_of(acc->dual_clipped, acc->n_policy);
    out->ppo_kl = mean_of(acc->ppo_kl_sum, acc->n_policy);
    out->ratio_mean = mean_of(acc->ratio_sum, acc->n_policy);
    out->sft_loss = acc->sft_agg;
    out->sft_nll = mean_of(acc->nll_sum, acc->n_expert);
    out->phi_mean = mean_of(acc->phi_sum, acc->n_expert);
    out->entropy = mean_of(acc->entropy_sum, acc->n_entropy);
    out->kl = mean_of(acc->kl_sum, acc->n_kl);
    out->n_policy_tokens = acc->n_policy;
    out->n_expert_tokens = acc->n_expert;
    return 0;
}

double chord_overlong_penalty(int64_t len, int64_t max_tokens, int64_t buffer, double factor) {
    int64_t start = max_tokens - buffer;
    if (len <= start || buffer <= 0) return 0.0;
    if (len > max_tokens) return -factor;
    return factor * (double)(start - len) / (double)buffer;
}

int chord_grpo_advantages(const float *rewards, const int *group_sizes, size_t n_groups,
                          int norm_by_std, float *advantages, int64_t *zero_adv_groups,
                          chord_err *err) {
    int64_t zero = 0;
    size_t offset = 0;
    for (size_t g = 0; g < n_groups; g++) {
        int n = group_sizes[g];
        if (n < 1) return chord_err_set(err, "advantages: group %zu is empty", g);
        const float *r = rewards + offset;
        for (int i = 0; i < n; i++)
            if (!isfinite(r[i]))
                return chord_err_set(err, "advantages: reward %zu is not finite", offset + i);
        double mean = 0.0, std = 1.0;
        int all_equal = 1;
        for (int i = 1; i < n; i++)
            all_equal &= r[i] == r[0];
        if (n >= 2) {
            for (int i = 0; i < n; i++)
                mean += r[i];
            mean /= n;
            double ss = 0.0;
            for (int i = 0; i < n; i++)
                ss += (r[i] - mean) * (r[i] - mean);
            std = norm_by_std ? sqrt(ss / (n - 1)) : 1.0;
        }
        for (int i = 0; i < n; i++)
            advantages[offset + i] =
                (n >= 2 && all_equal)
                    ? 0.0f
                    : (float)(norm_by_std ? (r[i] - mean) / (std + 1e-6) : r[i] - mean);
        if (n >= 2 && all_equal) zero++;
        offset += (size_t)n;
    }
    if (zero_adv_groups) *zero_adv_groups = zero;
    return 0;
}
