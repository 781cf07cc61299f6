/* tinker.c — the Tinker-compatible training service (tinker.h): sessions, models and their
 * threads, the per-model queue in seq_id order, futures, and the operations themselves.
 *
 * Locking: one mutex (t->mu) guards every list, queue and future; a model's thread takes its
 * next operation under it and runs it outside, touching only what the model owns (its backend
 * context, its view, its adapter). t->cv is broadcast whenever a future completes or an
 * operation is queued. */
#include "server/tinker/tinker.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kernels/ops.h"
#include "server/base/buf.h"
#include "server/base/fileutil.h"
#include "server/base/json_field.h"
#include "server/base/log.h"
#include "server/base/rng.h"
#include "server/model/config.h"
#include "server/model/model.h"
#include "server/tinker/tinker_loss.h"
#include "server/train/bootstrap.h"
#include "server/train/rollout.h"
#include "server/train/trainer.h"
#include "storage/store.h"
#include "storage/store_tinker.h"

/* The most tokens one forward pass of a forward_backward packs (datums are never split). */
#define TK_CHUNK_TOKENS 8192
/* A model whose next seq_id has not come for this long while later ones wait skips it (a
 * request the client counted but never sent, e.g. one its own checks refused). */
#define TK_SEQ_GAP_S 30.0
/* A session with no heartbeat (the client sends one every 10 s) for this long is finished. */
#define TK_SESSION_IDLE_S 600.0

typedef enum op_kind { OP_CREATE, OP_FB, OP_OPTIM, OP_SAVE, OP_SAVE_SAMPLER, OP_SAMPLE } op_kind;

/* The most samplers a training model keeps from save_weights_and_get_sampling_client (each a
 * thread and a view): an older one is closed once its queue is run. */
#define TK_SAMPLERS_PER_MODEL 4

typedef struct tk_future {
    char id[TK_ID_MAX];
    char model_id[TK_ID_MAX];
    char op[24]; /* the operation's name, as recorded in the store */
    int64_t created_ms;
    int32_t seq;
    tk_state state;
    json_t *json;
    tk_fb_output *fb;
    tk_sample_response *sample;
    char *error;
    int user_error;
    double done_at;
    struct tk_future *next;
} tk_future;

typedef struct tk_op {
    op_kind kind;
    int32_t seq;
    tk_future *f;                  /* pending: never collected while an op points at it */
    char sample_prefix[TK_ID_MAX]; /* OP_SAMPLE: the sequences' ids are <prefix>:<i> */
    tk_fb_request fb;
    json_t *json;
    struct tk_op *next;
} tk_op;

typedef struct tk_model {
    tk_service *t;
    char id[TK_ID_MAX];
    char session[TK_ID_MAX];
    char *base_model, *base_dir, *arch;
    model_lora_config lora;
    uint64_t seed;
    pthread_t thread;
    int started;
    tk_op *queue;      /* sorted by seq */
    int32_t next_seq;  /* the operation the thread runs next */
    int closing;       /* its session finished: end once the queue is empty */
    int ended;         /* the thread is gone */
    char failed[1100]; /* the create failed: every operation fails with this */
    /* a sampler (sampling session): runs asample requests as they come (no seq order), on
     * base + the adapter it was made from (adapter_dir, or the snapshot snap of snap_n floats,
     * or none: the base alone) */
    int sampler;
    char *adapter_dir, *model_path;
    float *snap;
    size_t snap_n;
    char owner[TK_ID_MAX]; /* the training model whose snapshot it is ("" otherwise) */
    int32_t fifo;          /* a sampler's last queued request */
    rollout_engine *engine;
    /* the thread's own */
    ops_ctx *ops;
    bootstrap_model boot;
    int grads_live;     /* a backward ran since the last optim_step */
    int load_optimizer; /* loaded from a checkpoint (adapter_dir): its AdamW state too */
    struct tk_model *next;
} tk_model;

typedef struct tk_session {
    char id[TK_ID_MAX];
    double last_seen;
    int finished;
    struct tk_session *next;
} tk_session;

/* A change of state for the store (store_tinker.h), queued under t->mu and written by the
 * persister thread: no SQLite write (an fsync) on a request's path, one transaction per batch of
 * futures. */
typedef enum rec_kind {
    REC_SESSION,
    REC_SESSION_END,
    REC_MODEL,
    REC_MODEL_END,
    REC_FUTURE
} rec_kind;

typedef struct tk_rec {
    rec_kind kind;
    char id[TK_ID_MAX];
    char owner[TK_ID_MAX]; /* a model's session, a future's model */
    char text[TK_ID_MAX];  /* a model's base, a session's end reason, a future's op */
    const char *model_kind;
    int n; /* a model's LoRA rank, a future's state (0 pending, 1 done, 2 failed) */
    char *error;
    int64_t created_ms, finished_ms;
    struct tk_rec *next;
} tk_rec;

/* How long the persister lets records gather before it writes them. */
#define TK_PERSIST_EVERY_S 0.1

struct tk_service {
    tk_options opt;
    store *st; /* the persister's handle (and tk_retrieve's, under st_mu) */
    pthread_mutex_t st_mu;
    pthread_t persister;
    int persister_started;
    pthread_cond_t pcv; /* wakes the persister (with mu) */
    tk_rec *recs, **recs_tail;
    int persist_stop;
    int ready; /* the mutexes and conditions are initialised */
    char *data_dir, *device;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    tk_session *sessions;
    tk_model *models;
    tk_future *futures;
    json_t *bases_seen; /* base_model names, for the capabilities */
    uint64_t counter;
    int stopping;
};

/* Wall-clock seconds: entropy for ids and unseeded sampling only (durations use chord_now, the
 * monotonic clock, which no clock step moves). */
static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "<prefix>_<16 hex>", unique in this process and unlikely across restarts. */
static void new_id(tk_service *t, const char *prefix, char *out) {
    uint64_t x = chord_splitmix64((uint64_t)(wall_s() * 1e6) ^ (++t->counter << 20));
    snprintf(out, TK_ID_MAX, "%s_%016llx", prefix, (unsigned long long)x);
}

/* ---- the store's records (t->mu held) ---------------------------------------------------------
 */

static const char *op_name(op_kind k) {
    switch (k) {
    case OP_CREATE:
        return "create_model";
    case OP_FB:
        return "forward_backward";
    case OP_OPTIM:
        return "optim_step";
    case OP_SAVE:
        return "save_weights";
    case OP_SAVE_SAMPLER:
        return "save_weights_for_sampler";
    case OP_SAMPLE:
        return "sample";
    }
    return "unknown";
}

static tk_rec *record(tk_service *t, rec_kind kind, const char *id, const char *owner,
                      const char *text, int n, const char *error) {
    if (!t->st) return NULL;
    tk_rec *r = calloc(1, sizeof *r);
    if (!r || (error && !(r->error = strdup(error)))) {
        free(r);
        LOG_WARN("tinker: out of memory: the record of %s is not stored", id);
        return NULL;
    }
    r->kind = kind;
    snprintf(r->id, sizeof r->id, "%s", id);
    snprintf(r->owner, sizeof r->owner, "%s", owner ? owner : "");
    snprintf(r->text, sizeof r->text, "%s", text ? text : "");
    r->n = n;
    r->created_ms = r->finished_ms = store_now_ms();
    *t->recs_tail = r;
    t->recs_tail = &r->next;
    pthread_cond_signal(&t->pcv);
    return r;
}

static void record_future(tk_service *t, const tk_future *f) {
    int state = f->state == TK_DONE ? 1 : f->state == TK_FAILED ? 2 : 0;
    tk_rec *r =
        record(t, REC_FUTURE, f->id, f->model_id, f->op, state, state == 2 ? f->error : NULL);
    if (r) r->created_ms = f->created_ms;
}

/* Writes a batch in order (each run of futures in one transaction); a failure is logged and the
 * batch goes on: the records are bookkeeping, never worth stopping the service for. */
static void write_recs(tk_service *t, tk_rec *batch) {
    store_tk_future rows[64];
    size_t n = 0;
    chord_err err = {0};
    pthread_mutex_lock(&t->st_mu);
    for (tk_rec *r = batch; r; r = r->next) {
        int rc = 0;
        switch (r->kind) {
        case REC_FUTURE: {
            store_tk_future *w = &rows[n++];
            memset(w, 0, sizeof *w);
            snprintf(w->id, sizeof w->id, "%s", r->id);
            snprintf(w->model_id, sizeof w->model_id, "%s", r->owner);
            snprintf(w->op, sizeof w->op, "%.31s", r->text);
            w->state = r->n;
            w->error = r->error;
            w->created_ms = r->created_ms;
            w->finished_ms = r->finished_ms;
            if (n == sizeof rows / sizeof *rows || !r->next || r->next->kind != REC_FUTURE) {
                rc = store_tk_futures_write(t->st, rows, n, &err);
                n = 0;
            }
            break;
        }
        case REC_SESSION:
            rc = store_tk_session_insert(t->st, r->id, r->text[0] ? r->text : NULL, &err);
            break;
        case REC_SESSION_END:
            rc = store_tk_session_finish(t->st, r->id, r->text, &err);
            break;
        case REC_MODEL:
            rc = store_tk_model_insert(t->st, r->id, r->owner, r->model_kind, r->text, r->n, &err);
            break;
        case REC_MODEL_END:
            rc = store_tk_model_end(t->st, r->id, &err);
            break;
        }
        if (rc) LOG_WARN("tinker: storing the record of %s: %s", r->id, err.msg);
    }
    pthread_mutex_unlock(&t->st_mu);
    while (batch) {
        tk_rec *next = batch->next;
        free(batch->error);
        free(batch);
        batch = next;
    }
}

static void *persist_main(void *arg) {
    tk_service *t = arg;
    pthread_mutex_lock(&t->mu);
    for (;;) {
        int stop = t->persist_stop;
        if (!t->recs && !stop) {
            pthread_cond_wait(&t->pcv, &t->mu);
            continue;
        }
        if (!stop) { /* let a burst gather */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += (long)(TK_PERSIST_EVERY_S * 1e9);
            if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
            while (!t->persist_stop && pthread_cond_timedwait(&t->pcv, &t->mu, &ts) != ETIMEDOUT) {
            }
        }
        tk_rec *batch = t->recs;
        t->recs = NULL;
        t->recs_tail = &t->recs;
        stop = t->persist_stop;
        pthread_mutex_unlock(&t->mu);
        write_recs(t, batch);
        pthread_mutex_lock(&t->mu);
        if (stop && !t->recs) break;
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* ---- futures (t->mu held) ------------------------------------------------------------------ */

static void future_free(tk_future *f) {
    json_decref(f->json);
    if (f->fb) tk_fb_output_free(f->fb);
    free(f->fb);
    if (f->sample) tk_sample_response_free(f->sample);
    free(f->sample);
    free(f->error);
    free(f);
}

static void close_idle_sessions(tk_service *t, double now);

static void collect_futures(tk_service *t) {
    double now = chord_now();
    close_idle_sessions(t, now);
    for (tk_future **pp = &t->futures; *pp;) {
        tk_future *f = *pp;
        if (f->state != TK_PENDING && now - f->done_at > TK_FUTURE_KEEP_S) {
            *pp = f->next;
            future_free(f);
        } else {
            pp = &f->next;
        }
    }
}

static tk_future *future_new(tk_service *t, const char *model_id, int32_t seq, const char *op) {
    tk_future *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    new_id(t, "req", f->id);
    snprintf(f->model_id, sizeof f->model_id, "%s", model_id ? model_id : "");
    snprintf(f->op, sizeof f->op, "%s", op);
    f->created_ms = store_now_ms();
    f->seq = seq;
    record_future(t, f);
    f->next = t->futures;
    t->futures = f;
    return f;
}

static tk_future *future_find(tk_service *t, const char *id) {
    for (tk_future *f = t->futures; f; f = f->next)
        if (!strcmp(f->id, id)) return f;
    return NULL;
}

static tk_future *future_of_seq(tk_service *t, const char *model_id, int32_t seq) {
    for (tk_future *f = t->futures; f; f = f->next)
        if (f->seq == seq && !strcmp(f->model_id, model_id)) return f;
    return NULL;
}

/* Completes f (t->mu NOT held): json, fb or sample on success, else the error. */
static void future_done(tk_service *t, tk_future *f, json_t *json, tk_fb_output *fb,
                        tk_sample_response *sample, const chord_err *err) {
    pthread_mutex_lock(&t->mu);
    if (err) {
        f->state = TK_FAILED;
        f->error = strdup(err->msg[0] ? err->msg : "failed");
        f->user_error = err->code == CHORD_E_INVALID || err->code == CHORD_E_NOT_FOUND ||
                        err->code == CHORD_E_CONFLICT || err->code == CHORD_E_TOO_LARGE;
        json_decref(json);
        if (fb) tk_fb_output_free(fb);
        free(fb);
        if (sample) tk_sample_response_free(sample);
        free(sample);
    } else {
        f->state = TK_DONE;
        f->json = json;
        f->fb = fb;
        f->sample = sample;
    }
    f->done_at = chord_now();
    record_future(t, f);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* ---- sessions and models (t->mu held) -------------------------------------------------------- */

/* A session whose client went away (no heartbeat for TK_SESSION_IDLE_S) is finished: its models
 * and samplers end once their queues are run, and give their memory back. */
static void close_idle_sessions(tk_service *t, double now) {
    for (tk_session *s = t->sessions; s; s = s->next) {
        if (s->finished || now - s->last_seen < TK_SESSION_IDLE_S) continue;
        s->finished = 1;
        LOG_INFO("tinker: session %s had no heartbeat for %.0f s: its models are closed", s->id,
                 now - s->last_seen);
        record(t, REC_SESSION_END, s->id, NULL, "no heartbeat for 600 s", 0, NULL);
        for (tk_model *m = t->models; m; m = m->next)
            if (!strcmp(m->session, s->id)) m->closing = 1;
        pthread_cond_broadcast(&t->cv);
    }
}

static tk_session *session_find(tk_service *t, const char *id) {
    for (tk_session *s = t->sessions; s; s = s->next)
        if (!strcmp(s->id, id)) return s;
    return NULL;
}

static tk_model *model_find(tk_service *t, const char *id) {
    for (tk_model *m = t->models; m; m = m->next)
        if (!strcmp(m->id, id)) return m;
    return NULL;
}

static void op_free(tk_op *op) {
    tk_fb_request_free(&op->fb);
    json_decref(op->json);
    free(op);
}

/* The struct of a model whose thread has ended or never started. */
static void model_struct_free(tk_model *m) {
    if (!m) return;
    free(m->base_model), free(m->base_dir), free(m->arch);
    free(m->adapter_dir), free(m->model_path), free(m->snap);
    free(m);
}

static void queue_op(tk_model *m, tk_op *op);

/* Queues op on m (t->mu held) and hands its future's id back. */
static void enqueue(tk_service *t, tk_model *m, tk_op *op, char *request_id) {
    queue_op(m, op);
    snprintf(request_id, TK_ID_MAX, "%s", op->f->id);
    pthread_cond_broadcast(&t->cv);
}

/* Queues op in seq order; a seq the model ran already or has queued is refused. */
static void queue_op(tk_model *m, tk_op *op) {
    tk_op **pp = &m->queue;
    while (*pp && (*pp)->seq < op->seq)
        pp = &(*pp)->next;
    op->next = *pp;
    *pp = op;
}

static void *model_main(void *arg);

/* ---- the operations (the model's thread; t->mu not held) ------------------------------------ */

static int run_create(tk_model *m, chord_err *err) {
    char msg[256] = "";
    m->ops = ops_open(m->t->device, m->t->opt.threads, msg, sizeof msg);
    if (!m->ops)
        return chord_err_setc(err, CHORD_E_UNAVAILABLE, "device %s: %s", m->t->device, msg);
    bootstrap_spec spec = {.dir = m->adapter_dir ? m->adapter_dir : m->base_dir,
                           .bases = m->t->opt.bases};
    if (bootstrap_open(&spec, m->ops, &m->boot, err) != 0) return -1;
    if (m->sampler) { /* the adapter of its checkpoint (bootstrap), its snapshot, or none */
        if (m->snap && (model_lora_attach(m->boot.m, &m->lora, 0, err) != 0 ||
                        model_lora_write_params(m->boot.m, m->snap, err) != 0))
            return -1;
        free(m->snap);
        m->snap = NULL;
        m->engine = rollout_engine_new(m->boot.m);
        return m->engine ? 0 : chord_err_oom(err);
    }
    if (m->adapter_dir) { /* load_weights: the checkpoint's adapter (bootstrap), its state */
        char path[4200];
        snprintf(path, sizeof path, "%s/optimizer.safetensors", m->adapter_dir);
        if (model_lora_get_config(m->boot.m, &m->lora) != 0)
            return chord_err_set(err, "path: the checkpoint holds no adapter");
        if (m->load_optimizer && model_load_optimizer(m->boot.m, path, err) != 0)
            return chord_err_prefix(err, "path: its optimizer state");
        return 0;
    }
    if (m->boot.m->lora)
        return chord_err_set(err, "base_model: %s is a LoRA adapter; name its base", m->base_model);
    if (model_lora_attach(m->boot.m, &m->lora, m->seed, err) != 0)
        return chord_err_prefix(err, "lora_config");
    return 0;
}

/* Packs datums [d0, d1) into one batch and runs it: forward, loss, backward (unless
 * forward_only); fills the outputs of those datums. */
static int run_chunk(tk_model *m, const tk_fb_request *fb, const tk_loss_config *lc, size_t d0,
                     size_t d1, tk_fb_output *out, tk_loss_stats *st, chord_err *err) {
    size_t N = 0;
    for (size_t i = d0; i < d1; i++)
        N += fb->data[i].n_tokens;
    const int S = (int)(d1 - d0);
    int32_t *tok = malloc(N * sizeof *tok), *pos = malloc(N * sizeof *pos),
            *tgt = malloc(N * sizeof *tgt), *cu = malloc(((size_t)S + 1) * sizeof *cu);
    float *lp = calloc(N, sizeof *lp), *dlp = calloc(N, sizeof *dlp);
    int rc = -1;
    if (!tok || !pos || !tgt || !cu || !lp || !dlp) {
        chord_err_oom(err);
        goto done;
    }
    size_t o = 0;
    cu[0] = 0;
    for (size_t i = d0; i < d1; i++) {
        const tk_datum *d = &fb->data[i];
        const tk_tensor *tt = tk_datum_input(d, "target_tokens");
        for (size_t k = 0; k < d->n_tokens; k++, o++) {
            tok[o] = d->tokens[k];
            pos[o] = (int32_t)k;
            tgt[o] = (int32_t)tt->i64[k];
        }
        cu[i - d0 + 1] = (int32_t)o;
    }
    model_batch b = {
        .N = (int)N, .S = S, .tokens = tok, .positions = pos, .cu_seqlens = cu, .targets = tgt};
    model *mm = m->boot.m;
    if (model_forward(mm, &b, 1.0f, lp, NULL, err) != 0) goto done;
    o = 0;
    for (size_t i = d0; i < d1; i++) {
        const tk_datum *d = &fb->data[i];
        out->lens[i] = d->n_tokens;
        out->logprobs[i] = malloc((d->n_tokens ? d->n_tokens : 1) * sizeof(float));
        out->elementwise_loss[i] = malloc((d->n_tokens ? d->n_tokens : 1) * sizeof(float));
        if (!out->logprobs[i] || !out->elementwise_loss[i]) {
            chord_err_oom(err);
            goto done;
        }
        memcpy(out->logprobs[i], lp + o, d->n_tokens * sizeof(float));
        tk_loss_datum(lc, d, lp + o, d->n_tokens, out->elementwise_loss[i],
                      fb->forward_only ? NULL : dlp + o, st);
        o += d->n_tokens;
    }
    if (!fb->forward_only && model_backward(mm, dlp, NULL, err) != 0) goto done;
    rc = 0;
done:
    free(tok), free(pos), free(tgt), free(cu), free(lp), free(dlp);
    return rc;
}

static int run_fb(tk_model *m, const tk_fb_request *fb, tk_fb_output **result, chord_err *err) {
    *result = NULL;
    tk_loss_config lc;
    if (tk_loss_parse(fb->loss_fn, fb->config, fb->n_config, &lc, err) != 0) return -1;
    model *mm = m->boot.m;
    const int vocab = mm->cfg.vocab_size, max_pos = mm->cfg.max_position_embeddings;
    for (size_t i = 0; i < fb->n_data; i++) {
        if (tk_loss_check(&lc, &fb->data[i], i, vocab, err) != 0) return -1;
        if (max_pos > 0 && fb->data[i].n_tokens > (size_t)max_pos)
            return chord_err_set(err,
                                 "data[%zu].model_input: %zu tokens, over the model's %d "
                                 "positions",
                                 i, fb->data[i].n_tokens, max_pos);
    }
    tk_fb_output *out = calloc(1, sizeof *out);
    if (!out) return chord_err_oom(err);
    out->n_data = fb->n_data;
    size_t nd = fb->n_data ? fb->n_data : 1;
    out->logprobs = calloc(nd, sizeof *out->logprobs);
    out->elementwise_loss = calloc(nd, sizeof *out->elementwise_loss);
    out->lens = calloc(nd, sizeof *out->lens);
    int rc = -1;
    if (!out->logprobs || !out->elementwise_loss || !out->lens) {
        chord_err_oom(err);
        goto done;
    }
    if (!fb->forward_only && !m->grads_live) {
        if (model_zero_grad(mm, err) != 0) goto done;
        m->grads_live = 1;
    }
    tk_loss_stats st = {0};
    for (size_t d0 = 0; d0 < fb->n_data;) {
        size_t d1 = d0, tokens = 0;
        while (d1 < fb->n_data && (d1 == d0 || tokens + fb->data[d1].n_tokens <= TK_CHUNK_TOKENS))
            tokens += fb->data[d1++].n_tokens;
        if (run_chunk(m, fb, &lc, d0, d1, out, &st, err) != 0) goto done;
        d0 = d1;
    }
    if (tk_loss_metrics(&lc, &st, out, err) != 0) goto done;
    rc = 0;
done:
    if (rc != 0) {
        tk_fb_output_free(out);
        free(out);
    } else {
        *result = out;
    }
    return rc;
}

static int adam_param(const json_t *p, const char *key, double lo, double dflt, double *out,
                      chord_err *err) {
    const json_t *v = json_object_get(p, key);
    if (!v) {
        *out = dflt;
        return 0;
    }
    if (!json_is_number(v) || !isfinite(json_number_value(v)) || json_number_value(v) < lo)
        return chord_err_set(err, "adam_params.%s: must be a finite number >= %g", key, lo);
    *out = json_number_value(v);
    return 0;
}

static int run_optim(tk_model *m, const json_t *req, json_t **result, chord_err *err) {
    const json_t *p = json_object_get(req, "adam_params");
    if (!json_is_object(p))
        return chord_err_set(err, "adam_params: required (chord runs AdamW; optimizer_params "
                                  "of other optimizers are not supported)");
    double lr = 0, b1 = 0, b2 = 0, eps = 0, wd = 0, clip = 0;
    if (adam_param(p, "learning_rate", 0.0, 1e-4, &lr, err) ||
        adam_param(p, "beta1", 0.0, 0.9, &b1, err) || adam_param(p, "beta2", 0.0, 0.95, &b2, err) ||
        adam_param(p, "eps", 0.0, 1e-12, &eps, err) ||
        adam_param(p, "weight_decay", 0.0, 0.0, &wd, err) ||
        adam_param(p, "grad_clip_norm", 0.0, 0.0, &clip, err))
        return -1;
    if (b1 >= 1.0 || b2 >= 1.0)
        return chord_err_set(err, "adam_params: beta1 and beta2 must be below 1");
    model *mm = m->boot.m;
    if (!m->grads_live && model_zero_grad(mm, err) != 0) return -1; /* a step on no data */
    double gn = 0.0;
    if (model_adamw_step(mm, (float)lr, (float)b1, (float)b2, (float)eps, (float)wd, (float)clip,
                         &gn, err) != 0)
        return -1;
    m->grads_live = 0;
    *result = json_pack("{s:{s:f,s:f}}", "metrics", "grad_norm", gn, "learning_rate", lr);
    return *result ? 0 : chord_err_oom(err);
}

/* A checkpoint name: 1..100 of [A-Za-z0-9._-], not "." or "..". */
static int name_ok(const char *s) {
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 100 || !strcmp(s, ".") || !strcmp(s, "..")) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

/* save_weights (kind "weights": adapter + optimizer) and save_weights_for_sampler (kind
 * "sampler_weights": the adapter), into DATA_DIR/tinker/<model>/<kind>/<name>, whole or not at
 * all (a temporary directory renamed). */
static int snapshot_sampler(tk_model *m, const json_t *req, json_t **result, chord_err *err);

static int run_save(tk_model *m, const json_t *req, int sampler, json_t **result, chord_err *err) {
    const char *name = json_string_value(json_object_get(req, "path"));
    if (!name && sampler) return snapshot_sampler(m, req, result, err);
    if (!name) return chord_err_set(err, "path: required");
    if (!name_ok(name))
        return chord_err_set(err,
                             "path: \"%.100s\" is not a checkpoint name (1 to 100 of "
                             "A-Z a-z 0-9 . _ -)",
                             name);
    const char *kind = sampler ? "sampler_weights" : "weights";
    int overwrite = json_is_true(json_object_get(req, "overwrite"));
    char dir[4096], tmp[4200], path[4300];
    snprintf(dir, sizeof dir, "%s/tinker/%s/%s/%s", m->t->data_dir, m->id, kind, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    if (chord_is_dir(dir) && !overwrite)
        return chord_err_setc(err, CHORD_E_CONFLICT,
                              "path: %s/%s exists (overwrite: true to "
                              "replace it)",
                              kind, name);
    if (chord_is_dir(tmp) && chord_rmtree(tmp, err) != 0) return -1;
    if (model_lora_save(m->boot.m, tmp, m->base_dir, err) != 0) return -1;
    snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
    if (!sampler && model_save_optimizer(m->boot.m, path, err) != 0) return -1;
    if (chord_is_dir(dir) && chord_rmtree(dir, err) != 0) return -1;
    if (rename(tmp, dir) != 0)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: rename: %s", dir, strerror(errno));
    char tpath[TK_ID_MAX + 256];
    snprintf(tpath, sizeof tpath, "tinker://%s/%s/%s", m->id, kind, name);
    *result = json_pack("{s:s,s:s}", "path", tpath, "type",
                        sampler ? "save_weights_for_sampler" : "save_weights");
    return *result ? 0 : chord_err_oom(err);
}

/* The tokens of a ModelInput ({"chunks": [{"type": "encoded_text", "tokens": [...]}]}). */
static int prompt_tokens(const json_t *prompt, int vocab, int32_t **out, int *n, chord_err *err) {
    *out = NULL;
    *n = 0;
    const json_t *chunks = json_object_get(prompt, "chunks");
    if (!json_is_array(chunks)) return chord_err_set(err, "prompt.chunks: required (a list)");
    size_t total = 0, i;
    json_t *c;
    json_array_foreach(chunks, i, c) {
        const char *type = json_string_value(json_object_get(c, "type"));
        const json_t *toks = json_object_get(c, "tokens");
        if ((type && strcmp(type, "encoded_text") != 0) || !json_is_array(toks))
            return chord_err_set(err,
                                 "prompt.chunks[%zu]: only encoded_text chunks (tokens) are "
                                 "supported",
                                 i);
        total += json_array_size(toks);
    }
    if (total == 0) return chord_err_set(err, "prompt: no tokens");
    if (total > (size_t)1 << 24) return chord_err_set(err, "prompt: %zu tokens is too long", total);
    int32_t *ids = malloc(total * sizeof *ids);
    if (!ids) return chord_err_oom(err);
    size_t k = 0;
    json_array_foreach(chunks, i, c) {
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(c, "tokens"), j, v) {
            json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
            if (id < 0 || id >= vocab) {
                free(ids);
                return chord_err_set(err,
                                     "prompt.chunks[%zu].tokens[%zu]: not a token id in "
                                     "[0, %d)",
                                     i, j, vocab);
            }
            ids[k++] = (int32_t)id;
        }
    }
    *out = ids;
    *n = (int)total;
    return 0;
}

/* The length of seq's tokens up to and including the first token whose text completes one of
 * the stop strings, or -1 when none occurs. One streaming decode (tok_stream, special tokens
 * skipped as the returned text skips them): each token's new text is searched only where a stop
 * string could end in it. A character a decoder holds back (an incomplete UTF-8 sequence, what a
 * Strip may remove at the end) counts for the token that completes it. */
static int stop_string_cut(const tok_tokenizer *tok, const rollout_seq *q, const json_t *strs,
                           chord_err *err) {
    size_t longest = 0, i;
    json_t *v;
    json_array_foreach(strs, i, v) {
        size_t l = strlen(json_string_value(v));
        if (l > longest) longest = l;
    }
    chord_buf text = {0};
    char *piece = NULL;
    size_t cap = 0;
    int cut = -1;
    tok_stream st;
    tok_stream_init(&st, tok, 1);
    for (int k = 0; k < q->len && cut < 0; k++) {
        size_t bytes = 0, len = 0;
        if (!tok_id_bytes(tok, q->tokens[k], &bytes)) continue; /* past the tokenizer: no text */
        if (cap < bytes * 3 + 16) {
            char *p = realloc(piece, bytes * 3 + 16);
            if (!p) goto oom;
            piece = p;
            cap = bytes * 3 + 16;
        }
        if (tok_stream_push(&st, q->tokens[k], piece, cap, &len, err) != 0) {
            cut = -2;
            break;
        }
        if (!len) continue;
        const size_t from = text.len >= longest ? text.len - longest + 1 : 0;
        if (chord_buf_append(&text, piece, len) != 0) goto oom;
        json_array_foreach(strs, i, v) {
            const char *s = json_string_value(v);
            if (*s && memmem(text.data + from, text.len - from, s, strlen(s))) cut = k + 1;
        }
    }
    free(piece);
    chord_buf_free(&text);
    return cut;
oom:
    free(piece);
    chord_buf_free(&text);
    chord_err_oom(err);
    return -2;
}

/* A sample request between sample_prepare and sample_finish. */
typedef struct sample_job {
    int32_t *ptoks;
    int plen;
    int32_t stop_ids[64];
    int n_stop;
    json_t *strs; /* stop strings */
    int want_prompt_lp;
    rollout_params rp; /* stop_ids: set to this job's stop_ids where it is used */
} sample_job;

static int sample_prepare(tk_model *m, const json_t *req, sample_job *sj, chord_err *err) {
    model *mm = m->boot.m;
    const int vocab = mm->cfg.vocab_size, max_pos = mm->cfg.max_position_embeddings;
    int32_t *ptoks = NULL, *stop_ids = sj->stop_ids;
    int plen = 0, n_stop = 0;
    json_t *strs = json_array();
    if (!strs) {
        chord_err_oom(err);
        goto done;
    }
    if (prompt_tokens(json_object_get(req, "prompt"), vocab, &ptoks, &plen, err)) goto done;
    const json_t *sp = json_object_get(req, "sampling_params");
    int64_t n = 1, max_tokens = 0, top_k = -1, seed = -1;
    double temp = 1.0, top_p = 1.0;
    int want_prompt_lp = 0;
    if (sp && !json_is_object(sp)) {
        chord_err_set(err, "sampling_params: must be an object");
        goto done;
    }
    if (chord_json_get_int(req, "", "num_samples", 0, 1, 1024, &n, err) ||
        chord_json_get_bool(req, "", "prompt_logprobs", 0, &want_prompt_lp, err) ||
        (sp &&
         (chord_json_get_int(sp, "sampling_params", "max_tokens", 0, 1, 1 << 20, &max_tokens,
                             err) ||
          chord_json_get_number(sp, "sampling_params", "temperature", 0, 0.0, 100.0, &temp, err) ||
          chord_json_get_number(sp, "sampling_params", "top_p", CHORD_JSON_LO_OPEN, 0.0, 1.0,
                                &top_p, err) ||
          chord_json_get_int(sp, "sampling_params", "top_k", 0, -1, 1 << 30, &top_k, err) ||
          chord_json_get_int(sp, "sampling_params", "seed", 0, 0, INT64_MAX, &seed, err))))
        goto done;
    if (top_k > 0) {
        chord_err_set(err, "sampling_params.top_k: not supported (use -1, or top_p)");
        goto done;
    }
    static const char *const zero[] = {"topk_prompt_logprobs", "topk_sample_logprobs",
                                       "prompt_alt_tokens_k", NULL};
    for (int i = 0; zero[i]; i++) {
        const json_t *v = json_object_get(req, zero[i]);
        if (v && !(json_is_integer(v) && json_integer_value(v) == 0)) {
            chord_err_set(err, "%s: not supported (0 only)", zero[i]);
            goto done;
        }
    }
    if (json_object_get(req, "target_prompt_logprobs") ||
        json_object_get(req, "prompt_logprobs_last_n")) {
        chord_err_set(err, "target_prompt_logprobs / prompt_logprobs_last_n: not supported");
        goto done;
    }
    if (max_tokens == 0) max_tokens = max_pos > plen ? max_pos - plen : 1;
    if (max_pos > 0 && plen + max_tokens > max_pos) {
        chord_err_set(err,
                      "sampling_params.max_tokens: the prompt's %d tokens + %lld exceed the "
                      "model's %d positions",
                      plen, (long long)max_tokens, max_pos);
        goto done;
    }
    /* stop: absent = the model's end tokens; [] = none; token ids; strings (+ the end tokens) */
    const json_t *stop = sp ? json_object_get(sp, "stop") : NULL;
    int eos = !stop || json_is_null(stop) || json_is_string(stop) ||
              (json_is_array(stop) && json_array_size(stop) > 0 &&
               json_is_string(json_array_get(stop, 0)));
    if (eos)
        for (int i = 0; i < m->boot.n_stop && n_stop < 64; i++)
            stop_ids[n_stop++] = m->boot.stop_ids[i];
    if (json_is_string(stop)) {
        json_array_append(strs, (json_t *)stop);
    } else if (json_is_array(stop)) {
        size_t i;
        json_t *v;
        json_array_foreach(stop, i, v) {
            if (json_is_string(v) && json_string_length(v) > 0) {
                json_array_append(strs, v);
            } else if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                       json_integer_value(v) < vocab && n_stop < 64) {
                stop_ids[n_stop++] = (int32_t)json_integer_value(v);
            } else {
                chord_err_set(err,
                              "sampling_params.stop[%zu]: a non-empty string or a token id "
                              "in [0, %d) (at most 64)",
                              i, vocab);
                goto done;
            }
        }
    } else if (stop && !json_is_null(stop)) {
        chord_err_set(err, "sampling_params.stop: a string, a list of strings or of token ids");
        goto done;
    }
    rollout_params rp = {.group_size = (int)n,
                         .temperature = (float)temp,
                         .top_p = (float)top_p,
                         .max_new_tokens = (int)max_tokens,
                         .stop_ids = stop_ids,
                         .n_stop = n_stop,
                         .seed = seed >= 0 ? (uint64_t)seed
                                           : chord_splitmix64((uint64_t)(wall_s() * 1e9)),
                         .stream = 0};
    sj->ptoks = ptoks;
    sj->plen = plen;
    sj->n_stop = n_stop;
    sj->strs = strs;
    sj->want_prompt_lp = want_prompt_lp;
    sj->rp = rp;
    return 0;
done:
    free(ptoks);
    json_decref(strs);
    return -1;
}

/* Takes rr (freed here) and builds the response of sample_prepare's request. */
static int sample_finish(tk_model *m, const sample_job *sj, rollout_result *rrp,
                         tk_sample_response **result, chord_err *err) {
    *result = NULL;
    model *mm = m->boot.m;
    const int32_t *ptoks = sj->ptoks;
    const int plen = sj->plen;
    const json_t *strs = sj->strs;
    int rc = -1;
    rollout_result rr = *rrp;
    memset(rrp, 0, sizeof *rrp);
    tk_sample_response *out = calloc(1, sizeof *out);
    float *lp = NULL;
    if (!out) {
        chord_err_oom(err);
        goto done;
    }
    out->seqs = calloc((size_t)rr.n, sizeof *out->seqs);
    if (!out->seqs) {
        chord_err_oom(err);
        goto done;
    }
    out->n_seqs = (size_t)rr.n;
    for (int i = 0; i < rr.n; i++) {
        const rollout_seq *q = &rr.seq[i];
        int len = q->len, stopped = q->stopped;
        if (json_array_size(strs) > 0) {
            int cut = stop_string_cut(m->boot.tok, q, strs, err);
            if (cut == -2) goto done;
            if (cut >= 0 && (!stopped || cut <= len)) {
                len = cut;
                stopped = 1;
            }
        }
        tk_sampled *s = &out->seqs[i];
        s->stop_reason = stopped ? TK_STOP_REASON_STOP : TK_STOP_REASON_LENGTH;
        s->n = (size_t)len;
        s->tokens = malloc((len ? (size_t)len : 1) * sizeof *s->tokens);
        s->logprobs = malloc((len ? (size_t)len : 1) * sizeof *s->logprobs);
        if (!s->tokens || !s->logprobs) {
            chord_err_oom(err);
            goto done;
        }
        memcpy(s->tokens, q->tokens, (size_t)len * sizeof *s->tokens);
        memcpy(s->logprobs, q->logp, (size_t)len * sizeof *s->logprobs);
    }
    if (sj->want_prompt_lp) { /* log p(token j | tokens < j), NaN at 0: one forward at T = 1 */
        int32_t *pos = malloc((size_t)plen * sizeof *pos),
                *tgt = malloc((size_t)plen * sizeof *tgt);
        int32_t cu[2] = {0, plen};
        lp = calloc((size_t)plen, sizeof *lp);
        out->prompt_logprobs = malloc((size_t)plen * sizeof *out->prompt_logprobs);
        int ok = pos && tgt && lp && out->prompt_logprobs;
        for (int j = 0; ok && j < plen; j++) {
            pos[j] = j;
            tgt[j] = j + 1 < plen ? ptoks[j + 1] : -1;
        }
        model_batch b = {
            .N = plen, .S = 1, .tokens = (int32_t *)ptoks, .positions = pos, .cu_seqlens = cu, .targets = tgt};
        int frc = ok ? model_forward(mm, &b, 1.0f, lp, NULL, err) : chord_err_oom(err);
        free(pos), free(tgt);
        if (frc != 0) goto done;
        out->n_prompt = (size_t)plen;
        out->prompt_logprobs[0] = NAN;
        for (int j = 1; j < plen; j++)
            out->prompt_logprobs[j] = lp[j - 1];
    }
    rc = 0;
done:
    free(lp);
    rollout_result_free(&rr);
    if (rc != 0) {
        if (out) tk_sample_response_free(out);
        free(out);
    } else {
        *result = out;
    }
    return rc;
}


static void sample_job_free(sample_job *sj) {
    free(sj->ptoks);
    json_decref(sj->strs);
    memset(sj, 0, sizeof *sj);
}

static int run_sample(tk_model *m, const json_t *req, tk_sample_response **result, chord_err *err) {
    *result = NULL;
    sample_job sj;
    memset(&sj, 0, sizeof sj);
    rollout_result rr = {0};
    int rc = sample_prepare(m, req, &sj, err);
    if (rc == 0) {
        const int32_t *pp = sj.ptoks;
        sj.rp.stop_ids = sj.stop_ids;
        rc = rollout_generate(m->engine, &pp, &sj.plen, 1, &sj.rp, &rr, err);
    }
    if (rc == 0) rc = sample_finish(m, &sj, &rr, result, err);
    rollout_result_free(&rr);
    sample_job_free(&sj);
    return rc;
}

static void run_op(tk_model *m, tk_op *op) {
    chord_err err = {0};
    json_t *json = NULL;
    tk_fb_output *fb = NULL;
    tk_sample_response *sample = NULL;
    int rc;
    if (m->failed[0] && op->kind != OP_CREATE) {
        rc = chord_err_setc(&err, CHORD_E_INVALID, "model %s did not load: %s", m->id, m->failed);
    } else {
        switch (op->kind) {
        case OP_CREATE:
            rc = run_create(m, &err);
            if (rc != 0)
                snprintf(m->failed, sizeof m->failed, "%s", err.msg);
            else if (!(json =
                           m->adapter_dir && !m->sampler
                               ? json_pack("{s:s,s:s}", "model_id", m->id, "type", "load_weights")
                               : json_pack("{s:s,s:s}", "model_id", m->id, "type", "create_model")))
                rc = chord_err_oom(&err);
            break;
        case OP_FB:
            rc = run_fb(m, &op->fb, &fb, &err);
            break;
        case OP_OPTIM:
            rc = run_optim(m, op->json, &json, &err);
            break;
        case OP_SAVE:
        case OP_SAVE_SAMPLER:
            rc = run_save(m, op->json, op->kind == OP_SAVE_SAMPLER, &json, &err);
            break;
        case OP_SAMPLE:
            rc = run_sample(m, op->json, &sample, &err);
            break;
        default:
            rc = chord_err_setc(&err, CHORD_E_INTERNAL, "unknown operation");
        }
    }
    if (rc != 0) LOG_WARN("tinker %s seq %d: %s", m->id, (int)op->seq, err.msg);
    future_done(m->t, op->f, json, fb, sample, rc != 0 ? &err : NULL);
}

/* Sample requests queued together decode together: one growing batch (server/train/rollout.h)
 * per group of them whose KV cache stays within TK_BATCH_POSITIONS slots x positions (a request
 * larger than that alone); each is answered when its own sequences end, with what it draws
 * alone (its uniforms are its own). */
#define TK_BATCH_MAX 64
#define TK_BATCH_POSITIONS 65536
static void run_samples(tk_model *m, tk_op **ops, int k) {
    sample_job *sj = calloc((size_t)k, sizeof *sj);
    chord_err *errs = calloc((size_t)k, sizeof *errs);
    int *r = calloc((size_t)k, sizeof *r), *ok = calloc((size_t)k, sizeof *ok);
    if (!sj || !errs || !r || !ok || m->failed[0]) { /* one at a time (they fail alike) */
        free(sj), free(errs), free(r), free(ok);
        for (int i = 0; i < k; i++)
            run_op(m, ops[i]);
        return;
    }
    for (int i = 0; i < k; i++)
        ok[i] = sample_prepare(m, ops[i]->json, &sj[i], &errs[i]) == 0;
    for (int g0 = 0; g0 < k;) {
        /* the next group: as many as fit TK_BATCH_POSITIONS (at least one) */
        long long slots = 0, max_T = 0;
        int g1 = g0;
        for (; g1 < k; g1++) {
            if (!ok[g1]) continue;
            long long s2 = slots + sj[g1].rp.group_size,
                      t2 = sj[g1].plen + (long long)sj[g1].rp.max_new_tokens;
            if (t2 < max_T) t2 = max_T;
            if (slots > 0 && s2 * t2 > TK_BATCH_POSITIONS) break;
            slots = s2, max_T = t2;
        }
        rollout_batch *b = NULL;
        chord_err berr = {0};
        int n_in = 0;
        if (slots > 0 && rollout_batch_new(m->engine, (int)slots, (int)max_T, &b, &berr) != 0)
            b = NULL;
        for (int i = g0; i < g1; i++) {
            if (!ok[i]) continue;
            if (!b) {
                errs[i] = berr;
                ok[i] = 0;
                continue;
            }
            const int32_t *pp = sj[i].ptoks;
            sj[i].rp.stop_ids = sj[i].stop_ids;
            r[i] = rollout_batch_add(b, &pp, &sj[i].plen, 1, &sj[i].rp, &errs[i]);
            if (r[i] < 0)
                ok[i] = 0;
            else
                n_in++;
        }
        int live = 1;
        while (b && live > 0) {
            live = rollout_batch_step(b, &berr);
            for (int i = g0; i < g1; i++) {
                rollout_result rr = {0};
                if (!ok[i]) continue;
                if (live < 0) { /* the batch failed under them */
                    errs[i] = berr;
                    ok[i] = 0;
                    continue;
                }
                if (!rollout_batch_take(b, r[i], &rr)) continue;
                tk_sample_response *res = NULL;
                int rc = sample_finish(m, &sj[i], &rr, &res, &errs[i]);
                rollout_result_free(&rr);
                future_done(m->t, ops[i]->f, NULL, NULL, res, rc != 0 ? &errs[i] : NULL);
                ok[i] = -1; /* answered */
            }
        }
        for (int i = g0; i < g1; i++)
            if (ok[i] == 1) { /* cannot happen: a finished batch has every request done */
                chord_err_setc(&errs[i], CHORD_E_INTERNAL, "sample: the batch ended without it");
                ok[i] = 0;
            }
        if (n_in > 1) LOG_INFO("tinker %s: %d sample requests decoded together", m->id, n_in);
        rollout_batch_free(b);
        g0 = g1;
    }
    for (int i = 0; i < k; i++) {
        if (ok[i] == 0) {
            LOG_WARN("tinker %s seq %d: %s", m->id, (int)ops[i]->seq, errs[i].msg);
            future_done(m->t, ops[i]->f, NULL, NULL, NULL, &errs[i]);
        }
        sample_job_free(&sj[i]);
    }
    free(sj), free(errs), free(r), free(ok);
}

static void *model_main(void *arg) {
    tk_model *m = arg;
    tk_service *t = m->t;
    double gap_since = 0.0; /* when the queue began to wait on a missing seq_id */
    pthread_mutex_lock(&t->mu);
    for (;;) {
        tk_op *op = m->queue;
        if (op && m->sampler && op->seq > 0) m->next_seq = op->seq; /* as they come */
        if (op && op->seq > m->next_seq && !t->stopping) {
            double now = chord_now();
            if (gap_since == 0.0) gap_since = now;
            if (now - gap_since >= TK_SEQ_GAP_S) {
                LOG_WARN("tinker %s: seq_id %d never came; going on with %d", m->id,
                         (int)m->next_seq, (int)op->seq);
                m->next_seq = op->seq;
            }
        } else {
            gap_since = 0.0;
        }
        if (op && op->seq == m->next_seq && !t->stopping && op->kind == OP_SAMPLE) {
            /* it and the sample requests right behind it, together */
            tk_op *batch[TK_BATCH_MAX];
            int k = 0;
            while (k < TK_BATCH_MAX && m->queue && m->queue->kind == OP_SAMPLE &&
                   (k == 0 || m->sampler || m->queue->seq == m->next_seq + k)) {
                batch[k++] = m->queue;
                m->queue = m->queue->next;
            }
            pthread_mutex_unlock(&t->mu);
            run_samples(m, batch, k);
            for (int i = 0; i < k; i++)
                op_free(batch[i]);
            pthread_mutex_lock(&t->mu);
            m->next_seq += k;
            continue;
        }
        if (op && op->seq == m->next_seq && !t->stopping) {
            m->queue = op->next;
            pthread_mutex_unlock(&t->mu);
            run_op(m, op);
            op_free(op);
            pthread_mutex_lock(&t->mu);
            m->next_seq++;
            continue;
        }
        if (t->stopping || (m->closing && !m->queue)) {
            m->ended = 1; /* under mu: nothing is queued on it from here on */
            record(t, REC_MODEL_END, m->id, NULL, NULL, 0, NULL);
            break;
        }
        if (gap_since > 0.0) { /* look again when the gap may be skipped */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_sec += 1;
            pthread_cond_timedwait(&t->cv, &t->mu, &ts);
        } else {
            pthread_cond_wait(&t->cv, &t->mu);
        }
    }
    /* what is still queued will never run */
    tk_op *rest = m->queue;
    m->queue = NULL;
    pthread_mutex_unlock(&t->mu);
    while (rest) {
        tk_op *next = rest->next;
        chord_err err = {0};
        chord_err_setc(&err, CHORD_E_UNAVAILABLE, "the server is stopping");
        future_done(t, rest->f, NULL, NULL, NULL, &err);
        op_free(rest);
        rest = next;
    }
    rollout_engine_free(m->engine);
    m->engine = NULL;
    bootstrap_close(&m->boot);
    ops_close(m->ops);
    m->ops = NULL;
    return NULL;
}

/* ---- the service ------------------------------------------------------------------------------
 */

int tk_open(const tk_options *opt, tk_service **out, chord_err *err) {
    *out = NULL;
    tk_service *t = calloc(1, sizeof *t);
    if (!t) return chord_err_oom(err);
    t->opt = *opt;
    t->data_dir = strdup(opt->data_dir);
    t->device = strdup(opt->device ? opt->device : "cpu");
    t->bases_seen = json_array();
    if (!t->data_dir || !t->device || !t->bases_seen) {
        tk_close(t);
        return chord_err_oom(err);
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    pthread_mutex_init(&t->st_mu, NULL);
    pthread_cond_init(&t->pcv, NULL);
    t->recs_tail = &t->recs;
    t->ready = 1;
    /* the store: what a dead process left open is closed first (store_tinker.h) */
    int64_t nf = 0, ns = 0;
    if (store_open(t->data_dir, &t->st, err) || store_tk_recover(t->st, &nf, &ns, err)) {
        tk_close(t);
        return chord_err_prefix(err, "tinker");
    }
    if (nf || ns)
        LOG_INFO("tinker: %lld request(s) interrupted by the last stop failed, %lld session(s) "
                 "closed",
                 (long long)nf, (long long)ns);
    if (pthread_create(&t->persister, NULL, persist_main, t) != 0) {
        tk_close(t);
        return chord_err_setc(err, CHORD_E_INTERNAL, "tinker: cannot start the store's thread");
    }
    t->persister_started = 1;
    *out = t;
    return 0;
}

void tk_shutdown(tk_service *t) {
    if (!t || !t->ready) return;
    pthread_mutex_lock(&t->mu);
    t->stopping = 1;
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    /* no model is added once stopping is set (tk_submit_create_model checks it under mu) */
    for (tk_model *m = t->models; m; m = m->next)
        if (m->started) {
            pthread_join(m->thread, NULL);
            m->started = 0;
        }
    /* the models' last records (their futures failed, their ends) are written, then it stops */
    if (t->persister_started) {
        pthread_mutex_lock(&t->mu);
        t->persist_stop = 1;
        pthread_cond_signal(&t->pcv);
        pthread_mutex_unlock(&t->mu);
        pthread_join(t->persister, NULL);
        t->persister_started = 0;
    }
}

void tk_close(tk_service *t) {
    if (!t) return;
    tk_shutdown(t);
    while (t->models) {
        tk_model *m = t->models;
        t->models = m->next;
        model_struct_free(m);
    }
    while (t->futures) {
        tk_future *f = t->futures;
        t->futures = f->next;
        future_free(f);
    }
    while (t->sessions) {
        tk_session *s = t->sessions;
        t->sessions = s->next;
        free(s);
    }
    while (t->recs) { /* none once the persister ran; a failed open's */
        tk_rec *r = t->recs;
        t->recs = r->next;
        free(r->error);
        free(r);
    }
    store_close(t->st);
    json_decref(t->bases_seen);
    free(t->data_dir), free(t->device);
    if (t->ready) {
        pthread_cond_destroy(&t->cv);
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->pcv);
        pthread_mutex_destroy(&t->st_mu);
    }
    free(t);
}

int tk_create_session(tk_service *t, const json_t *req, json_t **resp, chord_err *err) {
    tk_session *s = calloc(1, sizeof *s);
    if (!s) return chord_err_oom(err);
    pthread_mutex_lock(&t->mu);
    new_id(t, "ses", s->id);
    s->last_seen = chord_now();
    s->next = t->sessions;
    t->sessions = s;
    record(t, REC_SESSION, s->id, NULL, json_string_value(json_object_get(req, "sdk_version")), 0,
           NULL);
    *resp = json_pack("{s:s,s:s}", "session_id", s->id, "type", "create_session");
    pthread_mutex_unlock(&t->mu);
    return *resp ? 0 : chord_err_oom(err);
}

int tk_heartbeat(tk_service *t, const json_t *req, json_t **resp, chord_err *err) {
    const char *id = json_string_value(json_object_get(req, "session_id"));
    if (!id) return chord_err_set(err, "session_id: required");
    pthread_mutex_lock(&t->mu);
    tk_session *s = session_find(t, id);
    if (s) s->last_seen = chord_now();
    pthread_mutex_unlock(&t->mu);
    if (!s) return chord_err_setc(err, CHORD_E_NOT_FOUND, "session_id: no session %.100s", id);
    *resp = json_pack("{s:s}", "type", "session_heartbeat");
    return *resp ? 0 : chord_err_oom(err);
}

int tk_finish_session(tk_service *t, const char *session_id, chord_err *err) {
    pthread_mutex_lock(&t->mu);
    tk_session *s = session_find(t, session_id);
    if (s) {
        if (!s->finished)
            record(t, REC_SESSION_END, s->id, NULL, "finished by the client", 0, NULL);
        s->finished = 1;
        for (tk_model *m = t->models; m; m = m->next)
            if (!strcmp(m->session, session_id)) m->closing = 1; /* ends once its queue is run */
        pthread_cond_broadcast(&t->cv);
    }
    pthread_mutex_unlock(&t->mu);
    if (!s) return chord_err_setc(err, CHORD_E_NOT_FOUND, "no session %.100s", session_id);
    return 0;
}

int tk_get_info(tk_service *t, const json_t *req, json_t **resp, chord_err *err) {
    const char *id = json_string_value(json_object_get(req, "model_id"));
    if (!id) return chord_err_set(err, "model_id: required");
    pthread_mutex_lock(&t->mu);
    tk_model *m = model_find(t, id);
    if (m)
        *resp =
            json_pack("{s:s,s:s,s:{s:s,s:s,s:s},s:b,s:i,s:s,s:{s:s}}", "type", "get_info",
                      "model_id", m->id, "model_data", "arch", m->arch, "model_name", m->base_model,
                      "tokenizer_id", m->base_dir, "is_lora", 1, "lora_rank", m->lora.rank,
                      "model_name", m->base_model, "optimizer_config", "type", "adamw");
    pthread_mutex_unlock(&t->mu);
    if (!m) return chord_err_setc(err, CHORD_E_NOT_FOUND, "model_id: no model %.100s", id);
    return *resp ? 0 : chord_err_oom(err);
}

int tk_capabilities(tk_service *t, json_t **resp, chord_err *err) {
    json_t *arr = json_array();
    pthread_mutex_lock(&t->mu);
    size_t i;
    json_t *v;
    json_array_foreach(t->bases_seen, i, v) {
        json_array_append_new(
            arr, json_pack("{s:O,s:b,s:b}", "model_name", v, "trainable", 1, "sampleable", 0));
    }
    pthread_mutex_unlock(&t->mu);
    *resp = arr ? json_pack("{s:o}", "supported_models", arr) : NULL;
    return *resp ? 0 : chord_err_oom(err);
}

/* lora_config -> the adapter: rank, seed, and which projections (train_attn: q, k, v, o;
 * train_mlp: gate, up, down; train_unembed: the unembedding, as a trained copy — chord's
 * train_embeddings, docs/tinker.md). */
static int read_lora(const json_t *req, tk_model *m, chord_err *err) {
    const json_t *lc = json_object_get(req, "lora_config");
    if (lc && !json_is_object(lc)) return chord_err_set(err, "lora_config: must be an object");
    int64_t rank = 32;
    int attn = 1, mlp = 1, unembed = 1;
    int64_t seed = -1;
    if (lc && (chord_json_get_int(lc, "lora_config", "rank", 0, 1, 1024, &rank, err) ||
               chord_json_get_bool(lc, "lora_config", "train_attn", 0, &attn, err) ||
               chord_json_get_bool(lc, "lora_config", "train_mlp", 0, &mlp, err) ||
               chord_json_get_bool(lc, "lora_config", "train_unembed", 0, &unembed, err) ||
               (json_is_integer(json_object_get(lc, "seed")) &&
                chord_json_get_int(lc, "lora_config", "seed", 0, 0, INT64_MAX, &seed, err))))
        return -1;
    if (!attn && !mlp)
        return chord_err_set(err, "lora_config: train_attn or train_mlp must be true (chord's "
                                  "adapters go on the projections)");
    m->lora.rank = (int)rank;
    m->lora.alpha = 32.0; /* Tinker's: alpha 32 whatever the rank */
    m->lora.targets = 0;
    if (attn)
        m->lora.targets |= (1u << MODEL_LORA_Q) | (1u << MODEL_LORA_K) | (1u << MODEL_LORA_V) |
                           (1u << MODEL_LORA_O);
    if (mlp)
        m->lora.targets |=
            (1u << MODEL_LORA_GATE) | (1u << MODEL_LORA_UP) | (1u << MODEL_LORA_DOWN);
    m->lora.train_embeddings = unembed;
    m->seed = seed >= 0 ? (uint64_t)seed : 0;
    const json_t *oc = json_object_get(req, "optimizer_config");
    const char *otype = json_string_value(json_object_get(oc, "type"));
    if (oc && otype && strcmp(otype, "adamw") != 0)
        return chord_err_set(err, "optimizer_config.type: \"%.40s\" is not supported (adamw)",
                             otype);
    return 0;
}

static int start_model(tk_service *t, tk_model *m, tk_op *op, char *request_id, char *model_id,
                       chord_err *err);

int tk_submit_create_model(tk_service *t, const json_t *req, char *request_id, char *model_id,
                           chord_err *err) {
    const char *session = json_string_value(json_object_get(req, "session_id"));
    const char *base = json_string_value(json_object_get(req, "base_model"));
    const json_t *seqj = json_object_get(req, "model_seq_id");
    if (!session) return chord_err_set(err, "session_id: required");
    if (!base || !*base) return chord_err_set(err, "base_model: required");
    if (!json_is_integer(seqj) || json_integer_value(seqj) < 0 ||
        json_integer_value(seqj) > 1000000)
        return chord_err_set(err, "model_seq_id: must be an integer >= 0");
    tk_model *m = calloc(1, sizeof *m);
    tk_op *op = calloc(1, sizeof *op);
    if (!m || !op) {
        free(m), free(op);
        return chord_err_oom(err);
    }
    m->t = t;
    snprintf(m->id, sizeof m->id, "%.100s:train:%lld", session,
             (long long)json_integer_value(seqj));
    snprintf(m->session, sizeof m->session, "%s", session);
    model_config mc;
    int rc = read_lora(req, m, err);
    if (rc == 0) rc = t->opt.resolve(t->opt.user, base, &m->base_dir, err);
    if (rc == 0) rc = model_config_load(m->base_dir, &mc, err);
    if (rc == 0 && !(m->base_model = strdup(base))) rc = chord_err_oom(err);
    if (rc == 0 && !(m->arch = strdup(mc.model_type[0] ? mc.model_type : "llama")))
        rc = chord_err_oom(err);
    if (rc != 0) {
        if (err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
        model_struct_free(m), free(op);
        return -1;
    }
    return start_model(t, m, op, request_id, model_id, err);
}

/* Registers m (its id, session and base filled) and starts its thread with its create (or
 * load) as operation 0; a retried create of the same model answers the first one's future. */
static int start_model(tk_service *t, tk_model *m, tk_op *op, char *request_id, char *model_id,
                       chord_err *err) {
    const char *session = m->session, *base = m->base_model;
    pthread_mutex_lock(&t->mu);
    collect_futures(t);
    tk_model *old = model_find(t, m->id);
    tk_session *s = session_find(t, session);
    if (!s || s->finished || t->stopping || old) {
        tk_future *f = old ? future_of_seq(t, old->id, 0) : NULL;
        if (f) snprintf(request_id, TK_ID_MAX, "%s", f->id); /* a retried create */
        pthread_mutex_unlock(&t->mu);
        model_struct_free(m), free(op);
        if (f) {
            snprintf(model_id, TK_ID_MAX, "%s", old->id);
            return 0;
        }
        if (old) return chord_err_setc(err, CHORD_E_CONFLICT, "model %s exists", old->id);
        if (t->stopping) return chord_err_setc(err, CHORD_E_UNAVAILABLE, "the server is stopping");
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "session_id: no open session %.100s",
                              session);
    }
    op->kind = OP_CREATE;
    op->seq = 0;
    op->f = future_new(t, m->id, 0, m->adapter_dir ? "load_weights" : "create_model");
    if (!op->f || pthread_create(&m->thread, NULL, model_main, m) != 0) {
        pthread_mutex_unlock(&t->mu);
        model_struct_free(m), free(op);
        return chord_err_setc(err, CHORD_E_INTERNAL, "cannot start the model's thread");
    }
    m->started = 1;
    queue_op(m, op);
    m->next = t->models;
    t->models = m;
    tk_rec *rec = record(t, REC_MODEL, m->id, m->session, base, m->lora.rank, NULL);
    if (rec) rec->model_kind = "training";
    int seen = 0;
    size_t i;
    json_t *v;
    json_array_foreach(t->bases_seen, i, v) seen |= !strcmp(json_string_value(v), base);
    if (!seen) json_array_append_new(t->bases_seen, json_string(base));
    snprintf(request_id, TK_ID_MAX, "%s", op->f->id);
    snprintf(model_id, TK_ID_MAX, "%s", m->id);
    pthread_cond_broadcast(&t->cv);
    pthread_mutex_unlock(&t->mu);
    LOG_INFO("tinker: model %s on %s%s%s", m->id, base, m->adapter_dir ? " from " : "",
             m->adapter_dir ? m->adapter_dir : "");
    return 0;
}

static int checkpoint_dir(tk_service *t, const char *path, char *out, char *model_id,
                          chord_err *err);

int tk_submit_load_weights(tk_service *t, const json_t *req, char *request_id, char *model_id,
                           chord_err *err) {
    const char *session = json_string_value(json_object_get(req, "session_id"));
    const char *path = json_string_value(json_object_get(req, "path"));
    const json_t *seqj = json_object_get(req, "model_seq_id");
    if (json_object_get(req, "model_id"))
        return chord_err_set(err, "load_weights into an existing training client (load_state) is "
                                  "not supported: create one from the state "
                                  "(create_training_client_from_state)");
    if (!session) return chord_err_set(err, "session_id: required");
    if (!path) return chord_err_set(err, "path: required");
    if (!json_is_integer(seqj) || json_integer_value(seqj) < 0 ||
        json_integer_value(seqj) > 1000000)
        return chord_err_set(err, "model_seq_id: must be an integer >= 0");
    tk_model *m = calloc(1, sizeof *m);
    tk_op *op = calloc(1, sizeof *op);
    char dir[4096], owner[TK_ID_MAX], base[4096];
    model_config mc;
    int rc = !m || !op ? chord_err_oom(err) : 0;
    if (rc == 0) rc = checkpoint_dir(t, path, dir, owner, err);
    if (rc == 0 && model_config_adapter_base(dir, base, sizeof base, err) != 1)
        rc = chord_err_set(err, "path: %.200s holds no LoRA adapter", path);
    if (rc == 0) rc = model_config_load(base, &mc, err);
    if (rc == 0) {
        m->t = t;
        snprintf(m->id, sizeof m->id, "%.100s:train:%lld", session,
                 (long long)json_integer_value(seqj));
        snprintf(m->session, sizeof m->session, "%s", session);
        m->load_optimizer = json_is_true(json_object_get(req, "optimizer"));
        const char *name = json_string_value(json_object_get(req, "base_model"));
        pthread_mutex_lock(&t->mu);
        tk_model *own = model_find(t, owner);
        if (!name && own) name = own->base_model;
        m->base_model = strdup(name ? name : base);
        pthread_mutex_unlock(&t->mu);
        m->base_dir = strdup(base);
        m->adapter_dir = strdup(dir);
        m->arch = strdup(mc.model_type[0] ? mc.model_type : "llama");
        if (!m->base_model || !m->base_dir || !m->adapter_dir || !m->arch) rc = chord_err_oom(err);
    }
    if (rc != 0) {
        if (err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
        model_struct_free(m), free(op);
        return -1;
    }
    return start_model(t, m, op, request_id, model_id, err);
}

/* Queues op for model_id at seq (t->mu NOT held); a retried (model, seq) answers the first
 * request's id. On failure op is freed. */
static int submit(tk_service *t, const char *model_id, int32_t seq, tk_op *op, char *request_id,
                  chord_err *err) {
    op->seq = seq;
    pthread_mutex_lock(&t->mu);
    collect_futures(t);
    tk_model *m = model_find(t, model_id);
    tk_future *f = m ? future_of_seq(t, m->id, seq) : NULL;
    int rc = 0;
    if (!m) {
        rc = chord_err_setc(err, CHORD_E_NOT_FOUND, "model_id: no model %.100s", model_id);
    } else if (f) {
        snprintf(request_id, TK_ID_MAX, "%s", f->id); /* the same request again */
    } else if (seq < 1) {
        rc = chord_err_set(err, "seq_id: must be >= 1, got %d", (int)seq);
    } else if (seq < m->next_seq) {
        rc = chord_err_setc(err, CHORD_E_CONFLICT, "seq_id: %d ran already (the model is at %d)",
                            (int)seq, (int)m->next_seq);
    } else if (m->closing || m->ended || t->stopping) {
        rc = chord_err_setc(err, CHORD_E_UNAVAILABLE, "model %.100s is closed", model_id);
    } else if (!(op->f = future_new(t, m->id, seq, op_name(op->kind)))) {
        rc = chord_err_oom(err);
    } else {
        enqueue(t, m, op, request_id);
        op = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    if (op) op_free(op);
    return rc;
}

int tk_submit_forward_backward(tk_service *t, tk_fb_request *fb, char *request_id, chord_err *err) {
    tk_op *op = calloc(1, sizeof *op);
    if (!op) {
        tk_fb_request_free(fb);
        return chord_err_oom(err);
    }
    op->kind = OP_FB;
    op->fb = *fb;
    memset(fb, 0, sizeof *fb);
    /* the loss and the datums are checked at the operation's turn: a request refused here
     * would leave a hole in the model's seq_ids, which the client counts whatever the answer */
    char model_id[TK_ID_MAX];
    snprintf(model_id, sizeof model_id, "%s", op->fb.model_id ? op->fb.model_id : "");
    return submit(t, model_id, op->fb.seq_id, op, request_id, err);
}

int tk_submit_json(tk_service *t, const char *kind, const json_t *req, char *request_id,
                   chord_err *err) {
    const char *model_id = json_string_value(json_object_get(req, "model_id"));
    const json_t *seq = json_object_get(req, "seq_id");
    if (!model_id) return chord_err_set(err, "model_id: required");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1 || json_integer_value(seq) > INT32_MAX)
        return chord_err_set(err, "seq_id: must be an integer >= 1");
    tk_op *op = calloc(1, sizeof *op);
    if (!op) return chord_err_oom(err);
    if (!strcmp(kind, "optim_step")) {
        op->kind = OP_OPTIM;
    } else if (!strcmp(kind, "save_weights")) {
        op->kind = OP_SAVE;
    } else if (!strcmp(kind, "save_weights_for_sampler")) {
        op->kind = OP_SAVE_SAMPLER;
    } else {
        free(op);
        return chord_err_setc(err, CHORD_E_INTERNAL, "unknown operation %s", kind);
    }
    op->json = json_deep_copy(req);
    if (!op->json) {
        free(op);
        return chord_err_oom(err);
    }
    return submit(t, model_id, (int32_t)json_integer_value(seq), op, request_id, err);
}

static tk_fb_output *fb_copy(const tk_fb_output *o) {
    tk_fb_output *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    size_t nd = o->n_data ? o->n_data : 1;
    c->n_data = o->n_data;
    c->logprobs = calloc(nd, sizeof *c->logprobs);
    c->elementwise_loss = calloc(nd, sizeof *c->elementwise_loss);
    c->lens = calloc(nd, sizeof *c->lens);
    c->metric_keys = calloc((size_t)o->n_metrics + 1, sizeof *c->metric_keys);
    c->metric_values = calloc((size_t)o->n_metrics + 1, sizeof *c->metric_values);
    int bad =
        !c->logprobs || !c->elementwise_loss || !c->lens || !c->metric_keys || !c->metric_values;
    for (size_t i = 0; !bad && i < o->n_data; i++) {
        size_t n = o->lens[i] ? o->lens[i] : 1;
        c->lens[i] = o->lens[i];
        c->logprobs[i] = malloc(n * sizeof(float));
        c->elementwise_loss[i] = malloc(n * sizeof(float));
        bad = !c->logprobs[i] || !c->elementwise_loss[i];
        if (!bad) {
            memcpy(c->logprobs[i], o->logprobs[i], o->lens[i] * sizeof(float));
            memcpy(c->elementwise_loss[i], o->elementwise_loss[i], o->lens[i] * sizeof(float));
        }
    }
    for (int i = 0; !bad && i < o->n_metrics; i++) {
        c->metric_keys[i] = strdup(o->metric_keys[i]);
        c->metric_values[i] = o->metric_values[i];
        c->n_metrics = i + 1;
        bad = !c->metric_keys[i];
    }
    if (bad) {
        tk_fb_output_free(c);
        free(c);
        return NULL;
    }
    return c;
}

static tk_sample_response *sample_copy(const tk_sample_response *r) {
    tk_sample_response *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->seqs = calloc(r->n_seqs ? r->n_seqs : 1, sizeof *c->seqs);
    int bad = !c->seqs;
    c->n_seqs = bad ? 0 : r->n_seqs;
    for (size_t i = 0; !bad && i < r->n_seqs; i++) {
        size_t n = r->seqs[i].n ? r->seqs[i].n : 1;
        c->seqs[i].stop_reason = r->seqs[i].stop_reason;
        c->seqs[i].n = r->seqs[i].n;
        c->seqs[i].tokens = malloc(n * sizeof(int32_t));
        c->seqs[i].logprobs = malloc(n * sizeof(float));
        bad = !c->seqs[i].tokens || !c->seqs[i].logprobs;
        if (!bad) {
            memcpy(c->seqs[i].tokens, r->seqs[i].tokens, r->seqs[i].n * sizeof(int32_t));
            memcpy(c->seqs[i].logprobs, r->seqs[i].logprobs, r->seqs[i].n * sizeof(float));
        }
    }
    if (!bad && r->prompt_logprobs) {
        c->prompt_logprobs = malloc(r->n_prompt * sizeof(float));
        bad = !c->prompt_logprobs;
        if (!bad) {
            memcpy(c->prompt_logprobs, r->prompt_logprobs, r->n_prompt * sizeof(float));
            c->n_prompt = r->n_prompt;
        }
    }
    if (bad) {
        tk_sample_response_free(c);
        free(c);
        return NULL;
    }
    return c;
}

/* A request no longer in memory: what the store says of it (store_tinker.h). A result is held in
 * memory only, so a request that finished before a restart (or more than TK_FUTURE_KEEP_S ago)
 * fails with a message saying so, and one a stop interrupted fails with the recovery's. */
static int retrieve_stored(tk_service *t, const char *request_id, tk_result *out, chord_err *err) {
    store_tk_future row;
    chord_err e = {0};
    int rc = -1;
    if (t->st) {
        pthread_mutex_lock(&t->st_mu);
        rc = store_tk_future_get(t->st, request_id, &row, &e);
        pthread_mutex_unlock(&t->st_mu);
    }
    if (rc != 0) {
        if (t->st && e.code != CHORD_E_NOT_FOUND) return chord_err_setc(err, e.code, "%s", e.msg);
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "request_id: no request %.100s", request_id);
    }
    char when[32] = "";
    if (row.finished_ms) store_time_rfc3339(row.finished_ms, when);
    out->state = TK_FAILED;
    out->user_error = 0;
    if (row.state == 2)
        rc = asprintf(&out->error, "%s (%s on %s)", row.error ? row.error : "failed", row.op,
                      row.model_id[0] ? row.model_id : "the server");
    else if (row.state == 1)
        rc =
            asprintf(&out->error,
                     "%s on %s finished at %s, but its result is no longer held (results are "
                     "kept in memory for %.0f s and do not outlive a restart)",
                     row.op, row.model_id[0] ? row.model_id : "the server", when, TK_FUTURE_KEEP_S);
    else /* pending in the store, unknown in memory: a stop interrupted it */
        rc = asprintf(&out->error, "interrupted: chordd stopped before %s on %s finished", row.op,
                      row.model_id[0] ? row.model_id : "the server");
    free(row.error);
    if (rc < 0) {
        out->error = NULL;
        return chord_err_oom(err);
    }
    return 0;
}

int tk_retrieve(tk_service *t, const char *request_id, double wait_s, tk_result *out,
                chord_err *err) {
    memset(out, 0, sizeof *out);
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    double end = (double)until.tv_sec + 1e-9 * (double)until.tv_nsec + (wait_s > 0 ? wait_s : 0);
    until.tv_sec = (time_t)end;
    until.tv_nsec = (long)((end - (double)until.tv_sec) * 1e9);
    pthread_mutex_lock(&t->mu);
    tk_future *f = future_find(t, request_id);
    while (f && f->state == TK_PENDING && !t->stopping) {
        if (pthread_cond_timedwait(&t->cv, &t->mu, &until) == ETIMEDOUT) break;
        f = future_find(t, request_id); /* collected meanwhile? */
    }
    int rc = 0;
    if (!f) {
        pthread_mutex_unlock(&t->mu);
        return retrieve_stored(t, request_id, out, err);
    } else {
        out->state = f->state;
        if (f->state == TK_DONE) {
            if (f->json) out->json = json_incref(f->json);
            if (f->fb && !(out->fb = fb_copy(f->fb))) rc = chord_err_oom(err);
            if (f->sample && !(out->sample = sample_copy(f->sample))) rc = chord_err_oom(err);
        } else if (f->state == TK_FAILED) {
            out->error = strdup(f->error ? f->error : "failed");
            out->user_error = f->user_error;
            if (!out->error) rc = chord_err_oom(err);
        }
    }
    pthread_mutex_unlock(&t->mu);
    if (rc != 0) tk_result_free(out);
    return rc;
}

void tk_result_free(tk_result *r) {
    if (!r) return;
    json_decref(r->json);
    if (r->fb) tk_fb_output_free(r->fb);
    free(r->fb);
    if (r->sample) tk_sample_response_free(r->sample);
    free(r->sample);
    free(r->error);
    memset(r, 0, sizeof *r);
}

/* ---- samplers ---------------------------------------------------------------------------------
 */

/* A new sampler (t->mu held): its thread, with its create op queued. Takes snap. */
static tk_model *sampler_start(tk_service *t, const char *id, const char *session,
                               const char *base_model, const char *base_dir,
                               const char *adapter_dir, const char *model_path, float *snap,
                               const model_lora_config *lc, const char *owner, chord_err *err) {
    tk_model *m = calloc(1, sizeof *m);
    tk_op *op = calloc(1, sizeof *op);
    if (m) {
        m->t = t;
        m->sampler = 1;
        snprintf(m->id, sizeof m->id, "%s", id);
        snprintf(m->session, sizeof m->session, "%s", session);
        snprintf(m->owner, sizeof m->owner, "%s", owner ? owner : "");
        m->base_model = strdup(base_model);
        m->base_dir = strdup(base_dir);
        m->arch = strdup("");
        m->adapter_dir = adapter_dir ? strdup(adapter_dir) : NULL;
        m->model_path = model_path ? strdup(model_path) : NULL;
        m->snap = snap;
        snap = NULL;
        if (lc) m->lora = *lc;
    }
    free(snap);
    if (!m || !op || !m->base_model || !m->base_dir || !m->arch ||
        (adapter_dir && !m->adapter_dir) || (model_path && !m->model_path) ||
        !(op->f = future_new(t, id, 0, "create_sampler"))) {
        model_struct_free(m);
        free(op);
        chord_err_oom(err);
        return NULL;
    }
    op->kind = OP_CREATE;
    if (pthread_create(&m->thread, NULL, model_main, m) != 0) {
        model_struct_free(m), free(op);
        chord_err_setc(err, CHORD_E_INTERNAL, "cannot start the sampler's thread");
        return NULL;
    }
    m->started = 1;
    queue_op(m, op);
    m->next = t->models;
    t->models = m;
    tk_rec *rec = record(t, REC_MODEL, m->id, session, base_model, m->lora.rank, NULL);
    if (rec) rec->model_kind = "sampler";
    pthread_cond_broadcast(&t->cv);
    return m;
}

/* save_weights_for_sampler without a name: a sampler on a copy of the adapter as it is now (the
 * training model's thread), "<session>:sample:<sampling_session_seq_id>". The model's older
 * samplers beyond TK_SAMPLERS_PER_MODEL close once their queued requests are run. */
static int snapshot_sampler(tk_model *m, const json_t *req, json_t **result, chord_err *err) {
    const json_t *sq = json_object_get(req, "sampling_session_seq_id");
    if (!json_is_integer(sq) || json_integer_value(sq) < 0)
        return chord_err_set(err, "path or sampling_session_seq_id: one is required");
    char id[TK_ID_MAX];
    snprintf(id, sizeof id, "%.100s:sample:%lld", m->session, (long long)json_integer_value(sq));
    size_t np = 0;
    model_lora_tensors(m->boot.m, NULL, &np);
    float *snap = malloc((np ? np : 1) * sizeof *snap);
    if (!snap) return chord_err_oom(err);
    if (model_lora_read_params(m->boot.m, snap, err) != 0) {
        free(snap);
        return -1;
    }
    model_lora_config lc = m->lora;
    tk_service *t = m->t;
    pthread_mutex_lock(&t->mu);
    int rc = 0;
    if (model_find(t, id)) { /* a retried save: the sampler exists */
        free(snap);
    } else if (!sampler_start(t, id, m->session, m->base_model, m->base_dir, NULL, NULL, snap, &lc,
                              m->id, err)) {
        rc = -1;
    } else {
        int kept = 0;
        for (tk_model *o = t->models; o; o = o->next) /* newest first */
            if (o->sampler && !strcmp(o->owner, m->id) && !o->closing &&
                ++kept > TK_SAMPLERS_PER_MODEL)
                o->closing = 1;
    }
    pthread_mutex_unlock(&t->mu);
    if (rc != 0) return -1;
    *result = json_pack("{s:s,s:s}", "sampling_session_id", id, "type", "save_weights_for_sampler");
    return *result ? 0 : chord_err_oom(err);
}

/* "tinker://<model_id>/<weights|sampler_weights>/<name>" -> its directory (out, 4096). */
static int checkpoint_dir(tk_service *t, const char *path, char *out, char *model_id,
                          chord_err *err) {
    static const char scheme[] = "tinker://";
    if (strncmp(path, scheme, sizeof scheme - 1) != 0)
        return chord_err_set(err, "model_path: \"%.100s\" is not a tinker:// path", path);
    const char *p = path + sizeof scheme - 1, *s1 = strchr(p, '/'),
               *s2 = s1 ? strchr(s1 + 1, '/') : NULL;
    if (!s1 || !s2 || strchr(s2 + 1, '/') || s1 == p || (size_t)(s1 - p) >= TK_ID_MAX)
        return chord_err_set(err, "model_path: \"%.100s\" is not tinker://<model_id>/<kind>/<name>",
                             path);
    char kind[32];
    snprintf(model_id, TK_ID_MAX, "%.*s", (int)(s1 - p), p);
    snprintf(kind, sizeof kind, "%.*s", (int)(s2 - s1 - 1), s1 + 1);
    for (const char *c = model_id; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
              *c == '_' || *c == ':' || *c == '-' || *c == '.') ||
            !strcmp(model_id, "..") || !strcmp(model_id, "."))
            return chord_err_set(err, "model_path: bad model id in \"%.100s\"", path);
    if ((strcmp(kind, "weights") && strcmp(kind, "sampler_weights")) || !name_ok(s2 + 1))
        return chord_err_set(err,
                             "model_path: \"%.100s\": the kind must be weights or "
                             "sampler_weights, then a checkpoint name",
                             path);
    snprintf(out, 4096, "%s/tinker/%s/%s/%s", t->data_dir, model_id, kind, s2 + 1);
    if (!chord_is_dir(out))
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "model_path: no checkpoint %.200s", path);
    return 0;
}

int tk_create_sampling_session(tk_service *t, const json_t *req, json_t **resp, chord_err *err) {
    const char *session = json_string_value(json_object_get(req, "session_id"));
    const char *path = json_string_value(json_object_get(req, "model_path"));
    const char *base = json_string_value(json_object_get(req, "base_model"));
    const json_t *sq = json_object_get(req, "sampling_session_seq_id");
    if (!session) return chord_err_set(err, "session_id: required");
    if (!json_is_integer(sq) || json_integer_value(sq) < 0)
        return chord_err_set(err, "sampling_session_seq_id: must be an integer >= 0");
    if (!path && !base) return chord_err_set(err, "model_path or base_model: one is required");
    char id[TK_ID_MAX], dir[4096] = "", owner[TK_ID_MAX] = "", *base_dir = NULL;
    snprintf(id, sizeof id, "%.100s:sample:%lld", session, (long long)json_integer_value(sq));
    char base_name[4200] = "";
    if (path) {
        if (checkpoint_dir(t, path, dir, owner, err) != 0) return -1;
        char b[4096]; /* the adapter's base (adapter_config.json) */
        if (model_config_adapter_base(dir, b, sizeof b, err) != 1)
            return chord_err_set(err, "model_path: %.200s holds no LoRA adapter", path);
        base_dir = strdup(b);
        snprintf(base_name, sizeof base_name, "%s", b);
    } else {
        if (t->opt.resolve(t->opt.user, base, &base_dir, err) != 0) {
            if (err->code == CHORD_E_NOT_FOUND) err->code = CHORD_E_INVALID;
            return -1;
        }
        snprintf(base_name, sizeof base_name, "%s", base);
    }
    if (!base_dir) return chord_err_oom(err);
    pthread_mutex_lock(&t->mu);
    tk_session *s = session_find(t, session);
    tk_model *own = owner[0] ? model_find(t, owner) : NULL;
    if (own) snprintf(base_name, sizeof base_name, "%s", own->base_model); /* its name */
    int rc = 0;
    if (!s || s->finished || t->stopping)
        rc = chord_err_setc(err, CHORD_E_NOT_FOUND, "session_id: no open session %.100s", session);
    else if (!model_find(t, id) && !sampler_start(t, id, session, base_name, base_dir,
                                                  path ? dir : NULL, path, NULL, NULL, NULL, err))
        rc = -1;
    pthread_mutex_unlock(&t->mu);
    free(base_dir);
    if (rc != 0) return -1;
    *resp = json_pack("{s:s,s:s}", "sampling_session_id", id, "type", "create_sampling_session");
    return *resp ? 0 : chord_err_oom(err);
}

int tk_get_sampler(tk_service *t, const char *sampler_id, json_t **resp, chord_err *err) {
    pthread_mutex_lock(&t->mu);
    tk_model *m = model_find(t, sampler_id);
    if (m && m->sampler)
        *resp = json_pack("{s:s,s:s,s:s?}", "sampler_id", m->id, "base_model", m->base_model,
                          "model_path", m->model_path);
    pthread_mutex_unlock(&t->mu);
    if (!m || !m->sampler)
        return chord_err_setc(err, CHORD_E_NOT_FOUND, "no sampler %.100s", sampler_id);
    return *resp ? 0 : chord_err_oom(err);
}

int tk_submit_sample(tk_service *t, const json_t *req, char *request_id, int *n_samples,
                     chord_err *err) {
    const char *sid = json_string_value(json_object_get(req, "sampling_session_id"));
    const json_t *n = json_object_get(req, "num_samples");
    if (!sid)
        return chord_err_set(err, "sampling_session_id: required (chord samples from a sampling "
                                  "session: base_model / model_path in asample are not supported)");
    if (n && (!json_is_integer(n) || json_integer_value(n) < 1 || json_integer_value(n) > 1024))
        return chord_err_set(err, "num_samples: must be an integer in [1, 1024]");
    *n_samples = n ? (int)json_integer_value(n) : 1;
    tk_op *op = calloc(1, sizeof *op);
    if (!op) return chord_err_oom(err);
    op->kind = OP_SAMPLE;
    if (!(op->json = json_deep_copy(req))) {
        free(op);
        return chord_err_oom(err);
    }
    pthread_mutex_lock(&t->mu);
    collect_futures(t);
    tk_model *m = model_find(t, sid);
    int rc = 0;
    if (!m || !m->sampler)
        rc = chord_err_setc(err, CHORD_E_NOT_FOUND, "sampling_session_id: no sampler %.100s", sid);
    else if (m->ended || t->stopping)
        rc = chord_err_setc(err, CHORD_E_UNAVAILABLE, "sampler %.100s is closed", sid);
    else if (!(op->f = future_new(t, sid, -1, "sample")))
        rc = chord_err_oom(err);
    if (rc == 0) {
        op->seq = ++m->fifo;
        enqueue(t, m, op, request_id);
        op = NULL;
    }
    pthread_mutex_unlock(&t->mu);
    if (op) op_free(op);
    return rc;
}

/* ---- training runs and checkpoints (RestClient) -------------------------------------------------
 * Read from DATA_DIR/tinker/<model_id>/<weights|sampler_weights>/<name> on disk (so they outlive
 * the process) and from the models in memory. */

static json_t *iso_time(time_t t) {
    char buf[32];
    store_time_rfc3339((int64_t)t * 1000, buf);
    return json_string(buf);
}

static int64_t dir_bytes(const char *dir) {
    int64_t sum = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[4400];
    struct stat st;
    while (d && (e = readdir(d)))
        if (e->d_name[0] != '.' && snprintf(path, sizeof path, "%s/%s", dir, e->d_name) > 0 &&
            stat(path, &st) == 0 && S_ISREG(st.st_mode))
            sum += (int64_t)st.st_size;
    if (d) closedir(d);
    return sum;
}

/* The checkpoints of run (one model id), newest first; *last / *last_sampler (may be NULL) get
 * the newest of each kind (new references, or JSON null). */
static json_t *run_checkpoints(tk_service *t, const char *run, json_t **last,
                               json_t **last_sampler) {
    json_t *arr = json_array();
    static const char *const kinds[] = {"weights", "sampler_weights"};
    time_t newest[2] = {0, 0};
    json_t *best[2] = {NULL, NULL};
    for (int k = 0; arr && k < 2; k++) {
        char dir[4200];
        snprintf(dir, sizeof dir, "%s/tinker/%s/%s", t->data_dir, run, kinds[k]);
        DIR *d = opendir(dir);
        struct dirent *e;
        while (d && (e = readdir(d))) {
            size_t n = strlen(e->d_name);
            if (!name_ok(e->d_name) || (n > 4 && !strcmp(e->d_name + n - 4, ".tmp"))) continue;
            char path[4500], tpath[TK_ID_MAX + 300], cid[300];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
            snprintf(tpath, sizeof tpath, "tinker://%s/%s/%s", run, kinds[k], e->d_name);
            snprintf(cid, sizeof cid, "%s/%s", kinds[k], e->d_name);
            json_t *c =
                json_pack("{s:s,s:s,s:o,s:s,s:I,s:b,s:n,s:n}", "checkpoint_id", cid,
                          "checkpoint_type", k ? "sampler" : "training", "time",
                          iso_time(st.st_mtime), "tinker_path", tpath, "size_bytes",
                          (json_int_t)dir_bytes(path), "public", 0, "user_metadata", "expires_at");
            if (!c) continue;
            if (!best[k] || st.st_mtime >= newest[k]) {
                json_decref(best[k]);
                best[k] = json_incref(c);
                newest[k] = st.st_mtime;
            }
            json_array_append_new(arr, c);
        }
        if (d) closedir(d);
    }
    if (last)
        *last = best[0] ? best[0] : json_null();
    else
        json_decref(best[0]);
    if (last_sampler)
        *last_sampler = best[1] ? best[1] : json_null();
    else
        json_decref(best[1]);
    return arr;
}

/* One training run: a model in memory, or a directory of checkpoints left by an earlier run. */
static json_t *run_json(tk_service *t, const char *run) {
    char base[4096] = "", probe[4400];
    int64_t rank = 0;
    int known = 0;
    pthread_mutex_lock(&t->mu);
    tk_model *m = model_find(t, run);
    if (m && !m->sampler) {
        snprintf(base, sizeof base, "%s", m->base_model);
        rank = m->lora.rank;
        known = 1;
    }
    pthread_mutex_unlock(&t->mu);
    json_t *last = NULL, *last_s = NULL, *cks = run_checkpoints(t, run, &last, &last_s);
    time_t when = time(NULL);
    if (!known) { /* its newest checkpoint says which base and rank */
        json_t *c = json_is_object(last) ? last : last_s;
        const char *tp = json_string_value(json_object_get(c, "tinker_path"));
        chord_err err = {0};
        char dir[4096], owner[TK_ID_MAX];
        if (!tp || checkpoint_dir(t, tp, dir, owner, &err) != 0 ||
            model_config_adapter_base(dir, base, sizeof base, &err) != 1) {
            json_decref(cks), json_decref(last), json_decref(last_s);
            return NULL;
        }
        snprintf(probe, sizeof probe, "%s/adapter_config.json", dir);
        json_t *ac = json_load_file(probe, 0, NULL);
        rank = json_integer_value(json_object_get(ac, "r"));
        json_decref(ac);
    }
    json_decref(cks);
    return json_pack("{s:s,s:s,s:s,s:b,s:b,s:I,s:o,s:o,s:o,s:n}", "training_run_id", run,
                     "base_model", base, "model_owner", "chord", "is_lora", 1, "corrupted", 0,
                     "lora_rank", (json_int_t)rank, "last_request_time", iso_time(when),
                     "last_checkpoint", last, "last_sampler_checkpoint", last_s, "user_metadata");
}

int tk_training_run(tk_service *t, const char *run, json_t **resp, chord_err *err) {
    *resp = NULL;
    for (const char *c = run; *c; c++)
        if (*c == '/' || !strcmp(run, "..") || !strcmp(run, "."))
            return chord_err_setc(err, CHORD_E_NOT_FOUND, "no training run %.100s", run);
    *resp = run_json(t, run);
    return *resp ? 0 : chord_err_setc(err, CHORD_E_NOT_FOUND, "no training run %.100s", run);
}

int tk_training_runs(tk_service *t, size_t offset, size_t limit, json_t **resp, chord_err *err) {
    json_t *ids = json_array(), *runs = json_array();
    if (!ids || !runs) {
        json_decref(ids), json_decref(runs);
        return chord_err_oom(err);
    }
    pthread_mutex_lock(&t->mu);
    for (tk_model *m = t->models; m; m = m->next)
        if (!m->sampler) json_array_append_new(ids, json_string(m->id));
    pthread_mutex_unlock(&t->mu);
    char dir[4200];
    snprintf(dir, sizeof dir, "%s/tinker", t->data_dir);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        int dup = 0;
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v) dup |= !strcmp(json_string_value(v), e->d_name);
        if (!dup) json_array_append_new(ids, json_string(e->d_name));
    }
    if (d) closedir(d);
    size_t total = 0, i;
    json_t *v;
    json_array_foreach(ids, i, v) {
        json_t *r = run_json(t, json_string_value(v));
        if (!r) continue;
        if (total >= offset && json_array_size(runs) < limit)
            json_array_append_new(runs, r);
        else
            json_decref(r);
        total++;
    }
    json_decref(ids);
    *resp =
        json_pack("{s:o,s:{s:I,s:I,s:I}}", "training_runs", runs, "cursor", "offset",
                  (json_int_t)offset, "limit", (json_int_t)limit, "total_count", (json_int_t)total);
    return *resp ? 0 : chord_err_oom(err);
}

int tk_run_checkpoints(tk_service *t, const char *run, json_t **resp, chord_err *err) {
    json_t *r = NULL;
    if (tk_training_run(t, run, &r, err) != 0) return -1;
    json_decref(r);
    *resp = json_pack("{s:o}", "checkpoints", run_checkpoints(t, run, NULL, NULL));
    return *resp ? 0 : chord_err_oom(err);
}
