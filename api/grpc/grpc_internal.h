/* grpc_internal.h — what grpc_server.c (the call machinery) and grpc_methods.c (the method
 * handlers) share: the call state, its tags and refcount, the method table.
 *
 * A call (gcall) is owned by the references on it: one per batch in flight (the tag's), one
 * while it sits in the pump queue, one while it is in the streams registry. The last
 * call_unref frees it. Every field below `mu` is guarded by mu; handlers run with mu held.
 *
 * A call's life (grpc_server.c; each arrow names the function that takes it):
 *
 *   request_call: calloc, tag_new handed to the core
 *     |
 *     v
 *   ARMED (waits for a client) --- on_new, ok = 0: the server shuts down ---> (freed)
 *     |
 *     | on_new, ok = 1: request_call arms the next one; start_call starts
 *     | RECV_CLOSE_ON_SERVER first (tag_close), so a client that goes away is noticed
 *     v
 *   ACTIVE, by the method's kind (start_call):
 *     no or an unknown token (UNAUTHENTICATED) / a read token on a write --------------+
 *         (PERMISSION_DENIED): before anything else, unknown methods included           |
 *     unknown method / deadline already past / bad request bytes ----------------------+
 *     GM_UNARY: m->unary runs at once ------------------------------------------------+
 *     GM_CLIENT_STREAM: RECEIVING: gcall_recv (tag_recv) -> on_recv -> m->message,    |
 *         which asks for the next one or, at the client's end (NULL), finishes -------+
 *     GM_SERVER_STREAM: m->open (WatchJob: svc_watch_open), gcall_register_stream,    |
 *         then STREAMING: IDLE <-> SENDING, one SEND_MESSAGE in flight (tag_send):    |
 *         m->pump sends the next message when gcall_kick queued the call (a watch's  |
 *         notify, quiesce, stop) and again from on_send; the last message, an error, |
 *         or the server ending (api_grpc_stop: UNAVAILABLE) finishes ----------------+
 *                                                                                     |
 *     +-------------------------------------------------------------------------------+
 *     v
 *   FINISHING: gcall_finish / gcall_fail (done = 1): status (and the last message) in one
 *     |        batch (tag_finish; on_finish frees the message buffer)
 *     v
 *   CLOSED: on_close (RECV_CLOSE_ON_SERVER completed; also straight from ACTIVE when the
 *     |     client cancels, its deadline passes or api_grpc_stop cancels every call: done = 1,
 *     |     counted as CANCELLED): an upload is aborted, the watch closed (api_grpc_watch_leave),
 *     |     the call leaves the streams registry
 *     v
 *   (freed): call_unref, when the last batch, the pump queue and the registry have let go
 *
 * Not here: the public API (grpc_server.h). */
#ifndef CHORD_API_GRPC_INTERNAL_H
#define CHORD_API_GRPC_INTERNAL_H

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/support/time.h>
#include <protobuf-c/protobuf-c.h>
#include <pthread.h>
#include <stdatomic.h>

#include "api/auth/auth.h"
#include "api/grpc/grpc_server.h"
#include "server/service.h"

typedef struct gcall gcall;

/* A completion-queue tag: the call it belongs to and what to do when its batch completes. */
typedef struct gtag {
    gcall *c;
    void (*fn)(gcall *c, int ok);
} gtag;

typedef enum { GM_UNARY, GM_SERVER_STREAM, GM_CLIENT_STREAM } gmethod_kind;

typedef struct gmethod {
    const char *path; /* "/chord.v1.Chord/GetJob" */
    gmethod_kind kind;
    const ProtobufCMessageDescriptor *request; /* NULL for client streams (read per message) */
    /* GM_UNARY: the response, packed (*out malloc'd), or -1 with err. */
    int (*unary)(gcall *c, const ProtobufCMessage *req, unsigned char **out, size_t *len,
                 chord_err *err);
    /* GM_SERVER_STREAM: sets up the stream (c->watch ...); pump sends from then on. */
    int (*open)(gcall *c, const ProtobufCMessage *req, chord_err *err);
    void (*pump)(gcall *c);
    /* GM_CLIENT_STREAM: one message (data, len), or the end (data NULL). */
    void (*message)(gcall *c, const unsigned char *data, size_t len);
    api_scope need; /* the token it needs (auth.h); NONE only for grpc.health.v1 */
} gmethod;

struct gcall {
    api_grpc *g;
    const gmethod *m; /* NULL: a method nobody registered (answered UNIMPLEMENTED) */
    grpc_call *call;
    gpr_timespec deadline;
    grpc_metadata_array md;
    grpc_call_details details; /* unregistered calls only */
    grpc_byte_buffer *payload; /* the request / the last received message */
    atomic_int refs;
    gtag tag_new, tag_close, tag_send, tag_recv, tag_finish;
    int cancelled;      /* written by the core when RECV_CLOSE_ON_SERVER completes */
    gcall *next_pump;   /* pump queue link (api_grpc.pump_mu) */
    int pump_queued;    /* (api_grpc.pump_mu) */
    gcall *next_stream; /* streams registry link (api_grpc.streams_mu) */
    int in_streams;     /* (api_grpc.streams_mu) */

    pthread_mutex_t mu;
    int closed;     /* RECV_CLOSE_ON_SERVER completed: the call is over */
    int md_sent;    /* initial metadata went out */
    int send_busy;  /* a SEND_MESSAGE is in flight */
    int done;       /* the status is sent (or on its way) */
    int status;     /* the status sent */
    double started; /* seconds, for the request metrics */
    grpc_byte_buffer *send_buf;
    grpc_slice status_details;
    int has_status_details;
    /* per-method state */
    svc_watch *watch; /* WatchJob: its watch on the service's shared feed (grpc_watch.c) */
    svc_upload *up;   /* UploadDataset */
    int chunks;       /* UploadDataset: messages received */
    char kind[16];    /* UploadDataset: the first chunk's kind */
    int counted;      /* in api_grpc.active (start_call) until on_close */
    int health_known; /* Health.Watch: the service name is one we serve */
    int health_sent;  /* Health.Watch: last status sent (-1 none) */
};

struct api_grpc {
    svc *s;
    const api_auth *auth; /* NULL: authentication off */
    grpc_server *server;
    grpc_completion_queue *cq;
    int port;
    int grace_ms;
    int max_calls;     /* api_grpc_options.max_calls */
    atomic_int active; /* calls counted against it now */
    api_rate *rate;    /* NULL: no rate limit */
    void **handles; /* one registered-method handle per entry of api_grpc_methods */
    pthread_t *workers;
    int n_workers;
    gtag shutdown_tag;
    pthread_mutex_t state_mu;
    pthread_cond_t state_cv;
    int shutdown_started, shutdown_done; /* (state_mu) */
    atomic_int quiescing;                /* health says NOT_SERVING, no new calls */
    atomic_int ending;                   /* streams end with UNAVAILABLE */
    pthread_t pump_thread;
    int pump_started;
    pthread_mutex_t pump_mu;
    pthread_cond_t pump_cv;
    gcall *pump_head; /* (pump_mu) */
    int pump_stop;    /* (pump_mu) */
    pthread_mutex_t streams_mu;
    gcall *streams; /* open streaming calls (streams_mu) */
};

extern const gmethod api_grpc_methods[];
extern const size_t api_grpc_n_methods;

/* ---- the machinery handlers use (grpc_server.c); all with c->mu held --------------------- */

/* Ends the call: initial metadata (if not sent), the message (buf, len; ownership taken; NULL
 * for none) and the status. Once per call; waits for nothing. */
void gcall_finish(gcall *c, grpc_status_code code, const char *msg, unsigned char *buf, size_t len);
/* The same with a message slice (a reference is taken; the caller keeps its own). */
void gcall_finish_slice(gcall *c, grpc_status_code code, const char *msg, grpc_slice msg_slice);
/* Sends one message of a stream from a slice (a reference is taken). */
int gcall_send_slice(gcall *c, grpc_slice msg);
/* gcall_finish with the status of a chord_err category and its message. */
void gcall_fail(gcall *c, const chord_err *err);
/* Sends one message of a stream (ownership of buf taken); pump runs again when it is out. */
int gcall_send(gcall *c, unsigned char *buf, size_t len);
/* Asks for the next client-stream message; m->message gets it. */
int gcall_recv(gcall *c);
/* Puts a streaming call in the registry (so quiesce / stop reach it). */
void gcall_register_stream(gcall *c);
/* Queues the call for the pump thread (any thread, any lock but c->mu: it must be cheap). */
void gcall_kick(gcall *c);
/* The svc_notify_fn of watches: gcall_kick(user). */
void gcall_notify(void *user);

grpc_status_code api_grpc_status_of(int chord_code);

/* ---- WatchJob (grpc_watch.c) ---------------------------------------------------------------- */

/* WatchJob's open and pump (gmethod): a service watch (service.h's fan-out) read through the
 * JobEvent codec. */
int api_grpc_watch_open(gcall *c, const ProtobufCMessage *req, chord_err *err);
void api_grpc_watch_pump(gcall *c);
/* Closes the call's watch (on_close, c->mu held): no notify after it returns. */
void api_grpc_watch_leave(gcall *c);

#endif
