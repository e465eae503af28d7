/* The fp16 baseline on the CPU: y = x W^T + b against a float64 reference
 * at odd shapes (partial register tiles, partial panels, several k blocks),
 * the checkpoint's values kept exactly, determinism, memory accounting,
 * save/load in the original dtype, and argument checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "error.h"
#include "plugin_host.h"

static qt_plugin *plugin;
static const qtool_plugin_desc *D;
static uint64_t rng_state;

static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static double normal(void)
{
    double u1 = 1.0 - uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int setup(void **state)
{
    (void)state;
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/libqtool_fp16.so", dir ? dir : ".");
    if (qt_plugin_load(path, &plugin) != 0) {
        fprintf(stderr, "%s\n", qt_last_error());
        return -1;
    }
    D = plugin->desc;
    rng_state = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)rng_state);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qt_plugin_unload(plugin);
    return 0;
}

static qtool_instance *make_instance(void)
{
    qtool_instance *inst = NULL;
    assert_int_equal(qt_plugin_create(plugin, NULL, -1, NULL, &inst), 0);
    return inst;
}

/* Random weight in `dtype` and its exact values as double. */
static void *random_weight(int dtype, int64_t n, double *exact)
{
    size_t es = dtype == QTOOL_DTYPE_F32 ? 4 : 2;
    void *w = malloc((size_t)n * es);
    assert_non_null(w);
    for (int64_t i = 0; i < n; i++) {
        float v = (float)(normal() * (uniform() < 0.01 ? 8.0 : 1.0));
        if (dtype == QTOOL_DTYPE_F32) {
            ((float *)w)[i] = v;
            exact[i] = v;
        } else if (dtype == QTOOL_DTYPE_F16) {
            ((uint16_t *)w)[i] = qtool_f32_to_f16(v);
            exact[i] = qtool_f16_to_f32(((uint16_t *)w)[i]);
        } else {
            ((uint16_t *)w)[i] = qtool_f32_to_bf16(v);
            exact[i] = qtool_bf16_to_f32(((uint16_t *)w)[i]);
        }
    }
    return w;
}

static qtool_packed *pack(qtool_instance *inst, int device, void *w, int wdt, int64_t n, int64_t k, void *b,
                          int bdt, int *rc_out)
{
    qtool_tensor wt = {w, wdt, QTOOL_DEVICE_CPU, 2, 0, {n, k}};
    qtool_tensor bt = {b, bdt, QTOOL_DEVICE_CPU, 1, 0, {n}};
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "test.weight", k, n, 0, 1};
    qtool_pack_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.device = device;
    a.layer = &li;
    a.weight = &wt;
    a.bias = b ? &bt : NULL;
    qtool_packed *p = NULL;
    int rc = D->pack(inst, &a, &p);
    if (rc_out) *rc_out = rc;
    return rc == QTOOL_OK ? p : NULL;
}

static int matmul(qtool_packed *p, float *x, int64_t m, int64_t k, float *y, int64_t n)
{
    qtool_tensor xt = {x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, k}};
    qtool_tensor yt = {y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, n}};
    qtool_matmul_args a = {sizeof a, 0, &xt, &yt, NULL};
    return D->matmul_cpu(p, &a);
}

/* Odd shapes against float64: every element within the rigorous float32
 * summation bound, and the whole output within 1e-6 relative. */
static void test_matches_float64(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {
        {1, 1, 1}, {3, 17, 129}, {129, 129, 17}, {17, 3, 1}, {37, 1000, 333}, {200, 513, 47}, {97, 256, 16},
    };
    static const int dts[] = {QTOOL_DTYPE_F32, QTOOL_DTYPE_F16, QTOOL_DTYPE_BF16};
    qtool_instance *inst = make_instance();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
        int wdt = dts[s % 3];
        double *wd = malloc((size_t)(n * k) * sizeof(double)), *bd = malloc((size_t)n * sizeof(double));
        void *w = random_weight(wdt, n * k, wd);
        void *b = s % 2 ? NULL : random_weight(wdt, n, bd);
        if (!b)
            for (int64_t j = 0; j < n; j++) bd[j] = 0;
        float *x = malloc((size_t)(m * k) * sizeof(float)), *y = malloc((size_t)(m * n) * sizeof(float));
        for (int64_t i = 0; i < m * k; i++) x[i] = (float)normal();
        for (int64_t i = 0; i < m * n; i++) y[i] = NAN;
        qtool_packed *p = pack(inst, QTOOL_DEVICE_CPU, w, wdt, n, k, b, wdt, NULL);
        assert_non_null(p);
        assert_int_equal(matmul(p, x, m, k, y, n), QTOOL_OK);
        double e2 = 0, r2 = 0;
        for (int64_t i = 0; i < m; i++)
            for (int64_t j = 0; j < n; j++) {
                double ref = bd[j], mag = fabs(bd[j]);
                for (int64_t t = 0; t < k; t++) {
                    ref += (double)x[i * k + t] * wd[j * k + t];
                    mag += fabs((double)x[i * k + t] * wd[j * k + t]);
                }
                double got = y[i * n + j], bound = 2.0 * (double)(k + 2) * 0x1.0p-24 * mag;
                if (!(fabs(got - ref) <= bound))
                    fail_msg("M=%lld K=%lld N=%lld y[%lld,%lld] = %.9g, float64 %.9g (bound %.3g)", (long long)m,
                             (long long)k, (long long)n, (long long)i, (long long)j, got, ref, bound);
                e2 += (got - ref) * (got - ref);
                r2 += ref * ref;
            }
        double rel = sqrt(e2 / (r2 > 0 ? r2 : 1));
        printf("M=%lld K=%lld N=%lld %s: relative error %.2e\n", (long long)m, (long long)k, (long long)n,
               wdt == QTOOL_DTYPE_F32 ? "F32" : wdt == QTOOL_DTYPE_F16 ? "F16" : "BF16", rel);
        assert_true(rel < 1e-6);
        D->free_packed(p);
        free(w);
        free(b);
        free(wd);
        free(bd);
        free(x);
        free(y);
    }
    D->destroy(inst);
}

/* The CPU path is the float32 reference: dequantize returns the
 * checkpoint's values exactly; results do not depend on scheduling. */
static void test_exact_and_deterministic(void **state)
{
    (void)state;
    int64_t m = 150, k = 300, n = 70;
    qtool_instance *inst = make_instance();
    double *wd = malloc((size_t)(n * k) * sizeof(double));
    void *w = random_weight(QTOOL_DTYPE_BF16, n * k, wd);
    qtool_packed *p = pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_BF16, n, k, NULL, 0, NULL);
    assert_non_null(p);
    float *wf = malloc((size_t)(n * k) * sizeof(float));
    assert_int_equal(D->dequantize(p, wf), QTOOL_OK);
    for (int64_t i = 0; i < n * k; i++) assert_true(wf[i] == (float)wd[i]);
    float *x = malloc((size_t)(m * k) * sizeof(float)), *y1 = malloc((size_t)(m * n) * 4), *y2 = malloc((size_t)(m * n) * 4);
    for (int64_t i = 0; i < m * k; i++) x[i] = (float)normal();
    assert_int_equal(matmul(p, x, m, k, y1, n), QTOOL_OK);
    for (int r = 0; r < 3; r++) {
        assert_int_equal(matmul(p, x, m, k, y2, n), QTOOL_OK);
        assert_memory_equal(y1, y2, (size_t)(m * n) * 4);
    }
    /* Row i of a batch equals the same row computed alone. */
    assert_int_equal(matmul(p, x + 77 * k, 1, k, y2, n), QTOOL_OK);
    assert_memory_equal(y1 + 77 * n, y2, (size_t)n * 4);
    D->free_packed(p);
    D->destroy(inst);
    free(w);
    free(wd);
    free(wf);
    free(x);
    free(y1);
    free(y2);
}

/* memory() equals what went through the allocator; nothing is left after. */
static void test_memory_accounting(void **state)
{
    (void)state;
    qtool_instance *inst = make_instance();
    int64_t k = 100, n = 33;
    double *wd = malloc((size_t)(n * k) * sizeof(double)), *bd = malloc((size_t)n * sizeof(double));
    void *w = random_weight(QTOOL_DTYPE_F32, n * k, wd), *b = random_weight(QTOOL_DTYPE_F32, n, bd);
    qt_mem_stats s0, s1, s2;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_F32, n, k, b, QTOOL_DTYPE_F32, NULL);
    assert_non_null(p);
    qt_mem_get_stats(&s1);
    uint64_t mem[QTOOL_MEM_COUNT];
    assert_int_equal(D->memory(p, mem), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(mem[c], s1.current[QTOOL_DEVICE_CPU][c] - s0.current[QTOOL_DEVICE_CPU][c]);
    /* Panels of 16 rows: 33 rows take 3 panels; the weight at least. */
    assert_true(mem[QTOOL_MEM_WEIGHTS] >= (uint64_t)(n * k * 4 + n * 4));
    assert_int_equal(mem[QTOOL_MEM_WEIGHTS], 48 * 100 * 4 + 48 * 4);
    D->free_packed(p);
    qt_mem_get_stats(&s2);
    assert_memory_equal(s2.current, s0.current, sizeof s0.current);
    D->destroy(inst);
    free(w);
    free(b);
    free(wd);
    free(bd);
}

typedef struct mem_store {
    char suffix[4][32];
    qtool_tensor t[4];
    int n;
} mem_store;

static int put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    mem_store *s = ctx;
    assert_true(s->n < 4);
    snprintf(s->suffix[s->n], sizeof s->suffix[0], "%s", suffix);
    s->t[s->n] = *t;
    size_t bytes = (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype);
    s->t[s->n].data = malloc(bytes);
    memcpy(s->t[s->n].data, t->data, bytes);
    s->n++;
    return QTOOL_OK;
}

static int get(void *ctx, const char *suffix, qtool_tensor *out)
{
    mem_store *s = ctx;
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->suffix[i], suffix) == 0) {
            *out = s->t[i];
            return QTOOL_OK;
        }
    return QTOOL_ERR_FORMAT;
}

static int has(void *ctx, const char *suffix)
{
    qtool_tensor t;
    return get(ctx, suffix, &t) == QTOOL_OK;
}

/* save writes the checkpoint's own dtype and bits; load gives the same
 * output. */
static void test_save_load_original_dtype(void **state)
{
    (void)state;
    qtool_instance *inst = make_instance();
    int64_t k = 45, n = 19, m = 5;
    double *wd = malloc((size_t)(n * k) * sizeof(double)), *bd = malloc((size_t)n * sizeof(double));
    void *w = random_weight(QTOOL_DTYPE_F16, n * k, wd), *b = random_weight(QTOOL_DTYPE_BF16, n, bd);
    qtool_packed *p = pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_F16, n, k, b, QTOOL_DTYPE_BF16, NULL);
    assert_non_null(p);
    mem_store st;
    memset(&st, 0, sizeof st);
    qtool_save_sink sink = {&st, put};
    assert_int_equal(D->save(p, &sink), QTOOL_OK);
    assert_int_equal(st.n, 2);
    assert_string_equal(st.suffix[0], "weight");
    assert_int_equal(st.t[0].dtype, QTOOL_DTYPE_F16);
    assert_int_equal(st.t[0].shape[0], n);
    assert_int_equal(st.t[0].shape[1], k);
    assert_memory_equal(st.t[0].data, w, (size_t)(n * k) * 2);
    assert_string_equal(st.suffix[1], "bias");
    assert_int_equal(st.t[1].dtype, QTOOL_DTYPE_BF16);
    assert_memory_equal(st.t[1].data, b, (size_t)n * 2);

    float x[5 * 45], y1[5 * 19], y2[5 * 19];
    for (int i = 0; i < m * k; i++) x[i] = (float)normal();
    assert_int_equal(matmul(p, x, m, k, y1, n), QTOOL_OK);
    qtool_load_source src = {&st, get, has};
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "test.weight", k, n, 0, 1};
    qtool_packed *q = NULL;
    assert_int_equal(D->load(inst, &li, QTOOL_DEVICE_CPU, &src, &q), QTOOL_OK);
    assert_int_equal(matmul(q, x, m, k, y2, n), QTOOL_OK);
    assert_memory_equal(y1, y2, sizeof y1);
    /* A layer that says K=46 does not accept this weight. */
    qtool_layer_info wrong = li;
    wrong.in_features = k + 1;
    qtool_packed *r = NULL;
    int lvl = qt_log_level();
    qt_set_log_level(-1);
    assert_int_not_equal(D->load(inst, &wrong, QTOOL_DEVICE_CPU, &src, &r), QTOOL_OK);
    qt_set_log_level(lvl);
    D->free_packed(p);
    D->free_packed(q);
    D->destroy(inst);
    for (int i = 0; i < st.n; i++) free(st.t[i].data);
    free(w);
    free(b);
    free(wd);
    free(bd);
}

static void test_rejects_bad_arguments(void **state)
{
    (void)state;
    qtool_instance *inst = make_instance();
    int lvl = qt_log_level();
    qt_set_log_level(-1);
    float w[6] = {1, 2, 3, 4, 5, 6}, x[6] = {0}, y[6] = {0};
    int rc;
    /* An instance made without a CUDA device cannot pack for CUDA. */
    assert_null(pack(inst, QTOOL_DEVICE_CUDA, w, QTOOL_DTYPE_F32, 2, 3, NULL, 0, &rc));
    assert_int_not_equal(rc, QTOOL_OK);
    assert_null(pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_I8, 2, 3, NULL, 0, &rc));
    assert_int_equal(rc, QTOOL_ERR_INVALID_ARGUMENT);
    assert_null(pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_F32, 0, 3, NULL, 0, &rc));
    qtool_packed *p = pack(inst, QTOOL_DEVICE_CPU, w, QTOOL_DTYPE_F32, 2, 3, NULL, 0, NULL);
    assert_non_null(p);
    assert_int_equal(matmul(p, x, 2, 2, y, 2), QTOOL_ERR_INVALID_ARGUMENT); /* K mismatch */
    assert_int_equal(matmul(p, x, 2, 3, y, 3), QTOOL_ERR_INVALID_ARGUMENT); /* N mismatch */
    assert_int_equal(matmul(p, NULL, 2, 3, y, 2), QTOOL_ERR_INVALID_ARGUMENT);
    assert_int_equal(matmul(p, NULL, 0, 3, NULL, 2), QTOOL_OK);              /* M = 0 */
    qtool_tensor xt = {x, QTOOL_DTYPE_F16, QTOOL_DEVICE_CPU, 2, 0, {2, 3}};
    qtool_tensor yt = {y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {2, 2}};
    qtool_matmul_args a = {sizeof a, 0, &xt, &yt, NULL};
    assert_int_equal(D->matmul_cpu(p, &a), QTOOL_ERR_INVALID_ARGUMENT);
    a.x = NULL;
    assert_int_equal(D->matmul_cpu(p, &a), QTOOL_ERR_INVALID_ARGUMENT);
    /* [2, 3] = 1x2 rows of 3 flattened: leading dimensions are batch. */
    xt.dtype = QTOOL_DTYPE_F32;
    xt.ndim = 3;
    xt.shape[0] = 1;
    xt.shape[1] = 2;
    xt.shape[2] = 3;
    a.x = &xt;
    assert_int_equal(D->matmul_cpu(p, &a), QTOOL_OK);
    qt_set_log_level(lvl);
    D->free_packed(p);
    D->destroy(inst);
}

static void test_options_and_probe(void **state)
{
    (void)state;
    char *good[] = {"dtype=bf16", "workspace_mib=0"}, *bad[] = {"dtype=fp8"};
    qt_plugin_options o;
    assert_int_equal(qt_plugin_parse_options(plugin, good, 2, &o), 0);
    qtool_instance *inst = NULL;
    assert_int_equal(qt_plugin_create(plugin, &o, -1, NULL, &inst), 0);
    D->destroy(inst);
    qt_plugin_options_free(&o);
    assert_int_not_equal(qt_plugin_parse_options(plugin, bad, 1, &o), 0);

    qtool_device_info dev;
    memset(&dev, 0, sizeof dev);
    dev.struct_size = sizeof dev;
    dev.kind = QTOOL_DEVICE_CPU;
    char reason[256] = "";
    assert_int_equal(D->probe(&dev, reason, sizeof reason), QTOOL_OK);
    dev.kind = QTOOL_DEVICE_CUDA;
    dev.cc_major = 6;
    dev.cc_minor = 1;
    snprintf(dev.name, sizeof dev.name, "Tesla P4");
    assert_int_equal(D->probe(&dev, reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    if (D->devices & QTOOL_DEVMASK_CUDA) {
        assert_non_null(strstr(reason, "needs compute capability >= 7."));
        assert_non_null(strstr(reason, "found 6.1 (Tesla P4)"));
        dev.cc_major = 9;
        dev.cc_minor = 0;
        assert_int_equal(D->probe(&dev, reason, sizeof reason), QTOOL_OK);
    } else {
        assert_non_null(strstr(reason, "without CUDA"));
    }
    assert_true((D->flags & QTOOL_PLUGIN_BASELINE) != 0);
    assert_int_equal(D->weight_bits, 16);
    assert_int_equal(D->activation_bits, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_float64),        cmocka_unit_test(test_exact_and_deterministic),
        cmocka_unit_test(test_memory_accounting),      cmocka_unit_test(test_save_load_original_dtype),
        cmocka_unit_test(test_rejects_bad_arguments),  cmocka_unit_test(test_options_and_probe),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
