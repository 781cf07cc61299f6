/* store_internal.h — what the storage .c files share: the handle, SQLite helpers that turn
 * every failure into a chord_err with context, ids, the list reader, and the in-flight registry
 * that keeps the garbage collector away from files another thread of this process is still
 * writing. Not for use outside storage/ (tests excepted). Internal symbols are prefixed storage_
 * (the public API is store_; st_ belongs to safetensors).
 *
 * The files and which way they call (never back up the list, so no file cycle):
 *   store_open.c     store_open/store_close: the process's open data directories, recovery
 *                    when a directory is first opened        → store_files.c, store.c
 *   store_files.c    checkpoint and dataset file stores, in-flight registry, garbage collection
 *                                                            → store_records.c, store.c
 *   store_metrics.c  per-step metrics and samples            → store_records.c, store.c
 *   store_records.c  datasets, models, jobs, rollouts; the list reader        → store.c
 *   store.c          one SQLite connection: PRAGMAs, migrations, helpers, ids, time
 */
#ifndef CHORD_STORAGE_STORE_INTERNAL_H
#define CHORD_STORAGE_STORE_INTERNAL_H

#include <sqlite3.h>
#include <stdarg.h>

#include "storage/store.h"

struct store {
    sqlite3 *db;
    char dir[STORE_PATH_MAX]; /* absolute data directory */
};

/* ---- store.c: the connection --------------------------------------------------------------- */

/* Creates data_dir if needed and opens a connection to <data_dir>/chord.db (WAL,
 * synchronous=FULL, foreign keys, busy timeout), migrated forward to schema `version`. No
 * recovery: that is store_open's, once per directory. */
int storage_connect(const char *data_dir, int version, store **out, chord_err *err);
/* Rolls back an open transaction, closes the connection, frees s. NULL is allowed. */
void storage_disconnect(store *s);

/* ---- store.c: SQLite helpers --------------------------------------------------------------- */

/* Fills err from the connection's last error: "<context>: <sqlite message> (<code name>)".
 * SQLITE_BUSY/LOCKED → CHORD_E_UNAVAILABLE, SQLITE_CONSTRAINT → CHORD_E_CONFLICT, else IO.
 * Returns -1. */
int storage_sqlerr(store *s, chord_err *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int storage_vsqlerr(store *s, chord_err *err, int rc, const char *fmt, va_list ap)
    __attribute__((format(printf, 4, 0)));

int storage_exec(store *s, const char *sql, chord_err *err);
int storage_prepare(store *s, const char *sql, sqlite3_stmt **stmt, chord_err *err);
/* BEGIN IMMEDIATE (takes the write lock now, waiting up to the busy timeout). */
int storage_begin_write(store *s, chord_err *err);
/* BEGIN (deferred): a read snapshot for multi-statement reads. */
int storage_begin_read(store *s, chord_err *err);
int storage_commit(store *s, chord_err *err);
/* Rolls back if a transaction is open; never fails (errors are logged). */
void storage_rollback(store *s);

/* A value for one statement parameter: text (NULL binds NULL), a 64-bit integer, or a real
 * (NaN binds NULL, which reads back as NaN). */
typedef struct storage_value {
    enum { STORAGE_VALUE_TEXT, STORAGE_VALUE_INT, STORAGE_VALUE_REAL } type;
    const char *text;
    int64_t integer;
    double real;
} storage_value;

/* Values for ?1, ?2, … in order. A statement takes as many as it has parameters, so a count
 * and its page can share one list (the page's LIMIT and OFFSET last). */
typedef struct storage_values {
    const storage_value *at;
    size_t n;
} storage_values;

#define STORAGE_TEXT(x) ((storage_value){.type = STORAGE_VALUE_TEXT, .text = (x)})
#define STORAGE_INT(x) ((storage_value){.type = STORAGE_VALUE_INT, .integer = (x)})
#define STORAGE_REAL(x) ((storage_value){.type = STORAGE_VALUE_REAL, .real = (x)})
#define STORAGE_VALUES(...)                                                                        \
    ((storage_values){(const storage_value[]){__VA_ARGS__},                                        \
                      sizeof((const storage_value[]){__VA_ARGS__}) / sizeof(storage_value)})
#define STORAGE_NO_VALUES ((storage_values){NULL, 0})

/* Binds text or NULL. Returns the sqlite result code. */
int storage_bind_text(sqlite3_stmt *stmt, int idx, const char *text);
/* Binds values to ?1.. (as many as the statement has). Returns the sqlite result code. */
int storage_bind(sqlite3_stmt *stmt, storage_values values);
/* storage_prepare, then storage_bind; on failure nothing is left prepared. */
int storage_prepare_bound(store *s, const char *sql, storage_values values, sqlite3_stmt **stmt,
                          chord_err *err);
/* Runs a statement that returns no rows (INSERT, UPDATE, DELETE) once with `values`. On
 * failure err reads "<context>: <sqlite message>". */
int storage_run(store *s, const char *sql, storage_values values, chord_err *err,
                const char *context_fmt, ...) __attribute__((format(printf, 5, 6)));
/* Runs an already prepared statement that returns no rows again with new values (reset, bind,
 * step). Returns the sqlite result code, SQLITE_OK on success. */
int storage_rerun(sqlite3_stmt *stmt, storage_values values);
/* Copies a column into a malloc'd string (NULL stays NULL). -1 on out-of-memory. */
int storage_col_text(sqlite3_stmt *stmt, int col, char **out);
/* Copies a column into a fixed buffer (truncating; NULL becomes ""). */
void storage_col_copy(sqlite3_stmt *stmt, int col, char *buf, size_t size);
/* The absolute path of a column holding a path relative to the data directory (malloc'd;
 * NULL on out-of-memory). */
char *storage_col_path(store *s, sqlite3_stmt *stmt, int col);

/* Reads one row into an item. -1 (with err) on failure, e.g. out of memory. */
typedef int (*storage_row_reader)(store *s, sqlite3_stmt *stmt, void *item, chord_err *err);
/* Steps `stmt` to the end, reading each row into a growing array of item_size-byte items
 * (zeroed before reading); on failure frees what was read with free_item and returns -1.
 * Finalizes stmt in every case. */
int storage_collect(store *s, sqlite3_stmt *stmt, size_t item_size, storage_row_reader read,
                    void (*free_item)(void *item), void **items, size_t *n, const char *what,
                    chord_err *err);
/* Frees n items read by storage_collect, then the array. */
void storage_free_items(void *items, size_t n, size_t item_size, void (*free_item)(void *item));
/* Runs `sql` with `key` bound to ?1 and reads its first row into item: 0, or -1 with
 * CHORD_E_NOT_FOUND "<what> <key> not found" when there is none. */
int storage_get_one(store *s, const char *sql, const char *key, storage_row_reader read, void *item,
                    const char *what, chord_err *err);
/* LIMIT value for a page: 0 ("no limit") becomes -1. */
int64_t storage_limit(size_t limit);
/* OFFSET value for a page (clamped to INT64_MAX). */
int64_t storage_offset(size_t offset);

/* A fresh random id "<prefix>_<24 hex digits>". -1 if the OS random source fails. */
int storage_new_id(const char *prefix, char out[STORE_ID_MAX], chord_err *err);
/* Checks an id is "<prefix>_" + [0-9a-z] (safe as a path component). -1 CHORD_E_INVALID.
 * A well-formed id that was never issued is the caller's CHORD_E_NOT_FOUND. */
int storage_check_id(const char *id, const char *prefix, const char *what, chord_err *err);

/* ---- store_records.c ----------------------------------------------------------------------- */

/* Inside the caller's write transaction: the model `id` over checkpoint_id (which must exist:
 * CHORD_E_NOT_FOUND), pinning it. The one insert of a model from a checkpoint
 * (store_model_insert_checkpoint, store_promote). */
int storage_insert_checkpoint_model_locked(store *s, const char *id, const char *name,
                                           const char *checkpoint_id, const char *config_json,
                                           chord_err *err);
/* Inside the caller's write transaction: a queued job `id` with its pipeline fields. */
int storage_insert_job_locked(store *s, const char *id, const char *name, const char *config_json,
                              const char *base_checkpoint_id, const store_job_extra *extra,
                              chord_err *err);

/* A job's state inside the caller's transaction; CHORD_E_NOT_FOUND for an unknown id. */
int storage_job_state_locked(store *s, const char *id, store_job_state *state, chord_err *err);

/* A list read in one snapshot. */
typedef struct storage_list {
    const char *what;      /* names the list in errors, e.g. "listing jobs" */
    const char *job_id;    /* when set, the job must exist (else CHORD_E_NOT_FOUND) */
    const char *count_sql; /* when set, SELECT count(*) …: *total receives it */
    const char *cursor_sql; /* when set, SELECT 1 … with the values: no row = "after" unknown */
    const char *cursor;     /* the cursor, for that error */
    const char *rows_sql;
    storage_values values; /* ?1.. of both statements */
    size_t item_size;
    storage_row_reader read;
    void (*free_item)(void *item);
} storage_list;

/* Reads list->rows_sql into a malloc'd array of items (*items NULL when none); total may be
 * NULL. */
int storage_read_list(store *s, const storage_list *list, void **items, size_t *n, int64_t *total,
                      chord_err *err);

/* ---- store_files.c ------------------------------------------------------------------------- */

/* In-flight registry (process-wide, thread-safe): final paths being written right now. */
void storage_inflight_lock(void);
void storage_inflight_unlock(void);
/* Returns -1 (CHORD_E_CONFLICT) if the path is already in flight. */
int storage_inflight_add(const char *path, chord_err *err);
void storage_inflight_remove(const char *path);
/* Caller holds the lock. */
int storage_inflight_has_locked(const char *path);

/* Removes leftovers of interrupted writes (.tmp files and directories, files with no row),
 * skipping paths in flight. Run by store_open when a data directory is first opened. */
int storage_collect_garbage(store *s, chord_err *err);

/* ---- store_open.c -------------------------------------------------------------------------- */

/* Test hook: open migrating only up to `version` (1 ≤ version ≤ STORE_SCHEMA_VERSION). */
int store_open_at_version(const char *data_dir, int version, store **out, chord_err *err);

#endif
