/* The GLU GEMM of fp16_glu_tma.cu (sm_90a, CUTLASS) behind a C interface. */
#ifndef FP16_GLU_TMA_H
#define FP16_GLU_TMA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fp16_glu_problem {
    const void *x;    /* [M, K], row stride ldx */
    const void *w;    /* [N2, K] contiguous, gate and up rows interleaved */
    const void *bias; /* [N2] or NULL */
    void *y;          /* [M, N2 / 2], row stride ldy */
    int64_t M, N2, K, ldx, ldy;
    int epilogue;     /* QTOOL_EPILOGUE_SILU_GLU (the only one built) */
    int is_bf16;
    int device, sms;
    void *stream;
} fp16_glu_problem;

/* 0 or a QTOOL_ERR_* code with `msg` set. Needs K a multiple of 8 (TMA's
 * 16-byte rows) and x and w 16-byte aligned; y may be unaligned. */
__attribute__((visibility("hidden"))) int fp16_glu_tma_run(const fp16_glu_problem *p, char *msg, size_t len);

#ifdef __cplusplus
}
#endif
#endif
