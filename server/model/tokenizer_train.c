/* tokenizer_train.c — byte-level BPE training (see tokenizer_train.h): pre-tokenize the corpus
 * with the Qwen regex, count words, then merge the most frequent pair until the vocabulary is
 * full. Pair counts live in a hash map updated per merge by re-counting only the words that
 * contain the merged pair. Sized for demo vocabularies (thousands of merges, megabytes of text). */
#include "server/model/tokenizer_train.h"

#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "server/base/fileutil.h"
#include "server/model/tokenizer_internal.h"

static const char QWEN_REGEX[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

static const char CHATML_TEMPLATE[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\\n' }}{% endif %}";

static const char *const DEFAULT_SPECIAL[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

void tok_train_options_default(tok_train_options *opt) {
    opt->vocab_size = 1024;
    opt->min_frequency = 2;
    opt->special = (const char **)DEFAULT_SPECIAL;
    opt->n_special = 3;
}

/* --- word counts ------------------------------------------------------------------------------ */

typedef struct word_entry {
    uint64_t hash; /* 0 = empty */
    uint32_t off, len;
    int64_t count;
} word_entry;

typedef struct word_map {
    word_entry *slots;
    size_t mask, n;
    chord_buf keys;
} word_map;

static int word_map_add(word_map *m, const char *w, size_t n) {
    if ((m->n + 1) * 2 > m->mask + 1) {
        size_t cap = m->slots ? (m->mask + 1) * 2 : 4096;
        word_entry *s = calloc(cap, sizeof *s);
        if (!s) return -1;
        for (size_t i = 0; m->slots && i <= m->mask; i++) {
            word_entry *e = &m->slots[i];
            if (!e->hash) continue;
            size_t j = e->hash & (cap - 1);
            while (s[j].hash)
                j = (j + 1) & (cap - 1);
            s[j] = *e;
        }
        free(m->slots);
        m->slots = s;
        m->mask = cap - 1;
    }
    uint64_t h = tok_hash_bytes(w, n) | 1;
    size_t i = h & m->mask;
    for (;; i = (i + 1) & m->mask) {
        word_entry *e = &m->slots[i];
        if (!e->hash) break;
        if (e->hash == h && e->len == n && memcmp(m->keys.data + e->off, w, n) == 0) {
            e->count++;
            return 0;
        }
    }
    word_entry *e = &m->slots[i];
    e->hash = h;
    e->off = (uint32_t)m->keys.len;
    e->len = (uint32_t)n;
    e->count = 1;
    m->n++;
    return chord_buf_append(&m->keys, w, n);
}

/* --- pair counts ------------------------------------------------------------------------------ */

typedef struct pair_entry {
    uint64_t key; /* a << 32 | b, bit 63 set; 0 = empty */
    int64_t count;
} pair_entry;

typedef struct pair_map {
    pair_entry *slots;
    size_t mask, n;
} pair_map;

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

static int pair_add(pair_map *m, int32_t a, int32_t b, int64_t delta) {
    if ((m->n + 1) * 2 > m->mask + 1) {
        size_t cap = m->slots ? (m->mask + 1) * 2 : 4096;
        pair_entry *s = calloc(cap, sizeof *s);
        if (!s) return -1;
        for (size_t i = 0; m->slots && i <= m->mask; i++) {
            if (!m->slots[i].key) continue;
            size_t j = mix(m->slots[i].key) & (cap - 1);
            while (s[j].key)
                j = (j + 1) & (cap - 1);
            s[j] = m->slots[i];
        }
        free(m->slots);
        m->slots = s;
        m->mask = cap - 1;
    }
    uint64_t k = ((uint64_t)(uint32_t)a << 32 | (uint32_t)b) | (1ull << 63);
    size_t i = mix(k) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (m->slots[i].key == k) {
            m->slots[i].count += delta;
            return 0;
        }
        if (!m->slots[i].key) break;
    }
    m->slots[i].key = k;
    m->slots[i].count = delta;
    m->n++;
    return 0;
}

typedef struct train_word {
    int32_t *sym;
    int n;
    int64_t count;
} train_word;

typedef struct token_bytes {
    char *s;
    size_t n;
} token_bytes;

/* -1 / 0 / 1 comparing (a1, b1) with (a2, b2) by bytes. */
static int pair_cmp(const token_bytes *tb, int32_t a1, int32_t b1, int32_t a2, int32_t b2) {
    const token_bytes *x = &tb[a1], *y = &tb[a2];
    size_t n = x->n < y->n ? x->n : y->n;
    int c = memcmp(x->s, y->s, n);
    if (c) return c;
    if (x->n != y->n) return x->n < y->n ? -1 : 1;
    x = &tb[b1];
    y = &tb[b2];
    n = x->n < y->n ? x->n : y->n;
    c = memcmp(x->s, y->s, n);
    if (c) return c;
    return x->n == y->n ? 0 : (x->n < y->n ? -1 : 1);
}

static char *byte_level_string(const char *s, size_t n) {
    char *out = malloc(2 * n + 1);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        char u[2];
        int m = tok_byte_to_unicode((unsigned char)s[i], u);
        memcpy(out + k, u, (size_t)m);
        k += (size_t)m;
    }
    out[k] = '\0';
    return out;
}

static json_t *added_token(int32_t id, const char *content) {
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", (json_int_t)id, "content",
                     content, "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0,
                     "special", 1);
}

static json_t *byte_level_object(void) {
    return json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space", 0,
                     "trim_offsets", 0, "use_regex", 0);
}

int tok_train(const char *text, size_t len, const tok_train_options *opt, char **tokenizer_json,
              char **config_json, chord_err *err) {
    *tokenizer_json = *config_json = NULL;
    int n_special = opt->n_special;
    int target = opt->vocab_size - n_special;
    if (opt->vocab_size < 256 + n_special || opt->vocab_size > 1000000)
        return chord_err_set(err,
                             "vocab-size %d must be at least 256 + %d special tokens "
                             "(and at most 1000000)",
                             opt->vocab_size, n_special);
    for (int i = 0; i < n_special; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(opt->special[i], opt->special[j]) == 0)
                return chord_err_set(err, "special token '%s' is given twice", opt->special[i]);

    int rc = -1;
    chord_buf clean = {0};
    utf8proc_uint8_t *nfc = NULL;
    pcre2_code *re = NULL;
    pcre2_match_data *md = NULL;
    word_map wm = {0};
    pair_map pm = {0};
    train_word *words = NULL;
    size_t n_words = 0;
    token_bytes *tb = NULL;
    int32_t n_tokens = 0;
    int32_t(*merges)[2] = NULL;
    size_t n_merges = 0;
    json_t *root = NULL, *cfg = NULL;

    if (chord_utf8_append_lossy(&clean, text, len)) goto oom;
    utf8proc_ssize_t nn = 0;
    if (clean.len > 0) {
        nn = utf8proc_map((const utf8proc_uint8_t *)clean.data, (utf8proc_ssize_t)clean.len, &nfc,
                          UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (nn < 0) {
            chord_err_set(err, "corpus: normalization failed: %s", utf8proc_errmsg(nn));
            goto done;
        }
    }
    int ec;
    PCRE2_SIZE eo;
    re = pcre2_compile((PCRE2_SPTR)QWEN_REGEX, sizeof QWEN_REGEX - 1, PCRE2_UTF | PCRE2_UCP, &ec,
                       &eo, NULL);
    md = re ? pcre2_match_data_create(1, NULL) : NULL;
    if (!re || !md) goto oom;
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE);
    /* Isolated split: matches and the text between them are all words */
    size_t pos = 0, prev = 0, total = (size_t)nn;
    const char *s = (const char *)nfc;
    while (pos < total) {
        int r = pcre2_match(re, (PCRE2_SPTR)s, total, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (r < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        if (ov[1] == ov[0]) {
            pos = chord_utf8_next((const unsigned char *)s, total, ov[0]);
            continue;
        }
        if (ov[0] > prev && word_map_add(&wm, s + prev, ov[0] - prev)) goto oom;
        if (word_map_add(&wm, s + ov[0], ov[1] - ov[0])) goto oom;
        prev = pos = ov[1];
    }
    if (total > prev && word_map_add(&wm, s + prev, total - prev)) goto oom;

    /* symbols: ids 0..255 are the bytes */
    words = calloc(wm.n + 1, sizeof *words);
    tb = calloc((size_t)target + 1, sizeof *tb);
    merges = calloc((size_t)target + 1, sizeof *merges);
    if (!words || !tb || !merges) goto oom;
    for (int b = 0; b < 256; b++) {
        tb[b].s = malloc(1);
        if (!tb[b].s) goto oom;
        tb[b].s[0] = (char)b;
        tb[b].n = 1;
    }
    n_tokens = 256;
    for (size_t i = 0; wm.slots && i <= wm.mask; i++) {
        word_entry *e = &wm.slots[i];
        if (!e->hash) continue;
        train_word *w = &words[n_words++];
        w->sym = malloc(e->len * sizeof *w->sym);
        if (!w->sym) goto oom;
        for (uint32_t k = 0; k < e->len; k++)
            w->sym[k] = (unsigned char)wm.keys.data[e->off + k];
        w->n = (int)e->len;
        w->count = e->count;
        for (int k = 0; k + 1 < w->n; k++)
            if (pair_add(&pm, w->sym[k], w->sym[k + 1], w->count)) goto oom;
    }

    while (n_tokens < target) {
        int64_t best = 0;
        int32_t ba = -1, bb = -1;
        for (size_t i = 0; pm.slots && i <= pm.mask; i++) {
            pair_entry *e = &pm.slots[i];
            if (!e->key || e->count <= 0 || e->count < best) continue;
            int32_t a = (int32_t)((e->key >> 32) & 0x7FFFFFFF), b = (int32_t)(uint32_t)e->key;
            if (e->count > best || pair_cmp(tb, a, b, ba, bb) < 0) {
                best = e->count;
                ba = a;
                bb = b;
            }
        }
        if (ba < 0 || best < opt->min_frequency) break;
        /* the merged token; a byte string reached before reuses its id */
        size_t mn = tb[ba].n + tb[bb].n;
        char *ms = malloc(mn);
        if (!ms) goto oom;
        memcpy(ms, tb[ba].s, tb[ba].n);
        memcpy(ms + tb[ba].n, tb[bb].s, tb[bb].n);
        int32_t nid = -1;
        for (int32_t k = 256; k < n_tokens; k++)
            if (tb[k].n == mn && memcmp(tb[k].s, ms, mn) == 0) nid = k;
        if (nid < 0) {
            nid = n_tokens++;
            tb[nid].s = ms;
            tb[nid].n = mn;
        } else {
            free(ms);
        }
        merges[n_merges][0] = ba;
        merges[n_merges][1] = bb;
        n_merges++;
        for (size_t i = 0; i < n_words; i++) {
            train_word *w = &words[i];
            int has = 0;
            for (int k = 0; k + 1 < w->n; k++)
                if (w->sym[k] == ba && w->sym[k + 1] == bb) {
                    has = 1;
                    break;
                }
            if (!has) continue;
            for (int k = 0; k + 1 < w->n; k++)
                if (pair_add(&pm, w->sym[k], w->sym[k + 1], -w->count)) goto oom;
            int o = 0;
            for (int k = 0; k < w->n; k++) {
                if (k + 1 < w->n && w->sym[k] == ba && w->sym[k + 1] == bb) {
                    w->sym[o++] = nid;
                    k++;
                } else {
                    w->sym[o++] = w->sym[k];
                }
            }
            w->n = o;
            for (int k = 0; k + 1 < w->n; k++)
                if (pair_add(&pm, w->sym[k], w->sym[k + 1], w->count)) goto oom;
        }
        if (n_merges >= (size_t)target) break;
    }

    /* tokenizer.json */
    json_t *vocab = json_object(), *mlist = json_array(), *added = json_array();
    if (!vocab || !mlist || !added) {
        json_decref(vocab);
        json_decref(mlist);
        json_decref(added);
        goto oom;
    }
    root = json_object();
    for (int32_t k = 0; k < n_tokens; k++) {
        char *bl = byte_level_string(tb[k].s, tb[k].n);
        if (!bl) goto oom_json;
        json_object_set_new(vocab, bl, json_integer(k));
        free(bl);
    }
    for (size_t k = 0; k < n_merges; k++) {
        char *a = byte_level_string(tb[merges[k][0]].s, tb[merges[k][0]].n);
        char *b = byte_level_string(tb[merges[k][1]].s, tb[merges[k][1]].n);
        if (!a || !b) {
            free(a);
            free(b);
            goto oom_json;
        }
        json_array_append_new(mlist, json_pack("[s, s]", a, b));
        free(a);
        free(b);
    }
    for (int i = 0; i < n_special; i++)
        json_array_append_new(added, added_token(n_tokens + i, opt->special[i]));
    json_object_set_new(root, "version", json_string("1.0"));
    json_object_set_new(root, "truncation", json_null());
    json_object_set_new(root, "padding", json_null());
    json_object_set_new(root, "added_tokens", added);
    json_object_set_new(root, "normalizer", json_pack("{s:s}", "type", "NFC"));
    json_object_set_new(root, "pre_tokenizer",
                        json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, o]}", "type", "Sequence",
                                  "pretokenizers", "type", "Split", "pattern", "Regex", QWEN_REGEX,
                                  "behavior", "Isolated", "invert", 0, byte_level_object()));
    json_object_set_new(root, "post_processor", byte_level_object());
    json_object_set_new(root, "decoder", byte_level_object());
    json_t *model = json_pack("{s:s, s:n, s:n, s:s, s:s, s:b, s:b, s:b}", "type", "BPE", "dropout",
                              "unk_token", "continuing_subword_prefix", "", "end_of_word_suffix",
                              "", "fuse_unk", 0, "byte_fallback", 0, "ignore_merges", 0);
    if (!model) {
        json_decref(vocab);
        json_decref(mlist);
        goto oom;
    }
    json_object_set_new(model, "vocab", vocab);
    json_object_set_new(model, "merges", mlist);
    json_object_set_new(root, "model", model);

    /* tokenizer_config.json */
    int chatml = 0, has_eot = 0;
    for (int i = 0; i < n_special; i++) {
        if (strcmp(opt->special[i], "<|im_start|>") == 0) chatml++;
        if (strcmp(opt->special[i], "<|im_end|>") == 0) chatml++;
        if (strcmp(opt->special[i], "<|endoftext|>") == 0) has_eot = 1;
    }
    cfg = json_object();
    const char *eos = chatml == 2 ? "<|im_end|>" : n_special > 0 ? opt->special[0] : NULL;
    json_object_set_new(cfg, "add_bos_token", json_false());
    json_object_set_new(cfg, "bos_token", json_null());
    json_object_set_new(cfg, "eos_token", eos ? json_string(eos) : json_null());
    json_object_set_new(cfg, "pad_token",
                        has_eot ? json_string("<|endoftext|>")
                        : eos   ? json_string(eos)
                                : json_null());
    json_object_set_new(cfg, "unk_token", json_null());
    if (chatml == 2) json_object_set_new(cfg, "chat_template", json_string(CHATML_TEMPLATE));
    json_object_set_new(cfg, "clean_up_tokenization_spaces", json_false());
    json_object_set_new(cfg, "model_max_length", json_integer(4096));
    json_object_set_new(cfg, "tokenizer_class", json_string("PreTrainedTokenizerFast"));

    *tokenizer_json = json_dumps(root, JSON_INDENT(1));
    *config_json = json_dumps(cfg, JSON_INDENT(2));
    if (!*tokenizer_json || !*config_json) {
        free(*tokenizer_json);
        free(*config_json);
        *tokenizer_json = *config_json = NULL;
        goto oom;
    }
    rc = 0;
    goto done;
oom_json:
oom:
    chord_err_setc(err, CHORD_E_INTERNAL, "tokenizer train: out of memory");
done:
    json_decref(root);
    json_decref(cfg);
    chord_buf_free(&clean);
    free(nfc);
    if (md) pcre2_match_data_free(md);
    if (re) pcre2_code_free(re);
    free(wm.slots);
    chord_buf_free(&wm.keys);
    free(pm.slots);
    for (size_t i = 0; i < n_words; i++)
        free(words[i].sym);
    free(words);
    for (int32_t k = 0; tb && k < n_tokens; k++)
        free(tb[k].s);
    free(tb);
    free(merges);
    return rc;
}

int tok_train_file(const char *corpus_path, const tok_train_options *opt, const char *out_dir,
                   chord_err *err) {
    char *text = NULL;
    size_t len = 0;
    if (chord_read_file(corpus_path, &text, &len, err)) return -1;
    char *tj = NULL, *cj = NULL;
    int rc = tok_train(text, len, opt, &tj, &cj, err);
    free(text);
    if (rc) return chord_err_prefix(err, "%s", corpus_path);
    char path[4096];
    if (chord_mkdirs(out_dir, err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer.json", out_dir);
    size_t tl = strlen(tj), cl = strlen(cj);
    if (chord_write_file_atomic(path, tj, tl, err)) goto fail;
    snprintf(path, sizeof path, "%s/tokenizer_config.json", out_dir);
    if (chord_write_file_atomic(path, cj, cl, err)) goto fail;
    free(tj);
    free(cj);
    return 0;
fail:
    free(tj);
    free(cj);
    return -1;
}
