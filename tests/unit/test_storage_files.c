/* test_storage_files.c — the file stores of storage/: streamed dataset uploads (hash and line
 * count checked against sha256sum(1) and wc(1), abort and failed commits leave nothing) and
 * checkpoint directories (atomic commit verified with `sha256sum -c`, leftovers of interrupted
 * writes removed on reopen — including a child process killed mid-checkpoint — keep-last-K), and
 * recovery running once per open of the data directory, not on every handle. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "server/base/fileutil.h"
#include "test_storage_util.h"

/* ---- datasets ----------------------------------------------------------------------------- */

/* n_lines JSONL lines with multi-byte UTF-8, the last one unterminated when !final_newline. */
static char *make_jsonl(int n_lines, int final_newline, size_t *len) {
    size_t cap = (size_t)n_lines * 96 + 16, k = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < n_lines; i++)
        k += (size_t)snprintf(buf + k, cap - k,
                              "{\"prompt\": \"Berechne %d × %d — é\", \"answer\": \"%d\"}%s", i,
                              i + 1, i * (i + 1), (i + 1 < n_lines || final_newline) ? "\n" : "");
    *len = k;
    return buf;
}

static void upload_in_chunks(store *s, const char *name, const char *data, size_t len,
                             store_dataset *out) {
    chord_err err = {0};
    store_upload *up = NULL;
    assert_int_equal(store_dataset_upload_begin(s, name, STORE_DATASET_PROMPTS, &up, &err), 0);
    /* Odd chunk sizes so lines straddle chunks. */
    size_t sizes[] = {1, 7, 4096, 13, 100000, 3};
    size_t off = 0;
    for (int i = 0; off < len; i++) {
        size_t take = sizes[i % 6];
        if (take > len - off) take = len - off;
        if (store_dataset_upload_write(up, data + off, take, &err)) fail_msg("%s", err.msg);
        off += take;
    }
    assert_int_equal(store_dataset_upload_bytes(up), (int64_t)len);
    if (store_dataset_upload_commit(up, out, &err)) fail_msg("%s", err.msg);
}

static void test_dataset_upload(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    for (int final_newline = 0; final_newline < 2; final_newline++) {
        size_t len = 0;
        char *data = make_jsonl(2000, final_newline, &len);
        store_dataset d;
        upload_in_chunks(s, "gsm-like", data, len, &d);
        assert_memory_equal(d.id, "ds_", 3);
        assert_string_equal(d.name, "gsm-like");
        assert_int_equal(d.kind, STORE_DATASET_PROMPTS);
        assert_int_equal(d.bytes, (int64_t)len);
        assert_int_equal(d.line_count, 2000);

        char want_path[512];
        snprintf(want_path, sizeof want_path, "%s/datasets/%s.jsonl", dir, d.id);
        char real_want[512];
        assert_non_null(realpath(want_path, real_want));
        assert_string_equal(d.path, real_want);
        /* Independent checks of the file: bytes, sha256sum(1), wc -l. */
        char *got = NULL;
        size_t got_len = 0;
        assert_int_equal(chord_read_file(d.path, &got, &got_len, &err), 0);
        assert_int_equal(got_len, len);
        assert_memory_equal(got, data, len);
        free(got);
        char sha[65];
        sha256sum_file(d.path, sha);
        assert_string_equal(d.sha256, sha);
        char cmd[600], line[64];
        snprintf(cmd, sizeof cmd, "wc -l < '%s'", d.path);
        shell_line(cmd, line, sizeof line);
        assert_int_equal(atoi(line) + (final_newline ? 0 : 1), 2000);

        store_dataset again;
        assert_int_equal(store_dataset_get(s, d.id, &again, &err), 0);
        assert_string_equal(again.sha256, sha);
        assert_int_equal(again.line_count, d.line_count);
        store_dataset_free(&again);
        store_dataset_free(&d);
        free(data);
    }
    /* No temp file is left. */
    char datasets[300];
    snprintf(datasets, sizeof datasets, "%s/datasets", dir);
    assert_int_equal(dir_entries(datasets), 2);

    store_dataset *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_dataset_list(s, 1, 5, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_int_equal(n, 1);
    store_dataset_list_free(items, n);
    store_close(s);
    scratch_remove(dir);
}

static void test_dataset_abort_leaves_nothing(void **state) {
    (void)state;
    char dir[256], datasets[300];
    scratch_make(dir);
    snprintf(datasets, sizeof datasets, "%s/datasets", dir);
    store *s = open_ok(dir);
    chord_err err = {0};

    store_upload *up = NULL;
    assert_int_equal(store_dataset_upload_begin(s, "half", STORE_DATASET_EXPERT, &up, &err), 0);
    assert_int_equal(store_dataset_upload_write(up, "{\"a\": 1}\n{\"a\":", 14, &err), 0);
    assert_int_equal(dir_entries(datasets), 1); /* the .tmp, while it streams */
    store_dataset_upload_abort(up);
    assert_int_equal(dir_entries(datasets), 0);

    /* An empty upload is refused at commit and leaves nothing either. */
    assert_int_equal(store_dataset_upload_begin(s, "empty", STORE_DATASET_EVAL, &up, &err), 0);
    assert_int_equal(store_dataset_upload_commit(up, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    assert_int_equal(dir_entries(datasets), 0);
    chord_err_clear(&err);

    assert_int_equal(store_dataset_upload_begin(s, "", STORE_DATASET_EVAL, &up, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_int_equal(store_dataset_upload_begin(s, "x", (store_dataset_kind)9, &up, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    store_dataset_kind kind;
    assert_int_equal(store_dataset_kind_parse("expert", &kind, &err), 0);
    assert_int_equal(kind, STORE_DATASET_EXPERT);
    assert_int_equal(store_dataset_kind_parse("sft", &kind, &err), -1);

    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM datasets"), 0);
    sqlite3_close(db);
    store_close(s);
    scratch_remove(dir);
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static void test_dataset_orphans_collected(void **state) {
    (void)state;
    char dir[256], path[400];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_dataset kept;
    upload_in_chunks(s, "kept", "{}\n", 3, &kept);
    store_close(s);
    /* What a crash leaves: a temp (killed mid-upload) and a renamed file with no row (killed
     * between rename and insert). Files that are not the store's are left alone. */
    snprintf(path, sizeof path, "%s/datasets/ds_0123456789abcdef01234567.jsonl.tmp", dir);
    write_text(path, "{}\n");
    snprintf(path, sizeof path, "%s/datasets/ds_76543210fedcba9876543210.jsonl", dir);
    write_text(path, "{}\n");
    snprintf(path, sizeof path, "%s/datasets/README", dir);
    write_text(path, "not ours\n");
    s = open_ok(dir);
    char datasets[300];
    snprintf(datasets, sizeof datasets, "%s/datasets", dir);
    assert_int_equal(dir_entries(datasets), 2); /* kept + README */
    assert_true(path_exists(kept.path));
    assert_true(path_exists(path));
    store_dataset_free(&kept);
    (void)err;
    store_close(s);
    scratch_remove(dir);
}

/* ---- checkpoints -------------------------------------------------------------------------- */

/* Writes a small checkpoint (two files and a nested one) into tmp. */
static void write_checkpoint_files(const char *tmp, int64_t step) {
    char path[STORE_PATH_MAX + 32], text[128];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    snprintf(text, sizeof text, "weights of step %lld\n", (long long)step);
    write_text(path, text);
    snprintf(path, sizeof path, "%s/state.json", tmp);
    write_text(path, "{\"rng\": 42, \"cursor\": 17}\n");
    snprintf(path, sizeof path, "%s/optimizer", tmp);
    assert_int_equal(mkdir(path, 0755), 0);
    snprintf(path, sizeof path, "%s/optimizer/adam.bin", tmp);
    write_text(path, "moments");
}

static void commit_checkpoint(store *s, const char *job, int64_t step, store_checkpoint *out) {
    chord_err err = {0};
    char tmp[STORE_PATH_MAX];
    if (store_checkpoint_begin(s, job, step, tmp, &err)) fail_msg("%s", err.msg);
    write_checkpoint_files(tmp, step);
    if (store_checkpoint_commit(s, job, step, out, &err)) fail_msg("%s", err.msg);
}

static void test_checkpoint_commit(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char job[STORE_ID_MAX];
    make_running_job(s, "ckpt", job);

    char tmp[STORE_PATH_MAX], final[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_dir(s, job, 12, final, &err), 0);
    assert_int_equal(store_checkpoint_begin(s, job, 12, tmp, &err), 0);
    assert_true(strlen(tmp) > 4 && strcmp(tmp + strlen(tmp) - 4, ".tmp") == 0);
    assert_memory_equal(tmp, final, strlen(final));
    /* A second writer of the same step is refused while the first is in flight. */
    char tmp2[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_begin(s, job, 12, tmp2, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    write_checkpoint_files(tmp, 12);
    assert_false(path_exists(final)); /* nothing visible before commit */
    store_checkpoint c;
    assert_int_equal(store_checkpoint_commit(s, job, 12, &c, &err), 0);
    assert_false(path_exists(tmp));
    assert_true(chord_is_dir(final));
    assert_string_equal(c.path, final);
    assert_string_equal(c.job_id, job);
    assert_int_equal(c.step, 12);
    assert_memory_equal(c.id, "ckpt_", 5);

    /* The manifest verifies with coreutils, and the row's hash is the manifest's hash. */
    char cmd[STORE_PATH_MAX + 128], line[256];
    snprintf(cmd, sizeof cmd, "cd '%s' && sha256sum --strict -c SHA256SUMS | grep -c ': OK$'",
             final);
    shell_line(cmd, line, sizeof line);
    assert_int_equal(atoi(line), 3);
    char manifest[STORE_PATH_MAX + 16], sha[65];
    snprintf(manifest, sizeof manifest, "%s/SHA256SUMS", final);
    sha256sum_file(manifest, sha);
    assert_string_equal(c.sha256, sha);
    snprintf(
        cmd, sizeof cmd,
        "find '%s' -type f ! -name SHA256SUMS -printf '%%s\\n' | awk '{t += $1} END {print t}'",
        final);
    shell_line(cmd, line, sizeof line);
    assert_int_equal(c.bytes, atoll(line));
    store_checkpoint_free(&c);

    /* Same step again: conflict, nothing changes on disk. */
    assert_int_equal(store_checkpoint_begin(s, job, 12, tmp, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_false(path_exists(tmp));
    /* Commit without begin. */
    assert_int_equal(store_checkpoint_commit(s, job, 13, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    /* Unknown job. */
    assert_int_equal(store_checkpoint_begin(s, "job_000000000000000000000000", 1, tmp, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);

    /* Abort removes the temp directory and frees the step. */
    assert_int_equal(store_checkpoint_begin(s, job, 14, tmp, &err), 0);
    write_checkpoint_files(tmp, 14);
    store_checkpoint_abort(s, job, 14);
    assert_false(path_exists(tmp));
    assert_int_equal(store_checkpoint_begin(s, job, 14, tmp, &err), 0);
    store_checkpoint_abort(s, job, 14);

    /* A symlink inside is refused, and the failed commit leaves nothing. */
    assert_int_equal(store_checkpoint_begin(s, job, 15, tmp, &err), 0);
    char link_path[STORE_PATH_MAX + 16];
    snprintf(link_path, sizeof link_path, "%s/evil", tmp);
    assert_int_equal(symlink("/etc/passwd", link_path), 0);
    assert_int_equal(store_checkpoint_commit(s, job, 15, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);
    assert_false(path_exists(tmp));
    assert_int_equal(store_checkpoint_dir(s, job, 15, final, &err), 0);
    assert_false(path_exists(final));

    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM checkpoints"), 1);
    sqlite3_close(db);
    store_close(s);
    scratch_remove(dir);
}

static void test_checkpoint_leftovers_removed_on_reopen(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char job[STORE_ID_MAX];
    make_running_job(s, "crashy", job);
    store_checkpoint good;
    commit_checkpoint(s, job, 5, &good);

    /* A child process begins step 10, writes half of it and is killed. */
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        store *cs = NULL;
        chord_err cerr = {0};
        char tmp[STORE_PATH_MAX], path[STORE_PATH_MAX + 32];
        if (store_open(dir, &cs, &cerr) || store_checkpoint_begin(cs, job, 10, tmp, &cerr))
            _exit(3);
        snprintf(path, sizeof path, "%s/model.safetensors", tmp);
        FILE *f = fopen(path, "w");
        if (!f) _exit(4);
        fputs("half a checkpo", f);
        fflush(f);
        raise(SIGKILL);
        _exit(5);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    char tmp10[STORE_PATH_MAX + 8], final10[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_dir(s, job, 10, final10, &err), 0);
    snprintf(tmp10, sizeof tmp10, "%s.tmp", final10);
    assert_true(chord_is_dir(tmp10));

    /* And a crash between rename and insert: a final directory with no row. */
    char orphan[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_dir(s, job, 7, orphan, &err), 0);
    assert_int_equal(chord_mkdirs(orphan, &err), 0);
    char path[STORE_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/model.safetensors", orphan);
    write_text(path, "renamed but never recorded");

    /* A checkpoint this process is writing right now survives the recovery of the next open,
     * even with the handle it was begun on closed (the in-flight registry is process-wide). */
    char live_tmp[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_begin(s, job, 11, live_tmp, &err), 0);
    write_checkpoint_files(live_tmp, 11);

    /* Recovery runs when the data directory is opened, not on every handle: close the last one
     * first, so that this open is the directory's and removes what the crashes left. */
    store_close(s);
    store *other = open_ok(dir);
    assert_false(path_exists(tmp10));
    assert_false(path_exists(orphan));
    assert_true(chord_is_dir(good.path));
    assert_true(chord_is_dir(live_tmp));
    s = other;
    assert_int_equal(store_checkpoint_commit(s, job, 11, NULL, &err), 0);

    store_checkpoint *items = NULL;
    size_t n = 0;
    assert_int_equal(store_checkpoint_list(s, job, &items, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(items[0].step, 5);
    assert_int_equal(items[1].step, 11);
    store_checkpoint_list_free(items, n);
    /* Step 10 can be written again after the crash. */
    commit_checkpoint(s, job, 10, NULL);
    store_checkpoint_free(&good);
    store_close(s);
    scratch_remove(dir);
}

static void test_checkpoint_keep_last(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char job[STORE_ID_MAX], other[STORE_ID_MAX];
    make_running_job(s, "keep", job);
    make_running_job(s, "other", other);

    store_checkpoint latest;
    int found = 1;
    assert_int_equal(store_checkpoint_latest(s, job, &latest, &found, &err), 0);
    assert_int_equal(found, 0);
    assert_int_equal(
        store_checkpoint_latest(s, "job_000000000000000000000000", &latest, &found, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);

    int64_t steps[] = {10, 20, 5, 40, 30}; /* committed out of order on purpose */
    for (size_t i = 0; i < 5; i++)
        commit_checkpoint(s, job, steps[i], NULL);
    commit_checkpoint(s, other, 1, NULL);
    assert_int_equal(store_checkpoint_latest(s, job, &latest, &found, &err), 0);
    assert_int_equal(found, 1);
    assert_int_equal(latest.step, 40);
    store_checkpoint_free(&latest);

    size_t removed = 0;
    assert_int_equal(store_checkpoint_keep_last(s, job, 2, &removed, &err), 0);
    assert_int_equal(removed, 3);
    char job_dir[400];
    snprintf(job_dir, sizeof job_dir, "%s/checkpoints/%s", dir, job);
    assert_int_equal(dir_entries(job_dir), 2);
    char path[STORE_PATH_MAX];
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(store_checkpoint_dir(s, job, steps[i], path, &err), 0);
        assert_int_equal(path_exists(path), steps[i] >= 30);
    }
    sqlite3 *db = raw_open(dir);
    char sql[200];
    snprintf(sql, sizeof sql,
             "SELECT group_concat(step) FROM (SELECT step FROM checkpoints "
             "WHERE job_id = '%s' ORDER BY step)",
             job);
    char text[64];
    raw_text(db, sql, text, sizeof text);
    assert_string_equal(text, "30,40");
    assert_int_equal(raw_int(db, "SELECT count(*) FROM checkpoints"), 3); /* other job kept */
    sqlite3_close(db);
    assert_int_equal(store_checkpoint_keep_last(s, job, 5, &removed, &err), 0);
    assert_int_equal(removed, 0);
    assert_int_equal(store_checkpoint_keep_last(s, job, 0, &removed, &err), 0);
    assert_int_equal(removed, 2);
    assert_int_equal(dir_entries(job_dir), 0);
    store_close(s);
    scratch_remove(dir);
}

static void test_truncate_after_drops_later_checkpoints(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char job[STORE_ID_MAX];
    make_running_job(s, "resume", job);
    const char *names[] = {"loss"};
    for (int64_t step = 0; step <= 15; step++) {
        double v = (double)step;
        assert_int_equal(store_put_step_metrics(s, job, step, names, &v, 1, &err), 0);
        if (step % 5 == 0) commit_checkpoint(s, job, step, NULL);
    }
    /* Resume from the checkpoint at 10: step 15's checkpoint belongs to the abandoned run. */
    char path15[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_dir(s, job, 15, path15, &err), 0);
    assert_true(chord_is_dir(path15));
    assert_int_equal(store_job_truncate_after(s, job, 10, &err), 0);
    assert_false(path_exists(path15));
    sqlite3 *db = raw_open(dir);
    char sql[256], text[64];
    snprintf(sql, sizeof sql,
             "SELECT group_concat(step) FROM (SELECT step FROM checkpoints "
             "WHERE job_id = '%s' ORDER BY step)",
             job);
    raw_text(db, sql, text, sizeof text);
    assert_string_equal(text, "0,5,10");
    snprintf(sql, sizeof sql, "SELECT max(step) FROM metrics WHERE job_id = '%s'", job);
    assert_int_equal(raw_int(db, sql), 10);
    sqlite3_close(db);
    /* The resumed run can write step 15's checkpoint again. */
    commit_checkpoint(s, job, 15, NULL);
    /* From scratch (-1): everything goes. */
    assert_int_equal(store_job_truncate_after(s, job, -1, &err), 0);
    char job_dir[400];
    snprintf(job_dir, sizeof job_dir, "%s/checkpoints/%s", dir, job);
    assert_int_equal(dir_entries(job_dir), 0);
    store_job j;
    assert_int_equal(store_job_get(s, job, &j, &err), 0);
    assert_int_equal(j.current_step, -1);
    store_job_free(&j);
    store_close(s);
    scratch_remove(dir);
}

/* ---- recovery once per directory open ------------------------------------------------------ */

/* Leftovers of a crash, planted by hand: an interrupted upload, an uploaded file with no row and
 * an interrupted checkpoint of `job`. */
typedef struct {
    char upload_tmp[STORE_PATH_MAX], upload_orphan[STORE_PATH_MAX], checkpoint_tmp[STORE_PATH_MAX];
} leftovers;

static void plant_leftovers(store *s, const char *dir, const char *job, leftovers *l) {
    chord_err err = {0};
    char datasets[300];
    snprintf(datasets, sizeof datasets, "%s/datasets", dir);
    assert_int_equal(chord_mkdirs(datasets, &err), 0);
    snprintf(l->upload_tmp, sizeof l->upload_tmp, "%s/ds_0123456789abcdef01234567.jsonl.tmp",
             datasets);
    write_text(l->upload_tmp, "{}\n");
    snprintf(l->upload_orphan, sizeof l->upload_orphan, "%s/ds_76543210fedcba9876543210.jsonl",
             datasets);
    write_text(l->upload_orphan, "{}\n");
    char final[STORE_PATH_MAX];
    assert_int_equal(store_checkpoint_dir(s, job, 3, final, &err), 0);
    snprintf(l->checkpoint_tmp, sizeof l->checkpoint_tmp, "%.*s.tmp", STORE_PATH_MAX - 8, final);
    assert_int_equal(chord_mkdirs(l->checkpoint_tmp, &err), 0);
}

static int leftovers_present(const leftovers *l) {
    return path_exists(l->upload_tmp) + path_exists(l->upload_orphan) +
           path_exists(l->checkpoint_tmp);
}

/* Recovery (removing what interrupted writes left) runs when the data directory is opened, i.e.
 * by the first handle of the directory in this process, never by the later ones: the service
 * takes a handle per request and per worker. Once every handle is closed, the next open is a
 * fresh open of the directory again and recovers. */
static void test_recovery_once_per_directory_open(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    char job[STORE_ID_MAX];
    make_running_job(s, "recovering", job);
    leftovers l;
    plant_leftovers(s, dir, job, &l);
    assert_int_equal(leftovers_present(&l), 3);

    store *second = open_ok(dir); /* the directory is open already: no recovery */
    assert_int_equal(leftovers_present(&l), 3);
    for (int request = 0; request < 8; request++)
        store_close(open_ok(dir)); /* a handle per request */
    assert_int_equal(leftovers_present(&l), 3);
    store_close(s);
    store_close(open_ok(dir)); /* `second` still holds the directory open */
    assert_int_equal(leftovers_present(&l), 3);
    store_close(second);

    s = open_ok(dir); /* the last handle closed: this is a fresh open, and it recovers */
    assert_int_equal(leftovers_present(&l), 0);
    store_close(s);
    scratch_remove(dir);
}

/* Pipelines (docs/pipelines.md): a model registered from a checkpoint, and a job started from
 * one, pin it: keep-last-K spares it; the model reads the checkpoint's directory, job and step;
 * datasets are found by name, newest upload of a fitting kind first. */
static void test_checkpoint_pins_and_dataset_names(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char job[STORE_ID_MAX];
    make_running_job(s, "source", job);
    store_checkpoint c10, c20, c30, c40;
    commit_checkpoint(s, job, 10, &c10);
    commit_checkpoint(s, job, 20, &c20);
    commit_checkpoint(s, job, 30, &c30);
    commit_checkpoint(s, job, 40, &c40);

    store_model m;
    assert_int_equal(store_model_insert_checkpoint(s, "from-10", c10.id, "{\"a\": 1}", &m, &err),
                     0);
    assert_string_equal(m.checkpoint_id, c10.id);
    assert_string_equal(m.checkpoint_job_id, job);
    assert_int_equal(m.checkpoint_step, 10);
    assert_string_equal(m.directory, c10.path);
    assert_string_equal(m.tokenizer_dir, c10.path);
    char mid[STORE_ID_MAX];
    snprintf(mid, sizeof mid, "%s", m.id);
    store_model_free(&m);
    /* listed the same way */
    store_model *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_model_list(s, 0, 0, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(items[0].checkpoint_step, 10);
    store_model_list_free(items, n);
    /* an unknown checkpoint: nothing inserted */
    assert_int_equal(
        store_model_insert_checkpoint(s, "x", "ckpt_000000000000000000000000", "{}", NULL, &err),
        -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    assert_int_equal(store_model_insert_checkpoint(s, "x", "../etc", "{}", NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_INVALID);
    chord_err_clear(&err);

    store_job chained;
    assert_int_equal(store_job_create_from(s, "next", "{}", c20.id, &chained, &err), 0);
    store_job_free(&chained);

    /* keep the last 1: 40 stays, 10 (model) and 20 (job) are pinned, only 30 goes */
    size_t removed = 0;
    assert_int_equal(store_checkpoint_keep_last(s, job, 1, &removed, &err), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(path_exists(c10.path), 1);
    assert_int_equal(path_exists(c20.path), 1);
    assert_int_equal(path_exists(c30.path), 0);
    assert_int_equal(path_exists(c40.path), 1);
    assert_int_equal(store_model_get(s, mid, &m, &err), 0);
    assert_string_equal(m.directory, c10.path);
    store_model_free(&m);
    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM checkpoints"), 3);
    sqlite3_close(db);
    store_checkpoint_free(&c10);
    store_checkpoint_free(&c20);
    store_checkpoint_free(&c30);
    store_checkpoint_free(&c40);

    /* datasets by name: the newest upload of a fitting kind */
    store_dataset d1, d2, d3, got;
    upload_in_chunks(s, "nightly", "{\"prompt\": \"a\"}\n", 16, &d1);
    upload_in_chunks(s, "nightly", "{\"prompt\": \"b\"}\n", 16, &d2);
    upload_in_chunks(s, "other", "{\"prompt\": \"c\"}\n", 16, &d3);
    assert_int_equal(store_dataset_latest_by_name(s, "nightly", "prompts", "eval", &got, &err), 0);
    assert_string_equal(got.id, d2.id);
    store_dataset_free(&got);
    assert_int_equal(store_dataset_latest_by_name(s, "nightly", "expert", NULL, &got, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    assert_int_equal(store_dataset_latest_by_name(s, "none", "prompts", NULL, &got, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    store_dataset_free(&d1);
    store_dataset_free(&d2);
    store_dataset_free(&d3);
    store_close(s);
    scratch_remove(dir);
}

/* The webhook outbox: events made from the tables once each (a second collect, a reopen add
 * nothing), checkpoints before their job's final state, nothing from before webhooks were
 * enabled, attempts recorded until delivered or failed. */
static void test_webhook_outbox(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    char old_job[STORE_ID_MAX], job[STORE_ID_MAX];
    make_running_job(s, "before", old_job);
    assert_int_equal(store_job_transition(s, old_job, STORE_JOB_SUCCEEDED, NULL, NULL, NULL, &err),
                     0);
    int64_t since = 0, since2 = 0, added = -1;
    int64_t now = store_now_ms() + 1;
    assert_int_equal(store_webhook_enable(s, now, &since, &err), 0);
    assert_int_equal(since, now);
    assert_int_equal(store_webhook_enable(s, now + 5000, &since2, &err), 0);
    assert_int_equal(since2, now); /* the first time is kept */
    while (store_now_ms() <= now) {
    }
    make_running_job(s, "after", job);
    commit_checkpoint(s, job, 2, NULL);
    assert_int_equal(store_job_transition(s, job, STORE_JOB_FAILED, "boom", NULL, NULL, &err), 0);
    assert_int_equal(store_webhook_collect(s, since, store_now_ms(), &added, &err), 0);
    assert_int_equal(added, 2);
    assert_int_equal(store_webhook_collect(s, since, store_now_ms(), &added, &err), 0);
    assert_int_equal(added, 0);
    store_close(s);
    s = open_ok(dir);
    assert_int_equal(store_webhook_collect(s, since, store_now_ms(), &added, &err), 0);
    assert_int_equal(added, 0);

    store_webhook *due = NULL;
    size_t n = 0;
    assert_int_equal(store_webhook_due(s, store_now_ms(), 0, &due, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(due[0].event, "checkpoint.created");
    assert_string_equal(due[1].event, "job.failed");
    assert_string_equal(due[1].subject, job);
    assert_non_null(strstr(due[1].payload, "\"type\":\"job.failed\""));
    assert_non_null(strstr(due[1].payload, "\"error\":\"boom\""));
    assert_non_null(strstr(due[0].payload, "\"step\":2"));
    assert_int_equal(strncmp(due[0].id, "msg_", 4), 0);
    char first[STORE_ID_MAX], second[STORE_ID_MAX];
    snprintf(first, sizeof first, "%s", due[0].id);
    snprintf(second, sizeof second, "%s", due[1].id);
    store_webhook_list_free(due, n);

    int64_t later = store_now_ms() + 60000;
    assert_int_equal(store_webhook_attempted(s, first, 0, 500, "HTTP 500", later, &err), 0);
    assert_int_equal(store_webhook_attempted(s, second, 1, 204, NULL, 0, &err), 0);
    assert_int_equal(store_webhook_attempted(s, second, 1, 204, NULL, 0, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_int_equal(store_webhook_due(s, store_now_ms(), 0, &due, &n, &err), 0);
    assert_int_equal(n, 0); /* the retry is not due yet */
    store_webhook_list_free(due, n);
    assert_int_equal(store_webhook_due(s, later, 0, &due, &n, &err), 0);
    assert_int_equal(n, 1);
    store_webhook_list_free(due, n);
    assert_int_equal(store_webhook_attempted(s, first, 0, 0, "timeout", -1, &err), 0);

    int64_t total = 0;
    assert_int_equal(store_webhook_list(s, 0, 0, NULL, &due, &n, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_string_equal(due[0].id, second); /* newest first */
    assert_int_equal(due[0].state, STORE_WEBHOOK_DELIVERED);
    assert_int_equal(due[0].last_status, 204);
    assert_int_equal(due[1].state, STORE_WEBHOOK_FAILED);
    assert_int_equal(due[1].attempts, 2);
    assert_string_equal(due[1].last_error, "timeout");
    assert_true(due[1].finished_ms > 0);
    store_webhook_list_free(due, n);
    store_close(s);
    scratch_remove(dir);
}

/* Aliases and promotions (store_pipeline.c): a PUT records a move only when it changes the
 * alias; a promotion is decided once (the model, the alias's move and the outcome in one
 * transaction; a second decision is a conflict); the model pins the checkpoint; the moves and
 * the job's last eval become webhook events once each. */
static void test_aliases_and_promotions(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    int64_t since = 0, added = 0;
    assert_int_equal(store_webhook_enable(s, store_now_ms() - 1, &since, &err), 0);
    store_model m0;
    assert_int_equal(store_model_insert(s, "base", "/m", "{}", NULL, &m0, &err), 0);
    int moved = -1;
    store_alias a;
    assert_int_equal(store_alias_put(s, "prod", m0.id, &a, &moved, &err), 0);
    assert_int_equal(moved, 1);
    assert_string_equal(a.model_id, m0.id);
    assert_int_equal(store_alias_put(s, "prod", m0.id, NULL, &moved, &err), 0);
    assert_int_equal(moved, 0);
    assert_int_equal(store_alias_put(s, "prod", "mdl_000000000000000000000000", NULL, &moved, &err),
                     -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);
    assert_int_equal(store_alias_put(s, "staging", m0.id, NULL, NULL, &err), 0);

    /* a job with a promotion request, which ends with an eval and a checkpoint */
    store_job_extra extra = {.model_alias = "prod",
                             .alias_model_id = m0.id,
                             .promote_alias = "prod",
                             .min_eval_accuracy = 0.5};
    store_job j;
    assert_int_equal(store_job_create_ex(s, "gated", "{\"steps\": 2}", NULL, &extra, &j, &err), 0);
    assert_string_equal(j.promotion_state, "pending");
    assert_string_equal(j.model_alias, "prod");
    assert_true(j.min_eval_accuracy == 0.5);
    char job[STORE_ID_MAX];
    snprintf(job, sizeof job, "%s", j.id);
    store_job_free(&j);
    assert_int_equal(store_job_transition(s, job, STORE_JOB_RUNNING, NULL, "cpu", NULL, &err), 0);
    const char *names[] = {"eval/accuracy", "eval/pass_at_k"};
    double values[] = {0.75, 1.0};
    assert_int_equal(store_put_step_metrics(s, job, 2, names, values, 2, &err), 0);
    store_checkpoint ck;
    commit_checkpoint(s, job, 2, &ck);
    store_promotion *due = NULL;
    size_t n = 0;
    assert_int_equal(store_promotions_due(s, &due, &n, &err), 0);
    assert_int_equal(n, 0); /* still running */
    assert_int_equal(store_job_transition(s, job, STORE_JOB_SUCCEEDED, NULL, NULL, NULL, &err), 0);
    assert_int_equal(store_promotions_due(s, &due, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(due[0].job_id, job);
    assert_string_equal(due[0].alias, "prod");
    assert_true(due[0].eval_accuracy == 0.75 && due[0].eval_step == 2);
    assert_int_equal(due[0].job_state, STORE_JOB_SUCCEEDED);
    store_promotions_free(due, n);

    char model[STORE_ID_MAX];
    assert_int_equal(store_promote(s, job, "promoted", ck.id, "{}", 0.75, 2, model, &err), 0);
    assert_int_equal(store_promote(s, job, "again", ck.id, "{}", 0.75, 2, model, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_int_equal(store_promotion_refuse(s, job, "late", 0.75, 2, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    assert_int_equal(store_promotions_due(s, &due, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_int_equal(store_alias_get(s, "prod", &a, &err), 0);
    char promoted[STORE_ID_MAX];
    snprintf(promoted, sizeof promoted, "%s", a.model_id);
    assert_int_equal(strncmp(promoted, "mdl_", 4), 0);
    store_model m1;
    assert_int_equal(store_model_get(s, promoted, &m1, &err), 0);
    assert_string_equal(m1.checkpoint_id, ck.id); /* pinned */
    store_model_free(&m1);
    assert_int_equal(store_job_get(s, job, &j, &err), 0);
    assert_string_equal(j.promotion_state, "promoted");
    assert_string_equal(j.promoted_model_id, promoted);
    assert_true(j.eval_accuracy == 0.75 && j.decided_ms > 0);
    store_job_free(&j);

    /* the list by name, with a cursor that need not exist any more */
    store_alias *items = NULL;
    int64_t total = 0;
    assert_int_equal(store_alias_list(s, 0, 0, "p", &items, &n, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_int_equal(n, 2);
    assert_string_equal(items[0].name, "prod");
    assert_string_equal(items[1].name, "staging");
    free(items);
    assert_int_equal(store_alias_delete(s, "staging", &a, &err), 0);
    assert_string_equal(a.model_id, m0.id);
    assert_int_equal(store_alias_delete(s, "staging", NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    chord_err_clear(&err);

    /* prod set, staging set, prod moved, staging deleted; one eval; the job; the checkpoint */
    assert_int_equal(store_webhook_collect(s, since, store_now_ms(), &added, &err), 0);
    assert_int_equal(added, 7);
    assert_int_equal(store_webhook_collect(s, since, store_now_ms(), &added, &err), 0);
    assert_int_equal(added, 0);
    store_webhook *hooks = NULL;
    assert_int_equal(store_webhook_due(s, store_now_ms(), 0, &hooks, &n, &err), 0);
    assert_int_equal(n, 7);
    assert_string_equal(hooks[1].event, "eval.completed");
    assert_non_null(strstr(hooks[1].payload, "\"metrics\":{\"accuracy\":0.75,\"pass_at_k\":1.0}"));
    assert_string_equal(hooks[2].event, "job.succeeded");
    assert_string_equal(hooks[5].event, "alias.moved");
    assert_non_null(strstr(hooks[5].payload, job));
    assert_non_null(strstr(hooks[5].payload, promoted));
    store_webhook_list_free(hooks, n);
    store_model_free(&m0);
    store_checkpoint_free(&ck);
    store_close(s);
    scratch_remove(dir);
}

/* Schedules: a fire time is handled once (a second fire of it, or one from a stale next time, is
 * a conflict and changes nothing); its job, row and next time go together. */
static void test_schedule_fires_once(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_schedule x;
    assert_int_equal(store_schedule_create(s, "nightly", "* * * * *", "{}", 1, 1000, &x, &err), 0);
    char job[STORE_ID_MAX];
    assert_int_equal(store_schedule_fire(s, x.id, 1000, 1000, 2000, 0, NULL, "j", "{}", NULL,
                                         NULL, job, &err),
                     0);
    assert_int_equal(strncmp(job, "job_", 4), 0);
    assert_int_equal(store_schedule_fire(s, x.id, 1000, 1000, 2000, 0, NULL, "j", "{}", NULL,
                                         NULL, job, &err),
                     -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    chord_err_clear(&err);
    int64_t total = 0;
    store_job *jobs = NULL;
    size_t n = 0;
    assert_int_equal(store_job_list(s, -1, 0, 0, NULL, &jobs, &n, &total, &err), 0);
    assert_int_equal(total, 1); /* the refused fire made no job */
    store_job_list_free(jobs, n);
    /* a skipped fire: a row, no job */
    assert_int_equal(store_schedule_fire(s, x.id, 2000, 5000, 6000, 3, "skipped", NULL, NULL, NULL,
                                         NULL, job, &err),
                     0);
    char sid[STORE_ID_MAX];
    snprintf(sid, sizeof sid, "%s", x.id);
    store_schedule_free(&x);
    assert_int_equal(store_schedule_get(s, sid, &x, &err), 0);
    assert_int_equal(x.next_fire_ms, 6000);
    assert_int_equal(x.fires, 2);
    store_fire *fires = NULL;
    assert_int_equal(store_schedule_fires(s, x.id, 10, &fires, &n, &err), 0);
    assert_int_equal(n, 2);
    assert_int_equal(fires[0].fire_ms, 5000);
    assert_string_equal(fires[0].job_id, "");
    assert_int_equal(fires[0].missed, 3);
    assert_int_equal(strncmp(fires[1].job_id, "job_", 4), 0);
    store_schedule_fires_free(fires, n);
    /* paused: nothing fires, nothing is due */
    assert_int_equal(store_schedule_set_paused(s, x.id, 1, 0, &err), 0);
    store_schedule *due = NULL;
    assert_int_equal(store_schedules_due(s, 1000000, &due, &n, &err), 0);
    assert_int_equal(n, 0);
    store_schedule_list_free(due, n);
    assert_int_equal(store_schedule_fire(s, x.id, 6000, 6000, 7000, 0, NULL, NULL, NULL, NULL,
                                         NULL, job, &err),
                     -1);
    chord_err_clear(&err);
    int64_t prev = -1;
    assert_int_equal(store_scheduler_alive(s, 42, &prev, &err), 0);
    assert_int_equal(prev, 0);
    assert_int_equal(store_scheduler_alive(s, 43, &prev, &err), 0);
    assert_int_equal(prev, 42);
    assert_int_equal(store_schedule_delete(s, x.id, &err), 0);
    assert_int_equal(store_schedule_delete(s, x.id, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);
    store_schedule_free(&x);
    store_close(s);
    scratch_remove(dir);
}

/* Pausing: a paused queued job leaves the queue's list (STORE_JOB_QUEUED) for the paused one,
 * keeps its seq (its place) when resumed; a finished job cannot be paused. */
static void test_job_pause(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    store *s = open_ok(dir);
    chord_err err = {0};
    store_job a, b, j;
    assert_int_equal(store_job_create(s, "a", "{}", &a, &err), 0);
    assert_int_equal(store_job_create(s, "b", "{}", &b, &err), 0);
    assert_int_equal(store_job_set_paused(s, a.id, 1, &j, &err), 0);
    assert_int_equal(j.paused, 1);
    store_job_free(&j);
    store_job *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_job_list(s, STORE_JOB_QUEUED, 0, 0, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(items[0].id, b.id);
    store_job_list_free(items, n);
    assert_int_equal(store_job_list(s, STORE_JOB_LIST_PAUSED, 0, 0, NULL, &items, &n, &total, &err),
                     0);
    assert_int_equal(n, 1);
    assert_string_equal(items[0].id, a.id);
    store_job_list_free(items, n);
    assert_int_equal(store_job_set_paused(s, a.id, 0, NULL, &err), 0);
    assert_int_equal(store_job_list(s, STORE_JOB_QUEUED, 0, 0, NULL, &items, &n, &total, &err), 0);
    assert_int_equal(n, 2);
    assert_string_equal(items[1].id, a.id); /* the oldest again: first in line */
    store_job_list_free(items, n);
    assert_int_equal(store_job_request_cancel(s, b.id, NULL, &err), 0);
    assert_int_equal(store_job_set_paused(s, b.id, 1, NULL, &err), -1);
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    store_job_free(&a);
    store_job_free(&b);
    store_close(s);
    scratch_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dataset_upload),
        cmocka_unit_test(test_dataset_abort_leaves_nothing),
        cmocka_unit_test(test_dataset_orphans_collected),
        cmocka_unit_test(test_checkpoint_commit),
        cmocka_unit_test(test_checkpoint_leftovers_removed_on_reopen),
        cmocka_unit_test(test_checkpoint_keep_last),
        cmocka_unit_test(test_truncate_after_drops_later_checkpoints),
        cmocka_unit_test(test_recovery_once_per_directory_open),
        cmocka_unit_test(test_checkpoint_pins_and_dataset_names),
        cmocka_unit_test(test_webhook_outbox),
        cmocka_unit_test(test_aliases_and_promotions),
        cmocka_unit_test(test_schedule_fires_once),
        cmocka_unit_test(test_job_pause),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
