/* Test-side reference for the smoothquant plugin: packing, calibrating and
 * multiplying through the plugin ABI, and an independent emulation of the
 * W8A8 arithmetic from the saved codes and scales (written with
 * nearbyintf, not the plugin's rounding trick). Shared by the CPU and CUDA
 * tests. Needs plugin_harness.h first. */
#ifndef SQ_REF_H
#define SQ_REF_H

#include <jansson.h>

static harness H;

#include "w8a8_test.h"

/* Packs; s[K] receives the input scale (ones when the plugin set none). */
static qtool_packed *pack_layer(qtool_instance *inst, const char *name, const float *w, int64_t N, int64_t K,
                                const float *b, int device, float *s, int *has_scale)
{
    qtool_layer_info li = layer_info(name, N, K);
    int32_t has = 0;
    qtool_packed *p = NULL;
    assert_int_equal(harness_pack(&H, inst, &li, w, b, device, s, &has, &p), QTOOL_OK);
    if (!has)
        for (int64_t k = 0; k < K; k++) s[k] = 1.0f;
    if (has_scale) *has_scale = has;
    return p;
}

static void matmul_cpu(qtool_packed *p, const float *x, float *y, int64_t M, int64_t N, int64_t K)
{
    qtool_tensor xt = tview((void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_OK);
}

/* What the plugin saved: int8 codes, per-channel scales, static scale. */
static void save_layer(qtool_packed *p, ct_saved *s, int64_t N, int64_t K)
{
    ct_save(p, s, N, K, QTOOL_DTYPE_I8);
}

/* The W8A8 product from the saved codes: per-token absmax / 127 (or the
 * static scale), round half to even, exact integer sums, dequantized in
 * float in the documented order. x is the (already divided) layer input. */
static void emulate(const ct_saved *s, const float *x, float *y, int64_t M, int64_t N, int64_t K)
{
    int *qa = malloc((size_t)K * sizeof(int));
    for (int64_t m = 0; m < M; m++) {
        const float *xr = x + m * K;
        float sa, inv;
        if (s->act_scale > 0.0f) {
            sa = s->act_scale;
            inv = 1.0f / sa;
        } else {
            float amax = 0.0f;
            for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(xr[k]));
            sa = amax / 127.0f;
            inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        }
        for (int64_t k = 0; k < K; k++) {
            float v = xr[k] * inv;
            v = fminf(fmaxf(v, -127.0f), 127.0f);
            qa[k] = (int)nearbyintf(v);
        }
        for (int64_t n = 0; n < N; n++) {
            int64_t acc = 0;
            for (int64_t k = 0; k < K; k++) acc += (int64_t)qa[k] * s->i8[n * K + k];
            float v = (float)acc * sa;
            v = v * s->ws[n];
            y[m * N + n] = v + (s->bias ? s->bias[n] : 0.0f);
        }
    }
    free(qa);
}

/* y_true = (x * s) W^T + b in float64: what the layer computed before
 * quantization (x is the divided input, as the plugin receives it). */
static void reference(const float *w, const float *b, const float *s, const float *x, double *y, int64_t M, int64_t N,
                      int64_t K)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double acc = b ? b[n] : 0.0;
            for (int64_t k = 0; k < K; k++) acc += (double)x[m * K + k] * s[k] * w[n * K + k];
            y[m * N + n] = acc;
        }
}

/* sqrt(sum (y - ref)^2 / sum ref^2) */
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
