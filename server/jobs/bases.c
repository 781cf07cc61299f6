/* bases.c — the registry of shared base weights (bases.h). */
#include "server/jobs/bases.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/log.h"
#include "server/model/model.h"

typedef struct base_device {
    char name[32];
    ops_ctx *home;
    pthread_mutex_t load_mu; /* the home context is used by one thread at a time */
} base_device;

typedef struct base_entry {
    base_device *dev;
    char *key;
    model *m;    /* NULL while it is being loaded */
    int loading; /* a thread is loading it (waiters sleep on cv) */
    int users;
    int64_t bytes;
    struct base_entry *next;
} base_entry;

struct jobs_bases {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a load ended */
    base_device *devs;
    int n_devs;
    base_entry *head; /* in load order */
    bootstrap_bases iface;
};

static base_device *device_of(jobs_bases *b, const ops_ctx *ops) {
    for (int i = 0; i < b->n_devs; i++)
        if (b->devs[i].home->be == ops->be && b->devs[i].home->device_index == ops->device_index)
            return &b->devs[i];
    return NULL;
}

static base_entry *find(jobs_bases *b, const base_device *d, const char *key) {
    for (base_entry *e = b->head; e; e = e->next)
        if (e->dev == d && !strcmp(e->key, key)) return e;
    return NULL;
}

static void unlink_entry(jobs_bases *b, base_entry *e) {
    for (base_entry **pp = &b->head; *pp; pp = &(*pp)->next)
        if (*pp == e) {
            *pp = e->next;
            return;
        }
}

static void free_entry(base_entry *e) {
    if (e->m) {
        pthread_mutex_lock(&e->dev->load_mu);
        model_free(e->m);
        pthread_mutex_unlock(&e->dev->load_mu);
    }
    free(e->key);
    free(e);
}

static int acquire(void *user, ops_ctx *ops, const char *key,
                   int (*load)(void *ctx, ops_ctx *home, model **out, chord_err *err), void *ctx,
                   model **out, chord_err *err) {
    jobs_bases *b = user;
    *out = NULL;
    base_device *d = device_of(b, ops);
    if (!d)
        return chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: no device registered for %s",
                              ops->be->name);
    pthread_mutex_lock(&b->mu);
    for (;;) {
        base_entry *e = find(b, d, key);
        if (!e) break;
        if (e->loading) { /* another worker loads it: wait for that load, then look again */
            pthread_cond_wait(&b->cv, &b->mu);
            continue;
        }
        e->users++;
        *out = e->m;
        pthread_mutex_unlock(&b->mu);
        return 0;
    }
    base_entry *e = calloc(1, sizeof *e);
    if (e) e->key = strdup(key);
    if (!e || !e->key) {
        pthread_mutex_unlock(&b->mu);
        free(e);
        return chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: out of memory");
    }
    e->dev = d;
    e->loading = 1;
    base_entry **tail = &b->head;
    while (*tail) tail = &(*tail)->next;
    *tail = e;
    pthread_mutex_unlock(&b->mu);

    /* load outside the registry's lock (other bases stay usable), on the home context */
    model *m = NULL;
    pthread_mutex_lock(&d->load_mu);
    int rc = load(ctx, d->home, &m, err);
    if (rc == 0 && ops_sync(d->home) != 0) { /* the weights are on the device before any view */
        rc = chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: %s", ops_last_error(d->home));
        model_free(m);
        m = NULL;
    }
    pthread_mutex_unlock(&d->load_mu);

    pthread_mutex_lock(&b->mu);
    e->loading = 0;
    if (rc == 0) {
        e->m = m;
        e->users = 1;
        e->bytes = (int64_t)(m->num_params * sizeof(float) +
                             (size_t)m->cfg.head_dim / 2 * sizeof(float));
        *out = m;
        LOG_INFO("shared base on %s loaded (%.1f MB): %.200s", d->name, (double)e->bytes / 1e6,
                 key);
    } else {
        unlink_entry(b, e);
    }
    pthread_cond_broadcast(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (rc != 0) free_entry(e);
    return rc;
}

static void release(void *user, model *base) {
    jobs_bases *b = user;
    if (!base) return;
    pthread_mutex_lock(&b->mu);
    base_entry *e = b->head;
    while (e && e->m != base) e = e->next;
    if (e && --e->users > 0) e = NULL; /* still in use */
    else if (e) unlink_entry(b, e);
    pthread_mutex_unlock(&b->mu);
    if (e) {
        LOG_INFO("shared base on %s freed: %.200s", e->dev->name, e->key);
        free_entry(e);
    }
}

int jobs_bases_new(jobs_bases **out, chord_err *err) {
    *out = NULL;
    jobs_bases *b = calloc(1, sizeof *b);
    if (!b) return chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: out of memory");
    pthread_mutex_init(&b->mu, NULL);
    pthread_cond_init(&b->cv, NULL);
    b->iface = (bootstrap_bases){.user = b, .acquire = acquire, .release = release};
    *out = b;
    return 0;
}

int jobs_bases_add_device(jobs_bases *b, const char *device, ops_ctx *home, chord_err *err) {
    base_device *grown = realloc(b->devs, (size_t)(b->n_devs + 1) * sizeof *grown);
    if (!grown) return chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: out of memory");
    b->devs = grown;
    base_device *d = &b->devs[b->n_devs];
    memset(d, 0, sizeof *d);
    snprintf(d->name, sizeof d->name, "%s", device);
    d->home = home;
    pthread_mutex_init(&d->load_mu, NULL);
    b->n_devs++;
    return 0;
}

const bootstrap_bases *jobs_bases_iface(jobs_bases *b) { return &b->iface; }

int jobs_bases_list(jobs_bases *b, jobs_base_info **out, size_t *n, chord_err *err) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&b->mu);
    size_t count = 0;
    for (base_entry *e = b->head; e; e = e->next) count += e->m != NULL;
    jobs_base_info *items = count ? calloc(count, sizeof *items) : NULL;
    size_t i = 0;
    int oom = count && !items;
    for (base_entry *e = b->head; e && !oom; e = e->next) {
        if (!e->m) continue;
        snprintf(items[i].device, sizeof items[i].device, "%s", e->dev->name);
        items[i].key = strdup(e->key);
        items[i].bytes = e->bytes;
        items[i].users = e->users;
        oom = !items[i++].key;
    }
    pthread_mutex_unlock(&b->mu);
    if (oom) {
        jobs_bases_list_free(items, i);
        return chord_err_setc(err, CHORD_E_INTERNAL, "shared bases: out of memory");
    }
    *out = items;
    *n = count;
    return 0;
}

void jobs_bases_list_free(jobs_base_info *items, size_t n) {
    for (size_t i = 0; i < n; i++) free(items[i].key);
    free(items);
}

int jobs_bases_resident(jobs_bases *b, const char *device, const char *key) {
    if (!b || !device || !key) return 0;
    int hit = 0;
    pthread_mutex_lock(&b->mu);
    for (base_entry *e = b->head; e && !hit; e = e->next)
        hit = !strcmp(e->dev->name, device) && !strcmp(e->key, key);
    pthread_mutex_unlock(&b->mu);
    return hit;
}

int64_t jobs_bases_bytes(jobs_bases *b, const char *device) {
    if (!b || !device) return 0;
    int64_t sum = 0;
    pthread_mutex_lock(&b->mu);
    for (base_entry *e = b->head; e; e = e->next)
        if (e->m && !strcmp(e->dev->name, device)) sum += e->bytes;
    pthread_mutex_unlock(&b->mu);
    return sum;
}

void jobs_bases_free(jobs_bases *b) {
    if (!b) return;
    while (b->head) {
        base_entry *e = b->head;
        b->head = e->next;
        LOG_WARN("shared base on %s still had %d user(s) at shutdown", e->dev->name, e->users);
        free_entry(e);
    }
    for (int i = 0; i < b->n_devs; i++) pthread_mutex_destroy(&b->devs[i].load_mu);
    free(b->devs);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}
