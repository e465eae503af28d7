/* gptq plugin, CUDA: CPU/CUDA agreement for both kernels, fp16 and bf16,
 * awkward shapes, act-order (g_idx) layers; save from and load onto the
 * device; device memory accounting. Exits 77 without a CUDA device. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "int4_test_util.h"
#include "int4_cuda_checks.h"

static const int64_t Ms[] = {1, 3, 17, 129};

static void test_agreement(void **state)
{
    (void)state;
    static const char *kernels[] = {"cuda_kernel=gemv", "cuda_kernel=dequant_gemm", "cuda_kernel=auto"};
    for (int k = 0; k < 3; k++) {
        const char *def[] = {kernels[k]};
        const char *act[] = {kernels[k], "act_order=1", "group_size=32"};
        const char *asym[] = {kernels[k], "sym=0", "group_size=-1"};
        check_agreement(def, 1, QTOOL_DTYPE_F16, 33, 256, 1, Ms, 4);
        check_agreement(act, 3, QTOOL_DTYPE_F16, 40, 96, 0, Ms, 4);
        check_agreement(asym, 3, QTOOL_DTYPE_BF16, 17, 128, 1, Ms, 4);
    }
    const char *big[] = {"act_order=1"};
    static const int64_t Mb[] = {70, 300};
    check_agreement(big, 1, QTOOL_DTYPE_BF16, 96, 896, 1, Mb, 2);
    check_agreement(NULL, 0, QTOOL_DTYPE_F16, 24, 1024, 0, Mb, 2);
}

static void test_device_memory(void **state)
{
    (void)state;
    const char *act[] = {"act_order=1"};
    check_device_memory(NULL, 0);
    check_device_memory(act, 1);
    check_cuda_rejects();
}

/* H summed on the GPU (cuBLASLt FP64 GEMM) matches the CPU sum: the same
 * quantized layer up to rounding ties (at most one row in a hundred may
 * differ), device memory for H accounted and released. */
static void test_device_hessian(void **state)
{
    (void)state;
    const int64_t N = 64, K = 384, T = 3000, Th = 400; /* T > one staging chunk (2048 rows) */
    float *w = malloc(N * K * 4), *xc = malloc(T * K * 4), *xh = malloc(Th * K * 4);
    gen_weights(w, N, K);
    act_dist d = act_dist_new(K, 24, 3, 10.0f);
    act_sample(&d, xc, T);
    act_sample(&d, xh, Th);
    const char *kc[] = {"calib_device=cpu", "act_order=1"}, *kg[] = {"calib_device=cuda", "act_order=1"};
    qtool_instance *ic = make_inst(&H, kc, 2), *ig = make_inst(&H, kg, 2);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_FFN_UP, "model.layers.0.mlp.up_proj.weight", K, N, 0, 1};
    qt_mem_stats s0, s1, s2;
    qt_mem_get_stats(&s0);
    calibrate_rows(&H, ic, &li, xc, T, K, 700);
    calibrate_rows(&H, ig, &li, xc, T, K, 700);
    qt_mem_get_stats(&s1);
    assert_true(s1.current[QTOOL_DEVICE_CUDA][QTOOL_MEM_OTHER] - s0.current[QTOOL_DEVICE_CUDA][QTOOL_MEM_OTHER] ==
                (uint64_t)(K * K) * 8);
    qtool_packed *pc = pack_layer(&H, ic, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    qtool_packed *pg = pack_layer(&H, ig, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    float *wc = malloc(N * K * 4), *wg = malloc(N * K * 4);
    assert_int_equal(H.desc->dequantize(pc, wc), QTOOL_OK);
    assert_int_equal(H.desc->dequantize(pg, wg), QTOOL_OK);
    int rows_differ = 0;
    for (int64_t n = 0; n < N; n++) rows_differ += memcmp(wc + n * K, wg + n * K, (size_t)K * 4) != 0;
    printf("device Hessian: %d of %lld rows differ from the CPU sum\n", rows_differ, (long long)N);
    assert_true(rows_differ <= (int)(N / 100) + 1);
    double *a = malloc(N * K * 8), *b = malloc(N * K * 8);
    for (int64_t i = 0; i < N * K; i++) {
        a[i] = wc[i];
        b[i] = wg[i];
    }
    double ec = output_error(w, a, NULL, xh, Th, N, K), eg = output_error(w, b, NULL, xh, Th, N, K);
    assert_true(fabs(ec - eg) <= 0.02 * ec);
    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(ic);
    H.desc->destroy(ig);
    qt_mem_get_stats(&s2);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) {
        assert_int_equal(s2.current[QTOOL_DEVICE_CUDA][c], s0.current[QTOOL_DEVICE_CUDA][c]);
        assert_int_equal(s2.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    }
    act_dist_free(&d);
    free(w);
    free(xc);
    free(xh);
    free(wc);
    free(wg);
    free(a);
    free(b);
}

int main(void)
{
    if (!cuda_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    rng_seed_from_env("test_gptq_cuda");
    if (harness_open(&H, "gptq", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_device_memory),
        cmocka_unit_test(test_device_hessian),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
