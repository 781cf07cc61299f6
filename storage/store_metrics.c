/* store_metrics.c — per-step metrics and per-sample rollout records of a job, written exactly
 * once per step (a re-run step replaces, never duplicates) together with the job's current step,
 * their paged reads, and the resume truncation (which drops later checkpoints' rows and
 * directories too). Metric names and sample kinds are opaque strings here.
 * Calls store_records.c (job states, the list reader) and store.c; no storage file calls it. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "storage/store_internal.h"

/* Binds (job, step) as ?1, ?2 and runs an INSERT/UPDATE/DELETE once. */
static int exec_job_step(store *s, const char *sql, const char *job_id, int64_t step,
                         chord_err *err) {
    return storage_run(s, sql, STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step)), err,
                       "job %s step %lld", job_id, (long long)step);
}

static int insert_metrics(store *s, const char *job_id, int64_t step, const char *const *names,
                          const double *values, size_t n, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare(
            s, "INSERT INTO metrics (job_id, step, name, value) VALUES (?1, ?2, ?3, ?4)", &st, err))
        return -1;
    int rc = SQLITE_OK;
    size_t i;
    for (i = 0; i < n && rc == SQLITE_OK; i++)
        rc = storage_rerun(st, STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step),
                                              STORAGE_TEXT(names[i]), STORAGE_REAL(values[i])));
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return storage_sqlerr(s, err, rc, "job %s step %lld: metric %s", job_id, (long long)step,
                              names[i - 1]);
    return 0;
}

static int insert_samples(store *s, const char *job_id, int64_t step, const store_sample *samples,
                          size_t n, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare(s,
                        "INSERT INTO samples (job_id, step, idx, kind, prompt, completion, reward, "
                        "reason, answer) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        &st, err))
        return -1;
    int rc = SQLITE_OK;
    size_t i;
    for (i = 0; i < n && rc == SQLITE_OK; i++) {
        const store_sample *x = &samples[i];
        rc = storage_rerun(st, STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step),
                                              STORAGE_INT((int64_t)i), STORAGE_TEXT(x->kind),
                                              STORAGE_TEXT(x->prompt), STORAGE_TEXT(x->completion),
                                              STORAGE_REAL(x->reward), STORAGE_TEXT(x->reason),
                                              STORAGE_TEXT(x->answer)));
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return storage_sqlerr(s, err, rc, "job %s step %lld: sample %zu", job_id, (long long)step,
                              i - 1);
    return 0;
}

int store_put_step(store *s, const char *job_id, int64_t step, const char *const *names,
                   const double *values, size_t n, const store_sample *samples, size_t n_samples,
                   chord_err *err) {
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    if (step < 0)
        return chord_err_setc(err, CHORD_E_INVALID, "job %s: negative step %lld", job_id,
                              (long long)step);
    if (n > 0 && (!names || !values))
        return chord_err_setc(err, CHORD_E_INVALID, "job %s step %lld: no metric arrays", job_id,
                              (long long)step);
    for (size_t i = 0; i < n; i++) {
        if (!names[i] || !*names[i])
            return chord_err_setc(err, CHORD_E_INVALID, "job %s step %lld: metric %zu unnamed",
                                  job_id, (long long)step, i);
        for (size_t k = 0; k < i; k++)
            if (strcmp(names[k], names[i]) == 0)
                return chord_err_setc(err, CHORD_E_INVALID,
                                      "job %s step %lld: metric %s given twice", job_id,
                                      (long long)step, names[i]);
    }
    if (n_samples > 0 && !samples)
        return chord_err_setc(err, CHORD_E_INVALID, "job %s step %lld: no sample array", job_id,
                              (long long)step);

    if (storage_begin_write(s, err))
        return chord_err_prefix(err, "job %s step %lld", job_id, (long long)step);
    store_job_state state = STORE_JOB_QUEUED;
    if (storage_job_state_locked(s, job_id, &state, err)) goto fail;
    if (state != STORE_JOB_RUNNING) {
        chord_err_setc(err, CHORD_E_CONFLICT, "job %s is %s, not running: step %lld not written",
                       job_id, store_job_state_name(state), (long long)step);
        goto fail;
    }
    if (exec_job_step(s, "DELETE FROM metrics WHERE job_id = ?1 AND step = ?2", job_id, step,
                      err) ||
        insert_metrics(s, job_id, step, names, values, n, err))
        goto fail;
    if (samples && (exec_job_step(s, "DELETE FROM samples WHERE job_id = ?1 AND step = ?2", job_id,
                                  step, err) ||
                    insert_samples(s, job_id, step, samples, n_samples, err)))
        goto fail;
    if (exec_job_step(s, "UPDATE jobs SET current_step = ?2 WHERE id = ?1", job_id, step, err))
        goto fail;
    return storage_commit(s, err);
fail:
    storage_rollback(s);
    return -1;
}

int store_put_step_metrics(store *s, const char *job_id, int64_t step, const char *const *names,
                           const double *values, size_t n, chord_err *err) {
    return store_put_step(s, job_id, step, names, values, n, NULL, 0, err);
}

static int read_path(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    char **path = item;
    *path = storage_col_path(s, st, 0);
    return *path ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "checkpoint path: out of memory");
}

static void free_path(void *item) {
    free(*(char **)item);
}

/* Absolute directories of a job's checkpoints after `step`, inside the caller's transaction. */
static int checkpoint_dirs_after(store *s, const char *job_id, int64_t step, char ***dirs,
                                 size_t *n, chord_err *err) {
    *dirs = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, "SELECT path FROM checkpoints WHERE job_id = ?1 AND step > ?2",
                              STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step)), &st, err))
        return -1;
    return storage_collect(s, st, sizeof **dirs, read_path, free_path, (void **)dirs, n,
                           "checkpoints after the step", err);
}

int store_job_truncate_after(store *s, const char *job_id, int64_t step, chord_err *err) {
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    char **dirs = NULL;
    size_t n_dirs = 0;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "job %s", job_id);
    store_job_state state = STORE_JOB_QUEUED;
    if (storage_job_state_locked(s, job_id, &state, err) ||
        checkpoint_dirs_after(s, job_id, step, &dirs, &n_dirs, err) ||
        exec_job_step(s, "DELETE FROM checkpoints WHERE job_id = ?1 AND step > ?2", job_id, step,
                      err) ||
        exec_job_step(s, "DELETE FROM metrics WHERE job_id = ?1 AND step > ?2", job_id, step,
                      err) ||
        exec_job_step(s, "DELETE FROM samples WHERE job_id = ?1 AND step > ?2", job_id, step,
                      err) ||
        exec_job_step(s, "UPDATE jobs SET current_step = min(current_step, ?2) WHERE id = ?1",
                      job_id, step, err))
        goto fail;
    if (storage_commit(s, err)) goto fail;
    /* Rows first, files second: a crash in between leaves directories that the next open of the
     * data directory removes. */
    int ret = 0;
    for (size_t i = 0; i < n_dirs; i++)
        if (ret == 0 && chord_rmtree(dirs[i], err)) ret = -1;
    storage_free_items(dirs, n_dirs, sizeof *dirs, free_path);
    return ret;
fail:
    storage_rollback(s);
    storage_free_items(dirs, n_dirs, sizeof *dirs, free_path);
    return -1;
}

/* ---- reads -------------------------------------------------------------------------------- */

static void free_metric_item(void *item) {
    store_metric_row *r = item;
    free(r->name);
    r->name = NULL;
}

void store_metric_rows_free(store_metric_row *rows, size_t n) {
    if (rows) storage_free_items(rows, n, sizeof *rows, free_metric_item);
}

static int read_metric(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_metric_row *r = item;
    r->step = sqlite3_column_int64(st, 0);
    if (storage_col_text(st, 1, &r->name) || !r->name)
        return chord_err_setc(err, CHORD_E_INTERNAL, "metric name: out of memory");
    r->value = sqlite3_column_type(st, 2) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 2);
    return 0;
}

int store_metrics_since(store *s, const char *job_id, int64_t since_step, size_t max_steps,
                        store_metric_row **rows, size_t *n, int64_t *next_step, chord_err *err) {
    *rows = NULL;
    *n = 0;
    *next_step = since_step;
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    /* The max_steps-th distinct step at or after since_step bounds the page (LIMIT -1: all). */
    storage_list list = {
        .what = "reading metrics",
        .job_id = job_id,
        .rows_sql = "SELECT step, name, value FROM metrics WHERE job_id = ?1 AND step >= ?2 "
                    "AND step <= (SELECT max(step) FROM (SELECT DISTINCT step FROM metrics "
                    "WHERE job_id = ?1 AND step >= ?2 ORDER BY step LIMIT ?3)) "
                    "ORDER BY step, name",
        .values = STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(since_step),
                                 STORAGE_INT(storage_limit(max_steps))),
        .item_size = sizeof **rows,
        .read = read_metric,
        .free_item = free_metric_item};
    if (storage_read_list(s, &list, (void **)rows, n, NULL, err)) return -1;
    if (*n > 0) *next_step = (*rows)[*n - 1].step + 1;
    return 0;
}

static void free_sample_fields(void *item) {
    store_sample_row *r = item;
    free(r->kind);
    free(r->prompt);
    free(r->completion);
    free(r->reason);
    free(r->answer);
    memset(r, 0, sizeof *r);
}

void store_sample_rows_free(store_sample_row *rows, size_t n) {
    if (rows) storage_free_items(rows, n, sizeof *rows, free_sample_fields);
}

static int read_sample(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_sample_row *r = item;
    r->step = sqlite3_column_int64(st, 0);
    r->index = sqlite3_column_int64(st, 1);
    if (storage_col_text(st, 2, &r->kind) || storage_col_text(st, 3, &r->prompt) ||
        storage_col_text(st, 4, &r->completion) || storage_col_text(st, 6, &r->reason) ||
        storage_col_text(st, 7, &r->answer))
        return chord_err_setc(err, CHORD_E_INTERNAL, "sample: out of memory");
    r->reward = sqlite3_column_type(st, 5) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 5);
    return 0;
}

int store_samples_list(store *s, const char *job_id, int64_t step, size_t offset, size_t limit,
                       int64_t after_step, int64_t after_index, store_sample_row **rows, size_t *n,
                       int64_t *total, chord_err *err) {
    *rows = NULL;
    *n = 0;
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    if (step < -1)
        return chord_err_setc(err, CHORD_E_INVALID, "samples of job %s: bad step %lld", job_id,
                              (long long)step);
    /* step = -1 selects every step: (?2 < 0 OR step = ?2). */
    storage_list list = {
        .what = "reading samples",
        .job_id = job_id,
        .count_sql = "SELECT count(*) FROM samples WHERE job_id = ?1 AND (?2 < 0 OR step = ?2)",
        .rows_sql = "SELECT step, idx, kind, prompt, completion, reward, reason, answer "
                    "FROM samples WHERE job_id = ?1 AND (?2 < 0 OR step = ?2) "
                    "AND (?5 < 0 OR (step, idx) > (?5, ?6)) ORDER BY step, idx LIMIT ?3 OFFSET ?4",
        .values =
            STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step),
                           STORAGE_INT(storage_limit(limit)), STORAGE_INT(storage_offset(offset)),
                           STORAGE_INT(after_step < 0 ? -1 : after_step), STORAGE_INT(after_index)),
        .item_size = sizeof **rows,
        .read = read_sample,
        .free_item = free_sample_fields};
    return storage_read_list(s, &list, (void **)rows, n, total, err);
}
