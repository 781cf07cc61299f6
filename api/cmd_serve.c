/* cmd_serve.c — `chordd serve`. Placeholder until its issue lands: says so and fails. */
#include <stdio.h>

#include "api/commands.h"

int cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd serve: not implemented yet\n");
    return 2;
}
