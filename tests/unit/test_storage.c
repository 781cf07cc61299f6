/* test_storage.c — the SQLite side of storage/: schema and migrations, every CRUD call, the job
 * state machine, metrics written exactly once across a simulated resume, samples, rollouts and
 * paging. Outcomes are read back with raw SQL, sha256sum(1) and the SQLite PRAGMAs themselves,
 * not only through the API under test. File stores: test_storage_files.c; threads and
 * crashes: test_storage_concurrency.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "test_storage_util.h"

/* ---- schema ------------------------------------------------------------------------------- */

static void test_open_creates_schema(void **state) {
    (void)state;
    char dir[256], sub[300];
    scratch_make(dir);
    snprintf(sub, sizeof sub, "%s/nested/data", dir); /* open creates missing parents */
    store *s = open_ok(sub);
    int version = 0;
    chord_err err = {0};
    assert_int_equal(store_schema_version(s, &version, &err), 0);
    assert_int_equal(version, STORE_SCHEMA_VERSION);
    store_close(s);

    sqlite3 *db = raw_open(sub);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    char mode[32];
    raw_text(db, "PRAGMA journal_mode", mode, sizeof mode);
    assert_string_equal(mode, "wal");
    const char *tables[] = {"datasets",    "models",  "jobs",    "metrics",
                            "checkpoints", "samples", "rollouts"};
    for (size_t i = 0; i < sizeof tables / sizeof *tables; i++) {
        char sql[200];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '%s'",
                 tables[i]);
        assert_int_equal(raw_int(db, sql), 1);
    }
    /* The uniqueness that makes metrics exactly-once is in the schema itself. */
    assert_int_equal(raw_int(db, "SELECT count(*) FROM pragma_index_list('metrics') "
                                 "WHERE origin = 'pk' AND \"unique\" = 1"),
                     1);
    sqlite3_close(db);

    /* Re-open: idempotent, nothing re-created, data kept. */
    s = open_ok(sub);
    assert_int_equal(store_job_create(s, "keep me", "{}", NULL, &err), 0);
    store_close(s);
    s = open_ok(sub);
    store_close(s);
    db = raw_open(sub);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM jobs WHERE name = 'keep me'"), 1);
    sqlite3_close(db);
    scratch_remove(dir);
}

static void test_connection_pragmas(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    sqlite3 *db = s->db; /* the handle's own connection: per-connection settings */
    assert_int_equal(raw_int(db, "PRAGMA synchronous"), 2); /* FULL */
    assert_int_equal(raw_int(db, "PRAGMA foreign_keys"), 1);
    assert_int_equal(raw_int(db, "PRAGMA busy_timeout"), STORE_BUSY_TIMEOUT_MS);
    store_close(s);
    scratch_remove(dir);
}

static void test_forward_migration(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    chord_err err = {0};
    store *s = NULL;
    assert_int_equal(store_open_at_version(dir, 1, &s, &err), 0);
    assert_int_equal(store_job_create(s, "old job", "{\"a\": 1}", NULL, &err), 0);
    store_close(s);
    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), 1);
    assert_int_equal(
        raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('samples', 'rollouts')"), 0);
    sqlite3_close(db);

    s = open_ok(dir); /* migrates 1 → 2 → 3, keeps the row */
    store_job *jobs = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_job_list(s, -1, 0, 0, NULL, &jobs, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(jobs[0].name, "old job");
    assert_string_equal(jobs[0].config_json, "{\"a\": 1}");
    store_job_list_free(jobs, n);
    store_close(s);
    db = raw_open(dir);
    assert_int_equal(raw_int(db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
    assert_int_equal(
        raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN ('samples', 'rollouts')"), 2);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM sqlite_master WHERE name IN "
                                 "('tinker_sessions', 'tinker_models', 'tinker_futures')"),
                     3);
    sqlite3_close(db);
    scratch_remove(dir);
}

static void test_newer_schema_refused(void **state) {
    (void)state;
    char dir[256], path[300];
    scratch_make(dir);
    store_close(open_ok(dir));
    snprintf(path, sizeof path, "%s/chord.db", dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA user_version = 99", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    store *s = NULL;
    chord_err err = {0};
    assert_int_equal(store_open(dir, &s, &err), -1);
    assert_null(s);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    assert_non_null(strstr(err.msg, "99"));
    scratch_remove(dir);
}

static void test_open_errors(void **state) {
    (void)state;
    store *s = NULL;
    chord_err err = {0};
    assert_int_equal(store_open("", &s, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    /* A data directory under a regular file cannot be created. */
    chord_err_clear(&err);
    assert_int_equal(store_open("/etc/hostname/chord", &s, &err), -1);
    assert_null(s);
    assert_int_equal(err.code, CHORD_E_IO);
    assert_non_null(strstr(err.msg, "/etc/hostname"));
}

/* ---- models ------------------------------------------------------------------------------- */

static void test_models(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_model m;
    assert_int_equal(store_model_insert(s, "tiny", NULL, "{\"hidden\": 64}", NULL, &m, &err), 0);
    assert_memory_equal(m.id, "mdl_", 4);
    assert_string_equal(m.name, "tiny");
    assert_null(m.directory);
    assert_null(m.tokenizer_dir);
    assert_string_equal(m.config_json, "{\"hidden\": 64}");
    assert_true(m.created_ms > 1700000000000LL);
    char tiny_id[STORE_ID_MAX];
    snprintf(tiny_id, sizeof tiny_id, "%s", m.id);
    store_model_free(&m);

    assert_int_equal(
        store_model_insert(s, "qwen", "/models/qwen", "{}", "/models/qwen", NULL, &err), 0);
    store_model got;
    assert_int_equal(store_model_get(s, tiny_id, &got, &err), 0);
    assert_string_equal(got.name, "tiny");
    store_model_free(&got);

    store_model *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_model_list(s, 0, 0, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(total, 2);
    assert_string_equal(items[0].name, "qwen"); /* newest first */
    assert_string_equal(items[0].directory, "/models/qwen");
    assert_string_equal(items[1].name, "tiny");
    store_model_list_free(items, n);

    assert_int_equal(store_model_get(s, "mdl_0123456789abcdef01234567", &got, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    assert_int_equal(store_model_get(s, "../../etc/passwd", &got, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_model_insert(s, "", NULL, "{}", NULL, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_model_insert(s, "x", NULL, NULL, NULL, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    store_close(s);
    scratch_remove(dir);
}

/* ---- jobs --------------------------------------------------------------------------------- */

static void expect_transition_conflict(store *s, const char *id, store_job_state to) {
    chord_err err = {0};
    store_job out;
    assert_int_equal(store_job_transition(s, id, to, NULL, NULL, &out, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    assert_non_null(strstr(err.msg, store_job_state_name(to)));
}

static void test_job_state_machine(void **state) {
    (void)state;
    /* The table itself, every pair. */
    static const int legal[STORE_JOB_NSTATES][STORE_JOB_NSTATES] = {
        /* to:      Q  R  S  F  C */
        /* Q */ {0, 1, 0, 0, 1},
        /* R */ {1, 0, 1, 1, 1},
        /* S */ {0, 0, 0, 0, 0},
        /* F */ {0, 0, 0, 0, 0},
        /* C */ {0, 0, 0, 0, 0},
    };
    for (int a = 0; a < STORE_JOB_NSTATES; a++)
        for (int b = 0; b < STORE_JOB_NSTATES; b++)
            assert_int_equal(store_job_transition_legal(a, b), legal[a][b]);

    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_job job;
    assert_int_equal(store_job_create(s, "train", "{\"lr\": 1e-5}", &job, &err), 0);
    assert_memory_equal(job.id, "job_", 4);
    assert_int_equal(job.state, STORE_JOB_QUEUED);
    assert_int_equal(job.current_step, -1);
    assert_int_equal(job.started_ms, 0);
    assert_int_equal(job.finished_ms, 0);
    assert_null(job.device);
    assert_null(job.error);
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", job.id);
    store_job_free(&job);

    /* Illegal from queued. */
    expect_transition_conflict(s, id, STORE_JOB_SUCCEEDED);
    expect_transition_conflict(s, id, STORE_JOB_FAILED);
    expect_transition_conflict(s, id, STORE_JOB_QUEUED);

    assert_int_equal(store_job_transition(s, id, STORE_JOB_RUNNING, NULL, "cuda:0", &job, &err), 0);
    assert_int_equal(job.state, STORE_JOB_RUNNING);
    assert_string_equal(job.device, "cuda:0");
    int64_t started = job.started_ms;
    assert_true(started > 0);
    store_job_free(&job);
    expect_transition_conflict(s, id, STORE_JOB_RUNNING);

    /* Crash-resume: running → queued → running keeps the first start time. */
    assert_int_equal(store_job_transition(s, id, STORE_JOB_QUEUED, NULL, NULL, NULL, &err), 0);
    assert_int_equal(store_job_transition(s, id, STORE_JOB_RUNNING, NULL, NULL, &job, &err), 0);
    assert_int_equal(job.started_ms, started);
    assert_string_equal(job.device, "cuda:0"); /* NULL device keeps the last one */
    store_job_free(&job);

    assert_int_equal(
        store_job_transition(s, id, STORE_JOB_FAILED, "loss is NaN at step 3", NULL, &job, &err),
        0);
    assert_int_equal(job.state, STORE_JOB_FAILED);
    assert_string_equal(job.error, "loss is NaN at step 3");
    assert_true(job.finished_ms >= started);
    store_job_free(&job);
    for (int to = 0; to < STORE_JOB_NSTATES; to++)
        expect_transition_conflict(s, id, to);

    /* Raw check: the row says failed. */
    sqlite3 *db = raw_open(dir);
    char sql[200], text[64];
    snprintf(sql, sizeof sql, "SELECT state FROM jobs WHERE id = '%s'", id);
    raw_text(db, sql, text, sizeof text);
    assert_string_equal(text, "failed");
    sqlite3_close(db);

    /* Unknown and malformed ids. */
    assert_int_equal(store_job_transition(s, "job_ffffffffffffffffffffffff", STORE_JOB_RUNNING,
                                          NULL, NULL, NULL, &err),
                     -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    assert_int_equal(store_job_get(s, "ds_abc", &job, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_job_transition(s, id, (store_job_state)42, NULL, NULL, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    store_close(s);
    scratch_remove(dir);
}

static void test_job_cancel_claim_requeue(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char a[STORE_ID_MAX], b[STORE_ID_MAX], c[STORE_ID_MAX];
    store_job job;
    assert_int_equal(store_job_create(s, "a", "{}", &job, &err), 0);
    snprintf(a, sizeof a, "%s", job.id);
    store_job_free(&job);
    assert_int_equal(store_job_create(s, "b", "{}", &job, &err), 0);
    snprintf(b, sizeof b, "%s", job.id);
    store_job_free(&job);
    assert_int_equal(store_job_create(s, "c", "{}", &job, &err), 0);
    snprintf(c, sizeof c, "%s", job.id);
    store_job_free(&job);

    /* Claim takes the oldest queued job (FIFO). */
    int found = 0;
    assert_int_equal(store_job_claim_next(s, "cpu", &job, &found, &err), 0);
    assert_int_equal(found, 1);
    assert_string_equal(job.id, a);
    assert_int_equal(job.state, STORE_JOB_RUNNING);
    assert_string_equal(job.device, "cpu");
    store_job_free(&job);

    /* Cancel a queued job: cancelled at once. */
    assert_int_equal(store_job_request_cancel(s, b, &job, &err), 0);
    assert_int_equal(job.state, STORE_JOB_CANCELLED);
    assert_true(job.finished_ms > 0);
    store_job_free(&job);
    /* Cancel a running one: flagged, still running. */
    assert_int_equal(store_job_request_cancel(s, a, &job, &err), 0);
    assert_int_equal(job.state, STORE_JOB_RUNNING);
    assert_int_equal(job.cancel_requested, 1);
    store_job_free(&job);
    /* Cancelling a finished job is a conflict. */
    assert_int_equal(store_job_request_cancel(s, b, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);

    assert_int_equal(store_job_claim_next(s, "cpu", &job, &found, &err), 0);
    assert_int_equal(found, 1);
    assert_string_equal(job.id, c);
    store_job_free(&job);
    assert_int_equal(store_job_claim_next(s, "cpu", &job, &found, &err), 0);
    assert_int_equal(found, 0);

    /* The process "dies" with a (cancel-requested) and c running. */
    store_close(s);
    s = open_ok(dir);
    int64_t moved = 0;
    assert_int_equal(store_job_requeue_running(s, &moved, &err), 0);
    assert_int_equal(moved, 2);
    assert_int_equal(store_job_get(s, a, &job, &err), 0);
    assert_int_equal(job.state, STORE_JOB_CANCELLED);
    store_job_free(&job);
    assert_int_equal(store_job_get(s, c, &job, &err), 0);
    assert_int_equal(job.state, STORE_JOB_QUEUED);
    store_job_free(&job);

    int64_t counts[STORE_JOB_NSTATES];
    assert_int_equal(store_job_count_by_state(s, counts, &err), 0);
    sqlite3 *db = raw_open(dir);
    for (int st = 0; st < STORE_JOB_NSTATES; st++) {
        char sql[128];
        snprintf(sql, sizeof sql, "SELECT count(*) FROM jobs WHERE state = '%s'",
                 store_job_state_name(st));
        assert_int_equal(counts[st], raw_int(db, sql));
    }
    sqlite3_close(db);
    assert_int_equal(counts[STORE_JOB_QUEUED], 1);
    assert_int_equal(counts[STORE_JOB_CANCELLED], 2);
    assert_int_equal(counts[STORE_JOB_RUNNING], 0);
    store_close(s);
    scratch_remove(dir);
}

static void test_job_paging(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    enum { N = 25 };
    for (int i = 0; i < N; i++) {
        char name[32];
        snprintf(name, sizeof name, "job-%02d", i);
        store_job job;
        assert_int_equal(store_job_create(s, name, "{}", &job, &err), 0);
        if (i % 3 == 0)
            assert_int_equal(
                store_job_transition(s, job.id, STORE_JOB_RUNNING, NULL, "cpu", NULL, &err), 0);
        store_job_free(&job);
    }
    /* Pages of 10 over all jobs: 10, 10, 5, newest first, no overlap, no gap. */
    int seen = 0;
    for (size_t offset = 0; offset < N + 10; offset += 10) {
        store_job *items = NULL;
        size_t n = 0;
        int64_t total = 0;
        assert_int_equal(store_job_list(s, -1, offset, 10, NULL, &items, &n, &total, &err), 0);
        assert_int_equal(total, N);
        size_t want = offset >= N ? 0 : (N - offset < 10 ? N - offset : 10);
        assert_int_equal(n, want);
        for (size_t i = 0; i < n; i++) {
            char name[32];
            snprintf(name, sizeof name, "job-%02d", N - 1 - seen);
            assert_string_equal(items[i].name, name);
            seen++;
        }
        store_job_list_free(items, n);
    }
    assert_int_equal(seen, N);
    /* By state: the 9 running ones (0, 3, …, 24), paged by 4. */
    store_job *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_job_list(s, STORE_JOB_RUNNING, 4, 4, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(total, 9);
    assert_int_equal(n, 4);
    assert_string_equal(items[0].name, "job-12"); /* 24, 21, 18, 15 | 12, 9, 6, 3 | 0 */
    assert_string_equal(items[3].name, "job-03");
    for (size_t i = 0; i < n; i++)
        assert_int_equal(items[i].state, STORE_JOB_RUNNING);
    store_job_list_free(items, n);
    assert_int_equal(store_job_list(s, 7, 0, 0, NULL, &items, &n, &total, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    store_close(s);
    scratch_remove(dir);
}

/* ---- metrics and samples ------------------------------------------------------------------ */

static const char *const metric_names[] = {"loss", "mu", "reward/mean"};

static void put_step(store *s, const char *id, int64_t step, double base) {
    double values[3] = {base + (double)step, 0.5, base * 2};
    chord_err err = {0};
    if (store_put_step_metrics(s, id, step, metric_names, values, 3, &err))
        fail_msg("step %lld: %s", (long long)step, err.msg);
}

static void test_metrics_exactly_once_across_resume(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char id[STORE_ID_MAX];
    make_running_job(s, "resume", id);
    for (int64_t step = 0; step < 6; step++)
        put_step(s, id, step, 1.0);

    /* Simulated crash after step 5 with the last checkpoint at step 3: the process dies, the
     * job is requeued, resumes from step 3 and re-runs steps 4.. with different numbers. */
    store_close(s);
    s = open_ok(dir);
    assert_int_equal(store_job_requeue_running(s, NULL, &err), 0);
    assert_int_equal(store_job_transition(s, id, STORE_JOB_RUNNING, NULL, NULL, NULL, &err), 0);
    assert_int_equal(store_job_truncate_after(s, id, 3, &err), 0);
    store_job job;
    assert_int_equal(store_job_get(s, id, &job, &err), 0);
    assert_int_equal(job.current_step, 3);
    store_job_free(&job);
    for (int64_t step = 4; step < 8; step++)
        put_step(s, id, step, 100.0);
    /* And a duplicate write of step 7 (a crash between the write and the checkpoint). */
    put_step(s, id, 7, 100.0);

    sqlite3 *db = raw_open(dir);
    char sql[256];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM metrics WHERE job_id = '%s'", id);
    assert_int_equal(raw_int(db, sql), 8 * 3); /* steps 0..7, three names each */
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM (SELECT step, name FROM metrics WHERE job_id = '%s' "
             "GROUP BY step, name HAVING count(*) > 1)",
             id);
    assert_int_equal(raw_int(db, sql), 0);
    snprintf(sql, sizeof sql,
             "SELECT value FROM metrics WHERE job_id = '%s' AND step = 5 "
             "AND name = 'loss'",
             id);
    char text[64];
    raw_text(db, sql, text, sizeof text);
    assert_float_equal(atof(text), 105.0, 1e-12); /* the re-run's value replaced the old one */
    snprintf(sql, sizeof sql, "SELECT current_step FROM jobs WHERE id = '%s'", id);
    assert_int_equal(raw_int(db, sql), 7);
    sqlite3_close(db);

    /* since_step paging by whole steps. */
    store_metric_row *rows = NULL;
    size_t n = 0;
    int64_t next = 0;
    assert_int_equal(store_metrics_since(s, id, 2, 2, &rows, &n, &next, &err), 0);
    assert_int_equal(n, 6);
    assert_int_equal(next, 4);
    assert_int_equal(rows[0].step, 2);
    assert_string_equal(rows[0].name, "loss");
    assert_float_equal(rows[0].value, 3.0, 1e-12);
    assert_string_equal(rows[2].name, "reward/mean");
    assert_int_equal(rows[5].step, 3);
    store_metric_rows_free(rows, n);
    assert_int_equal(store_metrics_since(s, id, next, 0, &rows, &n, &next, &err), 0);
    assert_int_equal(n, 4 * 3);
    assert_int_equal(next, 8);
    assert_float_equal(rows[0].value, 104.0, 1e-12);
    store_metric_rows_free(rows, n);
    assert_int_equal(store_metrics_since(s, id, 8, 5, &rows, &n, &next, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(next, 8);
    store_metric_rows_free(rows, n);
    store_close(s);
    scratch_remove(dir);
}

static void test_metrics_rules(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char id[STORE_ID_MAX];
    make_running_job(s, "rules", id);

    const char *dup[] = {"loss", "loss"};
    double v2[] = {1, 2};
    assert_int_equal(store_put_step_metrics(s, id, 0, dup, v2, 2, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_put_step_metrics(s, id, -1, metric_names, v2, 1, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(
        store_put_step_metrics(s, "job_000000000000000000000000", 0, metric_names, v2, 1, &err),
        -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);

    /* NaN and infinities survive the round trip. */
    const char *names[] = {"nan", "inf", "neg"};
    double values[] = {NAN, INFINITY, -2.5};
    assert_int_equal(store_put_step_metrics(s, id, 0, names, values, 3, &err), 0);
    store_metric_row *rows = NULL;
    size_t n = 0;
    int64_t next = 0;
    assert_int_equal(store_metrics_since(s, id, 0, 0, &rows, &n, &next, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(rows[0].name, "inf");
    assert_true(isinf(rows[0].value) && rows[0].value > 0);
    assert_string_equal(rows[1].name, "nan");
    assert_true(isnan(rows[1].value));
    assert_float_equal(rows[2].value, -2.5, 0);
    store_metric_rows_free(rows, n);

    /* A finished job takes no more metrics, and the failed write leaves nothing behind. */
    assert_int_equal(store_job_transition(s, id, STORE_JOB_SUCCEEDED, NULL, NULL, NULL, &err), 0);
    assert_int_equal(store_put_step_metrics(s, id, 1, names, values, 3, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    sqlite3 *db = raw_open(dir);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM metrics WHERE job_id = '%s' AND step = 1", id);
    assert_int_equal(raw_int(db, sql), 0);
    sqlite3_close(db);
    chord_err_clear(&err);
    assert_int_equal(
        store_metrics_since(s, "job_000000000000000000000000", 0, 0, &rows, &n, &next, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    store_close(s);
    scratch_remove(dir);
}

static void test_samples(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char id[STORE_ID_MAX];
    make_running_job(s, "samples", id);
    store_sample first[3] = {
        {"rollout", "1+1?", "2", 1.0, "correct", "2"},
        {"rollout", "1+1?", "3", 0.0, "wrong answer", "2"},
        {"expert", "2+2?", "4", NAN, NULL, NULL},
    };
    double loss = 0.25;
    const char *loss_name[] = {"loss"};
    assert_int_equal(store_put_step(s, id, 0, loss_name, &loss, 1, first, 3, &err), 0);
    /* Step 0 again (resume): two samples replace the three. */
    assert_int_equal(store_put_step(s, id, 0, loss_name, &loss, 1, first, 2, &err), 0);
    assert_int_equal(store_put_step(s, id, 1, loss_name, &loss, 1, first, 3, &err), 0);
    /* Metrics only: step 1's samples are kept. */
    assert_int_equal(store_put_step_metrics(s, id, 1, loss_name, &loss, 1, &err), 0);

    store_sample_row *rows = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_samples_list(s, id, -1, 0, 0, -1, 0, &rows, &n, &total, &err), 0);
    assert_int_equal(total, 5);
    assert_int_equal(n, 5);
    assert_int_equal(rows[0].step, 0);
    assert_int_equal(rows[1].index, 1);
    assert_string_equal(rows[1].completion, "3");
    assert_string_equal(rows[1].reason, "wrong answer");
    assert_float_equal(rows[1].reward, 0.0, 0);
    assert_int_equal(rows[2].step, 1);
    assert_string_equal(rows[4].kind, "expert");
    assert_null(rows[4].reason);
    assert_true(isnan(rows[4].reward));
    store_sample_rows_free(rows, n);
    assert_int_equal(store_samples_list(s, id, 1, 1, 1, -1, 0, &rows, &n, &total, &err), 0);
    assert_int_equal(total, 3);
    assert_int_equal(n, 1);
    assert_int_equal(rows[0].index, 1);
    store_sample_rows_free(rows, n);

    sqlite3 *db = raw_open(dir);
    char sql[200];
    snprintf(sql, sizeof sql, "SELECT count(*) FROM samples WHERE job_id = '%s'", id);
    assert_int_equal(raw_int(db, sql), 5);
    sqlite3_close(db);
    assert_int_equal(store_job_truncate_after(s, id, 0, &err), 0);
    assert_int_equal(store_samples_list(s, id, -1, 0, 0, -1, 0, &rows, &n, &total, &err), 0);
    assert_int_equal(total, 2);
    store_sample_rows_free(rows, n);
    store_close(s);
    scratch_remove(dir);
}

/* ---- rollouts and time -------------------------------------------------------------------- */

static void test_rollouts(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_rollout r;
    assert_int_equal(store_rollout_create(s, "{\"n\": 4}", &r, &err), 0);
    assert_memory_equal(r.id, "roll_", 5);
    assert_int_equal(r.state, STORE_ROLLOUT_PENDING);
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", r.id);
    store_rollout_free(&r);
    assert_int_equal(store_rollout_finish(s, id, "{\"completions\": []}", NULL, &err), 0);
    assert_int_equal(store_rollout_get(s, id, &r, &err), 0);
    assert_int_equal(r.state, STORE_ROLLOUT_SUCCEEDED);
    assert_string_equal(r.result_json, "{\"completions\": []}");
    assert_string_equal(r.request_json, "{\"n\": 4}");
    assert_true(r.finished_ms >= r.created_ms);
    store_rollout_free(&r);
    assert_int_equal(store_rollout_finish(s, id, NULL, "late", &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_int_equal(store_rollout_finish(s, "roll_0000", "{}", NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);

    /* pending ids: only the pending ones, oldest first; none → NULL, 0 */
    char(*ids)[STORE_ID_MAX] = (void *)1;
    size_t n = 99;
    assert_int_equal(store_rollout_pending_ids(s, &ids, &n, &err), 0);
    assert_null(ids);
    assert_int_equal(n, 0);
    char pend[3][STORE_ID_MAX];
    for (int i = 0; i < 3; i++) {
        assert_int_equal(store_rollout_create(s, "{\"n\": 1}", &r, &err), 0);
        snprintf(pend[i], sizeof pend[i], "%s", r.id);
        store_rollout_free(&r);
    }
    assert_int_equal(store_rollout_finish(s, pend[1], NULL, "boom", &err), 0);
    /* two of them may share a created_ms: compare as a set */
    assert_int_equal(store_rollout_pending_ids(s, &ids, &n, &err), 0);
    assert_int_equal(n, 2);
    int seen0 = 0, seen2 = 0;
    for (size_t i = 0; i < n; i++) {
        seen0 += strcmp(ids[i], pend[0]) == 0;
        seen2 += strcmp(ids[i], pend[2]) == 0;
    }
    assert_int_equal(seen0, 1);
    assert_int_equal(seen2, 1);
    free(ids);
    store_close(s);
    scratch_remove(dir);
}

static void test_time_format(void **state) {
    (void)state;
    char out[32];
    store_time_rfc3339(0, out);
    assert_string_equal(out, "1970-01-01T00:00:00.000Z");
    store_time_rfc3339(1764058527123LL, out); /* date -u -d @1764058527 */
    char ref[64];
    shell_line("date -u -d @1764058527 +%Y-%m-%dT%H:%M:%S.123Z", ref, sizeof ref);
    assert_string_equal(out, ref);
    char now[64];
    shell_line("date +%s", now, sizeof now);
    assert_true(llabs(store_now_ms() / 1000 - atoll(now)) <= 2);
}

/* Idempotency keys: the first result kept, a second record of the key refused, rows older than
 * the caller's cut-off neither found nor in the way (and purged by the next put), across a
 * reopen; and 3 → 4 keeps the rows of a v3 database. */
static void test_idempotency_keys(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    chord_err err = {0};
    store *s = NULL;
    assert_int_equal(store_open_at_version(dir, 3, &s, &err), 0);
    assert_int_equal(store_model_insert(s, "v3 model", "/m", "{}", NULL, NULL, &err), 0);
    store_close(s);
    s = open_ok(dir); /* 3 → 4 */
    store_model *models = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_model_list(s, 0, 0, NULL, &models, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(models[0].directory, "/m");
    assert_string_equal(models[0].checkpoint_id, "");
    assert_int_equal(models[0].checkpoint_step, -1);
    store_model_list_free(models, n);

    const char *fp = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    store_idem r;
    int found = 1;
    assert_int_equal(store_idem_get(s, "k1", 0, &r, &found, &err), 0);
    assert_int_equal(found, 0);
    assert_int_equal(store_idem_put(s, "k1", "jobs.create", fp, "job_1", "{\"id\": 1}", 0, &err),
                     0);
    assert_int_equal(store_idem_put(s, "k1", "jobs.create", fp, "job_2", "{}", 0, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_int_equal(store_idem_put(s, "", "jobs.create", fp, "job_2", "{}", 0, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_idem_put(s, "k3", "jobs.create", "short", "job_2", "{}", 0, &err), -1);
    chord_err_clear(&err);
    store_close(s);

    s = open_ok(dir); /* kept across a restart */
    assert_int_equal(store_idem_get(s, "k1", 0, &r, &found, &err), 0);
    assert_int_equal(found, 1);
    assert_string_equal(r.operation, "jobs.create");
    assert_string_equal(r.fingerprint, fp);
    assert_string_equal(r.resource_id, "job_1");
    assert_string_equal(r.response_json, "{\"id\": 1}");
    assert_true(r.created_ms > 0);
    int64_t created = r.created_ms;
    store_idem_free(&r);
    /* past its time: absent, and the next put of any key purges it */
    assert_int_equal(store_idem_get(s, "k1", created + 1, &r, &found, &err), 0);
    assert_int_equal(found, 0);
    assert_int_equal(store_idem_put(s, "k2", "models.create", fp, "mdl_1", "{}", created + 1, &err),
                     0);
    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM idempotency_keys WHERE key = 'k1'"), 0);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM idempotency_keys WHERE key = 'k2'"), 1);
    sqlite3_close(db);
    /* an expired key may be recorded again */
    assert_int_equal(store_idem_put(s, "k1", "jobs.create", fp, "job_9", "{}", 0, &err), 0);
    store_close(s);
    scratch_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_open_creates_schema),
        cmocka_unit_test(test_connection_pragmas),
        cmocka_unit_test(test_forward_migration),
        cmocka_unit_test(test_newer_schema_refused),
        cmocka_unit_test(test_open_errors),
        cmocka_unit_test(test_models),
        cmocka_unit_test(test_job_state_machine),
        cmocka_unit_test(test_job_cancel_claim_requeue),
        cmocka_unit_test(test_job_paging),
        cmocka_unit_test(test_metrics_exactly_once_across_resume),
        cmocka_unit_test(test_metrics_rules),
        cmocka_unit_test(test_samples),
        cmocka_unit_test(test_rollouts),
        cmocka_unit_test(test_time_format),
        cmocka_unit_test(test_idempotency_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
