/* service_demo.c — the embedded demo (`chordd --demo`): the built-in arithmetic task
 * (server/train/task.h) written to JSONL, uploaded through the same upload path as user data,
 * and a CHORD job on a random-init tiny model with the embedded default tokenizer.
 *
 * Not here: anything the demo job does differently from a user's job (nothing). */
#include "server/service_internal.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "server/base/fileutil.h"
#include "server/base/log.h"
#include "server/model/tokenizer.h"
#include "server/train/task.h"

/* Uploads a file through svc_upload_* in 64 KiB chunks; *id receives the dataset id. */
static int upload_file(svc *s, const char *path, const char *name, const char *kind,
                       char id[STORE_ID_MAX], chord_err *err) {
    char *data = NULL;
    size_t len = 0;
    if (chord_read_file(path, &data, &len, err)) return -1;
    svc_upload *up = NULL;
    json_t *ds = NULL;
    int rc = svc_upload_begin(s, name, kind, &up, err);
    for (size_t off = 0; rc == 0 && off < len; off += 65536)
        rc = svc_upload_write(up, data + off, len - off < 65536 ? len - off : 65536, err);
    if (rc == 0) {
        rc = svc_upload_commit(up, &ds, err);
    } else {
        svc_upload_abort(up);
    }
    if (rc == 0) snprintf(id, STORE_ID_MAX, "%s", json_string_value(json_object_get(ds, "id")));
    json_decref(ds);
    free(data);
    return rc ? chord_err_prefix(err, "demo: uploading %s", path) : 0;
}

int svc_submit_demo(svc *s, json_t **job, chord_err *err) {
    *job = NULL;
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/demo-task", s->data_dir);
    task_arith_config tc;
    task_arith_default(&tc);
    if (task_write_default_files(dir, &tc, 1, 2000, 2000, 100, err))
        return chord_err_prefix(err, "demo: writing the built-in task");
    char prompts[STORE_ID_MAX], expert[STORE_ID_MAX], eval[STORE_ID_MAX], p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/prompts.jsonl", dir);
    if (upload_file(s, p, "demo-prompts", "prompts", prompts, err)) return -1;
    snprintf(p, sizeof p, "%s/expert.jsonl", dir);
    if (upload_file(s, p, "demo-expert", "expert", expert, err)) return -1;
    snprintf(p, sizeof p, "%s/eval.jsonl", dir);
    if (upload_file(s, p, "demo-eval", "eval", eval, err)) return -1;

    /* the model's vocabulary is the embedded tokenizer's (every id it samples decodes) */
    tok_tokenizer *tok = NULL;
    if (tok_load_default(&tok, err)) return chord_err_prefix(err, "demo: default tokenizer");
    int vocab = tok_vocab_size(tok);
    tok_free(tok);

    /* clang-format off */
    json_t *doc = json_pack(
        "{s:s, s:{s:{s:{s:s, s:[s], s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b}, s:i}},"
        " s:{s:s, s:s, s:s}, s:s,"
        " s:{s:{s:i, s:i, s:f, s:f}, s:b},"
        " s:{s:i, s:i}, s:i, s:{s:f, s:f, s:i},"
        " s:{s:f, s:s, s:i, s:f},"
        " s:i, s:i, s:i, s:i, s:{s:i, s:i, s:f}}",
        "name", "demo-chord",
        "model", "init", "config", "model_type", "qwen2", "architectures", "Qwen2ForCausalLM",
        "vocab_size", vocab, "hidden_size", 64, "intermediate_size", 192, "num_hidden_layers", 2,
        "num_attention_heads", 4, "num_key_value_heads", 2, "max_position_embeddings", 256,
        "rope_theta", 10000.0, "rms_norm_eps", 1e-6, "tie_word_embeddings", 1, "seed", 1,
        "data", "prompts", prompts, "expert", expert, "eval", eval,
        "algorithm", "chord",
        "chord", "mu", "warmup_steps", 10, "decay_steps", 300, "peak", 0.95, "valley", 0.1, "phi",
        0,
        "grpo", "group_size", 4, "prompts_per_step", 8,
        "expert_per_step", 32,
        "sampling", "temperature", 1.0, "top_p", 1.0, "max_new_tokens", 16,
        "optimizer", "lr", 3e-3, "schedule", "cosine", "warmup_steps", 10, "weight_decay", 0.0,
        "steps", 400, "seed", 1, "checkpoint_every", 50, "micro_batch_tokens", 4096,
        "eval", "every", 25, "k", 1, "temperature", 0.0);
    /* clang-format on */
    if (!doc) return chord_err_setc(err, CHORD_E_INTERNAL, "demo: building the job document");
    int rc = svc_job_create(s, doc, job, err);
    json_decref(doc);
    return rc ? chord_err_prefix(err, "demo") : 0;
}
