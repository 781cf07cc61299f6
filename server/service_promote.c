/* service_promote.c — model aliases and eval gates (docs/pipelines.md): an alias ("prod") names
 * a registered model and may stand wherever a model is taken ({"alias": NAME}: a job's model, a
 * rollout's source), resolved when the work is submitted and recorded with it; a job submitted
 * with "promote": {"alias", "min_eval_accuracy"} moves the alias to a model registered from its
 * final checkpoint when it succeeds with a final eval/accuracy at or above the threshold, or
 * records why not. The decision is made by the pipeline thread, in one SQLite transaction
 * (store_promote: the model, the alias's move and the job's outcome together), for every job that
 * ended with its promotion pending, also one that ended while chordd was down.
 *
 *   svc_open -- svc_pipeline_start --> RUNNING: every SVC_PIPELINE_POLL_MS or svc_pipeline_wake:
 *                                       decide due promotions, fire due schedules
 *   svc_close -- svc_pipeline_stop --> joined
 *
 * Not here: SQL (storage/store_pipeline.c), the webhook events (made in SQL from alias_moves and
 * the metrics: store_webhooks.c), transports. */
#include "server/service_internal.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/base/json_field.h"
#include "server/base/log.h"

/* ---- aliases ------------------------------------------------------------------------------ */

/* 1 to 64 of [A-Za-z0-9._-], starting with a letter or digit (safe in a URL path). */
static int alias_name_check(const char *field, const char *name, chord_err *err) {
    size_t n = name ? strlen(name) : 0;
    int ok = n >= 1 && n < STORE_ALIAS_MAX && isalnum((unsigned char)name[0]);
    for (size_t i = 0; ok && i < n; i++)
        if (!isalnum((unsigned char)name[i]) && !strchr("._-", name[i])) ok = 0;
    if (!ok)
        return chord_err_set(err,
                             "%s: an alias name is 1 to %d of A-Z a-z 0-9 . _ -, starting with a "
                             "letter or digit",
                             field, STORE_ALIAS_MAX - 1);
    return 0;
}

static json_t *alias_json(const store_alias *a) {
    json_t *o = json_object();
    int bad = !o;
    svc_json_put(o, "name", json_string(a->name), &bad);
    svc_json_put(o, "model_id", json_string(a->model_id), &bad);
    svc_json_put(o, "created_at", svc_json_time(a->created_ms), &bad);
    svc_json_put(o, "updated_at", svc_json_time(a->updated_ms), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int svc_alias_ref(store *st, const char *field, const char *name, char model_id[STORE_ID_MAX],
                  chord_err *err) {
    if (alias_name_check(field, name, err)) return -1;
    store_alias a;
    if (store_alias_get(st, name, &a, err)) {
        if (err && err->code == CHORD_E_NOT_FOUND)
            return chord_err_setc(err, CHORD_E_INVALID,
                                  "%s: no alias \"%s\" (PUT /v1/aliases/%s sets one)", field, name,
                                  name);
        return chord_err_prefix(err, "%s", field);
    }
    snprintf(model_id, STORE_ID_MAX, "%s", a.model_id);
    return 0;
}

int svc_alias_put(svc *s, const char *name, const json_t *doc, json_t **alias, chord_err *err) {
    static const char *const keys[] = {"model", NULL};
    *alias = NULL;
    const char *model = NULL;
    if (alias_name_check("name", name, err)) return -1;
    if (!json_is_object(doc)) return chord_err_set(err, "body: must be a JSON object");
    if (chord_json_check_keys(doc, "", keys, err) ||
        chord_json_get_string(doc, "", "model", CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY, &model,
                              err))
        return -1;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_alias a;
    int moved = 0;
    int rc = store_alias_put(st, name, model, &a, &moved, err);
    svc_store_put(s, st);
    if (rc) {
        if (err && (err->code == CHORD_E_NOT_FOUND || err->code == CHORD_E_INVALID)) {
            err->code = CHORD_E_INVALID;
            return chord_err_prefix(err, "model");
        }
        return -1;
    }
    if (moved) {
        LOG_INFO("alias %s -> %s", a.name, a.model_id);
        svc_webhooks_wake(s); /* alias.moved */
    }
    *alias = alias_json(&a);
    return *alias ? 0 : chord_err_oom(err);
}

int svc_alias_get(svc *s, const char *name, json_t **alias, chord_err *err) {
    *alias = NULL;
    if (alias_name_check("name", name, err)) return svc_by_id(-1, err);
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_alias a;
    int rc = store_alias_get(st, name, &a, err);
    svc_store_put(s, st);
    if (rc) return -1;
    *alias = alias_json(&a);
    return *alias ? 0 : chord_err_oom(err);
}

int svc_alias_delete(svc *s, const char *name, json_t **alias, chord_err *err) {
    *alias = NULL;
    if (alias_name_check("name", name, err)) return svc_by_id(-1, err);
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_alias a;
    int rc = store_alias_delete(st, name, &a, err);
    svc_store_put(s, st);
    if (rc) return -1;
    LOG_INFO("alias %s deleted (it named %s)", a.name, a.model_id);
    svc_webhooks_wake(s);
    *alias = alias_json(&a);
    return *alias ? 0 : chord_err_oom(err);
}

int svc_alias_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                   chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_alias *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_alias_list(st, offset, limit + 1, svc_cursor(after), &items, &n, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, alias_json(&items[i]))) bad = 1;
    free(items);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

/* ---- a job's pipeline fields ------------------------------------------------------------------
 */

int svc_job_pipeline_parse(store *st, const json_t *doc, json_t **plain, svc_job_pipeline *pipe,
                           chord_err *err) {
    static const char *const promote_keys[] = {"alias", "min_eval_accuracy", NULL};
    memset(pipe, 0, sizeof *pipe);
    *plain = NULL;
    if (!json_is_object(doc)) return chord_err_set(err, "body: must be a JSON object");
    json_t *copy = json_copy((json_t *)doc);
    if (!copy) return chord_err_oom(err);
    const json_t *promote = json_object_get(doc, "promote");
    if (promote) {
        const char *alias = NULL;
        double min = NAN;
        if (chord_json_object_value(promote, "promote", err) ||
            chord_json_check_keys(promote, "promote", promote_keys, err) ||
            chord_json_get_string(promote, "promote", "alias",
                                  CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY, &alias, err) ||
            alias_name_check("promote.alias", alias, err))
            goto fail;
        const json_t *m = json_object_get(promote, "min_eval_accuracy");
        if (!m) {
            chord_err_set(err, "promote.min_eval_accuracy: required (a number in [0, 1])");
            goto fail;
        }
        min = json_number_value(m);
        if (!json_is_number(m) || !(min >= 0 && min <= 1)) {
            chord_err_set(err, "promote.min_eval_accuracy: must be a number in [0, 1]");
            goto fail;
        }
        snprintf(pipe->promote_alias, sizeof pipe->promote_alias, "%s", alias);
        pipe->extra.promote_alias = pipe->promote_alias;
        pipe->extra.min_eval_accuracy = min;
        if (json_object_del(copy, "promote")) {
            chord_err_oom(err);
            goto fail;
        }
    }
    const json_t *model = json_object_get(doc, "model");
    const json_t *alias = json_is_object(model) ? json_object_get(model, "alias") : NULL;
    if (alias) {
        if (json_object_size(model) != 1) {
            chord_err_set(err, "model: give alias alone (not with path, init or checkpoint)");
            goto fail;
        }
        if (!json_is_string(alias)) {
            chord_err_set(err, "model.alias: must be an alias name");
            goto fail;
        }
        if (svc_alias_ref(st, "model.alias", json_string_value(alias), pipe->alias_model_id, err))
            goto fail;
        snprintf(pipe->model_alias, sizeof pipe->model_alias, "%s", json_string_value(alias));
        pipe->extra.model_alias = pipe->model_alias;
        pipe->extra.alias_model_id = pipe->alias_model_id;
        if (json_object_set_new(copy, "model", json_pack("{s:s}", "path", pipe->alias_model_id))) {
            chord_err_oom(err);
            goto fail;
        }
    }
    *plain = copy;
    return 0;
fail:
    json_decref(copy);
    memset(pipe, 0, sizeof *pipe);
    return -1;
}

void svc_job_pipeline_json(const store_job *j, json_t *job, int *bad) {
    svc_json_put(job, "model_alias",
                 j->model_alias ? json_pack("{s:s, s:s}", "name", j->model_alias, "model_id",
                                            j->alias_model_id ? j->alias_model_id : "")
                                : json_null(),
                 bad);
    svc_json_put(job, "promote",
                 j->promote_alias ? json_pack("{s:s, s:f}", "alias", j->promote_alias,
                                              "min_eval_accuracy", j->min_eval_accuracy)
                                  : json_null(),
                 bad);
    if (!j->promotion_state) {
        svc_json_put(job, "promotion", json_null(), bad);
        return;
    }
    json_t *p = json_object();
    *bad |= !p;
    svc_json_put(p, "state", json_string(j->promotion_state), bad);
    svc_json_put(p, "promoted", json_boolean(!strcmp(j->promotion_state, "promoted")), bad);
    svc_json_put(p, "alias", json_string(j->promote_alias ? j->promote_alias : ""), bad);
    svc_json_put(p, "reason", svc_json_str(j->promotion_reason), bad);
    svc_json_put(p, "eval_accuracy", svc_json_real(j->eval_accuracy), bad);
    svc_json_put(p, "eval_step", j->eval_step >= 0 ? json_integer(j->eval_step) : json_null(), bad);
    svc_json_put(p, "model_id", svc_json_str(j->promoted_model_id), bad);
    svc_json_put(p, "decided_at", svc_json_time(j->decided_ms), bad);
    svc_json_put(job, "promotion", p, bad);
}

/* ---- deciding promotions -----------------------------------------------------------------------
 */

/* Decides one due promotion. A failure that may pass (the database busy, the disk) leaves it
 * pending for the next pass; anything else is recorded as the reason it was not promoted. */
static void promote_one(svc *s, store *st, const store_promotion *p) {
    chord_err err = {0};
    char reason[sizeof err.msg + 64] = "";
    if (p->job_state != STORE_JOB_SUCCEEDED) {
        snprintf(reason, sizeof reason, "the job %s", store_job_state_name(p->job_state));
    } else if (isnan(p->eval_accuracy)) {
        snprintf(reason, sizeof reason, "the job has no eval/accuracy metric");
    } else if (p->eval_accuracy < p->min_eval_accuracy) {
        snprintf(reason, sizeof reason,
                 "eval accuracy %.6g (step %lld) is below min_eval_accuracy %.6g", p->eval_accuracy,
                 (long long)p->eval_step, p->min_eval_accuracy);
    } else {
        store_checkpoint ck = {0};
        char *config_text = NULL, name[64], model_id[STORE_ID_MAX];
        json_t *ref = json_pack("{s:s}", "job_id", p->job_id);
        int rc = ref ? svc_checkpoint_ref(st, "promote", ref, &ck, &err) : chord_err_oom(&err);
        json_decref(ref);
        if (rc == 0) rc = svc_checkpoint_model(s, "promote", &ck, &config_text, &err);
        if (rc == 0) {
            svc_checkpoint_model_name(&ck, name);
            rc = store_promote(st, p->job_id, name, ck.id, config_text, p->eval_accuracy,
                               p->eval_step, model_id, &err);
        }
        if (rc == 0)
            LOG_INFO("job %s promoted: eval accuracy %.6g >= %.6g; model %s (checkpoint step "
                     "%lld), alias %s -> %s",
                     p->job_id, p->eval_accuracy, p->min_eval_accuracy, model_id,
                     (long long)ck.step, p->alias, model_id);
        store_checkpoint_free(&ck);
        free(config_text);
        if (rc == 0 || err.code == CHORD_E_CONFLICT) return; /* done, or decided by another */
        if (err.code == CHORD_E_UNAVAILABLE || err.code == CHORD_E_IO ||
            err.code == CHORD_E_NO_SPACE) {
            LOG_WARN("job %s: promotion deferred: %s", p->job_id, err.msg);
            return;
        }
        snprintf(reason, sizeof reason, "%s", err.msg);
    }
    if (store_promotion_refuse(st, p->job_id, reason, p->eval_accuracy, p->eval_step, &err)) {
        if (err.code != CHORD_E_CONFLICT)
            LOG_WARN("job %s: recording its promotion: %s", p->job_id, err.msg);
        return;
    }
    LOG_INFO("job %s not promoted to alias %s: %s", p->job_id, p->alias, reason);
}

static void promotions_pass(svc *s) {
    chord_err err = {0};
    store *st = svc_store_get(s, &err);
    if (!st) {
        LOG_WARN("promotions: %s", err.msg);
        return;
    }
    store_promotion *due = NULL;
    size_t n = 0;
    if (store_promotions_due(st, &due, &n, &err)) LOG_WARN("promotions: %s", err.msg);
    for (size_t i = 0; i < n; i++)
        promote_one(s, st, &due[i]);
    if (n) svc_webhooks_wake(s); /* alias.moved */
    store_promotions_free(due, n);
    svc_store_put(s, st);
}

/* ---- the pipeline thread ----------------------------------------------------------------------
 */

/* The poller's pass: promotions, then schedules; nothing after a stop. */
static void pipeline_poll(void *user, int stopping) {
    if (stopping) return;
    promotions_pass(user);
    svc_schedules_pass(user);
}

int svc_pipeline_start(svc *s, chord_err *err) {
    if (svc_schedules_open(s, err)) return -1;
    return chord_poller_start(&s->pl_poller, SVC_PIPELINE_POLL_MS, pipeline_poll, s, "pipelines",
                              err);
}

void svc_pipeline_wake(svc *s) {
    chord_poller_wake(&s->pl_poller);
}

void svc_pipeline_stop(svc *s) {
    chord_poller_stop(&s->pl_poller);
}
