/* http.h — the REST transport: libmicrohttpd (internal thread pool over epoll, suspend/resume
 * for Server-Sent Events) + jansson, translating /v1/... requests into service.h calls.
 *
 * What this is not: no training logic, no SQL; every decision about a resource is the
 * service's. This layer parses HTTP (paths, query parameters, bodies, content types), streams
 * uploads chunk by chunk into the service's upload API, maps chord_err categories to statuses
 * and writes errors as {"error": {"code", "message"}}; with tokens (auth.h), checks each request's
 * `Authorization: Bearer` header before anything else. The contract is api/proto/openapi.yaml. */
#ifndef CHORD_API_HTTP_H
#define CHORD_API_HTTP_H

#include "api/auth/auth.h"
#include "api/auth/ratelimit.h"
#include "server/base/err.h"
#include "server/service.h"

typedef struct api_http api_http;

typedef struct api_http_options {
    const char *host;         /* "127.0.0.1", "0.0.0.0", "::1", "localhost" */
    int port;                 /* 0 = any free port (api_http_port tells which) */
    int threads;              /* MHD thread pool size; <= 0 = 4 */
    int connection_limit;     /* connections open at once; a request on one more is a 429
                                 (Connection: close), /healthz excepted, and past 32 more
                                 libmicrohttpd closes new connections unanswered; <= 0 = 512 */
    api_rate *rate;           /* per-client request rate (ratelimit.h; shared with gRPC, lives
                                 as long as the daemon); NULL = no limit. /healthz is exempt */
    int timeout_s;            /* idle connection timeout; <= 0 = 60 */
    int heartbeat_s;          /* SSE heartbeat comment interval; <= 0 = 15 */
    size_t max_json_bytes;    /* limit of JSON request bodies; 0 = 1 MiB */
    const api_auth *auth;     /* bearer tokens (lives as long as the daemon); NULL = no
                                 authentication. Every route but /healthz needs a token: GET ones
                                 a read or admin token, writes an admin token (401 / 403 else) */
    const char *tls_cert_pem; /* both set: HTTPS only (PEM text api/auth/tls.h checked; */
    const char *tls_key_pem;  /* the caller keeps it until api_http_stop) */
} api_http_options;

int api_http_start(svc *s, const api_http_options *opt, api_http **out, chord_err *err);
/* The port it listens on. */
int api_http_port(const api_http *h);
/* Stops accepting new connections (requests in flight go on). */
void api_http_quiesce(api_http *h);
/* Ends event streams, stops the daemon and frees it. NULL is allowed. */
void api_http_stop(api_http *h);

#endif
