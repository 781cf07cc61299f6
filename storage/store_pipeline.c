/* store_pipeline.c — model aliases, their moves, and job promotions (store.h, "model aliases
 * and promotions"): each change of an alias and each promotion decision is one transaction, the
 * move recorded beside it (alias_moves: the alias.moved webhook events are made from it).
 *
 * It knows nothing of eval gates' meaning or of model files: the service decides, this stores
 * the decision. Calls store.c and store_records.c's helpers only. */
#include <math.h>
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
