/* test_rollout.c — rollouts (server/train/rollout.h) against the engine's full forward pass:
 *
 * - ppo_kl ≈ 0: the log-prob a rollout records for each sampled token equals the log-prob the
 *   trainer computes for it (model_forward over prompt + response with 1/T, no KV cache) on the
 *   same weights, to fp32 round-off, for tempered, nucleus and greedy sampling;
 * - a group's G responses share one prefill: the embedding rows that go through the backend
 *   (counted by wrapping the op table) are the prompt's once plus one per decoded token, and G
 *   responses of one prompt equal G copies of the prompt sampled with the same uniforms;
 * - seeded reproducibility, stop tokens and max_new_tokens.
 *
 * Not here: rewards, the loss (test_loss.c), the trainer loop (test_trainer.c). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "server/model/model.h"
#include "server/train/rollout.h"

#define V 96

static model_config small_config(void) {
    model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.model_type, sizeof c.model_type, "qwen2");
    snprintf(c.architecture, sizeof c.architecture, "Qwen2ForCausalLM");
    c.vocab_size = V;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 8;
    c.intermediate_size = 48;
    c.max_position_embeddings = 64;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = 1;
    c.attention_bias = 1;
    /* large enough that the distributions are far from uniform: sampling really chooses */
    c.initializer_range = 0.5;
    c.bos_token_id = -1;
    c.pad_token_id = -1;
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    return c;
}

typedef struct fixture {
    ops_ctx *ops;
    model *m;
    ops_backend counting; /* a copy of the CPU table with embedding_forward wrapped */
    const ops_backend *real;
} fixture;

static long long g_embedded_rows;
static const ops_backend *g_real_be;

static int counting_embedding_forward(ops_ctx *c, float *out, const int32_t *tokens,
                                      const float *wte, int N, int C, int vocab) {
    g_embedded_rows += N;
    return g_real_be->embedding_forward(c, out, tokens, wte, N, C, vocab);
}

static int setup(void **state) {
    char e[256];
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    f->ops = ops_open("cpu", 2, e, sizeof e);
    if (!f->ops) return -1;
    model_config cfg = small_config();
    chord_err err = {0};
    if (model_create(&cfg, f->ops, &f->m, &err) != 0 || model_init_random(f->m, 7, &err) != 0) {
        fprintf(stderr, "model: %s\n", err.msg);
        return -1;
    }
    f->real = f->ops->be;
    g_real_be = f->real;
    f->counting = *f->real;
    f->counting.embedding_forward = counting_embedding_forward;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    if (!f) return 0;
    if (f->ops && f->real) f->ops->be = f->real;
    model_free(f->m);
    ops_close(f->ops);
    free(f);
    return 0;
}

/* Three prompts of different lengths. */
static const int32_t P0[] = {5, 17, 3, 88, 40};
static const int32_t P1[] = {9, 2};
static const int32_t P2[] = {61, 61, 7, 30, 12, 77, 1, 50};
static const int32_t *const PROMPTS[3] = {P0, P1, P2};
static const int PLENS[3] = {5, 2, 8};

static rollout_params params(float temperature, float top_p, int G, int max_new) {
    rollout_params p = {.group_size = G,
                        .temperature = temperature,
                        .top_p = top_p,
                        .max_new_tokens = max_new,
                        .stop_ids = NULL,
                        .n_stop = 0,
                        .seed = 1234,
                        .stream = 5};
    return p;
}

/* For every response: forward prompt + response (no cache), read logp at the response tokens
 * with inv_temp, and compare with the rollout's numbers. Returns the largest |Δ|. */
static double max_logp_gap(model *m, const rollout_result *rr, const int32_t *const *prompts,
                           const int *plens, float inv_temp) {
    double worst = 0;
    for (int i = 0; i < rr->n; i++) {
        const rollout_seq *q = &rr->seq[i];
        int L = plens[q->prompt], N = L + q->len;
        int32_t *tok = malloc((size_t)N * sizeof *tok), *pos = malloc((size_t)N * sizeof *pos),
                *tgt = malloc((size_t)N * sizeof *tgt);
        float *lp = malloc((size_t)N * sizeof *lp);
        assert_true(tok && pos && tgt && lp);
        memcpy(tok, prompts[q->prompt], (size_t)L * sizeof *tok);
        memcpy(tok + L, q->tokens, (size_t)q->len * sizeof *tok);
        for (int t = 0; t < N; t++) {
            pos[t] = t;
            tgt[t] = t >= L - 1 && t + 1 < N ? tok[t + 1] : -1;
        }
        int32_t cu[2] = {0, N};
        model_batch b = {
            .N = N, .S = 1, .tokens = tok, .positions = pos, .cu_seqlens = cu, .targets = tgt};
        chord_err err = {0};
        if (model_forward(m, &b, inv_temp, lp, NULL, &err) != 0) fail_msg("forward: %s", err.msg);
        for (int j = 0; j < q->len; j++) {
            double d = fabs((double)lp[L - 1 + j] - (double)q->logp[j]);
            assert_true(isfinite(q->logp[j]));
            if (d > worst) worst = d;
        }
        free(tok);
        free(pos);
        free(tgt);
        free(lp);
    }
    return worst;
}

static void check_ppo_kl(fixture *f, float temperature, float top_p) {
    rollout_engine *e = rollout_engine_new(f->m);
    assert_non_null(e);
    rollout_params p = params(temperature, top_p, 4, 12);
    rollout_result rr;
    chord_err err = {0};
    if (rollout_generate(e, PROMPTS, PLENS, 3, &p, &rr, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(rr.n, 12);
    int distinct = 0; /* sampling really varies within a group (not a degenerate model) */
    for (int i = 0; i < rr.n; i++) {
        assert_int_equal(rr.seq[i].len, 12);
        assert_int_equal(rr.seq[i].truncated, 1);
        if (i % 4 && memcmp(rr.seq[i].tokens, rr.seq[i - i % 4].tokens, 12 * sizeof(int32_t)))
            distinct++;
    }
    if (temperature > 0) assert_true(distinct > 0);
    float inv_temp = temperature > 0 ? 1.0f / temperature : 1.0f;
    double gap = max_logp_gap(f->m, &rr, PROMPTS, PLENS, inv_temp);
    print_message("T=%.2f top_p=%.2f: max |logp_rollout - logp_trainer| = %.3g\n", temperature,
                  top_p, gap);
    assert_true(gap <= 1e-4);
    /* and the trainer's ppo_kl, the mean of the differences, is ~0 a fortiori */
    rollout_result_free(&rr);
    rollout_engine_free(e);
}

static void test_ppo_kl_tempered(void **state) {
    check_ppo_kl(*state, 0.7f, 1.0f);
}
static void test_ppo_kl_unit_temperature(void **state) {
    check_ppo_kl(*state, 1.0f, 1.0f);
}
static void test_ppo_kl_top_p(void **state) {
    check_ppo_kl(*state, 1.3f, 0.8f);
}
static void test_ppo_kl_greedy(void **state) {
    check_ppo_kl(*state, 0.0f, 1.0f);
}

/* G = 4 responses of one prompt: one prefill of the prompt (its rows embedded once), then one
 * embedded row per decoded token; the same tokens and log-probs as four copies of the prompt
 * with G = 1 (the uniforms are keyed by sequence index, equal in both layouts). */
static void test_group_shares_prefill(void **state) {
    fixture *f = *state;
    rollout_engine *e = rollout_engine_new(f->m);
    assert_non_null(e);
    chord_err err = {0};
    const int G = 4, MAXNEW = 10;
    rollout_params p = params(1.0f, 1.0f, G, MAXNEW);
    /* a stop token that one response samples early, so the lengths are uneven */
    rollout_result probe;
    if (rollout_generate(e, &PROMPTS[2], &PLENS[2], 1, &p, &probe, &err) != 0)
        fail_msg("%s", err.msg);
    int32_t stop[1] = {probe.seq[1].tokens[2]};
    rollout_result_free(&probe);
    p.stop_ids = stop;
    p.n_stop = 1;

    f->ops->be = &f->counting;
    g_embedded_rows = 0;
    rollout_result shared;
    int rc = rollout_generate(e, &PROMPTS[2], &PLENS[2], 1, &p, &shared, &err);
    long long rows_shared = g_embedded_rows;
    f->ops->be = f->real;
    if (rc != 0) fail_msg("%s", err.msg);
    assert_int_equal(shared.n, G);
    long long decoded = 0;
    for (int g = 0; g < G; g++)
        decoded += shared.seq[g].len - 1; /* the last one is not fed */
    print_message("G=%d: %lld embedded rows = prompt %d + decoded %lld\n", G, rows_shared, PLENS[2],
                  decoded);
    assert_int_equal(rows_shared, PLENS[2] + decoded);

    const int32_t *copies[4] = {P2, P2, P2, P2};
    int lens[4] = {PLENS[2], PLENS[2], PLENS[2], PLENS[2]};
    rollout_params p1 = p;
    p1.group_size = 1;
    f->ops->be = &f->counting;
    g_embedded_rows = 0;
    rollout_result separate;
    rc = rollout_generate(e, copies, lens, 4, &p1, &separate, &err);
    long long rows_separate = g_embedded_rows;
    f->ops->be = f->real;
    if (rc != 0) fail_msg("%s", err.msg);
    assert_int_equal(rows_separate, 4 * PLENS[2] + decoded);
    int n_stopped = 0;
    for (int g = 0; g < G; g++) {
        const rollout_seq *a = &shared.seq[g], *b = &separate.seq[g];
        assert_int_equal(a->prompt, 0);
        assert_int_equal(b->prompt, g);
        assert_int_equal(a->len, b->len);
        assert_int_equal(a->stopped, b->stopped);
        n_stopped += a->stopped;
        assert_memory_equal(a->tokens, b->tokens, (size_t)a->len * sizeof *a->tokens);
        for (int t = 0; t < a->len; t++)
            assert_true(fabsf(a->logp[t] - b->logp[t]) <= 1e-4f);
        if (a->stopped)
            assert_int_equal(a->tokens[a->len - 1], stop[0]);
        else
            assert_int_equal(a->len, MAXNEW);
    }
    assert_true(n_stopped >= 1 && decoded < G * (MAXNEW - 1));
    rollout_result_free(&shared);
    rollout_result_free(&separate);
    rollout_engine_free(e);
}

/* Same seed and stream: the same responses, whatever else ran on the engine in between; another
 * stream: different responses. */
static void test_reproducible(void **state) {
    fixture *f = *state;
    rollout_engine *e = rollout_engine_new(f->m);
    chord_err err = {0};
    rollout_params p = params(1.0f, 1.0f, 2, 8);
    rollout_result a, b, c;
    if (rollout_generate(e, PROMPTS, PLENS, 3, &p, &a, &err) != 0) fail_msg("%s", err.msg);
    rollout_params q = p;
    q.stream = 6;
    if (rollout_generate(e, PROMPTS, PLENS, 3, &q, &c, &err) != 0) fail_msg("%s", err.msg);
    if (rollout_generate(e, PROMPTS, PLENS, 3, &p, &b, &err) != 0) fail_msg("%s", err.msg);
    int differs = 0;
    for (int i = 0; i < a.n; i++) {
        assert_int_equal(a.seq[i].len, b.seq[i].len);
        assert_memory_equal(a.seq[i].tokens, b.seq[i].tokens, (size_t)a.seq[i].len * 4);
        assert_memory_equal(a.seq[i].logp, b.seq[i].logp, (size_t)a.seq[i].len * 4);
        differs |= memcmp(a.seq[i].tokens, c.seq[i].tokens, (size_t)a.seq[i].len * 4) != 0;
    }
    assert_true(differs);
    rollout_result_free(&a);
    rollout_result_free(&b);
    rollout_result_free(&c);
    rollout_engine_free(e);
}

/* Data parallelism (docs/distributed.md): a rank that samples prompts 1 and 2 of a step's three
 * with first_index = 1 x G draws exactly the responses one process sampling all three draws for
 * them (the tokens; the log-probs to fp32 round-off, the batch differs). */
static void test_share_of_a_step(void **state) {
    fixture *f = *state;
    rollout_engine *e = rollout_engine_new(f->m);
    chord_err err = {0};
    const int G = 2;
    rollout_params p = params(1.0f, 1.0f, G, 8);
    rollout_result whole, part, wrong;
    if (rollout_generate(e, PROMPTS, PLENS, 3, &p, &whole, &err) != 0) fail_msg("%s", err.msg);
    rollout_params q = p;
    q.first_index = 1 * G;
    if (rollout_generate(e, PROMPTS + 1, PLENS + 1, 2, &q, &part, &err) != 0)
        fail_msg("%s", err.msg);
    if (rollout_generate(e, PROMPTS + 1, PLENS + 1, 2, &p, &wrong, &err) != 0)
        fail_msg("%s", err.msg);
    int differs = 0;
    for (int i = 0; i < part.n; i++) {
        const rollout_seq *w = &whole.seq[G + i], *s = &part.seq[i];
        assert_int_equal(s->len, w->len);
        assert_memory_equal(s->tokens, w->tokens, (size_t)s->len * 4);
        for (int t = 0; t < s->len; t++)
            assert_true(fabsf(s->logp[t] - w->logp[t]) <= 1e-5f);
        differs |= wrong.seq[i].len != w->len ||
                   memcmp(wrong.seq[i].tokens, w->tokens, (size_t)w->len * 4) != 0;
    }
    assert_true(differs); /* without first_index the share would draw other numbers */
    rollout_result_free(&whole);
    rollout_result_free(&part);
    rollout_result_free(&wrong);
    rollout_engine_free(e);
}

/* rollout_a (the same request alone) and b (in a shared batch) drew the same responses */
static void expect_same(const rollout_result *a, const rollout_result *b) {
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        const rollout_seq *x = &a->seq[i], *y = &b->seq[i];
        assert_int_equal(x->prompt, y->prompt);
        assert_int_equal(x->len, y->len);
        assert_int_equal(x->stopped, y->stopped);
        assert_int_equal(x->truncated, y->truncated);
        assert_memory_equal(x->tokens, y->tokens, (size_t)x->len * sizeof *x->tokens);
        for (int t = 0; t < x->len; t++)
            assert_true(fabsf(x->logp[t] - y->logp[t]) <= 1e-5f);
    }
}

/* The growing batch: request B (other prompts, group size, temperature, top-p, length, seed and
 * stop token) joins while A decodes; both draw exactly what each draws alone, B's stop ends only
 * B's sequences, and their slots come back when they are taken. A request that does not fit the
 * free slots or the positions is refused with CHORD_E_TOO_LARGE and changes nothing. */
static void test_growing_batch(void **state) {
    fixture *f = *state;
    rollout_engine *e = rollout_engine_new(f->m);
    chord_err err = {0};
    rollout_params pa = params(1.0f, 1.0f, 2, 12), pb = params(0.7f, 0.9f, 3, 6);
    pb.seed = 99, pb.stream = 1;
    rollout_result alone_a, alone_b, probe;
    if (rollout_generate(e, PROMPTS, PLENS, 2, &pa, &alone_a, &err) != 0) fail_msg("%s", err.msg);
    if (rollout_generate(e, &PROMPTS[2], &PLENS[2], 1, &pb, &probe, &err) != 0)
        fail_msg("%s", err.msg);
    int32_t stop[1] = {probe.seq[0].tokens[2]}; /* B's first response stops early */
    rollout_result_free(&probe);
    pb.stop_ids = stop;
    pb.n_stop = 1;
    if (rollout_generate(e, &PROMPTS[2], &PLENS[2], 1, &pb, &alone_b, &err) != 0)
        fail_msg("%s", err.msg);

    rollout_batch *b = NULL;
    if (rollout_batch_new(e, 8, 40, &b, &err) != 0) fail_msg("%s", err.msg);
    assert_int_equal(rollout_batch_add(b, PROMPTS, PLENS, 2, &pa, &err), 0);
    assert_int_equal(rollout_batch_free_slots(b), 4);
    for (int i = 0; i < 3; i++)
        assert_true(rollout_batch_step(b, &err) > 0);
    rollout_params big = params(1.0f, 1.0f, 5, 4); /* 5 > 4 free slots */
    assert_int_equal(rollout_batch_add(b, &PROMPTS[2], &PLENS[2], 1, &big, &err), -1);
    assert_int_equal(err.code, CHORD_E_TOO_LARGE);
    rollout_params longp = params(1.0f, 1.0f, 1, 40); /* 8 + 40 > the batch's 40 positions */
    assert_int_equal(rollout_batch_add(b, &PROMPTS[2], &PLENS[2], 1, &longp, &err), -1);
    assert_int_equal(err.code, CHORD_E_TOO_LARGE);
    assert_int_equal(rollout_batch_free_slots(b), 4);
    assert_int_equal(rollout_batch_add(b, &PROMPTS[2], &PLENS[2], 1, &pb, &err), 1);
    assert_int_equal(rollout_batch_most_requests(b), 2);
    rollout_result got_a, got_b;
    int took_b = 0, live;
    while ((live = rollout_batch_step(b, &err)) > 0)
        if (!took_b && rollout_batch_take(b, 1, &got_b)) took_b = 1; /* B is shorter */
    assert_int_equal(live, 0);
    assert_true(took_b);
    assert_int_equal(rollout_batch_free_slots(b), 8 - 4);
    assert_int_equal(rollout_batch_take(b, 1, &probe), 0); /* taken already */
    assert_int_equal(rollout_batch_take(b, 0, &got_a), 1);
    assert_int_equal(rollout_batch_free_slots(b), 8);
    expect_same(&alone_a, &got_a);
    expect_same(&alone_b, &got_b);
    assert_true(got_b.seq[0].stopped && !got_a.seq[0].stopped);
    rollout_batch_free(b);
    rollout_result_free(&alone_a);
    rollout_result_free(&alone_b);
    rollout_result_free(&got_a);
    rollout_result_free(&got_b);
    rollout_engine_free(e);
}

/* Bad parameters and prompts are refused with a message. */
static void test_bad_input(void **state) {
    fixture *f = *state;
    rollout_engine *e = rollout_engine_new(f->m);
    chord_err err = {0};
    rollout_result rr;
    rollout_params p = params(1.0f, 1.0f, 0, 8);
    assert_int_equal(rollout_generate(e, PROMPTS, PLENS, 3, &p, &rr, &err), -1);
    p = params(1.0f, 1.0f, 2, 8);
    int32_t bad[2] = {3, V};
    const int32_t *bp[1] = {bad};
    int bl[1] = {2};
    assert_int_equal(rollout_generate(e, bp, bl, 1, &p, &rr, &err), -1);
    assert_non_null(strstr(err.msg, "out of range"));
    p = params(1.0f, 1.0f, 2, 60); /* 8 + 60 > max_position_embeddings 64 */
    assert_int_equal(rollout_generate(e, PROMPTS, PLENS, 3, &p, &rr, &err), -1);
    assert_non_null(strstr(err.msg, "max_position_embeddings"));
    rollout_engine_free(e);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ppo_kl_tempered),
        cmocka_unit_test(test_ppo_kl_unit_temperature),
        cmocka_unit_test(test_ppo_kl_top_p),
        cmocka_unit_test(test_ppo_kl_greedy),
        cmocka_unit_test(test_group_shares_prefill),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_share_of_a_step),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_growing_batch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
