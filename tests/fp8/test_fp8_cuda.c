/* fp8 plugin, CUDA: the FP8 GEMM against the CPU emulation of the same
 * arithmetic (cuBLASLt outer-vector scaling and our epilogue, fp16 and
 * bf16, per-token and static scales, N and K not multiples of 16, K not a
 * multiple of 8, an unaligned input, several row chunks) and against the
 * float64 product; device memory accounting; save from the device; load
 * onto the device. Exits 77 without a CUDA device of compute capability
 * >= 8.9. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "e4m3_codec.h"
#include "fp8_ref.h"

static void run_cuda(qtool_packed *p, const float *x, float *y, int64_t M, int64_t N, int64_t K, int dt, int offset)
{
    size_t nx = (size_t)(M * K + offset);
    uint16_t *hx = calloc(nx, 2), *hy = malloc((size_t)(M * N) * 2);
    for (int64_t i = 0; i < M * K; i++)
        hx[offset + i] = dt == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16(x[i]) : qtool_f32_to_f16(x[i]);
    void *dx = qt_alloc(QTOOL_DEVICE_CUDA, nx * 2, QTOOL_MEM_ACTIVATIONS);
    void *dy = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(M * N) * 2, QTOOL_MEM_ACTIVATIONS);
    assert_non_null(dx);
    assert_non_null(dy);
    assert_int_equal(qt_cuda_memcpy_h2d(dx, hx, nx * 2), 0);
    qtool_tensor xt = tview((uint16_t *)dx + offset, dt, QTOOL_DEVICE_CUDA, 2, M, K);
    qtool_tensor yt = tview(dy, dt, QTOOL_DEVICE_CUDA, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cuda(p, &ma), QTOOL_OK);
    assert_int_equal(qt_cuda_device_sync(), 0);
    assert_int_equal(qt_cuda_memcpy_d2h(hy, dy, (size_t)(M * N) * 2), 0);
    for (int64_t i = 0; i < M * N; i++)
        y[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(hy[i]) : qtool_f16_to_f32(hy[i]);
    qt_free(QTOOL_DEVICE_CUDA, dx);
    qt_free(QTOOL_DEVICE_CUDA, dy);
    free(hx);
    free(hy);
}

static float round_dt(float v, int dt)
{
    return dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(qtool_f32_to_bf16(v)) : qtool_f16_to_f32(qtool_f32_to_f16(v));
}

static void check(const char *mode, const char *scaling, const char *chunk, int dt, int64_t M, int64_t N, int64_t K,
                  int offset, int with_bias)
{
    const int64_t T = 32;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *xc = malloc(T * K * 4), *x = malloc(M * K * 4);
    float *yg = malloc(M * N * 4), *ye = malloc(M * N * 4), *yl = malloc(M * N * 4);
    double *yr = malloc(M * N * 8), *mag = malloc(M * N * 8);
    fill_normal(w, N * K, 1.0f / sqrtf((float)K));
    fill_normal(b, N, 0.5f);
    fill_normal(xc, T * K, 1.5f);
    fill_normal(x, M * K, 1.0f);
    for (int64_t i = 0; i < M * K; i++) x[i] = round_dt(x[i], dt);
    const char *kv[] = {mode, scaling, chunk};
    qtool_instance *inst = make_inst(kv, 3);
    calibrate(inst, "g.weight", xc, T, N, K);
    const float *bias = with_bias ? b : NULL;
    qtool_packed *pc = pack_layer(inst, "g.weight", w, N, K, bias, QTOOL_DEVICE_CPU);
    qtool_packed *pg = pack_layer(inst, "g.weight", w, N, K, bias, QTOOL_DEVICE_CUDA);
    run_cuda(pg, x, yg, M, N, K, dt, offset);
    ct_saved sv;
    save_layer(pc, &sv, N, K);
    emulate(&sv, x, ye, mag, M, N, K);
    reference(w, bias, x, yr, M, N, K);
    /* Same codes and exact products; the tensor cores accumulate in their
     * own order and precision (FP8 MMA keeps fewer than 24 bits between
     * promotions to fp32), cuBLASLt may apply the scales in another order
     * and adds a 16-bit copy of the bias; the output is rounded to 16 bits.
     * Hopper's FP8 accumulator keeps about 14 mantissa bits until the next
     * promotion, so sums of K = 128 terms drift by up to a few 1e-4 of mag
     * (1.1e-4 seen): the allowance is 4e-4 of mag. One wrong activation
     * code at K <= 67 moves an output by ~1e-3 of mag, still above it. */
    double rel = dt == QTOOL_DTYPE_BF16 ? 8e-3 : 2e-3; /* about two half-ulps of the 16-bit output */
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            int64_t i = m * N + n;
            double tol = rel * (fabs(ye[i]) + (bias ? 2.0 * fabs(b[n]) : 0.0)) + 4e-4 * mag[i] + 1e-6;
            if (fabs((double)yg[i] - ye[i]) > tol) {
                fprintf(stderr, "%s %s %s dt=%d M=%lld N=%lld K=%lld off=%d [%lld,%lld]: cuda %.7g emulation %.7g\n",
                        mode, scaling, chunk, dt, (long long)M, (long long)N, (long long)K, offset, (long long)m,
                        (long long)n, yg[i], ye[i]);
                fail();
            }
        }
    double err = rel_rms(yg, yr, M * N);
    double lim = strcmp(mode, "act_scale=tensor") ? 0.08 : (K >= 16 ? 0.25 : 0.5);
    if (err > lim) {
        fprintf(stderr, "%s M=%lld N=%lld K=%lld: error %.4f > %.2f\n", mode, (long long)M, (long long)N,
                (long long)K, err, lim);
        fail();
    }
    /* Save from the device = save from the CPU; load onto the device gives
     * the output of the packed layer. */
    store sg = {0};
    qtool_save_sink sink = {&sg, store_put};
    assert_int_equal(H.desc->save(pg, &sink), QTOOL_OK);
    assert_int_equal(sg.n, sv.st.n);
    for (int i = 0; i < sg.n; i++) {
        stored *o = store_find(&sv.st, sg.items[i].name);
        assert_non_null(o);
        assert_memory_equal(o->t.data, sg.items[i].t.data,
                            (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
    }
    qtool_layer_info li = layer_info("g.weight", N, K);
    qtool_load_source src = {&sg, store_get, store_has};
    qtool_packed *pl = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CUDA, &src, &pl), QTOOL_OK);
    run_cuda(pl, x, yl, M, N, K, dt, offset);
    assert_memory_equal(yl, yg, (size_t)(M * N) * 4);
    store_free(&sg);
    store_free(&sv.st);
    H.desc->free_packed(pl);
    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(inst);
    free(w);
    free(b);
    free(xc);
    free(x);
    free(yg);
    free(ye);
    free(yl);
    free(yr);
    free(mag);
}

static void test_agreement(void **state)
{
    (void)state;
    static const int64_t Ms[] = {1, 3, 17, 129};
    /* (N, K): multiples of 16 (the direct cuBLASLt path), N % 16 != 0,
     * K % 8 != 0, K past the warp-per-token quantization kernel (8200), and
     * K for each of its row widths (64 .. 4864: 1 to 20 vectors a lane). */
    static const int64_t shapes[][2] = {{64, 64},  {17, 5},    {33, 67},   {128, 896}, {48, 4864},
                                        {32, 8200}, {32, 512}, {16, 2048}, {16, 3072}, {32, 4096}};
    static const char *scalings[] = {"scaling=auto", "scaling=epilogue"};
    static const char *modes[] = {"act_scale=token", "act_scale=tensor"};
    for (int sc = 0; sc < 2; sc++)
        for (int md = 0; md < 2; md++)
            for (int mi = 0; mi < 4; mi++)
                for (int si = 0; si < (int)(sizeof shapes / sizeof shapes[0]); si++) {
                    int dt = (mi + si + md) % 2 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
                    check(modes[md], scalings[sc], "chunk_mib=16", dt, Ms[mi], shapes[si][0], shapes[si][1], 0,
                          (mi + si) % 3 != 0);
                }
    check("act_scale=token", "scaling=auto", "chunk_mib=16", QTOOL_DTYPE_F16, 17, 64, 256, 1, 1);
    check("act_scale=token", "scaling=epilogue", "chunk_mib=1", QTOOL_DTYPE_F16, 1000, 1024, 128, 0, 1);
    check("act_scale=tensor", "scaling=auto", "chunk_mib=1", QTOOL_DTYPE_BF16, 700, 512, 96, 0, 0);
}

static void test_device_memory(void **state)
{
    (void)state;
    const int64_t N = 64, K = 500, M = 100;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(M * K * 4), *y = malloc(M * N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    fill_normal(x, M * K, 1.0f);
    round_to_f16(x, M * K);
    qtool_instance *inst = make_inst(NULL, 0);
    qt_mem_stats s0, s1, s2, s3;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack_layer(inst, "d.weight", w, N, K, b, QTOOL_DEVICE_CUDA);
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) {
        assert_int_equal(bytes[c], s1.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
        assert_int_equal(s1.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    }
    assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], N * 512 + N * 4 + N * 2 + N * 2);
    assert_int_equal(bytes[QTOOL_MEM_SCALES], N * 4);
    run_cuda(p, x, y, M, N, K, QTOOL_DTYPE_F16, 0);
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
    qtool_device_info info;
    if (qt_cuda_device_info(0, &info) != 0) {
        printf("skipped: cannot read CUDA device 0\n");
        return 77;
    }
    if (info.cc_major < 8 || (info.cc_major == 8 && info.cc_minor < 9)) {
        printf("skipped: needs compute capability >= 8.9; %s is %d.%d\n", info.name, info.cc_major, info.cc_minor);
        return 77;
    }
    printf("device: %s (compute capability %d.%d)\n", info.name, info.cc_major, info.cc_minor);
    rng_seed_from_env("test_fp8_cuda");
    if (harness_open(&H, "fp8", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_device_memory),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
