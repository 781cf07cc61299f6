/* fuzz_grpc.c — protobuf request decoding as the gRPC transport does it (api/grpc): the bytes of
 * a request unpacked by protobuf-c with the method's descriptor from the real method table
 * (api_grpc_methods; UploadDataset's chunk message for client streams), then turned into the
 * service's JSON (pbj_to_json, as CreateJob, RegisterModel and Rollout do), that JSON built back
 * into a message (pbj_from_json, the responses' path) and packed. First byte: the method. */
#include <jansson.h>

#include "api/grpc/grpc_internal.h"
#include "api/grpc/pbjson.h"
#include "chord.pb-c.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const gmethod *m = &api_grpc_methods[data[0] % api_grpc_n_methods];
    const ProtobufCMessageDescriptor *d =
        m->request ? m->request : &chord__v1__upload_dataset_request__descriptor;
    ProtobufCMessage *req = protobuf_c_message_unpack(d, NULL, size - 1, data + 1);
    if (!req) return 0;
    json_t *doc = pbj_to_json(req);
    if (doc) {
        char *text = json_dumps(doc, JSON_COMPACT);
        free(text);
        pbj_arena arena = {0};
        ProtobufCMessage *back = NULL;
        chord_err err = {0};
        if (pbj_from_json(d, doc, &arena, &back, &err) == 0) {
            unsigned char *buf = NULL;
            size_t len = 0;
            chord_err e2 = {0};
            if (pbj_pack(back, &buf, &len, &e2) == 0) free(buf);
        }
        pbj_arena_free(&arena);
        json_decref(doc);
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return 0;
}
