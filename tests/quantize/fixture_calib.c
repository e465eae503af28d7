/* A test plugin for `qtool quantize` and the calibration pass. It needs
 * calibration; it records every calibrate call (layer, rows, a hash of the
 * input bytes) and every pack, in order, to the file named by the `record`
 * option; it packs float32 weights, either as they are or rounded to a
 * coarse symmetric grid per row (`quantize`), optionally times a random
 * positive input scale s[K] (`scale`: none, shared = one s per group of
 * Linears reading the same input, random = one per Linear), so that folding
 * can be checked on exact float32 arithmetic. Saved layers are `weight` and
 * `bias` in F32 under quant_method "qtool_fixture". */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qtool/plugin.h>

enum { SCALE_NONE = 0, SCALE_SHARED = 1, SCALE_RANDOM = 2 };

static const qtool_option_desc options[] = {
    {"record", QTOOL_OPT_STRING, "", "file that receives one line per calibrate and pack call", NULL, 0, -1},
    {"quantize", QTOOL_OPT_BOOL, "1", "round weights to 15 levels per row", NULL, 0, -1},
    {"scale", QTOOL_OPT_ENUM, "none", "input scale returned by pack", "none|shared|random", 0, -1},
    {"head_dim", QTOOL_OPT_INT, "0",
     "shared mode: the attention output's scale repeats every head_dim channels (0: per channel)", NULL, 0, 4096},
    {"seed", QTOOL_OPT_INT, "1", "seed of the scales", NULL, 0, 1e9},
    {"pow2", QTOOL_OPT_BOOL, "0", "scales are powers of two (1/4 .. 4): scaling is then exact in float32", NULL, 0,
     -1},
    {"fail_save", QTOOL_OPT_STRING, "", "save fails for the layer of this name", NULL, 0, -1},
};

struct qtool_instance {
    const qtool_host_services *host;
    FILE *record;
    int quantize, scale, head_dim, pow2;
    long seed;
    char fail_save[256];
    /* Names of the layers calibrated so far (pack refuses the others). */
    char **seen;
    size_t n_seen;
};

struct qtool_packed {
    qtool_instance *inst;
    char name[256];
    float *w, *b;
    int64_t n, k;
};

static int fx_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                     qtool_instance **out, char *msg, size_t msg_len)
{
    qtool_instance *in = calloc(1, sizeof *in);
    if (!in) return QTOOL_ERR_OUT_OF_MEMORY;
    in->host = host;
    for (uint32_t i = 0; i < n_opts; i++) {
        const char *nm = opts[i].name;
        if (!strcmp(nm, "record") && opts[i].s && opts[i].s[0]) {
            in->record = fopen(opts[i].s, "w");
            if (!in->record) {
                snprintf(msg, msg_len, "cannot write %s", opts[i].s);
                free(in);
                return QTOOL_ERR_INVALID_ARGUMENT;
            }
        } else if (!strcmp(nm, "quantize")) {
            in->quantize = (int)opts[i].i;
        } else if (!strcmp(nm, "scale")) {
            in->scale = (int)opts[i].i;
        } else if (!strcmp(nm, "head_dim")) {
            in->head_dim = (int)opts[i].i;
        } else if (!strcmp(nm, "pow2")) {
            in->pow2 = (int)opts[i].i;
        } else if (!strcmp(nm, "seed")) {
            in->seed = (long)opts[i].i;
        } else if (!strcmp(nm, "fail_save") && opts[i].s) {
            snprintf(in->fail_save, sizeof in->fail_save, "%s", opts[i].s);
        }
    }
    *out = in;
    return QTOOL_OK;
}

static void fx_destroy(qtool_instance *in)
{
    if (!in) return;
    if (in->record) fclose(in->record);
    for (size_t i = 0; i < in->n_seen; i++) free(in->seen[i]);
    free(in->seen);
    free(in);
}

static uint64_t fnv1a(const void *p, size_t n, uint64_t h)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ull;
    }
    return h;
}

static int fx_calibrate(qtool_instance *in, const qtool_layer_info *layer, const qtool_tensor *x)
{
    if (!layer || !layer->name || !x || x->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU ||
        x->ndim != 2 || x->shape[1] != layer->in_features || x->shape[0] < 1)
        return QTOOL_ERR_INVALID_ARGUMENT;
    size_t bytes = (size_t)(x->shape[0] * x->shape[1]) * sizeof(float);
    uint64_t h = fnv1a(x->data, bytes, 14695981039346656037ull);
    if (in->record) fprintf(in->record, "calibrate %s %lld %016llx\n", layer->name, (long long)x->shape[0], (unsigned long long)h);
    for (size_t i = 0; i < in->n_seen; i++)
        if (!strcmp(in->seen[i], layer->name)) return QTOOL_OK;
    char **s = realloc(in->seen, (in->n_seen + 1) * sizeof *s);
    if (!s) return QTOOL_ERR_OUT_OF_MEMORY;
    in->seen = s;
    if (!(s[in->n_seen] = strdup(layer->name))) return QTOOL_ERR_OUT_OF_MEMORY;
    in->n_seen++;
    return QTOOL_OK;
}

static float elem(const qtool_tensor *t, int64_t i)
{
    switch (t->dtype) {
    case QTOOL_DTYPE_F16: return qtool_f16_to_f32(((const uint16_t *)t->data)[i]);
    case QTOOL_DTYPE_BF16: return qtool_bf16_to_f32(((const uint16_t *)t->data)[i]);
    case QTOOL_DTYPE_F32: return ((const float *)t->data)[i];
    default: return NAN;
    }
}

/* Which input a Linear reads, so that Linears sharing one get one scale. */
static int input_group(int role)
{
    switch (role) {
    case QTOOL_ROLE_ATTN_Q: case QTOOL_ROLE_ATTN_K: case QTOOL_ROLE_ATTN_V: case QTOOL_ROLE_ATTN_QKV: return 1;
    case QTOOL_ROLE_ATTN_OUT: return 2;
    case QTOOL_ROLE_FFN_GATE: case QTOOL_ROLE_FFN_UP: case QTOOL_ROLE_FFN_GATE_UP: return 3;
    case QTOOL_ROLE_FFN_DOWN: return 4;
    default: return 5;
    }
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* s in [e^-1, e], or one of 1/4, 1/2, 1, 2, 4: random, positive. */
static void make_scale(const qtool_instance *in, const qtool_layer_info *l, float *s)
{
    uint64_t st = (uint64_t)in->seed * 1000003u;
    if (in->scale == SCALE_SHARED) st = fnv1a(&l->block_index, sizeof l->block_index, st) + (uint64_t)input_group(l->role);
    else st = fnv1a(l->name, strlen(l->name), st);
    int64_t period = in->scale == SCALE_SHARED && l->role == QTOOL_ROLE_ATTN_OUT && in->head_dim > 0 ? in->head_dim
                                                                                                       : l->in_features;
    for (int64_t k = 0; k < l->in_features; k++) {
        if (k < period) {
            double u = (double)(splitmix(&st) >> 11) / 9007199254740992.0;
            s[k] = in->pow2 ? (float)ldexp(1.0, (int)(u * 5.0) - 2) : (float)exp(2.0 * u - 1.0);
        } else {
            s[k] = s[k % period];
        }
    }
}

static int fx_pack(qtool_instance *in, const qtool_pack_args *a, qtool_packed **out)
{
    const qtool_layer_info *l = a->layer;
    const qtool_tensor *w = a->weight;
    if (!l || !l->name || !w || w->ndim != 2 || w->shape[0] != l->out_features || w->shape[1] != l->in_features)
        return QTOOL_ERR_INVALID_ARGUMENT;
    if (a->device != QTOOL_DEVICE_CPU) return QTOOL_ERR_UNSUPPORTED;
    int seen = 0;
    for (size_t i = 0; i < in->n_seen && !seen; i++) seen = !strcmp(in->seen[i], l->name);
    if (!seen) {
        in->host->log(in->host->ctx, QTOOL_LOG_ERROR, "%s: packed before it was calibrated", l->name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (in->record) fprintf(in->record, "pack %s\n", l->name);
    const qtool_host_services *h = in->host;
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->inst = in;
    p->n = w->shape[0];
    p->k = w->shape[1];
    snprintf(p->name, sizeof p->name, "%s", l->name);
    p->w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->n * p->k) * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (a->bias) p->b = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->n * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!p->w || (a->bias && !p->b)) {
        if (p->w) h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
        if (p->b) h->free(h->ctx, QTOOL_DEVICE_CPU, p->b);
        free(p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    for (int64_t i = 0; i < p->n * p->k; i++) p->w[i] = elem(w, i);
    for (int64_t i = 0; a->bias && i < p->n; i++) p->b[i] = elem(a->bias, i);
    if (in->scale != SCALE_NONE && a->input_scale && a->has_input_scale) {
        make_scale(in, l, a->input_scale);
        for (int64_t r = 0; r < p->n; r++)
            for (int64_t k = 0; k < p->k; k++) p->w[r * p->k + k] *= a->input_scale[k];
        *a->has_input_scale = 1;
    }
    if (in->quantize) {
        for (int64_t r = 0; r < p->n; r++) {
            float *row = p->w + r * p->k, amax = 0;
            for (int64_t k = 0; k < p->k; k++) amax = fabsf(row[k]) > amax ? fabsf(row[k]) : amax;
            float step = amax / 7.0f;
            for (int64_t k = 0; step > 0 && k < p->k; k++) row[k] = step * nearbyintf(row[k] / step);
        }
    }
    *out = p;
    return QTOOL_OK;
}

static void fx_free_packed(qtool_packed *p)
{
    if (!p) return;
    const qtool_host_services *h = p->inst->host;
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
    if (p->b) h->free(h->ctx, QTOOL_DEVICE_CPU, p->b);
    free(p);
}

typedef struct job {
    const qtool_packed *p;
    const float *x;
    float *y;
} job;

static void rows(void *arg, int64_t b, int64_t e)
{
    const job *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t r = b; r < e; r++)
        for (int64_t n = 0; n < p->n; n++) {
            double acc = 0;
            for (int64_t k = 0; k < p->k; k++) acc += (double)j->x[r * p->k + k] * p->w[n * p->k + k];
            if (p->b) acc += p->b[n];
            j->y[r * p->n + n] = (float)acc;
        }
}

static int fx_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    const qtool_tensor *x = a->x;
    const qtool_tensor *y = a->y;
    if (x->ndim != 2 || y->ndim != 2 || x->shape[1] != p->k || y->shape[1] != p->n || x->shape[0] != y->shape[0] ||
        x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32)
        return QTOOL_ERR_INVALID_ARGUMENT;
    job j = {p, x->data, y->data};
    p->inst->host->parallel_for(p->inst->host->ctx, x->shape[0], 1, rows, &j);
    return QTOOL_OK;
}

static int fx_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memset(bytes, 0, sizeof(uint64_t) * QTOOL_MEM_COUNT);
    bytes[QTOOL_MEM_WEIGHTS] = (uint64_t)(p->n * p->k + (p->b ? p->n : 0)) * sizeof(float);
    return QTOOL_OK;
}

static int fx_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    if (p->inst->fail_save[0] && !strcmp(p->inst->fail_save, p->name)) {
        p->inst->host->log(p->inst->host->ctx, QTOOL_LOG_ERROR, "%s: save refused on request", p->name);
        return QTOOL_ERR_INTERNAL;
    }
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.data = p->w;
    t.dtype = QTOOL_DTYPE_F32;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = p->n;
    t.shape[1] = p->k;
    int rc = sink->put(sink->ctx, "weight", &t);
    if (!rc && p->b) {
        t.data = p->b;
        t.ndim = 1;
        t.shape[1] = 0;
        rc = sink->put(sink->ctx, "bias", &t);
    }
    return rc;
}

static int fx_load(qtool_instance *in, const qtool_layer_info *l, int device, const qtool_load_source *src,
                   qtool_packed **out)
{
    if (device != QTOOL_DEVICE_CPU) return QTOOL_ERR_UNSUPPORTED;
    qtool_tensor w, b;
    if (src->get(src->ctx, "weight", &w) || w.dtype != QTOOL_DTYPE_F32 || w.ndim != 2 ||
        w.shape[0] != l->out_features || w.shape[1] != l->in_features)
        return QTOOL_ERR_FORMAT;
    int has_b = src->has(src->ctx, "bias");
    if (has_b && (src->get(src->ctx, "bias", &b) || b.dtype != QTOOL_DTYPE_F32 || b.ndim != 1 || b.shape[0] != w.shape[0]))
        return QTOOL_ERR_FORMAT;
    const qtool_host_services *h = in->host;
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->inst = in;
    p->n = w.shape[0];
    p->k = w.shape[1];
    snprintf(p->name, sizeof p->name, "%s", l->name ? l->name : "");
    p->w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->n * p->k) * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (has_b) p->b = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->n * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!p->w || (has_b && !p->b)) {
        fx_free_packed(p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    memcpy(p->w, w.data, (size_t)(p->n * p->k) * sizeof(float));
    if (has_b) memcpy(p->b, b.data, (size_t)p->n * sizeof(float));
    *out = p;
    return QTOOL_OK;
}

static int fx_quant_config_json(const qtool_instance *in, char *buf, size_t len)
{
    int n = snprintf(buf, len, "{\"quant_method\": \"qtool_fixture\", \"quantize\": %s}", in->quantize ? "true" : "false");
    return n < 0 || (size_t)n >= len ? QTOOL_ERR_INVALID_ARGUMENT : QTOOL_OK;
}

static int fx_accepts_config(const char *json)
{
    return json && strstr(json, "\"qtool_fixture\"") != NULL;
}

static int fx_probe(const qtool_device_info *dev, char *reason, size_t len)
{
    if (dev->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    snprintf(reason, len, "CPU only");
    return QTOOL_ERR_UNSUPPORTED;
}

static const qtool_plugin_desc desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "calib_fixture",
    .version = "1",
    .summary = "test plugin: records calibration, coarse float32 packing, random input scales",
    .devices = QTOOL_DEVMASK_CPU,
    .flags = QTOOL_PLUGIN_NEEDS_CALIBRATION,
    .weight_bits = 32,
    .activation_bits = 32,
    .options = options,
    .n_options = sizeof options / sizeof options[0],
    .probe = fx_probe,
    .create = fx_create,
    .destroy = fx_destroy,
    .calibrate = fx_calibrate,
    .pack = fx_pack,
    .free_packed = fx_free_packed,
    .matmul_cpu = fx_matmul_cpu,
    .memory = fx_memory,
    .save = fx_save,
    .load = fx_load,
    .quant_config_json = fx_quant_config_json,
    .accepts_config = fx_accepts_config,
};

QTOOL_PLUGIN_ENTRY { return &desc; }
