/* fuzz_dataset.c — the one JSONL record parser (dataset.h: ds_parse_line, as uploads, training,
 * eval and rollouts call it). The first byte picks the kind (prompts or expert); the rest is a
 * JSONL file, parsed line by line, each record then read as a prompt (ds_prompt_messages,
 * ds_prompt_text) as the rollout paths do. */
#include "server/train/dataset.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    ds_kind kind = (data[0] & 1) ? DS_EXPERT : DS_PROMPTS;
    /* a copy, so that reading past a line's end is caught */
    char *text = fuzz_cstring(data + 1, size - 1);
    size_t len = size - 1;
    uint64_t line = 1;
    for (size_t start = 0; start <= len; line++) {
        const char *nl = memchr(text + start, '\n', len - start);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t n = end - start;
        char *one = malloc(n ? n : 1);
        if (!one) abort();
        memcpy(one, text + start, n);
        ds_record rec = {0};
        chord_err err = {0};
        int rc = ds_parse_line(kind, one, n, line, &rec, &err);
        if (rc == 1) {
            (void)ds_prompt_text(rec.messages, rec.n_messages);
            ds_record_free(&rec);
        }
        /* validation only (rec NULL), as uploads check a file */
        chord_err err2 = {0};
        if (ds_parse_line(kind, one, n, line, NULL, &err2) != rc) abort();
        free(one);
        if (!nl) break;
        start = end + 1;
    }
    free(text);
    return 0;
}
