/* service_data.c — datasets (streamed upload validated line by line), models (a directory
 * under the models root or a random-init config), checkpoint listings and file downloads, and
 * rollout requests. See service.h for the resources and the line shapes.
 *
 * Not here: jobs and watches, resolving paths under the models root and model references, a
 * checkpoint's resource (service.c, which never calls into this file), SQL (storage/),
 * generation (server/jobs/rollout_request.h). */
#include "server/service_internal.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/log.h"
#include "server/base/utf8.h"
#include "server/model/config.h"
#include "server/train/dataset.h"
#include "server/train/reward.h"
#include "storage/store_tinker.h"

/* ---- datasets ----------------------------------------------------------------------------- */

struct svc_upload {
    svc *s;
    store *st;
    store_upload *up;
    store_dataset_kind kind;
    chord_buf line;  /* the line not yet complete */
    int64_t lines;   /* complete lines validated */
    int64_t records; /* of which records (the others blank) */
    int64_t bytes;
    int spoiled;
    chord_err spoil;
    char *name;     /* as stored */
    char *idem_key; /* svc_upload_set_key, or NULL */
};

static json_t *dataset_json(const store_dataset *d) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    svc_json_put(o, "id", json_string(d->id), &bad);
    svc_json_put(o, "name", json_string(d->name ? d->name : ""), &bad);
    svc_json_put(o, "kind", json_string(store_dataset_kind_name(d->kind)), &bad);
    svc_json_put(o, "lines", json_integer(d->line_count), &bad);
    svc_json_put(o, "bytes", json_integer(d->bytes), &bad);
    svc_json_put(o, "sha256", json_string(d->sha256), &bad);
    svc_json_put(o, "created_at", svc_json_time(d->created_ms), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int nonempty_string(const json_t *v) {
    return json_is_string(v) && json_string_length(v) > 0;
}

/* One line of an upload, by the record rules every reader of a dataset applies
 * (server/train/dataset.h): 1 a record, 0 a blank line, -1 with err naming the line. */
static int validate_line(const svc_upload *u, const char *text, size_t len, int64_t line,
                         chord_err *err) {
    ds_kind kind = u->kind == STORE_DATASET_EXPERT ? DS_EXPERT : DS_PROMPTS;
    return ds_parse_line(kind, text, len, (uint64_t)line, NULL, err);
}

static int spoil(svc_upload *u, chord_err *err) {
    if (!u->spoiled) {
        u->spoiled = 1;
        u->spoil = err ? *err : (chord_err){0};
        pthread_mutex_lock(&u->s->stats_mu);
        u->s->upload_rejected_total++;
        pthread_mutex_unlock(&u->s->stats_mu);
    }
    return -1;
}

int svc_upload_begin(svc *s, const char *name, const char *kind, svc_upload **out, chord_err *err) {
    *out = NULL;
    if (svc_stopping(s))
        return chord_err_setc(err, CHORD_E_UNAVAILABLE,
                              "server is stopping: not accepting uploads");
    store_dataset_kind k;
    if (!kind) return chord_err_set(err, "kind: required (prompts, expert or eval)");
    if (store_dataset_kind_parse(kind, &k, NULL))
        return chord_err_set(err, "kind: must be prompts, expert or eval");
    if (!name || !*name) name = "dataset";
    if (strlen(name) > 200) return chord_err_set(err, "name: must be at most 200 bytes");
    /* stored and served in JSON, which holds UTF-8 only: a name that is not would make every
       later listing fail */
    if (!chord_utf8_valid(name, strlen(name))) return chord_err_set(err, "name: not valid UTF-8");
    svc_upload *u = calloc(1, sizeof *u);
    if (!u) return chord_err_oom(err);
    u->s = s;
    u->kind = k;
    u->name = strdup(name);
    if (!u->name) {
        free(u);
        return chord_err_oom(err);
    }
    u->st = svc_store_get(s, err);
    if (!u->st || store_dataset_upload_begin(u->st, name, k, &u->up, err)) {
        svc_store_put(s, u->st);
        free(u->name);
        free(u);
        return -1;
    }
    *out = u;
    return 0;
}

static int line_append(svc_upload *u, const char *data, size_t len, chord_err *err) {
    if ((int64_t)(u->line.len + len) > u->s->max_line)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "line %lld: longer than the server's limit of %lld bytes per line "
                              "(--max-line-kb)",
                              (long long)u->lines + 1, (long long)u->s->max_line);
    return chord_buf_append(&u->line, data, len) ? chord_err_oom(err) : 0;
}

int svc_upload_write(svc_upload *u, const void *data, size_t len, chord_err *err) {
    if (u->spoiled) {
        if (err) *err = u->spoil;
        return -1;
    }
    if (u->bytes + (int64_t)len > u->s->max_upload) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "body: upload larger than the limit of %lld bytes",
                       (long long)u->s->max_upload);
        return spoil(u, err);
    }
    if (store_dataset_upload_write(u->up, data, len, err)) return spoil(u, err);
    u->bytes += (int64_t)len;
    const char *p = data, *end = p + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            if (line_append(u, p, (size_t)(end - p), err)) return spoil(u, err);
            break;
        }
        int64_t line = u->lines + 1;
        int rc;
        if (u->line.len > 0) {
            if (line_append(u, p, (size_t)(nl - p), err)) return spoil(u, err);
            rc = validate_line(u, u->line.data, u->line.len, line, err);
            u->line.len = 0;
        } else if ((int64_t)(nl - p) > u->s->max_line) {
            rc = line_append(u, p, (size_t)(nl - p), err); /* refuses it, naming the line */
        } else {
            rc = validate_line(u, p, (size_t)(nl - p), line, err);
        }
        if (rc < 0) return spoil(u, err);
        u->records += rc;
        u->lines = line;
        p = nl + 1;
    }
    return 0;
}

static void upload_free(svc_upload *u) {
    svc_store_put(u->s, u->st);
    chord_buf_free(&u->line);
    free(u->name);
    free(u->idem_key);
    free(u);
}

int svc_upload_set_key(svc_upload *u, const char *key, chord_err *err) {
    if (svc_idempotency_key_check(key, err)) return -1;
    free(u->idem_key);
    u->idem_key = strdup(key);
    return u->idem_key ? 0 : chord_err_oom(err);
}

int svc_upload_commit(svc_upload *u, json_t **dataset, chord_err *err) {
    if (dataset) *dataset = NULL;
    if (u->spoiled) {
        if (err) *err = u->spoil;
        svc_upload_abort(u);
        return -1;
    }
    if (u->line.len > 0) { /* a last line without '\n' */
        int rc = validate_line(u, u->line.data, u->line.len, u->lines + 1, err);
        if (rc < 0) {
            spoil(u, err);
            svc_upload_abort(u);
            return -1;
        }
        u->records += rc;
        u->lines++;
    }
    if (u->records == 0) {
        chord_err_set(err, "body: empty upload (expected JSON lines, at least one record)");
        spoil(u, err);
        svc_upload_abort(u);
        return -1;
    }
    svc *s = u->s;
    char fp[65];
    json_t *replay = NULL;
    if (u->idem_key) { /* the bytes are known now: the first result again, or commit and keep */
        char sha[65];
        if (store_dataset_upload_sha256(u->up, sha, err) ||
            svc_upload_idem_begin(s, u->st, u->idem_key, store_dataset_kind_name(u->kind), u->name,
                                  sha, fp, &replay, err)) {
            svc_upload_abort(u);
            return -1;
        }
        if (replay) {
            svc_upload_idem_end(s, u->st, u->idem_key, fp, NULL);
            LOG_INFO("dataset upload retried with Idempotency-Key '%s': the first result again",
                     u->idem_key);
            svc_upload_abort(u); /* this copy of the bytes is not kept */
            if (dataset)
                *dataset = replay;
            else
                json_decref(replay);
            return 0;
        }
    }
    store_dataset d = {0};
    int rc = store_dataset_upload_commit(u->up, &d, err);
    u->up = NULL;
    json_t *doc = rc ? NULL : dataset_json(&d);
    if (rc == 0 && !doc) rc = chord_err_oom(err);
    if (u->idem_key) svc_upload_idem_end(s, u->st, u->idem_key, fp, doc);
    upload_free(u);
    if (rc) {
        json_decref(doc);
        store_dataset_free(&d);
        return -1;
    }
    pthread_mutex_lock(&s->stats_mu);
    s->uploads_total++;
    s->upload_bytes_total += (uint64_t)d.bytes;
    pthread_mutex_unlock(&s->stats_mu);
    LOG_INFO("dataset %s stored: %s, %lld lines, %lld bytes", d.id, store_dataset_kind_name(d.kind),
             (long long)d.line_count, (long long)d.bytes);
    if (dataset)
        *dataset = doc;
    else
        json_decref(doc);
    store_dataset_free(&d);
    return 0;
}

void svc_upload_abort(svc_upload *u) {
    if (!u) return;
    store_dataset_upload_abort(u->up);
    upload_free(u);
}

int svc_dataset_get(svc *s, const char *id, json_t **dataset, chord_err *err) {
    *dataset = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_dataset d = {0};
    int rc = svc_by_id(store_dataset_get(st, id, &d, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    *dataset = dataset_json(&d);
    store_dataset_free(&d);
    return *dataset ? 0 : chord_err_oom(err);
}

int svc_dataset_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                     chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_dataset *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_dataset_list(st, offset, limit + 1, svc_cursor(after), &items, &n, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, dataset_json(&items[i]))) bad = 1;
    store_dataset_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

/* ---- models ------------------------------------------------------------------------------- */

static json_t *model_json(const store_model *m) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    json_t *config = json_loads(m->config_json, 0, NULL);
    /* a PEFT LoRA directory: its adapter (r, alpha, modules, base) beside its base's config */
    json_t *lora = NULL;
    char base[PATH_MAX];
    if (m->directory && model_config_adapter_base(m->directory, base, sizeof base, NULL) == 1) {
        char path[PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/adapter_config.json", m->directory);
        json_t *ac = json_load_file(path, 0, NULL);
        lora = json_pack("{s:s, s:O?, s:O?, s:O?}", "base", base, "r", json_object_get(ac, "r"),
                         "lora_alpha", json_object_get(ac, "lora_alpha"), "target_modules",
                         json_object_get(ac, "target_modules"));
        json_decref(ac);
        if (!lora) bad = 1;
    }
    svc_json_put(o, "id", json_string(m->id), &bad);
    svc_json_put(o, "name", json_string(m->name ? m->name : ""), &bad);
    svc_json_put(o, "source",
                 json_string(m->checkpoint_id[0] ? "checkpoint"
                             : lora              ? "lora"
                             : m->directory      ? "directory"
                                                 : "init"),
                 &bad);
    if (lora) svc_json_put(o, "lora", lora, &bad);
    svc_json_put(o, "checkpoint",
                 m->checkpoint_id[0]
                     ? json_pack("{s:s, s:I, s:s}", "job_id", m->checkpoint_job_id, "step",
                                 (json_int_t)m->checkpoint_step, "id", m->checkpoint_id)
                     : json_null(),
                 &bad);
    svc_json_put(o, "path", svc_json_str(m->directory), &bad);
    svc_json_put(o, "tokenizer", svc_json_str(m->tokenizer_dir), &bad);
    svc_json_put(o, "config", config ? config : json_object(), &bad);
    svc_json_put(o, "created_at", svc_json_time(m->created_ms), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int svc_checkpoint_model(svc *s, const char *field, const store_checkpoint *ck, char **config_text,
                         chord_err *err) {
    *config_text = NULL;
    char weights[PATH_MAX];
    model_config mc;
    if (svc_model_dir_weights(s, field, ck->path, ck->path, weights, err)) return -1;
    if (model_config_load(weights, &mc, err)) return chord_err_prefix(err, "%s", field);
    if (svc_check_model_fits(s, &mc, err)) return -1;
    char cfg_path[PATH_MAX + 16];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", weights);
    size_t len;
    if (chord_read_file(cfg_path, config_text, &len, err))
        return chord_err_prefix(err, "%s", field);
    return 0;
}

void svc_checkpoint_model_name(const store_checkpoint *ck, char name[64]) {
    snprintf(name, 64, "%s-step-%lld", ck->job_id, (long long)ck->step);
}

/* {"name"?, "from_checkpoint": {"job_id", "step"?}}: a model whose files are the checkpoint's
 * directory, not copied; the checkpoint is pinned (store_model_insert_checkpoint). */
static int model_from_checkpoint(svc *s, const char *name, const json_t *ref, json_t **model,
                                 chord_err *err) {
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_checkpoint ck = {0};
    char *config_text = NULL;
    int rc = svc_checkpoint_ref(st, "from_checkpoint", ref, &ck, err);
    if (rc == 0) rc = svc_checkpoint_model(s, "from_checkpoint", &ck, &config_text, err);
    char fallback[64];
    if (rc == 0 && !name) {
        svc_checkpoint_model_name(&ck, fallback);
        name = fallback;
    }
    store_model m = {0};
    if (rc == 0) rc = store_model_insert_checkpoint(st, name, ck.id, config_text, &m, err);
    if (rc == 0) {
        LOG_INFO("model %s registered from checkpoint %s (job %s, step %lld)", m.id, ck.id,
                 ck.job_id, (long long)ck.step);
        *model = model_json(&m);
        if (!*model) rc = chord_err_oom(err);
    }
    store_model_free(&m);
    store_checkpoint_free(&ck);
    free(config_text);
    svc_store_put(s, st);
    return rc;
}

int svc_model_register(svc *s, const json_t *doc, json_t **model, chord_err *err) {
    static const char *const keys[] = {"name", "path", "init", "from_checkpoint", NULL};
    static const char *const init_keys[] = {"config", "tokenizer", NULL};
    *model = NULL;
    if (!json_is_object(doc)) return chord_err_set(err, "body: must be a JSON object");
    if (chord_json_check_keys(doc, "", keys, err)) return -1;
    const char *nm = NULL, *path = NULL;
    json_t *init = NULL;
    if (chord_json_get_string(doc, "", "name", CHORD_JSON_NONEMPTY, &nm, err) ||
        chord_json_get_string(doc, "", "path", CHORD_JSON_NONEMPTY, &path, err) ||
        chord_json_get_object(doc, "", "init", 0, &init, err))
        return -1;
    if (nm && strlen(nm) > 200) return chord_err_set(err, "name: must be at most 200 bytes");
    json_t *from = json_object_get(doc, "from_checkpoint");
    if (!!path + !!init + !!from > 1)
        return chord_err_set(err, "path: give one of path, init or from_checkpoint");
    if (!path && !init && !from)
        return chord_err_set(err, "path: required (or init, or "
                                  "from_checkpoint)");
    if (from) return model_from_checkpoint(s, nm, from, model, err);

    char real[PATH_MAX], tok[PATH_MAX + 32];
    char *config_text = NULL;
    const char *directory = NULL, *tokenizer = NULL;
    if (path) {
        char weights[PATH_MAX]; /* real itself, or a LoRA adapter's base (under the root) */
        if (svc_resolve_under_root(s, "path", path, real, err) ||
            svc_model_dir_weights(s, "path", path, real, weights, err))
            return -1;
        model_config mc;
        if (model_config_load(weights, &mc, err)) return chord_err_prefix(err, "path");
        if (svc_check_model_fits(s, &mc, err)) return -1;
        char cfg_path[PATH_MAX + 16];
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", weights);
        size_t len;
        if (chord_read_file(cfg_path, &config_text, &len, err))
            return chord_err_prefix(err, "path");
        directory = real;
        snprintf(tok, sizeof tok, "%s/tokenizer.json", real);
        if (chord_is_file(tok)) tokenizer = real;
        if (!nm) {
            const char *slash = strrchr(real, '/');
            nm = slash && slash[1] ? slash + 1 : "model";
        }
    } else {
        if (chord_json_check_keys(init, "init", init_keys, err)) return -1;
        json_t *config = NULL;
        const char *t = NULL;
        if (chord_json_get_object(init, "init", "config", CHORD_JSON_REQUIRED, &config, err) ||
            chord_json_get_string(init, "init", "tokenizer", CHORD_JSON_NONEMPTY, &t, err))
            return -1;
        model_config mc;
        if (model_config_from_json(config, &mc, err)) return chord_err_prefix(err, "init.config");
        if (svc_check_model_fits(s, &mc, err)) return -1;
        if (t) {
            if (svc_resolve_under_root(s, "init.tokenizer", t, tok, err)) return -1;
            tokenizer = tok;
        }
        config_text = json_dumps(config, JSON_COMPACT | JSON_SORT_KEYS);
        if (!config_text) return chord_err_oom(err);
        if (!nm) nm = "init-model";
    }
    store *st = svc_store_get(s, err);
    int rc = -1;
    if (st) {
        store_model m = {0};
        rc = store_model_insert(st, nm, directory, config_text, tokenizer, &m, err);
        if (rc == 0) {
            LOG_INFO("model %s registered: %s", m.id, directory ? directory : "random init");
            *model = model_json(&m);
            if (!*model) rc = chord_err_oom(err);
        }
        store_model_free(&m);
    }
    svc_store_put(s, st);
    free(config_text);
    return rc;
}

int svc_model_get(svc *s, const char *id, json_t **model, chord_err *err) {
    *model = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_model m = {0};
    int rc = svc_by_id(store_model_get(st, id, &m, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    *model = model_json(&m);
    store_model_free(&m);
    return *model ? 0 : chord_err_oom(err);
}

int svc_model_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                   chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_model *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_model_list(st, offset, limit + 1, svc_cursor(after), &items, &n, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, model_json(&items[i]))) bad = 1;
    store_model_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

static int job_exists(svc *s, store *st, const char *job_id, chord_err *err) {
    (void)s;
    store_job j = {0};
    int rc = svc_by_id(store_job_get(st, job_id, &j, err), err);
    store_job_free(&j);
    return rc;
}

int svc_checkpoint_list(svc *s, const char *job_id, json_t **out, chord_err *err) {
    *out = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_checkpoint *items = NULL;
    size_t n = 0;
    int rc = job_exists(s, st, job_id, err);
    if (rc == 0) rc = store_checkpoint_list(st, job_id, &items, &n, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, svc_checkpoint_json(&items[i]))) bad = 1;
    store_checkpoint_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *out = svc_json_list(arr, (int64_t)n, 0, n);
    return *out ? 0 : chord_err_oom(err);
}

/* Finds checkpoint (job_id, step); step < 0 = the latest. */
static int find_checkpoint(store *st, const char *job_id, int64_t step, store_checkpoint *out,
                           chord_err *err) {
    store_checkpoint *items = NULL;
    size_t n = 0;
    if (store_checkpoint_list(st, job_id, &items, &n, err)) return -1;
    int found = 0;
    for (size_t i = n; i-- > 0 && !found;) {
        if (step >= 0 && items[i].step != step) continue;
        *out = items[i];
        memset(&items[i], 0, sizeof items[i]);
        found = 1;
    }
    store_checkpoint_list_free(items, n);
    if (!found) {
        if (step >= 0)
            return chord_err_setc(err, CHORD_E_NOT_FOUND, "job %s has no checkpoint at step %lld",
                                  job_id, (long long)step);
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "job %s has no checkpoint yet", job_id);
    }
    return 0;
}

int svc_checkpoint_file(svc *s, const char *job_id, int64_t step, const char *relpath, char *out,
                        size_t outlen, int64_t *size, chord_err *err) {
    if (!relpath || !*relpath || relpath[0] == '/')
        return chord_err_set(err, "path: must be a relative file path inside the checkpoint");
    for (const char *p = relpath; *p;) { /* no ".." component */
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if ((n == 2 && p[0] == '.' && p[1] == '.') || n == 0)
            return chord_err_set(err, "path: '%s' must not contain '..' or empty components",
                                 relpath);
        p += n + (slash ? 1 : 0);
    }
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_checkpoint ck = {0};
    int rc = job_exists(s, st, job_id, err);
    if (rc == 0) rc = find_checkpoint(st, job_id, step, &ck, err);
    svc_store_put(s, st);
    if (rc) return -1;
    char base[PATH_MAX], cand[PATH_MAX * 2], real[PATH_MAX];
    if (!realpath(ck.path, base)) {
        store_checkpoint_free(&ck);
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "checkpoint directory is missing");
    }
    snprintf(cand, sizeof cand, "%s/%s", base, relpath);
    store_checkpoint_free(&ck);
    if (!realpath(cand, real))
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "checkpoint has no file '%s'", relpath);
    size_t bl = strlen(base);
    if (strncmp(real, base, bl) != 0 || real[bl] != '/')
        return chord_err_set(err, "path: '%s' leaves the checkpoint directory", relpath);
    struct stat sb;
    if (stat(real, &sb) || !S_ISREG(sb.st_mode))
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "checkpoint has no file '%s'", relpath);
    if (strlen(real) + 1 > outlen) return chord_err_setc(err, CHORD_E_INTERNAL, "path too long");
    memcpy(out, real, strlen(real) + 1);
    *size = (int64_t)sb.st_size;
    return 0;
}

/* ---- rollouts ----------------------------------------------------------------------------- */

static json_t *rollout_json(const store_rollout *r) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    json_t *req = json_loads(r->request_json, 0, NULL);
    json_t *res = r->result_json ? json_loads(r->result_json, JSON_ALLOW_NUL, NULL) : NULL;
    svc_json_put(o, "id", json_string(r->id), &bad);
    svc_json_put(o, "state", json_string(store_rollout_state_name(r->state)), &bad);
    svc_json_put(o, "request", req ? req : json_object(), &bad);
    svc_json_put(o, "result", res ? res : json_null(), &bad);
    svc_json_put(o, "error", svc_json_str(r->error), &bad);
    svc_json_put(o, "created_at", svc_json_time(r->created_ms), &bad);
    svc_json_put(o, "finished_at", svc_json_time(r->finished_ms), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* A rollout prompt (a string or a conversation) by the dataset rules for prompts
 * (server/train/dataset.h), as the worker will read it. */
static int rollout_prompt_check(const json_t *prompt, chord_err *err) {
    chat_message *msgs = NULL;
    size_t n = 0;
    int rc = ds_prompt_messages(prompt, &msgs, &n, err);
    chat_messages_free(msgs, n);
    return rc;
}

/* The server's limit on the tokens one request asks for (prompts x n x max_tokens), from the
 * resolved request; checked after the memory estimate, whose message says more. */
static int rollout_check_tokens(const svc *s, const json_t *req, chord_err *err) {
    json_t *prompts = json_object_get(req, "prompts");
    size_t count = json_array_size(prompts ? prompts : json_object_get(req, "messages"));
    int64_t n = json_integer_value(json_object_get(req, "n"));
    int64_t max_tokens = json_integer_value(json_object_get(req, "max_tokens"));
    /* count <= 256, n <= 64, max_tokens <= 32768: the product fits easily */
    int64_t tokens = (int64_t)count * n * max_tokens;
    if (tokens <= s->max_rollout_tokens) return 0;
    return chord_err_setc(err, CHORD_E_TOO_LARGE,
                          "max_tokens: %zu prompts x n %lld x max_tokens %lld = %lld tokens is "
                          "over the server's limit of %lld tokens per request "
                          "(--max-rollout-tokens); lower n or max_tokens, or split the prompts",
                          count, (long long)n, (long long)max_tokens, (long long)tokens,
                          (long long)s->max_rollout_tokens);
}

/* Checks the request and builds the resolved document for the generator (rollout.h). */
static int rollout_resolve(svc *s, store *st, const json_t *doc, json_t *out, chord_err *err) {
    static const char *const keys[] = {
        "prompts", "messages",   "model", "alias",   "checkpoint", "n", "temperature",
        "top_p",   "max_tokens", "seed",  "answers", "reward",     NULL};
    if (!json_is_object(doc)) return chord_err_set(err, "body: must be a JSON object");
    if (chord_json_check_keys(doc, "", keys, err)) return -1;
    json_t *prompts = json_object_get(doc, "prompts"), *messages = json_object_get(doc, "messages");
    int bad = 0;
    size_t count = 0;
    if (prompts && messages)
        return chord_err_set(err, "prompts: give prompts or messages, not both");
    if (!prompts && !messages) return chord_err_set(err, "prompts: required (or messages)");
    if (prompts) {
        if (!json_is_array(prompts) || json_array_size(prompts) == 0 ||
            json_array_size(prompts) > 256)
            return chord_err_set(err, "prompts: must be an array of 1 to 256 strings");
        size_t i;
        json_t *p;
        json_array_foreach(prompts, i, p) {
            if (!json_is_string(p) || rollout_prompt_check(p, err) != 0)
                return chord_err_set(err, "prompts[%zu]: must be a non-empty string", i);
        }
        count = json_array_size(prompts);
        svc_json_put(out, "prompts", json_deep_copy(prompts), &bad);
    } else {
        if (!json_is_array(messages) || json_array_size(messages) == 0 ||
            json_array_size(messages) > 256)
            return chord_err_set(err, "messages: must be an array of 1 to 256 conversations");
        size_t i;
        json_t *conv;
        json_array_foreach(messages, i, conv) {
            if (!json_is_array(conv))
                return chord_err_set(err, "messages[%zu]: must be an array of messages", i);
            if (rollout_prompt_check(conv, err) != 0)
                return chord_err_prefix(err, "messages[%zu]", i);
        }
        count = json_array_size(messages);
        svc_json_put(out, "messages", json_deep_copy(messages), &bad);
    }
    json_t *model = json_object_get(doc, "model"), *ck = json_object_get(doc, "checkpoint");
    json_t *alias = json_object_get(doc, "alias");
    if (!!model + !!ck + !!alias > 1)
        return chord_err_set(err, "model: give one of model, checkpoint or alias");
    if (!model && !ck && !alias)
        return chord_err_set(err, "model: required (or checkpoint, or alias)");
    char *dir = NULL, *tok = NULL;
    json_t *init = NULL;
    char alias_model[STORE_ID_MAX];
    if (alias) {
        /* the alias's model now, recorded with the request */
        if (!nonempty_string(alias)) return chord_err_set(err, "alias: must be an alias name");
        if (svc_alias_ref(st, "alias", json_string_value(alias), alias_model, err)) return -1;
        svc_json_put(
            out, "alias",
            json_pack("{s:s, s:s}", "name", json_string_value(alias), "model_id", alias_model),
            &bad);
        if (svc_resolve_model(s, st, "alias", alias_model, &dir, &init, &tok, err)) return -1;
        svc_json_put(out, "checkpoint_dir", json_null(), &bad);
        svc_json_put(out, "job_id", json_null(), &bad);
    } else if (model) {
        if (!nonempty_string(model))
            return chord_err_set(err, "model: must be a model id or a directory");
        if (svc_resolve_model(s, st, "model", json_string_value(model), &dir, &init, &tok, err))
            return -1;
        svc_json_put(out, "checkpoint_dir", json_null(), &bad);
        svc_json_put(out, "job_id", json_null(), &bad);
    } else {
        static const char *const ck_keys[] = {"job_id", "step", NULL};
        const char *job = NULL;
        int64_t step = -1; /* the latest */
        if (chord_json_object_value(ck, "checkpoint", err) ||
            chord_json_check_keys(ck, "checkpoint", ck_keys, err) ||
            chord_json_get_string(ck, "checkpoint", "job_id",
                                  CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY, &job, err) ||
            chord_json_get_int(ck, "checkpoint", "step", 0, 0, INT64_MAX, &step, err))
            return -1;
        store_checkpoint c = {0};
        if (job_exists(s, st, job, err) || find_checkpoint(st, job, step, &c, err)) {
            if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
            return chord_err_prefix(err, "checkpoint");
        }
        svc_json_put(out, "checkpoint_dir", json_string(c.path), &bad);
        svc_json_put(out, "job_id", json_string(c.job_id), &bad);
        store_checkpoint_free(&c);
    }
    svc_json_put(out, "model_dir", svc_json_str(dir), &bad);
    svc_json_put(out, "model_init", init ? init : json_null(), &bad);
    svc_json_put(out, "tokenizer_dir", svc_json_str(tok), &bad);
    free(dir);
    free(tok);
    int64_t n = 1, max_tokens = 256, seed = 0;
    double temperature = 1.0, top_p = 1.0;
    if (chord_json_get_int(doc, "", "n", 0, 1, 64, &n, err) ||
        chord_json_get_number(doc, "", "temperature", 0, 0, 100, &temperature, err) ||
        chord_json_get_number(doc, "", "top_p", CHORD_JSON_LO_OPEN, 0, 1, &top_p, err) ||
        chord_json_get_int(doc, "", "max_tokens", 0, 1, 32768, &max_tokens, err) ||
        chord_json_get_int(doc, "", "seed", 0, 0, INT64_MAX, &seed, err))
        return -1;
    svc_json_put(out, "n", json_integer(n), &bad);
    svc_json_put(out, "temperature", json_real(temperature), &bad);
    svc_json_put(out, "top_p", json_real(top_p), &bad);
    svc_json_put(out, "max_tokens", json_integer(max_tokens), &bad);
    svc_json_put(out, "seed", json_integer(seed), &bad);
    json_t *answers = json_object_get(doc, "answers"), *reward = json_object_get(doc, "reward");
    if (answers) {
        if (!json_is_array(answers) || json_array_size(answers) != count)
            return chord_err_set(err, "answers: must be an array with one answer per prompt (%zu)",
                                 count);
        size_t i;
        json_t *a;
        json_array_foreach(answers, i, a) {
            char *text = NULL;
            if (ds_answer_text(a, &text, err) != 0) return chord_err_prefix(err, "answers[%zu]", i);
            free(text);
        }
    }
    if (reward && !json_is_null(reward)) { /* checked whole now, as a job's: not at run time */
        if (!json_is_object(reward))
            return chord_err_set(err, "reward: must be an object with a \"type\" "
                                      "(docs/rewards.md)");
        reward_verifier *verifier = NULL;
        if (reward_verifier_new(reward, &verifier, err)) return -1;
        reward_verifier_free(verifier);
    } else {
        reward = NULL;
    }
    svc_json_put(out, "answers", answers ? json_deep_copy(answers) : json_null(), &bad);
    svc_json_put(out, "reward", reward ? json_deep_copy(reward) : json_null(), &bad);
    return bad ? chord_err_oom(err) : 0;
}

int svc_rollout_create(svc *s, const json_t *doc, json_t **rollout, chord_err *err) {
    *rollout = NULL;
    if (svc_stopping(s))
        return chord_err_setc(err, CHORD_E_UNAVAILABLE, "server is stopping: not accepting work");
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    json_t *req = json_object();
    char *text = NULL;
    int rc = -1;
    if (!req) {
        chord_err_oom(err);
        goto done;
    }
    if (rollout_resolve(s, st, doc, req, err) || svc_check_rollout_fits(s, req, err) ||
        rollout_check_tokens(s, req, err))
        goto done;
    char(*pending)[STORE_ID_MAX] = NULL;
    size_t n_pending = 0;
    if (store_rollout_pending_ids(st, &pending, &n_pending, err)) goto done;
    free(pending);
    if (n_pending >= (size_t)s->max_pending_rollouts) {
        chord_err_setc(err, SVC_E_BUSY,
                       "queue full: %zu rollout requests are pending, the server's limit "
                       "(--max-pending-rollouts %d); submit again once some have finished",
                       n_pending, s->max_pending_rollouts);
        goto done;
    }
    if (!s->jobs) {
        chord_err_setc(err, CHORD_E_UNAVAILABLE, "rollouts: this server runs no workers");
        goto done;
    }
    text = json_dumps(req, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) {
        chord_err_oom(err);
        goto done;
    }
    store_rollout r = {0};
    if (store_rollout_create(st, text, &r, err)) goto done;
    if (jobs_submit_rollout(s->jobs, r.id, err)) {
        store_rollout_finish(st, r.id, NULL, err->msg, NULL);
        store_rollout_free(&r);
        goto done;
    }
    *rollout = rollout_json(&r);
    store_rollout_free(&r);
    rc = *rollout ? 0 : chord_err_oom(err);
done:
    free(text);
    json_decref(req);
    svc_store_put(s, st);
    return rc;
}

int svc_rollout_get(svc *s, const char *id, json_t **rollout, chord_err *err) {
    *rollout = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_rollout r = {0};
    int rc = svc_by_id(store_rollout_get(st, id, &r, err), err);
    svc_store_put(s, st);
    if (rc) return -1;
    *rollout = rollout_json(&r);
    store_rollout_free(&r);
    return *rollout ? 0 : chord_err_oom(err);
}

/* ---- the Tinker API's sessions (store_tinker.h) ------------------------------------------------
 */

static json_t *tinker_session_json(const store_tk_session *x) {
    json_t *o = json_object(), *models = json_array();
    int bad = !o || !models;
    for (size_t i = 0; i < x->n_models && !bad; i++) {
        const store_tk_model *m = &x->models[i];
        json_t *mo = json_object();
        bad |= !mo;
        svc_json_put(mo, "id", json_string(m->id), &bad);
        svc_json_put(mo, "kind", json_string(m->kind), &bad);
        svc_json_put(mo, "base_model", svc_json_str(m->base_model), &bad);
        svc_json_put(mo, "lora_rank", json_integer(m->lora_rank), &bad);
        svc_json_put(mo, "created_at", svc_json_time(m->created_ms), &bad);
        svc_json_put(mo, "ended_at", svc_json_time(m->ended_ms), &bad);
        svc_json_put(mo, "futures",
                     json_pack("{s:I,s:I,s:I}", "pending", (json_int_t)m->pending, "done",
                               (json_int_t)m->done, "failed", (json_int_t)m->failed),
                     &bad);
        if (bad)
            json_decref(mo);
        else if (json_array_append_new(models, mo) != 0)
            bad = 1;
    }
    svc_json_put(o, "id", json_string(x->id), &bad);
    svc_json_put(o, "sdk_version", svc_json_str(x->sdk_version), &bad);
    svc_json_put(o, "created_at", svc_json_time(x->created_ms), &bad);
    svc_json_put(o, "finished_at", svc_json_time(x->finished_ms), &bad);
    svc_json_put(o, "finish_reason", svc_json_str(x->finish_reason), &bad);
    svc_json_put(o, "models", models, &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int tinker_sessions(svc *s, const char *only_id, size_t offset, size_t limit,
                           const char *after, json_t **arr, int64_t *total, chord_err *err) {
    *arr = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_tk_session *items = NULL;
    size_t n = 0;
    int rc = store_tk_session_list(st, only_id, offset, limit, after, &items, &n, total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *a = json_array();
    int bad = !a;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(a, tinker_session_json(&items[i]))) bad = 1;
    store_tk_session_list_free(items, n);
    if (bad) {
        json_decref(a);
        return chord_err_oom(err);
    }
    *arr = a;
    return 0;
}

int svc_tinker_sessions(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                        chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    json_t *arr = NULL;
    int64_t total = 0;
    if (tinker_sessions(s, NULL, offset, limit + 1, svc_cursor(after), &arr, &total, err))
        return -1;
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

int svc_tinker_session(svc *s, const char *id, json_t **session, chord_err *err) {
    *session = NULL;
    json_t *arr = NULL;
    int64_t total = 0;
    if (tinker_sessions(s, id, 0, 1, NULL, &arr, &total, err)) return -1;
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "no Tinker session %.100s", id);
    }
    *session = json_incref(json_array_get(arr, 0));
    json_decref(arr);
    return 0;
}
