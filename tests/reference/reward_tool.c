/* reward_tool.c — a test tool: scores JSON-lines samples with a chord verifier, for the Python
 * reference tests (tests/reference/reward_*.py). Not installed, not part of the daemon.
 *
 * Usage: reward_tool '<reward config JSON>' < samples.jsonl > results.jsonl
 * Each input line: {"prompt"?: str, "completion": str, "answer"?: str, "truncated"?: bool}.
 * With --batch every line is scored in one reward_score_batch call (webhooks run concurrently);
 * otherwise one reward_score call per line. Output, one line per input line, in order:
 * {"reward": number, "reason": name, "correct": bool, "detail": str}; then on stderr the batch's
 * wall time ("elapsed_s=...") so tests can check the time bound. Exit 0, or 2 on bad input. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/train/reward.h"

static const char *opt_string(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

int main(int argc, char **argv) {
    bool batch = argc == 3 && strcmp(argv[2], "--batch") == 0;
    if (argc != 2 && !batch) {
        fprintf(stderr, "usage: %s '<reward config JSON>' [--batch] < samples.jsonl\n", argv[0]);
        return 2;
    }
    json_error_t jerr;
    json_t *config = json_loads(argv[1], 0, &jerr);
    if (!config) {
        fprintf(stderr, "config: %s\n", jerr.text);
        return 2;
    }
    chord_err err = {0};
    reward_verifier *v = NULL;
    if (reward_verifier_new(config, &v, &err) != 0) {
        fprintf(stderr, "config: %s\n", err.msg);
        json_decref(config);
        return 2;
    }
    json_decref(config);

    size_t n = 0, cap = 0;
    json_t **lines = NULL;
    char *line = NULL;
    size_t line_cap = 0;
    ssize_t got;
    while ((got = getline(&line, &line_cap, stdin)) > 0) {
        if (got == 1 && line[0] == '\n') continue;
        json_t *j = json_loads(line, 0, &jerr);
        if (!j || !json_is_object(j)) {
            fprintf(stderr, "line %zu: %s\n", n + 1, j ? "not an object" : jerr.text);
            return 2;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            lines = realloc(lines, cap * sizeof *lines);
            if (!lines) return 2;
        }
        lines[n++] = j;
    }
    free(line);

    reward_sample *samples = calloc(n ? n : 1, sizeof *samples);
    reward_result *results = calloc(n ? n : 1, sizeof *results);
    if (!samples || !results) return 2;
    for (size_t i = 0; i < n; i++) {
        samples[i].prompt = opt_string(lines[i], "prompt");
        samples[i].completion = opt_string(lines[i], "completion");
        samples[i].answer = opt_string(lines[i], "answer");
        samples[i].truncated = json_is_true(json_object_get(lines[i], "truncated"));
    }
    double t0 = chord_now();
    if (batch) {
        if (reward_score_batch(v, samples, n, results, &err) != 0)
            fprintf(stderr, "batch: %s\n", err.msg);
    } else {
        for (size_t i = 0; i < n; i++)
            reward_score(v, samples[i].prompt, samples[i].completion, samples[i].answer,
                         samples[i].truncated, &results[i]);
    }
    fprintf(stderr, "elapsed_s=%.3f\n", chord_now() - t0);
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_pack("{s:f, s:s, s:b, s:s}", "reward", results[i].reward, "reason",
                              reward_reason_name(results[i].reason), "correct", results[i].correct,
                              "detail", results[i].detail);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        if (!s) return 2;
        printf("%s\n", s);
        free(s);
        json_decref(o);
        json_decref(lines[i]);
    }
    free(lines);
    free(samples);
    free(results);
    reward_verifier_free(v);
    return 0;
}
