/* Calibration and packing of a model's block Linears: the layer-sequential
 * calibration pass, packing one block at a time with the plugins' input
 * scales folded into the preceding norm or Linear where the graph allows.
 * docs/quantize.md describes the folding rules and the calibration order. */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "model_backend.h"
#include "tensor.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---------------------------------------------------------- folding */

/* Linears that read the same input, and where a scale of that input can go:
 * a norm whose output only they read, or rows of the Linear whose output
 * they read (through attention, or as the linear half of a GLU). */
typedef struct fold_group {
    qt_linear *members[3];
    int n;
    qt_norm *norm;       /* fold target: this norm's weight (and bias) */
    qt_linear *producer; /* or these output rows of a Linear */
    int64_t row_offset;  /* first producer row feeding channel 0 */
    int64_t kv_group;    /* query heads per kv head (attention output <- v); 1 otherwise */
    int64_t head_dim;
} fold_group;

/* The block's groups, consumers first: a group's producer is always in a
 * later group, so its pending row scale is known before it is packed. */
static int block_groups(qt_model *m, qt_block *b, fold_group g[4])
{
    const qt_model_config *c = &m->cfg;
    memset(g, 0, 4 * sizeof *g);
    for (int i = 0; i < 4; i++) g[i].kv_group = 1;
    switch (c->arch) {
    case QT_ARCH_BERT:
        /* Post-norm: a norm's output is also the residual, and GELU sits
         * between up and down: only attention output <- v folds. */
        g[0].members[g[0].n++] = &b->down;
        g[1].members[g[1].n++] = &b->up;
        g[2].members[g[2].n++] = &b->o;
        g[2].producer = &b->v;
        g[3].members[0] = &b->q, g[3].members[1] = &b->k, g[3].members[2] = &b->v, g[3].n = 3;
        break;
    case QT_ARCH_MODERNBERT:
        g[0].members[g[0].n++] = &b->down;
        g[0].producer = &b->gate_up; /* act(first half) * second half: the second half is linear */
        g[0].row_offset = c->intermediate_size;
        g[1].members[g[1].n++] = &b->gate_up;
        g[1].norm = &b->norm2;
        g[2].members[g[2].n++] = &b->o;
        g[2].producer = &b->qkv;
        g[2].row_offset = 2 * c->hidden_size;
        g[3].members[g[3].n++] = &b->qkv;
        g[3].norm = b->norm1.kind == QT_NORM_NONE ? NULL : &b->norm1; /* layer 0: identity */
        break;
    default:
        g[0].members[g[0].n++] = &b->down;
        g[0].producer = &b->up; /* act(gate) * up */
        g[1].members[0] = &b->gate, g[1].members[1] = &b->up, g[1].n = 2;
        g[1].norm = &b->norm2;
        g[2].members[g[2].n++] = &b->o;
        g[2].producer = &b->v;
        g[2].kv_group = c->n_kv_heads > 0 ? c->n_heads / c->n_kv_heads : 1;
        g[2].head_dim = c->head_dim;
        g[3].members[0] = &b->q, g[3].members[1] = &b->k, g[3].members[2] = &b->v, g[3].n = 3;
        g[3].norm = &b->norm1;
        break;
    }
    return 4;
}

/* Per-row divisors waiting for a producer that is not packed yet. */
typedef struct pending_rows {
    qt_linear *l[9];
    float *div[9];
    int n;
} pending_rows;

static float *pending_for(pending_rows *p, qt_linear *l, int create)
{
    for (int i = 0; i < p->n; i++)
        if (p->l[i] == l) return p->div[i];
    if (!create || p->n == 9) return NULL;
    int64_t N = l->info.out_features;
    float *d = qt_alloc(QTOOL_DEVICE_CPU, (size_t)N * sizeof(float), QTOOL_MEM_WORKSPACE);
    if (!d) return NULL;
    for (int64_t r = 0; r < N; r++) d[r] = 1.0f;
    p->l[p->n] = l;
    p->div[p->n++] = d;
    return d;
}

static void pending_free(pending_rows *p)
{
    for (int i = 0; i < p->n; i++) qt_free(QTOOL_DEVICE_CPU, p->div[i]);
    p->n = 0;
}

/* Packs one Linear; `div` (or NULL) divides its output rows first. */
static int pack_linear(qt_model *m, qt_linear *l, int device, const float *div)
{
    const qtool_plugin_desc *desc = m->desc;
    int64_t K = l->info.in_features, N = l->info.out_features;
    float *scale = qt_alloc(QTOOL_DEVICE_CPU, (size_t)K * sizeof(float), QTOOL_MEM_SCALES);
    float *w = NULL, *bias = NULL;
    qtool_tensor wt = {0}, bt = {0};
    int rc = 0;
    if (!scale) return QTOOL_ERR_OUT_OF_MEMORY;
    if (!l->weight) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: no float weight to pack", l->name);
        goto done;
    }
    const qtool_tensor *weight = l->weight, *b = l->bias;
    if (div) {
        /* The next Linear's input scale, folded into these output rows. */
        w = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(N * K) * sizeof(float), QTOOL_MEM_WORKSPACE);
        if (b) bias = qt_alloc(QTOOL_DEVICE_CPU, (size_t)N * sizeof(float), QTOOL_MEM_WORKSPACE);
        if (!w || (b && !bias)) {
            rc = QTOOL_ERR_OUT_OF_MEMORY;
            goto done;
        }
        qt_convert_to_f32(w, weight->data, weight->dtype, N * K);
        for (int64_t r = 0; r < N; r++)
            for (int64_t k = 0; k < K; k++) w[r * K + k] /= div[r];
        wt = qtool_tensor_view(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K);
        weight = &wt;
        if (b) {
            qt_convert_to_f32(bias, b->data, b->dtype, N);
            for (int64_t r = 0; r < N; r++) bias[r] /= div[r];
            bt = qtool_tensor_view(bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, N, 0);
            b = &bt;
        }
    }
    int32_t has_scale = 0;
    qtool_pack_args a = {0};
    a.struct_size = sizeof a;
    a.device = device;
    a.layer = &l->info;
    a.weight = weight;
    a.bias = b;
    a.input_scale = scale;
    a.has_input_scale = &has_scale;
    qtool_packed *p = NULL;
    qt_clear_error();
    rc = desc->pack(m->inst, &a, &p);
    if (rc != QTOOL_OK || !p) {
        if (!rc) rc = QTOOL_ERR_INTERNAL;
        if (p && desc->free_packed) desc->free_packed(p);
        rc = qt_fail(rc, "%s: plugin %s could not pack it (%s)", l->name, desc->name, qt_status_name(rc));
        goto done;
    }
    l->packed = p;
    if (has_scale) {
        for (int64_t k = 0; k < K; k++) {
            if (!(scale[k] != 0.0f) || !isfinite(scale[k])) {
                rc = qt_fail(QTOOL_ERR_INTERNAL, "%s: plugin %s returned input scale %g at channel %" PRId64,
                             l->name, desc->name, (double)scale[k], k);
                goto done;
            }
        }
        l->input_scale = scale;
        scale = NULL;
    }
done:
    qt_free(QTOOL_DEVICE_CPU, scale);
    qt_free(QTOOL_DEVICE_CPU, w);
    qt_free(QTOOL_DEVICE_CPU, bias);
    return rc;
}

static int norm_fold(qt_norm *nm, const float *s)
{
    int64_t H = nm->dim;
    if (!nm->orig_weight) {
        nm->orig_weight = qt_alloc(QTOOL_DEVICE_CPU, (size_t)H * sizeof(float), QTOOL_MEM_OTHER);
        if (!nm->orig_weight) return QTOOL_ERR_OUT_OF_MEMORY;
        memcpy(nm->orig_weight, nm->weight, (size_t)H * sizeof(float));
        if (nm->bias) {
            nm->orig_bias = qt_alloc(QTOOL_DEVICE_CPU, (size_t)H * sizeof(float), QTOOL_MEM_OTHER);
            if (!nm->orig_bias) return QTOOL_ERR_OUT_OF_MEMORY;
            memcpy(nm->orig_bias, nm->bias, (size_t)H * sizeof(float));
        }
    }
    /* norm(x) * w / s (+ b / s): the consumers then see x / s. */
    for (int64_t k = 0; k < H; k++) {
        nm->weight[k] /= s[k];
        if (nm->bias) nm->bias[k] /= s[k];
    }
    return 0;
}

/* Folds the group's input scale when every member returned the same one
 * and the group has a target; otherwise the members keep theirs and the
 * runtime divides their input explicitly. */
static int fold_group_scales(fold_group *g, pending_rows *pend)
{
    const float *s = g->members[0]->input_scale;
    int64_t K = g->members[0]->info.in_features;
    if (!s) return 0;
    for (int i = 1; i < g->n; i++)
        if (!g->members[i]->input_scale || memcmp(g->members[i]->input_scale, s, (size_t)K * sizeof(float)))
            return 0;
    if (g->norm) {
        if (g->norm->dim != K) return 0;
        int rc = norm_fold(g->norm, s);
        if (rc) return rc;
    } else if (g->producer) {
        /* Consumer channel c = h * d + j reads producer row offset +
         * (h / kv_group) * d + j: a row shared by several query heads
         * folds only when their scales agree. */
        int64_t G = g->kv_group > 0 ? g->kv_group : 1, d = G > 1 ? g->head_dim : K;
        if (d <= 0 || K % d) return 0;
        int64_t heads = K / d;
        if (heads % G) return 0;
        if (g->row_offset + (heads / G) * d > g->producer->info.out_features) return 0;
        for (int64_t h = 0; h < heads; h++)
            for (int64_t j = 0; j < d; j++)
                if (s[h * d + j] != s[(h / G) * G * d + j]) return 0;
        float *div = pending_for(pend, g->producer, 1);
        if (!div) return QTOOL_ERR_OUT_OF_MEMORY;
        for (int64_t kh = 0; kh < heads / G; kh++)
            for (int64_t j = 0; j < d; j++) div[g->row_offset + kh * d + j] *= s[kh * G * d + j];
    } else {
        return 0;
    }
    for (int i = 0; i < g->n; i++) {
        qt_free(QTOOL_DEVICE_CPU, g->members[i]->input_scale);
        g->members[i]->input_scale = NULL;
        g->members[i]->input_scale_folded = 1;
    }
    return 0;
}

/* ------------------------------------------------ same-input Linears as one */

/* Whether this block's q/k/v and gate/up can be packed as one Linear each:
 * a decoder, packed without calibration data by a plugin whose packing is
 * row-independent, for a model that is not going to be saved. */
static int fusable(const qt_model *m, const qt_block *b, int data_free)
{
    if (!data_free || !m->fuse_linears || m->linear_hook || m->quant_config ||
        !(m->desc->flags & QTOOL_PLUGIN_ROW_INDEPENDENT))
        return 0;
    if (m->cfg.arch != QT_ARCH_QWEN2 && m->cfg.arch != QT_ARCH_LLAMA) return 0;
    const qt_linear *parts[5] = {&b->q, &b->k, &b->v, &b->gate, &b->up};
    for (int i = 0; i < 5; i++)
        if (parts[i]->packed || !parts[i]->weight || parts[i]->input_scale) return 0;
    return (b->q.bias != NULL) == (b->k.bias != NULL) && (b->q.bias != NULL) == (b->v.bias != NULL) &&
           (b->gate.bias != NULL) == (b->up.bias != NULL);
}

/* Packs parts[0..n) (same K, rows stacked in this order) as `out`, named
 * `suffix` after the first part's module (".q_proj.weight" -> ".qkv_proj_fused.weight").
 * With `glu_epilogue` (two parts of the same N: gate, up) the rows are
 * interleaved instead, gate j then up j, as QTOOL_PLUGIN_GLU_EPILOGUE wants. */
static int pack_stacked(qt_model *m, qt_linear *out, qt_linear *const *parts, int n, int role, const char *suffix,
                        int device, int glu_epilogue)
{
    const int64_t K = parts[0]->info.in_features;
    int64_t N = 0;
    for (int i = 0; i < n; i++) N += parts[i]->info.out_features;
    const int has_bias = parts[0]->bias != NULL;
    float *w = qt_alloc(QTOOL_DEVICE_CPU, (size_t)(N * K) * sizeof(float), QTOOL_MEM_WORKSPACE);
    float *bias = has_bias ? qt_alloc(QTOOL_DEVICE_CPU, (size_t)N * sizeof(float), QTOOL_MEM_WORKSPACE) : NULL;
    const char *first = parts[0]->name, *dot = strrchr(first, '.');
    const size_t stem = dot ? (size_t)(dot - first) : strlen(first);
    const char *mod = memrchr(first, '.', stem);
    const size_t keep = mod ? (size_t)(mod - first) + 1 : 0;
    char *name = malloc(keep + strlen(suffix) + 1);
    int rc = 0;
    if (!w || (has_bias && !bias) || !name) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    memcpy(name, first, keep);
    strcpy(name + keep, suffix);
    /* Stacked: part i's rows after those of the parts before it.
     * Interleaved (glu_epilogue, two parts): part i's row r goes to row
     * 2r + i. */
    if (glu_epilogue && (n != 2 || parts[1]->info.out_features != parts[0]->info.out_features)) {
        rc = qt_fail(QTOOL_ERR_INTERNAL, "%s: a GLU epilogue pack needs two parts of equal size", name);
        goto done;
    }
    int64_t row = 0;
    for (int i = 0; i < n && !rc; i++) {
        const qtool_tensor *pw = parts[i]->weight, *pb = parts[i]->bias;
        const int64_t rows = parts[i]->info.out_features;
        const size_t wrow = (size_t)K * qtool_dtype_size(pw->dtype);
        for (int64_t r = 0; r < rows && !rc; r++) {
            const int64_t dst = glu_epilogue ? 2 * r + i : row + r;
            rc = qt_convert_to_f32(w + dst * K, (const char *)pw->data + (size_t)r * wrow, pw->dtype, K) ||
                 (has_bias &&
                  qt_convert_to_f32(bias + dst, (const char *)pb->data + (size_t)r * qtool_dtype_size(pb->dtype),
                                    pb->dtype, 1));
        }
        if (rc) rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: weight type %d cannot be read as float", parts[i]->name,
                             pw->dtype);
        row += rows;
    }
    if (rc) goto done;
    qtool_tensor wt = qtool_tensor_view(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K),
                 bt = qtool_tensor_view(bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, N, 0);
    memset(out, 0, sizeof *out);
    out->name = name;
    name = NULL;
    out->info = parts[0]->info;
    out->info.role = role;
    out->info.name = out->name;
    out->info.out_features = N;
    out->weight = &wt;
    out->bias = has_bias ? &bt : NULL;
    out->glu_epilogue = glu_epilogue;
    rc = pack_linear(m, out, device, NULL);
    out->weight = NULL; /* the stacked copy goes away below */
    out->bias = NULL;
    if (!rc && out->input_scale)
        rc = qt_fail(QTOOL_ERR_INTERNAL, "%s: plugin %s asked for an input scale in a data-free pack", out->name,
                     m->desc->name);
done:
    qt_free(QTOOL_DEVICE_CPU, w);
    qt_free(QTOOL_DEVICE_CPU, bias);
    free(name);
    return rc;
}

/* Frees what pack_stacked made (also after a failure half way). */
static void free_stacked(qt_model *m, qt_linear *l)
{
    if (l->packed && m->desc && m->desc->free_packed) m->desc->free_packed(l->packed);
    qt_free(QTOOL_DEVICE_CPU, l->input_scale);
    free(l->name);
    memset(l, 0, sizeof *l);
}

void qt_model_unfuse(qt_model *m)
{
    if (!m->blocks) return;
    for (int64_t i = 0; i < m->cfg.n_layers; i++) {
        qt_block *b = &m->blocks[i];
        if (!b->fused) continue;
        free_stacked(m, &b->qkv);
        free_stacked(m, &b->gate_up);
        b->fused = 0;
    }
}

/* The GLU epilogue a fused gate|up Linear gets: on CUDA, from a plugin that
 * offers it, for the activations the SDK names; 0 (a separate GLU) else. */
static int glu_epilogue_for(const qt_model *m, const qt_block *b, int device)
{
    if (device != QTOOL_DEVICE_CUDA || !(m->desc->flags & QTOOL_PLUGIN_GLU_EPILOGUE) ||
        b->gate.info.out_features != b->up.info.out_features)
        return QTOOL_EPILOGUE_NONE;
    switch (m->cfg.hidden_act) {
    case QT_ACT_SILU: return QTOOL_EPILOGUE_SILU_GLU;
    case QT_ACT_GELU: return QTOOL_EPILOGUE_GELU_GLU;
    case QT_ACT_GELU_TANH: return QTOOL_EPILOGUE_GELU_TANH_GLU;
    default: return QTOOL_EPILOGUE_NONE;
    }
}

static int pack_fused(qt_model *m, qt_block *b, int device)
{
    qt_linear *qkv[3] = {&b->q, &b->k, &b->v}, *gu[2] = {&b->gate, &b->up};
    b->fused = 1; /* so that a failure below is cleaned up by qt_model_unfuse */
    int rc = pack_stacked(m, &b->qkv, qkv, 3, QTOOL_ROLE_ATTN_QKV, "qkv_proj_fused.weight", device, 0);
    if (!rc)
        rc = pack_stacked(m, &b->gate_up, gu, 2, QTOOL_ROLE_FFN_GATE_UP, "gate_up_proj_fused.weight", device,
                          glu_epilogue_for(m, b, device));
    return rc;
}

static int pack_block(qt_model *m, int64_t block, int device, int data_free)
{
    if (!m->desc || block < 0 || block >= m->cfg.n_layers)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "pack of block %" PRId64 " without a plugin", block);
    qt_block *b = &m->blocks[block];
    int rc = 0;
    if (!b->fused && fusable(m, b, data_free) && (rc = pack_fused(m, b, device))) return rc;
    fold_group g[4];
    int ng = block_groups(m, b, g);
    pending_rows pend = {0};
    for (int i = 0; i < ng && !rc; i++) {
        for (int j = 0; j < g[i].n && !rc; j++) {
            qt_linear *l = g[i].members[j];
            if (l->packed) continue;
            if (b->fused && (l == &b->q || l == &b->k || l == &b->v || l == &b->gate || l == &b->up)) continue;
            rc = pack_linear(m, l, device, pending_for(&pend, l, 0));
        }
        if (!rc) rc = fold_group_scales(&g[i], &pend);
    }
    pending_free(&pend);
    return rc;
}

int qt_model_pack_block(qt_model *m, int64_t block, int device) { return pack_block(m, block, device, 1); }

void qt_model_unfold(qt_model *m)
{
    if (!m->blocks) return;
    for (int64_t i = 0; i < m->cfg.n_layers; i++) {
        qt_norm *n[2] = {&m->blocks[i].norm1, &m->blocks[i].norm2};
        for (int j = 0; j < 2; j++) {
            if (n[j]->orig_weight) memcpy(n[j]->weight, n[j]->orig_weight, (size_t)n[j]->dim * sizeof(float));
            if (n[j]->orig_bias) memcpy(n[j]->bias, n[j]->orig_bias, (size_t)n[j]->dim * sizeof(float));
            qt_free(QTOOL_DEVICE_CPU, n[j]->orig_weight);
            qt_free(QTOOL_DEVICE_CPU, n[j]->orig_bias);
            n[j]->orig_weight = n[j]->orig_bias = NULL;
        }
    }
}

/* --------------------------------------------------------- calibration */

typedef struct calib_ctx {
    const qtool_plugin_desc *desc;
    qtool_instance *inst;
} calib_ctx;

static void hook_input_free(qt_model *m)
{
    qt_free(QTOOL_DEVICE_CPU, m->hook_input);
    m->hook_input = NULL;
    m->hook_input_bytes = 0;
}

static int calib_hook(void *ctx, qt_linear *l, const qtool_tensor *x)
{
    calib_ctx *cc = ctx;
    int rc = cc->desc->calibrate(cc->inst, &l->info, x);
    if (rc != QTOOL_OK)
        return qt_fail(rc, "%s: plugin %s calibration failed (%s)", l->name, cc->desc->name, qt_status_name(rc));
    return 0;
}

int qt_model_calibrate(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, const qt_batch *b)
{
    if (!desc->calibrate) return 0; /* data-free */
    if (m->desc) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "calibrate before packing");
    calib_ctx cc = {desc, inst};
    m->linear_hook = calib_hook;
    m->linear_hook_ctx = &cc;
    qt_forward_out none = {0};
    int rc = qt_model_forward(m, b, QTOOL_DEVICE_CPU, NULL, &none);
    m->linear_hook = NULL;
    m->linear_hook_ctx = NULL;
    hook_input_free(m);
    return rc;
}

int qt_model_calibrate_pack(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device,
                            const qt_batch *batches, size_t n_batches, const qt_calib_options *o)
{
    if (m->desc) qt_model_unpack(m);
    if (m->quant_config)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is already quantized; it cannot be packed again",
                       m->model_path);
    if (device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "unknown device %d", device);
    int rc_dev = qt_model_check_plugin_device(desc, device);
    if (rc_dev) return rc_dev;
    if (!desc->calibrate || n_batches == 0) {
        /* Data-free: qt_model_pack, a block at a time for the progress. */
        m->desc = desc;
        m->inst = inst;
        m->packed_device = device;
        int rc = 0;
        for (int64_t l = 0; l < m->cfg.n_layers && !rc; l++) {
            double t0 = now_s();
            rc = qt_model_pack_block(m, l, device);
            if (!rc && o && o->progress) o->progress(o->progress_ctx, l, m->cfg.n_layers, 0, now_s() - t0);
        }
        if (rc) qt_model_unpack(m);
        return rc;
    }
    /* Every pass runs on `device`: block l with its checkpoint weights
     * (calibration), then packed (the hidden state entering block l+1). */
    void *stream = NULL;
    if (device == QTOOL_DEVICE_CUDA) {
        int e = qt_cuda_stream_create(&stream);
        if (e) return e;
    }
    size_t nb = n_batches;
    qt_model_steps **st = calloc(nb, sizeof *st);
    if (!st) {
        qt_cuda_stream_destroy(stream);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    calib_ctx cc = {desc, inst};
    int64_t tokens = 0;
    int rc = 0;
    m->desc = desc;
    m->inst = inst;
    m->packed_device = device;
    for (size_t j = 0; j < nb && !rc; j++) {
        rc = qt_model_steps_begin(m, &batches[j], device, stream, &st[j]);
        if (!rc) tokens += qt_model_steps_tokens(st[j]);
    }
    for (int64_t l = 0; l < m->cfg.n_layers && !rc; l++) {
        double t0 = now_s();
        m->linear_hook = calib_hook;
        m->linear_hook_ctx = &cc;
        for (size_t j = 0; j < nb && !rc; j++) rc = qt_model_steps_block(st[j], l, 0);
        m->linear_hook = NULL;
        m->linear_hook_ctx = NULL;
        if (!rc) rc = pack_block(m, l, device, 0);
        /* Norms may have taken input scales; the float copies are done. */
        if (!rc && device == QTOOL_DEVICE_CUDA) rc = qt_model_cuda_weights_changed(m);
        for (size_t j = 0; j < nb && !rc && l + 1 < m->cfg.n_layers; j++) rc = qt_model_steps_block(st[j], l, 1);
        if (!rc && o && o->progress) o->progress(o->progress_ctx, l, m->cfg.n_layers, tokens, now_s() - t0);
    }
    for (size_t j = 0; j < nb; j++) qt_model_steps_end(st[j]);
    free(st);
    m->linear_hook = NULL;
    m->linear_hook_ctx = NULL;
    hook_input_free(m);
    if (rc) qt_model_unpack(m);
    qt_cuda_stream_destroy(stream);
    return rc;
}
