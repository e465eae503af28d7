/* Block quantizers, dequantizers and scalar kernels of the gguf_cpu plugin.
 *
 * The quantizers follow ggml's (ggml-quants.c: quantize_row_*_ref, and
 * quantize_* with importance weights) operation for operation, in the same
 * float order, so the bytes are identical: this file is built with
 * -ffp-contract=off so no multiply-add is fused where the reference rounds
 * twice. */
#include "gguf_quants.h"

#include <float.h>
#include <math.h>
#include <string.h>

#define GROUP_MAX_EPS 1e-15f

static inline float h2f(uint16_t h) { return qtool_f16_to_f32(h); }
static inline uint16_t f2h(float f) { return qtool_f32_to_f16(f); }
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* Round to nearest, ties to even, through the float mantissa: the trick
 * ggml uses (valid for |v| <= 2^22; larger inputs give what ggml gives). */
static inline int nearest_int(float v)
{
    float f = v + 12582912.f;
    int32_t i;
    memcpy(&i, &f, 4);
    return (i & 0x007fffff) - 0x00400000;
}

/* ---------------------------------------------------- 32-element blocks */

void gq_quantize_row_q4_0(const float *x, void *vy, int64_t k)
{
    gq_block_q4_0 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < GQ_QK; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -8;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        for (int j = 0; j < GQ_QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            const int q0 = imin(15, (int8_t)(x0 + 8.5f)), q1 = imin(15, (int8_t)(x1 + 8.5f));
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void gq_quantize_row_q4_1(const float *x, void *vy, int64_t k)
{
    gq_block_q4_1 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < GQ_QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 15;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        y[b].m = f2h(min);
        for (int j = 0; j < GQ_QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
            const int q0 = imin(15, (int8_t)(x0 + 0.5f)), q1 = imin(15, (int8_t)(x1 + 0.5f));
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void gq_quantize_row_q5_0(const float *x, void *vy, int64_t k)
{
    gq_block_q5_0 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < GQ_QK; j++) {
            if (amax < fabsf(x[j])) { amax = fabsf(x[j]); max = x[j]; }
        }
        const float d = max / -16;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        uint32_t qh = 0;
        for (int j = 0; j < GQ_QK / 2; j++) {
            const float x0 = x[j] * id, x1 = x[j + 16] * id;
            const unsigned q0 = (unsigned)imin(31, (int8_t)(x0 + 16.5f));
            const unsigned q1 = (unsigned)imin(31, (int8_t)(x1 + 16.5f));
            y[b].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= ((q0 >> 4) & 1u) << j;
            qh |= ((q1 >> 4) & 1u) << (j + 16);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

void gq_quantize_row_q5_1(const float *x, void *vy, int64_t k)
{
    gq_block_q5_1 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < GQ_QK; j++) {
            if (x[j] < min) min = x[j];
            if (x[j] > max) max = x[j];
        }
        const float d = (max - min) / 31;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        y[b].m = f2h(min);
        uint32_t qh = 0;
        for (int j = 0; j < GQ_QK / 2; j++) {
            const float x0 = (x[j] - min) * id, x1 = (x[j + 16] - min) * id;
            const unsigned q0 = (uint8_t)(x0 + 0.5f), q1 = (uint8_t)(x1 + 0.5f);
            y[b].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= ((q0 >> 4) & 1u) << j;
            qh |= ((q1 >> 4) & 1u) << (j + 16);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

void gq_quantize_row_q8_0(const float *x, void *vy, int64_t k)
{
    gq_block_q8_0 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float amax = 0.0f;
        for (int j = 0; j < GQ_QK; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); /* ggml's MAX */
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        for (int j = 0; j < GQ_QK; j++) y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* roundf (half away from zero) for |v| < 2^31 without a libm call: the
 * fraction v - trunc(v) is exact in float. */
static inline int round_away(float v)
{
    int i = (int)v;
    const float frac = v - (float)i;
    if (frac >= 0.5f) i++;
    else if (frac <= -0.5f) i--;
    return i;
}

void gq_quantize_row_q8_1(const float *x, void *vy, int64_t k)
{
    gq_block_q8_1 *y = vy;
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK) {
        float amax = 0.0f;
        for (int j = 0; j < GQ_QK; j++) amax = amax > fabsf(x[j]) ? amax : fabsf(x[j]); /* ggml's MAX */
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = f2h(d);
        int sum = 0;
        for (int j = 0; j < GQ_QK; j++) {
            y[b].qs[j] = (int8_t)round_away(x[j] * id);
            sum += y[b].qs[j];
        }
        y[b].s = f2h((float)sum * d);
    }
}

void gq_dequantize_row_q4_0(const void *vx, float *y, int64_t k)
{
    const gq_block_q4_0 *x = vx;
    for (int64_t b = 0; b < k / GQ_QK; b++, y += GQ_QK) {
        const float d = h2f(x[b].d);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)((x[b].qs[j] & 0xF) - 8) * d;
            y[j + 16] = (float)((x[b].qs[j] >> 4) - 8) * d;
        }
    }
}

void gq_dequantize_row_q4_1(const void *vx, float *y, int64_t k)
{
    const gq_block_q4_1 *x = vx;
    for (int64_t b = 0; b < k / GQ_QK; b++, y += GQ_QK) {
        const float d = h2f(x[b].d), m = h2f(x[b].m);
        for (int j = 0; j < 16; j++) {
            y[j] = (float)(x[b].qs[j] & 0xF) * d + m;
            y[j + 16] = (float)(x[b].qs[j] >> 4) * d + m;
        }
    }
}

static inline int q5_code(const uint8_t *qs, uint32_t qh, int j)
{
    return j < 16 ? (qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4) : (qs[j - 16] >> 4) | (int)(((qh >> j) & 1u) << 4);
}

void gq_dequantize_row_q5_0(const void *vx, float *y, int64_t k)
{
    const gq_block_q5_0 *x = vx;
    for (int64_t b = 0; b < k / GQ_QK; b++, y += GQ_QK) {
        const float d = h2f(x[b].d);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < GQ_QK; j++) y[j] = (float)(q5_code(x[b].qs, qh, j) - 16) * d;
    }
}

void gq_dequantize_row_q5_1(const void *vx, float *y, int64_t k)
{
    const gq_block_q5_1 *x = vx;
    for (int64_t b = 0; b < k / GQ_QK; b++, y += GQ_QK) {
        const float d = h2f(x[b].d), m = h2f(x[b].m);
        uint32_t qh;
        memcpy(&qh, x[b].qh, 4);
        for (int j = 0; j < GQ_QK; j++) y[j] = (float)q5_code(x[b].qs, qh, j) * d + m;
    }
}

void gq_dequantize_row_q8_0(const void *vx, float *y, int64_t k)
{
    const gq_block_q8_0 *x = vx;
    for (int64_t b = 0; b < k / GQ_QK; b++, y += GQ_QK) {
        const float d = h2f(x[b].d);
        for (int j = 0; j < GQ_QK; j++) y[j] = (float)x[b].qs[j] * d;
    }
}

/* ------------------------------------------------------------ k-quants */

/* Search over scales and minima for n values with codes 0..nmax, weighted
 * least squares: ggml's make_qkx2_quants, or with `x3` its make_qkx3_quants
 * (use_mad false, weights given), which differ in two places only: an empty
 * range is max <= min rather than max == min, and a candidate's codes are
 * clamped before rounding (the fitted minimum may sit at or near the
 * maximum, so iscale * (x - min) may be huge, inf or nan). The same float
 * operations in the same order as ggml-quants.c, so the bytes are
 * identical. Returns the scale; *neg_min is minus the fitted minimum. */
static float fit_scale_min_search(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                                  uint8_t *Laux, float rmin, float rdelta, int nstep, int x3)
{
    float min = x[0], max = x[0];
    float sum_w = w[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (x3 ? max <= min : max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        const int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)imax(0, imin(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = diff * diff;
        best_error += w[i] * diff;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l;
            if (x3) {
                const float v = iscale * (x[i] - min);
                l = v > 0 ? nearest_int(v < nmax ? v : (float)nmax) : 0;
            } else {
                l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            }
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        const float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = diff * diff;
                cur_error += w[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* make_qkx2_quants. */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                           uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    return fit_scale_min_search(n, nmax, x, w, L, neg_min, Laux, rmin, rdelta, nstep, 0);
}

/* Symmetric codes -nmax..nmax-1 with a weighted scale search (ggml's
 * make_qx_quants, rmse_type 1): weights qw, or x^2 when qw is NULL. */
static float fit_scale_sym(int n, int nmax, const float *x, int8_t *L, const float *qw)
{
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        const float ax = fabsf(x[i]);
        if (ax > amax) { amax = ax; max = x[i]; }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        const float w = qw ? qw[i] : x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            const int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            const float w = qw ? qw[i] : x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* 6-bit scale j and min of a Q4_K/Q5_K block. */
static inline void scale_min_k4(int j, const uint8_t *q, uint8_t *sc, uint8_t *m)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* Sub-block j's 6-bit scale and min into a Q4_K/Q5_K scales array (j in
 * increasing order: entries j >= 4 add their high bits to earlier bytes). */
static void store_k_scale(int j, uint8_t ls, uint8_t lm, uint8_t scales[12])
{
    if (j < 4) {
        scales[j] = ls;
        scales[j + 4] = lm;
    } else {
        scales[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        scales[j - 4] |= (uint8_t)((ls >> 4) << 6);
        scales[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* The codes L (0..nmax) for the final fp16 d, dmin and 6-bit scales. */
static void requantize_k(const float *x, int nmax, uint16_t d16, uint16_t dmin16, const uint8_t scales[12],
                         uint8_t L[GQ_QK_K])
{
    for (int j = 0; j < 8; j++) {
        uint8_t s, m;
        scale_min_k4(j, scales, &s, &m);
        const float d = h2f(d16) * s;
        if (d == 0.0f) continue;
        const float dm = h2f(dmin16) * m;
        for (int i = 0; i < 32; i++)
            L[32 * j + i] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + i] + dm) / d)));
    }
}

/* Shared first half of Q4_K and Q5_K: sub-block fits, 6-bit scales, the
 * requantised codes L (0..nmax). */
static void quantize_k_scales(const float *x, int nmax, float rmin, float rdelta, int nstep, uint16_t *d16,
                              uint16_t *dmin16, uint8_t scales[12], uint8_t L[GQ_QK_K])
{
    uint8_t Laux[32];
    float weights[32], mins[8], sc[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++) weights[l] = av_x + fabsf(x[32 * j + l]);
        sc[j] = fit_scale_min(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, rmin, rdelta, nstep);
        if (sc[j] > max_scale) max_scale = sc[j];
        if (mins[j] > max_min) max_min = mins[j];
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    for (int j = 0; j < 8; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * sc[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        if (ls > 63) ls = 63;
        if (lm > 63) lm = 63;
        store_k_scale(j, ls, lm, scales);
    }
    *d16 = f2h(max_scale / 63.f);
    *dmin16 = f2h(max_min / 63.f);
    requantize_k(x, nmax, *d16, *dmin16, scales, L);
}

static void pack_q4_K_codes(const uint8_t L[GQ_QK_K], uint8_t qs[128])
{
    for (int j = 0; j < GQ_QK_K; j += 64, qs += 32)
        for (int l = 0; l < 32; l++) qs[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

static void pack_q5_K_codes(const uint8_t L[GQ_QK_K], uint8_t qh[32], uint8_t ql[128])
{
    memset(qh, 0, 32);
    uint8_t m1 = 1, m2 = 2;
    for (int n = 0; n < GQ_QK_K; n += 64, ql += 32) {
        for (int j = 0; j < 32; j++) {
            int l1 = L[n + j], l2 = L[n + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
        m1 = (uint8_t)(m1 << 2);
        m2 = (uint8_t)(m2 << 2);
    }
}

void gq_quantize_row_q4_K(const float *x, void *vy, int64_t k)
{
    gq_block_q4_K *y = vy;
    uint8_t L[GQ_QK_K];
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K) {
        quantize_k_scales(x, 15, -1.f, 0.1f, 20, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_q4_K_codes(L, y[b].qs);
    }
}

void gq_quantize_row_q5_K(const float *x, void *vy, int64_t k)
{
    gq_block_q5_K *y = vy;
    uint8_t L[GQ_QK_K];
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K) {
        quantize_k_scales(x, 31, -0.5f, 0.1f, 15, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_q5_K_codes(L, y[b].qh, y[b].qs);
    }
}

/* Q6_K with sub-block fits weighted by qw (per element of the row), or by
 * x^2 when qw is NULL: ggml's quantize_row_q6_K_impl, whose NULL case is
 * quantize_row_q6_K_ref. */
static void quantize_q6_K_weighted(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q6_K *y = vy;
    int8_t L[GQ_QK_K];
    float scales[16];
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K, qw = qw ? qw + GQ_QK_K : NULL) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < 16; ib++) {
            scales[ib] = fit_scale_sym(16, 32, x + 16 * ib, L + 16 * ib, qw ? qw + 16 * ib : NULL);
            if (fabsf(scales[ib]) > max_abs_scale) {
                max_abs_scale = fabsf(scales[ib]);
                max_scale = scales[ib];
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[b], 0, sizeof y[b]);
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[b].d = f2h(1 / iscale);
        for (int ib = 0; ib < 16; ib++) y[b].scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < 16; j++) {
            const float d = h2f(y[b].d) * y[b].scales[j];
            if (d == 0.0f) continue;
            for (int i = 0; i < 16; i++)
                L[16 * j + i] = (int8_t)(imax(-32, imin(31, nearest_int(x[16 * j + i] / d))) + 32);
        }
        uint8_t *ql = y[b].ql, *qh = y[b].qh;
        for (int j = 0; j < GQ_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const uint8_t q1 = L[j + l] & 0xF, q2 = L[j + l + 32] & 0xF;
                const uint8_t q3 = L[j + l + 64] & 0xF, q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) | ((L[j + l + 32] >> 4) << 2) | ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

void gq_quantize_row_q6_K(const float *x, void *y, int64_t k) { quantize_q6_K_weighted(x, y, k, NULL); }

/* ------------------------------------- importance-weighted quantization */

/* ggml's quantize_<type>(src, dst, nrow, n_per_row, quant_weights) with
 * quant_weights set, one row at a time: the searches below weigh each
 * element's squared error by its column's importance qw (llama.cpp's
 * imatrix: the mean of x_j^2 over calibration tokens). Same float order as
 * ggml-quants.c, so the bytes are identical. */

/* ggml's make_qkx3_quants (use_mad false, weights given). */
static float fit_scale_min_x3(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep)
{
    return fit_scale_min_search(n, nmax, x, w, L, neg_min, Laux, rmin, rdelta, nstep, 1);
}

/* ggml's make_qp_quants: codes 0..nmax for non-negative x (the sub-block
 * scales and minima of Q4_K/Q5_K) under weights qw, a scale search then
 * coordinate-wise code refinement. */
static float fit_scale_pos(int n, int nmax, const float *x, uint8_t *L, const float *qw)
{
    float max = 0;
    for (int i = 0; i < n; i++) max = max > x[i] ? max : x[i]; /* ggml's MAX */
    if (max < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = nmax / max;
    for (int i = 0; i < n; i++) L[i] = (uint8_t)nearest_int(iscale * x[i]);
    const float scale = 1 / iscale;
    float best_mse = 0;
    for (int i = 0; i < n; i++) {
        const float diff = x[i] - scale * L[i];
        best_mse += qw[i] * diff * diff;
    }
    for (int is = -4; is <= 4; is++) {
        if (is == 0) continue;
        const float iscale_is = (0.1f * is + nmax) / max;
        const float scale_is = 1 / iscale_is;
        float mse = 0;
        for (int i = 0; i < n; i++) {
            const int l = imin(nmax, nearest_int(iscale_is * x[i]));
            const float diff = x[i] - scale_is * l;
            mse += qw[i] * diff * diff;
        }
        if (mse < best_mse) {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        const int l = imin(nmax, nearest_int(iscale * x[i]));
        L[i] = (uint8_t)l;
        sumlx += qw[i] * x[i] * l;
        suml2 += qw[i] * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            const float w = qw[i];
            float slx = sumlx - w * x[i] * L[i];
            float sl2 = suml2 - w * L[i] * L[i];
            if (slx > 0 && sl2 > 0) {
                const int new_l = imin(nmax, nearest_int(x[i] * sl2 / slx));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (uint8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed) break;
    }
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Q4_K / Q5_K super-block (quantize_row_q4_K_impl / q5_K_impl): element
 * weights qw * sqrt(sigma2 + x^2), sub-block fits, then the 6-bit scales
 * and minima fitted under the sub-blocks' total weights. Q5_K clamps the
 * 6-bit values to 63, Q4_K does not (as in ggml; they only differ if a fit
 * goes negative). */
static void quantize_k_scales_imatrix(const float *x, const float *qw, int nmax, int clamp63, uint16_t *d16,
                                      uint16_t *dmin16, uint8_t scales[12], uint8_t L[GQ_QK_K])
{
    uint8_t Laux[32], Ls[8], Lm[8];
    float weights[32], sw[8], mins[8], sc[8];
    float sum_x2 = 0;
    for (int l = 0; l < GQ_QK_K; l++) sum_x2 += x[l] * x[l];
    const float sigma2 = 2 * sum_x2 / GQ_QK_K;
    for (int j = 0; j < 8; j++) {
        for (int l = 0; l < 32; l++) weights[l] = qw[32 * j + l] * sqrtf(sigma2 + x[32 * j + l] * x[32 * j + l]);
        float sumw = 0;
        for (int l = 0; l < 32; l++) sumw += weights[l];
        sw[j] = sumw;
        sc[j] = fit_scale_min_x3(32, nmax, x + 32 * j, weights, L + 32 * j, &mins[j], Laux, -0.9f, 0.05f, 36);
    }
    const float d_block = fit_scale_pos(8, 63, sc, Ls, sw);
    const float m_block = fit_scale_pos(8, 63, mins, Lm, sw);
    for (int j = 0; j < 8; j++) {
        uint8_t ls = Ls[j], lm = Lm[j];
        if (clamp63) {
            if (ls > 63) ls = 63;
            if (lm > 63) lm = 63;
        }
        store_k_scale(j, ls, lm, scales);
    }
    *d16 = f2h(d_block);
    *dmin16 = f2h(m_block);
    requantize_k(x, nmax, *d16, *dmin16, scales, L);
}

void gq_quantize_imatrix_q4_K(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q4_K *y = vy;
    uint8_t L[GQ_QK_K];
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K, qw += GQ_QK_K) {
        quantize_k_scales_imatrix(x, qw, 15, 0, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_q4_K_codes(L, y[b].qs);
    }
}

void gq_quantize_imatrix_q5_K(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q5_K *y = vy;
    uint8_t L[GQ_QK_K];
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K, qw += GQ_QK_K) {
        quantize_k_scales_imatrix(x, qw, 31, 1, &y[b].d, &y[b].dmin, y[b].scales, L);
        pack_q5_K_codes(L, y[b].qh, y[b].qs);
    }
}

/* Q6_K weighs its 16-element fits by qw directly (ggml keeps the
 * sigma2 variant commented out). */
void gq_quantize_imatrix_q6_K(const float *x, void *y, int64_t k, const float *qw)
{
    quantize_q6_K_weighted(x, y, k, qw);
}

/* The 32-element types share one row variance: element weights
 * qw * sqrt(sigma2 + x^2) with sigma2 the row's mean of x^2. */
static float row_sigma2(const float *x, int64_t k)
{
    float sum_x2 = 0;
    for (int64_t j = 0; j < k; j++) sum_x2 += x[j] * x[j];
    return sum_x2 / k;
}

static void block_weights(const float *xb, const float *qw, float sigma2, float w[GQ_QK])
{
    for (int j = 0; j < GQ_QK; j++) w[j] = qw[j] * sqrtf(sigma2 + xb[j] * xb[j]);
}

void gq_quantize_imatrix_q4_0(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q4_0 *y = vy;
    const float sigma2 = row_sigma2(x, k);
    float w[GQ_QK];
    int8_t L[GQ_QK];
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK, qw += GQ_QK) {
        block_weights(x, qw, sigma2, w);
        y[b].d = f2h(fit_scale_sym(GQ_QK, 8, x, L, w));
        for (int j = 0; j < 16; j++) y[b].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

void gq_quantize_imatrix_q5_0(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q5_0 *y = vy;
    const float sigma2 = row_sigma2(x, k);
    float w[GQ_QK];
    int8_t L[GQ_QK];
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK, qw += GQ_QK) {
        block_weights(x, qw, sigma2, w);
        y[b].d = f2h(fit_scale_sym(GQ_QK, 16, x, L, w));
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            const uint8_t q0 = (uint8_t)L[j], q1 = (uint8_t)L[j + 16];
            y[b].qs[j] = (uint8_t)((q0 & 0xF) | ((q1 & 0xF) << 4));
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + 16);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

void gq_quantize_imatrix_q4_1(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q4_1 *y = vy;
    const float sigma2 = row_sigma2(x, k);
    float w[GQ_QK];
    uint8_t L[GQ_QK], Laux[GQ_QK];
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK, qw += GQ_QK) {
        block_weights(x, qw, sigma2, w);
        float neg_min;
        const float d = fit_scale_min_x3(GQ_QK, 15, x, w, L, &neg_min, Laux, -0.9f, 0.05f, 36);
        y[b].d = f2h(d);
        y[b].m = f2h(-neg_min);
        for (int j = 0; j < 16; j++) y[b].qs[j] = (uint8_t)(L[j] | (L[j + 16] << 4));
    }
}

void gq_quantize_imatrix_q5_1(const float *x, void *vy, int64_t k, const float *qw)
{
    gq_block_q5_1 *y = vy;
    const float sigma2 = row_sigma2(x, k);
    float w[GQ_QK];
    uint8_t L[GQ_QK], Laux[GQ_QK];
    for (int64_t b = 0; b < k / GQ_QK; b++, x += GQ_QK, qw += GQ_QK) {
        block_weights(x, qw, sigma2, w);
        float neg_min;
        const float d = fit_scale_min_x3(GQ_QK, 31, x, w, L, &neg_min, Laux, -0.9f, 0.05f, 36);
        y[b].d = f2h(d);
        y[b].m = f2h(-neg_min);
        uint32_t qh = 0;
        for (int j = 0; j < 16; j++) {
            y[b].qs[j] = (uint8_t)((L[j] & 0xF) | ((L[j + 16] & 0xF) << 4));
            qh |= ((L[j] & 0x10u) >> 4) << j;
            qh |= ((L[j + 16] & 0x10u) >> 4) << (j + 16);
        }
        memcpy(y[b].qh, &qh, 4);
    }
}

/* ggml's quantize_q8_0 ignores the importance weights. */
void gq_quantize_imatrix_q8_0(const float *x, void *y, int64_t k, const float *qw)
{
    (void)qw;
    gq_quantize_row_q8_0(x, y, k);
}

void gq_quantize_row_q8_K(const float *x, void *vy, int64_t k)
{
    gq_block_q8_K *y = vy;
    for (int64_t b = 0; b < k / GQ_QK_K; b++, x += GQ_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < GQ_QK_K; j++) {
            if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
        }
        memset(y[b].bsums, 0, sizeof y[b].bsums);
        if (amax == 0.0f) {
            y[b].d = 0;
            memset(y[b].qs, 0, GQ_QK_K);
            continue;
        }
        const float iscale = -127.f / max;
        for (int j = 0; j < GQ_QK_K; j++) y[b].qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
        for (int j = 0; j < 16; j++) {
            int sum = 0;
            for (int i = 0; i < 16; i++) sum += y[b].qs[16 * j + i];
            y[b].bsums[j] = (int16_t)sum;
        }
        y[b].d = 1 / iscale;
    }
}

/* Code of element e (0..255) of a Q4_K/Q5_K block and its sub-block. */
static inline int q4k_code(const uint8_t *qs, int e)
{
    const int c = e / 64, r = e % 64;
    return r < 32 ? qs[32 * c + r] & 0xF : qs[32 * c + r - 32] >> 4;
}

static inline int q5k_code(const uint8_t *qs, const uint8_t *qh, int e)
{
    return q4k_code(qs, e) | (((qh[e % 32] >> (e / 32)) & 1) << 4);
}

static inline int q6k_code(const uint8_t *ql, const uint8_t *qh, int e)
{
    const int c = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
    const uint8_t *pl = ql + 64 * c, *ph = qh + 32 * c;
    const int lo = quarter & 1 ? (quarter & 2 ? pl[l + 32] >> 4 : pl[l + 32] & 0xF)
                               : (quarter & 2 ? pl[l] >> 4 : pl[l] & 0xF);
    return lo | (((ph[l] >> (2 * quarter)) & 3) << 4);
}

void gq_dequantize_row_q4_K(const void *vx, float *y, int64_t k)
{
    const gq_block_q4_K *x = vx;
    for (int64_t b = 0; b < k / GQ_QK_K; b++, y += GQ_QK_K) {
        const float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t s, m;
            scale_min_k4(j, x[b].scales, &s, &m);
            const float d1 = d * s, m1 = dmin * m;
            for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * (float)q4k_code(x[b].qs, 32 * j + l) - m1;
        }
    }
}

void gq_dequantize_row_q5_K(const void *vx, float *y, int64_t k)
{
    const gq_block_q5_K *x = vx;
    for (int64_t b = 0; b < k / GQ_QK_K; b++, y += GQ_QK_K) {
        const float d = h2f(x[b].d), dmin = h2f(x[b].dmin);
        for (int j = 0; j < 8; j++) {
            uint8_t s, m;
            scale_min_k4(j, x[b].scales, &s, &m);
            const float d1 = d * s, m1 = dmin * m;
            for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * (float)q5k_code(x[b].qs, x[b].qh, 32 * j + l) - m1;
        }
    }
}

void gq_dequantize_row_q6_K(const void *vx, float *y, int64_t k)
{
    const gq_block_q6_K *x = vx;
    for (int64_t b = 0; b < k / GQ_QK_K; b++, y += GQ_QK_K) {
        const float d = h2f(x[b].d);
        for (int e = 0; e < GQ_QK_K; e++)
            y[e] = d * (float)x[b].scales[e / 16] * (float)(q6k_code(x[b].ql, x[b].qh, e) - 32);
    }
}

/* -------------------------------------------- scalar vec_dot (reference) */

/* These mirror ggml's generic vec_dot pairs: integer sums per block, then
 * the block scales. They serve as the reference for the tiled kernels. */

static float vec_dot_q4_0(int64_t n, const void *vw, const void *va)
{
    const gq_block_q4_0 *w = vw;
    const gq_block_q8_0 *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK; b++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += ((w[b].qs[j] & 0xF) - 8) * a[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * a[b].qs[j + 16];
        sum += (float)s * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sum;
}

static float vec_dot_q4_1(int64_t n, const void *vw, const void *va)
{
    const gq_block_q4_1 *w = vw;
    const gq_block_q8_1 *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK; b++) {
        int s = 0;
        for (int j = 0; j < 16; j++) s += (w[b].qs[j] & 0xF) * a[b].qs[j] + (w[b].qs[j] >> 4) * a[b].qs[j + 16];
        sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)s + h2f(w[b].m) * h2f(a[b].s);
    }
    return sum;
}

static float vec_dot_q5_0(int64_t n, const void *vw, const void *va)
{
    const gq_block_q5_0 *w = vw;
    const gq_block_q8_0 *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int s = 0;
        for (int j = 0; j < 32; j++) s += (q5_code(w[b].qs, qh, j) - 16) * a[b].qs[j];
        sum += (float)s * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sum;
}

static float vec_dot_q5_1(int64_t n, const void *vw, const void *va)
{
    const gq_block_q5_1 *w = vw;
    const gq_block_q8_1 *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK; b++) {
        uint32_t qh;
        memcpy(&qh, w[b].qh, 4);
        int s = 0;
        for (int j = 0; j < 32; j++) s += q5_code(w[b].qs, qh, j) * a[b].qs[j];
        sum += (h2f(w[b].d) * h2f(a[b].d)) * (float)s + h2f(w[b].m) * h2f(a[b].s);
    }
    return sum;
}

static float vec_dot_q8_0(int64_t n, const void *vw, const void *va)
{
    const gq_block_q8_0 *w = vw;
    const gq_block_q8_0 *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK; b++) {
        int s = 0;
        for (int j = 0; j < 32; j++) s += w[b].qs[j] * a[b].qs[j];
        sum += (float)s * (h2f(w[b].d) * h2f(a[b].d));
    }
    return sum;
}

static float vec_dot_q45_K(int64_t n, const void *vw, const void *va, int five)
{
    const gq_block_q8_K *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK_K; b++) {
        const uint8_t *scales, *qs, *qh = NULL;
        float d, dmin;
        if (five) {
            const gq_block_q5_K *w = (const gq_block_q5_K *)vw + b;
            scales = w->scales; qs = w->qs; qh = w->qh; d = h2f(w->d); dmin = h2f(w->dmin);
        } else {
            const gq_block_q4_K *w = (const gq_block_q4_K *)vw + b;
            scales = w->scales; qs = w->qs; d = h2f(w->d); dmin = h2f(w->dmin);
        }
        int sumi = 0, summ = 0;
        for (int j = 0; j < 8; j++) {
            uint8_t s, m;
            scale_min_k4(j, scales, &s, &m);
            int isum = 0;
            for (int l = 0; l < 32; l++) {
                const int e = 32 * j + l;
                isum += (five ? q5k_code(qs, qh, e) : q4k_code(qs, e)) * a[b].qs[e];
            }
            sumi += s * isum;
            summ += m * (a[b].bsums[2 * j] + a[b].bsums[2 * j + 1]);
        }
        sum += d * a[b].d * (float)sumi - dmin * a[b].d * (float)summ;
    }
    return sum;
}

static float vec_dot_q4_K(int64_t n, const void *w, const void *a) { return vec_dot_q45_K(n, w, a, 0); }
static float vec_dot_q5_K(int64_t n, const void *w, const void *a) { return vec_dot_q45_K(n, w, a, 1); }

static float vec_dot_q6_K(int64_t n, const void *vw, const void *va)
{
    const gq_block_q6_K *w = vw;
    const gq_block_q8_K *a = va;
    float sum = 0;
    for (int64_t b = 0; b < n / GQ_QK_K; b++) {
        int sumi = 0;
        for (int j = 0; j < 16; j++) {
            int isum = 0;
            for (int l = 0; l < 16; l++) isum += (q6k_code(w[b].ql, w[b].qh, 16 * j + l) - 32) * a[b].qs[16 * j + l];
            sumi += w[b].scales[j] * isum;
        }
        sum += h2f(w[b].d) * a[b].d * (float)sumi;
    }
    return sum;
}

static const gq_type types[] = {
    {GQ_Q4_0, "Q4_0", GQ_QK, 18, GQ_Q8_0, gq_quantize_row_q4_0, gq_dequantize_row_q4_0, vec_dot_q4_0,
     gq_quantize_imatrix_q4_0},
    {GQ_Q4_1, "Q4_1", GQ_QK, 20, GQ_Q8_1, gq_quantize_row_q4_1, gq_dequantize_row_q4_1, vec_dot_q4_1,
     gq_quantize_imatrix_q4_1},
    {GQ_Q5_0, "Q5_0", GQ_QK, 22, GQ_Q8_0, gq_quantize_row_q5_0, gq_dequantize_row_q5_0, vec_dot_q5_0,
     gq_quantize_imatrix_q5_0},
    {GQ_Q5_1, "Q5_1", GQ_QK, 24, GQ_Q8_1, gq_quantize_row_q5_1, gq_dequantize_row_q5_1, vec_dot_q5_1,
     gq_quantize_imatrix_q5_1},
    {GQ_Q8_0, "Q8_0", GQ_QK, 34, GQ_Q8_0, gq_quantize_row_q8_0, gq_dequantize_row_q8_0, vec_dot_q8_0,
     gq_quantize_imatrix_q8_0},
    {GQ_Q8_1, "Q8_1", GQ_QK, 36, -1, gq_quantize_row_q8_1, NULL, NULL, NULL},
    {GQ_Q4_K, "Q4_K", GQ_QK_K, 144, GQ_Q8_K, gq_quantize_row_q4_K, gq_dequantize_row_q4_K, vec_dot_q4_K,
     gq_quantize_imatrix_q4_K},
    {GQ_Q5_K, "Q5_K", GQ_QK_K, 176, GQ_Q8_K, gq_quantize_row_q5_K, gq_dequantize_row_q5_K, vec_dot_q5_K,
     gq_quantize_imatrix_q5_K},
    {GQ_Q6_K, "Q6_K", GQ_QK_K, 210, GQ_Q8_K, gq_quantize_row_q6_K, gq_dequantize_row_q6_K, vec_dot_q6_K,
     gq_quantize_imatrix_q6_K},
    {GQ_Q8_K, "Q8_K", GQ_QK_K, 292, -1, gq_quantize_row_q8_K, NULL, NULL, NULL},
};

const gq_type *gq_type_traits(int type)
{
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (types[i].type == type) return &types[i];
    return NULL;
}

size_t gq_row_size(int type, int64_t k)
{
    const gq_type *t = gq_type_traits(type);
    return t ? (size_t)(k / t->block) * (size_t)t->block_size : 0;
}

/* ------------------------------------------------ unpacked matmul forms */

int gq_tile_flags(int wtype)
{
    /* Q4_0 and Q5_0 keep their unsigned codes and fold the zero point into
     * the sum term (-8 d or -16 d times the activation block sum), so only
     * Q8_0 and Q6_K need signed x signed products. */
    return wtype == GQ_Q8_0 || wtype == GQ_Q6_K ? GQ_TILE_SIGNED : GQ_TILE_MIN;
}

void gq_act_quantize(int wtype, const float *x, int64_t k, gq_act *a)
{
    const gq_type *t = gq_type_traits(wtype);
#if defined(__x86_64__) || defined(__i386__)
    static int avx512 = -1; /* every thread computes the same value; relaxed atomics */
    int have = __atomic_load_n(&avx512, __ATOMIC_RELAXED);
    if (have < 0) {
        __builtin_cpu_init();
        have = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
        __atomic_store_n(&avx512, have, __ATOMIC_RELAXED);
    }
    if (have) {
        gq_act_quantize_avx512(t->act_type, x, k, a);
        return;
    }
#endif
    gq_act_quantize_ref(t->act_type, x, k, a);
}

void gq_act_quantize_ref(int act_type, const float *x, int64_t k, gq_act *a)
{
    const gq_type *t = gq_type_traits(act_type == GQ_Q8_K ? GQ_Q4_K : act_type == GQ_Q8_1 ? GQ_Q4_1 : GQ_Q8_0);
    if (t->act_type == GQ_Q8_K) {
        gq_block_q8_K blk;
        for (int64_t b = 0; b < k / GQ_QK_K; b++) {
            gq_quantize_row_q8_K(x + b * GQ_QK_K, &blk, GQ_QK_K);
            memcpy(a->q + b * GQ_QK_K, blk.qs, GQ_QK_K);
            for (int g = 0; g < 8; g++) {
                a->d[b * 8 + g] = blk.d;
                a->s[b * 8 + g] = blk.d * (float)(blk.bsums[2 * g] + blk.bsums[2 * g + 1]);
            }
            if (a->s16)
                for (int j = 0; j < 16; j++) a->s16[b * 16 + j] = blk.d * (float)blk.bsums[j];
        }
        return;
    }
    const int q81 = t->act_type == GQ_Q8_1;
    for (int64_t g = 0; g < k / GQ_QK; g++) {
        gq_block_q8_1 blk;
        gq_quantize_row_q8_1(x + g * GQ_QK, &blk, GQ_QK); /* same codes and d as Q8_0 */
        memcpy(a->q + g * GQ_QK, blk.qs, GQ_QK);
        a->d[g] = h2f(blk.d);
        if (q81) {
            a->s[g] = h2f(blk.s);
        } else {
            int sum = 0;
            for (int j = 0; j < GQ_QK; j++) sum += blk.qs[j];
            a->s[g] = a->d[g] * (float)sum;
        }
    }
}

static void fill_lanes(float *sv, float v)
{
    for (int l = 0; l < 8; l++) sv[l] = v;
}

void gq_unpack_row(int wtype, const void *w, int64_t k, gq_wrow *r)
{
    int8_t *q = r->q;
    float *sv = r->sv, *mn = r->mn;
    switch (wtype) {
    case GQ_Q4_0: case GQ_Q4_1: case GQ_Q5_0: case GQ_Q5_1: case GQ_Q8_0: {
        const gq_type *t = gq_type_traits(wtype);
        for (int64_t g = 0; g < k / GQ_QK; g++) {
            const uint8_t *blk = (const uint8_t *)w + g * t->block_size;
            uint16_t d16, m16 = 0;
            memcpy(&d16, blk, 2);
            int8_t *qg = q + g * GQ_QK;
            if (wtype == GQ_Q8_0) {
                memcpy(qg, blk + 2, GQ_QK);
            } else if (wtype == GQ_Q4_0 || wtype == GQ_Q4_1) {
                const uint8_t *qs = blk + (wtype == GQ_Q4_1 ? 4 : 2);
                for (int j = 0; j < 16; j++) {
                    qg[j] = (int8_t)(qs[j] & 0xF);
                    qg[j + 16] = (int8_t)(qs[j] >> 4);
                }
            } else {
                const uint8_t *qhp = blk + (wtype == GQ_Q5_1 ? 4 : 2);
                uint32_t qh;
                memcpy(&qh, qhp, 4);
                const uint8_t *qs = qhp + 4;
                for (int j = 0; j < 16; j++) {
                    qg[j] = (int8_t)((qs[j] & 0xF) | (int)(((qh >> j) & 1u) << 4));
                    qg[j + 16] = (int8_t)((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4));
                }
            }
            const float d = h2f(d16);
            fill_lanes(sv + 8 * g, d);
            if (wtype == GQ_Q4_1 || wtype == GQ_Q5_1) {
                memcpy(&m16, blk + 2, 2);
                mn[g] = h2f(m16);
            } else {
                mn[g] = wtype == GQ_Q4_0 ? -8 * d : wtype == GQ_Q5_0 ? -16 * d : 0;
            }
        }
        break;
    }
    case GQ_Q4_K: case GQ_Q5_K: {
        const int five = wtype == GQ_Q5_K;
        for (int64_t b = 0; b < k / GQ_QK_K; b++) {
            const uint8_t *scales, *qs, *qh = NULL;
            float d, dmin;
            if (five) {
                const gq_block_q5_K *x = (const gq_block_q5_K *)w + b;
                scales = x->scales; qs = x->qs; qh = x->qh; d = h2f(x->d); dmin = h2f(x->dmin);
            } else {
                const gq_block_q4_K *x = (const gq_block_q4_K *)w + b;
                scales = x->scales; qs = x->qs; d = h2f(x->d); dmin = h2f(x->dmin);
            }
            int8_t *qb = q + b * GQ_QK_K;
            for (int c = 0; c < 4; c++) {
                const uint8_t *qc = qs + 32 * c;
                int8_t *o = qb + 64 * c;
                for (int l = 0; l < 32; l++) {
                    o[l] = (int8_t)(qc[l] & 0xF);
                    o[l + 32] = (int8_t)(qc[l] >> 4);
                }
                if (five) {
                    for (int l = 0; l < 32; l++) {
                        o[l] = (int8_t)(o[l] | (((qh[l] >> (2 * c)) & 1) << 4));
                        o[l + 32] = (int8_t)(o[l + 32] | (((qh[l] >> (2 * c + 1)) & 1) << 4));
                    }
                }
            }
            for (int j = 0; j < 8; j++) {
                uint8_t s, m;
                scale_min_k4(j, scales, &s, &m);
                fill_lanes(sv + 8 * (b * 8 + j), d * s);
                mn[b * 8 + j] = -(dmin * m);
            }
        }
        break;
    }
    case GQ_Q6_K: {
        for (int64_t b = 0; b < k / GQ_QK_K; b++) {
            const gq_block_q6_K *x = (const gq_block_q6_K *)w + b;
            const float d = h2f(x->d);
            int8_t *qb = q + b * GQ_QK_K;
            for (int c = 0; c < 2; c++) {
                const uint8_t *ql = x->ql + 64 * c, *qh = x->qh + 32 * c;
                int8_t *o = qb + 128 * c;
                for (int l = 0; l < 32; l++) {
                    o[l] = (int8_t)(((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                    o[l + 32] = (int8_t)(((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                    o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                    o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
                }
            }
            for (int j = 0; j < 8; j++) {
                float *v = sv + 8 * (b * 8 + j);
                for (int l = 0; l < 4; l++) {
                    v[l] = d * x->scales[2 * j];
                    v[l + 4] = d * x->scales[2 * j + 1];
                }
                mn[b * 8 + j] = 0;
            }

        }
        break;
    }
    default:
        break;
    }
}

void gq_tile_scalar(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y,
                    int64_t ldy)
{
    const int64_t ng = k / GQ_QK;
    for (int i = 0; i < na; i++) {
        for (int j = 0; j < nw; j++) {
            float acc = 0;
            for (int64_t g = 0; g < ng; g++) {
                const int8_t *wq = w[j].q + g * GQ_QK, *aq = a[i].q + g * GQ_QK;
                for (int l = 0; l < 8; l++) {
                    int s = 0;
                    for (int e = 4 * l; e < 4 * l + 4; e++) s += wq[e] * aq[e];
                    acc += (float)s * (w[j].sv[8 * g + l] * a[i].d[g]);
                }
            }
            if (flags & GQ_TILE_MIN)
                for (int64_t g = 0; g < ng; g++) acc += w[j].mn[g] * a[i].s[g];
            y[i * ldy + j] = acc;
        }
    }
}

size_t gq_unit_bytes(int64_t k)
{
    /* codes + (scales + coefficients) at the finest sub-group (16) */
    return (size_t)k * 16 + 2 * (size_t)(k / 16) * 16 * sizeof(float) + 64;
}

void gq_op_repack(int wtype, int64_t k, const gq_wrow *rows, int nrows, void *mem, gq_unit *u)
{
    const int sg = wtype == GQ_Q6_K ? 16 : 32;
    const int off = wtype == GQ_Q8_0 ? 128 : wtype == GQ_Q6_K ? 32 : 0;
    const int64_t nsub = k / sg;
    u->q = mem;
    u->sc = (float *)((uint8_t *)mem + (size_t)k * 16);
    u->mn = u->sc + nsub * 16;
    u->sg = sg;
    u->rows = nrows;
    /* bytewise q + off without carries between the bytes of a word */
    const uint32_t offw = (uint32_t)off * 0x01010101u;
    for (int64_t t = 0; t < k / 4; t++) {
        uint32_t *dst = (uint32_t *)(void *)(u->q + t * 64);
        int r = 0;
        for (; r < nrows; r++) {
            uint32_t x;
            memcpy(&x, rows[r].q + 4 * t, 4);
            dst[r] = ((x & 0x7F7F7F7Fu) + (offw & 0x7F7F7F7Fu)) ^ ((x ^ offw) & 0x80808080u);
        }
        for (; r < 16; r++) dst[r] = 0;
    }
    for (int r = 0; r < 16; r++) {
        if (r >= nrows) {
            for (int64_t sb = 0; sb < nsub; sb++) u->sc[sb * 16 + r] = u->mn[sb * 16 + r] = 0;
            continue;
        }
        const gq_wrow *w = &rows[r];
        for (int64_t sb = 0; sb < nsub; sb++) {
            /* lane scales: group g = sb (sg 32) or sb / 2, half sb % 2 (sg 16) */
            const float scale = sg == 32 ? w->sv[8 * sb] : w->sv[8 * (sb / 2) + 4 * (sb % 2)];
            u->sc[sb * 16 + r] = scale;
            u->mn[sb * 16 + r] = (float)-off * scale + (sg == 32 ? w->mn[sb] : 0.0f);
        }
    }
}

#if !(defined(__x86_64__) || defined(__i386__))
void gq_tile_avx2(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y, int64_t ldy)
{
    gq_tile_scalar(k, flags, w, nw, a, na, y, ldy);
}
void gq_op_matmul_avx512(int64_t k, const gq_unit *u, const gq_act *a, int na, float *y, int64_t ldy)
{
    (void)k; (void)u; (void)a; (void)na; (void)y; (void)ldy;
}
#endif

int gq_select_isa(int max_isa, gq_tile_fn *tile, const char **name)
{
    *tile = gq_tile_scalar;
    if (name) *name = "scalar";
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (max_isa >= GQ_ISA_AVX2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        *tile = gq_tile_avx2;
        if (name) *name = "avx2";
        if (max_isa >= GQ_ISA_AVX512 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
            if (name) *name = "avx512vnni";
            return GQ_ISA_AVX512;
        }
        return GQ_ISA_AVX2;
    }
#else
    (void)max_isa;
#endif
    return GQ_ISA_SCALAR;
}
