/* http_tinker.c — the Tinker-compatible routes under /api/v1 (docs/tinker.md): what the official
 * `tinker` client (PyPI, 0.38) calls, answered from the Tinker service (server/tinker/tinker.h).
 * JSON bodies both ways, except forward_backward's request and its result, which are the
 * client's protobuf messages (api/tinker/tinker_pb.h).
 *
 * Not here: sessions, models and operations (the service), the daemon (http_server.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/http/http_internal.h"
#include "api/tinker/tinker_pb.h"
#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/tinker/tinker.h"

typedef enum MHD_Result result;

/* How long one retrieve_future waits for its result before answering 408 (the client asks
 * again at once): short, so that a few long polls never hold every HTTP thread. */
#define TK_POLL_WAIT_S 1.0

static tk_service *tinker(http_req *r, chord_err *err) {
    tk_service *t = svc_tinker(r->h->s);
    if (!t) chord_err_setc(err, CHORD_E_UNAVAILABLE, "the Tinker API is not running");
    return t;
}

/* ---- idempotency keys -------------------------------------------------------------------------
 * The client sends X-Idempotency-Key on every POST, the same on each retry of one call. For the
 * routes that create or queue something (a session, a model, a sampler, an operation, a sample),
 * the 200 answer is kept by the service's idempotency keys (service.h, docs/pipelines.md: one
 * mechanism for REST, gRPC and these routes, in SQLite, for --idempotency-ttl) under
 * "tinker:<route>:<key>", the request being the body's bytes: a retry after a lost answer gets it
 * again and nothing is created twice. Polls (retrieve_future, heartbeats) are not kept. A retry
 * that arrives while the first call is still being answered runs again (the training operations
 * are de-duplicated by (model_id, seq_id) anyway); the first answer is the one kept. A key that
 * does not fit (over SVC_IDEMPOTENCY_KEY_MAX with its route, or with spaces) is not kept, as the
 * client does not need it to be. */

/* "tinker:<url>:<X-Idempotency-Key>" into key (SVC_IDEMPOTENCY_KEY_MAX + 1 bytes); 0 when the
 * request has no usable key. */
static int idem_key(http_req *r, char *key) {
    const char *k = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "X-Idempotency-Key");
    if (!k || !*k) return 0;
    int n = snprintf(key, SVC_IDEMPOTENCY_KEY_MAX + 1, "tinker:%s:%s", r->url, k);
    return n > 0 && n <= SVC_IDEMPOTENCY_KEY_MAX && svc_idempotency_key_check(key, NULL) == 0;
}

/* A retried call: sends the kept answer and returns 1 (with *out set). */
static int idem_replay(http_req *r, result *out) {
    char key[SVC_IDEMPOTENCY_KEY_MAX + 1];
    if (!idem_key(r, key)) return 0;
    json_t *kept = NULL;
    chord_err err = {0};
    int rc = svc_idempotent_find(r->h->s, key, "tinker", r->body, r->body_len, &kept, &err);
    if (rc < 0) {
        *out = http_send_err(r, &err);
        return 1;
    }
    if (rc == 0) return 0;
    LOG_DEBUG("tinker: %s retried (X-Idempotency-Key): the first answer again", r->url);
    *out = http_send_json(r, 200, kept);
    return 1;
}

/* Sends a 200 answer, kept for the call's retries when it has a key. */
static result send_kept(http_req *r, json_t *doc) {
    char key[SVC_IDEMPOTENCY_KEY_MAX + 1];
    chord_err err = {0};
    if (doc && idem_key(r, key) &&
        svc_idempotent_keep(r->h->s, key, "tinker", r->body, r->body_len, doc, &err))
        LOG_WARN("tinker: %s: answer not kept for retries: %s", r->url, err.msg);
    return http_send_json(r, 200, doc);
}

static result json_or_err(http_req *r, int rc, json_t *doc, const chord_err *err) {
    if (rc) {
        json_decref(doc);
        return http_send_err(r, err);
    }
    return http_send_json(r, 200, doc);
}

/* ---- the client's start-up --------------------------------------------------------------------
 */

static result client_config(http_req *r) {
    /* forward_backward in one request per call, in seq order; plain HTTP; no JWT, no
     * server-side custom losses, no batched futures */
    return http_send_json(
        r, 200,
        json_pack("{s:b,s:b,s:b,s:I,s:I,s:b,s:b,s:b,s:b}", "pjwt_auth_enabled", 0,
                  "parallel_fwdbwd_chunks", 0, "proto_compress_fwdbwd", 0, "fwdbwd_max_chunk_len",
                  (json_int_t)100000, "fwdbwd_max_chunk_bytes_count",
                  (json_int_t)svc_max_upload_bytes(r->h->s), "use_pyqwest_transport", 0,
                  "sample_use_retrieve_futures", 0, "custom_loss_server_side", 0,
                  "sample_join_sampling_session", 0));
}

static result dynamic_config(http_req *r) {
    return http_send_json(r, 200,
                          json_pack("{s:i,s:b,s:i}", "refresh_interval_sec", 300,
                                    "sample_cancel_enabled", 0, "sample_cancel_max_batch_size",
                                    64));
}

static result telemetry(http_req *r) {
    return http_send_json(r, 200, json_pack("{s:s}", "status", "accepted"));
}

static result tk_healthz(http_req *r) {
    return http_send_json(r, 200, json_pack("{s:s}", "status", "ok"));
}

static result capabilities(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    tk_service *t = tinker(r, &err);
    int rc = t ? tk_capabilities(t, &doc, &err) : -1;
    return json_or_err(r, rc, doc, &err);
}

/* ---- sessions and models ----------------------------------------------------------------------
 */

typedef int (*json_call)(tk_service *t, const json_t *req, json_t **resp, chord_err *err);

static result direct(http_req *r, json_call call) {
    result out;
    if (call != tk_heartbeat && call != tk_get_info && idem_replay(r, &out)) return out;
    chord_err err = {0};
    json_t *req = NULL, *doc = NULL;
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err) || call(t, req, &doc, &err);
    json_decref(req);
    if (rc || call == tk_heartbeat || call == tk_get_info) return json_or_err(r, rc, doc, &err);
    return send_kept(r, doc);
}

static result create_session(http_req *r) {
    return direct(r, tk_create_session);
}
static result heartbeat(http_req *r) {
    return direct(r, tk_heartbeat);
}
static result get_info(http_req *r) {
    return direct(r, tk_get_info);
}

static result finish_session(http_req *r) {
    chord_err err = {0};
    tk_service *t = tinker(r, &err);
    if (!t || tk_finish_session(t, r->params[0], &err)) return http_send_err(r, &err);
    return http_send_json(r, 200, json_object());
}

/* An UntypedAPIFuture. */
static result future(http_req *r, int rc, const char *request_id, const char *model_id,
                     const chord_err *err) {
    if (rc) return http_send_err(r, err);
    json_t *doc = json_pack("{s:s}", "request_id", request_id);
    if (doc && model_id) json_object_set_new(doc, "model_id", json_string(model_id));
    return send_kept(r, doc);
}

static result create_model(http_req *r) {
    result out;
    if (idem_replay(r, &out)) return out;
    chord_err err = {0};
    json_t *req = NULL;
    char rid[TK_ID_MAX] = "", mid[TK_ID_MAX] = "";
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err) || tk_submit_create_model(t, req, rid, mid, &err);
    json_decref(req);
    return future(r, rc, rid, mid, &err);
}

static result load_weights(http_req *r) {
    result out;
    if (idem_replay(r, &out)) return out;
    chord_err err = {0};
    json_t *req = NULL;
    char rid[TK_ID_MAX] = "", mid[TK_ID_MAX] = "";
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err) || tk_submit_load_weights(t, req, rid, mid, &err);
    json_decref(req);
    return future(r, rc, rid, mid, &err);
}

static result forward_backward(http_req *r) {
    result out;
    if (idem_replay(r, &out)) return out;
    chord_err err = {0};
    tk_fb_request fb = {0};
    char rid[TK_ID_MAX] = "";
    tk_service *t = tinker(r, &err);
    int rc = !t || tk_pb_decode_fb_request((const uint8_t *)r->body, r->body_len, &fb, &err) ||
             tk_submit_forward_backward(t, &fb, rid, &err);
    tk_fb_request_free(&fb);
    return future(r, rc, rid, NULL, &err);
}

static result json_op(http_req *r, const char *kind) {
    result out;
    if (idem_replay(r, &out)) return out;
    chord_err err = {0};
    json_t *req = NULL;
    char rid[TK_ID_MAX] = "";
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err) || tk_submit_json(t, kind, req, rid, &err);
    json_decref(req);
    return future(r, rc, rid, NULL, &err);
}

static result optim_step(http_req *r) {
    return json_op(r, "optim_step");
}
static result save_weights(http_req *r) {
    return json_op(r, "save_weights");
}
static result save_weights_for_sampler(http_req *r) {
    return json_op(r, "save_weights_for_sampler");
}

static result create_sampling_session(http_req *r) {
    return direct(r, tk_create_sampling_session);
}

static result get_sampler(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    tk_service *t = tinker(r, &err);
    int rc = !t || tk_get_sampler(t, r->params[0], &doc, &err);
    return json_or_err(r, rc, doc, &err);
}

static result asample(http_req *r) {
    result out;
    if (idem_replay(r, &out)) return out;
    chord_err err = {0};
    json_t *req = NULL;
    char rid[TK_ID_MAX] = "";
    int n = 0;
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err) || tk_submit_sample(t, req, rid, &n, &err);
    json_decref(req);
    if (rc) return http_send_err(r, &err);
    json_t *ids = json_array();
    char sid[TK_ID_MAX + 16];
    for (int i = 0; ids && i < n; i++) {
        snprintf(sid, sizeof sid, "%s:%d", rid, i);
        json_array_append_new(ids, json_string(sid));
    }
    return send_kept(r, ids ? json_pack("{s:s,s:o}", "request_id", rid, "sample_sequence_ids", ids)
                            : NULL);
}

static result training_runs(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int64_t offset = 0, limit = 20;
    tk_service *t = tinker(r, &err);
    int rc = !t || http_query_int(r, "offset", 0, INT32_MAX, 0, &offset, &err) ||
             http_query_int(r, "limit", 1, 1000, 20, &limit, &err) ||
             tk_training_runs(t, (size_t)offset, (size_t)limit, &doc, &err);
    return json_or_err(r, rc, doc, &err);
}

static result training_run(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    tk_service *t = tinker(r, &err);
    int rc = !t || tk_training_run(t, r->params[0], &doc, &err);
    return json_or_err(r, rc, doc, &err);
}

static result run_checkpoints(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    tk_service *t = tinker(r, &err);
    int rc = !t || tk_run_checkpoints(t, r->params[0], &doc, &err);
    return json_or_err(r, rc, doc, &err);
}

/* What the client may call that chord does not run yet: a clear 400 (a 404 or 5xx would read
 * as a wrong server or be retried for minutes). */
static result not_yet(http_req *r) {
    return http_send_error(r, 400, "invalid_argument",
                           "%s is not supported by chord's Tinker API yet (docs/tinker.md)",
                           r->url);
}

static result retrieve_future(http_req *r) {
    chord_err err = {0};
    json_t *req = NULL;
    tk_result res = {0};
    tk_service *t = tinker(r, &err);
    int rc = !t || http_body_json(r, &req, &err);
    const char *id = rc ? NULL : json_string_value(json_object_get(req, "request_id"));
    if (!rc && !id) rc = chord_err_set(&err, "request_id: required");
    if (!rc) rc = tk_retrieve(t, id, TK_POLL_WAIT_S, &res, &err);
    result out;
    if (rc) {
        out = http_send_err(r, &err);
    } else if (res.state == TK_PENDING) {
        out = http_send_json(r, 408,
                             json_pack("{s:s,s:s,s:s}", "type", "try_again", "request_id", id,
                                       "queue_state", "active"));
    } else if (res.state == TK_FAILED) {
        out = http_send_json(r, 200,
                             json_pack("{s:s,s:s}", "error", res.error, "category",
                                       res.user_error ? "user" : "server"));
    } else if (res.sample) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (tk_pb_encode_sample_response(res.sample, &buf, &len, &err))
            out = http_send_err(r, &err);
        else
            out = http_send_text(r, 200, "application/x-protobuf", (char *)buf, len);
    } else if (res.fb) {
        uint8_t *buf = NULL;
        size_t len = 0;
        if (tk_pb_encode_fb_output(res.fb, &buf, &len, &err))
            out = http_send_err(r, &err);
        else
            out = http_send_text(r, 200, "application/x-protobuf", (char *)buf, len);
    } else {
        out = http_send_json(r, 200, json_incref(res.json));
    }
    tk_result_free(&res);
    json_decref(req);
    return out;
}

const http_route api_http_tinker_routes[] = {
    {"POST", "/api/v1/client/config", HTTP_BODY_IGNORE, client_config, API_SCOPE_ADMIN},
    {"POST", "/api/v1/client/dynamic_config", HTTP_BODY_IGNORE, dynamic_config, API_SCOPE_ADMIN},
    {"POST", "/api/v1/telemetry", HTTP_BODY_IGNORE, telemetry, API_SCOPE_ADMIN},
    {"GET", "/api/v1/healthz", HTTP_BODY_NONE, tk_healthz, API_SCOPE_READ},
    {"GET", "/api/v1/get_server_capabilities", HTTP_BODY_NONE, capabilities, API_SCOPE_READ},
    {"POST", "/api/v1/create_session", HTTP_BODY_JSON, create_session, API_SCOPE_ADMIN},
    {"POST", "/api/v1/session_heartbeat", HTTP_BODY_JSON, heartbeat, API_SCOPE_ADMIN},
    {"POST", "/api/v1/sessions/{id}/finish", HTTP_BODY_IGNORE, finish_session, API_SCOPE_ADMIN},
    {"POST", "/api/v1/create_model", HTTP_BODY_JSON, create_model, API_SCOPE_ADMIN},
    {"POST", "/api/v1/get_info", HTTP_BODY_JSON, get_info, API_SCOPE_ADMIN},
    {"POST", "/api/v1/forward_backward", HTTP_BODY_BINARY, forward_backward, API_SCOPE_ADMIN},
    {"POST", "/api/v1/optim_step", HTTP_BODY_JSON, optim_step, API_SCOPE_ADMIN},
    {"POST", "/api/v1/save_weights", HTTP_BODY_JSON, save_weights, API_SCOPE_ADMIN},
    {"POST", "/api/v1/save_weights_for_sampler", HTTP_BODY_JSON, save_weights_for_sampler,
     API_SCOPE_ADMIN},
    {"POST", "/api/v1/retrieve_future", HTTP_BODY_JSON, retrieve_future, API_SCOPE_ADMIN},
    {"POST", "/api/v1/asample", HTTP_BODY_JSON, asample, API_SCOPE_ADMIN},
    {"POST", "/api/v1/create_sampling_session", HTTP_BODY_JSON, create_sampling_session,
     API_SCOPE_ADMIN},
    {"GET", "/api/v1/samplers/{id}", HTTP_BODY_NONE, get_sampler, API_SCOPE_READ},
    {"POST", "/api/v1/load_weights", HTTP_BODY_JSON, load_weights, API_SCOPE_ADMIN},
    {"GET", "/api/v1/training_runs", HTTP_BODY_NONE, training_runs, API_SCOPE_READ},
    {"GET", "/api/v1/training_runs/{id}", HTTP_BODY_NONE, training_run, API_SCOPE_READ},
    {"GET", "/api/v1/training_runs/{id}/checkpoints", HTTP_BODY_NONE, run_checkpoints,
     API_SCOPE_READ},
    {"POST", "/api/v1/save_weights_external", HTTP_BODY_IGNORE, not_yet, API_SCOPE_ADMIN},
};
const size_t api_http_n_tinker_routes =
    sizeof api_http_tinker_routes / sizeof api_http_tinker_routes[0];
