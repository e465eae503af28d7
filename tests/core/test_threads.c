/* The thread pool covers every index exactly once, for any n and grain. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "threads.h"

static atomic_int *hits;

static void mark(void *arg, int64_t b, int64_t e)
{
    (void)arg;
    for (int64_t i = b; i < e; i++) atomic_fetch_add(&hits[i], 1);
}

static void nested(void *arg, int64_t b, int64_t e)
{
    (void)arg;
    for (int64_t i = b; i < e; i++) qt_parallel_for(1, 1, mark, NULL); /* serial inside */
}

static void test_every_index_once(void **state)
{
    (void)state;
    qt_threads_init(4);
    const int64_t sizes[] = {1, 2, 3, 17, 129, 1000, 100003};
    const int64_t grains[] = {1, 7, 64, 1 << 20};
    for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++) {
        for (size_t g = 0; g < sizeof grains / sizeof *grains; g++) {
            hits = calloc((size_t)sizes[s], sizeof *hits);
            for (int rep = 0; rep < 3; rep++) qt_parallel_for(sizes[s], grains[g], mark, NULL);
            for (int64_t i = 0; i < sizes[s]; i++) assert_int_equal(atomic_load(&hits[i]), 3);
            free(hits);
        }
    }
}

static void test_nested_call_runs_serially(void **state)
{
    (void)state;
    hits = calloc(1, sizeof *hits);
    qt_parallel_for(50, 1, nested, NULL);
    assert_int_equal(atomic_load(&hits[0]), 50);
    free(hits);
    qt_threads_shutdown();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_index_once),
        cmocka_unit_test(test_nested_call_runs_serially),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
