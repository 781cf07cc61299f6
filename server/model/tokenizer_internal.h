/* tokenizer_internal.h — the tokenizer's data layout and helpers shared by tokenizer.c,
 * tokenizer_train.c and chat.c. Not a public interface: use tokenizer.h. */
#ifndef CHORD_MODEL_TOKENIZER_INTERNAL_H
#define CHORD_MODEL_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/buf.h"
#include "server/base/utf8.h"
#include "server/model/tokenizer.h"

uint64_t tok_hash_bytes(const void *data, size_t n);

#define TOK_MAX_NORMALIZERS 8
#define TOK_MAX_STEPS 8
#define TOK_MAX_POST 8

/* Pre-tokenizer steps. Digits, Whitespace, WhitespaceSplit, Punctuation, BertPreTokenizer and
 * CharDelimiterSplit are Splits with a regex that finds the same matches as the crate's character
 * predicate (one character per match); Metaspace rewrites its pieces (spaces to the replacement
 * character, the prepend scheme) before it splits them. */
enum { TOK_STEP_SPLIT = 1, TOK_STEP_BYTELEVEL = 2, TOK_STEP_METASPACE = 3 };
enum { TOK_PREPEND_ALWAYS = 0, TOK_PREPEND_FIRST, TOK_PREPEND_NEVER };
enum {
    TOK_SPLIT_ISOLATED = 0,
    TOK_SPLIT_REMOVED,
    TOK_SPLIT_MERGED_PREV,
    TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS,
};
enum { TOK_DECODER_NONE = 0, TOK_DECODER_BYTELEVEL = 1, TOK_DECODER_CHAIN = 2 };
/* Normalizers: the Unicode forms (utf8proc), and the ones that need the general path. */
enum {
    TOK_NORM_UNICODE = 0,
    TOK_NORM_LOWERCASE,
    TOK_NORM_STRIP,
    TOK_NORM_REPLACE,
    TOK_NORM_PREPEND,
};

struct pcre2_real_code_8;

typedef struct tok_pretok_step {
    int kind;
    int behavior;
    int invert;
    int add_prefix_space;         /* ByteLevel */
    int use_regex;                /* ByteLevel */
    struct pcre2_real_code_8 *re; /* Split's regex, or ByteLevel's GPT-2 regex when use_regex */
    char replacement[8];          /* Metaspace: the replacement character's UTF-8 ("▁") */
    int replacement_len;
    int prepend_scheme; /* Metaspace: TOK_PREPEND_* */
    int split;          /* Metaspace: split before each replacement character */
} tok_pretok_step;

typedef struct tok_norm_op {
    int kind;        /* TOK_NORM_* */
    int flags;       /* utf8proc options (TOK_NORM_UNICODE) */
    int left, right; /* Strip */
    char *content;   /* Replace's replacement, Prepend's text */
    size_t content_len;
    struct pcre2_real_code_8 *re; /* Replace's pattern (a String is compiled as a literal) */
} tok_norm_op;

enum {
    TOK_DEC_BYTELEVEL = 1,
    TOK_DEC_METASPACE,
    TOK_DEC_REPLACE,
    TOK_DEC_BYTEFALLBACK,
    TOK_DEC_FUSE,
    TOK_DEC_STRIP,
};
#define TOK_MAX_DEC_OPS 8

typedef struct tok_dec_op {
    int kind;                /* TOK_DEC_* */
    char *pattern, *content; /* Replace (a literal pattern); Metaspace: the replacement; Strip:
                                the character (pattern) */
    size_t pattern_len, content_len;
    int start, stop;   /* Strip: how many characters at most, at each end */
    int prepend_first; /* Metaspace: prepend_scheme is not "never": the first token loses them */
} tok_dec_op;

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
    int ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;
    int byte_level;          /* a ByteLevel pre-tokenizer maps bytes to symbols */
    int32_t byte_to_id[256]; /* the id of each byte's symbol, -1 when missing */
    int n_norm;
    tok_norm_op norm[TOK_MAX_NORMALIZERS];
    int norm_general; /* some normalizer is not a Unicode form: the general (slower) path */
    int n_steps;
    tok_pretok_step steps[TOK_MAX_STEPS];
    tok_added *added;
    size_t n_added;
    struct tok_trie *trie_raw;  /* added tokens matched on the raw text (normalized=false) */
    struct tok_trie *trie_norm; /* added tokens matched on normalized text */
    int decoder;                /* TOK_DECODER_*: CHAIN is any decoder but a lone ByteLevel */
    /* CHAIN: the steps before the first fusing one (Fuse, ByteLevel) act per token and are folded
     * into dec[] (but Metaspace's first-token rule); the ones after act on the whole text */
    tok_dec_op dec_ops[TOK_MAX_DEC_OPS];
    int n_dec_ops, n_dec_token_ops;
    int dec_bytelevel;         /* the chain has a ByteLevel step: bytes, then lossy UTF-8 */
    int dec_first_differs;     /* a per-token step treats the first token apart (Metaspace) */
    unsigned char *byte_token; /* (vocab_size) 1 when ByteFallback decodes id to one byte */
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
