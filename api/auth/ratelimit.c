/* ratelimit.c — per-client token buckets in a bounded table (ratelimit.h). */
#include "api/auth/ratelimit.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PROBE 8 /* slots a key may use: API_RATE_SLOTS / PROBE sets of them */

typedef struct bucket {
    unsigned long long key; /* 0: free */
    double tokens;
    double last; /* seconds (monotonic) of the last refill */
} bucket;

struct api_rate {
    double rate, burst;
    pthread_mutex_t mu;
    bucket slots[API_RATE_SLOTS];
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

api_rate *api_rate_new(double rate, double burst) {
    if (!(rate > 0)) return NULL;
    api_rate *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->rate = rate;
    r->burst = burst >= 1 ? burst : (rate >= 1 ? rate : 1);
    pthread_mutex_init(&r->mu, NULL);
    return r;
}

void api_rate_free(api_rate *r) {
    if (!r) return;
    pthread_mutex_destroy(&r->mu);
    free(r);
}

/* FNV-1a, 64-bit, over a kind byte and the text. */
static unsigned long long hash(char kind, const char *s, size_t n) {
    unsigned long long h = 1469598103934665603ULL;
    h = (h ^ (unsigned char)kind) * 1099511628211ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h ? h : 1;
}

unsigned long long api_rate_key(const char *authorization, size_t auth_len, const char *address) {
    if (authorization && auth_len) return hash('t', authorization, auth_len);
    const char *a = address ? address : "";
    return hash('a', a, strlen(a));
}

int api_rate_take(api_rate *r, unsigned long long key, double *retry_after_s) {
    *retry_after_s = 0;
    if (!r) return 1;
    double now = now_s();
    size_t base = (size_t)(key % (API_RATE_SLOTS / PROBE)) * PROBE;
    pthread_mutex_lock(&r->mu);
    bucket *b = NULL, *oldest = &r->slots[base];
    for (size_t i = 0; i < PROBE; i++) {
        bucket *c = &r->slots[base + i];
        if (c->key == key) {
            b = c;
            break;
        }
        if (c->key == 0 || (oldest->key != 0 && c->last < oldest->last)) oldest = c;
    }
    if (!b) { /* a new client (or one pushed out): a full bucket */
        b = oldest;
        b->key = key;
        b->tokens = r->burst;
        b->last = now;
    }
    b->tokens += (now - b->last) * r->rate;
    if (b->tokens > r->burst) b->tokens = r->burst;
    b->last = now;
    int ok = b->tokens >= 1;
    if (ok)
        b->tokens -= 1;
    else
        *retry_after_s = (1 - b->tokens) / r->rate;
    pthread_mutex_unlock(&r->mu);
    return ok;
}

void api_rate_message(const api_rate *r, double retry_after_s, char *buf, size_t cap) {
    snprintf(buf, cap,
             "rate limit: over %g requests/s from this client (--rate-limit %g, --rate-burst %g); "
             "retry in %.2f s",
             r ? r->rate : 0, r ? r->rate : 0, r ? r->burst : 0, retry_after_s);
}
