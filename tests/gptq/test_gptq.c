/* gptq plugin, CPU: the dense linear algebra against float64 definitions,
 * the AutoGPTQ layout against hand-built examples (v1 and v2 zeros,
 * act-order g_idx), save/load, matmul against float64 at odd shapes,
 * refusal of unsupported K, memory accounting, calibration edge cases and
 * the quality claim (held-out output error below round-to-nearest's).
 * Fresh random inputs every run (seed printed). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "int4_test_util.h"
#include "gptq_linalg.h"

static harness H;

/* gptq_linalg.c is compiled into this test; these are the two int4g
 * services it uses (the plugin has its own copy). */
void *int4g_tmp_alloc(const int4g_ctx *c, size_t bytes)
{
    return c->host->alloc(c->host->ctx, QTOOL_DEVICE_CPU, bytes ? bytes : 1, QTOOL_MEM_OTHER);
}
void int4g_tmp_free(const int4g_ctx *c, void *p)
{
    if (p) c->host->free(c->host->ctx, QTOOL_DEVICE_CPU, p);
}

static int4g_ctx linalg_ctx(void)
{
    int4g_ctx c;
    memset(&c, 0, sizeof c);
    c.host = &H.svc.table;
    c.plugin = "gptq";
    return c;
}

static int setup(void **state)
{
    (void)state;
    return harness_open(&H, "gptq", -1, NULL);
}

static int teardown(void **state)
{
    (void)state;
    harness_close(&H);
    return 0;
}

static qtool_layer_info layer(const char *name, int64_t N, int64_t K, int block)
{
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, name, K, N, block, 4};
    return li;
}

/* ------------------------------------------------------------ linear algebra */

static void random_spd(double *A, int64_t K)
{
    int64_t r = K + 3;
    double *B = malloc((size_t)(K * r) * sizeof(double));
    for (int64_t i = 0; i < K * r; i++) B[i] = rng_normal();
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < K; j++) {
            double s = 0;
            for (int64_t t = 0; t < r; t++) s += B[i * r + t] * B[j * r + t];
            A[i * K + j] = s / (double)r + (i == j ? 0.05 : 0.0);
        }
    free(B);
}

static void test_syrk(void **state)
{
    (void)state;
    int4g_ctx c = linalg_ctx();
    static const int64_t Ks[] = {1, 32, 100, 130};
    for (int ki = 0; ki < 4; ki++) {
        int64_t K = Ks[ki], T = 300;
        float *x = malloc((size_t)(T * K) * sizeof(float));
        double *Hm = calloc((size_t)(K * K), sizeof(double));
        fill_normal(x, T * K, 1.0f);
        for (int64_t k = 0; k < K; k += 7) x[k] = 0; /* exercise zeros */
        Hm[0] = 5.0;                                  /* existing contents are accumulated onto */
        assert_int_equal(gptq_syrk_upper(&c, Hm, K, x, T, 0.25), QTOOL_OK);
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                double ref = (i == 0 && j == 0) ? 5.0 : 0.0, mag = fabs(ref);
                if (j >= i)
                    for (int64_t t = 0; t < T; t++) {
                        ref += 0.25 * (double)x[t * K + i] * x[t * K + j];
                        mag += 0.25 * fabs((double)x[t * K + i] * x[t * K + j]);
                    }
                assert_true(fabs(Hm[i * K + j] - ref) <= 1e-13 * mag + 1e-300);
            }
        free(x);
        free(Hm);
    }
}

static void test_cholesky_inverse(void **state)
{
    (void)state;
    int4g_ctx c = linalg_ctx();
    static const int64_t Ks[] = {1, 2, 7, 64, 65, 200};
    for (int ki = 0; ki < 6; ki++) {
        int64_t K = Ks[ki];
        size_t bytes = (size_t)(K * K) * sizeof(double);
        double *A = malloc(bytes), *L = malloc(bytes), *Y = malloc(bytes), *Hc = malloc(bytes), *Ut = malloc(bytes);
        random_spd(A, K);
        memcpy(L, A, bytes);
        assert_int_equal(gptq_cholesky_lower(&c, L, K), 0);
        /* L L^T = A, L lower with a positive diagonal */
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                if (j > i) assert_true(L[i * K + j] == 0.0);
                if (j == i) assert_true(L[i * K + i] > 0);
                double s = 0;
                for (int64_t p = 0; p < K; p++) s += L[i * K + p] * L[j * K + p];
                assert_true(fabs(s - A[i * K + j]) < 1e-11 * (1 + fabs(A[i * K + j])));
            }
        /* Y = (L^-1)^T: L Y^T = I */
        assert_int_equal(gptq_tri_inverse_t(&c, L, Y, K), 0);
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                double s = 0;
                for (int64_t p = 0; p < K; p++) s += L[i * K + p] * Y[j * K + p];
                assert_true(fabs(s - (i == j)) < 1e-9);
            }
        /* U upper, positive diagonal, U^T U = A^-1, i.e. (U^T U) A = I */
        memcpy(Hc, A, bytes);
        assert_int_equal(gptq_inverse_cholesky_t(&c, Hc, Ut, K), 0);
        double *UtU = calloc((size_t)(K * K), sizeof(double));
        for (int64_t i = 0; i < K; i++) {
            assert_true(Ut[i * K + i] > 0);
            for (int64_t j = i + 1; j < K; j++) assert_true(Ut[i * K + j] == 0.0); /* Ut lower: U upper */
        }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                double s = 0; /* (U^T U)[i][j] = sum_p U[p][i] U[p][j] = sum_p Ut[i][p] Ut[j][p] */
                for (int64_t p = 0; p < K; p++) s += Ut[i * K + p] * Ut[j * K + p];
                UtU[i * K + j] = s;
            }
        for (int64_t i = 0; i < K; i++)
            for (int64_t j = 0; j < K; j++) {
                double s = 0;
                for (int64_t p = 0; p < K; p++) s += UtU[i * K + p] * A[p * K + j];
                assert_true(fabs(s - (i == j)) < 1e-8);
            }
        /* not positive definite: refused */
        memcpy(Hc, A, bytes);
        Hc[(K / 2) * K + K / 2] = -1.0;
        assert_int_equal(gptq_cholesky_lower(&c, Hc, K), -1);
        free(A);
        free(L);
        free(Y);
        free(Hc);
        free(Ut);
        free(UtU);
    }
}

/* ------------------------------------------------------------ layout */

/* Codes chosen by hand: with no calibration the plugin rounds to nearest;
 * weights (c - 8) * f with every group holding codes 0 and 15 make the
 * scale exactly 1 and the zero 8, so the codes come back as chosen. */
static void check_layout(int sym, int v2, int64_t N, int64_t K, int G)
{
    float *w = malloc((size_t)(N * K) * sizeof(float));
    uint8_t *code = malloc((size_t)(N * K));
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            unsigned c = (unsigned)((n * 7 + k * 3 + (k * k) / 5) % 16);
            if (k % G == 0) c = 0;
            if (k % G == 1) c = 15;
            code[n * K + k] = (uint8_t)c;
            /* sym: range [-7.5, 7.5] -> scale 1; asym: [-8, 7] -> scale 1, zero 8 */
            w[n * K + k] = sym ? ((float)c - 8.0f) * 0.9375f : (float)c - 8.0f;
        }
    char g[32], s[16], f[40];
    snprintf(g, sizeof g, "group_size=%d", G);
    snprintf(s, sizeof s, "sym=%d", sym);
    snprintf(f, sizeof f, "checkpoint_format=%s", v2 ? "gptq_v2" : "gptq");
    const char *kv[] = {g, s, f};
    qtool_instance *inst = make_inst(&H, kv, 3);
    qtool_layer_info li = layer("hand.weight", N, K, 0);
    qtool_packed *p = pack_layer(&H, inst, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    store st = {0};
    save_all(&H, p, &st);
    const uint32_t *qw = store_find(&st, "qweight")->t.data, *qz = store_find(&st, "qzeros")->t.data;
    const uint16_t *sc = store_find(&st, "scales")->t.data;
    const int32_t *gi = store_find(&st, "g_idx")->t.data;
    assert_int_equal(store_find(&st, "qweight")->t.shape[0], K / 8);
    assert_int_equal(store_find(&st, "qweight")->t.shape[1], N);
    int64_t ng = K / G, nw = (N + 7) / 8;
    for (int64_t r = 0; r < K / 8; r++)
        for (int64_t n = 0; n < N; n++) {
            uint32_t want = 0;
            for (int j = 0; j < 8; j++) want |= (uint32_t)code[n * K + 8 * r + j] << (4 * j);
            assert_int_equal(qw[r * N + n], want);
        }
    for (int64_t i = 0; i < ng * N; i++) assert_int_equal(sc[i], 0x3C00); /* fp16 1.0 */
    for (int64_t k = 0; k < K; k++) assert_int_equal(gi[k], k / G);
    for (int64_t gr = 0; gr < ng; gr++)
        for (int64_t c = 0; c < nw; c++) {
            /* zero 8 in every used nibble; past N the padding is 8 too */
            uint32_t want = v2 ? 0x88888888u : 0x77777777u;
            assert_int_equal(qz[gr * nw + c], want);
        }
    store_free(&st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
    free(code);
}

static void test_layout(void **state)
{
    (void)state;
    check_layout(1, 0, 16, 64, 32);
    check_layout(1, 1, 16, 64, 32);
    check_layout(0, 0, 19, 256, 128);
    check_layout(0, 1, 5, 128, 64);
}

/* Loading AutoGPTQ/gptqmodel tensors built by hand: random codes, zeros
 * 0..15 (v2) or 1..15 (v1, where a per-nibble reader can represent them),
 * random fp16 scales, an act-order g_idx. */
static void check_load_handbuilt(int v2, int64_t N, int64_t K, int64_t ng, int actorder)
{
    int64_t nw = (N + 7) / 8;
    uint8_t *code = malloc((size_t)(N * K)), *zero = malloc((size_t)(N * ng));
    uint32_t *qweight = calloc((size_t)(K / 8 * N), 4), *qzeros = calloc((size_t)(ng * nw), 4);
    uint16_t *scales = malloc((size_t)(ng * N) * 2);
    int32_t *gidx = malloc((size_t)K * 4);
    for (int64_t i = 0; i < N * K; i++) code[i] = (uint8_t)(rng_next() % 16);
    for (int64_t i = 0; i < N * ng; i++) zero[i] = (uint8_t)(v2 ? rng_next() % 16 : 1 + rng_next() % 15);
    for (int64_t i = 0; i < ng * N; i++) scales[i] = qtool_f32_to_f16((float)(0.001 + 0.05 * rng_uniform()));
    int64_t G = K / ng;
    for (int64_t k = 0; k < K; k++) gidx[k] = (int32_t)(k / G);
    if (actorder) /* shuffle: each group keeps G members */
        for (int64_t k = K - 1; k > 0; k--) {
            int64_t j = (int64_t)(rng_next() % (uint64_t)(k + 1));
            int32_t t = gidx[k];
            gidx[k] = gidx[j];
            gidx[j] = t;
        }
    for (int64_t k = 0; k < K; k++)
        for (int64_t n = 0; n < N; n++) qweight[(k / 8) * N + n] |= (uint32_t)code[n * K + k] << (4 * (k % 8));
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t n = 0; n < nw * 8; n++) /* past N: padding, 8 as the plugin writes it */
            qzeros[g * nw + n / 8] |= (n < N ? (uint32_t)zero[n * ng + g] : 8u) << (4 * (n % 8));
        if (!v2)
            for (int64_t c = 0; c < nw; c++) qzeros[g * nw + c] -= 0x11111111u; /* zeros minus one, per nibble here */
    }
    store st = {0};
    qtool_tensor t = tview(qweight, QTOOL_DTYPE_I32, QTOOL_DEVICE_CPU, 2, K / 8, N);
    assert_int_equal(store_put(&st, "qweight", &t), 0);
    t = tview(qzeros, QTOOL_DTYPE_I32, QTOOL_DEVICE_CPU, 2, ng, nw);
    assert_int_equal(store_put(&st, "qzeros", &t), 0);
    t = tview(scales, QTOOL_DTYPE_F16, QTOOL_DEVICE_CPU, 2, ng, N);
    assert_int_equal(store_put(&st, "scales", &t), 0);
    t = tview(gidx, QTOOL_DTYPE_I32, QTOOL_DEVICE_CPU, 1, K, 0);
    assert_int_equal(store_put(&st, "g_idx", &t), 0);
    const char *kv[] = {v2 ? "checkpoint_format=gptq_v2" : "checkpoint_format=gptq"};
    qtool_instance *inst = make_inst(&H, kv, 1);
    qtool_layer_info li = layer("hand.weight", N, K, 0);
    qtool_load_source src = {&st, store_get, store_has};
    qtool_packed *p = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &p), QTOOL_OK);
    float *wf = malloc((size_t)(N * K) * 4);
    double *ref = malloc((size_t)(N * K) * 8);
    assert_int_equal(H.desc->dequantize(p, wf), QTOOL_OK);
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) {
            int64_t g = gidx[k];
            ref[n * K + k] = ((double)code[n * K + k] - zero[n * ng + g]) * qtool_f16_to_f32(scales[g * N + n]);
            assert_true((double)wf[n * K + k] == ref[n * K + k]);
        }
    int64_t M = 5;
    float *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4);
    fill_normal(x, M * K, 1.0f);
    run_cpu(&H, p, x, y, M, N, K);
    check_matmul_ref(x, ref, NULL, y, M, N, K, "handbuilt");
    /* saving gives back the same tensors */
    store s2 = {0};
    save_all(&H, p, &s2);
    for (int i = 0; i < st.n; i++) {
        stored *o = store_find(&s2, st.items[i].name);
        assert_non_null(o);
        assert_memory_equal(o->t.data, st.items[i].t.data,
                            (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
    }
    store_free(&s2);
    store_free(&st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(code);
    free(zero);
    free(qweight);
    free(qzeros);
    free(scales);
    free(gidx);
    free(wf);
    free(ref);
    free(x);
    free(y);
}

static void test_load_handbuilt(void **state)
{
    (void)state;
    check_load_handbuilt(0, 24, 256, 2, 0);
    check_load_handbuilt(1, 24, 256, 2, 0);
    check_load_handbuilt(1, 21, 128, 4, 1); /* N not a multiple of 8, act-order */
    check_load_handbuilt(0, 16, 96, 3, 1);  /* group 32 */
    check_load_handbuilt(1, 8, 64, 1, 0);   /* one group per row */
}

/* ------------------------------------------------------------ matmul */

static void check_matmul(const char *const *kv, int nkv, int64_t N, int64_t K, int with_bias)
{
    float *w = malloc((size_t)(N * K) * 4), *b = malloc((size_t)N * 4);
    gen_weights(w, N, K);
    fill_normal(b, N, 0.5f);
    round_to_f16(b, N); /* the bias is kept at fp16 */
    act_dist d = act_dist_new(K, 8, 2, 8.0f);
    int64_t T = 3 * K;
    float *xc = malloc((size_t)(T * K) * 4);
    act_sample(&d, xc, T);
    qtool_instance *inst = make_inst(&H, kv, nkv);
    qtool_layer_info li = layer("mm.weight", N, K, 0);
    calibrate_rows(&H, inst, &li, xc, T, K, 64);
    qtool_packed *p = pack_layer(&H, inst, &li, w, with_bias ? b : NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    store st = {0};
    save_all(&H, p, &st);
    double *what = malloc((size_t)(N * K) * 8);
    int v2 = 0;
    for (int i = 0; i < nkv; i++) v2 |= !strcmp(kv[i], "checkpoint_format=gptq_v2");
    decode_gptq(&st, N, K, !v2, what, NULL);
    static const int64_t Ms[] = {1, 3, 17, 129};
    for (int mi = 0; mi < 4; mi++) {
        int64_t M = Ms[mi];
        float *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4);
        act_sample(&d, x, M);
        run_cpu(&H, p, x, y, M, N, K);
        check_matmul_ref(x, what, with_bias ? b : NULL, y, M, N, K, kv[0]);
        free(x);
        free(y);
    }
    /* the dequantize slot is the decoded checkpoint */
    float *wf = malloc((size_t)(N * K) * 4);
    assert_int_equal(H.desc->dequantize(p, wf), QTOOL_OK);
    for (int64_t i = 0; i < N * K; i++) assert_true((double)wf[i] == what[i]);
    free(wf);
    store_free(&st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    act_dist_free(&d);
    free(w);
    free(b);
    free(xc);
    free(what);
}

static void test_matmul(void **state)
{
    (void)state;
    const char *def[] = {"group_size=128"};
    const char *act[] = {"act_order=1", "group_size=32"};
    const char *asym[] = {"sym=0", "group_size=64", "checkpoint_format=gptq_v2"};
    const char *chan[] = {"group_size=-1", "act_order=1", "static_groups=1"};
    check_matmul(def, 1, 33, 256, 1);
    check_matmul(def, 1, 1, 128, 0);
    check_matmul(act, 2, 129, 96, 1);
    check_matmul(asym, 3, 17, 192, 0);
    check_matmul(chan, 3, 40, 64, 1);
}

/* ------------------------------------------------------------ save/load */

static void test_save_load(void **state)
{
    (void)state;
    for (int v2 = 0; v2 <= 1; v2++) {
        const int64_t N = 37, K = 256, M = 9, T = 600;
        float *w = malloc(N * K * 4), *b = malloc(N * 4), *xc = malloc(T * K * 4), *x = malloc(M * K * 4);
        float *y1 = malloc(M * N * 4), *y2 = malloc(M * N * 4);
        gen_weights(w, N, K);
        fill_normal(b, N, 1.0f);
        act_dist d = act_dist_new(K, 16, 3, 10.0f);
        act_sample(&d, xc, T);
        act_sample(&d, x, M);
        const char *kv[] = {v2 ? "checkpoint_format=gptq_v2" : "checkpoint_format=gptq", "act_order=1", "sym=0"};
        qtool_instance *inst = make_inst(&H, kv, 3);
        qtool_layer_info li = layer("model.layers.2.mlp.up_proj.weight", N, K, 2);
        calibrate_rows(&H, inst, &li, xc, T, K, 128);
        qtool_packed *p = pack_layer(&H, inst, &li, w, b, QTOOL_DEVICE_CPU, NULL, NULL);
        store st = {0};
        save_all(&H, p, &st);
        assert_int_equal(st.n, 5);
        assert_int_equal(store_find(&st, "bias")->t.dtype, QTOOL_DTYPE_F16);
        qtool_load_source src = {&st, store_get, store_has};
        qtool_packed *q = NULL;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &q), QTOOL_OK);
        run_cpu(&H, p, x, y1, M, N, K);
        run_cpu(&H, q, x, y2, M, N, K);
        assert_memory_equal(y1, y2, M * N * 4);
        store s2 = {0};
        save_all(&H, q, &s2);
        assert_int_equal(s2.n, st.n);
        for (int i = 0; i < st.n; i++) {
            stored *o = store_find(&s2, st.items[i].name);
            assert_non_null(o);
            assert_memory_equal(o->t.data, st.items[i].t.data,
                                (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
        }
        /* damaged checkpoints: FORMAT, nothing allocated left behind */
        qt_mem_stats m0, m1;
        qt_mem_get_stats(&m0);
        qtool_packed *bad = NULL;
        stored *sc = store_find(&st, "scales");
        sc->t.shape[1] -= 1;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        sc->t.shape[1] += 1;
        ((uint16_t *)sc->t.data)[3] = 0x7C00; /* +inf */
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        stored *gi = store_find(&st, "g_idx");
        ((int32_t *)gi->t.data)[5] = 99;
        ((uint16_t *)sc->t.data)[3] = 0x3C00;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        ((int32_t *)gi->t.data)[5] = 0;
        store_find(&st, "qzeros")->t.dtype = QTOOL_DTYPE_F32;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        store_find(&st, "qzeros")->t.dtype = QTOOL_DTYPE_I32;
        qtool_layer_info wrong = layer("other", N + 1, K, 2);
        assert_int_equal(H.desc->load(inst, &wrong, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        store_remove(&st, "qweight");
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        assert_null(bad);
        qt_mem_get_stats(&m1);
        for (int cat = 0; cat < QTOOL_MEM_COUNT; cat++)
            assert_int_equal(m1.current[QTOOL_DEVICE_CPU][cat], m0.current[QTOOL_DEVICE_CPU][cat]);
        store_free(&st);
        store_free(&s2);
        H.desc->free_packed(p);
        H.desc->free_packed(q);
        H.desc->destroy(inst);
        act_dist_free(&d);
        free(w);
        free(b);
        free(xc);
        free(x);
        free(y1);
        free(y2);
    }
}

/* ------------------------------------------------------------ refusals */

static void test_rejects(void **state)
{
    (void)state;
    qtool_instance *inst = make_inst(&H, NULL, 0);
    static const int64_t badK[] = {48, 160, 8};
    for (int i = 0; i < 3; i++) {
        int64_t K = badK[i], N = 4;
        float *w = calloc((size_t)(N * K), 4), *x = calloc((size_t)(10 * K), 4);
        qtool_layer_info li = layer("odd.weight", N, K, 0);
        qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 10, K);
        assert_int_equal(H.desc->calibrate(inst, &li, &xt), QTOOL_OK); /* ignored, so a model run goes on */
        qtool_tensor wt = tview(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K);
        qtool_pack_args pa;
        memset(&pa, 0, sizeof pa);
        pa.struct_size = sizeof pa;
        pa.layer = &li;
        pa.weight = &wt;
        qtool_packed *p = NULL;
        assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_UNSUPPORTED);
        assert_null(p);
        free(w);
        free(x);
    }
    /* calibration input problems */
    float x[64 * 3];
    fill_normal(x, 64 * 3, 1.0f);
    qtool_layer_info li = layer("cal.weight", 8, 64, 0);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 3, 64);
    x[70] = NAN;
    assert_int_equal(H.desc->calibrate(inst, &li, &xt), QTOOL_ERR_INVALID_ARGUMENT);
    x[70] = 0;
    xt.dtype = QTOOL_DTYPE_F16;
    assert_int_equal(H.desc->calibrate(inst, &li, &xt), QTOOL_ERR_INVALID_ARGUMENT);
    xt.dtype = QTOOL_DTYPE_F32;
    qtool_layer_info li2 = layer("cal.weight", 8, 32, 0);
    assert_int_equal(H.desc->calibrate(inst, &li2, &xt), QTOOL_ERR_INVALID_ARGUMENT); /* K differs from the layer */
    assert_int_equal(H.desc->calibrate(inst, &li, &xt), QTOOL_OK);
    H.desc->destroy(inst);
    /* options */
    static const char *bad_opts[] = {"group_size=48", "group_size=0", "damp=-0.5", "shrink=2"};
    for (int i = 0; i < 4; i++) {
        qtool_instance *b = NULL;
        char msg[256] = "";
        assert_int_equal(harness_create(&H, &bad_opts[i], 1, &b, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
        assert_true(strlen(msg) > 0);
    }
}

/* ------------------------------------------------------------ memory */

static void test_memory(void **state)
{
    (void)state;
    const int64_t N = 40, K = 256, T = 300;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(T * K * 4);
    gen_weights(w, N, K);
    fill_normal(b, N, 0.1f);
    fill_normal(x, T * K, 1.0f);
    for (int act = 0; act <= 1; act++) {
        const char *kv[] = {act ? "act_order=1" : "act_order=0", "group_size=64"};
        qtool_instance *inst = make_inst(&H, kv, 2);
        qt_mem_stats s0, s1, s2, s3, s4;
        qt_mem_get_stats(&s0);
        qtool_layer_info l0 = layer("model.layers.0.self_attn.o_proj.weight", N, K, 0);
        qtool_layer_info l1 = layer("model.layers.1.self_attn.o_proj.weight", N, K, 1);
        calibrate_rows(&H, inst, &l0, x, T, K, 100);
        calibrate_rows(&H, inst, &l1, x, T, K, 100);
        qt_mem_get_stats(&s1);
        /* two Hessians held as calibration statistics */
        assert_true(s1.current[QTOOL_DEVICE_CPU][QTOOL_MEM_OTHER] - s0.current[QTOOL_DEVICE_CPU][QTOOL_MEM_OTHER] >=
                    2 * (uint64_t)(K * K) * 8);
        qtool_packed *p = pack_layer(&H, inst, &l0, w, b, QTOOL_DEVICE_CPU, NULL, NULL);
        qt_mem_get_stats(&s2);
        uint64_t bytes[QTOOL_MEM_COUNT];
        assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++)
            assert_int_equal(bytes[c], s2.current[QTOOL_DEVICE_CPU][c] - s1.current[QTOOL_DEVICE_CPU][c]);
        int64_t ng = K / 64;
        assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], N * K / 2 + N * 4);
        /* act-order keeps g_idx unless it came out as k / G */
        assert_true(bytes[QTOOL_MEM_SCALES] == (uint64_t)(N * ng * 3) ||
                    (act && bytes[QTOOL_MEM_SCALES] == (uint64_t)(N * ng * 3 + K * 4)));
        H.desc->free_packed(p);
        /* packing block 1 releases block 0's statistics */
        p = pack_layer(&H, inst, &l1, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
        qt_mem_get_stats(&s3);
        assert_true(s3.current[QTOOL_DEVICE_CPU][QTOOL_MEM_OTHER] + (uint64_t)(K * K) * 8 <=
                    s1.current[QTOOL_DEVICE_CPU][QTOOL_MEM_OTHER]);
        H.desc->free_packed(p);
        H.desc->destroy(inst);
        qt_mem_get_stats(&s4);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++)
            assert_int_equal(s4.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    }
    free(w);
    free(b);
    free(x);
}

/* ------------------------------------------------------------ quality */

/* A layer with heavy-tailed weights fed correlated activations with a few
 * large channels: GPTQ's output error on held-out inputs is below
 * round-to-nearest's at the same bits and group size (RTN: the same
 * quantizer with no calibration). In these runs GPTQ reaches about 0.3 to
 * 0.55 of RTN's error; the test asks for at most 0.85. */
static double quality_run(const char *const *kv, int nkv, const float *w, const float *xc, int64_t T, const float *xh,
                          int64_t Th, int64_t N, int64_t K, int calibrated)
{
    qtool_layer_info li = layer("q.weight", N, K, 0);
    return packed_output_error(&H, kv, nkv, &li, w, xc, calibrated ? T : 0, xh, Th, QTOOL_DEVICE_CPU, NULL);
}

static void test_quality(void **state)
{
    (void)state;
    const int64_t N = 96, K = 256, T = 2048, Th = 512;
    float *w = malloc(N * K * 4), *xc = malloc(T * K * 4), *xh = malloc(Th * K * 4);
    gen_weights(w, N, K);
    act_dist d = act_dist_new(K, 32, 4, 12.0f);
    act_sample(&d, xc, T);
    act_sample(&d, xh, Th);
    const char *cfgs[][2] = {{"group_size=128", "sym=1"}, {"group_size=128", "act_order=1"}, {"group_size=64", "sym=0"}};
    for (int i = 0; i < 3; i++) {
        double e_rtn = quality_run(cfgs[i], 2, w, xc, T, xh, Th, N, K, 0);
        double e_gptq = quality_run(cfgs[i], 2, w, xc, T, xh, Th, N, K, 1);
        printf("quality %s %s: held-out output error gptq %.4f, round-to-nearest %.4f\n", cfgs[i][0], cfgs[i][1],
               e_gptq, e_rtn);
        assert_true(e_gptq < 0.85 * e_rtn);
    }
    act_dist_free(&d);
    free(w);
    free(xc);
    free(xh);
}

/* ------------------------------------------------------------ config */

static void test_config(void **state)
{
    (void)state;
    const char *kv[] = {"act_order=1", "checkpoint_format=gptq_v2", "group_size=64"};
    qtool_instance *inst = make_inst(&H, kv, 3);
    char buf[1024];
    assert_int_equal(H.desc->quant_config_json(inst, buf, sizeof buf), QTOOL_OK);
    assert_non_null(strstr(buf, "\"quant_method\": \"gptq\""));
    assert_non_null(strstr(buf, "\"bits\": 4"));
    assert_non_null(strstr(buf, "\"group_size\": 64"));
    assert_non_null(strstr(buf, "\"desc_act\": true"));
    assert_non_null(strstr(buf, "\"sym\": true"));
    assert_non_null(strstr(buf, "\"checkpoint_format\": \"gptq_v2\""));
    assert_int_equal(H.desc->accepts_config(buf), 1);
    H.desc->destroy(inst);
    inst = make_inst(&H, NULL, 0);
    assert_int_equal(H.desc->quant_config_json(inst, buf, sizeof buf), QTOOL_OK);
    assert_non_null(strstr(buf, "\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 128"));
    assert_non_null(strstr(buf, "\"desc_act\": false"));
    assert_non_null(strstr(buf, "\"checkpoint_format\": \"gptq\""));
    assert_int_equal(H.desc->quant_config_json(inst, buf, 10), QTOOL_ERR_INVALID_ARGUMENT);
    H.desc->destroy(inst);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": 128}"), 1);
    assert_int_equal(H.desc->accepts_config("{\"bits\": 4, \"quant_method\": \"GPTQ\"}"), 1);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"gptq\", \"bits\": 8}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"gptq\", \"checkpoint_format\": \"marlin\"}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"gptq\", \"is_marlin_format\": true}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"awq\", \"bits\": 4}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"gptq\", \"bits\": 4"), 0);
    assert_int_equal(H.desc->accepts_config("{\"a\": {\"quant_method\": \"gptq\"}}"), 0);
    assert_int_equal(H.desc->accepts_config("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["), 0);
    assert_int_equal(H.desc->accepts_config(""), 0);
    char reason[256];
    qtool_device_info cpu;
    memset(&cpu, 0, sizeof cpu);
    cpu.struct_size = sizeof cpu;
    cpu.kind = QTOOL_DEVICE_CPU;
    assert_int_equal(H.desc->probe(&cpu, reason, sizeof reason), QTOOL_OK);
    assert_true(H.desc->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION);
}

int main(void)
{
    rng_seed_from_env("test_gptq");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_syrk),         cmocka_unit_test(test_cholesky_inverse),
        cmocka_unit_test(test_layout),       cmocka_unit_test(test_load_handbuilt),
        cmocka_unit_test(test_matmul),       cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_rejects),      cmocka_unit_test(test_memory),
        cmocka_unit_test(test_quality),      cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
