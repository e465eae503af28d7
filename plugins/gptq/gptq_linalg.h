/* Dense double-precision linear algebra GPTQ needs on the CPU, blocked and
 * spread over the host's threads: the Hessian sum X^T X, a Cholesky
 * factorisation and the upper Cholesky factor of the inverse. Matrices are
 * K x K, row-major. */
#ifndef GPTQ_LINALG_H
#define GPTQ_LINALG_H

#include <stdint.h>

#include "../awq/int4g/int4g.h"

/* H[i*K + j] += alpha * sum_t x[t*K + i] * x[t*K + j] for j >= i (upper
 * triangle only). x is [T, K] float. Returns QTOOL_OK or OUT_OF_MEMORY. */
int gptq_syrk_upper(const int4g_ctx *c, double *H, int64_t K, const float *x, int64_t T, double alpha);

/* In place: A (symmetric, lower triangle read) becomes its lower Cholesky
 * factor L (A = L L^T); the strict upper triangle is set to 0. Returns 0,
 * or -1 when A is not positive definite (A is then garbage). */
int gptq_cholesky_lower(const int4g_ctx *c, double *A, int64_t K);

/* Y = (L^-1)^T for lower triangular L (upper triangular result; the strict
 * lower triangle of Y is 0). */
int gptq_tri_inverse_t(const int4g_ctx *c, const double *L, double *Y, int64_t K);

/* Given H (symmetric positive definite, full, destroyed), writes Ut = U^T
 * where U is the upper Cholesky factor of H^-1 (H^-1 = U^T U), into Ut
 * (lower triangular). Works through the reversed matrix: J H J = L L^T
 * gives H = R R^T with R = J L J upper, so U = R^-1 = J L^-1 J. Returns 0,
 * -1 when H is not positive definite, or a qtool_status. */
int gptq_inverse_cholesky_t(const int4g_ctx *c, double *H, double *Ut, int64_t K);

#endif
