/* bench_tokenizer.c — chord's side of tests/bench/bench_tokenizer.py: encodes and decodes the
 * documents of a file (each one "<byte length>\n<bytes>", back to back) with one tokenizer on one
 * thread, and prints {"encode_mb_s", "decode_mb_s", "tokens", "bytes"} as JSON.
 * usage: bench_tokenizer TOKENIZER_DIR DOCS_FILE REPEATS */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/model/tokenizer.h"

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: bench_tokenizer TOKENIZER_DIR DOCS_FILE REPEATS\n");
        return 2;
    }
    chord_err err = {0};
    tok_tokenizer *tok;
    if (tok_load(argv[1], &tok, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return 1;
    }
    char *data;
    size_t len;
    if (chord_read_file(argv[2], &data, &len, &err)) {
        fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
        return 1;
    }
    int repeats = atoi(argv[3]);
    /* documents: "<length>\n<bytes>" records (texts may hold any byte, NUL included) */
    size_t n_docs = 0, cap = 1024;
    const char **docs = malloc(cap * sizeof *docs);
    size_t *lens = malloc(cap * sizeof *lens);
    for (size_t i = 0; i < len;) {
        char *end;
        size_t n = strtoull(data + i, &end, 10);
        if (*end != '\n' || (size_t)(end + 1 - data) + n > len) {
            fprintf(stderr, "bench_tokenizer: bad document record at byte %zu\n", i);
            return 1;
        }
        if (n_docs == cap) {
            cap *= 2;
            docs = realloc(docs, cap * sizeof *docs);
            lens = realloc(lens, cap * sizeof *lens);
        }
        docs[n_docs] = end + 1;
        lens[n_docs++] = n;
        i = (size_t)(end + 1 - data) + n;
    }
    tok_ids *ids = calloc(n_docs, sizeof *ids);
    size_t total_bytes = 0, total_tokens = 0;
    for (size_t d = 0; d < n_docs; d++)
        total_bytes += lens[d];
    /* warm-up pass (fills the cache, as the peer's does), then timed passes */
    double best_enc = 1e30, best_dec = 1e30;
    for (int r = 0; r <= repeats; r++) {
        double t0 = chord_now();
        for (size_t d = 0; d < n_docs; d++) {
            ids[d].n = 0;
            if (tok_encode(tok, docs[d], lens[d], 0, &ids[d], &err)) {
                fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
                return 1;
            }
        }
        double t1 = chord_now();
        for (size_t d = 0; d < n_docs; d++) {
            char *text;
            size_t tl;
            if (tok_decode(tok, ids[d].ids, ids[d].n, 0, &text, &tl, &err)) {
                fprintf(stderr, "bench_tokenizer: %s\n", err.msg);
                return 1;
            }
            free(text);
        }
        double t2 = chord_now();
        if (r > 0 || repeats == 0) {
            if (t1 - t0 < best_enc) best_enc = t1 - t0;
            if (t2 - t1 < best_dec) best_dec = t2 - t1;
        }
    }
    for (size_t d = 0; d < n_docs; d++)
        total_tokens += ids[d].n;
    printf("{\"encode_mb_s\": %.3f, \"decode_mb_s\": %.3f, \"tokens\": %zu, \"bytes\": %zu, "
           "\"docs\": %zu}\n",
           total_bytes / best_enc / 1e6, total_bytes / best_dec / 1e6, total_tokens, total_bytes,
           n_docs);
    for (size_t d = 0; d < n_docs; d++)
        tok_ids_free(&ids[d]);
    free(ids);
    free(docs);
    free(lens);
    free(data);
    tok_free(tok);
    return 0;
}
