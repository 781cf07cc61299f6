/* rollout.h — batched sampling of G responses for each of B prompts through the KV cache, with
 * the per-token log-probs the trainer will compare against (same engine, same numbers).
 *
 * The G responses of a prompt share its prefill: the prompt is run once into one cache slot and
 * copied to the group's other slots. Every sequence of the batch decodes together, one token per
 * step, until it samples a stop token or reaches max_new_tokens.
 *
 * Randomness is counter-based: the uniform that picks token t of sequence i comes from a hash of
 * (seed, stream, i, t), so a rollout is reproducible whatever the batch composition, and a
 * resumed job needs no RNG state beyond its step number.
 *
 * The batch grows: rollout_batch holds several requests, each with its own prompts and sampling
 * parameters, and a request can join between two decode steps (rollout_batch_add), taking free
 * slots of the batch's KV cache; from then on its sequences decode in the same model steps as
 * the others'. rollout_generate is the one-request case. A request's tokens do not depend on
 * what else is in the batch (its uniforms are its own; its rows' logits are computed as in any
 * batch, up to the last bits of a GEMM's summation order).
 *
 * Not here: tokenization, rewards, losses. */
#ifndef CHORD_TRAIN_ROLLOUT_H
#define CHORD_TRAIN_ROLLOUT_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/model.h"

typedef struct rollout_params {
    int group_size;          /* G >= 1 */
    float temperature;       /* 0 = greedy */
    float top_p;             /* (0, 1] */
    int max_new_tokens;      /* >= 1 */
    const int32_t *stop_ids; /* tokens that end a response (kept in it), e.g. EOS */
    int n_stop;
    uint64_t seed;   /* job seed */
    uint64_t stream; /* e.g. the step number: distinct streams draw independent numbers */
    uint64_t first_index; /* the uniform index of the batch's first sequence (0; a rank's share
                             of a step: its first prompt x G, so it samples what one process
                             sampling the whole step would) */
    /* polled between decode steps; non-zero aborts with CHORD_E_UNAVAILABLE (may be NULL) */
    int (*should_stop)(void *user);
    void *user;
} rollout_params;

/* One sampled response. tokens/logp are malloc'd, freed by rollout_result_free. */
typedef struct rollout_seq {
    int prompt;      /* index of its prompt */
    int len;         /* response tokens (a final stop token included) */
    int32_t *tokens; /* (len) */
    float *logp; /* (len) log π(token) under the tempered distribution (temperature 1 for greedy) */
    int stopped;   /* ended with a stop token */
    int truncated; /* reached max_new_tokens without a stop token */
} rollout_seq;

typedef struct rollout_result {
    int n; /* B * G sequences, prompt-major: seq[p*G + g] */
    rollout_seq *seq;
    int64_t tokens; /* sampled tokens in all */
    double seconds; /* wall time of the generation */
} rollout_result;

/* A reusable cache: holds the KV cache between calls (grown when a call needs more). */
typedef struct rollout_engine rollout_engine;
rollout_engine *rollout_engine_new(model *m);
void rollout_engine_free(rollout_engine *e);

/* Samples G responses for each of n_prompts prompts (prompts[p] of prompt_lens[p] ids, >= 1). */
int rollout_generate(rollout_engine *e, const int32_t *const *prompts, const int *prompt_lens,
                     int n_prompts, const rollout_params *p, rollout_result *out, chord_err *err);
void rollout_result_free(rollout_result *r);

/* A growing batch over e's KV cache: at most `slots` sequences of at most max_T positions
 * (prompt + response; clamped to the model's max_position_embeddings). */
typedef struct rollout_batch rollout_batch;
int rollout_batch_new(rollout_engine *e, int slots, int max_T, rollout_batch **out,
                      chord_err *err);
void rollout_batch_free(rollout_batch *b);
/* Joins a request: n_prompts prompts x p->group_size sequences, prefilled, each with its first
 * token sampled. Returns the request's index (>= 0), or -1: CHORD_E_TOO_LARGE when it does not
 * fit the free slots or max_T (nothing changed: it can wait for a later batch), another code on
 * bad input (nothing changed) or a failed op (then the batch must not be used further). p is
 * copied (stop_ids too); p->should_stop is polled at every step. */
int rollout_batch_add(rollout_batch *b, const int32_t *const *prompts, const int *prompt_lens,
                      int n_prompts, const rollout_params *p, chord_err *err);
/* One decode step of every live sequence of every request. Returns the sequences still live
 * (0: every request has finished), or -1 (CHORD_E_UNAVAILABLE when a request's should_stop
 * asked to stop). */
int rollout_batch_step(rollout_batch *b, chord_err *err);
/* 1 when request r has finished: *out receives its result (seq prompt-major, as
 * rollout_generate's; seconds since it joined) and its slots are free again; else 0. */
int rollout_batch_take(rollout_batch *b, int r, rollout_result *out);
int rollout_batch_free_slots(const rollout_batch *b);
int rollout_batch_max_T(const rollout_batch *b);
/* the most requests that decoded together so far */
int rollout_batch_most_requests(const rollout_batch *b);

/* The counter-based uniform in [0, 1) (exposed for tests and for other seeded draws). */
double rollout_uniform(uint64_t seed, uint64_t stream, uint64_t index, uint64_t t);

#endif
