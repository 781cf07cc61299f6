/* cmd_model.c — `chordd init-model` (a seeded random-init model directory from a config.json),
 * `chordd score` (per-token log-probs of token-id sequences read as JSON lines on stdin) and
 * `chordd merge-lora` (a LoRA adapter folded into its base, written as a model directory).
 * Thin shells over server/model/model.h and bootstrap.h; no model math lives here. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cmd/commands.h"
#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/model/model.h"
#include "server/train/bootstrap.h"

static void init_usage(FILE *f) {
    fprintf(f, "usage: chordd init-model --config CONFIG.json --seed N --out DIR\n"
               "                         [--dtype f32|bf16|f16] [--max-shard-bytes N]\n\n"
               "Writes DIR/config.json + model.safetensors: a model with Hugging Face's random\n"
               "init (normal(0, initializer_range) weights, zero biases, unit norms), seeded.\n");
}

int cmd_init_model(int argc, char **argv) {
    const char *config_path = NULL, *out_dir = NULL, *dtype_name = "f32";
    long seed = 0, max_shard = 0;
    int have_seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            init_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "chordd init-model: %s needs a value (or is unknown)\n", a);
            init_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--config") == 0)
            config_path = v;
        else if (strcmp(a, "--out") == 0)
            out_dir = v;
        else if (strcmp(a, "--dtype") == 0)
            dtype_name = v;
        else if (strcmp(a, "--seed") == 0) {
            if (cmd_arg_long("--seed", v, 0, 0x7fffffffffffffffL, &seed) != 0) return 2;
            have_seed = 1;
        } else if (strcmp(a, "--max-shard-bytes") == 0) {
            if (cmd_arg_long("--max-shard-bytes", v, 0, 0x7fffffffffffffffL, &max_shard) != 0)
                return 2;
        } else {
            fprintf(stderr, "chordd init-model: unknown option %s\n", a);
            init_usage(stderr);
            return 2;
        }
    }
    if (!config_path || !out_dir || !have_seed) {
        fprintf(stderr, "chordd init-model: --config, --seed and --out are required\n");
        init_usage(stderr);
        return 2;
    }
    st_dtype dtype;
    if (strcmp(dtype_name, "f32") == 0)
        dtype = ST_F32;
    else if (strcmp(dtype_name, "bf16") == 0)
        dtype = ST_BF16;
    else if (strcmp(dtype_name, "f16") == 0)
        dtype = ST_F16;
    else {
        fprintf(stderr, "chordd init-model: --dtype '%s' is not f32, bf16 or f16\n", dtype_name);
        return 2;
    }

    chord_err err = {0};
    char *text = NULL;
    size_t len = 0;
    model_config cfg;
    ops_ctx *ops = NULL;
    model *m = NULL;
    int rc = 1;
    if (chord_read_file(config_path, &text, &len, &err) != 0) goto done;
    if (model_config_parse(text, &cfg, &err) != 0) {
        chord_err_prefix(&err, "%s", config_path);
        goto done;
    }
    char oerr[256] = "";
    ops = ops_open("cpu", 0, oerr, sizeof oerr);
    if (!ops) {
        chord_err_set(&err, "%s", oerr);
        goto done;
    }
    if (model_create(&cfg, ops, &m, &err) != 0) goto done;
    if (model_init_random(m, (uint64_t)seed, &err) != 0) goto done;
    if (model_save(m, out_dir, dtype, (size_t)max_shard, &err) != 0) goto done;
    fprintf(stderr, "chordd init-model: wrote %s (%zu parameters, %s, seed %ld)\n", out_dir,
            m->num_params, dtype_name, seed);
    rc = 0;
done:
    if (rc != 0) fprintf(stderr, "chordd init-model: %s\n", err.msg);
    model_free(m);
    if (ops) ops_close(ops);
    free(text);
    return rc;
}

static void score_usage(FILE *f) {
    fprintf(f, "usage: chordd score --model DIR [--device cpu|cuda|auto] [--threads N]\n\n"
               "Reads one JSON array of token ids per line on stdin; prints, per line, the JSON\n"
               "array of log p(token i | tokens < i) for i = 1..n-1 (temperature 1).\n");
}

/* Parses one line into tokens (malloc'd); errors name the line. Returns n or -1. */
static int parse_ids(const char *line, long lineno, int vocab, int32_t **out) {
    json_error_t jerr;
    json_t *arr = json_loads(line, 0, &jerr);
    *out = NULL;
    if (!arr || !json_is_array(arr)) {
        fprintf(stderr, "chordd score: line %ld: expected a JSON array of token ids%s%s\n", lineno,
                arr ? "" : ": ", arr ? "" : jerr.text);
        json_decref(arr);
        return -1;
    }
    size_t n = json_array_size(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) {
        json_decref(arr);
        fprintf(stderr, "chordd score: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v)) {
            fprintf(stderr, "chordd score: line %ld: element %zu is not an integer token id\n",
                    lineno, i);
            goto bad;
        }
        json_int_t id = json_integer_value(v);
        if (id < 0 || id >= vocab) {
            fprintf(stderr,
                    "chordd score: line %ld: token id %lld at element %zu is out of range "
                    "[0, %d)\n",
                    lineno, (long long)id, i, vocab);
            goto bad;
        }
        ids[i] = (int32_t)id;
    }
    json_decref(arr);
    *out = ids;
    return (int)n;
bad:
    free(ids);
    json_decref(arr);
    return -1;
}

int cmd_score(int argc, char **argv) {
    const char *model_dir = NULL, *device = "cpu";
    long threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            score_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "chordd score: %s needs a value (or is unknown)\n", a);
            score_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--model") == 0)
            model_dir = v;
        else if (strcmp(a, "--device") == 0)
            device = v;
        else if (strcmp(a, "--threads") == 0) {
            if (cmd_arg_long("--threads", v, 0, 4096, &threads) != 0) return 2;
        } else {
            fprintf(stderr, "chordd score: unknown option %s\n", a);
            score_usage(stderr);
            return 2;
        }
    }
    if (!model_dir) {
        fprintf(stderr, "chordd score: --model is required\n");
        score_usage(stderr);
        return 2;
    }
    char oerr[256] = "";
    ops_ctx *ops = ops_open(device, (int)threads, oerr, sizeof oerr);
    if (!ops) {
        fprintf(stderr, "chordd score: %s\n", oerr);
        return 1;
    }
    chord_err err = {0};
    model *m = NULL; /* a model directory, or a LoRA adapter directory over its base */
    if (model_open(model_dir, ops, &m, &err) != 0) {
        fprintf(stderr, "chordd score: %s\n", err.msg);
        ops_close(ops);
        return 1;
    }
    int rc = 0;
    char *line = NULL;
    size_t cap = 0;
    long lineno = 0;
    int32_t *ids = NULL, *buf = NULL;
    float *logp = NULL;
    while (getline(&line, &cap, stdin) >= 0) {
        lineno++;
        size_t k = strspn(line, " \t\r\n");
        if (line[k] == '\0') continue; /* blank line */
        int n = parse_ids(line, lineno, m->cfg.vocab_size, &ids);
        if (n < 0) {
            rc = 1;
            break;
        }
        if (n < 2) {
            printf("[]\n");
            free(ids);
            ids = NULL;
            continue;
        }
        free(buf);
        free(logp);
        buf = malloc((size_t)n * 3 * sizeof *buf + 2 * sizeof *buf);
        logp = malloc((size_t)n * sizeof *logp);
        if (!buf || !logp) {
            fprintf(stderr, "chordd score: line %ld: out of memory\n", lineno);
            rc = 1;
            break;
        }
        int32_t *pos = buf, *tgt = buf + n, *cu = buf + 2 * n;
        for (int i = 0; i < n; i++) {
            pos[i] = i;
            tgt[i] = i + 1 < n ? ids[i + 1] : -1;
        }
        cu[0] = 0;
        cu[1] = n;
        model_batch mb = {
            .N = n, .S = 1, .tokens = ids, .positions = pos, .cu_seqlens = cu, .targets = tgt};
        if (model_forward(m, &mb, 1.0f, logp, NULL, &err) != 0) {
            fprintf(stderr, "chordd score: line %ld: %s\n", lineno, err.msg);
            rc = 1;
            break;
        }
        putchar('[');
        for (int i = 0; i + 1 < n; i++)
            printf(i ? ", %.9g" : "%.9g", (double)logp[i]);
        printf("]\n");
        free(ids);
        ids = NULL;
    }
    fflush(stdout);
    free(ids);
    free(buf);
    free(logp);
    free(line);
    model_free(m);
    ops_close(ops);
    return rc;
}

static void merge_usage(FILE *f) {
    fprintf(f, "usage: chordd merge-lora --adapter DIR --out DIR [--base DIR]\n"
               "                         [--dtype f32|bf16|f16] [--max-shard-bytes N]\n\n"
               "Writes DIR: the base model with the LoRA adapter merged in (W + alpha/r B A), a\n"
               "Hugging Face model directory with the tokenizer. The adapter is a PEFT directory\n"
               "(a LoRA job's checkpoint); its base is --base, else its adapter_config.json's\n"
               "base_model_name_or_path.\n");
}

int cmd_merge_lora(int argc, char **argv) {
    const char *adapter = NULL, *out_dir = NULL, *base = NULL, *dtype_name = "f32";
    long max_shard = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            merge_usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "chordd merge-lora: %s needs a value (or is unknown)\n", a);
            merge_usage(stderr);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--adapter") == 0)
            adapter = v;
        else if (strcmp(a, "--out") == 0)
            out_dir = v;
        else if (strcmp(a, "--base") == 0)
            base = v;
        else if (strcmp(a, "--dtype") == 0)
            dtype_name = v;
        else if (strcmp(a, "--max-shard-bytes") == 0) {
            if (cmd_arg_long("--max-shard-bytes", v, 0, 0x7fffffffffffffffL, &max_shard) != 0)
                return 2;
        } else {
            fprintf(stderr, "chordd merge-lora: unknown option %s\n", a);
            merge_usage(stderr);
            return 2;
        }
    }
    if (!adapter || !out_dir) {
        fprintf(stderr, "chordd merge-lora: --adapter and --out are required\n");
        merge_usage(stderr);
        return 2;
    }
    st_dtype dtype = ST_F32;
    if (strcmp(dtype_name, "bf16") == 0)
        dtype = ST_BF16;
    else if (strcmp(dtype_name, "f16") == 0)
        dtype = ST_F16;
    else if (strcmp(dtype_name, "f32") != 0) {
        fprintf(stderr, "chordd merge-lora: --dtype '%s' is not f32, bf16 or f16\n", dtype_name);
        return 2;
    }
    chord_err err = {0};
    char oerr[256] = "";
    ops_ctx *ops = ops_open("cpu", 0, oerr, sizeof oerr);
    if (!ops) {
        fprintf(stderr, "chordd merge-lora: %s\n", oerr);
        return 1;
    }
    bootstrap_spec spec = {.dir = base ? base : adapter};
    bootstrap_model b;
    int rc = 1;
    if (bootstrap_open(&spec, ops, &b, &err) != 0) goto done_ops;
    if (base && model_lora_load(b.m, adapter, &err) != 0) goto done;
    if (!b.m->lora) {
        chord_err_set(&err, "%s is not a LoRA adapter directory (no adapter_config.json)", adapter);
        goto done;
    }
    if (model_save_merged(b.m, out_dir, dtype, (size_t)max_shard, &err) != 0) goto done;
    if (tok_save(b.tok, out_dir, &err) != 0) goto done;
    fprintf(stderr, "chordd merge-lora: wrote %s (%zu parameters, %s)\n", out_dir, b.m->num_params,
            dtype_name);
    rc = 0;
done:
    bootstrap_close(&b);
done_ops:
    if (rc != 0) fprintf(stderr, "chordd merge-lora: %s\n", err.msg);
    ops_close(ops);
    return rc;
}
