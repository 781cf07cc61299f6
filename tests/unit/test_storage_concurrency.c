/* test_storage_concurrency.c — storage/ under contention and crashes: threads with their own
 * handles writing at once (no SQLITE_BUSY reaches the caller, nothing lost), racing first opens
 * of a fresh directory (one migration wins, nobody fails), racing opens of a directory to
 * recover (no handle before the recovery is done), and a writer process SIGKILLed at
 * arbitrary instructions (the reopened store passes integrity_check and every step it recorded
 * is complete, exactly once). */
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_storage_util.h"

enum { N_THREADS = 4, N_STEPS = 60, N_METRICS = 4, N_SAMPLES = 3 };
static const char *const names[N_METRICS] = {"loss", "loss/sft", "loss/grpo", "mu"};

typedef struct {
    const char *dir;
    int index;
    char job[STORE_ID_MAX];
    int failures;
    char first_error[CHORD_ERR_MSG];
} worker;

static void record_failure(worker *w, const chord_err *err) {
    if (w->failures++ == 0) snprintf(w->first_error, sizeof w->first_error, "%s", err->msg);
}

/* One training-like job from start to end on its own connection. */
static void *writer_thread(void *arg) {
    worker *w = arg;
    store *s = NULL;
    chord_err err = {0};
    if (store_open(w->dir, &s, &err)) {
        record_failure(w, &err);
        return NULL;
    }
    char name[32];
    snprintf(name, sizeof name, "worker-%d", w->index);
    store_job job;
    if (store_job_create(s, name, "{}", &job, &err)) {
        record_failure(w, &err);
        store_close(s);
        return NULL;
    }
    snprintf(w->job, sizeof w->job, "%s", job.id);
    store_job_free(&job);
    if (store_job_transition(s, w->job, STORE_JOB_RUNNING, NULL, "cpu", NULL, &err))
        record_failure(w, &err);
    for (int step = 0; step < N_STEPS; step++) {
        double values[N_METRICS];
        for (int i = 0; i < N_METRICS; i++)
            values[i] = w->index * 1000.0 + step + 0.1 * i;
        store_sample samples[N_SAMPLES];
        for (int i = 0; i < N_SAMPLES; i++)
            samples[i] = (store_sample){"rollout", "p", "c", (double)i, "r", "a"};
        if (store_put_step(s, w->job, step, names, values, N_METRICS, samples, N_SAMPLES, &err))
            record_failure(w, &err);
        if (step % 20 == 19) {
            char tmp[STORE_PATH_MAX], path[STORE_PATH_MAX + 16];
            if (store_checkpoint_begin(s, w->job, step, tmp, &err)) {
                record_failure(w, &err);
                continue;
            }
            snprintf(path, sizeof path, "%s/w.bin", tmp);
            FILE *f = fopen(path, "w");
            if (f) {
                fprintf(f, "%d %d", w->index, step);
                fclose(f);
            }
            if (store_checkpoint_commit(s, w->job, step, NULL, &err)) record_failure(w, &err);
        }
        /* Reads interleaved with writes, as the HTTP threads do. */
        int64_t counts[STORE_JOB_NSTATES];
        if (store_job_count_by_state(s, counts, &err)) record_failure(w, &err);
    }
    if (store_job_transition(s, w->job, STORE_JOB_SUCCEEDED, NULL, NULL, NULL, &err))
        record_failure(w, &err);
    store_close(s);
    return NULL;
}

/* Polls metrics of every job while the writers run. */
typedef struct {
    const char *dir;
    volatile int *stop;
    int failures;
    char first_error[CHORD_ERR_MSG];
    long reads;
} reader;

static void *reader_thread(void *arg) {
    reader *r = arg;
    store *s = NULL;
    chord_err err = {0};
    if (store_open(r->dir, &s, &err)) {
        r->failures++;
        snprintf(r->first_error, sizeof r->first_error, "%s", err.msg);
        return NULL;
    }
    while (!__atomic_load_n(r->stop, __ATOMIC_ACQUIRE)) {
        store_job *jobs = NULL;
        size_t n = 0;
        int64_t total = 0;
        if (store_job_list(s, -1, 0, 0, NULL, &jobs, &n, &total, &err)) {
            if (r->failures++ == 0) snprintf(r->first_error, sizeof r->first_error, "%s", err.msg);
            continue;
        }
        for (size_t i = 0; i < n; i++) {
            store_metric_row *rows = NULL;
            size_t nr = 0;
            int64_t next = 0;
            if (store_metrics_since(s, jobs[i].id, 0, 0, &rows, &nr, &next, &err)) {
                if (r->failures++ == 0)
                    snprintf(r->first_error, sizeof r->first_error, "%s", err.msg);
                continue;
            }
            /* A step is visible whole or not at all. */
            if (nr % N_METRICS != 0 && r->failures++ == 0)
                snprintf(r->first_error, sizeof r->first_error, "torn step: %zu rows", nr);
            store_metric_rows_free(rows, nr);
            r->reads++;
        }
        store_job_list_free(jobs, n);
    }
    store_close(s);
    return NULL;
}

static void test_threads_write_concurrently(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store_close(open_ok(dir));
    worker workers[N_THREADS];
    pthread_t threads[N_THREADS], rthread;
    volatile int stop = 0;
    reader rd = {.dir = dir, .stop = &stop};
    assert_int_equal(pthread_create(&rthread, NULL, reader_thread, &rd), 0);
    for (int i = 0; i < N_THREADS; i++) {
        workers[i] = (worker){.dir = dir, .index = i};
        assert_int_equal(pthread_create(&threads[i], NULL, writer_thread, &workers[i]), 0);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    assert_int_equal(pthread_join(rthread, NULL), 0);
    for (int i = 0; i < N_THREADS; i++)
        if (workers[i].failures) fail_msg("worker %d: %s", i, workers[i].first_error);
    if (rd.failures) fail_msg("reader: %s", rd.first_error);
    assert_true(rd.reads > 0);

    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics"), N_THREADS * N_STEPS * N_METRICS);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM samples"), N_THREADS * N_STEPS * N_SAMPLES);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM checkpoints"), N_THREADS * 3);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND "
                                 "current_step = "
                                 "59"),
                     N_THREADS);
    for (int i = 0; i < N_THREADS; i++) {
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT count(*) FROM metrics WHERE job_id = '%s' AND name = 'loss' AND "
                 "value = %d * 1000.0 + step",
                 workers[i].job, i);
        assert_int_equal(raw_int(db, sql), N_STEPS); /* each thread's own numbers */
    }
    char ok[32];
    raw_text(db, "PRAGMA integrity_check", ok, sizeof ok);
    assert_string_equal(ok, "ok");
    sqlite3_close(db);
    scratch_remove(dir);
}

/* Several threads open a fresh directory at once: the migration runs once, nobody fails. */
typedef struct {
    const char *dir;
    int rc;
    char msg[CHORD_ERR_MSG];
} opener;

static void *open_thread(void *arg) {
    opener *o = arg;
    store *s = NULL;
    chord_err err = {0};
    o->rc = store_open(o->dir, &s, &err);
    if (o->rc == 0) o->rc = store_job_create(s, "racer", "{}", NULL, &err);
    snprintf(o->msg, sizeof o->msg, "%s", err.msg);
    store_close(s);
    return NULL;
}

static void test_racing_first_open(void **state) {
    (void)state;
    for (int round = 0; round < 3; round++) {
        char dir[256], data[300];
        scratch_make(dir);
        snprintf(data, sizeof data, "%s/fresh", dir);
        enum { N = 6 };
        opener o[N];
        pthread_t t[N];
        for (int i = 0; i < N; i++) {
            o[i] = (opener){.dir = data};
            assert_int_equal(pthread_create(&t[i], NULL, open_thread, &o[i]), 0);
        }
        for (int i = 0; i < N; i++)
            assert_int_equal(pthread_join(t[i], NULL), 0);
        for (int i = 0; i < N; i++)
            if (o[i].rc) fail_msg("opener %d: %s", i, o[i].msg);
        sqlite3 *db = raw_open(data);
        assert_int_equal(raw_int(db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
        assert_int_equal(raw_int(db, "SELECT count(*) FROM jobs"), N);
        sqlite3_close(db);
        scratch_remove(dir);
    }
}

/* Several threads open a directory with leftovers of a crash at once: one of them recovers it,
 * and no opener gets a handle before the recovery is done. */
typedef struct {
    const char *dir, *datasets;
    int rc, leftovers_seen;
    char msg[CHORD_ERR_MSG];
} recovery_opener;

static int count_entries(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

static void *open_and_count_leftovers(void *arg) {
    recovery_opener *o = arg;
    store *s = NULL;
    chord_err err = {0};
    o->rc = store_open(o->dir, &s, &err);
    o->leftovers_seen = count_entries(o->datasets);
    snprintf(o->msg, sizeof o->msg, "%s", err.msg);
    store_close(s);
    return NULL;
}

static void test_racing_opens_wait_for_recovery(void **state) {
    (void)state;
    for (int round = 0; round < 3; round++) {
        char dir[256], datasets[300], path[400];
        scratch_make(dir);
        store_close(open_ok(dir));
        snprintf(datasets, sizeof datasets, "%s/datasets", dir);
        assert_int_equal(mkdir(datasets, 0755), 0);
        for (int i = 0; i < 200; i++) {
            snprintf(path, sizeof path, "%s/ds_%024d.jsonl.tmp", datasets, i);
            FILE *f = fopen(path, "w");
            assert_non_null(f);
            assert_int_equal(fclose(f), 0);
        }
        enum { N = 6 };
        recovery_opener o[N];
        pthread_t t[N];
        for (int i = 0; i < N; i++) {
            o[i] = (recovery_opener){.dir = dir, .datasets = datasets};
            assert_int_equal(pthread_create(&t[i], NULL, open_and_count_leftovers, &o[i]), 0);
        }
        for (int i = 0; i < N; i++)
            assert_int_equal(pthread_join(t[i], NULL), 0);
        for (int i = 0; i < N; i++) {
            if (o[i].rc) fail_msg("opener %d: %s", i, o[i].msg);
            assert_int_equal(o[i].leftovers_seen, 0);
        }
        scratch_remove(dir);
    }
}

/* A child writes steps (metrics + samples), checkpoints and uploads as fast as it can until it
 * is SIGKILLed; the parent then checks what survived. */
static void child_write_forever(const char *dir, int ready_fd) {
    store *s = NULL;
    chord_err err = {0};
    char job[STORE_ID_MAX];
    store_job j;
    if (store_open(dir, &s, &err) || store_job_create(s, "victim", "{}", &j, &err)) _exit(3);
    snprintf(job, sizeof job, "%s", j.id);
    store_job_free(&j);
    if (store_job_transition(s, job, STORE_JOB_RUNNING, NULL, "cpu", NULL, &err)) _exit(4);
    for (int64_t step = 0;; step++) {
        double values[N_METRICS] = {1, 2, 3, 4};
        store_sample samples[N_SAMPLES];
        for (int i = 0; i < N_SAMPLES; i++)
            samples[i] = (store_sample){"rollout", "p", "c", 1.0, "r", "a"};
        if (store_put_step(s, job, step, names, values, N_METRICS, samples, N_SAMPLES, &err))
            _exit(5);
        char tmp[STORE_PATH_MAX], path[STORE_PATH_MAX + 16];
        if (store_checkpoint_begin(s, job, step, tmp, &err)) _exit(6);
        snprintf(path, sizeof path, "%s/w.bin", tmp);
        FILE *f = fopen(path, "w");
        if (!f) _exit(7);
        fprintf(f, "%lld", (long long)step);
        fclose(f);
        if (store_checkpoint_commit(s, job, step, NULL, &err)) _exit(8);
        if (store_checkpoint_keep_last(s, job, 2, NULL, &err)) _exit(9);
        store_upload *up = NULL;
        if (store_dataset_upload_begin(s, "d", STORE_DATASET_EVAL, &up, &err)) _exit(10);
        if (store_dataset_upload_write(up, "{\"x\": 1}\n", 9, &err)) _exit(11);
        if (store_dataset_upload_commit(up, NULL, &err)) _exit(12);
        if (step == 0 && write(ready_fd, "r", 1) != 1) _exit(13); /* one whole round done */
    }
}

static void test_kill_mid_write_leaves_consistent_store(void **state) {
    (void)state;
    const int delays_ms[] = {0, 13, 37, 91, 153, 211};
    for (size_t round = 0; round < sizeof delays_ms / sizeof *delays_ms; round++) {
        char dir[256];
        scratch_make(dir);
        store_close(open_ok(dir));
        int ready[2];
        assert_int_equal(pipe(ready), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(ready[0]);
            child_write_forever(dir, ready[1]);
        }
        close(ready[1]);
        char byte;
        assert_int_equal(read(ready[0], &byte, 1), 1); /* kill only after one whole round */
        close(ready[0]);
        struct timespec ts = {0, delays_ms[round] * 1000000L};
        nanosleep(&ts, NULL);
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid)
            fail_msg("writer exited early with status %d", WEXITSTATUS(status));
        assert_int_equal(kill(pid, SIGKILL), 0);
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFSIGNALED(status));

        store *s = open_ok(dir); /* recovery + garbage collection */
        chord_err err = {0};
        sqlite3 *db = raw_open(dir);
        char ok[32];
        raw_text(db, "PRAGMA integrity_check", ok, sizeof ok);
        assert_string_equal(ok, "ok");
        /* Every recorded step is whole, once; current_step is the last one. */
        assert_int_equal(raw_int(db, "SELECT count(*) FROM (SELECT step FROM metrics GROUP BY "
                                     "step HAVING count(*) != 4)"),
                         0);
        assert_int_equal(raw_int(db, "SELECT count(*) FROM (SELECT step FROM samples GROUP BY "
                                     "step HAVING count(*) != 3)"),
                         0);
        int64_t steps = raw_int(db, "SELECT count(DISTINCT step) FROM metrics");
        assert_true(steps >= 1);
        assert_int_equal(raw_int(db, "SELECT max(step) FROM metrics"), steps - 1);
        assert_int_equal(raw_int(db, "SELECT current_step FROM jobs"), steps - 1);
        /* Checkpoint rows and directories agree (no .tmp, no orphan, no missing dir). */
        char job[STORE_ID_MAX];
        raw_text(db, "SELECT id FROM jobs", job, sizeof job);
        store_checkpoint *items = NULL;
        size_t n = 0;
        assert_int_equal(store_checkpoint_list(s, job, &items, &n, &err), 0);
        assert_true(n >= 1 && n <= 3); /* keep-last 2, +1 if killed between commit and prune */
        for (size_t i = 0; i < n; i++) {
            assert_true(path_exists(items[i].path));
            char cmd[STORE_PATH_MAX + 64], line[64];
            snprintf(cmd, sizeof cmd,
                     "cd '%s' && sha256sum --quiet --strict -c SHA256SUMS && "
                     "echo ok",
                     items[i].path);
            shell_line(cmd, line, sizeof line);
            assert_string_equal(line, "ok");
        }
        char job_dir[600];
        snprintf(job_dir, sizeof job_dir, "%s/checkpoints/%s", dir, job);
        assert_int_equal(dir_entries(job_dir), (int)n);
        store_checkpoint_list_free(items, n);
        /* Dataset rows and files agree. */
        char datasets[300];
        snprintf(datasets, sizeof datasets, "%s/datasets", dir);
        int64_t rows = raw_int(db, "SELECT count(*) FROM datasets");
        int files = dir_entries(datasets);
        assert_int_equal(files < 0 ? 0 : files, rows);
        sqlite3_close(db);

        /* And the job resumes: requeue, run, rewrite its last step, finish. */
        int64_t moved = 0;
        assert_int_equal(store_job_requeue_running(s, &moved, &err), 0);
        assert_int_equal(moved, 1);
        assert_int_equal(store_job_transition(s, job, STORE_JOB_RUNNING, NULL, NULL, NULL, &err),
                         0);
        double values[N_METRICS] = {9, 9, 9, 9};
        assert_int_equal(store_put_step_metrics(s, job, steps - 1, names, values, 4, &err), 0);
        db = raw_open(dir);
        assert_int_equal(raw_int(db, "SELECT count(*) FROM metrics"), steps * 4);
        sqlite3_close(db);
        store_close(s);
        scratch_remove(dir);
    }
}

/* Another connection holds the write lock for a while: a store write waits for it (busy
 * timeout) and succeeds instead of failing with SQLITE_BUSY. */
typedef struct {
    const char *dir;
    volatile int locked;
} lock_holder;

static void *hold_write_lock(void *arg) {
    lock_holder *h = arg;
    char path[400];
    snprintf(path, sizeof path, "%s/chord.db", h->dir);
    sqlite3 *db = NULL;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "UPDATE jobs SET name = name", NULL, NULL, NULL), SQLITE_OK);
    __atomic_store_n(&h->locked, 1, __ATOMIC_RELEASE);
    struct timespec ts = {0, 400 * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    return NULL;
}

static void test_writer_waits_for_lock(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    lock_holder h = {.dir = dir};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_write_lock, &h), 0);
    while (!__atomic_load_n(&h.locked, __ATOMIC_ACQUIRE))
        sched_yield();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    chord_err err = {0};
    store_job job;
    if (store_job_create(s, "patient", "{}", &job, &err)) fail_msg("%s", err.msg);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double waited = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    assert_true(waited > 0.2); /* it really waited for the other writer */
    assert_int_equal(store_job_transition(s, job.id, STORE_JOB_RUNNING, NULL, NULL, NULL, &err), 0);
    store_job_free(&job);
    assert_int_equal(pthread_join(t, NULL), 0);
    store_close(s);
    scratch_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_threads_write_concurrently),
        cmocka_unit_test(test_racing_first_open),
        cmocka_unit_test(test_racing_opens_wait_for_recovery),
        cmocka_unit_test(test_writer_waits_for_lock),
        cmocka_unit_test(test_kill_mid_write_leaves_consistent_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
