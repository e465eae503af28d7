/* Unit tests of core/metrics.c on hand-computed cases; the random
 * comparison against numpy/scikit-learn is test_metrics_ref.py. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "error.h"
#include "metrics.h"

/* cmocka 1.1.5 has no floating-point assertion. */
#define assert_near(a, b, tol) near_impl((a), (b), (tol), #a, __FILE__, __LINE__)
static void near_impl(double a, double b, double tol, const char *what, const char *file, int line)
{
    if (!(fabs(a - b) <= tol)) {
        print_error("%s = %.17g, expected %.17g (tol %g)\n", what, a, b, tol);
        _fail(file, line);
    }
}

static void test_rng_known_values(void **state)
{
    (void)state;
    /* splitmix64's first output for seed 0 (its reference implementation). */
    qt_rng r;
    qt_rng_seed(&r, 0);
    assert_true(r.s[0] == 0xe220a8397b1dcdafull);
    /* xoshiro256** from state {1, 2, 3, 4} (the published test vector). */
    static const uint64_t want[] = {11520ull, 0ull, 1509978240ull, 1215971899390074240ull,
                                    1216172134540287360ull, 607988272756665600ull,
                                    16172922978634559625ull, 8476171486693032832ull,
                                    10595114339597558777ull, 2904607092377533576ull};
    r.s[0] = 1, r.s[1] = 2, r.s[2] = 3, r.s[3] = 4;
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) assert_true(qt_rng_next(&r) == want[i]);
}

static void test_rng_below_and_shuffle(void **state)
{
    (void)state;
    qt_rng r;
    qt_rng_seed(&r, 42);
    int hist[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint64_t v = qt_rng_below(&r, 7);
        assert_true(v < 7);
        hist[v]++;
    }
    for (int k = 0; k < 7; k++) assert_in_range(hist[k], 9400, 10600);
    assert_int_equal(qt_rng_below(&r, 1), 0);
    int64_t idx[50];
    for (int i = 0; i < 50; i++) idx[i] = i;
    qt_rng_shuffle(&r, idx, 50);
    int seen[50] = {0};
    int moved = 0;
    for (int i = 0; i < 50; i++) {
        seen[idx[i]]++;
        moved += idx[i] != i;
    }
    for (int i = 0; i < 50; i++) assert_int_equal(seen[i], 1);
    assert_true(moved > 30);
}

static void test_per_class_f1(void **state)
{
    (void)state;
    /* Class 2 is never predicted, class 3 never true, class 4 absent. */
    const int32_t y[] = {0, 0, 1, 2};
    const int32_t p[] = {0, 1, 1, 3};
    qt_class_stats *cs;
    size_t n;
    double macro;
    assert_int_equal(qt_metrics_per_class(p, y, 4, 5, &cs, &n, &macro), 0);
    assert_int_equal(n, 4);
    assert_int_equal(cs[0].label, 0);
    assert_near(cs[0].precision, 1.0, 1e-15);
    assert_near(cs[0].recall, 0.5, 1e-15);
    assert_near(cs[0].f1, 2.0 / 3.0, 1e-15);
    assert_near(cs[1].f1, 2.0 / 3.0, 1e-15);
    assert_near(cs[1].precision, 0.5, 1e-15);
    assert_near(cs[2].f1, 0.0, 0);
    assert_int_equal(cs[3].label, 3);
    assert_int_equal(cs[3].support, 0);
    assert_near(macro, (2.0 / 3.0 + 2.0 / 3.0) / 4.0, 1e-15);
    assert_near(qt_metrics_accuracy(p, y, 4), 0.5, 0);
    free(cs);
}

static void test_argmax_ties_first(void **state)
{
    (void)state;
    const float z[] = {1, 3, 3, 0, /* */ 5, 5, 5, 5};
    int32_t pred[2];
    qt_metrics_argmax(z, 2, 4, pred);
    assert_int_equal(pred[0], 1);
    assert_int_equal(pred[1], 0);
}

static void test_nll_ece_by_hand(void **state)
{
    (void)state;
    /* Row 0: p = softmax(ln 3, 0) = (0.75, 0.25), label 0, correct.
     * Row 1: same probabilities, label 1, wrong.
     * Row 2: equal logits, p = 0.5 exactly on the edge 7/15 < 0.5 <= 8/15.
     * Row 3: logits (ln 9, 0): p = 0.9, label 0, correct. */
    const float z[] = {logf(3.f), 0, logf(3.f), 0, 0, 0, logf(9.f), 0};
    const int32_t y[] = {0, 1, 0, 0};
    qt_logits m = {z, 4, 2, y};
    double want_nll = (-log(0.75) - log(0.25) - log(0.5) - log(0.9)) / 4;
    assert_near(qt_metrics_nll(&m, NULL, 0, 1.0), want_nll, 1e-6);
    /* Bins: 0.5 alone (acc 1), 0.75 x2 (acc 0.5), 0.9 alone (acc 1). */
    double want_ece = (fabs(1 - 0.5) * 1 + fabs(0.5 - 0.75) * 2 + fabs(1 - 0.9) * 1) / 4;
    assert_near(qt_metrics_ece(&m, NULL, 0, 1.0, 15), want_ece, 1e-6);
    /* A subset of rows. */
    const int64_t rows[] = {3, 0};
    assert_near(qt_metrics_ece(&m, rows, 2, 1.0, 15), (0.25 + 0.1) / 2, 1e-6);
    /* Temperature: with one wrong and confident row, T > 1 lowers NLL. */
    int at_bound = 1;
    double T = qt_metrics_fit_temperature(&m, NULL, 0, &at_bound);
    assert_false(at_bound);
    double f = qt_metrics_nll(&m, NULL, 0, T);
    assert_true(f <= qt_metrics_nll(&m, NULL, 0, T * 1.001) + 1e-15);
    assert_true(f <= qt_metrics_nll(&m, NULL, 0, T / 1.001) + 1e-15);
}

static void test_temperature_bounds(void **state)
{
    (void)state;
    /* Always right with a margin: NLL keeps falling as T -> 0. */
    const float z[] = {2, 0, 0, 2, 2, 0};
    const int32_t y[] = {0, 1, 0};
    qt_logits m = {z, 3, 2, y};
    int at_bound = 0;
    double T = qt_metrics_fit_temperature(&m, NULL, 0, &at_bound);
    assert_true(at_bound);
    assert_near(T, QT_METRICS_T_MIN, 1e-6);
}

static void test_tiers_assignment_and_identity(void **state)
{
    (void)state;
    /* Counts with ties: 5, 9, 5, 0, 9 -> ranks 1, 4, 0, 2, 3 ... by id on ties. */
    const int64_t counts[] = {5, 9, 5, 0, 9};
    int32_t tier[5];
    qt_metrics_assign_tiers(counts, 5, 2, 2, tier);
    /* Order: 1 (9), 4 (9), 0 (5), 2 (5), 3 (0). */
    assert_int_equal(tier[1], QT_TIER_HEAD);
    assert_int_equal(tier[4], QT_TIER_HEAD);
    assert_int_equal(tier[0], QT_TIER_MID);
    assert_int_equal(tier[2], QT_TIER_MID);
    assert_int_equal(tier[3], QT_TIER_TAIL);

    const int32_t y[] = {1, 4, 0, 2, 1, 0};
    const int32_t p[] = {1, 0, 0, 2, 1, 1};
    qt_tier_result r[3];
    assert_int_equal(qt_metrics_tiers(p, p, y, 6, tier, 5, NULL, r), 0);
    assert_int_equal(r[QT_TIER_HEAD].n, 3);
    assert_int_equal(r[QT_TIER_HEAD].classes, 2);
    assert_near(r[QT_TIER_HEAD].delta, 0, 0);
    assert_near(r[QT_TIER_HEAD].ci_low, 0, 0);
    assert_near(r[QT_TIER_HEAD].ci_high, 0, 0);
    assert_int_equal(r[QT_TIER_HEAD].flips, 0);
    assert_true(r[QT_TIER_HEAD].directional);
    assert_int_equal(r[QT_TIER_TAIL].n, 0);
    assert_true(isnan(r[QT_TIER_TAIL].accuracy));

    /* A run that fixes every mistake: delta = +2/3 in head, CI inside [0, 1]. */
    const int32_t q[] = {1, 4, 0, 2, 1, 0};
    assert_int_equal(qt_metrics_tiers(q, p, y, 6, tier, 5, NULL, r), 0);
    assert_near(r[QT_TIER_HEAD].delta, 1.0 / 3.0, 1e-15);
    assert_int_equal(r[QT_TIER_HEAD].flips, 1);
    assert_true(r[QT_TIER_HEAD].ci_low >= 0 && r[QT_TIER_HEAD].ci_high <= 1);
    assert_near(r[QT_TIER_MID].delta, 1.0 / 3.0, 1e-15);
}

static char *write_temp(const char *text)
{
    char *path = strdup("/tmp/qtool_metrics_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_label_reader(void **state)
{
    (void)state;
    char *cfg = write_temp("{\"id2label\": {\"0\": \"billing\", \"2\": \"fraud\"},"
                           " \"label2id\": {\"billing\": 0, \"other\": 1, \"fraud\": 2}}");
    qt_label_names names;
    assert_int_equal(qt_label_names_load(cfg, &names), 0);
    assert_int_equal(names.n, 3);
    assert_string_equal(names.names[1], "other");
    assert_int_equal(qt_label_names_lookup(&names, "fraud"), 2);
    assert_int_equal(qt_label_names_lookup(&names, "7"), 7);
    assert_int_equal(qt_label_names_lookup(&names, "nope"), -1);

    char *ok = write_temp("{\"label\": \"fraud\"}\n\n{\"label\": 1, \"text\": \"x\"}\r\n{\"label\": 0}");
    int32_t *labels;
    int64_t n;
    assert_int_equal(qt_labels_read_jsonl(ok, &names, 3, &labels, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(labels[0], 2);
    assert_int_equal(labels[1], 1);
    assert_int_equal(labels[2], 0);
    free(labels);

    const char *bad[] = {"{\"label\": 0}\n{\"label\": 3}\n", "{\"label\": 0}\n[1]\n",
                         "{\"label\": 0}\n{\"label\": 1.5}\n", "{\"label\": 0}\n{\"label\": \"x\"}\n",
                         "{\"label\": 0}\n{\"label\": -1}\n", "{\"label\": 0}\n{\"label\": 0} x\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *p = write_temp(bad[i]);
        labels = NULL;
        assert_int_not_equal(qt_labels_read_jsonl(p, &names, 3, &labels, &n), 0);
        assert_null(labels);
        assert_non_null(strstr(qt_last_error(), ":2: "));
        unlink(p);
        free(p);
    }
    int64_t counts[3];
    char *cj = write_temp("{\"billing\": 4, \"2\": 1}");
    assert_int_equal(qt_label_counts_from_json(cj, &names, 3, counts), 0);
    assert_true(counts[0] == 4 && counts[1] == 0 && counts[2] == 1);
    char *cb = write_temp("{\"billing\": -4}");
    assert_int_not_equal(qt_label_counts_from_json(cb, &names, 3, counts), 0);
    char *empty = write_temp("\n\n");
    assert_int_not_equal(qt_labels_read_jsonl(empty, NULL, 0, &labels, &n), 0);
    const char *paths[] = {cfg, ok, cj, cb, empty};
    for (size_t i = 0; i < 5; i++) unlink(paths[i]);
    free(cfg), free(ok), free(cj), free(cb), free(empty);
    qt_label_names_free(&names);
}

static void test_compute_and_json(void **state)
{
    (void)state;
    enum { N = 64, C = 5 };
    static float z[N * C], r[N * C];
    static int32_t y[N];
    qt_rng rng;
    qt_rng_seed(&rng, 7);
    for (int i = 0; i < N * C; i++) {
        z[i] = (float)((double)qt_rng_below(&rng, 1000) / 250.0);
        r[i] = z[i] + (float)((double)qt_rng_below(&rng, 100) / 100.0);
    }
    for (int i = 0; i < N; i++) y[i] = (int32_t)qt_rng_below(&rng, C);
    const int64_t counts[C] = {10, 50, 20, 20, 1};
    qt_logits m = {z, N, C, y}, ref = {r, N, C, y};
    qt_metrics_report rep;
    assert_int_equal(qt_metrics_compute(&m, &ref, counts, 2, 2, NULL, &rep), 0);
    assert_int_equal(rep.split_val.n_a, 32);
    assert_true(rep.has_tiers);
    assert_int_equal(rep.tiers[0].n + rep.tiers[1].n + rep.tiers[2].n, N);
    assert_true(rep.nll_post <= rep.nll + 1e-12);
    json_t *j = qt_metrics_report_json(&rep, NULL);
    assert_non_null(json_object_get(j, "split_val"));
    assert_non_null(json_object_get(json_object_get(j, "tiers"), "tail"));
    json_decref(j);
    qt_metrics_report_free(&rep);

    /* Bad inputs are refused, not computed. */
    z[7] = NAN;
    assert_int_not_equal(qt_metrics_compute(&m, NULL, NULL, 2, 2, NULL, &rep), 0);
    z[7] = 0;
    y[3] = C;
    assert_int_not_equal(qt_metrics_compute(&m, NULL, NULL, 2, 2, NULL, &rep), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rng_known_values),
        cmocka_unit_test(test_rng_below_and_shuffle),
        cmocka_unit_test(test_per_class_f1),
        cmocka_unit_test(test_argmax_ties_first),
        cmocka_unit_test(test_nll_ece_by_hand),
        cmocka_unit_test(test_temperature_bounds),
        cmocka_unit_test(test_tiers_assignment_and_identity),
        cmocka_unit_test(test_label_reader),
        cmocka_unit_test(test_compute_and_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
