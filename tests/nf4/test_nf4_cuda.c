/* nf4 plugin, CUDA: agreement with the CPU path for both kernels (fused
 * GEMV, dequantize + cuBLASLt), fp16 and bf16, awkward shapes; device
 * memory accounting; save from the device; load onto the device. Exits 77
 * without a CUDA device. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"

static harness H;

static qtool_instance *make(const char *dtype, int dq, const char *kernel)
{
    char a[64], c[64], k[64];
    snprintf(a, sizeof a, "dtype=%s", dtype);
    snprintf(c, sizeof c, "double_quant=%d", dq);
    snprintf(k, sizeof k, "cuda_kernel=%s", kernel);
    const char *kv[] = {a, c, k};
    qtool_instance *inst = NULL;
    char msg[256] = "";
    assert_int_equal(harness_create(&H, kv, 3, &inst, msg, sizeof msg), QTOOL_OK);
    return inst;
}

static qtool_packed *pack(qtool_instance *inst, const float *w, int64_t N, int64_t K, const float *b, int device)
{
    qtool_tensor wt = tview((void *)w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K);
    qtool_tensor bt = tview((void *)b, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, N, 0);
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.device = device;
    pa.weight = &wt;
    pa.bias = b ? &bt : NULL;
    qtool_packed *p = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_OK);
    return p;
}

/* Runs the CUDA matmul on x (F32 values already representable in dt). */
static void run_cuda(qtool_packed *p, const float *x, float *y, int64_t M, int64_t N, int64_t K, int dt)
{
    uint16_t *hx = malloc((size_t)(M * K) * 2), *hy = malloc((size_t)(M * N) * 2);
    for (int64_t i = 0; i < M * K; i++) hx[i] = dt == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16(x[i]) : qtool_f32_to_f16(x[i]);
    void *dx = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(M * K) * 2, QTOOL_MEM_ACTIVATIONS);
    void *dy = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(M * N) * 2, QTOOL_MEM_ACTIVATIONS);
    assert_non_null(dx);
    assert_non_null(dy);
    assert_int_equal(qt_cuda_memcpy_h2d(dx, hx, (size_t)(M * K) * 2), 0);
    qtool_tensor xt = tview(dx, dt, QTOOL_DEVICE_CUDA, 2, M, K), yt = tview(dy, dt, QTOOL_DEVICE_CUDA, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cuda(p, &ma), QTOOL_OK);
    assert_int_equal(qt_cuda_device_sync(), 0);
    assert_int_equal(qt_cuda_memcpy_d2h(hy, dy, (size_t)(M * N) * 2), 0);
    for (int64_t i = 0; i < M * N; i++) y[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(hy[i]) : qtool_f16_to_f32(hy[i]);
    qt_free(QTOOL_DEVICE_CUDA, dx);
    qt_free(QTOOL_DEVICE_CUDA, dy);
    free(hx);
    free(hy);
}

static void check_agreement(const char *dtype, int dq, const char *kernel, int dt, int64_t M, int64_t N, int64_t K)
{
    float *w = malloc((size_t)(N * K) * 4), *x = malloc((size_t)(M * K) * 4), *b = malloc((size_t)N * 4);
    float *yc = malloc((size_t)(M * N) * 4), *yg = malloc((size_t)(M * N) * 4);
    fill_normal(w, N * K, 0.05f);
    fill_normal(x, M * K, 1.0f);
    fill_normal(b, N, 0.5f);
    for (int64_t i = 0; i < M * K; i++)
        x[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(qtool_f32_to_bf16(x[i])) : qtool_f16_to_f32(qtool_f32_to_f16(x[i]));
    qtool_instance *inst = make(dtype, dq, kernel);
    qtool_packed *pc = pack(inst, w, N, K, b, QTOOL_DEVICE_CPU), *pg = pack(inst, w, N, K, b, QTOOL_DEVICE_CUDA);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K), yt = tview(yc, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(pc, &ma), QTOOL_OK);
    run_cuda(pg, x, yg, M, N, K, dt);
    /* fp16: weights (dequant path) and output rounded to 11 bits; bf16: 8 bits. */
    double rel = dt == QTOOL_DTYPE_BF16 ? 1.6e-2 : 2e-3;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double mag = fabs(b[n]);
            for (int64_t k = 0; k < K; k++) mag += fabs((double)x[m * K + k] * w[n * K + k]) * 1.2;
            double err = fabs((double)yg[m * N + n] - yc[m * N + n]);
            if (err > rel * mag + 1e-4) {
                fprintf(stderr, "%s dq=%d %s dt=%d M=%lld N=%lld K=%lld at [%lld,%lld]: cuda %.6g cpu %.6g\n", dtype,
                        dq, kernel, dt, (long long)M, (long long)N, (long long)K, (long long)m, (long long)n,
                        yg[m * N + n], yc[m * N + n]);
                fail();
            }
        }
    /* The device copy saves the same bytes as the CPU copy. */
    store sc = {0}, sg = {0};
    qtool_save_sink k1 = {&sc, store_put}, k2 = {&sg, store_put};
    assert_int_equal(H.desc->save(pc, &k1), QTOOL_OK);
    assert_int_equal(H.desc->save(pg, &k2), QTOOL_OK);
    assert_int_equal(sc.n, sg.n);
    for (int i = 0; i < sc.n; i++) {
        stored *o = store_find(&sg, sc.items[i].name);
        assert_non_null(o);
        assert_memory_equal(o->t.data, sc.items[i].t.data,
                            (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
    }
    /* Loading the CPU save onto the device reproduces the device result. */
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t.weight", K, N, 0, 1};
    qtool_load_source src = {&sc, store_get, store_has};
    qtool_packed *pl = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CUDA, &src, &pl), QTOOL_OK);
    float *yl = malloc((size_t)(M * N) * 4);
    run_cuda(pl, x, yl, M, N, K, dt);
    assert_memory_equal(yl, yg, (size_t)(M * N) * 4);
    store_free(&sc);
    store_free(&sg);
    H.desc->free_packed(pl);
    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(inst);
    free(w);
    free(x);
    free(b);
    free(yc);
    free(yg);
    free(yl);
}

static void test_agreement(void **state)
{
    (void)state;
    static const int64_t Ms[] = {1, 3, 17, 129};
    static const char *kernels[] = {"gemv", "dequant_gemm", "auto"};
    for (int k = 0; k < 3; k++)
        for (int i = 0; i < 4; i++) {
            check_agreement("nf4", 1, kernels[k], QTOOL_DTYPE_F16, Ms[i], 33, 67);   /* odd K, N: generic path */
            check_agreement("nf4", 1, kernels[k], QTOOL_DTYPE_F16, Ms[i], 40, 256);  /* K % 32 == 0: fast path */
            check_agreement("fp4", 0, kernels[k], QTOOL_DTYPE_BF16, Ms[i], 24, 896);
        }
    /* The fused kernels: the tensor-core one for 2..16 rows and K % 64 == 0
     * (K = 4864, 192), the GEMV with K split between warps (K = 2056: long
     * K, few features) and with K % 8 == 0 but not % 32 (K = 72). */
    static const int64_t Mg[] = {1, 2, 5, 16, 40};
    for (int i = 0; i < 5; i++) {
        check_agreement("nf4", 1, "gemv", QTOOL_DTYPE_F16, Mg[i], 40, 4864);
        check_agreement("nf4", 0, "gemv", QTOOL_DTYPE_BF16, Mg[i], 9, 2056);
        check_agreement("fp4", 1, "gemv", QTOOL_DTYPE_F16, Mg[i], 24, 72);
        check_agreement("nf4", 1, "gemv", QTOOL_DTYPE_BF16, Mg[i], 13, 192); /* tensor cores, N % 8 != 0 */
    }
    check_agreement("nf4", 1, "auto", QTOOL_DTYPE_BF16, 300, 96, 320);
    check_agreement("nf4", 0, "auto", QTOOL_DTYPE_F16, 70, 17, 4864);
}

static void test_device_memory(void **state)
{
    (void)state;
    const int64_t N = 64, K = 512, M = 200;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(M * K * 4), *y = malloc(M * N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    fill_normal(x, M * K, 1.0f);
    round_to_f16(x, M * K);
    qtool_instance *inst = make("nf4", 1, "auto");
    qt_mem_stats s0, s1, s2, s3;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack(inst, w, N, K, b, QTOOL_DEVICE_CUDA);
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) {
        uint64_t dev = s1.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c];
        uint64_t host = s1.current[QTOOL_DEVICE_CPU][c] - s0.current[QTOOL_DEVICE_CPU][c];
        assert_int_equal(bytes[c], dev);
        assert_int_equal(host, 0);
    }
    run_cuda(p, x, y, M, N, K, QTOOL_DTYPE_F16); /* grows the dequantize workspace */
    qt_mem_get_stats(&s2);
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    assert_true(bytes[QTOOL_MEM_WORKSPACE] > 0);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        if (c != QTOOL_MEM_ACTIVATIONS)
            assert_int_equal(bytes[c], s2.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->free_packed(p);
    qt_mem_get_stats(&s3);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(s3.current[QTOOL_DEVICE_CUDA][c], s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->destroy(inst);
    free(w);
    free(b);
    free(x);
    free(y);
}

int main(void)
{
    if (!cuda_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    rng_seed_from_env("test_nf4_cuda");
    if (harness_open(&H, "nf4", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_device_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
