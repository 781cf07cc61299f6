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

/* ---- the growing batch ------------------------------------------------------------------------
 * Each request owns its sequences' results and a slot of the engine's KV cache per sequence
 * (taken from a free list when it joins, given back when it is taken). A decode step runs every
 * live sequence of every request, ordered by request so that each request's rows are contiguous
 * and sampled with its own parameters. */

typedef struct rb_req {
    rollout_params p;  /* stop_ids points at stop below */
    int32_t *stop;     /* (p.n_stop) */
    int n, G;          /* prompts, group size */
    int *prompt_lens;  /* (n) */
    int *slot;         /* (n G): each sequence's cache slot */
    rollout_result res;
    int live;          /* sequences still decoding */
    int taken;         /* handed out by rollout_batch_take (the entry is empty) */
    double t0;
} rb_req;

struct rollout_batch {
    rollout_engine *e;
    int slots, max_T;
    int *free_slots, n_free; /* a stack */
    rb_req *req;
    int n_req, cap_req, live_req, most_req;
    /* per decode step, (slots) each */
    int32_t *cur, *pos, *sl, *sampled;
    int *who, *which; /* the request and sequence of each row */
    float *lps, *uni;
};

static void req_release(rollout_batch *b, rb_req *q) {
    for (int i = 0; q->slot && i < q->n * q->G; i++)
        if (q->slot[i] >= 0) b->free_slots[b->n_free++] = q->slot[i];
    free(q->stop);
    free(q->prompt_lens);
    free(q->slot);
    rollout_result_free(&q->res);
    memset(q, 0, sizeof *q);
    q->taken = 1;
}

void rollout_batch_free(rollout_batch *b) {
    if (!b) return;
    for (int r = 0; r < b->n_req; r++)
        if (!b->req[r].taken) req_release(b, &b->req[r]);
    free(b->req);
    free(b->free_slots);
    free(b->cur), free(b->pos), free(b->sl), free(b->sampled), free(b->who), free(b->which);
    free(b->lps), free(b->uni);
    free(b);
}

int rollout_batch_new(rollout_engine *e, int slots, int max_T, rollout_batch **out,
                      chord_err *err) {
    *out = NULL;
    if (slots < 1 || max_T < 1)
        return chord_err_set(err, "rollout: a batch needs at least one slot and one position");
    if (e->m->cfg.max_position_embeddings > 0 && max_T > e->m->cfg.max_position_embeddings)
        max_T = e->m->cfg.max_position_embeddings;
    if (ensure_cache(e, slots, max_T, err) != 0) return -1;
    rollout_batch *b = calloc(1, sizeof *b);
    if (!b) return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
    b->e = e;
    b->slots = slots;
    b->max_T = max_T;
    size_t n = (size_t)slots;
    b->free_slots = malloc(n * sizeof *b->free_slots);
    b->cur = malloc(n * sizeof *b->cur), b->pos = malloc(n * sizeof *b->pos);
    b->sl = malloc(n * sizeof *b->sl), b->sampled = malloc(n * sizeof *b->sampled);
    b->who = malloc(n * sizeof *b->who), b->which = malloc(n * sizeof *b->which);
    b->lps = malloc(n * sizeof *b->lps), b->uni = malloc(n * sizeof *b->uni);
    if (!b->free_slots || !b->cur || !b->pos || !b->sl || !b->sampled || !b->who || !b->which ||
        !b->lps || !b->uni) {
        rollout_batch_free(b);
        return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
    }
    for (int i = slots - 1; i >= 0; i--)
        b->free_slots[b->n_free++] = i;
    *out = b;
    return 0;
}

int rollout_batch_add(rollout_batch *b, const int32_t *const *prompts, const int *prompt_lens,
                      int n_prompts, const rollout_params *p, chord_err *err) {
    model *m = b->e->m;
    ops_ctx *ops = m->ops;
    const int V = m->cfg.vocab_size;
    if (n_prompts <= 0) return chord_err_set(err, "rollout: no prompts");
    if (p->group_size < 1 || p->max_new_tokens < 1 || !(p->top_p > 0.0f && p->top_p <= 1.0f) ||
        !(p->temperature >= 0.0f) || p->n_stop < 0)
        return chord_err_set(err, "rollout: bad sampling parameters");
    const int G = p->group_size;
    if ((long long)n_prompts * G > b->n_free)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "rollout: %d sequences do not fit the batch's %d free slots",
                              n_prompts * G, b->n_free);
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
    if (m->cfg.max_position_embeddings > 0 &&
        max_prompt + p->max_new_tokens > m->cfg.max_position_embeddings)
        return chord_err_set(err,
                             "rollout: prompt (%d) + max_new_tokens (%d) exceeds the model's "
                             "max_position_embeddings (%d)",
                             max_prompt, p->max_new_tokens, m->cfg.max_position_embeddings);
    if (max_prompt + p->max_new_tokens > b->max_T)
        return chord_err_setc(err, CHORD_E_TOO_LARGE,
                              "rollout: prompt (%d) + max_new_tokens (%d) exceeds the batch's %d "
                              "positions",
                              max_prompt, p->max_new_tokens, b->max_T);
    if (b->n_req == b->cap_req) {
        int cap = b->cap_req ? 2 * b->cap_req : 4;
        rb_req *nr = realloc(b->req, (size_t)cap * sizeof *nr);
        if (!nr) return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        b->req = nr;
        b->cap_req = cap;
    }
    const int r = b->n_req;
    rb_req *q = &b->req[r];
    memset(q, 0, sizeof *q);
    const int B = n_prompts * G;
    q->p = *p;
    q->n = n_prompts;
    q->G = G;
    q->t0 = chord_now();
    q->stop = malloc((size_t)(p->n_stop ? p->n_stop : 1) * sizeof *q->stop);
    q->prompt_lens = malloc((size_t)n_prompts * sizeof *q->prompt_lens);
    q->slot = malloc((size_t)B * sizeof *q->slot);
    q->res.seq = calloc((size_t)B, sizeof *q->res.seq);
    int32_t *tokens = malloc(total_prompt * sizeof *tokens);
    int32_t *cu = malloc((size_t)(n_prompts + 1) * sizeof *cu);
    int32_t *pslots = malloc((size_t)n_prompts * sizeof *pslots);
    int32_t *dst = malloc((size_t)(G > 1 ? G - 1 : 1) * sizeof *dst);
    int rc = -1;
    if (!q->stop || !q->prompt_lens || !q->slot || !q->res.seq || !tokens || !cu || !pslots ||
        !dst) {
        chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
        goto done;
    }
    if (p->n_stop) memcpy(q->stop, p->stop_ids, (size_t)p->n_stop * sizeof *q->stop);
    q->p.stop_ids = q->stop;
    memcpy(q->prompt_lens, prompt_lens, (size_t)n_prompts * sizeof *q->prompt_lens);
    q->res.n = B;
    for (int i = 0; i < B; i++) {
        rollout_seq *s = &q->res.seq[i];
        s->prompt = i / G;
        s->tokens = malloc((size_t)p->max_new_tokens * sizeof *s->tokens);
        s->logp = malloc((size_t)p->max_new_tokens * sizeof *s->logp);
        if (!s->tokens || !s->logp) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: out of memory");
            goto done;
        }
        q->slot[i] = b->free_slots[--b->n_free];
    }
    b->n_req++;
    b->live_req++;
    if (b->live_req > b->most_req) b->most_req = b->live_req;

    /* Prefill each prompt once into the first slot of its group, then share it. */
    cu[0] = 0;
    for (int i = 0; i < n_prompts; i++) {
        memcpy(tokens + cu[i], prompts[i], (size_t)prompt_lens[i] * sizeof *tokens);
        cu[i + 1] = cu[i] + prompt_lens[i];
        pslots[i] = q->slot[i * G];
    }
    const float *logits = NULL;
    if (model_prefill(m, b->e->kv, tokens, cu, n_prompts, pslots, &logits, err) != 0) goto done;
    for (int i = 0; i < n_prompts && G > 1; i++) {
        for (int g = 1; g < G; g++)
            dst[g - 1] = q->slot[i * G + g];
        if (model_kv_copy(m, b->e->kv, pslots[i], dst, G - 1, prompt_lens[i], err) != 0)
            goto done;
    }
    /* First token of every group member from its prompt's last logits. */
    for (int g = 0; g < G; g++) {
        for (int i = 0; i < n_prompts; i++)
            b->uni[i] = uniform_f32(p->seed, p->stream, p->first_index + (uint64_t)(i * G + g), 0);
        if (ops_sample(ops, b->sampled, b->lps, logits, n_prompts, V, p->temperature, p->top_p,
                       b->uni)) {
            chord_err_setc(err, CHORD_E_INTERNAL, "rollout: sample: %s", ops_last_error(ops));
            goto done;
        }
        for (int i = 0; i < n_prompts; i++)
            if (!push_token(&q->res.seq[i * G + g], &q->p, b->sampled[i], b->lps[i])) q->live++;
    }
    if (q->live == 0) b->live_req--;
    rc = r;
done:
    if (rc < 0 && b->n_req > r) { /* joined, then failed: the whole batch is unusable */
        b->n_req--;
        b->live_req--;
        req_release(b, q);
    } else if (rc < 0) {
        free(q->stop), free(q->prompt_lens), free(q->slot);
        if (q->res.seq) {
            for (int i = 0; i < B; i++)
                free(q->res.seq[i].tokens), free(q->res.seq[i].logp);
            free(q->res.seq);
        }
    }
    free(tokens);
    free(cu);
    free(pslots);
    free(dst);
    return rc;
}

int rollout_batch_step(rollout_batch *b, chord_err *err) {
    model *m = b->e->m;
    ops_ctx *ops = m->ops;
    const int V = m->cfg.vocab_size;
    int n = 0;
    for (int r = 0; r < b->n_req; r++) {
        rb_req *q = &b->req[r];
        if (q->taken || q->live == 0) continue;
        if (q->p.should_stop && q->p.should_stop(q->p.user))
            return chord_err_setc(err, CHORD_E_UNAVAILABLE, "rollout: stopped");
        for (int i = 0; i < q->n * q->G; i++) {
            rollout_seq *s = &q->res.seq[i];
            if (s->stopped || s->truncated) continue;
            b->cur[n] = s->tokens[s->len - 1];
            b->pos[n] = q->prompt_lens[s->prompt] + s->len - 1;
            b->sl[n] = q->slot[i];
            b->uni[n] = uniform_f32(q->p.seed, q->p.stream, q->p.first_index + (uint64_t)i,
                                    (uint64_t)s->len);
            b->who[n] = r;
            b->which[n] = i;
            n++;
        }
    }
    if (n == 0) return 0;
    const float *logits = NULL;
    if (model_decode(m, b->e->kv, b->cur, b->pos, b->sl, n, &logits, err) != 0) return -1;
    /* each request's rows with its own sampling parameters */
    for (int j0 = 0; j0 < n;) {
        int j1 = j0;
        while (j1 < n && b->who[j1] == b->who[j0])
            j1++;
        const rollout_params *p = &b->req[b->who[j0]].p;
        if (ops_sample(ops, b->sampled + j0, b->lps + j0, logits + (size_t)j0 * V, j1 - j0, V,
                       p->temperature, p->top_p, b->uni + j0))
            return chord_err_setc(err, CHORD_E_INTERNAL, "rollout: sample: %s",
                                  ops_last_error(ops));
        j0 = j1;
    }
    int live = 0;
    for (int j = 0; j < n; j++) {
        rb_req *q = &b->req[b->who[j]];
        if (push_token(&q->res.seq[b->which[j]], &q->p, b->sampled[j], b->lps[j])) {
            if (--q->live == 0) b->live_req--;
        } else {
            live++;
        }
    }
    return live;
}

int rollout_batch_take(rollout_batch *b, int r, rollout_result *out) {
    if (r < 0 || r >= b->n_req || b->req[r].taken || b->req[r].live > 0) return 0;
    rb_req *q = &b->req[r];
    *out = q->res;
    out->tokens = 0;
    for (int i = 0; i < out->n; i++)
        out->tokens += out->seq[i].len;
    out->seconds = chord_now() - q->t0;
    memset(&q->res, 0, sizeof q->res);
    req_release(b, q);
    return 1;
}

int rollout_batch_free_slots(const rollout_batch *b) {
    return b->n_free;
}

int rollout_batch_max_T(const rollout_batch *b) {
    return b->max_T;
}

int rollout_batch_most_requests(const rollout_batch *b) {
    return b->most_req;
}

int rollout_generate(rollout_engine *e, const int32_t *const *prompts, const int *prompt_lens,
                     int n_prompts, const rollout_params *p, rollout_result *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    if (n_prompts <= 0) return 0;
    if (p->group_size < 1 || p->max_new_tokens < 1)
        return chord_err_set(err, "rollout: bad sampling parameters");
    int max_prompt = 0;
    for (int i = 0; i < n_prompts; i++)
        if (prompt_lens[i] > max_prompt) max_prompt = prompt_lens[i];
    /* a batch clamped to the model's positions: rollout_batch_add names that limit */
    rollout_batch *b = NULL;
    if (rollout_batch_new(e, n_prompts * p->group_size, max_prompt + p->max_new_tokens, &b,
                          err) != 0)
        return -1;
    int r = rollout_batch_add(b, prompts, prompt_lens, n_prompts, p, err), live = 0;
    if (r >= 0) {
        do
            live = rollout_batch_step(b, err);
        while (live > 0);
    }
    int rc = r >= 0 && live == 0 && rollout_batch_take(b, r, out) ? 0 : -1;
    rollout_batch_free(b);
    return rc;
}
