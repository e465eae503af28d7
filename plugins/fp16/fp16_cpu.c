/*
 * CPU half of the fp16 baseline: y = x W^T + b in float32 with float32
 * accumulation.
 *
 * W is packed into panels of FP16_NR = 16 output rows stored k-major, so
 * the micro-kernel streams one 64-byte row of a panel per k and
 * broadcasts one x value per row of its register tile. The work is split
 * into tiles of MB rows x NB columns run on the host's threads; inside a
 * tile the k loop is blocked by KC so a panel slice stays in L1 while it
 * is reused across the tile's rows. Kernels for AVX-512 and AVX2+FMA are
 * picked at run time; a portable one covers the rest.
 */
#include <pthread.h>
#include <string.h>

#include "fp16_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FP16_X86 1
#endif

#define KC 256  /* k block: a 16 KB panel slice */
#define MB 96   /* rows per tile (multiple of every MR) */
#define NB_PANELS 4 /* panels per tile: 64 output columns */

static const float zero_row[KC];

/* One micro-kernel call: rows a[0..MR) (pointers already offset to the k
 * block), panel slice b [kc][16], result tile c (ldc) of which the first
 * `mr` rows and `nr` columns are real. `init` (the bias slice or NULL) is
 * added on the first k block; later blocks accumulate into c. */
typedef struct kargs {
    const float *a[12];
    const float *b;
    int64_t kc;
    float *c;
    int64_t ldc;
    int mr, nr;
    const float *init;
    int accumulate;
} kargs;

typedef void (*kernel_fn)(const kargs *ka);

static inline void store_tile_row(const kargs *ka, int i, const float *acc16)
{
    float *c = ka->c + (int64_t)i * ka->ldc;
    if (ka->accumulate) {
        for (int j = 0; j < ka->nr; j++) c[j] += acc16[j];
    } else if (ka->init) {
        for (int j = 0; j < ka->nr; j++) c[j] = acc16[j] + ka->init[j];
    } else {
        for (int j = 0; j < ka->nr; j++) c[j] = acc16[j];
    }
}

/* ----------------------------------------------------------- portable */

#define DEFINE_GENERIC_KERNEL(MR)                                                        \
    static void kern_generic_##MR(const kargs *ka)                                       \
    {                                                                                    \
        float acc[MR][FP16_NR];                                                          \
        memset(acc, 0, sizeof acc);                                                      \
        for (int64_t k = 0; k < ka->kc; k++) {                                           \
            const float *restrict bk = ka->b + k * FP16_NR;                              \
            for (int i = 0; i < MR; i++) {                                               \
                float av = ka->a[i][k];                                                  \
                for (int j = 0; j < FP16_NR; j++) acc[i][j] += av * bk[j];               \
            }                                                                            \
        }                                                                                \
        for (int i = 0; i < ka->mr; i++) store_tile_row(ka, i, acc[i]);                  \
    }
DEFINE_GENERIC_KERNEL(4)
DEFINE_GENERIC_KERNEL(1)

#ifdef FP16_X86
/* ------------------------------------------------------------- AVX-512 */

#define DEFINE_AVX512_KERNEL(MR)                                                         \
    __attribute__((target("avx512f"))) static void kern_avx512_##MR(const kargs *ka)     \
    {                                                                                    \
        __m512 acc[MR];                                                                  \
        for (int i = 0; i < MR; i++) acc[i] = _mm512_setzero_ps();                       \
        const float *b = ka->b;                                                          \
        for (int64_t k = 0; k < ka->kc; k++) {                                           \
            __m512 bv = _mm512_load_ps(b + k * FP16_NR);                                 \
            for (int i = 0; i < MR; i++)                                                 \
                acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(ka->a[i][k]), bv, acc[i]);       \
        }                                                                                \
        __mmask16 m = (__mmask16)((1u << ka->nr) - 1u);                                  \
        __m512 init = ka->init ? _mm512_maskz_loadu_ps(m, ka->init) : _mm512_setzero_ps(); \
        for (int i = 0; i < ka->mr; i++) {                                               \
            float *c = ka->c + (int64_t)i * ka->ldc;                                     \
            __m512 base = ka->accumulate ? _mm512_maskz_loadu_ps(m, c) : init;           \
            _mm512_mask_storeu_ps(c, m, _mm512_add_ps(acc[i], base));                    \
        }                                                                                \
    }
DEFINE_AVX512_KERNEL(12)
DEFINE_AVX512_KERNEL(4)
DEFINE_AVX512_KERNEL(1)

/* ------------------------------------------------------------ AVX2+FMA */

#define DEFINE_AVX2_KERNEL(MR)                                                           \
    __attribute__((target("avx2,fma"))) static void kern_avx2_##MR(const kargs *ka)      \
    {                                                                                    \
        __m256 lo[MR], hi[MR];                                                           \
        for (int i = 0; i < MR; i++) lo[i] = hi[i] = _mm256_setzero_ps();                \
        const float *b = ka->b;                                                          \
        for (int64_t k = 0; k < ka->kc; k++) {                                           \
            __m256 b0 = _mm256_load_ps(b + k * FP16_NR);                                 \
            __m256 b1 = _mm256_load_ps(b + k * FP16_NR + 8);                             \
            for (int i = 0; i < MR; i++) {                                               \
                __m256 av = _mm256_broadcast_ss(ka->a[i] + k);                           \
                lo[i] = _mm256_fmadd_ps(av, b0, lo[i]);                                  \
                hi[i] = _mm256_fmadd_ps(av, b1, hi[i]);                                  \
            }                                                                            \
        }                                                                                \
        for (int i = 0; i < ka->mr; i++) {                                               \
            float tmp[FP16_NR];                                                          \
            _mm256_storeu_ps(tmp, lo[i]);                                                \
            _mm256_storeu_ps(tmp + 8, hi[i]);                                            \
            store_tile_row(ka, i, tmp);                                                  \
        }                                                                                \
    }
DEFINE_AVX2_KERNEL(6)
DEFINE_AVX2_KERNEL(4)
DEFINE_AVX2_KERNEL(1)
#endif

/* The kernels for one ISA: big register tile, a middle one and a single row
 * (so small M does not pay for a full tile of zero rows). */
typedef struct kernel_set {
    int mr_big;
    kernel_fn big, mid, one; /* mid handles 4 rows */
} kernel_set;

static kernel_set pick_kernels(void)
{
#ifdef FP16_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return (kernel_set){12, kern_avx512_12, kern_avx512_4, kern_avx512_1};
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return (kernel_set){6, kern_avx2_6, kern_avx2_4, kern_avx2_1};
#endif
    return (kernel_set){4, kern_generic_4, kern_generic_4, kern_generic_1};
}

static kernel_set ks_cache;
static pthread_once_t kernels_once = PTHREAD_ONCE_INIT;
static void init_kernels(void) { ks_cache = pick_kernels(); }

/* --------------------------------------------------------------- pack */

typedef struct pack_job {
    const qtool_tensor *w;
    float *panels;
    int64_t n, k;
} pack_job;

static void pack_panels(void *arg, int64_t begin, int64_t end)
{
    const pack_job *j = arg;
    for (int64_t pj = begin; pj < end; pj++) {
        float *dst = j->panels + pj * j->k * FP16_NR;
        for (int jj = 0; jj < FP16_NR; jj++) {
            int64_t row = pj * FP16_NR + jj;
            if (row >= j->n) {
                for (int64_t kk = 0; kk < j->k; kk++) dst[kk * FP16_NR + jj] = 0.0f;
                continue;
            }
            const int64_t base = row * j->k;
            for (int64_t kk = 0; kk < j->k; kk++)
                dst[kk * FP16_NR + jj] = fp16_load_elem(j->w->data, j->w->dtype, base + kk);
        }
    }
}

int fp16_cpu_pack(qtool_packed *p, const qtool_tensor *w, const qtool_tensor *b)
{
    const qtool_host_services *h = p->inst->host;
    int64_t n_panels = (p->n + FP16_NR - 1) / FP16_NR;
    if ((uint64_t)n_panels > UINT64_MAX / 64 / (uint64_t)p->k) return QTOOL_ERR_INVALID_ARGUMENT;
    size_t bytes = (size_t)n_panels * (size_t)p->k * FP16_NR * sizeof(float);
    p->panels = fp16_alloc(p, QTOOL_DEVICE_CPU, bytes, QTOOL_MEM_WEIGHTS);
    if (!p->panels) return QTOOL_ERR_OUT_OF_MEMORY;
    if (b) {
        p->bias = fp16_alloc(p, QTOOL_DEVICE_CPU, (size_t)n_panels * FP16_NR * sizeof(float),
                             QTOOL_MEM_WEIGHTS);
        if (!p->bias) return QTOOL_ERR_OUT_OF_MEMORY;
        for (int64_t i = 0; i < n_panels * FP16_NR; i++)
            p->bias[i] = i < p->n ? fp16_load_elem(b->data, b->dtype, i) : 0.0f;
    }
    pack_job job = {w, p->panels, p->n, p->k};
    h->parallel_for(h->ctx, n_panels, 1, pack_panels, &job);
    return QTOOL_OK;
}

void fp16_cpu_unpack(const qtool_packed *p, float *out)
{
    for (int64_t row = 0; row < p->n; row++) {
        const float *src = p->panels + (row / FP16_NR) * p->k * FP16_NR + row % FP16_NR;
        for (int64_t kk = 0; kk < p->k; kk++) out[row * p->k + kk] = src[kk * FP16_NR];
    }
}

void fp16_cpu_free(qtool_packed *p)
{
    int64_t n_panels = (p->n + FP16_NR - 1) / FP16_NR;
    fp16_free(p, QTOOL_DEVICE_CPU, p->panels, (size_t)n_panels * (size_t)p->k * FP16_NR * sizeof(float),
              QTOOL_MEM_WEIGHTS);
    fp16_free(p, QTOOL_DEVICE_CPU, p->bias, (size_t)n_panels * FP16_NR * sizeof(float), QTOOL_MEM_WEIGHTS);
    p->panels = p->bias = NULL;
}

/* ------------------------------------------------------------- matmul */

typedef struct gemm_job {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t m, n_tiles_n;
    kernel_set ks;
} gemm_job;

static void run_tiles(void *arg, int64_t begin, int64_t end)
{
    const gemm_job *g = arg;
    const qtool_packed *p = g->p;
    const int64_t K = p->k, N = p->n;
    const int64_t n_panels = (N + FP16_NR - 1) / FP16_NR;
    for (int64_t t = begin; t < end; t++) {
        int64_t m0 = (t / g->n_tiles_n) * MB, p0 = (t % g->n_tiles_n) * NB_PANELS;
        int64_t m1 = m0 + MB < g->m ? m0 + MB : g->m;
        int64_t p1 = p0 + NB_PANELS < n_panels ? p0 + NB_PANELS : n_panels;
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = K - k0 < KC ? K - k0 : KC;
            for (int64_t pj = p0; pj < p1; pj++) {
                kargs ka;
                ka.b = p->panels + (pj * K + k0) * FP16_NR;
                ka.kc = kc;
                ka.ldc = N;
                ka.nr = (int)(N - pj * FP16_NR < FP16_NR ? N - pj * FP16_NR : FP16_NR);
                ka.init = p->bias ? p->bias + pj * FP16_NR : NULL;
                ka.accumulate = k0 > 0;
                for (int64_t m = m0; m < m1;) {
                    int64_t left = m1 - m;
                    kernel_fn fn;
                    int rows;
                    if (left >= g->ks.mr_big) {
                        fn = g->ks.big;
                        rows = g->ks.mr_big;
                    } else if (left >= 4) {
                        fn = g->ks.mid;
                        rows = 4;
                    } else {
                        fn = g->ks.one;
                        rows = 1;
                    }
                    for (int i = 0; i < rows; i++) ka.a[i] = g->x + (m + i) * K + k0;
                    for (int i = rows; i < 12; i++) ka.a[i] = zero_row;
                    ka.mr = rows;
                    ka.c = g->y + m * N + pj * FP16_NR;
                    fn(&ka);
                    m += rows;
                }
            }
        }
    }
}

/* Rows of a tensor whose last dimension is `last`, or -1 if it does not
 * fit. */
static int64_t rows_of(const qtool_tensor *t, int64_t last)
{
    if (t->ndim < 1 || t->ndim > QTOOL_MAX_DIMS || t->shape[t->ndim - 1] != last) return -1;
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++) {
        if (t->shape[i] < 0) return -1;
        r *= t->shape[i];
    }
    return r;
}

int fp16_cpu_matmul(qtool_packed *p, const qtool_matmul_args *args)
{
    const qtool_host_services *h = p->inst->host;
    if (!args || args->struct_size < offsetof(qtool_matmul_args, y) + sizeof args->y || !args->x ||
        !args->y)
        return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_tensor *x = args->x;
    qtool_tensor *y = args->y;
    if (x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU ||
        y->device != QTOOL_DEVICE_CPU) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "matmul_cpu: x and y must be F32 CPU tensors");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t m = rows_of(x, p->k), my = rows_of(y, p->n);
    if (m < 0 || my != m) {
        h->log(h->ctx, QTOOL_LOG_ERROR, "matmul_cpu: x must be [M, %lld] and y [M, %lld]",
               (long long)p->k, (long long)p->n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (m == 0) return QTOOL_OK;
    if (!x->data || !y->data) return QTOOL_ERR_INVALID_ARGUMENT;

    pthread_once(&kernels_once, init_kernels);
    int64_t n_panels = (p->n + FP16_NR - 1) / FP16_NR;
    gemm_job g = {p, x->data, y->data, m, (n_panels + NB_PANELS - 1) / NB_PANELS, ks_cache};
    int64_t n_tiles = ((m + MB - 1) / MB) * g.n_tiles_n;
    h->parallel_for(h->ctx, n_tiles, 1, run_tiles, &g);
    return QTOOL_OK;
}
