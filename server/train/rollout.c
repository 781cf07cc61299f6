/* rollout.c — batched KV-cache sampling (rollout.h). */
#include "server/train/rollout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "server/base/fileutil.h"
#include "server/base/rng.h"

struct rollout_engine {
    model *m;
    model_kv_cache *kv;
    int slots, max_T;
};

rollout_engine *rollout_engine_new(model *m) {
    rollout_engine *e = calloc(1, sizeof *e);
    if (e) e->m = m;
    return e;
}

void rollout_engine_free(rollout_engine *e) {
    if (!e) return;
    model_kv_free(e->kv);
    free(e);
}

static float uniform_f32(uint64_t seed, uint64_t stream, uint64_t index, uint64_t t) {
    /* 24 bits: exactly representable, strictly below 1 */
    return (float)floor(rollout_uniform(seed, stream, index, t) * 16777216.0) / 16777216.0f;
}

double rollout_uniform(uint64_t seed, uint64_t stream, uint64_t index, uint64_t t) {
    uint64_t h = chord_splitmix64(seed);
    h = chord_splitmix64(h ^ stream);
    h = chord_splitmix64(h ^ index);
    h = chord_splitmix64(h ^ t);
    return (double)(h >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

void rollout_result_free(rollout_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) {
        free(r->seq[i].tokens);
        free(r->seq[i].logp);
    }
    free(r->seq);
    memset(r, 0, sizeof *r);
}

static int ensure_cache(rollout_engine *e, int slots, int max_T, chord_err *err) {
    if (e->kv && e->slots >= slots && e->max_T >= max_T) return 0;
    model_kv_free(e->kv);
    e->kv = NULL;
    if (e->slots > slots) slots = e->slots;
    if (e->max_T > max_T) max_T = e->max_T;
    if (model_kv_create(e->m, slots, max_T, &e->kv, err) != 0) {
        e->slots = e->max_T = 0;
        return chord_err_prefix(err, "rollout: KV cache of %d x %d", slots, max_T);
    }
    e->slots = slots;
    e->max_T = max_T;
    return 0;
}

static int is_stop(const rollout_params *p, int32_t tok) {
    for (int i = 0; i < p->n_stop; i++)
        if (p->stop_ids[i] == tok) return 1;
    return 0;
}

/* Appends a sampled token to sequence s; returns 1 when the sequence is finished. */
static int push_token(rollout_seq *s, const rollout_params *p, int32_t tok, float lp) {
    s->tokens[s->len] = tok;
    s->logp[s->len] = lp;
    s->len++;
    if (is_stop(p, tok)) {
        s->stopped = 1;
        return 1;
    }
    if (s->len >= p->max_new_tokens) {
        s->truncated = 1;
        return 1;
    }
    return 0;
}

int rollout_generate(rollout_engine *e, const int32_t *const *prompts, const int *prompt_lens,
                     int n_prompts, const rollout_params *p, rollout_result *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (n_prompts <= 0) return 0;
    if (p->group_size < 1 || p->max_new_tokens < 1 || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        !(p->temperature >= 0.0f))
        return chord_err_set(err, "rollout: bad sampling parameters");
    model *m = e->m;
    ops_ctx *ops = m->ops;
    const int G = p->group_size, B = n_prompts * G, V = m->cfg.vocab_size;
    double t0 = chord_now();

    int max_prompt = 0;
    size_t total_prompt = 0;
    for (int i = 0; i < n_prompts; i++) {
        if (prompt_lens[i] < 1) return chord_err_set(err, "rollout: prompt %d is empty", i);
        for (int t = 0; t < prompt_lens[i]; t++)
            if (prompts[i][t] < 0 || prompts[i][t] >= V)
                return chord_err_set(err, "rollout: prompt %d: token id %d out of range [0, %d)", i,
                                     prompts[i][t], V);
        if (prompt_lens[i] > max_prompt) max_prompt = prompt_lens[i];
        total_prompt += (size_t)prompt_lens[i];
    }
    int max_T = max_prompt + p->max_new_tokens;
    if (m->cfg.max_position_embeddings > 0 && max_T > m->cfg.max_position_embeddings)
        return chord_err_set(err,
                             "rollout: prompt (%d) + max_new_tokens (%d) exceeds the model's "
                             "max_position_embeddings (%d)",
                             max_prompt, p->max_new_tokens, m->cfg.max_position_embeddings);
    if (ensure_cache(e, B, max_T, err) != 0) return -1;

    int rc = -1;
    int32_t *tokens = malloc(total_prompt * sizeof *tokens);
    int32_t *cu = malloc((size_t)(n_prompts + 1) * sizeof *cu);
    int32_t *slots = malloc((size_t)B * sizeof *slots);
    int32_t *pos = malloc((size_t)B * sizeof *pos);
    int32_t *cur = malloc((size_t)B * sizeof *cur);
    int32_t *active = malloc((size_t)B * sizeof *active);
    int32_t *sampled = malloc((size_t)B * sizeof *sampled);
    float *lps = malloc((size_t)B * sizeof *lps);
    float *uni = malloc((size_t)B * sizeof *uni);
    out->seq = calloc((size_t)B, sizeof *out->seq);
    if (!tokens || !cu || !slots || !pos || !cur || !active || !sampled || !lps || !uni ||
        !out->seq) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    out->n = B;
    for (int i = 0; i < B; i++) {
        rollout_seq *s = &out->seq[i];
        s->prompt = i / G;
        s->tokens = malloc((size_t)p->max_new_tokens * sizeof *s->tokens);
        s->logp = malloc((size_t)p->max_new_tokens * sizeof *s->logp);
        if (!s->tokens || !s->logp) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
            goto done;
        }
    }

    /* Prefill each prompt once into the first slot of its group, then share it. */
    cu[0] = 0;
    for (int i = 0; i < n_prompts; i++) {
        memcpy(tokens + cu[i], prompts[i], (size_t)prompt_lens[i] * sizeof *tokens);
        cu[i + 1] = cu[i] + prompt_lens[i];
        slots[i] = i * G;
    }
    const float *logits = NULL;
    if (model_prefill(m, e->kv, tokens, cu, n_prompts, slots, &logits, err) != 0) goto done;
    for (int i = 0; i < n_prompts && G > 1; i++) {
        for (int g = 1; g < G; g++)
            sampled[g - 1] = i * G + g;
        if (model_kv_copy(m, e->kv, i * G, sampled, G - 1, prompt_lens[i], err) != 0) goto done;
    }

    /* First token of every group member from its prompt's last logits. */
    int n_active = 0;
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < n_prompts; i++)
            uni[i] = uniform_f32(p->seed, p->stream, p->first_index + (uint64_t)(i * G + g), 0);
        if (ops_sample(ops, sampled, lps, logits, n_prompts, V, p->temperature, p->top_p, uni)) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: sample: %s", ops_last_error(ops));
            goto done;
        }
        for (int i = 0; i < n_prompts; i++) {
            int b = i * G + g;
            if (!push_token(&out->seq[b], p, sampled[i], lps[i])) active[n_active++] = b;
        }
    }
    /* Decode all live sequences together, one token each per step. */
    while (n_active > 0) {
        if (p->should_stop && p->should_stop(p->user)) {
            chord_err_setc(err, CHORD_E_UNAVAILABLE, "rollout: stopped");
            goto done;
        }
        for (int j = 0; j < n_active; j++) {
            int b = active[j];
            rollout_seq *s = &out->seq[b];
            cur[j] = s->tokens[s->len - 1];
            pos[j] = prompt_lens[s->prompt] + s->len - 1;
            slots[j] = b;
            uni[j] =
                uniform_f32(p->seed, p->stream, p->first_index + (uint64_t)b, (uint64_t)s->len);
        }
        if (model_decode(m, e->kv, cur, pos, slots, n_active, &logits, err) != 0) goto done;
        if (ops_sample(ops, sampled, lps, logits, n_active, V, p->temperature, p->top_p, uni)) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: sample: %s", ops_last_error(ops));
            goto done;
        }
        int kept = 0;
        for (int j = 0; j < n_active; j++) {
            int b = active[j];
            if (!push_token(&out->seq[b], p, sampled[j], lps[j])) active[kept++] = b;
        }
        n_active = kept;
    }
    for (int i = 0; i < B; i++)
        out->tokens += out->seq[i].len;
    rc = 0;
done:
    out->seconds = chord_now() - t0;
    if (rc != 0) rollout_result_free(out);
    free(tokens);
    free(cu);
    free(slots);
    free(pos);
    free(cur);
    free(active);
    free(sampled);
    free(lps);
    free(uni);
    return rc;
}
