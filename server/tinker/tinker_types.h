/* tinker_types.h — the data of the Tinker-compatible training API (docs/tinker.md) as the
 * service sees it, transport-neutral: what a forward_backward request carries (datums of token
 * ids and named tensors, a loss and its config) and what it and a sample request answer.
 * api/tinker/tinker_pb.h turns these into and from the client's protobuf messages; the service
 * (server/tinker/tinker.h) and the losses (tinker_loss.h) read and fill them.
 *
 * Every array is host memory owned by the struct (freed by the matching _free). */
#ifndef CHORD_TINKER_TYPES_H
#define CHORD_TINKER_TYPES_H

#include <stddef.h>
#include <stdint.h>

/* A tensor of loss_fn_inputs: dense, row-major; float32 or int64 (the client sends only those;
 * bfloat16 arrives widened to float32, int32 to int64). */
typedef enum tk_dtype { TK_F32 = 1, TK_I64 = 2 } tk_dtype;

typedef struct tk_tensor {
    tk_dtype dtype;
    int ndim;         /* 1 or 2 */
    int64_t shape[2]; /* shape[0] = the datum's length for every input chord takes */
    size_t n;         /* elements: the product of the shape */
    float *f32;       /* n values when dtype is TK_F32, else NULL */
    int64_t *i64;     /* n values when dtype is TK_I64, else NULL */
} tk_tensor;

/* One datum: the model input (its encoded_text chunks concatenated) and its loss inputs by
 * name ("target_tokens", "weights", "logprobs", "advantages", ...). */
typedef struct tk_datum {
    int32_t *tokens;
    size_t n_tokens;
    char **input_names;
    tk_tensor *inputs;
    int n_inputs;
} tk_datum;

/* A loss config value: a number, or a text (loss_fn_config_v2's text values). */
typedef struct tk_config_value {
    char *key;
    double number;
    char *text; /* NULL for a number */
} tk_config_value;

typedef struct tk_fb_request {
    char *model_id;
    int32_t seq_id;
    char *loss_fn; /* "cross_entropy", "importance_sampling", "ppo", "cispo", "chord", ... */
    int forward_only;
    tk_config_value *config; /* loss_fn_config_v2 when present, else loss_fn_config */
    int n_config;
    tk_datum *data;
    size_t n_data;
} tk_fb_request;

/* What a forward_backward answers: per datum, the model's log-probs of its target tokens (one
 * per position) and the loss per position; metrics "name:reduction" (exactly one colon). */
typedef struct tk_fb_output {
    size_t n_data;
    float **logprobs;         /* n_data arrays of lens[i] */
    float **elementwise_loss; /* n_data arrays of lens[i] (may be NULL: not sent) */
    size_t *lens;
    char **metric_keys;
    double *metric_values;
    int n_metrics;
} tk_fb_output;

enum { TK_STOP_REASON_STOP = 0, TK_STOP_REASON_LENGTH = 1 };

typedef struct tk_sampled {
    int stop_reason; /* TK_STOP_REASON_* */
    int32_t *tokens;
    float *logprobs; /* one per token */
    size_t n;
} tk_sampled;

typedef struct tk_sample_response {
    tk_sampled *seqs;
    size_t n_seqs;
    float *prompt_logprobs; /* n_prompt values, NaN at position 0; NULL when not requested */
    size_t n_prompt;
} tk_sample_response;

void tk_tensor_free(tk_tensor *t);
void tk_datum_free(tk_datum *d);
void tk_fb_request_free(tk_fb_request *r);
void tk_fb_output_free(tk_fb_output *o);
void tk_sample_response_free(tk_sample_response *r);
/* The input named name of d, or NULL. */
const tk_tensor *tk_datum_input(const tk_datum *d, const char *name);

#endif
