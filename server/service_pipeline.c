/* service_pipeline.c — what a retraining pipeline needs from the service (docs/pipelines.md):
 * checkpoint references ({"job_id", "step"?}: a job's kept checkpoint, the latest when the step
 * is left out), datasets named by id or by name (the newest upload of that name), and idempotency
 * keys: a create that carries a key runs once per key, its first result is kept in SQLite
 * (storage/store.h, "idempotency keys") for the service's TTL and returned again to a retry of
 * the same request, while another request under the same key is SVC_E_KEY_REUSED.
 *
 * Keyed creates are serialised by one mutex (lookup, create, record), so two retries racing
 * each other still create once; calls without a key never take it. A crash between the create
 * and the record (microseconds) leaves a resource whose key was not kept: the retry creates a
 * second one (docs/pipelines.md says so).
 *
 * Not here: the resources themselves (service.c, service_data.c), transports, SQL. */
#include "server/service_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/log.h"

/* ---- checkpoint references ------------------------------------------------------------------ */

int svc_checkpoint_ref(store *st, const char *field, const json_t *ref, store_checkpoint *out,
                       chord_err *err) {
    static const char *const keys[] = {"job_id", "step", NULL};
    memset(out, 0, sizeof *out);
    const char *job_id = NULL;
    int64_t step = -1; /* the latest */
    if (chord_json_object_value(ref, field, err) || chord_json_check_keys(ref, field, keys, err) ||
        chord_json_get_string(ref, field, "job_id", CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY,
                              &job_id, err) ||
        chord_json_get_int(ref, field, "step", 0, 0, INT64_MAX, &step, err))
        return -1;
    store_job j = {0};
    if (store_job_get(st, job_id, &j, err)) {
        if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
        return chord_err_prefix(err, "%s.job_id", field);
    }
    store_job_free(&j);
    store_checkpoint *items = NULL;
    size_t n = 0;
    if (store_checkpoint_list(st, job_id, &items, &n, err))
        return chord_err_prefix(err, "%s", field);
    int found = 0;
    for (size_t i = n; i-- > 0 && !found;) {
        if (step >= 0 && items[i].step != step) continue;
        *out = items[i];
        memset(&items[i], 0, sizeof items[i]);
        found = 1;
    }
    store_checkpoint_list_free(items, n);
    if (found) return 0;
    if (step >= 0)
        return chord_err_set(err, "%s.step: job %s has no kept checkpoint at step %lld", field,
                             job_id, (long long)step);
    return chord_err_set(err, "%s.job_id: job %s has no checkpoint yet", field, job_id);
}

/* ---- datasets by name ----------------------------------------------------------------------- */

/* "ds_" and 24 hex digits: the shape of an id (storage/store.h), never taken for a name. */
static int dataset_id_shaped(const char *ref) {
    if (strncmp(ref, "ds_", 3) != 0 || strlen(ref) != 27) return 0;
    for (const char *p = ref + 3; *p; p++)
        if (!strchr("0123456789abcdef", *p)) return 0;
    return 1;
}

int svc_dataset_ref(store *st, const char *field, const char *ref, const char *kind_a,
                    const char *kind_b, char id[STORE_ID_MAX], chord_err *err) {
    store_dataset d = {0};
    if (dataset_id_shaped(ref)) {
        if (store_dataset_get(st, ref, &d, err)) {
            if (err && err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
            return chord_err_prefix(err, "%s", field);
        }
        const char *kind = store_dataset_kind_name(d.kind);
        int ok = !strcmp(kind, kind_a) || (kind_b && !strcmp(kind, kind_b));
        store_dataset_free(&d);
        if (!ok)
            return chord_err_set(err, "%s: dataset %s is of kind \"%s\", expected \"%s\"%s%s%s",
                                 field, ref, kind, kind_a, kind_b ? " or \"" : "",
                                 kind_b ? kind_b : "", kind_b ? "\"" : "");
        snprintf(id, STORE_ID_MAX, "%s", ref);
        return 0;
    }
    if (store_dataset_latest_by_name(st, ref, kind_a, kind_b, &d, err)) {
        if (err && err->code == CHORD_E_NOT_FOUND) {
            err->code = CHORD_E_INVALID;
            return chord_err_prefix(err, "%s: not a dataset id, and", field);
        }
        return chord_err_prefix(err, "%s", field);
    }
    snprintf(id, STORE_ID_MAX, "%s", d.id);
    store_dataset_free(&d);
    return 0;
}

/* ---- idempotency keys ----------------------------------------------------------------------- */

int svc_idempotency_key_check(const char *key, chord_err *err) {
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > SVC_IDEMPOTENCY_KEY_MAX)
        return chord_err_set(err, "Idempotency-Key: must be 1 to %d characters",
                             SVC_IDEMPOTENCY_KEY_MAX);
    for (size_t i = 0; i < n; i++)
        if (key[i] < 0x21 || key[i] > 0x7e)
            return chord_err_set(err, "Idempotency-Key: printable ASCII without spaces only");
    return 0;
}

/* SHA-256 hex of "<operation>\n<request bytes>". */
static int fingerprint(const char *operation, const void *request, size_t len, char out[65],
                       chord_err *err) {
    chord_buf b = {0};
    if (chord_buf_append(&b, operation, strlen(operation)) || chord_buf_append(&b, "\n", 1) ||
        (len && chord_buf_append(&b, request, len))) {
        chord_buf_free(&b);
        return chord_err_oom(err);
    }
    chord_sha256_hex(b.data, b.len, out);
    chord_buf_free(&b);
    return 0;
}

static int64_t idem_cutoff(const svc *s) {
    return store_now_ms() - s->idem_ttl_ms;
}

/* 1 with *doc (new reference) the first result of key, 0 when the key is free, -1 with
 * SVC_E_KEY_REUSED when it was used for another request. */
static int idem_lookup(svc *s, store *st, const char *key, const char *operation, const char *fp,
                       json_t **doc, chord_err *err) {
    *doc = NULL;
    store_idem r = {0};
    int found = 0;
    if (store_idem_get(st, key, idem_cutoff(s), &r, &found, err)) return -1;
    if (!found) return 0;
    int rc = 1;
    if (strcmp(r.operation, operation) != 0 || strcmp(r.fingerprint, fp) != 0) {
        rc = chord_err_setc(err, SVC_E_KEY_REUSED,
                            "Idempotency-Key '%s': already used for another request (%s, %s); "
                            "use a new key for a new request",
                            key, r.operation, r.resource_id);
    } else {
        *doc = json_loads(r.response_json, JSON_ALLOW_NUL, NULL);
        if (!*doc)
            rc = chord_err_setc(err, CHORD_E_INTERNAL,
                                "Idempotency-Key '%s': kept result unreadable", key);
    }
    store_idem_free(&r);
    return rc;
}

/* Keeps doc as key's first result. A failure is logged, not returned: the resource exists and
 * the caller gets it (a retry would create another, as without a key). */
static void idem_record(svc *s, store *st, const char *key, const char *operation, const char *fp,
                        const json_t *doc) {
    chord_err err = {0};
    char *text = json_dumps(doc, JSON_COMPACT | JSON_ALLOW_NUL);
    const char *id = json_string_value(json_object_get(doc, "id"));
    if (!text || store_idem_put(st, key, operation, fp, id ? id : "", text, idem_cutoff(s), &err))
        LOG_ERROR("idempotency key '%s' (%s) not kept: %s", key, operation,
                  text ? err.msg : "out of memory");
    free(text);
}

int svc_create_idempotent(svc *s, const char *key, const char *operation, const json_t *doc,
                          svc_create_fn create, json_t **out, int *replayed, chord_err *err) {
    *out = NULL;
    if (replayed) *replayed = 0;
    if (!key) return create(s, doc, out, err);
    if (svc_idempotency_key_check(key, err)) return -1;
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS | JSON_ALLOW_NUL | JSON_ENCODE_ANY);
    char fp[65];
    int rc = text ? fingerprint(operation, text, strlen(text), fp, err) : chord_err_oom(err);
    free(text);
    if (rc) return -1;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    pthread_mutex_lock(&s->idem_mu);
    rc = idem_lookup(s, st, key, operation, fp, out, err);
    if (rc == 1) {
        if (replayed) *replayed = 1;
        LOG_INFO("%s retried with Idempotency-Key '%s': the first result again", operation, key);
        rc = 0;
    } else if (rc == 0) {
        rc = create(s, doc, out, err);
        if (rc == 0) idem_record(s, st, key, operation, fp, *out);
    }
    pthread_mutex_unlock(&s->idem_mu);
    svc_store_put(s, st);
    return rc;
}

int svc_idempotent_find(svc *s, const char *key, const char *operation, const void *request,
                        size_t len, json_t **doc, chord_err *err) {
    *doc = NULL;
    char fp[65];
    if (svc_idempotency_key_check(key, err) || fingerprint(operation, request, len, fp, err))
        return -1;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    pthread_mutex_lock(&s->idem_mu);
    int rc = idem_lookup(s, st, key, operation, fp, doc, err);
    pthread_mutex_unlock(&s->idem_mu);
    svc_store_put(s, st);
    return rc;
}

int svc_idempotent_keep(svc *s, const char *key, const char *operation, const void *request,
                        size_t len, const json_t *doc, chord_err *err) {
    char fp[65];
    if (svc_idempotency_key_check(key, err) || fingerprint(operation, request, len, fp, err))
        return -1;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    pthread_mutex_lock(&s->idem_mu);
    json_t *kept = NULL;
    /* a retry that ran again while the first call was being answered keeps the first result */
    int rc = idem_lookup(s, st, key, operation, fp, &kept, err);
    if (rc == 0) idem_record(s, st, key, operation, fp, doc);
    pthread_mutex_unlock(&s->idem_mu);
    json_decref(kept);
    svc_store_put(s, st);
    return rc < 0 ? -1 : 0;
}

/* The upload's key (svc_upload_set_key) is checked at commit, when the bytes are known: the
 * request is (kind, name, SHA-256 of the bytes). Called by svc_upload_commit with the upload's
 * store handle; *replay (new reference) is the first result to return instead of committing. */
int svc_upload_idem_begin(svc *s, store *st, const char *key, const char *kind, const char *name,
                          const char *sha256, char fp[65], json_t **replay, chord_err *err) {
    *replay = NULL;
    char *text = NULL;
    if (asprintf(&text, "%s\n%s\n%s", kind, name, sha256) < 0) return chord_err_oom(err);
    int rc = fingerprint("datasets.create", text, strlen(text), fp, err);
    free(text);
    if (rc) return -1;
    pthread_mutex_lock(&s->idem_mu); /* released by svc_upload_idem_end */
    rc = idem_lookup(s, st, key, "datasets.create", fp, replay, err);
    if (rc < 0) {
        pthread_mutex_unlock(&s->idem_mu);
        return -1;
    }
    return 0;
}

void svc_upload_idem_end(svc *s, store *st, const char *key, const char *fp, const json_t *doc) {
    if (doc) idem_record(s, st, key, "datasets.create", fp, doc);
    pthread_mutex_unlock(&s->idem_mu);
}
