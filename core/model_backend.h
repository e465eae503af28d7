/* The device operations the forward pass is written against. model_graph.c
 * builds every architecture's forward pass from these calls only; a device
 * provides one table (model_cpu.c for the CPU; a CUDA backend fills the same
 * table with kernels on its stream, in half precision if it likes: `qt_mat`
 * carries the dtype).
 *
 * Layout: the tokens of a batch are laid end to end ("varlen"): sequence s
 * owns rows [offsets[s], offsets[s+1]) of every activation matrix, row r is
 * at position pos[r] of sequence seq[r]. There is no padding anywhere. */
#ifndef QT_MODEL_BACKEND_H
#define QT_MODEL_BACKEND_H

#include <stdint.h>

#include "model.h"

/* A 2-D activation view: `rows` x `cols`, row r at data + r * ld elements.
 * Views into another matrix (q, k, v inside a fused qkv) share its data. */
typedef struct qt_mat {
    void *data;
    int32_t dtype;  /* qtool_dtype */
    int32_t device; /* qtool_device_kind */
    int64_t rows, cols, ld;
} qt_mat;

/* The batch, as the ops see it. Host arrays are always valid; `dev` holds
 * the backend's own copies (set in begin). */
typedef struct qt_seqs {
    int64_t n;             /* sequences */
    int64_t total;         /* tokens */
    int64_t max_len;
    const int64_t *offsets; /* n + 1 */
    const int32_t *ids;     /* total */
    const int32_t *pos;     /* total: position within its sequence */
    const int32_t *seq;     /* total: sequence index */
    void *dev;
} qt_seqs;

/* Attention pattern: key j is visible from query i (same sequence) when
 * i - window_left <= j <= i + window_right; -1 means unbounded on that side.
 * Bidirectional: -1/-1; causal: -1/0; ModernBERT local: w/w; causal sliding
 * window W: W-1/0. */
/* RoPE (rotate_half convention), rows at their positions. */
typedef struct qt_rope_params {
    const float *inv_freq; /* head_dim / 2 floats (host) */
    float scaling;         /* multiplies cos and sin */
    int64_t n_heads, head_dim;
} qt_rope_params;

typedef struct qt_attn_params {
    int64_t n_heads, n_kv_heads, head_dim;
    float scale;
    int64_t window_left, window_right;
    /* Not NULL: q and k arrive without RoPE and the op applies it with these
     * frequencies and scaling (its n_heads and head_dim are ignored),
     * rotating them in place or on the fly. */
    const qt_rope_params *rope;
} qt_attn_params;

typedef struct qt_backend qt_backend;

typedef struct qt_backend_ops {
    const char *name;
    int device; /* qtool_device_kind */
    /* Per forward pass: copy the batch description to the device. */
    int (*begin)(qt_backend *be, const qt_model *m, qt_seqs *s);
    void (*end)(qt_backend *be, qt_seqs *s);
    /* Activation matrices (contiguous, ld = cols), QTOOL_MEM_ACTIVATIONS. */
    int (*alloc)(qt_backend *be, qt_mat *t, int64_t rows, int64_t cols);
    void (*release)(qt_backend *be, qt_mat *t);

    /* out[r] = tok[ids[r]] (+ type[0] + pos[pos[r]] when given). */
    int (*embed)(qt_backend *be, const qt_model *m, const qt_seqs *s, qt_mat *out);
    /* out = norm(x); out may be x. NONE copies (or does nothing in place). */
    int (*norm)(qt_backend *be, const qt_norm *n, const qt_mat *x, qt_mat *out);
    /* y = x W^T + b through the Linear's packed plugin layer (x, y contiguous). */
    int (*linear)(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y);
    /* Optional: y += x W^T + b in the plugin's GEMM (its residual epilogue,
     * QTOOL_PLUGIN_RESIDUAL_EPILOGUE); packed Linears only. */
    int (*linear_residual)(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y);
    /* out = softmax(q k^T * scale + mask) v per sequence and head; k/v heads
     * are shared by n_heads / n_kv_heads query heads (GQA). With a->rope,
     * q and k are rotated first and may be left rotated. */
    int (*attention)(qt_backend *be, const qt_attn_params *a, const qt_seqs *s, const qt_mat *q,
                     const qt_mat *k, const qt_mat *v, qt_mat *out);
    /* out = act(a) * b (elementwise). */
    int (*glu)(qt_backend *be, int act, const qt_mat *a, const qt_mat *b, qt_mat *out);
    /* x = act(x). */
    int (*act)(qt_backend *be, int act, qt_mat *x);
    /* x += y. */
    int (*add)(qt_backend *be, qt_mat *x, const qt_mat *y);
    /* Pools each sequence to one row and returns it to the host as float32:
     * FIRST/LAST take row rows[s] (host indices into x), MEAN averages the
     * sequence. */
    int (*pool)(qt_backend *be, int mode, const qt_seqs *s, const int64_t *rows, const qt_mat *x,
                float *out);
    /* Copies a whole matrix to host float32 [rows, cols]. */
    int (*read)(qt_backend *be, const qt_mat *x, float *out);
    /* out = x (same shape and dtype, both the backend's). */
    int (*copy)(qt_backend *be, const qt_mat *x, qt_mat *out);
    /* Optional (NULL: `pool`, then the head on the host): pools as `pool`
     * does, into `pooled` (host float32 [n, H]) when it is not NULL, and,
     * when `logits` is not NULL, runs the float32 head on the device into
     * `logits` [n, labels]. */
    int (*pool_head)(qt_backend *be, const qt_model *m, int mode, const qt_seqs *s, const int64_t *rows,
                     const qt_mat *x, float *pooled, float *logits);
} qt_backend_ops;

struct qt_backend {
    const qt_backend_ops *ops;
    void *stream; /* CUDA stream or NULL */
    void *state;  /* the backend's own */
};

/* The CPU backend. */
extern const qt_backend_ops qt_cpu_backend_ops;
/* The CUDA backend (model_cuda.c); built without CUDA, its begin fails. */
extern const qt_backend_ops qt_cuda_backend_ops;

/* One batch through the model a block at a time (calibration): begin runs
 * the embeddings; each block call runs one block on the batch's hidden
 * state, in place when `advance`, else on a copy (the state stays the
 * block's input; the Linears' inputs still reach the model's linear_hook as
 * host float32). An unpacked Linear multiplies by the checkpoint's weights:
 * float32 on the CPU; on CUDA a copy in the activation type, kept until
 * qt_model_cuda_weights_changed. Each call is one backend pass (begin ...
 * end), so several batches can step through the same model in turn. */
typedef struct qt_model_steps qt_model_steps;
int qt_model_steps_begin(qt_model *m, const qt_batch *b, int device, void *stream, qt_model_steps **out);
int qt_model_steps_block(qt_model_steps *st, int64_t block, int advance);
int64_t qt_model_steps_tokens(const qt_model_steps *st);
void qt_model_steps_end(qt_model_steps *st);

/* Float32 math the graph and the CPU backend share (exact where
 * transformers is exact). */
float qt_act_apply(int act, float x);
/* One row through a norm (LayerNorm, RMSNorm or identity), float32 out. */
void qt_cpu_norm_row(const qt_norm *n, const float *x, float *y);

#endif
