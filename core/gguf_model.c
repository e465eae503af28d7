/* GGUF model files: export of a decoder packed by gguf_cpu for llama.cpp,
 * and reading such a file back as a qt_model (gguf_model.h). */
#include "gguf_model.h"

#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "alloc.h"
#include "error.h"
#include "fsutil.h"
#include "gguf.h"
#include "tensor.h"
#include "tokenizer.h"

/* What a model read from GGUF keeps: the mapping (embedding and Linears
 * point into it) and the embedding's view. */
struct qt_gguf_model {
    qt_gguf *g;
    qtool_tensor tok_emb;
};

/* Token types of tokenizer.ggml.token_type (llama.cpp's llama_token_type). */
enum { TOK_NORMAL = 1, TOK_CONTROL = 3, TOK_USER_DEFINED = 4, TOK_UNUSED = 5 };
/* llama.cpp's LLAMA_POOLING_TYPE_LAST. */
#define POOLING_LAST 3u

/* The block Linears in llama.cpp's names, with the runtime's member. */
typedef struct lin_slot {
    const char *name;
    size_t member; /* offsetof(qt_block, ...) */
    int role;
} lin_slot;

static const lin_slot lin_slots[] = {
    {"attn_q", offsetof(qt_block, q), QTOOL_ROLE_ATTN_Q},       {"attn_k", offsetof(qt_block, k), QTOOL_ROLE_ATTN_K},
    {"attn_v", offsetof(qt_block, v), QTOOL_ROLE_ATTN_V},       {"attn_output", offsetof(qt_block, o), QTOOL_ROLE_ATTN_OUT},
    {"ffn_gate", offsetof(qt_block, gate), QTOOL_ROLE_FFN_GATE}, {"ffn_up", offsetof(qt_block, up), QTOOL_ROLE_FFN_UP},
    {"ffn_down", offsetof(qt_block, down), QTOOL_ROLE_FFN_DOWN},
};
#define N_LIN_SLOTS (sizeof lin_slots / sizeof lin_slots[0])

static qt_linear *slot_linear(qt_block *b, const lin_slot *s)
{
    return (qt_linear *)((char *)b + s->member);
}

static const qt_linear *slot_linear_c(const qt_block *b, const lin_slot *s)
{
    return (const qt_linear *)((const char *)b + s->member);
}

/* Does the checkpoint's Linear of this slot carry a bias? */
static int slot_has_bias(const qt_model_config *c, const lin_slot *s)
{
    switch (s->role) {
    case QTOOL_ROLE_ATTN_Q: case QTOOL_ROLE_ATTN_K: case QTOOL_ROLE_ATTN_V: return c->attention_bias;
    case QTOOL_ROLE_ATTN_OUT: return c->attention_out_bias;
    default: return c->mlp_bias;
    }
}

/* [N, K] of the slot's Linear. */
static void slot_shape(const qt_model_config *c, const lin_slot *s, int64_t *n, int64_t *k)
{
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t QD = c->n_heads * c->head_dim, KD = c->n_kv_heads * c->head_dim;
    switch (s->role) {
    case QTOOL_ROLE_ATTN_Q: *n = QD; *k = H; break;
    case QTOOL_ROLE_ATTN_K: case QTOOL_ROLE_ATTN_V: *n = KD; *k = H; break;
    case QTOOL_ROLE_ATTN_OUT: *n = H; *k = QD; break;
    case QTOOL_ROLE_FFN_DOWN: *n = H; *k = I; break;
    default: *n = I; *k = H; break;
    }
}

static const char *gguf_arch_of(int arch)
{
    return arch == QT_ARCH_QWEN2 ? "qwen2" : arch == QT_ARCH_LLAMA ? "llama" : NULL;
}

/* llama.cpp's LLAMA graph rotates adjacent pairs (rope type NORM) where
 * transformers rotates the two halves of each head, so
 * convert_hf_to_gguf.py reorders the q and k rows of every head: GGUF row
 * 2j + s is transformers row s * d/2 + j. Rows move whole, so quantized
 * rows move bit for bit. `to_gguf` 0 undoes it. */
static void permute_rows(uint8_t *dst, const uint8_t *src, int64_t n_heads, int64_t head_dim, size_t row_bytes,
                         int to_gguf)
{
    const int64_t half = head_dim / 2;
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t j = 0; j < half; j++)
            for (int64_t s = 0; s < 2; s++) {
                size_t hf = (size_t)(h * head_dim + s * half + j), gg = (size_t)(h * head_dim + 2 * j + s);
                if (to_gguf) memcpy(dst + gg * row_bytes, src + hf * row_bytes, row_bytes);
                else memcpy(dst + hf * row_bytes, src + gg * row_bytes, row_bytes);
            }
}

/* Heads of a q (or k) Linear whose rows llama.cpp wants permuted; 0 when
 * none. */
static int64_t permuted_heads(const qt_model_config *c, int role)
{
    if (c->arch != QT_ARCH_LLAMA) return 0;
    if (role == QTOOL_ROLE_ATTN_Q) return c->n_heads;
    if (role == QTOOL_ROLE_ATTN_K) return c->n_kv_heads;
    return 0;
}

/* rope_freqs.weight of a llama3-scaled RoPE, as convert_hf_to_gguf.py
 * computes it: per frequency the divisor llama.cpp applies, so that
 * inv_freq / factor is transformers' rescaled inv_freq. */
static void llama3_rope_factors(const qt_rope_config *r, int64_t head_dim, float *out)
{
    double factor = r->factor, lo = r->low_freq_factor, hi = r->high_freq_factor;
    double old = (double)r->original_max_position_embeddings;
    double low_wl = old / lo, high_wl = old / hi;
    for (int64_t i = 0; i < head_dim / 2; i++) {
        float e = (float)(2 * i) / (float)head_dim;
        float inv = 1.0f / (float)pow((double)(float)r->theta, (double)e);
        double wl = 2.0 * M_PI / (double)inv, f;
        if (wl < high_wl) {
            f = 1.0;
        } else if (wl > low_wl) {
            f = factor;
        } else {
            double smooth = (old / wl - lo) / (hi - lo);
            f = 1.0 / ((1.0 - smooth) / factor + smooth);
        }
        out[i] = (float)f;
    }
}

int qt_gguf_model_is_gguf(const char *path)
{
    struct stat st;
    if (!path || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    FILE *f = fopen(path, "rb");
    char magic[4];
    int yes = f && fread(magic, 1, 4, f) == 4 && memcmp(magic, "GGUF", 4) == 0;
    if (f) fclose(f);
    return yes;
}

int qt_gguf_model_path_is_gguf(const char *path)
{
    size_t n = path ? strlen(path) : 0;
    return n > 5 && strcasecmp(path + n - 5, ".gguf") == 0;
}

/* ================================================================ export */

int qt_gguf_export_check(const qt_model *m)
{
    const qt_model_config *c = &m->cfg;
    if (!gguf_arch_of(c->arch))
        return qt_fail(QTOOL_ERR_UNSUPPORTED,
                       "%s: %s is an encoder; GGUF export covers the decoders (Qwen2, Llama) that llama.cpp runs as "
                       "qwen2/llama (write a safetensors checkpoint instead: --out DIR)",
                       m->model_path, c->architecture);
    if (c->hidden_act != QT_ACT_SILU)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: hidden_act is %s; llama.cpp's %s graph uses SiLU", m->model_path,
                       qt_act_name(c->hidden_act), gguf_arch_of(c->arch));
    if (c->arch == QT_ARCH_QWEN2) {
        if (c->n_heads * c->head_dim != c->hidden_size)
            return qt_fail(QTOOL_ERR_UNSUPPORTED,
                           "%s: heads x head_dim = %" PRId64 " differs from hidden_size %" PRId64
                           ", which llama.cpp's qwen2 graph assumes",
                           m->model_path, c->n_heads * c->head_dim, c->hidden_size);
        if (!c->attention_bias || c->attention_out_bias || c->mlp_bias)
            return qt_fail(QTOOL_ERR_UNSUPPORTED,
                           "%s: llama.cpp's qwen2 has biases on q, k and v only; this config has attention_bias=%d, "
                           "o_proj bias=%d, mlp_bias=%d",
                           m->model_path, c->attention_bias, c->attention_out_bias, c->mlp_bias);
    }
    if (c->head_dim % 2)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: head_dim %" PRId64 " is odd", m->model_path, c->head_dim);
    if (c->rope_full.type != c->rope_sliding.type || c->rope_full.theta != c->rope_sliding.theta)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: sliding layers with their own RoPE have no llama.cpp %s form",
                       m->model_path, gguf_arch_of(c->arch));
    return 0;
}

int qt_gguf_check_out(const char *path, int force)
{
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    if (S_ISDIR(st.st_mode)) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s is a folder, not a .gguf file", path);
    if (!force) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--out %s exists (pass --force to replace it)", path);
    return 0;
}

typedef struct exporter {
    const qt_model *m;
    qt_gguf_writer *w;
    const char *arch;
    char key[160];
    void **bufs; /* data the writer borrows until the write */
    size_t n_bufs, cap_bufs;
    qt_gguf_export_info *info;
} exporter;

static void note(exporter *e, const char *fmt, ...) QTOOL_PRINTF(2, 3);
static void note(exporter *e, const char *fmt, ...)
{
    size_t used = strlen(e->info->notes), cap = sizeof e->info->notes;
    if (used + 8 >= cap) return;
    int n = snprintf(e->info->notes + used, cap - used, "gguf: ");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < cap - used) vsnprintf(e->info->notes + used + n, cap - used - (size_t)n, fmt, ap);
    va_end(ap);
    used = strlen(e->info->notes);
    if (used + 1 < cap) {
        e->info->notes[used] = '\n';
        e->info->notes[used + 1] = '\0';
    }
}

static const char *akey(exporter *e, const char *suffix)
{
    snprintf(e->key, sizeof e->key, "%s.%s", e->arch, suffix);
    return e->key;
}

static void *keep(exporter *e, size_t bytes)
{
    if (e->n_bufs == e->cap_bufs) {
        size_t cap = e->cap_bufs ? 2 * e->cap_bufs : 64;
        void **nb = realloc(e->bufs, cap * sizeof *nb);
        if (!nb) return NULL;
        e->bufs = nb;
        e->cap_bufs = cap;
    }
    void *p = qt_alloc(QTOOL_DEVICE_CPU, bytes ? bytes : 1, QTOOL_MEM_OTHER);
    if (p) e->bufs[e->n_bufs++] = p;
    return p;
}

static int add_f32_1d(exporter *e, const char *name, const float *v, int64_t n)
{
    int64_t ne[1] = {n};
    return qt_gguf_add_tensor(e->w, name, QT_GGML_F32, 1, ne, v, (uint64_t)n * 4);
}

static int u32_of(int64_t v, uint32_t *out)
{
    if (v < 0 || v > UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

static int add_u32(exporter *e, const char *key, int64_t v)
{
    uint32_t u;
    if (u32_of(v, &u)) return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: %s = %" PRId64 " does not fit a u32", e->m->model_path, key, v);
    return qt_gguf_add_u32(e->w, key, u);
}

/* One block Linear: the plugin's saved tensors, checked. */
typedef struct layer_sink {
    const qt_linear *l;
    exporter *e;
    void *weight;
    int64_t rows, row_bytes;
    int32_t type;
    float *bias;
    int64_t bias_n;
    int have_w, have_t, have_b;
    char what[160]; /* why a tensor was refused */
} layer_sink;

static int sink_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    layer_sink *s = ctx;
    if (!suffix || !t || !t->data) return QTOOL_ERR_INVALID_ARGUMENT;
    if (t->device != QTOOL_DEVICE_CPU) {
        snprintf(s->what, sizeof s->what, "tensor '%s' is not on the CPU", suffix);
        return QTOOL_ERR_UNSUPPORTED;
    }
    if (!strcmp(suffix, "weight") && t->dtype == QTOOL_DTYPE_PACKED && t->ndim == 2 && t->shape[0] > 0 &&
        t->shape[1] > 0 && !s->have_w) {
        size_t bytes = (size_t)t->shape[0] * (size_t)t->shape[1];
        if (!(s->weight = keep(s->e, bytes))) return QTOOL_ERR_OUT_OF_MEMORY;
        memcpy(s->weight, t->data, bytes);
        s->rows = t->shape[0];
        s->row_bytes = t->shape[1];
        s->have_w = 1;
        return QTOOL_OK;
    }
    if (!strcmp(suffix, "ggml_type") && t->dtype == QTOOL_DTYPE_I32 && t->ndim == 1 && t->shape[0] == 1) {
        memcpy(&s->type, t->data, 4);
        s->have_t = 1;
        return QTOOL_OK;
    }
    if (!strcmp(suffix, "bias") && t->dtype == QTOOL_DTYPE_F32 && t->ndim == 1 && t->shape[0] > 0 && !s->have_b) {
        if (!(s->bias = keep(s->e, (size_t)t->shape[0] * 4))) return QTOOL_ERR_OUT_OF_MEMORY;
        memcpy(s->bias, t->data, (size_t)t->shape[0] * 4);
        s->bias_n = t->shape[0];
        s->have_b = 1;
        return QTOOL_OK;
    }
    snprintf(s->what, sizeof s->what, "tensor '%s' (%s, %d dims) has no place in a GGUF file", suffix,
             qt_dtype_name(t->dtype), t->ndim);
    return QTOOL_ERR_UNSUPPORTED;
}

static int export_linear(exporter *e, int64_t block, const lin_slot *slot, const qt_linear *l, int64_t *counts)
{
    const qt_model *m = e->m;
    const qtool_plugin_desc *d = m->desc;
    const int64_t N = l->info.out_features, K = l->info.in_features;
    layer_sink s = {0};
    s.l = l;
    s.e = e;
    qtool_save_sink sink = {&s, sink_put};
    qt_clear_error();
    int rc = d->save(l->packed, &sink);
    if (rc)
        return qt_fail(rc, "%s: plugin %s could not save it for GGUF (%s%s%s)", l->name, d->name, qt_status_name(rc),
                       s.what[0] ? ": " : "", s.what);
    uint64_t row = 0;
    int64_t kne[1] = {K};
    if (!s.have_w || !s.have_t)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: plugin %s saved no %s", l->name, d->name,
                       !s.have_w ? "PACKED 'weight'" : "I32 'ggml_type'");
    if (qt_ggml_nbytes(s.type, 1, kne, &row) || s.rows != N || (uint64_t)s.row_bytes != row)
        return qt_fail(QTOOL_ERR_FORMAT,
                       "%s: plugin %s saved %" PRId64 " rows of %" PRId64 " bytes as ggml type %d; a GGUF tensor of "
                       "[%" PRId64 ", %" PRId64 "] needs %" PRId64 " rows of its block bytes",
                       l->name, d->name, s.rows, s.row_bytes, (int)s.type, K, N, N);
    if (s.have_b != slot_has_bias(&m->cfg, slot) || (s.have_b && s.bias_n != N))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: the plugin's bias does not match the checkpoint's", l->name);
    int64_t heads = permuted_heads(&m->cfg, slot->role);
    void *wdata = s.weight;
    float *bdata = s.bias;
    if (heads) {
        uint8_t *pw = keep(e, (size_t)(N * s.row_bytes));
        if (!pw) return QTOOL_ERR_OUT_OF_MEMORY;
        permute_rows(pw, s.weight, heads, m->cfg.head_dim, (size_t)s.row_bytes, 1);
        wdata = pw;
        if (s.have_b) {
            if (!(bdata = keep(e, (size_t)N * 4))) return QTOOL_ERR_OUT_OF_MEMORY;
            permute_rows((uint8_t *)bdata, (const uint8_t *)s.bias, heads, m->cfg.head_dim, 4, 1);
        }
    }
    char name[QT_GGUF_MAX_NAME];
    int64_t ne[2] = {K, N};
    snprintf(name, sizeof name, "blk.%" PRId64 ".%s.weight", block, slot->name);
    if ((rc = qt_gguf_add_tensor(e->w, name, s.type, 2, ne, wdata, (uint64_t)(N * s.row_bytes)))) return rc;
    if (s.type >= 0 && s.type < QT_GGML_TYPE_LIMIT) counts[s.type]++;
    if (s.have_b) {
        snprintf(name, sizeof name, "blk.%" PRId64 ".%s.bias", block, slot->name);
        if ((rc = add_f32_1d(e, name, bdata, N))) return rc;
    }
    return 0;
}

/* llama.cpp's LLAMA_FTYPE of the plugin's type option. Single k-types have
 * none; the nearest mix (same default type) stands in. */
static int file_type_of(const char *type)
{
    static const struct {
        const char *name;
        int ftype;
    } t[] = {{"Q8_0", 7}, {"Q4_0", 2},  {"Q4_1", 3},   {"Q5_0", 8},   {"Q5_1", 9},
             {"Q4_K", 14}, {"Q5_K", 16}, {"Q6_K", 18}, {"Q4_K_M", 15}, {"Q5_K_S", 16}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (!strcmp(t[i].name, type)) return t[i].ftype;
    return -1;
}

static char *model_dir(const char *model_path)
{
    if (qt_is_dir(model_path)) return strdup(model_path);
    const char *slash = strrchr(model_path, '/');
    if (!slash) return strdup(".");
    return strndup(model_path, (size_t)(slash - model_path) + (slash == model_path));
}

/* A JSON file of the model folder, parsed; NULL when absent. */
static int read_json(const char *dir, const char *name, size_t limit, json_t **out)
{
    *out = NULL;
    char *path = qt_path_join(dir, name);
    if (!path) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if (!qt_file_exists(path)) {
        free(path);
        return 0;
    }
    char *text = NULL;
    size_t len = 0;
    int rc = qt_read_file(path, limit, &text, &len);
    if (!rc) {
        json_error_t err;
        *out = json_loadb(text, len, 0, &err);
        if (!*out || !json_is_object(*out)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: line %d: %s", path, err.line, *out ? "not an object" : err.text);
            json_decref(*out);
            *out = NULL;
        }
    }
    free(text);
    free(path);
    return rc;
}

/* A token id of config.json that fits u32, or -1. */
static int64_t config_id(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_array(v)) v = json_array_get(v, 0); /* eos_token_id may list several */
    if (!json_is_integer(v)) return -1;
    json_int_t i = json_integer_value(v);
    return i >= 0 && i <= (json_int_t)UINT32_MAX ? (int64_t)i : -1;
}

/* Does a pre-tokenizer (or a Sequence of them) include ByteLevel? */
static int has_byte_level(json_t *pt)
{
    const char *type = json_string_value(json_object_get(pt, "type"));
    if (!type) return 0;
    if (!strcmp(type, "ByteLevel")) return 1;
    if (!strcmp(type, "Sequence")) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(pt, "pretokenizers"), i, p) if (has_byte_level(p)) return 1;
    }
    return 0;
}

/* convert_hf_to_gguf.py makes added <|...|> tokens control tokens whatever
 * their "special" flag says (its does_token_look_special). */
static int looks_special(const char *s)
{
    size_t n = strlen(s);
    return n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>");
}

typedef struct tok_export {
    char **tokens;
    int32_t *types;
    char **merges;
    size_t n_merges;
    int64_t n;
} tok_export;

static void tok_export_free(tok_export *t)
{
    if (t->tokens)
        for (int64_t i = 0; i < t->n; i++) free(t->tokens[i]);
    if (t->merges)
        for (size_t i = 0; i < t->n_merges; i++) free(t->merges[i]);
    free(t->tokens);
    free(t->types);
    free(t->merges);
    memset(t, 0, sizeof *t);
}

/* Sets token `id` (the first spelling wins): 0, 1 when it does not fit,
 * -1 out of memory. */
static int set_token(tok_export *t, json_int_t id, const char *s, int type)
{
    if (!s || id < 0 || id >= t->n) return 1;
    if (t->tokens[id]) return 0;
    if (!(t->tokens[id] = strdup(s))) return -1;
    t->types[id] = type;
    return 0;
}

/* The tokenizer's arrays; returns 0 with `why` set when the file cannot be
 * represented (the caller writes "none"). */
static int collect_tokens(json_t *root, int64_t n_vocab, tok_export *t, const char **why)
{
    json_t *model = json_object_get(root, "model");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    t->n = n_vocab;
    t->tokens = calloc((size_t)n_vocab, sizeof *t->tokens);
    t->types = calloc((size_t)n_vocab, sizeof *t->types);
    t->merges = calloc(json_array_size(merges) + 1, sizeof *t->merges);
    if (!t->tokens || !t->types || !t->merges) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    /* Added tokens first: their type wins over the vocabulary's. */
    size_t i;
    json_t *a;
    json_array_foreach(json_object_get(root, "added_tokens"), i, a)
    {
        json_t *content = json_object_get(a, "content"), *id = json_object_get(a, "id");
        const char *s = json_string_value(content);
        if (!s || !json_is_integer(id) || strlen(s) != json_string_length(content)) {
            *why = "an added token of tokenizer.json has no integer id or no content";
            return 0;
        }
        int special = json_is_true(json_object_get(a, "special")) || looks_special(s);
        int r = set_token(t, json_integer_value(id), s, special ? TOK_CONTROL : TOK_USER_DEFINED);
        if (r < 0) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        if (r) {
            *why = "tokenizer.json has more tokens than the model's embedding rows";
            return 0;
        }
    }
    const char *key;
    json_t *id;
    json_object_foreach(vocab, key, id)
    {
        int r = json_is_integer(id) ? set_token(t, json_integer_value(id), key, TOK_NORMAL) : 1;
        if (r < 0) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        if (r) {
            *why = "tokenizer.json has more tokens than the model's embedding rows (or a non-integer id)";
            return 0;
        }
    }
    /* Ids the tokenizer does not use (embedding rows beyond it). */
    for (int64_t k = 0; k < n_vocab; k++) {
        if (t->tokens[k]) continue;
        char pad[32];
        snprintf(pad, sizeof pad, "[PAD%" PRId64 "]", k);
        if (!(t->tokens[k] = strdup(pad))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        t->types[k] = TOK_UNUSED;
    }
    /* Merges: "a b" strings, or [a, b] pairs in newer files. */
    json_array_foreach(merges, i, a)
    {
        const char *s = json_string_value(a);
        char *m = NULL;
        if (s) {
            m = strdup(s);
        } else if (json_is_array(a) && json_array_size(a) == 2 && json_is_string(json_array_get(a, 0)) &&
                   json_is_string(json_array_get(a, 1))) {
            const char *l = json_string_value(json_array_get(a, 0)), *r = json_string_value(json_array_get(a, 1));
            size_t n = strlen(l) + strlen(r) + 2;
            if ((m = malloc(n))) snprintf(m, n, "%s %s", l, r);
        } else {
            *why = "a merge of tokenizer.json is neither \"a b\" nor [a, b]";
            return 0;
        }
        if (!m) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        t->merges[t->n_merges++] = m;
    }
    return 0;
}

/* tokenizer.ggml.* from a byte-level BPE tokenizer.json beside the model;
 * model "none" (llama.cpp then loads the weights but cannot tokenize text)
 * when there is none or another kind. */
static int export_tokenizer(exporter *e, const char *dir, json_t *config)
{
    const qt_model_config *c = &e->m->cfg;
    json_t *root = NULL, *tcfg = NULL;
    tok_export t = {0};
    const char *why = NULL;
    int rc = read_json(dir, "tokenizer.json", QT_TOKENIZER_MAX_FILE_BYTES, &root);
    if (rc) return rc;
    json_t *model = json_object_get(root, "model");
    const char *mtype = json_string_value(json_object_get(model, "type"));
    if (!root) why = "no tokenizer.json beside the model";
    else if (!mtype || strcmp(mtype, "BPE")) why = "tokenizer.json is not a BPE tokenizer";
    else if (!has_byte_level(json_object_get(root, "pre_tokenizer")))
        why = "tokenizer.json is not byte-level BPE (llama.cpp's gpt2 tokenizer)";
    else if (!json_is_object(json_object_get(model, "vocab")) || !json_is_array(json_object_get(model, "merges")))
        why = "tokenizer.json has no model.vocab object or model.merges list";
    if (!why && (rc = collect_tokens(root, c->vocab_size, &t, &why))) goto done;
    if (why) {
        note(e, "%s: tokenizer.ggml.model = none (llama.cpp loads the weights but cannot tokenize text)", why);
        rc = qt_gguf_add_str(e->w, "tokenizer.ggml.model", "none");
        goto done;
    }
    /* llama.cpp picks its pre-tokenizer regex by name; convert_hf_to_gguf.py
     * names these two "qwen2" and "llama-bpe" (Llama 3). */
    const char *pre = c->arch == QT_ARCH_QWEN2 ? "qwen2" : "llama-bpe";
    if ((rc = qt_gguf_add_str(e->w, "tokenizer.ggml.model", "gpt2")) ||
        (rc = qt_gguf_add_str(e->w, "tokenizer.ggml.pre", pre)) ||
        (rc = qt_gguf_add_arr_str(e->w, "tokenizer.ggml.tokens", (const char *const *)t.tokens, (uint64_t)t.n)) ||
        (rc = qt_gguf_add_arr(e->w, "tokenizer.ggml.token_type", QT_GGUF_I32, t.types, (uint64_t)t.n)) ||
        (rc = qt_gguf_add_arr_str(e->w, "tokenizer.ggml.merges", (const char *const *)t.merges, t.n_merges)))
        goto done;
    static const char *const ids[][2] = {{"bos_token_id", "tokenizer.ggml.bos_token_id"},
                                         {"eos_token_id", "tokenizer.ggml.eos_token_id"},
                                         {"pad_token_id", "tokenizer.ggml.padding_token_id"}};
    for (size_t i = 0; i < 3 && !rc; i++) {
        int64_t v = config_id(config, ids[i][0]);
        if (v >= 0 && v < t.n) rc = qt_gguf_add_u32(e->w, ids[i][1], (uint32_t)v);
    }
    if (rc || (rc = read_json(dir, "tokenizer_config.json", QT_MODEL_MAX_CONFIG_BYTES, &tcfg))) goto done;
    json_t *add_bos = json_object_get(tcfg, "add_bos_token");
    if (json_is_boolean(add_bos) && (rc = qt_gguf_add_bool(e->w, "tokenizer.ggml.add_bos_token", json_is_true(add_bos))))
        goto done;
    json_t *tmpl = json_object_get(tcfg, "chat_template");
    if (json_is_string(tmpl) && strlen(json_string_value(tmpl)) == json_string_length(tmpl))
        rc = qt_gguf_add_str(e->w, "tokenizer.chat_template", json_string_value(tmpl));
    if (!rc)
        note(e, "tokenizer: gpt2 (byte-level BPE) from tokenizer.json, %" PRId64 " tokens, %zu merges, pre-tokenizer %s",
             t.n, t.n_merges, pre);
done:
    tok_export_free(&t);
    json_decref(root);
    json_decref(tcfg);
    return rc;
}

static int export_embedding(exporter *e)
{
    const qtool_tensor *t = e->m->tok_emb;
    int64_t V = t->shape[0], H = t->shape[1], ne[2] = {H, V};
    int type;
    const void *data = t->data;
    switch (t->dtype) {
    case QTOOL_DTYPE_F32: type = QT_GGML_F32; break;
    case QTOOL_DTYPE_F16: type = QT_GGML_F16; break;
    case QTOOL_DTYPE_BF16: type = QT_GGML_BF16; break;
    default: {
        /* F64: GGUF's float types stop at 32 bits for llama.cpp. */
        float *f = keep(e, (size_t)(V * H) * 4);
        if (!f) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        if (qt_convert_to_f32(f, t->data, t->dtype, V * H))
            return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: embedding dtype %s", e->m->model_path, qt_dtype_name(t->dtype));
        data = f;
        type = QT_GGML_F32;
    }
    }
    uint64_t nbytes = 0;
    qt_ggml_nbytes(type, 2, ne, &nbytes);
    int rc = qt_gguf_add_tensor(e->w, "token_embd.weight", type, 2, ne, data, nbytes);
    if (!rc)
        note(e, "token_embd kept in %s as in the checkpoint: qtool does not quantize embeddings (llama-quantize "
                "would give it the file's type)",
             qt_ggml_type_name(type));
    return rc;
}

static int export_metadata(exporter *e, json_t *cfgj, const char *cfg_text, const char *dir)
{
    const qt_model *m = e->m;
    const qt_model_config *c = &m->cfg;
    const char *A = e->arch;
    int rc;
    char qc[16384];
    if (!m->desc->quant_config_json || m->desc->quant_config_json(m->inst, qc, sizeof qc))
        return qt_fail(QTOOL_ERR_INTERNAL, "plugin %s cannot describe its quantization_config", m->desc->name);
    json_t *qj = json_loads(qc, 0, NULL);
    const char *type = json_string_value(json_object_get(qj, "type"));
    int ftype = type ? file_type_of(type) : -1;
    json_decref(qj);
    if (ftype < 0)
        return qt_fail(QTOOL_ERR_INTERNAL, "plugin %s: quantization_config %s names no GGUF file type", m->desc->name, qc);

    /* general.name: the config's _name_or_path, else the folder's name. */
    const char *name = json_string_value(json_object_get(cfgj, "_name_or_path"));
    char base[256];
    if (!name || !*name) {
        size_t n = strlen(dir);
        while (n > 1 && dir[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && dir[b - 1] != '/') b--;
        snprintf(base, sizeof base, "%.*s", (int)(n - b), dir + b);
        name = base;
    }
    if ((rc = qt_gguf_add_str(e->w, "general.architecture", A)) || (rc = qt_gguf_add_str(e->w, "general.name", name)) ||
        (rc = qt_gguf_add_u32(e->w, "general.alignment", QT_GGUF_DEFAULT_ALIGNMENT)) ||
        (rc = qt_gguf_add_u32(e->w, "general.file_type", (uint32_t)ftype)) ||
        (rc = qt_gguf_add_u32(e->w, "general.quantization_version", 2)) ||
        (rc = add_u32(e, akey(e, "block_count"), c->n_layers)) ||
        (rc = add_u32(e, akey(e, "context_length"), c->max_position_embeddings)) ||
        (rc = add_u32(e, akey(e, "embedding_length"), c->hidden_size)) ||
        (rc = add_u32(e, akey(e, "feed_forward_length"), c->intermediate_size)) ||
        (rc = add_u32(e, akey(e, "attention.head_count"), c->n_heads)) ||
        (rc = add_u32(e, akey(e, "attention.head_count_kv"), c->n_kv_heads)) ||
        (rc = qt_gguf_add_f32(e->w, akey(e, "rope.freq_base"), (float)c->rope_full.theta)) ||
        (rc = qt_gguf_add_f32(e->w, akey(e, "attention.layer_norm_rms_epsilon"), (float)c->norm_eps)) ||
        (rc = add_u32(e, akey(e, "rope.dimension_count"), c->head_dim)) ||
        (rc = add_u32(e, akey(e, "vocab_size"), c->vocab_size)))
        return rc;
    if (c->head_dim * c->n_heads != c->hidden_size &&
        ((rc = add_u32(e, akey(e, "attention.key_length"), c->head_dim)) ||
         (rc = add_u32(e, akey(e, "attention.value_length"), c->head_dim))))
        return rc;
    if (c->rope_full.type == QT_ROPE_LINEAR &&
        ((rc = qt_gguf_add_str(e->w, akey(e, "rope.scaling.type"), "linear")) ||
         (rc = qt_gguf_add_f32(e->w, akey(e, "rope.scaling.factor"), (float)c->rope_full.factor))))
        return rc;
    /* The pooling llama.cpp applies when asked for embeddings: the last
     * token, the state this model's head reads. */
    if ((rc = qt_gguf_add_u32(e->w, akey(e, "pooling_type"), POOLING_LAST))) return rc;
    const char **labels = calloc((size_t)c->num_labels, sizeof *labels);
    char (*names)[32] = calloc((size_t)c->num_labels, sizeof *names);
    if (!labels || !names) {
        free(labels);
        free(names);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t i = 0; i < c->num_labels; i++) {
        snprintf(names[i], sizeof names[i], "LABEL_%" PRId64, i);
        labels[i] = c->id2label && c->id2label[i] ? c->id2label[i] : names[i];
    }
    rc = qt_gguf_add_arr_str(e->w, akey(e, "classifier.output_labels"), labels, (uint64_t)c->num_labels);
    free(labels);
    free(names);
    if (rc || (rc = export_tokenizer(e, dir, cfgj))) return rc;

    /* What llama.cpp has no key or tensor for, for qtool to read back. */
    if ((rc = qt_gguf_add_str(e->w, "qtool.config_json", cfg_text)) ||
        (rc = qt_gguf_add_str(e->w, "qtool.quantization_config", qc)) ||
        (rc = qt_gguf_add_u32(e->w, "qtool.num_labels", (uint32_t)c->num_labels)) ||
        (rc = qt_gguf_add_str(e->w, "qtool.pooling", "last")) ||
        (rc = qt_gguf_add_arr(e->w, "qtool.classifier.weight", QT_GGUF_F32, m->classifier.weight,
                              (uint64_t)(c->num_labels * c->hidden_size))))
        return rc;
    if (c->has_pad_token && c->pad_token_id >= INT32_MIN && c->pad_token_id <= INT32_MAX &&
        (rc = qt_gguf_add_i32(e->w, "qtool.pad_token_id", (int32_t)c->pad_token_id)))
        return rc;
    note(e, "classification head score [%" PRId64 ", %" PRId64 "] stored as metadata qtool.classifier.weight (F32); "
            "llama.cpp does not use it: its %s models have no classification head (cls.output is read only by qwen3 "
            "and the BERT family, for pooling rank) and it refuses files with tensors it does not create",
         c->num_labels, c->hidden_size, A);
    note(e, "llama.cpp runs this file as a text model whose output layer is the tied token_embd; with embeddings "
            "on and pooling last (the file's default) it returns the final normed hidden state of the last token, "
            "the vector qtool's head multiplies (qtool skips trailing pad tokens, llama.cpp does not)");
    return 0;
}

int qt_gguf_export(const qt_model *m, const char *config_path, const char *out_path, int force,
                   qt_gguf_export_info *info)
{
    memset(info, 0, sizeof *info);
    const qtool_plugin_desc *d = m->desc;
    if (!d) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "GGUF export of a model that is not packed");
    if (strcmp(d->name, QT_GGUF_EXPORT_PLUGIN))
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "GGUF export needs layers packed by plugin %s, not %s",
                       QT_GGUF_EXPORT_PLUGIN, d->name);
    if (!d->save) return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot save packed layers", d->name);
    if (m->packed_device != QTOOL_DEVICE_CPU)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "GGUF export reads layers packed on the CPU");
    if (m->quant_config) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is already quantized", m->model_path);
    int rc = qt_gguf_export_check(m);
    if (rc) return rc;
    for (size_t i = 0; i < m->n_linears; i++) {
        const qt_linear *l = m->linears[i];
        if (!l->packed) return qt_fail(QTOOL_ERR_INTERNAL, "%s is not packed", l->name);
        if (l->input_scale || l->input_scale_folded)
            return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: an input scale has no GGUF form", l->name);
    }
    if ((rc = qt_gguf_check_out(out_path, force))) return rc;

    const qt_model_config *c = &m->cfg;
    exporter e = {0};
    e.m = m;
    e.arch = gguf_arch_of(c->arch);
    e.info = info;
    char *dir = model_dir(m->model_path);
    char *cfg_file = config_path ? strdup(config_path) : dir ? qt_path_join(dir, "config.json") : NULL;
    char *cfg_text = NULL;
    size_t cfg_len = 0;
    json_t *cfgj = NULL;
    int64_t counts[QT_GGML_TYPE_LIMIT] = {0};
    e.w = qt_gguf_writer_new();
    if (!dir || !cfg_file || !e.w) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((rc = qt_read_file(cfg_file, QT_MODEL_MAX_CONFIG_BYTES, &cfg_text, &cfg_len))) goto done;
    json_error_t jerr;
    cfgj = json_loadb(cfg_text, cfg_len, 0, &jerr);
    if (!json_is_object(cfgj) || strlen(cfg_text) != cfg_len) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: not a JSON object", cfg_file);
        goto done;
    }
    if ((rc = export_metadata(&e, cfgj, cfg_text, dir))) goto done;

    if ((rc = export_embedding(&e))) goto done;
    if (c->rope_full.type == QT_ROPE_LLAMA3) {
        float *f = keep(&e, (size_t)(c->head_dim / 2) * 4);
        if (!f) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        llama3_rope_factors(&c->rope_full, c->head_dim, f);
        if ((rc = add_f32_1d(&e, "rope_freqs.weight", f, c->head_dim / 2))) goto done;
    }
    for (int64_t i = 0; i < c->n_layers && !rc; i++) {
        const qt_block *b = &m->blocks[i];
        char name[QT_GGUF_MAX_NAME];
        snprintf(name, sizeof name, "blk.%" PRId64 ".attn_norm.weight", i);
        if ((rc = add_f32_1d(&e, name, b->norm1.weight, c->hidden_size))) break;
        for (size_t s = 0; s < N_LIN_SLOTS && !rc; s++) {
            if (lin_slots[s].role == QTOOL_ROLE_FFN_GATE) {
                snprintf(name, sizeof name, "blk.%" PRId64 ".ffn_norm.weight", i);
                if ((rc = add_f32_1d(&e, name, b->norm2.weight, c->hidden_size))) break;
            }
            rc = export_linear(&e, i, &lin_slots[s], slot_linear_c(b, &lin_slots[s]), counts);
        }
    }
    if (rc || (rc = add_f32_1d(&e, "output_norm.weight", m->final_norm.weight, c->hidden_size))) goto done;

    if (c->arch == QT_ARCH_QWEN2) {
        int64_t n_sliding = 0;
        for (int64_t i = 0; i < c->n_layers; i++) n_sliding += c->layer_sliding[i] != 0;
        if (n_sliding)
            note(&e, "%" PRId64 " of %" PRId64 " layers use a sliding window of %" PRId64 " tokens in qtool (and "
                     "transformers); llama.cpp's qwen2 attends over the whole sequence: results agree only for "
                     "sequences of at most %" PRId64 " tokens",
                 n_sliding, c->n_layers, c->sliding_window, c->sliding_window);
    }
    {
        char types[256] = "";
        for (int t = 0; t < QT_GGML_TYPE_LIMIT; t++)
            if (counts[t]) {
                size_t u = strlen(types);
                snprintf(types + u, sizeof types - u, "%s%s x%" PRId64, u ? ", " : "", qt_ggml_type_name(t), counts[t]);
            }
        note(&e, "block Linears: %s (the plugin's types, fallbacks included); norms and biases F32", types);
    }
    if ((rc = qt_gguf_write(e.w, out_path))) goto done;
    struct stat st;
    if (stat(out_path, &st) == 0) info->file_bytes = (uint64_t)st.st_size;
    {
        qt_gguf *g = NULL;
        /* Read back what was written: the file must open as it will for eval. */
        if ((rc = qt_gguf_open(out_path, &g))) goto done;
        info->n_tensors = qt_gguf_n_tensors(g);
        info->n_kv = qt_gguf_n_kv(g);
        qt_gguf_close(g);
    }
done:
    qt_gguf_writer_free(e.w);
    for (size_t i = 0; i < e.n_bufs; i++) qt_free(QTOOL_DEVICE_CPU, e.bufs[i]);
    free(e.bufs);
    json_decref(cfgj);
    free(cfg_text);
    free(cfg_file);
    free(dir);
    return rc;
}

/* ================================================================ import */

typedef struct reader {
    qt_model *m;
    qt_gguf *g;
    const char *path;
    int64_t used; /* tensors taken */
} reader;

static const qt_gguf_tensor *find_t(reader *r, const char *name)
{
    const qt_gguf_tensor *t = qt_gguf_find_tensor(r->g, name);
    if (t) r->used++;
    return t;
}

static const char *ne_str(const qt_gguf_tensor *t, char *buf, size_t len)
{
    int n = snprintf(buf, len, "[");
    for (int d = 0; d < t->n_dims && n > 0 && (size_t)n < len; d++)
        n += snprintf(buf + n, len - (size_t)n, "%s%" PRId64, d ? ", " : "", t->ne[d]);
    if (n > 0 && (size_t)n < len) snprintf(buf + n, len - (size_t)n, "]");
    return buf;
}

/* A tensor of this ggml shape (ne order; ne1 < 0 for 1-D). */
static int need_t(reader *r, const char *name, int64_t ne0, int64_t ne1, const qt_gguf_tensor **out)
{
    const qt_gguf_tensor *t = find_t(r, name);
    char got[96];
    *out = NULL;
    if (!t)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is missing", r->path, name);
    int nd = ne1 < 0 ? 1 : 2;
    if (t->n_dims != nd || t->ne[0] != ne0 || (nd == 2 && t->ne[1] != ne1)) {
        if (nd == 1)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is %s, the config needs [%" PRId64 "]", r->path, name,
                           ne_str(t, got, sizeof got), ne0);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is %s, the config needs [%" PRId64 ", %" PRId64 "]", r->path,
                       name, ne_str(t, got, sizeof got), ne0, ne1);
    }
    *out = t;
    return 0;
}

static int float_dtype(int ggml_type)
{
    return ggml_type == QT_GGML_F32 ? QTOOL_DTYPE_F32
         : ggml_type == QT_GGML_F16 ? QTOOL_DTYPE_F16
         : ggml_type == QT_GGML_BF16 ? QTOOL_DTYPE_BF16
                                     : -1;
}

static int read_norm(reader *r, qt_norm *nm, const char *name)
{
    const qt_model_config *c = &r->m->cfg;
    const qt_gguf_tensor *t;
    int rc = need_t(r, name, c->hidden_size, -1, &t);
    if (rc) return rc;
    int dt = float_dtype(t->type);
    if (dt < 0)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is %s, expected F32", r->path, name, qt_ggml_type_name(t->type));
    nm->kind = QT_NORM_RMS;
    nm->dim = c->hidden_size;
    nm->eps = (float)c->norm_eps;
    nm->weight = qt_alloc(QTOOL_DEVICE_CPU, (size_t)c->hidden_size * 4, QTOOL_MEM_WEIGHTS);
    if (!nm->weight) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    qt_convert_to_f32(nm->weight, t->data, dt, c->hidden_size);
    return 0;
}

static int check_key(reader *r, const char *key, int64_t want)
{
    int64_t v;
    int rc = qt_gguf_get_int(r->g, key, &v);
    if (rc) return rc;
    if (v != want)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %s is %" PRId64 " but the file's config says %" PRId64, r->path, key, v,
                       want);
    return 0;
}

static int check_fkey(reader *r, const char *key, double want)
{
    double v;
    int rc = qt_gguf_get_float(r->g, key, &v);
    if (rc) return rc;
    if ((float)v != (float)want)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %s is %g but the file's config says %g", r->path, key, v, want);
    return 0;
}

/* The llama.cpp keys must say what the config says: llama.cpp runs the
 * former, qtool the latter. */
static int check_keys(reader *r, const char *A)
{
    const qt_model_config *c = &r->m->cfg;
    char k[160];
#define KEY(s) (snprintf(k, sizeof k, "%s.%s", A, s), k)
    int rc;
    if ((rc = check_key(r, KEY("block_count"), c->n_layers)) ||
        (rc = check_key(r, KEY("embedding_length"), c->hidden_size)) ||
        (rc = check_key(r, KEY("feed_forward_length"), c->intermediate_size)) ||
        (rc = check_key(r, KEY("attention.head_count"), c->n_heads)) ||
        (rc = check_key(r, KEY("attention.head_count_kv"), c->n_kv_heads)) ||
        (rc = check_key(r, KEY("context_length"), c->max_position_embeddings)) ||
        (rc = check_key(r, KEY("rope.dimension_count"), c->head_dim)) ||
        (rc = check_fkey(r, KEY("rope.freq_base"), c->rope_full.theta)) ||
        (rc = check_fkey(r, KEY("attention.layer_norm_rms_epsilon"), c->norm_eps)))
        return rc;
    if (qt_gguf_find_key(r->g, KEY("attention.key_length")) >= 0 &&
        (rc = check_key(r, KEY("attention.key_length"), c->head_dim)))
        return rc;
#undef KEY
    return 0;
}

static int read_classifier(reader *r)
{
    qt_model *m = r->m;
    const qt_model_config *c = &m->cfg;
    int et;
    uint64_t n;
    int rc = qt_gguf_get_arr(r->g, "qtool.classifier.weight", &et, &n);
    if (rc) return rc;
    uint64_t want = (uint64_t)c->num_labels * (uint64_t)c->hidden_size;
    if (et != QT_GGUF_F32 || n != want)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: qtool.classifier.weight must be %" PRIu64 " f32 ([%" PRId64 ", %" PRId64
                                         "]), found %" PRIu64 " %s",
                       r->path, want, c->num_labels, c->hidden_size, n, qt_gguf_type_name(et));
    m->classifier.in = c->hidden_size;
    m->classifier.out = c->num_labels;
    m->classifier.weight = qt_alloc(QTOOL_DEVICE_CPU, (size_t)want * 4, QTOOL_MEM_WEIGHTS);
    if (!m->classifier.weight) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    return qt_gguf_arr_copy(r->g, "qtool.classifier.weight", QT_GGUF_F32, m->classifier.weight, (size_t)want * 4);
}

/* Names of the tensors a file of this config holds: for a message about
 * one that is not. */
static int expected_name(const qt_model_config *c, const char *name)
{
    if (!strcmp(name, "token_embd.weight") || !strcmp(name, "output_norm.weight")) return 1;
    if (!strcmp(name, "rope_freqs.weight")) return c->rope_full.type == QT_ROPE_LLAMA3;
    long long blk;
    int off = 0;
    if (sscanf(name, "blk.%lld.%n", &blk, &off) != 1 || off == 0 || blk < 0 || blk >= c->n_layers) return 0;
    const char *rest = name + off;
    if (!strcmp(rest, "attn_norm.weight") || !strcmp(rest, "ffn_norm.weight")) return 1;
    for (size_t s = 0; s < N_LIN_SLOTS; s++) {
        size_t n = strlen(lin_slots[s].name);
        if (strncmp(rest, lin_slots[s].name, n) || rest[n] != '.') continue;
        if (!strcmp(rest + n + 1, "weight")) return 1;
        if (!strcmp(rest + n + 1, "bias")) return slot_has_bias(c, &lin_slots[s]);
    }
    return 0;
}

static int read_blocks(reader *r)
{
    qt_model *m = r->m;
    const qt_model_config *c = &m->cfg;
    char name[QT_GGUF_MAX_NAME];
    int rc;
    for (int64_t i = 0; i < c->n_layers; i++) {
        qt_block *b = &m->blocks[i];
        b->index = (int)i;
        b->sliding = c->layer_sliding[i];
        snprintf(name, sizeof name, "blk.%" PRId64 ".attn_norm.weight", i);
        if ((rc = read_norm(r, &b->norm1, name))) return rc;
        snprintf(name, sizeof name, "blk.%" PRId64 ".ffn_norm.weight", i);
        if ((rc = read_norm(r, &b->norm2, name))) return rc;
        for (size_t s = 0; s < N_LIN_SLOTS; s++) {
            const lin_slot *slot = &lin_slots[s];
            qt_linear *l = slot_linear(b, slot);
            int64_t N, K;
            slot_shape(c, slot, &N, &K);
            const qt_gguf_tensor *w, *bias;
            snprintf(name, sizeof name, "blk.%" PRId64 ".%s.weight", i, slot->name);
            if ((rc = need_t(r, name, K, N, &w))) return rc;
            if (!(l->name = strdup(name))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            m->linears[m->n_linears++] = l; /* from here qt_model_close frees the name */
            snprintf(name, sizeof name, "blk.%" PRId64 ".%s.bias", i, slot->name);
            if (slot_has_bias(c, slot)) {
                if ((rc = need_t(r, name, N, -1, &bias))) return rc;
                if (bias->type != QT_GGML_F32)
                    return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is %s, expected F32", r->path, name,
                                   qt_ggml_type_name(bias->type));
            }
            l->info.struct_size = sizeof l->info;
            l->info.role = slot->role;
            l->info.name = l->name;
            l->info.in_features = K;
            l->info.out_features = N;
            l->info.block_index = (int32_t)i;
            l->info.n_blocks = (int32_t)c->n_layers;
        }
    }
    return 0;
}

int qt_gguf_model_read(qt_model *m, const char *path, const char *config_path)
{
    struct qt_gguf_model *gm = calloc(1, sizeof *gm);
    if (!gm) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    m->gguf = gm;
    if (!(m->model_path = strdup(path))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    int rc = qt_gguf_open(path, &gm->g);
    if (rc) return rc;
    reader r = {m, gm->g, path, 0};
    const char *A = NULL, *text = NULL, *qc = NULL;
    uint64_t len = 0;
    if ((rc = qt_gguf_get_str(r.g, "general.architecture", &A, NULL))) return rc;
    if (qt_gguf_find_key(r.g, "qtool.config_json") < 0 || qt_gguf_find_key(r.g, "qtool.quantization_config") < 0)
        return qt_fail(QTOOL_ERR_UNSUPPORTED,
                       "%s: no qtool.config_json / qtool.quantization_config: qtool reads back the GGUF classifiers "
                       "'qtool quantize' writes, not other GGUF files",
                       path);
    if (config_path) {
        rc = qt_model_config_load(config_path, &m->cfg);
    } else {
        char where[512];
        snprintf(where, sizeof where, "%s (qtool.config_json)", path);
        if (!(rc = qt_gguf_get_str(r.g, "qtool.config_json", &text, &len)))
            rc = len > QT_MODEL_MAX_CONFIG_BYTES
                     ? qt_fail(QTOOL_ERR_FORMAT, "%s: qtool.config_json has %" PRIu64 " bytes (at most %u)", path, len,
                               (unsigned)QT_MODEL_MAX_CONFIG_BYTES)
                     : qt_model_config_parse(text, (size_t)len, where, &m->cfg);
    }
    if (rc) return rc;
    const qt_model_config *c = &m->cfg;
    const char *want = gguf_arch_of(c->arch);
    if (!want || strcmp(want, A))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: general.architecture is '%s' but the config is %s", path, A,
                       c->architecture);
    if ((rc = qt_gguf_get_str(r.g, "qtool.quantization_config", &qc, NULL))) return rc;
    if (!(m->quant_config = strdup(qc))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if ((rc = check_keys(&r, A))) return rc;

    const qt_gguf_tensor *t;
    if ((rc = need_t(&r, "token_embd.weight", c->hidden_size, c->vocab_size, &t))) return rc;
    int dt = float_dtype(t->type);
    if (dt < 0)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: token_embd.weight is %s; qtool reads F32, F16 or BF16 embeddings",
                       path, qt_ggml_type_name(t->type));
    gm->tok_emb.data = (void *)t->data;
    gm->tok_emb.dtype = dt;
    gm->tok_emb.device = QTOOL_DEVICE_CPU;
    gm->tok_emb.ndim = 2;
    gm->tok_emb.shape[0] = c->vocab_size;
    gm->tok_emb.shape[1] = c->hidden_size;
    m->tok_emb = &gm->tok_emb;

    m->blocks = calloc((size_t)c->n_layers, sizeof *m->blocks);
    m->linears = calloc((size_t)c->n_layers * N_LIN_SLOTS, sizeof *m->linears);
    if (!m->blocks || !m->linears) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if ((rc = read_blocks(&r))) return rc;
    if ((rc = read_norm(&r, &m->final_norm, "output_norm.weight"))) return rc;
    if (!c->has_head) return qt_fail(QTOOL_ERR_FORMAT, "%s: the config has no classification head", path);
    if ((rc = read_classifier(&r))) return rc;
    if (c->rope_full.type == QT_ROPE_LLAMA3) {
        /* Only llama.cpp reads it (qtool rescales from the config), but it
         * must describe the same RoPE. */
        int64_t half = c->head_dim / 2;
        if ((rc = need_t(&r, "rope_freqs.weight", half, -1, &t))) return rc;
        float *f = malloc((size_t)half * 4 + 4);
        if (!f) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        llama3_rope_factors(&c->rope_full, c->head_dim, f);
        int same = t->type == QT_GGML_F32 && memcmp(f, t->data, (size_t)half * 4) == 0;
        free(f);
        if (!same)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: rope_freqs.weight disagrees with the config's llama3 rope scaling", path);
    }
    if (r.used != qt_gguf_n_tensors(r.g)) {
        for (int64_t i = 0; i < qt_gguf_n_tensors(r.g); i++) {
            const qt_gguf_tensor *x = qt_gguf_tensor_at(r.g, i);
            if (!expected_name(c, x->name))
                return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' has no place in a %s classifier of this config", path,
                               x->name, A);
        }
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %" PRId64 " tensors, %" PRId64 " expected", path, qt_gguf_n_tensors(r.g),
                       r.used);
    }
    return 0;
}

/* The plugin's load slot reads a Linear from the file through this. */
typedef struct gguf_source {
    const qt_linear *l;
    const qt_gguf_tensor *w, *b;
    const void *wdata, *bdata; /* the tensors' bytes, or un-permuted copies */
    int32_t type;
    char missing[96];
} gguf_source;

static int gsrc_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    gguf_source *s = ctx;
    memset(out, 0, sizeof *out);
    out->device = QTOOL_DEVICE_CPU;
    if (suffix && !strcmp(suffix, "weight")) {
        out->data = (void *)s->wdata;
        out->dtype = QTOOL_DTYPE_PACKED;
        out->ndim = 2;
        out->shape[0] = s->w->ne[1];
        out->shape[1] = (int64_t)(s->w->nbytes / (uint64_t)s->w->ne[1]);
        return QTOOL_OK;
    }
    if (suffix && !strcmp(suffix, "ggml_type")) {
        out->data = &s->type;
        out->dtype = QTOOL_DTYPE_I32;
        out->ndim = 1;
        out->shape[0] = 1;
        return QTOOL_OK;
    }
    if (suffix && !strcmp(suffix, "bias") && s->b) {
        out->data = (void *)s->bdata;
        out->dtype = QTOOL_DTYPE_F32;
        out->ndim = 1;
        out->shape[0] = s->b->ne[0];
        return QTOOL_OK;
    }
    snprintf(s->missing, sizeof s->missing, "%s", suffix ? suffix : "(null)");
    return QTOOL_ERR_FORMAT;
}

static int gsrc_has(void *ctx, const char *suffix)
{
    gguf_source *s = ctx;
    return suffix && (!strcmp(suffix, "weight") || !strcmp(suffix, "ggml_type") || (!strcmp(suffix, "bias") && s->b));
}

int qt_gguf_model_load_packed(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device)
{
    if (m->desc) qt_model_unpack(m);
    if (!m->gguf || !m->gguf->g) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s was not read from GGUF", m->model_path);
    if (!desc->load) return qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot load saved layers", desc->name);
    int rc_dev = qt_model_check_plugin_device(desc, device);
    if (rc_dev) return rc_dev;
    m->desc = desc;
    m->inst = inst;
    m->packed_device = device;
    const qt_model_config *c = &m->cfg;
    qt_gguf *g = m->gguf->g;
    for (size_t i = 0; i < m->n_linears; i++) {
        qt_linear *l = m->linears[i];
        gguf_source s = {0};
        s.l = l;
        s.w = qt_gguf_find_tensor(g, l->name);
        char bname[QT_GGUF_MAX_NAME + 8];
        size_t n = strlen(l->name);
        snprintf(bname, sizeof bname, "%.*sbias", (int)(n - strlen("weight")), l->name);
        s.b = qt_gguf_find_tensor(g, bname);
        if (!s.w) {
            qt_model_unpack(m);
            return qt_fail(QTOOL_ERR_INTERNAL, "%s: tensor '%s' vanished", m->model_path, l->name);
        }
        s.type = s.w->type;
        s.wdata = s.w->data;
        s.bdata = s.b ? s.b->data : NULL;
        uint8_t *wp = NULL, *bp = NULL;
        int64_t heads = permuted_heads(c, l->info.role);
        if (heads) {
            size_t rb = (size_t)(s.w->nbytes / (uint64_t)s.w->ne[1]);
            wp = malloc((size_t)s.w->nbytes);
            bp = s.b ? malloc((size_t)s.b->nbytes) : NULL;
            if (!wp || (s.b && !bp)) {
                free(wp);
                free(bp);
                qt_model_unpack(m);
                return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            }
            permute_rows(wp, s.w->data, heads, c->head_dim, rb, 0);
            s.wdata = wp;
            if (bp) {
                permute_rows(bp, s.b->data, heads, c->head_dim, 4, 0);
                s.bdata = bp;
            }
        }
        qtool_load_source src = {&s, gsrc_get, gsrc_has};
        qtool_packed *p = NULL;
        qt_clear_error();
        int rc = desc->load(inst, &l->info, device, &src, &p);
        free(wp);
        free(bp);
        if (rc || !p) {
            if (!rc) rc = QTOOL_ERR_INTERNAL;
            if (p && desc->free_packed) desc->free_packed(p);
            if (s.missing[0])
                qt_fail(rc, "%s: plugin %s could not load %s: it asked for '%s', which a GGUF tensor does not have",
                        m->model_path, desc->name, l->name, s.missing);
            else
                qt_fail(rc, "%s: plugin %s could not load %s (%s %s: %s)", m->model_path, desc->name, l->name,
                        qt_ggml_type_name(s.type), s.b ? "with bias" : "", qt_status_name(rc));
            qt_model_unpack(m);
            return rc;
        }
        l->packed = p;
    }
    return 0;
}

void qt_gguf_model_release(qt_model *m)
{
    if (!m || !m->gguf) return;
    qt_gguf_close(m->gguf->g);
    free(m->gguf);
    m->gguf = NULL;
}
