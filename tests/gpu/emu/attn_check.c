/* attn_check.c — the packed attention ops alone, CUDA backend against the CPU backend, with each
 * output's error on its own line: a quick loop for work on the attention kernels in the CPU
 * emulator (seconds, where gpu_check's full op list takes minutes). Not a substitute for
 * gpu_check, which stays the record.
 * Build and run: CUDA_EMU_PROGRAM=tests/gpu/emu/attn_check.c tests/gpu/emu/run.sh BUILD_DIR
 *                [tensor|flash|naive|auto] [D ...]  (default: tensor, D = 64 80 128)
 * Exit: 0 when every error is below 1e-2 (tensor, auto) or 1e-4 (flash, naive), else 1. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/ops_cuda.h"
#include "kernels/ops.h"

static ops_ctx *CPU, *GPU;
static int failed;

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand1(void) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

static void *up(ops_ctx *c, const void *host, size_t bytes) {
    void *p = ops_alloc(c, bytes);
    if (!p || (host && ops_to_device(c, p, host, bytes) != 0)) {
        fprintf(stderr, "attn_check: alloc/upload: %s\n", ops_last_error(c));
        exit(1);
    }
    return p;
}

static void down(ops_ctx *c, void *host, const void *p, size_t bytes) {
    if (ops_to_host(c, host, p, bytes) != 0) {
        fprintf(stderr, "attn_check: to_host: %s\n", ops_last_error(c));
        exit(1);
    }
}

/* relative L2 error of columns [col, col + w) of rows of width ld */
static void report(const char *what, int D, const float *g, const float *c, int rows, int ld,
                   int col, int w, double tol) {
    double num = 0, den = 0;
    int finite = 1;
    for (int r = 0; r < rows; r++)
        for (int j = col; j < col + w; j++) {
            const double a = g[(size_t)r * ld + j], b = c[(size_t)r * ld + j];
            if (!isfinite(a) || !isfinite(b)) finite = 0;
            num += (a - b) * (a - b);
            den += b * b;
        }
    const double err = finite ? sqrt(num / (den > 0 ? den : 1)) : NAN;
    const int ok = finite && err < tol;
    failed |= !ok;
    printf("  D=%-3d %-4s err %.3e %s\n", D, what, err, ok ? "ok" : "FAIL");
}

static void run(int D, int Hq, int Hkv, double tol) {
    static const int lens[] = {1, 0, 31, 32, 33, 100, 257, 64, 130};
    const int S = (int)(sizeof lens / sizeof lens[0]), QKV = (Hq + 2 * Hkv) * D;
    int32_t cu[16];
    cu[0] = 0;
    for (int s = 0; s < S; s++)
        cu[s + 1] = cu[s] + lens[s];
    const int N = cu[S];
    const size_t nqkv = (size_t)N * QKV, no = (size_t)N * Hq * D;
    float *qkv = malloc(nqkv * 4), *dout = malloc(no * 4), *junk = malloc(nqkv * 4);
    for (size_t i = 0; i < nqkv; i++)
        qkv[i] = frand1(), junk[i] = 5.0f * frand1();
    for (size_t i = 0; i < no; i++)
        dout[i] = frand1();
    float *res[2][3]; /* [side][out, lse, dqkv] */
    for (int side = 0; side < 2; side++) {
        ops_ctx *c = side ? GPU : CPU;
        float *bq = up(c, qkv, nqkv * 4), *bo = up(c, NULL, no * 4);
        float *bl = up(c, NULL, (size_t)N * Hq * 4), *bd = up(c, dout, no * 4);
        float *bdq = up(c, junk, nqkv * 4);
        int32_t *bcu = up(c, cu, (S + 1) * 4);
        float *q = bq, *k = q + Hq * D, *v = k + Hkv * D;
        float *dq = bdq, *dk = dq + Hq * D, *dv = dk + Hkv * D;
        if (ops_attention_forward(c, bo, bl, q, QKV, k, QKV, v, QKV, bcu, S, N, Hq, Hkv, D) ||
            ops_attention_backward(c, dq, dk, dv, bd, q, QKV, k, QKV, v, QKV, bo, bl, bcu, S, N, Hq,
                                   Hkv, D)) {
            fprintf(stderr, "attn_check: %s: %s\n", c->be->name, ops_last_error(c));
            exit(1);
        }
        res[side][0] = malloc(no * 4), res[side][1] = malloc((size_t)N * Hq * 4);
        res[side][2] = malloc(nqkv * 4);
        down(c, res[side][0], bo, no * 4);
        down(c, res[side][1], bl, (size_t)N * Hq * 4);
        down(c, res[side][2], bdq, nqkv * 4);
        ops_free(c, bq), ops_free(c, bo), ops_free(c, bl), ops_free(c, bd);
        ops_free(c, bdq), ops_free(c, bcu);
    }
    printf("D=%d Hq=%d Hkv=%d N=%d\n", D, Hq, Hkv, N);
    report("out", D, res[1][0], res[0][0], N, Hq * D, 0, Hq * D, tol);
    report("lse", D, res[1][1], res[0][1], N, Hq, 0, Hq, tol);
    report("dq", D, res[1][2], res[0][2], N, QKV, 0, Hq * D, tol);
    report("dk", D, res[1][2], res[0][2], N, QKV, Hq * D, Hkv * D, tol);
    report("dv", D, res[1][2], res[0][2], N, QKV, (Hq + Hkv) * D, Hkv * D, tol);
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < 3; i++)
            free(res[s][i]);
    free(qkv), free(dout), free(junk);
}

int main(int argc, char **argv) {
    char err[256];
    CPU = ops_open("cpu", 0, err, sizeof err);
    GPU = CPU ? ops_open("cuda:0", 0, err, sizeof err) : NULL;
    if (!CPU || !GPU) {
        fprintf(stderr, "attn_check: %s\n", err);
        return 77;
    }
    int a = 1;
    ops_cuda_attention_mode mode = OPS_CUDA_ATTENTION_TENSOR;
    if (a < argc && strcmp(argv[a], "flash") == 0)
        mode = OPS_CUDA_ATTENTION_FLASH, a++;
    else if (a < argc && strcmp(argv[a], "naive") == 0)
        mode = OPS_CUDA_ATTENTION_NAIVE, a++;
    else if (a < argc && strcmp(argv[a], "auto") == 0)
        mode = OPS_CUDA_ATTENTION_AUTO, a++;
    else if (a < argc && strcmp(argv[a], "tensor") == 0)
        a++;
    if (ops_cuda_set_attention_mode(GPU, mode) != 0) {
        fprintf(stderr, "attn_check: %s\n", ops_last_error(GPU));
        return 1;
    }
    const double tol =
        mode == OPS_CUDA_ATTENTION_FLASH || mode == OPS_CUDA_ATTENTION_NAIVE ? 1e-4 : 1e-2;
    if (a == argc) {
        run(64, 8, 2, tol);
        run(64, 4, 4, tol);
        run(80, 8, 2, tol);
        run(128, 8, 2, tol);
    }
    for (; a < argc; a++)
        run(atoi(argv[a]), 8, 2, tol);
    ops_close(GPU);
    ops_close(CPU);
    printf(failed ? "FAIL\n" : "all ok\n");
    return failed;
}
