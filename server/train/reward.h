/* reward.h — the verifiers that score a response for GRPO: math_boxed, exact, contains, regex and
 * webhook, configured from a job's "reward" JSON object (docs/rewards.md lists every field).
 *
 * Every score comes with a reason, so a verifier failure (bad sample, webhook down, regex over its
 * match limit) is reported as `error` / `timeout`, never silently as a wrong answer. Every verifier
 * runs in bounded time: regexes under PCRE2 match/depth/heap limits, math normalisation on inputs
 * capped at MATHNORM_MAX_LEN bytes, webhooks under a per-attempt timeout and a retry count.
 *
 * A verifier is immutable once built: reward_score / reward_score_batch may be called from several
 * threads at once on the same verifier. This file does not decide what the trainer does with an
 * `error` sample (see docs/rewards.md for the recommendation). */
#ifndef CHORD_TRAIN_REWARD_H
#define CHORD_TRAIN_REWARD_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "server/base/err.h"

typedef enum reward_type {
    REWARD_MATH_BOXED = 0,
    REWARD_EXACT = 1,
    REWARD_CONTAINS = 2,
    REWARD_REGEX = 3,
    REWARD_WEBHOOK = 4,
    REWARD_FORMAT = 5, /* 1 when the response has the required structure (\boxed{}, <think>) */
    REWARD_SUM = 6,    /* the weighted sum of other verifiers' rewards */
} reward_type;

typedef enum reward_reason {
    REWARD_REASON_CORRECT = 0,   /* the answer is right */
    REWARD_REASON_WRONG = 1,     /* an answer was found and it is wrong */
    REWARD_REASON_NO_ANSWER = 2, /* no answer could be extracted (no \boxed{}, empty, no match) */
    REWARD_REASON_FORMAT = 3,    /* the structure is wrong: <think></think>, or no \boxed{} for a
                                  * format verifier (see `correct`) */
    REWARD_REASON_ERROR = 4,     /* the verifier could not decide: bad sample, webhook failure */
    REWARD_REASON_TIMEOUT = 5, /* the verifier ran out of time (webhook) or match budget (regex) */
} reward_reason;
#define REWARD_REASON_COUNT 6

#define REWARD_DETAIL_MAX 160

typedef struct reward_result {
    double reward; /* what GRPO uses; 0 for error / timeout */
    reward_reason reason;
    bool correct; /* the answer itself was right (independent of a format penalty) */
    char detail[REWARD_DETAIL_MAX]; /* a short human-readable explanation, NUL-terminated */
} reward_result;

/* One sample to score. prompt may be NULL (only webhook and think_format look at it); answer may
 * be NULL only for verifiers that do not need one (a regex without {answer} or capture group, a
 * webhook). truncated: the response hit the length limit. */
typedef struct reward_sample {
    const char *prompt;
    const char *completion;
    const char *answer;
    bool truncated;
} reward_sample;

typedef struct reward_verifier reward_verifier;

/* Builds a verifier from the job's "reward" object, e.g. {"type": "math_boxed",
 * "think_format": false, "length_penalty": null}. Unknown fields and wrong types are rejected with
 * an error naming the field ("reward.timeout_ms: ..."). *out is owned by the caller. */
int reward_verifier_new(const json_t *config, reward_verifier **out, chord_err *err);
void reward_verifier_free(reward_verifier *verifier);

reward_type reward_verifier_type(const reward_verifier *verifier);

/* Scores one response. Always fills *result when result is not NULL (an unusable sample, e.g. a
 * NULL completion or a missing answer, gives reason `error` with the cause in detail). Returns 0,
 * or -1 when verifier or result is NULL. */
int reward_score(const reward_verifier *verifier, const char *prompt, const char *completion,
                 const char *answer, bool truncated, reward_result *result);

/* Scores n samples into results[n]. Webhooks run concurrently (curl multi, at most
 * "max_concurrency" in flight); each sample takes at most (retries + 1) attempts of timeout_ms
 * plus back-off (<= 1 s per retry), so the batch ends within ceil(n / max_concurrency) times that.
 * Other verifiers run one after the other. Returns 0, or -1 with err set for a NULL argument or
 * when the webhook batch could not be started (then every unfinished result is `error`). */
int reward_score_batch(const reward_verifier *verifier, const reward_sample *samples, size_t n,
                       reward_result *results, chord_err *err);

/* "correct", "wrong", "no_answer", "format", "error", "timeout". */
const char *reward_reason_name(reward_reason reason);
/* Parses a reason name; returns -1 when unknown. */
int reward_reason_parse(const char *name, reward_reason *reason);
/* "math_boxed", "exact", ... */
const char *reward_type_name(reward_type type);

#endif
