/* bootstrap.c — bootstrap_open (bootstrap.h): config, tokenizer, vocabulary check, template,
 * the caller's check, weights, stop tokens — in that order, so nothing large is allocated before
 * everything cheap has been checked. */
#include "server/train/bootstrap.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/train/trainer.h"

void bootstrap_close(bootstrap_model *b) {
    if (!b) return;
    tok_free(b->tok);
    if (b->owns_model) model_free(b->m);
    if (b->base) b->bases->release(b->bases->user, b->base);
    memset(b, 0, sizeof *b);
}

/* ---- shared bases: what the registry loads when a base is not resident ---- */

typedef struct base_loader {
    const char *dir;         /* the weights directory, or NULL: a random init of mc */
    const model_config *mc;
    uint64_t seed;
} base_loader;

static int load_base(void *ctx, ops_ctx *home, model **out, chord_err *err) {
    const base_loader *l = ctx;
    if (l->dir) return model_load(l->dir, home, out, err);
    if (model_create(l->mc, home, out, err) != 0) return -1;
    if (model_init_random(*out, l->seed, err) != 0) {
        model_free(*out);
        *out = NULL;
        return -1;
    }
    return 0;
}

int bootstrap_base_key(const char *dir, const json_t *init, uint64_t seed, char **key,
                       chord_err *err) {
    *key = NULL;
    if (dir) {
        char *real = realpath(dir, NULL);
        if (!real) return chord_err_set(err, "model: %s: cannot resolve the path", dir);
        size_t n = strlen(real) + 8;
        *key = malloc(n);
        if (*key) snprintf(*key, n, "dir:%s", real);
        free(real);
    } else {
        char *cfg = json_dumps(init, JSON_COMPACT | JSON_SORT_KEYS);
        size_t n = cfg ? strlen(cfg) + 40 : 0;
        *key = cfg ? malloc(n) : NULL;
        if (*key) snprintf(*key, n, "init:%llu:%s", (unsigned long long)seed, cfg);
        free(cfg);
    }
    return *key ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "model: out of host memory");
}

/* Step 5 with spec->bases: the shared base (loaded once per device) and a view of it on ops. */
static int open_shared(const bootstrap_spec *spec, ops_ctx *ops, const char *weights_dir,
                       const model_config *mc, bootstrap_model *out, chord_err *err) {
    char *key = NULL;
    if (bootstrap_base_key(weights_dir, spec->init_config, spec->init_seed, &key, err) != 0) return -1;
    base_loader l = {.dir = weights_dir, .mc = mc, .seed = spec->init_seed};
    model *base = NULL;
    int rc = spec->bases->acquire(spec->bases->user, ops, key, load_base, &l, &base, err);
    free(key);
    if (rc != 0) return -1;
    out->base = base;
    out->bases = spec->bases;
    if (model_create_view(base, ops, &out->m, err) != 0) return -1;
    out->owns_model = 1;
    return 0;
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
    } else if (spec->bases) {
        if (open_shared(spec, ops, spec->dir ? weights_dir : NULL, &mc, out, err) != 0) {
            chord_err_prefix(err, "model");
            goto fail;
        }
        if (adapter_dir && model_lora_load(out->m, adapter_dir, err) != 0) {
            chord_err_prefix(err, "model: LoRA adapter");
            goto fail;
        }
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
