/* The CUDA backend of the model runtime: the device operations of
 * model_backend.h as kernels (core/cuda/) on the caller's stream, with
 * half-precision activations (fp16 by default, bf16 on request through
 * qt_model.cuda_act_dtype) and every block Linear through the plugin's
 * matmul_cuda.
 *
 * State kept per model across forward passes (qt_model.cuda), freed by
 * qt_model_unpack / qt_model_close:
 *   - the token embedding table in the activation type; BERT's position
 *     table and token-type row, every norm's weight and bias, the RoPE
 *     frequencies and the head in float32 (all QTOOL_MEM_WEIGHTS),
 *     uploaded by the first CUDA forward pass;
 *   - a cache of activation buffers (QTOOL_MEM_ACTIVATIONS): a released
 *     buffer is kept and handed to the next request it fits (best fit), so
 *     a steady stream of batches allocates nothing after the first; when
 *     nothing fits, the idle buffers are freed before a new allocation so
 *     that the cache never holds more than one batch's working set plus
 *     what is in use;
 *   - one buffer for the batch description and the head's scratch;
 *   - during calibration, copies of the unpacked Linears' weights.
 *
 * Fusion: `add` is deferred; when the next operation is the norm of the
 * same matrix (every pre-norm block, BERT's post-norm), one kernel adds the
 * residual, writes the sum and normalises it. Any other operation first
 * performs the pending add.
 *
 * Every forward pass ends with a synchronisation of the stream (results
 * come back to the host), so buffers are idle between passes. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "model_backend.h"
#include "tensor.h"
#include "threads.h"

#ifdef QTOOL_HAVE_CUDA

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "cuda/model_kernels.h"

typedef struct dev_norm {
    float *w, *b;
} dev_norm;

typedef struct cache_block {
    void *p;
    size_t bytes;
    int used;
} cache_block;

/* Optional per-operation timing (QTOOL_CUDA_OP_TIMES=1): an event before
 * each operation; the time to the next one is charged to it. Printed to
 * stderr at the end of every pass. */
enum { P_EMBED, P_NORM, P_LINEAR, P_ATTN, P_GLU, P_ACT, P_ADD, P_HEAD, P_READ, P_COUNT };
static const char *const prof_names[P_COUNT] = {"embed", "norm", "linear", "attention",
                                                "glu",   "act",  "add",    "pool+head", "read"};
#define PROF_MAX 4096

typedef struct prof {
    int n;
    int cat[PROF_MAX];
    cudaEvent_t ev[PROF_MAX + 1];
} prof;

typedef struct cuda_state {
    const qt_model *m;
    int dtype; /* activation dtype the token table was uploaded in */
    int cc_major, cc_minor;
    void *stream;

    /* Weights (QTOOL_MEM_WEIGHTS). */
    void *tok;
    float *pos, *type0;
    dev_norm emb_norm, final_norm, head_norm;
    dev_norm *blk; /* [n_layers][2] */
    float *inv_full, *inv_sliding;
    float *pre_w, *pre_b, *cls_w, *cls_b;
    float **in_scale; /* per Linear, uploaded on first use */

    /* Calibration: unpacked Linears multiply by the checkpoint's weights,
     * copied in the activation type on first use (QTOOL_MEM_WEIGHTS) and
     * dropped by qt_model_cuda_weights_changed, with cuBLASLt's handle and
     * workspace. */
    void **fw; /* per Linear: weight [N, K] and then bias [N] */
    void *lt, *lt_ws;

    /* Activation cache. */
    cache_block *cache;
    size_t n_cache, cap_cache;

    /* Per-batch buffer: offsets, ids, positions, owners, attention tiles,
     * pooled rows, head scratch. */
    void *meta;
    size_t meta_bytes;
    int64_t *d_offsets, *d_rows;
    int32_t *d_ids, *d_pos, *d_seq, *d_tiles;
    int64_t n_tiles;
    float *d_pooled, *d_h1, *d_logits;
    /* RoPE angles of this batch's positions (qtk_rope_table), for
     * inv_full and inv_sliding. */
    float *d_rope_full, *d_rope_sliding;
    /* Pinned staging for the pooled rows: a copy from pageable memory
     * would wait for the whole pass before the pooling could be queued. */
    int64_t *h_rows;
    int64_t h_rows_cap;

    /* The deferred residual add: pend_x += pend_y. */
    int pending;
    qt_mat pend_x, pend_y;

    prof *prof;
} cuda_state;

static void prof_mark(cuda_state *st, int cat)
{
    prof *p = st->prof;
    if (!p || p->n >= PROF_MAX) return;
    cudaEventRecord(p->ev[p->n], (cudaStream_t)st->stream);
    p->cat[p->n++] = cat;
}

static void prof_report(cuda_state *st)
{
    prof *p = st->prof;
    if (!p || !p->n) return;
    cudaEventRecord(p->ev[p->n], (cudaStream_t)st->stream);
    cudaEventSynchronize(p->ev[p->n]);
    double t[P_COUNT] = {0}, all = 0;
    int calls[P_COUNT] = {0};
    for (int i = 0; i < p->n; i++) {
        float ms = 0;
        cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]);
        t[p->cat[i]] += ms;
        calls[p->cat[i]]++;
        all += ms;
    }
    char line[1024];
    int o = snprintf(line, sizeof line, "cuda ops %.3f ms:", all);
    for (int c = 0; c < P_COUNT; c++)
        if (calls[c] && o < (int)sizeof line)
            o += snprintf(line + o, sizeof line - (size_t)o, " %s %.3f (%d)", prof_names[c], t[c], calls[c]);
    fprintf(stderr, "%s\n", line);
    p->n = 0;
}

static int cu_fail(int e, const char *what)
{
    return qt_fail(e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE, "CUDA %s: %s", what,
                   cudaGetErrorString((cudaError_t)e));
}

#define CK(call, what)                               \
    do {                                             \
        int e_ = (int)(call);                        \
        if (e_) return cu_fail(e_, what);            \
    } while (0)

static int kdt(int dtype)
{
    return dtype == QTOOL_DTYPE_BF16 ? QTK_BF16 : QTK_F16;
}

static int act_dtype_of(const qt_model *m)
{
    return m->cuda_act_dtype == QTOOL_DTYPE_BF16 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
}

/* ------------------------------------------------------------- uploads */

static int upload_f32(const float *src, int64_t n, float **out)
{
    *out = NULL;
    if (!src || n <= 0) return 0;
    float *d = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)n * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!d) return QTOOL_ERR_OUT_OF_MEMORY;
    int e = (int)cudaMemcpy(d, src, (size_t)n * sizeof(float), cudaMemcpyHostToDevice);
    /* A pageable copy runs on the legacy stream, which the runtime's
     * non-blocking stream does not wait for: finish it before any kernel. */
    if (!e) e = (int)cudaDeviceSynchronize();
    if (e) {
        qt_free(QTOOL_DEVICE_CUDA, d);
        return cu_fail(e, "copying a weight to the device");
    }
    *out = d;
    return 0;
}

/* Rows [r0, r1) of a float table (any float dtype) as float32. */
static int table_to_f32(const qtool_tensor *t, int64_t r0, int64_t r1, float *dst)
{
    int64_t cols = t->shape[1];
    size_t es = qtool_dtype_size(t->dtype);
    return qt_convert_to_f32(dst, (const char *)t->data + (size_t)(r0 * cols) * es, t->dtype, (r1 - r0) * cols);
}

static int upload_table_f32(const qtool_tensor *t, int64_t rows, float **out)
{
    *out = NULL;
    int64_t cols = t->shape[1];
    float *h = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(rows * cols) * sizeof(float), QTOOL_MEM_OTHER);
    if (!h) return QTOOL_ERR_OUT_OF_MEMORY;
    int rc = table_to_f32(t, 0, rows, h);
    if (!rc) rc = upload_f32(h, rows * cols, out);
    qt_free(QTOOL_DEVICE_CPU, h);
    return rc;
}

typedef struct conv_job {
    const qtool_tensor *t;
    int64_t r0;
    int dtype;
    uint16_t *dst;
} conv_job;

static void conv_rows(void *arg, int64_t b, int64_t e)
{
    conv_job *j = arg;
    int64_t cols = j->t->shape[1];
    size_t es = qtool_dtype_size(j->t->dtype);
    for (int64_t r = b; r < e; r++) {
        const char *src = (const char *)j->t->data + (size_t)((j->r0 + r) * cols) * es;
        uint16_t *d = j->dst + r * cols;
        for (int64_t c = 0; c < cols; c++) {
            float v;
            switch (j->t->dtype) {
            case QTOOL_DTYPE_F32: v = ((const float *)src)[c]; break;
            case QTOOL_DTYPE_F16: v = qtool_f16_to_f32(((const uint16_t *)src)[c]); break;
            case QTOOL_DTYPE_BF16: v = qtool_bf16_to_f32(((const uint16_t *)src)[c]); break;
            default: v = (float)((const double *)src)[c]; break;
            }
            d[c] = j->dtype == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16(v) : qtool_f32_to_f16(v);
        }
    }
}

/* The token table in the activation type, converted in chunks. */
static int upload_tokens(cuda_state *st, const qtool_tensor *t, int dtype)
{
    int64_t rows = t->shape[0], cols = t->shape[1];
    if (t->dtype != QTOOL_DTYPE_F32 && t->dtype != QTOOL_DTYPE_F16 && t->dtype != QTOOL_DTYPE_BF16 &&
        t->dtype != QTOOL_DTYPE_F64)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "token embedding table of type %s", qt_dtype_name(t->dtype));
    void *d = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(rows * cols) * 2, QTOOL_MEM_WEIGHTS);
    if (!d) return QTOOL_ERR_OUT_OF_MEMORY;
    int rc = 0;
    if (t->dtype == dtype) {
        int e = (int)cudaMemcpy(d, t->data, (size_t)(rows * cols) * 2, cudaMemcpyHostToDevice);
        if (!e) e = (int)cudaDeviceSynchronize(); /* see upload_f32 */
        if (e) rc = cu_fail(e, "copying the embedding table to the device");
    } else {
        int64_t chunk = ((int64_t)8 << 20) / (cols > 0 ? cols : 1); /* 16 MiB of halves */
        if (chunk < 1) chunk = 1;
        if (chunk > rows) chunk = rows;
        uint16_t *h = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(chunk * cols) * 2, QTOOL_MEM_OTHER);
        if (!h) rc = QTOOL_ERR_OUT_OF_MEMORY;
        for (int64_t r = 0; !rc && r < rows; r += chunk) {
            int64_t n = rows - r < chunk ? rows - r : chunk;
            conv_job j = {t, r, dtype, h};
            qt_parallel_for(n, 256, conv_rows, &j);
            int e = (int)cudaMemcpy((uint16_t *)d + r * cols, h, (size_t)(n * cols) * 2, cudaMemcpyHostToDevice);
            if (!e) e = (int)cudaDeviceSynchronize(); /* see upload_f32 */
            if (e) rc = cu_fail(e, "copying the embedding table to the device");
        }
        qt_free(QTOOL_DEVICE_CPU, h);
    }
    if (rc) {
        qt_free(QTOOL_DEVICE_CUDA, d);
        return rc;
    }
    st->tok = d;
    st->dtype = dtype;
    return 0;
}

static int upload_norm(const qt_norm *n, dev_norm *d)
{
    d->w = d->b = NULL;
    if (n->kind == QT_NORM_NONE) return 0;
    int rc = upload_f32(n->weight, n->dim, &d->w);
    if (!rc && n->bias) rc = upload_f32(n->bias, n->dim, &d->b);
    return rc;
}

static void free_norm(dev_norm *d)
{
    qt_free(QTOOL_DEVICE_CUDA, d->w);
    qt_free(QTOOL_DEVICE_CUDA, d->b);
    d->w = d->b = NULL;
}

static void cache_free_all(cuda_state *st);

static void float_weights_free(cuda_state *st, const qt_model *m)
{
    for (size_t i = 0; st->fw && i < m->n_linears; i++) {
        qt_free(QTOOL_DEVICE_CUDA, st->fw[i]);
        st->fw[i] = NULL;
    }
    qt_free(QTOOL_DEVICE_CUDA, st->lt_ws);
    st->lt_ws = NULL;
}

static void state_free(cuda_state *st, const qt_model *m)
{
    if (!st) return;
    /* Every pass ends synchronised and cudaFree waits for the device. */
    qt_free(QTOOL_DEVICE_CUDA, st->tok);
    qt_free(QTOOL_DEVICE_CUDA, st->pos);
    qt_free(QTOOL_DEVICE_CUDA, st->type0);
    free_norm(&st->emb_norm);
    free_norm(&st->final_norm);
    free_norm(&st->head_norm);
    if (st->blk) {
        for (int64_t i = 0; i < 2 * m->cfg.n_layers; i++) free_norm(&st->blk[i]);
        free(st->blk);
    }
    qt_free(QTOOL_DEVICE_CUDA, st->inv_full);
    qt_free(QTOOL_DEVICE_CUDA, st->inv_sliding);
    qt_free(QTOOL_DEVICE_CUDA, st->pre_w);
    qt_free(QTOOL_DEVICE_CUDA, st->pre_b);
    qt_free(QTOOL_DEVICE_CUDA, st->cls_w);
    qt_free(QTOOL_DEVICE_CUDA, st->cls_b);
    if (st->in_scale) {
        for (size_t i = 0; i < m->n_linears; i++) qt_free(QTOOL_DEVICE_CUDA, st->in_scale[i]);
        free(st->in_scale);
    }
    float_weights_free(st, m);
    free(st->fw);
    if (st->lt) cublasLtDestroy((cublasLtHandle_t)st->lt);
    cache_free_all(st);
    free(st->cache);
    qt_free(QTOOL_DEVICE_CUDA, st->meta);
    if (st->h_rows) cudaFreeHost(st->h_rows);
    if (st->prof) {
        for (int i = 0; i <= PROF_MAX; i++) cudaEventDestroy(st->prof->ev[i]);
        free(st->prof);
    }
    free(st);
}

static int state_create(const qt_model *m, cuda_state **out)
{
    const qt_model_config *c = &m->cfg;
    cuda_state *st = calloc(1, sizeof *st);
    if (!st) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    st->m = m;
    int rc = qtk_device_cc(&st->cc_major, &st->cc_minor);
    if (rc) {
        free(st);
        return cu_fail(rc, "querying the device");
    }
    st->blk = calloc((size_t)(2 * c->n_layers), sizeof *st->blk);
    size_t nl = m->n_linears ? m->n_linears : 1;
    st->in_scale = calloc(nl, sizeof *st->in_scale);
    st->fw = calloc(nl, sizeof *st->fw);
    if (!st->blk || !st->in_scale || !st->fw) {
        state_free(st, m);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    rc = upload_tokens(st, m->tok_emb, act_dtype_of(m));
    if (!rc && m->pos_emb) rc = upload_table_f32(m->pos_emb, m->pos_emb->shape[0], &st->pos);
    if (!rc && m->type_emb) rc = upload_table_f32(m->type_emb, 1, &st->type0);
    if (!rc) rc = upload_norm(&m->emb_norm, &st->emb_norm);
    if (!rc) rc = upload_norm(&m->final_norm, &st->final_norm);
    if (!rc) rc = upload_norm(&m->head_norm, &st->head_norm);
    for (int64_t i = 0; !rc && i < c->n_layers; i++) {
        rc = upload_norm(&m->blocks[i].norm1, &st->blk[2 * i]);
        if (!rc) rc = upload_norm(&m->blocks[i].norm2, &st->blk[2 * i + 1]);
    }
    int64_t half = c->head_dim / 2;
    if (!rc && m->inv_freq_full) rc = upload_f32(m->inv_freq_full, half, &st->inv_full);
    if (!rc && m->inv_freq_sliding) rc = upload_f32(m->inv_freq_sliding, half, &st->inv_sliding);
    if (!rc && c->has_head) {
        if (m->has_pre) {
            rc = upload_f32(m->pre.weight, m->pre.in * m->pre.out, &st->pre_w);
            if (!rc && m->pre.bias) rc = upload_f32(m->pre.bias, m->pre.out, &st->pre_b);
        }
        if (!rc) rc = upload_f32(m->classifier.weight, m->classifier.in * m->classifier.out, &st->cls_w);
        if (!rc && m->classifier.bias) rc = upload_f32(m->classifier.bias, m->classifier.out, &st->cls_b);
    }
    const char *pe = getenv("QTOOL_CUDA_OP_TIMES");
    if (!rc && pe && *pe && strcmp(pe, "0") != 0 && (st->prof = calloc(1, sizeof *st->prof))) {
        for (int i = 0; i <= PROF_MAX && !rc; i++)
            if (cudaEventCreate(&st->prof->ev[i]) != cudaSuccess) rc = cu_fail(1, "creating timing events");
    }
    if (rc) {
        state_free(st, m);
        return rc;
    }
    *out = st;
    return 0;
}

void qt_model_cuda_release(qt_model *m)
{
    if (!m || !m->cuda) return;
    state_free(m->cuda, m);
    m->cuda = NULL;
}

int qt_model_cuda_weights_changed(qt_model *m)
{
    cuda_state *st = m ? m->cuda : NULL;
    if (!st) return 0; /* nothing uploaded yet */
    CK(cudaDeviceSynchronize(), "waiting for the device");
    float_weights_free(st, m);
    dev_norm *all[3] = {&st->emb_norm, &st->final_norm, &st->head_norm};
    const qt_norm *src[3] = {&m->emb_norm, &m->final_norm, &m->head_norm};
    int rc = 0;
    for (int i = 0; i < 3 && !rc; i++) {
        free_norm(all[i]);
        rc = upload_norm(src[i], all[i]);
    }
    for (int64_t i = 0; !rc && i < m->cfg.n_layers; i++) {
        free_norm(&st->blk[2 * i]);
        free_norm(&st->blk[2 * i + 1]);
        rc = upload_norm(&m->blocks[i].norm1, &st->blk[2 * i]);
        if (!rc) rc = upload_norm(&m->blocks[i].norm2, &st->blk[2 * i + 1]);
    }
    return rc;
}

/* -------------------------------------------------------------- cache */

static void cache_free_all(cuda_state *st)
{
    size_t k = 0;
    for (size_t i = 0; i < st->n_cache; i++) {
        if (st->cache[i].used) st->cache[k++] = st->cache[i];
        else qt_free(QTOOL_DEVICE_CUDA, st->cache[i].p);
    }
    st->n_cache = k;
}

static void *cache_get(cuda_state *st, size_t bytes)
{
    size_t best = (size_t)-1;
    for (size_t i = 0; i < st->n_cache; i++) {
        cache_block *b = &st->cache[i];
        if (!b->used && b->bytes >= bytes && (best == (size_t)-1 || b->bytes < st->cache[best].bytes)) best = i;
    }
    if (best != (size_t)-1) {
        st->cache[best].used = 1;
        return st->cache[best].p;
    }
    /* Nothing idle fits: give the idle buffers back first so the cache
     * never adds to the peak (cudaFree waits for the device; this happens
     * only when the batch shape grows). */
    cache_free_all(st);
    if (st->n_cache == st->cap_cache) {
        size_t cap = st->cap_cache ? st->cap_cache * 2 : 16;
        cache_block *n = realloc(st->cache, cap * sizeof *n);
        if (!n) {
            qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            return NULL;
        }
        st->cache = n;
        st->cap_cache = cap;
    }
    void *p = qt_alloc(QTOOL_DEVICE_CUDA, bytes, QTOOL_MEM_ACTIVATIONS);
    if (!p) return NULL;
    st->cache[st->n_cache++] = (cache_block){p, bytes, 1};
    return p;
}

static void cache_put(cuda_state *st, void *p)
{
    for (size_t i = 0; i < st->n_cache; i++) {
        if (st->cache[i].p == p) {
            st->cache[i].used = 0;
            return;
        }
    }
    qt_log(QTOOL_LOG_ERROR, "CUDA backend: released a buffer it does not own");
}

/* ------------------------------------------------------------ fusion */

static int flush(cuda_state *st)
{
    if (!st || !st->pending) return 0;
    st->pending = 0;
    qt_mat *x = &st->pend_x, *y = &st->pend_y;
    CK(qtk_add(kdt(x->dtype), x->data, x->ld, y->data, y->ld, x->rows, x->cols, st->stream), "add kernel");
    return 0;
}

#define STATE(be) ((cuda_state *)(be)->state)

static int check_mat(const qt_mat *a, const char *what)
{
    if (a->device != QTOOL_DEVICE_CUDA || (a->dtype != QTOOL_DTYPE_F16 && a->dtype != QTOOL_DTYPE_BF16))
        return qt_fail(QTOOL_ERR_INTERNAL, "CUDA backend: %s is not a half-precision device matrix", what);
    return 0;
}

/* ----------------------------------------------------------- lifecycle */

static int cu_begin(qt_backend *be, const qt_model *m, qt_seqs *s)
{
    if (!m->desc || m->packed_device != QTOOL_DEVICE_CUDA || !m->desc->matmul_cuda)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "the CUDA forward pass needs a model packed for CUDA");
    /* The state belongs to the model (it outlives this pass). */
    qt_model *mm = (qt_model *)m;
    cuda_state *st = mm->cuda;
    int rc;
    if (!st) {
        if ((rc = state_create(m, &st))) return rc;
        mm->cuda = st;
    } else if (st->dtype != act_dtype_of(m)) {
        qt_free(QTOOL_DEVICE_CUDA, st->tok);
        st->tok = NULL;
        if ((rc = upload_tokens(st, m->tok_emb, act_dtype_of(m)))) return rc;
    }
    st->stream = be->stream; /* the last pass ended synchronised: nothing pending elsewhere */
    st->pending = 0;
    be->state = st;

    /* The batch description and the head's scratch in one buffer. */
    int64_t n = s->n, T = s->total, H = m->cfg.hidden_size, C = m->cfg.has_head ? m->cfg.num_labels : 0;
    int64_t n_tiles = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t L = s->offsets[i + 1] - s->offsets[i];
        n_tiles += (L + QTK_ATTN_TILE - 1) / QTK_ATTN_TILE;
    }
    size_t off_bytes = (size_t)(n + 1) * 8, rows_bytes = (size_t)n * 8;
    size_t i32_bytes = ((size_t)T * 3 + (size_t)n_tiles * 2) * 4;
    size_t f_bytes = ((size_t)(2 * n * H) + (size_t)(n * C)) * 4;
    int64_t n_pos = 0, half = m->cfg.head_dim / 2;
    for (int64_t t = 0; t < T; t++)
        if (s->pos[t] >= n_pos) n_pos = (int64_t)s->pos[t] + 1;
    size_t rope_bytes = (size_t)(n_pos * half) * 8;
    size_t host_bytes = off_bytes + i32_bytes;
    size_t need = off_bytes + rows_bytes + i32_bytes + 64 + f_bytes + 2 * (rope_bytes + 16);
    if (need > st->meta_bytes) {
        qt_free(QTOOL_DEVICE_CUDA, st->meta);
        st->meta = NULL;
        st->meta_bytes = 0;
        st->meta = qt_alloc(QTOOL_DEVICE_CUDA, need, QTOOL_MEM_ACTIVATIONS);
        if (!st->meta) return QTOOL_ERR_OUT_OF_MEMORY;
        st->meta_bytes = need;
    }
    char *d = st->meta;
    st->d_offsets = (int64_t *)d;
    st->d_ids = (int32_t *)(d + off_bytes);
    st->d_pos = st->d_ids + T;
    st->d_seq = st->d_pos + T;
    st->d_tiles = st->d_seq + T;
    st->n_tiles = n_tiles;
    size_t fo = (off_bytes + i32_bytes + 15) & ~(size_t)15;
    st->d_rows = (int64_t *)(d + fo);
    fo = (fo + rows_bytes + 15) & ~(size_t)15;
    st->d_pooled = (float *)(d + fo);
    st->d_h1 = st->d_pooled + n * H;
    st->d_logits = st->d_h1 + n * H;
    fo = (fo + f_bytes + 15) & ~(size_t)15;
    st->d_rope_full = m->inv_freq_full ? (float *)(d + fo) : NULL;
    fo = (fo + rope_bytes + 15) & ~(size_t)15;
    st->d_rope_sliding = m->inv_freq_sliding ? (float *)(d + fo) : NULL;

    char *h = qt_alloc(QTOOL_DEVICE_CPU, host_bytes, QTOOL_MEM_ACTIVATIONS);
    if (!h) return QTOOL_ERR_OUT_OF_MEMORY;
    memcpy(h, s->offsets, off_bytes);
    int32_t *hi = (int32_t *)(h + off_bytes);
    memcpy(hi, s->ids, (size_t)T * 4);
    memcpy(hi + T, s->pos, (size_t)T * 4);
    memcpy(hi + 2 * T, s->seq, (size_t)T * 4);
    /* Attention tiles, later query tiles first: under a causal mask they
     * see the most keys, and starting the longest work first leaves the
     * shortest for the end of the grid. */
    int32_t *tl = hi + 3 * T;
    int64_t k = 0;
    for (int64_t q0 = (s->max_len - 1) / QTK_ATTN_TILE * QTK_ATTN_TILE; q0 >= 0; q0 -= QTK_ATTN_TILE)
        for (int64_t i = 0; i < n; i++)
            if (s->offsets[i + 1] - s->offsets[i] > q0) {
                tl[2 * k] = (int32_t)i;
                tl[2 * k + 1] = (int32_t)q0;
                k++;
            }
    if (k != n_tiles) { /* max_len below a sequence's length */
        qt_free(QTOOL_DEVICE_CPU, h);
        return qt_fail(QTOOL_ERR_INTERNAL, "attention tiles: %lld of %lld", (long long)k, (long long)n_tiles);
    }
    /* From pageable memory the copy is staged before the call returns, so
     * the host buffer can go at once. */
    int e = (int)cudaMemcpyAsync(st->meta, h, host_bytes, cudaMemcpyHostToDevice, (cudaStream_t)be->stream);
    qt_free(QTOOL_DEVICE_CPU, h);
    if (e) return cu_fail(e, "copying the batch to the device");
    if (st->d_rope_full)
        CK(qtk_rope_table(st->inv_full, (int)half, m->rope_scaling_full, n_pos, st->d_rope_full, be->stream),
           "RoPE table kernel");
    if (st->d_rope_sliding)
        CK(qtk_rope_table(st->inv_sliding, (int)half, m->rope_scaling_sliding, n_pos, st->d_rope_sliding,
                          be->stream),
           "RoPE table kernel");
    s->dev = st;
    return 0;
}

static void cu_end(qt_backend *be, qt_seqs *s)
{
    cuda_state *st = STATE(be);
    if (!st) return;
    if (flush(st)) qt_log(QTOOL_LOG_ERROR, "%s", qt_last_error());
    prof_report(st);
    cudaError_t e = cudaStreamSynchronize((cudaStream_t)be->stream);
    if (e != cudaSuccess) qt_log(QTOOL_LOG_ERROR, "CUDA forward pass: %s", cudaGetErrorString(e));
    s->dev = NULL;
}

static int cu_alloc(qt_backend *be, qt_mat *t, int64_t rows, int64_t cols)
{
    cuda_state *st = STATE(be);
    memset(t, 0, sizeof *t);
    if (rows < 0 || cols < 0 || (cols && rows > INT64_MAX / 4 / cols))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "activation of %lld x %lld is too large", (long long)rows,
                       (long long)cols);
    size_t bytes = (size_t)(rows * cols) * 2;
    t->data = cache_get(st, bytes ? bytes : 2);
    if (!t->data) return QTOOL_ERR_OUT_OF_MEMORY;
    t->dtype = st->dtype;
    t->device = QTOOL_DEVICE_CUDA;
    t->rows = rows;
    t->cols = cols;
    t->ld = cols;
    return 0;
}

static void cu_release(qt_backend *be, qt_mat *t)
{
    cuda_state *st = STATE(be);
    if (t->data && st) {
        if (flush(st)) qt_log(QTOOL_LOG_ERROR, "%s", qt_last_error());
        cache_put(st, t->data);
    }
    memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------- ops */

static int cu_embed(qt_backend *be, const qt_model *m, const qt_seqs *s, qt_mat *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_EMBED);
    int rc = flush(st);
    if (rc || (rc = check_mat(out, "embedding output"))) return rc;
    CK(qtk_embed(kdt(out->dtype), st->tok, st->type0, st->pos, st->d_ids, st->d_pos, s->total, m->cfg.hidden_size,
                 out->data, out->ld, be->stream),
       "embedding kernel");
    return 0;
}

/* The device copy of a norm of the model. */
static const dev_norm *norm_of(const cuda_state *st, const qt_norm *n)
{
    const qt_model *m = st->m;
    if (n == &m->emb_norm) return &st->emb_norm;
    if (n == &m->final_norm) return &st->final_norm;
    if (n == &m->head_norm) return &st->head_norm;
    for (int64_t i = 0; i < m->cfg.n_layers; i++) {
        if (n == &m->blocks[i].norm1) return &st->blk[2 * i];
        if (n == &m->blocks[i].norm2) return &st->blk[2 * i + 1];
    }
    return NULL;
}

static int cu_norm(qt_backend *be, const qt_norm *n, const qt_mat *x, qt_mat *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_NORM);
    int rc;
    if ((rc = check_mat(x, "norm input")) || (rc = check_mat(out, "norm output"))) return rc;
    const dev_norm *dn = norm_of(st, n);
    if (!dn) return qt_fail(QTOOL_ERR_INTERNAL, "CUDA backend: a norm that is not the model's");
    int kind = n->kind == QT_NORM_LAYER ? 1 : n->kind == QT_NORM_RMS ? 2 : 0;
    const void *res = NULL;
    int64_t ldr = 0;
    if (st->pending && st->pend_x.data == x->data && st->pend_x.ld == x->ld && st->pend_x.cols == x->cols) {
        res = st->pend_y.data; /* x += y fused into this norm */
        ldr = st->pend_y.ld;
        st->pending = 0;
    } else if ((rc = flush(st))) {
        return rc;
    }
    if (!res && kind == 0 && x->data == out->data) return 0;
    CK(qtk_norm(kdt(x->dtype), kind, x->data, x->ld, res, ldr, out->data, out->ld, x->rows, x->cols, dn->w, dn->b,
                n->eps, be->stream),
       "norm kernel");
    return 0;
}

static size_t linear_index(const qt_model *m, const qt_linear *l)
{
    size_t li = 0;
    while (li < m->n_linears && m->linears[li] != l) li++;
    return li;
}

/* Calibration's float Linear: the checkpoint's weight and bias in the
 * activation type (converted on the host, like the token table). */
static int upload_float_linear(cuda_state *st, const qt_linear *l, size_t li)
{
    int64_t N = l->info.out_features, K = l->info.in_features;
    const qtool_tensor *w = l->weight, *b = l->bias;
    if (!w || w->ndim != 2 || w->shape[0] != N || w->shape[1] != K || !w->data)
        return qt_fail(QTOOL_ERR_INTERNAL, "%s: no checkpoint weight to run unpacked", l->name);
    if (w->dtype != QTOOL_DTYPE_F32 && w->dtype != QTOOL_DTYPE_F16 && w->dtype != QTOOL_DTYPE_BF16 &&
        w->dtype != QTOOL_DTYPE_F64)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: weight of type %s", l->name, qt_dtype_name(w->dtype));
    size_t wbytes = (size_t)(N * K) * 2, bbytes = b ? (size_t)N * 2 : 0;
    uint16_t *h = qt_alloc(QTOOL_DEVICE_CPU, wbytes + bbytes, QTOOL_MEM_OTHER);
    float *bf = b ? qt_alloc(QTOOL_DEVICE_CPU, (size_t)N * sizeof(float), QTOOL_MEM_OTHER) : NULL;
    int rc = !h || (b && !bf) ? QTOOL_ERR_OUT_OF_MEMORY : 0;
    if (!rc) {
        conv_job j = {w, 0, st->dtype, h};
        qt_parallel_for(N, 64, conv_rows, &j);
    }
    if (!rc && b) {
        rc = qt_convert_to_f32(bf, b->data, b->dtype, N);
        uint16_t *hb = h + N * K;
        for (int64_t n = 0; !rc && n < N; n++)
            hb[n] = st->dtype == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16(bf[n]) : qtool_f32_to_f16(bf[n]);
    }
    void *d = rc ? NULL : qt_alloc(QTOOL_DEVICE_CUDA, wbytes + bbytes, QTOOL_MEM_WEIGHTS);
    if (!rc && !d) rc = QTOOL_ERR_OUT_OF_MEMORY;
    if (!rc) {
        int e = (int)cudaMemcpy(d, h, wbytes + bbytes, cudaMemcpyHostToDevice);
        if (!e) e = (int)cudaDeviceSynchronize(); /* see upload_f32 */
        if (e) rc = cu_fail(e, "copying a weight to the device");
    }
    qt_free(QTOOL_DEVICE_CPU, h);
    qt_free(QTOOL_DEVICE_CPU, bf);
    if (rc) {
        qt_free(QTOOL_DEVICE_CUDA, d);
        return rc;
    }
    st->fw[li] = d;
    return 0;
}

static int lt_fail(cublasStatus_t s, const char *what)
{
    return qt_fail(s == CUBLAS_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE, "cuBLASLt %s: %s",
                   what, cublasLtGetStatusString(s));
}

/* y[M, N] = x[M, K] w[N, K]^T (+ b), half precision, float32 accumulation. */
static int float_gemm(cuda_state *st, void *stream, const void *x, const void *w, const void *b, void *y, int64_t M,
                      int64_t K, int64_t N)
{
    enum { WS_BYTES = 32 << 20 };
    if (!st->lt) {
        cublasLtHandle_t h;
        cublasStatus_t s = cublasLtCreate(&h);
        if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "create");
        st->lt = h;
    }
    if (!st->lt_ws && !(st->lt_ws = qt_alloc(QTOOL_DEVICE_CUDA, WS_BYTES, QTOOL_MEM_WORKSPACE)))
        return QTOOL_ERR_OUT_OF_MEMORY;
    cudaDataType_t t = st->dtype == QTOOL_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    cublasLtMatmulDesc_t desc = NULL;
    cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    uint64_t ws = WS_BYTES;
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    const float one = 1.0f, zero = 0.0f;
    const char *what = "matmul description";
    cublasStatus_t s = cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!s) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (!s) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (!s && b) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi);
    if (!s && b) s = cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof b);
    if (!s) s = cublasLtMatrixLayoutCreate(&la, t, (uint64_t)K, (uint64_t)N, K);
    if (!s) s = cublasLtMatrixLayoutCreate(&lb, t, (uint64_t)K, (uint64_t)M, K);
    if (!s) s = cublasLtMatrixLayoutCreate(&ld, t, (uint64_t)N, (uint64_t)M, N);
    if (!s) s = cublasLtMatmulPreferenceCreate(&pref);
    if (!s) s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    if (!s) {
        what = "algorithm search";
        s = cublasLtMatmulAlgoGetHeuristic((cublasLtHandle_t)st->lt, desc, la, lb, ld, ld, pref, 1, &res, &found);
        if (!s && !found) s = CUBLAS_STATUS_NOT_SUPPORTED;
    }
    if (!s) {
        what = "matmul";
        s = cublasLtMatmul((cublasLtHandle_t)st->lt, desc, &one, w, la, x, lb, &zero, y, ld, y, ld, &res.algo,
                           st->lt_ws, WS_BYTES, (cudaStream_t)stream);
    }
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (ld) cublasLtMatrixLayoutDestroy(ld);
    if (lb) cublasLtMatrixLayoutDestroy(lb);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (desc) cublasLtMatmulDescDestroy(desc);
    return s ? lt_fail(s, what) : 0;
}

/* y = x W^T + b through the plugin, with `epilogue` (QTOOL_EPILOGUE_*). */
static int cu_linear_ep(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y, int epilogue)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_LINEAR);
    int rc = flush(st); /* a pending residual add reaches y before a residual epilogue reads it */
    if (rc) return rc;
    /* A GLU epilogue returns act(gate) * up: half the Linear's outputs. */
    int64_t K = l->info.in_features, N = l->glu_epilogue ? l->info.out_features / 2 : l->info.out_features;
    if (epilogue == QTOOL_EPILOGUE_RESIDUAL && (!l->packed || m->linear_hook || l->glu_epilogue))
        return qt_fail(QTOOL_ERR_INTERNAL, "%s: residual epilogue on an unpacked or GLU Linear", l->name);
    if (x->cols != K || y->cols != N || x->ld != K || y->ld != N || x->rows != y->rows)
        return qt_fail(QTOOL_ERR_INTERNAL, "%s: linear called with [%lld, %lld] -> [%lld, %lld]", l->name,
                       (long long)x->rows, (long long)x->cols, (long long)y->rows, (long long)y->cols);
    if (!l->packed && m->linear_hook) {
        /* Calibration: a Linear not packed yet runs with its float weights. */
        size_t li = linear_index(m, l);
        if (li == m->n_linears) return qt_fail(QTOOL_ERR_INTERNAL, "%s: not a Linear of the model", l->name);
        if (x->dtype != st->dtype) return qt_fail(QTOOL_ERR_INTERNAL, "%s: activation type changed", l->name);
        if (!st->fw[li] && (rc = upload_float_linear(st, l, li))) return rc;
        const void *bias = l->bias ? (const uint16_t *)st->fw[li] + N * K : NULL;
        return float_gemm(st, be->stream, x->data, st->fw[li], bias, y->data, x->rows, K, N);
    }
    if (!l->packed || m->packed_device != QTOOL_DEVICE_CUDA)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: not packed for CUDA", l->name);
    void *xin = x->data, *scaled = NULL;
    if (l->input_scale) {
        /* The plugin packed W * s; the input must be x / s. */
        size_t li = linear_index(m, l);
        if (li == m->n_linears) return qt_fail(QTOOL_ERR_INTERNAL, "%s: not a Linear of the model", l->name);
        if (!st->in_scale[li] && (rc = upload_f32(l->input_scale, K, &st->in_scale[li]))) return rc;
        scaled = cache_get(st, (size_t)(x->rows * K) * 2);
        if (!scaled) return QTOOL_ERR_OUT_OF_MEMORY;
        int e = qtk_scale_cols(kdt(x->dtype), x->data, K, st->in_scale[li], scaled, K, x->rows, K, be->stream);
        if (e) {
            cache_put(st, scaled);
            return cu_fail(e, "input scale kernel");
        }
        xin = scaled;
    }
    qtool_tensor xt = {0}, yt = {0};
    xt.data = xin;
    xt.dtype = yt.dtype = x->dtype;
    xt.device = yt.device = QTOOL_DEVICE_CUDA;
    xt.ndim = yt.ndim = 2;
    xt.shape[0] = yt.shape[0] = x->rows;
    xt.shape[1] = K;
    yt.data = y->data;
    yt.shape[1] = N;
    qtool_matmul_args a = {0};
    a.struct_size = sizeof a;
    a.epilogue = epilogue;
    a.x = &xt;
    a.y = &yt;
    a.stream = be->stream;
    rc = m->desc->matmul_cuda(l->packed, &a);
    if (scaled) cache_put(st, scaled); /* stream order keeps it intact until the matmul has read it */
    if (rc != QTOOL_OK)
        return qt_fail(rc, "%s: plugin %s matmul failed (%s)", l->name, m->desc->name, qt_status_name(rc));
    return 0;
}

static int cu_linear(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y)
{
    return cu_linear_ep(be, m, l, x, y, l->glu_epilogue);
}

static int cu_linear_residual(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y)
{
    return cu_linear_ep(be, m, l, x, y, QTOOL_EPILOGUE_RESIDUAL);
}

/* The RoPE angle table of this batch for the model's frequencies `host`
 * at `scaling` (built in cu_begin); NULL for anything else. */
static const float *dev_rope_table(const cuda_state *st, const float *host, float scaling)
{
    const qt_model *m = st->m;
    if (host == m->inv_freq_full && scaling == m->rope_scaling_full) return st->d_rope_full;
    if (host == m->inv_freq_sliding && scaling == m->rope_scaling_sliding) return st->d_rope_sliding;
    return NULL;
}

/* With a->rope, k is rotated in place and q inside the attention kernel
 * (qtk_attention), which saves writing and reading q once more. */
static int cu_attention(qt_backend *be, const qt_attn_params *a, const qt_seqs *s, const qt_mat *q,
                        const qt_mat *k, const qt_mat *v, qt_mat *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_ATTN);
    int rc = flush(st);
    if (rc) return rc;
    if (a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads)
        return qt_fail(QTOOL_ERR_INTERNAL, "attention with %lld heads and %lld kv heads", (long long)a->n_heads,
                       (long long)a->n_kv_heads);
    if (a->head_dim > 256 && !qtk_attention_uses_mma(kdt(q->dtype), (int)a->head_dim, st->cc_major))
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "CUDA attention supports head_dim up to 256 (found %lld)",
                       (long long)a->head_dim);
    const float *rope = NULL;
    if (a->rope && !(rope = dev_rope_table(st, a->rope->inv_freq, a->rope->scaling)))
        return qt_fail(QTOOL_ERR_INTERNAL, "CUDA backend: RoPE frequencies or scaling that are not the model's");
    CK(qtk_attention(kdt(q->dtype), q->data, q->ld, k->data, k->ld, v->data, v->ld, out->data, out->ld, st->d_offsets,
                     st->d_seq, st->d_pos, st->d_tiles, st->n_tiles, s->total, (int)a->n_heads, (int)a->n_kv_heads,
                     (int)a->head_dim, a->scale, a->window_left, a->window_right, rope, st->cc_major,
                     be->stream),
       "attention kernel");
    return 0;
}

static int cu_glu(qt_backend *be, int act, const qt_mat *a, const qt_mat *b, qt_mat *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_GLU);
    int rc = flush(st);
    if (rc) return rc;
    CK(qtk_glu(kdt(out->dtype), act, a->data, a->ld, b->data, b->ld, out->data, out->ld, out->rows, out->cols,
               be->stream),
       "GLU kernel");
    return 0;
}

static int cu_act(qt_backend *be, int act, qt_mat *x)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_ACT);
    int rc = flush(st);
    if (rc) return rc;
    if (act == QT_ACT_IDENTITY) return 0;
    CK(qtk_act(kdt(x->dtype), act, x->data, x->ld, x->rows, x->cols, be->stream), "activation kernel");
    return 0;
}

static int cu_add(qt_backend *be, qt_mat *x, const qt_mat *y)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_ADD);
    int rc = flush(st);
    if (rc) return rc;
    st->pending = 1;
    st->pend_x = *x;
    st->pend_y = *y;
    return 0;
}

/* Pools into st->d_pooled [n, H] float32. */
static int pool_device(cuda_state *st, void *stream, int mode, const qt_seqs *s, const int64_t *rows,
                       const qt_mat *x)
{
    int rc = flush(st);
    if (rc) return rc;
    if (mode != QT_POOL_MEAN) {
        if (s->n > st->h_rows_cap) {
            if (st->h_rows) cudaFreeHost(st->h_rows);
            st->h_rows = NULL;
            st->h_rows_cap = 0;
            CK(cudaMallocHost((void **)&st->h_rows, (size_t)s->n * 8), "allocating pinned memory");
            st->h_rows_cap = s->n;
        }
        /* The previous pass ended synchronised: the staging buffer is free. */
        memcpy(st->h_rows, rows, (size_t)s->n * 8);
        CK(cudaMemcpyAsync(st->d_rows, st->h_rows, (size_t)s->n * 8, cudaMemcpyHostToDevice, (cudaStream_t)stream),
           "copying the pooled rows");
    }
    CK(qtk_pool(kdt(x->dtype), mode == QT_POOL_MEAN ? 1 : 0, x->data, x->ld, st->d_rows, st->d_offsets, s->n, x->cols,
                st->d_pooled, stream),
       "pooling kernel");
    return 0;
}

static int cu_pool(qt_backend *be, int mode, const qt_seqs *s, const int64_t *rows, const qt_mat *x, float *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_HEAD);
    int rc = pool_device(st, be->stream, mode, s, rows, x);
    if (rc) return rc;
    CK(cudaMemcpyAsync(out, st->d_pooled, (size_t)(s->n * x->cols) * 4, cudaMemcpyDeviceToHost,
                       (cudaStream_t)be->stream),
       "copying the pooled rows to the host");
    CK(cudaStreamSynchronize((cudaStream_t)be->stream), "forward pass");
    return 0;
}

/* Pooling and the float32 head on the device (float64 accumulation in the
 * dense layers, as the host head). */
static int cu_pool_head(qt_backend *be, const qt_model *m, int mode, const qt_seqs *s, const int64_t *rows,
                        const qt_mat *x, float *pooled, float *logits)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_HEAD);
    const qt_model_config *c = &m->cfg;
    int64_t n = s->n, H = x->cols, C = c->num_labels;
    int rc = pool_device(st, be->stream, mode, s, rows, x);
    if (rc) return rc;
    cudaStream_t stream = (cudaStream_t)be->stream;
    if (logits) {
        const float *in = st->d_pooled;
        if (m->has_pre) {
            CK(qtk_dense_f32(st->d_pooled, st->pre_w, st->pre_b, st->d_h1, n, m->pre.in, m->pre.out, stream),
               "head kernel");
            int bert = c->arch == QT_ARCH_BERT;
            int nk = bert ? 0 : m->head_norm.kind == QT_NORM_LAYER ? 1 : m->head_norm.kind == QT_NORM_RMS ? 2 : 0;
            CK(qtk_head_act_norm(st->d_h1, n, m->pre.out, bert ? QT_ACT_TANH : c->classifier_act, nk,
                                 st->head_norm.w, st->head_norm.b, m->head_norm.eps, stream),
               "head kernel");
            in = st->d_h1;
        }
        CK(qtk_dense_f32(in, st->cls_w, st->cls_b, st->d_logits, n, m->classifier.in, C, stream), "head kernel");
        CK(cudaMemcpyAsync(logits, st->d_logits, (size_t)(n * C) * 4, cudaMemcpyDeviceToHost, stream),
           "copying the logits to the host");
    }
    if (pooled)
        CK(cudaMemcpyAsync(pooled, st->d_pooled, (size_t)(n * H) * 4, cudaMemcpyDeviceToHost, stream),
           "copying the pooled rows to the host");
    CK(cudaStreamSynchronize(stream), "forward pass");
    return 0;
}

static int cu_read(qt_backend *be, const qt_mat *x, float *out)
{
    cuda_state *st = STATE(be);
    prof_mark(st, P_READ);
    int rc = flush(st);
    if (rc) return rc;
    /* Converted on the device: the host only copies (calibration reads
     * every Linear input of a block, gigabytes per model). */
    size_t bytes = (size_t)(x->rows * x->cols) * sizeof(float);
    float *d = cache_get(st, bytes ? bytes : 4);
    if (!d) return QTOOL_ERR_OUT_OF_MEMORY;
    int e = qtk_to_f32(kdt(x->dtype), x->data, x->ld, x->rows, x->cols, d, be->stream);
    if (!e && bytes) e = (int)cudaMemcpyAsync(out, d, bytes, cudaMemcpyDeviceToHost, (cudaStream_t)be->stream);
    if (!e) e = (int)cudaStreamSynchronize((cudaStream_t)be->stream);
    cache_put(st, d);
    return e ? cu_fail(e, "copying activations to the host") : 0;
}

static int cu_copy(qt_backend *be, const qt_mat *x, qt_mat *out)
{
    cuda_state *st = STATE(be);
    int rc = flush(st);
    if (rc || (rc = check_mat(x, "copy input")) || (rc = check_mat(out, "copy output"))) return rc;
    if (out->rows != x->rows || out->cols != x->cols || out->dtype != x->dtype)
        return qt_fail(QTOOL_ERR_INTERNAL, "CUDA backend: copy between shapes that differ");
    CK(cudaMemcpy2DAsync(out->data, (size_t)out->ld * 2, x->data, (size_t)x->ld * 2, (size_t)x->cols * 2,
                         (size_t)x->rows, cudaMemcpyDeviceToDevice, (cudaStream_t)be->stream),
       "copying activations");
    return 0;
}

const qt_backend_ops qt_cuda_backend_ops = {
    .name = "cuda",
    .device = QTOOL_DEVICE_CUDA,
    .begin = cu_begin,
    .end = cu_end,
    .alloc = cu_alloc,
    .release = cu_release,
    .embed = cu_embed,
    .norm = cu_norm,
    .linear = cu_linear,
    .linear_residual = cu_linear_residual,
    .attention = cu_attention,
    .glu = cu_glu,
    .act = cu_act,
    .add = cu_add,
    .pool = cu_pool,
    .read = cu_read,
    .copy = cu_copy,
    .pool_head = cu_pool_head,
};

#else /* !QTOOL_HAVE_CUDA */

/* Without CUDA the table exists so the graph can name it; begin refuses. */
static int nc_begin(qt_backend *be, const qt_model *m, qt_seqs *s)
{
    (void)be;
    (void)m;
    (void)s;
    return qt_fail(QTOOL_ERR_UNSUPPORTED, "this qtool was built without CUDA support: no CUDA forward pass");
}

static void nc_end(qt_backend *be, qt_seqs *s)
{
    (void)be;
    (void)s;
}

static void nc_release(qt_backend *be, qt_mat *t)
{
    (void)be;
    memset(t, 0, sizeof *t);
}

const qt_backend_ops qt_cuda_backend_ops = {
    .name = "cuda",
    .device = QTOOL_DEVICE_CUDA,
    .begin = nc_begin,
    .end = nc_end,
    .release = nc_release,
};

void qt_model_cuda_release(qt_model *m)
{
    (void)m;
}

int qt_model_cuda_weights_changed(qt_model *m)
{
    (void)m;
    return 0;
}

#endif
