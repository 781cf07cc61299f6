/* grpc_watch.c — WatchJob: server-streaming of a job's events (REST's Server-Sent Events). The
 * fan-out is the service's (service.h: one feed per (job, since_step), polled once per change
 * by the service's watch thread); this file is only the transport's side of it: the codec that
 * packs each event into a chord.v1.JobEvent once per feed (a refcounted slice every subscriber
 * sends), and the pump that sends the next event of a call's watch, one send in flight per call.
 * A watcher that falls SVC_WATCH_MAX_LAG events behind is ended with RESOURCE_EXHAUSTED (the
 * service's CHORD_E_TOO_LARGE) rather than let memory grow.
 *
 * Lock order: gcall.mu → (the service's hub and feed locks) → api_grpc.pump_mu (gcall_kick,
 * the watch's notify).
 *
 * Not here: the event contents and the fan-out (service.h), the call machinery
 * (grpc_server.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/grpc/grpc_internal.h"
#include "api/grpc/pbjson.h"
#include "chord.pb-c.h"

/* One service event as a packed chord.v1.JobEvent: a malloc'd grpc_slice (the codec's). */
static void *encode_event(const svc_event *ev, chord_err *err) {
    static const char *const types[] = {"state", "step", "checkpoint"};
    static const char *const data_field[] = {"job", "metrics", "checkpoint"};
    json_t *doc =
        json_pack("{s:s, s:I, s:b, s:O}", "type", types[ev->type], "step", (json_int_t)ev->step,
                  "final", ev->final, data_field[ev->type], ev->data);
    if (!doc) {
        chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        return NULL;
    }
    pbj_arena a = {0};
    ProtobufCMessage *m = NULL;
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = pbj_from_json(&chord__v1__job_event__descriptor, doc, &a, &m, err);
    if (rc == 0) rc = pbj_pack(m, &buf, &len, err);
    pbj_arena_free(&a);
    json_decref(doc);
    grpc_slice *sl = rc == 0 ? malloc(sizeof *sl) : NULL;
    if (!sl) {
        if (rc == 0) chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        free(buf);
        return NULL;
    }
    *sl = grpc_slice_new(buf, len, free);
    return sl;
}

static void release_event(void *encoded) {
    grpc_slice *sl = encoded;
    grpc_slice_unref(*sl);
    free(sl);
}

static const svc_codec grpc_codec = {encode_event, release_event};

int api_grpc_watch_open(gcall *c, const ProtobufCMessage *req_, chord_err *err) {
    const Chord__V1__WatchJobRequest *r = (const Chord__V1__WatchJobRequest *)req_;
    if (!r->id || !*r->id) return chord_err_set(err, "id: required");
    if (r->since_step < 0) return chord_err_set(err, "since_step: must be an integer >= 0");
    if (c->closed) return chord_err_setc(err, CHORD_E_UNAVAILABLE, "the call is over");
    return svc_watch_open(c->g->s, r->id, r->since_step, &grpc_codec, gcall_notify, c, &c->watch,
                          err);
}

void api_grpc_watch_leave(gcall *c) {
    svc_watch_close(c->watch); /* no gcall_notify after this */
    c->watch = NULL;
}

void api_grpc_watch_pump(gcall *c) {
    if (c->done || c->send_busy || c->closed || !c->watch) return;
    if (atomic_load(&c->g->ending)) {
        gcall_finish(c, GRPC_STATUS_UNAVAILABLE, "server is stopping", NULL, 0);
        return;
    }
    const void *encoded = NULL;
    int final = 0;
    chord_err err = {0};
    int rc = svc_watch_next(c->watch, &encoded, &final, &err);
    if (rc < 0) {
        gcall_fail(c, &err);
        return;
    }
    if (rc == 0) return; /* nothing new: the watch's notify kicks the call when there is */
    /* borrowed until the next svc_watch_next of this watch, which only this call makes (with
     * c->mu held): the send takes its own reference */
    grpc_slice sl = *(const grpc_slice *)encoded;
    if (final)
        gcall_finish_slice(c, GRPC_STATUS_OK, NULL, sl);
    else if (gcall_send_slice(c, sl))
        gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot send", NULL, 0);
}
