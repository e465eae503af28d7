/* nf4 plugin, CPU: code decisions at midpoints, round-trip error bounds,
 * matmul against a float64 reference, save/load, memory accounting and
 * input validation. Fresh random inputs every run (seed printed). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "nf4_codec.h"

/* The NF4 table as FORMATS.md lists it, typed independently of the plugin. */
static const double NF4_REF[16] = {-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
                                   -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
                                   0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
                                   0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0};
static const double FP4_MAG[8] = {0, 0.0625, 8, 12, 4, 6, 2, 3};

static double ref_code(int fp4, int c)
{
    if (!fp4) return NF4_REF[c];
    double v = FP4_MAG[c & 7] / 12.0;
    return (c & 8) ? -v : v;
}

static harness H;

static int setup(void **state)
{
    (void)state;
    return harness_open(&H, "nf4", -1, NULL);
}

static int teardown(void **state)
{
    (void)state;
    harness_close(&H);
    return 0;
}

static qtool_instance *make(const char *dtype, int blocksize, int dq)
{
    char a[64], b[64], c[64];
    snprintf(a, sizeof a, "dtype=%s", dtype);
    snprintf(b, sizeof b, "blocksize=%d", blocksize);
    snprintf(c, sizeof c, "double_quant=%d", dq);
    const char *kv[] = {a, b, c};
    qtool_instance *inst = NULL;
    char msg[256] = "";
    int rc = harness_create(&H, kv, 3, &inst, msg, sizeof msg);
    if (rc) fprintf(stderr, "create: %s\n", msg);
    assert_int_equal(rc, QTOOL_OK);
    return inst;
}

static qtool_packed *pack_f32(qtool_instance *inst, const float *w, int64_t N, int64_t K, const float *bias, int device)
{
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "test.weight", K, N, 0, 1};
    qtool_packed *p = NULL;
    assert_int_equal(harness_pack(&H, inst, &li, w, bias, device, NULL, NULL, &p), QTOOL_OK);
    return p;
}

/* ------------------------------------------------------------ decode */

typedef struct decoded {
    int64_t n, nblocks;
    int bs, nested, fp4;
    float *w;      /* dequantized, n */
    float *absmax; /* dequantized, nblocks */
    uint8_t *code; /* one code per element */
} decoded;

static double json_num(const char *js, size_t len, const char *key)
{
    char buf[4200];
    assert_true(len < sizeof buf);
    memcpy(buf, js, len);
    buf[len] = '\0';
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    char *p = strstr(buf, pat);
    assert_non_null(p);
    return strtod(p + strlen(pat), NULL);
}

/* Decodes the saved transformers layout, written here from the format
 * description rather than from the plugin's code. */
static void decode_store(store *s, int64_t n, decoded *d)
{
    memset(d, 0, sizeof *d);
    stored *qs = store_find(s, "weight.quant_state.bitsandbytes__nf4");
    d->fp4 = qs == NULL;
    if (!qs) qs = store_find(s, "weight.quant_state.bitsandbytes__fp4");
    assert_non_null(qs);
    const char *js = qs->t.data;
    size_t jl = (size_t)qtool_tensor_numel(&qs->t);
    d->bs = (int)json_num(js, jl, "blocksize");
    d->n = n;
    d->nblocks = (n + d->bs - 1) / d->bs;
    d->nested = store_find(s, "weight.nested_absmax") != NULL;
    stored *wq = store_find(s, "weight"), *am = store_find(s, "weight.absmax"), *qm = store_find(s, "weight.quant_map");
    assert_non_null(wq);
    assert_non_null(am);
    assert_non_null(qm);
    assert_int_equal(wq->t.dtype, QTOOL_DTYPE_U8);
    assert_int_equal(wq->t.ndim, 2);
    assert_int_equal(wq->t.shape[0], (n + 1) / 2);
    assert_int_equal(wq->t.shape[1], 1);
    const float *map = qm->t.data;
    for (int c = 0; c < 16; c++) assert_true((double)map[c] == (double)(float)ref_code(d->fp4, c));
    d->absmax = malloc((size_t)d->nblocks * 4);
    if (d->nested) {
        stored *na = store_find(s, "weight.nested_absmax"), *nm = store_find(s, "weight.nested_quant_map");
        assert_non_null(nm);
        assert_int_equal(am->t.dtype, QTOOL_DTYPE_U8);
        assert_int_equal(qtool_tensor_numel(&na->t), (d->nblocks + 255) / 256);
        float off = (float)json_num(js, jl, "nested_offset");
        const uint8_t *q = am->t.data;
        const float *nab = na->t.data, *code2 = nm->t.data;
        for (int64_t b = 0; b < d->nblocks; b++) {
            float a = code2[q[b]] * nab[b / 256];
            d->absmax[b] = a + off;
        }
    } else {
        assert_int_equal(am->t.dtype, QTOOL_DTYPE_F32);
        assert_int_equal(qtool_tensor_numel(&am->t), d->nblocks);
        memcpy(d->absmax, am->t.data, (size_t)d->nblocks * 4);
    }
    d->w = malloc((size_t)n * 4);
    d->code = malloc((size_t)n);
    const uint8_t *bytes = wq->t.data;
    for (int64_t i = 0; i < n; i++) {
        int c = (i % 2 == 0) ? bytes[i / 2] >> 4 : bytes[i / 2] & 15;
        d->code[i] = (uint8_t)c;
        d->w[i] = (float)ref_code(d->fp4, c) * d->absmax[i / d->bs];
    }
}

static void decoded_free(decoded *d)
{
    free(d->w);
    free(d->absmax);
    free(d->code);
}

static void save_to(qtool_packed *p, store *s)
{
    qtool_save_sink sink = {s, store_put};
    assert_int_equal(H.desc->save(p, &sink), QTOOL_OK);
}

/* ------------------------------------------------------------ tests */

/* The decision tree's thresholds are the float midpoints of adjacent codes;
 * a value exactly on one takes the lower code (bitsandbytes: x > t). */
static void test_codes_at_midpoints(void **state)
{
    (void)state;
    for (int fp4 = 0; fp4 <= 1; fp4++) {
        /* Sorted distinct code values with their indices. */
        int idx[16], m = 0;
        for (int c = 0; c < 16; c++) {
            if (fp4 && c == 8) continue; /* -0 duplicates +0 */
            idx[m++] = c;
        }
        for (int i = 0; i < m; i++)
            for (int j = i + 1; j < m; j++)
                if (ref_code(fp4, idx[j]) < ref_code(fp4, idx[i])) {
                    int t = idx[i];
                    idx[i] = idx[j];
                    idx[j] = t;
                }
        for (int i = 0; i + 1 < m; i++) {
            double lo = ref_code(fp4, idx[i]), hi = ref_code(fp4, idx[i + 1]);
            float mid = (float)((lo + hi) / 2);
            /* Find the tree's threshold near the midpoint: the largest float that
             * still maps to the lower code. */
            float t = mid;
            for (int k = 0; k < 64 && ref_code(fp4, (int)nf4_quantize_code(fp4, nextafterf(t, 1.0f))) != hi; k++)
                t = nextafterf(t, 1.0f);
            for (int k = 0; k < 64 && ref_code(fp4, (int)nf4_quantize_code(fp4, t)) != lo; k++) t = nextafterf(t, -1.0f);
            unsigned below = nf4_quantize_code(fp4, t), above = nf4_quantize_code(fp4, nextafterf(t, 1.0f));
            /* Positive zero and FP4's negative codes: compare values, not indices. */
            assert_true(ref_code(fp4, (int)below) == lo);
            assert_true(ref_code(fp4, (int)above) == hi);
            /* The threshold is a rounded midpoint: within 2e-6 of the exact one. */
            assert_true(fabs((double)t - (lo + hi) / 2) < 2e-6);
        }
        /* NaN (the 0 * inf of an all-zero block) takes code 0. */
        assert_int_equal(nf4_quantize_code(fp4, NAN), 0);
    }
}

/* Known vectors through the plugin: absmax 1 (so the scaled value is the
 * value itself), entries exactly on the tree's thresholds, an all-zero
 * block, and an odd tail padded like the GPU kernel pads it. */
static void test_known_block(void **state)
{
    (void)state;
    static const float thr_nf4[15] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f,
                                      -0.33967943489551544f, -0.23460740596055984f, -0.13791173323988914f,
                                      -0.045525018125772476f, 0.03979014977812767f, 0.1202552504837513f,
                                      0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                                      0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f};
    float w[64 + 64 + 3];
    memset(w, 0, sizeof w);
    w[0] = 1.0f;
    for (int i = 0; i < 15; i++) {
        w[1 + 2 * i] = thr_nf4[i];                        /* on the threshold: lower code i */
        w[2 + 2 * i] = nextafterf(thr_nf4[i], 2.0f);      /* just above: code i + 1 */
    }
    w[31] = -1.0f;
    /* block 1 (64..127) stays zero; block 2 is 3 elements: odd tail. */
    w[128] = 0.5f;
    w[129] = -0.25f;
    w[130] = 0.125f;
    qtool_instance *inst = make("nf4", 64, 0);
    qtool_packed *p = pack_f32(inst, w, 1, 131, NULL, QTOOL_DEVICE_CPU);
    store s = {0};
    save_to(p, &s);
    const uint8_t *b = store_find(&s, "weight")->t.data;
    const float *am = store_find(&s, "weight.absmax")->t.data;
#define CODE(i) (((i) % 2 == 0) ? (b[(i) / 2] >> 4) : (b[(i) / 2] & 15))
    assert_int_equal(CODE(0), 15);
    for (int i = 0; i < 15; i++) {
        assert_int_equal(CODE(1 + 2 * i), i);
        assert_int_equal(CODE(2 + 2 * i), i + 1);
    }
    assert_int_equal(CODE(31), 0);
    for (int i = 32; i < 64; i++) assert_int_equal(CODE(i), 7);
    assert_true(am[0] == 1.0f);
    assert_true(am[1] == 0.0f);
    for (int i = 64; i < 128; i++) assert_int_equal(CODE(i), 0); /* zero block: 0 * inf = NaN -> code 0 */
    assert_true(am[2] == 0.5f);
    assert_int_equal(CODE(128), 15);
    assert_int_equal(CODE(129), 2);  /* -0.5 -> nearest -0.5250730514526367 */
    assert_int_equal(CODE(130), 10); /* 0.25 -> 0.24611230194568634 */
    assert_int_equal(b[65] & 15, 7); /* padding element 0.0 -> code 7 (NF4 zero) */
#undef CODE
    store_free(&s);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
}

/* The dynamic map: sorted, 0 at 127, 1 at 255, each entry within one float
 * step of create_dynamic_map's formula evaluated in double. */
static void test_dynamic_map(void **state)
{
    (void)state;
    double ref[256];
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int items = (1 << i) + 1;
        for (int j = 0; j + 1 < items; j++) {
            double b0 = 0.1 + 0.9 * j / (items - 1), b1 = 0.1 + 0.9 * (j + 1) / (items - 1);
            double v = pow(10.0, -6 + i) * (b0 + b1) / 2;
            ref[n++] = v;
            ref[n++] = -v;
        }
    }
    ref[n++] = 0.0;
    ref[n++] = 1.0;
    assert_int_equal(n, 256);
    for (int i = 0; i < 256; i++)
        for (int j = i + 1; j < 256; j++)
            if (ref[j] < ref[i]) {
                double t = ref[i];
                ref[i] = ref[j];
                ref[j] = t;
            }
    float map[256];
    for (int i = 0; i < 256; i++) map[i] = nf4_bits_to_float(nf4_dynamic_map_bits[i]);
    for (int i = 0; i < 256; i++) {
        if (i) assert_true(map[i] > map[i - 1]);
        float r = (float)ref[i];
        assert_true(map[i] == r || map[i] == nextafterf(r, 2.0f) || map[i] == nextafterf(r, -2.0f));
    }
    assert_true(map[127] == 0.0f && map[255] == 1.0f);
    /* dQuantize: nearest entry, midpoint ties go to the entry the search
     * ends on; a midpoint computed in float decides like bitsandbytes. */
    for (int i = 0; i < 255; i++) {
        float lo = map[i], hi = map[i + 1], mid = (lo + hi) * 0.5f;
        unsigned below = nf4_dynamic_quantize(map, nextafterf(mid, -2.0f));
        unsigned above = nf4_dynamic_quantize(map, nextafterf(mid, 2.0f));
        assert_int_equal(below, (unsigned)i);
        assert_int_equal(above, (unsigned)i + 1);
        assert_int_equal(nf4_dynamic_quantize(map, lo), (unsigned)i);
    }
    assert_int_equal(nf4_dynamic_quantize(map, 1.0f), 255);
    assert_int_equal(nf4_dynamic_quantize(map, -1.0f), 0);
}

static void check_roundtrip(const char *dtype, int bs, int dq, int64_t N, int64_t K)
{
    int64_t n = N * K;
    float *w = malloc((size_t)n * 4);
    fill_normal(w, n, 0.05f);
    /* Some blocks with a large spread, some tiny. */
    for (int64_t i = 0; i < n; i += 997) w[i] *= 20.0f;
    qtool_instance *inst = make(dtype, bs, dq);
    qtool_packed *p = pack_f32(inst, w, N, K, NULL, QTOOL_DEVICE_CPU);
    store s = {0};
    save_to(p, &s);
    decoded d;
    decode_store(&s, n, &d);
    assert_int_equal(d.bs, bs);
    assert_int_equal(d.nested, dq);
    int fp4 = !strcmp(dtype, "fp4");
    /* widest gap between neighbouring codes: NF4 -1 .. -0.696, FP4 2/3 .. 1 */
    double max_half_gap = fp4 ? (1.0 - 2.0 / 3.0) / 2 : (1.0 - 0.6961928009986877) / 2;
    const float *nab = dq ? store_find(&s, "weight.nested_absmax")->t.data : NULL;
    for (int64_t b = 0; b < d.nblocks; b++) {
        int64_t s0 = b * bs, e0 = s0 + bs < n ? s0 + bs : n;
        float amax = 0;
        for (int64_t i = s0; i < e0; i++) amax = fmaxf(amax, fabsf(w[i]));
        /* nested: (absmax - offset) / nested_absmax is coded with the dynamic
         * map, whose widest half gap (next to +-1) is 0.00703125. */
        double aerr = fabs((double)d.absmax[b] - amax);
        if (dq)
            assert_true(aerr <= 0.00704 * (double)nab[b / 256] + 1e-6 * (double)amax);
        else
            assert_true(aerr == 0.0);
        float inv = 1.0f / amax;
        for (int64_t i = s0; i < e0; i++) {
            /* nearest code (ties within rounding of the midpoint) */
            double sc = (double)(w[i] * inv), best = 1e9;
            for (int c = 0; c < 16; c++) best = fmin(best, fabs(sc - ref_code(fp4, c)));
            assert_true(fabs(sc - ref_code(fp4, d.code[i])) <= best + 2e-7);
            double bound = amax * max_half_gap + aerr + 1e-6;
            if (fabs((double)w[i] - d.w[i]) > bound) {
                fprintf(stderr, "element %lld: %g vs %g (bound %g)\n", (long long)i, w[i], d.w[i], bound);
                fail();
            }
        }
    }
    decoded_free(&d);
    store_free(&s);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
}

static void test_roundtrip(void **state)
{
    (void)state;
    check_roundtrip("nf4", 64, 1, 33, 67);
    check_roundtrip("nf4", 64, 0, 17, 1000);
    check_roundtrip("fp4", 64, 1, 33, 67);
    check_roundtrip("fp4", 128, 0, 64, 64);
    check_roundtrip("nf4", 256, 1, 129, 131);
    check_roundtrip("nf4", 4096, 1, 9, 5000);
    check_roundtrip("nf4", 64, 1, 300, 300); /* > 256 absmax blocks: several nested blocks */
}

/* y = x W^T + b against float64 with the dequantized weights. */
static void check_matmul(const char *dtype, int dq, int64_t M, int64_t N, int64_t K, int with_bias)
{
    float *w = malloc((size_t)(N * K) * 4), *x = malloc((size_t)(M * K) * 4), *y = malloc((size_t)(M * N) * 4);
    float *b = malloc((size_t)N * 4);
    fill_normal(w, N * K, 0.1f);
    fill_normal(x, M * K, 1.0f);
    fill_normal(b, N, 0.5f);
    qtool_instance *inst = make(dtype, 64, dq);
    qtool_packed *p = pack_f32(inst, w, N, K, with_bias ? b : NULL, QTOOL_DEVICE_CPU);
    store s = {0};
    save_to(p, &s);
    decoded d;
    decode_store(&s, N * K, &d);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K);
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_OK);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            double ref = with_bias ? b[n] : 0.0, mag = fabs(ref);
            for (int64_t k = 0; k < K; k++) {
                ref += (double)x[m * K + k] * d.w[n * K + k];
                mag += fabs((double)x[m * K + k] * d.w[n * K + k]);
            }
            double err = fabs(y[m * N + n] - ref);
            if (err > 2e-5 * mag + 1e-6) {
                fprintf(stderr, "M=%lld N=%lld K=%lld [%lld,%lld]: %.8g vs %.8g\n", (long long)M, (long long)N,
                        (long long)K, (long long)m, (long long)n, y[m * N + n], ref);
                fail();
            }
        }
    decoded_free(&d);
    store_free(&s);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    free(w);
    free(x);
    free(y);
    free(b);
}

static void test_matmul_cpu(void **state)
{
    (void)state;
    static const int64_t Ms[] = {1, 3, 17, 129};
    for (int i = 0; i < 4; i++) {
        check_matmul("nf4", 1, Ms[i], 33, 67, 1);  /* K, N odd, K not a multiple of the block */
        check_matmul("fp4", 0, Ms[i], 17, 200, 0);
    }
    check_matmul("nf4", 0, 5, 96, 128, 1);
}

static void test_save_load(void **state)
{
    (void)state;
    const int64_t N = 31, K = 77, M = 5;
    for (int dq = 0; dq <= 1; dq++) {
        float *w = malloc(N * K * 4), *x = malloc(M * K * 4), *y1 = malloc(M * N * 4), *y2 = malloc(M * N * 4);
        float b[31];
        fill_normal(w, N * K, 0.2f);
        fill_normal(x, M * K, 1.0f);
        fill_normal(b, N, 1.0f);
        qtool_instance *inst = make(dq ? "nf4" : "fp4", 128, dq);
        qtool_packed *p = pack_f32(inst, w, N, K, b, QTOOL_DEVICE_CPU);
        store s = {0};
        save_to(p, &s);
        stored *qs = store_find(&s, dq ? "weight.quant_state.bitsandbytes__nf4" : "weight.quant_state.bitsandbytes__fp4");
        assert_non_null(qs);
        char js[1024];
        int64_t jl = qtool_tensor_numel(&qs->t);
        memcpy(js, qs->t.data, (size_t)jl);
        js[jl] = '\0';
        assert_non_null(strstr(js, dq ? "{\"quant_type\": \"nf4\", \"blocksize\": 128, \"dtype\": \"float32\", \"shape\": [31, 77]"
                                      : "{\"quant_type\": \"fp4\", \"blocksize\": 128, \"dtype\": \"float32\", \"shape\": [31, 77]}"));
        if (dq) assert_non_null(strstr(js, "\"nested_blocksize\": 256, \"nested_dtype\": \"float32\", \"nested_offset\": "));
        qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t.weight", K, N, 0, 1};
        qtool_load_source src = {&s, store_get, store_has};
        qtool_packed *q = NULL;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &q), QTOOL_OK);
        qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, K);
        qtool_tensor yt1 = tview(y1, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
        qtool_tensor yt2 = tview(y2, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, M, N);
        qtool_matmul_args a1 = {sizeof a1, 0, &xt, &yt1, NULL}, a2 = {sizeof a2, 0, &xt, &yt2, NULL};
        assert_int_equal(H.desc->matmul_cpu(p, &a1), QTOOL_OK);
        assert_int_equal(H.desc->matmul_cpu(q, &a2), QTOOL_OK);
        assert_memory_equal(y1, y2, M * N * 4);
        /* Saving the loaded layer gives the same bytes. */
        store s2 = {0};
        save_to(q, &s2);
        assert_int_equal(s2.n, s.n);
        for (int i = 0; i < s.n; i++) {
            stored *o = store_find(&s2, s.items[i].name);
            assert_non_null(o);
            size_t bytes = (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype);
            assert_int_equal(bytes, (size_t)qtool_tensor_numel(&s.items[i].t) * qtool_dtype_size(s.items[i].t.dtype));
            assert_memory_equal(o->t.data, s.items[i].t.data, bytes);
        }
        /* Damaged checkpoints are refused with QTOOL_ERR_FORMAT. */
        qtool_packed *bad = NULL;
        stored *am = store_find(&s, "weight.absmax");
        am->t.shape[0] -= 1;
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        am->t.shape[0] += 1;
        ((char *)qs->t.data)[0] = 'x';
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        ((char *)qs->t.data)[0] = '{';
        store_remove(&s, "weight");
        assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CPU, &src, &bad), QTOOL_ERR_FORMAT);
        assert_null(bad);
        store_free(&s);
        store_free(&s2);
        H.desc->free_packed(q);
        H.desc->free_packed(p);
        H.desc->destroy(inst);
        free(w);
        free(x);
        free(y1);
        free(y2);
    }
}

static void test_memory_accounting(void **state)
{
    (void)state;
    const int64_t N = 100, K = 300;
    float *w = malloc(N * K * 4), b[100];
    fill_normal(w, N * K, 0.1f);
    fill_normal(b, N, 0.1f);
    for (int dq = 0; dq <= 1; dq++) {
        qtool_instance *inst = make("nf4", 64, dq);
        qt_mem_stats before, after, freed;
        qt_mem_get_stats(&before);
        qtool_packed *p = pack_f32(inst, w, N, K, b, QTOOL_DEVICE_CPU);
        qt_mem_get_stats(&after);
        uint64_t bytes[QTOOL_MEM_COUNT];
        assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++)
            assert_int_equal(bytes[c], after.current[QTOOL_DEVICE_CPU][c] - before.current[QTOOL_DEVICE_CPU][c]);
        int64_t nb = (N * K + 63) / 64;
        assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], (N * K + 1) / 2 + N * 4);
        if (dq) {
            assert_int_equal(bytes[QTOOL_MEM_SCALES], nb + 64);
            assert_int_equal(bytes[QTOOL_MEM_NESTED_SCALES], (nb + 255) / 256 * 4 + 1024);
        } else {
            assert_int_equal(bytes[QTOOL_MEM_SCALES], nb * 4 + 64);
            assert_int_equal(bytes[QTOOL_MEM_NESTED_SCALES], 0);
        }
        H.desc->free_packed(p);
        qt_mem_get_stats(&freed);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++)
            assert_int_equal(freed.current[QTOOL_DEVICE_CPU][c], before.current[QTOOL_DEVICE_CPU][c]);
        H.desc->destroy(inst);
    }
    free(w);
}

static void test_rejects(void **state)
{
    (void)state;
    qtool_instance *inst = make("nf4", 64, 1);
    float w[12] = {0}, x[8] = {0}, y[8];
    qtool_tensor wt = tview(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, 4); /* empty */
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.weight = &wt;
    qtool_packed *p = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_INVALID_ARGUMENT);
    wt.shape[0] = 3;
    wt.dtype = QTOOL_DTYPE_I32;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_INVALID_ARGUMENT);
    wt.dtype = QTOOL_DTYPE_F32;
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "t", 5, 3, 0, 1}; /* K mismatch */
    pa.layer = &li;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_ERR_INVALID_ARGUMENT);
    pa.layer = NULL;
    assert_int_equal(H.desc->pack(inst, &pa, &p), QTOOL_OK);
    qtool_tensor xt = tview(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 2, 3); /* K = 3, layer has 4 */
    qtool_tensor yt = tview(y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 2, 3);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.shape[1] = 4;
    yt.shape[1] = 2; /* N mismatch */
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    yt.shape[1] = 3;
    yt.shape[0] = 1; /* row mismatch */
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    yt.shape[0] = 2;
    xt.shape[0] = 0; /* empty input */
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.shape[0] = 2;
    xt.dtype = QTOOL_DTYPE_F16;
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.dtype = QTOOL_DTYPE_F32;
    assert_int_equal(H.desc->matmul_cpu(p, &ma), QTOOL_OK);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    /* Bad options */
    const char *kv[] = {"blocksize=96"};
    qtool_instance *bad = NULL;
    char msg[256] = "";
    assert_int_equal(harness_create(&H, kv, 1, &bad, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "blocksize"));
}

static void test_config(void **state)
{
    (void)state;
    qtool_instance *inst = make("fp4", 64, 0);
    char buf[1024];
    assert_int_equal(H.desc->quant_config_json(inst, buf, sizeof buf), QTOOL_OK);
    assert_non_null(strstr(buf, "\"quant_method\": \"bitsandbytes\""));
    assert_non_null(strstr(buf, "\"load_in_4bit\": true"));
    assert_non_null(strstr(buf, "\"bnb_4bit_quant_type\": \"fp4\""));
    assert_non_null(strstr(buf, "\"bnb_4bit_use_double_quant\": false"));
    assert_int_equal(H.desc->accepts_config(buf), 1);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\":\"bitsandbytes\",\"load_in_8bit\":true,\"load_in_4bit\":false}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\":\"awq\",\"load_in_4bit\":true}"), 0);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": true}"), 1);
    assert_int_equal(H.desc->accepts_config("{\"quant_method\": \"bitsandbytes\", \"load_in_4bit\": tr"), 0);
    assert_int_equal(H.desc->accepts_config("[[[[[[[[[[[["), 0);
    assert_int_equal(H.desc->accepts_config(""), 0);
    char reason[256];
    qtool_device_info cpu = {0};
    cpu.struct_size = sizeof cpu;
    cpu.kind = QTOOL_DEVICE_CPU;
    assert_int_equal(H.desc->probe(&cpu, reason, sizeof reason), QTOOL_OK);
    H.desc->destroy(inst);
}

int main(void)
{
    rng_seed_from_env("test_nf4");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_codes_at_midpoints), cmocka_unit_test(test_known_block),
        cmocka_unit_test(test_dynamic_map),        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_matmul_cpu),         cmocka_unit_test(test_save_load),
        cmocka_unit_test(test_memory_accounting),  cmocka_unit_test(test_rejects),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
