/* test_store_tinker.c — the Tinker API's records in SQLite (storage/store_tinker.h): sessions,
 * models and futures written and read back, futures upserted in batches, start-up recovery
 * (pending futures fail with the interruption, open sessions close, models end) and the listing
 * of sessions with their models' future counts; checked against the rows read with raw SQL. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "storage/store_tinker.h"
#include "test_storage_util.h"

static store_tk_future fut(const char *id, const char *model, const char *op, int state,
                           char *error) {
    store_tk_future f;
    memset(&f, 0, sizeof f);
    snprintf(f.id, sizeof f.id, "%s", id);
    snprintf(f.model_id, sizeof f.model_id, "%s", model);
    snprintf(f.op, sizeof f.op, "%s", op);
    f.state = state;
    f.error = error;
    f.created_ms = 1000;
    f.finished_ms = state ? 2000 : 0;
    return f;
}

static void test_records_and_recovery(void **state) {
    (void)state;
    char dir[256];
    scratch_make(dir);
    chord_err err = {0};
    store *s = open_ok(dir);
    assert_int_equal(store_tk_session_insert(s, "ses_1", "0.38.0", &err), 0);
    assert_int_equal(store_tk_session_insert(s, "ses_2", NULL, &err), 0);
    assert_int_equal(store_tk_session_insert(s, "ses_1", NULL, &err), -1); /* unique */
    assert_int_equal(err.code, CHORD_E_CONFLICT);
    assert_int_equal(
        store_tk_model_insert(s, "ses_1:train:0", "ses_1", "training", "tbase", 8, &err), 0);
    assert_int_equal(
        store_tk_model_insert(s, "ses_1:sample:1", "ses_1", "sampler", "tbase", 8, &err), 0);
    assert_int_equal(store_tk_model_insert(s, "x", "ses_1", "bogus", "tbase", 8, &err), -1);

    /* a batch: three new futures, then two of them finish in a second batch */
    store_tk_future b1[3] = {fut("req_a", "ses_1:train:0", "forward_backward", 0, NULL),
                             fut("req_b", "ses_1:train:0", "optim_step", 0, NULL),
                             fut("req_c", "ses_1:sample:1", "sample", 0, NULL)};
    assert_int_equal(store_tk_futures_write(s, b1, 3, &err), 0);
    store_tk_future b2[2] = {fut("req_a", "ses_1:train:0", "forward_backward", 1, NULL),
                             fut("req_b", "ses_1:train:0", "optim_step", 2, "lr: bad")};
    assert_int_equal(store_tk_futures_write(s, b2, 2, &err), 0);
    store_tk_future bad = fut("req_d", "", "sample", 7, NULL);
    assert_int_equal(store_tk_futures_write(s, &bad, 1, &err), -1); /* nothing written */

    store_tk_future got;
    assert_int_equal(store_tk_future_get(s, "req_b", &got, &err), 0);
    assert_int_equal(got.state, 2);
    assert_string_equal(got.error, "lr: bad");
    assert_string_equal(got.op, "optim_step");
    assert_int_equal(got.created_ms, 1000); /* the update kept the creation time */
    assert_int_equal(got.finished_ms, 2000);
    free(got.error);
    assert_int_equal(store_tk_future_get(s, "req_d", &got, &err), -1);
    assert_int_equal(err.code, CHORD_E_NOT_FOUND);

    assert_int_equal(store_tk_session_finish(s, "ses_2", "finished by the client", &err), 0);
    assert_int_equal(store_tk_session_finish(s, "ses_2", "again", &err), 0); /* kept */
    assert_int_equal(store_tk_model_end(s, "ses_1:sample:1", &err), 0);

    store_tk_session *list = NULL;
    size_t n = 0;
    int64_t total = 0;
    assert_int_equal(store_tk_session_list(s, NULL, 0, 10, NULL, &list, &n, &total, &err), 0);
    assert_int_equal(total, 2);
    assert_int_equal(n, 2);
    const store_tk_session *s1 = &list[1]; /* newest first */
    assert_string_equal(s1->id, "ses_1");
    assert_string_equal(s1->sdk_version, "0.38.0");
    assert_int_equal(s1->finished_ms, 0);
    assert_int_equal(s1->n_models, 2);
    const store_tk_model *m0 = &s1->models[0];
    assert_string_equal(m0->kind, "training");
    assert_string_equal(m0->base_model, "tbase");
    assert_int_equal(m0->lora_rank, 8);
    assert_int_equal(m0->done, 1);
    assert_int_equal(m0->failed, 1);
    assert_int_equal(m0->pending, 0);
    assert_true(s1->models[1].ended_ms > 0);
    assert_int_equal(s1->models[1].pending, 1); /* req_c */
    assert_string_equal(list[0].finish_reason, "finished by the client");
    assert_null(list[0].sdk_version);
    assert_int_equal(list[0].n_models, 0);
    store_tk_session_list_free(list, n);
    assert_int_equal(store_tk_session_list(s, "ses_2", 0, 10, NULL, &list, &n, &total, &err), 0);
    assert_int_equal(total, 1);
    assert_int_equal(n, 1);
    store_tk_session_list_free(list, n);

    /* the process dies; the next start recovers */
    store_close(s);
    s = open_ok(dir);
    int64_t nf = -1, ns = -1;
    assert_int_equal(store_tk_recover(s, &nf, &ns, &err), 0);
    assert_int_equal(nf, 1); /* req_c */
    assert_int_equal(ns, 1); /* ses_1 */
    assert_int_equal(store_tk_future_get(s, "req_c", &got, &err), 0);
    assert_int_equal(got.state, 2);
    assert_non_null(strstr(got.error, "interrupted"));
    free(got.error);
    assert_int_equal(store_tk_future_get(s, "req_a", &got, &err), 0);
    assert_int_equal(got.state, 1); /* finished ones stay as they were */
    free(got.error);
    store_close(s);
    sqlite3 *db = raw_open(dir);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM tinker_models WHERE ended_ms IS NULL"), 0);
    assert_int_equal(raw_int(db, "SELECT count(*) FROM tinker_sessions WHERE finish_reason = "
                                 "'chordd restarted'"),
                     1);
    sqlite3_close(db);
    s = open_ok(dir);
    assert_int_equal(store_tk_recover(s, &nf, &ns, &err), 0); /* nothing left to recover */
    assert_int_equal(nf, 0);
    assert_int_equal(ns, 0);
    store_close(s);
    scratch_remove(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_and_recovery),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
