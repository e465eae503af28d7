/* The CUDA forward pass refuses cleanly what it cannot run, with or without
 * CUDA in the build and with or without a device: a model not packed for
 * CUDA, and (built without CUDA) any CUDA forward pass at all. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "model.h"
#include "threads.h"

static qt_model *open_qwen2(void)
{
    const char *root = getenv("QTOOL_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/model/data/qwen2/model", root ? root : "tests");
    qt_model *m = NULL;
    if (qt_model_open(path, NULL, &m)) fail_msg("open %s: %s", path, qt_last_error());
    return m;
}

static int forward_one(qt_model *m)
{
    static const int32_t ids[] = {5, 6, 7};
    const int32_t *rows[1] = {ids};
    int64_t len[1] = {3};
    qt_batch b = {1, rows, len};
    float logits[16];
    qt_forward_out out = {logits, NULL, NULL};
    return qt_model_forward(m, &b, QTOOL_DEVICE_CUDA, NULL, &out);
}

static void test_unpacked(void **state)
{
    (void)state;
    qt_model *m = open_qwen2();
    assert_int_not_equal(forward_one(m), 0);
    assert_non_null(strstr(qt_last_error(), "packed for CUDA"));
    qt_model_close(m);
}

/* A descriptor that claims the model is packed for CUDA, with no packed
 * layers: the pass must fail with a message, never crash, and leave no
 * device memory behind. */
static int fake_matmul(qtool_packed *p, const qtool_matmul_args *a)
{
    (void)p;
    (void)a;
    return QTOOL_ERR_DEVICE;
}

static void test_fake_packed(void **state)
{
    (void)state;
    qtool_plugin_desc d = {.abi_version = QTOOL_ABI_VERSION, .name = "fake", .matmul_cuda = fake_matmul};
    qt_model *m = open_qwen2();
    m->desc = &d;
    m->packed_device = QTOOL_DEVICE_CUDA;
    qt_clear_error();
    int rc = forward_one(m);
    assert_int_not_equal(rc, 0);
    print_message("  refused: %s\n", qt_last_error());
    assert_true(strlen(qt_last_error()) > 0);
    if (!qt_cuda_built()) assert_non_null(strstr(qt_last_error(), "without CUDA"));
    m->desc = NULL;
    m->packed_device = -1;
    qt_model_close(m);
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    assert_int_equal(st.current_total[QTOOL_DEVICE_CUDA], 0);
}

int main(void)
{
    qt_threads_init(0);
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_unpacked), cmocka_unit_test(test_fake_packed)};
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    qt_threads_shutdown();
    return rc;
}
