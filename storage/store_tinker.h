/* store_tinker.h — the Tinker API's records in SQLite (docs/tinker.md "State"): its sessions,
 * the models they created (training clients and samplers) and the futures of their requests.
 *
 * What is kept is the bookkeeping, not the results: a future's row says which operation it was,
 * on which model, and whether it finished or failed (with the error); the results themselves
 * (log-probs, samples) stay in memory and are gone after a restart. Checkpoints live as files
 * under DATA_DIR/tinker (server/tinker/tinker.c). At start-up store_tk_recover marks what a dead
 * process left open: pending futures failed, sessions finished, models ended — so a client that
 * asks for an interrupted future gets an error naming the restart, never a hang. */
#ifndef CHORD_STORAGE_STORE_TINKER_H
#define CHORD_STORAGE_STORE_TINKER_H

#include <stddef.h>
#include <stdint.h>

#include "storage/store.h"

int store_tk_session_insert(store *s, const char *id, const char *sdk_version, chord_err *err);
/* Sets finished_ms and the reason once (a second call changes nothing). */
int store_tk_session_finish(store *s, const char *id, const char *reason, chord_err *err);
/* kind: "training" or "sampler". */
int store_tk_model_insert(store *s, const char *id, const char *session_id, const char *kind,
                          const char *base_model, int lora_rank, chord_err *err);
int store_tk_model_end(store *s, const char *id, chord_err *err);

/* One future's row as written by store_tk_futures_write: inserted when new, else its state,
 * error and finished_ms updated. */
#define STORE_TK_ID_MAX 160 /* = TK_ID_MAX (server/tinker/tinker.h) */

typedef struct store_tk_future {
    char id[STORE_TK_ID_MAX];
    char model_id[STORE_TK_ID_MAX];
    char op[32];
    int state;   /* 0 pending, 1 done, 2 failed */
    char *error; /* failed: the message (owned by the caller) */
    int64_t created_ms, finished_ms;
} store_tk_future;

/* Writes n future rows in one transaction (one fsync for a batch). */
int store_tk_futures_write(store *s, const store_tk_future *rows, size_t n, chord_err *err);
/* The row of one future: 0 with *out filled (out->error malloc'd, free it), CHORD_E_NOT_FOUND. */
int store_tk_future_get(store *s, const char *id, store_tk_future *out, chord_err *err);

/* Start-up: every pending future failed with "interrupted: chordd stopped before it finished",
 * every open session finished ("chordd restarted"), every model ended. Counts may be NULL. */
int store_tk_recover(store *s, int64_t *futures, int64_t *sessions, chord_err *err);

/* A session and its models with their futures counted by state, as stored (the service builds
 * the REST/gRPC resource from it). Times are unix ms, 0 when unset. */
typedef struct store_tk_model {
    char id[STORE_TK_ID_MAX];
    char kind[16]; /* training | sampler */
    char *base_model;
    int64_t lora_rank, created_ms, ended_ms;
    int64_t pending, done, failed; /* its futures */
} store_tk_model;

typedef struct store_tk_session {
    char id[STORE_TK_ID_MAX];
    char *sdk_version, *finish_reason; /* NULL when unset */
    int64_t created_ms, finished_ms;
    store_tk_model *models;
    size_t n_models;
} store_tk_session;

/* The newest `limit` sessions (after the cursor session `after` when not NULL, offset skipped), or
 * only the one named only_id (when not NULL); *total = all that match. Free with
 * store_tk_session_list_free. */
int store_tk_session_list(store *s, const char *only_id, size_t offset, size_t limit,
                          const char *after, store_tk_session **items, size_t *n, int64_t *total,
                          chord_err *err);
void store_tk_session_list_free(store_tk_session *items, size_t n);

#endif
