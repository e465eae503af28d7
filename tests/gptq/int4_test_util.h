/* Helpers shared by the awq and gptq tests: trained-looking layers and
 * calibration data, decoders of the saved checkpoint layouts written from
 * the format descriptions (not from the plugins' code), and float64
 * references. Include after plugin_harness.h and cmocka. */
#ifndef INT4_TEST_UTIL_H
#define INT4_TEST_UTIL_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Student t with 5 degrees of freedom: heavy tails like trained weights. */
static inline double rng_t5(void)
{
    double chi = 0;
    for (int i = 0; i < 5; i++) {
        double z = rng_normal();
        chi += z * z;
    }
    return rng_normal() / sqrt(chi / 5.0);
}

static inline void gen_weights(float *w, int64_t N, int64_t K)
{
    double s = 1.0 / sqrt((double)K);
    for (int64_t i = 0; i < N * K; i++) w[i] = (float)(rng_t5() * s);
}

/* An activation distribution: rank-r correlated part plus noise, a few
 * channels (n_big) scaled by `big`, as hidden states look after a norm. */
typedef struct act_dist {
    int64_t K, r;
    float *mix;  /* [r, K] */
    float *gain; /* [K] */
} act_dist;

static inline act_dist act_dist_new(int64_t K, int64_t r, int n_big, float big)
{
    act_dist d = {K, r, malloc((size_t)(r * K) * sizeof(float)), malloc((size_t)K * sizeof(float))};
    fill_normal(d.mix, r * K, 1.0f);
    for (int64_t k = 0; k < K; k++) d.gain[k] = 1.0f;
    for (int i = 0; i < n_big; i++) d.gain[rng_next() % (uint64_t)K] = big;
    return d;
}

static inline void act_dist_free(act_dist *d)
{
    free(d->mix);
    free(d->gain);
}

static inline void act_sample(const act_dist *d, float *x, int64_t T)
{
    double *z = malloc((size_t)d->r * sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t j = 0; j < d->r; j++) z[j] = rng_normal();
        for (int64_t k = 0; k < d->K; k++) {
            double v = 0;
            for (int64_t j = 0; j < d->r; j++) v += z[j] * d->mix[j * d->K + k];
            x[t * d->K + k] = (float)((v / sqrt((double)d->r) + 0.3 * rng_normal()) * d->gain[k]);
        }
    }
    free(z);
}

/* ||X (W - W_hat)^T|| / ||X W^T|| in double; x_scale (or NULL) divides the
 * input the packed weight sees: y_hat = (x / s) W_hat^T. */
static inline double output_error(const float *W, const double *what, const float *x_scale, const float *X, int64_t T,
                                  int64_t N, int64_t K)
{
    double e2 = 0, s2 = 0;
    for (int64_t t = 0; t < T; t++)
        for (int64_t n = 0; n < N; n++) {
            double y = 0, yh = 0;
            for (int64_t k = 0; k < K; k++) {
                double xv = X[t * K + k];
                y += xv * W[n * K + k];
                yh += (x_scale ? xv / x_scale[k] : xv) * what[n * K + k];
            }
            e2 += (y - yh) * (y - yh);
            s2 += y * y;
        }
    return sqrt(e2 / s2);
}

/* ------------------------------------------------------------ layouts */

static inline const stored *need(store *s, const char *name, int dtype, int ndim)
{
    stored *it = store_find(s, name);
    assert_non_null(it);
    assert_int_equal(it->t.dtype, dtype);
    assert_int_equal(it->t.ndim, ndim);
    return it;
}

/* GPTQ (AutoGPTQ): qweight int32 [K/8, N], element k of column n in bits
 * 4*(k%8) of row k/8; qzeros int32 [ngroups, ceil(N/8)], zero of column n
 * in bits 4*(n%8) of word n/8, stored minus one in v1; scales fp16
 * [ngroups, N]; g_idx int32 [K]. Fills W_hat [N, K] and codes [N, K]. */
static inline void decode_gptq(store *s, int64_t N, int64_t K, int v1, double *what, uint8_t *codes)
{
    const stored *qw = need(s, "qweight", QTOOL_DTYPE_I32, 2), *qz = need(s, "qzeros", QTOOL_DTYPE_I32, 2);
    const stored *sc = need(s, "scales", QTOOL_DTYPE_F16, 2), *gi = need(s, "g_idx", QTOOL_DTYPE_I32, 1);
    assert_int_equal(qw->t.shape[0], K / 8);
    assert_int_equal(qw->t.shape[1], N);
    int64_t ng = sc->t.shape[0], nw = (N + 7) / 8;
    assert_int_equal(sc->t.shape[1], N);
    assert_int_equal(qz->t.shape[0], ng);
    assert_int_equal(qz->t.shape[1], nw);
    assert_int_equal(gi->t.shape[0], K);
    const uint32_t *q = qw->t.data, *z = qz->t.data;
    const uint16_t *scv = sc->t.data;
    const int32_t *g = gi->t.data;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            unsigned c = (q[(k / 8) * N + n] >> (4 * (k % 8))) & 15u;
            int32_t gr = g[k];
            assert_true(gr >= 0 && gr < ng);
            uint32_t zw = z[gr * nw + n / 8];
            unsigned zero;
            if (v1)
                zero = (((zw >> (4 * (n % 8))) & 15u) + 1u); /* nibble-wise reader: zeros here are never 0 */
            else
                zero = (zw >> (4 * (n % 8))) & 15u;
            if (codes) codes[n * K + k] = (uint8_t)c;
            what[n * K + k] = ((double)c - (double)zero) * qtool_f16_to_f32(scv[gr * N + n]);
        }
}

/* AutoAWQ GEMM: qweight int32 [K, ceil(N/8)]; nibble i of word c holds
 * column 8c + [0,2,4,6,1,3,5,7][i]; qzeros int32 [ngroups, ceil(N/8)] the
 * same way; scales fp16 [ngroups, N]. */
static inline void decode_awq(store *s, int64_t N, int64_t K, double *what, uint8_t *codes, uint8_t *zeros_out)
{
    static const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
    const stored *qw = need(s, "qweight", QTOOL_DTYPE_I32, 2), *qz = need(s, "qzeros", QTOOL_DTYPE_I32, 2);
    const stored *sc = need(s, "scales", QTOOL_DTYPE_F16, 2);
    int64_t ng = sc->t.shape[0], nw = (N + 7) / 8, G = K / ng;
    assert_int_equal(qw->t.shape[0], K);
    assert_int_equal(qw->t.shape[1], nw);
    assert_int_equal(sc->t.shape[1], N);
    assert_int_equal(qz->t.shape[0], ng);
    assert_int_equal(qz->t.shape[1], nw);
    assert_int_equal(K % ng, 0);
    const uint32_t *q = qw->t.data, *z = qz->t.data;
    const uint16_t *scv = sc->t.data;
    for (int64_t k = 0; k < K; k++)
        for (int64_t c = 0; c < nw; c++)
            for (int i = 0; i < 8; i++) {
                int64_t n = 8 * c + order[i];
                if (n >= N) continue;
                int64_t g = k / G;
                unsigned code = (q[k * nw + c] >> (4 * i)) & 15u, zero = (z[g * nw + c] >> (4 * i)) & 15u;
                if (codes) codes[n * K + k] = (uint8_t)code;
                if (zeros_out) zeros_out[n * ng + g] = (uint8_t)zero;
                what[n * K + k] = ((double)code - (double)zero) * qtool_f16_to_f32(scv[g * N + n]);
            }
}

/* y = x W_hat^T + b in double; matmul's result must be within 2e-5 of the
 * cancellation-free magnitude (float accumulation over K). */
static inline void check_matmul_ref(const float *x, const double *what, const float *bias, const float *y, int64_t M,
                                    int64_t N, int64_t K, const char *label)
{
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double ref = bias ? bias[n] : 0.0, mag = fabs(ref);
            for (int64_t k = 0; k < K; k++) {
                ref += (double)x[m * K + k] * what[n * K + k];
                mag += fabs((double)x[m * K + k] * what[n * K + k]);
            }
            if (fabs(y[m * N + n] - ref) > 2e-5 * mag + 1e-6) {
                fprintf(stderr, "%s M=%lld N=%lld K=%lld [%lld,%lld]: %.8g vs %.8g\n", label, (long long)M,
                        (long long)N, (long long)K, (long long)m, (long long)n, y[m * N + n], ref);
                fail();
            }
        }
}

static inline void save_all(const harness *H, const qtool_packed *p, store *s)
{
    qtool_save_sink sink = {s, store_put};
    assert_int_equal(H->desc->save(p, &sink), QTOOL_OK);
}

static inline void run_cpu(const harness *H, qtool_packed *p, const float *x, float *y, int64_t M, int64_t N,
                           int64_t K)
{
    qtool_tensor xt = tview((void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H->desc->matmul_cpu(p, &ma), QTOOL_OK);
}

static inline void calibrate_rows(const harness *H, qtool_instance *inst, const qtool_layer_info *li, const float *x,
                                  int64_t T, int64_t K, int64_t batch)
{
    for (int64_t t0 = 0; t0 < T; t0 += batch) {
        int64_t tr = T - t0 < batch ? T - t0 : batch;
        qtool_tensor xt = tview((void *)(x + t0 * K), QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, tr, K);
        assert_int_equal(H->desc->calibrate(inst, li, &xt), QTOOL_OK);
    }
}

/* Packs w [N, K] (F32) with an optional bias; returns the input scale
 * (all ones when the plugin gave none) through scale_out when non-NULL. */
static inline qtool_packed *pack_layer(const harness *H, qtool_instance *inst, const qtool_layer_info *li,
                                       const float *w, const float *bias, int device, float *scale_out,
                                       int32_t *has_scale)
{
    float *scale = malloc((size_t)li->in_features * sizeof(float));
    int32_t hs = 0;
    qtool_packed *p = NULL;
    int rc = harness_pack(H, inst, li, w, bias, device, scale, &hs, &p);
    if (rc != QTOOL_OK) fprintf(stderr, "pack failed: %d\n", rc);
    assert_int_equal(rc, QTOOL_OK);
    if (scale_out)
        for (int64_t k = 0; k < li->in_features; k++) scale_out[k] = hs ? scale[k] : 1.0f;
    if (has_scale) *has_scale = hs;
    free(scale);
    return p;
}

static inline qtool_instance *make_inst(harness *H, const char *const *kv, int n)
{
    qtool_instance *inst = NULL;
    char msg[256] = "";
    int rc = harness_create(H, kv, n, &inst, msg, sizeof msg);
    if (rc) fprintf(stderr, "create: %s\n", msg);
    assert_int_equal(rc, QTOOL_OK);
    return inst;
}

/* An instance from kv, calibrated on xc [T, K] (when T > 0) in batches of
 * 256 rows, packs w for `device`; returns the held-out output error on xh
 * [Th, K] of the dequantized weight (input divided by the plugin's scale)
 * and the scale through s_out when non-NULL. */
static inline double packed_output_error(harness *H, const char *const *kv, int nkv, const qtool_layer_info *li,
                                         const float *w, const float *xc, int64_t T, const float *xh, int64_t Th,
                                         int device, float *s_out)
{
    const int64_t N = li->out_features, K = li->in_features;
    qtool_instance *inst = make_inst(H, kv, nkv);
    if (T > 0) calibrate_rows(H, inst, li, xc, T, K, 256);
    float *s = malloc((size_t)K * 4);
    qtool_packed *p = pack_layer(H, inst, li, w, NULL, device, s, NULL);
    float *wf = malloc((size_t)(N * K) * 4);
    double *what = malloc((size_t)(N * K) * 8);
    assert_int_equal(H->desc->dequantize(p, wf), QTOOL_OK);
    for (int64_t i = 0; i < N * K; i++) what[i] = wf[i];
    double e = output_error(w, what, s, xh, Th, N, K);
    if (s_out) memcpy(s_out, s, (size_t)K * 4);
    free(s);
    free(wf);
    free(what);
    H->desc->free_packed(p);
    H->desc->destroy(inst);
    return e;
}

#endif
