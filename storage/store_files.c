/* store_files.c — the file stores under the data directory and their crash safety:
 *   checkpoints/<job>/step_<N>/   written as step_<N>.tmp/, fsynced, renamed, then the row;
 *   datasets/<id>.jsonl           streamed to <id>.jsonl.tmp (SHA-256 and lines counted on the
 *                                 way), fsynced, renamed, then the row.
 * A crash leaves at worst a .tmp or a file with no row; storage_collect_garbage removes both
 * when the data directory is next opened (store_open.c calls it once per directory open),
 * skipping paths another thread of this process is writing (the in-flight registry, kept here).
 * What a checkpoint contains is the caller's business.
 * Calls store_records.c (jobs, datasets) and store.c; only store_open.c calls into it. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "storage/store_internal.h"

#define MANIFEST_NAME "SHA256SUMS"

/* ---- in-flight registry ------------------------------------------------------------------- */

static pthread_mutex_t inflight_mutex = PTHREAD_MUTEX_INITIALIZER;
static char **inflight_paths;
static size_t inflight_n, inflight_cap;

void storage_inflight_lock(void) {
    pthread_mutex_lock(&inflight_mutex);
}
void storage_inflight_unlock(void) {
    pthread_mutex_unlock(&inflight_mutex);
}

int storage_inflight_has_locked(const char *path) {
    for (size_t i = 0; i < inflight_n; i++)
        if (strcmp(inflight_paths[i], path) == 0) return 1;
    return 0;
}

int storage_inflight_add(const char *path, chord_err *err) {
    int ret = 0;
    storage_inflight_lock();
    if (storage_inflight_has_locked(path)) {
        ret = chord_err_setc(err, CHORD_E_CONFLICT, "%s is being written already", path);
    } else {
        char **grown =
            chord_array_grow(inflight_paths, &inflight_cap, inflight_n + 1, sizeof *grown);
        if (grown) inflight_paths = grown;
        char *copy = grown ? strdup(path) : NULL;
        if (!copy)
            ret = chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        else
            inflight_paths[inflight_n++] = copy;
    }
    storage_inflight_unlock();
    return ret;
}

void storage_inflight_remove(const char *path) {
    storage_inflight_lock();
    for (size_t i = 0; i < inflight_n; i++)
        if (strcmp(inflight_paths[i], path) == 0) {
            free(inflight_paths[i]);
            inflight_paths[i] = inflight_paths[--inflight_n];
            break;
        }
    if (inflight_n == 0) { /* keep no allocation alive between uses (leak checkers) */
        free(inflight_paths);
        inflight_paths = NULL;
        inflight_cap = 0;
    }
    storage_inflight_unlock();
}

/* ---- small file helpers ------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int path_join(char out[STORE_PATH_MAX], chord_err *err,
                                                           const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(out, STORE_PATH_MAX, fmt, ap);
    va_end(ap);
    if (k < 0 || k >= STORE_PATH_MAX)
        return chord_err_setc(err, CHORD_E_IO, "path too long: %.80s…", out);
    return 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* "step_<digits>" → step; -1 otherwise. */
static int64_t parse_step_name(const char *name) {
    if (strncmp(name, "step_", 5) != 0 || !name[5]) return -1;
    int64_t v = 0;
    for (const char *p = name + 5; *p; p++) {
        if (*p < '0' || *p > '9' || v > INT64_MAX / 10 - 10) return -1;
        v = v * 10 + (*p - '0');
    }
    return v;
}

/* Writes all of data[len] to fd (retrying short writes). */
static int write_all(int fd, const void *data, size_t len, const char *path, chord_err *err) {
    const char *p = data;
    size_t off = 0;
    while (off < len) {
        ssize_t wrote = write(fd, p + off, len - off);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote < 0)
            return chord_err_setc(err, chord_errno_code(errno), "write %s: %s", path,
                                  strerror(errno));
        off += (size_t)wrote;
    }
    return 0;
}

/* Finishes a SHA-256 into 64 lowercase hex digits. */
static int sha256_final_hex(EVP_MD_CTX *md, char out[65]) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned dlen = 0;
    if (EVP_DigestFinal_ex(md, digest, &dlen) != 1 || dlen != 32) return -1;
    for (unsigned i = 0; i < 32; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
    return 0;
}

/* Calls visit for each entry of dir but . and .. (and, unless `hidden`, names starting with a
 * dot), with its name and full path; stops at the first visit that fails. A missing dir is
 * empty when missing_ok. */
typedef int (*entry_visitor)(store *s, const char *name, const char *path, void *ctx,
                             chord_err *err);
static int each_entry(store *s, const char *dir, int missing_ok, int hidden, entry_visitor visit,
                      void *ctx, chord_err *err) {
    DIR *d = opendir(dir);
    if (!d) {
        if (missing_ok && errno == ENOENT) return 0;
        return chord_err_setc(err, chord_errno_code(errno), "%s: %s", dir, strerror(errno));
    }
    int ret = 0;
    struct dirent *e;
    while (ret == 0 && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!hidden && e->d_name[0] == '.') continue;
        char path[STORE_PATH_MAX];
        ret = path_join(path, err, "%s/%s", dir, e->d_name);
        if (ret == 0) ret = visit(s, e->d_name, path, ctx, err);
    }
    closedir(d);
    return ret;
}

/* 1 in *exists when `sql` (SELECT 1 …) finds a row for `values`; key names it in errors. */
static int row_exists(store *s, const char *sql, storage_values values, const char *key,
                      int *exists, chord_err *err) {
    sqlite3_stmt *st;
    if (storage_prepare_bound(s, sql, values, &st, err)) return -1;
    int rc = sqlite3_step(st);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return storage_sqlerr(s, err, rc, "looking up %s", key);
    *exists = rc == SQLITE_ROW;
    return 0;
}

static int checkpoint_row_exists(store *s, const char *job_id, int64_t step, int *exists,
                                 chord_err *err) {
    return row_exists(s, "SELECT 1 FROM checkpoints WHERE job_id = ?1 AND step = ?2",
                      STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(step)), job_id, exists, err);
}

/* ---- garbage collection ------------------------------------------------------------------- */

/* Removes "<final>.tmp", left by an interrupted write, unless <final> is being written right
 * now. Caller holds the in-flight lock. */
static int remove_interrupted(const char *tmp_path, const char *what, chord_err *err) {
    char final[STORE_PATH_MAX];
    snprintf(final, sizeof final, "%.*s", (int)(strlen(tmp_path) - 4), tmp_path);
    if (storage_inflight_has_locked(final)) return 0;
    LOG_WARN("store: removing interrupted %s %s", what, tmp_path);
    return chord_rmtree(tmp_path, err);
}

/* An entry of checkpoints/<job>/ (ctx: the job id). */
static int gc_job_entry(store *s, const char *name, const char *path, void *ctx, chord_err *err) {
    if (ends_with(name, ".tmp")) return remove_interrupted(path, "checkpoint", err);
    int64_t step = parse_step_name(name);
    if (step < 0 || storage_inflight_has_locked(path)) return 0;
    int exists = 0;
    if (checkpoint_row_exists(s, ctx, step, &exists, err)) return -1;
    if (exists) return 0;
    LOG_WARN("store: removing checkpoint %s (no row: interrupted commit or cleanup)", path);
    return chord_rmtree(path, err);
}

/* An entry of checkpoints/. */
static int gc_checkpoints_entry(store *s, const char *name, const char *path, void *ctx,
                                chord_err *err) {
    (void)ctx;
    if (storage_check_id(name, "job", "dir", NULL) || !chord_is_dir(path)) return 0;
    return each_entry(s, path, 0, 0, gc_job_entry, (void *)name, err);
}

/* An entry of datasets/. */
static int gc_datasets_entry(store *s, const char *name, const char *path, void *ctx,
                             chord_err *err) {
    (void)ctx;
    if (ends_with(name, ".jsonl.tmp")) return remove_interrupted(path, "upload", err);
    if (!ends_with(name, ".jsonl") || storage_inflight_has_locked(path)) return 0;
    char id[STORE_ID_MAX];
    size_t len = strlen(name) - 6;
    if (len >= sizeof id) return 0;
    snprintf(id, sizeof id, "%.*s", (int)len, name);
    if (storage_check_id(id, "ds", "dataset", NULL)) return 0;
    int exists = 0;
    if (row_exists(s, "SELECT 1 FROM datasets WHERE id = ?1", STORAGE_VALUES(STORAGE_TEXT(id)), id,
                   &exists, err))
        return -1;
    if (exists) return 0;
    LOG_WARN("store: removing dataset file %s (no row: interrupted commit)", path);
    return chord_rmtree(path, err);
}

int storage_collect_garbage(store *s, chord_err *err) {
    char checkpoints[STORE_PATH_MAX], datasets[STORE_PATH_MAX];
    if (path_join(checkpoints, err, "%s/checkpoints", s->dir) ||
        path_join(datasets, err, "%s/datasets", s->dir))
        return -1;
    storage_inflight_lock();
    int ret = each_entry(s, checkpoints, 1, 0, gc_checkpoints_entry, NULL, err);
    if (ret == 0) ret = each_entry(s, datasets, 1, 0, gc_datasets_entry, NULL, err);
    storage_inflight_unlock();
    return ret;
}

/* ---- checkpoints -------------------------------------------------------------------------- */

void store_checkpoint_free(store_checkpoint *c) {
    if (!c) return;
    free(c->path);
    c->path = NULL;
}

static void free_checkpoint_item(void *item) {
    store_checkpoint_free(item);
}

void store_checkpoint_list_free(store_checkpoint *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_checkpoint_item);
}

#define CHECKPOINT_COLS "id, job_id, step, path, sha256, bytes, created_ms"

static int read_checkpoint(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    store_checkpoint *c = item;
    storage_col_copy(st, 0, c->id, sizeof c->id);
    storage_col_copy(st, 1, c->job_id, sizeof c->job_id);
    c->step = sqlite3_column_int64(st, 2);
    c->path = storage_col_path(s, st, 3);
    if (!c->path) return chord_err_setc(err, CHORD_E_INTERNAL, "checkpoint: out of memory");
    storage_col_copy(st, 4, c->sha256, sizeof c->sha256);
    c->bytes = sqlite3_column_int64(st, 5);
    c->created_ms = sqlite3_column_int64(st, 6);
    return 0;
}

int store_checkpoint_dir(store *s, const char *job_id, int64_t step, char out[STORE_PATH_MAX],
                         chord_err *err) {
    out[0] = '\0';
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    if (step < 0)
        return chord_err_setc(err, CHORD_E_INVALID, "checkpoint of job %s: negative step", job_id);
    return path_join(out, err, "%s/checkpoints/%s/step_%" PRId64, s->dir, job_id, step);
}

int store_checkpoint_begin(store *s, const char *job_id, int64_t step, char tmp_dir[STORE_PATH_MAX],
                           chord_err *err) {
    tmp_dir[0] = '\0';
    char final[STORE_PATH_MAX], tmp[STORE_PATH_MAX], parent[STORE_PATH_MAX];
    if (store_checkpoint_dir(s, job_id, step, final, err) || path_join(tmp, err, "%s.tmp", final) ||
        path_join(parent, err, "%s/checkpoints/%s", s->dir, job_id))
        return -1;
    store_job job;
    if (store_job_get(s, job_id, &job, err)) return chord_err_prefix(err, "checkpoint");
    store_job_free(&job);
    int exists = 0;
    if (checkpoint_row_exists(s, job_id, step, &exists, err)) return -1;
    if (exists)
        return chord_err_setc(err, CHORD_E_CONFLICT,
                              "job %s already has a checkpoint at step %" PRId64, job_id, step);
    if (storage_inflight_add(final, err)) return -1;
    /* A leftover temp or an orphan final directory (no row) is stale: start clean. */
    if (chord_mkdirs(parent, err) || chord_rmtree(tmp, err) || chord_rmtree(final, err) ||
        chord_mkdirs(tmp, err)) {
        storage_inflight_remove(final);
        return chord_err_prefix(err, "checkpoint of job %s step %" PRId64, job_id, step);
    }
    snprintf(tmp_dir, STORE_PATH_MAX, "%s", tmp);
    return 0;
}

void store_checkpoint_abort(store *s, const char *job_id, int64_t step) {
    char final[STORE_PATH_MAX], tmp[STORE_PATH_MAX];
    chord_err err = {0};
    if (store_checkpoint_dir(s, job_id, step, final, &err) || path_join(tmp, &err, "%s.tmp", final))
        return;
    if (chord_rmtree(tmp, &err)) LOG_WARN("store: checkpoint abort: %s", err.msg);
    storage_inflight_remove(final);
}

/* One file of a checkpoint being committed. */
typedef struct {
    char *rel;
    char sha256[65];
    int64_t bytes;
} ckpt_file;

typedef struct {
    ckpt_file *files;
    size_t n, cap;
    int64_t bytes;
} ckpt_walk;

static void ckpt_walk_free(ckpt_walk *w) {
    for (size_t i = 0; i < w->n; i++)
        free(w->files[i].rel);
    free(w->files);
    w->files = NULL;
}

/* Hashes and fsyncs one file. */
static int hash_and_sync(const char *path, char out[65], int64_t *bytes, chord_err *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return chord_err_setc(err, chord_errno_code(errno), "%s: %s", path, strerror(errno));
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char *buf = NULL;
    int ret = 0;
    if (!md || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        ret = chord_err_setc(err, CHORD_E_INTERNAL, "sha256 init failed");
        goto done;
    }
    enum { CHUNK = 1 << 16 };
    buf = malloc(CHUNK);
    if (!buf) {
        ret = chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
        goto done;
    }
    int64_t total = 0;
    for (;;) {
        ssize_t got = read(fd, buf, CHUNK);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0) {
            ret =
                chord_err_setc(err, chord_errno_code(errno), "read %s: %s", path, strerror(errno));
            goto done;
        }
        if (got == 0) break;
        if (EVP_DigestUpdate(md, buf, (size_t)got) != 1) {
            ret = chord_err_setc(err, CHORD_E_INTERNAL, "sha256 update failed");
            goto done;
        }
        total += got;
    }
    if (sha256_final_hex(md, out)) {
        ret = chord_err_setc(err, CHORD_E_INTERNAL, "sha256 final failed");
        goto done;
    }
    if (fsync(fd) != 0) {
        ret = chord_err_setc(err, chord_errno_code(errno), "fsync %s: %s", path, strerror(errno));
        goto done;
    }
    *bytes = total;
done:
    free(buf);
    EVP_MD_CTX_free(md);
    close(fd);
    return ret;
}

static int walk_checkpoint(const char *root, const char *rel, ckpt_walk *w, chord_err *err);

typedef struct {
    const char *root, *rel;
    ckpt_walk *w;
} walk_at;

/* An entry of root/rel: a directory is walked, a regular file hashed and fsynced. */
static int walk_entry(store *s, const char *name, const char *path, void *ctx, chord_err *err) {
    (void)s;
    walk_at *at = ctx;
    ckpt_walk *w = at->w;
    char sub[STORE_PATH_MAX];
    if (path_join(sub, err, "%s%s%s", at->rel, *at->rel ? "/" : "", name)) return -1;
    if (strpbrk(name, "\n\\"))
        return chord_err_setc(err, CHORD_E_INVALID, "%s: unsupported file name", path);
    struct stat st;
    if (lstat(path, &st) != 0)
        return chord_err_setc(err, chord_errno_code(errno), "%s: %s", path, strerror(errno));
    if (S_ISDIR(st.st_mode)) return walk_checkpoint(at->root, sub, w, err);
    if (!S_ISREG(st.st_mode))
        return chord_err_setc(err, CHORD_E_INVALID,
                              "%s: not a regular file or directory (links are not stored)", path);
    if (!*at->rel && strcmp(name, MANIFEST_NAME) == 0)
        return chord_err_setc(err, CHORD_E_INVALID, "%s: name reserved for the manifest", path);
    ckpt_file *grown = chord_array_grow(w->files, &w->cap, w->n + 1, sizeof *grown);
    if (!grown) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    w->files = grown;
    ckpt_file *f = &w->files[w->n];
    f->bytes = 0;
    f->rel = strdup(sub);
    if (!f->rel) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    w->n++;
    if (hash_and_sync(path, f->sha256, &f->bytes, err)) return -1;
    w->bytes += f->bytes;
    return 0;
}

/* Recursively hashes and fsyncs the files under root/rel, then fsyncs the directory itself. */
static int walk_checkpoint(const char *root, const char *rel, ckpt_walk *w, chord_err *err) {
    char dir[STORE_PATH_MAX];
    if (path_join(dir, err, "%s%s%s", root, *rel ? "/" : "", rel)) return -1;
    walk_at at = {.root = root, .rel = rel, .w = w};
    if (each_entry(NULL, dir, 0, 1, walk_entry, &at, err)) return -1;
    return chord_fsync_dir(dir, err);
}

static int compare_files(const void *a, const void *b) {
    return strcmp(((const ckpt_file *)a)->rel, ((const ckpt_file *)b)->rel);
}

/* Writes SHA256SUMS (sorted, sha256sum format) into dir and hashes it. */
static int write_manifest(const char *dir, ckpt_walk *w, char sha_out[65], chord_err *err) {
    if (w->n > 1) qsort(w->files, w->n, sizeof *w->files, compare_files);
    size_t cap = 1, len = 0;
    for (size_t i = 0; i < w->n; i++)
        cap += 64 + 2 + strlen(w->files[i].rel) + 1;
    char *text = malloc(cap);
    if (!text) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    text[0] = '\0';
    for (size_t i = 0; i < w->n; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s  %s\n", w->files[i].sha256,
                                w->files[i].rel);
    char path[STORE_PATH_MAX];
    int ret = path_join(path, err, "%s/%s", dir, MANIFEST_NAME);
    if (ret == 0) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd < 0) {
            ret = chord_err_setc(err, chord_errno_code(errno), "%s: %s", path, strerror(errno));
        } else {
            ret = write_all(fd, text, len, path, err);
            if (ret == 0 && fsync(fd) != 0)
                ret = chord_err_setc(err, chord_errno_code(errno), "fsync %s: %s", path,
                                     strerror(errno));
            if (close(fd) != 0 && ret == 0)
                ret = chord_err_setc(err, chord_errno_code(errno), "close %s: %s", path,
                                     strerror(errno));
        }
    }
    if (ret == 0) ret = chord_fsync_dir(dir, err);
    if (ret == 0) chord_sha256_hex(text, len, sha_out);
    free(text);
    return ret;
}

int store_checkpoint_commit(store *s, const char *job_id, int64_t step, store_checkpoint *out,
                            chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    char final[STORE_PATH_MAX], tmp[STORE_PATH_MAX], parent[STORE_PATH_MAX], rel[STORE_PATH_MAX];
    if (store_checkpoint_dir(s, job_id, step, final, err) || path_join(tmp, err, "%s.tmp", final) ||
        path_join(parent, err, "%s/checkpoints/%s", s->dir, job_id) ||
        path_join(rel, err, "checkpoints/%s/step_%" PRId64, job_id, step))
        return -1;
    storage_inflight_lock();
    int begun = storage_inflight_has_locked(final);
    storage_inflight_unlock();
    if (!begun)
        return chord_err_setc(err, CHORD_E_INVALID,
                              "checkpoint of job %s step %" PRId64 " was not begun", job_id, step);

    ckpt_walk w = {0};
    char sha[65];
    char id[STORE_ID_MAX];
    int renamed = 0;
    if (storage_new_id("ckpt", id, err) || walk_checkpoint(tmp, "", &w, err) ||
        write_manifest(tmp, &w, sha, err))
        goto fail;
    if (rename(tmp, final) != 0) {
        chord_err_setc(err, chord_errno_code(errno), "rename %s: %s", tmp, strerror(errno));
        goto fail;
    }
    renamed = 1;
    if (chord_fsync_dir(parent, err)) goto fail;

    if (storage_run(s,
                    "INSERT INTO checkpoints (id, job_id, step, path, sha256, bytes, created_ms) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(job_id), STORAGE_INT(step),
                                   STORAGE_TEXT(rel), STORAGE_TEXT(sha), STORAGE_INT(w.bytes),
                                   STORAGE_INT(store_now_ms())),
                    err, "recording checkpoint"))
        goto fail;
    ckpt_walk_free(&w);
    storage_inflight_remove(final);
    LOG_INFO("store: checkpoint %s step %" PRId64 " committed (%" PRId64 " bytes, %zu files)",
             job_id, step, w.bytes, w.n);
    if (out)
        return storage_get_one(s, "SELECT " CHECKPOINT_COLS " FROM checkpoints WHERE id = ?1", id,
                               read_checkpoint, out, "checkpoint", err);
    return 0;
fail:
    ckpt_walk_free(&w);
    {
        chord_err ignored = {0};
        if (chord_rmtree(renamed ? final : tmp, &ignored))
            LOG_WARN("store: cleaning failed checkpoint: %s", ignored.msg);
    }
    storage_inflight_remove(final);
    return chord_err_prefix(err, "checkpoint of job %s step %" PRId64, job_id, step);
}

int store_checkpoint_list(store *s, const char *job_id, store_checkpoint **items, size_t *n,
                          chord_err *err) {
    *items = NULL;
    *n = 0;
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    storage_list list = {.what = "listing checkpoints",
                         .job_id = job_id,
                         .rows_sql = "SELECT " CHECKPOINT_COLS
                                     " FROM checkpoints WHERE job_id = ?1 ORDER BY step",
                         .values = STORAGE_VALUES(STORAGE_TEXT(job_id)),
                         .item_size = sizeof **items,
                         .read = read_checkpoint,
                         .free_item = free_checkpoint_item};
    return storage_read_list(s, &list, (void **)items, n, NULL, err);
}

int store_checkpoint_latest(store *s, const char *job_id, store_checkpoint *out, int *found,
                            chord_err *err) {
    memset(out, 0, sizeof *out);
    *found = 0;
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    chord_err local = {0};
    if (storage_get_one(s,
                        "SELECT " CHECKPOINT_COLS " FROM checkpoints WHERE job_id = ?1 "
                        "ORDER BY step DESC LIMIT 1",
                        job_id, read_checkpoint, out, "checkpoint of job", &local)) {
        if (local.code == CHORD_E_NOT_FOUND) {
            /* No checkpoint yet; still tell an unknown job apart. */
            store_job job;
            if (store_job_get(s, job_id, &job, err)) return -1;
            store_job_free(&job);
            return 0;
        }
        if (err) *err = local;
        return -1;
    }
    *found = 1;
    return 0;
}

int store_checkpoint_keep_last(store *s, const char *job_id, size_t keep, size_t *removed,
                               chord_err *err) {
    if (removed) *removed = 0;
    if (storage_check_id(job_id, "job", "job", err)) return -1;
    store_checkpoint *old = NULL;
    size_t n = 0;
    if (storage_begin_write(s, err))
        return chord_err_prefix(err, "pruning checkpoints of %s", job_id);
    store_job_state state = STORE_JOB_QUEUED;
    sqlite3_stmt *st;
    if (storage_job_state_locked(s, job_id, &state, err) ||
        storage_prepare_bound(
            s,
            "SELECT * FROM (SELECT " CHECKPOINT_COLS " FROM checkpoints WHERE job_id = ?1 "
            "ORDER BY step DESC LIMIT -1 OFFSET ?2) WHERE id NOT IN "
            "(SELECT checkpoint_id FROM models WHERE checkpoint_id IS NOT NULL UNION "
            "SELECT base_checkpoint_id FROM jobs WHERE base_checkpoint_id IS NOT NULL)",
            STORAGE_VALUES(STORAGE_TEXT(job_id), STORAGE_INT(storage_offset(keep))), &st, err) ||
        storage_collect(s, st, sizeof *old, read_checkpoint, free_checkpoint_item, (void **)&old,
                        &n, "pruning checkpoints", err) ||
        storage_prepare(s, "DELETE FROM checkpoints WHERE id = ?1", &st, err))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        int rc = storage_rerun(st, STORAGE_VALUES(STORAGE_TEXT(old[i].id)));
        if (rc != SQLITE_OK) {
            sqlite3_finalize(st);
            storage_sqlerr(s, err, rc, "deleting checkpoint %s", old[i].id);
            goto fail;
        }
    }
    sqlite3_finalize(st);
    if (storage_commit(s, err)) goto fail;
    /* Rows are gone first: a crash now leaves directories with no row, removed when the data
     * directory is next opened. */
    int ret = 0;
    for (size_t i = 0; i < n; i++)
        if (ret == 0 && chord_rmtree(old[i].path, err)) ret = -1;
    if (ret == 0 && n > 0) {
        char parent[STORE_PATH_MAX];
        if (path_join(parent, err, "%s/checkpoints/%s", s->dir, job_id) ||
            chord_fsync_dir(parent, err))
            ret = -1;
    }
    if (removed) *removed = n;
    store_checkpoint_list_free(old, n);
    return ret;
fail:
    storage_rollback(s);
    store_checkpoint_list_free(old, n);
    return -1;
}

/* ---- dataset uploads ---------------------------------------------------------------------- */

struct store_upload {
    store *s;
    char id[STORE_ID_MAX];
    char *name;
    store_dataset_kind kind;
    int fd;
    EVP_MD_CTX *md;
    int64_t bytes, newlines;
    unsigned char last_byte;
    char final[STORE_PATH_MAX], tmp[STORE_PATH_MAX];
};

static void upload_free(store_upload *up, int remove_tmp) {
    if (up->fd >= 0) close(up->fd);
    if (remove_tmp && unlink(up->tmp) != 0 && errno != ENOENT)
        LOG_WARN("store: unlink %s: %s", up->tmp, strerror(errno));
    storage_inflight_remove(up->final);
    EVP_MD_CTX_free(up->md);
    free(up->name);
    free(up);
}

int store_dataset_upload_begin(store *s, const char *name, store_dataset_kind kind,
                               store_upload **out, chord_err *err) {
    *out = NULL;
    if (!name || !*name) return chord_err_setc(err, CHORD_E_INVALID, "dataset: empty name");
    if ((unsigned)kind > STORE_DATASET_EVAL)
        return chord_err_setc(err, CHORD_E_INVALID, "dataset %s: bad kind %d", name, (int)kind);
    store_upload *up = calloc(1, sizeof *up);
    if (!up) return chord_err_setc(err, CHORD_E_INTERNAL, "dataset upload: out of memory");
    up->s = s;
    up->fd = -1;
    up->kind = kind;
    char dir[STORE_PATH_MAX];
    up->name = strdup(name);
    if (!up->name) {
        free(up);
        return chord_err_setc(err, CHORD_E_INTERNAL, "dataset upload: out of memory");
    }
    if (storage_new_id("ds", up->id, err) || path_join(dir, err, "%s/datasets", s->dir) ||
        path_join(up->final, err, "%s/%s.jsonl", dir, up->id) ||
        path_join(up->tmp, err, "%s.tmp", up->final) || chord_mkdirs(dir, err)) {
        free(up->name);
        free(up);
        return chord_err_prefix(err, "dataset %s", name);
    }
    if (storage_inflight_add(up->final, err)) {
        free(up->name);
        free(up);
        return -1;
    }
    up->md = EVP_MD_CTX_new();
    if (!up->md || EVP_DigestInit_ex(up->md, EVP_sha256(), NULL) != 1) {
        upload_free(up, 0);
        return chord_err_setc(err, CHORD_E_INTERNAL, "dataset %s: sha256 init failed", name);
    }
    up->fd = open(up->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (up->fd < 0) {
        chord_err_setc(err, chord_errno_code(errno), "dataset %s: %s: %s", name, up->tmp,
                       strerror(errno));
        upload_free(up, 0);
        return -1;
    }
    *out = up;
    return 0;
}

int store_dataset_upload_write(store_upload *up, const void *data, size_t len, chord_err *err) {
    const unsigned char *p = data;
    if (len == 0) return 0;
    if (up->fd < 0)
        return chord_err_setc(err, CHORD_E_INVALID, "dataset %s: upload already failed", up->id);
    if (write_all(up->fd, p, len, up->tmp, err)) return chord_err_prefix(err, "dataset %s", up->id);
    if (EVP_DigestUpdate(up->md, p, len) != 1)
        return chord_err_setc(err, CHORD_E_INTERNAL, "dataset %s: sha256 update failed", up->id);
    for (const unsigned char *q = p, *end = p + len; (q = memchr(q, '\n', (size_t)(end - q))); q++)
        up->newlines++;
    up->bytes += (int64_t)len;
    up->last_byte = p[len - 1];
    return 0;
}

int64_t store_dataset_upload_bytes(const store_upload *up) {
    return up->bytes;
}

int store_dataset_upload_sha256(const store_upload *up, char out[65], chord_err *err) {
    EVP_MD_CTX *copy = EVP_MD_CTX_new();
    int ok = copy && EVP_MD_CTX_copy_ex(copy, up->md) == 1 && sha256_final_hex(copy, out) == 0;
    EVP_MD_CTX_free(copy);
    return ok ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "dataset %s: cannot hash", up->id);
}

void store_dataset_upload_abort(store_upload *up) {
    if (up) upload_free(up, 1);
}

int store_dataset_upload_commit(store_upload *up, store_dataset *out, chord_err *err) {
    if (out) memset(out, 0, sizeof *out);
    store *s = up->s;
    char id[STORE_ID_MAX];
    snprintf(id, sizeof id, "%s", up->id);
    int renamed = 0;
    if (up->bytes == 0) {
        chord_err_setc(err, CHORD_E_INVALID, "dataset %s: empty upload", up->name);
        goto fail;
    }
    int64_t lines = up->newlines + (up->last_byte != '\n');
    char sha[65];
    if (sha256_final_hex(up->md, sha)) {
        chord_err_setc(err, CHORD_E_INTERNAL, "dataset %s: sha256 final failed", up->name);
        goto fail;
    }
    if (fsync(up->fd) != 0) {
        chord_err_setc(err, chord_errno_code(errno), "dataset %s: fsync %s: %s", up->name, up->tmp,
                       strerror(errno));
        goto fail;
    }
    int rc_close = close(up->fd);
    up->fd = -1;
    if (rc_close != 0) {
        chord_err_setc(err, chord_errno_code(errno), "dataset %s: close %s: %s", up->name, up->tmp,
                       strerror(errno));
        goto fail;
    }
    if (rename(up->tmp, up->final) != 0) {
        chord_err_setc(err, chord_errno_code(errno), "dataset %s: rename %s: %s", up->name, up->tmp,
                       strerror(errno));
        goto fail;
    }
    renamed = 1;
    char dir[STORE_PATH_MAX], rel[STORE_PATH_MAX];
    if (path_join(dir, err, "%s/datasets", s->dir) || chord_fsync_dir(dir, err) ||
        path_join(rel, err, "datasets/%s.jsonl", id))
        goto fail;
    if (storage_run(s,
                    "INSERT INTO datasets (id, name, kind, path, line_count, bytes, sha256, "
                    "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(up->name),
                                   STORAGE_TEXT(store_dataset_kind_name(up->kind)),
                                   STORAGE_TEXT(rel), STORAGE_INT(lines), STORAGE_INT(up->bytes),
                                   STORAGE_TEXT(sha), STORAGE_INT(store_now_ms())),
                    err, "dataset %s: recording", up->name))
        goto fail;
    upload_free(up, 0);
    return out ? store_dataset_get(s, id, out, err) : 0;
fail:
    if (renamed && unlink(up->final) != 0 && errno != ENOENT)
        LOG_WARN("store: unlink %s: %s", up->final, strerror(errno));
    upload_free(up, 1);
    return -1;
}
