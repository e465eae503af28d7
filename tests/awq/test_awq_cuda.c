/* awq plugin, CUDA: CPU/CUDA agreement for both kernels, fp16 and bf16,
 * awkward shapes, inputs divided by the layer's input scale; save from and
 * load onto the device; device memory accounting; the scale and clipping
 * searches on the GPU against the CPU's. Exits 77 without a CUDA device. */
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
        const char *g32[] = {kernels[k], "group_size=32"};
        const char *chan[] = {kernels[k], "group_size=-1"};
        check_agreement(def, 1, QTOOL_DTYPE_F16, 33, 256, 1, Ms, 4);
        check_agreement(g32, 2, QTOOL_DTYPE_BF16, 40, 96, 0, Ms, 4);
        check_agreement(chan, 2, QTOOL_DTYPE_F16, 17, 128, 1, Ms, 4);
    }
    static const int64_t Mb[] = {70, 300};
    check_agreement(NULL, 0, QTOOL_DTYPE_BF16, 96, 896, 1, Mb, 2);
    check_agreement(NULL, 0, QTOOL_DTYPE_F16, 24, 1024, 0, Mb, 2);
}

static void test_device_memory(void **state)
{
    (void)state;
    check_device_memory(NULL, 0);
    check_cuda_rejects();
}

/* search_device=cuda against search_device=cpu on the same calibration
 * rows: the same alpha (input scale) on all but near-ties, and a held-out
 * output error within 0.5% of the CPU search's, with and without the
 * clipping search (q has none), groups of 128, 64 and one per row. */
static double search_run(const char *dev, const char *group, int role, const float *w, const float *xc, int64_t T,
                         const float *xh, int64_t Th, int64_t N, int64_t K, float *s)
{
    const char *kv[] = {dev, group};
    qtool_layer_info li = {sizeof li, role, role == QTOOL_ROLE_ATTN_Q ? "model.layers.2.self_attn.q_proj.weight"
                                                                       : "model.layers.2.mlp.up_proj.weight",
                           K, N, 2, 4};
    return packed_output_error(&H, kv, 2, &li, w, xc, T, xh, Th, QTOOL_DEVICE_CUDA, s);
}

static void test_search_on_gpu(void **state)
{
    (void)state;
    const int64_t N = 160, K = 512, T = 1200, Th = 256;
    float *w = malloc(N * K * 4), *xc = malloc(T * K * 4), *xh = malloc(Th * K * 4);
    float *s_cpu = malloc(K * 4), *s_gpu = malloc(K * 4);
    const char *groups[] = {"group_size=128", "group_size=64", "group_size=-1"};
    int same = 0, runs = 0;
    for (int rep = 0; rep < 2; rep++) {
        gen_weights(w, N, K);
        act_dist d = act_dist_new(K, 32, 6, 20.0f);
        act_sample(&d, xc, T);
        act_sample(&d, xh, Th);
        for (int g = 0; g < 3; g++)
            for (int r = 0; r < 2; r++) {
                int role = r ? QTOOL_ROLE_ATTN_Q : QTOOL_ROLE_FFN_UP;
                double ec = search_run("search_device=cpu", groups[g], role, w, xc, T, xh, Th, N, K, s_cpu);
                double eg = search_run("search_device=cuda", groups[g], role, w, xc, T, xh, Th, N, K, s_gpu);
                int eq = memcmp(s_cpu, s_gpu, (size_t)K * 4) == 0;
                printf("search %s %s: held-out error cpu %.6f cuda %.6f, %s scale\n", groups[g], r ? "q" : "up", ec,
                       eg, eq ? "same" : "different");
                assert_true(eg <= 1.005 * ec);
                same += eq;
                runs++;
            }
        act_dist_free(&d);
    }
    assert_true(same >= runs - 2);
    free(w);
    free(xc);
    free(xh);
    free(s_cpu);
    free(s_gpu);
}

int main(void)
{
    if (!cuda_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    rng_seed_from_env("test_awq_cuda");
    if (harness_open(&H, "awq", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_agreement),
        cmocka_unit_test(test_device_memory),
        cmocka_unit_test(test_search_on_gpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
