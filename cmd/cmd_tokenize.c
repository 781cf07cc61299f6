/* cmd_tokenize.c — `chordd tokenize` (text ↔ ids with a model's tokenizer, chat rendering) and
 * `chordd tokenizer train` (a byte-level BPE from a corpus). Argument parsing and I/O only: the
 * work is server/model/tokenizer*.c and chat.c. */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "server/base/buf.h"
#include "server/model/chat.h"
#include "server/model/tokenizer.h"
#include "server/model/tokenizer_train.h"

static void tokenize_usage(FILE *out) {
    fprintf(
        out,
        "usage: chordd tokenize (--tokenizer DIR | --default) [options] < input\n\n"
        "Reads text on stdin and prints its token ids as a JSON array.\n\n"
        "  --tokenizer DIR          a model directory with tokenizer.json (or the file itself)\n"
        "  --default                the embedded default tokenizer of the demo models\n"
        "  --add-special-tokens     apply the post-processor and the config's add_bos_token\n"
        "  --jsonl                  one input per line: a JSON string or {\"text\": ...};\n"
        "                           one JSON array of ids per output line\n"
        "  --chat                   one conversation per line: {\"messages\": [...]} (also\n"
        "                           {\"prompt\", \"response\"}); prints {\"text\", \"ids\", "
        "\"mask\"}\n"
        "  --template NAME          chat template family: qwen3, chatml, deepseek_v3, llama3,\n"
        "                           raw (default: recognised from tokenizer_config.json)\n"
        "  --add-generation-prompt  end a chat with the assistant header (for rollouts)\n"
        "  --decode                 the other way: ids (a JSON array, or numbers separated by\n"
        "                           spaces) to text; with --jsonl one array per line and one\n"
        "                           JSON string per output line\n"
        "  --skip-special-tokens    with --decode, drop special tokens\n");
}

static void tokenizer_usage(FILE *out) {
    fprintf(out, "usage: chordd tokenizer train --corpus FILE --vocab-size N --out DIR\n"
                 "                              [--special TOKEN]... [--min-frequency N]\n\n"
                 "Trains a byte-level BPE (Qwen-style pre-tokenizer, NFC) on a UTF-8 text corpus\n"
                 "and writes DIR/tokenizer.json and DIR/tokenizer_config.json (ChatML special\n"
                 "tokens and chat template unless --special is given). N counts every token,\n"
                 "the 256 byte tokens and the special tokens included.\n");
}

/* All of f, NUL-terminated (NULL when out of memory). */
static char *read_all(FILE *f, size_t *len) {
    chord_buf text = {0};
    char chunk[1 << 16];
    size_t r;
    while ((r = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (chord_buf_append(&text, chunk, r)) {
            chord_buf_free(&text);
            return NULL;
        }
    }
    *len = text.len;
    return chord_buf_take(&text);
}

static void print_ids(FILE *out, const int32_t *ids, size_t n) {
    fputc('[', out);
    for (size_t i = 0; i < n; i++)
        fprintf(out, i ? ",%d" : "%d", ids[i]);
    fputs("]\n", out);
}

/* Parses ids from a JSON array or whitespace/comma separated numbers. */
static int parse_ids(const char *s, tok_ids *out, chord_err *err) {
    const char *p = s;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p == '[') {
        json_error_t je;
        json_t *a = json_loads(p, JSON_DECODE_ANY, &je);
        if (!a || !json_is_array(a)) {
            json_decref(a);
            return chord_err_set(err, "ids: not a JSON array of integers (%s)", je.text);
        }
        size_t i;
        json_t *v;
        json_array_foreach(a, i, v) {
            if (!json_is_integer(v)) {
                json_decref(a);
                return chord_err_set(err, "ids[%zu] is not an integer", i);
            }
            if (tok_ids_push(out, (int32_t)json_integer_value(v), 0)) {
                json_decref(a);
                return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
            }
        }
        json_decref(a);
        return 0;
    }
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',')
            p++;
        if (!*p) break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) return chord_err_set(err, "ids: '%.20s' is not a number", p);
        if (tok_ids_push(out, (int32_t)v, 0)) return chord_err_setc(err, CHORD_E_INTERNAL, "oom");
        p = end;
    }
    return 0;
}

static int decode_line(const tok_tokenizer *tok, const char *line, int skip, int jsonl,
                       chord_err *err) {
    tok_ids ids = {0};
    if (parse_ids(line, &ids, err)) {
        tok_ids_free(&ids);
        return -1;
    }
    char *text;
    size_t len;
    int rc = tok_decode(tok, ids.ids, ids.n, skip, &text, &len, err);
    tok_ids_free(&ids);
    if (rc) return -1;
    if (jsonl) {
        json_t *s = json_stringn(text, len);
        char *js = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        if (js) printf("%s\n", js);
        free(js);
        json_decref(s);
    } else {
        fwrite(text, 1, len, stdout);
    }
    free(text);
    return 0;
}

static int chat_line(const tok_tokenizer *tok, const chat_template *tpl, json_t *obj, int gen,
                     chord_err *err) {
    chat_message *msgs = NULL;
    size_t n = 0;
    if (chat_messages_from_json(obj, &msgs, &n, err)) return -1;
    chat_encoding enc;
    int rc = chat_encode(tok, tpl, msgs, n, gen, &enc, err);
    chat_messages_free(msgs, n);
    if (rc) return -1;
    json_t *o = json_object();
    json_t *ids = json_array(), *mask = json_array();
    for (size_t i = 0; i < enc.ids.n; i++) {
        json_array_append_new(ids, json_integer(enc.ids.ids[i]));
        json_array_append_new(mask, json_integer(enc.mask[i]));
    }
    json_object_set_new(o, "text", json_stringn(enc.text, enc.text_len));
    json_object_set_new(o, "ids", ids);
    json_object_set_new(o, "mask", mask);
    char *js = json_dumps(o, JSON_COMPACT);
    if (js) printf("%s\n", js);
    free(js);
    json_decref(o);
    chat_encoding_free(&enc);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *dir = NULL, *tpl_name = NULL;
    int use_default = 0, add_special = 0, jsonl = 0, chat = 0, gen = 0, decode = 0, skip = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            tokenize_usage(stdout);
            return 0;
        } else if (strcmp(a, "--tokenizer") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(a, "--template") == 0 && i + 1 < argc) {
            tpl_name = argv[++i];
        } else if (strcmp(a, "--default") == 0) {
            use_default = 1;
        } else if (strcmp(a, "--add-special-tokens") == 0) {
            add_special = 1;
        } else if (strcmp(a, "--jsonl") == 0) {
            jsonl = 1;
        } else if (strcmp(a, "--chat") == 0) {
            chat = 1;
        } else if (strcmp(a, "--add-generation-prompt") == 0) {
            gen = 1;
        } else if (strcmp(a, "--decode") == 0) {
            decode = 1;
        } else if (strcmp(a, "--skip-special-tokens") == 0) {
            skip = 1;
        } else {
            fprintf(stderr, "chordd tokenize: unknown or incomplete option '%s'\n\n", a);
            tokenize_usage(stderr);
            return 2;
        }
    }
    if (!dir && !use_default) {
        fprintf(stderr, "chordd tokenize: --tokenizer DIR or --default is required\n\n");
        tokenize_usage(stderr);
        return 2;
    }
    chord_err err = {0};
    tok_tokenizer *tok = NULL;
    if ((use_default ? tok_load_default(&tok, &err) : tok_load(dir, &tok, &err))) {
        fprintf(stderr, "chordd tokenize: %s\n", err.msg);
        return 1;
    }
    chat_template tpl;
    if (chat) {
        int r = tpl_name ? chat_template_by_name(tpl_name, tok, &tpl, &err)
                         : chat_template_detect(tok, &tpl, &err);
        if (r) {
            fprintf(stderr, "chordd tokenize: %s\n", err.msg);
            tok_free(tok);
            return 1;
        }
    }
    int status = 0;
    if (!jsonl && !chat) {
        size_t len;
        char *text = read_all(stdin, &len);
        if (!text) {
            fprintf(stderr, "chordd tokenize: out of memory reading stdin\n");
            tok_free(tok);
            return 1;
        }
        if (decode) {
            if (decode_line(tok, text, skip, 0, &err)) status = 1;
        } else {
            tok_ids ids = {0};
            if (tok_encode(tok, text, len, add_special ? TOK_ENCODE_ADD_SPECIAL : 0, &ids, &err))
                status = 1;
            else
                print_ids(stdout, ids.ids, ids.n);
            tok_ids_free(&ids);
        }
        if (status) fprintf(stderr, "chordd tokenize: %s\n", err.msg);
        free(text);
        tok_free(tok);
        return status;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n == 0) continue;
        chord_err_clear(&err);
        int rc = 0;
        if (decode) {
            rc = decode_line(tok, line, skip, 1, &err);
        } else {
            json_error_t je;
            json_t *v = json_loadb(line, (size_t)n, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            if (!v) {
                rc = chord_err_set(&err, "not JSON: %s", je.text);
            } else if (chat) {
                rc = chat_line(tok, &tpl, v, gen, &err);
            } else {
                json_t *s = json_is_string(v) ? v : json_object_get(v, "text");
                if (!json_is_string(s)) {
                    rc = chord_err_set(&err, "expected a JSON string or {\"text\": string}");
                } else {
                    tok_ids ids = {0};
                    rc = tok_encode(tok, json_string_value(s), json_string_length(s),
                                    add_special ? TOK_ENCODE_ADD_SPECIAL : 0, &ids, &err);
                    if (!rc) print_ids(stdout, ids.ids, ids.n);
                    tok_ids_free(&ids);
                }
            }
            json_decref(v);
        }
        if (rc) {
            fprintf(stderr, "chordd tokenize: stdin line %ld: %s\n", lineno, err.msg);
            status = 1;
            break;
        }
    }
    free(line);
    tok_free(tok);
    return status;
}

int cmd_tokenizer(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        tokenizer_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "train") != 0) {
        fprintf(stderr, "chordd tokenizer: unknown subcommand '%s'\n\n", argv[1]);
        tokenizer_usage(stderr);
        return 2;
    }
    tok_train_options opt;
    tok_train_options_default(&opt);
    const char *corpus = NULL, *out = NULL;
    const char *specials[TOK_TRAIN_MAX_SPECIAL];
    int n_special = 0;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--corpus") == 0 && i + 1 < argc) {
            corpus = argv[++i];
        } else if (strcmp(a, "--out") == 0 && i + 1 < argc) {
            out = argv[++i];
        } else if (strcmp(a, "--vocab-size") == 0 && i + 1 < argc) {
            long v;
            if (cmd_arg_long("--vocab-size", argv[++i], 1, 1000000, &v)) return 2;
            opt.vocab_size = (int)v;
        } else if (strcmp(a, "--min-frequency") == 0 && i + 1 < argc) {
            long v;
            if (cmd_arg_long("--min-frequency", argv[++i], 1, 1000000000, &v)) return 2;
            opt.min_frequency = (int)v;
        } else if (strcmp(a, "--special") == 0 && i + 1 < argc) {
            if (n_special == TOK_TRAIN_MAX_SPECIAL) {
                fprintf(stderr, "chordd tokenizer train: at most %d --special tokens\n",
                        TOK_TRAIN_MAX_SPECIAL);
                return 2;
            }
            specials[n_special++] = argv[++i];
        } else if (strcmp(a, "--help") == 0) {
            tokenizer_usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "chordd tokenizer train: unknown or incomplete option '%s'\n\n", a);
            tokenizer_usage(stderr);
            return 2;
        }
    }
    if (!corpus || !out) {
        fprintf(stderr, "chordd tokenizer train: --corpus and --out are required\n\n");
        tokenizer_usage(stderr);
        return 2;
    }
    if (n_special > 0) {
        opt.special = specials;
        opt.n_special = n_special;
    }
    chord_err err = {0};
    if (tok_train_file(corpus, &opt, out, &err)) {
        fprintf(stderr, "chordd tokenizer train: %s\n", err.msg);
        return 1;
    }
    fprintf(stderr, "chordd tokenizer train: wrote %s/tokenizer.json and tokenizer_config.json\n",
            out);
    return 0;
}
