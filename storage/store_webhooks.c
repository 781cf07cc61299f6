/* store_webhooks.c — the webhook outbox (store.h, "webhook deliveries"): events made from the
 * jobs and checkpoints tables in SQL (one row per (event, subject), so a crash neither loses nor
 * doubles one), the deliveries due, each attempt's outcome, and the delivery log.
 *
 * It knows nothing of HTTP or signatures (the service's webhook thread sends). Calls store.c and
 * store_records.c's list reader only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/store_internal.h"

#define OOM(err) chord_err_setc(err, CHORD_E_INTERNAL, "webhook delivery: out of memory")

static const char *const webhook_states[] = {"pending", "delivered", "failed"};

const char *store_webhook_state_name(store_webhook_state state) {
    return (unsigned)state < 3 ? webhook_states[state] : "?";
}

void store_webhook_free(store_webhook *w) {
    if (!w) return;
    free(w->event);
    free(w->subject);
    free(w->payload);
    free(w->last_error);
    w->event = w->subject = w->payload = w->last_error = NULL;
}

static void free_webhook_item(void *item) {
    store_webhook_free(item);
}

void store_webhook_list_free(store_webhook *items, size_t n) {
    if (items) storage_free_items(items, n, sizeof *items, free_webhook_item);
}

#define WEBHOOK_COLS                                                                               \
    "id, event, subject, payload, state, attempts, last_status, last_error, next_attempt_ms, "     \
    "created_ms, finished_ms"

static int read_webhook(store *s, sqlite3_stmt *st, void *item, chord_err *err) {
    (void)s;
    store_webhook *w = item;
    storage_col_copy(st, 0, w->id, sizeof w->id);
    if (storage_col_text(st, 1, &w->event) || storage_col_text(st, 2, &w->subject) ||
        storage_col_text(st, 3, &w->payload) || storage_col_text(st, 7, &w->last_error))
        return OOM(err);
    const char *state = (const char *)sqlite3_column_text(st, 4);
    w->state = STORE_WEBHOOK_PENDING;
    for (int i = 0; i < 3; i++)
        if (state && !strcmp(state, webhook_states[i])) w->state = (store_webhook_state)i;
    w->attempts = sqlite3_column_int64(st, 5);
    w->last_status = sqlite3_column_int64(st, 6);
    w->next_attempt_ms = sqlite3_column_int64(st, 8);
    w->created_ms = sqlite3_column_int64(st, 9);
    w->finished_ms = sqlite3_column_int64(st, 10);
    return 0;
}

int store_webhook_enable(store *s, int64_t now_ms, int64_t *since_ms, chord_err *err) {
    char now[32];
    snprintf(now, sizeof now, "%lld", (long long)now_ms);
    if (storage_run(s,
                    "INSERT OR IGNORE INTO settings (key, value) VALUES ('webhooks_since_ms', ?1)",
                    STORAGE_VALUES(STORAGE_TEXT(now)), err, "enabling webhooks"))
        return -1;
    sqlite3_stmt *st;
    if (storage_prepare(s,
                        "SELECT CAST(value AS INTEGER) FROM settings "
                        "WHERE key = 'webhooks_since_ms'",
                        &st, err))
        return -1;
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) *since_ms = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) return storage_sqlerr(s, err, rc, "reading webhooks_since_ms");
    return 0;
}

/* The payload is the standard-webhooks shape: {"type", "timestamp", "data"}. Checkpoints first,
 * so a job's last checkpoint.created goes out before its job.succeeded; eval.completed (a job's
 * last evaluation, once the job has ended: its step and every eval/ metric of that step) before
 * its job.* event; alias.moved (alias_moves: a PUT, a DELETE or a promotion) last. */
static const char *const collect_sql[] = {
    "INSERT OR IGNORE INTO webhook_deliveries (id, event, subject, payload, state, "
    "next_attempt_ms, created_ms) "
    "SELECT 'msg_' || lower(hex(randomblob(12))), 'checkpoint.created', c.id, "
    "json_object('type', 'checkpoint.created', 'timestamp', "
    "strftime('%Y-%m-%dT%H:%M:%fZ', c.created_ms / 1000.0, 'unixepoch'), 'data', "
    "json_object('job_id', c.job_id, 'step', c.step, 'checkpoint_id', c.id, 'sha256', c.sha256, "
    "'bytes', c.bytes)), 'pending', ?2, ?2 FROM checkpoints c WHERE c.created_ms >= ?1 AND "
    "NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.event = 'checkpoint.created' AND "
    "w.subject = c.id) ORDER BY c.seq",
    "INSERT OR IGNORE INTO webhook_deliveries (id, event, subject, payload, state, "
    "next_attempt_ms, created_ms) "
    "SELECT 'msg_' || lower(hex(randomblob(12))), 'eval.completed', e.id, "
    "json_object('type', 'eval.completed', 'timestamp', "
    "strftime('%Y-%m-%dT%H:%M:%fZ', e.finished_ms / 1000.0, 'unixepoch'), 'data', "
    "json_object('job_id', e.id, 'name', e.name, 'state', e.state, 'step', e.step, 'metrics', "
    "json((SELECT json_group_object(substr(m.name, 6), m.value) FROM metrics m WHERE "
    "m.job_id = e.id AND m.step = e.step AND m.name LIKE 'eval/%')))), "
    "'pending', ?2, ?2 FROM (SELECT j.id, j.name, j.state, j.finished_ms, j.seq, "
    "(SELECT max(m.step) FROM metrics m WHERE m.job_id = j.id AND m.name = 'eval/accuracy') "
    "AS step FROM jobs j WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND "
    "j.finished_ms >= ?1) e WHERE e.step IS NOT NULL AND "
    "NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.event = 'eval.completed' AND "
    "w.subject = e.id) ORDER BY e.finished_ms, e.seq",
    "INSERT OR IGNORE INTO webhook_deliveries (id, event, subject, payload, state, "
    "next_attempt_ms, created_ms) "
    "SELECT 'msg_' || lower(hex(randomblob(12))), 'job.' || j.state, j.id, "
    "json_object('type', 'job.' || j.state, 'timestamp', "
    "strftime('%Y-%m-%dT%H:%M:%fZ', j.finished_ms / 1000.0, 'unixepoch'), 'data', "
    "json_object('job_id', j.id, 'name', j.name, 'state', j.state, 'error', j.error, "
    "'current_step', j.current_step)), 'pending', ?2, ?2 FROM jobs j "
    "WHERE j.state IN ('succeeded', 'failed', 'cancelled') AND j.finished_ms >= ?1 AND "
    "NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE w.event = 'job.' || j.state AND "
    "w.subject = j.id) ORDER BY j.finished_ms, j.seq",
    "INSERT OR IGNORE INTO webhook_deliveries (id, event, subject, payload, state, "
    "next_attempt_ms, created_ms) "
    "SELECT 'msg_' || lower(hex(randomblob(12))), 'alias.moved', a.id, "
    "json_object('type', 'alias.moved', 'timestamp', "
    "strftime('%Y-%m-%dT%H:%M:%fZ', a.moved_ms / 1000.0, 'unixepoch'), 'data', "
    "json_object('alias', a.alias, 'model_id', a.to_model_id, 'previous_model_id', "
    "a.from_model_id, 'job_id', a.job_id)), 'pending', ?2, ?2 FROM alias_moves a "
    "WHERE a.moved_ms >= ?1 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries w WHERE "
    "w.event = 'alias.moved' AND w.subject = a.id) ORDER BY a.seq",
};

int store_webhook_collect(store *s, int64_t since_ms, int64_t now_ms, int64_t *added,
                          chord_err *err) {
    if (added) *added = 0;
    if (storage_begin_write(s, err)) return chord_err_prefix(err, "collecting webhook events");
    int64_t total = 0;
    for (size_t i = 0; i < sizeof collect_sql / sizeof *collect_sql; i++) {
        if (storage_run(s, collect_sql[i],
                        STORAGE_VALUES(STORAGE_INT(since_ms), STORAGE_INT(now_ms)), err,
                        "collecting webhook events")) {
            storage_rollback(s);
            return -1;
        }
        total += sqlite3_changes(s->db);
    }
    if (storage_commit(s, err)) {
        storage_rollback(s);
        return -1;
    }
    if (added) *added = total;
    return 0;
}

int store_webhook_due(store *s, int64_t now_ms, size_t limit, store_webhook **items, size_t *n,
                      chord_err *err) {
    *items = NULL;
    *n = 0;
    sqlite3_stmt *st;
    if (storage_prepare_bound(
            s,
            "SELECT " WEBHOOK_COLS " FROM webhook_deliveries WHERE state = "
            "'pending' AND next_attempt_ms <= ?1 ORDER BY seq LIMIT ?2",
            STORAGE_VALUES(STORAGE_INT(now_ms), STORAGE_INT(storage_limit(limit))), &st, err))
        return -1;
    return storage_collect(s, st, sizeof **items, read_webhook, free_webhook_item, (void **)items,
                           n, "reading due webhook deliveries", err);
}

int store_webhook_attempted(store *s, const char *id, int delivered, int64_t status,
                            const char *error_text, int64_t next_attempt_ms, chord_err *err) {
    if (storage_check_id(id, "msg", "webhook delivery", err)) return -1;
    const char *state = delivered ? "delivered" : next_attempt_ms < 0 ? "failed" : "pending";
    int64_t now = store_now_ms();
    if (storage_run(s,
                    "UPDATE webhook_deliveries SET state = ?2, attempts = attempts + 1, "
                    "last_status = ?3, last_error = ?4, next_attempt_ms = ?5, "
                    "finished_ms = CASE WHEN ?2 = 'pending' THEN NULL ELSE ?6 END "
                    "WHERE id = ?1 AND state = 'pending'",
                    STORAGE_VALUES(STORAGE_TEXT(id), STORAGE_TEXT(state), STORAGE_INT(status),
                                   STORAGE_TEXT(error_text),
                                   STORAGE_INT(next_attempt_ms < 0 ? 0 : next_attempt_ms),
                                   STORAGE_INT(now)),
                    err, "recording webhook delivery %s", id))
        return -1;
    if (sqlite3_changes(s->db) == 0)
        return chord_err_setc(err, CHORD_E_CONFLICT, "webhook delivery %s is not pending", id);
    return 0;
}

int store_webhook_list(store *s, size_t offset, size_t limit, const char *after,
                       store_webhook **items, size_t *n, int64_t *total, chord_err *err) {
    storage_list list = {
        .what = "listing webhook deliveries",
        .count_sql = "SELECT count(*) FROM webhook_deliveries",
        .cursor_sql = after ? "SELECT 1 FROM webhook_deliveries WHERE id = ?3" : NULL,
        .cursor = after,
        .rows_sql = "SELECT " WEBHOOK_COLS " FROM webhook_deliveries WHERE ?3 IS NULL OR "
                    "seq < (SELECT seq FROM webhook_deliveries WHERE id = ?3) "
                    "ORDER BY seq DESC LIMIT ?1 OFFSET ?2",
        .values = STORAGE_VALUES(STORAGE_INT(storage_limit(limit)),
                                 STORAGE_INT(storage_offset(offset)), STORAGE_TEXT(after)),
        .item_size = sizeof **items,
        .read = read_webhook,
        .free_item = free_webhook_item};
    return storage_read_list(s, &list, (void **)items, n, total, err);
}
