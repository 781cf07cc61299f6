/* jobs.h — the job scheduler: `slots` worker threads per device (one by default) pull queued
 * jobs from SQLite and run them through trainer_run (server/train/trainer.h); rollout requests
 * queued here run on a worker between training steps, or at once on an idle worker.
 *
 * Several slots on one device run several jobs at once, each worker on its own backend context;
 * weights that are never trained in full (a LoRA job's base, a KL reference, a rollout's model)
 * come from the pool's shared bases (server/jobs/bases.h): one copy per base and device, however
 * many jobs and rollouts use it. A second slot takes a job only when its memory estimate fits
 * beside what the device already holds (the running jobs and the resident bases); a job that
 * does not fit waits in the queue.
 *
 * Each step's metrics and samples go to SQLite in one transaction (exactly once per step, even
 * across a crash and resume); checkpoints are committed through the store's checkpoint file
 * store; a cancel takes effect within one step; on stop, each running job writes a checkpoint,
 * goes back to queued and resumes from it at the next start (trainer_env.resume_dir).
 *
 * What this is not: no transport, no validation of job documents (the service did that before
 * the job was queued), no training logic.
 *
 * A job's states (stored in SQLite, storage/store.h) and the function that moves it:
 *
 *   svc_job_create (store_job_create)
 *        |
 *        v
 *     QUEUED ------ svc_job_cancel (store_job_request_cancel: at once) ------------> CANCELLED
 *      |   ^                                                                          ^
 *      |   | finish_job (QUEUED): the pool stops (jobs_shutdown) and the trainer      |
 *      |   | checkpointed its last step; or svc_open (store_job_requeue_running):     |
 *      |   | a dead process left it RUNNING                                           |
 *      |   |                                                                          |
 *      | claim (worker_main): store_job_transition, the oldest queued job that this   |
 *      v   | worker's device may run                                                  |
 *     RUNNING -- finish_job: trainer_run stopped with w->cancel set (svc_job_cancel --+
 *        |   ^--- claim, after svc_job_resume (store_job_set_paused 0) ----- PAUSED (QUEUED,
 *        +------ finish_job (QUEUED): trainer_run stopped with w->pause set --> paused = 1:
 *        |       (svc_job_pause: store_job_set_paused 1, jobs_pause), a checkpoint   not claimed)
 *        |       -> store_job_request_cancel, jobs_cancel)
 *        +------ finish_job: trainer_run done ------------------------------------> SUCCEEDED
 *        +------ finish_job: trainer_run failed, or run_job cannot resolve the ----> FAILED
 *                job's config or datasets
 *
 * SUCCEEDED, FAILED and CANCELLED are terminal (store_job_state_terminal). A RUNNING job goes
 * back to QUEUED on a stop (jobs_shutdown: cb_should_stop asks the trainer to stop after its
 * step, with a checkpoint) or a crash (at the next svc_open) and resumes from its newest
 * checkpoint (resume_point). A cancel of a running job is a request (cancel_requested) that the
 * worker honours within one step; one that races with a stop may leave the job QUEUED with
 * cancel_requested set, and the worker that claims it next cancels it (worker_main). */
#ifndef CHORD_JOBS_JOBS_H
#define CHORD_JOBS_JOBS_H

#include <stdint.h>

#include "server/base/err.h"

typedef struct jobs_pool jobs_pool;

/* Called from worker threads; must be cheap and thread-safe. */
typedef struct jobs_hooks {
    void *user;
    /* Something about this job changed (state, a step, a checkpoint) or a rollout finished
     * (job_id is then the rollout id). */
    void (*publish)(void *user, const char *id);
    /* A step was stored (for live statistics). */
    void (*on_step)(void *user, const char *job_id, int64_t step, const char *const *names,
                    const double *values, int n);
} jobs_hooks;

typedef struct jobs_options {
    const char *data_dir;       /* the store's data directory */
    const char *const *devices; /* the devices: "cpu", "cuda:0", ... */
    int n_devices;
    int slots; /* worker threads (jobs at once) per device; <= 0 = 1 */
    int threads;          /* CPU threads per backend; <= 0 = all */
    int64_t memory_limit; /* bytes a job or rollout may use on one device (server/train/
                             mem_estimate.h); <= 0 = the device's free memory */
    jobs_hooks hooks;
    /* `chordd serve` under mpirun (server/jobs/ranks.h): this is rank 0 of dist, whose other
     * ranks follow; every job then runs on all ranks, data-parallel (one device, one slot).
     * NULL or one rank: jobs run here alone. */
    struct dist_ctx *dist;
    int zero;         /* with dist: ZeRO-1 (trainer_env.zero) */
    double bucket_mb; /* with dist: gradient buckets (trainer_env.bucket_mb) */
} jobs_options;

/* Opens each device's backend and starts its worker. Fails (stopping the ones started) when a
 * backend cannot be opened. */
int jobs_start(const jobs_options *opt, jobs_pool **out, chord_err *err);
/* A job was queued: wake an idle worker. */
void jobs_wake(jobs_pool *p);
/* Asks the worker running job_id to stop it (the worker then marks it cancelled). Returns 1
 * when a worker was running it, 0 otherwise. */
int jobs_cancel(jobs_pool *p, const char *job_id);
/* Asks the worker running job_id to stop it after its step with a checkpoint and put it back in
 * the queue, where it stays (store_job_set_paused marked it) until resumed; pause 0 withdraws
 * the request. Returns 1 when a worker was running it. */
int jobs_pause(jobs_pool *p, const char *job_id, int pause);
/* Queues a rollout request already stored as pending (store_rollout_create). */
int jobs_submit_rollout(jobs_pool *p, const char *rollout_id, chord_err *err);
/* The estimated bytes (mem_estimate_job) of the jobs the workers on `device` run now, less the
 * weights they share, plus the bytes of the shared bases resident there; 0 when it runs
 * nothing. With one slot a job queued now runs after them, so the service counts this memory as
 * free for it (and as taken for a rollout, which runs between their steps). */
int64_t jobs_device_reserved(jobs_pool *p, const char *device);
/* Worker threads per device (jobs_options.slots, at least 1). */
int jobs_slots(const jobs_pool *p);
/* The pool's shared bases (bases.h), for reports; NULL for a NULL pool. */
struct jobs_bases *jobs_pool_bases(jobs_pool *p);
/* The same as bootstrap_spec.bases, for work outside the workers (the Tinker API's models). */
const struct bootstrap_bases *jobs_bases_interface(jobs_pool *p);
/* Stops, and returns once every worker has ended: each running job stops after its current
 * step with a checkpoint and goes back to queued; rollouts still queued stay pending in SQLite
 * (the next start queues them again). The pool itself stays valid: jobs_wake and jobs_cancel
 * become no-ops, jobs_submit_rollout answers CHORD_E_UNAVAILABLE, jobs_device_reserved 0, so a
 * request that is still in flight may call them. Idempotent; any thread. NULL is allowed. */
void jobs_shutdown(jobs_pool *p);
/* jobs_shutdown, then closes the backends and frees the pool. Call it once nothing can call
 * into the pool any more (svc_close, after the transports stopped). NULL is allowed. */
void jobs_free(jobs_pool *p);

/* 1 when a worker on `worker_device` ("cpu", "cuda:1") may run a job asking for `job_device`
 * ("auto", "cpu", "cuda", "cuda:N[,M...]": the first N is the job's device). */
int jobs_device_accepts(const char *worker_device, const char *job_device);
/* Expands a --device value into worker devices: "auto" (every CUDA GPU, else "cpu"), "cpu",
 * "cuda" (every GPU), "cuda:N[,M...]". *devices is malloc'd, each string too; free with
 * jobs_devices_free. */
int jobs_devices_expand(const char *spec, char ***devices, int *n, chord_err *err);
void jobs_devices_free(char **devices, int n);

#endif
