/* cuda_bf16.h — stands in for the CUDA header of that name in the CPU emulator (../cuda_emu.h):
 * __nv_bfloat16 as its 16 bits, conversions rounding to nearest even as the GPU's do. */
#ifndef CHORD_EMU_CUDA_BF16_H
#define CHORD_EMU_CUDA_BF16_H
#include "../cuda_emu.h"

struct __nv_bfloat16 {
    unsigned short x;
};
static inline __nv_bfloat16 __float2bfloat16(float f) {
    unsigned int u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) { /* NaN stays a (quiet) NaN */
        h.x = (unsigned short)((u >> 16) | 0x40u);
        return h;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    h.x = (unsigned short)(u >> 16);
    return h;
}
static inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) {
    return h.x;
}
static inline float __bfloat162float(__nv_bfloat16 h) {
    unsigned int u = (unsigned int)h.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif
