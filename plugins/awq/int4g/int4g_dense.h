/* Dense kernels the int4 plugins need on the CPU: C += alpha * A B^T with
 * both operands stored along the summed dimension ("NT"), in float and in
 * double, and a float dot product. Serial; callers split the work over the
 * host's threads. An AVX2 version is chosen at run time where the CPU has
 * it; without FMA contraction both versions round the same way. */
#ifndef INT4G_DENSE_H
#define INT4G_DENSE_H

#include <stdint.h>

/* C[i*ldc + j] += alpha * sum_p A[i*lda + p] * B[j*ldb + p],
 * 0 <= i < M, 0 <= j < N, 0 <= p < P. */
void int4g_gemm_nt_f64(int64_t M, int64_t N, int64_t P, double alpha, const double *A, int64_t lda, const double *B,
                       int64_t ldb, double *C, int64_t ldc);
void int4g_gemm_nt_f32(int64_t M, int64_t N, int64_t P, float alpha, const float *A, int64_t lda, const float *B,
                       int64_t ldb, float *C, int64_t ldc);

float int4g_dot_f32(const float *a, const float *b, int64_t n);

#endif
