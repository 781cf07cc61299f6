/* model_io.c — getting parameters into and out of a model: Hugging Face's random init (own
 * seeded RNG), loading a Hugging Face directory (config.json + safetensors, single or sharded,
 * F32/BF16/F16) and saving one. The fused q/k/v and gate/up matrices are contiguous row blocks
 * of the flat buffer, so each Hugging Face tensor is one (offset, numel) range of it
 * (model->tensors). Parsing files is config.c's and safetensors.c's job, not this file's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/base/rng.h"
#include "server/model/model.h"
#include "server/model/model_lora_internal.h"

/* xoshiro256** seeded by splitmix64: small, fast, and the same stream on every machine. */
typedef struct rng {
    uint64_t s[4];
} rng;

static uint64_t rotl(uint64_t x, int k) {
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(rng *r) {
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in (0, 1) */
static double rng_uniform(rng *r) {
    return ((double)(rng_next(r) >> 11) + 0.5) * 0x1.0p-53;
}

static void fill_normal(rng *r, float *x, size_t n, double std) {
    for (size_t i = 0; i < n; i += 2) {
        double u1 = rng_uniform(r), u2 = rng_uniform(r);
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        x[i] = (float)(std * rad * cos(th));
        if (i + 1 < n) x[i + 1] = (float)(std * rad * sin(th));
    }
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static int upload_params(model *m, const float *host, chord_err *err) {
    if (ops_to_device(m->ops, m->params, host, m->num_params * sizeof(float)) != 0)
        return chord_err_setc(err, CHORD_E_INTERNAL, "model: copying parameters to %s: %s",
                              m->ops->be->name, ops_last_error(m->ops));
    return model_weights_changed(m, err);
}

int model_init_random(model *m, uint64_t seed, chord_err *err) {
    if (m->base)
        return chord_err_set(err, "model_init_random: a view's weights are its base's (shared)");
    float *host = calloc(m->num_params, sizeof *host);
    if (!host)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "model_init_random: cannot allocate %zu "
                              "host bytes",
                              m->num_params * sizeof(float));
    rng r;
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r.s[i] = chord_splitmix64_next(&x);
    const double std = m->cfg.initializer_range > 0 ? m->cfg.initializer_range : 0.02;
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        float *p = host + t->offset;
        if (ends_with(t->name, "norm.weight")) {
            for (size_t k = 0; k < t->numel; k++)
                p[k] = 1.0f;
        } else if (ends_with(t->name, ".bias")) {
            memset(p, 0, t->numel * sizeof *p);
        } else {
            fill_normal(&r, p, t->numel, std);
        }
    }
    int pad = m->cfg.pad_token_id;
    if (pad >= 0 && pad < m->cfg.vocab_size)
        memset(host + (size_t)pad * m->cfg.hidden_size, 0,
               (size_t)m->cfg.hidden_size * sizeof(float));
    int rc = upload_params(m, host, err);
    free(host);
    return rc;
}

int model_load(const char *dir, ops_ctx *ops, model **out, chord_err *err) {
    *out = NULL;
    model_config cfg;
    if (model_config_load(dir, &cfg, err) != 0) return -1;
    model *m = NULL;
    if (model_create(&cfg, ops, &m, err) != 0) return chord_err_prefix(err, "model %s", dir);
    st_reader *rd = NULL;
    float *host = NULL;
    if (st_open(dir, &rd, err) != 0) {
        chord_err_prefix(err, "model %s", dir);
        goto fail;
    }
    host = malloc(m->num_params * sizeof *host);
    if (!host) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "model %s: cannot allocate %zu host bytes", dir,
                       m->num_params * sizeof(float));
        goto fail;
    }
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (!st_find(rd, t->name)) {
            chord_err_setc(err, CHORD_E_INVALID, "model %s: tensor %s is missing%s", dir, t->name,
                           strcmp(t->name, "lm_head.weight") == 0
                               ? " (config.json says tie_word_embeddings is false)"
                               : "");
            goto fail;
        }
        if (st_read_f32(rd, t->name, host + t->offset, t->shape, t->ndim, err) != 0) {
            chord_err_prefix(err, "model %s", dir);
            goto fail;
        }
    }
    if (upload_params(m, host, err) != 0) goto fail;
    free(host);
    st_close(rd);
    *out = m;
    return 0;
fail:
    free(host);
    if (rd) st_close(rd);
    model_free(m);
    return -1;
}

/* model_save's body, with merge: the adapter folded into the written weights. */
static int save_params(const model *m, int merge, const char *dir, st_dtype dtype,
                       size_t max_shard_bytes, chord_err *err) {
    const char *torch_dtype = dtype == ST_F32    ? "float32"
                              : dtype == ST_BF16 ? "bfloat16"
                              : dtype == ST_F16  ? "float16"
                                                 : NULL;
    if (!torch_dtype) return chord_err_set(err, "model_save: dtype must be F32, BF16 or F16");
    if (chord_mkdirs(dir, err) != 0) return -1;
    float *host = malloc(m->num_params * sizeof *host);
    st_writer *w = st_writer_new();
    int rc = -1;
    if (!host || !w) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "model_save: cannot allocate %zu host bytes",
                       m->num_params * sizeof(float));
        goto done;
    }
    if (model_read_params(m, host, err) != 0) goto done;
    if (merge && model_lora_merge_into(m, host, err) != 0) goto done;
    for (int i = 0; i < m->n_tensors; i++) {
        const model_tensor *t = &m->tensors[i];
        if (st_writer_add(w, t->name, host + t->offset, t->shape, t->ndim, dtype, err) != 0)
            goto done;
    }
    if (st_writer_metadata(w, "format", "pt", err) != 0) goto done;
    if (st_writer_save_dir(w, dir, max_shard_bytes, err) != 0) goto done;
    model_config cfg = m->cfg;
    snprintf(cfg.torch_dtype, sizeof cfg.torch_dtype, "%s", torch_dtype);
    if (model_config_save(&cfg, dir, err) != 0) goto done;
    rc = 0;
done:
    if (rc != 0) chord_err_prefix(err, "model_save %s", dir);
    st_writer_free(w);
    free(host);
    return rc;
}

int model_save(const model *m, const char *dir, st_dtype dtype, size_t max_shard_bytes,
               chord_err *err) {
    return save_params(m, 0, dir, dtype, max_shard_bytes, err);
}

int model_save_merged(const model *m, const char *dir, st_dtype dtype, size_t max_shard_bytes,
                      chord_err *err) {
    if (!m->lora) return chord_err_set(err, "model_save_merged: the model has no adapter");
    return save_params(m, 1, dir, dtype, max_shard_bytes, err);
}

/* The optimizer state of what trains: the model's, or (an adapter attached) the adapter's. */
typedef struct opt_state {
    size_t n;
    float **adam_m, **adam_v;
    int *adam_t;
} opt_state;

static opt_state opt_state_of(model *m) {
    if (m->lora)
        return (opt_state){m->lora->num_params, &m->lora->adam_m, &m->lora->adam_v,
                           &m->lora->adam_t};
    return (opt_state){m->num_params, &m->adam_m, &m->adam_v, &m->adam_t};
}

/* Writes the file from host moments (NULL: read the model's, all of them). */
static int save_optimizer(const model *m, const char *path, const float *adam_m,
                          const float *adam_v, chord_err *err) {
    opt_state os = opt_state_of((model *)m);
    const size_t n = os.n;
    const float *am = *os.adam_m, *av = *os.adam_v;
    float *host = calloc(2 * n + 1, sizeof *host);
    st_writer *w = st_writer_new();
    int rc = -1;
    if (!host || !w) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "cannot allocate %zu host bytes",
                       2 * n * sizeof(float));
        goto done;
    }
    ops_ctx *o = m->ops;
    if (adam_m) {
        memcpy(host, adam_m, n * sizeof(float));
        memcpy(host + n, adam_v, n * sizeof(float));
    } else if (m->opt_hi) {
        chord_err_set(err, "the moments are sharded (ZeRO-1): gather them first");
        goto done;
    } else if (am && (ops_to_host(o, host, am, n * sizeof(float)) != 0 ||
                      ops_to_host(o, host + n, av, n * sizeof(float)) != 0)) {
        chord_err_setc(err, CHORD_E_INTERNAL, "reading the moments: %s", ops_last_error(o));
        goto done;
    }
    host[2 * n] = (float)*os.adam_t;
    int64_t shape = (int64_t)n, one = 1;
    if (st_writer_add(w, "adam_m", host, &shape, 1, ST_F32, err) != 0 ||
        st_writer_add(w, "adam_v", host + n, &shape, 1, ST_F32, err) != 0 ||
        st_writer_add(w, "adam_t", host + 2 * n, &one, 1, ST_F32, err) != 0 ||
        st_writer_save(w, path, err) != 0)
        goto done;
    rc = 0;
done:
    if (rc != 0) chord_err_prefix(err, "model_save_optimizer %s", path);
    st_writer_free(w);
    free(host);
    return rc;
}

int model_save_optimizer(const model *m, const char *path, chord_err *err) {
    return save_optimizer(m, path, NULL, NULL, err);
}

int model_save_optimizer_from(const model *m, const char *path, const float *adam_m,
                              const float *adam_v, chord_err *err) {
    return save_optimizer(m, path, adam_m, adam_v, err);
}

int model_load_optimizer(model *m, const char *path, chord_err *err) {
    opt_state os = opt_state_of(m);
    const size_t n = os.n;
    st_reader *rd = NULL;
    float *host = NULL;
    int rc = -1;
    ops_ctx *o = m->ops;
    if (st_open(path, &rd, err) != 0) goto done;
    host = malloc((2 * n + 1) * sizeof *host);
    if (!host) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "cannot allocate %zu host bytes",
                       2 * n * sizeof(float));
        goto done;
    }
    int64_t shape = (int64_t)n, one = 1;
    if (st_read_f32(rd, "adam_m", host, &shape, 1, err) != 0 ||
        st_read_f32(rd, "adam_v", host + n, &shape, 1, err) != 0 ||
        st_read_f32(rd, "adam_t", host + 2 * n, &one, 1, err) != 0)
        goto done;
    float t = host[2 * n];
    if (!(t >= 0.0f && t < 16777216.0f) || t != (float)(int)t) {
        chord_err_set(err, "adam_t = %g is not a step count", (double)t);
        goto done;
    }
    /* ZeRO-1: this model keeps the moments of its slice only */
    const size_t lo = m->opt_hi ? m->opt_lo : 0, k = (m->opt_hi ? m->opt_hi : n) - lo;
    if (!*os.adam_m) *os.adam_m = ops_alloc(o, (k ? k : 1) * sizeof(float));
    if (*os.adam_m && !*os.adam_v) *os.adam_v = ops_alloc(o, (k ? k : 1) * sizeof(float));
    if (!*os.adam_v) {
        chord_err_setc(err, CHORD_E_TOO_LARGE, "cannot allocate AdamW moments: %s",
                       ops_last_error(o));
        goto done;
    }
    if (ops_to_device(o, *os.adam_m, host + lo, k * sizeof(float)) != 0 ||
        ops_to_device(o, *os.adam_v, host + n + lo, k * sizeof(float)) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "copying the moments: %s", ops_last_error(o));
        goto done;
    }
    *os.adam_t = (int)t;
    rc = 0;
done:
    if (rc != 0) chord_err_prefix(err, "model_load_optimizer %s", path);
    if (rd) st_close(rd);
    free(host);
    return rc;
}

int model_open(const char *dir, ops_ctx *ops, model **out, chord_err *err) {
    char base[4096];
    *out = NULL;
    int adapter = model_config_adapter_base(dir, base, sizeof base, err);
    if (adapter < 0) return -1;
    if (model_load(adapter ? base : dir, ops, out, err) != 0) return -1;
    if (adapter && model_lora_load(*out, dir, err) != 0) {
        model_free(*out);
        *out = NULL;
        return chord_err_prefix(err, "LoRA adapter");
    }
    return 0;
}
