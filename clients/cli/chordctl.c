/* chordctl.c — the command-line client of chordd (docs/cli.md): takes the global options
 * (--server, --json, anywhere on the line), finds the server (--server, else $CHORD_SERVER,
 * else http://127.0.0.1:8080) and dispatches to a command file. It is the client's composition
 * root; it links chord_base and libcurl, never the server's libraries. */
#include <langinfo.h>
#include <locale.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clients/cli/cli.h"
#include "cmd/commands.h"
#include "server/base/fileutil.h"

static const char usage_text[] =
    "usage: chordctl [--server URL] [--json] COMMAND ...\n"
    "\n"
    "  datasets upload FILE --kind prompts|expert|eval [--name NAME]\n"
    "  datasets list [--limit N] [--offset N]\n"
    "  datasets show ID\n"
    "  models add PATH [--name NAME]        a model directory under the server's --models-root\n"
    "  models add --init CONFIG.json [--tokenizer DIR] [--name NAME]\n"
    "  models list [--limit N] [--offset N]\n"
    "  models show ID\n"
    "  jobs create FILE|- [--watch]         a job document (docs/job.md)\n"
    "  jobs list [--state STATE] [--limit N] [--offset N]\n"
    "  jobs show ID\n"
    "  jobs watch ID [--since-step N]       live progress until the job ends\n"
    "  jobs cancel ID\n"
    "  rollout (--model ID|DIR | --checkpoint JOB[:STEP]) --prompt TEXT... [--answer A...]\n"
    "          [-n N] [--temperature T] [--top-p P] [--max-tokens N] [--seed S] [--no-wait]\n"
    "  rollout FILE|-                       a rollout request document\n"
    "  rollout show ID\n"
    "  checkpoints list JOB\n"
    "  checkpoints download JOB [STEP] [--out DIR] [--file PATH [-o FILE|-]]\n"
    "\n"
    "  --server URL   chordd's address (default $CHORD_SERVER, else http://127.0.0.1:8080)\n"
    "  --json         print the server's JSON (one document; jobs watch: one event per line)\n"
    "  --token-file F a bearer token for a server with --auth-token-file (or $CHORD_TOKEN)\n"
    "  --cacert FILE  the CA certificate of an https server (or $CHORD_CACERT)\n"
    "\n"
    "exit status: 0 ok, 1 the server refused (its message on stderr), 2 usage error,\n"
    "3 cannot connect, 4 a local file could not be read or written, 5 the watched job or the\n"
    "rollout ended failed or cancelled (docs/cli.md)\n";

static int set_server(cli *c, const char *url) {
    size_t len = strlen(url);
    while (len && url[len - 1] == '/')
        len--;
    if (len == 0 || len >= sizeof c->server)
        return cli_fail(CLI_USAGE, "--server: not a URL: '%s'", url);
    /* a bare host:port means http:// (what `--http` of chordd was given) */
    if (!strstr(url, "://")) {
        if (len + 7 >= sizeof c->server)
            return cli_fail(CLI_USAGE, "--server: not a URL: '%s'", url);
        snprintf(c->server, sizeof c->server, "http://%.*s", (int)len, url);
    } else {
        snprintf(c->server, sizeof c->server, "%.*s", (int)len, url);
    }
    return CLI_OK;
}

/* The token: the first line of the file (surrounding blanks dropped). */
static int read_token(cli *c, const char *file) {
    char *text = NULL;
    size_t len = 0;
    chord_err err = {0};
    if (chord_read_file(file, &text, &len, &err) != 0)
        return cli_fail(CLI_LOCAL, "--token-file: %s", err.msg);
    const char *start = text + strspn(text, " \t\r\n");
    size_t n = strcspn(start, " \t\r\n");
    int ok = n > 0 && n < sizeof c->token;
    if (ok) snprintf(c->token, sizeof c->token, "%.*s", (int)n, start);
    memset(text, 0, len);
    free(text);
    return ok ? CLI_OK : cli_fail(CLI_USAGE, "--token-file: %s holds no token", file);
}

/* Takes the global options out of argv (they may stand anywhere, as kubectl's do). */
static int take_globals(cli *c, int *argc, char **argv, int *help) {
    int out = 1;
    const char *server = getenv("CHORD_SERVER");
    if (!server || !*server) server = "http://127.0.0.1:8080";
    const char *token_file = NULL, *token = getenv("CHORD_TOKEN");
    c->cacert = getenv("CHORD_CACERT");
    if (c->cacert && !*c->cacert) c->cacert = NULL;
    int only_positional = 0, rc;
    for (int i = 1; i < *argc; i++) {
        const char *a = argv[i];
        if (!only_positional && strcmp(a, "--") == 0) {
            only_positional = 1; /* kept: the command's parser sees it too */
        } else if (!only_positional && strcmp(a, "--json") == 0) {
            c->json = 1;
            continue;
        } else if (!only_positional && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            *help = 1;
            continue;
        } else if (!only_positional && strcmp(a, "--server") == 0) {
            if (i + 1 >= *argc) return cli_fail(CLI_USAGE, "--server needs a value");
            server = argv[++i];
            continue;
        } else if (!only_positional && strncmp(a, "--server=", 9) == 0) {
            server = a + 9;
            continue;
        } else if (!only_positional &&
                   (strcmp(a, "--token-file") == 0 || strcmp(a, "--cacert") == 0)) {
            if (i + 1 >= *argc) return cli_fail(CLI_USAGE, "%s needs a value", a);
            if (a[2] == 't')
                token_file = argv[++i];
            else
                c->cacert = argv[++i];
            continue;
        }
        argv[out++] = argv[i];
    }
    *argc = out;
    argv[out] = NULL;
    if (token_file) {
        if ((rc = read_token(c, token_file)) != CLI_OK) return rc;
    } else if (token && *token) {
        if (strlen(token) >= sizeof c->token || strpbrk(token, " \t\r\n"))
            return cli_fail(CLI_USAGE, "CHORD_TOKEN: not a token");
        snprintf(c->token, sizeof c->token, "%s", token);
    }
    return set_server(c, server);
}

int main(int argc, char **argv) {
    cli c = {0};
    int help = 0, rc;
    cmd_arg_program = "chordctl";
    setlocale(LC_CTYPE, "");
    c.utf8 = strcmp(nl_langinfo(CODESET), "UTF-8") == 0;
    c.tty_out = isatty(STDOUT_FILENO);
    c.tty_err = isatty(STDERR_FILENO);
    if ((rc = take_globals(&c, &argc, argv, &help)) != CLI_OK) return rc;
    if (argc < 2 || help) {
        fputs(usage_text, help ? stdout : stderr);
        return help ? CLI_OK : CLI_USAGE;
    }
    if (strcmp(argv[1], "version") == 0) {
        printf("chordctl 0.1.0 (%s)\n", curl_version());
        return CLI_OK;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return cli_fail(CLI_LOCAL, "libcurl could not start");
    if (!(c.curl = curl_easy_init())) {
        curl_global_cleanup();
        return cli_fail(CLI_LOCAL, "libcurl could not start");
    }
    const char *cmd = argv[1];
    int sub_argc = argc - 1;
    char **sub_argv = argv + 1;
    if (strcmp(cmd, "datasets") == 0 || strcmp(cmd, "dataset") == 0)
        rc = cli_datasets(&c, sub_argc, sub_argv);
    else if (strcmp(cmd, "models") == 0 || strcmp(cmd, "model") == 0)
        rc = cli_models(&c, sub_argc, sub_argv);
    else if (strcmp(cmd, "jobs") == 0 || strcmp(cmd, "job") == 0)
        rc = cli_jobs(&c, sub_argc, sub_argv);
    else if (strcmp(cmd, "rollout") == 0 || strcmp(cmd, "rollouts") == 0)
        rc = cli_rollout(&c, sub_argc, sub_argv);
    else if (strcmp(cmd, "checkpoints") == 0 || strcmp(cmd, "checkpoint") == 0)
        rc = cli_checkpoints(&c, sub_argc, sub_argv);
    else {
        cli_fail(CLI_USAGE, "unknown command '%s'", cmd);
        fputs(usage_text, stderr);
        rc = CLI_USAGE;
    }
    curl_easy_cleanup(c.curl);
    curl_global_cleanup();
    fflush(stdout);
    return rc;
}
