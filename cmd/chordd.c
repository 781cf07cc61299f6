/* chordd.c — the chord binary: the daemon (no subcommand = serve) and its one-shot commands.
 * This file only dispatches; each command lives in cmd/cmd_*.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/commands.h"

static const struct {
    const char *name;
    int (*run)(int, char **);
    const char *help;
} commands[] = {
    {"serve", cmd_serve, "run the server (the default)"},
    {"train", cmd_train, "run one training job in the foreground: chordd train JOB.json"},
    {"eval", cmd_eval, "accuracy / avg@k / pass@k of a model: --model DIR --data EVAL.jsonl"},
    {"init-model", cmd_init_model,
     "write a random-init model: --config CONFIG.json --seed N --out DIR"},
    {"score", cmd_score, "per-token log-probs of JSON lines of token ids: --model DIR"},
    {"merge-lora", cmd_merge_lora,
     "a LoRA adapter merged into its base: --adapter DIR --out DIR [--base DIR]"},
    {"tokenize", cmd_tokenize, "text to ids (or --decode ids to text): --tokenizer DIR"},
    {"tokenizer", cmd_tokenizer, "tokenizer tools: chordd tokenizer train ..."},
};

static void usage(FILE *out) {
    fprintf(out,
            "usage: chordd [COMMAND] [OPTIONS]\n\n"
            "chord post-trains language models with CHORD (SFT + GRPO with dynamic weighting).\n"
            "With no command, chordd serves its REST and gRPC APIs.\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-12s %s\n", commands[i].name, commands[i].help);
    fprintf(out, "\n`chordd COMMAND --help` describes a command's options.\n");
}

/* OpenMP's default wait policy spins between parallel regions; chord's CPU ops are many and
 * short, so on a shared or busy machine the spinning threads take the cores from the ones doing
 * the work (a 30-step job measured 12x slower, docs/training.md). libgomp reads the policy from
 * the environment before main runs, so chordd re-executes itself once with a passive policy
 * unless the user chose one. */
static void prefer_passive_openmp(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("CHORD_NO_REEXEC")) return;
    if (setenv("OMP_WAIT_POLICY", "passive", 1) != 0) return;
    setenv("CHORD_NO_REEXEC", "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the default policy */
}

int main(int argc, char **argv) {
    prefer_passive_openmp(argv);
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
                      strcmp(argv[1], "help") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && argv[1][0] != '-') {
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
        fprintf(stderr, "chordd: unknown command '%s'\n\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return cmd_serve(argc, argv);
}
