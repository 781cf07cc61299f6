/* tinker_pb.h — the Tinker client's protobuf messages (api/proto/tinker.proto, package
 * tinker_public) to and from chord's transport-neutral Tinker data (server/tinker/tinker_types.h):
 * a forward_backward request in, its ForwardBackwardOutput and a SampleResponse out.
 *
 * What the decoder accepts: text model inputs (encoded_text chunks, concatenated); tensors dense
 * or sparse CSR (densified with pad 0), 1-D or 2-D, FLOAT32 / BFLOAT16 (as float) and INT64 /
 * INT32 (as int64). Image and dmel chunks are refused; provenance spans are read past. Every
 * length, shape and count is checked; malformed input fails with CHORD_E_INVALID and a message
 * naming the field ("data[2].loss_fn_inputs.weights: ..."). Allocations are bounded by the size of
 * the message (a constant factor plus a fixed slack): too much fails with CHORD_E_TOO_LARGE.
 *
 * Not here: whether the inputs fit the loss or the model (the service checks that), HTTP. */
#ifndef CHORD_API_TINKER_PB_H
#define CHORD_API_TINKER_PB_H

#include <stddef.h>
#include <stdint.h>

#include "server/base/err.h"
#include "server/tinker/tinker_types.h"

/* Decodes a ForwardBackwardRequest from buf[0..len) into *out (zeroed first; on failure left
 * empty). 0, or -1 with err set. The caller frees *out with tk_fb_request_free. */
int tk_pb_decode_fb_request(const uint8_t *buf, size_t len, tk_fb_request *out, chord_err *err);

/* Encodes o as a ForwardBackwardOutput: one ArrayRecord of o->n_data datums with the FLOAT32
 * fields "logprobs" and (when o->elementwise_loss is not NULL) "elementwise_loss", and the
 * metrics. *buf is malloc'd (the caller frees it). 0, or -1 with err set (CHORD_E_INTERNAL for a
 * malformed o, e.g. a metric key that is not "name:reduction"). */
int tk_pb_encode_fb_output(const tk_fb_output *o, uint8_t **buf, size_t *len, chord_err *err);

/* Encodes r as a SampleResponse: per sequence int32 tokens, float32 logprobs and the stop
 * reason; prompt_logprobs only when r->prompt_logprobs is not NULL. *buf is malloc'd. 0, or -1. */
int tk_pb_encode_sample_response(const tk_sample_response *r, uint8_t **buf, size_t *len,
                                 chord_err *err);

#endif
