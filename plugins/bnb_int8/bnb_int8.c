/* bnb_int8: LLM.int8 (bitsandbytes). Row-wise absmax int8 weights (SCB),
 * per-token int8 activations, int8 GEMM with int32 accumulation; input
 * columns holding an activation with |x| >= threshold are left out of the
 * int8 product and computed in floating point against the dequantized
 * int8 weight columns, as bitsandbytes does. */
#include <qtool/plugin.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "int8_codec.h"
#ifdef QTOOL_HAVE_CUDA
#include "bnb_int8_cuda.h"
#endif

typedef struct i8_instance {
    const qtool_host_services *host;
    float threshold;
    int gemm; /* I8CU_GEMM_* (the `gemm` option's index) */
    size_t chunk_bytes;
    /* CUDA scratch shared by the layers of the instance (they run one after
     * another on the host's stream); memory() reports it with the layer
     * that used it last, so per-layer figures add up to the allocator's. */
    pthread_mutex_t lock;
    void *ws, *outliers, *lt_ws;
    size_t ws_bytes, outlier_bytes, lt_ws_bytes;
    const qtool_packed *ws_owner;
    void *lt_handle;
} i8_instance;

struct qtool_packed {
    i8_instance *inst;
    int device;
    int64_t N, K, Kp; /* Kp: K rounded up to 4 on the CPU, to 16 on CUDA (16-byte tile loads) */
    int8_t *w;        /* [N, Kp] */
    float *scb;       /* [N] */
    float *bias;      /* [N] or NULL */
    uint64_t mem[QTOOL_MEM_COUNT];
};

static const qtool_option_desc i8_options[] = {
    {"threshold", QTOOL_OPT_FLOAT, "6.0",
     "outlier threshold: input columns with any |x| >= threshold bypass int8 (0 disables)", NULL, 0, 1e30},
    {"gemm", QTOOL_OPT_ENUM, "auto",
     "CUDA int8 GEMM: auto (tensor-core GEMM with the dequantization fused in), builtin (dp4a kernel) or cublaslt "
     "(cuBLASLt int32 product, then an epilogue kernel)",
     "auto|builtin|cublaslt", 0, -1},
    {"chunk_mib", QTOOL_OPT_INT, "16",
     "CUDA, gemm=builtin|cublaslt: the int32 product is computed in row chunks of at most this many MiB "
     "(L2-sized keeps it on chip)",
     NULL,
     1, 4096},
};

static const qtool_host_services *g_host;

#define fail(host, status, ...) qtool_log_status((host) ? (host) : g_host, "bnb_int8", (status), __VA_ARGS__)

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

static void release_scratch(i8_instance *inst)
{
    const qtool_host_services *h = inst->host;
    if (inst->ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->ws);
    if (inst->outliers) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->outliers);
    if (inst->lt_ws) h->free(h->ctx, QTOOL_DEVICE_CUDA, inst->lt_ws);
    inst->ws = inst->outliers = inst->lt_ws = NULL;
    inst->ws_bytes = inst->outlier_bytes = inst->lt_ws_bytes = 0;
    inst->ws_owner = NULL;
}

static void free_packed(qtool_packed *p)
{
    if (!p) return;
    i8_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) release_scratch(inst);
    pthread_mutex_unlock(&inst->lock);
    p_free(p, p->w, (size_t)(p->N * p->Kp), QTOOL_MEM_WEIGHTS);
    p_free(p, p->scb, (size_t)p->N * 4, QTOOL_MEM_SCALES);
    p_free(p, p->bias, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
    free(p);
}

/* Row length of the packed codes: the CUDA GEMM reads 16-byte pieces. */
static int64_t kp_for(int device, int64_t K) { return device == QTOOL_DEVICE_CUDA ? (K + 15) / 16 * 16 : (K + 3) / 4 * 4; }

static qtool_packed *new_packed(i8_instance *inst, int device, int64_t N, int64_t K, int64_t Kp, int with_bias)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->inst = inst;
    p->device = device;
    p->N = N;
    p->K = K;
    p->Kp = Kp;
    p->w = p_alloc(p, (size_t)(N * p->Kp), QTOOL_MEM_WEIGHTS);
    p->scb = p_alloc(p, (size_t)N * 4, QTOOL_MEM_SCALES);
    if (with_bias) p->bias = p_alloc(p, (size_t)N * 4, QTOOL_MEM_WEIGHTS);
    if (!p->w || !p->scb || (with_bias && !p->bias)) {
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
    int rc = i8cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc) rc = i8cu_copy(g->w, c->w, (size_t)(c->N * c->Kp), 0, st, msg, sizeof msg);
    if (!rc) rc = i8cu_copy(g->scb, c->scb, (size_t)c->N * 4, 0, st, msg, sizeof msg);
    if (!rc && c->bias) rc = i8cu_copy(g->bias, c->bias, (size_t)c->N * 4, 0, st, msg, sizeof msg);
    if (rc) return fail(h, rc, "bnb_int8: upload of a packed layer: %s", msg);
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
    /* The CPU copy was packed with the CUDA row length (kp_for). */
    qtool_packed *g = new_packed(cpu->inst, QTOOL_DEVICE_CUDA, cpu->N, cpu->K, cpu->Kp, cpu->bias != NULL);
    int rc = g ? upload(g, cpu) : fail(cpu->inst->host, QTOOL_ERR_OUT_OF_MEMORY, "bnb_int8: out of CUDA memory");
    free_packed(cpu);
    if (rc) {
        free_packed(g);
        return rc;
    }
    *out = g;
    return QTOOL_OK;
#else
    free_packed(cpu);
    return fail(NULL, QTOOL_ERR_UNSUPPORTED, "bnb_int8: built without CUDA support");
#endif
}

/* ------------------------------------------------------------ slots */

static int i8_init(const qtool_host_services *host, char *msg, size_t msg_len)
{
    (void)msg;
    (void)msg_len;
    g_host = host;
    return QTOOL_OK;
}

static void i8_shutdown(void) { g_host = NULL; }

static int i8_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
#ifdef QTOOL_HAVE_CUDA
    const int cuda_code = 1;
#else
    const int cuda_code = 0;
#endif
    /* int8 tensor cores (IMMA) with row/column-major cuBLASLt layouts. */
    return qtool_probe_cpu_cuda(dev, "bnb_int8", cuda_code, 7, 5, " for int8 tensor cores", reason, reason_len);
}

static int i8_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                     qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "bnb_int8: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    i8_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->host = host;
    inst->threshold = 6.0f;
    inst->chunk_bytes = (size_t)16 << 20;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "threshold")) {
            if (!(opts[i].f >= 0.0) || opts[i].f > 1e30) {
                snprintf(msg, msg_len, "bnb_int8: threshold must be >= 0, got %g", opts[i].f);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->threshold = (float)opts[i].f;
        } else if (!strcmp(name, "gemm")) {
            if (opts[i].i < 0 || opts[i].i > 2) {
                snprintf(msg, msg_len, "bnb_int8: gemm must be auto, builtin or cublaslt");
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->gemm = (int)opts[i].i;
        } else if (!strcmp(name, "chunk_mib")) {
            if (opts[i].i < 1 || opts[i].i > 4096) {
                snprintf(msg, msg_len, "bnb_int8: chunk_mib must be 1..4096, got %lld", (long long)opts[i].i);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->chunk_bytes = (size_t)opts[i].i << 20;
        } else {
            snprintf(msg, msg_len, "bnb_int8: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    pthread_mutex_init(&inst->lock, NULL);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void i8_destroy(qtool_instance *qi)
{
    i8_instance *inst = (i8_instance *)qi;
    if (!inst) return;
    release_scratch(inst);
#ifdef QTOOL_HAVE_CUDA
    if (inst->lt_handle) i8cu_lt_destroy(inst->lt_handle);
#endif
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

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
        /* Weights are quantized without outlier exclusion (bitsandbytes' Int8Params). */
        p->scb[r] = i8_quantize_row(row, p->K, p->Kp, 0.0f, NULL, p->w + r * p->Kp);
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, row);
}

static int i8_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    i8_instance *inst = (i8_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const qtool_tensor *w = args->weight;
    int rc = check_tensor(h, w, "bnb_int8 pack: weight");
    if (rc) return rc;
    if (w->ndim != 2 || !is_float_dtype(w->dtype) || w->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 pack: weight must be a 2-D F32/F16/BF16 CPU tensor");
    int64_t N = w->shape[0], K = w->shape[1];
    if (args->layer && args->layer->in_features > 0 &&
        (args->layer->in_features != K || args->layer->out_features != N))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT,
                    "bnb_int8 pack: weight [%lld, %lld] does not match layer %lldx%lld", (long long)N, (long long)K,
                    (long long)args->layer->out_features, (long long)args->layer->in_features);
    if (K > (1 << 30) || N > (1 << 30) || N * K > ((int64_t)1 << 40))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 pack: weight too large");
    if (args->bias) {
        rc = check_tensor(h, args->bias, "bnb_int8 pack: bias");
        if (rc) return rc;
        if (qtool_tensor_numel(args->bias) != N || !is_float_dtype(args->bias->dtype) ||
            args->bias->device != QTOOL_DEVICE_CPU)
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 pack: bias must be [%lld] float on the CPU",
                        (long long)N);
    }
    if (args->device != QTOOL_DEVICE_CPU && args->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 pack: unknown device %d", args->device);
#ifndef QTOOL_HAVE_CUDA
    if (args->device == QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_UNSUPPORTED, "bnb_int8 pack: built without CUDA support");
#endif
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, kp_for(args->device, K), args->bias != NULL);
    if (!p) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "bnb_int8 pack: out of memory");
    wq_job job = {w->data, w->dtype, p, 0};
    if (h->parallel_for)
        h->parallel_for(h->ctx, N, 16, quant_weight_rows, &job);
    else
        quant_weight_rows(&job, 0, N);
    if (job.failed) {
        free_packed(p);
        return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "bnb_int8 pack: out of memory");
    }
    if (p->bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(args->bias->data, args->bias->dtype, i);
    return finish_on_device(p, args->device, out);
}

static void i8_free_packed(qtool_packed *p) { free_packed(p); }

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
/* Values are in [-127, 127]: |a| * b' pairs never saturate maddubs. */
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
    static int avx2 = -1;
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") != 0;
    }
    if (avx2) return dot_i8_avx2;
#endif
    return dot_i8_generic;
}

#define I8_TILE_M 16
#define I8_TILE_N 64

typedef struct cpu_mm {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t M;
    float threshold;
    uint8_t *zero_col; /* [K] outlier columns, or NULL */
    int64_t n_out;     /* number of outlier columns */
    const int32_t *cols;
    float *xo;   /* [M, n_out] outlier activations */
    float *wo;   /* [N, n_out] dequantized int8 weight columns */
    int8_t *qa;  /* [M, Kp] */
    float *sa;   /* [M] */
    int64_t tiles_m;
    dot_i8_fn dot;
} cpu_mm;

static void cpu_quant_rows(void *arg, int64_t r0, int64_t r1)
{
    cpu_mm *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t m = r0; m < r1; m++) {
        j->sa[m] = i8_quantize_row(j->x + m * p->K, p->K, p->Kp, j->threshold, j->zero_col, j->qa + m * p->Kp);
        for (int64_t o = 0; o < j->n_out; o++) j->xo[m * j->n_out + o] = j->x[m * p->K + j->cols[o]];
    }
}

static void cpu_gather_w(void *arg, int64_t n0, int64_t n1)
{
    cpu_mm *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t o = 0; o < j->n_out; o++)
            j->wo[n * j->n_out + o] = (float)p->w[n * p->Kp + j->cols[o]] * p->scb[n] * I8_INV127;
}

static void cpu_gemm_tiles(void *arg, int64_t t0, int64_t t1)
{
    cpu_mm *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t t = t0; t < t1; t++) {
        int64_t nt = t / j->tiles_m, mt = t % j->tiles_m;
        int64_t n0 = nt * I8_TILE_N, n1 = n0 + I8_TILE_N < p->N ? n0 + I8_TILE_N : p->N;
        int64_t m0 = mt * I8_TILE_M, m1 = m0 + I8_TILE_M < j->M ? m0 + I8_TILE_M : j->M;
        for (int64_t m = m0; m < m1; m++) {
            const int8_t *qa = j->qa + m * p->Kp;
            const float *xo = j->xo + m * j->n_out;
            float *yr = j->y + m * p->N;
            for (int64_t n = n0; n < n1; n++) {
                int32_t acc = j->dot(qa, p->w + n * p->Kp, p->Kp);
                float v = (float)acc * j->sa[m] * p->scb[n] * I8_MM_DEQUANT_CONST;
                const float *wo = j->wo + n * j->n_out;
                float o = 0.0f;
                for (int64_t k = 0; k < j->n_out; k++) o += xo[k] * wo[k];
                yr[n] = v + o + (p->bias ? p->bias[n] : 0.0f);
            }
        }
    }
}

static int check_io(const qtool_packed *p, const qtool_matmul_args *a, int device, int64_t *M)
{
    char msg[256];
    int rc = qtool_check_matmul_args("bnb_int8", a, device, p->K, p->N, M, msg, sizeof msg);
    return rc ? fail(p->inst->host, rc, "%s", msg) : QTOOL_OK;
}

static int i8_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 matmul_cpu: layer was packed for CUDA");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CPU, &M);
    if (rc) return rc;
    if (a->x->dtype != QTOOL_DTYPE_F32 || a->y->dtype != QTOOL_DTYPE_F32)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 matmul_cpu: x and y must be F32");
    cpu_mm j;
    memset(&j, 0, sizeof j);
    j.p = p;
    j.x = a->x->data;
    j.y = a->y->data;
    j.M = M;
    j.threshold = p->inst->threshold;
    j.dot = pick_dot();
    j.tiles_m = (M + I8_TILE_M - 1) / I8_TILE_M;
    const float thr = j.threshold;
    int32_t *cols = NULL;
    /* Outlier columns: any token with |x| >= threshold. */
    if (thr > 0.0f) {
        j.zero_col = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->K, QTOOL_MEM_OUTLIERS);
        cols = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->K * 4, QTOOL_MEM_OUTLIERS);
        if (!j.zero_col || !cols) {
            rc = QTOOL_ERR_OUT_OF_MEMORY;
            goto out;
        }
        memset(j.zero_col, 0, (size_t)p->K);
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < p->K; k++)
                if (i8_absf(j.x[m * p->K + k]) >= thr) j.zero_col[k] = 1;
        for (int64_t k = 0; k < p->K; k++)
            if (j.zero_col[k]) cols[j.n_out++] = (int32_t)k;
    }
    j.cols = cols;
    j.qa = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(M * p->Kp), QTOOL_MEM_WORKSPACE);
    j.sa = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)M * 4, QTOOL_MEM_WORKSPACE);
    j.xo = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(M * j.n_out) * 4, QTOOL_MEM_OUTLIERS);
    j.wo = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->N * j.n_out) * 4, QTOOL_MEM_OUTLIERS);
    if (!j.qa || !j.sa || !j.xo || !j.wo) {
        rc = QTOOL_ERR_OUT_OF_MEMORY;
        goto out;
    }
    if (h->parallel_for) {
        h->parallel_for(h->ctx, M, 4, cpu_quant_rows, &j);
        if (j.n_out) h->parallel_for(h->ctx, p->N, 64, cpu_gather_w, &j);
        h->parallel_for(h->ctx, ((p->N + I8_TILE_N - 1) / I8_TILE_N) * j.tiles_m, 1, cpu_gemm_tiles, &j);
    } else {
        cpu_quant_rows(&j, 0, M);
        if (j.n_out) cpu_gather_w(&j, 0, p->N);
        cpu_gemm_tiles(&j, 0, ((p->N + I8_TILE_N - 1) / I8_TILE_N) * j.tiles_m);
    }
out:
    if (j.zero_col) h->free(h->ctx, QTOOL_DEVICE_CPU, j.zero_col);
    if (cols) h->free(h->ctx, QTOOL_DEVICE_CPU, cols);
    if (j.qa) h->free(h->ctx, QTOOL_DEVICE_CPU, j.qa);
    if (j.sa) h->free(h->ctx, QTOOL_DEVICE_CPU, j.sa);
    if (j.xo) h->free(h->ctx, QTOOL_DEVICE_CPU, j.xo);
    if (j.wo) h->free(h->ctx, QTOOL_DEVICE_CPU, j.wo);
    if (rc) return fail(h, rc, "bnb_int8 matmul_cpu: out of memory for %lld rows", (long long)M);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ CUDA matmul */

#ifdef QTOOL_HAVE_CUDA
static int grow(i8_instance *inst, void **buf, size_t *have, size_t need, int category, int *fresh)
{
    if (*have >= need) return QTOOL_OK;
    const qtool_host_services *h = inst->host;
    if (*buf) h->free(h->ctx, QTOOL_DEVICE_CUDA, *buf);
    *have = 0;
    *buf = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, need, category);
    if (!*buf) return QTOOL_ERR_OUT_OF_MEMORY;
    *have = need;
    if (fresh) *fresh = 1;
    return QTOOL_OK;
}

static int i8_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 matmul_cuda: layer was packed for the CPU");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CUDA, &M);
    if (rc) return rc;
    int dt = a->x->dtype;
    if ((dt != QTOOL_DTYPE_F16 && dt != QTOOL_DTYPE_BF16) || a->y->dtype != dt)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 matmul_cuda: x and y must both be F16 or both BF16");
    i8_instance *inst = p->inst;
    char msg[256];
    void *stream = a->stream ? a->stream : h->cuda_stream;
    i8cu_layer L = {p->w, p->scb, p->bias, p->N, p->K, p->Kp, inst->chunk_bytes};
    int fresh = 0;
    pthread_mutex_lock(&inst->lock);
    rc = i8cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && !inst->lt_handle && inst->gemm == I8CU_GEMM_CUBLASLT)
        rc = i8cu_lt_create(&inst->lt_handle, msg, sizeof msg);
    if (rc) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, rc, "bnb_int8 matmul_cuda: %s", msg);
    }
    rc = grow(inst, &inst->ws, &inst->ws_bytes, i8cu_workspace_bytes(&L, M, inst->gemm), QTOOL_MEM_WORKSPACE, NULL);
    if (!rc)
        rc = grow(inst, &inst->outliers, &inst->outlier_bytes, i8cu_outlier_bytes(&L), QTOOL_MEM_OUTLIERS, &fresh);
    if (!rc && inst->gemm == I8CU_GEMM_CUBLASLT)
        rc = grow(inst, &inst->lt_ws, &inst->lt_ws_bytes, i8cu_lt_workspace_bytes(), QTOOL_MEM_WORKSPACE, NULL);
    if (rc) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, rc, "bnb_int8 matmul_cuda: out of CUDA memory for the workspace of %lld rows", (long long)M);
    }
    inst->ws_owner = p;
    rc = i8cu_matmul(&L, a->x->data, a->y->data, M, dt == QTOOL_DTYPE_BF16, inst->threshold, inst->ws,
                     inst->ws_bytes, inst->outliers, inst->outlier_bytes, fresh, inst->lt_handle, inst->lt_ws,
                     inst->lt_ws_bytes, inst->gemm, stream, msg, sizeof msg);
    pthread_mutex_unlock(&inst->lock);
    if (rc) return fail(h, rc, "bnb_int8 matmul_cuda: %s", msg);
    return QTOOL_OK;
}
#endif

static int i8_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < QTOOL_MEM_COUNT; i++) bytes[i] = p->mem[i];
    i8_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) {
        bytes[QTOOL_MEM_WORKSPACE] += inst->ws_bytes + inst->lt_ws_bytes;
        bytes[QTOOL_MEM_OUTLIERS] += inst->outlier_bytes;
    }
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ save/load */

/* transformers' Linear8bitLt layout: weight int8 [N, K], SCB f32 [N],
 * weight_format u8 scalar 0 (row-major), bias. */
static int i8_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (!p || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    void *tmp = NULL;
    int tmp_dev = QTOOL_DEVICE_CPU;
    int rc = QTOOL_OK;
    t.dtype = QTOOL_DTYPE_I8;
    t.ndim = 2;
    t.shape[0] = p->N;
    t.shape[1] = p->K;
    if (p->Kp == p->K) {
        t.data = p->w;
        t.device = p->device;
    } else {
        /* Drop the padding columns through a host copy. */
        tmp = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->N * p->K), QTOOL_MEM_OTHER);
        if (!tmp) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "bnb_int8 save: out of memory");
        if (p->device == QTOOL_DEVICE_CPU) {
            for (int64_t n = 0; n < p->N; n++) memcpy((int8_t *)tmp + n * p->K, p->w + n * p->Kp, (size_t)p->K);
        } else {
#ifdef QTOOL_HAVE_CUDA
            char msg[256];
            rc = i8cu_copy_2d(tmp, (size_t)p->K, p->w, (size_t)p->Kp, (size_t)p->K, (size_t)p->N, 1, h->cuda_stream,
                              msg, sizeof msg);
            if (rc) fail(h, rc, "bnb_int8 save: %s", msg);
#endif
        }
        t.data = tmp;
        t.device = tmp_dev;
    }
    if (!rc) rc = sink->put(sink->ctx, "weight", &t);
    if (tmp) h->free(h->ctx, QTOOL_DEVICE_CPU, tmp);
    if (!rc) {
        memset(&t, 0, sizeof t);
        t.data = p->scb;
        t.dtype = QTOOL_DTYPE_F32;
        t.device = p->device;
        t.ndim = 1;
        t.shape[0] = p->N;
        rc = sink->put(sink->ctx, "SCB", &t);
    }
    if (!rc) {
        static uint8_t row_major = 0;
        memset(&t, 0, sizeof t);
        t.data = &row_major;
        t.dtype = QTOOL_DTYPE_U8;
        t.device = QTOOL_DEVICE_CPU;
        t.ndim = 0;
        rc = sink->put(sink->ctx, "weight_format", &t);
    }
    if (!rc && p->bias) {
        memset(&t, 0, sizeof t);
        t.data = p->bias;
        t.dtype = QTOOL_DTYPE_F32;
        t.device = p->device;
        t.ndim = 1;
        t.shape[0] = p->N;
        rc = sink->put(sink->ctx, "bias", &t);
    }
    if (rc) return fail(h, rc, "bnb_int8 save: the host refused a tensor");
    return QTOOL_OK;
}

static int i8_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                   qtool_packed **out)
{
    i8_instance *inst = (i8_instance *)qi;
    if (!inst || !layer || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const char *name = layer->name ? layer->name : "layer";
    qtool_tensor w, scb, b;
    if (src->get(src->ctx, "weight", &w) || !w.data || w.dtype != QTOOL_DTYPE_I8 || w.ndim != 2 || w.shape[0] <= 0 ||
        w.shape[1] <= 0 || w.shape[0] > (1 << 30) || w.shape[1] > (1 << 30))
        return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: weight must be a 2-D I8 tensor", name);
    int64_t N = w.shape[0], K = w.shape[1];
    if (layer->in_features > 0 && (layer->in_features != K || layer->out_features != N))
        return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: weight [%lld, %lld] does not match the layer", name,
                    (long long)N, (long long)K);
    if (src->get(src->ctx, "SCB", &scb) || !scb.data || scb.dtype != QTOOL_DTYPE_F32 || qtool_tensor_numel(&scb) != N)
        return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: SCB must be F32 [%lld]", name, (long long)N);
    if (src->has(src->ctx, "weight_format")) {
        qtool_tensor f;
        if (src->get(src->ctx, "weight_format", &f) || !f.data || qtool_tensor_numel(&f) != 1 ||
            (f.dtype == QTOOL_DTYPE_U8 && *(const uint8_t *)f.data != 0))
            return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: only row-major weight_format 0 is supported", name);
    }
    int has_bias = src->has(src->ctx, "bias");
    if (has_bias && (src->get(src->ctx, "bias", &b) || !b.data || !is_float_dtype(b.dtype) || qtool_tensor_numel(&b) != N))
        return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: bias must have %lld float elements", name, (long long)N);
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "bnb_int8 load: unknown device %d", device);
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, kp_for(device, K), has_bias);
    if (!p) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "bnb_int8 load: out of memory");
    const int8_t *src_w = w.data;
    for (int64_t n = 0; n < N; n++) {
        memcpy(p->w + n * p->Kp, src_w + n * K, (size_t)K);
        memset(p->w + n * p->Kp + K, 0, (size_t)(p->Kp - K));
    }
    memcpy(p->scb, scb.data, (size_t)N * 4);
    for (int64_t n = 0; n < N; n++)
        if (!(p->scb[n] >= 0.0f) || p->scb[n] > 3.0e38f) {
            free_packed(p);
            return fail(h, QTOOL_ERR_FORMAT, "bnb_int8 load: %s: SCB[%lld] is not a finite non-negative value", name,
                        (long long)n);
        }
    if (has_bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(b.data, b.dtype, i);
    return finish_on_device(p, device, out);
}

static int i8_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const i8_instance *inst = (const i8_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"bitsandbytes\", \"load_in_8bit\": true, \"load_in_4bit\": false, "
                     "\"llm_int8_threshold\": %.9g, \"llm_int8_skip_modules\": null, "
                     "\"llm_int8_enable_fp32_cpu_offload\": false, \"llm_int8_has_fp16_weight\": false, "
                     "\"bnb_4bit_quant_type\": \"fp4\", \"bnb_4bit_use_double_quant\": false, "
                     "\"bnb_4bit_compute_dtype\": \"float32\", \"bnb_4bit_quant_storage\": \"uint8\", "
                     "\"_load_in_4bit\": false, \"_load_in_8bit\": true}",
                     (double)inst->threshold);
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

/* Looks for "key" : literal at the top level of a flat JSON object. A
 * small scanner: the only configs it meets are transformers' own. */
static int json_literal_after_key(const char *s, const char *key, char *out, size_t out_len)
{
    size_t n = strnlen(s, 1 << 20), kl = strlen(key);
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++;
            else if (c == '"')
                in_str = 0;
            continue;
        }
        if (c == '{' || c == '[') depth++;
        if (c == '}' || c == ']') depth--;
        if (c != '"') continue;
        if (depth == 1 && i + kl + 1 < n && !memcmp(s + i + 1, key, kl) && s[i + 1 + kl] == '"') {
            size_t j = i + kl + 2;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
            if (j >= n || s[j] != ':') return 0;
            j++;
            while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r')) j++;
            size_t o = 0;
            if (j < n && s[j] == '"') j++;
            while (j < n && o + 1 < out_len && s[j] != '"' && s[j] != ',' && s[j] != '}' && s[j] != ' ')
                out[o++] = s[j++];
            out[o] = '\0';
            return 1;
        }
        in_str = 1;
    }
    return 0;
}

static int i8_accepts_config(const char *json)
{
    if (!json) return 0;
    char v[32];
    if (!json_literal_after_key(json, "quant_method", v, sizeof v) || strcmp(v, "bitsandbytes")) return 0;
    return json_literal_after_key(json, "load_in_8bit", v, sizeof v) && !strcmp(v, "true");
}

static const qtool_plugin_desc i8_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "bnb_int8",
    .version = "1.0.0",
    .summary = "LLM.int8: int8 row-wise weights and per-token activations, outlier columns in floating point",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = QTOOL_PLUGIN_ROW_INDEPENDENT,
    .weight_bits = 8,
    .activation_bits = 8,
    .options = i8_options,
    .n_options = sizeof i8_options / sizeof i8_options[0],
    .init = i8_init,
    .shutdown = i8_shutdown,
    .probe = i8_probe,
    .create = i8_create,
    .destroy = i8_destroy,
    .calibrate = NULL,
    .pack = i8_pack,
    .free_packed = i8_free_packed,
    .matmul_cpu = i8_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = i8_matmul_cuda,
#else
    .matmul_cuda = NULL,
#endif
    .memory = i8_memory,
    .save = i8_save,
    .load = i8_load,
    .quant_config_json = i8_quant_config_json,
    .accepts_config = i8_accepts_config,
};

QTOOL_PLUGIN_ENTRY { return &i8_desc; }
