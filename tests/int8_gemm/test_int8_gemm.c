/* qt_i8gemm (plugins/common/int8_gemm) on the GPU against a CPU reference:
 * exact int32 sums (int64 on the CPU), then the fp32 epilogue in the same
 * order as the kernel; the 16-bit output must be that value rounded (1 ulp
 * of slack). Every kernel shape the device has (auto, 128x256, 128x128,
 * 64x128, 64x64, skinny, wgmma on sm_90a), odd M/N/K, fp16 and bf16,
 * strided operands, unaligned output, broadcast and missing scales,
 * outlier columns (fewer and more than one staging chunk), argument
 * checks. Fresh random inputs each run (QTOOL_TEST_SEED repeats one).
 * Exits 77 without a CUDA device.
 *
 *   test_int8_gemm            the tests
 *   test_int8_gemm --bench [M N K]   GEMM-only timings of every kernel
 *                             shape at the benchmark sizes, or at one size
 *                             (CUDA events, median of 30) */
#include <cuda_runtime_api.h>
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

#include <qtool/plugin.h>

#include "int8_gemm.h"

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            fail();                                                                                \
        }                                                                                          \
    } while (0)

static uint64_t rng = 0x9E3779B97F4A7C15ull;
static uint64_t rnext(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}
static double runif(void) { return (double)(rnext() >> 11) / 9007199254740992.0; }
static int rint_in(int lo, int hi) { return lo + (int)(rnext() % (uint64_t)(hi - lo + 1)); }

static void *dev_copy(const void *h, size_t bytes)
{
    void *d = NULL;
    CK(cudaMalloc(&d, bytes ? bytes : 1));
    if (bytes) CK(cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice));
    return d;
}

static float h2f(uint16_t h, int bf16) { return bf16 ? qtool_bf16_to_f32(h) : qtool_f16_to_f32(h); }
static uint16_t f2h(float f, int bf16) { return bf16 ? qtool_f32_to_bf16(f) : qtool_f32_to_f16(f); }
/* Position of a 16-bit float on a monotonic integer line (ulp distance). */
static int32_t ordered(uint16_t h) { return (h & 0x8000u) ? -(int32_t)(h & 0x7FFFu) : (int32_t)h; }

typedef struct problem {
    int64_t M, N, K, lda, ldb, ldd, ldx;
    int bf16, rs_mode /* 0 none, 1 per row, 2 broadcast */, with_cs, with_bias, d_offset;
    int n_out; /* outlier columns; -1: none (NULL count) */
    int small_values; /* codes in [-1, 1]: |acc| <= 2048 so fp16 holds it exactly */
    int config;
} problem;

/* Runs one problem on the GPU and checks every output element. */
static void check_problem(const problem *pr)
{
    const int64_t M = pr->M, N = pr->N, K = pr->K;
    const int64_t lda = pr->lda ? pr->lda : K, ldb = pr->ldb ? pr->ldb : K, ldd = pr->ldd ? pr->ldd : N;
    const int64_t ldx = pr->ldx ? pr->ldx : K;
    int8_t *A = malloc((size_t)(M * lda)), *B = malloc((size_t)(N * ldb));
    for (int64_t i = 0; i < M * lda; i++) A[i] = (int8_t)(pr->small_values ? rint_in(-1, 1) : rint_in(-127, 127));
    for (int64_t i = 0; i < N * ldb; i++) B[i] = (int8_t)(pr->small_values ? rint_in(-1, 1) : rint_in(-127, 127));
    /* Extreme codes in the first row and column, so the sums reach their range. */
    for (int64_t k = 0; k < K && !pr->small_values; k++) {
        A[k] = 127;
        B[k] = (int8_t)(k % 2 ? -127 : 127);
    }
    float *rs = malloc((size_t)M * 4), *cs = malloc((size_t)N * 4), *bias = malloc((size_t)N * 4);
    for (int64_t i = 0; i < M; i++) rs[i] = (float)(0.001 + 0.01 * runif());
    for (int64_t i = 0; i < N; i++) cs[i] = (float)(0.5 + runif());
    for (int64_t i = 0; i < N; i++) bias[i] = (float)(runif() - 0.5);
    float alpha = pr->small_values ? 1.0f : (float)(0.5 + runif()) / (float)K;
    const int bf16 = pr->bf16;
    /* Outlier columns and activations. */
    int32_t *cols = NULL;
    int n_out = pr->n_out > 0 ? pr->n_out : 0;
    uint16_t *x = NULL;
    if (pr->n_out >= 0) {
        cols = malloc((size_t)(n_out + 1) * 4);
        int64_t step = n_out ? K / n_out : 1;
        for (int j = 0; j < n_out; j++) cols[j] = (int32_t)(j * step + (int64_t)(rnext() % (uint64_t)step));
        x = malloc((size_t)(M * ldx) * 2);
        for (int64_t i = 0; i < M * ldx; i++) x[i] = f2h((float)(12.0 * (runif() - 0.5)), bf16);
    }

    const int8_t *dA = dev_copy(A, (size_t)(M * lda)), *dB = dev_copy(B, (size_t)(N * ldb));
    float *drs = dev_copy(rs, (size_t)M * 4), *dcs = dev_copy(cs, (size_t)N * 4), *dbias = dev_copy(bias, (size_t)N * 4);
    const size_t dbytes = (size_t)(M * ldd + pr->d_offset) * 2;
    uint8_t *dD = NULL;
    CK(cudaMalloc((void **)&dD, dbytes));
    CK(cudaMemset(dD, 0xFF, dbytes)); /* NaN poison: every element must be written */
    int32_t *dcols = NULL, *dcount = NULL;
    void *dx = NULL;
    if (cols) {
        dcols = dev_copy(cols, (size_t)(n_out + 1) * 4);
        dcount = dev_copy(&n_out, 4);
        dx = dev_copy(x, (size_t)(M * ldx) * 2);
    }

    qt_i8gemm_args a;
    memset(&a, 0, sizeof a);
    a.A = dA;
    a.B = dB;
    a.M = M;
    a.N = N;
    a.K = K;
    a.lda = lda;
    a.ldb = ldb;
    a.ldd = ldd;
    a.row_scale = pr->rs_mode ? drs : NULL;
    a.row_scale_broadcast = pr->rs_mode == 2;
    a.col_scale = pr->with_cs ? dcs : NULL;
    a.alpha = alpha;
    a.bias = pr->with_bias ? dbias : NULL;
    a.D = dD + pr->d_offset * 2;
    a.d_is_bf16 = bf16;
    a.outlier_cols = dcols;
    a.outlier_count = dcount;
    a.outlier_x = dx;
    a.ldx = ldx;
    a.outlier_w_scale = 1.0f / 127.0f;
    a.config = pr->config;
    char msg[256] = "";
    int rc = qt_i8gemm_ex(&a, msg, sizeof msg);
    uint16_t *D = malloc(dbytes);
    uint8_t *is_out = calloc((size_t)K, 1);
    int64_t bad = 0;
    if (!qt_i8gemm_config_takes(pr->config, &a)) {
        /* A config without these features (the TMA kernels: outliers, a
         * broadcast row scale, an unaligned D) refuses them, and says so. */
        assert_int_equal(rc, QTOOL_ERR_UNSUPPORTED);
        assert_non_null(strstr(msg, "does not take"));
        goto done;
    }
    if (rc) fprintf(stderr, "qt_i8gemm_ex: %s\n", msg);
    assert_int_equal(rc, 0);
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(D, dD, dbytes, cudaMemcpyDeviceToHost));
    const uint16_t *Dv = D + pr->d_offset;

    for (int j = 0; j < n_out; j++) is_out[cols[j]] = 1;
    for (int64_t m = 0; m < M && bad < 5; m++)
        for (int64_t n = 0; n < N && bad < 5; n++) {
            int64_t acc = 0;
            for (int64_t k = 0; k < K; k++)
                if (!is_out[k]) acc += (int64_t)A[m * lda + k] * B[n * ldb + k];
            assert_true(acc >= INT32_MIN && acc <= INT32_MAX);
            const float r = pr->rs_mode == 0 ? 1.0f : pr->rs_mode == 1 ? rs[m] : rs[0];
            const float c = pr->with_cs ? cs[n] : 1.0f;
            float v = (float)acc * r;
            v = v * c;
            v = v * alpha;
            const uint16_t got = Dv[m * ldd + n];
            if (pr->small_values) { /* exact: D is the integer sum itself */
                if (h2f(got, bf16) != (float)acc) {
                    fprintf(stderr, "M=%lld N=%lld K=%lld config %s: D[%lld,%lld] = %g, exact sum %lld\n",
                            (long long)M, (long long)N, (long long)K, qt_i8gemm_config_name(pr->config),
                            (long long)m, (long long)n, h2f(got, bf16), (long long)acc);
                    bad++;
                }
                continue;
            }
            if (n_out == 0) {
                if (pr->with_bias) v = v + bias[n];
                const uint16_t want = f2h(v, bf16);
                if (abs(ordered(got) - ordered(want)) > 1 || got == 0xFFFFu) {
                    fprintf(stderr, "M=%lld N=%lld K=%lld config %s bf16 %d: D[%lld,%lld] = %.8g, want %.8g (fp32 %.8g)\n",
                            (long long)M, (long long)N, (long long)K, qt_i8gemm_config_name(pr->config), bf16,
                            (long long)m, (long long)n, h2f(got, bf16), h2f(want, bf16), v);
                    bad++;
                }
                continue;
            }
            /* Outliers: fp32 accumulation order differs from this float64 sum. */
            double ref = v, mag = fabs(v);
            for (int j = 0; j < n_out; j++) {
                const int64_t k = cols[j];
                const double w = (double)(((float)B[n * ldb + k] * c) * (1.0f / 127.0f));
                const double t = (double)h2f(x[m * ldx + k], bf16) * w;
                ref += t;
                mag += fabs(t);
            }
            if (pr->with_bias) {
                ref += bias[n];
                mag += fabs(bias[n]);
            }
            const double ulp = bf16 ? 0x1p-8 : 0x1p-11;
            if (!(fabs(h2f(got, bf16) - ref) <= ulp * fabs(ref) + 1e-6 * mag + 1e-7)) {
                fprintf(stderr, "outliers %d M=%lld N=%lld K=%lld config %s bf16 %d: D[%lld,%lld] = %.8g, want %.8g\n",
                        n_out, (long long)M, (long long)N, (long long)K, qt_i8gemm_config_name(pr->config), bf16,
                        (long long)m, (long long)n, h2f(got, bf16), ref);
                bad++;
            }
        }
    /* Nothing outside D (row padding, the bytes before an offset D) was written. */
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = N; n < ldd; n++) assert_int_equal(Dv[m * ldd + n], 0xFFFFu);
    for (int i = 0; i < pr->d_offset; i++) assert_int_equal(D[i], 0xFFFFu);
    assert_int_equal(bad, 0);

done:
    cudaFree((void *)dA);
    cudaFree((void *)dB);
    cudaFree(drs);
    cudaFree(dcs);
    cudaFree(dbias);
    cudaFree(dD);
    cudaFree(dcols);
    cudaFree(dcount);
    cudaFree(dx);
    free(A);
    free(B);
    free(rs);
    free(cs);
    free(bias);
    free(cols);
    free(x);
    free(D);
    free(is_out);
}

static const int64_t kMs[] = {1, 3, 17, 33, 64, 65, 129};
static const int64_t kNK[][2] = {{1, 16}, {8, 32}, {33, 48}, {200, 80}, {257, 896}, {64, 4864}};

/* AUTO always; the others where the device has them (wgmma: sm_90a code
 * on a compute capability 9.0 device; the skinny kernel: M <= 64). */
static int config_fits(int config, int64_t M)
{
    return config == QT_I8GEMM_AUTO || qt_i8gemm_config_available(config, M);
}

static void test_shapes_all_configs(void **state)
{
    (void)state;
    for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++)
        for (size_t mi = 0; mi < sizeof kMs / sizeof kMs[0]; mi++)
            for (size_t s = 0; s < sizeof kNK / sizeof kNK[0]; s++) {
                if (!config_fits(config, kMs[mi])) continue;
                problem p;
                memset(&p, 0, sizeof p);
                p.M = kMs[mi];
                p.N = kNK[s][0];
                p.K = kNK[s][1];
                p.bf16 = (int)((mi + s) & 1);
                p.rs_mode = 1;
                p.with_cs = 1;
                p.with_bias = (s & 1) == 0;
                p.n_out = -1;
                p.config = config;
                check_problem(&p);
            }
}

static void test_exact_integer_sums(void **state)
{
    (void)state;
    /* Codes in [-1, 1], no scales: D must be the integer sum, bit for bit. */
    static const int64_t shapes[][3] = {{1, 37, 4864}, {17, 129, 896}, {129, 75, 4864}, {300, 520, 208}};
    for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            if (!config_fits(config, shapes[s][0])) continue;
            problem p;
            memset(&p, 0, sizeof p);
            p.M = shapes[s][0];
            p.N = shapes[s][1];
            p.K = shapes[s][2];
            p.small_values = 1;
            p.n_out = -1;
            p.config = config;
            check_problem(&p);
        }
}

static void test_large_m(void **state)
{
    (void)state;
    /* M = 8192: many row tiles, the tile-order grouping and the last partial group. */
    problem p;
    memset(&p, 0, sizeof p);
    p.M = 8192;
    p.N = 72;
    p.K = 160;
    p.rs_mode = 1;
    p.with_cs = 1;
    p.with_bias = 1;
    p.n_out = -1;
    for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++) {
        if (!config_fits(config, p.M)) continue;
        p.config = config;
        p.bf16 = config & 1;
        check_problem(&p);
    }
    p.M = 8191;
    p.N = 263;
    p.K = 96;
    p.config = 0;
    check_problem(&p);
}

static void test_strides_scales_alignment(void **state)
{
    (void)state;
    for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++) {
        problem p;
        memset(&p, 0, sizeof p);
        p.M = config == QT_I8GEMM_SKINNY ? 21 : 150;
        if (!config_fits(config, p.M)) continue;
        p.N = 72;
        p.K = 112;
        p.lda = 144;
        p.ldb = 128;
        p.ldd = 80;
        p.n_out = -1;
        p.config = config;
        for (int variant = 0; variant < 4; variant++) {
            p.rs_mode = variant % 3;
            p.with_cs = variant != 1;
            p.with_bias = variant >= 2;
            p.d_offset = variant == 3 ? 1 : 0; /* D only 2-byte aligned: no 16-byte stores */
            p.bf16 = variant & 1;
            check_problem(&p);
        }
    }
}

static void test_outlier_columns(void **state)
{
    (void)state;
    static const int64_t shapes[][3] = {{1, 40, 896}, {16, 33, 256}, {129, 200, 896}, {300, 64, 4864}};
    static const int n_outs[] = {0, 5, 40};
    for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (size_t o = 0; o < 3; o++) {
                if (!config_fits(config, shapes[s][0])) continue;
                problem p;
                memset(&p, 0, sizeof p);
                p.M = shapes[s][0];
                p.N = shapes[s][1];
                p.K = shapes[s][2];
                p.ldx = p.K + 8 * (int64_t)o; /* x rows may be longer than K */
                p.rs_mode = 1;
                p.with_cs = 1;
                p.with_bias = 1;
                p.bf16 = (int)(o & 1);
                p.n_out = n_outs[o];
                p.config = config;
                check_problem(&p);
            }
}

static void test_argument_checks(void **state)
{
    (void)state;
    char msg[256];
    int8_t *d = NULL;
    CK(cudaMalloc((void **)&d, 4096));
    /* K not a multiple of 16, misaligned A, short stride, empty shapes, NULL D,
     * skinny with M > 64: refused with a message, nothing launched. */
    assert_int_equal(qt_i8gemm(d, d, 4, 4, 40, NULL, NULL, 1.0f, NULL, d, 0, NULL, msg, sizeof msg),
                     QTOOL_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "multiples of 16"));
    assert_int_equal(qt_i8gemm(d + 1, d, 4, 4, 32, NULL, NULL, 1.0f, NULL, d, 0, NULL, msg, sizeof msg),
                     QTOOL_ERR_INVALID_ARGUMENT);
    assert_int_equal(qt_i8gemm(d, d, 0, 4, 32, NULL, NULL, 1.0f, NULL, d, 0, NULL, msg, sizeof msg),
                     QTOOL_ERR_INVALID_ARGUMENT);
    assert_int_equal(qt_i8gemm(d, d, 4, 4, 32, NULL, NULL, 1.0f, NULL, NULL, 0, NULL, msg, sizeof msg),
                     QTOOL_ERR_INVALID_ARGUMENT);
    qt_i8gemm_args a;
    memset(&a, 0, sizeof a);
    a.A = d;
    a.B = d;
    a.D = d;
    a.M = 4;
    a.N = 4;
    a.K = 32;
    a.lda = 16;
    assert_int_equal(qt_i8gemm_ex(&a, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
    a.lda = 0;
    a.M = 65;
    a.config = QT_I8GEMM_SKINNY;
    assert_int_equal(qt_i8gemm_ex(&a, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
    a.config = 99;
    assert_int_equal(qt_i8gemm_ex(&a, msg, sizeof msg), QTOOL_ERR_INVALID_ARGUMENT);
    assert_int_equal(qt_i8gemm_ex(NULL, NULL, 0), QTOOL_ERR_INVALID_ARGUMENT);
    CK(cudaDeviceSynchronize());
    CK(cudaGetLastError());
    cudaFree(d);
}

/* ------------------------------------------------------------ --bench */

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static int bench(int64_t only_m, int64_t only_n, int64_t only_k)
{
    static const int64_t shapes[][3] = {
        {1, 896, 4864},   {16, 896, 4864},  {64, 896, 4864},   {128, 896, 4864}, {512, 896, 4864},
        {8192, 896, 4864}, {1, 4864, 896},  {16, 4864, 896},   {64, 4864, 896},  {128, 4864, 896},
        {512, 4864, 896}, {8192, 4864, 896}, {4096, 4096, 4096}, {8192, 8192, 8192}};
    cudaStream_t st;
    if (cudaStreamCreate(&st) != cudaSuccess) return 1;
    struct cudaDeviceProp prop;
    cudaGetDeviceProperties(&prop, 0);
    printf("device: %s (sm_%d%d, %d SMs)\n", prop.name, prop.major, prop.minor, prop.multiProcessorCount);
    printf("qt_i8gemm alone (int8 A, B already on the device; per-row x per-column scales, bias, fp16 out)\n");
    printf("timing: CUDA events, 5 warm-up runs, median of 30\n");
    printf("%-6s %-6s %-6s %-9s %10s %10s\n", "M", "K", "N", "config", "ms", "TOPS");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int64_t M = only_m ? only_m : shapes[s][0], K = only_m ? only_k : shapes[s][1],
                      N = only_m ? only_n : shapes[s][2];
        if (only_m && s > 0) break;
        int8_t *hA = malloc((size_t)(M * K)), *hB = malloc((size_t)(N * K));
        for (int64_t i = 0; i < M * K; i++) hA[i] = (int8_t)rint_in(-127, 127);
        for (int64_t i = 0; i < N * K; i++) hB[i] = (int8_t)rint_in(-127, 127);
        float *hs = malloc((size_t)(M > N ? M : N) * 4);
        for (int64_t i = 0; i < (M > N ? M : N); i++) hs[i] = (float)(0.5 + runif());
        void *A, *B, *D, *rs, *cs;
        if (cudaMalloc(&A, (size_t)(M * K)) || cudaMalloc(&B, (size_t)(N * K)) || cudaMalloc(&D, (size_t)(M * N) * 2) ||
            cudaMalloc(&rs, (size_t)M * 4) || cudaMalloc(&cs, (size_t)N * 4))
            return 1;
        cudaMemcpy(A, hA, (size_t)(M * K), cudaMemcpyHostToDevice);
        cudaMemcpy(B, hB, (size_t)(N * K), cudaMemcpyHostToDevice);
        cudaMemcpy(rs, hs, (size_t)M * 4, cudaMemcpyHostToDevice);
        cudaMemcpy(cs, hs, (size_t)N * 4, cudaMemcpyHostToDevice);
        const int picked = qt_i8gemm_pick_config(M, N, K);
        for (int config = 0; config < QT_I8GEMM_CONFIG_COUNT; config++) {
            if (!config_fits(config, M)) continue;
            qt_i8gemm_args a;
            memset(&a, 0, sizeof a);
            a.A = A;
            a.B = B;
            a.M = M;
            a.N = N;
            a.K = K;
            a.row_scale = rs;
            a.col_scale = cs;
            a.alpha = 1e-4f;
            a.bias = cs;
            a.D = D;
            a.config = config;
            a.stream = st;
            char msg[256];
            float t[30];
            cudaEvent_t e0, e1;
            cudaEventCreate(&e0);
            cudaEventCreate(&e1);
            int rc = 0;
            for (int i = 0; i < 5 && !rc; i++) rc = qt_i8gemm_ex(&a, msg, sizeof msg);
            for (int i = 0; i < 30 && !rc; i++) {
                cudaEventRecord(e0, st);
                rc = qt_i8gemm_ex(&a, msg, sizeof msg);
                cudaEventRecord(e1, st);
                cudaEventSynchronize(e1);
                cudaEventElapsedTime(&t[i], e0, e1);
            }
            cudaEventDestroy(e0);
            cudaEventDestroy(e1);
            if (rc || cudaStreamSynchronize(st) != cudaSuccess) {
                printf("%-6lld %-6lld %-6lld %-9s failed: %s\n", (long long)M, (long long)K, (long long)N,
                       qt_i8gemm_config_name(config), rc ? msg : cudaGetErrorString(cudaGetLastError()));
                continue;
            }
            qsort(t, 30, sizeof t[0], cmp_float);
            const float ms = 0.5f * (t[14] + t[15]);
            char name[32];
            snprintf(name, sizeof name, "%s%s", config ? qt_i8gemm_config_name(config) : "auto=",
                     config ? "" : qt_i8gemm_config_name(picked));
            printf("%-6lld %-6lld %-6lld %-16s %10.4f %10.1f\n", (long long)M, (long long)K, (long long)N, name, ms,
                   2.0 * (double)M * (double)N * (double)K / (ms * 1e-3) / 1e12);
            fflush(stdout);
        }
        cudaFree(A);
        cudaFree(B);
        cudaFree(D);
        cudaFree(rs);
        cudaFree(cs);
        free(hA);
        free(hB);
        free(hs);
    }
    cudaStreamDestroy(st);
    return 0;
}

int main(int argc, char **argv)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    const char *e = getenv("QTOOL_TEST_SEED");
    rng = e ? strtoull(e, NULL, 0) : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    if (!rng) rng = 1;
    printf("test_int8_gemm: seed %llu (set QTOOL_TEST_SEED to repeat)\n", (unsigned long long)rng);
    for (int c = 1; c < QT_I8GEMM_CONFIG_COUNT; c++)
        if (!qt_i8gemm_config_available(c, 1))
            printf("config %s: not on this device, not tested\n", qt_i8gemm_config_name(c));
    if (argc > 1 && !strcmp(argv[1], "--bench")) {
        if (argc == 5) {
            const int64_t m = atoll(argv[2]), n = atoll(argv[3]), k = atoll(argv[4]);
            if (m < 1 || n < 1 || k < 16 || k % 16) return 2;
            return bench(m, n, k);
        }
        return bench(0, 0, 0);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_argument_checks),       cmocka_unit_test(test_exact_integer_sums),
        cmocka_unit_test(test_shapes_all_configs),    cmocka_unit_test(test_strides_scales_alignment),
        cmocka_unit_test(test_outlier_columns),       cmocka_unit_test(test_large_m),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
