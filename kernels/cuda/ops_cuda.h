/* ops_cuda.h — knobs of the CUDA backend that the generic op table (kernels/ops.h) has no place
 * for: GEMM precision and the attention kernel. Only code that is built with the CUDA backend
 * (CHORD_HAVE_CUDA, e.g. tests/gpu) may call these; everything else goes through ops.h.
 *
 * Defaults come from the environment at ops_cuda_open:
 *   CHORD_CUDA_MATMUL    = bf16 (default) | tf32 | fp32
 *       bf16: fp32 storage, bf16 tensor-core products, fp32 accumulation
 *             (CUBLAS_COMPUTE_32F_FAST_16BF) — the training default;
 *       tf32: CUBLAS_COMPUTE_32F_FAST_TF32;
 *       fp32: exact fp32 (CUBLAS_COMPUTE_32F), for verification against the CPU backend.
 *   CHORD_CUDA_ATTENTION = auto (default) | tensor | wmma | flash | naive
 *       tensor: flash attention on tensor cores (bf16 products, fp32 softmax and accumulation;
 *              cuda_attention_tc.cu) for head sizes D % 16 == 0, D <= 128 where the device's shared
 *              memory allows; other head sizes use flash;
 *       wmma: tensor, with the earlier wmma 16 x 16 x 16 kernels instead of mma.sync (comparison);
 *       flash: tiled online-softmax kernels in fp32 on CUDA cores that never hold a T x T matrix,
 *              backward recomputed from the saved log-sum-exp;
 *       naive: one warp per (row, head), the simple reference kernel (backward with atomics);
 *       auto:  tensor while the GEMMs are bf16, flash with tf32 or fp32 GEMMs (so fp32 mode stays
 *              the exact verification path).
 *   An unknown value of either makes ops_cuda_open fail with a message naming the variable. */
#ifndef CHORD_KERNELS_CUDA_OPS_CUDA_H
#define CHORD_KERNELS_CUDA_OPS_CUDA_H

#include "kernels/ops.h"

typedef enum {
    OPS_CUDA_MATMUL_BF16 = 0,
    OPS_CUDA_MATMUL_TF32 = 1,
    OPS_CUDA_MATMUL_FP32 = 2
} ops_cuda_matmul_mode;

typedef enum {
    OPS_CUDA_ATTENTION_FLASH = 0,
    OPS_CUDA_ATTENTION_NAIVE = 1,
    OPS_CUDA_ATTENTION_TENSOR = 2,
    OPS_CUDA_ATTENTION_AUTO = 3
} ops_cuda_attention_mode;

/* Both return 0, or -1 when c is not a CUDA context (ops_last_error says so). */
int ops_cuda_set_matmul_mode(ops_ctx *c, ops_cuda_matmul_mode mode);
int ops_cuda_set_attention_mode(ops_ctx *c, ops_cuda_attention_mode mode);

#endif
