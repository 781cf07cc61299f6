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
#include "storage/store.h"
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

/* One request of a batch: its prompts, sampling parameters and verifier. */
typedef struct one_request {
    json_t *request; /* a reference */
    char id[STORE_ID_MAX]; /* a joined request's id ("" for the first) */
    request_prompts rq;
    const int32_t **pids;
    int *plens;
    reward_verifier *verifier;
    rollout_params rp;
    int r; /* its index in the batch */
} one_request;

static void request_close(one_request *o) {
    if (!o) return;
    reward_verifier_free(o->verifier);
    for (int i = 0; o->rq.ids && i < o->rq.n; i++)
        tok_ids_free(&o->rq.ids[i]);
    for (int i = 0; o->rq.texts && i < o->rq.n; i++)
        free(o->rq.texts[i]);
    free(o->rq.ids);
    free(o->rq.texts);
    free(o->pids);
    free(o->plens);
    json_decref(o->request);
    memset(o, 0, sizeof *o);
}

static int request_open(one_request *o, const json_t *request, const mem_budget *budget, int live,
                        chord_err *err) {
    memset(o, 0, sizeof *o);
    o->request = json_incref((json_t *)request);
    const json_t *prompts = json_object_get(request, "prompts");
    if (!json_is_array(prompts)) prompts = json_object_get(request, "messages");
    if (!json_is_array(prompts) || json_array_size(prompts) == 0)
        return chord_err_set(err, "rollout: prompts or messages required");
    int n = (int)json_array_size(prompts);
    o->rq = (request_prompts){.request = request,
                              .items = prompts,
                              .n = n,
                              .budget = budget,
                              .live = live,
                              .ids = calloc((size_t)n, sizeof *o->rq.ids),
                              .texts = calloc((size_t)n, sizeof *o->rq.texts)};
    o->pids = calloc((size_t)n, sizeof *o->pids);
    o->plens = calloc((size_t)n, sizeof *o->plens);
    if (!o->rq.ids || !o->rq.texts || !o->pids || !o->plens)
        return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
    return 0;
}

/* After encode_prompts: the ids to sample from, the verifier, the sampling parameters. */
static int request_prepare(one_request *o, const bootstrap_model *boot, chord_err *err) {
    for (int i = 0; i < o->rq.n; i++) {
        o->pids[i] = o->rq.ids[i].ids;
        o->plens[i] = (int)o->rq.ids[i].n;
    }
    const json_t *answers = json_object_get(o->request, "answers");
    const json_t *reward = json_object_get(o->request, "reward");
    if (json_is_array(answers)) {
        json_t *dflt = NULL;
        if (!json_is_object(reward)) reward = dflt = json_pack("{s:s}", "type", "math_boxed");
        int vrc = reward ? reward_verifier_new(reward, &o->verifier, err) : -1;
        json_decref(dflt);
        if (vrc != 0) return -1;
    }
    o->rp = (rollout_params){.group_size = (int)chord_json_number_or(o->request, "n", 1),
                             .temperature =
                                 (float)chord_json_number_or(o->request, "temperature", 1.0),
                             .top_p = (float)chord_json_number_or(o->request, "top_p", 1.0),
                             .max_new_tokens =
                                 (int)chord_json_number_or(o->request, "max_tokens", 256),
                             .stop_ids = boot->stop_ids,
                             .n_stop = boot->n_stop,
                             .seed = (uint64_t)chord_json_number_or(o->request, "seed", 0),
                             .stream = 0};
    return 0;
}

/* The result document of a finished request. */
static int request_result(const one_request *o, const bootstrap_model *boot,
                          const rollout_result *rr, int batched, json_t **result, chord_err *err) {
    *result = NULL;
    const json_t *answers = json_object_get(o->request, "answers");
    json_t *completions = json_array();
    if (!completions) return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
    for (int i = 0; i < rr->n; i++) {
        const rollout_seq *q = &rr->seq[i];
        char *text = NULL;
        if (trainer_decode_response(boot->tok, q->tokens, q->len, &text, err) != 0) goto fail;
        size_t tlen = strlen(text);
        json_t *tids = json_array(), *lps = json_array(), *pt = json_array();
        for (int t = 0; t < o->plens[q->prompt]; t++)
            json_array_append_new(pt, json_integer(o->pids[q->prompt][t]));
        for (int t = 0; t < q->len; t++) {
            json_array_append_new(tids, json_integer(q->tokens[t]));
            json_array_append_new(lps, json_real(q->logp[t]));
        }
        json_t *c = json_pack("{s:i, s:i, s:s%, s:o, s:o, s:o*, s:o, s:s}", "prompt_index",
                              q->prompt, "index", i % o->rp.group_size, "text", text ? text : "",
                              tlen, "prompt_token_ids", pt, "token_ids", tids, "tokens",
                              token_pieces(boot->tok, q->tokens, q->len), "logprobs", lps,
                              "finish_reason", q->stopped ? "stop" : "length");
        if (c && o->verifier) {
            char *ans = NULL;
            if (ds_answer_text(json_array_get(answers, (size_t)q->prompt), &ans, err) != 0) {
                free(text);
                json_decref(c);
                chord_err_prefix(err, "answers[%d]", q->prompt);
                goto fail;
            }
            reward_result res;
            reward_score(o->verifier, o->rq.texts[q->prompt], text ? text : "", ans,
                         q->truncated != 0, &res);
            json_object_set_new(c, "reward", json_real(res.reward));
            json_object_set_new(c, "reason", json_string(reward_reason_name(res.reason)));
            free(ans);
        }
        free(text);
        if (!c || json_array_append_new(completions, c) != 0) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
            goto fail;
        }
    }
    *result = json_pack("{s:O, s:I, s:f, s:i}", "completions", completions, "tokens",
                        (json_int_t)rr->tokens, "seconds", rr->seconds, "batched_requests",
                        batched);
    json_decref(completions);
    return *result ? 0 : chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
fail:
    json_decref(completions);
    return -1;
}

/* Two requests sample from the same model: the same weights (checkpoint, model directory, or
 * random-init config and seed), tokenizer and running job. */
static int same_model(const json_t *a, const json_t *b) {
    static const char *const keys[] = {"checkpoint_dir", "model_dir", "model_init",
                                       "tokenizer_dir", "job_id"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const json_t *x = json_object_get(a, keys[i]), *y = json_object_get(b, keys[i]);
        if (json_is_null(x)) x = NULL;
        if (json_is_null(y)) y = NULL;
        if (!x != !y || (x && !json_equal(x, y))) return 0;
    }
    if (json_is_object(json_object_get(a, "model_init")) && /* the init's seed */
        chord_json_number_or(a, "seed", 0) != chord_json_number_or(b, "seed", 0))
        return 0;
    return 1;
}

/* The batch's shape: the first request's sequences and positions, and room for requests that
 * join (ROLLOUT_JOIN_SLOTS sequences at least, as far as the budget allows). */
#define ROLLOUT_JOIN_SLOTS 32
static void batch_shape(const model_config *mc, const one_request *o, const mem_budget *budget,
                        int live, int joining, int *slots, int *max_T) {
    int longest = 0;
    for (int i = 0; i < o->rq.n; i++)
        if (o->plens[i] > longest) longest = o->plens[i];
    *max_T = longest + o->rp.max_new_tokens;
    *slots = o->rq.n * o->rp.group_size;
    if (!joining) return;
    int want = *slots > ROLLOUT_JOIN_SLOTS ? *slots : ROLLOUT_JOIN_SLOTS;
    while (want > *slots) {
        mem_estimate e;
        mem_estimate_rollout(mc, want, 1, longest, o->rp.max_new_tokens, !live, &e);
        if (!budget || budget->bytes < 0 || mem_estimate_need(&e, budget) <= budget->bytes) break;
        want = want - (want - *slots + 1) / 2; /* halfway back towards the first's own */
    }
    *slots = want;
}

/* Between decode steps: the request at the head of the queue joins when it samples from the
 * same model and fits the batch's free slots and positions; else it goes back to the head
 * (FIFO: nothing overtakes it) and runs after this batch. */
static one_request *try_join(const jobs_rollout_joiner *j, const one_request *first,
                             const bootstrap_model *boot, int live, rollout_batch *b) {
    char id[STORE_ID_MAX];
    json_t *req = NULL;
    if (!j->next(j->user, id, &req)) return NULL;
    one_request *o = calloc(1, sizeof *o);
    chord_err err = {0};
    int ok = o && same_model(first->request, req) &&
             request_open(o, req, NULL, live, &err) == 0 &&
             encode_prompts(&o->rq, &boot->m->cfg, boot->tok, &boot->tpl, &err) == 0 &&
             request_prepare(o, boot, &err) == 0 &&
             (o->r = rollout_batch_add(b, o->pids, o->plens, o->rq.n, &o->rp, &err)) >= 0;
    json_decref(req);
    if (!ok) { /* it runs alone later (and reports its own errors then) */
        request_close(o);
        free(o);
        j->put_back(j->user, id);
        return NULL;
    }
    snprintf(o->id, sizeof o->id, "%s", id);
    return o;
}

int jobs_rollout_generate(const json_t *request, ops_ctx *ops,
                          const struct bootstrap_bases *bases, void *live_model,
                          const char *live_job_id, const mem_budget *budget,
                          const jobs_rollout_joiner *joiner, json_t **result, chord_err *err) {
    *result = NULL;
    /* the model: the running job's live model when the request names that job without a
     * checkpoint, else the checkpoint's or the model directory's weights, else a random init */
    const char *ckpt = chord_json_string_or(request, "checkpoint_dir", NULL),
               *job = chord_json_string_or(request, "job_id", NULL);
    int live = live_model && job && live_job_id && !strcmp(job, live_job_id) && !ckpt;
    int rc = -1, n_joined = 0, cap_joined = 0;
    bootstrap_model boot;
    memset(&boot, 0, sizeof boot);
    rollout_engine *engine = NULL;
    rollout_batch *batch = NULL;
    rollout_result rr = {0};
    one_request first, **joined = NULL;
    if (request_open(&first, request, budget, live, err) != 0) goto done;
    const json_t *init = json_object_get(request, "model_init");
    bootstrap_spec spec = {.dir = ckpt ? ckpt : chord_json_string_or(request, "model_dir", NULL),
                           .init_config = json_is_object(init) ? init : NULL,
                           .init_seed = (uint64_t)chord_json_number_or(request, "seed", 0),
                           .tokenizer_dir = chord_json_string_or(request, "tokenizer_dir", NULL),
                           .live = live ? live_model : NULL,
                           .before_load = encode_prompts,
                           .user = &first.rq,
                           .bases = bases};
    if (bootstrap_open(&spec, ops, &boot, err) != 0) goto done;
    if (request_prepare(&first, &boot, err) != 0) goto done;
    if (!(engine = rollout_engine_new(boot.m))) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    int slots, max_T;
    batch_shape(&boot.m->cfg, &first, budget, live, joiner != NULL, &slots, &max_T);
    if (rollout_batch_new(engine, slots, max_T, &batch, err) != 0) goto done;
    if ((first.r = rollout_batch_add(batch, first.pids, first.plens, first.rq.n, &first.rp,
                                     err)) < 0)
        goto done;
    int live_seqs;
    do {
        one_request *o = joiner ? try_join(joiner, &first, &boot, live, batch) : NULL;
        if (o) {
            if (n_joined == cap_joined) {
                int cap = cap_joined ? 2 * cap_joined : 4;
                one_request **nj = realloc(joined, (size_t)cap * sizeof *nj);
                if (!nj) {
                    request_close(o);
                    free(o);
                    chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
                    goto done;
                }
                joined = nj;
                cap_joined = cap;
            }
            joined[n_joined++] = o;
        }
        if ((live_seqs = rollout_batch_step(batch, err)) < 0) goto done;
        /* the joined requests that finished are answered at once */
        for (int i = 0; i < n_joined; i++) {
            rollout_result jr = {0};
            if (!joined[i] || !rollout_batch_take(batch, joined[i]->r, &jr)) continue;
            json_t *res = NULL;
            chord_err jerr = {0};
            request_result(joined[i], &boot, &jr, rollout_batch_most_requests(batch), &res,
                           &jerr);
            joiner->done(joiner->user, joined[i]->id, res, &jerr);
            json_decref(res);
            rollout_result_free(&jr);
            request_close(joined[i]);
            free(joined[i]);
            joined[i] = NULL;
        }
    } while (live_seqs > 0);
    if (!rollout_batch_take(batch, first.r, &rr)) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: the batch ended with its first request "
                                              "unfinished");
        goto done;
    }
    rc = request_result(&first, &boot, &rr, rollout_batch_most_requests(batch), result, err);
done:
    for (int i = 0; i < n_joined; i++) /* the batch failed under them: they fail with it */
        if (joined[i]) {
            joiner->done(joiner->user, joined[i]->id, NULL, err);
            request_close(joined[i]);
            free(joined[i]);
        }
    free(joined);
    rollout_result_free(&rr);
    rollout_batch_free(batch);
    rollout_engine_free(engine);
    request_close(&first);
    bootstrap_close(&boot);
    return rc;
}
