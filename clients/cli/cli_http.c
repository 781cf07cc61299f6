/* cli_http.c — chordctl's one way to talk to chordd: a libcurl transfer (cli_perform) that
 * sends a body from memory or a file, receives into memory, a file or a stream callback, draws
 * transfer progress on a terminal, and turns every failure into an exit status with a message:
 * the server's own error message (`{"error": {"code", "message"}}`), or why no answer came.
 *
 * Not here: what any endpoint means (the command files), retries (jobs watch reconnects). */
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "server/base/fileutil.h"

static void vprint_error(const char *fmt, va_list ap) {
    fputs("chordctl: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
}

int cli_fail(int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprint_error(fmt, ap);
    va_end(ap);
    return status;
}

static int vformat(char *out, size_t n, const char *fmt, va_list ap) {
    return vsnprintf(out, n, fmt, ap);
}

int cli_bufprintf(chord_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vformat(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || chord_buf_reserve(b, b->len + (size_t)n + 1) != 0) return -1;
    va_start(ap, fmt);
    vformat(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int cli_escape(cli *c, chord_buf *b, const char *text) {
    char *e = curl_easy_escape(c->curl, text, 0);
    if (!e) return -1;
    int rc = chord_buf_append(b, e, strlen(e));
    curl_free(e);
    return rc;
}

/* What the callbacks share during one transfer. */
typedef struct transfer_state {
    const cli_transfer *t;
    cli_result *r;
    cli *c;
    int decided;     /* the status is known: 2xx bodies go to the transfer's sink */
    int success;     /* 2xx */
    int write_error; /* writing the download failed (errno kept) */
    int saved_errno;
    double last_draw; /* when progress was last drawn */
    int drew;         /* a progress line is on stderr */
    double started;
} transfer_state;

static size_t on_body(char *data, size_t size, size_t nmemb, void *user) {
    transfer_state *s = user;
    size_t n = size * nmemb;
    if (!s->decided) {
        long status = 0;
        if (curl_easy_getinfo(s->c->curl, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK) status = 0;
        s->success = status >= 200 && status < 300;
        s->decided = 1;
    }
    if (s->success && s->t->download) {
        if (fwrite(data, 1, n, s->t->download) != n) {
            s->write_error = 1;
            s->saved_errno = errno;
            return 0; /* CURLE_WRITE_ERROR */
        }
        return n;
    }
    if (s->success && s->t->on_data) {
        if (s->t->on_data(s->t->user, data, n) != 0) {
            s->r->stopped = 1;
            return 0;
        }
        return n;
    }
    if (chord_buf_append(&s->r->body, data, n) != 0) return 0;
    return n;
}

static size_t on_read(char *out, size_t size, size_t nmemb, void *user) {
    transfer_state *s = user;
    size_t n = fread(out, 1, size * nmemb, s->t->upload);
    if (n == 0 && ferror(s->t->upload)) return CURL_READFUNC_ABORT;
    return n;
}

/* "label  [████░░░░]  1.2 MiB / 3.4 MiB  12.0 MiB/s" on stderr, at most 10 times a second (the
 * label cut to a third of the terminal). */
static void draw_progress(transfer_state *s, curl_off_t done, curl_off_t total, int final) {
    double now = chord_now();
    if (!final && now - s->last_draw < 0.1) return;
    s->last_draw = now;
    char done_text[32], total_text[32], rate_text[32], bar[128] = "";
    cli_bytes_text((double)done, done_text, sizeof done_text);
    double elapsed = now - s->started;
    cli_bytes_text(elapsed > 0 ? (double)done / elapsed : 0, rate_text, sizeof rate_text);
    int cols = cli_term_columns(STDERR_FILENO);
    if (total > 0) {
        cli_bytes_text((double)total, total_text, sizeof total_text);
        cli_bar_text(s->c, (double)done / (double)total, 20, bar, sizeof bar);
        fprintf(stderr, "\r\033[K%.*s  [%s]  %s / %s  %s/s", cols / 3, s->t->progress_label, bar,
                done_text, total_text, rate_text);
    } else {
        fprintf(stderr, "\r\033[K%.*s  %s  %s/s", cols / 3, s->t->progress_label, done_text,
                rate_text);
    }
    if (final) fputc('\n', stderr);
    fflush(stderr);
    s->drew = 1;
}

static int on_progress(void *user, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
    transfer_state *s = user;
    if (s->t->upload)
        draw_progress(s, ulnow, ultotal > 0 ? ultotal : s->t->upload_len, 0);
    else
        draw_progress(s, dlnow, dltotal > 0 ? dltotal : s->t->progress_total, 0);
    return 0;
}

/* Prints the server's error answer: its message, else the status and the start of the body. */
static void print_server_error(long status, const chord_buf *body) {
    json_error_t jerr;
    json_t *doc = body->len ? json_loadb(body->data, body->len, 0, &jerr) : NULL;
    json_t *error = doc ? json_object_get(doc, "error") : NULL;
    const char *code = error ? json_string_value(json_object_get(error, "code")) : NULL;
    const char *message = error ? json_string_value(json_object_get(error, "message")) : NULL;
    if (message)
        cli_fail(CLI_REFUSED, "%s (%ld %s)", message, status, code ? code : "error");
    else
        cli_fail(CLI_REFUSED, "the server answered %ld: %.200s", status,
                 body->len ? body->data : "(no body)");
    json_decref(doc);
}

#define CHECK_SETOPT(expr)                                                                         \
    do {                                                                                           \
        CURLcode setopt_rc_ = (expr);                                                              \
        if (setopt_rc_ != CURLE_OK) {                                                              \
            rc = cli_fail(CLI_LOCAL, "libcurl: %s", curl_easy_strerror(setopt_rc_));               \
            goto done;                                                                             \
        }                                                                                          \
    } while (0)

int cli_perform(cli *c, const cli_transfer *t, cli_result *r) {
    int rc = CLI_OK;
    char errbuf[CURL_ERROR_SIZE] = "";
    chord_buf url = {0};
    struct curl_slist *headers = NULL, *grown = NULL;
    char header[256];
    transfer_state s = {.t = t, .r = r, .c = c, .started = chord_now()};
    r->status = 0;
    r->stopped = 0;
    if (chord_buf_append(&url, c->server, strlen(c->server)) != 0 ||
        chord_buf_append(&url, t->path, strlen(t->path)) != 0)
        return cli_fail(CLI_LOCAL, "out of memory");

    curl_easy_reset(c->curl);
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_URL, url.data));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_ERRORBUFFER, errbuf));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_USERAGENT, "chordctl/0.1"));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_NOSIGNAL, 1L));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_CONNECTTIMEOUT, 10L));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, on_body));
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &s));
    if (t->streaming || t->upload || t->download) {
        /* no end in sight (an event stream, a file of any size): a transfer is given up only
         * when nothing moves for 5 minutes; an event stream's heartbeats keep it moving */
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L));
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, 300L));
    } else {
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_TIMEOUT, 300L));
    }

    snprintf(header, sizeof header, "Accept: %s", t->accept ? t->accept : "application/json");
    if (!(grown = curl_slist_append(headers, header))) goto oom;
    headers = grown;
    /* libcurl adds "Expect: 100-continue" to large uploads; chordd answers at once anyway */
    if (!(grown = curl_slist_append(headers, "Expect:"))) goto oom;
    headers = grown;
    if (c->token[0]) {
        char auth[sizeof c->token + 32];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", c->token);
        grown = curl_slist_append(headers, auth);
        memset(auth, 0, sizeof auth);
        if (!grown) goto oom;
        headers = grown;
    }
    if (c->cacert) CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_CAINFO, c->cacert));
    if (t->content_type) {
        snprintf(header, sizeof header, "Content-Type: %s", t->content_type);
        if (!(grown = curl_slist_append(headers, header))) goto oom;
        headers = grown;
    }

    if (strcmp(t->method, "POST") == 0) {
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_POST, 1L));
        if (t->upload) {
            CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_READFUNCTION, on_read));
            CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_READDATA, &s));
            CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, t->upload_len));
        } else {
            CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_POSTFIELDS, t->body ? t->body : ""));
            CHECK_SETOPT(
                curl_easy_setopt(c->curl, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)t->body_len));
        }
        if (!t->content_type) {
            /* libcurl would send application/x-www-form-urlencoded, which chordd refuses */
            if (!(grown = curl_slist_append(headers, "Content-Type:"))) goto oom;
            headers = grown;
        }
    } else if (strcmp(t->method, "GET") != 0) {
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_CUSTOMREQUEST, t->method));
    }
    CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers));
    if (t->progress_label && c->tty_err) {
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_NOPROGRESS, 0L));
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_XFERINFOFUNCTION, on_progress));
        CHECK_SETOPT(curl_easy_setopt(c->curl, CURLOPT_XFERINFODATA, &s));
    }

    CURLcode res = curl_easy_perform(c->curl);
    if (curl_easy_getinfo(c->curl, CURLINFO_RESPONSE_CODE, &r->status) != CURLE_OK) r->status = 0;
    if (s.drew) {
        curl_off_t done = 0;
        CURLINFO what = t->upload ? CURLINFO_SIZE_UPLOAD_T : CURLINFO_SIZE_DOWNLOAD_T;
        if (curl_easy_getinfo(c->curl, what, &done) != CURLE_OK) done = 0;
        draw_progress(&s, done, t->upload ? t->upload_len : done, 1);
    }
    if (res != CURLE_OK) {
        if (r->stopped) goto done; /* the stream callback ended it: not an error */
        if (s.write_error) {
            rc = cli_fail(CLI_LOCAL, "writing the download: %s", strerror(s.saved_errno));
            goto done;
        }
        if (res == CURLE_ABORTED_BY_CALLBACK && t->upload) {
            rc = cli_fail(CLI_LOCAL, "reading the upload failed");
            goto done;
        }
        if (res == CURLE_WRITE_ERROR) {
            rc = cli_fail(CLI_LOCAL, "out of memory reading the answer");
            goto done;
        }
        if (r->status >= 400 && r->body.len) {
            /* the server answered an error and closed while the body was still being sent
             * (an upload refused mid-way): its answer is what matters */
            print_server_error(r->status, &r->body);
            rc = CLI_REFUSED;
            goto done;
        }
        if (t->quiet_unreachable) {
            rc = CLI_UNREACHABLE;
            goto done;
        }
        rc = cli_fail(CLI_UNREACHABLE, "%s %s: %s",
                      res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST
                          ? "cannot connect to"
                          : "connection to",
                      c->server, errbuf[0] ? errbuf : curl_easy_strerror(res));
        goto done;
    }
    if (r->status < 200 || r->status >= 300) {
        print_server_error(r->status, &r->body);
        rc = CLI_REFUSED;
    }
    goto done;
oom:
    rc = cli_fail(CLI_LOCAL, "out of memory");
done:
    curl_slist_free_all(headers);
    chord_buf_free(&url);
    return rc;
}

int cli_call_json(cli *c, const char *method, const char *path, const json_t *body, json_t **out,
                  chord_buf *raw) {
    cli_result r = {0};
    char *text = NULL;
    *out = NULL;
    if (body && !(text = json_dumps(body, JSON_COMPACT)))
        return cli_fail(CLI_LOCAL, "out of memory");
    cli_transfer t = {.method = method,
                      .path = path,
                      .content_type = body ? "application/json" : NULL,
                      .body = text,
                      .body_len = text ? strlen(text) : 0};
    int rc = cli_perform(c, &t, &r);
    free(text);
    if (rc == CLI_OK) {
        json_error_t jerr;
        *out = r.body.len ? json_loadb(r.body.data, r.body.len, 0, &jerr) : NULL;
        if (!*out)
            rc = cli_fail(CLI_REFUSED, "the server's answer to %s %s is not JSON", method, path);
    }
    if (rc == CLI_OK && raw) {
        *raw = r.body;
        return rc;
    }
    chord_buf_free(&r.body);
    return rc;
}

void cli_print_raw(const chord_buf *raw) {
    if (!raw->len) return;
    fwrite(raw->data, 1, raw->len, stdout);
    if (raw->data[raw->len - 1] != '\n') fputc('\n', stdout);
}

int cli_call_id(cli *c, const char *method, const char *base, const char *id, const char *suffix,
                json_t **out, chord_buf *raw) {
    chord_buf path = {0};
    *out = NULL;
    if (cli_bufprintf(&path, "%s", base) != 0 || cli_escape(c, &path, id) != 0 ||
        cli_bufprintf(&path, "%s", suffix ? suffix : "") != 0) {
        chord_buf_free(&path);
        return cli_fail(CLI_LOCAL, "out of memory");
    }
    int rc = cli_call_json(c, method, path.data, NULL, out, raw);
    chord_buf_free(&path);
    return rc;
}

int cli_show(cli *c, int argc, char **argv, const char *base, const char *usage,
             void (*print)(cli *c, const json_t *doc)) {
    cli_opt opts[] = {{0}};
    const char *pos[1];
    int npos, rc;
    chord_buf raw = {0};
    json_t *doc = NULL;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage)) != CLI_OK) return rc;
    if (npos != 1) return cli_fail(CLI_USAGE, "usage: %s", usage);
    if ((rc = cli_call_id(c, "GET", base, pos[0], NULL, &doc, &raw)) == CLI_OK) {
        if (c->json)
            cli_print_raw(&raw);
        else
            print(c, doc);
    }
    json_decref(doc);
    chord_buf_free(&raw);
    return rc;
}
