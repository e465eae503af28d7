/* The CPU backend: float32 activations, threaded with qt_parallel_for.
 * Float32 throughout, as transformers computes; norm statistics use double
 * accumulators. Every reduction runs in an order fixed by the row alone, so
 * a result never depends on the batch or on how rows are split between
 * threads. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "model_backend.h"
#include "tensor.h"
#include "threads.h"

/* Rows per task: enough work that a chunk is worth a thread hand-off. */
static int64_t grain_for(int64_t work_per_row)
{
    int64_t g = 16384 / (work_per_row > 0 ? work_per_row : 1);
    return g < 1 ? 1 : g;
}

static inline float *row_ptr(const qt_mat *m, int64_t r)
{
    return (float *)m->data + r * m->ld;
}

float qt_act_apply(int act, float x)
{
    switch (act) {
    case QT_ACT_GELU: return 0.5f * x * (1.0f + erff(x * (float)M_SQRT1_2));
    case QT_ACT_GELU_TANH:
        return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case QT_ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case QT_ACT_RELU: return x > 0.0f ? x : 0.0f;
    case QT_ACT_SILU: return x / (1.0f + expf(-x));
    case QT_ACT_TANH: return tanhf(x);
    case QT_ACT_SIGMOID: return 1.0f / (1.0f + expf(-x));
    default: return x;
    }
}

/* ---------------------------------------------------------- lifecycle */

static int cpu_begin(qt_backend *be, const qt_model *m, qt_seqs *s)
{
    (void)be;
    (void)m;
    s->dev = NULL; /* the host arrays are the CPU's own */
    return 0;
}

static void cpu_end(qt_backend *be, qt_seqs *s)
{
    (void)be;
    (void)s;
}

static int cpu_alloc(qt_backend *be, qt_mat *t, int64_t rows, int64_t cols)
{
    (void)be;
    memset(t, 0, sizeof *t);
    if (rows < 0 || cols < 0 || (cols && rows > INT64_MAX / 4 / cols))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "activation of %lld x %lld is too large", (long long)rows,
                       (long long)cols);
    t->data = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(rows * cols) * sizeof(float), QTOOL_MEM_ACTIVATIONS);
    if (!t->data) return QTOOL_ERR_OUT_OF_MEMORY;
    t->dtype = QTOOL_DTYPE_F32;
    t->device = QTOOL_DEVICE_CPU;
    t->rows = rows;
    t->cols = cols;
    t->ld = cols;
    return 0;
}

static void cpu_release(qt_backend *be, qt_mat *t)
{
    (void)be;
    if (t->data) qt_free(QTOOL_DEVICE_CPU, t->data);
    memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------- embedding */

/* Row `r` of a float table (any float dtype) as float32. */
static void table_row(const qtool_tensor *t, int64_t r, float *dst)
{
    int64_t cols = t->shape[1];
    size_t es = qtool_dtype_size(t->dtype);
    qt_convert_to_f32(dst, (const char *)t->data + (size_t)(r * cols) * es, t->dtype, cols);
}

typedef struct embed_job {
    const qt_model *m;
    const qt_seqs *s;
    qt_mat *out;
    atomic_int failed;
} embed_job;

static void embed_rows(void *arg, int64_t b, int64_t e)
{
    embed_job *j = arg;
    const qt_model *m = j->m;
    int64_t H = m->cfg.hidden_size;
    float *tmp = NULL;
    if (m->pos_emb) {
        tmp = malloc((size_t)H * sizeof(float));
        if (!tmp) {
            atomic_store(&j->failed, 1);
            return;
        }
    }
    for (int64_t r = b; r < e; r++) {
        float *y = row_ptr(j->out, r);
        table_row(m->tok_emb, j->s->ids[r], y);
        if (m->type_emb) {
            /* BERT: (words + token_type[0]) + position, in float32 as transformers adds them. */
            table_row(m->type_emb, 0, tmp);
            for (int64_t c = 0; c < H; c++) y[c] = y[c] + tmp[c];
        }
        if (m->pos_emb) {
            table_row(m->pos_emb, j->s->pos[r], tmp);
            for (int64_t c = 0; c < H; c++) y[c] = y[c] + tmp[c];
        }
    }
    free(tmp);
}

static int cpu_embed(qt_backend *be, const qt_model *m, const qt_seqs *s, qt_mat *out)
{
    (void)be;
    embed_job j = {m, s, out, 0};
    qt_parallel_for(s->total, grain_for(m->cfg.hidden_size * 3), embed_rows, &j);
    return atomic_load(&j.failed) ? qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory") : 0;
}

/* -------------------------------------------------------------- norms */

typedef struct norm_job {
    const qt_norm *n;
    const qt_mat *x;
    qt_mat *out;
} norm_job;

static void norm_row(const qt_norm *n, const float *x, float *y)
{
    int64_t H = n->dim;
    if (n->kind == QT_NORM_LAYER) {
        double mean = 0, var = 0;
        for (int64_t c = 0; c < H; c++) mean += x[c];
        mean /= (double)H;
        for (int64_t c = 0; c < H; c++) {
            double d = x[c] - mean;
            var += d * d;
        }
        var /= (double)H;
        double rstd = 1.0 / sqrt(var + (double)n->eps);
        for (int64_t c = 0; c < H; c++) {
            double v = (x[c] - mean) * rstd * n->weight[c];
            if (n->bias) v += n->bias[c];
            y[c] = (float)v;
        }
    } else if (n->kind == QT_NORM_RMS) {
        /* weight * (x * rsqrt(mean(x^2) + eps)), float32 products as in transformers. */
        double ss = 0;
        for (int64_t c = 0; c < H; c++) ss += (double)x[c] * x[c];
        float r = (float)(1.0 / sqrt((double)(float)(ss / (double)H) + (double)n->eps));
        for (int64_t c = 0; c < H; c++) y[c] = n->weight[c] * (x[c] * r);
    } else if (y != x) {
        memcpy(y, x, (size_t)H * sizeof(float));
    }
}

static void norm_rows(void *arg, int64_t b, int64_t e)
{
    norm_job *j = arg;
    for (int64_t r = b; r < e; r++) norm_row(j->n, row_ptr(j->x, r), row_ptr(j->out, r));
}

static int cpu_norm(qt_backend *be, const qt_norm *n, const qt_mat *x, qt_mat *out)
{
    (void)be;
    if (n->kind == QT_NORM_NONE && x->data == out->data) return 0;
    norm_job j = {n, x, out};
    qt_parallel_for(x->rows, grain_for(x->cols * 4), norm_rows, &j);
    return 0;
}

/* The head (on the host) normalises with the same code. */
void qt_cpu_norm_row(const qt_norm *n, const float *x, float *y)
{
    norm_row(n, x, y);
}

/* ------------------------------------------------------------- linear */

typedef struct dense_job {
    const float *x, *w, *b;
    float *y;
    int64_t K, N;
} dense_job;

static void dense_rows(void *arg, int64_t b, int64_t e)
{
    dense_job *j = arg;
    for (int64_t r = b; r < e; r++) {
        const float *x = j->x + r * j->K;
        float *y = j->y + r * j->N;
        for (int64_t n = 0; n < j->N; n++) {
            const float *w = j->w + n * j->K;
            double acc = 0;
            for (int64_t k = 0; k < j->K; k++) acc += (double)x[k] * w[k];
            if (j->b) acc += j->b[n];
            y[n] = (float)acc;
        }
    }
}

/* The unpacked path: the checkpoint's weights in float32 (calibration). */
static int dense_fallback(qt_linear *l, const qt_mat *x, qt_mat *y)
{
    int64_t N = l->info.out_features, K = l->info.in_features;
    float *w = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(N * K) * sizeof(float), QTOOL_MEM_WORKSPACE);
    float *bias = NULL;
    if (!w) return QTOOL_ERR_OUT_OF_MEMORY;
    qt_convert_to_f32(w, l->weight->data, l->weight->dtype, N * K);
    if (l->bias) {
        bias = qt_alloc(QTOOL_DEVICE_CPU, (size_t)N * sizeof(float), QTOOL_MEM_WORKSPACE);
        if (!bias) {
            qt_free(QTOOL_DEVICE_CPU, w);
            return QTOOL_ERR_OUT_OF_MEMORY;
        }
        qt_convert_to_f32(bias, l->bias->data, l->bias->dtype, N);
    }
    dense_job j = {x->data, w, bias, y->data, K, N};
    qt_parallel_for(x->rows, grain_for(N * K), dense_rows, &j);
    qt_free(QTOOL_DEVICE_CPU, w);
    qt_free(QTOOL_DEVICE_CPU, bias);
    return 0;
}

static int cpu_linear(qt_backend *be, const qt_model *m, qt_linear *l, const qt_mat *x, qt_mat *y)
{
    (void)be;
    int64_t K = l->info.in_features, N = l->info.out_features;
    if (x->cols != K || y->cols != N || x->ld != K || y->ld != N || x->rows != y->rows)
        return qt_fail(QTOOL_ERR_INTERNAL, "%s: linear called with [%lld, %lld] -> [%lld, %lld]", l->name,
                       (long long)x->rows, (long long)x->cols, (long long)y->rows, (long long)y->cols);
    if (!l->packed) return dense_fallback(l, x, y);
    if (l->glu_epilogue) /* packed for CUDA only (model_calib.c) */
        return qt_fail(QTOOL_ERR_INTERNAL, "%s: a GLU epilogue on the CPU", l->name);
    if (m->packed_device != QTOOL_DEVICE_CPU)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: packed for CUDA, run on the CPU", l->name);
    float *scaled = NULL;
    const float *xin = x->data;
    if (l->input_scale) {
        /* The plugin packed W * s; the input must be x / s. */
        scaled = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(x->rows * K) * sizeof(float), QTOOL_MEM_ACTIVATIONS);
        if (!scaled) return QTOOL_ERR_OUT_OF_MEMORY;
        const float *src = x->data;
        for (int64_t r = 0; r < x->rows; r++)
            for (int64_t k = 0; k < K; k++) scaled[r * K + k] = src[r * K + k] / l->input_scale[k];
        xin = scaled;
    }
    qtool_tensor xt = {0}, yt = {0};
    xt.data = (void *)xin;
    xt.dtype = yt.dtype = QTOOL_DTYPE_F32;
    xt.device = yt.device = QTOOL_DEVICE_CPU;
    xt.ndim = yt.ndim = 2;
    xt.shape[0] = yt.shape[0] = x->rows;
    xt.shape[1] = K;
    yt.data = y->data;
    yt.shape[1] = N;
    qtool_matmul_args a = {0};
    a.struct_size = sizeof a;
    a.x = &xt;
    a.y = &yt;
    a.stream = NULL;
    int rc = m->desc->matmul_cpu(l->packed, &a);
    qt_free(QTOOL_DEVICE_CPU, scaled);
    if (rc != QTOOL_OK)
        return qt_fail(rc, "%s: plugin %s matmul failed (%s)", l->name, m->desc->name, qt_status_name(rc));
    return 0;
}

/* --------------------------------------------------------------- RoPE */

typedef struct rope_job {
    const qt_rope_params *r;
    const qt_seqs *s;
    qt_mat *x;
    atomic_int failed;
} rope_job;

static void rope_rows(void *arg, int64_t b, int64_t e)
{
    rope_job *j = arg;
    int64_t d = j->r->head_dim, half = d / 2;
    float *cs = malloc((size_t)half * 2 * sizeof(float));
    if (!cs) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *sn = cs + half;
    for (int64_t r = b; r < e; r++) {
        /* freqs = position (float32) * inv_freq (float32), as transformers. */
        float p = (float)j->s->pos[r];
        for (int64_t i = 0; i < half; i++) {
            float ang = p * j->r->inv_freq[i];
            cs[i] = (float)cos((double)ang) * j->r->scaling;
            sn[i] = (float)sin((double)ang) * j->r->scaling;
        }
        float *row = row_ptr(j->x, r);
        for (int64_t h = 0; h < j->r->n_heads; h++) {
            float *v = row + h * d;
            for (int64_t i = 0; i < half; i++) {
                float x1 = v[i], x2 = v[i + half];
                v[i] = x1 * cs[i] - x2 * sn[i];
                v[i + half] = x2 * cs[i] + x1 * sn[i];
            }
        }
    }
    free(cs);
}

static int cpu_rope(const qt_rope_params *r, const qt_seqs *s, qt_mat *x)
{
    rope_job j = {r, s, x, 0};
    qt_parallel_for(x->rows, grain_for(r->n_heads * r->head_dim * 4), rope_rows, &j);
    return atomic_load(&j.failed) ? qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory") : 0;
}

/* ---------------------------------------------------------- attention */

typedef struct attn_job {
    const qt_attn_params *a;
    const qt_seqs *s;
    const qt_mat *q, *k, *v;
    qt_mat *out;
    atomic_int failed;
} attn_job;

/* Eight float lanes (GCC/Clang vector extension): SSE2 everywhere, AVX2
 * where the function is cloned for it. Lanes are independent and C11 mode
 * does not contract a*b+c into FMA, so every clone gives the same bits. */
typedef float qt_v8 __attribute__((vector_size(32)));
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define QT_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define QT_CLONES
#endif

/* The summation order depends only on the length, never on the batch. */
static inline float dotf(const float *a, const float *b, int64_t n)
{
    qt_v8 acc = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        qt_v8 x, y;
        memcpy(&x, a + c, sizeof x);
        memcpy(&y, b + c, sizeof y);
        acc += x * y;
    }
    float t = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; c < n; c++) t += a[c] * b[c];
    return t;
}

/* y += w * x */
static inline void axpyf(float *y, float w, const float *x, int64_t n)
{
    int64_t c = 0;
    qt_v8 wv = {w, w, w, w, w, w, w, w};
    for (; c + 8 <= n; c += 8) {
        qt_v8 r, xv;
        memcpy(&r, y + c, sizeof r);
        memcpy(&xv, x + c, sizeof xv);
        r += wv * xv;
        memcpy(y + c, &r, sizeof r);
    }
    for (; c < n; c++) y[c] += w * x[c];
}

/* One (token, head) pair per item: scores, softmax (float32, as
 * transformers' eager attention), weighted sum of values. */
QT_CLONES static void attn_items(void *arg, int64_t b, int64_t e)
{
    attn_job *j = arg;
    const qt_attn_params *a = j->a;
    int64_t d = a->head_dim, group = a->n_heads / a->n_kv_heads;
    float *p = malloc((size_t)(j->s->max_len + d) * sizeof(float));
    if (!p) {
        atomic_store(&j->failed, 1);
        return;
    }
    float *acc = p + j->s->max_len;
    for (int64_t it = b; it < e; it++) {
        int64_t t = it / a->n_heads, h = it % a->n_heads, kh = h / group;
        int64_t sq = j->s->seq[t], i = j->s->pos[t];
        int64_t base = j->s->offsets[sq], len = j->s->offsets[sq + 1] - base;
        int64_t lo = a->window_left < 0 ? 0 : i - a->window_left;
        int64_t hi = a->window_right < 0 ? len - 1 : i + a->window_right;
        if (lo < 0) lo = 0;
        if (hi > len - 1) hi = len - 1;
        const float *qv = row_ptr(j->q, t) + h * d;
        float mx = -INFINITY;
        for (int64_t jj = lo; jj <= hi; jj++) {
            float sc = dotf(qv, row_ptr(j->k, base + jj) + kh * d, d) * a->scale;
            p[jj - lo] = sc;
            if (sc > mx) mx = sc;
        }
        double sum = 0;
        for (int64_t jj = lo; jj <= hi; jj++) {
            p[jj - lo] = expf(p[jj - lo] - mx);
            sum += p[jj - lo];
        }
        float inv = (float)(1.0 / sum);
        for (int64_t c = 0; c < d; c++) acc[c] = 0;
        for (int64_t jj = lo; jj <= hi; jj++) {
            axpyf(acc, p[jj - lo] * inv, row_ptr(j->v, base + jj) + kh * d, d);
        }
        memcpy(row_ptr(j->out, t) + h * d, acc, (size_t)d * sizeof(float));
    }
    free(p);
}

static int cpu_attention(qt_backend *be, const qt_attn_params *a, const qt_seqs *s, const qt_mat *q,
                         const qt_mat *k, const qt_mat *v, qt_mat *out)
{
    (void)be;
    if (a->n_kv_heads < 1 || a->n_heads % a->n_kv_heads)
        return qt_fail(QTOOL_ERR_INTERNAL, "attention with %lld heads and %lld kv heads", (long long)a->n_heads,
                       (long long)a->n_kv_heads);
    if (a->rope) {
        qt_rope_params rp = *a->rope;
        qt_mat qr = *q, kr = *k;
        rp.head_dim = a->head_dim;
        rp.n_heads = a->n_heads;
        int rc = cpu_rope(&rp, s, &qr);
        if (rc) return rc;
        rp.n_heads = a->n_kv_heads;
        if ((rc = cpu_rope(&rp, s, &kr))) return rc;
    }
    attn_job j = {a, s, q, k, v, out, 0};
    int64_t work = s->max_len * a->head_dim * 2;
    qt_parallel_for(s->total * a->n_heads, grain_for(work), attn_items, &j);
    return atomic_load(&j.failed) ? qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory") : 0;
}

/* -------------------------------------------------------- elementwise */

typedef struct ew_job {
    int act;
    const qt_mat *a, *b;
    qt_mat *out;
} ew_job;

static void glu_rows(void *arg, int64_t b, int64_t e)
{
    ew_job *j = arg;
    for (int64_t r = b; r < e; r++) {
        const float *x = row_ptr(j->a, r), *g = row_ptr(j->b, r);
        float *y = row_ptr(j->out, r);
        for (int64_t c = 0; c < j->out->cols; c++) y[c] = qt_act_apply(j->act, x[c]) * g[c];
    }
}

static int cpu_glu(qt_backend *be, int act, const qt_mat *a, const qt_mat *b, qt_mat *out)
{
    (void)be;
    ew_job j = {act, a, b, out};
    qt_parallel_for(out->rows, grain_for(out->cols * 8), glu_rows, &j);
    return 0;
}

static void act_rows(void *arg, int64_t b, int64_t e)
{
    ew_job *j = arg;
    for (int64_t r = b; r < e; r++) {
        float *y = row_ptr(j->out, r);
        for (int64_t c = 0; c < j->out->cols; c++) y[c] = qt_act_apply(j->act, y[c]);
    }
}

static int cpu_act(qt_backend *be, int act, qt_mat *x)
{
    (void)be;
    ew_job j = {act, NULL, NULL, x};
    qt_parallel_for(x->rows, grain_for(x->cols * 8), act_rows, &j);
    return 0;
}

static void add_rows(void *arg, int64_t b, int64_t e)
{
    ew_job *j = arg;
    for (int64_t r = b; r < e; r++) {
        float *y = row_ptr(j->out, r);
        const float *x = row_ptr(j->a, r);
        for (int64_t c = 0; c < j->out->cols; c++) y[c] = y[c] + x[c];
    }
}

static int cpu_add(qt_backend *be, qt_mat *x, const qt_mat *y)
{
    (void)be;
    ew_job j = {0, y, NULL, x};
    qt_parallel_for(x->rows, grain_for(x->cols), add_rows, &j);
    return 0;
}

/* ------------------------------------------------------------ pooling */

static int cpu_pool(qt_backend *be, int mode, const qt_seqs *s, const int64_t *rows, const qt_mat *x, float *out)
{
    (void)be;
    int64_t H = x->cols;
    for (int64_t i = 0; i < s->n; i++) {
        float *y = out + i * H;
        if (mode == QT_POOL_MEAN) {
            int64_t b = s->offsets[i], e = s->offsets[i + 1];
            for (int64_t c = 0; c < H; c++) {
                double acc = 0;
                for (int64_t r = b; r < e; r++) acc += row_ptr(x, r)[c];
                y[c] = (float)(acc / (double)(e - b));
            }
        } else {
            memcpy(y, row_ptr(x, rows[i]), (size_t)H * sizeof(float));
        }
    }
    return 0;
}

static int cpu_read(qt_backend *be, const qt_mat *x, float *out)
{
    (void)be;
    for (int64_t r = 0; r < x->rows; r++) memcpy(out + r * x->cols, row_ptr(x, r), (size_t)x->cols * sizeof(float));
    return 0;
}

static int cpu_copy(qt_backend *be, const qt_mat *x, qt_mat *out)
{
    (void)be;
    if (out->rows != x->rows || out->cols != x->cols)
        return qt_fail(QTOOL_ERR_INTERNAL, "CPU backend: copy between shapes that differ");
    for (int64_t r = 0; r < x->rows; r++) memcpy(row_ptr(out, r), row_ptr(x, r), (size_t)x->cols * sizeof(float));
    return 0;
}

const qt_backend_ops qt_cpu_backend_ops = {
    .name = "cpu",
    .device = QTOOL_DEVICE_CPU,
    .begin = cpu_begin,
    .end = cpu_end,
    .alloc = cpu_alloc,
    .release = cpu_release,
    .embed = cpu_embed,
    .norm = cpu_norm,
    .linear = cpu_linear,
    .attention = cpu_attention,
    .glu = cpu_glu,
    .act = cpu_act,
    .add = cpu_add,
    .pool = cpu_pool,
    .read = cpu_read,
    .copy = cpu_copy,
};
