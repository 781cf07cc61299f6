/* cli.h — chordctl, the command-line client of chordd's REST API (docs/cli.md): what its
 * command files share. One HTTP transfer function over libcurl (cli_http.c), the argument
 * parser (cli_args.c), and the ways of printing (cli_print.c): tables, sizes, ages, bars.
 *
 * Every command returns the process exit status below; a message explaining a non-zero one is
 * already on stderr when it returns. Not here: any knowledge of the server's internals — the
 * client knows only the REST contract (api/proto/openapi.yaml). */
#ifndef CHORD_CLI_H
#define CHORD_CLI_H

#include <curl/curl.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "server/base/buf.h"

/* Exit statuses scripts can rely on (docs/cli.md "Exit status"). */
enum {
    CLI_OK = 0,
    CLI_REFUSED = 1,     /* the server answered with an error (its message on stderr), or its
                          * answer failed a check (a checkpoint file's SHA-256) */
    CLI_USAGE = 2,       /* bad command line */
    CLI_UNREACHABLE = 3, /* could not connect, or the connection failed mid-way */
    CLI_LOCAL = 4,       /* a local file could not be read or written */
    CLI_WORK_FAILED = 5, /* a watched job or a rollout ended failed or cancelled */
};

typedef struct cli {
    char server[1024];  /* base URL, no trailing slash */
    int json;           /* --json: print the server's JSON instead of tables */
    int tty_out;        /* stdout is a terminal: live bars on stdout (jobs watch) */
    int tty_err;        /* stderr is a terminal: transfer progress on stderr */
    int utf8;           /* the locale's codeset is UTF-8: block characters in bars */
    CURL *curl;         /* one handle for the whole run (keeps the connection) */
    char token[1100];   /* bearer token (--token-file, $CHORD_TOKEN); "" when none */
    const char *cacert; /* CA bundle for https (--cacert, $CHORD_CACERT); NULL: the system's */
} cli;

/* ---- HTTP (cli_http.c) ---- */

/* One request. The request body comes from memory (body, body_len) or a file (upload,
 * upload_len); a 2xx response body goes to memory (the result's body), a file (download) or a
 * stream callback (on_data: return 0 to go on, non-zero to stop). An error response's body is
 * always kept in memory, for its message. */
typedef struct cli_transfer {
    const char *method;       /* "GET" or "POST" */
    const char *path;         /* appended to the server URL: "/v1/jobs?state=running" */
    const char *content_type; /* of the request body; NULL sends none */
    const char *accept;       /* Accept header; NULL: application/json */
    const char *body;
    size_t body_len;
    FILE *upload;
    curl_off_t upload_len;
    FILE *download;
    int (*on_data)(void *user, const char *data, size_t len);
    void *user;
    const char *progress_label; /* when stderr is a TTY: a progress line for this transfer */
    curl_off_t progress_total;  /* expected download size when the server sends none (0) */
    int streaming;              /* no overall timeout (an event stream); idle limit instead */
    int quiet_unreachable;      /* no message for CLI_UNREACHABLE (the caller retries) */
} cli_transfer;

typedef struct cli_result {
    long status;    /* HTTP status; 0 when no answer came */
    chord_buf body; /* the response body when kept in memory */
    int stopped;    /* on_data asked to stop */
} cli_result;

/* Runs the transfer. CLI_OK for a 2xx answer; otherwise the exit status after a message on
 * stderr: CLI_REFUSED with the server's error message, CLI_UNREACHABLE, or CLI_LOCAL (writing
 * the download failed). The caller frees r->body (chord_buf_free) in every case. */
int cli_perform(cli *c, const cli_transfer *t, cli_result *r);

/* GET or POST a JSON body (NULL: none) and parse the 2xx answer: *out (the caller's, to
 * json_decref) and, when raw is not NULL, the exact bytes (for --json). */
int cli_call_json(cli *c, const char *method, const char *path, const json_t *body, json_t **out,
                  chord_buf *raw);

/* cli_call_json on base + the escaped id + suffix ("/v1/jobs/", id, "/cancel"). */
int cli_call_id(cli *c, const char *method, const char *base, const char *id, const char *suffix,
                json_t **out, chord_buf *raw);
/* A `show ID` command: GET base + id, then the server's JSON (--json) or print(doc). */
int cli_show(cli *c, int argc, char **argv, const char *base, const char *usage,
             void (*print)(cli *c, const json_t *doc));

/* Appends text to b escaped for a URL query value or path segment (curl_easy_escape). */
int cli_escape(cli *c, chord_buf *b, const char *text);
/* Appends a printf-formatted string to b. 0, or -1 when out of memory. */
int cli_bufprintf(chord_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "chordctl: <message>" on stderr and returns status. */
int cli_fail(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- arguments (cli_args.c) ---- */

/* One option of a command: long name ("--kind"), optional short letter, and whether it takes a
 * value. After parsing, value holds the last value given (or "1" for a flag) and seen counts
 * the times it appeared; values keeps every value of a repeatable option. */
typedef struct cli_opt {
    const char *name;
    char letter; /* 0: none */
    int takes_value;
    const char *value;
    int seen;
    const char **values; /* all values, in order (allocated when seen; freed by cli_opts_free) */
} cli_opt;

/* Parses argv[1..argc) (argv[0] is the command's name) into opts (terminated by a zeroed
 * entry) and positional arguments (pos, at most max_pos; *npos their count). "--" ends
 * options. CLI_OK, or CLI_USAGE after a message naming the bad argument. */
int cli_parse(int argc, char **argv, cli_opt *opts, const char **pos, int max_pos, int *npos,
              const char *usage);
void cli_opts_free(cli_opt *opts);
/* The option named name in opts (it must exist). */
cli_opt *cli_opt_get(cli_opt *opts, const char *name);
/* A whole number for a flag, by the project's one number rule (cmd/cmd_args.c): CLI_OK, or
 * CLI_USAGE after the message naming the flag and the range. */
int cli_opt_long(cli_opt *o, long lo, long hi, long *out);
int cli_opt_double(cli_opt *o, double lo, double hi, double *out);
/* Text that goes into a JSON document must be UTF-8: CLI_OK, or CLI_USAGE naming the flag. */
int cli_check_text(const char *flag, const char *text);
/* Appends "base?limit=N&offset=M" to path from opts' --limit (1-1000, default 100) and
 * --offset (default 0). CLI_OK or CLI_USAGE. */
int cli_paged_path(cli_opt *opts, const char *base, chord_buf *path);

/* ---- printing (cli_print.c) ---- */

/* A table: a header row, then rows of cells (copied), printed with aligned columns. */
typedef struct cli_table {
    int ncols;
    size_t nrows;
    size_t cap;
    char **cells; /* nrows * ncols, row-major; row 0 is the header */
} cli_table;

int cli_table_init(cli_table *t, int ncols, const char *const *header);
/* Adds a row of ncols cells (NULL prints as "-"). 0, or -1 when out of memory. */
int cli_table_row(cli_table *t, const char *const *cells);
void cli_table_print(const cli_table *t, FILE *f);
void cli_table_free(cli_table *t);

/* "1.5 KiB", "3.2 MiB", "812 B". */
void cli_bytes_text(double bytes, char *out, size_t n);
/* "1:05", "12:30:09" (hours when any), "--:--" when unknown (negative or not finite). */
void cli_duration_text(double seconds, char *out, size_t n);
/* An RFC 3339 timestamp's age: "12s", "5m", "3h", "2d"; "-" for NULL or unparsable. */
void cli_age_text(const char *rfc3339, char *out, size_t n);
/* An RFC 3339 UTC timestamp ("2026-11-25T08:35:24.750Z") as seconds since the epoch; NaN for
 * NULL or unparsable. */
double cli_time_parse(const char *rfc3339);
/* A metric value in at most 6 significant digits; "-" for NULL / null. */
void cli_number_text(const json_t *v, char *out, size_t n);
/* A bar of width cells, fraction in [0, 1] filled: "█████░░░░░" or "#####....." */
void cli_bar_text(const cli *c, double fraction, int width, char *out, size_t n);
/* The terminal's columns (of stdout or stderr: fd), 80 when unknown. */
int cli_term_columns(int fd);
/* Under a list's table, on stderr: "(N of TOTAL shown; --offset M for more)" when the page
 * is not the last. */
void cli_page_note(const json_t *page);
/* One row of a list: fills cells[0..ncols-1] for item, using buf (ncols cells of
 * CLI_CELL bytes) for the ones it formats. */
#define CLI_CELL 128
typedef void (*cli_row_fn)(const json_t *item, const char **cells, char (*buf)[CLI_CELL]);
/* A list answer (doc's "items"): the raw JSON with --json, else a table of header (ncols, at
 * most 8) with a row per item, or `empty` when there is none; the page note under it. CLI_OK,
 * or CLI_LOCAL when out of memory. */
int cli_print_list(const cli *c, const json_t *doc, const chord_buf *raw, int ncols,
                   const char *const *header, cli_row_fn row, const char *empty);
/* A whole paged list command (--limit, --offset; no positional argument): GET path, then
 * cli_print_list. */
int cli_list_command(cli *c, int argc, char **argv, const char *usage, const char *path, int ncols,
                     const char *const *header, cli_row_fn row, const char *empty);
/* Prints "key:  value" (value NULL: "-") with the key padded to width. */
void cli_field(const char *key, const char *value, int width);

/* ---- commands ---- */
int cli_datasets(cli *c, int argc, char **argv);    /* cli_datasets.c */
int cli_models(cli *c, int argc, char **argv);      /* cli_models.c */
int cli_jobs(cli *c, int argc, char **argv);        /* cli_jobs.c */
int cli_jobs_watch(cli *c, int argc, char **argv);  /* cli_watch.c */
int cli_rollout(cli *c, int argc, char **argv);     /* cli_rollout.c */
int cli_checkpoints(cli *c, int argc, char **argv); /* cli_checkpoints.c */

/* Reads FILE, or stdin for "-", whole (NUL-terminated). CLI_OK, or CLI_LOCAL after the
 * message. */
int cli_read_input(const char *file, char **text, size_t *len); /* cli_jobs.c */
/* Follows a job's event stream from since_step (jobs watch, jobs create --watch). */
int cli_watch_job(cli *c, const char *id, long since_step); /* cli_watch.c */

/* Prints a JSON document (raw bytes as the server sent them, ending with a newline). */
void cli_print_raw(const chord_buf *raw);

#endif
