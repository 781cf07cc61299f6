/* dataset.h — what a record of a chord dataset is: the one parser of JSONL lines and of the
 * prompts and answers of rollout requests. Upload validation (server/service_data.c), training
 * and evaluation (trainer_data.h), `chordd eval` and the rollout executor (server/jobs/rollout_request.c)
 * all call it, so a file that uploads trains, and one that is refused is refused with the same
 * words everywhere. docs/api.md ("Records") is the user's side of these rules.
 *
 * A line (1-based number N) is one record, or blank:
 *   - blank: only spaces, tabs and CRs (a UTF-8 BOM may start line 1): skipped, but counted in
 *     the line numbers;
 *   - otherwise one JSON object (duplicate keys, invalid UTF-8 and \u0000 are errors), with
 *     DS_PROMPTS (prompts and eval sets):
 *       {"prompt": non-empty string, "answer": A} or {"messages": [...], "answer": A}
 *       A is a string, a number (ds_answer_text) or null (no reference answer: for verifiers
 *       that need none; others score such a sample `error`). "answer" itself is required.
 *       Trailing assistant turns of "messages" are dropped (a reference solution, say: the
 *       model writes that turn); at least one other turn must remain.
 *     DS_EXPERT (demonstrations):
 *       {"prompt": non-empty string, "response": string} or {"messages": [...]} with at least
 *       one assistant turn ("response" is refused beside "messages").
 *   "prompt" and "messages" together are refused. Messages are chat.h's: role system, user,
 *   assistant or tool; content a string or OpenAI-style text parts [{"type": "text", "text":
 *   ...}] (joined); optional reasoning_content. Every other key is ignored.
 * Errors read "line N: <field>: <what>" (ds_parse_line) or "<field>: <what>"; the caller adds
 * the file or the request field in front.
 *
 * Not here: reading files (trainer_data.h indexes and reads them), tokenization (chat.h). */
#ifndef CHORD_TRAIN_DATASET_H
#define CHORD_TRAIN_DATASET_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/model/chat.h"

typedef enum { DS_PROMPTS = 1, DS_EXPERT = 2 } ds_kind;

typedef struct ds_record {
    chat_message *messages; /* the conversation: "prompt" is one user turn, "prompt" +
                               "response" a user and an assistant turn */
    size_t n_messages;
    char *answer; /* DS_PROMPTS: the ground truth as text; NULL for "answer": null */
} ds_record;

/* Parses line number `line` (text, len bytes, no newline needed). Returns 1 with *rec filled
 * (rec may be NULL: validation only), 0 for a blank line, -1 with err = "line N: ...". */
int ds_parse_line(ds_kind kind, const char *text, size_t len, uint64_t line, ds_record *rec,
                  chord_err *err);
/* The same rules on an already parsed JSON value (rec may be NULL). */
int ds_record_from_json(ds_kind kind, const json_t *v, ds_record *rec, chord_err *err);
void ds_record_free(ds_record *rec);

/* A prompt given as a non-empty string (one user turn) or as a conversation (the DS_PROMPTS
 * rules for "messages"): what rollout requests carry in prompts[i] / messages[i]. */
int ds_prompt_messages(const json_t *prompt, chat_message **msgs, size_t *n, chord_err *err);

/* The ground truth as text, the one rule for numbers (numtext.h: shortest round-trip, ECMAScript
 * layout; integers exactly): "4" -> "4", 4 -> "4", 0.1 -> "0.1", 1.0 -> "1", 1e21 -> "1e+21",
 * -0.0 -> "0". null gives *text = NULL. Another type is an error. *text is malloc'd. */
int ds_answer_text(const json_t *answer, char **text, chord_err *err);

/* What a verifier sees as the prompt: the content of the last user turn, else of the last
 * turn (NULL when n is 0). Points into msgs. */
const char *ds_prompt_text(const chat_message *msgs, size_t n);

#endif
