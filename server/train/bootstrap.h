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
 * Shared bases (spec.bases, for weights that are never trained in full: a LoRA job's base, a
 * frozen KL reference, a rollout's model): step 5 takes the weights from a registry that holds
 * one copy per base and device (server/jobs/bases.h) and opens a view of them on ops
 * (model_create_view) — so jobs and rollouts over one base, each on its own worker, share it.
 * The key of a base: its weights directory's real path, or a random init's config and seed.
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

/* A registry of shared base weights (implemented by server/jobs/bases.c). */
typedef struct bootstrap_bases {
    void *user;
    /* The base under key, one more reference: when it is not resident, load(ctx, home, out, err)
     * makes it on the registry's own context of ops's device (home). */
    int (*acquire)(void *user, ops_ctx *ops, const char *key,
                   int (*load)(void *ctx, ops_ctx *home, model **out, chord_err *err), void *ctx,
                   model **out, chord_err *err);
    void (*release)(void *user, model *base); /* one reference fewer */
} bootstrap_bases;

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
    /* Where the weights come from when they will never be trained in full (may be NULL: load a
     * model of its own). The view bootstrap_open then returns trains only an adapter. */
    const bootstrap_bases *bases;
} bootstrap_spec;

typedef struct bootstrap_model {
    model *m; /* owned unless it is spec.live */
    int owns_model;
    model *base; /* with spec.bases: the shared base m is a view of (released on close) */
    const bootstrap_bases *bases;
    tok_tokenizer *tok;
    int default_tokenizer; /* 1 when the embedded default was used */
    chat_template tpl;
    int32_t stop_ids[BOOTSTRAP_MAX_STOP];
    int n_stop; /* 0: no stop token (responses end at the token limit) */
} bootstrap_model;

/* Opens what spec names on ops. On failure everything opened so far is freed and *out is
 * empty. */
int bootstrap_open(const bootstrap_spec *spec, ops_ctx *ops, bootstrap_model *out, chord_err *err);
/* The shared-bases key of a base (malloc'd): "dir:" + the weights directory's real path, or
 * "init:" + the seed + the init config (sorted keys: the same config in another order is the
 * same base). */
int bootstrap_base_key(const char *dir, const json_t *init, uint64_t seed, char **key,
                       chord_err *err);
/* Frees the tokenizer and an owned model (a view: then releases its shared base); *b is empty. */
void bootstrap_close(bootstrap_model *b);

#endif
