/* dist.h — the ranks of a data-parallel job and the few collectives the trainer needs, behind
 * one interface (DESIGN.md "Distributed": the trainer calls all-reduce, never MPI directly).
 *
 * Implementations:
 * - single: one process, rank 0 of 1; every collective is a no-op (the default, and what any
 *   process not launched by mpirun gets);
 * - MPI (dist_mpi.c, Open MPI): chosen by dist_open when the process was launched by mpirun
 *   (OMPI_COMM_WORLD_SIZE, PMIX_RANK or PMI_SIZE in the environment). Every collective has a
 *   watchdog: rank 0 first collects an arrival note from every rank, and a rank that does not
 *   arrive within the timeout is named in the error (it died or hangs); then the collective
 *   itself runs non-blocking, polled against the same deadline. A failed or timed-out
 *   collective is an error the caller turns into dist_abort, which ends every rank;
 * - NCCL (dist_nccl.c): gradients that live on a GPU are summed by NCCL, its unique id
 *   broadcast over MPI. Compiled when CUDA and NCCL are found; it has never run on a GPU
 *   (docs/distributed.md).
 *
 * Not here: which rank takes which work (the trainer splits a step), launching processes
 * (mpirun), files and logs (rank 0's job, cmd/cmd_train.c). */
#ifndef CHORD_DIST_DIST_H
#define CHORD_DIST_DIST_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "server/base/err.h"

typedef struct dist_ctx dist_ctx;

/* Default watchdog (seconds) for a collective: long enough for rank 0 to write a checkpoint
 * while the others wait at the next step's first collective. */
#define DIST_DEFAULT_TIMEOUT_S 600.0

/* Whether this process was launched by an MPI launcher (mpirun / mpiexec / srun with PMI). */
int dist_launched_by_mpi(void);
/* Whether this build has MPI (CMake found it). */
int dist_have_mpi(void);

/* Opens the process's view of the job: MPI (initialising it) when launched by mpirun, else the
 * single-process implementation. timeout_s > 0 bounds every collective. Fails when launched by
 * mpirun and this build has no MPI, or MPI cannot start. */
int dist_open(double timeout_s, dist_ctx **out, chord_err *err);
/* Finalizes MPI (after a last barrier) and frees d; NULL is fine. */
int dist_close(dist_ctx *d, chord_err *err);
/* Ends every rank of the job now (MPI_Abort), after the caller printed why. */
void dist_abort(dist_ctx *d, int code) __attribute__((noreturn));

int dist_rank(const dist_ctx *d);         /* 0 .. size - 1 */
int dist_size(const dist_ctx *d);         /* ranks in the job */
int dist_local_rank(const dist_ctx *d);   /* rank among the ranks of this host (GPU choice) */
int dist_local_size(const dist_ctx *d);   /* ranks on this host (CPU threads per rank) */
const char *dist_kind(const dist_ctx *d); /* "single", "mpi" */

/* Collectives: every rank calls them in the same order with the same n. `what` names the
 * collective in a timeout's message ("step 3: gradients"). In place. */
int dist_allreduce_sum_f32(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err);
int dist_allreduce_sum_f64(dist_ctx *d, double *buf, size_t n, const char *what, chord_err *err);
int dist_allreduce_max_i64(dist_ctx *d, int64_t *buf, size_t n, const char *what, chord_err *err);
int dist_broadcast(dist_ctx *d, void *buf, size_t bytes, int root, const char *what,
                   chord_err *err);
int dist_barrier(dist_ctx *d, const char *what, chord_err *err);

/* Whether a collective of d failed (a rank timed out or diverged, an MPI or NCCL error): the
 * ranks are out of step for good and the caller ends them (dist_abort); `chordd serve` tells a
 * lost rank from a job's own failure by it. */
int dist_broken(const dist_ctx *d);

/* Commands of a long-lived job (`chordd serve` under mpirun, docs/distributed.md): rank 0 sends
 * len bytes to every other rank (point to point, not a collective: no count, no arrival), bounded
 * by the timeout (a rank that takes none is named); each other rank waits for the next one with
 * no deadline (a rank 0 that dies ends the MPI job) and gets it NUL-terminated in *msg
 * (malloc'd). */
int dist_send_command(dist_ctx *d, const char *msg, size_t len, chord_err *err);
int dist_wait_command(dist_ctx *d, char **msg, size_t *len, chord_err *err);
/* Every rank's n bytes (each under 2 GiB) to rank root, in rank order: there *out (malloc'd,
 * root's own bytes included) and lens[0 .. size); elsewhere *out = NULL and lens untouched. */
int dist_gather_bytes(dist_ctx *d, const void *buf, size_t n, int root, char **out, size_t *lens,
                      const char *what, chord_err *err);

/* The sum over the ranks of a float buffer in device memory of ops (n floats, in place): NCCL
 * when attached (dist_attach_nccl), else through the host (on the CPU backend device memory is
 * host memory: no copy). */
int dist_allreduce_sum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, const char *what,
                                  chord_err *err);

/* ---- a series of sums started without waiting (the gradient buckets, docs/distributed.md) ----
 * dist_isum_device_f32 starts the sum over the ranks of one buffer in device memory of ops (in
 * place: on every rank when root < 0, an all-reduce; on rank root alone otherwise, a reduce —
 * ZeRO-1's buckets, each slice's part to its owner) and returns; dist_wait_sums waits for every
 * sum of the series. The first start of a
 * series checks every rank in (the watchdog's arrival, named `what`); the wait is bounded by the
 * timeout and names the silent ranks as the blocking collectives do. Every rank starts the same
 * buffers in the same order. MPI: MPI_Iallreduce / MPI_Ireduce, progressed by each later start;
 * NCCL: ncclAllReduce / ncclReduce on its own stream once an event says the backend's stream has
 * written the buffer (never ran); a GPU without NCCL: summed at once through the host on every
 * rank (no overlap). *series
 * starts NULL; dist_wait_sums frees it (also on failure). A buffer must not be read or written
 * before the wait. */
typedef struct dist_sums dist_sums;
int dist_isum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, int root,
                         dist_sums **series, const char *what, chord_err *err);
int dist_wait_sums(dist_ctx *d, dist_sums *series, chord_err *err);
/* Frees a series without waiting (the job is about to abort). */
void dist_sums_free(dist_sums *series);

/* ---- ZeRO-1 (docs/distributed.md): a buffer of n floats cut into the ranks' contiguous slices,
 * balanced (sizes differ by at most one float, the first n % size ranks one more) ---- */

/* Rank r's slice [*lo, *hi) of n. */
void dist_slice(const dist_ctx *d, size_t n, int r, size_t *lo, size_t *hi);
/* The sum over the ranks of buf (n floats), kept only on each rank's own slice: afterwards
 * buf[lo, hi) of this rank holds the sum there, the rest of buf is undefined (a reduce-scatter;
 * per element the same additions as dist_allreduce_sum_f32). */
int dist_reduce_scatter_sum_f32(dist_ctx *d, float *buf, size_t n, const char *what,
                                chord_err *err);
/* Each rank's slice of buf (n floats) to every rank, in place (an all-gather). */
int dist_allgather_f32(dist_ctx *d, float *buf, size_t n, const char *what, chord_err *err);
/* Each rank's slice (mine: its hi - lo floats) to root's all (n floats; NULL elsewhere). */
int dist_gather_f32(dist_ctx *d, const float *mine, size_t n, float *all, int root,
                    const char *what, chord_err *err);
/* dist_reduce_scatter_sum_f32 / dist_allgather_f32 of a buffer in device memory of ops: NCCL
 * when attached (grouped ncclReduce / ncclBroadcast: the slices are uneven), else through the
 * host. */
int dist_reduce_scatter_sum_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n,
                                       const char *what, chord_err *err);
int dist_allgather_device_f32(dist_ctx *d, ops_ctx *ops, float *dev, size_t n, const char *what,
                              chord_err *err);

/* NCCL for the gradients of a CUDA device (ops->device_index): the communicator is created
 * from a unique id rank 0 broadcasts. Fails when this build has no NCCL. Never ran on a GPU. */
int dist_attach_nccl(dist_ctx *d, const ops_ctx *ops, chord_err *err);
int dist_have_nccl(void); /* whether this build has NCCL */

/* ---- for the implementations (dist_mpi.c, dist_nccl.c) ---- */
struct dist_nccl;
double dist_timeout_s(const dist_ctx *d); /* the watchdog of one collective */
int dist_nccl_open(dist_ctx *d, int device_index, struct dist_nccl **out, chord_err *err);
int dist_nccl_allreduce_sum_f32(struct dist_nccl *c, float *dev, size_t n, const char *what,
                                chord_err *err);
/* ZeRO-1's: rank r's slice is [lo[r], lo[r] + count[r]) of dev; size ranks */
int dist_nccl_reduce_scatter_sum_f32(struct dist_nccl *c, float *dev, const size_t *lo,
                                     const size_t *count, int size, const char *what,
                                     chord_err *err);
int dist_nccl_allgather_f32(struct dist_nccl *c, float *dev, const size_t *lo, const size_t *count,
                            int size, const char *what, chord_err *err);
/* Enqueues the sum of dev (to every rank, root < 0, or to root) behind the work already queued
 * on compute_stream (a cudaStream_t; NULL: the whole device is synchronised first);
 * dist_nccl_wait waits for everything enqueued. */
int dist_nccl_isum_f32(struct dist_nccl *c, void *compute_stream, float *dev, size_t n, int root,
                       const char *what, chord_err *err);
int dist_nccl_wait(struct dist_nccl *c, const char *what, chord_err *err);
void dist_nccl_close(struct dist_nccl *c);

#endif
