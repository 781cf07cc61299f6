/* store.h — chord's durable state: SQLite tables (datasets, models, jobs, metrics, samples,
 * checkpoints, rollouts) and the file stores beside them (dataset uploads, checkpoint
 * directories), all under one data directory.
 *
 * It knows nothing of training: config and request bodies are opaque JSON text, metric names
 * are opaque strings, a checkpoint is a directory of files the caller writes.
 *
 * Threading: a `store` handle owns ONE SQLite connection and must be used by one thread at a
 * time (it may move between threads, e.g. through a pool, but never be shared concurrently;
 * the same holds for an upload handle). Each thread opens its own handle with store_open() on
 * the same data directory (the first open in a process migrates the schema and recovers the
 * directory; later ones find it current). Handles are cheap (one sqlite3_open_v2 plus a few
 * PRAGMAs). Writers are serialised by
 * SQLite (WAL, one writer, BEGIN IMMEDIATE, a busy timeout of STORE_BUSY_TIMEOUT_MS), readers never
 * block writers.
 *
 * Errors: every function returning int returns 0 or -1 and fills `err` (may be NULL) with a
 * message carrying the SQLite or OS message and the id involved, and a category:
 * CHORD_E_NOT_FOUND (unknown id), CHORD_E_CONFLICT (illegal job transition, duplicate
 * checkpoint), CHORD_E_INVALID (bad argument), CHORD_E_UNAVAILABLE (database still busy after
 * the timeout), CHORD_E_IO (disk / database failure).
 *
 * Time: every timestamp is unix milliseconds UTC (int64); 0 means "not set".
 * store_time_rfc3339() formats one for transports.
 *
 * Paging: list calls take (offset, limit, after) and report the total number of matching rows
 * (the cursor ignored); limit 0 means "no limit". `after` (NULL = none) is a cursor: the id of
 * a row of the list (for samples: its step and index); only rows after it in the list's order
 * come, then offset is skipped. A cursor is a position, not a count, so rows inserted between
 * two pages never shift the next page. An id that is not a row of the table is CHORD_E_INVALID
 * naming "after". Lists are newest first unless stated otherwise.
 *
 * Strings in returned records are malloc'd and owned by the record; free a record with its
 * *_free function and a list with its *_list_free function. */
#ifndef CHORD_STORAGE_STORE_H
#define CHORD_STORAGE_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

#define STORE_SCHEMA_VERSION 8
#define STORE_BUSY_TIMEOUT_MS 30000
/* Longest id, with its prefix and NUL ("job_" + 24 hex digits + NUL = 29). */
#define STORE_ID_MAX 40
/* Buffer size for paths the store returns. */
#define STORE_PATH_MAX 4096

typedef struct store store;

/* ---- opening ------------------------------------------------------------------------------ */

/* Creates data_dir if needed, opens <data_dir>/chord.db (WAL, synchronous=FULL, foreign keys,
 * busy timeout) and applies pending forward migrations (each in one BEGIN IMMEDIATE together
 * with its PRAGMA user_version bump). A database written by a newer chord (user_version >
 * STORE_SCHEMA_VERSION) is refused.
 * Recovery, once per open of the directory: the directory's first handle in this process (when
 * none of its handles is open) removes, before it is returned, the leftovers of interrupted
 * writes: *.tmp checkpoint and dataset files, and committed-looking files with no row (a crash
 * between rename and insert), except what this process is writing right now; a leftover that
 * cannot be removed is logged, not fatal. Concurrent opens wait for it; the handles opened while
 * the directory is open (one per request or worker) do not recover again. One data directory
 * belongs to one process (chordd); several handles in it are fine. */
int store_open(const char *data_dir, store **out, chord_err *err);
/* Closing a directory's last handle closes the directory: the next store_open recovers it. */
void store_close(store *s);
/* The data directory this handle was opened on (absolute). */
const char *store_data_dir(const store *s);
/* The schema version found in the database (STORE_SCHEMA_VERSION after a successful open). */
int store_schema_version(store *s, int *version, chord_err *err);

/* Current time in unix ms, and RFC 3339 formatting ("2026-11-25T08:15:27.123Z"). */
int64_t store_now_ms(void);
void store_time_rfc3339(int64_t ms, char out[32]);

/* ---- datasets ----------------------------------------------------------------------------- */

typedef enum {
    STORE_DATASET_PROMPTS = 0,
    STORE_DATASET_EXPERT = 1,
    STORE_DATASET_EVAL = 2,
} store_dataset_kind;

const char *store_dataset_kind_name(store_dataset_kind kind);
/* "prompts" | "expert" | "eval"; -1 (CHORD_E_INVALID) otherwise. */
int store_dataset_kind_parse(const char *name, store_dataset_kind *kind, chord_err *err);

typedef struct store_dataset {
    char id[STORE_ID_MAX]; /* "ds_…" */
    char *name;
    store_dataset_kind kind;
    char *path;         /* absolute path of the JSONL file (<data_dir>/datasets/<id>.jsonl) */
    int64_t line_count; /* lines, a last line without '\n' included */
    int64_t bytes;
    char sha256[65]; /* of the file's bytes, lowercase hex */
    int64_t created_ms;
} store_dataset;

void store_dataset_free(store_dataset *d);
void store_dataset_list_free(store_dataset *items, size_t n);

/* Streaming upload: bytes go to <data_dir>/datasets/<id>.jsonl.tmp while SHA-256, byte and line
 * counts are computed; commit fsyncs, renames to <id>.jsonl and inserts the row (a crash between
 * the two leaves a file with no row, removed when the directory is next opened); abort (or a failed
 * write or commit) leaves no row and no file. The upload handle belongs to the thread that uses
 * `s`. */
typedef struct store_upload store_upload;
int store_dataset_upload_begin(store *s, const char *name, store_dataset_kind kind,
                               store_upload **out, chord_err *err);
/* data is (len) bytes. */
int store_dataset_upload_write(store_upload *up, const void *data, size_t len, chord_err *err);
/* Bytes written so far (for size limits). */
int64_t store_dataset_upload_bytes(const store_upload *up);
/* The SHA-256 (hex) of the bytes written so far; the upload goes on. */
int store_dataset_upload_sha256(const store_upload *up, char out[65], chord_err *err);
/* Commits and frees the upload (also on failure, which acts as an abort). An empty upload is
 * CHORD_E_INVALID. out may be NULL. */
int store_dataset_upload_commit(store_upload *up, store_dataset *out, chord_err *err);
/* Discards the upload: removes the temp file, frees the handle. NULL is allowed. */
void store_dataset_upload_abort(store_upload *up);

int store_dataset_get(store *s, const char *id, store_dataset *out, chord_err *err);
/* The newest upload named `name` whose kind is kind_a or kind_b (kind_b may be NULL):
 * CHORD_E_NOT_FOUND when there is none. */
int store_dataset_latest_by_name(store *s, const char *name, const char *kind_a, const char *kind_b,
                                 store_dataset *out, chord_err *err);
int store_dataset_list(store *s, size_t offset, size_t limit, const char *after,
                       store_dataset **items, size_t *n, int64_t *total, chord_err *err);

/* ---- models ------------------------------------------------------------------------------- */

typedef struct store_model {
    char id[STORE_ID_MAX]; /* "mdl_…" */
    char *name;
    char *directory;     /* weights directory, or NULL (random init from config) */
    char *config_json;   /* opaque JSON text, never NULL */
    char *tokenizer_dir; /* or NULL */
    int64_t created_ms;
    /* a model registered from a checkpoint (store_model_insert_checkpoint): its id, job and step
     * ("" and -1 otherwise); directory is then the checkpoint's directory */
    char checkpoint_id[STORE_ID_MAX];
    char checkpoint_job_id[STORE_ID_MAX];
    int64_t checkpoint_step;
} store_model;

void store_model_free(store_model *m);
void store_model_list_free(store_model *items, size_t n);

/* directory and tokenizer_dir may be NULL; config_json must not be. out may be NULL. */
int store_model_insert(store *s, const char *name, const char *directory, const char *config_json,
                       const char *tokenizer_dir, store_model *out, chord_err *err);
/* A model whose files are checkpoint `checkpoint_id`'s directory (no copy). The checkpoint is
 * pinned from then on: store_checkpoint_keep_last never removes it. CHORD_E_NOT_FOUND when the
 * checkpoint does not exist. out may be NULL. */
int store_model_insert_checkpoint(store *s, const char *name, const char *checkpoint_id,
                                  const char *config_json, store_model *out, chord_err *err);
int store_model_get(store *s, const char *id, store_model *out, chord_err *err);
int store_model_list(store *s, size_t offset, size_t limit, const char *after, store_model **items,
                     size_t *n, int64_t *total, chord_err *err);

/* ---- jobs --------------------------------------------------------------------------------- */

/* queued → running → succeeded | failed | cancelled; queued → cancelled (cancelled before it
 * ran); running → queued (resume after a crash). Anything else is CHORD_E_CONFLICT. */
typedef enum {
    STORE_JOB_QUEUED = 0,
    STORE_JOB_RUNNING = 1,
    STORE_JOB_SUCCEEDED = 2,
    STORE_JOB_FAILED = 3,
    STORE_JOB_CANCELLED = 4,
    STORE_JOB_NSTATES = 5,
} store_job_state;

const char *store_job_state_name(store_job_state state);
int store_job_state_parse(const char *name, store_job_state *state, chord_err *err);
/* 1 when `from → to` is a legal transition. */
int store_job_transition_legal(store_job_state from, store_job_state to);
/* 1 for succeeded, failed, cancelled. */
int store_job_state_terminal(store_job_state state);

typedef struct store_job {
    char id[STORE_ID_MAX]; /* "job_…" */
    char *name;
    char *config_json; /* opaque JSON text */
    store_job_state state;
    int cancel_requested;                        /* 1 once a cancel was asked for while it ran */
    int64_t created_ms, started_ms, finished_ms; /* 0 = not yet */
    char *error;                                 /* failure (or cancel) text, or NULL */
    int64_t current_step; /* last step whose metrics were written; -1 before the first */
    char *device;         /* device it runs / last ran on, or NULL */
    int paused;           /* 1: paused (QUEUED) or asked to pause (RUNNING): not claimed */
    /* pipeline fields (store_pipeline.c; NULL / NaN / 0 when none): the alias the job's model
     * was named by and the model it meant then; the promotion asked for ("promote") and its
     * outcome: state "pending" | "promoted" | "not_promoted", why, the final eval accuracy and
     * its step, the model registered from the final checkpoint, when it was decided */
    char *model_alias, *alias_model_id;
    char *promote_alias;
    double min_eval_accuracy;
    char *promotion_state, *promotion_reason, *promoted_model_id;
    double eval_accuracy;
    int64_t eval_step, decided_ms;
} store_job;

/* What a job carries besides its config, stored with it in one transaction: model_alias and
 * alias_model_id (both or neither), promote_alias (NULL: no promotion) with its threshold. */
typedef struct store_job_extra {
    const char *model_alias, *alias_model_id;
    const char *promote_alias;
    double min_eval_accuracy;
} store_job_extra;

void store_job_free(store_job *j);
void store_job_list_free(store_job *items, size_t n);

/* A new job in state queued. out may be NULL. */
int store_job_create(store *s, const char *name, const char *config_json, store_job *out,
                     chord_err *err);
/* The same for a job whose starting weights are checkpoint base_checkpoint_id (NULL: none),
 * which is pinned from then on (store_checkpoint_keep_last never removes it). */
int store_job_create_from(store *s, const char *name, const char *config_json,
                          const char *base_checkpoint_id, store_job *out, chord_err *err);
/* The same with the pipeline fields of extra (NULL: none), in one transaction. */
int store_job_create_ex(store *s, const char *name, const char *config_json,
                        const char *base_checkpoint_id, const store_job_extra *extra,
                        store_job *out, chord_err *err);
int store_job_get(store *s, const char *id, store_job *out, chord_err *err);
/* Pauses (paused 1) or resumes a queued or running job (a finished one is CHORD_E_CONFLICT): a
 * paused queued job is not claimed (store_job_list of STORE_JOB_QUEUED leaves it out) and keeps
 * its place in line (its seq); a running one is only marked, its worker stops it. */
int store_job_set_paused(store *s, const char *id, int paused, store_job *out, chord_err *err);
/* store_job_list's state for the paused queued jobs (STORE_JOB_QUEUED lists the others). */
#define STORE_JOB_LIST_PAUSED (-2)
/* Lists jobs in `state`, or all when state is -1, newest first. */
int store_job_list(store *s, int state, size_t offset, size_t limit, const char *after,
                   store_job **items, size_t *n, int64_t *total, chord_err *err);
/* counts[STORE_JOB_NSTATES], indexed by store_job_state. */
int store_job_count_by_state(store *s, int64_t counts[STORE_JOB_NSTATES], chord_err *err);

/* Moves job `id` to `to`, validated against its current state inside one BEGIN IMMEDIATE.
 * → running: sets device (when not NULL) and started_ms (first start only).
 * → succeeded | failed | cancelled: sets finished_ms and error (may be NULL).
 * → queued (resume): keeps step, device and timestamps.
 * out (may be NULL) receives the job after the change. */
int store_job_transition(store *s, const char *id, store_job_state to, const char *error_text,
                         const char *device, store_job *out, chord_err *err);
/* Atomically takes the oldest queued job and moves it to running on `device`.
 * *found = 0 (and out untouched) when none is queued. */
int store_job_claim_next(store *s, const char *device, store_job *out, int *found, chord_err *err);
/* Asks for cancellation: a queued job becomes cancelled at once; a running one gets
 * cancel_requested = 1 (its worker stops and moves it to cancelled); a finished job is
 * CHORD_E_CONFLICT. out (may be NULL) receives the job after the change. */
int store_job_request_cancel(store *s, const char *id, store_job *out, chord_err *err);
/* Start-up recovery: every job left running by a dead process goes back to queued (or to
 * cancelled when its cancel was requested). *n (may be NULL) = jobs moved. */
int store_job_requeue_running(store *s, int64_t *n, chord_err *err);

/* ---- metrics and samples ------------------------------------------------------------------ */

/* One per-sample rollout record of a step. Any string may be NULL. */
typedef struct store_sample {
    const char *kind; /* e.g. "rollout", "expert" */
    const char *prompt;
    const char *completion;
    double reward;
    const char *reason; /* why that reward */
    const char *answer; /* reference answer */
} store_sample;

/* Writes step `step` (>= 0) of a RUNNING job exactly once: in one BEGIN IMMEDIATE it REPLACES
 * the metrics already stored for that step by names[i] = values[i] (i < n) (a resumed job
 * re-running a step overwrites, never duplicates) and sets the job's current_step to `step`.
 * Duplicate names within one call are CHORD_E_INVALID. NaN is stored as NULL and read back as
 * NaN. A job not running is CHORD_E_CONFLICT (and nothing is written). Samples are untouched. */
int store_put_step_metrics(store *s, const char *job_id, int64_t step, const char *const *names,
                           const double *values, size_t n, chord_err *err);
/* Same, and when samples is not NULL also replaces the step's samples by samples[n_samples]
 * (n_samples may be 0), all in the same transaction. */
int store_put_step(store *s, const char *job_id, int64_t step, const char *const *names,
                   const double *values, size_t n, const store_sample *samples, size_t n_samples,
                   chord_err *err);
/* Resume helper, called with the step of the checkpoint a job resumes from (-1: from scratch):
 * deletes the metrics, samples and checkpoints (rows, then directories) of steps > `step` (a run
 * that got past that checkpoint before dying; the resumed run writes them again) and sets
 * current_step to min(current_step, step). */
int store_job_truncate_after(store *s, const char *job_id, int64_t step, chord_err *err);

typedef struct store_metric_row {
    int64_t step;
    char *name;
    double value;
} store_metric_row;

/* Metrics of steps >= since_step in (step, name) order, at most max_steps whole steps (0 = all).
 * *next_step = the step to ask for next (last returned step + 1), or since_step when none. */
int store_metrics_since(store *s, const char *job_id, int64_t since_step, size_t max_steps,
                        store_metric_row **rows, size_t *n, int64_t *next_step, chord_err *err);
void store_metric_rows_free(store_metric_row *rows, size_t n);

typedef struct store_sample_row {
    int64_t step;
    int64_t index;                                      /* position within the step */
    char *kind, *prompt, *completion, *reason, *answer; /* NULL when stored NULL */
    double reward;
} store_sample_row;

/* Samples of one step (step >= 0) or of all steps (step = -1), in (step, index) order; with
 * after_step >= 0 only those after (after_step, after_index). */
int store_samples_list(store *s, const char *job_id, int64_t step, size_t offset, size_t limit,
                       int64_t after_step, int64_t after_index, store_sample_row **rows, size_t *n,
                       int64_t *total, chord_err *err);
void store_sample_rows_free(store_sample_row *rows, size_t n);

/* ---- checkpoints -------------------------------------------------------------------------- */

typedef struct store_checkpoint {
    char id[STORE_ID_MAX]; /* "ckpt_…" */
    char job_id[STORE_ID_MAX];
    int64_t step;
    char *path;      /* absolute directory <data_dir>/checkpoints/<job>/step_<N> */
    char sha256[65]; /* SHA-256 of the directory's SHA256SUMS manifest */
    int64_t bytes;   /* total bytes of the files (the manifest excluded) */
    int64_t created_ms;
} store_checkpoint;

void store_checkpoint_free(store_checkpoint *c);
void store_checkpoint_list_free(store_checkpoint *items, size_t n);

/* The final directory of a checkpoint: <data_dir>/checkpoints/<job>/step_<N>. */
int store_checkpoint_dir(store *s, const char *job_id, int64_t step, char out[STORE_PATH_MAX],
                         chord_err *err);
/* Starts a checkpoint: creates an empty <…>/step_<N>.tmp/ (removing a leftover) and returns its
 * path; the caller writes the checkpoint's files (subdirectories allowed) into it. The job must
 * exist and have no checkpoint at that step (CHORD_E_CONFLICT). */
int store_checkpoint_begin(store *s, const char *job_id, int64_t step, char tmp_dir[STORE_PATH_MAX],
                           chord_err *err);
/* Commits it: writes SHA256SUMS (sha256sum format, sorted relative paths), fsyncs every file
 * and directory, renames step_<N>.tmp → step_<N>, fsyncs the parent, then inserts the row. On
 * failure the temp directory is removed. out may be NULL. */
int store_checkpoint_commit(store *s, const char *job_id, int64_t step, store_checkpoint *out,
                            chord_err *err);
/* Drops an uncommitted checkpoint's temp directory. */
void store_checkpoint_abort(store *s, const char *job_id, int64_t step);

/* All checkpoints of a job, in step order (oldest first). */
int store_checkpoint_list(store *s, const char *job_id, store_checkpoint **items, size_t *n,
                          chord_err *err);
/* The highest-step checkpoint; *found = 0 when the job has none. */
int store_checkpoint_latest(store *s, const char *job_id, store_checkpoint *out, int *found,
                            chord_err *err);
/* Keep-last-K: deletes the rows of all but the `keep` highest-step checkpoints (one
 * transaction), then their directories. Pinned checkpoints (a model registered from one, a job
 * started from one) are never removed. *removed (may be NULL) = checkpoints dropped. */
int store_checkpoint_keep_last(store *s, const char *job_id, size_t keep, size_t *removed,
                               chord_err *err);

/* ---- rollout requests --------------------------------------------------------------------- */

typedef enum {
    STORE_ROLLOUT_PENDING = 0,
    STORE_ROLLOUT_SUCCEEDED = 1,
    STORE_ROLLOUT_FAILED = 2,
} store_rollout_state;

const char *store_rollout_state_name(store_rollout_state state);

typedef struct store_rollout {
    char id[STORE_ID_MAX]; /* "roll_…" */
    store_rollout_state state;
    char *request_json;
    char *result_json; /* NULL until succeeded */
    char *error;       /* NULL unless failed */
    int64_t created_ms, finished_ms;
} store_rollout;

void store_rollout_free(store_rollout *r);

int store_rollout_create(store *s, const char *request_json, store_rollout *out, chord_err *err);
/* pending → succeeded (result_json) or failed (error_text); anything else is CHORD_E_CONFLICT. */
int store_rollout_finish(store *s, const char *id, const char *result_json, const char *error_text,
                         chord_err *err);
int store_rollout_get(store *s, const char *id, store_rollout *out, chord_err *err);
/* The ids of every pending rollout, oldest first (*ids: malloc'd, free it; NULL when none):
 * what a restarted server runs again. */
int store_rollout_pending_ids(store *s, char (**ids)[STORE_ID_MAX], size_t *n, chord_err *err);

/* ---- model aliases and promotions (store_pipeline.c) ----------------------------------------
 * An alias is a name ("prod") pointing at a registered model; every change of what it points at
 * (set, moved, deleted; by a PUT or by a job's promotion) is a row of alias_moves, from which the
 * alias.moved webhook events are made. A job submitted with a promotion request has a pending
 * promotion until it ends; the service then decides it (store_promote or store_promotion_refuse),
 * each decision one transaction that only a pending promotion passes, so a decision is made
 * once even if two passes race or chordd dies halfway. */

#define STORE_ALIAS_MAX 65 /* 64 characters and the NUL */

typedef struct store_alias {
    char name[STORE_ALIAS_MAX];
    char model_id[STORE_ID_MAX];
    int64_t created_ms, updated_ms;
} store_alias;

/* Points alias `name` at model_id (a model that must exist: CHORD_E_NOT_FOUND), creating or
 * moving it, and records the move unless it pointed there already. *moved (may be NULL): 1
 * when something changed. out may be NULL. */
int store_alias_put(store *s, const char *name, const char *model_id, store_alias *out, int *moved,
                    chord_err *err);
/* CHORD_E_NOT_FOUND when there is no such alias. */
int store_alias_get(store *s, const char *name, store_alias *out, chord_err *err);
/* Deletes it (recording the move to nothing); out (may be NULL) gets what it was. */
int store_alias_delete(store *s, const char *name, store_alias *out, chord_err *err);
/* By name; after (NULL: none) is a name: only those after it (it need not exist any more). */
int store_alias_list(store *s, size_t offset, size_t limit, const char *after, store_alias **items,
                     size_t *n, int64_t *total, chord_err *err);

typedef struct store_promotion {
    char job_id[STORE_ID_MAX];
    char *alias;
    double min_eval_accuracy;
    store_job_state job_state;
    double eval_accuracy; /* the job's last eval/accuracy metric; NaN when none */
    int64_t eval_step;    /* its step; -1 when none */
} store_promotion;

/* The pending promotions of jobs that have ended, oldest first. */
int store_promotions_due(store *s, store_promotion **items, size_t *n, chord_err *err);
void store_promotions_free(store_promotion *items, size_t n);
/* Decides a pending promotion: not promoted, for `reason`. CHORD_E_CONFLICT when it was not
 * pending any more (decided already). */
int store_promotion_refuse(store *s, const char *job_id, const char *reason, double eval_accuracy,
                           int64_t eval_step, chord_err *err);
/* Decides a pending promotion: promoted. One transaction: the model `model_name` over
 * checkpoint_id (config_json its config, as store_model_insert_checkpoint) is inserted, the
 * job's alias moves to it (recorded with the job), the job's promotion says so. model_id
 * receives the new model's id. CHORD_E_CONFLICT when it was not pending any more. */
int store_promote(store *s, const char *job_id, const char *model_name, const char *checkpoint_id,
                  const char *config_json, double eval_accuracy, int64_t eval_step,
                  char model_id[STORE_ID_MAX], chord_err *err);

/* ---- schedules (store_pipeline.c) -------------------------------------------------------------
 * A schedule: a cron expression (opaque here) and a job template; next_fire_ms is the first fire
 * time not handled yet. Each fire is a row of schedule_fires, UNIQUE (schedule, fire time),
 * written in the transaction that creates its job and advances next_fire_ms: a crash leaves a
 * fire either whole (row, job, next time) or not begun. */

typedef struct store_schedule {
    char id[STORE_ID_MAX]; /* "sch_…" */
    char *name, *cron, *template_json;
    int run_once; /* missed: 1 "run_once", 0 "skip" */
    int paused;
    int64_t next_fire_ms, created_ms;
    int64_t fires; /* rows in schedule_fires */
} store_schedule;

typedef struct store_fire {
    int64_t fire_ms;
    char job_id[STORE_ID_MAX]; /* "" when none */
    char *error;               /* NULL when a job was made */
    int64_t missed;            /* fire times missed while chordd was down, 0 for an on-time one */
    int64_t created_ms;
} store_fire;

void store_schedule_free(store_schedule *x);
void store_schedule_list_free(store_schedule *items, size_t n);
void store_schedule_fires_free(store_fire *items, size_t n);
int store_schedule_create(store *s, const char *name, const char *cron, const char *template_json,
                          int run_once, int64_t next_fire_ms, store_schedule *out, chord_err *err);
int store_schedule_get(store *s, const char *id, store_schedule *out, chord_err *err);
/* Newest first, the cursor a schedule id (store.h, "Paging"). */
int store_schedule_list(store *s, size_t offset, size_t limit, const char *after,
                        store_schedule **items, size_t *n, int64_t *total, chord_err *err);
/* Deletes it (its fires stay in the log). CHORD_E_NOT_FOUND when unknown. */
int store_schedule_delete(store *s, const char *id, chord_err *err);
/* Pauses it, or resumes it with its next fire time next_fire_ms. */
int store_schedule_set_paused(store *s, const char *id, int paused, int64_t next_fire_ms,
                              chord_err *err);
/* Its last `limit` fires, newest first. */
int store_schedule_fires(store *s, const char *id, size_t limit, store_fire **items, size_t *n,
                         chord_err *err);
/* Schedules not paused whose next fire time is <= now_ms. */
int store_schedules_due(store *s, int64_t now_ms, store_schedule **items, size_t *n,
                        chord_err *err);
/* Handles a schedule's fire time fire_ms, in one transaction, if the schedule still waits at
 * expect_ms (not paused, next_fire_ms = expect_ms; else CHORD_E_CONFLICT and nothing changes):
 * the fire's row (missed, error; UNIQUE per fire time), the job when job_name is not NULL (as
 * store_job_create_ex; job_id receives its id), next_fire_ms = next_ms. */
int store_schedule_fire(store *s, const char *schedule_id, int64_t expect_ms, int64_t fire_ms,
                        int64_t next_ms, int64_t missed, const char *error, const char *job_name,
                        const char *config_json, const char *base_checkpoint_id,
                        const store_job_extra *extra, char job_id[STORE_ID_MAX], chord_err *err);
/* The scheduler's heartbeat: records now_ms and gives the one recorded before (0: none). */
int store_scheduler_alive(store *s, int64_t now_ms, int64_t *previous_ms, chord_err *err);

/* ---- idempotency keys ---------------------------------------------------------------------
 * The first result of a POST that carried an Idempotency-Key (docs/pipelines.md), kept so that
 * a retry returns it instead of creating again, across restarts. A key names one request:
 * `operation` (e.g. "jobs.create") and `fingerprint` (SHA-256 hex of what was asked) say which.
 * Rows older than the caller's cut-off (its TTL) count as absent and are purged. */

typedef struct store_idem {
    char *operation;
    char fingerprint[65];
    char *resource_id;   /* the id of what the first request created */
    char *response_json; /* the resource as the first request returned it */
    int64_t created_ms;
} store_idem;

void store_idem_free(store_idem *r);
/* *found = 1 and out filled when `key` was recorded at or after min_created_ms. */
int store_idem_get(store *s, const char *key, int64_t min_created_ms, store_idem *out, int *found,
                   chord_err *err);
/* Records key's first result; in the same transaction removes every key older than
 * min_created_ms. A key already recorded (and not that old) is CHORD_E_CONFLICT. */
int store_idem_put(store *s, const char *key, const char *operation, const char *fingerprint,
                   const char *resource_id, const char *response_json, int64_t min_created_ms,
                   chord_err *err);

/* ---- webhook deliveries ---------------------------------------------------------------------
 * The outbox of the service's webhooks (docs/pipelines.md): one row per (event, subject) —
 * job.succeeded | job.failed | job.cancelled (subject: the job id) and checkpoint.created
 * (subject: the checkpoint id) — with its payload and its delivery attempts. Rows are made from
 * the jobs and checkpoints tables themselves, so an event is neither lost nor doubled by a crash:
 * whatever happened since webhooks were first enabled and has no row gets one. */

typedef enum {
    STORE_WEBHOOK_PENDING = 0,
    STORE_WEBHOOK_DELIVERED = 1,
    STORE_WEBHOOK_FAILED = 2,
} store_webhook_state;

const char *store_webhook_state_name(store_webhook_state state);

typedef struct store_webhook {
    char id[STORE_ID_MAX]; /* "msg_…": the webhook-id header */
    char *event;           /* "job.succeeded", "checkpoint.created", … */
    char *subject;         /* the job's or checkpoint's id */
    char *payload;         /* the JSON body sent */
    store_webhook_state state;
    int64_t attempts;
    int64_t last_status; /* the receiver's HTTP status of the last attempt, 0 = none */
    char *last_error;    /* or NULL */
    int64_t next_attempt_ms, created_ms, finished_ms;
} store_webhook;

void store_webhook_free(store_webhook *w);
void store_webhook_list_free(store_webhook *items, size_t n);
/* Webhooks are on from now: keeps the first such time (*since_ms), events before it are never
 * sent. */
int store_webhook_enable(store *s, int64_t now_ms, int64_t *since_ms, chord_err *err);
/* Adds a pending delivery (due now) for every job that reached a final state and every
 * checkpoint committed at or after since_ms that has none yet. *added may be NULL. */
int store_webhook_collect(store *s, int64_t since_ms, int64_t now_ms, int64_t *added,
                          chord_err *err);
/* Pending deliveries due at now_ms, oldest first, at most limit (0 = all). */
int store_webhook_due(store *s, int64_t now_ms, size_t limit, store_webhook **items, size_t *n,
                      chord_err *err);
/* Records an attempt: delivered, or failed for good (next_attempt_ms < 0), or pending again at
 * next_attempt_ms. status 0 = no HTTP answer; error may be NULL. */
int store_webhook_attempted(store *s, const char *id, int delivered, int64_t status,
                            const char *error_text, int64_t next_attempt_ms, chord_err *err);
/* The delivery log, newest first. */
int store_webhook_list(store *s, size_t offset, size_t limit, const char *after,
                       store_webhook **items, size_t *n, int64_t *total, chord_err *err);

#endif
