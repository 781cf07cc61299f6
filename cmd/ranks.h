/* ranks.h — what `chordd train` and `chordd serve` decide alike for the ranks of an mpirun launch
 * (cmd/cmd_ranks.c, docs/distributed.md): each rank's GPU and CPU threads, the ranges of the
 * ranks' flags, and --device cuda:all's re-execution (commands.h). chordd only. */
#ifndef CHORD_CMD_RANKS_H
#define CHORD_CMD_RANKS_H

#include <stddef.h>

#include "server/base/err.h"
#include "server/dist/dist.h"

/* --dist-timeout S and --bucket-mb X: the ranges both commands take */
#define CMD_DIST_TIMEOUT_MIN 0.1
#define CMD_DIST_TIMEOUT_MAX 86400.0
#define CMD_BUCKET_MB_MAX 1048576.0

/* Several ranks with dev "cuda", "cuda:all", or "auto" on a host with GPUs: this rank's GPU,
 * cuda:<its index on its host>, in out (1 returned); any other dev: 0, out untouched; a host
 * with fewer GPUs than ranks: -1, err naming the rank. */
int cmd_rank_gpu(const dist_ctx *d, const char *dev, char *out, size_t outlen, chord_err *err);
/* The CPU threads of one rank when --threads is not given: the host's cores divided by its
 * ranks, at least 1. */
long cmd_rank_threads(const dist_ctx *d);

#endif
