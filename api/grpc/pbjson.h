/* pbjson.h — the one mapping between the service's JSON documents (jansson) and chord.proto's
 * protobuf-c messages, driven by the message descriptors: a proto field maps to the JSON key
 * of the same name, so the gRPC resources equal the REST ones field for field without a line
 * of per-message code.
 *
 * Rules (docs/grpc.md):
 * - google.protobuf.Struct / Value / ListValue map to JSON objects / values / arrays. A JSON
 *   number becomes a double; on the way back a whole double of magnitude <= 2^53 is a JSON
 *   integer again (the service's integer fields stay integers).
 * - chord.v1.Conversation maps to a bare JSON array of its messages (REST's [[...], ...]).
 * - JSON → message (responses): null or a missing key leaves the proto default; a JSON number
 *   in a string field is written as its decimal text; keys without a proto field are ignored.
 * - message → JSON (requests): proto3 defaults ("" / 0 / false / empty repeated / absent
 *   message) are left out, so the service applies its own defaults; a set oneof member is
 *   always written, even when 0.
 *
 * What this is not: no validation of values (the service does that) and no wire encoding
 * (protobuf-c packs and unpacks). */
#ifndef CHORD_API_GRPC_PBJSON_H
#define CHORD_API_GRPC_PBJSON_H

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "server/base/err.h"

/* Every allocation of a message built by pbj_from_json, freed at once. */
typedef struct pbj_arena {
    void **ptrs;
    size_t n, cap;
} pbj_arena;

void pbj_arena_free(pbj_arena *a);

/* Builds a message of type d from the JSON object obj (all memory in the arena; the message
 * lives until pbj_arena_free). CHORD_E_INTERNAL names the field on a type mismatch. */
int pbj_from_json(const ProtobufCMessageDescriptor *d, const json_t *obj, pbj_arena *a,
                  ProtobufCMessage **out, chord_err *err);

/* A new JSON object for message m (requests). NULL on out of memory. */
json_t *pbj_to_json(const ProtobufCMessage *m);

/* How deep request messages may nest (a Struct inside a Value inside a ListValue ... counts
 * one level each): protobuf-c unpacks recursively, so a few hundred kilobytes of nesting would
 * otherwise overflow a thread's stack. 100 levels is 50 levels of JSON. */
#define PBJ_MAX_DEPTH 100

/* Unpacks a request of type d from the wire (the one way the gRPC transport reads requests):
 * nesting over PBJ_MAX_DEPTH, bytes that are not a d, a string that is not UTF-8, a double (a
 * Struct's number too) that is NaN or infinite: CHORD_E_INVALID naming the field, as the REST
 * transport's JSON parser refuses the same input. *out is freed with
 * protobuf_c_message_free_unpacked. */
int pbj_unpack(const ProtobufCMessageDescriptor *d, const uint8_t *data, size_t len,
               ProtobufCMessage **out, chord_err *err);

/* Packs m into a malloc'd buffer (*buf, *len). */
int pbj_pack(const ProtobufCMessage *m, unsigned char **buf, size_t *len, chord_err *err);

#endif
