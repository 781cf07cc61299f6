/* store_pipeline.c — model aliases, their moves, and job promotions (store.h, "model aliases
 * and promotions"): each change of an alias and each promotion decision is one transaction, the
 * move recorded beside it (alias_moves: the alias.moved webhook events are made from it).
 *
 * It knows nothing of eval gates' meaning or of model files: the service decides, this stores
 * the decision. Calls store.c and store_records.c's helpers only. */
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/store_internal.h"

#define OOM(err) chord_err_setc(err, CHORD_E_INTERNAL, "aliases: out of memory")

/* ---- aliases ------------------------------------------------------------------------------ */

#define ALIAS_COLS "name, model_id, created_ms, updated_ms"

static int read_alias(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    (void)err;
    store_alias *a = item;
    storage_col_copy(st, 0, a->name, sizeof a->name);
    storage_col_copy(st, 1, a->model_id, sizeof a->model_id);
    a->created_ms = sqlite3_column_int64(st, 2);
    a->updated_ms = sqlite3_column_int64(st, 3);
    return 0;
}

static void free_alias(void *item) {
    (void)item;
}

static int check_name(const char *name, chord_err *err) {
    if (!name || !*name || strlen(name) >= STORE_ALIAS_MAX)
        return chord_err_setc(err, CHORD_E_INVALID, "alias: name must be 1 to %d characters",
                              STORE_ALIAS_MAX - 1);
    return 0;
}

/* The alias now (inside the caller's transaction): 1 found, 0 none, -1 error. */
static int alias_locked(store *s, const char *name, store_alias *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    int rc = storage_get_one(s, "SELECT " ALIAS_COLS " FROM aliases WHERE name = ?1", name,
                             read_alias, out, "alias", err);
    if (rc == 0) return 1;
    if (err && err->code == CHORD_E_NOT_FOUND) return 0;
    return -1;
}

/* Records a move of alias `name` from `from` (NULL: new) to `to` (NULL: deleted). */
static int record_move_locked(store *s, const char *name, const char *from, const char *to,
                              const char *job_id, chord_err *err) {
    char id[STORE_ID_MAX];
    if (storage_new_id("amv", id, err)) return -1;
    return storage_run(s,
                       "INSERT INTO alias_moves (id, alias, from_model_id, to_model_id, job_id, "
                       "moved_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                       STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(name), STORAGE_TEXT(from),
                                      STORAGE_TEXT(to), STORAGE_TEXT(job_id),
                                      STORAGE_INT(store_now_ms())),
                       err, "recording the move of alias %s", name);
}

/* Points name at model_id inside the caller's write transaction; *moved = 1 when it changed. */
static int alias_put_locked(store *s, const char *name, const char *model_id, const char *job_id,
                            int *moved, chord_err *err) {
    *moved = 0;
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, "SELECT 1 FROM models WHERE id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(model_id)), &st, err))
        return -1;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "model %s not found", model_id);
    if (rc != SQLITE_ROW) return storage_sqlerr(s, err, rc, "reading model %s", model_id);
    store_alias old;
    int found = alias_locked(s, name, &old, err);
    if (found < 0) return -1;
    if (found && !strcmp(old.model_id, model_id)) return 0;
    int64_t now = store_now_ms();
    if (storage_run(s,
                    "INSERT INTO aliases (name, model_id, created_ms, updated_ms) "
                    "VALUES (?1, ?2, ?3, ?3) ON CONFLICT (name) DO UPDATE SET "
                    "model_id = excluded.model_id, updated_ms = excluded.updated_ms",
                    STORAGE_VALUES(STORAGE_TEXT(name), STORAGE_TEXT(model_id), STORAGE_INT(now)),
                    err, "setting alias %s", name) ||
        record_move_locked(s, name, found ? old.model_id : NULL, model_id, job_id, err))
        return -1;
    *moved = 1;
    return 0;
}

int store_alias_put(store *s, const char *name, const char *model_id, store_alias *out, int *moved,
                    chord_err *err) {
    int changed = 0;
    if (out) memset(out, 0, sizeof *out);
    if (check_name(name, err) || storage_check_id(model_id, "mdl", "model", err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "setting alias %s", name);
    if (alias_put_locked(s, name, model_id, NULL, &changed, err) || storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    if (moved) *moved = changed;
    return out ? store_alias_get(s, name, out, err) : 0;
}

int store_alias_get(store *s, const char *name, store_alias *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (check_name(name, err)) return -1;
    return storage_get_one(s, "SELECT " ALIAS_COLS " FROM aliases WHERE name = ?1", name,
                           read_alias, out, "alias", err);
}

int store_alias_delete(store *s, const char *name, store_alias *out, chord_err *err) {
    store_alias old;
    if (out) memset(out, 0, sizeof *out);
    if (check_name(name, err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "deleting alias %s", name);
    int found = alias_locked(s, name, &old, err);
    if (found == 0) chord_err_setc(err, CHORD_E_NOT_FOUND, "alias %s not found", name);
    if (found <= 0 ||
        storage_run(s, "DELETE FROM aliases WHERE name = ?1", STORAGE_VALUES(STORAGE_TEXT(name)),
                    err, "deleting alias %s", name) ||
        record_move_locked(s, name, old.model_id, NULL, NULL, err) || storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    if (out) *out = old;
    return 0;
}

int store_alias_list(store *s, size_t offset, size_t limit, const char *after, store_alias **items,
                     size_t *n, int64_t *total, chord_err *err) {
    storage_list list = {.what = "listing aliases",
                         .count_sql = "SELECT count(*) FROM aliases",
                         .rows_sql = "SELECT " ALIAS_COLS " FROM aliases WHERE ?3 IS NULL OR "
                                     "name > ?3 ORDER BY name LIMIT ?1 OFFSET ?2",
                         .values = STORAGE_VALUES(STORAGE_INT(storage_limit(limit)),
                                                  STORAGE_INT(storage_offset(offset)),
                                                  STORAGE_TEXT(after)),
                         .item_size = sizeof **items,
                         .read = read_alias,
                         .free_item = free_alias};
    return storage_read_list(s, &list, (void **)items, n, total, err);
}

/* ---- promotions --------------------------------------------------------------------------- */

static void free_promotion(void *item) {
    store_promotion *p = item;
    free(p->alias);
    p->alias = NULL;
}

void store_promotions_free(store_promotion *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_promotion);
}

static int read_promotion(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_promotion *p = item;
    storage_col_copy(st, 0, p->job_id, sizeof p->job_id);
    if (storage_col_text(st, 1, &p->alias)) return OOM(err);
    p->min_eval_accuracy = sqlite3_column_double(st, 2);
    if (store_job_state_parse((const char *)sqlite3_column_text(st, 3), &p->job_state, err))
        return -1;
    p->eval_accuracy =
        sqlite3_column_type(st, 4) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 4);
    p->eval_step = sqlite3_column_type(st, 5) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 5);
    return 0;
}

int store_promotions_due(store *s, store_promotion **items, size_t *n, chord_err *err) {
    *items = NULL;
    *n = 0;
    /* the last eval of the job: its eval/accuracy at the highest step that has one */
    sqlite3_stmt *st;
    if (storage_prepare(s,
                        "SELECT p.job_id, p.promote_alias, p.min_eval_accuracy, j.state, "
                        "(SELECT m.value FROM metrics m WHERE m.job_id = j.id AND "
                        " m.name = 'eval/accuracy' ORDER BY m.step DESC LIMIT 1), "
                        "(SELECT m.step FROM metrics m WHERE m.job_id = j.id AND "
                        " m.name = 'eval/accuracy' ORDER BY m.step DESC LIMIT 1) "
                        "FROM job_pipeline p JOIN jobs j ON j.id = p.job_id "
                        "WHERE p.promotion_state = 'pending' AND "
                        "j.state IN ('succeeded', 'failed', 'cancelled') ORDER BY j.finished_ms",
                        &st, err))
        return -1;
    return storage_collect(s, st, sizeof **items, read_promotion, free_promotion, (void **)items, n,
                           "reading due promotions", err);
}

/* Marks the promotion decided inside the caller's transaction, if it is still pending. */
static int decide_locked(store *s, const char *job_id, const char *state, const char *reason,
                         double eval_accuracy, int64_t eval_step, const char *model_id,
                         chord_err *err) {
    if (storage_run(s,
                    "UPDATE job_pipeline SET promotion_state = ?2, promotion_reason = ?3, "
                    "eval_accuracy = ?4, eval_step = ?5, promoted_model_id = ?6, decided_ms = ?7 "
                    "WHERE job_id = ?1 AND promotion_state = 'pending'",
                    STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_TEXT(state), STORAGE_TEXT(reason),
                                   STORAGE_REAL(eval_accuracy), STORAGE_INT(eval_step),
                                   STORAGE_TEXT(model_id), STORAGE_INT(store_now_ms())),
                    err, "deciding the promotion of job %s", job_id))
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return chord_err_setc(err, CHORD_E_CONFLICT, "job %s: no pending promotion", job_id);
    return 0;
}

int store_promotion_refuse(store *s, const char *job_id, const char *reason, double eval_accuracy,
                           int64_t eval_step, chord_err *err) {
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "job %s's promotion", job_id);
    if (decide_locked(s, job_id, "not_promoted", reason, eval_accuracy, eval_step, NULL, err) ||
        storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    return 0;
}

int store_promote(store *s, const char *job_id, const char *model_name, const char *checkpoint_id,
                  const char *config_json, double eval_accuracy, int64_t eval_step,
                  char model_id[STORE_ID_MAX], chord_err *err) {
    model_id[0] = '\0';
    if (storage_check_id(job_id, "job", "job", err) ||
        storage_check_id(checkpoint_id, "ckpt", "checkpoint", err))
        return -1;
    if (!model_name || !*model_name || !config_json)
        return chord_err_setc(err, CHORD_E_INVALID, "promotion of job %s: no model name or config",
                              job_id);
    char id[STORE_ID_MAX];
    if (storage_new_id("mdl", id, err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "job %s's promotion", job_id);
    sqlite3_stmt *st = NULL;
    char *alias = NULL;
    int moved = 0;
    if (storage_prepare_bound(s, "SELECT promote_alias FROM job_pipeline WHERE job_id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(job_id)), &st, err))
        goto fail;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW && storage_col_text(st, 0, &alias)) rc = OOM(err);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW || !alias) {
        if (rc == SQLITE_DONE || (rc == SQLITE_ROW && !alias))
            chord_err_setc(err, CHORD_E_CONFLICT, "job %s: no promotion asked for", job_id);
        else if (rc != -1)
            storage_sqlerr(s, err, rc, "reading job %s's promotion", job_id);
        goto fail;
    }
    if (decide_locked(s, job_id, "promoted", NULL, eval_accuracy, eval_step, id, err) ||
        storage_insert_checkpoint_model_locked(s, id, model_name, checkpoint_id, config_json,
                                               err) ||
        alias_put_locked(s, alias, id, job_id, &moved, err) || storage_commit(s, err))
        goto fail;
    free(alias);
    snprintf(model_id, STORE_ID_MAX, "%s", id);
    return 0;
fail:
    free(alias);
    storage_rollback(s);
    return -1;
}

/* ---- schedules ---------------------------------------------------------------------------- */

#define SCHEDULE_COLS                                                                              \
    "id, name, cron, template_json, missed, paused, next_fire_ms, created_ms, "                    \
    "(SELECT count(*) FROM schedule_fires f WHERE f.schedule_id = schedules.id)"

void store_schedule_free(store_schedule *x) {
    if (!x) return;
    free(x->name);
    free(x->cron);
    free(x->template_json);
    x->name = x->cron = x->template_json = NULL;
}

static void free_schedule(void *item) {
    store_schedule_free(item);
}

void store_schedule_list_free(store_schedule *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_schedule);
}

static int read_schedule(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_schedule *x = item;
    storage_col_copy(st, 0, x->id, sizeof x->id);
    if (storage_col_text(st, 1, &x->name) || storage_col_text(st, 2, &x->cron) ||
        storage_col_text(st, 3, &x->template_json))
        return OOM(err);
    const char *missed = (const char *)sqlite3_column_text(st, 4);
    x->run_once = missed && !strcmp(missed, "run_once");
    x->paused = sqlite3_column_int(st, 5);
    x->next_fire_ms = sqlite3_column_int64(st, 6);
    x->created_ms = sqlite3_column_int64(st, 7);
    x->fires = sqlite3_column_int64(st, 8);
    return 0;
}

int store_schedule_create(store *s, const char *name, const char *cron, const char *template_json,
                          int run_once, int64_t next_fire_ms, store_schedule *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!name || !*name || !cron || !template_json)
        return chord_err_setc(err, CHORD_E_INVALID, "schedule: no name, cron or template");
    char id[STORE_ID_MAX];
    if (storage_new_id("sch", id, err) ||
        storage_run(s,
                    "INSERT INTO schedules (id, name, cron, template_json, missed, next_fire_ms, "
                    "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(name), STORAGE_TEXT(cron),
                                   STORAGE_TEXT(template_json),
                                   STORAGE_TEXT(run_once ? "run_once" : "skip"),
                                   STORAGE_INT(next_fire_ms), STORAGE_INT(store_now_ms())),
                    err, "inserting schedule %s", name))
        return -1;
    return out ? store_schedule_get(s, id, out, err) : 0;
}

int store_schedule_get(store *s, const char *id, store_schedule *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (storage_check_id(id, "sch", "schedule", err)) return -1;
    return storage_get_one(s, "SELECT " SCHEDULE_COLS " FROM schedules WHERE id = ?1", id,
                           read_schedule, out, "schedule", err);
}

int store_schedule_list(store *s, size_t offset, size_t limit, const char *after,
                        store_schedule **items, size_t *n, int64_t *total, chord_err *err) {
    storage_list list = {
        .what = "listing schedules",
        .count_sql = "SELECT count(*) FROM schedules",
        .cursor_sql = after ? "SELECT 1 FROM schedules WHERE id = ?3" : NULL,
        .cursor = after,
        .rows_sql =
            "SELECT " SCHEDULE_COLS " FROM schedules WHERE ?3 IS NULL OR seq < "
            "(SELECT seq FROM schedules WHERE id = ?3) ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
        .values = STORAGE_VALUES(STORAGE_INT(storage_limit(limit)),
                                 STORAGE_INT(storage_offset(offset)), STORAGE_TEXT(after)),
        .item_size = sizeof **items,
        .read = read_schedule,
        .free_item = free_schedule};
    return storage_read_list(s, &list, (void **)items, n, total, err);
}

/* Runs sql (?1 = id, ?2 = v) on the schedule; CHORD_E_NOT_FOUND when it changed nothing. */
static int schedule_update(store *s, const char *id, const char *sql, int64_t v, int64_t w,
                           const char *what, chord_err *err) {
    if (storage_check_id(id, "sch", "schedule", err) ||
        storage_run(s, sql, STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_INT(v), STORAGE_INT(w)), err,
                    "%s schedule %s", what, id))
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "schedule %s not found", id);
    return 0;
}

int store_schedule_delete(store *s, const char *id, chord_err *err) {
    return schedule_update(s, id, "DELETE FROM schedules WHERE id = ?1", 0, 0, "deleting", err);
}

int store_schedule_set_paused(store *s, const char *id, int paused, int64_t next_fire_ms,
                              chord_err *err) {
    return schedule_update(s, id,
                           "UPDATE schedules SET paused = ?2, next_fire_ms = CASE WHEN ?2 = 1 "
                           "THEN next_fire_ms ELSE ?3 END WHERE id = ?1",
                           paused ? 1 : 0, next_fire_ms, paused ? "pausing" : "resuming", err);
}

static void free_fire(void *item) {
    store_fire *f = item;
    free(f->error);
    f->error = NULL;
}

void store_schedule_fires_free(store_fire *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_fire);
}

static int read_fire(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_fire *f = item;
    f->fire_ms = sqlite3_column_int64(st, 0);
    storage_col_copy(st, 1, f->job_id, sizeof f->job_id);
    if (storage_col_text(st, 2, &f->error)) return OOM(err);
    f->missed = sqlite3_column_int64(st, 3);
    f->created_ms = sqlite3_column_int64(st, 4);
    return 0;
}

int store_schedule_fires(store *s, const char *id, size_t limit, store_fire **items, size_t *n,
                         chord_err *err) {
    *items = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (storage_prepare_bound(s,
                              "SELECT fire_ms, job_id, error, missed, created_ms FROM "
                              "schedule_fires WHERE schedule_id = ?1 ORDER BY fire_ms DESC "
                              "LIMIT ?2",
                              STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_INT(storage_limit(limit))),
                              &st, err))
        return -1;
    return storage_collect(s, st, sizeof **items, read_fire, free_fire, (void **)items, n,
                           "reading a schedule's fires", err);
}

int store_schedules_due(store *s, int64_t now_ms, store_schedule **items, size_t *n,
                        chord_err *err) {
    *items = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (storage_prepare_bound(s,
                              "SELECT " SCHEDULE_COLS " FROM schedules WHERE paused = 0 AND "
                              "next_fire_ms <= ?1 ORDER BY next_fire_ms, seq",
                              STORAGE_VALUES(STORAGE_INT(now_ms)), &st, err))
        return -1;
    return storage_collect(s, st, sizeof **items, read_schedule, free_schedule, (void **)items, n,
                           "reading due schedules", err);
}

/* Test hook (integration.pipeline, "SIGKILL during a tick"): CHORD_TEST_KILL_IN_FIRE =
 * "before_commit" or "after_commit" kills the process there, at the first fire that makes a
 * job. */
static void kill_hook(const char *where) {
    const char *at = getenv("CHORD_TEST_KILL_IN_FIRE");
    if (at && !strcmp(at, where)) raise(SIGKILL);
}

int store_schedule_fire(store *s, const char *schedule_id, int64_t expect_ms, int64_t fire_ms,
                        int64_t next_ms, int64_t missed, const char *error, const char *job_name,
                        const char *config_json, const char *base_checkpoint_id,
                        const store_job_extra *extra, char job_id[STORE_ID_MAX], chord_err *err) {
    job_id[0] = '\0';
    char id[STORE_ID_MAX] = "";
    if (storage_check_id(schedule_id, "sch", "schedule", err)) return -1;
    if (job_name && storage_new_id("job", id, err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "firing %s", schedule_id);
    if (storage_run(
            s,
            "UPDATE schedules SET next_fire_ms = ?3 WHERE id = ?1 AND paused = 0 AND "
            "next_fire_ms = ?2",
            STORAGE_VALUES(STORAGE_TEXT(schedule_id), STORAGE_INT(expect_ms), STORAGE_INT(next_ms)),
            err, "firing schedule %s", schedule_id))
        goto fail;
    if (sqlite3_changes(s->db) == 0) {
        chord_err_setc(err, CHORD_E_CONFLICT, "schedule %s: fire time %lld handled already",
                       schedule_id, (long long)fire_ms);
        goto fail;
    }
    if ((job_name &&
         storage_insert_job_locked(s, id, job_name, config_json, base_checkpoint_id, extra, err)) ||
        storage_run(s,
                    "INSERT INTO schedule_fires (schedule_id, fire_ms, job_id, error, missed, "
                    "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    STORAGE_VALUES(STORAGE_TEXT(schedule_id), STORAGE_INT(fire_ms),
                                   STORAGE_TEXT(job_name ? id : NULL), STORAGE_TEXT(error),
                                   STORAGE_INT(missed), STORAGE_INT(store_now_ms())),
                    err, "recording fire %lld of schedule %s", (long long)fire_ms, schedule_id))
        goto fail;
    if (job_name) kill_hook("before_commit");
    if (storage_commit(s, err)) goto fail;
    if (job_name) kill_hook("after_commit");
    if (job_name) snprintf(job_id, STORE_ID_MAX, "%s", id);
    return 0;
fail:
    storage_rollback(s);
    return -1;
}

int store_scheduler_alive(store *s, int64_t now_ms, int64_t *previous_ms, chord_err *err) {
    *previous_ms = 0;
    sqlite3_stmt *st;
    if (storage_prepare(s,
                        "SELECT CAST(value AS INTEGER) FROM settings WHERE key = "
                        "'scheduler_alive_ms'",
                        &st, err))
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *previous_ms = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return storage_sqlerr(s, err, rc, "reading the scheduler's heartbeat");
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    return storage_run(s,
                       "INSERT INTO settings (key, value) VALUES ('scheduler_alive_ms', ?1) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                       STORAGE_VALUES(STORAGE_TEXT(now)), err,
                       "recording the scheduler's heartbeat");
}
