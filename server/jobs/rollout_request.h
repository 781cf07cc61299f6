/* rollout_request.h — the seam to the generation function that answers a rollout request
 * (POST /v1/rollouts). The service validates and resolves the request and stores it; a worker
 * calls jobs_rollout_generate between training steps (with the running job's live model) or
 * when idle (live_model NULL: load the model named by the request).
 *
 * The request document, as the service resolved it:
 *   {"prompts": [string...]} or {"messages": [[{"role", "content"}...]...]},
 *   "model_dir": absolute directory or null, "model_init": {config...} or null,
 *   "tokenizer_dir": directory or null, "checkpoint_dir": directory or null,
 *   "job_id": the checkpoint's job or null,
 *   "n", "temperature", "top_p", "max_tokens", "seed", "answers" (array or null),
 *   "reward" (object or null)
 * The result document: {"completions": [{"prompt_index", "index", "text", "prompt_token_ids",
 *   "token_ids": [...],
 *   "logprobs": [...], "finish_reason": "stop"|"length", "reward"?, "reason"?}],
 *   "tokens", "seconds", "batched_requests": the most requests that decoded together in its
 *   batch (1: alone)}.
 *
 * A growing batch (server/train/rollout.h rollout_batch): while a request decodes, the request
 * at the head of the queue joins it between two decode steps when it samples from the same
 * model (weights, tokenizer, running job) and fits the batch's free slots and positions; it is
 * answered as soon as its own sequences finish. One that does not join stays at the head and
 * runs after the batch (nothing overtakes the queue's order).
 *
 * What this is not: generation itself lives with the trainer (server/train); this file only
 * names the call. */
#ifndef CHORD_JOBS_ROLLOUT_REQUEST_H
#define CHORD_JOBS_ROLLOUT_REQUEST_H

#include <jansson.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/train/mem_estimate.h"
#include "storage/store.h"

struct bootstrap_bases;

/* Where joining requests come from (the worker's queue, server/jobs/jobs.c). */
typedef struct jobs_rollout_joiner {
    void *user;
    /* the request at the head of the queue, removed from it: 1 with its id and a new reference
     * to its document, or 0 (none; or one already put back during this batch) */
    int (*next)(void *user, char id[STORE_ID_MAX], json_t **request);
    /* a request next gave that does not join: back to the head of the queue */
    void (*put_back)(void *user, const char *id);
    /* a joined request's answer: its result document, or (result NULL) why it failed */
    void (*done)(void *user, const char *id, const json_t *result, const chord_err *err);
} jobs_rollout_joiner;

/* *result: a new reference on success. live_model is a `model *` (server/model/model.h) of
 * the job running on this device, or NULL; live_job_id names that job (or NULL). budget (NULL:
 * none) is what the request may use on the device now: a request that would not fit
 * (mem_estimate_rollout with its prompts' real lengths) fails with CHORD_E_TOO_LARGE before its
 * model is loaded. bases (NULL: the request loads a model of its own) is the server's shared base
 * weights (server/jobs/bases.h): the request's model (a base, or a base with an adapter) is then
 * a view of the one copy every job and rollout on the device uses. joiner (NULL: the request
 * decodes alone) offers queued requests to join its batch; the batch then has room for
 * ROLLOUT_JOIN_SLOTS sequences at least, as far as budget allows. */
int jobs_rollout_generate(const json_t *request, ops_ctx *ops,
                          const struct bootstrap_bases *bases, void *live_model,
                          const char *live_job_id, const mem_budget *budget,
                          const jobs_rollout_joiner *joiner, json_t **result, chord_err *err);

#endif
