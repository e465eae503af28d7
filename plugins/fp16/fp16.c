/*
 * fp16: the unquantized baseline every other plugin is measured against.
 *
 * CPU: the weight is kept as float32 with exactly the checkpoint's values
 * (F16/BF16 widen losslessly), so CPU evaluation with this plugin is the
 * float32 reference. CUDA: the weight is stored as fp16 (or bf16) and the
 * product runs through cuBLASLt with float32 accumulation.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp16_internal.h"

#ifdef QTOOL_HAVE_CUDA
#include <cuda_runtime_api.h>
/* fp16 tensor cores and cuBLASLt's fp16/bf16 GEMMs need Volta (7.0) or
 * later; CUDA 13 dropped Volta from its toolkit and libraries. */
#if CUDART_VERSION >= 13000
#define FP16_MIN_CC_MAJOR 7
#define FP16_MIN_CC_MINOR 5
#else
#define FP16_MIN_CC_MAJOR 7
#define FP16_MIN_CC_MINOR 0
#endif
#endif

static const qtool_option_desc fp16_options[] = {
    {"dtype", QTOOL_OPT_ENUM, "fp16", "storage type of the weights on CUDA", "fp16|bf16", 0, -1},
    {"workspace_mib", QTOOL_OPT_INT, "-1",
     "cuBLASLt workspace per instance in MiB (-1: 32 on compute capability >= 9.0, else 4)", NULL,
     -1, 1024},
};
#define N_OPTIONS (sizeof fp16_options / sizeof fp16_options[0])

/* ------------------------------------------------------------- helpers */

void *fp16_alloc(qtool_packed *p, int device, size_t bytes, int category)
{
    const qtool_host_services *h = p->inst->host;
    void *ptr = h->alloc(h->ctx, device, bytes, category);
    if (ptr) p->mem[category] += bytes;
    return ptr;
}

void fp16_free(qtool_packed *p, int device, void *ptr, size_t bytes, int category)
{
    if (!ptr) return;
    const qtool_host_services *h = p->inst->host;
    h->free(h->ctx, device, ptr);
    p->mem[category] -= bytes;
}

float fp16_load_elem(const void *src, int dtype, int64_t i)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)src)[i]);
    case QTOOL_DTYPE_BF16: return qtool_bf16_to_f32(((const uint16_t *)src)[i]);
    default: return ((const float *)src)[i];
    }
}

static void say(char *msg, size_t len, const char *fmt, const char *a)
{
    if (msg && len) snprintf(msg, len, fmt, a);
}

static int is_float_dtype(int d)
{
    return d == QTOOL_DTYPE_F32 || d == QTOOL_DTYPE_F16 || d == QTOOL_DTYPE_BF16;
}

/* --------------------------------------------------------------- probe */

static int fp16_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    if (!dev || dev->struct_size < offsetof(qtool_device_info, name) + sizeof dev->name) {
        say(reason, reason_len, "%s", "device description too short");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (dev->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    if (dev->kind != QTOOL_DEVICE_CUDA) {
        say(reason, reason_len, "%s", "unknown device kind");
        return QTOOL_ERR_UNSUPPORTED;
    }
#ifndef QTOOL_HAVE_CUDA
    say(reason, reason_len, "%s", "plugin built without CUDA support");
    return QTOOL_ERR_UNSUPPORTED;
#else
    if (dev->cc_major * 10 + dev->cc_minor < FP16_MIN_CC_MAJOR * 10 + FP16_MIN_CC_MINOR) {
        if (reason && reason_len)
            snprintf(reason, reason_len, "needs compute capability >= %d.%d; found %d.%d (%s)", FP16_MIN_CC_MAJOR,
                     FP16_MIN_CC_MINOR, dev->cc_major, dev->cc_minor, dev->name);
        return QTOOL_ERR_UNSUPPORTED;
    }
    return QTOOL_OK;
#endif
}

/* ------------------------------------------------------ create/destroy */

static int fp16_create(const qtool_host_services *host, const qtool_option_value *opts,
                       uint32_t n_opts, qtool_instance **out, char *msg, size_t msg_len)
{
    if (!host || !out) {
        say(msg, msg_len, "%s", "create: NULL host or output");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    *out = NULL;
    if (host->struct_size < offsetof(qtool_host_services, cuda_stream) + sizeof host->cuda_stream ||
        !host->alloc || !host->free || !host->parallel_for) {
        say(msg, msg_len, "%s", "create: host services table too old or incomplete");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    qtool_instance *inst = calloc(1, sizeof *inst);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->host = host;
    inst->cuda_dtype = QTOOL_DTYPE_F16;
    inst->workspace_opt = -1;
    for (uint32_t i = 0; opts && i < n_opts; i++) {
        if (!opts[i].name) continue;
        if (strcmp(opts[i].name, "dtype") == 0) {
            inst->cuda_dtype = opts[i].i == 1 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
        } else if (strcmp(opts[i].name, "workspace_mib") == 0) {
            if (opts[i].i < -1 || opts[i].i > 1024) {
                say(msg, msg_len, "%s", "workspace_mib must be in -1..1024");
                free(inst);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
            inst->workspace_opt = opts[i].i < 0 ? -1 : opts[i].i << 20;
        }
    }
    if (pthread_mutex_init(&inst->lock, NULL) != 0) {
        free(inst);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    int rc = fp16_cuda_instance_init(inst, msg, msg_len);
    if (rc != QTOOL_OK) {
        pthread_mutex_destroy(&inst->lock);
        free(inst);
        return rc;
    }
    *out = inst;
    return QTOOL_OK;
}

static void fp16_destroy(qtool_instance *inst)
{
    if (!inst) return;
    fp16_cuda_instance_fini(inst);
    pthread_mutex_destroy(&inst->lock);
    free(inst);
}

/* ---------------------------------------------------------------- pack */

static int pack_common(qtool_instance *inst, int device, const qtool_layer_info *layer,
                       const qtool_tensor *w, const qtool_tensor *b, qtool_packed **out)
{
    const qtool_host_services *h = inst->host;
    if (!w || !w->data || w->ndim != 2 || !is_float_dtype(w->dtype) ||
        w->device != QTOOL_DEVICE_CPU || w->shape[0] <= 0 || w->shape[1] <= 0) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: weight must be a non-empty [N, K] F32/F16/BF16 CPU tensor");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t n = w->shape[0], k = w->shape[1];
    if (layer && ((layer->in_features && layer->in_features != k) ||
                  (layer->out_features && layer->out_features != n))) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: weight [%lld, %lld] does not match layer %s (%lld -> %lld)",
               (long long)n, (long long)k, layer->name ? layer->name : "?",
               (long long)layer->in_features, (long long)layer->out_features);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (b && (!b->data || b->ndim != 1 || b->shape[0] != n || !is_float_dtype(b->dtype) ||
              b->device != QTOOL_DEVICE_CPU)) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: bias must be a [%lld] F32/F16/BF16 CPU tensor",
               (long long)n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA) return QTOOL_ERR_INVALID_ARGUMENT;
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->inst = inst;
    p->device = device;
    p->n = n;
    p->k = k;
    p->weight_dtype = w->dtype;
    p->bias_dtype = b ? b->dtype : -1;
    int rc = device == QTOOL_DEVICE_CPU ? fp16_cpu_pack(p, w, b) : fp16_cuda_pack(p, w, b);
    if (rc != QTOOL_OK) {
        if (device == QTOOL_DEVICE_CPU) fp16_cpu_free(p);
        else fp16_cuda_free(p);
        free(p);
        return rc;
    }
    *out = p;
    return QTOOL_OK;
}

static int fp16_pack(qtool_instance *inst, const qtool_pack_args *args, qtool_packed **out)
{
    if (!inst || !args || !out ||
        args->struct_size < offsetof(qtool_pack_args, bias) + sizeof args->bias)
        return QTOOL_ERR_INVALID_ARGUMENT;
    *out = NULL;
    if (args->struct_size >= offsetof(qtool_pack_args, has_input_scale) + sizeof args->has_input_scale &&
        args->has_input_scale)
        *args->has_input_scale = 0;
    return pack_common(inst, args->device, args->layer, args->weight, args->bias, out);
}

static void fp16_free_packed(qtool_packed *p)
{
    if (!p) return;
    if (p->device == QTOOL_DEVICE_CPU) fp16_cpu_free(p);
    else fp16_cuda_free(p);
    free(p);
}

static int fp16_matmul_cpu(qtool_packed *p, const qtool_matmul_args *args)
{
    if (!p || p->device != QTOOL_DEVICE_CPU) return QTOOL_ERR_INVALID_ARGUMENT;
    if (args && args->epilogue != QTOOL_EPILOGUE_NONE) { /* the SDK: epilogues are CUDA-only */
        qtool_logf(p->inst->host, "fp16", QTOOL_LOG_ERROR, "matmul_cpu: epilogue %d is not offered on the CPU",
                   (int)args->epilogue);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    return fp16_cpu_matmul(p, args);
}

#ifdef QTOOL_HAVE_CUDA
static int fp16_matmul_cuda(qtool_packed *p, const qtool_matmul_args *args)
{
    if (!p || p->device != QTOOL_DEVICE_CUDA) return QTOOL_ERR_INVALID_ARGUMENT;
    return fp16_cuda_matmul(p, args);
}
#endif

static int fp16_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    if (!p || !bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    memcpy(bytes, p->mem, sizeof p->mem);
    if (p->device == QTOOL_DEVICE_CUDA) bytes[QTOOL_MEM_WORKSPACE] += fp16_cuda_workspace_held(p);
    return QTOOL_OK;
}

/* ----------------------------------------------------- float copies */

/* W [n, k] (and bias) as float, from whichever device holds them. The
 * caller frees both through the host (category OTHER). */
static int weights_as_float(const qtool_packed *p, float **w_out, float **b_out)
{
    const qtool_host_services *h = p->inst->host;
    size_t wbytes = (size_t)p->n * (size_t)p->k * sizeof(float);
    float *w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, wbytes, QTOOL_MEM_OTHER);
    float *b = p->bias_dtype >= 0 ? h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->n * sizeof(float),
                                             QTOOL_MEM_OTHER)
                                  : NULL;
    if (!w || (p->bias_dtype >= 0 && !b)) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, w);
        h->free(h->ctx, QTOOL_DEVICE_CPU, b);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    int rc = QTOOL_OK;
    if (p->device == QTOOL_DEVICE_CPU) {
        fp16_cpu_unpack(p, w);
        if (b) memcpy(b, p->bias, (size_t)p->n * sizeof(float));
    } else {
        rc = fp16_cuda_download(p, w, b);
    }
    if (rc != QTOOL_OK) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, w);
        h->free(h->ctx, QTOOL_DEVICE_CPU, b);
        return rc;
    }
    *w_out = w;
    *b_out = b;
    return QTOOL_OK;
}

static int fp16_dequantize(const qtool_packed *p, float *out)
{
    if (!p || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    if (p->device == QTOOL_DEVICE_CPU) {
        fp16_cpu_unpack(p, out);
        return QTOOL_OK;
    }
    return fp16_cuda_download(p, out, NULL);
}

/* ----------------------------------------------------------- save/load */

/* Puts `n` floats as a tensor of `dtype` (F32 values of F16/BF16 origin
 * convert back exactly). */
static int put_as(const qtool_packed *p, const qtool_save_sink *sink, const char *suffix,
                  const float *src, int dtype, int ndim, int64_t d0, int64_t d1)
{
    const qtool_host_services *h = p->inst->host;
    int64_t n = ndim == 2 ? d0 * d1 : d0;
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.dtype = dtype;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = ndim;
    t.shape[0] = d0;
    t.shape[1] = ndim == 2 ? d1 : 0;
    void *buf = NULL;
    if (dtype == QTOOL_DTYPE_F32) {
        t.data = (void *)src;
    } else {
        buf = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)n * 2, QTOOL_MEM_OTHER);
        if (!buf) return QTOOL_ERR_OUT_OF_MEMORY;
        uint16_t *d = buf;
        for (int64_t i = 0; i < n; i++)
            d[i] = dtype == QTOOL_DTYPE_F16 ? qtool_f32_to_f16(src[i]) : qtool_f32_to_bf16(src[i]);
        t.data = buf;
    }
    int rc = sink->put(sink->ctx, suffix, &t);
    h->free(h->ctx, QTOOL_DEVICE_CPU, buf);
    return rc;
}

static int fp16_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (!p || !sink || !sink->put) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_host_services *h = p->inst->host;
    float *w = NULL, *b = NULL;
    int rc = weights_as_float(p, &w, &b);
    if (rc != QTOOL_OK) return rc;
    /* A CUDA layer packed from F32 holds fp16-rounded values; F32 keeps
     * them exactly, and a reload rounds to the same fp16 again. */
    rc = put_as(p, sink, "weight", w, p->weight_dtype, 2, p->n, p->k);
    if (rc == QTOOL_OK && b) rc = put_as(p, sink, "bias", b, p->bias_dtype, 1, p->n, 0);
    h->free(h->ctx, QTOOL_DEVICE_CPU, w);
    h->free(h->ctx, QTOOL_DEVICE_CPU, b);
    return rc;
}

static int fp16_load(qtool_instance *inst, const qtool_layer_info *layer, int device,
                     const qtool_load_source *src, qtool_packed **out)
{
    if (!inst || !src || !src->get || !out) return QTOOL_ERR_INVALID_ARGUMENT;
    *out = NULL;
    const qtool_host_services *h = inst->host;
    qtool_tensor w, b;
    memset(&w, 0, sizeof w);
    memset(&b, 0, sizeof b);
    int rc = src->get(src->ctx, "weight", &w);
    if (rc != QTOOL_OK) return rc == QTOOL_ERR_FORMAT ? rc : QTOOL_ERR_FORMAT;
    int has_bias = src->has ? src->has(src->ctx, "bias") : 0;
    if (has_bias) {
        rc = src->get(src->ctx, "bias", &b);
        if (rc != QTOOL_OK) return QTOOL_ERR_FORMAT;
    }
    if (w.ndim != 2 || !is_float_dtype(w.dtype) || (has_bias && (b.ndim != 1 || !is_float_dtype(b.dtype)))) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "load %s: weight must be 2-D and bias 1-D, F32/F16/BF16",
               layer && layer->name ? layer->name : "layer");
        return QTOOL_ERR_FORMAT;
    }
    rc = pack_common(inst, device, layer, &w, has_bias ? &b : NULL, out);
    return rc == QTOOL_ERR_INVALID_ARGUMENT ? QTOOL_ERR_FORMAT : rc;
}

/* ---------------------------------------------------------- descriptor */

static const qtool_plugin_desc fp16_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "fp16",
    .version = "1.0.0",
    .summary = "unquantized baseline: float32 on the CPU, fp16/bf16 cuBLASLt on CUDA",
#ifdef QTOOL_HAVE_CUDA
    .devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA,
#else
    .devices = QTOOL_DEVMASK_CPU,
#endif
    .flags = QTOOL_PLUGIN_BASELINE | QTOOL_PLUGIN_ROW_INDEPENDENT | QTOOL_PLUGIN_GLU_EPILOGUE |
             QTOOL_PLUGIN_RESIDUAL_EPILOGUE,
    .weight_bits = 16,
    .activation_bits = 16,
    .options = fp16_options,
    .n_options = N_OPTIONS,
    .probe = fp16_probe,
    .create = fp16_create,
    .destroy = fp16_destroy,
    .pack = fp16_pack,
    .free_packed = fp16_free_packed,
    .matmul_cpu = fp16_matmul_cpu,
#ifdef QTOOL_HAVE_CUDA
    .matmul_cuda = fp16_matmul_cuda,
#endif
    .memory = fp16_memory,
    .save = fp16_save,
    .load = fp16_load,
    .dequantize = fp16_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &fp16_desc; }

/* ------------------------------------------- builds without CUDA */
#ifndef QTOOL_HAVE_CUDA
int fp16_cuda_instance_init(qtool_instance *inst, char *msg, size_t msg_len)
{
    (void)inst; (void)msg; (void)msg_len;
    return QTOOL_OK;
}
void fp16_cuda_instance_fini(qtool_instance *inst) { (void)inst; }
int fp16_cuda_pack(qtool_packed *p, const qtool_tensor *w, const qtool_tensor *b)
{
    (void)w; (void)b;
    p->inst->host->log(p->inst->host->ctx, QTOOL_LOG_ERROR, "plugin built without CUDA support");
    return QTOOL_ERR_UNSUPPORTED;
}
int fp16_cuda_matmul(qtool_packed *p, const qtool_matmul_args *args) { (void)p; (void)args; return QTOOL_ERR_UNSUPPORTED; }
int fp16_cuda_download(const qtool_packed *p, float *w, float *b) { (void)p; (void)w; (void)b; return QTOOL_ERR_UNSUPPORTED; }
void fp16_cuda_free(qtool_packed *p) { (void)p; }
size_t fp16_cuda_workspace_held(const qtool_packed *p) { (void)p; return 0; }
#endif
