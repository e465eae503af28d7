/* The CUDA model kernels (core/cuda/model_kernels.h) against float64 CPU
 * references computed from the same half-precision inputs, on fresh random
 * data each run (the seed is printed). Outputs are poisoned with NaN before
 * each launch, so an unwritten element fails.
 *
 * Metric everywhere: max |out - ref| / max |ref| over the whole output.
 * Tolerances: elementwise, norms, RoPE, embeddings 2e-3 (fp16) / 1.6e-2
 * (bf16): a couple of roundings of the output type; attention 4e-3 (fp16) /
 * 2.5e-2 (bf16): P is rounded to the activation type before P V, as flash
 * attention does; the float32 head 1e-5.
 *
 * Skipped (77) without a CUDA device. */
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
#include <unistd.h>

#include "cuda/model_kernels.h"
#include "cuda_rt.h"
#include "error.h"

static uint64_t rng_state;
static int cc_major, cc_minor;

static uint64_t next_u64(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double uniform(void) { return (double)(next_u64() >> 11) * 0x1.0p-53; }

static double normal(void)
{
    return sqrt(-2.0 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform());
}

static uint16_t to_h(int dt, float v) { return dt == QTK_BF16 ? qtool_f32_to_bf16(v) : qtool_f32_to_f16(v); }
static float from_h(int dt, uint16_t v) { return dt == QTK_BF16 ? qtool_bf16_to_f32(v) : qtool_f16_to_f32(v); }
static float round_h(int dt, double v) { return from_h(dt, to_h(dt, (float)v)); }

/* A half buffer on the device and its rounded values on the host. */
typedef struct hbuf {
    int dt;
    int64_t n;
    float *host;
    void *dev;
} hbuf;

static void hbuf_make(hbuf *b, int dt, int64_t n, double scale)
{
    b->dt = dt;
    b->n = n;
    b->host = malloc((size_t)n * sizeof(float));
    uint16_t *h = malloc((size_t)n * 2);
    assert_non_null(b->host);
    assert_non_null(h);
    for (int64_t i = 0; i < n; i++) {
        h[i] = to_h(dt, (float)(normal() * scale));
        b->host[i] = from_h(dt, h[i]);
    }
    assert_int_equal(qt_cuda_malloc(&b->dev, (size_t)n * 2 + 16), 0);
    assert_int_equal(qt_cuda_memcpy_h2d(b->dev, h, (size_t)n * 2), 0);
    free(h);
}

/* NaN everywhere: unwritten outputs fail the comparison. */
static void hbuf_poison(hbuf *b, int dt, int64_t n)
{
    b->dt = dt;
    b->n = n;
    b->host = calloc((size_t)n, sizeof(float));
    uint16_t *h = malloc((size_t)n * 2);
    assert_non_null(h);
    for (int64_t i = 0; i < n; i++) h[i] = dt == QTK_BF16 ? 0x7FC0u : 0x7E00u;
    assert_int_equal(qt_cuda_malloc(&b->dev, (size_t)n * 2 + 16), 0);
    assert_int_equal(qt_cuda_memcpy_h2d(b->dev, h, (size_t)n * 2), 0);
    free(h);
}

static void hbuf_fetch(hbuf *b)
{
    uint16_t *h = malloc((size_t)b->n * 2);
    assert_non_null(h);
    assert_int_equal(qt_cuda_device_sync(), 0);
    assert_int_equal(qt_cuda_memcpy_d2h(h, b->dev, (size_t)b->n * 2), 0);
    for (int64_t i = 0; i < b->n; i++) b->host[i] = from_h(b->dt, h[i]);
    free(h);
}

static void hbuf_free(hbuf *b)
{
    free(b->host);
    qt_cuda_free(b->dev);
    memset(b, 0, sizeof *b);
}

static void *dev_alloc(size_t bytes)
{
    void *d = NULL;
    assert_int_equal(qt_cuda_malloc(&d, bytes ? bytes : 4), 0);
    return d;
}

static void *dev_copy(const void *src, size_t bytes)
{
    void *d = NULL;
    assert_int_equal(qt_cuda_malloc(&d, bytes ? bytes : 4), 0);
    if (bytes) assert_int_equal(qt_cuda_memcpy_h2d(d, src, bytes), 0);
    return d;
}

/* max |got - ref| / max |ref| over the elements where mask (if any) is set;
 * NaN gives infinity. */
static double rel_err(const float *got, const double *ref, int64_t n)
{
    double mx = 0, err = 0;
    for (int64_t i = 0; i < n; i++) {
        if (fabs(ref[i]) > mx) mx = fabs(ref[i]);
        double e = fabs((double)got[i] - ref[i]);
        if (!(e <= err)) err = isnan(e) ? INFINITY : e;
    }
    return err / (mx > 1e-30 ? mx : 1e-30);
}

#define EXPECT_REL(got, ref, n, tol, ...)                                                 \
    do {                                                                                  \
        double e_ = rel_err((got), (ref), (n));                                           \
        char what_[256];                                                                  \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                       \
        if (!(e_ <= (tol))) fail_msg("%s: relative error %.3g > %g", what_, e_, (tol)); \
        print_message("  %-60s %.2e\n", what_, e_);                                       \
    } while (0)

static const char *dt_name(int dt) { return dt == QTK_BF16 ? "bf16" : "fp16"; }
static double tol_ew(int dt) { return dt == QTK_BF16 ? 1.6e-2 : 2e-3; }

/* ---------------------------------------------------------- attention */

typedef struct attn_case {
    int dt, D, nh, nkv;
    int64_t wl, wr;
    int fused; /* q, k, v as column slices of one matrix */
    int simt;  /* call the float32 kernel directly */
    const int64_t *lens;
    int n;
    int rope; /* q and k arrive unrotated: 1 RoPE, 2 RoPE with cos/sin scaled by 1.25 */
} attn_case;

static void run_attention(const attn_case *c)
{
    int64_t T = 0;
    for (int i = 0; i < c->n; i++) T += c->lens[i];
    int64_t QD = (int64_t)c->nh * c->D, KD = (int64_t)c->nkv * c->D;
    int64_t *off = malloc((size_t)(c->n + 1) * 8);
    int32_t *seq = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4);
    int64_t n_tiles = 0;
    off[0] = 0;
    for (int i = 0; i < c->n; i++) {
        off[i + 1] = off[i] + c->lens[i];
        n_tiles += (c->lens[i] + QTK_ATTN_TILE - 1) / QTK_ATTN_TILE;
    }
    int32_t *tiles = malloc((size_t)n_tiles * 8);
    for (int i = 0, k = 0; i < c->n; i++) {
        for (int64_t j = 0; j < c->lens[i]; j++) {
            seq[off[i] + j] = i;
            pos[off[i] + j] = (int32_t)j;
        }
        for (int64_t q0 = 0; q0 < c->lens[i]; q0 += QTK_ATTN_TILE, k++) {
            tiles[2 * k] = i;
            tiles[2 * k + 1] = (int32_t)q0;
        }
    }
    hbuf qb, kb, vb, ob;
    int64_t ldq, ldk, ldv;
    const float *qh, *kh, *vh;
    void *qd, *kd;
    const void *vd;
    if (c->fused) {
        int64_t W = QD + 2 * KD;
        hbuf_make(&qb, c->dt, T * W, 1.0);
        ldq = ldk = ldv = W;
        qh = qb.host;
        kh = qb.host + QD;
        vh = qb.host + QD + KD;
        qd = qb.dev;
        kd = (uint16_t *)qb.dev + QD;
        vd = (const uint16_t *)qb.dev + QD + KD;
    } else {
        hbuf_make(&qb, c->dt, T * QD, 1.0);
        hbuf_make(&kb, c->dt, T * KD, 1.0);
        hbuf_make(&vb, c->dt, T * KD, 1.0);
        ldq = QD;
        ldk = ldv = KD;
        qh = qb.host;
        kh = kb.host;
        vh = vb.host;
        qd = qb.dev;
        kd = kb.dev;
        vd = vb.dev;
    }
    hbuf_poison(&ob, c->dt, T * QD);
    int64_t *d_off = dev_copy(off, (size_t)(c->n + 1) * 8);
    int32_t *d_seq = dev_copy(seq, (size_t)T * 4), *d_pos = dev_copy(pos, (size_t)T * 4);
    int32_t *d_tiles = dev_copy(tiles, (size_t)n_tiles * 8);
    float scale = (float)(1.0 / sqrt((double)c->D));
    /* RoPE frequencies (theta 10000) and the rotated q and k the reference
     * uses, in double. */
    const int half = c->D / 2;
    const float rope_scaling = c->rope == 2 ? 1.25f : 1.0f;
    float *inv = malloc((size_t)(half > 0 ? half : 1) * 4);
    for (int i = 0; i < half; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / c->D));
    float *d_inv = c->rope ? dev_copy(inv, (size_t)half * 4) : NULL, *d_rope = NULL;
    if (c->rope) {
        int64_t n_pos = 0;
        for (int i = 0; i < c->n; i++)
            if (c->lens[i] > n_pos) n_pos = c->lens[i];
        d_rope = dev_alloc((size_t)(n_pos * half) * 8);
        assert_int_equal(qtk_rope_table(d_inv, half, rope_scaling, n_pos, d_rope, NULL), 0);
    }
    double *qr = malloc((size_t)(T * QD) * sizeof(double)), *kr = malloc((size_t)(T * KD) * sizeof(double));
    for (int64_t t = 0; t < T; t++) {
        for (int64_t e = 0; e < QD; e++) qr[t * QD + e] = qh[t * ldq + e];
        for (int64_t e = 0; e < KD; e++) kr[t * KD + e] = kh[t * ldk + e];
        if (!c->rope) continue;
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[t] * inv[i];
            double cs = cos((double)ang) * rope_scaling, sn = sin((double)ang) * rope_scaling;
            for (int h = 0; h < c->nh + c->nkv; h++) {
                double *x = h < c->nh ? qr + t * QD + h * c->D : kr + t * KD + (h - c->nh) * c->D;
                double x1 = x[i], x2 = x[i + half];
                x[i] = x1 * cs - x2 * sn;
                x[i + half] = x2 * cs + x1 * sn;
            }
        }
    }
    int rc;
    if (c->simt)
        rc = qtk_attention_simt(c->dt, qd, ldq, kd, ldk, vd, ldv, ob.dev, QD, d_off, d_seq, d_pos, T, c->nh, c->nkv,
                                c->D, scale, c->wl, c->wr, NULL);
    else
        rc = qtk_attention(c->dt, qd, ldq, kd, ldk, vd, ldv, ob.dev, QD, d_off, d_seq, d_pos, d_tiles,
                           n_tiles, T, c->nh, c->nkv, c->D, scale, c->wl, c->wr, d_rope, cc_major, NULL);
    assert_int_equal(rc, 0);
    assert_int_equal(qt_cuda_check("attention"), 0);
    hbuf_fetch(&ob);

    double *ref = calloc((size_t)(T * QD), sizeof(double));
    int64_t max_len = 0;
    for (int i = 0; i < c->n; i++)
        if (c->lens[i] > max_len) max_len = c->lens[i];
    double *p = malloc((size_t)max_len * sizeof(double));
    int group = c->nh / c->nkv;
    for (int64_t t = 0; t < T; t++) {
        int64_t b = off[seq[t]], len = off[seq[t] + 1] - b, i = pos[t];
        int64_t lo = c->wl < 0 ? 0 : i - c->wl, hi = c->wr < 0 ? len - 1 : i + c->wr;
        if (lo < 0) lo = 0;
        if (hi > len - 1) hi = len - 1;
        for (int h = 0; h < c->nh; h++) {
            int kvh = h / group;
            const double *qv = qr + t * QD + h * c->D;
            double mx = -INFINITY, sum = 0;
            for (int64_t j = lo; j <= hi; j++) {
                const double *kv = kr + (b + j) * KD + kvh * c->D;
                double dot = 0;
                for (int d = 0; d < c->D; d++) dot += qv[d] * kv[d];
                p[j - lo] = dot * scale;
                if (p[j - lo] > mx) mx = p[j - lo];
            }
            for (int64_t j = lo; j <= hi; j++) sum += (p[j - lo] = exp(p[j - lo] - mx));
            double *o = ref + t * QD + h * c->D;
            for (int64_t j = lo; j <= hi; j++) {
                const float *vv = vh + (b + j) * ldv + kvh * c->D;
                for (int d = 0; d < c->D; d++) o[d] += p[j - lo] / sum * vv[d];
            }
        }
    }
    double tol = c->dt == QTK_BF16 ? 2.5e-2 : 4e-3;
    EXPECT_REL(ob.host, ref, T * QD, tol, "attention %s%s D=%d heads %d/%d window %lld/%lld T=%lld%s%s",
               dt_name(c->dt), c->simt || !qtk_attention_uses_mma(c->dt, c->D, cc_major) ? " f32" : " mma", c->D, c->nh,
               c->nkv, (long long)c->wl, (long long)c->wr, (long long)T, c->fused ? " fused" : "",
               c->rope ? " rope" : "");
    free(ref);
    free(qr);
    free(kr);
    free(inv);
    qt_cuda_free(d_inv);
    qt_cuda_free(d_rope);
    free(p);
    hbuf_free(&qb);
    if (!c->fused) {
        hbuf_free(&kb);
        hbuf_free(&vb);
    }
    hbuf_free(&ob);
    qt_cuda_free(d_off);
    qt_cuda_free(d_seq);
    qt_cuda_free(d_pos);
    qt_cuda_free(d_tiles);
    free(off);
    free(seq);
    free(pos);
    free(tiles);
}

static void test_attention(void **state)
{
    (void)state;
    static const int64_t enc[] = {256, 1, 77, 512, 130};
    static const int64_t dec[] = {256, 3, 65, 200, 64};
    static const int64_t small[] = {1, 2, 40, 3, 17, 9};
    static const int64_t big[] = {300, 64, 129};
    for (int dt = 0; dt < 2; dt++) {
        const attn_case cases[] = {
            /* ModernBERT: global and local (|i - j| <= 64) layers on fused qkv. */
            {dt, 64, 12, 12, -1, -1, 1, 0, enc, 5, 0},
            {dt, 64, 12, 12, 64, 64, 1, 0, enc, 5, 0},
            /* Qwen2: GQA 14/2, causal, and a causal sliding window of 37. */
            {dt, 64, 14, 2, -1, 0, 0, 0, dec, 5, 0},
            {dt, 64, 14, 2, 36, 0, 0, 0, dec, 5, 0},
            /* Tiny shapes of the reference models; MQA; head_dim 24 and 16. */
            {dt, 24, 4, 1, -1, 0, 0, 0, small, 6, 0},
            {dt, 16, 4, 4, 4, 4, 1, 0, small, 6, 0},
            {dt, 16, 4, 2, 5, 0, 0, 0, small, 6, 0},
            /* head_dim 20: not a multiple of 8 (element-wise loads). */
            {dt, 20, 3, 3, -1, -1, 0, 0, big, 3, 0},
            /* head_dim 128 and 80 (padded to 128), GQA. */
            {dt, 128, 8, 4, -1, 0, 0, 0, big, 3, 0},
            {dt, 80, 2, 2, 100, 3, 1, 0, big, 3, 0},
            /* The float32 kernel: directly, and for head_dim > 128. */
            {dt, 64, 14, 2, -1, 0, 0, 1, dec, 5, 0},
            {dt, 160, 2, 1, 7, 7, 0, 0, big, 3, 0},
            /* q and k unrotated: RoPE of q in the tensor-core kernel (head_dim
             * 64 with two stages, 128 with one, 80 padded), in place for
             * head_dim 24 (not a multiple of 16) and 160 (float32 kernel). */
            {dt, 64, 14, 2, -1, 0, 1, 0, dec, 5, 1},
            {dt, 64, 12, 12, 64, 64, 1, 0, enc, 5, 2},
            {dt, 128, 8, 4, -1, 0, 0, 0, big, 3, 1},
            {dt, 80, 2, 2, 100, 3, 1, 0, big, 3, 2},
            {dt, 24, 4, 1, -1, 0, 0, 0, small, 6, 1},
            {dt, 160, 2, 1, 7, 7, 0, 0, big, 3, 1},
        };
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_attention(&cases[i]);
    }
}

/* -------------------------------------------------------------- norms */

static void run_norm(int dt, int kind, int with_bias, int with_res, int64_t rows, int64_t cols, int in_place)
{
    int64_t ld = cols + (cols % 8 == 0 ? 8 : 3); /* rows inside a wider matrix */
    hbuf x, r, o;
    hbuf_make(&x, dt, rows * ld, 2.0);
    hbuf_make(&r, dt, rows * ld, 1.0);
    if (in_place) o = x;
    else hbuf_poison(&o, dt, rows * ld);
    float *w = malloc((size_t)cols * 4), *b = malloc((size_t)cols * 4);
    for (int64_t c = 0; c < cols; c++) {
        w[c] = (float)(1.0 + 0.3 * normal());
        b[c] = (float)(0.2 * normal());
    }
    float *dw = dev_copy(w, (size_t)cols * 4), *db = dev_copy(b, (size_t)cols * 4);
    float eps = 1e-5f;
    assert_int_equal(qtk_norm(dt, kind, x.dev, ld, with_res ? r.dev : NULL, ld, o.dev, ld, rows, cols, dw,
                              with_bias ? db : NULL, eps, NULL),
                     0);
    double *ref = calloc((size_t)(rows * cols), sizeof(double)), *xref = calloc((size_t)(rows * cols), sizeof(double));
    float *got = malloc((size_t)(rows * cols) * 4), *xgot = malloc((size_t)(rows * cols) * 4);
    for (int64_t i = 0; i < rows; i++) {
        double *xr = xref + i * cols;
        for (int64_t c = 0; c < cols; c++) {
            double v = x.host[i * ld + c];
            if (with_res) v = round_h(dt, v + r.host[i * ld + c]);
            xr[c] = v;
        }
        double mean = 0, var = 0, ss = 0;
        for (int64_t c = 0; c < cols; c++) {
            mean += xr[c];
            ss += xr[c] * xr[c];
        }
        mean /= (double)cols;
        for (int64_t c = 0; c < cols; c++) var += (xr[c] - mean) * (xr[c] - mean);
        var /= (double)cols;
        for (int64_t c = 0; c < cols; c++) {
            double y;
            if (kind == 1) y = (xr[c] - mean) / sqrt(var + eps) * w[c] + (with_bias ? b[c] : 0.0);
            else if (kind == 2) y = w[c] * (xr[c] / sqrt(ss / (double)cols + eps));
            else y = xr[c];
            ref[i * cols + c] = y;
        }
    }
    hbuf_fetch(&o);
    if (!in_place) hbuf_fetch(&x);
    for (int64_t i = 0; i < rows; i++)
        for (int64_t c = 0; c < cols; c++) {
            got[i * cols + c] = o.host[i * ld + c];
            xgot[i * cols + c] = x.host[i * ld + c];
        }
    EXPECT_REL(got, ref, rows * cols, tol_ew(dt), "norm %s kind %d%s%s%s %lldx%lld", dt_name(dt), kind,
               with_bias ? " bias" : "", with_res ? " +residual" : "", in_place ? " in place" : "", (long long)rows,
               (long long)cols);
    if (with_res && !in_place)
        EXPECT_REL(xgot, xref, rows * cols, 1e-6, "norm %s residual sum written back", dt_name(dt));
    free(ref);
    free(xref);
    free(got);
    free(xgot);
    free(w);
    free(b);
    qt_cuda_free(dw);
    qt_cuda_free(db);
    hbuf_free(&x);
    hbuf_free(&r);
    if (!in_place) hbuf_free(&o);
}

static void test_norms(void **state)
{
    (void)state;
    for (int dt = 0; dt < 2; dt++) {
        static const int64_t colss[] = {768, 100, 64};
        for (int ci = 0; ci < 3; ci++) {
            for (int kind = 0; kind < 3; kind++) {
                run_norm(dt, kind, kind == 1, 0, 37, colss[ci], 0);
                run_norm(dt, kind, 0, 1, 37, colss[ci], 0);
            }
            run_norm(dt, 1, 1, 1, 5, colss[ci], 1);
            run_norm(dt, 2, 0, 1, 5, colss[ci], 1);
        }
        /* More rows than the card holds warps at once: each warp of the
         * register kernel takes several rows (896 columns: 3.5 pieces a
         * lane), in place and not. */
        run_norm(dt, 2, 0, 1, 6000, 896, 0);
        run_norm(dt, 2, 0, 1, 6000, 896, 1);
        run_norm(dt, 1, 1, 0, 6000, 896, 0);
    }
}

/* ------------------------------------------------- elementwise and RoPE */

static double act_ref(int act, double x)
{
    switch (act) {
    case 0: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    case 1: return 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x)));
    case 2: return x / (1.0 + exp(-1.702 * x));
    case 3: return x > 0 ? x : 0;
    case 4: return x / (1.0 + exp(-x));
    case 5: return tanh(x);
    case 6: return 1.0 / (1.0 + exp(-x));
    default: return x;
    }
}

static void test_elementwise(void **state)
{
    (void)state;
    for (int dt = 0; dt < 2; dt++) {
        static const int64_t colss[] = {1000, 37};
        for (int ci = 0; ci < 2; ci++) {
            int64_t rows = 9, cols = colss[ci], ld = 2 * cols; /* a and b: halves of one matrix */
            for (int act = 0; act < 8; act++) {
                hbuf ab, o;
                hbuf_make(&ab, dt, rows * ld, 2.5);
                hbuf_poison(&o, dt, rows * cols);
                assert_int_equal(qtk_glu(dt, act, ab.dev, ld, (uint16_t *)ab.dev + cols, ld, o.dev, cols, rows, cols,
                                         NULL),
                                 0);
                hbuf_fetch(&o);
                double *ref = malloc((size_t)(rows * cols) * sizeof(double));
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++)
                        ref[r * cols + c] = act_ref(act, ab.host[r * ld + c]) * ab.host[r * ld + cols + c];
                EXPECT_REL(o.host, ref, rows * cols, tol_ew(dt), "glu %s act %d cols %lld", dt_name(dt), act,
                           (long long)cols);
                /* act in place on the first half */
                assert_int_equal(qtk_act(dt, act, ab.dev, ld, rows, cols, NULL), 0);
                float *first = malloc((size_t)(rows * cols) * 4);
                float *orig = malloc((size_t)(rows * ld) * 4);
                memcpy(orig, ab.host, (size_t)(rows * ld) * 4);
                hbuf_fetch(&ab);
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) {
                        first[r * cols + c] = ab.host[r * ld + c];
                        ref[r * cols + c] = act_ref(act, orig[r * ld + c]);
                        /* the second half is untouched */
                        assert_true(ab.host[r * ld + cols + c] == orig[r * ld + cols + c]);
                    }
                EXPECT_REL(first, ref, rows * cols, tol_ew(dt), "act %s %d cols %lld", dt_name(dt), act,
                           (long long)cols);
                free(first);
                free(orig);
                free(ref);
                hbuf_free(&ab);
                hbuf_free(&o);
            }
            /* add and per-column scale */
            hbuf x, y, o;
            hbuf_make(&x, dt, rows * cols, 1.0);
            hbuf_make(&y, dt, rows * cols, 1.0);
            hbuf_poison(&o, dt, rows * cols);
            double *ref = malloc((size_t)(rows * cols) * sizeof(double));
            float *s = malloc((size_t)cols * 4);
            for (int64_t c = 0; c < cols; c++) s[c] = (float)(0.5 + uniform() * 4.0);
            float *ds = dev_copy(s, (size_t)cols * 4);
            assert_int_equal(qtk_scale_cols(dt, x.dev, cols, ds, o.dev, cols, rows, cols, NULL), 0);
            hbuf_fetch(&o);
            for (int64_t i = 0; i < rows * cols; i++) ref[i] = x.host[i] / s[i % cols];
            EXPECT_REL(o.host, ref, rows * cols, tol_ew(dt), "scale_cols %s cols %lld", dt_name(dt), (long long)cols);
            for (int64_t i = 0; i < rows * cols; i++) ref[i] = (double)x.host[i] + y.host[i];
            assert_int_equal(qtk_add(dt, x.dev, cols, y.dev, cols, rows, cols, NULL), 0);
            hbuf_fetch(&x);
            EXPECT_REL(x.host, ref, rows * cols, tol_ew(dt), "add %s cols %lld", dt_name(dt), (long long)cols);
            free(ref);
            free(s);
            qt_cuda_free(ds);
            hbuf_free(&x);
            hbuf_free(&y);
            hbuf_free(&o);
        }
    }
}

static void test_rope(void **state)
{
    (void)state;
    for (int dt = 0; dt < 2; dt++) {
        static const int dims[] = {64, 24};
        for (int di = 0; di < 2; di++) {
            int D = dims[di], nh = 3, half = D / 2;
            int64_t rows = 50, ld = nh * D + 16;
            hbuf x;
            hbuf_make(&x, dt, rows * ld, 1.0);
            float *orig = malloc((size_t)(rows * ld) * 4);
            memcpy(orig, x.host, (size_t)(rows * ld) * 4);
            int32_t *pos = malloc((size_t)rows * 4);
            for (int64_t r = 0; r < rows; r++) pos[r] = r < 3 ? (int32_t)r : (int32_t)(next_u64() % 8000);
            float *inv = malloc((size_t)half * 4);
            for (int i = 0; i < half; i++) inv[i] = (float)(1.0 / pow(10000.0, 2.0 * i / D));
            int32_t *dpos = dev_copy(pos, (size_t)rows * 4);
            float *dinv = dev_copy(inv, (size_t)half * 4);
            float scaling = di ? 1.25f : 1.0f;
            int64_t n_pos = 0;
            for (int64_t r = 0; r < rows; r++)
                if (pos[r] >= n_pos) n_pos = pos[r] + 1;
            float *dtab = dev_alloc((size_t)(n_pos * half) * 8);
            assert_int_equal(qtk_rope_table(dinv, half, scaling, n_pos, dtab, NULL), 0);
            assert_int_equal(qtk_rope(dt, x.dev, ld, dpos, rows, nh, D, dtab, NULL), 0);
            hbuf_fetch(&x);
            double *ref = malloc((size_t)(rows * ld) * sizeof(double));
            for (int64_t r = 0; r < rows; r++) {
                for (int64_t c = 0; c < ld; c++) ref[r * ld + c] = orig[r * ld + c];
                for (int h = 0; h < nh; h++)
                    for (int i = 0; i < half; i++) {
                        float ang = (float)pos[r] * inv[i];
                        double cs = cos((double)ang) * scaling, sn = sin((double)ang) * scaling;
                        double x1 = orig[r * ld + h * D + i], x2 = orig[r * ld + h * D + i + half];
                        ref[r * ld + h * D + i] = x1 * cs - x2 * sn;
                        ref[r * ld + h * D + i + half] = x2 * cs + x1 * sn;
                    }
            }
            EXPECT_REL(x.host, ref, rows * ld, tol_ew(dt), "rope %s head_dim %d", dt_name(dt), D);
            free(ref);
            free(orig);
            free(pos);
            free(inv);
            qt_cuda_free(dpos);
            qt_cuda_free(dinv);
            qt_cuda_free(dtab);
            hbuf_free(&x);
        }
    }
}

/* ---------------------------------------- embedding, pooling and head */

static void test_embed_pool_head(void **state)
{
    (void)state;
    for (int dt = 0; dt < 2; dt++) {
        static const int64_t Hs[] = {64, 20};
        for (int hi = 0; hi < 2; hi++) {
            int64_t V = 50, P = 40, H = Hs[hi], T = 30;
            hbuf tok, out;
            hbuf_make(&tok, dt, V * H, 1.0);
            hbuf_poison(&out, dt, T * H);
            float *type0 = malloc((size_t)H * 4), *pt = malloc((size_t)(P * H) * 4);
            for (int64_t i = 0; i < H; i++) type0[i] = (float)normal();
            for (int64_t i = 0; i < P * H; i++) pt[i] = (float)normal();
            int32_t *ids = malloc((size_t)T * 4), *pos = malloc((size_t)T * 4);
            for (int64_t r = 0; r < T; r++) {
                ids[r] = (int32_t)(next_u64() % V);
                pos[r] = (int32_t)(next_u64() % P);
            }
            float *dtype0 = dev_copy(type0, (size_t)H * 4), *dpt = dev_copy(pt, (size_t)(P * H) * 4);
            int32_t *dids = dev_copy(ids, (size_t)T * 4), *dpos = dev_copy(pos, (size_t)T * 4);
            double *ref = malloc((size_t)(T * H) * sizeof(double));
            for (int with = 0; with < 2; with++) {
                assert_int_equal(qtk_embed(dt, tok.dev, with ? dtype0 : NULL, with ? dpt : NULL, dids, dpos, T, H,
                                           out.dev, H, NULL),
                                 0);
                hbuf_fetch(&out);
                for (int64_t r = 0; r < T; r++)
                    for (int64_t c = 0; c < H; c++)
                        ref[r * H + c] = tok.host[ids[r] * H + c] + (with ? (double)type0[c] + pt[pos[r] * H + c] : 0);
                EXPECT_REL(out.host, ref, T * H, tol_ew(dt), "embed %s H=%lld%s", dt_name(dt), (long long)H,
                           with ? " +type +position" : "");
            }
            /* Pooling of 3 sequences of 10 rows: mean, and given rows. */
            int64_t off[4] = {0, 10, 11, 30}, rows[3] = {0, 10, 29};
            int64_t *doff = dev_copy(off, sizeof off), *drows = dev_copy(rows, sizeof rows);
            float *dpool = NULL, pooled[3 * 64];
            double pref[3 * 64];
            assert_int_equal(qt_cuda_malloc((void **)&dpool, sizeof pooled), 0);
            for (int mode = 0; mode < 2; mode++) {
                assert_int_equal(qtk_pool(dt, mode, out.dev, H, drows, doff, 3, H, dpool, NULL), 0);
                assert_int_equal(qt_cuda_device_sync(), 0);
                assert_int_equal(qt_cuda_memcpy_d2h(pooled, dpool, (size_t)(3 * H) * 4), 0);
                for (int s = 0; s < 3; s++)
                    for (int64_t c = 0; c < H; c++) {
                        double acc = 0;
                        if (mode == 1) {
                            for (int64_t r = off[s]; r < off[s + 1]; r++) acc += out.host[r * H + c];
                            acc /= (double)(off[s + 1] - off[s]);
                        } else {
                            acc = out.host[rows[s] * H + c];
                        }
                        pref[s * H + c] = acc;
                    }
                EXPECT_REL(pooled, pref, 3 * H, 1e-5, "pool %s mode %d H=%lld", dt_name(dt), mode, (long long)H);
            }
            /* The head: dense (float64 accumulation), act + LayerNorm, dense. */
            int64_t O = 7;
            float *w1 = malloc((size_t)(H * H) * 4), *b1 = malloc((size_t)H * 4), *w2 = malloc((size_t)(O * H) * 4);
            float *nw = malloc((size_t)H * 4), *nb = malloc((size_t)H * 4);
            for (int64_t i = 0; i < H * H; i++) w1[i] = (float)(normal() / sqrt((double)H));
            for (int64_t i = 0; i < O * H; i++) w2[i] = (float)normal();
            for (int64_t i = 0; i < H; i++) {
                b1[i] = (float)normal();
                nw[i] = (float)(1 + 0.2 * normal());
                nb[i] = (float)(0.1 * normal());
            }
            float *dw1 = dev_copy(w1, (size_t)(H * H) * 4), *db1 = dev_copy(b1, (size_t)H * 4);
            float *dw2 = dev_copy(w2, (size_t)(O * H) * 4), *dnw = dev_copy(nw, (size_t)H * 4),
                  *dnb = dev_copy(nb, (size_t)H * 4);
            float *dh = NULL, *dl = NULL, logits[3 * 7];
            assert_int_equal(qt_cuda_malloc((void **)&dh, (size_t)(3 * H) * 4), 0);
            assert_int_equal(qt_cuda_malloc((void **)&dl, sizeof logits), 0);
            assert_int_equal(qtk_dense_f32(dpool, dw1, db1, dh, 3, H, H, NULL), 0);
            assert_int_equal(qtk_head_act_norm(dh, 3, H, 0, 1, dnw, dnb, 1e-5f, NULL), 0);
            assert_int_equal(qtk_dense_f32(dh, dw2, NULL, dl, 3, H, O, NULL), 0);
            assert_int_equal(qt_cuda_device_sync(), 0);
            assert_int_equal(qt_cuda_memcpy_d2h(logits, dl, sizeof logits), 0);
            double lref[3 * 7], a[64];
            for (int s = 0; s < 3; s++) {
                double mean = 0, var = 0;
                for (int64_t o = 0; o < H; o++) {
                    double acc = b1[o];
                    for (int64_t k = 0; k < H; k++) acc += (double)w1[o * H + k] * pooled[s * H + k];
                    a[o] = act_ref(0, (float)acc);
                    mean += a[o];
                }
                mean /= (double)H;
                for (int64_t o = 0; o < H; o++) var += (a[o] - mean) * (a[o] - mean);
                var /= (double)H;
                for (int64_t o = 0; o < H; o++) a[o] = (a[o] - mean) / sqrt(var + 1e-5) * nw[o] + nb[o];
                for (int64_t o = 0; o < O; o++) {
                    double acc = 0;
                    for (int64_t k = 0; k < H; k++) acc += (double)w2[o * H + k] * a[k];
                    lref[s * O + o] = acc;
                }
            }
            EXPECT_REL(logits, lref, 3 * O, 1e-5, "head %s H=%lld", dt_name(dt), (long long)H);
            free(w1);
            free(b1);
            free(w2);
            free(nw);
            free(nb);
            qt_cuda_free(dw1);
            qt_cuda_free(db1);
            qt_cuda_free(dw2);
            qt_cuda_free(dnw);
            qt_cuda_free(dnb);
            qt_cuda_free(dh);
            qt_cuda_free(dl);
            qt_cuda_free(dpool);
            qt_cuda_free(doff);
            qt_cuda_free(drows);
            free(ref);
            free(type0);
            free(pt);
            free(ids);
            free(pos);
            qt_cuda_free(dtype0);
            qt_cuda_free(dpt);
            qt_cuda_free(dids);
            qt_cuda_free(dpos);
            hbuf_free(&tok);
            hbuf_free(&out);
        }
    }
}

int main(void)
{
    char why[256] = "";
    if (qt_cuda_device_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 77;
    }
    if (qt_cuda_set_device(0) != 0 || qtk_device_cc(&cc_major, &cc_minor) != 0) {
        fprintf(stderr, "cannot use CUDA device 0: %s\n", qt_last_error());
        return 1;
    }
    const char *seed = getenv("QTOOL_TEST_SEED");
    rng_state = seed ? strtoull(seed, NULL, 0) : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    printf("seed %llu (QTOOL_TEST_SEED), compute capability %d.%d\n", (unsigned long long)rng_state, cc_major,
           cc_minor);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_attention), cmocka_unit_test(test_norms),          cmocka_unit_test(test_elementwise),
        cmocka_unit_test(test_rope),      cmocka_unit_test(test_embed_pool_head),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
