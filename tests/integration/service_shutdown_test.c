/* service_shutdown_test.c — the service's shutdown against requests in flight, as chordd's
 * transports make them: client threads call svc_job_create, svc_job_cancel, svc_rollout_create,
 * svc_health and svc_prometheus in a loop, and watchers read the training job's events
 * (opening and closing watches on its shared feed) while it trains; svc_shutdown runs in the middle
 * (SIGTERM), the threads go on calling after it returned (a transport answers what is in flight
 * until it stops), then they are joined (the transports stopped) and svc_close frees the service.
 *
 * What must hold: no use-after-free and no data race (run it in the Sanitize and TSan builds:
 * the defect it guards against — svc_shutdown freeing the jobs pool that request threads still
 * read — shows there as heap-use-after-free / data race reports); a call either succeeds or
 * fails cleanly (CHORD_E_UNAVAILABLE once the service stops; CHORD_E_CONFLICT for a cancel that
 * finds its job already finished); every call that starts after svc_shutdown returned and would
 * add work is refused with CHORD_E_UNAVAILABLE; the job that was running is back in the queue.
 *
 * Not a unit test of the jobs pool: the whole service with one CPU worker, on a temp data dir.
 * Run: build/tests/integration/service_shutdown_test [rounds] */
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/base/log.h"
#include "server/service.h"

#define N_CLIENTS 6
#define N_WATCHERS 3

static const char TINY_CONFIG[] =
    "{\"model_type\": \"qwen2\", \"architectures\": [\"Qwen2ForCausalLM\"], \"vocab_size\": 1024,"
    " \"hidden_size\": 32, \"intermediate_size\": 64, \"num_hidden_layers\": 1,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"max_position_embeddings\": 128,"
    " \"rope_theta\": 10000.0, \"rms_norm_eps\": 1e-6, \"tie_word_embeddings\": true}";

static atomic_int failures;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                        \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            atomic_fetch_add(&failures, 1);                                                        \
        }                                                                                          \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static json_t *job_doc(const char *prompts, int steps) {
    json_t *config = json_loads(TINY_CONFIG, 0, NULL);
    return json_pack("{s:s, s:{s:{s:o, s:i}}, s:{s:s}, s:s, s:{s:i, s:i}, s:{s:i}, s:{s:f},"
                     " s:i, s:i, s:i, s:{s:i}, s:i}",
                     "name", "shutdown-test", "model", "init", "config", config, "seed", 3, "data",
                     "prompts", prompts, "algorithm", "grpo", "grpo", "group_size", 2,
                     "prompts_per_step", 2, "sampling", "max_new_tokens", 4, "optimizer", "lr",
                     1e-3, "steps", steps, "seed", 7, "checkpoint_every", 0, "eval", "every", 0,
                     "micro_batch_tokens", 1024);
}

typedef struct world {
    svc *s;
    char prompts[64];
    char model[64];
    atomic_int stop;         /* the clients stop calling */
    atomic_int shutdown_ret; /* svc_shutdown returned */
    atomic_long calls, ok, unavailable;
} world;

/* A call's outcome: success, or a clean refusal. `adds_work`: refused once stopped. */
static void outcome(world *wd, const char *what, int rc, const chord_err *err, int started_after,
                    int adds_work, int conflict_ok) {
    atomic_fetch_add(&wd->calls, 1);
    if (rc == 0) {
        atomic_fetch_add(&wd->ok, 1);
        CHECK(!(started_after && adds_work), "%s succeeded after svc_shutdown returned", what);
        return;
    }
    if (err->code == CHORD_E_UNAVAILABLE) {
        atomic_fetch_add(&wd->unavailable, 1);
        return;
    }
    if (conflict_ok && err->code == CHORD_E_CONFLICT) return;
    CHECK(0, "%s: unexpected error %d: %s", what, err->code, err->msg);
}

static void *client(void *arg) {
    world *wd = arg;
    char last_job[64] = "";
    for (unsigned i = 0; !atomic_load(&wd->stop); i++) {
        int after = atomic_load(&wd->shutdown_ret);
        chord_err err = {0};
        json_t *out = NULL;
        switch (i % 5) {
        case 0: { /* a short job */
            json_t *doc = job_doc(wd->prompts, 2);
            int rc = svc_job_create(wd->s, doc, &out, &err);
            json_decref(doc);
            outcome(wd, "svc_job_create", rc, &err, after, 1, 0);
            if (rc == 0)
                snprintf(last_job, sizeof last_job, "%s",
                         json_string_value(json_object_get(out, "id")));
            break;
        }
        case 1: /* cancel it (queued, running or already finished) */
            if (!last_job[0]) break;
            outcome(wd, "svc_job_cancel", svc_job_cancel(wd->s, last_job, &out, &err), &err, after,
                    0, 1);
            break;
        case 2: { /* a rollout on the registered random-init model */
            json_t *doc = json_pack("{s:[s], s:s, s:i, s:i, s:i}", "prompts", "Compute 1+2.",
                                    "model", wd->model, "n", 1, "max_tokens", 2, "seed", 1);
            int rc = svc_rollout_create(wd->s, doc, &out, &err);
            json_decref(doc);
            outcome(wd, "svc_rollout_create", rc, &err, after, 1, 0);
            break;
        }
        case 3:
            svc_health(wd->s, &out);
            atomic_fetch_add(&wd->calls, 1);
            break;
        default: {
            char *text = NULL;
            size_t len = 0;
            outcome(wd, "svc_prometheus", svc_prometheus(wd->s, &text, &len, &err), &err, after, 0,
                    0);
            free(text);
            break;
        }
        }
        json_decref(out);
    }
    return NULL;
}

/* ---- watchers: the fan-out under the same stress ------------------------------------------ */

static void *encode_text(const svc_event *ev, chord_err *err) {
    char *text = json_dumps(ev->data, JSON_COMPACT);
    if (!text) chord_err_setc(err, CHORD_E_INTERNAL, "out of memory");
    return text;
}

static const svc_codec text_codec = {encode_text, free};

static void count_notify(void *user) {
    atomic_fetch_add((atomic_long *)user, 1);
}

typedef struct watcher {
    world *wd;
    char job[64];
    atomic_long notified;
    long events;
} watcher;

/* Watches the training job, reading what comes, closing and opening again now and then. */
static void *watch_client(void *arg) {
    watcher *wc = arg;
    world *wd = wc->wd;
    svc_watch *w = NULL;
    for (unsigned i = 0; !atomic_load(&wd->stop); i++) {
        chord_err err = {0};
        if (!w &&
            svc_watch_open(wd->s, wc->job, 0, &text_codec, count_notify, &wc->notified, &w, &err)) {
            CHECK(0, "svc_watch_open: %s", err.msg);
            break;
        }
        const void *enc = NULL;
        int final = 0, rc;
        while ((rc = svc_watch_next(w, &enc, &final, &err)) == 1) {
            CHECK(enc && *(const char *)enc == '{', "an event that is not JSON");
            wc->events++;
        }
        CHECK(rc == 0, "svc_watch_next: %s", err.msg);
        if (i % 50 == 49) {
            svc_watch_close(w);
            w = NULL;
        }
        sleep_ms(1);
    }
    svc_watch_close(w);
    return NULL;
}

static int upload(svc *s, char id[64]) {
    chord_err err = {0};
    svc_upload *up = NULL;
    json_t *ds = NULL;
    char line[128];
    int rc = svc_upload_begin(s, "p", "prompts", &up, &err);
    for (int i = 0; rc == 0 && i < 40; i++) {
        int a = (i * 7) % 50, b = (i * 13) % 50;
        int n = snprintf(line, sizeof line,
                         "{\"prompt\": \"Compute %d+%d.\", \"answer\": \"%d\"}\n", a, b, a + b);
        rc = svc_upload_write(up, line, (size_t)n, &err);
    }
    if (rc == 0)
        rc = svc_upload_commit(up, &ds, &err);
    else
        svc_upload_abort(up);
    CHECK(rc == 0, "upload: %s", err.msg);
    if (rc == 0) snprintf(id, 64, "%s", json_string_value(json_object_get(ds, "id")));
    json_decref(ds);
    return rc;
}

static int register_model(svc *s, char id[64]) {
    chord_err err = {0};
    json_t *m = NULL;
    json_t *doc = json_pack("{s:s, s:{s:o}}", "name", "tiny", "init", "config",
                            json_loads(TINY_CONFIG, 0, NULL));
    int rc = svc_model_register(s, doc, &m, &err);
    json_decref(doc);
    CHECK(rc == 0, "model: %s", err.msg);
    if (rc == 0) snprintf(id, 64, "%s", json_string_value(json_object_get(m, "id")));
    json_decref(m);
    return rc;
}

static const char *job_state(svc *s, const char *id) {
    static char state[32];
    chord_err err = {0};
    json_t *j = NULL;
    snprintf(state, sizeof state, "?");
    if (svc_job_get(s, id, &j, &err) == 0)
        snprintf(state, sizeof state, "%s", json_string_value(json_object_get(j, "state")));
    json_decref(j);
    return state;
}

static void one_round(int round) {
    char dir[] = "/tmp/chord-shutdown-XXXXXX";
    if (!mkdtemp(dir)) {
        CHECK(0, "mkdtemp failed");
        return;
    }
    world wd = {0};
    chord_err err = {0};
    svc_options opt = {.data_dir = dir, .device = "cpu", .threads = 1, .workers = 1};
    int rc = svc_open(&opt, &wd.s, &err);
    CHECK(rc == 0, "svc_open: %s", err.msg);
    if (rc) goto done;
    if (upload(wd.s, wd.prompts) || register_model(wd.s, wd.model)) goto close;

    /* a job that trains until the server stops: it must go back to the queue */
    json_t *doc = job_doc(wd.prompts, 1000000), *long_job = NULL;
    rc = svc_job_create(wd.s, doc, &long_job, &err);
    json_decref(doc);
    CHECK(rc == 0, "long job: %s", err.msg);
    if (rc) goto close;
    char long_id[64];
    snprintf(long_id, sizeof long_id, "%s", json_string_value(json_object_get(long_job, "id")));
    json_decref(long_job);
    double t0 = now_s();
    while (strcmp(job_state(wd.s, long_id), "running") != 0 && now_s() - t0 < 60)
        sleep_ms(10);
    CHECK(!strcmp(job_state(wd.s, long_id), "running"), "the long job never ran");

    pthread_t th[N_CLIENTS], wth[N_WATCHERS];
    watcher wc[N_WATCHERS];
    for (int i = 0; i < N_CLIENTS; i++)
        pthread_create(&th[i], NULL, client, &wd);
    for (int i = 0; i < N_WATCHERS; i++) {
        wc[i] = (watcher){.wd = &wd};
        snprintf(wc[i].job, sizeof wc[i].job, "%s", long_id);
        pthread_create(&wth[i], NULL, watch_client, &wc[i]);
    }
    sleep_ms(300 + 100 * round); /* requests flowing, the job training */
    double ts = now_s();
    svc_shutdown(wd.s); /* SIGTERM: transports still answer what is in flight */
    double shutdown_s = now_s() - ts;
    atomic_store(&wd.shutdown_ret, 1);
    CHECK(svc_stopping(wd.s), "svc_stopping after svc_shutdown");
    sleep_ms(200); /* calls keep coming until the transports stop */
    atomic_store(&wd.stop, 1);
    for (int i = 0; i < N_CLIENTS; i++)
        pthread_join(th[i], NULL);
    long events = 0;
    for (int i = 0; i < N_WATCHERS; i++) {
        pthread_join(wth[i], NULL);
        events += wc[i].events;
    }
    /* the transports stopped: nothing reaches the service any more */
    CHECK(!strcmp(job_state(wd.s, long_id), "queued"), "the running job is %s, not queued",
          job_state(wd.s, long_id));
    printf("round %d: %ld calls (%ld ok, %ld unavailable), %ld events watched, svc_shutdown "
           "took %.0f ms\n",
           round, atomic_load(&wd.calls), atomic_load(&wd.ok), atomic_load(&wd.unavailable), events,
           shutdown_s * 1e3);
    CHECK(events > 0, "the watchers saw no event");
    CHECK(atomic_load(&wd.unavailable) > 0, "no call was refused: the test missed the shutdown");
close:
    svc_close(wd.s);
done:
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 3;
    chord_log_set_level(CHORD_LOG_ERROR);
    for (int r = 0; r < rounds; r++)
        one_round(r);
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", atomic_load(&failures));
        return 1;
    }
    printf("ok\n");
    return 0;
}
