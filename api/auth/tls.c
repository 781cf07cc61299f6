/* tls.c — reads and checks the TLS certificate and key with OpenSSL's parser (tls.h).
 *
 * Not here: the listeners (api/http, api/grpc take the PEM text). */
#include "api/auth/tls.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "server/base/fileutil.h"
#include "server/base/log.h"

/* An encrypted key would ask for a pass phrase: say no, so it is refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

/* "Jan  2 03:04:05 2030 GMT" */
static void asn1_time_text(const ASN1_TIME *t, char *out, size_t outlen) {
    out[0] = '\0';
    BIO *b = BIO_new(BIO_s_mem());
    if (!b) return;
    if (ASN1_TIME_print(b, t) == 1) {
        int n = BIO_read(b, out, (int)outlen - 1);
        out[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
}

void api_tls_clear(api_tls *t) {
    if (!t) return;
    free(t->cert_pem);
    if (t->key_pem) {
        explicit_bzero(t->key_pem, strlen(t->key_pem));
        free(t->key_pem);
    }
    memset(t, 0, sizeof *t);
}

int api_tls_load(const char *cert_path, const char *key_path, api_tls *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    BIO *bio = NULL;
    size_t len = 0;
    if (chord_read_file(cert_path, &out->cert_pem, &len, err)) {
        chord_err_prefix(err, "--tls-cert");
        goto fail;
    }
    bio = BIO_new_mem_buf(out->cert_pem, (int)len);
    cert = bio ? PEM_read_bio_X509(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    bio = NULL;
    if (!cert) {
        chord_err_set(err,
                      "--tls-cert: %s holds no PEM certificate ('-----BEGIN CERTIFICATE-----')",
                      cert_path);
        goto fail;
    }
    if (chord_read_file(key_path, &out->key_pem, &len, err)) {
        chord_err_prefix(err, "--tls-key");
        goto fail;
    }
    struct stat st;
    if (stat(key_path, &st) == 0 && (st.st_mode & 077))
        LOG_WARN("tls: %s is readable or writable by other users (mode %03o): chmod 600 it",
                 key_path, (unsigned)(st.st_mode & 0777));
    bio = BIO_new_mem_buf(out->key_pem, (int)len);
    key = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
    BIO_free(bio);
    bio = NULL;
    if (!key) {
        chord_err_set(err,
                      "--tls-key: %s holds no unencrypted PEM private key ('-----BEGIN PRIVATE "
                      "KEY-----'; a key with a pass phrase cannot be used)",
                      key_path);
        goto fail;
    }
    if (X509_check_private_key(cert, key) != 1) {
        chord_err_set(err, "--tls-key: %s is not the key of the certificate in %s", key_path,
                      cert_path);
        goto fail;
    }
    char subject[256] = "", not_before[64], not_after[64];
    X509_NAME_oneline(X509_get_subject_name(cert), subject, sizeof subject);
    asn1_time_text(X509_get0_notBefore(cert), not_before, sizeof not_before);
    asn1_time_text(X509_get0_notAfter(cert), not_after, sizeof not_after);
    snprintf(out->summary, sizeof out->summary, "certificate %s, valid %s to %s", subject,
             not_before, not_after);
    if (X509_cmp_current_time(X509_get0_notAfter(cert)) <= 0)
        LOG_WARN("tls: the certificate in %s expired on %s: clients will refuse it", cert_path,
                 not_after);
    else if (X509_cmp_current_time(X509_get0_notBefore(cert)) >= 0)
        LOG_WARN("tls: the certificate in %s is not valid before %s: clients will refuse it",
                 cert_path, not_before);
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return 0;
fail:
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    api_tls_clear(out);
    return -1;
}
