/* W8A8 GEMM benchmark on the CUDA device: cuBLASLt fp16 against the
 * smoothquant (int8: the fused tensor-core kernel, and cuBLASLt with an
 * epilogue kernel at several int32 chunk sizes) and fp8 (E4M3: cuBLASLt
 * outer-vector scaling, and the epilogue path) plugins' matmul_cuda, which include
 * the per-token quantization of the activations, the GEMM and the
 * dequantization + bias: everything a Linear costs. Shapes: M in {1, 16,
 * 8192} and (K, N) in {(896, 4864), (4864, 896)} (Qwen2.5-0.5B's MLP).
 * CUDA events, 3 warm-up runs, median of single calls (--queued: the mean
 * of calls issued back to back); ms, TFLOP/s (2*M*N*K / time), the ratio
 * to fp16 measured in the same run, and the relative max error against
 * the fp16 output.
 *
 *   qtool_bench_w8a8 [--reps N] [--queued] [--plugin-dir DIR] [--bf16]
 *
 * Plugins come from --plugin-dir, QTOOL_PLUGIN_DIR, or the folder next to
 * the executable (../lib/qtool/plugins). The last lines say whether each
 * W8A8 method beats fp16 at M = 8192 (the target). */
#include "../common/bench_cuda.h"

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static float rnd_normal(void) { return bench_normal(&rng); }

#define MAX_METHODS 8

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
        else if (!strcmp(argv[i], "--bf16"))
            g_bf16 = 1;
        else {
            fprintf(stderr, "usage: %s [--reps N] [--queued] [--plugin-dir DIR] [--bf16]\n", argv[0]);
            return 2;
        }
    }
    if (g_reps < 1) g_reps = 1;
    if (!(dir = bench_plugin_dir(dir))) return 1;
    char why[256];
    if (qt_cuda_device_count(why, sizeof why) <= 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 77;
    }
    qt_set_log_level(QTOOL_LOG_ERROR); /* no "uncalibrated" warnings per pack */
    CK(cudaSetDevice(0));
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    CK(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking));
    int fp8_ok = prop.major > 8 || (prop.major == 8 && prop.minor >= 9);
    printf("device: %s (compute capability %d.%d, %d SMs), cuBLASLt %zu\n", prop.name, prop.major, prop.minor,
           prop.multiProcessorCount, cublasLtGetVersion());
    printf("timing: CUDA events, 3 warm-up runs, %s of %d (20 at M >= 4096); TFLOP/s = 2*M*N*K / time; "
           "%s activations; the W8A8 times include activation quantization and dequantization\n\n",
           g_queued ? "mean per call of calls issued back to back" : "median of single calls", g_reps,
           g_bf16 ? "bf16" : "fp16");

    plugin methods[MAX_METHODS];
    memset(methods, 0, sizeof methods);
    int n_methods = 0, big_only[MAX_METHODS] = {0};
    if (open_plugin(&methods[n_methods++], dir, "smoothquant", "smoothquant (fused int8)", NULL, 0)) return 1;
    {
        const char *kv[] = {"gemm=cublaslt", "chunk_mib=16"};
        if (open_plugin(&methods[n_methods++], dir, "smoothquant", "smoothquant cublaslt 16MiB", kv, 2)) return 1;
    }
    {
        const char *kv[] = {"gemm=cublaslt", "chunk_mib=4"};
        big_only[n_methods] = 1;
        if (open_plugin(&methods[n_methods++], dir, "smoothquant", "smoothquant cublaslt 4MiB", kv, 2)) return 1;
    }
    {
        const char *kv[] = {"gemm=cublaslt", "chunk_mib=48"};
        big_only[n_methods] = 1;
        if (open_plugin(&methods[n_methods++], dir, "smoothquant", "smoothquant cublaslt 48MiB", kv, 2)) return 1;
    }
    if (fp8_ok) {
        if (open_plugin(&methods[n_methods++], dir, "fp8", "fp8 (auto scaling)", NULL, 0)) return 1;
        const char *kv[] = {"scaling=epilogue"};
        if (open_plugin(&methods[n_methods++], dir, "fp8", "fp8 (epilogue scaling)", kv, 1)) return 1;
    } else {
        printf("fp8: skipped, needs compute capability >= 8.9 (this card is %d.%d)\n\n", prop.major, prop.minor);
    }

    static const int64_t shapes[2][2] = {{896, 4864}, {4864, 896}};
    static const int64_t Ms[3] = {1, 16, 8192};
    float best_ratio[MAX_METHODS][2];
    for (int i = 0; i < MAX_METHODS; i++) best_ratio[i][0] = best_ratio[i][1] = -1;
    printf("%-6s %-6s %-6s %-28s %10s %10s %9s %9s\n", "M", "K", "N", "method", "ms", "TFLOP/s", "time/fp16",
           "rel.err");
    for (int s = 0; s < 2; s++) {
        int64_t K = shapes[s][0], N = shapes[s][1];
        float *w = malloc((size_t)(N * K) * 4);
        for (int64_t i = 0; i < N * K; i++) w[i] = rnd_normal() * 0.02f;
        uint16_t *wh = malloc((size_t)(N * K) * 2);
        for (int64_t i = 0; i < N * K; i++) wh[i] = f_to_half(w[i]);
        void *dw;
        CK(cudaMalloc(&dw, (size_t)(N * K) * 2));
        CK(cudaMemcpy(dw, wh, (size_t)(N * K) * 2, cudaMemcpyHostToDevice));
        qtool_tensor wt = {w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, 0, {N, K, 0, 0}};
        /* No bias on either side: the error column compares like with like. */
        qtool_pack_args pa;
        memset(&pa, 0, sizeof pa);
        pa.struct_size = sizeof pa;
        pa.device = QTOOL_DEVICE_CUDA;
        pa.weight = &wt;
        qtool_packed *packed[MAX_METHODS];
        for (int m = 0; m < n_methods; m++) {
            packed[m] = NULL;
            if (methods[m].d->pack(methods[m].inst, &pa, &packed[m])) {
                fprintf(stderr, "%s: pack failed: %s\n", methods[m].label, qt_last_error());
                return 1;
            }
        }
        for (int mi = 0; mi < 3; mi++) {
            int64_t M = Ms[mi];
            uint16_t *xh = malloc((size_t)(M * K) * 2);
            for (int64_t i = 0; i < M * K; i++) xh[i] = f_to_half(rnd_normal());
            void *dx, *dy;
            CK(cudaMalloc(&dx, (size_t)(M * K) * 2));
            CK(cudaMalloc(&dy, (size_t)(M * N) * 2));
            CK(cudaMemcpy(dx, xh, (size_t)(M * K) * 2, cudaMemcpyHostToDevice));
            double flop = 2.0 * (double)M * (double)N * (double)K;
            int reps = M >= 4096 ? (g_reps < 20 ? g_reps : 20) : g_reps;

            f16_ctx fc;
            float *y16 = NULL;
            float t16 = f16_baseline(&fc, dw, dx, dy, M, N, K, reps, &y16);
            printf("%-6lld %-6lld %-6lld %-28s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K, (long long)N,
                   g_bf16 ? "cuBLASLt bf16" : "cuBLASLt fp16", t16, flop / (t16 * 1e-3) / 1e12, 1.0, 0.0);
            int dt = g_bf16 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
            for (int m = 0; m < n_methods; m++) {
                if (big_only[m] && M < 4096) continue;
                plugin_run r = {&methods[m], packed[m], {dx, dt, QTOOL_DEVICE_CUDA, 2, 0, {M, K, 0, 0}},
                                {dy, dt, QTOOL_DEVICE_CUDA, 2, 0, {M, N, 0, 0}}};
                float t = time_ms(plugin_run_fn, &r, reps);
                printf("%-6lld %-6lld %-6lld %-28s %10.4f %10.2f %9.2f %9.1e\n", (long long)M, (long long)K,
                       (long long)N, methods[m].label, t, flop / (t * 1e-3) / 1e12, t / t16, rel_err(dy, y16, M * N));
                if (M == 8192) best_ratio[m][s] = t / t16;
            }
            fflush(stdout);
            free(y16);
            f16_baseline_end(&fc);
            CK(cudaFree(dx));
            CK(cudaFree(dy));
            free(xh);
        }
        for (int m = 0; m < n_methods; m++) methods[m].d->free_packed(packed[m]);
        CK(cudaFree(dw));
        free(w);
        free(wh);
    }
    printf("\ntarget (W8A8 faster than fp16 at M = 8192, both shapes) on %s:\n", prop.name);
    for (int m = 0; m < n_methods; m++)
        printf("  %-28s K=896: %.2fx  K=4864: %.2fx  -> %s\n", methods[m].label, best_ratio[m][0], best_ratio[m][1],
               best_ratio[m][0] > 0 && best_ratio[m][0] < 1.0 && best_ratio[m][1] > 0 && best_ratio[m][1] < 1.0
                   ? "met"
                   : "not met");
    for (int m = 0; m < n_methods; m++) close_plugin(&methods[m]);
    CK(cudaStreamDestroy(g_stream));
    return 0;
}
