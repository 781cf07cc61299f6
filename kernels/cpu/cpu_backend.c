/* cpu_backend.c — the CPU backend's context, memory ops, GEMM splitting and op table (ops.h).
 * Device memory is host memory (64-byte aligned). */
#include "kernels/cpu/cpu_internal.h"

#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* after ops.h: OpenBLAS's cblas.h pulls in <complex.h>, whose `I` macro would break the
 * `int I` parameters of ops.h */
#include <cblas.h>
#undef I

int cpu_fail(ops_ctx *c, const char *fmt, ...) {
    if (!c) return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->last_error, sizeof c->last_error, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- memory ---- */

/* 64-byte aligned, zero-filled. calloc rather than memset: large blocks come from fresh mmap'd
 * pages the kernel zero-fills on first touch, so a big buffer is not written twice. The pointer
 * calloc returned sits just below the aligned block. */
static void *cpu_alloc(ops_ctx *c, size_t bytes) {
    size_t extra = 64 + sizeof(void *);
    if (bytes > SIZE_MAX - extra) {
        cpu_fail(c, "alloc: %zu bytes overflows", bytes);
        return NULL;
    }
    char *raw = calloc(1, bytes + extra);
    if (!raw) {
        cpu_fail(c, "alloc: out of memory (%zu bytes)", bytes);
        return NULL;
    }
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + 63) & ~(uintptr_t)63;
    ((void **)a)[-1] = raw;
    return (void *)a;
}

static void cpu_free(ops_ctx *c, void *p) {
    if (p) free(((void **)p)[-1]);
}

static int cpu_to_device(ops_ctx *c, void *dst, const void *src_host, size_t bytes) {
    if (bytes == 0) return 0;
    if (!dst || !src_host) return cpu_fail(c, "to_device: NULL pointer");
    memcpy(dst, src_host, bytes);
    return 0;
}

static int cpu_to_host(ops_ctx *c, void *dst_host, const void *src, size_t bytes) {
    if (bytes == 0) return 0;
    if (!dst_host || !src) return cpu_fail(c, "to_host: NULL pointer");
    memcpy(dst_host, src, bytes);
    return 0;
}

static int cpu_copy(ops_ctx *c, void *dst, const void *src, size_t bytes) {
    if (bytes == 0) return 0;
    if (!dst || !src) return cpu_fail(c, "copy: NULL pointer");
    memmove(dst, src, bytes);
    return 0;
}

static int cpu_zero(ops_ctx *c, void *p, size_t bytes) {
    if (bytes == 0) return 0;
    if (!p) return cpu_fail(c, "zero: NULL pointer");
    memset(p, 0, bytes);
    return 0;
}

static int cpu_sync(ops_ctx *c) {
    return 0;
}

/* ---- GEMM: single-threaded OpenBLAS calls on row / column blocks, one per OpenMP thread ---- */

static void gemm1(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        for (int i = 0; i < M; i++) {
            float *row = C + (size_t)i * ldc;
            if (beta == 0.0f)
                memset(row, 0, (size_t)N * sizeof(float));
            else
                for (int j = 0; j < N; j++)
                    row[j] *= beta;
        }
        return;
    }
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans,
                transB ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void cpu_blas_single(void) {
    if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
}

/* one row: C (1,N) = alpha * a (1,K) op(B) + beta * C as a GEMV (sgemm would pack all of B,
 * doubling the memory traffic of what is a memory-bound product) */
static void gemv_row(int transB, int N, int K, float alpha, const float *a, const float *B, int ldb,
                     float beta, float *C) {
    if (N <= 0) return;
    if (K <= 0) {
        gemm1(0, 0, 1, N, 0, alpha, a, 1, B, ldb, beta, C, N);
        return;
    }
    if (transB) /* B (N,K): C = B a */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, N, K, alpha, B, ldb, a, 1, beta, C, 1);
    else /* B (K,N): C = B^T a */
        cblas_sgemv(CblasRowMajor, CblasTrans, K, N, alpha, B, ldb, a, 1, beta, C, 1);
}

void cpu_gemm(ops_ctx *c, int transA, int transB, int M, int N, int K, float alpha, const float *A,
              int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    int nt = cpu_threads(c);
    cpu_blas_single();
    if (M == 1 && !transA) {
        int units = (N + 63) / 64;
        if ((double)N * K < 1e6 || units < 2) nt = 1;
        if (nt > units) nt = units;
#pragma omp parallel num_threads(nt)
        {
            int tid = omp_get_thread_num(), n = omp_get_num_threads();
            int a = (int)((long)units * tid / n) * 64, b = (int)((long)units * (tid + 1) / n) * 64;
            if (b > N) b = N;
            if (b > a)
                gemv_row(transB, b - a, K, alpha, A, transB ? B + (size_t)a * ldb : B + a, ldb,
                         beta, C + a);
        }
        return;
    }
    double flops = 2.0 * M * (double)N * (double)K;
    if (nt <= 1 || flops < 4e6 || (M < 32 && N < 64)) {
        gemm1(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    /* split the larger output dimension; blocks aligned to the BLAS micro-tile */
    int split_m = (double)M * 4 >= (double)N;
    int dim = split_m ? M : N;
    int align = split_m ? 16 : 64;
    if (dim / align < nt) align = split_m ? 4 : 16;
    int units = (dim + align - 1) / align;
    if (units < nt) nt = units > 0 ? units : 1;
#pragma omp parallel num_threads(nt)
    {
        int tid = omp_get_thread_num(), n = omp_get_num_threads();
        int u0 = (int)((long)units * tid / n), u1 = (int)((long)units * (tid + 1) / n);
        int a = u0 * align, b = u1 * align;
        if (b > dim) b = dim;
        if (b > a) {
            if (split_m) {
                const float *As = transA ? A + a : A + (size_t)a * lda;
                gemm1(transA, transB, b - a, N, K, alpha, As, lda, B, ldb, beta,
                      C + (size_t)a * ldc, ldc);
            } else {
                const float *Bs = transB ? B + (size_t)a * ldb : B + a;
                gemm1(transA, transB, M, b - a, K, alpha, A, lda, Bs, ldb, beta, C + a, ldc);
            }
        }
    }
}

/* ---- context ---- */

static void cpu_close(ops_ctx *c) {
    if (!c) return;
    cpu_impl *im = c->impl;
    if (im) {
        free(im->rope_tab);
        free(im->rope_freq);
        free(im);
    }
    free(c);
}

static const ops_backend cpu_backend = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_device = cpu_to_device,
    .to_host = cpu_to_host,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .sync = cpu_sync,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .cast_bf16 = cpu_cast_bf16,
    .matmul_forward_bf16 = cpu_matmul_forward_bf16,
    .matmul_backward_bf16 = cpu_matmul_backward_bf16,
    .swiglu_forward_bf16 = cpu_swiglu_forward_bf16,
    .swiglu_backward_bf16 = cpu_swiglu_backward_bf16,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .attention_forward = cpu_attention_forward,
    .attention_backward = cpu_attention_backward,
    .kv_store = cpu_kv_store,
    .attention_decode = cpu_attention_decode,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add_inplace = cpu_add_inplace,
    .axpy2d = cpu_axpy2d,
    .scale_inplace = cpu_scale_inplace,
    .dropout = cpu_dropout,
    .sum_squares = cpu_sum_squares,
    .logprob_forward = cpu_logprob_forward,
    .logprob_backward = cpu_logprob_backward,
    .adamw_update = cpu_adamw_update,
    .sample = cpu_sample,
    .close = cpu_close,
};

ops_ctx *ops_cpu_open(int threads, char *err, size_t errlen) {
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (int)n : 1;
    }
    if (threads > 1024) threads = 1024;
    ops_ctx *c = calloc(1, sizeof *c);
    cpu_impl *im = calloc(1, sizeof *im);
    if (!c || !im) {
        free(c);
        free(im);
        if (err && errlen) snprintf(err, errlen, "device: cpu: out of memory");
        return NULL;
    }
    im->threads = threads;
    c->be = &cpu_backend;
    c->impl = im;
    c->threads = threads;
    c->device_index = -1;
    /* BLAS runs inside our OpenMP threads (cpu_gemm), never with its own pool */
    openblas_set_num_threads(1);
    return c;
}
