/* reward_webhook.c — the webhook verifier: POST {"prompt", "completion", "answer", "truncated"}
 * as JSON to the user's URL and read back a reward, for every sample of a batch concurrently
 * (curl multi, at most max_concurrency transfers in flight).
 *
 * Each attempt is bounded by timeout_ms (connect included); timeouts, connection failures and
 * HTTP 408/429/5xx are retried up to `retries` times with a short back-off, so a batch ends within
 * (retries + 1) * timeout_ms plus at most 1 s of back-off per retry. A 2xx body must be a JSON
 * number or {"reward": number, "reason"?: name, "detail"?: string, "correct"?: bool}; anything
 * else is `error`. Redirects are not followed and only http/https are allowed. This file does not
 * check who the URL points at (the job's owner chose it). */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/train/reward_internal.h"

#define WEBHOOK_MAX_RESPONSE (64 * 1024)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_code = CURLE_OK;

static void curl_init_once(void) {
    curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int reward_webhook_init(chord_err *err) {
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_code != CURLE_OK)
        return chord_err_setc(err, CHORD_E_INTERNAL, "reward: curl_global_init failed: %s",
                              curl_easy_strerror(curl_init_code));
    return 0;
}

typedef enum req_state { REQ_WAITING = 0, REQ_RUNNING = 1, REQ_DONE = 2 } req_state;

typedef struct hook_req {
    CURL *easy;
    char *body;
    chord_buf resp; /* the response body so far */
    bool resp_overflow;
    int attempt; /* attempts started so far */
    double next_start;
    req_state state;
    char errbuf[CURL_ERROR_SIZE];
    reward_result *result;
} hook_req;

static size_t on_write(char *data, size_t size, size_t nmemb, void *user) {
    hook_req *q = user;
    size_t n = size * nmemb;
    if (q->resp.len + n > WEBHOOK_MAX_RESPONSE) {
        q->resp_overflow = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    return chord_buf_append(&q->resp, data, n) == 0 ? n : 0;
}

/* JSON string (or null) for a possibly invalid UTF-8 C string. */
static json_t *json_text(const char *s) {
    if (!s) return json_null();
    char *clean = reward_utf8_sanitize(s, strlen(s));
    if (!clean) return NULL;
    json_t *j = json_string(clean);
    free(clean);
    return j;
}

static char *request_body(const reward_sample *s) {
    json_t *o = json_object();
    if (!o) return NULL;
    json_t *p = json_text(s->prompt), *c = json_text(s->completion), *a = json_text(s->answer);
    char *body = NULL;
    if (p && c && a && json_object_set_new(o, "prompt", p) == 0 &&
        json_object_set_new(o, "completion", c) == 0 && json_object_set_new(o, "answer", a) == 0 &&
        json_object_set_new(o, "truncated", json_boolean(s->truncated)) == 0) {
        body = json_dumps(o, JSON_COMPACT);
    } else {
        /* set_new steals references even on failure; only the ones never handed over leak */
        if (!json_object_get(o, "prompt")) json_decref(p);
        if (!json_object_get(o, "completion")) json_decref(c);
        if (!json_object_get(o, "answer")) json_decref(a);
    }
    json_decref(o);
    return body;
}

static int setup_easy(const reward_verifier *v, hook_req *q) {
    CURL *e = curl_easy_init();
    if (!e) return -1;
    q->easy = e;
    bool ok = curl_easy_setopt(e, CURLOPT_URL, v->url) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_POSTFIELDS, q->body) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(q->body)) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_HTTPHEADER, v->headers) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, v->timeout_ms) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, v->timeout_ms) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
              /* a proxy from the environment must not capture loopback verifiers */
              curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1") == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_USERAGENT, "chord-reward/0.1") == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_WRITEDATA, q) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_ERRORBUFFER, q->errbuf) == CURLE_OK &&
              curl_easy_setopt(e, CURLOPT_PRIVATE, q) == CURLE_OK;
    return ok ? 0 : -1;
}

/* Reads the webhook's 2xx body into the result. */
static void parse_response(hook_req *q) {
    reward_result *r = q->result;
    json_error_t jerr;
    json_t *j = q->resp.data ? json_loadb(q->resp.data, q->resp.len, JSON_DECODE_ANY, &jerr) : NULL;
    if (!j) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "webhook returned invalid JSON: %s",
                   q->resp.data ? jerr.text : "empty body");
        return;
    }
    json_t *reward = json_is_object(j) ? json_object_get(j, "reward") : j;
    if (!reward || !json_is_number(reward) || !isfinite(json_number_value(reward))) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false,
                   "webhook response has no numeric \"reward\"");
        json_decref(j);
        return;
    }
    double x = json_number_value(reward);
    reward_reason reason = x > 0 ? REWARD_REASON_CORRECT : REWARD_REASON_WRONG;
    bool correct = x > 0;
    const char *detail = "webhook";
    if (json_is_object(j)) {
        json_t *jr = json_object_get(j, "reason"), *jd = json_object_get(j, "detail"),
               *jc = json_object_get(j, "correct");
        if (jr && (!json_is_string(jr) || reward_reason_parse(json_string_value(jr), &reason))) {
            reward_set(r, 0.0, REWARD_REASON_ERROR, false,
                       "webhook response has an unknown \"reason\"");
            json_decref(j);
            return;
        }
        if (jr) correct = reason == REWARD_REASON_CORRECT;
        if (jc && json_is_boolean(jc)) correct = json_is_true(jc);
        if (jd && json_is_string(jd)) detail = json_string_value(jd);
    }
    if (reason == REWARD_REASON_ERROR || reason == REWARD_REASON_TIMEOUT) x = 0.0, correct = false;
    reward_set(r, x, reason, correct, "%s", detail);
    json_decref(j);
}

/* Classifies a finished attempt. Returns true when it should be retried. */
static bool finish_attempt(const reward_verifier *v, hook_req *q, CURLcode code) {
    reward_result *r = q->result;
    long status = 0;
    curl_easy_getinfo(q->easy, CURLINFO_RESPONSE_CODE, &status);
    bool retry;
    if (code == CURLE_OPERATION_TIMEDOUT) {
        reward_set(r, 0.0, REWARD_REASON_TIMEOUT, false, "webhook timed out after %ld ms (%d %s)",
                   v->timeout_ms, q->attempt, q->attempt == 1 ? "attempt" : "attempts");
        retry = true;
    } else if (code == CURLE_WRITE_ERROR && q->resp_overflow) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "webhook response over %d bytes",
                   WEBHOOK_MAX_RESPONSE);
        retry = false;
    } else if (code != CURLE_OK) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "webhook failed: %s (%d %s)",
                   q->errbuf[0] ? q->errbuf : curl_easy_strerror(code), q->attempt,
                   q->attempt == 1 ? "attempt" : "attempts");
        retry = true;
    } else if (status < 200 || status > 299) {
        reward_set(r, 0.0, REWARD_REASON_ERROR, false, "webhook answered HTTP %ld (%d %s)", status,
                   q->attempt, q->attempt == 1 ? "attempt" : "attempts");
        retry = status == 408 || status == 429 || status >= 500;
    } else {
        parse_response(q);
        retry = false;
    }
    return retry && q->attempt <= v->retries;
}

/* Back-off before attempt k+1 (k >= 1 attempts made): 100 ms, 200 ms, 400 ms ... capped at 1 s. */
static double backoff_s(int k) {
    double d = 0.1;
    for (int i = 1; i < k && d < 1.0; i++)
        d *= 2;
    return d < 1.0 ? d : 1.0;
}

int reward_webhook_batch(const reward_verifier *v, const reward_sample *samples, size_t n,
                         reward_result *results, chord_err *err) {
    chord_err local = {0};
    if (!err) err = &local;
    if (n == 0) return 0;
    hook_req *reqs = calloc(n, sizeof *reqs);
    CURLM *multi = curl_multi_init();
    int rc = -1;
    if (!reqs || !multi) {
        chord_err_setc(err, CHORD_E_INTERNAL, "reward webhook: out of memory");
        goto out;
    }
    size_t done = 0;
    for (size_t i = 0; i < n; i++) {
        hook_req *q = &reqs[i];
        q->result = &results[i];
        if (!samples[i].completion) {
            reward_set(q->result, 0.0, REWARD_REASON_ERROR, false, "sample has no completion");
            q->state = REQ_DONE;
            done++;
            continue;
        }
        q->body = request_body(&samples[i]);
        if (!q->body || setup_easy(v, q) != 0) {
            chord_err_setc(err, CHORD_E_INTERNAL, "reward webhook: cannot prepare request %zu", i);
            goto out;
        }
    }
    int running = 0;
    while (done < n) {
        double now = chord_now(), next_wake = now + 0.1;
        for (size_t i = 0; i < n && running < v->max_concurrency; i++) {
            hook_req *q = &reqs[i];
            if (q->state != REQ_WAITING) continue;
            if (q->next_start > now) {
                if (q->next_start < next_wake) next_wake = q->next_start;
                continue;
            }
            chord_buf_free(&q->resp);
            q->resp_overflow = false;
            q->errbuf[0] = '\0';
            if (curl_multi_add_handle(multi, q->easy) != CURLM_OK) {
                chord_err_setc(err, CHORD_E_INTERNAL, "reward webhook: curl_multi_add_handle");
                goto out;
            }
            q->attempt++;
            q->state = REQ_RUNNING;
            running++;
        }
        int still;
        if (curl_multi_perform(multi, &still) != CURLM_OK) {
            chord_err_setc(err, CHORD_E_INTERNAL, "reward webhook: curl_multi_perform failed");
            goto out;
        }
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
            if (msg->msg != CURLMSG_DONE) continue;
            hook_req *q = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&q);
            CURLcode code = msg->data.result;
            curl_multi_remove_handle(multi, msg->easy_handle);
            running--;
            if (finish_attempt(v, q, code)) {
                q->state = REQ_WAITING;
                q->next_start = chord_now() + backoff_s(q->attempt);
            } else {
                q->state = REQ_DONE;
                done++;
            }
        }
        if (done == n) break;
        int wait_ms = (int)((next_wake - chord_now()) * 1000.0);
        if (wait_ms < 1) wait_ms = 1;
        if (wait_ms > 100) wait_ms = 100;
        if (curl_multi_poll(multi, NULL, 0, wait_ms, NULL) != CURLM_OK) {
            chord_err_setc(err, CHORD_E_INTERNAL, "reward webhook: curl_multi_poll failed");
            goto out;
        }
    }
    rc = 0;
out:
    for (size_t i = 0; reqs && i < n; i++) {
        hook_req *q = &reqs[i];
        if (q->easy) {
            if (q->state == REQ_RUNNING) curl_multi_remove_handle(multi, q->easy);
            curl_easy_cleanup(q->easy);
        }
        if (rc != 0 && q->state != REQ_DONE)
            reward_set(q->result, 0.0, REWARD_REASON_ERROR, false, "%s", err->msg);
        free(q->body);
        chord_buf_free(&q->resp);
    }
    if (multi) curl_multi_cleanup(multi);
    free(reqs);
    return rc;
}
