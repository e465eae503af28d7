/* CUDA kernels of the fp16 plugin behind a C interface. Dtypes are
 * qtool_dtype codes (F32, F16, BF16); the return value is a cudaError_t. */
#ifndef FP16_KERNELS_H
#define FP16_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[m, n] = x[m, k] W[n, k]^T (+ bias[n]) (+ y[m, n] when `accumulate`), y
 * in x's dtype, float32 accumulation. A plain tiled kernel: used where
 * cuBLASLt has no algorithm (activation dtype differs from the stored
 * weight dtype, unusual alignment). */
__attribute__((visibility("hidden"))) int fp16_launch_gemm(const void *x, int x_dtype, const void *w,
                                                           int w_dtype, const void *bias, int bias_dtype,
                                                           void *y, int64_t m, int64_t n, int64_t k,
                                                           int accumulate, void *stream);

/* y[r, j] = act(z[r, 2j]) * z[r, 2j + 1] for r < m (at most 65535), j < half;
 * act from a QTOOL_EPILOGUE_*_GLU, in float32. */
__attribute__((visibility("hidden"))) int fp16_launch_glu(const void *z, int64_t ldz, void *y, int64_t ldy,
                                                          int64_t m, int64_t half, int epilogue, int dtype,
                                                          void *stream);

/* y[m, n] += bias[n]. */
__attribute__((visibility("hidden"))) int fp16_launch_add_bias(void *y, int y_dtype, const void *bias,
                                                               int bias_dtype, int64_t m, int64_t n,
                                                               void *stream);

#ifdef __cplusplus
}
#endif
#endif
