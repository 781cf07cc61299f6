/* bootstrap.c — bootstrap_open (bootstrap.h): config, tokenizer, vocabulary check, template,
 * the caller's check, weights, stop tokens — in that order, so nothing large is allocated before
 * everything cheap has been checked. */
#include "server/train/bootstrap.h"

#include <stdio.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/train/trainer.h"

void bootstrap_close(bootstrap_model *b) {
    if (!b) return;
    tok_free(b->tok);
    if (b->owns_model) model_free(b->m);
    memset(b, 0, sizeof *b);
}

int bootstrap_open(const bootstrap_spec *spec, ops_ctx *ops, bootstrap_model *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    /* 0. a LoRA adapter directory: its base's weights, then the adapter (step 5) */
    char base[4096];
    const char *weights_dir = spec->dir, *adapter_dir = NULL;
    if (!spec->live && spec->dir) {
        int a = model_config_adapter_base(spec->dir, base, sizeof base, err);
        if (a < 0) return chord_err_prefix(err, "model");
        if (a) {
            weights_dir = base;
            adapter_dir = spec->dir;
        }
    }
    /* 1. the config */
    model_config mc;
    if (spec->live) {
        mc = spec->live->cfg;
    } else if (spec->dir) {
        if (model_config_load(weights_dir, &mc, err) != 0) return chord_err_prefix(err, "model");
    } else if (spec->init_config) {
        if (model_config_from_json(spec->init_config, &mc, err) != 0)
            return chord_err_prefix(err, "model.init.config");
    } else {
        return chord_err_set(err, "model: neither a directory nor an init config");
    }
    /* 2. the tokenizer */
    const char *tdir = spec->tokenizer_dir;
    char probe[4096 + 32];
    if (!tdir && spec->dir) {
        snprintf(probe, sizeof probe, "%s/tokenizer.json", spec->dir);
        if (chord_is_file(probe)) tdir = spec->dir;
    }
    if (!tdir && adapter_dir) {
        snprintf(probe, sizeof probe, "%s/tokenizer.json", weights_dir);
        if (chord_is_file(probe)) tdir = weights_dir;
    }
    if (tdir ? tok_load(tdir, &out->tok, err) : tok_load_default(&out->tok, err)) {
        chord_err_prefix(err, "tokenizer %s", tdir ? tdir : "(embedded default)");
        goto fail;
    }
    out->default_tokenizer = tdir == NULL;
    /* 3. the vocabulary check */
    if (tok_vocab_size(out->tok) > mc.vocab_size) {
        chord_err_set(err, "the tokenizer has %d tokens but the model's vocab_size is %d",
                      (int)tok_vocab_size(out->tok), mc.vocab_size);
        goto fail;
    }
    /* 4. the template, then the caller's check */
    if (trainer_chat_template(out->tok, &out->tpl, err) != 0) {
        chord_err_prefix(err, "chat template");
        goto fail;
    }
    if (spec->before_load && spec->before_load(spec->user, &mc, out->tok, &out->tpl, err) != 0)
        goto fail;
    /* 5. the weights */
    if (spec->live) {
        out->m = spec->live;
    } else if (spec->dir) {
        if (model_open(spec->dir, ops, &out->m, err) != 0) { /* a LoRA dir: base + adapter */
            chord_err_prefix(err, "model");
            goto fail;
        }
        out->owns_model = 1;
    } else {
        if (model_create(&mc, ops, &out->m, err) != 0) {
            chord_err_prefix(err, "model");
            goto fail;
        }
        out->owns_model = 1;
        if (model_init_random(out->m, spec->init_seed, err) != 0) goto fail;
    }
    /* 6. the stop tokens */
    out->n_stop = trainer_stop_ids(out->m, out->tok, out->stop_ids, BOOTSTRAP_MAX_STOP);
    return 0;
fail:
    bootstrap_close(out);
    return -1;
}
