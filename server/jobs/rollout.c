/* rollout.c — jobs_rollout_generate (rollout.h): answers one POST /v1/rollouts request with the
 * same engine the trainer samples with (server/train/rollout.h), so a completion's log-probs are
 * the numbers a training step would compute on those weights.
 *
 * The model is the running job's live model when the request names that job without a step,
 * else it is loaded from the request's checkpoint or model directory (or created from a
 * random-init config). Not here: validation of the request (the service did it). */
#include "server/jobs/rollout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/model/chat.h"
#include "server/model/config.h"
#include "server/model/model.h"
#include "server/model/tokenizer.h"
#include "server/train/reward.h"
#include "server/train/rollout.h"
#include "server/train/trainer.h"

static const char *jstr(const json_t *o, const char *k) {
    const json_t *v = json_object_get(o, k);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static double jnum(const json_t *o, const char *k, double dflt) {
    const json_t *v = json_object_get(o, k);
    return json_is_number(v) ? json_number_value(v) : dflt;
}

/* Where the request's model comes from: the running job's live model (*live set), or weights
 * from a checkpoint or model directory (*weights_dir), or a random-init config; *mc gets its
 * config either way, before anything is loaded. */
static int model_source(const json_t *req, void *live_model, const char *live_job_id, model **live,
                        const char **weights_dir, model_config *mc, chord_err *err) {
    const char *ckpt = jstr(req, "checkpoint_dir"), *dir = jstr(req, "model_dir");
    const char *job = jstr(req, "job_id");
    const json_t *init = json_object_get(req, "model_init");
    *live = NULL;
    *weights_dir = ckpt ? ckpt : dir;
    if (live_model && job && live_job_id && !strcmp(job, live_job_id) && !ckpt) {
        *live = live_model;
        *mc = (*live)->cfg;
        return 0;
    }
    if (*weights_dir)
        return model_config_load(*weights_dir, mc, err) ? chord_err_prefix(err, "model") : 0;
    if (json_is_object(init))
        return model_config_from_json(init, mc, err) ? chord_err_prefix(err, "model_init") : 0;
    return chord_err_set(err, "rollout: no model, checkpoint or init config");
}

/* Loads (or creates) the model model_source chose; *owned is freed by the caller. */
static int open_model(const json_t *req, ops_ctx *ops, const char *weights_dir,
                      const model_config *mc, model **owned, chord_err *err) {
    if (weights_dir)
        return model_load(weights_dir, ops, owned, err) ? chord_err_prefix(err, "model") : 0;
    if (model_create(mc, ops, owned, err) != 0) return -1;
    if (model_init_random(*owned, (uint64_t)jnum(req, "seed", 0), err) != 0) {
        model_free(*owned);
        *owned = NULL;
        return -1;
    }
    return 0;
}

static int open_tokenizer(const json_t *req, const char *weights_dir, tok_tokenizer **tok,
                          chord_err *err) {
    const char *tdir = jstr(req, "tokenizer_dir");
    char probe[4096 + 32];
    if (!tdir && weights_dir) {
        snprintf(probe, sizeof probe, "%s/tokenizer.json", weights_dir);
        if (chord_is_file(probe)) tdir = weights_dir;
    }
    if (tdir) return tok_load(tdir, tok, err) ? chord_err_prefix(err, "tokenizer") : 0;
    return tok_load_default(tok, err) ? chord_err_prefix(err, "tokenizer (embedded default)") : 0;
}

/* Renders prompt i (a string or a message array) with the generation prompt. */
static int encode_prompt(const json_t *item, const tok_tokenizer *tok, const chat_template *tpl,
                         tok_ids *ids, char **user_text, chord_err *err) {
    json_t *view = json_is_string(item) ? json_pack("{s:O}", "prompt", item)
                                        : json_pack("{s:O}", "messages", item);
    chat_message *msgs = NULL;
    size_t n = 0;
    chat_encoding enc;
    memset(&enc, 0, sizeof enc);
    int rc = -1;
    if (!view || chat_messages_from_json(view, &msgs, &n, err) != 0) goto done;
    if (chat_encode(tok, tpl, msgs, n, 1, &enc, err) != 0) goto done;
    *ids = enc.ids;
    memset(&enc.ids, 0, sizeof enc.ids);
    *user_text = NULL;
    for (size_t k = n; k-- > 0;)
        if (!strcmp(msgs[k].role, "user")) {
            *user_text = strdup(msgs[k].content);
            break;
        }
    rc = 0;
done:
    chat_encoding_free(&enc);
    chat_messages_free(msgs, n);
    json_decref(view);
    return rc;
}

int jobs_rollout_generate(const json_t *request, ops_ctx *ops, void *live_model,
                          const char *live_job_id, const mem_budget *budget, json_t **result,
                          chord_err *err) {
    *result = NULL;
    const json_t *prompts = json_object_get(request, "prompts");
    if (!json_is_array(prompts)) prompts = json_object_get(request, "messages");
    if (!json_is_array(prompts) || json_array_size(prompts) == 0)
        return chord_err_set(err, "rollout: prompts or messages required");
    int n_prompts = (int)json_array_size(prompts);
    model *m = NULL, *owned = NULL;
    const char *weights_dir = NULL;
    model_config mc;
    if (model_source(request, live_model, live_job_id, &m, &weights_dir, &mc, err) != 0) return -1;
    int rc = -1;
    tok_tokenizer *tok = NULL;
    reward_verifier *verifier = NULL;
    rollout_engine *engine = NULL;
    rollout_result rr = {0};
    tok_ids *ids = calloc((size_t)n_prompts, sizeof *ids);
    char **texts = calloc((size_t)n_prompts, sizeof *texts);
    const int32_t **pids = calloc((size_t)n_prompts, sizeof *pids);
    int *plens = calloc((size_t)n_prompts, sizeof *plens);
    json_t *completions = json_array();
    if (!ids || !texts || !pids || !plens || !completions) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    if (open_tokenizer(request, weights_dir, &tok, err) != 0) goto done;
    chat_template tpl;
    if (trainer_chat_template(tok, &tpl, err) != 0) goto done;
    for (int i = 0; i < n_prompts; i++) {
        if (encode_prompt(json_array_get(prompts, (size_t)i), tok, &tpl, &ids[i], &texts[i],
                          err) != 0) {
            chord_err_prefix(err, "prompts[%d]", i);
            goto done;
        }
        pids[i] = ids[i].ids;
        plens[i] = (int)ids[i].n;
    }
    int longest = 0;
    for (int i = 0; i < n_prompts; i++)
        if (plens[i] > longest) longest = plens[i];
    mem_estimate need;
    mem_estimate_rollout(&mc, n_prompts, jnum(request, "n", 1), longest,
                         jnum(request, "max_tokens", 256), m == NULL, &need);
    if (mem_estimate_check(&need, budget, err) != 0) goto done;
    if (!m) {
        if (open_model(request, ops, weights_dir, &mc, &owned, err) != 0) goto done;
        m = owned;
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
    int32_t stops[16];
    int n_stop = trainer_stop_ids(m, tok, stops, 16);
    rollout_params rp = {.group_size = (int)jnum(request, "n", 1),
                         .temperature = (float)jnum(request, "temperature", 1.0),
                         .top_p = (float)jnum(request, "top_p", 1.0),
                         .max_new_tokens = (int)jnum(request, "max_tokens", 256),
                         .stop_ids = stops,
                         .n_stop = n_stop,
                         .seed = (uint64_t)jnum(request, "seed", 0),
                         .stream = 0};
    if (!(engine = rollout_engine_new(m))) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    if (rollout_generate(engine, pids, plens, n_prompts, &rp, &rr, err) != 0) goto done;
    for (int i = 0; i < rr.n; i++) {
        const rollout_seq *q = &rr.seq[i];
        char *text = NULL;
        if (trainer_decode_response(tok, q->tokens, q->len, &text, err) != 0) goto done;
        size_t tlen = strlen(text);
        json_t *tids = json_array(), *lps = json_array(), *pt = json_array();
        for (int t = 0; t < plens[q->prompt]; t++)
            json_array_append_new(pt, json_integer(pids[q->prompt][t]));
        for (int t = 0; t < q->len; t++) {
            json_array_append_new(tids, json_integer(q->tokens[t]));
            json_array_append_new(lps, json_real(q->logp[t]));
        }
        json_t *c = json_pack("{s:i, s:i, s:s%, s:o, s:o, s:o, s:s}", "prompt_index", q->prompt,
                              "index", i % rp.group_size, "text", text ? text : "", tlen,
                              "prompt_token_ids", pt, "token_ids", tids, "logprobs", lps,
                              "finish_reason", q->stopped ? "stop" : "length");
        if (c && verifier) {
            const json_t *a = json_array_get(answers, (size_t)q->prompt);
            char *ans = json_is_string(a) ? strdup(json_string_value(a))
                        : a                ? json_dumps(a, JSON_ENCODE_ANY)
                                           : NULL;
            reward_result res;
            reward_score(verifier, texts[q->prompt], text ? text : "", ans, q->truncated != 0,
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
    for (int i = 0; ids && i < n_prompts; i++) tok_ids_free(&ids[i]);
    for (int i = 0; texts && i < n_prompts; i++) free(texts[i]);
    free(ids);
    free(texts);
    free(pids);
    free(plens);
    tok_free(tok);
    model_free(owned);
    return rc;
}
