/* tokenizer_default.c — the embedded default tokenizer of the demo models (tok_load_default):
 * default_tokenizer/tokenizer.json and tokenizer_config.json, a 1024-token byte-level BPE trained
 * by `chordd tokenizer train` on default_tokenizer/corpus.txt. The files are the source: the
 * build embeds their bytes (cmake/ChordEmbed.cmake, server/CMakeLists.txt), so retraining is
 * rewriting the files and rebuilding. Only the embedded data and its accessors live here. */
#include "server/model/tokenizer.h"

/* generated into the build tree: default_tokenizer_json[], default_config_json[], each the
 * file's bytes and a NUL */
#include "embedded/default_tokenizer.h"

int tok_load_default(tok_tokenizer **out, chord_err *err) {
    if (tok_load_from_memory((const char *)default_tokenizer_json,
                             sizeof default_tokenizer_json - 1, (const char *)default_config_json,
                             sizeof default_config_json - 1, out, err))
        return chord_err_prefix(err, "the embedded default tokenizer");
    return 0;
}

const char *tok_default_tokenizer_json(size_t *len) {
    *len = sizeof default_tokenizer_json - 1;
    return (const char *)default_tokenizer_json;
}

const char *tok_default_config_json(size_t *len) {
    *len = sizeof default_config_json - 1;
    return (const char *)default_config_json;
}
