/* SmoothQuant W8A8 arithmetic on the CPU: smoothing scales, symmetric
 * int8 rows (absmax / 127, round half to even), the static activation
 * scale. Header-only: shared by the plugin and its tests, and written to
 * perform exactly the float operations the CUDA kernels perform, so both
 * devices produce the same codes. */
#ifndef SQ_INT8_H
#define SQ_INT8_H

#include <math.h>
#include <stdint.h>

/* Smallest smoothing factor and smallest weight column maximum, as the
 * SmoothQuant reference clamps them. */
#define SQ_MIN_SCALE 1e-5
/* Floor for a static activation scale (all-zero calibration data). */
#define SQ_MIN_ACT_SCALE 1e-12f

/* Round half to even for |v| < 2^22 (adding 1.5 * 2^23 leaves no fraction
 * bits; the FPU's round-to-nearest-even does the work). Needs strict float
 * semantics: no -ffast-math. */
static inline float sq_rint(float v)
{
    const float magic = 12582912.0f;
    float t = v + magic;
    return t - magic;
}

/* x * inv rounded to an int8 code in [-127, 127]; NaN gives 0. */
static inline int8_t sq_code(float x, float inv)
{
    float v = x * inv;
    if (!(v == v)) return 0;
    if (v > 127.0f) v = 127.0f;
    if (v < -127.0f) v = -127.0f;
    return (int8_t)sq_rint(v);
}

/* One row, dynamic scale: returns the dequantization scale absmax / 127 and
 * writes codes q[Kp] (zero past K). */
static inline float sq_quant_row_dynamic(const float *x, int64_t K, int64_t Kp, int8_t *q)
{
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float a = fabsf(x[k]);
        amax = a > amax ? a : amax;
    }
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t k = 0; k < K; k++) q[k] = sq_code(x[k], inv);
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    return amax / 127.0f;
}

/* One row against a fixed (static) scale: codes of x * inv. */
static inline void sq_quant_row_static(const float *x, int64_t K, int64_t Kp, float inv, int8_t *q)
{
    for (int64_t k = 0; k < K; k++) q[k] = sq_code(x[k], inv);
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
}

/* s_j = max(max|X_j|^alpha / max(max|W[:,j]|, 1e-5)^(1-alpha), 1e-5); a
 * channel that saw no activation (act_max 0) keeps s_j = 1. */
static inline float sq_smooth_factor(float act_max, float w_max, double alpha)
{
    if (!(act_max > 0.0f)) return 1.0f;
    double w = w_max > SQ_MIN_SCALE ? (double)w_max : SQ_MIN_SCALE;
    double s = pow((double)act_max, alpha) / pow(w, 1.0 - alpha);
    if (!(s >= SQ_MIN_SCALE)) s = SQ_MIN_SCALE;
    if (s > 1e30) s = 1e30;
    return (float)s;
}

/* Dequantization of the int32 accumulator: acc * row scale * column scale
 * + bias, in this order (the CUDA epilogue uses the same operations). */
static inline float sq_dequant(int32_t acc, float row_scale, float col_scale, float bias)
{
    float v = (float)acc * row_scale;
    v = v * col_scale;
    return v + bias;
}

#endif
