/* tokenizer_default.c — placeholder until the default tokenizer is generated. */
#include "server/model/tokenizer.h"

int tok_load_default(tok_tokenizer **out, chord_err *err) {
    *out = NULL;
    return chord_err_set(err, "no default tokenizer yet");
}
