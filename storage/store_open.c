/* store_open.c — the top of storage/: store_open and store_close, and the table of the data
 * directories this process has open, so that recovery runs once when a directory is opened and
 * not on every handle (the service takes one per request and per worker).
 *
 * A directory is opened by its first handle in the process and closed with its last one. The
 * first handle, before store_open returns it, runs storage_collect_garbage (store_files.c), as
 * SQLite rolls a hot journal back when a database is opened, not inside each request. Other
 * threads opening the same directory meanwhile wait for it, so no handle of a directory
 * is ever handed out before its recovery finished. Later handles only connect (store.c). Writes
 * in flight when a directory is opened again are safe: the in-flight registry (store_files.c) is
 * process-wide and the collector skips them.
 *
 * Calls store_files.c (the collector) and store.c (the connection); nothing calls back here. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/log.h"
#include "storage/store_internal.h"

typedef struct {
    char *dir;      /* absolute data directory */
    size_t handles; /* handles open on it in this process, >= 1 */
} open_directory;

/* Held while a directory is opened (its recovery included) and closed. */
static pthread_mutex_t directories_mutex = PTHREAD_MUTEX_INITIALIZER;
static open_directory *directories;
static size_t n_directories, cap_directories;

static open_directory *find_directory_locked(const char *dir) {
    for (size_t i = 0; i < n_directories; i++)
        if (strcmp(directories[i].dir, dir) == 0) return &directories[i];
    return NULL;
}

/* Counts a new handle of s->dir; the directory's first one recovers it first. */
static int directory_acquire(store *s, chord_err *err) {
    pthread_mutex_lock(&directories_mutex);
    open_directory *d = find_directory_locked(s->dir);
    if (d) {
        d->handles++;
        pthread_mutex_unlock(&directories_mutex);
        return 0;
    }
    open_directory *grown =
        chord_array_grow(directories, &cap_directories, n_directories + 1, sizeof *directories);
    if (grown) directories = grown;
    char *dir = grown ? strdup(s->dir) : NULL;
    if (!dir) {
        pthread_mutex_unlock(&directories_mutex);
        return chord_err_setc(err, CHORD_E_INTERNAL, "store: %s: out of memory", s->dir);
    }
    /* Leftovers that cannot be removed (permissions, a disk error) must not keep the server
     * down: they are logged, and checkpoint_begin clears its own step again anyway. */
    chord_err gc_err = {0};
    if (storage_collect_garbage(s, &gc_err))
        LOG_WARN("store: cleaning leftovers in %s: %s", s->dir, gc_err.msg);
    directories[n_directories++] = (open_directory){.dir = dir, .handles = 1};
    pthread_mutex_unlock(&directories_mutex);
    return 0;
}

static void directory_release(const char *dir) {
    pthread_mutex_lock(&directories_mutex);
    open_directory *d = find_directory_locked(dir);
    if (d && --d->handles == 0) {
        free(d->dir);
        *d = directories[--n_directories];
    }
    if (n_directories == 0) { /* keep no allocation alive between uses (leak checkers) */
        free(directories);
        directories = NULL;
        cap_directories = 0;
    }
    pthread_mutex_unlock(&directories_mutex);
}

int store_open_at_version(const char *data_dir, int version, store **out, chord_err *err) {
    *out = NULL;
    store *s = NULL;
    if (storage_connect(data_dir, version, &s, err)) return -1;
    if (directory_acquire(s, err)) {
        storage_disconnect(s);
        return -1;
    }
    *out = s;
    return 0;
}

int store_open(const char *data_dir, store **out, chord_err *err) {
    return store_open_at_version(data_dir, STORE_SCHEMA_VERSION, out, err);
}

void store_close(store *s) {
    if (!s) return;
    directory_release(s->dir);
    storage_disconnect(s);
}
