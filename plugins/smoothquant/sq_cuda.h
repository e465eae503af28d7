/* C interface of the smoothquant plugin's CUDA code (sq_kernels.cu).
 * Functions return a qtool_status and write a one-line reason into `msg`. */
#ifndef SQ_CUDA_H
#define SQ_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sqcu_layer {
    const int8_t *w;   /* [N, Kp] row-major, zero columns past K */
    const float *ws;   /* [N] weight dequantization scales (absmax / 127) */
    const float *bias; /* [N] or NULL */
    int64_t N, K, Kp;  /* Kp: K rounded up to 16 */
    int static_act;    /* 1: per-tensor activation scale act_scale (codes x * act_inv) */
    float act_scale, act_inv;
    size_t chunk_bytes; /* int32 product rows per GEMM call: at most this many bytes */
} sqcu_layer;

/* The int8 GEMM. FUSED: the tensor-core kernel of plugins/common/int8_gemm
 * with scales and bias in its epilogue (no int32 round trip). CUBLASLT:
 * cuBLASLt's int8 GEMM into int32 row chunks, then an epilogue kernel.
 * BUILTIN: a dp4a kernel, then the same epilogue. */
enum { SQCU_GEMM_FUSED = 0, SQCU_GEMM_CUBLASLT = 1, SQCU_GEMM_BUILTIN = 2 };

/* Scratch for M input rows: int8 activations, row scales and, except for
 * FUSED, the int32 product of one row chunk. */
size_t sqcu_workspace_bytes(const sqcu_layer *L, int64_t M, int gemm);
size_t sqcu_lt_workspace_bytes(void);

int sqcu_set_device(int device, char *msg, size_t msg_len);
/* cuBLASLt handle plus a cache of GEMM plans by shape. */
int sqcu_lt_create(void **ctx, char *msg, size_t msg_len);
void sqcu_lt_destroy(void *ctx);

/* kind 0: host to device, 1: device to host; waits for `stream` only. */
int sqcu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len);
/* rows x cols bytes between pitched buffers (kind as above). */
int sqcu_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t cols, size_t rows, int kind,
                 void *stream, char *msg, size_t msg_len);

/* y[M, N] = W8A8(x[M, K]): per-token (or static per-tensor) int8
 * activations, int8 GEMM with int32 accumulation along `gemm` (CUBLASLT
 * falls back to the dp4a kernel where cuBLASLt has no algorithm), scales
 * and bias. x and y are F16 (is_bf16 0) or BF16 on the device. FUSED
 * returns QTOOL_ERR_UNSUPPORTED when the fused kernel cannot take the
 * call; the caller then retries with CUBLASLT. */
int sqcu_matmul(const sqcu_layer *L, const void *x, void *y, int64_t M, int is_bf16, void *ws, size_t ws_bytes,
                void *lt_ctx, void *lt_ws, size_t lt_ws_bytes, int gemm, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
