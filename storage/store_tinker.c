/* store_tinker.c — the Tinker API's sessions, models and futures (store_tinker.h). */
#include "storage/store_tinker.h"

#include <stdlib.h>
#include <string.h>

#include "storage/store_internal.h"

static const char *const future_states[] = {"pending", "done", "failed"};

int store_tk_session_insert(store *s, const char *id, const char *sdk_version, chord_err *err) {
    return storage_run(
        s,
        "INSERT INTO tinker_sessions (id, sdk_version, created_ms) "
        "VALUES (?1, ?2, ?3)",
        STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(sdk_version), STORAGE_INT(store_now_ms())),
        err, "inserting Tinker session %s", id);
}

int store_tk_session_finish(store *s, const char *id, const char *reason, chord_err *err) {
    return storage_run(
        s,
        "UPDATE tinker_sessions SET finished_ms = ?2, finish_reason = ?3 "
        "WHERE id = ?1 AND finished_ms IS NULL",
        STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_INT(store_now_ms()), STORAGE_TEXT(reason)), err,
        "finishing Tinker session %s", id);
}

int store_tk_model_insert(store *s, const char *id, const char *session_id, const char *kind,
                          const char *base_model, int lora_rank, chord_err *err) {
    return storage_run(s,
                       "INSERT INTO tinker_models (id, session_id, kind, base_model, lora_rank, "
                       "created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                       STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(session_id),
                                      STORAGE_TEXT(kind), STORAGE_TEXT(base_model),
                                      STORAGE_INT(lora_rank), STORAGE_INT(store_now_ms())),
                       err, "inserting Tinker model %s", id);
}

int store_tk_model_end(store *s, const char *id, chord_err *err) {
    return storage_run(s,
                       "UPDATE tinker_models SET ended_ms = ?2 WHERE id = ?1 AND ended_ms IS NULL",
                       STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_INT(store_now_ms())), err,
                       "ending Tinker model %s", id);
}

int store_tk_futures_write(store *s, const store_tk_future *rows, size_t n, chord_err *err) {
    if (n == 0) return 0;
    if (storage_begin_write(s, err)) return -1;
    sqlite3_stmt *st = NULL;
    if (storage_prepare(s,
                        "INSERT INTO tinker_futures (id, model_id, op, state, error, created_ms, "
                        "finished_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) "
                        "ON CONFLICT (id) DO UPDATE SET state = excluded.state, "
                        "error = excluded.error, finished_ms = excluded.finished_ms",
                        &st, err))
        goto fail;
    for (size_t i = 0; i < n; i++) {
        const store_tk_future *r = &rows[i];
        if (r->state < 0 || r->state > 2) {
            chord_err_setc(err, CHORD_E_INVALID, "Tinker future %s: state %d", r->id, r->state);
            goto fail;
        }
        int rc = storage_rerun(
            st,
            STORAGE_VALUES(STORAGE_TEXT(r->id), STORAGE_TEXT(r->model_id[0] ? r->model_id : NULL),
                           STORAGE_TEXT(r->op), STORAGE_TEXT(future_states[r->state]),
                           STORAGE_TEXT(r->error), STORAGE_INT(r->created_ms),
                           r->state ? STORAGE_INT(r->finished_ms) : STORAGE_TEXT(NULL)));
        if (rc != SQLITE_OK) {
            storage_sqlerr(s, err, rc, "writing Tinker future %s", r->id);
            goto fail;
        }
    }
    sqlite3_finalize(st);
    return storage_commit(s, err);
fail:
    sqlite3_finalize(st);
    storage_rollback(s);
    return -1;
}

static int read_future(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_tk_future *f = item;
    storage_col_copy(st, 0, f->id, sizeof f->id);
    storage_col_copy(st, 1, f->model_id, sizeof f->model_id);
    storage_col_copy(st, 2, f->op, sizeof f->op);
    const char *state = (const char *)sqlite3_column_text(st, 3);
    f->state = state && !strcmp(state, "done") ? 1 : state && !strcmp(state, "failed") ? 2 : 0;
    if (storage_col_text(st, 4, &f->error))
        return chord_err_setc(err, CHORD_E_INTERNAL, "Tinker future: out of memory");
    f->created_ms = sqlite3_column_int64(st, 5);
    f->finished_ms = sqlite3_column_int64(st, 6);
    return 0;
}

int store_tk_future_get(store *s, const char *id, store_tk_future *out, chord_err *err) {
    memset(out, 0, sizeof *out);
    return storage_get_one(s,
                           "SELECT id, model_id, op, state, error, created_ms, finished_ms "
                           "FROM tinker_futures WHERE id = ?1",
                           id, read_future, out, "Tinker future", err);
}

int store_tk_recover(store *s, int64_t *futures, int64_t *sessions, chord_err *err) {
    const int64_t now = store_now_ms();
    if (storage_begin_write(s, err)) return -1;
    int64_t nf = 0, ns = 0;
    if (storage_run(s,
                    "UPDATE tinker_futures SET state = 'failed', finished_ms = ?1, error = "
                    "'interrupted: chordd stopped before this request finished; its effect is "
                    "unknown (retry it, or reload the model from its last checkpoint)' "
                    "WHERE state = 'pending'",
                    STORAGE_VALUES(STORAGE_INT(now)), err, "failing interrupted Tinker futures"))
        goto fail;
    nf = sqlite3_changes(s->db);
    if (storage_run(s,
                    "UPDATE tinker_sessions SET finished_ms = ?1, finish_reason = "
                    "'chordd restarted' WHERE finished_ms IS NULL",
                    STORAGE_VALUES(STORAGE_INT(now)), err, "finishing Tinker sessions"))
        goto fail;
    ns = sqlite3_changes(s->db);
    if (storage_run(s, "UPDATE tinker_models SET ended_ms = ?1 WHERE ended_ms IS NULL",
                    STORAGE_VALUES(STORAGE_INT(now)), err, "ending Tinker models"))
        goto fail;
    if (storage_commit(s, err)) return -1;
    if (futures) *futures = nf;
    if (sessions) *sessions = ns;
    return 0;
fail:
    storage_rollback(s);
    return -1;
}

static int64_t col_ms(sqlite3_stmt *st, int col) {
    return sqlite3_column_type(st, col) == SQLITE_NULL ? 0 : sqlite3_column_int64(st, col);
}

static void free_model(void *item) {
    store_tk_model *m = item;
    free(m->base_model);
}

static int read_model(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_tk_model *m = item;
    storage_col_copy(st, 0, m->id, sizeof m->id);
    storage_col_copy(st, 1, m->kind, sizeof m->kind);
    if (storage_col_text(st, 2, &m->base_model))
        return chord_err_setc(err, CHORD_E_INTERNAL, "Tinker model: out of memory");
    m->lora_rank = sqlite3_column_int64(st, 3);
    m->created_ms = col_ms(st, 4);
    m->ended_ms = col_ms(st, 5);
    m->pending = sqlite3_column_int64(st, 6);
    m->done = sqlite3_column_int64(st, 7);
    m->failed = sqlite3_column_int64(st, 8);
    return 0;
}

static void free_session(void *item) {
    store_tk_session *x = item;
    free(x->sdk_version);
    free(x->finish_reason);
    if (x->models) storage_free_items(x->models, x->n_models, sizeof *x->models, free_model);
}

static int read_session(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_tk_session *x = item;
    storage_col_copy(st, 0, x->id, sizeof x->id);
    if (storage_col_text(st, 1, &x->sdk_version) || storage_col_text(st, 4, &x->finish_reason))
        return chord_err_setc(err, CHORD_E_INTERNAL, "Tinker session: out of memory");
    x->created_ms = col_ms(st, 2);
    x->finished_ms = col_ms(st, 3);
    return 0;
}

void store_tk_session_list_free(store_tk_session *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_session);
}

int store_tk_session_list(store *s, const char *only_id, size_t offset, size_t limit,
                          const char *after, store_tk_session **items, size_t *n, int64_t *total,
                          chord_err *err) {
    *items = NULL;
    *n = 0;
    *total = 0;
    if (storage_begin_read(s, err)) return -1;
    sqlite3_stmt *st = NULL;
    int rc = -1;
    if (storage_prepare_bound(s, "SELECT count(*) FROM tinker_sessions WHERE ?1 IS NULL OR id = ?1",
                              STORAGE_VALUES(STORAGE_TEXT(only_id)), &st, err)) {
        st = NULL; /* finalized by the failed call */
        goto done;
    }
    int src = sqlite3_step(st);
    if (src != SQLITE_ROW) {
        storage_sqlerr(s, err, src, "counting Tinker sessions");
        goto done;
    }
    *total = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (after) {
        if (storage_prepare_bound(s, "SELECT 1 FROM tinker_sessions WHERE id = ?1",
                                  STORAGE_VALUES(STORAGE_TEXT(after)), &st, err)) {
            st = NULL;
            goto done;
        }
        src = sqlite3_step(st);
        if (src == SQLITE_DONE)
            chord_err_setc(err, CHORD_E_INVALID,
                           "after: \"%.60s\" is not a cursor of this list (pass a next_cursor "
                           "it returned)",
                           after);
        else if (src != SQLITE_ROW)
            storage_sqlerr(s, err, src, "listing Tinker sessions: reading the cursor");
        sqlite3_finalize(st);
        st = NULL;
        if (src != SQLITE_ROW) goto done;
    }
    if (storage_prepare_bound(
            s,
            "SELECT id, sdk_version, created_ms, finished_ms, finish_reason "
            "FROM tinker_sessions WHERE (?1 IS NULL OR id = ?1) AND (?4 IS NULL "
            "OR seq < (SELECT seq FROM tinker_sessions WHERE id = ?4)) "
            "ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
            STORAGE_VALUES(STORAGE_TEXT(only_id), STORAGE_INT(storage_limit(limit)),
                           STORAGE_INT(storage_offset(offset)), STORAGE_TEXT(after)),
            &st, err) ||
        storage_collect(s, st, sizeof **items, read_session, free_session, (void **)items, n,
                        "listing Tinker sessions", err)) {
        st = NULL; /* finalized by the failed call, or by storage_collect */
        goto done;
    }
    st = NULL; /* storage_collect finalized it */
    for (size_t i = 0; i < *n; i++) {
        store_tk_session *x = &(*items)[i];
        if (storage_prepare_bound(
                s,
                "SELECT m.id, m.kind, m.base_model, m.lora_rank, m.created_ms, m.ended_ms, "
                "(SELECT count(*) FROM tinker_futures f WHERE f.model_id = m.id AND "
                " f.state = 'pending'), "
                "(SELECT count(*) FROM tinker_futures f WHERE f.model_id = m.id AND "
                " f.state = 'done'), "
                "(SELECT count(*) FROM tinker_futures f WHERE f.model_id = m.id AND "
                " f.state = 'failed') "
                "FROM tinker_models m WHERE m.session_id = ?1 ORDER BY m.seq",
                STORAGE_VALUES(STORAGE_TEXT(x->id)), &st, err) ||
            storage_collect(s, st, sizeof *x->models, read_model, free_model, (void **)&x->models,
                            &x->n_models, "listing Tinker models", err)) {
            st = NULL;
            goto done;
        }
        st = NULL;
    }
    rc = 0;
done:
    sqlite3_finalize(st);
    if (storage_commit(s, rc == 0 ? err : NULL) != 0) rc = -1;
    if (rc != 0) {
        store_tk_session_list_free(*items, *n);
        *items = NULL;
        *n = 0;
    }
    return rc;
}
