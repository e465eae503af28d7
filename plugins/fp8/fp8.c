/* fp8: W8A8 with FP8 E4M3 on tensor cores (compute capability >= 8.9).
 * Weights: E4M3 per output channel (absmax / 448); activations: E4M3 per
 * token (dynamic, absmax / 448 of each row) or per tensor (static, from
 * calibration). The product runs through cuBLASLt's FP8 GEMM with fp32
 * accumulation; the per-token and per-channel scales are applied either by
 * cuBLASLt itself (outer-vector scaling, CUDA >= 12.9 and CC >= 9.0) or by
 * an epilogue kernel. CUDA only: a layer can be packed on the CPU for
 * saving and inspection, but only the CUDA device multiplies. */
#include <qtool/plugin.h>

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ct_config.h"
#include "ct_layer.h"
#include "e4m3_codec.h"
#ifdef QTOOL_HAVE_CUDA
#include "fp8_cuda.h"
#endif

/* Floor for a static activation scale (all-zero calibration data). */
#define F8_MIN_ACT_SCALE 1e-12f

typedef struct f8_stat {
    char *name;
    int64_t K;
    float amax; /* max |x| over every token and channel seen */
} f8_stat;

typedef struct f8_instance {
    const qtool_host_services *host;
    int static_act;
    int force_epilogue;
    size_t chunk_bytes;
    pthread_mutex_t lock; /* statistics and CUDA scratch */
    f8_stat *stats;
    size_t n_stats, cap_stats;
    /* CUDA scratch shared by the instance's layers; memory() reports it
     * with the layer that used it last. */
    void *ws, *lt_ws;
    size_t ws_bytes, lt_ws_bytes;
    const qtool_packed *ws_owner;
    void *lt;
    int cc; /* compute capability * 10 of the device in use, 0 until known */
} f8_instance;

struct qtool_packed {
    f8_instance *inst;
    int device;
    int64_t N, Np, K, Kp; /* Np, Kp: multiples of 16 */
    uint8_t *w;           /* [Np, Kp] E4M3 */
    float *ws;            /* [Np] absmax / 448 (zero past N) */
    float *bias;          /* [N] or NULL */
    uint16_t *bias_f16, *bias_bf16; /* CUDA: the bias for cuBLASLt's epilogue */
    int static_act;
    float act_scale, act_inv;
    uint64_t mem[QTOOL_MEM_COUNT];
};

static const qtool_option_desc f8_options[] = {
    {"act_scale", QTOOL_OPT_ENUM, "token",
     "activation scale: token (absmax / 448 per token at run time) or tensor (one static scale from calibration)",
     "token|tensor", 0, -1},
    {"scaling", QTOOL_OPT_ENUM, "auto",
     "CUDA: auto (cuBLASLt outer-vector scaling where available, CC >= 9.0) or epilogue (fp32 product, scales in "
     "a kernel of ours)",
     "auto|epilogue", 0, -1},
    {"chunk_mib", QTOOL_OPT_INT, "16",
     "CUDA epilogue path: the fp32 product is computed in row chunks of at most this many MiB", NULL, 1, 4096},
};

static const qtool_host_services *g_host;

#define say(host, level, ...) qtool_logf((host) ? (host) : g_host, "fp8", (level), __VA_ARGS__)
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

static void release_scratch(f8_instance *inst)
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
    f8_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) release_scratch(inst);
    pthread_mutex_unlock(&inst->lock);
    p_free(p, p->w, (size_t)(p->Np * p->Kp), QTOOL_MEM_WEIGHTS);
    p_free(p, p->ws, (size_t)p->Np * 4, QTOOL_MEM_SCALES);
    p_free(p, p->bias, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
    p_free(p, p->bias_f16, (size_t)p->N * 2, QTOOL_MEM_WEIGHTS);
    p_free(p, p->bias_bf16, (size_t)p->N * 2, QTOOL_MEM_WEIGHTS);
    free(p);
}

static qtool_packed *new_packed(f8_instance *inst, int device, int64_t N, int64_t K, int with_bias)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->inst = inst;
    p->device = device;
    p->N = N;
    p->K = K;
    p->Np = (N + 15) / 16 * 16;
    p->Kp = (K + 15) / 16 * 16;
    p->w = p_alloc(p, (size_t)(p->Np * p->Kp), QTOOL_MEM_WEIGHTS);
    p->ws = p_alloc(p, (size_t)p->Np * 4, QTOOL_MEM_SCALES);
    int ok = p->w && p->ws;
    if (with_bias) {
        p->bias = p_alloc(p, (size_t)N * 4, QTOOL_MEM_WEIGHTS);
        ok = ok && p->bias;
        if (device == QTOOL_DEVICE_CUDA) {
            p->bias_f16 = p_alloc(p, (size_t)N * 2, QTOOL_MEM_WEIGHTS);
            p->bias_bf16 = p_alloc(p, (size_t)N * 2, QTOOL_MEM_WEIGHTS);
            ok = ok && p->bias_f16 && p->bias_bf16;
        }
    }
    if (!ok) {
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

/* One row of weights: codes of w * (448 / absmax), returns absmax / 448. */
static float quant_row(const float *w, int64_t K, int64_t Kp, uint8_t *q)
{
    float amax = 0.0f;
    for (int64_t k = 0; k < K; k++) {
        float a = fabsf(w[k]);
        amax = a > amax ? a : amax;
    }
    float inv = amax > 0.0f ? E4M3_MAX / amax : 0.0f;
    for (int64_t k = 0; k < K; k++) q[k] = e4m3_encode(w[k] * inv);
    for (int64_t k = K; k < Kp; k++) q[k] = 0;
    return amax / E4M3_MAX;
}

#ifdef QTOOL_HAVE_CUDA
static int upload(qtool_packed *g, const qtool_packed *c)
{
    char msg[256];
    const qtool_host_services *h = g->inst->host;
    void *st = h->cuda_stream;
    int rc = f8cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc) rc = f8cu_copy(g->w, c->w, (size_t)(c->Np * c->Kp), 0, st, msg, sizeof msg);
    if (!rc) rc = f8cu_copy(g->ws, c->ws, (size_t)c->Np * 4, 0, st, msg, sizeof msg);
    if (!rc && c->bias) {
        rc = f8cu_copy(g->bias, c->bias, (size_t)c->N * 4, 0, st, msg, sizeof msg);
        uint16_t *tmp = malloc((size_t)c->N * 4);
        if (!rc && !tmp) {
            snprintf(msg, sizeof msg, "out of memory");
            rc = QTOOL_ERR_OUT_OF_MEMORY;
        }
        if (!rc) {
            for (int64_t i = 0; i < c->N; i++) {
                tmp[i] = qtool_f32_to_f16(c->bias[i]);
                tmp[c->N + i] = qtool_f32_to_bf16(c->bias[i]);
            }
            rc = f8cu_copy(g->bias_f16, tmp, (size_t)c->N * 2, 0, st, msg, sizeof msg);
            if (!rc) rc = f8cu_copy(g->bias_bf16, tmp + c->N, (size_t)c->N * 2, 0, st, msg, sizeof msg);
        }
        free(tmp);
    }
    if (rc) return fail(h, rc, "fp8: upload of a packed layer: %s", msg);
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
    int rc = g ? upload(g, cpu) : fail(cpu->inst->host, QTOOL_ERR_OUT_OF_MEMORY, "fp8: out of CUDA memory");
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
    return fail(NULL, QTOOL_ERR_UNSUPPORTED, "fp8: built without CUDA support");
#endif
}

/* ------------------------------------------------------------ slots */

static int f8_init(const qtool_host_services *host, char *msg, size_t msg_len)
{
    (void)msg;
    (void)msg_len;
    g_host = host;
    return QTOOL_OK;
}

static void f8_shutdown(void) { g_host = NULL; }

static int f8_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    if (!dev) {
        snprintf(reason, reason_len, "no device description");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (dev->kind != QTOOL_DEVICE_CUDA) {
        snprintf(reason, reason_len, "needs a CUDA device with compute capability >= 8.9 (FP8 tensor cores)");
        return QTOOL_ERR_UNSUPPORTED;
    }
    /* E4M3 tensor-core MMA exists from Ada (8.9) and Hopper (9.0) on; Turing
     * and Ampere (7.5, 8.0, 8.6, 8.7) have none. */
    if (dev->cc_major < 8 || (dev->cc_major == 8 && dev->cc_minor < 9)) {
        snprintf(reason, reason_len, "needs compute capability >= 8.9 (FP8 tensor cores); found %d.%d (%s)",
                 dev->cc_major, dev->cc_minor, dev->name);
        return QTOOL_ERR_UNSUPPORTED;
    }
#ifndef QTOOL_HAVE_CUDA
    snprintf(reason, reason_len, "this build of the fp8 plugin has no CUDA code");
    return QTOOL_ERR_UNSUPPORTED;
#else
    return QTOOL_OK;
#endif
}

static int f8_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                     qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "fp8: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    f8_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->host = host;
    inst->chunk_bytes = (size_t)16 << 20;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "act_scale")) {
            if (opts[i].i < 0 || opts[i].i > 1) {
                snprintf(msg, msg_len, "fp8: act_scale must be token or tensor");
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->static_act = opts[i].i == 1;
        } else if (!strcmp(name, "scaling")) {
            inst->force_epilogue = opts[i].i == 1;
        } else if (!strcmp(name, "chunk_mib")) {
            if (opts[i].i < 1 || opts[i].i > 4096) {
                snprintf(msg, msg_len, "fp8: chunk_mib must be 1..4096, got %lld", (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->chunk_bytes = (size_t)opts[i].i << 20;
        } else {
            snprintf(msg, msg_len, "fp8: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    pthread_mutex_init(&inst->lock, NULL);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void f8_destroy(qtool_instance *qi)
{
    f8_instance *inst = (f8_instance *)qi;
    if (!inst) return;
    release_scratch(inst);
#ifdef QTOOL_HAVE_CUDA
    if (inst->lt) f8cu_lt_destroy(inst->lt);
#endif
    for (size_t i = 0; i < inst->n_stats; i++) free(inst->stats[i].name);
    free(inst->stats);
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

/* ------------------------------------------------------------ calibration */

static f8_stat *find_stat(f8_instance *inst, const char *name)
{
    for (size_t i = 0; i < inst->n_stats; i++)
        if (!strcmp(inst->stats[i].name, name)) return &inst->stats[i];
    return NULL;
}

/* Only the static per-tensor scale needs data: max |x| of the layer. */
static int f8_calibrate(qtool_instance *qi, const qtool_layer_info *layer, const qtool_tensor *x)
{
    f8_instance *inst = (f8_instance *)qi;
    if (!inst) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    if (!layer || !layer->name || !layer->name[0])
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 calibrate: the layer has no name");
    int rc = check_tensor(h, x, "fp8 calibrate: x");
    if (rc) return rc;
    if (x->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 calibrate: %s: x must be F32 on the CPU", layer->name);
    int64_t K = x->shape[x->ndim - 1], n = qtool_tensor_numel(x);
    if (layer->in_features > 0 && layer->in_features != K)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 calibrate: %s: x has %lld features, the layer %lld",
                    layer->name, (long long)K, (long long)layer->in_features);
    if (!inst->static_act) return QTOOL_OK; /* per-token scales need no data */
    const float *xd = x->data;
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(xd[i]))
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 calibrate: %s: activation %lld is not finite",
                        layer->name, (long long)i);
        float a = fabsf(xd[i]);
        m = a > m ? a : m;
    }
    pthread_mutex_lock(&inst->lock);
    f8_stat *s = find_stat(inst, layer->name);
    if (s && s->K != K) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 calibrate: %s: %lld features now, %lld before", layer->name,
                    (long long)K, (long long)s->K);
    }
    if (!s) {
        if (inst->n_stats == inst->cap_stats) {
            size_t cap = inst->cap_stats ? inst->cap_stats * 2 : 64;
            f8_stat *g = realloc(inst->stats, cap * sizeof *g);
            if (!g) {
                pthread_mutex_unlock(&inst->lock);
                return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 calibrate: out of memory");
            }
            inst->stats = g;
            inst->cap_stats = cap;
        }
        s = &inst->stats[inst->n_stats];
        s->name = strdup(layer->name);
        if (!s->name) {
            pthread_mutex_unlock(&inst->lock);
            return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 calibrate: out of memory");
        }
        s->K = K;
        s->amax = 0.0f;
        inst->n_stats++;
    }
    if (m > s->amax) s->amax = m;
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ pack */

typedef struct wq_job {
    const void *w;
    int dtype;
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
        for (int64_t k = 0; k < p->K; k++) row[k] = load_elem(j->w, j->dtype, r * p->K + k);
        p->ws[r] = quant_row(row, p->K, p->Kp, p->w + r * p->Kp);
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, row);
}

static int f8_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    f8_instance *inst = (f8_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const qtool_tensor *w = args->weight;
    int rc = check_tensor(h, w, "fp8 pack: weight");
    if (rc) return rc;
    if (w->ndim != 2 || !is_float_dtype(w->dtype) || w->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 pack: weight must be a 2-D F32/F16/BF16 CPU tensor");
    int64_t N = w->shape[0], K = w->shape[1];
    const char *name = args->layer && args->layer->name ? args->layer->name : "layer";
    if (args->layer && args->layer->in_features > 0 &&
        (args->layer->in_features != K || args->layer->out_features != N))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 pack: %s: weight [%lld, %lld] does not match layer %lldx%lld",
                    name, (long long)N, (long long)K, (long long)args->layer->out_features,
                    (long long)args->layer->in_features);
    if (K > (1 << 30) || N > (1 << 30) || N * K > ((int64_t)1 << 40))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 pack: weight too large");
    if (args->bias) {
        rc = check_tensor(h, args->bias, "fp8 pack: bias");
        if (rc) return rc;
        if (qtool_tensor_numel(args->bias) != N || !is_float_dtype(args->bias->dtype) ||
            args->bias->device != QTOOL_DEVICE_CPU)
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 pack: bias must be [%lld] float on the CPU", (long long)N);
    }
    if (args->device != QTOOL_DEVICE_CPU && args->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 pack: unknown device %d", args->device);
#ifndef QTOOL_HAVE_CUDA
    if (args->device == QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_UNSUPPORTED, "fp8 pack: built without CUDA support");
#endif
    float act_max = -1.0f;
    if (inst->static_act) {
        pthread_mutex_lock(&inst->lock);
        f8_stat *s = args->layer && args->layer->name ? find_stat(inst, args->layer->name) : NULL;
        if (s && s->K == K) act_max = s->amax;
        pthread_mutex_unlock(&inst->lock);
        if (act_max < 0.0f)
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT,
                        "fp8 pack: %s: act_scale=tensor needs calibration data for the layer", name);
    }
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, args->bias != NULL);
    if (!p) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 pack: out of memory");
    memset(p->w + N * p->Kp, 0, (size_t)((p->Np - N) * p->Kp));
    for (int64_t n = N; n < p->Np; n++) p->ws[n] = 0.0f;
    wq_job job = {w->data, w->dtype, p, 0};
    if (h->parallel_for)
        h->parallel_for(h->ctx, N, 16, quant_weight_rows, &job);
    else
        quant_weight_rows(&job, 0, N);
    if (job.failed) {
        free_packed(p);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 pack: out of memory");
    }
    if (p->bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(args->bias->data, args->bias->dtype, i);
    if (inst->static_act) {
        p->static_act = 1;
        p->act_scale = act_max / E4M3_MAX;
        if (!(p->act_scale >= F8_MIN_ACT_SCALE)) p->act_scale = F8_MIN_ACT_SCALE;
        p->act_inv = 1.0f / p->act_scale;
    }
    return finish_on_device(p, args->device, out);
}

static void f8_free_packed(qtool_packed *p) { free_packed(p); }

/* ------------------------------------------------------------ CUDA matmul */

static int check_io(const qtool_packed *p, const qtool_matmul_args *a, int64_t *M)
{
    char msg[256];
    int rc = qtool_check_matmul_args("fp8", a, QTOOL_DEVICE_CUDA, p->K, p->N, M, msg, sizeof msg);
    return rc ? fail(p->inst->host, rc, "%s", msg) : QTOOL_OK;
}

#ifdef QTOOL_HAVE_CUDA
static int grow(f8_instance *inst, void **buf, size_t *have, size_t need, int category)
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

/* Runs one path with its workspace; the lock is held. */
static int run_path(qtool_packed *p, const f8cu_layer *L, const qtool_matmul_args *a, int64_t M, int path,
                    void *stream, char *msg, size_t msg_len)
{
    f8_instance *inst = p->inst;
    int rc = grow(inst, &inst->ws, &inst->ws_bytes, f8cu_workspace_bytes(L, M, path), QTOOL_MEM_WORKSPACE);
    if (!rc) rc = grow(inst, &inst->lt_ws, &inst->lt_ws_bytes, f8cu_lt_workspace_bytes(), QTOOL_MEM_WORKSPACE);
    if (rc) {
        snprintf(msg, msg_len, "out of CUDA memory for the workspace of %lld rows", (long long)M);
        return rc;
    }
    inst->ws_owner = p;
    return f8cu_matmul(L, a->x->data, a->y->data, M, a->x->dtype == QTOOL_DTYPE_BF16, path, inst->ws, inst->ws_bytes,
                       inst->lt, inst->lt_ws, inst->lt_ws_bytes, stream, msg, msg_len);
}
#endif

static int f8_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 matmul_cuda: layer was packed for the CPU (fp8 runs on CUDA)");
    int64_t M = 0;
    int rc = check_io(p, a, &M);
    if (rc) return rc;
    int dt = a->x->dtype;
    if ((dt != QTOOL_DTYPE_F16 && dt != QTOOL_DTYPE_BF16) || a->y->dtype != dt)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 matmul_cuda: x and y must both be F16 or both BF16");
#ifndef QTOOL_HAVE_CUDA
    return fail(h, QTOOL_ERR_UNSUPPORTED, "fp8 matmul_cuda: built without CUDA support");
#else
    f8_instance *inst = p->inst;
    char msg[256];
    void *stream = a->stream ? a->stream : h->cuda_stream;
    int dev = h->cuda_device < 0 ? 0 : h->cuda_device;
    f8cu_layer L = {p->w,  p->ws, p->bias, p->bias_f16, p->bias_bf16, p->N, p->Np, p->K, p->Kp, p->static_act,
                    p->act_scale, p->act_inv, inst->chunk_bytes};
    pthread_mutex_lock(&inst->lock);
    rc = f8cu_set_device(dev, msg, sizeof msg);
    if (!rc && !inst->cc) rc = f8cu_device_cc(dev, &inst->cc, msg, sizeof msg);
    if (!rc && !inst->lt) rc = f8cu_lt_create(&inst->lt, msg, sizeof msg);
    if (rc) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, rc, "fp8 matmul_cuda: %s", msg);
    }
    if (inst->cc < 89) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, QTOOL_ERR_UNSUPPORTED, "fp8 matmul_cuda: needs compute capability >= 8.9; this device is %d.%d",
                    inst->cc / 10, inst->cc % 10);
    }
    rc = QTOOL_ERR_UNSUPPORTED;
    if (!inst->force_epilogue && inst->cc >= 90) rc = run_path(p, &L, a, M, F8CU_OUTER, stream, msg, sizeof msg);
    if (rc == QTOOL_ERR_UNSUPPORTED) rc = run_path(p, &L, a, M, F8CU_EPILOGUE, stream, msg, sizeof msg);
    pthread_mutex_unlock(&inst->lock);
    if (rc) return fail(h, rc, "fp8 matmul_cuda: %s", msg);
    return QTOOL_OK;
#endif
}

static int f8_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < QTOOL_MEM_COUNT; i++) bytes[i] = p->mem[i];
    f8_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) bytes[QTOOL_MEM_WORKSPACE] += inst->ws_bytes + inst->lt_ws_bytes;
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

/* Codes [Np, Kp] and scales [Np] on the CPU, whichever device holds them. */
static int fetch(const qtool_packed *p, uint8_t **codes, float **scales)
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
    char msg[256] = "out of memory";
    uint8_t *c = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->Np * p->Kp), QTOOL_MEM_OTHER);
    float *s = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->Np * 4, QTOOL_MEM_OTHER);
    int rc = c && s ? QTOOL_OK : QTOOL_ERR_OUT_OF_MEMORY;
    if (!rc) rc = f8cu_copy(c, p->w, (size_t)(p->Np * p->Kp), 1, h->cuda_stream, msg, sizeof msg);
    if (!rc) rc = f8cu_copy(s, p->ws, (size_t)p->Np * 4, 1, h->cuda_stream, msg, sizeof msg);
    if (rc) {
        if (c) h->free(h->ctx, QTOOL_DEVICE_CPU, c);
        if (s) h->free(h->ctx, QTOOL_DEVICE_CPU, s);
        return fail(h, rc, "fp8: cannot read the packed layer back: %s", msg);
    }
    *codes = c;
    *scales = s;
    return QTOOL_OK;
#else
    return fail(h, QTOOL_ERR_INTERNAL, "fp8: a CUDA layer in a build without CUDA");
#endif
}

static void unfetch(const qtool_packed *p, uint8_t *codes, float *scales)
{
    if (p->device == QTOOL_DEVICE_CPU) return;
    const qtool_host_services *h = p->inst->host;
    if (codes) h->free(h->ctx, QTOOL_DEVICE_CPU, codes);
    if (scales) h->free(h->ctx, QTOOL_DEVICE_CPU, scales);
}

static int f8_dequantize(const qtool_packed *p, float *out)
{
    if (!p || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    uint8_t *c;
    float *s;
    int rc = fetch(p, &c, &s);
    if (rc) return rc;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t k = 0; k < p->K; k++) out[n * p->K + k] = e4m3_decode(c[n * p->Kp + k]) * s[n];
    unfetch(p, c, s);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ save/load */

/* compressed-tensors "float-quantized" layout (vLLM's W8A8 FP8): weight
 * F8_E4M3 [N, K], weight_scale F32 [N, 1], input_scale F32 [1] for a
 * static activation scale, bias. */
static int f8_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (!p || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    uint8_t *c;
    float *s;
    int rc = fetch(p, &c, &s);
    if (rc) return rc;
    uint8_t *dense = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->N * p->K), QTOOL_MEM_OTHER);
    if (!dense) {
        unfetch(p, c, s);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 save: out of memory");
    }
    for (int64_t n = 0; n < p->N; n++) memcpy(dense + n * p->K, c + n * p->Kp, (size_t)p->K);
    rc = ct_put_w8a8(sink, QTOOL_DTYPE_F8_E4M3, dense, p->N, p->K, s, p->static_act, p->act_scale, p->bias, p->device);
    h->free(h->ctx, QTOOL_DEVICE_CPU, dense);
    unfetch(p, c, s);
    if (rc) return fail(h, rc, "fp8 save: the host refused a tensor");
    return QTOOL_OK;
}

static int f8_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                   qtool_packed **out)
{
    f8_instance *inst = (f8_instance *)qi;
    if (!inst || !layer || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const char *name = layer->name ? layer->name : "layer";
    qtool_tensor w, sc, b, is;
    if (src->get(src->ctx, "weight", &w) || !w.data || w.dtype != QTOOL_DTYPE_F8_E4M3 || w.ndim != 2 ||
        w.shape[0] <= 0 || w.shape[1] <= 0 || w.shape[0] > (1 << 30) || w.shape[1] > (1 << 30))
        return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: weight must be a 2-D F8_E4M3 tensor", name);
    int64_t N = w.shape[0], K = w.shape[1];
    if (layer->in_features > 0 && (layer->in_features != K || layer->out_features != N))
        return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: weight [%lld, %lld] does not match the layer", name,
                    (long long)N, (long long)K);
    if (src->get(src->ctx, "weight_scale", &sc) || !sc.data || !is_float_dtype(sc.dtype) ||
        (qtool_tensor_numel(&sc) != N && qtool_tensor_numel(&sc) != 1))
        return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: weight_scale must be [%lld, 1] (or [1]) float", name,
                    (long long)N);
    int per_tensor_w = qtool_tensor_numel(&sc) == 1 && N != 1;
    int static_act = src->has(src->ctx, "input_scale");
    float act = 0.0f;
    if (static_act) {
        if (src->get(src->ctx, "input_scale", &is) || !is.data || !is_float_dtype(is.dtype) ||
            qtool_tensor_numel(&is) < 1 || qtool_tensor_numel(&is) > (1 << 20))
            return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: input_scale must be a float scalar", name);
        for (int64_t i = 0; i < qtool_tensor_numel(&is); i++) {
            float v = load_elem(is.data, is.dtype, i);
            if (!(v > 0.0f) || !isfinite(v))
                return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: input_scale is not a finite positive value", name);
            if (v > act) act = v;
        }
    }
    int has_bias = src->has(src->ctx, "bias");
    if (has_bias && (src->get(src->ctx, "bias", &b) || !b.data || !is_float_dtype(b.dtype) ||
                     qtool_tensor_numel(&b) != N))
        return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: bias must have %lld float elements", name, (long long)N);
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "fp8 load: unknown device %d", device);
#ifndef QTOOL_HAVE_CUDA
    if (device == QTOOL_DEVICE_CUDA) return fail(h, QTOOL_ERR_UNSUPPORTED, "fp8 load: built without CUDA support");
#endif
    const uint8_t *src_w = w.data;
    for (int64_t i = 0; i < N * K; i++)
        if ((src_w[i] & 0x7Fu) == E4M3_NAN)
            return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: weight element %lld is NaN", name, (long long)i);
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, has_bias);
    if (!p) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "fp8 load: out of memory");
    memset(p->w, 0, (size_t)(p->Np * p->Kp));
    for (int64_t n = 0; n < N; n++) memcpy(p->w + n * p->Kp, src_w + n * K, (size_t)K);
    for (int64_t n = 0; n < p->Np; n++) {
        p->ws[n] = n < N ? load_elem(sc.data, sc.dtype, per_tensor_w ? 0 : n) : 0.0f;
        if (!(p->ws[n] >= 0.0f) || !isfinite(p->ws[n])) {
            free_packed(p);
            return fail(h, QTOOL_ERR_FORMAT, "fp8 load: %s: weight_scale[%lld] is not a finite non-negative value",
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

static int f8_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const f8_instance *inst = (const f8_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    const char *act = inst->static_act
                          ? "{\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"group_size\": null, "
                            "\"strategy\": \"tensor\", \"block_structure\": null, \"dynamic\": false, "
                            "\"actorder\": null, \"observer\": \"minmax\", \"observer_kwargs\": {}}"
                          : "{\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"group_size\": null, "
                            "\"strategy\": \"token\", \"block_structure\": null, \"dynamic\": true, "
                            "\"actorder\": null, \"observer\": null, \"observer_kwargs\": {}}";
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"compressed-tensors\", \"format\": \"float-quantized\", "
                     "\"quantization_status\": \"compressed\", \"global_compression_ratio\": null, "
                     "\"kv_cache_scheme\": null, \"ignore\": [\"lm_head\"], "
                     "\"config_groups\": {\"group_0\": {\"targets\": [\"Linear\"], "
                     "\"weights\": {\"num_bits\": 8, \"type\": \"float\", \"symmetric\": true, \"group_size\": null, "
                     "\"strategy\": \"channel\", \"block_structure\": null, \"dynamic\": false, \"actorder\": null, "
                     "\"observer\": \"minmax\", \"observer_kwargs\": {}}, "
                     "\"input_activations\": %s, \"output_activations\": null}}}",
                     act);
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

static int f8_accepts_config(const char *json) { return ct_accepts_w8a8(json, "float-quantized", "float"); }

static const qtool_plugin_desc f8_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "fp8",
    .version = "1.0.0",
    .summary = "FP8 W8A8: E4M3 per-channel weights, E4M3 per-token activations, FP8 tensor-core GEMM (CC >= 8.9)",
    .devices = QTOOL_DEVMASK_CUDA,
    .flags = QTOOL_PLUGIN_ROW_INDEPENDENT,
    .weight_bits = 8,
    .activation_bits = 8,
    .options = f8_options,
    .n_options = sizeof f8_options / sizeof f8_options[0],
    .init = f8_init,
    .shutdown = f8_shutdown,
    .probe = f8_probe,
    .create = f8_create,
    .destroy = f8_destroy,
    .calibrate = f8_calibrate,
    .pack = f8_pack,
    .free_packed = f8_free_packed,
    .matmul_cpu = NULL,
    .matmul_cuda = f8_matmul_cuda,
    .memory = f8_memory,
    .save = f8_save,
    .load = f8_load,
    .quant_config_json = f8_quant_config_json,
    .accepts_config = f8_accepts_config,
    .dequantize = f8_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &f8_desc; }
