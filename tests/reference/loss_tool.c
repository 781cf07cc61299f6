/* loss_tool.c — a small driver the PyTorch reference tests (tests/reference/loss_*.py) run.
 *
 * Reads one JSON document {"cases": [...]} on stdin and writes {"results": [...]} on stdout, one
 * result per case, computed by chord's own code:
 *   {"mode": "loss", "params": {...}, "micro_batches": k, "kind": [...], "logp": [...],
 *    "logp_old": [...], "advantage": [...], "entropy": [...]|null, "ref_logp": [...]|null}
 *      → {"loss", "dlogp": [...], "dentropy": [...], "metrics": {...}}   (split into k
 *        micro-batches, so the step-level denominators are exercised)
 *   {"mode": "advantages", "rewards": [...], "group_sizes": [...]}
 *      → {"advantages": [...], "zero_adv_groups": n}
 *   {"mode": "lr", "schedule": "cosine", "warmup": W, "total": T, "min_lr_ratio": m,
 *    "completed": [...]} → {"factors": [...]}
 *   {"mode": "mu", "warmup": W, "decay": D, "peak": p, "valley": v, "steps": [...]}
 *      → {"mu": [...]}
 * It holds no reference numbers: the Python side computes those independently. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/train/loss.h"
#include "server/train/schedule.h"

static float *floats(const json_t *arr, size_t n) {
    if (!json_is_array(arr)) return NULL;
    if (json_array_size(arr) != n) return NULL;
    float *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++)
        out[i] = (float)json_number_value(json_array_get(arr, i));
    return out;
}

static json_t *float_array(const float *x, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_real(x[i]));
    return arr;
}

static double num(const json_t *obj, const char *key) {
    return json_number_value(json_object_get(obj, key));
}

static json_t *run_loss(const json_t *c, chord_err *err) {
    const json_t *jp = json_object_get(c, "params");
    chord_loss_params p = {
        .mu = num(jp, "mu"),
        .phi = json_is_true(json_object_get(jp, "phi")),
        .clip_low = num(jp, "clip_low"),
        .clip_high = num(jp, "clip_high"),
        .dual_clip = num(jp, "dual_clip"),
        .entropy_coef = num(jp, "entropy_coef"),
        .kl_coef = num(jp, "kl_coef"),
    };
    /* "k1" | "k2" | "k3" (default) */
    const char *est = json_string_value(json_object_get(jp, "kl_estimator"));
    p.kl_estimator = est && !strcmp(est, "k1")   ? CHORD_KL_K1
                     : est && !strcmp(est, "k2") ? CHORD_KL_K2
                                                 : CHORD_KL_K3;
    const char *ga = json_string_value(json_object_get(jp, "grpo_agg"));
    const char *sa = json_string_value(json_object_get(jp, "sft_agg"));
    if ((ga && chord_loss_agg_parse(ga, &p.grpo_agg)) ||
        (sa && chord_loss_agg_parse(sa, &p.sft_agg))) {
        chord_err_set(err, "bad aggregation mode");
        return NULL;
    }
    p.norm_tokens = num(jp, "norm_tokens");
    const char *pl = json_string_value(json_object_get(jp, "policy_loss"));
    const char *rl = json_string_value(json_object_get(jp, "ratio_level"));
    p.policy_loss = pl && !strcmp(pl, "cispo") ? CHORD_POLICY_LOSS_CISPO : CHORD_POLICY_LOSS_PPO;
    p.ratio_level = rl && !strcmp(rl, "sequence") ? CHORD_RATIO_SEQUENCE : CHORD_RATIO_TOKEN;
    json_t *jkind = json_object_get(c, "kind");
    size_t n = json_array_size(jkind);
    uint8_t *kind = malloc(n ? n : 1);
    for (size_t i = 0; i < n; i++) {
        kind[i] = (uint8_t)json_integer_value(json_array_get(jkind, i));
        p.n_policy_tokens += kind[i] == CHORD_TOKEN_POLICY;
        p.n_expert_tokens += kind[i] == CHORD_TOKEN_EXPERT;
    }
    float *logp = floats(json_object_get(c, "logp"), n);
    float *logp_old = floats(json_object_get(c, "logp_old"), n);
    float *adv = floats(json_object_get(c, "advantage"), n);
    float *entropy = floats(json_object_get(c, "entropy"), n);
    float *ref = floats(json_object_get(c, "ref_logp"), n);
    float *dlogp = calloc(n ? n : 1, sizeof *dlogp);
    float *dent = calloc(n ? n : 1, sizeof *dent);
    /* the packing's per-token figures, as the trainer has them: n_s = the tokens of the token's
     * kind in its sequence ("seq" ids), and the sequences holding each kind */
    json_t *jseq = json_object_get(c, "seq");
    int32_t *seq_tokens = calloc(n ? n : 1, sizeof *seq_tokens);
    int32_t *seq = calloc(n ? n : 1, sizeof *seq);
    for (size_t i = 0; jseq && seq && i < n; i++)
        seq[i] = (int32_t)json_integer_value(json_array_get(jseq, i));
    if (jseq && seq_tokens) {
        for (size_t i = 0; i < n; i++) {
            json_int_t si = json_integer_value(json_array_get(jseq, i));
            int first_of_kind = 1;
            for (size_t j = 0; j < n; j++)
                if (json_integer_value(json_array_get(jseq, j)) == si && kind[j] == kind[i]) {
                    seq_tokens[i]++;
                    if (j < i) first_of_kind = 0;
                }
            if (first_of_kind && kind[i] == CHORD_TOKEN_POLICY) p.n_policy_seqs++;
            if (first_of_kind && kind[i] == CHORD_TOKEN_EXPERT) p.n_expert_seqs++;
        }
    }
    json_t *out = NULL;
    if (!logp || !logp_old || !adv || !dlogp || !dent) {
        chord_err_set(err, "bad loss case");
        goto done;
    }
    long k = (long)json_integer_value(json_object_get(c, "micro_batches"));
    if (k < 1) k = 1;
    chord_loss_accum acc;
    chord_loss_accum_init(&acc);
    size_t chunk = (n + (size_t)k - 1) / (size_t)k;
    for (size_t start = 0; start < n; start += chunk) {
        size_t len = n - start < chunk ? n - start : chunk;
        chord_loss_batch b = {len,
                              kind + start,
                              logp + start,
                              logp_old + start,
                              adv + start,
                              entropy ? entropy + start : NULL,
                              ref ? ref + start : NULL,
                              seq_tokens + start,
                              seq + start};
        if (chord_loss_micro_batch(&p, &b, dlogp + start, dent + start, &acc, err)) goto done;
    }
    chord_loss_metrics m;
    if (chord_loss_finish(&p, &acc, &m, err)) goto done;
    out = json_pack(
        "{s:f,s:o,s:o,s:{s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:f,s:I,s:I}}", "loss", m.loss,
        "dlogp", float_array(dlogp, n), "dentropy", float_array(dent, n), "metrics", "pg_loss",
        m.pg_loss, "pg_clipfrac", m.pg_clipfrac, "pg_clipfrac_lower", m.pg_clipfrac_lower, "ppo_kl",
        m.ppo_kl, "sft_loss", m.sft_loss, "sft_nll", m.sft_nll, "phi_mean", m.phi_mean, "entropy",
        m.entropy, "kl", m.kl, "ratio_mean", m.ratio_mean, "n_policy_tokens",
        (json_int_t)m.n_policy_tokens, "n_expert_tokens", (json_int_t)m.n_expert_tokens);
done:
    free(kind);
    free(logp);
    free(logp_old);
    free(adv);
    free(entropy);
    free(ref);
    free(dlogp);
    free(dent);
    free(seq_tokens);
    free(seq);
    return out;
}

static json_t *run_advantages(const json_t *c, chord_err *err) {
    json_t *jr = json_object_get(c, "rewards"), *jg = json_object_get(c, "group_sizes");
    size_t n = json_array_size(jr), ng = json_array_size(jg);
    float *r = floats(jr, n);
    float *a = calloc(n ? n : 1, sizeof *a);
    int *gs = calloc(ng ? ng : 1, sizeof *gs);
    json_t *out = NULL;
    for (size_t i = 0; i < ng; i++)
        gs[i] = (int)json_integer_value(json_array_get(jg, i));
    int64_t zero = -1;
    json_t *nb = json_object_get(c, "norm_by_std");
    int norm_by_std = nb ? json_is_true(nb) : 1;
    if (r && a && gs && chord_grpo_advantages(r, gs, ng, norm_by_std, a, &zero, err) == 0)
        out = json_pack("{s:o,s:I}", "advantages", float_array(a, n), "zero_adv_groups",
                        (json_int_t)zero);
    free(r);
    free(a);
    free(gs);
    return out;
}

static json_t *run_overlong(const json_t *c) {
    json_t *lens = json_object_get(c, "lengths"), *out = json_array();
    for (size_t i = 0; out && i < json_array_size(lens); i++)
        json_array_append_new(
            out, json_real(chord_overlong_penalty(json_integer_value(json_array_get(lens, i)),
                                                  json_integer_value(json_object_get(c, "max")),
                                                  json_integer_value(json_object_get(c, "buffer")),
                                                  num(c, "factor"))));
    return json_pack("{s:o}", "penalty", out);
}

static json_t *run_lr(const json_t *c) {
    const char *s = json_string_value(json_object_get(c, "schedule"));
    job_lr_schedule sched = !strcmp(s, "linear")   ? JOB_LR_LINEAR
                            : !strcmp(s, "cosine") ? JOB_LR_COSINE
                                                   : JOB_LR_CONSTANT;
    json_t *steps = json_object_get(c, "completed"), *f = json_array();
    for (size_t i = 0; i < json_array_size(steps); i++)
        json_array_append_new(
            f, json_real(sched_lr_factor(sched, json_integer_value(json_array_get(steps, i)),
                                         (int64_t)num(c, "warmup"), (int64_t)num(c, "total"),
                                         num(c, "min_lr_ratio"))));
    return json_pack("{s:o}", "factors", f);
}

static json_t *run_mu(const json_t *c) {
    json_t *steps = json_object_get(c, "steps"), *mu = json_array();
    for (size_t i = 0; i < json_array_size(steps); i++)
        json_array_append_new(
            mu, json_real(sched_mu_cosine(json_integer_value(json_array_get(steps, i)),
                                          (int64_t)num(c, "warmup"), (int64_t)num(c, "decay"),
                                          num(c, "peak"), num(c, "valley"))));
    return json_pack("{s:o}", "mu", mu);
}

int main(void) {
    json_error_t jerr;
    json_t *doc = json_loadf(stdin, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "loss_tool: bad input at line %d: %s\n", jerr.line, jerr.text);
        return 2;
    }
    json_t *cases = json_object_get(doc, "cases"), *results = json_array();
    int rc = 0;
    for (size_t i = 0; i < json_array_size(cases); i++) {
        const json_t *c = json_array_get(cases, i);
        const char *mode = json_string_value(json_object_get(c, "mode"));
        chord_err err = {0};
        json_t *r = NULL;
        if (mode && !strcmp(mode, "loss"))
            r = run_loss(c, &err);
        else if (mode && !strcmp(mode, "advantages"))
            r = run_advantages(c, &err);
        else if (mode && !strcmp(mode, "overlong"))
            r = run_overlong(c);
        else if (mode && !strcmp(mode, "lr"))
            r = run_lr(c);
        else if (mode && !strcmp(mode, "mu"))
            r = run_mu(c);
        else
            chord_err_set(&err, "unknown mode");
        if (!r) {
            fprintf(stderr, "loss_tool: case %zu: %s\n", i, err.msg);
            r = json_pack("{s:s}", "error", err.msg);
            rc = 1;
        }
        json_array_append_new(results, r);
    }
    json_t *out = json_pack("{s:o}", "results", results);
    json_dumpf(out, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    json_decref(out);
    json_decref(doc);
    return rc;
}
