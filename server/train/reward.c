/* reward.c — verifier configuration (the job's "reward" object) and the local verifiers:
 * math_boxed, exact, contains and regex. The webhook verifier lives in reward_webhook.c.
 *
 * What each verifier does, field by field, is documented in docs/rewards.md. This file does not
 * store results or compute metrics; the trainer gets a reward_result per sample and decides. */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/json_field.h"
#include "server/base/utf8.h"
#include "server/train/mathnorm.h"
#include "server/train/reward_internal.h"

#define REGEX_MAX_PATTERN 4096
#define REGEX_DEFAULT_MATCH_LIMIT 1000000u
#define REGEX_DEFAULT_DEPTH_LIMIT 10000u
#define REGEX_DEFAULT_HEAP_LIMIT_KIB 20000u

static const char *const reason_names[REWARD_REASON_COUNT] = {"correct", "wrong", "no_answer",
                                                              "format",  "error", "timeout"};
static const char *const type_names[] = {"math_boxed", "exact",  "contains", "regex",
                                         "webhook",    "format", "sum"};
#define TYPE_LIST "math_boxed, exact, contains, regex, webhook, format or sum"
#define SUM_MAX_TERMS 16

const char *reward_reason_name(reward_reason reason) {
    return (unsigned)reason < REWARD_REASON_COUNT ? reason_names[reason] : "unknown";
}

int reward_reason_parse(const char *name, reward_reason *reason) {
    for (int i = 0; i < REWARD_REASON_COUNT; i++) {
        if (strcmp(name, reason_names[i]) == 0) {
            *reason = (reward_reason)i;
            return 0;
        }
    }
    return -1;
}

const char *reward_type_name(reward_type type) {
    return (unsigned)type < sizeof type_names / sizeof type_names[0] ? type_names[type] : "unknown";
}

reward_type reward_verifier_type(const reward_verifier *verifier) {
    return verifier->type;
}

/* ---- text helpers ---- */

char *reward_utf8_sanitize(const char *src, size_t n) {
    chord_buf out = {0};
    int bad = chord_buf_reserve(&out, n + 1);
    for (size_t i = 0; i < n && !bad;) {
        const char *nul = memchr(src + i, '\0', n - i);
        size_t k = nul ? (size_t)(nul - (src + i)) : n - i;
        bad = chord_utf8_append_lossy(&out, src + i, k) ||
              (nul && chord_buf_append(&out, "\xEF\xBF\xBD", 3)); /* a C string ends at NUL */
        i += k + (nul != NULL);
    }
    if (bad) {
        chord_buf_free(&out);
        return NULL;
    }
    return chord_buf_take(&out);
}

void reward_set(reward_result *r, double reward, reward_reason reason, bool correct,
                const char *fmt, ...) {
    r->reward = reward;
    r->reason = reason;
    r->correct = correct;
    char tmp[4 * REWARD_DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    /* copy whole valid UTF-8 characters, control characters as spaces, invalid bytes as '?' */
    const unsigned char *s = (const unsigned char *)tmp;
    size_t n = strlen(tmp), w = 0;
    for (size_t i = 0; i < n;) {
        size_t k;
        if (chord_utf8_scan(s + i, n - i, &k, NULL) != CHORD_UTF8_OK) k = 0;
        if (w + (k ? k : 1) + 1 > REWARD_DETAIL_MAX) break;
        if (k == 0) {
            r->detail[w++] = '?';
            i++;
        } else if (k == 1) {
            r->detail[w++] = (char)(s[i] < 0x20 || s[i] == 0x7F ? ' ' : s[i]);
            i++;
        } else {
            memcpy(r->detail + w, s + i, k);
            w += k;
            i += k;
        }
    }
    r->detail[w] = '\0';
}

static const char *skip_space(const char *s) {
    while (*s && isspace((unsigned char)*s))
        s++;
    return s;
}

/* Length of s without trailing whitespace. */
static size_t trimmed_len(const char *s) {
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        n--;
    return n;
}

/* At most max bytes of s, for details; the result is cut at a UTF-8 boundary by reward_set. */
static int clip(size_t n, int max) {
    return n > (size_t)max ? max : (int)n;
}

static bool bytes_equal(const char *a, size_t an, const char *b, size_t bn, bool ignore_case) {
    if (an != bn) return false;
    return ignore_case ? strncasecmp(a, b, an) == 0 : memcmp(a, b, an) == 0;
}

/* ---- configuration ---- */

/* A flag of the reward object (server/base/json_field.h names it); left out keeps *out. */
static int get_flag(const json_t *cfg, const char *path, const char *key, bool *out,
                    chord_err *err) {
    int on = *out;
    if (chord_json_get_bool(cfg, path, key, 0, &on, err)) return -1;
    *out = on != 0;
    return 0;
}

/* Replaces every "{answer}" in pattern by the answer with each ASCII punctuation byte escaped,
 * so the answer matches literally. */
static char *substitute_answer(const char *pattern, const char *answer) {
    size_t an = strlen(answer), count = 0;
    for (const char *p = pattern; (p = strstr(p, "{answer}")) != NULL; p += 8)
        count++;
    size_t cap = strlen(pattern) + count * 2 * an + 1;
    char *out = malloc(cap), *w = out;
    if (!out) return NULL;
    for (const char *p = pattern;;) {
        const char *hit = strstr(p, "{answer}");
        size_t k = hit ? (size_t)(hit - p) : strlen(p);
        memcpy(w, p, k);
        w += k;
        if (!hit) break;
        for (size_t i = 0; i < an; i++) {
            unsigned char c = (unsigned char)answer[i];
            if (c < 0x80 && !isalnum(c)) *w++ = '\\';
            *w++ = (char)c;
        }
        p = hit + 8;
    }
    *w = '\0';
    return out;
}

static pcre2_code *regex_compile(const reward_verifier *v, const char *pattern, char *msg,
                                 size_t msg_cap) {
    int code;
    PCRE2_SIZE offset;
    uint32_t opts = PCRE2_UTF | PCRE2_MATCH_INVALID_UTF | (v->ignore_case ? PCRE2_CASELESS : 0);
    pcre2_code *re =
        pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED, opts, &code, &offset, NULL);
    if (!re) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(code, buf, sizeof buf);
        snprintf(msg, msg_cap, "%s at offset %zu", (char *)buf, (size_t)offset);
    }
    return re;
}

static int parse_regex(reward_verifier *v, const json_t *cfg, const char *path, chord_err *err) {
    const char *p = NULL;
    if (chord_json_get_string(cfg, path, "pattern", CHORD_JSON_NONEMPTY, &p, err)) return -1;
    if (!p) return chord_err_set(err, "%s.pattern: required for type \"regex\"", path);
    if (strlen(p) > REGEX_MAX_PATTERN)
        return chord_err_set(err, "%s.pattern: longer than %d bytes", path, REGEX_MAX_PATTERN);
    v->pattern = strdup(p);
    if (!v->pattern)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s.pattern: out of memory", path);
    int64_t ml = REGEX_DEFAULT_MATCH_LIMIT, dl = REGEX_DEFAULT_DEPTH_LIMIT;
    if (chord_json_get_int(cfg, path, "match_limit", 0, 1, 100000000, &ml, err) ||
        chord_json_get_int(cfg, path, "depth_limit", 0, 1, 10000000, &dl, err))
        return -1;
    v->match_limit = (uint32_t)ml;
    v->depth_limit = (uint32_t)dl;
    v->heap_limit_kib = REGEX_DEFAULT_HEAP_LIMIT_KIB;
    v->pattern_has_answer = strstr(v->pattern, "{answer}") != NULL;
    /* Check the syntax now (with a stand-in answer when the pattern substitutes one). */
    char *probe = v->pattern_has_answer ? substitute_answer(v->pattern, "0") : strdup(v->pattern);
    if (!probe) return chord_err_setc(err, CHORD_E_INTERNAL, "%s.pattern: out of memory", path);
    char msg[300];
    pcre2_code *re = regex_compile(v, probe, msg, sizeof msg);
    free(probe);
    if (!re) return chord_err_set(err, "%s.pattern: %s", path, msg);
    if (pcre2_pattern_info(re, PCRE2_INFO_CAPTURECOUNT, &v->capture_count) != 0)
        v->capture_count = 0;
    if (v->pattern_has_answer)
        pcre2_code_free(re);
    else
        v->code = re;
    v->match_ctx = pcre2_match_context_create(NULL);
    if (!v->match_ctx) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
    pcre2_set_match_limit(v->match_ctx, v->match_limit);
    pcre2_set_depth_limit(v->match_ctx, v->depth_limit);
    pcre2_set_heap_limit(v->match_ctx, v->heap_limit_kib);
    return 0;
}

static bool header_name_ok(const char *s) {
    if (!*s) return false;
    for (; *s; s++)
        if (!(isalnum((unsigned char)*s) || strchr("!#$%&'*+-.^_`|~", *s))) return false;
    return true;
}

static int parse_webhook(reward_verifier *v, const json_t *cfg, const char *path, chord_err *err) {
    const char *url = NULL;
    if (chord_json_get_string(cfg, path, "url", 0, &url, err)) return -1;
    if (!url) return chord_err_set(err, "%s.url: required for type \"webhook\"", path);
    if (strlen(url) > 2048) return chord_err_set(err, "%s.url: must be at most 2048 bytes", path);
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return chord_err_set(err, "%s.url: must start with http:// or https://", path);
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7F)
            return chord_err_set(err, "%s.url: contains whitespace or a control character", path);
    int64_t timeout = 5000, retries = 2, conc = 16;
    if (chord_json_get_int(cfg, path, "timeout_ms", 0, 1, 600000, &timeout, err) ||
        chord_json_get_int(cfg, path, "retries", 0, 0, 10, &retries, err) ||
        chord_json_get_int(cfg, path, "max_concurrency", 0, 1, 256, &conc, err))
        return -1;
    v->timeout_ms = (long)timeout;
    v->retries = (int)retries;
    v->max_concurrency = (int)conc;
    v->url = strdup(url);
    if (!v->url) return chord_err_setc(err, CHORD_E_INTERNAL, "%s.url: out of memory", path);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (!h) return chord_err_setc(err, CHORD_E_INTERNAL, "%s.headers: out of memory", path);
    v->headers = h;
    json_t *hs = NULL;
    if (chord_json_get_object(cfg, path, "headers", 0, &hs, err)) return -1;
    char hpath[160];
    snprintf(hpath, sizeof hpath, "%s.headers", path);
    if (hs) {
        const char *key;
        json_t *val;
        json_object_foreach(hs, key, val) {
            if (!header_name_ok(key))
                return chord_err_set(err, "%s.headers.%s: not a valid header name", path, key);
            const char *s = NULL;
            if (chord_json_get_string(hs, hpath, key, CHORD_JSON_REQUIRED, &s, err)) return -1;
            if (strpbrk(s, "\r\n"))
                return chord_err_set(err, "%s.headers.%s: contains CR or LF", path, key);
            char line[4096];
            if ((size_t)snprintf(line, sizeof line, "%s: %s", key, s) >= sizeof line)
                return chord_err_set(err, "%s.headers.%s: too long", path, key);
            h = curl_slist_append(v->headers, line);
            if (!h) return chord_err_setc(err, CHORD_E_INTERNAL, "%s.headers: out of memory", path);
            v->headers = h;
        }
    }
    return reward_webhook_init(err);
}

static int verifier_new_at(const json_t *config, const char *path, bool in_sum,
                           reward_verifier **out, chord_err *err);

/* {"type": "sum", "terms": [{...a verifier..., "weight": w}, ...]}: 1..SUM_MAX_TERMS terms, none
 * of them a sum. */
static int parse_sum(reward_verifier *v, const json_t *cfg, const char *path, chord_err *err) {
    json_t *terms = NULL;
    if (chord_json_get_array(cfg, path, "terms", CHORD_JSON_REQUIRED, &terms, err)) return -1;
    size_t n = json_array_size(terms);
    if (n == 0 || n > SUM_MAX_TERMS)
        return chord_err_set(err, "%s.terms: must hold 1 to %d verifiers, got %zu", path,
                             SUM_MAX_TERMS, n);
    v->terms = calloc(n, sizeof *v->terms);
    v->weights = calloc(n, sizeof *v->weights);
    if (!v->terms || !v->weights)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s.terms: out of memory", path);
    for (size_t i = 0; i < n; i++) {
        char tpath[CHORD_JSON_PATH_MAX];
        snprintf(tpath, sizeof tpath, "%s.terms[%zu]", path, i);
        json_t *term = json_array_get(terms, i);
        if (chord_json_object_value(term, tpath, err)) return -1;
        v->weights[i] = 1.0;
        if (chord_json_get_number(term, tpath, "weight", 0, -1e6, 1e6, &v->weights[i], err))
            return -1;
        if (verifier_new_at(term, tpath, true, &v->terms[i], err)) return -1;
        v->n_terms = i + 1;
    }
    return 0;
}

static int verifier_new_at(const json_t *config, const char *path, bool in_sum,
                           reward_verifier **out, chord_err *err) {
    *out = NULL;
    if (!config || !json_is_object(config))
        return chord_err_set(err, "%s: expected an object such as {\"type\": \"math_boxed\"}",
                             path);
    const char *type = NULL;
    if (chord_json_get_string(config, path, "type", 0, &type, err)) return -1;
    if (!type) return chord_err_set(err, "%s.type: required (" TYPE_LIST ")", path);
    int ti = -1;
    for (int i = 0; i < (int)(sizeof type_names / sizeof type_names[0]); i++)
        if (strcmp(type, type_names[i]) == 0) ti = i;
    if (ti < 0)
        return chord_err_set(err, "%s.type: unknown verifier \"%s\" (" TYPE_LIST ")", path, type);
    if (ti == REWARD_SUM && in_sum)
        return chord_err_set(err, "%s.type: a sum cannot be a term of a sum", path);
    /* the last slot is left for "weight" when the verifier is a term of a sum */
    static const char *const fields[][10] = {
        [REWARD_MATH_BOXED] = {"type", "length_penalty", "think_format", "format_penalty", NULL},
        [REWARD_EXACT] = {"type", "length_penalty", "ignore_case", NULL},
        [REWARD_CONTAINS] = {"type", "length_penalty", "ignore_case", NULL},
        [REWARD_REGEX] = {"type", "pattern", "length_penalty", "ignore_case", "match_limit",
                          "depth_limit", NULL},
        [REWARD_WEBHOOK] = {"type", "url", "timeout_ms", "retries", "max_concurrency", "headers",
                            "length_penalty", NULL},
        [REWARD_FORMAT] = {"type", "boxed", "think", NULL},
        [REWARD_SUM] = {"type", "terms", NULL},
    };
    const char *allowed[11];
    size_t k = 0;
    for (; fields[ti][k]; k++)
        allowed[k] = fields[ti][k];
    if (in_sum) allowed[k++] = "weight";
    allowed[k] = NULL;
    if (chord_json_check_keys(config, path, allowed, err)) return -1;
    reward_verifier *v = calloc(1, sizeof *v);
    if (!v) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
    v->type = (reward_type)ti;
    v->format_penalty = 0.1;
    v->need_boxed = true;
    v->has_length_penalty = chord_json_field(config, "length_penalty") != NULL;
    if (chord_json_get_number(config, path, "length_penalty", 0, -1e6, 1e6, &v->length_penalty,
                              err) ||
        get_flag(config, path, "think_format", &v->think_format, err) ||
        chord_json_get_number(config, path, "format_penalty", 0, 0, 1e6, &v->format_penalty, err) ||
        get_flag(config, path, "ignore_case", &v->ignore_case, err) ||
        get_flag(config, path, "boxed", &v->need_boxed, err) ||
        get_flag(config, path, "think", &v->need_think, err))
        goto fail;
    if (v->type == REWARD_FORMAT && !v->need_boxed && !v->need_think) {
        chord_err_set(err, "%s: a format verifier checks something: set \"boxed\" or \"think\"",
                      path);
        goto fail;
    }
    if (v->type == REWARD_REGEX && parse_regex(v, config, path, err)) goto fail;
    if (v->type == REWARD_WEBHOOK && parse_webhook(v, config, path, err)) goto fail;
    if (v->type == REWARD_SUM && parse_sum(v, config, path, err)) goto fail;
    *out = v;
    return 0;
fail:
    reward_verifier_free(v);
    return -1;
}

int reward_verifier_new(const json_t *config, reward_verifier **out, chord_err *err) {
    return verifier_new_at(config, "reward", false, out, err);
}

void reward_verifier_free(reward_verifier *v) {
    if (!v) return;
    free(v->pattern);
    pcre2_code_free(v->code);
    pcre2_match_context_free(v->match_ctx);
    free(v->url);
    curl_slist_free_all(v->headers);
    for (size_t i = 0; i < v->n_terms; i++)
        reward_verifier_free(v->terms[i]);
    free(v->terms);
    free(v->weights);
    free(v);
}

/* ---- math_boxed ---- */

/* The <think>...</think> structure: exactly one "<think>" before exactly one "</think>" in the
 * response (Trinity-RFT's validate_think_pattern); when the prompt already ends with "<think>"
 * (Qwen3 / DeepSeek-R1 templates open it for the model), the response must close it exactly once
 * and not open another. */
static bool think_ok(const char *prompt, const char *completion) {
    size_t opens = 0, closes = 0;
    const char *first_open = NULL, *first_close = NULL;
    for (const char *p = completion; (p = strstr(p, "<think>")) != NULL; p += 7)
        if (opens++ == 0) first_open = p;
    for (const char *p = completion; (p = strstr(p, "</think>")) != NULL; p += 8)
        if (closes++ == 0) first_close = p;
    bool opened_by_prompt = false;
    if (prompt) {
        size_t n = trimmed_len(prompt);
        opened_by_prompt = n >= 7 && memcmp(prompt + n - 7, "<think>", 7) == 0;
    }
    if (opened_by_prompt) return opens == 0 && closes == 1;
    return opens == 1 && closes == 1 && first_open < first_close;
}

static void score_math(const reward_verifier *v, const char *prompt, const char *completion,
                       const char *answer, bool truncated, reward_result *r) {
    const char *box;
    size_t blen;
    bool found = mathnorm_last_boxed(completion, &box, &blen);
    if (found) {
        while (blen > 0 && isspace((unsigned char)*box))
            box++, blen--;
        while (blen > 0 && isspace((unsigned char)box[blen - 1]))
            blen--;
    }
    if (!found || blen == 0) {
        if (truncated && v->has_length_penalty) {
            reward_set(r, v->length_penalty, REWARD_REASON_NO_ANSWER, false,
                       "truncated without a \\boxed{} answer: length penalty");
            return;
        }
        reward_set(r, 0.0, REWARD_REASON_NO_ANSWER, false, "%s",
                   found ? "empty \\boxed{}" : "no \\boxed{} answer in the response");
    } else if (blen > MATHNORM_MAX_LEN) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false,
                   "boxed answer is %zu bytes, over the %d-byte verifier cap", blen,
                   MATHNORM_MAX_LEN);
        return;
    } else {
        char *pred = strndup(box, blen);
        mathnorm_verdict verdict = pred ? mathnorm_equiv(answer, pred) : MATHNORM_NOMEM;
        free(pred);
        if (verdict == MATHNORM_TOO_LONG) {
            reward_set(r, 0.0, REWARD_REASON_ERROR, false, "answer over the %d-byte verifier cap",
                       MATHNORM_MAX_LEN);
            return;
        }
        if (verdict == MATHNORM_TOO_COMPLEX) {
            reward_set(r, 0.0, REWARD_REASON_ERROR, false,
                       "answer lists nested too deeply to compare within %d comparisons",
                       MATHNORM_MAX_COMPARISONS);
            return;
        }
        if (verdict == MATHNORM_NOMEM) {
            reward_set(r, 0.0, REWARD_REASON_ERROR, false, "out of memory while normalising");
            return;
        }
        if (verdict == MATHNORM_EQUAL)
            reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "boxed %.*s", clip(blen, 120), box);
        else
            reward_set(r, 0.0, REWARD_REASON_WRONG, false, "boxed %.*s, expected %.*s",
                       clip(blen, 70), box, clip(strlen(answer), 70), answer);
    }
    if (v->think_format && !think_ok(prompt, completion)) {
        char detail[REWARD_DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", r->detail);
        reward_set(r, r->reward - v->format_penalty, REWARD_REASON_FORMAT, r->correct,
                   "bad <think></think> structure (answer %s: %s)", reward_reason_name(r->reason),
                   detail);
    }
}

/* ---- format ---- */

static void score_format(const reward_verifier *v, const char *prompt, const char *completion,
                         reward_result *r) {
    const char *box;
    size_t blen = 0;
    bool boxed = mathnorm_last_boxed(completion, &box, &blen);
    while (boxed && blen > 0 && isspace((unsigned char)*box))
        box++, blen--;
    boxed = boxed && blen > 0;
    if (v->need_boxed && !boxed)
        reward_set(r, 0.0, REWARD_REASON_FORMAT, false, "no non-empty \\boxed{} in the response");
    else if (v->need_think && !think_ok(prompt, completion))
        reward_set(r, 0.0, REWARD_REASON_FORMAT, false, "bad <think></think> structure");
    else
        reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "format ok (%s%s%s)",
                   v->need_boxed ? "\\boxed{}" : "", v->need_boxed && v->need_think ? ", " : "",
                   v->need_think ? "<think></think>" : "");
}

/* ---- exact, contains ---- */

static void score_exact(const reward_verifier *v, const char *completion, const char *answer,
                        reward_result *r) {
    const char *c = skip_space(completion), *a = skip_space(answer);
    size_t cn = trimmed_len(c), an = trimmed_len(a);
    if (cn == 0) {
        reward_set(r, 0.0, REWARD_REASON_NO_ANSWER, false, "empty response");
    } else if (bytes_equal(c, cn, a, an, v->ignore_case)) {
        reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "exact match");
    } else {
        reward_set(r, 0.0, REWARD_REASON_WRONG, false, "got %.*s, expected %.*s", clip(cn, 60), c,
                   clip(an, 60), a);
    }
}

static void score_contains(const reward_verifier *v, const char *completion, const char *answer,
                           reward_result *r) {
    const char *a = skip_space(answer);
    size_t an = trimmed_len(a);
    if (an == 0) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "the reference answer is empty");
        return;
    }
    if (*skip_space(completion) == '\0') {
        reward_set(r, 0.0, REWARD_REASON_NO_ANSWER, false, "empty response");
        return;
    }
    char *needle = strndup(a, an);
    if (!needle) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "out of memory");
        return;
    }
    bool hit = v->ignore_case ? strcasestr(completion, needle) != NULL
                              : strstr(completion, needle) != NULL;
    if (hit)
        reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "response contains %.*s", clip(an, 100), a);
    else
        reward_set(r, 0.0, REWARD_REASON_WRONG, false, "response lacks %.*s", clip(an, 100), a);
    free(needle);
}

/* ---- regex ---- */

static void score_regex(const reward_verifier *v, const char *completion, const char *answer,
                        reward_result *r) {
    pcre2_code *re = v->code, *owned = NULL;
    if (v->pattern_has_answer) {
        char *pat = substitute_answer(v->pattern, answer);
        char msg[300];
        owned = pat ? regex_compile(v, pat, msg, sizeof msg) : NULL;
        if (!owned) {
            reward_set(r, 0.0, REWARD_REASON_ERROR, false, "pattern with the answer: %s",
                       pat ? msg : "out of memory");
            free(pat);
            return;
        }
        free(pat);
        re = owned;
    }
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
    if (!md) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "out of memory");
        pcre2_code_free(owned);
        return;
    }
    int rc = pcre2_match(re, (PCRE2_SPTR)completion, strlen(completion), 0, 0, md, v->match_ctx);
    bool extract = !v->pattern_has_answer && v->capture_count > 0;
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
        rc == PCRE2_ERROR_HEAPLIMIT) {
        reward_set(r, 0.0, REWARD_REASON_TIMEOUT, false,
                   "regex exceeded its match budget (match_limit %u, depth_limit %u)",
                   v->match_limit, v->depth_limit);
    } else if (rc == PCRE2_ERROR_NOMATCH) {
        if (extract)
            reward_set(r, 0.0, REWARD_REASON_NO_ANSWER, false, "pattern did not match");
        else
            reward_set(r, 0.0, REWARD_REASON_WRONG, false, "pattern did not match");
    } else if (rc < 0) {
        PCRE2_UCHAR buf[200];
        pcre2_get_error_message(rc, buf, sizeof buf);
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "regex match failed: %s", (char *)buf);
    } else if (!extract) {
        reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "pattern matched");
    } else {
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (rc < 2 || ov[2] == PCRE2_UNSET) {
            reward_set(r, 0.0, REWARD_REASON_NO_ANSWER, false, "capture group 1 is empty");
        } else {
            const char *g = completion + ov[2];
            size_t gn = ov[3] - ov[2];
            while (gn > 0 && isspace((unsigned char)*g))
                g++, gn--;
            while (gn > 0 && isspace((unsigned char)g[gn - 1]))
                gn--;
            const char *a = skip_space(answer);
            size_t an = trimmed_len(a);
            if (bytes_equal(g, gn, a, an, v->ignore_case))
                reward_set(r, 1.0, REWARD_REASON_CORRECT, true, "captured %.*s", clip(gn, 100), g);
            else
                reward_set(r, 0.0, REWARD_REASON_WRONG, false, "captured %.*s, expected %.*s",
                           clip(gn, 60), g, clip(an, 60), a);
        }
    }
    pcre2_match_data_free(md);
    pcre2_code_free(owned);
}

/* ---- dispatch ---- */

static bool needs_answer(const reward_verifier *v) {
    switch (v->type) {
    case REWARD_REGEX:
        return v->pattern_has_answer || v->capture_count > 0;
    case REWARD_WEBHOOK:
    case REWARD_FORMAT:
    case REWARD_SUM: /* each term checks its own */
        return false;
    default:
        return true;
    }
}

/* A truncated response with no answer gets the configured length penalty. */
static void apply_length_penalty(const reward_verifier *v, const reward_sample *s,
                                 reward_result *r) {
    if (r->reason != REWARD_REASON_NO_ANSWER || !s->truncated || !v->has_length_penalty) return;
    char detail[REWARD_DETAIL_MAX];
    snprintf(detail, sizeof detail, "%s", r->detail);
    reward_set(r, v->length_penalty, REWARD_REASON_NO_ANSWER, false,
               "truncated without an answer: length penalty (%s)", detail);
}

/* Scores one sample with a local (non-webhook) verifier. */
static void score_local(const reward_verifier *v, const reward_sample *s, reward_result *r) {
    if (!s->completion) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "sample has no completion");
        return;
    }
    if (needs_answer(v) && (!s->answer || *skip_space(s->answer) == '\0')) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "sample has no reference answer");
        return;
    }
    switch (v->type) {
    case REWARD_MATH_BOXED:
        score_math(v, s->prompt, s->completion, s->answer, s->truncated, r);
        break;
    case REWARD_EXACT:
        score_exact(v, s->completion, s->answer, r);
        break;
    case REWARD_CONTAINS:
        score_contains(v, s->completion, s->answer, r);
        break;
    case REWARD_REGEX:
        score_regex(v, s->completion, s->answer ? s->answer : "", r);
        break;
    case REWARD_FORMAT:
        score_format(v, s->prompt, s->completion, r);
        return; /* no length penalty: the structure is all it scores */
    default:
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "not a local verifier");
        return;
    }
    if (v->type != REWARD_MATH_BOXED) apply_length_penalty(v, s, r); /* math_boxed: its own */
}

int reward_score(const reward_verifier *verifier, const char *prompt, const char *completion,
                 const char *answer, bool truncated, reward_result *result) {
    if (!result) return -1;
    if (!verifier) {
        reward_set(result, 0.0, REWARD_REASON_ERROR, false, "no verifier");
        return -1;
    }
    reward_sample s = {prompt, completion, answer, truncated};
    if (verifier->type == REWARD_SUM) {
        reward_score_batch(verifier, &s, 1, result, NULL); /* a failure leaves `error` there */
        return 0;
    }
    if (verifier->type == REWARD_WEBHOOK) {
        /* on failure the result is already `error` with the cause */
        if (reward_webhook_batch(verifier, &s, 1, result, NULL) == 0)
            apply_length_penalty(verifier, &s, result);
        return 0;
    }
    score_local(verifier, &s, result);
    return 0;
}

static bool failed(const reward_result *r) {
    return r->reason == REWARD_REASON_ERROR || r->reason == REWARD_REASON_TIMEOUT;
}

/* The sum: every term scores the whole batch (webhook terms concurrently within their term);
 * sample i gets sum_t weight_t * reward_t, with the first term's reason and `correct`, or the
 * first term's error / timeout when any term could not decide. */
static int score_sum(const reward_verifier *v, const reward_sample *samples, size_t n,
                     reward_result *results, chord_err *err) {
    if (n == 0) return 0;
    reward_result *tmp = malloc(n * sizeof *tmp);
    if (!tmp) {
        for (size_t i = 0; i < n; i++)
            reward_set(&results[i], 0.0, REWARD_REASON_ERROR, false, "out of memory");
        return chord_err_setc(err, CHORD_E_INTERNAL, "reward sum: out of memory");
    }
    int rc = 0;
    for (size_t t = 0; t < v->n_terms && rc == 0; t++) {
        rc = reward_score_batch(v->terms[t], samples, n, t == 0 ? results : tmp, err);
        const char *type = reward_type_name(v->terms[t]->type);
        for (size_t i = 0; i < n; i++) {
            reward_result *r = &results[i], *term = t == 0 ? r : &tmp[i];
            if (t > 0 && failed(r)) continue; /* an earlier term already failed */
            if (failed(term)) {
                char detail[REWARD_DETAIL_MAX];
                snprintf(detail, sizeof detail, "%s", term->detail);
                reward_set(r, 0.0, term->reason, false, "terms[%zu] (%s): %s", t, type, detail);
            } else if (t == 0) {
                r->reward *= v->weights[0];
            } else {
                r->reward += v->weights[t] * term->reward;
            }
        }
    }
    free(tmp);
    for (size_t i = 0; i < n && rc == 0; i++) {
        if (failed(&results[i])) continue;
        char detail[REWARD_DETAIL_MAX];
        snprintf(detail, sizeof detail, "%s", results[i].detail);
        reward_set(&results[i], results[i].reward, results[i].reason, results[i].correct,
                   "sum %.6g; terms[0]: %s", results[i].reward, detail);
    }
    return rc;
}

int reward_score_batch(const reward_verifier *verifier, const reward_sample *samples, size_t n,
                       reward_result *results, chord_err *err) {
    if (!verifier || (n > 0 && (!samples || !results)))
        return chord_err_setc(err, CHORD_E_INTERNAL, "reward_score_batch: NULL argument");
    if (verifier->type == REWARD_SUM) return score_sum(verifier, samples, n, results, err);
    if (verifier->type == REWARD_WEBHOOK) {
        /* on failure every unfinished result is already `error` with the cause */
        if (reward_webhook_batch(verifier, samples, n, results, err) != 0) return -1;
        for (size_t i = 0; i < n; i++)
            apply_length_penalty(verifier, &samples[i], &results[i]);
        return 0;
    }
    for (size_t i = 0; i < n; i++)
        score_local(verifier, &samples[i], &results[i]);
    return 0;
}
