/* ops.c — opening a backend by device name (ops.h). Backends live in kernels/cpu and
 * kernels/cuda; this file dispatches, checks that the opened backend's op table is complete, and
 * supplies the CUDA stubs when CUDA is not built. */
#include "kernels/ops.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* every op slot of ops_backend, by name; the static assertion catches a slot added to ops.h
 * without a line here */
#define SLOT(f)                                                                                    \
    { #f, offsetof(ops_backend, f) }
static const struct {
    const char *name;
    size_t offset;
} backend_slots[] = {
    SLOT(alloc),
    SLOT(free),
    SLOT(to_device),
    SLOT(to_host),
    SLOT(copy),
    SLOT(zero),
    SLOT(sync),
    SLOT(matmul_forward),
    SLOT(matmul_backward),
    SLOT(cast_bf16),
    SLOT(matmul_forward_bf16),
    SLOT(matmul_backward_bf16),
    SLOT(swiglu_forward_bf16),
    SLOT(swiglu_backward_bf16),
    SLOT(embedding_forward),
    SLOT(embedding_backward),
    SLOT(rmsnorm_forward),
    SLOT(rmsnorm_backward),
    SLOT(rope_forward),
    SLOT(rope_backward),
    SLOT(attention_forward),
    SLOT(attention_backward),
    SLOT(kv_store),
    SLOT(attention_decode),
    SLOT(swiglu_forward),
    SLOT(swiglu_backward),
    SLOT(add_inplace),
    SLOT(axpy2d),
    SLOT(scale_inplace),
    SLOT(dropout),
    SLOT(sum_squares),
    SLOT(logprob_forward),
    SLOT(logprob_backward),
    SLOT(adamw_update),
    SLOT(sample),
    SLOT(close),
};
#undef SLOT
_Static_assert(sizeof(ops_backend) == sizeof(const char *) + sizeof backend_slots /
                                                                 sizeof backend_slots[0] *
                                                                 sizeof(void (*)(void)),
               "ops_backend and backend_slots disagree: list the new op in backend_slots");

int ops_backend_check(const ops_backend *be, char *err, size_t errlen) {
    if (!be) {
        snprintf(err, errlen, "backend: no op table");
        return -1;
    }
    for (size_t i = 0; i < sizeof backend_slots / sizeof backend_slots[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)be + backend_slots[i].offset, sizeof fn);
        if (!fn) {
            snprintf(err, errlen, "backend %s: op %s is not implemented (empty slot)",
                     be->name ? be->name : "(unnamed)", backend_slots[i].name);
            return -1;
        }
    }
    return 0;
}

static ops_ctx *checked(ops_ctx *c, char *err, size_t errlen) {
    if (c && ops_backend_check(c->be, err, errlen) != 0) {
        ops_close(c);
        return NULL;
    }
    return c;
}

static ops_ctx *open_device(const char *device, int threads, char *err, size_t errlen);

int ops_device_bf16_weights(const char *device) {
    const char *v = getenv("CHORD_WEIGHTS");
    if (v && (strcmp(v, "fp32") == 0 || strcmp(v, "bf16") == 0)) return v[0] == 'b';
    int cuda = device && strncmp(device, "cuda", 4) == 0;
    if (!device || !*device || strcmp(device, "auto") == 0) cuda = ops_cuda_device_count() > 0;
    if (!cuda) return 0;
    const char *mm = getenv("CHORD_CUDA_MATMUL"); /* ops_cuda.h: bf16 is the default */
    return !mm || !*mm || strcmp(mm, "bf16") == 0;
}

/* CHORD_WEIGHTS: the precision of the models created on c (ops.h bf16_weights) */
static ops_ctx *weights_from_env(ops_ctx *c, char *err, size_t errlen) {
    if (!c) return NULL;
    const char *v = getenv("CHORD_WEIGHTS");
    if (v && *v && strcmp(v, "auto") != 0 && strcmp(v, "fp32") != 0 && strcmp(v, "bf16") != 0) {
        snprintf(err, errlen, "device: CHORD_WEIGHTS='%.40s' is not auto, fp32 or bf16", v);
        ops_close(c);
        return NULL;
    }
    c->bf16_weights = ops_device_bf16_weights(c->device_index >= 0 ? "cuda" : "cpu");
    return c;
}

ops_ctx *ops_open(const char *device, int threads, char *err, size_t errlen) {
    return weights_from_env(checked(open_device(device, threads, err, errlen), err, errlen), err,
                            errlen);
}

static ops_ctx *open_device(const char *device, int threads, char *err, size_t errlen) {
    if (!device || !*device || strcmp(device, "auto") == 0) {
        if (ops_cuda_device_count() > 0) return ops_cuda_open(0, err, errlen);
        return ops_cpu_open(threads, err, errlen);
    }
    if (strcmp(device, "cpu") == 0) return ops_cpu_open(threads, err, errlen);
    if (strcmp(device, "cuda") == 0) return ops_cuda_open(0, err, errlen);
    if (strncmp(device, "cuda:", 5) == 0) {
        char *end = NULL;
        long idx = strtol(device + 5, &end, 10);
        if (end == device + 5 || *end != '\0' || idx < 0 || idx > 1024) {
            snprintf(err, errlen, "device: '%s' is not cuda:N", device);
            return NULL;
        }
        return ops_cuda_open((int)idx, err, errlen);
    }
    snprintf(err, errlen, "device: unknown device '%s' (expected auto, cpu, cuda or cuda:N)",
             device);
    return NULL;
}

/* ---- ops_alloc's accounting ----
 * The live buffers in an array searched from the newest (a context holds a few dozen: a model's
 * flat buffers, run states, KV caches). One lock for every context: allocations are rare (set-up,
 * a run state that grows) and a context may be handed between threads. */
struct ops_mem_track {
    void **ptr;
    size_t *bytes;
    size_t n, cap;
    size_t live, peak;
};
static pthread_mutex_t mem_lock = PTHREAD_MUTEX_INITIALIZER;

void *ops_alloc(ops_ctx *c, size_t bytes) {
    void *p = c->be->alloc(c, bytes);
    if (!p) return NULL;
    pthread_mutex_lock(&mem_lock);
    struct ops_mem_track *t = c->mem;
    if (!t) t = c->mem = calloc(1, sizeof *t);
    if (t && t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 32;
        void **np = realloc(t->ptr, cap * sizeof *np);
        if (np) t->ptr = np;
        size_t *nb = np ? realloc(t->bytes, cap * sizeof *nb) : NULL;
        if (nb) {
            t->bytes = nb;
            t->cap = cap;
        }
    }
    if (t && t->n < t->cap) { /* else (out of host memory) the buffer goes uncounted */
        t->ptr[t->n] = p;
        t->bytes[t->n++] = bytes;
        t->live += bytes;
        if (t->live > t->peak) t->peak = t->live;
    }
    pthread_mutex_unlock(&mem_lock);
    return p;
}

void ops_free(ops_ctx *c, void *p) {
    if (!p) return;
    pthread_mutex_lock(&mem_lock);
    struct ops_mem_track *t = c->mem;
    for (size_t i = t ? t->n : 0; i-- > 0;) {
        if (t->ptr[i] != p) continue;
        t->live -= t->bytes[i];
        t->ptr[i] = t->ptr[--t->n];
        t->bytes[i] = t->bytes[t->n];
        if (t->n == 0) { /* nothing live: the arrays go (a context between jobs holds none) */
            free(t->ptr);
            free(t->bytes);
            t->ptr = NULL;
            t->bytes = NULL;
            t->cap = 0;
        }
        break;
    }
    pthread_mutex_unlock(&mem_lock);
    c->be->free(c, p);
}

void ops_mem_usage(const ops_ctx *c, size_t *live, size_t *peak) {
    pthread_mutex_lock(&mem_lock);
    const struct ops_mem_track *t = c ? c->mem : NULL;
    if (live) *live = t ? t->live : 0;
    if (peak) *peak = t ? t->peak : 0;
    pthread_mutex_unlock(&mem_lock);
}

void ops_mem_reset_peak(ops_ctx *c) {
    pthread_mutex_lock(&mem_lock);
    if (c && c->mem) c->mem->peak = c->mem->live;
    pthread_mutex_unlock(&mem_lock);
}

const char *ops_last_error(const ops_ctx *c) {
    return c ? c->last_error : "no backend";
}

void ops_close(ops_ctx *c) {
    if (!c) return;
    if (c->mem) {
        free(c->mem->ptr);
        free(c->mem->bytes);
        free(c->mem);
        c->mem = NULL;
    }
    if (c->be && c->be->close)
        c->be->close(c);
    else
        free(c);
}

#ifndef CHORD_HAVE_CUDA
int ops_cuda_device_count(void) {
    return 0;
}

void *ops_cuda_stream(ops_ctx *c) {
    (void)c;
    return NULL;
}

ops_ctx *ops_cuda_open(int device_index, char *err, size_t errlen) {
    snprintf(err, errlen, "device: cuda:%d requested but this build has no CUDA backend",
             device_index);
    return NULL;
}
#endif
