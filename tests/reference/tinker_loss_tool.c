/* tinker_loss_tool.c — the small driver tests/reference/tinker_loss_reference.py runs: the
 * Tinker losses (server/tinker/tinker_loss.h) on the Python side's random datums.
 *
 * Reads {"cases": [...]} on stdin, writes {"results": [...]} on stdout, one result per case:
 *   {"loss": "ppo", "config": {"key": number, ...},
 *    "data": [{"lp": [...], "weights"?: [...], "logprobs"?: [...], "advantages"?: [...]}, ...]}
 *      → {"elementwise": [[...], ...], "dlp": [[...], ...], "metrics": {"loss:sum": x, ...}}
 * or {"error": "..."} when parsing or a check refuses. lp are the model's log-probs of the
 * targets (target_tokens are all 0, the vocabulary 1); a value given as the text "nan" is a
 * NaN (JSON has none). It holds no reference numbers. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/tinker/tinker_loss.h"

static float *floats(const json_t *arr) {
    size_t n = json_array_size(arr);
    float *out = malloc((n ? n : 1) * sizeof *out);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_array_get(arr, i); /* JSON has no NaN: the text "nan" is one */
        out[i] = json_is_string(v) ? NAN : (float)json_number_value(v);
    }
    return out;
}

static json_t *float_array(const float *x, size_t n) {
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, json_real(x[i]));
    return arr;
}

/* Datum i of the case: target_tokens (all 0) and the float inputs the JSON gives. */
static int build_datum(const json_t *jd, tk_datum *d) {
    static const char *const names[] = {"weights", "logprobs", "advantages"};
    size_t n = json_array_size(json_object_get(jd, "lp"));
    memset(d, 0, sizeof *d);
    d->n_tokens = n;
    d->tokens = calloc(n ? n : 1, sizeof *d->tokens);
    d->input_names = calloc(4, sizeof *d->input_names);
    d->inputs = calloc(4, sizeof *d->inputs);
    if (!d->tokens || !d->input_names || !d->inputs) return -1;
    d->input_names[0] = strdup("target_tokens");
    d->inputs[0] =
        (tk_tensor){TK_I64, 1, {(int64_t)n, 0}, n, NULL, calloc(n ? n : 1, sizeof(int64_t))};
    d->n_inputs = 1;
    if (!d->input_names[0] || !d->inputs[0].i64) return -1;
    for (int k = 0; k < 3; k++) {
        const json_t *arr = json_object_get(jd, names[k]);
        if (!arr) continue;
        size_t m = json_array_size(arr);
        d->input_names[d->n_inputs] = strdup(names[k]);
        d->inputs[d->n_inputs] = (tk_tensor){TK_F32, 1, {(int64_t)m, 0}, m, floats(arr), NULL};
        if (!d->input_names[d->n_inputs] || !d->inputs[d->n_inputs].f32) return -1;
        d->n_inputs++;
    }
    return 0;
}

static json_t *run_case(const json_t *c, chord_err *err) {
    const json_t *jc = json_object_get(c, "config");
    tk_config_value cfg[8];
    int n_cfg = 0;
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)jc, key, value) {
        if (n_cfg == 8) break;
        cfg[n_cfg++] =
            (tk_config_value){(char *)key, json_number_value(value),
                              json_is_string(value) ? (char *)json_string_value(value) : NULL};
    }
    tk_loss_config lc;
    if (tk_loss_parse(json_string_value(json_object_get(c, "loss")), cfg, n_cfg, &lc, err))
        return NULL;
    const json_t *data = json_object_get(c, "data");
    json_t *el_all = json_array(), *dlp_all = json_array(), *result = NULL;
    tk_loss_stats st = {0};
    tk_fb_output o = {0};
    for (size_t i = 0; i < json_array_size(data); i++) {
        const json_t *jd = json_array_get(data, i);
        tk_datum d = {0};
        float *lp = floats(json_object_get(jd, "lp"));
        size_t n = json_array_size(json_object_get(jd, "lp"));
        float *el = malloc((n ? n : 1) * sizeof *el), *dlp = malloc((n ? n : 1) * sizeof *dlp);
        int ok = lp && el && dlp && build_datum(jd, &d) == 0;
        if (!ok) chord_err_set(err, "out of memory");
        if (ok && tk_loss_check(&lc, &d, i, 1, err) == 0) {
            tk_loss_datum(&lc, &d, lp, n, el, dlp, &st);
            json_array_append_new(el_all, float_array(el, n));
            json_array_append_new(dlp_all, float_array(dlp, n));
        } else {
            ok = 0;
        }
        tk_datum_free(&d);
        free(lp);
        free(el);
        free(dlp);
        if (!ok) goto done;
    }
    if (tk_loss_metrics(&lc, &st, &o, err)) goto done;
    json_t *metrics = json_object();
    for (int i = 0; i < o.n_metrics; i++)
        json_object_set_new(metrics, o.metric_keys[i], json_real(o.metric_values[i]));
    result = json_pack("{s:O,s:O,s:o}", "elementwise", el_all, "dlp", dlp_all, "metrics", metrics);
done:
    tk_fb_output_free(&o);
    json_decref(el_all);
    json_decref(dlp_all);
    return result;
}

int main(void) {
    json_error_t jerr;
    json_t *doc = json_loadf(stdin, 0, &jerr);
    if (!doc) {
        fprintf(stderr, "tinker_loss_tool: bad input at line %d: %s\n", jerr.line, jerr.text);
        return 2;
    }
    json_t *cases = json_object_get(doc, "cases"), *results = json_array();
    for (size_t i = 0; i < json_array_size(cases); i++) {
        chord_err err = {0};
        json_t *r = run_case(json_array_get(cases, i), &err);
        if (!r) r = json_pack("{s:s}", "error", err.msg);
        json_array_append_new(results, r);
    }
    json_t *out = json_pack("{s:o}", "results", results);
    json_dumpf(out, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    json_decref(out);
    json_decref(doc);
    return 0;
}
