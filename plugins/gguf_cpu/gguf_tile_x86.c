/* x86 tile kernels: AVX2+FMA and AVX-512 (BW, VL, VNNI), compiled with
 * target attributes and chosen at run time (gq_select_tile), so one build
 * runs on any x86-64 CPU.
 *
 * Both compute, for a tile of weight rows x activation rows, per group of
 * 32 codes and per 4-code lane: the int8 dot product, scaled by the
 * weight's lane scale times the activation's group scale, accumulated in
 * float; the sum term (zero points, minima) is added at the end. Signed x
 * signed int8 products use the sign trick: |w| * (a with w's sign), so
 * the unsigned x signed instructions apply (|w| <= 127, |a| <= 127: no
 * 16-bit saturation). */
#include "gguf_quants.h"

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

/* AVX-512: two groups of 32 per 512-bit register; VNNI's vpdpbusd does the
 * unsigned x signed products and their 4-way sums in one instruction. */
AVX512 static inline __attribute__((always_inline)) void tile_avx512_nm(int64_t k, int flags, const gq_wrow *w,
                                                                       const gq_act *a, float *y, int64_t ldy,
                                                                       const int NW, const int NA, const int SIGNED)
{
    __m512 acc[4][4];
    for (int j = 0; j < NW; j++)
        for (int i = 0; i < NA; i++) acc[j][i] = _mm512_setzero_ps();
    const int64_t ng = k / GQ_QK;
    int64_t g = 0;
    for (; g + 2 <= ng; g += 2) {
        __m512i wa[4];
        __mmask64 neg[4];
        for (int j = 0; j < NW; j++) {
            const __m512i wq = _mm512_loadu_si512((const void *)(w[j].q + 32 * g));
            if (SIGNED) {
                neg[j] = _mm512_movepi8_mask(wq);
                wa[j] = _mm512_abs_epi8(wq);
            } else {
                wa[j] = wq;
            }
        }
        for (int i = 0; i < NA; i++) {
            const __m512i aq = _mm512_loadu_si512((const void *)(a[i].q + 32 * g));
            const __m512 da = _mm512_castpd_ps(_mm512_insertf64x4(
                _mm512_castps_pd(_mm512_castps256_ps512(_mm256_broadcast_ss(a[i].d + g))),
                _mm256_castps_pd(_mm256_broadcast_ss(a[i].d + g + 1)), 1));
            for (int j = 0; j < NW; j++) {
                const __m512i as = SIGNED ? _mm512_mask_sub_epi8(aq, neg[j], _mm512_setzero_si512(), aq) : aq;
                const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), wa[j], as));
                acc[j][i] = _mm512_fmadd_ps(p, _mm512_mul_ps(_mm512_loadu_ps(w[j].sv + 8 * g), da), acc[j][i]);
            }
        }
    }
    float tail[4][4] = {{0}};
    if (g < ng) { /* odd group count: the last group with 256-bit VNNI */
        for (int j = 0; j < NW; j++) {
            const __m256i wq = _mm256_loadu_si256((const __m256i *)(w[j].q + 32 * g));
            const __m256i wa = SIGNED ? _mm256_abs_epi8(wq) : wq;
            const __m256 sv = _mm256_loadu_ps(w[j].sv + 8 * g);
            for (int i = 0; i < NA; i++) {
                const __m256i aq = _mm256_loadu_si256((const __m256i *)(a[i].q + 32 * g));
                const __m256i as = SIGNED ? _mm256_sign_epi8(aq, wq) : aq;
                const __m256 p = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), wa, as));
                tail[j][i] = hsum256(_mm256_mul_ps(p, _mm256_mul_ps(sv, _mm256_broadcast_ss(a[i].d + g))));
            }
        }
    }
    for (int i = 0; i < NA; i++)
        for (int j = 0; j < NW; j++) {
            float r = _mm512_reduce_add_ps(acc[j][i]) + tail[j][i];
            if (flags & GQ_TILE_MIN) r += min_term_avx2(ng, w[j].mn, a[i].s);
            y[i * ldy + j] = r;
        }
}

AVX512 void gq_tile_avx512(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y,
                           int64_t ldy)
{
    const int sgn = (flags & GQ_TILE_SIGNED) != 0;
    for (int j = 0; j < nw;) {
        const int tw = nw - j >= 4 ? 4 : nw - j;
        for (int i = 0; i < na;) {
            const int ta = na - i >= 4 ? 4 : na - i;
            float *yt = y + i * ldy + j;
            switch (tw) {
            case 4: if (sgn) DISPATCH_A(tile_avx512_nm, 4, 1) else DISPATCH_A(tile_avx512_nm, 4, 0) break;
            case 3: if (sgn) DISPATCH_A(tile_avx512_nm, 3, 1) else DISPATCH_A(tile_avx512_nm, 3, 0) break;
            case 2: if (sgn) DISPATCH_A(tile_avx512_nm, 2, 1) else DISPATCH_A(tile_avx512_nm, 2, 0) break;
            default: if (sgn) DISPATCH_A(tile_avx512_nm, 1, 1) else DISPATCH_A(tile_avx512_nm, 1, 0) break;
            }
            i += ta;
        }
        j += tw;
    }
}

#endif
