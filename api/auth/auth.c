/* auth.c — the token file's parser and the constant-time bearer check (auth.h).
 *
 * Not here: which method needs which scope, the HTTP / gRPC answers (the transports). */
#include "api/auth/auth.h"

#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server/base/fileutil.h"
#include "server/base/log.h"

enum { TOKEN_MIN = 16, TOKEN_MAX = 1024 };

typedef struct token {
    char hash[65]; /* SHA-256 of the token, hex */
    api_scope scope;
    int line;
} token;

struct api_auth {
    token *tokens;
    int n;
};

void api_auth_free(api_auth *a) {
    if (!a) return;
    if (a->tokens) explicit_bzero(a->tokens, (size_t)a->n * sizeof *a->tokens);
    free(a->tokens);
    free(a);
}

int api_auth_count(const api_auth *a, api_scope s) {
    int n = 0;
    for (int i = 0; a && i < a->n; i++)
        n += a->tokens[i].scope == s;
    return n;
}

static int is_space(char c) {
    return c == ' ' || c == '\t';
}

/* One line (no newline): blank / comment (0 with *t untouched), a token (0, t filled), or -1. */
static int parse_line(const char *p, const char *end, int line, const char *name, token *t,
                      int *filled, chord_err *err) {
    *filled = 0;
    while (p < end && is_space(*p))
        p++;
    while (end > p && (is_space(end[-1]) || end[-1] == '\r'))
        end--;
    if (p == end || *p == '#') return 0;
    const char *scope = p;
    while (p < end && !is_space(*p))
        p++;
    size_t scope_len = (size_t)(p - scope);
    while (p < end && is_space(*p))
        p++;
    const char *tok = p;
    while (p < end && !is_space(*p))
        p++;
    size_t tok_len = (size_t)(p - tok);
    if (tok_len == 0 || p != end)
        return chord_err_set(err,
                             "%s: line %d: expected 'SCOPE TOKEN' (two words: 'admin' or 'read', "
                             "then the token)",
                             name, line);
    if (scope_len == 5 && !memcmp(scope, "admin", 5))
        t->scope = API_SCOPE_ADMIN;
    else if (scope_len == 4 && !memcmp(scope, "read", 4))
        t->scope = API_SCOPE_READ;
    else
        return chord_err_set(err, "%s: line %d: the scope must be 'admin' or 'read'", name, line);
    if (tok_len < TOKEN_MIN || tok_len > TOKEN_MAX)
        return chord_err_set(err,
                             "%s: line %d: a token must be %d to %d characters (this one: %zu)",
                             name, line, TOKEN_MIN, TOKEN_MAX, tok_len);
    for (size_t i = 0; i < tok_len; i++)
        if ((unsigned char)tok[i] < 0x21 || (unsigned char)tok[i] > 0x7e)
            return chord_err_set(err,
                                 "%s: line %d: a token must be printable ASCII without spaces "
                                 "(character %zu is not)",
                                 name, line, i + 1);
    chord_sha256_hex(tok, tok_len, t->hash);
    t->line = line;
    *filled = 1;
    return 0;
}

int api_auth_parse(const char *text, size_t len, const char *name, api_auth **out, chord_err *err) {
    *out = NULL;
    api_auth *a = calloc(1, sizeof *a);
    if (!a) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", name);
    int cap = 0;
    const char *p = text, *end = text + len;
    for (int line = 1; p < end; line++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *eol = nl ? nl : end;
        token t = {0};
        int filled = 0;
        if (memchr(p, '\0', (size_t)(eol - p))) {
            chord_err_set(err, "%s: line %d: a NUL byte (not a text file?)", name, line);
            goto fail;
        }
        if (parse_line(p, eol, line, name, &t, &filled, err)) goto fail;
        if (filled) {
            for (int i = 0; i < a->n; i++) {
                if (!strcmp(a->tokens[i].hash, t.hash)) {
                    chord_err_set(err, "%s: line %d: the same token as line %d", name, line,
                                  a->tokens[i].line);
                    goto fail;
                }
            }
            if (a->n == cap) {
                int ncap = cap ? 2 * cap : 8;
                token *nt = realloc(a->tokens, (size_t)ncap * sizeof *nt);
                if (!nt) {
                    chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", name);
                    goto fail;
                }
                a->tokens = nt;
                cap = ncap;
            }
            a->tokens[a->n++] = t;
        }
        p = nl ? nl + 1 : end;
    }
    if (a->n == 0) {
        chord_err_set(err, "%s: no tokens (one a line: 'admin TOKEN' or 'read TOKEN')", name);
        goto fail;
    }
    *out = a;
    return 0;
fail:
    api_auth_free(a);
    return -1;
}

int api_auth_load(const char *path, api_auth **out, chord_err *err) {
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return chord_err_set(err, "--auth-token-file: cannot read %s%s", path,
                             fd >= 0 ? " (not a regular file)" : "");
    }
    close(fd);
    if (st.st_mode & 077)
        LOG_WARN("auth: %s is readable or writable by other users (mode %03o): chmod 600 it", path,
                 (unsigned)(st.st_mode & 0777));
    char *text = NULL;
    size_t len = 0;
    if (chord_read_file(path, &text, &len, err)) return chord_err_prefix(err, "--auth-token-file");
    int rc = api_auth_parse(text, len, path, out, err);
    explicit_bzero(text, len);
    free(text);
    if (rc) chord_err_prefix(err, "--auth-token-file");
    return rc;
}

/* "Bearer TOKEN" (the scheme in any case, RFC 7235): the token's bounds, or -1. */
static int bearer_token(const char *v, size_t len, const char **tok, size_t *tok_len) {
    static const char scheme[] = "bearer";
    if (len < sizeof scheme) return -1;
    for (size_t i = 0; i < sizeof scheme - 1; i++)
        if ((v[i] | 0x20) != scheme[i]) return -1;
    size_t i = sizeof scheme - 1;
    if (!is_space(v[i])) return -1;
    while (i < len && is_space(v[i]))
        i++;
    size_t e = len;
    while (e > i && is_space(v[e - 1]))
        e--;
    if (e == i || e - i > TOKEN_MAX) return -1;
    *tok = v + i;
    *tok_len = e - i;
    return 0;
}

api_auth_result api_auth_check(const api_auth *a, const char *value, size_t len, api_scope need,
                               api_scope *granted, const char **reason) {
    const char *unused;
    api_scope unused_scope;
    if (!reason) reason = &unused;
    if (!granted) granted = &unused_scope;
    *reason = NULL;
    *granted = API_SCOPE_NONE;
    if (!a) {
        *granted = API_SCOPE_ADMIN;
        return API_AUTH_OK;
    }
    if (!value) {
        *reason = "missing credentials: send 'Authorization: Bearer TOKEN'";
        return need == API_SCOPE_NONE ? API_AUTH_OK : API_AUTH_UNAUTHENTICATED;
    }
    const char *tok = NULL;
    size_t tok_len = 0;
    if (bearer_token(value, len, &tok, &tok_len)) {
        *reason = "malformed credentials: expected 'Authorization: Bearer TOKEN'";
        return need == API_SCOPE_NONE ? API_AUTH_OK : API_AUTH_UNAUTHENTICATED;
    }
    char hash[65];
    chord_sha256_hex(tok, tok_len, hash);
    /* every token, every byte: no exit on a match or a mismatch */
    unsigned scope = 0;
    for (int i = 0; i < a->n; i++) {
        unsigned diff = 0;
        for (int k = 0; k < 64; k++)
            diff |= (unsigned char)(a->tokens[i].hash[k] ^ hash[k]);
        unsigned match = ((diff - 1u) >> 8) & 1u; /* 1 iff diff == 0 (diff <= 255) */
        scope |= (0u - match) & (unsigned)a->tokens[i].scope;
    }
    explicit_bzero(hash, sizeof hash);
    *granted = (api_scope)scope;
    if (scope == API_SCOPE_NONE) {
        *reason = "unknown token";
        return need == API_SCOPE_NONE ? API_AUTH_OK : API_AUTH_UNAUTHENTICATED;
    }
    if (need == API_SCOPE_ADMIN && scope != API_SCOPE_ADMIN) {
        *reason = "this token is read-only: the method needs an admin token";
        return API_AUTH_FORBIDDEN;
    }
    return API_AUTH_OK;
}
