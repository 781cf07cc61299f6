/* dist_nccl.c — gradients on a GPU summed over the ranks by NCCL (one process per GPU), the
 * communicator bootstrapped from a unique id rank 0 broadcasts over MPI (dist.h).
 *
 * Built when CMake finds CUDA and nccl.h (CHORD_HAVE_NCCL); otherwise every entry point says the
 * build has no NCCL. libnccl.so.2 (about 200 MB) is loaded at run time (dlopen), not linked, so
 * chordd starts where it is absent and a GPU bundle does not carry it. This code compiles in CI
 * but has never run: no GPU was available to this project (docs/distributed.md). The all-reduce
 * runs on its own stream after the whole device is synchronised (the backend's kernels write the
 * gradients on the backend's stream), and is polled against the job's collective timeout: a peer
 * that never joins aborts the communicator instead of hanging.
 *
 * Not here: MPI (dist.c), which buffer is summed (trainer.c). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "server/base/fileutil.h"
#include "server/dist/dist.h"

#ifdef CHORD_HAVE_NCCL
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>

struct dist_nccl {
    ncclComm_t comm;
    cudaStream_t stream;
    int device;
    double timeout_s;
};

/* The NCCL entry points, typed by nccl.h's own declarations. */
static struct {
    int tried, ok;
    __typeof__(ncclGetUniqueId) *GetUniqueId;
    __typeof__(ncclCommInitRank) *CommInitRank;
    __typeof__(ncclAllReduce) *AllReduce;
    __typeof__(ncclReduce) *Reduce;
    __typeof__(ncclBroadcast) *Broadcast;
    __typeof__(ncclGroupStart) *GroupStart;
    __typeof__(ncclGroupEnd) *GroupEnd;
    __typeof__(ncclCommGetAsyncError) *CommGetAsyncError;
    __typeof__(ncclCommAbort) *CommAbort;
    __typeof__(ncclCommDestroy) *CommDestroy;
    __typeof__(ncclGetErrorString) *GetErrorString;
} nccl;

/* Loads libnccl.so.2 once (the main thread alone calls dist). */
static int nccl_load(void) {
    if (nccl.tried) return nccl.ok;
    nccl.tried = 1;
    void *h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) return 0;
#define NCCL_SYM(field, name)                                                                      \
    if (!(*(void **)&nccl.field = dlsym(h, name))) return 0;
    NCCL_SYM(GetUniqueId, "ncclGetUniqueId")
    NCCL_SYM(CommInitRank, "ncclCommInitRank")
    NCCL_SYM(AllReduce, "ncclAllReduce")
    NCCL_SYM(Reduce, "ncclReduce")
    NCCL_SYM(Broadcast, "ncclBroadcast")
    NCCL_SYM(GroupStart, "ncclGroupStart")
    NCCL_SYM(GroupEnd, "ncclGroupEnd")
    NCCL_SYM(CommGetAsyncError, "ncclCommGetAsyncError")
    NCCL_SYM(CommAbort, "ncclCommAbort")
    NCCL_SYM(CommDestroy, "ncclCommDestroy")
    NCCL_SYM(GetErrorString, "ncclGetErrorString")
#undef NCCL_SYM
    nccl.ok = 1;
    return 1;
}

int dist_have_nccl(void) {
    return nccl_load();
}

static int cuda_error(cudaError_t e, const char *what, chord_err *err) {
    return chord_err_setc(err, CHORD_E_INTERNAL, "dist: %s: CUDA: %s", what, cudaGetErrorString(e));
}

static int nccl_error(ncclResult_t r, const char *what, chord_err *err) {
    return chord_err_setc(err, CHORD_E_IO, "dist: %s: NCCL: %s", what, nccl.GetErrorString(r));
}

int dist_nccl_open(dist_ctx *d, int device_index, struct dist_nccl **out, chord_err *err) {
    *out = NULL;
    if (!nccl_load())
        return chord_err_set(err, "dist: cannot load NCCL (libnccl.so.2 or one of its symbols)");
    ncclUniqueId id;
    if (dist_rank(d) == 0) {
        ncclResult_t r = nccl.GetUniqueId(&id);
        if (r != ncclSuccess) return nccl_error(r, "ncclGetUniqueId", err);
    }
    if (dist_broadcast(d, &id, sizeof id, 0, "the NCCL unique id", err) != 0) return -1;
    struct dist_nccl *c = calloc(1, sizeof *c);
    if (!c) return chord_err_setc(err, CHORD_E_INTERNAL, "dist: out of memory");
    c->device = device_index;
    c->timeout_s = dist_timeout_s(d);
    cudaError_t e = cudaSetDevice(device_index);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(c);
        return cuda_error(e, "the NCCL stream", err);
    }
    ncclResult_t r = nccl.CommInitRank(&c->comm, dist_size(d), id, dist_rank(d));
    if (r != ncclSuccess) {
        cudaError_t de = cudaStreamDestroy(c->stream);
        (void)de; /* the NCCL error is the one to report */
        free(c);
        return nccl_error(r, "ncclCommInitRank", err);
    }
    *out = c;
    return 0;
}

/* Waits for what was enqueued on c->stream, polled against the collective timeout. */
static int nccl_wait(struct dist_nccl *c, const char *what, chord_err *err) {
    double deadline = chord_now() + c->timeout_s;
    for (;;) {
        cudaError_t e = cudaStreamQuery(c->stream);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) return cuda_error(e, what, err);
        ncclResult_t async = ncclSuccess;
        ncclResult_t r = nccl.CommGetAsyncError(c->comm, &async);
        if (r != ncclSuccess) return nccl_error(r, what, err);
        if (async != ncclSuccess) return nccl_error(async, what, err);
        if (chord_now() > deadline) {
            r = nccl.CommAbort(c->comm); /* unblocks the stream; the job ends */
            c->comm = NULL;
            return chord_err_setc(err, CHORD_E_IO,
                                  "dist: %s: the NCCL collective did not complete within %.0f s "
                                  "(a peer died or hangs)%s",
                                  what, c->timeout_s, r == ncclSuccess ? "" : "; abort failed");
        }
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
}

/* The buffer was written by the backend's kernels: the whole device is synchronised first. */
static int nccl_ready(struct dist_nccl *c, const char *what, chord_err *err) {
    if (!c->comm)
        return chord_err_setc(err, CHORD_E_IO, "dist: %s: the NCCL communicator was aborted", what);
    cudaError_t e = cudaSetDevice(c->device);
    if (e == cudaSuccess) e = cudaDeviceSynchronize();
    return e == cudaSuccess ? 0 : cuda_error(e, what, err);
}

int dist_nccl_allreduce_sum_f32(struct dist_nccl *c, float *dev, size_t n, const char *what,
                                chord_err *err) {
    if (nccl_ready(c, what, err) != 0) return -1;
    ncclResult_t r = nccl.AllReduce(dev, dev, n, ncclFloat, ncclSum, c->comm, c->stream);
    if (r != ncclSuccess) return nccl_error(r, what, err);
    return nccl_wait(c, what, err);
}

/* A gradient bucket: NCCL's stream waits (an event) for what the backend's stream has queued so
 * far — the bucket's gradients — and the sum runs there while the backend goes on with the
 * backward. No host wait: dist_nccl_wait waits for every bucket. */
int dist_nccl_isum_f32(struct dist_nccl *c, void *compute_stream, float *dev, size_t n, int root,
                       const char *what, chord_err *err) {
    if (!compute_stream) { /* no stream to wait for: the whole device */
        if (nccl_ready(c, what, err) != 0) return -1;
    } else {
        if (!c->comm)
            return chord_err_setc(err, CHORD_E_IO, "dist: %s: the NCCL communicator was aborted",
                                  what);
        cudaEvent_t written;
        cudaError_t e = cudaSetDevice(c->device);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&written, cudaEventDisableTiming);
        if (e != cudaSuccess) return cuda_error(e, what, err);
        e = cudaEventRecord(written, (cudaStream_t)compute_stream);
        if (e == cudaSuccess) e = cudaStreamWaitEvent(c->stream, written, 0);
        cudaError_t de = cudaEventDestroy(written); /* released once the wait has passed it */
        if (e == cudaSuccess) e = de;
        if (e != cudaSuccess) return cuda_error(e, what, err);
    }
    ncclResult_t r = root < 0
                         ? nccl.AllReduce(dev, dev, n, ncclFloat, ncclSum, c->comm, c->stream)
                         : nccl.Reduce(dev, dev, n, ncclFloat, ncclSum, root, c->comm, c->stream);
    return r == ncclSuccess ? 0 : nccl_error(r, what, err);
}

int dist_nccl_wait(struct dist_nccl *c, const char *what, chord_err *err) {
    if (!c->comm)
        return chord_err_setc(err, CHORD_E_IO, "dist: %s: the NCCL communicator was aborted", what);
    return nccl_wait(c, what, err);
}

/* ZeRO-1: the slices are uneven (they differ by one float), which ncclReduceScatter and
 * ncclAllGather (equal counts) cannot express: one ncclReduce / ncclBroadcast per rank, in place,
 * grouped so that NCCL runs them as one operation. */
static int nccl_slices(struct dist_nccl *c, float *dev, const size_t *lo, const size_t *count,
                       int size, int gather, const char *what, chord_err *err) {
    if (nccl_ready(c, what, err) != 0) return -1;
    ncclResult_t r = nccl.GroupStart();
    if (r != ncclSuccess) return nccl_error(r, what, err);
    ncclResult_t first = ncclSuccess;
    for (int root = 0; root < size; root++) {
        float *p = dev + lo[root];
        r = gather ? nccl.Broadcast(p, p, count[root], ncclFloat, root, c->comm, c->stream)
                   : nccl.Reduce(p, p, count[root], ncclFloat, ncclSum, root, c->comm, c->stream);
        if (r != ncclSuccess && first == ncclSuccess) first = r;
    }
    r = nccl.GroupEnd(); /* always closed, even after a failed call */
    if (first != ncclSuccess) return nccl_error(first, what, err);
    if (r != ncclSuccess) return nccl_error(r, what, err);
    return nccl_wait(c, what, err);
}

int dist_nccl_reduce_scatter_sum_f32(struct dist_nccl *c, float *dev, const size_t *lo,
                                     const size_t *count, int size, const char *what,
                                     chord_err *err) {
    return nccl_slices(c, dev, lo, count, size, 0, what, err);
}

int dist_nccl_allgather_f32(struct dist_nccl *c, float *dev, const size_t *lo, const size_t *count,
                            int size, const char *what, chord_err *err) {
    return nccl_slices(c, dev, lo, count, size, 1, what, err);
}

void dist_nccl_close(struct dist_nccl *c) {
    if (!c) return;
    if (c->comm) {
        ncclResult_t r = nccl.CommDestroy(c->comm);
        if (r != ncclSuccess)
            fprintf(stderr, "dist: ncclCommDestroy: %s\n", nccl.GetErrorString(r));
    }
    cudaError_t e = cudaStreamDestroy(c->stream);
    if (e != cudaSuccess) fprintf(stderr, "dist: cudaStreamDestroy: %s\n", cudaGetErrorString(e));
    free(c);
}

#else /* no NCCL in this build */

struct dist_nccl {
    int unused;
};

int dist_have_nccl(void) {
    return 0;
}

int dist_nccl_open(dist_ctx *d, int device_index, struct dist_nccl **out, chord_err *err) {
    (void)d;
    (void)device_index;
    *out = NULL;
    return chord_err_set(err, "dist: this chordd was built without NCCL");
}

int dist_nccl_allreduce_sum_f32(struct dist_nccl *c, float *dev, size_t n, const char *what,
                                chord_err *err) {
    (void)c;
    (void)dev;
    (void)n;
    return chord_err_set(err, "dist: %s: this chordd was built without NCCL", what);
}

int dist_nccl_reduce_scatter_sum_f32(struct dist_nccl *c, float *dev, const size_t *lo,
                                     const size_t *count, int size, const char *what,
                                     chord_err *err) {
    (void)c, (void)dev, (void)lo, (void)count, (void)size;
    return chord_err_set(err, "dist: %s: this chordd was built without NCCL", what);
}

int dist_nccl_allgather_f32(struct dist_nccl *c, float *dev, const size_t *lo, const size_t *count,
                            int size, const char *what, chord_err *err) {
    (void)c, (void)dev, (void)lo, (void)count, (void)size;
    return chord_err_set(err, "dist: %s: this chordd was built without NCCL", what);
}

int dist_nccl_isum_f32(struct dist_nccl *c, void *compute_stream, float *dev, size_t n, int root,
                       const char *what, chord_err *err) {
    (void)c, (void)compute_stream, (void)dev, (void)n, (void)root;
    return chord_err_set(err, "dist: %s: this chordd was built without NCCL", what);
}

int dist_nccl_wait(struct dist_nccl *c, const char *what, chord_err *err) {
    (void)c;
    return chord_err_set(err, "dist: %s: this chordd was built without NCCL", what);
}

void dist_nccl_close(struct dist_nccl *c) {
    (void)c;
}

#endif
