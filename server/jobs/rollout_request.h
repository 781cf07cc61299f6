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
 *   "logprobs": [...], "finish_reason": "stop"|"length", "reward"?, "reason"?}]}.
 *
 * What this is not: generation itself lives with the trainer (server/train); this file only
 * names the call. */
#ifndef CHORD_JOBS_ROLLOUT_REQUEST_H
#define CHORD_JOBS_ROLLOUT_REQUEST_H

#include <jansson.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/train/mem_estimate.h"

struct bootstrap_bases;

/* *result: a new reference on success. live_model is a `model *` (server/model/model.h) of
 * the job running on this device, or NULL; live_job_id names that job (or NULL). budget (NULL:
 * none) is what the request may use on the device now: a request that would not fit
 * (mem_estimate_rollout with its prompts' real lengths) fails with CHORD_E_TOO_LARGE before its
 * model is loaded. bases (NULL: the request loads a model of its own) is the server's shared base
 * weights (server/jobs/bases.h): the request's model (a base, or a base with an adapter) is then
 * a view of the one copy every job and rollout on the device uses. */
int jobs_rollout_generate(const json_t *request, ops_ctx *ops,
                          const struct bootstrap_bases *bases, void *live_model,
                          const char *live_job_id, const mem_budget *budget, json_t **result,
                          chord_err *err);

#endif
