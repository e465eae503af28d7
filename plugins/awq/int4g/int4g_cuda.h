/* C interface of the int4 group-quantized CUDA kernels (int4g_kernels.cu).
 * Every function returns a qtool_status and writes a one-line reason into
 * `msg` on failure. Pointers in i4cu_layer are device pointers; the layout
 * is int4g.h's. */
#ifndef INT4G_CUDA_H
#define INT4G_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel choice for CUDA (option cuda_kernel). */
enum { INT4G_PATH_AUTO = 0, INT4G_PATH_GEMV = 1, INT4G_PATH_DEQUANT_GEMM = 2 };

typedef struct i4cu_layer {
    const uint32_t *qw;     /* [N, K/8] */
    const uint16_t *scales; /* fp16 [N, ngroups] */
    const uint8_t *zeros;   /* [N, ngroups] */
    const int32_t *g_idx;   /* [K] or NULL (then G % 32 == 0) */
    const float *bias;      /* [N] or NULL */
    int64_t N, K, G, ngroups;
} i4cu_layer;

/* Scratch bytes i4cu_matmul needs for M rows on `path` (INT4G_PATH_*). */
size_t i4cu_workspace_bytes(const i4cu_layer *L, int64_t M, int path);
size_t i4cu_lt_workspace_bytes(void);

int i4cu_set_device(int device, char *msg, size_t msg_len);
int i4cu_lt_create(void **handle, char *msg, size_t msg_len);
void i4cu_lt_destroy(void *handle);

/* Copies on `stream` and waits for that stream. kind 0: host to device,
 * 1: device to host. */
int i4cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len);

/* y[M, N] = x[M, K] @ W_hat^T + bias; x, y F16 (is_bf16 = 0) or BF16. */
int i4cu_matmul(const i4cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                size_t ws_bytes, void *lt_handle, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                size_t msg_len);

/* W_hat [N, K] as F16/BF16 into out (device), for tests. */
int i4cu_dequantize(const i4cu_layer *L, void *out, int is_bf16, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
