/* fuzz_tinker.c — the Tinker API's forward_backward request (api/tinker/tinker_pb.h): the bytes
 * decoded as the HTTP route does (tk_pb_decode_fb_request), then what the service does with a
 * decoded request before the model runs: the loss named by the request parsed with its config
 * (tk_loss_parse), each datum checked against it (tk_loss_check, vocabulary 1024), the loss of
 * each checked datum computed on made-up log-probs (tk_loss_datum) and the metrics and an
 * answer of the same shape encoded (tk_loss_metrics, tk_pb_encode_fb_output). */
#include <stdlib.h>
#include <string.h>

#include "api/tinker/tinker_pb.h"
#include "server/tinker/tinker_loss.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    tk_fb_request fb = {0};
    chord_err err = {0};
    if (tk_pb_decode_fb_request(data, size, &fb, &err) != 0) return 0;
    tk_loss_config lc;
    tk_fb_output out = {0};
    if (tk_loss_parse(fb.loss_fn ? fb.loss_fn : "", fb.config, fb.n_config, &lc, &err) == 0) {
        size_t nd = fb.n_data ? fb.n_data : 1;
        out.logprobs = calloc(nd, sizeof *out.logprobs);
        out.elementwise_loss = calloc(nd, sizeof *out.elementwise_loss);
        out.lens = calloc(nd, sizeof *out.lens);
        tk_loss_stats st = {0};
        for (size_t i = 0; out.lens && out.logprobs && out.elementwise_loss && i < fb.n_data;
             i++) {
            const tk_datum *d = &fb.data[i];
            if (tk_loss_check(&lc, d, i, 1024, &err) != 0 || d->n_tokens > (1u << 20)) continue;
            size_t n = d->n_tokens ? d->n_tokens : 1;
            float *lp = malloc(n * sizeof *lp), *dlp = malloc(n * sizeof *dlp);
            out.logprobs[i] = malloc(n * sizeof(float));
            out.elementwise_loss[i] = malloc(n * sizeof(float));
            if (lp && dlp && out.logprobs[i] && out.elementwise_loss[i]) {
                for (size_t k = 0; k < d->n_tokens; k++) lp[k] = -0.25f * (float)(k % 13);
                memcpy(out.logprobs[i], lp, d->n_tokens * sizeof(float));
                tk_loss_datum(&lc, d, lp, d->n_tokens, out.elementwise_loss[i], dlp, &st);
                out.lens[i] = d->n_tokens;
            } else {
                free(out.logprobs[i]), free(out.elementwise_loss[i]);
                out.logprobs[i] = out.elementwise_loss[i] = NULL;
            }
            free(lp), free(dlp);
        }
        for (size_t i = 0; out.lens && i < fb.n_data; i++) /* the encoder wants every datum */
            if (!out.logprobs[i] || !out.elementwise_loss[i]) {
                free(out.logprobs[i]), free(out.elementwise_loss[i]);
                out.logprobs[i] = calloc(1, sizeof(float));
                out.elementwise_loss[i] = calloc(1, sizeof(float));
                out.lens[i] = 0;
            }
        out.n_data = out.lens ? fb.n_data : 0;
        if (out.lens && tk_loss_metrics(&lc, &st, &out, &err) == 0) {
            uint8_t *buf = NULL;
            size_t len = 0;
            if (tk_pb_encode_fb_output(&out, &buf, &len, &err) == 0) free(buf);
        }
        tk_fb_output_free(&out);
    }
    tk_fb_request_free(&fb);
    return 0;
}
