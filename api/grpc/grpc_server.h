/* grpc_server.h — the gRPC transport: chord.v1.Chord (api/proto/chord.proto) and the standard
 * grpc.health.v1.Health on the gRPC C core (Debian's libgrpc, 1.51) with protobuf-c messages,
 * translating each call into service.h calls, the same ones REST makes.
 *
 * What this is not: no training logic, no SQL, no validation of documents (the service names
 * the bad field; this layer maps chord_err categories to status codes). */
#ifndef CHORD_API_GRPC_SERVER_H
#define CHORD_API_GRPC_SERVER_H

#include <stddef.h>

#include "api/auth/auth.h"
#include "api/auth/ratelimit.h"
#include "server/base/err.h"
#include "server/service.h"

typedef struct api_grpc api_grpc;

typedef struct api_grpc_options {
    const char *host;         /* "127.0.0.1", "0.0.0.0", "::1", "localhost" */
    int port;                 /* 0 = any free port (api_grpc_port tells which) */
    int threads;              /* completion-queue worker threads; <= 0 = 2 */
    size_t max_message_bytes; /* largest request message (an upload chunk too); 0 = 4 MiB */
    int grace_ms;             /* how long api_grpc_stop lets calls end before cancelling
                                 them; <= 0 = 5000 */
    int max_calls;            /* calls (HTTP/2 streams) in progress at once, every connection
                                 together, WatchJob streams and uploads included; one more is
                                 RESOURCE_EXHAUSTED (grpc.health.v1 exempt); <= 0 = 1000 */
    api_rate *rate;           /* per-client request rate (ratelimit.h; shared with REST, lives
                                 as long as the server); NULL = no limit; health exempt */
    const api_auth *auth;     /* bearer tokens (lives as long as the server); NULL = none.
                                 Every method but grpc.health.v1 then needs `authorization:
                                 Bearer TOKEN` metadata: gets, lists and WatchJob a read or
                                 admin token, writes an admin one (UNAUTHENTICATED /
                                 PERMISSION_DENIED else) */
    const char *tls_cert_pem; /* both set: TLS only (PEM text api/auth/tls.h checked; */
    const char *tls_key_pem;  /* the caller keeps it until api_grpc_stop) */
} api_grpc_options;

/* Binds (port reuse off: a taken port is an error), registers the methods and starts the
 * worker threads. */
int api_grpc_start(svc *s, const api_grpc_options *opt, api_grpc **out, chord_err *err);
/* The port it listens on. */
int api_grpc_port(const api_grpc *g);
/* Stops accepting calls (new ones get UNAVAILABLE); calls in flight go on; health watchers
 * are told NOT_SERVING. Idempotent. */
void api_grpc_quiesce(api_grpc *g);
/* Ends the streams (UNAVAILABLE), waits up to grace_ms for calls in flight, cancels the rest,
 * joins the threads and frees everything. Call it before svc_close. NULL is allowed. */
void api_grpc_stop(api_grpc *g);

#endif
