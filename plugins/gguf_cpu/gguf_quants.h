/* GGUF block formats of the gguf_cpu plugin: quantizers that reproduce
 * ggml's reference quantizers byte for byte (quantize_row_*_ref in
 * ggml-quants.c) and its importance-weighted ones (quantize_* with
 * quant_weights), dequantizers, the activation formats the matmul pairs
 * with each weight type (Q8_0, Q8_1, Q8_K, as ggml's vec_dot does) and the
 * dot-product kernels (scalar, AVX2, AVX-512). */
#ifndef GGUF_QUANTS_H
#define GGUF_QUANTS_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

#define GQ_QK 32   /* block of the *_0 / *_1 types */
#define GQ_QK_K 256 /* super-block of the k-quants */

/* ggml type ids (as in GGUF files). */
enum {
    GQ_F32 = 0,
    GQ_F16 = 1,
    GQ_Q4_0 = 2,
    GQ_Q4_1 = 3,
    GQ_Q5_0 = 6,
    GQ_Q5_1 = 7,
    GQ_Q8_0 = 8,
    GQ_Q8_1 = 9,
    GQ_Q4_K = 12,
    GQ_Q5_K = 13,
    GQ_Q6_K = 14,
    GQ_Q8_K = 15
};

/* fp16 fields are raw IEEE half bits. */
typedef struct { uint16_t d; uint8_t qs[16]; } gq_block_q4_0;
typedef struct { uint16_t d, m; uint8_t qs[16]; } gq_block_q4_1;
typedef struct { uint16_t d; uint8_t qh[4]; uint8_t qs[16]; } gq_block_q5_0;
typedef struct { uint16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } gq_block_q5_1;
typedef struct { uint16_t d; int8_t qs[32]; } gq_block_q8_0;
typedef struct { uint16_t d, s; int8_t qs[32]; } gq_block_q8_1; /* s = d * sum(qs) */
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } gq_block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } gq_block_q5_K;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; uint16_t d; } gq_block_q6_K;
typedef struct { float d; int8_t qs[256]; int16_t bsums[16]; } gq_block_q8_K;

_Static_assert(sizeof(gq_block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(gq_block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(gq_block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(gq_block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(gq_block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(gq_block_q8_1) == 36, "q8_1");
_Static_assert(sizeof(gq_block_q4_K) == 144, "q4_K");
_Static_assert(sizeof(gq_block_q5_K) == 176, "q5_K");
_Static_assert(sizeof(gq_block_q6_K) == 210, "q6_K");
_Static_assert(sizeof(gq_block_q8_K) == 292, "q8_K");

typedef void (*gq_quantize_fn)(const float *x, void *y, int64_t k);
/* Quantizes with per-element importance weights qw (k of them, all >= 0):
 * ggml's quantize_<type> with quant_weights, for one row. */
typedef void (*gq_quantize_imatrix_fn)(const float *x, void *y, int64_t k, const float *qw);
typedef void (*gq_dequantize_fn)(const void *x, float *y, int64_t k);
/* Dot product of one weight row and one activation row (in the weight
 * type's activation format), n elements. */
typedef float (*gq_vec_dot_fn)(int64_t n, const void *w, const void *a);

typedef struct gq_type {
    int type;
    const char *name;
    int block;      /* elements per block */
    int block_size; /* bytes per block */
    int act_type;   /* GQ_Q8_0, GQ_Q8_1 or GQ_Q8_K */
    gq_quantize_fn quantize;
    gq_dequantize_fn dequantize;
    gq_vec_dot_fn vec_dot; /* scalar reference */
    gq_quantize_imatrix_fn quantize_imatrix; /* weight types only */
} gq_type;

/* Traits of a weight type this plugin quantizes (Q8_0, Q4_0, Q4_1, Q5_0,
 * Q5_1, Q4_K, Q5_K, Q6_K) or an activation type (Q8_1, Q8_K); NULL
 * otherwise. */
const gq_type *gq_type_traits(int type);
/* Bytes of one row of k elements. */
size_t gq_row_size(int type, int64_t k);

void gq_quantize_row_q4_0(const float *x, void *y, int64_t k);
void gq_quantize_row_q4_1(const float *x, void *y, int64_t k);
void gq_quantize_row_q5_0(const float *x, void *y, int64_t k);
void gq_quantize_row_q5_1(const float *x, void *y, int64_t k);
void gq_quantize_row_q8_0(const float *x, void *y, int64_t k);
void gq_quantize_row_q8_1(const float *x, void *y, int64_t k);
void gq_quantize_row_q4_K(const float *x, void *y, int64_t k);
void gq_quantize_row_q5_K(const float *x, void *y, int64_t k);
void gq_quantize_row_q6_K(const float *x, void *y, int64_t k);
void gq_quantize_row_q8_K(const float *x, void *y, int64_t k);

/* Importance-weighted quantizers: byte for byte what ggml's
 * ggml_quantize_chunk(type, x, y, 0, 1, k, qw) writes (quantize_q4_0 ...
 * quantize_q6_K with quant_weights; Q8_0 ignores qw, as ggml does). */
void gq_quantize_imatrix_q4_0(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q4_1(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q5_0(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q5_1(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q8_0(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q4_K(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q5_K(const float *x, void *y, int64_t k, const float *qw);
void gq_quantize_imatrix_q6_K(const float *x, void *y, int64_t k, const float *qw);

void gq_dequantize_row_q4_0(const void *x, float *y, int64_t k);
void gq_dequantize_row_q4_1(const void *x, float *y, int64_t k);
void gq_dequantize_row_q5_0(const void *x, float *y, int64_t k);
void gq_dequantize_row_q5_1(const void *x, float *y, int64_t k);
void gq_dequantize_row_q8_0(const void *x, float *y, int64_t k);
void gq_dequantize_row_q4_K(const void *x, float *y, int64_t k);
void gq_dequantize_row_q5_K(const void *x, float *y, int64_t k);
void gq_dequantize_row_q6_K(const void *x, float *y, int64_t k);

/* ------------------------------------------------------ the matmul core */

/* Activation row in a form shared by all weight types: the int8 codes of
 * the row's Q8_0/Q8_1/Q8_K quantization in natural order, and per group of
 * 32 the scale d and the "sum term" s (Q8_1: its fp16 s; Q8_0 and Q8_K:
 * d * sum of the group's codes). */
typedef struct gq_act {
    int8_t *q;  /* k */
    float *d;   /* k / 32 */
    float *s;   /* k / 32 */
    float *s16; /* k / 16, Q8_K only: d * each 16-code sum (Q6_K's zero point) */
} gq_act;

/* Weight row unpacked for the kernels: codes (signed for Q8_0 and Q6_K,
 * whose zero point is subtracted; unsigned 0..31 otherwise), per group of
 * 32 a vector of 8 lane scales (lane l covers codes 4l..4l+3: Q6_K's
 * 16-element sub-blocks get their own scale), and per group the
 * coefficient of the activation sum term (Q4_1/Q5_1: m; Q4_K/Q5_K:
 * -dmin * m_j; Q4_0/Q5_0: the zero point, -8 d or -16 d). */
typedef struct gq_wrow {
    int8_t *q;  /* k */
    float *sv;  /* k / 4 */
    float *mn;  /* k / 32 */
} gq_wrow;

/* Quantizes activation row x (k elements) for weight type `wtype` into a
 * (AVX-512 when the CPU has it; the codes are the same). */
void gq_act_quantize(int wtype, const float *x, int64_t k, gq_act *a);
/* The same for activation type GQ_Q8_0 / GQ_Q8_1 / GQ_Q8_K: scalar and
 * AVX-512 (F, BW) versions. */
void gq_act_quantize_ref(int act_type, const float *x, int64_t k, gq_act *a);
void gq_act_quantize_avx512(int act_type, const float *x, int64_t k, gq_act *a);
/* Unpacks one packed weight row. */
void gq_unpack_row(int wtype, const void *w, int64_t k, gq_wrow *r);
/* Kernel flags of a weight type: GQ_TILE_MIN (add the sum term) or
 * GQ_TILE_SIGNED (signed codes). */
#define GQ_TILE_MIN 1
#define GQ_TILE_SIGNED 2
int gq_tile_flags(int wtype);

/* y[i * ldy + j] = dot(w[j], a[i]) for nw weight rows and na activation
 * rows (any counts; the kernels tile them). */
typedef void (*gq_tile_fn)(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na,
                           float *y, int64_t ldy);
void gq_tile_scalar(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y,
                    int64_t ldy);
void gq_tile_avx2(int64_t k, int flags, const gq_wrow *w, int nw, const gq_act *a, int na, float *y,
                  int64_t ldy);

/* Up to 16 weight rows interleaved for the AVX-512 VNNI outer-product
 * kernel: q holds, per 4 codes, 4 bytes of each of the 16 rows (unsigned:
 * Q8_0 codes + 128, Q6_K codes + 32), sc and mn per scale sub-group (sg =
 * 32 codes, 16 for Q6_K) 16 floats: the row's scale and its sum-term
 * coefficient (minima, and the zero points -128 d / -32 d / -8 d / -16 d).
 * Rows past `rows` are zero. */
typedef struct gq_unit {
    uint8_t *q;  /* 16 k */
    float *sc;   /* 16 k / sg */
    float *mn;   /* 16 k / sg */
    int sg;
    int rows;
} gq_unit;

/* Bytes gq_op_repack needs for the q, sc and mn arrays of a unit. */
size_t gq_unit_bytes(int64_t k);
/* Fills u (its q, sc, mn point into `mem`, gq_unit_bytes(k) bytes) from
 * nrows <= 16 unpacked rows. */
void gq_op_repack(int wtype, int64_t k, const gq_wrow *rows, int nrows, void *mem, gq_unit *u);
/* y[i * ldy + r] = dot(row r, a[i]) for the unit's rows and na activation rows. */
void gq_op_matmul_avx512(int64_t k, const gq_unit *u, const gq_act *a, int na, float *y, int64_t ldy);

enum { GQ_ISA_SCALAR = 0, GQ_ISA_AVX2 = 1, GQ_ISA_AVX512 = 2 };
/* The best kernel this CPU runs (at most `max_isa`), and its name:
 * GQ_ISA_AVX512 means the outer-product kernel (gq_op_matmul_avx512); the
 * tile function is then AVX2's, for anything else. */
int gq_select_isa(int max_isa, gq_tile_fn *tile, const char **name);

#endif
