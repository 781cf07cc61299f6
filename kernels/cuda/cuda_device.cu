// cuda_device.cu — the CUDA backend's context: device discovery, open / close (stream, cuBLAS
// handle and workspace, the deferred-error flag word, scratch), memory ops, memory accounting,
// the knobs of ops_cuda.h, and the op table (kernels/ops.h).
//
// Where no driver or no GPU exists, ops_cuda_device_count() returns 0 (and clears the runtime's
// error) so "auto" falls back to the CPU backend; nothing here aborts.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.cuh"

int cu_fail(ops_ctx *c, const char *fmt, ...) {
    if (!c) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    return -1;
}

int cu_enter(ops_ctx *c) {
    CU_CHECK(cudaSetDevice(cu_impl(c)->device));
    return 0;
}

void *cu_scratch(ops_ctx *c, size_t bytes) {
    cuda_impl *im = cu_impl(c);
    if (bytes <= im->scratch_bytes) return im->scratch;
    size_t n = im->scratch_bytes ? im->scratch_bytes : ((size_t)1 << 20);
    while (n < bytes)
        n *= 2;
    if (im->scratch) {
        // kernels queued earlier may still read it: cudaFree waits for the device
        cudaError_t e = cudaFree(im->scratch);
        im->scratch = NULL;
        im->scratch_bytes = 0;
        if (e != cudaSuccess) {
            cu_fail(c, "scratch: cudaFree failed: %s", cudaGetErrorString(e));
            return NULL;
        }
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cu_fail(c, "scratch: cannot allocate %zu bytes of GPU memory: %s", n,
                cudaGetErrorString(e));
        return NULL;
    }
    im->scratch = p;
    im->scratch_bytes = n;
    return p;
}

void *cu_pinned(ops_ctx *c, size_t bytes) {
    cuda_impl *im = cu_impl(c);
    if (bytes <= im->pinned_bytes) return im->pinned;
    size_t n = im->pinned_bytes ? im->pinned_bytes : 4096;
    while (n < bytes)
        n *= 2;
    if (im->pinned) {
        // a read-back into it is always complete (callers synchronise before returning)
        cudaFreeHost(im->pinned);
        im->pinned = NULL;
        im->pinned_bytes = 0;
    }
    void *p = NULL;
    cudaError_t e = cudaMallocHost(&p, n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        cu_fail(c, "staging: cannot allocate %zu bytes of pinned host memory: %s", n,
                cudaGetErrorString(e));
        return NULL;
    }
    im->pinned = p;
    im->pinned_bytes = n;
    return p;
}

static void describe_flags(unsigned int f, char *buf, size_t len) {
    static const struct {
        unsigned int bit;
        const char *what;
    } names[] = {
        {CU_EFLAG_TOKEN, "embedding: a token id is outside the vocabulary"},
        {CU_EFLAG_CU, "attention: cu_seqlens does not run from 0 to N without decreasing"},
        {CU_EFLAG_POS, "rope: a position is negative"},
        {CU_EFLAG_KV, "kv_store: a slot or position is outside the cache"},
        {CU_EFLAG_DECODE, "attention_decode: a slot or length is outside the cache"},
        {CU_EFLAG_TARGET, "logprob: a target is >= V"},
        {CU_EFLAG_NONFINITE, "sample: a row of logits has no finite log-sum-exp"},
    };
    size_t at = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (f & names[i].bit) {
            int n = snprintf(buf + at, len - at, "%s%s", at ? "; " : "", names[i].what);
            if (n < 0 || (size_t)n >= len - at) break;
            at += (size_t)n;
        }
}

int cu_sync_check(ops_ctx *c, const char *what) {
    cuda_impl *im = cu_impl(c);
    // the flag word travels with the stream: read it back and clear it behind the queued work
    cudaError_t e = cudaMemcpyAsync(im->flags_host, im->flags_dev, sizeof(unsigned int),
                                    cudaMemcpyDeviceToHost, im->stream);
    if (e == cudaSuccess) e = cudaMemsetAsync(im->flags_dev, 0, sizeof(unsigned int), im->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(im->stream);
    if (e != cudaSuccess)
        return cu_fail(c, "%s: the GPU reported an error: %s", what, cudaGetErrorString(e));
    unsigned int f = *im->flags_host;
    *im->flags_host = 0;
    if (f) {
        char msg[400];
        describe_flags(f, msg, sizeof msg);
        return cu_fail(c, "%s: invalid input found on the GPU (rows skipped): %s", what, msg);
    }
    return 0;
}

// ---- device discovery and memory accounting ----

extern "C" int ops_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError(); // clear the "no driver / no device" error
        return 0;
    }
    return n;
}

extern "C" void *ops_cuda_stream(ops_ctx *c) {
    if (!c || c->device_index < 0 || !c->impl) return NULL;
    return (void *)cu_impl(c)->stream;
}

extern "C" int ops_cuda_mem_info(int device_index, size_t *free_bytes, size_t *total_bytes) {
    if (!free_bytes || !total_bytes) return -1;
    *free_bytes = *total_bytes = 0;
    int n = ops_cuda_device_count();
    if (device_index < 0 || device_index >= n) return -1;
    int prev = -1;
    if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
    size_t f = 0, t = 0;
    cudaError_t e = cudaSetDevice(device_index);
    if (e == cudaSuccess) e = cudaMemGetInfo(&f, &t);
    if (prev >= 0 && prev != device_index) cudaSetDevice(prev);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    *free_bytes = f;
    *total_bytes = t;
    return 0;
}

// ---- memory ops ----

static void *cuda_alloc(ops_ctx *c, size_t bytes) {
    if (cu_enter(c) != 0) return NULL;
    cuda_impl *im = cu_impl(c);
    size_t n = bytes ? (bytes + 255) & ~(size_t)255 : 256;
    if (n < bytes) {
        cu_fail(c, "alloc: %zu bytes overflows", bytes);
        return NULL;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, n);
    if (e != cudaSuccess) {
        cudaGetLastError(); // out of memory is not sticky: clear it
        size_t f = 0, t = 0;
        if (cudaMemGetInfo(&f, &t) != cudaSuccess) cudaGetLastError();
        cu_fail(c, "alloc: cannot allocate %zu bytes on cuda:%d (%.2f GiB free of %.2f GiB): %s",
                bytes, im->device, (double)f / 1073741824.0, (double)t / 1073741824.0,
                cudaGetErrorString(e));
        return NULL;
    }
    e = cudaMemsetAsync(p, 0, n, im->stream);
    if (e != cudaSuccess) {
        cudaFree(p);
        cu_fail(c, "alloc: zeroing %zu bytes failed: %s", n, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cuda_free(ops_ctx *c, void *p) {
    if (!p) return;
    if (cu_enter(c) != 0) return;
    cudaError_t e = cudaFree(p); // waits for queued work that may use p
    if (e != cudaSuccess) cu_fail(c, "free: %s", cudaGetErrorString(e));
}

static int cuda_to_device(ops_ctx *c, void *dst, const void *src_host, size_t bytes) {
    if (bytes == 0) return 0;
    CU_REQUIRE(dst && src_host, "to_device: NULL pointer");
    CU_ENTER();
    // from pageable memory this returns once src_host has been staged: the caller may reuse it
    CU_CHECK(cudaMemcpyAsync(dst, src_host, bytes, cudaMemcpyHostToDevice, cu_impl(c)->stream));
    return 0;
}

static int cuda_to_host(ops_ctx *c, void *dst_host, const void *src, size_t bytes) {
    if (bytes == 0) return 0;
    CU_REQUIRE(dst_host && src, "to_host: NULL pointer");
    CU_ENTER();
    CU_CHECK(cudaMemcpyAsync(dst_host, src, bytes, cudaMemcpyDeviceToHost, cu_impl(c)->stream));
    return cu_sync_check(c, "to_host");
}

static int cuda_copy(ops_ctx *c, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return 0;
    CU_REQUIRE(dst && src, "copy: NULL pointer");
    CU_ENTER();
    CU_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, cu_impl(c)->stream));
    return 0;
}

static int cuda_zero(ops_ctx *c, void *p, size_t bytes) {
    if (bytes == 0) return 0;
    CU_REQUIRE(p, "zero: NULL pointer");
    CU_ENTER();
    CU_CHECK(cudaMemsetAsync(p, 0, bytes, cu_impl(c)->stream));
    return 0;
}

static int cuda_sync(ops_ctx *c) {
    CU_ENTER();
    return cu_sync_check(c, "sync");
}

// ---- knobs (ops_cuda.h) ----

static int is_cuda_ctx(const ops_ctx *c);

static cublasComputeType_t compute_for(ops_cuda_matmul_mode m) {
    switch (m) {
    case OPS_CUDA_MATMUL_FP32:
        return CUBLAS_COMPUTE_32F;
    case OPS_CUDA_MATMUL_TF32:
        return CUBLAS_COMPUTE_32F_FAST_TF32;
    default:
        return CUBLAS_COMPUTE_32F_FAST_16BF;
    }
}

extern "C" int ops_cuda_set_matmul_mode(ops_ctx *c, ops_cuda_matmul_mode mode) {
    if (!is_cuda_ctx(c)) return cu_fail(c, "ops_cuda_set_matmul_mode: not a CUDA context");
    if (mode != OPS_CUDA_MATMUL_BF16 && mode != OPS_CUDA_MATMUL_TF32 &&
        mode != OPS_CUDA_MATMUL_FP32)
        return cu_fail(c, "ops_cuda_set_matmul_mode: unknown mode %d", (int)mode);
    cu_impl(c)->matmul_mode = mode;
    cu_impl(c)->gemm_compute = compute_for(mode);
    return 0;
}

extern "C" int ops_cuda_set_attention_mode(ops_ctx *c, ops_cuda_attention_mode mode) {
    if (!is_cuda_ctx(c)) return cu_fail(c, "ops_cuda_set_attention_mode: not a CUDA context");
    if (mode != OPS_CUDA_ATTENTION_FLASH && mode != OPS_CUDA_ATTENTION_NAIVE &&
        mode != OPS_CUDA_ATTENTION_TENSOR && mode != OPS_CUDA_ATTENTION_AUTO)
        return cu_fail(c, "ops_cuda_set_attention_mode: unknown mode %d", (int)mode);
    cu_impl(c)->attention_mode = mode;
    return 0;
}

// ---- context ----

static void release(cuda_impl *im) {
    if (!im) return;
    if (im->device >= 0) cudaSetDevice(im->device);
    if (im->stream) cudaStreamSynchronize(im->stream);
    if (im->blas) cublasDestroy(im->blas);
    if (im->blas_workspace) cudaFree(im->blas_workspace);
    if (im->scratch) cudaFree(im->scratch);
    if (im->pinned) cudaFreeHost(im->pinned);
    if (im->flags_host) cudaFreeHost(im->flags_host);
    if (im->flags_dev) cudaFree(im->flags_dev);
    if (im->stream) cudaStreamDestroy(im->stream);
    cudaGetLastError();
    free(im);
}

static void cuda_close(ops_ctx *c) {
    if (!c) return;
    release((cuda_impl *)c->impl);
    free(c);
}

static ops_backend make_table(void) {
    ops_backend b;
    memset(&b, 0, sizeof b);
    b.name = "cuda";
    b.alloc = cuda_alloc;
    b.free = cuda_free;
    b.to_device = cuda_to_device;
    b.to_host = cuda_to_host;
    b.copy = cuda_copy;
    b.zero = cuda_zero;
    b.sync = cuda_sync;
    b.matmul_forward = cuda_matmul_forward;
    b.matmul_backward = cuda_matmul_backward;
    b.cast_bf16 = cuda_cast_bf16;
    b.matmul_forward_bf16 = cuda_matmul_forward_bf16;
    b.matmul_backward_bf16 = cuda_matmul_backward_bf16;
    b.swiglu_forward_bf16 = cuda_swiglu_forward_bf16;
    b.swiglu_backward_bf16 = cuda_swiglu_backward_bf16;
    b.embedding_forward = cuda_embedding_forward;
    b.embedding_backward = cuda_embedding_backward;
    b.rmsnorm_forward = cuda_rmsnorm_forward;
    b.rmsnorm_backward = cuda_rmsnorm_backward;
    b.rope_forward = cuda_rope_forward;
    b.rope_backward = cuda_rope_backward;
    b.attention_forward = cuda_attention_forward;
    b.attention_backward = cuda_attention_backward;
    b.kv_store = cuda_kv_store;
    b.attention_decode = cuda_attention_decode;
    b.swiglu_forward = cuda_swiglu_forward;
    b.swiglu_backward = cuda_swiglu_backward;
    b.add_inplace = cuda_add_inplace;
    b.axpy2d = cuda_axpy2d;
    b.scale_inplace = cuda_scale_inplace;
    b.dropout = cuda_dropout;
    b.sum_squares = cuda_sum_squares;
    b.logprob_forward = cuda_logprob_forward;
    b.logprob_backward = cuda_logprob_backward;
    b.adamw_update = cuda_adamw_update;
    b.sample = cuda_sample;
    b.close = cuda_close;
    return b;
}

static const ops_backend cuda_backend = make_table();

static int is_cuda_ctx(const ops_ctx *c) {
    return c && c->be == &cuda_backend && c->impl;
}

// "bf16" / "tf32" / "fp32" (case-sensitive), else the default
// The modes named by CHORD_CUDA_MATMUL / CHORD_CUDA_ATTENTION (ops_cuda.h); unset or empty is
// the default. An unknown value is refused (a typo must not silently pick the default).
static int matmul_mode_from_env(ops_cuda_matmul_mode *mode, char *err, size_t errlen) {
    const char *s = getenv("CHORD_CUDA_MATMUL");
    *mode = OPS_CUDA_MATMUL_BF16;
    if (!s || !*s || strcmp(s, "bf16") == 0) return 0;
    if (strcmp(s, "fp32") == 0) {
        *mode = OPS_CUDA_MATMUL_FP32;
    } else if (strcmp(s, "tf32") == 0) {
        *mode = OPS_CUDA_MATMUL_TF32;
    } else {
        snprintf(err, errlen, "device: CHORD_CUDA_MATMUL: unknown mode '%s' (bf16, tf32 or fp32)",
                 s);
        return -1;
    }
    return 0;
}

static int attention_mode_from_env(ops_cuda_attention_mode *mode, char *err, size_t errlen) {
    const char *s = getenv("CHORD_CUDA_ATTENTION");
    *mode = OPS_CUDA_ATTENTION_AUTO;
    if (!s || !*s || strcmp(s, "auto") == 0) return 0;
    if (strcmp(s, "naive") == 0) {
        *mode = OPS_CUDA_ATTENTION_NAIVE;
    } else if (strcmp(s, "flash") == 0) {
        *mode = OPS_CUDA_ATTENTION_FLASH;
    } else if (strcmp(s, "tensor") == 0 || strcmp(s, "wmma") == 0) {
        *mode = OPS_CUDA_ATTENTION_TENSOR; // wmma: the tensor path's older kernels (tc init)
    } else {
        snprintf(err, errlen,
                 "device: CHORD_CUDA_ATTENTION: unknown mode '%s' (auto, tensor, wmma, flash or "
                 "naive)",
                 s);
        return -1;
    }
    return 0;
}

#define OPEN_CHECK(call, what)                                                                     \
    do {                                                                                           \
        cudaError_t oe_ = (call);                                                                  \
        if (oe_ != cudaSuccess) {                                                                  \
            cudaGetLastError();                                                                    \
            snprintf(err, errlen, "device: cuda:%d: %s failed: %s", device_index, what,            \
                     cudaGetErrorString(oe_));                                                     \
            goto fail;                                                                             \
        }                                                                                          \
    } while (0)

extern "C" ops_ctx *ops_cuda_open(int device_index, char *err, size_t errlen) {
    char dummy[8];
    if (!err || errlen == 0) {
        err = dummy;
        errlen = sizeof dummy;
    }
    ops_cuda_matmul_mode matmul_mode;
    ops_cuda_attention_mode attention_mode;
    if (matmul_mode_from_env(&matmul_mode, err, errlen) ||
        attention_mode_from_env(&attention_mode, err, errlen))
        return NULL;
    int n = ops_cuda_device_count();
    if (device_index < 0 || device_index >= n) {
        snprintf(err, errlen, "device: cuda:%d requested but %d CUDA device(s) are present",
                 device_index, n);
        return NULL;
    }
    ops_ctx *c = (ops_ctx *)calloc(1, sizeof *c);
    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    cudaDeviceProp prop;
    cublasStatus_t bs;
    if (!c || !im) {
        free(c);
        free(im);
        snprintf(err, errlen, "device: cuda:%d: out of host memory", device_index);
        return NULL;
    }
    im->device = device_index;
    c->be = &cuda_backend;
    c->impl = im;
    c->threads = 1;
    c->device_index = device_index;
    OPEN_CHECK(cudaSetDevice(device_index), "cudaSetDevice");
    OPEN_CHECK(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
    if (prop.major < 8) {
        snprintf(err, errlen,
                 "device: cuda:%d is %s (compute capability %d.%d); chord's CUDA backend is "
                 "built for sm_80 and sm_90",
                 device_index, prop.name, prop.major, prop.minor);
        goto fail;
    }
    im->num_sms = prop.multiProcessorCount > 0 ? prop.multiProcessorCount : 1;
    OPEN_CHECK(cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking), "cudaStreamCreate");
    OPEN_CHECK(cudaMallocHost((void **)&im->flags_host, sizeof(unsigned int)),
               "cudaMallocHost(flags)");
    *im->flags_host = 0;
    OPEN_CHECK(cudaMalloc((void **)&im->flags_dev, sizeof(unsigned int)), "cudaMalloc(flags)");
    OPEN_CHECK(cudaMemset(im->flags_dev, 0, sizeof(unsigned int)), "cudaMemset(flags)");
    bs = cublasCreate(&im->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        im->blas = NULL;
        snprintf(err, errlen, "device: cuda:%d: cublasCreate failed: %s", device_index,
                 cublasGetStatusString(bs));
        goto fail;
    }
    // a fixed workspace: cuBLAS then never allocates behind our back (32 MiB suits Hopper)
    im->blas_workspace_bytes = (size_t)32 << 20;
    OPEN_CHECK(cudaMalloc(&im->blas_workspace, im->blas_workspace_bytes), "cudaMalloc(workspace)");
    bs = cublasSetStream(im->blas, im->stream);
    if (bs == CUBLAS_STATUS_SUCCESS)
        bs = cublasSetWorkspace(im->blas, im->blas_workspace, im->blas_workspace_bytes);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetPointerMode(im->blas, CUBLAS_POINTER_MODE_HOST);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "device: cuda:%d: cuBLAS set-up failed: %s", device_index,
                 cublasGetStatusString(bs));
        goto fail;
    }
    im->matmul_mode = matmul_mode;
    im->gemm_compute = compute_for(im->matmul_mode);
    im->attention_mode = attention_mode;
    if (cuda_attention_init(c) != 0) {
        snprintf(err, errlen, "device: cuda:%d: %s", device_index, c->last_error);
        goto fail;
    }
    return c;
fail:
    release(im);
    free(c);
    return NULL;
}
