/* tinker_pb.c — the Tinker client's protobuf messages to and from chord's Tinker data
 * (tinker_pb.h). protobuf-c parses and packs (tinker.pb-c.c, generated from
 * api/proto/tinker.proto at build time); this file checks what the client sent and converts the
 * little-endian byte arrays it carries.
 *
 * Allocation bounds, so that a hostile message cannot make chordd allocate far beyond its size:
 * protobuf-c's parse tree is built with an allocator capped at PARSE_FACTOR × the message plus
 * PARSE_SLACK, and the decoded arrays (tokens, dense tensors, the structs holding them) share a
 * budget of OUT_FACTOR × the message plus OUT_SLACK. Dense inputs cost at most 2× their bytes
 * (bfloat16 → float, int32 → int64); only sparse CSR tensors can grow more, and they are what the
 * budget's factor and slack are sized for (a [N, K] multi-target input with few listed values). */
#include "api/tinker/tinker_pb.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/utf8.h"
#include "tinker.pb-c.h"

enum {
    PARSE_FACTOR = 24, /* a client's request of 20000 empty datums needs 14×, real ones 1-11× */
    OUT_FACTOR = 64,
};
#define PARSE_SLACK ((size_t)1 << 20)
#define OUT_SLACK ((size_t)64 << 20)
#define PATH_MAX_LEN 160

/* ---- little-endian reads and writes, independent of the host's byte order ---- */

static uint32_t read_u32_le(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t read_u64_le(const uint8_t *p) {
    return (uint64_t)read_u32_le(p) | (uint64_t)read_u32_le(p + 4) << 32;
}

static float float_from_bits(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static void write_u32_le(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void write_u64_le(uint8_t *p, uint64_t v) {
    write_u32_le(p, (uint32_t)v);
    write_u32_le(p + 4, (uint32_t)(v >> 32));
}

static void write_f32_le(uint8_t *p, float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    write_u32_le(p, bits);
}

/* ---- the capped allocator protobuf-c parses with ---- */

typedef struct capped_alloc {
    size_t used, cap;
    int over; /* a request was refused for the cap (not for malloc failing) */
} capped_alloc;

/* Each block carries its size in a 16-byte header (keeping malloc's alignment) so that freeing
 * gives the budget back. */
#define BLOCK_HEADER 16

static void *capped_alloc_block(void *data, size_t size) {
    capped_alloc *a = data;
    if (size > a->cap || size + BLOCK_HEADER > a->cap - a->used) {
        a->over = 1;
        return NULL;
    }
    unsigned char *p = malloc(size + BLOCK_HEADER);
    if (!p) return NULL;
    memcpy(p, &size, sizeof size);
    a->used += size + BLOCK_HEADER;
    return p + BLOCK_HEADER;
}

static void capped_free_block(void *data, void *ptr) {
    if (!ptr) return;
    capped_alloc *a = data;
    unsigned char *p = (unsigned char *)ptr - BLOCK_HEADER;
    size_t size;
    memcpy(&size, p, sizeof size);
    a->used -= size + BLOCK_HEADER;
    free(p);
}

/* ---- decoding ---- */

typedef struct decoder {
    size_t out_used, out_cap; /* bytes of decoded arrays taken from the budget, and the budget */
    chord_err *err;
} decoder;

/* Takes count × size bytes from the budget and returns them zeroed; NULL with err set (naming
 * path) when the budget or memory is exhausted. Never returns NULL for count 0. */
static void *decoder_alloc(decoder *d, size_t count, size_t size, const char *path) {
    if (size && count > SIZE_MAX / size) {
        chord_err_setc(d->err, CHORD_E_TOO_LARGE, "%s: %zu elements overflow", path, count);
        return NULL;
    }
    size_t bytes = count * size;
    if (bytes > d->out_cap - d->out_used) {
        chord_err_setc(d->err, CHORD_E_TOO_LARGE,
                       "%s: %zu bytes decoded exceed what a message of this size may need "
                       "(%zu bytes in all)",
                       path, bytes, d->out_cap);
        return NULL;
    }
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) {
        chord_err_setc(d->err, CHORD_E_INTERNAL, "%s: out of memory (%zu bytes)", path, bytes);
        return NULL;
    }
    d->out_used += bytes;
    return p;
}

static char *decoder_strdup(decoder *d, const char *s, const char *path) {
    if (!s) s = "";
    size_t n = strlen(s);
    if (!chord_utf8_valid(s, n)) {
        chord_err_set(d->err, "%s: not valid UTF-8", path);
        return NULL;
    }
    char *copy = decoder_alloc(d, n + 1, 1, path);
    if (copy) memcpy(copy, s, n + 1);
    return copy;
}

static const char *dtype_name(int dtype) {
    switch (dtype) {
    case TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32:
        return "FLOAT32";
    case TINKER_PUBLIC__DTYPE__DTYPE_INT64:
        return "INT64";
    case TINKER_PUBLIC__DTYPE__DTYPE_INT32:
        return "INT32";
    case TINKER_PUBLIC__DTYPE__DTYPE_BFLOAT16:
        return "BFLOAT16";
    default:
        return "UNSPECIFIED";
    }
}

/* Stores the element at p (little-endian, in dtype) as element `at` of t, widened to float or
 * int64. */
static void store_element(tk_tensor *t, size_t at, int dtype, const uint8_t *p) {
    switch (dtype) {
    case TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32:
        t->f32[at] = float_from_bits(read_u32_le(p));
        break;
    case TINKER_PUBLIC__DTYPE__DTYPE_BFLOAT16:
        t->f32[at] = float_from_bits((uint32_t)(p[0] | p[1] << 8) << 16);
        break;
    case TINKER_PUBLIC__DTYPE__DTYPE_INT64:
        t->i64[at] = (int64_t)read_u64_le(p);
        break;
    default: /* INT32 */
        t->i64[at] = (int32_t)read_u32_le(p);
        break;
    }
}

/* Allocates t's n elements (f32 or i64, by t->dtype). */
static int tensor_alloc(decoder *d, tk_tensor *t, const char *path) {
    if (t->dtype == TK_F32)
        t->f32 = decoder_alloc(d, t->n, sizeof *t->f32, path);
    else
        t->i64 = decoder_alloc(d, t->n, sizeof *t->i64, path);
    return t->f32 || t->i64 ? 0 : -1;
}

static int decode_sparse(decoder *d, const TinkerPublic__SparseCsr *csr, int dtype, size_t esize,
                         tk_tensor *t, const char *path) {
    if (t->ndim != 2)
        return chord_err_set(d->err, "%s: a sparse_csr tensor needs a 2-D shape, got %d dimensions",
                             path, t->ndim);
    if (!csr) return chord_err_set(d->err, "%s: sparse_csr is empty", path);
    size_t rows = (size_t)t->shape[0], cols = (size_t)t->shape[1];
    if (csr->values.len % esize)
        return chord_err_set(d->err, "%s: sparse_csr.values bytes %zu not a multiple of %zu", path,
                             csr->values.len, esize);
    size_t nnz = csr->values.len / esize;
    if (csr->crow_indices.len % 8 || csr->crow_indices.len / 8 != rows + 1)
        return chord_err_set(d->err,
                             "%s: sparse_csr.crow_indices has %zu bytes, %zu rows need %zu (int64)",
                             path, csr->crow_indices.len, rows, (rows + 1) * 8);
    if (csr->col_indices.len % 8 || csr->col_indices.len / 8 != nnz)
        return chord_err_set(
            d->err, "%s: sparse_csr.col_indices has %zu bytes, %zu values need %zu (int64)", path,
            csr->col_indices.len, nnz, nnz * 8);
    const uint8_t *crow = csr->crow_indices.data, *col = csr->col_indices.data;
    if (read_u64_le(crow) != 0)
        return chord_err_set(d->err, "%s: sparse_csr.crow_indices[0] is not 0", path);
    for (size_t r = 0; r < rows; r++) {
        uint64_t lo = read_u64_le(crow + 8 * r), hi = read_u64_le(crow + 8 * (r + 1));
        if (hi < lo || hi > nnz)
            return chord_err_set(d->err,
                                 "%s: sparse_csr.crow_indices[%zu] = %lld out of order or past "
                                 "the %zu values",
                                 path, r + 1, (long long)hi, nnz);
    }
    if (read_u64_le(crow + 8 * rows) != nnz)
        return chord_err_set(d->err,
                             "%s: sparse_csr.crow_indices ends at %lld, not at the %zu values",
                             path, (long long)read_u64_le(crow + 8 * rows), nnz);
    for (size_t k = 0; k < nnz; k++) {
        uint64_t c = read_u64_le(col + 8 * k);
        if (c >= cols)
            return chord_err_set(d->err,
                                 "%s: sparse_csr.col_indices[%zu] = %lld outside %zu columns", path,
                                 k, (long long)c, cols);
    }
    if (tensor_alloc(d, t, path)) return -1; /* zeroed: the pad value is 0 */
    for (size_t r = 0; r < rows; r++) {
        size_t lo = (size_t)read_u64_le(crow + 8 * r), hi = (size_t)read_u64_le(crow + 8 * (r + 1));
        for (size_t k = lo; k < hi; k++)
            store_element(t, r * cols + (size_t)read_u64_le(col + 8 * k), dtype,
                          csr->values.data + k * esize);
    }
    return 0;
}

static int decode_tensor(decoder *d, const TinkerPublic__Tensor *m, tk_tensor *t,
                         const char *path) {
    size_t esize;
    switch ((int)m->dtype) {
    case TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32:
        esize = 4;
        t->dtype = TK_F32;
        break;
    case TINKER_PUBLIC__DTYPE__DTYPE_BFLOAT16:
        esize = 2;
        t->dtype = TK_F32;
        break;
    case TINKER_PUBLIC__DTYPE__DTYPE_INT64:
        esize = 8;
        t->dtype = TK_I64;
        break;
    case TINKER_PUBLIC__DTYPE__DTYPE_INT32:
        esize = 4;
        t->dtype = TK_I64;
        break;
    default:
        return chord_err_set(d->err,
                             "%s: dtype %d (%s) not supported (FLOAT32, BFLOAT16, INT64 or "
                             "INT32)",
                             path, (int)m->dtype, dtype_name((int)m->dtype));
    }
    if (m->n_shape > 2)
        return chord_err_set(d->err, "%s: shape has %zu dimensions (1 or 2 taken)", path,
                             m->n_shape);
    size_t product = 1;
    for (size_t i = 0; i < m->n_shape; i++) {
        int64_t s = m->shape[i];
        if (s < 0)
            return chord_err_set(d->err, "%s: shape[%zu] = %lld is negative", path, i,
                                 (long long)s);
        if (s && product > SIZE_MAX / 8 / (size_t)s)
            return chord_err_set(d->err, "%s: shape too large", path);
        product *= (size_t)s;
        t->shape[i] = s;
    }
    t->ndim = m->n_shape ? (int)m->n_shape : 1;

    if (m->encoding_case == TINKER_PUBLIC__TENSOR__ENCODING_SPARSE_CSR) {
        t->n = product;
        return decode_sparse(d, m->sparse_csr, (int)m->dtype, esize, t, path);
    }
    size_t bytes = m->encoding_case == TINKER_PUBLIC__TENSOR__ENCODING_DENSE ? m->dense.len : 0;
    if (bytes % esize)
        return chord_err_set(d->err, "%s: dense bytes %zu not a multiple of %zu (%s)", path, bytes,
                             esize, dtype_name((int)m->dtype));
    size_t count = bytes / esize;
    if (!m->n_shape) {
        t->shape[0] = (int64_t)count; /* no shape: 1-D, as the client reads it */
        product = count;
    }
    if (product != count) {
        if (t->ndim == 2)
            return chord_err_set(
                d->err, "%s: shape [%lld, %lld] holds %zu elements, dense data has %zu", path,
                (long long)t->shape[0], (long long)t->shape[1], product, count);
        return chord_err_set(d->err, "%s: shape [%lld] holds %zu elements, dense data has %zu",
                             path, (long long)t->shape[0], product, count);
    }
    t->n = count;
    if (tensor_alloc(d, t, path)) return -1;
    for (size_t i = 0; i < count; i++)
        store_element(t, i, (int)m->dtype, m->dense.data + i * esize);
    return 0;
}

static int decode_datum(decoder *d, const TinkerPublic__Datum *m, size_t index, tk_datum *out) {
    char path[PATH_MAX_LEN];
    if (!m) return chord_err_set(d->err, "data[%zu]: missing", index);
    /* model_input: encoded_text chunks only, concatenated */
    size_t n_tokens = 0;
    for (size_t c = 0; c < m->n_model_input; c++) {
        const TinkerPublic__Chunk *chunk = m->model_input[c];
        int kind = chunk ? (int)chunk->chunk_case : 0;
        if (kind == TINKER_PUBLIC__CHUNK__CHUNK_IMAGE)
            return chord_err_set(d->err,
                                 "data[%zu].model_input[%zu]: image chunks are not supported "
                                 "(chord trains on text: encoded_text chunks only)",
                                 index, c);
        if (kind == TINKER_PUBLIC__CHUNK__CHUNK_DMEL)
            return chord_err_set(d->err,
                                 "data[%zu].model_input[%zu]: dmel (audio) chunks are not "
                                 "supported (chord trains on text: encoded_text chunks only)",
                                 index, c);
        if (kind != TINKER_PUBLIC__CHUNK__CHUNK_ENCODED_TEXT || !chunk->encoded_text)
            return chord_err_set(
                d->err, "data[%zu].model_input[%zu]: empty chunk (no encoded_text)", index, c);
        size_t bytes = chunk->encoded_text->tokens.len;
        if (bytes % 4)
            return chord_err_set(d->err,
                                 "data[%zu].model_input[%zu].encoded_text.tokens: bytes %zu "
                                 "not a multiple of 4 (int32)",
                                 index, c, bytes);
        n_tokens += bytes / 4;
    }
    snprintf(path, sizeof path, "data[%zu].model_input", index);
    out->tokens = decoder_alloc(d, n_tokens, sizeof *out->tokens, path);
    if (!out->tokens) return -1;
    out->n_tokens = n_tokens;
    size_t at = 0;
    for (size_t c = 0; c < m->n_model_input; c++) {
        const ProtobufCBinaryData *b = &m->model_input[c]->encoded_text->tokens;
        for (size_t i = 0; i + 4 <= b->len; i += 4)
            out->tokens[at++] = (int32_t)read_u32_le(b->data + i);
    }

    /* loss_fn_inputs: a map of name → tensor */
    if (m->n_loss_fn_inputs > INT_MAX)
        return chord_err_set(d->err, "data[%zu].loss_fn_inputs: too many entries", index);
    snprintf(path, sizeof path, "data[%zu].loss_fn_inputs", index);
    size_t n = m->n_loss_fn_inputs;
    out->input_names = decoder_alloc(d, n, sizeof *out->input_names, path);
    out->inputs = decoder_alloc(d, n, sizeof *out->inputs, path);
    if (!out->input_names || !out->inputs) return -1;
    out->n_inputs = (int)n;
    for (size_t i = 0; i < n; i++) {
        const TinkerPublic__Datum__LossFnInputsEntry *e = m->loss_fn_inputs[i];
        const char *key = e && e->key ? e->key : "";
        snprintf(path, sizeof path, "data[%zu].loss_fn_inputs.%.64s", index, key);
        if (!*key)
            return chord_err_set(d->err, "data[%zu].loss_fn_inputs[%zu]: empty name", index, i);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(out->input_names[j], key))
                return chord_err_set(d->err, "%s: given twice", path);
        if (!(out->input_names[i] = decoder_strdup(d, key, path))) return -1;
        if (!e->value) return chord_err_set(d->err, "%s: no tensor", path);
        if (decode_tensor(d, e->value, &out->inputs[i], path)) return -1;
    }
    /* model_input_spans, loss_fn_input_spans: provenance metadata, not needed to train */
    return 0;
}

static int decode_config(decoder *d, const TinkerPublic__ForwardBackwardRequest *m,
                         tk_fb_request *out) {
    int v2 = m->n_loss_fn_config_v2 > 0;
    size_t n = v2 ? m->n_loss_fn_config_v2 : m->n_loss_fn_config;
    const char *field = v2 ? "loss_fn_config_v2" : "loss_fn_config";
    if (n > INT_MAX) return chord_err_set(d->err, "%s: too many entries", field);
    char path[PATH_MAX_LEN];
    out->config = decoder_alloc(d, n, sizeof *out->config, field);
    if (!out->config) return -1;
    out->n_config = (int)n;
    for (size_t i = 0; i < n; i++) {
        const char *key = v2 ? (m->loss_fn_config_v2[i] ? m->loss_fn_config_v2[i]->key : NULL)
                             : (m->loss_fn_config[i] ? m->loss_fn_config[i]->key : NULL);
        if (!key || !*key) return chord_err_set(d->err, "%s[%zu]: empty key", field, i);
        snprintf(path, sizeof path, "%s.%.64s", field, key);
        for (size_t j = 0; j < i; j++)
            if (!strcmp(out->config[j].key, key))
                return chord_err_set(d->err, "%s: given twice", path);
        tk_config_value *cv = &out->config[i];
        if (!(cv->key = decoder_strdup(d, key, path))) return -1;
        if (!v2) {
            cv->number = m->loss_fn_config[i]->value;
            continue;
        }
        const TinkerPublic__LossConfigValue *v = m->loss_fn_config_v2[i]->value;
        if (v && v->value_case == TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE_NUMBER)
            cv->number = v->number;
        else if (v && v->value_case == TINKER_PUBLIC__LOSS_CONFIG_VALUE__VALUE_TEXT) {
            if (!(cv->text = decoder_strdup(d, v->text, path))) return -1;
        } else
            return chord_err_set(d->err, "%s: no value (number or text)", path);
    }
    return 0;
}

static int decode_request(decoder *d, const TinkerPublic__ForwardBackwardRequest *m,
                          tk_fb_request *out) {
    if (!(out->model_id = decoder_strdup(d, m->model_id, "model_id"))) return -1;
    if (!(out->loss_fn = decoder_strdup(d, m->loss_fn, "loss_fn"))) return -1;
    out->seq_id = m->seq_id;
    out->forward_only = m->forward_only ? 1 : 0;
    if (decode_config(d, m, out)) return -1;
    out->data = decoder_alloc(d, m->n_data, sizeof *out->data, "data");
    if (!out->data) return -1;
    out->n_data = m->n_data;
    for (size_t i = 0; i < m->n_data; i++)
        if (decode_datum(d, m->data[i], i, &out->data[i])) return -1;
    return 0;
}

static size_t scaled_cap(size_t len, size_t factor, size_t slack) {
    if (len > (SIZE_MAX - slack) / factor) return SIZE_MAX;
    return len * factor + slack;
}

int tk_pb_decode_fb_request(const uint8_t *buf, size_t len, tk_fb_request *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (!buf && len) return chord_err_set(err, "ForwardBackwardRequest: no bytes");
    capped_alloc cap = {.cap = scaled_cap(len, PARSE_FACTOR, PARSE_SLACK)};
    ProtobufCAllocator allocator = {
        .alloc = capped_alloc_block, .free = capped_free_block, .allocator_data = &cap};
    static const uint8_t empty[1];
    TinkerPublic__ForwardBackwardRequest *m =
        tinker_public__forward_backward_request__unpack(&allocator, len, buf ? buf : empty);
    if (!m) {
        if (cap.over)
            return chord_err_setc(
                err, CHORD_E_TOO_LARGE,
                "ForwardBackwardRequest: parsing %zu bytes needs more than %zu bytes "
                "of memory",
                len, cap.cap);
        return chord_err_set(err,
                             "ForwardBackwardRequest: %zu bytes are not a valid protobuf "
                             "message (truncated, or a field of the wrong type)",
                             len);
    }
    decoder d = {.out_cap = scaled_cap(len, OUT_FACTOR, OUT_SLACK), .err = err};
    int rc = decode_request(&d, m, out);
    tinker_public__forward_backward_request__free_unpacked(m, &allocator);
    if (rc) {
        if (err && !err->code) err->code = CHORD_E_INVALID;
        tk_fb_request_free(out);
        return -1;
    }
    return 0;
}

/* ---- encoding ---- */

/* A BatchedTensor of FLOAT32: arrays[i] holds lens[i] values; data and offsets malloc'd. */
static int batched_f32(float *const *arrays, const size_t *lens, size_t n, const char *name,
                       TinkerPublic__BatchedTensor *bt, chord_err *err) {
    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] && !arrays[i])
            return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: %s[%zu] is NULL",
                                  name, i);
        if (lens[i] > (SIZE_MAX / 4 - total) / 2)
            return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: %s too large",
                                  name);
        total += lens[i];
    }
    if (n > SIZE_MAX / 8 - 1)
        return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: too many datums");
    uint8_t *data = malloc(total ? total * 4 : 1), *offsets = malloc((n + 1) * 8);
    if (!data || !offsets) {
        free(data);
        free(offsets);
        return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: out of memory");
    }
    size_t at = 0;
    write_u64_le(offsets, 0);
    for (size_t i = 0; i < n; i++) {
        for (size_t k = 0; k < lens[i]; k++)
            write_f32_le(data + 4 * (at + k), arrays[i][k]);
        at += lens[i];
        write_u64_le(offsets + 8 * (i + 1), (uint64_t)at * 4);
    }
    bt->data = (ProtobufCBinaryData){.len = total * 4, .data = data};
    bt->offsets = (ProtobufCBinaryData){.len = (n + 1) * 8, .data = offsets};
    bt->dtype = TINKER_PUBLIC__DTYPE__DTYPE_FLOAT32;
    bt->n_trailing_shape = 0;
    return 0;
}

/* The client splits every metric key on ':' into exactly a name and a reduction, and its
 * protobuf parser refuses strings that are not UTF-8. */
static int metric_key_ok(const char *key) {
    if (!key) return 0;
    const char *colon = strchr(key, ':');
    return colon && colon != key && colon[1] && !strchr(colon + 1, ':') &&
           chord_utf8_valid(key, strlen(key));
}

static int pack_message(const ProtobufCMessage *msg, const char *what, uint8_t **buf, size_t *len,
                        chord_err *err) {
    size_t size = protobuf_c_message_get_packed_size(msg);
    uint8_t *out = malloc(size ? size : 1);
    if (!out)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: out of memory (%zu bytes)", what, size);
    size_t packed = protobuf_c_message_pack(msg, out);
    if (packed != size) {
        free(out);
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: packed %zu bytes, expected %zu", what,
                              packed, size);
    }
    *buf = out;
    *len = size;
    return 0;
}

int tk_pb_encode_fb_output(const tk_fb_output *o, uint8_t **buf, size_t *len, chord_err *err) {
    static char array_record[] = "ArrayRecord", logprobs_name[] = "logprobs",
                loss_name[] = "elementwise_loss";
    *buf = NULL;
    *len = 0;
    if (o->n_data && (!o->lens || !o->logprobs))
        return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: no logprobs");
    if (o->n_metrics < 0 || (o->n_metrics && (!o->metric_keys || !o->metric_values)))
        return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: no metrics arrays");
    if ((uint64_t)o->n_data > INT64_MAX)
        return chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: too many datums");
    for (int i = 0; i < o->n_metrics; i++)
        if (!metric_key_ok(o->metric_keys[i]))
            return chord_err_setc(err, CHORD_E_INTERNAL,
                                  "ForwardBackwardOutput: metric key '%s' is not 'name:reduction' "
                                  "(exactly one colon, UTF-8)",
                                  o->metric_keys[i] ? o->metric_keys[i] : "(null)");

    int rc = -1;
    TinkerPublic__BatchedTensor tensors[2];
    TinkerPublic__ArrayRecord__FieldsEntry entries[2];
    TinkerPublic__ArrayRecord__FieldsEntry *entry_ptrs[2] = {&entries[0], &entries[1]};
    for (int i = 0; i < 2; i++) {
        tinker_public__batched_tensor__init(&tensors[i]);
        tinker_public__array_record__fields_entry__init(&entries[i]);
        entries[i].value = &tensors[i];
    }
    TinkerPublic__ForwardBackwardOutput__MetricsEntry *metrics =
        calloc(o->n_metrics ? (size_t)o->n_metrics : 1, sizeof *metrics);
    TinkerPublic__ForwardBackwardOutput__MetricsEntry **metric_ptrs =
        calloc(o->n_metrics ? (size_t)o->n_metrics : 1, sizeof *metric_ptrs);
    if (!metrics || !metric_ptrs) {
        chord_err_setc(err, CHORD_E_INTERNAL, "ForwardBackwardOutput: out of memory");
        goto done;
    }
    size_t n_fields = 0;
    entries[n_fields].key = logprobs_name;
    if (batched_f32(o->logprobs, o->lens, o->n_data, logprobs_name, &tensors[n_fields], err))
        goto done;
    n_fields++;
    if (o->elementwise_loss) {
        entries[n_fields].key = loss_name;
        if (batched_f32(o->elementwise_loss, o->lens, o->n_data, loss_name, &tensors[n_fields],
                        err))
            goto done;
        n_fields++;
    }
    for (int i = 0; i < o->n_metrics; i++) {
        tinker_public__forward_backward_output__metrics_entry__init(&metrics[i]);
        metrics[i].key = o->metric_keys[i];
        metrics[i].value = o->metric_values[i];
        metric_ptrs[i] = &metrics[i];
    }
    TinkerPublic__ArrayRecord record;
    tinker_public__array_record__init(&record);
    TinkerPublic__ArrayRecord *record_ptr = &record;
    record.type_tag = array_record;
    record.n_fields = n_fields;
    record.fields = entry_ptrs;
    record.num_datums = (int64_t)o->n_data;
    TinkerPublic__ForwardBackwardOutput msg;
    tinker_public__forward_backward_output__init(&msg);
    msg.loss_fn_output_type = array_record;
    msg.n_loss_fn_outputs = 1;
    msg.loss_fn_outputs = &record_ptr;
    msg.n_metrics = (size_t)o->n_metrics;
    msg.metrics = metric_ptrs;
    rc = pack_message(&msg.base, "ForwardBackwardOutput", buf, len, err);
done:
    for (int i = 0; i < 2; i++) {
        free(tensors[i].data.data);
        free(tensors[i].offsets.data);
    }
    free(metrics);
    free(metric_ptrs);
    return rc;
}

/* n values as 4-byte little-endian words (int32 tokens or float32 log-probs). */
static uint8_t *words_le(const void *values, size_t n, int is_float) {
    if (n > SIZE_MAX / 4) return NULL;
    uint8_t *out = malloc(n ? n * 4 : 1);
    if (!out) return NULL;
    for (size_t i = 0; i < n; i++) {
        if (is_float)
            write_f32_le(out + 4 * i, ((const float *)values)[i]);
        else
            write_u32_le(out + 4 * i, (uint32_t)((const int32_t *)values)[i]);
    }
    return out;
}

int tk_pb_encode_sample_response(const tk_sample_response *r, uint8_t **buf, size_t *len,
                                 chord_err *err) {
    *buf = NULL;
    *len = 0;
    if (r->n_seqs && !r->seqs)
        return chord_err_setc(err, CHORD_E_INTERNAL, "SampleResponse: no sequences array");
    for (size_t i = 0; i < r->n_seqs; i++) {
        const tk_sampled *s = &r->seqs[i];
        if (s->stop_reason != TK_STOP_REASON_STOP && s->stop_reason != TK_STOP_REASON_LENGTH)
            return chord_err_setc(err, CHORD_E_INTERNAL,
                                  "SampleResponse: sequences[%zu]: stop_reason %d", i,
                                  s->stop_reason);
        if (s->n && !s->tokens)
            return chord_err_setc(err, CHORD_E_INTERNAL,
                                  "SampleResponse: sequences[%zu]: no tokens", i);
    }
    int rc = -1;
    size_t n = r->n_seqs;
    TinkerPublic__SampledSequence *seqs = calloc(n ? n : 1, sizeof *seqs);
    TinkerPublic__SampledSequence **seq_ptrs = calloc(n ? n : 1, sizeof *seq_ptrs);
    TinkerPublic__SampleResponse msg;
    tinker_public__sample_response__init(&msg);
    if (!seqs || !seq_ptrs) goto oom;
    for (size_t i = 0; i < n; i++) {
        const tk_sampled *s = &r->seqs[i];
        TinkerPublic__SampledSequence *q = &seqs[i];
        tinker_public__sampled_sequence__init(q);
        seq_ptrs[i] = q;
        q->stop_reason = s->stop_reason == TK_STOP_REASON_LENGTH
                             ? TINKER_PUBLIC__STOP_REASON__STOP_REASON_LENGTH
                             : TINKER_PUBLIC__STOP_REASON__STOP_REASON_STOP;
        if (!(q->tokens.data = words_le(s->tokens, s->n, 0))) goto oom;
        q->tokens.len = s->n * 4;
        if (s->logprobs) {
            if (!(q->logprobs.data = words_le(s->logprobs, s->n, 1))) goto oom;
            q->logprobs.len = s->n * 4;
            q->has_logprobs_case = TINKER_PUBLIC__SAMPLED_SEQUENCE__HAS_LOGPROBS_LOGPROBS;
        }
    }
    msg.n_sequences = n;
    msg.sequences = seq_ptrs;
    msg.prompt_cache_hit_tokens = 0;
    if (r->prompt_logprobs) {
        if (!(msg.prompt_logprobs.data = words_le(r->prompt_logprobs, r->n_prompt, 1))) goto oom;
        msg.prompt_logprobs.len = r->n_prompt * 4;
        msg.has_prompt_logprobs_case =
            TINKER_PUBLIC__SAMPLE_RESPONSE__HAS_PROMPT_LOGPROBS_PROMPT_LOGPROBS;
    }
    rc = pack_message(&msg.base, "SampleResponse", buf, len, err);
    goto done;
oom:
    chord_err_setc(err, CHORD_E_INTERNAL, "SampleResponse: out of memory");
done:
    for (size_t i = 0; seqs && i < n; i++) {
        free(seqs[i].tokens.data);
        free(seqs[i].logprobs.data);
    }
    free(msg.prompt_logprobs.data);
    free(seqs);
    free(seq_ptrs);
    return rc;
}
