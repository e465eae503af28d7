/* Kernels of the CUDA model backend (model_cuda.c), behind a C interface.
 *
 * Activations are half precision: `dt` is QTK_F16 or QTK_BF16 for every
 * half-precision pointer of a call. Matrices are row-major with a leading
 * dimension in elements (`ld`), so column slices of a fused matrix (q, k,
 * v inside qkv) are passed as a pointer plus the parent's ld. Reductions
 * and elementwise math run in float32 (the head in float64 accumulation);
 * results are rounded to the activation type once.
 *
 * Every launcher enqueues on `stream` (a cudaStream_t) and returns a
 * cudaError_t as int (0 = success): the launch error, not the kernel's. */
#ifndef QT_MODEL_KERNELS_H
#define QT_MODEL_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { QTK_F16 = 0, QTK_BF16 = 1 };

/* Compute capability of the current device; 0 on success. */
int qtk_device_cc(int *major, int *minor);

/* out[r] = tok[ids[r]] (+ type0 + pos_tab[pos[r]] when given, float32 sum).
 * tok is [vocab, H] in dt; type0 [H] and pos_tab [max_pos, H] float32. */
int qtk_embed(int dt, const void *tok, const float *type0, const float *pos_tab, const int32_t *ids,
              const int32_t *pos, int64_t rows, int64_t H, void *out, int64_t ld_out, void *stream);

/* Norms over rows of `cols` elements. kind: 1 LayerNorm, 2 RMSNorm, 0 copy.
 * With `res` non-NULL, first x = x + res (rounded to dt, written back into
 * x), then out = norm(x): the residual add of a pre-norm block fused in.
 * weight/bias float32 (bias may be NULL). out may equal x. */
int qtk_norm(int dt, int kind, void *x, int64_t ldx, const void *res, int64_t ldr, void *out, int64_t ldo,
             int64_t rows, int64_t cols, const float *weight, const float *bias, float eps, void *stream);

/* x += y elementwise. */
int qtk_add(int dt, void *x, int64_t ldx, const void *y, int64_t ldy, int64_t rows, int64_t cols, void *stream);

/* Activation codes are qt_act (model.h). x = act(x). */
int qtk_act(int dt, int act, void *x, int64_t ldx, int64_t rows, int64_t cols, void *stream);
/* out = act(a) * b. out may alias a or b (same layout). */
int qtk_glu(int dt, int act, const void *a, int64_t lda, const void *b, int64_t ldb, void *out, int64_t ldo,
            int64_t rows, int64_t cols, void *stream);
/* out = x / s (per column), for plugins that asked for a scaled input. */
int qtk_scale_cols(int dt, const void *x, int64_t ldx, const float *s, void *out, int64_t ldo, int64_t rows,
                   int64_t cols, void *stream);

/* RoPE angles as the kernels read them: table[2 (p * half + i)] and
 * [... + 1] are the cosine and sine of p * inv_freq[i] (float32 product),
 * times `scaling`, for positions p < n_pos. Built once a batch and read by
 * every layer, so no kernel evaluates a sine per head. */
int qtk_rope_table(const float *inv_freq, int half, float scaling, int64_t n_pos, float *table, void *stream);
/* Rotates heads in place (rotate_half): row r at position pos[r], which
 * must be below the table's n_pos; the table has head_dim / 2 angles a
 * position. */
int qtk_rope(int dt, void *x, int64_t ldx, const int32_t *pos, int64_t rows, int n_heads, int head_dim,
             const float *rope_table, void *stream);

/* Varlen attention. Sequence s owns rows [offsets[s], offsets[s+1]); `tiles`
 * lists (sequence, first query) pairs of QTK_ATTN_TILE query rows each, for
 * the tensor-core kernel. Head h reads k/v head h / (n_heads / n_kv_heads).
 * Key j is visible from query i of the same sequence when
 * i - wl <= j <= i + wr (-1: unbounded). seq_of/pos give each row's
 * sequence and position. With rope_table (qtk_rope_table, covering every
 * position) q and k arrive unrotated and get RoPE as qtk_rope applies it: k is
 * rotated in place, q inside the tensor-core kernel where it can (else in
 * place too). `cc_major` picks the kernel: tensor cores (mma.sync) for
 * head_dim <= 128 (fp16 from sm_75, bf16 from sm_80; scale > 0), the
 * float32 kernel otherwise. */
#define QTK_ATTN_TILE 64
int qtk_attention(int dt, void *q, int64_t ldq, void *k, int64_t ldk, const void *v, int64_t ldv, void *out,
                  int64_t ldo, const int64_t *offsets, const int32_t *seq_of, const int32_t *pos,
                  const int32_t *tiles, int64_t n_tiles, int64_t total, int n_heads, int n_kv_heads, int head_dim,
                  float scale, int64_t wl, int64_t wr, const float *rope_table, int cc_major,
                  void *stream);
/* The portable float32 kernel alone (one warp per query and head, any
 * head_dim <= 256): what qtk_attention falls back to; tests compare both. */
int qtk_attention_simt(int dt, const void *q, int64_t ldq, const void *k, int64_t ldk, const void *v,
                       int64_t ldv, void *out, int64_t ldo, const int64_t *offsets, const int32_t *seq_of,
                       const int32_t *pos, int64_t total, int n_heads, int n_kv_heads, int head_dim, float scale,
                       int64_t wl, int64_t wr, void *stream);
/* 1 when qtk_attention uses the tensor-core kernel for these parameters. */
int qtk_attention_uses_mma(int dt, int head_dim, int cc_major);

/* Pooling to float32 out [n, H]: mode 0 first/2 last take row rows[s];
 * mode 1 averages rows [offsets[s], offsets[s+1]). */
int qtk_pool(int dt, int mode, const void *x, int64_t ldx, const int64_t *rows, const int64_t *offsets, int64_t n,
             int64_t H, float *out, void *stream);

/* Float32 dense layer of the head: y[n, out] = x[n, in] W^T + b, float64
 * accumulation. */
int qtk_dense_f32(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t in, int64_t out,
                  void *stream);
/* Head post-processing in float32, in place on x [n, H]: act (a qt_act
 * code), then a norm (kind as qtk_norm; 0 for none). */
int qtk_head_act_norm(float *x, int64_t n, int64_t H, int act, int norm_kind, const float *weight,
                      const float *bias, float eps, void *stream);

/* Converts rows of a half matrix to float32 [rows, cols] (device). */
int qtk_to_f32(int dt, const void *x, int64_t ldx, int64_t rows, int64_t cols, float *out, void *stream);

#ifdef __cplusplus
}
#endif
#endif
