/* ratelimit.h — the per-client request rate limit both transports share: a token bucket per
 * client (its bearer token when tokens are on and it sends one, else its IP address), refilled at
 * `rate` requests per second up to `burst`. A request that finds its bucket empty is refused —
 * 429 with Retry-After (REST), RESOURCE_EXHAUSTED (gRPC) — with api_rate_message's text.
 *
 * Clients are kept in a fixed table (API_RATE_SLOTS): a new client takes the slot, among the
 * few its key may use, that was used longest ago, so memory stays bounded whatever the number of
 * clients (a client pushed out starts again with a full bucket). Keys are 64-bit hashes: no token
 * is kept. Thread-safe (one mutex; a check is a few arithmetic operations).
 *
 * Not here: who may call (auth.h), the transports' answers. */
#ifndef CHORD_API_RATELIMIT_H
#define CHORD_API_RATELIMIT_H

#include <stddef.h>

typedef struct api_rate api_rate;

#define API_RATE_SLOTS 4096

/* rate <= 0: no limit (api_rate_new returns NULL, and api_rate_take on NULL always allows).
 * burst < 1: max(1, rate). */
api_rate *api_rate_new(double rate, double burst);
void api_rate_free(api_rate *r);

/* The client's key: the token when tokens are on and the request carries an `Authorization`
 * value (per token), else the address (per IP; for gRPC the peer without its port). */
unsigned long long api_rate_key(const char *authorization, size_t auth_len, const char *address);

/* Takes one request from the client's bucket: 1 allowed, 0 refused (*retry_after_s: when the
 * next one would be allowed). */
int api_rate_take(api_rate *r, unsigned long long key, double *retry_after_s);

/* "rate limit: over N requests/s from this client (--rate-limit N, --rate-burst B); retry in
 * T s" into buf. */
void api_rate_message(const api_rate *r, double retry_after_s, char *buf, size_t cap);

#endif
