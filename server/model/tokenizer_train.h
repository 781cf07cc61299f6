/* tokenizer_train.h — trains a small byte-level BPE tokenizer on a text corpus and writes it in
 * Hugging Face `tokenizer.json` format (what `chordd tokenizer train` runs; the demo models'
 * embedded default tokenizer comes from it).
 *
 * The trained file uses Qwen2/3's pipeline (NFC, the Qwen pre-tokenizer regex, which keeps digits
 * single, ByteLevel without prefix space), so it goes through exactly the code path of real
 * models and loads in `tokenizers`. Merges are learned greedily: the most frequent adjacent pair,
 * ties broken by the pair's bytes, so the same corpus always gives the same file.
 *
 * Not here: loading or encoding (tokenizer.h). */
#ifndef CHORD_MODEL_TOKENIZER_TRAIN_H
#define CHORD_MODEL_TOKENIZER_TRAIN_H

#include <stddef.h>

#include "server/base/err.h"

#define TOK_TRAIN_MAX_SPECIAL 64

typedef struct tok_train_options {
    int vocab_size;       /* every token: 256 bytes + merges + special tokens */
    int min_frequency;    /* stop merging when the best pair is rarer than this */
    const char **special; /* special tokens, added after the merges */
    int n_special;
} tok_train_options;

/* vocab_size 1024, min_frequency 2, special tokens <|endoftext|>, <|im_start|>, <|im_end|>. */
void tok_train_options_default(tok_train_options *opt);

/* Trains on text[0..len) (invalid UTF-8 is read as U+FFFD) and returns the tokenizer.json and
 * tokenizer_config.json texts (malloc'd). With <|im_start|> and <|im_end|> among the special
 * tokens the config carries a ChatML chat template and eos <|im_end|>. */
int tok_train(const char *text, size_t len, const tok_train_options *opt, char **tokenizer_json,
              char **config_json, chord_err *err);

/* Reads corpus_path, trains, and writes out_dir/tokenizer.json + tokenizer_config.json
 * atomically (out_dir is created). */
int tok_train_file(const char *corpus_path, const tok_train_options *opt, const char *out_dir,
                   chord_err *err);

#endif
