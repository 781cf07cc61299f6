/* grpc_methods.c — the methods of chord.v1.Chord and grpc.health.v1.Health: each reads its
 * request message, calls the service.h function REST calls for the same route, and maps the
 * resource (JSON) into the response message by field name (pbjson.h). Nothing else: no
 * decisions about resources here, only the transport's own checks (paging ranges, a missing
 * id, the upload's first chunk) that REST makes on its query string and path.
 *
 * Not here: the call machinery (grpc_server.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/grpc/grpc_internal.h"
#include "api/grpc/pbjson.h"
#include "chord.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"

/* Maps a service result into a response message of type d and packs it. Takes doc. */
static int reply(json_t *doc, const ProtobufCMessageDescriptor *d, unsigned char **out, size_t *len,
                 chord_err *err) {
    pbj_arena a = {0};
    ProtobufCMessage *m = NULL;
    int rc = pbj_from_json(d, doc, &a, &m, err);
    if (rc) chord_err_prefix(err, "encoding %s", d->name);
    if (rc == 0) rc = pbj_pack(m, out, len, err);
    pbj_arena_free(&a);
    json_decref(doc);
    return rc;
}

static int need_id(const char *id, const char *field, chord_err *err) {
    if (!id || !*id) return chord_err_set(err, "%s: required", field);
    return 0;
}

/* offset / limit as REST's query parameters take them (limit 0 = REST's default 100). */
static int paging(int64_t offset, int64_t limit, size_t *o, size_t *l, chord_err *err) {
    if (offset < 0 || offset > INT32_MAX)
        return chord_err_set(err, "offset: must be an integer in [0, %d]", INT32_MAX);
    if (limit < 0 || limit > SVC_LIST_LIMIT_MAX)
        return chord_err_set(err, "limit: must be an integer in [1, %d] (0 = 100)",
                             SVC_LIST_LIMIT_MAX);
    *o = (size_t)offset;
    *l = limit ? (size_t)limit : 100;
    return 0;
}

/* A request's idempotency_key: "" (proto3's unset) is none. */
static const char *idem_key(const char *key) {
    return key && *key ? key : NULL;
}

#define REQ(type, name) const type *name = (const type *)req_

/* ---- jobs --------------------------------------------------------------------------------- */

static int create_job(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                      chord_err *err) {
    REQ(Chord__V1__CreateJobRequest, r);
    if (!r->job) return chord_err_set(err, "job: required (the job document)");
    json_t *doc = pbj_to_json(&r->job->base), *job = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    int rc = svc_create_idempotent(c->g->s, idem_key(r->idempotency_key), "jobs.create", doc,
                                   svc_job_create, &job, NULL, err);
    json_decref(doc);
    return rc ? -1 : reply(job, &chord__v1__job__descriptor, out, len, err);
}

static int get_job(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                   chord_err *err) {
    REQ(Chord__V1__GetJobRequest, r);
    json_t *job = NULL;
    if (need_id(r->id, "id", err) || svc_job_get(c->g->s, r->id, &job, err)) return -1;
    return reply(job, &chord__v1__job__descriptor, out, len, err);
}

static int cancel_job(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                      chord_err *err) {
    REQ(Chord__V1__CancelJobRequest, r);
    json_t *job = NULL;
    if (need_id(r->id, "id", err) || svc_job_cancel(c->g->s, r->id, &job, err)) return -1;
    return reply(job, &chord__v1__job__descriptor, out, len, err);
}

static int list_jobs(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                     chord_err *err) {
    REQ(Chord__V1__ListJobsRequest, r);
    size_t o = 0, l = 0;
    json_t *list = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_job_list(c->g->s, r->state && *r->state ? r->state : NULL, o, l, r->after, &list, err))
        return -1;
    return reply(list, &chord__v1__list_jobs_response__descriptor, out, len, err);
}

static int pause_job(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                     chord_err *err) {
    REQ(Chord__V1__PauseJobRequest, r);
    json_t *job = NULL;
    if (need_id(r->id, "id", err) || svc_job_pause(c->g->s, r->id, 1, &job, err)) return -1;
    return reply(job, &chord__v1__job__descriptor, out, len, err);
}

static int resume_job(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                      chord_err *err) {
    REQ(Chord__V1__ResumeJobRequest, r);
    json_t *job = NULL;
    if (need_id(r->id, "id", err) || svc_job_pause(c->g->s, r->id, 0, &job, err)) return -1;
    return reply(job, &chord__v1__job__descriptor, out, len, err);
}

static int get_metrics(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                       chord_err *err) {
    REQ(Chord__V1__GetMetricsRequest, r);
    if (need_id(r->id, "id", err)) return -1;
    if (r->since_step < 0) return chord_err_set(err, "since_step: must be an integer >= 0");
    if (r->max_steps < 0 || r->max_steps > 1000000)
        return chord_err_set(err, "max_steps: must be an integer in [0, 1000000]");
    json_t *doc = NULL;
    if (svc_job_metrics(c->g->s, r->id, r->since_step, (size_t)r->max_steps, &doc, err)) return -1;
    return reply(doc, &chord__v1__metrics_response__descriptor, out, len, err);
}

static int list_samples(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                        chord_err *err) {
    REQ(Chord__V1__ListSamplesRequest, r);
    size_t o = 0, l = 0;
    int64_t step = -1;
    if (need_id(r->id, "id", err) || paging(r->offset, r->limit, &o, &l, err)) return -1;
    if (r->step_opt_case == CHORD__V1__LIST_SAMPLES_REQUEST__STEP_OPT_STEP) {
        if (r->step < 0) return chord_err_set(err, "step: must be an integer >= 0");
        step = r->step;
    }
    json_t *doc = NULL;
    if (svc_job_samples(c->g->s, r->id, step, o, l, r->after, &doc, err)) return -1;
    return reply(doc, &chord__v1__list_samples_response__descriptor, out, len, err);
}

static int list_checkpoints(gcall *c, const ProtobufCMessage *req_, unsigned char **out,
                            size_t *len, chord_err *err) {
    REQ(Chord__V1__ListCheckpointsRequest, r);
    json_t *doc = NULL;
    if (need_id(r->id, "id", err) || svc_checkpoint_list(c->g->s, r->id, &doc, err)) return -1;
    return reply(doc, &chord__v1__list_checkpoints_response__descriptor, out, len, err);
}

/* WatchJob: grpc_watch.c. */

/* ---- datasets ----------------------------------------------------------------------------- */

/* UploadDataset: every chunk goes to the service's upload as it arrives (it validates each
 * line it completes); the end of the stream commits; a cancelled call aborts (on_close). */
static void upload_message(gcall *c, const unsigned char *data, size_t len) {
    chord_err err = {0};
    if (!data && c->chunks == 0) {
        chord_err_set(&err, "kind: required in the first message (no message was sent)");
        gcall_fail(c, &err);
        return;
    }
    if (!data) {
        svc_upload *up = c->up;
        c->up = NULL;
        json_t *ds = NULL;
        unsigned char *out = NULL;
        size_t n = 0;
        if (svc_upload_commit(up, &ds, &err) ||
            reply(ds, &chord__v1__dataset__descriptor, &out, &n, &err))
            gcall_fail(c, &err);
        else
            gcall_finish(c, GRPC_STATUS_OK, NULL, out, n);
        return;
    }
    Chord__V1__UploadDatasetRequest *m = NULL;
    if (pbj_unpack(&chord__v1__upload_dataset_request__descriptor, data, len,
                   (ProtobufCMessage **)&m, &err))
        goto fail;
    c->chunks++;
    if (c->chunks == 1) {
        if (!m->kind || !*m->kind) {
            chord_err_set(&err, "kind: required in the first message (prompts, expert or eval)");
            goto fail;
        }
        snprintf(c->kind, sizeof c->kind, "%s", m->kind);
        if (svc_upload_begin(c->g->s, m->name && *m->name ? m->name : NULL, m->kind, &c->up, &err))
            goto fail;
        if (m->idempotency_key && *m->idempotency_key &&
            svc_upload_set_key(c->up, m->idempotency_key, &err))
            goto fail;
    } else if (m->kind && *m->kind && strcmp(m->kind, c->kind) != 0) {
        chord_err_set(&err, "kind: must be the first message's (\"%s\") or empty", c->kind);
        goto fail;
    }
    if (m->data.len && svc_upload_write(c->up, m->data.data, m->data.len, &err)) goto fail;
    chord__v1__upload_dataset_request__free_unpacked(m, NULL);
    if (gcall_recv(c)) {
        svc_upload_abort(c->up);
        c->up = NULL;
        gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot read the next message", NULL, 0);
    }
    return;
fail:
    if (m) chord__v1__upload_dataset_request__free_unpacked(m, NULL);
    svc_upload_abort(c->up); /* nothing stored */
    c->up = NULL;
    gcall_fail(c, &err);
}

static int get_dataset(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                       chord_err *err) {
    REQ(Chord__V1__GetDatasetRequest, r);
    json_t *doc = NULL;
    if (need_id(r->id, "id", err) || svc_dataset_get(c->g->s, r->id, &doc, err)) return -1;
    return reply(doc, &chord__v1__dataset__descriptor, out, len, err);
}

static int list_datasets(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                         chord_err *err) {
    REQ(Chord__V1__ListDatasetsRequest, r);
    size_t o = 0, l = 0;
    json_t *doc = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_dataset_list(c->g->s, o, l, r->after, &doc, err))
        return -1;
    return reply(doc, &chord__v1__list_datasets_response__descriptor, out, len, err);
}

/* ---- models ------------------------------------------------------------------------------- */

static int register_model(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                          chord_err *err) {
    REQ(Chord__V1__RegisterModelRequest, r);
    json_t *doc = pbj_to_json(&r->base), *model = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    json_object_del(doc, "idempotency_key"); /* the request's, not the model's */
    int rc = svc_create_idempotent(c->g->s, idem_key(r->idempotency_key), "models.create", doc,
                                   svc_model_register, &model, NULL, err);
    json_decref(doc);
    return rc ? -1 : reply(model, &chord__v1__model__descriptor, out, len, err);
}

static int get_model(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                     chord_err *err) {
    REQ(Chord__V1__GetModelRequest, r);
    json_t *doc = NULL;
    if (need_id(r->id, "id", err) || svc_model_get(c->g->s, r->id, &doc, err)) return -1;
    return reply(doc, &chord__v1__model__descriptor, out, len, err);
}

static int list_models(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                       chord_err *err) {
    REQ(Chord__V1__ListModelsRequest, r);
    size_t o = 0, l = 0;
    json_t *doc = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_model_list(c->g->s, o, l, r->after, &doc, err))
        return -1;
    return reply(doc, &chord__v1__list_models_response__descriptor, out, len, err);
}

/* ---- rollouts ----------------------------------------------------------------------------- */

static int rollout(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                   chord_err *err) {
    REQ(Chord__V1__RolloutRequest, r);
    json_t *doc = pbj_to_json(&r->base), *ro = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    json_object_del(doc, "idempotency_key");
    int rc = svc_create_idempotent(c->g->s, idem_key(r->idempotency_key), "rollouts.create", doc,
                                   svc_rollout_create, &ro, NULL, err);
    json_decref(doc);
    return rc ? -1 : reply(ro, &chord__v1__rollout_resource__descriptor, out, len, err);
}

static int get_rollout(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                       chord_err *err) {
    REQ(Chord__V1__GetRolloutRequest, r);
    json_t *doc = NULL;
    if (need_id(r->id, "id", err) || svc_rollout_get(c->g->s, r->id, &doc, err)) return -1;
    return reply(doc, &chord__v1__rollout_resource__descriptor, out, len, err);
}

/* ---- model aliases ------------------------------------------------------------------------ */

static int set_alias(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                     chord_err *err) {
    REQ(Chord__V1__SetAliasRequest, r);
    if (need_id(r->name, "name", err)) return -1;
    json_t *doc = json_pack("{s:s}", "model", r->model ? r->model : ""), *alias = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    int rc = svc_alias_put(c->g->s, r->name, doc, &alias, err);
    json_decref(doc);
    return rc ? -1 : reply(alias, &chord__v1__alias__descriptor, out, len, err);
}

static int get_alias(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                     chord_err *err) {
    REQ(Chord__V1__GetAliasRequest, r);
    json_t *doc = NULL;
    if (need_id(r->name, "name", err) || svc_alias_get(c->g->s, r->name, &doc, err)) return -1;
    return reply(doc, &chord__v1__alias__descriptor, out, len, err);
}

static int delete_alias(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                        chord_err *err) {
    REQ(Chord__V1__DeleteAliasRequest, r);
    json_t *doc = NULL;
    if (need_id(r->name, "name", err) || svc_alias_delete(c->g->s, r->name, &doc, err)) return -1;
    return reply(doc, &chord__v1__alias__descriptor, out, len, err);
}

static int list_aliases(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                        chord_err *err) {
    REQ(Chord__V1__ListAliasesRequest, r);
    size_t o = 0, l = 0;
    json_t *doc = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_alias_list(c->g->s, o, l, r->after, &doc, err))
        return -1;
    return reply(doc, &chord__v1__list_aliases_response__descriptor, out, len, err);
}

/* ---- schedules ---------------------------------------------------------------------------- */

static int create_schedule(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                           chord_err *err) {
    REQ(Chord__V1__CreateScheduleRequest, r);
    json_t *doc = pbj_to_json(&r->base), *x = NULL;
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    json_object_del(doc, "idempotency_key"); /* the request's, not the schedule's */
    int rc = svc_create_idempotent(c->g->s, idem_key(r->idempotency_key), "schedules.create", doc,
                                   svc_schedule_create, &x, NULL, err);
    json_decref(doc);
    return rc ? -1 : reply(x, &chord__v1__schedule__descriptor, out, len, err);
}

/* The calls on one schedule by id: get, delete, pause, resume. */
static int schedule_by_id(gcall *c, const char *id, int what, unsigned char **out, size_t *len,
                          chord_err *err) {
    json_t *doc = NULL;
    if (need_id(id, "id", err)) return -1;
    int rc = what == 0   ? svc_schedule_get(c->g->s, id, &doc, err)
             : what == 1 ? svc_schedule_delete(c->g->s, id, &doc, err)
                         : svc_schedule_pause(c->g->s, id, what == 2, &doc, err);
    return rc ? -1 : reply(doc, &chord__v1__schedule__descriptor, out, len, err);
}

static int get_schedule(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                        chord_err *err) {
    REQ(Chord__V1__GetScheduleRequest, r);
    return schedule_by_id(c, r->id, 0, out, len, err);
}

static int delete_schedule(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                           chord_err *err) {
    REQ(Chord__V1__DeleteScheduleRequest, r);
    return schedule_by_id(c, r->id, 1, out, len, err);
}

static int pause_schedule(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                          chord_err *err) {
    REQ(Chord__V1__PauseScheduleRequest, r);
    return schedule_by_id(c, r->id, 2, out, len, err);
}

static int resume_schedule(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                           chord_err *err) {
    REQ(Chord__V1__ResumeScheduleRequest, r);
    return schedule_by_id(c, r->id, 3, out, len, err);
}

static int list_schedules(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                          chord_err *err) {
    REQ(Chord__V1__ListSchedulesRequest, r);
    size_t o = 0, l = 0;
    json_t *doc = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_schedule_list(c->g->s, o, l, r->after, &doc, err))
        return -1;
    return reply(doc, &chord__v1__list_schedules_response__descriptor, out, len, err);
}

/* ---- the Tinker API's sessions --------------------------------------------------------------- */

static int list_tinker_sessions(gcall *c, const ProtobufCMessage *req_, unsigned char **out,
                                size_t *len, chord_err *err) {
    REQ(Chord__V1__ListTinkerSessionsRequest, r);
    size_t o = 0, l = 0;
    json_t *doc = NULL;
    if (paging(r->offset, r->limit, &o, &l, err) ||
        svc_tinker_sessions(c->g->s, o, l, r->after, &doc, err))
        return -1;
    return reply(doc, &chord__v1__list_tinker_sessions_response__descriptor, out, len, err);
}

static int get_tinker_session(gcall *c, const ProtobufCMessage *req_, unsigned char **out,
                              size_t *len, chord_err *err) {
    REQ(Chord__V1__GetTinkerSessionRequest, r);
    json_t *doc = NULL;
    if (need_id(r->id, "id", err) || svc_tinker_session(c->g->s, r->id, &doc, err)) return -1;
    return reply(doc, &chord__v1__tinker_session__descriptor, out, len, err);
}

/* ---- grpc.health.v1.Health ------------------------------------------------------------------
 * "" (the whole server) and "chord.v1.Chord" are served; SERVING until the server starts
 * stopping, then NOT_SERVING. */

static int health_known(const char *service) {
    return !service || !*service || strcmp(service, "chord.v1.Chord") == 0;
}

static int health_status(gcall *c, int known) {
    if (!known) return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    if (atomic_load(&c->g->quiescing) || svc_stopping(c->g->s))
        return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
    return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

static int health_pack(int status, unsigned char **out, size_t *len, chord_err *err) {
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = status;
    return pbj_pack(&resp.base, out, len, err);
}

static int health_check(gcall *c, const ProtobufCMessage *req_, unsigned char **out, size_t *len,
                        chord_err *err) {
    REQ(Grpc__Health__V1__HealthCheckRequest, r);
    if (!health_known(r->service))
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "service \"%s\" is not served here",
                              r->service);
    return health_pack(health_status(c, 1), out, len, err);
}

static int health_watch_open(gcall *c, const ProtobufCMessage *req_, chord_err *err) {
    REQ(Grpc__Health__V1__HealthCheckRequest, r);
    (void)err;
    c->health_known = health_known(r->service);
    return 0;
}

static void health_watch_pump(gcall *c) {
    if (c->done || c->send_busy || c->closed) return;
    int status = health_status(c, c->health_known);
    chord_err err = {0};
    if (status != c->health_sent) {
        unsigned char *buf = NULL;
        size_t len = 0;
        if (health_pack(status, &buf, &len, &err)) {
            gcall_fail(c, &err);
            return;
        }
        c->health_sent = status;
        if (gcall_send(c, buf, len)) gcall_finish(c, GRPC_STATUS_INTERNAL, "cannot send", NULL, 0);
        return;
    }
    if (atomic_load(&c->g->ending))
        gcall_finish(c, GRPC_STATUS_UNAVAILABLE, "server is stopping", NULL, 0);
}

/* ---- the table ---------------------------------------------------------------------------- */

/* need: ADMIN for what writes (create, cancel, upload, register, rollout), READ for gets, lists
 * and watches, NONE (no token) for health only; api_grpc_start checks the table. */
#define UNARY(name, fn, req, need)                                                                 \
    { "/chord.v1.Chord/" name, GM_UNARY, &req, fn, NULL, NULL, NULL, need }

const gmethod api_grpc_methods[] = {
    UNARY("CreateJob", create_job, chord__v1__create_job_request__descriptor, API_SCOPE_ADMIN),
    UNARY("GetJob", get_job, chord__v1__get_job_request__descriptor, API_SCOPE_READ),
    UNARY("ListJobs", list_jobs, chord__v1__list_jobs_request__descriptor, API_SCOPE_READ),
    UNARY("CancelJob", cancel_job, chord__v1__cancel_job_request__descriptor, API_SCOPE_ADMIN),
    UNARY("PauseJob", pause_job, chord__v1__pause_job_request__descriptor, API_SCOPE_ADMIN),
    UNARY("ResumeJob", resume_job, chord__v1__resume_job_request__descriptor, API_SCOPE_ADMIN),
    {"/chord.v1.Chord/WatchJob", GM_SERVER_STREAM, &chord__v1__watch_job_request__descriptor, NULL,
     api_grpc_watch_open, api_grpc_watch_pump, NULL, API_SCOPE_READ},
    UNARY("GetMetrics", get_metrics, chord__v1__get_metrics_request__descriptor, API_SCOPE_READ),
    UNARY("ListSamples", list_samples, chord__v1__list_samples_request__descriptor, API_SCOPE_READ),
    UNARY("ListCheckpoints", list_checkpoints, chord__v1__list_checkpoints_request__descriptor,
          API_SCOPE_READ),
    {"/chord.v1.Chord/UploadDataset", GM_CLIENT_STREAM, NULL, NULL, NULL, NULL, upload_message,
     API_SCOPE_ADMIN},
    UNARY("GetDataset", get_dataset, chord__v1__get_dataset_request__descriptor, API_SCOPE_READ),
    UNARY("ListDatasets", list_datasets, chord__v1__list_datasets_request__descriptor,
          API_SCOPE_READ),
    UNARY("RegisterModel", register_model, chord__v1__register_model_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("GetModel", get_model, chord__v1__get_model_request__descriptor, API_SCOPE_READ),
    UNARY("ListModels", list_models, chord__v1__list_models_request__descriptor, API_SCOPE_READ),
    UNARY("Rollout", rollout, chord__v1__rollout_request__descriptor, API_SCOPE_ADMIN),
    UNARY("GetRollout", get_rollout, chord__v1__get_rollout_request__descriptor, API_SCOPE_READ),
    UNARY("SetAlias", set_alias, chord__v1__set_alias_request__descriptor, API_SCOPE_ADMIN),
    UNARY("GetAlias", get_alias, chord__v1__get_alias_request__descriptor, API_SCOPE_READ),
    UNARY("DeleteAlias", delete_alias, chord__v1__delete_alias_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("ListAliases", list_aliases, chord__v1__list_aliases_request__descriptor, API_SCOPE_READ),
    UNARY("CreateSchedule", create_schedule, chord__v1__create_schedule_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("GetSchedule", get_schedule, chord__v1__get_schedule_request__descriptor, API_SCOPE_READ),
    UNARY("ListSchedules", list_schedules, chord__v1__list_schedules_request__descriptor,
          API_SCOPE_READ),
    UNARY("DeleteSchedule", delete_schedule, chord__v1__delete_schedule_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("PauseSchedule", pause_schedule, chord__v1__pause_schedule_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("ResumeSchedule", resume_schedule, chord__v1__resume_schedule_request__descriptor,
          API_SCOPE_ADMIN),
    UNARY("ListTinkerSessions", list_tinker_sessions,
          chord__v1__list_tinker_sessions_request__descriptor, API_SCOPE_READ),
    UNARY("GetTinkerSession", get_tinker_session, chord__v1__get_tinker_session_request__descriptor,
          API_SCOPE_READ),
    {"/grpc.health.v1.Health/Check", GM_UNARY, &grpc__health__v1__health_check_request__descriptor,
     health_check, NULL, NULL, NULL, API_SCOPE_NONE},
    {"/grpc.health.v1.Health/Watch", GM_SERVER_STREAM,
     &grpc__health__v1__health_check_request__descriptor, NULL, health_watch_open,
     health_watch_pump, NULL, API_SCOPE_NONE},
};
const size_t api_grpc_n_methods = sizeof api_grpc_methods / sizeof api_grpc_methods[0];
