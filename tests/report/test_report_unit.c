/* Unit tests of the report's decision logic and the sweep INI parser
 * (run under ASan/UBSan too); the end-to-end checks are the Python tests
 * in this folder. */
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
#include "fsutil.h"
#include "report.h"
#include "sweep.h"

static const char *results_json =
    "{\"envelope\": {\"device\": \"T4\", \"max_ms_per_example\": 10, \"min_macro_f1\": 0.2,"
    " \"max_ece_post\": 0.05},"
    " \"rows\": ["
    "{\"model\": \"enc\", \"plugin\": \"fp16\", \"status\": \"ok\", \"card\": \"Tesla T4\", \"device\": \"cuda:0\","
    " \"macro_f1\": 0.210, \"ms_per_example\": 2.31, \"peak_vram_bytes\": 4.1e8, \"ece_post\": 0.04, \"is_reference\": true},"
    "{\"model\": \"enc\", \"plugin\": \"int8\", \"status\": \"ok\", \"card\": \"Tesla T4\", \"device\": \"cuda:0\","
    " \"macro_f1\": 0.207, \"ms_per_example\": 5.8, \"peak_vram_bytes\": 5.9e8, \"ece_post\": 0.035},"
    "{\"model\": \"enc\", \"plugin\": \"int4\", \"status\": \"ok\", \"card\": \"Tesla T4\", \"device\": \"cuda:0\","
    " \"macro_f1\": 0.212, \"ms_per_example\": 3.2, \"peak_vram_bytes\": 6.2e8, \"ece_post\": 0.038},"
    "{\"model\": \"dec\", \"plugin\": \"fp16\", \"status\": \"ok\", \"card\": \"Tesla T4\", \"device\": \"cuda:0\","
    " \"macro_f1\": 0.2399, \"ms_per_example\": 4.2, \"peak_vram_bytes\": 1.15e9, \"ece_post\": 0.07},"
    "{\"model\": \"dec\", \"plugin\": \"int8\", \"status\": \"ok\", \"card\": \"Tesla T4\", \"device\": \"cuda:0\","
    " \"macro_f1\": 0.2401, \"ms_per_example\": 12.65, \"peak_vram_bytes\": 1.87e9},"
    "{\"model\": \"dec\", \"plugin\": \"gptq\", \"status\": \"failed\", \"reason\": \"SIGSEGV\"}"
    "]}";

static void load(qt_results *r)
{
    json_error_t err;
    json_t *root = json_loads(results_json, 0, &err);
    assert_non_null(root);
    assert_int_equal(qt_results_from_json(root, "test", r), 0);
    json_decref(root);
}

static void test_checks_and_recommendation(void **state)
{
    (void)state;
    qt_results r;
    load(&r);
    assert_int_equal(r.n, 6);
    assert_true(r.has_env);
    const qt_envelope *e = &r.env;
    assert_int_equal(qt_constraint_check(e, &r.rows[0], QT_C_DEVICE), QT_CHECK_PASS);
    assert_int_equal(qt_constraint_check(e, &r.rows[3], QT_C_ECE), QT_CHECK_FAIL);
    /* dec/int8 has no ece_post: missing, hence not viable. */
    assert_int_equal(qt_constraint_check(e, &r.rows[4], QT_C_ECE), QT_CHECK_MISSING);
    assert_int_equal(qt_constraint_check(e, &r.rows[0], QT_C_VRAM), QT_CHECK_UNSET);
    assert_false(qt_row_viable(e, &r.rows[4]));
    assert_false(qt_row_viable(e, &r.rows[5]));
    assert_int_equal(qt_recommend(&r, e), 0);

    int front[6];
    qt_pareto_front(&r, 0, NULL, front);
    /* Latency: enc/fp16, enc/int4, dec/fp16, dec/int8 are on the frontier. */
    assert_int_equal(front[0], 1);
    assert_int_equal(front[1], 0);
    assert_int_equal(front[2], 1);
    assert_int_equal(front[3], 1);
    assert_int_equal(front[4], 1);
    assert_int_equal(front[5], 0);

    qt_envelope e2;
    assert_int_equal(qt_envelope_copy(&e2, e), 0);
    e2.max_ece_post = 0.07;
    assert_int_equal(qt_recommend(&r, &e2), 3);
    e2.f1_tolerance = 0.0;
    e2.max_ece_post = 0.05;
    assert_int_equal(qt_recommend(&r, &e2), 2);
    free(e2.device);
    e2.device = strdup("H100");
    assert_int_equal(qt_recommend(&r, &e2), -1);
    char *why = qt_recommend_reasoning(&r, &e2, -1);
    assert_non_null(strstr(why, "No configuration meets"));
    free(why);
    qt_envelope_free(&e2);

    why = qt_recommend_reasoning(&r, e, 0);
    assert_non_null(strstr(why, "within 0.005"));
    free(why);

    qt_counterfactual *cf;
    size_t n;
    assert_int_equal(qt_counterfactuals(&r, e, &cf, &n), 0);
    int found = 0;
    for (size_t i = 0; i < n; i++)
        if (cf[i].constraint == QT_C_ECE && cf[i].loosen) {
            assert_true(fabs(cf[i].value - 0.07) < 1e-12);
            assert_int_equal(cf[i].choice, 3);
            found = 1;
        }
    assert_true(found);
    qt_counterfactuals_free(cf, n);

    char dir[] = "/tmp/qtool_report_XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(qt_report_write(dir, &r, NULL), 0);
    const char *files[] = {"results.csv", "report.md", "report.html"};
    for (int i = 0; i < 3; i++) {
        char *p = qt_path_join(dir, files[i]);
        assert_true(qt_file_exists(p));
        unlink(p);
        free(p);
    }
    rmdir(dir);
    qt_results_free(&r);
}

static void test_bad_results(void **state)
{
    (void)state;
    const char *bad[] = {"[]", "{\"rows\": 3}", "{\"rows\": [1]}"};
    for (int i = 0; i < 3; i++) {
        json_t *root = json_loads(bad[i], 0, NULL);
        qt_results r;
        assert_int_not_equal(qt_results_from_json(root, "bad.json", &r), 0);
        assert_non_null(strstr(qt_last_error(), "bad.json"));
        json_decref(root);
    }
    /* Wrong types are missing values, not errors. */
    json_t *root = json_loads("{\"rows\": [{\"model\": 5, \"status\": \"ok\", \"macro_f1\": \"x\", "
                              "\"tiers\": {\"head\": {\"delta\": \"no\"}}}]}",
                              0, NULL);
    qt_results r;
    assert_int_equal(qt_results_from_json(root, "odd.json", &r), 0);
    assert_true(isnan(r.rows[0].macro_f1));
    assert_string_equal(r.rows[0].model, "?");
    assert_int_equal(qt_recommend(&r, &r.env), 0);
    qt_results_free(&r);
    json_decref(root);
}

static char *write_ini(const char *text)
{
    char *path = strdup("/tmp/qtool_sweep_XXXXXX.ini");
    int fd = mkstemps(path, 4);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

static void test_sweep_ini(void **state)
{
    (void)state;
    char *p = write_ini("[model enc]\npath = models/enc\n[model dec]\npath = /abs/dec\nconfig = c.json\n"
                        "[data]\neval = val.jsonl\ntrain = train.jsonl\nhead = 5\n"
                        "[plugins]\nlist = fp16, nf4\n  awq\noptions.nf4 = blocksize=64\n"
                        "[envelope]\ndevice = T4\nmax_ms_per_example = 10\nmax_vram_gb = 1.5\n"
                        "[output]\ncell_timeout_s = 600\n"
                        "[named_classes]\nnames = late fee, mortgage ,fraud\n");
    qt_sweep_config c;
    assert_int_equal(qt_sweep_config_load(p, &c), 0);
    assert_int_equal(c.n_models, 2);
    assert_non_null(strstr(c.models[0].path, "/tmp/models/enc"));
    assert_string_equal(c.models[1].path, "/abs/dec");
    assert_int_equal(c.head, 5);
    assert_int_equal(c.mid, 40);
    assert_int_equal(c.n_plugins, 3);
    assert_string_equal(c.plugins[2], "awq");
    assert_int_equal(c.n_opts, 1);
    assert_string_equal(c.opt_value[0], "blocksize=64");
    assert_string_equal(c.env.device, "T4");
    assert_true(c.env.max_vram_gb == 1.5);
    assert_true(isnan(c.env.max_ece_post));
    assert_int_equal(c.n_named, 3);
    assert_string_equal(c.named[0], "late fee");
    assert_string_equal(c.named[1], "mortgage");
    assert_non_null(strstr(c.out_dir, "/tmp/results"));
    assert_true(c.cell_timeout_s == 600);
    qt_sweep_config_free(&c);
    unlink(p);
    free(p);

    struct {
        const char *text, *needle;
    } bad[] = {
        {"[model a]\npath = x\n[data]\neval = v\nbogus = 1\n", ":5: unknown key 'bogus' in [data]"},
        {"[model a]\npath = x\n[data]\neval = v\n[extra]\n", ":5: unknown section [extra]"},
        {"[model a]\npath = x\n[data]\neval = v\n[ extra ]", ":5: unknown section [extra]"},
        {"[model a]\npath = x\n\n[ model b ]\n[data]\neval = v\n", ":4: [model b] has no path="},
        {"[model a/b]\npath = x\n", ":2: [model a/b]: a model needs a name"},
        {"[model a]\n[data]\neval = v\n", ":1: [model a] has no path="},
        {"[model a]\npath = x\n", "no [data] section with eval="},
        {"[model a]\npath = x\n[data]\neval = v\n[envelope]\nmin_macro_f1 = -1\n", ":6: 'min_macro_f1' needs a non-negative"},
        {"[model a]\npath = x\n[data]\neval = v\n[plugins]\nlist = fp16 ../x\n", ":6: '../x' is not a plugin name"},
        {"[model a]\npath = x\npath = y\n", ":3: duplicate key 'path'"},
        {"nonsense\n", ":1: syntax error"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        p = write_ini(bad[i].text);
        assert_int_not_equal(qt_sweep_config_load(p, &c), 0);
        if (!strstr(qt_last_error(), bad[i].needle)) print_error("got: %s\nwant: %s\n", qt_last_error(), bad[i].needle);
        assert_non_null(strstr(qt_last_error(), bad[i].needle));
        assert_non_null(strstr(qt_last_error(), p));
        unlink(p);
        free(p);
    }
    qt_envelope env;
    p = write_ini("[envelope]\nmax_ece_post = 0.08\ndevice = cpu\n");
    assert_int_equal(qt_sweep_envelope_load(p, &env), 0);
    assert_true(env.max_ece_post == 0.08);
    assert_string_equal(env.device, "cpu");
    qt_envelope_free(&env);
    unlink(p);
    free(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_checks_and_recommendation),
        cmocka_unit_test(test_bad_results),
        cmocka_unit_test(test_sweep_ini),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
