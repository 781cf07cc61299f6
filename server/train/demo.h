/* demo.h — the embedded default job: a random-init tiny Qwen2-style model trained with CHORD on
 * the built-in arithmetic task, with the embedded tokenizer. No downloads. Used by
 * `chordd train --demo`, `chordd --demo` and the tests. */
#ifndef CHORD_TRAIN_DEMO_H
#define CHORD_TRAIN_DEMO_H

#include "server/base/err.h"

/* The demo job document (static JSON text). Its data fields are "builtin:arith". */
const char *trainer_demo_job_json(void);

/* "builtin:arith" data references: 1 when `ref` names the built-in task. */
int trainer_data_is_builtin(const char *ref);
/* Writes the built-in task's prompts.jsonl, expert.jsonl and eval.jsonl (held-out problems)
 * into dir for `seed` (idempotent) and returns the path of `which` ("prompts", "expert" or
 * "eval") in out. */
int trainer_builtin_data(const char *dir, unsigned long long seed, const char *which, char *out,
                         size_t outlen, chord_err *err);

#endif
