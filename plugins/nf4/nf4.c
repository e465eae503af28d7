/* nf4: 4-bit NormalFloat (or FP4) weights in blocks over the flattened
 * weight, fp32 absmax per block, optionally double-quantized with
 * bitsandbytes' signed dynamic 8-bit map. Bit-compatible with
 * bitsandbytes' quantize_4bit and with transformers' 4-bit checkpoints. */
#include <qtool/plugin.h>

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nf4_codec.h"
#include "nf4_json.h"
#ifdef QTOOL_HAVE_CUDA
#include "nf4_cuda.h"
#endif

#define NF4_NESTED_BLOCK 256
/* Rows of the input at or below which CUDA uses the GEMV kernel. */
#define NF4_GEMV_MAX_M 64

typedef struct nf4_instance {
    const qtool_host_services *host;
    int quant_type;
    int blocksize;
    int double_quant;
    int cuda_path; /* NF4CU_PATH_* */
    /* Scratch shared by every layer of the instance (the runtime runs
     * layers one after another). memory() reports it with the layer that
     * used it last, so per-layer figures add up to the allocator's. */
    pthread_mutex_t lock;
    void *ws;
    size_t ws_bytes;
    const qtool_packed *ws_owner;
    void *lt_handle;
    void *lt_ws;
    size_t lt_ws_bytes;
} nf4_instance;

struct qtool_packed {
    nf4_instance *inst;
    int device;
    int quant_type, blocksize, nested;
    int orig_dtype; /* dtype of the weight that was packed, for quant_state */
    int64_t N, K, n, nblocks, nblocks2;
    uint8_t *codes;
    float *absmax;        /* not nested */
    uint8_t *qabsmax;     /* nested */
    float *nested_absmax; /* nested */
    float *nested_map;    /* nested, 256 */
    float offset;
    float *quant_map; /* 16 */
    float *bias;      /* [N] or NULL */
    uint64_t mem[QTOOL_MEM_COUNT];
};

static const qtool_option_desc nf4_options[] = {
    {"dtype", QTOOL_OPT_ENUM, "nf4", "4-bit code: nf4 (NormalFloat) or fp4", "nf4|fp4", 0, -1},
    {"blocksize", QTOOL_OPT_INT, "64", "elements per absmax block: a power of two from 64 to 4096", NULL, 64,
     4096},
    {"double_quant", QTOOL_OPT_BOOL, "1", "quantize the absmax values again (8-bit dynamic map, blocks of 256)",
     NULL, 0, -1},
    {"cuda_kernel", QTOOL_OPT_ENUM, "auto",
     "CUDA kernel: auto (fused up to 64 rows), gemv (fused dequantize: tensor cores for 2..16 rows on sm_80+, "
     "else a GEMV), dequant_gemm (fp16 workspace + cuBLASLt)",
     "auto|gemv|dequant_gemm", 0, -1},
};

static const qtool_host_services *g_host;

#define logf_(host, level, ...) qtool_logf((host) ? (host) : g_host, "nf4", (level), __VA_ARGS__)
#define fail(host, status, ...) qtool_log_status((host) ? (host) : g_host, "nf4", (status), __VA_ARGS__)

/* ------------------------------------------------------------ memory */

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

static size_t codes_bytes(const qtool_packed *p) { return (size_t)((p->n + 1) / 2); }

static void free_packed(qtool_packed *p)
{
    if (!p) return;
    nf4_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) {
        /* The shared scratch goes with its owner so that no allocation is
         * left unreported; the next call grows it again. */
        if (inst->ws) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->ws);
        if (inst->lt_ws) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->lt_ws);
        inst->ws = inst->lt_ws = NULL;
        inst->ws_bytes = inst->lt_ws_bytes = 0;
        inst->ws_owner = NULL;
    }
    pthread_mutex_unlock(&inst->lock);
    p_free(p, p->codes, codes_bytes(p), QTOOL_MEM_WEIGHTS);
    p_free(p, p->absmax, (size_t)p->nblocks * 4, QTOOL_MEM_SCALES);
    p_free(p, p->qabsmax, (size_t)p->nblocks, QTOOL_MEM_SCALES);
    p_free(p, p->nested_absmax, (size_t)p->nblocks2 * 4, QTOOL_MEM_NESTED_SCALES);
    p_free(p, p->nested_map, 256 * 4, QTOOL_MEM_NESTED_SCALES);
    p_free(p, p->quant_map, 16 * 4, QTOOL_MEM_SCALES);
    p_free(p, p->bias, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
    free(p);
}

/* Allocates every buffer of a packed layer on p->device. */
static int alloc_layer(qtool_packed *p, int with_bias)
{
    p->codes = p_alloc(p, codes_bytes(p), QTOOL_MEM_WEIGHTS);
    p->quant_map = p_alloc(p, 16 * 4, QTOOL_MEM_SCALES);
    int ok = p->codes && p->quant_map;
    if (p->nested) {
        p->qabsmax = p_alloc(p, (size_t)p->nblocks, QTOOL_MEM_SCALES);
        p->nested_absmax = p_alloc(p, (size_t)p->nblocks2 * 4, QTOOL_MEM_NESTED_SCALES);
        p->nested_map = p_alloc(p, 256 * 4, QTOOL_MEM_NESTED_SCALES);
        ok = ok && p->qabsmax && p->nested_absmax && p->nested_map;
    } else {
        p->absmax = p_alloc(p, (size_t)p->nblocks * 4, QTOOL_MEM_SCALES);
        ok = ok && p->absmax;
    }
    if (with_bias) {
        p->bias = p_alloc(p, (size_t)p->N * 4, QTOOL_MEM_WEIGHTS);
        ok = ok && p->bias;
    }
    return ok ? QTOOL_OK : QTOOL_ERR_OUT_OF_MEMORY;
}

/* ------------------------------------------------------------ helpers */

static int is_float_dtype(int dt) { return dt == QTOOL_DTYPE_F32 || dt == QTOOL_DTYPE_F16 || dt == QTOOL_DTYPE_BF16; }

static float load_elem(const void *data, int dtype, int64_t i)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)data)[i]);
    case QTOOL_DTYPE_BF16: return qtool_bf16_to_f32(((const uint16_t *)data)[i]);
    default: return ((const float *)data)[i];
    }
}

static const char *torch_dtype_name(int dt)
{
    switch (dt) {
    case QTOOL_DTYPE_F16: return "float16";
    case QTOOL_DTYPE_BF16: return "bfloat16";
    default: return "float32";
    }
}

static int dtype_from_torch_name(const char *s)
{
    if (!strcmp(s, "float16")) return QTOOL_DTYPE_F16;
    if (!strcmp(s, "bfloat16")) return QTOOL_DTYPE_BF16;
    if (!strcmp(s, "float32")) return QTOOL_DTYPE_F32;
    return -1;
}

static const float *code_table(int quant_type) { return quant_type == NF4_TYPE_FP4 ? nf4_code_fp4 : nf4_code_nf4; }

/* Dequantized absmax of block b (CPU layers). Two roundings, as
 * bitsandbytes' dequantize_blockwise followed by "+= offset". */
static inline float block_absmax(const qtool_packed *p, int64_t b)
{
    if (!p->nested) return p->absmax[b];
    float a = p->nested_map[p->qabsmax[b]] * p->nested_absmax[b / NF4_NESTED_BLOCK];
    return a + p->offset;
}

/* ------------------------------------------------------------ quantize */

typedef struct quant_job {
    const void *w;
    int dtype;
    int64_t n;
    int blocksize, quant_type;
    uint8_t *codes;
    float *absmax;
} quant_job;

static void quant_blocks(void *arg, int64_t b0, int64_t b1)
{
    const quant_job *j = arg;
    for (int64_t b = b0; b < b1; b++) {
        int64_t s = b * j->blocksize, e = s + j->blocksize;
        if (e > j->n) e = j->n;
        float amax = 0.0f;
        for (int64_t i = s; i < e; i++) {
            float v = fabsf(load_elem(j->w, j->dtype, i));
            amax = v > amax ? v : amax;
        }
        j->absmax[b] = amax;
        /* The GPU kernel multiplies by the reciprocal rather than dividing. */
        float inv = 1.0f / amax;
        for (int64_t i = s; i < e; i += 2) {
            unsigned hi = nf4_quantize_code(j->quant_type, load_elem(j->w, j->dtype, i) * inv);
            /* An odd tail is padded with a zero element, quantized like the
             * GPU does (0 * inv). */
            float second = i + 1 < e ? load_elem(j->w, j->dtype, i + 1) : 0.0f;
            unsigned lo = nf4_quantize_code(j->quant_type, second * inv);
            j->codes[i / 2] = (uint8_t)((hi << 4) | lo);
        }
    }
}

/* Double quantization of absmax (n values) into q/nested_absmax. */
static void double_quantize(const float *absmax, int64_t nblocks, uint8_t *q, float *nested_absmax, float *offset,
                            float *map)
{
    double sum = 0.0;
    for (int64_t i = 0; i < nblocks; i++) sum += absmax[i];
    float off = (float)(sum / (double)nblocks);
    for (int i = 0; i < 256; i++) map[i] = nf4_bits_to_float(nf4_dynamic_map_bits[i]);
    int64_t nb2 = (nblocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK;
    for (int64_t b = 0; b < nb2; b++) {
        int64_t s = b * NF4_NESTED_BLOCK, e = s + NF4_NESTED_BLOCK;
        if (e > nblocks) e = nblocks;
        float amax = 0.0f;
        for (int64_t i = s; i < e; i++) {
            float v = fabsf(absmax[i] - off);
            amax = v > amax ? v : amax;
        }
        nested_absmax[b] = amax;
        float inv = 1.0f / amax;
        for (int64_t i = s; i < e; i++) q[i] = (uint8_t)nf4_dynamic_quantize(map, (absmax[i] - off) * inv);
    }
    *offset = off;
}

static int check_tensor(const qtool_host_services *host, const qtool_tensor *t, const char *what)
{
    char msg[256];
    return qtool_check_tensor(t, what, msg, sizeof msg) ? fail(host, QTOOL_ERR_INVALID_ARGUMENT, "%s", msg) : QTOOL_OK;
}

static qtool_packed *new_packed(nf4_instance *inst, int device, int64_t N, int64_t K, int quant_type, int blocksize,
                                int nested)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->inst = inst;
    p->device = device;
    p->N = N;
    p->K = K;
    p->n = N * K;
    p->quant_type = quant_type;
    p->blocksize = blocksize;
    p->nested = nested;
    p->nblocks = (p->n + blocksize - 1) / blocksize;
    p->nblocks2 = nested ? (p->nblocks + NF4_NESTED_BLOCK - 1) / NF4_NESTED_BLOCK : 0;
    p->orig_dtype = QTOOL_DTYPE_F16;
    return p;
}

#ifdef QTOOL_HAVE_CUDA
/* Host staging copy of a layer, uploaded to the device. */
static int upload(qtool_packed *dst, const qtool_packed *src)
{
    char msg[256];
    const qtool_host_services *h = dst->inst->host;
    struct {
        void *d;
        const void *s;
        size_t n;
    } parts[] = {
        {dst->codes, src->codes, codes_bytes(src)},
        {dst->quant_map, src->quant_map, 64},
        {dst->absmax, src->absmax, (size_t)src->nblocks * 4},
        {dst->qabsmax, src->qabsmax, (size_t)src->nblocks},
        {dst->nested_absmax, src->nested_absmax, (size_t)src->nblocks2 * 4},
        {dst->nested_map, src->nested_map, 1024},
        {dst->bias, src->bias, (size_t)src->N * 4},
    };
    int rc = nf4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (rc) return fail(h, rc, "%s", msg);
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (!parts[i].d || !parts[i].s) continue;
        rc = nf4cu_copy(parts[i].d, parts[i].s, parts[i].n, 0, h->cuda_stream, msg, sizeof msg);
        if (rc) return fail(h, rc, "upload of packed nf4 layer: %s", msg);
    }
    dst->offset = src->offset;
    dst->orig_dtype = src->orig_dtype;
    return QTOOL_OK;
}
#endif

/* Moves a CPU-built layer to the device it was asked for. */
static int finish_on_device(qtool_packed *cpu, int device, qtool_packed **out)
{
    if (device == QTOOL_DEVICE_CPU) {
        *out = cpu;
        return QTOOL_OK;
    }
#ifdef QTOOL_HAVE_CUDA
    qtool_packed *g = new_packed(cpu->inst, QTOOL_DEVICE_CUDA, cpu->N, cpu->K, cpu->quant_type, cpu->blocksize,
                                 cpu->nested);
    if (!g) {
        free_packed(cpu);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    int rc = alloc_layer(g, cpu->bias != NULL);
    if (rc) {
        fail(cpu->inst->host, rc, "nf4: out of CUDA memory for a %lldx%lld layer", (long long)cpu->N,
             (long long)cpu->K);
    } else {
        rc = upload(g, cpu);
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
    return fail(NULL, QTOOL_ERR_UNSUPPORTED, "nf4: built without CUDA support");
#endif
}

/* ------------------------------------------------------------ slots */

static int nf4_init(const qtool_host_services *host, char *msg, size_t msg_len)
{
    (void)msg;
    (void)msg_len;
    g_host = host;
    return QTOOL_OK;
}

static void nf4_shutdown(void) { g_host = NULL; }

static int nf4_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
#ifdef QTOOL_HAVE_CUDA
    const int cuda_code = 1;
#else
    const int cuda_code = 0;
#endif
    return qtool_probe_cpu_cuda(dev, "nf4", cuda_code, 7, 5, "", reason, reason_len);
}

static int nf4_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                      qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out || !host->alloc || !host->free) {
        snprintf(msg, msg_len, "nf4: missing host services");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    nf4_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->host = host;
    inst->quant_type = NF4_TYPE_NF4;
    inst->blocksize = 64;
    inst->double_quant = 1;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *name = opts[i].name ? opts[i].name : "";
        if (!strcmp(name, "dtype")) {
            inst->quant_type = (opts[i].s && !strcmp(opts[i].s, "fp4")) || opts[i].i == 1 ? NF4_TYPE_FP4 : NF4_TYPE_NF4;
        } else if (!strcmp(name, "blocksize")) {
            int64_t b = opts[i].i;
            if (b < 64 || b > 4096 || (b & (b - 1)) != 0) {
                snprintf(msg, msg_len, "nf4: blocksize must be a power of two from 64 to 4096, got %lld",
                         (long long)b);
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->blocksize = (int)b;
        } else if (!strcmp(name, "double_quant")) {
            inst->double_quant = opts[i].i != 0;
        } else if (!strcmp(name, "cuda_kernel")) {
            inst->cuda_path = (int)(opts[i].i >= 0 && opts[i].i <= 2 ? opts[i].i : 0);
        } else {
            snprintf(msg, msg_len, "nf4: unknown option '%s'", name);
            free(inst);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    }
    pthread_mutex_init(&inst->lock, NULL);
    *out = (qtool_instance *)inst;
    return QTOOL_OK;
}

static void nf4_destroy(qtool_instance *qi)
{
    nf4_instance *inst = (nf4_instance *)qi;
    if (!inst) return;
    if (inst->ws) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->ws);
    if (inst->lt_ws) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->lt_ws);
#ifdef QTOOL_HAVE_CUDA
    if (inst->lt_handle) nf4cu_lt_destroy(inst->lt_handle);
#endif
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

static int nf4_pack(qtool_instance *qi, const qtool_pack_args *args, qtool_packed **out)
{
    nf4_instance *inst = (nf4_instance *)qi;
    if (!inst || !args || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const qtool_tensor *w = args->weight;
    int rc = check_tensor(h, w, "nf4 pack: weight");
    if (rc) return rc;
    if (w->ndim != 2)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: weight must be 2-D [N, K], got rank %d", w->ndim);
    if (!is_float_dtype(w->dtype) || w->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: weight must be F32/F16/BF16 on the CPU");
    int64_t N = w->shape[0], K = w->shape[1];
    if (args->layer && args->layer->in_features > 0 &&
        (args->layer->in_features != K || args->layer->out_features != N))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: weight [%lld, %lld] does not match layer %lldx%lld",
                    (long long)N, (long long)K, (long long)args->layer->out_features,
                    (long long)args->layer->in_features);
    if (args->bias) {
        rc = check_tensor(h, args->bias, "nf4 pack: bias");
        if (rc) return rc;
        if (qtool_tensor_numel(args->bias) != N || !is_float_dtype(args->bias->dtype) ||
            args->bias->device != QTOOL_DEVICE_CPU)
            return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: bias must be [%lld] F32/F16/BF16 on the CPU",
                        (long long)N);
    }
    if (args->device != QTOOL_DEVICE_CPU && args->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: unknown device %d", args->device);
#ifndef QTOOL_HAVE_CUDA
    if (args->device == QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_UNSUPPORTED, "nf4 pack: built without CUDA support");
#endif
    if (N > INT64_MAX / K || N * K > ((int64_t)1 << 40))
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 pack: weight too large");

    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, N, K, inst->quant_type, inst->blocksize, inst->double_quant);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->orig_dtype = w->dtype;
    rc = alloc_layer(p, args->bias != NULL);
    float *absmax = NULL;
    if (!rc && p->nested) {
        absmax = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->nblocks * 4, QTOOL_MEM_OTHER);
        if (!absmax) rc = QTOOL_ERR_OUT_OF_MEMORY;
    }
    if (rc) {
        if (absmax) h->free(h->ctx, QTOOL_DEVICE_CPU, absmax);
        free_packed(p);
        return fail(h, rc, "nf4 pack: out of memory");
    }
    quant_job job = {w->data, w->dtype, p->n, p->blocksize, p->quant_type, p->codes, p->nested ? absmax : p->absmax};
    int64_t grain = 4096 / p->blocksize > 0 ? 4096 / p->blocksize : 1;
    if (h->parallel_for)
        h->parallel_for(h->ctx, p->nblocks, grain, quant_blocks, &job);
    else
        quant_blocks(&job, 0, p->nblocks);
    if (p->nested) {
        double_quantize(absmax, p->nblocks, p->qabsmax, p->nested_absmax, &p->offset, p->nested_map);
        h->free(h->ctx, QTOOL_DEVICE_CPU, absmax);
    }
    memcpy(p->quant_map, code_table(p->quant_type), 64);
    if (p->bias)
        for (int64_t i = 0; i < N; i++) p->bias[i] = load_elem(args->bias->data, args->bias->dtype, i);
    return finish_on_device(p, args->device, out);
}

static void nf4_free_packed(qtool_packed *p) { free_packed(p); }

/* ------------------------------------------------------------ CPU matmul */

#define NF4_TILE_N 16
#define NF4_TILE_M 32

static void dequant_row(const qtool_packed *p, int64_t row, float *out)
{
    const float *lut = p->quant_map;
    int64_t base = row * p->K;
    int64_t k = 0;
    while (k < p->K) {
        int64_t i = base + k;
        int64_t b = i / p->blocksize;
        int64_t bend = (b + 1) * p->blocksize - base; /* block end, in this row's k */
        if (bend > p->K) bend = p->K;
        float a = block_absmax(p, b);
        for (; k < bend; k++) {
            int64_t e = base + k;
            unsigned c = (p->codes[e >> 1] >> ((e & 1) ? 0 : 4)) & 15u;
            out[k] = lut[c] * a;
        }
    }
}

static float dot_f32_generic(const float *a, const float *b, int64_t n)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += a[i + j] * b[i + j];
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2,fma"))) static float dot_f32_avx2(const float *a, const float *b, int64_t n)
{
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
        s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), s2);
        s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), s3);
    }
    for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    __m256 s = _mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    float t = _mm_cvtss_f32(q);
    for (; i < n; i++) t += a[i] * b[i];
    return t;
}
static int have_avx2(void)
{
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return cached;
}
#endif

typedef float (*dot_fn)(const float *, const float *, int64_t);

static dot_fn pick_dot(void)
{
#if defined(__x86_64__) && defined(__GNUC__)
    if (have_avx2()) return dot_f32_avx2;
#endif
    return dot_f32_generic;
}

typedef struct mm_job {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t M, tiles_m;
    dot_fn dot;
    int failed;
} mm_job;

static void mm_tiles(void *arg, int64_t t0, int64_t t1)
{
    mm_job *j = arg;
    const qtool_packed *p = j->p;
    const qtool_host_services *h = p->inst->host;
    float *w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)NF4_TILE_N * (size_t)p->K * 4, QTOOL_MEM_WORKSPACE);
    if (!w) {
        j->failed = 1;
        return;
    }
    int64_t have_nt = -1;
    for (int64_t t = t0; t < t1; t++) {
        int64_t nt = t / j->tiles_m, mt = t % j->tiles_m;
        int64_t n0 = nt * NF4_TILE_N, n1 = n0 + NF4_TILE_N < p->N ? n0 + NF4_TILE_N : p->N;
        int64_t m0 = mt * NF4_TILE_M, m1 = m0 + NF4_TILE_M < j->M ? m0 + NF4_TILE_M : j->M;
        if (nt != have_nt) {
            for (int64_t n = n0; n < n1; n++) dequant_row(p, n, w + (n - n0) * p->K);
            have_nt = nt;
        }
        for (int64_t m = m0; m < m1; m++) {
            const float *xr = j->x + m * p->K;
            float *yr = j->y + m * p->N;
            for (int64_t n = n0; n < n1; n++)
                yr[n] = j->dot(xr, w + (n - n0) * p->K, p->K) + (p->bias ? p->bias[n] : 0.0f);
        }
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, w);
}

/* Validates x/y against the layer; returns M through *M. */
static int check_io(const qtool_packed *p, const qtool_matmul_args *a, int device, int64_t *M)
{
    char msg[256];
    int rc = qtool_check_matmul_args("nf4", a, device, p->K, p->N, M, msg, sizeof msg);
    return rc ? fail(p->inst->host, rc, "%s", msg) : QTOOL_OK;
}

static int nf4_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CPU)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 matmul_cpu: layer was packed for CUDA");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CPU, &M);
    if (rc) return rc;
    if (a->x->dtype != QTOOL_DTYPE_F32 || a->y->dtype != QTOOL_DTYPE_F32)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 matmul_cpu: x and y must be F32");
    mm_job job = {p, a->x->data, a->y->data, M, (M + NF4_TILE_M - 1) / NF4_TILE_M, pick_dot(), 0};
    int64_t tiles = ((p->N + NF4_TILE_N - 1) / NF4_TILE_N) * job.tiles_m;
    if (h->parallel_for)
        h->parallel_for(h->ctx, tiles, 1, mm_tiles, &job);
    else
        mm_tiles(&job, 0, tiles);
    if (job.failed) return fail(h, QTOOL_ERR_OUT_OF_MEMORY, "nf4 matmul_cpu: out of memory for a dequantized tile");
    return QTOOL_OK;
}

/* ------------------------------------------------------------ CUDA matmul */

#ifdef QTOOL_HAVE_CUDA
static nf4cu_layer cuda_view(const qtool_packed *p)
{
    nf4cu_layer L;
    memset(&L, 0, sizeof L);
    L.codes = p->codes;
    L.absmax = p->absmax;
    L.qabsmax = p->qabsmax;
    L.nested_absmax = p->nested_absmax;
    L.nested_map = p->nested_map;
    L.bias = p->bias;
    L.offset = p->offset;
    L.quant_type = p->quant_type;
    L.blocksize = p->blocksize;
    L.nested = p->nested;
    L.N = p->N;
    L.K = p->K;
    return L;
}

/* Grows the instance scratch to `need` bytes (called with the lock held). */
static int ensure_ws(nf4_instance *inst, void **buf, size_t *have, size_t need)
{
    if (*have >= need) return QTOOL_OK;
    const qtool_host_services *h = inst->host;
    if (*buf) h->free(h->ctx, QTOOL_DEVICE_CUDA, *buf);
    *have = 0;
    *buf = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, need, QTOOL_MEM_WORKSPACE);
    if (!*buf) return QTOOL_ERR_OUT_OF_MEMORY;
    *have = need;
    return QTOOL_OK;
}
#endif

#ifdef QTOOL_HAVE_CUDA
static int nf4_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!p) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    if (p->device != QTOOL_DEVICE_CUDA)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 matmul_cuda: layer was packed for the CPU");
    int64_t M = 0;
    int rc = check_io(p, a, QTOOL_DEVICE_CUDA, &M);
    if (rc) return rc;
    int dt = a->x->dtype;
    if ((dt != QTOOL_DTYPE_F16 && dt != QTOOL_DTYPE_BF16) || a->y->dtype != dt)
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 matmul_cuda: x and y must both be F16 or both BF16");
    nf4_instance *inst = p->inst;
    char msg[256];
    void *stream = a->stream ? a->stream : h->cuda_stream;
    nf4cu_layer L = cuda_view(p);
    int path = inst->cuda_path;
    if (path == NF4CU_PATH_AUTO) path = M <= NF4_GEMV_MAX_M ? NF4CU_PATH_GEMV : NF4CU_PATH_DEQUANT_GEMM;
    pthread_mutex_lock(&inst->lock);
    rc = nf4cu_set_device(h->cuda_device < 0 ? 0 : h->cuda_device, msg, sizeof msg);
    if (!rc && path == NF4CU_PATH_DEQUANT_GEMM && !inst->lt_handle) rc = nf4cu_lt_create(&inst->lt_handle, msg, sizeof msg);
    if (rc) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, rc, "nf4 matmul_cuda: %s", msg);
    }
    size_t need = nf4cu_workspace_bytes(&L, M, path);
    rc = ensure_ws(inst, &inst->ws, &inst->ws_bytes, need);
    if (!rc && path == NF4CU_PATH_DEQUANT_GEMM)
        rc = ensure_ws(inst, &inst->lt_ws, &inst->lt_ws_bytes, nf4cu_lt_workspace_bytes());
    if (rc) {
        pthread_mutex_unlock(&inst->lock);
        return fail(h, rc, "nf4 matmul_cuda: out of CUDA memory for %zu bytes of workspace", need);
    }
    if (inst->ws || inst->lt_ws) inst->ws_owner = p;
    rc = nf4cu_matmul(&L, a->x->data, a->y->data, M, dt == QTOOL_DTYPE_BF16, path, inst->ws, inst->ws_bytes,
                      inst->lt_handle, inst->lt_ws, inst->lt_ws_bytes, stream, msg, sizeof msg);
    pthread_mutex_unlock(&inst->lock);
    if (rc) return fail(h, rc, "nf4 matmul_cuda: %s", msg);
    return QTOOL_OK;
}
#endif

static int nf4_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < QTOOL_MEM_COUNT; i++) bytes[i] = p->mem[i];
    nf4_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    if (inst->ws_owner == p) bytes[QTOOL_MEM_WORKSPACE] += inst->ws_bytes + inst->lt_ws_bytes;
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ save/load */

static qtool_tensor view1(void *data, int dtype, int device, int64_t n)
{
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = 1;
    t.shape[0] = n;
    return t;
}

static const char *qs_suffix(int quant_type)
{
    return quant_type == NF4_TYPE_FP4 ? "weight.quant_state.bitsandbytes__fp4" : "weight.quant_state.bitsandbytes__nf4";
}

/* The JSON dict bitsandbytes packs into quant_state (json.dumps order). */
static int quant_state_json(const qtool_packed *p, char *buf, size_t len)
{
    int n = snprintf(buf, len, "{\"quant_type\": \"%s\", \"blocksize\": %d, \"dtype\": \"%s\", \"shape\": [%lld, %lld]",
                     p->quant_type == NF4_TYPE_FP4 ? "fp4" : "nf4", p->blocksize, torch_dtype_name(p->orig_dtype),
                     (long long)p->N, (long long)p->K);
    if (n < 0 || (size_t)n >= len) return -1;
    if (p->nested) {
        char off[64];
        nf4j_py_repr((double)p->offset, off, sizeof off);
        int m = snprintf(buf + n, len - (size_t)n,
                         ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", \"nested_offset\": %s",
                         NF4_NESTED_BLOCK, off);
        if (m < 0 || (size_t)(n + m) >= len) return -1;
        n += m;
    }
    if ((size_t)n + 2 > len) return -1;
    buf[n++] = '}';
    buf[n] = '\0';
    return n;
}

static int nf4_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (!p || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    int dev = p->device;
    qtool_tensor t = view1(p->codes, QTOOL_DTYPE_U8, dev, (int64_t)codes_bytes(p));
    t.ndim = 2;
    t.shape[1] = 1; /* transformers stores the packed codes as [n/2, 1] */
    int rc = sink->put(sink->ctx, "weight", &t);
    if (!rc && p->bias) {
        t = view1(p->bias, QTOOL_DTYPE_F32, dev, p->N);
        rc = sink->put(sink->ctx, "bias", &t);
    }
    if (!rc) {
        t = p->nested ? view1(p->qabsmax, QTOOL_DTYPE_U8, dev, p->nblocks)
                      : view1(p->absmax, QTOOL_DTYPE_F32, dev, p->nblocks);
        rc = sink->put(sink->ctx, "weight.absmax", &t);
    }
    if (!rc) {
        t = view1(p->quant_map, QTOOL_DTYPE_F32, dev, 16);
        rc = sink->put(sink->ctx, "weight.quant_map", &t);
    }
    if (!rc && p->nested) {
        t = view1(p->nested_absmax, QTOOL_DTYPE_F32, dev, p->nblocks2);
        rc = sink->put(sink->ctx, "weight.nested_absmax", &t);
        if (!rc) {
            t = view1(p->nested_map, QTOOL_DTYPE_F32, dev, 256);
            rc = sink->put(sink->ctx, "weight.nested_quant_map", &t);
        }
    }
    if (!rc) {
        char js[512];
        int n = quant_state_json(p, js, sizeof js);
        if (n < 0) return fail(p->inst->host, QTOOL_ERR_INTERNAL, "nf4 save: quant_state too long");
        t = view1(js, QTOOL_DTYPE_U8, QTOOL_DEVICE_CPU, n);
        rc = sink->put(sink->ctx, qs_suffix(p->quant_type), &t);
    }
    if (rc) return fail(p->inst->host, rc, "nf4 save: the host refused a tensor");
    return QTOOL_OK;
}

static int get_exact(const qtool_host_services *h, const qtool_load_source *src, const char *suffix, int dtype,
                     int64_t numel, qtool_tensor *t)
{
    int rc = src->get(src->ctx, suffix, t);
    if (rc) return fail(h, QTOOL_ERR_FORMAT, "nf4 load: missing tensor '%s'", suffix);
    if (!t->data || t->dtype != dtype || t->ndim < 0 || t->ndim > QTOOL_MAX_DIMS || qtool_tensor_numel(t) != numel)
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: tensor '%s' has the wrong dtype or size (want %lld elements)",
                    suffix, (long long)numel);
    return QTOOL_OK;
}

static int nf4_load(qtool_instance *qi, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                    qtool_packed **out)
{
    nf4_instance *inst = (nf4_instance *)qi;
    if (!inst || !layer || !src || !src->get || !src->has || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = inst->host;
    const char *name = layer->name ? layer->name : "layer";
    int quant_type;
    if (src->has(src->ctx, qs_suffix(NF4_TYPE_NF4)))
        quant_type = NF4_TYPE_NF4;
    else if (src->has(src->ctx, qs_suffix(NF4_TYPE_FP4)))
        quant_type = NF4_TYPE_FP4;
    else
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s has no weight.quant_state.bitsandbytes__nf4/fp4", name);
    qtool_tensor qs;
    if (src->get(src->ctx, qs_suffix(quant_type), &qs) || !qs.data || qs.dtype != QTOOL_DTYPE_U8 ||
        qtool_tensor_numel(&qs) <= 0 || qtool_tensor_numel(&qs) > 4096)
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: unreadable quant_state", name);
    const char *js = qs.data;
    size_t jn = (size_t)qtool_tensor_numel(&qs);
    char qt[16], dts[16];
    double bs_d, off_d = 0;
    long long shape[4];
    if (!nf4j_get_string(js, jn, "quant_type", qt, sizeof qt) || strcmp(qt, quant_type ? "fp4" : "nf4") ||
        !nf4j_get_number(js, jn, "blocksize", &bs_d) || !nf4j_get_string(js, jn, "dtype", dts, sizeof dts) ||
        nf4j_get_int_array(js, jn, "shape", shape, 4) != 2)
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: quant_state lacks quant_type/blocksize/dtype/shape", name);
    int64_t bs = (int64_t)bs_d;
    if ((double)bs != bs_d || bs < 16 || bs > 4096 || (bs & (bs - 1)))
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: bad blocksize %g", name, bs_d);
    if (shape[0] <= 0 || shape[1] <= 0 || shape[0] > ((int64_t)1 << 31) || shape[1] > ((int64_t)1 << 31))
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: bad shape", name);
    if (layer->in_features > 0 && (shape[0] != layer->out_features || shape[1] != layer->in_features))
        return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: quant_state shape [%lld, %lld] does not match the layer",
                    name, shape[0], shape[1]);
    size_t v, ve;
    int nested = nf4j_find(js, jn, "nested_offset", &v, &ve) == 1;
    if (nested) {
        double nbs;
        if (!nf4j_get_number(js, jn, "nested_offset", &off_d) || !nf4j_get_number(js, jn, "nested_blocksize", &nbs) ||
            nbs != NF4_NESTED_BLOCK)
            return fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: nested blocksize must be %d", name, NF4_NESTED_BLOCK);
    }
    if (device == QTOOL_DEVICE_CUDA) {
#ifndef QTOOL_HAVE_CUDA
        return fail(h, QTOOL_ERR_UNSUPPORTED, "nf4 load: built without CUDA support");
#endif
    } else if (device != QTOOL_DEVICE_CPU) {
        return fail(h, QTOOL_ERR_INVALID_ARGUMENT, "nf4 load: unknown device %d", device);
    }
    qtool_packed *p = new_packed(inst, QTOOL_DEVICE_CPU, shape[0], shape[1], quant_type, (int)bs, nested);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    int dtv = dtype_from_torch_name(dts);
    p->orig_dtype = dtv < 0 ? QTOOL_DTYPE_F16 : dtv;
    p->offset = (float)off_d;
    int has_bias = src->has(src->ctx, "bias");
    int rc = alloc_layer(p, has_bias);
    if (rc) {
        free_packed(p);
        return fail(h, rc, "nf4 load: out of memory");
    }
    qtool_tensor t;
    rc = get_exact(h, src, "weight", QTOOL_DTYPE_U8, (int64_t)codes_bytes(p), &t);
    if (!rc) memcpy(p->codes, t.data, codes_bytes(p));
    if (!rc) rc = get_exact(h, src, "weight.quant_map", QTOOL_DTYPE_F32, 16, &t);
    if (!rc) memcpy(p->quant_map, t.data, 64);
    if (!rc && nested) {
        rc = get_exact(h, src, "weight.absmax", QTOOL_DTYPE_U8, p->nblocks, &t);
        if (!rc) memcpy(p->qabsmax, t.data, (size_t)p->nblocks);
        if (!rc) rc = get_exact(h, src, "weight.nested_absmax", QTOOL_DTYPE_F32, p->nblocks2, &t);
        if (!rc) memcpy(p->nested_absmax, t.data, (size_t)p->nblocks2 * 4);
        if (!rc) rc = get_exact(h, src, "weight.nested_quant_map", QTOOL_DTYPE_F32, 256, &t);
        if (!rc) memcpy(p->nested_map, t.data, 1024);
    } else if (!rc) {
        rc = get_exact(h, src, "weight.absmax", QTOOL_DTYPE_F32, p->nblocks, &t);
        if (!rc) memcpy(p->absmax, t.data, (size_t)p->nblocks * 4);
    }
    if (!rc && has_bias) {
        rc = src->get(src->ctx, "bias", &t);
        if (rc || !t.data || !is_float_dtype(t.dtype) || qtool_tensor_numel(&t) != p->N)
            rc = fail(h, QTOOL_ERR_FORMAT, "nf4 load: %s: bias must have %lld float elements", name, (long long)p->N);
        else
            for (int64_t i = 0; i < p->N; i++) p->bias[i] = load_elem(t.data, t.dtype, i);
    }
    if (rc) {
        free_packed(p);
        return rc;
    }
    return finish_on_device(p, device, out);
}

static int nf4_quant_config_json(const qtool_instance *qi, char *buf, size_t buf_len)
{
    const nf4_instance *inst = (const nf4_instance *)qi;
    if (!inst || !buf) return QTOOL_ERR_INVALID_ARGUMENT;
    int n = snprintf(buf, buf_len,
                     "{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true, \"load_in_8bit\": false, "
                     "\"bnb_4bit_quant_type\": \"%s\", \"bnb_4bit_use_double_quant\": %s, "
                     "\"bnb_4bit_compute_dtype\": \"float16\", \"bnb_4bit_quant_storage\": \"uint8\", "
                     "\"llm_int8_threshold\": 6.0, \"llm_int8_skip_modules\": null, "
                     "\"llm_int8_enable_fp32_cpu_offload\": false, \"llm_int8_has_fp16_weight\": false, "
                     "\"_load_in_4bit\": true, \"_load_in_8bit\": false}",
                     inst->quant_type == NF4_TYPE_FP4 ? "fp4" : "nf4", inst->double_quant ? "true" : "false");
    if (n < 0 || (size_t)n >= buf_len) return QTOOL_ERR_INVALID_ARGUMENT;
    return QTOOL_OK;
}

static int nf4_accepts_config(const char *json)
{
    if (!json) return 0;
    size_t n = strnlen(json, 1 << 20);
    char method[32];
    if (!nf4j_get_string(json, n, "quant_method", method, sizeof method) || strcmp(method, "bitsandbytes")) return 0;
    return nf4j_get_bool(json, n, "load_in_4bit") == 1;
}

static const qtool_plugin_desc nf4_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "nf4",
    .version = "1.0.0",
    .summary = "4-bit NormalFloat/FP4 weights, blockwise absmax with double quantization (bitsandbytes format)",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = 0,
    .weight_bits = 4,
    .activation_bits = 16,
    .options = nf4_options,
    .n_options = sizeof nf4_options / sizeof nf4_options[0],
    .init = nf4_init,
    .shutdown = nf4_shutdown,
    .probe = nf4_probe,
    .create = nf4_create,
    .destroy = nf4_destroy,
    .calibrate = NULL,
    .pack = nf4_pack,
    .free_packed = nf4_free_packed,
    .matmul_cpu = nf4_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = nf4_matmul_cuda,
#else
    .matmul_cuda = NULL,
#endif
    .memory = nf4_memory,
    .save = nf4_save,
    .load = nf4_load,
    .quant_config_json = nf4_quant_config_json,
    .accepts_config = nf4_accepts_config,
};

QTOOL_PLUGIN_ENTRY { return &nf4_desc; }
