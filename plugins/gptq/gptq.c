/* gptq: GPTQ (Frantar et al. 2022) as AutoGPTQ runs it: the layer's
 * Hessian H = (2/N) sum x x^T from calibration inputs, dead columns,
 * dampening, the upper Cholesky factor of H^-1, columns quantized one at a
 * time with the error fed back to the columns not yet quantized (lazy
 * blocks of 128), group parameters recomputed at each group start, optional
 * act-order (columns by decreasing H_ii, with g_idx). 4-bit symmetric
 * (zero 8) or asymmetric; fp16 scales. Checkpoints use AutoGPTQ's layout
 * ("gptq" v1, zeros stored minus one) or gptqmodel's "gptq_v2".
 * When H was summed on the CUDA device, pack runs there too (gptq_cuda.cu):
 * the same steps, with the factorisation in cuSOLVER and the lazy-block
 * updates in cuBLAS. */
#include <qtool/plugin.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "../awq/int4g/int4g.h"
#include "../awq/int4g/int4g_dense.h"
#include "gptq_linalg.h"
#ifdef QTOOL_HAVE_CUDA
#include "gptq_cuda.h"
#endif

#define GPTQ_BLOCK 128 /* lazy batch width, as AutoGPTQ's blocksize */
#define GPTQ_ROW_CHUNK 32
#define GPTQ_DAMP_RETRIES 3
/* run_gptq_cuda's answer when the device has no room: GPTQ runs on the CPU */
#define GPTQ_ON_CPU 2

enum { GPTQ_FMT_V1 = 0, GPTQ_FMT_V2 = 1 };
enum { GPTQ_CALIB_AUTO = 0, GPTQ_CALIB_CPU = 1, GPTQ_CALIB_CUDA = 2 };
/* qtool_packed.flags: the checkpoint format the layer saves in */
#define GPTQ_FLAG_V2 1

typedef struct gptq_instance {
    int4g_ctx c;
    int64_t group_size;
    double damp;
    int act_order;
    int sym;
    int static_groups;
    int format;
    double shrink; /* < 0: automatic (OAS) */
    int calib_device; /* GPTQ_CALIB_*; AUTO is resolved at the first calibrate */
    int calib_auto;   /* the device was chosen automatically: fall back to the CPU on failure */
    void *blas;       /* cuBLASLt handle for the device Hessian */
    void *solver;     /* cuSOLVER and cuBLAS handles for GPTQ on the device */
    void *staging;    /* device scratch for calibration rows */
    size_t staging_bytes;
    int4g_store store;
} gptq_instance;

typedef struct gptq_stats {
    int64_t K;
    double *H;  /* [K, K] on the host, upper triangle (CPU accumulation) */
    double *dH; /* [K, K] on the device, full (CUDA accumulation) */
    int64_t nsamples;
} gptq_stats;

static const qtool_option_desc gptq_options[] = {
    {"group_size", QTOOL_OPT_INT, "128", "input channels per scale/zero: a multiple of 32, or -1 for one group per row",
     NULL, -1, 65536},
    {"damp", QTOOL_OPT_FLOAT, "0.01", "dampening added to H's diagonal, as a fraction of its mean", NULL, 0.0, 1.0},
    {"act_order", QTOOL_OPT_BOOL, "0", "quantize columns by decreasing H_ii (desc_act); writes g_idx", NULL, 0, -1},
    {"sym", QTOOL_OPT_BOOL, "1", "symmetric grid (zero 8) instead of asymmetric", NULL, 0, -1},
    {"static_groups", QTOOL_OPT_BOOL, "0", "group parameters computed once before quantization", NULL, 0, -1},
    {"shrink", QTOOL_OPT_FLOAT, "-1",
     "shrink H's off-diagonal toward 0 by this fraction before GPTQ: -1 picks it from the data (OAS), 0 is plain GPTQ",
     NULL, -1.0, 1.0},
    {"calib_device", QTOOL_OPT_ENUM, "auto",
     "where H = X^T X is summed: auto (the CUDA device when the host has one), cpu, cuda", "auto|cpu|cuda", 0, -1},
    {"checkpoint_format", QTOOL_OPT_ENUM, "gptq",
     "zeros in saved/loaded checkpoints: gptq (AutoGPTQ v1, stored minus one) or gptq_v2", "gptq|gptq_v2", 0, -1},
    {"cuda_kernel", QTOOL_OPT_ENUM, "auto",
     "CUDA kernel: auto, gemv (fused dequantize), dequant_gemm (fp16 workspace + cuBLASLt)", "auto|gemv|dequant_gemm", 0,
     -1},
};

/* ------------------------------------------------------------ quantizer */

typedef struct qparams {
    double s;      /* the fp16 scale, as a double */
    uint16_t s16;
    int zero;
} qparams;

/* AutoGPTQ's Quantizer.find_params on one row of a group: the range
 * includes 0; symmetric widens it to [-max|w|, max|w|] when it has
 * negative values and uses zero 8. The scale is rounded to fp16 before
 * use, so the error fed back is that of the stored weights. */
static qparams find_params(const double *w, int64_t n, int sym)
{
    double xmin = 0, xmax = 0;
    for (int64_t i = 0; i < n; i++) {
        xmin = fmin(xmin, w[i]);
        xmax = fmax(xmax, w[i]);
    }
    if (sym) {
        xmax = fmax(fabs(xmin), xmax);
        if (xmin < 0) xmin = -xmax;
    }
    if (xmin == 0 && xmax == 0) {
        xmin = -1;
        xmax = 1;
    }
    double scale = (xmax - xmin) / 15.0;
    qparams q;
    q.zero = sym ? 8 : (int)rint(-xmin / scale);
    q.s16 = int4g_scale_to_f16(scale);
    q.s = qtool_f16_to_f32(q.s16);
    return q;
}

static inline int quant1(double w, const qparams *q)
{
    double v = rint(w / q->s) + q->zero;
    return v < 0 ? 0 : v > 15 ? 15 : (int)v;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* ------------------------------------------------------------ calibration */

static void stats_release(const int4g_ctx *c, void *data)
{
    gptq_stats *st = data;
    int4g_tmp_free(c, st->H);
    if (st->dH) c->host->free(c->host->ctx, QTOOL_DEVICE_CUDA, st->dH);
    free(st);
}

/* Decides once where H is summed; AUTO takes the CUDA device when the host
 * has one and it answers. */
static int calib_on_cuda(gptq_instance *inst)
{
    if (inst->calib_device == GPTQ_CALIB_CPU) return 0;
#ifdef QTOOL_HAVE_CUDA
    if (inst->calib_device == GPTQ_CALIB_CUDA) return 1;
    const qtool_host_services *h = inst->c.host;
    char msg[256];
    int ok = h->cuda_device >= 0 && i4cu_set_device(h->cuda_device, msg, sizeof msg) == 0;
    inst->calib_device = ok ? GPTQ_CALIB_CUDA : GPTQ_CALIB_CPU;
    inst->calib_auto = 1;
    return ok;
#else
    return 0;
#endif
}

#ifdef QTOOL_HAVE_CUDA
/* Adds alpha x^T x (after scaling by beta) to the device Hessian. */
static int device_accumulate(gptq_instance *inst, gptq_stats *st, const float *x, int64_t T, double alpha,
                             double beta, const char *name)
{
    int4g_ctx *c = &inst->c;
    const qtool_host_services *h = c->host;
    const int64_t K = st->K;
    char msg[256];
    int rc = i4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && !inst->blas) rc = gpcu_blas_create(&inst->blas, msg, sizeof msg);
    if (rc) return int4g_fail(c, rc, "gptq calibrate: %s", msg);
    size_t need = gpcu_staging_bytes(K);
    if (inst->staging_bytes < need) {
        if (inst->staging) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->staging);
        inst->staging_bytes = 0;
        inst->staging = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, need, QTOOL_MEM_WORKSPACE);
        if (!inst->staging)
            return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq calibrate: out of CUDA memory for %zu bytes", need);
        inst->staging_bytes = need;
    }
    if (!st->dH) {
        size_t hb = (size_t)(K * K) * sizeof(double);
        st->dH = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, hb, QTOOL_MEM_OTHER);
        if (!st->dH)
            return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq calibrate: out of CUDA memory for the Hessian of %s",
                              name);
        rc = gpcu_zero(st->dH, hb, h->cuda_stream, msg, sizeof msg);
        if (rc) return int4g_fail(c, rc, "gptq calibrate: %s", msg);
    }
    rc = gpcu_syrk(inst->blas, st->dH, K, x, T, alpha, beta, inst->staging, h->cuda_stream, msg, sizeof msg);
    if (rc) return int4g_fail(c, rc, "gptq calibrate: %s: %s", name, msg);
    return QTOOL_OK;
}
#endif

static int gptq_calibrate(qtool_instance *qi, const qtool_layer_info *layer, const qtool_tensor *x)
{
    gptq_instance *inst = (gptq_instance *)qi;
    if (!inst) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    int64_t T = 0;
    int rc = int4g_check_calib(c, layer, x, &T);
    if (rc) return rc;
    int64_t K = x->shape[x->ndim - 1];
    int64_t G = inst->group_size == -1 ? K : inst->group_size;
    if (K % 32 != 0 || K % G != 0) {
        int4g_log(c, QTOOL_LOG_DEBUG, "gptq calibrate: %s: K = %lld cannot be packed; input ignored",
                  layer->name ? layer->name : "?", (long long)K);
        return QTOOL_OK;
    }
    if (K > 32768) return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "gptq calibrate: K = %lld is too large", (long long)K);
    pthread_mutex_lock(&inst->store.lock);
    int4g_stats *e = int4g_store_get(&inst->store, layer, 1);
    if (!e) {
        pthread_mutex_unlock(&inst->store.lock);
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq calibrate: out of memory");
    }
    gptq_stats *st = e->data;
    int on_cuda = calib_on_cuda(inst);
    if (!st) {
        st = calloc(1, sizeof *st);
        if (st) {
            st->K = K;
            if (!on_cuda) {
                st->H = int4g_tmp_alloc(c, (size_t)(K * K) * sizeof(double));
                if (st->H) memset(st->H, 0, (size_t)(K * K) * sizeof(double));
            }
        }
        if (!st || (!on_cuda && !st->H)) {
            if (st) stats_release(c, st);
            pthread_mutex_unlock(&inst->store.lock);
            return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq calibrate: out of memory for the %lldx%lld Hessian of %s",
                              (long long)K, (long long)K, e->name);
        }
        e->data = st;
        e->release = stats_release;
        e->K = K;
    }
    if (st->K != K) {
        pthread_mutex_unlock(&inst->store.lock);
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "gptq calibrate: %s: input has %lld features, earlier %lld",
                          e->name, (long long)K, (long long)st->K);
    }
    if (T > 0) {
        /* running average: H = (2 / n) sum x x^T over all n rows so far */
        double keep = (double)st->nsamples / (double)(st->nsamples + T);
        double alpha = 2.0 / (double)(st->nsamples + T);
#ifdef QTOOL_HAVE_CUDA
        if (!st->H) {
            rc = device_accumulate(inst, st, x->data, T, alpha, keep, e->name);
            if (rc && inst->calib_auto && st->nsamples == 0) {
                /* nothing summed yet: carry on with the CPU for this and later layers */
                int4g_log(c, QTOOL_LOG_WARN, "gptq calibrate: summing H on the CUDA device failed; using the CPU");
                if (st->dH) c->host->free(c->host->ctx, QTOOL_DEVICE_CUDA, st->dH);
                st->dH = NULL;
                inst->calib_device = GPTQ_CALIB_CPU;
                st->H = int4g_tmp_alloc(c, (size_t)(K * K) * sizeof(double));
                if (st->H) memset(st->H, 0, (size_t)(K * K) * sizeof(double));
                rc = st->H ? QTOOL_OK
                           : int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq calibrate: out of memory for H of %s",
                                        e->name);
                if (rc) {
                    pthread_mutex_unlock(&inst->store.lock);
                    return rc;
                }
            }
        }
#endif
        if (st->H) {
            for (int64_t i = 0; i < K; i++)
                for (int64_t j = i; j < K; j++) st->H[i * K + j] *= keep;
            rc = gptq_syrk_upper(c, st->H, K, x->data, T, alpha);
            if (rc) rc = int4g_fail(c, rc, "gptq calibrate: out of memory");
        } else if (!rc && !st->dH) {
            rc = int4g_fail(c, QTOOL_ERR_INTERNAL, "gptq calibrate: %s has no Hessian buffer", e->name);
        }
        if (!rc) st->nsamples += T;
    }
    pthread_mutex_unlock(&inst->store.lock);
    return rc;
}

/* ------------------------------------------------------------ the algorithm */

typedef struct gptq_job {
    double *W;          /* [N, K], columns in processing order; rows updated in place */
    const double *Ut;   /* [K, K], U^T */
    const int64_t *perm;
    const qparams *stat; /* static groups: [N, ngroups] in original group order, or NULL */
    qtool_packed *p;
    int64_t N, K, G;
    int sym;
    const int4g_ctx *c;
    int failed;
} gptq_job;

static void gptq_rows(void *arg, int64_t ch0, int64_t ch1)
{
    gptq_job *j = arg;
    const int64_t K = j->K, G = j->G, ng = K / G;
    double *buf = int4g_tmp_alloc(j->c, (size_t)(2 * GPTQ_ROW_CHUNK * GPTQ_BLOCK + GPTQ_BLOCK * GPTQ_BLOCK) *
                                            sizeof(double));
    qparams *cur = int4g_tmp_alloc(j->c, (size_t)GPTQ_ROW_CHUNK * sizeof(qparams));
    if (!buf || !cur) {
        int4g_tmp_free(j->c, buf);
        int4g_tmp_free(j->c, cur);
        j->failed = 1;
        return;
    }
    double *W1 = buf, *Err = W1 + GPTQ_ROW_CHUNK * GPTQ_BLOCK, *Ub = Err + GPTQ_ROW_CHUNK * GPTQ_BLOCK;
    for (int64_t ch = ch0; ch < ch1; ch++) {
        const int64_t r0 = ch * GPTQ_ROW_CHUNK, r1 = r0 + GPTQ_ROW_CHUNK < j->N ? r0 + GPTQ_ROW_CHUNK : j->N;
        const int64_t nr = r1 - r0;
        double *Wc = j->W + r0 * K;
        for (int64_t i1 = 0; i1 < K; i1 += GPTQ_BLOCK) {
            const int64_t i2 = i1 + GPTQ_BLOCK < K ? i1 + GPTQ_BLOCK : K, cnt = i2 - i1;
            /* Ub[a][b] = U[i1 + a][i1 + b] */
            for (int64_t a = 0; a < cnt; a++)
                for (int64_t b = a; b < cnt; b++) Ub[a * cnt + b] = j->Ut[(i1 + b) * K + i1 + a];
            for (int64_t r = 0; r < nr; r++) memcpy(W1 + r * cnt, Wc + r * K + i1, (size_t)cnt * sizeof(double));
            for (int64_t i = 0; i < cnt; i++) {
                const int64_t col = i1 + i, orig = j->perm[col];
                int64_t g;
                if (j->stat) {
                    g = orig / G;
                    for (int64_t r = 0; r < nr; r++) cur[r] = j->stat[(r0 + r) * ng + g];
                } else {
                    g = col / G;
                    /* As AutoGPTQ: from the weights as the last lazy update
                     * left them (updates inside this block are not in W yet). */
                    if (col % G == 0)
                        for (int64_t r = 0; r < nr; r++) cur[r] = find_params(Wc + r * K + col, G, j->sym);
                }
                const double d = Ub[i * cnt + i];
                for (int64_t r = 0; r < nr; r++) {
                    double *w1 = W1 + r * cnt;
                    const double w = w1[i];
                    const int q = quant1(w, &cur[r]);
                    const double err = (w - cur[r].s * (double)(q - cur[r].zero)) / d;
                    int4g_put_code(j->p, r0 + r, orig, (unsigned)q);
                    if (col % G == 0 || j->stat) {
                        j->p->scales[(r0 + r) * ng + g] = cur[r].s16;
                        j->p->zeros[(r0 + r) * ng + g] = (uint8_t)cur[r].zero;
                    }
                    const double *u = Ub + i * cnt;
                    for (int64_t b = i + 1; b < cnt; b++) w1[b] -= err * u[b];
                    Err[r * cnt + i] = err;
                }
            }
            /* W[:, i2:] -= Err U[i1:i2, i2:] */
            if (i2 < K) int4g_gemm_nt_f64(nr, K - i2, cnt, -1.0, Err, cnt, j->Ut + i2 * K + i1, K, Wc + i2, K);
        }
    }
    int4g_tmp_free(j->c, buf);
    int4g_tmp_free(j->c, cur);
}

/* Round-to-nearest with the same quantizer: layers without calibration
 * data, or when H cannot be factorised. */
static void rtn(qtool_packed *p, const double *W, int sym)
{
    const int64_t K = p->K, G = p->G, ng = K / G;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t g = 0; g < ng; g++) {
            const double *w = W + n * K + g * G;
            qparams q = find_params(w, G, sym);
            p->scales[n * ng + g] = q.s16;
            p->zeros[n * ng + g] = (uint8_t)q.zero;
            for (int64_t i = 0; i < G; i++) int4g_put_code(p, n, g * G + i, (unsigned)quant1(w[i], &q));
        }
}

/* Sort key for act-order: decreasing H_ii, ties by index (a stable sort). */
static const double *g_sort_diag;
static int by_diag_desc(const void *a, const void *b)
{
    int64_t i = *(const int64_t *)a, k = *(const int64_t *)b;
    double x = g_sort_diag[i], y = g_sort_diag[k];
    if (x > y) return -1;
    if (x < y) return 1;
    return i < k ? -1 : i > k;
}
static pthread_mutex_t g_sort_lock = PTHREAD_MUTEX_INITIALIZER;

/* perm (0..K-1 on entry) by decreasing key, ties by index. */
static void sort_by_key(const double *key, int64_t *perm, int64_t K)
{
    pthread_mutex_lock(&g_sort_lock);
    g_sort_diag = key;
    qsort(perm, (size_t)K, sizeof *perm, by_diag_desc);
    pthread_mutex_unlock(&g_sort_lock);
}

/* The weights as double (W [N, K]); NULL when out of memory. */
static double *load_weights(const int4g_ctx *c, const qtool_tensor *wt, int64_t n)
{
    double *W = int4g_tmp_alloc(c, (size_t)n * sizeof(double));
    if (W)
        for (int64_t i = 0; i < n; i++) W[i] = int4g_load_elem(wt->data, wt->dtype, i);
    return W;
}

/* Shrinkage intensity toward the diagonal: the Oracle Approximating
 * Shrinkage estimate (Chen, Wiesel, Eldar, Hero 2010) applied to the
 * correlation matrix R = D^-1/2 H D^-1/2 of the p live inputs, from n
 * samples: rho = ((1 - 2/p) tr(R^2) + p^2) / ((n + 1 - 2/p)(tr(R^2) - p)).
 * H estimated from few rows has noisy off-diagonals that GPTQ would fit
 * (its held-out error then exceeds round-to-nearest's); rho is near 1 when
 * the correlations look like noise and near 0 with ample data. */
static double oas_from_trace(double tr2, int64_t p, int64_t nsamples)
{
    if (p < 2) return 0.0;
    double pd = (double)p, n = (double)nsamples;
    double den = (n + 1.0 - 2.0 / pd) * (tr2 - pd);
    if (!(den > 0)) return 1.0;
    double rho = ((1.0 - 2.0 / pd) * tr2 + pd * pd) / den;
    return rho < 0 ? 0 : rho > 1 ? 1 : rho;
}

static double oas_rho(const gptq_stats *st)
{
    const int64_t K = st->K;
    const double *H = st->H;
    double tr2 = 0;
    int64_t p = 0;
    for (int64_t i = 0; i < K; i++) {
        double hii = H[i * K + i];
        if (!(hii > 0)) continue;
        p++;
        tr2 += 1.0;
        for (int64_t k = i + 1; k < K; k++) {
            double hkk = H[k * K + k];
            if (hkk > 0) tr2 += 2.0 * H[i * K + k] * H[i * K + k] / (hii * hkk);
        }
    }
    return oas_from_trace(tr2, p, st->nsamples);
}

/* Hp = H[perm][:, perm] with the off-diagonal scaled by 1 - rho, dead
 * columns set to 1 on the diagonal and damp * mean(diag) added to it. */
static void build_h(const gptq_stats *st, const int64_t *perm, double rho, double damp_frac, double *Hp)
{
    const int64_t K = st->K;
    const double *H = st->H;
    for (int64_t a = 0; a < K; a++) {
        int64_t i = perm[a];
        for (int64_t b = 0; b < K; b++) {
            int64_t k = perm[b];
            double v = i <= k ? H[i * K + k] : H[k * K + i];
            Hp[a * K + b] = a == b ? v : (1.0 - rho) * v;
        }
    }
    double mean = 0;
    for (int64_t a = 0; a < K; a++) {
        if (Hp[a * K + a] == 0) Hp[a * K + a] = 1;
        mean += Hp[a * K + a];
    }
    mean /= (double)K;
    for (int64_t a = 0; a < K; a++) Hp[a * K + a] += damp_frac * mean;
}

/* Runs GPTQ on W [N, K] (original column order, modified) into p. Returns
 * 1 when it fell back to round-to-nearest, 0 when done, or -status. */

/* The next dampening after a failed factorisation (AutoGPTQ's retry:
 * ten times larger, at most 1). */
static double next_damp(const int4g_ctx *c, const char *lname, double damp)
{
    double next = damp > 0 ? damp * 10 : 0.01;
    if (next > 1.0) next = 1.0;
    int4g_log(c, QTOOL_LOG_WARN, "gptq pack: %s: H is not positive definite with damp %g; trying %g", lname, damp, next);
    return next;
}
static int run_gptq(gptq_instance *inst, const char *lname, const gptq_stats *st, double *W, qtool_packed *p)
{
    int4g_ctx *c = &inst->c;
    const int64_t N = p->N, K = p->K, G = p->G, ng = K / G;
    int64_t *perm = int4g_tmp_alloc(c, (size_t)K * sizeof(int64_t));
    double *diag = int4g_tmp_alloc(c, (size_t)K * sizeof(double));
    double *Hp = int4g_tmp_alloc(c, (size_t)(K * K) * sizeof(double));
    double *Ut = int4g_tmp_alloc(c, (size_t)(K * K) * sizeof(double));
    double *Wp = int4g_tmp_alloc(c, (size_t)(N * K) * sizeof(double));
    qparams *stat = inst->static_groups ? int4g_tmp_alloc(c, (size_t)(N * ng) * sizeof(qparams)) : NULL;
    int ret = 0;
    if (!perm || !diag || !Hp || !Ut || !Wp || (inst->static_groups && !stat)) {
        ret = -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s (K = %lld)", lname,
                          (long long)K);
        goto out;
    }
    for (int64_t i = 0; i < K; i++) {
        diag[i] = st->H[i * K + i];
        perm[i] = i;
        if (diag[i] == 0) { /* dead input: no signal, no weight */
            diag[i] = 1;
            for (int64_t n = 0; n < N; n++) W[n * K + i] = 0;
        }
    }
    if (stat)
        for (int64_t n = 0; n < N; n++)
            for (int64_t g = 0; g < ng; g++) stat[n * ng + g] = find_params(W + n * K + g * G, G, inst->sym);
    if (inst->act_order) sort_by_key(diag, perm, K);
    double t0 = now_s();
    double rho = inst->shrink < 0 ? oas_rho(st) : inst->shrink;
    int4g_log(c, QTOOL_LOG_DEBUG, "gptq pack: %s: %lld calibration rows for K = %lld; H off-diagonal shrunk by %.3f",
              lname, (long long)st->nsamples, (long long)K, rho);
    double damp = inst->damp;
    int ok = 0;
    for (int attempt = 0; attempt <= GPTQ_DAMP_RETRIES; attempt++) {
        build_h(st, perm, rho, damp, Hp);
        int rc = gptq_inverse_cholesky_t(c, Hp, Ut, K);
        if (rc == 0) {
            ok = 1;
            break;
        }
        if (rc > 0) {
            ret = -int4g_fail(c, rc, "gptq pack: out of memory for %s", lname);
            goto out;
        }
        if (damp >= 1.0) break;
        damp = next_damp(c, lname, damp);
    }
    if (!ok) {
        int4g_log(c, QTOOL_LOG_WARN, "gptq pack: %s: H cannot be factorised; round-to-nearest instead", lname);
        rtn(p, W, inst->sym);
        ret = 1;
        goto out;
    }
    double t1 = now_s();
    for (int64_t n = 0; n < N; n++)
        for (int64_t a = 0; a < K; a++) Wp[n * K + a] = W[n * K + perm[a]];
    gptq_job job = {Wp, Ut, perm, stat, p, N, K, G, inst->sym, c, 0};
    const qtool_host_services *h = c->host;
    int64_t chunks = (N + GPTQ_ROW_CHUNK - 1) / GPTQ_ROW_CHUNK;
    if (h->parallel_for)
        h->parallel_for(h->ctx, chunks, 1, gptq_rows, &job);
    else
        gptq_rows(&job, 0, chunks);
    if (job.failed) {
        ret = -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s", lname);
        goto out;
    }
    if (p->g_idx)
        for (int64_t a = 0; a < K; a++) p->g_idx[perm[a]] = (int32_t)(inst->static_groups ? perm[a] / G : a / G);
    int4g_log(c, QTOOL_LOG_DEBUG, "gptq pack: %s on the CPU (K = %lld, N = %lld): H^-1 factor %.3f s, columns %.3f s",
              lname, (long long)K, (long long)N, t1 - t0, now_s() - t1);
out:
    int4g_tmp_free(c, perm);
    int4g_tmp_free(c, diag);
    int4g_tmp_free(c, Hp);
    int4g_tmp_free(c, Ut);
    int4g_tmp_free(c, Wp);
    int4g_tmp_free(c, stat);
    return ret;
}

/* ------------------------------------------------------------ slots */

static int gptq_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    return int4g_probe("gptq", dev, reason, reason_len);
}

static int gptq_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                       qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "gptq: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    gptq_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->group_size = 128;
    inst->damp = 0.01;
    inst->sym = 1;
    inst->shrink = -1;
    int cuda_path = INT4G_PATH_AUTO;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "group_size")) {
            if (!int4g_valid_group_size(opts[i].i)) {
                snprintf(msg, msg_len, "gptq: group_size must be a multiple of 32 from 32 to 65536, or -1; got %lld",
                         (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->group_size = opts[i].i;
        } else if (!strcmp(name, "damp")) {
            if (!(opts[i].f >= 0.0 && opts[i].f <= 1.0)) {
                snprintf(msg, msg_len, "gptq: damp must be in [0, 1], got %g", opts[i].f);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->damp = opts[i].f;
        } else if (!strcmp(name, "act_order")) {
            inst->act_order = opts[i].i != 0;
        } else if (!strcmp(name, "sym")) {
            inst->sym = opts[i].i != 0;
        } else if (!strcmp(name, "static_groups")) {
            inst->static_groups = opts[i].i != 0;
        } else if (!strcmp(name, "shrink")) {
            if (!(opts[i].f == -1.0 || (opts[i].f >= 0.0 && opts[i].f <= 1.0))) {
                snprintf(msg, msg_len, "gptq: shrink must be -1 (automatic) or in [0, 1], got %g", opts[i].f);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->shrink = opts[i].f;
        } else if (!strcmp(name, "calib_device")) {
            inst->calib_device = (int)(opts[i].i >= 0 && opts[i].i <= 2 ? opts[i].i : 0);
#ifndef QTOOL_HAVE_CUDA
            if (inst->calib_device == GPTQ_CALIB_CUDA) {
                snprintf(msg, msg_len, "gptq: calib_device=cuda, but this build has no CUDA code");
                free(inst);
                return QTOOL_ERR_UNSUPPORTED;
            }
#endif
        } else if (!strcmp(name, "checkpoint_format")) {
            inst->format = opts[i].i == 1 ? GPTQ_FMT_V2 : GPTQ_FMT_V1;
        } else if (!strcmp(name, "cuda_kernel")) {
            cuda_path = (int)(opts[i].i >= 0 && opts[i].i <= 2 ? opts[i].i : 0);
        } else {
            snprintf(msg, msg_len, "gptq: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    int4g_ctx_init(&inst->c, host, "gptq");
    inst->c.cuda_path = cuda_path;
    int4g_store_init(&inst->store);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void gptq_destroy(qtool_instance *qi)
{
    gptq_instance *inst = (gptq_instance *)qi;
    if (!inst) return;
    int4g_store_clear(&inst->c, &inst->store);
    if (inst->staging) inst->c.host->free(inst->c.host->ctx, QTOOL_DEVICE_CUDA, inst->staging);
#ifdef QTOOL_HAVE_CUDA
    if (inst->blas) gpcu_blas_destroy(inst->blas);
    if (inst->solver) gpcu_solver_destroy(inst->solver);
#endif
    int4g_ctx_destroy(&inst->c);
    free(inst);
}

/* A host copy of a device Hessian, as the CPU path stores it (upper
 * triangle). Returns 0 or -status. */
static int download_h(gptq_instance *inst, const gptq_stats *st, double **out)
{
    int4g_ctx *c = &inst->c;
    const int64_t K = st->K;
    double *Hh = int4g_tmp_alloc(c, (size_t)(K * K) * sizeof(double));
    if (!Hh) return -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for H (K = %lld)", (long long)K);
#ifdef QTOOL_HAVE_CUDA
    char msg[256];
    const qtool_host_services *h = c->host;
    int rc = i4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc) rc = gpcu_download(Hh, st->dH, (size_t)(K * K) * sizeof(double), h->cuda_stream, msg, sizeof msg);
    if (rc) {
        int4g_tmp_free(c, Hh);
        return -int4g_fail(c, rc, "gptq pack: %s", msg);
    }
    for (int64_t i = 0; i < K; i++) /* one triangle, as the CPU sum keeps it */
        for (int64_t j = i + 1; j < K; j++) Hh[i * K + j] = Hh[j * K + i];
#endif
    *out = Hh;
    return 0;
}

/* GPTQ on the host: H downloaded when it was summed on the device.
 * Returns 0, 1 (round-to-nearest) or -status. */
static int pack_on_cpu(gptq_instance *inst, const char *lname, const gptq_stats *st, const qtool_tensor *wt,
                       qtool_packed *p)
{
    int4g_ctx *c = &inst->c;
    const int64_t K = p->K;
    double *W = load_weights(c, wt, p->N * K);
    if (!W) return -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s", lname);
    gptq_stats host_view;
    double *Hdown = NULL;
    int r = 0;
    if (st && st->dH && st->nsamples > 0 && st->K == K) {
        r = download_h(inst, st, &Hdown);
        host_view = *st;
        host_view.H = Hdown;
        st = &host_view;
    }
    if (r < 0) {
        /* reported */
    } else if (!st || st->nsamples == 0 || st->K != K) {
        int4g_log(c, QTOOL_LOG_WARN, "gptq pack: no calibration data for %s; plain round-to-nearest", lname);
        rtn(p, W, inst->sym);
        r = 1;
    } else {
        r = run_gptq(inst, lname, st, W, p);
    }
    int4g_tmp_free(c, Hdown);
    int4g_tmp_free(c, W);
    return r;
}

#ifdef QTOOL_HAVE_CUDA
/* run_gptq with H on the device (st->dH): the same steps on the GPU.
 * Returns 0, 1 (round-to-nearest), GPTQ_ON_CPU or -status. */
static int run_gptq_cuda(gptq_instance *inst, const char *lname, const gptq_stats *st, const qtool_tensor *wt,
                         qtool_packed *p)
{
    int4g_ctx *c = &inst->c;
    const qtool_host_services *h = c->host;
    const int64_t N = p->N, K = p->K, G = p->G;
    char msg[256];
    const double t0 = now_s();
    int rc = i4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && !inst->solver) rc = gpcu_solver_create(&inst->solver, msg, sizeof msg);
    if (rc) return -int4g_fail(c, rc, "gptq pack: %s", msg);
    gpcu_pack *pk = NULL;
    rc = gpcu_pack_begin(inst->solver, h, st->dH, N, K, G, &pk, msg, sizeof msg);
    if (rc == QTOOL_ERR_OUT_OF_MEMORY) {
        int4g_log(c, QTOOL_LOG_WARN, "gptq pack: %s: %s; GPTQ runs on the CPU", lname, msg);
        return GPTQ_ON_CPU;
    }
    if (rc) return -int4g_fail(c, rc, "gptq pack: %s: %s", lname, msg);
    int64_t *perm = int4g_tmp_alloc(c, (size_t)K * sizeof(int64_t));
    double *hdiag = int4g_tmp_alloc(c, (size_t)(3 * K) * sizeof(double));
    unsigned char *dead = int4g_tmp_alloc(c, (size_t)K);
    double *W = NULL;
    int ret = 0;
    if (!perm || !hdiag || !dead) {
        ret = -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s (K = %lld)", lname,
                          (long long)K);
        goto out;
    }
    double *key = hdiag + K, *dvec = hdiag + 2 * K;
    rc = gpcu_pack_diag(pk, hdiag, msg, sizeof msg);
    if (rc) goto device_failed;
    int64_t live = 0;
    for (int64_t i = 0; i < K; i++) {
        perm[i] = i;
        dead[i] = hdiag[i] == 0; /* no signal, no weight */
        key[i] = dead[i] ? 1 : hdiag[i];
        live += hdiag[i] > 0;
    }
    if (inst->act_order) sort_by_key(key, perm, K);
    rc = gpcu_pack_weights(pk, wt->data, wt->dtype, perm, dead, inst->sym, inst->static_groups, msg, sizeof msg);
    if (rc) goto device_failed;
    double rho = inst->shrink;
    if (rho < 0) {
        double offdiag = 0;
        rc = gpcu_pack_offdiag_corr(pk, &offdiag, msg, sizeof msg);
        if (rc) goto device_failed;
        rho = oas_from_trace((double)live + offdiag, live, st->nsamples);
    }
    int4g_log(c, QTOOL_LOG_DEBUG, "gptq pack: %s: %lld calibration rows for K = %lld; H off-diagonal shrunk by %.3f",
              lname, (long long)st->nsamples, (long long)K, rho);
    /* build_h's diagonal, in processing order */
    double mean = 0;
    for (int64_t a = 0; a < K; a++) {
        double v = hdiag[perm[a]];
        dvec[a] = v == 0 ? 1 : v;
        mean += dvec[a];
    }
    mean /= (double)K;
    double damp = inst->damp;
    int ok = 0;
    for (int attempt = 0; attempt <= GPTQ_DAMP_RETRIES; attempt++) {
        for (int64_t a = 0; a < K; a++) key[a] = dvec[a] + damp * mean;
        int not_pd = 0;
        rc = gpcu_pack_factor(pk, key, 1.0 - rho, &not_pd, msg, sizeof msg);
        if (rc) goto device_failed;
        if (!not_pd) {
            ok = 1;
            break;
        }
        if (damp >= 1.0) break;
        damp = next_damp(c, lname, damp);
    }
    if (!ok) {
        int4g_log(c, QTOOL_LOG_WARN, "gptq pack: %s: H cannot be factorised; round-to-nearest instead", lname);
        W = load_weights(c, wt, N * K);
        if (!W) {
            ret = -int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s", lname);
            goto out;
        }
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++)
                if (dead[k]) W[n * K + k] = 0;
        rtn(p, W, inst->sym);
        ret = 1;
        goto out;
    }
    const double t1 = now_s();
    rc = gpcu_pack_quantize(pk, inst->sym, inst->static_groups, p->qw, p->scales, p->zeros, msg, sizeof msg);
    if (rc) goto device_failed;
    if (p->g_idx)
        for (int64_t a = 0; a < K; a++) p->g_idx[perm[a]] = (int32_t)(inst->static_groups ? perm[a] / G : a / G);
    int4g_log(c, QTOOL_LOG_DEBUG,
              "gptq pack: %s on the GPU (K = %lld, N = %lld): H^-1 factor %.3f s, columns %.3f s", lname,
              (long long)K, (long long)N, t1 - t0, now_s() - t1);
    goto out;
device_failed:
    ret = -int4g_fail(c, rc, "gptq pack: %s: %s", lname, msg);
out:
    gpcu_pack_end(pk);
    int4g_tmp_free(c, perm);
    int4g_tmp_free(c, hdiag);
    int4g_tmp_free(c, dead);
    int4g_tmp_free(c, W);
    return ret;
}
#endif

static int gptq_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    gptq_instance *inst = (gptq_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    int64_t N, K, G;
    int rc = int4g_check_pack(c, args, inst->group_size, &N, &K, &G);
    if (rc) return rc;
    if (args->has_input_scale) *args->has_input_scale = 0;
    const qtool_layer_info *layer = args->layer;
    const char *lname = layer && layer->name ? layer->name : "layer";
    qtool_packed *p = int4g_new(c, N, K, G, K / G, inst->act_order && !inst->static_groups, args->bias != NULL);
    if (!p) return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq pack: out of memory for %s", lname);
    pthread_mutex_lock(&inst->store.lock);
    if (layer) int4g_store_release_before(c, &inst->store, layer->block_index);
    int4g_stats *e = int4g_store_get(&inst->store, layer, 0);
    const gptq_stats *st = e ? e->data : NULL;
    int r = GPTQ_ON_CPU;
#ifdef QTOOL_HAVE_CUDA
    if (st && st->dH && st->nsamples > 0 && st->K == K) r = run_gptq_cuda(inst, lname, st, args->weight, p);
#endif
    if (r == GPTQ_ON_CPU) r = pack_on_cpu(inst, lname, st, args->weight, p);
    pthread_mutex_unlock(&inst->store.lock);
    if (r < 0) {
        int4g_free(p);
        return -r;
    }
    if (p->g_idx && r == 1)
        for (int64_t k = 0; k < K; k++) p->g_idx[k] = (int32_t)(k / G);
    p->flags = inst->format == GPTQ_FMT_V2 ? GPTQ_FLAG_V2 : 0;
    int4g_drop_trivial_g_idx(p);
    int4g_set_bias(p, args->bias);
    return int4g_finish(p, args->device, out);
}

static void gptq_free_packed(qtool_packed *p) { int4g_free(p); }

/* ------------------------------------------------------------ save/load */

/* gptqmodel's v1 <-> v2 conversion: one 32-bit subtraction per word, which
 * is exact both ways (a zero of 0 borrows from the next nibble in v1, as
 * gptqmodel's does). */
#define GPTQ_V1_OFFSET 0x11111111u

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

static int gptq_save_fmt(const qtool_packed *pk, const qtool_save_sink *sink, int format)
{
    const int4g_ctx *c = pk->ctx;
    qtool_packed *p = NULL;
    int copied = 0;
    int rc = int4g_host_view(pk, &p, &copied);
    if (rc) return rc;
    const int64_t N = p->N, K = p->K, ng = p->ngroups, nw = (N + 7) / 8, kw = K / 8;
    uint32_t *qweight = int4g_tmp_alloc(c, (size_t)(kw * N) * 4);
    uint32_t *qzeros = int4g_tmp_alloc(c, (size_t)(ng * nw) * 4);
    uint16_t *scales = int4g_tmp_alloc(c, (size_t)(ng * N) * 2);
    int32_t *g_idx = int4g_tmp_alloc(c, (size_t)K * 4);
    uint16_t *bias = p->bias ? int4g_tmp_alloc(c, (size_t)N * 2) : NULL;
    if (!qweight || !qzeros || !scales || !g_idx || (p->bias && !bias)) {
        rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq save: out of memory");
        goto out;
    }
    /* the in-memory word of (n, k/8) is already packed along the input, LSB first */
    for (int64_t r = 0; r < kw; r++)
        for (int64_t n = 0; n < N; n++) qweight[r * N + n] = p->qw[n * kw + r];
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t cw = 0; cw < nw; cw++) {
            uint32_t w = 0;
            for (int j = 0; j < 8; j++) {
                int64_t n = 8 * cw + j;
                uint32_t z = n < N ? p->zeros[n * ng + g] : 8u; /* padding past N */
                w |= (z & 15u) << (4 * j);
            }
            qzeros[g * nw + cw] = format == GPTQ_FMT_V1 ? w - GPTQ_V1_OFFSET : w;
        }
        for (int64_t n = 0; n < N; n++) scales[g * N + n] = p->scales[n * ng + g];
    }
    for (int64_t k = 0; k < K; k++) g_idx[k] = p->g_idx ? p->g_idx[k] : (int32_t)(k / p->G);
    qtool_tensor t = view2(qweight, QTOOL_DTYPE_I32, kw, N);
    rc = sink->put(sink->ctx, "qweight", &t);
    if (!rc) {
        t = view2(qzeros, QTOOL_DTYPE_I32, ng, nw);
        rc = sink->put(sink->ctx, "qzeros", &t);
    }
    if (!rc) {
        t = view2(scales, QTOOL_DTYPE_F16, ng, N);
        rc = sink->put(sink->ctx, "scales", &t);
    }
    if (!rc) {
        t = view2(g_idx, QTOOL_DTYPE_I32, K, 0);
        rc = sink->put(sink->ctx, "g_idx", &t);
    }
    if (!rc && bias) {
        for (int64_t n = 0; n < N; n++) bias[n] = qtool_f32_to_f16(p->bias[n]);
        t = view2(bias, QTOOL_DTYPE_F16, N, 0);
        rc = sink->put(sink->ctx, "bias", &t);
    }
    if (rc) rc = int4g_fail(c, rc, "gptq save: the host refused a tensor");
out:
    int4g_tmp_free(c, qweight);
    int4g_tmp_free(c, qzeros);
    int4g_tmp_free(c, scales);
    int4g_tmp_free(c, g_idx);
    int4g_tmp_free(c, bias);
    if (copied) int4g_free(p);
    return rc;
}

static int gptq_save(const qtool_packed *pk, const qtool_save_sink *sink)
{
    if (!pk || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    return gptq_save_fmt(pk, sink, (pk->flags & GPTQ_FLAG_V2) ? GPTQ_FMT_V2 : GPTQ_FMT_V1);
}

static int get_tensor(const int4g_ctx *c, const qtool_load_source *src, const char *name, const char *suffix,
                      int dtype, int ndim, qtool_tensor *t)
{
    if (src->get(src->ctx, suffix, t) != QTOOL_OK)
        return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: missing tensor '%s'", name, suffix);
    int ok = t->data && t->dtype == dtype && t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++) ok = t->shape[i] > 0 && t->shape[i] <= ((int64_t)1 << 24);
    if (!ok)
        return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: tensor '%s' must be %d-D %s", name, suffix, ndim,
                          dtype == QTOOL_DTYPE_I32 ? "I32" : "F16");
    return QTOOL_OK;
}

static int gptq_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                     qtool_packed **out)
{
    gptq_instance *inst = (gptq_instance *)qi;
    if (!inst || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = &inst->c;
    const char *name = layer && layer->name ? layer->name : "layer";
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "gptq load: unknown device %d", device);
#ifndef QTOOL_HAVE_CUDA
    if (device == QTOOL_DEVICE_CUDA) return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "gptq load: built without CUDA support");
#endif
    qtool_tensor qw, qz, sc, gi, b;
    int rc = get_tensor(c, src, name, "qweight", QTOOL_DTYPE_I32, 2, &qw);
    if (!rc) rc = get_tensor(c, src, name, "qzeros", QTOOL_DTYPE_I32, 2, &qz);
    if (!rc) rc = get_tensor(c, src, name, "scales", QTOOL_DTYPE_F16, 2, &sc);
    if (rc) return rc;
    const int64_t K = qw.shape[0] * 8, N = qw.shape[1], ng = sc.shape[0], nw = (N + 7) / 8;
    if (sc.shape[1] != N || qz.shape[0] != ng || qz.shape[1] != nw || ng > K)
        return int4g_fail(c, QTOOL_ERR_FORMAT,
                          "gptq load: %s: qweight [%lld, %lld], qzeros [%lld, %lld] and scales [%lld, %lld] disagree",
                          name, (long long)qw.shape[0], (long long)qw.shape[1], (long long)qz.shape[0],
                          (long long)qz.shape[1], (long long)sc.shape[0], (long long)sc.shape[1]);
    if (layer && layer->in_features > 0 && (layer->in_features != K || layer->out_features != N))
        return int4g_fail(c, QTOOL_ERR_FORMAT,
                          "gptq load: %s: packed shape %lldx%lld does not match the layer %lldx%lld", name,
                          (long long)N, (long long)K, (long long)layer->out_features, (long long)layer->in_features);
    if (K % 32 != 0)
        return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "gptq load: %s: K = %lld is not a multiple of 32", name,
                          (long long)K);
    int has_gidx = src->has(src->ctx, "g_idx");
    if (has_gidx) {
        rc = get_tensor(c, src, name, "g_idx", QTOOL_DTYPE_I32, 1, &gi);
        if (rc) return rc;
        if (gi.shape[0] != K)
            return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: g_idx has %lld entries, K is %lld", name,
                              (long long)gi.shape[0], (long long)K);
        const int32_t *gv = gi.data;
        for (int64_t k = 0; k < K; k++)
            if (gv[k] < 0 || gv[k] >= ng)
                return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: g_idx[%lld] = %d is outside [0, %lld)", name,
                                  (long long)k, gv[k], (long long)ng);
    } else if (K % ng != 0) {
        return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: no g_idx and %lld groups do not divide K = %lld", name,
                          (long long)ng, (long long)K);
    }
    int has_bias = src->has(src->ctx, "bias");
    if (has_bias) {
        if (src->get(src->ctx, "bias", &b) != QTOOL_OK || !b.data || qtool_tensor_numel(&b) != N ||
            (b.dtype != QTOOL_DTYPE_F16 && b.dtype != QTOOL_DTYPE_F32 && b.dtype != QTOOL_DTYPE_BF16))
            return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: bias must have %lld float elements", name,
                              (long long)N);
    }
    const uint16_t *scv = sc.data;
    for (int64_t i = 0; i < ng * N; i++)
        if (!isfinite(qtool_f16_to_f32(scv[i])))
            return int4g_fail(c, QTOOL_ERR_FORMAT, "gptq load: %s: scale %lld is not finite", name, (long long)i);
    const int64_t G = K % ng == 0 ? K / ng : (K + ng - 1) / ng;
    qtool_packed *p = int4g_new(c, N, K, G, ng, 1, has_bias);
    if (!p) return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "gptq load: out of memory for %s", name);
    const uint32_t *qwv = qw.data, *qzv = qz.data;
    const int64_t kw = K / 8;
    for (int64_t r = 0; r < kw; r++)
        for (int64_t n = 0; n < N; n++) p->qw[n * kw + r] = qwv[r * N + n];
    for (int64_t g = 0; g < ng; g++) {
        for (int64_t cw = 0; cw < nw; cw++) {
            uint32_t w = qzv[g * nw + cw];
            if (inst->format == GPTQ_FMT_V1) w += GPTQ_V1_OFFSET;
            for (int j = 0; j < 8; j++) {
                int64_t n = 8 * cw + j;
                if (n < N) p->zeros[n * ng + g] = (uint8_t)((w >> (4 * j)) & 15u);
            }
        }
        for (int64_t n = 0; n < N; n++) p->scales[n * ng + g] = scv[g * N + n];
    }
    for (int64_t k = 0; k < K; k++) p->g_idx[k] = has_gidx ? ((const int32_t *)gi.data)[k] : (int32_t)(k / G);
    if (has_bias)
        for (int64_t n = 0; n < N; n++) p->bias[n] = int4g_load_elem(b.data, b.dtype, n);
    p->flags = inst->format == GPTQ_FMT_V2 ? GPTQ_FLAG_V2 : 0;
    int4g_drop_trivial_g_idx(p);
    return int4g_finish(p, device, out);
}

static int gptq_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const gptq_instance *inst = (const gptq_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"gptq\", \"bits\": 4, \"group_size\": %lld, \"damp_percent\": %g, "
                     "\"desc_act\": %s, \"static_groups\": %s, \"sym\": %s, \"true_sequential\": true, "
                     "\"checkpoint_format\": \"%s\"}",
                     (long long)inst->group_size, inst->damp, inst->act_order ? "true" : "false",
                     inst->static_groups ? "true" : "false", inst->sym ? "true" : "false",
                     inst->format == GPTQ_FMT_V2 ? "gptq_v2" : "gptq");
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

/* AutoGPTQ / gptqmodel 4-bit checkpoints in the "gptq" (v1) or "gptq_v2"
 * format; other packings (marlin, bitblas) have other layouts. */
static int gptq_accepts_config(const char *json)
{
    if (!json) return 0;
    size_t n = strnlen(json, 1 << 20);
    char s[32];
    if (!int4g_json_string(json, n, "quant_method", s, sizeof s) || strcasecmp(s, "gptq")) return 0;
    double bits;
    if (int4g_json_number(json, n, "bits", &bits) && bits != 4) return 0;
    if (int4g_json_string(json, n, "checkpoint_format", s, sizeof s) && strcmp(s, "gptq") && strcmp(s, "gptq_v2"))
        return 0;
    int marlin;
    if (int4g_json_bool(json, n, "is_marlin_format", &marlin) && marlin) return 0;
    return 1;
}

static const qtool_plugin_desc gptq_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "gptq",
    .version = "1.0.0",
    .summary = "GPTQ: Hessian-based error feedback, int4 in groups of 128, optional act-order (AutoGPTQ format)",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = QTOOL_PLUGIN_NEEDS_CALIBRATION,
    .weight_bits = 4,
    .activation_bits = 16,
    .options = gptq_options,
    .n_options = sizeof gptq_options / sizeof gptq_options[0],
    .init = NULL,
    .shutdown = NULL,
    .probe = gptq_probe,
    .create = gptq_create,
    .destroy = gptq_destroy,
    .calibrate = gptq_calibrate,
    .pack = gptq_pack,
    .free_packed = gptq_free_packed,
    .matmul_cpu = int4g_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = int4g_matmul_cuda,
#else
    .matmul_cuda = NULL,
#endif
    .memory = int4g_memory,
    .save = gptq_save,
    .load = gptq_load,
    .quant_config_json = gptq_quant_config_json,
    .accepts_config = gptq_accepts_config,
    .dequantize = int4g_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &gptq_desc; }
