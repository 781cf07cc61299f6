/* test_storage_util.h — helpers shared by the storage tests: a scratch data directory, raw SQL
 * reads that bypass the store API (so tests check what is really on disk), and sha256sum(1) as
 * an independent hash. Header-only; include after cmocka.h. */
#ifndef CHORD_TEST_STORAGE_UTIL_H
#define CHORD_TEST_STORAGE_UTIL_H

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/base/fileutil.h"
#include "storage/store.h"
#include "storage/store_internal.h"

/* A fresh empty directory under /tmp; the caller removes it with scratch_remove. */
static inline void scratch_make(char out[256]) {
    snprintf(out, 256, "/tmp/chord-store-test-XXXXXX");
    assert_non_null(mkdtemp(out));
}

static inline void scratch_remove(const char *dir) {
    chord_err err = {0};
    assert_int_equal(chord_rmtree(dir, &err), 0);
}

static inline store *open_ok(const char *dir) {
    store *s = NULL;
    chord_err err = {0};
    int rc = store_open(dir, &s, &err);
    if (rc != 0) fail_msg("store_open %s: %s", dir, err.msg);
    return s;
}

/* Opens <dir>/chord.db directly with SQLite, read-only. */
static inline sqlite3 *raw_open(const char *dir) {
    char path[512];
    snprintf(path, sizeof path, "%s/chord.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 10000);
    return db;
}

/* First column of the first row of sql as an int64 (-999999 when no row). */
static inline int64_t raw_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK) fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
    int64_t v = -999999;
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    else if (rc != SQLITE_DONE)
        fail_msg("step %s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return v;
}

/* First column of the first row as text into out ("" when no row or NULL). */
static inline void raw_text(sqlite3 *db, const char *sql, char *out, size_t size) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
        fail_msg("prepare %s: %s", sql, sqlite3_errmsg(db));
    out[0] = '\0';
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
        snprintf(out, size, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
}

/* Runs a shell command and returns its first output line (without newline). */
static inline void shell_line(const char *cmd, char *out, size_t size) {
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    out[0] = '\0';
    if (fgets(out, (int)size, p)) out[strcspn(out, "\n")] = '\0';
    int status = pclose(p);
    if (status != 0) fail_msg("command failed (%d): %s", status, cmd);
}

/* SHA-256 of a file per coreutils' sha256sum (independent of OpenSSL). */
static inline void sha256sum_file(const char *path, char out[65]) {
    char cmd[STORE_PATH_MAX + 64], line[256];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    shell_line(cmd, line, sizeof line);
    assert_true(strlen(line) >= 64);
    memcpy(out, line, 64);
    out[64] = '\0';
}

static inline int path_exists(const char *path) {
    struct stat st;
    return lstat(path, &st) == 0;
}

/* Number of entries (without . and ..) in a directory; -1 if it does not exist. */
static inline int dir_entries(const char *path) {
    char cmd[2 * STORE_PATH_MAX + 128], line[64];
    snprintf(cmd, sizeof cmd, "if [ -d '%s' ]; then ls -A '%s' | wc -l; else echo -1; fi", path,
             path);
    shell_line(cmd, line, sizeof line);
    return atoi(line);
}

/* A job moved to running (metrics need a running job). */
static inline void make_running_job(store *s, const char *name, char id[STORE_ID_MAX]) {
    chord_err err = {0};
    store_job job;
    if (store_job_create(s, name, "{\"steps\": 10}", &job, &err)) fail_msg("%s", err.msg);
    snprintf(id, STORE_ID_MAX, "%s", job.id);
    store_job_free(&job);
    if (store_job_transition(s, id, STORE_JOB_RUNNING, NULL, "cpu", NULL, &err))
        fail_msg("%s", err.msg);
}

#endif
