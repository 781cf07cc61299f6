/* cli_checkpoints.c — `chordctl checkpoints list|download`: a job's checkpoints, and their files
 * fetched (GET /v1/jobs/ID/checkpoints/STEP/files/PATH) into a directory or one file, each
 * checked against the checkpoint's SHA256SUMS, whose own SHA-256 is the checkpoint's `sha256`
 * (docs/api.md). A file is written beside its destination and renamed into place once whole
 * and verified, so an interrupted download never leaves a file that looks complete. */
#include <errno.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "cmd/commands.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

static const char usage_list[] = "chordctl checkpoints list JOB";
static const char usage_download[] =
    "chordctl checkpoints download JOB [STEP] [--out DIR] [--file PATH [-o FILE|-]]";

static void checkpoint_row(const json_t *ck, const char **cells, char (*buf)[CLI_CELL]) {
    snprintf(buf[0], CLI_CELL, "%.0f", chord_json_number_or(ck, "step", 0));
    snprintf(buf[2], CLI_CELL, "%zu", json_array_size(json_object_get(ck, "files")));
    cli_bytes_text(chord_json_number_or(ck, "bytes", 0), buf[3], CLI_CELL);
    snprintf(buf[4], CLI_CELL, "%.12s", chord_json_string_or(ck, "sha256", ""));
    cli_age_text(chord_json_string_or(ck, "created_at", NULL), buf[5], CLI_CELL);
    cells[0] = buf[0];
    cells[1] = chord_json_string_or(ck, "id", NULL);
    cells[2] = buf[2];
    cells[3] = buf[3];
    cells[4] = buf[4];
    cells[5] = buf[5];
}

static int list(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{0}};
    const char *pos[1];
    int npos, rc;
    json_t *doc = NULL;
    chord_buf raw = {0};
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_list)) != CLI_OK) return rc;
    if (npos != 1) return cli_fail(CLI_USAGE, "usage: %s", usage_list);
    static const char *const header[] = {"STEP", "ID", "FILES", "SIZE", "SHA256", "AGE"};
    char empty[256];
    snprintf(empty, sizeof empty, "%s has no checkpoints", pos[0]);
    if ((rc = cli_call_id(c, "GET", "/v1/jobs/", pos[0], "/checkpoints", &doc, &raw)) == CLI_OK)
        rc = cli_print_list(c, doc, &raw, 6, header, checkpoint_row, empty);
    json_decref(doc);
    chord_buf_free(&raw);
    return rc;
}

/* A path the server listed is relative and stays below the directory it is saved into. */
static int safe_relative(const char *path) {
    if (!*path || path[0] == '/') return 0;
    for (const char *p = path; *p;) {
        size_t len = strcspn(p, "/");
        if (len == 0 || (len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
            return 0;
        p += len;
        if (*p == '/') p++;
    }
    return 1;
}

/* "/v1/jobs/JOB/checkpoints/STEP/files/a/b": every segment of the path escaped. */
static int file_url(cli *c, chord_buf *url, const char *job, long step, const char *path) {
    url->len = 0;
    if (cli_bufprintf(url, "/v1/jobs/") != 0 || cli_escape(c, url, job) != 0 ||
        cli_bufprintf(url, "/checkpoints/%ld/files", step) != 0)
        return -1;
    char segment[1024];
    for (const char *p = path; *p;) {
        size_t len = strcspn(p, "/");
        snprintf(segment, sizeof segment, "%.*s", (int)(len < sizeof segment ? len : 1023), p);
        if (chord_buf_append(url, "/", 1) != 0 || cli_escape(c, url, segment) != 0) return -1;
        p += len;
        if (*p == '/') p++;
    }
    return 0;
}

/* The digest SHA256SUMS gives for path (lines "HEX  NAME" or "HEX *NAME"); NULL when none. */
static const char *manifest_digest(const char *manifest, const char *path, char out[65]) {
    for (const char *line = manifest; line && *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len > 66 && line[64] == ' ') {
            const char *name = line + 65;
            if (*name == ' ' || *name == '*') name++;
            size_t name_len = len - (size_t)(name - line);
            if (name_len && name[name_len - 1] == '\r') name_len--;
            if (name_len == strlen(path) && strncmp(name, path, name_len) == 0) {
                memcpy(out, line, 64);
                out[64] = '\0';
                return out;
            }
        }
        line = end ? end + 1 : NULL;
    }
    return NULL;
}

/* Downloads one file to dest ("-": stdout) through dest.part, verified against the manifest's
 * digest (NULL: not listed there, only the size is checked). */
static int fetch_file(cli *c, const char *job, long step, const char *path, double bytes,
                      const char *digest, const char *dest) {
    chord_buf url = {0}, part = {0};
    cli_result r = {0};
    FILE *f = NULL;
    int rc = CLI_OK, to_stdout = strcmp(dest, "-") == 0;
    if (file_url(c, &url, job, step, path) != 0 ||
        (!to_stdout && cli_bufprintf(&part, "%s.part", dest) != 0)) {
        rc = cli_fail(CLI_LOCAL, "out of memory");
        goto done;
    }
    if (to_stdout) {
        f = stdout;
    } else if (!(f = fopen(part.data, "wb"))) {
        rc = cli_fail(CLI_LOCAL, "%s: %s", part.data, strerror(errno));
        goto done;
    }
    cli_transfer t = {.method = "GET",
                      .path = url.data,
                      .accept = "application/octet-stream",
                      .download = f,
                      .progress_label = path,
                      .progress_total = (curl_off_t)bytes};
    rc = cli_perform(c, &t, &r);
    if (to_stdout) {
        fflush(stdout);
        goto done;
    }
    if (fclose(f) != 0 && rc == CLI_OK)
        rc = cli_fail(CLI_LOCAL, "%s: %s", part.data, strerror(errno));
    f = NULL;
    if (rc != CLI_OK) goto done;
    char got[65];
    chord_err err = {0};
    if (digest) {
        if (chord_sha256_file(part.data, got, &err) != 0) {
            rc = cli_fail(CLI_LOCAL, "%s", err.msg);
            goto done;
        }
        if (strcmp(got, digest) != 0) {
            rc = cli_fail(CLI_REFUSED, "%s: SHA-256 %s, but SHA256SUMS says %s", path, got, digest);
            goto done;
        }
    }
    if (rename(part.data, dest) != 0) {
        rc = cli_fail(CLI_LOCAL, "%s: %s", dest, strerror(errno));
        goto done;
    }
done:
    if (f && f != stdout) fclose(f);
    if (rc != CLI_OK && part.data) unlink(part.data);
    chord_buf_free(&url);
    chord_buf_free(&part);
    chord_buf_free(&r.body);
    return rc;
}

/* The checkpoint of step (< 0: the latest) among the job's; NULL after a message. */
static json_t *pick_checkpoint(const json_t *list, const char *job, long step) {
    json_t *items = json_object_get(list, "items"), *best = NULL, *ck;
    size_t i;
    chord_buf steps = {0};
    json_array_foreach(items, i, ck) {
        double s = chord_json_number_or(ck, "step", -1);
        if (step < 0 ? !best || s > chord_json_number_or(best, "step", -1) : s == (double)step)
            best = ck;
        if (cli_bufprintf(&steps, "%s%.0f", steps.len ? ", " : "", s) != 0) break;
    }
    if (!best) {
        if (!json_array_size(items))
            cli_fail(CLI_REFUSED, "%s has no checkpoints", job);
        else
            cli_fail(CLI_REFUSED, "%s has no checkpoint at step %ld (it has: %s)", job, step,
                     steps.data ? steps.data : "");
    }
    chord_buf_free(&steps);
    return best;
}

static int download(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--out", .letter = 'd', .takes_value = 1},
                      {.name = "--file", .letter = 'f', .takes_value = 1},
                      {.name = "--output", .letter = 'o', .takes_value = 1},
                      {0}};
    const char *pos[2];
    int npos, rc;
    long step = -1;
    json_t *list = NULL;
    chord_buf manifest = {0}, url = {0}, dest = {0};
    cli_result r = {0};
    if ((rc = cli_parse(argc, argv, opts, pos, 2, &npos, usage_download)) != CLI_OK) goto done;
    cli_opt *out = cli_opt_get(opts, "--out"), *file = cli_opt_get(opts, "--file"),
            *output = cli_opt_get(opts, "--output");
    if (npos < 1 || (output->seen && !file->seen) || (out->seen && file->seen)) {
        rc = cli_fail(CLI_USAGE, "usage: %s", usage_download);
        goto done;
    }
    if (npos == 2 && cmd_arg_long("STEP", pos[1], 0, 2147483647L, &step) != 0) {
        rc = CLI_USAGE;
        goto done;
    }
    const char *job = pos[0];
    if ((rc = cli_call_id(c, "GET", "/v1/jobs/", job, "/checkpoints", &list, NULL)) != CLI_OK)
        goto done;
    const json_t *ck = pick_checkpoint(list, job, step);
    if (!ck) {
        rc = CLI_REFUSED;
        goto done;
    }
    step = (long)chord_json_number_or(ck, "step", 0);

    /* the manifest, checked against the checkpoint's own digest */
    if (file_url(c, &url, job, step, "SHA256SUMS") != 0) {
        rc = cli_fail(CLI_LOCAL, "out of memory");
        goto done;
    }
    cli_transfer t = {.method = "GET", .path = url.data, .accept = "application/octet-stream"};
    if ((rc = cli_perform(c, &t, &r)) != CLI_OK) goto done;
    manifest = r.body;
    r.body = (chord_buf){0};
    char digest[65];
    chord_sha256_hex(manifest.data ? manifest.data : "", manifest.len, digest);
    if (strcmp(digest, chord_json_string_or(ck, "sha256", "")) != 0) {
        rc = cli_fail(CLI_REFUSED, "SHA256SUMS of step %ld: SHA-256 %s, but the checkpoint says %s",
                      step, digest, chord_json_string_or(ck, "sha256", ""));
        goto done;
    }

    const json_t *files = json_object_get(ck, "files");
    size_t i;
    json_t *f;
    if (file->seen) {
        const json_t *listed = NULL;
        json_array_foreach(files, i, f) {
            if (strcmp(chord_json_string_or(f, "path", ""), file->value) == 0) listed = f;
        }
        if (!listed) {
            rc = cli_fail(CLI_REFUSED, "checkpoint %ld of %s has no file '%s'", step, job,
                          file->value);
            goto done;
        }
        char base[1024];
        snprintf(base, sizeof base, "%s", file->value);
        const char *to = output->seen ? output->value : basename(base);
        char want[65];
        rc = fetch_file(c, job, step, file->value, chord_json_number_or(listed, "bytes", 0),
                        manifest_digest(manifest.data, file->value, want), to);
        if (rc == CLI_OK && !c->json && strcmp(to, "-") != 0)
            fprintf(stderr, "saved %s (SHA-256 verified)\n", to);
        goto done;
    }

    /* the whole checkpoint, into DIR (default JOB-step-N) */
    if (cli_bufprintf(&dest, "%s", out->seen ? out->value : "") != 0 ||
        (!out->seen && cli_bufprintf(&dest, "%s-step-%ld", job, step) != 0)) {
        rc = cli_fail(CLI_LOCAL, "out of memory");
        goto done;
    }
    chord_err err = {0};
    if (chord_mkdirs(dest.data, &err) != 0) {
        rc = cli_fail(CLI_LOCAL, "%s", err.msg);
        goto done;
    }
    size_t dir_len = dest.len;
    json_array_foreach(files, i, f) {
        const char *path = chord_json_string_or(f, "path", "");
        char want[65];
        if (!safe_relative(path)) {
            rc = cli_fail(CLI_REFUSED, "the server listed a file outside the checkpoint: '%s'",
                          path);
            goto done;
        }
        dest.len = dir_len;
        if (cli_bufprintf(&dest, "/%s", path) != 0) {
            rc = cli_fail(CLI_LOCAL, "out of memory");
            goto done;
        }
        if (strchr(path, '/')) {
            char parent[4096];
            snprintf(parent, sizeof parent, "%s", dest.data);
            if (chord_mkdirs(dirname(parent), &err) != 0) {
                rc = cli_fail(CLI_LOCAL, "%s", err.msg);
                goto done;
            }
        }
        const char *expected = manifest_digest(manifest.data, path, want);
        if (!expected && strcmp(path, "SHA256SUMS") != 0) {
            rc = cli_fail(CLI_REFUSED, "%s is not in the checkpoint's SHA256SUMS", path);
            goto done;
        }
        if (strcmp(path, "SHA256SUMS") == 0) {
            if (chord_write_file_atomic(dest.data, manifest.data ? manifest.data : "", manifest.len,
                                        &err) != 0) {
                rc = cli_fail(CLI_LOCAL, "%s", err.msg);
                goto done;
            }
        } else if ((rc = fetch_file(c, job, step, path, chord_json_number_or(f, "bytes", 0),
                                    expected, dest.data)) != CLI_OK) {
            goto done;
        }
    }
    dest.len = dir_len;
    dest.data[dir_len] = '\0';
    if (c->json) {
        char *text = json_dumps(ck, JSON_COMPACT);
        if (text) printf("%s\n", text);
        free(text);
    } else {
        char size[32];
        cli_bytes_text(chord_json_number_or(ck, "bytes", 0), size, sizeof size);
        printf("downloaded checkpoint %ld of %s: %zu files, %s, into %s (SHA-256 verified)\n", step,
               job, json_array_size(files), size, dest.data);
    }
done:
    json_decref(list);
    chord_buf_free(&manifest);
    chord_buf_free(&url);
    chord_buf_free(&dest);
    chord_buf_free(&r.body);
    cli_opts_free(opts);
    return rc;
}

int cli_checkpoints(cli *c, int argc, char **argv) {
    const char *action = argc > 1 ? argv[1] : "";
    if (strcmp(action, "list") == 0 || strcmp(action, "ls") == 0)
        return list(c, argc - 1, argv + 1);
    if (strcmp(action, "download") == 0 || strcmp(action, "get") == 0)
        return download(c, argc - 1, argv + 1);
    return cli_fail(CLI_USAGE, "usage: %s\n       %s", usage_list, usage_download);
}
