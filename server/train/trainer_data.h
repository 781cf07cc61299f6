/* trainer_data.h — the trainer's view of a JSONL dataset: records addressed by a cursor through a
 * seeded per-epoch permutation, tokenized on demand with the job's chat template.
 *
 * A cursor is the number of records consumed since the start of the job; record = perm_e[c % n]
 * with e = c / n, so a checkpoint stores two integers and a resumed job reads the same records.
 * The file is indexed once (offsets of the non-blank lines) and read with pread: a dataset
 * larger than memory is fine. Opening checks every record with the one record parser
 * (dataset.h, the rules uploads are checked by), so a bad line fails the job at once as
 * "PATH: line N: <field>: <what>"; only what tokenization can find (a demonstration whose
 * assistant turns render to no tokens) fails the step that reads it, with the line too. */
#ifndef CHORD_TRAIN_TRAINER_DATA_H
#define CHORD_TRAIN_TRAINER_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/chat.h"
#include "server/model/tokenizer.h"
#include "server/train/dataset.h"

typedef struct trainer_dataset {
    int fd;
    char *path;
    ds_kind kind;      /* DS_PROMPTS (prompts, eval) or DS_EXPERT */
    int64_t n;         /* records (non-blank lines) */
    uint64_t *offsets; /* (n + 1): start of record i; offsets[n] = file size */
    int64_t *lines;    /* (n): 1-based line number of record i */
    uint64_t seed;
    int64_t perm_epoch; /* epoch the cached permutation belongs to (-1 = none) */
    int64_t *perm;      /* (n) */
} trainer_dataset;

/* One tokenized record. Prompts: ids of the rendered prompt with the generation prompt,
 * text = the prompt a verifier sees (ds_prompt_text), answer = the ground truth (NULL: none).
 * Expert: ids of the whole demonstration, mask (len) = 1 on the tokens to learn (the
 * assistant's). */
typedef struct trainer_item {
    int32_t *ids;
    int len;
    uint8_t *mask;
    char *text;
    char *answer;
} trainer_item;

int trainer_dataset_open(trainer_dataset *ds, const char *path, ds_kind kind, uint64_t seed,
                         chord_err *err);
void trainer_dataset_close(trainer_dataset *ds);
/* The record at cursor c (shuffled order). */
int trainer_dataset_item(trainer_dataset *ds, int64_t cursor, const tok_tokenizer *tok,
                         const chat_template *tpl, int with_generation_prompt, trainer_item *out,
                         chord_err *err);
/* Record i in file order. */
int trainer_dataset_item_at(trainer_dataset *ds, int64_t i, const tok_tokenizer *tok,
                            const chat_template *tpl, int with_generation_prompt, trainer_item *out,
                            chord_err *err);
void trainer_item_free(trainer_item *it);

#endif
