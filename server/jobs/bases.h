/* bases.h — the shared base weights of a server: one copy of each base model per device, used at
 * once by every job and rollout whose weights are never trained in full (a LoRA job's base, a
 * frozen KL reference, a rollout's model), each through a view on its own worker's context
 * (model_create_view). This is what lets one chordd hold many users' LoRA runs over one base.
 *
 * A base is keyed by its device and its key (bootstrap.c: the weights directory's real path, or
 * a random init's config and seed). It is loaded on first use on the device's home context (a
 * context of the registry's own, so no worker's context is used from two threads), counted by
 * reference, and freed when the last view is released. Two workers asking for a base that is
 * being loaded wait for the one load. Thread-safe.
 *
 * Not here: which weights a job means (the service resolves it), memory admission (jobs.c and
 * service_memory.c read the resident bytes from jobs_bases_bytes). */
#ifndef CHORD_JOBS_BASES_H
#define CHORD_JOBS_BASES_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "server/base/err.h"
#include "server/train/bootstrap.h"

typedef struct jobs_bases jobs_bases;

int jobs_bases_new(jobs_bases **out, chord_err *err);
/* Registers a device ("cpu", "cuda:0") with its home context (owned by the caller, outliving the
 * registry's bases). Views are accepted only on contexts of a registered device. */
int jobs_bases_add_device(jobs_bases *b, const char *device, ops_ctx *home, chord_err *err);
/* The bootstrap_spec.bases interface of this registry (valid as long as it is). */
const bootstrap_bases *jobs_bases_iface(jobs_bases *b);

typedef struct jobs_base_info {
    char device[32];
    char *key;     /* "dir:/models/x" or "init:<seed>:<config>" (malloc'd) */
    int64_t bytes; /* its weights on the device */
    int users;     /* views open on it now */
} jobs_base_info;

/* The resident bases, in load order. Free with jobs_bases_list_free. */
int jobs_bases_list(jobs_bases *b, jobs_base_info **out, size_t *n, chord_err *err);
void jobs_bases_list_free(jobs_base_info *items, size_t n);
/* 1 when the base under key (bootstrap_base_key) is resident, or being loaded, on device. */
int jobs_bases_resident(jobs_bases *b, const char *device, const char *key);
/* Bytes of the bases resident on device (one being loaded counts once it is loaded). */
int64_t jobs_bases_bytes(jobs_bases *b, const char *device);
/* Frees every base still resident (none should be: every view released first). NULL allowed. */
void jobs_bases_free(jobs_bases *b);

#endif
