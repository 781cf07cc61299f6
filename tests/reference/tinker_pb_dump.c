/* tinker_pb_dump.c — the Tinker protobuf codec (api/tinker/tinker_pb.h) driven from stdin, for
 * tests/reference/tinker_pb_reference.py, which compares it with the real client's code.
 *
 *   tinker_pb_dump decode          ForwardBackwardRequest bytes in, JSON of tk_fb_request out
 *                                  ({"error": msg, "code": n} when refused)
 *   tinker_pb_dump encode_fb       JSON {"logprobs": [[..], ..], "elementwise_loss": [[..], ..] |
 *                                  null, "metrics": {key: value}} in, ForwardBackwardOutput bytes
 * out tinker_pb_dump encode_sample   JSON {"sequences": [{"tokens", "logprobs" | null,
 *                                  "stop_reason": 0 | 1}], "prompt_logprobs": [..] | null} in,
 *                                  SampleResponse bytes out
 *
 * Non-finite floats travel in JSON as the strings "nan", "inf" and "-inf" (JSON has no NaN);
 * null inside prompt_logprobs is NaN too. A text config value is written {"text": value}. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/tinker/tinker_pb.h"

static _Noreturn void die(const char *what) {
    fprintf(stderr, "tinker_pb_dump: %s\n", what);
    exit(1);
}

static uint8_t *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            uint8_t *grown = realloc(buf, cap *= 2);
            if (!grown) {
                free(buf);
                return NULL;
            }
            buf = grown;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (!got) break;
    }
    *len = n;
    return buf;
}

static json_t *float_json(double v) {
    if (isnan(v)) return json_string("nan");
    if (isinf(v)) return json_string(v > 0 ? "inf" : "-inf");
    return json_real(v);
}

static double json_float(const json_t *v) {
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        if (!strcmp(s, "inf")) return INFINITY;
        if (!strcmp(s, "-inf")) return -INFINITY;
        return NAN;
    }
    if (json_is_null(v)) return NAN;
    return json_number_value(v);
}

static json_t *tensor_json(const tk_tensor *t) {
    json_t *shape = json_array(), *data = json_array();
    for (int i = 0; i < t->ndim; i++)
        json_array_append_new(shape, json_integer(t->shape[i]));
    for (size_t i = 0; i < t->n; i++)
        json_array_append_new(data,
                              t->dtype == TK_F32 ? float_json(t->f32[i]) : json_integer(t->i64[i]));
    return json_pack("{s:s, s:o, s:o}", "dtype", t->dtype == TK_F32 ? "float32" : "int64", "shape",
                     shape, "data", data);
}

static int decode(void) {
    size_t len;
    uint8_t *buf = read_all(stdin, &len);
    if (!buf) return 1;
    tk_fb_request r;
    chord_err err = {0};
    json_t *out;
    if (tk_pb_decode_fb_request(buf, len, &r, &err)) {
        out = json_pack("{s:s, s:i}", "error", err.msg, "code", err.code);
    } else {
        json_t *config = json_object(), *data = json_array();
        for (int i = 0; i < r.n_config; i++)
            json_object_set_new(config, r.config[i].key,
                                r.config[i].text ? json_pack("{s:s}", "text", r.config[i].text)
                                                 : float_json(r.config[i].number));
        for (size_t i = 0; i < r.n_data; i++) {
            const tk_datum *d = &r.data[i];
            json_t *tokens = json_array(), *inputs = json_object();
            for (size_t k = 0; k < d->n_tokens; k++)
                json_array_append_new(tokens, json_integer(d->tokens[k]));
            for (int k = 0; k < d->n_inputs; k++)
                json_object_set_new(inputs, d->input_names[k], tensor_json(&d->inputs[k]));
            json_array_append_new(
                data, json_pack("{s:o, s:o}", "tokens", tokens, "loss_fn_inputs", inputs));
        }
        out = json_pack("{s:s, s:i, s:s, s:b, s:o, s:o}", "model_id", r.model_id, "seq_id",
                        r.seq_id, "loss_fn", r.loss_fn, "forward_only", r.forward_only, "config",
                        config, "data", data);
        tk_fb_request_free(&r);
    }
    free(buf);
    if (!out) return 1;
    int rc = json_dumpf(out, stdout, JSON_COMPACT) ? 1 : 0;
    json_decref(out);
    return rc;
}

/* A JSON array of numbers as malloc'd floats (NULL for an empty array: *n = 0). */
static float *float_array(const json_t *a, size_t *n) {
    *n = json_array_size(a);
    float *v = malloc((*n ? *n : 1) * sizeof *v);
    if (!v) die("out of memory");
    for (size_t i = 0; i < *n; i++)
        v[i] = (float)json_float(json_array_get(a, i));
    return v;
}

static int write_bytes(uint8_t *buf, size_t len) {
    int rc = fwrite(buf, 1, len, stdout) == len ? 0 : 1;
    free(buf);
    return rc;
}

static int encode_fb(const json_t *in) {
    const json_t *logprobs = json_object_get(in, "logprobs");
    const json_t *losses = json_object_get(in, "elementwise_loss");
    const json_t *metrics = json_object_get(in, "metrics");
    tk_fb_output o = {0};
    o.n_data = json_array_size(logprobs);
    o.logprobs = calloc(o.n_data + 1, sizeof *o.logprobs);
    o.lens = calloc(o.n_data + 1, sizeof *o.lens);
    if (json_is_array(losses))
        o.elementwise_loss = calloc(o.n_data + 1, sizeof *o.elementwise_loss);
    if (!o.logprobs || !o.lens) die("out of memory");
    for (size_t i = 0; i < o.n_data; i++) {
        o.logprobs[i] = float_array(json_array_get(logprobs, i), &o.lens[i]);
        if (o.elementwise_loss) {
            size_t n;
            o.elementwise_loss[i] = float_array(json_array_get(losses, i), &n);
            if (n != o.lens[i]) die("elementwise_loss and logprobs differ in length");
        }
    }
    o.n_metrics = (int)json_object_size(metrics);
    o.metric_keys = calloc((size_t)o.n_metrics + 1, sizeof *o.metric_keys);
    o.metric_values = calloc((size_t)o.n_metrics + 1, sizeof *o.metric_values);
    if (!o.metric_keys || !o.metric_values) die("out of memory");
    const char *key;
    json_t *value;
    int m = 0;
    json_object_foreach((json_t *)metrics, key, value) {
        o.metric_keys[m] = strdup(key);
        o.metric_values[m++] = json_float(value);
    }
    uint8_t *buf;
    size_t len;
    chord_err err = {0};
    int rc = tk_pb_encode_fb_output(&o, &buf, &len, &err);
    tk_fb_output_free(&o);
    if (rc) {
        fprintf(stderr, "encode_fb: %s\n", err.msg);
        return 1;
    }
    return write_bytes(buf, len);
}

static int encode_sample(const json_t *in) {
    const json_t *seqs = json_object_get(in, "sequences");
    const json_t *prompt = json_object_get(in, "prompt_logprobs");
    tk_sample_response r = {0};
    r.n_seqs = json_array_size(seqs);
    r.seqs = calloc(r.n_seqs + 1, sizeof *r.seqs);
    if (!r.seqs) die("out of memory");
    for (size_t i = 0; i < r.n_seqs; i++) {
        const json_t *s = json_array_get(seqs, i);
        const json_t *tokens = json_object_get(s, "tokens"), *lp = json_object_get(s, "logprobs");
        tk_sampled *q = &r.seqs[i];
        q->stop_reason = (int)json_integer_value(json_object_get(s, "stop_reason"));
        q->n = json_array_size(tokens);
        q->tokens = malloc((q->n + 1) * sizeof *q->tokens);
        if (!q->tokens) die("out of memory");
        for (size_t k = 0; k < q->n; k++)
            q->tokens[k] = (int32_t)json_integer_value(json_array_get(tokens, k));
        if (json_is_array(lp)) {
            size_t n;
            q->logprobs = float_array(lp, &n);
            if (n != q->n) die("logprobs and tokens differ in length");
        }
    }
    if (json_is_array(prompt)) r.prompt_logprobs = float_array(prompt, &r.n_prompt);
    uint8_t *buf;
    size_t len;
    chord_err err = {0};
    int rc = tk_pb_encode_sample_response(&r, &buf, &len, &err);
    tk_sample_response_free(&r);
    if (rc) {
        fprintf(stderr, "encode_sample: %s\n", err.msg);
        return 1;
    }
    return write_bytes(buf, len);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tinker_pb_dump decode|encode_fb|encode_sample < input\n");
        return 2;
    }
    if (!strcmp(argv[1], "decode")) return decode();
    json_error_t jerr;
    json_t *in = json_loadf(stdin, 0, &jerr);
    if (!in) {
        fprintf(stderr, "bad JSON: %s\n", jerr.text);
        return 2;
    }
    int rc = !strcmp(argv[1], "encode_fb")       ? encode_fb(in)
             : !strcmp(argv[1], "encode_sample") ? encode_sample(in)
                                                 : 2;
    json_decref(in);
    return rc;
}
