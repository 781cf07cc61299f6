/* tokenizer.c — the byte-level BPE tokenizer behind tokenizer.h: loading tokenizer.json, encoding
 * (added tokens → normalizer → pre-tokenizer → BPE → post-processor) and decoding.
 *
 * Each step mirrors the Hugging Face `tokenizers` crate so ids match it exactly; where the crate
 * has a quirk (ByteLevel's add_prefix_space applies to every split piece, a stale heap entry is
 * accepted when it produces the same token) we keep the quirk. The BPE merges run on a linked list
 * with a binary heap (O(n log n) per word) and finished words are cached.
 *
 * Not here: chat templates (chat.c), training (tokenizer_train.c), WordPiece/Unigram. */
#include "server/model/tokenizer.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/model/tokenizer_internal.h"

/* ------------------------------------------------------------------------------------------ */
/* Small utilities                                                                             */

uint64_t tok_hash_bytes(const void *data, size_t n) {
    const unsigned char *s = data;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0x100000001B3ull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0xff51afd7ed558ccdull;
        h ^= h >> 32;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, s, n);
    h = (h ^ v) * 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    return h;
}

void tok_ids_free(tok_ids *ids) {
    free(ids->ids);
    free(ids->offsets);
    memset(ids, 0, sizeof *ids);
}

/* ids and offsets share one capacity: it grows once both have (they grow alike). */
static int ids_reserve(tok_ids *ids, size_t extra) {
    size_t need = ids->n + extra, cap_ids = ids->cap, cap_offsets = ids->cap;
    if (need <= ids->cap) return 0;
    int32_t *p = chord_array_grow(ids->ids, &cap_ids, need, sizeof *p);
    if (!p) return -1;
    ids->ids = p;
    uint32_t *o = chord_array_grow(ids->offsets, &cap_offsets, need, sizeof *o);
    if (!o) return -1;
    ids->offsets = o;
    ids->cap = cap_ids < cap_offsets ? cap_ids : cap_offsets;
    return 0;
}

int tok_ids_push(tok_ids *ids, int32_t id, uint32_t offset) {
    if (ids_reserve(ids, 1)) return -1;
    ids->ids[ids->n] = id;
    ids->offsets[ids->n] = offset;
    ids->n++;
    return 0;
}

/* Rust's char::is_whitespace (the White_Space property). */
static int is_white_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

static int is_alphanumeric(uint32_t c) {
    utf8proc_category_t k = utf8proc_category((utf8proc_int32_t)c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) ||
           (k >= UTF8PROC_CATEGORY_ND && k <= UTF8PROC_CATEGORY_NO);
}

/* ------------------------------------------------------------------------------------------ */
/* The GPT-2 byte <-> unicode table used by ByteLevel                                          */

static uint32_t byte_to_cp(unsigned char b) {
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174)) return b;
    /* the others map to 256, 257, ... in byte order */
    uint32_t n = 0;
    for (unsigned k = 0; k < b; k++)
        if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || (k >= 174))) n++;
    return 256 + n;
}

int tok_byte_to_unicode(unsigned char b, char out[2]) {
    uint32_t cp = byte_to_cp(b);
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

/* Code point → byte for the ByteLevel decoder, -1 when cp is not in the table. */
static int cp_to_byte_table[324];
static pthread_once_t cp_to_byte_once = PTHREAD_ONCE_INIT;

static void cp_to_byte_init(void) {
    for (int i = 0; i < 324; i++)
        cp_to_byte_table[i] = -1;
    for (int b = 0; b < 256; b++)
        cp_to_byte_table[byte_to_cp((unsigned char)b)] = b;
}

static int unicode_to_byte(uint32_t cp) {
    pthread_once(&cp_to_byte_once, cp_to_byte_init);
    return cp < 324 ? cp_to_byte_table[cp] : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Hash maps: vocabulary (token bytes → id), merges ((a, b) → rank, new id)                    */

static int vocab_map_init(tok_tokenizer *t, size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    t->vmap = calloc(cap, sizeof *t->vmap);
    if (!t->vmap) return -1;
    t->vmap_mask = cap - 1;
    return 0;
}

int32_t tok_vocab_lookup(const tok_tokenizer *t, const char *s, size_t n) {
    if (!t->vmap) return -1;
    uint64_t h = tok_hash_bytes(s, n);
    for (size_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        int32_t e = t->vmap[i];
        if (e == 0) return -1;
        int32_t id = e - 1;
        if (t->tok_len[id] == n && memcmp(t->tok_str[id], s, n) == 0) return id;
    }
}

/* Inserts id (its token string already stored); a duplicate string keeps the first id. */
static void vocab_map_insert(tok_tokenizer *t, int32_t id) {
    uint64_t h = tok_hash_bytes(t->tok_str[id], t->tok_len[id]);
    for (size_t i = h & t->vmap_mask;; i = (i + 1) & t->vmap_mask) {
        int32_t e = t->vmap[i];
        if (e == 0) {
            t->vmap[i] = id + 1;
            return;
        }
        int32_t o = e - 1;
        if (o == id) return;
        if (t->tok_len[o] == t->tok_len[id] &&
            memcmp(t->tok_str[o], t->tok_str[id], t->tok_len[id]) == 0) {
            t->vmap[i] = id + 1; /* later entries win, as a JSON object / HashMap insert does */
            return;
        }
    }
}

static uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) | (1ull << 63);
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static int merge_map_init(tok_tokenizer *t, size_t n) {
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    t->mmap = calloc(cap, sizeof *t->mmap);
    if (!t->mmap) return -1;
    t->mmap_mask = cap - 1;
    return 0;
}

/* Returns 1 and fills rank/new_id when (a, b) is a merge. */
static inline int merge_lookup(const tok_tokenizer *t, int32_t a, int32_t b, uint32_t *rank,
                               int32_t *new_id) {
    uint64_t k = pair_key(a, b);
    for (size_t i = mix64(k) & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        const tok_merge_entry *e = &t->mmap[i];
        if (e->key == 0) return 0;
        if (e->key == k) {
            *rank = e->rank;
            *new_id = e->new_id;
            return 1;
        }
    }
}

/* The first merge of a pair wins, as in `tokenizers` (later duplicates are ignored). */
static void merge_insert(tok_tokenizer *t, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    uint64_t k = pair_key(a, b);
    for (size_t i = mix64(k) & t->mmap_mask;; i = (i + 1) & t->mmap_mask) {
        tok_merge_entry *e = &t->mmap[i];
        if (e->key == 0) {
            e->key = k;
            e->rank = rank;
            e->new_id = new_id;
            return;
        }
        if (e->key == k) {
            /* HashMap::from_iter keeps the last value for a repeated key */
            e->rank = rank;
            e->new_id = new_id;
            return;
        }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* The pre-token cache: word bytes → ids (+ each token's byte length)                          */

#define CACHE_SLOTS 65536u
#define CACHE_MAX_ENTRIES 40000u
#define CACHE_MAX_WORD 255u

typedef struct cache_slot {
    uint64_t hash; /* 0 = empty */
    uint32_t key_off;
    uint32_t val_off;
    uint16_t key_len;
    uint16_t n_ids;
} cache_slot;

struct tok_cache {
    pthread_mutex_t lock;
    cache_slot *slots;
    uint32_t entries;
    char *keys;
    size_t keys_len, keys_cap;
    int32_t *vals;
    uint16_t *lens;
    size_t vals_len, vals_cap;
};

static struct tok_cache *cache_new(void) {
    struct tok_cache *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    pthread_mutex_init(&c->lock, NULL);
    c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
    c->keys_cap = (size_t)CACHE_MAX_ENTRIES * 12;
    c->keys = malloc(c->keys_cap);
    c->vals_cap = (size_t)CACHE_MAX_ENTRIES * 4;
    c->vals = malloc(c->vals_cap * sizeof *c->vals);
    c->lens = malloc(c->vals_cap * sizeof *c->lens);
    if (!c->slots || !c->keys || !c->vals || !c->lens) {
        free(c->slots);
        free(c->keys);
        free(c->vals);
        free(c->lens);
        pthread_mutex_destroy(&c->lock);
        free(c);
        return NULL;
    }
    return c;
}

static void cache_free(struct tok_cache *c) {
    if (!c) return;
    pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c->keys);
    free(c->vals);
    free(c->lens);
    free(c);
}

/* Looks word up; on a hit copies its ids/lens (at most cap) and returns their count, else -1.
 * Never blocks: a cache held by another thread counts as a miss. */
static int cache_get(struct tok_cache *c, uint64_t h, const char *w, size_t n, int32_t *ids,
                     uint16_t *lens, size_t cap) {
    if (!c || n > CACHE_MAX_WORD) return -1;
    if (pthread_mutex_trylock(&c->lock) != 0) return -1;
    int found = -1;
    h |= 1;
    for (uint32_t i = (uint32_t)(h >> 16) & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *s = &c->slots[i];
        if (s->hash == 0) break;
        if (s->hash == h && s->key_len == n && memcmp(c->keys + s->key_off, w, n) == 0) {
            if (s->n_ids <= cap) {
                memcpy(ids, c->vals + s->val_off, s->n_ids * sizeof *ids);
                memcpy(lens, c->lens + s->val_off, s->n_ids * sizeof *lens);
                found = s->n_ids;
            }
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static void cache_put(struct tok_cache *c, uint64_t h, const char *w, size_t n, const int32_t *ids,
                      const uint16_t *lens, size_t n_ids) {
    if (!c || n > CACHE_MAX_WORD || n_ids > 0xFFFF) return;
    if (pthread_mutex_trylock(&c->lock) != 0) return;
    if (c->entries >= CACHE_MAX_ENTRIES || c->keys_len + n > c->keys_cap ||
        c->vals_len + n_ids > c->vals_cap) {
        /* full: start over (a long-running server sees the text mix drift) */
        memset(c->slots, 0, CACHE_SLOTS * sizeof *c->slots);
        c->entries = 0;
        c->keys_len = 0;
        c->vals_len = 0;
    }
    h |= 1;
    for (uint32_t i = (uint32_t)(h >> 16) & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *s = &c->slots[i];
        if (s->hash == h && s->key_len == n && memcmp(c->keys + s->key_off, w, n) == 0) break;
        if (s->hash == 0) {
            memcpy(c->keys + c->keys_len, w, n);
            memcpy(c->vals + c->vals_len, ids, n_ids * sizeof *ids);
            memcpy(c->lens + c->vals_len, lens, n_ids * sizeof *lens);
            s->hash = h;
            s->key_off = (uint32_t)c->keys_len;
            s->key_len = (uint16_t)n;
            s->val_off = (uint32_t)c->vals_len;
            s->n_ids = (uint16_t)n_ids;
            c->keys_len += n;
            c->vals_len += n_ids;
            c->entries++;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
}

/* ------------------------------------------------------------------------------------------ */
/* Added tokens: a byte trie, matched leftmost-longest                                          */

typedef struct trie_node {
    int32_t child;   /* first child, -1 */
    int32_t sibling; /* next sibling, -1 */
    int32_t added;   /* index into t->added ending here, -1 */
    unsigned char byte;
} trie_node;

struct tok_trie {
    trie_node *nodes;
    size_t n, cap;
    unsigned char first[256]; /* 1 when some token starts with this byte */
};

static int trie_new_node(struct tok_trie *tr, unsigned char byte) {
    if (tr->n == tr->cap) {
        trie_node *p = chord_array_grow(tr->nodes, &tr->cap, tr->n + 1, sizeof *p);
        if (!p) return -1;
        tr->nodes = p;
    }
    trie_node *nd = &tr->nodes[tr->n];
    nd->child = nd->sibling = nd->added = -1;
    nd->byte = byte;
    return (int)tr->n++;
}

static int trie_insert(struct tok_trie *tr, const char *s, size_t n, int32_t added) {
    if (tr->n == 0 && trie_new_node(tr, 0) < 0) return -1;
    if (n == 0) return 0;
    tr->first[(unsigned char)s[0]] = 1;
    int32_t cur = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = tr->nodes[cur].child, found = -1;
        for (; c >= 0; c = tr->nodes[c].sibling)
            if (tr->nodes[c].byte == b) {
                found = c;
                break;
            }
        if (found < 0) {
            int nn = trie_new_node(tr, b);
            if (nn < 0) return -1;
            tr->nodes[nn].sibling = tr->nodes[cur].child;
            tr->nodes[cur].child = nn;
            found = nn;
        }
        cur = found;
    }
    if (tr->nodes[cur].added < 0) tr->nodes[cur].added = added;
    return 0;
}

/* Longest token starting at s[0..n): returns its added index and sets *len, or -1. */
static int32_t trie_longest(const struct tok_trie *tr, const unsigned char *s, size_t n,
                            size_t *len) {
    int32_t cur = 0, best = -1;
    for (size_t i = 0; i < n; i++) {
        int32_t c = tr->nodes[cur].child;
        while (c >= 0 && tr->nodes[c].byte != s[i])
            c = tr->nodes[c].sibling;
        if (c < 0) break;
        cur = c;
        if (tr->nodes[cur].added >= 0) {
            best = tr->nodes[cur].added;
            *len = i + 1;
        }
    }
    return best;
}

static void trie_free(struct tok_trie *tr) {
    if (!tr) return;
    free(tr->nodes);
    free(tr);
}

/* ------------------------------------------------------------------------------------------ */
/* Loading                                                                                      */

/* A flag of a component (where.key, server/base/json_field.h's words), dflt when left out. */
static int get_bool(const json_t *obj, const char *key, int dflt, int *out, const char *where,
                    chord_err *err) {
    *out = dflt;
    return chord_json_get_bool(obj, where, key, 0, out, err);
}

/* The "type" of a component, which must be an object. NULL (err set) when it is not. */
static const char *get_type(const json_t *obj, const char *where, chord_err *err) {
    const char *type = NULL;
    if (chord_json_object_value(obj, where, err) ||
        chord_json_get_string(obj, where, "type", CHORD_JSON_REQUIRED, &type, err))
        return NULL;
    return type;
}

static int compile_pattern(struct pcre2_real_code_8 **out, const char *pattern, size_t len,
                           int literal, const char *where, chord_err *err);

/* A {"String": ...} or {"Regex": ...} pattern, compiled (a String as a literal). */
static int parse_pattern(const json_t *obj, struct pcre2_real_code_8 **re, const char *where,
                         chord_err *err) {
    json_t *pat = json_object_get(obj, "pattern");
    json_t *rx = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
    if (!json_is_string(rx) && !json_is_string(lit))
        return chord_err_set(err, "%s.pattern must be {\"Regex\": ...} or {\"String\": ...}",
                             where);
    json_t *src = json_is_string(rx) ? rx : lit;
    if (json_string_length(src) == 0) return chord_err_set(err, "%s.pattern is empty", where);
    return compile_pattern(re, json_string_value(src), json_string_length(src), src == lit, where,
                           err);
}

static int dup_string(const json_t *v, char **out, size_t *len) {
    *len = json_string_length(v);
    *out = malloc(*len + 1);
    if (!*out) return -1;
    memcpy(*out, json_string_value(v), *len + 1);
    return 0;
}

/* A "Sequence" component: parse(t, item, "where.key[i]", err) for each item of its array `key`
 * (normalizers, pretokenizers, decoders, processors). */
typedef int (*component_parser)(tok_tokenizer *t, const json_t *item, const char *where,
                                chord_err *err);
static int each_in_sequence(tok_tokenizer *t, const json_t *obj, const char *key, const char *where,
                            component_parser parse, chord_err *err) {
    json_t *list = NULL;
    if (chord_json_get_array(obj, where, key, CHORD_JSON_REQUIRED, &list, err)) return -1;
    size_t i;
    json_t *sub;
    json_array_foreach(list, i, sub) {
        char w[256];
        snprintf(w, sizeof w, "%s.%s[%zu]", where, key, i);
        if (parse(t, sub, w, err)) return -1;
    }
    return 0;
}

static int parse_normalizer(tok_tokenizer *t, const json_t *n, const char *where, chord_err *err) {
    if (!n || json_is_null(n)) return 0;
    const char *type = get_type(n, where, err);
    if (!type) return -1;
    if (strcmp(type, "Sequence") == 0)
        return each_in_sequence(t, n, "normalizers", where, parse_normalizer, err);
    if (t->n_norm == TOK_MAX_NORMALIZERS)
        return chord_err_set(err, "%s: more than %d normalizers", where, TOK_MAX_NORMALIZERS);
    tok_norm_op *op = &t->norm[t->n_norm];
    memset(op, 0, sizeof *op);
    if (strcmp(type, "NFC") == 0) {
        op->flags = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    } else if (strcmp(type, "NFD") == 0) {
        op->flags = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE;
    } else if (strcmp(type, "NFKC") == 0) {
        op->flags = UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT;
    } else if (strcmp(type, "NFKD") == 0) {
        op->flags = UTF8PROC_STABLE | UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT;
    } else if (strcmp(type, "Lowercase") == 0) {
        op->kind = TOK_NORM_LOWERCASE;
    } else if (strcmp(type, "Strip") == 0) {
        op->kind = TOK_NORM_STRIP;
        if (get_bool(n, "strip_left", 1, &op->left, where, err) ||
            get_bool(n, "strip_right", 1, &op->right, where, err))
            return -1;
    } else if (strcmp(type, "Prepend") == 0 || strcmp(type, "Replace") == 0) {
        int prepend = strcmp(type, "Prepend") == 0;
        json_t *c = json_object_get(n, prepend ? "prepend" : "content");
        if (!json_is_string(c))
            return chord_err_set(err, "%s.%s must be a string", where,
                                 prepend ? "prepend" : "content");
        op->kind = prepend ? TOK_NORM_PREPEND : TOK_NORM_REPLACE;
        if (dup_string(c, &op->content, &op->content_len))
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        t->n_norm++; /* owns content and re from here on */
        t->norm_general = 1;
        return prepend ? 0 : parse_pattern(n, &op->re, where, err);
    } else {
        return chord_err_set(err,
                             "%s: unsupported normalizer type '%s' (chord reads NFC, NFD, NFKC, "
                             "NFKD, Lowercase, Strip, Replace, Prepend and Sequence)",
                             where, type);
    }
    if (op->kind != TOK_NORM_UNICODE) t->norm_general = 1;
    t->n_norm++;
    return 0;
}

static const char GPT2_REGEX[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int compile_pattern(struct pcre2_real_code_8 **out, const char *pattern, size_t len,
                           int literal, const char *where, chord_err *err) {
    int ec;
    PCRE2_SIZE eo;
    uint32_t opts = PCRE2_UTF | PCRE2_NO_UTF_CHECK | (literal ? PCRE2_LITERAL : PCRE2_UCP);
    *out = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &ec, &eo, NULL);
    if (!*out) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return chord_err_set(err, "%s: the regex does not compile at offset %zu: %s", where,
                             (size_t)eo, (const char *)msg);
    }
    pcre2_jit_compile(*out, PCRE2_JIT_COMPLETE); /* falls back to the interpreter on failure */
    return 0;
}

static int compile_regex(tok_pretok_step *st, const char *pattern, size_t len, int literal,
                         const char *where, chord_err *err) {
    return compile_pattern(&st->re, pattern, len, literal, where, err);
}

/* The crate's character predicates as regexes that match one character each, so that a Split
 * over them finds exactly the crate's matches (Unicode tables: PCRE2's, which may be a version
 * behind Rust's for characters added since). */
/* Rust's regex \w (Alphabetic, M, Nd, Pc, Join_Control) and \s (White_Space): Whitespace's
 * `\w+|[^\w\s]+`, written out because PCRE2's \w and \s are narrower */
static const char WHITESPACE_REGEX[] =
    "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+|"
    "[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\p{White_Space}]+";
/* char::is_whitespace */
static const char WHITE_SPACE_CHAR[] = "\\p{White_Space}";
/* char::is_numeric (Nd, Nl, No) */
static const char NUMERIC_CHAR[] = "\\p{N}";
/* is_ascii_punctuation || the Unicode punctuation categories */
static const char PUNCTUATION_CHAR[] = "[\\p{P}!-/:-@\\[-`{-~]";

static int split_behavior(const char *beh, int *out) {
    static const char *names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                  "Contiguous"};
    static const int values[] = {TOK_SPLIT_ISOLATED, TOK_SPLIT_REMOVED, TOK_SPLIT_MERGED_PREV,
                                 TOK_SPLIT_MERGED_NEXT, TOK_SPLIT_CONTIGUOUS};
    for (int i = 0; i < 5; i++)
        if (strcmp(beh, names[i]) == 0) {
            *out = values[i];
            return 0;
        }
    return -1;
}

/* Appends a Split step over a fixed regex (the predicate pre-tokenizers). */
static int push_split(tok_tokenizer *t, const char *regex, size_t len, int literal, int behavior,
                      int invert, const char *where, chord_err *err) {
    if (t->byte_level)
        return chord_err_set(err, "%s: a pre-tokenizer after ByteLevel is not supported", where);
    if (t->n_steps == TOK_MAX_STEPS)
        return chord_err_set(err, "%s: more than %d pre-tokenizers", where, TOK_MAX_STEPS);
    tok_pretok_step *st = &t->steps[t->n_steps];
    memset(st, 0, sizeof *st);
    st->kind = TOK_STEP_SPLIT;
    st->behavior = behavior;
    st->invert = invert;
    if (compile_regex(st, regex, len, literal, where, err)) return -1;
    t->n_steps++;
    return 0;
}

/* 1 when v is a string of exactly one character (1 to 4 bytes of UTF-8). */
static int one_character(const json_t *v) {
    size_t n = json_string_length(v), len;
    return json_is_string(v) && n > 0 &&
           chord_utf8_scan((const unsigned char *)json_string_value(v), n, &len, NULL) ==
               CHORD_UTF8_OK &&
           len == n;
}

/* The replacement character of a Metaspace pre-tokenizer or decoder: one character. */
static int metaspace_replacement(const json_t *p, char out[8], int *len, const char *where,
                                 chord_err *err) {
    json_t *r = json_object_get(p, "replacement");
    if (!r) r = json_object_get(p, "str_rep");
    if (r && !one_character(r))
        return chord_err_set(err, "%s.replacement must be one character", where);
    const char *s = r ? json_string_value(r) : "\xe2\x96\x81"; /* U+2581 */
    size_t n = r ? json_string_length(r) : 3;
    memcpy(out, s, n);
    out[n] = '\0';
    *len = (int)n;
    return 0;
}

/* prepend_scheme (always | first | never), or the older add_prefix_space (always | never). */
static int metaspace_prepend(const json_t *p, int *out, const char *where, chord_err *err) {
    json_t *ps = json_object_get(p, "prepend_scheme");
    if (ps && !json_is_null(ps)) {
        const char *v = json_string_value(ps);
        if (v && strcmp(v, "always") == 0)
            *out = TOK_PREPEND_ALWAYS;
        else if (v && strcmp(v, "first") == 0)
            *out = TOK_PREPEND_FIRST;
        else if (v && strcmp(v, "never") == 0)
            *out = TOK_PREPEND_NEVER;
        else
            return chord_err_set(err, "%s.prepend_scheme must be always, first or never", where);
        return 0;
    }
    int aps;
    if (get_bool(p, "add_prefix_space", 1, &aps, where, err)) return -1;
    *out = aps ? TOK_PREPEND_ALWAYS : TOK_PREPEND_NEVER;
    return 0;
}

static int parse_pretokenizer(tok_tokenizer *t, const json_t *p, const char *where,
                              chord_err *err) {
    if (!p || json_is_null(p)) return 0;
    const char *type = get_type(p, where, err);
    if (!type) return -1;
    if (strcmp(type, "Sequence") == 0)
        return each_in_sequence(t, p, "pretokenizers", where, parse_pretokenizer, err);
    if (strcmp(type, "Digits") == 0) {
        int individual;
        if (get_bool(p, "individual_digits", 0, &individual, where, err)) return -1;
        return push_split(t, NUMERIC_CHAR, sizeof NUMERIC_CHAR - 1, 0,
                          individual ? TOK_SPLIT_ISOLATED : TOK_SPLIT_CONTIGUOUS, 0, where, err);
    }
    if (strcmp(type, "Whitespace") == 0) /* keep the matches, drop what lies between */
        return push_split(t, WHITESPACE_REGEX, sizeof WHITESPACE_REGEX - 1, 0, TOK_SPLIT_REMOVED, 1,
                          where, err);
    if (strcmp(type, "WhitespaceSplit") == 0)
        return push_split(t, WHITE_SPACE_CHAR, sizeof WHITE_SPACE_CHAR - 1, 0, TOK_SPLIT_REMOVED, 0,
                          where, err);
    if (strcmp(type, "Punctuation") == 0) {
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        int b = TOK_SPLIT_ISOLATED;
        if (beh && split_behavior(beh, &b))
            return chord_err_set(err, "%s.behavior: unknown split behavior '%s'", where, beh);
        return push_split(t, PUNCTUATION_CHAR, sizeof PUNCTUATION_CHAR - 1, 0, b, 0, where, err);
    }
    if (strcmp(type, "BertPreTokenizer") == 0)
        return push_split(t, WHITE_SPACE_CHAR, sizeof WHITE_SPACE_CHAR - 1, 0, TOK_SPLIT_REMOVED, 0,
                          where, err) ||
               push_split(t, PUNCTUATION_CHAR, sizeof PUNCTUATION_CHAR - 1, 0, TOK_SPLIT_ISOLATED,
                          0, where, err);
    if (strcmp(type, "CharDelimiterSplit") == 0) {
        json_t *d = json_object_get(p, "delimiter");
        if (!one_character(d))
            return chord_err_set(err, "%s.delimiter must be one character", where);
        return push_split(t, json_string_value(d), json_string_length(d), 1, TOK_SPLIT_REMOVED, 0,
                          where, err);
    }
    if (t->byte_level)
        return chord_err_set(err, "%s: a pre-tokenizer after ByteLevel is not supported", where);
    if (t->n_steps == TOK_MAX_STEPS)
        return chord_err_set(err, "%s: more than %d pre-tokenizers", where, TOK_MAX_STEPS);
    tok_pretok_step *st = &t->steps[t->n_steps];
    memset(st, 0, sizeof *st);
    if (strcmp(type, "Split") == 0) {
        json_t *pat = json_object_get(p, "pattern");
        const char *re = json_string_value(json_object_get(pat, "Regex"));
        const char *lit = json_string_value(json_object_get(pat, "String"));
        if (!re && !lit)
            return chord_err_set(err, "%s.pattern must be {\"Regex\": ...} or {\"String\": ...}",
                                 where);
        json_t *src = json_object_get(pat, re ? "Regex" : "String");
        const char *beh = json_string_value(json_object_get(p, "behavior"));
        if (!beh) return chord_err_set(err, "%s.behavior is missing", where);
        if (split_behavior(beh, &st->behavior))
            return chord_err_set(err, "%s.behavior: unknown split behavior '%s'", where, beh);
        if (get_bool(p, "invert", 0, &st->invert, where, err)) return -1;
        st->kind = TOK_STEP_SPLIT;
        if (compile_regex(st, json_string_value(src), json_string_length(src), lit != NULL, where,
                          err))
            return -1;
        t->n_steps++;
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        st->kind = TOK_STEP_BYTELEVEL;
        if (get_bool(p, "add_prefix_space", 1, &st->add_prefix_space, where, err) ||
            get_bool(p, "use_regex", 1, &st->use_regex, where, err))
            return -1;
        if (st->use_regex && compile_regex(st, GPT2_REGEX, sizeof GPT2_REGEX - 1, 0, where, err))
            return -1;
        st->behavior = TOK_SPLIT_ISOLATED;
        t->byte_level = 1;
        t->n_steps++;
        return 0;
    }
    if (strcmp(type, "Metaspace") == 0) {
        st->kind = TOK_STEP_METASPACE;
        if (metaspace_replacement(p, st->replacement, &st->replacement_len, where, err) ||
            metaspace_prepend(p, &st->prepend_scheme, where, err) ||
            get_bool(p, "split", 1, &st->split, where, err))
            return -1;
        t->n_steps++;
        return 0;
    }
    return chord_err_set(err,
                         "%s: unsupported pre-tokenizer type '%s' (chord reads Split, ByteLevel, "
                         "Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, "
                         "BertPreTokenizer, CharDelimiterSplit and Sequence)",
                         where, type);
}

/* One decoder step (Sequence flattened) into t->dec_ops. */
static int parse_decoder_step(tok_tokenizer *t, const json_t *d, const char *where,
                              chord_err *err) {
    const char *type = get_type(d, where, err);
    if (!type) return -1;
    if (strcmp(type, "Sequence") == 0)
        return each_in_sequence(t, d, "decoders", where, parse_decoder_step, err);
    if (t->n_dec_ops == TOK_MAX_DEC_OPS)
        return chord_err_set(err, "%s: more than %d decoders", where, TOK_MAX_DEC_OPS);
    tok_dec_op *op = &t->dec_ops[t->n_dec_ops];
    memset(op, 0, sizeof *op);
    if (strcmp(type, "ByteLevel") == 0) {
        op->kind = TOK_DEC_BYTELEVEL;
    } else if (strcmp(type, "ByteFallback") == 0) {
        op->kind = TOK_DEC_BYTEFALLBACK;
    } else if (strcmp(type, "Fuse") == 0) {
        op->kind = TOK_DEC_FUSE;
    } else if (strcmp(type, "Metaspace") == 0) {
        char rep[8];
        int n, scheme;
        if (metaspace_replacement(d, rep, &n, where, err) ||
            metaspace_prepend(d, &scheme, where, err))
            return -1;
        op->kind = TOK_DEC_METASPACE;
        op->prepend_first = scheme != TOK_PREPEND_NEVER;
        op->pattern = strdup(rep);
        op->pattern_len = (size_t)n;
        op->content = strdup(" ");
        op->content_len = 1;
        if (!op->pattern || !op->content) {
            free(op->pattern);
            free(op->content);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
    } else if (strcmp(type, "Replace") == 0) {
        json_t *pat = json_object_get(d, "pattern");
        json_t *lit = json_object_get(pat, "String"), *c = json_object_get(d, "content");
        if (!json_is_string(lit) || json_string_length(lit) == 0)
            return chord_err_set(err,
                                 "%s.pattern: chord's Replace decoder takes a non-empty "
                                 "{\"String\": ...} (a Regex pattern is not supported)",
                                 where);
        if (!json_is_string(c)) return chord_err_set(err, "%s.content must be a string", where);
        op->kind = TOK_DEC_REPLACE;
        if (dup_string(lit, &op->pattern, &op->pattern_len) ||
            dup_string(c, &op->content, &op->content_len)) {
            free(op->pattern);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
    } else if (strcmp(type, "Strip") == 0) {
        json_t *c = json_object_get(d, "content");
        int64_t start = 0, stop = 0;
        if (!one_character(c)) return chord_err_set(err, "%s.content must be one character", where);
        if (chord_json_get_int(d, where, "start", CHORD_JSON_REQUIRED, 0, 1 << 20, &start, err) ||
            chord_json_get_int(d, where, "stop", CHORD_JSON_REQUIRED, 0, 1 << 20, &stop, err))
            return -1;
        op->kind = TOK_DEC_STRIP;
        op->start = (int)start;
        op->stop = (int)stop;
        if (dup_string(c, &op->pattern, &op->pattern_len))
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    } else {
        return chord_err_set(err,
                             "%s: unsupported decoder type '%s' (chord reads ByteLevel, Metaspace, "
                             "Replace, ByteFallback, Fuse, Strip and Sequence)",
                             where, type);
    }
    t->n_dec_ops++;
    return 0;
}

static int parse_decoder(tok_tokenizer *t, const json_t *d, chord_err *err) {
    if (!d || json_is_null(d)) {
        t->decoder = TOK_DECODER_NONE;
        return 0;
    }
    if (parse_decoder_step(t, d, "decoder", err)) return -1;
    if (t->n_dec_ops == 1 && t->dec_ops[0].kind == TOK_DEC_BYTELEVEL) {
        t->decoder = TOK_DECODER_BYTELEVEL; /* the byte-level families: the plain path */
        return 0;
    }
    t->decoder = TOK_DECODER_CHAIN;
    /* the steps before the first that joins the tokens act on each token */
    t->n_dec_token_ops = t->n_dec_ops;
    for (int i = 0; i < t->n_dec_ops; i++) {
        int k = t->dec_ops[i].kind;
        if (k == TOK_DEC_BYTELEVEL) t->dec_bytelevel = 1;
        if ((k == TOK_DEC_FUSE || k == TOK_DEC_BYTELEVEL) && t->n_dec_token_ops == t->n_dec_ops)
            t->n_dec_token_ops = i;
        if (k == TOK_DEC_METASPACE && t->dec_ops[i].prepend_first && i < t->n_dec_token_ops)
            t->dec_first_differs = 1;
    }
    int strips_at_end = 0;
    for (int i = t->n_dec_token_ops + 1; i < t->n_dec_ops; i++) {
        const tok_dec_op *op = &t->dec_ops[i];
        int k = op->kind;
        if (k != TOK_DEC_STRIP && k != TOK_DEC_REPLACE && k != TOK_DEC_FUSE)
            return chord_err_set(err,
                                 "decoder: a %s step after the tokens are joined (Fuse or "
                                 "ByteLevel) is not supported",
                                 k == TOK_DEC_BYTEFALLBACK ? "ByteFallback"
                                 : k == TOK_DEC_METASPACE  ? "Metaspace"
                                                           : "ByteLevel");
        /* A stream holds back what such a Strip may remove at the end (tok_stream.held): one
         * count, within the output-size rules of tokenizer.h. */
        if (k == TOK_DEC_STRIP && op->stop > 0 &&
            (++strips_at_end > 1 || (size_t)op->stop * op->pattern_len > TOK_STREAM_MAX_HELD))
            return chord_err_set(err,
                                 "decoder: chord takes one Strip with a stop after the tokens are "
                                 "joined, stripping at most %d bytes (stop %d of a %zu-byte "
                                 "character)",
                                 TOK_STREAM_MAX_HELD, op->stop, op->pattern_len);
    }
    return 0;
}

/* The ids a post-processor adds go to the model as they are: each must be a token of the
 * vocabulary (an id past it would index past the embedding). */
static int post_push(tok_tokenizer *t, int before, json_int_t id, chord_err *err) {
    int32_t *arr = before ? t->post_prefix : t->post_suffix;
    int *n = before ? &t->n_post_prefix : &t->n_post_suffix;
    if (*n >= TOK_MAX_POST) return chord_err_set(err, "post_processor: too many special tokens");
    if (id < 0 || id >= t->vocab_size || !t->tok_str[id])
        return chord_err_set(err, "post_processor: special token id %lld is not in the vocabulary",
                             (long long)id);
    arr[(*n)++] = (int32_t)id;
    return 0;
}

static int parse_post(tok_tokenizer *t, const json_t *p, const char *where, chord_err *err) {
    if (!p || json_is_null(p)) return 0;
    const char *type = get_type(p, where, err);
    if (!type) return -1;
    if (strcmp(type, "ByteLevel") == 0) return 0; /* offsets only */
    if (strcmp(type, "Sequence") == 0)
        return each_in_sequence(t, p, "processors", where, parse_post, err);
    if (strcmp(type, "RobertaProcessing") == 0 || strcmp(type, "BertProcessing") == 0) {
        json_t *cls = json_object_get(p, "cls"), *sep = json_object_get(p, "sep");
        if (!json_is_array(cls) || !json_is_integer(json_array_get(cls, 1)) ||
            !json_is_array(sep) || !json_is_integer(json_array_get(sep, 1)))
            return chord_err_set(err, "%s: cls and sep must be [token, id]", where);
        if (post_push(t, 1, json_integer_value(json_array_get(cls, 1)), err) ||
            post_push(t, 0, json_integer_value(json_array_get(sep, 1)), err))
            return -1;
        return 0;
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        json_t *single = NULL, *specials = json_object_get(p, "special_tokens");
        if (chord_json_get_array(p, where, "single", CHORD_JSON_REQUIRED, &single, err)) return -1;
        int seen_seq = 0;
        size_t i;
        json_t *piece;
        json_array_foreach(single, i, piece) {
            json_t *sp = json_object_get(piece, "SpecialToken");
            if (json_object_get(piece, "Sequence")) {
                seen_seq = 1;
                continue;
            }
            if (!sp) return chord_err_set(err, "%s.single[%zu] is not a piece", where, i);
            const char *name = json_string_value(json_object_get(sp, "id"));
            json_t *def = name ? json_object_get(specials, name) : NULL;
            json_t *ids = json_object_get(def, "ids");
            if (!json_is_array(ids))
                return chord_err_set(err, "%s.special_tokens has no ids for '%s'", where,
                                     name ? name : "?");
            size_t k;
            json_t *idv;
            json_array_foreach(ids, k, idv) {
                if (!json_is_integer(idv))
                    return chord_err_set(err, "%s.special_tokens['%s'].ids must be integers", where,
                                         name);
                if (post_push(t, !seen_seq, json_integer_value(idv), err)) return -1;
            }
        }
        return 0;
    }
    return chord_err_set(err,
                         "%s: unsupported post_processor type '%s' (chord reads ByteLevel, "
                         "TemplateProcessing, RobertaProcessing, BertProcessing and Sequence)",
                         where, type);
}

static int set_token(tok_tokenizer *t, int32_t id, const char *s, size_t n) {
    if (t->tok_str[id]) return 0;
    char *copy = malloc(n + 1);
    if (!copy) return -1;
    memcpy(copy, s, n);
    copy[n] = '\0';
    t->tok_str[id] = copy;
    t->tok_len[id] = (uint32_t)n;
    return 0;
}

/* Splits "a b" merges at the space (tokens never contain one in a byte-level vocabulary). */
static int parse_merge(const json_t *m, const char **a, size_t *an, const char **b, size_t *bn) {
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s))) return -1;
        *a = s;
        *an = (size_t)(sp - s);
        *b = sp + 1;
        *bn = n - *an - 1;
        return 0;
    }
    if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
        json_is_string(json_array_get(m, 1))) {
        *a = json_string_value(json_array_get(m, 0));
        *an = json_string_length(json_array_get(m, 0));
        *b = json_string_value(json_array_get(m, 1));
        *bn = json_string_length(json_array_get(m, 1));
        return 0;
    }
    return -1;
}

static int parse_model(tok_tokenizer *t, const json_t *m, const json_t *added, chord_err *err) {
    const char *type = json_string_value(json_object_get(m, "type"));
    if (!json_is_object(m)) return chord_err_set(err, "model is missing or not an object");
    json_t *vocab = NULL, *merges = NULL;
    if (!type) {
        /* old files omit the type; a vocab + merges is BPE */
        if (!json_object_get(m, "merges")) return chord_err_set(err, "model.type is missing");
        type = "BPE";
    }
    if (strcmp(type, "BPE") != 0)
        return chord_err_set(err, "model: unsupported model type '%s' (chord reads BPE)", type);
    if (chord_json_get_object(m, "model", "vocab", CHORD_JSON_REQUIRED, &vocab, err) ||
        chord_json_get_array(m, "model", "merges", CHORD_JSON_REQUIRED, &merges, err))
        return -1;
    json_t *dropout = json_object_get(m, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) > 0)
        return chord_err_set(err, "model.dropout: BPE dropout is not supported");
    const char *cs = json_string_value(json_object_get(m, "continuing_subword_prefix"));
    const char *ew = json_string_value(json_object_get(m, "end_of_word_suffix"));
    if ((cs && *cs) || (ew && *ew))
        return chord_err_set(err, "model: continuing_subword_prefix / end_of_word_suffix are not "
                                  "supported (not byte-level BPE)");
    if (get_bool(m, "ignore_merges", 0, &t->ignore_merges, "model", err) ||
        get_bool(m, "byte_fallback", 0, &t->byte_fallback, "model", err) ||
        get_bool(m, "fuse_unk", 0, &t->fuse_unk, "model", err))
        return -1;

    /* the id space: model vocabulary and added tokens */
    int64_t max_id = -1;
    const char *key;
    json_t *val;
    json_object_foreach((json_t *)vocab, key, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) > 0x7FFFFFF0)
            return chord_err_set(err, "model.vocab['%s'] must be a non-negative integer id", key);
        if (json_integer_value(val) > max_id) max_id = json_integer_value(val);
    }
    size_t i;
    json_t *a;
    json_array_foreach((json_t *)added, i, a) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu].id", i);
        int64_t id = 0;
        if (chord_json_int_value(json_object_get(a, "id"), where, CHORD_JSON_REQUIRED, 0,
                                 0x7FFFFFF0, &id, err))
            return -1;
        if (id > max_id) max_id = id;
    }
    t->vocab_size = (int32_t)(max_id + 1);
    t->tok_str = calloc((size_t)t->vocab_size + 1, sizeof *t->tok_str);
    t->tok_len = calloc((size_t)t->vocab_size + 1, sizeof *t->tok_len);
    t->special = calloc((size_t)t->vocab_size + 1, 1);
    if (!t->tok_str || !t->tok_len || !t->special ||
        vocab_map_init(t, (size_t)t->vocab_size + json_array_size(added)))
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    json_object_foreach((json_t *)vocab, key, val) {
        int32_t id = (int32_t)json_integer_value(val);
        size_t klen = strlen(key); /* jansson keys cannot hold NUL */
        if (set_token(t, id, key, klen))
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        vocab_map_insert(t, id);
    }
    t->n_model_vocab = json_object_size(vocab);

    /* merges: rank = position; new token = vocab[a + b] */
    size_t nm = json_array_size(merges);
    if (merge_map_init(t, nm + 1)) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    chord_buf cat = {0};
    json_t *mv;
    json_array_foreach(merges, i, mv) {
        const char *sa, *sb;
        size_t na, nb;
        if (parse_merge(mv, &sa, &na, &sb, &nb)) {
            chord_buf_free(&cat);
            return chord_err_set(err, "model.merges[%zu] must be \"a b\" or [\"a\", \"b\"]", i);
        }
        int32_t ia = tok_vocab_lookup(t, sa, na), ib = tok_vocab_lookup(t, sb, nb);
        if (ia < 0 || ib < 0) {
            chord_buf_free(&cat);
            return chord_err_set(err, "model.merges[%zu]: token '%.*s' is not in the vocabulary", i,
                                 (int)(ia < 0 ? na : nb), ia < 0 ? sa : sb);
        }
        cat.len = 0;
        if (chord_buf_append(&cat, sa, na) || chord_buf_append(&cat, sb, nb)) {
            chord_buf_free(&cat);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        int32_t nid = tok_vocab_lookup(t, cat.data, cat.len);
        if (nid < 0) {
            chord_err_set(err, "model.merges[%zu]: the merged token '%s' is not in the vocabulary",
                          i, cat.data);
            chord_buf_free(&cat);
            return -1;
        }
        merge_insert(t, ia, ib, (uint32_t)i, nid);
    }
    chord_buf_free(&cat);
    t->n_merges = nm;

    const char *unk = json_string_value(json_object_get(m, "unk_token"));
    t->unk_id = unk ? tok_vocab_lookup(t, unk, strlen(unk)) : -1;
    return 0;
}

static int parse_added(tok_tokenizer *t, const json_t *added, chord_err *err) {
    size_t n = json_array_size(added);
    t->added = calloc(n + 1, sizeof *t->added);
    t->trie_raw = calloc(1, sizeof *t->trie_raw);
    t->trie_norm = calloc(1, sizeof *t->trie_norm);
    if (!t->added || !t->trie_raw || !t->trie_norm)
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    size_t i;
    json_t *a;
    json_array_foreach((json_t *)added, i, a) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        json_t *content = json_object_get(a, "content");
        if (!json_is_string(content) || json_string_length(content) == 0)
            return chord_err_set(err, "%s.content must be a non-empty string", where);
        tok_added *ad = &t->added[i];
        ad->id = (int32_t)json_integer_value(json_object_get(a, "id"));
        if (get_bool(a, "special", 0, &ad->special, where, err) ||
            get_bool(a, "lstrip", 0, &ad->lstrip, where, err) ||
            get_bool(a, "rstrip", 0, &ad->rstrip, where, err) ||
            get_bool(a, "single_word", 0, &ad->single_word, where, err) ||
            get_bool(a, "normalized", !ad->special, &ad->normalized, where, err))
            return -1;
        /* the token's text is its vocabulary string too (an id the model lacks takes it) */
        if (set_token(t, ad->id, json_string_value(content), json_string_length(content)))
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        ad->content = t->tok_str[ad->id];
        ad->len = t->tok_len[ad->id];
        if (strcmp(ad->content, json_string_value(content)) != 0)
            return chord_err_set(err, "%s: id %d is already the token '%s'", where, ad->id,
                                 ad->content);
        vocab_map_insert(t, ad->id);
        if (ad->special) t->special[ad->id] = 1;
        if (trie_insert(ad->normalized ? t->trie_norm : t->trie_raw, ad->content, ad->len,
                        (int32_t)i))
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        t->n_added++;
    }
    return 0;
}

/* Replaces every (non-overlapping, leftmost) occurrence of pat in s[0..n) with rep into out. */
static int replace_literal(chord_buf *out, const char *s, size_t n, const char *pat, size_t pn,
                           const char *rep, size_t rn) {
    size_t i = 0;
    while (i < n) {
        const char *hit = pn <= n - i ? memmem(s + i, n - i, pat, pn) : NULL;
        size_t stop = hit ? (size_t)(hit - s) : n;
        if (chord_buf_append(out, s + i, stop - i)) return -1;
        if (!hit) break;
        if (chord_buf_append(out, rep, rn)) return -1;
        i = stop + pn;
    }
    return 0;
}

/* The crate's Strip decoder on one string: up to `start` leading and `stop` trailing copies of the
 * character c (UTF-8, cn bytes). */
static void strip_chars(const char **s, size_t *n, const char *c, size_t cn, int start, int stop) {
    for (int k = 0; k < start && *n >= cn && memcmp(*s, c, cn) == 0; k++) {
        *s += cn;
        *n -= cn;
    }
    for (int k = 0; k < stop && *n >= cn && memcmp(*s + *n - cn, c, cn) == 0; k++)
        *n -= cn;
}

/* "<0xXX>" (ByteFallback's byte tokens): the byte, or -1. */
static int byte_token_value(const char *s, size_t n) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                       : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

/* The per-token steps of a decoder chain on token id (first: it is the first token decoded),
 * into out (replacing its content). Returns 1 when ByteFallback made it one byte, 0, -1 OOM. */
static int decode_token(const tok_tokenizer *t, int32_t id, int first, chord_buf *out) {
    chord_buf a = {0}, b = {0};
    int rc = -1, is_byte = 0;
    if (chord_buf_append(&a, t->tok_str[id], t->tok_len[id])) goto done;
    for (int i = 0; i < t->n_dec_token_ops && !is_byte; i++) {
        const tok_dec_op *op = &t->dec_ops[i];
        b.len = 0;
        if (op->kind == TOK_DEC_REPLACE || op->kind == TOK_DEC_METASPACE) {
            /* Metaspace drops every replacement character of the first token */
            size_t rn =
                op->kind == TOK_DEC_METASPACE && first && op->prepend_first ? 0 : op->content_len;
            if (chord_buf_append(&b, "", 0) ||
                replace_literal(&b, a.data, a.len, op->pattern, op->pattern_len, op->content, rn))
                goto done;
        } else if (op->kind == TOK_DEC_STRIP) {
            const char *p = a.data;
            size_t n = a.len;
            strip_chars(&p, &n, op->pattern, op->pattern_len, op->start, op->stop);
            if (chord_buf_append(&b, "", 0) || chord_buf_append(&b, p, n)) goto done;
        } else if (op->kind == TOK_DEC_BYTEFALLBACK) {
            int v = byte_token_value(a.data, a.len);
            if (v < 0) continue;
            unsigned char byte = (unsigned char)v;
            if (chord_buf_append(&b, "", 0) || chord_buf_append(&b, &byte, 1)) goto done;
            is_byte = 1;
        } else {
            continue;
        }
        chord_buf tmp = a;
        a = b;
        b = tmp;
    }
    out->len = 0;
    if (!is_byte && t->n_dec_token_ops < t->n_dec_ops &&
        t->dec_ops[t->n_dec_token_ops].kind == TOK_DEC_BYTELEVEL) {
        /* ByteLevel: each character back to its byte; a token with an unmapped one stays as is */
        size_t k = 0;
        int all_mapped = 1;
        if (chord_buf_reserve(out, a.len + 1)) goto done;
        for (size_t i = 0; i < a.len && all_mapped;) {
            size_t len;
            uint32_t cp = 0;
            int byte = -1;
            if (chord_utf8_scan((const unsigned char *)a.data + i, a.len - i, &len, &cp) ==
                CHORD_UTF8_OK)
                byte = unicode_to_byte(cp);
            if (byte < 0)
                all_mapped = 0;
            else
                out->data[k++] = (char)byte;
            i += len;
        }
        if (all_mapped) {
            out->len = k;
            out->data[k] = '\0';
            rc = 0;
            goto done;
        }
        out->len = 0;
    }
    if (chord_buf_append(out, "", 0) || chord_buf_append(out, a.data, a.len)) goto done;
    rc = is_byte;
done:
    chord_buf_free(&a);
    chord_buf_free(&b);
    return rc;
}

/* The bytes each id decodes to, computed once. */
static int build_decode_table(tok_tokenizer *t, chord_err *err) {
    t->dec = calloc((size_t)t->vocab_size, sizeof *t->dec);
    t->dec_len = calloc((size_t)t->vocab_size, sizeof *t->dec_len);
    t->byte_token = calloc((size_t)t->vocab_size + 1, 1);
    if (!t->dec || !t->dec_len || !t->byte_token)
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    chord_buf one = {0};
    for (int32_t id = 0; id < t->vocab_size; id++) {
        const char *s = t->tok_str[id];
        if (!s) continue;
        size_t n = t->tok_len[id];
        if (t->decoder == TOK_DECODER_CHAIN) {
            int r = decode_token(t, id, 0, &one);
            if (r < 0 || !(t->dec[id] = malloc(one.len + 1))) {
                chord_buf_free(&one);
                return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
            }
            memcpy(t->dec[id], one.data ? one.data : "", one.len);
            t->dec[id][one.len] = '\0';
            t->dec_len[id] = (uint32_t)one.len;
            t->byte_token[id] = (unsigned char)r;
            continue;
        }
        char *out = malloc(n + 1);
        if (!out) {
            chord_buf_free(&one);
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        size_t k = 0;
        int all_mapped = t->decoder == TOK_DECODER_BYTELEVEL;
        for (size_t i = 0; i < n && all_mapped;) {
            size_t len;
            uint32_t cp = 0;
            int b = -1;
            if (chord_utf8_scan((const unsigned char *)s + i, n - i, &len, &cp) == CHORD_UTF8_OK)
                b = unicode_to_byte(cp);
            if (b < 0) {
                all_mapped = 0;
                break;
            }
            out[k++] = (char)b;
            i += len;
        }
        if (!all_mapped) {
            memcpy(out, s, n); /* tokenizers keeps a token with unmapped characters as-is */
            k = n;
        }
        out[k] = '\0';
        t->dec[id] = out;
        t->dec_len[id] = (uint32_t)k;
    }
    chord_buf_free(&one);
    return 0;
}

static const char *token_text(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return json_string_value(json_object_get(v, "content"));
    return NULL;
}

static int parse_config(tok_tokenizer *t, const char *text, size_t len, chord_err *err) {
    json_error_t je;
    json_t *c = json_loadb(text, len, 0, &je);
    if (!c) return chord_err_set(err, "tokenizer_config.json: line %d: %s", je.line, je.text);
    if (!json_is_object(c)) {
        json_decref(c);
        return chord_err_set(err, "tokenizer_config.json: must be a JSON object");
    }
    const char *names[3] = {"bos_token", "eos_token", "pad_token"};
    char **texts[3] = {&t->bos_text, &t->eos_text, &t->pad_text};
    int32_t *ids[3] = {&t->bos_id, &t->eos_id, &t->pad_id};
    for (int k = 0; k < 3; k++) {
        const char *s = token_text(json_object_get(c, names[k]));
        if (!s) continue;
        *texts[k] = strdup(s);
        *ids[k] = tok_vocab_lookup(t, s, strlen(s));
        if (!*texts[k] || *ids[k] < 0) {
            /* the message quotes s, which lives in c: set it before c goes */
            chord_err_set(err, "tokenizer_config.json: %s '%s' is not in the vocabulary", names[k],
                          s);
            json_decref(c);
            return -1;
        }
    }
    int r = get_bool(c, "add_bos_token", 0, &t->add_bos, "tokenizer_config", err) ||
            get_bool(c, "add_eos_token", 0, &t->add_eos, "tokenizer_config", err);
    if (r) {
        json_decref(c);
        return -1;
    }
    json_t *ct = json_object_get(c, "chat_template");
    if (json_is_string(ct)) {
        t->chat_template = strdup(json_string_value(ct));
    } else if (json_is_array(ct)) {
        /* [{"name": "default", "template": ...}, ...] */
        size_t i;
        json_t *e;
        json_array_foreach(ct, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            const char *tpl = json_string_value(json_object_get(e, "template"));
            if (name && tpl && strcmp(name, "default") == 0) t->chat_template = strdup(tpl);
        }
    }
    json_decref(c);
    return 0;
}

static void free_tokenizer(tok_tokenizer *t) {
    if (!t) return;
    for (int32_t i = 0; i < t->vocab_size; i++) {
        if (t->tok_str) free(t->tok_str[i]);
        if (t->dec) free(t->dec[i]);
    }
    free(t->tok_str);
    free(t->tok_len);
    free(t->dec);
    free(t->dec_len);
    free(t->special);
    free(t->vmap);
    free(t->mmap);
    free(t->added);
    trie_free(t->trie_raw);
    trie_free(t->trie_norm);
    for (int i = 0; i < t->n_steps; i++)
        pcre2_code_free(t->steps[i].re);
    for (int i = 0; i < t->n_norm; i++) {
        pcre2_code_free(t->norm[i].re);
        free(t->norm[i].content);
    }
    for (int i = 0; i < t->n_dec_ops; i++) {
        free(t->dec_ops[i].pattern);
        free(t->dec_ops[i].content);
    }
    free(t->byte_token);
    cache_free(t->cache);
    free(t->bos_text);
    free(t->eos_text);
    free(t->pad_text);
    free(t->chat_template);
    free(t->src_tokenizer);
    free(t->src_config);
    free(t->src_template);
    free(t);
}

void tok_free(tok_tokenizer *tok) {
    free_tokenizer(tok);
}

int tok_load_from_memory(const char *tokenizer_json, size_t tokenizer_len, const char *config_json,
                         size_t config_len, tok_tokenizer **out, chord_err *err) {
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(tokenizer_json, tokenizer_len, 0, &je);
    if (!root)
        return chord_err_set(err, "tokenizer.json: malformed JSON at line %d column %d: %s",
                             je.line, je.column, je.text);
    tok_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(root);
        return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    int rc = -1;
    if (!json_is_object(root)) {
        chord_err_set(err, "tokenizer.json: the top level must be an object");
        goto done;
    }
    json_t *added = json_object_get(root, "added_tokens");
    if (added && !json_is_null(added) && !json_is_array(added)) {
        chord_err_set(err, "tokenizer.json: added_tokens must be an array");
        goto done;
    }
    json_t *empty = json_array();
    if (!added || json_is_null(added)) added = empty;
    if (parse_normalizer(t, json_object_get(root, "normalizer"), "normalizer", err) ||
        parse_pretokenizer(t, json_object_get(root, "pre_tokenizer"), "pre_tokenizer", err) ||
        parse_model(t, json_object_get(root, "model"), added, err) || parse_added(t, added, err) ||
        parse_decoder(t, json_object_get(root, "decoder"), err) ||
        parse_post(t, json_object_get(root, "post_processor"), "post_processor", err) ||
        build_decode_table(t, err)) {
        json_decref(empty);
        chord_err_prefix(err, "tokenizer.json");
        goto done;
    }
    json_decref(empty);
    for (int b = 0; b < 256; b++) {
        char u[2];
        int n = tok_byte_to_unicode((unsigned char)b, u);
        t->byte_to_id[b] = t->byte_level ? tok_vocab_lookup(t, u, (size_t)n) : -1;
    }
    t->cache = cache_new();
    if (!t->cache) {
        chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        goto done;
    }
    if (config_json && parse_config(t, config_json, config_len, err)) goto done;
    t->src_tokenizer = malloc(tokenizer_len + 1);
    t->src_config = config_json ? malloc(config_len + 1) : NULL;
    if (!t->src_tokenizer || (config_json && !t->src_config)) {
        chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        goto done;
    }
    memcpy(t->src_tokenizer, tokenizer_json, tokenizer_len);
    t->src_tokenizer[tokenizer_len] = '\0';
    t->src_tokenizer_len = tokenizer_len;
    if (config_json) {
        memcpy(t->src_config, config_json, config_len);
        t->src_config[config_len] = '\0';
        t->src_config_len = config_len;
    }
    rc = 0;
done:
    json_decref(root);
    if (rc) {
        free_tokenizer(t);
        return -1;
    }
    *out = t;
    return 0;
}

int tok_load(const char *dir, tok_tokenizer **out, chord_err *err) {
    *out = NULL;
    char path[4096], cfg_path[4096], tpl_path[4096];
    if (chord_is_file(dir)) {
        snprintf(path, sizeof path, "%s", dir);
        const char *slash = strrchr(dir, '/');
        int dlen = slash ? (int)(slash - dir) : 1;
        snprintf(cfg_path, sizeof cfg_path, "%.*s/tokenizer_config.json", dlen, slash ? dir : ".");
        snprintf(tpl_path, sizeof tpl_path, "%.*s/chat_template.jinja", dlen, slash ? dir : ".");
    } else {
        snprintf(path, sizeof path, "%s/tokenizer.json", dir);
        snprintf(cfg_path, sizeof cfg_path, "%s/tokenizer_config.json", dir);
        snprintf(tpl_path, sizeof tpl_path, "%s/chat_template.jinja", dir);
    }
    if (!chord_is_file(path))
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "%s: no tokenizer.json there", dir);
    char *tj = NULL, *cj = NULL, *tpl = NULL;
    size_t tn = 0, cn = 0, pn = 0;
    if (chord_read_file(path, &tj, &tn, err)) return -1;
    if (chord_is_file(cfg_path) && chord_read_file(cfg_path, &cj, &cn, err)) {
        free(tj);
        return -1;
    }
    if (chord_is_file(tpl_path) && chord_read_file(tpl_path, &tpl, &pn, err)) {
        free(tj);
        free(cj);
        return -1;
    }
    int rc = tok_load_from_memory(tj, tn, cj, cn, out, err);
    if (rc) chord_err_prefix(err, "%s", dir);
    if (rc == 0 && tpl) {
        free((*out)->chat_template);
        (*out)->chat_template = strdup(tpl);
        (*out)->src_template = tpl;
        (*out)->src_template_len = pn;
        tpl = NULL;
        if (!(*out)->chat_template) {
            tok_free(*out);
            *out = NULL;
            return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
    }
    free(tj);
    free(cj);
    free(tpl);
    return rc;
}

int tok_save(const tok_tokenizer *tok, const char *dir, chord_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (chord_write_file_atomic(path, tok->src_tokenizer, tok->src_tokenizer_len, err)) return -1;
    if (tok->src_config) {
        snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
        if (chord_write_file_atomic(path, tok->src_config, tok->src_config_len, err)) return -1;
    }
    if (tok->src_template) {
        snprintf(path, sizeof path, "%s/chat_template.jinja", dir);
        if (chord_write_file_atomic(path, tok->src_template, tok->src_template_len, err)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* Accessors                                                                                    */

int32_t tok_vocab_size(const tok_tokenizer *tok) {
    return tok->vocab_size;
}

int32_t tok_token_to_id(const tok_tokenizer *tok, const char *token) {
    return tok_vocab_lookup(tok, token, strlen(token));
}

const char *tok_id_to_token(const tok_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->vocab_size) return NULL;
    return tok->tok_str[id];
}

const char *tok_id_bytes(const tok_tokenizer *tok, int32_t id, size_t *len) {
    if (id < 0 || id >= tok->vocab_size || !tok->dec[id]) return NULL;
    *len = tok->dec_len[id];
    return tok->dec[id];
}

int tok_is_special(const tok_tokenizer *tok, int32_t id) {
    return id >= 0 && id < tok->vocab_size && tok->special[id];
}

int32_t tok_bos_id(const tok_tokenizer *tok) {
    return tok->bos_id;
}
int32_t tok_eos_id(const tok_tokenizer *tok) {
    return tok->eos_id;
}
int32_t tok_pad_id(const tok_tokenizer *tok) {
    return tok->pad_id;
}
const char *tok_bos_token(const tok_tokenizer *tok) {
    return tok->bos_text;
}
const char *tok_eos_token(const tok_tokenizer *tok) {
    return tok->eos_text;
}
const char *tok_chat_template(const tok_tokenizer *tok) {
    return tok->chat_template;
}

/* ------------------------------------------------------------------------------------------ */
/* Encoding                                                                                     */

typedef struct piece {
    const char *p;
    uint32_t len;
    uint32_t off;        /* offset of p[prefix] in the normalized segment */
    uint8_t prefix;      /* 1 when p starts with a space ByteLevel added */
    const uint32_t *map; /* a piece Metaspace rewrote: each byte's offset in the normalized
                            segment (then off and prefix are unused); NULL otherwise */
} piece;

typedef struct piece_vec {
    piece *v;
    size_t n, cap;
} piece_vec;

typedef struct arena_block {
    struct arena_block *next;
    size_t used, cap;
    char data[];
} arena_block;

/* One run of normalized text and where it came from. */
typedef struct norm_run {
    uint32_t norm_off, orig_off;
    uint8_t exact;
} norm_run;

typedef struct bpe_sym {
    int32_t id;
    int32_t prev, next;
    uint32_t len;
} bpe_sym;

typedef struct bpe_heap_entry {
    uint32_t rank;
    uint32_t pos;
    int32_t new_id;
} bpe_heap_entry;

typedef struct enc_ctx {
    const tok_tokenizer *t;
    tok_ids *out;
    int offsets;
    pcre2_match_data *md;
    piece_vec a, b;
    arena_block *arena;
    chord_buf norm;
    norm_run *runs;
    size_t n_runs, cap_runs;
    int identity;      /* the normalized segment equals the original */
    uint32_t seg_orig; /* offset of the segment in the original text */
    bpe_sym *syms;
    size_t cap_syms;
    bpe_heap_entry *heap;
    size_t cap_heap;
    int32_t *wids; /* a word's tokens: ids and lengths, room for cap_word of each */
    uint16_t *wlens;
    size_t cap_word, cap_wids, cap_wlens;
    chord_buf word;
    int match_error; /* a PCRE2 error other than no-match, 0 when none */
} enc_ctx;

static void ctx_free(enc_ctx *c) {
    if (c->md) pcre2_match_data_free(c->md);
    free(c->a.v);
    free(c->b.v);
    while (c->arena) {
        arena_block *n = c->arena->next;
        free(c->arena);
        c->arena = n;
    }
    chord_buf_free(&c->norm);
    free(c->runs);
    free(c->syms);
    free(c->heap);
    free(c->wids);
    free(c->wlens);
    chord_buf_free(&c->word);
}

static char *arena_alloc(enc_ctx *c, size_t n) {
    n = (n + 7) & ~(size_t)7; /* keeps every allocation aligned for the offset maps */
    if (!c->arena || c->arena->cap - c->arena->used < n) {
        size_t cap = n > 65536 ? n : 65536;
        arena_block *b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->next = c->arena;
        b->used = 0;
        b->cap = cap;
        c->arena = b;
    }
    char *p = c->arena->data + c->arena->used;
    c->arena->used += n;
    return p;
}

static int pv_push(piece_vec *v, piece p) {
    if (v->n == v->cap) {
        piece *np = chord_array_grow(v->v, &v->cap, v->n + 1, sizeof *np);
        if (!np) return -1;
        v->v = np;
    }
    v->v[v->n++] = p;
    return 0;
}

/* A sub-range [s, e) of piece p as a piece. */
static piece sub_piece(const piece *p, uint32_t s, uint32_t e) {
    piece q;
    q.p = p->p + s;
    q.len = e - s;
    q.prefix = (uint8_t)(s == 0 ? p->prefix : 0);
    q.off = p->off + (s > p->prefix ? s - p->prefix : 0);
    q.map = p->map ? p->map + s : NULL;
    return q;
}

/* Splits p with step st's regex (HF's NormalizedString::split) and appends the pieces to out. */
static int split_piece(enc_ctx *c, const tok_pretok_step *st, const piece *p, piece_vec *out) {
    const char *subj = p->p;
    size_t n = p->len;
    if (n == 0) return 0;
    size_t pos = 0, prev = 0;
    uint32_t opts = 0;
    /* the (start, end, is_match) list find_matches would build is folded as it is produced */
    uint32_t acc_s = 0, acc_e = 0;
    int have_acc = 0, prev_match = 0;
    int behavior = st->behavior;

#define EMIT(S, E)                                                                                 \
    do {                                                                                           \
        if ((E) > (S) && pv_push(out, sub_piece(p, (S), (E)))) return -1;                          \
    } while (0)

    /* Streaming fold over (start, end, match) triples implementing each behaviour. */
#define FEED(S, E, M)                                                                              \
    do {                                                                                           \
        uint32_t s_ = (S), e_ = (E);                                                               \
        int m_ = (M) ^ st->invert;                                                                 \
        switch (behavior) {                                                                        \
        case TOK_SPLIT_ISOLATED:                                                                   \
            EMIT(s_, e_);                                                                          \
            break;                                                                                 \
        case TOK_SPLIT_REMOVED:                                                                    \
            if (!m_) EMIT(s_, e_);                                                                 \
            break;                                                                                 \
        case TOK_SPLIT_MERGED_PREV:                                                                \
            if (m_ && !prev_match && have_acc) {                                                   \
                acc_e = e_;                                                                        \
            } else {                                                                               \
                if (have_acc) EMIT(acc_s, acc_e);                                                  \
                acc_s = s_;                                                                        \
                acc_e = e_;                                                                        \
                have_acc = 1;                                                                      \
            }                                                                                      \
            prev_match = m_;                                                                       \
            break;                                                                                 \
        case TOK_SPLIT_CONTIGUOUS:                                                                 \
            if (m_ == prev_match && have_acc) {                                                    \
                acc_e = e_;                                                                        \
            } else {                                                                               \
                if (have_acc) EMIT(acc_s, acc_e);                                                  \
                acc_s = s_;                                                                        \
                acc_e = e_;                                                                        \
                have_acc = 1;                                                                      \
            }                                                                                      \
            prev_match = m_;                                                                       \
            break;                                                                                 \
        default:                                                                                   \
            break;                                                                                 \
        }                                                                                          \
    } while (0)

    if (behavior == TOK_SPLIT_MERGED_NEXT) {
        /* rare: collect all triples in a heap buffer and fold from the right */
        size_t cap = 0, k = 0; /* triples (start, end, matched) */
        uint32_t *tri = NULL, *grown;
        while (pos <= n) {
            int r = pcre2_match(st->re, (PCRE2_SPTR)subj, n, pos, opts | PCRE2_NO_UTF_CHECK, c->md,
                                NULL);
            if (r < 0) {
                if (r == PCRE2_ERROR_NOMATCH) break;
                free(tri);
                c->match_error = r;
                return -1;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) {
                if (ms >= n) break;
                pos = chord_utf8_next((const unsigned char *)subj, n, ms);
                continue;
            }
            if (k + 2 > cap) {
                if (!(grown = chord_array_grow(tri, &cap, k + 2, 3 * sizeof *tri))) {
                    free(tri);
                    return -1;
                }
                tri = grown;
            }
            if (prev != ms) {
                tri[3 * k] = (uint32_t)prev, tri[3 * k + 1] = (uint32_t)ms, tri[3 * k + 2] = 0;
                k++;
            }
            tri[3 * k] = (uint32_t)ms, tri[3 * k + 1] = (uint32_t)me, tri[3 * k + 2] = 1;
            k++;
            prev = pos = me;
        }
        if (prev != n) {
            if (k + 1 > cap) {
                if (!(grown = chord_array_grow(tri, &cap, k + 1, 3 * sizeof *tri))) {
                    free(tri);
                    return -1;
                }
                tri = grown;
            }
            tri[3 * k] = (uint32_t)prev, tri[3 * k + 1] = (uint32_t)n, tri[3 * k + 2] = 0;
            k++;
        }
        /* fold from the right: a match joins the piece after it */
        size_t first_out = out->n;
        int pm = 0, have = 0;
        uint32_t as = 0, ae = 0;
        for (size_t j = k; j-- > 0;) {
            uint32_t s = tri[3 * j], e = tri[3 * j + 1];
            int m = (int)tri[3 * j + 2] ^ st->invert;
            if (m && !pm && have) {
                as = s;
            } else {
                if (have && ae > as && pv_push(out, sub_piece(p, as, ae))) {
                    free(tri);
                    return -1;
                }
                as = s;
                ae = e;
                have = 1;
            }
            pm = m;
        }
        if (have && ae > as && pv_push(out, sub_piece(p, as, ae))) {
            free(tri);
            return -1;
        }
        free(tri);
        /* pieces were pushed right to left */
        for (size_t i = first_out, j = out->n - 1; i < j; i++, j--) {
            piece tmp = out->v[i];
            out->v[i] = out->v[j];
            out->v[j] = tmp;
        }
        return 0;
    }

    while (pos <= n) {
        int r =
            pcre2_match(st->re, (PCRE2_SPTR)subj, n, pos, opts | PCRE2_NO_UTF_CHECK, c->md, NULL);
        if (r < 0) {
            if (r == PCRE2_ERROR_NOMATCH) break;
            c->match_error = r; /* a resource limit: never guess the rest */
            return -1;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(c->md);
        size_t ms = ov[0], me = ov[1];
        if (me == ms) {
            /* empty matches only delimit; step over one character */
            if (ms >= n) break;
            pos = chord_utf8_next((const unsigned char *)subj, n, ms);
            continue;
        }
        if (prev != ms) FEED((uint32_t)prev, (uint32_t)ms, 0);
        FEED((uint32_t)ms, (uint32_t)me, 1);
        prev = pos = me;
    }
    if (prev != n) FEED((uint32_t)prev, (uint32_t)n, 0);
    if (have_acc) EMIT(acc_s, acc_e);
    return 0;
#undef FEED
#undef EMIT
}

/* --- BPE on one word ---------------------------------------------------------------------- */

static void heap_push(bpe_heap_entry *h, size_t *n, bpe_heap_entry e) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        bpe_heap_entry *q = &h[parent];
        if (q->rank < e.rank || (q->rank == e.rank && q->pos <= e.pos)) break;
        h[i] = *q;
        i = parent;
    }
    h[i] = e;
}

static bpe_heap_entry heap_pop(bpe_heap_entry *h, size_t *n) {
    bpe_heap_entry top = h[0];
    bpe_heap_entry last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, s = i;
        const bpe_heap_entry *best = &last;
        if (l < m &&
            (h[l].rank < best->rank || (h[l].rank == best->rank && h[l].pos < best->pos))) {
            s = l;
            best = &h[l];
        }
        if (r < m && (h[r].rank < best->rank || (h[r].rank == best->rank && h[r].pos < best->pos)))
            s = r;
        if (s == i) break;
        h[i] = h[s];
        i = s;
    }
    if (m > 0) h[i] = last;
    return top;
}

/* Room for a word of n bytes: its symbols, their heap (3 entries a symbol to start with) and
 * its tokens. */
static int ensure_word_space(enc_ctx *c, size_t n) {
    size_t need = n + 8;
    if (need <= c->cap_word && need <= c->cap_syms && 3 * need <= c->cap_heap) return 0;
    bpe_sym *s = chord_array_grow(c->syms, &c->cap_syms, need, sizeof *s);
    bpe_heap_entry *h = s ? chord_array_grow(c->heap, &c->cap_heap, 3 * need, sizeof *h) : NULL;
    if (s) c->syms = s;
    if (h) c->heap = h;
    int32_t *w = h ? chord_array_grow(c->wids, &c->cap_wids, need, sizeof *w) : NULL;
    if (w) c->wids = w;
    uint16_t *l = w ? chord_array_grow(c->wlens, &c->cap_wlens, need, sizeof *l) : NULL;
    if (!l) return -1;
    c->wlens = l;
    c->cap_word = c->cap_wids < c->cap_wlens ? c->cap_wids : c->cap_wlens;
    return 0;
}

/* Runs BPE on word w[0..n) (original bytes, not yet byte-mapped); fills c->wids / c->wlens and
 * returns the number of tokens, or -1 on out-of-memory. */
static long bpe_word(enc_ctx *c, const char *w, size_t n) {
    const tok_tokenizer *t = c->t;
    if (ensure_word_space(c, n)) return -1;
    size_t m = 0;
    bpe_sym *sy = c->syms;
    if (t->ignore_merges) {
        /* Llama 3: a word that is a whole token skips the merges */
        int32_t id;
        if (t->byte_level) {
            c->word.len = 0;
            for (size_t i = 0; i < n; i++) {
                char u[2];
                int k = tok_byte_to_unicode((unsigned char)w[i], u);
                if (chord_buf_append(&c->word, u, (size_t)k)) return -1;
            }
            id = tok_vocab_lookup(t, c->word.data, c->word.len);
        } else {
            id = tok_vocab_lookup(t, w, n);
        }
        if (id >= 0 && n <= 0xFFFF) {
            c->wids[0] = id;
            c->wlens[0] = (uint16_t)n;
            return 1;
        }
    }
    if (t->byte_level) {
        for (size_t i = 0; i < n; i++) {
            int32_t id = t->byte_to_id[(unsigned char)w[i]];
            if (id < 0) {
                if (t->unk_id < 0) continue; /* tokenizers drops it when there is no unk */
                id = t->unk_id;
            }
            sy[m].id = id;
            sy[m].len = 1;
            m++;
        }
    } else {
        /* characters missing from the vocabulary: ByteFallback's "<0xXX>" tokens when every byte
         * has one, else unk (consecutive unks fused into one with fuse_unk), else dropped */
        int32_t unk_pending = 0;
        uint32_t unk_len = 0;
        for (size_t i = 0; i < n;) {
            size_t len;
            if (chord_utf8_scan((const unsigned char *)w + i, n - i, &len, NULL) != CHORD_UTF8_OK)
                len = 1;
            int32_t id = tok_vocab_lookup(t, w + i, len);
            int32_t bytes[4];
            int have_bytes = 0;
            if (id < 0 && t->byte_fallback) {
                have_bytes = 1;
                for (size_t k = 0; k < len && have_bytes; k++) {
                    char hex[8];
                    snprintf(hex, sizeof hex, "<0x%02X>", (unsigned char)w[i + k]);
                    bytes[k] = tok_vocab_lookup(t, hex, 6);
                    have_bytes = bytes[k] >= 0;
                }
            }
            if (id >= 0 || have_bytes) {
                if (unk_pending) {
                    sy[m].id = t->unk_id;
                    sy[m].len = unk_len;
                    m++;
                    unk_pending = 0;
                }
                if (id >= 0) {
                    sy[m].id = id;
                    sy[m].len = (uint32_t)len;
                    m++;
                } else {
                    for (size_t k = 0; k < len; k++) {
                        sy[m].id = bytes[k];
                        sy[m].len = 1;
                        m++;
                    }
                }
            } else if (t->unk_id >= 0) {
                if (unk_pending && t->fuse_unk) {
                    unk_len += (uint32_t)len;
                } else {
                    if (unk_pending) {
                        sy[m].id = t->unk_id;
                        sy[m].len = unk_len;
                        m++;
                    }
                    unk_pending = 1;
                    unk_len = (uint32_t)len;
                }
            }
            i += len;
        }
        if (unk_pending) {
            sy[m].id = t->unk_id;
            sy[m].len = unk_len;
            m++;
        }
    }
    for (size_t i = 0; i < m; i++) {
        sy[i].prev = (int32_t)i - 1;
        sy[i].next = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    bpe_heap_entry *heap = c->heap;
    for (size_t i = 0; i + 1 < m; i++) {
        uint32_t rank;
        int32_t nid;
        if (merge_lookup(t, sy[i].id, sy[i + 1].id, &rank, &nid))
            heap_push(heap, &hn, (bpe_heap_entry){rank, (uint32_t)i, nid});
    }
    while (hn > 0) {
        bpe_heap_entry top = heap_pop(heap, &hn);
        bpe_sym *s = &sy[top.pos];
        if (s->len == 0 || s->next < 0) continue;
        int32_t nx = s->next;
        uint32_t rank;
        int32_t nid;
        if (!merge_lookup(t, s->id, sy[nx].id, &rank, &nid) || nid != top.new_id) continue;
        s->id = top.new_id;
        s->len += sy[nx].len;
        s->next = sy[nx].next;
        sy[nx].len = 0;
        if (s->next >= 0) sy[s->next].prev = (int32_t)top.pos;
        if (hn + 2 > c->cap_heap) {
            bpe_heap_entry *h = chord_array_grow(c->heap, &c->cap_heap, hn + 2, sizeof *h);
            if (!h) return -1;
            c->heap = heap = h;
        }
        if (s->prev >= 0 && merge_lookup(t, sy[s->prev].id, s->id, &rank, &nid))
            heap_push(heap, &hn, (bpe_heap_entry){rank, (uint32_t)s->prev, nid});
        if (s->next >= 0 && merge_lookup(t, s->id, sy[s->next].id, &rank, &nid))
            heap_push(heap, &hn, (bpe_heap_entry){rank, top.pos, nid});
    }
    long k = 0;
    for (int32_t i = m ? 0 : -1; i >= 0; i = sy[i].next) {
        c->wids[k] = sy[i].id;
        c->wlens[k] = (uint16_t)(sy[i].len > 0xFFFF ? 0xFFFF : sy[i].len);
        k++;
    }
    return k;
}

/* Maps an offset in the normalized segment to one in the original text. */
static uint32_t map_offset(const enc_ctx *c, uint32_t norm_off) {
    if (c->identity) return c->seg_orig + norm_off;
    size_t lo = 0, hi = c->n_runs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (c->runs[mid].norm_off <= norm_off)
            lo = mid;
        else
            hi = mid;
    }
    if (c->n_runs == 0) return c->seg_orig;
    const norm_run *r = &c->runs[lo];
    return c->seg_orig + r->orig_off + (r->exact ? norm_off - r->norm_off : 0);
}

static int encode_piece(enc_ctx *c, const piece *p) {
    const tok_tokenizer *t = c->t;
    long k;
    uint64_t h = tok_hash_bytes(p->p, p->len);
    int32_t *ids;
    uint16_t *lens;
    if (ensure_word_space(c, p->len)) return -1;
    k = cache_get(t->cache, h, p->p, p->len, c->wids, c->wlens, c->cap_word);
    if (k < 0) {
        k = bpe_word(c, p->p, p->len);
        if (k < 0) return -1;
        cache_put(t->cache, h, p->p, p->len, c->wids, c->wlens, (size_t)k);
    }
    if (k == 0) return 0; /* no token for it (no unk_token, no byte token): nothing to copy */
    ids = c->wids;
    lens = c->wlens;
    tok_ids *out = c->out;
    if (ids_reserve(out, (size_t)k)) return -1;
    if (!c->offsets) {
        memcpy(out->ids + out->n, ids, (size_t)k * sizeof *ids);
        out->n += (size_t)k;
        return 0;
    }
    uint32_t pos = 0;
    for (long i = 0; i < k; i++) {
        uint32_t rel = pos > p->prefix ? pos - p->prefix : 0;
        out->ids[out->n] = ids[i];
        out->offsets[out->n] =
            map_offset(c, p->map ? p->map[pos < p->len ? pos : p->len - 1] : p->off + rel);
        out->n++;
        pos += lens[i];
    }
    return 0;
}

/* Metaspace on one piece: every ' ' becomes the replacement character, the prepend scheme adds
 * one in front (always; first: only to the piece that starts the input), then with split the
 * piece is cut before each replacement character (MergedWithNext). */
static int metaspace_piece(enc_ctx *c, const tok_pretok_step *st, const piece *p, piece_vec *out) {
    if (p->len == 0) return 0;
    const char *rep = st->replacement;
    const size_t rn = (size_t)st->replacement_len;
    size_t spaces = 0;
    for (uint32_t i = 0; i < p->len; i++)
        spaces += p->p[i] == ' ';
        /* where each byte of p sits in the normalized segment */
#define SRC_OFF(i) (p->map ? p->map[(i)] : p->off + ((i) > p->prefix ? (i)-p->prefix : 0))
    int starts_with = p->p[0] == ' ' || (p->len >= rn && memcmp(p->p, rep, rn) == 0);
    int prepend = 0;
    if (!starts_with && st->prepend_scheme == TOK_PREPEND_ALWAYS) prepend = 1;
    if (!starts_with && st->prepend_scheme == TOK_PREPEND_FIRST)
        prepend = map_offset(c, SRC_OFF(0)) == 0;
    size_t n = p->len + spaces * (rn - 1) + (prepend ? rn : 0);
    char *q = arena_alloc(c, n);
    uint32_t *map = (uint32_t *)(void *)arena_alloc(c, n * sizeof *map);
    if (!q || !map) return -1;
    size_t k = 0;
    if (prepend) {
        for (size_t j = 0; j < rn; j++, k++) {
            q[k] = rep[j];
            map[k] = SRC_OFF(0);
        }
    }
    for (uint32_t i = 0; i < p->len; i++) {
        if (p->p[i] == ' ') {
            for (size_t j = 0; j < rn; j++, k++) {
                q[k] = rep[j];
                map[k] = SRC_OFF(i);
            }
        } else {
            q[k] = p->p[i];
            map[k++] = SRC_OFF(i);
        }
    }
#undef SRC_OFF
    piece whole = {q, (uint32_t)n, 0, 0, map};
    if (!st->split) return pv_push(out, whole);
    /* MergedWithNext on the replacement character: each piece starts at one */
    size_t start = 0;
    for (size_t i = 1; i + rn <= n; i++) {
        if (memcmp(q + i, rep, rn) != 0) continue;
        if (pv_push(out, sub_piece(&whole, (uint32_t)start, (uint32_t)i))) return -1;
        start = i;
        i += rn - 1;
    }
    return pv_push(out, sub_piece(&whole, (uint32_t)start, (uint32_t)n));
}

/* Pre-tokenizes and encodes a normalized stretch [s, s+n) of c->norm (no added tokens inside). */
static int encode_pretokenized(enc_ctx *c, const char *s, size_t n, uint32_t norm_off) {
    const tok_tokenizer *t = c->t;
    if (n == 0) return 0;
    piece_vec *cur = &c->a, *nxt = &c->b;
    cur->n = 0;
    if (pv_push(cur, (piece){s, (uint32_t)n, norm_off, 0, NULL})) return -1;
    for (int si = 0; si < t->n_steps; si++) {
        const tok_pretok_step *st = &t->steps[si];
        nxt->n = 0;
        for (size_t i = 0; i < cur->n; i++) {
            piece p = cur->v[i];
            if (st->kind == TOK_STEP_BYTELEVEL && st->add_prefix_space && p.len > 0 &&
                p.p[0] != ' ') {
                char *q = arena_alloc(c, p.len + 1);
                if (!q) return -1;
                q[0] = ' ';
                memcpy(q + 1, p.p, p.len);
                p.p = q;
                p.len++;
                p.prefix = 1;
            }
            if (st->kind == TOK_STEP_METASPACE) {
                if (metaspace_piece(c, st, &p, nxt)) return -1;
                continue;
            }
            if (st->re) {
                int r = split_piece(c, st, &p, nxt);
                if (r) return -1;
            } else if (pv_push(nxt, p)) {
                return -1;
            }
        }
        piece_vec *tmp = cur;
        cur = nxt;
        nxt = tmp;
    }
    for (size_t i = 0; i < cur->n; i++)
        if (encode_piece(c, &cur->v[i])) return -1;
    return 0;
}

/* Leftmost-longest added-token matches in s[0..n), with lstrip/rstrip/single_word as HF applies
 * them, calling emit_gap/emit_token in order. */
typedef int (*gap_fn)(enc_ctx *c, const char *s, size_t start, size_t end);

static int split_added(enc_ctx *c, const struct tok_trie *tr, const char *s, size_t n, gap_fn gap,
                       uint32_t (*token_offset)(const enc_ctx *, size_t)) {
    const tok_tokenizer *t = c->t;
    const unsigned char *u = (const unsigned char *)s;
    size_t start_offset = 0, i = 0;
    if (tr && tr->n > 0) {
        while (i < n) {
            if (!tr->first[u[i]]) {
                i++;
                continue;
            }
            size_t len = 0;
            int32_t ai = trie_longest(tr, u + i, n - i, &len);
            if (ai < 0) {
                i++;
                continue;
            }
            const tok_added *ad = &t->added[ai];
            size_t start = i, stop = i + len;
            if (ad->single_word) {
                size_t ps;
                int start_space = start == 0 || !is_alphanumeric(chord_utf8_prev(u, start, &ps));
                uint32_t ncp = 0;
                size_t nl;
                int stop_space = stop == n;
                if (!stop_space) {
                    chord_utf8_scan(u + stop, n - stop, &nl, &ncp);
                    stop_space = !is_alphanumeric(ncp);
                }
                if (!start_space || !stop_space) {
                    i = stop; /* the automaton resumes after the rejected match */
                    continue;
                }
            }
            if (ad->lstrip) {
                size_t ns = start;
                while (ns > 0) {
                    size_t ps;
                    uint32_t cp = chord_utf8_prev(u, ns, &ps);
                    if (!is_white_space(cp)) break;
                    ns = ps;
                }
                start = ns > start_offset ? ns : start_offset;
            }
            size_t resume = stop;
            if (ad->rstrip) {
                while (stop < n) {
                    size_t nl;
                    uint32_t cp = 0;
                    chord_utf8_scan(u + stop, n - stop, &nl, &cp);
                    if (!is_white_space(cp)) break;
                    stop += nl;
                }
            }
            if (start_offset < start && gap(c, s, start_offset, start)) return -1;
            if (tok_ids_push(c->out, ad->id, token_offset(c, start))) return -1;
            start_offset = stop;
            i = resume; /* the automaton resumes after the match itself */
        }
    }
    if (start_offset < n && gap(c, s, start_offset, n)) return -1;
    return 0;
}

static uint32_t offset_in_norm(const enc_ctx *c, size_t off) {
    return map_offset(c, (uint32_t)off);
}

static int gap_norm(enc_ctx *c, const char *s, size_t start, size_t end) {
    return encode_pretokenized(c, s + start, end - start, (uint32_t)start);
}

static int run_push(enc_ctx *c, uint32_t norm_off, uint32_t orig_off, int exact) {
    if (c->n_runs == c->cap_runs) {
        norm_run *r = chord_array_grow(c->runs, &c->cap_runs, c->n_runs + 1, sizeof *r);
        if (!r) return -1;
        c->runs = r;
    }
    c->runs[c->n_runs++] = (norm_run){norm_off, orig_off, (uint8_t)exact};
    return 0;
}

/* The general normalizer path (Lowercase, Strip, Replace, Prepend, with or without the Unicode
 * forms): the text and, per byte, the segment offset of the character it came from. */
typedef struct norm_text {
    chord_buf text;
    uint32_t *orig;
    size_t cap;
} norm_text;

static int nt_append(norm_text *d, const char *b, size_t n, const uint32_t *orig, uint32_t fixed) {
    if (d->text.len + n > d->cap) {
        uint32_t *o = chord_array_grow(d->orig, &d->cap, d->text.len + n, sizeof *o);
        if (!o) return -1;
        d->orig = o;
    }
    for (size_t i = 0; i < n; i++)
        d->orig[d->text.len + i] = orig ? orig[i] : fixed;
    return chord_buf_append(&d->text, b, n);
}

/* Rust's char::to_lowercase: the simple mapping, but U+0130 (İ) becomes "i̇" */
static int lowercase_char(uint32_t cp, char out[8]) {
    if (cp == 0x130) {
        memcpy(out, "i\xCC\x87", 3);
        return 3;
    }
    return (int)utf8proc_encode_char(utf8proc_tolower((utf8proc_int32_t)cp),
                                     (utf8proc_uint8_t *)out);
}

static int normalize_op(const tok_norm_op *op, const norm_text *a, norm_text *b,
                        pcre2_match_data *md) {
    const char *s = a->text.data;
    const size_t n = a->text.len;
    const uint32_t *o = a->orig;
    b->text.len = 0;
    if (chord_buf_append(&b->text, "", 0)) return -1;
    switch (op->kind) {
    case TOK_NORM_UNICODE:
        for (size_t i = 0; i < n;) {
            /* a run: an optional ASCII starter and the non-ASCII characters after it */
            size_t r = i + 1;
            while (r < n && (unsigned char)s[r] >= 0x80)
                r++;
            if (r == i + 1 && (unsigned char)s[i] < 0x80) {
                if (nt_append(b, s + i, 1, o + i, 0)) return -1;
                i = r;
                continue;
            }
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t m =
                utf8proc_map((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(r - i), &dst,
                             (utf8proc_option_t)op->flags);
            if (m < 0) {
                free(dst);
                return -1;
            }
            int same = (size_t)m == r - i && memcmp(dst, s + i, r - i) == 0;
            int rc = nt_append(b, (const char *)dst, (size_t)m, same ? o + i : NULL, o[i]);
            free(dst);
            if (rc) return -1;
            i = r;
        }
        return 0;
    case TOK_NORM_LOWERCASE:
        for (size_t i = 0; i < n;) {
            size_t len;
            uint32_t cp = 0xFFFD;
            chord_utf8_scan((const unsigned char *)s + i, n - i, &len, &cp);
            char lc[8];
            int k = lowercase_char(cp, lc);
            int same = (size_t)k == len && memcmp(lc, s + i, len) == 0;
            if (nt_append(b, lc, (size_t)k, same ? o + i : NULL, o[i])) return -1;
            i += len;
        }
        return 0;
    case TOK_NORM_STRIP: {
        size_t lo = 0, hi = n, len, ps;
        uint32_t cp = 0;
        while (op->left && lo < hi) {
            chord_utf8_scan((const unsigned char *)s + lo, hi - lo, &len, &cp);
            if (!is_white_space(cp)) break;
            lo += len;
        }
        while (op->right && hi > lo) {
            cp = chord_utf8_prev((const unsigned char *)s, hi, &ps);
            if (!is_white_space(cp) || ps < lo) break;
            hi = ps;
        }
        return nt_append(b, s + lo, hi - lo, o + lo, 0);
    }
    case TOK_NORM_PREPEND:
        if (n > 0 && nt_append(b, op->content, op->content_len, NULL, o[0])) return -1;
        return nt_append(b, s, n, o, 0);
    case TOK_NORM_REPLACE: {
        size_t pos = 0, prev = 0;
        while (pos <= n) {
            int r = pcre2_match(op->re, (PCRE2_SPTR)s, n, pos, PCRE2_NO_UTF_CHECK, md, NULL);
            if (r < 0) {
                if (r == PCRE2_ERROR_NOMATCH) break;
                return -1;
            }
            PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
            size_t ms = ov[0], me = ov[1];
            if (me == ms) { /* an empty match replaces nothing */
                if (ms >= n) break;
                pos = chord_utf8_next((const unsigned char *)s, n, ms);
                continue;
            }
            if (nt_append(b, s + prev, ms - prev, o + prev, 0) ||
                nt_append(b, op->content, op->content_len, NULL, o[ms]))
                return -1;
            prev = pos = me;
        }
        return nt_append(b, s + prev, n - prev, o + prev, 0);
    }
    default:
        return -1;
    }
}

static int normalize_general(enc_ctx *c, const char *s, size_t n) {
    const tok_tokenizer *t = c->t;
    norm_text a = {0}, b = {0};
    int rc = -1;
    if (n > 0xFFFFFFF0u) return -1;
    if (chord_buf_append(&a.text, "", 0)) goto done;
    for (size_t j = 0; j < n; j += 256) { /* identity offsets, in blocks */
        uint32_t blk[256];
        size_t m = n - j < 256 ? n - j : 256;
        for (size_t k = 0; k < m; k++)
            blk[k] = (uint32_t)(j + k);
        if (nt_append(&a, s + j, m, blk, 0)) goto done;
    }
    for (int k = 0; k < t->n_norm; k++) {
        if (normalize_op(&t->norm[k], &a, &b, c->md)) goto done;
        norm_text tmp = a;
        a = b;
        b = tmp;
    }
    c->norm.len = 0;
    c->n_runs = 0;
    if (chord_buf_append(&c->norm, a.text.data, a.text.len)) goto done;
    c->identity = a.text.len == n && memcmp(a.text.data, s, n) == 0;
    for (size_t i = 0; i < a.text.len && !c->identity; i++)
        if ((i == 0 || a.orig[i] != a.orig[i - 1] + 1) && run_push(c, (uint32_t)i, a.orig[i], 1))
            goto done;
    rc = 0;
done:
    chord_buf_free(&a.text);
    chord_buf_free(&b.text);
    free(a.orig);
    free(b.orig);
    return rc;
}

/* Normalizes s[0..n) into c->norm. Runs are split before each ASCII character: no normalization
 * form composes or reorders across a starter that is ASCII, so each run normalizes alone, and
 * offsets map exactly wherever a run comes out unchanged. */
static int normalize(enc_ctx *c, const char *s, size_t n) {
    const tok_tokenizer *t = c->t;
    c->norm.len = 0;
    c->n_runs = 0;
    c->identity = 1;
    size_t i = 0;
    int all_ascii = 1;
    for (size_t k = 0; k < n; k++)
        if ((unsigned char)s[k] >= 0x80) {
            all_ascii = 0;
            break;
        }
    if (t->norm_general) return normalize_general(c, s, n);
    if (t->n_norm == 0 || all_ascii) {
        c->norm.len = 0;
        return chord_buf_append(&c->norm, s, n);
    }
    while (i < n) {
        /* an ASCII stretch, minus its last character when non-ASCII follows (it may compose) */
        size_t j = i;
        while (j < n && (unsigned char)s[j] < 0x80)
            j++;
        size_t ascii_end = j < n && j > i ? j - 1 : j;
        if (ascii_end > i) {
            if (run_push(c, (uint32_t)c->norm.len, (uint32_t)i, 1) ||
                chord_buf_append(&c->norm, s + i, ascii_end - i))
                return -1;
            i = ascii_end;
        }
        if (i >= n) break;
        /* a run: optional ASCII starter + non-ASCII characters up to the next ASCII byte */
        size_t r = i;
        if ((unsigned char)s[r] < 0x80) r++;
        while (r < n && (unsigned char)s[r] >= 0x80)
            r++;
        const char *src = s + i;
        size_t len = r - i;
        char *cur = NULL;
        size_t cur_len = len;
        for (int k = 0; k < t->n_norm; k++) {
            utf8proc_uint8_t *dst = NULL;
            utf8proc_ssize_t m =
                utf8proc_map((const utf8proc_uint8_t *)(cur ? cur : src), (utf8proc_ssize_t)cur_len,
                             &dst, (utf8proc_option_t)t->norm[k].flags);
            if (m < 0) {
                free(cur);
                free(dst);
                return -1;
            }
            free(cur);
            cur = (char *)dst;
            cur_len = (size_t)m;
        }
        int same = cur_len == len && memcmp(cur, src, len) == 0;
        if (!same) c->identity = 0;
        int rc = run_push(c, (uint32_t)c->norm.len, (uint32_t)i, same) ||
                 chord_buf_append(&c->norm, cur, cur_len);
        free(cur);
        if (rc) return -1;
        i = r;
    }
    return 0;
}

/* A stretch of the original text with no raw (normalized=false) added token inside. */
static int gap_raw(enc_ctx *c, const char *s, size_t start, size_t end) {
    const tok_tokenizer *t = c->t;
    if (normalize(c, s + start, end - start)) return -1;
    c->seg_orig = (uint32_t)start;
    if (c->identity) c->n_runs = 0;
    /* copy: norm is reused by nested calls only after this segment is finished */
    const char *ns = c->norm.data;
    size_t nn = c->norm.len;
    return split_added(c, t->trie_norm, ns, nn, gap_norm, offset_in_norm);
}

static uint32_t offset_raw(const enc_ctx *c, size_t off) {
    (void)c;
    return (uint32_t)off;
}

/* Offsets into text[0..len) once chord_utf8_append_lossy has repaired it into clean_len bytes:
 * map[i] is the input offset of repaired byte i (the three bytes of a U+FFFD all map to the start
 * of what it replaced), map[clean_len] = len. NULL when out of memory. */
static uint32_t *lossy_offset_map(const char *text, size_t len, size_t clean_len) {
    uint32_t *map = malloc((clean_len + 1) * sizeof *map);
    if (!map) return NULL;
    size_t i = 0, o = 0;
    while (i < len && o < clean_len) {
        size_t n = 1;
        int kind = chord_utf8_scan((const unsigned char *)text + i, len - i, &n, NULL);
        size_t out_n = kind == CHORD_UTF8_OK ? n : 3; /* U+FFFD is 3 bytes */
        for (size_t k = 0; k < out_n && o < clean_len; k++)
            map[o++] = (uint32_t)(kind == CHORD_UTF8_OK ? i + k : i);
        i += n;
    }
    while (o <= clean_len)
        map[o++] = (uint32_t)len;
    return map;
}

int tok_encode(const tok_tokenizer *tok, const char *text, size_t len, unsigned flags, tok_ids *out,
               chord_err *err) {
    enc_ctx c;
    memset(&c, 0, sizeof c);
    c.t = tok;
    c.out = out;
    c.offsets = (flags & TOK_ENCODE_OFFSETS) != 0;
    chord_buf clean = {0};
    uint32_t *lossy_map = NULL; /* offsets in the repaired text -> the caller's (tokenizer.h) */
    size_t first = out->n, given_len = len;
    int rc = -1;
    if (len > 0xFFFFFFF0u) return chord_err_set(err, "text of %zu bytes is too long", len);
    if (!chord_utf8_valid(text, len)) {
        if (chord_utf8_append_lossy(&clean, text, len)) goto oom;
        if (clean.len > 0xFFFFFFF0u) {
            size_t repaired = clean.len;
            chord_buf_free(&clean);
            return chord_err_set(err, "text of %zu bytes is too long once repaired", repaired);
        }
        if (c.offsets && !(lossy_map = lossy_offset_map(text, len, clean.len))) goto oom;
        text = clean.data;
        len = clean.len;
    }
    c.md = pcre2_match_data_create(1, NULL);
    if (!c.md) goto oom;
    if ((flags & TOK_ENCODE_ADD_SPECIAL) && tok->add_bos && tok->bos_id >= 0 &&
        !(tok->n_post_prefix > 0 && tok->post_prefix[0] == tok->bos_id))
        if (tok_ids_push(out, tok->bos_id, 0)) goto oom;
    if ((flags & TOK_ENCODE_ADD_SPECIAL))
        for (int i = 0; i < tok->n_post_prefix; i++)
            if (tok_ids_push(out, tok->post_prefix[i], 0)) goto oom;
    if (split_added(&c, tok->trie_raw, text, len, gap_raw, offset_raw)) goto oom;
    if ((flags & TOK_ENCODE_ADD_SPECIAL)) {
        for (int i = 0; i < tok->n_post_suffix; i++)
            if (tok_ids_push(out, tok->post_suffix[i], (uint32_t)len)) goto oom;
        if (tok->add_eos && tok->eos_id >= 0 &&
            !(tok->n_post_suffix > 0 && tok->post_suffix[tok->n_post_suffix - 1] == tok->eos_id))
            if (tok_ids_push(out, tok->eos_id, (uint32_t)len)) goto oom;
    }
    if (lossy_map)
        for (size_t i = first; i < out->n; i++)
            out->offsets[i] =
                out->offsets[i] <= len ? lossy_map[out->offsets[i]] : (uint32_t)given_len;
    rc = 0;
    goto done;
oom:
    if (c.match_error) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(c.match_error, msg, sizeof msg);
        chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer: the pre-tokenizer regex failed: %s",
                       (const char *)msg);
    } else {
        chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer: out of memory");
    }
done:
    ctx_free(&c);
    chord_buf_free(&clean);
    free(lossy_map);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Decoding                                                                                     */

/* ByteFallback's run of byte tokens: its UTF-8 text, or one U+FFFD per byte when the run is not
 * valid UTF-8 as a whole (the crate's rule, stricter than a lossy decode). */
static int flush_byte_run(chord_buf *out, chord_buf *run) {
    int rc = 0;
    if (run->len == 0) return 0;
    if (chord_utf8_valid(run->data, run->len)) {
        rc = chord_buf_append(out, run->data, run->len);
    } else {
        for (size_t i = 0; i < run->len && !rc; i++)
            rc = chord_buf_append(out, "\xEF\xBF\xBD", 3);
    }
    run->len = 0;
    return rc;
}

/* The chain's steps after the tokens are joined, on the whole text: Strip and Replace. */
static int decode_post(const tok_tokenizer *t, chord_buf *text) {
    for (int i = t->n_dec_token_ops + 1; i < t->n_dec_ops; i++) {
        const tok_dec_op *op = &t->dec_ops[i];
        if (op->kind == TOK_DEC_STRIP) {
            const char *p = text->data;
            size_t n = text->len;
            strip_chars(&p, &n, op->pattern, op->pattern_len, op->start, op->stop);
            memmove(text->data, p, n);
            text->len = n;
            text->data[n] = '\0';
        } else if (op->kind == TOK_DEC_REPLACE) {
            chord_buf r = {0};
            if (chord_buf_append(&r, "", 0) ||
                replace_literal(&r, text->data, text->len, op->pattern, op->pattern_len,
                                op->content, op->content_len)) {
                chord_buf_free(&r);
                return -1;
            }
            chord_buf_free(text);
            *text = r;
        }
    }
    return 0;
}

int tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n, int skip_special,
               char **text, size_t *len, chord_err *err) {
    chord_buf raw = {0}, out = {0}, run = {0}, one = {0};
    *text = NULL;
    if (len) *len = 0;
    int first = 1;
    const int chain = tok->decoder == TOK_DECODER_CHAIN;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id < 0 || id >= tok->vocab_size || !tok->dec[id]) {
            chord_buf_free(&raw);
            chord_buf_free(&run);
            return chord_err_set(err, "token id %d at position %zu is not in the vocabulary", id,
                                 i);
        }
        if (skip_special && tok->special[id]) continue;
        if (chain && tok->byte_token[id]) {
            if (chord_buf_append(&run, tok->dec[id], tok->dec_len[id])) goto oom;
            first = 0;
            continue;
        }
        if (chain && flush_byte_run(&raw, &run)) goto oom;
        if (tok->decoder == TOK_DECODER_NONE && !first && chord_buf_append(&raw, " ", 1)) goto oom;
        if (chain && first && tok->dec_first_differs) {
            if (decode_token(tok, id, 1, &one) < 0 || chord_buf_append(&raw, one.data, one.len))
                goto oom;
        } else if (chord_buf_append(&raw, tok->dec[id], tok->dec_len[id])) {
            goto oom;
        }
        first = 0;
    }
    if (chain && flush_byte_run(&raw, &run)) goto oom;
    if (chord_buf_reserve(&out, raw.len + 1) || chord_utf8_append_lossy(&out, raw.data, raw.len))
        goto oom;
    if (chain && decode_post(tok, &out)) goto oom;
    chord_buf_free(&raw);
    chord_buf_free(&run);
    chord_buf_free(&one);
    *text = out.data;
    if (len) *len = out.len;
    return 0;
oom:
    chord_buf_free(&raw);
    chord_buf_free(&out);
    chord_buf_free(&run);
    chord_buf_free(&one);
    return chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer: out of memory");
}

void tok_stream_init(tok_stream *s, const tok_tokenizer *tok, int skip_special) {
    memset(s, 0, sizeof *s);
    s->tok = tok;
    s->skip_special = skip_special;
}

/* Writes out the complete characters of s->pending + b[0..n) and keeps a cut tail. */
static size_t stream_emit(tok_stream *s, const unsigned char *b, size_t n, char *out) {
    size_t o = 0;
    /* first finish the pending bytes with the new ones */
    size_t i = 0;
    while (s->n_pending > 0 && i <= n) {
        unsigned char tmp[8];
        size_t k = s->n_pending;
        memcpy(tmp, s->pending, k);
        size_t take = 0;
        while (k < 4 && take < n - i)
            tmp[k++] = b[i + take++];
        size_t len;
        int r = chord_utf8_scan(tmp, k, &len, NULL);
        if (r == CHORD_UTF8_SHORT) {
            memcpy(s->pending, tmp, k);
            s->n_pending = k;
            return o;
        }
        if (r == CHORD_UTF8_OK) {
            memcpy(out + o, tmp, len);
            o += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        /* bytes of tmp beyond len: the ones from pending stay pending-first, the new ones resume */
        if (len < s->n_pending) {
            memmove(s->pending, s->pending + len, s->n_pending - len);
            s->n_pending -= len;
        } else {
            i += len - s->n_pending;
            s->n_pending = 0;
        }
    }
    while (i < n) {
        if (b[i] < 0x80) {
            out[o++] = (char)b[i++];
            continue;
        }
        size_t len;
        int r = chord_utf8_scan(b + i, n - i, &len, NULL);
        if (r == CHORD_UTF8_SHORT) {
            memcpy(s->pending, b + i, len);
            s->n_pending = len;
            break;
        }
        if (r == CHORD_UTF8_OK) {
            memcpy(out + o, b + i, len);
            o += len;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += len;
    }
    return o;
}

/* A Strip step after the join on the stream's new text out[0..*o): the start of the whole text is
 * stripped once; of the copies of the character that end the text so far, up to `stop` are held
 * back (s->held), since the whole text's last ones are stripped: they come out before the next
 * text that is not a copy, and never if none comes. */
static int stream_strip(tok_stream *s, const tok_dec_op *op, char *out, size_t cap, size_t *o,
                        chord_err *err) {
    const char *p = out;
    size_t m = *o, cn = op->pattern_len;
    if (!s->kept) {
        int left = op->start - s->stripped;
        strip_chars(&p, &m, op->pattern, cn, left > 0 ? left : 0, 0);
        s->stripped += (int)((*o - m) / cn);
    }
    memmove(out, p, m);
    *o = m;
    if (op->stop == 0 || m == 0) return 0;
    size_t trail = 0; /* copies ending the new text */
    while ((trail + 1) * cn <= m && memcmp(out + m - (trail + 1) * cn, op->pattern, cn) == 0)
        trail++;
    int only_copies = trail * cn == m;
    size_t total = only_copies ? (size_t)s->held + trail : trail;
    size_t keep = total < (size_t)op->stop ? total : (size_t)op->stop;
    /* out: the copies released, then the new text without the copies now held */
    size_t release = only_copies ? total - keep : (size_t)s->held;
    size_t body = only_copies ? 0 : m - keep * cn;
    if (release * cn + body > cap)
        return chord_err_set(err, "stream output buffer of %zu bytes is too small", cap);
    memmove(out + release * cn, out, body);
    for (size_t k = 0; k < release; k++)
        memcpy(out + k * cn, op->pattern, cn);
    *o = release * cn + body;
    s->held = (int)keep;
    return 0;
}

/* The chain's steps after the join (Strip, Replace) on the stream's new text out[0..*o). */
static int stream_post(tok_stream *s, char *out, size_t cap, size_t *o, chord_err *err) {
    const tok_tokenizer *t = s->tok;
    for (int i = t->n_dec_token_ops + 1; i < t->n_dec_ops; i++) {
        const tok_dec_op *op = &t->dec_ops[i];
        if (op->kind == TOK_DEC_STRIP) {
            if (stream_strip(s, op, out, cap, o, err)) return -1;
        } else if (op->kind == TOK_DEC_REPLACE && *o > 0) {
            chord_buf r = {0};
            if (chord_buf_append(&r, "", 0) ||
                replace_literal(&r, out, *o, op->pattern, op->pattern_len, op->content,
                                op->content_len)) {
                chord_buf_free(&r);
                return chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer: out of memory");
            }
            if (r.len > cap) {
                chord_buf_free(&r);
                return chord_err_set(err, "stream output buffer of %zu bytes is too small", cap);
            }
            memcpy(out, r.data, r.len);
            *o = r.len;
            chord_buf_free(&r);
        }
    }
    if (*o > 0) s->kept = 1;
    return 0;
}

int tok_stream_push(tok_stream *s, int32_t id, char *out, size_t cap, size_t *out_len,
                    chord_err *err) {
    const tok_tokenizer *t = s->tok;
    *out_len = 0;
    if (id < 0 || id >= t->vocab_size || !t->dec[id])
        return chord_err_set(err, "token id %d is not in the vocabulary", id);
    if (s->skip_special && t->special[id]) return 0;
    size_t n = t->dec_len[id];
    if (cap < n * 3 + 16)
        return chord_err_set(err, "stream output buffer of %zu bytes is too small", cap);
    if (t->decoder != TOK_DECODER_CHAIN) {
        size_t o = 0;
        /* no decoder: tokenizers joins the tokens with spaces, as tok_decode does */
        if (t->decoder == TOK_DECODER_NONE && s->started)
            o = stream_emit(s, (const unsigned char *)" ", 1, out);
        s->started = 1;
        *out_len = o + stream_emit(s, (const unsigned char *)t->dec[id], n, out + o);
        return 0;
    }
    /* a decoder chain: the first token may decode apart (Metaspace), and the steps after the
     * join apply to what comes out (Strip's start counts from the start of the text) */
    chord_buf one = {0};
    const char *bytes = t->dec[id];
    if (!s->started && t->dec_first_differs && !t->byte_token[id]) {
        if (decode_token(t, id, 1, &one) < 0) {
            chord_buf_free(&one);
            return chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer: out of memory");
        }
        bytes = one.data;
        n = one.len;
    }
    s->started = 1;
    size_t o = stream_emit(s, (const unsigned char *)bytes, n, out);
    chord_buf_free(&one);
    if (stream_post(s, out, cap, &o, err)) return -1;
    *out_len = o;
    return 0;
}

void tok_stream_finish(tok_stream *s, char *out, size_t *out_len) {
    *out_len = 0;
    if (s->n_pending > 0) {
        /* the cut character ends the text as U+FFFD: after the steps of the join, and after
         * the characters a Strip held back, which are then not last */
        char text[64];
        size_t o = 3;
        memcpy(text, "\xEF\xBF\xBD", 3);
        if (s->tok->decoder == TOK_DECODER_CHAIN && stream_post(s, text, sizeof text, &o, NULL))
            o = 3;
        while (o > 8) /* only a Replace lengthening U+FFFD gets here: whole characters */
            do
                o--;
            while (o > 0 && ((unsigned char)text[o] & 0xC0) == 0x80);
        memcpy(out, text, o);
        *out_len = o;
        s->n_pending = 0;
    }
    s->held = 0; /* the text's last characters: the Strip removes them */
}
