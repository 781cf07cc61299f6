/* cmd_train.c — `chordd train`. Placeholder until its issue lands: says so and fails. */
#include <stdio.h>

#include "api/commands.h"

int cmd_train(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd train: not implemented yet\n");
    return 2;
}
