/* awq plugin, CUDA: CPU/CUDA agreement for both kernels, fp16 and bf16,
 * awkward shapes, inputs divided by the layer's input scale; save from and
 * load onto the device; device memory accounting. Exits 77 without a CUDA
 * device. */
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
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
