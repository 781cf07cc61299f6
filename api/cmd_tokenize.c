/* cmd_tokenize.c — `chordd tokenize` and `chordd tokenizer`. Placeholder until the tokenizer lands. */
#include <stdio.h>

#include "api/commands.h"

int cmd_tokenize(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd tokenize: not implemented yet\n");
    return 2;
}

int cmd_tokenizer(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "chordd tokenizer: not implemented yet\n");
    return 2;
}
