/* awq: activation-aware weight quantization (Lin et al. 2023) as AutoAWQ
 * does it, one Linear at a time: per input channel mean |x| from
 * calibration, a 20-point search of the scale s = x_mean^a / w_mean^(1-a)
 * minimising the layer's output error on sampled inputs, a clipping search
 * per output channel and group, then asymmetric uint4 with fp16 scales in
 * groups along the input. The packed weight is Q(W * s); the runtime
 * divides the layer input by s (or folds 1/s into what precedes it).
 * Checkpoints use AutoAWQ's GEMM layout. */
#include <qtool/plugin.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "int4g/int4g.h"
#include "int4g/int4g_dense.h"
#ifdef QTOOL_HAVE_CUDA
#include "awq_search_cuda.h"
#endif

#define AWQ_GRID 20       /* scale search: alpha = i / 20, i = 0..19 */
#define AWQ_CLIP_STEPS 10 /* clipping: max * (1 - i / 20), i = 0..9 */
#define AWQ_ROW_CHUNK 16

/* nibble i of a packed int32 holds column 8 * c + order[i] (AutoAWQ's
 * WQLinear_GEMM.from_linear) */
static const int awq_order[8] = {0, 2, 4, 6, 1, 3, 5, 7};

enum { AWQ_SEARCH_AUTO = 0, AWQ_SEARCH_CPU = 1, AWQ_SEARCH_CUDA = 2 };

typedef struct awq_instance {
    int4g_ctx c;
    int64_t group_size; /* -1: one group per row */
    int duo_scaling;
    int clip;
    int64_t calib_rows;
    int share_scale;
    int search_device; /* AWQ_SEARCH_* */
    void *blas;        /* cuBLAS handle of the CUDA searches, created on first use */
    int4g_store store;
    struct shared_scale *shared; /* share_scale: one scale per (block, input group) */
} awq_instance;

/* The scale chosen for the first packed layer of an input group (q/k/v,
 * gate/up) of a block, reused by the others so that the runtime can fold
 * it into the norm they share. */
typedef struct shared_scale {
    int32_t block;
    int group;
    int64_t K;
    float *s;
    struct shared_scale *next;
} shared_scale;

/* What calibration keeps per layer. */
typedef struct awq_stats {
    int64_t K;
    double *abs_sum; /* [K] sum of |x| */
    int64_t count;   /* rows seen */
    float *rows;     /* [cap, K] reservoir sample of input rows */
    int64_t cap, nrows;
    uint64_t rng;
} awq_stats;

static const qtool_option_desc awq_options[] = {
    {"group_size", QTOOL_OPT_INT, "128", "input channels per scale/zero: a multiple of 32, or -1 for one group per row",
     NULL, -1, 65536},
    {"duo_scaling", QTOOL_OPT_BOOL, "1", "scale search uses x_mean^a / w_mean^(1-a) (AutoAWQ) instead of x_mean^a", NULL,
     0, -1},
    {"clip", QTOOL_OPT_BOOL, "1", "search a clipping range per output channel and group (not for q/k projections)",
     NULL, 0, -1},
    {"calib_rows", QTOOL_OPT_INT, "512", "input rows kept per layer (reservoir sample) for the searches", NULL, 16,
     65536},
    {"share_scale", QTOOL_OPT_BOOL, "0",
     "q/k/v and gate/up of a block take the scale searched for the first of them packed (foldable into the norm)",
     NULL, 0, -1},
    {"cuda_kernel", QTOOL_OPT_ENUM, "auto",
     "CUDA kernel: auto, gemv (fused dequantize), dequant_gemm (fp16 workspace + cuBLASLt)", "auto|gemv|dequant_gemm", 0,
     -1},
    {"search_device", QTOOL_OPT_ENUM, "auto",
     "where the scale and clipping searches run: auto (the GPU when the instance has one), cpu, cuda", "auto|cpu|cuda",
     0, -1},
};

/* Input groups: Linears that read the same activations. */
static int input_group(int role)
{
    switch (role) {
    case QTOOL_ROLE_ATTN_Q: case QTOOL_ROLE_ATTN_K: case QTOOL_ROLE_ATTN_V: case QTOOL_ROLE_ATTN_QKV: return 1;
    case QTOOL_ROLE_FFN_GATE: case QTOOL_ROLE_FFN_UP: case QTOOL_ROLE_FFN_GATE_UP: return 2;
    default: return 0;
    }
}

static void shared_release(shared_scale **head, int32_t before_block, int all)
{
    shared_scale **pp = head;
    while (*pp) {
        shared_scale *e = *pp;
        if (all || e->block < before_block) {
            *pp = e->next;
            free(e->s);
            free(e);
        } else {
            pp = &e->next;
        }
    }
}

static shared_scale *shared_find(shared_scale *head, int32_t block, int group, int64_t K)
{
    for (shared_scale *e = head; e; e = e->next)
        if (e->block == block && e->group == group && e->K == K) return e;
    return NULL;
}

/* ------------------------------------------------------------ quantizer */

/* AutoAWQ's zero-point quantizer on one group, with the scale rounded to
 * the fp16 it is stored as. Writes codes and/or dequantized values. */
static void quant_group(const float *w, int64_t n, float lo_clip, float hi_clip, uint8_t *codes, float *deq,
                        uint16_t *scale_out, uint8_t *zero_out)
{
    float mx = -INFINITY, mn = INFINITY;
    for (int64_t i = 0; i < n; i++) {
        float v = fminf(fmaxf(w[i], lo_clip), hi_clip);
        mx = fmaxf(mx, v);
        mn = fminf(mn, v);
    }
    float range = mx - mn;
    if (!(range >= 1e-5f)) range = 1e-5f;
    uint16_t s16 = int4g_scale_to_f16((double)range / 15.0);
    float s = qtool_f16_to_f32(s16);
    float z = -rintf(mn / s);
    z = fminf(fmaxf(z, 0.0f), 15.0f);
    for (int64_t i = 0; i < n; i++) {
        float v = fminf(fmaxf(w[i], lo_clip), hi_clip);
        float q = fminf(fmaxf(rintf(v / s) + z, 0.0f), 15.0f);
        if (codes) codes[i] = (uint8_t)q;
        if (deq) deq[i] = (q - z) * s;
    }
    if (scale_out) *scale_out = s16;
    if (zero_out) *zero_out = (uint8_t)z;
}

/* ------------------------------------------------------------ calibration */

static void stats_release(const int4g_ctx *c, void *data)
{
    awq_stats *st = data;
    int4g_tmp_free(c, st->abs_sum);
    int4g_tmp_free(c, st->rows);
    free(st);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* The reservoir's seed depends only on the layer's name, so a rerun on the
 * same data keeps the same rows. */
static uint64_t name_seed(const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (const char *p = name ? name : ""; *p; p++) h = (h ^ (unsigned char)*p) * 0x100000001b3ULL;
    return h ^ 0x617771u;
}

typedef struct abs_sum_job {
    const float *x; /* [T, K] */
    int64_t T, K;
    double *sum; /* [K] */
} abs_sum_job;

static void abs_sum_cols(void *arg, int64_t b0, int64_t b1)
{
    abs_sum_job *j = arg;
    int64_t k0 = b0 * 64, k1 = b1 * 64 < j->K ? b1 * 64 : j->K;
    for (int64_t t = 0; t < j->T; t++) {
        const float *r = j->x + t * j->K;
        for (int64_t k = k0; k < k1; k++) j->sum[k] += fabsf(r[k]);
    }
}

static void par(const int4g_ctx *c, int64_t n, qtool_parallel_fn fn, void *arg);

static int awq_calibrate(qtool_instance *qi, const qtool_layer_info *layer, const qtool_tensor *x)
{
    awq_instance *inst = (awq_instance *)qi;
    if (!inst) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    int64_t T = 0;
    int rc = int4g_check_calib(c, layer, x, &T);
    if (rc) return rc;
    int64_t K = x->shape[x->ndim - 1];
    int64_t G = inst->group_size == -1 ? K : inst->group_size;
    if (K % 32 != 0 || K % G != 0) {
        /* pack will refuse this layer; nothing to keep */
        int4g_log(c, QTOOL_LOG_DEBUG, "awq calibrate: %s: K = %lld cannot be packed; input ignored",
                  layer->name ? layer->name : "?", (long long)K);
        return QTOOL_OK;
    }
    const float *xv = x->data;
    pthread_mutex_lock(&inst->store.lock);
    int4g_stats *e = int4g_store_get(&inst->store, layer, 1);
    if (!e) {
        pthread_mutex_unlock(&inst->store.lock);
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq calibrate: out of memory");
    }
    awq_stats *st = e->data;
    if (!st) {
        st = calloc(1, sizeof *st);
        if (st) {
            st->K = K;
            st->cap = inst->calib_rows;
            st->rng = name_seed(e->name);
            st->abs_sum = int4g_tmp_alloc(c, (size_t)K * sizeof(double));
            st->rows = int4g_tmp_alloc(c, (size_t)(st->cap * K) * sizeof(float));
            if (st->abs_sum) memset(st->abs_sum, 0, (size_t)K * sizeof(double));
        }
        if (!st || !st->abs_sum || !st->rows) {
            if (st) stats_release(c, st);
            pthread_mutex_unlock(&inst->store.lock);
            return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq calibrate: out of memory for the statistics of %s",
                              e->name);
        }
        e->data = st;
        e->release = stats_release;
        e->K = K;
    }
    if (st->K != K) {
        pthread_mutex_unlock(&inst->store.lock);
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "awq calibrate: %s: input has %lld features, earlier %lld",
                          e->name, (long long)K, (long long)st->K);
    }
    /* Column sums on the host's threads, columns split between them: each
     * column still adds its rows in order, so the sums do not depend on the
     * thread count. */
    abs_sum_job aj = {xv, T, K, st->abs_sum};
    par(c, (K + 63) / 64, abs_sum_cols, &aj);
    for (int64_t t = 0; t < T; t++) {
        const float *r = xv + t * K;
        /* Algorithm R: after c rows every row is in the sample with
         * probability cap / c. */
        int64_t slot = -1;
        if (st->nrows < st->cap) {
            slot = st->nrows++;
        } else {
            uint64_t j = splitmix(&st->rng) % (uint64_t)(st->count + 1);
            if (j < (uint64_t)st->cap) slot = (int64_t)j;
        }
        if (slot >= 0) memcpy(st->rows + slot * K, r, (size_t)K * sizeof(float));
        st->count++;
    }
    pthread_mutex_unlock(&inst->store.lock);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ search */

typedef struct search_job {
    const float *W;  /* [N, K] */
    const float *X;  /* [T, K] sample rows */
    const float *s;  /* [K] candidate scale */
    int64_t N, K, G, T;
    double *partial; /* per chunk */
    int failed;
    const int4g_ctx *c;
} search_job;

/* Output error of Q(W s) / s on the sample, rows of W in chunks. */
static void search_chunks(void *arg, int64_t c0, int64_t c1)
{
    search_job *j = arg;
    const int64_t K = j->K, T = j->T;
    float *d = int4g_tmp_alloc(j->c, (size_t)(AWQ_ROW_CHUNK * K + K + T * AWQ_ROW_CHUNK) * sizeof(float));
    if (!d) {
        j->failed = 1;
        return;
    }
    float *ws = d + AWQ_ROW_CHUNK * K, *E = ws + K;
    for (int64_t ch = c0; ch < c1; ch++) {
        int64_t n0 = ch * AWQ_ROW_CHUNK, n1 = n0 + AWQ_ROW_CHUNK < j->N ? n0 + AWQ_ROW_CHUNK : j->N;
        for (int64_t n = n0; n < n1; n++) {
            const float *w = j->W + n * K;
            float *dr = d + (n - n0) * K;
            for (int64_t k = 0; k < K; k++) ws[k] = w[k] * j->s[k];
            for (int64_t g0 = 0; g0 < K; g0 += j->G) quant_group(ws + g0, j->G, -INFINITY, INFINITY, NULL, dr + g0, NULL, NULL);
            for (int64_t k = 0; k < K; k++) dr[k] = w[k] - dr[k] / j->s[k];
        }
        int64_t nr = n1 - n0;
        memset(E, 0, (size_t)(T * nr) * sizeof(float));
        int4g_gemm_nt_f32(T, nr, K, 1.0f, j->X, K, d, K, E, nr);
        double e2 = 0;
        for (int64_t i = 0; i < T * nr; i++) e2 += (double)E[i] * E[i];
        j->partial[ch] = e2;
    }
    int4g_tmp_free(j->c, d);
}

typedef struct clip_job {
    float *W;            /* [N, K] already scaled; clipped in place */
    const float *gram;   /* [ngroups, G, G] */
    int64_t N, K, G;
    const int4g_ctx *c;
    int failed;
} clip_job;

/* Per output channel and group: the clipping bound max * (1 - i/20) whose
 * output error d^T (X_g^T X_g) d on the sample is least (AutoAWQ's
 * _compute_best_clip, in Gram form). */
static void clip_rows(void *arg, int64_t n0, int64_t n1)
{
    clip_job *j = arg;
    const int64_t G = j->G;
    float *buf = int4g_tmp_alloc(j->c, (size_t)(3 * G) * sizeof(float));
    if (!buf) {
        j->failed = 1;
        return;
    }
    float *deq = buf, *d = buf + G, *gd = d + G;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t g0 = 0; g0 < j->K; g0 += G) {
            float *w = j->W + n * j->K + g0;
            const float *S = j->gram + (g0 / G) * G * G;
            float amax = 0;
            for (int64_t i = 0; i < G; i++) amax = fmaxf(amax, fabsf(w[i]));
            double best = INFINITY;
            float best_mv = amax;
            for (int st = 0; st < AWQ_CLIP_STEPS; st++) {
                float mv = amax * (1.0f - (float)st / (float)AWQ_GRID);
                quant_group(w, G, -mv, mv, NULL, deq, NULL, NULL);
                for (int64_t i = 0; i < G; i++) d[i] = w[i] - deq[i];
                memset(gd, 0, (size_t)G * sizeof(float));
                int4g_gemm_nt_f32(G, 1, G, 1.0f, S, G, d, G, gd, 1);
                double err = 0;
                for (int64_t i = 0; i < G; i++) err += (double)d[i] * gd[i];
                if (err < best) {
                    best = err;
                    best_mv = mv;
                }
            }
            for (int64_t i = 0; i < G; i++) w[i] = fminf(fmaxf(w[i], -best_mv), best_mv);
        }
    }
    int4g_tmp_free(j->c, buf);
}

typedef struct gram_job {
    const float *XT; /* [K, T] */
    float *gram;
    int64_t K, G, T;
} gram_job;

static void gram_groups(void *arg, int64_t g0, int64_t g1)
{
    gram_job *j = arg;
    for (int64_t g = g0; g < g1; g++) {
        float *S = j->gram + g * j->G * j->G;
        memset(S, 0, (size_t)(j->G * j->G) * sizeof(float));
        const float *A = j->XT + g * j->G * j->T;
        int4g_gemm_nt_f32(j->G, j->G, j->T, 1.0f, A, j->T, A, j->T, S, j->G);
    }
}

static void par(const int4g_ctx *c, int64_t n, qtool_parallel_fn fn, void *arg)
{
    const qtool_host_services *h = c->host;
    if (h->parallel_for)
        h->parallel_for(h->ctx, n, 1, fn, arg);
    else
        fn(arg, 0, n);
}

static int role_skips_clip(int role)
{
    return role == QTOOL_ROLE_ATTN_Q || role == QTOOL_ROLE_ATTN_K || role == QTOOL_ROLE_ATTN_QKV;
}

/* Whether the searches run on the GPU: search_device=cuda, or auto with
 * an instance created for a CUDA device. Creates the cuBLAS handle. */
static int search_on_cuda(awq_instance *inst, int *on_cuda)
{
    *on_cuda = 0;
#ifdef QTOOL_HAVE_CUDA
    const qtool_host_services *h = inst->c.host;
    if (inst->search_device == AWQ_SEARCH_CPU || (inst->search_device == AWQ_SEARCH_AUTO && h->cuda_device < 0))
        return QTOOL_OK;
    if (!inst->blas) {
        char msg[256] = "";
        int rc = awqcu_blas_create(h->cuda_device < 0 ? 0 : h->cuda_device, &inst->blas, msg, sizeof msg);
        if (rc) return int4g_fail(&inst->c, rc, "%s", msg);
    }
    *on_cuda = 1;
#else
    (void)inst;
#endif
    return QTOOL_OK;
}

/* Output error of each candidate scale (S: AWQ_GRID x K) on the sample. */
static int scale_errors(awq_instance *inst, int on_cuda, const float *W, const float *X, const float *S, int64_t N,
                        int64_t K, int64_t G, int64_t T, double *err)
{
    int4g_ctx *c = &inst->c;
#ifdef QTOOL_HAVE_CUDA
    if (on_cuda) {
        char msg[256] = "";
        int rc = awqcu_scale_errors(inst->blas, W, X, S, AWQ_GRID, N, K, T, G, err, c->host->cuda_stream, msg,
                                    sizeof msg);
        return rc ? int4g_fail(c, rc, "%s", msg) : QTOOL_OK;
    }
#else
    (void)on_cuda;
#endif
    int64_t nchunks = (N + AWQ_ROW_CHUNK - 1) / AWQ_ROW_CHUNK;
    double *partial = int4g_tmp_alloc(c, (size_t)nchunks * sizeof(double));
    if (!partial) return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory");
    int rc = QTOOL_OK;
    for (int i = 0; i < AWQ_GRID && !rc; i++) {
        search_job job = {W, X, S + (size_t)i * (size_t)K, N, K, G, T, partial, 0, c};
        par(c, nchunks, search_chunks, &job);
        if (job.failed) rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory in the scale search");
        err[i] = 0;
        for (int64_t ch = 0; ch < nchunks; ch++) err[i] += partial[ch];
    }
    int4g_tmp_free(c, partial);
    return rc;
}

/* Clips W (already W * s) in place, per row and group. */
static int clip_search(awq_instance *inst, int on_cuda, float *W, const float *X, const float *s, int64_t N, int64_t K,
                       int64_t G, int64_t T)
{
    int4g_ctx *c = &inst->c;
#ifdef QTOOL_HAVE_CUDA
    if (on_cuda && G <= 1024) {
        char msg[256] = "";
        int rc = awqcu_clip(inst->blas, W, X, s, N, K, T, G, AWQ_CLIP_STEPS, AWQ_GRID, c->host->cuda_stream, msg,
                            sizeof msg);
        return rc ? int4g_fail(c, rc, "%s", msg) : QTOOL_OK;
    }
#else
    (void)on_cuda;
#endif
    int64_t ng = K / G;
    float *XT = int4g_tmp_alloc(c, (size_t)(K * T) * sizeof(float));
    float *gram = int4g_tmp_alloc(c, (size_t)(ng * G * G) * sizeof(float));
    int rc = QTOOL_OK;
    if (!XT || !gram) {
        rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory for the clipping search");
    } else {
        /* the scaled layer sees x / s */
        for (int64_t t = 0; t < T; t++)
            for (int64_t k = 0; k < K; k++) XT[k * T + t] = X[t * K + k] / s[k];
        gram_job gj = {XT, gram, K, G, T};
        par(c, ng, gram_groups, &gj);
        clip_job cj = {W, gram, N, K, G, c, 0};
        par(c, N, clip_rows, &cj);
        if (cj.failed) rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory in the clipping search");
    }
    int4g_tmp_free(c, XT);
    int4g_tmp_free(c, gram);
    return rc;
}

/* Chooses the scale s (has_scale) and clips W * s in place. W is [N, K]
 * and becomes the weight to quantize. */
static int awq_search(awq_instance *inst, const qtool_layer_info *layer, const awq_stats *st, float *W, int64_t N,
                      int64_t K, int64_t G, float *s_best, int s_given)
{
    int4g_ctx *c = &inst->c;
    const int64_t T = st->nrows;
    const float *X = st->rows;
    int on_cuda = 0;
    int rc = search_on_cuda(inst, &on_cuda);
    if (rc) return rc;
    float *x_mean = int4g_tmp_alloc(c, (size_t)K * sizeof(float));
    float *w_mean = int4g_tmp_alloc(c, (size_t)K * sizeof(float));
    float *S = int4g_tmp_alloc(c, (size_t)AWQ_GRID * (size_t)K * sizeof(float));
    double *err = int4g_tmp_alloc(c, (size_t)AWQ_GRID * sizeof(double));
    double *wm = int4g_tmp_alloc(c, (size_t)K * sizeof(double));
    if (!x_mean || !w_mean || !S || !err || !wm) {
        rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory");
        goto out;
    }
    for (int64_t k = 0; k < K; k++) x_mean[k] = (float)(st->abs_sum[k] / (double)st->count);
    /* w_mean: |w| relative to its group's absmax, averaged over output rows */
    memset(wm, 0, (size_t)K * sizeof(double));
    for (int64_t n = 0; n < N; n++)
        for (int64_t g0 = 0; g0 < K; g0 += G) {
            const float *w = W + n * K + g0;
            float amax = 0;
            for (int64_t i = 0; i < G; i++) amax = fmaxf(amax, fabsf(w[i]));
            for (int64_t i = 0; i < G; i++) wm[g0 + i] += fabsf(w[i]) / (amax + 1e-6f);
        }
    for (int64_t k = 0; k < K; k++) w_mean[k] = (float)(wm[k] / (double)N);

    int best_i = s_given ? -2 : -1;
    if (!s_given) {
        for (int i = 0; i < AWQ_GRID; i++) {
            float a = (float)i / (float)AWQ_GRID, *s = S + (size_t)i * (size_t)K;
            float smax = -INFINITY, smin = INFINITY;
            for (int64_t k = 0; k < K; k++) {
                float v = inst->duo_scaling ? powf(x_mean[k], a) / (powf(w_mean[k], 1.0f - a) + 1e-4f)
                                            : powf(x_mean[k], a);
                v = fmaxf(v, 1e-4f);
                s[k] = v;
                smax = fmaxf(smax, v);
                smin = fminf(smin, v);
            }
            float norm = sqrtf(smax * smin);
            for (int64_t k = 0; k < K; k++) {
                float v = s[k] / norm;
                s[k] = isfinite(v) ? v : 1.0f;
            }
        }
        if ((rc = scale_errors(inst, on_cuda, W, X, S, N, K, G, T, err))) goto out;
        double best_err = INFINITY;
        for (int i = 0; i < AWQ_GRID; i++)
            if (err[i] < best_err) {
                best_err = err[i];
                best_i = i;
            }
        if (best_i >= 0) {
            memcpy(s_best, S + (size_t)best_i * (size_t)K, (size_t)K * sizeof(float));
            int4g_log(c, QTOOL_LOG_DEBUG, "awq pack: %s: alpha %.2f (output error %.4g on %lld rows, %s)",
                      layer && layer->name ? layer->name : "layer", best_i / (double)AWQ_GRID, best_err, (long long)T,
                      on_cuda ? "cuda" : "cpu");
        }
    }
    if (best_i == -1) { /* every candidate produced NaN: no scaling */
        int4g_log(c, QTOOL_LOG_WARN, "awq pack: %s: the scale search found no finite error; no input scale",
                  layer && layer->name ? layer->name : "layer");
        for (int64_t k = 0; k < K; k++) s_best[k] = 1.0f;
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) W[n * K + k] *= s_best[k];

    if (inst->clip && !(layer && role_skips_clip(layer->role)))
        rc = clip_search(inst, on_cuda, W, X, s_best, N, K, G, T);
out:
    int4g_tmp_free(c, x_mean);
    int4g_tmp_free(c, w_mean);
    int4g_tmp_free(c, S);
    int4g_tmp_free(c, err);
    int4g_tmp_free(c, wm);
    return rc;
}

/* ------------------------------------------------------------ slots */

static int awq_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    return int4g_probe("awq", dev, reason, reason_len);
}

static int awq_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                      qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "awq: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    awq_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->group_size = 128;
    inst->duo_scaling = 1;
    inst->clip = 1;
    inst->calib_rows = 512;
    int cuda_path = INT4G_PATH_AUTO;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "group_size")) {
            if (!int4g_valid_group_size(opts[i].i)) {
                snprintf(msg, msg_len, "awq: group_size must be a multiple of 32 from 32 to 65536, or -1; got %lld",
                         (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->group_size = opts[i].i;
        } else if (!strcmp(name, "duo_scaling")) {
            inst->duo_scaling = opts[i].i != 0;
        } else if (!strcmp(name, "clip")) {
            inst->clip = opts[i].i != 0;
        } else if (!strcmp(name, "calib_rows")) {
            if (opts[i].i < 16 || opts[i].i > 65536) {
                snprintf(msg, msg_len, "awq: calib_rows must be 16..65536, got %lld", (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->calib_rows = opts[i].i;
        } else if (!strcmp(name, "share_scale")) {
            inst->share_scale = opts[i].i != 0;
        } else if (!strcmp(name, "cuda_kernel")) {
            cuda_path = (int)(opts[i].i >= 0 && opts[i].i <= 2 ? opts[i].i : 0);
        } else if (!strcmp(name, "search_device")) {
            inst->search_device = (int)(opts[i].i >= 0 && opts[i].i <= 2 ? opts[i].i : 0);
#ifndef QTOOL_HAVE_CUDA
            if (inst->search_device == AWQ_SEARCH_CUDA) {
                snprintf(msg, msg_len, "awq: search_device=cuda, but this build has no CUDA code");
                free(inst);
                return QTOOL_ERR_UNSUPPORTED;
            }
#endif
        } else {
            snprintf(msg, msg_len, "awq: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    int4g_ctx_init(&inst->c, host, "awq");
    inst->c.cuda_path = cuda_path;
    int4g_store_init(&inst->store);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void awq_destroy(qtool_instance *qi)
{
    awq_instance *inst = (awq_instance *)qi;
    if (!inst) return;
    int4g_store_clear(&inst->c, &inst->store);
    shared_release(&inst->shared, 0, 1);
#ifdef QTOOL_HAVE_CUDA
    awqcu_blas_destroy(inst->blas);
#endif
    int4g_ctx_destroy(&inst->c);
    free(inst);
}

static int awq_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    awq_instance *inst = (awq_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    int64_t N, K, G;
    int rc = int4g_check_pack(c, args, inst->group_size, &N, &K, &G);
    if (rc) return rc;
    const qtool_layer_info *layer = args->layer;
    const char *lname = layer && layer->name ? layer->name : "layer";
    if (args->has_input_scale) *args->has_input_scale = 0;

    float *W = int4g_tmp_alloc(c, (size_t)(N * K) * sizeof(float));
    float *s = int4g_tmp_alloc(c, (size_t)K * sizeof(float));
    if (!W || !s) {
        int4g_tmp_free(c, W);
        int4g_tmp_free(c, s);
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory for %s", lname);
    }
    for (int64_t i = 0; i < N * K; i++) W[i] = int4g_load_elem(args->weight->data, args->weight->dtype, i);

    pthread_mutex_lock(&inst->store.lock);
    if (layer && layer->block_index >= 0) {
        int4g_store_release_before(c, &inst->store, layer->block_index);
        shared_release(&inst->shared, layer->block_index, 0);
    }
    int4g_stats *e = int4g_store_get(&inst->store, layer, 0);
    const awq_stats *st = e ? e->data : NULL;
    int scaled = 0;
    int group = inst->share_scale && layer && layer->block_index >= 0 ? input_group(layer->role) : 0;
    shared_scale *sh = group ? shared_find(inst->shared, layer->block_index, group, K) : NULL;
    if (!st || st->count == 0 || st->K != K) {
        int4g_log(c, QTOOL_LOG_WARN, "awq pack: no calibration data for %s; plain round-to-nearest, no input scale",
                  lname);
    } else if (!args->input_scale || !args->has_input_scale) {
        int4g_log(c, QTOOL_LOG_WARN, "awq pack: %s: the caller takes no input scale; round-to-nearest", lname);
    } else {
        if (sh) memcpy(s, sh->s, (size_t)K * sizeof(float));
        rc = awq_search(inst, layer, st, W, N, K, G, s, sh != NULL);
        scaled = 1;
        if (!rc && group && !sh) {
            shared_scale *n = calloc(1, sizeof *n);
            if (n) n->s = malloc((size_t)K * sizeof(float)); /* instance metadata, like the store's names */
            if (!n || !n->s) {
                if (n) free(n);
                rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory");
            } else {
                n->block = layer->block_index;
                n->group = group;
                n->K = K;
                memcpy(n->s, s, (size_t)K * sizeof(float));
                n->next = inst->shared;
                inst->shared = n;
            }
        }
    }
    pthread_mutex_unlock(&inst->store.lock);
    if (rc) {
        int4g_tmp_free(c, W);
        int4g_tmp_free(c, s);
        return rc;
    }

    qtool_packed *p = int4g_new(c, N, K, G, K / G, 0, args->bias != NULL);
    if (!p) {
        int4g_tmp_free(c, W);
        int4g_tmp_free(c, s);
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory for %s", lname);
    }
    uint8_t *codes = int4g_tmp_alloc(c, (size_t)G);
    if (!codes) {
        int4g_free(p);
        int4g_tmp_free(c, W);
        int4g_tmp_free(c, s);
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq pack: out of memory for %s", lname);
    }
    for (int64_t n = 0; n < N; n++)
        for (int64_t g = 0; g < K / G; g++) {
            quant_group(W + n * K + g * G, G, -INFINITY, INFINITY, codes, NULL, &p->scales[n * p->ngroups + g],
                        &p->zeros[n * p->ngroups + g]);
            for (int64_t i = 0; i < G; i++) int4g_put_code(p, n, g * G + i, codes[i]);
        }
    int4g_tmp_free(c, codes);
    int4g_set_bias(p, args->bias);
    if (scaled) {
        memcpy(args->input_scale, s, (size_t)K * sizeof(float));
        *args->has_input_scale = 1;
    }
    int4g_tmp_free(c, W);
    int4g_tmp_free(c, s);
    return int4g_finish(p, args->device, out);
}

static void awq_free_packed(qtool_packed *p) { int4g_free(p); }

/* ------------------------------------------------------------ save/load */

static qtool_tensor view2(void *data, int dtype, int64_t d0, int64_t d1)
{
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = d1 > 0 ? 2 : 1;
    t.shape[0] = d0;
    t.shape[1] = d1 > 0 ? d1 : 0;
    return t;
}

/* Packs value(n) for n in [0, N) eight per int32 in AutoAWQ's order;
 * columns past N (N not a multiple of 8) hold 0. */
static void awq_pack_row(uint32_t *dst, int64_t N, const uint8_t *vals)
{
    int64_t nw = (N + 7) / 8;
    for (int64_t cw = 0; cw < nw; cw++) {
        uint32_t w = 0;
        for (int i = 0; i < 8; i++) {
            int64_t n = 8 * cw + awq_order[i];
            if (n < N) w |= (uint32_t)(vals[n] & 15u) << (4 * i);
        }
        dst[cw] = w;
    }
}

static int awq_save(const qtool_packed *pk, const qtool_save_sink *sink)
{
    if (!pk || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    const int4g_ctx *c = pk->ctx;
    qtool_packed *p = NULL;
    int copied = 0;
    int rc = int4g_host_view(pk, &p, &copied);
    if (rc) return rc;
    const int64_t N = p->N, K = p->K, ng = p->ngroups, nw = (N + 7) / 8;
    uint32_t *qweight = int4g_tmp_alloc(c, (size_t)(K * nw) * 4);
    uint32_t *qzeros = int4g_tmp_alloc(c, (size_t)(ng * nw) * 4);
    uint16_t *scales = int4g_tmp_alloc(c, (size_t)(ng * N) * 2);
    uint16_t *bias = p->bias ? int4g_tmp_alloc(c, (size_t)N * 2) : NULL;
    uint8_t *col = int4g_tmp_alloc(c, (size_t)N);
    if (!qweight || !qzeros || !scales || !col || (p->bias && !bias)) {
        rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq save: out of memory");
        goto out;
    }
    for (int64_t k = 0; k < K; k++) {
        for (int64_t n = 0; n < N; n++) col[n] = (uint8_t)int4g_get_code(p, n, k);
        awq_pack_row(qweight + k * nw, N, col);
    }
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t n = 0; n < N; n++) {
            col[n] = p->zeros[n * ng + g];
            scales[g * N + n] = p->scales[n * ng + g];
        }
        awq_pack_row(qzeros + g * nw, N, col);
    }
    qtool_tensor t = view2(qweight, QTOOL_DTYPE_I32, K, nw);
    rc = sink->put(sink->ctx, "qweight", &t);
    if (!rc) {
        t = view2(qzeros, QTOOL_DTYPE_I32, ng, nw);
        rc = sink->put(sink->ctx, "qzeros", &t);
    }
    if (!rc) {
        t = view2(scales, QTOOL_DTYPE_F16, ng, N);
        rc = sink->put(sink->ctx, "scales", &t);
    }
    if (!rc && bias) {
        for (int64_t n = 0; n < N; n++) bias[n] = qtool_f32_to_f16(p->bias[n]);
        t = view2(bias, QTOOL_DTYPE_F16, N, 0);
        rc = sink->put(sink->ctx, "bias", &t);
    }
    if (rc) rc = int4g_fail(c, rc, "awq save: the host refused a tensor");
out:
    int4g_tmp_free(c, qweight);
    int4g_tmp_free(c, qzeros);
    int4g_tmp_free(c, scales);
    int4g_tmp_free(c, bias);
    int4g_tmp_free(c, col);
    if (copied) int4g_free(p);
    return rc;
}

static int get_2d(const int4g_ctx *c, const qtool_load_source *src, const char *name, const char *suffix, int dtype,
                  qtool_tensor *t)
{
    if (src->get(src->ctx, suffix, t) != QTOOL_OK)
        return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: missing tensor '%s'", name, suffix);
    if (!t->data || t->dtype != dtype || t->ndim != 2 || t->shape[0] <= 0 || t->shape[1] <= 0 ||
        t->shape[0] > ((int64_t)1 << 24) || t->shape[1] > ((int64_t)1 << 24))
        return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: tensor '%s' must be 2-D %s", name, suffix,
                          dtype == QTOOL_DTYPE_I32 ? "I32" : "F16");
    return QTOOL_OK;
}

static int awq_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                    qtool_packed **out)
{
    awq_instance *inst = (awq_instance *)qi;
    if (!inst || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    const char *name = layer && layer->name ? layer->name : "layer";
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "awq load: unknown device %d", device);
#ifndef QTOOL_HAVE_CUDA
    if (device == QTOOL_DEVICE_CUDA) return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "awq load: built without CUDA support");
#endif
    qtool_tensor qw, qz, sc, b;
    int rc = get_2d(c, src, name, "qweight", QTOOL_DTYPE_I32, &qw);
    if (!rc) rc = get_2d(c, src, name, "qzeros", QTOOL_DTYPE_I32, &qz);
    if (!rc) rc = get_2d(c, src, name, "scales", QTOOL_DTYPE_F16, &sc);
    if (rc) return rc;
    const int64_t K = qw.shape[0], N = sc.shape[1], ng = sc.shape[0], nw = (N + 7) / 8;
    if (qw.shape[1] != nw || qz.shape[0] != ng || qz.shape[1] != nw)
        return int4g_fail(c, QTOOL_ERR_FORMAT,
                          "awq load: %s: qweight [%lld, %lld], qzeros [%lld, %lld] and scales [%lld, %lld] disagree",
                          name, (long long)qw.shape[0], (long long)qw.shape[1], (long long)qz.shape[0],
                          (long long)qz.shape[1], (long long)sc.shape[0], (long long)sc.shape[1]);
    if (K % ng != 0)
        return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: %lld groups do not divide %lld input features", name,
                          (long long)ng, (long long)K);
    if (layer && layer->in_features > 0 && (layer->in_features != K || layer->out_features != N))
        return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: packed shape %lldx%lld does not match the layer %lldx%lld",
                          name, (long long)N, (long long)K, (long long)layer->out_features,
                          (long long)layer->in_features);
    if (K % 32 != 0)
        return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "awq load: %s: K = %lld is not a multiple of 32", name,
                          (long long)K);
    const int64_t G = K / ng;
    int has_bias = src->has(src->ctx, "bias");
    if (has_bias) {
        if (src->get(src->ctx, "bias", &b) != QTOOL_OK || !b.data || qtool_tensor_numel(&b) != N ||
            (b.dtype != QTOOL_DTYPE_F16 && b.dtype != QTOOL_DTYPE_F32 && b.dtype != QTOOL_DTYPE_BF16))
            return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: bias must have %lld float elements", name,
                              (long long)N);
    }
    const uint16_t *scv = sc.data;
    for (int64_t i = 0; i < ng * N; i++)
        if (!isfinite(qtool_f16_to_f32(scv[i])))
            return int4g_fail(c, QTOOL_ERR_FORMAT, "awq load: %s: scale %lld is not finite", name, (long long)i);
    qtool_packed *p = int4g_new(c, N, K, G, ng, G % 32 != 0, has_bias);
    if (!p) return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "awq load: out of memory for %s", name);
    const uint32_t *qwv = qw.data, *qzv = qz.data;
    for (int64_t k = 0; k < K; k++)
        for (int64_t cw = 0; cw < nw; cw++) {
            uint32_t w = qwv[k * nw + cw];
            for (int i = 0; i < 8; i++) {
                int64_t n = 8 * cw + awq_order[i];
                if (n < N) int4g_put_code(p, n, k, (w >> (4 * i)) & 15u);
            }
        }
    for (int64_t g = 0; g < ng; g++)
        for (int64_t cw = 0; cw < nw; cw++) {
            uint32_t w = qzv[g * nw + cw];
            for (int i = 0; i < 8; i++) {
                int64_t n = 8 * cw + awq_order[i];
                if (n < N) p->zeros[n * ng + g] = (uint8_t)((w >> (4 * i)) & 15u);
            }
        }
    for (int64_t g = 0; g < ng; g++)
        for (int64_t n = 0; n < N; n++) p->scales[n * ng + g] = scv[g * N + n];
    if (p->g_idx)
        for (int64_t k = 0; k < K; k++) p->g_idx[k] = (int32_t)(k / G);
    if (has_bias)
        for (int64_t n = 0; n < N; n++) p->bias[n] = int4g_load_elem(b.data, b.dtype, n);
    return int4g_finish(p, device, out);
}

static int awq_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const awq_instance *inst = (const awq_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"awq\", \"bits\": 4, \"group_size\": %lld, \"zero_point\": true, "
                     "\"version\": \"gemm\"}",
                     (long long)inst->group_size);
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

/* AutoAWQ GEMM checkpoints: quant_method awq, version gemm (older AutoAWQ
 * writes "GEMM") or absent, 4 bits, zero point. */
static int awq_accepts_config(const char *json)
{
    if (!json) return 0;
    size_t n = strnlen(json, 1 << 20);
    char s[32];
    if (!int4g_json_string(json, n, "quant_method", s, sizeof s) || strcasecmp(s, "awq")) return 0;
    if (int4g_json_string(json, n, "version", s, sizeof s) && strcasecmp(s, "gemm")) return 0;
    double bits;
    if (int4g_json_number(json, n, "bits", &bits) && bits != 4) return 0;
    if (int4g_json_number(json, n, "w_bit", &bits) && bits != 4) return 0;
    int zp;
    if (int4g_json_bool(json, n, "zero_point", &zp) && !zp) return 0;
    return 1;
}

static const qtool_plugin_desc awq_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "awq",
    .version = "1.0.0",
    .summary = "AWQ: activation-aware scale and clipping search, uint4 + zero in groups of 128 (AutoAWQ GEMM format)",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = QTOOL_PLUGIN_NEEDS_CALIBRATION,
    .weight_bits = 4,
    .activation_bits = 16,
    .options = awq_options,
    .n_options = sizeof awq_options / sizeof awq_options[0],
    .init = NULL,
    .shutdown = NULL,
    .probe = awq_probe,
    .create = awq_create,
    .destroy = awq_destroy,
    .calibrate = awq_calibrate,
    .pack = awq_pack,
    .free_packed = awq_free_packed,
    .matmul_cpu = int4g_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = int4g_matmul_cuda,
#else
    .matmul_cuda = NULL,
#endif
    .memory = int4g_memory,
    .save = awq_save,
    .load = awq_load,
    .quant_config_json = awq_quant_config_json,
    .accepts_config = awq_accepts_config,
    .dequantize = int4g_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &awq_desc; }
