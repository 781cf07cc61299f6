/* service_schedules.c — schedules (docs/pipelines.md, "Schedules"): a job template submitted by
 * the pipeline thread at the times of a cron expression (server/jobs/cron.h, UTC). The template
 * is a job document; its dataset names and model alias are resolved when it fires (the newest
 * upload of the name, the alias's model then), by the same code as POST /v1/jobs.
 *
 * Exactly once: each fire time is handled in one SQLite transaction (store_schedule_fire: the
 * fire's row, UNIQUE per (schedule, fire time), its job, the next fire time), so a SIGKILL in the
 * middle of a tick leaves the fire either done or not begun, and the next start does what is
 * left. Fire times that came while chordd was down (after its last heartbeat, written every
 * SVC_SCHEDULE_BEAT_MS while schedules exist, and before this start) follow the schedule's
 * `missed` policy: "skip" records that they were skipped, "run_once" submits one job for the
 * latest of them. A fire time
 * whose template cannot be submitted then (an unknown alias, a full queue, ...) is recorded with
 * the error and no job.
 *
 * Not here: SQL (storage/store_pipeline.c), the thread (service_promote.c), transports. */
#include "server/service_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/json_field.h"
#include "server/base/log.h"
#include "server/jobs/cron.h"

#define SCHEDULE_RECENT_FIRES 20

static json_t *fire_json(const store_fire *f) {
    json_t *o = json_object();
    int bad = !o;
    svc_json_put(o, "fire_time", svc_json_time(f->fire_ms), &bad);
    svc_json_put(o, "job_id", f->job_id[0] ? json_string(f->job_id) : json_null(), &bad);
    svc_json_put(o, "error", svc_json_str(f->error), &bad);
    svc_json_put(o, "missed", json_integer(f->missed), &bad);
    svc_json_put(o, "created_at", svc_json_time(f->created_ms), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The schedule resource; fires (may be NULL) its recent fires, newest first. */
static json_t *schedule_json(const store_schedule *x, const store_fire *fires, size_t n_fires) {
    json_t *o = json_object(), *recent = json_array();
    int bad = !o || !recent;
    json_t *tmpl = json_loads(x->template_json, 0, NULL);
    svc_json_put(o, "id", json_string(x->id), &bad);
    svc_json_put(o, "name", json_string(x->name), &bad);
    svc_json_put(o, "cron", json_string(x->cron), &bad);
    svc_json_put(o, "template", tmpl ? tmpl : json_object(), &bad);
    svc_json_put(o, "missed", json_string(x->run_once ? "run_once" : "skip"), &bad);
    svc_json_put(o, "paused", json_boolean(x->paused), &bad);
    svc_json_put(o, "next_fire_at", x->paused ? json_null() : svc_json_time(x->next_fire_ms), &bad);
    svc_json_put(o, "created_at", svc_json_time(x->created_ms), &bad);
    svc_json_put(o, "fires", json_integer(x->fires), &bad);
    for (size_t i = 0; i < n_fires && !bad; i++)
        if (json_array_append_new(recent, fire_json(&fires[i]))) bad = 1;
    svc_json_put(o, "recent_fires", recent, &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The template as a job document jobconfig can check now, before its references exist: the
 * pipeline's fields checked by shape only, model references (alias, checkpoint) and dataset
 * names left for the fire. Errors name template.<field>. */
static int check_template(const json_t *tmpl, chord_err *err) {
    static const char *const promote_keys[] = {"alias", "min_eval_accuracy", NULL};
    json_t *copy = json_deep_copy(tmpl);
    if (!copy) return chord_err_oom(err);
    int rc = 0;
    const json_t *promote = json_object_get(copy, "promote");
    if (promote) {
        const json_t *m = json_object_get(promote, "min_eval_accuracy");
        if (chord_json_object_value(promote, "promote", err) ||
            chord_json_check_keys(promote, "promote", promote_keys, err))
            rc = -1;
        else if (!json_is_string(json_object_get(promote, "alias")))
            rc = chord_err_set(err, "promote.alias: required (an alias name)");
        else if (!json_is_number(m) || json_number_value(m) < 0 || json_number_value(m) > 1)
            rc = chord_err_set(err, "promote.min_eval_accuracy: must be a number in [0, 1]");
        if (rc == 0) json_object_del(copy, "promote");
    }
    json_t *model = json_object_get(copy, "model");
    if (rc == 0 && json_is_object(model) &&
        (json_object_get(model, "alias") || json_object_get(model, "checkpoint"))) {
        if (json_object_size(model) != 1)
            rc = chord_err_set(err, "model: give alias or checkpoint alone");
        else if (json_object_get(model, "alias") &&
                 !json_is_string(json_object_get(model, "alias")))
            rc = chord_err_set(err, "model.alias: must be an alias name");
        else
            json_object_set_new(copy, "model", json_pack("{s:s}", "path", "resolved-at-fire"));
    }
    job_config cfg = {0};
    if (rc == 0) rc = jobconfig_from_json(copy, &cfg, err);
    if (rc == 0 && promote && (!cfg.data_eval || cfg.eval.every <= 0))
        rc = chord_err_set(err, "promote: needs an evaluation to gate on: give data.eval and "
                                "eval.every > 0");
    jobconfig_free(&cfg);
    json_decref(copy);
    return rc ? chord_err_prefix(err, "template") : 0;
}

int svc_schedule_create(svc *s, const json_t *doc, json_t **out, chord_err *err) {
    static const char *const keys[] = {"name", "cron", "template", "missed", "paused", NULL};
    *out = NULL;
    const char *name = NULL, *cron = NULL, *missed = "skip";
    json_t *tmpl = NULL;
    int paused = 0;
    if (!json_is_object(doc)) return chord_err_set(err, "body: must be a JSON object");
    if (chord_json_check_keys(doc, "", keys, err) ||
        chord_json_get_string(doc, "", "name", CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY, &name,
                              err) ||
        chord_json_get_string(doc, "", "cron", CHORD_JSON_REQUIRED | CHORD_JSON_NONEMPTY, &cron,
                              err) ||
        chord_json_get_object(doc, "", "template", CHORD_JSON_REQUIRED, &tmpl, err) ||
        chord_json_get_string(doc, "", "missed", 0, &missed, err))
        return -1;
    const json_t *p = json_object_get(doc, "paused");
    if (p && !json_is_boolean(p)) return chord_err_set(err, "paused: must be true or false");
    paused = p && json_is_true(p);
    if (strlen(name) > 200) return chord_err_set(err, "name: must be at most 200 bytes");
    if (strcmp(missed, "skip") != 0 && strcmp(missed, "run_once") != 0)
        return chord_err_set(err, "missed: must be \"skip\" or \"run_once\"");
    cron_expr c;
    if (cron_parse(cron, &c, err)) return -1;
    int64_t next = cron_next(&c, store_now_ms());
    if (next < 0) return chord_err_set(err, "cron: \"%s\" never fires", cron);
    if (check_template(tmpl, err)) return -1;
    char *text = json_dumps(tmpl, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text) return chord_err_oom(err);
    store *st = svc_store_get(s, err);
    if (!st) {
        free(text);
        return -1;
    }
    store_schedule x = {0};
    int rc =
        store_schedule_create(st, name, cron, text, !strcmp(missed, "run_once"), next, &x, err);
    if (rc == 0 && paused) {
        rc = store_schedule_set_paused(st, x.id, 1, next, err);
        x.paused = 1;
    }
    svc_store_put(s, st);
    free(text);
    if (rc == 0) {
        LOG_INFO("schedule %s (%s): \"%s\", first at %lld", x.id, x.name, x.cron,
                 (long long)x.next_fire_ms);
        *out = schedule_json(&x, NULL, 0);
        if (!*out) rc = chord_err_oom(err);
        svc_pipeline_wake(s);
    }
    store_schedule_free(&x);
    return rc;
}

int svc_schedule_get(svc *s, const char *id, json_t **out, chord_err *err) {
    *out = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_schedule x = {0};
    store_fire *fires = NULL;
    size_t n = 0;
    int rc = svc_by_id(store_schedule_get(st, id, &x, err), err);
    if (rc == 0) rc = store_schedule_fires(st, id, SCHEDULE_RECENT_FIRES, &fires, &n, err);
    svc_store_put(s, st);
    if (rc == 0) {
        *out = schedule_json(&x, fires, n);
        if (!*out) rc = chord_err_oom(err);
    }
    store_schedule_fires_free(fires, n);
    store_schedule_free(&x);
    return rc;
}

int svc_schedule_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                      chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_schedule *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_schedule_list(st, offset, limit + 1, svc_cursor(after), &items, &n, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, schedule_json(&items[i], NULL, 0))) bad = 1;
    store_schedule_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}

int svc_schedule_delete(svc *s, const char *id, json_t **out, chord_err *err) {
    if (svc_schedule_get(s, id, out, err)) return -1;
    store *st = svc_store_get(s, err);
    if (!st) {
        json_decref(*out);
        *out = NULL;
        return -1;
    }
    int rc = svc_by_id(store_schedule_delete(st, id, err), err);
    svc_store_put(s, st);
    if (rc) {
        json_decref(*out);
        *out = NULL;
        return -1;
    }
    LOG_INFO("schedule %s deleted", id);
    return 0;
}

int svc_schedule_pause(svc *s, const char *id, int paused, json_t **out, chord_err *err) {
    *out = NULL;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_schedule x = {0};
    int rc = svc_by_id(store_schedule_get(st, id, &x, err), err);
    if (rc == 0) {
        /* resumed: from the next fire time after now (those while paused are not run) */
        cron_expr c;
        int64_t next = x.next_fire_ms;
        if (!paused && cron_parse(x.cron, &c, err) == 0) next = cron_next(&c, store_now_ms());
        rc = store_schedule_set_paused(st, id, paused, next, err);
    }
    svc_store_put(s, st);
    store_schedule_free(&x);
    if (rc) return -1;
    if (!paused) svc_pipeline_wake(s);
    return svc_schedule_get(s, id, out, err);
}

/* ---- firing ------------------------------------------------------------------------------- */

int svc_schedules_open(svc *s, chord_err *err) {
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    int64_t now = store_now_ms(), previous = 0;
    int rc = store_scheduler_alive(st, now, &previous, err);
    svc_store_put(s, st);
    if (rc) return -1;
    s->sched_beat_ms = now;
    s->sched_down_from = previous ? previous + SVC_SCHEDULE_SLACK_MS : 0;
    s->sched_down_until = now;
    return 0;
}

typedef struct fire_ctx {
    const char *schedule_id;
    int64_t expect_ms, fire_ms, next_ms, missed;
} fire_ctx;

static int insert_fired_job(store *st, void *user, const char *name, const char *config_json,
                            const char *base_checkpoint_id, const store_job_extra *extra,
                            char job_id[STORE_ID_MAX], chord_err *err) {
    const fire_ctx *f = user;
    return store_schedule_fire(st, f->schedule_id, f->expect_ms, f->fire_ms, f->next_ms, f->missed,
                               NULL, name, config_json, base_checkpoint_id, extra, job_id, err);
}

/* Fires f: the template as a job (its name the schedule's unless it has one), or the error that
 * kept it from being one. 0 when the fire time is handled (by this call or before), -1 to try
 * again later (the server stopping, the database busy). */
static int fire_job(svc *s, store *st, const store_schedule *x, const fire_ctx *f) {
    chord_err err = {0};
    json_t *tmpl = json_loads(x->template_json, 0, NULL), *job = NULL;
    if (tmpl && !json_object_get(tmpl, "name"))
        json_object_set_new(tmpl, "name", json_string(x->name));
    int rc = tmpl ? svc_job_submit(s, tmpl, insert_fired_job, (void *)f, &job, &err)
                  : chord_err_oom(&err);
    json_decref(tmpl);
    if (rc == 0) {
        LOG_INFO("schedule %s (%s) fired at %lld: job %s%s", x->id, x->name, (long long)f->fire_ms,
                 json_string_value(json_object_get(job, "id")),
                 f->missed ? " (run_once: fire times missed while chordd was down)" : "");
        json_decref(job);
        return 0;
    }
    if (err.code == CHORD_E_CONFLICT && strstr(err.msg, "handled already")) return 0;
    if (err.code == CHORD_E_UNAVAILABLE || err.code == CHORD_E_IO || err.code == CHORD_E_NO_SPACE)
        return -1;
    /* the template could not be submitted now: the fire is recorded with why */
    LOG_WARN("schedule %s (%s) fired at %lld: no job: %s", x->id, x->name, (long long)f->fire_ms,
             err.msg);
    char job_id[STORE_ID_MAX];
    chord_err err2 = {0};
    if (store_schedule_fire(st, x->id, f->expect_ms, f->fire_ms, f->next_ms, f->missed, err.msg,
                            NULL, NULL, NULL, NULL, job_id, &err2) &&
        err2.code != CHORD_E_CONFLICT) {
        LOG_WARN("schedule %s: %s", x->id, err2.msg);
        return -1;
    }
    return 0;
}

/* Handles the due fire times of x, oldest first (a few per pass). */
static void fire_schedule(svc *s, store *st, const store_schedule *x, int64_t now) {
    cron_expr c;
    chord_err err = {0};
    if (cron_parse(x->cron, &c, &err)) {
        LOG_WARN("schedule %s: %s", x->id, err.msg);
        return;
    }
    int64_t at = x->next_fire_ms;
    for (int turns = 0; turns < 16 && at >= 0 && at <= now && !svc_stopping(s); turns++) {
        fire_ctx f = {.schedule_id = x->id, .expect_ms = at, .fire_ms = at};
        if (at > s->sched_down_from && at < s->sched_down_until) {
            /* came while chordd was down: count them, then the policy */
            int64_t t = at, last = at, missed = 0;
            while (t >= 0 && t < s->sched_down_until && t <= now && missed < 100000000) {
                last = t;
                missed++;
                t = cron_next(&c, t);
            }
            f.fire_ms = last;
            f.missed = missed;
            f.next_ms = t >= 0 ? t : INT64_MAX;
            if (x->run_once) {
                if (fire_job(s, st, x, &f)) return;
            } else {
                char msg[160], job_id[STORE_ID_MAX];
                snprintf(msg, sizeof msg,
                         "skipped: %lld fire time%s while chordd was down (missed: skip)",
                         (long long)missed, missed == 1 ? "" : "s");
                if (store_schedule_fire(st, x->id, at, last, f.next_ms, missed, msg, NULL, NULL,
                                        NULL, NULL, job_id, &err)) {
                    if (err.code != CHORD_E_CONFLICT) LOG_WARN("schedule %s: %s", x->id, err.msg);
                    return;
                }
                LOG_INFO("schedule %s (%s): %s", x->id, x->name, msg);
            }
        } else {
            int64_t next = cron_next(&c, at);
            f.next_ms = next >= 0 ? next : INT64_MAX;
            if (fire_job(s, st, x, &f)) return;
        }
        at = f.next_ms;
    }
}

void svc_schedules_pass(svc *s) {
    if (svc_stopping(s)) return;
    chord_err err = {0};
    store *st = svc_store_get(s, &err);
    if (!st) {
        LOG_WARN("schedules: %s", err.msg);
        return;
    }
    int64_t now = store_now_ms(), previous, total = 0;
    if (now - s->sched_beat_ms >= SVC_SCHEDULE_BEAT_MS) {
        /* only while there are schedules (one fsync a second otherwise for nothing): a schedule
         * created later fires after this start, never in a down time */
        store_schedule *one = NULL;
        size_t n_one = 0;
        if (store_schedule_list(st, 0, 1, NULL, &one, &n_one, &total, &err) ||
            (total > 0 && store_scheduler_alive(st, now, &previous, &err)))
            LOG_WARN("schedules: %s", err.msg);
        else
            s->sched_beat_ms = now;
        store_schedule_list_free(one, n_one);
    }
    store_schedule *due = NULL;
    size_t n = 0;
    if (store_schedules_due(st, now, &due, &n, &err)) LOG_WARN("schedules: %s", err.msg);
    for (size_t i = 0; i < n; i++)
        fire_schedule(s, st, &due[i], now);
    store_schedule_list_free(due, n);
    svc_store_put(s, st);
}
