/* cli_rollout.c — `chordctl rollout`: samples completions from a registered model, a model
 * directory or a job's checkpoint (POST /v1/rollouts), waits for them (GET /v1/rollouts/ID until
 * it is no longer pending) and prints each with its reward; `rollout FILE` sends a request
 * document as written, `rollout show ID` shows one. Exit status 5 when the rollout failed. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "cmd/commands.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

static const char usage_rollout[] =
    "chordctl rollout (--model ID|DIR | --checkpoint JOB[:STEP]) --prompt TEXT [--prompt ...] "
    "[--answer A ...] [-n N] [--temperature T] [--top-p P] [--max-tokens N] [--seed S] "
    "[--no-wait]\n       chordctl rollout FILE|- [--no-wait]\n       chordctl rollout show ID";

/* The text of prompt i of a resolved request: the prompt, or the last user turn. */
static const char *prompt_text(const json_t *request, size_t i) {
    const char *p = json_string_value(json_array_get(json_object_get(request, "prompts"), i));
    if (p) return p;
    const json_t *conv = json_array_get(json_object_get(request, "messages"), i);
    const char *last = NULL;
    size_t k;
    json_t *m;
    json_array_foreach(conv, k, m) {
        const char *content = chord_json_string_or(m, "content", NULL);
        if (content && strcmp(chord_json_string_or(m, "role", ""), "user") == 0) last = content;
    }
    return last ? last : "(conversation)";
}

/* Prints text indented by two spaces on every line. */
static void print_indented(const char *text) {
    fputs("  ", stdout);
    for (; *text; text++) {
        fputc(*text, stdout);
        if (*text == '\n' && text[1]) fputs("  ", stdout);
    }
    fputc('\n', stdout);
}

static void print_rollout(cli *c, const json_t *ro) {
    const char *state = chord_json_string_or(ro, "state", "?");
    const json_t *result = json_object_get(ro, "result");
    const json_t *completions = json_object_get(result, "completions");
    const json_t *request = json_object_get(ro, "request");
    printf("%s  %s", chord_json_string_or(ro, "id", "?"), state);
    if (json_is_object(result))
        printf("  %zu completions, %.0f tokens in %.2f s", json_array_size(completions),
               chord_json_number_or(result, "tokens", 0),
               chord_json_number_or(result, "seconds", 0));
    fputc('\n', stdout);
    if (chord_json_string_or(ro, "error", NULL))
        printf("error: %s\n", chord_json_string_or(ro, "error", NULL));
    long last_prompt = -1;
    size_t i;
    json_t *comp;
    json_array_foreach(completions, i, comp) {
        long p = (long)chord_json_number_or(comp, "prompt_index", 0);
        if (p != last_prompt) {
            printf("\nprompt %ld: %s\n", p, prompt_text(request, (size_t)p));
            last_prompt = p;
        }
        char reward[32];
        cli_number_text(json_object_get(comp, "reward"), reward, sizeof reward);
        printf("[%ld.%.0f] reward %s (%s), %s, %zu tokens\n", p,
               chord_json_number_or(comp, "index", 0), reward,
               chord_json_string_or(comp, "reason", "-"),
               chord_json_string_or(comp, "finish_reason", "-"),
               json_array_size(json_object_get(comp, "token_ids")));
        print_indented(chord_json_string_or(comp, "text", ""));
    }
}

/* Builds the request from the options. CLI_OK or CLI_USAGE. */
static int build_request(cli_opt *opts, json_t **out) {
    cli_opt *model = cli_opt_get(opts, "--model"), *ck = cli_opt_get(opts, "--checkpoint"),
            *prompt = cli_opt_get(opts, "--prompt"), *answer = cli_opt_get(opts, "--answer");
    json_t *req = json_object(), *prompts = json_array(), *answers = NULL;
    int rc = CLI_USAGE;
    if (!req || !prompts) goto oom;
    if ((model->seen > 0) == (ck->seen > 0) || !prompt->seen) {
        cli_fail(CLI_USAGE, "give --model or --checkpoint, and at least one --prompt");
        goto fail;
    }
    if (answer->seen && answer->seen != prompt->seen) {
        cli_fail(CLI_USAGE, "--answer: give one per --prompt (%d prompts, %d answers)",
                 prompt->seen, answer->seen);
        goto fail;
    }
    for (int i = 0; i < prompt->seen; i++)
        if (cli_check_text("--prompt", prompt->values[i]) != CLI_OK) goto fail;
    for (int i = 0; i < answer->seen; i++)
        if (cli_check_text("--answer", answer->values[i]) != CLI_OK) goto fail;
    if ((model->seen && cli_check_text("--model", model->value) != CLI_OK) ||
        (ck->seen && cli_check_text("--checkpoint", ck->value) != CLI_OK))
        goto fail;
    for (int i = 0; i < prompt->seen; i++)
        if (json_array_append_new(prompts, json_string(prompt->values[i])) != 0) goto oom;
    if (json_object_set(req, "prompts", prompts) != 0) goto oom;
    if (answer->seen) {
        if (!(answers = json_array()) || json_object_set(req, "answers", answers) != 0) goto oom;
        for (int i = 0; i < answer->seen; i++)
            if (json_array_append_new(answers, json_string(answer->values[i])) != 0) goto oom;
    }
    if (model->seen) {
        if (json_object_set_new(req, "model", json_string(model->value)) != 0) goto oom;
    } else {
        /* JOB or JOB:STEP */
        char job[256];
        const char *colon = strchr(ck->value, ':');
        size_t len = colon ? (size_t)(colon - ck->value) : strlen(ck->value);
        snprintf(job, sizeof job, "%.*s", (int)(len < sizeof job ? len : sizeof job - 1),
                 ck->value);
        json_t *ckpt = json_pack("{s:s}", "job_id", job);
        if (!ckpt || json_object_set_new(req, "checkpoint", ckpt) != 0) goto oom;
        if (colon) {
            long step;
            if (cmd_arg_long("--checkpoint's step", colon + 1, 0, 2147483647L, &step) != 0)
                goto fail;
            if (json_object_set_new(ckpt, "step", json_integer(step)) != 0) goto oom;
        }
    }
    static const struct {
        const char *flag, *field;
        int integer;
        double lo, hi;
    } numbers[] = {{"-n", "n", 1, 1, 64},
                   {"--temperature", "temperature", 0, 0, 100},
                   {"--top-p", "top_p", 0, 0, 1},
                   {"--max-tokens", "max_tokens", 1, 1, 32768},
                   {"--seed", "seed", 1, 0, 9007199254740991.0}};
    for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++) {
        cli_opt *o = cli_opt_get(opts, numbers[i].flag);
        if (!o->seen) continue;
        json_t *v;
        if (numbers[i].integer) {
            long x;
            if (cli_opt_long(o, (long)numbers[i].lo, (long)numbers[i].hi, &x) != CLI_OK) goto fail;
            v = json_integer(x);
        } else {
            double x;
            if (cli_opt_double(o, numbers[i].lo, numbers[i].hi, &x) != CLI_OK) goto fail;
            v = json_real(x);
        }
        if (json_object_set_new(req, numbers[i].field, v) != 0) goto oom;
    }
    *out = req;
    json_decref(prompts);
    json_decref(answers);
    return CLI_OK;
oom:
    rc = cli_fail(CLI_LOCAL, "out of memory");
fail:
    json_decref(req);
    json_decref(prompts);
    json_decref(answers);
    return rc;
}

/* Polls the rollout until it is no longer pending; *out and raw hold the last answer. */
static int wait_rollout(cli *c, const char *id, json_t **out, chord_buf *raw) {
    double started = chord_now(), delay = 0.05;
    for (;;) {
        json_t *ro = NULL;
        chord_buf body = {0};
        int rc = cli_call_id(c, "GET", "/v1/rollouts/", id, NULL, &ro, &body);
        if (rc != CLI_OK) return rc;
        if (strcmp(chord_json_string_or(ro, "state", ""), "pending") != 0) {
            if (c->tty_err) fputs("\r\033[K", stderr);
            *out = ro;
            *raw = body;
            return CLI_OK;
        }
        json_decref(ro);
        chord_buf_free(&body);
        if (c->tty_err) {
            char waited[32];
            cli_duration_text(chord_now() - started, waited, sizeof waited);
            fprintf(stderr, "\r\033[K%s pending %s", id, waited);
            fflush(stderr);
        }
        usleep((useconds_t)(delay * 1e6));
        if (delay < 1) delay *= 1.5;
    }
}

int cli_rollout(cli *c, int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "show") == 0)
        return cli_show(c, argc - 1, argv + 1, "/v1/rollouts/", "chordctl rollout show ID",
                        print_rollout);
    cli_opt opts[] = {{.name = "--model", .letter = 'm', .takes_value = 1},
                      {.name = "--checkpoint", .takes_value = 1},
                      {.name = "--prompt", .letter = 'p', .takes_value = 1},
                      {.name = "--answer", .letter = 'a', .takes_value = 1},
                      {.name = "-n", .letter = 'n', .takes_value = 1},
                      {.name = "--temperature", .letter = 't', .takes_value = 1},
                      {.name = "--top-p", .takes_value = 1},
                      {.name = "--max-tokens", .takes_value = 1},
                      {.name = "--seed", .takes_value = 1},
                      {.name = "--no-wait"},
                      {0}};
    const char *pos[1];
    int npos, rc;
    json_t *req = NULL, *ro = NULL, *done = NULL;
    char *text = NULL;
    size_t len = 0;
    cli_result r = {0};
    chord_buf raw = {0};
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_rollout)) != CLI_OK) goto out;
    if (npos == 1) {
        for (cli_opt *o = opts; o->name; o++)
            if (o->seen && strcmp(o->name, "--no-wait") != 0) {
                rc = cli_fail(CLI_USAGE, "%s: the request document says it all", o->name);
                goto out;
            }
        if ((rc = cli_read_input(pos[0], &text, &len)) != CLI_OK) goto out;
    } else {
        if ((rc = build_request(opts, &req)) != CLI_OK) goto out;
        if (!(text = json_dumps(req, JSON_COMPACT))) {
            rc = cli_fail(CLI_LOCAL, "out of memory");
            goto out;
        }
        len = strlen(text);
    }
    cli_transfer t = {.method = "POST",
                      .path = "/v1/rollouts",
                      .content_type = "application/json",
                      .body = text,
                      .body_len = len};
    if ((rc = cli_perform(c, &t, &r)) != CLI_OK) goto out;
    json_error_t jerr;
    if (!(ro = json_loadb(r.body.data, r.body.len, 0, &jerr))) {
        rc = cli_fail(CLI_REFUSED, "the server's answer is not JSON");
        goto out;
    }
    if (cli_opt_get(opts, "--no-wait")->seen) {
        if (c->json)
            cli_print_raw(&r.body);
        else
            printf("%s %s\n", chord_json_string_or(ro, "id", "?"),
                   chord_json_string_or(ro, "state", "?"));
        goto out;
    }
    if ((rc = wait_rollout(c, chord_json_string_or(ro, "id", ""), &done, &raw)) != CLI_OK) goto out;
    if (c->json)
        cli_print_raw(&raw);
    else
        print_rollout(c, done);
    if (strcmp(chord_json_string_or(done, "state", ""), "succeeded") != 0) {
        rc =
            cli_fail(CLI_WORK_FAILED, "rollout %s failed: %s", chord_json_string_or(done, "id", ""),
                     chord_json_string_or(done, "error", "(no reason given)"));
    }
out:
    free(text);
    json_decref(req);
    json_decref(ro);
    json_decref(done);
    chord_buf_free(&r.body);
    chord_buf_free(&raw);
    cli_opts_free(opts);
    return rc;
}
