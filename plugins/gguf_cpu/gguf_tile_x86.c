/* x86 kernels, compiled with target attributes and chosen at run time
 * (gq_select_isa), so one build runs on any x86-64 CPU:
 *   - AVX2+FMA tiles (gq_tile_avx2): per group of 32 codes and per 4-code
 *     lane, the int8 dot product scaled by the weight's lane scale times the
 *     activation's group scale, accumulated in float; the sum term (zero
 *     points, minima) is added at the end. Signed codes use the sign trick,
 *     |w| * (a with w's sign), so the unsigned x signed instruction applies
 *     (|w| <= 127, |a| <= 127: no 16-bit saturation).
 *   - AVX-512 VNNI outer-product kernel (gq_op_matmul_avx512) and the
 *     AVX-512 activation quantizer. */
#include "gguf_quants.h"

#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))

AVX2 static inline float hsum256(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

AVX2 static inline float min_term_avx2(int64_t ng, const float *mn, const float *s)
{
    __m256 acc = _mm256_setzero_ps();
    int64_t g = 0;
    for (; g + 8 <= ng; g += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(mn + g), _mm256_loadu_ps(s + g), acc);
    float r = hsum256(acc);
    for (; g < ng; g++) r += mn[g] * s[g];
    return r;
}

/* NW weight rows x NA activation rows, SIGNED codes or not: constants
 * after inlining. Unsigned codes (0..31) go straight into the unsigned
 * operand; signed ones take the sign trick. */
AVX2 static inline __attribute__((always_inline)) void tile_avx2_nm(int64_t k, int flags, const gq_wrow *w,
                                                                   const gq_act *a, float *y, int64_t ldy,
                                                                   const int NW, const int NA, const int SIGNED)
{
    __m256 acc[2][4];
    for (int j = 0; j < NW; j++)
        for (int i = 0; i < NA; i++) acc[j][i] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    const int64_t ng = k / GQ_QK;
    for (int64_t g = 0; g < ng; g++) {
        __m256i wq[2], wa[2];
        for (int j = 0; j < NW; j++) {
            wq[j] = _mm256_loadu_si256((const __m256i *)(w[j].q + 32 * g));
            wa[j] = SIGNED ? _mm256_sign_epi8(wq[j], wq[j]) : wq[j];
        }
        for (int i = 0; i < NA; i++) {
            const __m256i aq = _mm256_loadu_si256((const __m256i *)(a[i].q + 32 * g));
            const __m256 da = _mm256_broadcast_ss(a[i].d + g);
            for (int j = 0; j < NW; j++) {
                const __m256i p16 = _mm256_maddubs_epi16(wa[j], SIGNED ? _mm256_sign_epi8(aq, wq[j]) : aq);
                const __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                const __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(w[j].sv + 8 * g), da);
                acc[j][i] = _mm256_fmadd_ps(p, sc, acc[j][i]);
            }
        }
    }
    for (int i = 0; i < NA; i++)
        for (int j = 0; j < NW; j++) {
            float r = hsum256(acc[j][i]);
            if (flags & GQ_TILE_MIN) r += min_term_avx2(ng, w[j].mn, a[i].s);
            y[i * ldy + j] = r;
        }
}

#define DISPATCH_A(FN, TW, S)                                                       \
    switch (ta) {                                                                   \
    case 4: FN(k, flags, w + j, a + i, yt, ldy, TW, 4, S); break;                   \
    case 3: FN(k, flags, w + j, a + i, yt, ldy, TW, 3, S); break;                   \
    case 2: FN(k, flags, w + j, a + i, yt, ldy, TW, 2, S); break;                   \
    default: FN(k, flags, w + j, a + i, yt, ldy, TW, 1, S); break;                  \
    }

AVX2 void gq_tile_avx2(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y,
                       int64_t ldy)
{
    /* 2 x 4 fills the 16 ymm registers; edges take smaller tiles. */
    const int sgn = (flags & GQ_TILE_SIGNED) != 0;
    for (int j = 0; j < nw; j += 2) {
        const int tw = nw - j >= 2 ? 2 : 1;
        for (int i = 0; i < na;) {
            const int ta = na - i >= 4 ? 4 : na - i;
            float *yt = y + i * ldy + j;
            if (tw == 2) {
                if (sgn) DISPATCH_A(tile_avx2_nm, 2, 1) else DISPATCH_A(tile_avx2_nm, 2, 0)
            } else {
                if (sgn) DISPATCH_A(tile_avx2_nm, 1, 1) else DISPATCH_A(tile_avx2_nm, 1, 0)
            }
            i += ta;
        }
    }
}

/* Activation quantization with the reference quantizers' exact float
 * operations, 16 lanes at a time. */
#define AVX512Q __attribute__((target("avx2,fma,avx512f,avx512bw")))

/* ggml's nearest_int on 16 floats: add 1.5 * 2^23, take the mantissa. */
AVX512Q static inline __m512i nearest_int16(__m512 v)
{
    const __m512i bits = _mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(12582912.f)));
    return _mm512_sub_epi32(_mm512_and_si512(bits, _mm512_set1_epi32(0x007fffff)), _mm512_set1_epi32(0x00400000));
}

/* roundf (ties away from zero) of 16 floats, exact: v - trunc(v) is exact. */
AVX512Q static inline __m512i round_away16(__m512 v)
{
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 frac = _mm512_sub_ps(v, t);
    __m512i i = _mm512_cvttps_epi32(t);
    i = _mm512_mask_add_epi32(i, _mm512_cmp_ps_mask(frac, _mm512_set1_ps(0.5f), _CMP_GE_OQ), i, _mm512_set1_epi32(1));
    i = _mm512_mask_sub_epi32(i, _mm512_cmp_ps_mask(frac, _mm512_set1_ps(-0.5f), _CMP_LE_OQ), i, _mm512_set1_epi32(1));
    return i;
}

AVX512Q static inline int hsum_epi32_16(__m512i v) { return _mm512_reduce_add_epi32(v); }

AVX512Q void gq_act_quantize_avx512(int act_type, const float *x, int64_t k, gq_act *a)
{
    if (act_type == GQ_Q8_K) {
        for (int64_t b = 0; b < k / GQ_QK_K; b++) {
            const float *xb = x + b * GQ_QK_K;
            __m512 vmax = _mm512_setzero_ps();
            for (int j = 0; j < GQ_QK_K; j += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(_mm512_loadu_ps(xb + j)));
            const float amax = _mm512_reduce_max_ps(vmax);
            int8_t *q = a->q + b * GQ_QK_K;
            if (amax == 0.0f) {
                memset(q, 0, GQ_QK_K);
                for (int g = 0; g < 8; g++) a->d[b * 8 + g] = a->s[b * 8 + g] = 0;
                if (a->s16)
                    for (int j = 0; j < 16; j++) a->s16[b * 16 + j] = 0;
                continue;
            }
            /* the first element with the largest magnitude gives the sign */
            float max = 0;
            for (int j = 0; j < GQ_QK_K; j += 16) {
                const __mmask16 hit = _mm512_cmp_ps_mask(_mm512_abs_ps(_mm512_loadu_ps(xb + j)),
                                                         _mm512_set1_ps(amax), _CMP_EQ_OQ);
                if (hit) {
                    max = xb[j + __builtin_ctz(hit)];
                    break;
                }
            }
            const float iscale = -127.f / max;
            const __m512 vs = _mm512_set1_ps(iscale);
            int bsum[16];
            for (int j = 0; j < 16; j++) {
                __m512i v = nearest_int16(_mm512_mul_ps(vs, _mm512_loadu_ps(xb + 16 * j)));
                v = _mm512_min_epi32(v, _mm512_set1_epi32(127));
                _mm_storeu_si128((__m128i *)(void *)(q + 16 * j), _mm512_cvtepi32_epi8(v));
                bsum[j] = hsum_epi32_16(v);
            }
            const float d = 1 / iscale;
            for (int g = 0; g < 8; g++) {
                a->d[b * 8 + g] = d;
                a->s[b * 8 + g] = d * (float)(bsum[2 * g] + bsum[2 * g + 1]);
            }
            if (a->s16)
                for (int j = 0; j < 16; j++) a->s16[b * 16 + j] = d * (float)bsum[j];
        }
        return;
    }
    const int q81 = act_type == GQ_Q8_1;
    for (int64_t g = 0; g < k / GQ_QK; g++) {
        const float *xg = x + g * GQ_QK;
        const __m512 x0 = _mm512_loadu_ps(xg), x1 = _mm512_loadu_ps(xg + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
        const float d = amax / 127;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const __m512 vid = _mm512_set1_ps(id);
        const __m512i q0 = round_away16(_mm512_mul_ps(x0, vid)), q1 = round_away16(_mm512_mul_ps(x1, vid));
        _mm_storeu_si128((__m128i *)(void *)(a->q + g * GQ_QK), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128((__m128i *)(void *)(a->q + g * GQ_QK + 16), _mm512_cvtepi32_epi8(q1));
        const int sum = hsum_epi32_16(_mm512_add_epi32(q0, q1));
        const float dh = qtool_f16_to_f32(qtool_f32_to_f16(d));
        a->d[g] = dh;
        a->s[g] = q81 ? qtool_f16_to_f32(qtool_f32_to_f16((float)sum * d)) : dh * (float)sum;
    }
}

/* AVX-512 VNNI, outer-product form: 16 weight rows are interleaved so one
 * 64-byte vector holds 4 consecutive codes of each of the 16 rows; vpdpbusd
 * with 4 activation bytes broadcast adds 64 products into 16 output lanes,
 * no horizontal sums. Per scale sub-group (32 codes, 16 for Q6_K) the int32
 * sums of up to 8 activation rows are converted and scaled once. */
AVX512 static inline __attribute__((always_inline)) void op_tile(int64_t k, const int SG, const uint8_t *wq,
                                                                const float *wsc, const float *wmn,
                                                                const gq_act *a, float *y, int64_t ldy,
                                                                __mmask16 valid, const int MT)
{
    __m512 facc[8];
    for (int m = 0; m < MT; m++) facc[m] = _mm512_setzero_ps();
    const int64_t nsub = k / SG;
    for (int64_t sub = 0; sub < nsub; sub++) {
        __m512i iacc[8];
        for (int m = 0; m < MT; m++) iacc[m] = _mm512_setzero_si512();
        const uint8_t *wsub = wq + sub * SG * 16;
        for (int t = 0; t < SG / 4; t++) {
            const __m512i wv = _mm512_loadu_si512((const void *)(wsub + 64 * t));
            for (int m = 0; m < MT; m++) {
                int32_t a4;
                memcpy(&a4, a[m].q + sub * SG + 4 * t, 4);
                iacc[m] = _mm512_dpbusd_epi32(iacc[m], wv, _mm512_set1_epi32(a4));
            }
        }
        const __m512 sc = _mm512_loadu_ps(wsc + 16 * sub), mn = _mm512_loadu_ps(wmn + 16 * sub);
        for (int m = 0; m < MT; m++) {
            const float da = a[m].d[sub * SG / 32], sa = SG == 32 ? a[m].s[sub] : a[m].s16[sub];
            facc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[m]), _mm512_mul_ps(sc, _mm512_set1_ps(da)), facc[m]);
            facc[m] = _mm512_fmadd_ps(mn, _mm512_set1_ps(sa), facc[m]);
        }
    }
    for (int m = 0; m < MT; m++) _mm512_mask_storeu_ps(y + m * ldy, valid, facc[m]);
}

#define OP_CASES(SGV)                                                                             \
    switch (mt) {                                                                                 \
    case 8: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 8); break;                 \
    case 7: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 7); break;                 \
    case 6: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 6); break;                 \
    case 5: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 5); break;                 \
    case 4: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 4); break;                 \
    case 3: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 3); break;                 \
    case 2: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 2); break;                 \
    default: op_tile(k, SGV, u->q, u->sc, u->mn, a + i, yt, ldy, valid, 1); break;                \
    }

AVX512 void gq_op_matmul_avx512(int64_t k, const gq_unit *u, const gq_act *a, int na, float *y, int64_t ldy)
{
    const __mmask16 valid = (__mmask16)((1u << u->rows) - 1);
    for (int i = 0; i < na; i += 8) {
        const int mt = na - i < 8 ? na - i : 8;
        float *yt = y + i * ldy;
        if (u->sg == 16) OP_CASES(16) else OP_CASES(32)
    }
}

#endif
