/* The CPU forward pass against transformers' float32 logits (made by
 * make_reference.py) for every architecture: one example at a time, all
 * examples in one batch, and other batch compositions (which must give
 * bit-identical results). Tolerance: per example, max |ours - ref| <=
 * 1e-4 * max |ref| over that example's logits (and the same for the pooled
 * hidden state). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "data.h"
#include "error.h"
#include "host_services.h"
#include "model.h"
#include "ref_plugin.h"
#include "safetensors.h"
#include "threads.h"

#define TOL 1e-4

typedef struct fixture {
    char dir[1024];
    qt_model *m;
    qt_dataset d;
    qt_ckpt *ref;
    const float *ref_logits, *ref_pooled;
    qt_services svc;
    qtool_instance *inst;
} fixture;

static int64_t label_lookup(void *ctx, const char *name)
{
    return qt_model_label_id(ctx, name);
}

static const char *data_root(void)
{
    const char *d = getenv("QTOOL_TEST_DATA");
    return d ? d : "tests";
}

static void open_fixture(fixture *f, const char *name)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "%s/model/data/%s", data_root(), name);
    char path[1200];
    snprintf(path, sizeof path, "%s/model", f->dir);
    int rc = qt_model_open(path, NULL, &f->m);
    if (rc) fail_msg("open %s: %s", path, qt_last_error());
    qt_data_options o = {0};
    o.vocab_size = f->m->cfg.vocab_size;
    o.num_labels = f->m->cfg.num_labels;
    o.label_lookup = label_lookup;
    o.label_ctx = &f->m->cfg;
    snprintf(path, sizeof path, "%s/data.jsonl", f->dir);
    if (qt_data_load(path, &o, &f->d)) fail_msg("data %s: %s", path, qt_last_error());
    snprintf(path, sizeof path, "%s/reference.safetensors", f->dir);
    if (qt_ckpt_open(path, &f->ref)) fail_msg("reference %s: %s", path, qt_last_error());
    const qt_st_tensor *t = qt_ckpt_find(f->ref, "logits");
    assert_non_null(t);
    assert_int_equal(t->view.dtype, QTOOL_DTYPE_F32);
    assert_int_equal(t->view.shape[0], f->d.n);
    assert_int_equal(t->view.shape[1], f->m->cfg.num_labels);
    f->ref_logits = t->view.data;
    t = qt_ckpt_find(f->ref, "pooled");
    assert_non_null(t);
    assert_int_equal(t->view.shape[1], f->m->cfg.hidden_size);
    f->ref_pooled = t->view.data;
    qt_services_init(&f->svc, "ref_f32", -1, NULL);
    char msg[256];
    assert_int_equal(ref_plugin_desc.create(&f->svc.table, NULL, 0, &f->inst, msg, sizeof msg), 0);
    rc = qt_model_pack(f->m, &ref_plugin_desc, f->inst, QTOOL_DEVICE_CPU);
    if (rc) fail_msg("pack: %s", qt_last_error());
    assert_int_equal(ref_plugin_packed(f->inst), (int)f->m->n_linears);
}

static void close_fixture(fixture *f)
{
    qt_model_close(f->m);
    ref_plugin_desc.destroy(f->inst);
    qt_ckpt_close(f->ref);
    qt_dataset_free(&f->d);
}

/* Runs examples idx[0..n) as one batch; writes their logits/pooled rows in
 * dataset order into logits/pooled. */
static void run_batch(fixture *f, const int64_t *idx, int64_t n, float *logits, float *pooled)
{
    const int32_t **ids = calloc((size_t)n, sizeof *ids);
    int64_t *len = calloc((size_t)n, sizeof *len);
    int64_t C = f->m->cfg.num_labels, H = f->m->cfg.hidden_size;
    float *lg = calloc((size_t)(n * C), sizeof(float)), *pl = calloc((size_t)(n * H), sizeof(float));
    assert_non_null(ids);
    assert_non_null(len);
    assert_non_null(lg);
    assert_non_null(pl);
    for (int64_t i = 0; i < n; i++) {
        ids[i] = qt_dataset_ids(&f->d, idx[i]);
        len[i] = f->d.examples[idx[i]].length;
    }
    qt_batch b = {n, ids, len};
    qt_forward_out out = {lg, pl, NULL};
    int rc = qt_model_forward(f->m, &b, QTOOL_DEVICE_CPU, NULL, &out);
    if (rc) fail_msg("forward: %s", qt_last_error());
    for (int64_t i = 0; i < n; i++) {
        memcpy(logits + idx[i] * C, lg + i * C, (size_t)C * sizeof(float));
        memcpy(pooled + idx[i] * H, pl + i * H, (size_t)H * sizeof(float));
    }
    free(ids);
    free(len);
    free(lg);
    free(pl);
}

static double rel_err_row(const float *got, const float *ref, int64_t n)
{
    double mx = 0, err = 0;
    for (int64_t j = 0; j < n; j++) {
        if (fabs(ref[j]) > mx) mx = fabs(ref[j]);
        double e = fabs((double)got[j] - ref[j]);
        if (!(e <= err)) err = e; /* NaN propagates as a failure */
    }
    return err / (mx > 1e-30 ? mx : 1e-30);
}

static void expect_close(const fixture *f, const float *logits, const float *pooled, const char *what)
{
    int64_t C = f->m->cfg.num_labels, H = f->m->cfg.hidden_size;
    double worst = 0, worst_p = 0;
    for (int64_t i = 0; i < f->d.n; i++) {
        double e = rel_err_row(logits + i * C, f->ref_logits + i * C, C);
        double ep = rel_err_row(pooled + i * H, f->ref_pooled + i * H, H);
        if (!(e <= TOL) || !(ep <= TOL))
            fail_msg("%s %s: example %lld (line %lld, %lld tokens): logits error %.3g, pooled error %.3g > %g",
                     f->dir, what, (long long)i, (long long)f->d.examples[i].line,
                     (long long)f->d.examples[i].length, e, ep, TOL);
        if (e > worst) worst = e;
        if (ep > worst_p) worst_p = ep;
    }
    print_message("%s %s: worst relative error logits %.2e, pooled %.2e\n", strrchr(f->dir, '/') + 1, what, worst,
                  worst_p);
}

static void check_model(const char *name)
{
    fixture f;
    open_fixture(&f, name);
    int64_t N = f.d.n, C = f.m->cfg.num_labels, H = f.m->cfg.hidden_size;
    size_t lb = (size_t)(N * C) * sizeof(float), pb = (size_t)(N * H) * sizeof(float);
    float *single = malloc(lb), *single_p = malloc(pb), *all = malloc(lb), *all_p = malloc(pb);
    float *mixed = malloc(lb), *mixed_p = malloc(pb);
    int64_t *idx = calloc((size_t)N, sizeof *idx);
    assert_true(single && single_p && all && all_p && mixed && mixed_p && idx);

    /* One example at a time. */
    for (int64_t i = 0; i < N; i++) {
        int64_t one[1] = {i};
        run_batch(&f, one, 1, single, single_p);
    }
    expect_close(&f, single, single_p, "batch 1");

    /* Everything in one batch. */
    for (int64_t i = 0; i < N; i++) idx[i] = i;
    run_batch(&f, idx, N, all, all_p);
    expect_close(&f, all, all_p, "one batch");
    assert_memory_equal(all, single, lb);
    assert_memory_equal(all_p, single_p, pb);

    /* Reversed, in uneven batches of 5, 1, 7, 3, ... */
    for (int64_t i = 0; i < N; i++) idx[i] = N - 1 - i;
    static const int64_t sizes[] = {5, 1, 7, 3, 2, 6};
    int64_t done = 0;
    for (int k = 0; done < N; k++) {
        int64_t s = sizes[k % 6];
        if (s > N - done) s = N - done;
        run_batch(&f, idx + done, s, mixed, mixed_p);
        done += s;
    }
    assert_memory_equal(mixed, single, lb);
    assert_memory_equal(mixed_p, single_p, pb);

    /* Activations are returned to the allocator. */
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    assert_int_equal(st.current[QTOOL_DEVICE_CPU][QTOOL_MEM_ACTIVATIONS], 0);

    free(single);
    free(single_p);
    free(all);
    free(all_p);
    free(mixed);
    free(mixed_p);
    free(idx);
    close_fixture(&f);
}

/* Decoders with q|k|v and gate|up packed as one Linear each (a plugin that
 * declares QTOOL_PLUGIN_ROW_INDEPENDENT, qt_model.fuse_linears): the same
 * logits and pooled states as the Linears packed apart, and as the
 * reference. The reference plugin computes every output with the same
 * float64 dot product, so "the same" is bit for bit. */
static void check_fused(const char *name)
{
    fixture f;
    open_fixture(&f, name);
    int64_t N = f.d.n, C = f.m->cfg.num_labels, H = f.m->cfg.hidden_size, L = f.m->cfg.n_layers;
    size_t lb = (size_t)(N * C) * sizeof(float), pb = (size_t)(N * H) * sizeof(float);
    float *apart = malloc(lb), *apart_p = malloc(pb), *fused = malloc(lb), *fused_p = malloc(pb);
    int64_t *idx = calloc((size_t)N, sizeof *idx);
    assert_true(apart && apart_p && fused && fused_p && idx);
    for (int64_t i = 0; i < N; i++) idx[i] = i;
    run_batch(&f, idx, N, apart, apart_p);

    qtool_plugin_desc row_desc = ref_plugin_desc;
    row_desc.flags |= QTOOL_PLUGIN_ROW_INDEPENDENT;
    const int before = ref_plugin_packed(f.inst);
    f.m->fuse_linears = 1;
    if (qt_model_pack(f.m, &row_desc, f.inst, QTOOL_DEVICE_CPU)) fail_msg("fused pack: %s", qt_last_error());
    for (int64_t b = 0; b < L; b++) {
        assert_int_equal(f.m->blocks[b].fused, 1);
        assert_null(f.m->blocks[b].q.packed);
        assert_null(f.m->blocks[b].up.packed);
        assert_non_null(strstr(f.m->blocks[b].qkv.name, "qkv_proj_fused.weight"));
        assert_int_equal(f.m->blocks[b].gate_up.info.out_features, 2 * f.m->cfg.intermediate_size);
    }
    /* 7 Linears a block became 4. */
    assert_int_equal(ref_plugin_packed(f.inst) - before, (int)f.m->n_linears - 3 * (int)L);
    uint64_t mem[QTOOL_MEM_COUNT];
    assert_int_equal(qt_model_packed_memory(f.m, mem), 0);
    assert_true(mem[QTOOL_MEM_WEIGHTS] > 0);
    run_batch(&f, idx, N, fused, fused_p);
    assert_memory_equal(fused, apart, lb);
    assert_memory_equal(fused_p, apart_p, pb);
    expect_close(&f, fused, fused_p, "fused Linears");

    /* Without the flag, or without fuse_linears, nothing is fused. */
    if (qt_model_pack(f.m, &ref_plugin_desc, f.inst, QTOOL_DEVICE_CPU)) fail_msg("pack: %s", qt_last_error());
    for (int64_t b = 0; b < L; b++) assert_int_equal(f.m->blocks[b].fused, 0);
    f.m->fuse_linears = 0;
    if (qt_model_pack(f.m, &row_desc, f.inst, QTOOL_DEVICE_CPU)) fail_msg("pack: %s", qt_last_error());
    for (int64_t b = 0; b < L; b++) assert_int_equal(f.m->blocks[b].fused, 0);
    free(apart);
    free(apart_p);
    free(fused);
    free(fused_p);
    free(idx);
    close_fixture(&f);
}

static void test_fused_linears(void **state)
{
    (void)state;
    check_fused("qwen2");
    check_fused("llama");
}

static void test_bert(void **state)
{
    (void)state;
    check_model("bert");
}

static void test_modernbert(void **state)
{
    (void)state;
    check_model("modernbert");
}

static void test_modernbert_mean(void **state)
{
    (void)state;
    check_model("modernbert_mean");
}

static void test_qwen2(void **state)
{
    (void)state;
    check_model("qwen2");
}

static void test_llama(void **state)
{
    (void)state;
    check_model("llama");
}

/* Unpacked (checkpoint float32) forward gives the same logits, and
 * calibration hands every Linear its input. */
static void test_calibrate_and_unpacked(void **state)
{
    (void)state;
    fixture f;
    open_fixture(&f, "qwen2");
    int64_t N = f.d.n, C = f.m->cfg.num_labels, H = f.m->cfg.hidden_size;
    float *a = malloc((size_t)(N * C) * sizeof(float)), *ap = malloc((size_t)(N * H) * sizeof(float));
    int64_t *idx = calloc((size_t)N, sizeof *idx);
    for (int64_t i = 0; i < N; i++) idx[i] = i;
    qt_model_unpack(f.m);
    run_batch(&f, idx, N, a, ap);
    expect_close(&f, a, ap, "unpacked");
    const int32_t *ids[2] = {qt_dataset_ids(&f.d, 0), qt_dataset_ids(&f.d, 2)};
    int64_t len[2] = {f.d.examples[0].length, f.d.examples[2].length};
    qt_batch b = {2, ids, len};
    assert_int_equal(qt_model_calibrate(f.m, &ref_plugin_desc, f.inst, &b), 0);
    assert_int_equal(ref_plugin_calibrated(f.inst), (int)f.m->n_linears);
    free(a);
    free(ap);
    free(idx);
    close_fixture(&f);
}

/* A plugin that returns an input scale from pack: the runtime divides the
 * Linear's input by it, and the logits stay those of the reference. */
static void check_input_scale(const char *name)
{
    ref_plugin_input_scale = 1;
    fixture f;
    open_fixture(&f, name);
    ref_plugin_input_scale = 0;
    /* Applied explicitly, or folded into the preceding norm or Linear. */
    for (size_t i = 0; i < f.m->n_linears; i++)
        assert_true(f.m->linears[i]->input_scale || f.m->linears[i]->input_scale_folded);
    int64_t N = f.d.n, C = f.m->cfg.num_labels, H = f.m->cfg.hidden_size;
    float *a = malloc((size_t)(N * C) * sizeof(float)), *ap = malloc((size_t)(N * H) * sizeof(float));
    int64_t *idx = calloc((size_t)N, sizeof *idx);
    for (int64_t i = 0; i < N; i++) idx[i] = i;
    run_batch(&f, idx, N, a, ap);
    expect_close(&f, a, ap, "input scale");
    free(a);
    free(ap);
    free(idx);
    close_fixture(&f);
}

static void test_input_scale(void **state)
{
    (void)state;
    check_input_scale("modernbert");
    check_input_scale("llama");
}

int main(void)
{
    qt_threads_init(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bert),       cmocka_unit_test(test_modernbert), cmocka_unit_test(test_modernbert_mean),
        cmocka_unit_test(test_qwen2),      cmocka_unit_test(test_llama),      cmocka_unit_test(test_calibrate_and_unpacked),
        cmocka_unit_test(test_input_scale),  cmocka_unit_test(test_fused_linears),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    qt_threads_shutdown();
    return rc;
}
