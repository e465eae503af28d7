/* Matmul throughput of the gguf_cpu plugin per GGUF type against a float32
 * GEMM done the same way (AVX-512: 16 interleaved weight rows x 8
 * activation rows, outer-product form; AVX2: 2 x 4 dot-product tiles;
 * threads over output rows), in the same run.
 *
 *   bench_gguf [PLUGIN.so] [--reps N] [--threads "1 2"]
 *
 * Shapes: M = 256 activation rows; K x N = 896 x 4864 (Qwen2.5-0.5B's
 * gate/up projection) and 4864 x 896 (its down projection, where the
 * k-quants run natively: 896 is not a multiple of 256, so on the first
 * shape Q4_K, Q5_K, Q6_K fall back to Q5_0, Q5_1, Q8_0 as llama.cpp does).
 * Prints the median of N timed runs after one warm-up, GFLOP/s
 * (2 M N K / time), the speed-up over F32 and the relative RMS difference
 * of the output from the F32 result (weight + activation quantization). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "error.h"
#include "plugin_host.h"
#include "threads.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------ float32 reference GEMM */

typedef struct f32_job {
    const float *x, *w;
    float *y;
    int64_t m, k, n;
} f32_job;

#if defined(__x86_64__)
__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 2 weight rows x 4 activation rows of dot products, 8 floats a step:
 * the same tile shape as the quantized AVX2 kernel. */
__attribute__((target("avx2,fma"))) static void f32_rows(void *arg, int64_t begin, int64_t end)
{
    const f32_job *j = arg;
    const int64_t k = j->k;
    for (int64_t u = begin; u < end; u++) {
        const int64_t n0 = u * 8, n1 = n0 + 8 < j->n ? n0 + 8 : j->n;
        for (int64_t i = 0; i < j->m; i += 4) {
            const int na = (int)(j->m - i < 4 ? j->m - i : 4);
            for (int64_t c = n0; c < n1; c += 2) {
                const int nw = c + 1 < n1 ? 2 : 1;
                __m256 acc[2][4];
                for (int a = 0; a < 4; a++) acc[0][a] = acc[1][a] = _mm256_setzero_ps();
                for (int64_t e = 0; e + 8 <= k; e += 8) {
                    const __m256 w0 = _mm256_loadu_ps(j->w + c * k + e);
                    const __m256 w1 = nw > 1 ? _mm256_loadu_ps(j->w + (c + 1) * k + e) : w0;
                    for (int a = 0; a < 4; a++) {
                        if (a >= na) break;
                        const __m256 xv = _mm256_loadu_ps(j->x + (i + a) * k + e);
                        acc[0][a] = _mm256_fmadd_ps(w0, xv, acc[0][a]);
                        acc[1][a] = _mm256_fmadd_ps(w1, xv, acc[1][a]);
                    }
                }
                for (int a = 0; a < na; a++)
                    for (int r = 0; r < nw; r++) j->y[(i + a) * j->n + c + r] = hsum8(acc[r][a]);
            }
        }
    }
}
#else
static void f32_rows(void *arg, int64_t begin, int64_t end)
{
    const f32_job *j = arg;
    for (int64_t u = begin; u < end; u++)
        for (int64_t c = u * 8; c < u * 8 + 8 && c < j->n; c++)
            for (int64_t i = 0; i < j->m; i++) {
                float s = 0;
                for (int64_t e = 0; e < j->k; e++) s += j->w[c * j->k + e] * j->x[i * j->k + e];
                j->y[i * j->n + c] = s;
            }
}
#endif

#if defined(__x86_64__)
/* AVX-512: the same outer-product form as the quantized kernel. 16 weight
 * rows are interleaved per call ([K][16] floats), then each k adds one
 * weight vector times a broadcast activation into 16 outputs of up to 8
 * activation rows. */
__attribute__((target("avx512f"))) static inline __attribute__((always_inline)) void
f32_op_tile(const float *wr, const float *x, int64_t k, float *y, int64_t ldy, __mmask16 valid, const int MT)
{
    __m512 acc[8];
    for (int m = 0; m < MT; m++) acc[m] = _mm512_setzero_ps();
    for (int64_t e = 0; e < k; e++) {
        const __m512 wv = _mm512_loadu_ps(wr + 16 * e);
        for (int m = 0; m < MT; m++) acc[m] = _mm512_fmadd_ps(wv, _mm512_set1_ps(x[m * k + e]), acc[m]);
    }
    for (int m = 0; m < MT; m++) _mm512_mask_storeu_ps(y + m * ldy, valid, acc[m]);
}

__attribute__((target("avx512f"))) static void f32_units_avx512(void *arg, int64_t begin, int64_t end)
{
    const f32_job *j = arg;
    const int64_t k = j->k;
    float *wr = malloc((size_t)k * 16 * sizeof(float));
    if (!wr) return;
    for (int64_t u = begin; u < end; u++) {
        const int64_t n0 = u * 16;
        const int rows = (int)(j->n - n0 < 16 ? j->n - n0 : 16);
        for (int64_t e = 0; e < k; e++)
            for (int r = 0; r < 16; r++) wr[16 * e + r] = r < rows ? j->w[(n0 + r) * k + e] : 0.0f;
        const __mmask16 valid = (__mmask16)((1u << rows) - 1);
        for (int64_t i = 0; i < j->m; i += 8) {
            const int mt = (int)(j->m - i < 8 ? j->m - i : 8);
            const float *xt = j->x + i * k;
            float *yt = j->y + i * j->n + n0;
            switch (mt) {
            case 8: f32_op_tile(wr, xt, k, yt, j->n, valid, 8); break;
            case 7: f32_op_tile(wr, xt, k, yt, j->n, valid, 7); break;
            case 6: f32_op_tile(wr, xt, k, yt, j->n, valid, 6); break;
            case 5: f32_op_tile(wr, xt, k, yt, j->n, valid, 5); break;
            case 4: f32_op_tile(wr, xt, k, yt, j->n, valid, 4); break;
            case 3: f32_op_tile(wr, xt, k, yt, j->n, valid, 3); break;
            case 2: f32_op_tile(wr, xt, k, yt, j->n, valid, 2); break;
            default: f32_op_tile(wr, xt, k, yt, j->n, valid, 1); break;
            }
        }
    }
    free(wr);
}
#endif

static const char *f32_kernel = "avx2";

static void f32_gemm(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n)
{
    f32_job j = {x, w, y, m, k, n};
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        f32_kernel = "avx512";
        qt_parallel_for((n + 15) / 16, 1, f32_units_avx512, &j);
        return;
    }
#endif
    qt_parallel_for((n + 7) / 8, 1, f32_rows, &j);
}

/* ----------------------------------------------------------------- main */

static qtool_instance *make(qt_plugin *p, const char *type)
{
    char opt[32];
    snprintf(opt, sizeof opt, "type=%s", type);
    char *kv[1] = {opt};
    qt_plugin_options opts;
    qtool_instance *inst = NULL;
    if (qt_plugin_parse_options(p, kv, 1, &opts) || qt_plugin_create(p, &opts, -1, NULL, &inst)) {
        fprintf(stderr, "bench_gguf: %s\n", qt_last_error());
        exit(1);
    }
    qt_plugin_options_free(&opts);
    return inst;
}

static void cpu_name(char *buf, size_t len)
{
    snprintf(buf, len, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) {
                c += 2;
                c[strcspn(c, "\n")] = 0;
                snprintf(buf, len, "%s", c);
            }
            break;
        }
    }
    fclose(f);
}

/* The ggml type the plugin chose, from what save() hands out. */
static int grab_type(void *ctx, const char *suffix, const qtool_tensor *t)
{
    if (strcmp(suffix, "ggml_type") == 0) memcpy(ctx, t->data, 4);
    return 0;
}

static const char *type_name(int t)
{
    switch (t) {
    case 2: return "Q4_0";
    case 3: return "Q4_1";
    case 6: return "Q5_0";
    case 7: return "Q5_1";
    case 8: return "Q8_0";
    case 12: return "Q4_K";
    case 13: return "Q5_K";
    case 14: return "Q6_K";
    default: return "?";
    }
}

int main(int argc, char **argv)
{
    const char *plugin_path = NULL, *threads_arg = "1 2";
    int reps = 5;
    for (int a = 1; a < argc; a++) {
        if (strcmp(argv[a], "--reps") == 0 && a + 1 < argc) reps = atoi(argv[++a]);
        else if (strcmp(argv[a], "--threads") == 0 && a + 1 < argc) threads_arg = argv[++a];
        else plugin_path = argv[a];
    }
    char default_path[4096];
    if (!plugin_path) {
        const char *dir = getenv("QTOOL_PLUGIN_DIR");
        snprintf(default_path, sizeof default_path, "%s/libqtool_gguf_cpu.so", dir ? dir : QTOOL_BENCH_PLUGIN_DIR);
        plugin_path = default_path;
    }
    if (reps < 1) reps = 1;
    qt_plugin *plugin;
    if (qt_plugin_load(plugin_path, &plugin)) {
        fprintf(stderr, "bench_gguf: %s\n", qt_last_error());
        return 1;
    }
    static const char *const types[] = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"};
    static const int64_t shapes[2][2] = {{896, 4864}, {4864, 896}};
    const int64_t M = 256;
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    {
        float t0[16] = {0}, t1[16] = {0}, t2[1];
        f32_gemm(t0, t1, t2, 1, 16, 1); /* picks the F32 kernel */
    }
    printf("CPU: %s\nM = %lld, median of %d runs, F32 kernel %s\n", cpu, (long long)M, reps, f32_kernel);
    printf("%-6s %-11s %-3s %-7s %9s %9s %8s %9s\n", "type", "K x N", "thr", "stored", "ms", "GFLOP/s", "vs F32",
           "rel.err");

    int nthreads[8], nt = 0;
    for (const char *s = threads_arg; *s && nt < 8;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s) break;
        if (v > 0) nthreads[nt++] = (int)v;
        s = end;
    }
    double *times = malloc((size_t)reps * sizeof *times);
    for (int si = 0; si < 2; si++) {
        const int64_t K = shapes[si][0], N = shapes[si][1];
        float *x = malloc((size_t)(M * K) * 4), *w = malloc((size_t)(N * K) * 4), *y = malloc((size_t)(M * N) * 4);
        float *yref = malloc((size_t)(M * N) * 4);
        srand(1);
        for (int64_t i = 0; i < M * K; i++) x[i] = (float)rand() / RAND_MAX - 0.5f;
        for (int64_t i = 0; i < N * K; i++) w[i] = ((float)rand() / RAND_MAX - 0.5f) * 0.1f;
        const double flop = 2.0 * (double)M * (double)N * (double)K;
        for (int ti = 0; ti < nt; ti++) {
            qt_threads_shutdown();
            qt_threads_init(nthreads[ti]);
            f32_gemm(x, w, y, M, K, N);
            for (int r = 0; r < reps; r++) {
                double t0 = now();
                f32_gemm(x, w, y, M, K, N);
                times[r] = now() - t0;
            }
            qsort(times, (size_t)reps, sizeof *times, cmp_double);
            const double f32_t = times[reps / 2];
            /* spot check of the F32 path against a float64 dot product */
            for (int64_t c = 0; c < 5; c++) {
                const int64_t i = (c * 97) % M, o = (c * 1031) % N;
                double ref = 0;
                for (int64_t e = 0; e < K; e++) ref += (double)x[i * K + e] * w[o * K + e];
                if (fabs(ref - y[i * N + o]) > 1e-4 * (1 + fabs(ref))) {
                    fprintf(stderr, "bench_gguf: F32 GEMM is wrong at [%lld, %lld]\n", (long long)i, (long long)o);
                    return 1;
                }
            }
            memcpy(yref, y, (size_t)(M * N) * 4);
            printf("%-6s %4lldx%-6lld %-3d %-7s %9.2f %9.1f %8.2f\n", "F32", (long long)K, (long long)N,
                   qt_threads_count(), "F32", f32_t * 1e3, flop / f32_t * 1e-9, 1.0);
            for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
                qtool_instance *inst = make(plugin, types[t]);
                qtool_tensor tw = {w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {N, K}};
                qtool_layer_info info = {sizeof info, QTOOL_ROLE_OTHER, "bench.weight", K, N, -1, 0};
                qtool_pack_args pa = {sizeof pa, QTOOL_DEVICE_CPU, &info, &tw, NULL, NULL, NULL};
                qtool_packed *p;
                int saved_level = qt_log_level();
                qt_set_log_level(QTOOL_LOG_WARN); /* the fallback notice is in the "stored" column */
                if (plugin->desc->pack(inst, &pa, &p)) {
                    fprintf(stderr, "bench_gguf: pack %s failed\n", types[t]);
                    return 1;
                }
                qt_set_log_level(saved_level);
                int32_t stored_type = -1;
                qtool_save_sink sink = {&stored_type, grab_type};
                plugin->desc->save(p, &sink);
                const char *stored = type_name(stored_type);
                qtool_tensor tx = {x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {M, K}};
                qtool_tensor ty = {y, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {M, N}};
                qtool_matmul_args ma = {sizeof ma, 0, &tx, &ty, NULL};
                plugin->desc->matmul_cpu(p, &ma);
                for (int r = 0; r < reps; r++) {
                    double t0 = now();
                    plugin->desc->matmul_cpu(p, &ma);
                    times[r] = now() - t0;
                }
                qsort(times, (size_t)reps, sizeof *times, cmp_double);
                const double tq = times[reps / 2];
                double num = 0, den = 0;
                for (int64_t i = 0; i < M * N; i++) {
                    num += ((double)y[i] - yref[i]) * ((double)y[i] - yref[i]);
                    den += (double)yref[i] * yref[i];
                }
                printf("%-6s %4lldx%-6lld %-3d %-7s %9.2f %9.1f %8.2f %9.4f\n", types[t], (long long)K, (long long)N,
                       qt_threads_count(), stored, tq * 1e3, flop / tq * 1e-9, f32_t / tq, sqrt(num / den));
                plugin->desc->free_packed(p);
                plugin->desc->destroy(inst);
            }
        }
        free(x);
        free(w);
        free(y);
        free(yref);
    }
    free(times);
    qt_plugin_unload(plugin);
    qt_threads_shutdown();
    return 0;
}
