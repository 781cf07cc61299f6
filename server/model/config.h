/* config.h — a Llama/Qwen2/Qwen3-family model configuration, read from and written to a
 * Hugging Face `config.json`. Validation names the bad field; nothing here touches weights. */
#ifndef CHORD_MODEL_CONFIG_H
#define CHORD_MODEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"

#define MODEL_MAX_EOS 8

typedef enum { ROPE_SCALING_NONE = 0, ROPE_SCALING_LINEAR, ROPE_SCALING_LLAMA3 } rope_scaling_type;

typedef struct model_config {
    char model_type[32];    /* "llama", "qwen2" or "qwen3" */
    char architecture[64];  /* "LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM" */
    int vocab_size;
    int hidden_size;        /* C */
    int num_hidden_layers;  /* L */
    int num_attention_heads;   /* Hq */
    int num_key_value_heads;   /* Hkv (defaults to Hq) */
    int head_dim;           /* D (defaults to hidden_size / num_attention_heads) */
    int intermediate_size;  /* I */
    int max_position_embeddings;
    double rope_theta;
    double rms_norm_eps;
    int tie_word_embeddings;
    int attention_bias;     /* q/k/v projections carry a bias (Qwen2 true; Llama attention_bias) */
    int o_proj_bias;        /* o_proj carries a bias (Llama attention_bias: true; Qwen2 false) */
    int mlp_bias;           /* Llama mlp_bias */
    int qk_norm;            /* Qwen3: RMSNorm over each head of q and k before RoPE */
    rope_scaling_type rope_scaling;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int rope_original_max_position;
    double initializer_range;
    int bos_token_id;       /* -1 when absent */
    int eos_token_ids[MODEL_MAX_EOS];
    int n_eos;
    int pad_token_id;       /* -1 when absent */
    char torch_dtype[16];   /* as read ("float32", "bfloat16", ...); written back as given */
} model_config;

/* Parses config.json text. Missing optional fields take Hugging Face's defaults; missing
 * required ones, wrong types, zero/negative sizes, heads that do not divide, or an unsupported
 * model_type give an error naming the field. */
int model_config_parse(const char *json_text, model_config *cfg, chord_err *err);
/* Same, from an already parsed JSON object (a jansson json_t *), e.g. a request's
 * {"init": {"config": {...}}}. */
struct json_t;
int model_config_from_json(const struct json_t *root, model_config *cfg, chord_err *err);
/* Reads DIR/config.json (a LoRA adapter directory: its base's, model_config_adapter_base). */
int model_config_load(const char *dir, model_config *cfg, chord_err *err);
/* A PEFT LoRA adapter directory (adapter_config.json and no config.json: a LoRA job's
 * checkpoint): 1 with its base (base_model_name_or_path, which must be a directory) copied into
 * base (n bytes); 0 for any other directory; -1 with err. model_config_load of an adapter reads
 * its base's config. */
int model_config_adapter_base(const char *dir, char *base, size_t n, chord_err *err);
/* A Hugging Face config.json for cfg (malloc'd, NUL-terminated) that transformers loads. */
char *model_config_to_json(const model_config *cfg);
/* The same as a new jansson object (caller json_decref's it); NULL when out of memory. */
struct json_t *model_config_to_json_object(const model_config *cfg);
/* Writes DIR/config.json atomically. */
int model_config_save(const model_config *cfg, const char *dir, chord_err *err);
/* Total parameter count. */
size_t model_config_num_params(const model_config *cfg);
/* inv_freq (head_dim/2) as transformers computes it, rope_scaling included (fp32). */
void model_config_rope_inv_freq(const model_config *cfg, float *inv_freq);

#endif
