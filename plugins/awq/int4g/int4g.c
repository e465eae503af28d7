#include "int4g.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "int4g_dense.h"

/* Rows of the input at or below which CUDA uses the fused GEMV kernel. */
#define INT4G_GEMV_MAX_M 64

/* ------------------------------------------------------------ logging */

static void vlog_(const int4g_ctx *c, int level, const char *fmt, va_list ap)
{
    qtool_vlogf(c ? c->host : NULL, c && c->plugin ? c->plugin : "int4", level, fmt, ap);
}

void int4g_log(const int4g_ctx *c, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog_(c, level, fmt, ap);
    va_end(ap);
}

int int4g_fail(const int4g_ctx *c, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog_(c, QTOOL_LOG_ERROR, fmt, ap);
    va_end(ap);
    return status;
}

/* ------------------------------------------------------------ context */

void int4g_ctx_init(int4g_ctx *c, const qtool_host_services *host, const char *plugin)
{
    memset(c, 0, sizeof *c);
    c->host = host;
    c->plugin = plugin;
    pthread_mutex_init(&c->lock, NULL);
}

void int4g_ctx_destroy(int4g_ctx *c)
{
    const qtool_host_services *h = c->host;
    if (c->ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, c->ws);
    if (c->lt_ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, c->lt_ws);
#ifdef QTOOL_HAVE_CUDA
    if (c->lt_handle) i4cu_lt_destroy(c->lt_handle);
#endif
    c->ws = c->lt_ws = c->lt_handle = NULL;
    pthread_mutex_destroy(&c->lock);
}

void *int4g_tmp_alloc(const int4g_ctx *c, size_t bytes)
{
    return c->host->alloc(c->host->ctx, QTOOL_DEVICE_CPU, bytes ? bytes : 1, QTOOL_MEM_OTHER);
}

void int4g_tmp_free(const int4g_ctx *c, void *p)
{
    if (p) c->host->free(c->host->ctx, QTOOL_DEVICE_CPU, p);
}

int int4g_valid_group_size(int64_t g) { return g == -1 || (g >= 32 && g <= 65536 && g % 32 == 0); }

/* ------------------------------------------------------------ layers */

static size_t qw_bytes(const qtool_packed *p) { return (size_t)(p->N * (p->K / 8)) * 4; }
static size_t sz_bytes(const qtool_packed *p) { return (size_t)(p->N * p->ngroups); }

static void *p_alloc(qtool_packed *p, size_t bytes, int category)
{
    const qtool_host_services *h = p->ctx->host;
    void *ptr = h->alloc(h->ctx, p->device, bytes ? bytes : 1, category);
    if (ptr) p->mem[category] += bytes ? bytes : 1;
    return ptr;
}

static void p_free(qtool_packed *p, void *ptr, size_t bytes, int category)
{
    if (!ptr) return;
    const qtool_host_services *h = p->ctx->host;
    h->free(h->ctx, p->device, ptr);
    p->mem[category] -= bytes ? bytes : 1;
}

void int4g_free(qtool_packed *p)
{
    if (!p) return;
    int4g_ctx *c = p->ctx;
    pthread_mutex_lock(&c->lock);
    if (c->ws_owner == p) {
        /* The shared scratch leaves with the layer it is reported under, so
         * nothing stays allocated unreported; the next call grows it again. */
        if (c->ws) c->host->free(c->host->ctx, QTOOL_DEVICE_CUDA, c->ws);
        if (c->lt_ws) c->host->free(c->host->ctx, QTOOL_DEVICE_CUDA, c->lt_ws);
        c->ws = c->lt_ws = NULL;
        c->ws_bytes = c->lt_ws_bytes = 0;
        c->ws_owner = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    p_free(p, p->qw, qw_bytes(p), QTOOL_MEM_WEIGHTS);
    p_free(p, p->scales, sz_bytes(p) * 2, QTOOL_MEM_SCALES);
    p_free(p, p->zeros, sz_bytes(p), QTOOL_MEM_SCALES);
    p_free(p, p->g_idx, (size_t)p->K * 4, QTOOL_MEM_SCALES);
    p_free(p, p->bias, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
    free(p);
}

static qtool_packed *new_on(int4g_ctx *c, int device, int64_t N, int64_t K, int64_t G, int64_t ngroups, int with_g_idx,
                            int with_bias)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->ctx = c;
    p->device = device;
    p->N = N;
    p->K = K;
    p->G = G;
    p->ngroups = ngroups;
    p->qw = p_alloc(p, qw_bytes(p), QTOOL_MEM_WEIGHTS);
    p->scales = p_alloc(p, sz_bytes(p) * 2, QTOOL_MEM_SCALES);
    p->zeros = p_alloc(p, sz_bytes(p), QTOOL_MEM_SCALES);
    int ok = p->qw && p->scales && p->zeros;
    if (with_g_idx) {
        p->g_idx = p_alloc(p, (size_t)K * 4, QTOOL_MEM_SCALES);
        ok = ok && p->g_idx;
    }
    if (with_bias) {
        p->bias = p_alloc(p, (size_t)N * 4, QTOOL_MEM_WEIGHTS);
        ok = ok && p->bias;
    }
    if (!ok) {
        int4g_free(p);
        return NULL;
    }
    return p;
}

qtool_packed *int4g_new(int4g_ctx *c, int64_t N, int64_t K, int64_t G, int64_t ngroups, int with_g_idx, int with_bias)
{
    qtool_packed *p = new_on(c, QTOOL_DEVICE_CPU, N, K, G, ngroups, with_g_idx, with_bias);
    if (p) memset(p->qw, 0, qw_bytes(p));
    return p;
}

void int4g_drop_trivial_g_idx(qtool_packed *p)
{
    if (!p->g_idx || p->G % 32 != 0 || p->K % p->G != 0) return;
    for (int64_t k = 0; k < p->K; k++)
        if (p->g_idx[k] != k / p->G) return;
    p_free(p, p->g_idx, (size_t)p->K * 4, QTOOL_MEM_SCALES);
    p->g_idx = NULL;
}

#ifdef QTOOL_HAVE_CUDA
typedef struct part {
    void *dst;
    const void *src;
    size_t n;
} part;

static int copy_parts(const int4g_ctx *c, const part *parts, int n, int kind)
{
    char msg[256];
    const qtool_host_services *h = c->host;
    int rc = i4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (rc) return int4g_fail(c, rc, "%s: %s", c->plugin, msg);
    for (int i = 0; i < n; i++) {
        if (!parts[i].dst || !parts[i].src) continue;
        rc = i4cu_copy(parts[i].dst, parts[i].src, parts[i].n, kind, h->cuda_stream, msg, sizeof msg);
        if (rc) return int4g_fail(c, rc, "%s: copy of a packed layer: %s", c->plugin, msg);
    }
    return QTOOL_OK;
}

static int copy_layer(qtool_packed *dst, const qtool_packed *src, int kind)
{
    part parts[] = {
        {dst->qw, src->qw, qw_bytes(src)},
        {dst->scales, src->scales, sz_bytes(src) * 2},
        {dst->zeros, src->zeros, sz_bytes(src)},
        {dst->g_idx, src->g_idx, (size_t)src->K * 4},
        {dst->bias, src->bias, (size_t)src->N * 4},
    };
    dst->flags = src->flags;
    return copy_parts(src->ctx, parts, (int)(sizeof parts / sizeof parts[0]), kind);
}
#endif

int int4g_finish(qtool_packed *cpu, int device, qtool_packed **out)
{
    if (device == QTOOL_DEVICE_CPU) {
        *out = cpu;
        return QTOOL_OK;
    }
#ifdef QTOOL_HAVE_CUDA
    int4g_ctx *c = cpu->ctx;
    qtool_packed *g =
        new_on(c, QTOOL_DEVICE_CUDA, cpu->N, cpu->K, cpu->G, cpu->ngroups, cpu->g_idx != NULL, cpu->bias != NULL);
    int rc;
    if (!g)
        rc = int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "%s: out of CUDA memory for a %lldx%lld layer", c->plugin,
                        (long long)cpu->N, (long long)cpu->K);
    else
        rc = copy_layer(g, cpu, 0);
    int4g_free(cpu);
    if (rc) {
        int4g_free(g);
        return rc;
    }
    *out = g;
    return QTOOL_OK;
#else
    int4g_ctx *c = cpu->ctx;
    int4g_free(cpu);
    return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "%s: built without CUDA support", c->plugin);
#endif
}

int int4g_host_view(const qtool_packed *p, qtool_packed **view, int *copied)
{
    *copied = 0;
    if (p->device == QTOOL_DEVICE_CPU) {
        *view = (qtool_packed *)p;
        return QTOOL_OK;
    }
#ifdef QTOOL_HAVE_CUDA
    qtool_packed *h = new_on(p->ctx, QTOOL_DEVICE_CPU, p->N, p->K, p->G, p->ngroups, p->g_idx != NULL, p->bias != NULL);
    if (!h) return int4g_fail(p->ctx, QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory for a host copy", p->ctx->plugin);
    int rc = copy_layer(h, p, 1);
    if (rc) {
        int4g_free(h);
        return rc;
    }
    *view = h;
    *copied = 1;
    return QTOOL_OK;
#else
    return QTOOL_ERR_INTERNAL;
#endif
}

/* ------------------------------------------------------------ checks */

static int is_float_dtype(int dt) { return dt == QTOOL_DTYPE_F32 || dt == QTOOL_DTYPE_F16 || dt == QTOOL_DTYPE_BF16; }

float int4g_load_elem(const void *data, int dtype, int64_t i)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)data)[i]);
    case QTOOL_DTYPE_BF16: return qtool_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

static int check_tensor(const int4g_ctx *c, const qtool_tensor *t, const char *what)
{
    char msg[256];
    return qtool_check_tensor(t, what, msg, sizeof msg) ? int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s", msg)
                                                        : QTOOL_OK;
}

int int4g_check_pack(const int4g_ctx *c, const qtool_pack_args *args, int64_t G, int64_t *Np, int64_t *Kp,
                     int64_t *Geff)
{
    const char *pl = c->plugin;
    char what[64];
    if (!args) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_tensor *w = args->weight;
    snprintf(what, sizeof what, "%s pack: weight", pl);
    int rc = check_tensor(c, w, what);
    if (rc) return rc;
    if (w->ndim != 2)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: weight must be 2-D [N, K], got rank %d", pl,
                          w->ndim);
    if (!is_float_dtype(w->dtype) || w->device != QTOOL_DEVICE_CPU)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: weight must be F32/F16/BF16 on the CPU", pl);
    int64_t N = w->shape[0], K = w->shape[1];
    if (args->layer && args->layer->in_features > 0 &&
        (args->layer->in_features != K || args->layer->out_features != N))
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: weight [%lld, %lld] does not match layer %lldx%lld",
                          pl, (long long)N, (long long)K, (long long)args->layer->out_features,
                          (long long)args->layer->in_features);
    if (args->bias) {
        snprintf(what, sizeof what, "%s pack: bias", pl);
        rc = check_tensor(c, args->bias, what);
        if (rc) return rc;
        if (qtool_tensor_numel(args->bias) != N || !is_float_dtype(args->bias->dtype) ||
            args->bias->device != QTOOL_DEVICE_CPU)
            return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: bias must be [%lld] F32/F16/BF16 on the CPU",
                              pl, (long long)N);
    }
    if (args->device != QTOOL_DEVICE_CPU && args->device != QTOOL_DEVICE_CUDA)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: unknown device %d", pl, args->device);
#ifndef QTOOL_HAVE_CUDA
    if (args->device == QTOOL_DEVICE_CUDA)
        return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "%s pack: built without CUDA support", pl);
#endif
    if (N > INT64_MAX / K || N * K > ((int64_t)1 << 36))
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s pack: weight too large", pl);
    int64_t g = G == -1 ? K : G;
    if (K % 32 != 0)
        return int4g_fail(c, QTOOL_ERR_UNSUPPORTED,
                          "%s pack: %s has K = %lld input features; 4-bit packing needs a multiple of 32", pl,
                          args->layer && args->layer->name ? args->layer->name : "layer", (long long)K);
    if (K % g != 0)
        return int4g_fail(c, QTOOL_ERR_UNSUPPORTED,
                          "%s pack: %s has K = %lld input features, not a multiple of the group size %lld", pl,
                          args->layer && args->layer->name ? args->layer->name : "layer", (long long)K, (long long)g);
    *Np = N;
    *Kp = K;
    *Geff = g;
    return QTOOL_OK;
}

void int4g_set_bias(qtool_packed *p, const qtool_tensor *bias)
{
    if (!p->bias || !bias) return;
    for (int64_t i = 0; i < p->N; i++)
        p->bias[i] = qtool_f16_to_f32(qtool_f32_to_f16(int4g_load_elem(bias->data, bias->dtype, i)));
}

/* ------------------------------------------------------------ dequantize */

static void dequant_row(const qtool_packed *p, int64_t n, float *out)
{
    const uint32_t *row = p->qw + n * (p->K / 8);
    const uint16_t *sc = p->scales + n * p->ngroups;
    const uint8_t *zr = p->zeros + n * p->ngroups;
    if (p->g_idx) {
        for (int64_t k = 0; k < p->K; k++) {
            int32_t g = p->g_idx[k];
            int q = (int)((row[k / 8] >> (4 * (k % 8))) & 15u);
            out[k] = (float)(q - (int)zr[g]) * qtool_f16_to_f32(sc[g]);
        }
        return;
    }
    for (int64_t g = 0; g < p->ngroups; g++) {
        float s = qtool_f16_to_f32(sc[g]);
        int z = zr[g];
        float lut[16];
        for (int q = 0; q < 16; q++) lut[q] = (float)(q - z) * s; /* exact: 5-bit integer times fp16 */
        int64_t k0 = g * p->G, k1 = k0 + p->G < p->K ? k0 + p->G : p->K;
        for (int64_t k = k0; k < k1; k += 8) {
            uint32_t wv = row[k / 8];
            for (int j = 0; j < 8; j++) out[k + j] = lut[(wv >> (4 * j)) & 15u];
        }
    }
}

int int4g_dequantize(const qtool_packed *p, float *out)
{
    if (!p || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    qtool_packed *h = NULL;
    int copied = 0;
    int rc = int4g_host_view(p, &h, &copied);
    if (rc) return rc;
    for (int64_t n = 0; n < h->N; n++) dequant_row(h, n, out + n * h->K);
    if (copied) int4g_free(h);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ CPU matmul */

#define TILE_N 16
#define TILE_M 64

typedef struct mm_job {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t M, tiles_m;
    int failed;
} mm_job;

static void mm_tiles(void *arg, int64_t t0, int64_t t1)
{
    mm_job *j = arg;
    const qtool_packed *p = j->p;
    float *w = int4g_tmp_alloc(p->ctx, (size_t)TILE_N * (size_t)p->K * 4);
    if (!w) {
        j->failed = 1;
        return;
    }
    int64_t have_nt = -1;
    for (int64_t t = t0; t < t1; t++) {
        int64_t nt = t / j->tiles_m, mt = t % j->tiles_m;
        int64_t n0 = nt * TILE_N, n1 = n0 + TILE_N < p->N ? n0 + TILE_N : p->N;
        int64_t m0 = mt * TILE_M, m1 = m0 + TILE_M < j->M ? m0 + TILE_M : j->M;
        if (nt != have_nt) {
            for (int64_t n = n0; n < n1; n++) dequant_row(p, n, w + (n - n0) * p->K);
            have_nt = nt;
        }
        for (int64_t m = m0; m < m1; m++)
            for (int64_t n = n0; n < n1; n++) j->y[m * p->N + n] = p->bias ? p->bias[n] : 0.0f;
        int4g_gemm_nt_f32(m1 - m0, n1 - n0, p->K, 1.0f, j->x + m0 * p->K, p->K, w, p->K, j->y + m0 * p->N + n0, p->N);
    }
    int4g_tmp_free(p->ctx, w);
}

/* Validates x/y against the layer; returns M through *M. */
static int check_io(const qtool_packed *p, const qtool_matmul_args *a, int device, int64_t *M)
{
    char msg[256];
    int rc = qtool_check_matmul_args(p->ctx->plugin, a, device, p->K, p->N, M, msg, sizeof msg);
    return rc ? int4g_fail(p->ctx, rc, "%s", msg) : QTOOL_OK;
}

int int4g_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const int4g_ctx *c = p->ctx;
    if (p->device != QTOOL_DEVICE_CPU)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s matmul_cpu: layer was packed for CUDA", c->plugin);
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CPU, &M);
    if (rc) return rc;
    if (a->x->dtype != QTOOL_DTYPE_F32 || a->y->dtype != QTOOL_DTYPE_F32)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s matmul_cpu: x and y must be F32", c->plugin);
    mm_job job = {p, a->x->data, a->y->data, M, (M + TILE_M - 1) / TILE_M, 0};
    int64_t tiles = ((p->N + TILE_N - 1) / TILE_N) * job.tiles_m;
    const qtool_host_services *h = c->host;
    if (h->parallel_for)
        h->parallel_for(h->ctx, tiles, 1, mm_tiles, &job);
    else
        mm_tiles(&job, 0, tiles);
    if (job.failed)
        return int4g_fail(c, QTOOL_ERR_OUT_OF_MEMORY, "%s matmul_cpu: out of memory for a dequantized tile", c->plugin);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ CUDA matmul */

#ifdef QTOOL_HAVE_CUDA
static i4cu_layer cuda_view(const qtool_packed *p)
{
    i4cu_layer L;
    memset(&L, 0, sizeof L);
    L.qw = p->qw;
    L.scales = p->scales;
    L.zeros = p->zeros;
    L.g_idx = p->g_idx;
    L.bias = p->bias;
    L.N = p->N;
    L.K = p->K;
    L.G = p->G;
    L.ngroups = p->ngroups;
    return L;
}

static int ensure_ws(int4g_ctx *c, void **buf, size_t *have, size_t need)
{
    if (*have >= need) return QTOOL_OK;
    const qtool_host_services *h = c->host;
    if (*buf) h->free(h->ctx, QTOOL_DEVICE_CUDA, *buf);
    *have = 0;
    *buf = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, need, QTOOL_MEM_WORKSPACE);
    if (!*buf) return QTOOL_ERR_OUT_OF_MEMORY;
    *have = need;
    return QTOOL_OK;
}
#endif

int int4g_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    int4g_ctx *c = p->ctx;
#ifndef QTOOL_HAVE_CUDA
    (void)a;
    return int4g_fail(c, QTOOL_ERR_UNSUPPORTED, "%s: built without CUDA support", c->plugin);
#else
    const qtool_host_services *h = c->host;
    if (p->device != QTOOL_DEVICE_CUDA)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s matmul_cuda: layer was packed for the CPU", c->plugin);
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CUDA, &M);
    if (rc) return rc;
    int dt = a->x->dtype;
    if ((dt != QTOOL_DTYPE_F16 && dt != QTOOL_DTYPE_BF16) || a->y->dtype != dt)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s matmul_cuda: x and y must both be F16 or both BF16",
                          c->plugin);
    char msg[256];
    void *stream = a->stream ? a->stream : h->cuda_stream;
    i4cu_layer L = cuda_view(p);
    int path = c->cuda_path;
    if (path == INT4G_PATH_AUTO) path = M <= INT4G_GEMV_MAX_M ? INT4G_PATH_GEMV : INT4G_PATH_DEQUANT_GEMM;
    pthread_mutex_lock(&c->lock);
    rc = i4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && path == INT4G_PATH_DEQUANT_GEMM && !c->lt_handle) rc = i4cu_lt_create(&c->lt_handle, msg, sizeof msg);
    if (rc) {
        pthread_mutex_unlock(&c->lock);
        return int4g_fail(c, rc, "%s matmul_cuda: %s", c->plugin, msg);
    }
    size_t need = i4cu_workspace_bytes(&L, M, path);
    rc = ensure_ws(c, &c->ws, &c->ws_bytes, need);
    if (!rc && path == INT4G_PATH_DEQUANT_GEMM) rc = ensure_ws(c, &c->lt_ws, &c->lt_ws_bytes, i4cu_lt_workspace_bytes());
    if (rc) {
        pthread_mutex_unlock(&c->lock);
        return int4g_fail(c, rc, "%s matmul_cuda: out of CUDA memory for %zu bytes of workspace", c->plugin, need);
    }
    if (c->ws || c->lt_ws) c->ws_owner = p;
    rc = i4cu_matmul(&L, a->x->data, a->y->data, M, dt == QTOOL_DTYPE_BF16, path, c->ws, c->ws_bytes, c->lt_handle,
                     c->lt_ws, c->lt_ws_bytes, stream, msg, sizeof msg);
    pthread_mutex_unlock(&c->lock);
    if (rc) return int4g_fail(c, rc, "%s matmul_cuda: %s", c->plugin, msg);
    return QTOOL_OK;
#endif
}

int int4g_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < QTOOL_MEM_COUNT; i++) bytes[i] = p->mem[i];
    int4g_ctx *c = p->ctx;
    pthread_mutex_lock(&c->lock);
    if (c->ws_owner == p) bytes[QTOOL_MEM_WORKSPACE] += c->ws_bytes + c->lt_ws_bytes;
    pthread_mutex_unlock(&c->lock);
    return QTOOL_OK;
}

int int4g_probe(const char *plugin, const qtool_device_info *dev, char *reason, size_t reason_len)
{
#ifdef QTOOL_HAVE_CUDA
    const int cuda_code = 1;
#else
    const int cuda_code = 0;
#endif
    return qtool_probe_cpu_cuda(dev, plugin, cuda_code, 7, 5, "", reason, reason_len);
}

/* ------------------------------------------------------------ calibration store */

void int4g_store_init(int4g_store *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->lock, NULL);
}

static void stats_free(const int4g_ctx *c, int4g_stats *e)
{
    if (e->data && e->release) e->release(c, e->data);
    free(e->name);
    free(e);
}

void int4g_store_clear(const int4g_ctx *c, int4g_store *s)
{
    int4g_stats *e = s->head;
    while (e) {
        int4g_stats *n = e->next;
        stats_free(c, e);
        e = n;
    }
    s->head = NULL;
    pthread_mutex_destroy(&s->lock);
}

int4g_stats *int4g_store_get(int4g_store *s, const qtool_layer_info *layer, int create)
{
    const char *name = layer && layer->name ? layer->name : "";
    for (int4g_stats *e = s->head; e; e = e->next)
        if (!strcmp(e->name, name)) return e;
    if (!create) return NULL;
    int4g_stats *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->name = strdup(name);
    if (!e->name) {
        free(e);
        return NULL;
    }
    e->block = layer ? layer->block_index : -1;
    e->K = layer ? layer->in_features : 0;
    e->next = s->head;
    s->head = e;
    return e;
}

void int4g_store_release_before(const int4g_ctx *c, int4g_store *s, int32_t block)
{
    if (block < 0) return;
    int4g_stats **pp = &s->head;
    while (*pp) {
        int4g_stats *e = *pp;
        if (e->block >= 0 && e->block < block) {
            *pp = e->next;
            stats_free(c, e);
        } else {
            pp = &e->next;
        }
    }
}

int int4g_check_calib(const int4g_ctx *c, const qtool_layer_info *layer, const qtool_tensor *x, int64_t *T)
{
    const char *pl = c->plugin;
    if (!layer || !x) return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s calibrate: missing layer or input", pl);
    char what[48];
    snprintf(what, sizeof what, "%s calibrate: x", pl);
    int rc = check_tensor(c, x, what);
    if (rc) return rc;
    if (x->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s calibrate: x must be F32 on the CPU", pl);
    int64_t K = x->shape[x->ndim - 1];
    if (layer->in_features > 0 && K != layer->in_features)
        return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s calibrate: x has %lld features, layer %s has %lld", pl,
                          (long long)K, layer->name ? layer->name : "?", (long long)layer->in_features);
    int64_t n = qtool_tensor_numel(x);
    const float *v = x->data;
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return int4g_fail(c, QTOOL_ERR_INVALID_ARGUMENT, "%s calibrate: %s: input value %lld is not finite", pl,
                              layer->name ? layer->name : "?", (long long)i);
    *T = n / K;
    return QTOOL_OK;
}

/* ------------------------------------------------------------ JSON */

#define JSON_MAX_DEPTH 32

static size_t j_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* Index past the string at s[i] == '"', or 0. */
static size_t j_string(const char *s, size_t n, size_t i)
{
    if (i >= n || s[i] != '"') return 0;
    for (i++; i < n; i++) {
        if (s[i] == '\\') {
            if (++i >= n) return 0;
            continue;
        }
        if ((unsigned char)s[i] < 0x20) return 0;
        if (s[i] == '"') return i + 1;
    }
    return 0;
}

static size_t j_value(const char *s, size_t n, size_t i, int depth)
{
    if (depth > JSON_MAX_DEPTH) return 0;
    i = j_ws(s, n, i);
    if (i >= n) return 0;
    if (s[i] == '"') return j_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        char close = s[i] == '{' ? '}' : ']';
        int obj = s[i] == '{';
        i = j_ws(s, n, i + 1);
        if (i < n && s[i] == close) return i + 1;
        for (;;) {
            if (obj) {
                i = j_string(s, n, j_ws(s, n, i));
                if (!i) return 0;
                i = j_ws(s, n, i);
                if (i >= n || s[i] != ':') return 0;
                i++;
            }
            i = j_value(s, n, i, depth + 1);
            if (!i) return 0;
            i = j_ws(s, n, i);
            if (i >= n) return 0;
            if (s[i] == ',') {
                i++;
                continue;
            }
            if (s[i] == close) return i + 1;
            return 0;
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int w = 0; w < 3; w++) {
        size_t l = strlen(words[w]);
        if (n - i >= l && !memcmp(s + i, words[w], l)) return i + l;
    }
    size_t st = i;
    if (i < n && s[i] == '-') i++;
    size_t d0 = i;
    while (i < n && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' || s[i] == 'E' || s[i] == '+' ||
                     s[i] == '-'))
        i++;
    return i > d0 && i > st ? i : 0;
}

int int4g_json_valid_object(const char *js, size_t n)
{
    size_t i = j_ws(js, n, 0);
    if (i >= n || js[i] != '{') return 0;
    i = j_value(js, n, i, 0);
    if (!i) return 0;
    return j_ws(js, n, i) == n;
}

/* Finds the value of a top-level key: [*vb, *ve). */
static int j_find(const char *s, size_t n, const char *key, size_t *vb, size_t *ve)
{
    if (!int4g_json_valid_object(s, n)) return 0;
    size_t i = j_ws(s, n, 0) + 1, kl = strlen(key);
    i = j_ws(s, n, i);
    if (i < n && s[i] == '}') return 0;
    for (;;) {
        size_t ks = j_ws(s, n, i), ke = j_string(s, n, ks);
        if (!ke) return 0;
        i = j_ws(s, n, ke);
        if (i >= n || s[i] != ':') return 0;
        size_t v0 = j_ws(s, n, i + 1), v1 = j_value(s, n, v0, 1);
        if (!v1) return 0;
        if (ke - ks - 2 == kl && !memcmp(s + ks + 1, key, kl)) {
            *vb = v0;
            *ve = v1;
            return 1;
        }
        i = j_ws(s, n, v1);
        if (i >= n || s[i] != ',') return 0;
        i++;
    }
}

int int4g_json_string(const char *js, size_t n, const char *key, char *out, size_t out_len)
{
    size_t b, e;
    if (!j_find(js, n, key, &b, &e) || js[b] != '"') return 0;
    size_t len = e - b - 2;
    if (len + 1 > out_len || memchr(js + b + 1, '\\', len)) return 0;
    memcpy(out, js + b + 1, len);
    out[len] = '\0';
    return 1;
}

int int4g_json_number(const char *js, size_t n, const char *key, double *out)
{
    size_t b, e;
    if (!j_find(js, n, key, &b, &e)) return 0;
    char buf[64];
    if (e - b >= sizeof buf || !(js[b] == '-' || (js[b] >= '0' && js[b] <= '9'))) return 0;
    memcpy(buf, js + b, e - b);
    buf[e - b] = '\0';
    char *end = NULL;
    double v = strtod(buf, &end);
    if (!end || *end) return 0;
    *out = v;
    return 1;
}

int int4g_json_bool(const char *js, size_t n, const char *key, int *out)
{
    size_t b, e;
    if (!j_find(js, n, key, &b, &e)) return 0;
    if (e - b == 4 && !memcmp(js + b, "true", 4)) {
        *out = 1;
        return 1;
    }
    if (e - b == 5 && !memcmp(js + b, "false", 5)) {
        *out = 0;
        return 1;
    }
    return 0;
}
