/* cli_models.c — `chordctl models add|list|show`: registers a Hugging Face model directory under
 * the server's --models-root (POST /v1/models {"path"}), or an architecture for random
 * initialisation ({"init": {"config"}}), and lists or shows the registered models. */
#include <string.h>

#include "clients/cli/cli.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"

static const char usage_add[] =
    "chordctl models add PATH [--name NAME] | models add --init CONFIG.json [--tokenizer DIR] "
    "[--name NAME]";
static const char usage_list[] = "chordctl models list [--limit N] [--offset N]";
static const char usage_show[] = "chordctl models show ID";

/* "qwen2 L=24 d=896": what the config says about the architecture (type, layers, width). */
static void arch_text(const json_t *model, char *out, size_t n) {
    const json_t *config = json_object_get(model, "config");
    snprintf(out, n, "%s L=%.0f d=%.0f", chord_json_string_or(config, "model_type", "?"),
             chord_json_number_or(config, "num_hidden_layers", 0),
             chord_json_number_or(config, "hidden_size", 0));
}

static void print_model(cli *c, const json_t *m) {
    char arch[128];
    arch_text(m, arch, sizeof arch);
    cli_field("id:", chord_json_string_or(m, "id", NULL), 10);
    cli_field("name:", chord_json_string_or(m, "name", NULL), 10);
    cli_field("source:", chord_json_string_or(m, "source", NULL), 10);
    cli_field("path:", chord_json_string_or(m, "path", NULL), 10);
    cli_field("tokenizer:", chord_json_string_or(m, "tokenizer", NULL), 10);
    cli_field("arch:", arch, 10);
    cli_field("created:", chord_json_string_or(m, "created_at", NULL), 10);
}

static int add(cli *c, int argc, char **argv) {
    cli_opt opts[] = {{.name = "--name", .takes_value = 1},
                      {.name = "--init", .takes_value = 1},
                      {.name = "--tokenizer", .takes_value = 1},
                      {0}};
    const char *pos[1];
    int npos, rc;
    json_t *body = NULL, *doc = NULL, *config = NULL;
    chord_buf raw = {0};
    char *text = NULL;
    size_t len = 0;
    if ((rc = cli_parse(argc, argv, opts, pos, 1, &npos, usage_add)) != CLI_OK) goto done;
    cli_opt *name = cli_opt_get(opts, "--name"), *init = cli_opt_get(opts, "--init"),
            *tokenizer = cli_opt_get(opts, "--tokenizer");
    if ((npos == 1) == (init->seen > 0) || (tokenizer->seen && !init->seen)) {
        rc = cli_fail(CLI_USAGE, "usage: %s", usage_add);
        goto done;
    }
    if ((name->seen && (rc = cli_check_text("--name", name->value)) != CLI_OK) ||
        (npos == 1 && (rc = cli_check_text("PATH", pos[0])) != CLI_OK) ||
        (tokenizer->seen && (rc = cli_check_text("--tokenizer", tokenizer->value)) != CLI_OK))
        goto done;
    if (!(body = json_object())) goto oom;
    if (name->seen && json_object_set_new(body, "name", json_string(name->value)) != 0) goto oom;
    if (npos == 1) {
        if (json_object_set_new(body, "path", json_string(pos[0])) != 0) goto oom;
    } else {
        chord_err err = {0};
        json_error_t jerr;
        if (chord_read_file(init->value, &text, &len, &err) != 0) {
            rc = cli_fail(CLI_LOCAL, "%s", err.msg);
            goto done;
        }
        if (!(config = json_loadb(text, len, 0, &jerr)) || !json_is_object(config)) {
            rc = cli_fail(CLI_USAGE, "%s: not a JSON object (line %d: %s)", init->value, jerr.line,
                          config ? "not an object" : jerr.text);
            goto done;
        }
        json_t *init_obj = json_object();
        if (!init_obj || json_object_set_new(body, "init", init_obj) != 0 ||
            json_object_set(init_obj, "config", config) != 0 ||
            (tokenizer->seen &&
             json_object_set_new(init_obj, "tokenizer", json_string(tokenizer->value)) != 0))
            goto oom;
    }
    if ((rc = cli_call_json(c, "POST", "/v1/models", body, &doc, &raw)) != CLI_OK) goto done;
    if (c->json) {
        cli_print_raw(&raw);
    } else {
        char arch[128];
        arch_text(doc, arch, sizeof arch);
        printf("registered %s: '%s' (%s, %s)\n", chord_json_string_or(doc, "id", "?"),
               chord_json_string_or(doc, "name", ""), chord_json_string_or(doc, "source", "?"),
               arch);
    }
    goto done;
oom:
    rc = cli_fail(CLI_LOCAL, "out of memory");
done:
    free(text);
    json_decref(config);
    json_decref(body);
    json_decref(doc);
    chord_buf_free(&raw);
    cli_opts_free(opts);
    return rc;
}

static void model_row(const json_t *m, const char **cells, char (*buf)[CLI_CELL]) {
    arch_text(m, buf[3], CLI_CELL);
    cli_age_text(chord_json_string_or(m, "created_at", NULL), buf[5], CLI_CELL);
    cells[0] = chord_json_string_or(m, "id", NULL);
    cells[1] = chord_json_string_or(m, "name", NULL);
    cells[2] = chord_json_string_or(m, "source", NULL);
    cells[3] = buf[3];
    cells[4] = chord_json_string_or(m, "path", NULL);
    cells[5] = buf[5];
}

static int list(cli *c, int argc, char **argv) {
    static const char *const header[] = {"ID", "NAME", "SOURCE", "ARCH", "PATH", "AGE"};
    return cli_list_command(c, argc, argv, usage_list, "/v1/models", 6, header, model_row,
                            "no models");
}

int cli_models(cli *c, int argc, char **argv) {
    const char *action = argc > 1 ? argv[1] : "";
    if (strcmp(action, "add") == 0 || strcmp(action, "register") == 0)
        return add(c, argc - 1, argv + 1);
    if (strcmp(action, "list") == 0 || strcmp(action, "ls") == 0)
        return list(c, argc - 1, argv + 1);
    if (strcmp(action, "show") == 0 || strcmp(action, "get") == 0)
        return cli_show(c, argc - 1, argv + 1, "/v1/models/", usage_show, print_model);
    return cli_fail(CLI_USAGE, "usage: %s\n       %s\n       %s", usage_add, usage_list,
                    usage_show);
}
