#include "synth.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "metrics.h"
#include "safetensors.h"

/* The runtime's xoshiro256** (metrics.h), seeded through splitmix64. */
static double rng_uniform(qt_rng *r) { return (double)(qt_rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_normal(qt_rng *r)
{
    double u = rng_uniform(r), v = rng_uniform(r);
    return sqrt(-2.0 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

/* Student-t with 4 degrees of freedom, scaled to unit variance: the heavy
 * tails of trained weights. */
static double heavy(qt_rng *r)
{
    double z = rng_normal(r), c = 0;
    for (int i = 0; i < 4; i++) {
        double g = rng_normal(r);
        c += g * g;
    }
    return z / sqrt(c / 4.0) / sqrt(2.0);
}

typedef struct builder {
    qt_st_writer *w;
    qt_rng rng;
    int rc;
    const qt_synth_spec *spec;
    int *outlier_ch; /* hidden channels that carry large activations */
    int n_outlier;
} builder;

static float *new_buf(builder *b, int64_t n)
{
    float *p = malloc((size_t)n * sizeof *p);
    if (!p && !b->rc) b->rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    return p;
}

static void put(builder *b, const char *name, float *data, int ndim, int64_t d0, int64_t d1)
{
    if (!b->rc && data) {
        qtool_tensor t = {.data = data, .dtype = QTOOL_DTYPE_F32, .device = QTOOL_DEVICE_CPU, .ndim = ndim};
        t.shape[0] = d0;
        t.shape[1] = d1;
        b->rc = qt_st_writer_add(b->w, name, &t);
    }
    free(data);
}

/* A Linear weight [out, in]: heavy-tailed, std ~ gain/sqrt(in), with the
 * rows reading outlier channels scaled down (as trained nets compensate). */
static void linear(builder *b, const char *name, int64_t out, int64_t in, double gain, int reads_hidden)
{
    float *w = new_buf(b, out * in);
    if (!w) return;
    double sd = gain / sqrt((double)in);
    for (int64_t i = 0; i < out * in; i++) w[i] = (float)(sd * heavy(&b->rng));
    if (reads_hidden)
        for (int o = 0; o < b->n_outlier; o++)
            for (int64_t r = 0; r < out; r++) w[r * in + b->outlier_ch[o]] *= 0.25f;
    put(b, name, w, 2, out, in);
}

static void vector(builder *b, const char *name, int64_t n, double mean, double spread)
{
    float *v = new_buf(b, n);
    if (!v) return;
    for (int64_t i = 0; i < n; i++) v[i] = (float)(mean + spread * heavy(&b->rng));
    put(b, name, v, 1, n, 0);
}

/* Norm weights: around 1 with spread, and large on the outlier channels, so
 * normalized activations have a few big input channels. */
static void norm_weight(builder *b, const char *name, int64_t n)
{
    float *v = new_buf(b, n);
    if (!v) return;
    for (int64_t i = 0; i < n; i++) v[i] = (float)(0.8 + 0.3 * fabs(heavy(&b->rng)));
    for (int o = 0; o < b->n_outlier; o++) v[b->outlier_ch[o]] = (float)(12.0 + 4.0 * rng_uniform(&b->rng));
    put(b, name, v, 1, n, 0);
}

static void embedding(builder *b, const char *name, int64_t rows, int64_t h)
{
    float *e = new_buf(b, rows * h);
    if (!e) return;
    for (int64_t i = 0; i < rows * h; i++) e[i] = (float)(0.6 * heavy(&b->rng));
    put(b, name, e, 2, rows, h);
}

static void head_bias(builder *b, const char *name)
{
    const qt_synth_spec *s = b->spec;
    float *v = new_buf(b, s->num_labels);
    if (!v) return;
    for (int i = 0; i < s->num_labels; i++) v[i] = (float)(0.1 * rng_normal(&b->rng)) + (s->class_bias ? s->class_bias[i] : 0.0f);
    put(b, name, v, 1, s->num_labels, 0);
}

static void build_modernbert(builder *b)
{
    const qt_synth_spec *s = b->spec;
    char n[160];
    int64_t h = s->hidden, im = s->intermediate;
    embedding(b, "model.embeddings.tok_embeddings.weight", s->vocab, h);
    norm_weight(b, "model.embeddings.norm.weight", h);
    for (int l = 0; l < s->layers; l++) {
        if (l > 0) { /* layer 0's attention norm is the identity */
            snprintf(n, sizeof n, "model.layers.%d.attn_norm.weight", l);
            norm_weight(b, n, h);
        }
        snprintf(n, sizeof n, "model.layers.%d.attn.Wqkv.weight", l);
        linear(b, n, 3 * h, h, 1.0, 1);
        snprintf(n, sizeof n, "model.layers.%d.attn.Wo.weight", l);
        linear(b, n, h, h, 0.7, 0);
        snprintf(n, sizeof n, "model.layers.%d.mlp_norm.weight", l);
        norm_weight(b, n, h);
        snprintf(n, sizeof n, "model.layers.%d.mlp.Wi.weight", l);
        linear(b, n, 2 * im, h, 1.0, 1);
        snprintf(n, sizeof n, "model.layers.%d.mlp.Wo.weight", l);
        linear(b, n, h, im, 0.7, 0);
    }
    norm_weight(b, "model.final_norm.weight", h);
    linear(b, "head.dense.weight", h, h, 1.0, 1);
    norm_weight(b, "head.norm.weight", h);
    linear(b, "classifier.weight", s->num_labels, h, 3.0, 1);
    head_bias(b, "classifier.bias");
}

static void build_qwen2(builder *b)
{
    const qt_synth_spec *s = b->spec;
    char n[160];
    int64_t h = s->hidden, im = s->intermediate, hd = h / s->heads, kvd = hd * s->kv_heads;
    embedding(b, "model.embed_tokens.weight", s->vocab, h);
    for (int l = 0; l < s->layers; l++) {
        snprintf(n, sizeof n, "model.layers.%d.input_layernorm.weight", l);
        norm_weight(b, n, h);
        static const char *const proj[] = {"q_proj", "k_proj", "v_proj"};
        for (int p = 0; p < 3; p++) {
            int64_t outd = p == 0 ? h : kvd;
            snprintf(n, sizeof n, "model.layers.%d.self_attn.%s.weight", l, proj[p]);
            linear(b, n, outd, h, 1.0, 1);
            snprintf(n, sizeof n, "model.layers.%d.self_attn.%s.bias", l, proj[p]);
            vector(b, n, outd, 0.0, 0.2);
        }
        snprintf(n, sizeof n, "model.layers.%d.self_attn.o_proj.weight", l);
        linear(b, n, h, h, 0.7, 0);
        snprintf(n, sizeof n, "model.layers.%d.post_attention_layernorm.weight", l);
        norm_weight(b, n, h);
        snprintf(n, sizeof n, "model.layers.%d.mlp.gate_proj.weight", l);
        linear(b, n, im, h, 1.0, 1);
        snprintf(n, sizeof n, "model.layers.%d.mlp.up_proj.weight", l);
        linear(b, n, im, h, 1.0, 1);
        snprintf(n, sizeof n, "model.layers.%d.mlp.down_proj.weight", l);
        linear(b, n, h, im, 0.7, 0);
    }
    norm_weight(b, "model.norm.weight", h);
    linear(b, "score.weight", s->num_labels, h, 3.0, 1);
}

static void build_bert(builder *b)
{
    const qt_synth_spec *s = b->spec;
    char n[160];
    int64_t h = s->hidden, im = s->intermediate;
    embedding(b, "bert.embeddings.word_embeddings.weight", s->vocab, h);
    embedding(b, "bert.embeddings.position_embeddings.weight", s->max_positions, h);
    embedding(b, "bert.embeddings.token_type_embeddings.weight", 2, h);
    norm_weight(b, "bert.embeddings.LayerNorm.weight", h);
    vector(b, "bert.embeddings.LayerNorm.bias", h, 0.0, 0.1);
    for (int l = 0; l < s->layers; l++) {
        static const char *const qkv[] = {"query", "key", "value"};
        for (int p = 0; p < 3; p++) {
            snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.self.%s.weight", l, qkv[p]);
            linear(b, n, h, h, 1.0, 1);
            snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.self.%s.bias", l, qkv[p]);
            vector(b, n, h, 0.0, 0.1);
        }
        snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.output.dense.weight", l);
        linear(b, n, h, h, 0.7, 0);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.output.dense.bias", l);
        vector(b, n, h, 0.0, 0.1);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.output.LayerNorm.weight", l);
        norm_weight(b, n, h);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.attention.output.LayerNorm.bias", l);
        vector(b, n, h, 0.0, 0.1);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.intermediate.dense.weight", l);
        linear(b, n, im, h, 1.0, 1);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.intermediate.dense.bias", l);
        vector(b, n, im, 0.0, 0.1);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.output.dense.weight", l);
        linear(b, n, h, im, 0.7, 0);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.output.dense.bias", l);
        vector(b, n, h, 0.0, 0.1);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.output.LayerNorm.weight", l);
        norm_weight(b, n, h);
        snprintf(n, sizeof n, "bert.encoder.layer.%d.output.LayerNorm.bias", l);
        vector(b, n, h, 0.0, 0.1);
    }
    linear(b, "bert.pooler.dense.weight", h, h, 1.0, 1);
    vector(b, "bert.pooler.dense.bias", h, 0.0, 0.1);
    linear(b, "classifier.weight", s->num_labels, h, 3.0, 0);
    head_bias(b, "classifier.bias");
}

static json_t *labels_json(int n, int id2label)
{
    json_t *o = json_object();
    for (int i = 0; i < n; i++) {
        char k[32], v[32];
        snprintf(k, sizeof k, "%d", i);
        snprintf(v, sizeof v, "class_%03d", i);
        if (id2label) json_object_set_new(o, k, json_string(v));
        else json_object_set_new(o, v, json_integer(i));
    }
    return o;
}

static json_t *config_json(const qt_synth_spec *s)
{
    json_t *c = json_object();
    json_object_set_new(c, "id2label", labels_json(s->num_labels, 1));
    json_object_set_new(c, "label2id", labels_json(s->num_labels, 0));
    json_object_set_new(c, "hidden_size", json_integer(s->hidden));
    json_object_set_new(c, "num_hidden_layers", json_integer(s->layers));
    json_object_set_new(c, "num_attention_heads", json_integer(s->heads));
    json_object_set_new(c, "intermediate_size", json_integer(s->intermediate));
    json_object_set_new(c, "vocab_size", json_integer(s->vocab));
    json_object_set_new(c, "max_position_embeddings", json_integer(s->max_positions));
    json_object_set_new(c, "torch_dtype", json_string("float32"));
    switch (s->arch) {
    case QT_SYNTH_MODERNBERT:
        json_object_set_new(c, "architectures", json_pack("[s]", "ModernBertForSequenceClassification"));
        json_object_set_new(c, "model_type", json_string("modernbert"));
        json_object_set_new(c, "hidden_activation", json_string("gelu"));
        json_object_set_new(c, "global_attn_every_n_layers", json_integer(3));
        json_object_set_new(c, "local_attention", json_integer(16));
        json_object_set_new(c, "global_rope_theta", json_real(160000.0));
        json_object_set_new(c, "local_rope_theta", json_real(10000.0));
        json_object_set_new(c, "norm_eps", json_real(1e-5));
        json_object_set_new(c, "norm_bias", json_false());
        json_object_set_new(c, "attention_bias", json_false());
        json_object_set_new(c, "mlp_bias", json_false());
        json_object_set_new(c, "classifier_bias", json_false());
        json_object_set_new(c, "classifier_pooling", json_string("mean"));
        json_object_set_new(c, "classifier_activation", json_string("gelu"));
        json_object_set_new(c, "pad_token_id", json_integer(0));
        json_object_set_new(c, "cls_token_id", json_integer(1));
        json_object_set_new(c, "sep_token_id", json_integer(2));
        break;
    case QT_SYNTH_QWEN2:
        json_object_set_new(c, "architectures", json_pack("[s]", "Qwen2ForSequenceClassification"));
        json_object_set_new(c, "model_type", json_string("qwen2"));
        json_object_set_new(c, "num_key_value_heads", json_integer(s->kv_heads));
        json_object_set_new(c, "hidden_act", json_string("silu"));
        json_object_set_new(c, "rms_norm_eps", json_real(1e-6));
        json_object_set_new(c, "rope_theta", json_real(1000000.0));
        json_object_set_new(c, "tie_word_embeddings", json_true());
        json_object_set_new(c, "use_sliding_window", json_false());
        json_object_set_new(c, "pad_token_id", json_integer(0));
        break;
    default:
        json_object_set_new(c, "architectures", json_pack("[s]", "BertForSequenceClassification"));
        json_object_set_new(c, "model_type", json_string("bert"));
        json_object_set_new(c, "hidden_act", json_string("gelu"));
        json_object_set_new(c, "layer_norm_eps", json_real(1e-12));
        json_object_set_new(c, "type_vocab_size", json_integer(2));
        json_object_set_new(c, "pad_token_id", json_integer(0));
        break;
    }
    return c;
}

int qt_synth_write(const qt_synth_spec *spec, const char *dir)
{
    if (spec->hidden <= 0 || spec->layers <= 0 || spec->heads <= 0 || spec->hidden % spec->heads ||
        spec->vocab <= 0 || spec->num_labels <= 0 || spec->intermediate <= 0 ||
        (spec->arch == QT_SYNTH_QWEN2 && (spec->kv_heads <= 0 || spec->heads % spec->kv_heads)))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "synthetic model: inconsistent sizes");
    builder b = {.spec = spec};
    qt_rng_seed(&b.rng, spec->seed);
    b.n_outlier = spec->hidden >= 64 ? 3 : 1;
    int outl[3];
    for (int i = 0; i < b.n_outlier; i++) outl[i] = (int)((uint64_t)(i * 7919 + 13) % (uint64_t)spec->hidden);
    b.outlier_ch = outl;
    if (!(b.w = qt_st_writer_new())) return QTOOL_ERR_OUT_OF_MEMORY;
    if (spec->arch == QT_SYNTH_MODERNBERT) build_modernbert(&b);
    else if (spec->arch == QT_SYNTH_QWEN2) build_qwen2(&b);
    else build_bert(&b);
    int rc = b.rc;
    if (!rc) rc = qt_mkdirs(dir);
    char *st = qt_path_join(dir, "model.safetensors"), *cj = qt_path_join(dir, "config.json");
    if (!rc) rc = qt_st_writer_set_metadata(b.w, "format", "pt");
    if (!rc) rc = qt_st_writer_commit(b.w, st);
    if (!rc) {
        json_t *c = config_json(spec);
        char *text = json_dumps(c, JSON_INDENT(2) | JSON_SORT_KEYS);
        rc = text ? qt_write_file_atomic(cj, text, strlen(text)) : QTOOL_ERR_OUT_OF_MEMORY;
        free(text);
        json_decref(c);
    }
    free(st);
    free(cj);
    qt_st_writer_free(b.w);
    return rc;
}
