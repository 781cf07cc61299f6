/* store.c — the bottom of storage/: one SQLite connection to <data_dir>/chord.db (PRAGMAs,
 * forward migrations), the SQLite helpers every storage file uses, the row collector, ids and
 * time. It calls no other storage file; every other one calls it. It knows the schema (the
 * migrations) but runs no table's queries (store_records.c, store_metrics.c, store_files.c),
 * and it never touches the files beside the database: recovering them when a data directory is
 * opened is store_open.c's (see store_internal.h for the whole map). */
#include "storage/store_internal.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"

/* ---- migrations ---------------------------------------------------------------------------
 * migrations[v] takes the schema from user_version v to v + 1. Append only: never edit a
 * migration that shipped. Each runs in one BEGIN IMMEDIATE together with the version bump.
 * Tables listed newest-first by the API carry `seq INTEGER PRIMARY KEY` (a rowid alias that
 * VACUUM keeps), so creation order survives equal timestamps. */
static const char *const migrations[STORE_SCHEMA_VERSION] = {
    /* 0 → 1: datasets, models, jobs, metrics, checkpoints. */
    "CREATE TABLE datasets ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK (kind IN ('prompts', 'expert', 'eval')),"
    "  path TEXT NOT NULL," /* relative to the data directory */
    "  line_count INTEGER NOT NULL CHECK (line_count >= 0),"
    "  bytes INTEGER NOT NULL CHECK (bytes >= 0),"
    "  sha256 TEXT NOT NULL CHECK (length(sha256) = 64),"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE models ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  directory TEXT,"
    "  config_json TEXT NOT NULL,"
    "  tokenizer_dir TEXT,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE jobs ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  config_json TEXT NOT NULL,"
    "  state TEXT NOT NULL"
    "    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),"
    "  cancel_requested INTEGER NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),"
    "  created_ms INTEGER NOT NULL,"
    "  started_ms INTEGER,"
    "  finished_ms INTEGER,"
    "  error TEXT,"
    "  current_step INTEGER NOT NULL DEFAULT -1,"
    "  device TEXT);"
    "CREATE INDEX jobs_by_state ON jobs (state, seq);"
    "CREATE TABLE metrics ("
    "  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL CHECK (step >= 0),"
    "  name TEXT NOT NULL,"
    "  value REAL,"
    "  PRIMARY KEY (job_id, step, name)) WITHOUT ROWID;"
    "CREATE TABLE checkpoints ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL CHECK (step >= 0),"
    "  path TEXT NOT NULL," /* relative to the data directory */
    "  sha256 TEXT NOT NULL CHECK (length(sha256) = 64),"
    "  bytes INTEGER NOT NULL CHECK (bytes >= 0),"
    "  created_ms INTEGER NOT NULL,"
    "  UNIQUE (job_id, step));",
    /* 1 → 2: per-sample rollout records, rollout requests. */
    "CREATE TABLE samples ("
    "  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,"
    "  step INTEGER NOT NULL CHECK (step >= 0),"
    "  idx INTEGER NOT NULL CHECK (idx >= 0),"
    "  kind TEXT,"
    "  prompt TEXT,"
    "  completion TEXT,"
    "  reward REAL,"
    "  reason TEXT,"
    "  answer TEXT,"
    "  PRIMARY KEY (job_id, step, idx)) WITHOUT ROWID;"
    "CREATE TABLE rollouts ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),"
    "  request_json TEXT NOT NULL,"
    "  result_json TEXT,"
    "  error TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  finished_ms INTEGER);",
    /* 2 → 3: the Tinker API's sessions, models and futures (store_tinker.h). */
    "CREATE TABLE tinker_sessions ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  sdk_version TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  finished_ms INTEGER,"
    "  finish_reason TEXT);"
    "CREATE TABLE tinker_models ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  session_id TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK (kind IN ('training', 'sampler')),"
    "  base_model TEXT NOT NULL,"
    "  lora_rank INTEGER NOT NULL DEFAULT 0,"
    "  created_ms INTEGER NOT NULL,"
    "  ended_ms INTEGER);"
    "CREATE INDEX tinker_models_by_session ON tinker_models (session_id, seq);"
    "CREATE TABLE tinker_futures ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  model_id TEXT,"
    "  op TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),"
    "  error TEXT,"
    "  created_ms INTEGER NOT NULL,"
    "  finished_ms INTEGER);",
    /* 3 → 4: pipelines (docs/pipelines.md): models registered from a checkpoint and jobs started
     * from one pin it (keep-last-K spares it); idempotency keys of the POSTs that create. */
    "ALTER TABLE models ADD COLUMN checkpoint_id TEXT;"
    "ALTER TABLE jobs ADD COLUMN base_checkpoint_id TEXT;"
    "CREATE INDEX models_by_checkpoint ON models (checkpoint_id) WHERE checkpoint_id IS NOT NULL;"
    "CREATE INDEX jobs_by_base_checkpoint ON jobs (base_checkpoint_id)"
    "  WHERE base_checkpoint_id IS NOT NULL;"
    "CREATE INDEX datasets_by_name ON datasets (name, seq);"
    "CREATE TABLE idempotency_keys ("
    "  key TEXT PRIMARY KEY,"
    "  operation TEXT NOT NULL,"
    "  fingerprint TEXT NOT NULL CHECK (length(fingerprint) = 64),"
    "  resource_id TEXT NOT NULL,"
    "  response_json TEXT NOT NULL,"
    "  created_ms INTEGER NOT NULL);"
    "CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_ms);",
    /* 4 → 5: webhook deliveries (store_webhooks.c), one per (event, subject), and settings. */
    "CREATE TABLE webhook_deliveries ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  event TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  payload TEXT NOT NULL,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  last_status INTEGER,"
    "  last_error TEXT,"
    "  next_attempt_ms INTEGER NOT NULL,"
    "  created_ms INTEGER NOT NULL,"
    "  finished_ms INTEGER,"
    "  UNIQUE (event, subject));"
    "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_ms);"
    "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
    /* 5 → 6: model aliases and their moves (alias.moved events), and a job's pipeline fields
     * (store_pipeline.c): the alias its model was named by, its promotion request and outcome. */
    "CREATE TABLE aliases ("
    "  name TEXT PRIMARY KEY,"
    "  model_id TEXT NOT NULL REFERENCES models (id),"
    "  created_ms INTEGER NOT NULL,"
    "  updated_ms INTEGER NOT NULL);"
    "CREATE TABLE alias_moves ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  alias TEXT NOT NULL,"
    "  from_model_id TEXT," /* NULL: the alias was new */
    "  to_model_id TEXT,"   /* NULL: the alias was deleted */
    "  job_id TEXT,"        /* the job whose promotion moved it; NULL: a PUT or DELETE */
    "  moved_ms INTEGER NOT NULL);"
    "CREATE TABLE job_pipeline ("
    "  job_id TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,"
    "  model_alias TEXT,"
    "  alias_model_id TEXT,"
    "  promote_alias TEXT,"
    "  min_eval_accuracy REAL,"
    "  promotion_state TEXT"
    "    CHECK (promotion_state IS NULL OR promotion_state IN ('pending', 'promoted', "
    "'not_promoted')),"
    "  promotion_reason TEXT,"
    "  eval_accuracy REAL,"
    "  eval_step INTEGER,"
    "  promoted_model_id TEXT,"
    "  decided_ms INTEGER);"
    "CREATE INDEX job_pipeline_pending ON job_pipeline (promotion_state)"
    "  WHERE promotion_state = 'pending';",
    /* 6 → 7: schedules and their fires, one per (schedule, fire time) (store_pipeline.c). */
    "CREATE TABLE schedules ("
    "  seq INTEGER PRIMARY KEY,"
    "  id TEXT NOT NULL UNIQUE,"
    "  name TEXT NOT NULL,"
    "  cron TEXT NOT NULL,"
    "  template_json TEXT NOT NULL,"
    "  missed TEXT NOT NULL CHECK (missed IN ('skip', 'run_once')),"
    "  paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),"
    "  next_fire_ms INTEGER NOT NULL," /* the first fire time not handled yet */
    "  created_ms INTEGER NOT NULL);"
    "CREATE TABLE schedule_fires ("
    "  seq INTEGER PRIMARY KEY,"
    "  schedule_id TEXT NOT NULL,"
    "  fire_ms INTEGER NOT NULL,"
    "  job_id TEXT," /* NULL: no job (error says why) */
    "  error TEXT,"
    "  missed INTEGER NOT NULL DEFAULT 0," /* fire times missed while chordd was down */
    "  created_ms INTEGER NOT NULL,"
    "  UNIQUE (schedule_id, fire_ms));",
    /* 7 → 8: pausing a job (store_job_set_paused): a queued job with paused = 1 is not claimed;
     * a running one stops after its step with a checkpoint and goes back to the queue so. */
    "ALTER TABLE jobs ADD COLUMN paused INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1));",
};

/* ---- SQLite helpers ----------------------------------------------------------------------- */

int storage_vsqlerr(store *s, chord_err *err, int rc, const char *fmt, va_list ap) {
    if (!err) return -1;
    char context[512];
    vsnprintf(context, sizeof context, fmt, ap);
    int primary = rc & 0xff;
    int code = CHORD_E_IO;
    if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED) code = CHORD_E_UNAVAILABLE;
    if (primary == SQLITE_CONSTRAINT) code = CHORD_E_CONFLICT;
    if (primary == SQLITE_FULL) code = CHORD_E_NO_SPACE;
    const char *msg = s && s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc);
    /* the OS's reason where SQLite's own hides it ("disk I/O error": the disk is full?) */
    int sys = 0;
    if (s && s->db &&
        (primary == SQLITE_IOERR || primary == SQLITE_CANTOPEN || primary == SQLITE_FULL ||
         primary == SQLITE_READONLY))
        sys = sqlite3_system_errno(s->db);
    if (sys)
        return chord_err_setc(err, code, "%s: %s: %s (%s, %d)", context, msg, strerror(sys),
                              sqlite3_errstr(rc), rc);
    return chord_err_setc(err, code, "%s: %s (%s, %d)", context, msg, sqlite3_errstr(rc), rc);
}

int storage_sqlerr(store *s, chord_err *err, int rc, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    storage_vsqlerr(s, err, rc, fmt, ap);
    va_end(ap);
    return -1;
}

int storage_exec(store *s, const char *sql, chord_err *err) {
    char *msg = NULL;
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
    if (rc != SQLITE_OK) {
        int primary = rc & 0xff;
        chord_err_setc(err,
                       primary == SQLITE_BUSY   ? CHORD_E_UNAVAILABLE
                       : primary == SQLITE_FULL ? CHORD_E_NO_SPACE
                                                : CHORD_E_IO,
                       "sqlite: %.80s…: %s (%s)", sql, msg ? msg : sqlite3_errmsg(s->db),
                       sqlite3_errstr(rc));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

int storage_prepare(store *s, const char *sql, sqlite3_stmt **stmt, chord_err *err) {
    int rc = sqlite3_prepare_v2(s->db, sql, -1, stmt, NULL);
    if (rc != SQLITE_OK) {
        *stmt = NULL;
        return storage_sqlerr(s, err, rc, "prepare \"%.60s\"", sql);
    }
    return 0;
}

/* BEGIN, BEGIN IMMEDIATE, COMMIT: the error names the statement. */
static int transaction_control(store *s, const char *sql, chord_err *err) {
    int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc != SQLITE_OK) return storage_sqlerr(s, err, rc, "%s", sql);
    return 0;
}

int storage_begin_write(store *s, chord_err *err) {
    return transaction_control(s, "BEGIN IMMEDIATE", err);
}

int storage_begin_read(store *s, chord_err *err) {
    return transaction_control(s, "BEGIN", err);
}

int storage_commit(store *s, chord_err *err) {
    if (transaction_control(s, "COMMIT", err) == 0) return 0;
    storage_rollback(s);
    return -1;
}

void storage_rollback(store *s) {
    if (sqlite3_get_autocommit(s->db)) return; /* no transaction open */
    int rc = sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
    if (rc != SQLITE_OK) LOG_ERROR("store: ROLLBACK failed: %s", sqlite3_errmsg(s->db));
}

int storage_bind_text(sqlite3_stmt *stmt, int idx, const char *text) {
    if (!text) return sqlite3_bind_null(stmt, idx);
    return sqlite3_bind_text(stmt, idx, text, -1, SQLITE_TRANSIENT);
}

int storage_bind(sqlite3_stmt *stmt, storage_values values) {
    int params = sqlite3_bind_parameter_count(stmt);
    int rc = SQLITE_OK;
    for (int i = 0; rc == SQLITE_OK && i < params && (size_t)i < values.n; i++) {
        const storage_value *v = &values.at[i];
        switch (v->type) {
        case STORAGE_VALUE_TEXT:
            rc = storage_bind_text(stmt, i + 1, v->text);
            break;
        case STORAGE_VALUE_INT:
            rc = sqlite3_bind_int64(stmt, i + 1, v->integer);
            break;
        case STORAGE_VALUE_REAL:
            rc = isnan(v->real) ? sqlite3_bind_null(stmt, i + 1)
                                : sqlite3_bind_double(stmt, i + 1, v->real);
            break;
        }
    }
    return rc;
}

int storage_prepare_bound(store *s, const char *sql, storage_values values, sqlite3_stmt **stmt,
                          chord_err *err) {
    if (storage_prepare(s, sql, stmt, err)) return -1;
    int rc = storage_bind(*stmt, values);
    if (rc != SQLITE_OK) {
        sqlite3_finalize(*stmt);
        *stmt = NULL;
        return storage_sqlerr(s, err, rc, "binding \"%.60s\"", sql);
    }
    return 0;
}

int storage_run(store *s, const char *sql, storage_values values, chord_err *err,
                const char *context_fmt, ...) {
    sqlite3_stmt *st;
    if (storage_prepare(s, sql, &st, err)) return -1;
    int rc = storage_bind(st, values);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc == SQLITE_DONE) return 0;
    va_list ap;
    va_start(ap, context_fmt);
    storage_vsqlerr(s, err, rc, context_fmt, ap);
    va_end(ap);
    return -1;
}

int storage_rerun(sqlite3_stmt *stmt, storage_values values) {
    int rc = sqlite3_reset(stmt);
    if (rc == SQLITE_OK) rc = storage_bind(stmt, values);
    if (rc == SQLITE_OK) rc = sqlite3_step(stmt);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

int storage_col_text(sqlite3_stmt *stmt, int col, char **out) {
    *out = NULL;
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL) return 0;
    const unsigned char *t = sqlite3_column_text(stmt, col);
    int len = sqlite3_column_bytes(stmt, col);
    if (!t) return -1; /* out of memory while converting */
    char *copy = malloc((size_t)len + 1);
    if (!copy) return -1;
    memcpy(copy, t, (size_t)len);
    copy[len] = '\0';
    *out = copy;
    return 0;
}

void storage_col_copy(sqlite3_stmt *stmt, int col, char *buf, size_t size) {
    const unsigned char *t = sqlite3_column_text(stmt, col);
    snprintf(buf, size, "%s", t ? (const char *)t : "");
}

char *storage_col_path(store *s, sqlite3_stmt *stmt, int col) {
    const char *rel = (const char *)sqlite3_column_text(stmt, col);
    size_t len = strlen(s->dir) + (rel ? strlen(rel) : 0) + 2;
    char *path = malloc(len);
    if (path) snprintf(path, len, "%s/%s", s->dir, rel ? rel : "");
    return path;
}

void storage_free_items(void *items, size_t n, size_t item_size, void (*free_item)(void *item)) {
    for (size_t i = 0; i < n; i++)
        free_item((char *)items + i * item_size);
    free(items);
}

int storage_collect(store *s, sqlite3_stmt *stmt, size_t item_size, storage_row_reader read,
                    void (*free_item)(void *item), void **items, size_t *n, const char *what,
                    chord_err *err) {
    *items = NULL;
    *n = 0;
    char *arr = NULL;
    size_t count = 0, cap = 0;
    int rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        char *grown = chord_array_grow(arr, &cap, count + 1, item_size);
        if (!grown) {
            chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", what);
            goto fail;
        }
        arr = grown;
        void *item = arr + count * item_size;
        memset(item, 0, item_size);
        if (read(s, stmt, item, err)) {
            free_item(item);
            chord_err_prefix(err, "%s", what);
            goto fail;
        }
        count++;
    }
    if (rc != SQLITE_DONE) {
        storage_sqlerr(s, err, rc, "%s", what);
        goto fail;
    }
    sqlite3_finalize(stmt);
    *items = arr;
    *n = count;
    return 0;
fail:
    storage_free_items(arr, count, item_size, free_item);
    sqlite3_finalize(stmt);
    return -1;
}

int storage_get_one(store *s, const char *sql, const char *key, storage_row_reader read, void *item,
                    const char *what, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare(s, sql, &st, err)) return -1;
    int rc = storage_bind_text(st, 1, key);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    int ret = 0;
    if (rc == SQLITE_ROW) {
        if (read(s, st, item, err)) ret = chord_err_prefix(err, "%s %s", what, key);
    } else if (rc == SQLITE_DONE) {
        ret = chord_err_setc(err, CHORD_E_NOT_FOUND, "%s %s not found", what, key);
    } else {
        ret = storage_sqlerr(s, err, rc, "reading %s %s", what, key);
    }
    sqlite3_finalize(st);
    return ret;
}

int64_t storage_limit(size_t limit) {
    return limit == 0 || limit > INT64_MAX ? -1 : (int64_t)limit;
}

int64_t storage_offset(size_t offset) {
    return offset > INT64_MAX ? INT64_MAX : (int64_t)offset;
}

/* ---- ids and time ------------------------------------------------------------------------- */

int storage_new_id(const char *prefix, char out[STORE_ID_MAX], chord_err *err) {
    unsigned char r[12];
    size_t got = 0;
    while (got < sizeof r) {
        ssize_t n = getrandom(r + got, sizeof r - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return chord_err_setc(err, CHORD_E_INTERNAL, "getrandom: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    static const char hex[] = "0123456789abcdef";
    int k = snprintf(out, STORE_ID_MAX, "%s_", prefix);
    for (size_t i = 0; i < sizeof r && k + 2 < STORE_ID_MAX; i++) {
        out[k++] = hex[r[i] >> 4];
        out[k++] = hex[r[i] & 15];
    }
    out[k] = '\0';
    return 0;
}

int storage_check_id(const char *id, const char *prefix, const char *what, chord_err *err) {
    if (!id || !*id) return chord_err_setc(err, CHORD_E_INVALID, "%s: empty id", what);
    size_t plen = strlen(prefix), len = strlen(id);
    if (len >= STORE_ID_MAX || len <= plen + 1 || strncmp(id, prefix, plen) != 0 || id[plen] != '_')
        return chord_err_setc(err, CHORD_E_INVALID, "%s: malformed id \"%.60s\" (want %s_…)", what,
                              id, prefix);
    for (size_t i = plen + 1; i < len; i++) {
        char c = id[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z')))
            return chord_err_setc(err, CHORD_E_INVALID, "%s: malformed id \"%.60s\"", what, id);
    }
    return 0;
}

int64_t store_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void store_time_rfc3339(int64_t ms, char out[32]) {
    if (ms < 0) ms = 0;
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[24];
    strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, 32, "%s.%03dZ", base, (int)(ms % 1000));
}

/* ---- the connection ----------------------------------------------------------------------- */

static int read_user_version(store *s, int *version, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare(s, "PRAGMA user_version", &st, err)) return -1;
    int rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        storage_sqlerr(s, err, rc, "PRAGMA user_version");
        sqlite3_finalize(st);
        return -1;
    }
    *version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return 0;
}

int store_schema_version(store *s, int *version, chord_err *err) {
    return read_user_version(s, version, err);
}

/* Sets WAL; the mode change needs a brief exclusive lock, which a concurrent open may hold. */
static int set_wal(store *s, chord_err *err) {
    for (int attempt = 0;; attempt++) {
        sqlite3_stmt *st;
        if (storage_prepare(s, "PRAGMA journal_mode=WAL", &st, err)) return -1;
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const unsigned char *mode = sqlite3_column_text(st, 0);
            int ok = mode && strcmp((const char *)mode, "wal") == 0;
            sqlite3_finalize(st);
            if (!ok) return chord_err_setc(err, CHORD_E_IO, "journal_mode=WAL refused");
            return 0;
        }
        sqlite3_finalize(st);
        if ((rc & 0xff) != SQLITE_BUSY || attempt >= 50)
            return storage_sqlerr(s, err, rc, "PRAGMA journal_mode=WAL");
        sqlite3_sleep(20);
    }
}

static int migrate(store *s, int target, chord_err *err) {
    for (;;) {
        int version;
        if (read_user_version(s, &version, err)) return -1;
        if (version > STORE_SCHEMA_VERSION)
            return chord_err_setc(err, CHORD_E_CONFLICT,
                                  "schema version %d is newer than this chord's %d", version,
                                  STORE_SCHEMA_VERSION);
        if (version >= target) return 0;
        if (storage_begin_write(s, err)) return -1;
        /* Another connection may have migrated while we waited for the lock. */
        if (read_user_version(s, &version, err)) goto fail;
        if (version < target) {
            if (storage_exec(s, migrations[version], err)) {
                chord_err_prefix(err, "migration %d → %d", version, version + 1);
                goto fail;
            }
            char bump[64];
            snprintf(bump, sizeof bump, "PRAGMA user_version = %d", version + 1);
            if (storage_exec(s, bump, err)) goto fail;
            LOG_INFO("store: schema migrated %d → %d", version, version + 1);
        }
        if (storage_commit(s, err)) return -1;
    }
fail:
    storage_rollback(s);
    return -1;
}

int storage_connect(const char *data_dir, int version, store **out, chord_err *err) {
    *out = NULL;
    if (!data_dir || !*data_dir)
        return chord_err_setc(err, CHORD_E_INVALID, "store: empty data directory");
    if (version < 1 || version > STORE_SCHEMA_VERSION)
        return chord_err_setc(err, CHORD_E_INVALID, "store: no schema version %d", version);
    if (chord_mkdirs(data_dir, err)) return chord_err_prefix(err, "store: data directory");
    store *s = calloc(1, sizeof *s);
    if (!s) return chord_err_setc(err, CHORD_E_INTERNAL, "store: out of memory");
    if (!realpath(data_dir, s->dir)) {
        chord_err_setc(err, CHORD_E_IO, "store: %s: %s", data_dir, strerror(errno));
        free(s);
        return -1;
    }
    /* a read-only directory (a read-only mount: root ignores modes) would open, then fail on
     * the first write with a vague "unable to open database file": say so up front */
    if (access(s->dir, W_OK) != 0) {
        chord_err_setc(err, CHORD_E_IO, "store: data directory %s is not writable: %s", s->dir,
                       strerror(errno));
        free(s);
        return -1;
    }
    char db_path[STORE_PATH_MAX + 16];
    snprintf(db_path, sizeof db_path, "%s/chord.db", s->dir);
    int rc = sqlite3_open_v2(
        db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        storage_sqlerr(s, err, rc, "store: open %s", db_path);
        goto fail;
    }
    sqlite3_extended_result_codes(s->db, 1);
    rc = sqlite3_busy_timeout(s->db, STORE_BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        storage_sqlerr(s, err, rc, "store: busy_timeout");
        goto fail;
    }
    if (set_wal(s, err) || storage_exec(s, "PRAGMA synchronous = FULL", err) ||
        storage_exec(s, "PRAGMA foreign_keys = ON", err)) {
        chord_err_prefix(err, "store: %s", db_path);
        goto fail;
    }
    if (migrate(s, version, err)) {
        chord_err_prefix(err, "store: %s", db_path);
        goto fail;
    }
    *out = s;
    return 0;
fail:
    storage_disconnect(s);
    return -1;
}

void storage_disconnect(store *s) {
    if (!s) return;
    if (s->db) {
        storage_rollback(s);
        int rc = sqlite3_close(s->db);
        if (rc != SQLITE_OK) {
            /* A statement left unfinalized is a bug; close_v2 still releases it later. */
            LOG_ERROR("store: close: %s", sqlite3_errmsg(s->db));
            sqlite3_close_v2(s->db);
        }
    }
    free(s);
}

const char *store_data_dir(const store *s) {
    return s->dir;
}
