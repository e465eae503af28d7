/* bnb_int8 plugin, CPU: round-half-even and outlier rules on known
 * vectors, matmul against a float64 emulation of LLM.int8 and against the
 * unquantized product with a quantization error bound, outlier columns
 * present and absent, K not a multiple of 4, save/load, memory
 * accounting, input validation. Fresh random inputs (seed printed). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"

static harness H;

static int setup(void **state)
{
    (void)state;
    return harness_open(&H, "bnb_int8", -1, NULL);
}

static int teardown(void **state)
{
    (void)state;
    harness_close(&H);
    return 0;
}

static qtool_instance *make(double threshold)
{
    char a[64];
    snprintf(a, sizeof a, "threshold=%.9g", threshold);
    const char *kv[] = {a};
    qtool_instance *inst = NULL;
    char msg[256] = "";
    assert_int_equal(harness_create(&H, kv, 1, &inst, msg, sizeof msg), QTOOL_OK);
    return inst;
}

static qtool_packed *pack(qtool_instance *inst, const float *w, int64_t N, int64_t K, const float *b)
{
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t.weight", K, N, 0, 1};
    qtool_packed *p = NULL;
    assert_int_equal(harness_pack(&H, inst, &li, w, b, QTOOL_DEVICE_CPU, NULL, NULL, &p), QTOOL_OK);
    return p;
}

static void matmul(qtool_packed *p, const float *x, float *y, int64_t M, int64_t N, int64_t K)
{
    qtool_tensor xt = tview((void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_OK);
}

/* The quantizer as FORMATS.md states it, written with nearbyintf
 * (round-half-even in the default rounding mode). */
static float ref_quant_row(const float *x, int64_t K, float thr, const uint8_t *zero_col, int *q)
{
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++)
        if (!(thr > 0.0f && fabsf(x[k]) >= thr)) amax = fmaxf(amax, fabsf(x[k]));
    float scale = amax > 0.0f ? 127.0f / amax : 0.0f;
    for (int64_t k = 0; k < K; k++) {
        int out = (thr > 0.0f && fabsf(x[k]) >= thr) || (zero_col && zero_col[k]);
        q[k] = out ? 0 : (int)nearbyintf(x[k] * scale);
    }
    return amax;
}

static void test_known_rounding(void **state)
{
    (void)state;
    /* absmax 127 makes the scale exactly 1: the quantized value is the
     * rounded input; halves go to even. */
    const int64_t K = 9;
    float w[2 * 9] = {127.0f, 2.5f, 3.5f, -2.5f, -3.5f, 0.5f, -0.5f, 125.5f, 126.5f,
                      0, 0, 0, 0, 0, 0, 0, 0, 0};
    const int8_t want[9] = {127, 2, 4, -2, -4, 0, 0, 126, 126};
    qtool_instance *inst = make(6.0);
    qtool_packed *p = pack(inst, w, 2, K, NULL);
    store s = {0};
    qtool_save_sink sink = {&s, store_put};
    assert_int_equal(H.desc->save(p, &sink), QTOOL_OK);
    stored *wq = store_find(&s, "weight"), *scb = store_find(&s, "SCB"), *fmt = store_find(&s, "weight_format");
    assert_non_null(wq);
    assert_non_null(scb);
    assert_non_null(fmt);
    assert_int_equal(wq->t.dtype, QTOOL_DTYPE_I8);
    assert_int_equal(wq->t.shape[0], 2);
    assert_int_equal(wq->t.shape[1], K); /* saved without the K % 4 padding */
    assert_memory_equal(wq->t.data, want, 9);
    const int8_t *zero = (const int8_t *)wq->t.data + 9;
    for (int i = 0; i < 9; i++) assert_int_equal(zero[i], 0); /* all-zero row: q 0, SCB 0 */
    assert_true(((float *)scb->t.data)[0] == 127.0f && ((float *)scb->t.data)[1] == 0.0f);
    assert_int_equal(fmt->t.ndim, 0);
    assert_int_equal(*(uint8_t *)fmt->t.data, 0);
    store_free(&s);

    /* Activations: x = [10, 1, -2, 0.5] with threshold 6: 10 is an outlier,
     * excluded from the absmax (2) and computed in floating point against
     * the dequantized weight column; W = identity-ish. */
    float wi[4 * 4] = {127, 0, 0, 0, 0, 127, 0, 0, 0, 0, 127, 0, 0, 0, 0, 127};
    qtool_packed *pi = pack(inst, wi, 4, 4, NULL);
    float x[4] = {10.0f, 1.0f, -2.0f, 0.5f}, y[4];
    matmul(pi, x, y, 1, 4, 4);
    /* int8: q = round(x * 127/2) = [0, 64 (63.5 -> 64), -127, 32 (31.75)] */
    assert_true(fabsf(y[0] - 10.0f * 127.0f) < 1e-3f);
    assert_true(fabsf(y[1] - 64.0f * 2.0f * 127.0f / 16129.0f * 127.0f) < 1e-2f);
    assert_true(fabsf(y[2] + 127.0f * 2.0f * 127.0f / 16129.0f * 127.0f) < 1e-2f);
    assert_true(fabsf(y[3] - 32.0f * 2.0f * 127.0f / 16129.0f * 127.0f) < 1e-2f);
    H.desc->free_packed(pi);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
}

/* x: normal; with `outliers`, a few columns carry |x| >= 6 in some rows. */
static void make_input(float *x, int64_t M, int64_t K, int outliers)
{
    fill_normal(x, M * K, 1.0f);
    for (int64_t i = 0; i < M * K; i++) x[i] = fmaxf(-5.0f, fminf(5.0f, x[i]));
    if (outliers)
        for (int64_t c = 0; c < K; c += 7 + (int64_t)(rng_next() % 11)) {
            int64_t m = (int64_t)(rng_next() % (uint64_t)M);
            x[m * K + c] = (rng_next() & 1 ? 1.0f : -1.0f) * (6.0f + 20.0f * (float)rng_uniform());
        }
}

static void check_matmul(int64_t M, int64_t N, int64_t K, float thr, int outliers, int with_bias)
{
    float *w = malloc((size_t)(N * K) * 4), *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4);
    float *b = malloc((size_t)N * 4);
    int *qw = malloc((size_t)(N * K) * sizeof(int)), *qa = malloc((size_t)(M * K) * sizeof(int));
    float *scb = malloc((size_t)N * 4), *sa = malloc((size_t)M * 4);
    uint8_t *zc = calloc((size_t)K, 1);
    fill_normal(w, N * K, 0.05f);
    fill_normal(b, N, 0.5f);
    make_input(x, M, K, outliers);
    qtool_instance *inst = make(thr);
    qtool_packed *p = pack(inst, w, N, K, with_bias ? b : NULL);
    matmul(p, x, y, M, N, K);
    /* float64 emulation of LLM.int8 */
    for (int64_t n = 0; n < N; n++) scb[n] = ref_quant_row(w + n * K, K, 0.0f, NULL, qw + n * K);
    int n_out = 0;
    if (thr > 0)
        for (int64_t i = 0; i < M * K; i++)
            if (fabsf(x[i]) >= thr) zc[i % K] = 1;
    for (int64_t k = 0; k < K; k++) n_out += zc[k];
    if (outliers && thr > 0) assert_true(n_out > 0);
    for (int64_t m = 0; m < M; m++) sa[m] = ref_quant_row(x + m * K, K, thr, zc, qa + m * K);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            int64_t acc = 0;
            double outl = 0, mag = 0, exact = with_bias ? b[n] : 0, bound = 0;
            for (int64_t k = 0; k < K; k++) {
                acc += (int64_t)qa[m * K + k] * qw[n * K + k];
                double wd = qw[n * K + k] * (double)scb[n] / 127.0;
                if (zc[k]) outl += x[m * K + k] * wd;
                mag += fabs((double)x[m * K + k] * wd);
                exact += (double)x[m * K + k] * w[n * K + k];
                /* |error| per term: weight step / 2, activation step / 2 */
                double ew = scb[n] / 254.0, ea = zc[k] ? 0 : sa[m] / 254.0;
                bound += fabs(x[m * K + k]) * ew + fabs(w[n * K + k]) * ea + ew * ea;
            }
            double ref = (double)acc * sa[m] * scb[n] / 16129.0 + outl + (with_bias ? b[n] : 0);
            double got = y[m * N + n];
            if (fabs(got - ref) > 1e-5 * (mag + fabs(b[n])) + 1e-6 || fabs(got - exact) > bound * 1.001 + 1e-5) {
                fprintf(stderr, "M=%lld N=%lld K=%lld thr=%g at [%lld,%lld]: got %.8g emulated %.8g exact %.8g (bound %g)\n",
                        (long long)M, (long long)N, (long long)K, thr, (long long)m, (long long)n, got, ref, exact,
                        bound);
                fail();
            }
        }
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
    free(x);
    free(y);
    free(b);
    free(qw);
    free(qa);
    free(scb);
    free(sa);
    free(zc);
}

static void test_matmul_cpu(void **state)
{
    (void)state;
    static const int64_t Ms[] = {1, 3, 17, 129};
    for (int i = 0; i < 4; i++) {
        check_matmul(Ms[i], 33, 67, 6.0f, 1, 1);  /* outliers, K % 4 != 0, odd N */
        check_matmul(Ms[i], 33, 67, 6.0f, 0, 0);  /* threshold on, no outliers */
        check_matmul(Ms[i], 17, 130, 0.0f, 1, 1); /* large values, no decomposition */
        check_matmul(Ms[i], 64, 256, 6.0f, 1, 0);
    }
    check_matmul(5, 40, 1000, 3.0f, 1, 1);
}

static void test_save_load(void **state)
{
    (void)state;
    const int64_t M = 7, N = 21, K = 45;
    float *w = malloc(N * K * 4), *x = malloc(M * K * 4), *y1 = malloc(M * N * 4), *y2 = malloc(M * N * 4), b[21];
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 1.0f);
    make_input(x, M, K, 1);
    qtool_instance *inst = make(6.0);
    qtool_packed *p = pack(inst, w, N, K, b);
    store s = {0};
    qtool_save_sink sink = {&s, store_put};
    assert_int_equal(H.desc->save(p, &sink), QTOOL_OK);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t.weight", K, N, 0, 1};
    qtool_load_source src = {&s, store_get, store_has};
    qtool_packed *q = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &q), QTOOL_OK);
    matmul(p, x, y1, M, N, K);
    matmul(q, x, y2, M, N, K);
    assert_memory_equal(y1, y2, M * N * 4);
    /* damaged checkpoints */
    qtool_packed *bad = NULL;
    stored *scb = store_find(&s, "SCB");
    scb->t.shape[0] = N - 1;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
    scb->t.shape[0] = N;
    ((float *)scb->t.data)[3] = -1.0f;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
    li.in_features = K + 1;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
    li.in_features = K;
    store_remove(&s, "weight");
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
    assert_null(bad);
    store_free(&s);
    H.desc->free_packed(p);
    H.desc->free_packed(q);
    H.desc->destroy(inst);
    free(w);
    free(x);
    free(y1);
    free(y2);
}

static void test_memory_accounting(void **state)
{
    (void)state;
    const int64_t N = 50, K = 99, M = 9;
    float *w = malloc(N * K * 4), b[50], *x = malloc(M * K * 4), *y = malloc(M * N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    make_input(x, M, K, 1);
    qtool_instance *inst = make(6.0);
    qt_mem_stats s0, s1, s2;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack(inst, w, N, K, b);
    matmul(p, x, y, M, N, K); /* CPU scratch is released before returning */
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(bytes[c], s1.current[QTOOL_DEVICE_CPU][c] - s0.current[QTOOL_DEVICE_CPU][c]);
    assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], N * 100 + N * 4); /* K padded to 100, bias */
    assert_int_equal(bytes[QTOOL_MEM_SCALES], N * 4);
    H.desc->free_packed(p);
    qt_mem_get_stats(&s2);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(s2.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    H.desc->destroy(inst);
    free(w);
    free(x);
    free(y);
}

static void test_rejects(void **state)
{
    (void)state;
    qtool_instance *inst = make(6.0);
    float w[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}, x[8] = {0}, y[8];
    qtool_tensor wt = tview(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 3, 0);
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.weight = &wt;
    qtool_packed *p = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_INVALID_ARGUMENT); /* empty */
    wt.shape[1] = 4;
    float bb[2] = {0, 0};
    qtool_tensor bt = tview(bb, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 2, 0);
    pa.bias = &bt; /* N = 3, bias 2 */
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_INVALID_ARGUMENT);
    pa.bias = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_OK);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 2, 3);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 2, 3);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.shape[1] = 4;
    xt.shape[0] = 0;
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.shape[0] = 2;
    yt.device = QTOOL_DEVICE_CUDA;
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    yt.device = QTOOL_DEVICE_CPU;
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_OK);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    const char *kv[] = {"threshold=-1"};
    qtool_instance *bad = NULL;
    char msg[256] = "";
    assert_int_equal(harness_create(&H, kv, 1, &bad, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "threshold"));
}

static void test_config(void **state)
{
    (void)state;
    qtool_instance *inst = make(4.5);
    char buf[1024];
    assert_int_equal(H.desc->quant_config_json(inst, buf, sizeof buf), QTOOL_OK);
    assert_non_null(strstr(buf, "\"quant_method\": \"bitsandbytes\""));
    assert_non_null(strstr(buf, "\"load_in_8bit\": true"));
    assert_non_null(strstr(buf, "\"llm_int8_threshold\": 4.5"));
    assert_int_equal(H.desc->accepts_config(buf), 1);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\":\"bitsandbytes\",\"load_in_4bit\":true}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":false}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"x\": {\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":true}}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\""), 0);
    H.desc->destroy(inst);
}

int main(void)
{
    rng_seed_from_env("test_bnb_int8");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_rounding), cmocka_unit_test(test_matmul_cpu),
        cmocka_unit_test(test_save_load),      cmocka_unit_test(test_memory_accounting),
        cmocka_unit_test(test_rejects),        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
