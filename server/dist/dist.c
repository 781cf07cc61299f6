/* dist.c — dist.h's single-process and MPI implementations (Open MPI; the MPI half is built
 * when CMake finds MPI: CHORD_HAVE_MPI).
 *
 * Every MPI collective goes through `arrive` first: each rank sends rank 0 a note holding its
 * collective count, rank 0 waits for every note until the deadline and then answers each rank.
 * Rank 0 thus knows which rank never came (dead or hung) and names it; the other ranks wait a
 * little longer than rank 0 so that, when a peer is missing, rank 0's error (naming it) is the
 * one the job ends with. The collective proper is then posted non-blocking and polled against
 * the same deadline, so nothing waits in MPI forever. Communication errors return
 * (MPI_ERRORS_RETURN on the job's communicator) and are reported with MPI's own text.
 *
 * Not here: NCCL (dist_nccl.c), what the trainer sums (trainer.c). */
#include "server/dist/dist.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/base/fileutil.h"

#ifdef CHORD_HAVE_MPI
#include <mpi.h>
#endif

enum { DIST_SINGLE, DIST_MPI };

struct dist_ctx {
    int kind;
    int rank, size, local_rank, local_size;
    double timeout_s;
    int64_t count; /* collectives run so far (every rank runs the same sequence) */
    int broken;    /* a collective failed (timed out, diverged, MPI or NCCL error): dist_broken */
    struct dist_nccl *nccl;
#ifdef CHORD_HAVE_MPI
    MPI_Comm comm;
    int mpi_initialized; /* by us: finalized by dist_close */
    size_t chunk, whole; /* elements per MPI call; ZeRO-1's in one call (mpi_allreduce) */
#endif
};

int dist_launched_by_mpi(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
        if (getenv(vars[i])) return 1;
    return 0;
}

int dist_have_mpi(void) {
#ifdef CHORD_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

int dist_broken(const dist_ctx *d) { return d && d->broken; }

int dist_rank(const dist_ctx *d) {
    return d ? d->rank : 0;
}
int dist_size(const dist_ctx *d) {
    return d ? d->size : 1;
}
int dist_local_rank(const dist_ctx *d) {
    return d ? d->local_rank : 0;
}
int dist_local_size(const dist_ctx *d) {
    return d ? d->local_size : 1;
}
const char *dist_kind(const dist_ctx *d) {
    return d && d->kind == DIST_MPI ? "mpi" : "single";
}

static int dist_oom(chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: out of memory");
}

/* an NCCL collective's result, marking the ranks out of step when it failed (dist_broken) */
static int nccl_done(dist_ctx *d, int rc) {
    if (rc != 0) d->broken = 1;
    return rc;
}

/* ---- MPI ---------------------------------------------------------------------------------- */
#ifdef CHORD_HAVE_MPI

enum { TAG_ARRIVE = 7101, TAG_GO = 7102, TAG_PING = 7103, TAG_PONG = 7104, TAG_COMMAND = 7105 };

static int mpi_error(dist_ctx *d, int rc, const char *what, chord_err *err) {
    d->broken = 1;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "code %d", rc);
    return chord_err_setc(err, CHORD_E_IO, "dist: %s: MPI error: %s", what, text);
}

static void pause_briefly(long *ns) {
    struct timespec ts = {0, *ns};
    nanosleep(&ts, NULL);
    if (*ns < 1000000) *ns *= 2; /* 1 µs doubling to 1 ms: cheap while peers are close */
}

/* Answers rank 0's liveness pings (name_silent) while this rank waits. */
static int answer_pings(dist_ctx *d, const char *what, chord_err *err) {
    for (;;) {
        int flag = 0;
        MPI_Status st;
        int rc = MPI_Iprobe(0, TAG_PING, d->comm, &flag, &st);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if (!flag) return 0;
        int64_t v = 0;
        rc = MPI_Recv(&v, 1, MPI_INT64_T, 0, TAG_PING, d->comm, MPI_STATUS_IGNORE);
        if (rc == MPI_SUCCESS) rc = MPI_Send(&v, 1, MPI_INT64_T, 0, TAG_PONG, d->comm);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
    }
}

/* Polls reqs[0..n) until all complete or the deadline passes, answering pings meanwhile on the
 * ranks other than 0. Returns 0 when all completed, 1 on timeout (done[i] says which did), -1 on
 * an MPI error (err set). */
static int wait_all_(dist_ctx *d, MPI_Request *reqs, int *done, int n, double deadline,
                    const char *what, chord_err *err) {
    long ns = 1000;
    for (;;) {
        if (d->rank != 0 && answer_pings(d, what, err) != 0) return -1;
        int left = 0;
        for (int i = 0; i < n; i++) {
            if (done[i]) continue;
            int flag = 0;
            int rc = MPI_Test(&reqs[i], &flag, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
            done[i] = flag;
            left += !flag;
        }
        if (left == 0) return 0;
        if (chord_now() > deadline) return 1;
        pause_briefly(&ns);
    }
}

/* wait_all_, marking the job's ranks out of step on a timeout or an error (dist_broken) */
static int wait_all(dist_ctx *d, MPI_Request *reqs, int *done, int n, double deadline,
                    const char *what, chord_err *err) {
    int w = wait_all_(d, reqs, done, n, deadline, what, err);
    if (w != 0) d->broken = 1;
    return w;
}

/* Every rank reaches collective number d->count (named what) before it runs; names the ranks
 * that did not within the timeout. */
static int arrive_(dist_ctx *d, const char *what, chord_err *err);
static int arrive(dist_ctx *d, const char *what, chord_err *err) {
    int rc = arrive_(d, what, err);
    if (rc != 0) d->broken = 1; /* a silent or diverged rank */
    return rc;
}

static int arrive_(dist_ctx *d, const char *what, chord_err *err) {
    int64_t mine = d->count;
    double t0 = chord_now();
    if (d->rank == 0) {
        int n = d->size - 1, rc = -1;
        MPI_Request *reqs = calloc((size_t)n, sizeof *reqs);
        int *done = calloc((size_t)n, sizeof *done);
        int64_t *theirs = calloc((size_t)n, sizeof *theirs);
        if (!reqs || !done || !theirs) {
            dist_oom(err);
            goto out;
        }
        for (int r = 1; r <= n; r++) {
            int mrc =
                MPI_Irecv(&theirs[r - 1], 1, MPI_INT64_T, r, TAG_ARRIVE, d->comm, &reqs[r - 1]);
            if (mrc != MPI_SUCCESS) {
                mpi_error(d, mrc, what, err);
                goto out;
            }
        }
        int w = wait_all(d, reqs, done, n, t0 + d->timeout_s, what, err);
        if (w < 0) goto out;
        if (w > 0) {
            char missing[256] = "";
            size_t len = 0;
            int count = 0;
            for (int i = 0; i < n; i++)
                if (!done[i] && len < sizeof missing - 16) {
                    len += (size_t)snprintf(missing + len, sizeof missing - len, "%s%d",
                                            count ? ", " : "", i + 1);
                    count++;
                }
            chord_err_setc(err, CHORD_E_IO,
                           "dist: rank%s %s did not reach the collective '%s' within %.0f s "
                           "(it died or hangs)",
                           count > 1 ? "s" : "", missing, what, d->timeout_s);
            goto out;
        }
        for (int i = 0; i < n; i++)
            if (theirs[i] != mine) {
                chord_err_setc(err, CHORD_E_INTERNAL,
                               "dist: rank %d is at collective #%lld while rank 0 is at #%lld "
                               "('%s'): the ranks diverged",
                               i + 1, (long long)theirs[i], (long long)mine, what);
                goto out;
            }
        for (int r = 1; r <= n; r++) {
            int mrc = MPI_Isend(&mine, 1, MPI_INT64_T, r, TAG_GO, d->comm, &reqs[r - 1]);
            if (mrc != MPI_SUCCESS) {
                mpi_error(d, mrc, what, err);
                goto out;
            }
            done[r - 1] = 0;
        }
        w = wait_all(d, reqs, done, n, chord_now() + d->timeout_s, what, err);
        if (w > 0)
            chord_err_setc(err, CHORD_E_IO, "dist: '%s': a rank stopped receiving within %.0f s",
                           what, d->timeout_s);
        rc = w == 0 ? 0 : -1;
    out:
        free(reqs);
        free(done);
        free(theirs);
        return rc;
    }
    MPI_Request reqs[2];
    int done[2] = {0, 0};
    int64_t go = -1;
    int mrc = MPI_Isend(&mine, 1, MPI_INT64_T, 0, TAG_ARRIVE, d->comm, &reqs[0]);
    if (mrc == MPI_SUCCESS) mrc = MPI_Irecv(&go, 1, MPI_INT64_T, 0, TAG_GO, d->comm, &reqs[1]);
    if (mrc != MPI_SUCCESS) return mpi_error(d, mrc, what, err);
    /* longer than rank 0's wait, so that rank 0 names a missing peer first */
    int w = wait_all(d, reqs, done, 2, t0 + 1.5 * d->timeout_s + 5.0, what, err);
    if (w < 0) return -1;
    if (w > 0)
        return chord_err_setc(err, CHORD_E_IO,
                              "dist: rank 0 did not answer at the collective '%s' within %.0f s "
                              "(it died or hangs)",
                              what, 1.5 * d->timeout_s + 5.0);
    if (go != mine)
        return chord_err_setc(err, CHORD_E_INTERNAL,
                              "dist: rank %d is at collective #%lld while rank 0 is at #%lld "
                              "('%s'): the ranks diverged",
                              d->rank, (long long)mine, (long long)go, what);
    return 0;
}

/* Rank 0, after a collective timed out: pings every other rank (a rank waiting in a collective
 * answers from its polling loop) and names those that stay silent. Always returns -1. */
static int name_silent(dist_ctx *d, const char *what, chord_err *err) {
    int n = d->size - 1;
    MPI_Request *reqs = calloc(2 * (size_t)n, sizeof *reqs);
    int *done = calloc(2 * (size_t)n, sizeof *done);
    int64_t *pong = calloc((size_t)n, sizeof *pong), ping = d->count;
    if (!reqs || !done || !pong) {
        free(reqs);
        free(done);
        free(pong);
        return dist_oom(err);
    }
    int rc = MPI_SUCCESS;
    for (int r = 1; r <= n && rc == MPI_SUCCESS; r++) {
        rc = MPI_Isend(&ping, 1, MPI_INT64_T, r, TAG_PING, d->comm, &reqs[2 * (r - 1)]);
        if (rc == MPI_SUCCESS)
            rc = MPI_Irecv(&pong[r - 1], 1, MPI_INT64_T, r, TAG_PONG, d->comm,
                           &reqs[2 * (r - 1) + 1]);
    }
    if (rc != MPI_SUCCESS) {
        mpi_error(d, rc, what, err);
    } else {
        double wait_s = d->timeout_s < 10.0 ? d->timeout_s : 10.0;
        int w = wait_all(d, reqs, done, 2 * n, chord_now() + wait_s, what, err);
        if (w >= 0) {
            char silent[256] = "";
            size_t len = 0;
            int count = 0;
            for (int i = 0; i < n; i++)
                if (!done[2 * i + 1] && len < sizeof silent - 16) {
                    len += (size_t)snprintf(silent + len, sizeof silent - len, "%s%d",
                                            count ? ", " : "", i + 1);
                    count++;
                }
            if (count > 0)
                chord_err_setc(err, CHORD_E_IO,
                               "dist: rank%s %s stopped answering during the collective '%s' "
                               "(not done within %.0f s: it died or hangs)",
                               count > 1 ? "s" : "", silent, what, d->timeout_s);
            else
                chord_err_setc(err, CHORD_E_IO,
                               "dist: the collective '%s' did not complete within %.0f s, though "
                               "every rank answers",
                               what, d->timeout_s);
        }
    }
    /* the job ends now (dist_abort): the pending requests are left to it */
    free(reqs);
    free(done);
    free(pong);
    return -1;
}

/* Waits for one posted collective against the watchdog (rank 0 then names the silent ranks; the
 * others wait longer, so that rank 0's error is the one the job ends with). */
static int finish(dist_ctx *d, MPI_Request *req, const char *what, chord_err *err) {
    int done = 0;
    double limit = d->rank == 0 ? d->timeout_s : 1.5 * d->timeout_s + 5.0;
    int w = wait_all(d, req, &done, 1, chord_now() + limit, what, err);
    if (w > 0 && d->rank == 0) return name_silent(d, what, err);
    if (w > 0)
        return chord_err_setc(err, CHORD_E_IO,
                              "dist: the collective '%s' did not complete within %.0f s on rank "
                              "%d (rank 0 or another peer died or hangs)",
                              what, limit, d->rank);
    return w;
}

/* MPI counts are int: large buffers go in chunks of d->chunk elements (2^30), and ZeRO-1's
 * collectives, whose displacements are int too, slice by slice above d->whole (INT_MAX)
 * elements. The environment variable CHORD_DIST_MAX_COUNT (tests only: integration.mpi
 * [zero_split]) lowers both, so that the paths of buffers over 2^31 floats run on a tiny
 * model. */
#define DIST_CHUNK_MAX ((size_t)1 << 30)

static int mpi_allreduce(dist_ctx *d, void *buf, size_t n, size_t elem, MPI_Datatype type,
                         MPI_Op op, const char *what, chord_err *err) {
    if (arrive(d, what, err) != 0) return -1;
    for (size_t off = 0; off < n; off += d->chunk) {
        size_t k = n - off < d->chunk ? n - off : d->chunk;
        MPI_Request req;
        int rc =
            MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * elem, (int)k, type, op, d->comm, &req);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if (finish(d, &req, what, err) != 0) return -1;
    }
    return 0;
}

/* ZeRO-1's collectives. MPI counts and displacements are int: a buffer of up to INT_MAX floats
 * goes in one MPI_Ireduce_scatter / MPI_Iallgatherv / MPI_Igatherv; a larger one slice by slice
 * (one MPI_Ireduce / MPI_Ibcast per rank and chunk, point-to-point to the root for a gather). */

static int slices_of(dist_ctx *d, size_t n, int **counts, int **displs, chord_err *err) {
    *counts = calloc((size_t)d->size, sizeof **counts);
    *displs = calloc((size_t)d->size, sizeof **displs);
    if (!*counts || !*displs) {
        free(*counts);
        free(*displs);
        return dist_oom(err);
    }
    for (int r = 0; r < d->size; r++) {
        size_t lo, hi;
        dist_slice(d, n, r, &lo, &hi);
        (*counts)[r] = (int)(hi - lo);
        (*displs)[r] = (int)lo;
    }
    return 0;
}

static int mpi_reduce_scatter(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err) {
    if (arrive(d, what, err) != 0) return -1;
    size_t lo, hi;
    dist_slice(d, n, d->rank, &lo, &hi);
    MPI_Request req;
    if (n <= d->whole) {
        int *counts, *displs, rc = -1;
        if (slices_of(d, n, &counts, &displs, err) != 0) return -1;
        float *mine = malloc((hi > lo ? hi - lo : 1) * sizeof *mine);
        if (!mine) {
            dist_oom(err);
        } else {
            int mrc = MPI_Ireduce_scatter(buf, mine, counts, MPI_FLOAT, MPI_SUM, d->comm, &req);
            if (mrc != MPI_SUCCESS) {
                mpi_error(d, mrc, what, err);
            } else if (finish(d, &req, what, err) == 0) {
                memcpy(buf + lo, mine, (hi - lo) * sizeof *mine);
                rc = 0;
            }
        }
        free(mine);
        free(counts);
        free(displs);
        return rc;
    }
    for (int r = 0; r < d->size; r++) {
        size_t rlo, rhi;
        dist_slice(d, n, r, &rlo, &rhi);
        for (size_t off = rlo; off < rhi; off += d->chunk) {
            int k = (int)(rhi - off < d->chunk ? rhi - off : d->chunk);
            int mrc = MPI_Ireduce(r == d->rank ? MPI_IN_PLACE : buf + off, buf + off, k, MPI_FLOAT,
                                  MPI_SUM, r, d->comm, &req);
            if (mrc != MPI_SUCCESS) return mpi_error(d, mrc, what, err);
            if (finish(d, &req, what, err) != 0) return -1;
        }
    }
    return 0;
}

static int mpi_allgather(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err) {
    if (arrive(d, what, err) != 0) return -1;
    MPI_Request req;
    if (n <= d->whole) {
        int *counts, *displs, rc = -1;
        if (slices_of(d, n, &counts, &displs, err) != 0) return -1;
        int mrc = MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs,
                                  MPI_FLOAT, d->comm, &req);
        if (mrc != MPI_SUCCESS)
            mpi_error(d, mrc, what, err);
        else
            rc = finish(d, &req, what, err);
        free(counts);
        free(displs);
        return rc;
    }
    for (int r = 0; r < d->size; r++) {
        size_t rlo, rhi;
        dist_slice(d, n, r, &rlo, &rhi);
        for (size_t off = rlo; off < rhi; off += d->chunk) {
            int k = (int)(rhi - off < d->chunk ? rhi - off : d->chunk);
            int mrc = MPI_Ibcast(buf + off, k, MPI_FLOAT, r, d->comm, &req);
            if (mrc != MPI_SUCCESS) return mpi_error(d, mrc, what, err);
            if (finish(d, &req, what, err) != 0) return -1;
        }
    }
    return 0;
}

enum { TAG_SLICE = 7105 };

static int mpi_gather_slices(dist_ctx *d, const float *mine, size_t n, float *all, int root,
                             const char *what, chord_err *err) {
    if (arrive(d, what, err) != 0) return -1;
    size_t lo, hi;
    dist_slice(d, n, d->rank, &lo, &hi);
    MPI_Request req;
    if (n <= d->whole) {
        int *counts, *displs, rc = -1;
        if (slices_of(d, n, &counts, &displs, err) != 0) return -1;
        int mrc = MPI_Igatherv(mine, (int)(hi - lo), MPI_FLOAT, all, counts, displs, MPI_FLOAT,
                               root, d->comm, &req);
        if (mrc != MPI_SUCCESS)
            mpi_error(d, mrc, what, err);
        else
            rc = finish(d, &req, what, err);
        free(counts);
        free(displs);
        return rc;
    }
    if (d->rank == root) memcpy(all + lo, mine, (hi - lo) * sizeof *mine);
    for (int r = 0; r < d->size; r++) {
        if (r == root || (d->rank != root && d->rank != r)) continue;
        size_t rlo, rhi;
        dist_slice(d, n, r, &rlo, &rhi);
        for (size_t off = rlo; off < rhi; off += d->chunk) {
            int k = (int)(rhi - off < d->chunk ? rhi - off : d->chunk);
            int mrc =
                d->rank == root
                    ? MPI_Irecv(all + off, k, MPI_FLOAT, r, TAG_SLICE, d->comm, &req)
                    : MPI_Isend(mine + (off - rlo), k, MPI_FLOAT, root, TAG_SLICE, d->comm, &req);
            if (mrc != MPI_SUCCESS) return mpi_error(d, mrc, what, err);
            if (finish(d, &req, what, err) != 0) return -1;
        }
    }
    return 0;
}

static int mpi_open(dist_ctx *d, chord_err *err) {
    int inited = 0, provided = 0;
    int rc = MPI_Initialized(&inited);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, "MPI_Initialized", err);
    if (!inited) {
        /* one thread calls MPI at a time, not always the same one: `chordd serve`'s rank 0
         * opens and closes on its main thread and runs the jobs' collectives on its worker
         * thread (OpenMP threads compute between the calls) */
        rc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
        if (rc != MPI_SUCCESS) return chord_err_setc(err, CHORD_E_IO, "dist: MPI_Init failed");
        d->mpi_initialized = 1;
        if (provided < MPI_THREAD_SERIALIZED)
            return chord_err_setc(err, CHORD_E_IO,
                                  "dist: this MPI library gives thread level %d, chordd needs "
                                  "MPI_THREAD_SERIALIZED (%d)",
                                  provided, MPI_THREAD_SERIALIZED);
    }
    rc = MPI_Comm_dup(MPI_COMM_WORLD, &d->comm);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_set_errhandler(d->comm, MPI_ERRORS_RETURN);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(d->comm, &d->rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(d->comm, &d->size);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, "the job's communicator", err);
    MPI_Comm node;
    rc = MPI_Comm_split_type(d->comm, MPI_COMM_TYPE_SHARED, d->rank, MPI_INFO_NULL, &node);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_rank(node, &d->local_rank);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_size(node, &d->local_size);
    if (rc == MPI_SUCCESS) rc = MPI_Comm_free(&node);
    if (rc != MPI_SUCCESS) return mpi_error(d, rc, "the host's ranks", err);
    d->chunk = DIST_CHUNK_MAX;
    d->whole = (size_t)INT_MAX;
    const char *cap = getenv("CHORD_DIST_MAX_COUNT");
    if (cap && *cap) {
        char *end = NULL;
        long long v = strtoll(cap, &end, 10);
        if (*end || v < 1 || v > INT_MAX)
            return chord_err_set(
                err, "CHORD_DIST_MAX_COUNT: must be an integer in [1, %d], got '%s'", INT_MAX, cap);
        d->whole = (size_t)v;
        if (d->chunk > d->whole) d->chunk = d->whole;
    }
    d->kind = DIST_MPI;
    return 0;
}

#endif /* CHORD_HAVE_MPI */

/* ---- the interface ------------------------------------------------------------------------ */

int dist_open(double timeout_s, dist_ctx **out, chord_err *err) {
    *out = NULL;
    if (!(timeout_s > 0))
        return chord_err_set(err, "dist: the collective timeout must be > 0 s (got %g)", timeout_s);
    dist_ctx *d = calloc(1, sizeof *d);
    if (!d) return dist_oom(err);
    d->kind = DIST_SINGLE;
    d->size = d->local_size = 1;
    d->timeout_s = timeout_s;
    if (dist_launched_by_mpi()) {
#ifdef CHORD_HAVE_MPI
        if (mpi_open(d, err) != 0) {
            free(d);
            return -1;
        }
#else
        free(d);
        return chord_err_set(err, "launched by mpirun, but this chordd was built without MPI "
                                  "(install libopenmpi-dev and rebuild: docs/distributed.md)");
#endif
    }
    *out = d;
    return 0;
}

int dist_close(dist_ctx *d, chord_err *err) {
    if (!d) return 0;
    int rc = 0;
    if (d->nccl) dist_nccl_close(d->nccl);
#ifdef CHORD_HAVE_MPI
    if (d->kind == DIST_MPI) {
        rc = dist_barrier(d, "the end of the job", err);
        if (rc == 0) {
            int mrc = MPI_Comm_free(&d->comm);
            if (mrc != MPI_SUCCESS) rc = mpi_error(d, mrc, "MPI_Comm_free", err);
        }
        if (rc == 0 && d->mpi_initialized) {
            int mrc = MPI_Finalize();
            if (mrc != MPI_SUCCESS) rc = mpi_error(d, mrc, "MPI_Finalize", err);
        }
    }
#else
    (void)err;
#endif
    free(d);
    return rc;
}

void dist_abort(dist_ctx *d, int code) {
    fflush(stdout);
    fflush(stderr);
#ifdef CHORD_HAVE_MPI
    if (d && d->kind == DIST_MPI) MPI_Abort(MPI_COMM_WORLD, code); /* does not return */
#else
    (void)d;
#endif
    _exit(code);
}

int dist_allreduce_sum_f32(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_allreduce(d, buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM, what, err);
#else
    (void)buf, (void)n, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_allreduce_sum_f64(dist_ctx *d, double *buf, size_t n, const char *what, chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_allreduce(d, buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM, what, err);
#else
    (void)buf, (void)n, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_allreduce_max_i64(dist_ctx *d, int64_t *buf, size_t n, const char *what, chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_allreduce(d, buf, n, sizeof *buf, MPI_INT64_T, MPI_MAX, what, err);
#else
    (void)buf, (void)n, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_broadcast(dist_ctx *d, void *buf, size_t bytes, int root, const char *what,
                   chord_err *err) {
    if (!d || d->size == 1) return 0;
    if (root < 0 || root >= d->size)
        return chord_err_set(err, "dist: broadcast from rank %d of %d", root, d->size);
    d->count++;
#ifdef CHORD_HAVE_MPI
    if (arrive(d, what, err) != 0) return -1;
    for (size_t off = 0; off < bytes; off += d->chunk) {
        size_t k = bytes - off < d->chunk ? bytes - off : d->chunk;
        MPI_Request req;
        int rc = MPI_Ibcast((char *)buf + off, (int)k, MPI_BYTE, root, d->comm, &req);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, what, err);
        if (finish(d, &req, what, err) != 0) return -1;
    }
    return 0;
#else
    (void)buf, (void)bytes, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_send_command(dist_ctx *d, const char *msg, size_t len, chord_err *err) {
    if (!d || d->size == 1) return 0;
    if (d->rank != 0) return chord_err_set(err, "dist: only rank 0 sends commands");
    if (len > INT_MAX) return chord_err_set(err, "dist: a command of %zu bytes", len);
#ifdef CHORD_HAVE_MPI
    const int n = d->size - 1;
    MPI_Request *reqs = calloc((size_t)n, sizeof *reqs);
    int *done = calloc((size_t)n, sizeof *done);
    int rc = -1;
    if (!reqs || !done) {
        dist_oom(err);
        goto out;
    }
    for (int r = 1; r <= n; r++) {
        int mrc = MPI_Isend(msg, (int)len, MPI_BYTE, r, TAG_COMMAND, d->comm, &reqs[r - 1]);
        if (mrc != MPI_SUCCESS) {
            mpi_error(d, mrc, "a command", err);
            goto out;
        }
    }
    int w = wait_all(d, reqs, done, n, chord_now() + d->timeout_s, "a command", err);
    if (w > 0) {
        int first = 0;
        while (first < n && done[first]) first++;
        chord_err_setc(err, CHORD_E_IO,
                       "dist: rank %d did not take rank 0's command within %.0f s (it died or "
                       "hangs)",
                       first + 1, d->timeout_s);
    }
    rc = w == 0 ? 0 : -1;
out:
    free(reqs);
    free(done);
    return rc;
#else
    (void)msg;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_wait_command(dist_ctx *d, char **msg, size_t *len, chord_err *err) {
    *msg = NULL;
    *len = 0;
    if (!d || d->size == 1 || d->rank == 0)
        return chord_err_set(err, "dist: only ranks other than 0 wait for commands");
#ifdef CHORD_HAVE_MPI
    long ns = 1000;
    for (;;) {
        int flag = 0;
        MPI_Status st;
        int rc = MPI_Iprobe(0, TAG_COMMAND, d->comm, &flag, &st);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, "waiting for a command", err);
        if (flag) {
            int count = 0;
            rc = MPI_Get_count(&st, MPI_BYTE, &count);
            if (rc != MPI_SUCCESS) return mpi_error(d, rc, "a command", err);
            char *buf = malloc((size_t)count + 1);
            if (!buf) return dist_oom(err);
            rc = MPI_Recv(buf, count, MPI_BYTE, 0, TAG_COMMAND, d->comm, MPI_STATUS_IGNORE);
            if (rc != MPI_SUCCESS) {
                free(buf);
                return mpi_error(d, rc, "a command", err);
            }
            buf[count] = '\0';
            *msg = buf;
            *len = (size_t)count;
            return 0;
        }
        /* idle: no deadline (rank 0 may serve for weeks between jobs), a few wake-ups a second
         * at most; a rank 0 that dies ends the whole MPI job (mpirun) */
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 50000000) ns *= 2;
    }
#else
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_barrier(dist_ctx *d, const char *what, chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return arrive(d, what, err); /* every rank checked in with rank 0, and heard back */
#else
    (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_gather_bytes(dist_ctx *d, const void *buf, size_t n, int root, char **out, size_t *lens,
                      const char *what, chord_err *err) {
    *out = NULL;
    if (!d || d->size == 1) {
        if (!(*out = malloc(n ? n : 1))) return dist_oom(err);
        if (n) memcpy(*out, buf, n);
        lens[0] = n;
        return 0;
    }
    if (root < 0 || root >= d->size)
        return chord_err_set(err, "dist: gather to rank %d of %d", root, d->size);
    if (n > INT_MAX) return chord_err_set(err, "dist: %s: %zu bytes from one rank", what, n);
    d->count++;
#ifdef CHORD_HAVE_MPI
    if (arrive(d, what, err) != 0) return -1;
    int mine = (int)n, rc = -1;
    int *counts = d->rank == root ? calloc((size_t)d->size, sizeof *counts) : NULL;
    int *displs = d->rank == root ? calloc((size_t)d->size, sizeof *displs) : NULL;
    char *all = NULL;
    if (d->rank == root && (!counts || !displs)) {
        dist_oom(err);
        goto done;
    }
    MPI_Request req;
    int mrc = MPI_Igather(&mine, 1, MPI_INT, counts, 1, MPI_INT, root, d->comm, &req);
    if (mrc != MPI_SUCCESS) {
        mpi_error(d, mrc, what, err);
        goto done;
    }
    if (finish(d, &req, what, err) != 0) goto done;
    size_t total = 0;
    if (d->rank == root) {
        for (int r = 0; r < d->size; r++) {
            if (total > (size_t)INT_MAX - (size_t)counts[r]) {
                chord_err_set(err, "dist: %s: over 2 GiB in all", what);
                goto done; /* the others wait in the gather: the caller aborts the job */
            }
            displs[r] = (int)total;
            lens[r] = (size_t)counts[r];
            total += (size_t)counts[r];
        }
        if (!(all = malloc(total ? total : 1))) {
            dist_oom(err);
            goto done;
        }
    }
    mrc = MPI_Igatherv(buf, mine, MPI_BYTE, all, counts, displs, MPI_BYTE, root, d->comm, &req);
    if (mrc != MPI_SUCCESS) {
        mpi_error(d, mrc, what, err);
        goto done;
    }
    if (finish(d, &req, what, err) != 0) goto done;
    *out = all;
    all = NULL;
    rc = 0;
done:
    free(all);
    free(counts);
    free(displs);
    return rc;
#else
    (void)buf, (void)lens;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_allreduce_sum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, const char *what,
                                  chord_err *err) {
    if (!d || d->size == 1 || n == 0) return 0;
    if (d->nccl) return nccl_done(d, dist_nccl_allreduce_sum_f32(d->nccl, dev, n, what, err));
    if (ops->device_index < 0) /* the CPU backend: device memory is host memory */
        return dist_allreduce_sum_f32(d, dev, n, what, err);
    float *host = malloc(n * sizeof *host);
    if (!host) return dist_oom(err);
    int rc = -1;
    if (ops_to_host(ops, host, dev, n * sizeof *host) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "dist: %s: %s", what, ops->last_error);
        goto done;
    }
    if (dist_allreduce_sum_f32(d, host, n, what, err) != 0) goto done;
    if (ops_to_device(ops, dev, host, n * sizeof *host) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "dist: %s: %s", what, ops->last_error);
        goto done;
    }
    rc = 0;
done:
    free(host);
    return rc;
}

void dist_slice(const dist_ctx *d, size_t n, int r, size_t *lo, size_t *hi) {
    const size_t R = (size_t)dist_size(d), base = n / R, extra = n % R, ur = (size_t)r;
    *lo = ur * base + (ur < extra ? ur : extra);
    *hi = *lo + base + (ur < extra ? 1 : 0);
}

int dist_reduce_scatter_sum_f32(dist_ctx *d, float *buf, size_t n, const char *what,
                                chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_reduce_scatter(d, buf, n, what, err);
#else
    (void)buf, (void)n, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_allgather_f32(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err) {
    if (!d || d->size == 1) return 0;
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_allgather(d, buf, n, what, err);
#else
    (void)buf, (void)n, (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_gather_f32(dist_ctx *d, const float *mine, size_t n, float *all, int root,
                    const char *what, chord_err *err) {
    if (!d || d->size == 1) {
        if (n) memcpy(all, mine, n * sizeof *all);
        return 0;
    }
    if (root < 0 || root >= d->size)
        return chord_err_set(err, "dist: gather to rank %d of %d", root, d->size);
    d->count++;
#ifdef CHORD_HAVE_MPI
    return mpi_gather_slices(d, mine, n, all, root, what, err);
#else
    (void)what;
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

/* Every rank's slice bounds (lo[r], count[r]) for NCCL's grouped calls. */
static int slice_table(dist_ctx *d, size_t n, size_t **lo, size_t **count, chord_err *err) {
    *lo = calloc((size_t)d->size, sizeof **lo);
    *count = calloc((size_t)d->size, sizeof **count);
    if (!*lo || !*count) {
        free(*lo);
        free(*count);
        return dist_oom(err);
    }
    for (int r = 0; r < d->size; r++) {
        size_t hi;
        dist_slice(d, n, r, &(*lo)[r], &hi);
        (*count)[r] = hi - (*lo)[r];
    }
    return 0;
}

/* ZeRO-1's two device collectives: NCCL, the CPU backend's memory in place, or staged through
 * the host (the whole buffer: the slices of the others are needed or overwritten). */
static int device_slices(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, int gather,
                         const char *what, chord_err *err) {
    if (!d || d->size == 1 || n == 0) return 0;
    if (d->nccl) {
        size_t *lo, *count;
        if (slice_table(d, n, &lo, &count, err) != 0) return -1;
        int rc =
            gather ? dist_nccl_allgather_f32(d->nccl, dev, lo, count, d->size, what, err)
                   : dist_nccl_reduce_scatter_sum_f32(d->nccl, dev, lo, count, d->size, what, err);
        free(lo);
        free(count);
        return nccl_done(d, rc);
    }
    if (ops->device_index < 0)
        return gather ? dist_allgather_f32(d, dev, n, what, err)
                      : dist_reduce_scatter_sum_f32(d, dev, n, what, err);
    float *host = malloc(n * sizeof *host);
    if (!host) return dist_oom(err);
    int rc = -1;
    if (ops_to_host(ops, host, dev, n * sizeof *host) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "dist: %s: %s", what, ops->last_error);
        goto done;
    }
    if ((gather ? dist_allgather_f32(d, host, n, what, err)
                : dist_reduce_scatter_sum_f32(d, host, n, what, err)) != 0)
        goto done;
    if (ops_to_device(ops, dev, host, n * sizeof *host) != 0) {
        chord_err_setc(err, CHORD_E_INTERNAL, "dist: %s: %s", what, ops->last_error);
        goto done;
    }
    rc = 0;
done:
    free(host);
    return rc;
}

int dist_reduce_scatter_sum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n,
                                       const char *what, chord_err *err) {
    return device_slices(d, ops, dev, n, 0, what, err);
}

int dist_allgather_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, const char *what,
                              chord_err *err) {
    return device_slices(d, ops, dev, n, 1, what, err);
}

struct dist_sums {
    char what[128];
#ifdef CHORD_HAVE_MPI
    MPI_Request *reqs;
    int n_reqs, cap;
#endif
    int nccl; /* some sums went to NCCL */
};

void dist_sums_free(dist_sums *s) {
    if (!s) return;
#ifdef CHORD_HAVE_MPI
    free(s->reqs);
#endif
    free(s);
}

#ifdef CHORD_HAVE_MPI
/* Posts the chunks of one sum, and lets MPI progress the earlier ones (Open MPI moves a
 * non-blocking collective forward only inside MPI calls). */
static int mpi_isum(dist_ctx *d, dist_sums *s, float *buf, size_t n, int root, chord_err *err) {
    for (size_t off = 0; off < n; off += d->chunk) {
        if (s->n_reqs == s->cap) {
            int cap = s->cap ? 2 * s->cap : 16;
            MPI_Request *r = realloc(s->reqs, (size_t)cap * sizeof *r);
            if (!r) return dist_oom(err);
            s->reqs = r;
            s->cap = cap;
        }
        size_t k = n - off < d->chunk ? n - off : d->chunk;
        MPI_Request *req = &s->reqs[s->n_reqs];
        int rc = root < 0 ? MPI_Iallreduce(MPI_IN_PLACE, buf + off, (int)k, MPI_FLOAT, MPI_SUM,
                                           d->comm, req)
                          : MPI_Ireduce(root == d->rank ? MPI_IN_PLACE : buf + off, buf + off,
                                        (int)k, MPI_FLOAT, MPI_SUM, root, d->comm, req);
        if (rc != MPI_SUCCESS) return mpi_error(d, rc, s->what, err);
        s->n_reqs++;
    }
    int flag = 0;
    int rc = MPI_Testall(s->n_reqs, s->reqs, &flag, MPI_STATUSES_IGNORE);
    return rc == MPI_SUCCESS ? 0 : mpi_error(d, rc, s->what, err);
}
#endif

int dist_isum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, int root,
                         dist_sums **series, const char *what, chord_err *err) {
    if (!d || d->size == 1 || n == 0) return 0;
    if (root >= d->size)
        return chord_err_set(err, "dist: %s: a sum to rank %d of %d", what, root, d->size);
    if (!d->nccl && ops->device_index >= 0) /* a GPU without NCCL: through the host, now */
        return dist_allreduce_sum_device_f32(d, ops, dev, n, what, err);
    dist_sums *s = *series;
    if (!s) {
        if (!(s = calloc(1, sizeof *s))) return dist_oom(err);
        snprintf(s->what, sizeof s->what, "%s", what);
        *series = s;
        if (!d->nccl) { /* one arrival for the series: rank 0 names a rank that never comes */
            d->count++;
#ifdef CHORD_HAVE_MPI
            if (arrive(d, what, err) != 0) return -1;
#endif
        }
    }
    if (d->nccl) {
        s->nccl = 1;
        return nccl_done(d, dist_nccl_isum_f32(d->nccl, ops_cuda_stream(ops), dev, n, root,
                                               what, err));
    }
#ifdef CHORD_HAVE_MPI
    return mpi_isum(d, s, dev, n, root, err);
#else
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: no MPI");
#endif
}

int dist_wait_sums(dist_ctx *d, dist_sums *s, chord_err *err) {
    if (!s) return 0;
    int rc = 0;
    if (s->nccl) rc = nccl_done(d, dist_nccl_wait(d->nccl, s->what, err));
#ifdef CHORD_HAVE_MPI
    if (rc == 0 && s->n_reqs > 0) {
        int *done = calloc((size_t)s->n_reqs, sizeof *done);
        if (!done) {
            rc = dist_oom(err);
        } else {
            double limit = d->rank == 0 ? d->timeout_s : 1.5 * d->timeout_s + 5.0;
            int w = wait_all(d, s->reqs, done, s->n_reqs, chord_now() + limit, s->what, err);
            if (w > 0 && d->rank == 0)
                rc = name_silent(d, s->what, err);
            else if (w > 0)
                rc = chord_err_setc(err, CHORD_E_IO,
                                    "dist: the collective '%s' did not complete within %.0f s on "
                                    "rank %d (rank 0 or another peer died or hangs)",
                                    s->what, limit, d->rank);
            else
                rc = w;
            free(done);
        }
    }
#endif
    dist_sums_free(s);
    return rc;
}

int dist_attach_nccl(dist_ctx *d, const ops_ctx *ops, chord_err *err) {
    if (!d || d->size == 1 || d->nccl) return 0;
    if (ops->device_index < 0)
        return chord_err_set(err, "dist: NCCL needs a CUDA device (the job runs on %s)",
                             ops->be->name);
    if (!dist_have_nccl()) return chord_err_set(err, "dist: this chordd was built without NCCL");
    return dist_nccl_open(d, ops->device_index, &d->nccl, err);
}

double dist_timeout_s(const dist_ctx *d) {
    return d ? d->timeout_s : DIST_DEFAULT_TIMEOUT_S;
}
