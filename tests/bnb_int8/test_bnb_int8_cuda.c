/* bnb_int8 plugin, CUDA: agreement with the CPU path (the fused int8
 * tensor-core GEMM, cuBLASLt and the built-in dp4a GEMM, fp16 and bf16,
 * outlier columns present and absent, fewer and more than the fused
 * kernel stages at once, K not a multiple of 4 or 16), device memory
 * accounting including workspace and outlier buffers, save from the
 * device, load onto the device. Exits 77 without a CUDA device. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"

static harness H;

static qtool_instance *make(double thr, const char *gemm)
{
    char a[64], g[64];
    snprintf(a, sizeof a, "threshold=%.9g", thr);
    snprintf(g, sizeof g, "gemm=%s", gemm);
    const char *kv[] = {a, g};
    qtool_instance *inst = NULL;
    char msg[256] = "";
    assert_int_equal(harness_create(&H, kv, 2, &inst, msg, sizeof msg), QTOOL_OK);
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

static void make_input(float *x, int64_t M, int64_t K, int outliers)
{
    fill_normal(x, M * K, 1.0f);
    for (int64_t i = 0; i < M * K; i++) x[i] = fmaxf(-5.0f, fminf(5.0f, x[i]));
    if (outliers)
        for (int64_t c = 0; c < K; c += 5 + (int64_t)(rng_next() % 13)) {
            int64_t m = (int64_t)(rng_next() % (uint64_t)M);
            x[m * K + c] = (rng_next() & 1 ? 1.0f : -1.0f) * (6.0f + 20.0f * (float)rng_uniform());
        }
}

static void check_agreement(double thr, const char *gemm, int dt, int outliers, int64_t M, int64_t N, int64_t K)
{
    float *w = malloc((size_t)(N * K) * 4), *x = malloc((size_t)(M * K) * 4), *b = malloc((size_t)N * 4);
    float *yc = malloc((size_t)(M * N) * 4), *yg = malloc((size_t)(M * N) * 4), *yl = malloc((size_t)(M * N) * 4);
    fill_normal(w, N * K, 0.05f);
    fill_normal(b, N, 0.5f);
    make_input(x, M, K, outliers);
    for (int64_t i = 0; i < M * K; i++)
        x[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(qtool_f32_to_bf16(x[i])) : qtool_f16_to_f32(qtool_f32_to_f16(x[i]));
    qtool_instance *inst = make(thr, gemm);
    qtool_packed *pc = pack(inst, w, N, K, b, QTOOL_DEVICE_CPU), *pg = pack(inst, w, N, K, b, QTOOL_DEVICE_CUDA);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K), yt = tview(yc, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(pc, &ma), QTOOL_OK);
    run_cuda(pg, x, yg, M, N, K, dt);
    /* Same int8 codes and integer sums on both sides; the difference is the
     * float epilogue and the 16-bit output rounding. */
    double rel = dt == QTOOL_DTYPE_BF16 ? 8e-3 : 1e-3;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double mag = fabs(b[n]);
            for (int64_t k = 0; k < K; k++) mag += fabs((double)x[m * K + k] * w[n * K + k]);
            double err = fabs((double)yg[m * N + n] - yc[m * N + n]);
            if (err > rel * fabs(yc[m * N + n]) + 1e-4 * mag + 1e-4) {
                fprintf(stderr, "thr=%g %s dt=%d M=%lld N=%lld K=%lld at [%lld,%lld]: cuda %.6g cpu %.6g\n", thr, gemm,
                        dt, (long long)M, (long long)N, (long long)K, (long long)m, (long long)n, yg[m * N + n],
                        yc[m * N + n]);
                fail();
            }
        }
    store sc = {0}, sg = {0};
    qtool_save_sink k1 = {&sc, store_put}, k2 = {&sg, store_put};
    assert_int_equal(H.desc->save(pc, &k1), QTOOL_OK);
    assert_int_equal(H.desc->save(pg, &k2), QTOOL_OK);
    assert_int_equal(sc.n, sg.n);
    for (int i = 0; i < sc.n; i++) {
        stored *o = store_find(&sg, sc.items[i].name);
        assert_non_null(o);
        assert_memory_equal(o->t.data, sc.items[i].t.data, (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
    }
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t.weight", K, N, 0, 1};
    qtool_load_source src = {&sc, store_get, store_has};
    qtool_packed *pl = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CUDA, &src, &pl), QTOOL_OK);
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
    static const char *gemms[] = {"auto", "builtin", "cublaslt"};
    for (int g = 0; g < 3; g++)
        for (int i = 0; i < 4; i++) {
            check_agreement(6.0, gemms[g], QTOOL_DTYPE_F16, 1, Ms[i], 33, 67);   /* K % 4 != 0, odd N */
            check_agreement(6.0, gemms[g], QTOOL_DTYPE_F16, 0, Ms[i], 64, 256);
            check_agreement(6.0, gemms[g], QTOOL_DTYPE_BF16, 1, Ms[i], 48, 896);
            check_agreement(0.0, gemms[g], QTOOL_DTYPE_F16, 1, Ms[i], 40, 128);
        }
    check_agreement(6.0, "auto", QTOOL_DTYPE_F16, 1, 1000, 96, 320);
    /* Large M through the fused kernel's big tiles; a low threshold gives
     * hundreds of outlier columns (many staging chunks). */
    check_agreement(6.0, "auto", QTOOL_DTYPE_F16, 1, 8192, 264, 200);
    check_agreement(6.0, "auto", QTOOL_DTYPE_BF16, 1, 4100, 300, 96);
    check_agreement(2.0, "auto", QTOOL_DTYPE_F16, 1, 300, 136, 1000);
    check_agreement(2.0, "auto", QTOOL_DTYPE_F16, 1, 5, 136, 1000);
    /* Long rows: the warp-per-token quantization at its larger widths. */
    check_agreement(6.0, "auto", QTOOL_DTYPE_F16, 1, 17, 64, 4864);
    check_agreement(6.0, "auto", QTOOL_DTYPE_BF16, 1, 33, 40, 3000);
    /* Sizes where Hopper runs the TMA GEMM without the outlier columns and
     * corrects afterwards: with over 256 outlier columns (two staging
     * chunks), and with none (the correction returns at once). */
    check_agreement(2.0, "auto", QTOOL_DTYPE_BF16, 1, 4096, 512, 320);
    check_agreement(6.0, "auto", QTOOL_DTYPE_F16, 0, 2560, 1024, 1024);
}

static void test_device_memory(void **state)
{
    (void)state;
    const int64_t N = 64, K = 510, M = 100;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(M * K * 4), *y = malloc(M * N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    make_input(x, M, K, 1);
    round_to_f16(x, M * K);
    qtool_instance *inst = make(6.0, "auto");
    qt_mem_stats s0, s1, s2, s3;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack(inst, w, N, K, b, QTOOL_DEVICE_CUDA);
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) {
        assert_int_equal(bytes[c], s1.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
        assert_int_equal(s1.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    }
    assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], N * 512 + N * 4);
    run_cuda(p, x, y, M, N, K, QTOOL_DTYPE_F16);
    qt_mem_get_stats(&s2);
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    assert_true(bytes[QTOOL_MEM_WORKSPACE] > 0 && bytes[QTOOL_MEM_OUTLIERS] > 0);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        if (c != QTOOL_MEM_ACTIVATIONS)
            assert_int_equal(bytes[c], s2.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->free_packed(p);
    qt_mem_get_stats(&s3);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) assert_int_equal(s3.current[QTOOL_DEVICE_CUDA][c], s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->destroy(inst);
    free(w);
    free(b);
    free(x);
    free(y);
}

/* Layers of one instance share its outlier buffer (flags, columns,
 * counters). Running a layer with another K, whose input has outliers, in
 * between must not change a layer's next output: no column of one layer may
 * show up as a flag of another. */
static void test_layers_share_outlier_buffer(void **state)
{
    (void)state;
    const int64_t N = 64, M = 40, Ka = 512, Kb = 96;
    float *wa = malloc(N * Ka * 4), *wb = malloc(N * Kb * 4), *b = malloc(N * 4);
    float *xa = malloc(M * Ka * 4), *xb = malloc(M * Kb * 4);
    float *y1 = malloc(M * N * 4), *y2 = malloc(M * N * 4), *yb = malloc(M * N * 4);
    fill_normal(wa, N * Ka, 0.05f);
    fill_normal(wb, N * Kb, 0.05f);
    fill_normal(b, N, 0.1f);
    make_input(xa, M, Ka, 0); /* no outliers in A's input */
    round_to_f16(xa, M * Ka);
    make_input(xb, M, Kb, 1);
    for (int64_t m = 0; m < M; m++) xb[m * Kb + Kb - 1] = 30.0f; /* B's last column: an outlier */
    round_to_f16(xb, M * Kb);
    qtool_instance *inst = make(6.0, "auto");
    qtool_packed *pa = pack(inst, wa, N, Ka, b, QTOOL_DEVICE_CUDA), *pb = pack(inst, wb, N, Kb, b, QTOOL_DEVICE_CUDA);
    run_cuda(pa, xa, y1, M, N, Ka, QTOOL_DTYPE_F16);
    for (int i = 0; i < 3; i++) run_cuda(pb, xb, yb, M, N, Kb, QTOOL_DTYPE_F16);
    run_cuda(pa, xa, y2, M, N, Ka, QTOOL_DTYPE_F16);
    assert_memory_equal(y1, y2, (size_t)(M * N) * 4);
    H.desc->free_packed(pa);
    H.desc->free_packed(pb);
    H.desc->destroy(inst);
    free(wa);
    free(wb);
    free(b);
    free(xa);
    free(xb);
    free(y1);
    free(y2);
    free(yb);
}

int main(void)
{
    if (!cuda_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    rng_seed_from_env("test_bnb_int8_cuda");
    if (harness_open(&H, "bnb_int8", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_device_memory),
        cmocka_unit_test(test_layers_share_outlier_buffer),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
