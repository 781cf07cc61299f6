/* demo.c — the embedded default job and the built-in task's files (demo.h). */
#include "server/train/demo.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/train/task.h"

/* Tuned on the shared 2-core machine (docs/training.md has the measurements): worked-solution
 * demonstrations (trainer_builtin_data), a wide, shallow model; μ is the paper's
 * reward-adaptive rule with τ = 1 (μ = 1 − mean reward: pure SFT while no rollout is right,
 * shifting to GRPO as the rollouts improve), and a small rollout batch, since groups whose
 * rewards are all equal cost no training compute (trainer.c skips zero-advantage responses).
 * lr 1e-3: at 3e-3 when the model "gets" column addition depends on the init seed (SFT alone,
 * 500 steps: 0.23 to 0.995 held-out over three seeds); at 1e-3 every seed tried is past 0.94 by
 * step 300 with SFT alone, and the demo past 0.94 at step 1000. */
const char *trainer_demo_job_json(void) {
    return "{\n"
           "  \"name\": \"demo-chord-arith\",\n"
           "  \"model\": {\"init\": {\"seed\": 1, \"config\": {\n"
           "    \"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"],\n"
           "    \"vocab_size\": 1024, \"hidden_size\": 256, \"num_hidden_layers\": 2,\n"
           "    \"num_attention_heads\": 4, \"num_key_value_heads\": 2,\n"
           "    \"intermediate_size\": 768, \"max_position_embeddings\": 128,\n"
           "    \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true,\n"
           "    \"initializer_range\": 0.02}}},\n"
           "  \"data\": {\"prompts\": \"builtin:arith\", \"expert\": \"builtin:arith\",\n"
           "           \"eval\": \"builtin:arith\"},\n"
           "  \"algorithm\": \"chord\",\n"
           "  \"chord\": {\"mu\": {\"adaptive\": {\"tau\": 1.0}}, \"phi\": false},\n"
           "  \"grpo\": {\"group_size\": 8, \"prompts_per_step\": 8},\n"
           "  \"expert_per_step\": 64,\n"
           "  \"sampling\": {\"temperature\": 1.0, \"top_p\": 1.0, \"max_new_tokens\": 40},\n"
           "  \"optimizer\": {\"lr\": 0.001, \"schedule\": \"cosine\", \"warmup_steps\": 20,\n"
           "                \"weight_decay\": 0.01, \"grad_clip\": 1.0, \"min_lr_ratio\": 0.1},\n"
           "  \"reward\": {\"type\": \"math_boxed\"},\n"
           "  \"steps\": 1000, \"seed\": 42, \"checkpoint_every\": 200, \"keep_checkpoints\": 3,\n"
           "  \"eval\": {\"every\": 100, \"k\": 1, \"temperature\": 0.0, \"max_new_tokens\": 40}\n"
           "}\n";
}

int trainer_data_is_builtin(const char *ref) {
    return ref && strcmp(ref, "builtin:arith") == 0;
}

/* The worked solution of a + b or a − b (a >= b >= 0): the columns from the units, each with
 * its carry (or borrow) in, then the answer, e.g. "37+48: 7+8+0=15, 3+4+1=8. \boxed{85}" and
 * "52-17: 12-7-0=5, 5-1-1=3. \boxed{35}" (a borrowing column shows its digit plus 10). Other
 * problems (×, negative operands) keep the task's short response. */
static void worked_solution(const task_problem *p, char *out, size_t n) {
    int64_t a = p->a, b = p->b;
    if ((p->op != '+' && p->op != '-') || a < 0 || b < 0 || (p->op == '-' && a < b)) {
        snprintf(out, n, "%s", p->response);
        return;
    }
    size_t w = (size_t)snprintf(out, n, "%lld%c%lld:", (long long)a, p->op, (long long)b);
    int carry = 0;
    for (int col = 0; (a > 0 || b > 0 || col == 0) && w < n; col++) {
        int x = (int)(a % 10), y = (int)(b % 10);
        a /= 10;
        b /= 10;
        if (p->op == '+') {
            int sum = x + y + carry;
            w += (size_t)snprintf(out + w, n - w, "%s %d+%d+%d=%d", col ? "," : "", x, y, carry,
                                  sum);
            carry = sum / 10;
        } else {
            int diff = x - y - carry, borrow = diff < 0;
            w += (size_t)snprintf(out + w, n - w, "%s %d-%d-%d=%d", col ? "," : "", x + 10 * borrow,
                                  y, carry, diff + 10 * borrow);
            carry = borrow;
        }
    }
    if (w < n) snprintf(out + w, n - w, ". \\boxed{%s}", p->answer);
}

/* The demo's expert demonstrations: the task's training problems (the same draws as its
 * expert.jsonl: seed + 1, training split) with worked solutions. A tiny model learns to carry
 * column by column far faster than from "37+48=85" alone (docs/training.md has the curves). */
static int write_worked_expert(const char *path, const task_arith_config *tc,
                               unsigned long long seed, size_t n, chord_err *err) {
    size_t cap = n * 160 + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) return chord_err_setc(err, CHORD_E_INTERNAL, "built-in task: out of memory");
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        task_problem p;
        char worked[160];
        if (task_arith_problem(tc, seed + 1, TASK_SPLIT_TRAIN, i, &p, err) != 0) {
            rc = -1;
            break;
        }
        worked_solution(&p, worked, sizeof worked);
        json_t *rec = json_pack("{s:s, s:s}", "prompt", p.prompt, "response", worked);
        char *line = rec ? json_dumps(rec, JSON_COMPACT) : NULL;
        json_decref(rec);
        if (!line || len + strlen(line) + 2 > cap) {
            free(line);
            rc = chord_err_setc(err, CHORD_E_INTERNAL, "built-in task: out of memory");
            break;
        }
        len += (size_t)sprintf(buf + len, "%s\n", line);
        free(line);
    }
    if (rc == 0) rc = chord_write_file_atomic(path, buf, len, err);
    free(buf);
    return rc;
}

int trainer_builtin_data(const char *dir, unsigned long long seed, const char *which, char *out,
                         size_t outlen, chord_err *err) {
    char probe[4096 + 32];
    snprintf(probe, sizeof probe, "%s/eval.jsonl", dir);
    if (!chord_is_file(probe)) {
        task_arith_config tc;
        task_arith_default(&tc);
        if (chord_mkdirs(dir, err) != 0) return -1;
        if (task_write_default_files(dir, &tc, seed, 20000, 20000, 200, err) != 0)
            return chord_err_prefix(err, "built-in task");
    }
    if (strcmp(which, "prompts") && strcmp(which, "expert") && strcmp(which, "eval"))
        return chord_err_set(err, "built-in task: no file '%s'", which);
    int expert = !strcmp(which, "expert");
    if ((size_t)snprintf(out, outlen, "%s/%s.jsonl", dir, expert ? "expert_worked" : which) >=
        outlen)
        return chord_err_set(err, "built-in task: path too long");
    if (expert && !chord_is_file(out)) {
        task_arith_config tc;
        task_arith_default(&tc);
        if (write_worked_expert(out, &tc, seed, 20000, err) != 0)
            return chord_err_prefix(err, "built-in task");
    }
    return 0;
}
