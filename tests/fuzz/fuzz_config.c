/* fuzz_config.c — a Hugging Face config.json (server/model/config.h: model_config_parse); an
 * accepted config is written back (model_config_to_json), re-read, and its derived figures
 * (parameter count, RoPE frequencies) computed. */
#include "server/model/config.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_cstring(data, size);
    model_config cfg;
    chord_err err = {0};
    if (model_config_parse(text, &cfg, &err) == 0) {
        char *again = model_config_to_json(&cfg);
        if (again) {
            model_config cfg2;
            chord_err err2 = {0};
            if (model_config_parse(again, &cfg2, &err2) != 0) {
                fprintf(stderr, "written config does not parse: %s\n%s\n", err2.msg, again);
                abort();
            }
            free(again);
        }
        (void)model_config_num_params(&cfg);
        int head_dim = cfg.head_dim;
        if (head_dim > 0 && head_dim <= 1 << 16) {
            float *inv_freq = malloc((size_t)(head_dim / 2 + 1) * sizeof *inv_freq);
            if (!inv_freq) abort();
            model_config_rope_inv_freq(&cfg, inv_freq);
            free(inv_freq);
        }
    }
    free(text);
    return 0;
}
