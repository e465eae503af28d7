/* core/device.c: simulated cards from names and compute capabilities,
 * the CPU description, and the verdict rules (device mask, then probe). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "device.h"
#include "error.h"

static void expect_card(const char *text, int major, int minor, const char *name)
{
    qtool_device_info d;
    memset(&d, 0x5A, sizeof d);
    if (qt_device_simulate(text, &d) != 0) fail_msg("'%s' refused: %s", text, qt_last_error());
    assert_int_equal(d.struct_size, sizeof d);
    assert_int_equal(d.kind, QTOOL_DEVICE_CUDA);
    assert_int_equal(d.simulated, 1);
    if (d.cc_major != major || d.cc_minor != minor)
        fail_msg("'%s' gave %d.%d, expected %d.%d", text, d.cc_major, d.cc_minor, major, minor);
    if (name) assert_string_equal(d.name, name);
    assert_int_equal(d.cpu_threads, 0);
}

static void test_named_cards(void **state)
{
    (void)state;
    expect_card("t4", 7, 5, "Tesla T4");
    expect_card("T4", 7, 5, "Tesla T4");
    expect_card("v100", 7, 0, NULL);
    expect_card("a10", 8, 6, NULL);
    expect_card("A100", 8, 0, NULL);
    expect_card("l4", 8, 9, NULL);
    expect_card("l40s", 8, 9, NULL);
    expect_card("h100", 9, 0, NULL);
    expect_card("h200", 9, 0, NULL);
    expect_card("b200", 10, 0, NULL);
    qtool_device_info d;
    assert_int_equal(qt_device_simulate("t4", &d), 0);
    /* 16 GB as sold */
    assert_true(d.total_memory >= 15000000000ull && d.total_memory <= 17200000000ull);
    assert_int_equal(d.multiprocessors, 40);
}

static void test_compute_capability_forms(void **state)
{
    (void)state;
    expect_card("sm_75", 7, 5, "sm_75");
    expect_card("SM_89", 8, 9, NULL);
    expect_card("sm_7.5", 7, 5, NULL);
    expect_card("7.5", 7, 5, NULL);
    expect_card("9.0", 9, 0, NULL);
    expect_card("sm_100", 10, 0, NULL);
    expect_card("sm_12.0", 12, 0, NULL);
    expect_card("sm_61", 6, 1, NULL);
}

static void test_unknown_cards(void **state)
{
    (void)state;
    static const char *const bad[] = {"bogus", "", "sm_", "sm_7", "7.", ".5", "7.55", "sm_1000", "sm_7x",
                                      "t4 ", "0.5", "sm_05", "x7.5", "h100h100h100h100h100h100h100h100h100"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        qtool_device_info d;
        if (qt_device_simulate(bad[i], &d) == 0) fail_msg("'%s' accepted as %d.%d", bad[i], d.cc_major, d.cc_minor);
        const char *e = qt_last_error();
        assert_non_null(strstr(e, "t4"));
        assert_non_null(strstr(e, "h100"));
        assert_non_null(strstr(e, "sm_XY"));
    }
    assert_int_not_equal(qt_device_simulate(NULL, &(qtool_device_info){0}), 0);
}

static void test_cpu_info(void **state)
{
    (void)state;
    qtool_device_info c;
    qt_device_cpu_info(&c);
    assert_int_equal(c.kind, QTOOL_DEVICE_CPU);
    assert_int_equal(c.simulated, 0);
    assert_true(c.cpu_threads >= 1);
    assert_true(strlen(c.name) > 0);
    assert_true(memchr(c.name, '\0', sizeof c.name) != NULL);
    char feats[128];
    qt_cpu_features_str(c.cpu_features, feats, sizeof feats);
    printf("cpu: %s, %d threads, [%s]\n", c.name, c.cpu_threads, feats);
#if defined(__x86_64__)
    /* FMA without AVX2 does not exist on x86-64 parts this runs on. */
    if (c.cpu_features & QTOOL_CPU_AVX512F) assert_true(c.cpu_features & QTOOL_CPU_AVX2);
#endif
    qt_cpu_features_str(QTOOL_CPU_AVX2 | QTOOL_CPU_F16C, feats, sizeof feats);
    assert_string_equal(feats, "avx2 f16c");
    qt_cpu_features_str(0, feats, sizeof feats);
    assert_string_equal(feats, "");
    qt_cpu_features_str(0x3F, feats, 8); /* truncates, stays terminated */
    assert_true(strlen(feats) < 8);
}

static int probe_needs_89(const qtool_device_info *d, char *reason, size_t len)
{
    if (d->kind == QTOOL_DEVICE_CUDA && d->cc_major * 10 + d->cc_minor < 89) {
        snprintf(reason, len, "needs compute capability >= 8.9; found %d.%d (%s)\nsecond line", d->cc_major,
                 d->cc_minor, d->name);
        return QTOOL_ERR_UNSUPPORTED;
    }
    return QTOOL_OK;
}

static int probe_silent(const qtool_device_info *d, char *reason, size_t len)
{
    (void)d;
    (void)reason;
    (void)len;
    return QTOOL_ERR_UNSUPPORTED;
}

static void test_verdicts(void **state)
{
    (void)state;
    qtool_plugin_desc fp8 = {0}, cpu_only = {0}, silent = {0}, noprobe = {0};
    fp8.devices = QTOOL_DEVMASK_CUDA;
    fp8.probe = probe_needs_89;
    cpu_only.devices = QTOOL_DEVMASK_CPU;
    cpu_only.probe = probe_needs_89;
    silent.devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA;
    silent.probe = probe_silent;
    noprobe.devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA;
    qtool_device_info t4, h100, cpu;
    assert_int_equal(qt_device_simulate("t4", &t4), 0);
    assert_int_equal(qt_device_simulate("h100", &h100), 0);
    qt_device_cpu_info(&cpu);
    char r[256];
    assert_int_equal(qt_device_plugin_supported(&fp8, &t4, r, sizeof r), 0);
    assert_string_equal(r, "needs compute capability >= 8.9; found 7.5 (Tesla T4) second line");
    assert_int_equal(qt_device_plugin_supported(&fp8, &h100, r, sizeof r), 1);
    assert_int_equal(qt_device_plugin_supported(&fp8, &cpu, r, sizeof r), 0);
    assert_string_equal(r, "CUDA only");
    assert_int_equal(qt_device_plugin_supported(&cpu_only, &h100, r, sizeof r), 0);
    assert_string_equal(r, "CPU only");
    assert_int_equal(qt_device_plugin_supported(&cpu_only, &cpu, r, sizeof r), 1);
    assert_int_equal(qt_device_plugin_supported(&silent, &t4, r, sizeof r), 0);
    assert_string_equal(r, "not supported (unsupported)");
    assert_int_equal(qt_device_plugin_supported(&noprobe, &t4, r, sizeof r), 1);
    char label[32];
    assert_string_equal(qt_device_label(&t4, label, sizeof label), "cuda:sim");
    assert_string_equal(qt_device_label(&cpu, label, sizeof label), "cpu");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_named_cards), cmocka_unit_test(test_compute_capability_forms),
        cmocka_unit_test(test_unknown_cards), cmocka_unit_test(test_cpu_info), cmocka_unit_test(test_verdicts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
