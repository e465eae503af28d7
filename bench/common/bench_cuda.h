/* What the CUDA GEMM benchmarks share: error-checking macros, the timing
 * loop (CUDA events, 3 warm-up runs, then the median of single calls or,
 * with g_queued, the mean of calls issued back to back), the cuBLASLt fp16/bf16
 * baseline, loading a plugin with options, running its matmul_cuda, and
 * the error of a 16-bit device output against a float reference. Included
 * by one source file per benchmark (the globals are that program's). */
#ifndef QTOOL_BENCH_CUDA_H
#define QTOOL_BENCH_CUDA_H

#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qtool/plugin.h>

#include "cuda_rt.h"
#include "error.h"
#include "plugin_host.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                               \
        }                                                                                          \
    } while (0)
#define LK(call)                                                                                  \
    do {                                                                                          \
        cublasStatus_t s_ = (call);                                                               \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                        \
            fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, (int)s_); \
            exit(1);                                                                              \
        }                                                                                         \
    } while (0)

static cudaStream_t g_stream;
static int g_reps = 50;
static int g_bf16; /* 16-bit type of activations and baseline: bf16 when set, else fp16 */
/* Timing mode. 0: each call alone from an idle stream, the median (host
 * launch latency included, as one call in isolation sees it). 1: `reps`
 * calls issued back to back, the mean (the GPU never waits for the host,
 * as inside a model's forward pass). */
static int g_queued;

typedef void (*run_fn)(void *ctx);

static inline int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static inline float time_ms(run_fn fn, void *ctx, int reps)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) fn(ctx);
    CK(cudaStreamSynchronize(g_stream));
    if (g_queued) {
        float total = 0.0f;
        CK(cudaEventRecord(a, g_stream));
        for (int i = 0; i < reps; i++) fn(ctx);
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&total, a, b));
        CK(cudaEventDestroy(a));
        CK(cudaEventDestroy(b));
        return total / (float)reps;
    }
    float *t = malloc(sizeof(float) * (size_t)reps);
    for (int i = 0; i < reps; i++) {
        CK(cudaEventRecord(a, g_stream));
        fn(ctx);
        CK(cudaEventRecord(b, g_stream));
        CK(cudaEventSynchronize(b));
        CK(cudaEventElapsedTime(&t[i], a, b));
    }
    qsort(t, (size_t)reps, sizeof(float), cmp_float);
    float med = reps % 2 ? t[reps / 2] : 0.5f * (t[reps / 2 - 1] + t[reps / 2]);
    free(t);
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return med;
}

/* ------------------------------------------------------------ fp16 */

typedef struct f16_ctx {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
    const void *w, *x;
    void *y, *ws;
    size_t ws_bytes;
} f16_ctx;

static inline void f16_setup(f16_ctx *c, int64_t M, int64_t N, int64_t K)
{
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cudaDataType_t dt = g_bf16 ? CUDA_R_16BF : CUDA_R_16F;
    LK(cublasLtCreate(&c->h));
    LK(cublasLtMatmulDescCreate(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LK(cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LK(cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LK(cublasLtMatrixLayoutCreate(&c->a, dt, (uint64_t)K, (uint64_t)N, K));
    LK(cublasLtMatrixLayoutCreate(&c->b, dt, (uint64_t)K, (uint64_t)M, K));
    LK(cublasLtMatrixLayoutCreate(&c->d, dt, (uint64_t)N, (uint64_t)M, N));
    cublasLtMatmulPreference_t pref;
    LK(cublasLtMatmulPreferenceCreate(&pref));
    LK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &c->ws_bytes,
                                            sizeof c->ws_bytes));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    LK(cublasLtMatmulAlgoGetHeuristic(c->h, c->op, c->a, c->b, c->d, c->d, pref, 1, &heur, &found));
    if (!found) {
        fprintf(stderr, "no cuBLASLt fp16 algorithm\n");
        exit(1);
    }
    c->algo = heur.algo;
    cublasLtMatmulPreferenceDestroy(pref);
}

static inline void f16_run(void *ctx)
{
    f16_ctx *c = ctx;
    float alpha = 1.0f, beta = 0.0f;
    LK(cublasLtMatmul(c->h, c->op, &alpha, c->w, c->a, c->x, c->b, &beta, c->y, c->d, c->y, c->d, &c->algo, c->ws,
                      c->ws_bytes, g_stream));
}

static inline void f16_teardown(f16_ctx *c)
{
    cublasLtMatrixLayoutDestroy(c->a);
    cublasLtMatrixLayoutDestroy(c->b);
    cublasLtMatrixLayoutDestroy(c->d);
    cublasLtMatmulDescDestroy(c->op);
    cublasLtDestroy(c->h);
}

/* ------------------------------------------------------------ plugins */

typedef struct plugin {
    qt_plugin *qp;
    const qtool_plugin_desc *d; /* the host's copy of the plugin's */
    qtool_instance *inst;
    char label[64];
} plugin;

/* Loads dir/libqtool_<name>.so through the runtime's plugin host and
 * creates an instance for device 0 and g_stream with the "name=value"
 * options, parsed as `--opt` is. The library stays loaded to the end of
 * the process. */
static inline int open_plugin(plugin *p, const char *dir, const char *name, const char *label, const char *const *kv,
                              int n_kv)
{
    char path[PATH_MAX];
    memset(p, 0, sizeof *p);
    snprintf(p->label, sizeof p->label, "%s", label);
    snprintf(path, sizeof path, "%s/libqtool_%s.so", dir, name);
    qt_plugin_options opts;
    if (qt_plugin_load(path, &p->qp) != 0 ||
        qt_plugin_parse_options(p->qp, (char *const *)kv, (size_t)(kv ? n_kv : 0), &opts) != 0) {
        fprintf(stderr, "%s\n", qt_last_error());
        return -1;
    }
    p->d = p->qp->desc;
    int rc = qt_plugin_create(p->qp, &opts, 0, g_stream, &p->inst);
    qt_plugin_options_free(&opts);
    if (rc != 0) {
        fprintf(stderr, "%s\n", qt_last_error());
        return -1;
    }
    return 0;
}

/* Destroys the instance; the library stays loaded (cuBLAS state may still
 * reference it until the process ends). */
static inline void close_plugin(plugin *p)
{
    if (p->inst) p->d->destroy(p->inst);
    p->inst = NULL;
}

typedef struct plugin_run {
    plugin *p;
    qtool_packed *packed;
    qtool_tensor x, y;
} plugin_run;

static inline void plugin_run_fn(void *ctx)
{
    plugin_run *r = ctx;
    qtool_matmul_args a = {sizeof a, 0, &r->x, &r->y, g_stream};
    if (r->p->d->matmul_cuda(r->packed, &a) != QTOOL_OK) {
        fprintf(stderr, "%s matmul failed: %s\n", r->p->label, qt_last_error());
        exit(1);
    }
}

static inline float half_to_f(uint16_t h) { return g_bf16 ? qtool_bf16_to_f32(h) : qtool_f16_to_f32(h); }
static inline uint16_t f_to_half(float f) { return g_bf16 ? qtool_f32_to_bf16(f) : qtool_f32_to_f16(f); }

/* The cuBLASLt baseline of one shape, y = x w^T on the device buffers:
 * sets fc up (32 MiB of workspace), times it (median of reps) and returns
 * the time, with its output as floats in *y_out (malloc'd; the reference
 * the other methods' errors are measured against). f16_baseline_end frees
 * what it set up. */
static inline float f16_baseline(f16_ctx *fc, const void *dw, void *dx, void *dy, int64_t M, int64_t N, int64_t K,
                                 int reps, float **y_out)
{
    memset(fc, 0, sizeof *fc);
    fc->ws_bytes = 32u << 20;
    CK(cudaMalloc(&fc->ws, fc->ws_bytes));
    fc->w = dw;
    fc->x = dx;
    fc->y = dy;
    f16_setup(fc, M, N, K);
    float t = time_ms(f16_run, fc, reps);
    float *y = malloc((size_t)(M * N) * 4);
    uint16_t *h = malloc((size_t)(M * N) * 2);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaMemcpy(h, dy, (size_t)(M * N) * 2, cudaMemcpyDeviceToHost));
    for (int64_t i = 0; i < M * N; i++) y[i] = half_to_f(h[i]);
    free(h);
    *y_out = y;
    return t;
}

static inline void f16_baseline_end(f16_ctx *fc)
{
    f16_teardown(fc);
    CK(cudaFree(fc->ws));
}

/* max |y - ref| / max |ref| over the device output y. */
static inline double rel_err(const void *dy, const float *ref, int64_t n)
{
    uint16_t *h = malloc((size_t)n * 2);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaMemcpy(h, dy, (size_t)n * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)half_to_f(h[i]) - ref[i]);
        num = d > num ? d : num;
        den = fabs(ref[i]) > den ? fabs(ref[i]) : den;
    }
    free(h);
    return den > 0 ? num / den : num;
}

/* Roughly normal samples (sum of four uniforms from xorshift `*rng`):
 * cheap and good enough for benchmark data. */
static inline float bench_normal(uint64_t *rng)
{
    float s = 0;
    for (int i = 0; i < 4; i++) {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        s += (float)(*rng >> 40) / (float)(1 << 24);
    }
    return (s - 2.0f) * 1.7320508f;
}

/* `dir` when given, else the plugin folder next to the executable. */
static inline const char *bench_plugin_dir(const char *dir)
{
    static char exe_dir[PATH_MAX];
    if (dir) return dir;
    ssize_t n = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 64);
    if (n <= 0) return NULL;
    exe_dir[n] = '\0';
    char *slash = strrchr(exe_dir, '/');
    if (slash) strcpy(slash, "/../lib/qtool/plugins");
    return exe_dir;
}

#endif
