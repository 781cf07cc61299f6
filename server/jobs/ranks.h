/* ranks.h — `chordd serve` under mpirun (docs/distributed.md, "A data-parallel service"): rank 0
 * is the whole service (APIs, SQLite, the queue, its one worker); the other ranks only compute.
 * When rank 0's worker starts a job it sends the job to every other rank (the job document and
 * what rank 0 resolved: the datasets' files, the checkpoint to resume from), then every rank runs
 * trainer_run on it with the same dist context, each on its share of the step; rank 0's
 * callbacks store the metrics, samples and checkpoints once, and its stop, cancel and pause are
 * agreed by the trainer at each step. After the job every rank meets at one collective, so a
 * rank that failed alone is found before the next job. Idle ranks wait for the next command with
 * no deadline; a stopping rank 0 sends "quit".
 *
 * A rank lost mid-job (it died or hangs: dist_broken) cannot be replaced inside an MPI job: rank
 * 0 stores the job as failed with the error naming the rank, then ends every rank
 * (dist_abort); restarted, the service serves again. A rank killed outright usually has mpirun
 * end them all first: the job is then still `running` in SQLite and the next start resumes it
 * from its last checkpoint, as after any crash.
 *
 * Rollout requests run on rank 0 alone, when no job runs (not between a job's steps, where the
 * other ranks wait at the next collective: a long rollout there would trip their watchdog).
 *
 * Files are shared: every rank reads the datasets, models and checkpoints at rank 0's paths (one
 * host, or the data directory on a shared file system at the same path on every host).
 *
 * Not here: the service (rank 0 is an ordinary chordd), the collectives (server/dist). */
#ifndef CHORD_JOBS_RANKS_H
#define CHORD_JOBS_RANKS_H

#include <stdint.h>

#include "server/base/err.h"

struct dist_ctx;

/* One job as rank 0 sends it: paths absolute or relative to the shared working directory, NULL
 * when absent. */
typedef struct jobs_rank_job {
    const char *id;
    const char *config_json; /* the stored job document */
    const char *prompts, *expert, *eval; /* the datasets' files */
    const char *resume;                  /* the checkpoint directory to resume from */
    int64_t memory_limit;                /* bytes (trainer_env.memory_limit) */
} jobs_rank_job;

/* What every rank's trainer takes beside the job (the same on every rank). */
typedef struct jobs_ranks_options {
    int zero;         /* ZeRO-1 (trainer_env.zero) */
    double bucket_mb; /* gradient buckets (trainer_env.bucket_mb) */
} jobs_ranks_options;

/* Rank 0: the job to the other ranks (before its own trainer_run). */
int jobs_ranks_send_job(struct dist_ctx *d, const jobs_rank_job *job, chord_err *err);
/* Rank 0: the other ranks end (jobs_ranks_follow returns). */
int jobs_ranks_send_quit(struct dist_ctx *d, chord_err *err);
/* Every rank, after the job's trainer_run, whatever its outcome: the collective all ranks meet
 * at (a rank that failed alone, or diverged, is named here). */
int jobs_ranks_end_job(struct dist_ctx *d, const char *job_id, chord_err *err);

/* A rank other than 0: runs the jobs rank 0 sends on `device` ("cpu", "cuda:N") with `threads`
 * CPU threads (<= 0: all), until "quit" (returns 0). A job that fails on this rank is logged
 * (rank 0 fails it too: the trainer's collectives agree); a lost peer ends every rank here
 * (dist_abort). Returns -1 when the device cannot be opened or a command cannot be read. */
int jobs_ranks_follow(struct dist_ctx *d, const char *device, int threads,
                      const jobs_ranks_options *opt, chord_err *err);

#endif
