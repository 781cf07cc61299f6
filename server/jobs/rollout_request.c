/* rollout_request.c — jobs_rollout_generate (rollout_request.h): answers one POST /v1/rollouts
 * request with the same engine the trainer samples with (server/train/rollout.h), so a completion's
 * log-probs are the numbers a training step would compute on those weights.
 *
 * The model is the running job's live model when the request names that job without a step,
 * else it is loaded from the request's checkpoint or model directory (or created from a
 * random-init config), the way every model is opened (server/train/bootstrap.h); prompts and
 * answers are read by the dataset record rules (server/train/dataset.h), so a rollout sees the
 * same prompt and ground truth a training step would. Not here: validation of the request (the
 * service did it, with the same rules). */
#include "server/jobs/rollout_request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/json_field.h"
#include "server/model/chat.h"
#include "server/model/tokenizer.h"
#include "server/train/bootstrap.h"
#include "server/train/dataset.h"
#include "server/train/reward.h"
#include "server/train/rollout.h"
#include "server/train/trainer.h"

/* The prompts of the request as token ids, rendered with the model's chat template and the
 * generation prompt; filled by encode_prompts (bootstrap_spec.before_load), which then checks
 * the request against the device memory with the real prompt lengths, before the weights are
 * loaded. */
typedef struct request_prompts {
    const json_t *request;
    const json_t *items; /* "prompts" (strings) or "messages" (conversations) */
    int n;
    const mem_budget *budget;
    int live; /* the model is already in memory: only its run state is new */
    tok_ids *ids;
    char **texts; /* what a verifier sees as the prompt (ds_prompt_text) */
} request_prompts;

static int encode_prompts(void *user, const model_config *mc, const tok_tokenizer *tok,
                          const chat_template *tpl, chord_err *err) {
    request_prompts *rp = user;
    int longest = 0;
    for (int i = 0; i < rp->n; i++) {
        chat_message *msgs = NULL;
        size_t n = 0;
        chat_encoding enc;
        memset(&enc, 0, sizeof enc);
        int rc = ds_prompt_messages(json_array_get(rp->items, (size_t)i), &msgs, &n, err);
        if (rc == 0) rc = chat_encode(tok, tpl, msgs, n, 1, &enc, err);
        if (rc == 0) {
            rp->ids[i] = enc.ids;
            memset(&enc.ids, 0, sizeof enc.ids);
            rp->texts[i] = strdup(ds_prompt_text(msgs, n));
            if (!rp->texts[i]) rc = chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
        }
        chat_encoding_free(&enc);
        chat_messages_free(msgs, n);
        if (rc != 0) return chord_err_prefix(err, "prompts[%d]", i);
        if ((int)rp->ids[i].n > longest) longest = (int)rp->ids[i].n;
    }
    mem_estimate need;
    mem_estimate_rollout(mc, rp->n, chord_json_number_or(rp->request, "n", 1), longest,
                         chord_json_number_or(rp->request, "max_tokens", 256), !rp->live, &need);
    return mem_estimate_check(&need, rp->budget, err);
}

/* The text each sampled token adds, one string per token_ids entry (the dashboard's per-token
 * log-prob view): the streaming decoder's pieces with special tokens kept, so they join into the
 * response as sampled; bytes of a character split across tokens go with the token that completes
 * it; an id outside the tokenizer (a padded vocabulary) adds "". NULL when out of memory. */
static json_t *token_pieces(const tok_tokenizer *tok, const int32_t *ids, int n) {
    json_t *pieces = json_array();
    char *buf = NULL;
    size_t cap = 0;
    tok_stream st;
    tok_stream_init(&st, tok, 0);
    for (int i = 0; pieces && i < n; i++) {
        size_t bytes = 0, len = 0;
        if (!tok_id_bytes(tok, ids[i], &bytes)) {
            if (json_array_append_new(pieces, json_string("")) != 0) goto oom;
            continue;
        }
        if (cap < bytes * 3 + 16) {
            char *p = realloc(buf, bytes * 3 + 16);
            if (!p) goto oom;
            buf = p;
            cap = bytes * 3 + 16;
        }
        if (tok_stream_push(&st, ids[i], buf, cap, &len, NULL) != 0) len = 0;
        json_t *piece = json_stringn(buf ? buf : "", len);
        if (!piece) piece = json_string("\xEF\xBF\xBD"); /* not UTF-8 on its own: U+FFFD */
        if (json_array_append_new(pieces, piece) != 0) goto oom;
    }
    if (pieces && n > 0) { /* a character still incomplete at the end: U+FFFD on the last token */
        char tail[8];
        size_t len = 0;
        tok_stream_finish(&st, tail, &len);
        const char *last = json_string_value(json_array_get(pieces, (size_t)n - 1));
        if (len && last) {
            size_t l = strlen(last);
            char *joined = malloc(l + len + 1);
            if (!joined) goto oom;
            memcpy(joined, last, l);
            memcpy(joined + l, tail, len);
            joined[l + len] = '\0';
            json_t *piece = json_string(joined);
            free(joined);
            if (piece) json_array_set_new(pieces, (size_t)n - 1, piece);
        }
    }
    free(buf);
    return pieces;
oom:
    free(buf);
    json_decref(pieces);
    return NULL;
}

int jobs_rollout_generate(const json_t *request, ops_ctx *ops,
                          const struct bootstrap_bases *bases, void *live_model,
                          const char *live_job_id, const mem_budget *budget, json_t **result,
                          chord_err *err) {
    *result = NULL;
    const json_t *prompts = json_object_get(request, "prompts");
    if (!json_is_array(prompts)) prompts = json_object_get(request, "messages");
    if (!json_is_array(prompts) || json_array_size(prompts) == 0)
        return chord_err_set(err, "rollout: prompts or messages required");
    int n_prompts = (int)json_array_size(prompts);
    /* the model: the running job's live model when the request names that job without a
     * checkpoint, else the checkpoint's or the model directory's weights, else a random init */
    const char *ckpt = chord_json_string_or(request, "checkpoint_dir", NULL),
               *job = chord_json_string_or(request, "job_id", NULL);
    int live = live_model && job && live_job_id && !strcmp(job, live_job_id) && !ckpt;
    int rc = -1;
    bootstrap_model boot;
    memset(&boot, 0, sizeof boot);
    reward_verifier *verifier = NULL;
    rollout_engine *engine = NULL;
    rollout_result rr = {0};
    request_prompts rq = {.request = request,
                          .items = prompts,
                          .n = n_prompts,
                          .budget = budget,
                          .live = live,
                          .ids = calloc((size_t)n_prompts, sizeof *rq.ids),
                          .texts = calloc((size_t)n_prompts, sizeof *rq.texts)};
    const int32_t **pids = calloc((size_t)n_prompts, sizeof *pids);
    int *plens = calloc((size_t)n_prompts, sizeof *plens);
    json_t *completions = json_array();
    if (!rq.ids || !rq.texts || !pids || !plens || !completions) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    const json_t *init = json_object_get(request, "model_init");
    bootstrap_spec spec = {.dir = ckpt ? ckpt : chord_json_string_or(request, "model_dir", NULL),
                           .init_config = json_is_object(init) ? init : NULL,
                           .init_seed = (uint64_t)chord_json_number_or(request, "seed", 0),
                           .tokenizer_dir = chord_json_string_or(request, "tokenizer_dir", NULL),
                           .live = live ? live_model : NULL,
                           .before_load = encode_prompts,
                           .user = &rq,
                           .bases = bases};
    if (bootstrap_open(&spec, ops, &boot, err) != 0) goto done;
    model *m = boot.m;
    for (int i = 0; i < n_prompts; i++) {
        pids[i] = rq.ids[i].ids;
        plens[i] = (int)rq.ids[i].n;
    }
    const json_t *answers = json_object_get(request, "answers");
    const json_t *reward = json_object_get(request, "reward");
    if (json_is_array(answers)) {
        json_t *dflt = NULL;
        if (!json_is_object(reward)) reward = dflt = json_pack("{s:s}", "type", "math_boxed");
        int vrc = reward ? reward_verifier_new(reward, &verifier, err) : -1;
        json_decref(dflt);
        if (vrc != 0) goto done;
    }
    rollout_params rp = {.group_size = (int)chord_json_number_or(request, "n", 1),
                         .temperature = (float)chord_json_number_or(request, "temperature", 1.0),
                         .top_p = (float)chord_json_number_or(request, "top_p", 1.0),
                         .max_new_tokens = (int)chord_json_number_or(request, "max_tokens", 256),
                         .stop_ids = boot.stop_ids,
                         .n_stop = boot.n_stop,
                         .seed = (uint64_t)chord_json_number_or(request, "seed", 0),
                         .stream = 0};
    if (!(engine = rollout_engine_new(m))) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    if (rollout_generate(engine, pids, plens, n_prompts, &rp, &rr, err) != 0) goto done;
    for (int i = 0; i < rr.n; i++) {
        const rollout_seq *q = &rr.seq[i];
        char *text = NULL;
        if (trainer_decode_response(boot.tok, q->tokens, q->len, &text, err) != 0) goto done;
        size_t tlen = strlen(text);
        json_t *tids = json_array(), *lps = json_array(), *pt = json_array();
        for (int t = 0; t < plens[q->prompt]; t++)
            json_array_append_new(pt, json_integer(pids[q->prompt][t]));
        for (int t = 0; t < q->len; t++) {
            json_array_append_new(tids, json_integer(q->tokens[t]));
            json_array_append_new(lps, json_real(q->logp[t]));
        }
        json_t *c = json_pack("{s:i, s:i, s:s%, s:o, s:o, s:o*, s:o, s:s}", "prompt_index",
                              q->prompt, "index", i % rp.group_size, "text", text ? text : "", tlen,
                              "prompt_token_ids", pt, "token_ids", tids, "tokens",
                              token_pieces(boot.tok, q->tokens, q->len), "logprobs", lps,
                              "finish_reason", q->stopped ? "stop" : "length");
        if (c && verifier) {
            char *ans = NULL;
            if (ds_answer_text(json_array_get(answers, (size_t)q->prompt), &ans, err) != 0) {
                free(text);
                json_decref(c);
                chord_err_prefix(err, "answers[%d]", q->prompt);
                goto done;
            }
            reward_result res;
            reward_score(verifier, rq.texts[q->prompt], text ? text : "", ans, q->truncated != 0,
                         &res);
            json_object_set_new(c, "reward", json_real(res.reward));
            json_object_set_new(c, "reason", json_string(reward_reason_name(res.reason)));
            free(ans);
        }
        free(text);
        if (!c || json_array_append_new(completions, c) != 0) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
            goto done;
        }
    }
    *result = json_pack("{s:O, s:I, s:f}", "completions", completions, "tokens",
                        (json_int_t)rr.tokens, "seconds", rr.seconds);
    rc = *result ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
done:
    json_decref(completions);
    rollout_result_free(&rr);
    rollout_engine_free(engine);
    reward_verifier_free(verifier);
    for (int i = 0; rq.ids && i < n_prompts; i++)
        tok_ids_free(&rq.ids[i]);
    for (int i = 0; rq.texts && i < n_prompts; i++)
        free(rq.texts[i]);
    free(rq.ids);
    free(rq.texts);
    free(pids);
    free(plens);
    bootstrap_close(&boot);
    return rc;
}
