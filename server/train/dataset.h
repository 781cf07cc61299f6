/* dataset.h — streaming readers for the JSONL datasets a job trains on.
 *
 * Two kinds, one record per line (blank lines are skipped, a UTF-8 BOM is allowed, fields other
 * than those below are ignored):
 *   DS_PROMPTS (RL prompts, eval sets): {"prompt": str, "answer": str|number}
 *                                       or {"messages": [...], "answer": str|number}
 *   DS_EXPERT  (SFT demonstrations):    {"prompt": str, "response": str}
 *                                       or {"messages": [...]} with at least one assistant turn
 * messages follow chat.h (role system/user/assistant/tool, content a string or text parts); RL
 * prompt messages must not end with an assistant turn.
 *
 * The file is read line by line (a file larger than memory is fine). A bad line is an error
 * "PATH:LINE: what is wrong", and the reader has moved past it, so a caller may skip it. A cursor
 * (byte offset, line, record index) saved with a checkpoint resumes reading exactly there.
 *
 * Not here: tokenization (chat.h, tokenizer.h), shuffling, the storage of uploaded datasets. */
#ifndef CHORD_TRAIN_DATASET_H
#define CHORD_TRAIN_DATASET_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/chat.h"

typedef enum { DS_PROMPTS = 1, DS_EXPERT = 2 } ds_kind;

typedef struct ds_record {
    uint64_t line;          /* 1-based line of the file */
    uint64_t index;         /* 0-based record number (bad lines are not counted) */
    char *prompt;           /* the "prompt" form, else NULL */
    char *response;         /* DS_EXPERT "prompt"/"response" form, else NULL */
    char *answer;           /* DS_PROMPTS: the ground truth as text (42 → "42") */
    chat_message *messages; /* the "messages" form, else NULL */
    size_t n_messages;
} ds_record;

/* Where the next read starts. */
typedef struct ds_cursor {
    uint64_t offset; /* byte offset of the next line */
    uint64_t line;   /* lines consumed so far */
    uint64_t index;  /* records returned so far */
} ds_cursor;

typedef struct ds_reader ds_reader;

/* Opens path for reading records of kind. A missing file is CHORD_E_NOT_FOUND. */
int ds_open(const char *path, ds_kind kind, ds_reader **out, chord_err *err);
void ds_close(ds_reader *r);

/* Reads the next record into *rec (free it with ds_record_free). Returns 1 for a record, 0 at the
 * end of the file, -1 for a bad line (err says "PATH:LINE: ..."; the next call reads on). */
int ds_next(ds_reader *r, ds_record *rec, chord_err *err);
void ds_record_free(ds_record *rec);

ds_cursor ds_tell(const ds_reader *r);
/* Moves to a cursor from ds_tell (of this file). An offset past the end is an error. */
int ds_seek(ds_reader *r, ds_cursor c, chord_err *err);
int ds_rewind(ds_reader *r, chord_err *err);

/* Counts the records of the file from its start, checking every line; the first bad line is an
 * error. The reader's position is kept. */
int ds_count(ds_reader *r, size_t *n, chord_err *err);

/* The record as chat messages: "prompt" becomes a user turn, "response" an assistant turn;
 * "messages" are copied. For chat templates (chat_encode) and raw prompts alike. */
int ds_record_messages(const ds_record *rec, chat_message **msgs, size_t *n, chord_err *err);

#endif
