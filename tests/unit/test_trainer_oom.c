/* test_trainer_oom.c — out of memory while a training step packs its micro-batches: the step
 * fails with "out of memory" and leaks nothing (the old `x = realloc(x, n)` lost the block it
 * was growing).
 *
 * The link wraps (tests/unit/trainer_oom.cmake, ld --wrap) realloc and free, to fail one
 * allocation and to account for every block realloc hands out while the job runs, and
 * model_zero_grad / model_forward / model_adamw_step, to aim the failure: it is armed from the
 * first forward of a step's micro-batches (the first micro-batch's arrays exist) to the
 * optimizer update, and hits the first growth of an existing block in that window: the arrays
 * of a later, larger micro-batch. Policy sequences are short and expert sequences long, one
 * sequence per micro-batch, so such a growth always comes. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "kernels/ops.h"
#include "server/base/fileutil.h"
#include "server/model/model.h"
#include "server/train/jobconfig.h"
#include "server/train/trainer.h"

/* ---- the wrapped allocator ------------------------------------------------------------------ */

void *__real_realloc(void *p, size_t n);
void __real_free(void *p);
void *__wrap_realloc(void *p, size_t n);
void __wrap_free(void *p);
int __real_model_zero_grad(model *m, chord_err *err);
int __wrap_model_zero_grad(model *m, chord_err *err);
int __real_model_forward(model *m, const model_batch *b, float inv_temp, float *logp_out,
                         float *entropy_out, chord_err *err);
int __wrap_model_forward(model *m, const model_batch *b, float inv_temp, float *logp_out,
                         float *entropy_out, chord_err *err);
int __real_model_adamw_step(model *m, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_clip, double *grad_norm_out,
                            chord_err *err);
int __wrap_model_adamw_step(model *m, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_clip, double *grad_norm_out,
                            chord_err *err);

#define MAX_LIVE 65536
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static int g_tracking; /* account for realloc's blocks */
static void *g_live[MAX_LIVE];
static int g_n_live, g_overflow;
static int g_inject;        /* fail one growth in the window below */
static int g_in_step;       /* between model_zero_grad and model_adamw_step */
static int g_after_forward; /* a micro-batch's forward has run */
static int g_injected;      /* the failure happened */

static void untrack_locked(void *p) {
    for (int i = g_n_live; i-- > 0;)
        if (g_live[i] == p) {
            g_live[i] = g_live[--g_n_live];
            return;
        }
}

void *__wrap_realloc(void *p, size_t n) {
    pthread_mutex_lock(&g_mu);
    if (g_inject && g_in_step && g_after_forward && p && n > 0) {
        g_inject = 0;
        g_injected = 1;
        pthread_mutex_unlock(&g_mu);
        return NULL; /* p stays allocated, as realloc promises */
    }
    pthread_mutex_unlock(&g_mu);
    void *r = __real_realloc(p, n);
    pthread_mutex_lock(&g_mu);
    if (r) {
        if (p) untrack_locked(p);
        if (g_tracking) {
            if (g_n_live < MAX_LIVE)
                g_live[g_n_live++] = r;
            else
                g_overflow = 1;
        }
    }
    pthread_mutex_unlock(&g_mu);
    return r;
}

void __wrap_free(void *p) {
    if (p) {
        pthread_mutex_lock(&g_mu);
        untrack_locked(p);
        pthread_mutex_unlock(&g_mu);
    }
    __real_free(p);
}

int __wrap_model_zero_grad(model *m, chord_err *err) {
    g_in_step = 1;
    g_after_forward = 0;
    return __real_model_zero_grad(m, err);
}

int __wrap_model_forward(model *m, const model_batch *b, float inv_temp, float *logp_out,
                         float *entropy_out, chord_err *err) {
    int rc = __real_model_forward(m, b, inv_temp, logp_out, entropy_out, err);
    if (g_in_step) g_after_forward = 1;
    return rc;
}

int __wrap_model_adamw_step(model *m, float lr, float beta1, float beta2, float eps,
                            float weight_decay, float grad_clip, double *grad_norm_out,
                            chord_err *err) {
    g_in_step = 0;
    return __real_model_adamw_step(m, lr, beta1, beta2, eps, weight_decay, grad_clip, grad_norm_out,
                                   err);
}

/* ---- the job --------------------------------------------------------------------------------- */

typedef struct fixture {
    char dir[64];
    char prompts[128], expert[128];
    ops_ctx *ops;
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    if (!f) return -1;
    *state = f;
    snprintf(f->dir, sizeof f->dir, "/tmp/chord_test_oom_XXXXXX");
    if (!mkdtemp(f->dir)) return -1;
    snprintf(f->prompts, sizeof f->prompts, "%s/prompts.jsonl", f->dir);
    snprintf(f->expert, sizeof f->expert, "%s/expert.jsonl", f->dir);
    FILE *p = fopen(f->prompts, "w"), *e = fopen(f->expert, "w");
    if (!p || !e) return -1;
    for (int i = 0; i < 4; i++) {
        fprintf(p, "{\"prompt\": \"%d+%d\", \"answer\": \"%d\"}\n", i, i, 2 * i);
        fprintf(e, "{\"prompt\": \"%d+%d\", \"response\": \"", i, i);
        for (int k = 0; k < 12; k++)
            fprintf(e, "adding %d and %d, ", i, i);
        fprintf(e, "gives \\\\boxed{%d}\"}\n", 2 * i);
    }
    fclose(p);
    fclose(e);
    char msg[256];
    f->ops = ops_open("cpu", 1, msg, sizeof msg);
    return f->ops ? 0 : -1;
}

static int teardown(void **state) {
    fixture *f = *state;
    ops_close(f->ops);
    chord_err err = {0};
    chord_rmtree(f->dir, &err);
    free(f);
    return 0;
}

static int run(fixture *f, chord_err *err) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"model\": {\"init\": {\"seed\": 3, \"config\": {\"model_type\": \"qwen2\", "
             "\"vocab_size\": 1024, \"hidden_size\": 32, \"num_hidden_layers\": 1, "
             "\"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"intermediate_size\": 64, "
             "\"max_position_embeddings\": 512, \"tie_word_embeddings\": true}}}, "
             "\"data\": {\"prompts\": \"%s\", \"expert\": \"%s\"}, "
             "\"algorithm\": \"chord\", \"chord\": {\"mu\": 0.5}, "
             "\"grpo\": {\"group_size\": 2, \"prompts_per_step\": 2, \"entropy_coef\": 1e-30}, "
             "\"expert_per_step\": 2, \"sampling\": {\"max_new_tokens\": 2}, "
             "\"reward\": {\"type\": \"regex\", \"pattern\": \"[0-9]\"}, "
             "\"micro_batch_tokens\": 1, \"steps\": 2, \"seed\": 1, \"checkpoint_every\": 0, "
             "\"eval\": {\"every\": 0}}",
             f->prompts, f->expert);
    job_config cfg;
    if (jobconfig_parse(json, &cfg, err) != 0) fail_msg("job: %s", err->msg);
    trainer_env env = {.ops = f->ops, .prompts_path = f->prompts, .expert_path = f->expert};
    pthread_mutex_lock(&g_mu);
    g_tracking = 1;
    g_n_live = 0;
    g_overflow = 0;
    pthread_mutex_unlock(&g_mu);
    int rc = trainer_run(&cfg, &env, NULL, err);
    pthread_mutex_lock(&g_mu);
    g_tracking = 0;
    pthread_mutex_unlock(&g_mu);
    jobconfig_free(&cfg);
    return rc;
}

static void test_step_without_failure_leaks_nothing(void **state) {
    fixture *f = *state;
    chord_err err = {0};
    g_inject = 0;
    if (run(f, &err) != TRAINER_DONE) fail_msg("%s", err.msg);
    assert_false(g_overflow);
    if (g_n_live != 0) fail_msg("%d blocks from realloc still live after the job", g_n_live);
}

static void test_out_of_memory_in_a_step_leaks_nothing(void **state) {
    fixture *f = *state;
    chord_err err = {0};
    g_injected = 0;
    g_inject = 1;
    int rc = run(f, &err);
    g_inject = 0;
    assert_true(g_injected);
    assert_int_equal(rc, TRAINER_FAILED);
    print_message("failed as expected: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "out of memory"));
    assert_false(g_overflow);
    if (g_n_live != 0) fail_msg("%d block(s) from realloc leaked by the failed step", g_n_live);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_step_without_failure_leaks_nothing),
        cmocka_unit_test(test_out_of_memory_in_a_step_leaks_nothing),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
