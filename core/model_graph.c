/* The forward pass of every architecture, written once against the device
 * operations of model_backend.h, and the float32 classification head. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "model_backend.h"

typedef struct run {
    qt_backend *be;
    const qt_backend_ops *ops;
    qt_model *m;
    qt_seqs *s;
    int hook_input_ready; /* m->hook_input holds the last hooked Linear's input */
} run;

/* A column slice of a matrix (q, k, v inside a fused qkv; halves of Wi). */
static qt_mat cols_of(const qt_mat *a, int64_t first, int64_t n)
{
    qt_mat v = *a;
    v.data = (char *)a->data + (size_t)first * qtool_dtype_size(a->dtype);
    v.cols = n;
    return v;
}

/* Calibration sees each Linear's input as float32 host rows. Linears that
 * read the same matrix (q, k, v; gate, up) pass `same_input` and share one
 * copy; the host buffer stays with the model between passes, so a
 * calibration run does not fault in fresh pages for every Linear. */
static int hook_linear(run *R, qt_linear *l, const qt_mat *x, int same_input)
{
    qt_model *m = R->m;
    qtool_tensor t = {0};
    if (x->device == QTOOL_DEVICE_CPU && x->dtype == QTOOL_DTYPE_F32 && x->ld == x->cols) {
        t.data = x->data;
    } else {
        size_t bytes = (size_t)(x->rows * x->cols) * sizeof(float);
        if (!(same_input && R->hook_input_ready)) {
            R->hook_input_ready = 0;
            if (bytes > m->hook_input_bytes) {
                qt_free(QTOOL_DEVICE_CPU, m->hook_input);
                m->hook_input_bytes = 0;
                if (!(m->hook_input = qt_alloc(QTOOL_DEVICE_CPU, bytes, QTOOL_MEM_ACTIVATIONS)))
                    return QTOOL_ERR_OUT_OF_MEMORY;
                m->hook_input_bytes = bytes;
            }
            int rc = R->ops->read(R->be, x, m->hook_input);
            if (rc) return rc;
            R->hook_input_ready = 1;
        }
        t.data = m->hook_input;
    }
    t.dtype = QTOOL_DTYPE_F32;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = x->rows;
    t.shape[1] = x->cols;
    return m->linear_hook(m->linear_hook_ctx, l, &t);
}

static int linear_in(run *R, qt_linear *l, const qt_mat *x, qt_mat *y, int same_input)
{
    int rc;
    if (R->m->linear_hook && (rc = hook_linear(R, l, x, same_input))) return rc;
    return R->ops->linear(R->be, R->m, l, x, y);
}

static int linear(run *R, qt_linear *l, const qt_mat *x, qt_mat *y)
{
    return linear_in(R, l, x, y, 0);
}

/* The input of the previous linear() call, unchanged since. */
static int linear_again(run *R, qt_linear *l, const qt_mat *x, qt_mat *y)
{
    return linear_in(R, l, x, y, 1);
}

/* res += x W^T + b: in the plugin's GEMM where plugin and backend offer a
 * residual epilogue (the norm after it then reads one matrix, not two),
 * else into tmp and through the backend's add. */
static int linear_residual(run *R, qt_linear *l, const qt_mat *x, qt_mat *tmp, qt_mat *res)
{
    const qt_model *m = R->m;
    if (R->ops->linear_residual && !m->linear_hook && l->packed && !l->glu_epilogue && m->desc &&
        (m->desc->flags & QTOOL_PLUGIN_RESIDUAL_EPILOGUE))
        return R->ops->linear_residual(R->be, m, l, x, res);
    int rc = linear(R, l, x, tmp);
    return rc ? rc : R->ops->add(R->be, res, tmp);
}

static qt_rope_params rope_of(const qt_model *m, const qt_block *b)
{
    qt_rope_params r;
    r.inv_freq = b->sliding ? m->inv_freq_sliding : m->inv_freq_full;
    r.scaling = b->sliding ? m->rope_scaling_sliding : m->rope_scaling_full;
    r.n_heads = m->cfg.n_heads;
    r.head_dim = m->cfg.head_dim;
    return r;
}

#define TRY(x)                 \
    do {                       \
        if ((rc = (x))) goto out; \
    } while (0)

/* Scratch matrices of one block, allocated once per pass and reused by
 * every block. */
#define QT_BLOCK_BUFS 8
typedef struct block_bufs {
    qt_mat m[QT_BLOCK_BUFS];
} block_bufs;

static void bufs_release(run *R, block_bufs *B)
{
    for (int i = 0; i < QT_BLOCK_BUFS; i++) R->ops->release(R->be, &B->m[i]);
}

static int bufs_alloc(run *R, block_bufs *B)
{
    const qt_model_config *c = &R->m->cfg;
    int64_t T = R->s->total, H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    int64_t cols[QT_BLOCK_BUFS] = {0};
    int n;
    memset(B, 0, sizeof *B);
    switch (c->arch) {
    case QT_ARCH_BERT: { /* q k v ctx tmp inter */
        int64_t w[] = {H, H, H, H, H, I};
        n = 6;
        memcpy(cols, w, sizeof w);
        break;
    }
    case QT_ARCH_MODERNBERT: { /* h qkv ctx tmp gu inter */
        int64_t w[] = {H, 3 * H, H, H, 2 * I, I};
        n = 6;
        memcpy(cols, w, sizeof w);
        break;
    }
    default: {
        if (R->m->blocks[0].fused) { /* h qkv - - ctx tmp gu inter; no gu when the GEMM does the GLU */
            int64_t w[] = {H, QD + 2 * KD, 0, 0, QD, H, R->m->blocks[0].gate_up.glu_epilogue ? 0 : 2 * I, I};
            n = 8;
            memcpy(cols, w, sizeof w);
        } else { /* h q k v ctx tmp g u */
            int64_t w[] = {H, QD, KD, KD, QD, H, I, I};
            n = 8;
            memcpy(cols, w, sizeof w);
        }
        break;
    }
    }
    for (int i = 0; i < n; i++) {
        if (!cols[i]) continue; /* unused in this layout */
        int rc = R->ops->alloc(R->be, &B->m[i], T, cols[i]);
        if (rc) {
            bufs_release(R, B);
            return rc;
        }
    }
    return 0;
}

/* Embeddings (and the embedding norm of the encoders) into x. */
static int embed_stage(run *R, qt_mat *x)
{
    int rc = R->ops->embed(R->be, R->m, R->s, x);
    if (!rc && R->m->cfg.arch != QT_ARCH_QWEN2 && R->m->cfg.arch != QT_ARCH_LLAMA)
        rc = R->ops->norm(R->be, &R->m->emb_norm, x, x);
    return rc;
}

/* BERT: post-norm blocks, x = LN(x + attn(x)); x = LN(x + mlp(x)). */
static int block_bert(run *R, qt_block *b, qt_mat *x, block_bufs *B)
{
    const qt_backend_ops *op = R->ops;
    qt_backend *be = R->be;
    const qt_model_config *c = &R->m->cfg;
    qt_mat *q = &B->m[0], *k = &B->m[1], *v = &B->m[2], *ctx = &B->m[3], *tmp = &B->m[4], *inter = &B->m[5];
    int rc;
    qt_attn_params ap = {c->n_heads, c->n_heads, c->head_dim, (float)(1.0 / sqrt((double)c->head_dim)), -1, -1,
                         NULL};
    TRY(linear(R, &b->q, x, q));
    TRY(linear_again(R, &b->k, x, k));
    TRY(linear_again(R, &b->v, x, v));
    TRY(op->attention(be, &ap, R->s, q, k, v, ctx));
    TRY(linear(R, &b->o, ctx, tmp));
    TRY(op->add(be, tmp, x));
    TRY(op->norm(be, &b->norm1, tmp, x));
    TRY(linear(R, &b->up, x, inter));
    TRY(op->act(be, c->hidden_act, inter));
    TRY(linear(R, &b->down, inter, tmp));
    TRY(op->add(be, tmp, x));
    TRY(op->norm(be, &b->norm2, tmp, x));
out:
    return rc;
}

/* ModernBERT: pre-norm, fused Wqkv and Wi (GLU: act(first half) * second
 * half), RoPE per layer type, local layers see |i - j| <= local_attention/2. */
static int block_modernbert(run *R, qt_block *b, qt_mat *x, block_bufs *B)
{
    const qt_backend_ops *op = R->ops;
    qt_backend *be = R->be;
    const qt_model_config *c = &R->m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    qt_mat *h = &B->m[0], *qkv = &B->m[1], *ctx = &B->m[2], *tmp = &B->m[3], *gu = &B->m[4], *inter = &B->m[5];
    int rc;
    qt_attn_params ap = {c->n_heads, c->n_heads, c->head_dim, (float)(1.0 / sqrt((double)c->head_dim)), -1, -1,
                         NULL};
    if (b->sliding) ap.window_left = ap.window_right = c->sliding_window;
    qt_rope_params rp = rope_of(R->m, b);
    TRY(op->norm(be, &b->norm1, x, h));
    TRY(linear(R, &b->qkv, h, qkv));
    qt_mat q = cols_of(qkv, 0, H), k = cols_of(qkv, H, H), v = cols_of(qkv, 2 * H, H);
    ap.rope = &rp;
    TRY(op->attention(be, &ap, R->s, &q, &k, &v, ctx));
    TRY(linear_residual(R, &b->o, ctx, tmp, x));
    TRY(op->norm(be, &b->norm2, x, h));
    TRY(linear(R, &b->gate_up, h, gu));
    qt_mat in = cols_of(gu, 0, I), gate = cols_of(gu, I, I);
    TRY(op->glu(be, c->hidden_act, &in, &gate, inter));
    TRY(linear_residual(R, &b->down, inter, tmp, x));
out:
    return rc;
}

/* Qwen2 / Llama: pre-RMSNorm, GQA, causal (optionally sliding) attention,
 * SwiGLU MLP. */
static int block_decoder(run *R, qt_block *b, qt_mat *x, block_bufs *B)
{
    const qt_backend_ops *op = R->ops;
    qt_backend *be = R->be;
    const qt_model_config *c = &R->m->cfg;
    qt_mat *h = &B->m[0], *q = &B->m[1], *k = &B->m[2], *v = &B->m[3], *ctx = &B->m[4], *tmp = &B->m[5];
    qt_mat *g = &B->m[6], *u = &B->m[7];
    int rc;
    qt_attn_params ap = {c->n_heads, c->n_kv_heads, c->head_dim, (float)(1.0 / sqrt((double)c->head_dim)),
                         -1,        0,             NULL};
    if (b->sliding) ap.window_left = c->sliding_window - 1;
    qt_rope_params rp = rope_of(R->m, b);
    if (b->fused != R->m->blocks[0].fused || b->gate_up.glu_epilogue != R->m->blocks[0].gate_up.glu_epilogue)
        return qt_fail(QTOOL_ERR_INTERNAL, "block %d: fused Linears in some blocks only", b->index);
    TRY(op->norm(be, &b->norm1, x, h));
    ap.rope = &rp; /* the attention op rotates q and k */
    if (b->fused) {
        /* One GEMM for q|k|v. */
        const int64_t QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
        qt_mat *qkv = &B->m[1];
        TRY(linear(R, &b->qkv, h, qkv));
        qt_mat qs = cols_of(qkv, 0, QD), ks = cols_of(qkv, QD, KD), vs = cols_of(qkv, QD + KD, KD);
        TRY(op->attention(be, &ap, R->s, &qs, &ks, &vs, ctx));
    } else {
        TRY(linear(R, &b->q, h, q));
        TRY(linear_again(R, &b->k, h, k));
        TRY(linear_again(R, &b->v, h, v));
        TRY(op->attention(be, &ap, R->s, q, k, v, ctx));
    }
    TRY(linear_residual(R, &b->o, ctx, tmp, x));
    TRY(op->norm(be, &b->norm2, x, h));
    if (b->fused) {
        const int64_t I = c->intermediate_size;
        qt_mat *gu = g, *inter = u; /* [T, 2I] and [T, I] in this layout */
        if (b->gate_up.glu_epilogue) {
            TRY(linear(R, &b->gate_up, h, inter)); /* act(gate) * up from the GEMM itself */
        } else {
            TRY(linear(R, &b->gate_up, h, gu));
            qt_mat gs = cols_of(gu, 0, I), us = cols_of(gu, I, I);
            TRY(op->glu(be, c->hidden_act, &gs, &us, inter));
        }
        TRY(linear_residual(R, &b->down, inter, tmp, x));
    } else {
        TRY(linear(R, &b->gate, h, g));
        TRY(linear_again(R, &b->up, h, u));
        TRY(op->glu(be, c->hidden_act, g, u, g));
        TRY(linear_residual(R, &b->down, g, tmp, x));
    }
out:
    return rc;
}

static int block_stage(run *R, qt_block *b, qt_mat *x, block_bufs *B)
{
    switch (R->m->cfg.arch) {
    case QT_ARCH_BERT: return block_bert(R, b, x, B);
    case QT_ARCH_MODERNBERT: return block_modernbert(R, b, x, B);
    default: return block_decoder(R, b, x, B);
    }
}

/* Every stage: embeddings, the blocks, the final norm (ModernBERT, decoders). */
static int run_graph(run *R, qt_mat *x)
{
    block_bufs B;
    int rc = bufs_alloc(R, &B);
    if (rc) return rc;
    TRY(embed_stage(R, x));
    for (int64_t i = 0; i < R->m->cfg.n_layers; i++) TRY(block_stage(R, &R->m->blocks[i], x, &B));
    if (R->m->cfg.arch != QT_ARCH_BERT) TRY(R->ops->norm(R->be, &R->m->final_norm, x, x));
out:
    bufs_release(R, &B);
    return rc;
}

/* -------------------------------------------------------------- head */

static void dense_row(const qt_dense *d, const float *x, float *y)
{
    for (int64_t o = 0; o < d->out; o++) {
        const float *w = d->weight + o * d->in;
        double acc = 0;
        for (int64_t k = 0; k < d->in; k++) acc += (double)w[k] * x[k];
        if (d->bias) acc += d->bias[o];
        y[o] = (float)acc;
    }
}

/* Pooled rows [n, H] -> logits [n, C], float32 on the host. */
static int head(const qt_model *m, const float *pooled, int64_t n, float *logits)
{
    int64_t H = m->cfg.hidden_size, C = m->cfg.num_labels;
    float *a = malloc((size_t)H * 2 * sizeof(float));
    if (!a) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    float *b = a + H;
    for (int64_t i = 0; i < n; i++) {
        const float *x = pooled + i * H;
        if (m->has_pre) {
            dense_row(&m->pre, x, a);
            if (m->cfg.arch == QT_ARCH_BERT) {
                for (int64_t c = 0; c < H; c++) a[c] = tanhf(a[c]);
                x = a;
            } else {
                for (int64_t c = 0; c < H; c++) a[c] = qt_act_apply(m->cfg.classifier_act, a[c]);
                qt_cpu_norm_row(&m->head_norm, a, b);
                x = b;
            }
        }
        dense_row(&m->classifier, x, logits + i * C);
    }
    free(a);
    return 0;
}

/* The row each sequence is pooled at (FIRST, LAST). transformers' decoders
 * take the rightmost token whose id is not pad_token_id (index 0 when all
 * are), or the last token when the config has no pad token (it then allows
 * only batches of one, where that is the last position). */
static int64_t pool_index(const qt_model_config *c, const int32_t *ids, int64_t len)
{
    if (c->pooling == QT_POOL_FIRST) return 0;
    if (!c->has_pad_token) return len - 1;
    for (int64_t i = len - 1; i >= 0; i--)
        if (ids[i] != c->pad_token_id) return i;
    return 0;
}

/* ----------------------------------------------------------- forward */

static int check_batch(const qt_model *m, const qt_batch *b, int64_t *total, int64_t *max_len)
{
    const qt_model_config *c = &m->cfg;
    if (b->n < 1) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "empty batch");
    int64_t t = 0, mx = 0;
    for (int64_t i = 0; i < b->n; i++) {
        int64_t L = b->lengths[i];
        if (L < 1) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "batch item %" PRId64 " has no tokens", i);
        if (L > INT32_MAX || t > INT32_MAX - L)
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "batch of more than %d tokens", INT32_MAX);
        if (c->arch == QT_ARCH_BERT && L > c->max_position_embeddings)
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                           "batch item %" PRId64 " has %" PRId64 " tokens; the model has %" PRId64 " positions",
                           i, L, c->max_position_embeddings);
        for (int64_t j = 0; j < L; j++) {
            int32_t id = b->ids[i][j];
            if (id < 0 || id >= c->vocab_size)
                return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                               "batch item %" PRId64 ": token id %d outside the vocabulary [0, %" PRId64 ")", i,
                               id, c->vocab_size);
        }
        t += L;
        if (L > mx) mx = L;
    }
    *total = t;
    *max_len = mx;
    return 0;
}

/* The batch description (offsets, ids, positions, owners, pooled rows) in
 * one host allocation. */
static int batch_meta(const qt_model *m, const qt_batch *b, int64_t total, int64_t max_len, char **meta_out,
                      int64_t **rows_out, qt_seqs *s)
{
    int64_t n = b->n;
    size_t bytes = (size_t)(n + 1) * sizeof(int64_t) + (size_t)n * sizeof(int64_t) +
                   (size_t)total * 3 * sizeof(int32_t);
    char *meta = qt_alloc(QTOOL_DEVICE_CPU, bytes, QTOOL_MEM_ACTIVATIONS);
    if (!meta) return QTOOL_ERR_OUT_OF_MEMORY;
    int64_t *offsets = (int64_t *)meta;
    int64_t *rows = offsets + n + 1;
    int32_t *ids = (int32_t *)(rows + n);
    int32_t *pos = ids + total, *seq = pos + total;
    offsets[0] = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t L = b->lengths[i], o = offsets[i];
        memcpy(ids + o, b->ids[i], (size_t)L * sizeof(int32_t));
        for (int64_t j = 0; j < L; j++) {
            pos[o + j] = (int32_t)j;
            seq[o + j] = (int32_t)i;
        }
        offsets[i + 1] = o + L;
        rows[i] = o + pool_index(&m->cfg, b->ids[i], L);
    }
    qt_seqs v = {n, total, max_len, offsets, ids, pos, seq, NULL};
    *s = v;
    *meta_out = meta;
    *rows_out = rows;
    return 0;
}

/* A quantized checkpoint has no float weights to run unpacked. */
static int check_runnable(const qt_model *m)
{
    if (!m->desc && m->quant_config)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                       "%s is a quantized checkpoint: load its packed layers before running it", m->model_path);
    return 0;
}

int qt_model_forward(qt_model *m, const qt_batch *b, int device, void *stream, qt_forward_out *out)
{
    const qt_model_config *c = &m->cfg;
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "unknown device %d", device);
    if (device == QTOOL_DEVICE_CUDA && (!m->desc || m->packed_device != device))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "the CUDA forward pass needs a model packed for CUDA");
    if (m->desc && m->packed_device != device)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "the model is packed for another device");
    if (out->logits && !c->has_head)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s has no classification head", c->architecture);
    int64_t total = 0, max_len = 0;
    int rc = check_runnable(m);
    if (!rc) rc = check_batch(m, b, &total, &max_len);
    if (rc) return rc;

    qt_backend be = {device == QTOOL_DEVICE_CUDA ? &qt_cuda_backend_ops : &qt_cpu_backend_ops, stream, NULL};
    const qt_backend_ops *op = be.ops;
    int64_t n = b->n, H = c->hidden_size;
    char *meta = NULL;
    int64_t *rows = NULL;
    qt_seqs s;
    if ((rc = batch_meta(m, b, total, max_len, &meta, &rows, &s))) return rc;
    float *pooled = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(n * H) * sizeof(float), QTOOL_MEM_ACTIVATIONS);
    if (!pooled) {
        qt_free(QTOOL_DEVICE_CPU, meta);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    run R = {&be, op, m, &s, 0};
    qt_mat x = {0};
    int begun = 0;
    if ((rc = op->begin(&be, m, &s))) goto out;
    begun = 1;
    if ((rc = op->alloc(&be, &x, total, H))) goto out;
    if ((rc = run_graph(&R, &x))) goto out;
    if (out->hidden && (rc = op->read(&be, &x, out->hidden))) goto out;
    if ((out->pooled || out->logits) && op->pool_head) {
        /* The backend pools and runs the head itself (on its device). */
        if ((rc = op->pool_head(&be, m, c->pooling, &s, rows, &x, out->pooled ? pooled : NULL, out->logits)))
            goto out;
        if (out->pooled) memcpy(out->pooled, pooled, (size_t)(n * H) * sizeof(float));
        goto out;
    }
    if ((out->pooled || out->logits) && (rc = op->pool(&be, c->pooling, &s, rows, &x, pooled))) goto out;
    if (out->pooled) memcpy(out->pooled, pooled, (size_t)(n * H) * sizeof(float));
    if (out->logits) rc = head(m, pooled, n, out->logits);
out:
    op->release(&be, &x);
    if (begun) op->end(&be, &s);
    qt_free(QTOOL_DEVICE_CPU, meta);
    qt_free(QTOOL_DEVICE_CPU, pooled);
    return rc;
}

/* ------------------------------------------------- one block at a time */

struct qt_model_steps {
    qt_model *m;
    qt_backend be;
    qt_seqs s;
    char *meta;
    qt_mat x;      /* the hidden state entering the next block */
    int allocated; /* the backend began once: its state exists for release */
};

int qt_model_steps_begin(qt_model *m, const qt_batch *b, int device, void *stream, qt_model_steps **out)
{
    *out = NULL;
    int64_t total = 0, max_len = 0;
    int rc = check_runnable(m);
    if (!rc) rc = check_batch(m, b, &total, &max_len);
    if (rc) return rc;
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "unknown device %d", device);
    qt_model_steps *st = calloc(1, sizeof *st);
    if (!st) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    st->m = m;
    st->be.ops = device == QTOOL_DEVICE_CUDA ? &qt_cuda_backend_ops : &qt_cpu_backend_ops;
    st->be.stream = stream;
    int64_t *rows;
    if ((rc = batch_meta(m, b, total, max_len, &st->meta, &rows, &st->s))) goto fail;
    if ((rc = st->be.ops->begin(&st->be, m, &st->s))) goto fail;
    st->allocated = 1;
    if (!(rc = st->be.ops->alloc(&st->be, &st->x, total, m->cfg.hidden_size))) {
        run R = {&st->be, st->be.ops, m, &st->s, 0};
        rc = embed_stage(&R, &st->x);
    }
    st->be.ops->end(&st->be, &st->s);
    if (rc) goto fail;
    *out = st;
    return 0;
fail:
    qt_model_steps_end(st);
    return rc;
}

int qt_model_steps_block(qt_model_steps *st, int64_t block, int advance)
{
    qt_model *m = st->m;
    if (block < 0 || block >= m->cfg.n_layers)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "block %lld outside [0, %lld)", (long long)block,
                       (long long)m->cfg.n_layers);
    const qt_backend_ops *op = st->be.ops;
    run R = {&st->be, op, m, &st->s, 0};
    qt_mat copy = {0}, *x = &st->x;
    block_bufs B;
    int rc = op->begin(&st->be, m, &st->s);
    if (rc) return rc;
    if (!advance) {
        /* Runs on a copy so that x stays the block's input. */
        if (!(rc = op->alloc(&st->be, &copy, x->rows, x->cols))) rc = op->copy(&st->be, x, &copy);
        x = &copy;
    }
    if (!rc && !(rc = bufs_alloc(&R, &B))) {
        rc = block_stage(&R, &m->blocks[block], x, &B);
        bufs_release(&R, &B);
    }
    op->release(&st->be, &copy);
    op->end(&st->be, &st->s);
    return rc;
}

int64_t qt_model_steps_tokens(const qt_model_steps *st)
{
    return st->s.total;
}

void qt_model_steps_end(qt_model_steps *st)
{
    if (!st) return;
    if (st->allocated) st->be.ops->release(&st->be, &st->x);
    qt_free(QTOOL_DEVICE_CPU, st->meta);
    free(st);
}
