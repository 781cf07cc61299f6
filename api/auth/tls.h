/* tls.h — the server's TLS certificate and key (`--tls-cert`, `--tls-key`), read once and
 * checked before either transport starts, so a bad file is one clear startup error instead of
 * a TLS library's message from deep inside a listener: the certificate must parse, the key must
 * be an unencrypted PEM private key, and the two must belong together. A certificate outside
 * its validity period is a warning (clients will refuse it), not a refusal to start.
 *
 * Both transports get the same PEM text: libmicrohttpd (GnuTLS) for REST, the gRPC core's SSL
 * server credentials for gRPC.
 *
 * Not here: tokens (auth.h). */
#ifndef CHORD_API_TLS_H
#define CHORD_API_TLS_H

#include "server/base/err.h"

typedef struct api_tls {
    char *cert_pem;    /* the certificate (chain), PEM, NUL-terminated */
    char *key_pem;     /* its private key, PEM, NUL-terminated */
    char summary[512]; /* "subject CN=..., valid until ..." for the startup log */
} api_tls;

/* Reads and checks both files (errors name the flag and the file). */
int api_tls_load(const char *cert_path, const char *key_path, api_tls *out, chord_err *err);
/* Frees (and wipes the key). */
void api_tls_clear(api_tls *t);

#endif
