/* trainer.c — the CHORD step loop (trainer.h): rollouts, rewards, GRPO advantages, the expert
 * batch, one micro-batched forward/backward over both kinds of sample, AdamW; metrics, samples,
 * checkpoints, evaluation and bit-for-bit resume.
 *
 * Determinism: data order is a seeded permutation per epoch addressed by a cursor (a count of
 * records consumed), sampling uses counter-based uniforms keyed by (seed, step, sequence, token),
 * and the checkpoint holds parameters, AdamW moments and cursors in float32 exactly, so a
 * resumed run repeats an uninterrupted one.
 *
 * Not here: storage, HTTP, the verifiers' internals (reward.h), the loss formulas (loss.h). */
#include "server/train/trainer.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/rng.h"
#include "server/dist/dist.h"
#include "server/model/chat.h"
#include "server/model/model.h"
#include "server/model/tokenizer.h"
#include "server/train/bootstrap.h"
#include "server/train/loss.h"
#include "server/train/mem_estimate.h"
#include "server/train/reward.h"
#include "server/train/reward_internal.h"
#include "server/train/rollout.h"
#include "server/train/schedule.h"
#include "server/train/trainer_data.h"

/* ---- the step's metrics ------------------------------------------------------------------------
 * One struct, one table: the table names each field once (ALGORITHM.md's names) and is the only
 * place the names live; metrics_emit turns a filled struct into the name/value rows on_step
 * stores, and the console line reads the fields. */

typedef struct step_metrics {
    double mu;
    chord_loss_metrics loss; /* loss.h: loss, pg_loss, clip fraction, ppo_kl, sft ... */
    double grad_norm, lr;
    double reward_mean, reward_std, accuracy, response_len_mean, truncated_frac;
    double zero_adv_groups, verifier_error_rate;
    double policy_tokens, expert_tokens, policy_tokens_skipped; /* skipped: zero advantage */
    double time_rollout, time_reward, time_train, time_step;
    double tps_rollout, tps_train;
    /* ops_mem_usage's peak, the estimate set-up checked */
    double mem_peak_mib, mem_estimate_mib;
    double prompts_drawn, groups_dropped; /* dynamic sampling (grpo.filter_groups) */
    int has_filter;                       /* those rows exist only with grpo.filter_groups */
    double prompt_rows_shared; /* grpo.share_prompt: rows the shared prompts saved (one pass) */
    int has_share;             /* that row exists only with grpo.share_prompt */
    int has_kl;                /* the kl row exists only for jobs with a reference policy */
    int has_eval;              /* the eval/ rows exist only on eval steps */
    double eval_error_rate, eval_accuracy, eval_pass_at_k, eval_k, eval_time;
} step_metrics;

enum { ROW_ALWAYS, ROW_KL, ROW_FILTER, ROW_SHARE, ROW_EVAL }; /* when a row exists */
#define STEP_METRIC(name, field)                                                                   \
    { name, offsetof(step_metrics, field), ROW_ALWAYS }
#define KL_METRIC(name, field)                                                                     \
    { name, offsetof(step_metrics, field), ROW_KL }
#define FILTER_METRIC(name, field)                                                                 \
    { name, offsetof(step_metrics, field), ROW_FILTER }
#define SHARE_METRIC(name, field)                                                                  \
    { name, offsetof(step_metrics, field), ROW_SHARE }
#define EVAL_METRIC(name, field)                                                                   \
    { name, offsetof(step_metrics, field), ROW_EVAL }
static const struct {
    const char *name;
    size_t offset;
    int when;
} metric_table[] = {
    STEP_METRIC("mu", mu),
    STEP_METRIC("loss", loss.loss),
    STEP_METRIC("pg_loss", loss.pg_loss),
    STEP_METRIC("pg_clipfrac", loss.pg_clipfrac),
    STEP_METRIC("ppo_kl", loss.ppo_kl),
    STEP_METRIC("ratio_mean", loss.ratio_mean),
    STEP_METRIC("sft_loss", loss.sft_loss),
    STEP_METRIC("sft_nll", loss.sft_nll),
    STEP_METRIC("phi_mean", loss.phi_mean),
    STEP_METRIC("entropy", loss.entropy),
    KL_METRIC("kl", loss.kl), /* mean KL estimate to the reference over the policy tokens */
    FILTER_METRIC("prompts_drawn", prompts_drawn),   /* prompts sampled this step */
    FILTER_METRIC("groups_dropped", groups_dropped), /* of those, groups not trained on */
    STEP_METRIC("grad_norm", grad_norm),
    STEP_METRIC("lr", lr),
    STEP_METRIC("reward_mean", reward_mean),
    STEP_METRIC("reward_std", reward_std),
    STEP_METRIC("accuracy", accuracy),
    STEP_METRIC("response_len_mean", response_len_mean),
    STEP_METRIC("truncated_frac", truncated_frac),
    STEP_METRIC("zero_adv_groups", zero_adv_groups),
    STEP_METRIC("verifier_error_rate", verifier_error_rate),
    STEP_METRIC("policy_tokens", policy_tokens),
    STEP_METRIC("expert_tokens", expert_tokens),
    STEP_METRIC("policy_tokens_skipped", policy_tokens_skipped),
    SHARE_METRIC("prompt_rows_shared", prompt_rows_shared), /* rows not run twice, per pass */
    STEP_METRIC("time/rollout", time_rollout),
    STEP_METRIC("time/reward", time_reward),
    STEP_METRIC("time/train", time_train),
    STEP_METRIC("time/step", time_step),
    STEP_METRIC("tokens_per_s/rollout", tps_rollout),
    STEP_METRIC("tokens_per_s/train", tps_train),
    STEP_METRIC("memory/peak_mib", mem_peak_mib),         /* the device's buffers, at most */
    STEP_METRIC("memory/estimate_mib", mem_estimate_mib), /* what set-up checked (mem_estimate) */
    EVAL_METRIC("eval/error_rate", eval_error_rate),
    EVAL_METRIC("eval/accuracy", eval_accuracy),
    EVAL_METRIC("eval/avg_at_k", eval_accuracy), /* avg@k: the mean over k samples */
    EVAL_METRIC("eval/pass_at_k", eval_pass_at_k),
    EVAL_METRIC("eval/k", eval_k),
    EVAL_METRIC("eval/time", eval_time),
};
#define N_METRICS (sizeof metric_table / sizeof metric_table[0])

/* The rows of m in table order (kl and eval rows only when they exist); returns how many. */
static int metrics_emit(const step_metrics *m, const char *names[N_METRICS],
                        double values[N_METRICS]) {
    int n = 0;
    for (size_t i = 0; i < N_METRICS; i++) {
        if ((metric_table[i].when == ROW_EVAL && !m->has_eval) ||
            (metric_table[i].when == ROW_KL && !m->has_kl) ||
            (metric_table[i].when == ROW_FILTER && !m->has_filter) ||
            (metric_table[i].when == ROW_SHARE && !m->has_share))
            continue;
        names[n] = metric_table[i].name;
        values[n++] = *(const double *)((const char *)m + metric_table[i].offset);
    }
    return n;
}

/* ---- the job's live state -------------------------------------------------------------------- */

typedef struct trainer {
    const job_config *cfg;
    const trainer_env *env;
    const trainer_callbacks *cb;
    model *m;
    tok_tokenizer *tok;
    chat_template tpl;
    reward_verifier *verifier;
    rollout_engine *engine;
    bootstrap_model boot; /* the trained model and its tokenizer (m and tok point into it) */
    /* Several ranks: a failure of this rank's own callbacks (storing a step or its samples,
     * writing a checkpoint: rank 0's) is kept here, the step's collectives go on, and every rank
     * stops failed at the next step's agreement (keep_failure, trainer_run): the ranks stay in
     * step, so the caller may run the next job on them. */
    int local_failed;
    chord_err local_err;
    bootstrap_model ref; /* the reference policy (jobs with grpo.kl_coef > 0): the starting
                            weights, frozen; ref.m NULL otherwise, and with LoRA */
    model *ref_m;        /* the reference's model: ref.m, or with LoRA the trained model with its
                            adapter switched off (the frozen base); NULL without a KL */
    trainer_dataset prompts, expert, eval;
    int64_t prompt_cursor, expert_cursor;
    int64_t step; /* steps completed */
    int32_t stop_ids[BOOTSTRAP_MAX_STOP];
    int n_stop;
    float inv_temp;
    int checkpoint_on_stop;      /* what should_stop asked for when it stopped a rollout */
    int64_t cur_step, cur_epoch; /* the update train_on runs (the LoRA dropout masks' seed) */
    step_metrics metrics;        /* of the step being run */
    double mem_need;             /* the memory estimate set-up checked (bytes on this device) */
    /* several ranks: this rank's step (rollout tokens, rollout s, train tokens, train s), and
     * every rank's throughput (rollout, train) with its metric names, rows after the table's */
    double rank_local[4];
    double *rank_tps;
    char (*rank_names)[48];
    const char **row_names; /* on_step's rows: N_METRICS, then 2 per rank with several */
    double *row_values;
    /* several ranks without ZeRO-1, env->bucket_mb > 0: the gradients summed in buckets, those
     * of the last micro-batch's finished layers started during its backward (grad_buckets) */
    struct grad_buckets {
        float *grads;
        size_t n, size; /* trainable floats; floats per bucket */
        size_t posted;  /* the buckets started cover [posted, n) */
        struct dist_sums *sums;
        int early, total; /* this update's buckets started during the backward / in all */
        int logged;
    } buckets;
} trainer;

static void logline(trainer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logline(trainer *t, const char *fmt, ...) {
    if (!t->cb || !t->cb->on_log) return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t->cb->on_log(t->cb->user, buf);
}

int trainer_chat_template(const struct tok_tokenizer *tok, struct chat_template *out,
                          chord_err *err) {
    const char *src = tok_chat_template(tok);
    if (src && *src) return chat_template_detect(tok, out, err);
    return chat_template_by_name("raw", tok, out, err);
}

json_t *trainer_sample_json(const trainer_sample *s) {
    return json_pack("{s:s?, s:s?, s:s?, s:f, s:s?, s:i, s:b}", "prompt", s->prompt, "completion",
                     s->completion, "answer", s->answer, "reward", s->reward, "reason", s->reason,
                     "tokens", s->tokens, "truncated", s->truncated);
}

int trainer_decode_response(const struct tok_tokenizer *tok, const int32_t *ids, int n, char **out,
                            chord_err *err) {
    *out = NULL;
    /* a model's vocabulary may be padded past the tokenizer's (Qwen2.5: 151936 vs 151665):
     * such ids have no text */
    int32_t vocab = tok_vocab_size(tok);
    int32_t *keep = malloc((size_t)(n > 0 ? n : 1) * sizeof *keep);
    if (!keep) return chord_err_setc(err, CHORD_E_INTERNAL, "decode: out of memory");
    size_t nk = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < vocab) keep[nk++] = ids[i];
    char *raw = NULL;
    size_t len = 0;
    int rc = tok_decode(tok, keep, nk, 1, &raw, &len, err);
    free(keep);
    if (rc != 0) return -1;
    *out = reward_utf8_sanitize(raw, len);
    free(raw);
    return *out ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "decode: out of memory");
}

static int oom(chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "trainer: out of memory");
}

/* ---- data parallelism (env->dist, docs/distributed.md) ---------------------------------------
 * Each rank takes a contiguous share of the step's prompts and expert records; every sum the
 * step's metrics and loss need is added over the ranks, so with one rank nothing changes. */

static int n_ranks(const trainer *t) { return dist_size(t->env->dist); }

/* A failure of this rank's own callbacks (err): with several ranks in step it is kept (the first
 * one) and 0 returned, so the caller goes on with the step's collectives and skips its later
 * callbacks (t->local_failed); with one rank, or ranks already out of step, -1: fail now. */
static int keep_failure(trainer *t, const chord_err *err) {
    if (n_ranks(t) == 1 || dist_broken(t->env->dist)) return -1;
    if (!t->local_failed) {
        t->local_failed = 1;
        if (err) t->local_err = *err;
    }
    return 0;
}

/* This rank's share [*lo, *lo + returned) of n items (shares differ by at most one). */
static int rank_share(const trainer *t, int n, int *lo) {
    int R = dist_size(t->env->dist), r = dist_rank(t->env->dist);
    int base = n / R, extra = n % R;
    *lo = r * base + (r < extra ? r : extra);
    return base + (r < extra ? 1 : 0);
}

/* Adds v[0..n) over the ranks, in place (nothing to do with one rank). */
static int sum_over_ranks(trainer *t, double *v, size_t n, const char *what, chord_err *err) {
    if (n_ranks(t) == 1) return 0;
    char name[128];
    snprintf(name, sizeof name, "step %lld: %s", (long long)t->cur_step, what);
    return dist_allreduce_sum_f64(t->env->dist, v, n, name, err);
}

/* Every rank's rollout and training throughput this step (the rows tokens_per_s/rollout/rank_R
 * and tokens_per_s/train/rank_R): each rank fills its slots of one vector, summed. */
static int rank_throughput(trainer *t, chord_err *err) {
    int R = n_ranks(t), me = dist_rank(t->env->dist);
    double *v = calloc(4 * (size_t)R, sizeof *v);
    if (!v) return oom(err);
    memcpy(v + 4 * me, t->rank_local, sizeof t->rank_local);
    int rc = sum_over_ranks(t, v, 4 * (size_t)R, "throughput", err);
    for (int r = 0; rc == 0 && r < R; r++) {
        const double *q = v + 4 * r;
        t->rank_tps[2 * r] = q[1] > 0 ? q[0] / q[1] : 0.0;
        t->rank_tps[2 * r + 1] = q[3] > 0 ? q[2] / q[3] : 0.0;
    }
    free(v);
    return rc;
}

/* ZeRO-1 is on: several ranks and env->zero. */
static int zero1(const trainer *t) {
    return t->env->zero && n_ranks(t) > 1;
}

/* AdamW on the summed gradients. With ZeRO-1 this rank updates its slice only: the global norm
 * from every slice's squares, then the updated slices all-gathered (every rank again holds the
 * same weights). */
static int optimizer_step(trainer *t, double lr, double *grad_norm, chord_err *err) {
    const job_optimizer *o = &t->cfg->optimizer;
    if (!zero1(t))
        return model_adamw_step(t->m, (float)lr, (float)o->beta1, (float)o->beta2, (float)o->eps,
                                (float)o->weight_decay, (float)o->grad_clip, grad_norm, err);
    const size_t n = model_trainable_params(t->m);
    size_t lo, hi;
    dist_slice(t->env->dist, n, dist_rank(t->env->dist), &lo, &hi);
    double ss = 0.0;
    if (model_grad_sum_squares(t->m, lo, hi, &ss, err) != 0) return -1;
    if (sum_over_ranks(t, &ss, 1, "gradient norm", err) != 0) return -1;
    *grad_norm = sqrt(ss);
    if (model_adamw_step_shard(t->m, *grad_norm, (float)lr, (float)o->beta1, (float)o->beta2,
                               (float)o->eps, (float)o->weight_decay, (float)o->grad_clip,
                               err) != 0)
        return -1;
    char name[128];
    snprintf(name, sizeof name, "step %lld: parameters", (long long)t->cur_step);
    if (dist_allgather_device_f32(t->env->dist, t->env->ops, model_trainable_weights(t->m), n,
                                  name, err) != 0)
        return -1;
    /* the bf16 copy of the gathered weights (an adapter's have none) */
    return model_trainable_weights(t->m) == t->m->params ? model_weights_changed(t->m, err) : 0;
}

/* ---- gradient buckets (docs/distributed.md) ---------------------------------------------------
 * The trainable buffer is cut into buckets of env->bucket_mb MiB from its top (the last layers'
 * end: their gradients are final first), [n - B, n), [n - 2B, n - B), ... — the same cuts on
 * every rank, started in the same order. During the backward of the update's last micro-batch
 * the model says which gradients are final (model_set_grad_hook), and each bucket wholly above
 * that starts summing (dist_isum_device_f32) while the backward goes on; reduce_update starts
 * the rest and waits for all. With ZeRO-1 a bucket is not all-reduced but its part in each
 * rank's slice is reduced to that rank (the buckets' reduce-scatter). Each element is still the
 * sum of the ranks' values: with two ranks the bits are those of the one all-reduce or
 * reduce-scatter (a + b = b + a); with more, MPI may pick another reduction order for another
 * message size (round-off). */

static int buckets_on(const trainer *t) {
    return n_ranks(t) > 1 && t->env->bucket_mb > 0;
}

/* A new update: nothing started; the gradient buffer exists (after model_zero_grad). */
static void buckets_reset(trainer *t) {
    struct grad_buckets *b = &t->buckets;
    b->grads = model_trainable_grads(t->m);
    b->n = model_trainable_params(t->m);
    double floats = t->env->bucket_mb * 1048576.0 / sizeof(float);
    b->size = floats < 1.0 ? 1 : floats > (double)b->n ? b->n : (size_t)floats;
    b->posted = b->n;
    b->sums = NULL;
    b->early = b->total = 0;
}

/* Starts every bucket not started yet that lies wholly at or above final_from. */
static int buckets_start(trainer *t, size_t final_from, chord_err *err) {
    struct grad_buckets *b = &t->buckets;
    char name[128];
    snprintf(name, sizeof name, "step %lld: gradients", (long long)t->cur_step);
    while (b->posted > 0) {
        size_t lo = b->posted > b->size ? b->posted - b->size : 0;
        if (lo < final_from) break;
        for (int r = zero1(t) ? 0 : -1; r < (zero1(t) ? n_ranks(t) : 0); r++) {
            size_t a = lo, z = b->posted; /* all of it, or with ZeRO-1 its part in r's slice */
            if (r >= 0) {
                size_t s_lo, s_hi;
                dist_slice(t->env->dist, b->n, r, &s_lo, &s_hi);
                a = a > s_lo ? a : s_lo;
                z = z < s_hi ? z : s_hi;
                if (a >= z) continue;
            }
            if (dist_isum_device_f32(t->env->dist, t->env->ops, b->grads + a, z - a, r, &b->sums,
                                     name, err) != 0)
                return -1;
        }
        b->posted = lo;
        b->total++;
        b->early += final_from > 0;
    }
    return 0;
}

/* model_set_grad_hook's callback for the last micro-batch's backward. */
static int buckets_hook(void *user, size_t final_from, chord_err *err) {
    return buckets_start(user, final_from, err);
}

/* Starts the buckets the backward did not (all of them on a rank without a micro-batch), then
 * waits for every one. */
static int buckets_finish(trainer *t, chord_err *err) {
    struct grad_buckets *b = &t->buckets;
    if (buckets_start(t, 0, err) != 0) return -1;
    struct dist_sums *sums = b->sums;
    b->sums = NULL;
    if (dist_wait_sums(t->env->dist, sums, err) != 0) return -1;
    if (!b->logged) {
        b->logged = 1;
        logline(t,
                "step %lld: gradients summed in %d bucket%s of up to %.3g MiB, %d started during "
                "the backward",
                (long long)t->cur_step, b->total, b->total == 1 ? "" : "s",
                (double)b->size * sizeof(float) / 1048576.0, b->early);
    }
    return 0;
}

/* The step's gradients and loss sums added over the ranks before the optimizer step: the loss
 * parameters carry the step's global token and sequence counts, so each rank's gradient is its
 * share of the global one and their sum is the single-process gradient (to fp32 round-off). */
static int reduce_update(trainer *t, chord_loss_accum *acc, chord_err *err) {
    if (n_ranks(t) == 1) return 0;
    char name[128];
    snprintf(name, sizeof name, "step %lld: gradients", (long long)t->cur_step);
    float *grads = model_trainable_grads(t->m);
    if (!grads) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: no gradient buffer", name);
    const size_t n = model_trainable_params(t->m);
    if (buckets_on(t)) {
        if (buckets_finish(t, err) != 0) return -1;
    } else if (zero1(t)) { /* each rank needs the sum on its own slice only */
        if (dist_reduce_scatter_sum_device_f32(t->env->dist, t->env->ops, grads, n, name, err))
            return -1;
    } else if (dist_allreduce_sum_device_f32(t->env->dist, t->env->ops, grads, n, name, err)) {
        return -1;
    }
    double v[15] = {acc->loss,        acc->clipped,      acc->dual_clipped, acc->ppo_kl_sum,
                    acc->ratio_sum,   acc->pg_agg,       acc->sft_agg,      acc->nll_sum,
                    acc->phi_sum,     acc->entropy_sum,  acc->kl_sum,       (double)acc->n_policy,
                    (double)acc->n_expert, (double)acc->n_entropy, (double)acc->n_kl};
    if (sum_over_ranks(t, v, 15, "loss sums", err) != 0) return -1;
    acc->loss = v[0], acc->clipped = v[1], acc->dual_clipped = v[2], acc->ppo_kl_sum = v[3];
    acc->ratio_sum = v[4], acc->pg_agg = v[5], acc->sft_agg = v[6], acc->nll_sum = v[7];
    acc->phi_sum = v[8], acc->entropy_sum = v[9], acc->kl_sum = v[10];
    acc->n_policy = (int64_t)v[11], acc->n_expert = (int64_t)v[12];
    acc->n_entropy = (int64_t)v[13], acc->n_kl = (int64_t)v[14];
    return 0;
}

/* ---- sequences for the forward/backward ------------------------------------------------------ */

/* One packed training sequence: tokens, and per position the target (next token), its kind, the
 * rollout and reference log-probs, and the advantage. */
typedef struct train_seq {
    int len;
    int32_t *tokens;
    uint8_t *kind;   /* kind of the TARGET at position t (the token t+1) */
    float *logp_old; /* at policy targets */
    float *ref_logp; /* at policy targets, under the reference policy (jobs with a KL) */
    float adv;
    int rollout;    /* the response's index in the step's rollouts; -1 for an expert record */
    int targets;    /* trained targets (all of one kind): the loss's seq_tokens */
    int group;      /* a response's prompt (group) in the step; -1 for an expert record */
    int prompt_len; /* a response's prompt tokens (the first prompt_len of tokens) */
} train_seq;

static void train_seq_free(train_seq *s) {
    free(s->tokens);
    free(s->kind);
    free(s->logp_old);
    free(s->ref_logp);
    memset(s, 0, sizeof *s);
}

static int train_seq_alloc(train_seq *s, int len, int rollout) {
    s->len = len;
    s->rollout = rollout;
    s->group = -1;
    s->tokens = malloc((size_t)len * sizeof *s->tokens);
    s->kind = calloc((size_t)len, 1);
    s->logp_old = calloc((size_t)len, sizeof *s->logp_old);
    s->ref_logp = calloc((size_t)len, sizeof *s->ref_logp);
    return (s->tokens && s->kind && s->logp_old && s->ref_logp) ? 0 : -1;
}

/* The per-row arrays of one micro-batch of N rows holding n_seqs sequences, carved from one
 * growable block (buf.h): a failed growth leaves the old block to the single free at the end.
 * With grpo.share_prompt the rows are segments (model_batch.seg_parent): a group's prompt but
 * its last token once, then each response with that token; sequence s's position j is then
 * row seq_off[s] + j for the positions it owns. */
typedef struct micro_batch_rows {
    int32_t *tokens, *positions, *targets, *seq_tokens, *seq; /* (N) each */
    int32_t *cu, *parent; /* (segments + 1), (segments): at most 2 n_seqs segments */
    int32_t *seq_off;     /* (n_seqs) */
    int n_seqs;
    int64_t logical_rows; /* the rows without sharing: Σ len */
    float *logp, *ent, *logp_old, *ref_logp, *adv, *dlogp, *dent; /* (N) each */
    uint8_t *kind;                                                /* (N) */
    model_batch batch; /* the model's view of these rows */
} micro_batch_rows;

static void *carve(char **p, size_t bytes) {
    void *r = *p;
    *p += bytes;
    return r;
}

static int micro_batch_carve(chord_buf *scratch, int64_t N, int S, micro_batch_rows *r) {
    size_t n = (size_t)N, segs = 2 * (size_t)S;
    size_t bytes = (5 * n + 2 * segs + 1 + (size_t)S) * sizeof(int32_t) + 7 * n * sizeof(float) + n;
    if (chord_buf_reserve(scratch, bytes) != 0) return -1;
    char *p = scratch->data; /* 4-byte arrays first, so every one stays aligned */
    r->tokens = carve(&p, n * sizeof *r->tokens);
    r->positions = carve(&p, n * sizeof *r->positions);
    r->targets = carve(&p, n * sizeof *r->targets);
    r->seq_tokens = carve(&p, n * sizeof *r->seq_tokens);
    r->seq = carve(&p, n * sizeof *r->seq);
    r->cu = carve(&p, (segs + 1) * sizeof *r->cu);
    r->parent = carve(&p, segs * sizeof *r->parent);
    r->seq_off = carve(&p, (size_t)S * sizeof *r->seq_off);
    r->logp = carve(&p, n * sizeof *r->logp);
    r->ent = carve(&p, n * sizeof *r->ent);
    r->logp_old = carve(&p, n * sizeof *r->logp_old);
    r->ref_logp = carve(&p, n * sizeof *r->ref_logp);
    r->adv = carve(&p, n * sizeof *r->adv);
    r->dlogp = carve(&p, n * sizeof *r->dlogp);
    r->dent = carve(&p, n * sizeof *r->dent);
    r->kind = carve(&p, n);
    return 0;
}

/* b follows a with the same prompt (its first prompt_len - 1 tokens, untrained), so a
 * shared-prompt batch can run them once. */
static int shares_prompt(const train_seq *a, const train_seq *b) {
    int p = a->prompt_len;
    if (a->group < 0 || b->group != a->group || b->prompt_len != p || p < 2 ||
        memcmp(a->tokens, b->tokens, (size_t)(p - 1) * sizeof *a->tokens) != 0)
        return 0;
    for (int j = 0; j < p - 1; j++)
        if (a->kind[j] != CHORD_TOKEN_IGNORE || b->kind[j] != CHORD_TOKEN_IGNORE) return 0;
    return 1;
}

/* Appends rows j0 .. j1 - 1 of sequence q (the micro-batch's s-th) at r's row *row. */
static void pack_rows(const train_seq *q, int s, int j0, int j1, micro_batch_rows *r,
                      int64_t *row) {
    for (int i = j0; i < j1; i++, (*row)++) {
        int64_t n = *row;
        r->tokens[n] = q->tokens[i];
        r->positions[n] = i;
        int has_target = i + 1 < q->len && q->kind[i] != CHORD_TOKEN_IGNORE;
        r->targets[n] = has_target ? q->tokens[i + 1] : -1;
        r->kind[n] = has_target ? q->kind[i] : CHORD_TOKEN_IGNORE;
        r->logp_old[n] = q->logp_old[i];
        r->ref_logp[n] = q->ref_logp[i];
        r->adv[n] = q->adv;
        r->seq_tokens[n] = q->targets;
        r->seq[n] = s;
    }
}

/* Packs seqs[first], seqs[first + 1], ... into one micro-batch of at most `budget` rows (a
 * longer sequence goes alone) in r, carved from scratch; with `share`, consecutive responses to
 * one prompt run the prompt once (shares_prompt). Returns the index after the last sequence
 * packed, or -1 when out of memory. */
static int pack_micro_batch(const train_seq *seqs, int first, int n_seqs, int64_t budget, int share,
                            chord_buf *scratch, micro_batch_rows *r) {
    int last = first;
    int64_t N = seqs[first].len;
    while (last + 1 < n_seqs) {
        const train_seq *q = &seqs[last + 1];
        int64_t cost =
            share && shares_prompt(&seqs[last], q) ? q->len - (q->prompt_len - 1) : q->len;
        if (N + cost > budget) break;
        N += cost;
        last++;
    }
    int S = last - first + 1;
    if (micro_batch_carve(scratch, N, S, r) != 0) return -1;
    int64_t row = 0;
    int segs = 0, prefix = -1;
    r->cu[0] = 0;
    r->n_seqs = S;
    r->logical_rows = 0;
    for (int s = 0; s < S; s++) {
        const train_seq *q = &seqs[first + s];
        int cont = share && s > 0 && shares_prompt(q - 1, q);
        int starts = share && !cont && s + 1 < S && shares_prompt(q, q + 1);
        if (starts) { /* the prompt but its last token, once, as the group's parent segment */
            prefix = segs;
            pack_rows(q, s, 0, q->prompt_len - 1, r, &row);
            r->parent[segs] = -1;
            r->cu[++segs] = (int32_t)row;
        }
        int j0 = cont || starts ? q->prompt_len - 1 : 0;
        r->seq_off[s] = (int32_t)(row - j0);
        pack_rows(q, s, j0, q->len, r, &row);
        r->parent[segs] = cont || starts ? prefix : -1;
        r->cu[++segs] = (int32_t)row;
        r->logical_rows += q->len;
    }
    r->batch = (model_batch){.N = (int)row,
                             .S = segs,
                             .tokens = r->tokens,
                             .positions = r->positions,
                             .cu_seqlens = r->cu,
                             .targets = r->targets,
                             .seg_parent = share ? r->parent : NULL};
    return last + 1;
}

static int64_t micro_batch_budget(const job_config *cfg) {
    return cfg->micro_batch_tokens > 0 ? cfg->micro_batch_tokens : 8192;
}

/* Runs forward + loss + backward over all sequences, micro-batch by micro-batch. with_ref: the
 * KL to the reference policy is a loss term (the sequences carry ref_logp). */
static int train_on(trainer *t, train_seq *seqs, int n_seqs, const chord_loss_params *lp,
                    int with_ref, chord_loss_accum *acc, int64_t *tokens_out, int64_t *shared_out,
                    chord_err *err) {
    int rc = -1;
    chord_buf scratch = {0};
    int want_entropy_grad = t->cfg->grpo.entropy_coef != 0.0;
    for (int first = 0, next; first < n_seqs; first = next) {
        micro_batch_rows r;
        next = pack_micro_batch(seqs, first, n_seqs, micro_batch_budget(t->cfg),
                                t->cfg->grpo.share_prompt, &scratch, &r);
        if (next < 0) {
            oom(err);
            goto done;
        }
        if (t->cfg->lora.dropout > 0.0) { /* fresh masks per step, epoch and micro-batch */
            uint64_t seed = chord_splitmix64(
                chord_splitmix64(t->cfg->seed ^ chord_splitmix64((uint64_t)t->cur_step)) ^
                chord_splitmix64(((uint64_t)t->cur_epoch << 32) ^ (uint64_t)first));
            if (model_lora_set_dropout(t->m, (float)t->cfg->lora.dropout, seed, err) != 0)
                goto done;
        }
        if (model_forward(t->m, &r.batch, t->inv_temp, r.logp, r.ent, err) != 0) goto done;
        chord_loss_batch lb = {.n = (size_t)r.batch.N,
                               .kind = r.kind,
                               .logp = r.logp,
                               .logp_old = r.logp_old,
                               .advantage = r.adv,
                               .entropy = r.ent,
                               .ref_logp = with_ref ? r.ref_logp : NULL,
                               .seq_tokens = r.seq_tokens,
                               .seq = r.seq};
        float *dent = want_entropy_grad ? r.dent : NULL;
        if (chord_loss_micro_batch(lp, &lb, r.dlogp, dent, acc, err) != 0) goto done;
        /* the update's last backward: its finished layers' gradient buckets start summing */
        if (buckets_on(t) && next >= n_seqs) model_set_grad_hook(t->m, buckets_hook, t);
        int brc = model_backward(t->m, r.dlogp, dent, err);
        model_set_grad_hook(t->m, NULL, NULL);
        if (brc != 0) goto done;
        *tokens_out += r.logical_rows;
        *shared_out += r.logical_rows - r.batch.N;
    }
    rc = 0;
done:
    /* dropout only in the training pass: rollouts, eval and the reference never see it */
    if (t->cfg->lora.dropout > 0.0 && model_lora_set_dropout(t->m, 0.0f, 0, rc ? NULL : err) != 0)
        rc = -1;
    chord_buf_free(&scratch);
    return rc;
}

/* The loss bookkeeping of a zero-advantage response without running it (drop_zero_advantage): its
 * policy tokens with logp_θ = logp_old, no entropy; the gradient (zero) is discarded. */
static int account_skipped(const train_seq *q, const chord_loss_params *lp, chord_loss_accum *acc,
                           chord_err *err) {
    int n = 0;
    for (int j = 0; j < q->len; j++)
        n += q->kind[j] == CHORD_TOKEN_POLICY;
    if (n == 0) return 0;
    uint8_t *kind = malloc((size_t)n);
    float *lp_old = malloc((size_t)n * sizeof *lp_old);
    float *adv = calloc((size_t)n, sizeof *adv);
    float *grad = malloc((size_t)n * sizeof *grad);
    int32_t *seq_tokens = malloc((size_t)n * sizeof *seq_tokens);
    int32_t *seq = calloc((size_t)n, sizeof *seq); /* one sequence */
    int rc = -1;
    if (!kind || !lp_old || !adv || !grad || !seq_tokens || !seq) {
        chord_err_setc(err, CHORD_E_INTERNAL, "trainer: out of memory");
        goto done;
    }
    for (int j = 0, k = 0; j < q->len; j++)
        if (q->kind[j] == CHORD_TOKEN_POLICY) {
            kind[k] = CHORD_TOKEN_POLICY;
            seq_tokens[k] = n;
            lp_old[k++] = q->logp_old[j];
        }
    chord_loss_batch b = {.n = (size_t)n,
                          .kind = kind,
                          .logp = lp_old,
                          .logp_old = lp_old,
                          .advantage = adv,
                          .entropy = NULL,
                          .ref_logp = NULL,
                          .seq_tokens = seq_tokens,
                          .seq = seq};
    rc = chord_loss_micro_batch(lp, &b, grad, NULL, acc, err);
done:
    free(kind);
    free(lp_old);
    free(adv);
    free(grad);
    free(seq_tokens);
    free(seq);
    return rc;
}

/* ---- one step ------------------------------------------------------------------------------
 * run_step is the CHORD step in seven phases: the rollouts, their rewards, the training
 * sequences (on-policy responses + expert demonstrations), the reference policy's log-probs
 * (jobs with a KL), the GRPO advantages, the loss/backward/AdamW update, and the per-sample
 * report. Each phase fills its result struct and the step's metrics; everything is freed in one
 * place at the end. */

/* What step `step` does: how many prompts (B, each sampled G times) and expert records (E). */
typedef struct step_plan {
    int B, G, E;
    int do_rl, do_sft;
} step_plan;

static step_plan plan_step(const job_config *cfg, int64_t step) {
    int sft_phase = cfg->mu.kind == JOB_MU_SFT_THEN_GRPO && step <= cfg->sft_steps;
    int mu_fixed_one = cfg->mu.kind == JOB_MU_SFT || sft_phase;
    int mu_fixed_zero =
        cfg->mu.kind == JOB_MU_GRPO || (cfg->mu.kind == JOB_MU_SFT_THEN_GRPO && !sft_phase);
    step_plan p = {.G = (int)cfg->grpo.group_size};
    p.do_rl = jobconfig_uses_rollouts(cfg->algorithm) && !mu_fixed_one;
    p.do_sft = jobconfig_uses_expert(cfg->algorithm) && !mu_fixed_zero;
    p.B = p.do_rl ? (int)cfg->grpo.prompts_per_step : 0;
    p.E = p.do_sft ? (int)cfg->expert_per_step : 0;
    return p;
}

/* The on-policy half of a step: B prompts, their B·G responses, the responses' text, verdicts
 * and advantages. excluded[i] = 1: the verifier could not decide; not trained on. */
typedef struct step_rollouts {
    int B;                 /* prompts (groups) kept for training */
    int64_t drawn;         /* prompts taken from the dataset (> B when groups were filtered) */
    int64_t tokens;        /* sampled tokens, every round */
    trainer_item *prompts; /* (B) */
    rollout_result rr;     /* (B·G) responses, grouped by prompt */
    char **completions;    /* (n) decoded responses */
    reward_result *res;    /* (n) */
    float *adv;            /* (n) */
    uint8_t *excluded;     /* (n) */
    double *kl;            /* (n) Σ over the response's tokens of the KL estimate at rollout
                              time (jobs with a reference; else NULL) */
    int *step_group;       /* (B) several ranks with grpo.filter_groups: each kept group's
                              index among the step's kept groups (else NULL: lo + its index) */
} step_rollouts;

static void step_rollouts_free(step_rollouts *ro) {
    if (ro->completions)
        for (int i = 0; i < ro->rr.n; i++)
            free(ro->completions[i]);
    free(ro->completions);
    free(ro->res);
    free(ro->adv);
    free(ro->excluded);
    free(ro->kl);
    free(ro->step_group);
    rollout_result_free(&ro->rr);
    if (ro->prompts)
        for (int i = 0; i < ro->B; i++)
            trainer_item_free(&ro->prompts[i]);
    free(ro->prompts);
    memset(ro, 0, sizeof *ro);
}

/* Whether group g has enough decided responses to get an advantage (phase 5). */
static int group_kept(const uint8_t *excluded, int G, int g, int *decided) {
    int k = 0;
    for (int j = 0; j < G; j++)
        k += !excluded[g * G + j];
    *decided = k;
    return !(k == 0 || (G >= 2 && k < 2));
}

static int should_stop_rollout(void *user) {
    trainer *t = user;
    int ck = 0;
    int stop = t->cb && t->cb->should_stop ? t->cb->should_stop(t->cb->user, &ck) : 0;
    if (stop) t->checkpoint_on_stop = ck;
    return stop;
}

/* Phase 1: B prompts of the epoch's order from the cursor + first, G responses each
 * (rollout.h); round r of a step samples with its own stream (dynamic sampling draws several). */
static int collect_rollouts(trainer *t, int64_t step, int round, int64_t first, int lo, int B,
                            int G, step_rollouts *ro, step_metrics *m, chord_err *err) {
    double t0 = chord_now();
    ro->B = B;
    ro->drawn = B;
    ro->prompts = calloc((size_t)B, sizeof *ro->prompts);
    const int32_t **ids = malloc((size_t)B * sizeof *ids);
    int *lens = malloc((size_t)B * sizeof *lens);
    int rc = -1;
    if (!ro->prompts || !ids || !lens) {
        oom(err);
        goto done;
    }
    for (int i = 0; i < B; i++) {
        if (trainer_dataset_item(&t->prompts, t->prompt_cursor + first + lo + i, t->tok, &t->tpl,
                                 1, &ro->prompts[i], err) != 0)
            goto done;
        ids[i] = ro->prompts[i].ids;
        lens[i] = ro->prompts[i].len;
    }
    const job_config *cfg = t->cfg;
    rollout_params rp = {.group_size = G,
                         .temperature = (float)cfg->sampling.temperature,
                         .top_p = (float)cfg->sampling.top_p,
                         .max_new_tokens = (int)cfg->sampling.max_new_tokens,
                         .stop_ids = t->stop_ids,
                         .n_stop = t->n_stop,
                         .seed = cfg->seed,
                         .stream = (uint64_t)step + ((uint64_t)round << 40),
                         .first_index = (uint64_t)lo * (uint64_t)G,
                         /* several ranks stop together, between steps (trainer_run) */
                         .should_stop = n_ranks(t) > 1 ? NULL : should_stop_rollout,
                         .user = t};
    if (rollout_generate(t->engine, ids, lens, B, &rp, &ro->rr, err) != 0) goto done;
    ro->tokens = ro->rr.tokens;
    m->time_rollout += chord_now() - t0;
    rc = 0;
done:
    free(ids);
    free(lens);
    return rc;
}

/* Phase 2: decode each response and score it against its prompt's answer (reward.h). A
 * verifier that could not decide (error / timeout) marks the response excluded. */
static int score_rollouts(trainer *t, step_rollouts *ro, step_metrics *m, chord_err *err) {
    double t0 = chord_now();
    int n = ro->rr.n;
    reward_sample *rs = calloc((size_t)n, sizeof *rs);
    ro->res = calloc((size_t)n, sizeof *ro->res);
    ro->completions = calloc((size_t)n, sizeof *ro->completions);
    ro->excluded = calloc((size_t)n, 1);
    int rc = -1;
    if (!rs || !ro->res || !ro->completions || !ro->excluded) {
        oom(err);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        const rollout_seq *q = &ro->rr.seq[i];
        if (trainer_decode_response(t->tok, q->tokens, q->len, &ro->completions[i], err) != 0)
            goto done;
        rs[i] = (reward_sample){.prompt = ro->prompts[q->prompt].text,
                                .completion = ro->completions[i],
                                .answer = ro->prompts[q->prompt].answer,
                                .truncated = q->truncated != 0};
    }
    if (reward_score_batch(t->verifier, rs, (size_t)n, ro->res, err) != 0) goto done;
    for (int i = 0; i < n; i++)
        ro->excluded[i] =
            ro->res[i].reason == REWARD_REASON_ERROR || ro->res[i].reason == REWARD_REASON_TIMEOUT;
    m->time_reward += chord_now() - t0;
    rc = 0;
done:
    free(rs);
    return rc;
}

/* The step's reward metrics over every response sampled (all rounds, all ranks), counting only
 * the responses the verifier decided; and the rollout throughput. */
static int reward_metrics(trainer *t, const step_rollouts *ro, step_metrics *m, chord_err *err) {
    /* responses, correct, errors, truncated, decided, Σ len, Σ reward, sampled tokens */
    double s[8] = {(double)ro->rr.n, 0, 0, 0, 0, 0, 0, (double)ro->tokens};
    for (int i = 0; i < ro->rr.n; i++) {
        const reward_result *r = &ro->res[i];
        s[2] += ro->excluded[i];
        s[3] += ro->rr.seq[i].truncated ? 1 : 0;
        s[5] += ro->rr.seq[i].len;
        if (ro->excluded[i]) continue;
        s[4]++;
        s[1] += r->correct ? 1 : 0;
        s[6] += r->reward;
    }
    t->rank_local[0] = (double)ro->tokens;
    t->rank_local[1] = m->time_rollout;
    if (sum_over_ranks(t, s, 8, "reward sums", err) != 0) return -1;
    double n = s[0], n_valid = s[4], rsq = 0;
    m->reward_mean = n_valid > 0 ? s[6] / n_valid : 0.0;
    for (int i = 0; i < ro->rr.n; i++)
        if (!ro->excluded[i])
            rsq += (ro->res[i].reward - m->reward_mean) * (ro->res[i].reward - m->reward_mean);
    if (sum_over_ranks(t, &rsq, 1, "reward deviations", err) != 0) return -1;
    m->reward_std = n_valid > 1 ? sqrt(rsq / (n_valid - 1)) : 0.0;
    m->accuracy = n_valid > 0 ? s[1] / n_valid : 0.0;
    m->verifier_error_rate = n > 0 ? s[2] / n : 0.0;
    m->truncated_frac = n > 0 ? s[3] / n : 0.0;
    m->response_len_mean = n > 0 ? s[5] / n : 0.0;
    m->tps_rollout = m->time_rollout > 0 ? s[7] / m->time_rollout : 0.0;
    return 0;
}

/* A group the GRPO term learns from: an advantage (group_kept) and not every decided reward
 * the same (DAPO's dynamic sampling filters the others: all right or all wrong). */
static int group_informative(const step_rollouts *ro, int G, int g) {
    int k;
    if (!group_kept(ro->excluded, G, g, &k)) return 0;
    int have = 0;
    double first = 0;
    for (int j = 0; j < G; j++) {
        int i = g * G + j;
        if (ro->excluded[i]) continue;
        if (have && ro->res[i].reward != first) return 1;
        first = ro->res[i].reward;
        have = 1;
    }
    return 0;
}

/* Keeps the first `want` informative groups of ro (in order) and frees the others. */
static void step_rollouts_keep_informative(step_rollouts *ro, int G, int want) {
    int nb = 0;
    for (int g = 0; g < ro->B; g++) {
        int keep = nb < want && group_informative(ro, G, g);
        for (int j = 0; j < G; j++) {
            int from = g * G + j, to = nb * G + j;
            if (!keep) {
                free(ro->completions[from]);
                free(ro->rr.seq[from].tokens);
                free(ro->rr.seq[from].logp);
                continue;
            }
            ro->rr.seq[to] = ro->rr.seq[from];
            ro->rr.seq[to].prompt = nb;
            ro->completions[to] = ro->completions[from];
            ro->res[to] = ro->res[from];
            ro->excluded[to] = ro->excluded[from];
        }
        if (keep)
            ro->prompts[nb++] = ro->prompts[g];
        else
            trainer_item_free(&ro->prompts[g]);
    }
    ro->B = nb;
    ro->rr.n = nb * G;
}

static int step_rollouts_append(step_rollouts *dst, step_rollouts *src);

/* Phases 1 and 2: B prompts' rollouts and rewards. With grpo.filter_groups (DAPO's dynamic
 * sampling) groups whose decided rewards are all equal are dropped and further batches of B
 * prompts drawn until B informative groups are in hand or grpo.max_sample_batches batches were
 * drawn (then the step trains on the informative groups it has); the reward metrics cover
 * every response sampled. */
static int sample_groups(trainer *t, int64_t step, const step_plan *p, step_rollouts *ro,
                         step_metrics *m, chord_err *err) {
    const job_grpo *g = &t->cfg->grpo;
    int rounds = g->filter_groups ? (int)g->max_sample_batches : 1, informative = 0;
    /* Several ranks: each samples its share of every round's B prompts. The step keeps its
     * first B informative groups in the order one process would (round by round, and within a
     * round in prompt order, i.e. rank by rank): `pos` holds the step position of each of this
     * rank's informative groups, `quota` how many of them are among the first B. */
    const int R = n_ranks(t), me = dist_rank(t->env->dist);
    int lo = 0, B = rank_share(t, p->B, &lo), quota = 0, n_pos = 0, rc = -1;
    int *pos = NULL;
    size_t pos_cap = 0;
    double *counts = R > 1 ? calloc((size_t)R, sizeof *counts) : NULL;
    int64_t drawn = 0; /* the step's prompts so far, every rank's share */
    if (R > 1 && !counts) return oom(err);
    for (int r = 0; r < rounds && (r == 0 || informative < p->B); r++) {
        step_rollouts more;
        memset(&more, 0, sizeof more);
        int first_group = ro->B;
        int frc = collect_rollouts(t, step, r, drawn, lo, B, p->G, &more, m, err) != 0 ||
                          score_rollouts(t, &more, m, err) != 0
                      ? -1
                      : 0;
        if (frc == 0 && step_rollouts_append(ro, &more) != 0) frc = oom(err);
        step_rollouts_free(&more);
        if (frc != 0) goto done;
        drawn += p->B;
        int mine = 0;
        for (int k = first_group; k < ro->B; k++)
            mine += group_informative(ro, p->G, k);
        if (R == 1) {
            informative += mine;
            continue;
        }
        memset(counts, 0, (size_t)R * sizeof *counts);
        counts[me] = mine;
        if (sum_over_ranks(t, counts, (size_t)R, "informative groups", err) != 0) goto done;
        int prior = informative, round_total = 0;
        for (int q = 0; q < R; q++) {
            prior += q < me ? (int)counts[q] : 0;
            round_total += (int)counts[q];
        }
        if (mine > 0) {
            int *grown = chord_array_grow(pos, &pos_cap, (size_t)(n_pos + mine), sizeof *pos);
            if (!grown) {
                oom(err);
                goto done;
            }
            pos = grown;
        }
        for (int i = 0; i < mine; i++) {
            pos[n_pos++] = prior + i;
            quota += prior + i < p->B;
        }
        informative += round_total;
    }
    if (reward_metrics(t, ro, m, err) != 0) goto done;
    ro->drawn = drawn;
    if (g->filter_groups) {
        m->has_filter = 1;
        m->prompts_drawn = (double)drawn;
        m->groups_dropped = (double)(drawn - (informative < p->B ? informative : p->B));
        step_rollouts_keep_informative(ro, p->G, R > 1 ? quota : p->B);
        if (R > 1) { /* the kept groups are the first `quota` informative ones */
            ro->step_group = pos;
            pos = NULL;
        }
    }
    rc = 0;
done:
    free(pos);
    free(counts);
    return rc;
}

/* Moves src's groups behind dst's (src ends empty); -1 when out of memory (both stay whole). */
static int step_rollouts_append(step_rollouts *dst, step_rollouts *src) {
    if (dst->B == 0) {
        int64_t drawn = dst->drawn, tokens = dst->tokens;
        *dst = *src;
        dst->drawn += drawn;
        dst->tokens += tokens;
        memset(src, 0, sizeof *src);
        return 0;
    }
    int n = dst->rr.n + src->rr.n, B = dst->B + src->B;
    size_t cap_b = (size_t)dst->B,
           cap[4] = {(size_t)dst->rr.n, (size_t)dst->rr.n, (size_t)dst->rr.n, (size_t)dst->rr.n};
    /* each growth that succeeds replaces its array; a failure leaves both whole (buf.h) */
    trainer_item *prompts = chord_array_grow(dst->prompts, &cap_b, (size_t)B, sizeof *prompts);
    if (prompts) dst->prompts = prompts;
    rollout_seq *seq = chord_array_grow(dst->rr.seq, &cap[0], (size_t)n, sizeof *seq);
    if (seq) dst->rr.seq = seq;
    char **completions =
        chord_array_grow(dst->completions, &cap[1], (size_t)n, sizeof *completions);
    if (completions) dst->completions = completions;
    reward_result *res = chord_array_grow(dst->res, &cap[2], (size_t)n, sizeof *res);
    if (res) dst->res = res;
    uint8_t *excluded = chord_array_grow(dst->excluded, &cap[3], (size_t)n, 1);
    if (excluded) dst->excluded = excluded;
    if (!prompts || !seq || !completions || !res || !excluded) return -1;
    memcpy(dst->prompts + dst->B, src->prompts, (size_t)src->B * sizeof *prompts);
    for (int i = 0; i < src->rr.n; i++) {
        seq[dst->rr.n + i] = src->rr.seq[i];
        seq[dst->rr.n + i].prompt += dst->B;
    }
    memcpy(completions + dst->rr.n, src->completions, (size_t)src->rr.n * sizeof *completions);
    memcpy(res + dst->rr.n, src->res, (size_t)src->rr.n * sizeof *res);
    memcpy(excluded + dst->rr.n, src->excluded, (size_t)src->rr.n);
    dst->B = B;
    dst->rr.n = n;
    dst->rr.tokens += src->rr.tokens;
    dst->drawn += src->drawn;
    dst->tokens += src->tokens;
    /* src's arrays are empty shells now: free them without their (moved) contents */
    free(src->prompts);
    free(src->rr.seq);
    free(src->completions);
    free(src->res);
    free(src->excluded);
    memset(src, 0, sizeof *src);
    return 0;
}

/* Phase 3: the step's training sequences: prompt + response for every decided rollout (targets
 * of kind POLICY with their rollout log-probs; the advantage comes in phase 5), then the next E
 * expert records (targets of kind EXPERT where the record's mask marks assistant tokens). */
typedef struct step_batch {
    train_seq *seqs; /* the rollouts' first, then the expert records */
    int n;
    int64_t n_policy, n_expert;           /* target tokens of each kind */
    int64_t n_policy_seqs, n_expert_seqs; /* sequences with targets of each kind */
    double kl_mean; /* mean KL estimate over the policy tokens at rollout time (phase 4) */
} step_batch;

static void step_batch_free(step_batch *b) {
    for (int i = 0; i < b->n; i++)
        train_seq_free(&b->seqs[i]);
    free(b->seqs);
    memset(b, 0, sizeof *b);
}

static int add_rollout_seqs(const step_rollouts *ro, job_overlong_mode overlong, step_batch *b) {
    for (int i = 0; i < ro->rr.n; i++) {
        const rollout_seq *q = &ro->rr.seq[i];
        const trainer_item *pi = &ro->prompts[q->prompt];
        if (ro->excluded[i]) continue; /* unverified: kept out of the loss entirely */
        /* DAPO's overlong filtering: a truncated response keeps its place in its group's
         * advantages but gets no gradient and leaves the denominators */
        if (overlong == JOB_OVERLONG_MASK && q->truncated) continue;
        train_seq *s = &b->seqs[b->n++];
        if (train_seq_alloc(s, pi->len + q->len, i) != 0) return -1;
        s->group = q->prompt;
        s->prompt_len = pi->len;
        memcpy(s->tokens, pi->ids, (size_t)pi->len * sizeof *s->tokens);
        memcpy(s->tokens + pi->len, q->tokens, (size_t)q->len * sizeof *s->tokens);
        for (int j = 0; j < q->len; j++) {
            s->kind[pi->len - 1 + j] = CHORD_TOKEN_POLICY;
            s->logp_old[pi->len - 1 + j] = q->logp[j];
        }
        s->targets = q->len;
        b->n_policy += q->len; /* the advantage comes with compute_advantages */
        b->n_policy_seqs += q->len > 0;
    }
    return 0;
}

static int add_expert_seqs(trainer *t, int lo, int E, step_batch *b, chord_err *err) {
    for (int i = 0; i < E; i++) {
        trainer_item it;
        memset(&it, 0, sizeof it);
        if (trainer_dataset_item(&t->expert, t->expert_cursor + lo + i, t->tok, &t->tpl, 0, &it,
                                 err) != 0)
            return -1;
        train_seq *s = &b->seqs[b->n++];
        if (train_seq_alloc(s, it.len, -1) != 0) {
            trainer_item_free(&it);
            return oom(err);
        }
        memcpy(s->tokens, it.ids, (size_t)it.len * sizeof *s->tokens);
        for (int j = 1; j < it.len; j++)
            if (it.mask[j]) {
                s->kind[j - 1] = CHORD_TOKEN_EXPERT;
                s->targets++;
            }
        b->n_expert += s->targets;
        b->n_expert_seqs += s->targets > 0;
        trainer_item_free(&it);
    }
    return 0;
}

static int build_sequences(trainer *t, const step_plan *p, const step_rollouts *ro, step_batch *b,
                           step_metrics *m, chord_err *err) {
    b->seqs = calloc((size_t)(ro->rr.n + p->E + 1), sizeof *b->seqs);
    if (!b->seqs) return oom(err);
    if (add_rollout_seqs(ro, t->cfg->sampling.overlong, b) != 0) return oom(err);
    int lo = 0, E = rank_share(t, p->E, &lo);
    if (add_expert_seqs(t, lo, E, b, err) != 0) return -1;
    m->policy_tokens = (double)b->n_policy;
    m->expert_tokens = (double)b->n_expert;
    return 0;
}

/* Phase 4 (jobs with grpo.kl_coef > 0): the reference policy's log-probs of every response
 * token (a forward of the frozen starting weights, same temperature as the policy's), and per
 * response Σ_t KL_t of the chosen estimator at the rollout's log-probs — the reward penalty of
 * grpo.kl_in_reward, and the step's `kl` metric in that mode. */
static int reference_logprobs(trainer *t, step_rollouts *ro, step_batch *b, chord_err *err) {
    int n_roll = 0;
    while (n_roll < b->n && b->seqs[n_roll].rollout >= 0)
        n_roll++;
    ro->kl = calloc((size_t)(ro->rr.n > 0 ? ro->rr.n : 1), sizeof *ro->kl);
    if (!ro->kl) return oom(err);
    chord_buf scratch = {0};
    int rc = -1;
    for (int first = 0, next; first < n_roll; first = next) {
        micro_batch_rows r;
        next = pack_micro_batch(b->seqs, first, n_roll, micro_batch_budget(t->cfg),
                                t->cfg->grpo.share_prompt, &scratch, &r);
        if (next < 0) {
            oom(err);
            goto done;
        }
        int lora_off = t->ref_m == t->m; /* LoRA: the base alone is the reference */
        if (lora_off && model_lora_set_enabled(t->m, 0, err) != 0) goto done;
        int frc = model_forward(t->ref_m, &r.batch, t->inv_temp, r.logp, NULL, err);
        if (lora_off && model_lora_set_enabled(t->m, 1, err) != 0) goto done;
        if (frc != 0) goto done;
        for (int s = 0; s < r.n_seqs; s++) { /* rows back to their sequence's positions */
            train_seq *q = &b->seqs[first + s];
            for (int j = 0; j < q->len; j++)
                if (q->kind[j] == CHORD_TOKEN_POLICY) q->ref_logp[j] = r.logp[r.seq_off[s] + j];
        }
    }
    double kl_total = 0;
    int64_t n_tok = 0;
    chord_kl_estimator est = (chord_kl_estimator)t->cfg->grpo.kl_estimator;
    for (int i = 0; i < n_roll; i++) {
        const train_seq *q = &b->seqs[i];
        double sum = 0, kl_t;
        for (int j = 0; j < q->len; j++)
            if (q->kind[j] == CHORD_TOKEN_POLICY) {
                chord_kl_token(est, q->logp_old[j], q->ref_logp[j], &kl_t);
                sum += kl_t;
                n_tok++;
            }
        ro->kl[q->rollout] = sum;
        kl_total += sum;
    }
    double kl[2] = {kl_total, (double)n_tok};
    if (sum_over_ranks(t, kl, 2, "reference KL", err) != 0) goto done;
    b->kl_mean = kl[1] > 0 ? kl[0] / kl[1] : 0.0;
    rc = 0;
done:
    chord_buf_free(&scratch);
    return rc;
}

/* Phase 5: GRPO advantages within each prompt's group (loss.h). A verifier that could not
 * decide (error / timeout) says nothing about the response: such samples leave their group
 * (the advantages are computed over the decided ones), are not trained on, and count only in
 * verifier_error_rate. A group of G >= 2 with fewer than two decided samples gets no signal
 * (A = 0, counted in zero_adv_groups): group_kept. */

/* The reward a response's advantage is computed from: the verifier's, less kl_coef · Σ_t KL_t
 * when the KL is a reward penalty (grpo.kl_in_reward), plus the overlong penalty
 * (sampling.overlong "penalty"). reward_mean and accuracy stay the verifier's. */
static float shaped_reward(const trainer *t, const step_rollouts *ro, int i) {
    double r = ro->res[i].reward;
    if (ro->kl && t->cfg->grpo.kl_in_reward) r -= t->cfg->grpo.kl_coef * ro->kl[i];
    const job_sampling *s = &t->cfg->sampling;
    if (s->overlong == JOB_OVERLONG_PENALTY)
        r += chord_overlong_penalty(ro->rr.seq[i].len, s->max_new_tokens, s->overlong_buffer,
                                    s->overlong_penalty);
    return (float)r;
}

static int compute_advantages(trainer *t, int64_t step, const step_plan *p, step_rollouts *ro,
                              step_batch *b, step_metrics *m, chord_err *err) {
    double t0 = chord_now();
    int n = ro->rr.n, G = p->G, B = ro->B;
    ro->adv = calloc((size_t)n, sizeof *ro->adv);
    float *r = malloc((size_t)n * sizeof *r), *a = malloc((size_t)n * sizeof *a);
    int *sizes = malloc((size_t)B * sizeof *sizes);
    int rc = -1, n_groups = 0, n_dense = 0, n_error = 0;
    int64_t zero_adv = 0, starved = 0;
    if (!ro->adv || !r || !a || !sizes) {
        oom(err);
        goto done;
    }
    for (int g = 0; g < B; g++) { /* the decided rewards, densely, group by group */
        int k;
        if (!group_kept(ro->excluded, G, g, &k)) {
            starved++;
            continue;
        }
        for (int j = 0, d = 0; j < G; j++)
            if (!ro->excluded[g * G + j]) r[n_dense + d++] = shaped_reward(t, ro, g * G + j);
        sizes[n_groups++] = k;
        n_dense += k;
    }
    if (n_groups > 0 && chord_grpo_advantages(r, sizes, (size_t)n_groups,
                                              t->cfg->grpo.norm_adv_by_std, a, &zero_adv, err) != 0)
        goto done;
    for (int g = 0, d = 0; g < B; g++) {
        int k, kept = group_kept(ro->excluded, G, g, &k);
        for (int j = 0; j < G; j++) {
            int i = g * G + j;
            ro->adv[i] = (kept && !ro->excluded[i]) ? a[d++] : 0.0f;
        }
    }
    for (int i = 0; i < b->n; i++) /* the rollouts' sequences get their response's advantage */
        if (b->seqs[i].rollout >= 0) b->seqs[i].adv = ro->adv[b->seqs[i].rollout];
    for (int i = 0; i < n; i++)
        n_error += ro->excluded[i];
    if (n_error > 0)
        logline(t,
                "step %lld: %d of %d samples could not be verified (error/timeout): "
                "left out of the advantages and the loss",
                (long long)step, n_error, n);
    double z[2] = {(double)(zero_adv + starved), (double)B};
    if (sum_over_ranks(t, z, 2, "zero-advantage groups", err) != 0) goto done;
    m->zero_adv_groups = z[1] > 0 ? z[0] / z[1] : 0.0;
    m->time_reward += chord_now() - t0;
    rc = 0;
done:
    free(r);
    free(a);
    free(sizes);
    return rc;
}

/* A response with advantage 0 has ℓ_t = max(−0·ratio, −0·clip(ratio)) = 0 at every token: its
 * gradient is exactly zero, so without an entropy bonus or a KL loss term it needs no
 * forward/backward. Its tokens still count in the GRPO denominator (ALGORITHM.md), and enter the
 * step's metrics with logp_θ = logp_old — what the forward returns before the update (the
 * rollout and the trainer share the engine; test_rollout.c checks they agree to fp32
 * round-off). Early on (every reward 0) and late (every group right) this removes most of the
 * on-policy compute. Moves those sequences behind the others: returns how many go through the
 * model; *skipped counts the others' policy tokens. */
static int partition_zero_advantage(step_batch *b, int64_t *skipped, chord_err *err) {
    train_seq *out = malloc((size_t)(b->n > 0 ? b->n : 1) * sizeof *out);
    if (!out) return oom(err);
    int kept = 0, n_skip = 0; /* stable: kept in order at the front, skipped in order behind */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < b->n; i++) {
            const train_seq *q = &b->seqs[i];
            int n_pol = 0;
            for (int j = 0; j < q->len; j++)
                n_pol += q->kind[j] == CHORD_TOKEN_POLICY;
            int skip = n_pol > 0 && q->adv == 0.0f;
            if (pass == 0 && !skip) out[kept++] = *q;
            if (pass == 1 && skip) {
                out[kept + n_skip++] = *q;
                *skipped += n_pol;
            }
        }
    memcpy(b->seqs, out, (size_t)b->n * sizeof *out);
    free(out);
    return kept;
}

/* Phase 6: the loss over every sequence (micro-batched forward + backward), then AdamW;
 * grpo.ppo_epochs times over the same batch (PPO's epochs: from the second on the policy is no
 * longer the rollout's, and the ratio and its clip matter). The KL to the reference is a loss
 * term unless it went into the rewards (grpo.kl_in_reward). The loss metrics are the last
 * epoch's, grad_norm the last update's. */
static int train_and_update(trainer *t, int64_t step, step_batch *b, step_metrics *m,
                            chord_err *err) {
    double t0 = chord_now();
    const job_config *cfg = t->cfg;
    /* the step's counts over every rank: each rank's loss is its share of the global one */
    double c[4] = {(double)b->n_policy, (double)b->n_expert, (double)b->n_policy_seqs,
                   (double)b->n_expert_seqs};
    t->cur_step = step;
    if (sum_over_ranks(t, c, 4, "token counts", err) != 0) return -1;
    m->policy_tokens = c[0];
    m->expert_tokens = c[1];
    chord_loss_params lp = chord_loss_params_for_job(cfg, m->mu, (int64_t)c[0], (int64_t)c[1],
                                                     (int64_t)c[2], (int64_t)c[3]);
    int kl_loss = t->ref_m && !cfg->grpo.kl_in_reward;
    int64_t train_tokens = 0, skipped = 0, shared = 0;
    /* a zero-advantage response still has a gradient with an entropy bonus or a KL term */
    int n_train = b->n;
    if (cfg->grpo.entropy_coef == 0.0 && !kl_loss &&
        (n_train = partition_zero_advantage(b, &skipped, err)) < 0)
        return -1;
    m->lr = sched_lr(cfg, step);
    t->cur_step = step;
    for (int64_t epoch = 0; epoch < cfg->grpo.ppo_epochs; epoch++) {
        t->cur_epoch = epoch;
        chord_loss_accum acc;
        chord_loss_accum_init(&acc);
        if (model_zero_grad(t->m, err) != 0) return -1;
        if (buckets_on(t)) buckets_reset(t);
        for (int i = n_train; i < b->n; i++)
            if (account_skipped(&b->seqs[i], &lp, &acc, err) != 0) return -1;
        shared = 0; /* one pass's */
        if (train_on(t, b->seqs, n_train, &lp, kl_loss, &acc, &train_tokens, &shared, err) != 0)
            return -1;
        if (reduce_update(t, &acc, err) != 0) return -1;
        if (chord_loss_finish(&lp, &acc, &m->loss, err) != 0) return -1;
        if (optimizer_step(t, m->lr, &m->grad_norm, err) != 0) return -1;
    }
    if (t->ref_m && !kl_loss) m->loss.kl = b->kl_mean; /* the penalty's, at rollout time */
    double v[3] = {(double)skipped, (double)shared, (double)train_tokens};
    if (sum_over_ranks(t, v, 3, "training counts", err) != 0) return -1;
    m->policy_tokens_skipped = v[0];
    m->prompt_rows_shared = v[1];
    m->time_train = chord_now() - t0;
    m->tps_train = m->time_train > 0 ? v[2] / m->time_train : 0.0;
    t->rank_local[2] = (double)train_tokens;
    t->rank_local[3] = m->time_train;
    return 0;
}

/* Several ranks: every rank's samples (JSON, trainer_sample_json + "group") gathered to rank 0,
 * which reports them all in the step's order, group by group, as one process would. */
static int report_gathered(trainer *t, int64_t step, const trainer_sample *s, int n,
                           chord_err *err) {
    int R = n_ranks(t), rc = -1, total = 0;
    json_t *mine = json_array(), **arrays = calloc((size_t)R, sizeof *arrays);
    char *text = NULL, *all = NULL;
    size_t *lens = calloc((size_t)R, sizeof *lens);
    trainer_sample *out = NULL;
    int *filled = NULL;
    if (!mine || !arrays || !lens) {
        oom(err);
        goto done;
    }
    for (int i = 0; i < n; i++) {
        json_t *o = trainer_sample_json(&s[i]);
        if (!o || json_object_set_new(o, "group", json_integer(s[i].group)) ||
            json_array_append_new(mine, o)) {
            oom(err);
            goto done;
        }
    }
    if (!(text = json_dumps(mine, JSON_COMPACT))) {
        oom(err);
        goto done;
    }
    char what[96];
    snprintf(what, sizeof what, "step %lld: samples", (long long)step);
    if (dist_gather_bytes(t->env->dist, text, strlen(text), 0, &all, lens, what, err) != 0)
        goto done;
    if (dist_rank(t->env->dist) != 0) {
        rc = 0;
        goto done;
    }
    for (int r = 0, off = 0; r < R; off += (int)lens[r], r++) {
        json_error_t je;
        arrays[r] = json_loadb(all + off, lens[r], 0, &je);
        if (!json_is_array(arrays[r])) {
            chord_err_setc(err, CHORD_E_INTERNAL, "%s: rank %d sent malformed samples: %s", what,
                           r, je.text);
            goto done;
        }
        total += (int)json_array_size(arrays[r]);
    }
    /* each group's G records go to its place in the step (groups 0 .. total / G - 1): with
     * grpo.filter_groups the kept groups of the ranks interleave */
    const int G = (int)t->cfg->grpo.group_size, n_groups = total / G;
    if (!(out = calloc((size_t)(total > 0 ? total : 1), sizeof *out)) ||
        !(filled = calloc((size_t)(n_groups > 0 ? n_groups : 1), sizeof *filled))) {
        oom(err);
        goto done;
    }
    for (int r = 0; r < R; r++) {
        size_t i;
        json_t *o;
        json_array_foreach(arrays[r], i, o) {
            json_int_t grp = json_integer_value(json_object_get(o, "group"));
            if (total % G != 0 || grp < 0 || grp >= n_groups || filled[grp] >= G) {
                chord_err_setc(err, CHORD_E_INTERNAL, "%s: rank %d sent a record of group %lld "
                               "(%d records in all, groups of %d)", what, r, (long long)grp,
                               total, G);
                goto done;
            }
            out[grp * G + filled[grp]++] = (trainer_sample){
                .kind = "rollout",
                .prompt = json_string_value(json_object_get(o, "prompt")),
                .completion = json_string_value(json_object_get(o, "completion")),
                .answer = json_string_value(json_object_get(o, "answer")),
                .reward = json_number_value(json_object_get(o, "reward")),
                .reason = json_string_value(json_object_get(o, "reason")),
                .group = (int)json_integer_value(json_object_get(o, "group")),
                .tokens = (int)json_integer_value(json_object_get(o, "tokens")),
                .truncated = json_is_true(json_object_get(o, "truncated"))};
        }
    }
    rc = 0;
    if (total > 0 && !t->local_failed && t->cb->on_samples(t->cb->user, step, out, total) != 0) {
        chord_err_setc(err, CHORD_E_IO, "trainer: storing the samples of step %lld failed",
                       (long long)step);
        rc = keep_failure(t, err);
    }
done:
    free(out);
    free(filled);
    for (int r = 0; arrays && r < R; r++)
        json_decref(arrays[r]);
    free(arrays);
    free(all);
    free(lens);
    free(text);
    json_decref(mine);
    return rc;
}

/* Phase 7: the step's rollouts as per-sample records (on_samples); with several ranks every
 * rank takes part (p->B > 0 on all of them) and rank 0 reports them all. */
static int report_samples(trainer *t, int64_t step, const step_plan *p, const step_rollouts *ro,
                          chord_err *err) {
    if (p->B == 0 || !t->cb || !t->cb->on_samples) return 0;
    if (ro->rr.n == 0 && n_ranks(t) == 1) return 0;
    int lo = 0;
    rank_share(t, p->B, &lo); /* groups are numbered in the whole step */
    trainer_sample *samples = calloc((size_t)(ro->rr.n > 0 ? ro->rr.n : 1), sizeof *samples);
    if (!samples) return oom(err);
    for (int i = 0; i < ro->rr.n; i++) {
        const rollout_seq *q = &ro->rr.seq[i];
        samples[i] = (trainer_sample){.kind = "rollout",
                                      .prompt = ro->prompts[q->prompt].text,
                                      .completion = ro->completions[i],
                                      .answer = ro->prompts[q->prompt].answer,
                                      .reward = ro->res[i].reward,
                                      .reason = reward_reason_name(ro->res[i].reason),
                                      .group = ro->step_group ? ro->step_group[q->prompt]
                                                              : lo + q->prompt,
                                      .tokens = q->len,
                                      .truncated = q->truncated};
    }
    int rc;
    if (n_ranks(t) > 1)
        rc = report_gathered(t, step, samples, ro->rr.n, err);
    else if (t->cb->on_samples(t->cb->user, step, samples, ro->rr.n) != 0)
        rc = chord_err_setc(err, CHORD_E_IO, "trainer: storing the samples of step %lld failed",
                            (long long)step);
    else
        rc = 0;
    free(samples);
    return rc;
}

static int run_step(trainer *t, int64_t step, chord_err *err) {
    double t0 = chord_now();
    step_metrics *m = &t->metrics;
    memset(m, 0, sizeof *m);
    m->has_kl = t->ref_m != NULL;
    m->has_share = t->cfg->grpo.share_prompt;
    step_plan plan = plan_step(t->cfg, step);
    t->cur_step = step; /* names the step's collectives */
    step_rollouts ro;
    step_batch batch;
    memset(&ro, 0, sizeof ro);
    memset(&batch, 0, sizeof batch);
    int rc = -1;
    if (plan.B > 0 && sample_groups(t, step, &plan, &ro, m, err) != 0) goto done;
    /* μ of this step: the adaptive rule reads the step's mean reward */
    m->mu = !plan.do_sft ? 0.0 : !plan.do_rl ? 1.0 : sched_mu(t->cfg, step, m->reward_mean);
    if (build_sequences(t, &plan, &ro, &batch, m, err) != 0) goto done;
    if (plan.B > 0 && ((t->ref_m && reference_logprobs(t, &ro, &batch, err) != 0) ||
                       compute_advantages(t, step, &plan, &ro, &batch, m, err) != 0))
        goto done;
    if (train_and_update(t, step, &batch, m, err) != 0) goto done;
    if (n_ranks(t) > 1 && rank_throughput(t, err) != 0) goto done;
    t->prompt_cursor += ro.drawn;
    t->expert_cursor += plan.E;
    m->time_step = chord_now() - t0;
    rc = report_samples(t, step, &plan, &ro, err);
done:
    step_batch_free(&batch);
    step_rollouts_free(&ro);
    return rc;
}

/* ---- evaluation ---------------------------------------------------------------------------------
 */

int trainer_evaluate(model *m, const tok_tokenizer *tok, const chat_template *tpl,
                     trainer_dataset *ds, const reward_verifier *verifier,
                     const trainer_eval_params *p, trainer_eval_result *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    int64_t n_prompts = ds->n;
    if (p->max_prompts > 0 && n_prompts > p->max_prompts) n_prompts = p->max_prompts;
    if (n_prompts <= 0) return chord_err_set(err, "eval: the eval set is empty");
    int K = p->k > 0 ? p->k : 1;
    rollout_engine *eng = rollout_engine_new(m);
    if (!eng) return chord_err_setc(err, CHORD_E_INTERNAL, "eval: out of memory");
    int rc = -1;
    const int chunk = 64;
    int64_t correct = 0, total = 0, pass = 0, errors = 0;
    double t0 = chord_now();
    for (int64_t first = 0; first < n_prompts; first += chunk) {
        int n = (int)(n_prompts - first < chunk ? n_prompts - first : chunk);
        trainer_item items[64];
        memset(items, 0, sizeof items);
        const int32_t *pids[64];
        int plens[64];
        rollout_result rr = {0};
        int ok = 1;
        for (int i = 0; i < n && ok; i++) {
            /* eval reads records in file order (no shuffling) */
            if (trainer_dataset_item_at(ds, first + i, tok, tpl, 1, &items[i], err) != 0) ok = 0;
            pids[i] = items[i].ids;
            plens[i] = items[i].len;
        }
        rollout_params rp = {.group_size = K,
                             .temperature = (float)p->temperature,
                             .top_p = 1.0f,
                             .max_new_tokens = p->max_new_tokens,
                             .stop_ids = p->stop_ids,
                             .n_stop = p->n_stop,
                             .seed = p->seed,
                             .stream = p->stream + (uint64_t)first};
        if (ok && rollout_generate(eng, pids, plens, n, &rp, &rr, err) != 0) ok = 0;
        for (int i = 0; ok && i < n; i++) {
            int any = 0;
            for (int k = 0; k < K && ok; k++) {
                const rollout_seq *q = &rr.seq[i * K + k];
                char *text = NULL;
                if (trainer_decode_response(tok, q->tokens, q->len, &text, err) != 0) {
                    ok = 0;
                    break;
                }
                reward_result res;
                reward_score(verifier, items[i].text, text, items[i].answer, q->truncated != 0,
                             &res);
                if (p->on_sample) {
                    trainer_sample s = {.kind = "eval",
                                        .prompt = items[i].text,
                                        .completion = text,
                                        .answer = items[i].answer,
                                        .reward = res.reward,
                                        .reason = reward_reason_name(res.reason),
                                        .group = (int)(first + i),
                                        .tokens = q->len,
                                        .truncated = q->truncated};
                    p->on_sample(p->user, &s);
                }
                free(text);
                errors += res.reason == REWARD_REASON_ERROR || res.reason == REWARD_REASON_TIMEOUT;
                correct += res.correct ? 1 : 0;
                any |= res.correct ? 1 : 0;
                total++;
            }
            pass += any;
        }
        rollout_result_free(&rr);
        for (int i = 0; i < n; i++)
            trainer_item_free(&items[i]);
        if (!ok) goto done;
    }
    out->prompts = n_prompts;
    out->k = K;
    out->accuracy = total ? (double)correct / (double)total : 0.0;
    out->pass_at_k = (double)pass / (double)n_prompts;
    out->errors = errors;
    out->seconds = chord_now() - t0;
    rc = 0;
done:
    rollout_engine_free(eng);
    return rc;
}

/* ---- checkpoints ----------------------------------------------------------------------------- */

static int write_json_file(const char *dir, const char *name, json_t *doc, chord_err *err) {
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    if (!text) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", name);
    int rc = chord_write_file_atomic(path, text, strlen(text), err);
    free(text);
    return rc;
}

/* ZeRO-1: every rank's slice of the moments gathered to rank 0 (*adam_m, *adam_v: whole,
 * malloc'd there; NULL elsewhere), so that the checkpoint is the one without it. Every rank
 * calls it. */
static int gather_moments(trainer *t, int64_t step, float **adam_m, float **adam_v,
                          chord_err *err) {
    *adam_m = *adam_v = NULL;
    const size_t n = model_trainable_params(t->m);
    size_t lo, hi;
    dist_slice(t->env->dist, n, dist_rank(t->env->dist), &lo, &hi);
    const int root = dist_rank(t->env->dist) == 0;
    float *mine = malloc(2 * (hi - lo + 1) * sizeof *mine); /* this rank's m, then its v */
    float *m = root ? malloc((n + 1) * sizeof *m) : NULL;
    float *v = root ? malloc((n + 1) * sizeof *v) : NULL;
    int rc = -1;
    if (!mine || (root && (!m || !v))) {
        oom(err);
        goto done;
    }
    char name[128];
    snprintf(name, sizeof name, "step %lld: optimizer state", (long long)step);
    float *mine_v = mine + (hi - lo + 1);
    if (model_read_optimizer_shard(t->m, mine, mine_v, err) != 0 ||
        dist_gather_f32(t->env->dist, mine, n, m, 0, name, err) != 0 ||
        dist_gather_f32(t->env->dist, mine_v, n, v, 0, name, err) != 0)
        goto done;
    *adam_m = m;
    *adam_v = v;
    m = v = NULL;
    rc = 0;
done:
    free(mine);
    free(m);
    free(v);
    return rc;
}

static int write_checkpoint(trainer *t, int64_t step, const float *adam_m, const float *adam_v,
                            chord_err *err);

static int save_checkpoint(trainer *t, int64_t step, chord_err *err) {
    float *adam_m = NULL, *adam_v = NULL;
    if (zero1(t) && gather_moments(t, step, &adam_m, &adam_v, err) != 0) return -1;
    int rc = t->local_failed ? 0 : write_checkpoint(t, step, adam_m, adam_v, err);
    if (rc != 0) rc = keep_failure(t, err); /* rank 0's disk: the others wrote nothing */
    free(adam_m);
    free(adam_v);
    return rc;
}

/* adam_m, adam_v: the whole moments on the host (ZeRO-1's, gathered), or NULL: the model's. */
static int write_checkpoint(trainer *t, int64_t step, const float *adam_m, const float *adam_v,
                            chord_err *err) {
    if (!t->cb || !t->cb->checkpoint_begin || !t->cb->checkpoint_commit) return 0;
    char dir[4096];
    if (t->cb->checkpoint_begin(t->cb->user, step, dir, sizeof dir, err) != 0) return -1;
    /* a LoRA job's checkpoint holds the adapter alone (a PEFT directory naming its base) */
    char base[PATH_MAX];
    const char *base_name = t->env->model_dir;
    if (base_name && realpath(base_name, base)) base_name = base; /* found from anywhere */
    if (t->m->lora ? model_lora_save(t->m, dir, base_name, err)
                   : model_save(t->m, dir, ST_F32, 0, err))
        goto abort;
    /* the tokenizer files (the embedded default's too), so the checkpoint is a loadable model */
    if (tok_save(t->tok, dir, err) != 0) {
        chord_err_prefix(err, "checkpoint: tokenizer");
        goto abort;
    }
    size_t n = model_trainable_params(t->m);
    char path[4096 + 64];
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if ((adam_m ? model_save_optimizer_from(t->m, path, adam_m, adam_v, err)
                : model_save_optimizer(t->m, path, err)) != 0)
        goto abort;
    json_t *state = json_pack("{s:I, s:i, s:I, s:I, s:I, s:I}", "step", (json_int_t)step, "adam_t",
                              model_adam_steps(t->m), "prompt_cursor", (json_int_t)t->prompt_cursor,
                              "expert_cursor", (json_int_t)t->expert_cursor, "seed",
                              (json_int_t)t->cfg->seed, "num_params", (json_int_t)n);
    json_t *job = jobconfig_to_json(t->cfg);
    int wrc = (state && job) ? 0 : -1;
    if (wrc == 0) wrc = write_json_file(dir, "trainer_state.json", state, err);
    if (wrc == 0) wrc = write_json_file(dir, "job.json", job, err);
    json_decref(state);
    json_decref(job);
    if (wrc != 0) {
        if (!err || !err->msg[0])
            chord_err_setc(err, CHORD_E_INTERNAL, "checkpoint: out of memory");
        goto abort;
    }
    if (t->cb->checkpoint_commit(t->cb->user, step, dir, err) != 0) return -1;
    logline(t, "checkpoint step %lld written", (long long)step);
    return 0;
abort: /* a partial directory (disk full, say) is never left behind nor taken for a checkpoint */
    if (t->cb->checkpoint_abort) t->cb->checkpoint_abort(t->cb->user, step, dir);
    return -1;
}

static int load_resume_state(trainer *t, const char *dir, chord_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/trainer_state.json", dir);
    json_error_t je;
    json_t *state = json_load_file(path, 0, &je);
    if (!state) return chord_err_setc(err, CHORD_E_IO, "%s: %s", path, je.text);
    json_int_t step = 0, pc = 0, ec = 0, np = 0;
    int adam_t = 0;
    int bad = json_unpack(state, "{s:I, s:i, s:I, s:I, s:I}", "step", &step, "adam_t", &adam_t,
                          "prompt_cursor", &pc, "expert_cursor", &ec, "num_params", &np);
    json_decref(state);
    if (bad || step < 0 || (size_t)np != model_trainable_params(t->m))
        return chord_err_setc(err, CHORD_E_IO, "%s: malformed or for another model", path);
    t->step = step;
    t->prompt_cursor = pc;
    t->expert_cursor = ec;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (model_load_optimizer(t->m, path, err) != 0) return -1;
    if (model_adam_steps(t->m) != adam_t)
        return chord_err_setc(err, CHORD_E_IO, "%s: optimizer step %d != trainer state %d", dir,
                              model_adam_steps(t->m), adam_t);
    return 0;
}

/* ---- set-up -----------------------------------------------------------------------------------
 */

static void add_stop(int32_t *ids, int *n, int max, int vocab, int32_t id) {
    if (id < 0 || id >= vocab) return;
    for (int i = 0; i < *n; i++)
        if (ids[i] == id) return;
    if (*n < max) ids[(*n)++] = id;
}

int trainer_stop_ids(const model *m, const tok_tokenizer *tok, int32_t *out, int max) {
    int n = 0, V = m->cfg.vocab_size;
    add_stop(out, &n, max, V, tok_eos_id(tok));
    for (int i = 0; i < m->cfg.n_eos; i++)
        add_stop(out, &n, max, V, m->cfg.eos_token_ids[i]);
    static const char *eot[] = {"<|im_end|>", "<|eot_id|>", "<|endoftext|>"};
    for (size_t i = 0; i < sizeof eot / sizeof eot[0]; i++)
        add_stop(out, &n, max, V, tok_token_to_id(tok, eot[i]));
    return n;
}

/* Refuses a job whose model, optimizer state, activations and rollout KV caches cannot fit in
 * the device's free memory (or the operator's limit), with the figures (mem_estimate.h: the
 * estimate the service already checked at submission) instead of a failed allocation half-way
 * through a step. A backend that cannot tell its free memory is trusted. */
static int check_fits(const trainer_env *env, const model_config *mc, const job_config *cfg,
                      double *need, chord_err *err) {
    size_t free_b = 0, total_b = 0;
    double free_bytes =
        ops_mem_info(env->ops, &free_b, &total_b) == 0 && free_b > 0 ? (double)free_b : -1.0;
    char device[32];
    if (env->ops->device_index >= 0)
        snprintf(device, sizeof device, "cuda:%d", env->ops->device_index);
    else
        snprintf(device, sizeof device, "%s", env->ops->be->name);
    mem_estimate e;
    mem_budget b;
    mem_estimate_job(mc, cfg, mem_prompt_tokens_of_file(env->prompts_path),
                     mem_prompt_tokens_of_file(env->expert_path),
                     mem_prompt_tokens_of_file(env->eval_path), &e);
    if (env->zero && dist_size(env->dist) > 1) mem_estimate_zero1(&e, dist_size(env->dist));
    mem_budget_make(&b, device, free_bytes, (double)env->memory_limit);
    *need = mem_estimate_need(&e, &b);
    return mem_estimate_check(&e, &b, err);
}

/* bootstrap_spec.before_load: the job's memory estimate against the device, before the
 * weights are allocated. */
static int check_fits_hook(void *user, const model_config *mc, const tok_tokenizer *tok,
                           const chat_template *tpl, chord_err *err) {
    (void)tok;
    (void)tpl;
    trainer *t = user;
    return check_fits(t->env, mc, t->cfg, &t->mem_need, err);
}

static int setup(trainer *t, chord_err *err) {
    const job_config *cfg = t->cfg;
    const trainer_env *env = t->env;
    if (n_ranks(t) > 1) { /* every rank samples at least one prompt a step */
        if (jobconfig_uses_rollouts(cfg->algorithm) && cfg->grpo.prompts_per_step < n_ranks(t))
            return chord_err_set(err,
                                 "grpo.prompts_per_step: %lld prompts cannot be shared by %d "
                                 "ranks (at least one each)",
                                 (long long)cfg->grpo.prompts_per_step, n_ranks(t));
    }
    /* model and tokenizer (bootstrap.h): a resumed job's weights come from its checkpoint (a
     * LoRA job's base from the model, its adapter from the checkpoint) */
    const int lora = cfg->lora.rank > 0;
    bootstrap_spec spec = {.dir = env->resume_dir && !lora ? env->resume_dir : env->model_dir,
                           .init_config = cfg->model_init_config,
                           .init_seed = cfg->model_init_seed,
                           .tokenizer_dir = env->tokenizer_dir,
                           .before_load = check_fits_hook,
                           .user = t,
                           .bases = lora ? env->bases : NULL}; /* a LoRA base is frozen */
    bootstrap_model *b = &t->boot; /* closed when the run ends */
    ops_mem_reset_peak(env->ops);  /* memory/peak_mib: this job's, from here */
    if (bootstrap_open(&spec, env->ops, b, err) != 0) return -1;
    t->m = b->m;
    t->tok = b->tok;
    t->tpl = b->tpl;
    memcpy(t->stop_ids, b->stop_ids, sizeof t->stop_ids);
    t->n_stop = b->n_stop;
    if (t->n_stop == 0)
        logline(t, "warning: the tokenizer has no EOS token; responses end at max_new_tokens");
    if (t->m->lora) /* the model directory was itself an adapter (bootstrap.h) */
        return chord_err_set(err,
                             "model: %s is a LoRA adapter; start the job from its base "
                             "(with a \"lora\" section) or from a merged model",
                             env->model_dir ? env->model_dir : "(init)");
    if (lora) {
        model_lora_config lc = {.rank = (int)cfg->lora.rank,
                                .alpha = cfg->lora.alpha,
                                .targets = cfg->lora.targets,
                                .train_embeddings = cfg->lora.train_embeddings};
        if (env->resume_dir ? model_lora_load(t->m, env->resume_dir, err)
                            : model_lora_attach(t->m, &lc, cfg->seed, err))
            return chord_err_prefix(err, "lora");
        if (env->resume_dir && (t->m->lora == NULL || model_trainable_params(t->m) == 0))
            return chord_err_set(err, "lora: the checkpoint holds no adapter");
    }

    if (zero1(t)) { /* before any moment exists (a resumed job's are loaded below) */
        const size_t n = model_trainable_params(t->m);
        size_t lo, hi;
        dist_slice(env->dist, n, dist_rank(env->dist), &lo, &hi);
        if (model_set_optimizer_shard(t->m, lo, hi, err) != 0) return -1;
        logline(t,
                "ZeRO-1: AdamW moments of %zu of the %zu trainable parameters on each rank "
                "(rank 0: [%zu, %zu)): %.1f MB per rank instead of %.1f MB",
                hi - lo, n, lo, hi, 8.0 * (double)(hi - lo) / 1e6, 8.0 * (double)n / 1e6);
    }

    /* the reference policy of the KL: the job's starting weights (never a resumed checkpoint's),
     * frozen — no gradients or optimizer state are ever allocated for it */
    if (cfg->grpo.kl_coef > 0.0 && lora) {
        t->ref_m = t->m; /* the base under the adapter: no second copy */
    } else if (cfg->grpo.kl_coef > 0.0) {
        bootstrap_spec rs = {.dir = env->model_dir,
                             .init_config = cfg->model_init_config,
                             .init_seed = cfg->model_init_seed,
                             .tokenizer_dir = env->tokenizer_dir,
                             .bases = env->bases}; /* frozen: shared with other jobs */
        if (bootstrap_open(&rs, env->ops, &t->ref, err) != 0)
            return chord_err_prefix(err, "grpo.kl_coef: the reference policy");
        t->ref_m = t->ref.m;
    }
    if (reward_verifier_new(cfg->reward, &t->verifier, err) != 0) return -1;
    t->engine = rollout_engine_new(t->m);
    if (!t->engine) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    double temp = cfg->sampling.temperature;
    t->inv_temp = temp > 0 ? (float)(1.0 / temp) : 1.0f;

    if (jobconfig_uses_rollouts(cfg->algorithm)) {
        if (!env->prompts_path)
            return chord_err_set(err, "data.prompts: required by %s",
                                 jobconfig_algorithm_name(cfg->algorithm));
        if (trainer_dataset_open(&t->prompts, env->prompts_path, DS_PROMPTS, cfg->seed, err) != 0)
            return chord_err_prefix(err, "data.prompts");
    }
    if (jobconfig_uses_expert(cfg->algorithm)) {
        if (!env->expert_path)
            return chord_err_set(err, "data.expert: required by %s",
                                 jobconfig_algorithm_name(cfg->algorithm));
        if (trainer_dataset_open(&t->expert, env->expert_path, DS_EXPERT, cfg->seed ^ 0x5eedull,
                                 err) != 0)
            return chord_err_prefix(err, "data.expert");
    }
    if (env->eval_path &&
        trainer_dataset_open(&t->eval, env->eval_path, DS_PROMPTS, cfg->seed, err) != 0)
        return chord_err_prefix(err, "data.eval");
    if (env->resume_dir && load_resume_state(t, env->resume_dir, err) != 0)
        return chord_err_prefix(err, "resume from %s", env->resume_dir);
    return 0;
}

/* Eval samples kept (strings copied) for the on_samples callback. */
typedef struct eval_samples {
    trainer_sample *s;
    size_t cap;
    int n, oom;
} eval_samples;

static void collect_eval_sample(void *user, const trainer_sample *s) {
    eval_samples *c = user;
    if (c->oom) return;
    trainer_sample *grown = chord_array_grow(c->s, &c->cap, (size_t)c->n + 1, sizeof *c->s);
    if (!grown) {
        c->oom = 1;
        return;
    }
    c->s = grown;
    trainer_sample *d = &c->s[c->n];
    *d = *s;
    d->prompt = s->prompt ? strdup(s->prompt) : NULL;
    d->completion = s->completion ? strdup(s->completion) : NULL;
    d->answer = s->answer ? strdup(s->answer) : NULL;
    c->n++; /* counted even when a copy failed: eval_samples_free frees what was made */
    if ((s->prompt && !d->prompt) || (s->completion && !d->completion) || (s->answer && !d->answer))
        c->oom = 1;
}

static void eval_samples_free(eval_samples *c) {
    for (int i = 0; i < c->n; i++) {
        free((char *)c->s[i].prompt);
        free((char *)c->s[i].completion);
        free((char *)c->s[i].answer);
    }
    free(c->s);
    memset(c, 0, sizeof *c);
}

static int run_eval(trainer *t, int64_t step, chord_err *err) {
    const job_config *cfg = t->cfg;
    trainer_eval_params ep = {.k = (int)cfg->eval.k,
                              .temperature = cfg->eval.temperature,
                              .max_new_tokens = (int)(cfg->eval.max_new_tokens > 0
                                                          ? cfg->eval.max_new_tokens
                                                          : cfg->sampling.max_new_tokens),
                              .max_prompts = 0,
                              .stop_ids = t->stop_ids,
                              .n_stop = t->n_stop,
                              .seed = cfg->seed,
                              .stream = (1ull << 40) + (uint64_t)step * 1000003ull};
    eval_samples kept = {0};
    /* every rank evaluates the whole set (the same numbers); rank 0 reports it */
    if (t->cb && t->cb->on_samples && dist_rank(t->env->dist) == 0) {
        ep.on_sample = collect_eval_sample;
        ep.user = &kept;
    }
    trainer_eval_result er;
    if (trainer_evaluate(t->m, t->tok, &t->tpl, &t->eval, t->verifier, &ep, &er, err) != 0) {
        eval_samples_free(&kept);
        return -1;
    }
    int src = 0;
    if (kept.oom)
        src = chord_err_setc(err, CHORD_E_INTERNAL, "eval: out of memory");
    else if (kept.n > 0 && !t->local_failed &&
             t->cb->on_samples(t->cb->user, step, kept.s, kept.n) != 0)
        src = chord_err_setc(err, CHORD_E_IO, "eval: storing the samples of step %lld failed",
                             (long long)step);
    eval_samples_free(&kept);
    if (src != 0 && keep_failure(t, err) != 0) return -1;
    int64_t n_eval = (int64_t)er.k * er.prompts;
    step_metrics *m = &t->metrics;
    m->has_eval = 1;
    m->eval_error_rate = n_eval > 0 ? (double)er.errors / (double)n_eval : 0.0;
    m->eval_accuracy = er.accuracy;
    m->eval_pass_at_k = er.pass_at_k;
    m->eval_k = er.k;
    m->eval_time = er.seconds;
    logline(t, "eval step %lld: accuracy %.4f pass@%d %.4f (%lld prompts, %.1fs)", (long long)step,
            er.accuracy, er.k, er.pass_at_k, (long long)er.prompts, er.seconds);
    return 0;
}

int trainer_run(const job_config *cfg, const trainer_env *env, const trainer_callbacks *cb,
                chord_err *err) {
    trainer t;
    memset(&t, 0, sizeof t);
    /* datasets the job does not use stay unopened: no descriptor to close (0 is stdin) */
    t.prompts.fd = t.expert.fd = t.eval.fd = -1;
    t.cfg = cfg;
    t.env = env;
    t.cb = cb;
    int rc = TRAINER_FAILED;
    const int R = n_ranks(&t), per_rank = R > 1 ? 2 * R : 0;
    t.row_names = malloc((N_METRICS + (size_t)per_rank) * sizeof *t.row_names);
    t.row_values = malloc((N_METRICS + (size_t)per_rank) * sizeof *t.row_values);
    if (per_rank > 0) {
        t.rank_tps = calloc((size_t)per_rank, sizeof *t.rank_tps);
        t.rank_names = calloc((size_t)per_rank, sizeof *t.rank_names);
    }
    if (!t.row_names || !t.row_values || (per_rank > 0 && (!t.rank_tps || !t.rank_names))) {
        oom(err);
        goto done;
    }
    for (int r = 0; r < per_rank / 2; r++) {
        snprintf(t.rank_names[2 * r], sizeof t.rank_names[0], "tokens_per_s/rollout/rank_%d", r);
        snprintf(t.rank_names[2 * r + 1], sizeof t.rank_names[0], "tokens_per_s/train/rank_%d", r);
    }
    if (setup(&t, err) != 0) goto done;
    logline(&t, "job %s: %s, %lld steps, model %zu parameters on %s%s", cfg->name ? cfg->name : "",
            jobconfig_algorithm_name(cfg->algorithm), (long long)cfg->steps, t.m->num_params,
            env->ops->be->name, env->resume_dir ? " (resumed)" : "");
    double t0 = chord_now();
    int64_t first_step = t.step + 1;
    for (int64_t step = first_step; step <= cfg->steps; step++) {
        int ck = 0, stop = cb && cb->should_stop && cb->should_stop(cb->user, &ck);
        if (n_ranks(&t) > 1) { /* every rank stops at the same step: any rank's wish counts */
            const int me = dist_rank(env->dist);
            int64_t v[3] = {stop, ck, t.local_failed ? me + 1 : 0}; /* the last failed rank + 1 */
            char name[64];
            snprintf(name, sizeof name, "step %lld: stop?", (long long)step);
            if (dist_allreduce_max_i64(env->dist, v, 3, name, err) != 0) goto done;
            stop = (int)v[0];
            ck = (int)v[1];
            if (v[2] > 0) { /* a rank's own failure: every rank ends here, failed */
                if (t.local_failed)
                    *err = t.local_err;
                else
                    chord_err_setc(err, CHORD_E_IO, "rank %d failed the job after step %lld",
                                   (int)v[2] - 1, (long long)t.step);
                goto done;
            }
        }
        if (stop) {
            if (ck && t.step > 0 && save_checkpoint(&t, t.step, err) != 0) goto done;
            rc = TRAINER_STOPPED;
            goto done;
        }
        if (run_step(&t, step, err) != 0) {
            if (err && err->code == CHORD_E_UNAVAILABLE) { /* stopped inside the rollout */
                chord_err cerr = {0};
                if (t.checkpoint_on_stop && t.step > 0 && save_checkpoint(&t, t.step, &cerr) != 0)
                    logline(&t, "checkpoint on stop failed: %s", cerr.msg);
                rc = TRAINER_STOPPED;
            } else {
                chord_err_prefix(err, "step %lld", (long long)step);
            }
            goto done;
        }
        t.step = step;
        if (t.eval.n > 0 && cfg->eval.every > 0 &&
            (step % cfg->eval.every == 0 || step == cfg->steps) && run_eval(&t, step, err) != 0)
            goto done;
        size_t peak = 0;
        ops_mem_usage(env->ops, NULL, &peak);
        t.metrics.mem_peak_mib = (double)peak / 1048576.0;
        t.metrics.mem_estimate_mib = t.mem_need / 1048576.0;
        const char **names = t.row_names;
        double *values = t.row_values;
        int n_metrics = metrics_emit(&t.metrics, names, values);
        for (int r = 0; t.rank_tps && r < 2 * n_ranks(&t); r++, n_metrics++) {
            names[n_metrics] = t.rank_names[r];
            values[n_metrics] = t.rank_tps[r];
        }
        if (cb && cb->on_step && !t.local_failed &&
            cb->on_step(cb->user, step, names, values, n_metrics) != 0) {
            chord_err_setc(err, CHORD_E_IO, "step %lld: storing metrics failed", (long long)step);
            if (keep_failure(&t, err) != 0) goto done;
        }
        const step_metrics *m = &t.metrics;
        double eta =
            (chord_now() - t0) / (double)(step - first_step + 1) * (double)(cfg->steps - step);
        logline(&t,
                "step %lld/%lld  mu %.3f  reward %.3f  acc %.3f  loss %.4f  pg %.4f  sft %.4f  "
                "tok/s rollout %.0f train %.0f  ETA %.0fs",
                (long long)step, (long long)cfg->steps, m->mu, m->reward_mean, m->accuracy,
                m->loss.loss, m->loss.pg_loss, m->loss.sft_loss, m->tps_rollout, m->tps_train, eta);
        int last = step == cfg->steps;
        if ((cfg->checkpoint_every > 0 && step % cfg->checkpoint_every == 0) || last)
            if (save_checkpoint(&t, step, err) != 0) goto done;
        if (cb && cb->between_steps && !t.local_failed) cb->between_steps(cb->user, t.m);
    }
    rc = TRAINER_DONE;
done:
    /* this rank's own failure, kept for the agreement, that came at the last step or on the
     * way out (a stop's checkpoint): the other ranks end as they would (the same collectives) */
    if (t.local_failed && !dist_broken(env->dist)) { /* (a lost rank's error says more) */
        if (err) *err = t.local_err;
        rc = TRAINER_FAILED;
    }
    trainer_dataset_close(&t.prompts);
    trainer_dataset_close(&t.expert);
    trainer_dataset_close(&t.eval);
    rollout_engine_free(t.engine);
    bootstrap_close(&t.ref);
    reward_verifier_free(t.verifier);
    bootstrap_close(&t.boot); /* t.m and t.tok (a view: then its shared base's reference) */
    /* a failed update's sums (the job aborts) */
    dist_sums_free(t.buckets.sums);
    free(t.row_names);
    free(t.row_values);
    free(t.rank_tps);
    free(t.rank_names);
    return rc;
}
