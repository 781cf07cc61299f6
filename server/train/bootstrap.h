/* bootstrap.h — a model ready to sample and train, opened the one way the trainer, `chordd eval`
 * and the rollout executor (server/jobs/rollout_request.c) all use:
 *
 *   1. the config: DIR/config.json, or a random-init config (Hugging Face fields), or the live
 *      model's;
 *   2. the tokenizer: the one named, else DIR/tokenizer.json when there is one, else the
 *      embedded default (tok_load_default);
 *   3. the vocabulary check: the tokenizer's ids must fit the model's vocab_size (a model
 *      vocabulary padded past the tokenizer's, as Qwen2.5's, is fine);
 *   4. the chat template (trainer_chat_template) — then the caller's before_load hook (a
 *      device-memory check that needs the config and the tokenizer), before any weight is
 *      allocated;
 *   5. the weights: loaded from DIR, or created and initialised with init_seed; a PEFT LoRA
 *      directory (adapter_config.json, no config.json: a LoRA job's checkpoint) opens its base
 *      (base_model_name_or_path, a model directory; config and tokenizer from there unless DIR
 *      has a tokenizer.json) and attaches the adapter (model_lora_load);
 *   6. the stop tokens (trainer_stop_ids).
 *
 * Errors name the part: "model: ...", "model.init.config: ...", "tokenizer ...: ...", "the
 * tokenizer has N tokens but the model's vocab_size is M".
 *
 * Not here: which directory a job or a request means (the service and jobconfig resolve it),
 * optimizer state (trainer.c's resume). */
#ifndef CHORD_TRAIN_BOOTSTRAP_H
#define CHORD_TRAIN_BOOTSTRAP_H

#include <jansson.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/model/chat.h"
#include "server/model/config.h"
#include "server/model/model.h"
#include "server/model/tokenizer.h"

#define BOOTSTRAP_MAX_STOP 16

typedef struct bootstrap_spec {
    const char *dir;           /* a model directory or a checkpoint (config.json, safetensors,
                                  maybe tokenizer.json); NULL for a random init */
    const json_t *init_config; /* without dir: the Hugging Face config.json fields */
    uint64_t init_seed;        /* the random init's seed */
    const char *tokenizer_dir; /* a tokenizer directory or tokenizer.json; NULL: dir's, else the
                                  embedded default */
    model *live;               /* a model already in memory to use instead (borrowed; dir then
                                  only locates the tokenizer) */
    /* Called once the config, the tokenizer and the template are known, before the weights
     * are loaded or created (may be NULL). Non-zero fails the open with err. */
    int (*before_load)(void *user, const model_config *mc, const tok_tokenizer *tok,
                       const chat_template *tpl, chord_err *err);
    void *user;
} bootstrap_spec;

typedef struct bootstrap_model {
    model *m; /* owned unless it is spec.live */
    int owns_model;
    tok_tokenizer *tok;
    int default_tokenizer; /* 1 when the embedded default was used */
    chat_template tpl;
    int32_t stop_ids[BOOTSTRAP_MAX_STOP];
    int n_stop; /* 0: no stop token (responses end at the token limit) */
} bootstrap_model;

/* Opens what spec names on ops. On failure everything opened so far is freed and *out is
 * empty. */
int bootstrap_open(const bootstrap_spec *spec, ops_ctx *ops, bootstrap_model *out, chord_err *err);
/* Frees the tokenizer and an owned model; *b is empty. */
void bootstrap_close(bootstrap_model *b);

#endif
