/* C interface of gptq's device code (gptq_cuda.cu): the Hessian sum and
 * GPTQ itself on the GPU. Every function returns a qtool_status and writes
 * a one-line reason into `msg` on failure. */
#ifndef GPTQ_CUDA_H
#define GPTQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

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

/* ------------------------------------------------------------ pack */

/* cuSOLVER and cuBLAS handles for gpcu_pack_*. */
int gpcu_solver_create(void **solver, char *msg, size_t msg_len);
void gpcu_solver_destroy(void *solver);

/* GPTQ of one layer (N outputs, K inputs, groups of G) from the device
 * Hessian dH ([K, K], symmetric), all on the host's stream. Call, in this
 * order: begin, diag, weights, (offdiag_corr), factor (again with more
 * dampening while it reports not_pd), quantize; end in every case. */
typedef struct gpcu_pack gpcu_pack;

/* Device scratch (about K*K + 10*N*K bytes) through the host's accounted
 * allocator; QTOOL_ERR_OUT_OF_MEMORY when the device has no room. */
int gpcu_pack_begin(void *solver, const qtool_host_services *h, const double *dH, int64_t N, int64_t K, int64_t G,
                    gpcu_pack **out, char *msg, size_t msg_len);
void gpcu_pack_end(gpcu_pack *pk);

/* H's diagonal into diag (host [K]). */
int gpcu_pack_diag(gpcu_pack *pk, double *diag, char *msg, size_t msg_len);

/* The weights w (host [N, K], F32/F16/BF16) as double, columns in the
 * processing order perm (host [K]: processing position -> input column),
 * inputs with dead[k] != 0 set to 0; with static_groups, each group's
 * parameters from those weights. */
int gpcu_pack_weights(gpcu_pack *pk, const void *w, int dtype, const int64_t *perm, const unsigned char *dead, int sym,
                      int static_groups, char *msg, size_t msg_len);

/* *sum = sum over i < k with H_ii > 0 and H_kk > 0 of 2 H_ik^2 / (H_ii H_kk)
 * (the off-diagonal part of tr(R^2) for the correlation matrix R). */
int gpcu_pack_offdiag_corr(gpcu_pack *pk, double *sum, char *msg, size_t msg_len);

/* Hp = H[perm][:, perm] with the off-diagonal times offdiag_scale and the
 * diagonal diag (host [K], processing order); U = the upper Cholesky
 * factor of Hp^-1, in double. *not_pd = 1 (and U undefined) when Hp is not
 * positive definite. */
int gpcu_pack_factor(gpcu_pack *pk, const double *diag, double offdiag_scale, int *not_pd, char *msg, size_t msg_len);

/* U ([K, K] row-major, upper; zeros below the diagonal) into host memory. */
int gpcu_pack_factor_download(gpcu_pack *pk, double *U, char *msg, size_t msg_len);

/* The column loop: codes into qw (host [N, K/8], int4g.h's layout), the
 * group parameters into scales and zeros (host [N, K/G]). */
int gpcu_pack_quantize(gpcu_pack *pk, int sym, int static_groups, uint32_t *qw, uint16_t *scales, uint8_t *zeros,
                       char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
