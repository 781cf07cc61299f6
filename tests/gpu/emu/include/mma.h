/* mma.h — stands in for CUDA's warp matrix API (nvcuda::wmma) in the CPU emulator
 * (../cuda_emu.h), for the 16 x 16 x 16 bf16 shapes with fp32 accumulators that kernels/cuda uses.
 *
 * A fragment here holds its whole tile in every lane (the GPU spreads it over the warp in an
 * unspecified layout, which kernels must not rely on: they only load, multiply and store), so
 * each lane repeats the warp's work; loads and stores are exact, products accumulate in fp32.
 * Every load ends with a warp barrier, so no lane stores a tile before all have loaded it (the
 * lanes' repeated read-modify-write of an accumulator in shared memory then happens once).
 * A missing __syncwarp between lanes' own writes and a warp-wide load still shows (the loading
 * fiber runs before the others have written), but one between a warp-wide store and the lanes'
 * reads of it does not: every fiber stores the whole tile itself. */
#ifndef CHORD_EMU_MMA_H
#define CHORD_EMU_MMA_H
#include <type_traits>

#include "../cuda_emu.h"
#include "cuda_bf16.h"

namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "emulated wmma: 16x16x16 only");
    T t[16][16]; /* logical (row, column) of the tile: a is M x K, b is K x N, c is M x N */
};

template <typename T> static inline float emu_wmma_f(T v);
template <> inline float emu_wmma_f<float>(float v) {
    return v;
}
template <> inline float emu_wmma_f<__nv_bfloat16>(__nv_bfloat16 v) {
    return __bfloat162float(v);
}

template <typename Use, typename T, typename Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const T *p,
                                    unsigned ldm) {
    const bool col = std::is_same<Layout, col_major>::value;
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.t[r][c] = col ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    __syncwarp();
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &f, const float *p,
                                    unsigned ldm, layout_t l) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.t[r][c] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    __syncwarp();
}
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &f,
                                     unsigned ldm, layout_t l) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            (l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.t[r][c];
}
static inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v) {
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            f.t[r][c] = v;
}
template <typename T, typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                            const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c) {
    float out[16][16];
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 16; n++) {
            float s = c.t[r][n];
            for (int k = 0; k < 16; k++)
                s += emu_wmma_f<T>(a.t[r][k]) * emu_wmma_f<T>(b.t[k][n]);
            out[r][n] = s;
        }
    memcpy(d.t, out, sizeof out);
}
} // namespace wmma
} // namespace nvcuda
#endif
