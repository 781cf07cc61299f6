/* rollout.c — placeholder for jobs_rollout_generate (rollout.h) until the trainer's generation
 * function lands: every rollout request fails with a clear message. */
#include "server/jobs/rollout.h"

int jobs_rollout_generate(const json_t *request, ops_ctx *ops, void *live_model,
                          const char *live_job_id, json_t **result, chord_err *err) {
    (void)request;
    (void)ops;
    (void)live_model;
    (void)live_job_id;
    *result = NULL;
    return chord_err_setc(err, CHORD_E_UNAVAILABLE,
                          "rollouts: generation is not implemented yet in this build");
}
