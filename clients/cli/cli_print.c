/* cli_print.c — how chordctl shows things to a person: aligned tables (kubectl's look: upper-case
 * headers, two spaces between columns), sizes in KiB/MiB, ages ("5m"), durations ("1:05"),
 * metric numbers, and progress bars (block characters where the locale is UTF-8).
 *
 * Not here: anything for scripts — `--json` prints the server's bytes untouched. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "server/base/buf.h"
#include "server/base/json_field.h"

int cli_table_init(cli_table *t, int ncols, const char *const *header) {
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    return cli_table_row(t, header);
}

int cli_table_row(cli_table *t, const char *const *cells) {
    char **grown =
        chord_array_grow(t->cells, &t->cap, (t->nrows + 1) * (size_t)t->ncols, sizeof *t->cells);
    if (!grown) return -1;
    t->cells = grown;
    char **row = t->cells + t->nrows * (size_t)t->ncols;
    for (int i = 0; i < t->ncols; i++) {
        row[i] = strdup(cells[i] ? cells[i] : "-");
        if (!row[i]) {
            while (i-- > 0)
                free(row[i]);
            return -1;
        }
    }
    t->nrows++;
    return 0;
}

/* Columns on a terminal: characters, not bytes (UTF-8 continuation bytes take no column). */
static size_t text_width(const char *s) {
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

void cli_table_print(const cli_table *t, FILE *f) {
    size_t width[32] = {0};
    int ncols = t->ncols < 32 ? t->ncols : 32;
    for (size_t r = 0; r < t->nrows; r++)
        for (int i = 0; i < ncols; i++) {
            size_t w = text_width(t->cells[r * (size_t)t->ncols + (size_t)i]);
            if (w > width[i]) width[i] = w;
        }
    for (size_t r = 0; r < t->nrows; r++) {
        for (int i = 0; i < ncols; i++) {
            const char *cell = t->cells[r * (size_t)t->ncols + (size_t)i];
            fputs(cell, f);
            if (i + 1 < ncols) fprintf(f, "%*s", (int)(width[i] - text_width(cell) + 2), "");
        }
        fputc('\n', f);
    }
}

void cli_table_free(cli_table *t) {
    for (size_t i = 0; i < t->nrows * (size_t)t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

void cli_bytes_text(double bytes, char *out, size_t n) {
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024 && u < 4) {
        bytes /= 1024;
        u++;
    }
    if (u == 0)
        snprintf(out, n, "%.0f B", bytes);
    else
        snprintf(out, n, "%.1f %s", bytes, units[u]);
}

void cli_duration_text(double seconds, char *out, size_t n) {
    if (!(seconds >= 0) || !isfinite(seconds) || seconds > 1e9) {
        snprintf(out, n, "--:--");
        return;
    }
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(out, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(out, n, "%ld:%02ld", s / 60, s % 60);
}

void cli_age_text(const char *rfc3339, char *out, size_t n) {
    double t = cli_time_parse(rfc3339);
    if (isnan(t)) {
        snprintf(out, n, "-");
        return;
    }
    double age = (double)time(NULL) - t;
    if (age < 0) age = 0;
    if (age < 120)
        snprintf(out, n, "%.0fs", floor(age));
    else if (age < 7200)
        snprintf(out, n, "%.0fm", floor(age / 60));
    else if (age < 2 * 86400)
        snprintf(out, n, "%.0fh", floor(age / 3600));
    else
        snprintf(out, n, "%.0fd", floor(age / 86400));
}

void cli_number_text(const json_t *v, char *out, size_t n) {
    if (!v || !json_is_number(v)) {
        snprintf(out, n, "-");
        return;
    }
    if (json_is_integer(v))
        snprintf(out, n, "%lld", (long long)json_integer_value(v));
    else
        snprintf(out, n, "%.4g", json_real_value(v));
}

void cli_bar_text(const cli *c, double fraction, int width, char *out, size_t n) {
    if (!(fraction >= 0)) fraction = 0;
    if (fraction > 1) fraction = 1;
    int filled = (int)floor(fraction * width + 1e-9);
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < width; i++) {
        const char *cell = c->utf8 ? (i < filled ? "\xe2\x96\x88" : "\xe2\x96\x91") /* █ ░ */
                                   : (i < filled ? "#" : ".");
        size_t len = strlen(cell);
        if (used + len + 1 > n) break;
        memcpy(out + used, cell, len + 1);
        used += len;
    }
}

int cli_term_columns(int fd) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

void cli_field(const char *key, const char *value, int width) {
    printf("%-*s  %s\n", width, key, value ? value : "-");
}

int cli_print_list(const cli *c, const json_t *doc, const chord_buf *raw, int ncols,
                   const char *const *header, cli_row_fn row, const char *empty) {
    if (c->json) {
        cli_print_raw(raw);
        return CLI_OK;
    }
    cli_table t = {0};
    const char *cells[8];
    char buf[8][CLI_CELL];
    if (ncols > 8 || cli_table_init(&t, ncols, header) != 0)
        return cli_fail(CLI_LOCAL, "out of memory");
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(doc, "items"), i, item) {
        row(item, cells, buf);
        if (cli_table_row(&t, cells) != 0) {
            cli_table_free(&t);
            return cli_fail(CLI_LOCAL, "out of memory");
        }
    }
    if (t.nrows == 1)
        printf("%s\n", empty);
    else
        cli_table_print(&t, stdout);
    cli_page_note(doc);
    cli_table_free(&t);
    return CLI_OK;
}

int cli_list_command(cli *c, int argc, char **argv, const char *usage, const char *path, int ncols,
                     const char *const *header, cli_row_fn row, const char *empty) {
    cli_opt opts[] = {
        {.name = "--limit", .takes_value = 1}, {.name = "--offset", .takes_value = 1}, {0}};
    const char *pos[1];
    int npos, rc;
    chord_buf paged = {0}, raw = {0};
    json_t *doc = NULL;
    if ((rc = cli_parse(argc, argv, opts, pos, 0, &npos, usage)) == CLI_OK &&
        (rc = cli_paged_path(opts, path, &paged)) == CLI_OK &&
        (rc = cli_call_json(c, "GET", paged.data, NULL, &doc, &raw)) == CLI_OK)
        rc = cli_print_list(c, doc, &raw, ncols, header, row, empty);
    json_decref(doc);
    chord_buf_free(&raw);
    chord_buf_free(&paged);
    cli_opts_free(opts);
    return rc;
}

/* Prints "showing N of TOTAL (--offset M for more)" on stderr when a page is not the end. */
void cli_page_note(const json_t *page) {
    double total = chord_json_number_or(page, "total", 0);
    double offset = chord_json_number_or(page, "offset", 0);
    size_t n = json_array_size(json_object_get(page, "items"));
    if (offset + (double)n < total)
        fprintf(stderr, "(%zu of %.0f shown; --offset %.0f for more)\n", n, total,
                offset + (double)n);
}

double cli_time_parse(const char *rfc3339) {
    struct tm tm = {0};
    const char *rest = rfc3339 ? strptime(rfc3339, "%Y-%m-%dT%H:%M:%S", &tm) : NULL;
    if (!rest) return NAN;
    double t = (double)timegm(&tm);
    if (*rest == '.') t += strtod(rest, NULL); /* ".750Z" -> 0.75 (strtod stops at the Z) */
    return t;
}
