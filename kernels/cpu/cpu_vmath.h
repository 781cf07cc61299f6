/* cpu_vmath.h — vectorisable scalar math for the CPU backend.
 *
 * GCC does not vectorise calls to expf without -ffast-math, and a scalar expf costs ~10x a
 * polynomial one in a vector loop, so the softmax / SiLU / log-prob loops use cpu_expf: a
 * Cephes-style exp (range reduction by ln2 split in two, degree-6 polynomial), branch-free so
 * loops over it vectorise. Max relative error ~1.4 ulp over [-87.3, 88]; exp(x) = 0 below
 * -87.34 (where expf would return a denormal or 0); inputs above 88 are clamped to 88; NaN
 * propagates. */
#ifndef CHORD_KERNELS_CPU_VMATH_H
#define CHORD_KERNELS_CPU_VMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline float cpu_expf(float x) {
    const float hi = 88.0f, lo = -87.33654f;
    float xc = x > hi ? hi : x;
    xc = xc < lo ? lo : xc;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick: n sits in the low mantissa bits of t */
    float t = fmaf(xc, 1.44269504088896341f, 12582912.0f);
    float n = t - 12582912.0f;
    uint32_t ti;
    memcpy(&ti, &t, sizeof ti);
    float r = fmaf(n, -0.693359375f, xc);
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500E-4f;
    p = fmaf(p, r, 1.3981999507E-3f);
    p = fmaf(p, r, 8.3334519073E-3f);
    p = fmaf(p, r, 4.1665795894E-2f);
    p = fmaf(p, r, 1.6666665459E-1f);
    p = fmaf(p, r, 5.0000001201E-1f);
    p = fmaf(p, r * r, r) + 1.0f;
    uint32_t e = (ti - 0x4B400000u + 127u) << 23; /* 2^n */
    float s;
    memcpy(&s, &e, sizeof s);
    float res = p * s;
    return x < lo ? 0.0f : res;
}

/* ---- reductions ----
 * Kept as single-statement `omp simd` loops: GCC 12 vectorises those, but falls back to the
 * scalar loop when a reduction shares its body with a polynomial exp, so callers compute
 * exponentials into a buffer first and reduce in a separate loop. */

static inline double cpu_sum_d(const float *restrict x, int n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += (double)x[i];
    return s;
}

/* sum of a[i] * b[i], accumulated in double */
static inline double cpu_dot_d(const float *restrict a, const float *restrict b, int n) {
    double s = 0.0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += (double)a[i] * (double)b[i];
    return s;
}

static inline float cpu_dot_f(const float *restrict a, const float *restrict b, int n) {
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

/* max of x[0..n), -inf for n == 0 */
static inline float cpu_max_f(const float *restrict x, int n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int i = 0; i < n; i++)
        m = x[i] > m ? x[i] : m;
    return m;
}

/* y[i] = exp(x[i] - sub) */
static inline void cpu_exp_sub(float *restrict y, const float *restrict x, float sub, int n) {
    for (int i = 0; i < n; i++)
        y[i] = cpu_expf(x[i] - sub);
}

#endif
