/* C interface of the nf4 plugin's CUDA code (nf4_kernels.cu). Every
 * function returns a qtool_status and writes a one-line reason into `msg`
 * on failure. Pointers in nf4cu_layer are device pointers. */
#ifndef NF4_CUDA_H
#define NF4_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct nf4cu_layer {
    const uint8_t *codes;         /* (n + 1) / 2 bytes, high nibble = even element */
    const float *absmax;          /* [nblocks] when not nested */
    const uint8_t *qabsmax;       /* [nblocks] dynamic-map codes when nested */
    const float *nested_absmax;   /* [ceil(nblocks / 256)] */
    const float *nested_map;      /* [256] */
    const float *bias;            /* [N] or NULL */
    float offset;                 /* nested offset */
    int32_t quant_type;           /* NF4_TYPE_* */
    int32_t blocksize;
    int32_t nested;
    int64_t N, K;
} nf4cu_layer;

/* Which large-batch kernel to use. */
enum { NF4CU_PATH_AUTO = 0, NF4CU_PATH_GEMV = 1, NF4CU_PATH_DEQUANT_GEMM = 2 };

/* Scratch bytes nf4cu_matmul needs for M rows (0 for the GEMV path). */
size_t nf4cu_workspace_bytes(const nf4cu_layer *L, int64_t M, int path);
/* Bytes of cuBLASLt workspace to hand to nf4cu_matmul. */
size_t nf4cu_lt_workspace_bytes(void);

int nf4cu_set_device(int device, char *msg, size_t msg_len);
int nf4cu_lt_create(void **handle, char *msg, size_t msg_len);
void nf4cu_lt_destroy(void *handle);

/* Copies on `stream` and waits for that stream only. kind 0: host to
 * device, 1: device to host. */
int nf4cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len);

/* y[M, N] = x[M, K] @ dequant(W)^T + bias; x and y F16 (is_bf16 = 0) or
 * BF16 (1), on the device; enqueued on `stream`. */
int nf4cu_matmul(const nf4cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                 size_t ws_bytes, void *lt_handle, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                 size_t msg_len);

/* Dequantizes the whole weight into out[N*K] (F16 or BF16), for tests. */
int nf4cu_dequantize(const nf4cu_layer *L, void *out, int is_bf16, void *stream, char *msg, size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
