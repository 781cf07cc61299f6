/* auth.h — who may call the API: the bearer tokens of `--auth-token-file`, each with a scope,
 * and the one check both transports make on every request except health.
 *
 * The token file (docs/operations.md, "Authentication and TLS"): one token a line,
 *
 *     # comments and blank lines are ignored
 *     admin 9f2c1e...      every method
 *     read  4b7d0a...      GET / list / watch only
 *
 * A token is 16 to 1024 printable ASCII characters without spaces; a malformed line, an unknown
 * scope, a short token or a token given twice refuses the whole file, naming the line (never
 * the token). Tokens are kept only as their SHA-256: a request's token is hashed and compared
 * with every stored hash without an early exit, so the time a check takes tells nothing about
 * which token, or how much of one, matched.
 *
 * Not here: TLS (tls.h), which method needs which scope (the transports' tables). */
#ifndef CHORD_API_AUTH_H
#define CHORD_API_AUTH_H

#include <stddef.h>

#include "server/base/err.h"

/* What a token may do, and what a method needs (API_SCOPE_NONE: no token, health only). */
typedef enum { API_SCOPE_NONE = 0, API_SCOPE_READ = 1, API_SCOPE_ADMIN = 2 } api_scope;

typedef enum {
    API_AUTH_OK = 0,
    API_AUTH_UNAUTHENTICATED, /* no token, a malformed header, or a token not in the file */
    API_AUTH_FORBIDDEN,       /* a known token whose scope is below the method's */
} api_auth_result;

typedef struct api_auth api_auth;

/* Reads and checks a token file. Warns (log) when the file is readable by other users. */
int api_auth_load(const char *path, api_auth **out, chord_err *err);
/* The same from text (name is what errors call it). */
int api_auth_parse(const char *text, size_t len, const char *name, api_auth **out, chord_err *err);
void api_auth_free(api_auth *a);
/* How many tokens have scope s. */
int api_auth_count(const api_auth *a, api_scope s);

/* Checks an Authorization value ("Bearer TOKEN"; value NULL when absent, len bytes) for a
 * method that needs `need`. *granted (may be NULL) gets the token's scope (API_SCOPE_NONE when
 * unknown); *reason (may be NULL) a client-facing message, never containing the token. A NULL
 * a (authentication off) allows everything with API_SCOPE_ADMIN. */
api_auth_result api_auth_check(const api_auth *a, const char *value, size_t len, api_scope need,
                               api_scope *granted, const char **reason);

#endif
