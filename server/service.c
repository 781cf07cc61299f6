/* service.c — the service's lifetime (open, shutdown, close: service.h draws it), its pool of
 * SQLite handles, jobs (create / get / list / cancel / metrics / samples), the watches with
 * their per-(job, since_step) fan-out that both transports stream from (a watch thread polls,
 * each event is encoded once per transport), health and the Prometheus text; and what jobs
 * share with models and rollouts: paths under the models root, model references, a checkpoint
 * as a resource. Datasets, models, checkpoint listings and files, and rollouts are in
 * service_data.c, which calls into this file (never the other way); the demo in
 * service_demo.c; the will-it-fit checks at submission in service_memory.c.
 *
 * Not here: transports (api/), the worker loop (server/jobs), SQL (storage/). */
#include "server/service_internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/dist/dist.h"
#include "server/model/config.h"
#include "server/tinker/tinker.h"
#include "server/train/jobconfig.h"

static const double hist_bounds[SVC_HIST_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                     0.1,   0.25,   0.5,   1.0,  2.5,   10.0};

/* ---- JSON helpers ------------------------------------------------------------------------- */

json_t *svc_json_time(int64_t ms) {
    if (ms <= 0) return json_null();
    char buf[32];
    store_time_rfc3339(ms, buf);
    return json_string(buf);
}

json_t *svc_json_str(const char *s) {
    return s ? json_string(s) : json_null();
}

json_t *svc_json_real(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

void svc_json_put(json_t *obj, const char *key, json_t *value, int *bad) {
    if (!value || json_object_set_new(obj, key, value) != 0) *bad = 1;
}

const char *svc_cursor(const char *after) {
    return after && *after ? after : NULL;
}

/* The cursor of a list item: its id, an alias's name, or a sample's "<step>.<index>". */
static json_t *item_cursor(const json_t *item) {
    const json_t *id = json_object_get(item, "id");
    if (!json_is_string(id)) id = json_object_get(item, "name");
    if (json_is_string(id)) return json_string(json_string_value(id));
    char text[64];
    snprintf(text, sizeof text, "%lld.%lld",
             (long long)json_integer_value(json_object_get(item, "step")),
             (long long)json_integer_value(json_object_get(item, "index")));
    return json_string(text);
}

json_t *svc_json_list(json_t *items, int64_t total, size_t offset, size_t limit) {
    json_t *o = json_object();
    int bad = !o || !items;
    if (!bad) {
        int more = json_array_size(items) > limit;
        while (json_array_size(items) > limit)
            if (json_array_remove(items, json_array_size(items) - 1)) bad = 1;
        size_t n = json_array_size(items);
        json_t *cursor = n ? item_cursor(json_array_get(items, n - 1)) : json_null();
        svc_json_put(o, "items", items, &bad);
        items = NULL;
        svc_json_put(o, "total", json_integer(total), &bad);
        svc_json_put(o, "offset", json_integer((json_int_t)offset), &bad);
        svc_json_put(o, "limit", json_integer((json_int_t)limit), &bad);
        svc_json_put(o, "has_more", json_boolean(more), &bad);
        svc_json_put(o, "next_cursor", cursor, &bad);
    }
    json_decref(items);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *svc_job_json(const store_job *j) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    json_t *config = json_loads(j->config_json, 0, NULL);
    if (!config) config = json_object();
    json_int_t steps = json_integer_value(json_object_get(config, "steps"));
    svc_json_put(o, "id", json_string(j->id), &bad);
    svc_json_put(o, "name", json_string(j->name ? j->name : ""), &bad);
    svc_json_put(o, "state",
                 json_string(j->state == STORE_JOB_QUEUED && j->paused
                                 ? "paused"
                                 : store_job_state_name(j->state)),
                 &bad);
    svc_json_put(o, "created_at", svc_json_time(j->created_ms), &bad);
    svc_json_put(o, "started_at", svc_json_time(j->started_ms), &bad);
    svc_json_put(o, "finished_at", svc_json_time(j->finished_ms), &bad);
    svc_json_put(o, "error", svc_json_str(j->error), &bad);
    svc_json_put(o, "current_step", json_integer(j->current_step), &bad);
    svc_json_put(o, "steps", json_integer(steps), &bad);
    svc_json_put(o, "device", svc_json_str(j->device), &bad);
    svc_json_put(o, "cancel_requested", json_boolean(j->cancel_requested), &bad);
    svc_json_put(
        o, "pause_requested",
        json_boolean(j->paused && (j->state == STORE_JOB_QUEUED || j->state == STORE_JOB_RUNNING)),
        &bad);
    svc_json_put(o, "config", config, &bad);
    svc_job_pipeline_json(j, o, &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int svc_by_id(int rc, chord_err *err) {
    if (rc && err && err->code == CHORD_E_INVALID) err->code = CHORD_E_NOT_FOUND;
    return rc;
}

/* ---- the models root and checkpoint resources ------------------------------------------------
 * Here, not in service_data.c, because jobs (below) need them as much as models and rollouts
 * there do: service_data.c calls into this file, never the other way. */

int svc_resolve_under_root(svc *s, const char *field, const char *path, char *out, chord_err *err) {
    if (!path || !*path) return chord_err_set(err, "%s: must be a non-empty path", field);
    char cand[PATH_MAX];
    int n = path[0] == '/' ? snprintf(cand, sizeof cand, "%s", path)
                           : snprintf(cand, sizeof cand, "%s/%s", s->models_root, path);
    if (n < 0 || (size_t)n >= sizeof cand) return chord_err_set(err, "%s: path too long", field);
    if (!realpath(cand, out)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return chord_err_set(err, "%s: '%s' does not exist under the models root", field, path);
        return chord_err_set(err, "%s: '%s': %s", field, path, strerror(errno));
    }
    size_t rl = strlen(s->models_root);
    if (strncmp(out, s->models_root, rl) != 0 || (out[rl] != '/' && out[rl] != '\0'))
        return chord_err_set(err, "%s: '%s' is outside the models root", field, path);
    return 0;
}

int svc_resolve_model(svc *s, store *st, const char *field, const char *ref, char **dir,
                      json_t **init_config, char **tokenizer, chord_err *err) {
    *dir = NULL;
    *init_config = NULL;
    *tokenizer = NULL;
    if (!strncmp(ref, "mdl_", 4) && !strchr(ref, '/')) {
        store_model m = {0};
        if (store_model_get(st, ref, &m, err)) {
            if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
            return chord_err_prefix(err, "%s", field);
        }
        int rc = 0;
        if (m.directory) {
            *dir = strdup(m.directory);
            if (!*dir) rc = chord_err_oom(err);
        } else {
            *init_config = json_loads(m.config_json, 0, NULL);
            if (!*init_config)
                rc = chord_err_setc(err, CHORD_E_INTERNAL, "%s: stored config of %s unreadable",
                                    field, ref);
        }
        if (rc == 0 && m.tokenizer_dir) {
            *tokenizer = strdup(m.tokenizer_dir);
            if (!*tokenizer) rc = chord_err_oom(err);
        }
        store_model_free(&m);
        if (rc) {
            free(*dir);
            *dir = NULL;
            json_decref(*init_config);
            *init_config = NULL;
        }
        return rc;
    }
    char real[PATH_MAX], weights[PATH_MAX];
    if (svc_resolve_under_root(s, field, ref, real, err)) return -1;
    if (svc_model_dir_weights(s, field, ref, real, weights, err)) return -1;
    *dir = strdup(real);
    return *dir ? 0 : chord_err_oom(err);
}

int svc_model_dir_weights(svc *s, const char *field, const char *ref, const char *real,
                          char *weights, chord_err *err) {
    char cfg[PATH_MAX + 32];
    if (!chord_is_dir(real)) return chord_err_set(err, "%s: '%s' is not a directory", field, ref);
    snprintf(cfg, sizeof cfg, "%s/config.json", real);
    if (chord_is_file(cfg)) {
        snprintf(weights, PATH_MAX, "%s", real);
        return 0;
    }
    /* a PEFT LoRA directory: its base (base_model_name_or_path) must be a model directory under
     * the models root too (model_open: base + adapter) */
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", real);
    json_t *ac = chord_is_file(cfg) ? json_load_file(cfg, 0, NULL) : NULL;
    if (!ac)
        return chord_err_set(err,
                             "%s: '%s' has no config.json (a Hugging Face model directory or a "
                             "PEFT LoRA adapter directory is expected)",
                             field, ref);
    const char *base = json_string_value(json_object_get(ac, "base_model_name_or_path"));
    char bfield[128], bcfg[PATH_MAX + 16];
    snprintf(bfield, sizeof bfield, "%s (LoRA adapter) base_model_name_or_path", field);
    int rc = base ? svc_resolve_under_root(s, bfield, base, weights, err)
                  : chord_err_set(err, "%s: missing", bfield);
    if (rc == 0) {
        snprintf(bcfg, sizeof bcfg, "%s/config.json", weights);
        if (!chord_is_file(bcfg))
            rc = chord_err_set(err, "%s: '%s' has no config.json", bfield, base);
    }
    json_decref(ac);
    return rc;
}

/* Appends {"path", "bytes"} for every regular file under dir/rel, recursively. */
static int list_files(const char *dir, const char *rel, json_t *arr, int depth) {
    if (depth > 8) return 0;
    char path[2 * PATH_MAX + 2];
    snprintf(path, sizeof path, "%s%s%s", dir, *rel ? "/" : "", rel);
    DIR *d = opendir(path);
    if (!d) return -1;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) && rc == 0) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char sub[PATH_MAX], full[2 * PATH_MAX + 2];
        int n = snprintf(sub, sizeof sub, "%s%s%s", rel, *rel ? "/" : "", e->d_name);
        if (n < 0 || (size_t)n >= sizeof sub) continue;
        snprintf(full, sizeof full, "%s/%s", dir, sub);
        struct stat sb;
        if (lstat(full, &sb)) continue;
        if (S_ISDIR(sb.st_mode)) {
            rc = list_files(dir, sub, arr, depth + 1);
        } else if (S_ISREG(sb.st_mode)) {
            json_t *o = json_pack("{s:s,s:I}", "path", sub, "bytes", (json_int_t)sb.st_size);
            if (!o || json_array_append_new(arr, o)) rc = -1;
        }
    }
    closedir(d);
    return rc;
}

static int by_path(const void *a, const void *b) {
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    return strcmp(json_string_value(json_object_get(x, "path")),
                  json_string_value(json_object_get(y, "path")));
}

json_t *svc_checkpoint_json(const store_checkpoint *c) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    svc_json_put(o, "id", json_string(c->id), &bad);
    svc_json_put(o, "job_id", json_string(c->job_id), &bad);
    svc_json_put(o, "step", json_integer(c->step), &bad);
    svc_json_put(o, "sha256", json_string(c->sha256), &bad);
    svc_json_put(o, "bytes", json_integer(c->bytes), &bad);
    svc_json_put(o, "created_at", svc_json_time(c->created_ms), &bad);
    json_t *files = json_array();
    if (files && list_files(c->path, "", files, 0) == 0) {
        size_t n = json_array_size(files);
        json_t **tmp = n ? malloc(n * sizeof *tmp) : NULL;
        if (tmp) {
            for (size_t i = 0; i < n; i++)
                tmp[i] = json_incref(json_array_get(files, i));
            qsort(tmp, n, sizeof *tmp, by_path);
            json_array_clear(files);
            for (size_t i = 0; i < n; i++)
                json_array_append_new(files, tmp[i]);
            free(tmp);
        }
    }
    svc_json_put(o, "files", files ? files : json_array(), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- the pool of store handles ------------------------------------------------------------ */

store *svc_store_get(svc *s, chord_err *err) {
    pthread_mutex_lock(&s->pool_mu);
    store *st = s->n_free ? s->free_handles[--s->n_free] : NULL;
    pthread_mutex_unlock(&s->pool_mu);
    if (st) return st;
    if (store_open(s->data_dir, &st, err)) return NULL;
    return st;
}

void svc_store_put(svc *s, store *st) {
    if (!st) return;
    pthread_mutex_lock(&s->pool_mu);
    if (s->n_free == s->cap_free) {
        store **h = chord_array_grow(s->free_handles, &s->cap_free, s->n_free + 1, sizeof *h);
        if (!h) {
            pthread_mutex_unlock(&s->pool_mu);
            store_close(st);
            return;
        }
        s->free_handles = h;
    }
    s->free_handles[s->n_free++] = st;
    pthread_mutex_unlock(&s->pool_mu);
}

/* ---- lifetime ----------------------------------------------------------------------------- */

/* the watch thread (below, with the watches) */
/* tk_options.resolve: a Tinker base_model is what a job's "model" may name (a registered id or
 * a directory under the models root), and must be a directory. */
static int tinker_resolve(void *user, const char *base_model, char **dir, chord_err *err) {
    svc *s = user;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    json_t *init = NULL;
    char *tok = NULL;
    int rc = svc_resolve_model(s, st, "base_model", base_model, dir, &init, &tok, err);
    svc_store_put(s, st);
    json_decref(init);
    free(tok);
    if (rc == 0 && !*dir)
        rc = chord_err_set(err, "base_model: %.100s is a random-init model; a Tinker training "
                                "client needs a model directory", base_model);
    return rc;
}

static void *hub_main(void *arg);
static void hub_poll_all(svc *s);
static void hub_stop(svc *s);

static void hook_publish(void *user, const char *id) {
    svc_publish(user, id);
}

static void hook_on_step(void *user, const char *job_id, int64_t step, const char *const *names,
                         const double *values, int n) {
    svc *s = user;
    (void)job_id;
    (void)step;
    pthread_mutex_lock(&s->stats_mu);
    s->steps_total++;
    for (int i = 0; i < n; i++) {
        if (!strcmp(names[i], "tokens_per_s/train")) s->tokens_per_s_train = values[i];
        if (!strcmp(names[i], "tokens_per_s/rollout")) s->tokens_per_s_rollout = values[i];
    }
    pthread_mutex_unlock(&s->stats_mu);
}

/* Rollout requests a dead or stopped process accepted but never finished are run again: the
 * request is stored whole, so the new workers need nothing else. One that cannot be queued is
 * marked failed with the reason rather than left pending for ever. */
static int resubmit_pending_rollouts(svc *s, chord_err *err) {
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    char(*ids)[STORE_ID_MAX] = NULL;
    size_t n = 0, queued = 0;
    int rc = store_rollout_pending_ids(st, &ids, &n, err);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        chord_err e = {0};
        if (jobs_submit_rollout(s->jobs, ids[i], &e) == 0) {
            queued++;
            continue;
        }
        LOG_WARN("rollout %s: not queued again after the restart: %s", ids[i], e.msg);
        chord_err fe = {0};
        if (store_rollout_finish(st, ids[i], NULL, e.msg, &fe))
            LOG_WARN("rollout %s: marking it failed: %s", ids[i], fe.msg);
    }
    if (queued > 0) LOG_INFO("%zu pending rollout request(s) queued again", queued);
    free(ids);
    svc_store_put(s, st);
    return rc;
}

int svc_open(const svc_options *opt, svc **out, chord_err *err) {
    *out = NULL;
    if (!opt || !opt->data_dir || !*opt->data_dir)
        return chord_err_set(err, "service: a data directory is required");
    svc *s = calloc(1, sizeof *s);
    if (!s) return chord_err_oom(err);
    pthread_mutex_init(&s->pool_mu, NULL);
    pthread_mutex_init(&s->hub_mu, NULL);
    pthread_cond_init(&s->hub_cv, NULL);
    pthread_mutex_init(&s->stats_mu, NULL);
    pthread_mutex_init(&s->idem_mu, NULL);
    s->idem_ttl_ms = 1000 * (opt->idempotency_ttl_s > 0 ? opt->idempotency_ttl_s
                                                        : SVC_DEFAULT_IDEMPOTENCY_TTL_S);
    s->started = chord_now();
    s->started_ms = store_now_ms();
    s->max_upload = opt->max_upload_bytes > 0 ? opt->max_upload_bytes : (int64_t)1 << 30;
    s->memory_limit = opt->memory_limit > 0 ? opt->memory_limit : 0;
    s->max_line = opt->max_line_bytes > 0 ? opt->max_line_bytes : SVC_DEFAULT_MAX_LINE_BYTES;
    s->max_rollout_tokens =
        opt->max_rollout_tokens > 0 ? opt->max_rollout_tokens : SVC_DEFAULT_MAX_ROLLOUT_TOKENS;
    s->max_queued_jobs =
        opt->max_queued_jobs > 0 ? opt->max_queued_jobs : SVC_DEFAULT_MAX_QUEUED_JOBS;
    s->max_pending_rollouts = opt->max_pending_rollouts > 0 ? opt->max_pending_rollouts
                                                            : SVC_DEFAULT_MAX_PENDING_ROLLOUTS;

    /* the store: migrate, then recover jobs a dead process left running */
    store *st = NULL;
    if (store_open(opt->data_dir, &st, err)) goto fail;
    s->data_dir = strdup(store_data_dir(st));
    int64_t requeued = 0;
    if (!s->data_dir || store_job_requeue_running(st, &requeued, err)) {
        if (!s->data_dir) chord_err_oom(err);
        store_close(st);
        goto fail;
    }
    if (requeued > 0)
        LOG_INFO("%lld interrupted job(s) queued again to resume", (long long)requeued);
    svc_store_put(s, st);

    /* the models root */
    char root[PATH_MAX];
    if (opt->models_root && *opt->models_root) {
        snprintf(root, sizeof root, "%s", opt->models_root);
    } else {
        snprintf(root, sizeof root, "%s/models", s->data_dir);
        if (chord_mkdirs(root, err)) goto fail;
    }
    char real[PATH_MAX];
    if (!realpath(root, real) || !chord_is_dir(real)) {
        chord_err_set(err, "--models-root: '%s' is not a directory", root);
        goto fail;
    }
    s->models_root = strdup(real);
    if (!s->models_root) {
        chord_err_oom(err);
        goto fail;
    }

    s->ranks = opt->dist ? dist_size(opt->dist) : 1;
    if (jobs_devices_expand(opt->device, &s->devices, &s->n_devices, err)) goto fail;
    if (pthread_create(&s->hub_thread, NULL, hub_main, s) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "service: cannot start the watch thread: %s",
                       strerror(errno));
        goto fail;
    }
    s->hub_started = 1;
    if (opt->workers) {
        jobs_options jo = {.data_dir = s->data_dir,
                           .devices = (const char *const *)s->devices,
                           .n_devices = s->n_devices,
                           .slots = opt->slots,
                           .threads = opt->threads,
                           .memory_limit = s->memory_limit,
                           .hooks = {.user = s, .publish = hook_publish, .on_step = hook_on_step},
                           .dist = opt->dist,
                           .zero = opt->zero,
                           .bucket_mb = opt->bucket_mb};
        if (jobs_start(&jo, &s->jobs, err)) goto fail;
        if (resubmit_pending_rollouts(s, err)) goto fail;
        tk_options to = {.data_dir = s->data_dir,
                         .device = s->devices[0],
                         .threads = opt->threads,
                         .bases = jobs_bases_interface(s->jobs),
                         .resolve = tinker_resolve,
                         .user = s};
        if (tk_open(&to, &s->tinker, err)) goto fail;
    }
    if (svc_webhooks_start(s, opt->webhook_url, opt->webhook_secret, err) ||
        svc_pipeline_start(s, err))
        goto fail;
    *out = s;
    return 0;
fail:
    svc_close(s);
    return -1;
}

tk_service *svc_tinker(svc *s) { return s->tinker; }

int svc_stopping(const svc *s) {
    return atomic_load(&((svc *)s)->stopping);
}

const char *const *svc_devices(const svc *s, int *n_devices) {
    *n_devices = s->n_devices;
    return (const char *const *)s->devices;
}

void svc_shutdown(svc *s) {
    if (!s || atomic_exchange(&s->shut_down, 1)) return;
    atomic_store(&s->stopping, 1); /* from here on work is refused (CHORD_E_UNAVAILABLE) */
    LOG_INFO("service stopping: running jobs checkpoint and go back to the queue");
    /* the Tinker models first (their views hold the pool's shared bases), then the workers;
     * both stay valid for requests in flight until svc_close */
    tk_shutdown(s->tinker);
    jobs_shutdown(s->jobs);
    hub_poll_all(s); /* the watches see where each job stopped */
}

void svc_close(svc *s) {
    if (!s) return;
    svc_shutdown(s);
    svc_pipeline_stop(s);
    svc_webhooks_stop(s); /* before the store handles close: its last pass uses one */
    hub_stop(s);
    tk_close(s->tinker);
    jobs_free(s->jobs);
    for (size_t i = 0; i < s->n_free; i++)
        store_close(s->free_handles[i]);
    free(s->free_handles);
    jobs_devices_free(s->devices, s->n_devices);
    free(s->data_dir);
    free(s->models_root);
    pthread_mutex_destroy(&s->pool_mu);
    pthread_mutex_destroy(&s->hub_mu);
    pthread_cond_destroy(&s->hub_cv);
    pthread_mutex_destroy(&s->stats_mu);
    pthread_mutex_destroy(&s->idem_mu);
    free(s);
}

const char *svc_models_root(const svc *s) {
    return s->models_root;
}
int64_t svc_max_upload_bytes(const svc *s) {
    return s->max_upload;
}

/* ---- jobs --------------------------------------------------------------------------------- */

/* Maps a store NOT_FOUND for an id the caller passed in a body field to a 400 naming it. */
static int ref_error(chord_err *err, const char *field) {
    if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
    return chord_err_prefix(err, "%s", field);
}

/* Rewrites the resolved document's "model" so the worker needs no lookups: a directory becomes
 * its absolute path, a registered random-init model becomes model.init. *mc gets the model's
 * config (a directory's config.json is read: one that does not parse is refused here, not when
 * the job starts). */
static int resolve_job_model(svc *s, store *st, const job_config *cfg, const char *checkpoint_dir,
                             json_t *doc, model_config *mc, chord_err *err) {
    json_t *model = json_object();
    if (!model) return chord_err_oom(err);
    int bad = 0;
    if (cfg->model_path) {
        char *dir = NULL, *tok = NULL;
        json_t *init = NULL;
        const char *field = checkpoint_dir ? "model.checkpoint" : "model.path";
        if (checkpoint_dir) { /* resolved by svc_job_create: the checkpoint's own directory */
            dir = strdup(checkpoint_dir);
            if (!dir) {
                json_decref(model);
                return chord_err_oom(err);
            }
        } else if (svc_resolve_model(s, st, field, cfg->model_path, &dir, &init, &tok, err)) {
            json_decref(model);
            return -1;
        }
        int rc = dir ? model_config_load(dir, mc, err) : model_config_from_json(init, mc, err);
        if (rc) {
            ref_error(err, field);
            json_decref(init);
            free(dir);
            free(tok);
            json_decref(model);
            return -1;
        }
        if (dir) {
            svc_json_put(model, "path", json_string(dir), &bad);
        } else {
            json_t *io = json_object();
            svc_json_put(io, "config", init, &bad);
            init = NULL;
            svc_json_put(io, "seed", json_integer((json_int_t)cfg->model_init_seed), &bad);
            if (tok) svc_json_put(io, "tokenizer", json_string(tok), &bad);
            svc_json_put(model, "init", io, &bad);
        }
        json_decref(init);
        free(dir);
        free(tok);
    } else {
        if (model_config_from_json(cfg->model_init_config, mc, err)) {
            json_decref(model);
            return chord_err_prefix(err, "model.init.config");
        }
        json_t *io = json_object();
        svc_json_put(io, "config", json_deep_copy(cfg->model_init_config), &bad);
        svc_json_put(io, "seed", json_integer((json_int_t)cfg->model_init_seed), &bad);
        if (cfg->model_init_tokenizer) {
            char real[PATH_MAX];
            if (svc_resolve_under_root(s, "model.init.tokenizer", cfg->model_init_tokenizer, real,
                                       err)) {
                json_decref(io);
                json_decref(model);
                return -1;
            }
            svc_json_put(io, "tokenizer", json_string(real), &bad);
        }
        svc_json_put(model, "init", io, &bad);
    }
    svc_json_put(doc, "model", model, &bad);
    return bad ? chord_err_oom(err) : 0;
}

/* A job document's "model": {"checkpoint": {"job_id", "step"?}} (docs/pipelines.md): *out gets
 * a shallow copy of doc whose model is {"path": <the checkpoint's directory>} (what jobconfig.h
 * reads), *ck the checkpoint; *out stays NULL for any other model. */
static int job_model_checkpoint(store *st, const json_t *doc, json_t **out, store_checkpoint *ck,
                                chord_err *err) {
    *out = NULL;
    const json_t *model = json_object_get(doc, "model");
    const json_t *ref = json_object_get(model, "checkpoint");
    if (!ref) return 0;
    if (json_object_size(model) != 1)
        return chord_err_set(err, "model: give checkpoint alone (not with path or init)");
    if (svc_checkpoint_ref(st, "model.checkpoint", ref, ck, err)) return -1;
    *out = json_copy((json_t *)doc);
    if (!*out || json_object_set_new(*out, "model", json_pack("{s:s}", "path", ck->path))) {
        json_decref(*out);
        *out = NULL;
        store_checkpoint_free(ck);
        return chord_err_oom(err);
    }
    return 0;
}

/* data.<field>: an id or a name (svc_dataset_ref), written back into the resolved document as
 * the id, so the job keeps the upload it was submitted with. */
static int resolve_job_dataset(store *st, json_t *resolved, const char *key, char **ref,
                               const char *kind_a, const char *kind_b, chord_err *err) {
    if (!*ref) return 0;
    char field[32], id[STORE_ID_MAX];
    snprintf(field, sizeof field, "data.%s", key);
    if (svc_dataset_ref(st, field, *ref, kind_a, kind_b, id, err)) return -1;
    json_t *data = json_object_get(resolved, "data");
    char *copy = strdup(id);
    if (!copy || !json_is_object(data) || json_object_set_new(data, key, json_string(id))) {
        free(copy);
        return chord_err_oom(err);
    }
    free(*ref);
    *ref = copy;
    return 0;
}

static int insert_job(store *st, void *user, const char *name, const char *config_json,
                      const char *base_checkpoint_id, const store_job_extra *extra,
                      char job_id[STORE_ID_MAX], chord_err *err) {
    (void)user;
    store_job j = {0};
    if (store_job_create_ex(st, name, config_json, base_checkpoint_id, extra, &j, err)) return -1;
    snprintf(job_id, STORE_ID_MAX, "%s", j.id);
    store_job_free(&j);
    return 0;
}

int svc_job_create(svc *s, const json_t *doc, json_t **job, chord_err *err) {
    return svc_job_submit(s, doc, insert_job, NULL, job, err);
}

int svc_job_submit(svc *s, const json_t *doc, svc_job_insert_fn insert, void *user, json_t **job,
                   chord_err *err) {
    *job = NULL;
    if (svc_stopping(s))
        return chord_err_setc(err, CHORD_E_UNAVAILABLE, "server is stopping: not accepting jobs");
    job_config cfg = {0};
    store_checkpoint base = {0};
    json_t *resolved = NULL, *from_checkpoint = NULL, *plain = NULL;
    char *text = NULL;
    int rc = -1;
    svc_job_pipeline pipe;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    /* the pipeline's fields ("promote", model.alias) off, then the job document jobconfig reads */
    if (svc_job_pipeline_parse(st, doc, &plain, &pipe, err) ||
        job_model_checkpoint(st, plain, &from_checkpoint, &base, err) ||
        jobconfig_from_json(from_checkpoint ? from_checkpoint : plain, &cfg, err))
        goto done;
    if (pipe.extra.promote_alias && (!cfg.data_eval || cfg.eval.every <= 0)) {
        chord_err_set(err, "promote: needs an evaluation to gate on: give data.eval and "
                           "eval.every > 0 (the final eval/accuracy is compared with "
                           "promote.min_eval_accuracy)");
        goto done;
    }
    resolved = jobconfig_to_json(&cfg);
    if (!resolved) {
        chord_err_oom(err);
        goto done;
    }
    model_config mc;
    if (resolve_job_model(s, st, &cfg, from_checkpoint ? base.path : NULL, resolved, &mc, err))
        goto done;
    if (resolve_job_dataset(st, resolved, "prompts", &cfg.data_prompts, "prompts", "eval", err) ||
        resolve_job_dataset(st, resolved, "expert", &cfg.data_expert, "expert", NULL, err) ||
        resolve_job_dataset(st, resolved, "eval", &cfg.data_eval, "eval", "prompts", err))
        goto done;
    int accepted = 0;
    for (int i = 0; i < s->n_devices; i++)
        if (jobs_device_accepts(s->devices[i], cfg.device)) accepted = 1;
    if (!accepted) {
        chord_err_set(err, "device: \"%s\" is not a device this server runs (it runs %s%s)",
                      cfg.device, s->devices[0], s->n_devices > 1 ? ", ..." : "");
        goto done;
    }
    if (svc_check_job_fits(s, st, &cfg, &mc, err)) goto done;
    /* the queue's limit, checked last: a job that would be refused anyway says why first */
    int64_t counts[STORE_JOB_NSTATES] = {0};
    if (store_job_count_by_state(st, counts, err)) goto done;
    if (counts[STORE_JOB_QUEUED] >= s->max_queued_jobs) {
        chord_err_setc(err, SVC_E_BUSY,
                       "queue full: %lld jobs are queued, the server's limit "
                       "(--max-queued-jobs %d); submit again once some have started",
                       (long long)counts[STORE_JOB_QUEUED], s->max_queued_jobs);
        goto done;
    }
    text = json_dumps(resolved, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        chord_err_oom(err);
        goto done;
    }
    store_job j = {0};
    char id[STORE_ID_MAX];
    if (insert(st, user, cfg.name, text, from_checkpoint ? base.id : NULL, &pipe.extra, id, err) ||
        store_job_get(st, id, &j, err))
        goto done;
    *job = svc_job_json(&j);
    LOG_INFO("job %s queued (%s, %s, %lld steps)", j.id, cfg.name,
             jobconfig_algorithm_name(cfg.algorithm), (long long)cfg.steps);
    store_job_free(&j);
    if (!*job) {
        chord_err_oom(err);
        goto done;
    }
    jobs_wake(s->jobs);
    rc = 0;
done:
    free(text);
    json_decref(resolved);
    json_decref(from_checkpoint);
    json_decref(plain);
    store_checkpoint_free(&base);
    svc_store_put(s, st);
    jobconfig_free(&cfg);
    return rc;
}

int svc_job_get(svc *s, const char *id, json_t **job, chord_err *err) {
    *job = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    int rc = svc_by_id(store_job_get(st, id, &j, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    *job = svc_job_json(&j);
    store_job_free(&j);
    return *job ? 0 : chord_err_oom(err);
}

int svc_job_list(svc *s, const char *state, size_t offset, size_t limit, const char *after,
                 json_t **list, chord_err *err) {
    *list = NULL;
    int st_filter = -1;
    if (state && !strcmp(state, "paused")) {
        st_filter = STORE_JOB_LIST_PAUSED;
    } else if (state) {
        store_job_state js;
        if (store_job_state_parse(state, &js, NULL))
            return chord_err_set(err, "state: must be one of queued, running, paused, succeeded, "
                                      "failed, cancelled");
        st_filter = (int)js;
    }
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_job_list(st, st_filter, offset, limit + 1, svc_cursor(after), &items, &n, &total,
                            err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, svc_job_json(&items[i]))) bad = 1;
    store_job_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

int svc_job_cancel(svc *s, const char *id, json_t **job, chord_err *err) {
    *job = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    int rc = svc_by_id(store_job_request_cancel(st, id, &j, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    if (j.state == STORE_JOB_RUNNING) jobs_cancel(s->jobs, id);
    LOG_INFO("job %s: cancel requested (%s)", id, store_job_state_name(j.state));
    *job = svc_job_json(&j);
    store_job_free(&j);
    svc_publish(s, id);
    return *job ? 0 : chord_err_oom(err);
}

int svc_job_pause(svc *s, const char *id, int pause, json_t **job, chord_err *err) {
    *job = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    int rc = svc_by_id(store_job_set_paused(st, id, pause, &j, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    if (j.state == STORE_JOB_RUNNING) jobs_pause(s->jobs, id, pause);
    if (!pause) jobs_wake(s->jobs); /* back in line, at its old place */
    LOG_INFO("job %s: %s (%s)", id, pause ? "pause requested" : "resumed",
             store_job_state_name(j.state));
    *job = svc_job_json(&j);
    store_job_free(&j);
    svc_publish(s, id);
    return *job ? 0 : chord_err_oom(err);
}

/* Groups metric rows (in step order) into [{"step", "metrics": {...}}]. */
static json_t *steps_json(const store_metric_row *rows, size_t n) {
    json_t *arr = json_array();
    json_t *cur = NULL, *metrics = NULL;
    int64_t cur_step = INT64_MIN;
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++) {
        if (rows[i].step != cur_step) {
            cur = json_object();
            metrics = json_object();
            svc_json_put(cur, "step", json_integer(rows[i].step), &bad);
            if (!cur || !metrics || json_object_set_new(cur, "metrics", metrics) ||
                json_array_append_new(arr, cur)) {
                bad = 1;
                break;
            }
            cur_step = rows[i].step;
        }
        svc_json_put(metrics, rows[i].name, svc_json_real(rows[i].value), &bad);
    }
    if (bad) {
        json_decref(arr);
        return NULL;
    }
    return arr;
}

int svc_job_metrics(svc *s, const char *id, int64_t since_step, size_t max_steps, json_t **out,
                    chord_err *err) {
    *out = NULL;
    if (since_step < 0) since_step = 0;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    store_metric_row *rows = NULL;
    size_t n = 0;
    int64_t next = since_step;
    int rc = svc_by_id(store_job_get(st, id, &j, err), err);
    if (rc == 0) rc = store_metrics_since(st, id, since_step, max_steps, &rows, &n, &next, err);
    svc_store_put(s, st);
    store_job_free(&j);
    if (rc) return -1;
    json_t *steps = steps_json(rows, n);
    store_metric_rows_free(rows, n);
    json_t *o = json_object();
    int bad = !o || !steps;
    if (!bad) {
        svc_json_put(o, "job_id", json_string(id), &bad);
        svc_json_put(o, "since_step", json_integer(since_step), &bad);
        svc_json_put(o, "next_step", json_integer(next), &bad);
        svc_json_put(o, "steps", steps, &bad);
        steps = NULL;
    }
    json_decref(steps);
    if (bad) {
        json_decref(o);
        return chord_err_oom(err);
    }
    *out = o;
    return 0;
}

int svc_job_samples(svc *s, const char *id, int64_t step, size_t offset, size_t limit,
                    const char *after, json_t **out, chord_err *err) {
    *out = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    if (step < -1) step = -1;
    long long after_step = -1, after_index = 0;
    if (svc_cursor(after)) {
        int used = 0;
        if (sscanf(after, "%lld.%lld%n", &after_step, &after_index, &used) != 2 ||
            (size_t)used != strlen(after) || after_step < 0 || after_index < 0 ||
            !isdigit((unsigned char)after[0]))
            return chord_err_set(err,
                                 "after: \"%.60s\" is not a cursor of this list (pass a "
                                 "next_cursor it returned: \"<step>.<index>\")",
                                 after);
    }
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    store_sample_row *rows = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = svc_by_id(store_job_get(st, id, &j, err), err);
    if (rc == 0)
        rc = store_samples_list(st, id, step, offset, limit + 1, after_step, after_index, &rows, &n,
                                &total, err);
    svc_store_put(s, st);
    store_job_free(&j);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++) {
        json_t *o = json_object();
        svc_json_put(o, "step", json_integer(rows[i].step), &bad);
        svc_json_put(o, "index", json_integer(rows[i].index), &bad);
        svc_json_put(o, "kind", svc_json_str(rows[i].kind), &bad);
        svc_json_put(o, "prompt", svc_json_str(rows[i].prompt), &bad);
        svc_json_put(o, "completion", svc_json_str(rows[i].completion), &bad);
        svc_json_put(o, "answer", svc_json_str(rows[i].answer), &bad);
        svc_json_put(o, "reward", svc_json_real(rows[i].reward), &bad);
        svc_json_put(o, "reason", svc_json_str(rows[i].reason), &bad);
        if (!o || json_array_append_new(arr, o)) bad = 1;
    }
    store_sample_rows_free(rows, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *out = svc_json_list(arr, total, offset, limit);
    return *out ? 0 : chord_err_oom(err);
}

/* ---- watches: one feed per (job, since_step), polled by the watch thread -------------------
 * service.h draws the states of a feed and of a watch. Who touches what:
 *   hub_mu (svc):  the feeds table, the poll queue, a feed's in_table, joinable, poll_queued.
 *   feed mu:       its events, done / abandoned / err, its watches and their cursors.
 *   watch thread:  a feed's poller position (last_state, next_step, last_ckpt_step, polled);
 *                  it alone polls SQLite, with no lock held.
 * Lock order: hub_mu -> feed mu -> notify's locks. A feed is freed by its last reference. */

typedef struct svc_encoding {
    const svc_codec *codec;
    void *data;
    struct svc_encoding *next;
} svc_encoding;

typedef struct feed_event {
    svc_event ev;      /* ev.data is the feed's */
    svc_encoding *enc; /* one per codec that asked for this event */
} feed_event;

struct svc_feed {
    svc *s;
    atomic_int refs; /* the table's, each watch's, the poll queue's */
    char job_id[STORE_ID_MAX];
    int64_t since_step;
    /* (hub_mu) */
    svc_feed *next; /* s->feeds */
    int in_table;
    int joinable; /* a joiner would get the whole history (JOINABLE) */
    svc_feed *next_poll;
    int poll_queued;
    /* the poller's position (the watch thread's alone) */
    int last_state; /* -1 before the first state event */
    int64_t next_step;
    int64_t last_ckpt_step;
    size_t polled; /* events appended so far */
    /* (mu) */
    pthread_mutex_t mu;
    feed_event *events; /* events[i - base] for i in [base, end) */
    size_t base, end, cap;
    int done;      /* FINISHED: the final event is in, or the poll failed (err) */
    int abandoned; /* ABANDONED: no watch left; the events are released */
    chord_err err; /* err.code set: the poll failed; the watches end with it */
    svc_watch *watches;
};

struct svc_watch {
    svc_feed *feed;
    const svc_codec *codec;
    svc_notify_fn notify;
    void *user;
    size_t cursor;   /* the next event to read (feed mu) */
    svc_watch *next; /* feed->watches (feed mu) */
    int done;        /* the owner's */
};

static void feed_event_release(feed_event *e) {
    json_decref(e->ev.data);
    e->ev.data = NULL;
    for (svc_encoding *x = e->enc, *nx; x; x = nx) {
        nx = x->next;
        x->codec->release(x->data);
        free(x);
    }
    e->enc = NULL;
}

/* Releases the events before `upto`. (mu, or the last reference) */
static void feed_drop(svc_feed *f, size_t upto) {
    if (upto <= f->base) return;
    size_t drop = upto - f->base;
    for (size_t i = 0; i < drop; i++)
        feed_event_release(&f->events[i]);
    memmove(f->events, f->events + drop, (f->end - upto) * sizeof *f->events);
    f->base = upto;
}

/* Once the feed takes no joiners, releases what every watch has read, except the event each
 * one was handed last (borrowed until its next call). (mu) */
static void feed_trim(svc_feed *f) {
    if (f->end <= SVC_FEED_JOIN_EVENTS) return;
    size_t low = f->end;
    for (svc_watch *w = f->watches; w; w = w->next) {
        size_t keep = w->cursor > f->base ? w->cursor - 1 : f->base;
        if (keep < low) low = keep;
    }
    feed_drop(f, low);
}

static void feed_unref(svc_feed *f) {
    if (atomic_fetch_sub(&f->refs, 1) != 1) return;
    feed_drop(f, f->end);
    free(f->events);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

/* Takes f out of the table; 1 when the caller must drop the table's reference. (hub_mu) */
static int feed_untable_locked(svc *s, svc_feed *f) {
    if (!f->in_table) return 0;
    for (svc_feed **p = &s->feeds; *p; p = &(*p)->next) {
        if (*p == f) {
            *p = f->next;
            break;
        }
    }
    f->in_table = 0;
    return 1;
}

/* Queues f for the watch thread (FIFO: no feed waits behind a busy one for ever). (hub_mu) */
static void feed_queue_locked(svc *s, svc_feed *f) {
    if (f->poll_queued) return;
    f->poll_queued = 1;
    atomic_fetch_add(&f->refs, 1); /* the queue's */
    f->next_poll = NULL;
    if (s->poll_tail)
        s->poll_tail->next_poll = f;
    else
        s->poll_head = f;
    s->poll_tail = f;
    pthread_cond_signal(&s->hub_cv);
}

void svc_publish(svc *s, const char *id) {
    pthread_mutex_lock(&s->hub_mu);
    for (svc_feed *f = s->feeds; f; f = f->next)
        if (!strcmp(f->job_id, id)) feed_queue_locked(s, f);
    pthread_mutex_unlock(&s->hub_mu);
    svc_webhooks_wake(s); /* a final state or a checkpoint may be an event */
    svc_pipeline_wake(s); /* or a promotion to decide */
}

/* A FINISHED feed leaves the table: nobody joins it, nothing polls it. */
static void feed_retire(svc *s, svc_feed *f) {
    pthread_mutex_lock(&s->hub_mu);
    int unref = feed_untable_locked(s, f);
    pthread_mutex_unlock(&s->hub_mu);
    if (unref) feed_unref(f);
}

static void feed_notify_locked(svc_feed *f) {
    for (svc_watch *w = f->watches; w; w = w->next)
        if (w->notify) w->notify(w->user);
}

/* The next event of the job after the poller's position: 1 with *ev (new data), 0 when nothing
 * is new, -1 on error. (the watch thread) */
static int feed_poll_one(svc_feed *f, store *st, svc_event *ev, chord_err *err) {
    memset(ev, 0, sizeof *ev);
    store_job j = {0};
    int rc = store_job_get(st, f->job_id, &j, err);
    if (rc) goto out;
    int terminal = store_job_state_terminal(j.state);
    /* a state change first (queued -> running, running -> queued on a stop) */
    if (!terminal && (int)j.state != f->last_state) {
        f->last_state = (int)j.state;
        *ev = (svc_event){SVC_EVENT_STATE, j.current_step, 0, svc_job_json(&j)};
        rc = ev->data ? 1 : chord_err_oom(err);
        goto out;
    }
    /* the next step, if stored */
    store_metric_row *rows = NULL;
    size_t n = 0;
    int64_t next = f->next_step;
    if (store_metrics_since(st, f->job_id, f->next_step, 1, &rows, &n, &next, err)) {
        rc = -1;
        goto out;
    }
    if (n > 0) {
        json_t *steps = steps_json(rows, n);
        json_t *one = steps ? json_incref(json_array_get(steps, 0)) : NULL;
        json_decref(steps);
        *ev = (svc_event){SVC_EVENT_STEP, rows[0].step, 0, one};
        store_metric_rows_free(rows, n);
        f->next_step = next;
        rc = one ? 1 : chord_err_oom(err);
        goto out;
    }
    store_metric_rows_free(rows, n);
    /* new checkpoints */
    store_checkpoint *cks = NULL;
    size_t nc = 0;
    if (store_checkpoint_list(st, f->job_id, &cks, &nc, err)) {
        rc = -1;
        goto out;
    }
    for (size_t i = 0; i < nc; i++) {
        if (cks[i].step <= f->last_ckpt_step) continue;
        f->last_ckpt_step = cks[i].step;
        *ev = (svc_event){SVC_EVENT_CHECKPOINT, cks[i].step, 0, svc_checkpoint_json(&cks[i])};
        store_checkpoint_list_free(cks, nc);
        rc = ev->data ? 1 : chord_err_oom(err);
        goto out;
    }
    store_checkpoint_list_free(cks, nc);
    if (terminal) {
        *ev = (svc_event){SVC_EVENT_STATE, j.current_step, 1, svc_job_json(&j)};
        rc = ev->data ? 1 : chord_err_oom(err);
        goto out;
    }
    rc = 0;
out:
    store_job_free(&j);
    return rc;
}

/* Adds a polled event (takes ev->data) and wakes the watches. 1: poll on; 0: the feed is
 * finished or abandoned; -1 with err on failure. (the watch thread) */
static int feed_append(svc *s, svc_feed *f, svc_event *ev, chord_err *err) {
    if (f->polled == SVC_FEED_JOIN_EVENTS) {
        /* JOINABLE -> STREAMING before the history outgrows what a joiner is replayed: from
         * here on events may be released (feed_trim) */
        pthread_mutex_lock(&s->hub_mu);
        f->joinable = 0;
        pthread_mutex_unlock(&s->hub_mu);
    }
    pthread_mutex_lock(&f->mu);
    if (f->abandoned) {
        pthread_mutex_unlock(&f->mu);
        json_decref(ev->data);
        return 0;
    }
    if (f->end - f->base == f->cap) {
        feed_event *events =
            chord_array_grow(f->events, &f->cap, f->end - f->base + 1, sizeof *events);
        if (!events) {
            pthread_mutex_unlock(&f->mu);
            json_decref(ev->data);
            return chord_err_oom(err);
        }
        f->events = events;
    }
    f->events[f->end - f->base] = (feed_event){*ev, NULL};
    f->end++;
    f->polled++;
    if (ev->final) f->done = 1; /* FINISHED */
    int done = f->done;
    feed_notify_locked(f);
    pthread_mutex_unlock(&f->mu);
    if (done) feed_retire(s, f);
    return done ? 0 : 1;
}

/* The poll failed: the watches end with err once they have read what came before. */
static void feed_fail(svc *s, svc_feed *f, const chord_err *err) {
    pthread_mutex_lock(&f->mu);
    if (!f->done && !f->abandoned) {
        f->err = *err;
        if (!f->err.code) f->err.code = CHORD_E_INTERNAL;
        f->done = 1;
        feed_notify_locked(f);
    }
    pthread_mutex_unlock(&f->mu);
    feed_retire(s, f);
}

/* Polls until nothing is new (one SQLite handle, no lock held while reading). */
static void feed_poll(svc *s, svc_feed *f) {
    pthread_mutex_lock(&f->mu);
    int idle = f->done || f->abandoned;
    pthread_mutex_unlock(&f->mu);
    if (idle) return;
    chord_err err = {0};
    store *st = svc_store_get(s, &err);
    int rc = st ? 1 : -1;
    while (rc == 1) {
        svc_event ev;
        rc = feed_poll_one(f, st, &ev, &err);
        if (rc == 1) rc = feed_append(s, f, &ev, &err);
    }
    svc_store_put(s, st);
    if (rc < 0) feed_fail(s, f, &err);
}

/* The watch thread: polls the feeds svc_publish (a worker, a cancel) and svc_watch_open queue.
 * Lives from svc_open to svc_close. */
static void *hub_main(void *arg) {
    svc *s = arg;
    pthread_setname_np(pthread_self(), "svc-watch");
    pthread_mutex_lock(&s->hub_mu);
    for (;;) {
        while (!s->poll_head && !s->hub_stop)
            pthread_cond_wait(&s->hub_cv, &s->hub_mu);
        if (s->hub_stop) break; /* svc_close drops what is left */
        svc_feed *f = s->poll_head;
        s->poll_head = f->next_poll;
        if (!s->poll_head) s->poll_tail = NULL;
        f->next_poll = NULL;
        f->poll_queued = 0; /* a publish from now on polls it again */
        pthread_mutex_unlock(&s->hub_mu);
        feed_poll(s, f);
        feed_unref(f); /* the queue's */
        pthread_mutex_lock(&s->hub_mu);
    }
    pthread_mutex_unlock(&s->hub_mu);
    return NULL;
}

/* svc_shutdown: every feed polls once more. */
static void hub_poll_all(svc *s) {
    pthread_mutex_lock(&s->hub_mu);
    for (svc_feed *f = s->feeds; f; f = f->next)
        feed_queue_locked(s, f);
    pthread_mutex_unlock(&s->hub_mu);
}

/* svc_close: joins the watch thread and drops what it left — polls it never ran, and feeds
 * (none once every watch is closed, which svc_close's caller promised). */
static void hub_stop(svc *s) {
    if (s->hub_started) {
        pthread_mutex_lock(&s->hub_mu);
        s->hub_stop = 1;
        pthread_cond_broadcast(&s->hub_cv);
        pthread_mutex_unlock(&s->hub_mu);
        pthread_join(s->hub_thread, NULL);
        s->hub_started = 0;
    }
    while (s->poll_head) {
        svc_feed *f = s->poll_head;
        s->poll_head = f->next_poll;
        f->poll_queued = 0;
        feed_unref(f);
    }
    s->poll_tail = NULL;
    while (s->feeds) {
        svc_feed *f = s->feeds;
        s->feeds = f->next;
        f->in_table = 0;
        if (f->watches) LOG_WARN("service closing with a watch of job %s still open", f->job_id);
        feed_unref(f);
    }
}

int svc_watch_open(svc *s, const char *job_id, int64_t since_step, const svc_codec *codec,
                   svc_notify_fn notify, void *user, svc_watch **out, chord_err *err) {
    *out = NULL;
    if (!codec || !codec->encode || !codec->release)
        return chord_err_setc(err, CHORD_E_INTERNAL, "watch: a codec is required");
    if (since_step < 0) since_step = 0;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_job j = {0};
    int rc = svc_by_id(store_job_get(st, job_id, &j, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    svc_watch *w = calloc(1, sizeof *w);
    if (!w) {
        store_job_free(&j);
        return chord_err_oom(err);
    }
    w->codec = codec;
    w->notify = notify;
    w->user = user;
    pthread_mutex_lock(&s->hub_mu);
    svc_feed *f = NULL;
    for (svc_feed *it = s->feeds; it && !f; it = it->next)
        if (it->joinable && it->since_step == since_step && !strcmp(it->job_id, j.id)) f = it;
    if (f) { /* join: the whole history first (nothing was released while joinable) */
        atomic_fetch_add(&f->refs, 1); /* the watch's */
        pthread_mutex_lock(&f->mu);
        w->cursor = f->base;
        w->next = f->watches;
        f->watches = w;
        pthread_mutex_unlock(&f->mu);
    } else {
        f = calloc(1, sizeof *f);
        if (!f) {
            pthread_mutex_unlock(&s->hub_mu);
            store_job_free(&j);
            free(w);
            return chord_err_oom(err);
        }
        f->s = s;
        atomic_init(&f->refs, 2); /* the table's and the watch's */
        memcpy(f->job_id, j.id, STORE_ID_MAX);
        f->since_step = since_step;
        f->joinable = 1;
        f->in_table = 1;
        f->last_state = -1;
        f->next_step = since_step;
        f->last_ckpt_step = since_step - 1;
        pthread_mutex_init(&f->mu, NULL);
        f->watches = w;
        f->next = s->feeds;
        s->feeds = f;
        feed_queue_locked(s, f); /* the first poll: the job's current state */
    }
    pthread_mutex_unlock(&s->hub_mu);
    store_job_free(&j);
    w->feed = f;
    *out = w;
    return 0;
}

int svc_watch_next(svc_watch *w, const void **encoded, int *final, chord_err *err) {
    *encoded = NULL;
    *final = 0;
    if (w->done) return 0;
    svc_feed *f = w->feed;
    int rc = 0;
    pthread_mutex_lock(&f->mu);
    if (f->end - w->cursor > SVC_WATCH_MAX_LAG) {
        rc = chord_err_setc(err, CHORD_E_TOO_LARGE,
                            "this watcher fell %zu events behind; watch again with since_step",
                            f->end - w->cursor);
    } else if (w->cursor < f->end) {
        feed_event *e = &f->events[w->cursor - f->base];
        svc_encoding *x = e->enc;
        while (x && x->codec != w->codec)
            x = x->next;
        if (!x) { /* the first watch with this codec to read the event encodes it */
            void *data = w->codec->encode(&e->ev, err);
            x = data ? calloc(1, sizeof *x) : NULL;
            if (x) {
                *x = (svc_encoding){w->codec, data, e->enc};
                e->enc = x;
            } else if (data) {
                w->codec->release(data);
                chord_err_oom(err);
            }
        }
        if (x) {
            *encoded = x->data;
            *final = e->ev.final;
            w->cursor++;
            feed_trim(f);
            rc = 1;
        } else {
            rc = -1;
        }
    } else if (f->done && f->err.code) {
        if (err) *err = f->err;
        rc = -1;
    }
    pthread_mutex_unlock(&f->mu);
    if (rc < 0 || (rc == 1 && *final)) w->done = 1;
    return rc;
}

int svc_watch_done(const svc_watch *w) {
    return w->done;
}

void svc_watch_close(svc_watch *w) {
    if (!w) return;
    svc_feed *f = w->feed;
    svc *s = f->s;
    int untabled = 0;
    pthread_mutex_lock(&s->hub_mu);
    pthread_mutex_lock(&f->mu);
    for (svc_watch **p = &f->watches; *p; p = &(*p)->next) {
        if (*p == w) {
            *p = w->next;
            break;
        }
    }
    if (!f->watches) { /* ABANDONED: stop polling, release the events now */
        f->abandoned = 1;
        feed_drop(f, f->end);
        untabled = feed_untable_locked(s, f);
    } else {
        feed_trim(f);
    }
    pthread_mutex_unlock(&f->mu);
    pthread_mutex_unlock(&s->hub_mu);
    if (untabled) feed_unref(f);
    feed_unref(f); /* the watch's */
    free(w);
}

/* ---- health and Prometheus ---------------------------------------------------------------- */

int svc_health(svc *s, json_t **out) {
    int stopping = svc_stopping(s);
    json_t *o = json_object();
    if (!o) {
        *out = NULL;
        return stopping;
    }
    int bad = 0;
    svc_json_put(o, "status", json_string(stopping ? "stopping" : "ok"), &bad);
    svc_json_put(o, "version", json_string(SVC_VERSION), &bad);
    svc_json_put(o, "uptime_s", json_real(chord_now() - s->started), &bad);
    json_t *devs = json_array();
    for (int i = 0; i < s->n_devices; i++)
        json_array_append_new(devs, json_string(s->devices[i]));
    svc_json_put(o, "devices", devs, &bad);
    svc_json_put(o, "workers", json_integer(s->jobs ? s->n_devices * jobs_slots(s->jobs) : 0),
                 &bad);
    svc_json_put(o, "slots", json_integer(jobs_slots(s->jobs)), &bad);
    svc_json_put(o, "ranks", json_integer(s->ranks), &bad);
    svc_json_put(o, "shared_bases", svc_shared_bases_json(s), &bad);
    json_t *jobs = json_object();
    chord_err err = {0};
    store *st = svc_store_get(s, &err);
    int64_t counts[STORE_JOB_NSTATES] = {0};
    if (st && store_job_count_by_state(st, counts, &err) == 0)
        for (int i = 0; i < STORE_JOB_NSTATES; i++)
            json_object_set_new(jobs, store_job_state_name((store_job_state)i),
                                json_integer(counts[i]));
    svc_store_put(s, st);
    svc_json_put(o, "jobs", jobs, &bad);
    *out = o;
    return stopping;
}

void svc_record_request(svc *s, const char *transport, const char *route, const char *method,
                        int status, double seconds) {
    pthread_mutex_lock(&s->stats_mu);
    svc_route_stat *rs = NULL;
    for (size_t i = 0; i < s->n_routes; i++) {
        svc_route_stat *r = &s->routes[i];
        if (r->status == status && !strcmp(r->route, route) && !strcmp(r->method, method) &&
            !strcmp(r->transport, transport)) {
            rs = r;
            break;
        }
    }
    if (!rs && s->n_routes < sizeof s->routes / sizeof s->routes[0]) {
        rs = &s->routes[s->n_routes++];
        snprintf(rs->transport, sizeof rs->transport, "%s", transport);
        snprintf(rs->route, sizeof rs->route, "%s", route);
        snprintf(rs->method, sizeof rs->method, "%s", method);
        rs->status = status;
    }
    if (rs) rs->count++;
    svc_latency *lat = NULL;
    for (size_t i = 0; i < s->n_latencies; i++) {
        if (!strcmp(s->latencies[i].route, route) &&
            !strcmp(s->latencies[i].transport, transport)) {
            lat = &s->latencies[i];
            break;
        }
    }
    if (!lat && s->n_latencies < SVC_MAX_ROUTES) {
        lat = &s->latencies[s->n_latencies++];
        snprintf(lat->transport, sizeof lat->transport, "%s", transport);
        snprintf(lat->route, sizeof lat->route, "%s", route);
    }
    if (lat) {
        for (int b = 0; b < SVC_HIST_BUCKETS; b++)
            if (seconds <= hist_bounds[b]) {
                lat->buckets[b]++;
                break;
            }
        lat->count++;
        lat->sum += seconds;
    }
    pthread_mutex_unlock(&s->stats_mu);
}

/* Prometheus text as it is printed; bad once a print failed (nothing more is added). */
typedef struct textbuf {
    chord_buf b;
    int bad;
} textbuf;

#define tb_printf(t, ...)                                                                          \
    do {                                                                                           \
        if (!(t)->bad) (t)->bad = chord_buf_printf(&(t)->b, __VA_ARGS__) != 0;                     \
    } while (0)

int svc_prometheus(svc *s, char **text, size_t *len, chord_err *err) {
    *text = NULL;
    *len = 0;
    textbuf t = {0};
    int64_t counts[STORE_JOB_NSTATES] = {0};
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    int rc = store_job_count_by_state(st, counts, err);
    store_job *running = NULL;
    size_t n_running = 0;
    int64_t total = 0;
    if (rc == 0)
        rc = store_job_list(st, STORE_JOB_RUNNING, 0, 0, NULL, &running, &n_running, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;

    tb_printf(&t, "# HELP chord_up 1 while the server runs.\n# TYPE chord_up gauge\nchord_up 1\n");
    tb_printf(&t,
              "# HELP chord_uptime_seconds Seconds since the server started.\n"
              "# TYPE chord_uptime_seconds gauge\nchord_uptime_seconds %.3f\n",
              chord_now() - s->started);
    tb_printf(&t, "# HELP chord_jobs Jobs by state.\n# TYPE chord_jobs gauge\n");
    for (int i = 0; i < STORE_JOB_NSTATES; i++)
        tb_printf(&t, "chord_jobs{state=\"%s\"} %lld\n", store_job_state_name((store_job_state)i),
                  (long long)counts[i]);
    tb_printf(&t, "# HELP chord_job_current_step Last stored step of each running job.\n"
                  "# TYPE chord_job_current_step gauge\n");
    for (size_t i = 0; i < n_running; i++)
        tb_printf(&t, "chord_job_current_step{job=\"%s\",device=\"%s\"} %lld\n", running[i].id,
                  running[i].device ? running[i].device : "", (long long)running[i].current_step);
    store_job_list_free(running, n_running);
    tb_printf(&t,
              "# HELP chord_workers Worker threads (slots per device times devices).\n"
              "# TYPE chord_workers gauge\nchord_workers %d\n",
              s->jobs ? s->n_devices * jobs_slots(s->jobs) : 0);
    char *shared = svc_shared_bases_prometheus(s);
    if (shared) tb_printf(&t, "%s", shared);
    free(shared);

    pthread_mutex_lock(&s->stats_mu);
    tb_printf(&t,
              "# HELP chord_steps_total Training steps stored since the server started.\n"
              "# TYPE chord_steps_total counter\nchord_steps_total %llu\n",
              (unsigned long long)s->steps_total);
    tb_printf(&t,
              "# HELP chord_tokens_per_second Throughput of the last step.\n"
              "# TYPE chord_tokens_per_second gauge\n"
              "chord_tokens_per_second{phase=\"train\"} %g\n"
              "chord_tokens_per_second{phase=\"rollout\"} %g\n",
              isfinite(s->tokens_per_s_train) ? s->tokens_per_s_train : 0.0,
              isfinite(s->tokens_per_s_rollout) ? s->tokens_per_s_rollout : 0.0);
    tb_printf(&t,
              "# HELP chord_dataset_uploads_total Dataset uploads committed.\n"
              "# TYPE chord_dataset_uploads_total counter\nchord_dataset_uploads_total %llu\n"
              "# HELP chord_dataset_upload_bytes_total Bytes of committed dataset uploads.\n"
              "# TYPE chord_dataset_upload_bytes_total counter\n"
              "chord_dataset_upload_bytes_total %llu\n"
              "# HELP chord_dataset_uploads_rejected_total Dataset uploads rejected.\n"
              "# TYPE chord_dataset_uploads_rejected_total counter\n"
              "chord_dataset_uploads_rejected_total %llu\n",
              (unsigned long long)s->uploads_total, (unsigned long long)s->upload_bytes_total,
              (unsigned long long)s->upload_rejected_total);
    tb_printf(&t, "# HELP chord_requests_total Requests served, by transport, route, method and "
                  "status.\n# TYPE chord_requests_total counter\n");
    for (size_t i = 0; i < s->n_routes; i++) {
        const svc_route_stat *r = &s->routes[i];
        tb_printf(&t,
                  "chord_requests_total{transport=\"%s\",route=\"%s\",method=\"%s\",code=\"%d\"} "
                  "%llu\n",
                  r->transport, r->route, r->method, r->status, (unsigned long long)r->count);
    }
    tb_printf(&t, "# HELP chord_request_duration_seconds Request latency by route.\n"
                  "# TYPE chord_request_duration_seconds histogram\n");
    for (size_t i = 0; i < s->n_latencies; i++) {
        const svc_latency *l = &s->latencies[i];
        uint64_t cum = 0;
        for (int b = 0; b < SVC_HIST_BUCKETS; b++) {
            cum += l->buckets[b];
            tb_printf(&t,
                      "chord_request_duration_seconds_bucket{transport=\"%s\",route=\"%s\","
                      "le=\"%g\"} %llu\n",
                      l->transport, l->route, hist_bounds[b], (unsigned long long)cum);
        }
        tb_printf(&t,
                  "chord_request_duration_seconds_bucket{transport=\"%s\",route=\"%s\",le=\"+Inf\"}"
                  " %llu\n"
                  "chord_request_duration_seconds_sum{transport=\"%s\",route=\"%s\"} %.6f\n"
                  "chord_request_duration_seconds_count{transport=\"%s\",route=\"%s\"} %llu\n",
                  l->transport, l->route, (unsigned long long)l->count, l->transport, l->route,
                  l->sum, l->transport, l->route, (unsigned long long)l->count);
    }
    pthread_mutex_unlock(&s->stats_mu);
    if (t.bad) {
        chord_buf_free(&t.b);
        return chord_err_oom(err);
    }
    *len = t.b.len;
    *text = chord_buf_take(&t.b);
    return *text ? 0 : chord_err_oom(err);
}
