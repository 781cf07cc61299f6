/* tinker_types.c — freeing the Tinker API's data (tinker_types.h). */
#include "server/tinker/tinker_types.h"

#include <stdlib.h>
#include <string.h>

void tk_tensor_free(tk_tensor *t) {
    if (!t) return;
    free(t->f32);
    free(t->i64);
    memset(t, 0, sizeof *t);
}

void tk_datum_free(tk_datum *d) {
    if (!d) return;
    for (int i = 0; i < d->n_inputs; i++) {
        free(d->input_names ? d->input_names[i] : NULL);
        if (d->inputs) tk_tensor_free(&d->inputs[i]);
    }
    free(d->input_names);
    free(d->inputs);
    free(d->tokens);
    memset(d, 0, sizeof *d);
}

void tk_fb_request_free(tk_fb_request *r) {
    if (!r) return;
    free(r->model_id);
    free(r->loss_fn);
    for (int i = 0; i < r->n_config; i++) {
        free(r->config[i].key);
        free(r->config[i].text);
    }
    free(r->config);
    for (size_t i = 0; i < r->n_data; i++) tk_datum_free(&r->data[i]);
    free(r->data);
    memset(r, 0, sizeof *r);
}

void tk_fb_output_free(tk_fb_output *o) {
    if (!o) return;
    for (size_t i = 0; i < o->n_data; i++) {
        if (o->logprobs) free(o->logprobs[i]);
        if (o->elementwise_loss) free(o->elementwise_loss[i]);
    }
    free(o->logprobs);
    free(o->elementwise_loss);
    free(o->lens);
    for (int i = 0; i < o->n_metrics; i++) free(o->metric_keys[i]);
    free(o->metric_keys);
    free(o->metric_values);
    memset(o, 0, sizeof *o);
}

void tk_sample_response_free(tk_sample_response *r) {
    if (!r) return;
    for (size_t i = 0; i < r->n_seqs; i++) {
        free(r->seqs[i].tokens);
        free(r->seqs[i].logprobs);
    }
    free(r->seqs);
    free(r->prompt_logprobs);
    memset(r, 0, sizeof *r);
}

const tk_tensor *tk_datum_input(const tk_datum *d, const char *name) {
    for (int i = 0; i < d->n_inputs; i++)
        if (!strcmp(d->input_names[i], name)) return &d->inputs[i];
    return NULL;
}
