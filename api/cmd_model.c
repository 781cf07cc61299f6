/* cmd_model.c — `chordd init-model` and `chordd score`. Placeholder until the engine lands. */
#include <stdio.h>

#include "api/commands.h"

int cmd_init_model(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd init-model: not implemented yet\n");
    return 2;
}

int cmd_score(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd score: not implemented yet\n");
    return 2;
}
