/* A float32 reference "plugin" linked into the model tests: pack keeps the
 * weight as float32, matmul accumulates each output in double, one row at a
 * time, so every row's result is independent of the rest of the batch. It
 * goes through the same descriptor slots as a real plugin. */
#include "ref_plugin.h"

#include <stdlib.h>
#include <string.h>

#include "tensor.h"

int ref_plugin_input_scale;

struct qtool_instance {
    const qtool_host_services *host;
    int n_packed;
    int n_calibrated;
};

struct qtool_packed {
    qtool_instance *inst;
    float *w, *b;
    int64_t n, k;
};

static int ref_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                      qtool_instance **out, char *msg, size_t msg_len)
{
    (void)opts;
    (void)n_opts;
    (void)msg;
    (void)msg_len;
    qtool_instance *i = calloc(1, sizeof *i);
    if (!i) return QTOOL_ERR_OUT_OF_MEMORY;
    i->host = host;
    *out = i;
    return QTOOL_OK;
}

static void ref_destroy(qtool_instance *i)
{
    free(i);
}

static int ref_calibrate(qtool_instance *inst, const qtool_layer_info *layer, const qtool_tensor *x)
{
    if (!layer || x->ndim != 2 || x->shape[1] != layer->in_features || x->dtype != QTOOL_DTYPE_F32)
        return QTOOL_ERR_INVALID_ARGUMENT;
    inst->n_calibrated++;
    return QTOOL_OK;
}

static int ref_pack(qtool_instance *inst, const qtool_pack_args *a, qtool_packed **out)
{
    const qtool_tensor *w = a->weight;
    if (w->ndim != 2 || w->shape[0] != a->layer->out_features || w->shape[1] != a->layer->in_features)
        return QTOOL_ERR_INVALID_ARGUMENT;
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->inst = inst;
    p->n = w->shape[0];
    p->k = w->shape[1];
    const qtool_host_services *h = inst->host;
    p->w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(p->n * p->k) * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!p->w) {
        free(p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    qt_convert_to_f32(p->w, w->data, w->dtype, p->n * p->k);
    if (ref_plugin_input_scale && a->input_scale && a->has_input_scale) {
        /* Pack W * s and ask the runtime for x / s (AWQ/SmoothQuant style). */
        for (int64_t k = 0; k < p->k; k++) {
            float sc = 0.5f + 0.25f * (float)(k % 5);
            a->input_scale[k] = sc;
            for (int64_t n = 0; n < p->n; n++) p->w[n * p->k + k] *= sc;
        }
        *a->has_input_scale = 1;
    }
    if (a->bias) {
        p->b = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->n * sizeof(float), QTOOL_MEM_WEIGHTS);
        if (!p->b) {
            h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
            free(p);
            return QTOOL_ERR_OUT_OF_MEMORY;
        }
        qt_convert_to_f32(p->b, a->bias->data, a->bias->dtype, p->n);
    }
    inst->n_packed++;
    *out = p;
    return QTOOL_OK;
}

static void ref_free_packed(qtool_packed *p)
{
    const qtool_host_services *h = p->inst->host;
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
    if (p->b) h->free(h->ctx, QTOOL_DEVICE_CPU, p->b);
    free(p);
}

typedef struct mm_job {
    const qtool_packed *p;
    const float *x;
    float *y;
} mm_job;

static void mm_rows(void *arg, int64_t b, int64_t e)
{
    mm_job *j = arg;
    const qtool_packed *p = j->p;
    for (int64_t r = b; r < e; r++) {
        for (int64_t n = 0; n < p->n; n++) {
            double acc = 0;
            for (int64_t k = 0; k < p->k; k++) acc += (double)j->x[r * p->k + k] * p->w[n * p->k + k];
            if (p->b) acc += p->b[n];
            j->y[r * p->n + n] = (float)acc;
        }
    }
}

static int ref_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a)
{
    const qtool_tensor *x = a->x;
    qtool_tensor *y = a->y;
    if (x->ndim != 2 || y->ndim != 2 || x->shape[1] != p->k || y->shape[1] != p->n || x->shape[0] != y->shape[0] ||
        x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32)
        return QTOOL_ERR_INVALID_ARGUMENT;
    mm_job j = {p, x->data, y->data};
    const qtool_host_services *h = p->inst->host;
    h->parallel_for(h->ctx, x->shape[0], 1, mm_rows, &j);
    return QTOOL_OK;
}

static int ref_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memset(bytes, 0, sizeof(uint64_t) * QTOOL_MEM_COUNT);
    bytes[QTOOL_MEM_WEIGHTS] = (uint64_t)(p->n * p->k + (p->b ? p->n : 0)) * sizeof(float);
    return QTOOL_OK;
}

const qtool_plugin_desc ref_plugin_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "ref_f32",
    .version = "1",
    .summary = "float32 reference for the model tests",
    .devices = QTOOL_DEVMASK_CPU,
    .flags = QTOOL_PLUGIN_BASELINE,
    .weight_bits = 32,
    .activation_bits = 32,
    .create = ref_create,
    .destroy = ref_destroy,
    .calibrate = ref_calibrate,
    .pack = ref_pack,
    .free_packed = ref_free_packed,
    .matmul_cpu = ref_matmul_cpu,
    .memory = ref_memory,
};

int ref_plugin_calibrated(const qtool_instance *i)
{
    return i->n_calibrated;
}

int ref_plugin_packed(const qtool_instance *i)
{
    return i->n_packed;
}
