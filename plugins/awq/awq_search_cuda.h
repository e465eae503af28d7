/* The AWQ searches on a CUDA device. awq.c holds the CPU versions, which
 * define the math; these compute the same quantities with float32 cuBLAS
 * GEMMs and float64 sums in another order, so errors agree to rounding and
 * the chosen candidate differs only where two candidates nearly tie.
 * Host arrays in, host results out; device memory lives for one call. All
 * return a qtool_status and write a one-line reason into `msg`. */
#ifndef AWQ_SEARCH_CUDA_H
#define AWQ_SEARCH_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int awqcu_blas_create(int device, void **handle, char *msg, size_t msg_len);
void awqcu_blas_destroy(void *handle);

/* err[c] = || X (W - Q(W diag(s_c)) diag(s_c)^-1)^T ||_F^2 for each
 * candidate scale s_c = S + c * K: W [N, K], X [T, K] (sample rows),
 * groups of G along K (G % 32 == 0, K % G == 0). */
int awqcu_scale_errors(void *blas, const float *W, const float *X, const float *S, int n_cand, int64_t N, int64_t K,
                       int64_t T, int64_t G, double *err, void *stream, char *msg, size_t msg_len);

/* Clips W [N, K] (already W diag(s)) in place: per row and group, the bound
 * amax * (1 - i / grid), i < steps, whose error d^T (X_g^T X_g) d on the
 * sample rows of X diag(s)^-1 is least. G <= 1024. */
int awqcu_clip(void *blas, float *W, const float *X, const float *s, int64_t N, int64_t K, int64_t T, int64_t G,
               int steps, int grid, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
