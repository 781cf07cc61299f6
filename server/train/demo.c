/* demo.c — the embedded default job and the built-in task's files (demo.h). */
#include "server/train/demo.h"

#include <stdio.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/train/task.h"

/* Tuned on the shared 2-core machine (docs/training.md has the measurements): a wide, shallow
 * model learns the task's format and operands fastest per CPU second; μ is the paper's
 * reward-adaptive rule with τ = 1 (μ = 1 − mean reward: pure SFT while no rollout is right,
 * shifting to GRPO as the rollouts improve), and a small rollout batch, since groups whose
 * rewards are all equal cost no training compute (trainer.c skips zero-advantage responses). */
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
           "  \"sampling\": {\"temperature\": 1.0, \"top_p\": 1.0, \"max_new_tokens\": 24},\n"
           "  \"optimizer\": {\"lr\": 0.003, \"schedule\": \"cosine\", \"warmup_steps\": 20,\n"
           "                \"weight_decay\": 0.01, \"grad_clip\": 1.0, \"min_lr_ratio\": 0.1},\n"
           "  \"reward\": {\"type\": \"math_boxed\"},\n"
           "  \"steps\": 2000, \"seed\": 42, \"checkpoint_every\": 200, \"keep_checkpoints\": 3,\n"
           "  \"eval\": {\"every\": 100, \"k\": 1, \"temperature\": 0.0, \"max_new_tokens\": 24}\n"
           "}\n";
}

int trainer_data_is_builtin(const char *ref) {
    return ref && strcmp(ref, "builtin:arith") == 0;
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
    if ((size_t)snprintf(out, outlen, "%s/%s.jsonl", dir, which) >= outlen)
        return chord_err_set(err, "built-in task: path too long");
    return 0;
}
