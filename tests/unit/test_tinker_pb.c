/* test_tinker_pb.c — the Tinker protobuf codec (api/tinker/tinker_pb.c): requests built with the
 * generated protobuf-c API decode to the values put in (text chunks concatenated, every dtype
 * widened, sparse CSR densified, config v2 preferred); malformed ones fail with CHORD_E_INVALID
 * (or TOO_LARGE) and a message naming the field; the two results pack into messages that unpack
 * to the same values. tests/reference/tinker_pb_reference.py checks the same against the real
 * client's own conversion code. Assumes a little-endian host for the byte arrays it writes. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "api/tinker/tinker_pb.h"
#include "tinker.pb-c.h"

/* A request of one datum: tokens [1, 2, 3] + [4, 5] in two chunks, target_tokens INT64 [5],
 * weights FLOAT32 [5]; config v1 {clip_low_threshold: 0.5} and v2 {clip_low_threshold: 0.8,
 * loss_id: "abc"}. Tests change parts of it before packing. */
typedef struct req_builder {
    TinkerPublic__ForwardBackwardRequest req;
    TinkerPublic__Datum datum, *datum_ptr;
    TinkerPublic__Chunk chunks[2], *chunk_ptrs[2];
    TinkerPublic__EncodedTextChunk text[2];
    TinkerPublic__ImageChunk image;
    TinkerPublic__DmelChunk dmel;
    int32_t tokens[5];
    TinkerPublic__Datum__LossFnInputsEntry entries[2], *entry_ptrs[2];
    TinkerPublic__Tensor tensors[2];
    int64_t shapes[2][3];
    int64_t targets[5];
    float weights[5];
    TinkerPublic__ForwardBackwardRequest__LossFnConfigEntry v1, *v1_ptr;
    TinkerPublic__ForwardBackwardRequest__LossFnConfigV2Entry v2[2], *v2_ptrs[2];
    TinkerPublic__LossConfigValue v2_values[2];
    TinkerPublic__ProvenanceSpan span, *span_ptr;
    TinkerPublic__SampledProvenanceSpan sampled;
} req_builder;

static void builder_init(req_builder *b) {
    memset(b, 0, sizeof *b);
    tinker_public__forward_backward_request__init(&b->req);
    b->req.model_id = "s:train:0";
    b->req.seq_id = 7;
    b->req.loss_fn = "cross_entropy";
    b->req.forward_only = 1;
    tinker_public__datum__init(&b->datum);
    b->datum_ptr = &b->datum;
    b->req.n_data = 1;
    b->req.data = &b->datum_ptr;
    for (int i = 0; i < 5; i++)
        b->tokens[i] = i + 1;
    for (int c = 0; c < 2; c++) {
        tinker_public__chunk__init(&b->chunks[c]);
        tinker_public__encoded_text_chunk__init(&b->text[c]);
        b->chunks[c].chunk_case = TINKER_PUBLIC__CHUNK__CHUNK_ENCODED_TEXT;
        b->chunks[c].encoded_text = &b->text[c];
        b->chunk_ptrs[c] = &b->chunks[c];
    }
    b->text[0].tokens = (ProtobufCBinaryData){12, (uint8_t *)b->tokens};
    b->text[1].tokens = (ProtobufCBinaryData){8, (uint8_t *)(b->tokens + 3)};
    b->datum.n_model_input = 2;
    b->datum.model_input = b->chunk_ptrs;
    tinker_public__image_chunk__init(&b->image);
    tinker_public__dmel_chunk__init(&b->dmel);

    static char *names[2] = {"target_tokens", "weights"};
    for (int i = 0; i < 5; i++)
        b->targets[i] = i + 2, b->weights[i] = i ? 1.0f : 0.0f;
    b->weights[4] = 0.5f;
    for (int i = 0; i < 2; i++) {
        tinker_public__datum__loss_fn_inputs_entry__init(&b->entries[i]);
        tinker_public__tensor__init(&b->tensors[i]);
        b->entries[i].key = names[i];
        b->entries[i].value = &b->tensors[i];
        b->entry_ptrs[i] = &b->entries[i];
        b->shapes[i][0] = 5;
        b->tensors[i].n_shape = 1;
        b->tensors[i].shape = b->shapes[i];
        b->tensors[i].encoding_case = TINKER_PUBLIC__TENSOR__ENCODING_DENSE;
    }
    b->tensors[0].dtype = TINKER_PUBLIC__DTYPE__DTYPE_INT64;
    b->tensors[0].dense = (ProtobufCBinaryData){40, (uint8_t *)b->targets};
    b->tensors[1].dtype = TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32;
    b->tensors[1].dense = (ProtobufCBinaryData){20, (uint8_t *)b->weights};
    b->datum.n_loss_fn_inputs = 2;
    b->datum.loss_fn_inputs = b->entry_ptrs;

    /* provenance: read past */
    tinker_public__provenance_span__init(&b->span);
    tinker_public__sampled_provenance_span__init(&b->sampled);
    b->sampled.sequence_id = "seq-1";
    b->sampled.length = 5;
    b->span.span_case = TINKER_PUBLIC__PROVENANCE_SPAN__SPAN_SAMPLED_TOKENS;
    b->span.sampled_tokens = &b->sampled;
    b->span_ptr = &b->span;
    b->datum.n_model_input_spans = 1;
    b->datum.model_input_spans = &b->span_ptr;

    tinker_public__forward_backward_request__loss_fn_config_entry__init(&b->v1);
    b->v1.key = "clip_low_threshold";
    b->v1.value = 0.5;
    b->v1_ptr = &b->v1;
    b->req.n_loss_fn_config = 1;
    b->req.loss_fn_config = &b->v1_ptr;
    static char *v2_keys[2] = {"clip_low_threshold", "loss_id"};
    for (int i = 0; i < 2; i++) {
        tinker_public__forward_backward_request__loss_fn_config_v2_entry__init(&b->v2[i]);
        tinker_public__loss_config_value__init(&b->v2_values[i]);
        b->v2[i].key = v2_keys[i];
        b->v2[i].value = &b->v2_values[i];
        b->v2_ptrs[i] = &b->v2[i];
    }
    b->v2_values[0].value_case = TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE_NUMBER;
    b->v2_values[0].number = 0.8;
    b->v2_values[1].value_case = TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE_TEXT;
    b->v2_values[1].text = "abc";
    b->req.n_loss_fn_config_v2 = 2;
    b->req.loss_fn_config_v2 = b->v2_ptrs;
}

static uint8_t *pack_request(const req_builder *b, size_t *len) {
    size_t size = tinker_public__forward_backward_request__get_packed_size(&b->req);
    uint8_t *buf = malloc(size ? size : 1);
    assert_non_null(buf);
    *len = tinker_public__forward_backward_request__pack(&b->req, buf);
    assert_int_equal(*len, size);
    return buf;
}

static void decode_ok(const req_builder *b, tk_fb_request *out) {
    size_t len;
    uint8_t *buf = pack_request(b, &len);
    chord_err err = {0};
    int rc = tk_pb_decode_fb_request(buf, len, out, &err);
    free(buf);
    if (rc) fail_msg("decode failed: %s", err.msg);
}

/* Decoding fails with code and a message containing want. */
static void decode_bytes_fails(const uint8_t *buf, size_t len, int code, const char *want) {
    tk_fb_request out;
    chord_err err = {0};
    assert_int_equal(tk_pb_decode_fb_request(buf, len, &out, &err), -1);
    assert_int_equal(err.code, code);
    if (!strstr(err.msg, want)) fail_msg("error '%s' lacks '%s'", err.msg, want);
    assert_null(out.data);
    assert_null(out.model_id);
}

static void decode_fails(const req_builder *b, int code, const char *want) {
    size_t len;
    uint8_t *buf = pack_request(b, &len);
    decode_bytes_fails(buf, len, code, want);
    free(buf);
}

static void test_request_round_trip(void **state) {
    (void)state;
    req_builder b;
    builder_init(&b);
    tk_fb_request r;
    decode_ok(&b, &r);
    assert_string_equal(r.model_id, "s:train:0");
    assert_int_equal(r.seq_id, 7);
    assert_string_equal(r.loss_fn, "cross_entropy");
    assert_int_equal(r.forward_only, 1);
    assert_int_equal(r.n_config, 2); /* v2 preferred */
    assert_string_equal(r.config[0].key, "clip_low_threshold");
    assert_true(r.config[0].number == 0.8 && !r.config[0].text);
    assert_string_equal(r.config[1].key, "loss_id");
    assert_string_equal(r.config[1].text, "abc");
    assert_int_equal(r.n_data, 1);
    const tk_datum *d = &r.data[0];
    assert_int_equal(d->n_tokens, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(d->tokens[i], i + 1);
    assert_int_equal(d->n_inputs, 2);
    const tk_tensor *t = tk_datum_input(d, "target_tokens");
    assert_non_null(t);
    assert_int_equal(t->dtype, TK_I64);
    assert_int_equal(t->ndim, 1);
    assert_int_equal(t->shape[0], 5);
    assert_int_equal(t->n, 5);
    for (int i = 0; i < 5; i++)
        assert_int_equal(t->i64[i], i + 2);
    const tk_tensor *w = tk_datum_input(d, "weights");
    assert_non_null(w);
    assert_int_equal(w->dtype, TK_F32);
    assert_null(w->i64);
    for (int i = 0; i < 5; i++)
        assert_true(w->f32[i] == b.weights[i]);
    tk_fb_request_free(&r);

    /* no v2: the legacy numeric map */
    b.req.n_loss_fn_config_v2 = 0;
    b.req.forward_only = 0;
    decode_ok(&b, &r);
    assert_int_equal(r.forward_only, 0);
    assert_int_equal(r.n_config, 1);
    assert_true(r.config[0].number == 0.5);
    tk_fb_request_free(&r);

    /* no config, no shape (read as 1-D), an empty tensor, an empty message */
    b.req.n_loss_fn_config = 0;
    b.tensors[1].n_shape = 0;
    b.tensors[0].dense.len = 0;
    b.shapes[0][0] = 0;
    decode_ok(&b, &r);
    assert_int_equal(r.n_config, 0);
    assert_int_equal(tk_datum_input(&r.data[0], "weights")->shape[0], 5);
    assert_int_equal(tk_datum_input(&r.data[0], "target_tokens")->n, 0);
    tk_fb_request_free(&r);
    chord_err err = {0};
    assert_int_equal(tk_pb_decode_fb_request(NULL, 0, &r, &err), 0);
    assert_int_equal(r.n_data, 0);
    assert_string_equal(r.model_id, "");
    tk_fb_request_free(&r);
}

static void test_request_widening_and_sparse(void **state) {
    (void)state;
    req_builder b;
    builder_init(&b);
    /* target_tokens as INT32, weights as BFLOAT16 */
    int32_t targets32[5] = {-1, 0, 7, 151643, 2};
    b.tensors[0].dtype = TINKER_PUBLIC__DTYPE__DTYPE_INT32;
    b.tensors[0].dense = (ProtobufCBinaryData){20, (uint8_t *)targets32};
    uint16_t bf16[5] = {0x3F80, 0xC000, 0x0000, 0x3F00, 0x7F80}; /* 1, -2, 0, 0.5, inf */
    b.tensors[1].dtype = TINKER_PUBLIC__DTYPE__DTYPE_BFLOAT16;
    b.tensors[1].dense = (ProtobufCBinaryData){10, (uint8_t *)bf16};
    tk_fb_request r;
    decode_ok(&b, &r);
    const tk_tensor *t = tk_datum_input(&r.data[0], "target_tokens");
    assert_int_equal(t->dtype, TK_I64);
    for (int i = 0; i < 5; i++)
        assert_int_equal(t->i64[i], targets32[i]);
    const tk_tensor *w = tk_datum_input(&r.data[0], "weights");
    assert_int_equal(w->dtype, TK_F32);
    assert_true(w->f32[0] == 1.0f && w->f32[1] == -2.0f && w->f32[2] == 0.0f && w->f32[3] == 0.5f &&
                isinf(w->f32[4]));
    tk_fb_request_free(&r);

    /* weights as a sparse [3, 4] FLOAT32: (0,2)=1.5, (2,0)=2.5, (2,3)=3.5 */
    float values[3] = {1.5f, 2.5f, 3.5f};
    int64_t crow[4] = {0, 1, 1, 3}, col[3] = {2, 0, 3};
    TinkerPublic__SparseCsr csr;
    tinker_public__sparse_csr__init(&csr);
    csr.values = (ProtobufCBinaryData){12, (uint8_t *)values};
    csr.crow_indices = (ProtobufCBinaryData){32, (uint8_t *)crow};
    csr.col_indices = (ProtobufCBinaryData){24, (uint8_t *)col};
    builder_init(&b);
    b.tensors[1].encoding_case = TINKER_PUBLIC__TENSOR__ENCODING_SPARSE_CSR;
    b.tensors[1].sparse_csr = &csr;
    b.shapes[1][0] = 3;
    b.shapes[1][1] = 4;
    b.tensors[1].n_shape = 2;
    decode_ok(&b, &r);
    w = tk_datum_input(&r.data[0], "weights");
    assert_int_equal(w->ndim, 2);
    assert_int_equal(w->shape[0], 3);
    assert_int_equal(w->shape[1], 4);
    assert_int_equal(w->n, 12);
    float want[12] = {0, 0, 1.5f, 0, 0, 0, 0, 0, 2.5f, 0, 0, 3.5f};
    for (int i = 0; i < 12; i++)
        assert_true(w->f32[i] == want[i]);
    tk_fb_request_free(&r);

    /* a dense 2-D INT64 [5, 1] */
    builder_init(&b);
    b.shapes[0][1] = 1;
    b.tensors[0].n_shape = 2;
    decode_ok(&b, &r);
    t = tk_datum_input(&r.data[0], "target_tokens");
    assert_int_equal(t->ndim, 2);
    assert_int_equal(t->n, 5);
    tk_fb_request_free(&r);

    /* sparse errors */
    b.tensors[1].encoding_case = TINKER_PUBLIC__TENSOR__ENCODING_SPARSE_CSR;
    b.tensors[1].sparse_csr = &csr;
    b.tensors[1].n_shape = 1;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].loss_fn_inputs.weights: a sparse_csr tensor needs a 2-D");
    b.tensors[1].n_shape = 2;
    b.shapes[1][0] = 3;
    b.shapes[1][1] = 3;
    decode_fails(&b, CHORD_E_INVALID, "sparse_csr.col_indices[2] = 3 outside 3 columns");
    b.shapes[1][1] = 4;
    crow[1] = 2; /* {0, 2, 1, 3}: row 1 would end before it starts */
    decode_fails(&b, CHORD_E_INVALID, "sparse_csr.crow_indices[2] = 1 out of order");
    crow[1] = 1;
    crow[3] = 2;
    decode_fails(&b, CHORD_E_INVALID, "crow_indices ends at 2");
    crow[3] = 3;
    crow[0] = 1;
    decode_fails(&b, CHORD_E_INVALID, "crow_indices[0] is not 0");
    crow[0] = 0;
    b.shapes[1][0] = 4;
    decode_fails(&b, CHORD_E_INVALID, "crow_indices has 32 bytes, 4 rows need 40");
    b.shapes[1][0] = 3;
    csr.col_indices.len = 16;
    decode_fails(&b, CHORD_E_INVALID, "col_indices has 16 bytes, 3 values need 24");
    csr.col_indices.len = 24;
    csr.values.len = 10;
    decode_fails(&b, CHORD_E_INVALID, "sparse_csr.values bytes 10 not a multiple of 4");
    csr.values.len = 12;
    /* a hostile shape: 3 rows of 2^40 columns from a few bytes */
    b.shapes[1][1] = (int64_t)1 << 40;
    decode_fails(&b, CHORD_E_TOO_LARGE, "data[0].loss_fn_inputs.weights");
    b.shapes[1][1] = (int64_t)1 << 62;
    decode_fails(&b, CHORD_E_INVALID, "shape too large");
}

static void test_request_malformed(void **state) {
    (void)state;
    req_builder b;
    builder_init(&b);
    size_t len;
    uint8_t *buf = pack_request(&b, &len);
    /* truncated anywhere inside a field: refused, never a crash */
    decode_bytes_fails(buf, len - 3, CHORD_E_INVALID, "not a valid protobuf message");
    for (size_t cut = 1; cut < len; cut++) {
        tk_fb_request r;
        chord_err err = {0};
        if (tk_pb_decode_fb_request(buf, cut, &r, &err) == 0)
            tk_fb_request_free(&r); /* a cut between fields is a valid shorter message */
        else
            assert_true(err.code && err.msg[0]);
    }
    free(buf);
    /* 2 MiB of empty datums (2 bytes each on the wire, ~110 parsed): over the parse cap */
    size_t n_empty = (size_t)1 << 20;
    uint8_t *empties = malloc(2 * n_empty);
    assert_non_null(empties);
    for (size_t i = 0; i < n_empty; i++)
        empties[2 * i] = 0x1a, empties[2 * i + 1] = 0;
    decode_bytes_fails(empties, 2 * n_empty, CHORD_E_TOO_LARGE, "needs more than");
    tk_fb_request r;
    chord_err err = {0};
    assert_int_equal(tk_pb_decode_fb_request(empties, 2 * 1000, &r, &err), 0); /* 1000 are fine */
    assert_int_equal(r.n_data, 1000);
    assert_int_equal(r.data[999].n_tokens, 0);
    tk_fb_request_free(&r);
    free(empties);
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    decode_bytes_fails(garbage, sizeof garbage, CHORD_E_INVALID, "not a valid protobuf message");

    b.tensors[1].dense.len = 10;
    b.shapes[1][0] = 2;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].loss_fn_inputs.weights: dense bytes 10 not a multiple of 4");
    builder_init(&b);
    b.shapes[1][0] = 2;
    b.shapes[1][1] = 3;
    b.tensors[1].n_shape = 2;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].loss_fn_inputs.weights: shape [2, 3] holds 6 elements, dense data has 5");
    b.tensors[1].n_shape = 1;
    decode_fails(&b, CHORD_E_INVALID, "shape [2] holds 2 elements, dense data has 5");
    b.tensors[1].n_shape = 3;
    decode_fails(&b, CHORD_E_INVALID, "shape has 3 dimensions (1 or 2 taken)");
    builder_init(&b);
    b.shapes[0][0] = -5;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].loss_fn_inputs.target_tokens: shape[0] = -5 is negative");
    builder_init(&b);
    b.tensors[0].dtype = TINKER_PUBLIC__DTYPE__DTYPE_UNSPECIFIED;
    decode_fails(&b, CHORD_E_INVALID, "target_tokens: dtype 0 (UNSPECIFIED) not supported");
    b.tensors[0].dtype = (TinkerPublic__DType)9;
    decode_fails(&b, CHORD_E_INVALID, "target_tokens: dtype 9 (UNSPECIFIED) not supported");

    builder_init(&b);
    b.chunks[1].chunk_case = TINKER_PUBLIC__CHUNK__CHUNK_IMAGE;
    b.chunks[1].image = &b.image;
    b.image.format = "png";
    decode_fails(&b, CHORD_E_INVALID, "data[0].model_input[1]: image chunks are not supported");
    b.chunks[1].chunk_case = TINKER_PUBLIC__CHUNK__CHUNK_DMEL;
    b.chunks[1].dmel = &b.dmel;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].model_input[1]: dmel (audio) chunks are not supported");
    b.chunks[1].chunk_case = TINKER_PUBLIC__CHUNK__CHUNK__NOT_SET;
    decode_fails(&b, CHORD_E_INVALID, "data[0].model_input[1]: empty chunk");
    builder_init(&b);
    b.text[0].tokens.len = 6;
    decode_fails(&b, CHORD_E_INVALID,
                 "data[0].model_input[0].encoded_text.tokens: bytes 6 not a multiple of 4");

    builder_init(&b);
    b.entries[1].key = "target_tokens";
    decode_fails(&b, CHORD_E_INVALID, "data[0].loss_fn_inputs.target_tokens: given twice");
    b.entries[1].key = "";
    decode_fails(&b, CHORD_E_INVALID, "data[0].loss_fn_inputs[1]: empty name");
    builder_init(&b);
    b.entries[1].value = NULL;
    decode_fails(&b, CHORD_E_INVALID, "data[0].loss_fn_inputs.weights: no tensor");
    builder_init(&b);
    b.entries[1].key = "w\xff";
    decode_fails(&b, CHORD_E_INVALID, "not valid UTF-8");

    builder_init(&b);
    b.v2_values[1].value_case = TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE__NOT_SET;
    decode_fails(&b, CHORD_E_INVALID, "loss_fn_config_v2.loss_id: no value");
    b.v2[1].key = "clip_low_threshold";
    b.v2_values[1].value_case = TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE_NUMBER;
    decode_fails(&b, CHORD_E_INVALID, "loss_fn_config_v2.clip_low_threshold: given twice");
}

/* Random byte flips, cuts and insertions of a valid request: each decodes or fails cleanly
 * (run under ASan + UBSan by scripts/test.sh --sanitize). */
static void test_request_mutations(void **state) {
    (void)state;
    req_builder b;
    builder_init(&b);
    size_t len;
    uint8_t *base = pack_request(&b, &len);
    uint8_t *buf = malloc(len + 8);
    assert_non_null(buf);
    uint64_t rng = 0x9E3779B97F4A7C15ull;
    int ok = 0, failed = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(buf, base, len);
        size_t n = len;
        int edits = 1 + (int)((rng >> 60) & 3);
        for (int e = 0; e < edits; e++) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(rng >> 33) % n;
            uint8_t v = (uint8_t)(rng >> 13);
            switch ((rng >> 29) & 3) {
            case 0:
                buf[at] = v;
                break;
            case 1:
                buf[at] ^= (uint8_t)(1u << (v & 7));
                break;
            case 2:
                n = at + 1;
                break;
            default:
                if (n < len + 8) {
                    memmove(buf + at + 1, buf + at, n - at);
                    buf[at] = v;
                    n++;
                }
            }
        }
        tk_fb_request r;
        chord_err err = {0};
        if (tk_pb_decode_fb_request(buf, n, &r, &err) == 0) {
            ok++;
            tk_fb_request_free(&r);
        } else {
            failed++;
            assert_true(err.code == CHORD_E_INVALID || err.code == CHORD_E_TOO_LARGE);
            assert_true(err.msg[0] != 0);
        }
    }
    assert_true(ok > 0 && failed > 0);
    free(buf);
    free(base);
}

static const TinkerPublic__BatchedTensor *record_field(const TinkerPublic__ArrayRecord *rec,
                                                       const char *name) {
    for (size_t i = 0; i < rec->n_fields; i++)
        if (!strcmp(rec->fields[i]->key, name)) return rec->fields[i]->value;
    return NULL;
}

static void check_batched(const TinkerPublic__BatchedTensor *bt, float *const *arrays,
                          const size_t *lens, size_t n) {
    assert_non_null(bt);
    assert_int_equal(bt->dtype, TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32);
    assert_int_equal(bt->n_trailing_shape, 0);
    assert_int_equal(bt->offsets.len, (n + 1) * 8);
    const int64_t *off = (const int64_t *)(const void *)bt->offsets.data;
    int64_t at = 0;
    assert_int_equal(off[0], 0);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(off[i + 1] - off[i], (int64_t)lens[i] * 4);
        for (size_t k = 0; k < lens[i]; k++) {
            float f;
            memcpy(&f, bt->data.data + at + 4 * k, 4);
            assert_true(f == arrays[i][k]);
        }
        at += (int64_t)lens[i] * 4;
    }
    assert_int_equal(bt->data.len, (size_t)at);
}

static void test_encode_fb_output(void **state) {
    (void)state;
    float lp0[3] = {-0.5f, -1.25f, -3.0f}, lp2[2] = {-0.125f, -7.5f};
    float el0[3] = {0.5f, 1.25f, 3.0f}, el2[2] = {0.125f, 7.5f};
    float *logprobs[3] = {lp0, NULL, lp2}, *losses[3] = {el0, NULL, el2};
    size_t lens[3] = {3, 0, 2};
    char *keys[2] = {"loss:sum", "tokens:sum"};
    double values[2] = {12.375, 5};
    tk_fb_output o = {.n_data = 3,
                      .logprobs = logprobs,
                      .elementwise_loss = losses,
                      .lens = lens,
                      .metric_keys = keys,
                      .metric_values = values,
                      .n_metrics = 2};
    uint8_t *buf;
    size_t len;
    chord_err err = {0};
    assert_int_equal(tk_pb_encode_fb_output(&o, &buf, &len, &err), 0);
    TinkerPublic__ForwardBackwardOutput *m =
        tinker_public__forward_backward_output__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_string_equal(m->loss_fn_output_type, "ArrayRecord");
    assert_int_equal(m->n_loss_fn_outputs, 1);
    const TinkerPublic__ArrayRecord *rec = m->loss_fn_outputs[0];
    assert_string_equal(rec->type_tag, "ArrayRecord");
    assert_int_equal(rec->num_datums, 3);
    assert_int_equal(rec->n_fields, 2);
    check_batched(record_field(rec, "logprobs"), logprobs, lens, 3);
    check_batched(record_field(rec, "elementwise_loss"), losses, lens, 3);
    assert_int_equal(m->n_metrics, 2);
    assert_string_equal(m->metrics[0]->key, "loss:sum");
    assert_true(m->metrics[0]->value == 12.375);
    assert_string_equal(m->metrics[1]->key, "tokens:sum");
    tinker_public__forward_backward_output__free_unpacked(m, NULL);
    free(buf);

    /* no elementwise_loss, no datums */
    o.elementwise_loss = NULL;
    o.n_data = 0;
    assert_int_equal(tk_pb_encode_fb_output(&o, &buf, &len, &err), 0);
    m = tinker_public__forward_backward_output__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(m->loss_fn_outputs[0]->n_fields, 1);
    assert_int_equal(m->loss_fn_outputs[0]->num_datums, 0);
    check_batched(record_field(m->loss_fn_outputs[0], "logprobs"), logprobs, lens, 0);
    tinker_public__forward_backward_output__free_unpacked(m, NULL);
    free(buf);

    /* metric keys the client would refuse */
    char *bad[4] = {"loss", "a:b:c", ":sum", "loss:"};
    for (int i = 0; i < 4; i++) {
        keys[1] = bad[i];
        err = (chord_err){0};
        assert_int_equal(tk_pb_encode_fb_output(&o, &buf, &len, &err), -1);
        assert_int_equal(err.code, CHORD_E_INTERNAL);
        assert_non_null(strstr(err.msg, "is not 'name:reduction'"));
        assert_null(buf);
    }
}

static void test_encode_sample_response(void **state) {
    (void)state;
    int32_t t0[3] = {5, -1, 151643};
    float l0[3] = {-0.25f, -1.5f, -0.0f};
    int32_t t1[1] = {9};
    tk_sampled seqs[3] = {
        {.stop_reason = TK_STOP_REASON_STOP, .tokens = t0, .logprobs = l0, .n = 3},
        {.stop_reason = TK_STOP_REASON_LENGTH, .tokens = t1, .logprobs = NULL, .n = 1},
        {.stop_reason = TK_STOP_REASON_LENGTH, .tokens = NULL, .logprobs = NULL, .n = 0},
    };
    float prompt[3] = {NAN, -2.0f, -3.5f};
    tk_sample_response r = {.seqs = seqs, .n_seqs = 3, .prompt_logprobs = prompt, .n_prompt = 3};
    uint8_t *buf;
    size_t len;
    chord_err err = {0};
    assert_int_equal(tk_pb_encode_sample_response(&r, &buf, &len, &err), 0);
    TinkerPublic__SampleResponse *m = tinker_public__sample_response__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(m->n_sequences, 3);
    assert_int_equal(m->sequences[0]->stop_reason, TINKER_PUBLIC__STOP_REASON__STOP_REASON_STOP);
    assert_int_equal(m->sequences[1]->stop_reason, TINKER_PUBLIC__STOP_REASON__STOP_REASON_LENGTH);
    assert_int_equal(m->sequences[0]->tokens.len, 12);
    assert_memory_equal(m->sequences[0]->tokens.data, t0, 12);
    assert_int_equal(m->sequences[0]->has_logprobs_case,
                     TINKER_PUBLIC__SAMPLED_SEQUENCE__HAS_LOGPROBS_LOGPROBS);
    assert_memory_equal(m->sequences[0]->logprobs.data, l0, 12);
    assert_int_equal(m->sequences[1]->has_logprobs_case,
                     TINKER_PUBLIC__SAMPLED_SEQUENCE__HAS_LOGPROBS__NOT_SET);
    assert_int_equal(m->sequences[2]->tokens.len, 0);
    assert_int_equal(m->has_prompt_logprobs_case,
                     TINKER_PUBLIC__SAMPLE_RESPONSE__HAS_PROMPT_LOGPROBS_PROMPT_LOGPROBS);
    assert_int_equal(m->prompt_logprobs.len, 12);
    float p0;
    memcpy(&p0, m->prompt_logprobs.data, 4);
    assert_true(isnan(p0));
    assert_memory_equal(m->prompt_logprobs.data + 4, prompt + 1, 8);
    assert_int_equal(m->prompt_cache_hit_tokens, 0);
    tinker_public__sample_response__free_unpacked(m, NULL);
    free(buf);

    r.prompt_logprobs = NULL;
    assert_int_equal(tk_pb_encode_sample_response(&r, &buf, &len, &err), 0);
    m = tinker_public__sample_response__unpack(NULL, len, buf);
    assert_non_null(m);
    assert_int_equal(m->has_prompt_logprobs_case,
                     TINKER_PUBLIC__SAMPLE_RESPONSE__HAS_PROMPT_LOGPROBS__NOT_SET);
    tinker_public__sample_response__free_unpacked(m, NULL);
    free(buf);

    seqs[1].stop_reason = 2;
    assert_int_equal(tk_pb_encode_sample_response(&r, &buf, &len, &err), -1);
    assert_int_equal(err.code, CHORD_E_INTERNAL);
    assert_non_null(strstr(err.msg, "sequences[1]: stop_reason 2"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_request_widening_and_sparse),
        cmocka_unit_test(test_request_malformed),
        cmocka_unit_test(test_request_mutations),
        cmocka_unit_test(test_encode_fb_output),
        cmocka_unit_test(test_encode_sample_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
