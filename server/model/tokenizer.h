/* tokenizer.h — byte-level BPE tokenizers read from Hugging Face `tokenizer.json` (+
 * `tokenizer_config.json`): Qwen2/2.5/3, DeepSeek-V3, Llama 3 and GPT-2 style files.
 *
 * Encoding follows `tokenizers` step by step so ids equal `Tokenizer.encode(text).ids`:
 * added/special tokens are matched first (leftmost-longest; tokens with normalized=false on the raw
 * text, then the others on the normalized text), then the normalizer (NFC/NFD/NFKC/NFKD via
 * utf8proc, Sequence), the pre-tokenizer (Split with the file's regex run by PCRE2 with UTF+UCP,
 * ByteLevel, Sequence), the BPE model (merge ranks, heap-based, cached per pre-token) and, when
 * asked for, the post-processor (TemplateProcessing, ByteLevel, Roberta/Bert, Sequence) and
 * tokenizer_config's add_bos_token / add_eos_token.
 *
 * Not here: WordPiece/Unigram models, SentencePiece-style (Metaspace) pre-tokenizers, BPE dropout,
 * training (tokenizer_train.h), chat templates (chat.h). A loaded tokenizer is read-only except for
 * its pre-token cache, which is guarded, so one tokenizer may serve many threads. */
#ifndef CHORD_MODEL_TOKENIZER_H
#define CHORD_MODEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

typedef struct tok_tokenizer tok_tokenizer;

/* A growable id array. Zero-initialise it; tok_ids_free releases it. offsets is filled only when
 * TOK_ENCODE_OFFSETS is asked for: the byte offset in the input text where token i starts. */
typedef struct tok_ids {
    int32_t *ids;
    uint32_t *offsets;
    size_t n, cap;
} tok_ids;

void tok_ids_free(tok_ids *ids);
/* Appends one id (offset 0 if offsets are kept). Returns 0, or -1 when out of memory. */
int tok_ids_push(tok_ids *ids, int32_t id, uint32_t offset);

/* Loads DIR/tokenizer.json and, when present, DIR/tokenizer_config.json (and
 * DIR/chat_template.jinja). DIR may also be the path of a tokenizer.json file. */
int tok_load(const char *dir, tok_tokenizer **out, chord_err *err);
/* From memory: tokenizer_json (required) and config_json (NULL allowed). */
int tok_load_from_memory(const char *tokenizer_json, size_t tokenizer_len, const char *config_json,
                         size_t config_len, tok_tokenizer **out, chord_err *err);
/* The embedded default tokenizer of the demo models (server/model/default_tokenizer/, a 1024-token
 * byte-level BPE trained by `chordd tokenizer train` with ChatML special tokens). */
int tok_load_default(tok_tokenizer **out, chord_err *err);
/* The embedded default's file texts (tokenizer.json, tokenizer_config.json), e.g. to write them
 * next to a random-init model so that transformers loads the same tokenizer. */
const char *tok_default_tokenizer_json(size_t *len);
const char *tok_default_config_json(size_t *len);
void tok_free(tok_tokenizer *tok);
/* Writes the files the tokenizer was loaded from (tokenizer.json, tokenizer_config.json when it
 * had one, chat_template.jinja when its template came from there) into DIR, atomically, so a
 * checkpoint carries its tokenizer. DIR must exist. */
int tok_save(const tok_tokenizer *tok, const char *dir, chord_err *err);

enum {
    TOK_ENCODE_ADD_SPECIAL = 1, /* apply the post-processor and add_bos/add_eos of the config */
    TOK_ENCODE_OFFSETS = 2,     /* fill ids->offsets */
};

/* Encodes text[0..len) and appends the ids to *out. Invalid UTF-8 never fails: each maximal
 * invalid subsequence is read as U+FFFD (as Python's bytes.decode(errors="replace")). */
int tok_encode(const tok_tokenizer *tok, const char *text, size_t len, unsigned flags, tok_ids *out,
               chord_err *err);

/* Decodes ids to malloc'd, NUL-terminated UTF-8 (*len excludes the NUL). Special tokens are
 * dropped when skip_special is set. Ids out of range are an error naming the id. Bytes that do not
 * form UTF-8 become U+FFFD, as `tokenizers` does. */
int tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
               char **text, size_t *len, chord_err *err);

/* The bytes a Strip after the join may strip at the end (more is refused at load): what the output
 * sizes of tok_stream_push and tok_stream_finish allow for the characters it holds back. */
#define TOK_STREAM_MAX_HELD 4

/* Streaming decode for generation: push ids one at a time and get the text they complete; bytes of
 * a character still incomplete are held back until the next id (or tok_stream_finish), and so are
 * the characters a decoder's Strip removes at the end of the text (its `stop`) while they end it.
 * The concatenation of all outputs, tok_stream_finish's included, equals tok_decode of all ids. */
typedef struct tok_stream {
    const tok_tokenizer *tok;
    int skip_special;
    unsigned char pending[8];
    size_t n_pending;
    int started;  /* a token was decoded (Metaspace decodes the first one apart; without a
                     decoder the tokens after it are joined with a space) */
    int kept;     /* some text came out (a Strip decoder strips only at the start) */
    int stripped; /* characters a Strip decoder has removed at the start so far */
    int held;     /* copies of its character a Strip decoder holds back at the end so far */
} tok_stream;

void tok_stream_init(tok_stream *s, const tok_tokenizer *tok, int skip_special);
/* Writes the newly complete text of id to out (cap bytes; 3 * the token's byte length + 16
 * always suffices) and its length to *out_len (may be 0). */
int tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap, size_t *out_len,
                    chord_err *err);
/* Ends the stream: a held-back incomplete tail comes out as U+FFFD (after what a Strip held back,
 * then not last); what a Strip held back alone is dropped, as tok_decode strips it. out needs 8
 * bytes. */
void tok_stream_finish(tok_stream *s, char *out, size_t *out_len);

/* Vocabulary: size is the largest id + 1 (model vocabulary and added tokens). */
int32_t tok_vocab_size(const tok_tokenizer *tok);
/* The id of a token string as written in the vocabulary ("Ġhello", "<|im_end|>"), or -1. */
int32_t tok_token_to_id(const tok_tokenizer *tok, const char *token);
/* The token string of id ("Ġhello"), or NULL when the id is unused/out of range. */
const char *tok_id_to_token(const tok_tokenizer *tok, int32_t id);
/* The text bytes id decodes to (not NUL-terminated), or NULL. */
const char *tok_id_bytes(const tok_tokenizer *tok, int32_t id, size_t *len);
/* 1 when id is an added token marked special. */
int tok_is_special(const tok_tokenizer *tok, int32_t id);

/* From tokenizer_config.json: ids of bos/eos/pad (-1 when absent) and their text (NULL). */
int32_t tok_bos_id(const tok_tokenizer *tok);
int32_t tok_eos_id(const tok_tokenizer *tok);
int32_t tok_pad_id(const tok_tokenizer *tok);
const char *tok_bos_token(const tok_tokenizer *tok);
const char *tok_eos_token(const tok_tokenizer *tok);
/* The chat template text (config's "chat_template", or chat_template.jinja), or NULL. */
const char *tok_chat_template(const tok_tokenizer *tok);

/* The GPT-2 byte <-> unicode map used by ByteLevel: the UTF-8 of the character byte b is shown as
 * (1 or 2 bytes) into out; returns the length. */
int tok_byte_to_unicode(unsigned char b, char out[2]);

#endif
