/* test_model.c — the transformer engine's own checks, on the CPU backend, with references that
 * do not come from the engine: central finite differences of the loss for the gradients (entropy
 * and temperature included), PyTorch's AdamW written out in doubles for the optimizer step,
 * bf16 rounding done bit by bit here for the save path, and the error messages for bad input.
 * The comparison with Hugging Face itself is tests/reference/model_reference.py. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/ops.h"
#include "kernels/ops_math.h"
#include "server/model/model.h"

static model_config tiny_config(int qk_norm, int tied) {
    model_config c;
    memset(&c, 0, sizeof c);
    snprintf(c.model_type, sizeof c.model_type, "%s", qk_norm ? "qwen3" : "qwen2");
    snprintf(c.architecture, sizeof c.architecture, "%s",
             qk_norm ? "Qwen3ForCausalLM" : "Qwen2ForCausalLM");
    c.vocab_size = 37;
    c.hidden_size = 16;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 4;
    c.num_key_value_heads = 2;
    c.head_dim = 6;
    c.intermediate_size = 20;
    c.max_position_embeddings = 64;
    c.rope_theta = 10000.0;
    c.rms_norm_eps = 1e-6;
    c.tie_word_embeddings = tied;
    c.attention_bias = 1;
    c.o_proj_bias = qk_norm; /* Qwen3's attention_bias covers o_proj; Qwen2 has q/k/v only */
    c.mlp_bias = 0;
    c.qk_norm = qk_norm;
    c.initializer_range = 0.3;
    c.bos_token_id = -1;
    c.pad_token_id = -1;
    snprintf(c.torch_dtype, sizeof c.torch_dtype, "float32");
    return c;
}

typedef struct fixture {
    ops_ctx *ops;
    model *m;
} fixture;

static model *make_model(ops_ctx *ops, int qk_norm, int tied, uint64_t seed) {
    model_config cfg = tiny_config(qk_norm, tied);
    chord_err err = {0};
    model *m = NULL;
    if (model_create(&cfg, ops, &m, &err) != 0) fail_msg("model_create: %s", err.msg);
    if (model_init_random(m, seed, &err) != 0) fail_msg("model_init_random: %s", err.msg);
    /* norms and biases away from their init values so their gradients are not special */
    float *p = malloc(m->num_params * sizeof *p);
    assert_non_null(p);
    assert_int_equal(model_read_params(m, p, &err), 0);
    for (size_t i = m->num_decay; i < m->num_params; i++)
        p[i] += 0.2f * (float)sin(0.7 * (double)i + 1.0);
    assert_int_equal(ops_to_device(ops, m->params, p, m->num_params * sizeof *p), 0);
    free(p);
    return m;
}

static int setup(void **state) {
    char e[256];
    fixture *f = calloc(1, sizeof *f);
    f->ops = ops_open("cpu", 1, e, sizeof e);
    if (!f->ops) return -1;
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    model_free(f->m);
    ops_close(f->ops);
    free(f);
    return 0;
}

/* Two sequences (5 and 3 tokens) packed. */
static const int32_t TOK[8] = {3, 17, 5, 36, 0, 9, 9, 22};
static const int32_t POS[8] = {0, 1, 2, 3, 4, 0, 1, 2};
static const int32_t CU[3] = {0, 5, 8};
static const int32_t TGT[8] = {17, 5, 36, 0, -1, 9, 22, -1};
static const float W_LOGP[8] = {0.5f, -1.0f, 0.25f, 1.0f, 0.3f, -0.7f, 0.9f, 0.1f};
/* ops.h: a row without a target gets no gradient at all, so its entropy weight is 0 here */
static const float W_ENT[8] = {0.2f, 0.1f, -0.3f, 0.4f, 0.0f, 0.6f, 0.05f, 0.0f};
#define INV_TEMP 0.8f

/* loss = sum_n W_LOGP[n] logp[n] + W_ENT[n] entropy[n], accumulated in double */
static double loss_of(model *m) {
    model_batch b = {
        .N = 8, .S = 2, .tokens = TOK, .positions = POS, .cu_seqlens = CU, .targets = TGT};
    float lp[8], ent[8];
    chord_err err = {0};
    if (model_forward(m, &b, INV_TEMP, lp, ent, &err) != 0) fail_msg("forward: %s", err.msg);
    double s = 0.0;
    for (int n = 0; n < 8; n++)
        s += (double)W_LOGP[n] * lp[n] + (double)W_ENT[n] * ent[n];
    return s;
}

static void finite_differences(void **state, int qk_norm, int tied) {
    fixture *f = *state;
    f->m = make_model(f->ops, qk_norm, tied, 11);
    model *m = f->m;
    chord_err err = {0};
    loss_of(m);
    assert_int_equal(model_zero_grad(m, &err), 0);
    assert_int_equal(model_backward(m, W_LOGP, W_ENT, &err), 0);
    float *g = malloc(m->num_params * sizeof *g), *p = malloc(m->num_params * sizeof *p);
    assert_int_equal(model_read_grads(m, g, &err), 0);
    assert_int_equal(model_read_params(m, p, &err), 0);
    int checked = 0;
    for (int t = 0; t < m->n_tensors; t++) {
        const model_tensor *mt = &m->tensors[t];
        /* 3 entries per tensor: the largest-gradient one and two spread ones */
        size_t pick[3] = {0, mt->numel / 3, (2 * mt->numel) / 3 + 1};
        for (size_t i = 0; i < mt->numel; i++)
            if (fabsf(g[mt->offset + i]) > fabsf(g[mt->offset + pick[0]])) pick[0] = i;
        for (int k = 0; k < 3; k++) {
            size_t i = mt->offset + (pick[k] < mt->numel ? pick[k] : 0);
            const float h = 1e-2f, orig = p[i];
            float v = orig + h;
            assert_int_equal(ops_to_device(f->ops, m->params + i, &v, sizeof v), 0);
            double lp = loss_of(m);
            v = orig - h;
            assert_int_equal(ops_to_device(f->ops, m->params + i, &v, sizeof v), 0);
            double lm = loss_of(m);
            assert_int_equal(ops_to_device(f->ops, m->params + i, &orig, sizeof orig), 0);
            double fd = (lp - lm) / (2.0 * h), an = g[i];
            if (!(fabs(fd - an) <= 3e-2 * fabs(fd) + 2e-3))
                fail_msg("%s[%zu]: backward %.6g, finite differences %.6g", mt->name,
                         i - mt->offset, an, fd);
            checked++;
        }
    }
    assert_true(checked >= 3 * 10);
    free(g);
    free(p);
}

static void test_gradients_qwen2_tied(void **state) {
    finite_differences(state, 0, 1);
}
static void test_gradients_qwen3_untied(void **state) {
    finite_differences(state, 1, 0);
}

/* Micro-batching: two backward passes without zero_grad add up. */
static void test_gradients_accumulate(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 0, 5);
    model *m = f->m;
    chord_err err = {0};
    float *g1 = malloc(m->num_params * sizeof *g1), *g2 = malloc(m->num_params * sizeof *g2);
    loss_of(m);
    assert_int_equal(model_zero_grad(m, &err), 0);
    assert_int_equal(model_backward(m, W_LOGP, NULL, &err), 0);
    assert_int_equal(model_read_grads(m, g1, &err), 0);
    loss_of(m);
    assert_int_equal(model_backward(m, W_LOGP, NULL, &err), 0);
    assert_int_equal(model_read_grads(m, g2, &err), 0);
    for (size_t i = 0; i < m->num_params; i++)
        if (fabsf(g2[i] - 2.0f * g1[i]) > 1e-5f * (1.0f + fabsf(g2[i])))
            fail_msg("grad[%zu]: %g after two passes, %g after one", i, g2[i], g1[i]);
    free(g1);
    free(g2);
}

/* model_adamw_step against PyTorch's clip_grad_norm_ + AdamW formula, in doubles. */
static void test_adamw_matches_pytorch_formula(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 1, 3);
    model *m = f->m;
    chord_err err = {0};
    const size_t n = m->num_params;
    float *p0 = malloc(n * sizeof *p0), *g = malloc(n * sizeof *g), *p1 = malloc(n * sizeof *p1);
    double *mm = calloc(n, sizeof *mm), *vv = calloc(n, sizeof *vv),
           *want = malloc(n * sizeof *want);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1, clip = 0.05;
    assert_int_equal(model_read_params(m, p0, &err), 0);
    for (size_t i = 0; i < n; i++)
        want[i] = p0[i];
    for (int t = 1; t <= 2; t++) {
        loss_of(m);
        assert_int_equal(model_zero_grad(m, &err), 0);
        assert_int_equal(model_backward(m, W_LOGP, NULL, &err), 0);
        assert_int_equal(model_read_grads(m, g, &err), 0);
        double ss = 0.0;
        for (size_t i = 0; i < n; i++)
            ss += (double)g[i] * g[i];
        double norm = sqrt(ss), coef = clip / (norm + 1e-6), got_norm = 0.0;
        if (coef > 1.0) coef = 1.0;
        assert_true(coef < 1.0); /* the clip is exercised */
        assert_int_equal(model_adamw_step(m, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd,
                                          (float)clip, &got_norm, &err),
                         0);
        assert_true(fabs(got_norm - norm) <= 1e-5 * norm);
        for (size_t i = 0; i < n; i++) {
            double gi = g[i] * coef;
            mm[i] = b1 * mm[i] + (1 - b1) * gi;
            vv[i] = b2 * vv[i] + (1 - b2) * gi * gi;
            double mh = mm[i] / (1 - pow(b1, t)), vh = vv[i] / (1 - pow(b2, t));
            double decay = i < m->num_decay ? wd : 0.0; /* matrices only */
            want[i] -= lr * decay * want[i];
            want[i] -= lr * mh / (sqrt(vh) + eps);
        }
    }
    assert_int_equal(model_read_params(m, p1, &err), 0);
    for (size_t i = 0; i < n; i++)
        if (fabs(p1[i] - want[i]) > 2e-5 * (1.0 + fabs(want[i])))
            fail_msg("param[%zu]: %.8g after two steps, want %.8g", i, p1[i], want[i]);
    free(p0);
    free(g);
    free(p1);
    free(mm);
    free(vv);
    free(want);
}

/* a backend whose AdamW update fails: the step reports it and the step counter stays */
static int failing_adamw(ops_ctx *c, float *param, const float *grad, float *mo, float *v, size_t n,
                         float lr, float beta1, float beta2, float eps, float weight_decay, int t,
                         float grad_scale) {
    (void)param, (void)grad, (void)mo, (void)v, (void)n, (void)lr, (void)beta1, (void)beta2;
    (void)eps, (void)weight_decay, (void)t, (void)grad_scale;
    snprintf(c->last_error, sizeof c->last_error, "adamw_update: injected failure");
    return -1;
}

static void test_failed_update_is_not_a_step(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 1, 5);
    model *m = f->m;
    chord_err err = {0};
    loss_of(m);
    assert_int_equal(model_zero_grad(m, &err), 0);
    assert_int_equal(model_backward(m, W_LOGP, NULL, &err), 0);
    assert_int_equal(model_adamw_step(m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, NULL, &err), 0);
    assert_int_equal(m->adam_t, 1);
    ops_backend broken = *f->ops->be;
    const ops_backend *real = f->ops->be;
    broken.adamw_update = failing_adamw;
    f->ops->be = &broken;
    assert_int_equal(model_adamw_step(m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, NULL, &err), -1);
    f->ops->be = real;
    assert_non_null(strstr(err.msg, "injected failure"));
    assert_int_equal(m->adam_t, 1);
    assert_int_equal(model_adamw_step(m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 1.0f, NULL, &err), 0);
    assert_int_equal(m->adam_t, 2);
}

static uint16_t bf16_rne(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

/* save (f32, bf16, sharded) then load gives the same parameters (bf16: rounded to nearest even). */
static void test_save_load_roundtrip(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 0, 9);
    model *m = f->m;
    chord_err err = {0};
    char dir[] = "/tmp/chord_test_model_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char sub[512];
    float *p = malloc(m->num_params * sizeof *p), *q = malloc(m->num_params * sizeof *q);
    assert_int_equal(model_read_params(m, p, &err), 0);
    const struct {
        const char *name;
        st_dtype dt;
        size_t shard;
    } cases[] = {{"f32", ST_F32, 0}, {"bf16", ST_BF16, 0}, {"sharded", ST_F32, 4096}};
    for (int c = 0; c < 3; c++) {
        snprintf(sub, sizeof sub, "%s/%s", dir, cases[c].name);
        if (model_save(m, sub, cases[c].dt, cases[c].shard, &err) != 0)
            fail_msg("save %s: %s", cases[c].name, err.msg);
        model *back = NULL;
        if (model_load(sub, f->ops, &back, &err) != 0)
            fail_msg("load %s: %s", cases[c].name, err.msg);
        assert_int_equal(back->num_params, m->num_params);
        assert_int_equal(model_read_params(back, q, &err), 0);
        for (size_t i = 0; i < m->num_params; i++) {
            float want = p[i];
            if (cases[c].dt == ST_BF16) {
                uint32_t u = (uint32_t)bf16_rne(p[i]) << 16;
                memcpy(&want, &u, sizeof want);
            }
            if (memcmp(&q[i], &want, sizeof want) != 0)
                fail_msg("%s: param[%zu] = %.9g, want %.9g", cases[c].name, i, q[i], want);
        }
        model_free(back);
    }
    snprintf(sub, sizeof sub, "rm -rf '%s'", dir);
    assert_int_equal(system(sub), 0);
    free(p);
    free(q);
}

static void expect_error(int rc, const chord_err *err, const char *want) {
    assert_int_equal(rc, -1);
    if (!strstr(err->msg, want)) fail_msg("error \"%s\" lacks \"%s\"", err->msg, want);
}

static void test_bad_input(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 1, 1);
    model *m = f->m;
    chord_err err = {0};
    int32_t tok[3] = {1, 37, 2}, pos[3] = {0, 1, 2}, cu[2] = {0, 3}, tgt[3] = {37, 2, -1};
    model_batch b = {.N = 3, .S = 1, .tokens = tok, .positions = pos, .cu_seqlens = cu};
    expect_error(model_forward(m, &b, 1.0f, NULL, NULL, &err), &err, "tokens[1] = 37");
    tok[1] = 4;
    b.targets = tgt;
    expect_error(model_forward(m, &b, 1.0f, NULL, NULL, &err), &err, "targets[0] = 37");
    tgt[0] = 4;
    cu[1] = 2;
    expect_error(model_forward(m, &b, 1.0f, NULL, NULL, &err), &err, "cu_seqlens");
    cu[1] = 3;
    float dl[3] = {0};
    expect_error(model_backward(m, dl, NULL, &err), &err, "no forward");
    assert_int_equal(model_forward(m, &b, 1.0f, NULL, NULL, &err), 0);

    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_create(m, 2, 4, &kv, &err), 0);
    const float *logits = NULL;
    int32_t slot = 0, p = 0, t = 1;
    expect_error(model_decode(m, kv, &t, &(int32_t){2}, &slot, 1, &logits, &err), &err,
                 "would leave a gap");
    int32_t long_cu[2] = {0, 5}, long_tok[5] = {1, 2, 3, 4, 5};
    expect_error(model_prefill(m, kv, long_tok, long_cu, 1, &slot, &logits, &err), &err,
                 "cache holds 1..4");
    expect_error(model_prefill(m, kv, long_tok, cu, 1, &(int32_t){2}, &logits, &err), &err,
                 "slots[0] = 2");
    assert_int_equal(model_prefill(m, kv, long_tok, cu, 1, &slot, &logits, &err), 0);
    assert_int_equal(model_decode(m, kv, &t, &(int32_t){3}, &slot, 1, &logits, &err), 0);
    expect_error(model_kv_copy(m, kv, 0, &(int32_t){1}, 1, 5, &err), &err, "holds 4 positions");
    expect_error(model_decode(m, kv, &t, &(int32_t){4}, &slot, 1, &logits, &err), &err,
                 "outside the cache");
    (void)p;
    model_kv_free(kv);
}

/* Saving an untied model and loading it with lm_head.weight gone names the missing tensor. */
static void test_missing_tensor(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 0, 2);
    chord_err err = {0};
    char dir[] = "/tmp/chord_test_model_XXXXXX";
    assert_non_null(mkdtemp(dir));
    /* write every tensor but lm_head with the safetensors writer directly */
    model *m = f->m;
    float *p = malloc(m->num_params * sizeof *p);
    assert_int_equal(model_read_params(m, p, &err), 0);
    st_writer *w = st_writer_new();
    for (int i = 0; i < m->n_tensors; i++)
        if (strcmp(m->tensors[i].name, "lm_head.weight") != 0)
            assert_int_equal(st_writer_add(w, m->tensors[i].name, p + m->tensors[i].offset,
                                           m->tensors[i].shape, m->tensors[i].ndim, ST_F32, &err),
                             0);
    assert_int_equal(st_writer_save_dir(w, dir, 0, &err), 0);
    st_writer_free(w);
    assert_int_equal(model_config_save(&m->cfg, dir, &err), 0);
    model *back = NULL;
    expect_error(model_load(dir, f->ops, &back, &err), &err, "lm_head.weight is missing");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(p);
}

/* Resume equals an uninterrupted run: 2 AdamW steps in one go, or 1 step, save the parameters
 * (f32) and the optimizer state, load both into a fresh model, 1 more step — bit for bit. */
static void one_step(model *m) {
    chord_err err = {0};
    loss_of(m);
    assert_int_equal(model_zero_grad(m, &err), 0);
    assert_int_equal(model_backward(m, W_LOGP, NULL, &err), 0);
    if (model_adamw_step(m, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.05f, 1.0f, NULL, &err) != 0)
        fail_msg("adamw: %s", err.msg);
}

static void test_optimizer_state_resume(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 0, 21);
    model *a = f->m, *b = make_model(f->ops, 1, 0, 21), *c = NULL;
    chord_err err = {0};
    char dir[] = "/tmp/chord_test_model_XXXXXX", path[512], cmd[600];
    assert_non_null(mkdtemp(dir));
    one_step(a);
    one_step(a);
    one_step(b);
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    if (model_save(b, dir, ST_F32, 0, &err) != 0) fail_msg("save: %s", err.msg);
    if (model_save_optimizer(b, path, &err) != 0) fail_msg("save optimizer: %s", err.msg);
    if (model_load(dir, f->ops, &c, &err) != 0) fail_msg("load: %s", err.msg);
    if (model_load_optimizer(c, path, &err) != 0) fail_msg("load optimizer: %s", err.msg);
    assert_int_equal(c->adam_t, 1);
    one_step(c);
    float *pa = malloc(a->num_params * sizeof *pa), *pc = malloc(c->num_params * sizeof *pc);
    assert_int_equal(model_read_params(a, pa, &err), 0);
    assert_int_equal(model_read_params(c, pc, &err), 0);
    assert_memory_equal(pa, pc, a->num_params * sizeof *pa);
    /* a model of another size refuses the state */
    model *other = make_model(f->ops, 0, 1, 1);
    expect_error(model_load_optimizer(other, path, &err), &err, "adam_m");
    model_free(other);
    model_free(b);
    model_free(c);
    free(pa);
    free(pc);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

/* ZeRO-1 (model_set_optimizer_shard): two models holding the moments of [0, k) and [k, n), the
 * slice boundary inside the weight-decayed matrices, each updating its slice with the global
 * norm and then taking the other's slice (an all-gather), follow one whole model to fp32
 * round-off (the norm's squares are added in another order); the slices' moments gathered make
 * the whole model's optimizer file, which loads back into a slice. */
static void test_optimizer_shards(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 0, 21);
    model *whole = f->m, *s[2] = {make_model(f->ops, 1, 0, 21), make_model(f->ops, 1, 0, 21)};
    chord_err err = {0};
    const size_t n = whole->num_params, k = whole->num_decay - 5;
    size_t lo[2] = {0, k}, hi[2] = {k, n};
    for (int r = 0; r < 2; r++)
        assert_int_equal(model_set_optimizer_shard(s[r], lo[r], hi[r], &err), 0);
    expect_error(model_set_optimizer_shard(s[0], 3, n + 1, &err), &err, "not a slice");
    float *p[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))}, *pw = malloc(n * 4);
    assert_true(p[0] && p[1] && pw);
    for (int step = 0; step < 3; step++) {
        one_step(whole);
        double ss[2];
        for (int r = 0; r < 2; r++) {
            loss_of(s[r]);
            assert_int_equal(model_zero_grad(s[r], &err), 0);
            assert_int_equal(model_backward(s[r], W_LOGP, NULL, &err), 0);
            assert_int_equal(model_grad_sum_squares(s[r], lo[r], hi[r], &ss[r], &err), 0);
        }
        expect_error(model_adamw_step(s[0], 1e-2f, 0.9f, 0.99f, 1e-8f, 0.05f, 1.0f, NULL, &err),
                     &err, "sharded");
        double norm = sqrt(ss[0] + ss[1]), whole_norm = 0.0;
        assert_int_equal(model_grad_norm(whole, &whole_norm, &err), 0);
        assert_true(fabs(norm - whole_norm) <= 1e-12 * whole_norm);
        for (int r = 0; r < 2; r++) {
            int rc =
                model_adamw_step_shard(s[r], norm, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.05f, 1.0f, &err);
            if (rc != 0) fail_msg("adamw shard: %s", err.msg);
            assert_int_equal(model_read_params(s[r], p[r], &err), 0);
        }
        /* the all-gather: each takes the other's updated slice */
        memcpy(p[0] + k, p[1] + k, (n - k) * sizeof(float));
        memcpy(p[1], p[0], k * sizeof(float));
        for (int r = 0; r < 2; r++)
            assert_int_equal(ops_to_device(f->ops, s[r]->params, p[r], n * sizeof(float)), 0);
    }
    assert_int_equal(model_read_params(whole, pw, &err), 0);
    for (size_t i = 0; i < n; i++)
        assert_true(fabsf(p[0][i] - pw[i]) <= 1e-6f);
    /* the moments: the slices' gathered are the whole model's; saved, they load into a slice */
    float *mw = malloc(2 * n * sizeof(float)), *mg = malloc(2 * n * sizeof(float));
    assert_true(mw && mg);
    assert_int_equal(model_read_optimizer_shard(whole, mw, mw + n, &err), 0);
    float *tmp = malloc(2 * n * sizeof(float));
    for (int r = 0; r < 2; r++) {
        size_t c = hi[r] - lo[r];
        assert_int_equal(model_read_optimizer_shard(s[r], tmp, tmp + c, &err), 0);
        memcpy(mg + lo[r], tmp, c * sizeof(float));
        memcpy(mg + n + lo[r], tmp + c, c * sizeof(float));
    }
    for (size_t i = 0; i < 2 * n; i++)
        assert_true(fabsf(mg[i] - mw[i]) <= 1e-6f * fabsf(mw[i]) + 1e-9f);
    char dir[] = "/tmp/chord_test_model_XXXXXX", path[512], cmd[600];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
    expect_error(model_save_optimizer(s[1], path, &err), &err, "sharded");
    assert_int_equal(model_save_optimizer_from(s[1], path, mg, mg + n, &err), 0);
    model *back = make_model(f->ops, 1, 0, 21);
    assert_int_equal(model_set_optimizer_shard(back, k, n, &err), 0);
    assert_int_equal(model_load_optimizer(back, path, &err), 0);
    assert_int_equal(back->adam_t, 3);
    expect_error(model_set_optimizer_shard(back, 0, k, &err), &err, "exist");
    assert_int_equal(model_read_optimizer_shard(back, tmp, tmp + (n - k), &err), 0);
    assert_memory_equal(tmp, mg + k, (n - k) * sizeof(float));
    assert_memory_equal(tmp + (n - k), mg + n + k, (n - k) * sizeof(float));
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    model_free(back);
    model_free(s[0]);
    model_free(s[1]);
    free(p[0]);
    free(p[1]);
    free(pw);
    free(mw);
    free(mg);
    free(tmp);
}

/* model_set_grad_hook: during the backward, what the hook is told is final is final — the
 * gradients at and above final_from then equal those at the end, bit for bit — final_from never
 * rises, ends at 0, and the layers above the embedding are reported before the end (what lets
 * data parallelism start a bucket early); for the base and for a LoRA adapter (its buffer). A
 * hook's error ends the backward. */
typedef struct hook_log {
    model *m;
    size_t n;
    int calls, early;
    size_t last, from[16];
    float *snap[16];
} hook_log;

static int record_hook(void *user, size_t final_from, chord_err *err) {
    hook_log *h = user;
    if (final_from > h->last) return chord_err_set(err, "final_from rose");
    if (h->calls >= 16) return chord_err_set(err, "too many calls");
    if (final_from > 0 && final_from < h->n) h->early++;
    h->last = final_from;
    h->from[h->calls] = final_from;
    h->snap[h->calls] = malloc(h->n * sizeof(float));
    if (!h->snap[h->calls]) return chord_err_set(err, "oom");
    ops_to_host(h->m->ops, h->snap[h->calls], model_trainable_grads(h->m), h->n * sizeof(float));
    h->calls++;
    return 0;
}

static int failing_hook(void *user, size_t final_from, chord_err *err) {
    (void)user;
    (void)final_from;
    return chord_err_set(err, "the hook says no");
}

static void check_grad_hook(model *m) {
    chord_err err = {0};
    hook_log h = {.m = m, .n = model_trainable_params(m), .last = (size_t)-1};
    loss_of(m);
    assert_int_equal(model_zero_grad(m, &err), 0);
    model_set_grad_hook(m, record_hook, &h);
    if (model_backward(m, W_LOGP, W_ENT, &err) != 0) fail_msg("backward: %s", err.msg);
    model_set_grad_hook(m, NULL, NULL);
    assert_int_equal(h.calls, m->cfg.num_hidden_layers + 2);
    assert_true(h.last == 0 && h.early > 0);
    float *end = malloc(h.n * sizeof(float));
    assert_non_null(end);
    ops_to_host(m->ops, end, model_trainable_grads(m), h.n * sizeof(float));
    for (int c = 0; c < h.calls; c++) {
        assert_memory_equal(h.snap[c] + h.from[c], end + h.from[c],
                            (h.n - h.from[c]) * sizeof(float));
        free(h.snap[c]);
    }
    free(end);
    loss_of(m);
    model_set_grad_hook(m, failing_hook, NULL);
    expect_error(model_backward(m, W_LOGP, W_ENT, &err), &err, "the hook says no");
    model_set_grad_hook(m, NULL, NULL);
}

static void test_grad_hook(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 0, 21);
    check_grad_hook(f->m);
    model *tied = make_model(f->ops, 0, 1, 3);
    check_grad_hook(tied);
    model_free(tied);
    chord_err err = {0};
    model_lora_config lc = {
        .rank = 2, .alpha = 4, .targets = (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_DOWN)};
    assert_int_equal(model_lora_attach(f->m, &lc, 7, &err), 0);
    check_grad_hook(f->m);
}

/* ---- shared prefixes (model_batch.seg_parent) ----
 * Groups of responses to one prompt, and a lone sequence, laid out twice: unshared (every
 * response after its own copy of the prompt) and shared (the prompt but its last token once,
 * each response after that token in its own child segment). The logp, entropy and every
 * parameter gradient must agree to fp32 round-off; prompt rows carry targets in the unshared
 * layout's first copy only, so both losses are the same function. */
typedef struct shared_group {
    int p, G;
    int32_t prompt[8];
    int rl[3];
    int32_t resp[3][6];
} shared_group;

static const shared_group GROUPS[] = {
    {6, 3, {3, 17, 5, 36, 0, 9}, {3, 5, 1}, {{9, 22, 4}, {1, 2, 3, 4, 5}, {30}}},
    {4, 0, {7, 7, 8, 2}, {0}, {{0}}}, /* a lone sequence (no responses) */
    {3, 1, {11, 12, 13}, {2}, {{14, 15}}},
    {2, 2, {20, 21}, {4, 2}, {{22, 23, 24, 25}, {26, 27}}},
};
#define N_GROUPS (int)(sizeof GROUPS / sizeof GROUPS[0])

static int32_t group_tok(const shared_group *g, int i, int j) {
    return j < g->p ? g->prompt[j] : g->resp[i][j - g->p];
}
/* the loss weights of (group, response, position): a prompt position's are response 0's */
static float w_of(int g, int i, int j, int ent) {
    if (j < GROUPS[g].p - 1) i = 0;
    return (float)sin(1.3 * g + 0.7 * i + 0.37 * j + (ent ? 2.0 : 0.0)) * (ent ? 0.3f : 1.0f);
}

typedef struct shared_layout {
    int N, S;
    int32_t tok[64], pos[64], tgt[64], cu[16], parent[16];
    float wl[64], we[64];
    int row_of[N_GROUPS][3][16]; /* (group, response, position) -> row, -1 where none */
} shared_layout;

static void emit_row(shared_layout *L, int g, int i, int j, int len, int target_ok) {
    const shared_group *G = &GROUPS[g];
    int n = L->N++;
    L->tok[n] = group_tok(G, i, j);
    L->pos[n] = j;
    L->tgt[n] = target_ok && j + 1 < len ? group_tok(G, i, j + 1) : -1;
    L->wl[n] = L->tgt[n] >= 0 ? w_of(g, i, j, 0) : 0.0f;
    L->we[n] = L->tgt[n] >= 0 ? w_of(g, i, j, 1) : 0.0f;
    L->row_of[g][i][j] = L->tgt[n] >= 0 ? n : -1;
}

static void layout_groups(shared_layout *L, int shared) {
    memset(L, 0, sizeof *L);
    memset(L->row_of, 0xff, sizeof L->row_of);
    for (int g = 0; g < N_GROUPS; g++) {
        const shared_group *G = &GROUPS[g];
        if (G->G == 0) { /* a lone sequence */
            L->parent[L->S] = -1;
            for (int j = 0; j < G->p; j++)
                emit_row(L, g, 0, j, G->p, 1);
            L->cu[++L->S] = L->N;
            continue;
        }
        int prefix = -1;
        if (shared) { /* the prompt but its last token, once */
            prefix = L->S;
            L->parent[L->S] = -1;
            for (int j = 0; j < G->p - 1; j++)
                emit_row(L, g, 0, j, G->p + G->rl[0], 1);
            L->cu[++L->S] = L->N;
        }
        for (int i = 0; i < G->G; i++) {
            int len = G->p + G->rl[i];
            L->parent[L->S] = prefix;
            for (int j = shared ? G->p - 1 : 0; j < len; j++)
                emit_row(L, g, i, j, len, j >= G->p - 1 || i == 0);
            L->cu[++L->S] = L->N;
        }
    }
}

static void shared_prefix_case(void **state, int qk_norm, int tied) {
    fixture *f = *state;
    f->m = make_model(f->ops, qk_norm, tied, 21);
    model *m = f->m;
    chord_err err = {0};
    shared_layout L[2];
    float lp[2][64], ent[2][64];
    float *g[2] = {malloc(m->num_params * sizeof(float)), malloc(m->num_params * sizeof(float))};
    for (int sh = 0; sh < 2; sh++) {
        layout_groups(&L[sh], sh);
        model_batch b = {.N = L[sh].N,
                         .S = L[sh].S,
                         .tokens = L[sh].tok,
                         .positions = L[sh].pos,
                         .cu_seqlens = L[sh].cu,
                         .targets = L[sh].tgt,
                         .seg_parent = sh ? L[sh].parent : NULL};
        if (model_forward(m, &b, INV_TEMP, lp[sh], ent[sh], &err) != 0)
            fail_msg("forward (shared %d): %s", sh, err.msg);
        assert_int_equal(model_zero_grad(m, &err), 0);
        if (model_backward(m, L[sh].wl, L[sh].we, &err) != 0)
            fail_msg("backward (shared %d): %s", sh, err.msg);
        assert_int_equal(model_read_grads(m, g[sh], &err), 0);
    }
    assert_true(L[1].N < L[0].N);
    int compared = 0;
    for (int gi = 0; gi < N_GROUPS; gi++)
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 16; j++) {
                int a = L[0].row_of[gi][i][j], b = L[1].row_of[gi][i][j];
                if ((a < 0) != (b < 0)) fail_msg("row (%d, %d, %d): in one layout only", gi, i, j);
                if (a < 0) continue;
                if (fabsf(lp[0][a] - lp[1][b]) > 1e-5f * (1.0f + fabsf(lp[0][a])) ||
                    fabsf(ent[0][a] - ent[1][b]) > 1e-5f * (1.0f + fabsf(ent[0][a])))
                    fail_msg("row (%d, %d, %d): logp %.7g / %.7g, entropy %.7g / %.7g", gi, i, j,
                             lp[0][a], lp[1][b], ent[0][a], ent[1][b]);
                compared++;
            }
    assert_true(compared >= 25);
    double gmax = 0.0;
    for (size_t k = 0; k < m->num_params; k++)
        gmax = fmax(gmax, fabs(g[0][k]));
    assert_true(gmax > 1e-3);
    for (int t = 0; t < m->n_tensors; t++) {
        const model_tensor *mt = &m->tensors[t];
        for (size_t k = mt->offset; k < mt->offset + mt->numel; k++)
            if (fabsf(g[0][k] - g[1][k]) > 2e-5f * (float)gmax)
                fail_msg("%s[%zu]: gradient %.7g unshared, %.7g shared", mt->name, k - mt->offset,
                         g[0][k], g[1][k]);
    }
    free(g[0]);
    free(g[1]);
}

static void test_shared_prefix_qwen2_tied(void **state) {
    shared_prefix_case(state, 0, 1);
}
static void test_shared_prefix_qwen3_untied(void **state) {
    shared_prefix_case(state, 1, 0);
}

/* seg_parent that the layout cannot honour is refused by name. */
static void test_shared_prefix_bad_parents(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 0, 2);
    static const int32_t tok[6] = {1, 2, 3, 4, 5, 6}, cu[4] = {0, 2, 4, 6};
    static const int32_t pos_ok[6] = {0, 1, 2, 3, 2, 3}, pos_gap[6] = {0, 1, 5, 6, 2, 3};
    static const int32_t later[3] = {-1, 2, -1}, chain[3] = {-1, 0, 1}, ok[3] = {-1, 0, 0};
    struct {
        const int32_t *pos, *parent;
        const char *want;
    } cases[] = {{pos_ok, later, "seg_parent[1] = 2"},
                 {pos_ok, chain, "seg_parent[2] = 1"},
                 {pos_gap, ok, "segment 1 starts at position 5"}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        model_batch b = {.N = 6,
                         .S = 3,
                         .tokens = tok,
                         .positions = cases[k].pos,
                         .cu_seqlens = cu,
                         .seg_parent = cases[k].parent};
        chord_err err = {0};
        assert_int_equal(model_forward(f->m, &b, 1.0f, NULL, NULL, &err), -1);
        if (!strstr(err.msg, cases[k].want)) fail_msg("case %zu: '%s'", k, err.msg);
    }
}

/* ---- LoRA (model_lora_attach) ----
 * The numbers against peft are tests/reference/model_reference.py's; here the contracts around
 * them: a fresh adapter changes nothing (B = 0) and draws A within PEFT's bound; the base stays
 * frozen through a step while the adapter moves; the KV-cache decode with the adapter equals the
 * training forward (rollouts sample base + adapter without merging); bad configs are refused. */
static void test_lora_contracts(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 1, 0, 9);
    model *m = f->m;
    chord_err err = {0};
    const int V = m->cfg.vocab_size, N = 8;
    float *base_logits = malloc((size_t)N * V * sizeof(float));
    float *logits = malloc((size_t)N * V * sizeof(float));
    model_batch b = {
        .N = N, .S = 2, .tokens = TOK, .positions = POS, .cu_seqlens = CU, .targets = TGT};
    assert_int_equal(model_forward(m, &b, 1.0f, NULL, NULL, &err), 0);
    assert_int_equal(model_read_logits(m, base_logits, &err), 0);

    model_lora_config bad = {.rank = 0, .alpha = 8, .targets = 1u << MODEL_LORA_Q};
    assert_int_equal(model_lora_attach(m, &bad, 1, &err), -1);
    bad = (model_lora_config){.rank = 2, .alpha = 8, .targets = 1u << MODEL_LORA_N_TARGETS};
    assert_int_equal(model_lora_attach(m, &bad, 1, &err), -1);
    assert_null(m->lora);

    model_lora_config lc = {.rank = 3,
                            .alpha = 6.0,
                            .targets = (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_V) |
                                       (1u << MODEL_LORA_O) | (1u << MODEL_LORA_DOWN)};
    assert_int_equal(model_lora_attach(m, &lc, 5, &err), 0);
    assert_int_equal(model_lora_attach(m, &lc, 5, &err), -1); /* one at a time */
    int nt = 0;
    size_t np = 0;
    const model_tensor *lt = model_lora_tensors(m, &nt, &np);
    assert_int_equal(nt, 2 * 4 * m->cfg.num_hidden_layers);
    assert_string_equal(lt[0].name,
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight");
    float *p = malloc(np * sizeof *p), *p2 = malloc(np * sizeof *p2);
    assert_int_equal(model_lora_read_params(m, p, &err), 0);
    int a_nonzero = 0;
    for (int i = 0; i < nt; i++) {
        int is_b = strstr(lt[i].name, ".lora_B.") != NULL;
        float bound = 1.0f / sqrtf((float)lt[i].shape[1]);
        for (size_t j = 0; j < lt[i].numel; j++) {
            float v = p[lt[i].offset + j];
            if (is_b)
                assert_true(v == 0.0f);
            else
                assert_true(fabsf(v) <= bound);
            a_nonzero += !is_b && v != 0.0f;
        }
    }
    assert_true(a_nonzero > 0);
    assert_int_equal(model_forward(m, &b, 1.0f, NULL, NULL, &err), 0);
    assert_int_equal(model_read_logits(m, logits, &err), 0);
    for (int i = 0; i < N * V; i++) /* B = 0: the base's output exactly */
        assert_true(logits[i] == base_logits[i]);

    /* one step: the adapter moves, the base does not */
    float *base0 = malloc(m->num_params * sizeof *base0),
          *base1 = malloc(m->num_params * sizeof *base1);
    assert_int_equal(model_read_params(m, base0, &err), 0);
    assert_int_equal(model_zero_grad(m, &err), 0);
    assert_int_equal(model_forward(m, &b, 1.0f, NULL, NULL, &err), 0);
    assert_int_equal(model_backward(m, W_LOGP, W_ENT, &err), 0);
    float *scratch = malloc(m->num_params * sizeof *scratch);
    expect_error(model_read_grads(m, scratch, &err), &err, "frozen");
    free(scratch);
    double gn = 0;
    assert_int_equal(model_adamw_step(m, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.0f, 0.0f, &gn, &err), 0);
    assert_true(gn > 0);
    assert_int_equal(model_read_params(m, base1, &err), 0);
    assert_memory_equal(base0, base1, m->num_params * sizeof *base0);
    assert_int_equal(model_lora_read_params(m, p2, &err), 0);
    /* B = 0 leaves A without a gradient at first (dA = s B^T dy x^T): B moves, A waits */
    for (int i = 0; i < nt; i++) {
        int is_b = strstr(lt[i].name, ".lora_B.") != NULL, moved = 0;
        for (size_t j = 0; j < lt[i].numel; j++)
            moved += p2[lt[i].offset + j] != p[lt[i].offset + j];
        if (is_b ? moved < (int)lt[i].numel / 2 : moved != 0)
            fail_msg("%s: %d of %zu entries moved", lt[i].name, moved, lt[i].numel);
    }

    /* the KV-cache path with the adapter: prefill 3 tokens of sequence 0, decode the next two */
    assert_int_equal(model_forward(m, &b, 1.0f, NULL, NULL, &err), 0);
    assert_int_equal(model_read_logits(m, logits, &err), 0);
    model_kv_cache *kv = NULL;
    assert_int_equal(model_kv_create(m, 1, 8, &kv, &err), 0);
    const int32_t cu3[2] = {0, 3}, slot = 0;
    const float *dl = NULL;
    float row[64];
    assert_true(V <= 64);
    assert_int_equal(model_prefill(m, kv, TOK, cu3, 1, &slot, &dl, &err), 0);
    for (int t = 2; t < 5; t++) {
        if (t > 2) {
            int32_t pos = t;
            assert_int_equal(model_decode(m, kv, &TOK[t], &pos, &slot, 1, &dl, &err), 0);
        }
        assert_int_equal(ops_to_host(f->ops, row, dl, (size_t)V * sizeof(float)), 0);
        for (int v = 0; v < V; v++)
            if (fabsf(row[v] - logits[(size_t)t * V + v]) > 1e-4f * (1.0f + fabsf(row[v])))
                fail_msg("position %d token %d: decode %.7g, forward %.7g", t, v, row[v],
                         logits[(size_t)t * V + v]);
    }
    model_kv_free(kv);
    free(base_logits), free(logits), free(p), free(p2), free(base0), free(base1);
}

/* model_lora_save / model_lora_load: a round trip gives the same parameters (with the trained
 * embeddings too); a PEFT directory chord cannot run as written is refused naming the field
 * (DoRA, a regex-free but unknown target, modules_to_save other than the embeddings, a tied
 * head without ensure_weight_tying) or the tensor it does not expect. */
static void write_text(const char *path, const char *text) {
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    fputs(text, fp);
    fclose(fp);
}

static void test_lora_files(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 1, 4);
    model *m = f->m;
    chord_err err = {0};
    char dir[] = "/tmp/chord_lora_XXXXXX", cfgp[256], cmd[512];
    assert_non_null(mkdtemp(dir));
    snprintf(cfgp, sizeof cfgp, "%s/adapter_config.json", dir);
    model_lora_config lc = {
        .rank = 2, .alpha = 4.0, .targets = (1u << MODEL_LORA_K) | (1u << MODEL_LORA_UP)};
    assert_int_equal(model_lora_attach(m, &lc, 3, &err), 0);
    size_t np = 0;
    model_lora_tensors(m, NULL, &np);
    float *p = malloc(np * sizeof *p), *q = malloc(np * sizeof *q);
    for (size_t i = 0; i < np; i++)
        p[i] = 0.01f * (float)(i % 17) - 0.08f;
    assert_int_equal(model_lora_write_params(m, p, &err), 0);
    assert_int_equal(model_lora_save(m, dir, "base", &err), 0);
    model *m2 = make_model(f->ops, 0, 1, 4);
    assert_int_equal(model_lora_load(m2, dir, &err), 0);
    assert_int_equal(model_lora_read_params(m2, q, &err), 0);
    assert_memory_equal(p, q, np * sizeof *p);
    model_free(m2);

    static const struct {
        const char *config, *want;
    } bad[] = {
        {"{\"peft_type\": \"LORA\", \"r\": 2, \"lora_alpha\": 4, \"target_modules\": "
         "[\"k_proj\", \"up_proj\"], \"use_dora\": true}",
         "use_dora"},
        {"{\"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"k_proj\", \"lm_head\"]}",
         "target_modules[1]: \"lm_head\""},
        {"{\"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"k_proj\", \"up_proj\"], "
         "\"modules_to_save\": [\"lm_head\"]}",
         "modules_to_save: chord trains the embeddings whole"},
        {"{\"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"k_proj\", \"up_proj\"], "
         "\"modules_to_save\": [\"embed_tokens\", \"norm\"]}",
         "modules_to_save[1]: \"norm\" is not supported"},
        {"{\"r\": 0, \"lora_alpha\": 4, \"target_modules\": [\"k_proj\"]}", "r: must be"},
        /* the file holds up_proj tensors this config does not have */
        {"{\"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"k_proj\"]}", "up_proj.lora_A"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_text(cfgp, bad[k].config);
        m2 = make_model(f->ops, 0, 1, 4);
        expect_error(model_lora_load(m2, dir, &err), &err, bad[k].want);
        assert_null(m2->lora);
        model_free(m2);
    }
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
    free(p), free(q);
}

/* model_create_view: two adapters over one copy of the base, trained and sampled at once
 * (interleaved forwards and backwards), each exactly what a model of its own would do; the base
 * never moves; a view without an adapter trains nothing. */
static void set_b(model *m, float amp) {
    chord_err err = {0};
    int nt = 0;
    size_t np = 0;
    const model_tensor *lt = model_lora_tensors(m, &nt, &np);
    float *p = malloc(np * sizeof *p);
    assert_int_equal(model_lora_read_params(m, p, &err), 0);
    for (int i = 0; i < nt; i++)
        if (strstr(lt[i].name, ".lora_B."))
            for (size_t j = 0; j < lt[i].numel; j++)
                p[lt[i].offset + j] = amp * sinf(0.41f * (float)j + (float)i);
    assert_int_equal(model_lora_write_params(m, p, &err), 0);
    free(p);
}

static void test_views_share_base(void **state) {
    fixture *f = *state;
    f->m = make_model(f->ops, 0, 1, 6);
    model *base = f->m, *v[2] = {NULL, NULL}, *alone = make_model(f->ops, 0, 1, 6);
    chord_err err = {0};
    const int V = base->cfg.vocab_size, N = 8;
    model_batch b = {
        .N = N, .S = 2, .tokens = TOK, .positions = POS, .cu_seqlens = CU, .targets = TGT};
    model_lora_config lc[2] = {
        {.rank = 2, .alpha = 4, .targets = (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_DOWN)},
        {.rank = 3, .alpha = 3, .targets = (1u << MODEL_LORA_V) | (1u << MODEL_LORA_UP)}};
    float *p0 = malloc(base->num_params * sizeof *p0), *p1 = malloc(base->num_params * sizeof *p1);
    assert_int_equal(model_read_params(base, p0, &err), 0);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(model_create_view(base, NULL, &v[k], &err), 0);
        assert_true(v[k]->params == base->params); /* one copy of the weights */
    }
    expect_error(model_zero_grad(v[0], &err), &err, "trains an adapter only");
    expect_error(model_init_random(v[0], 1, &err), &err, "shared");
    model *vv = NULL;
    expect_error(model_create_view(v[0], NULL, &vv, &err), &err, "not a view");
    assert_null(vv);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(model_lora_attach(v[k], &lc[k], 10 + k, &err), 0);
        set_b(v[k], 0.03f * (k + 1));
    }
    assert_int_equal(model_lora_attach(alone, &lc[0], 10, &err), 0);
    set_b(alone, 0.03f);
    /* interleaved: both views forward, then both backward, then both step */
    for (int k = 0; k < 2; k++) {
        assert_int_equal(model_zero_grad(v[k], &err), 0);
        assert_int_equal(model_forward(v[k], &b, 1.0f, NULL, NULL, &err), 0);
    }
    for (int k = 0; k < 2; k++) {
        assert_int_equal(model_backward(v[k], W_LOGP, NULL, &err), 0);
        assert_int_equal(model_adamw_step(v[k], 1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f, NULL, &err),
                         0);
    }
    assert_int_equal(model_zero_grad(alone, &err), 0);
    assert_int_equal(model_forward(alone, &b, 1.0f, NULL, NULL, &err), 0);
    assert_int_equal(model_backward(alone, W_LOGP, NULL, &err), 0);
    assert_int_equal(model_adamw_step(alone, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f, NULL, &err), 0);
    float *l[3];
    model *ms[3] = {v[0], v[1], alone};
    for (int k = 0; k < 3; k++) {
        l[k] = malloc((size_t)N * V * sizeof(float));
        assert_int_equal(model_forward(ms[k], &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(ms[k], l[k], &err), 0);
    }
    double d01 = 0;
    for (int i = 0; i < N * V; i++) {
        if (fabsf(l[0][i] - l[2][i]) > 1e-5f * (1.0f + fabsf(l[2][i])))
            fail_msg("logit %d: view %.7g, a model of its own %.7g", i, l[0][i], l[2][i]);
        d01 = fmax(d01, fabs(l[0][i] - l[1][i]));
    }
    assert_true(d01 > 1e-3); /* two different adapters */
    assert_int_equal(model_read_params(base, p1, &err), 0);
    assert_memory_equal(p0, p1, base->num_params * sizeof *p0); /* the base never moved */
    for (int k = 0; k < 3; k++)
        free(l[k]);
    model_free(v[0]);
    model_free(v[1]);
    model_free(alone);
    free(p0), free(p1);
}

/* train_embeddings on a view (tied and untied): the copies start as the base's (the view's
 * logits are the base's), train (they move, the base does not), switch off with the adapter (the
 * base's logits again), and survive a save and load (PEFT's files: the tied lm_head's copy
 * written twice, a tied head without ensure_weight_tying refused by field). */
static void test_lora_embeddings(void **state) {
    fixture *f = *state;
    for (int tied = 0; tied <= 1; tied++) {
        model *base = make_model(f->ops, 0, tied, 9), *v = NULL, *v2 = NULL;
        chord_err err = {0};
        const int V = base->cfg.vocab_size, N = 8;
        model_batch b = {
            .N = N, .S = 2, .tokens = TOK, .positions = POS, .cu_seqlens = CU, .targets = TGT};
        float *lb = malloc((size_t)N * V * sizeof *lb), *lv = malloc((size_t)N * V * sizeof *lv);
        float *p0 = malloc(base->num_params * sizeof *p0), *p1 = malloc(base->num_params * sizeof *p1);
        assert_int_equal(model_read_params(base, p0, &err), 0);
        assert_int_equal(model_forward(base, &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(base, lb, &err), 0);
        assert_int_equal(model_create_view(base, NULL, &v, &err), 0);
        model_lora_config lc = {.rank = 2, .alpha = 4, .targets = 1u << MODEL_LORA_Q,
                                .train_embeddings = 1};
        assert_int_equal(model_lora_attach(v, &lc, 5, &err), 0);
        int nt = 0;
        size_t np = 0;
        const model_tensor *lt = model_lora_tensors(v, &nt, &np);
        assert_int_equal(nt, 2 * base->cfg.num_hidden_layers + (tied ? 1 : 2));
        assert_string_equal(lt[2 * base->cfg.num_hidden_layers].name,
                            "base_model.model.model.embed_tokens.weight");
        assert_true(v->w.wte != base->w.wte); /* its own copy */
        assert_int_equal(model_forward(v, &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(v, lv, &err), 0);
        assert_memory_equal(lb, lv, (size_t)N * V * sizeof *lb); /* the copy is the base's */
        for (int step = 0; step < 2; step++) {
            assert_int_equal(model_zero_grad(v, &err), 0);
            assert_int_equal(model_forward(v, &b, 1.0f, NULL, NULL, &err), 0);
            assert_int_equal(model_backward(v, W_LOGP, NULL, &err), 0);
            assert_int_equal(model_adamw_step(v, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.1f, 1.0f, NULL, &err),
                             0);
        }
        float *a = malloc(np * sizeof *a);
        assert_int_equal(model_lora_read_params(v, a, &err), 0);
        const model_tensor *emb = &lt[2 * base->cfg.num_hidden_layers];
        double moved = 0;
        for (size_t j = 0; j < emb->numel; j++)
            moved = fmax(moved, fabs((double)a[emb->offset + j] - p0[(size_t)(base->w.wte -
                                                                            base->params) + j]));
        assert_true(moved > 1e-4); /* the embedding trained */
        assert_int_equal(model_read_params(base, p1, &err), 0);
        assert_memory_equal(p0, p1, base->num_params * sizeof *p0); /* the base did not */
        assert_int_equal(model_lora_set_enabled(v, 0, &err), 0);
        assert_int_equal(model_forward(v, &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(v, lv, &err), 0);
        assert_memory_equal(lb, lv, (size_t)N * V * sizeof *lb); /* off: the base's */
        assert_int_equal(model_lora_set_enabled(v, 1, &err), 0);
        assert_int_equal(model_forward(v, &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(v, lv, &err), 0);

        char dir[] = "/tmp/chord_lora_emb_XXXXXX", path[256], cmd[512];
        assert_non_null(mkdtemp(dir));
        assert_int_equal(model_lora_save(v, dir, "base", &err), 0);
        snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
        st_reader *rd = NULL;
        assert_int_equal(st_open(path, &rd, &err), 0);
        assert_int_equal(st_count(rd), nt + tied); /* PEFT's extra name for the tied head */
        st_close(rd);
        assert_int_equal(model_create_view(base, NULL, &v2, &err), 0);
        assert_int_equal(model_lora_load(v2, dir, &err), 0);
        float *l2 = malloc((size_t)N * V * sizeof *l2);
        assert_int_equal(model_forward(v2, &b, 1.0f, NULL, NULL, &err), 0);
        assert_int_equal(model_read_logits(v2, l2, &err), 0);
        assert_memory_equal(lv, l2, (size_t)N * V * sizeof *lv);
        model_free(v2);
        v2 = NULL;
        if (tied) { /* the head tied, the copy not: chord cannot run that */
            snprintf(path, sizeof path, "%s/adapter_config.json", dir);
            write_text(path, "{\"r\": 2, \"lora_alpha\": 4, \"target_modules\": [\"q_proj\"], "
                             "\"modules_to_save\": [\"embed_tokens\"]}");
            assert_int_equal(model_create_view(base, NULL, &v2, &err), 0);
            expect_error(model_lora_load(v2, dir, &err), &err, "ensure_weight_tying");
            model_free(v2);
        }
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        assert_int_equal(system(cmd), 0);
        model_free(v);
        model_free(base);
        free(lb), free(lv), free(l2), free(a), free(p0), free(p1);
    }
}

/* the bf16 copy's values that differ from the masters rounded to bf16 (model.h precision) */
static size_t copy_mismatches(model *m) {
    const size_t n = m->num_decay;
    float *p = malloc(m->num_params * sizeof *p);
    uint16_t *h = malloc(n * sizeof *h);
    chord_err err = {0};
    assert_true(p && h);
    assert_int_equal(model_read_params(m, p, &err), 0);
    assert_int_equal(ops_to_host(m->ops, h, m->params16, n * sizeof *h), 0);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += h[i] != ops_f32_to_bf16(p[i]);
    free(p);
    free(h);
    return bad;
}

/* bf16 weights: the copy exists only on a context that asks for it, follows the masters through
 * init, AdamW steps (whole and ZeRO-1 slices) and model_weights_changed, and views share it; a
 * bf16 model's outputs differ from the float32 model's by bf16's rounding only */
static void test_bf16_copy_follows_masters(void **state) {
    fixture *f = *state;
    chord_err err = {0};
    model *m32 = make_model(f->ops, 1, 0, 21);
    assert_null(m32->params16);
    double l32 = loss_of(m32);
    f->ops->bf16_weights = 1;
    f->m = make_model(f->ops, 1, 0, 21);
    model *m = f->m;
    assert_non_null(m->params16);
    assert_int_equal(copy_mismatches(m), 0);
    double l16 = loss_of(m);
    assert_true(l16 != l32 && fabs(l16 - l32) < 1e-2 * fabs(l32));
    for (int step = 0; step < 2; step++) {
        one_step(m);
        assert_int_equal(copy_mismatches(m), 0);
    }
    /* the masters written from outside (ZeRO-1's all-gather): stale until told */
    float *p = malloc(m->num_params * sizeof *p);
    assert_non_null(p);
    assert_int_equal(model_read_params(m, p, &err), 0);
    for (size_t i = 0; i < m->num_decay; i++)
        p[i] *= 1.5f;
    assert_int_equal(ops_to_device(f->ops, m->params, p, m->num_params * sizeof *p), 0);
    assert_true(copy_mismatches(m) > m->num_decay / 2);
    assert_int_equal(model_weights_changed(m, &err), 0);
    assert_int_equal(copy_mismatches(m), 0);
    free(p);
    /* a ZeRO-1 slice's step refreshes its slice */
    model *s = make_model(f->ops, 1, 0, 21);
    assert_int_equal(model_set_optimizer_shard(s, 0, s->num_decay / 2, &err), 0);
    loss_of(s);
    assert_int_equal(model_zero_grad(s, &err), 0);
    assert_int_equal(model_backward(s, W_LOGP, NULL, &err), 0);
    assert_int_equal(model_adamw_step_shard(s, 1.0, 1e-2f, 0.9f, 0.99f, 1e-8f, 0.0f, 0.0f, &err),
                     0);
    assert_int_equal(copy_mismatches(s), 0);
    /* a view reads its base's copy */
    model *v = NULL;
    assert_int_equal(model_create_view(m, NULL, &v, &err), 0);
    assert_true(v->params16 == m->params16);
    assert_true(loss_of(v) == loss_of(m));
    model_free(v);
    model_free(s);
    model_free(m32);
    f->ops->bf16_weights = 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_gradients_qwen2_tied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gradients_qwen3_untied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gradients_accumulate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_adamw_matches_pytorch_formula, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_update_is_not_a_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_load_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_missing_tensor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_optimizer_state_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_optimizer_shards, setup, teardown),
        cmocka_unit_test_setup_teardown(test_grad_hook, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_prefix_qwen2_tied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_prefix_qwen3_untied, setup, teardown),
        cmocka_unit_test_setup_teardown(test_shared_prefix_bad_parents, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_contracts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_views_share_base, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lora_embeddings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bf16_copy_follows_masters, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
