/* tinker.h — the Tinker-compatible training service (docs/tinker.md): sessions, LoRA training
 * models on the server's shared bases, and the operations the official `tinker` client submits
 * as futures (create_model, forward_backward, optim_step, save_weights, ...), run per model
 * strictly in seq_id order on a thread and backend context of the model's own.
 *
 * A model is a view of its base (server/jobs/bases.h: one copy per base and device, shared with
 * jobs and rollouts) with a LoRA adapter and its AdamW state. Gradients of forward_backward calls
 * accumulate until optim_step, which applies and clears them. A future keeps its result for
 * TK_FUTURE_KEEP_S seconds after it completes, so a client that lost an answer can ask again.
 *
 * Not here: the wire format (api/tinker/tinker_pb.h for the protobuf bodies, api/http for the
 * routes), the loss formulas (tinker_loss.h).
 *
 * Lifetime: in memory. Sessions, models and futures do not survive a restart yet (issue 15,
 * item 4); a future the server does not know is answered 410 (the client then resubmits a
 * sample, and fails a training op clearly). */
#ifndef CHORD_TINKER_TINKER_H
#define CHORD_TINKER_TINKER_H

#include <jansson.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/tinker/tinker_types.h"

struct bootstrap_bases; /* server/train/bootstrap.h */

#define TK_ID_MAX 160
#define TK_FUTURE_KEEP_S 600.0

typedef struct tk_service tk_service;

typedef struct tk_options {
    const char *data_dir; /* checkpoints go to DATA_DIR/tinker/<model_id>/<kind>/<name> */
    const char *device;   /* the device models run on ("cpu", "cuda:0") */
    int threads;          /* CPU threads of each model's backend; <= 0 = all */
    const struct bootstrap_bases *bases;
    /* base_model (a registered model id or a directory under the models root) -> the model
     * directory (malloc'd); errors name the field "base_model" */
    int (*resolve)(void *user, const char *base_model, char **dir, chord_err *err);
    void *user;
} tk_options;

int tk_open(const tk_options *opt, tk_service **out, chord_err *err);
/* Stops every model's thread (operations not started fail with "the server is stopping") and
 * refuses new work; the service stays valid for calls in flight. Idempotent. */
void tk_shutdown(tk_service *t);
/* tk_shutdown, then frees. NULL is allowed. */
void tk_close(tk_service *t);

/* ---- direct calls (JSON in, JSON out) ---- */
int tk_create_session(tk_service *t, const json_t *req, json_t **resp, chord_err *err);
int tk_heartbeat(tk_service *t, const json_t *req, json_t **resp, chord_err *err);
int tk_finish_session(tk_service *t, const char *session_id, chord_err *err);
int tk_get_info(tk_service *t, const json_t *req, json_t **resp, chord_err *err);
/* {"supported_models": [...]}: the bases resident or ever loaded this run */
int tk_capabilities(tk_service *t, json_t **resp, chord_err *err);

/* ---- futures: each returns the request id (TK_ID_MAX) of the operation queued ---- */
int tk_submit_create_model(tk_service *t, const json_t *req, char *request_id, char *model_id,
                           chord_err *err);
/* load_weights in its create-via-load form (create_training_client_from_state[_with_optimizer]):
 * a new model "<session_id>:train:<model_seq_id>" from a checkpoint "tinker://<model_id>/
 * weights/<name>" (its base, adapter and config; its AdamW state with "optimizer": true). */
int tk_submit_load_weights(tk_service *t, const json_t *req, char *request_id, char *model_id,
                           chord_err *err);
/* Takes ownership of *fb (emptied) whether it succeeds or not. */
int tk_submit_forward_backward(tk_service *t, tk_fb_request *fb, char *request_id,
                               chord_err *err);
/* optim_step, save_weights, save_weights_for_sampler: kind is the route's name */
int tk_submit_json(tk_service *t, const char *kind, const json_t *req, char *request_id,
                   chord_err *err);
/* asample on a sampling session: its sequences are named "<request_id>:<i>", i < *n_samples. */
int tk_submit_sample(tk_service *t, const json_t *req, char *request_id, int *n_samples,
                     chord_err *err);

/* ---- samplers (direct calls) ----
 * A sampler serves asample on base + an adapter: the snapshot of a training model taken by
 * save_weights_for_sampler without a name (save_weights_and_get_sampling_client), a saved
 * checkpoint (model_path "tinker://<model_id>/<weights|sampler_weights>/<name>"), or no
 * adapter (base_model). Its requests run as they come, on a thread of its own. */
int tk_create_sampling_session(tk_service *t, const json_t *req, json_t **resp, chord_err *err);
int tk_get_sampler(tk_service *t, const char *sampler_id, json_t **resp, chord_err *err);

/* ---- training runs and checkpoints (the RestClient's listings), from disk and memory ---- */
int tk_training_run(tk_service *t, const char *run, json_t **resp, chord_err *err);
int tk_training_runs(tk_service *t, size_t offset, size_t limit, json_t **resp, chord_err *err);
int tk_run_checkpoints(tk_service *t, const char *run, json_t **resp, chord_err *err);

typedef enum tk_state { TK_PENDING = 0, TK_DONE = 1, TK_FAILED = 2 } tk_state;

typedef struct tk_result {
    tk_state state;
    json_t *json;       /* TK_DONE: a JSON result (new reference), or NULL with fb */
    tk_fb_output *fb;   /* TK_DONE of forward_backward (owned by the caller now) */
    tk_sample_response *sample; /* TK_DONE of asample (owned by the caller now) */
    char *error;        /* TK_FAILED: the message (malloc'd) */
    int user_error;     /* TK_FAILED: the request's fault ("user"), else the server's */
} tk_result;

/* Waits up to wait_s for request_id (a copy of its result; CHORD_E_NOT_FOUND for an id the
 * server does not know or no longer keeps). */
int tk_retrieve(tk_service *t, const char *request_id, double wait_s, tk_result *out,
                chord_err *err);
void tk_result_free(tk_result *r);

#endif
