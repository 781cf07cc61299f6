/* store_internal.h — what the storage .c files share: the handle, SQLite helpers that turn
 * every failure into a chord_err with context, ids, and the in-flight registry that keeps the
 * garbage collector away from files another thread of this process is still writing.
 * Not for use outside storage/ (tests excepted). Internal symbols are prefixed storage_ (the
 * public API is store_; st_ belongs to safetensors). */
#ifndef CHORD_STORAGE_STORE_INTERNAL_H
#define CHORD_STORAGE_STORE_INTERNAL_H

#include <sqlite3.h>

#include "storage/store.h"

struct store {
    sqlite3 *db;
    char dir[STORE_PATH_MAX]; /* absolute data directory */
};

/* Fills err from the connection's last error: "<context>: <sqlite message> (<code name>)".
 * SQLITE_BUSY/LOCKED → CHORD_E_UNAVAILABLE, SQLITE_CONSTRAINT → CHORD_E_CONFLICT, else IO.
 * Returns -1. */
int storage_sqlerr(store *s, chord_err *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

int storage_exec(store *s, const char *sql, chord_err *err);
int storage_prepare(store *s, const char *sql, sqlite3_stmt **stmt, chord_err *err);
/* BEGIN IMMEDIATE (takes the write lock now, waiting up to the busy timeout). */
int storage_begin_write(store *s, chord_err *err);
/* BEGIN (deferred): a read snapshot for multi-statement reads. */
int storage_begin_read(store *s, chord_err *err);
int storage_commit(store *s, chord_err *err);
/* Rolls back if a transaction is open; never fails (errors are logged). */
void storage_rollback(store *s);

/* Binds text or NULL. Returns the sqlite result code. */
int storage_bind_text(sqlite3_stmt *stmt, int idx, const char *text);
/* Copies a column into a malloc'd string (NULL stays NULL). -1 on out-of-memory. */
int storage_col_text(sqlite3_stmt *stmt, int col, char **out);
/* Copies a column into a fixed buffer (truncating; NULL becomes ""). */
void storage_col_copy(sqlite3_stmt *stmt, int col, char *buf, size_t size);

/* Reads one row into an item. -1 (with err) on failure, e.g. out of memory. */
typedef int (*storage_row_reader)(store *s, sqlite3_stmt *stmt, void *item, chord_err *err);
/* Steps `stmt` to the end, reading each row into a growing array of item_size-byte items
 * (zeroed before reading); on failure frees what was read with free_item and returns -1.
 * Finalizes stmt in every case. */
int storage_collect(store *s, sqlite3_stmt *stmt, size_t item_size, storage_row_reader read,
                    void (*free_item)(void *item), void **items, size_t *n, const char *what,
                    chord_err *err);
/* Steps `stmt` (which selects by id) once: 0 and the row read into item, or -1 with
 * CHORD_E_NOT_FOUND naming `what` and `id`. Finalizes stmt. */
int storage_get_one(store *s, sqlite3_stmt *stmt, storage_row_reader read, void *item,
                    const char *what, const char *id, chord_err *err);
/* SELECT count(*) … with up to one text parameter (bound when not NULL). */
int storage_count_rows(store *s, const char *sql, const char *param, int64_t *total,
                       chord_err *err);
/* LIMIT value for a page: 0 ("no limit") becomes -1. */
int64_t storage_limit(size_t limit);

/* A fresh random id "<prefix>_<24 hex digits>". -1 if the OS random source fails. */
int storage_new_id(const char *prefix, char out[STORE_ID_MAX], chord_err *err);
/* Checks an id is "<prefix>_" + [0-9a-z] (safe as a path component). -1 CHORD_E_INVALID.
 * A well-formed id that was never issued is the caller's CHORD_E_NOT_FOUND. */
int storage_check_id(const char *id, const char *prefix, const char *what, chord_err *err);

/* In-flight registry (process-wide, thread-safe): final paths being written right now. */
void storage_inflight_lock(void);
void storage_inflight_unlock(void);
/* Returns -1 (CHORD_E_CONFLICT) if the path is already in flight. */
int storage_inflight_add(const char *path, chord_err *err);
void storage_inflight_remove(const char *path);
/* Caller holds the lock. */
int storage_inflight_has_locked(const char *path);

/* Removes leftovers of interrupted writes (see store_open). */
int storage_collect_garbage(store *s, chord_err *err);

/* A job's state inside the caller's transaction; CHORD_E_NOT_FOUND for an unknown id. */
int storage_job_state_locked(store *s, const char *id, store_job_state *state, chord_err *err);

/* Test hook: open migrating only up to `version` (1 ≤ version ≤ STORE_SCHEMA_VERSION). */
int store_open_at_version(const char *data_dir, int version, store **out, chord_err *err);

#endif
