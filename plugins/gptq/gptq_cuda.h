/* C interface of gptq's device code (gptq_cuda.cu): the Hessian sum on the
 * GPU. Every function returns a qtool_status and writes a one-line reason
 * into `msg` on failure. */
#ifndef GPTQ_CUDA_H
#define GPTQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int gpcu_blas_create(void **handle, char *msg, size_t msg_len);
void gpcu_blas_destroy(void *handle);

/* Rows of x the accumulation stages at a time, and the device bytes that
 * staging needs for K columns. */
int64_t gpcu_chunk_rows(void);
size_t gpcu_staging_bytes(int64_t K);

/* dH (double [K, K] on the device, symmetric, both triangles) = beta * dH
 * + alpha * x^T x for x [T, K] float on the host. Waits for `stream`
 * before returning (x is borrowed). */
int gpcu_syrk(void *blas, double *dH, int64_t K, const float *x, int64_t T, double alpha, double beta, void *staging,
              void *stream, char *msg, size_t msg_len);

int gpcu_zero(void *dst, size_t bytes, void *stream, char *msg, size_t msg_len);
/* Device to host, waits for `stream`. */
int gpcu_download(void *dst, const void *src, size_t bytes, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
