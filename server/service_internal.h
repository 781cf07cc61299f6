/* service_internal.h — what the server/service*.c files share: the service struct, the pool of
 * SQLite handles, JSON helpers that turn store records into API resources. Not a public
 * interface: transports include service.h only. */
#ifndef CHORD_SERVER_SERVICE_INTERNAL_H
#define CHORD_SERVER_SERVICE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "server/base/poller.h"
#include "server/jobs/jobs.h"
#include "server/model/config.h"
#include "server/service.h"
#include "server/train/jobconfig.h"
#include "storage/store.h"

#define SVC_HIST_BUCKETS 12
#define SVC_MAX_ROUTES 64

/* Requests served, by (transport, route, method, status), with a latency histogram per route. */
typedef struct svc_route_stat {
    char transport[8];
    char route[64];
    char method[8];
    int status;
    uint64_t count;
} svc_route_stat;

typedef struct svc_latency {
    char transport[8];
    char route[64];
    uint64_t buckets[SVC_HIST_BUCKETS]; /* cumulative counts are computed when rendering */
    uint64_t count;
    double sum;
} svc_latency;

/* A job's event feed shared by its watches (service.c: the fan-out; service.h draws its
 * states). */
typedef struct svc_feed svc_feed;

struct svc {
    char *data_dir;
    char *models_root; /* realpath */
    int64_t max_upload;
    int64_t max_line;           /* svc_options.max_line_bytes */
    int64_t max_rollout_tokens; /* svc_options.max_rollout_tokens */
    int max_queued_jobs, max_pending_rollouts;
    int64_t memory_limit; /* svc_options.memory_limit */
    int ranks;            /* processes every job runs on (svc_options.dist's size, or 1) */
    double started;       /* chord_now() at open */
    int64_t started_ms;
    atomic_int stopping;
    atomic_int shut_down; /* svc_shutdown ran */
    char **devices;
    int n_devices;
    jobs_pool *jobs; /* set by svc_open, freed by svc_close: never changes in between */
    struct tk_service *tinker; /* the Tinker-compatible API (server/tinker/tinker.h); likewise */

    pthread_mutex_t pool_mu; /* the store handle pool */
    store **free_handles;
    size_t n_free, cap_free;

    /* the watch hub: feeds by (job, since_step) and the thread that polls them */
    pthread_mutex_t hub_mu;
    pthread_cond_t hub_cv;
    svc_feed *feeds;                 /* feeds that take joiners and polls (hub_mu) */
    svc_feed *poll_head, *poll_tail; /* feeds to poll, oldest first (hub_mu) */
    int hub_stop;                    /* (hub_mu) */
    pthread_t hub_thread;
    int hub_started;

    /* webhooks (service_webhooks.c) */
    char *wh_url;
    unsigned char *wh_key;
    size_t wh_key_len;
    int64_t wh_since_ms; /* events from then on are sent (store_webhook_enable) */
    chord_poller wh_poller; /* the delivery thread */

    /* the pipeline thread (service_promote.c): promotions, schedules */
    chord_poller pl_poller; /* the pipeline thread: promotions, then schedules */
    /* schedules (service_schedules.c; the pipeline thread's own) */
    int64_t sched_beat_ms;    /* the last heartbeat written */
    int64_t sched_down_from;  /* fire times in (down_from, down_until) came while chordd was */
    int64_t sched_down_until; /* down: the missed policy applies to them */

    pthread_mutex_t idem_mu; /* keyed creates: lookup, create, record (service_pipeline.c) */
    int64_t idem_ttl_ms;     /* svc_options.idempotency_ttl_s */

    pthread_mutex_t stats_mu; /* Prometheus counters */
    svc_route_stat routes[SVC_MAX_ROUTES * 4];
    size_t n_routes;
    svc_latency latencies[SVC_MAX_ROUTES];
    size_t n_latencies;
    uint64_t steps_total;
    uint64_t uploads_total, upload_bytes_total, upload_rejected_total;
    double tokens_per_s_train, tokens_per_s_rollout;
};

/* A store handle for the calling thread's exclusive use until svc_store_put. NULL with err
 * set when none can be opened. */
store *svc_store_get(svc *s, chord_err *err);
void svc_store_put(svc *s, store *st);

/* For lookups by an id from a request path: a malformed id (CHORD_E_INVALID from the store) is
 * an unknown one (CHORD_E_NOT_FOUND). Returns rc. */
int svc_by_id(int rc, chord_err *err);

/* Something about job `id` changed (a state, a step, a checkpoint): its feeds are polled. Cheap
 * (the watch thread polls); any thread. */
void svc_publish(svc *s, const char *id);

/* RFC 3339 string for a timestamp, or JSON null when ms is 0. */
json_t *svc_json_time(int64_t ms);
/* json_string or null. */
json_t *svc_json_str(const char *s);
/* A number, or null for NaN / infinity (JSON has neither). */
json_t *svc_json_real(double v);
/* Adds (steals) value under key; sets *bad on failure. */
void svc_json_put(json_t *obj, const char *key, json_t *value, int *bad);
/* A page (service.h, "Every list is a page") from the up to limit + 1 items a list read (steals
 * items): one more than the page tells has_more and is dropped; next_cursor is the last kept
 * item's "id", else its "name" (an alias), else "<step>.<index>" (a sample). */
json_t *svc_json_list(json_t *items, int64_t total, size_t offset, size_t limit);
/* after as the store takes it: NULL for NULL or "". */
const char *svc_cursor(const char *after);

json_t *svc_job_json(const store_job *j);
json_t *svc_checkpoint_json(const store_checkpoint *c);

/* Resolves `path` (relative to the models root, or absolute) to its realpath inside the root;
 * `field` names it in errors. out has PATH_MAX bytes. */
int svc_resolve_under_root(svc *s, const char *field, const char *path, char *out, chord_err *err);
/* real (resolved under the root) as a model directory: its own (config.json) or, for a PEFT LoRA
 * adapter directory, its base's, which must be a model directory under the root as well;
 * weights (PATH_MAX) receives the directory holding config.json. Errors name field / ref. */
int svc_model_dir_weights(svc *s, const char *field, const char *ref, const char *real,
                          char *weights, chord_err *err);

/* Resolves a job's or rollout's "model" reference: a registered model id or a directory under
 * the models root. *dir gets the absolute directory (malloc'd) or NULL for a random-init model,
 * whose HF config then goes to *init_config (new reference); *tokenizer the tokenizer dir or
 * NULL. */
int svc_resolve_model(svc *s, store *st, const char *field, const char *ref, char **dir,
                      json_t **init_config, char **tokenizer, chord_err *err);

/* ---- pipelines (service_pipeline.c) ---------------------------------------------------------- */

/* A checkpoint reference {"job_id", "step"?} (field names it in errors): the job's kept
 * checkpoint at step, or its latest when step is left out; CHORD_E_INVALID naming
 * field.job_id / field.step when there is none. */
int svc_checkpoint_ref(store *st, const char *field, const json_t *ref, store_checkpoint *out,
                       chord_err *err);
/* A dataset by id ("ds_" + 24 hex digits) or by name (the newest upload of that name whose kind
 * is kind_a or kind_b); id gets the id. CHORD_E_INVALID naming field otherwise. */
int svc_dataset_ref(store *st, const char *field, const char *ref, const char *kind_a,
                    const char *kind_b, char id[STORE_ID_MAX], chord_err *err);
/* svc_upload_commit's half of a keyed upload: takes the keys' lock (also on return 0) and sets
 * *replay to the kept first result, if any; svc_upload_idem_end records doc (when not NULL) and
 * releases the lock. -1 (lock not held) on another request under the key. */
int svc_upload_idem_begin(svc *s, store *st, const char *key, const char *kind, const char *name,
                          const char *sha256, char fp[65], json_t **replay, chord_err *err);
void svc_upload_idem_end(svc *s, store *st, const char *key, const char *fp, const json_t *doc);

/* A checkpoint as a model (one implementation: POST /v1/models {"from_checkpoint"} and a
 * promotion): its weights directory checked (a LoRA adapter's base too), fitting a device;
 * *config_text (malloc'd) its HF config.json. Errors name field. */
int svc_checkpoint_model(svc *s, const char *field, const store_checkpoint *ck, char **config_text,
                         chord_err *err);
/* The default name of a model registered from a checkpoint: "<job_id>-step-<N>". */
void svc_checkpoint_model_name(const store_checkpoint *ck, char name[64]);

/* Stores a checked, resolved job (svc_job_submit): name, its config, the checkpoint it starts
 * from (or NULL) and its pipeline fields; job_id receives its id. */
typedef int (*svc_job_insert_fn)(store *st, void *user, const char *name, const char *config_json,
                                 const char *base_checkpoint_id, const store_job_extra *extra,
                                 char job_id[STORE_ID_MAX], chord_err *err);
/* The one submission of a job document (svc_job_create is it with a plain insert; a schedule's
 * fire inserts inside its own transaction): checks and resolves doc as svc_job_create says,
 * then calls insert, then wakes the workers. */
int svc_job_submit(svc *s, const json_t *doc, svc_job_insert_fn insert, void *user, json_t **job,
                   chord_err *err);

/* ---- aliases and eval gates (service_promote.c) ---------------------------------------------- */

/* A job document's pipeline fields: "model": {"alias": NAME} (resolved now to the alias's
 * model) and "promote": {"alias", "min_eval_accuracy"}. */
typedef struct svc_job_pipeline {
    char model_alias[STORE_ALIAS_MAX], alias_model_id[STORE_ID_MAX];
    char promote_alias[STORE_ALIAS_MAX];
    store_job_extra extra; /* points into the above (NULLs when absent) */
} svc_job_pipeline;

/* Takes the pipeline fields off doc: *plain (new reference) is doc without "promote" and with
 * a model named by alias as {"path": <the model id>}; pipe what they said. Errors name the
 * field (model.alias, promote.alias, promote.min_eval_accuracy). */
int svc_job_pipeline_parse(store *st, const json_t *doc, json_t **plain, svc_job_pipeline *pipe,
                           chord_err *err);
/* Adds "model_alias", "promote" and "promotion" (null when none) to a job resource. */
void svc_job_pipeline_json(const store_job *j, json_t *job, int *bad);
/* The model alias `name` points at now; CHORD_E_INVALID naming field when there is none. */
int svc_alias_ref(store *st, const char *field, const char *name, char model_id[STORE_ID_MAX],
                  chord_err *err);
#define SVC_PIPELINE_POLL_MS 250

/* Starts the pipeline thread: it decides the promotions of jobs that ended (also those that
 * ended while chordd was down) and fires schedules. */
int svc_pipeline_start(svc *s, chord_err *err);
/* The schedules' part of the pipeline thread (service_schedules.c): svc_schedules_open once
 * before the thread starts (reads and writes the heartbeat: when chordd was last up), then
 * svc_schedules_pass on every turn (fires what is due). */
int svc_schedules_open(svc *s, chord_err *err);
void svc_schedules_pass(svc *s);
#define SVC_SCHEDULE_BEAT_MS 1000
#define SVC_SCHEDULE_SLACK_MS 2500

/* Something happened (a job ended): the thread looks now. Cheap; any thread. */
void svc_pipeline_wake(svc *s);
/* Joins the thread (svc_close). Idempotent. */
void svc_pipeline_stop(svc *s);

/* ---- webhooks (service_webhooks.c) ----------------------------------------------------------- */

/* Starts the webhook thread when url is not NULL (svc_open). */
int svc_webhooks_start(svc *s, const char *url, const char *secret, chord_err *err);
/* Something happened: the thread looks for new events now. Cheap; any thread. */
void svc_webhooks_wake(svc *s);
/* Joins the thread after a last collect, frees what start made (svc_close). Idempotent. */
void svc_webhooks_stop(svc *s);

/* The shared base weights resident on the devices (server/jobs/bases.h), for GET /healthz:
 * [{"device", "model" (the base's key: "dir:PATH" or "init:SEED:CONFIG"), "bytes", "users"}]. */
json_t *svc_shared_bases_json(svc *s);
/* The same as Prometheus gauges (chord_shared_base_bytes, chord_shared_base_users), malloc'd
 * text; NULL when there is nothing to say or no memory. */
char *svc_shared_bases_prometheus(svc *s);

/* ---- will it fit (service_memory.c) ----------------------------------------------------------
 * Each returns 0 when the work fits the best device it may run on (or no device can tell its
 * memory), else CHORD_E_TOO_LARGE with the figures (mem_estimate_check). */

/* A job (device: the job's "device"), its prompt bound read from its datasets through the
 * caller's store handle st. */
int svc_check_job_fits(svc *s, store *st, const job_config *cfg, const model_config *mc,
                       chord_err *err);
/* A model's weights (any device). */
int svc_check_model_fits(svc *s, const model_config *mc, chord_err *err);
/* A resolved rollout request (rollout.h's document); reads the config.json it names. */
int svc_check_rollout_fits(svc *s, const json_t *req, chord_err *err);

#endif
