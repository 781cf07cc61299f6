/* cli_datasets.c — `chordctl datasets upload|list|show`: JSONL files streamed to
 * POST /v1/datasets (the server checks every line as it arrives and names the first bad one),
 * and the stored datasets listed or shown. */
#include <errno.h>
#include <libgen.h>
#include <string.h>
#include <sys/stat.h>

#include "clients/cli/cli.h"
#include "server/base/json_field.h"

static const char usage_upload[] =
    "chordctl datasets upload FILE|- --kind prompts|expert|eval [--name NAME]";
static const char usage_list[] = "chordctl datasets list [--limit N] [--offset N]";
static const char usage_show[] = "chordctl datasets show ID";

static void print_dataset(cli *c, const json_t *d) {
    char size[32], lines[32];
    cli_bytes_text(chord_json_number_or(d, "bytes", 0), size, sizeof size);
    snprintf(lines, sizeof lines, "%.0f", chord_json_number_or(d, "lines", 0));
    cli_field("id:", chord_json_string_or(d, "id", NULL), 8);
    cli_field("name:", chord_json_string_or(d, "name", NULL), 8);
    cli_field("kind:", chord_json_string_or(d, "kind", NULL), 8);
    cli_field("lines:", lines, 8);
    cli_field("size:", size, 8);
    cli_field("sha256:", chord_json_string_or(d, "sha256", NULL), 8);
    cli_field("created:", chord_json_string_or(d, "created_at", NULL), 8);
}

/* The file's name without directories or a .jsonl / .json / .txt ending: the default name. */
static void default_name(const char *path, char *out, size_t n) {
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", path);
    snprintf(out, n, "%s", basename(copy));
    char *dot = strrchr(out, '.');
    if (dot && dot != out &&
        (strcmp(dot, ".jsonl") == 0 || strcmp(dot, ".json") == 0 || strcmp(dot, ".txt") == 0 ||
         strcmp(dot, ".ndjson") == 0))
        *dot = '\0';
}

static int upload(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--kind", .letter = 'k', .takes_value = 1},
                      {.name = "--name", .takes_value = 1},
                      {0}};
    const char *pos[1];
    int npos = 0, rc;
    FILE *f = NULL;
    chord_buf path = {0};
    cli_result r = {0};
    json_t *doc = NULL;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_upload)) != CLI_OK) goto done;
    cli_opt *kind = cli_opt_get(opts, "--kind"), *name = cli_opt_get(opts, "--name");
    if (npos != 1 || !kind->seen) {
        rc = cli_fail(CLI_USAGE, "usage: %s", usage_upload);
        goto done;
    }
    const char *file = pos[0];
    int from_stdin = strcmp(file, "-") == 0;
    curl_off_t size = -1; /* unknown: sent chunked */
    if (from_stdin) {
        f = stdin;
    } else {
        struct stat st;
        if (!(f = fopen(file, "rb")) || fstat(fileno(f), &st) != 0) {
            rc = cli_fail(CLI_LOCAL, "%s: %s", file, strerror(errno));
            goto done;
        }
        if (S_ISREG(st.st_mode)) size = (curl_off_t)st.st_size;
    }
    char fallback[256] = "", label_copy[4096];
    snprintf(label_copy, sizeof label_copy, "%s", file);
    const char *label = basename(label_copy);
    if (!name->seen && !from_stdin) default_name(file, fallback, sizeof fallback);
    if (cli_bufprintf(&path, "/v1/datasets?kind=") != 0 || cli_escape(c, &path, kind->value) ||
        ((name->seen || fallback[0]) &&
         (cli_bufprintf(&path, "&name=") != 0 ||
          cli_escape(c, &path, name->seen ? name->value : fallback) != 0))) {
        rc = cli_fail(CLI_LOCAL, "out of memory");
        goto done;
    }
    cli_transfer t = {.method = "POST",
                      .path = path.data,
                      .content_type = "application/x-ndjson",
                      .upload = f,
                      .upload_len = size,
                      .progress_label = from_stdin ? "stdin" : label};
    if ((rc = cli_perform(c, &t, &r)) != CLI_OK) goto done;
    if (c->json) {
        cli_print_raw(&r.body);
        goto done;
    }
    json_error_t jerr;
    if (!(doc = json_loadb(r.body.data, r.body.len, 0, &jerr))) {
        rc = cli_fail(CLI_REFUSED, "the server's answer is not JSON");
        goto done;
    }
    char bytes[32];
    cli_bytes_text(chord_json_number_or(doc, "bytes", 0), bytes, sizeof bytes);
    printf("uploaded %s: %s '%s', %.0f lines, %s\n", chord_json_string_or(doc, "id", "?"),
           chord_json_string_or(doc, "kind", "?"), chord_json_string_or(doc, "name", ""),
           chord_json_number_or(doc, "lines", 0), bytes);
done:
    if (f && f != stdin) fclose(f);
    json_decref(doc);
    chord_buf_free(&r.body);
    chord_buf_free(&path);
    cli_opts_free(opts);
    return rc;
}

static void dataset_row(const json_t *d, const char **cells, char (*buf)[CLI_CELL]) {
    snprintf(buf[3], CLI_CELL, "%.0f", chord_json_number_or(d, "lines", 0));
    cli_bytes_text(chord_json_number_or(d, "bytes", 0), buf[4], CLI_CELL);
    cli_age_text(chord_json_string_or(d, "created_at", NULL), buf[5], CLI_CELL);
    cells[0] = chord_json_string_or(d, "id", NULL);
    cells[1] = chord_json_string_or(d, "name", NULL);
    cells[2] = chord_json_string_or(d, "kind", NULL);
    cells[3] = buf[3];
    cells[4] = buf[4];
    cells[5] = buf[5];
}

static int list(cli *c, int argc, char **argv) {
    static const char *const header[] = {"ID", "NAME", "KIND", "LINES", "SIZE", "AGE"};
    return cli_list_command(c, argc, argv, usage_list, "/v1/datasets", 6, header, dataset_row,
                            "no datasets");
}

int cli_datasets(cli *c, int argc, char **argv) {
    const char *action = argc > 1 ? argv[1] : "";
    if (strcmp(action, "upload") == 0) return upload(c, argc - 1, argv + 1);
    if (strcmp(action, "list") == 0 || strcmp(action, "ls") == 0)
        return list(c, argc - 1, argv + 1);
    if (strcmp(action, "show") == 0 || strcmp(action, "get") == 0)
        return cli_show(c, argc - 1, argv + 1, "/v1/datasets/", usage_show, print_dataset);
    return cli_fail(CLI_USAGE, "usage: %s\n       %s\n       %s", usage_upload, usage_list,
                    usage_show);
}
