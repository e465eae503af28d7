/* GEMM benchmark on the CUDA device: cuBLASLt fp16 baseline against the
 * bnb_int8 and nf4 plugins at M in {1, 16, 8192} and (K, N) in
 * {(896, 4864), (4864, 896)}. CUDA events, 3 warm-up runs, median of the
 * timed runs. Prints ms, TFLOP/s (2*M*N*K / time) and the ratio to fp16 of
 * the same run.
 *
 *   qtool_bench_gemm [--reps N] [--plugin-dir DIR]
 *
 * Plugins come from --plugin-dir, QTOOL_PLUGIN_DIR, or the folder next to
 * the executable (../lib/qtool/plugins). */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <qtool/plugin.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "host_services.h"

#define CK(call)                                                                        \
    do {                                                                                \
        cudaError_t e_ = (call);                                                        \
        if (e_ != cudaSuccess) {                                                        \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)
#define LK(call)                                                                        \
    do {                                                                                \
        cublasStatus_t s_ = (call);                                                     \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                              \
            fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, (int)s_); \
            exit(1);                                                                    \
        }                                                                               \
    } while (0)

static cudaStream_t g_stream;
static int g_reps = 50;

typedef void (*run_fn)(void *ctx);

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Median milliseconds of `reps` runs after 3 warm-up runs. */
static float time_ms(run_fn fn, void *ctx, int reps)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    for (int i = 0; i < 3; i++) fn(ctx);
    CK(cudaStreamSynchronize(g_stream));
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

typedef struct fp16_ctx {
    cublasLtHandle_t h;
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
    const void *w, *x;
    void *y, *ws;
    size_t ws_bytes;
} fp16_ctx;

static void fp16_setup(fp16_ctx *c, int64_t M, int64_t N, int64_t K)
{
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    LK(cublasLtCreate(&c->h));
    LK(cublasLtMatmulDescCreate(&c->op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LK(cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
    LK(cublasLtMatmulDescSetAttribute(c->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
    LK(cublasLtMatrixLayoutCreate(&c->a, CUDA_R_16F, (uint64_t)K, (uint64_t)N, K));
    LK(cublasLtMatrixLayoutCreate(&c->b, CUDA_R_16F, (uint64_t)K, (uint64_t)M, K));
    LK(cublasLtMatrixLayoutCreate(&c->d, CUDA_R_16F, (uint64_t)N, (uint64_t)M, N));
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

static void fp16_run(void *ctx)
{
    fp16_ctx *c = ctx;
    float alpha = 1.0f, beta = 0.0f;
    LK(cublasLtMatmul(c->h, c->op, &alpha, c->w, c->a, c->x, c->b, &beta, c->y, c->d, c->y, c->d, &c->algo, c->ws,
                      c->ws_bytes, g_stream));
}

static void fp16_teardown(fp16_ctx *c)
{
    cublasLtMatrixLayoutDestroy(c->a);
    cublasLtMatrixLayoutDestroy(c->b);
    cublasLtMatrixLayoutDestroy(c->d);
    cublasLtMatmulDescDestroy(c->op);
    cublasLtDestroy(c->h);
}

/* ------------------------------------------------------------ plugins */

typedef struct plugin {
    void *dl;
    const qtool_plugin_desc *d;
    qt_services svc;
    qtool_instance *inst;
} plugin;

static int open_plugin(plugin *p, const char *dir, const char *name, const char *const *kv, int n_kv)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/libqtool_%s.so", dir, name);
    p->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!p->dl) {
        fprintf(stderr, "cannot load %s: %s\n", path, dlerror());
        return -1;
    }
    qtool_plugin_entry_fn entry = (qtool_plugin_entry_fn)dlsym(p->dl, QTOOL_PLUGIN_ENTRY_SYMBOL);
    p->d = entry();
    qt_services_init(&p->svc, name, 0, g_stream);
    char msg[256] = "";
    if (p->d->init && p->d->init(&p->svc.table, msg, sizeof msg)) return -1;
    qtool_option_value vals[16];
    memset(vals, 0, sizeof vals);
    for (uint32_t i = 0; i < p->d->n_options && i < 16; i++) {
        const qtool_option_desc *o = &p->d->options[i];
        const char *text = o->default_value;
        for (int j = 0; j < n_kv; j++)
            if (!strncmp(kv[j], o->name, strlen(o->name)) && kv[j][strlen(o->name)] == '=')
                text = kv[j] + strlen(o->name) + 1;
        vals[i].name = o->name;
        vals[i].type = o->type;
        vals[i].s = text;
        vals[i].i = strtoll(text, NULL, 10);
        vals[i].f = strtod(text, NULL);
        if (o->type == QTOOL_OPT_BOOL) vals[i].i = !strcmp(text, "1") || !strcmp(text, "true");
        if (o->type == QTOOL_OPT_ENUM) {
            int idx = 0;
            vals[i].i = 0;
            for (const char *c = o->choices; c && *c; idx++) {
                const char *bar = strchr(c, '|');
                size_t l = bar ? (size_t)(bar - c) : strlen(c);
                if (l == strlen(text) && !strncmp(c, text, l)) vals[i].i = idx;
                c = bar ? bar + 1 : NULL;
            }
        }
    }
    if (p->d->create(&p->svc.table, vals, p->d->n_options, &p->inst, msg, sizeof msg)) {
        fprintf(stderr, "%s: %s\n", name, msg);
        return -1;
    }
    return 0;
}

typedef struct plugin_run {
    plugin *p;
    qtool_packed *packed;
    qtool_tensor x, y;
} plugin_run;

static void plugin_run_fn(void *ctx)
{
    plugin_run *r = ctx;
    qtool_matmul_args a = {sizeof a, 0, &r->x, &r->y, g_stream};
    if (r->p->d->matmul_cuda(r->packed, &a) != QTOOL_OK) {
        fprintf(stderr, "%s matmul failed\n", r->p->d->name);
        exit(1);
    }
}

/* max |y - ref| / max |ref| over the device output y (fp16). */
static double rel_err(const void *dy, const float *ref, int64_t n)
{
    uint16_t *h = malloc((size_t)n * 2);
    CK(cudaStreamSynchronize(g_stream));
    CK(cudaMemcpy(h, dy, (size_t)n * 2, cudaMemcpyDeviceToHost));
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)qtool_f16_to_f32(h[i]) - ref[i]);
        num = d > num ? d : num;
        den = fabs(ref[i]) > den ? fabs(ref[i]) : den;
    }
    free(h);
    return den > 0 ? num / den : num;
}

static uint64_t rng = 0x1234567887654321ULL;
static float rnd_normal(void)
{
    /* sum of uniforms: cheap and good enough for benchmark data */
    float s = 0;
    for (int i = 0; i < 4; i++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        s += (float)(rng >> 40) / (float)(1 << 24);
    }
    return (s - 2.0f) * 1.7320508f;
}

int main(int argc, char **argv)
{
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    static char exe_dir[PATH_MAX];
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--plugin-dir") && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--reps N] [--plugin-dir DIR]\n", argv[0]);
            return 2;
        }
    }
    if (!dir) {
        ssize_t n = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 64);
        if (n <= 0) return 1;
        exe_dir[n] = '\0';
        char *slash = strrchr(exe_dir, '/');
        if (slash) strcpy(slash, "/../lib/qtool/plugins");
        dir = exe_dir;
    }
    char why[256];
    if (qt_cuda_device_count(why, sizeof why) <= 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 77;
    }
    CK(cudaSetDevice(0));
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    printf("timing: CUDA events, 3 warm-up runs, median of %d; TFLOP/s = 2*M*N*K / time\n\n", g_reps);

    plugin i8 = {0}, q4 = {0}, q4dq = {0};
    const char *i8kv[] = {"threshold=6.0"};
    const char *dqkv[] = {"cuda_kernel=dequant_gemm"};
    if (open_plugin(&i8, dir, "bnb_int8", i8kv, 1) || open_plugin(&q4, dir, "nf4", NULL, 0) ||
        open_plugin(&q4dq, dir, "nf4", dqkv, 1))
        return 1;
    /* Extra int8 instances: the cuBLASLt int32 path (the earlier default)
     * and no outlier decomposition (plain W8A8 with per-row x per-column
     * scales, what smoothquant computes). */
    static const char *chunk_opts[3][2] = {{"gemm=cublaslt", "threshold=6.0"},
                                           {"gemm=auto", "threshold=0"},
                                           {"gemm=cublaslt", "threshold=0"}};
    plugin i8c[3];
    memset(i8c, 0, sizeof i8c);
    for (int c = 0; c < 3; c++)
        if (open_plugin(&i8c[c], dir, "bnb_int8", chunk_opts[c], 2)) return 1;

    static const int64_t shapes[2][2] = {{896, 4864}, {4864, 896}};
    static const int64_t Ms[3] = {1, 16, 8192};
    printf("%-6s %-6s %-6s %-26s %10s %10s %9s %9s\n", "M", "K", "N", "method", "ms", "TFLOP/s", "time/fp16",
           "rel.err");
    for (int s = 0; s < 2; s++) {
        int64_t K = shapes[s][0], N = shapes[s][1];
        /* Weights: normal, a few large ones per row as in trained models. */
        float *w = malloc((size_t)(N * K) * 4);
        for (int64_t i = 0; i < N * K; i++) w[i] = rnd_normal() * 0.02f;
        uint16_t *wh = malloc((size_t)(N * K) * 2);
        for (int64_t i = 0; i < N * K; i++) wh[i] = qtool_f32_to_f16(w[i]);
        void *dw;
        CK(cudaMalloc(&dw, (size_t)(N * K) * 2));
        CK(cudaMemcpy(dw, wh, (size_t)(N * K) * 2, cudaMemcpyHostToDevice));
        qtool_tensor wt = {w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {N, K, 0, 0}};
        qtool_pack_args pa;
        memset(&pa, 0, sizeof pa);
        pa.struct_size = sizeof pa;
        pa.device = QTOOL_DEVICE_CUDA;
        pa.weight = &wt;
        qtool_packed *p8 = NULL, *p4 = NULL, *p4dq = NULL, *p8c[3] = {NULL, NULL, NULL};
        if (i8.d->pack(i8.inst, &pa, &p8) || q4.d->pack(q4.inst, &pa, &p4) || q4dq.d->pack(q4dq.inst, &pa, &p4dq)) {
            fprintf(stderr, "pack failed\n");
            return 1;
        }
        for (int c = 0; c < 3; c++)
            if (i8c[c].d->pack(i8c[c].inst, &pa, &p8c[c])) return 1;
        for (int mi = 0; mi < 3; mi++) {
            int64_t M = Ms[mi];
            uint16_t *xh = malloc((size_t)(M * K) * 2);
            for (int64_t i = 0; i < M * K; i++) xh[i] = qtool_f32_to_f16(rnd_normal());
            void *dx, *dy;
            CK(cudaMalloc(&dx, (size_t)(M * K) * 2));
            CK(cudaMalloc(&dy, (size_t)(M * N) * 2));
            CK(cudaMemcpy(dx, xh, (size_t)(M * K) * 2, cudaMemcpyHostToDevice));
            double flop = 2.0 * (double)M * (double)N * (double)K;
            int reps = M >= 4096 ? (g_reps < 20 ? g_reps : 20) : g_reps;

            fp16_ctx fc;
            memset(&fc, 0, sizeof fc);
            fc.ws_bytes = 32u << 20;
            CK(cudaMalloc(&fc.ws, fc.ws_bytes));
            fc.w = dw;
            fc.x = dx;
            fc.y = dy;
            fp16_setup(&fc, M, N, K);
            float t16 = time_ms(fp16_run, &fc, reps);
            float *y16 = malloc((size_t)(M * N) * 4);
            {
                uint16_t *h = malloc((size_t)(M * N) * 2);
                CK(cudaStreamSynchronize(g_stream));
                CK(cudaMemcpy(h, dy, (size_t)(M * N) * 2, cudaMemcpyDeviceToHost));
                for (int64_t i = 0; i < M * N; i++) y16[i] = qtool_f16_to_f32(h[i]);
                free(h);
            }
            printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K, (long long)N,
                   "cuBLASLt fp16", t16, flop / (t16 * 1e-3) / 1e12, 1.0, 0.0);

            plugin_run r8 = {&i8, p8, {dx, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 0, {M, K, 0, 0}},
                             {dy, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 0, {M, N, 0, 0}}};
            float t8 = time_ms(plugin_run_fn, &r8, reps);
            printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K, (long long)N,
                   "bnb_int8 (auto, threshold 6)", t8, flop / (t8 * 1e-3) / 1e12, t8 / t16, rel_err(dy, y16, M * N));

            plugin_run r4 = {&q4, p4, r8.x, r8.y};
            float t4 = time_ms(plugin_run_fn, &r4, reps);
            printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K, (long long)N,
                   "nf4 (double quant, auto)", t4, flop / (t4 * 1e-3) / 1e12, t4 / t16, rel_err(dy, y16, M * N));
            if (M <= 16) {
                plugin_run rd = {&q4dq, p4dq, r8.x, r8.y};
                float td = time_ms(plugin_run_fn, &rd, reps);
                printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K, (long long)N,
                       "nf4 dequant+cuBLASLt", td, flop / (td * 1e-3) / 1e12, td / t16, rel_err(dy, y16, M * N));
            }
            for (int c = 0; c < 3; c++) {
                plugin_run rc = {&i8c[c], p8c[c], r8.x, r8.y};
                float tc = time_ms(plugin_run_fn, &rc, reps);
                char label[64];
                snprintf(label, sizeof label, "bnb_int8 %s thr %s", chunk_opts[c][0] + 5, chunk_opts[c][1] + 10);
                printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K,
                       (long long)N, label, tc, flop / (tc * 1e-3) / 1e12, tc / t16, rel_err(dy, y16, M * N));
            }
            fflush(stdout);
            free(y16);
            fp16_teardown(&fc);
            CK(cudaFree(fc.ws));
            CK(cudaFree(dx));
            CK(cudaFree(dy));
            free(xh);
        }
        i8.d->free_packed(p8);
        q4.d->free_packed(p4);
        q4dq.d->free_packed(p4dq);
        for (int c = 0; c < 3; c++) i8c[c].d->free_packed(p8c[c]);
        CK(cudaFree(dw));
        free(w);
        free(wh);
    }
    i8.d->destroy(i8.inst);
    q4.d->destroy(q4.inst);
    q4dq.d->destroy(q4dq.inst);
    for (int c = 0; c < 3; c++) i8c[c].d->destroy(i8c[c].inst);
    CK(cudaStreamDestroy(g_stream));
    return 0;
}
