/* tokenizer_internal.h — the tokenizer's data layout and helpers shared by tokenizer.c,
 * tokenizer_train.c and chat.c. Not a public interface: use tokenizer.h. */
#ifndef CHORD_MODEL_TOKENIZER_INTERNAL_H
#define CHORD_MODEL_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "server/model/tokenizer.h"

/* A growable byte buffer, always NUL-terminated once non-empty. */
typedef struct tok_buf {
    char *data;
    size_t len, cap;
} tok_buf;

int tok_buf_reserve(tok_buf *b, size_t extra);
int tok_buf_append(tok_buf *b, const void *data, size_t n);
void tok_buf_free(tok_buf *b);

enum { UTF8_OK = 0, UTF8_BAD = 1, UTF8_SHORT = 2 };
int tok_utf8_scan(const unsigned char *s, size_t n, size_t *len, uint32_t *cp);
int tok_utf8_append_lossy(tok_buf *out, const unsigned char *s, size_t n);
uint64_t tok_hash_bytes(const void *data, size_t n);

#define TOK_MAX_NORMALIZERS 8
#define TOK_MAX_STEPS 8
#define TOK_MAX_POST 8

enum { TOK_STEP_SPLIT = 1, TOK_STEP_BYTELEVEL = 2 };
enum {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
};
enum { TOK_DECODER_NONE = 0, TOK_DECODER_BYTELEVEL = 1 };

struct pcre2_real_code_8;

typedef struct tok_pretok_step {
    int kind;
    int behavior;
    int invert;
    int add_prefix_space;         /* ByteLevel */
    int use_regex;                /* ByteLevel */
    struct pcre2_real_code_8 *re; /* Split's regex, or ByteLevel's GPT-2 regex when use_regex */
} tok_pretok_step;

typedef struct tok_added {
    const char *content; /* points at tok_str[id] */
    uint32_t len;
    int32_t id;
    int special, lstrip, rstrip, single_word, normalized;
} tok_added;

typedef struct tok_merge_entry {
    uint64_t key; /* (a << 32 | b) with bit 63 set; 0 = empty slot */
    uint32_t rank;
    int32_t new_id;
} tok_merge_entry;

struct tok_cache;
struct tok_trie;

struct tok_tokenizer {
    int32_t vocab_size;   /* largest id + 1 */
    size_t n_model_vocab; /* entries of model.vocab */
    size_t n_merges;
    char **tok_str; /* (vocab_size) token strings as in the file; NULL for holes */
    uint32_t *tok_len;
    char **dec; /* (vocab_size) bytes each id decodes to */
    uint32_t *dec_len;
    unsigned char *special; /* (vocab_size) 1 for special added tokens */
    int32_t *vmap;          /* open addressing: id + 1, 0 = empty */
    size_t vmap_mask;
    tok_merge_entry *mmap;
    size_t mmap_mask;
    int ignore_merges, byte_fallback;
    int32_t unk_id;
    int byte_level;          /* a ByteLevel pre-tokenizer maps bytes to symbols */
    int32_t byte_to_id[256]; /* the id of each byte's symbol, -1 when missing */
    int n_norm;
    int norm_flags[TOK_MAX_NORMALIZERS]; /* utf8proc options per normalizer */
    int n_steps;
    tok_pretok_step steps[TOK_MAX_STEPS];
    tok_added *added;
    size_t n_added;
    struct tok_trie *trie_raw;  /* added tokens matched on the raw text (normalized=false) */
    struct tok_trie *trie_norm; /* added tokens matched on normalized text */
    int decoder;
    int32_t post_prefix[TOK_MAX_POST], post_suffix[TOK_MAX_POST];
    int n_post_prefix, n_post_suffix;
    /* tokenizer_config.json */
    int32_t bos_id, eos_id, pad_id;
    char *bos_text, *eos_text, *pad_text;
    int add_bos, add_eos;
    char *chat_template;
    struct tok_cache *cache;
    /* the source texts, for tok_save */
    char *src_tokenizer, *src_config, *src_template;
    size_t src_tokenizer_len, src_config_len, src_template_len;
};

int32_t tok_vocab_lookup(const tok_tokenizer *t, const char *s, size_t n);

#endif
