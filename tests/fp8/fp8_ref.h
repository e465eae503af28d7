/* Test-side reference for the fp8 plugin: an E4M3 table built from the
 * format's definition in float64, nearest-even rounding against that
 * table, and an emulation of exactly what the GPU computes (per-token
 * absmax / 448 scales, E4M3 codes of x * 448/absmax, exact products summed
 * in float64, scales applied in float). Shared by the CPU and CUDA tests.
 * Needs plugin_harness.h first. */
#ifndef FP8_REF_H
#define FP8_REF_H

#include <jansson.h>

static harness H;

#include "w8a8_test.h"

/* Value of code c from the definition: sign, exponent bias 7, 3 mantissa
 * bits, subnormals at exponent 0, S.1111.111 NaN. */
static double ref_decode(int c)
{
    int s = (c >> 7) & 1, e = (c >> 3) & 15, m = c & 7;
    if ((c & 0x7F) == 0x7F) return NAN;
    double v = e == 0 ? ldexp((double)m, -9) : ldexp(1.0 + m / 8.0, e - 7);
    return s ? -v : v;
}

/* Nearest code in float64, ties to the even code, saturated at 448. */
static int ref_encode(double x)
{
    if (isnan(x)) return 0x7F;
    int sign = signbit(x) ? 0x80 : 0;
    double a = fabs(x);
    if (a >= 448.0) return sign | 0x7E;
    /* Codes 0..0x7E are the non-negative values in increasing order: find
     * the neighbours below and above by bisection, take the nearer. */
    static double table[0x7F];
    static int ready;
    if (!ready) {
        for (int c = 0; c <= 0x7E; c++) table[c] = ref_decode(c);
        ready = 1;
    }
    int lo = 0, hi = 0x7E; /* table[lo] <= a < table[hi] unless a is 448 */
    while (hi - lo > 1) {
        int mid = (lo + hi) / 2;
        if (table[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - table[lo], dh = table[hi] - a;
    int best = dl < dh ? lo : dh < dl ? hi : ((lo & 1) == 0 ? lo : hi);
    if (table[hi] <= a) best = hi;
    return sign | best;
}

static qtool_packed *pack_layer(qtool_instance *inst, const char *name, const float *w, int64_t N, int64_t K,
                                const float *b, int device)
{
    qtool_layer_info li = layer_info(name, N, K);
    float *s = malloc((size_t)K * 4);
    int32_t has = 0;
    qtool_packed *p = NULL;
    assert_int_equal(harness_pack(&H, inst, &li, w, b, device, s, &has, &p), QTOOL_OK);
    assert_int_equal(has, 0); /* fp8 never asks for an input scale */
    free(s);
    return p;
}

/* What the plugin saved: E4M3 codes, per-channel scales, static scale. */
static void save_layer(qtool_packed *p, ct_saved *s, int64_t N, int64_t K)
{
    ct_save(p, s, N, K, QTOOL_DTYPE_F8_E4M3);
}

/* What the GPU computes, from the saved codes. `x` holds values the
 * device input can represent. acc_mag (may be NULL) receives
 * sum |a_k w_k| * scales per output, the scale of accumulation error. */
static void emulate(const ct_saved *s, const float *x, float *y, double *acc_mag, int64_t M, int64_t N, int64_t K)
{
    double *qa = malloc((size_t)K * sizeof(double));
    double *wd = malloc((size_t)(N * K) * sizeof(double));
    for (int64_t i = 0; i < N * K; i++) wd[i] = ref_decode(s->u8[i]);
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        float sa, inv;
        if (s->act_scale > 0.0f) {
            sa = s->act_scale;
            inv = 1.0f / sa;
        } else {
            float amax = 0.0f;
            for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(xr[k]));
            sa = amax / 448.0f;
            inv = amax > 0.0f ? 448.0f / amax : 0.0f;
        }
        for (int64_t k = 0; k < K; k++) qa[k] = ref_decode(ref_encode((double)(xr[k] * inv)));
        for (int64_t n = 0; n < N; n++) {
            double acc = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
                acc += qa[k] * wd[n * K + k];
                mag += fabs(qa[k] * wd[n * K + k]);
            }
            float v = (float)acc * sa;
            v = v * s->ws[n];
            y[m * N + n] = v + (s->bias ? s->bias[n] : 0.0f);
            if (acc_mag) acc_mag[m * N + n] = mag * sa * s->ws[n];
        }
    }
    free(qa);
    free(wd);
}

static void reference(const float *w, const float *b, const float *x, double *y, int64_t M, int64_t N, int64_t K)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = b ? b[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)x[m * K + k] * w[n * K + k];
            y[m * N + n] = acc;
        }
}

static double rel_rms(const float *y, const double *ref, int64_t n)
{
    double e = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = y[i] - ref[i];
        e += d * d;
        r += ref[i] * ref[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

#endif
