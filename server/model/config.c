/* config.c — reads and writes Hugging Face config.json for the Llama / Qwen2 / Qwen3 family.
 *
 * Defaults follow transformers 5.23's LlamaConfig / Qwen2Config / Qwen3Config field by field
 * (note Qwen2/Qwen3 default num_key_value_heads to 32, not to the head count; Qwen3 defaults
 * head_dim to 128). rope_theta is read from `rope_parameters` (transformers 5) or the top level
 * (older files), rope scaling from `rope_parameters` or the older `rope_scaling`.
 * This file knows nothing of weights; it only describes the shapes. */
#include "server/model/config.h"

#include <float.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/base/json_field.h"

#define CFG "config.json"

/* ---- fields (server/base/json_field.h names each one in its errors) -------------------- */

/* An int field (path.key) from min up: absent or null gives def. A whole real such as 64.0 is
 * refused, as transformers' strict dataclass refuses it. */
static int get_int(const json_t *obj, const char *path, const char *key, int flags, int def,
                   int64_t min, int *out, chord_err *err) {
    int64_t x = def;
    char full[CHORD_JSON_PATH_MAX];
    chord_json_path(full, path, key);
    if (chord_json_get_int(obj, path, key, flags, min, INT64_MAX, &x, err) ||
        chord_check_int_range(x, full, INT64_MIN, INT_MAX, err))
        return -1;
    *out = (int)x;
    return 0;
}

/* A token id: absent or null gives -1 ("none"). */
static int get_token_id(const json_t *v, const char *path, int *out, chord_err *err) {
    int64_t id = -1;
    if (chord_json_int_value(v, path, 0, 0, INT64_MAX, &id, err) ||
        chord_check_int_range(id, path, INT64_MIN, INT_MAX, err))
        return -1;
    *out = (int)id;
    return 0;
}

/* A positive finite number (path.key); absent or null leaves *out. */
static int get_positive(const json_t *obj, const char *path, const char *key, int flags,
                        double *out, chord_err *err) {
    return chord_json_get_number(obj, path, key, flags | CHORD_JSON_LO_OPEN, 0, INFINITY, out, err);
}

/* An optional string copied into out (size n); absent leaves out untouched. */
static int get_str(const json_t *root, const char *key, char *out, size_t n, int *found,
                   chord_err *err) {
    const char *s = NULL;
    if (found) *found = 0;
    if (chord_json_get_string(root, "", key, 0, &s, err)) return -1;
    if (!s) return 0;
    if (strlen(s) >= n)
        return chord_err_set(err, "%s: too long (%zu characters, at most %zu)", key, strlen(s),
                             n - 1);
    snprintf(out, n, "%s", s);
    if (found) *found = 1;
    return 0;
}

/* ---- model types ------------------------------------------------------------------------- */

typedef struct family {
    const char *model_type;
    const char *architecture;
    int kv_heads_default; /* 0: same as num_attention_heads */
    int head_dim_default; /* 0: hidden_size / num_attention_heads */
    int max_position_default;
    int bos_default, eos_default; /* -1: none */
} family;

static const family families[] = {
    {"llama", "LlamaForCausalLM", 0, 0, 2048, 1, 2},
    {"qwen2", "Qwen2ForCausalLM", 32, 0, 32768, -1, -1},
    {"qwen3", "Qwen3ForCausalLM", 32, 128, 32768, -1, -1},
};
#define N_FAMILIES (sizeof families / sizeof families[0])

static const family *family_by_type(const char *t) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i].model_type, t) == 0) return &families[i];
    return NULL;
}

static const family *family_by_arch(const char *a) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i].architecture, a) == 0) return &families[i];
    return NULL;
}

/* ---- rope -------------------------------------------------------------------------------- */

static int parse_rope(const json_t *root, model_config *cfg, chord_err *err) {
    /* transformers 5 puts everything in rope_parameters; older files have a top-level
     * rope_theta and an optional rope_scaling dict. rope_scaling wins over rope_parameters when
     * both are present (convert_rope_params_to_dict), and a rope_theta inside the dict wins over
     * the top-level one. */
    const json_t *params = json_object_get(root, "rope_scaling");
    const char *pname = "rope_scaling";
    if (params == NULL || json_is_null(params) ||
        (json_is_object(params) && json_object_size(params) == 0)) {
        params = json_object_get(root, "rope_parameters");
        pname = "rope_parameters";
    }
    if (params != NULL && json_is_null(params)) params = NULL;
    if (params != NULL && chord_json_object_value(params, pname, err)) return -1;

    cfg->rope_theta = 10000.0;
    if (get_positive(root, "", "rope_theta", 0, &cfg->rope_theta, err)) return -1;
    cfg->rope_scaling = ROPE_SCALING_NONE;
    cfg->rope_factor = 1.0;
    cfg->rope_low_freq_factor = 1.0;
    cfg->rope_high_freq_factor = 4.0;
    cfg->rope_original_max_position = cfg->max_position_embeddings;
    if (params == NULL) return 0;

    if (get_positive(params, pname, "rope_theta", 0, &cfg->rope_theta, err)) return -1;
    const json_t *pr = json_object_get(params, "partial_rotary_factor");
    if (pr && !json_is_null(pr) && !(json_is_number(pr) && json_number_value(pr) == 1.0))
        return chord_err_set(err, "%s.partial_rotary_factor: only 1.0 is supported", pname);

    const json_t *t = json_object_get(params, "rope_type");
    if (t == NULL || json_is_null(t)) t = json_object_get(params, "type");
    const char *type = "default";
    if (t != NULL && !json_is_null(t)) {
        if (!json_is_string(t)) return chord_err_set(err, "%s.rope_type: must be a string", pname);
        type = json_string_value(t);
    }
    if (strcmp(type, "default") == 0) return 0;
    if (strcmp(type, "linear") == 0) {
        cfg->rope_scaling = ROPE_SCALING_LINEAR;
        return get_positive(params, pname, "factor", CHORD_JSON_REQUIRED, &cfg->rope_factor, err);
    }
    if (strcmp(type, "llama3") == 0) {
        cfg->rope_scaling = ROPE_SCALING_LLAMA3;
        const int need = CHORD_JSON_REQUIRED;
        if (get_positive(params, pname, "factor", need, &cfg->rope_factor, err) ||
            get_positive(params, pname, "low_freq_factor", need, &cfg->rope_low_freq_factor, err) ||
            get_positive(params, pname, "high_freq_factor", need, &cfg->rope_high_freq_factor, err))
            return -1;
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return chord_err_set(err, "%s.high_freq_factor: must exceed low_freq_factor (%g <= %g)",
                                 pname, cfg->rope_high_freq_factor, cfg->rope_low_freq_factor);
        /* A top-level original_max_position_embeddings takes priority (standardize_rope_params). */
        const char *omp = "original_max_position_embeddings";
        int top = chord_json_field(root, omp) != NULL;
        return get_int(top ? root : params, top ? "" : pname, omp, 0, cfg->max_position_embeddings,
                       1, &cfg->rope_original_max_position, err);
    }
    return chord_err_set(err, "%s.rope_type: \"%s\" is not supported (default, linear, llama3)",
                         pname, type);
}

/* ---- parse ------------------------------------------------------------------------------- */

static int parse_config(const json_t *root, model_config *cfg, chord_err *err) {
    if (!json_is_object(root)) return chord_err_set(err, "must be a JSON object");

    /* model_type, architectures: either names the family; both must agree. */
    int have_type = 0;
    if (get_str(root, "model_type", cfg->model_type, sizeof cfg->model_type, &have_type, err))
        return -1;
    const json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (archs != NULL && !json_is_null(archs)) {
        if (!json_is_array(archs) || json_array_size(archs) == 0 ||
            !json_is_string(json_array_get(archs, 0)))
            return chord_err_set(err, "architectures: must be a non-empty list of strings");
        arch = json_string_value(json_array_get(archs, 0));
    }
    const family *fam = NULL;
    if (have_type) {
        fam = family_by_type(cfg->model_type);
        if (!fam)
            return chord_err_set(err, "model_type: \"%s\" is not supported (llama, qwen2, qwen3)",
                                 cfg->model_type);
        if (arch && strcmp(arch, fam->architecture) != 0)
            return chord_err_set(err,
                                 "architectures: \"%s\" does not match model_type \"%s\" "
                                 "(expected %s)",
                                 arch, cfg->model_type, fam->architecture);
    } else if (arch) {
        fam = family_by_arch(arch);
        if (!fam)
            return chord_err_set(err,
                                 "architectures: \"%s\" is not supported (LlamaForCausalLM, "
                                 "Qwen2ForCausalLM, Qwen3ForCausalLM)",
                                 arch);
    } else {
        return chord_err_set(err, "model_type: missing (required)");
    }
    snprintf(cfg->model_type, sizeof cfg->model_type, "%s", fam->model_type);
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", fam->architecture);
    int is_llama = strcmp(fam->model_type, "llama") == 0;
    int is_qwen2 = strcmp(fam->model_type, "qwen2") == 0;
    int is_qwen3 = strcmp(fam->model_type, "qwen3") == 0;

    /* Sizes. */
    if (get_int(root, "", "vocab_size", CHORD_JSON_REQUIRED, 0, 1, &cfg->vocab_size, err) ||
        get_int(root, "", "hidden_size", CHORD_JSON_REQUIRED, 0, 1, &cfg->hidden_size, err) ||
        get_int(root, "", "num_hidden_layers", CHORD_JSON_REQUIRED, 0, 1, &cfg->num_hidden_layers,
                err) ||
        get_int(root, "", "num_attention_heads", CHORD_JSON_REQUIRED, 0, 1,
                &cfg->num_attention_heads, err) ||
        get_int(root, "", "intermediate_size", CHORD_JSON_REQUIRED, 0, 1, &cfg->intermediate_size,
                err))
        return -1;
    int kv_default = fam->kv_heads_default ? fam->kv_heads_default : cfg->num_attention_heads;
    if (get_int(root, "", "num_key_value_heads", 0, kv_default, 1, &cfg->num_key_value_heads, err))
        return -1;
    if (cfg->num_attention_heads % cfg->num_key_value_heads != 0)
        return chord_err_set(err,
                             "num_key_value_heads: must divide num_attention_heads "
                             "(%d %% %d != 0)",
                             cfg->num_attention_heads, cfg->num_key_value_heads);
    if (!chord_json_field(root, "head_dim") && fam->head_dim_default == 0) {
        if (cfg->hidden_size % cfg->num_attention_heads != 0)
            return chord_err_set(err,
                                 "hidden_size: must be a multiple of num_attention_heads "
                                 "when head_dim is absent (%d %% %d != 0)",
                                 cfg->hidden_size, cfg->num_attention_heads);
        cfg->head_dim = cfg->hidden_size / cfg->num_attention_heads;
    } else if (get_int(root, "", "head_dim", 0, fam->head_dim_default, 1, &cfg->head_dim, err)) {
        return -1;
    }
    /* transformers' LlamaConfig.validate_architecture insists on it even with head_dim given:
     * a checkpoint breaking it would not load there. */
    if (is_llama && cfg->hidden_size % cfg->num_attention_heads != 0)
        return chord_err_set(err,
                             "hidden_size: must be a multiple of num_attention_heads for "
                             "llama (%d %% %d != 0)",
                             cfg->hidden_size, cfg->num_attention_heads);
    if (cfg->head_dim % 2 != 0)
        return chord_err_set(err, "head_dim: must be even for RoPE, got %d", cfg->head_dim);
    if (get_int(root, "", "max_position_embeddings", 0, fam->max_position_default, 1,
                &cfg->max_position_embeddings, err))
        return -1;

    /* Numbers. */
    cfg->rms_norm_eps = 1e-6;
    cfg->initializer_range = 0.02;
    if (get_positive(root, "", "rms_norm_eps", 0, &cfg->rms_norm_eps, err) ||
        chord_json_get_number(root, "", "initializer_range", 0, 0, 1, &cfg->initializer_range, err))
        return -1;
    if (parse_rope(root, cfg, err)) return -1;

    /* Flags. */
    if (chord_json_get_bool(root, "", "tie_word_embeddings", 0, &cfg->tie_word_embeddings, err))
        return -1;
    if (is_qwen2) {
        /* Qwen2 always has q/k/v bias and never an o_proj bias, whatever the file says. */
        cfg->attention_bias = 1;
        cfg->o_proj_bias = 0;
    } else {
        int ab = 0;
        if (chord_json_get_bool(root, "", "attention_bias", 0, &ab, err)) return -1;
        cfg->attention_bias = ab;
        cfg->o_proj_bias = ab;
    }
    if (is_llama) {
        if (chord_json_get_bool(root, "", "mlp_bias", 0, &cfg->mlp_bias, err)) return -1;
    }
    cfg->qk_norm = is_qwen3;
    if (!is_llama) {
        int sliding = 0;
        if (chord_json_get_bool(root, "", "use_sliding_window", 0, &sliding, err)) return -1;
        if (sliding) return chord_err_set(err, "use_sliding_window: true is not supported");
    }
    {
        char act[32] = "silu";
        if (get_str(root, "hidden_act", act, sizeof act, NULL, err)) return -1;
        if (strcmp(act, "silu") != 0)
            return chord_err_set(err, "hidden_act: \"%s\" is not supported (silu)", act);
    }
    int tp = 1;
    if (get_int(root, "", "pretraining_tp", 0, 1, 1, &tp, err)) return -1;
    if (tp != 1) return chord_err_set(err, "pretraining_tp: only 1 is supported");

    /* Token ids. A key present with null means "none"; absent means the class default. */
    const json_t *bos = json_object_get(root, "bos_token_id");
    if (bos == NULL) {
        cfg->bos_token_id = fam->bos_default;
    } else if (get_token_id(bos, "bos_token_id", &cfg->bos_token_id, err)) {
        return -1;
    }
    if (get_token_id(json_object_get(root, "pad_token_id"), "pad_token_id", &cfg->pad_token_id,
                     err))
        return -1;
    const json_t *eos = json_object_get(root, "eos_token_id");
    cfg->n_eos = 0;
    if (eos == NULL) {
        if (fam->eos_default >= 0) cfg->eos_token_ids[cfg->n_eos++] = fam->eos_default;
    } else if (json_is_array(eos)) {
        if (json_array_size(eos) > MODEL_MAX_EOS)
            return chord_err_set(err, "eos_token_id: at most %d ids, got %zu", MODEL_MAX_EOS,
                                 json_array_size(eos));
        for (size_t i = 0; i < json_array_size(eos); i++) {
            char key[40];
            snprintf(key, sizeof key, "eos_token_id[%zu]", i);
            int id = -1;
            const json_t *v = json_array_get(eos, i);
            if (json_is_null(v)) return chord_err_set(err, "%s: must be an integer", key);
            if (get_token_id(v, key, &id, err)) return -1;
            cfg->eos_token_ids[cfg->n_eos++] = id;
        }
    } else if (!json_is_null(eos)) {
        int id = -1;
        if (!json_is_integer(eos))
            return chord_err_set(err, "eos_token_id: must be an integer or a list of them");
        if (get_token_id(eos, "eos_token_id", &id, err)) return -1;
        cfg->eos_token_ids[cfg->n_eos++] = id;
    }

    /* dtype: transformers 5 writes "dtype", older files "torch_dtype". */
    int found = 0;
    if (get_str(root, "dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, &found, err)) return -1;
    if (!found &&
        get_str(root, "torch_dtype", cfg->torch_dtype, sizeof cfg->torch_dtype, &found, err))
        return -1;
    return 0;
}

int model_config_from_json(const struct json_t *root, model_config *cfg, chord_err *err) {
    memset(cfg, 0, sizeof *cfg);
    return parse_config(root, cfg, err) ? chord_err_prefix(err, CFG) : 0;
}

int model_config_parse(const char *json_text, model_config *cfg, chord_err *err) {
    json_error_t je;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char key[64];
        chord_json_key_before(json_text, strlen(json_text), je.position, key, sizeof key);
        if (key[0])
            return chord_err_set(err, CFG ": %s: invalid JSON at line %d column %d: %s", key,
                                 je.line, je.column, je.text);
        return chord_err_set(err, CFG ": invalid JSON at line %d column %d: %s", je.line, je.column,
                             je.text);
    }
    int rc = model_config_from_json(root, cfg, err);
    json_decref(root);
    return rc;
}

int model_config_adapter_base(const char *dir, char *base, size_t n, chord_err *err) {
    char path[4096 + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (chord_is_file(path)) return 0;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (!chord_is_file(path)) return 0;
    json_error_t je;
    json_t *doc = json_load_file(path, 0, &je);
    if (!doc) return chord_err_set(err, "%s: %s", path, je.text);
    const char *b = json_string_value(json_object_get(doc, "base_model_name_or_path"));
    int rc = 1;
    if (!b || !chord_is_dir(b))
        rc = chord_err_set(err,
                           "%s is a LoRA adapter whose base (base_model_name_or_path) %s%s%s is "
                           "not a model directory here (a random-init base is sampled within "
                           "its own job)",
                           dir, b ? "\"" : "", b ? b : "is null and", b ? "\"" : "");
    else if ((size_t)snprintf(base, n, "%s", b) >= n)
        rc = chord_err_set(err, "%s: base_model_name_or_path too long", path);
    json_decref(doc);
    return rc;
}

int model_config_load(const char *dir, model_config *cfg, chord_err *err) {
    char path[4096], base[4096];
    int adapter = model_config_adapter_base(dir, base, sizeof base, err);
    if (adapter < 0) return -1;
    if (adapter) dir = base; /* a LoRA adapter's model is its base's */
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return chord_err_set(err, "%s: path too long", dir);
    char *text = NULL;
    if (chord_read_file(path, &text, NULL, err)) return -1;
    int rc = model_config_parse(text, cfg, err);
    free(text);
    if (rc) return chord_err_prefix(err, "%s", dir);
    return 0;
}

/* ---- write ------------------------------------------------------------------------------- */

static int set_new(json_t *obj, const char *key, json_t *v) {
    return v ? json_object_set_new(obj, key, v) : -1;
}

static json_t *token_or_null(int id) {
    return id >= 0 ? json_integer(id) : json_null();
}

/* 1 when %.15g prints x back exactly: then the file reads 1e-06, not 9.9999999999999995e-07. */
static int short_ok(double x) {
    char buf[64];
    snprintf(buf, sizeof buf, "%.15g", x);
    return strtod(buf, NULL) == x;
}

static json_t *rope_dict(const model_config *cfg, int with_theta) {
    json_t *d = json_object();
    if (!d) return NULL;
    int bad = 0;
    if (with_theta) bad |= set_new(d, "rope_theta", json_real(cfg->rope_theta));
    const char *type = cfg->rope_scaling == ROPE_SCALING_LINEAR   ? "linear"
                       : cfg->rope_scaling == ROPE_SCALING_LLAMA3 ? "llama3"
                                                                  : "default";
    bad |= set_new(d, "rope_type", json_string(type));
    if (cfg->rope_scaling != ROPE_SCALING_NONE)
        bad |= set_new(d, "factor", json_real(cfg->rope_factor));
    if (cfg->rope_scaling == ROPE_SCALING_LLAMA3) {
        bad |= set_new(d, "low_freq_factor", json_real(cfg->rope_low_freq_factor));
        bad |= set_new(d, "high_freq_factor", json_real(cfg->rope_high_freq_factor));
        bad |= set_new(d, "original_max_position_embeddings",
                       json_integer(cfg->rope_original_max_position));
    }
    if (bad) {
        json_decref(d);
        return NULL;
    }
    return d;
}

struct json_t *model_config_to_json_object(const model_config *cfg) {
    json_t *o = json_object();
    if (!o) return NULL;
    int is_llama = strcmp(cfg->model_type, "llama") == 0;
    int is_qwen2 = strcmp(cfg->model_type, "qwen2") == 0;
    int bad = 0;
    json_t *archs = json_array();
    if (archs) json_array_append_new(archs, json_string(cfg->architecture));
    bad |= set_new(o, "architectures", archs);
    bad |= set_new(o, "model_type", json_string(cfg->model_type));
    bad |= set_new(o, "vocab_size", json_integer(cfg->vocab_size));
    bad |= set_new(o, "hidden_size", json_integer(cfg->hidden_size));
    bad |= set_new(o, "intermediate_size", json_integer(cfg->intermediate_size));
    bad |= set_new(o, "num_hidden_layers", json_integer(cfg->num_hidden_layers));
    bad |= set_new(o, "num_attention_heads", json_integer(cfg->num_attention_heads));
    bad |= set_new(o, "num_key_value_heads", json_integer(cfg->num_key_value_heads));
    bad |= set_new(o, "head_dim", json_integer(cfg->head_dim));
    bad |= set_new(o, "hidden_act", json_string("silu"));
    bad |= set_new(o, "max_position_embeddings", json_integer(cfg->max_position_embeddings));
    bad |= set_new(o, "initializer_range", json_real(cfg->initializer_range));
    bad |= set_new(o, "rms_norm_eps", json_real(cfg->rms_norm_eps));
    /* rope_parameters for transformers 5; rope_theta (+ rope_scaling) for older readers (vLLM,
     * llama.cpp's converter). Both say the same thing. */
    bad |= set_new(o, "rope_theta", json_real(cfg->rope_theta));
    bad |= set_new(o, "rope_parameters", rope_dict(cfg, 1));
    if (cfg->rope_scaling != ROPE_SCALING_NONE)
        bad |= set_new(o, "rope_scaling", rope_dict(cfg, 0));
    bad |= set_new(o, "tie_word_embeddings", json_boolean(cfg->tie_word_embeddings));
    if (!is_qwen2) bad |= set_new(o, "attention_bias", json_boolean(cfg->attention_bias));
    if (is_llama) {
        bad |= set_new(o, "mlp_bias", json_boolean(cfg->mlp_bias));
        bad |= set_new(o, "pretraining_tp", json_integer(1));
    } else {
        bad |= set_new(o, "use_sliding_window", json_false());
        bad |= set_new(o, "sliding_window", json_null());
        bad |= set_new(o, "max_window_layers", json_integer(cfg->num_hidden_layers));
    }
    bad |= set_new(o, "attention_dropout", json_real(0.0));
    bad |= set_new(o, "use_cache", json_true());
    bad |= set_new(o, "bos_token_id", token_or_null(cfg->bos_token_id));
    if (cfg->n_eos == 0) {
        bad |= set_new(o, "eos_token_id", json_null());
    } else if (cfg->n_eos == 1) {
        bad |= set_new(o, "eos_token_id", json_integer(cfg->eos_token_ids[0]));
    } else {
        json_t *a = json_array();
        for (int i = 0; a && i < cfg->n_eos && i < MODEL_MAX_EOS; i++)
            json_array_append_new(a, json_integer(cfg->eos_token_ids[i]));
        bad |= set_new(o, "eos_token_id", a);
    }
    bad |= set_new(o, "pad_token_id", token_or_null(cfg->pad_token_id));
    if (cfg->torch_dtype[0]) {
        bad |= set_new(o, "dtype", json_string(cfg->torch_dtype));
        bad |= set_new(o, "torch_dtype", json_string(cfg->torch_dtype));
    }
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

char *model_config_to_json(const model_config *cfg) {
    json_t *o = model_config_to_json_object(cfg);
    if (!o) return NULL;
    int prec = short_ok(cfg->initializer_range) && short_ok(cfg->rms_norm_eps) &&
                       short_ok(cfg->rope_theta) && short_ok(cfg->rope_factor) &&
                       short_ok(cfg->rope_low_freq_factor) && short_ok(cfg->rope_high_freq_factor)
                   ? 15
                   : 17;
    char *text = chord_json_dumps_line(o, JSON_INDENT(2) | JSON_REAL_PRECISION(prec), NULL);
    json_decref(o);
    return text;
}

int model_config_save(const model_config *cfg, const char *dir, chord_err *err) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path)
        return chord_err_set(err, "%s: path too long", dir);
    char *s = model_config_to_json(cfg);
    if (!s) return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory", path);
    int rc = chord_write_file_atomic(path, s, strlen(s), err);
    free(s);
    return rc;
}

/* ---- derived quantities ------------------------------------------------------------------ */

size_t model_config_num_params(const model_config *cfg) {
    size_t V = (size_t)cfg->vocab_size, C = (size_t)cfg->hidden_size;
    size_t Hq = (size_t)cfg->num_attention_heads, Hkv = (size_t)cfg->num_key_value_heads;
    size_t D = (size_t)cfg->head_dim, I = (size_t)cfg->intermediate_size;
    size_t layer = 0;
    layer += C * Hq * D + 2 * C * Hkv * D + Hq * D * C; /* q, k, v, o */
    if (cfg->attention_bias) layer += Hq * D + 2 * Hkv * D;
    if (cfg->o_proj_bias) layer += C;
    if (cfg->qk_norm) layer += 2 * D;
    layer += 3 * C * I; /* gate, up, down */
    if (cfg->mlp_bias) layer += 2 * I + C;
    layer += 2 * C; /* input_layernorm, post_attention_layernorm */
    size_t total = V * C + (size_t)cfg->num_hidden_layers * layer + C;
    if (!cfg->tie_word_embeddings) total += V * C;
    return total;
}

void model_config_rope_inv_freq(const model_config *cfg, float *inv_freq) {
    /* Mirrors transformers op by op in float32, as torch evaluates it:
     *   inv_freq = 1.0 / (base ** (arange(0, dim, 2).float() / dim))   (reciprocal, then * 1.0)
     * then linear (inv_freq / factor) or llama3 scaling, where `scalar / t` is
     * t.reciprocal() * scalar and python-float scalars are rounded to float32 first. */
    int dim = cfg->head_dim;
    float base = (float)cfg->rope_theta;
    float factor = (float)cfg->rope_factor;
    float lo = (float)cfg->rope_low_freq_factor;
    float hi_minus_lo = (float)(cfg->rope_high_freq_factor - cfg->rope_low_freq_factor);
    float old_len = (float)cfg->rope_original_max_position;
    float low_wavelen =
        (float)((double)cfg->rope_original_max_position / cfg->rope_low_freq_factor);
    float high_wavelen =
        (float)((double)cfg->rope_original_max_position / cfg->rope_high_freq_factor);
    float two_pi = (float)(2.0 * M_PI);
    for (int i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        float f = 1.0f / powf(base, e);
        if (cfg->rope_scaling == ROPE_SCALING_LINEAR) {
            f = f / factor;
        } else if (cfg->rope_scaling == ROPE_SCALING_LLAMA3) {
            float wavelen = (1.0f / f) * two_pi;
            float g = wavelen > low_wavelen ? f / factor : f;
            if (!(wavelen < high_wavelen) && !(wavelen > low_wavelen)) {
                float smooth = ((1.0f / wavelen) * old_len - lo) / hi_minus_lo;
                g = (1.0f - smooth) * g / factor + smooth * g;
            }
            f = g;
        }
        inv_freq[i] = f;
    }
}
