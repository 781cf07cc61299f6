/* cli_jobs.c — `chordctl jobs create|list|show|cancel` (and `watch`, in cli_watch.c): a job
 * document (docs/job.md) sent as written to POST /v1/jobs, so the server's error names the field
 * or the line and column; the jobs listed with their progress, one shown with its latest
 * metrics, a cancel. */
#include <string.h>

#include "clients/cli/cli.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

static const char usage_create[] = "chordctl jobs create FILE|- [--watch]";
static const char usage_list[] =
    "chordctl jobs list [--state queued|running|succeeded|failed|cancelled] [--limit N] "
    "[--offset N]";
static const char usage_show[] = "chordctl jobs show ID";
static const char usage_cancel[] = "chordctl jobs cancel ID";

/* "3/6": the last stored step of all (0 before the first). */
static void progress_text(const json_t *job, char *out, size_t n) {
    double step = chord_json_number_or(job, "current_step", -1);
    snprintf(out, n, "%.0f/%.0f", step < 0 ? 0 : step, chord_json_number_or(job, "steps", 0));
}

/* The model a job trains: its path or id, or "init" for a random initialisation. */
static const char *model_text(const json_t *job) {
    const json_t *model = json_object_get(json_object_get(job, "config"), "model");
    const char *path = chord_json_string_or(model, "path", NULL);
    return path ? path : json_object_get(model, "init") ? "init" : NULL;
}

static const char *algorithm_text(const json_t *job) {
    return chord_json_string_or(json_object_get(job, "config"), "algorithm", NULL);
}

int cli_read_input(const char *file, char **text, size_t *len) {
    chord_err err = {0};
    if (strcmp(file, "-") != 0)
        return chord_read_file(file, text, len, &err) == 0 ? CLI_OK
                                                           : cli_fail(CLI_LOCAL, "%s", err.msg);
    chord_buf b = {0};
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
        if (chord_buf_append(&b, chunk, n) != 0) {
            chord_buf_free(&b);
            return cli_fail(CLI_LOCAL, "out of memory");
        }
    if (ferror(stdin)) {
        chord_buf_free(&b);
        return cli_fail(CLI_LOCAL, "reading stdin failed");
    }
    *len = b.len;
    *text = chord_buf_take(&b);
    return *text ? CLI_OK : cli_fail(CLI_LOCAL, "out of memory");
}

static int create(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--watch", .letter = 'w'}, {0}};
    const char *pos[1];
    int npos, rc;
    char *text = NULL;
    size_t len = 0;
    cli_result r = {0};
    json_t *job = NULL;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_create)) != CLI_OK) goto done;
    if (npos != 1) {
        rc = cli_fail(CLI_USAGE, "usage: %s", usage_create);
        goto done;
    }
    if ((rc = cli_read_input(pos[0], &text, &len)) != CLI_OK) goto done;
    cli_transfer t = {.method = "POST",
                      .path = "/v1/jobs",
                      .content_type = "application/json",
                      .body = text,
                      .body_len = len};
    if ((rc = cli_perform(c, &t, &r)) != CLI_OK) goto done;
    json_error_t jerr;
    if (!(job = json_loadb(r.body.data, r.body.len, 0, &jerr))) {
        rc = cli_fail(CLI_REFUSED, "the server's answer is not JSON");
        goto done;
    }
    const char *id = chord_json_string_or(job, "id", "?");
    if (c->json && !cli_opt_get(opts, "--watch")->seen) {
        cli_print_raw(&r.body);
    } else if (!c->json) {
        printf("created %s '%s': %s, %.0f steps, %s\n", id, chord_json_string_or(job, "name", ""),
               algorithm_text(job) ? algorithm_text(job) : "?",
               chord_json_number_or(job, "steps", 0), chord_json_string_or(job, "state", "?"));
        fflush(stdout);
    }
    if (cli_opt_get(opts, "--watch")->seen) rc = cli_watch_job(c, id, 0);
done:
    free(text);
    json_decref(job);
    chord_buf_free(&r.body);
    cli_opts_free(opts);
    return rc;
}

static void job_row(const json_t *j, const char **cells, char (*buf)[CLI_CELL]) {
    const char *state = chord_json_string_or(j, "state", "?");
    snprintf(buf[2], CLI_CELL, "%s%s", state,
             json_is_true(json_object_get(j, "cancel_requested")) && strcmp(state, "running") == 0
                 ? " (cancelling)"
                 : "");
    progress_text(j, buf[3], CLI_CELL);
    cli_age_text(chord_json_string_or(j, "created_at", NULL), buf[6], CLI_CELL);
    cells[0] = chord_json_string_or(j, "id", NULL);
    cells[1] = chord_json_string_or(j, "name", NULL);
    cells[2] = buf[2];
    cells[3] = buf[3];
    cells[4] = algorithm_text(j);
    cells[5] = model_text(j);
    cells[6] = buf[6];
}

static int list(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--state", .takes_value = 1},
                      {.name = "--limit", .takes_value = 1},
                      {.name = "--offset", .takes_value = 1},
                      {0}};
    const char *pos[1];
    int npos, rc;
    chord_buf base = {0}, path = {0}, raw = {0};
    json_t *doc = NULL;
    static const char *const header[] = {"ID",        "NAME",  "STATE", "STEP",
                                         "ALGORITHM", "MODEL", "AGE"};
    if ((rc = cli_parse(argc, argv, opts, pos, 0, &npos, usage_list)) != CLI_OK) goto done;
    cli_opt *state = cli_opt_get(opts, "--state");
    if (cli_bufprintf(&base, "/v1/jobs") != 0 ||
        (state->seen &&
         (cli_bufprintf(&base, "?state=") != 0 || cli_escape(c, &base, state->value) != 0))) {
        rc = cli_fail(CLI_LOCAL, "out of memory");
        goto done;
    }
    if ((rc = cli_paged_path(opts, base.data, &path)) == CLI_OK &&
        (rc = cli_call_json(c, "GET", path.data, NULL, &doc, &raw)) == CLI_OK)
        rc = cli_print_list(c, doc, &raw, 7, header, job_row, "no jobs");
done:
    json_decref(doc);
    chord_buf_free(&raw);
    chord_buf_free(&base);
    chord_buf_free(&path);
    cli_opts_free(opts);
    return rc;
}

/* The job's fields, then its last step's metrics (one more request; skipped when it fails). */
static void print_job(cli *c, const json_t *job) {
    char progress[64];
    progress_text(job, progress, sizeof progress);
    const json_t *data = json_object_get(json_object_get(job, "config"), "data");
    cli_field("id:", chord_json_string_or(job, "id", NULL), 10);
    cli_field("name:", chord_json_string_or(job, "name", NULL), 10);
    cli_field("state:", chord_json_string_or(job, "state", NULL), 10);
    if (json_is_true(json_object_get(job, "cancel_requested")))
        cli_field("cancel:", "requested", 10);
    cli_field("step:", progress, 10);
    cli_field("algorithm:", algorithm_text(job), 10);
    cli_field("model:", model_text(job), 10);
    cli_field("prompts:", chord_json_string_or(data, "prompts", NULL), 10);
    if (json_object_get(data, "expert"))
        cli_field("expert:", chord_json_string_or(data, "expert", NULL), 10);
    if (json_object_get(data, "eval"))
        cli_field("eval:", chord_json_string_or(data, "eval", NULL), 10);
    cli_field("device:", chord_json_string_or(job, "device", NULL), 10);
    cli_field("created:", chord_json_string_or(job, "created_at", NULL), 10);
    cli_field("started:", chord_json_string_or(job, "started_at", NULL), 10);
    cli_field("finished:", chord_json_string_or(job, "finished_at", NULL), 10);
    if (chord_json_string_or(job, "error", NULL))
        cli_field("error:", chord_json_string_or(job, "error", NULL), 10);

    double step = chord_json_number_or(job, "current_step", -1);
    if (step < 1) return;
    char suffix[96];
    snprintf(suffix, sizeof suffix, "/metrics?since_step=%.0f&max_steps=1", step);
    json_t *m = NULL;
    if (cli_call_id(c, "GET", "/v1/jobs/", chord_json_string_or(job, "id", ""), suffix, &m, NULL) !=
        CLI_OK) {
        return;
    }
    json_t *last = json_array_get(json_object_get(m, "steps"), 0);
    json_t *metrics = json_object_get(last, "metrics");
    if (json_object_size(metrics)) {
        printf("metrics at step %.0f:\n", chord_json_number_or(last, "step", step));
        const char *name;
        json_t *v;
        json_object_foreach(metrics, name, v) {
            char value[64];
            cli_number_text(v, value, sizeof value);
            printf("  %-28s %s\n", name, value);
        }
    }
    json_decref(m);
}

static int cancel(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{0}};
    const char *pos[1];
    int npos, rc;
    chord_buf raw = {0};
    json_t *job = NULL;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_cancel)) != CLI_OK) return rc;
    if (npos != 1) return cli_fail(CLI_USAGE, "usage: %s", usage_cancel);
    if ((rc = cli_call_id(c, "POST", "/v1/jobs/", pos[0], "/cancel", &job, &raw)) == CLI_OK) {
        if (c->json)
            cli_print_raw(&raw);
        else if (strcmp(chord_json_string_or(job, "state", ""), "cancelled") == 0)
            printf("%s cancelled\n", pos[0]);
        else
            printf("%s: cancel requested; it stops after its current step (step %.0f/%.0f)\n",
                   pos[0], chord_json_number_or(job, "current_step", 0),
                   chord_json_number_or(job, "steps", 0));
    }
    json_decref(job);
    chord_buf_free(&raw);
    return rc;
}

int cli_jobs(cli *c, int argc, char **argv) {
    const char *action = argc > 1 ? argv[1] : "";
    if (strcmp(action, "create") == 0 || strcmp(action, "submit") == 0)
        return create(c, argc - 1, argv + 1);
    if (strcmp(action, "list") == 0 || strcmp(action, "ls") == 0)
        return list(c, argc - 1, argv + 1);
    if (strcmp(action, "show") == 0 || strcmp(action, "get") == 0) {
        return cli_show(c, argc - 1, argv + 1, "/v1/jobs/", usage_show, print_job);
    }
    if (strcmp(action, "watch") == 0) return cli_jobs_watch(c, argc - 1, argv + 1);
    if (strcmp(action, "cancel") == 0) return cancel(c, argc - 1, argv + 1);
    return cli_fail(CLI_USAGE,
                    "usage: %s\n       %s\n       %s\n       chordctl jobs watch ID "
                    "[--since-step N]\n       %s",
                    usage_create, usage_list, usage_show, usage_cancel);
}
