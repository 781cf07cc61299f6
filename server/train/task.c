/* task.c — the built-in arithmetic task: generator, split, JSONL and corpus writers (task.h).
 *
 * Randomness is counter-based (splitmix64 of seed, split, index, attempt), so problem i does not
 * depend on how many problems were drawn before it. A problem is drawn until it falls in the
 * requested split; the split hash treats a+b and b+a (a*b and b*a) as one problem so the held-out
 * set never has a commuted twin in training. */
#include "server/train/task.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/rng.h"

#define MAX_ATTEMPTS 100000

/* A uniform integer in [lo, hi] from the stream state *s. */
static int64_t uniform(uint64_t *s, int64_t lo, int64_t hi) {
    *s = chord_splitmix64(*s);
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return lo + (int64_t)(*s % span); /* span <= 1e9: modulo bias below 1e-9 */
}

static int64_t pow10i(int d) {
    int64_t p = 1;
    while (d-- > 0)
        p *= 10;
    return p;
}

/* Smallest and largest value with d digits (1 digit: 0..9). */
static int64_t digits_lo(int d) {
    return d <= 1 ? 0 : pow10i(d - 1);
}
static int64_t digits_hi(int d) {
    return pow10i(d) - 1;
}

void task_arith_default(task_arith_config *cfg) {
    *cfg = (task_arith_config){.ops = TASK_OP_ADD | TASK_OP_SUB,
                               .min_digits = 1,
                               .max_digits = 2,
                               .mul_digits = 1,
                               .allow_negative = 0,
                               .heldout_percent = 10};
}

int task_arith_check(const task_arith_config *cfg, chord_err *err) {
    if (cfg->ops <= 0 || (cfg->ops & ~(TASK_OP_ADD | TASK_OP_SUB | TASK_OP_MUL)))
        return chord_err_set(err, "task.ops: must be a non-empty set of +, -, *");
    if (cfg->min_digits < 1 || cfg->min_digits > 9)
        return chord_err_set(err, "task.min_digits: must be in [1, 9]");
    if (cfg->max_digits < cfg->min_digits || cfg->max_digits > 9)
        return chord_err_set(err, "task.max_digits: must be in [min_digits, 9]");
    if (cfg->mul_digits < 1 || cfg->mul_digits > 4)
        return chord_err_set(err, "task.mul_digits: must be in [1, 4]");
    if (cfg->heldout_percent < 1 || cfg->heldout_percent > 50)
        return chord_err_set(err, "task.heldout_percent: must be in [1, 50]");
    return 0;
}

task_split task_arith_split_of(const task_arith_config *cfg, int64_t a, char op, int64_t b) {
    if ((op == '+' || op == '*') && a > b) { /* commuted twins share a split */
        int64_t t = a;
        a = b;
        b = t;
    }
    uint64_t h = chord_splitmix64(0x43484f5244ULL ^ (uint64_t)a);
    h = chord_splitmix64(h ^ (uint64_t)(unsigned char)op);
    h = chord_splitmix64(h ^ (uint64_t)b);
    return (int)(h % 100) < cfg->heldout_percent ? TASK_SPLIT_HELDOUT : TASK_SPLIT_TRAIN;
}

void task_arith_format(task_problem *p) {
    int64_t c = p->op == '+' ? p->a + p->b : p->op == '-' ? p->a - p->b : p->a * p->b;
    snprintf(p->prompt, sizeof p->prompt, "Compute %lld%c%lld.", (long long)p->a, p->op,
             (long long)p->b);
    snprintf(p->answer, sizeof p->answer, "%lld", (long long)c);
    snprintf(p->response, sizeof p->response, "%lld%c%lld=%lld \\boxed{%lld}", (long long)p->a,
             p->op, (long long)p->b, (long long)c, (long long)c);
}

int task_arith_problem(const task_arith_config *cfg, uint64_t seed, task_split split,
                       uint64_t index, task_problem *out, chord_err *err) {
    if (task_arith_check(cfg, err)) return -1;
    char ops[3] = {0};
    int n_ops = 0;
    if (cfg->ops & TASK_OP_ADD) ops[n_ops++] = '+';
    if (cfg->ops & TASK_OP_SUB) ops[n_ops++] = '-';
    if (cfg->ops & TASK_OP_MUL) ops[n_ops++] = '*';
    uint64_t base = chord_splitmix64(chord_splitmix64(seed) ^ ((uint64_t)split << 62) ^ index);
    for (uint64_t attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        uint64_t s = chord_splitmix64(base + attempt * 0x632be59bd9b4e019ULL);
        memset(out, 0, sizeof *out);
        out->op = ops[uniform(&s, 0, n_ops - 1)];
        int da = (int)uniform(&s, cfg->min_digits, cfg->max_digits);
        out->a = uniform(&s, digits_lo(da), digits_hi(da));
        if (out->op == '*') {
            int64_t lo = cfg->mul_digits == 1 ? 2 : digits_lo(cfg->mul_digits);
            out->b = uniform(&s, lo, digits_hi(cfg->mul_digits));
        } else {
            int db = (int)uniform(&s, cfg->min_digits, cfg->max_digits);
            out->b = uniform(&s, digits_lo(db), digits_hi(db));
        }
        if (out->op == '-' && !cfg->allow_negative && out->a < out->b) {
            int64_t t = out->a;
            out->a = out->b;
            out->b = t;
        }
        if (task_arith_split_of(cfg, out->a, out->op, out->b) != split) continue;
        task_arith_format(out);
        return 0;
    }
    return chord_err_set(err,
                         "task: no problem of the %s split found in %d draws (widen the digits)",
                         split == TASK_SPLIT_TRAIN ? "train" : "held-out", MAX_ATTEMPTS);
}

/* ---- writers ------------------------------------------------------------------------------- */

/* kind 0: {"prompt","answer"}; 1: {"prompt","response"}; 2: corpus lines. */
static int write_task_file(const char *path, const task_arith_config *cfg, uint64_t seed,
                           task_split split, size_t n, int kind, chord_err *err) {
    chord_buf b = {0};
    int rc = -1;
    for (size_t i = 0; i < n; i++) {
        task_problem p;
        if (task_arith_problem(cfg, seed, split, i, &p, err)) goto done;
        if (kind == 2) {
            char line[2 * TASK_TEXT_MAX + 4];
            int len = snprintf(line, sizeof line, "%s\n%s\n", p.prompt, p.response);
            if (chord_buf_append(&b, line, (size_t)len)) goto oom;
            continue;
        }
        json_t *obj = json_pack("{s:s,s:s}", "prompt", p.prompt, kind == 0 ? "answer" : "response",
                                kind == 0 ? p.answer : p.response);
        size_t len = 0;
        char *text =
            obj ? chord_json_dumps_line(obj, JSON_COMPACT | JSON_PRESERVE_ORDER, &len) : NULL;
        json_decref(obj);
        if (!text) goto oom;
        int bad = chord_buf_append(&b, text, len);
        free(text);
        if (bad) goto oom;
    }
    if (chord_write_file_atomic(path, b.data ? b.data : "", b.len, err)) {
        chord_err_prefix(err, "task: writing %s", path);
        goto done;
    }
    rc = 0;
    goto done;
oom:
    chord_err_setc(err, CHORD_E_INTERNAL, "task: out of memory writing %s", path);
done:
    chord_buf_free(&b);
    return rc;
}

int task_write_prompts_jsonl(const char *path, const task_arith_config *cfg, uint64_t seed,
                             task_split split, size_t n, chord_err *err) {
    return write_task_file(path, cfg, seed, split, n, 0, err);
}

int task_write_expert_jsonl(const char *path, const task_arith_config *cfg, uint64_t seed,
                            task_split split, size_t n, chord_err *err) {
    return write_task_file(path, cfg, seed, split, n, 1, err);
}

int task_write_corpus(const char *path, const task_arith_config *cfg, uint64_t seed, size_t n,
                      chord_err *err) {
    return write_task_file(path, cfg, seed, TASK_SPLIT_TRAIN, n, 2, err);
}

int task_write_default_files(const char *dir, const task_arith_config *cfg, uint64_t seed,
                             size_t n_prompts, size_t n_expert, size_t n_eval, chord_err *err) {
    if (chord_mkdirs(dir, err)) return chord_err_prefix(err, "task: %s", dir);
    char path[4096];
    snprintf(path, sizeof path, "%s/prompts.jsonl", dir);
    if (task_write_prompts_jsonl(path, cfg, seed, TASK_SPLIT_TRAIN, n_prompts, err)) return -1;
    snprintf(path, sizeof path, "%s/expert.jsonl", dir);
    if (task_write_expert_jsonl(path, cfg, seed + 1, TASK_SPLIT_TRAIN, n_expert, err)) return -1;
    snprintf(path, sizeof path, "%s/eval.jsonl", dir);
    if (task_write_prompts_jsonl(path, cfg, seed + 2, TASK_SPLIT_HELDOUT, n_eval, err)) return -1;
    snprintf(path, sizeof path, "%s/corpus.txt", dir);
    return task_write_corpus(path, cfg, seed + 3, n_prompts, err);
}
