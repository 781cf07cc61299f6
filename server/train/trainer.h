/* trainer.h — one CHORD training job run to completion (or until told to stop), the seam between
 * the trainer (server/train) and whoever runs it: the service's job workers (server/jobs) and
 * `chordd train` in the foreground.
 *
 * The trainer owns the model, the optimizer, the data cursors and the RNGs of one job. It reports
 * everything through callbacks and never touches SQLite or HTTP: the caller stores metrics,
 * samples and checkpoints. Checkpoints are written into a directory the caller hands out
 * (checkpoint_begin) and made durable by the caller (checkpoint_commit: fsync + rename + row).
 *
 * Resume: trainer_run with resume_dir = the last committed checkpoint continues bit-for-bit: the
 * steps after it produce the same metrics as an uninterrupted run with the same seed. */
#ifndef CHORD_TRAIN_TRAINER_H
#define CHORD_TRAIN_TRAINER_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/train/jobconfig.h"

/* One per-sample record (a rollout with its reward, or an eval sample). Strings are borrowed for
 * the duration of the callback. */
typedef struct trainer_sample {
    const char *kind; /* "rollout" or "eval" */
    const char *prompt;
    const char *completion;
    const char *answer; /* ground truth, may be NULL */
    double reward;
    const char *reason; /* "correct", "wrong", "no_answer", "format", "error", "timeout" */
    int group;          /* prompt index within the step */
    int tokens;         /* completion length in tokens */
    int truncated;      /* hit max_new_tokens */
} trainer_sample;

/* The sample's own fields as a new JSON object: {"prompt", "completion", "answer" (null when
 * absent), "reward", "reason", "tokens", "truncated"}; NULL when out of memory. Callers add
 * their context (the step, the kind, the prompt's index). One shape for every sample file. */
json_t *trainer_sample_json(const trainer_sample *s);

typedef struct trainer_callbacks {
    void *user;
    /* A step's metrics (ALGORITHM.md's names, plus "time/rollout", "time/reward", "time/train",
     * "time/step", "tokens_per_s/rollout", "tokens_per_s/train", "eval/…" on eval steps).
     * Called once per step, after the optimizer update. Non-zero return stops the job (failed). */
    int (*on_step)(void *user, int64_t step, const char *const *names, const double *values, int n);
    /* The step's per-sample records (may be NULL): the rollouts of a step (kind "rollout"), and
     * on eval steps the eval samples (kind "eval", a separate call). */
    int (*on_samples)(void *user, int64_t step, const trainer_sample *samples, int n);
    /* Where to write checkpoint `step`: fills dir (size dirlen) with an empty directory. */
    int (*checkpoint_begin)(void *user, int64_t step, char *dir, size_t dirlen, chord_err *err);
    /* The files in dir are complete: make them durable and visible. */
    int (*checkpoint_commit)(void *user, int64_t step, const char *dir, chord_err *err);
    /* Writing the files into dir failed (disk full, read-only, ...): drop the partial directory
     * (may be NULL). Not called when checkpoint_commit fails: a failed commit cleans up itself. */
    void (*checkpoint_abort)(void *user, int64_t step, const char *dir);
    /* Polled between steps and between decode steps of a rollout: non-zero = stop now
     * (cancellation or shutdown). The trainer then returns TRAINER_STOPPED, writing a checkpoint
     * first when checkpoint_on_stop is set. */
    int (*should_stop)(void *user, int *checkpoint_on_stop);
    /* Called between steps with the live model, so queued rollout requests can run on the job's
     * device without waiting for the job to end (may be NULL). */
    void (*between_steps)(void *user, void *model);
    /* Free-form progress line (may be NULL); `chordd train` prints it. */
    void (*on_log)(void *user, const char *line);
} trainer_callbacks;

typedef struct trainer_env {
    ops_ctx *ops;             /* the job's device */
    const char *prompts_path; /* resolved JSONL paths (NULL when the algorithm does not use it) */
    const char *expert_path;
    const char *eval_path;
    const char *model_dir;     /* resolved model directory, or NULL for model.init */
    const char *tokenizer_dir; /* resolved tokenizer directory (NULL: the model dir's, or the
                                  embedded default tokenizer for model.init) */
    const char *resume_dir;    /* a committed checkpoint to continue from, or NULL */
    int64_t memory_limit;      /* bytes the job may use on its device (mem_estimate.h); <= 0 =
                                  the device's free memory */
    /* Shared base weights (bootstrap.h; NULL: the job loads its own): a LoRA job's base and the
     * frozen KL reference come from here, one copy per base for every job on the device. */
    const struct bootstrap_bases *bases;
    /* Data parallelism (server/dist/dist.h; NULL or one rank: the whole step here). With several
     * ranks each samples and trains on its share of the step's prompts and expert records; the
     * gradients and the loss and metric sums are added over the ranks before AdamW, so every
     * rank takes the same optimizer step (docs/distributed.md). Only the caller's rank 0 should
     * pass callbacks that write. */
    struct dist_ctx *dist;
    /* ZeRO-1 (several ranks only): each rank keeps the AdamW moments of its slice of the
     * trainable parameters, the gradients are reduce-scattered, each rank updates its slice and
     * the parameters are all-gathered; checkpoints hold every moment, as without it. */
    int zero;
    /* Several ranks without ZeRO-1: the gradients are summed in buckets of this many MiB, those
     * of the last micro-batch's finished layers started during its backward (overlapped); 0:
     * one sum of the whole buffer after the backward. */
    double bucket_mb;
} trainer_env;

enum { TRAINER_DONE = 0, TRAINER_FAILED = -1, TRAINER_STOPPED = 1 };

/* ---- evaluation (during training and on its own) ---- */

struct model;
struct tok_tokenizer;
struct chat_template;
struct trainer_dataset;
struct reward_verifier;

typedef struct trainer_eval_params {
    int k;              /* samples per prompt (avg@k = accuracy, pass@k) */
    double temperature; /* 0 = greedy */
    int max_new_tokens;
    int64_t max_prompts; /* 0 = every record of the eval set */
    const int32_t *stop_ids;
    int n_stop;
    uint64_t seed, stream;
    /* every scored sample (may be NULL) */
    void (*on_sample)(void *user, const trainer_sample *s);
    void *user;
} trainer_eval_params;

typedef struct trainer_eval_result {
    int64_t prompts;
    int k;
    double accuracy;  /* mean correctness over prompts x k samples (avg@k) */
    double pass_at_k; /* fraction of prompts with at least one correct sample */
    double seconds;
    int64_t errors; /* samples the verifier could not decide (error / timeout): they count
                       as not correct in accuracy and pass@k, and are reported here */
} trainer_eval_result;

/* The tokens that end a response of model m with tokenizer tok: the tokenizer's and the
 * config's EOS and the chat templates' end-of-turn tokens (<|im_end|>, <|eot_id|>,
 * <|endoftext|>) that exist in the vocabulary. Writes at most max ids; returns the count (0: no
 * stop token, responses end at max_new_tokens). */
int trainer_stop_ids(const struct model *m, const struct tok_tokenizer *tok, int32_t *out, int max);

/* The job's chat template: the tokenizer's own when it has one (an unrecognised template is an
 * error that says so, never a silent guess), else "raw" (a tokenizer without a template). */
int trainer_chat_template(const struct tok_tokenizer *tok, struct chat_template *out,
                          chord_err *err);

/* A sampled response's text, as the verifier scores it and the samples store it: ids past the
 * tokenizer's vocabulary (a padded model vocabulary) dropped, special tokens skipped, then made
 * valid UTF-8 without NUL bytes. *out is malloc'd. */
int trainer_decode_response(const struct tok_tokenizer *tok, const int32_t *ids, int n,
                            char **out, chord_err *err);

/* Samples k responses per eval prompt (records in file order) and scores them. */
int trainer_evaluate(struct model *m, const struct tok_tokenizer *tok,
                     const struct chat_template *tpl, struct trainer_dataset *ds,
                     const struct reward_verifier *verifier, const trainer_eval_params *p,
                     trainer_eval_result *out, chord_err *err);

/* Runs the job. Returns TRAINER_DONE after cfg->steps steps, TRAINER_STOPPED when should_stop
 * asked, TRAINER_FAILED with err set. */
int trainer_run(const job_config *cfg, const trainer_env *env, const trainer_callbacks *cb,
                chord_err *err);

#endif
