// cuda_emu.cpp — the CUDA emulator's scheduler, runtime and cuBLAS stand-ins (cuda_emu.h).
// x86-64 only (the fiber switch is a few lines of assembly).
#include "cuda_emu.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
// a fiber that ended (or was switched away from) leaves its frames' redzones poisoned
#define EMU_UNPOISON(p, n) __asan_unpoison_memory_region((p), (n))
#else
#define EMU_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

// ---- fibers ----

extern "C" void emu_switch(void **save_sp, void *load_sp);
asm(R"(
.text
.globl emu_switch
.type emu_switch,@function
emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size emu_switch, .-emu_switch
)");

uint3 threadIdx, blockIdx;
dim3 blockDim, gridDim;

enum { RUN = 0, WAIT_BLOCK = 1, WAIT_WARP = 2, DONE = 3 };
enum { STACK_BYTES = 128 * 1024, MAX_THREADS = 1024 };

static char *stacks;                    // MAX_THREADS stacks
static void *fiber_sp[MAX_THREADS];     // saved stack pointers
static int fiber_state[MAX_THREADS];    //
static uint64_t warp_slot[MAX_THREADS]; // shuffle values, by linear thread id
static void *sched_sp;                  // the scheduler's stack pointer
static int cur;                         // the running fiber
static int nthreads;
static void (*cur_invoke)(const void *);
static const void *cur_closure;
static int bar_acc, bar_result;
static void *dyn_smem;
static const char *cur_kernel = "kernel";
// CUDA_EMU_ORDER=reverse runs the fibers of a block last to first between sync points: a result
// that differs from the default order shows a missing barrier (a race the GPU may lose)
static int reverse_order = -1;

static void set_indices(int t) {
    threadIdx.x = (unsigned)t % blockDim.x;
    threadIdx.y = ((unsigned)t / blockDim.x) % blockDim.y;
    threadIdx.z = (unsigned)t / (blockDim.x * blockDim.y);
}

int emu_lane(void) {
    return cur & 31;
}

void *emu_dyn_smem(void) {
    return dyn_smem;
}

static void yield_to_scheduler(int state) {
    fiber_state[cur] = state;
    emu_switch(&fiber_sp[cur], sched_sp);
}

__attribute__((noreturn)) static void fiber_entry(void) {
    cur_invoke(cur_closure);
    fiber_state[cur] = DONE;
    void *dummy;
    emu_switch(&dummy, sched_sp);
    abort(); // never resumed
}

static void fiber_init(int t) {
    EMU_UNPOISON(stacks + (size_t)t * STACK_BYTES, STACK_BYTES);
    char *top = stacks + (size_t)(t + 1) * STACK_BYTES;
    uintptr_t T = (uintptr_t)top & ~(uintptr_t)15;
    void **sp = (void **)(T - 16);
    sp[0] = (void *)fiber_entry; // the `ret` of the first switch lands here
    sp[1] = nullptr;             // alignment slot: fiber_entry starts with rsp % 16 == 8
    sp -= 6;                     // r15 r14 r13 r12 rbx rbp
    for (int i = 0; i < 6; i++)
        sp[i] = nullptr;
    fiber_sp[t] = (void *)sp;
    fiber_state[t] = RUN;
}

void __syncthreads(void) {
    yield_to_scheduler(WAIT_BLOCK);
}

int __syncthreads_or(int p) {
    bar_acc |= p != 0;
    yield_to_scheduler(WAIT_BLOCK);
    return bar_result;
}

uint64_t emu_warp_exchange(uint64_t bits, int src_lane) {
    warp_slot[cur] = bits;
    yield_to_scheduler(WAIT_WARP); // every live lane has written
    uint64_t r = warp_slot[(cur & ~31) + src_lane];
    yield_to_scheduler(WAIT_WARP); // every live lane has read
    return r;
}

// warp-collective instructions: every live lane publishes a pointer to its operands, then reads
// the others' (fibers switch only at the two barriers, so the pointed-to values stay put)
static void publish(const void *mine) {
    warp_slot[cur] = (uint64_t)(uintptr_t)mine;
    yield_to_scheduler(WAIT_WARP); // every live lane has published
}
static const void *published(int lane) {
    return (const void *)(uintptr_t)warp_slot[(cur & ~31) + lane];
}

static inline float bf16_half(uint32_t r, int hi) {
    uint32_t u = hi ? (r & 0xffff0000u) : (r << 16);
    float f;
    memcpy(&f, &u, 4);
    return f;
}

void emu_mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2]) {
    uint32_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
    publish(mine);
    const int lane = cur & 31, g = lane >> 2, t = lane & 3;
    float out[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >> 1) * 8, col = 2 * t + (e & 1);
        float s = d[e];
        for (int k = 0; k < 16; k++) {
            // A(row, k): lane 4 (row % 8) + (k % 8) / 2, register (k >= 8) * 2 + (row >= 8)
            const uint32_t *pa = (const uint32_t *)published(4 * (row & 7) + ((k & 7) >> 1));
            const float av = bf16_half(pa[(k >> 3) * 2 + (row >> 3)], k & 1);
            // B(k, col): lane 4 col + (k % 8) / 2, register 4 + (k >= 8)
            const uint32_t *pb = (const uint32_t *)published(4 * col + ((k & 7) >> 1));
            const float bv = bf16_half(pb[4 + (k >> 3)], k & 1);
            s += av * bv;
        }
        out[e] = s;
    }
    yield_to_scheduler(WAIT_WARP); // every live lane has read
    memcpy(d, out, sizeof out);
}

void emu_ldmatrix_x4(uint32_t r[4], const void *row, int trans) {
    publish(row);
    const int lane = cur & 31, g = lane >> 2, t = lane & 3;
    uint32_t out[4];
    for (int i = 0; i < 4; i++) {
        if (!trans) {
            const uint16_t *p = (const uint16_t *)published(8 * i + g);
            out[i] = (uint32_t)p[2 * t] | (uint32_t)p[2 * t + 1] << 16;
        } else {
            const uint16_t *p0 = (const uint16_t *)published(8 * i + 2 * t);
            const uint16_t *p1 = (const uint16_t *)published(8 * i + 2 * t + 1);
            out[i] = (uint32_t)p0[g] | (uint32_t)p1[g] << 16;
        }
    }
    yield_to_scheduler(WAIT_WARP); // every live lane has read
    memcpy(r, out, sizeof out);
}

static void run_block(void) {
    int live = nthreads;
    for (int t = 0; t < nthreads; t++)
        fiber_init(t);
    while (live > 0) {
        for (int i = 0; i < nthreads; i++) {
            int t = reverse_order ? nthreads - 1 - i : i;
            if (fiber_state[t] == RUN) {
                cur = t;
                set_indices(t);
                emu_switch(&sched_sp, fiber_sp[t]);
            }
        }
        live = 0;
        int released = 0, waiting_block = 0;
        for (int w = 0; w < nthreads; w += 32) {
            int wl = 0, ww = 0;
            for (int t = w; t < w + 32 && t < nthreads; t++) {
                if (fiber_state[t] != DONE) wl++;
                if (fiber_state[t] == WAIT_WARP) ww++;
            }
            live += wl;
            if (ww > 0 && ww == wl) {
                for (int t = w; t < w + 32 && t < nthreads; t++)
                    if (fiber_state[t] == WAIT_WARP) fiber_state[t] = RUN;
                released++;
            }
        }
        if (released || live == 0) continue;
        for (int t = 0; t < nthreads; t++)
            waiting_block += fiber_state[t] == WAIT_BLOCK;
        if (waiting_block == live) {
            bar_result = bar_acc;
            bar_acc = 0;
            for (int t = 0; t < nthreads; t++)
                if (fiber_state[t] == WAIT_BLOCK) fiber_state[t] = RUN;
            continue;
        }
        fprintf(stderr,
                "cuda_emu: deadlock in %s block (%u,%u,%u): %d live threads, %d at "
                "__syncthreads, the rest at a warp shuffle with lanes elsewhere\n",
                cur_kernel, blockIdx.x, blockIdx.y, blockIdx.z, live, waiting_block);
        abort();
    }
}

void emu_launch_raw(const emu_cfg &cfg, const char *name, void (*invoke)(const void *),
                    const void *closure) {
    cur_kernel = name;
    unsigned int nt = cfg.block.x * cfg.block.y * cfg.block.z;
    if (nt == 0 || nt > MAX_THREADS || nt % 32 != 0) {
        fprintf(stderr, "cuda_emu: unsupported block of %u threads\n", nt);
        abort();
    }
    if (reverse_order < 0) {
        const char *o = getenv("CUDA_EMU_ORDER");
        reverse_order = o && strcmp(o, "reverse") == 0;
    }
    if (!stacks) {
        stacks = (char *)malloc((size_t)MAX_THREADS * STACK_BYTES);
        if (!stacks) abort();
    }
    gridDim = cfg.grid;
    blockDim = cfg.block;
    nthreads = (int)nt;
    cur_invoke = invoke;
    cur_closure = closure;
    for (unsigned z = 0; z < cfg.grid.z; z++)
        for (unsigned y = 0; y < cfg.grid.y; y++)
            for (unsigned x = 0; x < cfg.grid.x; x++) {
                blockIdx.x = x;
                blockIdx.y = y;
                blockIdx.z = z;
                dyn_smem = nullptr;
                if (cfg.smem) {
                    dyn_smem = malloc(cfg.smem);
                    if (!dyn_smem) abort();
                    memset(dyn_smem, 0xff, cfg.smem); // NaN: an unwritten read shows
                }
                bar_acc = 0;
                run_block();
                free(dyn_smem);
                dyn_smem = nullptr;
            }
}

// ---- runtime ----

extern "C" {

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorMemoryAllocation:
        return "out of memory (emulated)";
    case cudaErrorNoDevice:
        return "no CUDA-capable device is detected (emulated)";
    default:
        return "invalid argument (emulated)";
    }
}
cudaError_t cudaGetLastError(void) {
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n) {
    *n = getenv("CUDA_EMU_NO_DEVICE") ? 0 : 1;
    return *n ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int d) {
    return d == 0 ? cudaSuccess : cudaErrorInvalidValue;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (d != 0) return cudaErrorInvalidValue;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cuda_emu (CPU emulation)");
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 2; // small grids: the grid-stride loops get exercised
    p->totalGlobalMem = (size_t)8 << 30;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, cudaDeviceAttr a, int d) {
    if (d != 0 || a != cudaDevAttrMaxSharedMemoryPerBlockOptin) return cudaErrorInvalidValue;
    *v = 227 * 1024; // an H100's
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 0;
    return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 0;
    return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int) {
    *s = (cudaStream_t)malloc(1);
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    free(s);
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) {
    return cudaSuccess;
}
cudaError_t emu_malloc(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    if (!*p) return cudaErrorMemoryAllocation;
    memset(*p, 0xff, n); // NaN-filled: device memory is not zeroed by cudaMalloc
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t emu_malloc_host(void **p, size_t n) {
    *p = malloc(n ? n : 1);
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaFreeHost(void *p) {
    free(p);
    return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind, cudaStream_t) {
    memmove(dst, src, n);
    return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    memset(p, v, n);
    return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
    *f = (size_t)6 << 30;
    *t = (size_t)8 << 30;
    return cudaSuccess;
}

// ---- cuBLAS ----

cublasStatus_t cublasCreate(cublasHandle_t *h) {
    *h = (cublasHandle_t)malloc(1);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream(cublasHandle_t, cudaStream_t) {
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetWorkspace(cublasHandle_t, void *, size_t) {
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetPointerMode(cublasHandle_t, cublasPointerMode_t) {
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    return s == CUBLAS_STATUS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "CUBLAS_STATUS_INVALID_VALUE";
}

// x rounded to `bits` mantissa bits, to nearest even (bf16: 7, tf32: 10)
static float round_mantissa(float x, int bits) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return x; // inf / NaN
    int drop = 23 - bits;
    uint32_t half = 1u << (drop - 1), lsb = (u >> drop) & 1u;
    u = (u + half - 1 + lsb) & ~((1u << drop) - 1);
    memcpy(&x, &u, 4);
    return x;
}

// a copy of the column-major (rows x cols, ld) matrix with its mantissas rounded
static float *rounded(const float *A, int rows, int cols, int ld, int bits) {
    float *R = (float *)malloc((size_t)(cols > 0 ? cols : 1) * ld * sizeof(float));
    if (!R) abort();
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++)
            R[(size_t)j * ld + i] = round_mantissa(A[(size_t)j * ld + i], bits);
    return R;
}

// a float32 copy of the column-major (rows x cols, ld) bf16 matrix (exact)
static float *widened_bf16(const void *A, int rows, int cols, int ld) {
    const uint16_t *h = (const uint16_t *)A;
    float *R = (float *)malloc((size_t)(cols > 0 ? cols : 1) * ld * sizeof(float));
    if (!R) abort();
    for (int j = 0; j < cols; j++)
        for (int i = 0; i < rows; i++) {
            uint32_t u = (uint32_t)h[(size_t)j * ld + i] << 16;
            memcpy(&R[(size_t)j * ld + i], &u, 4);
        }
    return R;
}

cublasStatus_t cublasGemmEx(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, const void *alpha, const void *A, cudaDataType at,
                            int lda, const void *B, cudaDataType bt, int ldb, const void *beta,
                            void *C, cudaDataType ct, int ldc, cublasComputeType_t compute,
                            cublasGemmAlgo_t) {
    if (m < 0 || n < 0 || k < 0) return CUBLAS_STATUS_INVALID_VALUE;
    // what the kernels use: A and B both float32 or both bf16, C float32
    if (at != bt || ct != CUDA_R_32F || (at != CUDA_R_32F && at != CUDA_R_16BF))
        return CUBLAS_STATUS_INVALID_VALUE;
    if (at == CUDA_R_16BF && compute != CUBLAS_COMPUTE_32F) return CUBLAS_STATUS_INVALID_VALUE;
    if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
    int bits = compute == CUBLAS_COMPUTE_32F_FAST_16BF   ? 7
               : compute == CUBLAS_COMPUTE_32F_FAST_TF32 ? 10
                                                         : 23;
    int ar = ta == CUBLAS_OP_N ? m : k, ac = ta == CUBLAS_OP_N ? k : m;
    int br = tb == CUBLAS_OP_N ? k : n, bc = tb == CUBLAS_OP_N ? n : k;
    const float *a = (const float *)A, *b = (const float *)B;
    float *ra = NULL, *rb = NULL;
    if (at == CUDA_R_16BF) {
        ra = widened_bf16(A, ar, ac, lda);
        rb = widened_bf16(B, br, bc, ldb);
    } else if (bits < 23) {
        ra = rounded(a, ar, ac, lda, bits);
        rb = rounded(b, br, bc, ldb, bits);
    }
    if (ra) {
        a = ra;
        b = rb;
    }
    cblas_sgemm(CblasColMajor, ta == CUBLAS_OP_N ? CblasNoTrans : CblasTrans,
                tb == CUBLAS_OP_N ? CblasNoTrans : CblasTrans, m, n, k, *(const float *)alpha, a,
                lda, b, ldb, *(const float *)beta, (float *)C, ldc);
    free(ra);
    free(rb);
    return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"
