/* st_tool.c — a command-line door into chord's model I/O for the Python reference tests
 * (tests/reference/io_*.py): they write files with the safetensors / transformers libraries,
 * let chord read, convert or rewrite them through this tool, and compare with Python's reading.
 * It is a test helper, not a user tool: no option parsing beyond what the tests need.
 *
 *   st_tool list PATH                  one line per tensor: name dtype d0,d1,...
 *   st_tool dump PATH OUT.bin          every tensor as float32, in name order, into OUT.bin;
 *                                      the listing (name dtype shape) on stdout
 *   st_tool convert IN OUT DTYPE [SHARD_BYTES [ORDER_FILE]]
 *                                      reads IN with chord, writes OUT (a .safetensors file, or a
 *                                      directory via st_writer_save_dir) as f32|bf16|f16; tensors
 *                                      are added in ORDER_FILE's order (one name a line) if given
 *   st_tool check PATH                 exit 0, or print chord's error and exit 1
 *   st_tool config DIR                 DIR/config.json parsed; fields, num_params, inv_freq as JSON
 *   st_tool config-save IN_DIR OUT_DIR parse IN_DIR/config.json, write OUT_DIR/config.json
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/model/config.h"
#include "server/model/safetensors.h"

static int fail(const chord_err *err) {
    fprintf(stderr, "error: %s\n", err->msg);
    return 1;
}

static void print_info(const st_tensor_info *t) {
    printf("%s %s ", t->name, st_dtype_name(t->dtype));
    for (int d = 0; d < t->ndim; d++)
        printf(d ? ",%lld" : "%lld", (long long)t->shape[d]);
    printf("\n");
}

static int cmd_list(const char *path, const char *out_bin) {
    chord_err err = {0};
    st_reader *r;
    if (st_open(path, &r, &err)) return fail(&err);
    FILE *out = NULL;
    if (out_bin && !(out = fopen(out_bin, "wb"))) {
        perror(out_bin);
        st_close(r);
        return 1;
    }
    int rc = 0;
    for (int i = 0; i < st_count(r) && rc == 0; i++) {
        const st_tensor_info *t = st_get(r, i);
        print_info(t);
        if (!out) continue;
        float *buf = malloc((t->numel ? t->numel : 1) * sizeof *buf);
        if (!buf || st_read_f32(r, t->name, buf, t->shape, t->ndim, &err) ||
            fwrite(buf, sizeof *buf, t->numel, out) != t->numel) {
            rc = buf ? fail(&err) : 1;
        }
        free(buf);
    }
    if (out && fclose(out) != 0) rc = 1;
    st_close(r);
    return rc;
}

static int parse_dtype(const char *s, st_dtype *d) {
    if (strcmp(s, "f32") == 0)
        *d = ST_F32;
    else if (strcmp(s, "bf16") == 0)
        *d = ST_BF16;
    else if (strcmp(s, "f16") == 0)
        *d = ST_F16;
    else
        return -1;
    return 0;
}

static int cmd_convert(const char *in, const char *out, const char *dtype_name,
                       const char *shard_bytes, const char *order_file) {
    chord_err err = {0};
    st_dtype dtype;
    if (parse_dtype(dtype_name, &dtype)) {
        fprintf(stderr, "dtype must be f32, bf16 or f16\n");
        return 1;
    }
    st_reader *r;
    if (st_open(in, &r, &err)) return fail(&err);
    int n = st_count(r);
    const char **names = calloc((size_t)(n ? n : 1), sizeof *names);
    float **bufs = calloc((size_t)(n ? n : 1), sizeof *bufs);
    char *order = NULL;
    int rc = names && bufs ? 0 : 1;
    int k = 0;
    if (rc == 0 && order_file) {
        if (chord_read_file(order_file, &order, NULL, &err)) {
            rc = fail(&err);
        } else {
            for (char *line = strtok(order, "\n"); line && k < n; line = strtok(NULL, "\n"))
                if (line[0]) names[k++] = line;
            if (k != n) {
                fprintf(stderr, "%s lists %d names, the checkpoint holds %d\n", order_file, k, n);
                rc = 1;
            }
        }
    } else if (rc == 0) {
        for (k = 0; k < n; k++)
            names[k] = st_get(r, k)->name;
    }
    st_writer *w = st_writer_new();
    if (!w) rc = 1;
    for (int i = 0; i < n && rc == 0; i++) {
        const st_tensor_info *t = st_find(r, names[i]);
        if (!t) {
            fprintf(stderr, "%s: not in %s\n", names[i], in);
            rc = 1;
            break;
        }
        bufs[i] = malloc((t->numel ? t->numel : 1) * sizeof(float));
        if (!bufs[i] || st_read_f32(r, t->name, bufs[i], NULL, 0, &err) ||
            st_writer_add(w, t->name, bufs[i], t->shape, t->ndim, dtype, &err))
            rc = fail(&err);
    }
    if (rc == 0) {
        size_t len = strlen(out);
        int is_file = len > 12 && strcmp(out + len - 12, ".safetensors") == 0;
        if (is_file ? st_writer_save(w, out, &err)
                    : st_writer_save_dir(w, out, shard_bytes ? strtoull(shard_bytes, NULL, 10) : 0,
                                         &err))
            rc = fail(&err);
    }
    st_writer_free(w);
    for (int i = 0; bufs && i < n; i++)
        free(bufs[i]);
    free(bufs);
    free(names);
    free(order);
    st_close(r);
    return rc;
}

static int cmd_check(const char *path) {
    chord_err err = {0};
    st_reader *r;
    if (st_open(path, &r, &err)) return fail(&err);
    st_close(r);
    printf("ok\n");
    return 0;
}

static int cmd_config(const char *dir) {
    chord_err err = {0};
    model_config c;
    if (model_config_load(dir, &c, &err)) return fail(&err);
    printf("{\"model_type\": \"%s\", \"architecture\": \"%s\", \"vocab_size\": %d, "
           "\"hidden_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
           "\"num_key_value_heads\": %d, \"head_dim\": %d, \"intermediate_size\": %d, "
           "\"max_position_embeddings\": %d, \"rope_theta\": %.17g, \"rms_norm_eps\": %.17g, "
           "\"tie_word_embeddings\": %d, \"attention_bias\": %d, \"o_proj_bias\": %d, "
           "\"mlp_bias\": %d, \"qk_norm\": %d, \"rope_scaling\": %d, \"bos_token_id\": %d, "
           "\"pad_token_id\": %d, \"eos_token_ids\": [",
           c.model_type, c.architecture, c.vocab_size, c.hidden_size, c.num_hidden_layers,
           c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size,
           c.max_position_embeddings, c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings,
           c.attention_bias, c.o_proj_bias, c.mlp_bias, c.qk_norm, (int)c.rope_scaling,
           c.bos_token_id, c.pad_token_id);
    for (int i = 0; i < c.n_eos; i++)
        printf(i ? ", %d" : "%d", c.eos_token_ids[i]);
    printf("], \"num_params\": %zu, \"inv_freq\": [", model_config_num_params(&c));
    float *inv = malloc((size_t)(c.head_dim / 2 + 1) * sizeof *inv);
    if (!inv) return 1;
    model_config_rope_inv_freq(&c, inv);
    for (int i = 0; i < c.head_dim / 2; i++)
        printf(i ? ", %.9g" : "%.9g", inv[i]);
    printf("]}\n");
    free(inv);
    return 0;
}

static int cmd_config_save(const char *in, const char *out) {
    chord_err err = {0};
    model_config c;
    if (model_config_load(in, &c, &err) || chord_mkdirs(out, &err) ||
        model_config_save(&c, out, &err))
        return fail(&err);
    return 0;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "list") == 0) return cmd_list(argv[2], NULL);
    if (argc >= 4 && strcmp(argv[1], "dump") == 0) return cmd_list(argv[2], argv[3]);
    if (argc >= 5 && strcmp(argv[1], "convert") == 0)
        return cmd_convert(argv[2], argv[3], argv[4], argc > 5 ? argv[5] : NULL,
                           argc > 6 ? argv[6] : NULL);
    if (argc >= 3 && strcmp(argv[1], "check") == 0) return cmd_check(argv[2]);
    if (argc >= 3 && strcmp(argv[1], "config") == 0) return cmd_config(argv[2]);
    if (argc >= 4 && strcmp(argv[1], "config-save") == 0) return cmd_config_save(argv[2], argv[3]);
    fprintf(stderr,
            "usage: st_tool list|dump|convert|check|config|config-save ... (see st_tool.c)\n");
    return 2;
}
