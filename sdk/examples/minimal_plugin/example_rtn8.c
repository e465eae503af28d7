/*
 * example_rtn8: a complete, minimal qtool plugin.
 *
 * Weights are rounded to the nearest int8 with one float scale per output
 * row (scale = clip_ratio * max|w| / 127); the CPU matmul computes
 * y = x @ (codes * scale)^T + bias. Everything the packed layer holds comes
 * from the host allocator and is reported by `memory`, so qtool's memory
 * accounting is exact.
 *
 * Build: see CMakeLists.txt (find_package) or Makefile (pkg-config) here.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <qtool/plugin.h>

/* The SDK declares these types opaque; each plugin defines them. */
struct qtool_instance {
    const qtool_host_services *host;
    float clip_ratio;
};

struct qtool_packed {
    const qtool_host_services *host;
    int64_t n, k;  /* out_features, in_features */
    int8_t *codes; /* [n, k]  QTOOL_MEM_WEIGHTS */
    float *scales; /* [n]     QTOOL_MEM_SCALES */
    float *bias;   /* [n] or NULL, QTOOL_MEM_OTHER */
};

static const qtool_option_desc rtn8_options[] = {
    {"clip_ratio", QTOOL_OPT_FLOAT, "1.0", "scale = clip_ratio * max|w| / 127; below 1 clips the largest weights",
     NULL, 0.5, 1.0},
};

/* ------------------------------------------------------------ lifecycle */

static int rtn8_init(const qtool_host_services *host, char *msg, size_t msg_len)
{
    /* A field of an appended-to struct may be read only when the writer's
     * struct_size covers it. */
    size_t need = offsetof(qtool_host_services, parallel_for) + sizeof host->parallel_for;
    if (host->struct_size < need) {
        snprintf(msg, msg_len, "host services table too old (%u bytes, need %zu)", host->struct_size, need);
        return QTOOL_ERR_UNSUPPORTED;
    }
    return QTOOL_OK;
}

static int rtn8_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    if (dev->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    snprintf(reason, reason_len, "example_rtn8 runs on the CPU only");
    return QTOOL_ERR_UNSUPPORTED;
}

static int rtn8_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                       qtool_instance **out, char *msg, size_t msg_len)
{
    /* The host passes one value per declared option, in order, already
     * parsed and range-checked. */
    if (n_opts != 1 || strcmp(opts[0].name, "clip_ratio") != 0) {
        snprintf(msg, msg_len, "expected 1 option value, got %u", n_opts);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    qtool_instance *inst = host->alloc(host->ctx, QTOOL_DEVICE_CPU, sizeof *inst, QTOOL_MEM_OTHER);
    if (!inst) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    inst->host = host;
    inst->clip_ratio = (float)opts[0].f;
    *out = inst;
    return QTOOL_OK;
}

static void rtn8_destroy(qtool_instance *inst)
{
    if (inst) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CPU, inst);
}

/* ----------------------------------------------------------------- pack */

static void packed_free(qtool_packed *p)
{
    if (!p) return;
    const qtool_host_services *h = p->host;
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->codes);
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->scales);
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->bias);
    h->free(h->ctx, QTOOL_DEVICE_CPU, p);
}

/* Allocates an empty packed layer of n x k through the host. */
static qtool_packed *packed_new(const qtool_host_services *h, int64_t n, int64_t k, int with_bias)
{
    qtool_packed *p = h->alloc(h->ctx, QTOOL_DEVICE_CPU, sizeof *p, QTOOL_MEM_OTHER);
    if (!p) return NULL;
    memset(p, 0, sizeof *p);
    p->host = h;
    p->n = n;
    p->k = k;
    p->codes = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(n * k), QTOOL_MEM_WEIGHTS);
    p->scales = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)n * sizeof(float), QTOOL_MEM_SCALES);
    if (with_bias) p->bias = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)n * sizeof(float), QTOOL_MEM_OTHER);
    if (!p->codes || !p->scales || (with_bias && !p->bias)) {
        packed_free(p);
        return NULL;
    }
    return p;
}

static float element(const qtool_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case QTOOL_DTYPE_F32: return ((const float *)t->data)[i];
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)t->data)[i]);
    default: return qtool_bf16_to_f32(((const uint16_t *)t->data)[i]);
    }
}

static int is_float_dtype(int dtype)
{
    return dtype == QTOOL_DTYPE_F32 || dtype == QTOOL_DTYPE_F16 || dtype == QTOOL_DTYPE_BF16;
}

static int rtn8_pack(qtool_instance *inst, const qtool_pack_args *args, qtool_packed **out)
{
    const qtool_host_services *h = inst->host;
    const qtool_tensor *w = args->weight, *b = args->bias;
    *out = NULL;
    if (args->device != QTOOL_DEVICE_CPU) return QTOOL_ERR_UNSUPPORTED;
    if (!w || w->ndim != 2 || w->device != QTOOL_DEVICE_CPU || !is_float_dtype(w->dtype) || w->shape[0] <= 0 ||
        w->shape[1] <= 0) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: weight must be a 2-D float CPU tensor");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t n = w->shape[0], k = w->shape[1];
    if (n > INT64_MAX / k) return QTOOL_ERR_INVALID_ARGUMENT;
    if (args->layer && (args->layer->out_features != n || args->layer->in_features != k)) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: %s: weight is [%lld, %lld], layer says [%lld, %lld]",
               args->layer->name ? args->layer->name : "?", (long long)n, (long long)k,
               (long long)args->layer->out_features, (long long)args->layer->in_features);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (b && (b->ndim != 1 || b->shape[0] != n || b->device != QTOOL_DEVICE_CPU || !is_float_dtype(b->dtype))) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "pack: bias must be a float CPU tensor of %lld elements", (long long)n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    qtool_packed *p = packed_new(h, n, k, b != NULL);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    for (int64_t r = 0; r < n; r++) {
        float absmax = 0.0f;
        for (int64_t c = 0; c < k; c++) absmax = fmaxf(absmax, fabsf(element(w, r * k + c)));
        if (!isfinite(absmax)) {
            h->log(h->ctx, QTOOL_LOG_ERROR, "pack: row %lld of the weight is not finite", (long long)r);
            packed_free(p);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
        /* An all-zero row keeps scale 1 so that dequantization stays finite. */
        float scale = absmax > 0.0f ? inst->clip_ratio * absmax / 127.0f : 1.0f;
        p->scales[r] = scale;
        for (int64_t c = 0; c < k; c++) {
            float q = roundf(element(w, r * k + c) / scale);
            p->codes[r * k + c] = (int8_t)(q > 127.0f ? 127 : q < -127.0f ? -127 : q);
        }
        if (b) p->bias[r] = element(b, r);
    }
    *out = p;
    return QTOOL_OK;
}

static void rtn8_free_packed(qtool_packed *p) { packed_free(p); }

/* --------------------------------------------------------------- matmul */

typedef struct matmul_job {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t m;
} matmul_job;

/* Output features [begin, end) for every row of x. */
static void matmul_rows(void *arg, int64_t begin, int64_t end)
{
    const matmul_job *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t r = begin; r < end; r++) {
        const int8_t *code = p->codes + r * p->k;
        for (int64_t i = 0; i < j->m; i++) {
            const float *x = j->x + i * p->k;
            float acc = 0.0f;
            for (int64_t c = 0; c < p->k; c++) acc += x[c] * (float)code[c];
            j->y[i * p->n + r] = acc * p->scales[r] + (p->bias ? p->bias[r] : 0.0f);
        }
    }
}

static int rtn8_matmul_cpu(qtool_packed *p, const qtool_matmul_args *args)
{
    if (!p || !args || !args->x || !args->y || !args->x->data || !args->y->data) return QTOOL_ERR_INVALID_ARGUMENT;
    if (args->epilogue != QTOOL_EPILOGUE_NONE) return QTOOL_ERR_INVALID_ARGUMENT; /* none offered */
    const qtool_tensor *x = args->x, *y = args->y;
    if (x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU ||
        y->device != QTOOL_DEVICE_CPU || x->ndim < 1 || y->ndim != x->ndim || x->shape[x->ndim - 1] != p->k ||
        y->shape[y->ndim - 1] != p->n) {
        p->host->log(p->host->ctx, QTOOL_LOG_ERROR, "matmul: x must be F32 [M, %lld] and y F32 [M, %lld]",
                     (long long)p->k, (long long)p->n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t m = qtool_tensor_numel(x) / p->k;
    if (qtool_tensor_numel(y) != m * p->n) return QTOOL_ERR_INVALID_ARGUMENT;
    matmul_job job = {p, x->data, y->data, m};
    /* Split over output features; aim for ~16k multiply-adds per chunk. */
    int64_t grain = 16384 / (m * p->k + 1) + 1;
    p->host->parallel_for(p->host->ctx, p->n, grain, matmul_rows, &job);
    return QTOOL_OK;
}

/* Must equal what the layer allocated through the host, by category. */
static int rtn8_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memset(bytes, 0, sizeof(uint64_t) * QTOOL_MEM_COUNT);
    bytes[QTOOL_MEM_WEIGHTS] = (uint64_t)(p->n * p->k);
    bytes[QTOOL_MEM_SCALES] = (uint64_t)p->n * sizeof(float);
    bytes[QTOOL_MEM_OTHER] = sizeof *p + (p->bias ? (uint64_t)p->n * sizeof(float) : 0);
    return QTOOL_OK;
}

/* ------------------------------------------------------------ save/load */

static int rtn8_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    qtool_tensor codes = {p->codes, QTOOL_DTYPE_I8, QTOOL_DEVICE_CPU, 2, 0, {p->n, p->k}};
    qtool_tensor scales = {p->scales, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {p->n}};
    int rc = sink->put(sink->ctx, "weight", &codes);
    if (rc == QTOOL_OK) rc = sink->put(sink->ctx, "weight_scale", &scales);
    if (rc == QTOOL_OK && p->bias) {
        qtool_tensor bias = {p->bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {p->n}};
        rc = sink->put(sink->ctx, "bias", &bias);
    }
    return rc;
}

static int rtn8_load(qtool_instance *inst, const qtool_layer_info *layer, int device, const qtool_load_source *src,
                     qtool_packed **out)
{
    const qtool_host_services *h = inst->host;
    *out = NULL;
    if (device != QTOOL_DEVICE_CPU) return QTOOL_ERR_UNSUPPORTED;
    int64_t n = layer->out_features, k = layer->in_features;
    if (n <= 0 || k <= 0 || n > INT64_MAX / k) return QTOOL_ERR_INVALID_ARGUMENT;
    qtool_tensor codes, scales, bias;
    int rc = src->get(src->ctx, "weight", &codes);
    if (rc == QTOOL_OK) rc = src->get(src->ctx, "weight_scale", &scales);
    int has_bias = rc == QTOOL_OK && src->has(src->ctx, "bias");
    if (has_bias) rc = src->get(src->ctx, "bias", &bias);
    if (rc != QTOOL_OK) return rc;
    if (codes.dtype != QTOOL_DTYPE_I8 || codes.ndim != 2 || codes.shape[0] != n || codes.shape[1] != k ||
        scales.dtype != QTOOL_DTYPE_F32 || scales.ndim != 1 || scales.shape[0] != n ||
        (has_bias && (bias.dtype != QTOOL_DTYPE_F32 || bias.ndim != 1 || bias.shape[0] != n))) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "load: %s: tensors do not match an int8 [%lld, %lld] layer",
               layer->name ? layer->name : "?", (long long)n, (long long)k);
        return QTOOL_ERR_FORMAT;
    }
    qtool_packed *p = packed_new(h, n, k, has_bias);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    memcpy(p->codes, codes.data, (size_t)(n * k));
    memcpy(p->scales, scales.data, (size_t)n * sizeof(float));
    if (has_bias) memcpy(p->bias, bias.data, (size_t)n * sizeof(float));
    for (int64_t r = 0; r < n; r++) {
        if (!(p->scales[r] > 0.0f) || !isfinite(p->scales[r])) {
            h->log(h->ctx, QTOOL_LOG_ERROR, "load: %s: scale %lld is not a positive number",
                   layer->name ? layer->name : "?", (long long)r);
            packed_free(p);
            return QTOOL_ERR_FORMAT;
        }
    }
    *out = p;
    return QTOOL_OK;
}

static int rtn8_quant_config_json(const qtool_instance *inst, char *buf, size_t buf_len)
{
    int n = snprintf(buf, buf_len, "{\"quant_method\": \"example_rtn8\", \"bits\": 8, \"clip_ratio\": %.9g}",
                     (double)inst->clip_ratio);
    return n > 0 && (size_t)n < buf_len ? QTOOL_OK : QTOOL_ERR_INVALID_ARGUMENT;
}

static int rtn8_accepts_config(const char *json)
{
    return json && strstr(json, "\"quant_method\"") && strstr(json, "\"example_rtn8\"");
}

/* ----------------------------------------------------------- descriptor */

static const qtool_plugin_desc rtn8_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "example_rtn8",
    .version = "1.0.0",
    .summary = "example: int8 round-to-nearest weights, one scale per row (CPU)",
    .devices = QTOOL_DEVMASK_CPU,
    .flags = 0,
    .weight_bits = 8,
    .activation_bits = 32,
    .options = rtn8_options,
    .n_options = sizeof rtn8_options / sizeof rtn8_options[0],
    .init = rtn8_init,
    .shutdown = NULL,
    .probe = rtn8_probe,
    .create = rtn8_create,
    .destroy = rtn8_destroy,
    .calibrate = NULL, /* data-free */
    .pack = rtn8_pack,
    .free_packed = rtn8_free_packed,
    .matmul_cpu = rtn8_matmul_cpu,
    .matmul_cuda = NULL,
    .memory = rtn8_memory,
    .save = rtn8_save,
    .load = rtn8_load,
    .quant_config_json = rtn8_quant_config_json,
    .accepts_config = rtn8_accepts_config,
};

/* The one exported symbol. */
QTOOL_PLUGIN_ENTRY { return &rtn8_desc; }
