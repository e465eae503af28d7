/* GEMM benchmark on the CUDA device: cuBLASLt fp16 baseline against the
 * bnb_int8 and nf4 plugins at M in {1, 16, 8192} and (K, N) in
 * {(896, 4864), (4864, 896)}. CUDA events, 3 warm-up runs, then the
 * median of single calls (each from an idle stream), or with --queued the
 * mean of calls issued back to back. Prints ms, TFLOP/s (2*M*N*K / time)
 * and the ratio to fp16 of the same run.
 *
 *   qtool_bench_gemm [--reps N] [--queued] [--plugin-dir DIR]
 *
 * Plugins come from --plugin-dir, QTOOL_PLUGIN_DIR, or the folder next to
 * the executable (../lib/qtool/plugins). */
#include "../common/bench_cuda.h"

static uint64_t rng = 0x1234567887654321ULL;
static float rnd_normal(void) { return bench_normal(&rng); }

int main(int argc, char **argv)
{
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            g_reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--queued"))
            g_queued = 1;
        else if (!strcmp(argv[i], "--plugin-dir") && i + 1 < argc)
            dir = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--reps N] [--queued] [--plugin-dir DIR]\n", argv[0]);
            return 2;
        }
    }
    if (!(dir = bench_plugin_dir(dir))) return 1;
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
    printf("timing: CUDA events, 3 warm-up runs, %s of %d (20 at M >= 4096); TFLOP/s = 2*M*N*K / time\n\n",
           g_queued ? "mean per call of calls issued back to back" : "median of single calls", g_reps);

    plugin i8 = {0}, q4 = {0}, q4dq = {0};
    const char *i8kv[] = {"threshold=6.0"};
    const char *dqkv[] = {"cuda_kernel=dequant_gemm"};
    if (open_plugin(&i8, dir, "bnb_int8", "bnb_int8", i8kv, 1) || open_plugin(&q4, dir, "nf4", "nf4", NULL, 0) ||
        open_plugin(&q4dq, dir, "nf4", "nf4", dqkv, 1))
        return 1;
    /* Extra int8 instances: the cuBLASLt int32 path (the earlier default)
     * and no outlier decomposition (plain W8A8 with per-row x per-column
     * scales, what smoothquant computes). */
    static const char *chunk_opts[3][2] = {{"gemm=cublaslt", "threshold=6.0"},
                                           {"gemm=auto", "threshold=0"},
                                           {"gemm=cublaslt", "threshold=0"}};
    plugin i8c[3];
    memset(i8c, 0, sizeof i8c);
    /* The group-wise int4 plugins, packed without calibration data (their
     * kernels are what is timed; quality needs calibration, see qtool eval). */
    static const char *int4_names[2] = {"awq", "gptq"};
    plugin i4[2];
    memset(i4, 0, sizeof i4);
    for (int c = 0; c < 2; c++)
        if (open_plugin(&i4[c], dir, int4_names[c], int4_names[c], NULL, 0)) return 1;
    for (int c = 0; c < 3; c++)
        if (open_plugin(&i8c[c], dir, "bnb_int8", "bnb_int8", chunk_opts[c], 2)) return 1;

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
        qtool_packed *p4g[2] = {NULL, NULL};
        for (int c = 0; c < 2; c++)
            if (i4[c].d->pack(i4[c].inst, &pa, &p4g[c])) {
                fprintf(stderr, "%s pack failed\n", int4_names[c]);
                return 1;
            }
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

            f16_ctx fc;
            float *y16 = NULL;
            float t16 = f16_baseline(&fc, dw, dx, dy, M, N, K, reps, &y16);
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
            for (int c = 0; c < 2; c++) {
                plugin_run rg = {&i4[c], p4g[c], r8.x, r8.y};
                float tg = time_ms(plugin_run_fn, &rg, reps);
                char label[64];
                snprintf(label, sizeof label, "%s (int4, group 128)", int4_names[c]);
                printf("%-6lld %-6lld %-6lld %-26s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K,
                       (long long)N, label, tg, flop / (tg * 1e-3) / 1e12, tg / t16, rel_err(dy, y16, M * N));
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
            f16_baseline_end(&fc);
            CK(cudaFree(dx));
            CK(cudaFree(dy));
            free(xh);
        }
        i8.d->free_packed(p8);
        q4.d->free_packed(p4);
        q4dq.d->free_packed(p4dq);
        for (int c = 0; c < 3; c++) i8c[c].d->free_packed(p8c[c]);
        for (int c = 0; c < 2; c++) i4[c].d->free_packed(p4g[c]);
        CK(cudaFree(dw));
        free(w);
        free(wh);
    }
    i8.d->destroy(i8.inst);
    q4.d->destroy(q4.inst);
    q4dq.d->destroy(q4dq.inst);
    for (int c = 0; c < 3; c++) i8c[c].d->destroy(i8c[c].inst);
    for (int c = 0; c < 2; c++) i4[c].d->destroy(i4[c].inst);
    CK(cudaStreamDestroy(g_stream));
    return 0;
}
