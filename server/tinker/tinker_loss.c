/* tinker_loss.c — the Tinker losses per datum (see tinker_loss.h): parsing the loss and its
 * config, checking a datum's inputs, the per-position terms and gradients, the metrics.
 *
 * One home per formula: the clipped policy terms (ppo, cispo, chord's on-policy part) and the SFT
 * term (cross_entropy, chord's expert part, plain or φ) are server/train/loss.c's, run on a
 * micro-batch of one token whose aggregation weight is 1 (token-mean over one token), so its
 * ℓ_t and dℓ_t/dlp are exactly the per-token term; the Tinker specifics are mapped onto it:
 * ratio bounds lo/hi become ε_low = 1 − lo, ε_high = hi − 1, and the real-valued weight w_t
 * multiplies the SFT term (both ℓ and its gradient are linear in it). Only importance_sampling,
 * an unclipped ratio that loss.c has no setting for (ε_high = ∞), is written here, with loss.c's
 * ratio: exp of the log-ratio clamped to ±20 (ALGORITHM.md). Sums, not means: the client
 * normalises.
 *
 * Positions that cannot contribute are skipped (ℓ_t = 0, gradient 0, not counted): a zero
 * advantage (Tinker's prompt positions: A = 0 and a sampler log-prob of 0) and a zero weight.
 *
 * Not here: the model's log-probs and the backward through it (the service), the wire format. */
#include "server/tinker/tinker_loss.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/train/loss.h"

#define TK_LOSS_NAMES "cross_entropy, importance_sampling, ppo, cispo, chord"

static const char *const loss_names[] = {"cross_entropy", "importance_sampling", "ppo", "cispo",
                                         "chord"};

/* The config keys each loss takes (NULL-terminated). */
static const char *const keys_none[] = {NULL};
static const char *const keys_clip[] = {"clip_low_threshold", "clip_high_threshold", NULL};
static const char *const keys_chord[] = {"mu", "phi", "clip_low_threshold", "clip_high_threshold",
                                         NULL};
static const char *const *const loss_keys[] = {keys_none, keys_none, keys_clip, keys_clip,
                                               keys_chord};

static int key_allowed(tk_loss_kind kind, const char *key) {
    for (const char *const *k = loss_keys[kind]; *k; k++)
        if (!strcmp(*k, key)) return 1;
    return 0;
}

int tk_loss_parse(const char *name, const tk_config_value *config, int n_config,
                  tk_loss_config *out, chord_err *err) {
    int kind = -1;
    for (int i = 0; name && i < (int)(sizeof loss_names / sizeof loss_names[0]); i++)
        if (!strcmp(name, loss_names[i])) kind = i;
    if (kind < 0)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "loss_fn: \"%s\" is not supported; chord runs " TK_LOSS_NAMES,
                              name ? name : "");
    tk_loss_config c = {.kind = (tk_loss_kind)kind, .clip_low = 0.8, .clip_high = 1.2};
    int have_mu = 0;
    for (int i = 0; i < n_config; i++) {
        const tk_config_value *v = &config[i];
        const char *key = v->key ? v->key : "";
        if (!key_allowed(c.kind, key)) {
            char known[128] = "";
            for (const char *const *k = loss_keys[kind]; *k; k++)
                snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s",
                         k == loss_keys[kind] ? "" : ", ", *k);
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "loss_fn_config.%s: %s takes no such key (%s%s)", key, name,
                                  known[0] ? "it takes " : "it takes no config", known);
        }
        for (int j = 0; j < i; j++)
            if (config[j].key && !strcmp(config[j].key, key))
                return chord_err_setc(err, CHORD_E_INVALID, "loss_fn_config.%s: given twice", key);
        if (v->text)
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "loss_fn_config.%s: a number is needed, not the text \"%s\"", key,
                                  v->text);
        double x = v->number;
        if (!isfinite(x))
            return chord_err_setc(err, CHORD_E_INVALID, "loss_fn_config.%s: %g is not finite", key,
                                  x);
        if (!strcmp(key, "clip_low_threshold")) {
            c.clip_low = x;
        } else if (!strcmp(key, "clip_high_threshold")) {
            c.clip_high = x;
        } else if (!strcmp(key, "mu")) {
            if (!(x >= 0.0 && x <= 1.0))
                return chord_err_setc(err, CHORD_E_INVALID,
                                      "loss_fn_config.mu: %g is not in [0, 1]", x);
            c.mu = x;
            have_mu = 1;
        } else if (!strcmp(key, "phi")) {
            if (x != 0.0 && x != 1.0)
                return chord_err_setc(err, CHORD_E_INVALID,
                                      "loss_fn_config.phi: %g is not 0 (plain SFT) or 1 (φ)", x);
            c.phi = x == 1.0;
        }
    }
    if (c.kind == TK_LOSS_CHORD && !have_mu)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "loss_fn_config.mu: chord needs mu, the SFT weight in [0, 1]");
    if (!(c.clip_low > 0.0 && c.clip_low <= 1.0))
        return chord_err_setc(err, CHORD_E_INVALID,
                              "loss_fn_config.clip_low_threshold: %g is not in (0, 1] (a ratio "
                              "bound, e.g. 0.8, not an epsilon)",
                              c.clip_low);
    if (!(c.clip_high >= 1.0))
        return chord_err_setc(err, CHORD_E_INVALID,
                              "loss_fn_config.clip_high_threshold: %g is below 1 (a ratio bound, "
                              "e.g. 1.2, not an epsilon)",
                              c.clip_high);
    *out = c;
    return 0;
}

/* ---- checks ---- */

/* The float inputs a loss reads; each is checked wherever present. */
static const char *const float_inputs[] = {"weights", "logprobs", "advantages"};

static int check_float_input(const tk_datum *d, size_t index, const char *name, int required,
                             const char *loss, chord_err *err) {
    const tk_tensor *t = tk_datum_input(d, name);
    if (!t) {
        if (!required) return 0;
        return chord_err_setc(
            err, CHORD_E_INVALID, "data[%zu].loss_fn_inputs.%s: missing (%s)", index, name,
            strcmp(loss, "chord") ? "the loss needs target_tokens, logprobs and advantages"
                                  : "a chord datum with advantages is on-policy and needs "
                                    "logprobs");
    }
    if (t->dtype != TK_F32 || !t->f32)
        return chord_err_setc(err, CHORD_E_INVALID, "data[%zu].loss_fn_inputs.%s: must be float32",
                              index, name);
    if (t->ndim != 1)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.%s: must be 1-D, one value per position "
                              "(got %d-D)",
                              index, name, t->ndim);
    if (t->n != d->n_tokens)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.%s: %zu values for %zu positions", index,
                              name, t->n, d->n_tokens);
    for (size_t i = 0; i < t->n; i++)
        if (!isfinite(t->f32[i]))
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "data[%zu].loss_fn_inputs.%s[%zu]: %g is not finite", index, name,
                                  i, (double)t->f32[i]);
    return 0;
}

int tk_loss_check(const tk_loss_config *c, const tk_datum *d, size_t index, int vocab_size,
                  chord_err *err) {
    if (d->n_tokens == 0)
        return chord_err_setc(err, CHORD_E_INVALID, "data[%zu].model_input: empty", index);
    const tk_tensor *target = tk_datum_input(d, "target_tokens");
    if (!target)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.target_tokens: missing", index);
    if (target->ndim == 2)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.target_tokens: 2-D (multi-target) "
                              "target_tokens are not supported; send one target per position",
                              index);
    if (target->dtype != TK_I64 || !target->i64 || target->ndim != 1)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.target_tokens: must be 1-D int64", index);
    if (target->n != d->n_tokens)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "data[%zu].loss_fn_inputs.target_tokens: %zu values for %zu "
                              "positions",
                              index, target->n, d->n_tokens);
    for (size_t i = 0; i < target->n; i++)
        if (target->i64[i] < 0 || target->i64[i] >= vocab_size)
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "data[%zu].loss_fn_inputs.target_tokens[%zu]: token id %lld "
                                  "is outside the vocabulary [0, %d)",
                                  index, i, (long long)target->i64[i], vocab_size);
    static const char *const thresholds[] = {"clip_low_threshold", "clip_high_threshold"};
    for (int k = 0; k < 2; k++)
        if (tk_datum_input(d, thresholds[k]))
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "data[%zu].loss_fn_inputs.%s: per-position thresholds are not "
                                  "supported; give %s in loss_fn_config",
                                  index, thresholds[k], thresholds[k]);
    const char *loss = loss_names[c->kind];
    int policy = c->kind == TK_LOSS_IMPORTANCE_SAMPLING || c->kind == TK_LOSS_PPO ||
                 c->kind == TK_LOSS_CISPO ||
                 (c->kind == TK_LOSS_CHORD && tk_datum_input(d, "advantages"));
    for (int k = 0; k < 3; k++) {
        int required = policy && strcmp(float_inputs[k], "weights") != 0;
        if (check_float_input(d, index, float_inputs[k], required, loss, err)) return -1;
    }
    return 0;
}

/* ---- per-position terms ---- */

/* One token through server/train/loss.c (ℓ_t into *loss_t, 1 into *clipped when the clip is
 * active), returning dℓ_t/dlp. kind is CHORD_TOKEN_POLICY (q, adv read) or CHORD_TOKEN_EXPERT.
 * A non-finite lp (which loss.c refuses) gives ℓ_t = NaN and no gradient, so loss:sum shows it. */
static double train_token(const chord_loss_params *base, uint8_t kind, float lp, float q, float adv,
                          double *loss_t, double *clipped) {
    chord_loss_params p = *base;
    p.n_policy_tokens = kind == CHORD_TOKEN_POLICY;
    p.n_expert_tokens = kind == CHORD_TOKEN_EXPERT;
    chord_loss_batch b = {.n = 1, .kind = &kind, .logp = &lp, .logp_old = &q, .advantage = &adv};
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    float grad = 0.0f;
    if (chord_loss_micro_batch(&p, &b, &grad, NULL, &acc, NULL) != 0) {
        *loss_t = NAN;
        *clipped = 0.0;
        return 0.0;
    }
    *loss_t = acc.loss;
    *clipped = acc.clipped;
    return grad;
}

static double clampd(double x, double lo, double hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

/* importance_sampling: ℓ = −r A, r = exp(clamp(lp − q, ±20)) as loss.c forms the ratio;
 * dℓ/dlp = −r A inside the clamp, 0 outside. */
static double is_token(float lp, float q, float adv, double *loss_t) {
    double log_ratio = (double)lp - (double)q;
    double r = exp(clampd(log_ratio, -20.0, 20.0));
    *loss_t = -r * adv;
    return (log_ratio >= -20.0 && log_ratio <= 20.0) ? -r * adv : 0.0;
}

void tk_loss_datum(const tk_loss_config *c, const tk_datum *d, const float *lp, size_t n,
                   float *elementwise, float *dlp, tk_loss_stats *st) {
    const tk_tensor *tw = tk_datum_input(d, "weights");
    const tk_tensor *tq = tk_datum_input(d, "logprobs");
    const tk_tensor *ta = tk_datum_input(d, "advantages");
    const float *w = tw && tw->n == n ? tw->f32 : NULL; /* absent: every weight 1 */
    const float *q = tq && tq->n == n ? tq->f32 : NULL;
    const float *adv = ta && ta->n == n ? ta->f32 : NULL;
    /* what each position is: an on-policy term (needs q and A) or an SFT term */
    int policy = c->kind != TK_LOSS_CROSS_ENTROPY && (c->kind != TK_LOSS_CHORD || adv);
    if (policy && (!q || !adv)) policy = -1; /* unchecked datum: contributes nothing */
    chord_loss_params p = {
        .mu = c->kind == TK_LOSS_CHORD ? c->mu : (policy ? 0.0 : 1.0),
        .phi = c->kind == TK_LOSS_CHORD ? c->phi : 0,
        .clip_low = 1.0 - c->clip_low,
        .clip_high = c->clip_high - 1.0,
        .policy_loss = c->kind == TK_LOSS_CISPO ? CHORD_POLICY_LOSS_CISPO : CHORD_POLICY_LOSS_PPO,
    };
    double loss_sum = 0.0;
    for (size_t t = 0; t < n; t++) {
        double loss_t = 0.0, grad = 0.0, clipped = 0.0;
        if (policy == 1 && adv[t] != 0.0f) {
            if (c->kind == TK_LOSS_IMPORTANCE_SAMPLING)
                grad = is_token(lp[t], q[t], adv[t], &loss_t);
            else
                grad = train_token(&p, CHORD_TOKEN_POLICY, lp[t], q[t], adv[t], &loss_t, &clipped);
            double gap = fabs((double)lp[t] - (double)q[t]);
            if (gap > st->parity_max) st->parity_max = gap;
            st->clipfrac_num += clipped;
            st->policy_tokens += 1.0;
        } else if (policy == 0 && (!w || w[t] != 0.0f)) {
            double wt = w ? (double)w[t] : 1.0;
            grad = wt * train_token(&p, CHORD_TOKEN_EXPERT, lp[t], 0.0f, 0.0f, &loss_t, &clipped);
            loss_t *= wt;
            if (c->kind == TK_LOSS_CHORD) st->expert_tokens += 1.0;
        }
        loss_sum += loss_t;
        if (elementwise) elementwise[t] = (float)loss_t;
        if (dlp) dlp[t] = (float)grad;
    }
    st->loss_sum += loss_sum;
}

/* ---- metrics ---- */

static int metric_add(tk_fb_output *o, const char *key, double value, chord_err *err) {
    char **keys = realloc(o->metric_keys, (size_t)(o->n_metrics + 1) * sizeof *keys);
    if (!keys) goto oom;
    o->metric_keys = keys;
    double *values = realloc(o->metric_values, (size_t)(o->n_metrics + 1) * sizeof *values);
    if (!values) goto oom;
    o->metric_values = values;
    char *copy = strdup(key);
    if (!copy) goto oom;
    keys[o->n_metrics] = copy;
    values[o->n_metrics] = value;
    o->n_metrics++;
    return 0;
oom:
    return chord_err_setc(err, CHORD_E_INTERNAL, "forward_backward metrics: out of memory");
}

int tk_loss_metrics(const tk_loss_config *c, const tk_loss_stats *st, tk_fb_output *o,
                    chord_err *err) {
    if (metric_add(o, "loss:sum", st->loss_sum, err)) return -1;
    if (c->kind == TK_LOSS_CROSS_ENTROPY) return 0;
    /* the sampler log-probs enter at the positions with advantages, and only there */
    if (st->policy_tokens > 0.0 && metric_add(o, "parity_max:max", st->parity_max, err)) return -1;
    if (c->kind != TK_LOSS_IMPORTANCE_SAMPLING && st->policy_tokens > 0.0 &&
        metric_add(o, "clipfrac:mean", st->clipfrac_num / st->policy_tokens, err))
        return -1;
    if (metric_add(o, "policy_tokens:sum", st->policy_tokens, err)) return -1;
    if (c->kind == TK_LOSS_CHORD && metric_add(o, "expert_tokens:sum", st->expert_tokens, err))
        return -1;
    return 0;
}
