/* smoothquant: W8A8 int8 with activation smoothing (SmoothQuant, Xiao et
 * al. 2023). Calibration records max |x_j| per input channel of every
 * layer; pack() moves quantization difficulty from activations to weights
 * with s_j = max|X_j|^alpha / max|W[:,j]|^(1-alpha), packs W * s as
 * per-output-channel int8 and returns s to the runtime, which divides the
 * layer input by s (folded into the preceding norm where it can). At run
 * time activations are int8 per token (dynamic) or per tensor (static, from
 * calibration); the product runs in int8 with int32 accumulation and is
 * dequantized with the product of the scales, plus the bias. */
#include <qtool/plugin.h>

#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ct_config.h"
#include "ct_layer.h"
#include "sq_int8.h"
#ifdef QTOOL_HAVE_CUDA
#include "sq_cuda.h"
#endif

/* Per-layer calibration statistic: max |x_j| over every token seen. */
typedef struct sq_stat {
    char *name;
    int64_t K;
    float *amax;
    int64_t tokens;
} sq_stat;

typedef struct sq_instance {
    const qtool_host_services *host;
    double alpha;
    int static_act;
    int gemm; /* SQCU_GEMM_*: 0 fused, 1 cuBLASLt, 2 dp4a */
    size_t chunk_bytes;
    /* Guards the statistics and the CUDA scratch. */
    pthread_mutex_t lock;
    sq_stat *stats;
    size_t n_stats, cap_stats;
    /* CUDA scratch shared by the instance's layers (they run one after
     * another on the host's stream); memory() reports it with the layer
     * that used it last, so per-layer figures add up to the allocator's. */
    void *ws, *lt_ws;
    size_t ws_bytes, lt_ws_bytes;
    const qtool_packed *ws_owner;
    void *lt;
} sq_instance;

struct qtool_packed {
    sq_instance *inst;
    int device;
    int64_t N, K, Kp; /* Kp: K rounded up to 16 (cuBLASLt int8 and 16-byte rows) */
    int8_t *w;        /* [N, Kp] codes of W * s */
    float *ws;        /* [N] absmax / 127 per output channel */
    float *bias;      /* [N] or NULL */
    int static_act;
    float act_scale, act_inv; /* static: dequantization scale and its reciprocal */
    uint64_t mem[QTOOL_MEM_COUNT];
};

static const qtool_option_desc sq_options[] = {
    {"alpha", QTOOL_OPT_FLOAT, "0.5",
     "migration strength: s_j = max|X_j|^alpha / max|W[:,j]|^(1-alpha); 0 puts all the difficulty on the "
     "activations' side of the weights, 1 on the weights",
     NULL, 0.0, 1.0},
    {"act_scale", QTOOL_OPT_ENUM, "dynamic",
     "activation scale: dynamic (absmax per token at run time) or static (one per-tensor scale from calibration)",
     "dynamic|static", 0, -1},
    {"gemm", QTOOL_OPT_ENUM, "auto",
     "CUDA int8 GEMM: auto (tensor-core kernel with the scales fused into its epilogue), cublaslt (cuBLASLt into "
     "int32, then an epilogue kernel) or builtin (dp4a kernel)",
     "auto|cublaslt|builtin", 0, -1},
    {"chunk_mib", QTOOL_OPT_INT, "16",
     "CUDA, gemm=cublaslt|builtin: the int32 product is computed in row chunks of at most this many MiB "
     "(L2-sized keeps it on chip)",
     NULL, 1, 4096},
};

static const qtool_host_services *g_host;

#define say(host, level, ...) qtool_logf((host) ? (host) : g_host, "smoothquant", (level), __VA_ARGS__)
#define fail(host, status, ...) (say((host), QTOOL_LOG_ERROR, __VA_ARGS__), (status))

static void *p_alloc(qtool_packed *p, size_t bytes, int category)
{
    const qtool_host_services *h = p->inst->host;
    void *ptr = h->alloc(h->ctx, p->device, bytes ? bytes : 1, category);
    if (ptr) p->mem[category] += bytes ? bytes : 1;
    return ptr;
}

static void p_free(qtool_packed *p, void *ptr, size_t bytes, int category)
{
    if (!ptr) return;
    const qtool_host_services *h = p->inst->host;
    h->free(h->ctx, p->device, ptr);
    p->mem[category] -= bytes ? bytes : 1;
}

static void release_scratch(sq_instance *inst)
{
    const qtool_host_services *h = inst->host;
    if (inst->ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->ws);
    if (inst->lt_ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->lt_ws);
    inst->ws = inst->lt_ws = NULL;
    inst->ws_bytes = inst->lt_ws_bytes = 0;
    inst->ws_owner = NULL;
}

static void free_packed(qtool_packed *p)
{
    if (!p) return;
    sq_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) release_scratch(inst);
    pthread_mutex_unlock(&inst->lock);
    p_free(p, p->w, (size_t)(p->N * p->Kp), QTOOL_MEM_WEIGHTS);
    p_free(p, p->ws, (size_t)p->N * 4, QTOOL_MEM_SCALES);
    p_free(p, p->bias, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
    free(p);
}

static qtool_packed *new_packed(sq_instance *inst, int device, int64_t N, int64_t K, int with_bias)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->inst = inst;
    p->device = device;
    p->N = N;
    p->K = K;
    p->Kp = (K + 15) / 16 * 16;
    p->w = p_alloc(p, (size_t)(N * p->Kp), QTOOL_MEM_WEIGHTS);
    p->ws = p_alloc(p, (size_t)N * 4, QTOOL_MEM_SCALES);
    if (with_bias) p->bias = p_alloc(p, (size_t)N * 4, QTOOL_MEM_WEIGHTS);
    if (!p->w || !p->ws || (with_bias && !p->bias)) {
        free_packed(p);
        return NULL;
    }
    return p;
}

static int is_float_dtype(int dt) { return dt == QTOOL_DTYPE_F32 || dt == QTOOL_DTYPE_F16 || dt == QTOOL_DTYPE_BF16; }

static float load_elem(const void *data, int dtype, int64_t i)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)data)[i]);
    case QTOOL_DTYPE_BF16: return qtool_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

static int check_tensor(const qtool_host_services *host, const qtool_tensor *t, const char *what)
{
    char msg[256];
    return qtool_check_tensor(t, what, msg, sizeof msg) ? fail(host, QTOOL_ERR_INVALID_ARGUMENT, "%s", msg) : QTOOL_OK;
}

#ifdef QTOOL_HAVE_CUDA
static int upload(qtool_packed *g, const qtool_packed *c)
{
    char msg[256];
    const qtool_host_services *h = g->inst->host;
    void *st = h->cuda_stream;
    int rc = sqcu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc) rc = sqcu_copy(g->w, c->w, (size_t)(c->N * c->Kp), 0, st, msg, sizeof msg);
    if (!rc) rc = sqcu_copy(g->ws, c->ws, (size_t)c->N * 4, 0, st, msg, sizeof msg);
    if (!rc && c->bias) rc = sqcu_copy(g->bias, c->bias, (size_t)c->N * 4, 0, st, msg, sizeof msg);
    if (rc) return fail(h, rc, "smoothquant: upload of a packed layer: %s", msg);
    return QTOOL_OK;
}
#endif

static int finish_on_device(qtool_packed *cpu, int device, qtool_packed **out)
{
    if (device == QTOOL_DEVICE_CPU) {
        *out = cpu;
        return QTOOL_OK;
    }
#ifdef QTOOL_HAVE_CUDA
    qtool_packed *g = new_packed(cpu->inst, QTOOL_DEVICE_CUDA, cpu->N, cpu->K, cpu->bias != NULL);
    int rc = g ? upload(g, cpu) : fail(cpu->inst->host, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant: out of CUDA memory");
    if (g) {
        g->static_act = cpu->static_act;
        g->act_scale = cpu->act_scale;
        g->act_inv = cpu->act_inv;
    }
    free_packed(cpu);
    if (rc) {
        free_packed(g);
        return rc;
    }
    *out = g;
    return QTOOL_OK;
#else
    free_packed(cpu);
    return fail(NULL, QTOOL_ERR_UNSUPPORTED, "smoothquant: built without CUDA support");
#endif
}

/* ------------------------------------------------------------ slots */

static int sq_init(const qtool_host_services *host, char *msg, size_t msg_len)
{
    (void)msg;
    (void)msg_len;
    g_host = host;
    return QTOOL_OK;
}

static void sq_shutdown(void) { g_host = NULL; }

static int sq_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
#ifdef QTOOL_HAVE_CUDA
    const int cuda_code = 1;
#else
    const int cuda_code = 0;
#endif
    /* int8 tensor cores (IMMA) with row/column-major cuBLASLt layouts. */
    return qtool_probe_cpu_cuda(dev, "smoothquant", cuda_code, 7, 5, " for int8 tensor cores", reason, reason_len);
}

static int sq_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                     qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "smoothquant: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    sq_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->host = host;
    inst->alpha = 0.5;
    inst->chunk_bytes = (size_t)16 << 20;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "alpha")) {
            if (!(opts[i].f >= 0.0 && opts[i].f <= 1.0)) {
                snprintf(msg, msg_len, "smoothquant: alpha must be in [0, 1], got %g", opts[i].f);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->alpha = opts[i].f;
        } else if (!strcmp(name, "act_scale")) {
            if (opts[i].i < 0 || opts[i].i > 1) {
                snprintf(msg, msg_len, "smoothquant: act_scale must be dynamic or static");
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->static_act = opts[i].i == 1;
        } else if (!strcmp(name, "gemm")) {
            if (opts[i].i < 0 || opts[i].i > 2) {
                snprintf(msg, msg_len, "smoothquant: gemm must be auto, cublaslt or builtin");
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->gemm = (int)opts[i].i;
        } else if (!strcmp(name, "chunk_mib")) {
            if (opts[i].i < 1 || opts[i].i > 4096) {
                snprintf(msg, msg_len, "smoothquant: chunk_mib must be 1..4096, got %lld", (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->chunk_bytes = (size_t)opts[i].i << 20;
        } else {
            snprintf(msg, msg_len, "smoothquant: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    pthread_mutex_init(&inst->lock, NULL);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void sq_destroy(qtool_instance *qi)
{
    sq_instance *inst = (sq_instance *)qi;
    if (!inst) return;
    const qtool_host_services *h = inst->host;
    release_scratch(inst);
#ifdef QTOOL_HAVE_CUDA
    if (inst->lt) sqcu_lt_destroy(inst->lt);
#endif
    for (size_t i = 0; i < inst->n_stats; i++) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, inst->stats[i].amax);
        free(inst->stats[i].name);
    }
    free(inst->stats);
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

/* ------------------------------------------------------------ calibration */

static sq_stat *find_stat(sq_instance *inst, const char *name)
{
    for (size_t i = 0; i < inst->n_stats; i++)
        if (!strcmp(inst->stats[i].name, name)) return &inst->stats[i];
    return NULL;
}

typedef struct colmax_job {
    const float *x;
    int64_t T, K, nch;
    float *part;  /* [nch, K] column maxima of |x| */
    int64_t *bad; /* [nch] first non-finite element index, -1 if none */
} colmax_job;

static void colmax_chunks(void *arg, int64_t c0, int64_t c1)
{
    colmax_job *j = arg;
    for (int64_t c = c0; c < c1; c++) {
        int64_t t0 = j->T * c / j->nch, t1 = j->T * (c + 1) / j->nch;
        float *m = j->part + c * j->K;
        memset(m, 0, (size_t)j->K * sizeof(float));
        j->bad[c] = -1;
        int finite = 1;
        for (int64_t t = t0; t < t1; t++) {
            const float *r = j->x + t * j->K;
            for (int64_t k = 0; k < j->K; k++) {
                float a = fabsf(r[k]);
                m[k] = a > m[k] ? a : m[k];
                finite &= a <= FLT_MAX; /* false for inf and NaN */
            }
        }
        for (int64_t i = t0 * j->K; !finite && i < t1 * j->K; i++)
            if (!isfinite(j->x[i])) {
                j->bad[c] = i;
                break;
            }
    }
}

static int sq_calibrate(qtool_instance *qi, const qtool_layer_info *layer, const qtool_tensor *x)
{
    sq_instance *inst = (sq_instance *)qi;
    if (!inst) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    if (!layer || !layer->name || !layer->name[0])
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant calibrate: the layer has no name");
    int rc = check_tensor(h, x, "smoothquant calibrate: x");
    if (rc) return rc;
    if (x->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant calibrate: %s: x must be F32 on the CPU", layer->name);
    int64_t K = x->shape[x->ndim - 1], T = qtool_tensor_numel(x) / K;
    if (layer->in_features > 0 && layer->in_features != K)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant calibrate: %s: x has %lld features, the layer %lld",
                    layer->name, (long long)K, (long long)layer->in_features);
    /* One pass over x, in row chunks on the host's threads: per-chunk column
     * maxima (merged below; a maximum is exact in any order) and the first
     * non-finite element. */
    int64_t nch = T < 64 ? T : 64;
    float *part = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(nch * K) * 4, QTOOL_MEM_WORKSPACE);
    int64_t *bad = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)nch * 8, QTOOL_MEM_WORKSPACE);
    if (!part || !bad) {
        if (part) h->free(h->ctx, QTOOL_DEVICE_CPU, part);
        if (bad) h->free(h->ctx, QTOOL_DEVICE_CPU, bad);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant calibrate: out of memory");
    }
    colmax_job cj = {x->data, T, K, nch, part, bad};
    if (h->parallel_for)
        h->parallel_for(h->ctx, nch, 1, colmax_chunks, &cj);
    else
        colmax_chunks(&cj, 0, nch);
    int64_t first_bad = -1;
    for (int64_t c = 0; c < nch && first_bad < 0; c++) first_bad = bad[c];
    if (first_bad >= 0) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, part);
        h->free(h->ctx, QTOOL_DEVICE_CPU, bad);
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant calibrate: %s: activation %lld is not finite",
                    layer->name, (long long)first_bad);
    }
    pthread_mutex_lock(&inst->lock);
    sq_stat *s = find_stat(inst, layer->name);
    if (s && s->K != K) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant calibrate: %s: %lld features now, %lld before",
                    layer->name, (long long)K, (long long)s->K);
    }
    if (!s) {
        if (inst->n_stats == inst->cap_stats) {
            size_t cap = inst->cap_stats ? inst->cap_stats * 2 : 64;
            sq_stat *g = realloc(inst->stats, cap * sizeof *g);
            if (!g) {
                pthread_mutex_unlock(&inst->lock);
                return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant calibrate: out of memory");
            }
            inst->stats = g;
            inst->cap_stats = cap;
        }
        s = &inst->stats[inst->n_stats];
        memset(s, 0, sizeof *s);
        s->name = strdup(layer->name);
        s->amax = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)K * 4, QTOOL_MEM_OTHER);
        if (!s->name || !s->amax) {
            free(s->name);
            if (s->amax) h->free(h->ctx, QTOOL_DEVICE_CPU, s->amax);
            pthread_mutex_unlock(&inst->lock);
            return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant calibrate: out of memory");
        }
        memset(s->amax, 0, (size_t)K * 4);
        s->K = K;
        inst->n_stats++;
    }
    for (int64_t c = 0; c < nch; c++)
        for (int64_t k = 0; k < K; k++)
            if (part[c * K + k] > s->amax[k]) s->amax[k] = part[c * K + k];
    s->tokens += T;
    pthread_mutex_unlock(&inst->lock);
    h->free(h->ctx, QTOOL_DEVICE_CPU, part);
    h->free(h->ctx, QTOOL_DEVICE_CPU, bad);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ pack */

typedef struct wq_job {
    const void *w;
    int dtype;
    const float *s; /* [K] smoothing factors or NULL */
    qtool_packed *p;
    int failed;
} wq_job;

static void quant_weight_rows(void *arg, int64_t r0, int64_t r1)
{
    wq_job *j = arg;
    qtool_packed *p = j->p;
    const qtool_host_services *h = p->inst->host;
    float *row = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->K * 4, QTOOL_MEM_OTHER);
    if (!row) {
        j->failed = 1;
        return;
    }
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t k = 0; k < p->K; k++) {
            float v = load_elem(j->w, j->dtype, r * p->K + k);
            row[k] = j->s ? v * j->s[k] : v;
        }
        p->ws[r] = sq_quant_row_dynamic(row, p->K, p->Kp, p->w + r * p->Kp);
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, row);
}

static int has_input_scale_fields(const qtool_pack_args *a)
{
    return a->struct_size >= offsetof(qtool_pack_args, has_input_scale) + sizeof a->has_input_scale &&
           a->input_scale && a->has_input_scale;
}

static int sq_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    sq_instance *inst = (sq_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const qtool_tensor *w = args->weight;
    int rc = check_tensor(h, w, "smoothquant pack: weight");
    if (rc) return rc;
    if (w->ndim != 2 || !is_float_dtype(w->dtype) || w->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant pack: weight must be a 2-D F32/F16/BF16 CPU tensor");
    int64_t N = w->shape[0], K = w->shape[1];
    const char *name = args->layer && args->layer->name ? args->layer->name : "layer";
    if (args->layer && args->layer->in_features > 0 &&
        (args->layer->in_features != K || args->layer->out_features != N))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT,
                    "smoothquant pack: %s: weight [%lld, %lld] does not match layer %lldx%lld", name, (long long)N,
                    (long long)K, (long long)args->layer->out_features, (long long)args->layer->in_features);
    if (K > (1 << 30) || N > (1 << 30) || N * K > ((int64_t)1 << 40))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant pack: weight too large");
    if (args->bias) {
        rc = check_tensor(h, args->bias, "smoothquant pack: bias");
        if (rc) return rc;
        if (qtool_tensor_numel(args->bias) != N || !is_float_dtype(args->bias->dtype) ||
            args->bias->device != QTOOL_DEVICE_CPU)
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant pack: bias must be [%lld] float on the CPU",
                        (long long)N);
    }
    if (args->device != QTOOL_DEVICE_CPU && args->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant pack: unknown device %d", args->device);
#ifndef QTOOL_HAVE_CUDA
    if (args->device == QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_UNSUPPORTED, "smoothquant pack: built without CUDA support");
#endif

    /* The activation statistic, copied out under the lock. */
    float *amax = NULL, *s = NULL;
    pthread_mutex_lock(&inst->lock);
    sq_stat *st = args->layer && args->layer->name ? find_stat(inst, args->layer->name) : NULL;
    if (st && st->K == K) {
        amax = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)K * 4, QTOOL_MEM_OTHER);
        if (amax) memcpy(amax, st->amax, (size_t)K * 4);
    }
    pthread_mutex_unlock(&inst->lock);
    if (st && !amax) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant pack: out of memory");
    if (!amax && inst->static_act) {
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT,
                    "smoothquant pack: %s: act_scale=static needs calibration data for the layer", name);
    }
    int smooth = amax != NULL && has_input_scale_fields(args);
    if (!amax)
        say(h, QTOOL_LOG_WARN, "smoothquant: %s: no calibration data; plain W8A8 without smoothing (s = 1)", name);
    else if (!smooth)
        say(h, QTOOL_LOG_WARN, "smoothquant: %s: the caller takes no input scale; plain W8A8 without smoothing",
            name);

    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, args->bias != NULL);
    if (smooth) s = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)K * 4, QTOOL_MEM_OTHER);
    if (!p || (smooth && !s)) {
        free_packed(p);
        if (s) h->free(h->ctx, QTOOL_DEVICE_CPU, s);
        if (amax) h->free(h->ctx, QTOOL_DEVICE_CPU, amax);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant pack: out of memory");
    }
    if (smooth) {
        /* max |W[:, j]| per input channel. */
        float *cm = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)K * 4, QTOOL_MEM_OTHER);
        if (!cm) {
            free_packed(p);
            h->free(h->ctx, QTOOL_DEVICE_CPU, s);
            h->free(h->ctx, QTOOL_DEVICE_CPU, amax);
            return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant pack: out of memory");
        }
        memset(cm, 0, (size_t)K * 4);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) {
                float a = fabsf(load_elem(w->data, w->dtype, n * K + k));
                if (a > cm[k]) cm[k] = a;
            }
        for (int64_t k = 0; k < K; k++) s[k] = sq_smooth_factor(amax[k], cm[k], inst->alpha);
        h->free(h->ctx, QTOOL_DEVICE_CPU, cm);
    }
    wq_job job = {w->data, w->dtype, s, p, 0};
    if (h->parallel_for)
        h->parallel_for(h->ctx, N, 16, quant_weight_rows, &job);
    else
        quant_weight_rows(&job, 0, N);
    if (job.failed) {
        free_packed(p);
        if (s) h->free(h->ctx, QTOOL_DEVICE_CPU, s);
        if (amax) h->free(h->ctx, QTOOL_DEVICE_CPU, amax);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant pack: out of memory");
    }
    if (p->bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(args->bias->data, args->bias->dtype, i);
    if (inst->static_act) {
        /* One scale for every token: the largest smoothed input seen. */
        float m = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float v = amax[k] / (s ? s[k] : 1.0f);
            if (v > m) m = v;
        }
        p->static_act = 1;
        p->act_scale = m / 127.0f;
        if (!(p->act_scale >= SQ_MIN_ACT_SCALE)) p->act_scale = SQ_MIN_ACT_SCALE;
        p->act_inv = 1.0f / p->act_scale;
    }
    if (smooth) {
        memcpy(args->input_scale, s, (size_t)K * 4);
        *args->has_input_scale = 1;
    }
    if (s) h->free(h->ctx, QTOOL_DEVICE_CPU, s);
    if (amax) h->free(h->ctx, QTOOL_DEVICE_CPU, amax);
    return finish_on_device(p, args->device, out);
}

static void sq_free_packed(qtool_packed *p) { free_packed(p); }

/* ------------------------------------------------------------ CPU matmul */

static int32_t dot_i8_generic(const int8_t *a, const int8_t *b, int64_t n)
{
    int32_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i] * b[i];
        s1 += a[i + 1] * b[i + 1];
        s2 += a[i + 2] * b[i + 2];
        s3 += a[i + 3] * b[i + 3];
    }
    for (; i < n; i++) s0 += a[i] * b[i];
    return s0 + s1 + s2 + s3;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
/* a: weight codes (-128 possible in loaded checkpoints), b: activation
 * codes in [-127, 127]. maddubs multiplies |a| (as unsigned, so |-128| =
 * 128 is right) by b with a's sign; pairs stay below 2 * 128 * 127, so
 * nothing saturates. */
__attribute__((target("avx2"))) static int32_t dot_i8_avx2(const int8_t *a, const int8_t *b, int64_t n)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i va = _mm256_loadu_si256((const __m256i *)(a + i));
        __m256i vb = _mm256_loadu_si256((const __m256i *)(b + i));
        __m256i ua = _mm256_sign_epi8(va, va);
        __m256i sb = _mm256_sign_epi8(vb, va);
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ua, sb), ones));
    }
    if (i + 16 <= n) {
        __m128i va = _mm_loadu_si128((const __m128i *)(a + i));
        __m128i vb = _mm_loadu_si128((const __m128i *)(b + i));
        __m128i p = _mm_madd_epi16(_mm_maddubs_epi16(_mm_sign_epi8(va, va), _mm_sign_epi8(vb, va)),
                                   _mm_set1_epi16(1));
        acc = _mm256_add_epi32(acc, _mm256_zextsi128_si256(p));
        i += 16;
    }
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    int32_t t = _mm_cvtsi128_si32(s);
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}
#endif

typedef int32_t (*dot_i8_fn)(const int8_t *, const int8_t *, int64_t);

static dot_i8_fn pick_dot(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) return dot_i8_avx2;
#endif
    return dot_i8_generic;
}

#define SQ_TILE_M 16
#define SQ_TILE_N 64

typedef struct cpu_mm {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t M, tiles_m;
    int8_t *qa; /* [M, Kp] */
    float *sa;  /* [M] */
    dot_i8_fn dot;
} cpu_mm;

static void cpu_quant_rows(void *arg, int64_t r0, int64_t r1)
{
    cpu_mm *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t m = r0; m < r1; m++) {
        if (p->static_act) {
            sq_quant_row_static(j->x + m * p->K, p->K, p->Kp, p->act_inv, j->qa + m * p->Kp);
            j->sa[m] = p->act_scale;
        } else {
            j->sa[m] = sq_quant_row_dynamic(j->x + m * p->K, p->K, p->Kp, j->qa + m * p->Kp);
        }
    }
}

static void cpu_gemm_tiles(void *arg, int64_t t0, int64_t t1)
{
    cpu_mm *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t t = t0; t < t1; t++) {
        int64_t nt = t / j->tiles_m, mt = t % j->tiles_m;
        int64_t n0 = nt * SQ_TILE_N, n1 = n0 + SQ_TILE_N < p->N ? n0 + SQ_TILE_N : p->N;
        int64_t m0 = mt * SQ_TILE_M, m1 = m0 + SQ_TILE_M < j->M ? m0 + SQ_TILE_M : j->M;
        for (int64_t m = m0; m < m1; m++) {
            const int8_t *qa = j->qa + m * p->Kp;
            float *yr = j->y + m * p->N;
            for (int64_t n = n0; n < n1; n++) {
                int32_t acc = j->dot(p->w + n * p->Kp, qa, p->Kp);
                yr[n] = sq_dequant(acc, j->sa[m], p->ws[n], p->bias ? p->bias[n] : 0.0f);
            }
        }
    }
}

static int check_io(const qtool_packed *p, const qtool_matmul_args *a, int device, int64_t *M)
{
    char msg[256];
    int rc = qtool_check_matmul_args("smoothquant", a, device, p->K, p->N, M, msg, sizeof msg);
    return rc ? fail(p->inst->host, rc, "%s", msg) : QTOOL_OK;
}

static int sq_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant matmul_cpu: layer was packed for CUDA");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CPU, &M);
    if (rc) return rc;
    if (a->x->dtype != QTOOL_DTYPE_F32 || a->y->dtype != QTOOL_DTYPE_F32)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant matmul_cpu: x and y must be F32");
    cpu_mm j;
    memset(&j, 0, sizeof j);
    j.p = p;
    j.x = a->x->data;
    j.y = a->y->data;
    j.M = M;
    j.dot = pick_dot();
    j.tiles_m = (M + SQ_TILE_M - 1) / SQ_TILE_M;
    j.qa = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(M * p->Kp), QTOOL_MEM_WORKSPACE);
    j.sa = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)M * 4, QTOOL_MEM_WORKSPACE);
    if (!j.qa || !j.sa) {
        if (j.qa) h->free(h->ctx, QTOOL_DEVICE_CPU, j.qa);
        if (j.sa) h->free(h->ctx, QTOOL_DEVICE_CPU, j.sa);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant matmul_cpu: out of memory for %lld rows", (long long)M);
    }
    int64_t tiles = ((p->N + SQ_TILE_N - 1) / SQ_TILE_N) * j.tiles_m;
    if (h->parallel_for) {
        h->parallel_for(h->ctx, M, 4, cpu_quant_rows, &j);
        h->parallel_for(h->ctx, tiles, 1, cpu_gemm_tiles, &j);
    } else {
        cpu_quant_rows(&j, 0, M);
        cpu_gemm_tiles(&j, 0, tiles);
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, j.qa);
    h->free(h->ctx, QTOOL_DEVICE_CPU, j.sa);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ CUDA matmul */

#ifdef QTOOL_HAVE_CUDA
static int grow(sq_instance *inst, void **buf, size_t *have, size_t need, int category)
{
    if (*have >= need) return QTOOL_OK;
    const qtool_host_services *h = inst->host;
    if (*buf) h->free(h->ctx, QTOOL_DEVICE_CUDA, *buf);
    *have = 0;
    *buf = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, need, category);
    if (!*buf) return QTOOL_ERR_OUT_OF_MEMORY;
    *have = need;
    return QTOOL_OK;
}

/* One GEMM form with its workspace; the lock is held. */
static int run_gemm(qtool_packed *p, const sqcu_layer *L, const qtool_matmul_args *a, int64_t M, int gemm,
                    void *stream, char *msg, size_t msg_len)
{
    sq_instance *inst = p->inst;
    int rc = grow(inst, &inst->ws, &inst->ws_bytes, sqcu_workspace_bytes(L, M, gemm), QTOOL_MEM_WORKSPACE);
    if (!rc && gemm == SQCU_GEMM_CUBLASLT)
        rc = grow(inst, &inst->lt_ws, &inst->lt_ws_bytes, sqcu_lt_workspace_bytes(), QTOOL_MEM_WORKSPACE);
    if (rc) {
        snprintf(msg, msg_len, "out of CUDA memory for the workspace of %lld rows", (long long)M);
        return rc;
    }
    inst->ws_owner = p;
    return sqcu_matmul(L, a->x->data, a->y->data, M, a->x->dtype == QTOOL_DTYPE_BF16, inst->ws, inst->ws_bytes,
                       inst->lt, inst->lt_ws, inst->lt_ws_bytes, gemm, stream, msg, msg_len);
}

static int sq_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant matmul_cuda: layer was packed for the CPU");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CUDA, &M);
    if (rc) return rc;
    int dt = a->x->dtype;
    if ((dt != QTOOL_DTYPE_F16 && dt != QTOOL_DTYPE_BF16) || a->y->dtype != dt)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant matmul_cuda: x and y must both be F16 or both BF16");
    sq_instance *inst = p->inst;
    char msg[256] = "";
    void *stream = a->stream ? a->stream : h->cuda_stream;
    sqcu_layer L = {p->w, p->ws, p->bias, p->N, p->K, p->Kp, p->static_act, p->act_scale, p->act_inv,
                    inst->chunk_bytes};
    pthread_mutex_lock(&inst->lock);
    rc = sqcu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && !inst->lt && inst->gemm != SQCU_GEMM_BUILTIN) rc = sqcu_lt_create(&inst->lt, msg, sizeof msg);
    if (!rc) rc = run_gemm(p, &L, a, M, inst->gemm, stream, msg, sizeof msg);
    /* The fused kernel cannot take this call: cuBLASLt can. */
    if (rc == QTOOL_ERR_UNSUPPORTED && inst->gemm == SQCU_GEMM_FUSED)
        rc = run_gemm(p, &L, a, M, SQCU_GEMM_CUBLASLT, stream, msg, sizeof msg);
    pthread_mutex_unlock(&inst->lock);
    if (rc) return fail(h, rc, "smoothquant matmul_cuda: %s", msg);
    return QTOOL_OK;
}
#endif

static int sq_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < QTOOL_MEM_COUNT; i++) bytes[i] = p->mem[i];
    sq_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) bytes[QTOOL_MEM_WORKSPACE] += inst->ws_bytes + inst->lt_ws_bytes;
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

/* The codes and scales on the CPU, whichever device holds them: `codes`
 * [N, Kp] and `scales` [N] are filled (host memory from the host). */
static int fetch(const qtool_packed *p, int8_t **codes, float **scales)
{
    const qtool_host_services *h = p->inst->host;
    *codes = NULL;
    *scales = NULL;
    if (p->device == QTOOL_DEVICE_CPU) {
        *codes = p->w;
        *scales = p->ws;
        return QTOOL_OK;
    }
#ifdef QTOOL_HAVE_CUDA
    char msg[256];
    int8_t *c = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->N * p->Kp), QTOOL_MEM_OTHER);
    float *s = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->N * 4, QTOOL_MEM_OTHER);
    int rc = c && s ? QTOOL_OK : QTOOL_ERR_OUT_OF_MEMORY;
    if (!rc) rc = sqcu_copy(c, p->w, (size_t)(p->N * p->Kp), 1, h->cuda_stream, msg, sizeof msg);
    if (!rc) rc = sqcu_copy(s, p->ws, (size_t)p->N * 4, 1, h->cuda_stream, msg, sizeof msg);
    if (rc) {
        if (c) h->free(h->ctx, QTOOL_DEVICE_CPU, c);
        if (s) h->free(h->ctx, QTOOL_DEVICE_CPU, s);
        return fail(h, rc, "smoothquant: cannot read the packed layer back: %s",
                    rc == QTOOL_ERR_OUT_OF_MEMORY ? "out of memory" : msg);
    }
    *codes = c;
    *scales = s;
    return QTOOL_OK;
#else
    return fail(h, QTOOL_ERR_INTERNAL, "smoothquant: a CUDA layer in a build without CUDA");
#endif
}

static void unfetch(const qtool_packed *p, int8_t *codes, float *scales)
{
    if (p->device == QTOOL_DEVICE_CPU) return;
    const qtool_host_services *h = p->inst->host;
    if (codes) h->free(h->ctx, QTOOL_DEVICE_CPU, codes);
    if (scales) h->free(h->ctx, QTOOL_DEVICE_CPU, scales);
}

/* W_hat [N, K] = codes * scale: the (smoothed) weight the product uses. */
static int sq_dequantize(const qtool_packed *p, float *out)
{
    if (!p || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    int8_t *c;
    float *s;
    int rc = fetch(p, &c, &s);
    if (rc) return rc;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t k = 0; k < p->K; k++) out[n * p->K + k] = (float)c[n * p->Kp + k] * s[n];
    unfetch(p, c, s);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ save/load */

/* compressed-tensors "int-quantized" layout (what vLLM loads for W8A8
 * int8): weight I8 [N, K], weight_scale F32 [N, 1], input_scale F32 [1]
 * for a static activation scale, bias. The smoothing factors are not
 * saved: in a checkpoint they live in the preceding layers. */
static int sq_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (!p || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    int8_t *c;
    float *s;
    int rc = fetch(p, &c, &s);
    if (rc) return rc;
    int8_t *dense = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->N * p->K), QTOOL_MEM_OTHER);
    if (!dense) {
        unfetch(p, c, s);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant save: out of memory");
    }
    for (int64_t n = 0; n < p->N; n++) memcpy(dense + n * p->K, c + n * p->Kp, (size_t)p->K);
    rc = ct_put_w8a8(sink, QTOOL_DTYPE_I8, dense, p->N, p->K, s, p->static_act, p->act_scale, p->bias, p->device);
    h->free(h->ctx, QTOOL_DEVICE_CPU, dense);
    unfetch(p, c, s);
    if (rc) return fail(h, rc, "smoothquant save: the host refused a tensor");
    return QTOOL_OK;
}

/* A zero point must be absent or all zeros (symmetric quantization). */
static int zero_point_ok(const qtool_load_source *src, const char *suffix)
{
    if (!src->has(src->ctx, suffix)) return 1;
    qtool_tensor z;
    if (src->get(src->ctx, suffix, &z) || !z.data) return 0;
    size_t es = qtool_dtype_size(z.dtype);
    int64_t n = qtool_tensor_numel(&z);
    if (es == 0 || n < 0) return 0;
    const uint8_t *b = z.data;
    for (size_t i = 0; i < (size_t)n * es; i++)
        if (b[i]) return 0;
    return 1;
}

static int sq_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                   qtool_packed **out)
{
    sq_instance *inst = (sq_instance *)qi;
    if (!inst || !layer || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const char *name = layer->name ? layer->name : "layer";
    qtool_tensor w, sc, b, is;
    if (src->get(src->ctx, "weight", &w) || !w.data || w.dtype != QTOOL_DTYPE_I8 || w.ndim != 2 || w.shape[0] <= 0 ||
        w.shape[1] <= 0 || w.shape[0] > (1 << 30) || w.shape[1] > (1 << 30))
        return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: weight must be a 2-D I8 tensor", name);
    int64_t N = w.shape[0], K = w.shape[1];
    if (layer->in_features > 0 && (layer->in_features != K || layer->out_features != N))
        return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: weight [%lld, %lld] does not match the layer", name,
                    (long long)N, (long long)K);
    if (src->get(src->ctx, "weight_scale", &sc) || !sc.data || !is_float_dtype(sc.dtype) ||
        (qtool_tensor_numel(&sc) != N && qtool_tensor_numel(&sc) != 1))
        return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: weight_scale must be [%lld, 1] (or [1]) float", name,
                    (long long)N);
    int per_tensor_w = qtool_tensor_numel(&sc) == 1 && N != 1;
    if (!zero_point_ok(src, "weight_zero_point") || !zero_point_ok(src, "input_zero_point"))
        return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: asymmetric quantization (a nonzero zero point)",
                    name);
    int static_act = src->has(src->ctx, "input_scale");
    float act = 0.0f;
    if (static_act) {
        if (src->get(src->ctx, "input_scale", &is) || !is.data || !is_float_dtype(is.dtype) ||
            qtool_tensor_numel(&is) < 1 || qtool_tensor_numel(&is) > (1 << 20))
            return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: input_scale must be a float scalar", name);
        /* Per-partition scales of a fused layer: the largest covers all. */
        for (int64_t i = 0; i < qtool_tensor_numel(&is); i++) {
            float v = load_elem(is.data, is.dtype, i);
            if (!(v > 0.0f) || !isfinite(v))
                return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: input_scale is not a finite positive value",
                            name);
            if (v > act) act = v;
        }
    }
    int has_bias = src->has(src->ctx, "bias");
    if (has_bias && (src->get(src->ctx, "bias", &b) || !b.data || !is_float_dtype(b.dtype) ||
                     qtool_tensor_numel(&b) != N))
        return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: bias must have %lld float elements", name,
                    (long long)N);
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "smoothquant load: unknown device %d", device);
#ifndef QTOOL_HAVE_CUDA
    if (device == QTOOL_DEVICE_CUDA) return fail(h, QTOOL_ERR_UNSUPPORTED, "smoothquant load: built without CUDA");
#endif
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, has_bias);
    if (!p) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "smoothquant load: out of memory");
    const int8_t *src_w = w.data;
    for (int64_t n = 0; n < N; n++) {
        memcpy(p->w + n * p->Kp, src_w + n * K, (size_t)K);
        memset(p->w + n * p->Kp + K, 0, (size_t)(p->Kp - K));
    }
    for (int64_t n = 0; n < N; n++) {
        p->ws[n] = load_elem(sc.data, sc.dtype, per_tensor_w ? 0 : n);
        if (!(p->ws[n] >= 0.0f) || !isfinite(p->ws[n])) {
            free_packed(p);
            return fail(h, QTOOL_ERR_FORMAT, "smoothquant load: %s: weight_scale[%lld] is not a finite non-negative value",
                        name, (long long)n);
        }
    }
    if (has_bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(b.data, b.dtype, i);
    if (static_act) {
        p->static_act = 1;
        p->act_scale = act;
        p->act_inv = 1.0f / act;
    }
    return finish_on_device(p, device, out);
}

static int sq_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const sq_instance *inst = (const sq_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    const char *act = inst->static_act
                          ? "{\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"group_size\": null, "
                            "\"strategy\": \"tensor\", \"block_structure\": null, \"dynamic\": false, "
                            "\"actorder\": null, \"observer\": \"minmax\", \"observer_kwargs\": {}}"
                          : "{\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"group_size\": null, "
                            "\"strategy\": \"token\", \"block_structure\": null, \"dynamic\": true, "
                            "\"actorder\": null, \"observer\": null, \"observer_kwargs\": {}}";
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"compressed-tensors\", \"format\": \"int-quantized\", "
                     "\"quantization_status\": \"compressed\", \"global_compression_ratio\": null, "
                     "\"kv_cache_scheme\": null, \"ignore\": [\"lm_head\"], "
                     "\"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], "
                     "\"weights\": {\"num_bits\": 8, \"type\": \"int\", \"symmetric\": true, \"group_size\": null, "
                     "\"strategy\": \"channel\", \"block_structure\": null, \"dynamic\": false, \"actorder\": null, "
                     "\"observer\": \"minmax\", \"observer_kwargs\": {}}, "
                     "\"input_activations\": %s, \"output_activations\": null}}}",
                     act);
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

static int sq_accepts_config(const char *json) { return ct_accepts_w8a8(json, "int-quantized", "int"); }

static const qtool_plugin_desc sq_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "smoothquant",
    .version = "1.0.0",
    .summary = "SmoothQuant W8A8: smoothed int8 per-channel weights, int8 per-token activations, int8 GEMM",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = QTOOL_PLUGIN_NEEDS_CALIBRATION,
    .weight_bits = 8,
    .activation_bits = 8,
    .options = sq_options,
    .n_options = sizeof sq_options / sizeof sq_options[0],
    .init = sq_init,
    .shutdown = sq_shutdown,
    .probe = sq_probe,
    .create = sq_create,
    .destroy = sq_destroy,
    .calibrate = sq_calibrate,
    .pack = sq_pack,
    .free_packed = sq_free_packed,
    .matmul_cpu = sq_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = sq_matmul_cuda,
#else
    .matmul_cuda = NULL,
#endif
    .memory = sq_memory,
    .save = sq_save,
    .load = sq_load,
    .quant_config_json = sq_quant_config_json,
    .accepts_config = sq_accepts_config,
    .dequantize = sq_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &sq_desc; }
