/* gptq, GPTQ itself on the GPU (pack when H was summed on the device)
 * against the CPU path:
 *   - the factor: the device's upper Cholesky factor of the damped,
 *     permuted, shrunk H^-1 (cuSOLVER) against gptq_inverse_cholesky_t on
 *     the same H, the diagonal and OAS sums, non-positive-definite H
 *     reported (negative or NaN diagonal);
 *   - whole layers: the same calibration rows summed and packed with
 *     calib_device=cuda and calib_device=cpu (K = 896, 4832, 4864;
 *     act-order on and off, sym and asym, group sizes 32, 128 and -1,
 *     static groups): >= 99.9% identical codes and group parameters, the
 *     same g_idx, held-out output error within 1.001x of the CPU path's.
 * Exits 77 without a CUDA device. Fresh random inputs every run. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "plugin_harness.h"
#include "int4_test_util.h"
#include "int4g.h"
#include "gptq_linalg.h"
#ifdef QTOOL_HAVE_CUDA
#include "gptq_cuda.h"
#endif

static harness H;

/* gptq_linalg.c is compiled into this test; these are the int4g services
 * it uses (the plugin has its own copy). */
void *int4g_tmp_alloc(const int4g_ctx *c, size_t bytes)
{
    return c->host->alloc(c->host->ctx, QTOOL_DEVICE_CPU, bytes ? bytes : 1, QTOOL_MEM_OTHER);
}
void int4g_tmp_free(const int4g_ctx *c, void *p)
{
    if (p) c->host->free(c->host->ctx, QTOOL_DEVICE_CPU, p);
}

/* ------------------------------------------------------------ the factor */

#ifdef QTOOL_HAVE_CUDA
static const double *g_key;
static int by_key_desc(const void *a, const void *b)
{
    int64_t i = *(const int64_t *)a, k = *(const int64_t *)b;
    if (g_key[i] != g_key[k]) return g_key[i] > g_key[k] ? -1 : 1;
    return i < k ? -1 : i > k;
}

static void check_factor(int64_t K, int act_order)
{
    int4g_ctx c;
    memset(&c, 0, sizeof c);
    c.host = &H.svc.table;
    c.plugin = "gptq";
    const int64_t T = 512, N = 8;
    const size_t bytes = (size_t)(K * K) * sizeof(double);
    /* H = (2/T) X^T X from correlated rows, two dead inputs */
    float *x = malloc((size_t)(T * K) * sizeof(float));
    act_dist d = act_dist_new(K, 16, 3, 10.0f);
    act_sample(&d, x, T);
    for (int64_t t = 0; t < T; t++) x[t * K + 3] = x[t * K + K - 2] = 0;
    double *Hs = calloc((size_t)(K * K), sizeof(double));
    assert_int_equal(gptq_syrk_upper(&c, Hs, K, x, T, 2.0 / (double)T), QTOOL_OK);
    for (int64_t i = 0; i < K; i++)
        for (int64_t j = 0; j < i; j++) Hs[i * K + j] = Hs[j * K + i];
    void *dH = qt_alloc(QTOOL_DEVICE_CUDA, bytes, QTOOL_MEM_OTHER);
    assert_non_null(dH);
    assert_int_equal(qt_cuda_memcpy_h2d(dH, Hs, bytes), 0);

    char msg[256] = "";
    void *solver = NULL;
    gpcu_pack *pk = NULL;
    assert_int_equal(gpcu_solver_create(&solver, msg, sizeof msg), 0);
    int rc = gpcu_pack_begin(solver, &H.svc.table, dH, N, K, K, &pk, msg, sizeof msg);
    if (rc) fprintf(stderr, "gpcu_pack_begin: %s\n", msg);
    assert_int_equal(rc, 0);

    /* the diagonal, bit for bit */
    double *diag = malloc((size_t)K * sizeof(double)), *key = malloc((size_t)K * sizeof(double));
    double *dvec = malloc((size_t)K * sizeof(double));
    assert_int_equal(gpcu_pack_diag(pk, diag, msg, sizeof msg), 0);
    for (int64_t i = 0; i < K; i++) assert_true(diag[i] == Hs[i * K + i]);
    assert_true(diag[3] == 0 && diag[K - 2] == 0);

    /* processing order and dead inputs as gptq.c chooses them */
    int64_t *perm = malloc((size_t)K * sizeof(int64_t));
    unsigned char *dead = malloc((size_t)K);
    for (int64_t i = 0; i < K; i++) {
        perm[i] = i;
        dead[i] = diag[i] == 0;
        key[i] = dead[i] ? 1 : diag[i];
    }
    if (act_order) {
        g_key = key;
        qsort(perm, (size_t)K, sizeof *perm, by_key_desc);
    }
    float *w = malloc((size_t)(N * K) * sizeof(float));
    gen_weights(w, N, K);
    assert_int_equal(gpcu_pack_weights(pk, w, QTOOL_DTYPE_F32, perm, dead, 1, 0, msg, sizeof msg), 0);

    /* the OAS correlation sum against a float64 loop */
    double off = 0, ref = 0;
    assert_int_equal(gpcu_pack_offdiag_corr(pk, &off, msg, sizeof msg), 0);
    for (int64_t i = 0; i < K; i++)
        for (int64_t k = i + 1; k < K; k++)
            if (diag[i] > 0 && diag[k] > 0) ref += 2.0 * Hs[i * K + k] * Hs[i * K + k] / (diag[i] * diag[k]);
    assert_true(fabs(off - ref) <= 1e-12 * ref);

    /* Hp as gptq.c's build_h: shrink 0.2, damp 0.01 */
    const double rho = 0.2, damp = 0.01;
    double mean = 0;
    for (int64_t a = 0; a < K; a++) {
        double v = diag[perm[a]];
        dvec[a] = v == 0 ? 1 : v;
        mean += dvec[a];
    }
    mean /= (double)K;
    for (int64_t a = 0; a < K; a++) dvec[a] += damp * mean;
    double *Hp = malloc(bytes), *Ut = malloc(bytes), *U = malloc(bytes);
    for (int64_t a = 0; a < K; a++)
        for (int64_t b = 0; b < K; b++)
            Hp[a * K + b] = a == b ? dvec[a] : (1.0 - rho) * Hs[perm[a] * K + perm[b]];
    assert_int_equal(gptq_inverse_cholesky_t(&c, Hp, Ut, K), 0);

    int not_pd = -1;
    assert_int_equal(gpcu_pack_factor(pk, dvec, 1.0 - rho, &not_pd, msg, sizeof msg), 0);
    assert_int_equal(not_pd, 0);
    assert_int_equal(gpcu_pack_factor_download(pk, U, msg, sizeof msg), 0);
    /* U (row-major, upper) against Ut = U^T from the CPU */
    double umax = 0, dmax = 0;
    for (int64_t a = 0; a < K; a++)
        for (int64_t b = 0; b < K; b++) {
            if (a > b) {
                assert_true(U[a * K + b] == 0.0);
                continue;
            }
            umax = fmax(umax, fabs(Ut[b * K + a]));
            dmax = fmax(dmax, fabs(U[a * K + b] - Ut[b * K + a]));
        }
    printf("factor K=%lld act_order=%d: max |U_gpu - U_cpu| = %.3g (max |U| = %.3g)\n", (long long)K, act_order,
           dmax, umax);
    assert_true(umax > 0 && dmax <= 1e-9 * umax);

    /* not positive definite: a negative, then a NaN diagonal entry; then a
     * good one again on the same buffers */
    double saved = dvec[K / 2];
    dvec[K / 2] = -1.0;
    assert_int_equal(gpcu_pack_factor(pk, dvec, 1.0 - rho, &not_pd, msg, sizeof msg), 0);
    assert_int_equal(not_pd, 1);
    dvec[K / 2] = NAN;
    assert_int_equal(gpcu_pack_factor(pk, dvec, 1.0 - rho, &not_pd, msg, sizeof msg), 0);
    assert_int_equal(not_pd, 1);
    dvec[K / 2] = saved;
    assert_int_equal(gpcu_pack_factor(pk, dvec, 1.0 - rho, &not_pd, msg, sizeof msg), 0);
    assert_int_equal(not_pd, 0);
    assert_int_equal(gpcu_pack_factor_download(pk, Hp, msg, sizeof msg), 0);
    assert_memory_equal(Hp, U, bytes); /* deterministic */

    gpcu_pack_end(pk);
    gpcu_solver_destroy(solver);
    qt_free(QTOOL_DEVICE_CUDA, dH);
    act_dist_free(&d);
    free(x);
    free(Hs);
    free(diag);
    free(key);
    free(dvec);
    free(perm);
    free(dead);
    free(w);
    free(Hp);
    free(Ut);
    free(U);
}
#endif

static void test_factor(void **state)
{
    (void)state;
#ifdef QTOOL_HAVE_CUDA
    check_factor(896, 1);
    check_factor(1000, 0); /* not a multiple of cuSOLVER's or the lazy blocks */
    check_factor(4832, 1);
#else
    skip();
#endif
}

/* ------------------------------------------------------------ whole layers */

typedef struct layer_case {
    int64_t N, K;
    const char *opts[4];
    int nopts;
} layer_case;

static void check_layer(const layer_case *lc)
{
    const int64_t N = lc->N, K = lc->K, T = 1024, Th = 200;
    float *w = malloc((size_t)(N * K) * sizeof(float)), *xc = malloc((size_t)(T * K) * sizeof(float));
    float *xh = malloc((size_t)(Th * K) * sizeof(float));
    gen_weights(w, N, K);
    act_dist d = act_dist_new(K, 24, 3, 10.0f);
    act_sample(&d, xc, T);
    act_sample(&d, xh, Th);
    const char *kc[6], *kg[6];
    kc[0] = "calib_device=cpu";
    kg[0] = "calib_device=cuda";
    for (int i = 0; i < lc->nopts; i++) kc[i + 1] = kg[i + 1] = lc->opts[i];
    qtool_instance *ic = make_inst(&H, kc, lc->nopts + 1), *ig = make_inst(&H, kg, lc->nopts + 1);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_FFN_DOWN, "model.layers.0.mlp.down_proj.weight", K, N, 0, 1};
    calibrate_rows(&H, ic, &li, xc, T, K, 400);
    calibrate_rows(&H, ig, &li, xc, T, K, 400);

    qtool_packed *pc = pack_layer(&H, ic, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    qt_mem_stats s0, s1;
    qt_mem_get_stats(&s0);
    qt_mem_reset_peak();
    qtool_packed *pg = pack_layer(&H, ig, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    qt_mem_get_stats(&s1);
    /* GPTQ ran on the device: its K x K factor was there */
    assert_true(s1.peak_total[QTOOL_DEVICE_CUDA] >= s0.current_total[QTOOL_DEVICE_CUDA] + (uint64_t)(K * K) * 8);
    assert_int_equal(s1.current_total[QTOOL_DEVICE_CUDA], s0.current_total[QTOOL_DEVICE_CUDA]);

    assert_int_equal(pc->ngroups, pg->ngroups);
    const int64_t ng = pc->ngroups;
    int64_t codes_differ = 0, params_differ = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t k = 0; k < K; k++) codes_differ += int4g_get_code(pc, n, k) != int4g_get_code(pg, n, k);
    for (int64_t i = 0; i < N * ng; i++)
        params_differ += pc->scales[i] != pg->scales[i] || pc->zeros[i] != pg->zeros[i];
    assert_true((pc->g_idx == NULL) == (pg->g_idx == NULL));
    if (pc->g_idx) assert_memory_equal(pc->g_idx, pg->g_idx, (size_t)K * sizeof(int32_t));

    float *wc = malloc((size_t)(N * K) * sizeof(float)), *wg = malloc((size_t)(N * K) * sizeof(float));
    double *a = malloc((size_t)(N * K) * sizeof(double)), *b = malloc((size_t)(N * K) * sizeof(double));
    assert_int_equal(H.desc->dequantize(pc, wc), QTOOL_OK);
    assert_int_equal(H.desc->dequantize(pg, wg), QTOOL_OK);
    for (int64_t i = 0; i < N * K; i++) {
        a[i] = wc[i];
        b[i] = wg[i];
    }
    double ec = output_error(w, a, NULL, xh, Th, N, K), eg = output_error(w, b, NULL, xh, Th, N, K);
    printf("N=%lld K=%lld %s %s %s: codes differ %lld of %lld, group parameters %lld of %lld; output error cpu "
           "%.6g gpu %.6g\n",
           (long long)N, (long long)K, lc->nopts > 0 ? lc->opts[0] : "", lc->nopts > 1 ? lc->opts[1] : "",
           lc->nopts > 2 ? lc->opts[2] : "", (long long)codes_differ, (long long)(N * K), (long long)params_differ,
           (long long)(N * ng), ec, eg);
    assert_true((double)codes_differ <= 1e-3 * (double)(N * K));
    assert_true((double)params_differ <= 1e-3 * (double)(N * ng) + 0.5);
    assert_true(eg <= 1.001 * ec);

    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(ic);
    H.desc->destroy(ig);
    act_dist_free(&d);
    free(w);
    free(xc);
    free(xh);
    free(wc);
    free(wg);
    free(a);
    free(b);
}

static void test_layers(void **state)
{
    (void)state;
    static const layer_case cases[] = {
        {333, 896, {"act_order=0", "sym=1"}, 2},
        {333, 896, {"act_order=1", "sym=0"}, 2},
        {200, 896, {"act_order=1", "sym=0", "group_size=-1"}, 3}, /* a group spanning the lazy blocks */
        {96, 896, {"act_order=1", "static_groups=1", "group_size=64"}, 3},
        {160, 4832, {"act_order=1", "sym=1", "group_size=32"}, 3}, /* a last lazy block of 96 */
        {128, 4864, {"act_order=0", "sym=0"}, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) check_layer(&cases[i]);
}

int main(void)
{
    if (!cuda_available()) {
        printf("skipped: no CUDA device\n");
        return 77;
    }
    rng_seed_from_env("test_gptq_cuda_pack");
    if (harness_open(&H, "gptq", 0, NULL) != 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_factor),
        cmocka_unit_test(test_layers),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    harness_close(&H);
    return rc;
}
