/* http_routes.c — the REST endpoints (api/proto/openapi.yaml): each handler reads its path and
 * query parameters and body, calls one service.h function and writes the resource or the
 * error. Nothing else: no decisions about resources here.
 *
 * Not here: the daemon, bodies, errors, event streams (http_server.c). */
#include <stdlib.h>
#include <string.h>

#include "api/http/http_internal.h"

typedef enum MHD_Result result;

/* offset, limit and after (a cursor; NULL when absent) query parameters of the list
 * endpoints. */
static int paging(http_req *r, size_t *offset, size_t *limit, const char **after, chord_err *err) {
    int64_t o, l;
    if (http_query_int(r, "offset", 0, INT32_MAX, 0, &o, err) ||
        http_query_int(r, "limit", 1, SVC_LIST_LIMIT_MAX, 100, &l, err))
        return -1;
    *offset = (size_t)o;
    *limit = (size_t)l;
    *after = http_query(r, "after");
    return 0;
}

static result reply(http_req *r, int rc, unsigned status, json_t *doc, const chord_err *err) {
    if (rc) return http_send_err(r, err);
    return http_send_json(r, status, doc);
}

/* ---- health and metrics ------------------------------------------------------------------- */

static result get_healthz(http_req *r) {
    json_t *doc = NULL;
    int stopping = svc_health(r->h->s, &doc);
    return http_send_json(r, stopping ? 503 : 200, doc);
}

static result get_metrics(http_req *r) {
    char *text = NULL;
    size_t len = 0;
    chord_err err = {0};
    if (svc_prometheus(r->h->s, &text, &len, &err)) return http_send_err(r, &err);
    return http_send_text(r, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* ---- datasets ----------------------------------------------------------------------------- */

static result post_dataset(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    svc_upload *up = r->upload;
    r->upload = NULL;
    if (!up) {
        chord_err_setc(&err, CHORD_E_INTERNAL, "upload was not started");
        return http_send_err(r, &err);
    }
    int rc = svc_upload_commit(up, &doc, &err);
    return reply(r, rc, 201, doc, &err);
}

static result list_datasets(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_dataset_list(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_dataset(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_dataset_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

/* ---- models ------------------------------------------------------------------------------- */

static result post_model(http_req *r) {
    chord_err err = {0};
    json_t *body = NULL, *doc = NULL;
    int rc = http_body_json(r, &body, &err);
    if (rc == 0)
        rc = svc_create_idempotent(r->h->s, http_idempotency_key(r), "models.create", body,
                                   svc_model_register, &doc, NULL, &err);
    json_decref(body);
    return reply(r, rc, 201, doc, &err);
}

static result list_models(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_model_list(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result list_tinker_sessions(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_tinker_sessions(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_tinker_session(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_tinker_session(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_model(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_model_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

/* ---- model aliases ------------------------------------------------------------------------ */

static result put_alias(http_req *r) {
    chord_err err = {0};
    json_t *body = NULL, *doc = NULL;
    int rc = http_body_json(r, &body, &err);
    if (rc == 0) rc = svc_alias_put(r->h->s, r->params[0], body, &doc, &err);
    json_decref(body);
    return reply(r, rc, 200, doc, &err);
}

static result get_alias(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_alias_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result delete_alias(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_alias_delete(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result list_aliases(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_alias_list(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

/* ---- schedules ---------------------------------------------------------------------------- */

static result post_schedule(http_req *r) {
    chord_err err = {0};
    json_t *body = NULL, *doc = NULL;
    int rc = http_body_json(r, &body, &err);
    if (rc == 0)
        rc = svc_create_idempotent(r->h->s, http_idempotency_key(r), "schedules.create", body,
                                   svc_schedule_create, &doc, NULL, &err);
    json_decref(body);
    return reply(r, rc, 201, doc, &err);
}

static result list_schedules(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_schedule_list(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_schedule(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_schedule_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result delete_schedule(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_schedule_delete(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result pause_schedule(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_schedule_pause(r->h->s, r->params[0], 1, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result resume_schedule(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_schedule_pause(r->h->s, r->params[0], 0, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

/* ---- jobs --------------------------------------------------------------------------------- */

static result post_job(http_req *r) {
    chord_err err = {0};
    json_t *body = NULL, *doc = NULL;
    int rc = http_body_json(r, &body, &err);
    if (rc == 0)
        rc = svc_create_idempotent(r->h->s, http_idempotency_key(r), "jobs.create", body,
                                   svc_job_create, &doc, NULL, &err);
    json_decref(body);
    return reply(r, rc, 201, doc, &err);
}

static result list_jobs(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0)
        rc = svc_job_list(r->h->s, http_query(r, "state"), offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_job(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_job_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result cancel_job(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_job_cancel(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result pause_job(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_job_pause(r->h->s, r->params[0], 1, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result resume_job(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_job_pause(r->h->s, r->params[0], 0, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result job_metrics(http_req *r) {
    chord_err err = {0};
    int64_t since, max_steps;
    json_t *doc = NULL;
    int rc = http_query_int(r, "since_step", 0, INT64_MAX, 0, &since, &err);
    if (rc == 0) rc = http_query_int(r, "max_steps", 0, 1000000, 0, &max_steps, &err);
    if (rc == 0) rc = svc_job_metrics(r->h->s, r->params[0], since, (size_t)max_steps, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result job_samples(http_req *r) {
    chord_err err = {0};
    int64_t step;
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = http_query_int(r, "step", 0, INT64_MAX, -1, &step, &err);
    if (rc == 0) rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0)
        rc = svc_job_samples(r->h->s, r->params[0], step, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result job_events(http_req *r) {
    chord_err err = {0};
    int64_t since;
    if (http_query_int(r, "since_step", 0, INT64_MAX, 0, &since, &err))
        return http_send_err(r, &err);
    /* a reconnecting EventSource resumes after the last step it saw */
    const char *last = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "Last-Event-ID");
    if (last && *last) {
        char *end = NULL;
        long long id = strtoll(last, &end, 10);
        if (*end == '\0' && id >= 0 && id + 1 > since) since = id + 1;
    }
    return http_send_events(r, r->params[0], since);
}

static result job_checkpoints(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_checkpoint_list(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result checkpoint_file(http_req *r) {
    chord_err err = {0};
    char *end = NULL;
    long long step = strtoll(r->params[1], &end, 10);
    if (*end || step < 0 || r->params[1][0] == '-' || r->params[1][0] == '+') {
        chord_err_set(&err, "step: must be an integer >= 0");
        return http_send_err(r, &err);
    }
    char path[4096];
    int64_t size = 0;
    if (svc_checkpoint_file(r->h->s, r->params[0], step, r->params[2], path, sizeof path, &size,
                            &err))
        return http_send_err(r, &err);
    return http_send_file(r, path, size, r->params[2]);
}

/* ---- rollouts ----------------------------------------------------------------------------- */

static result post_rollout(http_req *r) {
    chord_err err = {0};
    json_t *body = NULL, *doc = NULL;
    int rc = http_body_json(r, &body, &err);
    if (rc == 0)
        rc = svc_create_idempotent(r->h->s, http_idempotency_key(r), "rollouts.create", body,
                                   svc_rollout_create, &doc, NULL, &err);
    json_decref(body);
    return reply(r, rc, 202, doc, &err);
}

/* ---- webhooks ----------------------------------------------------------------------------- */

static result list_webhook_deliveries(http_req *r) {
    chord_err err = {0};
    size_t offset, limit;
    const char *after = NULL;
    json_t *doc = NULL;
    int rc = paging(r, &offset, &limit, &after, &err);
    if (rc == 0) rc = svc_webhook_deliveries(r->h->s, offset, limit, after, &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

static result get_rollout(http_req *r) {
    chord_err err = {0};
    json_t *doc = NULL;
    int rc = svc_rollout_get(r->h->s, r->params[0], &doc, &err);
    return reply(r, rc, 200, doc, &err);
}

const http_route api_http_routes[] = {
    {"GET", "/healthz", HTTP_BODY_NONE, get_healthz, API_SCOPE_NONE},
    {"GET", "/metrics", HTTP_BODY_NONE, get_metrics, API_SCOPE_READ},
    {"POST", "/v1/datasets", HTTP_BODY_UPLOAD, post_dataset, API_SCOPE_ADMIN},
    {"GET", "/v1/datasets", HTTP_BODY_NONE, list_datasets, API_SCOPE_READ},
    {"GET", "/v1/datasets/{id}", HTTP_BODY_NONE, get_dataset, API_SCOPE_READ},
    {"POST", "/v1/models", HTTP_BODY_JSON, post_model, API_SCOPE_ADMIN},
    {"GET", "/v1/models", HTTP_BODY_NONE, list_models, API_SCOPE_READ},
    {"GET", "/v1/models/{id}", HTTP_BODY_NONE, get_model, API_SCOPE_READ},
    {"GET", "/v1/aliases", HTTP_BODY_NONE, list_aliases, API_SCOPE_READ},
    {"PUT", "/v1/aliases/{name}", HTTP_BODY_JSON, put_alias, API_SCOPE_ADMIN},
    {"GET", "/v1/aliases/{name}", HTTP_BODY_NONE, get_alias, API_SCOPE_READ},
    {"DELETE", "/v1/aliases/{name}", HTTP_BODY_NONE, delete_alias, API_SCOPE_ADMIN},
    {"POST", "/v1/schedules", HTTP_BODY_JSON, post_schedule, API_SCOPE_ADMIN},
    {"GET", "/v1/schedules", HTTP_BODY_NONE, list_schedules, API_SCOPE_READ},
    {"GET", "/v1/schedules/{id}", HTTP_BODY_NONE, get_schedule, API_SCOPE_READ},
    {"DELETE", "/v1/schedules/{id}", HTTP_BODY_NONE, delete_schedule, API_SCOPE_ADMIN},
    {"POST", "/v1/schedules/{id}/pause", HTTP_BODY_IGNORE, pause_schedule, API_SCOPE_ADMIN},
    {"POST", "/v1/schedules/{id}/resume", HTTP_BODY_IGNORE, resume_schedule, API_SCOPE_ADMIN},
    {"POST", "/v1/jobs", HTTP_BODY_JSON, post_job, API_SCOPE_ADMIN},
    {"GET", "/v1/jobs", HTTP_BODY_NONE, list_jobs, API_SCOPE_READ},
    {"GET", "/v1/jobs/{id}", HTTP_BODY_NONE, get_job, API_SCOPE_READ},
    {"POST", "/v1/jobs/{id}/cancel", HTTP_BODY_IGNORE, cancel_job, API_SCOPE_ADMIN},
    {"POST", "/v1/jobs/{id}/pause", HTTP_BODY_IGNORE, pause_job, API_SCOPE_ADMIN},
    {"POST", "/v1/jobs/{id}/resume", HTTP_BODY_IGNORE, resume_job, API_SCOPE_ADMIN},
    {"GET", "/v1/jobs/{id}/metrics", HTTP_BODY_NONE, job_metrics, API_SCOPE_READ},
    {"GET", "/v1/jobs/{id}/samples", HTTP_BODY_NONE, job_samples, API_SCOPE_READ},
    {"GET", "/v1/jobs/{id}/events", HTTP_BODY_NONE, job_events, API_SCOPE_READ},
    {"GET", "/v1/jobs/{id}/checkpoints", HTTP_BODY_NONE, job_checkpoints, API_SCOPE_READ},
    {"GET", "/v1/jobs/{id}/checkpoints/{step}/files/{path*}", HTTP_BODY_NONE, checkpoint_file,
     API_SCOPE_READ},
    {"GET", "/v1/tinker/sessions", HTTP_BODY_NONE, list_tinker_sessions, API_SCOPE_READ},
    {"GET", "/v1/tinker/sessions/{id}", HTTP_BODY_NONE, get_tinker_session, API_SCOPE_READ},
    {"POST", "/v1/rollouts", HTTP_BODY_JSON, post_rollout, API_SCOPE_ADMIN},
    {"GET", "/v1/rollouts/{id}", HTTP_BODY_NONE, get_rollout, API_SCOPE_READ},
    {"GET", "/v1/webhooks/deliveries", HTTP_BODY_NONE, list_webhook_deliveries, API_SCOPE_READ},
    /* the web dashboard (http_ui.c): files only, no data, so no token */
    {"GET", "/", HTTP_BODY_NONE, http_ui_page, API_SCOPE_NONE},
    {"GET", "/ui/{name}", HTTP_BODY_NONE, http_ui_file, API_SCOPE_NONE},
};
const size_t api_http_n_routes = sizeof api_http_routes / sizeof api_http_routes[0];
