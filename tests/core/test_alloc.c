/* The accounted allocator: bytes by category, peaks, frees, bad pointers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "alloc.h"

static void test_accounting_by_category(void **state)
{
    (void)state;
    qt_mem_stats s0, s;
    qt_mem_get_stats(&s0);
    void *a = qt_alloc(QTOOL_DEVICE_CPU, 1000, QTOOL_MEM_WEIGHTS);
    void *b = qt_alloc(QTOOL_DEVICE_CPU, 24, QTOOL_MEM_SCALES);
    assert_non_null(a);
    assert_non_null(b);
    assert_int_equal((uintptr_t)a % 64, 0);
    memset(a, 1, 1000);
    qt_mem_get_stats(&s);
    assert_int_equal(s.current[0][QTOOL_MEM_WEIGHTS] - s0.current[0][QTOOL_MEM_WEIGHTS], 1000);
    assert_int_equal(s.current[0][QTOOL_MEM_SCALES] - s0.current[0][QTOOL_MEM_SCALES], 24);
    assert_int_equal(s.current_total[0] - s0.current_total[0], 1024);
    size_t n;
    int cat;
    assert_int_equal(qt_alloc_info(b, &n, &cat), 0);
    assert_int_equal(n, 24);
    assert_int_equal(cat, QTOOL_MEM_SCALES);
    qt_free(QTOOL_DEVICE_CPU, a);
    qt_free(QTOOL_DEVICE_CPU, b);
    qt_mem_get_stats(&s);
    assert_int_equal(s.current_total[0], s0.current_total[0]);
    assert_int_not_equal(qt_alloc_info(b, NULL, NULL), 0);
}

static void test_peak_tracks_maximum(void **state)
{
    (void)state;
    qt_mem_reset_peak();
    qt_mem_stats s0, s;
    qt_mem_get_stats(&s0);
    void *a = qt_alloc(QTOOL_DEVICE_CPU, 5000, QTOOL_MEM_ACTIVATIONS);
    void *b = qt_alloc(QTOOL_DEVICE_CPU, 3000, QTOOL_MEM_WORKSPACE);
    qt_free(QTOOL_DEVICE_CPU, a);
    void *c = qt_alloc(QTOOL_DEVICE_CPU, 100, QTOOL_MEM_WORKSPACE);
    qt_mem_get_stats(&s);
    assert_int_equal(s.peak_total[0] - s0.current_total[0], 8000);
    assert_int_equal(s.at_peak[0][QTOOL_MEM_ACTIVATIONS] - s0.current[0][QTOOL_MEM_ACTIVATIONS], 5000);
    assert_int_equal(s.at_peak[0][QTOOL_MEM_WORKSPACE] - s0.current[0][QTOOL_MEM_WORKSPACE], 3000);
    qt_free(QTOOL_DEVICE_CPU, b);
    qt_free(QTOOL_DEVICE_CPU, c);
}

static void test_many_allocations_grow_table(void **state)
{
    (void)state;
    enum { N = 5000 };
    static void *p[N];
    qt_mem_stats s0, s;
    qt_mem_get_stats(&s0);
    for (int i = 0; i < N; i++) {
        p[i] = qt_alloc(QTOOL_DEVICE_CPU, (size_t)i % 97, QTOOL_MEM_OTHER);
        assert_non_null(p[i]);
    }
    for (int i = 0; i < N; i += 2) qt_free(QTOOL_DEVICE_CPU, p[i]);
    for (int i = 1; i < N; i += 2) {
        size_t n;
        assert_int_equal(qt_alloc_info(p[i], &n, NULL), 0);
        assert_int_equal(n, (size_t)i % 97);
        qt_free(QTOOL_DEVICE_CPU, p[i]);
    }
    qt_mem_get_stats(&s);
    assert_int_equal(s.current_total[0], s0.current_total[0]);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    assert_null(qt_alloc(7, 16, QTOOL_MEM_OTHER));
    assert_null(qt_alloc(QTOOL_DEVICE_CPU, 16, QTOOL_MEM_COUNT));
    int x;
    qt_free(QTOOL_DEVICE_CPU, &x); /* reported, not freed, no crash */
    qt_free(QTOOL_DEVICE_CPU, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_accounting_by_category),
        cmocka_unit_test(test_peak_tracks_maximum),
        cmocka_unit_test(test_many_allocations_grow_table),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
