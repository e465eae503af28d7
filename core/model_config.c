/* config.json -> qt_model_config, with transformers' defaults and both the
 * older (torch_dtype, rope_theta + rope_scaling, global_attn_every_n_layers,
 * global/local_rope_theta) and newer (dtype, layer_types, rope_parameters)
 * spellings. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "model.h"

typedef struct cfg_ctx {
    json_t *root;
    const char *path;
} cfg_ctx;

static const char *arch_names[] = {"BertForSequenceClassification", "ModernBertForSequenceClassification",
                                   "Qwen2ForSequenceClassification", "LlamaForSequenceClassification"};

const char *qt_arch_name(int arch)
{
    return arch >= 0 && arch < (int)(sizeof arch_names / sizeof arch_names[0]) ? arch_names[arch] : "?";
}

static const struct {
    const char *name;
    int act;
} act_table[] = {
    {"gelu", QT_ACT_GELU},
    {"gelu_python", QT_ACT_GELU},
    {"gelu_new", QT_ACT_GELU_TANH},
    {"gelu_pytorch_tanh", QT_ACT_GELU_TANH},
    {"gelu_python_tanh", QT_ACT_GELU_TANH},
    {"gelu_fast", QT_ACT_GELU_TANH},
    {"quick_gelu", QT_ACT_QUICK_GELU},
    {"relu", QT_ACT_RELU},
    {"silu", QT_ACT_SILU},
    {"swish", QT_ACT_SILU},
    {"tanh", QT_ACT_TANH},
    {"sigmoid", QT_ACT_SIGMOID},
    {"linear", QT_ACT_IDENTITY},
};

const char *qt_act_name(int act)
{
    for (size_t i = 0; i < sizeof act_table / sizeof act_table[0]; i++)
        if (act_table[i].act == act) return act_table[i].name;
    return "?";
}

/* ------------------------------------------------------------ getters */

static json_t *get(const json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return v && !json_is_null(v) ? v : NULL;
}

/* An integer key; `def` when absent or null. */
static int get_int(const cfg_ctx *c, const json_t *obj, const char *key, int64_t def, int64_t lo,
                   int64_t hi, int64_t *out)
{
    json_t *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_integer(v)) {
        /* Some tools write integral values as 4.0. */
        if (json_is_real(v) && json_real_value(v) == (double)(int64_t)json_real_value(v)) {
            *out = (int64_t)json_real_value(v);
        } else {
            return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' must be an integer", c->path, key);
        }
    } else {
        *out = json_integer_value(v);
    }
    if (*out < lo || *out > hi)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' is %" PRId64 ", outside [%" PRId64 ", %" PRId64 "]",
                       c->path, key, *out, lo, hi);
    return 0;
}

static int get_real(const cfg_ctx *c, const json_t *obj, const char *key, double def, double *out)
{
    json_t *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v)) return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' must be a number", c->path, key);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(const cfg_ctx *c, const json_t *obj, const char *key, int def, int *out)
{
    json_t *v = get(obj, key);
    if (!v) {
        *out = def;
        return 0;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return 0;
    }
    if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
        *out = (int)json_integer_value(v);
        return 0;
    }
    return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' must be true or false", c->path, key);
}

/* A string key; NULL when absent. */
static int get_str(const cfg_ctx *c, const json_t *obj, const char *key, const char **out)
{
    json_t *v = get(obj, key);
    *out = NULL;
    if (!v) return 0;
    if (!json_is_string(v)) return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' must be a string", c->path, key);
    *out = json_string_value(v);
    return 0;
}

static int get_act(const cfg_ctx *c, const json_t *obj, const char *key, const char *def, int *out)
{
    const char *s;
    int rc = get_str(c, obj, key, &s);
    if (rc) return rc;
    if (!s) s = def;
    for (size_t i = 0; i < sizeof act_table / sizeof act_table[0]; i++) {
        if (strcmp(act_table[i].name, s) == 0) {
            *out = act_table[i].act;
            return 0;
        }
    }
    return qt_fail(QTOOL_ERR_UNSUPPORTED,
                   "%s: '%s' is '%.64s', which is not supported (gelu, gelu_new, gelu_pytorch_tanh, "
                   "gelu_fast, quick_gelu, relu, silu, tanh, sigmoid, linear)",
                   c->path, key, s);
}

/* ------------------------------------------------------------- labels */

static int parse_labels(const cfg_ctx *c, qt_model_config *m)
{
    json_t *id2label = get(c->root, "id2label");
    json_t *label2id = get(c->root, "label2id");
    int64_t n = -1;
    if (id2label) {
        if (!json_is_object(id2label))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: 'id2label' must be an object", c->path);
        n = (int64_t)json_object_size(id2label);
    }
    int64_t given;
    int rc = get_int(c, c->root, "num_labels", -1, -1, QT_MODEL_MAX_LABELS, &given);
    if (rc) return rc;
    if (given >= 0 && n >= 0 && given != n)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: 'num_labels' is %" PRId64 " but 'id2label' has %" PRId64 " entries",
                       c->path, given, n);
    if (n < 0) n = given >= 0 ? given : 2; /* transformers' default */
    if (n > QT_MODEL_MAX_LABELS)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %" PRId64 " labels is more than %d", c->path, n, QT_MODEL_MAX_LABELS);
    m->num_labels = n;
    m->id2label = calloc((size_t)(n ? n : 1), sizeof *m->id2label);
    if (!m->id2label) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if (id2label) {
        const char *key;
        json_t *val;
        json_object_foreach(id2label, key, val) {
            char *end;
            errno = 0;
            long long id = strtoll(key, &end, 10);
            if (errno || end == key || *end || id < 0 || id >= n)
                return qt_fail(QTOOL_ERR_FORMAT, "%s: id2label key '%.32s' is not an id in [0, %" PRId64 ")",
                               c->path, key, n);
            if (!json_is_string(val))
                return qt_fail(QTOOL_ERR_FORMAT, "%s: id2label[%lld] must be a string", c->path, id);
            if (m->id2label[id])
                return qt_fail(QTOOL_ERR_FORMAT, "%s: id2label names id %lld twice", c->path, id);
            m->id2label[id] = strdup(json_string_value(val));
            if (!m->id2label[id]) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
    }
    if (label2id) {
        if (!json_is_object(label2id))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: 'label2id' must be an object", c->path);
        size_t k = json_object_size(label2id);
        m->label2id_names = calloc(k ? k : 1, sizeof *m->label2id_names);
        m->label2id_ids = calloc(k ? k : 1, sizeof *m->label2id_ids);
        if (!m->label2id_names || !m->label2id_ids) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        const char *key;
        json_t *val;
        json_object_foreach(label2id, key, val) {
            if (!json_is_integer(val) || json_integer_value(val) < 0 || json_integer_value(val) >= n)
                return qt_fail(QTOOL_ERR_FORMAT, "%s: label2id['%.64s'] is not an id in [0, %" PRId64 ")",
                               c->path, key, n);
            m->label2id_names[m->n_label2id] = strdup(key);
            if (!m->label2id_names[m->n_label2id]) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            m->label2id_ids[m->n_label2id++] = json_integer_value(val);
        }
    }
    return 0;
}

int64_t qt_model_label_id(const qt_model_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_label2id; i++)
        if (strcmp(c->label2id_names[i], name) == 0) return c->label2id_ids[i];
    for (int64_t i = 0; i < c->num_labels; i++)
        if (c->id2label[i] && strcmp(c->id2label[i], name) == 0) return i;
    char *end;
    errno = 0;
    long long v = strtoll(name, &end, 10);
    if (!errno && end != name && !*end && v >= 0 && v < c->num_labels) return v;
    return -1;
}

/* --------------------------------------------------------------- RoPE */

/* One RoPE parameter dict (new `rope_parameters`, or old `rope_scaling`),
 * with `theta` the value to use when the dict has no rope_theta. */
static int parse_rope_dict(const cfg_ctx *c, const json_t *d, double theta, int64_t max_pos,
                           const char *what, qt_rope_config *r)
{
    memset(r, 0, sizeof *r);
    r->type = QT_ROPE_DEFAULT;
    r->theta = theta;
    r->factor = 1.0;
    if (!d) return 0;
    if (!json_is_object(d)) return qt_fail(QTOOL_ERR_FORMAT, "%s: '%s' must be an object", c->path, what);
    const char *type = NULL;
    int rc = get_str(c, d, "rope_type", &type);
    if (!rc && !type) rc = get_str(c, d, "type", &type);
    if (rc) return rc;
    rc = get_real(c, d, "rope_theta", theta, &r->theta);
    if (rc) return rc;
    double prf = 1.0;
    rc = get_real(c, d, "partial_rotary_factor", 1.0, &prf);
    if (rc) return rc;
    if (prf != 1.0)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: %s: partial_rotary_factor %g is not supported (only 1)",
                       c->path, what, prf);
    if (!type || strcmp(type, "default") == 0) {
        r->type = QT_ROPE_DEFAULT;
    } else if (strcmp(type, "linear") == 0) {
        r->type = QT_ROPE_LINEAR;
        json_t *f = get(d, "factor");
        if (!f) return qt_fail(QTOOL_ERR_FORMAT, "%s: %s: linear RoPE needs 'factor'", c->path, what);
        if ((rc = get_real(c, d, "factor", 1.0, &r->factor))) return rc;
    } else if (strcmp(type, "llama3") == 0) {
        r->type = QT_ROPE_LLAMA3;
        static const char *need[] = {"factor", "low_freq_factor", "high_freq_factor"};
        for (int i = 0; i < 3; i++)
            if (!get(d, need[i]))
                return qt_fail(QTOOL_ERR_FORMAT, "%s: %s: llama3 RoPE needs '%s'", c->path, what, need[i]);
        if ((rc = get_real(c, d, "factor", 1.0, &r->factor)) ||
            (rc = get_real(c, d, "low_freq_factor", 1.0, &r->low_freq_factor)) ||
            (rc = get_real(c, d, "high_freq_factor", 4.0, &r->high_freq_factor)))
            return rc;
        int64_t omp;
        /* transformers prefers a top-level original_max_position_embeddings. */
        const json_t *src = get(c->root, "original_max_position_embeddings") ? c->root : d;
        if ((rc = get_int(c, src, "original_max_position_embeddings", max_pos, 1, INT64_C(1) << 40, &omp)))
            return rc;
        r->original_max_position_embeddings = omp;
        if (!(r->high_freq_factor != r->low_freq_factor))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: %s: llama3 RoPE needs high_freq_factor != low_freq_factor",
                           c->path, what);
    } else {
        return qt_fail(QTOOL_ERR_UNSUPPORTED,
                       "%s: %s: RoPE type '%.32s' is not supported (default, linear, llama3)", c->path, what,
                       type);
    }
    if (!(r->theta > 0) || !(r->factor > 0))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %s: rope_theta and factor must be positive", c->path, what);
    return 0;
}

/* Decoders: rope_parameters (new) or rope_theta + rope_scaling (old). As in
 * transformers, an old rope_scaling dict replaces rope_parameters. */
static int parse_decoder_rope(const cfg_ctx *c, qt_model_config *m)
{
    double theta = 0;
    int rc = get_real(c, c->root, "rope_theta", 10000.0, &theta);
    if (rc) return rc;
    json_t *scaling = get(c->root, "rope_scaling");
    json_t *params = get(c->root, "rope_parameters");
    const char *what = scaling ? "rope_scaling" : "rope_parameters";
    json_t *d = scaling ? scaling : params;
    if (d && json_is_object(d) && (get(d, "full_attention") || get(d, "sliding_attention")))
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: per-layer-type rope_parameters are not supported for %s",
                       c->path, m->architecture);
    rc = parse_rope_dict(c, d, theta, m->max_position_embeddings, what, &m->rope_full);
    m->rope_sliding = m->rope_full;
    return rc;
}

/* ModernBERT: rope_parameters {full_attention: {...}, sliding_attention:
 * {...}} (new) or global_rope_theta / local_rope_theta (+ rope_scaling for
 * both) (old). A null local_rope_theta means the global one. */
static int parse_modernbert_rope(const cfg_ctx *c, qt_model_config *m)
{
    double gtheta = 0, ltheta = 0;
    int rc = get_real(c, c->root, "global_rope_theta", 160000.0, &gtheta);
    if (rc) return rc;
    json_t *lt = json_object_get(c->root, "local_rope_theta");
    if (lt && json_is_null(lt)) {
        ltheta = gtheta;
    } else if ((rc = get_real(c, c->root, "local_rope_theta", 10000.0, &ltheta))) {
        return rc;
    }
    json_t *params = get(c->root, "rope_parameters");
    json_t *scaling = get(c->root, "rope_scaling");
    json_t *full = NULL, *sliding = NULL;
    if (params) {
        if (!json_is_object(params))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: 'rope_parameters' must be an object", c->path);
        full = get(params, "full_attention");
        sliding = get(params, "sliding_attention");
        if (!full && !sliding) full = sliding = params; /* one dict for both */
    }
    if (scaling && !full) full = scaling;
    if (scaling && !sliding) sliding = scaling;
    if ((rc = parse_rope_dict(c, full, gtheta, m->max_position_embeddings, "rope_parameters.full_attention",
                              &m->rope_full)))
        return rc;
    return parse_rope_dict(c, sliding, ltheta, m->max_position_embeddings,
                           "rope_parameters.sliding_attention", &m->rope_sliding);
}

/* layer_types (new) into layer_sliding; 1 when found. */
static int parse_layer_types(const cfg_ctx *c, qt_model_config *m, int *found)
{
    json_t *lt = get(c->root, "layer_types");
    *found = 0;
    if (!lt) return 0;
    if (!json_is_array(lt) || (int64_t)json_array_size(lt) != m->n_layers)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: 'layer_types' must be a list of %" PRId64 " strings", c->path,
                       m->n_layers);
    for (int64_t i = 0; i < m->n_layers; i++) {
        const char *s = json_string_value(json_array_get(lt, (size_t)i));
        if (s && strcmp(s, "full_attention") == 0) {
            m->layer_sliding[i] = 0;
        } else if (s && strcmp(s, "sliding_attention") == 0) {
            m->layer_sliding[i] = 1;
        } else {
            return qt_fail(QTOOL_ERR_UNSUPPORTED,
                           "%s: layer_types[%" PRId64 "] is '%.32s' (supported: full_attention, sliding_attention)",
                           c->path, i, s ? s : "(not a string)");
        }
    }
    *found = 1;
    return 0;
}

/* ------------------------------------------------------ architectures */

static int parse_common_sizes(const cfg_ctx *c, qt_model_config *m, int64_t vocab, int64_t hidden,
                              int64_t inter, int64_t layers, int64_t heads, int64_t max_pos)
{
    int rc;
    if ((rc = get_int(c, c->root, "vocab_size", vocab, 1, INT64_C(1) << 26, &m->vocab_size)) ||
        (rc = get_int(c, c->root, "hidden_size", hidden, 1, QT_MODEL_MAX_HIDDEN, &m->hidden_size)) ||
        (rc = get_int(c, c->root, "intermediate_size", inter, 1, INT64_C(1) << 20, &m->intermediate_size)) ||
        (rc = get_int(c, c->root, "num_hidden_layers", layers, 1, QT_MODEL_MAX_LAYERS, &m->n_layers)) ||
        (rc = get_int(c, c->root, "num_attention_heads", heads, 1, 4096, &m->n_heads)) ||
        (rc = get_int(c, c->root, "max_position_embeddings", max_pos, 1, INT64_C(1) << 24,
                      &m->max_position_embeddings)))
        return rc;
    m->layer_sliding = calloc((size_t)m->n_layers, sizeof *m->layer_sliding);
    if (!m->layer_sliding) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    return 0;
}

static int parse_pad(const cfg_ctx *c, qt_model_config *m, int64_t def, int has_def)
{
    json_t *v = json_object_get(c->root, "pad_token_id");
    if (!v) {
        m->has_pad_token = has_def;
        m->pad_token_id = def;
        return 0;
    }
    if (json_is_null(v)) {
        m->has_pad_token = 0;
        m->pad_token_id = -1;
        return 0;
    }
    m->has_pad_token = 1;
    return get_int(c, c->root, "pad_token_id", def, INT32_MIN, INT32_MAX, &m->pad_token_id);
}

static int parse_bert(const cfg_ctx *c, qt_model_config *m)
{
    int rc = parse_common_sizes(c, m, 30522, 768, 3072, 12, 12, 512);
    if (rc) return rc;
    if (m->hidden_size % m->n_heads)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: hidden_size %" PRId64 " is not a multiple of num_attention_heads %" PRId64,
                       c->path, m->hidden_size, m->n_heads);
    m->n_kv_heads = m->n_heads;
    m->head_dim = m->hidden_size / m->n_heads;
    if ((rc = get_int(c, c->root, "type_vocab_size", 2, 1, 1 << 20, &m->type_vocab_size)) ||
        (rc = get_act(c, c->root, "hidden_act", "gelu", &m->hidden_act)) ||
        (rc = get_real(c, c->root, "layer_norm_eps", 1e-12, &m->norm_eps)) || (rc = parse_pad(c, m, 0, 1)))
        return rc;
    const char *pet;
    if ((rc = get_str(c, c->root, "position_embedding_type", &pet))) return rc;
    if (pet && strcmp(pet, "absolute") != 0)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: position_embedding_type '%.32s' is not supported (absolute)",
                       c->path, pet);
    int dec;
    if ((rc = get_bool(c, c->root, "is_decoder", 0, &dec))) return rc;
    if (dec) return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: is_decoder BERT is not supported", c->path);
    m->norm_bias = 1;
    m->attention_bias = m->attention_out_bias = m->mlp_bias = 1;
    m->pooling = QT_POOL_FIRST;
    m->rope_full.type = m->rope_sliding.type = QT_ROPE_NONE;
    return 0;
}

static int parse_modernbert(const cfg_ctx *c, qt_model_config *m)
{
    int rc = parse_common_sizes(c, m, 50368, 768, 1152, 22, 12, 8192);
    if (rc) return rc;
    if (m->hidden_size % m->n_heads)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: hidden_size %" PRId64 " is not a multiple of num_attention_heads %" PRId64,
                       c->path, m->hidden_size, m->n_heads);
    m->n_kv_heads = m->n_heads;
    m->head_dim = m->hidden_size / m->n_heads;
    int64_t every;
    const char *pool;
    if ((rc = get_act(c, c->root, "hidden_activation", "gelu", &m->hidden_act)) ||
        (rc = get_real(c, c->root, "norm_eps", 1e-5, &m->norm_eps)) ||
        (rc = get_bool(c, c->root, "norm_bias", 0, &m->norm_bias)) ||
        (rc = get_bool(c, c->root, "attention_bias", 0, &m->attention_bias)) ||
        (rc = get_bool(c, c->root, "mlp_bias", 0, &m->mlp_bias)) ||
        (rc = get_bool(c, c->root, "classifier_bias", 0, &m->classifier_bias)) ||
        (rc = get_act(c, c->root, "classifier_activation", "gelu", &m->classifier_act)) ||
        (rc = get_int(c, c->root, "local_attention", 128, 0, INT64_C(1) << 30, &m->local_attention)) ||
        (rc = get_int(c, c->root, "global_attn_every_n_layers", 3, 1, QT_MODEL_MAX_LAYERS, &every)) ||
        (rc = get_str(c, c->root, "classifier_pooling", &pool)) || (rc = parse_pad(c, m, 50283, 1)))
        return rc;
    m->attention_out_bias = m->attention_bias;
    /* Newer transformers exposes the half window as `sliding_window`. */
    int64_t half;
    if ((rc = get_int(c, c->root, "sliding_window", -1, -1, INT64_C(1) << 29, &half))) return rc;
    if (half >= 0) {
        if (get(c->root, "local_attention") && m->local_attention / 2 != half)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: sliding_window %" PRId64 " disagrees with local_attention %" PRId64,
                           c->path, half, m->local_attention);
        m->local_attention = 2 * half;
    }
    m->sliding_window = m->local_attention / 2;
    if (!pool || strcmp(pool, "cls") == 0) {
        m->pooling = QT_POOL_FIRST;
    } else if (strcmp(pool, "mean") == 0) {
        m->pooling = QT_POOL_MEAN;
    } else {
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: classifier_pooling '%.32s' is not supported (cls, mean)",
                       c->path, pool);
    }
    int found;
    if ((rc = parse_layer_types(c, m, &found))) return rc;
    if (!found)
        for (int64_t i = 0; i < m->n_layers; i++) m->layer_sliding[i] = (i % every) != 0;
    if ((rc = parse_modernbert_rope(c, m))) return rc;
    if (m->head_dim % 2) return qt_fail(QTOOL_ERR_FORMAT, "%s: RoPE needs an even head size", c->path);
    return 0;
}

static int parse_decoder(const cfg_ctx *c, qt_model_config *m)
{
    int qwen = m->arch == QT_ARCH_QWEN2;
    int rc = parse_common_sizes(c, m, qwen ? 151936 : 32000, 4096, qwen ? 22016 : 11008, 32, 32,
                                qwen ? 32768 : 2048);
    if (rc) return rc;
    if ((rc = get_int(c, c->root, "num_key_value_heads", m->n_heads, 1, 4096, &m->n_kv_heads))) return rc;
    if (m->n_heads % m->n_kv_heads)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: num_attention_heads %" PRId64 " is not a multiple of num_key_value_heads %" PRId64,
                       c->path, m->n_heads, m->n_kv_heads);
    if ((rc = get_int(c, c->root, "head_dim", m->hidden_size / m->n_heads, 1, 4096, &m->head_dim))) return rc;
    if (m->head_dim == 0 || m->head_dim % 2)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: head_dim %" PRId64 " must be even and positive", c->path, m->head_dim);
    if ((rc = get_act(c, c->root, "hidden_act", "silu", &m->hidden_act)) ||
        (rc = get_real(c, c->root, "rms_norm_eps", 1e-6, &m->norm_eps)) || (rc = parse_pad(c, m, -1, 0)))
        return rc;
    if (qwen) {
        m->attention_bias = 1; /* q, k, v; o_proj has none */
        m->attention_out_bias = 0;
        m->mlp_bias = 0;
        int use_sw;
        int64_t sw, mwl;
        if ((rc = get_bool(c, c->root, "use_sliding_window", 0, &use_sw)) ||
            (rc = get_int(c, c->root, "sliding_window", 4096, 0, INT64_C(1) << 40, &sw)) ||
            (rc = get_int(c, c->root, "max_window_layers", 28, 0, INT64_C(1) << 20, &mwl)))
            return rc;
        /* As transformers: the window exists only with use_sliding_window and
         * a non-null sliding_window (absent means the class default 4096). */
        json_t *swv = json_object_get(c->root, "sliding_window");
        int has_sw = use_sw && !(swv && json_is_null(swv));
        m->sliding_window = has_sw ? sw : 0;
        int found;
        if ((rc = parse_layer_types(c, m, &found))) return rc;
        for (int64_t i = 0; i < m->n_layers; i++) {
            if (!found) m->layer_sliding[i] = has_sw && i >= mwl;
            if (!has_sw) m->layer_sliding[i] = 0; /* no window: a sliding layer is a full one */
        }
        if (has_sw && sw < 1)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: sliding_window must be positive", c->path);
    } else {
        if ((rc = get_bool(c, c->root, "attention_bias", 0, &m->attention_bias)) ||
            (rc = get_bool(c, c->root, "mlp_bias", 0, &m->mlp_bias)))
            return rc;
        m->attention_out_bias = m->attention_bias;
        int found;
        if ((rc = parse_layer_types(c, m, &found))) return rc;
        for (int64_t i = 0; i < m->n_layers; i++)
            if (m->layer_sliding[i])
                return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: sliding-window layers are not supported for Llama",
                               c->path);
    }
    m->norm_bias = 0;
    m->pooling = QT_POOL_LAST;
    return parse_decoder_rope(c, m);
}

int qt_model_config_parse(const char *json, size_t len, const char *path, qt_model_config *m)
{
    memset(m, 0, sizeof *m);
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) return qt_fail(QTOOL_ERR_FORMAT, "%s: line %d: %s", path, err.line, err.text);
    cfg_ctx c = {root, path};
    int rc = 0;
    if (!json_is_object(root)) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: not a JSON object", path);
        goto out;
    }
    json_t *archs = get(root, "architectures");
    const char *arch = NULL;
    if (archs && json_is_array(archs) && json_array_size(archs) >= 1)
        arch = json_string_value(json_array_get(archs, 0));
    if (!arch) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no 'architectures' list naming the model class", path);
        goto out;
    }
    snprintf(m->architecture, sizeof m->architecture, "%s", arch);
    const char *mt = json_string_value(get(root, "model_type"));
    snprintf(m->model_type, sizeof m->model_type, "%s", mt ? mt : "");
    m->has_head = 1;
    if (strcmp(arch, "BertForSequenceClassification") == 0) {
        m->arch = QT_ARCH_BERT;
    } else if (strcmp(arch, "BertModel") == 0) {
        m->arch = QT_ARCH_BERT;
        m->has_head = 0;
    } else if (strcmp(arch, "ModernBertForSequenceClassification") == 0) {
        m->arch = QT_ARCH_MODERNBERT;
    } else if (strcmp(arch, "Qwen2ForSequenceClassification") == 0) {
        m->arch = QT_ARCH_QWEN2;
    } else if (strcmp(arch, "LlamaForSequenceClassification") == 0) {
        m->arch = QT_ARCH_LLAMA;
    } else {
        rc = qt_fail(QTOOL_ERR_UNSUPPORTED,
                     "%s: unsupported architecture '%.80s' (supported: BertForSequenceClassification, "
                     "BertModel, ModernBertForSequenceClassification, Qwen2ForSequenceClassification, "
                     "LlamaForSequenceClassification)",
                     path, arch);
        goto out;
    }
    const char *dt = json_string_value(get(root, "dtype"));
    if (!dt) dt = json_string_value(get(root, "torch_dtype"));
    snprintf(m->dtype_name, sizeof m->dtype_name, "%s", dt ? dt : "");

    switch (m->arch) {
    case QT_ARCH_BERT: rc = parse_bert(&c, m); break;
    case QT_ARCH_MODERNBERT: rc = parse_modernbert(&c, m); break;
    default: rc = parse_decoder(&c, m); break;
    }
    if (!rc) rc = parse_labels(&c, m);
    if (!rc && m->has_head && m->num_labels < 1)
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: a classifier needs at least one label", path);
    if (!rc && !m->has_head) {
        /* A bare encoder has no classes. */
        for (int64_t i = 0; i < m->num_labels; i++) free(m->id2label[i]);
        m->num_labels = 0;
    }
    if (!rc && !(m->norm_eps >= 0)) rc = qt_fail(QTOOL_ERR_FORMAT, "%s: the norm epsilon must be >= 0", path);
out:
    json_decref(root);
    if (rc) qt_model_config_free(m);
    return rc;
}

int qt_model_config_load(const char *path, qt_model_config *out)
{
    char *text = NULL;
    size_t len = 0;
    memset(out, 0, sizeof *out);
    int rc = qt_read_file(path, QT_MODEL_MAX_CONFIG_BYTES, &text, &len);
    if (rc) return rc;
    rc = qt_model_config_parse(text, len, path, out);
    free(text);
    return rc;
}

void qt_model_config_free(qt_model_config *c)
{
    if (c->id2label)
        for (int64_t i = 0; i < c->num_labels; i++) free(c->id2label[i]);
    free(c->id2label);
    for (size_t i = 0; i < c->n_label2id; i++) free(c->label2id_names[i]);
    free(c->label2id_names);
    free(c->label2id_ids);
    free(c->layer_sliding);
    memset(c, 0, sizeof *c);
}
