/* service_webhooks.c — signed webhooks (docs/pipelines.md): job.succeeded | job.failed |
 * job.cancelled and checkpoint.created, POSTed to --webhook-url by one thread of their own, in
 * the Standard Webhooks style (webhook-id, webhook-timestamp, webhook-signature "v1,<base64 of
 * HMAC-SHA256 over id.timestamp.body>"), retried with exponential backoff, each attempt logged in
 * SQLite (storage/store.h, "webhook deliveries").
 *
 * Training never waits for a receiver: workers only publish (a flag and a signal); the thread
 * makes the events from the jobs and checkpoints tables (so a crash neither loses nor doubles
 * one: what has no delivery row gets one at the next pass), and each attempt is bounded by
 * SVC_WEBHOOK_TIMEOUT_MS.
 *
 *   svc_open (a URL given) -- webhooks_start --> RUNNING: every SVC_WEBHOOK_POLL_MS or publish:
 *                                                collect, send what is due, record
 *   svc_close -- webhooks_stop --> one last collect (nothing sent: pending rows go at the next
 *                                  start), joined
 *
 * Not here: SQL (store_webhooks.c), the delivery log's transport (api/). */
#include "server/service_internal.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/base/log.h"

/* The signing key: a Standard Webhooks secret "whsec_<base64>" is decoded, anything else is used
 * as its bytes. */
static int webhook_key(const char *secret, unsigned char **key, size_t *len, chord_err *err) {
    *key = NULL;
    *len = 0;
    size_t n = strlen(secret);
    if (n == 0) return chord_err_set(err, "--webhook-secret-file: empty secret");
    if (strncmp(secret, "whsec_", 6) != 0) {
        *key = (unsigned char *)strdup(secret);
        *len = n;
        return *key ? 0 : chord_err_oom(err);
    }
    const char *b64 = secret + 6;
    size_t blen = strlen(b64);
    if (blen == 0 || blen % 4 != 0)
        return chord_err_set(err, "--webhook-secret-file: whsec_ secret is not base64");
    *key = malloc(blen / 4 * 3 + 1);
    if (!*key) return chord_err_oom(err);
    int got = EVP_DecodeBlock(*key, (const unsigned char *)b64, (int)blen);
    if (got < 0) {
        free(*key);
        *key = NULL;
        return chord_err_set(err, "--webhook-secret-file: whsec_ secret is not base64");
    }
    size_t pad = (b64[blen - 1] == '=') + (b64[blen - 2] == '=');
    *len = (size_t)got - pad;
    return 0;
}

/* "v1,<base64(HMAC-SHA256(key, id.timestamp.body))>" into out (>= 64 bytes). */
static int webhook_sign(const svc *s, const char *id, long long ts, const char *body, char *out,
                        size_t outlen) {
    char *content = NULL;
    int n = asprintf(&content, "%s.%lld.%s", id, ts, body);
    if (n < 0) return -1;
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    unsigned char *ok = HMAC(EVP_sha256(), s->wh_key, (int)s->wh_key_len,
                             (const unsigned char *)content, (size_t)n, mac, &maclen);
    free(content);
    if (!ok || outlen < 4 + 4 * ((maclen + 2) / 3) + 1) return -1;
    memcpy(out, "v1,", 3);
    EVP_EncodeBlock((unsigned char *)out + 3, mac, (int)maclen);
    return 0;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *user) {
    (void)ptr;
    (void)user;
    return size * nmemb;
}

/* One attempt: 1 when the receiver answered 2xx; *status its HTTP status (0: none), errbuf why
 * not. */
static int webhook_send(svc *s, const store_webhook *w, long *status, char *errbuf) {
    *status = 0;
    errbuf[0] = '\0';
    long long ts = (long long)time(NULL);
    char sig[128], h_id[96], h_ts[64], h_sig[160];
    if (webhook_sign(s, w->id, ts, w->payload, sig, sizeof sig)) {
        snprintf(errbuf, CURL_ERROR_SIZE, "cannot sign");
        return 0;
    }
    snprintf(h_id, sizeof h_id, "webhook-id: %s", w->id);
    snprintf(h_ts, sizeof h_ts, "webhook-timestamp: %lld", ts);
    snprintf(h_sig, sizeof h_sig, "webhook-signature: %s", sig);
    struct curl_slist *headers = NULL, *h;
    const char *lines[] = {"Content-Type: application/json", h_id, h_ts, h_sig};
    for (size_t i = 0; i < sizeof lines / sizeof *lines; i++) {
        h = curl_slist_append(headers, lines[i]);
        if (!h) {
            curl_slist_free_all(headers);
            snprintf(errbuf, CURL_ERROR_SIZE, "out of memory");
            return 0;
        }
        headers = h;
    }
    CURL *e = curl_easy_init();
    int ok =
        e && curl_easy_setopt(e, CURLOPT_URL, s->wh_url) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, w->payload) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(w->payload)) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)SVC_WEBHOOK_TIMEOUT_MS) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)SVC_WEBHOOK_TIMEOUT_MS) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https") == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1") == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_USERAGENT, "chordd/" SVC_VERSION) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard) == CURLE_OK &&
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf) == CURLE_OK;
    int delivered = 0;
    if (!ok) {
        snprintf(errbuf, CURL_ERROR_SIZE, "cannot set up the request");
    } else {
        CURLcode rc = curl_easy_perform(e);
        if (rc == CURLE_OK) {
            if (curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status) != CURLE_OK) *status = 0;
            delivered = *status >= 200 && *status < 300;
            if (!delivered) snprintf(errbuf, CURL_ERROR_SIZE, "HTTP %ld", *status);
        } else if (!errbuf[0]) {
            snprintf(errbuf, CURL_ERROR_SIZE, "%s", curl_easy_strerror(rc));
        }
    }
    curl_easy_cleanup(e);
    curl_slist_free_all(headers);
    return delivered;
}

/* The delay after attempt n (1-based) failed: 0.5 s, 1 s, 2 s, ... at most 5 min. */
static int64_t backoff_ms(int64_t attempts) {
    int64_t d = SVC_WEBHOOK_FIRST_RETRY_MS;
    for (int64_t i = 1; i < attempts && d < 300000; i++)
        d *= 2;
    return d < 300000 ? d : 300000;
}

static void webhook_pass(svc *s, int send) {
    chord_err err = {0};
    store *st = svc_store_get(s, &err);
    if (!st) {
        LOG_WARN("webhooks: %s", err.msg);
        return;
    }
    int64_t added = 0;
    if (store_webhook_collect(st, s->wh_since_ms, store_now_ms(), &added, &err))
        LOG_WARN("webhooks: %s", err.msg);
    store_webhook *due = NULL;
    size_t n = 0;
    if (send && store_webhook_due(st, store_now_ms(), 32, &due, &n, &err))
        LOG_WARN("webhooks: %s", err.msg);
    for (size_t i = 0; i < n && !chord_poller_stopping(&s->wh_poller); i++) {
        long status = 0;
        char why[CURL_ERROR_SIZE];
        int delivered = webhook_send(s, &due[i], &status, why);
        int64_t attempts = due[i].attempts + 1;
        int64_t next = delivered || attempts >= SVC_WEBHOOK_MAX_ATTEMPTS
                           ? -1
                           : store_now_ms() + backoff_ms(attempts);
        if (delivered)
            LOG_INFO("webhook %s %s (%s): delivered, HTTP %ld", due[i].id, due[i].event,
                     due[i].subject, status);
        else
            LOG_WARN("webhook %s %s (%s): attempt %lld failed: %s%s", due[i].id, due[i].event,
                     due[i].subject, (long long)attempts, why,
                     next < 0 ? "; giving up" : "; will retry");
        if (store_webhook_attempted(st, due[i].id, delivered, status, delivered ? NULL : why, next,
                                    &err))
            LOG_WARN("webhooks: %s", err.msg);
    }
    store_webhook_list_free(due, n);
    svc_store_put(s, st);
}

/* The poller's pass: send what is due; after a stop, only record (send = 0). */
static void webhook_poll(void *user, int stopping) {
    webhook_pass(user, !stopping);
}

int svc_webhooks_start(svc *s, const char *url, const char *secret, chord_err *err) {
    if (!url) return 0;
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0)
        return chord_err_set(err, "--webhook-url: must start with http:// or https://");
    if (!secret) return chord_err_set(err, "--webhook-url needs --webhook-secret-file");
    CURLcode cc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (cc != CURLE_OK)
        return chord_err_setc(err, CHORD_E_INTERNAL, "webhooks: curl_global_init: %s",
                              curl_easy_strerror(cc));
    s->wh_url = strdup(url);
    if (!s->wh_url) return chord_err_oom(err);
    if (webhook_key(secret, &s->wh_key, &s->wh_key_len, err)) return -1;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    int rc = store_webhook_enable(st, store_now_ms(), &s->wh_since_ms, err);
    svc_store_put(s, st);
    if (rc) return -1;
    if (chord_poller_start(&s->wh_poller, SVC_WEBHOOK_POLL_MS, webhook_poll, s, "webhooks", err))
        return -1;
    LOG_INFO("webhooks: events to %s (signed; events since %lld)", url, (long long)s->wh_since_ms);
    return 0;
}

void svc_webhooks_wake(svc *s) {
    chord_poller_wake(&s->wh_poller);
}

void svc_webhooks_stop(svc *s) {
    chord_poller_stop(&s->wh_poller);
    if (s->wh_url) curl_global_cleanup();
    free(s->wh_url);
    s->wh_url = NULL;
    if (s->wh_key) OPENSSL_cleanse(s->wh_key, s->wh_key_len);
    free(s->wh_key);
    s->wh_key = NULL;
}

static json_t *delivery_json(const store_webhook *w) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    json_t *payload = json_loads(w->payload, 0, NULL);
    svc_json_put(o, "id", json_string(w->id), &bad);
    svc_json_put(o, "event", json_string(w->event), &bad);
    svc_json_put(o, "subject", json_string(w->subject), &bad);
    svc_json_put(o, "state", json_string(store_webhook_state_name(w->state)), &bad);
    svc_json_put(o, "attempts", json_integer(w->attempts), &bad);
    svc_json_put(o, "last_status", w->last_status ? json_integer(w->last_status) : json_null(),
                 &bad);
    svc_json_put(o, "last_error", svc_json_str(w->last_error), &bad);
    svc_json_put(o, "created_at", svc_json_time(w->created_ms), &bad);
    svc_json_put(o, "next_attempt_at",
                 svc_json_time(w->state == STORE_WEBHOOK_PENDING ? w->next_attempt_ms : 0), &bad);
    svc_json_put(o, "finished_at", svc_json_time(w->finished_ms), &bad);
    svc_json_put(o, "payload", payload ? payload : json_object(), &bad);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int svc_webhook_deliveries(svc *s, size_t offset, size_t limit, const char *after, json_t **list,
                           chord_err *err) {
    *list = NULL;
    if (limit == 0 || limit > SVC_LIST_LIMIT_MAX) limit = SVC_LIST_LIMIT_MAX;
    store *st = svc_store_get(s, err);
    if (!st) return -1;
    store_webhook *items = NULL;
    size_t n = 0;
    int64_t total = 0;
    int rc = store_webhook_list(st, offset, limit + 1, svc_cursor(after), &items, &n, &total, err);
    svc_store_put(s, st);
    if (rc) return -1;
    json_t *arr = json_array();
    int bad = !arr;
    for (size_t i = 0; i < n && !bad; i++)
        if (json_array_append_new(arr, delivery_json(&items[i]))) bad = 1;
    store_webhook_list_free(items, n);
    if (bad) {
        json_decref(arr);
        return chord_err_oom(err);
    }
    *list = svc_json_list(arr, total, offset, limit);
    return *list ? 0 : chord_err_oom(err);
}
