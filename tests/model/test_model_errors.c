/* Config parsing (old and new spellings, unsupported features), checkpoint
 * validation (missing, misshapen, non-float tensors), forward argument
 * checks, and the JSONL reader on hostile input. Every failure must be one
 * line naming the thing at fault. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "data.h"
#include "error.h"
#include "fsutil.h"
#include "model.h"
#include "safetensors.h"
#include "threads.h"

static char tmpdir[256];

static const char *data_root(void)
{
    const char *d = getenv("QTOOL_TEST_DATA");
    return d ? d : "tests";
}

static void expect_error(int rc, const char *needle)
{
    const char *e = qt_last_error();
    if (rc == 0) fail_msg("expected failure containing '%s', got success", needle);
    if (!strstr(e, needle)) fail_msg("error '%s' does not contain '%s'", e, needle);
    if (strchr(e, '\n')) fail_msg("error is not one line: '%s'", e);
}

static int parse(const char *json, qt_model_config *c)
{
    return qt_model_config_parse(json, strlen(json), "config.json", c);
}

/* ------------------------------------------------------------- configs */

static void test_config_unsupported(void **state)
{
    (void)state;
    qt_model_config c;
    expect_error(parse("{\"architectures\": [\"GPT2ForSequenceClassification\"]}", &c),
                 "config.json: unsupported architecture 'GPT2ForSequenceClassification'");
    expect_error(parse("{\"model_type\": \"bert\"}", &c), "config.json: no 'architectures'");
    expect_error(parse("[1, 2]", &c), "not a JSON object");
    expect_error(parse("{\"architectures\": [\"BertFor", &c), "config.json: line 1");
    expect_error(parse("{\"architectures\": [\"LlamaForSequenceClassification\"], \"rope_scaling\": "
                       "{\"rope_type\": \"yarn\", \"factor\": 4}}",
                       &c),
                 "RoPE type 'yarn' is not supported");
    expect_error(parse("{\"architectures\": [\"LlamaForSequenceClassification\"], \"partial_rotary_factor\": 0.5, "
                       "\"rope_parameters\": {\"rope_type\": \"default\", \"rope_theta\": 10000, "
                       "\"partial_rotary_factor\": 0.5}}",
                       &c),
                 "partial_rotary_factor 0.5");
    expect_error(parse("{\"architectures\": [\"LlamaForSequenceClassification\"], \"rope_scaling\": "
                       "{\"rope_type\": \"llama3\", \"factor\": 8}}",
                       &c),
                 "llama3 RoPE needs 'low_freq_factor'");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], \"hidden_act\": \"mish\"}", &c),
                 "'hidden_act' is 'mish', which is not supported");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], \"hidden_size\": 100, "
                       "\"num_attention_heads\": 3}",
                       &c),
                 "not a multiple of num_attention_heads");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], \"num_hidden_layers\": 100000}", &c),
                 "'num_hidden_layers' is 100000, outside");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], \"hidden_size\": \"64\"}", &c),
                 "'hidden_size' must be an integer");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], "
                       "\"position_embedding_type\": \"relative_key\"}",
                       &c),
                 "position_embedding_type 'relative_key' is not supported");
    expect_error(parse("{\"architectures\": [\"BertForSequenceClassification\"], \"id2label\": {\"0\": \"a\", "
                       "\"5\": \"b\"}}",
                       &c),
                 "id2label key '5' is not an id in [0, 2)");
    expect_error(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"num_hidden_layers\": 2, "
                       "\"layer_types\": [\"full_attention\", \"chunked_attention\"]}",
                       &c),
                 "layer_types[1] is 'chunked_attention'");
    expect_error(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], "
                       "\"classifier_pooling\": \"max\"}",
                       &c),
                 "classifier_pooling 'max' is not supported");
}

static void test_config_modernbert_spellings(void **state)
{
    (void)state;
    qt_model_config c;
    /* Older: global_attn_every_n_layers + global/local_rope_theta. */
    assert_int_equal(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"num_hidden_layers\": 7,"
                           " \"global_attn_every_n_layers\": 3, \"local_attention\": 128, \"global_rope_theta\": "
                           "160000.0, \"local_rope_theta\": 10000.0, \"torch_dtype\": \"bfloat16\", \"id2label\": "
                           "{\"0\": \"x\", \"1\": \"y\", \"2\": \"z\"}}",
                           &c),
                     0);
    static const int want[7] = {0, 1, 1, 0, 1, 1, 0};
    for (int i = 0; i < 7; i++) assert_int_equal(c.layer_sliding[i], want[i]);
    assert_int_equal(c.sliding_window, 64);
    assert_true(c.rope_full.theta == 160000.0 && c.rope_sliding.theta == 10000.0);
    assert_string_equal(c.dtype_name, "bfloat16");
    assert_int_equal(c.num_labels, 3);
    assert_int_equal(c.pooling, QT_POOL_FIRST);
    assert_int_equal(c.norm_bias, 0);
    assert_int_equal(qt_model_label_id(&c, "z"), 2);
    assert_int_equal(qt_model_label_id(&c, "1"), 1);
    assert_int_equal(qt_model_label_id(&c, "w"), -1);
    qt_model_config_free(&c);
    /* A null local_rope_theta means the global one. */
    assert_int_equal(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"global_rope_theta\": "
                           "5.0e4, \"local_rope_theta\": null}",
                           &c),
                     0);
    assert_true(c.rope_sliding.theta == 5.0e4);
    qt_model_config_free(&c);
    /* Newer: layer_types + nested rope_parameters, dtype. */
    assert_int_equal(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"num_hidden_layers\": 3,"
                           " \"layer_types\": [\"sliding_attention\", \"full_attention\", \"sliding_attention\"], "
                           "\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": "
                           "1000.0}, \"sliding_attention\": {\"rope_type\": \"default\", \"rope_theta\": 20.0}}, "
                           "\"dtype\": \"float32\", \"classifier_pooling\": \"mean\"}",
                           &c),
                     0);
    assert_int_equal(c.layer_sliding[0], 1);
    assert_int_equal(c.layer_sliding[1], 0);
    assert_true(c.rope_full.theta == 1000.0 && c.rope_sliding.theta == 20.0);
    assert_int_equal(c.pooling, QT_POOL_MEAN);
    assert_string_equal(c.dtype_name, "float32");
    assert_int_equal(c.num_labels, 2); /* transformers' default */
    qt_model_config_free(&c);
    /* The half window under its newer name. */
    assert_int_equal(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"sliding_window\": 32}", &c), 0);
    assert_int_equal(c.local_attention, 64);
    assert_int_equal(c.sliding_window, 32);
    qt_model_config_free(&c);
    expect_error(parse("{\"architectures\": [\"ModernBertForSequenceClassification\"], \"sliding_window\": 32, "
                       "\"local_attention\": 128}",
                       &c),
                 "sliding_window 32 disagrees with local_attention 128");
}

static void test_config_decoders(void **state)
{
    (void)state;
    qt_model_config c;
    /* Llama, older spelling with llama3 scaling; no pad token. */
    assert_int_equal(parse("{\"architectures\": [\"LlamaForSequenceClassification\"], \"hidden_size\": 64, "
                           "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"rope_theta\": 500000.0, "
                           "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 1.0,"
                           " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192}, "
                           "\"pad_token_id\": null, \"attention_bias\": true}",
                           &c),
                     0);
    assert_int_equal(c.rope_full.type, QT_ROPE_LLAMA3);
    assert_true(c.rope_full.theta == 500000.0 && c.rope_full.factor == 8.0);
    assert_int_equal(c.rope_full.original_max_position_embeddings, 8192);
    assert_int_equal(c.has_pad_token, 0);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.attention_out_bias, 1);
    assert_int_equal(c.pooling, QT_POOL_LAST);
    qt_model_config_free(&c);
    /* Qwen2: sliding window only with use_sliding_window, from max_window_layers on. */
    assert_int_equal(parse("{\"architectures\": [\"Qwen2ForSequenceClassification\"], \"num_hidden_layers\": 4, "
                           "\"use_sliding_window\": true, \"sliding_window\": 32, \"max_window_layers\": 2, "
                           "\"rope_theta\": 1000000.0, \"pad_token_id\": 7}",
                           &c),
                     0);
    assert_int_equal(c.layer_sliding[1], 0);
    assert_int_equal(c.layer_sliding[2], 1);
    assert_int_equal(c.sliding_window, 32);
    assert_true(c.rope_full.theta == 1e6);
    assert_int_equal(c.attention_bias, 1);
    assert_int_equal(c.attention_out_bias, 0);
    assert_int_equal(c.has_pad_token, 1);
    assert_int_equal(c.pad_token_id, 7);
    qt_model_config_free(&c);
    assert_int_equal(parse("{\"architectures\": [\"Qwen2ForSequenceClassification\"], \"num_hidden_layers\": 4, "
                           "\"use_sliding_window\": false, \"sliding_window\": 32, \"max_window_layers\": 2}",
                           &c),
                     0);
    for (int i = 0; i < 4; i++) assert_int_equal(c.layer_sliding[i], 0);
    qt_model_config_free(&c);
}

/* ---------------------------------------------------------- checkpoints */

/* Copies the qwen2 test checkpoint into tmpdir/NAME with one tensor
 * replaced (or dropped when `replace` is NULL). */
static void make_variant(const char *name, const char *target, const qtool_tensor *replace, char *out, size_t len)
{
    char src[1024];
    snprintf(src, sizeof src, "%s/model/data/qwen2/model", data_root());
    qt_ckpt *ck;
    if (qt_ckpt_open(src, &ck)) fail_msg("%s", qt_last_error());
    qt_st_writer *w = qt_st_writer_new();
    assert_non_null(w);
    for (size_t i = 0; i < qt_ckpt_count(ck); i++) {
        const qt_st_tensor *t = qt_ckpt_at(ck, i);
        if (strcmp(t->name, target) == 0) {
            if (replace) assert_int_equal(qt_st_writer_add(w, t->name, replace), 0);
            continue;
        }
        assert_int_equal(qt_st_writer_add(w, t->name, &t->view), 0);
    }
    snprintf(out, len, "%s/%s", tmpdir, name);
    assert_int_equal(qt_mkdirs(out), 0);
    char path[1200];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    assert_int_equal(qt_st_writer_commit(w, path), 0);
    qt_st_writer_free(w);
    qt_ckpt_close(ck);
    /* config.json beside it */
    char cfg_src[1100], *text;
    size_t n;
    snprintf(cfg_src, sizeof cfg_src, "%s/config.json", src);
    assert_int_equal(qt_read_file(cfg_src, 1 << 20, &text, &n), 0);
    snprintf(path, sizeof path, "%s/config.json", out);
    assert_int_equal(qt_write_file_atomic(path, text, n), 0);
    free(text);
}

static void test_checkpoint_errors(void **state)
{
    (void)state;
    char dir[512];
    qt_model *m = NULL;
    static float buf[96 * 64];
    qtool_tensor t = {0};
    t.data = buf;
    t.dtype = QTOOL_DTYPE_F32;
    t.ndim = 2;
    t.shape[0] = 96; /* transposed: the checkpoint has [64, 96] */
    t.shape[1] = 64;
    make_variant("transposed", "model.layers.1.mlp.down_proj.weight", &t, dir, sizeof dir);
    expect_error(qt_model_open(dir, NULL, &m),
                 "model.layers.1.mlp.down_proj.weight: expected [64, 96], found [96, 64]");
    assert_null(m);

    make_variant("missing", "model.norm.weight", NULL, dir, sizeof dir);
    expect_error(qt_model_open(dir, NULL, &m), "model.norm.weight: missing from the checkpoint");

    t.ndim = 1;
    t.shape[0] = 64;
    t.dtype = QTOOL_DTYPE_I32;
    make_variant("int", "model.layers.0.input_layernorm.weight", &t, dir, sizeof dir);
    expect_error(qt_model_open(dir, NULL, &m), "model.layers.0.input_layernorm.weight: dtype I32 is not a float type");

    /* A bare .safetensors file with --config; and without a config. */
    char file[600], cfg[600];
    snprintf(file, sizeof file, "%s/model/data/qwen2/model/model-00001-of-00004.safetensors", data_root());
    snprintf(cfg, sizeof cfg, "%s/model/data/qwen2/model/config.json", data_root());
    expect_error(qt_model_open(file, cfg, &m), "missing from the checkpoint");
    snprintf(file, sizeof file, "%s/missing/model.safetensors", dir);
    expect_error(qt_model_open(dir, "/nonexistent/config.json", &m), "/nonexistent/config.json");
    snprintf(file, sizeof file, "%s/model/data/bert/model/model.safetensors", data_root());
    assert_int_equal(qt_model_open(file, NULL, &m), 0); /* config.json beside the file */
    assert_int_equal(m->cfg.arch, QT_ARCH_BERT);
    qt_model_close(m);
}

static void test_forward_errors(void **state)
{
    (void)state;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/model/data/bert/model", data_root());
    qt_model *m;
    assert_int_equal(qt_model_open(dir, NULL, &m), 0);
    int32_t ids[70] = {0};
    const int32_t *p[1] = {ids};
    int64_t len[1] = {3};
    qt_batch b = {1, p, len};
    float logits[7];
    qt_forward_out out = {logits, NULL, NULL};
    expect_error(qt_model_forward(m, &b, QTOOL_DEVICE_CUDA, NULL, &out), "CUDA"); /* not packed for CUDA */
    ids[1] = 500;
    expect_error(qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out), "token id 500 outside the vocabulary [0, 500)");
    ids[1] = 0;
    len[0] = 0;
    expect_error(qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out), "has no tokens");
    len[0] = 70;
    expect_error(qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out), "the model has 64 positions");
    len[0] = 64; /* the longest BERT allows */
    assert_int_equal(qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out), 0);
    qt_model_close(m);
}

/* ---------------------------------------------------------------- data */

static int load_text(const char *text, const qt_data_options *o, qt_dataset *d)
{
    char path[512];
    snprintf(path, sizeof path, "%s/data.jsonl", tmpdir);
    assert_int_equal(qt_write_file_atomic(path, text, strlen(text)), 0);
    int rc = qt_data_load(path, o, d);
    /* The in-memory parser must agree with the file reader. */
    qt_dataset d2;
    char *err1 = strdup(qt_last_error());
    int rc2 = qt_data_parse(text, strlen(text), path, o, &d2);
    assert_int_equal(rc != 0, rc2 != 0);
    if (rc) assert_string_equal(err1, qt_last_error());
    if (!rc2) {
        assert_int_equal(d->n, d2.n);
        assert_int_equal(d->n_ids, d2.n_ids);
        assert_memory_equal(d->ids, d2.ids, (size_t)d->n_ids * sizeof(int32_t));
        qt_dataset_free(&d2);
    }
    /* Restore the file reader's message. */
    if (rc) qt_fail(rc, "%s", err1);
    free(err1);
    return rc;
}

static const char *const names[] = {"neg", "pos"};
static const int64_t name_ids[] = {0, 1};

static void test_data_ok(void **state)
{
    (void)state;
    qt_data_options o = {0};
    o.vocab_size = 100;
    o.num_labels = 2;
    o.max_length = 3;
    o.label_names = names;
    o.label_ids = name_ids;
    o.n_label_names = 2;
    qt_dataset d;
    assert_int_equal(load_text("\xEF\xBB\xBF{\"input_ids\": [1, 2, 3, 4, 5], \"label\": \"pos\"}\r\n"
                               "\n   \n"
                               "{\"input_ids\": [7], \"label\": 0, \"text\": \"ignored\", \"attention_mask\": [1]}\n"
                               "{\"input_ids\": [8, 9], \"label\": null}\n"
                               "{\"input_ids\": [10, 11], \"label\": \"1\"}",
                               &o, &d),
                     0);
    assert_int_equal(d.n, 4);
    assert_int_equal(d.n_labelled, 3);
    assert_int_equal(d.n_truncated, 1);
    assert_int_equal(d.examples[0].length, 3);
    assert_int_equal(d.examples[0].original_length, 5);
    assert_int_equal(d.examples[0].label, 1);
    assert_int_equal(d.examples[1].line, 4);
    assert_int_equal(d.examples[2].label, QT_DATA_NO_LABEL);
    assert_int_equal(d.examples[3].label, 1);
    assert_int_equal(qt_dataset_ids(&d, 3)[1], 11);
    assert_int_equal(d.max_length, 3);
    qt_dataset_free(&d);
}

static void test_data_hostile(void **state)
{
    (void)state;
    qt_data_options o = {0};
    o.vocab_size = 100;
    o.num_labels = 3;
    qt_dataset d;
    expect_error(load_text("{\"input_ids\": [1], \"label\": 0}\n{\"input_ids\": [1,}\n", &o, &d), "data.jsonl:2: not valid JSON");
    expect_error(load_text("[1, 2]\n", &o, &d), "data.jsonl:1: not a JSON object");
    expect_error(load_text("{\"label\": 1}\n", &o, &d), "data.jsonl:1: no \"input_ids\" list");
    expect_error(load_text("{\"input_ids\": []}\n", &o, &d), "data.jsonl:1: \"input_ids\" is empty");
    expect_error(load_text("\n\n{\"input_ids\": [1, 100]}\n", &o, &d),
                 "data.jsonl:3: input_ids[1] is 100, outside the vocabulary [0, 100)");
    expect_error(load_text("{\"input_ids\": [-1]}\n", &o, &d), "input_ids[0] is -1, outside");
    expect_error(load_text("{\"input_ids\": [1.5]}\n", &o, &d), "input_ids[0] is not an integer");
    expect_error(load_text("{\"input_ids\": [99999999999999999999]}\n", &o, &d), "data.jsonl:1: not valid JSON");
    expect_error(load_text("{\"input_ids\": [1], \"label\": 3}\n", &o, &d), "data.jsonl:1: label 3 is outside [0, 3)");
    expect_error(load_text("{\"input_ids\": [1], \"label\": \"cat\"}\n", &o, &d), "label 'cat' is not a class");
    expect_error(load_text("{\"input_ids\": [1], \"label\": 1.0}\n", &o, &d), "\"label\" must be an integer");
    expect_error(load_text("{\"input_ids\": [1, 2], \"attention_mask\": [1, 0]}\n", &o, &d),
                 "attention_mask[1] is not 1");
    expect_error(load_text("{\"input_ids\": [1], \"input_ids\": [2]}\n", &o, &d), "not valid JSON");
    expect_error(load_text("", &o, &d), "data.jsonl: no examples");
    expect_error(load_text("\n \n", &o, &d), "no examples");
    {
        /* A NUL byte inside a line. */
        static const char nul[] = "{\"input_ids\": [1]}\n{\"input_ids\": [2\0]}\n";
        char p[512];
        snprintf(p, sizeof p, "%s/nul.jsonl", tmpdir);
        assert_int_equal(qt_write_file_atomic(p, nul, sizeof nul - 1), 0);
        expect_error(qt_data_load(p, &o, &d), "nul.jsonl:2: contains a NUL byte");
    }
    /* Deep nesting and a line over the cap. */
    size_t deep = 100000;
    char *s = malloc(deep * 2 + 64);
    size_t k = 0;
    k += (size_t)sprintf(s, "{\"input_ids\": [1], \"x\": ");
    for (size_t i = 0; i < deep; i++) s[k++] = '[';
    for (size_t i = 0; i < deep; i++) s[k++] = ']';
    s[k++] = '}';
    s[k] = 0;
    expect_error(load_text(s, &o, &d), "data.jsonl:1: not valid JSON");
    free(s);
    size_t big = (16u << 20) + 10;
    s = malloc(big + 1);
    memset(s, ' ', big);
    s[big] = 0;
    char path[512];
    snprintf(path, sizeof path, "%s/big.jsonl", tmpdir);
    assert_int_equal(qt_write_file_atomic(path, s, big), 0);
    expect_error(qt_data_load(path, &o, &d), "big.jsonl:1: line longer than");
    free(s);
    expect_error(qt_data_load(tmpdir, &o, &d), "is a folder");
    expect_error(qt_data_load("/nonexistent/x.jsonl", &o, &d), "/nonexistent/x.jsonl: cannot open");
}

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/qtool-model-test.XXXXXX");
    if (!mkdtemp(tmpdir)) return -1;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
    qt_threads_init(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_unsupported), cmocka_unit_test(test_config_modernbert_spellings),
        cmocka_unit_test(test_config_decoders),    cmocka_unit_test(test_checkpoint_errors),
        cmocka_unit_test(test_forward_errors),     cmocka_unit_test(test_data_ok),
        cmocka_unit_test(test_data_hostile),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    qt_threads_shutdown();
    return rc;
}
