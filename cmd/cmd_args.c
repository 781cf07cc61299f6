/* cmd_args.c — the subcommands' number arguments (commands.h): one rule for every flag, so
 * `--threads abc`, `--steps 1e3x` or an out-of-range value fails the same way everywhere,
 * naming the flag and the range, instead of becoming 0. chordctl (clients/cli) compiles this
 * file too, with its own name in cmd_arg_program. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cmd/commands.h"

const char *cmd_arg_program = "chordd";

int cmd_arg_long(const char *flag, const char *text, long lo, long hi, long *out) {
    char *end = NULL;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || errno || *end || v < lo || v > hi) {
        fprintf(stderr, "%s: %s: must be an integer in [%ld, %ld], got '%s'\n", cmd_arg_program,
                flag, lo, hi, text ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}

int cmd_arg_double(const char *flag, const char *text, double lo, double hi, double *out) {
    char *end = NULL;
    errno = 0;
    double v = text ? strtod(text, &end) : 0;
    if (!text || !*text || errno || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s: must be a number in [%g, %g], got '%s'\n", cmd_arg_program, flag,
                lo, hi, text ? text : "");
        return -1;
    }
    *out = v;
    return 0;
}
