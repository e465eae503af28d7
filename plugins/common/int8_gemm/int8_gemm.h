/* int8 x int8 GEMM on the CUDA tensor cores with the dequantization fused
 * into its epilogue, for the W8A8 plugins (bnb_int8, smoothquant).
 *
 *   acc[m, n] = sum_k A[m, k] * B[n, k]                 exact int32
 *   D[m, n]   = ((acc * row_scale[m]) * col_scale[n]) * alpha + bias[n]
 *
 * A [M, K] int8 row-major (activations), B [N, K] int8 row-major (weights,
 * i.e. a TN product), D [M, N] fp16 or bf16 row-major. The epilogue runs in
 * fp32 in the order written above and rounds once to the 16-bit output.
 *
 * Requirements (checked; a violation returns QTOOL_ERR_INVALID_ARGUMENT):
 *   - K % 16 == 0, lda % 16 == 0, ldb % 16 == 0 and A, B 16-byte aligned:
 *     tiles are fetched in 16-byte pieces. Plugins pad K with zero columns
 *     in both operands at pack time (zeros add nothing to the sum).
 *   - The int32 sums must not overflow: guaranteed for K <= 133152 with
 *     codes in [-127, 127] (127^2 * 133152 < 2^31); beyond that the caller
 *     vouches for its data, as with any int32-accumulating GEMM.
 *   - M, N >= 1, any size; edges are predicated. D needs only 2-byte
 *     alignment (16-byte stores are used where row starts allow them).
 *
 * Device code: on sm_90a, CUTLASS's warp-specialized TMA kernels (when
 * the build found CUTLASS) or the library's own wgmma kernel for large
 * problems; sm_80
 * and newer use mma.sync m16n8k32 (IMMA) fed by a multi-stage cp.async
 * pipeline; sm_75 runs the same kernels with m8n8k16 IMMA and plain loads.
 * Nothing waits for the host; work goes on `stream`.
 *
 * Functions return 0 or a qtool_status (QTOOL_ERR_*), with a one-line
 * reason in `msg` when msg_len > 0. */
#ifndef QT_INT8_GEMM_H
#define QT_INT8_GEMM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kernel shapes; QT_I8GEMM_AUTO picks one from M, N, K and the device.
 * The others exist for tests and benchmarks. */
typedef enum qt_i8gemm_config {
    QT_I8GEMM_AUTO = 0,
    QT_I8GEMM_128x256 = 1, /* 8 warps, 64x64 warp tiles, 4 stages of K 64 */
    QT_I8GEMM_128x128 = 2, /* 4 warps, 64x64 warp tiles, 4 stages of K 64 */
    QT_I8GEMM_64x128 = 3,  /* 4 warps, 32x64 warp tiles, 3 stages of K 64 */
    QT_I8GEMM_SKINNY = 4,  /* M <= 64: register-only, K split over 8 warps */
    QT_I8GEMM_64x64 = 5,   /* 4 warps, 32x32 warp tiles, 2 stages (fits sm_75's 64 KB) */
    QT_I8GEMM_WGMMA = 6,   /* sm_90a only: 2 warpgroups of wgmma m64n256k32, 3 stages of K 128 */
    /* sm_90a, built with CUTLASS: warp-specialized TMA kernels, persistent,
     * in clusters of two CTAs. They take no outlier columns and no broadcast row
     * scale, and need D 16-byte aligned with ldd % 8 == 0. */
    QT_I8GEMM_TMA_PINGPONG = 7,    /* 128x128x128 tiles, two consumer warpgroups in turn; clusters 2x1 */
    QT_I8GEMM_TMA_COOPERATIVE = 8, /* 256x128x128 tiles, two consumer warpgroups together; clusters 1x2 */
    QT_I8GEMM_CONFIG_COUNT
} qt_i8gemm_config;

typedef struct qt_i8gemm_args {
    const int8_t *A; /* [M, lda] */
    const int8_t *B; /* [N, ldb] */
    int64_t M, N, K;
    int64_t lda, ldb, ldd; /* 0: K, K and N */
    /* Scales, fp32 on the device. row_scale: [M], or one value used for
     * every row when row_scale_broadcast is 1, or NULL for 1. col_scale:
     * [N] or NULL for 1. */
    const float *row_scale;
    int32_t row_scale_broadcast;
    const float *col_scale;
    float alpha;
    const float *bias; /* [N] fp32 or NULL */
    void *D;           /* [M, ldd] fp16 or bf16 */
    int32_t d_is_bf16;
    /* LLM.int8 outlier columns (optional; outlier_count NULL disables).
     * The columns cols[0 .. *count) of K are taken out of the int8 product
     * (their exact A*B contribution is subtracted from acc) and computed in
     * fp32 instead:
     *   D += sum_j x[m, c_j] * (((float)B[n, c_j] * col_scale[n]) * outlier_w_scale)
     * before the bias. `count` stays on the device (no host round trip);
     * x is [M, ldx] in D's 16-bit type. */
    const int32_t *outlier_cols;
    const int32_t *outlier_count;
    const void *outlier_x;
    int64_t ldx;
    float outlier_w_scale;
    int32_t config; /* qt_i8gemm_config */
    void *stream;   /* cudaStream_t; NULL: the default stream */
} qt_i8gemm_args;

/* D = alpha * (A @ B^T) * row_scale[m] * col_scale[n] + bias[n], the
 * simple form: contiguous operands, per-row scales (or NULL), no outliers. */
int qt_i8gemm(const int8_t *A, const int8_t *B, int64_t M, int64_t N, int64_t K, const float *row_scale,
              const float *col_scale, float alpha, const float *bias, void *D, int d_is_bf16, void *stream,
              char *msg, size_t msg_len);

/* The general form. */
int qt_i8gemm_ex(const qt_i8gemm_args *args, char *msg, size_t msg_len);

/* Which config AUTO would run for this shape on the current device (for
 * benchmarks and logs), and whether a config can run M rows there. The
 * wgmma kernel exists when this library was built for sm_90a (the build
 * adds it wherever the CUDA targets include sm_90) and runs on compute
 * capability 9.0; QTOOL_I8GEMM_NO_WGMMA=1 in the environment disables it
 * (and the TMA kernels, which have the same requirements plus CUTLASS at
 * build time; QTOOL_I8GEMM_NO_TMA=1 disables only those). */
int qt_i8gemm_pick_config(int64_t M, int64_t N, int64_t K);
int qt_i8gemm_config_available(int config, int64_t M);
/* Whether `config` takes these arguments on this device (1) or refuses
 * them (0): the TMA kernels refuse outlier columns, a broadcast row scale
 * and a D they cannot store with TMA. AUTO takes everything valid. */
int qt_i8gemm_config_takes(int config, const qt_i8gemm_args *args);
const char *qt_i8gemm_config_name(int config);

#ifdef __cplusplus
}
#endif
#endif
