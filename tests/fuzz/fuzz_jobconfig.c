/* fuzz_jobconfig.c — the job document (jobconfig_parse), and the resolved document of any
 * document it accepts (jobconfig_to_json). */
#include <jansson.h>

#include "server/train/jobconfig.h"
#include "tests/fuzz/fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = fuzz_cstring(data, size);
    job_config cfg;
    chord_err err = {0};
    if (jobconfig_parse(text, &cfg, &err) == 0) {
        json_t *doc = jobconfig_to_json(&cfg);
        /* the resolved document parses again */
        if (doc) {
            job_config again;
            chord_err err2 = {0};
            if (jobconfig_from_json(doc, &again, &err2) == 0) jobconfig_free(&again);
            json_decref(doc);
        }
        jobconfig_free(&cfg);
    }
    free(text);
    return 0;
}
