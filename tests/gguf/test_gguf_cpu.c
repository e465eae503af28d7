/* The gguf_cpu plugin through the ABI: matmul against a float64 reference,
 * kernel (scalar / AVX2 / AVX-512) agreement, agreement with ggml-style
 * vec_dot, llama.cpp mix rules, memory accounting, save/load, and the
 * importance matrix (imatrix=1): calibration statistics, the weighted
 * quantizers' lower output error, refusals.
 *
 * Matmul tolerance: the reference is x @ dequant(W)^T in float64, so what
 * is left is the activation quantization the matmul does on purpose. With
 * per-element bounds e_k on |x_k - dequant(Q8(x))_k| (Q8_0/Q8_1: d/2 plus
 * d's fp16 rounding times 127, d = block absmax / 127; Q8_K: d/2 with a
 * float d), |y - y_ref| <= sum_k |W_nk| e_k + 1e-5 sum_k |W_nk x_k| (float
 * accumulation) must hold for every output. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "error.h"
#include "gguf_quants.h"
#include "plugin_host.h"

static qt_plugin *plugin;
static const char *const TYPES[] = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"};
static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static double urand(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (double)(rng_state >> 11) / 9007199254740992.0;
}

static float grand(void)
{
    double u = urand() + 1e-12, v = urand();
    return (float)(sqrt(-2 * log(u)) * cos(6.283185307179586 * v));
}

static int setup(void **state)
{
    (void)state;
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    if (!dir) {
        print_error("QTOOL_PLUGIN_DIR is not set\n");
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/libqtool_gguf_cpu.so", dir);
    if (qt_plugin_load(path, &plugin)) {
        print_error("%s\n", qt_last_error());
        return -1;
    }
    rng_state ^= (uint64_t)time(NULL);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    qt_plugin_unload(plugin);
    return 0;
}

static qtool_instance *make_im(const char *type, const char *isa, int imatrix)
{
    char opt_type[32], opt_isa[32], opt_im[32];
    snprintf(opt_type, sizeof opt_type, "type=%s", type);
    snprintf(opt_isa, sizeof opt_isa, "isa=%s", isa);
    snprintf(opt_im, sizeof opt_im, "imatrix=%d", imatrix);
    char *kv[3] = {opt_type, opt_isa, opt_im};
    qt_plugin_options opts;
    assert_int_equal(qt_plugin_parse_options(plugin, kv, 3, &opts), 0);
    qtool_instance *inst;
    assert_int_equal(qt_plugin_create(plugin, &opts, -1, NULL, &inst), 0);
    qt_plugin_options_free(&opts);
    return inst;
}

static qtool_instance *make(const char *type, const char *isa) { return make_im(type, isa, 0); }

typedef struct layer {
    int64_t n, k;
    float *w, *b;
    qtool_layer_info info;
} layer;

static layer make_layer(int64_t n, int64_t k, int role, int block, int n_blocks, int with_bias)
{
    layer L = {n, k, malloc((size_t)(n * k) * 4), with_bias ? malloc((size_t)n * 4) : NULL,
               {sizeof(qtool_layer_info), role, "test.weight", k, n, block, n_blocks}};
    for (int64_t i = 0; i < n * k; i++) L.w[i] = grand() * 0.5f;
    for (int64_t i = 0; i < n * k; i += 97) L.w[i] *= 8; /* outliers */
    if (L.b)
        for (int64_t i = 0; i < n; i++) L.b[i] = grand();
    return L;
}

static void free_layer(layer *L)
{
    free(L->w);
    free(L->b);
}

static int pack(qtool_instance *inst, const layer *L, qtool_packed **out)
{
    qtool_tensor w = {L->w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {L->n, L->k}};
    qtool_tensor b = {L->b, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {L->n}};
    qtool_pack_args a = {sizeof a, QTOOL_DEVICE_CPU, &L->info, &w, L->b ? &b : NULL, NULL, NULL};
    return plugin->desc->pack(inst, &a, out);
}

static void matmul(qtool_packed *p, const float *x, int64_t m, int64_t k, float *y, int64_t n)
{
    qtool_tensor tx = {(void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, k}};
    qtool_tensor ty = {y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {m, n}};
    qtool_matmul_args a = {sizeof a, 0, &tx, &ty, NULL};
    assert_int_equal(plugin->desc->matmul_cpu(p, &a), 0);
}

/* What save() hands out. */
typedef struct saved {
    uint8_t *weight;
    int64_t rows, row_bytes;
    int32_t type;
    float *bias;
    int n_put;
} saved;

static int sink_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    saved *s = ctx;
    s->n_put++;
    if (strcmp(suffix, "weight") == 0) {
        assert_int_equal(t->dtype, QTOOL_DTYPE_PACKED);
        assert_int_equal(t->ndim, 2);
        s->rows = t->shape[0];
        s->row_bytes = t->shape[1];
        s->weight = malloc((size_t)(s->rows * s->row_bytes));
        memcpy(s->weight, t->data, (size_t)(s->rows * s->row_bytes));
    } else if (strcmp(suffix, "ggml_type") == 0) {
        assert_int_equal(t->dtype, QTOOL_DTYPE_I32);
        memcpy(&s->type, t->data, 4);
    } else if (strcmp(suffix, "bias") == 0) {
        s->bias = malloc((size_t)t->shape[0] * 4);
        memcpy(s->bias, t->data, (size_t)t->shape[0] * 4);
    } else {
        fail_msg("unexpected suffix %s", suffix);
    }
    return 0;
}

static saved save(qtool_packed *p)
{
    saved s = {0};
    qtool_save_sink sink = {&s, sink_put};
    assert_int_equal(plugin->desc->save(p, &sink), 0);
    return s;
}

static void free_saved(saved *s)
{
    free(s->weight);
    free(s->bias);
}

static int src_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    saved *s = ctx;
    memset(out, 0, sizeof *out);
    out->device = QTOOL_DEVICE_CPU;
    if (strcmp(suffix, "weight") == 0) {
        *out = (qtool_tensor){s->weight, QTOOL_DTYPE_PACKED, QTOOL_DEVICE_CPU, 2, 0, {s->rows, s->row_bytes}};
    } else if (strcmp(suffix, "ggml_type") == 0) {
        *out = (qtool_tensor){&s->type, QTOOL_DTYPE_I32, QTOOL_DEVICE_CPU, 1, 0, {1}};
    } else if (strcmp(suffix, "bias") == 0 && s->bias) {
        *out = (qtool_tensor){s->bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {s->rows}};
    } else {
        return QTOOL_ERR_FORMAT;
    }
    return 0;
}

static int src_has(void *ctx, const char *suffix)
{
    saved *s = ctx;
    return strcmp(suffix, "bias") == 0 ? s->bias != NULL : 1;
}

static float *random_x(int64_t m, int64_t k)
{
    float *x = malloc((size_t)(m * k) * 4);
    for (int64_t i = 0; i < m * k; i++) x[i] = grand();
    for (int64_t i = 0; i < m * k; i += 61) x[i] *= 10;
    if (m > 2)
        for (int64_t i = 0; i < k; i++) x[k + i] = 0; /* a zero row */
    return x;
}

/* Per-element bound on the activation quantization error of row x. */
static void act_error_bound(int act_type, const float *x, int64_t k, double *e)
{
    const int blk = act_type == GQ_Q8_K ? GQ_QK_K : GQ_QK;
    for (int64_t b = 0; b < k; b += blk) {
        double amax = 0;
        for (int i = 0; i < blk; i++) amax = fmax(amax, fabs(x[b + i]));
        const double d = amax / 127;
        const double eb = act_type == GQ_Q8_K ? d * (0.5 + 1e-5) : d * (0.5 * (1 + 1.0 / 1024) + 127.0 / 2048);
        for (int i = 0; i < blk; i++) e[b + i] = eb;
    }
}

static void check_against_reference(const char *type, int64_t n, int64_t k, int64_t m)
{
    qtool_instance *inst = make(type, "auto");
    layer L = make_layer(n, k, QTOOL_ROLE_OTHER, -1, 0, 1);
    qtool_packed *p;
    assert_int_equal(pack(inst, &L, &p), 0);
    saved s = save(p);
    const gq_type *t = gq_type_traits(s.type);
    assert_non_null(t);
    assert_string_equal(t->name, type);
    float *wd = malloc((size_t)(n * k) * 4);
    for (int64_t r = 0; r < n; r++) t->dequantize(s.weight + r * s.row_bytes, wd + r * k, k);
    float *wp = malloc((size_t)(n * k) * 4); /* the dequantize slot gives the same W_hat */
    assert_int_equal(plugin->desc->dequantize(p, wp), 0);
    assert_memory_equal(wp, wd, (size_t)(n * k) * 4);
    free(wp);
    float *x = random_x(m, k), *y = malloc((size_t)(m * n) * 4);
    double *e = malloc((size_t)k * 8);
    matmul(p, x, m, k, y, n);
    double worst = 0;
    for (int64_t i = 0; i < m; i++) {
        act_error_bound(t->act_type, x + i * k, k, e);
        for (int64_t j = 0; j < n; j++) {
            double ref = L.b[j], bound = 1e-6, mag = 0;
            for (int64_t c = 0; c < k; c++) {
                ref += (double)x[i * k + c] * wd[j * k + c];
                bound += fabs(wd[j * k + c]) * e[c];
                mag += fabs((double)x[i * k + c] * wd[j * k + c]);
            }
            bound += 1e-5 * mag;
            const double err = fabs(y[i * n + j] - ref);
            if (err / bound > worst) worst = err / bound;
            if (!(err <= bound))
                fail_msg("%s n=%lld k=%lld m=%lld: y[%lld][%lld] = %g, reference %g, bound %g", type, (long long)n,
                         (long long)k, (long long)m, (long long)i, (long long)j, y[i * n + j], ref, bound);
        }
    }
    free(e);
    free(x);
    free(y);
    free(wd);
    free_saved(&s);
    plugin->desc->free_packed(p);
    plugin->desc->destroy(inst);
    free_layer(&L);
}

static void test_matmul_reference(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 256, 1}, {3, 512, 3}, {17, 256, 17}, {129, 768, 5}, {9, 1280, 129}};
    for (size_t t = 0; t < sizeof TYPES / sizeof TYPES[0]; t++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            check_against_reference(TYPES[t], shapes[s][0], shapes[s][1], shapes[s][2]);
    /* K a multiple of 32 but not 64: odd group counts in the kernels. */
    for (int t = 0; t < 5; t++) check_against_reference(TYPES[t], 5, 96, 7);
    /* Many output rows (more than 32 units of 16 per worker chunk) and more
     * than one 64-row activation block. */
    check_against_reference("Q4_K", 4100, 256, 70);
    check_against_reference("Q8_0", 4100, 64, 70);
}

/* Scalar, AVX2 and AVX-512 tiles agree, and match ggml-style vec_dot on
 * Q8 blocks (differences are float summation order only). */
static void test_kernels_agree(void **state)
{
    (void)state;
    const int64_t n = 19, k = 768, m = 6;
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        layer L = make_layer(n, k, QTOOL_ROLE_OTHER, -1, 0, 0);
        float *x = random_x(m, k);
        float *y[3];
        const char *isas[3] = {"scalar", "avx2", "auto"};
        saved s = {0};
        for (int v = 0; v < 3; v++) {
            qtool_instance *inst = make(TYPES[ti], isas[v]);
            qtool_packed *p;
            assert_int_equal(pack(inst, &L, &p), 0);
            y[v] = malloc((size_t)(m * n) * 4);
            matmul(p, x, m, k, y[v], n);
            if (v == 0) s = save(p);
            plugin->desc->free_packed(p);
            plugin->desc->destroy(inst);
        }
        const gq_type *t = gq_type_traits(s.type);
        const gq_type *at = gq_type_traits(t->act_type);
        uint8_t *ab = malloc(gq_row_size(t->act_type, k));
        for (int64_t i = 0; i < m; i++) {
            at->quantize(x + i * k, ab, k);
            for (int64_t j = 0; j < n; j++) {
                const double ref = t->vec_dot(k, s.weight + j * s.row_bytes, ab);
                double mag = 0;
                for (int64_t c = 0; c < k; c++) mag += fabs((double)x[i * k + c] * L.w[j * k + c]);
                const double tol = 2e-6 * mag + 1e-6;
                for (int v = 0; v < 3; v++)
                    if (fabs(y[v][i * n + j] - ref) > tol)
                        fail_msg("%s (%s): y[%lld][%lld] = %.9g, vec_dot %.9g", TYPES[ti], isas[v], (long long)i,
                                 (long long)j, y[v][i * n + j], ref);
            }
        }
        free(ab);
        for (int v = 0; v < 3; v++) free(y[v]);
        free(x);
        free_saved(&s);
        free_layer(&L);
    }
}

/* The AVX-512 activation quantizer gives the reference quantizers' codes,
 * scales and sums exactly. */
static void test_act_quantize_simd(void **state)
{
    (void)state;
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("avx512bw")) {
        print_message("no AVX-512 here: nothing to compare\n");
        return;
    }
    const int64_t k = 1024;
    static const int acts[3] = {GQ_Q8_0, GQ_Q8_1, GQ_Q8_K};
    float *x = malloc((size_t)k * 4);
    int8_t q[2][1024];
    float d[2][32], s[2][32], s16[2][64];
    for (int trial = 0; trial < 200; trial++) {
        const double scale = trial % 3 == 0 ? 1e-3 : trial % 3 == 1 ? 1 : 300;
        for (int64_t i = 0; i < k; i++) x[i] = (float)(grand() * scale);
        if (trial % 5 == 1)
            for (int64_t i = 0; i < 300; i++) x[i] = 0; /* zero blocks */
        if (trial % 5 == 2)
            for (int64_t i = 0; i < k; i += 7) x[i] = (float)((i & 8 ? 1 : -1) * 2.5 * scale); /* ties of |max| */
        if (trial % 5 == 3)
            for (int64_t i = 0; i < k; i++) x[i] = (float)((int)(x[i] * 2) * 0.5); /* exact halves */
        for (int t = 0; t < 3; t++) {
            gq_act v[2];
            for (int r = 0; r < 2; r++) v[r] = (gq_act){q[r], d[r], s[r], acts[t] == GQ_Q8_K ? s16[r] : NULL};
            gq_act_quantize_ref(acts[t], x, k, &v[0]);
            gq_act_quantize_avx512(acts[t], x, k, &v[1]);
            assert_memory_equal(q[0], q[1], (size_t)k);
            assert_memory_equal(d[0], d[1], sizeof d[0]);
            assert_memory_equal(s[0], s[1], sizeof s[0]);
            if (acts[t] == GQ_Q8_K) assert_memory_equal(s16[0], s16[1], sizeof s16[0]);
        }
    }
    free(x);
#endif
}

static int chosen_type(const char *mix, int role, int block, int n_blocks, int64_t k)
{
    qtool_instance *inst = make(mix, "auto");
    layer L = make_layer(2, k, role, block, n_blocks, 0);
    qtool_packed *p;
    int rc = pack(inst, &L, &p);
    int type = -1;
    if (rc == 0) {
        saved s = save(p);
        type = s.type;
        free_saved(&s);
        plugin->desc->free_packed(p);
    } else {
        assert_int_equal(rc, QTOOL_ERR_UNSUPPORTED);
    }
    plugin->desc->destroy(inst);
    free_layer(&L);
    return type;
}

static void test_mix_rules(void **state)
{
    (void)state;
    /* 24 blocks: use_more_bits for i < 3, i >= 21, (i - 3) % 3 == 2. */
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_HEAD, -1, 24, 512), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_HEAD, -1, 24, 96), GQ_Q8_0);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_V, 0, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_V, 4, 24, 256), GQ_Q4_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_V, 5, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_V, 21, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_QKV, 8, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_FFN_DOWN, 4, 24, 256), GQ_Q4_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_FFN_DOWN, 8, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_FFN_UP, 0, 24, 256), GQ_Q4_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_Q, 0, 24, 256), GQ_Q4_K);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_Q, 0, 24, 96), GQ_Q5_0);
    assert_int_equal(chosen_type("Q4_K_M", QTOOL_ROLE_ATTN_V, 0, 24, 96), GQ_Q8_0);
    assert_int_equal(chosen_type("Q5_K_S", QTOOL_ROLE_ATTN_V, 0, 24, 256), GQ_Q5_K);
    assert_int_equal(chosen_type("Q5_K_S", QTOOL_ROLE_FFN_DOWN, 0, 24, 256), GQ_Q5_K);
    assert_int_equal(chosen_type("Q5_K_S", QTOOL_ROLE_HEAD, -1, 24, 256), GQ_Q6_K);
    assert_int_equal(chosen_type("Q5_K_S", QTOOL_ROLE_OTHER, -1, 0, 96), GQ_Q5_1);
    assert_int_equal(chosen_type("Q4_K", QTOOL_ROLE_OTHER, -1, 0, 96), GQ_Q5_0);
    assert_int_equal(chosen_type("Q6_K", QTOOL_ROLE_OTHER, -1, 0, 160), GQ_Q8_0);
    assert_int_equal(chosen_type("Q4_0", QTOOL_ROLE_HEAD, -1, 0, 96), GQ_Q4_0);
    assert_int_equal(chosen_type("Q4_0", QTOOL_ROLE_OTHER, -1, 0, 48), -1); /* K % 32 != 0 */
}

static void test_memory_save_load(void **state)
{
    (void)state;
    const int64_t n = 33, k = 512, m = 5;
    qtool_instance *inst = make("Q4_K_M", "auto");
    layer L = make_layer(n, k, QTOOL_ROLE_FFN_DOWN, 0, 24, 1);
    qt_mem_stats before, after;
    qt_mem_get_stats(&before);
    qtool_packed *p;
    assert_int_equal(pack(inst, &L, &p), 0);
    qt_mem_get_stats(&after);
    uint64_t mem[QTOOL_MEM_COUNT];
    assert_int_equal(plugin->desc->memory(p, mem), 0);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(after.current[QTOOL_DEVICE_CPU][c] - before.current[QTOOL_DEVICE_CPU][c], mem[c]);
    assert_int_equal(mem[QTOOL_MEM_WEIGHTS], (uint64_t)n * gq_row_size(GQ_Q6_K, k));
    assert_int_equal(mem[QTOOL_MEM_OTHER], (uint64_t)n * 4);
    float *x = random_x(m, k), *y1 = malloc((size_t)(m * n) * 4), *y2 = malloc((size_t)(m * n) * 4);
    matmul(p, x, m, k, y1, n);
    qt_mem_get_stats(&before);
    assert_int_equal(before.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WORKSPACE],
                     after.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WORKSPACE]); /* scratch given back */
    saved s = save(p);
    assert_int_equal(s.n_put, 3);
    assert_int_equal(s.type, GQ_Q6_K);
    qtool_load_source src = {&s, src_get, src_has};
    qtool_packed *q;
    assert_int_equal(plugin->desc->load(inst, &L.info, QTOOL_DEVICE_CPU, &src, &q), 0);
    matmul(q, x, m, k, y2, n);
    assert_memory_equal(y1, y2, (size_t)(m * n) * 4);
    plugin->desc->free_packed(q);
    /* A shape that does not match the layer is a format error. */
    qtool_layer_info other = L.info;
    other.in_features = 256;
    assert_int_equal(plugin->desc->load(inst, &other, QTOOL_DEVICE_CPU, &src, &q), QTOOL_ERR_FORMAT);
    s.type = 99;
    assert_int_equal(plugin->desc->load(inst, &L.info, QTOOL_DEVICE_CPU, &src, &q), QTOOL_ERR_FORMAT);
    free_saved(&s);
    plugin->desc->free_packed(p);
    qt_mem_get_stats(&after);
    assert_int_equal(after.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WEIGHTS], before.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WEIGHTS] - (uint64_t)n * gq_row_size(GQ_Q6_K, k));
    free(x);
    free(y1);
    free(y2);
    plugin->desc->destroy(inst);
    free_layer(&L);
}

static void test_bad_input(void **state)
{
    (void)state;
    qtool_instance *inst = make("Q8_0", "auto");
    layer L = make_layer(4, 64, QTOOL_ROLE_OTHER, -1, 0, 0);
    L.w[70] = NAN;
    qtool_packed *p;
    assert_int_equal(pack(inst, &L, &p), QTOOL_ERR_INVALID_ARGUMENT);
    L.w[70] = 1;
    L.info.in_features = 32; /* does not match the weight */
    assert_int_equal(pack(inst, &L, &p), QTOOL_ERR_INVALID_ARGUMENT);
    qtool_device_info dev = {sizeof dev, QTOOL_DEVICE_CUDA, 0, 9, 0, 132, 0, 0, 0, 0, 0, 0, "H100", 0};
    char reason[128];
    assert_int_equal(plugin->desc->probe(&dev, reason, sizeof reason), QTOOL_ERR_UNSUPPORTED);
    dev.kind = QTOOL_DEVICE_CPU;
    assert_int_equal(plugin->desc->probe(&dev, reason, sizeof reason), QTOOL_OK);
    assert_int_equal(plugin->desc->accepts_config("{\"quant_method\": \"gguf\"}"), 1);
    assert_int_equal(plugin->desc->accepts_config("{\"quant_method\": \"awq\"}"), 0);
    plugin->desc->destroy(inst);
    free_layer(&L);
}

/* ------------------------------------------------------ importance matrix */

/* Calibration activations [t, k] whose column j has standard deviation
 * col_sd[j] (uneven energy across columns, as real layer inputs have). */
static float *calib_x(int64_t t, int64_t k, const float *col_sd)
{
    float *x = malloc((size_t)(t * k) * 4);
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < k; j++) x[i * k + j] = grand() * col_sd[j];
    return x;
}

static float *uneven_sd(int64_t k)
{
    float *sd = malloc((size_t)k * 4);
    for (int64_t j = 0; j < k; j++) sd[j] = (float)exp(4 * urand() - 2); /* energies over ~3.5 decades */
    for (int64_t j = 0; j < k; j += 41) sd[j] *= 10;                   /* a few dominant channels */
    return sd;
}

static int calibrate(qtool_instance *inst, const qtool_layer_info *info, const float *x, int64_t t, int64_t k)
{
    qtool_tensor tx = {(void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {t, k}};
    return plugin->desc->calibrate(inst, info, &tx);
}

/* Sum of x_j^2 over the rows, in double, row by row (the plugin's order
 * for one calibrate call). */
static void add_sum_squares(const float *x, int64_t t, int64_t k, double *acc)
{
    double *call = calloc((size_t)k, sizeof(double));
    for (int64_t i = 0; i < t; i++)
        for (int64_t j = 0; j < k; j++) call[j] += (double)x[i * k + j] * (double)x[i * k + j];
    for (int64_t j = 0; j < k; j++) acc[j] += call[j];
    free(call);
}

/* The packed bytes equal the block quantizer's imatrix path fed with the
 * mean of x_j^2 over every calibrated row (two calibrate calls, so the
 * statistics must accumulate), and differ from the plain path (except
 * Q8_0, which ignores the weights as ggml does). */
static void test_imatrix_calibration_bytes(void **state)
{
    (void)state;
    const int64_t n = 6, k = 512, t1 = 37, t2 = 50;
    float *sd = uneven_sd(k);
    float *x1 = calib_x(t1, k, sd), *x2 = calib_x(t2, k, sd);
    double *acc = calloc((size_t)k, sizeof(double));
    add_sum_squares(x1, t1, k, acc);
    add_sum_squares(x2, t2, k, acc);
    float *qw = malloc((size_t)k * 4);
    for (int64_t j = 0; j < k; j++) qw[j] = (float)(acc[j] / (double)(t1 + t2));
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        qtool_instance *im = make_im(TYPES[ti], "auto", 1), *plain = make(TYPES[ti], "auto");
        layer L = make_layer(n, k, QTOOL_ROLE_OTHER, -1, 0, 0);
        assert_int_equal(calibrate(im, &L.info, x1, t1, k), 0);
        assert_int_equal(calibrate(im, &L.info, x2, t2, k), 0);
        assert_int_equal(calibrate(plain, &L.info, x1, t1, k), 0); /* accepted and unused */
        qtool_packed *pi, *pp;
        assert_int_equal(pack(im, &L, &pi), 0);
        assert_int_equal(pack(plain, &L, &pp), 0);
        saved si = save(pi), sp = save(pp);
        const gq_type *t = gq_type_traits(si.type);
        uint8_t *expect = malloc((size_t)(si.rows * si.row_bytes)), *plain_bytes = malloc((size_t)(si.rows * si.row_bytes));
        for (int64_t r = 0; r < n; r++) {
            t->quantize_imatrix(L.w + r * k, expect + r * si.row_bytes, k, qw);
            t->quantize(L.w + r * k, plain_bytes + r * si.row_bytes, k);
        }
        assert_memory_equal(si.weight, expect, (size_t)(si.rows * si.row_bytes));
        assert_memory_equal(sp.weight, plain_bytes, (size_t)(si.rows * si.row_bytes));
        if (si.type == GQ_Q8_0)
            assert_memory_equal(si.weight, sp.weight, (size_t)(si.rows * si.row_bytes));
        else
            assert_memory_not_equal(si.weight, sp.weight, (size_t)(si.rows * si.row_bytes));
        char json[256];
        assert_int_equal(plugin->desc->quant_config_json(im, json, sizeof json), 0);
        assert_non_null(strstr(json, "\"imatrix\": true"));
        assert_int_equal(plugin->desc->quant_config_json(plain, json, sizeof json), 0);
        assert_null(strstr(json, "imatrix"));
        free(expect);
        free(plain_bytes);
        free_saved(&si);
        free_saved(&sp);
        plugin->desc->free_packed(pi);
        plugin->desc->free_packed(pp);
        plugin->desc->destroy(im);
        plugin->desc->destroy(plain);
        free_layer(&L);
    }
    free(qw);
    free(acc);
    free(x1);
    free(x2);
    free(sd);
}

/* ||X (W - W_hat)^T||_F^2 in double over held-out activations X. */
static double output_error(const float *x, int64_t t, const float *w, const float *wh, int64_t n, int64_t k)
{
    double e = 0;
    for (int64_t r = 0; r < n; r++)
        for (int64_t i = 0; i < t; i++) {
            double y = 0;
            for (int64_t j = 0; j < k; j++) y += (double)x[i * k + j] * ((double)w[r * k + j] - wh[r * k + j]);
            e += y * y;
        }
    return e;
}

/* What the importance matrix exists for: on inputs whose column energies
 * differ by orders of magnitude, weighting the rounding error by the mean
 * x_j^2 lowers the output error ||X (W - W_hat)^T||^2 on held-out inputs
 * from the same distribution, for every type that uses the weights. The
 * bound (at most 0.9 of the plain error) is loose: over 80 random draws the
 * ratio stayed within 0.09-0.49 for Q4_1 / Q5_1, 0.19-0.64 for Q4_K,
 * 0.27-0.72 for Q5_K and 0.34-0.78 for Q4_0 / Q5_0 / Q6_K. */
static void test_imatrix_lowers_output_error(void **state)
{
    (void)state;
    const int64_t n = 128, k = 512, t = 256;
    float *sd = uneven_sd(k);
    float *xc = calib_x(t, k, sd), *xe = calib_x(t, k, sd);
    for (size_t ti = 0; ti < sizeof TYPES / sizeof TYPES[0]; ti++) {
        if (strcmp(TYPES[ti], "Q8_0") == 0) continue; /* ignores the weights */
        qtool_instance *im = make_im(TYPES[ti], "auto", 1), *plain = make(TYPES[ti], "auto");
        layer L = make_layer(n, k, QTOOL_ROLE_OTHER, -1, 0, 0);
        assert_int_equal(calibrate(im, &L.info, xc, t, k), 0);
        qtool_packed *pi, *pp;
        assert_int_equal(pack(im, &L, &pi), 0);
        assert_int_equal(pack(plain, &L, &pp), 0);
        float *wi = malloc((size_t)(n * k) * 4), *wp = malloc((size_t)(n * k) * 4);
        assert_int_equal(plugin->desc->dequantize(pi, wi), 0);
        assert_int_equal(plugin->desc->dequantize(pp, wp), 0);
        const double ei = output_error(xe, t, L.w, wi, n, k), ep = output_error(xe, t, L.w, wp, n, k);
        print_message("%s: output error with imatrix / without = %.3f\n", TYPES[ti], ei / ep);
        if (!(ei < 0.9 * ep)) fail_msg("%s: imatrix output error %g is not below 0.9 x the plain %g", TYPES[ti], ei, ep);
        free(wi);
        free(wp);
        plugin->desc->free_packed(pi);
        plugin->desc->free_packed(pp);
        plugin->desc->destroy(im);
        plugin->desc->destroy(plain);
        free_layer(&L);
    }
    free(xc);
    free(xe);
    free(sd);
}

/* imatrix=1 never falls back to the plain quantizer: a layer without
 * calibration data is refused; bad calibration input is refused without
 * touching the statistics; the statistics go back to the allocator on
 * destroy; with imatrix=0 nothing is kept. */
static void test_imatrix_refusals(void **state)
{
    (void)state;
    const int64_t n = 4, k = 256, t = 9;
    qt_mem_stats before, after;
    qt_mem_get_stats(&before);
    qtool_instance *im = make_im("Q4_K", "auto", 1);
    layer L = make_layer(n, k, QTOOL_ROLE_OTHER, -1, 0, 0);
    qtool_packed *p;
    assert_int_equal(pack(im, &L, &p), QTOOL_ERR_INVALID_ARGUMENT); /* no data at all */
    float *sd = uneven_sd(k), *x = calib_x(t, k, sd);
    qtool_layer_info other = L.info;
    other.name = "other.weight";
    assert_int_equal(calibrate(im, &other, x, t, k), 0);
    assert_int_equal(pack(im, &L, &p), QTOOL_ERR_INVALID_ARGUMENT); /* data for another layer only */

    assert_int_equal(calibrate(im, &L.info, x, t, k), 0);
    const float kept = x[3 * k + 17];
    x[3 * k + 17] = INFINITY;
    assert_int_equal(calibrate(im, &L.info, x, t, k), QTOOL_ERR_INVALID_ARGUMENT);
    x[3 * k + 17] = NAN;
    assert_int_equal(calibrate(im, &L.info, x, t, k), QTOOL_ERR_INVALID_ARGUMENT);
    x[3 * k + 17] = kept;
    qtool_tensor bad = {x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {t, k / 2}}; /* K does not match the layer */
    assert_int_equal(plugin->desc->calibrate(im, &L.info, &bad), QTOOL_ERR_INVALID_ARGUMENT);
    bad = (qtool_tensor){x, QTOOL_DTYPE_F16, QTOOL_DEVICE_CPU, 2, 0, {t, k}};
    assert_int_equal(plugin->desc->calibrate(im, &L.info, &bad), QTOOL_ERR_INVALID_ARGUMENT);
    qtool_layer_info wider = L.info; /* same name, another K */
    wider.in_features = 2 * k;
    float *sd2k = uneven_sd(2 * k), *x2 = calib_x(t, 2 * k, sd2k);
    assert_int_equal(calibrate(im, &wider, x2, t, 2 * k), QTOOL_ERR_INVALID_ARGUMENT);
    free(x2);
    free(sd2k);
    /* Only the first, valid call counted. */
    double *acc = calloc((size_t)k, sizeof(double));
    float *qw = malloc((size_t)k * 4);
    add_sum_squares(x, t, k, acc);
    for (int64_t j = 0; j < k; j++) qw[j] = (float)(acc[j] / (double)t);
    assert_int_equal(pack(im, &L, &p), 0);
    saved s = save(p);
    uint8_t *expect = malloc((size_t)(s.rows * s.row_bytes));
    for (int64_t r = 0; r < n; r++) gq_quantize_imatrix_q4_K(L.w + r * k, expect + r * s.row_bytes, k, qw);
    assert_memory_equal(s.weight, expect, (size_t)(s.rows * s.row_bytes));
    free(x);
    free(sd);
    plugin->desc->free_packed(p);
    free(acc);
    free(qw);
    free(expect);
    free_saved(&s);
    plugin->desc->destroy(im);

    /* imatrix=0 keeps nothing from calibration. */
    qtool_instance *plain = make("Q4_K", "auto");
    float *sd2 = uneven_sd(k), *x3 = calib_x(t, k, sd2);
    qt_mem_stats mid;
    qt_mem_get_stats(&mid);
    assert_int_equal(calibrate(plain, &L.info, x3, t, k), 0);
    qt_mem_get_stats(&after);
    assert_int_equal(after.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WORKSPACE], mid.current[QTOOL_DEVICE_CPU][QTOOL_MEM_WORKSPACE]);
    plugin->desc->destroy(plain);
    free(x3);
    free(sd2);
    free_layer(&L);
    qt_mem_get_stats(&after);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(after.current[QTOOL_DEVICE_CPU][c], before.current[QTOOL_DEVICE_CPU][c]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_reference), cmocka_unit_test(test_kernels_agree),
        cmocka_unit_test(test_act_quantize_simd),
        cmocka_unit_test(test_mix_rules),        cmocka_unit_test(test_memory_save_load),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_imatrix_calibration_bytes), cmocka_unit_test(test_imatrix_lowers_output_error),
        cmocka_unit_test(test_imatrix_refusals),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
