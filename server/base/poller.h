/* poller.h — a background thread that runs a pass when woken or every period_ms, whichever
 * comes first, and once more when stopped (the service's webhook and pipeline threads).
 *
 * States: not started (zeroed) -> started (chord_poller_start) -> stopped (chord_poller_stop,
 * which joins the thread; stopping a zeroed or failed poller is a no-op). chord_poller_wake may
 * be called from any thread at any time: it does nothing unless the poller is started (workers
 * may start before the poller and wake it). */
#ifndef CHORD_BASE_POLLER_H
#define CHORD_BASE_POLLER_H

#include <pthread.h>
#include <stdatomic.h>

#include "server/base/err.h"

typedef struct chord_poller {
    void (*pass)(void *user, int stopping); /* stopping: the last call, after a stop */
    void *user;
    int period_ms;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int wake;        /* (mu) */
    atomic_int stop; /* set under mu; read by a long pass (chord_poller_stopping) */
    int sync;       /* mu and cv initialised */
    pthread_t thread;
    atomic_int started;
} chord_poller;

/* Starts the thread. what names it in an error. Returns 0, or -1 with err set. */
int chord_poller_start(chord_poller *p, int period_ms, void (*pass)(void *user, int stopping),
                       void *user, const char *what, chord_err *err);
/* Runs a pass soon (at once if the thread is waiting). */
void chord_poller_wake(chord_poller *p);
/* Whether a stop was asked: a pass with a long batch of work checks it between items. */
int chord_poller_stopping(chord_poller *p);
/* The last pass (stopping = 1), then the thread ends and is joined. */
void chord_poller_stop(chord_poller *p);

#endif
