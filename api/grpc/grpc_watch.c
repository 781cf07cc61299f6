/* grpc_watch.c — WatchJob: server-streaming of a job's events (REST's Server-Sent Events) with
 * a fan-out, so that many watchers cost about as much as one. Every service watch polls SQLite
 * when the job moves; 100 watchers with a watch each cost ~0.2 ms of CPU per watcher per step
 * (measured: docs/benchmarks.md). Here the calls that watch the same (job, since_step) share
 * one feed (struct gfeed, grpc_internal.h): one service watch, each event polled and encoded
 * once, its bytes a refcounted slice that every subscriber sends at its own pace (one send in
 * flight per call). A watcher that falls FEED_MAX_LAG events behind is ended with
 * RESOURCE_EXHAUSTED rather than let memory grow.
 *
 * Lock order: gcall.mu → api_grpc.feeds_mu → gfeed.mu → (the service's hub) → api_grpc.pump_mu.
 *
 * Not here: the event contents (service.h), the call machinery (grpc_server.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/grpc/grpc_internal.h"
#include "api/grpc/pbjson.h"
#include "chord.pb-c.h"

/* A feed takes new subscribers while it still holds every event it produced. */
#define FEED_JOIN_EVENTS 256
#define FEED_MAX_LAG 10000

void api_grpc_feed_ref(gfeed *f) {
    atomic_fetch_add(&f->refs, 1);
}

/* Drops n references at once. */
static void feed_unref_n(gfeed *f, int n) {
    if (atomic_fetch_sub(&f->refs, n) != n) return;
    svc_watch_close(f->watch);
    for (size_t i = 0; i < f->end - f->base; i++)
        grpc_slice_unref(f->events[i]);
    free(f->events);
    free(f->final);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

void api_grpc_feed_unref(gfeed *f) {
    feed_unref_n(f, 1);
}

static void feed_notify(void *user) {
    api_grpc_feed_kick(user);
}

/* Once the feed takes no joiners, drops the events every subscriber has sent. (f->mu) */
static void feed_trim(gfeed *f) {
    if (f->end <= FEED_JOIN_EVENTS) return;
    size_t low = f->end;
    for (gcall *c = f->subs; c; c = c->next_sub)
        if (c->cursor < low) low = c->cursor;
    size_t drop = low - f->base;
    if (drop == 0) return;
    for (size_t i = 0; i < drop; i++)
        grpc_slice_unref(f->events[i]);
    memmove(f->events, f->events + drop, (f->end - low) * sizeof *f->events);
    memmove(f->final, f->final + drop, f->end - low);
    f->base = low;
}

static int feed_append(gfeed *f, grpc_slice sl, int final, chord_err *err) {
    size_t n = f->end - f->base;
    if (n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 64;
        grpc_slice *ev = realloc(f->events, cap * sizeof *ev);
        if (ev) f->events = ev;
        unsigned char *fin = ev ? realloc(f->final, cap) : NULL;
        if (fin) f->final = fin;
        if (!ev || !fin) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        f->cap = cap;
    }
    f->events[n] = sl;
    f->final[n] = (unsigned char) final;
    f->end++;
    return 0;
}

/* One service event as a packed chord.v1.JobEvent slice. Takes ev->data. */
static int encode_event(svc_event *ev, grpc_slice *out, chord_err *err) {
    static const char *const types[] = {"state", "step", "checkpoint"};
    static const char *const data_field[] = {"job", "metrics", "checkpoint"};
    json_t *doc =
        json_pack("{s:s, s:I, s:b, s:o}", "type", types[ev->type], "step", (json_int_t)ev->step,
                  "final", ev->final, data_field[ev->type], ev->data);
    ev->data = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    pbj_arena a = {0};
    ProtobufCMessage *m = NULL;
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = pbj_from_json(&chord__v1__job_event__descriptor, doc, &a, &m, err);
    if (rc == 0) rc = pbj_pack(m, &buf, &len, err);
    pbj_arena_free(&a);
    json_decref(doc);
    if (rc) return -1;
    *out = grpc_slice_new(buf, len, free);
    return 0;
}

static void feed_untable(gfeed *f) {
    api_grpc *g = f->g;
    int unref = 0;
    pthread_mutex_lock(&g->feeds_mu);
    if (f->in_table) {
        for (gfeed **p = &g->feeds; *p; p = &(*p)->next) {
            if (*p == f) {
                *p = f->next;
                break;
            }
        }
        f->in_table = 0;
        unref = 1;
    }
    pthread_mutex_unlock(&g->feeds_mu);
    if (unref) api_grpc_feed_unref(f);
}

void api_grpc_feed_pump(gfeed *f) {
    pthread_mutex_lock(&f->mu);
    int fresh = 0;
    while (f->watch && !f->done) {
        svc_event ev;
        chord_err err = {0};
        int rc = svc_watch_poll(f->watch, &ev, &err);
        grpc_slice sl = grpc_empty_slice();
        if (rc == 1 && encode_event(&ev, &sl, &err) == 0) {
            if (feed_append(f, sl, ev.final, &err) == 0) {
                fresh = 1;
                if (ev.final) f->done = 1;
                continue;
            }
            grpc_slice_unref(sl);
        }
        json_decref(ev.data);
        if (rc == 0) break;
        f->err = err; /* the subscribers end with it */
        if (!f->err.code) f->err.code = CHORD_E_INTERNAL;
        f->done = fresh = 1;
    }
    if (f->done && f->watch) {
        svc_watch_close(f->watch);
        f->watch = NULL;
    }
    if (fresh)
        for (gcall *c = f->subs; c; c = c->next_sub)
            gcall_kick(c);
    feed_trim(f);
    int retire = f->done;
    pthread_mutex_unlock(&f->mu);
    if (retire) feed_untable(f); /* nobody joins a finished feed */
}

int api_grpc_watch_open(gcall *c, const ProtobufCMessage *req_, chord_err *err) {
    const Chord__V1__WatchJobRequest *r = (const Chord__V1__WatchJobRequest *)req_;
    api_grpc *g = c->g;
    if (!r->id || !*r->id) return chord_err_set(err, "id: required");
    if (r->since_step < 0) return chord_err_set(err, "since_step: must be an integer >= 0");
    if (c->closed) return chord_err_setc(err, CHORD_E_UNAVAILABLE, "the call is over");
    gfeed *f = NULL;
    pthread_mutex_lock(&g->feeds_mu);
    for (gfeed *it = g->feeds; it && !f; it = it->next) {
        if (it->since_step != r->since_step || strcmp(it->job_id, r->id) != 0) continue;
        pthread_mutex_lock(&it->mu);
        if (!it->done && it->base == 0 && it->end <= FEED_JOIN_EVENTS) {
            f = it;
            api_grpc_feed_ref(f); /* the subscriber's */
            c->cursor = 0;        /* the whole history first */
            c->next_sub = f->subs;
            f->subs = c;
        }
        pthread_mutex_unlock(&it->mu);
    }
    if (!f) {
        if (strlen(r->id) >= sizeof f->job_id) {
            pthread_mutex_unlock(&g->feeds_mu);
            return chord_err_setc(err, CHORD_E_NOT_FOUND, "job %.64s... not found", r->id);
        }
        f = calloc(1, sizeof *f);
        if (!f) {
            pthread_mutex_unlock(&g->feeds_mu);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        f->g = g;
        atomic_init(&f->refs, 2); /* the table's and the subscriber's */
        snprintf(f->job_id, sizeof f->job_id, "%s", r->id);
        f->since_step = r->since_step;
        pthread_mutex_init(&f->mu, NULL);
        if (svc_watch_open(g->s, r->id, r->since_step, feed_notify, f, &f->watch, err)) {
            pthread_mutex_unlock(&g->feeds_mu);
            pthread_mutex_destroy(&f->mu);
            free(f);
            return -1;
        }
        f->subs = c;
        c->cursor = 0;
        f->in_table = 1;
        f->next = g->feeds;
        g->feeds = f;
        api_grpc_feed_kick(f); /* the first poll: the current state */
    }
    pthread_mutex_unlock(&g->feeds_mu);
    c->feed = f;
    return 0;
}

void api_grpc_watch_leave(gcall *c) {
    gfeed *f = c->feed;
    api_grpc *g = c->g;
    c->feed = NULL;
    int untable = 0;
    pthread_mutex_lock(&g->feeds_mu);
    pthread_mutex_lock(&f->mu);
    for (gcall **p = &f->subs; *p; p = &(*p)->next_sub) {
        if (*p == c) {
            *p = c->next_sub;
            break;
        }
    }
    c->next_sub = NULL;
    if (!f->subs) {
        /* nobody listens: stop polling; a later watcher starts a new feed */
        if (f->watch) {
            svc_watch_close(f->watch);
            f->watch = NULL;
        }
        f->done = 1;
        if (f->in_table) {
            for (gfeed **p = &g->feeds; *p; p = &(*p)->next) {
                if (*p == f) {
                    *p = f->next;
                    break;
                }
            }
            f->in_table = 0;
            untable = 1;
        }
    } else {
        feed_trim(f);
    }
    pthread_mutex_unlock(&f->mu);
    pthread_mutex_unlock(&g->feeds_mu);
    feed_unref_n(f, 1 + untable); /* the subscriber's, and the table's when it left it */
}

void api_grpc_watch_pump(gcall *c) {
    if (c->done || c->send_busy || c->closed || !c->feed) return;
    if (atomic_load(&c->g->ending)) {
        gcall_finish(c, GRPC_STATUS_UNAVAILABLE, "server is stopping", NULL, 0);
        return;
    }
    gfeed *f = c->feed;
    pthread_mutex_lock(&f->mu);
    if (f->end - c->cursor > FEED_MAX_LAG) {
        size_t lag = f->end - c->cursor;
        pthread_mutex_unlock(&f->mu);
        char msg[160];
        snprintf(msg, sizeof msg,
                 "this watcher fell %zu events behind; watch again with since_step", lag);
        gcall_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL, 0);
        return;
    }
    if (c->cursor < f->end) {
        grpc_slice sl = grpc_slice_ref(f->events[c->cursor - f->base]);
        int final = f->final[c->cursor - f->base];
        c->cursor++;
        pthread_mutex_unlock(&f->mu);
        if (final)
            gcall_finish_slice(c, GRPC_STATUS_OK, NULL, sl);
        else if (gcall_send_slice(c, sl))
            gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot send", NULL, 0);
        grpc_slice_unref(sl);
        return;
    }
    if (f->done && f->err.code) {
        chord_err err = f->err;
        pthread_mutex_unlock(&f->mu);
        gcall_fail(c, &err);
        return;
    }
    pthread_mutex_unlock(&f->mu); /* nothing new: the feed kicks us when there is */
}
