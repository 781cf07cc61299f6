/* store_records.c — the row tables: datasets (reads; uploads are in store_files.c), models,
 * jobs with their state machine, and rollout requests; and the list reader the other tables'
 * files share (storage_read_list). Every write that reads first runs in one BEGIN IMMEDIATE so
 * the check and the change see the same state.
 * Calls store.c only; store_metrics.c and store_files.c call it (store_internal.h has the map). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/store_internal.h"

#define OOM(err, what) chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", what)

/* ---- datasets ----------------------------------------------------------------------------- */

static const char *const dataset_kinds[] = {"prompts", "expert", "eval"};

const char *store_dataset_kind_name(store_dataset_kind kind) {
    return (unsigned)kind < 3 ? dataset_kinds[kind] : "?";
}

int store_dataset_kind_parse(const char *name, store_dataset_kind *kind, chord_err *err) {
    for (int i = 0; i < 3; i++)
        if (name && strcmp(name, dataset_kinds[i]) == 0) {
            *kind = (store_dataset_kind)i;
            return 0;
        }
    return chord_err_setc(err, CHORD_E_INVALID,
                          "dataset kind \"%.40s\": want prompts, expert or eval",
                          name ? name : "(null)");
}

void store_dataset_free(store_dataset *d) {
    if (!d) return;
    free(d->name);
    free(d->path);
    d->name = d->path = NULL;
}

static void free_dataset_item(void *item) {
    store_dataset_free(item);
}

void store_dataset_list_free(store_dataset *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_dataset_item);
}

#define DATASET_COLS "id, name, kind, path, line_count, bytes, sha256, created_ms"

static int read_dataset(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    store_dataset *d = item;
    storage_col_copy(st, 0, d->id, sizeof d->id);
    if (storage_col_text(st, 1, &d->name)) return OOM(err, "dataset");
    const char *kind = (const char *)sqlite3_column_text(st, 2);
    if (store_dataset_kind_parse(kind, &d->kind, err)) return -1;
    d->path = storage_col_path(s, st, 3);
    if (!d->path) return OOM(err, "dataset");
    d->line_count = sqlite3_column_int64(st, 4);
    d->bytes = sqlite3_column_int64(st, 5);
    storage_col_copy(st, 6, d->sha256, sizeof d->sha256);
    d->created_ms = sqlite3_column_int64(st, 7);
    return 0;
}

int store_dataset_get(store *s, const char *id, store_dataset *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (storage_check_id(id, "ds", "dataset", err)) return -1;
    return storage_get_one(s, "SELECT " DATASET_COLS " FROM datasets WHERE id = ?1", id,
                           read_dataset, out, "dataset", err);
}

/* ---- the list reader ---------------------------------------------------------------------- */

/* SELECT count(*) … with the list's values. */
static int count_rows(store *s, const storage_list *list, int64_t *total, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, list->count_sql, list->values, &st, err)) return -1;
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW)
        *total = sqlite3_column_int64(st, 0);
    else
        ret = storage_sqlerr(s, err, rc, "%s: counting", list->what);
    sqlite3_finalize(st);
    return ret;
}

/* The cursor names a row of the list's table (list->cursor_sql finds it). */
static int check_cursor(store *s, const storage_list *list, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, list->cursor_sql, list->values, &st, err)) return -1;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return 0;
    if (rc == SQLITE_DONE)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "after: \"%.60s\" is not a cursor of this list (pass a next_cursor "
                              "it returned)",
                              list->cursor ? list->cursor : "");
    return storage_sqlerr(s, err, rc, "%s: reading the cursor", list->what);
}

int storage_read_list(store *s, const storage_list *list, void **items, size_t *n, int64_t *total,
                      chord_err *err) {
    *items = NULL;
    *n = 0;
    if (storage_begin_read(s, err)) return chord_err_prefix(err, "%s", list->what);
    int64_t count = 0;
    store_job_state state = STORE_JOB_QUEUED;
    sqlite3_stmt *st;
    if ((list->job_id && storage_job_state_locked(s, list->job_id, &state, err)) ||
        (list->cursor_sql && check_cursor(s, list, err)) ||
        (list->count_sql && count_rows(s, list, &count, err)) ||
        storage_prepare_bound(s, list->rows_sql, list->values, &st, err) ||
        storage_collect(s, st, list->item_size, list->read, list->free_item, items, n, list->what,
                        err)) {
        storage_rollback(s);
        return -1;
    }
    if (storage_commit(s, err)) {
        storage_free_items(*items, *n, list->item_size, list->free_item);
        *items = NULL;
        *n = 0;
        return -1;
    }
    if (total) *total = count;
    return 0;
}

/* A newest-first page of a table: count_sql and rows_sql share ?1.. = param (when not NULL),
 * then LIMIT, OFFSET and the cursor `after` (NULL: none; an id that cursor_sql, over the same
 * values, must find). */
static int list_page(store *s, const char *what, const char *count_sql, const char *rows_sql,
                     const char *cursor_sql, const char *param, size_t offset, size_t limit,
                     const char *after, size_t item_size, storage_row_reader read,
                     void (*free_item)(void *), void **items, size_t *n, int64_t *total,
                     chord_err *err) {
    storage_value values[4] = {STORAGE_TEXT(param), STORAGE_INT(storage_limit(limit)),
                               STORAGE_INT(storage_offset(offset)), STORAGE_TEXT(after)};
    storage_list list = {.what = what,
                         .count_sql = count_sql,
                         .cursor_sql = after ? cursor_sql : NULL,
                         .cursor = after,
                         .rows_sql = rows_sql,
                         .values = {param ? values : values + 1, param ? 4 : 3},
                         .item_size = item_size,
                         .read = read,
                         .free_item = free_item};
    return storage_read_list(s, &list, items, n, total, err);
}

int store_dataset_latest_by_name(store *s, const char *name, const char *kind_a, const char *kind_b,
                                 store_dataset *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (!name || !*name || !kind_a)
        return chord_err_setc(err, CHORD_E_INVALID, "dataset: empty name or kind");
    sqlite3_stmt *st;
    store_dataset *found = NULL;
    size_t n = 0;
    if (storage_prepare_bound(s,
                              "SELECT " DATASET_COLS " FROM datasets WHERE name = ?1 AND "
                              "kind IN (?2, ?3) ORDER BY seq DESC LIMIT 1",
                              STORAGE_VALUES(STORAGE_TEXT(name), STORAGE_TEXT(kind_a),
                                             STORAGE_TEXT(kind_b ? kind_b : kind_a)),
                              &st, err) ||
        storage_collect(s, st, sizeof *found, read_dataset, free_dataset_item, (void **)&found, &n,
                        "finding a dataset by name", err))
        return -1;
    if (n == 0)
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "no dataset named \"%s\" of kind %s%s%s",
                              name, kind_a, kind_b ? " or " : "", kind_b ? kind_b : "");
    *out = found[0];
    memset(&found[0], 0, sizeof found[0]);
    store_dataset_list_free(found, n);
    return 0;
}

int store_dataset_list(store *s, size_t offset, size_t limit, const char *after,
                       store_dataset **items, size_t *n, int64_t *total, chord_err *err) {
    return list_page(
        s, "listing datasets", "SELECT count(*) FROM datasets",
        "SELECT " DATASET_COLS " FROM datasets WHERE ?3 IS NULL OR seq < "
        "(SELECT seq FROM datasets WHERE id = ?3) ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
        "SELECT 1 FROM datasets WHERE id = ?3", NULL, offset, limit, after, sizeof **items,
        read_dataset, free_dataset_item, (void **)items, n, total, err);
}

/* ---- models ------------------------------------------------------------------------------- */

void store_model_free(store_model *m) {
    if (!m) return;
    free(m->name);
    free(m->directory);
    free(m->config_json);
    free(m->tokenizer_dir);
    m->name = m->directory = m->config_json = m->tokenizer_dir = NULL;
}

static void free_model_item(void *item) {
    store_model_free(item);
}

void store_model_list_free(store_model *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_model_item);
}

/* a checkpoint model's directory is its checkpoint's (a path relative to the data directory) */
#define MODEL_COLS                                                                                 \
    "m.id, m.name, m.directory, m.config_json, m.tokenizer_dir, m.created_ms, m.checkpoint_id, "   \
    "c.path, c.job_id, c.step FROM models m LEFT JOIN checkpoints c ON c.id = m.checkpoint_id"

static int read_model(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    store_model *m = item;
    storage_col_copy(st, 0, m->id, sizeof m->id);
    if (storage_col_text(st, 1, &m->name) || storage_col_text(st, 2, &m->directory) ||
        storage_col_text(st, 3, &m->config_json) || storage_col_text(st, 4, &m->tokenizer_dir))
        return OOM(err, "model");
    m->created_ms = sqlite3_column_int64(st, 5);
    storage_col_copy(st, 6, m->checkpoint_id, sizeof m->checkpoint_id);
    m->checkpoint_step = -1;
    if (m->checkpoint_id[0] && sqlite3_column_type(st, 7) != SQLITE_NULL) {
        free(m->directory);
        m->directory = storage_col_path(s, st, 7);
        if (!m->directory) return OOM(err, "model");
        storage_col_copy(st, 8, m->checkpoint_job_id, sizeof m->checkpoint_job_id);
        m->checkpoint_step = sqlite3_column_int64(st, 9);
        free(m->tokenizer_dir); /* the trainer writes the tokenizer into every checkpoint */
        m->tokenizer_dir = strdup(m->directory);
        if (!m->tokenizer_dir) return OOM(err, "model");
    }
    return 0;
}

int store_model_insert(store *s, const char *name, const char *directory, const char *config_json,
                       const char *tokenizer_dir, store_model *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!name || !*name) return chord_err_setc(err, CHORD_E_INVALID, "model: empty name");
    if (!config_json) return chord_err_setc(err, CHORD_E_INVALID, "model %s: no config", name);
    char id[STORE_ID_MAX];
    if (storage_new_id("mdl", id, err) ||
        storage_run(s,
                    "INSERT INTO models (id, name, directory, config_json, tokenizer_dir, "
                    "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(name), STORAGE_TEXT(directory),
                                   STORAGE_TEXT(config_json), STORAGE_TEXT(tokenizer_dir),
                                   STORAGE_INT(store_now_ms())),
                    err, "inserting model %s", name))
        return -1;
    return out ? store_model_get(s, id, out, err) : 0;
}

int store_model_insert_checkpoint(store *s, const char *name, const char *checkpoint_id,
                                  const char *config_json, store_model *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!name || !*name) return chord_err_setc(err, CHORD_E_INVALID, "model: empty name");
    if (!config_json) return chord_err_setc(err, CHORD_E_INVALID, "model %s: no config", name);
    if (storage_check_id(checkpoint_id, "ckpt", "checkpoint", err)) return -1;
    char id[STORE_ID_MAX];
    if (storage_new_id("mdl", id, err)) return -1;
    /* the check and the insert in one transaction: a checkpoint pruned meanwhile is not pinned */
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "inserting model %s", name);
    if (storage_insert_checkpoint_model_locked(s, id, name, checkpoint_id, config_json, err) ||
        storage_commit(s, err))
        goto fail;
    return out ? store_model_get(s, id, out, err) : 0;
fail:
    storage_rollback(s);
    return -1;
}

int storage_insert_checkpoint_model_locked(store *s, const char *id, const char *name,
                                           const char *checkpoint_id, const char *config_json,
                                           chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, "SELECT 1 FROM checkpoints WHERE id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(checkpoint_id)), &st, err))
        return -1;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE)
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "checkpoint %s not found", checkpoint_id);
    if (rc != SQLITE_ROW) return storage_sqlerr(s, err, rc, "reading checkpoint %s", checkpoint_id);
    return storage_run(s,
                       "INSERT INTO models (id, name, directory, config_json, tokenizer_dir, "
                       "created_ms, checkpoint_id) VALUES (?1, ?2, NULL, ?3, NULL, ?4, ?5)",
                       STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(name),
                                      STORAGE_TEXT(config_json), STORAGE_INT(store_now_ms()),
                                      STORAGE_TEXT(checkpoint_id)),
                       err, "inserting model %s", name);
}

int store_model_get(store *s, const char *id, store_model *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (storage_check_id(id, "mdl", "model", err)) return -1;
    return storage_get_one(s, "SELECT " MODEL_COLS " WHERE m.id = ?1", id, read_model, out, "model",
                           err);
}

int store_model_list(store *s, size_t offset, size_t limit, const char *after, store_model **items,
                     size_t *n, int64_t *total, chord_err *err) {
    return list_page(
        s, "listing models", "SELECT count(*) FROM models",
        "SELECT " MODEL_COLS " WHERE ?3 IS NULL OR m.seq < "
        "(SELECT seq FROM models WHERE id = ?3) ORDER BY m.seq DESC LIMIT ?1 OFFSET ?2",
        "SELECT 1 FROM models WHERE id = ?3", NULL, offset, limit, after, sizeof **items,
        read_model, free_model_item, (void **)items, n, total, err);
}

/* ---- jobs --------------------------------------------------------------------------------- */

static const char *const job_states[STORE_JOB_NSTATES] = {"queued", "running", "succeeded",
                                                          "failed", "cancelled"};

const char *store_job_state_name(store_job_state state) {
    return (unsigned)state < STORE_JOB_NSTATES ? job_states[state] : "?";
}

int store_job_state_parse(const char *name, store_job_state *state, chord_err *err) {
    for (int i = 0; i < STORE_JOB_NSTATES; i++)
        if (name && strcmp(name, job_states[i]) == 0) {
            *state = (store_job_state)i;
            return 0;
        }
    return chord_err_setc(err, CHORD_E_INVALID,
                          "job state \"%.40s\": want queued, running, succeeded, failed or "
                          "cancelled",
                          name ? name : "(null)");
}

int store_job_state_terminal(store_job_state state) {
    return state == STORE_JOB_SUCCEEDED || state == STORE_JOB_FAILED ||
           state == STORE_JOB_CANCELLED;
}

int store_job_transition_legal(store_job_state from, store_job_state to) {
    switch (from) {
    case STORE_JOB_QUEUED:
        return to == STORE_JOB_RUNNING || to == STORE_JOB_CANCELLED;
    case STORE_JOB_RUNNING:
        return to == STORE_JOB_SUCCEEDED || to == STORE_JOB_FAILED || to == STORE_JOB_CANCELLED ||
               to == STORE_JOB_QUEUED;
    default:
        return 0;
    }
}

void store_job_free(store_job *j) {
    if (!j) return;
    free(j->name);
    free(j->config_json);
    free(j->error);
    free(j->device);
    free(j->model_alias);
    free(j->alias_model_id);
    free(j->promote_alias);
    free(j->promotion_state);
    free(j->promotion_reason);
    free(j->promoted_model_id);
    j->name = j->config_json = j->error = j->device = NULL;
    j->model_alias = j->alias_model_id = j->promote_alias = NULL;
    j->promotion_state = j->promotion_reason = j->promoted_model_id = NULL;
}

static void free_job_item(void *item) {
    store_job_free(item);
}

void store_job_list_free(store_job *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_job_item);
}

#define JOB_COLS                                                                                   \
    "id, name, config_json, state, cancel_requested, created_ms, started_ms, finished_ms, "        \
    "error, current_step, device, paused"

/* The job's row of job_pipeline, if any (the caller's transaction, if any, holds). */
static int read_job_pipeline(store *s, store_job *j, chord_err *err) {
    j->min_eval_accuracy = NAN;
    j->eval_accuracy = NAN;
    j->eval_step = -1;
    sqlite3_stmt *st;
    if (storage_prepare_bound(s,
                              "SELECT model_alias, alias_model_id, promote_alias, "
                              "min_eval_accuracy, promotion_state, promotion_reason, "
                              "eval_accuracy, eval_step, promoted_model_id, decided_ms "
                              "FROM job_pipeline WHERE job_id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(j->id)), &st, err))
        return -1;
    int rc = sqlite3_step(st), ret = 0;
    if (rc == SQLITE_ROW) {
        if (storage_col_text(st, 0, &j->model_alias) ||
            storage_col_text(st, 1, &j->alias_model_id) ||
            storage_col_text(st, 2, &j->promote_alias) ||
            storage_col_text(st, 4, &j->promotion_state) ||
            storage_col_text(st, 5, &j->promotion_reason) ||
            storage_col_text(st, 8, &j->promoted_model_id))
            ret = OOM(err, "job");
        if (sqlite3_column_type(st, 3) != SQLITE_NULL)
            j->min_eval_accuracy = sqlite3_column_double(st, 3);
        if (sqlite3_column_type(st, 6) != SQLITE_NULL)
            j->eval_accuracy = sqlite3_column_double(st, 6);
        if (sqlite3_column_type(st, 7) != SQLITE_NULL) j->eval_step = sqlite3_column_int64(st, 7);
        j->decided_ms = sqlite3_column_int64(st, 9);
    } else if (rc != SQLITE_DONE) {
        ret = storage_sqlerr(s, err, rc, "reading job %s's pipeline fields", j->id);
    }
    sqlite3_finalize(st);
    return ret;
}

static int read_job(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    store_job *j = item;
    storage_col_copy(st, 0, j->id, sizeof j->id);
    if (storage_col_text(st, 1, &j->name) || storage_col_text(st, 2, &j->config_json))
        return OOM(err, "job");
    if (store_job_state_parse((const char *)sqlite3_column_text(st, 3), &j->state, err)) return -1;
    j->cancel_requested = sqlite3_column_int(st, 4);
    j->created_ms = sqlite3_column_int64(st, 5);
    j->started_ms = sqlite3_column_int64(st, 6); /* NULL reads as 0 */
    j->finished_ms = sqlite3_column_int64(st, 7);
    if (storage_col_text(st, 8, &j->error)) return OOM(err, "job");
    j->current_step = sqlite3_column_int64(st, 9);
    if (storage_col_text(st, 10, &j->device)) return OOM(err, "job");
    j->paused = sqlite3_column_int(st, 11);
    return read_job_pipeline(s, j, err);
}

int store_job_get(store *s, const char *id, store_job *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (storage_check_id(id, "job", "job", err)) return -1;
    return storage_get_one(s, "SELECT " JOB_COLS " FROM jobs WHERE id = ?1", id, read_job, out,
                           "job", err);
}

int store_job_create(store *s, const char *name, const char *config_json, store_job *out,
                     chord_err *err) {
    return store_job_create_from(s, name, config_json, NULL, out, err);
}

int store_job_create_from(store *s, const char *name, const char *config_json,
                          const char *base_checkpoint_id, store_job *out, chord_err *err) {
    return store_job_create_ex(s, name, config_json, base_checkpoint_id, NULL, out, err);
}

int store_job_create_ex(store *s, const char *name, const char *config_json,
                        const char *base_checkpoint_id, const store_job_extra *extra,
                        store_job *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (base_checkpoint_id && storage_check_id(base_checkpoint_id, "ckpt", "checkpoint", err))
        return -1;
    if (!name || !*name) return chord_err_setc(err, CHORD_E_INVALID, "job: empty name");
    if (!config_json) return chord_err_setc(err, CHORD_E_INVALID, "job %s: no config", name);
    char id[STORE_ID_MAX];
    if (storage_new_id("job", id, err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "inserting job %s", name);
    if (storage_insert_job_locked(s, id, name, config_json, base_checkpoint_id, extra, err)) {
        storage_rollback(s);
        return -1;
    }
    if (storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    return out ? store_job_get(s, id, out, err) : 0;
}

int storage_insert_job_locked(store *s, const char *id, const char *name, const char *config_json,
                              const char *base_checkpoint_id, const store_job_extra *extra,
                              chord_err *err) {
    if (storage_run(s,
                    base_checkpoint_id
                        ? "INSERT INTO jobs (id, name, config_json, state, created_ms, "
                          "base_checkpoint_id) VALUES (?1, ?2, ?3, 'queued', ?4, ?5)"
                        : "INSERT INTO jobs (id, name, config_json, state, created_ms) "
                          "VALUES (?1, ?2, ?3, 'queued', ?4)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(name), STORAGE_TEXT(config_json),
                                   STORAGE_INT(store_now_ms()), STORAGE_TEXT(base_checkpoint_id)),
                    err, "inserting job %s", name))
        return -1;
    if (!extra || (!extra->model_alias && !extra->promote_alias)) return 0;
    return storage_run(
        s,
        "INSERT INTO job_pipeline (job_id, model_alias, alias_model_id, promote_alias, "
        "min_eval_accuracy, promotion_state) VALUES (?1, ?2, ?3, ?4, ?5, "
        "CASE WHEN ?4 IS NULL THEN NULL ELSE 'pending' END)",
        STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(extra->model_alias),
                       STORAGE_TEXT(extra->alias_model_id), STORAGE_TEXT(extra->promote_alias),
                       STORAGE_REAL(extra->promote_alias ? extra->min_eval_accuracy : NAN)),
        err, "inserting job %s's pipeline fields", name);
}

int store_job_list(store *s, int state, size_t offset, size_t limit, const char *after,
                   store_job **items, size_t *n, int64_t *total, chord_err *err) {
    if (state == STORE_JOB_LIST_PAUSED || state == STORE_JOB_QUEUED)
        return list_page(
            s, "listing jobs", "SELECT count(*) FROM jobs WHERE state = 'queued' AND paused = ?1",
            "SELECT " JOB_COLS " FROM jobs WHERE state = 'queued' AND paused = ?1 "
            "AND (?4 IS NULL OR seq < (SELECT seq FROM jobs WHERE id = ?4)) "
            "ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
            "SELECT 1 FROM jobs WHERE id = ?4", state == STORE_JOB_LIST_PAUSED ? "1" : "0", offset,
            limit, after, sizeof **items, read_job, free_job_item, (void **)items, n, total, err);
    if (state != -1 && (state < 0 || state >= STORE_JOB_NSTATES)) {
        *items = NULL;
        *n = 0;
        return chord_err_setc(err, CHORD_E_INVALID, "listing jobs: bad state %d", state);
    }
    if (state == -1)
        return list_page(
            s, "listing jobs", "SELECT count(*) FROM jobs",
            "SELECT " JOB_COLS " FROM jobs WHERE ?3 IS NULL OR seq < "
            "(SELECT seq FROM jobs WHERE id = ?3) ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
            "SELECT 1 FROM jobs WHERE id = ?3", NULL, offset, limit, after, sizeof **items,
            read_job, free_job_item, (void **)items, n, total, err);
    return list_page(s, "listing jobs", "SELECT count(*) FROM jobs WHERE state = ?1",
                     "SELECT " JOB_COLS " FROM jobs WHERE state = ?1 AND (?4 IS NULL OR seq < "
                     "(SELECT seq FROM jobs WHERE id = ?4)) ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
                     "SELECT 1 FROM jobs WHERE id = ?4", job_states[state], offset, limit, after,
                     sizeof **items, read_job, free_job_item, (void **)items, n, total, err);
}

int store_job_count_by_state(store *s, int64_t counts[STORE_JOB_NSTATES], chord_err *err) {
    for (int i = 0; i < STORE_JOB_NSTATES; i++)
        counts[i] = 0;
    sqlite3_stmt *st;
    if (storage_prepare(s, "SELECT state, count(*) FROM jobs GROUP BY state", &st, err)) return -1;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        store_job_state state = STORE_JOB_QUEUED;
        if (store_job_state_parse((const char *)sqlite3_column_text(st, 0), &state, err)) {
            sqlite3_finalize(st);
            return chord_err_prefix(err, "counting jobs");
        }
        counts[state] = sqlite3_column_int64(st, 1);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) return storage_sqlerr(s, err, rc, "counting jobs");
    return 0;
}

/* Current state of a job, inside the caller's transaction. */
int storage_job_state_locked(store *s, const char *id, store_job_state *state, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, "SELECT state FROM jobs WHERE id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(id)), &st, err))
        return -1;
    int rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW)
        ret = store_job_state_parse((const char *)sqlite3_column_text(st, 0), state, err);
    else if (rc == SQLITE_DONE)
        ret = chord_err_setc(err, CHORD_E_NOT_FOUND, "job %s not found", id);
    else
        ret = storage_sqlerr(s, err, rc, "job %s", id);
    sqlite3_finalize(st);
    return ret;
}

/* Runs one UPDATE on job `id`: sql's ?1 is the id, then up to three optional text / int params
 * (a statement takes as many as it names). */
static int job_update(store *s, const char *id, const char *sql, const char *text2,
                      const char *text3, int64_t int4, chord_err *err) {
    return storage_run(s, sql,
                       STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(text2), STORAGE_TEXT(text3),
                                      STORAGE_INT(int4)),
                       err, "updating job %s", id);
}

/* The transition itself, inside the caller's BEGIN IMMEDIATE. */
static int transition_locked(store *s, const char *id, store_job_state to, const char *error_text,
                             const char *device, chord_err *err) {
    store_job_state from = STORE_JOB_QUEUED;
    if (storage_job_state_locked(s, id, &from, err)) return -1;
    if (!store_job_transition_legal(from, to))
        return chord_err_setc(err, CHORD_E_CONFLICT, "job %s: cannot go from %s to %s", id,
                              job_states[from], store_job_state_name(to));
    int64_t now = store_now_ms();
    switch (to) {
    case STORE_JOB_RUNNING:
        return job_update(s, id,
                          "UPDATE jobs SET state = 'running', device = coalesce(?2, device), "
                          "started_ms = coalesce(started_ms, ?4) WHERE id = ?1",
                          device, NULL, now, err);
    case STORE_JOB_QUEUED:
        return job_update(s, id, "UPDATE jobs SET state = 'queued' WHERE id = ?1", NULL, NULL, 0,
                          err);
    default:
        return job_update(s, id,
                          "UPDATE jobs SET state = ?2, error = ?3, finished_ms = ?4 WHERE id = ?1",
                          job_states[to], error_text, now, err);
    }
}

int store_job_transition(store *s, const char *id, store_job_state to, const char *error_text,
                         const char *device, store_job *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (storage_check_id(id, "job", "job", err)) return -1;
    if ((unsigned)to >= STORE_JOB_NSTATES)
        return chord_err_setc(err, CHORD_E_INVALID, "job %s: bad target state %d", id, (int)to);
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "job %s", id);
    if (transition_locked(s, id, to, error_text, device, err)) goto fail;
    if (out && store_job_get(s, id, out, err)) goto fail;
    if (storage_commit(s, err)) goto fail;
    return 0;
fail:
    storage_rollback(s);
    if (out) store_job_free(out);
    return -1;
}

int store_job_claim_next(store *s, const char *device, store_job *out, int *found, chord_err *err) {
    *found = 0;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "claiming a job");
    sqlite3_stmt *st;
    if (storage_prepare(s, "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1", &st,
                        err))
        goto fail;
    int rc = sqlite3_step(st);
    char id[STORE_ID_MAX] = "";
    if (rc == SQLITE_ROW) storage_col_copy(st, 0, id, sizeof id);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        storage_sqlerr(s, err, rc, "claiming a job");
        goto fail;
    }
    if (rc == SQLITE_DONE) return storage_commit(s, err);
    if (transition_locked(s, id, STORE_JOB_RUNNING, NULL, device, err)) goto fail;
    if (out && store_job_get(s, id, out, err)) goto fail;
    if (storage_commit(s, err)) {
        if (out) store_job_free(out);
        return -1;
    }
    *found = 1;
    return 0;
fail:
    storage_rollback(s);
    return -1;
}

int store_job_request_cancel(store *s, const char *id, store_job *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (storage_check_id(id, "job", "job", err)) return -1;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "cancelling job %s", id);
    store_job_state state = STORE_JOB_QUEUED;
    if (storage_job_state_locked(s, id, &state, err)) goto fail;
    if (state == STORE_JOB_QUEUED) {
        if (transition_locked(s, id, STORE_JOB_CANCELLED, NULL, NULL, err)) goto fail;
    } else if (state == STORE_JOB_RUNNING) {
        if (job_update(s, id, "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1", NULL, NULL, 0,
                       err))
            goto fail;
    } else {
        chord_err_setc(err, CHORD_E_CONFLICT, "job %s is already %s", id, job_states[state]);
        goto fail;
    }
    if (out && store_job_get(s, id, out, err)) goto fail;
    if (storage_commit(s, err)) goto fail;
    return 0;
fail:
    storage_rollback(s);
    if (out) store_job_free(out);
    return -1;
}

int store_job_set_paused(store *s, const char *id, int paused, store_job *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (storage_check_id(id, "job", "job", err)) return -1;
    if (storage_begin_write(s, err))
        return chord_err_prefix(err, "%s job %s", paused ? "pausing" : "resuming", id);
    store_job_state state = STORE_JOB_QUEUED;
    if (storage_job_state_locked(s, id, &state, err)) goto fail;
    if (state != STORE_JOB_QUEUED && state != STORE_JOB_RUNNING) {
        chord_err_setc(err, CHORD_E_CONFLICT, "job %s is already %s", id, job_states[state]);
        goto fail;
    }
    if (storage_run(s, "UPDATE jobs SET paused = ?2 WHERE id = ?1",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_INT(paused ? 1 : 0)), err,
                    "pausing job %s", id))
        goto fail;
    if (out && store_job_get(s, id, out, err)) goto fail;
    if (storage_commit(s, err)) goto fail;
    return 0;
fail:
    storage_rollback(s);
    if (out) store_job_free(out);
    return -1;
}

int store_job_requeue_running(store *s, int64_t *n, chord_err *err) {
    if (n) *n = 0;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "requeueing jobs");
    if (storage_run(s,
                    "UPDATE jobs SET state = 'cancelled', finished_ms = ?1 "
                    "WHERE state = 'running' AND cancel_requested = 1",
                    STORAGE_VALUES(STORAGE_INT(store_now_ms())), err,
                    "cancelling interrupted jobs"))
        goto fail;
    int64_t moved = sqlite3_changes(s->db);
    if (storage_exec(s, "UPDATE jobs SET state = 'queued' WHERE state = 'running'", err)) goto fail;
    moved += sqlite3_changes(s->db);
    if (storage_commit(s, err)) return -1;
    if (n) *n = moved;
    return 0;
fail:
    storage_rollback(s);
    return -1;
}

/* ---- rollout requests --------------------------------------------------------------------- */

static const char *const rollout_states[] = {"pending", "succeeded", "failed"};

const char *store_rollout_state_name(store_rollout_state state) {
    return (unsigned)state < 3 ? rollout_states[state] : "?";
}

void store_rollout_free(store_rollout *r) {
    if (!r) return;
    free(r->request_json);
    free(r->result_json);
    free(r->error);
    r->request_json = r->result_json = r->error = NULL;
}

static int read_rollout(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    store_rollout *r = item;
    storage_col_copy(st, 0, r->id, sizeof r->id);
    const char *state = (const char *)sqlite3_column_text(st, 1);
    r->state = STORE_ROLLOUT_PENDING;
    for (int i = 0; i < 3; i++)
        if (state && strcmp(state, rollout_states[i]) == 0) r->state = (store_rollout_state)i;
    if (storage_col_text(st, 2, &r->request_json) || storage_col_text(st, 3, &r->result_json) ||
        storage_col_text(st, 4, &r->error))
        return OOM(err, "rollout");
    r->created_ms = sqlite3_column_int64(st, 5);
    r->finished_ms = sqlite3_column_int64(st, 6);
    return 0;
}

int store_rollout_get(store *s, const char *id, store_rollout *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (storage_check_id(id, "roll", "rollout", err)) return -1;
    return storage_get_one(s,
                           "SELECT id, state, request_json, result_json, error, created_ms, "
                           "finished_ms FROM rollouts WHERE id = ?1",
                           id, read_rollout, out, "rollout", err);
}

int store_rollout_create(store *s, const char *request_json, store_rollout *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    if (!request_json) return chord_err_setc(err, CHORD_E_INVALID, "rollout: no request");
    char id[STORE_ID_MAX];
    if (storage_new_id("roll", id, err) ||
        storage_run(s,
                    "INSERT INTO rollouts (id, state, request_json, created_ms) "
                    "VALUES (?1, 'pending', ?2, ?3)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(request_json),
                                   STORAGE_INT(store_now_ms())),
                    err, "inserting rollout"))
        return -1;
    return out ? store_rollout_get(s, id, out, err) : 0;
}

int store_rollout_finish(store *s, const char *id, const char *result_json, const char *error_text,
                         chord_err *err) {
    if (storage_check_id(id, "roll", "rollout", err)) return -1;
    if (!result_json == !error_text)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "rollout %s: give exactly one of result and error", id);
    /* One statement: the state check and the change are atomic without a transaction. */
    if (storage_run(s,
                    "UPDATE rollouts SET state = ?2, result_json = ?3, error = ?4, "
                    "finished_ms = ?5 WHERE id = ?1 AND state = 'pending'",
                    STORAGE_VALUES(STORAGE_TEXT(id),
                                   STORAGE_TEXT(result_json ? "succeeded" : "failed"),
                                   STORAGE_TEXT(result_json), STORAGE_TEXT(error_text),
                                   STORAGE_INT(store_now_ms())),
                    err, "finishing rollout %s", id))
        return -1;
    if (sqlite3_changes(s->db) == 0) {
        store_rollout r;
        if (store_rollout_get(s, id, &r, err)) return -1; /* NOT_FOUND */
        chord_err_setc(err, CHORD_E_CONFLICT, "rollout %s is already %s", id,
                       rollout_states[r.state]);
        store_rollout_free(&r);
        return -1;
    }
    return 0;
}

static int read_id(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    (void)err;
    storage_col_copy(st, 0, item, STORE_ID_MAX);
    return 0;
}

static void free_nothing(void *item) {
    (void)item;
}

int store_rollout_pending_ids(store *s, char (**ids)[STORE_ID_MAX], size_t *n, chord_err *err) {
    *ids = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (storage_prepare(
            s, "SELECT id FROM rollouts WHERE state = 'pending' ORDER BY created_ms, id", &st, err))
        return -1;
    return storage_collect(s, st, sizeof **ids, read_id, free_nothing, (void **)ids, n,
                           "listing pending rollouts", err);
}

/* ---- idempotency keys --------------------------------------------------------------------- */

void store_idem_free(store_idem *r) {
    if (!r) return;
    free(r->operation);
    free(r->resource_id);
    free(r->response_json);
    r->operation = r->resource_id = r->response_json = NULL;
}

static void free_idem_item(void *item) {
    store_idem_free(item);
}

static int read_idem(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_idem *r = item;
    if (storage_col_text(st, 0, &r->operation) || storage_col_text(st, 2, &r->resource_id) ||
        storage_col_text(st, 3, &r->response_json))
        return OOM(err, "idempotency key");
    storage_col_copy(st, 1, r->fingerprint, sizeof r->fingerprint);
    r->created_ms = sqlite3_column_int64(st, 4);
    return 0;
}

static int check_key(const char *key, chord_err *err) {
    if (!key || !*key) return chord_err_setc(err, CHORD_E_INVALID, "idempotency key: empty");
    return 0;
}

int store_idem_get(store *s, const char *key, int64_t min_created_ms, store_idem *out, int *found,
                   chord_err *err) {
    memset(out, 0, sizeof *out);
    *found = 0;
    if (check_key(key, err)) return -1;
    sqlite3_stmt *st;
    store_idem *rows = NULL;
    size_t n = 0;
    if (storage_prepare_bound(
            s,
            "SELECT operation, fingerprint, resource_id, response_json, "
            "created_ms FROM idempotency_keys WHERE key = ?1 AND created_ms >= ?2",
            STORAGE_VALUES(STORAGE_TEXT(key), STORAGE_INT(min_created_ms)), &st, err) ||
        storage_collect(s, st, sizeof *rows, read_idem, free_idem_item, (void **)&rows, &n,
                        "reading an idempotency key", err))
        return -1;
    if (n > 0) {
        *out = rows[0];
        memset(&rows[0], 0, sizeof rows[0]);
        *found = 1;
    }
    storage_free_items(rows, n, sizeof *rows, free_idem_item);
    return 0;
}

int store_idem_put(store *s, const char *key, const char *operation, const char *fingerprint,
                   const char *resource_id, const char *response_json, int64_t min_created_ms,
                   chord_err *err) {
    if (check_key(key, err)) return -1;
    if (!operation || !fingerprint || strlen(fingerprint) != 64 || !resource_id || !response_json)
        return chord_err_setc(err, CHORD_E_INVALID, "idempotency key %s: incomplete record", key);
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "idempotency key %s", key);
    if (storage_run(s, "DELETE FROM idempotency_keys WHERE created_ms < ?1",
                    STORAGE_VALUES(STORAGE_INT(min_created_ms)), err,
                    "expiring idempotency keys") ||
        storage_run(s,
                    "INSERT INTO idempotency_keys (key, operation, fingerprint, resource_id, "
                    "response_json, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    STORAGE_VALUES(STORAGE_TEXT(key), STORAGE_TEXT(operation),
                                   STORAGE_TEXT(fingerprint), STORAGE_TEXT(resource_id),
                                   STORAGE_TEXT(response_json), STORAGE_INT(store_now_ms())),
                    err, "recording idempotency key %s", key) ||
        storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    return 0;
}
