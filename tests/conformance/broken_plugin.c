/* A plain float32 plugin for testing `qtool check-plugin`: with bug=none it
 * follows every rule; each other value breaks exactly one, and the suite
 * must report that check as FAIL. */
#include <stdio.h>
#include <string.h>

#include <qtool/plugin.h>

enum { BUG_NONE, BUG_BIAS, BUG_MEMORY, BUG_LEAK, BUG_LAX, BUG_LOAD, BUG_ROWS };

static const qtool_option_desc options[] = {
    {"bug", QTOOL_OPT_ENUM, "none", "which rule to break", "none|bias|memory|leak|lax|load|rows", 0, -1},
};

struct qtool_instance {
    const qtool_host_services *h;
    int bug;
};

struct qtool_packed {
    qtool_instance *inst;
    int64_t n, k;
    float *w, *b;
    uint64_t mem[QTOOL_MEM_COUNT];
};

static int probe(const qtool_device_info *d, char *reason, size_t len)
{
    if (d->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    snprintf(reason, len, "CPU only");
    return QTOOL_ERR_UNSUPPORTED;
}

static int create(const qtool_host_services *h, const qtool_option_value *o, uint32_t n, qtool_instance **out,
                  char *msg, size_t len)
{
    (void)msg;
    (void)len;
    qtool_instance *inst = h->alloc(h->ctx, QTOOL_DEVICE_CPU, sizeof *inst, QTOOL_MEM_OTHER);
    if (!inst) return QTOOL_ERR_OUT_OF_MEMORY;
    inst->h = h;
    inst->bug = n >= 1 ? (int)o[0].i : BUG_NONE;
    *out = inst;
    return QTOOL_OK;
}

static void destroy(qtool_instance *inst) { inst->h->free(inst->h->ctx, QTOOL_DEVICE_CPU, inst); }

static float elem(const qtool_tensor *t, int64_t i)
{
    if (t->dtype == QTOOL_DTYPE_F16) return qtool_f16_to_f32(((const uint16_t *)t->data)[i]);
    if (t->dtype == QTOOL_DTYPE_BF16) return qtool_bf16_to_f32(((const uint16_t *)t->data)[i]);
    return ((const float *)t->data)[i];
}

static int ok_dtype(int d) { return d == QTOOL_DTYPE_F32 || d == QTOOL_DTYPE_F16 || d == QTOOL_DTYPE_BF16; }

static int make(qtool_instance *inst, const qtool_layer_info *li, const qtool_tensor *w, const qtool_tensor *b,
                qtool_packed **out)
{
    const qtool_host_services *h = inst->h;
    if (!w || !w->data || w->ndim != 2 || !ok_dtype(w->dtype) || w->shape[0] < 1 || w->shape[1] < 1)
        return QTOOL_ERR_INVALID_ARGUMENT;
    int64_t n = w->shape[0], k = w->shape[1];
    if (li && (li->in_features != k || li->out_features != n)) return QTOOL_ERR_INVALID_ARGUMENT;
    if (b && (!b->data || b->ndim != 1 || b->shape[0] != n || !ok_dtype(b->dtype))) return QTOOL_ERR_INVALID_ARGUMENT;
    qtool_packed *p = h->alloc(h->ctx, QTOOL_DEVICE_CPU, sizeof *p, QTOOL_MEM_OTHER);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    memset(p, 0, sizeof *p);
    p->inst = inst;
    p->n = n;
    p->k = k;
    p->mem[QTOOL_MEM_OTHER] = sizeof *p;
    p->w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(n * k) * 4, QTOOL_MEM_WEIGHTS);
    p->b = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)n * 4, QTOOL_MEM_WEIGHTS);
    if (!p->w || !p->b) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
        h->free(h->ctx, QTOOL_DEVICE_CPU, p->b);
        h->free(h->ctx, QTOOL_DEVICE_CPU, p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    p->mem[QTOOL_MEM_WEIGHTS] = (uint64_t)(n * k + n) * 4;
    for (int64_t i = 0; i < n * k; i++) p->w[i] = elem(w, i);
    for (int64_t i = 0; i < n; i++) p->b[i] = b ? elem(b, i) : 0.0f;
    if (inst->bug == BUG_ROWS && n == 32) {
        /* Claims QTOOL_PLUGIN_ROW_INDEPENDENT, yet shifts the bias by a
         * tensor-wide statistic (the mean weight) in layers of 32 rows: the
         * halves the row-independence check packs; every other check sees
         * 64 rows or a count other than 32. */
        double mean = 0;
        for (int64_t i = 0; i < n * k; i++) mean += p->w[i];
        mean /= (double)(n * k);
        for (int64_t i = 0; i < n; i++) p->b[i] += (float)mean;
    }
    *out = p;
    return QTOOL_OK;
}

static int pack(qtool_instance *inst, const qtool_pack_args *a, qtool_packed **out)
{
    if (!a || a->device != QTOOL_DEVICE_CPU) return QTOOL_ERR_INVALID_ARGUMENT;
    return make(inst, a->layer, a->weight, a->bias, out);
}

static void free_packed(qtool_packed *p)
{
    const qtool_host_services *h = p->inst->h;
    h->free(h->ctx, QTOOL_DEVICE_CPU, p->w);
    if (p->inst->bug != BUG_LEAK) h->free(h->ctx, QTOOL_DEVICE_CPU, p->b);
    h->free(h->ctx, QTOOL_DEVICE_CPU, p);
}

static int matmul(qtool_packed *p, const qtool_matmul_args *a)
{
    if (!a || !a->x || !a->y) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_tensor *x = a->x, *y = a->y;
    int lax = p->inst->bug == BUG_LAX;
    if (!lax && a->epilogue != QTOOL_EPILOGUE_NONE) return QTOOL_ERR_INVALID_ARGUMENT;
    if (x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32 || x->ndim != 2 || y->ndim != 2 ||
        x->device != QTOOL_DEVICE_CPU || y->device != QTOOL_DEVICE_CPU)
        return QTOOL_ERR_INVALID_ARGUMENT;
    if (!lax && (x->shape[1] != p->k || y->shape[1] != p->n || x->shape[0] != y->shape[0]))
        return QTOOL_ERR_INVALID_ARGUMENT;
    int64_t m = x->shape[0] < y->shape[0] ? x->shape[0] : y->shape[0];
    if (m == 0) return QTOOL_OK;
    if (!x->data || !y->data) return QTOOL_ERR_INVALID_ARGUMENT;
    const float *xs = x->data;
    float *ys = y->data;
    int64_t ldx = x->shape[1], ldy = y->shape[1];
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < p->n; j++) {
            float s = p->inst->bug == BUG_BIAS ? 0.0f : p->b[j];
            for (int64_t t = 0; t < p->k; t++) s += xs[i * ldx + t] * p->w[j * p->k + t];
            ys[i * ldy + j] = s;
        }
    return QTOOL_OK;
}

static int memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memcpy(bytes, p->mem, sizeof p->mem);
    if (p->inst->bug == BUG_MEMORY) bytes[QTOOL_MEM_WEIGHTS] /= 2;
    return QTOOL_OK;
}

static int save(const qtool_packed *p, const qtool_save_sink *s)
{
    qtool_tensor w = {p->w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {p->n, p->k}};
    qtool_tensor b = {p->b, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {p->n}};
    int rc = s->put(s->ctx, "weight", &w);
    return rc ? rc : s->put(s->ctx, "bias", &b);
}

static int load(qtool_instance *inst, const qtool_layer_info *li, int device, const qtool_load_source *src,
                qtool_packed **out)
{
    qtool_tensor w, b;
    if (device != QTOOL_DEVICE_CPU || src->get(src->ctx, "weight", &w) != QTOOL_OK) return QTOOL_ERR_FORMAT;
    int has_b = src->has(src->ctx, "bias") && src->get(src->ctx, "bias", &b) == QTOOL_OK;
    if (inst->bug == BUG_LOAD) has_b = 0; /* drops the bias on reload */
    int rc = make(inst, li, &w, has_b ? &b : NULL, out);
    return rc == QTOOL_ERR_INVALID_ARGUMENT ? QTOOL_ERR_FORMAT : rc;
}

static const qtool_plugin_desc desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "broken_fixture",
    .version = "0",
    .summary = "float32 reference with one selectable rule violation (tests only)",
    .devices = QTOOL_DEVMASK_CPU,
    .flags = QTOOL_PLUGIN_ROW_INDEPENDENT,
    .weight_bits = 32,
    .activation_bits = 32,
    .options = options,
    .n_options = 1,
    .probe = probe,
    .create = create,
    .destroy = destroy,
    .pack = pack,
    .free_packed = free_packed,
    .matmul_cpu = matmul,
    .memory = memory,
    .save = save,
    .load = load,
};

QTOOL_PLUGIN_ENTRY { return &desc; }
