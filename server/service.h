/* service.h — the one service interface both transports call (REST in api/http, gRPC in
 * api/grpc): jobs, datasets, models, rollouts, metrics, checkpoints, health, Prometheus text.
 *
 * Transport-neutral: resources come back as jansson documents (json_t *, a new reference the
 * caller json_decref()s) whose field names are the API's, so REST writes them as they are and
 * gRPC maps them one-for-one. Errors are chord_err categories (server/base/err.h) that the
 * transports map to status codes: CHORD_E_INVALID names the bad field ("model.path: ..."),
 * CHORD_E_NOT_FOUND an unknown id, CHORD_E_CONFLICT an illegal state change, CHORD_E_TOO_LARGE an
 * upload over the limit or work that would not fit a device's memory, CHORD_E_UNAVAILABLE a
 * server that is stopping.
 *
 * Threading: every function may be called from any thread at any time between svc_open and
 * svc_close (the service keeps a pool of SQLite handles, one per concurrent caller). An upload
 * handle and a watch belong to one caller at a time (not necessarily the same thread across
 * calls).
 *
 * Lifetime (as llama.cpp's server keeps its task queue for the whole process): what a request
 * thread can reach — the service, its jobs pool, its watch feeds, its SQLite handles — lives
 * until svc_close; svc_shutdown only flips a flag and joins the workers.
 *
 *     svc_open ----> SERVING ---- svc_shutdown ----> STOPPING ---- svc_close ----> (freed)
 *                                 (SIGTERM)          svc_stopping() is 1: work is
 *                                                    refused with CHORD_E_UNAVAILABLE,
 *                                                    reads and watches still answer
 *
 * chordd's order (cmd/cmd_serve.c): quiesce both transports (no new connections or calls),
 * svc_shutdown (running jobs checkpoint and go back to the queue; requests still in flight get
 * their answer or CHORD_E_UNAVAILABLE), stop both transports (every request thread has
 * returned, every watch is closed), then svc_close.
 *
 * What this is not: no HTTP, no gRPC, no training logic. Jobs run in server/jobs (one worker
 * thread per device) through the trainer seam (server/train/trainer.h). */
#ifndef CHORD_SERVER_SERVICE_H
#define CHORD_SERVER_SERVICE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

#define SVC_VERSION "0.1.0"
#define SVC_LIST_LIMIT_MAX 1000

/* A refusal because the server is at one of its limits (a full queue): the transports answer
 * 429 / RESOURCE_EXHAUSTED, as for their own rate and connection limits. An error category
 * beside err.h's CHORD_E_* (CHORD_E_TOO_LARGE is the request's own size: 413). */
#define SVC_E_BUSY 8
/* An idempotency key already used for another request (docs/pipelines.md): 409 / ALREADY_EXISTS.
 * Beside err.h's categories, like SVC_E_BUSY. */
#define SVC_E_KEY_REUSED 16

/* The defaults of the service's limits (docs/operations.md, "Limits"). */
#define SVC_DEFAULT_MAX_LINE_BYTES ((int64_t)1 << 20)
#define SVC_DEFAULT_MAX_ROLLOUT_TOKENS ((int64_t)1 << 20)
#define SVC_DEFAULT_MAX_QUEUED_JOBS 1000
#define SVC_DEFAULT_MAX_PENDING_ROLLOUTS 1000
#define SVC_DEFAULT_IDEMPOTENCY_TTL_S (24 * 3600)
#define SVC_IDEMPOTENCY_KEY_MAX 255

typedef struct svc svc;

struct dist_ctx;

typedef struct svc_options {
    const char *data_dir;       /* required; created when missing */
    const char *models_root;    /* directories models may be registered from; NULL =
                                   <data_dir>/models (created) */
    const char *device;         /* "auto" (all CUDA GPUs, else the CPU), "cpu", "cuda",
                                   "cuda:N[,M...]"; NULL = "auto". */
    int slots;                  /* workers (jobs at once) per device, sharing base weights
                                   (server/jobs/jobs.h); <= 0 = 1 */
    int threads;                /* CPU threads per worker's backend; <= 0 = all cores */
    int64_t max_upload_bytes;   /* dataset upload limit; <= 0 = 1 GiB */
    int64_t max_line_bytes;     /* longest JSONL line of an upload (CHORD_E_TOO_LARGE naming
                                   the line); <= 0 = SVC_DEFAULT_MAX_LINE_BYTES */
    int64_t max_rollout_tokens; /* most tokens one rollout request may ask for: prompts x n x
                                   max_tokens (CHORD_E_TOO_LARGE); <= 0 = the default */
    int max_queued_jobs;        /* jobs queued at once; another is SVC_E_BUSY; <= 0 = the
                                   default */
    int max_pending_rollouts;   /* rollout requests pending at once; likewise */
    int64_t memory_limit;       /* bytes a job or rollout may use on one device; <= 0 = the
                                   device's free memory (server/train/mem_estimate.h) */
    int workers;                /* 0 = start no workers (jobs stay queued; API tests) */
    int64_t idempotency_ttl_s;  /* how long an idempotency key's first result is kept; <= 0 =
                                   SVC_DEFAULT_IDEMPOTENCY_TTL_S */
    const char *webhook_url;    /* where signed events go (docs/pipelines.md); NULL = none */
    const char *webhook_secret; /* its signing secret ("whsec_<base64>" or raw); required with a
                                   URL */
    /* `chordd serve` under mpirun: this service is rank 0 of dist and every job runs on all its
     * ranks (server/jobs/ranks.h); NULL: one process */
    struct dist_ctx *dist;
    int zero;         /* with dist: ZeRO-1 for every job */
    double bucket_mb; /* with dist: gradient bucket size, MiB (0: one sum after the backward) */
} svc_options;

/* Opens the data directory (store.h), moves jobs left running by a dead process back to queued
 * (they resume from their last checkpoint), opens one backend per device and starts a worker on
 * each. */
int svc_open(const svc_options *opt, svc **out, chord_err *err);
/* Graceful stop (SERVING -> STOPPING), idempotent, any thread, while requests are in flight:
 * new jobs, uploads and rollouts are refused (CHORD_E_UNAVAILABLE), each running job is asked to
 * stop after its current step with a checkpoint and goes back to queued (the next start resumes
 * it), workers are joined (jobs_shutdown), watches are woken to see the jobs' last state. Frees
 * nothing: every other function stays callable until svc_close. */
void svc_shutdown(svc *s);
/* svc_shutdown, then stops the watch thread, frees the jobs pool, closes every SQLite handle and
 * frees the service. Call it only once nothing can call into the service any more (both
 * transports stopped, every watch closed, every upload committed or aborted). NULL is
 * allowed. */
void svc_close(svc *s);
/* 1 once svc_shutdown started. */
int svc_stopping(const svc *s);
/* The devices workers run on ("cpu", "cuda:0", ...), n_devices of them. */
const char *const *svc_devices(const svc *s, int *n_devices);

/* ---- jobs ---------------------------------------------------------------------------------
 * A job resource: {"id", "name", "state", "created_at", "started_at", "finished_at" (RFC 3339
 * or null), "error" (string or null), "current_step" (-1 before the first), "steps" (total),
 * "device" (or null), "cancel_requested", "config" (the fully resolved job document)}. */

/* Validates a job document (jobconfig.h: every error names the field), resolves its model
 * (a registered model id "mdl_…", a directory under the models root, or model.init; its
 * config.json is read) and its dataset ids (which must exist and be of a fitting kind), checks
 * that it fits a device it may run on (mem_estimate_job against the free memory, counting what
 * the job running there now will release, within memory_limit: CHORD_E_TOO_LARGE with the
 * figures otherwise), stores it as queued and wakes a worker. The stored config is the resolved
 * document (defaults filled in). */
int svc_job_create(svc *s, const json_t *doc, json_t **job, chord_err *err);
int svc_job_get(svc *s, const char *id, json_t **job, chord_err *err);
/* Every list is a page {"items": [...], "total", "offset", "limit", "has_more", "next_cursor"}:
 * `after` (NULL or "" = from the start) is a cursor, the next_cursor of an earlier page: only
 * items after that one in the list's order come, then `offset` is skipped. next_cursor is the
 * cursor of the page's last item (null when the page is empty), has_more whether more items
 * follow it now; total counts every item of the list. A cursor is an item's position (its id;
 * "<step>.<index>" for samples), so items inserted between two pages are never skipped or
 * repeated. An unknown cursor is CHORD_E_INVALID naming "after". limit 0 = SVC_LIST_LIMIT_MAX. */

/* Jobs, newest first; state NULL = all states, else a state name (CHORD_E_INVALID otherwise). */
int svc_job_list(svc *s, const char *state, size_t offset, size_t limit, const char *after,
                 json_t **list, chord_err *err);
/* Cancels a queued job at once, or asks a running one to stop within one step (the returned
 * job has cancel_requested true and is cancelled shortly after). A finished job is
 * CHORD_E_CONFLICT. Also while the server stops (it adds no work): a running job then ends
 * cancelled instead of going back to the queue, or, if the stop got there first, the next start
 * cancels it. */
int svc_job_cancel(svc *s, const char *id, json_t **job, chord_err *err);
/* Pauses a job (pause 1): a queued one at once (state "paused"); a running one stops after its
 * current step with a checkpoint, frees its device and becomes "paused" (pause_requested true
 * meanwhile). Resumes it (pause 0): "queued" again at its original place in line (the queue's
 * order is submission order), and it continues from its checkpoint bit-identically. A finished
 * job is CHORD_E_CONFLICT. */
int svc_job_pause(svc *s, const char *id, int pause, json_t **job, chord_err *err);
/* {"job_id", "since_step", "next_step", "steps": [{"step", "metrics": {name: value|null}}]}:
 * at most max_steps steps (0 = all) from since_step on; next_step is what to ask for next. */
int svc_job_metrics(svc *s, const char *id, int64_t since_step, size_t max_steps, json_t **out,
                    chord_err *err);
/* {"items": [{"step", "index", "kind", "prompt", "completion", "answer", "reward", "reason"}],
 * "total", "offset", "limit"}: the per-sample records of one step (step >= 0) or all (-1). */
int svc_job_samples(svc *s, const char *id, int64_t step, size_t offset, size_t limit,
                    const char *after, json_t **out, chord_err *err);

/* ---- checkpoints --------------------------------------------------------------------------
 * A checkpoint resource: {"id", "job_id", "step", "sha256", "bytes", "created_at", "files":
 * [{"path", "bytes"}]} (paths relative to the checkpoint directory, sorted). */

/* {"items": [checkpoint...]} in step order. */
int svc_checkpoint_list(svc *s, const char *job_id, json_t **out, chord_err *err);
/* The absolute path (out, outlen bytes) and size of one file of checkpoint (job_id, step), for
 * download. relpath must name a regular file inside the checkpoint ("..", absolute paths and
 * symlinks leaving it are CHORD_E_INVALID; a missing file is CHORD_E_NOT_FOUND). */
int svc_checkpoint_file(svc *s, const char *job_id, int64_t step, const char *relpath, char *out,
                        size_t outlen, int64_t *size, chord_err *err);

/* ---- datasets -----------------------------------------------------------------------------
 * A dataset resource: {"id", "name", "kind", "lines", "bytes", "sha256", "created_at"}.
 *
 * Line shapes (each line one JSON object; other keys are kept and ignored):
 *   prompts, eval: {"prompt": string, "answer": string|number}
 *                  or {"messages": [{"role", "content"}...], "answer": string|number}
 *   expert:        {"prompt": string, "response": string}
 *                  or {"messages": [...]} with at least one "assistant" message
 * Errors name the line: "line 7: \"answer\": required". */

typedef struct svc_upload svc_upload;

/* kind: "prompts" | "expert" | "eval"; name may be NULL ("dataset"). */
int svc_upload_begin(svc *s, const char *name, const char *kind, svc_upload **out, chord_err *err);
/* Appends a chunk (data is len bytes, any split, even inside a UTF-8 sequence), validating
 * every line it completes. On error (CHORD_E_INVALID naming the line, CHORD_E_TOO_LARGE past
 * the limit) the upload is spoiled: later writes fail the same way; abort it. */
int svc_upload_write(svc_upload *up, const void *data, size_t len, chord_err *err);
/* Validates the last line, commits and frees the upload (also on failure). An upload with no
 * line is CHORD_E_INVALID. dataset may be NULL. */
int svc_upload_commit(svc_upload *up, json_t **dataset, chord_err *err);
/* Discards an upload (no row, no file). NULL is allowed. */
void svc_upload_abort(svc_upload *up);
/* The configured limit in bytes. */
int64_t svc_max_upload_bytes(const svc *s);
/* The Tinker-compatible training API (server/tinker/tinker.h, docs/tinker.md); NULL when the
 * service runs no workers. */
struct tk_service *svc_tinker(svc *s);

int svc_dataset_get(svc *s, const char *id, json_t **dataset, chord_err *err);
int svc_dataset_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                     chord_err *err);

/* ---- models -------------------------------------------------------------------------------
 * A model resource: {"id", "name", "source": "directory"|"init", "path" (or null),
 * "tokenizer" (or null), "config" (the Hugging Face config), "created_at"}. */

/* doc: {"name"?, "path": DIR} (a directory under the models root holding config.json; paths
 * escaping the root through ".." or symlinks are CHORD_E_INVALID) or {"name"?, "init":
 * {"config": {...}, "tokenizer"?: DIR}} (random init: the job's seed initialises it). A model
 * whose weights alone would not fit any device is CHORD_E_TOO_LARGE. */
int svc_model_register(svc *s, const json_t *doc, json_t **model, chord_err *err);
int svc_model_get(svc *s, const char *id, json_t **model, chord_err *err);
int svc_model_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                   chord_err *err);
const char *svc_models_root(const svc *s);

/* ---- model aliases (docs/pipelines.md) ------------------------------------------------------
 * An alias: {"name", "model_id", "created_at", "updated_at"}. A name is 1 to 64 of
 * [A-Za-z0-9._-], starting with a letter or digit. Wherever a model is taken, {"alias": NAME}
 * names the alias's model at submission: a job's "model": {"alias": NAME}, a rollout's
 * "alias": NAME; the job or rollout records which alias and model it was. */

/* doc: {"model": "mdl_…"} (a registered model; CHORD_E_INVALID naming model otherwise): creates
 * the alias or moves it (an alias.moved webhook event when it changed). */
int svc_alias_put(svc *s, const char *name, const json_t *doc, json_t **alias, chord_err *err);
int svc_alias_get(svc *s, const char *name, json_t **alias, chord_err *err);
/* Returns the alias as it was. Jobs that ask to promote to it later create it again. */
int svc_alias_delete(svc *s, const char *name, json_t **alias, chord_err *err);
/* By name (a page; the cursor is a name). */
int svc_alias_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                   chord_err *err);

/* ---- schedules (docs/pipelines.md, "Schedules") ---------------------------------------------
 * A schedule: {"id", "name", "cron", "template", "missed": "skip"|"run_once", "paused",
 * "next_fire_at", "created_at", "fires" (how many), "recent_fires": [{"fire_time", "job_id",
 * "error", "missed", "created_at"}] (newest first; GET of one only, else [])}. */

/* doc: {"name", "cron" (server/jobs/cron.h: 5 fields, or 6 with a leading second; UTC),
 * "template" (a job document: dataset names and a model alias resolve when it fires), "missed"?
 * ("skip", the default, or "run_once": what to do with fire times that came while chordd was
 * down), "paused"?}. The template is checked now as far as it can be (errors name
 * template.<field>). */
int svc_schedule_create(svc *s, const json_t *doc, json_t **schedule, chord_err *err);
int svc_schedule_get(svc *s, const char *id, json_t **schedule, chord_err *err);
/* Newest first (a page). */
int svc_schedule_list(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                      chord_err *err);
/* Returns the schedule as it was; its fires stay recorded, its jobs are not touched. */
int svc_schedule_delete(svc *s, const char *id, json_t **schedule, chord_err *err);
/* Pauses (no fires) or resumes (from the first fire time after now) it. */
int svc_schedule_pause(svc *s, const char *id, int paused, json_t **schedule, chord_err *err);

/* ---- the Tinker API's sessions (docs/tinker.md "State") -------------------------------------
 * A session: {"id", "sdk_version", "created_at", "finished_at", "finish_reason", "models":
 * [{"id", "kind": "training"|"sampler", "base_model", "lora_rank", "created_at", "ended_at",
 * "futures": {"pending", "done", "failed"}}]}, newest first, from the store (they outlive a
 * restart; one that was open then is finished with "chordd restarted"). */
int svc_tinker_sessions(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                        chord_err *err);
int svc_tinker_session(svc *s, const char *id, json_t **session, chord_err *err);

/* ---- rollouts -----------------------------------------------------------------------------
 * A rollout resource: {"id", "state": "pending"|"succeeded"|"failed", "request", "result" (or
 * null), "error" (or null), "created_at", "finished_at"}. Requests run on a worker between
 * training steps (or at once when it is idle). */

/* doc: {"prompts": [string...]} or {"messages": [[message...]...]}, plus "model" (registered
 * id or directory under the models root) or "checkpoint": {"job_id", "step"?}, and optional
 * "n", "temperature", "top_p", "max_tokens", "seed", "answers" (one per prompt), "reward".
 * A request that would not fit the free memory of any device (mem_estimate_rollout, prompts
 * bounded by their bytes) is CHORD_E_TOO_LARGE and is not stored. */
int svc_rollout_create(svc *s, const json_t *doc, json_t **rollout, chord_err *err);
int svc_rollout_get(svc *s, const char *id, json_t **rollout, chord_err *err);

/* ---- watching a job (REST's Server-Sent Events, gRPC's WatchJob) ----------------------------
 * A watch delivers a job's events in order: "state" when it changes (not terminal), one "step"
 * per step from since_step on, "checkpoint" per new checkpoint, then one final "state" event
 * (terminal state) after which the watch is done.
 *
 * The fan-out (one implementation for both transports): every watch of the same (job,
 * since_step) opened while the first SVC_FEED_JOIN_EVENTS events are still held shares one
 * feed. The service's watch thread polls SQLite once per change for the feed (not once per
 * watcher), keeps each event, and encodes it once per codec (a transport's wire form: an SSE
 * frame, a packed protobuf) on the first svc_watch_next that asks; every watch of the feed then
 * reads the same bytes at its own pace. A later watcher, or one on another since_step, gets a
 * feed of its own (and the whole history of a shared one: a joiner starts at the feed's first
 * event). Events every watch has read are dropped once the feed stopped taking joiners.
 *
 * A feed (service.c, struct svc_feed):
 *
 *   svc_watch_open, no feed to join
 *     |
 *     v
 *   JOINABLE --- feed_append: event SVC_FEED_JOIN_EVENTS + 1 (a joiner could no -----> STREAMING
 *     |          longer get the whole history: read events may be released now)          |
 *     |                                                                                   |
 *     +--- feed_append: the final event; feed_fail: a poll failed ---> FINISHED <--------+
 *     |    (feed_retire: out of the table, so no joiner and no poll)                      |
 *     |                                                                                   |
 *     +--- svc_watch_close of its last watch ---------------------> ABANDONED <-----------+
 *          (also from FINISHED; out of the table, events released)
 *
 *   feed_unref frees it with the last reference: the table's, each watch's, the poll queue's.
 *
 * A watch (the caller's handle on a feed):
 *
 *   svc_watch_open --> WAITING --- notify(user): the watch thread added an event (or svc_shutdown
 *                        ^  |      made every feed poll once more); the owner calls svc_watch_next
 *                        |  v
 *                      READING: svc_watch_next returns 1 per event, 0 when caught up (WAITING)
 *                           |
 *                           +-- it returned the final event ---------------------------> DONE
 *                           +-- it returned -1: the feed failed, or the watch fell
 *                               SVC_WATCH_MAX_LAG events behind (CHORD_E_TOO_LARGE) ---> DONE
 *
 *   svc_watch_close, from any state: closed; notify is never called again.
 *
 * notify(user) is called from the service's watch thread with the feed's lock held: it must be
 * cheap and must not call back into the watch (flag a connection and post to its owner's
 * thread). Nothing blocks: the owner calls svc_watch_next when notified (and at start) until it
 * returns 0. Lock order, outermost first: the caller's own lock (a gRPC call's mu) -> the
 * service's hub lock -> a feed's lock -> whatever notify takes. */

#define SVC_FEED_JOIN_EVENTS 256
#define SVC_WATCH_MAX_LAG 10000

typedef enum { SVC_EVENT_STATE = 0, SVC_EVENT_STEP = 1, SVC_EVENT_CHECKPOINT = 2 } svc_event_type;

typedef struct svc_event {
    svc_event_type type;
    int64_t step; /* the step (STEP, CHECKPOINT) or the job's current step (STATE) */
    int final;    /* 1 on the terminal state event: the last one */
    json_t *data; /* STEP: {"step", "metrics"}; STATE: the job; CHECKPOINT: the checkpoint.
                     The feed's: read-only for a codec. */
} svc_event;

/* A transport's wire form of an event, made once per event and shared by every watch of the
 * feed that uses the same codec (compared by address: keep it static). */
typedef struct svc_codec {
    /* The encoding of ev (malloc'd, or any object release frees), or NULL with err. Called
     * with the feed's lock held: must not call into the watch API. */
    void *(*encode)(const svc_event *ev, chord_err *err);
    void (*release)(void *encoded);
} svc_codec;

typedef struct svc_watch svc_watch;
typedef void (*svc_notify_fn)(void *user);

/* CHORD_E_NOT_FOUND for an unknown job. since_step < 0 means 0. codec is required. */
int svc_watch_open(svc *s, const char *job_id, int64_t since_step, const svc_codec *codec,
                   svc_notify_fn notify, void *user, svc_watch **out, chord_err *err);
/* 1 with *encoded the next event in the codec's form — borrowed: valid until the next
 * svc_watch_next or svc_watch_close of this watch — and *final 1 on the last event; 0 when
 * nothing new (wait for notify; also 0 for ever once done); -1 with err when the watch cannot go
 * on (then done). */
int svc_watch_next(svc_watch *w, const void **encoded, int *final, chord_err *err);
/* 1 once the final event was delivered (or svc_watch_next failed). */
int svc_watch_done(const svc_watch *w);
/* After it returns, notify is never called again for this watch. NULL is allowed. */
void svc_watch_close(svc_watch *w);

/* ---- idempotency keys (docs/pipelines.md) ---------------------------------------------------
 * A create that carries a key (REST's Idempotency-Key header, gRPC's idempotency_key field) runs
 * once per key: a retry of the same request (the same operation and, canonically, the same
 * document) gets the first result again, from SQLite, for idempotency_ttl_s, across restarts; a
 * different request under the key is SVC_E_KEY_REUSED naming the key. A key is 1 to
 * SVC_IDEMPOTENCY_KEY_MAX printable ASCII characters (CHORD_E_INVALID otherwise). */

typedef int (*svc_create_fn)(svc *s, const json_t *doc, json_t **out, chord_err *err);

/* create(s, doc, out) once per key; key NULL = no key (create runs). operation names the route
 * ("jobs.create", "models.create", "rollouts.create"). *replayed (may be NULL) = 1 when *out is
 * the kept first result. */
int svc_create_idempotent(svc *s, const char *key, const char *operation, const json_t *doc,
                          svc_create_fn create, json_t **out, int *replayed, chord_err *err);
/* An upload keyed: checked at commit, the request being (kind, name, the bytes' SHA-256); a
 * retry's bytes are then discarded and the first dataset returned. */
int svc_upload_set_key(svc_upload *up, const char *key, chord_err *err);
/* For a transport's own keyed calls (the Tinker routes), the request being its raw bytes: find
 * returns 1 with *doc (new reference) the kept result, 0 when none, -1 (SVC_E_KEY_REUSED for
 * another request); keep records doc as the key's result (a result already kept stays). */
int svc_idempotent_find(svc *s, const char *key, const char *operation, const void *request,
                        size_t len, json_t **doc, chord_err *err);
int svc_idempotent_keep(svc *s, const char *key, const char *operation, const void *request,
                        size_t len, const json_t *doc, chord_err *err);
int svc_idempotency_key_check(const char *key, chord_err *err);

/* ---- webhooks (service_webhooks.c, docs/pipelines.md) ----------------------------------------
 * job.succeeded | job.failed | job.cancelled and checkpoint.created, POSTed to the URL signed
 * in the Standard Webhooks style, retried after 0.5 s, 1 s, 2 s, ... (at most
 * SVC_WEBHOOK_MAX_ATTEMPTS attempts of at most SVC_WEBHOOK_TIMEOUT_MS each), from a thread of
 * their own: training never waits for a receiver. */

#define SVC_WEBHOOK_TIMEOUT_MS 5000
#define SVC_WEBHOOK_MAX_ATTEMPTS 8
#define SVC_WEBHOOK_FIRST_RETRY_MS 500
#define SVC_WEBHOOK_POLL_MS 500

/* The delivery log, newest first: {"items": [{"id" (the webhook-id), "event", "subject",
 * "state": "pending"|"delivered"|"failed", "attempts", "last_status", "last_error",
 * "created_at", "next_attempt_at", "finished_at", "payload"}], "total", "offset", "limit"}. */
int svc_webhook_deliveries(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                           chord_err *err);

/* ---- health and metrics ------------------------------------------------------------------ */

/* {"status": "ok"|"stopping", "version", "uptime_s", "devices": [...], "jobs": {state: n}};
 * returns 0 when serving, 1 when stopping (transports answer 503). */
int svc_health(svc *s, json_t **out);
/* One request a transport served: counted and timed by (transport, route template, method,
 * status) for the Prometheus text. route is a template ("/v1/jobs/{id}"), not the raw path. */
void svc_record_request(svc *s, const char *transport, const char *route, const char *method,
                        int status, double seconds);
/* The Prometheus text exposition (version 0.0.4): jobs by state, steps, tokens/s, uploads,
 * requests and latency histograms. *text is malloc'd. */
int svc_prometheus(svc *s, char **text, size_t *len, chord_err *err);

/* ---- demo ---------------------------------------------------------------------------------- */

/* Submits the embedded demo: a random-init tiny model trained with CHORD on the built-in task
 * (datasets generated and uploaded through the upload API). *job receives the job resource. */
int svc_submit_demo(svc *s, json_t **job, chord_err *err);

#endif
