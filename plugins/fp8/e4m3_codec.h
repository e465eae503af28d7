/* FP8 E4M3 (OCP "e4m3fn", NVIDIA __nv_fp8_e4m3, safetensors F8_E4M3) on
 * the CPU: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinities;
 * S.1111.111 is NaN; largest finite 448, smallest subnormal 2^-9.
 *
 * Encoding rounds to nearest, ties to even, and saturates finite overflow
 * (and infinities) to +-448, as cvt.rn.satfinite.e4m3x2.f32 does on the
 * GPU; NaN becomes 0x7F. Header-only: shared by the fp8 plugin (weight
 * packing) and its tests (the GPU emulation). */
#ifndef E4M3_CODEC_H
#define E4M3_CODEC_H

#include <stdint.h>
#include <string.h>

#define E4M3_MAX 448.0f
#define E4M3_NAN 0x7Fu

static inline uint32_t e4m3_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static inline float e4m3_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint8_t e4m3_encode(float f)
{
    uint32_t u = e4m3_f32_bits(f), a = u & 0x7FFFFFFFu;
    uint8_t sign = (uint8_t)((u >> 24) & 0x80u);
    if (a > 0x7F800000u) return E4M3_NAN;
    if (a >= 0x43E00000u) return (uint8_t)(sign | 0x7Eu); /* >= 448 (and inf): saturate */
    if (a < 0x3C800000u) {
        /* Below 2^-6: subnormal codes m * 2^-9, m = 0..8 (8 is the smallest
         * normal, 0x08, so rounding up carries into the exponent field). */
        float v = e4m3_bits_f32(a) * 512.0f; /* exact: a power-of-two scaling */
        const float magic = 12582912.0f;      /* round half to even to an integer */
        float r = (v + magic) - magic;
        return (uint8_t)(sign | (uint8_t)r);
    }
    uint32_t e = (a >> 23) - 127 + 7; /* 1 .. 15 */
    uint32_t m = a & 0x7FFFFFu;
    uint32_t code = (e << 3) | (m >> 20), rem = m & 0xFFFFFu;
    if (rem > 0x80000u || (rem == 0x80000u && (code & 1u))) code++;
    if (code > 0x7Eu) code = 0x7Eu; /* cannot happen below 448; kept for safety */
    return (uint8_t)(sign | code);
}

static inline float e4m3_decode(uint8_t c)
{
    uint32_t e = (c >> 3) & 0xFu, m = c & 7u;
    float v;
    if ((c & 0x7Fu) == 0x7Fu) return e4m3_bits_f32(0x7FC00000u);
    if (e == 0)
        v = (float)m * (1.0f / 512.0f);
    else
        v = e4m3_bits_f32(((e - 7 + 127) << 23) | (m << 20));
    return (c & 0x80u) ? -v : v;
}

#endif
