/* grpc_server.c — the gRPC transport's machinery on the C core: one completion queue drained
 * by worker threads, one pending accept per registered method plus a generic one that answers
 * UNIMPLEMENTED, per-call state machines whose tags hold references on the call,
 * RECV_CLOSE_ON_SERVER started as soon as a call arrives (so a cancelled or timed-out call is
 * noticed), one send in flight per stream, a pump thread that streams watch events when the
 * service notifies, and the shutdown order (stop accepting, end streams, grace, cancel,
 * drain, destroy).
 *
 * Not here: what a method does (grpc_methods.c), JSON ↔ protobuf (pbjson.c). */
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/grpc/grpc_internal.h"
#include "api/grpc/pbjson.h"
#include "server/base/log.h"

/* ThreadSanitizer cannot see the gRPC core's own synchronisation (Debian's libgrpc is not built
 * with it): handing a tag to the core (a batch, an accept, the shutdown notice) and the
 * completion queue returning it are one happens-before edge, which these annotations tell
 * TSan, so that it still checks everything our threads share. Nothing in other builds. */
#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define TAG_HANDED_OVER(tag) __tsan_release(tag)
#define TAG_RETURNED(tag) __tsan_acquire(tag)
#else
#define TAG_HANDED_OVER(tag) ((void)(tag))
#define TAG_RETURNED(tag) ((void)(tag))
#endif

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

grpc_status_code api_grpc_status_of(int chord_code) {
    switch (chord_code) {
    case CHORD_E_INVALID:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case CHORD_E_NOT_FOUND:
        return GRPC_STATUS_NOT_FOUND;
    case CHORD_E_CONFLICT:
        return GRPC_STATUS_FAILED_PRECONDITION;
    case CHORD_E_TOO_LARGE:
    case CHORD_E_NO_SPACE:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case CHORD_E_UNAVAILABLE:
        return GRPC_STATUS_UNAVAILABLE;
    case SVC_E_BUSY:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case SVC_E_KEY_REUSED:
        return GRPC_STATUS_ALREADY_EXISTS;
    default:
        return GRPC_STATUS_INTERNAL;
    }
}

/* ---- call lifetime ------------------------------------------------------------------------ */

static void call_ref(gcall *c) {
    atomic_fetch_add(&c->refs, 1);
}

static void call_unref(gcall *c) {
    if (atomic_fetch_sub(&c->refs, 1) != 1) return;
    /* no batch in flight, not queued, not registered: nobody else can reach c */
    svc_upload_abort(c->up); /* (on_close left the watch; a watch open here would be a bug) */
    svc_watch_close(c->watch);
    if (c->payload) grpc_byte_buffer_destroy(c->payload);
    if (c->send_buf) grpc_byte_buffer_destroy(c->send_buf);
    if (c->has_status_details) grpc_slice_unref(c->status_details);
    grpc_metadata_array_destroy(&c->md);
    if (!c->m) grpc_call_details_destroy(&c->details);
    if (c->call) grpc_call_unref(c->call);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* Starts a batch whose completion runs t->fn; the batch holds a reference. */
static int start_batch(gcall *c, const grpc_op *ops, size_t n, gtag *t) {
    call_ref(c);
    TAG_HANDED_OVER(t);
    grpc_call_error e = grpc_call_start_batch(c->call, ops, n, t, NULL);
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("grpc: %s: start_batch failed (%d)", c->m ? c->m->path : "?", (int)e);
        atomic_fetch_sub(&c->refs, 1); /* the caller still holds one */
        return -1;
    }
    return 0;
}

static void op_init(grpc_op *op, grpc_op_type type) {
    memset(op, 0, sizeof *op);
    op->op = type;
}

/* A slice over a malloc'd buffer (owned by the slice from now on); the empty slice for NULL. */
static grpc_slice slice_of(unsigned char *buf, size_t len) {
    return buf ? grpc_slice_new(buf, len, free) : grpc_empty_slice();
}

static void on_finish(gcall *c, int ok) {
    (void)ok;
    pthread_mutex_lock(&c->mu);
    if (c->send_buf) {
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
    }
    pthread_mutex_unlock(&c->mu);
}

void gcall_finish(gcall *c, grpc_status_code code, const char *msg, unsigned char *buf,
                  size_t len) {
    if (!buf) {
        gcall_finish_slice(c, code, msg, grpc_empty_slice());
        return;
    }
    grpc_slice sl = slice_of(buf, len);
    gcall_finish_slice(c, code, msg, sl);
    grpc_slice_unref(sl);
}

/* with_msg: send msg_slice as the last message. */
static void finish_impl(gcall *c, grpc_status_code code, const char *msg, int with_msg,
                        grpc_slice msg_slice) {
    if (c->done) return;
    c->done = 1;
    c->status = (int)code;
    grpc_op ops[3];
    size_t n = 0;
    if (!c->md_sent) {
        op_init(&ops[n++], GRPC_OP_SEND_INITIAL_METADATA);
        c->md_sent = 1;
    }
    if (with_msg && !c->send_busy) {
        c->send_buf = grpc_raw_byte_buffer_create(&msg_slice, 1);
        op_init(&ops[n], GRPC_OP_SEND_MESSAGE);
        ops[n++].data.send_message.send_message = c->send_buf;
    }
    op_init(&ops[n], GRPC_OP_SEND_STATUS_FROM_SERVER);
    ops[n].data.send_status_from_server.status = code;
    if (code != GRPC_STATUS_OK && msg) {
        c->status_details = grpc_slice_from_copied_string(msg);
        c->has_status_details = 1;
        ops[n].data.send_status_from_server.status_details = &c->status_details;
    }
    n++;
    start_batch(c, ops, n, &c->tag_finish);
    svc_record_request(c->g->s, "grpc", c->m ? c->m->path : "unknown", "POST", (int)code,
                       now_s() - c->started);
}

void gcall_finish_slice(gcall *c, grpc_status_code code, const char *msg, grpc_slice msg_slice) {
    /* an empty slice is no message (every response here has at least one field set, except
       an empty list: an empty message is sent as one anyway when code is OK) */
    finish_impl(c, code, msg, code == GRPC_STATUS_OK, msg_slice);
}

void gcall_fail(gcall *c, const chord_err *err) {
    gcall_finish(c, api_grpc_status_of(err->code), err->msg[0] ? err->msg : "internal error", NULL,
                 0);
}

static void on_send(gcall *c, int ok) {
    pthread_mutex_lock(&c->mu);
    c->send_busy = 0;
    if (c->send_buf) {
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
    }
    /* not ok: the call is gone (cancelled, deadline); on_close cleans up */
    if (ok && !c->done && c->m && c->m->pump) c->m->pump(c);
    pthread_mutex_unlock(&c->mu);
}

int gcall_send(gcall *c, unsigned char *buf, size_t len) {
    grpc_slice sl = slice_of(buf, len);
    int rc = gcall_send_slice(c, sl);
    grpc_slice_unref(sl);
    return rc;
}

int gcall_send_slice(gcall *c, grpc_slice msg) {
    if (c->done || c->send_busy) return -1;
    grpc_op ops[2];
    size_t n = 0;
    if (!c->md_sent) {
        op_init(&ops[n++], GRPC_OP_SEND_INITIAL_METADATA);
        c->md_sent = 1;
    }
    c->send_buf = grpc_raw_byte_buffer_create(&msg, 1);
    op_init(&ops[n], GRPC_OP_SEND_MESSAGE);
    ops[n++].data.send_message.send_message = c->send_buf;
    c->send_busy = 1;
    if (start_batch(c, ops, n, &c->tag_send)) {
        c->send_busy = 0;
        grpc_byte_buffer_destroy(c->send_buf);
        c->send_buf = NULL;
        return -1;
    }
    return 0;
}

static void on_recv(gcall *c, int ok) {
    pthread_mutex_lock(&c->mu);
    grpc_byte_buffer *bb = c->payload;
    c->payload = NULL;
    if (!ok || c->done || (c->closed && c->cancelled)) {
        /* the call is over: nothing more arrives, nothing is committed */
        if (bb) grpc_byte_buffer_destroy(bb);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (!bb) {
        c->m->message(c, NULL, 0); /* the client half-closed: the end of the stream */
    } else {
        grpc_byte_buffer_reader rd;
        if (!grpc_byte_buffer_reader_init(&rd, bb)) {
            gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot read the message", NULL, 0);
        } else {
            grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
            grpc_byte_buffer_reader_destroy(&rd);
            /* an empty message (every field default) is a message, not the end */
            static const unsigned char empty[1];
            const unsigned char *p = GRPC_SLICE_LENGTH(sl) ? GRPC_SLICE_START_PTR(sl) : empty;
            c->m->message(c, p, GRPC_SLICE_LENGTH(sl));
            grpc_slice_unref(sl);
        }
        grpc_byte_buffer_destroy(bb);
    }
    pthread_mutex_unlock(&c->mu);
}

int gcall_recv(gcall *c) {
    grpc_op op;
    op_init(&op, GRPC_OP_RECV_MESSAGE);
    op.data.recv_message.recv_message = &c->payload;
    return start_batch(c, &op, 1, &c->tag_recv);
}

/* The call is over (status sent, or cancelled by the client, its deadline or the server). */
static void on_close(gcall *c, int ok) {
    (void)ok;
    pthread_mutex_lock(&c->mu);
    c->closed = 1;
    if (c->counted) {
        c->counted = 0;
        atomic_fetch_sub(&c->g->active, 1);
    }
    if (c->cancelled && !c->done) {
        c->done = 1; /* no status goes out on a cancelled call */
        c->status = GRPC_STATUS_CANCELLED;
        svc_record_request(c->g->s, "grpc", c->m ? c->m->path : "unknown", "POST",
                           GRPC_STATUS_CANCELLED, now_s() - c->started);
    }
    /* a cancelled upload leaves nothing stored; a watch stops notifying */
    if (c->up) {
        svc_upload_abort(c->up);
        c->up = NULL;
    }
    if (c->watch) api_grpc_watch_leave(c);
    pthread_mutex_unlock(&c->mu);
    api_grpc *g = c->g;
    int registered = 0;
    pthread_mutex_lock(&g->streams_mu);
    if (c->in_streams) {
        for (gcall **p = &g->streams; *p; p = &(*p)->next_stream) {
            if (*p == c) {
                *p = c->next_stream;
                break;
            }
        }
        c->in_streams = 0;
        registered = 1;
    }
    pthread_mutex_unlock(&g->streams_mu);
    if (registered) call_unref(c);
}

void gcall_register_stream(gcall *c) {
    api_grpc *g = c->g;
    pthread_mutex_lock(&g->streams_mu);
    if (!c->in_streams && !c->closed) {
        call_ref(c);
        c->in_streams = 1;
        c->next_stream = g->streams;
        g->streams = c;
    }
    pthread_mutex_unlock(&g->streams_mu);
}

/* ---- the pump ----------------------------------------------------------------------------- */

void gcall_kick(gcall *c) {
    api_grpc *g = c->g;
    pthread_mutex_lock(&g->pump_mu);
    if (!c->pump_queued) {
        c->pump_queued = 1;
        call_ref(c);
        c->next_pump = g->pump_head;
        g->pump_head = c;
        pthread_cond_signal(&g->pump_cv);
    }
    pthread_mutex_unlock(&g->pump_mu);
}

void gcall_notify(void *user) {
    gcall_kick(user);
}

static void *pump_main(void *arg) {
    api_grpc *g = arg;
    pthread_setname_np(pthread_self(), "grpc-pump");
    pthread_mutex_lock(&g->pump_mu);
    for (;;) {
        while (!g->pump_head && !g->pump_stop)
            pthread_cond_wait(&g->pump_cv, &g->pump_mu);
        int stop = g->pump_stop;
        gcall *c = g->pump_head;
        if (!c) break; /* stopping and drained */
        /* one at a time: a kick may requeue c (and relink next_pump) as soon as it is out */
        g->pump_head = c->next_pump;
        c->next_pump = NULL;
        c->pump_queued = 0;
        pthread_mutex_unlock(&g->pump_mu);
        if (!stop) {
            pthread_mutex_lock(&c->mu);
            if (!c->done && c->m && c->m->pump) c->m->pump(c);
            pthread_mutex_unlock(&c->mu);
        }
        call_unref(c);
        pthread_mutex_lock(&g->pump_mu);
    }
    pthread_mutex_unlock(&g->pump_mu);
    return NULL;
}

static void kick_streams(api_grpc *g) {
    pthread_mutex_lock(&g->streams_mu);
    for (gcall *c = g->streams; c; c = c->next_stream)
        gcall_kick(c);
    pthread_mutex_unlock(&g->streams_mu);
}

/* ---- accepting calls ---------------------------------------------------------------------- */

static void on_new(gcall *c, int ok);

/* Arms one accept for method index mi (-1: any unregistered method). */
static void request_call(api_grpc *g, int mi) {
    pthread_mutex_lock(&g->state_mu);
    int stopping = g->shutdown_started;
    pthread_mutex_unlock(&g->state_mu);
    if (stopping) return;
    gcall *c = calloc(1, sizeof *c);
    if (!c) {
        LOG_ERROR("grpc: out of memory accepting calls");
        return;
    }
    c->g = g;
    c->m = mi >= 0 ? &api_grpc_methods[mi] : NULL;
    atomic_init(&c->refs, 1); /* the accept's */
    pthread_mutex_init(&c->mu, NULL);
    c->health_sent = -1;
    c->tag_new = (gtag){c, on_new};
    c->tag_close = (gtag){c, on_close};
    c->tag_send = (gtag){c, on_send};
    c->tag_recv = (gtag){c, on_recv};
    c->tag_finish = (gtag){c, on_finish};
    grpc_metadata_array_init(&c->md);
    grpc_call_error e;
    /* c is the completion's from the hand-over on: nothing of it is read here after that */
    if (c->m) {
        grpc_byte_buffer **payload = c->m->kind != GM_CLIENT_STREAM ? &c->payload : NULL;
        TAG_HANDED_OVER(&c->tag_new);
        e = grpc_server_request_registered_call(g->server, g->handles[mi], &c->call, &c->deadline,
                                                &c->md, payload, g->cq, g->cq, &c->tag_new);
    } else {
        grpc_call_details_init(&c->details);
        TAG_HANDED_OVER(&c->tag_new);
        e = grpc_server_request_call(g->server, &c->call, &c->details, &c->md, g->cq, g->cq,
                                     &c->tag_new);
    }
    if (e != GRPC_CALL_OK) {
        LOG_ERROR("grpc: request_call failed (%d)", (int)e);
        call_unref(c);
    }
}

/* The call's `authorization` metadata value, or NULL. */
static const char *authorization_of(const gcall *c, size_t *len) {
    for (size_t i = 0; i < c->md.count; i++) {
        if (!grpc_slice_str_cmp(c->md.metadata[i].key, "authorization")) {
            *len = GRPC_SLICE_LENGTH(c->md.metadata[i].value);
            return (const char *)GRPC_SLICE_START_PTR(c->md.metadata[i].value);
        }
    }
    *len = 0;
    return NULL;
}

/* The call's `authorization` metadata against what its method needs (an unknown method: a read
 * token, so that only callers with a token learn what is served). 0, or -1 after finishing the
 * call with UNAUTHENTICATED / PERMISSION_DENIED. */
static int authorize(gcall *c) {
    const api_auth *auth = c->g->auth;
    if (!auth) return 0;
    size_t len = 0;
    const char *value = authorization_of(c, &len);
    const char *reason = NULL;
    api_auth_result r =
        api_auth_check(auth, value, len, c->m ? c->m->need : API_SCOPE_READ, NULL, &reason);
    if (r == API_AUTH_OK) return 0;
    gcall_finish(
        c, r == API_AUTH_FORBIDDEN ? GRPC_STATUS_PERMISSION_DENIED : GRPC_STATUS_UNAUTHENTICATED,
        reason, NULL, 0);
    return -1;
}

static int is_health(const gmethod *m) {
    return m->need == API_SCOPE_NONE; /* grpc.health.v1 only (check_methods) */
}

/* The server's limits on calls in progress and on each client's rate (health is exempt). 0, or
 * -1 after finishing the call with RESOURCE_EXHAUSTED. */
static int within_limits(gcall *c) {
    api_grpc *g = c->g;
    char msg[256];
    if (g->rate) {
        size_t alen = 0;
        const char *authz = g->auth ? authorization_of(c, &alen) : NULL;
        char addr[128] = "";
        if (!authz) { /* per address, as REST writes it: "ipv4:127.0.0.1:5555" -> "127.0.0.1",
                         "ipv6:[::1]:5555" -> "::1" */
            char *peer = grpc_call_get_peer(c->call);
            if (peer) {
                int inet = !strncmp(peer, "ipv4:", 5) || !strncmp(peer, "ipv6:", 5);
                const char *p = inet ? peer + 5 : peer; /* else (unix:...) the whole peer */
                if (*p == '[') p++;
                snprintf(addr, sizeof addr, "%s", p);
                char *port = strrchr(addr, ':');
                if (inet && port) *port = '\0';
                size_t n = strlen(addr);
                if (n && addr[n - 1] == ']') addr[n - 1] = '\0';
                gpr_free(peer);
            }
        }
        double retry = 0;
        if (!api_rate_take(g->rate, api_rate_key(authz, alen, addr), &retry)) {
            api_rate_message(g->rate, retry, msg, sizeof msg);
            gcall_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL, 0);
            return -1;
        }
    }
    int now = atomic_fetch_add(&g->active, 1) + 1;
    c->counted = 1;
    if (now > g->max_calls) {
        snprintf(msg, sizeof msg,
                 "too many calls: %d are in progress, the server's limit (--grpc-max-streams %d); "
                 "retry later",
                 now - 1, g->max_calls);
        gcall_finish(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg, NULL, 0);
        return -1;
    }
    return 0;
}

static void start_call(gcall *c) {
    /* first, so a client that goes away (cancel, deadline, disconnect) is noticed */
    grpc_op op;
    op_init(&op, GRPC_OP_RECV_CLOSE_ON_SERVER);
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    if (start_batch(c, &op, 1, &c->tag_close)) return;

    pthread_mutex_lock(&c->mu);
    c->started = now_s();
    const gmethod *m = c->m;
    if (authorize(c)) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (!m) {
        char *method = grpc_slice_to_c_string(c->details.method);
        char msg[512];
        snprintf(msg, sizeof msg, "method %s is not served here", method ? method : "?");
        gpr_free(method);
        gcall_finish(c, GRPC_STATUS_UNIMPLEMENTED, msg, NULL, 0);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (!is_health(m) && within_limits(c)) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (gpr_time_cmp(gpr_convert_clock_type(c->deadline, GPR_CLOCK_MONOTONIC),
                     gpr_now(GPR_CLOCK_MONOTONIC)) < 0) {
        gcall_finish(c, GRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded before the call ran",
                     NULL, 0);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (m->kind == GM_CLIENT_STREAM) {
        if (gcall_recv(c)) gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot read", NULL, 0);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    ProtobufCMessage *req = NULL;
    chord_err err = {0};
    int read_failed = 1;
    if (c->payload) {
        grpc_byte_buffer_reader rd;
        if (grpc_byte_buffer_reader_init(&rd, c->payload)) {
            grpc_slice sl = grpc_byte_buffer_reader_readall(&rd);
            grpc_byte_buffer_reader_destroy(&rd);
            read_failed =
                pbj_unpack(m->request, GRPC_SLICE_START_PTR(sl), GRPC_SLICE_LENGTH(sl), &req, &err);
            grpc_slice_unref(sl);
        }
        grpc_byte_buffer_destroy(c->payload);
        c->payload = NULL;
    }
    if (read_failed) {
        if (!err.msg[0])
            chord_err_set(&err, "request: not a valid %s protobuf message", m->request->name);
        gcall_fail(c, &err);
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (m->kind == GM_UNARY) {
        unsigned char *out = NULL;
        size_t len = 0;
        if (m->unary(c, req, &out, &len, &err))
            gcall_fail(c, &err);
        else
            gcall_finish(c, GRPC_STATUS_OK, NULL, out, len);
    } else {
        if (m->open(c, req, &err)) {
            gcall_fail(c, &err);
        } else {
            gcall_register_stream(c);
            m->pump(c);
        }
    }
    protobuf_c_message_free_unpacked(req, NULL);
    pthread_mutex_unlock(&c->mu);
}

static void on_new(gcall *c, int ok) {
    if (!ok) return; /* the server is shutting down: the accept is void */
    api_grpc *g = c->g;
    request_call(g, c->m ? (int)(c->m - api_grpc_methods) : -1); /* the next one */
    start_call(c);
}

/* ---- workers, start, stop ----------------------------------------------------------------- */

static void on_shutdown(gcall *c, int ok) {
    (void)c;
    (void)ok;
}

/* Runs completions until the queue shuts down, or (until_shutdown_tag) until the server's
 * shutdown tag comes out. */
static void drain(api_grpc *g, int until_shutdown_tag) {
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
        if (ev.type != GRPC_OP_COMPLETE) continue;
        gtag *t = ev.tag;
        TAG_RETURNED(t);
        if (t == &g->shutdown_tag) {
            pthread_mutex_lock(&g->state_mu);
            g->shutdown_done = 1;
            pthread_cond_broadcast(&g->state_cv);
            pthread_mutex_unlock(&g->state_mu);
            if (until_shutdown_tag) break;
            continue;
        }
        gcall *c = t->c;
        t->fn(c, ev.success);
        call_unref(c); /* the batch's reference */
    }
}

static void *worker_main(void *arg) {
    api_grpc *g = arg;
    pthread_setname_np(pthread_self(), "grpc-cq");
    drain(g, 0);
    return NULL;
}

/* Every method needs a token but health's (a forgotten `need` is NONE: caught here). */
static int check_methods(chord_err *err) {
    static const char health[] = "/grpc.health.v1.Health/";
    for (size_t i = 0; i < api_grpc_n_methods; i++) {
        const gmethod *m = &api_grpc_methods[i];
        int is_health = !strncmp(m->path, health, sizeof health - 1);
        if ((m->need == API_SCOPE_NONE) != is_health ||
            (m->need != API_SCOPE_NONE && m->need != API_SCOPE_READ && m->need != API_SCOPE_ADMIN))
            return chord_err_setc(err, CHORD_E_INTERNAL, "grpc: %s: no valid scope (%d)", m->path,
                                  (int)m->need);
    }
    return 0;
}

int api_grpc_start(svc *s, const api_grpc_options *opt, api_grpc **out, chord_err *err) {
    *out = NULL;
    if (check_methods(err)) return -1;
    api_grpc *g = calloc(1, sizeof *g);
    if (!g) return chord_err_setc(err, CHORD_E_INTERNAL, "grpc: out of memory");
    g->s = s;
    g->auth = opt->auth;
    g->grace_ms = opt->grace_ms > 0 ? opt->grace_ms : 5000;
    g->max_calls = opt->max_calls > 0 ? opt->max_calls : 1000;
    g->rate = opt->rate;
    g->n_workers = opt->threads > 0 ? opt->threads : 2;
    pthread_mutex_init(&g->state_mu, NULL);
    pthread_cond_init(&g->state_cv, NULL);
    pthread_mutex_init(&g->pump_mu, NULL);
    pthread_cond_init(&g->pump_cv, NULL);
    pthread_mutex_init(&g->streams_mu, NULL);
    g->shutdown_tag = (gtag){NULL, on_shutdown};
    grpc_init();

    size_t max_msg = opt->max_message_bytes ? opt->max_message_bytes : 4u << 20;
    if (max_msg > INT32_MAX) max_msg = INT32_MAX;
    grpc_arg args[3];
    memset(args, 0, sizeof args);
    args[0].type = GRPC_ARG_INTEGER;
    args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT; /* a taken port must be an error */
    args[0].value.integer = 0;
    args[1].type = GRPC_ARG_INTEGER;
    args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
    args[1].value.integer = (int)max_msg;
    args[2].type = GRPC_ARG_INTEGER;
    args[2].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
    args[2].value.integer = 256 << 20;
    grpc_channel_args ca = {.num_args = 3, .args = args};
    g->server = grpc_server_create(&ca, NULL);
    g->cq = grpc_completion_queue_create_for_next(NULL);
    if (!g->server || !g->cq) {
        chord_err_setc(err, CHORD_E_INTERNAL, "grpc: cannot create the server");
        goto fail_early;
    }
    grpc_server_register_completion_queue(g->server, g->cq, NULL);
    g->handles = calloc(api_grpc_n_methods, sizeof *g->handles);
    if (!g->handles) {
        chord_err_setc(err, CHORD_E_INTERNAL, "grpc: out of memory");
        goto fail_early;
    }
    for (size_t i = 0; i < api_grpc_n_methods; i++) {
        const gmethod *m = &api_grpc_methods[i];
        g->handles[i] = grpc_server_register_method(g->server, m->path, NULL,
                                                    m->kind == GM_CLIENT_STREAM
                                                        ? GRPC_SRM_PAYLOAD_NONE
                                                        : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER,
                                                    0);
        if (!g->handles[i]) {
            chord_err_setc(err, CHORD_E_INTERNAL, "grpc: cannot register %s", m->path);
            goto fail_early;
        }
    }
    char addr[320];
    snprintf(addr, sizeof addr, strchr(opt->host, ':') ? "[%s]:%d" : "%s:%d", opt->host, opt->port);
    int use_tls = opt->tls_cert_pem && opt->tls_key_pem;
    grpc_server_credentials *creds = NULL;
    if (use_tls) {
        grpc_ssl_pem_key_cert_pair pair = {.private_key = opt->tls_key_pem,
                                           .cert_chain = opt->tls_cert_pem};
        creds = grpc_ssl_server_credentials_create_ex(
            NULL, &pair, 1, GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE, NULL);
    } else {
        creds = grpc_insecure_server_credentials_create();
    }
    if (!creds) {
        chord_err_setc(err, CHORD_E_INTERNAL, "grpc: cannot create the %s credentials",
                       use_tls ? "TLS server" : "server");
        goto fail_early;
    }
    g->port = grpc_server_add_http2_port(g->server, addr, creds);
    grpc_server_credentials_release(creds);
    if (g->port <= 0) {
        chord_err_setc(err, CHORD_E_IO, "grpc: cannot listen on %s (in use, or not an address%s)",
                       addr, use_tls ? ", or the TLS certificate and key were refused" : "");
        goto fail_early;
    }
    grpc_server_start(g->server);
    g->workers = calloc((size_t)g->n_workers, sizeof *g->workers);
    if (!g->workers) {
        chord_err_setc(err, CHORD_E_INTERNAL, "grpc: out of memory");
        g->n_workers = 0;
        goto fail_started;
    }
    for (int i = 0; i < g->n_workers; i++) {
        if (pthread_create(&g->workers[i], NULL, worker_main, g)) {
            g->n_workers = i;
            chord_err_setc(err, CHORD_E_INTERNAL, "grpc: cannot start worker threads");
            goto fail_started;
        }
    }
    if (pthread_create(&g->pump_thread, NULL, pump_main, g)) {
        chord_err_setc(err, CHORD_E_INTERNAL, "grpc: cannot start the stream thread");
        goto fail_started;
    }
    g->pump_started = 1;
    for (size_t i = 0; i < api_grpc_n_methods; i++)
        request_call(g, (int)i);
    request_call(g, -1);
    *out = g;
    return 0;

fail_started:
    api_grpc_stop(g);
    return -1;
fail_early:
    if (g->server) grpc_server_destroy(g->server);
    if (g->cq) {
        grpc_completion_queue_shutdown(g->cq);
        while (grpc_completion_queue_next(g->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN) {
        }
        grpc_completion_queue_destroy(g->cq);
    }
    grpc_shutdown();
    free(g->handles);
    pthread_mutex_destroy(&g->state_mu);
    pthread_cond_destroy(&g->state_cv);
    pthread_mutex_destroy(&g->pump_mu);
    pthread_cond_destroy(&g->pump_cv);
    pthread_mutex_destroy(&g->streams_mu);
    free(g);
    return -1;
}

int api_grpc_port(const api_grpc *g) {
    return g->port;
}

void api_grpc_quiesce(api_grpc *g) {
    if (!g) return;
    pthread_mutex_lock(&g->state_mu);
    int first = !g->shutdown_started;
    g->shutdown_started = 1;
    pthread_mutex_unlock(&g->state_mu);
    if (!first) return;
    atomic_store(&g->quiescing, 1);
    TAG_HANDED_OVER(&g->shutdown_tag);
    grpc_server_shutdown_and_notify(g->server, g->cq, &g->shutdown_tag);
    kick_streams(g); /* health watchers hear NOT_SERVING */
}

/* Waits for the shutdown tag until deadline_s (monotonic seconds; 0 = no limit). */
static int wait_shutdown(api_grpc *g, double deadline_s) {
    pthread_mutex_lock(&g->state_mu);
    while (!g->shutdown_done) {
        if (deadline_s > 0) {
            double left = deadline_s - now_s();
            if (left <= 0) break;
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            double t = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9 + (left < 0.1 ? left : 0.1);
            ts.tv_sec = (time_t)t;
            ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
            pthread_cond_timedwait(&g->state_cv, &g->state_mu, &ts);
        } else {
            pthread_cond_wait(&g->state_cv, &g->state_mu);
        }
    }
    int done = g->shutdown_done;
    pthread_mutex_unlock(&g->state_mu);
    return done;
}

void api_grpc_stop(api_grpc *g) {
    if (!g) return;
    api_grpc_quiesce(g);
    atomic_store(&g->ending, 1);
    kick_streams(g);         /* streams end with UNAVAILABLE */
    if (g->n_workers == 0) { /* a start that failed half-way: nobody drains the queue */
        grpc_server_cancel_all_calls(g->server);
        drain(g, 1);
    }
    if (!wait_shutdown(g, now_s() + g->grace_ms / 1000.0)) {
        LOG_WARN("grpc: calls still running after %d ms: cancelling them", g->grace_ms);
        grpc_server_cancel_all_calls(g->server);
        wait_shutdown(g, 0);
    }
    if (g->pump_started) {
        pthread_mutex_lock(&g->pump_mu);
        g->pump_stop = 1;
        pthread_cond_signal(&g->pump_cv);
        pthread_mutex_unlock(&g->pump_mu);
        pthread_join(g->pump_thread, NULL);
    }
    grpc_server_destroy(g->server);
    grpc_completion_queue_shutdown(g->cq);
    for (int i = 0; i < g->n_workers; i++)
        pthread_join(g->workers[i], NULL);
    grpc_completion_queue_destroy(g->cq);
    grpc_shutdown();
    free(g->workers);
    free(g->handles);
    pthread_mutex_destroy(&g->state_mu);
    pthread_cond_destroy(&g->state_cv);
    pthread_mutex_destroy(&g->pump_mu);
    pthread_cond_destroy(&g->pump_cv);
    pthread_mutex_destroy(&g->streams_mu);
    free(g);
}
