/* jobs.c — the scheduler and its workers (jobs.h): claim a queued job, resolve its datasets and
 * resume point, run trainer_run with callbacks that store each step exactly once, honour cancel
 * and stop between steps, run queued rollout requests between steps or when idle.
 *
 * Not here: validation of job documents (server/service.c), training (server/train). */
#include "server/jobs/jobs.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels/ops.h"
#include "server/base/buf.h"
#include "server/base/log.h"
#include "server/dist/dist.h"
#include "server/jobs/bases.h"
#include "server/jobs/ranks.h"
#include "server/jobs/rollout_request.h"
#include "server/model/config.h"
#include "server/train/bootstrap.h"
#include "server/train/jobconfig.h"
#include "server/train/mem_estimate.h"
#include "server/train/trainer.h"
#include "storage/store.h"

typedef struct rollout_item {
    char id[STORE_ID_MAX];
    struct rollout_item *next;
} rollout_item;

typedef struct worker worker;

/* Per-step buffers of the job being run: samples wait for their step's metrics so both go in
 * one transaction; the last step's metrics are kept in case its samples come after them. */
typedef struct run_ctx {
    worker *w;
    const char *job_id;
    const job_config *cfg;
    int64_t sample_step;
    store_sample *samples;
    char **sample_strings; /* everything the samples point to */
    size_t n_samples, n_strings, samples_cap, strings_cap;
    int64_t last_step; /* the last step stored (the resume point before the first) */
    int64_t last_ckpt; /* the last step checkpointed (the resume point, or -1) */
    char **last_names;
    double *last_values;
    int n_last;
    chord_err store_err; /* why a callback could not store a step (the trainer's err says which) */
} run_ctx;

struct worker {
    jobs_pool *pool;
    int index;
    char device[32];
    ops_ctx *ops;
    store *st;
    pthread_t thread;
    int started;
    /* the job it runs (guarded by pool->mu for the id; flags are atomics) */
    char job_id[STORE_ID_MAX];
    atomic_int cancel;
    atomic_int pause; /* stop after the step with a checkpoint, back to the queue (paused) */
    _Atomic int64_t reserved; /* mem_estimate_job of the job it runs less the weights it takes
                                 from the shared bases (counted there), 0 when idle */
    /* fits_beside's last queued job (its estimate reads the datasets: once per job, not once
     * per poll); claims are serialised (claim_mu), so no lock */
    char fit_id[STORE_ID_MAX];
    int64_t fit_need, fit_shared;
    char *fit_key; /* its base's key (bootstrap_base_key), NULL when it shares nothing */
    /* the rollout batch it runs: the queued request it put back (it does not join; not offered
     * again until the batch ends) */
    char join_refused[STORE_ID_MAX];
};

struct jobs_pool {
    char *data_dir;
    int threads;
    int64_t memory_limit;
    jobs_hooks hooks;
    worker *workers;
    int n_workers;
    int slots;          /* workers per device */
    jobs_bases *bases;  /* the shared base weights (bases.h) */
    ops_ctx **homes;    /* each device's home context (the shared bases live there) */
    int n_homes;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_mutex_t claim_mu; /* one claim at a time: a claim sees the slots claimed before it */
    int wake_seq;                /* bumped by jobs_wake and rollout submits */
    atomic_int stopping;         /* jobs_shutdown began: workers end, rollouts are refused */
    atomic_int joined;           /* jobs_shutdown ran to the end (every worker joined) */
    pthread_mutex_t shutdown_mu; /* one jobs_shutdown at a time: the second waits for the first */
    rollout_item *rollouts, *rollouts_tail;
    struct dist_ctx *dist; /* several ranks: jobs run on all (ranks.h); else NULL */
    jobs_ranks_options ranks;
};

/* ---- devices ------------------------------------------------------------------------------ */

static int parse_cuda_index(const char *s, int *index) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (end == s || v < 0 || v > 4096) return -1;
    *index = (int)v;
    return (int)(end - s);
}

int jobs_device_accepts(const char *worker_device, const char *job_device) {
    if (!job_device || !strcmp(job_device, "auto")) return 1;
    if (!strcmp(job_device, "cpu")) return !strcmp(worker_device, "cpu");
    if (!strcmp(job_device, "cuda")) return !strncmp(worker_device, "cuda:", 5);
    if (strncmp(job_device, "cuda:", 5) || strncmp(worker_device, "cuda:", 5)) return 0;
    int a, b;
    if (parse_cuda_index(job_device + 5, &a) < 0 || parse_cuda_index(worker_device + 5, &b) < 0)
        return 0;
    return a == b;
}

void jobs_devices_free(char **devices, int n) {
    if (!devices) return;
    for (int i = 0; i < n; i++)
        free(devices[i]);
    free(devices);
}

int jobs_devices_expand(const char *spec, char ***devices, int *n, chord_err *err) {
    *devices = NULL;
    *n = 0;
    if (!spec || !*spec) spec = "auto";
    int count = 0;
    int idx[64];
    if (!strcmp(spec, "cpu")) {
        count = 0;
    } else if (!strcmp(spec, "auto") || !strcmp(spec, "cuda")) {
        int g = ops_cuda_device_count();
        if (g == 0 && !strcmp(spec, "cuda"))
            return chord_err_set(err, "--device: cuda requested but no CUDA device is usable");
        for (int i = 0; i < g && i < 64; i++)
            idx[count++] = i;
    } else if (!strncmp(spec, "cuda:", 5)) {
        const char *p = spec + 5;
        for (;;) {
            int v, used = parse_cuda_index(p, &v);
            if (used <= 0 || count == 64)
                return chord_err_set(err, "--device: '%s' is not cuda:N[,M...]", spec);
            idx[count++] = v;
            p += used;
            if (*p == '\0') break;
            if (*p != ',') return chord_err_set(err, "--device: '%s' is not cuda:N[,M...]", spec);
            p++;
        }
    } else {
        return chord_err_set(err, "--device: '%s' is not auto, cpu, cuda or cuda:N[,M...]", spec);
    }
    int total = count > 0 ? count : 1;
    char **out = calloc((size_t)total, sizeof *out);
    if (!out) return chord_err_setc(err, CHORD_E_INTERNAL, "devices: out of memory");
    for (int i = 0; i < total; i++) {
        char buf[32];
        if (count > 0)
            snprintf(buf, sizeof buf, "cuda:%d", idx[i]);
        else
            snprintf(buf, sizeof buf, "cpu");
        out[i] = strdup(buf);
        if (!out[i]) {
            jobs_devices_free(out, total);
            return chord_err_setc(err, CHORD_E_INTERNAL, "devices: out of memory");
        }
    }
    *devices = out;
    *n = total;
    return 0;
}

/* ---- run context: samples and metrics of a step in one transaction ---------------------- */

static void run_clear_samples(run_ctx *r) {
    for (size_t i = 0; i < r->n_strings; i++)
        free(r->sample_strings[i]);
    free(r->sample_strings);
    free(r->samples);
    r->sample_strings = NULL;
    r->samples = NULL;
    r->n_samples = r->n_strings = r->samples_cap = r->strings_cap = 0;
    r->sample_step = -1;
}

static void run_clear_last(run_ctx *r) {
    for (int i = 0; i < r->n_last; i++)
        free(r->last_names[i]);
    free(r->last_names);
    free(r->last_values);
    r->last_names = NULL;
    r->last_values = NULL;
    r->n_last = 0;
}

/* Keeps a copy of s (NULL stays NULL); -1 on OOM. */
static int keep_string(run_ctx *r, const char *s, const char **out) {
    if (!s) {
        *out = NULL;
        return 0;
    }
    char *c = strdup(s);
    if (!c) return -1;
    r->sample_strings[r->n_strings++] = c;
    *out = c;
    return 0;
}

static int write_step(run_ctx *r, int64_t step, const char *const *names, const double *values,
                      int n, chord_err *err) {
    const store_sample *samples = r->sample_step == step ? r->samples : NULL;
    size_t ns = r->sample_step == step ? r->n_samples : 0;
    return store_put_step(r->w->st, r->job_id, step, names, values, (size_t)n, samples, ns, err);
}

/* Samples of one step may come in several calls (the rollouts, then on eval steps the eval
 * samples): they accumulate until another step's samples arrive. */
static int cb_on_samples(void *user, int64_t step, const trainer_sample *samples, int n) {
    run_ctx *r = user;
    if (r->sample_step != step) run_clear_samples(r);
    r->sample_step = step;
    if (n <= 0) return 0;
    store_sample *ns =
        chord_array_grow(r->samples, &r->samples_cap, r->n_samples + (size_t)n, sizeof *ns);
    if (!ns) goto oom;
    r->samples = ns;
    /* five strings a sample at most */
    char **strs = chord_array_grow(r->sample_strings, &r->strings_cap, r->n_strings + 5 * (size_t)n,
                                   sizeof *strs);
    if (!strs) goto oom;
    r->sample_strings = strs;
    /* sample pointers into sample_strings stay valid: the strings themselves never move */
    for (int i = 0; i < n; i++) {
        store_sample *o = &r->samples[r->n_samples];
        memset(o, 0, sizeof *o);
        o->reward = samples[i].reward;
        if (keep_string(r, samples[i].kind, &o->kind) ||
            keep_string(r, samples[i].prompt, &o->prompt) ||
            keep_string(r, samples[i].completion, &o->completion) ||
            keep_string(r, samples[i].reason, &o->reason) ||
            keep_string(r, samples[i].answer, &o->answer))
            goto oom;
        r->n_samples++;
    }
    if (step == r->last_step && r->n_last > 0) {
        /* samples after their metrics: rewrite the step with both (it replaces, never adds) */
        chord_err err = {0};
        if (write_step(r, step, (const char *const *)r->last_names, r->last_values, r->n_last,
                       &err)) {
            LOG_ERROR("job %s: step %lld samples: %s", r->job_id, (long long)step, err.msg);
            r->store_err = err;
            return -1;
        }
    }
    return 0;
oom:
    LOG_ERROR("job %s: step %lld samples: out of memory", r->job_id, (long long)step);
    run_clear_samples(r);
    return -1;
}

static int cb_on_step(void *user, int64_t step, const char *const *names, const double *values,
                      int n) {
    run_ctx *r = user;
    chord_err err = {0};
    if (write_step(r, step, names, values, n, &err)) {
        LOG_ERROR("job %s: step %lld: %s", r->job_id, (long long)step, err.msg);
        r->store_err = err;
        return -1;
    }
    run_clear_last(r);
    r->last_step = step;
    r->last_names = calloc((size_t)(n > 0 ? n : 1), sizeof *r->last_names);
    r->last_values = calloc((size_t)(n > 0 ? n : 1), sizeof *r->last_values);
    if (r->last_names && r->last_values) {
        for (int i = 0; i < n; i++) {
            r->last_names[i] = strdup(names[i]);
            r->last_values[i] = values[i];
            if (!r->last_names[i]) break;
            r->n_last = i + 1;
        }
    }
    /* the trainer logs a line per step through on_log; this one is for debugging */
    char line[512];
    int off = snprintf(line, sizeof line, "job %s step %lld/%lld", r->job_id, (long long)step,
                       (long long)r->cfg->steps);
    for (int i = 0; i < n && i < 6 && off > 0 && (size_t)off < sizeof line; i++)
        off += snprintf(line + off, sizeof line - (size_t)off, " %s=%.4g", names[i], values[i]);
    LOG_DEBUG("%s", line);
    jobs_pool *p = r->w->pool;
    if (p->hooks.on_step) p->hooks.on_step(p->hooks.user, r->job_id, step, names, values, n);
    if (p->hooks.publish) p->hooks.publish(p->hooks.user, r->job_id);
    return 0;
}

static int cb_checkpoint_begin(void *user, int64_t step, char *dir, size_t dirlen, chord_err *err) {
    run_ctx *r = user;
    char tmp[STORE_PATH_MAX];
    if (store_checkpoint_begin(r->w->st, r->job_id, step, tmp, err)) return -1;
    if (strlen(tmp) + 1 > dirlen)
        return chord_err_setc(err, CHORD_E_INTERNAL, "checkpoint: path too long for buffer");
    memcpy(dir, tmp, strlen(tmp) + 1);
    return 0;
}

static int cb_checkpoint_commit(void *user, int64_t step, const char *dir, chord_err *err) {
    run_ctx *r = user;
    (void)dir;
    store_checkpoint ck = {0};
    if (store_checkpoint_commit(r->w->st, r->job_id, step, &ck, err)) return -1;
    LOG_DEBUG("job %s checkpoint step %lld: %s (%lld bytes)", r->job_id, (long long)step, ck.path,
              (long long)ck.bytes);
    r->last_ckpt = step;
    store_checkpoint_free(&ck);
    if (r->cfg->keep_checkpoints > 0) {
        chord_err kerr = {0};
        if (store_checkpoint_keep_last(r->w->st, r->job_id, (size_t)r->cfg->keep_checkpoints, NULL,
                                       &kerr))
            LOG_WARN("job %s: pruning old checkpoints: %s", r->job_id, kerr.msg);
    }
    jobs_pool *p = r->w->pool;
    if (p->hooks.publish) p->hooks.publish(p->hooks.user, r->job_id);
    return 0;
}

static void cb_checkpoint_abort(void *user, int64_t step, const char *dir) {
    run_ctx *r = user;
    (void)dir;
    store_checkpoint_abort(r->w->st, r->job_id, step);
}

static int cb_should_stop(void *user, int *checkpoint_on_stop) {
    run_ctx *r = user;
    if (atomic_load(&r->w->cancel)) {
        *checkpoint_on_stop = 0;
        return 1;
    }
    if (atomic_load(&r->w->pool->stopping) || atomic_load(&r->w->pause)) {
        /* a checkpoint of the last step, unless it has one already */
        *checkpoint_on_stop = r->last_ckpt != r->last_step;
        return 1;
    }
    return 0;
}

static void run_rollouts(worker *w, void *live_model, const char *live_job_id);

static void cb_between_steps(void *user, void *live) {
    run_ctx *r = user;
    run_rollouts(r->w, live, r->job_id);
}

static void cb_on_log(void *user, const char *line) {
    run_ctx *r = user;
    LOG_INFO("job %s: %s", r->job_id, line);
}

/* ---- running one job ---------------------------------------------------------------------- */

static int resolve_dataset(worker *w, const char *id, char **path, chord_err *err) {
    *path = NULL;
    if (!id) return 0;
    store_dataset d = {0};
    if (store_dataset_get(w->st, id, &d, err)) return chord_err_prefix(err, "dataset %s", id);
    *path = d.path;
    d.path = NULL;
    store_dataset_free(&d);
    return 0;
}

/* The checkpoint to resume from: the newest one whose step has its metrics stored (a
 * checkpoint is committed after its step's metrics, so that is normally the newest). Drops
 * metrics of steps after it, which the resumed run writes again. */
static int resume_point(worker *w, const store_job *job, char **resume_dir, int64_t *from,
                        chord_err *err) {
    *resume_dir = NULL;
    *from = -1;
    store_checkpoint *items = NULL;
    size_t n = 0;
    if (store_checkpoint_list(w->st, job->id, &items, &n, err)) return -1;
    for (size_t i = n; i-- > 0;) {
        if (items[i].step <= job->current_step) {
            *resume_dir = strdup(items[i].path);
            *from = items[i].step;
            break;
        }
    }
    store_checkpoint_list_free(items, n);
    if (store_job_truncate_after(w->st, job->id, *from, err)) {
        free(*resume_dir);
        *resume_dir = NULL;
        return -1;
    }
    return 0;
}

/* Defensive: a cleanup path that closes an unopened descriptor 0 (a zeroed struct's fd) would
 * close whatever holds fd 0 next — in a server, a client's socket. Keeping fd 0 on /dev/null
 * after each run makes such a close harmless. */
static void keep_stdin_open(void) {
    if (fcntl(0, F_GETFD) != -1 || errno != EBADF) return;
    int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd > 0) close(fd); /* 0 was taken meanwhile: leave it */
    if (fd == 0) LOG_WARN("jobs: descriptor 0 was closed during a job; reopened on /dev/null");
}

/* Stores the job's final state. A full disk or a locked database that failed the job refuses
 * this write too: it is retried every second until it is stored (the worker waits: nothing else
 * could be stored either), so the job never reads `running` with no worker behind it. A stopping
 * server gives up; the next start requeues the job (store_open's recovery). */
static void finish_job(worker *w, const char *id, store_job_state to, const char *text) {
    jobs_pool *p = w->pool;
    for (int attempt = 0;; attempt++) {
        chord_err err = {0};
        /* the trainer has returned and freed the job's memory: its share of the device limit
         * goes with the first try at storing the final state, both under claim_mu, which claims
         * and the readers of the shares (jobs_device_reserved) hold too: a client that reads
         * the final state finds the whole limit free (a rollout sent on seeing "cancelled"), and
         * no claim runs a job while this one still reads "running" */
        if (attempt == 0) pthread_mutex_lock(&p->claim_mu);
        int stored = store_job_transition(w->st, id, to, text, NULL, NULL, &err) == 0;
        if (attempt == 0) {
            atomic_store(&w->reserved, 0);
            pthread_mutex_unlock(&p->claim_mu);
        }
        if (stored) {
            LOG_INFO("job %s %s%s%s", id, store_job_state_name(to), text ? ": " : "",
                     text ? text : "");
            break;
        }
        int transient = err.code == CHORD_E_IO || err.code == CHORD_E_UNAVAILABLE ||
                        err.code == CHORD_E_NO_SPACE;
        if (attempt % 60 == 0 || !transient)
            LOG_ERROR("job %s: moving to %s: %s%s", id, store_job_state_name(to), err.msg,
                      transient ? " (retrying every second)" : "");
        if (!transient) break;
        pthread_mutex_lock(&p->mu);
        if (!atomic_load(&p->stopping)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        }
        int stopping = atomic_load(&p->stopping);
        pthread_mutex_unlock(&p->mu);
        if (stopping) break;
    }
    if (p->hooks.publish) p->hooks.publish(p->hooks.user, id);
}

/* The job's estimated memory (the figure the trainer checks at set-up), 0 when its model config
 * cannot be read (the trainer then fails the job, saying why). *shared (may be NULL): the part
 * of it that is shared base weights (a LoRA job's base, a KL reference), held once per device
 * by the shared bases whatever the number of jobs using them. */
static int64_t job_estimate(const worker *w, const job_config *cfg, const char *resume_dir,
                            const char *prompts, const char *expert, const char *eval,
                            int64_t *shared) {
    model_config mc;
    chord_err err = {0};
    if (shared) *shared = 0;
    const int lora = cfg->lora.rank > 0;
    const char *dir = resume_dir && !lora ? resume_dir : cfg->model_path;
    if (dir ? model_config_load(dir, &mc, &err) != 0
            : (!cfg->model_init_config ||
               model_config_from_json(cfg->model_init_config, &mc, &err) != 0))
        return 0;
    mem_estimate e;
    mem_estimate_job(&mc, cfg, mem_prompt_tokens_of_file(prompts),
                     mem_prompt_tokens_of_file(expert), mem_prompt_tokens_of_file(eval), &e);
    /* with LoRA, weights holds the base's and the adapter's own (4 lora_params); the bf16 copies
     * (model.h precision) are the base's and the reference's: shared too */
    mem_budget b;
    mem_budget_make(&b, w->device, -1, 0);
    const double w16 = mem_estimate_need(&e, &b) - e.total;
    if (shared)
        *shared = (int64_t)((lora ? e.weights - 4.0 * e.lora_params + w16 : 0) + e.reference);
    const double need = e.total + w16;
    return need < 9.0e18 ? (int64_t)need : INT64_MAX;
}

/* Several ranks, one of them lost mid-job (it died or hangs: the error names it): the job (when
 * job_id) fails with that error, then every rank ends (ranks.h: an MPI job cannot replace a
 * rank; restarted, the service serves again). */
static void lost_rank(worker *w, const char *job_id, const chord_err *why) {
    if (job_id) finish_job(w, job_id, STORE_JOB_FAILED, why->msg);
    LOG_ERROR("jobs: %s: the service's MPI ranks are out of step; every rank ends now (restart "
              "it with mpirun: docs/distributed.md)",
              why->msg);
    dist_abort(w->pool->dist, 1);
}

static void run_job(worker *w, store_job *job) {
    jobs_pool *p = w->pool;
    job_config cfg = {0};
    chord_err err = {0};
    char *prompts = NULL, *expert = NULL, *eval = NULL, *resume = NULL;
    int64_t from = -1;
    if (jobconfig_parse(job->config_json, &cfg, &err)) {
        finish_job(w, job->id, STORE_JOB_FAILED, err.msg);
        return;
    }
    if (resolve_dataset(w, cfg.data_prompts, &prompts, &err) ||
        resolve_dataset(w, cfg.data_expert, &expert, &err) ||
        resolve_dataset(w, cfg.data_eval, &eval, &err) ||
        resume_point(w, job, &resume, &from, &err)) {
        finish_job(w, job->id, STORE_JOB_FAILED, err.msg);
        goto done;
    }
    if (resume)
        LOG_INFO("job %s running on %s, resuming after step %lld from %s", job->id, w->device,
                 (long long)from, resume);
    else
        LOG_INFO("job %s running on %s (%lld steps)", job->id, w->device, (long long)cfg.steps);
    if (p->hooks.publish) p->hooks.publish(p->hooks.user, job->id);

    int64_t shared = 0, estimate = job_estimate(w, &cfg, resume, prompts, expert, eval, &shared);
    atomic_store(&w->reserved, estimate - shared);
    const char *tokenizer_dir = cfg.model_init_tokenizer;
    if (p->dist) { /* the other ranks run it too (ranks.h) */
        jobs_rank_job rj = {.id = job->id,
                            .config_json = job->config_json,
                            .prompts = prompts,
                            .expert = expert,
                            .eval = eval,
                            .resume = resume,
                            .memory_limit = p->memory_limit};
        if (jobs_ranks_send_job(p->dist, &rj, &err) != 0) {
            lost_rank(w, job->id, &err);
            goto done;
        }
    }
    trainer_env env = {.ops = w->ops,
                       .bases = jobs_bases_iface(p->bases),
                       .memory_limit = p->memory_limit,
                       .prompts_path = prompts,
                       .expert_path = expert,
                       .eval_path = eval,
                       .model_dir = cfg.model_path,
                       .tokenizer_dir = tokenizer_dir,
                       .resume_dir = resume,
                       .dist = p->dist,
                       .zero = p->ranks.zero,
                       .bucket_mb = p->ranks.bucket_mb};
    run_ctx r = {.w = w,
                 .job_id = job->id,
                 .cfg = &cfg,
                 .sample_step = -1,
                 .last_step = resume ? from : -1,
                 .last_ckpt = resume ? from : -1};
    trainer_callbacks cb = {.user = &r,
                            .on_step = cb_on_step,
                            .on_samples = cb_on_samples,
                            .checkpoint_begin = cb_checkpoint_begin,
                            .checkpoint_commit = cb_checkpoint_commit,
                            .checkpoint_abort = cb_checkpoint_abort,
                            .should_stop = cb_should_stop,
                            /* several ranks: not between steps, where the other ranks
                             * wait at the next collective and a long rollout would trip
                             * their watchdog; after the job, or when idle (ranks.h) */
                            .between_steps = p->dist ? NULL : cb_between_steps,
                            .on_log = cb_on_log};
    int rc = trainer_run(&cfg, &env, &cb, &err);
    keep_stdin_open();
    if (p->dist && rc == TRAINER_FAILED && dist_broken(p->dist)) {
        run_clear_samples(&r);
        run_clear_last(&r);
        lost_rank(w, job->id, &err);
        goto done;
    }
    run_clear_samples(&r);
    run_clear_last(&r);
    if (rc == TRAINER_DONE) {
        finish_job(w, job->id, STORE_JOB_SUCCEEDED, NULL);
    } else if (rc == TRAINER_STOPPED && atomic_load(&w->cancel)) {
        finish_job(w, job->id, STORE_JOB_CANCELLED, "cancelled by request");
    } else if (rc == TRAINER_STOPPED) {
        /* server stopping, or the job paused: back to queued (paused stays set, so it is not
         * claimed until resumed); it resumes from the checkpoint */
        if (atomic_load(&w->pause)) LOG_INFO("job %s paused: checkpointed, device free", job->id);
        finish_job(w, job->id, STORE_JOB_QUEUED, NULL);
    } else {
        if (!err.msg[0]) snprintf(err.msg, sizeof err.msg, "trainer failed");
        /* the store's reason (a full disk, say), which the trainer's callbacks cannot carry */
        if (r.store_err.msg[0]) {
            chord_err trainer_err = err;
            chord_err_setc(&err, trainer_err.code, "%s: %s", trainer_err.msg, r.store_err.msg);
        }
        finish_job(w, job->id, STORE_JOB_FAILED, err.msg);
    }
    chord_err end_err = {0};
    if (p->dist && jobs_ranks_end_job(p->dist, job->id, &end_err) != 0)
        lost_rank(w, NULL, &end_err); /* its outcome is stored: the ranks are out of step */
done:
    free(prompts);
    free(expert);
    free(eval);
    free(resume);
    jobconfig_free(&cfg);
}

/* Reads the "device" of a stored job document; "auto" when absent or unreadable. */
static void job_device(const char *config_json, char *out, size_t outlen) {
    snprintf(out, outlen, "auto");
    json_t *doc = json_loads(config_json, 0, NULL);
    if (!doc) return;
    const char *d = json_string_value(json_object_get(doc, "device"));
    if (d) snprintf(out, outlen, "%s", d);
    json_decref(doc);
}

/* The estimate of a queued job (cached per job in w->fit_*: it reads the datasets): what it
 * needs on this worker's device now, less its shared base's weights when that base is resident
 * here already. */
static int64_t fit_need(worker *w, const char *job_id, const char *config_json) {
    jobs_pool *p = w->pool;
    if (strcmp(w->fit_id, job_id) != 0) { /* a job not seen yet: its estimate */
        job_config cfg = {0};
        chord_err e = {0};
        free(w->fit_key);
        w->fit_key = NULL;
        w->fit_need = w->fit_shared = 0;
        if (jobconfig_parse(config_json, &cfg, &e)) return 0; /* run_job fails it, saying why */
        char *prompts = NULL, *expert = NULL, *eval = NULL;
        (void)resolve_dataset(w, cfg.data_prompts, &prompts, &e); /* unknown: the default */
        (void)resolve_dataset(w, cfg.data_expert, &expert, &e);
        (void)resolve_dataset(w, cfg.data_eval, &eval, &e);
        w->fit_need = job_estimate(w, &cfg, NULL, prompts, expert, eval, &w->fit_shared);
        if (w->fit_shared > 0 &&
            bootstrap_base_key(cfg.model_path, cfg.model_init_config, cfg.model_init_seed,
                               &w->fit_key, &e) != 0)
            w->fit_shared = 0;
        snprintf(w->fit_id, sizeof w->fit_id, "%s", job_id);
        free(prompts);
        free(expert);
        free(eval);
        jobconfig_free(&cfg);
    }
    int64_t need = w->fit_need;
    if (w->fit_key && jobs_bases_resident(p->bases, w->device, w->fit_key))
        need -= w->fit_shared; /* its base is here already */
    return need;
}

static int64_t device_reserved(jobs_pool *p, const char *device);

/* With several slots: 1 when the job of config_json fits on this worker's device beside what
 * runs there now (the other slots' jobs and the resident shared bases, whose weights the job
 * does not need again), or when no other slot runs a job (the trainer then refuses a job that can
 * never fit, with the figures). The budget is the operator's limit less what is reserved, else the
 * device's free memory. A job claimed but not yet set up has its estimate reserved already
 * (claim), so a second slot never reads the gap between the claim and the trainer's set-up as
 * free memory. */
static int fits_beside(worker *w, const char *job_id, const char *config_json) {
    jobs_pool *p = w->pool;
    if (p->slots <= 1) return 1;
    int busy = 0;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n_workers; i++)
        if (&p->workers[i] != w && !strcmp(p->workers[i].device, w->device) &&
            p->workers[i].job_id[0])
            busy = 1;
    pthread_mutex_unlock(&p->mu);
    if (!busy) return 1;
    int64_t need = fit_need(w, job_id, config_json);
    double budget;
    size_t free_b = 0, total_b = 0;
    if (p->memory_limit > 0)
        budget = (double)p->memory_limit - (double)device_reserved(p, w->device);
    else if (ops_mem_info(w->ops, &free_b, &total_b) == 0 && free_b > 0)
        budget = (double)free_b;
    else
        return 1; /* a backend that cannot tell its free memory is trusted */
    return (double)need <= budget;
}

/* Takes the oldest queued job this worker may run: *found = 1 with job filled and the worker's
 * job_id set. Two workers racing for one job: the transition of the loser fails with a conflict
 * and it tries the next. In queue order: when the oldest job this worker may run does not fit
 * beside the other slots' jobs (fits_beside), it waits, and so does every job behind it. */
static int claim(worker *w, store_job *job, int *found, chord_err *err) {
    *found = 0;
    store_job *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    if (store_job_list(w->st, STORE_JOB_QUEUED, 0, 0, NULL, &items, &n, &total, err)) return -1;
    int rc = 0;
    pthread_mutex_lock(&w->pool->claim_mu);
    for (size_t i = n; i-- > 0 && !*found;) { /* newest first: walk from the oldest */
        char dev[64];
        job_device(items[i].config_json, dev, sizeof dev);
        if (!jobs_device_accepts(w->device, dev)) continue;
        if (!fits_beside(w, items[i].id, items[i].config_json)) break;
        chord_err terr = {0};
        if (store_job_transition(w->st, items[i].id, STORE_JOB_RUNNING, NULL, w->device, job,
                                 &terr) == 0) {
            *found = 1;
            pthread_mutex_lock(&w->pool->mu); /* the next claim sees this slot taken */
            memcpy(w->job_id, job->id, STORE_ID_MAX);
            atomic_store(&w->cancel, job->cancel_requested ? 1 : 0);
            pthread_mutex_unlock(&w->pool->mu);
            /* reserved from the claim on (run_job refines it): the other slots' claims, under
             * claim_mu too, see it */
            if (w->pool->slots > 1)
                atomic_store(&w->reserved, fit_need(w, items[i].id, items[i].config_json));
        } else if (terr.code != CHORD_E_CONFLICT) {
            *err = terr;
            rc = -1;
            break;
        }
    }
    pthread_mutex_unlock(&w->pool->claim_mu);
    store_job_list_free(items, n);
    return rc;
}

/* ---- rollouts ----------------------------------------------------------------------------- */

static int pop_rollout(jobs_pool *p, char id[STORE_ID_MAX]) {
    pthread_mutex_lock(&p->mu);
    rollout_item *it = p->rollouts;
    if (it) {
        p->rollouts = it->next;
        if (!p->rollouts) p->rollouts_tail = NULL;
    }
    pthread_mutex_unlock(&p->mu);
    if (!it) return 0;
    memcpy(id, it->id, STORE_ID_MAX);
    free(it);
    return 1;
}

/* What a rollout may use on the worker's device now: its free memory (the running job's already
 * taken), within the operator's limit less that job's share. */
static void rollout_budget(worker *w, mem_budget *b) {
    size_t free_b = 0, total_b = 0;
    double free_bytes =
        ops_mem_info(w->ops, &free_b, &total_b) == 0 && free_b > 0 ? (double)free_b : -1.0;
    double limit = 0;
    if (w->pool->memory_limit > 0) {
        limit = (double)w->pool->memory_limit - (double)atomic_load(&w->reserved);
        if (limit < 1) limit = 1; /* a limit all taken still refuses (0 would mean none) */
    }
    mem_budget_make(b, w->device, free_bytes, limit);
}

/* Stores a rollout's answer (result, or the error) and tells the watchers. */
static void finish_rollout(worker *w, const char *id, const json_t *result, const chord_err *why) {
    chord_err err = {0};
    char *result_text = NULL;
    if (result) {
        result_text = json_dumps(result, JSON_COMPACT);
        if (!result_text) chord_err_setc(&err, CHORD_E_INTERNAL, "out of memory");
    } else {
        err = *why;
    }
    chord_err ferr = {0};
    if (store_rollout_finish(w->st, id, result_text, result_text ? NULL : err.msg, &ferr))
        LOG_ERROR("rollout %s: storing the result: %s", id, ferr.msg);
    else
        LOG_INFO("rollout %s %s%s%s", id, result_text ? "succeeded" : "failed",
                 result_text ? "" : ": ", result_text ? "" : err.msg);
    if (w->pool->hooks.publish) w->pool->hooks.publish(w->pool->hooks.user, id);
    free(result_text);
}

/* jobs_rollout_joiner over the worker's queue (rollout_request.h) */
static int join_next(void *user, char id[STORE_ID_MAX], json_t **request) {
    worker *w = user;
    jobs_pool *p = w->pool;
    *request = NULL;
    pthread_mutex_lock(&p->mu);
    rollout_item *it = p->rollouts;
    if (!it || atomic_load(&p->stopping) || !strcmp(it->id, w->join_refused)) {
        pthread_mutex_unlock(&p->mu);
        return 0;
    }
    p->rollouts = it->next;
    if (!p->rollouts) p->rollouts_tail = NULL;
    pthread_mutex_unlock(&p->mu);
    memcpy(id, it->id, STORE_ID_MAX);
    free(it);
    store_rollout ro = {0};
    chord_err err = {0};
    if (store_rollout_get(w->st, id, &ro, &err) == 0)
        *request = json_loads(ro.request_json, 0, NULL);
    store_rollout_free(&ro);
    if (!*request) { /* it answers (with its error) when it runs alone */
        snprintf(w->join_refused, sizeof w->join_refused, "%s", id);
        pthread_mutex_lock(&p->mu);
        rollout_item *back = calloc(1, sizeof *back);
        if (back) {
            memcpy(back->id, id, STORE_ID_MAX);
            back->next = p->rollouts;
            p->rollouts = back;
            if (!p->rollouts_tail) p->rollouts_tail = back;
        }
        pthread_mutex_unlock(&p->mu);
        if (!back) LOG_ERROR("rollout %s: lost from the queue (out of memory)", id);
        return 0;
    }
    return 1;
}

static void join_put_back(void *user, const char *id) {
    worker *w = user;
    jobs_pool *p = w->pool;
    snprintf(w->join_refused, sizeof w->join_refused, "%s", id);
    rollout_item *it = calloc(1, sizeof *it);
    if (!it) {
        chord_err err = {0};
        chord_err_setc(&err, CHORD_E_INTERNAL, "out of memory putting it back in the queue");
        finish_rollout(w, id, NULL, &err);
        return;
    }
    snprintf(it->id, sizeof it->id, "%s", id);
    pthread_mutex_lock(&p->mu);
    it->next = p->rollouts;
    p->rollouts = it;
    if (!p->rollouts_tail) p->rollouts_tail = it;
    pthread_mutex_unlock(&p->mu);
}

static void join_done(void *user, const char *id, const json_t *result, const chord_err *err) {
    finish_rollout(user, id, result, err);
}

static void run_rollouts(worker *w, void *live_model, const char *live_job_id) {
    char id[STORE_ID_MAX];
    const jobs_rollout_joiner joiner = {w, join_next, join_put_back, join_done};
    while (!atomic_load(&w->pool->stopping) && pop_rollout(w->pool, id)) {
        store_rollout ro = {0};
        chord_err err = {0};
        json_t *result = NULL;
        if (store_rollout_get(w->st, id, &ro, &err)) {
            LOG_ERROR("rollout %s: %s", id, err.msg);
            continue;
        }
        json_t *req = json_loads(ro.request_json, 0, NULL);
        mem_budget budget;
        rollout_budget(w, &budget);
        w->join_refused[0] = '\0';
        int rc = req ? jobs_rollout_generate(req, w->ops, jobs_bases_iface(w->pool->bases),
                                             live_model, live_job_id, &budget, &joiner, &result,
                                             &err)
                     : chord_err_setc(&err, CHORD_E_INTERNAL, "stored request is not JSON");
        finish_rollout(w, id, rc == 0 ? result : NULL, &err);
        w->join_refused[0] = '\0';
        json_decref(result);
        json_decref(req);
        store_rollout_free(&ro);
    }
}

/* ---- the worker loop ---------------------------------------------------------------------- */

static void *worker_main(void *arg) {
    worker *w = arg;
    jobs_pool *p = w->pool;
    int seen = -1;
    while (!atomic_load(&p->stopping)) {
        pthread_mutex_lock(&p->mu);
        seen = p->wake_seq;
        pthread_mutex_unlock(&p->mu);

        store_job job = {0};
        int found = 0;
        chord_err err = {0};
        if (claim(w, &job, &found, &err))
            LOG_ERROR("worker %s: claiming a job: %s", w->device, err.msg);
        if (found) { /* claim set w->job_id and w->cancel */
            /* a cancel that came between the claim and job_id being set found no worker: it
             * is in the database, so look once more */
            store_job now = {0};
            if (store_job_get(w->st, job.id, &now, &err) == 0 && now.cancel_requested)
                atomic_store(&w->cancel, 1);
            if (now.paused) atomic_store(&w->pause, 1); /* likewise a pause */
            store_job_free(&now);
            run_job(w, &job);
            pthread_mutex_lock(&p->mu);
            w->job_id[0] = '\0';
            atomic_store(&w->cancel, 0);
            atomic_store(&w->pause, 0);
            atomic_store(&w->reserved, 0); /* finish_job did; a job failed before it had none */
            pthread_mutex_unlock(&p->mu);
            store_job_free(&job);
            continue;
        }
        run_rollouts(w, NULL, NULL);

        /* idle: sleep until woken (or a second passes, which also covers missed wakes) */
        pthread_mutex_lock(&p->mu);
        if (p->wake_seq == seen && !atomic_load(&p->stopping)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        }
        pthread_mutex_unlock(&p->mu);
    }
    return NULL;
}

int jobs_start(const jobs_options *opt, jobs_pool **out, chord_err *err) {
    *out = NULL;
    jobs_pool *p = calloc(1, sizeof *p);
    if (!p) return chord_err_setc(err, CHORD_E_INTERNAL, "jobs: out of memory");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    pthread_mutex_init(&p->shutdown_mu, NULL);
    pthread_mutex_init(&p->claim_mu, NULL);
    p->slots = opt->slots > 0 ? opt->slots : 1;
    p->data_dir = strdup(opt->data_dir);
    p->threads = opt->threads;
    p->memory_limit = opt->memory_limit;
    p->hooks = opt->hooks;
    if (opt->dist && dist_size(opt->dist) > 1) {
        if (opt->n_devices != 1 || p->slots != 1) {
            jobs_free(p);
            return chord_err_set(err, "jobs: under mpirun each rank runs one device with one slot "
                                      "(got %d device%s, %d slot%s)",
                                 opt->n_devices, opt->n_devices == 1 ? "" : "s", p->slots,
                                 p->slots == 1 ? "" : "s");
        }
        p->dist = opt->dist;
        p->ranks = (jobs_ranks_options){.zero = opt->zero, .bucket_mb = opt->bucket_mb};
    }
    const int n_dev = opt->n_devices > 0 ? opt->n_devices : 1;
    p->workers = calloc((size_t)n_dev * (size_t)p->slots, sizeof *p->workers);
    p->homes = calloc((size_t)n_dev, sizeof *p->homes);
    if (!p->data_dir || !p->workers || !p->homes || jobs_bases_new(&p->bases, err)) {
        jobs_free(p);
        return chord_err_setc(err, CHORD_E_INTERNAL, "jobs: out of memory");
    }
    /* each device's home context: the shared bases are loaded and freed there */
    for (int d = 0; d < opt->n_devices; d++) {
        char msg[512] = "";
        p->homes[d] = ops_open(opt->devices[d], opt->threads, msg, sizeof msg);
        if (!p->homes[d]) {
            chord_err_setc(err, CHORD_E_UNAVAILABLE, "device %s: %s", opt->devices[d], msg);
            jobs_free(p);
            return -1;
        }
        p->n_homes = d + 1;
        if (jobs_bases_add_device(p->bases, opt->devices[d], p->homes[d], err)) {
            jobs_free(p);
            return -1;
        }
    }
    for (int i = 0; i < opt->n_devices * p->slots; i++) {
        worker *w = &p->workers[i];
        w->pool = p;
        w->index = i;
        snprintf(w->device, sizeof w->device, "%s", opt->devices[i / p->slots]);
        p->n_workers = i + 1;
        char msg[512] = "";
        w->ops = ops_open(w->device, opt->threads, msg, sizeof msg);
        if (!w->ops) {
            chord_err_setc(err, CHORD_E_UNAVAILABLE, "device %s: %s", w->device, msg);
            jobs_free(p);
            return -1;
        }
        /* NCCL's communicator, made with the other ranks at their start (ranks.c) */
        if (p->dist && w->ops->device_index >= 0 && dist_have_nccl() &&
            dist_attach_nccl(p->dist, w->ops, err) != 0) {
            jobs_free(p);
            return -1;
        }
        if (store_open(opt->data_dir, &w->st, err)) {
            chord_err_prefix(err, "worker %s", w->device);
            jobs_free(p);
            return -1;
        }
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            chord_err_setc(err, CHORD_E_INTERNAL, "worker %s: cannot start a thread: %s", w->device,
                           strerror(errno));
            jobs_free(p);
            return -1;
        }
        w->started = 1;
        LOG_INFO("worker %d on %s started", i, w->device);
    }
    *out = p;
    return 0;
}

void jobs_wake(jobs_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    p->wake_seq++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int jobs_pause(jobs_pool *p, const char *job_id, int pause) {
    if (!p) return 0;
    int hit = 0;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n_workers; i++) {
        if (!strcmp(p->workers[i].job_id, job_id)) {
            atomic_store(&p->workers[i].pause, pause ? 1 : 0);
            hit = 1;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return hit;
}

int jobs_cancel(jobs_pool *p, const char *job_id) {
    if (!p) return 0;
    int hit = 0;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < p->n_workers; i++) {
        if (!strcmp(p->workers[i].job_id, job_id)) {
            atomic_store(&p->workers[i].cancel, 1);
            hit = 1;
        }
    }
    pthread_mutex_unlock(&p->mu);
    return hit;
}

int jobs_submit_rollout(jobs_pool *p, const char *rollout_id, chord_err *err) {
    if (!p) return chord_err_setc(err, CHORD_E_UNAVAILABLE, "rollouts: no workers running");
    rollout_item *it = calloc(1, sizeof *it);
    if (!it) return chord_err_setc(err, CHORD_E_INTERNAL, "rollouts: out of memory");
    snprintf(it->id, sizeof it->id, "%s", rollout_id);
    pthread_mutex_lock(&p->mu);
    if (atomic_load(&p->stopping)) { /* under mu: no worker would ever take it */
        pthread_mutex_unlock(&p->mu);
        free(it);
        return chord_err_setc(err, CHORD_E_UNAVAILABLE, "server is stopping: not accepting work");
    }
    if (p->rollouts_tail)
        p->rollouts_tail->next = it;
    else
        p->rollouts = it;
    p->rollouts_tail = it;
    p->wake_seq++;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

/* with claim_mu held */
static int64_t device_reserved(jobs_pool *p, const char *device) {
    int64_t sum = 0;
    for (int i = 0; i < p->n_workers; i++)
        if (!strcmp(p->workers[i].device, device)) sum += atomic_load(&p->workers[i].reserved);
    return sum + jobs_bases_bytes(p->bases, device);
}

int64_t jobs_device_reserved(jobs_pool *p, const char *device) {
    if (!p || !device) return 0;
    pthread_mutex_lock(&p->claim_mu); /* not between a claim, or a final state, and its share */
    int64_t sum = device_reserved(p, device);
    pthread_mutex_unlock(&p->claim_mu);
    return sum;
}

int jobs_slots(const jobs_pool *p) { return p ? p->slots : 1; }

struct jobs_bases *jobs_pool_bases(jobs_pool *p) { return p ? p->bases : NULL; }

const struct bootstrap_bases *jobs_bases_interface(jobs_pool *p) {
    return p ? jobs_bases_iface(p->bases) : NULL;
}

void jobs_shutdown(jobs_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->shutdown_mu);
    if (!atomic_load(&p->joined)) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stopping, 1);
        p->wake_seq++;
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
        for (int i = 0; i < p->n_workers; i++) {
            worker *w = &p->workers[i];
            if (w->started) pthread_join(w->thread, NULL);
            w->started = 0;
        }
        atomic_store(&p->joined, 1);
    }
    pthread_mutex_unlock(&p->shutdown_mu);
}

void jobs_free(jobs_pool *p) {
    if (!p) return;
    jobs_shutdown(p);
    jobs_bases_free(p->bases); /* every view was released when its worker ended */
    for (int i = 0; i < p->n_workers; i++) {
        store_close(p->workers[i].st);
        ops_close(p->workers[i].ops);
        free(p->workers[i].fit_key);
    }
    for (int d = 0; d < p->n_homes; d++) ops_close(p->homes[d]);
    free(p->homes);
    while (p->rollouts) {
        rollout_item *next = p->rollouts->next;
        free(p->rollouts);
        p->rollouts = next;
    }
    free(p->workers);
    free(p->data_dir);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    pthread_mutex_destroy(&p->shutdown_mu);
    pthread_mutex_destroy(&p->claim_mu);
    free(p);
}
