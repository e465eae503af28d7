/* The SDK's half-precision conversions against a double-precision
 * reference: every f16 value exactly, and round-to-nearest-even for random
 * floats across the whole range (normals, subnormals, overflow). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <qtool/plugin.h>

/* Value of an f16 bit pattern computed in double from its definition. */
static double f16_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v;
    if (e == 0) v = ldexp(m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static void test_f16_to_f32_exhaustive(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        double ref = f16_value((uint16_t)h);
        float got = qtool_f16_to_f32((uint16_t)h);
        if (isnan(ref)) {
            assert_true(isnan(got));
            continue;
        }
        assert_true((double)got == ref);
        assert_int_equal(qtool_f32_to_f16(got), h); /* exact round trip */
    }
}

/* Nearest f16 to x by search, ties to even mantissa. */
static uint16_t f16_nearest(float x)
{
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double ax = fabs((double)x);
    if (ax >= 65520.0) return sign | 0x7C00;
    uint16_t best = 0;
    double bd = INFINITY;
    for (uint16_t h = 0; h < 0x7C00; h++) {
        double d = fabs(f16_value(h) - ax);
        if (d < bd || (d == bd && (h & 1) == 0)) {
            bd = d;
            best = h;
        }
    }
    return sign | best;
}

static void test_f32_to_f16_random(void **state)
{
    (void)state;
    unsigned seed = (unsigned)time(NULL);
    printf("seed %u\n", seed);
    srand(seed);
    for (int i = 0; i < 3000; i++) {
        /* exponents spanning subnormal to overflow */
        float x = ldexpf((float)rand() / (float)RAND_MAX + 0.5f, rand() % 46 - 28);
        if (rand() & 1) x = -x;
        assert_int_equal(qtool_f32_to_f16(x), f16_nearest(x));
    }
    /* exact ties */
    assert_int_equal(qtool_f32_to_f16(1.0f + ldexpf(1, -11)), 0x3C00);              /* to even */
    assert_int_equal(qtool_f32_to_f16(1.0f + 3 * ldexpf(1, -11)), 0x3C02);          /* to even */
    assert_int_equal(qtool_f32_to_f16(ldexpf(1, -25)), 0x0000);                     /* half of min subnormal */
    assert_int_equal(qtool_f32_to_f16(ldexpf(3, -26)), 0x0001);
    assert_int_equal(qtool_f32_to_f16(65504.0f), 0x7BFF);
    assert_int_equal(qtool_f32_to_f16(65520.0f), 0x7C00);
    assert_true(isnan(qtool_f16_to_f32(qtool_f32_to_f16(NAN))));
}

static void test_bf16(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = qtool_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        assert_int_equal(qtool_f32_to_bf16(f), h);
    }
    /* 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1.0). */
    assert_int_equal(qtool_f32_to_bf16(1.0f + ldexpf(1, -8)), 0x3F80);
    assert_int_equal(qtool_f32_to_bf16(1.0f + 3 * ldexpf(1, -8)), 0x3F82);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_to_f32_exhaustive),
        cmocka_unit_test(test_f32_to_f16_random),
        cmocka_unit_test(test_bf16),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
