/* pbjson.c — JSON documents ↔ protobuf-c messages by descriptor (rules in pbjson.h).
 *
 * Not here: which message a call takes or returns (grpc_methods.c), the wire (protobuf-c). */
#include "api/grpc/pbjson.h"

#include <inttypes.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "google/protobuf/struct.pb-c.h"
#include "server/base/buf.h"
#include "server/base/utf8.h"

#define MEMBER(type, msg, offset) (*(type *)((char *)(msg) + (offset)))
#define CMEMBER(type, msg, offset) (*(const type *)((const char *)(msg) + (offset)))

/* ---- the arena ------------------------------------------------------------------------------ */

static void *arena_alloc(pbj_arena *a, size_t size) {
    if (a->n == a->cap) {
        void **p = chord_array_grow(a->ptrs, &a->cap, a->n + 1, sizeof *p);
        if (!p) return NULL;
        a->ptrs = p;
    }
    void *m = calloc(1, size ? size : 1);
    if (m) a->ptrs[a->n++] = m;
    return m;
}

static char *arena_strdup(pbj_arena *a, const char *s) {
    size_t n = strlen(s);
    char *d = arena_alloc(a, n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

void pbj_arena_free(pbj_arena *a) {
    if (!a) return;
    for (size_t i = 0; i < a->n; i++)
        free(a->ptrs[i]);
    free(a->ptrs);
    a->ptrs = NULL;
    a->n = a->cap = 0;
}

static int is_named(const ProtobufCMessageDescriptor *d, const char *name) {
    return strcmp(d->name, name) == 0;
}

/* ---- JSON → message ------------------------------------------------------------------------- */

static int value_from_json(const json_t *v, pbj_arena *a, Google__Protobuf__Value **out,
                           chord_err *err);

static int struct_from_json(const json_t *obj, pbj_arena *a, Google__Protobuf__Struct **out,
                            chord_err *err) {
    Google__Protobuf__Struct *s = arena_alloc(a, sizeof *s);
    if (!s) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    google__protobuf__struct__init(s);
    size_t n = json_object_size(obj);
    if (n) {
        s->fields = arena_alloc(a, n * sizeof *s->fields);
        if (!s->fields) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)obj, key, v) {
        Google__Protobuf__Struct__FieldsEntry *e = arena_alloc(a, sizeof *e);
        if (!e) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        google__protobuf__struct__fields_entry__init(e);
        e->key = arena_strdup(a, key);
        if (!e->key) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        if (value_from_json(v, a, &e->value, err)) return chord_err_prefix(err, "%s", key);
        s->fields[s->n_fields++] = e;
    }
    *out = s;
    return 0;
}

static int list_from_json(const json_t *arr, pbj_arena *a, Google__Protobuf__ListValue **out,
                          chord_err *err) {
    Google__Protobuf__ListValue *l = arena_alloc(a, sizeof *l);
    if (!l) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    google__protobuf__list_value__init(l);
    size_t n = json_array_size(arr);
    if (n) {
        l->values = arena_alloc(a, n * sizeof *l->values);
        if (!l->values) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) {
        if (value_from_json(v, a, &l->values[i], err)) return chord_err_prefix(err, "[%zu]", i);
        l->n_values++;
    }
    *out = l;
    return 0;
}

static int value_from_json(const json_t *v, pbj_arena *a, Google__Protobuf__Value **out,
                           chord_err *err) {
    Google__Protobuf__Value *p = arena_alloc(a, sizeof *p);
    if (!p) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    google__protobuf__value__init(p);
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        if (struct_from_json(v, a, &p->struct_value, err)) return -1;
        break;
    case JSON_ARRAY:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        if (list_from_json(v, a, &p->list_value, err)) return -1;
        break;
    case JSON_STRING:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        p->string_value = arena_strdup(a, json_string_value(v));
        if (!p->string_value) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        break;
    case JSON_INTEGER:
    case JSON_REAL:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        p->number_value = json_number_value(v);
        break;
    case JSON_TRUE:
    case JSON_FALSE:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        p->bool_value = json_is_true(v);
        break;
    case JSON_NULL:
        p->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        p->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        break;
    }
    *out = p;
    return 0;
}

static int message_from_json(const ProtobufCMessageDescriptor *d, const json_t *v, pbj_arena *a,
                             ProtobufCMessage **out, chord_err *err);

/* Size of one element of a repeated field of this type in protobuf-c's layout. */
static size_t element_size(ProtobufCType t) {
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return 4;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

static int whole(const json_t *v, int64_t *out) {
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double x = json_real_value(v);
        if (x == floor(x) && fabs(x) <= 9007199254740992.0) {
            *out = (int64_t)x;
            return 1;
        }
    }
    return 0;
}

/* Writes JSON value v into the field's storage at p (one element). */
static int scalar_from_json(const ProtobufCFieldDescriptor *f, const json_t *v, pbj_arena *a,
                            void *p, chord_err *err) {
    int64_t i = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        if (!whole(v, &i) || i < INT32_MIN || i > INT32_MAX) goto mismatch;
        *(int32_t *)p = (int32_t)i;
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (!whole(v, &i) || i < 0 || i > UINT32_MAX) goto mismatch;
        *(uint32_t *)p = (uint32_t)i;
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (!whole(v, &i)) goto mismatch;
        *(int64_t *)p = i;
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (!whole(v, &i) || i < 0) goto mismatch;
        *(uint64_t *)p = (uint64_t)i;
        return 0;
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!json_is_number(v)) goto mismatch;
        *(double *)p = json_number_value(v);
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
        if (!json_is_number(v)) goto mismatch;
        *(float *)p = (float)json_number_value(v);
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (!json_is_boolean(v)) goto mismatch;
        *(protobuf_c_boolean *)p = json_is_true(v);
        return 0;
    case PROTOBUF_C_TYPE_STRING: {
        char num[64];
        const char *s;
        if (json_is_string(v)) {
            s = json_string_value(v);
        } else if (json_is_integer(v)) {
            snprintf(num, sizeof num, "%" PRId64, (int64_t)json_integer_value(v));
            s = num;
        } else if (json_is_real(v)) {
            snprintf(num, sizeof num, "%.17g", json_real_value(v));
            s = num;
        } else {
            goto mismatch;
        }
        char *d = arena_strdup(a, s);
        if (!d) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        *(char **)p = d;
        return 0;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(v)) goto mismatch;
        size_t n = json_string_length(v);
        ProtobufCBinaryData *b = p;
        b->data = arena_alloc(a, n);
        if (!b->data) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        memcpy(b->data, json_string_value(v), n);
        b->len = n;
        return 0;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        return message_from_json(f->descriptor, v, a, (ProtobufCMessage **)p, err);
    case PROTOBUF_C_TYPE_ENUM:
        break;
    }
mismatch:
    return chord_err_setc(err, CHORD_E_INTERNAL, "%s: JSON %s does not fit the proto field",
                          f->name,
                          json_is_string(v)   ? "string"
                          : json_is_number(v) ? "number"
                          : json_is_object(v) ? "object"
                          : json_is_array(v)  ? "array"
                                              : "value");
}

/* Fills message m's fields from the JSON object v. */
static int fields_from_json(const ProtobufCMessageDescriptor *d, const json_t *v, pbj_arena *a,
                            ProtobufCMessage *m, chord_err *err) {
    if (!json_is_object(v)) return chord_err_setc(err, CHORD_E_INTERNAL, "expected an object");
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        json_t *fv = json_object_get(v, f->name);
        if (!fv || json_is_null(fv)) continue;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!json_is_array(fv))
                return chord_err_setc(err, CHORD_E_INTERNAL, "%s: expected an array", f->name);
            size_t n = json_array_size(fv), es = element_size(f->type);
            char *arr = n ? arena_alloc(a, n * es) : NULL;
            if (n && !arr) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
            for (size_t i = 0; i < n; i++)
                if (scalar_from_json(f, json_array_get(fv, i), a, arr + i * es, err))
                    return chord_err_prefix(err, "%s[%zu]", f->name, i);
            MEMBER(size_t, m, f->quantifier_offset) = n;
            MEMBER(void *, m, f->offset) = arr;
            continue;
        }
        if (scalar_from_json(f, fv, a, (char *)m + f->offset, err))
            return f->type == PROTOBUF_C_TYPE_MESSAGE ? chord_err_prefix(err, "%s", f->name) : -1;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
            MEMBER(uint32_t, m, f->quantifier_offset) = f->id;
    }
    return 0;
}

static int message_from_json(const ProtobufCMessageDescriptor *d, const json_t *v, pbj_arena *a,
                             ProtobufCMessage **out, chord_err *err) {
    *out = NULL;
    if (is_named(d, "google.protobuf.Struct")) {
        if (!json_is_object(v))
            return chord_err_setc(err, CHORD_E_INTERNAL, "expected a JSON object");
        return struct_from_json(v, a, (Google__Protobuf__Struct **)out, err);
    }
    if (is_named(d, "google.protobuf.Value"))
        return value_from_json(v, a, (Google__Protobuf__Value **)out, err);
    if (is_named(d, "google.protobuf.ListValue")) {
        if (!json_is_array(v)) return chord_err_setc(err, CHORD_E_INTERNAL, "expected an array");
        return list_from_json(v, a, (Google__Protobuf__ListValue **)out, err);
    }
    ProtobufCMessage *m = arena_alloc(a, d->sizeof_message);
    if (!m) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    d->message_init(m);
    json_t *wrap = NULL;
    if (is_named(d, "chord.v1.Conversation")) {
        /* a bare JSON array of its one repeated field */
        if (!json_is_array(v)) return chord_err_setc(err, CHORD_E_INTERNAL, "expected an array");
        wrap = json_pack("{s:O}", d->fields[0].name, v);
        if (!wrap) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        v = wrap;
    }
    int rc = fields_from_json(d, v, a, m, err);
    json_decref(wrap);
    if (rc) return -1;
    *out = m;
    return 0;
}

int pbj_from_json(const ProtobufCMessageDescriptor *d, const json_t *obj, pbj_arena *a,
                  ProtobufCMessage **out, chord_err *err) {
    return message_from_json(d, obj, a, out, err);
}

/* ---- message → JSON ------------------------------------------------------------------------- */

static json_t *struct_to_json(const Google__Protobuf__Struct *s);
static json_t *list_to_json(const Google__Protobuf__ListValue *l);

static json_t *number_json(double x) {
    if (isfinite(x) && x == floor(x) && fabs(x) <= 9007199254740992.0)
        return json_integer((json_int_t)x);
    return json_real(x); /* NULL for NaN / infinities: JSON has none */
}

static json_t *value_to_json(const Google__Protobuf__Value *v) {
    if (!v) return json_null();
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return number_json(v->number_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return json_string(v->string_value ? v->string_value : "");
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return json_boolean(v->bool_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return struct_to_json(v->struct_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return list_to_json(v->list_value);
    default:
        return json_null();
    }
}

static json_t *struct_to_json(const Google__Protobuf__Struct *s) {
    json_t *o = json_object();
    if (!o || !s) return o;
    for (size_t i = 0; i < s->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *e = s->fields[i];
        json_t *v = value_to_json(e->value);
        if (!v || json_object_set_new(o, e->key ? e->key : "", v)) {
            json_decref(o);
            return NULL;
        }
    }
    return o;
}

static json_t *list_to_json(const Google__Protobuf__ListValue *l) {
    json_t *a = json_array();
    if (!a || !l) return a;
    for (size_t i = 0; i < l->n_values; i++) {
        if (json_array_append_new(a, value_to_json(l->values[i]))) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

static json_t *message_to_json(const ProtobufCMessage *m);

/* One element at p as JSON; *skip = 1 when it is the proto3 default (singular fields only). */
static json_t *element_to_json(const ProtobufCFieldDescriptor *f, const void *p, int *skip) {
    *skip = 0;
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        *skip = *(const int32_t *)p == 0;
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        *skip = *(const uint32_t *)p == 0;
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        *skip = *(const int64_t *)p == 0;
        return json_integer(*(const int64_t *)p);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64: {
        uint64_t u = *(const uint64_t *)p;
        *skip = u == 0;
        /* jansson integers are signed 64-bit: larger values are reals */
        return u <= INT64_MAX ? json_integer((json_int_t)u) : json_real((double)u);
    }
    case PROTOBUF_C_TYPE_FLOAT:
        *skip = *(const float *)p == 0;
        return json_real(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        *skip = *(const double *)p == 0;
        return json_real(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        *skip = !*(const protobuf_c_boolean *)p;
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        *skip = !s || !*s;
        return json_string(s ? s : "");
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *b = p;
        *skip = b->len == 0;
        return json_stringn_nocheck((const char *)b->data, b->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        *skip = sub == NULL;
        return sub ? message_to_json(sub) : json_null();
    }
    }
    return NULL;
}

static json_t *message_to_json(const ProtobufCMessage *m) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (is_named(d, "google.protobuf.Struct"))
        return struct_to_json((const Google__Protobuf__Struct *)m);
    if (is_named(d, "google.protobuf.Value"))
        return value_to_json((const Google__Protobuf__Value *)m);
    if (is_named(d, "google.protobuf.ListValue"))
        return list_to_json((const Google__Protobuf__ListValue *)m);
    json_t *o = json_object();
    if (!o) return NULL;
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        json_t *v = NULL;
        int skip = 0;
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = CMEMBER(size_t, m, f->quantifier_offset);
            if (n == 0) continue;
            const char *arr = CMEMBER(char *, m, f->offset);
            size_t es = element_size(f->type);
            v = json_array();
            for (size_t i = 0; v && i < n; i++) {
                int ignored;
                if (json_array_append_new(v, element_to_json(f, arr + i * es, &ignored))) {
                    json_decref(v);
                    v = NULL;
                }
            }
        } else {
            int oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
            if (oneof && CMEMBER(uint32_t, m, f->quantifier_offset) != f->id) continue;
            v = element_to_json(f, (const char *)m + f->offset, &skip);
            if (skip && !oneof) {
                json_decref(v);
                continue;
            }
        }
        if (!v || json_object_set_new(o, f->name, v)) {
            json_decref(o);
            return NULL;
        }
    }
    if (is_named(d, "chord.v1.Conversation")) {
        json_t *arr = json_object_get(o, d->fields[0].name);
        arr = arr ? json_incref(arr) : json_array();
        json_decref(o);
        return arr;
    }
    return o;
}

json_t *pbj_to_json(const ProtobufCMessage *m) {
    return message_to_json(m);
}

int pbj_pack(const ProtobufCMessage *m, unsigned char **buf, size_t *len, chord_err *err) {
    size_t n = protobuf_c_message_get_packed_size(m);
    unsigned char *b = malloc(n ? n : 1);
    if (!b) return chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    *len = protobuf_c_message_pack(m, b);
    *buf = b;
    return 0;
}

/* ---- reading requests ------------------------------------------------------------------------ */

static int read_varint(const uint8_t *p, size_t n, size_t *i, uint64_t *out) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && *i < n; shift += 7) {
        uint8_t b = p[(*i)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    return -1;
}

/* Walks the wire bytes of a d, following the fields d says are messages, and refuses nesting
 * deeper than PBJ_MAX_DEPTH (the recursion is bounded by that limit). Bytes that do not parse
 * are left for protobuf-c to refuse. field: the top-level field being walked, for the message. */
static int check_depth(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t n, int depth,
                       const char *field, chord_err *err) {
    size_t i = 0;
    while (i < n) {
        uint64_t tag, v;
        if (read_varint(p, n, &i, &tag)) return 0;
        unsigned wire = (unsigned)(tag & 7);
        if (wire == 0) {
            if (read_varint(p, n, &i, &v)) return 0;
        } else if (wire == 1 || wire == 5) {
            size_t w = wire == 1 ? 8 : 4;
            if (n - i < w) return 0;
            i += w;
        } else if (wire == 2) {
            if (read_varint(p, n, &i, &v) || v > n - i) return 0;
            const ProtobufCFieldDescriptor *f =
                tag >> 3 <= UINT32_MAX
                    ? protobuf_c_message_descriptor_get_field(d, (unsigned)(tag >> 3))
                    : NULL;
            if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                const char *name = depth == 0 ? f->name : field;
                if (depth + 1 >= PBJ_MAX_DEPTH)
                    return chord_err_set(err, "%s: nested deeper than %d levels", name,
                                         PBJ_MAX_DEPTH);
                if (check_depth(f->descriptor, p + i, (size_t)v, depth + 1, name, err)) return -1;
            }
            i += (size_t)v;
        } else {
            return 0; /* groups and invalid wire types: protobuf-c refuses them */
        }
    }
    return 0;
}

static int check_value(const Google__Protobuf__Value *v, chord_err *err);

static int check_struct(const Google__Protobuf__Struct *s, chord_err *err) {
    for (size_t i = 0; s && i < s->n_fields; i++) {
        const char *key = s->fields[i]->key ? s->fields[i]->key : "";
        if (!chord_utf8_valid(key, strlen(key)))
            return chord_err_set(err, "a key is not valid UTF-8");
        if (check_value(s->fields[i]->value, err)) return chord_err_prefix(err, "%s", key);
    }
    return 0;
}

static int check_value(const Google__Protobuf__Value *v, chord_err *err) {
    if (!v) return 0;
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        if (!isfinite(v->number_value))
            return chord_err_set(err, "must be a finite number (JSON has no NaN or infinity)");
        return 0;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        if (v->string_value && !chord_utf8_valid(v->string_value, strlen(v->string_value)))
            return chord_err_set(err, "not valid UTF-8");
        return 0;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return check_struct(v->struct_value, err);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        for (size_t i = 0; v->list_value && i < v->list_value->n_values; i++)
            if (check_value(v->list_value->values[i], err))
                return chord_err_prefix(err, "[%zu]", i);
        return 0;
    default:
        return 0;
    }
}

static int check_message(const ProtobufCMessage *m, chord_err *err);

/* One element of field f at p. */
static int check_element(const ProtobufCFieldDescriptor *f, const void *p, chord_err *err) {
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(char *const *)p;
        if (s && !chord_utf8_valid(s, strlen(s))) return chord_err_set(err, "not valid UTF-8");
        return 0;
    }
    case PROTOBUF_C_TYPE_DOUBLE:
        if (!isfinite(*(const double *)p))
            return chord_err_set(err, "must be a finite number (JSON has no NaN or infinity)");
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
        if (!isfinite(*(const float *)p))
            return chord_err_set(err, "must be a finite number (JSON has no NaN or infinity)");
        return 0;
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(ProtobufCMessage *const *)p;
        return sub ? check_message(sub, err) : 0;
    }
    default:
        return 0;
    }
}

static int check_message(const ProtobufCMessage *m, chord_err *err) {
    const ProtobufCMessageDescriptor *d = m->descriptor;
    if (is_named(d, "google.protobuf.Struct"))
        return check_struct((const Google__Protobuf__Struct *)m, err);
    if (is_named(d, "google.protobuf.Value"))
        return check_value((const Google__Protobuf__Value *)m, err);
    for (unsigned k = 0; k < d->n_fields; k++) {
        const ProtobufCFieldDescriptor *f = &d->fields[k];
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            size_t n = CMEMBER(size_t, m, f->quantifier_offset);
            const char *arr = CMEMBER(char *, m, f->offset);
            size_t es = element_size(f->type);
            for (size_t i = 0; i < n; i++)
                if (check_element(f, arr + i * es, err))
                    return chord_err_prefix(err, "%s[%zu]", f->name, i);
            continue;
        }
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            CMEMBER(uint32_t, m, f->quantifier_offset) != f->id)
            continue;
        if (check_element(f, (const char *)m + f->offset, err))
            return chord_err_prefix(err, "%s", f->name);
    }
    return 0;
}

int pbj_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
               ProtobufCMessage **out, chord_err *err) {
    *out = NULL;
    if (check_depth(d, data, len, 0, "request", err)) return -1;
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, len, data);
    if (!m) return chord_err_set(err, "request: not a valid %s protobuf message", d->name);
    if (check_message(m, err)) {
        protobuf_c_message_free_unpacked(m, NULL);
        return -1;
    }
    *out = m;
    return 0;
}
