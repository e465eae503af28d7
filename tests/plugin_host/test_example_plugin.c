/* The SDK example plugin (example_rtn8) through the host: round-trip error
 * bound, matmul against a float64 reference at awkward sizes, memory
 * accounting against the allocator, save/load, probe and config JSON.
 * Inputs are fresh random numbers each run; the seed is printed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "alloc.h"
#include "error.h"
#include "plugin_host.h"
#include "threads.h"

static uint64_t rng_state;

static double uniform(void) /* [0, 1) */
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) * (1.0 / 9007199254740992.0);
}

static float normalish(void) { return (float)((uniform() + uniform() + uniform() - 1.5) * 2.0); }

static qt_plugin *plugin;

static int setup(void **state)
{
    (void)state;
    if (qt_plugin_load(QT_EXAMPLE_PLUGIN, &plugin) != 0) {
        print_error("%s\n", qt_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qt_plugin_unload(plugin);
    return 0;
}

/* Saved tensors captured in memory (the host's save path, in miniature). */
typedef struct saved {
    char name[3][32];
    qtool_tensor t[3];
    void *data[3];
    int n;
} saved;

static int sink_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    saved *s = ctx;
    assert_true(s->n < 3);
    size_t bytes = (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype);
    s->data[s->n] = malloc(bytes);
    memcpy(s->data[s->n], t->data, bytes);
    snprintf(s->name[s->n], sizeof s->name[0], "%s", suffix);
    s->t[s->n] = *t;
    s->t[s->n].data = s->data[s->n];
    s->n++;
    return QTOOL_OK;
}

static const qtool_tensor *saved_get(const saved *s, const char *suffix)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->name[i], suffix) == 0) return &s->t[i];
    return NULL;
}

static int source_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    const qtool_tensor *t = saved_get(ctx, suffix);
    if (!t) return QTOOL_ERR_FORMAT;
    *out = *t;
    return QTOOL_OK;
}

static int source_has(void *ctx, const char *suffix) { return saved_get(ctx, suffix) != NULL; }

static void saved_free(saved *s)
{
    for (int i = 0; i < s->n; i++) free(s->data[i]);
    s->n = 0;
}

static void check_memory_matches(const qtool_packed *p, const qt_mem_stats *before)
{
    qt_mem_stats after;
    qt_mem_get_stats(&after);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(plugin->desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(bytes[c], after.current[QTOOL_DEVICE_CPU][c] - before->current[QTOOL_DEVICE_CPU][c]);
}

static void run_case(qtool_instance *inst, float clip, int64_t n, int64_t k, int64_t m, int dtype, int with_bias)
{
    const qtool_plugin_desc *d = plugin->desc;
    float *w32 = malloc((size_t)(n * k) * sizeof(float));
    uint16_t *w16 = malloc((size_t)(n * k) * sizeof(uint16_t));
    float *bias = malloc((size_t)n * sizeof(float));
    float *x = malloc((size_t)(m * k) * sizeof(float));
    float *y = malloc((size_t)(m * n) * sizeof(float));
    float *y2 = malloc((size_t)(m * n) * sizeof(float));
    for (int64_t i = 0; i < n * k; i++) {
        float v = normalish() * (float)(1 + i % 7); /* rows of different ranges */
        if (dtype == QTOOL_DTYPE_F16) w16[i] = qtool_f32_to_f16(v), v = qtool_f16_to_f32(w16[i]);
        if (dtype == QTOOL_DTYPE_BF16) w16[i] = qtool_f32_to_bf16(v), v = qtool_bf16_to_f32(w16[i]);
        w32[i] = v;
    }
    if (n > 2) memset(w32 + k, 0, (size_t)k * sizeof(float)), memset(w16 + k, 0, (size_t)k * 2); /* a zero row */
    for (int64_t i = 0; i < n; i++) bias[i] = normalish();
    for (int64_t i = 0; i < m * k; i++) x[i] = normalish();

    qtool_tensor wt = {dtype == QTOOL_DTYPE_F32 ? (void *)w32 : (void *)w16, dtype, QTOOL_DEVICE_CPU, 2, 0, {n, k}};
    qtool_tensor bt = {bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {n}};
    qtool_layer_info layer = {sizeof layer, QTOOL_ROLE_FFN_UP, "blocks.0.up.weight", k, n, 0, 1};
    qtool_pack_args args = {sizeof args, QTOOL_DEVICE_CPU, &layer, &wt, with_bias ? &bt : NULL, NULL, NULL};
    qt_mem_stats before;
    qt_mem_get_stats(&before);
    qtool_packed *p = NULL;
    assert_int_equal(d->pack(inst, &args, &p), QTOOL_OK);
    check_memory_matches(p, &before);

    /* The codes and scales as the plugin saved them. */
    saved s = {0};
    qtool_save_sink sink = {&s, sink_put};
    assert_int_equal(d->save(p, &sink), QTOOL_OK);
    const qtool_tensor *codes_t = saved_get(&s, "weight"), *scales_t = saved_get(&s, "weight_scale");
    assert_non_null(codes_t);
    assert_non_null(scales_t);
    assert_int_equal(codes_t->dtype, QTOOL_DTYPE_I8);
    assert_int_equal(codes_t->shape[0], n);
    assert_int_equal(codes_t->shape[1], k);
    assert_int_equal(saved_get(&s, "bias") != NULL, with_bias);
    const int8_t *codes = codes_t->data;
    const float *scales = scales_t->data;

    /* Round trip: scale = clip * absmax / 127 and every code is the nearest
     * (or, beyond the clip, the saturated) one. */
    for (int64_t r = 0; r < n; r++) {
        double absmax = 0;
        for (int64_t c = 0; c < k; c++) absmax = fmax(absmax, fabs((double)w32[r * k + c]));
        double scale = absmax > 0 ? clip * absmax / 127.0 : 1.0;
        assert_true(fabs(scales[r] - scale) <= 1e-6 * scale);
        for (int64_t c = 0; c < k; c++) {
            double wv = w32[r * k + c], q = codes[r * k + c];
            if (fabs(wv) <= 127.0 * scales[r]) {
                if (fabs(q * scales[r] - wv) > 0.5 * scales[r] * (1 + 1e-5))
                    fail_msg("row %lld col %lld: w=%g code=%g scale=%g", (long long)r, (long long)c, wv, q,
                             (double)scales[r]);
            } else {
                assert_true(q == (wv > 0 ? 127 : -127));
            }
        }
    }

    /* Matmul against float64 references: exact for the dequantized weights,
     * and within the quantization bound of the original weights. */
    qtool_tensor xt = {x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, k}};
    qtool_tensor yt = {y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, n}};
    qtool_matmul_args margs = {sizeof margs, 0, &xt, &yt, NULL};
    assert_int_equal(d->matmul_cpu(p, &margs), QTOOL_OK);
    for (int64_t i = 0; i < m; i++) {
        for (int64_t r = 0; r < n; r++) {
            double deq = 0, orig = 0, mag = 0, bound = 0, b = with_bias ? bias[r] : 0;
            for (int64_t c = 0; c < k; c++) {
                double xv = x[i * k + c];
                deq += xv * codes[r * k + c] * (double)scales[r];
                orig += xv * w32[r * k + c];
                mag += fabs(xv * codes[r * k + c] * (double)scales[r]);
                bound += fabs(xv) * fmax(0.5 * scales[r], fabs(w32[r * k + c]) - 127.0 * scales[r]);
            }
            double got = y[i * n + r];
            /* float32 accumulation over k terms: |error| <= (k + 2) u sum|terms|. */
            double fp32 = (double)(k + 2) * 6e-8 * (mag + fabs(b)) + 1e-6;
            if (fabs(got - (deq + b)) > fp32)
                fail_msg("y[%lld,%lld] = %.9g, float64 reference %.9g", (long long)i, (long long)r, got, deq + b);
            if (fabs(got - (orig + b)) > bound * (1 + 1e-4) + fp32)
                fail_msg("y[%lld,%lld] = %.9g, unquantized %.9g, bound %.3g", (long long)i, (long long)r, got,
                         orig + b, bound);
        }
    }

    /* Load from what was saved: the same layer, the same output. */
    qtool_load_source src = {&s, source_get, source_has};
    qtool_packed *p2 = NULL;
    qt_mem_get_stats(&before);
    assert_int_equal(d->load(inst, &layer, QTOOL_DEVICE_CPU, &src, &p2), QTOOL_OK);
    check_memory_matches(p2, &before);
    yt.data = y2;
    assert_int_equal(d->matmul_cpu(p2, &margs), QTOOL_OK);
    assert_memory_equal(y, y2, (size_t)(m * n) * sizeof(float));
    d->free_packed(p2);

    /* Freeing gives back exactly what was accounted. */
    qt_mem_stats mid, end;
    qt_mem_get_stats(&mid);
    uint64_t bytes[QTOOL_MEM_COUNT], total = 0;
    d->memory(p, bytes);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) total += bytes[c];
    d->free_packed(p);
    qt_mem_get_stats(&end);
    assert_int_equal(mid.current_total[QTOOL_DEVICE_CPU] - end.current_total[QTOOL_DEVICE_CPU], total);

    saved_free(&s);
    free(w32), free(w16), free(bias), free(x), free(y), free(y2);
}

static qtool_instance *make_instance(const char *opt)
{
    qt_plugin_options o;
    char *kv[1] = {(char *)opt};
    assert_int_equal(qt_plugin_parse_options(plugin, kv, opt ? 1 : 0, &o), 0);
    qtool_instance *inst = NULL;
    assert_int_equal(qt_plugin_create(plugin, &o, -1, NULL, &inst), 0);
    qt_plugin_options_free(&o);
    return inst;
}

static void test_pack_matmul(void **state)
{
    (void)state;
    static const int64_t sizes[][3] = {{1, 1, 1}, {3, 17, 3}, {17, 129, 1}, {129, 3, 17}, {64, 256, 5}};
    qtool_instance *inst = make_instance(NULL);
    qtool_instance *clipped = make_instance("clip_ratio=0.6");
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        for (int dt = 0; dt < 3; dt++) {
            int dtype = dt == 0 ? QTOOL_DTYPE_F32 : dt == 1 ? QTOOL_DTYPE_F16 : QTOOL_DTYPE_BF16;
            run_case(inst, 1.0f, sizes[i][0], sizes[i][1], sizes[i][2], dtype, (int)(i + (size_t)dt) % 2);
            run_case(clipped, 0.6f, sizes[i][0], sizes[i][1], sizes[i][2], dtype, 1);
        }
    }
    plugin->desc->destroy(inst);
    plugin->desc->destroy(clipped);
}

static void test_rejects_bad_input(void **state)
{
    (void)state;
    const qtool_plugin_desc *d = plugin->desc;
    qtool_instance *inst = make_instance(NULL);
    float w[6] = {1, 2, 3, 4, 5, INFINITY};
    qtool_tensor wt = {w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {2, 3}};
    qtool_layer_info layer = {sizeof layer, QTOOL_ROLE_OTHER, "l", 3, 2, -1, 0};
    qtool_pack_args args = {sizeof args, QTOOL_DEVICE_CPU, &layer, &wt, NULL, NULL, NULL};
    qtool_packed *p = (qtool_packed *)1;
    qt_mem_stats before, after;
    qt_mem_get_stats(&before);
    assert_int_equal(d->pack(inst, &args, &p), QTOOL_ERR_INVALID_ARGUMENT); /* inf weight */
    assert_null(p);
    qt_mem_get_stats(&after);
    assert_int_equal(before.current_total[0], after.current_total[0]); /* nothing leaked */
    w[5] = 6;
    layer.in_features = 4; /* shape disagrees with the layer */
    assert_int_equal(d->pack(inst, &args, &p), QTOOL_ERR_INVALID_ARGUMENT);
    args.device = QTOOL_DEVICE_CUDA;
    assert_int_equal(d->pack(inst, &args, &p), QTOOL_ERR_UNSUPPORTED);
    d->destroy(inst);

    qt_plugin_options o;
    char *kv[1] = {"clip_ratio=0.4"};
    assert_int_not_equal(qt_plugin_parse_options(plugin, kv, 1, &o), 0);
    assert_non_null(strstr(qt_last_error(), "0.4 is outside 0.5..1"));
}

static void test_probe_and_config(void **state)
{
    (void)state;
    const qtool_plugin_desc *d = plugin->desc;
    qtool_device_info dev = {.struct_size = sizeof dev, .kind = QTOOL_DEVICE_CPU};
    char reason[128] = "";
    assert_int_equal(d->probe(&dev, reason, sizeof reason), QTOOL_OK);
    dev.kind = QTOOL_DEVICE_CUDA;
    assert_int_equal(d->probe(&dev, reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    assert_string_equal(reason, "example_rtn8 runs on the CPU only");

    qtool_instance *inst = make_instance("clip_ratio=0.75");
    char json[256];
    assert_int_equal(d->quant_config_json(inst, json, sizeof json), QTOOL_OK);
    assert_string_equal(json, "{\"quant_method\": \"example_rtn8\", \"bits\": 8, \"clip_ratio\": 0.75}");
    assert_int_equal(d->accepts_config(json), 1);
    assert_int_equal(d->accepts_config("{\"quant_method\": \"awq\"}"), 0);
    assert_int_not_equal(d->quant_config_json(inst, json, 10), QTOOL_OK); /* truncated */
    d->destroy(inst);
}

int main(void)
{
    rng_state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (!rng_state) rng_state = 1;
    printf("seed %llu\n", (unsigned long long)rng_state);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_matmul),
        cmocka_unit_test(test_rejects_bad_input),
        cmocka_unit_test(test_probe_and_config),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    qt_threads_shutdown();
    return rc;
}
