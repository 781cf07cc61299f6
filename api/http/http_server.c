/* http_server.c — the libmicrohttpd daemon of the REST transport: routing, request bodies
 * (JSON accumulated under a limit, dataset uploads streamed chunk by chunk into the service),
 * responses and errors, the access log and request metrics, and Server-Sent Events driven by
 * suspend/resume (a waker thread resumes a stream when its watch is notified, for heartbeats,
 * and at stop).
 *
 * Not here: what each endpoint does (http_routes.c), anything about resources (service.h). */
#include "api/http/http_internal.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/log.h"

/* ---- responses ---------------------------------------------------------------------------- */

static enum MHD_Result queue(http_req *r, unsigned status, struct MHD_Response *resp) {
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    enum MHD_Result rc = MHD_queue_response(r->conn, status, resp);
    MHD_destroy_response(resp);
    if (rc == MHD_YES) r->status = (int)status;
    return rc;
}

enum MHD_Result http_queue_response(http_req *r, unsigned status, struct MHD_Response *resp) {
    return queue(r, status, resp);
}

enum MHD_Result http_send_text(http_req *r, unsigned status, const char *content_type, char *text,
                               size_t len) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", content_type);
    r->bytes_out = (int64_t)len;
    return queue(r, status, resp);
}

enum MHD_Result http_send_json(http_req *r, unsigned status, json_t *doc) {
    size_t len = 0;
    char *text = doc ? chord_json_dumps_line(doc, JSON_COMPACT | JSON_ENSURE_ASCII, &len) : NULL;
    json_decref(doc);
    if (!text) {
        static const char oom[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}";
        struct MHD_Response *resp =
            MHD_create_response_from_buffer(sizeof oom - 1, (void *)oom, MHD_RESPMEM_PERSISTENT);
        if (resp) MHD_add_response_header(resp, "Content-Type", "application/json");
        return queue(r, 500, resp);
    }
    return http_send_text(r, status, "application/json", text, len);
}

enum MHD_Result http_send_error(http_req *r, unsigned status, const char *code, const char *fmt,
                                ...) {
    char msg[CHORD_ERR_MSG];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    if (!doc) /* the message was not valid UTF-8: say so without it */
        doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message",
                        "request rejected (the error message is not printable)");
    return http_send_json(r, status, doc);
}

/* {"error": {"code", "message"}} with one or two more headers (Allow, WWW-Authenticate,
 * Retry-After, Connection; header2 may be NULL). */
static enum MHD_Result send_error_with_headers(http_req *r, unsigned status, const char *code,
                                               const char *msg, const char *header,
                                               const char *value, const char *header2,
                                               const char *value2) {
    json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
    size_t len = 0;
    char *text = doc ? chord_json_dumps_line(doc, JSON_COMPACT | JSON_ENSURE_ASCII, &len) : NULL;
    json_decref(doc);
    if (!text) return MHD_NO;
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    if (MHD_add_response_header(resp, "Content-Type", "application/json") != MHD_YES ||
        MHD_add_response_header(resp, header, value) != MHD_YES ||
        (header2 && MHD_add_response_header(resp, header2, value2) != MHD_YES)) {
        MHD_destroy_response(resp);
        return MHD_NO;
    }
    r->bytes_out = (int64_t)len;
    return queue(r, status, resp);
}

static enum MHD_Result send_error_with_header(http_req *r, unsigned status, const char *code,
                                              const char *msg, const char *header,
                                              const char *value) {
    return send_error_with_headers(r, status, code, msg, header, value, NULL, NULL);
}

/* The HTTP status and error code of a chord_err category. */
static const char *err_code(int chord_code, unsigned *status) {
    switch (chord_code) {
    case CHORD_E_INVALID:
        return *status = 400, "invalid_argument";
    case CHORD_E_NOT_FOUND:
        return *status = 404, "not_found";
    case CHORD_E_CONFLICT:
        return *status = 409, "conflict";
    case CHORD_E_TOO_LARGE:
        return *status = 413, "payload_too_large";
    case CHORD_E_UNAVAILABLE:
        return *status = 503, "unavailable";
    case CHORD_E_NO_SPACE:
        return *status = 507, "insufficient_storage";
    case SVC_E_BUSY:
        return *status = 429, "too_many_requests";
    case SVC_E_KEY_REUSED:
        return *status = 409, "idempotency_key_reused";
    default:
        return *status = 500, "internal";
    }
}

enum MHD_Result http_send_err(http_req *r, const chord_err *err) {
    unsigned status;
    const char *code = err_code(err->code, &status);
    if (status == 500) LOG_ERROR("http %s %s: %s", r->method, r->url, err->msg);
    return http_send_error(r, status, code, "%s", err->msg[0] ? err->msg : "internal error");
}

enum MHD_Result http_send_file(http_req *r, const char *path, int64_t size, const char *name) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        chord_err err = {0};
        chord_err_setc(&err, CHORD_E_NOT_FOUND, "file vanished: %s", name);
        return http_send_err(r, &err);
    }
    struct MHD_Response *resp = MHD_create_response_from_fd64((uint64_t)size, fd);
    if (!resp) {
        close(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    const char *base = strrchr(name, '/');
    char disp[512];
    snprintf(disp, sizeof disp, "attachment; filename=\"%s\"", base ? base + 1 : name);
    for (char *p = disp; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == '\\' || (p > disp + 22 && *p == '"' && p[1]))
            *p = '_';
    MHD_add_response_header(resp, "Content-Disposition", disp);
    r->bytes_out = size;
    return queue(r, 200, resp);
}

/* ---- request helpers ---------------------------------------------------------------------- */

const char *http_query(http_req *r, const char *name) {
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

int http_query_int(http_req *r, const char *name, int64_t lo, int64_t hi, int64_t def, int64_t *out,
                   chord_err *err) {
    const char *v = http_query(r, name);
    *out = def;
    if (!v) return 0;
    char *end = NULL;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi)
        return chord_err_set(err, "%s: must be an integer in [%lld, %lld]", name, (long long)lo,
                             (long long)hi);
    *out = x;
    return 0;
}

int http_body_json(http_req *r, json_t **doc, chord_err *err) {
    *doc = NULL;
    if (r->body_len == 0) return chord_err_set(err, "body: required (a JSON object)");
    json_error_t jerr;
    *doc = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!*doc)
        return chord_err_set(err, "body: invalid JSON at line %d column %d: %s", jerr.line,
                             jerr.column, jerr.text);
    if (!json_is_object(*doc)) {
        json_decref(*doc);
        *doc = NULL;
        return chord_err_set(err, "body: must be a JSON object");
    }
    return 0;
}

const char *http_idempotency_key(http_req *r) {
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Idempotency-Key");
}

int http_upload_begin(http_req *r, chord_err *err) {
    if (svc_upload_begin(r->h->s, http_query(r, "name"), http_query(r, "kind"), &r->upload, err))
        return -1;
    const char *key = http_idempotency_key(r);
    if (key && svc_upload_set_key(r->upload, key, err)) {
        svc_upload_abort(r->upload);
        r->upload = NULL;
        return -1;
    }
    return 0;
}

/* ---- routing ------------------------------------------------------------------------------ */

/* Matches path against pattern, filling params (*n_params of them, malloc'd); 1 on a match. */
static int match(const char *pattern, const char *path, char **out_params, int *n_params) {
    int n = 0;
    char *params[HTTP_MAX_PARAMS] = {0};
    const char *p = pattern, *u = path;
    while (*p && *u) {
        if (*p == '{') {
            const char *close = strchr(p, '}');
            int rest = close && close > p + 1 && close[-1] == '*';
            const char *seg_end = rest ? u + strlen(u) : strchrnul(u, '/');
            if (seg_end == u || n == HTTP_MAX_PARAMS) goto no;
            params[n++] = strndup(u, (size_t)(seg_end - u));
            u = seg_end;
            p = close + 1;
            continue;
        }
        if (*p != *u) goto no;
        p++, u++;
    }
    if (*p || *u) goto no;
    for (int i = 0; i < n; i++)
        out_params[i] = params[i];
    *n_params = n;
    return 1;
no:
    for (int i = 0; i < n; i++)
        free(params[i]);
    return 0;
}

size_t http_n_routes(void) { return api_http_n_routes + api_http_n_tinker_routes; }

const http_route *http_route_at(size_t i) {
    return i < api_http_n_routes ? &api_http_routes[i]
                                 : &api_http_tinker_routes[i - api_http_n_routes];
}

const http_route *http_route_find(const char *method, const char *path,
                                  char *params[HTTP_MAX_PARAMS], int *n_params, char *allow,
                                  size_t allow_cap) {
    const http_route *found = NULL;
    if (!strcmp(method, "HEAD")) method = "GET";
    *n_params = 0;
    if (allow_cap) allow[0] = '\0';
    for (size_t i = 0; i < http_n_routes(); i++) {
        const http_route *rt = http_route_at(i);
        char *probe[HTTP_MAX_PARAMS] = {0};
        int n_probe = 0;
        if (!match(rt->pattern, path, probe, &n_probe)) continue;
        if (!strcmp(rt->method, method) && !found) {
            found = rt;
            memcpy(params, probe, sizeof probe);
            *n_params = n_probe;
            continue;
        }
        for (int k = 0; k < n_probe; k++)
            free(probe[k]);
        if (allow_cap && !strstr(allow, rt->method)) {
            size_t l = strlen(allow);
            snprintf(allow + l, allow_cap - l, "%s%s", l ? ", " : "", rt->method);
        }
    }
    return found;
}

static const char *route_label(const http_req *r) {
    return r->route ? r->route->pattern : "unmatched";
}

/* The media type of a header value, lowercased, without parameters. */
static void media_type(const char *v, char *out, size_t outlen) {
    size_t i = 0;
    while (v && *v == ' ')
        v++;
    for (; v && *v && *v != ';' && *v != ' ' && i + 1 < outlen; v++)
        out[i++] = (char)(*v >= 'A' && *v <= 'Z' ? *v + 32 : *v);
    out[i] = '\0';
}

static int json_content_type_ok(const char *ct) {
    if (!ct) return 1;
    char mt[128];
    media_type(ct, mt, sizeof mt);
    return !strcmp(mt, "application/json") || !mt[0];
}

static int protobuf_content_type_ok(const char *ct) {
    char mt[128];
    media_type(ct ? ct : "", mt, sizeof mt);
    return !strcmp(mt, "application/x-protobuf") || !strcmp(mt, "application/protobuf");
}

static int upload_content_type_ok(const char *ct) {
    static const char *const ok[] = {"application/x-ndjson",     "application/jsonl",
                                     "application/x-jsonlines",  "application/json-lines",
                                     "application/jsonlines",    "text/plain",
                                     "application/octet-stream", NULL};
    if (!ct) return 1;
    char mt[128];
    media_type(ct, mt, sizeof mt);
    if (!mt[0]) return 1;
    for (size_t i = 0; ok[i]; i++)
        if (!strcmp(mt, ok[i])) return 1;
    return 0;
}

/* First call of a request: route it and check what can be checked before the body. Returns 1
 * when a response was queued (the request is answered), 0 to go on. */
/* The client's address as text ("" when unknown). */
static void client_address(struct MHD_Connection *conn, char *out, size_t cap) {
    out[0] = '\0';
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, out,
                  (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, out,
                  (socklen_t)cap);
}

/* The server's limits on connections and on each client's rate (/healthz is exempt, so probes
 * still see a live server). 1 when a 429 was queued. */
static int over_limits(http_req *r, const char *path, const char *authz, int authenticated,
                       enum MHD_Result *result) {
    api_http *h = r->h;
    if (!strcmp(path, "/healthz")) return 0;
    char msg[256];
    int open_now = atomic_load(&h->connections);
    if (open_now > h->max_connections) {
        snprintf(msg, sizeof msg,
                 "too many connections: %d are open, the server's limit "
                 "(--http-max-connections %d); retry later",
                 open_now, h->max_connections);
        *result = send_error_with_headers(r, 429, "too_many_requests", msg, "Retry-After", "1",
                                          "Connection", "close");
        return 1;
    }
    if (!h->rate) return 0;
    char addr[64];
    client_address(r->conn, addr, sizeof addr);
    /* per token when tokens are on and the caller holds a valid one, else per address */
    int by_token = h->auth && authenticated && authz;
    unsigned long long key =
        api_rate_key(by_token ? authz : NULL, by_token ? strlen(authz) : 0, addr);
    double retry = 0;
    if (api_rate_take(h->rate, key, &retry)) return 0;
    api_rate_message(h->rate, retry, msg, sizeof msg);
    char after[32];
    snprintf(after, sizeof after, "%d", (int)retry + 1);
    *result = send_error_with_header(r, 429, "too_many_requests", msg, "Retry-After", after);
    return 1;
}

static int first_call(http_req *r, const char *path, enum MHD_Result *result) {
    char allow[64];
    r->route = http_route_find(r->method, path, r->params, &r->n_params, allow, sizeof allow);
    /* who may call: before anything else is said about the request (a 404 or 405 included) */
    const char *authz = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Authorization");
    /* the Tinker client sends its key as X-API-Key: the same tokens, another header */
    char bearer[1100];
    const char *api_key = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-API-Key");
    if (!authz && api_key && strlen(api_key) < sizeof bearer - 8) {
        snprintf(bearer, sizeof bearer, "Bearer %s", api_key);
        authz = bearer;
    }
    const char *reason = NULL;
    api_auth_result ar =
        api_auth_check(r->h->auth, authz, authz ? strlen(authz) : 0,
                       r->route ? r->route->need : API_SCOPE_READ, &r->granted, &reason);
    if (over_limits(r, path, authz, ar != API_AUTH_UNAUTHENTICATED, result)) return 1;
    if (ar != API_AUTH_OK) {
        int forbidden = ar == API_AUTH_FORBIDDEN;
        *result = send_error_with_header(
            r, forbidden ? 403 : 401, forbidden ? "permission_denied" : "unauthenticated", reason,
            "WWW-Authenticate",
            forbidden ? "Bearer realm=\"chord\", error=\"insufficient_scope\""
            : authz   ? "Bearer realm=\"chord\", error=\"invalid_token\""
                      : "Bearer realm=\"chord\"");
        return 1;
    }
    if (!r->route && allow[0]) {
        *result = send_error_with_header(r, 405, "method_not_allowed", "method not allowed here",
                                         "Allow", allow);
        return 1;
    }
    if (!r->route) {
        *result = http_send_error(r, 404, "not_found", "no such endpoint: %s", path);
        return 1;
    }
    const char *ct = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Type");
    const char *cl = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Content-Length");
    long long length = cl ? strtoll(cl, NULL, 10) : -1;
    if (r->route->body == HTTP_BODY_JSON) {
        if (!json_content_type_ok(ct)) {
            *result = http_send_error(r, 415, "unsupported_media_type",
                                      "Content-Type: expected application/json, got '%s'", ct);
            return 1;
        }
        if (length > (long long)r->h->max_json) {
            *result = http_send_error(r, 413, "payload_too_large",
                                      "body: %lld bytes is over the limit of %zu bytes", length,
                                      r->h->max_json);
            return 1;
        }
    } else if (r->route->body == HTTP_BODY_BINARY) {
        if (!protobuf_content_type_ok(ct)) {
            *result = http_send_error(r, 415, "unsupported_media_type",
                                      "Content-Type: expected application/x-protobuf, got '%s'",
                                      ct ? ct : "(none)");
            return 1;
        }
        if (length > svc_max_upload_bytes(r->h->s)) {
            *result = http_send_error(r, 413, "payload_too_large",
                                      "body: %lld bytes is over the limit of %lld bytes", length,
                                      (long long)svc_max_upload_bytes(r->h->s));
            return 1;
        }
    } else if (r->route->body == HTTP_BODY_UPLOAD) {
        if (!upload_content_type_ok(ct)) {
            *result = http_send_error(r, 415, "unsupported_media_type",
                                      "Content-Type: expected application/x-ndjson (JSON lines), "
                                      "got '%s'",
                                      ct);
            return 1;
        }
        int64_t limit = svc_max_upload_bytes(r->h->s);
        if (length > limit) {
            *result = http_send_error(r, 413, "payload_too_large",
                                      "body: %lld bytes is over the upload limit of %lld bytes",
                                      length, (long long)limit);
            return 1;
        }
        chord_err err = {0};
        if (http_upload_begin(r, &err)) {
            *result = http_send_err(r, &err);
            return 1;
        }
    }
    return 0;
}

/* One chunk of a body. Errors are remembered and answered after the last chunk (a response
 * queued mid-upload is never sent). */
static void body_chunk(http_req *r, const char *data, size_t len) {
    r->bytes_in += (int64_t)len;
    if (r->failed) return;
    if (r->route->body == HTTP_BODY_JSON || r->route->body == HTTP_BODY_BINARY) {
        size_t cap = r->route->body == HTTP_BODY_JSON ? r->h->max_json
                                                      : (size_t)svc_max_upload_bytes(r->h->s);
        if (r->body_len + len > cap) {
            r->failed = 1;
            chord_err_setc(&r->err, CHORD_E_TOO_LARGE, "body: over the limit of %zu bytes", cap);
            return;
        }
        if (r->body_len + len + 1 > r->body_cap) {
            char *p = chord_array_grow(r->body, &r->body_cap, r->body_len + len + 1, 1);
            if (!p) {
                r->failed = 1;
                chord_err_setc(&r->err, CHORD_E_INTERNAL, "body: out of memory");
                return;
            }
            r->body = p;
        }
        memcpy(r->body + r->body_len, data, len);
        r->body_len += len;
        r->body[r->body_len] = '\0';
    } else if (r->route->body == HTTP_BODY_UPLOAD) {
        if (svc_upload_write(r->upload, data, len, &r->err)) {
            r->failed = 1;
            svc_upload_abort(r->upload);
            r->upload = NULL;
        }
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
    api_http *h = cls;
    (void)version;
    http_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        *con_cls = r;
        r->h = h;
        r->conn = conn;
        r->t0 = chord_now();
        snprintf(r->method, sizeof r->method, "%s", method);
        snprintf(r->url, sizeof r->url, "%s", url);
        enum MHD_Result result = MHD_YES;
        if (first_call(r, url, &result)) return result;
        return MHD_YES;
    }
    if (r->status) { /* answered early: drop the rest of the body */
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (r->route->body != HTTP_BODY_NONE)
            body_chunk(r, upload_data, *upload_data_size);
        else
            r->bytes_in += (int64_t)*upload_data_size;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (r->failed) {
        svc_upload_abort(r->upload);
        r->upload = NULL;
        return http_send_err(r, &r->err);
    }
    return r->route->handle(r);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    api_http *h = cls;
    (void)conn;
    http_req *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    double secs = chord_now() - r->t0;
    static const char *const known[] = {"GET",   "POST", "PUT",     "DELETE",
                                        "PATCH", "HEAD", "OPTIONS", NULL};
    const char *m = "OTHER";
    for (size_t i = 0; known[i]; i++)
        if (!strcmp(r->method, known[i])) m = known[i];
    int status = r->status ? r->status : 499; /* 499: the client went away first */
    svc_record_request(h->s, "http", route_label(r), m, status, secs);
    LOG_INFO("http %s %s %d %.1fms in=%lld out=%lld%s", r->method, r->url, status, secs * 1e3,
             (long long)r->bytes_in, (long long)r->bytes_out,
             toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (connection ended early)");
    svc_upload_abort(r->upload);
    for (int i = 0; i < r->n_params; i++)
        free(r->params[i]);
    free(r->body);
    free(r);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
    api_http *h = cls;
    (void)conn;
    (void)socket_context;
    if (code == MHD_CONNECTION_NOTIFY_STARTED)
        atomic_fetch_add(&h->connections, 1);
    else if (code == MHD_CONNECTION_NOTIFY_CLOSED)
        atomic_fetch_sub(&h->connections, 1);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    api_http *h = cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    /* while MHD_start_daemon runs (on the starting thread): the first reason, for its error */
    if (!atomic_load(&h->started) && !h->start_error[0])
        snprintf(h->start_error, sizeof h->start_error, "%s", msg);
    LOG_WARN("http: %s", msg);
}

/* ---- Server-Sent Events -------------------------------------------------------------------
 * A stream is a service watch (service.h: the fan-out shared with gRPC's WatchJob) read through
 * sse_codec, so each event becomes SSE text once for every stream of its feed. Its lifecycle:
 *
 *   http_send_events (svc_watch_open) --> WRITING: sse_read hands MHD the buffered text, then the
 *       |                                 next frames svc_watch_next gives, a heartbeat comment
 *       |                                 when owed
 *       |  nothing to write (svc_watch_next 0, no heartbeat due, no pending notify):
 *       |  MHD_suspend_connection (c->suspended)
 *       v
 *   SUSPENDED -- sse_notify (the watch thread: pending), a heartbeat due, or api_http_stop:
 *       |        resume_due (the waker thread) MHD_resume_connection --> WRITING
 *       |
 *   WRITING -- the final event written, or svc_watch_next failed ("event: error" written),
 *       |      or the server stopping --> END_OF_STREAM
 *       v
 *   sse_free (MHD, after the connection ends, whichever way): svc_watch_close — no notify
 *   after it — and the stream leaves h->streams. */

struct sse_conn {
    api_http *h;
    struct MHD_Connection *conn;
    svc_watch *watch;
    pthread_mutex_t mu; /* guards suspended, pending, last_write */
    int suspended, pending;
    double last_write;
    char *buf;
    size_t len, off, cap;
    int done;
    sse_conn *next;
};

/* One event as SSE text (the watch's codec): "id: N" on steps, so a client that reconnects
 * can send Last-Event-ID (or since_step). */
typedef struct sse_frame {
    size_t len;
    char text[];
} sse_frame;

static void *sse_encode(const svc_event *ev, chord_err *err) {
    static const char *const names[] = {"state", "step", "checkpoint"};
    char *data = ev->data ? json_dumps(ev->data, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    if (!data) {
        chord_err_setc(err, CHORD_E_INTERNAL, "event: out of memory");
        return NULL;
    }
    char head[96];
    int n = ev->type == SVC_EVENT_STEP
                ? snprintf(head, sizeof head, "id: %lld\nevent: step\ndata: ", (long long)ev->step)
                : snprintf(head, sizeof head, "event: %s\ndata: ", names[ev->type]);
    size_t dlen = strlen(data);
    sse_frame *f = malloc(sizeof *f + (size_t)n + dlen + 2);
    if (f) {
        memcpy(f->text, head, (size_t)n);
        memcpy(f->text + n, data, dlen);
        memcpy(f->text + (size_t)n + dlen, "\n\n", 2);
        f->len = (size_t)n + dlen + 2;
    } else {
        chord_err_setc(err, CHORD_E_INTERNAL, "event: out of memory");
    }
    free(data);
    return f;
}

static const svc_codec sse_codec = {sse_encode, free};

static void waker_kick(api_http *h) {
    pthread_mutex_lock(&h->wake_mu);
    h->wake_pending = 1;
    pthread_cond_signal(&h->wake_cv);
    pthread_mutex_unlock(&h->wake_mu);
}

/* The watch's notify: runs under the feed's lock, so it only flags and kicks. */
static void sse_notify(void *user) {
    sse_conn *c = user;
    pthread_mutex_lock(&c->mu);
    c->pending = 1;
    pthread_mutex_unlock(&c->mu);
    waker_kick(c->h);
}

/* Resumes every suspended stream that has news, owes a heartbeat, or must end. A suspended
 * connection cannot be closed by MHD, so resuming it outside the locks is safe. */
static void resume_due(api_http *h) {
    struct MHD_Connection *todo[256];
    int more = 1;
    while (more) {
        size_t n = 0;
        more = 0;
        double now = chord_now();
        int stopping = atomic_load(&h->stopping);
        pthread_mutex_lock(&h->sse_mu);
        for (sse_conn *c = h->streams; c; c = c->next) {
            pthread_mutex_lock(&c->mu);
            if (c->suspended && (c->pending || stopping || now - c->last_write >= h->heartbeat_s)) {
                if (n == sizeof todo / sizeof todo[0]) {
                    more = 1;
                } else {
                    c->suspended = 0;
                    todo[n++] = c->conn;
                }
            }
            pthread_mutex_unlock(&c->mu);
        }
        pthread_mutex_unlock(&h->sse_mu);
        for (size_t i = 0; i < n; i++)
            MHD_resume_connection(todo[i]);
    }
}

static void *waker_main(void *arg) {
    api_http *h = arg;
    pthread_setname_np(pthread_self(), "http-waker");
    for (;;) {
        pthread_mutex_lock(&h->wake_mu);
        if (!h->wake_pending && !atomic_load(&h->stopping)) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&h->wake_cv, &h->wake_mu, &ts);
        }
        h->wake_pending = 0;
        pthread_mutex_unlock(&h->wake_mu);
        resume_due(h);
        if (atomic_load(&h->stopping)) break;
    }
    return NULL;
}

static int sse_append(sse_conn *c, const char *text, size_t len) {
    if (c->len + len > c->cap) {
        char *p = chord_array_grow(c->buf, &c->cap, c->len + len, 1);
        if (!p) return -1;
        c->buf = p;
    }
    memcpy(c->buf + c->len, text, len);
    c->len += len;
    return 0;
}

/* "event: error" with {"error": {"code", "message"}}: the stream cannot go on. */
static void sse_error(sse_conn *c, const chord_err *err) {
    unsigned status;
    json_t *doc = json_pack("{s:{s:s,s:s}}", "error", "code", err_code(err->code, &status),
                            "message", err->msg[0] ? err->msg : "internal error");
    char *d = doc ? json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    json_decref(doc);
    if (d) {
        sse_append(c, "event: error\ndata: ", 19);
        sse_append(c, d, strlen(d));
        sse_append(c, "\n\n", 2);
        free(d);
    }
}

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max) {
    sse_conn *c = cls;
    api_http *h = c->h;
    (void)pos;
    for (;;) {
        if (c->off < c->len) {
            size_t n = c->len - c->off < max ? c->len - c->off : max;
            memcpy(out, c->buf + c->off, n);
            c->off += n;
            if (c->off == c->len) c->off = c->len = 0;
            pthread_mutex_lock(&c->mu);
            c->last_write = chord_now();
            pthread_mutex_unlock(&c->mu);
            return (ssize_t)n;
        }
        if (c->done || atomic_load(&h->stopping)) return MHD_CONTENT_READER_END_OF_STREAM;
        const void *frame = NULL;
        int final = 0;
        chord_err err = {0};
        int rc = svc_watch_next(c->watch, &frame, &final, &err);
        if (rc < 0) {
            c->done = 1;
            sse_error(c, &err);
            continue;
        }
        if (rc == 1) {
            const sse_frame *f = frame; /* borrowed until the next svc_watch_next: copied */
            if (sse_append(c, f->text, f->len)) return MHD_CONTENT_READER_END_WITH_ERROR;
            if (final) c->done = 1;
            continue;
        }
        pthread_mutex_lock(&c->mu);
        if (chord_now() - c->last_write >= h->heartbeat_s) {
            pthread_mutex_unlock(&c->mu);
            if (sse_append(c, ": heartbeat\n\n", 13)) return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        if (c->pending || atomic_load(&h->stopping)) {
            c->pending = 0;
            pthread_mutex_unlock(&c->mu);
            continue;
        }
        c->suspended = 1;
        MHD_suspend_connection(c->conn);
        pthread_mutex_unlock(&c->mu);
        return 0;
    }
}

static void sse_free(void *cls) {
    sse_conn *c = cls;
    api_http *h = c->h;
    svc_watch_close(c->watch); /* no notify after this */
    pthread_mutex_lock(&h->sse_mu);
    for (sse_conn **p = &h->streams; *p; p = &(*p)->next) {
        if (*p == c) {
            *p = c->next;
            break;
        }
    }
    pthread_mutex_unlock(&h->sse_mu);
    pthread_mutex_destroy(&c->mu);
    free(c->buf);
    free(c);
}

enum MHD_Result http_send_events(http_req *r, const char *job_id, int64_t since_step) {
    api_http *h = r->h;
    sse_conn *c = calloc(1, sizeof *c);
    if (!c) return MHD_NO;
    c->h = h;
    c->conn = r->conn;
    pthread_mutex_init(&c->mu, NULL);
    c->last_write = chord_now();
    chord_err err = {0};
    if (svc_watch_open(h->s, job_id, since_step, &sse_codec, sse_notify, c, &c->watch, &err)) {
        pthread_mutex_destroy(&c->mu);
        free(c);
        return http_send_err(r, &err);
    }
    sse_append(c, "retry: 3000\n\n", 13);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024, sse_read, c, sse_free);
    if (!resp) {
        svc_watch_close(c->watch);
        pthread_mutex_destroy(&c->mu);
        free(c->buf);
        free(c);
        return MHD_NO;
    }
    pthread_mutex_lock(&h->sse_mu);
    c->next = h->streams;
    h->streams = c;
    pthread_mutex_unlock(&h->sse_mu);
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    return queue(r, 200, resp);
}

/* ---- the daemon --------------------------------------------------------------------------- */

/* Every route says what it needs, and it agrees with its method: no write open to a read token,
 * no route but /healthz and the dashboard's files open to anyone. */
static int check_routes(chord_err *err) {
    for (size_t i = 0; i < http_n_routes(); i++) {
        const http_route *rt = http_route_at(i);
        int get = !strcmp(rt->method, "GET");
        int open_route = !strcmp(rt->pattern, "/healthz") || (get && http_route_is_ui(rt));
        api_scope want = open_route ? API_SCOPE_NONE : get ? API_SCOPE_READ : API_SCOPE_ADMIN;
        if (rt->need != want)
            return chord_err_setc(err, CHORD_E_INTERNAL, "http: route %s %s needs scope %d, not %d",
                                  rt->method, rt->pattern, (int)want, (int)rt->need);
    }
    return 0;
}

int api_http_start(svc *s, const api_http_options *opt, api_http **out, chord_err *err) {
    *out = NULL;
    if (check_routes(err)) return -1;
    api_http *h = calloc(1, sizeof *h);
    if (!h) return chord_err_setc(err, CHORD_E_INTERNAL, "http: out of memory");
    h->s = s;
    h->auth = opt->auth;
    h->heartbeat_s = opt->heartbeat_s > 0 ? opt->heartbeat_s : 15;
    h->max_json = opt->max_json_bytes ? opt->max_json_bytes : (size_t)1 << 20;
    h->rate = opt->rate;
    h->max_connections = opt->connection_limit > 0 ? opt->connection_limit : 512;
    pthread_mutex_init(&h->sse_mu, NULL);
    pthread_mutex_init(&h->wake_mu, NULL);
    pthread_cond_init(&h->wake_cv, NULL);

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", opt->port);
    int gai = getaddrinfo(opt->host && *opt->host ? opt->host : "127.0.0.1", port, &hints, &ai);
    if (gai != 0 || !ai) {
        chord_err_set(err, "--http: cannot resolve host '%s': %s", opt->host, gai_strerror(gai));
        api_http_stop(h);
        return -1;
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    /* TLS: GnuTLS inside libmicrohttpd, TLS 1.2 and newer, the PEM text tls.h checked */
    struct MHD_OptionItem tls[4] = {{MHD_OPTION_END, 0, NULL}};
    int use_tls = opt->tls_cert_pem && opt->tls_key_pem;
    if (use_tls) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            freeaddrinfo(ai);
            chord_err_setc(err, CHORD_E_INTERNAL,
                           "--tls-cert: this libmicrohttpd is built without TLS (GnuTLS)");
            api_http_stop(h);
            return -1;
        }
        flags |= MHD_USE_TLS;
        tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)opt->tls_cert_pem};
        tls[1] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)opt->tls_key_pem};
        tls[2] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
                                         (void *)"NORMAL:-VERS-TLS1.0:-VERS-TLS1.1:-VERS-DTLS-ALL"};
    }
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)opt->port, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER,
        on_mhd_log, h, MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE,
        (unsigned)(opt->threads > 0 ? opt->threads : 4), MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)h->max_connections + 32, /* room to answer 429 (over_limits) */
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)(opt->timeout_s > 0 ? opt->timeout_s : 60), MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        (size_t)256 * 1024, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_ARRAY, tls,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->daemon) {
        /* libmicrohttpd said why in its log (on_mhd_log kept the first message) */
        chord_err_setc(err, CHORD_E_UNAVAILABLE, "--http: cannot listen on %s:%d%s%s%s", opt->host,
                       opt->port, h->start_error[0] ? ": " : " (address in use or not permitted",
                       h->start_error[0] ? h->start_error : "",
                       h->start_error[0] ? ""
                       : use_tls         ? ", or the TLS setup failed)"
                                         : ")");
        api_http_stop(h);
        return -1;
    }
    atomic_store(&h->started, 1);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : opt->port;
    if (pthread_create(&h->waker, NULL, waker_main, h) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "http: cannot start the event thread");
        api_http_stop(h);
        return -1;
    }
    h->waker_started = 1;
    *out = h;
    return 0;
}

int api_http_port(const api_http *h) {
    return h->port;
}

void api_http_quiesce(api_http *h) {
    if (!h || !h->daemon) return;
    MHD_socket fd = MHD_quiesce_daemon(h->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

void api_http_stop(api_http *h) {
    if (!h) return;
    atomic_store(&h->stopping, 1);
    if (h->waker_started) {
        waker_kick(h);
        pthread_join(h->waker, NULL);
    }
    /* no stream suspends once stopping is set: one pass resumes all that still are */
    resume_due(h);
    if (h->daemon) MHD_stop_daemon(h->daemon);
    pthread_cond_destroy(&h->wake_cv);
    pthread_mutex_destroy(&h->wake_mu);
    pthread_mutex_destroy(&h->sse_mu);
    free(h);
}
