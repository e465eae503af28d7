/* fp8 plugin, CPU side: the E4M3 codec (all 256 codes; random and
 * adversarial floats against a float64 nearest-even reference, with
 * saturation, subnormals and NaN), probe verdicts for simulated cards,
 * weight packing against the reference quantizer, the emulated GPU product
 * against the float64 product at odd shapes, static scales from
 * calibration, save/load in the compressed-tensors FP8 layout,
 * quantization_config, memory accounting, validation. Fresh random inputs
 * each run (seed printed). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "e4m3_codec.h"
#include "fp8_ref.h"

static int setup(void **state)
{
    (void)state;
    return harness_open(&H, "fp8", -1, NULL);
}

static int teardown(void **state)
{
    (void)state;
    harness_close(&H);
    return 0;
}

static void test_decode_all_codes(void **state)
{
    (void)state;
    for (int c = 0; c < 256; c++) {
        double want = ref_decode(c);
        float got = e4m3_decode((uint8_t)c);
        if (isnan(want)) {
            assert_true(isnan(got));
            continue;
        }
        assert_true((double)got == want);
        assert_int_equal(signbit(got) != 0, (c & 0x80) != 0);
        /* every finite code encodes back to itself */
        assert_int_equal(e4m3_encode(got), c);
    }
    assert_true(e4m3_decode(0x7E) == 448.0f);
    assert_true(e4m3_decode(0x01) == 0x1p-9f);
    assert_true(e4m3_decode(0x08) == 0x1p-6f);
    assert_true(e4m3_decode(0x07) == 7 * 0x1p-9f);
}

static float f_from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_encode(float f)
{
    int want = ref_encode((double)f), got = e4m3_encode(f);
    if (want != got) {
        fprintf(stderr, "encode(%a = %.9g): 0x%02x, want 0x%02x\n", (double)f, (double)f, got, want);
        fail();
    }
}

static void test_encode_random(void **state)
{
    (void)state;
    /* Midpoints between neighbouring codes (ties), and one float either
     * side of them. */
    for (int c = 0; c < 0x7E; c++) {
        double lo = ref_decode(c), hi = ref_decode(c + 1), mid = 0.5 * (lo + hi);
        float m = (float)mid;
        assert_true((double)m == mid); /* exact in float */
        for (int s = 0; s < 2; s++) {
            float v = s ? -m : m;
            check_encode(v);
            check_encode(nextafterf(v, INFINITY));
            check_encode(nextafterf(v, -INFINITY));
            check_encode(s ? -(float)lo : (float)lo);
        }
    }
    /* Saturation: 448 .. 464 (nearest is 448 or the tie at 464), above,
     * infinities; NaN; zeros and underflow. */
    static const float special[] = {448.0f, 449.0f, 463.99f, 464.0f, 464.01f, 480.0f, 1e6f, 3.4e38f, 0.0f, -0.0f,
                                    0x1p-10f, 0x1.0001p-10f, 0x1p-11f, 1e-30f, 1e-45f};
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
        check_encode(special[i]);
        check_encode(-special[i]);
    }
    assert_int_equal(e4m3_encode(INFINITY), 0x7E);
    assert_int_equal(e4m3_encode(-INFINITY), 0xFE);
    assert_int_equal(e4m3_encode(NAN), 0x7F);
    assert_int_equal(e4m3_encode(-NAN) & 0x7F, 0x7F);
    assert_int_equal(e4m3_encode(-0.0f), 0x80);
    /* Random floats: log-uniform over the whole range (subnormals included),
     * and random bit patterns. */
    for (int i = 0; i < 200000; i++) {
        double e = -14.0 + 25.0 * rng_uniform();
        float v = (float)(exp2(e) * (rng_next() & 1 ? -1 : 1));
        check_encode(v);
        uint32_t u = (uint32_t)rng_next();
        float r = f_from_bits(u);
        if (isnan(r))
            assert_int_equal(e4m3_encode(r), 0x7F);
        else
            check_encode(r);
    }
}

/* ------------------------------------------------------------ probe */

static int probe(int kind, int major, int minor, const char *name, char *reason, size_t len)
{
    qtool_device_info d;
    memset(&d, 0, sizeof d);
    d.struct_size = sizeof d;
    d.kind = kind;
    d.cc_major = major;
    d.cc_minor = minor;
    d.simulated = 1;
    snprintf(d.name, sizeof d.name, "%s", name);
    reason[0] = '\0';
    return H.desc->probe(&d, reason, len);
}

static void test_probe(void **state)
{
    (void)state;
    char reason[256];
    assert_int_equal(probe(QTOOL_DEVICE_CUDA, 7, 5, "Tesla T4", reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    assert_string_equal(reason, "needs compute capability >= 8.9 (FP8 tensor cores); found 7.5 (Tesla T4)");
    assert_int_equal(probe(QTOOL_DEVICE_CUDA, 8, 0, "NVIDIA A100-SXM4-80GB", reason, sizeof reason),
                     QTOOL_ERR_UNSUPPORTED);
    assert_string_equal(reason,
                        "needs compute capability >= 8.9 (FP8 tensor cores); found 8.0 (NVIDIA A100-SXM4-80GB)");
    assert_int_equal(probe(QTOOL_DEVICE_CUDA, 8, 6, "NVIDIA A10", reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    assert_string_equal(reason, "needs compute capability >= 8.9 (FP8 tensor cores); found 8.6 (NVIDIA A10)");
    assert_int_equal(probe(QTOOL_DEVICE_CPU, 0, 0, "cpu", reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    /* 8.9, 9.0 and later: allowed where the plugin has CUDA code. */
    int cuda_build = (H.desc->devices & QTOOL_DEVMASK_CUDA) &&
                     probe(QTOOL_DEVICE_CUDA, 9, 0, "NVIDIA H100 80GB HBM3", reason, sizeof reason) == QTOOL_OK;
    static const int ok[][2] = {{8, 9}, {9, 0}, {10, 0}, {12, 0}};
    for (int i = 0; i < 4; i++) {
        int rc = probe(QTOOL_DEVICE_CUDA, ok[i][0], ok[i][1], "card", reason, sizeof reason);
        if (cuda_build) {
            assert_int_equal(rc, QTOOL_OK);
        } else {
            assert_int_equal(rc, QTOOL_ERR_UNSUPPORTED);
            assert_string_equal(reason, "this build of the fp8 plugin has no CUDA code");
        }
    }
    /* A short buffer truncates, never overflows. */
    char small[16];
    memset(small, 'x', sizeof small);
    assert_int_equal(probe(QTOOL_DEVICE_CUDA, 7, 5, "Tesla T4", small, 8), QTOOL_ERR_UNSUPPORTED);
    assert_int_equal(strlen(small), 7);
    assert_int_equal(small[9], 'x');
    assert_int_equal(H.desc->devices, QTOOL_DEVMASK_CUDA);
    assert_null(H.desc->matmul_cpu);
}

/* ------------------------------------------------------------ packing */

static void test_pack_codes(void **state)
{
    (void)state;
    const int64_t N = 37, K = 53;
    float *w = malloc(N * K * 4), *what = malloc(N * K * 4);
    fill_normal(w, N * K, 0.07f);
    for (int64_t k = 0; k < K; k++) w[5 * K + k] = 0.0f; /* a zero row */
    w[2 * K + 3] = 25.0f;                                /* one large weight: tiny ones go subnormal */
    qtool_instance *inst = make_inst(NULL, 0);
    qtool_packed *p = pack_layer(inst, "w.weight", w, N, K, NULL, QTOOL_DEVICE_CPU);
    ct_saved sv;
    save_layer(p, &sv, N, K);
    assert_int_equal(H.desc->dequantize(p, what), QTOOL_OK);
    double e2 = 0, s2 = 0;
    for (int64_t n = 0; n < N; n++) {
        float amax = 0.0f;
        for (int64_t k = 0; k < K; k++) amax = fmaxf(amax, fabsf(w[n * K + k]));
        assert_true(sv.ws[n] == amax / 448.0f);
        float inv = amax > 0 ? 448.0f / amax : 0.0f;
        for (int64_t k = 0; k < K; k++) {
            int want = ref_encode((double)(w[n * K + k] * inv));
            assert_int_equal(sv.u8[n * K + k], want);
            assert_true(what[n * K + k] == (float)ref_decode(want) * sv.ws[n]);
            double d = what[n * K + k] - (double)w[n * K + k];
            e2 += d * d;
            s2 += (double)w[n * K + k] * w[n * K + k];
        }
    }
    /* 3 mantissa bits: about 2-3% relative RMS for normal-ish weights. */
    assert_true(sqrt(e2 / s2) < 0.05);
    store_free(&sv.st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
    free(what);
}

/* The emulated GPU product at odd shapes against float64: E4M3 on both
 * sides keeps it within a few percent (8% leaves room for the spread of a
 * single token's outputs). */
static void test_emulated_product(void **state)
{
    (void)state;
    static const int64_t Ms[] = {1, 3, 17, 129};
    static const int64_t shapes[][2] = {{3, 1}, {17, 5}, {33, 67}, {129, 129}, {64, 512}};
    for (int mi = 0; mi < 4; mi++)
        for (int si = 0; si < 5; si++) {
            int64_t M = Ms[mi], N = shapes[si][0], K = shapes[si][1];
            float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(M * K * 4), *y = malloc(M * N * 4);
            double *yr = malloc(M * N * 8);
            fill_normal(w, N * K, 1.0f / sqrtf((float)K));
            fill_normal(b, N, 0.5f);
            fill_normal(x, M * K, 1.0f);
            for (int64_t k = 0; k < K; k += 16)
                for (int64_t m = 0; m < M; m++) x[m * K + k] *= 10.0f; /* outlier channels */
            round_to_f16(x, M * K);
            qtool_instance *inst = make_inst(NULL, 0);
            qtool_packed *p = pack_layer(inst, "e.weight", w, N, K, (mi + si) % 2 ? b : NULL, QTOOL_DEVICE_CPU);
            ct_saved sv;
            save_layer(p, &sv, N, K);
            emulate(&sv, x, y, NULL, M, N, K);
            reference(w, (mi + si) % 2 ? b : NULL, x, yr, M, N, K);
            double err = rel_rms(y, yr, M * N);
            if (err > 0.08) {
                fprintf(stderr, "M=%lld N=%lld K=%lld: relative error %.4f\n", (long long)M, (long long)N,
                        (long long)K, err);
                fail();
            }
            store_free(&sv.st);
            H.desc->free_packed(p);
            H.desc->destroy(inst);
            free(w);
            free(b);
            free(x);
            free(y);
            free(yr);
        }
}

static void test_static_scale(void **state)
{
    (void)state;
    const int64_t N = 20, K = 48, T = 64;
    float *w = malloc(N * K * 4), *x = malloc(T * K * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(x, T * K, 2.0f);
    const char *kv[] = {"act_scale=tensor"};
    qtool_instance *inst = make_inst(kv, 1);
    /* No calibration data: refused. */
    qtool_tensor wt = tview(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K);
    qtool_layer_info li = layer_info("t.weight", N, K);
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.layer = &li;
    pa.weight = &wt;
    qtool_packed *q = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &q), QTOOL_ERR_INVALID_ARGUMENT);
    calibrate(inst, "t.weight", x, T / 2, N, K);
    calibrate(inst, "t.weight", x + (T / 2) * K, T - T / 2, N, K);
    qtool_packed *p = pack_layer(inst, "t.weight", w, N, K, NULL, QTOOL_DEVICE_CPU);
    ct_saved sv;
    save_layer(p, &sv, N, K);
    float amax = 0.0f;
    for (int64_t i = 0; i < T * K; i++) amax = fmaxf(amax, fabsf(x[i]));
    assert_true(sv.act_scale == amax / 448.0f);
    store_free(&sv.st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    /* Per-token instances take calibration data and ignore it. */
    inst = make_inst(NULL, 0);
    calibrate(inst, "t.weight", x, T, N, K);
    p = pack_layer(inst, "t.weight", w, N, K, NULL, QTOOL_DEVICE_CPU);
    save_layer(p, &sv, N, K);
    assert_true(sv.act_scale == 0.0f);
    store_free(&sv.st);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
    free(x);
}

static void test_save_load(void **state)
{
    (void)state;
    const int64_t N = 21, K = 35, T = 16;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(T * K * 4), *d1 = malloc(N * K * 4),
          *d2 = malloc(N * K * 4);
    fill_normal(w, N * K, 0.3f);
    fill_normal(b, N, 0.3f);
    fill_normal(x, T * K, 1.0f);
    for (int st = 0; st < 2; st++) {
        const char *kv[] = {st ? "act_scale=tensor" : "act_scale=token"};
        qtool_instance *inst = make_inst(kv, 1);
        calibrate(inst, "r.weight", x, T, N, K);
        qtool_packed *p = pack_layer(inst, "r.weight", w, N, K, b, QTOOL_DEVICE_CPU);
        assert_int_equal(H.desc->dequantize(p, d1), QTOOL_OK);
        store sto = {0};
        qtool_save_sink sink = {&sto, store_put};
        assert_int_equal(H.desc->save(p, &sink), QTOOL_OK);
        assert_int_equal(sto.n, st ? 4 : 3);
        H.desc->free_packed(p);
        H.desc->destroy(inst);

        qtool_instance *fresh = make_inst(NULL, 0);
        qtool_layer_info li = layer_info("r.weight", N, K);
        qtool_load_source src = {&sto, store_get, store_has};
        qtool_packed *pl = NULL;
        assert_int_equal(H.desc->load(fresh, &li, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_OK);
        assert_int_equal(H.desc->dequantize(pl, d2), QTOOL_OK);
        assert_memory_equal(d1, d2, N * K * 4);
        store again = {0};
        qtool_save_sink sink2 = {&again, store_put};
        assert_int_equal(H.desc->save(pl, &sink2), QTOOL_OK);
        assert_int_equal(again.n, sto.n);
        for (int i = 0; i < sto.n; i++) {
            stored *o = store_find(&again, sto.items[i].name);
            assert_non_null(o);
            assert_memory_equal(o->t.data, sto.items[i].t.data,
                                (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
        }
        store_free(&again);
        H.desc->free_packed(pl);
        /* A per-tensor weight scale of shape [1] (llm-compressor's "FP8"
         * preset) in bf16. */
        stored *ws = store_find(&sto, "weight_scale"), *wq = store_find(&sto, "weight");
        uint16_t *one = malloc(2);
        one[0] = qtool_f32_to_bf16(0.01f);
        free(ws->t.data);
        ws->t.data = one;
        ws->t.dtype = QTOOL_DTYPE_BF16;
        ws->t.ndim = 1;
        ws->t.shape[0] = 1;
        assert_int_equal(H.desc->load(fresh, &li, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_OK);
        assert_int_equal(H.desc->dequantize(pl, d2), QTOOL_OK);
        for (int64_t i = 0; i < N * K; i++)
            assert_true(d2[i] == e4m3_decode(((uint8_t *)wq->t.data)[i]) * qtool_bf16_to_f32(one[0]));
        H.desc->free_packed(pl);
        /* Refusals: a NaN code, an I8 weight, a negative scale, a shape
         * mismatch, a CUDA load without CUDA support or device is fine to
         * skip here. */
        uint8_t keep = ((uint8_t *)wq->t.data)[3];
        ((uint8_t *)wq->t.data)[3] = 0xFF;
        assert_int_equal(H.desc->load(fresh, &li, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_ERR_FORMAT);
        ((uint8_t *)wq->t.data)[3] = keep;
        wq->t.dtype = QTOOL_DTYPE_I8;
        assert_int_equal(H.desc->load(fresh, &li, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_ERR_FORMAT);
        wq->t.dtype = QTOOL_DTYPE_F8_E4M3;
        one[0] = qtool_f32_to_bf16(-1.0f);
        assert_int_equal(H.desc->load(fresh, &li, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_ERR_FORMAT);
        qtool_layer_info bad = layer_info("r.weight", N + 1, K);
        assert_int_equal(H.desc->load(fresh, &bad, QTOOL_DEVICE_CPU, &src, &pl), QTOOL_ERR_FORMAT);
        store_free(&sto);
        H.desc->destroy(fresh);
    }
    free(w);
    free(b);
    free(x);
    free(d1);
    free(d2);
}

static void test_quant_config(void **state)
{
    (void)state;
    char buf[4096];
    for (int st = 0; st < 2; st++) {
        const char *kv[] = {st ? "act_scale=tensor" : "act_scale=token"};
        qtool_instance *inst = make_inst(kv, 1);
        assert_int_equal(H.desc->quant_config_json(inst, buf, sizeof buf), QTOOL_OK);
        json_error_t err;
        json_t *j = json_loads(buf, 0, &err);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "quant_method")), "compressed-tensors");
        assert_string_equal(json_string_value(json_object_get(j, "format")), "float-quantized");
        json_t *g = json_object_get(json_object_get(j, "config_groups"), "group_0");
        json_t *wq = json_object_get(g, "weights"), *aq = json_object_get(g, "input_activations");
        assert_int_equal(json_integer_value(json_object_get(wq, "num_bits")), 8);
        assert_string_equal(json_string_value(json_object_get(wq, "type")), "float");
        assert_string_equal(json_string_value(json_object_get(wq, "strategy")), "channel");
        assert_string_equal(json_string_value(json_object_get(aq, "type")), "float");
        assert_string_equal(json_string_value(json_object_get(aq, "strategy")), st ? "tensor" : "token");
        assert_true(json_is_true(json_object_get(aq, "dynamic")) == !st);
        json_decref(j);
        assert_int_equal(H.desc->accepts_config(buf), 1);
        H.desc->destroy(inst);
    }
    /* llm-compressor's FP8 presets are ours; the int8 scheme and NVFP4 are not. */
    assert_int_equal(H.desc->accepts_config(
                         "{\"quant_method\":\"compressed-tensors\",\"format\":\"float-quantized\",\"config_groups\":"
                         "{\"group_0\":{\"targets\":[\"Linear\"],\"weights\":{\"num_bits\":8,\"type\":\"float\","
                         "\"strategy\":\"tensor\",\"symmetric\":true,\"dynamic\":false},\"input_activations\":"
                         "{\"num_bits\":8,\"type\":\"float\",\"strategy\":\"tensor\",\"dynamic\":false}}},"
                         "\"ignore\":[\"lm_head\"]}"),
                     1);
    assert_int_equal(H.desc->accepts_config(
                         "{\"quant_method\":\"compressed-tensors\",\"format\":\"int-quantized\",\"config_groups\":"
                         "{\"group_0\":{\"weights\":{\"num_bits\":8,\"type\":\"int\"},\"input_activations\":"
                         "{\"num_bits\":8,\"type\":\"int\"}}}}"),
                     0);
    assert_int_equal(H.desc->accepts_config(
                         "{\"quant_method\":\"compressed-tensors\",\"format\":\"nvfp4-pack-quantized\","
                         "\"config_groups\":{\"group_0\":{\"weights\":{\"num_bits\":4,\"type\":\"float\","
                         "\"strategy\":\"tensor_group\",\"group_size\":16}}}}"),
                     0);
    assert_int_equal(H.desc->accepts_config(
                         "{\"quant_method\":\"compressed-tensors\",\"format\":\"float-quantized\",\"config_groups\":"
                         "{\"group_0\":{\"weights\":{\"num_bits\":8,\"type\":\"float\",\"strategy\":\"block\","
                         "\"block_structure\":[128,128]},\"input_activations\":{\"num_bits\":8,\"type\":\"float\","
                         "\"strategy\":\"group\",\"group_size\":128}}}}"),
                     0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\":\"fp8\"}"), 0);
}

static void test_memory_and_validation(void **state)
{
    (void)state;
    const int64_t N = 30, K = 50;
    float *w = malloc(N * K * 4), *b = malloc(N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    qtool_instance *inst = make_inst(NULL, 0);
    qt_mem_stats s0, s1, s2;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack_layer(inst, "m.weight", w, N, K, b, QTOOL_DEVICE_CPU);
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(bytes[c], s1.current[QTOOL_DEVICE_CPU][c] - s0.current[QTOOL_DEVICE_CPU][c]);
    assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], 32 * 64 + N * 4); /* N, K padded to 16; the bias */
    assert_int_equal(bytes[QTOOL_MEM_SCALES], 32 * 4);
    /* A CPU-packed layer does not multiply. */
    float x[50], y[30];
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 1, K);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 1, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cuda(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    H.desc->free_packed(p);
    qt_mem_get_stats(&s2);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) assert_int_equal(s2.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    /* calibrate validation (tensor mode looks at the data) */
    const char *kv[] = {"act_scale=tensor"};
    qtool_instance *ti = make_inst(kv, 1);
    float xs[8] = {1, 2, 3, NAN, 5, 6, 7, 8};
    qtool_layer_info li = layer_info("c.weight", 3, 4);
    qtool_tensor t = tview(xs, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 2, 4);
    assert_int_equal(H.desc->calibrate(ti, &li, &t), QTOOL_ERR_INVALID_ARGUMENT);
    xs[3] = 4;
    qtool_layer_info wide = layer_info("c.weight", 3, 5);
    assert_int_equal(H.desc->calibrate(ti, &wide, &t), QTOOL_ERR_INVALID_ARGUMENT);
    assert_int_equal(H.desc->calibrate(ti, &li, &t), QTOOL_OK);
    H.desc->destroy(ti);
    H.desc->destroy(inst);
    free(w);
    free(b);
}

int main(void)
{
    rng_seed_from_env("test_fp8");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decode_all_codes), cmocka_unit_test(test_encode_random),
        cmocka_unit_test(test_probe),            cmocka_unit_test(test_pack_codes),
        cmocka_unit_test(test_emulated_product), cmocka_unit_test(test_static_scale),
        cmocka_unit_test(test_save_load),        cmocka_unit_test(test_quant_config),
        cmocka_unit_test(test_memory_and_validation),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
