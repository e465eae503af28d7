/* Internal to the int8 GEMM library: the CUTLASS warp-specialized TMA
 * kernels (int8_gemm_tma.cu, sm_90a, built when CUTLASS's headers are
 * available: QT_I8GEMM_HAVE_TMA). int8_gemm.cu checks the arguments and
 * the device before it calls in here. */
#ifndef QT_INT8_GEMM_TMA_H
#define QT_INT8_GEMM_TMA_H

#include <stddef.h>
#include <stdint.h>

enum {
    QT_I8GEMM_TMA_PINGPONG_128x128 = 0,    /* 2 consumer warpgroups, each its own 128x128 tile */
    QT_I8GEMM_TMA_COOPERATIVE_256x128 = 1, /* 2 consumer warpgroups on one 256x128 tile */
};

/* One problem as the TMA kernels take it. Requirements beyond
 * int8_gemm.h's: D 16-byte aligned and ldd a multiple of 8 (TMA stores),
 * a per-row row_scale or none (no broadcast), no outlier columns. */
typedef struct qt_i8gemm_tma_problem {
    const int8_t *A, *B;
    int64_t M, N, K, lda, ldb, ldd;
    const float *row_scale, *col_scale, *bias; /* NULL: 1, 1, 0 */
    float alpha;
    void *D;
    int d_is_bf16;
    int device, sms;
    void *stream;
} qt_i8gemm_tma_problem;

int qt_i8gemm_tma_run(int tile, const qt_i8gemm_tma_problem *p, char *msg, size_t len);

#endif
