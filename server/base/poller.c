/* poller.c — see poller.h. */
#include "server/base/poller.h"

#include <errno.h>
#include <string.h>
#include <time.h>

static void *poller_main(void *arg) {
    chord_poller *p = arg;
    for (;;) {
        pthread_mutex_lock(&p->mu);
        if (!p->wake && !atomic_load(&p->stop)) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)p->period_ms * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&p->cv, &p->mu, &until);
        }
        p->wake = 0;
        int stop = atomic_load(&p->stop);
        pthread_mutex_unlock(&p->mu);
        p->pass(p->user, stop);
        if (stop) return NULL;
    }
}

int chord_poller_start(chord_poller *p, int period_ms, void (*pass)(void *user, int stopping),
                       void *user, const char *what, chord_err *err) {
    p->pass = pass;
    p->user = user;
    p->period_ms = period_ms > 0 ? period_ms : 1000;
    p->wake = 0;
    atomic_store(&p->stop, 0);
    int rc = pthread_mutex_init(&p->mu, NULL);
    if (rc != 0)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: pthread_mutex_init: %s", what,
                              strerror(rc));
    if ((rc = pthread_cond_init(&p->cv, NULL)) != 0) {
        pthread_mutex_destroy(&p->mu);
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: pthread_cond_init: %s", what,
                              strerror(rc));
    }
    p->sync = 1;
    if ((rc = pthread_create(&p->thread, NULL, poller_main, p)) != 0)
        return chord_err_setc(err, CHORD_E_INTERNAL, "%s: cannot start the thread: %s", what,
                              strerror(rc));
    atomic_store(&p->started, 1);
    return 0;
}

void chord_poller_wake(chord_poller *p) {
    if (!atomic_load(&p->started)) return;
    pthread_mutex_lock(&p->mu);
    p->wake = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int chord_poller_stopping(chord_poller *p) {
    return atomic_load(&p->stop);
}

void chord_poller_stop(chord_poller *p) {
    if (atomic_load(&p->started)) {
        pthread_mutex_lock(&p->mu);
        atomic_store(&p->stop, 1);
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
        atomic_store(&p->started, 0); /* no wake from here on (mu goes next) */
        pthread_join(p->thread, NULL);
    }
    if (p->sync) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        p->sync = 0;
    }
}
