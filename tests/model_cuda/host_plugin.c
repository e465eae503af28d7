#include "host_plugin.h"

#include <stdlib.h>
#include <string.h>

#include "cuda_rt.h"
#include "tensor.h"

struct qtool_instance {
    const qtool_host_services *host;
};

struct qtool_packed {
    float *w; /* W * s, [n, k] */
    float *b;
    int64_t n, k;
};

static int hp_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
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

static void hp_destroy(qtool_instance *i)
{
    free(i);
}

/* s[k] in [0.5, 2.75]: far enough from 1 that a missing x / s shows. */
static float scale_of(int64_t k)
{
    return 0.5f + 0.25f * (float)(k % 10);
}

static int hp_pack(qtool_instance *inst, const qtool_pack_args *a, qtool_packed **out)
{
    (void)inst;
    const qtool_tensor *w = a->weight;
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->n = w->shape[0];
    p->k = w->shape[1];
    p->w = malloc((size_t)(p->n * p->k) * sizeof(float));
    p->b = calloc((size_t)p->n, sizeof(float));
    if (!p->w || !p->b) {
        free(p->w);
        free(p->b);
        free(p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    qt_convert_to_f32(p->w, w->data, w->dtype, p->n * p->k);
    if (a->bias) qt_convert_to_f32(p->b, a->bias->data, a->bias->dtype, p->n);
    for (int64_t r = 0; r < p->n; r++)
        for (int64_t k = 0; k < p->k; k++) p->w[r * p->k + k] *= scale_of(k);
    for (int64_t k = 0; k < p->k; k++) a->input_scale[k] = scale_of(k);
    *a->has_input_scale = 1;
    *out = p;
    return QTOOL_OK;
}

static void hp_free(qtool_packed *p)
{
    if (!p) return;
    free(p->w);
    free(p->b);
    free(p);
}

static int hp_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a)
{
    const qtool_tensor *x = a->x;
    qtool_tensor *y = a->y;
    if (x->dtype != y->dtype || (x->dtype != QTOOL_DTYPE_F16 && x->dtype != QTOOL_DTYPE_BF16) || x->ndim != 2 ||
        x->shape[1] != p->k || y->shape[1] != p->n || y->shape[0] != x->shape[0])
        return QTOOL_ERR_INVALID_ARGUMENT;
    int64_t m = x->shape[0];
    uint16_t *hx = malloc((size_t)(m * p->k) * 2), *hy = malloc((size_t)(m * p->n) * 2);
    int rc = QTOOL_ERR_OUT_OF_MEMORY;
    if (hx && hy && qt_cuda_stream_sync(a->stream) == 0 && qt_cuda_memcpy_d2h(hx, x->data, (size_t)(m * p->k) * 2) == 0) {
        for (int64_t r = 0; r < m; r++) {
            for (int64_t o = 0; o < p->n; o++) {
                double acc = p->b[o];
                for (int64_t k = 0; k < p->k; k++) {
                    uint16_t v = hx[r * p->k + k];
                    float xv = x->dtype == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(v) : qtool_f16_to_f32(v);
                    acc += (double)xv * p->w[o * p->k + k];
                }
                hy[r * p->n + o] = x->dtype == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16((float)acc)
                                                                 : qtool_f32_to_f16((float)acc);
            }
        }
        rc = qt_cuda_memcpy_h2d(y->data, hy, (size_t)(m * p->n) * 2) == 0 ? QTOOL_OK : QTOOL_ERR_DEVICE;
    } else if (hx && hy) {
        rc = QTOOL_ERR_DEVICE;
    }
    free(hx);
    free(hy);
    return rc;
}

static int hp_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memset(bytes, 0, sizeof(uint64_t) * QTOOL_MEM_COUNT);
    (void)p;
    return QTOOL_OK;
}

const qtool_plugin_desc host_plugin_desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "host_scaled",
    .version = "1",
    .summary = "test: float64 host matmul behind the CUDA slot, with an input scale",
    .devices = QTOOL_DEVMASK_CUDA,
    .weight_bits = 32,
    .activation_bits = 16,
    .create = hp_create,
    .destroy = hp_destroy,
    .pack = hp_pack,
    .free_packed = hp_free,
    .matmul_cuda = hp_matmul_cuda,
    .memory = hp_memory,
};
