/* Checkpoint -> qt_model: finds every tensor the architecture needs, checks
 * its shape and dtype, converts norms and the head to float32, computes the
 * RoPE frequencies, and packs the block Linears through a plugin. */
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "fsutil.h"
#include "gguf_model.h"
#include "model.h"
#include "quantize.h"
#include "tensor.h"

typedef struct loader {
    qt_model *m;
    const char *prefix; /* "bert." or "model." or "" */
} loader;

static int is_float_dtype(int dt)
{
    return dt == QTOOL_DTYPE_F32 || dt == QTOOL_DTYPE_F16 || dt == QTOOL_DTYPE_BF16 || dt == QTOOL_DTYPE_F64;
}

static const char *dims_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    qtool_tensor t = {0};
    t.ndim = ndim;
    for (int i = 0; i < ndim && i < QTOOL_MAX_DIMS; i++) t.shape[i] = shape[i];
    return qt_shape_str(&t, buf, len);
}

/* The checkpoint tensor `name`, also under the spellings transformers
 * accepts: without/with the base-model prefix, and LayerNorm gamma/beta. */
static const qt_st_tensor *lookup(const loader *L, const char *name)
{
    const qt_st_tensor *t = qt_ckpt_find(L->m->ckpt, name);
    if (t) return t;
    char alt[512];
    size_t plen = strlen(L->prefix);
    /* A base-model checkpoint (BertModel saved alone) has no prefix. */
    if (plen && strncmp(name, L->prefix, plen) == 0) {
        t = qt_ckpt_find(L->m->ckpt, name + plen);
        if (t) return t;
    }
    if (!plen && L->m->cfg.arch == QT_ARCH_BERT) {
        snprintf(alt, sizeof alt, "bert.%s", name);
        t = qt_ckpt_find(L->m->ckpt, alt);
        if (t) return t;
    }
    size_t n = strlen(name);
    const char *legacy = NULL;
    size_t cut = 0;
    if (n >= 16 && strcmp(name + n - 16, "LayerNorm.weight") == 0) {
        legacy = "gamma";
        cut = 6;
    } else if (n >= 14 && strcmp(name + n - 14, "LayerNorm.bias") == 0) {
        legacy = "beta";
        cut = 4;
    }
    if (legacy && n - cut + strlen(legacy) < sizeof alt) {
        memcpy(alt, name, n - cut);
        strcpy(alt + n - cut, legacy);
        t = qt_ckpt_find(L->m->ckpt, alt);
        if (!t && plen && strncmp(alt, L->prefix, plen) == 0) t = qt_ckpt_find(L->m->ckpt, alt + plen);
        if (t) return t;
    }
    return NULL;
}

/* A float tensor of exactly this shape (ndim 1 or 2; d1 < 0 for 1-D). */
static int need(const loader *L, const char *name, int64_t d0, int64_t d1, const qt_st_tensor **out)
{
    const qt_st_tensor *t = lookup(L, name);
    char want[64], got[64];
    int64_t ws[2] = {d0, d1};
    int wnd = d1 < 0 ? 1 : 2;
    *out = NULL;
    if (!t)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: missing from the checkpoint %s (expected %s)", name,
                       L->m->model_path, dims_str(wnd, ws, want, sizeof want));
    int ok = t->ndim == wnd && t->shape[0] == d0 && (wnd == 1 || t->shape[1] == d1);
    if (!ok)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: expected %s, found %s", name, dims_str(wnd, ws, want, sizeof want),
                       dims_str(t->ndim, t->shape, got, sizeof got));
    if (!is_float_dtype(t->view.dtype))
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: dtype %s is not a float type (F32, F16, BF16)", name,
                       t->dtype_name ? t->dtype_name : qt_dtype_name(t->view.dtype));
    *out = t;
    return 0;
}

static int need_fmt(const loader *L, int64_t d0, int64_t d1, const qt_st_tensor **out, const char *fmt, ...)
    QTOOL_PRINTF(5, 6);
static int need_fmt(const loader *L, int64_t d0, int64_t d1, const qt_st_tensor **out, const char *fmt, ...)
{
    char name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    return need(L, name, d0, d1, out);
}

static float *to_f32_copy(const qt_st_tensor *t)
{
    int64_t n = qtool_tensor_numel(&t->view);
    float *p = qt_alloc(QTOOL_DEVICE_CPU, (size_t)n * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!p) return NULL;
    if (qt_convert_to_f32(p, t->view.data, t->view.dtype, n) != 0) {
        qt_free(QTOOL_DEVICE_CPU, p);
        return NULL;
    }
    return p;
}

/* A norm named `base` (".weight" and, when `bias`, ".bias" appended). */
static int load_norm(const loader *L, qt_norm *nm, int kind, int bias, const char *fmt, ...) QTOOL_PRINTF(5, 6);
static int load_norm(const loader *L, qt_norm *nm, int kind, int bias, const char *fmt, ...)
{
    char base[480], name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    const qt_model_config *c = &L->m->cfg;
    nm->kind = kind;
    nm->dim = c->hidden_size;
    nm->eps = (float)c->norm_eps;
    const qt_st_tensor *w, *b = NULL;
    snprintf(name, sizeof name, "%s.weight", base);
    int rc = need(L, name, c->hidden_size, -1, &w);
    if (rc) return rc;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", base);
        if ((rc = need(L, name, c->hidden_size, -1, &b))) return rc;
    }
    nm->weight = to_f32_copy(w);
    if (!nm->weight) return QTOOL_ERR_OUT_OF_MEMORY;
    if (b && !(nm->bias = to_f32_copy(b))) return QTOOL_ERR_OUT_OF_MEMORY;
    return 0;
}

static void free_norm(qt_norm *nm)
{
    qt_free(QTOOL_DEVICE_CPU, nm->weight);
    qt_free(QTOOL_DEVICE_CPU, nm->bias);
    memset(nm, 0, sizeof *nm);
}

static int load_dense(const loader *L, qt_dense *d, int64_t out, int64_t in, int bias, const char *base)
{
    char name[512];
    const qt_st_tensor *w, *b = NULL;
    snprintf(name, sizeof name, "%s.weight", base);
    int rc = need(L, name, out, in, &w);
    if (rc) return rc;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", base);
        if ((rc = need(L, name, out, -1, &b))) return rc;
    }
    d->in = in;
    d->out = out;
    d->weight = to_f32_copy(w);
    if (!d->weight) return QTOOL_ERR_OUT_OF_MEMORY;
    if (b && !(d->bias = to_f32_copy(b))) return QTOOL_ERR_OUT_OF_MEMORY;
    return 0;
}

static void free_dense(qt_dense *d)
{
    qt_free(QTOOL_DEVICE_CPU, d->weight);
    qt_free(QTOOL_DEVICE_CPU, d->bias);
    memset(d, 0, sizeof *d);
}

/* Does any checkpoint tensor start with `prefix`? (Names are sorted.) */
static int ckpt_has_prefix(const qt_ckpt *ck, const char *prefix)
{
    size_t lo = 0, hi = qt_ckpt_count(ck), n = strlen(prefix);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(qt_ckpt_at(ck, mid)->name, prefix) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo < qt_ckpt_count(ck) && strncmp(qt_ckpt_at(ck, lo)->name, prefix, n) == 0;
}

/* A Linear of a quantized checkpoint: its tensors are the plugin's
 * (`base`.weight, .SCB, .qweight...); find the spelling of `base` in use. */
static int locate_packed_linear(const loader *L, const char *base, char **name)
{
    char cand[3][512];
    int n = 0;
    size_t plen = strlen(L->prefix);
    snprintf(cand[n++], sizeof cand[0], "%s.", base);
    if (plen && strncmp(base, L->prefix, plen) == 0) snprintf(cand[n++], sizeof cand[0], "%s.", base + plen);
    if (!plen && L->m->cfg.arch == QT_ARCH_BERT) snprintf(cand[n++], sizeof cand[0], "bert.%s.", base);
    for (int i = 0; i < n; i++) {
        if (!ckpt_has_prefix(L->m->ckpt, cand[i])) continue;
        size_t len = strlen(cand[i]) + sizeof "weight";
        *name = malloc(len);
        if (!*name) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        snprintf(*name, len, "%sweight", cand[i]);
        return 0;
    }
    return qt_fail(QTOOL_ERR_FORMAT, "%s.*: missing from the quantized checkpoint %s", base, L->m->model_path);
}

/* A block Linear `base`.weight [N, K] (+ `base`.bias [N]). */
static int load_linear(const loader *L, qt_linear *l, int role, int block, int64_t n, int64_t k, int bias,
                       const char *fmt, ...) QTOOL_PRINTF(8, 9);
static int load_linear(const loader *L, qt_linear *l, int role, int block, int64_t n, int64_t k, int bias,
                       const char *fmt, ...)
{
    char base[480], name[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(base, sizeof base, fmt, ap);
    va_end(ap);
    const qt_st_tensor *w = NULL, *b = NULL;
    int rc;
    if (L->m->quant_config) {
        if ((rc = locate_packed_linear(L, base, &l->name))) return rc;
    } else {
        snprintf(name, sizeof name, "%s.weight", base);
        if ((rc = need(L, name, n, k, &w))) return rc;
        if (bias) {
            snprintf(name, sizeof name, "%s.bias", base);
            if ((rc = need(L, name, n, -1, &b))) return rc;
        }
        /* The name the checkpoint really uses, so plugins and saved files agree with it. */
        l->name = strdup(w->name);
        if (!l->name) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    l->weight = w ? &w->view : NULL;
    l->bias = b ? &b->view : NULL;
    l->info.struct_size = sizeof l->info;
    l->info.role = role;
    l->info.name = l->name;
    l->info.in_features = k;
    l->info.out_features = n;
    l->info.block_index = block;
    l->info.n_blocks = (int32_t)L->m->cfg.n_layers;
    L->m->linears[L->m->n_linears++] = l;
    return 0;
}

static int load_bert(loader *L)
{
    qt_model *m = L->m;
    const qt_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    const char *P = L->prefix;
    const qt_st_tensor *t;
    char base[256];
    int rc;
    if ((rc = need_fmt(L, c->vocab_size, H, &t, "%sembeddings.word_embeddings.weight", P))) return rc;
    m->tok_emb = &t->view;
    if ((rc = need_fmt(L, c->max_position_embeddings, H, &t, "%sembeddings.position_embeddings.weight", P)))
        return rc;
    m->pos_emb = &t->view;
    if ((rc = need_fmt(L, c->type_vocab_size, H, &t, "%sembeddings.token_type_embeddings.weight", P))) return rc;
    m->type_emb = &t->view;
    if ((rc = load_norm(L, &m->emb_norm, QT_NORM_LAYER, 1, "%sembeddings.LayerNorm", P))) return rc;
    for (int64_t i = 0; i < c->n_layers; i++) {
        qt_block *b = &m->blocks[i];
        int bi = (int)i;
        snprintf(base, sizeof base, "%sencoder.layer.%d", P, bi);
        if ((rc = load_linear(L, &b->q, QTOOL_ROLE_ATTN_Q, bi, H, H, 1, "%s.attention.self.query", base)) ||
            (rc = load_linear(L, &b->k, QTOOL_ROLE_ATTN_K, bi, H, H, 1, "%s.attention.self.key", base)) ||
            (rc = load_linear(L, &b->v, QTOOL_ROLE_ATTN_V, bi, H, H, 1, "%s.attention.self.value", base)) ||
            (rc = load_linear(L, &b->o, QTOOL_ROLE_ATTN_OUT, bi, H, H, 1, "%s.attention.output.dense", base)) ||
            (rc = load_norm(L, &b->norm1, QT_NORM_LAYER, 1, "%s.attention.output.LayerNorm", base)) ||
            (rc = load_linear(L, &b->up, QTOOL_ROLE_FFN_UP, bi, I, H, 1, "%s.intermediate.dense", base)) ||
            (rc = load_linear(L, &b->down, QTOOL_ROLE_FFN_DOWN, bi, H, I, 1, "%s.output.dense", base)) ||
            (rc = load_norm(L, &b->norm2, QT_NORM_LAYER, 1, "%s.output.LayerNorm", base)))
            return rc;
    }
    if (!c->has_head) return 0;
    snprintf(base, sizeof base, "%spooler.dense", P);
    if ((rc = load_dense(L, &m->pre, H, H, 1, base))) return rc;
    m->has_pre = 1;
    return load_dense(L, &m->classifier, c->num_labels, H, 1, "classifier");
}

static int load_modernbert(loader *L)
{
    qt_model *m = L->m;
    const qt_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    const qt_st_tensor *t;
    char base[256];
    int rc;
    if ((rc = need(L, "model.embeddings.tok_embeddings.weight", c->vocab_size, H, &t))) return rc;
    m->tok_emb = &t->view;
    if ((rc = load_norm(L, &m->emb_norm, QT_NORM_LAYER, c->norm_bias, "model.embeddings.norm"))) return rc;
    for (int64_t i = 0; i < c->n_layers; i++) {
        qt_block *b = &m->blocks[i];
        int bi = (int)i;
        snprintf(base, sizeof base, "model.layers.%d", bi);
        if (i == 0) {
            b->norm1.kind = QT_NORM_NONE; /* nn.Identity in transformers */
            b->norm1.dim = H;
        } else if ((rc = load_norm(L, &b->norm1, QT_NORM_LAYER, c->norm_bias, "%s.attn_norm", base))) {
            return rc;
        }
        if ((rc = load_linear(L, &b->qkv, QTOOL_ROLE_ATTN_QKV, bi, 3 * H, H, c->attention_bias, "%s.attn.Wqkv",
                              base)) ||
            (rc = load_linear(L, &b->o, QTOOL_ROLE_ATTN_OUT, bi, H, H, c->attention_bias, "%s.attn.Wo", base)) ||
            (rc = load_norm(L, &b->norm2, QT_NORM_LAYER, c->norm_bias, "%s.mlp_norm", base)) ||
            (rc = load_linear(L, &b->gate_up, QTOOL_ROLE_FFN_GATE_UP, bi, 2 * I, H, c->mlp_bias, "%s.mlp.Wi",
                              base)) ||
            (rc = load_linear(L, &b->down, QTOOL_ROLE_FFN_DOWN, bi, H, I, c->mlp_bias, "%s.mlp.Wo", base)))
            return rc;
    }
    if ((rc = load_norm(L, &m->final_norm, QT_NORM_LAYER, c->norm_bias, "model.final_norm"))) return rc;
    if ((rc = load_dense(L, &m->pre, H, H, c->classifier_bias, "head.dense"))) return rc;
    m->has_pre = 1;
    if ((rc = load_norm(L, &m->head_norm, QT_NORM_LAYER, c->norm_bias, "head.norm"))) return rc;
    return load_dense(L, &m->classifier, c->num_labels, H, 1, "classifier");
}

static int load_decoder(loader *L)
{
    qt_model *m = L->m;
    const qt_model_config *c = &m->cfg;
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    const qt_st_tensor *t;
    char base[256];
    int rc;
    if ((rc = need(L, "model.embed_tokens.weight", c->vocab_size, H, &t))) return rc;
    m->tok_emb = &t->view;
    for (int64_t i = 0; i < c->n_layers; i++) {
        qt_block *b = &m->blocks[i];
        int bi = (int)i;
        snprintf(base, sizeof base, "model.layers.%d", bi);
        if ((rc = load_norm(L, &b->norm1, QT_NORM_RMS, 0, "%s.input_layernorm", base)) ||
            (rc = load_linear(L, &b->q, QTOOL_ROLE_ATTN_Q, bi, QD, H, c->attention_bias, "%s.self_attn.q_proj",
                              base)) ||
            (rc = load_linear(L, &b->k, QTOOL_ROLE_ATTN_K, bi, KD, H, c->attention_bias, "%s.self_attn.k_proj",
                              base)) ||
            (rc = load_linear(L, &b->v, QTOOL_ROLE_ATTN_V, bi, KD, H, c->attention_bias, "%s.self_attn.v_proj",
                              base)) ||
            (rc = load_linear(L, &b->o, QTOOL_ROLE_ATTN_OUT, bi, H, QD, c->attention_out_bias,
                              "%s.self_attn.o_proj", base)) ||
            (rc = load_norm(L, &b->norm2, QT_NORM_RMS, 0, "%s.post_attention_layernorm", base)) ||
            (rc = load_linear(L, &b->gate, QTOOL_ROLE_FFN_GATE, bi, I, H, c->mlp_bias, "%s.mlp.gate_proj", base)) ||
            (rc = load_linear(L, &b->up, QTOOL_ROLE_FFN_UP, bi, I, H, c->mlp_bias, "%s.mlp.up_proj", base)) ||
            (rc = load_linear(L, &b->down, QTOOL_ROLE_FFN_DOWN, bi, H, I, c->mlp_bias, "%s.mlp.down_proj", base)))
            return rc;
    }
    if ((rc = load_norm(L, &m->final_norm, QT_NORM_RMS, 0, "model.norm"))) return rc;
    return load_dense(L, &m->classifier, c->num_labels, H, 0, "score");
}

/* inv_freq as transformers computes it, in float32:
 * 1 / theta^(arange(0, d, 2) / d), then the type's rescaling. */
static float *rope_inv_freq(const qt_rope_config *r, int64_t head_dim)
{
    int64_t half = head_dim / 2;
    float *f = qt_alloc(QTOOL_DEVICE_CPU, (size_t)half * sizeof(float), QTOOL_MEM_WEIGHTS);
    if (!f) return NULL;
    for (int64_t i = 0; i < half; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        float p = (float)pow((double)(float)r->theta, (double)e);
        f[i] = 1.0f / p;
    }
    if (r->type == QT_ROPE_LINEAR) {
        for (int64_t i = 0; i < half; i++) f[i] = f[i] / (float)r->factor;
    } else if (r->type == QT_ROPE_LLAMA3) {
        double factor = r->factor, lo = r->low_freq_factor, hi = r->high_freq_factor;
        double old = (double)r->original_max_position_embeddings;
        double low_wl = old / lo, high_wl = old / hi;
        for (int64_t i = 0; i < half; i++) {
            double inv = f[i];
            double wl = 2.0 * M_PI / inv;
            double v = wl > low_wl ? inv / factor : inv;
            if (!(wl < high_wl) && !(wl > low_wl)) {
                double smooth = (old / wl - lo) / (hi - lo);
                v = (1.0 - smooth) * v / factor + smooth * v;
            }
            f[i] = (float)v;
        }
    }
    return f;
}

static int open_config(const char *model_path, const char *config_path, qt_model_config *cfg, char **quant_config)
{
    if (config_path) {
        int rc = qt_model_config_load(config_path, cfg);
        if (!rc && (rc = qt_quant_config_read(config_path, quant_config))) qt_model_config_free(cfg);
        return rc;
    }
    char *p = NULL;
    if (qt_is_dir(model_path)) {
        p = qt_path_join(model_path, "config.json");
    } else {
        /* A bare .safetensors file: config.json beside it. */
        const char *slash = strrchr(model_path, '/');
        if (slash) {
            char *dir = strndup(model_path, (size_t)(slash - model_path + (slash == model_path)));
            if (dir) p = qt_path_join(dir, "config.json");
            free(dir);
        } else {
            p = strdup("config.json");
        }
    }
    if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    int rc;
    if (!qt_file_exists(p)) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: no config.json %s (pass --config FILE)", model_path,
                     qt_is_dir(model_path) ? "in this folder" : "beside this file");
    } else {
        rc = qt_model_config_load(p, cfg);
        if (!rc && (rc = qt_quant_config_read(p, quant_config))) qt_model_config_free(cfg);
    }
    free(p);
    return rc;
}

/* RoPE frequencies (decoders and ModernBERT). */
static int setup_rope(qt_model *m)
{
    const qt_model_config *c = &m->cfg;
    if (c->arch == QT_ARCH_BERT) return 0;
    m->inv_freq_full = rope_inv_freq(&c->rope_full, c->head_dim);
    m->inv_freq_sliding = rope_inv_freq(&c->rope_sliding, c->head_dim);
    if (!m->inv_freq_full || !m->inv_freq_sliding) return QTOOL_ERR_OUT_OF_MEMORY;
    m->rope_scaling_full = m->rope_scaling_sliding = 1.0f;
    return 0;
}

int qt_model_open(const char *model_path, const char *config_path, qt_model **out)
{
    *out = NULL;
    qt_model *m = calloc(1, sizeof *m);
    if (!m) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    m->packed_device = -1;
    if (qt_gguf_model_is_gguf(model_path)) {
        /* A GGUF file written by `qtool quantize` (gguf_model.c). */
        int rc = qt_gguf_model_read(m, model_path, config_path);
        if (!rc) rc = setup_rope(m);
        if (rc) {
            qt_model_close(m);
            return rc;
        }
        *out = m;
        return 0;
    }
    int rc = open_config(model_path, config_path, &m->cfg, &m->quant_config);
    if (rc) {
        free(m->quant_config);
        free(m);
        return rc;
    }
    m->model_path = strdup(model_path);
    if (!m->model_path) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto fail;
    }
    if ((rc = qt_ckpt_open(model_path, &m->ckpt))) goto fail;
    const qt_model_config *c = &m->cfg;
    m->blocks = calloc((size_t)c->n_layers, sizeof *m->blocks);
    m->linears = calloc((size_t)c->n_layers * 9, sizeof *m->linears);
    if (!m->blocks || !m->linears) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto fail;
    }
    for (int64_t i = 0; i < c->n_layers; i++) {
        m->blocks[i].index = (int)i;
        m->blocks[i].sliding = c->layer_sliding[i];
    }
    loader L = {m, ""};
    switch (c->arch) {
    case QT_ARCH_BERT:
        L.prefix = c->has_head ? "bert." : "";
        rc = load_bert(&L);
        break;
    case QT_ARCH_MODERNBERT:
        L.prefix = "model.";
        rc = load_modernbert(&L);
        break;
    default:
        L.prefix = "model.";
        rc = load_decoder(&L);
        break;
    }
    if (rc || (rc = setup_rope(m))) goto fail;
    *out = m;
    return 0;
fail:
    qt_model_close(m);
    return rc ? rc : QTOOL_ERR_INTERNAL;
}

void qt_model_unpack(qt_model *m)
{
    qt_model_cuda_release(m);
    qt_model_unfuse(m);
    for (size_t i = 0; i < m->n_linears; i++) {
        qt_linear *l = m->linears[i];
        if (l->packed && m->desc && m->desc->free_packed) m->desc->free_packed(l->packed);
        l->packed = NULL;
        qt_free(QTOOL_DEVICE_CPU, l->input_scale);
        l->input_scale = NULL;
        l->input_scale_folded = 0;
    }
    qt_model_unfold(m);
    m->desc = NULL;
    m->inst = NULL;
    m->packed_device = -1;
}

int qt_model_check_plugin_device(const qtool_plugin_desc *desc, int device)
{
    if (device == QTOOL_DEVICE_CPU && !desc->matmul_cpu)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s has no CPU matmul", desc->name);
    if (device == QTOOL_DEVICE_CUDA && !desc->matmul_cuda)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s has no CUDA matmul", desc->name);
    return 0;
}

int qt_model_pack(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device)
{
    if (m->desc) qt_model_unpack(m);
    if (m->quant_config)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                       "%s is already quantized: its layers load through the plugin that reads its "
                       "quantization_config (qt_model_load_packed), not through pack",
                       m->model_path);
    int rc_dev = qt_model_check_plugin_device(desc, device);
    if (rc_dev) return rc_dev;
    m->desc = desc;
    m->inst = inst;
    m->packed_device = device;
    for (int64_t i = 0; i < m->cfg.n_layers; i++) {
        int rc = qt_model_pack_block(m, i, device);
        if (rc) {
            qt_model_unpack(m);
            return rc;
        }
    }
    return 0;
}

int qt_model_packed_memory(const qt_model *m, uint64_t bytes[QTOOL_MEM_COUNT])
{
    memset(bytes, 0, sizeof(uint64_t) * QTOOL_MEM_COUNT);
    if (!m->desc) return 0;
    for (size_t i = 0; i < m->n_linears; i++) {
        uint64_t b[QTOOL_MEM_COUNT] = {0};
        if (!m->linears[i]->packed) continue;
        int rc = m->desc->memory(m->linears[i]->packed, b);
        if (rc) return qt_fail(rc, "%s: plugin %s could not report its memory", m->linears[i]->name, m->desc->name);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++) bytes[c] += b[c];
    }
    for (int64_t i = 0; m->blocks && i < m->cfg.n_layers; i++) {
        const qt_block *bl = &m->blocks[i];
        const qt_linear *f[2] = {&bl->qkv, &bl->gate_up};
        for (int j = 0; bl->fused && j < 2; j++) {
            uint64_t b[QTOOL_MEM_COUNT] = {0};
            if (!f[j]->packed) continue;
            int rc = m->desc->memory(f[j]->packed, b);
            if (rc) return qt_fail(rc, "%s: plugin %s could not report its memory", f[j]->name, m->desc->name);
            for (int c = 0; c < QTOOL_MEM_COUNT; c++) bytes[c] += b[c];
        }
    }
    return 0;
}

void qt_model_close(qt_model *m)
{
    if (!m) return;
    qt_model_unpack(m);
    qt_free(QTOOL_DEVICE_CPU, m->hook_input);
    for (size_t i = 0; i < m->n_linears; i++) free(m->linears[i]->name);
    if (m->blocks) {
        for (int64_t i = 0; i < m->cfg.n_layers; i++) {
            free_norm(&m->blocks[i].norm1);
            free_norm(&m->blocks[i].norm2);
        }
    }
    free(m->blocks);
    free(m->linears);
    free_norm(&m->emb_norm);
    free_norm(&m->final_norm);
    free_norm(&m->head_norm);
    free_dense(&m->pre);
    free_dense(&m->classifier);
    qt_free(QTOOL_DEVICE_CPU, m->inv_freq_full);
    qt_free(QTOOL_DEVICE_CPU, m->inv_freq_sliding);
    if (m->ckpt) qt_ckpt_close(m->ckpt);
    qt_gguf_model_release(m);
    qt_model_config_free(&m->cfg);
    free(m->model_path);
    free(m->quant_config);
    free(m);
}
