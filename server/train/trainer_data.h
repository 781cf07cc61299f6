/* trainer_data.h — the trainer's view of a JSONL dataset: records addressed by a cursor through a
 * seeded per-epoch permutation, tokenized on demand with the job's chat template.
 *
 * A cursor is the number of records consumed since the start of the job; record = perm_e[c % n]
 * with e = c / n, so a checkpoint stores two integers and a resumed job reads the same records.
 * The file is indexed once (line offsets) and read with pread: a dataset larger than memory is
 * fine. Opening checks every record once (a JSON object with "prompt" or "messages", and a
 * "response" for expert data), so a bad line fails the job at once with its line number; what
 * only tokenization can find (e.g. a messages list with no assistant turn) fails the step that
 * reads it, with the line number too. Not here: the service's upload validation (dataset.h). */
#ifndef CHORD_TRAIN_TRAINER_DATA_H
#define CHORD_TRAIN_TRAINER_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/chat.h"
#include "server/model/tokenizer.h"

typedef enum { TRAINER_DATA_PROMPTS = 0, TRAINER_DATA_EXPERT = 1 } trainer_data_kind;

typedef struct trainer_dataset {
    int fd;
    char *path;
    trainer_data_kind kind;
    int64_t n;         /* records (non-blank lines) */
    uint64_t *offsets; /* (n + 1): start of record i; offsets[n] = file size */
    int64_t *lines;    /* (n): 1-based line number of record i */
    uint64_t seed;
    int64_t perm_epoch; /* epoch the cached permutation belongs to (-1 = none) */
    int64_t *perm;      /* (n) */
} trainer_dataset;

/* One tokenized record. Prompts: ids of the rendered prompt with the generation prompt,
 * text = the user's prompt, answer = ground truth. Expert: ids of the whole demonstration, mask
 * (len) = 1 on the tokens to learn (the assistant's). */
typedef struct trainer_item {
    int32_t *ids;
    int len;
    uint8_t *mask;
    char *text;
    char *answer;
} trainer_item;

int trainer_dataset_open(trainer_dataset *ds, const char *path, trainer_data_kind kind,
                         uint64_t seed, chord_err *err);
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
