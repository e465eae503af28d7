#include "int4g_dense.h"

#include <string.h>

/* Four doubles or eight floats: one AVX register, two SSE registers. */
typedef double v4d __attribute__((vector_size(32)));
typedef float v8f __attribute__((vector_size(32)));

/* The micro-kernel computes a 4 x 2 tile of dot products along p, vector
 * lanes over p; edges fall back to a 1 x 1 tile. Lane sums are reduced in
 * a fixed order, so every build gives the same result. */
#define DEFINE_GEMM_NT(NAME, T, VT, VW, ATTR)                                                                   \
    ATTR static inline T NAME##_hsum(const VT *v)                                                               \
    {                                                                                                           \
        T s = 0;                                                                                                \
        for (int l = 0; l < VW; l++) s += (*v)[l];                                                              \
        return s;                                                                                               \
    }                                                                                                           \
    ATTR static void NAME(int64_t M, int64_t N, int64_t P, T alpha, const T *A, int64_t lda, const T *B,        \
                          int64_t ldb, T *C, int64_t ldc)                                                       \
    {                                                                                                           \
        const int64_t Pv = P - P % VW;                                                                          \
        int64_t i = 0;                                                                                          \
        for (; i + 4 <= M; i += 4) {                                                                            \
            const T *a0 = A + i * lda, *a1 = a0 + lda, *a2 = a1 + lda, *a3 = a2 + lda;                          \
            int64_t j = 0;                                                                                      \
            for (; j + 2 <= N; j += 2) {                                                                        \
                const T *b0 = B + j * ldb, *b1 = b0 + ldb;                                                      \
                VT c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};       \
                for (int64_t p = 0; p < Pv; p += VW) {                                                          \
                    VT x0, x1, x2, x3, y0, y1;                                                                  \
                    memcpy(&y0, b0 + p, sizeof y0);                                                             \
                    memcpy(&y1, b1 + p, sizeof y1);                                                             \
                    memcpy(&x0, a0 + p, sizeof x0);                                                             \
                    memcpy(&x1, a1 + p, sizeof x1);                                                             \
                    c00 += x0 * y0;                                                                             \
                    c01 += x0 * y1;                                                                             \
                    c10 += x1 * y0;                                                                             \
                    c11 += x1 * y1;                                                                             \
                    memcpy(&x2, a2 + p, sizeof x2);                                                             \
                    memcpy(&x3, a3 + p, sizeof x3);                                                             \
                    c20 += x2 * y0;                                                                             \
                    c21 += x2 * y1;                                                                             \
                    c30 += x3 * y0;                                                                             \
                    c31 += x3 * y1;                                                                             \
                }                                                                                               \
                T s[4][2] = {{NAME##_hsum(&c00), NAME##_hsum(&c01)},                                              \
                             {NAME##_hsum(&c10), NAME##_hsum(&c11)},                                              \
                             {NAME##_hsum(&c20), NAME##_hsum(&c21)},                                              \
                             {NAME##_hsum(&c30), NAME##_hsum(&c31)}};                                             \
                for (int64_t p = Pv; p < P; p++) {                                                              \
                    s[0][0] += a0[p] * b0[p];                                                                   \
                    s[0][1] += a0[p] * b1[p];                                                                   \
                    s[1][0] += a1[p] * b0[p];                                                                   \
                    s[1][1] += a1[p] * b1[p];                                                                   \
                    s[2][0] += a2[p] * b0[p];                                                                   \
                    s[2][1] += a2[p] * b1[p];                                                                   \
                    s[3][0] += a3[p] * b0[p];                                                                   \
                    s[3][1] += a3[p] * b1[p];                                                                   \
                }                                                                                               \
                for (int r = 0; r < 4; r++) {                                                                   \
                    C[(i + r) * ldc + j] += alpha * s[r][0];                                                    \
                    C[(i + r) * ldc + j + 1] += alpha * s[r][1];                                                \
                }                                                                                               \
            }                                                                                                   \
            for (; j < N; j++)                                                                                  \
                for (int r = 0; r < 4; r++) {                                                                   \
                    const T *ar = A + (i + r) * lda, *bj = B + j * ldb;                                         \
                    VT c = {0};                                                                                 \
                    for (int64_t p = 0; p < Pv; p += VW) {                                                      \
                        VT x, y;                                                                                \
                        memcpy(&x, ar + p, sizeof x);                                                           \
                        memcpy(&y, bj + p, sizeof y);                                                           \
                        c += x * y;                                                                             \
                    }                                                                                           \
                    T s = NAME##_hsum(&c);                                                                       \
                    for (int64_t p = Pv; p < P; p++) s += ar[p] * bj[p];                                        \
                    C[(i + r) * ldc + j] += alpha * s;                                                          \
                }                                                                                               \
        }                                                                                                       \
        for (; i < M; i++)                                                                                      \
            for (int64_t j = 0; j < N; j++) {                                                                   \
                const T *ar = A + i * lda, *bj = B + j * ldb;                                                   \
                VT c = {0};                                                                                     \
                for (int64_t p = 0; p < Pv; p += VW) {                                                          \
                    VT x, y;                                                                                    \
                    memcpy(&x, ar + p, sizeof x);                                                               \
                    memcpy(&y, bj + p, sizeof y);                                                               \
                    c += x * y;                                                                                 \
                }                                                                                               \
                T s = NAME##_hsum(&c);                                                                           \
                for (int64_t p = Pv; p < P; p++) s += ar[p] * bj[p];                                            \
                C[i * ldc + j] += alpha * s;                                                                    \
            }                                                                                                   \
    }

DEFINE_GEMM_NT(gemm_f64_generic, double, v4d, 4, )
DEFINE_GEMM_NT(gemm_f32_generic, float, v8f, 8, )

#if defined(__x86_64__) && defined(__GNUC__)
#define AVX2_ATTR __attribute__((target("avx2,fma")))
DEFINE_GEMM_NT(gemm_f64_avx2, double, v4d, 4, AVX2_ATTR)
DEFINE_GEMM_NT(gemm_f32_avx2, float, v8f, 8, AVX2_ATTR)

static int have_avx2(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}
#endif

void int4g_gemm_nt_f64(int64_t M, int64_t N, int64_t P, double alpha, const double *A, int64_t lda, const double *B,
                       int64_t ldb, double *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        gemm_f64_avx2(M, N, P, alpha, A, lda, B, ldb, C, ldc);
        return;
    }
#endif
    gemm_f64_generic(M, N, P, alpha, A, lda, B, ldb, C, ldc);
}

void int4g_gemm_nt_f32(int64_t M, int64_t N, int64_t P, float alpha, const float *A, int64_t lda, const float *B,
                       int64_t ldb, float *C, int64_t ldc)
{
    if (M <= 0 || N <= 0) return;
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) {
        gemm_f32_avx2(M, N, P, alpha, A, lda, B, ldb, C, ldc);
        return;
    }
#endif
    gemm_f32_generic(M, N, P, alpha, A, lda, B, ldb, C, ldc);
}

float int4g_dot_f32(const float *a, const float *b, int64_t n)
{
    float c = 0;
    int4g_gemm_nt_f32(1, 1, n, 1.0f, a, n, b, n, &c, 1);
    return c;
}
