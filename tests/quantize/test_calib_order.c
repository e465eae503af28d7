/* The layer-sequential calibration pass, in process, with the fixture
 * plugin (coarse per-row rounding, no input scale) wrapped so that every
 * calibrate and pack call is seen:
 *   - order: block l's calibrate calls all come before block l's packs,
 *     which come before block l+1's calibrate calls;
 *   - counts: each Linear is calibrated once per batch, on all the tokens;
 *   - inputs: the inputs of a block's first Linears (q/k/v, Wqkv) are
 *     bitwise those the finished quantized model feeds them (blocks before
 *     it quantized), and differ from the float model's from block 1 on,
 *     while block 0 sees the float model's own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "model.h"
#include "plugin_host.h"
#include "quantize.h"
#include "threads.h"

#define MAX_LAYERS 64
#define MAX_CALLS 64

typedef struct layer_rec {
    char name[160];
    int block, role;
    uint64_t hash[MAX_CALLS];
    int64_t rows[MAX_CALLS];
    int n;
} layer_rec;

typedef struct recorder {
    layer_rec l[MAX_LAYERS];
    int n;
} recorder;

/* Event log of the wrapped plugin: (block, 0 = calibrate / 1 = pack). */
static int ev_block[4096], ev_kind[4096], n_ev;
static recorder rec_calib, rec_final, rec_float;
static const qtool_plugin_desc *real_desc;

static uint64_t fnv1a(const void *p, size_t n)
{
    const unsigned char *c = p;
    uint64_t h = 14695981039346656037ull;
    for (size_t i = 0; i < n; i++) {
        h ^= c[i];
        h *= 1099511628211ull;
    }
    return h;
}

static void record(recorder *r, const qtool_layer_info *l, const qtool_tensor *x)
{
    layer_rec *e = NULL;
    for (int i = 0; i < r->n && !e; i++)
        if (!strcmp(r->l[i].name, l->name)) e = &r->l[i];
    if (!e) {
        assert_true(r->n < MAX_LAYERS);
        e = &r->l[r->n++];
        memset(e, 0, sizeof *e);
        snprintf(e->name, sizeof e->name, "%s", l->name);
        e->block = l->block_index;
        e->role = l->role;
    }
    assert_true(e->n < MAX_CALLS);
    e->rows[e->n] = x->shape[0];
    e->hash[e->n++] = fnv1a(x->data, (size_t)(x->shape[0] * x->shape[1]) * sizeof(float));
}

static const layer_rec *find(const recorder *r, const char *name)
{
    for (int i = 0; i < r->n; i++)
        if (!strcmp(r->l[i].name, name)) return &r->l[i];
    return NULL;
}

static recorder *calib_target;

static int wrap_calibrate(qtool_instance *inst, const qtool_layer_info *l, const qtool_tensor *x)
{
    record(calib_target, l, x);
    if (n_ev < 4096) {
        ev_block[n_ev] = l->block_index;
        ev_kind[n_ev++] = 0;
    }
    return real_desc->calibrate(inst, l, x);
}

static int wrap_pack(qtool_instance *inst, const qtool_pack_args *a, qtool_packed **out)
{
    if (n_ev < 4096) {
        ev_block[n_ev] = a->layer->block_index;
        ev_kind[n_ev++] = 1;
    }
    return real_desc->pack(inst, a, out);
}

static int final_hook(void *ctx, qt_linear *l, const qtool_tensor *x)
{
    record(ctx, &l->info, x);
    return 0;
}

static int first_group(int role)
{
    return role == QTOOL_ROLE_ATTN_Q || role == QTOOL_ROLE_ATTN_K || role == QTOOL_ROLE_ATTN_V ||
           role == QTOOL_ROLE_ATTN_QKV;
}

static void path_of(char *buf, size_t len, const char *model, const char *leaf)
{
    const char *root = getenv("QTOOL_TEST_DATA");
    snprintf(buf, len, "%s/model/data/%s/%s", root ? root : "tests", model, leaf);
}

static void check_model(const char *name)
{
    char model_dir[1024], data[1024];
    path_of(model_dir, sizeof model_dir, name, "model");
    path_of(data, sizeof data, name, "data.jsonl");
    memset(&rec_calib, 0, sizeof rec_calib);
    memset(&rec_final, 0, sizeof rec_final);
    memset(&rec_float, 0, sizeof rec_float);
    n_ev = 0;

    qt_plugin *p = NULL;
    if (qt_plugin_load(QT_CALIB_FIXTURE, &p)) fail_msg("load fixture: %s", qt_last_error());
    real_desc = p->desc;
    qtool_plugin_desc wrapped = *p->desc;
    wrapped.calibrate = wrap_calibrate;
    wrapped.pack = wrap_pack;
    char *kv[] = {(char *)"quantize=1"};
    qt_plugin_options po;
    if (qt_plugin_parse_options(p, kv, 1, &po)) fail_msg("options: %s", qt_last_error());
    qtool_instance *inst = NULL;
    if (qt_plugin_create(p, &po, -1, NULL, &inst)) fail_msg("create: %s", qt_last_error());

    qt_model *m = NULL, *fm = NULL;
    if (qt_model_open(model_dir, NULL, &m) || qt_model_open(model_dir, NULL, &fm))
        fail_msg("open %s: %s", model_dir, qt_last_error());
    qt_calib_set cs;
    /* Small batches: several calibrate calls per Linear. */
    if (qt_calib_set_load(data, m, NULL, 16, 64, 150, &cs)) fail_msg("calib: %s", qt_last_error());
    assert_true(cs.n_batches >= 3);

    calib_target = &rec_calib;
    if (qt_model_calibrate_pack(m, &wrapped, inst, QTOOL_DEVICE_CPU, cs.batches, cs.n_batches, NULL))
        fail_msg("calibrate_pack %s: %s", name, qt_last_error());

    /* Order: calibrate(l)* pack(l)* calibrate(l+1)* ... */
    int64_t L = m->cfg.n_layers;
    int stage = 0; /* 2 * block + kind */
    for (int i = 0; i < n_ev; i++) {
        int s = 2 * ev_block[i] + ev_kind[i];
        if (s < stage) fail_msg("%s: event %d (block %d, %s) after block %d's %s", name, i, ev_block[i],
                                ev_kind[i] ? "pack" : "calibrate", stage / 2, stage % 2 ? "packs" : "calibration");
        stage = s;
    }
    assert_int_equal(stage, 2 * (L - 1) + 1);

    /* Counts: once per batch, every token. */
    assert_int_equal(rec_calib.n, (int)m->n_linears);
    for (int i = 0; i < rec_calib.n; i++) {
        const layer_rec *e = &rec_calib.l[i];
        assert_int_equal(e->n, (int)cs.n_batches);
        int64_t rows = 0;
        for (int j = 0; j < e->n; j++) {
            int64_t t = 0;
            for (int64_t k = 0; k < cs.batches[j].n; k++) t += cs.batches[j].lengths[k];
            assert_int_equal(e->rows[j], t);
            rows += e->rows[j];
        }
        assert_int_equal(rows, cs.n_tokens);
    }

    /* The finished model feeds the same inputs to each block's first Linears. */
    m->linear_hook = final_hook;
    m->linear_hook_ctx = &rec_final;
    for (size_t j = 0; j < cs.n_batches; j++) {
        qt_forward_out none = {0};
        if (qt_model_forward(m, &cs.batches[j], QTOOL_DEVICE_CPU, NULL, &none)) fail_msg("forward: %s", qt_last_error());
    }
    m->linear_hook = NULL;
    /* The float model's inputs. */
    calib_target = &rec_float;
    for (size_t j = 0; j < cs.n_batches; j++)
        if (qt_model_calibrate(fm, &wrapped, inst, &cs.batches[j])) fail_msg("float: %s", qt_last_error());

    int checked = 0;
    for (int i = 0; i < rec_calib.n; i++) {
        const layer_rec *c = &rec_calib.l[i];
        if (!first_group(c->role)) continue;
        const layer_rec *f = find(&rec_final, c->name), *fl = find(&rec_float, c->name);
        assert_non_null(f);
        assert_non_null(fl);
        assert_int_equal(f->n, c->n);
        int same_float = 1;
        for (int j = 0; j < c->n; j++) {
            if (c->hash[j] != f->hash[j])
                fail_msg("%s: %s batch %d: calibration input differs from the quantized model's", name, c->name, j);
            same_float &= c->hash[j] == fl->hash[j];
        }
        if (c->block == 0 && !same_float) fail_msg("%s: %s: block 0 must see the float model's input", name, c->name);
        if (c->block > 0 && same_float)
            fail_msg("%s: %s: block %d saw the float model's input, not the quantized blocks'", name, c->name, c->block);
        checked++;
    }
    assert_true(checked >= (int)L);

    qt_calib_set_free(&cs);
    qt_model_close(m);
    qt_model_close(fm);
    p->desc->destroy(inst);
    qt_plugin_options_free(&po);
    qt_plugin_unload(p);
}

static void test_qwen2(void **s)
{
    (void)s;
    check_model("qwen2");
}

static void test_llama(void **s)
{
    (void)s;
    check_model("llama");
}

static void test_bert(void **s)
{
    (void)s;
    check_model("bert");
}

static void test_modernbert(void **s)
{
    (void)s;
    check_model("modernbert");
}

/* A calibrating plugin run without data packs like qt_model_pack; a model
 * already quantized cannot be calibrated again. */
static void test_errors(void **s)
{
    (void)s;
    char model_dir[1024];
    path_of(model_dir, sizeof model_dir, "qwen2", "model");
    qt_plugin *p = NULL;
    if (qt_plugin_load(QT_CALIB_FIXTURE, &p)) fail_msg("load fixture: %s", qt_last_error());
    qtool_instance *inst = NULL;
    assert_int_equal(qt_plugin_create(p, NULL, -1, NULL, &inst), 0);
    qt_model *m = NULL;
    assert_int_equal(qt_model_open(model_dir, NULL, &m), 0);
    /* The fixture refuses to pack an uncalibrated layer: the error names it
     * and the model is left unpacked. */
    assert_int_not_equal(qt_model_calibrate_pack(m, p->desc, inst, QTOOL_DEVICE_CPU, NULL, 0, NULL), 0);
    assert_non_null(strstr(qt_last_error(), "could not pack"));
    assert_null(m->desc);
    for (size_t i = 0; i < m->n_linears; i++) assert_null(m->linears[i]->packed);
    qt_model_close(m);
    p->desc->destroy(inst);
    qt_plugin_unload(p);
}

int main(void)
{
    qt_threads_init(2);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2), cmocka_unit_test(test_llama), cmocka_unit_test(test_bert),
        cmocka_unit_test(test_modernbert), cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
