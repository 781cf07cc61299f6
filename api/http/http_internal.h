/* http_internal.h — what the api/http sources share: the server and request structs, the route
 * table type and the response helpers. Not a public interface (http.h is). */
#ifndef CHORD_API_HTTP_INTERNAL_H
#define CHORD_API_HTTP_INTERNAL_H

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "api/auth/auth.h"
#include "api/http/http.h"

/* BINARY: a protobuf body (Content-Type application/x-protobuf), kept whole in memory up to the
 * upload limit (the Tinker API's forward_backward) */
enum { HTTP_BODY_NONE = 0, HTTP_BODY_JSON, HTTP_BODY_UPLOAD, HTTP_BODY_IGNORE, HTTP_BODY_BINARY };

typedef struct http_req http_req;

typedef struct http_route {
    const char *method;  /* "GET", "POST" */
    const char *pattern; /* "/v1/jobs/{id}/cancel"; "{path*}" takes the rest */
    int body;            /* HTTP_BODY_* */
    enum MHD_Result (*handle)(http_req *r);
    api_scope need; /* READ: GET; ADMIN: a write; NONE (no token): /healthz only. Checked at
                       start (http_server.c, check_routes) */
} http_route;

#define HTTP_MAX_PARAMS 3

struct http_req {
    api_http *h;
    struct MHD_Connection *conn;
    const http_route *route;
    char method[12];
    char url[256]; /* for the access log (truncated) */
    double t0;
    int status;        /* of the response queued (0 = none yet) */
    api_scope granted; /* the caller's token's scope (ADMIN when authentication is off) */
    int64_t bytes_in, bytes_out;
    char *params[HTTP_MAX_PARAMS];
    int n_params;
    /* JSON bodies */
    char *body;
    size_t body_len, body_cap;
    /* dataset uploads */
    svc_upload *upload;
    /* an error met mid-body: answered after the last chunk */
    int failed;
    chord_err err;
};

typedef struct sse_conn sse_conn;

struct api_http {
    svc *s;
    const api_auth *auth; /* NULL: authentication off */
    struct MHD_Daemon *daemon;
    int port;
    int heartbeat_s;
    size_t max_json;
    api_rate *rate;          /* NULL: no rate limit */
    int max_connections;     /* api_http_options.connection_limit */
    atomic_int connections;  /* open now (on_connection) */
    atomic_int stopping;
    atomic_int started;    /* MHD_start_daemon returned a daemon */
    char start_error[512]; /* the first libmicrohttpd message while starting (on_mhd_log) */
    /* event streams, and the thread that resumes them (notify, heartbeat, stop) */
    pthread_mutex_t sse_mu;
    sse_conn *streams;
    pthread_mutex_t wake_mu;
    pthread_cond_t wake_cv;
    int wake_pending;
    pthread_t waker;
    int waker_started;
};

extern const http_route api_http_routes[];
extern const size_t api_http_n_routes;
/* the Tinker-compatible routes under /api/v1 (http_tinker.c) */
extern const http_route api_http_tinker_routes[];
extern const size_t api_http_n_tinker_routes;
/* Every route, the REST API's then the Tinker API's: index i < http_n_routes(). */
size_t http_n_routes(void);
const http_route *http_route_at(size_t i);

/* Routing, without a connection (tests/fuzz/fuzz_http.c calls it too): the first route of method
 * (HEAD as GET) whose pattern matches path, its parameters in params (*n_params of them,
 * malloc'd: the caller frees them), or NULL. allow (allow_cap bytes, may be 0) gets the other
 * methods whose routes match path ("GET, POST"), for a 405's Allow header. */
const http_route *http_route_find(const char *method, const char *path,
                                  char *params[HTTP_MAX_PARAMS], int *n_params, char *allow,
                                  size_t allow_cap);

/* Queues doc (stolen) as JSON with status. */
enum MHD_Result http_send_json(http_req *r, unsigned status, json_t *doc);
/* Queues {"error": {"code", "message"}}. */
enum MHD_Result http_send_error(http_req *r, unsigned status, const char *code, const char *fmt,
                                ...) __attribute__((format(printf, 4, 5)));
/* Maps err's category to a status and queues it. */
enum MHD_Result http_send_err(http_req *r, const chord_err *err);
/* Queues a file download (application/octet-stream). */
enum MHD_Result http_send_file(http_req *r, const char *path, int64_t size, const char *name);
/* Queues plain text with a content type. */
enum MHD_Result http_send_text(http_req *r, unsigned status, const char *content_type, char *text,
                               size_t len);
/* Starts an event stream of a job's watch (Server-Sent Events). */
enum MHD_Result http_send_events(http_req *r, const char *job_id, int64_t since_step);

/* A query parameter, or NULL. */
const char *http_query(http_req *r, const char *name);
/* Parses an integer query parameter in [lo, hi] (def when absent); -1 with err naming it. */
int http_query_int(http_req *r, const char *name, int64_t lo, int64_t hi, int64_t def, int64_t *out,
                   chord_err *err);
/* Parses the JSON body into *doc (400 messages name the line and column). */
int http_body_json(http_req *r, json_t **doc, chord_err *err);

/* Queues resp (taken: destroyed here) with status; MHD_NO when it could not be queued. */
enum MHD_Result http_queue_response(http_req *r, unsigned status, struct MHD_Response *resp);

/* The web dashboard (http_ui.c): the page at / and its files under /ui/, needing no token. */
enum MHD_Result http_ui_page(http_req *r);
enum MHD_Result http_ui_file(http_req *r);
int http_route_is_ui(const http_route *rt);

/* The request's Idempotency-Key header, or NULL (docs/pipelines.md). */
const char *http_idempotency_key(http_req *r);
/* Starts a dataset upload from the request's query and Idempotency-Key (first call). */
int http_upload_begin(http_req *r, chord_err *err);

#endif
