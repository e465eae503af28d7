/* C interface of the bnb_int8 plugin's CUDA code (bnb_int8_kernels.cu).
 * Functions return a qtool_status and write a one-line reason into `msg`. */
#ifndef BNB_INT8_CUDA_H
#define BNB_INT8_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The int8 GEMM: the fused tensor-core kernel of plugins/common/int8_gemm
 * (needs Kp % 16 == 0), the dp4a kernel or cuBLASLt (both write the int32
 * product, then an epilogue kernel applies scales, outliers and bias). The
 * values are the indices of the `gemm` option's choices. */
enum { I8CU_GEMM_FUSED = 0, I8CU_GEMM_DP4A = 1, I8CU_GEMM_CUBLASLT = 2 };

typedef struct i8cu_layer {
    const int8_t *w;    /* [N, Kp] row-major, zero columns past K; Kp % 16 == 0 */
    const float *scb;   /* [N] */
    const float *bias;  /* [N] or NULL */
    int64_t N, K, Kp;
    size_t chunk_bytes; /* int32 product rows per GEMM call: at most this many bytes */
} i8cu_layer;

/* Scratch for M input rows: int8 activations, row scales and, except for
 * the fused GEMM, the int32 product (computed in row chunks); and the
 * outlier-column buffers. */
size_t i8cu_workspace_bytes(const i8cu_layer *L, int64_t M, int gemm);
size_t i8cu_outlier_bytes(const i8cu_layer *L);
size_t i8cu_lt_workspace_bytes(void);

int i8cu_set_device(int device, char *msg, size_t msg_len);
int i8cu_lt_create(void **handle, char *msg, size_t msg_len);
void i8cu_lt_destroy(void *handle);

/* kind 0: host to device, 1: device to host; waits for `stream` only. */
int i8cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len);
/* rows x cols bytes between pitched buffers (device <-> host, kind as above). */
int i8cu_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t cols, size_t rows, int kind,
                 void *stream, char *msg, size_t msg_len);

/* y[M, N] = LLM.int8(x[M, K]) with outlier decomposition at `threshold`
 * (0 disables). x and y F16 (is_bf16 = 0) or BF16 on the device. When
 * outliers_fresh is 1 the outlier buffer was just allocated and is cleared
 * first. gemm: I8CU_GEMM_*; cuBLASLt needs lt_handle and falls back to
 * dp4a for shapes it has no algorithm for. */
int i8cu_matmul(const i8cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, float threshold, void *ws,
                size_t ws_bytes, void *outliers, size_t outlier_bytes, int outliers_fresh, void *lt_handle,
                void *lt_ws, size_t lt_ws_bytes, int gemm, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
