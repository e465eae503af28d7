/* LLM.int8 row-wise quantization as bitsandbytes does it
 * (int8_vectorwise_quant / kInt8VectorQuant): per row, absmax over the
 * elements below the outlier threshold, q = round_half_even(x * 127/absmax);
 * elements at or above the threshold are 0. Header-only: shared by the
 * plugin, its tests and the compatibility tool. */
#ifndef INT8_CODEC_H
#define INT8_CODEC_H

#include <stdint.h>

/* bitsandbytes' dequantization constants: 1/(127*127) and 1/127. */
#define I8_MM_DEQUANT_CONST 6.200012e-05f
#define I8_INV127 7.874015718698502e-3f

/* Round half to even for |v| < 2^22 (adding 1.5 * 2^23 leaves no fraction
 * bits, so the FPU's round-to-nearest-even does the work). */
static inline float i8_rint(float v)
{
    const float magic = 12582912.0f;
    float t = v + magic; /* exact float semantics: no -ffast-math in this build */
    return t - magic;
}

static inline float i8_absf(float v) { return v < 0.0f ? -v : v; }

/* Quantizes one row of K values into q[Kp] (zero padded past K) and
 * returns the row absmax (the SCB / SCA value). threshold > 0 excludes
 * |x| >= threshold from the absmax and writes 0 for those elements;
 * zero_col (may be NULL) forces 0 for whole columns. */
static inline float i8_quantize_row(const float *x, int64_t K, int64_t Kp, float threshold, const uint8_t *zero_col,
                                    int8_t *q)
{
    float amax = 0.0f;
    for (int64_t c = 0; c < K; c++) {
        float a = i8_absf(x[c]);
        if (threshold > 0.0f && a >= threshold) continue;
        amax = a > amax ? a : amax;
    }
    float scale = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t c = 0; c < K; c++) {
        float v = x[c];
        int zero = (threshold > 0.0f && i8_absf(v) >= threshold) || (zero_col && zero_col[c]);
        float r = zero ? 0.0f : i8_rint(v * scale);
        /* |v| <= amax, so |r| <= 127; the clamp only keeps int8 conversion defined for NaN/inf input. */
        if (!(r <= 127.0f)) r = r < 0.0f ? -127.0f : (r > 0.0f ? 127.0f : 0.0f);
        if (r < -127.0f) r = -127.0f;
        q[c] = (int8_t)r;
    }
    for (int64_t c = K; c < Kp; c++) q[c] = 0;
    return amax;
}

#endif
