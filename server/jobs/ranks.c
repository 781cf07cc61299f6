/* ranks.c — the other ranks of `chordd serve` under mpirun, and the commands rank 0 sends them
 * (ranks.h). A command is a JSON object: {"command": "job", "id", "config", "prompts",
 * "expert", "eval", "resume", "memory_limit"} or {"command": "quit"}.
 *
 * Not here: rank 0's side of a job (server/jobs/jobs.c run_job), the collectives (server/dist). */
#include "server/jobs/ranks.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/ops.h"
#include "server/base/log.h"
#include "server/dist/dist.h"
#include "server/train/jobconfig.h"
#include "server/train/trainer.h"

static int send_json(struct dist_ctx *d, json_t *o, chord_err *err) {
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) return chord_err_oom(err);
    int rc = dist_send_command(d, text, strlen(text), err);
    free(text);
    return rc;
}

static int set_opt(json_t *o, const char *key, const char *v) {
    return json_object_set_new(o, key, v ? json_string(v) : json_null());
}

int jobs_ranks_send_job(struct dist_ctx *d, const jobs_rank_job *job, chord_err *err) {
    json_t *o = json_object();
    if (!o || set_opt(o, "command", "job") || set_opt(o, "id", job->id) ||
        set_opt(o, "config", job->config_json) || set_opt(o, "prompts", job->prompts) ||
        set_opt(o, "expert", job->expert) || set_opt(o, "eval", job->eval) ||
        set_opt(o, "resume", job->resume) ||
        json_object_set_new(o, "memory_limit", json_integer(job->memory_limit))) {
        json_decref(o);
        return chord_err_oom(err);
    }
    return send_json(d, o, err);
}

int jobs_ranks_send_quit(struct dist_ctx *d, chord_err *err) {
    json_t *o = json_pack("{s:s}", "command", "quit");
    return send_json(d, o, err);
}

int jobs_ranks_end_job(struct dist_ctx *d, const char *job_id, chord_err *err) {
    char what[96];
    snprintf(what, sizeof what, "the end of job %s", job_id);
    return dist_barrier(d, what, err);
}

/* ---- a rank other than 0 ------------------------------------------------------------------ */

typedef struct follower {
    int rank;
    const char *job_id;
} follower;

/* rank 0 decides: its stop, cancel or pause reaches every rank through the trainer's per-step
 * agreement (the largest wish wins) */
static int f_should_stop(void *user, int *checkpoint_on_stop) {
    (void)user;
    *checkpoint_on_stop = 0;
    return 0;
}

/* rank 0 stores the step and the samples; these take part in the same collectives */
static int f_on_step(void *user, int64_t step, const char *const *names, const double *values,
                     int n) {
    (void)user, (void)step, (void)names, (void)values, (void)n;
    return 0;
}

static int f_on_samples(void *user, int64_t step, const trainer_sample *s, int n) {
    (void)user, (void)step, (void)s, (void)n;
    return 0;
}

static void f_on_log(void *user, const char *line) {
    const follower *f = user;
    LOG_DEBUG("rank %d: job %s: %s", f->rank, f->job_id, line);
}

static const char *opt_str(const json_t *o, const char *key) {
    return json_string_value(json_object_get(o, key));
}

/* One job on this rank; 0 whatever the trainer's outcome unless the ranks are out of step. */
static int follow_job(struct dist_ctx *d, ops_ctx *ops, const jobs_ranks_options *opt,
                      const json_t *cmd, chord_err *err) {
    const char *id = opt_str(cmd, "id"), *config = opt_str(cmd, "config");
    if (!id || !config)
        return chord_err_setc(err, CHORD_E_INTERNAL, "rank %d: a job command without %s",
                              dist_rank(d), id ? "config" : "id");
    job_config cfg = {0};
    chord_err jerr = {0};
    follower f = {.rank = dist_rank(d), .job_id = id};
    int rc = TRAINER_FAILED;
    if (jobconfig_parse(config, &cfg, &jerr) == 0) {
        trainer_env env = {.ops = ops,
                           .prompts_path = opt_str(cmd, "prompts"),
                           .expert_path = opt_str(cmd, "expert"),
                           .eval_path = opt_str(cmd, "eval"),
                           .model_dir = cfg.model_path,
                           .tokenizer_dir = cfg.model_init_tokenizer,
                           .resume_dir = opt_str(cmd, "resume"),
                           .memory_limit = json_integer_value(json_object_get(cmd, "memory_limit")),
                           .dist = d,
                           .zero = opt->zero,
                           .bucket_mb = opt->bucket_mb};
        trainer_callbacks cb = {.user = &f,
                                .on_step = f_on_step,
                                .on_samples = f_on_samples,
                                .should_stop = f_should_stop,
                                .on_log = f_on_log};
        LOG_INFO("rank %d: job %s", f.rank, id);
        rc = trainer_run(&cfg, &env, &cb, &jerr);
        jobconfig_free(&cfg);
    }
    if (rc == TRAINER_FAILED) {
        if (dist_broken(d)) { /* a peer is lost: rank 0 names it, then ends every rank */
            *err = jerr;
            return -1;
        }
        LOG_WARN("rank %d: job %s failed here: %s", f.rank, id, jerr.msg);
    }
    return jobs_ranks_end_job(d, id, err);
}

int jobs_ranks_follow(struct dist_ctx *d, const char *device, int threads,
                      const jobs_ranks_options *opt, chord_err *err) {
    char errbuf[512];
    ops_ctx *ops = ops_open(device, threads, errbuf, sizeof errbuf);
    if (!ops) return chord_err_set(err, "rank %d: %s", dist_rank(d), errbuf);
    if (ops->device_index >= 0 && dist_have_nccl() && dist_attach_nccl(d, ops, err) != 0) {
        ops_close(ops);
        return -1;
    }
    /* the service's lifetime is rank 0's: stop it there (SIGTERM to rank 0's chordd), and it
     * checkpoints the running job with every rank, then sends "quit" */
    signal(SIGINT, SIG_IGN);
    signal(SIGTERM, SIG_IGN);
    LOG_INFO("rank %d of %d: on %s, following rank 0's jobs", dist_rank(d), dist_size(d),
             ops->be->name);
    int rc = 0;
    for (;;) {
        char *text = NULL;
        size_t len = 0;
        if (dist_wait_command(d, &text, &len, err) != 0) {
            rc = -1;
            break;
        }
        json_error_t je;
        json_t *cmd = json_loadb(text, len, 0, &je);
        free(text);
        const char *what = opt_str(cmd, "command");
        if (!what) {
            json_decref(cmd);
            rc = chord_err_setc(err, CHORD_E_INTERNAL, "rank %d: a malformed command from rank 0",
                                dist_rank(d));
            break;
        }
        if (!strcmp(what, "quit")) {
            json_decref(cmd);
            break;
        }
        if (!strcmp(what, "job"))
            rc = follow_job(d, ops, opt, cmd, err);
        else
            rc = chord_err_setc(err, CHORD_E_INTERNAL, "rank %d: an unknown command '%s'",
                                dist_rank(d), what);
        json_decref(cmd);
        if (rc != 0) break;
    }
    ops_close(ops);
    return rc;
}
