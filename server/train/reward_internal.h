/* reward_internal.h — what reward.c and reward_webhook.c share: the verifier struct and the
 * result helpers. Not part of the public API (callers use reward.h). */
#ifndef CHORD_TRAIN_REWARD_INTERNAL_H
#define CHORD_TRAIN_REWARD_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <curl/curl.h>
#include <pcre2.h>

#include "server/train/reward.h"

struct reward_verifier {
    reward_type type;
    bool has_length_penalty;
    double length_penalty; /* reward of a truncated response with no answer */
    /* math_boxed */
    bool think_format;
    double format_penalty;
    /* exact, contains, regex */
    bool ignore_case;
    /* regex */
    char *pattern;
    bool pattern_has_answer; /* contains {answer}: compiled per sample */
    pcre2_code *code;        /* compiled pattern when it has no {answer} */
    uint32_t capture_count;
    pcre2_match_context *match_ctx; /* read-only during matches: shared by threads */
    uint32_t match_limit, depth_limit, heap_limit_kib;
    /* webhook */
    char *url;
    long timeout_ms;
    int retries;
    int max_concurrency;
    struct curl_slist *headers;
    /* format */
    bool need_boxed, need_think;
    /* sum */
    reward_verifier **terms;
    double *weights;
    size_t n_terms;
};

/* Fills a result; detail is printf-formatted, cut to REWARD_DETAIL_MAX at a UTF-8 boundary. */
void reward_set(reward_result *r, double reward, reward_reason reason, bool correct,
                const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* Copies src[0..n) into a NUL-terminated malloc'd string valid as UTF-8: invalid bytes become
 * U+FFFD by utf8.h's rule (Python's errors="replace"), and so does each NUL byte. Returns NULL on
 * out of memory. */
char *reward_utf8_sanitize(const char *src, size_t n);

/* The webhook verifier (reward_webhook.c). */
int reward_webhook_init(chord_err *err);
int reward_webhook_batch(const reward_verifier *v, const reward_sample *samples, size_t n,
                         reward_result *results, chord_err *err);

#endif
