/* commands.h — chordd's subcommands. Each takes the arguments after its name (argv[0] is the
 * subcommand) and returns the process exit status. */
#ifndef CHORD_CMD_COMMANDS_H
#define CHORD_CMD_COMMANDS_H

int cmd_serve(int argc, char **argv);      /* cmd/cmd_serve.c */
int cmd_init_model(int argc, char **argv); /* cmd/cmd_model.c */
int cmd_score(int argc, char **argv);      /* cmd/cmd_model.c */
int cmd_merge_lora(int argc, char **argv); /* cmd/cmd_model.c */
int cmd_tokenize(int argc, char **argv);   /* cmd/cmd_tokenize.c */
int cmd_tokenizer(int argc, char **argv);  /* cmd/cmd_tokenize.c: `tokenizer train` */
int cmd_train(int argc, char **argv);      /* cmd/cmd_train.c */
int cmd_eval(int argc, char **argv);       /* cmd/cmd_eval.c */

/* Number arguments (cmd_args.c): 0, or -1 after a message on stderr naming the flag and the
 * range, when text is not a whole number (a finite number) in [lo, hi]. */
extern const char *cmd_arg_program; /* the name the messages start with: "chordd" */
int cmd_arg_long(const char *flag, const char *text, long lo, long hi, long *out);
int cmd_arg_double(const char *flag, const char *text, double lo, double hi, double *out);

/* `chordd <command> ... --device cuda:all` outside mpirun on a host with gpus > 1 GPUs
 * (cmd_ranks.c): the same command again under `mpirun -np <gpus>` with --device cuda (each
 * rank takes cuda:<its rank on the host>). Returns only on failure (the exit status). */
int cmd_relaunch_per_gpu(const char *command, int argc, char **argv, int gpus);

#endif
