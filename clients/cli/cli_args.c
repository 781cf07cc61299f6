/* cli_args.c — the command line of one chordctl command: options anywhere among positional
 * arguments (`--kind prompts`, `--kind=prompts`, `-k prompts`, flags without a value), "--"
 * ending them, repeatable options keeping every value. Numbers go through the project's one
 * number rule (cmd/cmd_args.c), so a bad `--limit` is refused the way chordd refuses a bad
 * `--threads`.
 *
 * Not here: the global options (--server, --json: chordctl.c takes them out first). */
#include <stdlib.h>
#include <string.h>

#include "clients/cli/cli.h"
#include "cmd/commands.h"
#include "server/base/utf8.h"

static cli_opt *find_long(cli_opt *opts, const char *name, size_t len) {
    for (cli_opt *o = opts; o->name; o++)
        if (strlen(o->name) == len && strncmp(o->name, name, len) == 0) return o;
    return NULL;
}

static cli_opt *find_letter(cli_opt *opts, char letter) {
    for (cli_opt *o = opts; o->name; o++)
        if (o->letter && o->letter == letter) return o;
    return NULL;
}

static int record(cli_opt *o, const char *value) {
    const char **grown = realloc(o->values, (size_t)(o->seen + 1) * sizeof *grown);
    if (!grown) return cli_fail(CLI_LOCAL, "out of memory");
    o->values = grown;
    o->values[o->seen++] = value;
    o->value = value;
    return CLI_OK;
}

int cli_parse(int argc, char **argv, cli_opt *opts, const char **pos, int max_pos, int *npos,
              const char *usage) {
    int only_positional = 0;
    *npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        cli_opt *o = NULL;
        const char *value = NULL;
        if (!only_positional && strcmp(a, "--") == 0) {
            only_positional = 1;
            continue;
        }
        if (!only_positional && a[0] == '-' && a[1] == '-') {
            const char *eq = strchr(a, '=');
            o = find_long(opts, a, eq ? (size_t)(eq - a) : strlen(a));
            if (!o) {
                cli_fail(CLI_USAGE, "unknown option '%s'", a);
                goto usage;
            }
            if (eq) {
                if (!o->takes_value) {
                    cli_fail(CLI_USAGE, "%s takes no value", o->name);
                    goto usage;
                }
                value = eq + 1;
            }
        } else if (!only_positional && a[0] == '-' && a[1] && !a[2]) {
            o = find_letter(opts, a[1]);
            if (!o) {
                cli_fail(CLI_USAGE, "unknown option '%s'", a);
                goto usage;
            }
        }
        if (!o) {
            if (*npos >= max_pos) {
                cli_fail(CLI_USAGE, "unexpected argument '%s'", a);
                goto usage;
            }
            pos[(*npos)++] = a;
            continue;
        }
        if (o->takes_value && !value) {
            if (i + 1 >= argc) {
                cli_fail(CLI_USAGE, "%s needs a value", o->name);
                goto usage;
            }
            value = argv[++i];
        }
        if (record(o, o->takes_value ? value : "1") != CLI_OK) return CLI_LOCAL;
    }
    return CLI_OK;
usage:
    fprintf(stderr, "usage: %s\n", usage);
    return CLI_USAGE;
}

void cli_opts_free(cli_opt *opts) {
    for (cli_opt *o = opts; o->name; o++) {
        free(o->values);
        o->values = NULL;
    }
}

cli_opt *cli_opt_get(cli_opt *opts, const char *name) {
    cli_opt *o = find_long(opts, name, strlen(name));
    if (!o) abort(); /* a command asked for an option it did not declare: a bug */
    return o;
}

int cli_opt_long(cli_opt *o, long lo, long hi, long *out) {
    return cmd_arg_long(o->name, o->value, lo, hi, out) == 0 ? CLI_OK : CLI_USAGE;
}

int cli_opt_double(cli_opt *o, double lo, double hi, double *out) {
    return cmd_arg_double(o->name, o->value, lo, hi, out) == 0 ? CLI_OK : CLI_USAGE;
}

/* Builds "base?limit=N&offset=M" from --limit / --offset (checked by the number rule). */
int cli_paged_path(cli_opt *opts, const char *base, chord_buf *path) {
    cli_opt *limit = cli_opt_get(opts, "--limit"), *offset = cli_opt_get(opts, "--offset");
    long lim = 100, off = 0;
    if (limit->seen && cli_opt_long(limit, 1, 1000, &lim) != CLI_OK) return CLI_USAGE;
    if (offset->seen && cli_opt_long(offset, 0, 2147483647L, &off) != CLI_OK) return CLI_USAGE;
    if (cli_bufprintf(path, "%s%climit=%ld&offset=%ld", base, strchr(base, '?') ? '&' : '?', lim,
                      off) != 0)
        return cli_fail(CLI_LOCAL, "out of memory");
    return CLI_OK;
}

int cli_check_text(const char *flag, const char *text) {
    if (text && chord_utf8_valid(text, strlen(text))) return CLI_OK;
    return cli_fail(CLI_USAGE, "%s: not valid UTF-8", flag);
}
