/* task.h — the built-in verifiable task of the embedded default: small arithmetic problems.
 *
 * A seeded generator of problems like "Compute 37+48." with the answer "85" and a short expert
 * demonstration "37+48=85 \boxed{85}". The demo and "builtin:arith" train on worked solutions
 * instead ("37+48: 7+8+0=15, 3+4+1=8. \boxed{85}", server/train/demo.c): a tiny model does not
 * generalise from the short form (docs/training.md has the runs). Problems are drawn by (seed, split, index), so any problem can
 * be regenerated alone; the held-out split is disjoint from the training split by problem: a
 * fixed hash of (a, op, b), independent of the seed, puts every problem in exactly one split.
 * Writers produce the same JSONL files users upload ({"prompt","answer"} for RL prompts and
 * eval, {"prompt","response"} for expert data) and a plain-text corpus for the demo tokenizer,
 * so the built-in task goes through the same data path as user data.
 *
 * Not here: scoring responses (reward.h's math_boxed does that), tokenization, the chat template.
 */
#ifndef CHORD_TRAIN_TASK_H
#define CHORD_TRAIN_TASK_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

enum { TASK_OP_ADD = 1, TASK_OP_SUB = 2, TASK_OP_MUL = 4 };

typedef enum { TASK_SPLIT_TRAIN = 0, TASK_SPLIT_HELDOUT = 1 } task_split;

/* Difficulty knobs. */
typedef struct task_arith_config {
    int ops;             /* TASK_OP_* mask */
    int min_digits;      /* digits of each operand of + and − (and of the left operand of ×) */
    int max_digits;      /* 1..9 */
    int mul_digits;      /* digits of the right operand of × (1 = a single digit 2..9) */
    int allow_negative;  /* 1: a − b may be negative; 0: operands ordered so a >= b */
    int heldout_percent; /* share of all problems reserved for the held-out split, 1..50 */
} task_arith_config;

#define TASK_TEXT_MAX 96

typedef struct task_problem {
    int64_t a, b;
    char op;                      /* '+', '-' or '*' */
    char prompt[TASK_TEXT_MAX];   /* "Compute 37+48." */
    char answer[32];              /* "85" */
    char response[TASK_TEXT_MAX]; /* "37+48=85 \boxed{85}" */
} task_problem;

/* The embedded default: 1–2 digit addition and subtraction, no negatives, 10% held out. */
void task_arith_default(task_arith_config *cfg);
/* Names the bad knob ("task.max_digits: must be in [min_digits, 9]"). */
int task_arith_check(const task_arith_config *cfg, chord_err *err);

/* The split a problem belongs to (a fixed hash; the same for every seed). */
task_split task_arith_split_of(const task_arith_config *cfg, int64_t a, char op, int64_t b);

/* Problem number `index` of `split` for `seed`; deterministic. Fails only on a bad config or
 * when the problem space is too small to draw from the split. */
int task_arith_problem(const task_arith_config *cfg, uint64_t seed, task_split split,
                       uint64_t index, task_problem *out, chord_err *err);

/* Fills prompt / answer / response from a, op, b. */
void task_arith_format(task_problem *p);

/* JSONL writers (atomic): problems 0..n−1 of split for seed.
 * prompts: {"prompt": ..., "answer": ...} per line (RL prompts, eval sets);
 * expert:  {"prompt": ..., "response": ...} per line (SFT demonstrations). */
int task_write_prompts_jsonl(const char *path, const task_arith_config *cfg, uint64_t seed,
                             task_split split, size_t n, chord_err *err);
int task_write_expert_jsonl(const char *path, const task_arith_config *cfg, uint64_t seed,
                            task_split split, size_t n, chord_err *err);
/* A plain-text corpus for training the demo tokenizer: for n training problems, the prompt and
 * the response on one line each (every character the task uses appears). */
int task_write_corpus(const char *path, const task_arith_config *cfg, uint64_t seed, size_t n,
                      chord_err *err);

/* The built-in task's files in dir (created if needed), for the embedded default and demos:
 *   dir/prompts.jsonl  n_prompts training problems (seed)          {"prompt","answer"}
 *   dir/expert.jsonl   n_expert training problems (seed + 1)       {"prompt","response"}
 *   dir/eval.jsonl     n_eval held-out problems (seed + 2)         {"prompt","answer"}
 *   dir/corpus.txt     the tokenizer corpus over n_prompts problems (seed + 3) */
int task_write_default_files(const char *dir, const task_arith_config *cfg, uint64_t seed,
                             size_t n_prompts, size_t n_expert, size_t n_eval, chord_err *err);

#endif
