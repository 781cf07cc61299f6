/* jobconfig.c — parse, validate and write back the job document (see jobconfig.h, docs/job.md).
 *
 * Parsing runs in three passes: the preset's defaults (ALGORITHM.md's table), the document's
 * overrides read field by field with their JSON path at hand, then cross-field rules (datasets
 * an algorithm needs, knobs a preset does not use). Unknown keys are rejected per object before
 * anything is read from it. Nothing here opens datasets or models. */
#include "server/train/jobconfig.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/model/config.h"
#include "server/model/model.h"
#include "server/train/loss.h"
#include "server/train/reward.h"

static const char *const algorithm_names[JOB_ALGO_COUNT] = {
    "sft", "grpo", "sft_then_grpo", "chord_mu", "chord_phi", "chord"};
static const char *const lr_schedule_names[] = {"constant", "linear", "cosine"};

const char *jobconfig_algorithm_name(job_algorithm algorithm) {
    if ((int)algorithm < 0 || algorithm >= JOB_ALGO_COUNT) return "unknown";
    return algorithm_names[algorithm];
}

int jobconfig_algorithm_from_name(const char *name, job_algorithm *algorithm) {
    for (int i = 0; i < JOB_ALGO_COUNT; i++) {
        if (strcmp(name, algorithm_names[i]) == 0) {
            *algorithm = (job_algorithm)i;
            return 0;
        }
    }
    return -1;
}

const char *jobconfig_lr_schedule_name(job_lr_schedule schedule) {
    if ((int)schedule < 0 || schedule > JOB_LR_COSINE) return "unknown";
    return lr_schedule_names[schedule];
}

int jobconfig_uses_rollouts(job_algorithm algorithm) {
    return algorithm != JOB_ALGO_SFT;
}

int jobconfig_uses_expert(job_algorithm algorithm) {
    return algorithm != JOB_ALGO_GRPO;
}

/* ---- field readers (server/base/json_field.h names each field by its JSON path) ------------ */

/* Integers may be written as whole reals (1e3, 500.0), as a JavaScript client writes them. */
#define INT_FIELD CHORD_JSON_WHOLE_REAL

static int read_number(const json_t *obj, const char *path, const char *key, double *out,
                       chord_err *err) {
    return chord_json_get_number(obj, path, key, 0, -INFINITY, INFINITY, out, err);
}

static int read_int(const json_t *obj, const char *path, const char *key, int64_t *out,
                    chord_err *err) {
    return chord_json_get_int(obj, path, key, INT_FIELD, INT64_MIN, INT64_MAX, out, err);
}

/* A non-empty string, copied into *out (replacing what was there). */
static int read_string(const json_t *obj, const char *path, const char *key, char **out,
                       chord_err *err) {
    const char *s = NULL;
    if (chord_json_get_string(obj, path, key, CHORD_JSON_NONEMPTY, &s, err)) return -1;
    if (!s) return 0;
    char *copy = strdup(s);
    if (!copy) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", key);
    free(*out);
    *out = copy;
    return 0;
}

/* A string that must be one of names[] (NULL-terminated; index = value): *out = its index. */
static int read_choice(const json_t *obj, const char *path, const char *key,
                       const char *const *names, int *out, chord_err *err) {
    const char *s = NULL;
    if (chord_json_get_string(obj, path, key, 0, &s, err)) return -1;
    if (!s) return 0;
    for (int i = 0; names[i]; i++)
        if (!strcmp(s, names[i])) {
            *out = i;
            return 0;
        }
    char list[256] = "";
    size_t off = 0;
    for (int i = 0; names[i] && off < sizeof list; i++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s\"%s\"", i ? ", " : "", names[i]);
    return chord_err_set(err, "%s%s%s: must be one of %s, not \"%s\"", path, *path ? "." : "", key,
                         list, s);
}

/* sampling.overlong.mode, in job_overlong_mode's order ("none" is the default, not a name) */
static const char *const overlong_modes[] = {"none", "mask", "penalty", NULL};
/* the names of loss.h's enums, in their order */
static const char *const policy_losses[] = {"ppo", "cispo", NULL};
static const char *const ratio_levels[] = {"token", "sequence", NULL};
/* the loss aggregation modes, in chord_loss_agg's order (loss.h) */
static const char *const agg_modes[] = {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                        "seq-mean-token-sum-norm", NULL};

/* ---- defaults ------------------------------------------------------------------------------ */

/* ALGORITHM.md's table and reference defaults for a preset. Strings are set by the caller. */
static void set_defaults(job_config *cfg, job_algorithm algorithm) {
    cfg->algorithm = algorithm;
    job_mu *mu = &cfg->mu;
    memset(mu, 0, sizeof *mu);
    mu->tau = 0.5;
    cfg->phi = 0;
    switch (algorithm) {
    case JOB_ALGO_SFT:
        mu->kind = JOB_MU_SFT;
        break;
    case JOB_ALGO_GRPO:
        mu->kind = JOB_MU_GRPO;
        break;
    case JOB_ALGO_SFT_THEN_GRPO:
        mu->kind = JOB_MU_SFT_THEN_GRPO;
        break;
    case JOB_ALGO_CHORD_MU:
        *mu = (job_mu){JOB_MU_SCHEDULE, 0, 200, 0.9, 0.05, 0.5};
        break;
    case JOB_ALGO_CHORD_PHI:
        *mu = (job_mu){JOB_MU_SCHEDULE, 0, 0, 0.1, 0.1, 0.5};
        cfg->phi = 1;
        break;
    case JOB_ALGO_CHORD:
    default:
        *mu = (job_mu){JOB_MU_SCHEDULE, 200, 400, 0.5, 0.02, 0.5};
        cfg->phi = 1;
        break;
    }
    cfg->sft_steps = 0; /* sft_then_grpo: steps / 2 once steps is known */
    cfg->grpo = (job_grpo){.group_size = 8,
                           .prompts_per_step = 32,
                           .clip_low = 0.2,
                           .clip_high = 0.2,
                           .dual_clip = 0.0,
                           .kl_coef = 0.0,
                           .kl_estimator = CHORD_KL_K3,
                           .kl_in_reward = 0,
                           .loss_agg_mode = CHORD_AGG_TOKEN_MEAN,
                           .norm_adv_by_std = 1,
                           .ppo_epochs = 1,
                           .filter_groups = 0,
                           .max_sample_batches = 4,
                           .entropy_coef = 0.0};
    cfg->expert_per_step = 64;
    cfg->sampling = (job_sampling){.temperature = 1.0,
                                   .top_p = 1.0,
                                   .max_new_tokens = 1024,
                                   .overlong = JOB_OVERLONG_NONE,
                                   .overlong_buffer = 0,
                                   .overlong_penalty = 1.0};
    cfg->optimizer = (job_optimizer){.lr = 1e-6,
                                     .schedule = JOB_LR_CONSTANT,
                                     .warmup_steps = 0,
                                     .weight_decay = 0.01,
                                     .beta1 = 0.9,
                                     .beta2 = 0.999,
                                     .eps = 1e-8,
                                     .grad_clip = 1.0,
                                     .min_lr_ratio = 0.0};
    cfg->micro_batch_tokens = 8192;
    cfg->steps = 500;
    cfg->seed = 42;
    cfg->checkpoint_every = 50;
    cfg->keep_checkpoints = 3;
    cfg->eval = (job_eval){.every = 25, .k = 4, .temperature = 0.6, .max_new_tokens = -1};
}

/* ---- sections ------------------------------------------------------------------------------ */

static int parse_model(const json_t *doc, job_config *cfg, int64_t *init_seed, int *has_seed,
                       chord_err *err) {
    static const char *const keys[] = {"path", "init", NULL};
    static const char *const init_keys[] = {"config", "seed", "tokenizer", NULL};
    json_t *mdl = NULL;
    if (chord_json_get_object(doc, "", "model", 0, &mdl, err)) return -1;
    if (!mdl) return chord_err_set(err, "model: required ({\"path\": ...} or {\"init\": {...}})");
    if (chord_json_check_keys(mdl, "model", keys, err)) return -1;
    json_t *init = NULL;
    if (read_string(mdl, "model", "path", &cfg->model_path, err)) return -1;
    if (chord_json_get_object(mdl, "model", "init", 0, &init, err)) return -1;
    if (cfg->model_path && init) return chord_err_set(err, "model: give path or init, not both");
    if (!cfg->model_path && !init) return chord_err_set(err, "model: needs path or init");
    if (!init) return 0;
    if (chord_json_check_keys(init, "model.init", init_keys, err)) return -1;
    json_t *config = NULL;
    if (chord_json_get_object(init, "model.init", "config", 0, &config, err)) return -1;
    if (!config) return chord_err_set(err, "model.init.config: required (Hugging Face config)");
    /* checked now so a bad architecture fails at submission, not when the job starts */
    model_config parsed;
    if (model_config_from_json(config, &parsed, err)) {
        const char *lead = "config.json: ";
        if (err && strncmp(err->msg, lead, strlen(lead)) == 0)
            memmove(err->msg, err->msg + strlen(lead), strlen(err->msg + strlen(lead)) + 1);
        return chord_err_prefix(err, "model.init.config");
    }
    cfg->model_init_config = json_deep_copy(config);
    if (!cfg->model_init_config)
        return chord_err_setc(err, CHORD_E_INTERNAL, "model.init.config: out of memory");
    if (read_string(init, "model.init", "tokenizer", &cfg->model_init_tokenizer, err)) return -1;
    *has_seed = chord_json_field(init, "seed") != NULL;
    return chord_json_get_int(init, "model.init", "seed", INT_FIELD, 0, INT64_MAX, init_seed, err);
}

static int parse_data(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"prompts", "expert", "eval", NULL};
    json_t *data = NULL;
    if (chord_json_get_object(doc, "", "data", 0, &data, err)) return -1;
    if (!data) return 0;
    if (chord_json_check_keys(data, "data", keys, err)) return -1;
    if (read_string(data, "data", "prompts", &cfg->data_prompts, err)) return -1;
    if (read_string(data, "data", "expert", &cfg->data_expert, err)) return -1;
    if (read_string(data, "data", "eval", &cfg->data_eval, err)) return -1;
    return 0;
}

static int parse_mu(const json_t *chord, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"warmup_steps", "decay_steps", "peak",
                                       "valley",       "adaptive",    NULL};
    static const char *const adaptive_keys[] = {"tau", NULL};
    json_t *v = chord_json_field(chord, "mu");
    if (!v) return 0;
    if (cfg->mu.kind != JOB_MU_SCHEDULE && cfg->mu.kind != JOB_MU_ADAPTIVE)
        return chord_err_set(err,
                             "chord.mu: not used by algorithm \"%s\" (its mu is fixed; choose "
                             "chord_mu, chord_phi or chord)",
                             jobconfig_algorithm_name(cfg->algorithm));
    job_mu *mu = &cfg->mu;
    if (json_is_number(v)) { /* a constant: "mu": 0.1 */
        double x = json_number_value(v);
        if (chord_check_number_range(x, "chord.mu", 0, 0, 1, err)) return -1;
        *mu = (job_mu){JOB_MU_SCHEDULE, 0, 0, x, x, mu->tau};
        return 0;
    }
    if (!json_is_object(v))
        return chord_err_set(err, "chord.mu: must be an object (a schedule or {\"adaptive\": "
                                  "{\"tau\": ...}}) or a number");
    if (chord_json_check_keys(v, "chord.mu", keys, err)) return -1;
    json_t *adaptive = NULL;
    if (chord_json_get_object(v, "chord.mu", "adaptive", 0, &adaptive, err)) return -1;
    int has_schedule = chord_json_field(v, "warmup_steps") || chord_json_field(v, "decay_steps") ||
                       chord_json_field(v, "peak") || chord_json_field(v, "valley");
    if (adaptive) {
        if (has_schedule)
            return chord_err_set(err, "chord.mu: give a schedule (warmup_steps, decay_steps, "
                                      "peak, valley) or adaptive, not both");
        if (chord_json_check_keys(adaptive, "chord.mu.adaptive", adaptive_keys, err)) return -1;
        mu->kind = JOB_MU_ADAPTIVE;
        if (read_number(adaptive, "chord.mu.adaptive", "tau", &mu->tau, err)) return -1;
        return chord_check_number_range(mu->tau, "chord.mu.adaptive.tau", 0, 0, 1, err);
    }
    mu->kind = JOB_MU_SCHEDULE;
    if (read_int(v, "chord.mu", "warmup_steps", &mu->warmup_steps, err) ||
        read_int(v, "chord.mu", "decay_steps", &mu->decay_steps, err) ||
        read_number(v, "chord.mu", "peak", &mu->peak, err) ||
        read_number(v, "chord.mu", "valley", &mu->valley, err))
        return -1;
    if (chord_check_int_range(mu->warmup_steps, "chord.mu.warmup_steps", 0, INT64_MAX, err) ||
        chord_check_int_range(mu->decay_steps, "chord.mu.decay_steps", 0, INT64_MAX, err) ||
        chord_check_number_range(mu->peak, "chord.mu.peak", 0, 0, 1, err) ||
        chord_check_number_range(mu->valley, "chord.mu.valley", 0, 0, 1, err))
        return -1;
    return 0;
}

static int parse_chord(const json_t *doc, job_config *cfg, int *has_sft_steps, chord_err *err) {
    static const char *const keys[] = {"mu", "phi", "sft_steps", "sft_loss_agg_mode", NULL};
    json_t *chord = NULL;
    if (chord_json_get_object(doc, "", "chord", 0, &chord, err)) return -1;
    if (!chord) return 0;
    if (chord_json_check_keys(chord, "chord", keys, err)) return -1;
    if (parse_mu(chord, cfg, err)) return -1;
    if (chord_json_get_bool(chord, "chord", "phi", 0, &cfg->phi, err)) return -1;
    if (read_choice(chord, "chord", "sft_loss_agg_mode", agg_modes, &cfg->sft_loss_agg_mode, err))
        return -1;
    if (cfg->sft_loss_agg_mode == CHORD_AGG_SEQ_MEAN_TOKEN_SUM_NORM)
        return chord_err_set(err, "chord.sft_loss_agg_mode: seq-mean-token-sum-norm needs a "
                                  "constant response length, which expert data has not; use "
                                  "token-mean, seq-mean-token-mean or seq-mean-token-sum");
    *has_sft_steps = chord_json_field(chord, "sft_steps") != NULL;
    if (read_int(chord, "chord", "sft_steps", &cfg->sft_steps, err)) return -1;
    return 0;
}

static int parse_grpo(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"group_size",         "prompts_per_step", "clip_low",
                                       "clip_high",          "dual_clip",        "kl_coef",
                                       "kl_estimator",       "kl_in_reward",     "entropy_coef",
                                       "loss_agg_mode",      "norm_adv_by_std",  "policy_loss",
                                       "ratio_level",        "ppo_epochs",       "filter_groups",
                                       "max_sample_batches", "share_prompt",     NULL};
    json_t *g = NULL;
    if (chord_json_get_object(doc, "", "grpo", 0, &g, err)) return -1;
    if (!g) return 0;
    if (chord_json_check_keys(g, "grpo", keys, err)) return -1;
    job_grpo *p = &cfg->grpo;
    if (read_int(g, "grpo", "group_size", &p->group_size, err) ||
        read_int(g, "grpo", "prompts_per_step", &p->prompts_per_step, err) ||
        read_number(g, "grpo", "clip_low", &p->clip_low, err) ||
        read_number(g, "grpo", "clip_high", &p->clip_high, err) ||
        read_number(g, "grpo", "dual_clip", &p->dual_clip, err) ||
        read_number(g, "grpo", "kl_coef", &p->kl_coef, err) ||
        chord_json_get_bool(g, "grpo", "kl_in_reward", 0, &p->kl_in_reward, err) ||
        read_number(g, "grpo", "entropy_coef", &p->entropy_coef, err))
        return -1;
    static const char *const estimators[] = {
        [CHORD_KL_K3] = "k3", [CHORD_KL_K1] = "k1", [CHORD_KL_K2] = "k2", NULL};
    if (read_choice(g, "grpo", "kl_estimator", estimators, &p->kl_estimator, err) ||
        read_choice(g, "grpo", "loss_agg_mode", agg_modes, &p->loss_agg_mode, err) ||
        chord_json_get_bool(g, "grpo", "norm_adv_by_std", 0, &p->norm_adv_by_std, err) ||
        read_choice(g, "grpo", "policy_loss", policy_losses, &p->policy_loss, err) ||
        read_choice(g, "grpo", "ratio_level", ratio_levels, &p->ratio_level, err) ||
        chord_json_get_int(g, "grpo", "ppo_epochs", INT_FIELD, 1, 64, &p->ppo_epochs, err) ||
        chord_json_get_bool(g, "grpo", "filter_groups", 0, &p->filter_groups, err) ||
        chord_json_get_int(g, "grpo", "max_sample_batches", INT_FIELD, 1, 1000,
                           &p->max_sample_batches, err) ||
        chord_json_get_bool(g, "grpo", "share_prompt", 0, &p->share_prompt, err))
        return -1;
    if (chord_json_field(g, "max_sample_batches") && !p->filter_groups)
        return chord_err_set(err, "grpo.max_sample_batches: has effect only with "
                                  "grpo.filter_groups true");
    if (p->policy_loss == CHORD_POLICY_LOSS_CISPO && p->ratio_level == CHORD_RATIO_SEQUENCE)
        return chord_err_set(err, "grpo.ratio_level: cispo weighs each token by its own ratio; "
                                  "use \"token\" with policy_loss \"cispo\"");
    if (p->policy_loss == CHORD_POLICY_LOSS_CISPO && p->dual_clip > 0.0)
        return chord_err_set(err, "grpo.dual_clip: cispo never zeroes a gradient, so it has no "
                                  "dual clip; leave dual_clip null with policy_loss \"cispo\"");
    if (chord_json_field(g, "dual_clip") && !(p->dual_clip > 1.0))
        return chord_err_set(err, "grpo.dual_clip: must be null (off) or a number > 1");
    return 0;
}

static int parse_sampling(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"temperature", "top_p", "max_new_tokens", "overlong", NULL};
    static const char *const overlong_keys[] = {"mode", "buffer_tokens", "penalty", NULL};
    json_t *s = NULL, *ol = NULL;
    if (chord_json_get_object(doc, "", "sampling", 0, &s, err)) return -1;
    if (!s) return 0;
    if (chord_json_check_keys(s, "sampling", keys, err)) return -1;
    job_sampling *p = &cfg->sampling;
    if (read_number(s, "sampling", "temperature", &p->temperature, err) ||
        read_number(s, "sampling", "top_p", &p->top_p, err) ||
        read_int(s, "sampling", "max_new_tokens", &p->max_new_tokens, err) ||
        chord_json_get_object(s, "sampling", "overlong", 0, &ol, err))
        return -1;
    if (!ol) return 0;
    int mode = JOB_OVERLONG_NONE;
    if (chord_json_check_keys(ol, "sampling.overlong", overlong_keys, err) ||
        read_choice(ol, "sampling.overlong", "mode", overlong_modes, &mode, err) ||
        read_int(ol, "sampling.overlong", "buffer_tokens", &p->overlong_buffer, err) ||
        read_number(ol, "sampling.overlong", "penalty", &p->overlong_penalty, err))
        return -1;
    p->overlong = (job_overlong_mode)mode;
    if (!chord_json_field(ol, "mode"))
        return chord_err_set(err, "sampling.overlong.mode: required (\"mask\" or \"penalty\")");
    int penalty_fields = chord_json_field(ol, "buffer_tokens") || chord_json_field(ol, "penalty");
    if (p->overlong != JOB_OVERLONG_PENALTY && penalty_fields)
        return chord_err_set(err, "sampling.overlong: buffer_tokens and penalty belong to mode "
                                  "\"penalty\"");
    if (p->overlong == JOB_OVERLONG_PENALTY && !chord_json_field(ol, "buffer_tokens"))
        return chord_err_set(err, "sampling.overlong.buffer_tokens: required by mode \"penalty\"");
    return 0;
}

static int parse_optimizer(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"lr",           "schedule",     "warmup_steps",
                                       "weight_decay", "betas",        "eps",
                                       "grad_clip",    "min_lr_ratio", NULL};
    json_t *o = NULL;
    if (chord_json_get_object(doc, "", "optimizer", 0, &o, err)) return -1;
    if (!o) return 0;
    if (chord_json_check_keys(o, "optimizer", keys, err)) return -1;
    job_optimizer *p = &cfg->optimizer;
    if (read_number(o, "optimizer", "lr", &p->lr, err) ||
        read_int(o, "optimizer", "warmup_steps", &p->warmup_steps, err) ||
        read_number(o, "optimizer", "weight_decay", &p->weight_decay, err) ||
        read_number(o, "optimizer", "eps", &p->eps, err) ||
        read_number(o, "optimizer", "grad_clip", &p->grad_clip, err) ||
        read_number(o, "optimizer", "min_lr_ratio", &p->min_lr_ratio, err))
        return -1;
    json_t *sched = chord_json_field(o, "schedule");
    if (sched) {
        const char *name = json_is_string(sched) ? json_string_value(sched) : NULL;
        int found = 0;
        for (int i = 0; name && i <= JOB_LR_COSINE; i++) {
            if (strcmp(name, lr_schedule_names[i]) == 0) {
                p->schedule = (job_lr_schedule)i;
                found = 1;
            }
        }
        if (!found)
            return chord_err_set(
                err, "optimizer.schedule: must be \"constant\", \"linear\" or \"cosine\"");
    }
    json_t *betas = chord_json_field(o, "betas");
    if (betas) {
        if (!json_is_array(betas) || json_array_size(betas) != 2)
            return chord_err_set(err, "optimizer.betas: must be an array of two numbers");
        for (size_t i = 0; i < 2; i++) {
            char path[CHORD_JSON_PATH_MAX];
            snprintf(path, sizeof path, "optimizer.betas[%zu]", i);
            if (chord_json_number_value(json_array_get(betas, i), path,
                                        CHORD_JSON_REQUIRED | CHORD_JSON_HI_OPEN, 0, 1,
                                        i == 0 ? &p->beta1 : &p->beta2, err))
                return -1;
        }
    }
    return 0;
}

/* "lora": PEFT's LoraConfig fields. Absent or null: full fine-tuning. */
static int parse_lora(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {
        "rank", "alpha", "dropout", "target_modules", "train_embeddings", NULL};
    json_t *l = NULL, *mods = NULL;
    if (chord_json_get_object(doc, "", "lora", 0, &l, err)) return -1;
    if (!l) return 0;
    if (chord_json_check_keys(l, "lora", keys, err)) return -1;
    job_lora *lo = &cfg->lora;
    lo->rank = 8;
    lo->alpha = 8.0;
    lo->targets = (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_V); /* PEFT's for Llama / Qwen2 */
    if (chord_json_get_int(l, "lora", "rank", INT_FIELD, 1, 1024, &lo->rank, err) ||
        chord_json_get_number(l, "lora", "alpha", CHORD_JSON_LO_OPEN, 0.0, 1e6, &lo->alpha, err) ||
        chord_json_get_number(l, "lora", "dropout", CHORD_JSON_HI_OPEN, 0.0, 1.0, &lo->dropout,
                              err) ||
        chord_json_get_bool(l, "lora", "train_embeddings", 0, &lo->train_embeddings, err))
        return -1;
    json_t *tm = chord_json_field(l, "target_modules");
    if (json_is_string(tm)) {
        if (strcmp(json_string_value(tm), "all-linear") != 0)
            return chord_err_set(err,
                                 "lora.target_modules: \"%s\" is not \"all-linear\" or a "
                                 "list of module names",
                                 json_string_value(tm));
        lo->targets = (1u << MODEL_LORA_N_TARGETS) - 1;
        return 0;
    }
    if (chord_json_get_array(l, "lora", "target_modules", 0, &mods, err)) return -1;
    if (!mods) return 0;
    if (json_array_size(mods) == 0) return chord_err_set(err, "lora.target_modules: empty");
    lo->targets = 0;
    for (size_t i = 0; i < json_array_size(mods); i++) {
        const char *name = json_string_value(json_array_get(mods, i));
        int k = model_lora_target_of(name);
        if (k < 0)
            return chord_err_set(err,
                                 "lora.target_modules[%zu]: %s%s%s is none of q_proj, k_proj, "
                                 "v_proj, o_proj, gate_proj, up_proj, down_proj",
                                 i, name ? "\"" : "", name ? name : "not a string",
                                 name ? "\"" : "");
        lo->targets |= 1u << k;
    }
    return 0;
}

static int parse_eval(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"every", "k", "temperature", "max_new_tokens", NULL};
    json_t *e = NULL;
    if (chord_json_get_object(doc, "", "eval", 0, &e, err)) return -1;
    if (!e) return 0;
    if (chord_json_check_keys(e, "eval", keys, err)) return -1;
    if (read_int(e, "eval", "every", &cfg->eval.every, err) ||
        read_int(e, "eval", "k", &cfg->eval.k, err) ||
        read_number(e, "eval", "temperature", &cfg->eval.temperature, err) ||
        chord_json_get_int(e, "eval", "max_new_tokens", INT_FIELD, 1, INT64_MAX,
                           &cfg->eval.max_new_tokens, err))
        return -1;
    return 0;
}

/* "auto", "cpu", "cuda", "cuda:N" or "cuda:N,M,..." */
static int device_valid(const char *s) {
    if (!strcmp(s, "auto") || !strcmp(s, "cpu") || !strcmp(s, "cuda")) return 1;
    if (strncmp(s, "cuda:", 5) != 0) return 0;
    s += 5;
    for (;;) {
        int digits = 0;
        while (*s >= '0' && *s <= '9')
            s++, digits++;
        if (!digits || digits > 4) return 0;
        if (*s == '\0') return 1;
        if (*s != ',') return 0;
        s++;
    }
}

/* Range checks of every scalar and the rules that tie fields together. */
static int validate(job_config *cfg, int has_sft_steps, chord_err *err) {
    job_algorithm a = cfg->algorithm;
    const char *an = jobconfig_algorithm_name(a);
    if (strlen(cfg->name) > 200) return chord_err_set(err, "name: must be at most 200 bytes");
    if (chord_check_int_range(cfg->steps, "steps", 1, INT64_MAX, err) ||
        chord_check_int_range(cfg->checkpoint_every, "checkpoint_every", 0, INT64_MAX, err) ||
        chord_check_int_range(cfg->keep_checkpoints, "keep_checkpoints", 0, INT64_MAX, err) ||
        chord_check_int_range(cfg->micro_batch_tokens, "micro_batch_tokens", 1, INT64_MAX, err) ||
        chord_check_int_range(cfg->expert_per_step, "expert_per_step",
                              jobconfig_uses_expert(a) ? 1 : 0, INT64_MAX, err))
        return -1;
    const job_grpo *g = &cfg->grpo;
    if (chord_check_int_range(g->group_size, "grpo.group_size", 1, INT64_MAX, err) ||
        chord_check_int_range(g->prompts_per_step, "grpo.prompts_per_step", 1, INT64_MAX, err) ||
        chord_check_number_range(g->clip_low, "grpo.clip_low", CHORD_JSON_HI_OPEN, 0, 1, err) ||
        chord_check_number_range(g->clip_high, "grpo.clip_high", 0, 0, INFINITY, err) ||
        chord_check_number_range(g->kl_coef, "grpo.kl_coef", 0, 0, INFINITY, err) ||
        chord_check_number_range(g->entropy_coef, "grpo.entropy_coef", 0, 0, INFINITY, err))
        return -1;
    if (g->filter_groups && g->group_size < 2)
        return chord_err_set(err, "grpo.filter_groups: needs grpo.group_size >= 2 (a group of one "
                                  "has no spread of rewards to keep)");
    if (chord_check_number_range(cfg->sampling.temperature, "sampling.temperature",
                                 CHORD_JSON_LO_OPEN, 0, INFINITY, err) ||
        chord_check_number_range(cfg->sampling.top_p, "sampling.top_p", CHORD_JSON_LO_OPEN, 0, 1,
                                 err) ||
        chord_check_int_range(cfg->sampling.max_new_tokens, "sampling.max_new_tokens", 1, INT64_MAX,
                              err))
        return -1;
    if (cfg->sampling.overlong == JOB_OVERLONG_PENALTY &&
        (chord_check_int_range(cfg->sampling.overlong_buffer, "sampling.overlong.buffer_tokens", 1,
                               cfg->sampling.max_new_tokens, err) ||
         chord_check_number_range(cfg->sampling.overlong_penalty, "sampling.overlong.penalty",
                                  CHORD_JSON_LO_OPEN, 0, INFINITY, err)))
        return -1;
    const job_optimizer *o = &cfg->optimizer;
    if (chord_check_number_range(o->lr, "optimizer.lr", CHORD_JSON_LO_OPEN, 0, INFINITY, err) ||
        chord_check_int_range(o->warmup_steps, "optimizer.warmup_steps", 0, INT64_MAX, err) ||
        chord_check_number_range(o->weight_decay, "optimizer.weight_decay", 0, 0, INFINITY, err) ||
        chord_check_number_range(o->eps, "optimizer.eps", CHORD_JSON_LO_OPEN, 0, INFINITY, err) ||
        chord_check_number_range(o->grad_clip, "optimizer.grad_clip", 0, 0, INFINITY, err) ||
        chord_check_number_range(o->min_lr_ratio, "optimizer.min_lr_ratio", 0, 0, 1, err))
        return -1;
    if (chord_check_int_range(cfg->eval.every, "eval.every", 0, INT64_MAX, err) ||
        chord_check_int_range(cfg->eval.k, "eval.k", 1, INT64_MAX, err) ||
        chord_check_number_range(cfg->eval.temperature, "eval.temperature", 0, 0, INFINITY, err))
        return -1;
    if (cfg->eval.max_new_tokens < 0) cfg->eval.max_new_tokens = cfg->sampling.max_new_tokens;

    /* φ and sft_steps only where the preset has the term they shape */
    if (a == JOB_ALGO_GRPO && cfg->phi)
        return chord_err_set(err, "chord.phi: algorithm \"grpo\" has no SFT term");
    if (a == JOB_ALGO_SFT_THEN_GRPO) {
        if (!has_sft_steps) cfg->sft_steps = cfg->steps / 2 > 0 ? cfg->steps / 2 : 1;
        if (cfg->sft_steps < 1 || cfg->sft_steps > cfg->steps)
            return chord_err_set(err, "chord.sft_steps: must be in [1, steps] (steps = %lld)",
                                 (long long)cfg->steps);
    } else if (cfg->sft_steps != 0) {
        return chord_err_set(err, "chord.sft_steps: only used by algorithm \"sft_then_grpo\"");
    }

    /* the datasets each stream reads */
    if (jobconfig_uses_rollouts(a) && !cfg->data_prompts)
        return chord_err_set(err, "data.prompts: required by algorithm \"%s\"", an);
    if (jobconfig_uses_expert(a) && !cfg->data_expert)
        return chord_err_set(err, "data.expert: required by algorithm \"%s\"", an);

    /* the verifier's own parser names its fields ("reward.timeout_ms: ..."); nothing is kept */
    reward_verifier *verifier = NULL;
    if (reward_verifier_new(cfg->reward, &verifier, err)) return -1;
    reward_verifier_free(verifier);

    if (!device_valid(cfg->device))
        return chord_err_set(err,
                             "device: must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N[,N...]\"");
    return 0;
}

int jobconfig_from_json(const json_t *doc, job_config *cfg, chord_err *err) {
    static const char *const keys[] = {"name",
                                       "model",
                                       "data",
                                       "algorithm",
                                       "chord",
                                       "grpo",
                                       "expert_per_step",
                                       "sampling",
                                       "optimizer",
                                       "micro_batch_tokens",
                                       "reward",
                                       "steps",
                                       "seed",
                                       "checkpoint_every",
                                       "keep_checkpoints",
                                       "eval",
                                       "device",
                                       "lora",
                                       NULL};
    memset(cfg, 0, sizeof *cfg);
    if (!json_is_object(doc)) return chord_err_set(err, "job: must be a JSON object");
    if (chord_json_check_keys(doc, "", keys, err)) return -1;

    job_algorithm algorithm = JOB_ALGO_CHORD;
    json_t *alg = chord_json_field(doc, "algorithm");
    if (alg) {
        if (!json_is_string(alg) ||
            jobconfig_algorithm_from_name(json_string_value(alg), &algorithm) != 0)
            return chord_err_set(err, "algorithm: must be one of sft, grpo, sft_then_grpo, "
                                      "chord_mu, chord_phi, chord");
    }
    set_defaults(cfg, algorithm);
    cfg->name = strdup("job");
    cfg->device = strdup("auto");
    cfg->reward = json_pack("{s:s}", "type", "math_boxed");
    if (!cfg->name || !cfg->device || !cfg->reward) {
        chord_err_setc(err, CHORD_E_INTERNAL, "job: out of memory");
        goto fail;
    }

    int64_t init_seed = 0, steps = cfg->steps, seed = (int64_t)cfg->seed;
    int has_init_seed = 0, has_sft_steps = 0;
    if (read_string(doc, "", "name", &cfg->name, err)) goto fail;
    if (parse_model(doc, cfg, &init_seed, &has_init_seed, err)) goto fail;
    if (parse_data(doc, cfg, err)) goto fail;
    if (parse_chord(doc, cfg, &has_sft_steps, err)) goto fail;
    if (parse_grpo(doc, cfg, err)) goto fail;
    if (read_int(doc, "", "expert_per_step", &cfg->expert_per_step, err)) goto fail;
    if (parse_sampling(doc, cfg, err)) goto fail;
    if (parse_optimizer(doc, cfg, err)) goto fail;
    if (read_int(doc, "", "micro_batch_tokens", &cfg->micro_batch_tokens, err)) goto fail;
    if (parse_lora(doc, cfg, err)) goto fail;
    json_t *reward = NULL;
    if (chord_json_get_object(doc, "", "reward", 0, &reward, err)) goto fail;
    if (reward) {
        json_decref(cfg->reward);
        cfg->reward = json_deep_copy(reward);
        if (!cfg->reward) {
            chord_err_setc(err, CHORD_E_INTERNAL, "reward: out of memory");
            goto fail;
        }
    }
    if (read_int(doc, "", "steps", &steps, err)) goto fail;
    cfg->steps = steps;
    if (chord_json_get_int(doc, "", "seed", INT_FIELD, 0, INT64_MAX, &seed, err)) goto fail;
    cfg->seed = (uint64_t)seed;
    cfg->model_init_seed = has_init_seed ? (uint64_t)init_seed : cfg->seed;
    if (read_int(doc, "", "checkpoint_every", &cfg->checkpoint_every, err)) goto fail;
    if (read_int(doc, "", "keep_checkpoints", &cfg->keep_checkpoints, err)) goto fail;
    if (parse_eval(doc, cfg, err)) goto fail;
    if (read_string(doc, "", "device", &cfg->device, err)) goto fail;
    if (validate(cfg, has_sft_steps, err)) goto fail;
    return 0;
fail:
    jobconfig_free(cfg);
    return -1;
}

int jobconfig_parse(const char *json_text, job_config *cfg, chord_err *err) {
    memset(cfg, 0, sizeof *cfg);
    json_error_t jerr;
    json_t *doc = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!doc)
        return chord_err_set(err, "job: invalid JSON at line %d column %d: %s", jerr.line,
                             jerr.column, jerr.text);
    int rc = jobconfig_from_json(doc, cfg, err);
    json_decref(doc);
    return rc;
}

int jobconfig_load(const char *path, job_config *cfg, chord_err *err) {
    memset(cfg, 0, sizeof *cfg);
    char *text = NULL;
    size_t len = 0;
    if (chord_read_file(path, &text, &len, err)) return chord_err_prefix(err, "%s", path);
    if (strlen(text) != len) {
        free(text);
        return chord_err_set(err, "%s: contains NUL bytes", path);
    }
    int rc = jobconfig_parse(text, cfg, err);
    free(text);
    if (rc) chord_err_prefix(err, "%s", path);
    return rc;
}

void jobconfig_free(job_config *cfg) {
    if (!cfg) return;
    free(cfg->name);
    free(cfg->model_path);
    json_decref(cfg->model_init_config);
    free(cfg->model_init_tokenizer);
    free(cfg->data_prompts);
    free(cfg->data_expert);
    free(cfg->data_eval);
    json_decref(cfg->reward);
    free(cfg->device);
    memset(cfg, 0, sizeof *cfg);
}

/* ---- writing back -------------------------------------------------------------------------- */

/* json_object_set_new that remembers a failure instead of checking each call. */
static void put(json_t *obj, const char *key, json_t *value, int *bad) {
    if (!value || json_object_set_new(obj, key, value) != 0) *bad = 1;
}

json_t *jobconfig_to_json(const job_config *cfg) {
    int bad = 0;
    json_t *doc = json_object();
    if (!doc) return NULL;
    put(doc, "name", json_string(cfg->name ? cfg->name : "job"), &bad);

    json_t *mdl = json_object();
    if (cfg->model_path) {
        put(mdl, "path", json_string(cfg->model_path), &bad);
    } else {
        json_t *init = json_object();
        put(init, "config",
            cfg->model_init_config ? json_deep_copy(cfg->model_init_config) : json_object(), &bad);
        put(init, "seed", json_integer((json_int_t)cfg->model_init_seed), &bad);
        if (cfg->model_init_tokenizer)
            put(init, "tokenizer", json_string(cfg->model_init_tokenizer), &bad);
        put(mdl, "init", init, &bad);
    }
    put(doc, "model", mdl, &bad);

    json_t *data = json_object();
    if (cfg->data_prompts) put(data, "prompts", json_string(cfg->data_prompts), &bad);
    if (cfg->data_expert) put(data, "expert", json_string(cfg->data_expert), &bad);
    if (cfg->data_eval) put(data, "eval", json_string(cfg->data_eval), &bad);
    put(doc, "data", data, &bad);

    put(doc, "algorithm", json_string(jobconfig_algorithm_name(cfg->algorithm)), &bad);
    json_t *chord = json_object();
    const job_mu *mu = &cfg->mu;
    if (mu->kind == JOB_MU_SCHEDULE) {
        put(chord, "mu",
            json_pack("{s:I,s:I,s:f,s:f}", "warmup_steps", (json_int_t)mu->warmup_steps,
                      "decay_steps", (json_int_t)mu->decay_steps, "peak", mu->peak, "valley",
                      mu->valley),
            &bad);
    } else if (mu->kind == JOB_MU_ADAPTIVE) {
        put(chord, "mu", json_pack("{s:{s:f}}", "adaptive", "tau", mu->tau), &bad);
    }
    put(chord, "phi", json_boolean(cfg->phi), &bad);
    put(chord, "sft_loss_agg_mode", json_string(agg_modes[cfg->sft_loss_agg_mode]), &bad);
    put(chord, "sft_steps", json_integer((json_int_t)cfg->sft_steps), &bad);
    put(doc, "chord", chord, &bad);

    const job_grpo *g = &cfg->grpo;
    json_t *grpo = json_pack("{s:I,s:I,s:f,s:f,s:f,s:f}", "group_size", (json_int_t)g->group_size,
                             "prompts_per_step", (json_int_t)g->prompts_per_step, "clip_low",
                             g->clip_low, "clip_high", g->clip_high, "kl_coef", g->kl_coef,
                             "entropy_coef", g->entropy_coef);
    if (grpo) {
        static const char *const est_names[] = {
            [CHORD_KL_K3] = "k3", [CHORD_KL_K1] = "k1", [CHORD_KL_K2] = "k2"};
        put(grpo, "dual_clip", g->dual_clip > 0 ? json_real(g->dual_clip) : json_null(), &bad);
        put(grpo, "kl_estimator", json_string(est_names[g->kl_estimator]), &bad);
        put(grpo, "kl_in_reward", json_boolean(g->kl_in_reward), &bad);
        put(grpo, "loss_agg_mode", json_string(agg_modes[g->loss_agg_mode]), &bad);
        put(grpo, "norm_adv_by_std", json_boolean(g->norm_adv_by_std), &bad);
        put(grpo, "policy_loss", json_string(policy_losses[g->policy_loss]), &bad);
        put(grpo, "ratio_level", json_string(ratio_levels[g->ratio_level]), &bad);
        put(grpo, "ppo_epochs", json_integer((json_int_t)g->ppo_epochs), &bad);
        put(grpo, "filter_groups", json_boolean(g->filter_groups), &bad);
        if (g->filter_groups) /* only there: the field is refused without filter_groups */
            put(grpo, "max_sample_batches", json_integer((json_int_t)g->max_sample_batches), &bad);
        put(grpo, "share_prompt", json_boolean(g->share_prompt), &bad);
    }
    put(doc, "grpo", grpo, &bad);
    put(doc, "expert_per_step", json_integer((json_int_t)cfg->expert_per_step), &bad);
    const job_sampling *sp = &cfg->sampling;
    json_t *sampling = json_pack("{s:f,s:f,s:I}", "temperature", sp->temperature, "top_p",
                                 sp->top_p, "max_new_tokens", (json_int_t)sp->max_new_tokens);
    if (sampling)
        put(sampling, "overlong",
            sp->overlong == JOB_OVERLONG_NONE ? json_null()
            : sp->overlong == JOB_OVERLONG_MASK
                ? json_pack("{s:s}", "mode", "mask")
                : json_pack("{s:s,s:I,s:f}", "mode", "penalty", "buffer_tokens",
                            (json_int_t)sp->overlong_buffer, "penalty", sp->overlong_penalty),
            &bad);
    put(doc, "sampling", sampling, &bad);
    const job_optimizer *o = &cfg->optimizer;
    put(doc, "optimizer",
        json_pack("{s:f,s:s,s:I,s:f,s:[f,f],s:f,s:f,s:f}", "lr", o->lr, "schedule",
                  jobconfig_lr_schedule_name(o->schedule), "warmup_steps",
                  (json_int_t)o->warmup_steps, "weight_decay", o->weight_decay, "betas", o->beta1,
                  o->beta2, "eps", o->eps, "grad_clip", o->grad_clip, "min_lr_ratio",
                  o->min_lr_ratio),
        &bad);
    put(doc, "micro_batch_tokens", json_integer((json_int_t)cfg->micro_batch_tokens), &bad);
    json_t *lora = json_null();
    if (cfg->lora.rank > 0) {
        json_t *mods = json_array();
        for (int k = 0; mods && k < MODEL_LORA_N_TARGETS; k++)
            if (cfg->lora.targets & (1u << k))
                json_array_append_new(mods, json_string(model_lora_target_names[k]));
        lora = json_pack("{s:I,s:f,s:f,s:o,s:b}", "rank", (json_int_t)cfg->lora.rank, "alpha",
                         cfg->lora.alpha, "dropout", cfg->lora.dropout, "target_modules", mods,
                         "train_embeddings", cfg->lora.train_embeddings);
    }
    put(doc, "lora", lora, &bad);
    put(doc, "reward", cfg->reward ? json_deep_copy(cfg->reward) : json_object(), &bad);
    put(doc, "steps", json_integer((json_int_t)cfg->steps), &bad);
    put(doc, "seed", json_integer((json_int_t)cfg->seed), &bad);
    put(doc, "checkpoint_every", json_integer((json_int_t)cfg->checkpoint_every), &bad);
    put(doc, "keep_checkpoints", json_integer((json_int_t)cfg->keep_checkpoints), &bad);
    put(doc, "eval",
        json_pack("{s:I,s:I,s:f,s:I}", "every", (json_int_t)cfg->eval.every, "k",
                  (json_int_t)cfg->eval.k, "temperature", cfg->eval.temperature, "max_new_tokens",
                  (json_int_t)cfg->eval.max_new_tokens),
        &bad);
    put(doc, "device", json_string(cfg->device ? cfg->device : "auto"), &bad);
    if (bad) {
        json_decref(doc);
        return NULL;
    }
    return doc;
}
