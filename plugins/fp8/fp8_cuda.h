/* C interface of the fp8 plugin's CUDA code (fp8_kernels.cu). Functions
 * return a qtool_status and write a one-line reason into `msg`. */
#ifndef FP8_CUDA_H
#define FP8_CUDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct f8cu_layer {
    const uint8_t *w;      /* [Np, Kp] E4M3 codes, zero rows past N and columns past K */
    const float *ws;       /* [Np] weight dequantization scales (absmax / 448), zero past N */
    const float *bias;     /* [N] F32, or NULL */
    const void *bias_f16;  /* [N] the bias as F16 (cuBLASLt's bias epilogue), or NULL */
    const void *bias_bf16; /* [N] as BF16, or NULL */
    int64_t N, Np, K, Kp;  /* Np, Kp: multiples of 16 (FP8 tensor-core GEMM) */
    int static_act;        /* 1: one activation scale act_scale (codes of x * act_inv) */
    float act_scale, act_inv;
    size_t chunk_bytes; /* fp32 product rows per GEMM call (epilogue path): at most this many bytes */
} f8cu_layer;

/* How the scales are applied. OUTER: cuBLASLt multiplies by the per-token
 * and per-channel vectors itself (outer-vector scaling, CC >= 9.0) and adds
 * the bias, writing fp16/bf16 directly. EPILOGUE: cuBLASLt writes the raw
 * fp32 product of a row chunk and a kernel of ours scales it. */
enum { F8CU_OUTER = 0, F8CU_EPILOGUE = 1 };

size_t f8cu_workspace_bytes(const f8cu_layer *L, int64_t M, int path);
size_t f8cu_lt_workspace_bytes(void);

int f8cu_set_device(int device, char *msg, size_t msg_len);
/* Compute capability of `device` as major * 10 + minor. */
int f8cu_device_cc(int device, int *cc, char *msg, size_t msg_len);
int f8cu_lt_create(void **ctx, char *msg, size_t msg_len);
void f8cu_lt_destroy(void *ctx);

int f8cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len);

/* y[M, N] = fp8 W8A8 of x[M, K] along `path`. Returns QTOOL_ERR_UNSUPPORTED
 * (and nothing is left half-done that matters) when cuBLASLt refuses the
 * OUTER form; the caller then retries with EPILOGUE. */
int f8cu_matmul(const f8cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                size_t ws_bytes, void *lt_ctx, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                size_t msg_len);

#ifdef __cplusplus
}
#endif
#endif
