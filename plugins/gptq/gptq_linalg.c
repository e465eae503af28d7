#include "gptq_linalg.h"

#include <math.h>
#include <string.h>

#include "../awq/int4g/int4g_dense.h"

#define LA_BLOCK 64   /* panel width of the factorisations */
#define LA_TILE 64    /* tile of the trailing updates */
#define SYRK_ROWS 256 /* input rows transposed at a time */

static void run(const int4g_ctx *c, int64_t n, qtool_parallel_fn fn, void *arg)
{
    const qtool_host_services *h = c->host;
    if (h && h->parallel_for && n > 1)
        h->parallel_for(h->ctx, n, 1, fn, arg);
    else
        fn(arg, 0, n);
}

/* Tile pairs (a, b) with a >= b among nt tiles, enumerated row by row. */
static void pair_of(int64_t idx, int64_t *a, int64_t *b)
{
    int64_t r = (int64_t)((sqrt(8.0 * (double)idx + 1.0) - 1.0) / 2.0);
    while (r * (r + 1) / 2 > idx) r--;
    while ((r + 1) * (r + 2) / 2 <= idx) r++;
    *a = r;
    *b = idx - r * (r + 1) / 2;
}

/* ------------------------------------------------------------ X^T X */

typedef struct syrk_job {
    double *H;
    const double *XT; /* [K, T] */
    int64_t K, T, nt;
    double alpha;
} syrk_job;

static void syrk_pairs(void *arg, int64_t p0, int64_t p1)
{
    syrk_job *j = arg;
    for (int64_t p = p0; p < p1; p++) {
        int64_t a, b;
        pair_of(p, &a, &b); /* b <= a: tile row b, tile column a (upper) */
        int64_t i0 = b * LA_TILE, j0 = a * LA_TILE;
        int64_t mi = j->K - i0 < LA_TILE ? j->K - i0 : LA_TILE, nj = j->K - j0 < LA_TILE ? j->K - j0 : LA_TILE;
        int4g_gemm_nt_f64(mi, nj, j->T, j->alpha, j->XT + i0 * j->T, j->T, j->XT + j0 * j->T, j->T,
                          j->H + i0 * j->K + j0, j->K);
    }
}

int gptq_syrk_upper(const int4g_ctx *c, double *H, int64_t K, const float *x, int64_t T, double alpha)
{
    int64_t rows = T < SYRK_ROWS ? T : SYRK_ROWS;
    double *XT = int4g_tmp_alloc(c, (size_t)(K * rows) * sizeof(double));
    if (!XT) return QTOOL_ERR_OUT_OF_MEMORY;
    int64_t nt = (K + LA_TILE - 1) / LA_TILE;
    for (int64_t t0 = 0; t0 < T; t0 += rows) {
        int64_t tr = T - t0 < rows ? T - t0 : rows;
        for (int64_t t = 0; t < tr; t++)
            for (int64_t k = 0; k < K; k++) XT[k * tr + t] = x[(t0 + t) * K + k];
        syrk_job job = {H, XT, K, tr, nt, alpha};
        run(c, nt * (nt + 1) / 2, syrk_pairs, &job);
    }
    int4g_tmp_free(c, XT);
    /* Diagonal tiles computed their lower half too: clear it so the
     * stored matrix stays upper triangular. */
    for (int64_t i = 0; i < K; i++) {
        int64_t t0 = (i / LA_TILE) * LA_TILE;
        for (int64_t j = t0; j < i; j++) H[i * K + j] = 0;
    }
    return QTOOL_OK;
}

/* ------------------------------------------------------------ Cholesky */

typedef struct chol_job {
    double *A;
    int64_t K, kb, b, r0; /* panel columns [kb, kb+b); trailing rows start at r0 */
    int64_t nt;
} chol_job;

/* Panel rows i >= r0: A[i, kb:kb+b] = A[i, kb:kb+b] L_d^-T. */
static void chol_panel(void *arg, int64_t i0, int64_t i1)
{
    chol_job *j = arg;
    double *A = j->A;
    const int64_t K = j->K, kb = j->kb;
    for (int64_t i = j->r0 + i0; i < j->r0 + i1; i++) {
        double *ai = A + i * K;
        for (int64_t c = kb; c < kb + j->b; c++) {
            const double *ac = A + c * K;
            double s = ai[c];
            for (int64_t p = kb; p < c; p++) s -= ai[p] * ac[p];
            ai[c] = s / ac[c];
        }
    }
}

/* Trailing update, lower triangle: A[i][j] -= sum_p A[i][p] A[j][p]. */
static void chol_trailing(void *arg, int64_t p0, int64_t p1)
{
    chol_job *j = arg;
    const int64_t K = j->K;
    for (int64_t p = p0; p < p1; p++) {
        int64_t a, b;
        pair_of(p, &a, &b);
        int64_t i0 = j->r0 + a * LA_TILE, c0 = j->r0 + b * LA_TILE;
        int64_t mi = K - i0 < LA_TILE ? K - i0 : LA_TILE, nj = K - c0 < LA_TILE ? K - c0 : LA_TILE;
        int4g_gemm_nt_f64(mi, nj, j->b, -1.0, j->A + i0 * K + j->kb, K, j->A + c0 * K + j->kb, K, j->A + i0 * K + c0,
                          K);
    }
}

int gptq_cholesky_lower(const int4g_ctx *c, double *A, int64_t K)
{
    for (int64_t kb = 0; kb < K; kb += LA_BLOCK) {
        int64_t b = K - kb < LA_BLOCK ? K - kb : LA_BLOCK;
        /* diagonal block, unblocked */
        for (int64_t col = kb; col < kb + b; col++) {
            double *ac = A + col * K;
            double d = ac[col];
            for (int64_t p = kb; p < col; p++) d -= ac[p] * ac[p];
            if (!(d > 0) || !isfinite(d)) return -1;
            ac[col] = sqrt(d);
            for (int64_t i = col + 1; i < kb + b; i++) {
                double *ai = A + i * K;
                double s = ai[col];
                for (int64_t p = kb; p < col; p++) s -= ai[p] * ac[p];
                ai[col] = s / ac[col];
            }
        }
        int64_t r0 = kb + b;
        if (r0 >= K) break;
        chol_job job = {A, K, kb, b, r0, 0};
        run(c, K - r0, chol_panel, &job);
        job.nt = (K - r0 + LA_TILE - 1) / LA_TILE;
        run(c, job.nt * (job.nt + 1) / 2, chol_trailing, &job);
    }
    for (int64_t i = 0; i < K; i++) memset(A + i * K + i + 1, 0, (size_t)(K - i - 1) * sizeof(double));
    return 0;
}

/* ------------------------------------------------------------ triangular inverse */

typedef struct inv_job {
    const double *L;
    double *Y;  /* Y[j][p] = X[p][j], X = L^-1 */
    double *ST; /* [ib, b]: ST[j][r] = sum_{p < ib} X[p][j] L[ib + r][p] */
    int64_t K, ib, b;
} inv_job;

#define INV_JT 16

static void inv_products(void *arg, int64_t t0, int64_t t1)
{
    inv_job *j = arg;
    const int64_t K = j->K;
    for (int64_t t = t0; t < t1; t++) {
        int64_t j0 = t * INV_JT, j1 = j0 + INV_JT < j->ib ? j0 + INV_JT : j->ib;
        memset(j->ST + j0 * j->b, 0, (size_t)((j1 - j0) * j->b) * sizeof(double));
        /* Y[j][p] = 0 for p < j, so the sum can start at j0 */
        int4g_gemm_nt_f64(j1 - j0, j->b, j->ib - j0, 1.0, j->Y + j0 * K + j0, K, j->L + j->ib * K + j0, K,
                          j->ST + j0 * j->b, j->b);
    }
}

/* For column j of X: rows ib..ib+b by forward substitution. */
static void inv_solve(void *arg, int64_t c0, int64_t c1)
{
    inv_job *j = arg;
    const int64_t K = j->K, ib = j->ib;
    for (int64_t col = c0; col < c1; col++) {
        double *y = j->Y + col * K;
        for (int64_t r = 0; r < j->b; r++) {
            int64_t i = ib + r;
            if (i < col) continue;
            const double *li = j->L + i * K;
            double v = (i == col ? 1.0 : 0.0) - (col < ib ? j->ST[col * j->b + r] : 0.0);
            for (int64_t p = col > ib ? col : ib; p < i; p++) v -= li[p] * y[p];
            y[i] = v / li[i];
        }
    }
}

int gptq_tri_inverse_t(const int4g_ctx *c, const double *L, double *Y, int64_t K)
{
    memset(Y, 0, (size_t)(K * K) * sizeof(double));
    double *ST = int4g_tmp_alloc(c, (size_t)(K * LA_BLOCK) * sizeof(double));
    if (!ST) return QTOOL_ERR_OUT_OF_MEMORY;
    for (int64_t ib = 0; ib < K; ib += LA_BLOCK) {
        int64_t b = K - ib < LA_BLOCK ? K - ib : LA_BLOCK;
        inv_job job = {L, Y, ST, K, ib, b};
        if (ib > 0) run(c, (ib + INV_JT - 1) / INV_JT, inv_products, &job);
        run(c, ib + b, inv_solve, &job);
    }
    int4g_tmp_free(c, ST);
    return 0;
}

/* ------------------------------------------------------------ U^T of inverse */

static void reverse(double *a, int64_t n)
{
    for (int64_t i = 0, j = n - 1; i < j; i++, j--) {
        double t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

int gptq_inverse_cholesky_t(const int4g_ctx *c, double *H, double *Ut, int64_t K)
{
    /* (J H J)[a][b] = H[K-1-a][K-1-b]: reversing the flat array */
    reverse(H, K * K);
    if (gptq_cholesky_lower(c, H, K) != 0) return -1;
    int rc = gptq_tri_inverse_t(c, H, Ut, K);
    if (rc) return rc;
    /* Y = (L^-1)^T; U = J L^-1 J, so U^T = J Y J: reverse again */
    reverse(Ut, K * K);
    return 0;
}
