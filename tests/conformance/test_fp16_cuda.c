/* The fp16 baseline on CUDA: fp16 and bf16 weights through cuBLASLt (and
 * the tiled fallback when activations and weights differ in dtype) against
 * a float64 reference at odd shapes; the GLU epilogue (the Hopper kernel
 * and the chunked fallback) against float64; the shared cuBLASLt workspace counted
 * exactly once in memory() as layers come and go; throughput printed.
 * Without a CUDA device: "skipped: no CUDA device", exit 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "plugin_host.h"

static qt_plugin *plugin;
static const qtool_plugin_desc *D;
static void *stream;
static int failures;
static uint64_t rng_state;

#define CHECK(cond, ...)                                                 \
    do {                                                                 \
        if (!(cond)) {                                                   \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                  \
            printf(__VA_ARGS__);                                         \
            printf("\n");                                                \
            failures++;                                                  \
        }                                                                \
    } while (0)

static double uniform(void)
{
    rng_state = rng_state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(rng_state >> 11) * 0x1.0p-53;
}

static double normal(void)
{
    double u1 = 1.0 - uniform(), u2 = uniform();
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static qtool_instance *make_instance(const char *dtype)
{
    char opt[32];
    snprintf(opt, sizeof opt, "dtype=%s", dtype);
    char *kv[] = {opt};
    qt_plugin_options o;
    if (qt_plugin_parse_options(plugin, kv, 1, &o) != 0) return NULL;
    qtool_instance *inst = NULL;
    int rc = qt_plugin_create(plugin, &o, 0, stream, &inst);
    qt_plugin_options_free(&o);
    if (rc != 0) printf("create: %s\n", qt_last_error());
    return inst;
}

static qtool_packed *pack(qtool_instance *inst, const float *w, const float *b, int64_t n, int64_t k)
{
    qtool_tensor wt = {(void *)w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {n, k}};
    qtool_tensor bt = {(void *)b, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 0, {n}};
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "test.weight", k, n, 0, 1};
    qtool_pack_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.device = QTOOL_DEVICE_CUDA;
    a.layer = &li;
    a.weight = &wt;
    a.bias = b ? &bt : NULL;
    qtool_packed *p = NULL;
    int rc = D->pack(inst, &a, &p);
    CHECK(rc == QTOOL_OK, "pack N=%lld K=%lld: %s", (long long)n, (long long)k, qt_status_name(rc));
    return rc == QTOOL_OK ? p : NULL;
}

static uint16_t to_half(float v, int dt) { return dt == QTOOL_DTYPE_F16 ? qtool_f32_to_f16(v) : qtool_f32_to_bf16(v); }
static float from_half(uint16_t h, int dt) { return dt == QTOOL_DTYPE_F16 ? qtool_f16_to_f32(h) : qtool_bf16_to_f32(h); }

/* One matmul_cuda call on `run_stream`: x [m, k] and y [m, ny] of dtype `dt`
 * uploaded (y from `y_in`, or all 0xFF bits when NULL), `guard` elements
 * of 0xFF after y, and y with its guard read back into `hy`. 0 on success;
 * a failure is counted (CHECK) and returns -1. */
static int run_device(qtool_packed *p, const uint16_t *hx, int64_t m, int64_t k, const uint16_t *y_in, int64_t ny,
                      int64_t guard, int dt, int epilogue, void *run_stream, uint16_t *hy)
{
    const size_t xb = (size_t)(m * k) * 2, yb = (size_t)(m * ny) * 2, gb = (size_t)guard * 2;
    void *dx = NULL, *dy = NULL;
    int ok = 0;
    if (qt_cuda_malloc(&dx, xb ? xb : 2) || qt_cuda_malloc(&dy, yb + gb ? yb + gb : 2) ||
        qt_cuda_memcpy_h2d(dx, hx, xb) || qt_cuda_memset(dy, 0xFF, yb + gb) ||
        (y_in && qt_cuda_memcpy_h2d(dy, y_in, yb)) || qt_cuda_device_sync()) {
        CHECK(0, "device buffers: %s", qt_last_error());
        goto out;
    }
    qtool_tensor xt = {dx, dt, QTOOL_DEVICE_CUDA, 2, 0, {m, k}};
    qtool_tensor yt = {dy, dt, QTOOL_DEVICE_CUDA, 2, 0, {m, ny}};
    qtool_matmul_args a = {sizeof a, epilogue, &xt, &yt, run_stream};
    int rc = D->matmul_cuda(p, &a);
    CHECK(rc == QTOOL_OK, "matmul_cuda epilogue %d M=%lld K=%lld -> %lld: %s", epilogue, (long long)m, (long long)k,
          (long long)ny, qt_status_name(rc));
    ok = rc == QTOOL_OK && !qt_cuda_stream_sync(run_stream) && !qt_cuda_memcpy_d2h(hy, dy, yb + gb);
out:
    qt_cuda_free(dx);
    qt_cuda_free(dy);
    return ok ? 0 : -1;
}

/* Runs y = x W^T + b on the device with activations of `xdt`; returns the
 * normalised error against float64 computed from the original weights. */
static double run_case(qtool_packed *p, const float *w, const float *b, int64_t m, int64_t k, int64_t n, int xdt,
                       void *run_stream)
{
    uint16_t *hx = malloc((size_t)(m * k) * 2), *hy = malloc((size_t)(m * n) * 2);
    for (int64_t i = 0; i < m * k; i++) hx[i] = to_half((float)normal(), xdt);
    double err = INFINITY;
    if (run_device(p, hx, m, k, NULL, n, 0, xdt, QTOOL_EPILOGUE_NONE, run_stream, hy)) goto out;
    double e2 = 0, s2 = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double ref = b ? b[j] : 0, mag = ref * ref;
            for (int64_t t = 0; t < k; t++) {
                double xv = from_half(hx[i * k + t], xdt), wv = w[j * k + t];
                ref += xv * wv;
                mag += xv * xv * wv * wv;
            }
            double got = from_half(hy[i * n + j], xdt);
            if (!isfinite(got)) {
                e2 = INFINITY;
                break;
            }
            e2 += (got - ref) * (got - ref);
            s2 += mag;
        }
    err = sqrt(e2 / (s2 > 0 ? s2 : 1));
out:
    free(hx);
    free(hy);
    return err;
}

static void test_accuracy(const char *dtype)
{
    static const int64_t shapes[][3] = {{1, 1, 1}, {3, 17, 129}, {129, 129, 17}, {17, 3, 1},
                                        {64, 64, 64}, {37, 1000, 333}, {256, 896, 4864}};
    qtool_instance *inst = make_instance(dtype);
    CHECK(inst != NULL, "create with dtype=%s", dtype);
    if (!inst) return;
    int wdt = strcmp(dtype, "bf16") == 0 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int64_t m = shapes[s][0], k = shapes[s][1], n = shapes[s][2];
        float *w = malloc((size_t)(n * k) * 4), *b = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = (float)(normal() / sqrt((double)k));
        for (int64_t i = 0; i < n; i++) b[i] = (float)(0.5 * normal());
        qtool_packed *p = pack(inst, w, s % 2 ? NULL : b, n, k);
        if (!p) {
            free(w);
            free(b);
            continue;
        }
        for (int xi = 0; xi < 2; xi++) {
            int xdt = xi ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
            /* Weight rounding (fp16 2^-11, bf16 2^-8) plus output rounding. */
            double tol = (wdt == QTOOL_DTYPE_BF16 || xdt == QTOOL_DTYPE_BF16) ? 1.5e-2 : 2e-3;
            double err = run_case(p, w, s % 2 ? NULL : b, m, k, n, xdt, stream);
            printf("dtype=%s x=%s M=%lld K=%lld N=%lld: error %.2e (limit %.1e)%s\n", dtype,
                   xdt == QTOOL_DTYPE_F16 ? "f16" : "bf16", (long long)m, (long long)k, (long long)n, err, tol,
                   xdt != wdt ? " [tiled fallback]" : "");
            CHECK(err <= tol, "error %.3g > %.3g", err, tol);
        }
        D->free_packed(p);
        free(w);
        free(b);
    }
    D->destroy(inst);
}

static double glu_act(int epilogue, double x)
{
    switch (epilogue) {
    case QTOOL_EPILOGUE_SILU_GLU: return x / (1.0 + exp(-x));
    case QTOOL_EPILOGUE_GELU_GLU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    default: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    }
}

/* y [M, N/2] with a GLU epilogue against float64: z = x W^T + b from the
 * original weights, gate and up rounded to the activation type (as the
 * plugin defines them), act(gate) * up. Returns the relative RMS error, or
 * INFINITY when something was written past y's end. */
static double run_glu_case(qtool_packed *p, const float *w, const float *b, int64_t m, int64_t k, int64_t n,
                           int epilogue, int dt, void *run_stream)
{
    const int64_t half = n / 2, guard = 64;
    uint16_t *hx = malloc((size_t)(m * k) * 2), *hy = malloc((size_t)(m * half + guard) * 2);
    for (int64_t i = 0; i < m * k; i++) hx[i] = to_half((float)normal(), dt);
    double err = INFINITY;
    if (run_device(p, hx, m, k, NULL, half, guard, dt, epilogue, run_stream, hy)) goto out;
    for (int64_t i = m * half; i < m * half + guard; i++)
        if (hy[i] != 0xFFFF) goto out; /* written past the end */
    double e2 = 0, s2 = 0;
    double *z = malloc((size_t)n * sizeof(double));
    for (int64_t i = 0; i < m && isfinite(e2); i++) {
        for (int64_t j = 0; j < n; j++) {
            double acc = b ? b[j] : 0;
            for (int64_t t = 0; t < k; t++) acc += (double)from_half(hx[i * k + t], dt) * w[j * k + t];
            z[j] = from_half(to_half((float)acc, dt), dt);
        }
        for (int64_t j = 0; j < half; j++) {
            const double ref = glu_act(epilogue, z[2 * j]) * z[2 * j + 1], got = from_half(hy[i * half + j], dt);
            if (!isfinite(got)) {
                e2 = INFINITY;
                break;
            }
            e2 += (got - ref) * (got - ref);
            s2 += ref * ref;
        }
    }
    free(z);
    err = sqrt(e2 / (s2 > 0 ? s2 : 1));
out:
    free(hx);
    free(hy);
    return err;
}

/* QTOOL_PLUGIN_GLU_EPILOGUE: every epilogue at odd shapes, with and
 * without bias, on both sides of the size where Hopper runs the fused
 * kernel (SiLU, M >= 4096), through a scratch in several row chunks, on
 * another stream; bad calls refused. */
static void test_glu_epilogue(const char *dtype)
{
    static const int64_t cases[][4] = {
        /* M, K, N/2, epilogue */
        {1, 64, 8, QTOOL_EPILOGUE_SILU_GLU},       {7, 24, 13, QTOOL_EPILOGUE_GELU_GLU},
        {300, 136, 68, QTOOL_EPILOGUE_GELU_TANH_GLU}, {300, 136, 68, QTOOL_EPILOGUE_SILU_GLU},
        {4100, 64, 136, QTOOL_EPILOGUE_SILU_GLU},  {4097, 24, 9, QTOOL_EPILOGUE_SILU_GLU},
        {5000, 136, 264, QTOOL_EPILOGUE_SILU_GLU}, {4100, 64, 2048, QTOOL_EPILOGUE_GELU_TANH_GLU},
        {4100, 72, 100, QTOOL_EPILOGUE_GELU_GLU},
    };
    qtool_instance *inst = make_instance(dtype);
    CHECK(inst != NULL, "create with dtype=%s", dtype);
    if (!inst) return;
    const int dt = strcmp(dtype, "bf16") == 0 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
    const double tol = dt == QTOOL_DTYPE_BF16 ? 3e-2 : 4e-3;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t m = cases[c][0], k = cases[c][1], n = 2 * cases[c][2];
        const int ep = (int)cases[c][3];
        float *w = malloc((size_t)(n * k) * 4), *b = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = (float)(normal() / sqrt((double)k));
        for (int64_t i = 0; i < n; i++) b[i] = (float)(0.5 * normal());
        const int with_bias = c % 2 == 0;
        qtool_packed *p = pack(inst, w, with_bias ? b : NULL, n, k);
        if (p) {
            double err = run_glu_case(p, w, with_bias ? b : NULL, m, k, n, ep, dt, stream);
            printf("GLU dtype=%s epilogue %d M=%lld K=%lld N=%lld%s: error %.2e (limit %.1e)\n", dtype, ep,
                   (long long)m, (long long)k, (long long)n, with_bias ? " +bias" : "", err, tol);
            CHECK(err <= tol, "GLU error %.3g > %.3g", err, tol);
            D->free_packed(p);
        }
        free(w);
        free(b);
    }
    /* Another stream (a scratch of its own for the call). */
    void *other = NULL;
    if (qt_cuda_stream_create(&other) == 0) {
        int64_t m = 33, k = 40, n = 2 * 50;
        float *w = malloc((size_t)(n * k) * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = (float)(normal() / sqrt((double)k));
        qtool_packed *p = pack(inst, w, NULL, n, k);
        if (p) {
            double err = run_glu_case(p, w, NULL, m, k, n, QTOOL_EPILOGUE_SILU_GLU, dt, other);
            CHECK(err <= tol, "GLU on another stream: error %.3g", err);
            D->free_packed(p);
        }
        free(w);
        qt_cuda_stream_destroy(other);
    }
    /* Refused: an odd row count, y of the plain shape, an unknown epilogue. */
    {
        int64_t k = 8;
        float w[5 * 8] = {0};
        qtool_packed *odd = pack(inst, w, NULL, 5, k), *even = pack(inst, w, NULL, 4, k);
        void *dx = NULL, *dy = NULL;
        if (odd && even && !qt_cuda_malloc(&dx, 2 * 8 * 2) && !qt_cuda_malloc(&dy, 2 * 5 * 2)) {
            qtool_tensor xt = {dx, dt, QTOOL_DEVICE_CUDA, 2, 0, {2, k}};
            qtool_tensor y2 = {dy, dt, QTOOL_DEVICE_CUDA, 2, 0, {2, 2}}, y4 = {dy, dt, QTOOL_DEVICE_CUDA, 2, 0, {2, 4}};
            qtool_matmul_args a = {sizeof a, QTOOL_EPILOGUE_SILU_GLU, &xt, &y2, stream};
            CHECK(D->matmul_cuda(odd, &a) == QTOOL_ERR_INVALID_ARGUMENT, "GLU with 5 rows accepted");
            a.y = &y4;
            CHECK(D->matmul_cuda(even, &a) == QTOOL_ERR_INVALID_ARGUMENT, "GLU output [2, 4] for 4 rows accepted");
            a.y = &y2;
            a.epilogue = 99;
            CHECK(D->matmul_cuda(even, &a) == QTOOL_ERR_INVALID_ARGUMENT, "epilogue 99 accepted");
        }
        qt_cuda_free(dx);
        qt_cuda_free(dy);
        if (odd) D->free_packed(odd);
        if (even) D->free_packed(even);
    }
    D->destroy(inst);
}

/* QTOOL_PLUGIN_RESIDUAL_EPILOGUE: y starts as a residual r and ends as
 * r + x W^T + b; against float64, relative RMS over |r| + |z|. Large M
 * tunes cuBLASLt on the first call, which must not touch y. */
static double run_residual_case(qtool_packed *p, const float *w, const float *b, int64_t m, int64_t k, int64_t n,
                                int xdt)
{
    uint16_t *hx = malloc((size_t)(m * k) * 2), *hr = malloc((size_t)(m * n) * 2), *hy = malloc((size_t)(m * n) * 2);
    for (int64_t i = 0; i < m * k; i++) hx[i] = to_half((float)normal(), xdt);
    for (int64_t i = 0; i < m * n; i++) hr[i] = to_half((float)(2.0 * normal()), xdt);
    double err = INFINITY;
    if (run_device(p, hx, m, k, hr, n, 0, xdt, QTOOL_EPILOGUE_RESIDUAL, stream, hy)) goto out;
    double e2 = 0, s2 = 0;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            double z = b ? b[j] : 0;
            for (int64_t t = 0; t < k; t++) z += (double)from_half(hx[i * k + t], xdt) * w[j * k + t];
            const double r = from_half(hr[i * n + j], xdt), got = from_half(hy[i * n + j], xdt);
            e2 += (got - (r + z)) * (got - (r + z));
            s2 += (fabs(r) + fabs(z)) * (fabs(r) + fabs(z));
            if (!isfinite(got)) e2 = INFINITY;
        }
    err = sqrt(e2 / (s2 > 0 ? s2 : 1));
out:
    free(hx);
    free(hr);
    free(hy);
    return err;
}

static void test_residual_epilogue(void)
{
    static const int64_t cases[][3] = {{1, 64, 8}, {7, 24, 13}, {2048, 64, 96}, {300, 136, 68}};
    qtool_instance *inst = make_instance("fp16");
    if (!inst) return;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const int64_t m = cases[c][0], k = cases[c][1], n = cases[c][2];
        float *w = malloc((size_t)(n * k) * 4), *b = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n * k; i++) w[i] = (float)(normal() / sqrt((double)k));
        for (int64_t i = 0; i < n; i++) b[i] = (float)(0.5 * normal());
        qtool_packed *p = pack(inst, w, c % 2 ? NULL : b, n, k);
        for (int xi = 0; p && xi < 2; xi++) {
            const int xdt = xi ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16; /* bf16 x: the tiled kernel */
            const double tol = xi ? 1.5e-2 : 2e-3;
            double err = run_residual_case(p, w, c % 2 ? NULL : b, m, k, n, xdt);
            printf("residual x=%s M=%lld K=%lld N=%lld: error %.2e (limit %.1e)\n", xi ? "bf16" : "f16",
                   (long long)m, (long long)k, (long long)n, err, tol);
            CHECK(err <= tol, "residual error %.3g > %.3g", err, tol);
        }
        if (p) D->free_packed(p);
        free(w);
        free(b);
    }
    D->destroy(inst);
}

static void mem_now(uint64_t out[QTOOL_MEM_COUNT])
{
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) out[c] = st.current[0][c] + st.current[1][c];
}

/* Two layers share one workspace; the layers' memory() always add up to
 * what the allocator holds, whichever is freed first. */
static void test_workspace_accounting(void)
{
    uint64_t base[QTOOL_MEM_COUNT], now[QTOOL_MEM_COUNT], m1[QTOOL_MEM_COUNT], m2[QTOOL_MEM_COUNT];
    mem_now(base);
    qtool_instance *inst = make_instance("fp16");
    if (!inst) return;
    int64_t n = 40, k = 24;
    float *w = calloc((size_t)(n * k), 4), *b = calloc((size_t)n, 4);
    qtool_packed *p1 = pack(inst, w, b, n, k), *p2 = pack(inst, w, NULL, n, k);
    if (!p1 || !p2) goto out;
    D->memory(p1, m1);
    D->memory(p2, m2);
    mem_now(now);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        CHECK(m1[c] + m2[c] == now[c] - base[c], "category %d: layers report %llu, allocator holds %llu", c,
              (unsigned long long)(m1[c] + m2[c]), (unsigned long long)(now[c] - base[c]));
    CHECK(m1[QTOOL_MEM_WORKSPACE] > 0 && m2[QTOOL_MEM_WORKSPACE] == 0, "the first layer owns the workspace");
    CHECK(m1[QTOOL_MEM_WEIGHTS] == (uint64_t)(n * k * 2 + n * 2), "fp16 weight + bias bytes");
    uint64_t ws = m1[QTOOL_MEM_WORKSPACE];
    D->free_packed(p1);
    p1 = NULL;
    D->memory(p2, m2);
    mem_now(now);
    CHECK(m2[QTOOL_MEM_WORKSPACE] == ws, "the workspace moves to the remaining layer");
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) CHECK(m2[c] == now[c] - base[c], "category %d after hand-over", c);
    /* A GLU epilogue below the fused kernel's size takes the instance's
     * scratch: reported by the owner too. */
    double gerr = run_glu_case(p2, w, NULL, 9, k, n, QTOOL_EPILOGUE_SILU_GLU, QTOOL_DTYPE_F16, stream);
    CHECK(gerr <= 4e-3, "GLU epilogue: error %.3g", gerr);
    D->memory(p2, m2);
    mem_now(now);
    CHECK(m2[QTOOL_MEM_WORKSPACE] > ws, "the GLU scratch is reported");
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) CHECK(m2[c] == now[c] - base[c], "category %d with the GLU scratch", c);
    /* Another stream: the shared workspace is not used, results still right. */
    void *other = NULL;
    if (qt_cuda_stream_create(&other) == 0) {
        float *w2 = malloc((size_t)(n * k) * 4);
        for (int64_t i = 0; i < n * k; i++) w2[i] = (float)normal();
        qtool_packed *p3 = pack(inst, w2, NULL, n, k);
        if (p3) {
            double err = run_case(p3, w2, NULL, 50, k, n, QTOOL_DTYPE_F16, other);
            CHECK(err <= 2e-3, "matmul on another stream: error %.3g", err);
            D->free_packed(p3);
        }
        free(w2);
        qt_cuda_stream_destroy(other);
    }
out:
    if (p1) D->free_packed(p1);
    if (p2) D->free_packed(p2);
    D->destroy(inst);
    mem_now(now);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) CHECK(now[c] == base[c], "category %d leaked", c);
    free(w);
    free(b);
}

static void time_matmul_cb(void *arg)
{
    void **a = arg;
    D->matmul_cuda((qtool_packed *)a[0], (const qtool_matmul_args *)a[1]);
}

/* Throughput of a decoder-sized projection (informational). */
static void report_throughput(void)
{
    int64_t m = 8192, k = 896, n = 4864;
    qtool_instance *inst = make_instance("fp16");
    if (!inst) return;
    float *w = malloc((size_t)(n * k) * 4);
    for (int64_t i = 0; i < n * k; i++) w[i] = (float)(normal() * 0.03);
    qtool_packed *p = pack(inst, w, w, n, k);
    void *dx = NULL, *dy = NULL;
    if (p && !qt_cuda_malloc(&dx, (size_t)(m * k) * 2) && !qt_cuda_malloc(&dy, (size_t)(m * n) * 2) &&
        !qt_cuda_memset(dx, 0, (size_t)(m * k) * 2)) {
        qtool_tensor xt = {dx, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 0, {m, k}};
        qtool_tensor yt = {dy, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 0, {m, n}};
        qtool_matmul_args a = {sizeof a, 0, &xt, &yt, stream};
        void *args[2] = {p, &a};
        float ms = 0;
        for (int i = 0; i < 3; i++) time_matmul_cb(args);
        if (qt_cuda_time_ms(stream, time_matmul_cb, args, &ms) == 0 && ms > 0)
            printf("M=%lld K=%lld N=%lld fp16: %.3f ms, %.1f TFLOP/s\n", (long long)m, (long long)k, (long long)n,
                   ms, 2.0 * m * n * k / (ms * 1e-3) / 1e12);
    }
    qt_cuda_free(dx);
    qt_cuda_free(dy);
    if (p) D->free_packed(p);
    D->destroy(inst);
    free(w);
}

int main(void)
{
    char why[256] = "";
    if (qt_cuda_device_count(why, sizeof why) <= 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 77;
    }
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/libqtool_fp16.so", dir ? dir : ".");
    if (qt_plugin_load(path, &plugin) != 0) {
        printf("FAIL: %s\n", qt_last_error());
        return 1;
    }
    D = plugin->desc;
    if (!(D->devices & QTOOL_DEVMASK_CUDA)) {
        printf("skipped: no CUDA device (plugin built without CUDA)\n");
        qt_plugin_unload(plugin);
        return 77;
    }
    rng_state = (uint64_t)time(NULL);
    printf("seed %llu\n", (unsigned long long)rng_state);
    if (qt_cuda_set_device(0) != 0 || qt_cuda_stream_create(&stream) != 0) {
        printf("FAIL: %s\n", qt_last_error());
        return 1;
    }
    test_accuracy("fp16");
    test_accuracy("bf16");
    test_glu_epilogue("fp16");
    test_glu_epilogue("bf16");
    test_residual_epilogue();
    test_workspace_accounting();
    report_throughput();
    qt_cuda_stream_destroy(stream);
    qt_plugin_unload(plugin);
    printf("%s (%d failures)\n", failures ? "FAILED" : "ok", failures);
    return failures ? 1 : 0;
}
