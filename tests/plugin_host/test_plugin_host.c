/* Plugin host: loading, refusals (one fixture per broken rule), discovery,
 * resolution, option parsing and instance creation. */
#include <dlfcn.h>
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
#include "plugin_host.h"
#include "threads.h"

static char *fixture(const char *file)
{
    static char buf[8][4096];
    static int next;
    char *b = buf[next++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", QT_FIXTURE_DIR, file);
    return b;
}

/* Asserts that loading `file` fails with "<path>: " + a message containing `cause`. */
static void expect_refusal(const char *file, const char *cause)
{
    const char *path = fixture(file);
    qt_plugin *p = (qt_plugin *)1;
    qt_clear_error();
    int rc = qt_plugin_load(path, &p);
    const char *err = qt_last_error();
    if (rc == 0 || strncmp(err, path, strlen(path)) != 0 || strncmp(err + strlen(path), ": ", 2) != 0 ||
        !strstr(err, cause))
        fail_msg("%s: expected refusal containing '%s', got rc=%d '%s'", file, cause, rc, err);
    assert_null(p);
    /* One line. */
    assert_null(strchr(err, '\n'));
}

static void test_refusals(void **state)
{
    (void)state;
    char short_cause[128];
    snprintf(short_cause, sizeof short_cause, "descriptor is 16 bytes, ABI 1 needs at least %zu",
             (size_t)QTOOL_PLUGIN_DESC_MIN_SIZE);
    expect_refusal("libbroken.so", "not a shared object: ");
    expect_refusal("libnoentry.so", "no qtool_plugin_entry symbol");
    expect_refusal("libnulldesc.so", "qtool_plugin_entry returned NULL");
    expect_refusal("libabi2.so", "built for plugin ABI 2.0, this qtool speaks ABI 1.x");
    expect_refusal("libshort.so", short_cause);
    expect_refusal("libinitfail.so", "init failed: needs the frobnicator");
    expect_refusal("libmissingslot.so", "missing required slot 'pack'");
    expect_refusal("libnocuda.so", "missing required slot 'matmul_cuda'");
    expect_refusal("libbadname.so", "invalid plugin name 'Bad-Name': use [a-z0-9_]+");
    expect_refusal("libbadopt.so", "option 'blocksize': default 8 is outside 16..4096");
    expect_refusal("no-such-file.so", "cannot open: No such file or directory");
    expect_refusal("libsubdir.so", "not a regular file");
}

/* Keeps the library mapped after the host's dlclose, so counters inside
 * it can be read after unload. */
static void *pin(const char *path)
{
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
    assert_non_null(h);
    return h;
}

static void test_load_valid(void **state)
{
    (void)state;
    const char *path = fixture("libvalid.so");
    qt_plugin *p = NULL;
    assert_int_equal(qt_plugin_load(path, &p), 0);
    assert_non_null(p);
    assert_string_equal(p->desc->name, "fixture_valid");
    assert_string_equal(p->desc->version, "1.2.3");
    assert_string_equal(p->path, path);
    assert_int_equal(p->desc->n_options, 5);

    void *h = pin(path);
    int *init_calls = dlsym(h, "fixture_init_calls");
    int *shutdown_calls = dlsym(h, "fixture_shutdown_calls");
    const qtool_host_services **init_host = dlsym(h, "fixture_init_host");
    assert_non_null(init_calls);
    assert_non_null(shutdown_calls);
    assert_int_equal(*init_calls, 1);
    assert_int_equal(*shutdown_calls, 0);
    /* init got a services table that names this plugin in log lines. */
    assert_non_null(*init_host);
    assert_int_equal((*init_host)->struct_size, sizeof(qtool_host_services));
    assert_string_equal(((const qt_services *)(*init_host)->ctx)->plugin_name, "fixture_valid");
    assert_string_equal(p->services.plugin_name, "fixture_valid");
    assert_int_equal(p->services.table.cuda_device, -1);

    /* The same library loaded again (dlopen shares it): init and shutdown
     * still run once, shutdown when the last user unloads it. */
    qt_plugin *again = NULL;
    assert_int_equal(qt_plugin_load(path, &again), 0);
    assert_int_equal(*init_calls, 1);
    qt_plugin_unload(p);
    assert_int_equal(*shutdown_calls, 0);
    qt_plugin_unload(again);
    assert_int_equal(*init_calls, 1);
    assert_int_equal(*shutdown_calls, 1);

    /* A fresh load after that initialises again. */
    assert_int_equal(qt_plugin_load(path, &p), 0);
    assert_int_equal(*init_calls, 2);
    qt_plugin_unload(p);
    assert_int_equal(*shutdown_calls, 2);
    dlclose(h);
}

static void test_optional_slots_respect_struct_size(void **state)
{
    (void)state;
    qt_plugin *p = NULL;
    assert_int_equal(qt_plugin_load(fixture("libold.so"), &p), 0);
    /* The plugin's memory past struct_size has non-NULL pointers; the host
     * copy must not pick them up. */
    assert_null(p->desc->save);
    assert_null(p->desc->accepts_config);
    assert_null(p->desc->load);
    assert_non_null(p->desc->memory);
    qt_plugin_unload(p);

    assert_int_equal(qt_plugin_load(fixture("libfuture.so"), &p), 0);
    assert_int_equal(QTOOL_ABI_MINOR_OF(p->desc->abi_version), 7);
    assert_string_equal(p->desc->name, "fixture_future");
    qt_plugin_unload(p);
}

static size_t count_refusals_with(const qt_plugin_set *set, const char *file, const char *cause)
{
    size_t n = 0;
    for (size_t k = 0; k < set->n_refused; k++)
        if (strcmp(set->refused[k].path, fixture(file)) == 0 && strstr(set->refused[k].reason, cause)) n++;
    return n;
}

static void check_fixture_set(const qt_plugin_set *set)
{
    static const char *const loaded[] = {"fixture_dup", "fixture_future", "fixture_old", "fixture_valid"};
    if (set->n != 4) {
        for (size_t k = 0; k < set->n; k++) print_error("loaded %s\n", set->plugins[k]->desc->name);
        fail_msg("expected 4 loaded plugins, got %zu", set->n);
    }
    for (size_t k = 0; k < 4; k++) assert_string_equal(set->plugins[k]->desc->name, loaded[k]);
    assert_string_equal(qt_plugins_find(set, "fixture_dup")->path, fixture("libdup_a.so"));

    char dup_cause[4200];
    snprintf(dup_cause, sizeof dup_cause, "duplicate plugin name 'fixture_dup', already loaded from %s",
             fixture("libdup_a.so"));
    static const struct {
        const char *file, *cause;
    } expected[] = {
        {"libabi2.so", "ABI 2.0"},
        {"libbadname.so", "invalid plugin name"},
        {"libbadopt.so", "default 8 is outside"},
        {"libbroken.so", "not a shared object"},
        {"libinitfail.so", "needs the frobnicator"},
        {"libmissingslot.so", "'pack'"},
        {"libnocuda.so", "'matmul_cuda'"},
        {"libnoentry.so", "no qtool_plugin_entry"},
        {"libnulldesc.so", "returned NULL"},
        {"libshort.so", "descriptor is 16 bytes"},
    };
    size_t n_expected = sizeof expected / sizeof expected[0];
    if (set->n_refused != n_expected + 1) {
        for (size_t k = 0; k < set->n_refused; k++)
            print_error("refused %s: %s\n", set->refused[k].path, set->refused[k].reason);
        fail_msg("expected %zu refusals, got %zu", n_expected + 1, set->n_refused);
    }
    for (size_t k = 0; k < n_expected; k++) {
        if (count_refusals_with(set, expected[k].file, expected[k].cause) != 1)
            fail_msg("no single refusal of %s with '%s'", expected[k].file, expected[k].cause);
    }
    assert_int_equal(count_refusals_with(set, "libdup_b.so", dup_cause), 1);
}

static void test_discover_folder(void **state)
{
    (void)state;
    qt_plugin_set set;
    assert_int_equal(qt_plugins_discover(&set, QT_FIXTURE_DIR, 1), 0);
    check_fixture_set(&set);
    assert_int_equal(set.n_searched, 1);
    char *rp = realpath(QT_FIXTURE_DIR, NULL);
    assert_string_equal(set.searched[0], rp);
    free(rp);
    qt_plugins_free(&set);
    assert_int_equal(set.n, 0);
}

static void test_discover_same_files_once(void **state)
{
    (void)state;
    qt_plugin_set set;
    /* The same folder twice, once through a symlink, and again through
     * QTOOL_PLUGIN_PATH: each file is tried once, so no duplicate refusals. */
    char link[4096], dirbuf[] = "/tmp/qtool-ph-XXXXXX";
    char *tmp = mkdtemp(dirbuf);
    assert_non_null(tmp);
    snprintf(link, sizeof link, "%s/alias", tmp);
    assert_int_equal(symlink(QT_FIXTURE_DIR, link), 0);
    char explicit_path[8400];
    snprintf(explicit_path, sizeof explicit_path, "%s:%s", QT_FIXTURE_DIR, link);
    setenv("QTOOL_PLUGIN_PATH", link, 1);
    assert_int_equal(qt_plugins_discover(&set, explicit_path, 1), 0);
    unsetenv("QTOOL_PLUGIN_PATH");
    check_fixture_set(&set);
    qt_plugins_free(&set);
    unlink(link);
    rmdir(tmp);

    /* Only QTOOL_PLUGIN_PATH. */
    setenv("QTOOL_PLUGIN_PATH", QT_FIXTURE_DIR, 1);
    assert_int_equal(qt_plugins_discover(&set, NULL, 1), 0);
    unsetenv("QTOOL_PLUGIN_PATH");
    check_fixture_set(&set);
    qt_plugins_free(&set);
}

static void test_discover_explicit_file_and_missing(void **state)
{
    (void)state;
    qt_plugin_set set;
    /* A file named explicitly comes first, so its name wins over the folder's. */
    char both[8400];
    snprintf(both, sizeof both, "%s:%s", fixture("libdup_b.so"), QT_FIXTURE_DIR);
    assert_int_equal(qt_plugins_discover(&set, both, 1), 0);
    assert_string_equal(qt_plugins_find(&set, "fixture_dup")->path, fixture("libdup_b.so"));
    assert_int_equal(count_refusals_with(&set, "libdup_a.so", "already loaded from"), 1);
    qt_plugins_free(&set);

    assert_int_equal(qt_plugins_discover(&set, fixture("libvalid.so"), 1), 0);
    assert_int_equal(set.n, 1);
    assert_int_equal(set.n_refused, 0);
    qt_plugins_free(&set);

    assert_int_equal(qt_plugins_discover(&set, fixture("nothing-here"), 1), 0);
    assert_int_equal(set.n, 0);
    assert_int_equal(set.n_refused, 1);
    assert_non_null(strstr(set.refused[0].reason, "cannot open: No such file or directory"));
    qt_plugins_free(&set);
}

static void test_resolve(void **state)
{
    (void)state;
    qt_plugin_set set;
    qt_plugin *p = NULL, *q = NULL;
    assert_int_equal(qt_plugins_discover(&set, fixture("libvalid.so"), 1), 0);
    assert_int_equal(qt_plugins_resolve(&set, "fixture_valid", &p), 0);
    assert_string_equal(p->desc->name, "fixture_valid");
    /* The same file by path: the plugin already loaded. */
    assert_int_equal(qt_plugins_resolve(&set, fixture("libvalid.so"), &q), 0);
    assert_ptr_equal(p, q);
    /* A new file by path is added. */
    assert_int_equal(qt_plugins_resolve(&set, fixture("libold.so"), &q), 0);
    assert_string_equal(q->desc->name, "fixture_old");
    assert_int_equal(set.n, 2);
    assert_ptr_equal(qt_plugins_find(&set, "fixture_old"), q);
    /* Unknown names list what is loaded. */
    assert_int_not_equal(qt_plugins_resolve(&set, "nf5", &q), 0);
    assert_null(q);
    assert_string_equal(qt_last_error(),
                        "no plugin named 'nf5'; loaded: fixture_old, fixture_valid (see 'qtool plugins')");
    /* A broken file by path fails with its refusal line. */
    assert_int_not_equal(qt_plugins_resolve(&set, fixture("libabi2.so"), &q), 0);
    assert_non_null(strstr(qt_last_error(), "ABI 2.0"));
    assert_int_equal(qt_plugins_resolve(&set, fixture("libdup_a.so"), &q), 0);
    assert_int_not_equal(qt_plugins_resolve(&set, fixture("libdup_b.so"), &q), 0);
    assert_non_null(strstr(qt_last_error(), "duplicate plugin name 'fixture_dup'"));
    assert_int_equal(set.n, 3);
    qt_plugins_free(&set);
}

/* ------------------------------------------------------------- options */

static qt_plugin *valid_plugin;

static int setup_valid(void **state)
{
    (void)state;
    return qt_plugin_load(fixture("libvalid.so"), &valid_plugin);
}

static int teardown_valid(void **state)
{
    (void)state;
    qt_plugin_unload(valid_plugin);
    valid_plugin = NULL;
    return 0;
}

static int parse(qt_plugin_options *o, const char *a, const char *b)
{
    char *kv[2] = {(char *)a, (char *)b};
    size_t n = b ? 2 : a ? 1 : 0;
    return qt_plugin_parse_options(valid_plugin, kv, n, o);
}

static const char *const valid_list =
    "valid options: blocksize (int, default 64, 16..4096), ratio (float, default 0.5, 0..1), "
    "double_quant (bool, default 1), tag (string, default \"\"), dtype (nf4|fp4, default nf4)";

static void test_options_defaults(void **state)
{
    (void)state;
    qt_plugin_options o;
    assert_int_equal(parse(&o, NULL, NULL), 0);
    assert_int_equal(o.n, 5);
    assert_string_equal(o.values[0].name, "blocksize");
    assert_int_equal(o.values[0].type, QTOOL_OPT_INT);
    assert_int_equal(o.values[0].i, 64);
    assert_string_equal(o.values[0].s, "64");
    assert_true(o.values[1].f == 0.5);
    assert_int_equal(o.values[2].i, 1);
    assert_string_equal(o.values[3].s, ""); /* NULL string default */
    assert_int_equal(o.values[4].i, 0);
    assert_string_equal(o.values[4].s, "nf4");
    qt_plugin_options_free(&o);
}

static void test_options_each_type(void **state)
{
    (void)state;
    qt_plugin_options o;
    char buf[32];
    /* The values are copies: changing the argument afterwards changes nothing. */
    snprintf(buf, sizeof buf, "tag=hello=world");
    assert_int_equal(parse(&o, "blocksize=4096", buf), 0);
    buf[4] = 'X';
    assert_int_equal(o.values[0].i, 4096);
    assert_string_equal(o.values[3].s, "hello=world");
    qt_plugin_options_free(&o);

    assert_int_equal(parse(&o, "ratio=0.25", "dtype=fp4"), 0);
    assert_true(o.values[1].f == 0.25);
    assert_string_equal(o.values[1].s, "0.25");
    assert_int_equal(o.values[4].i, 1);
    assert_string_equal(o.values[4].s, "fp4");
    qt_plugin_options_free(&o);

    static const struct {
        const char *text;
        int value;
    } bools[] = {{"0", 0}, {"1", 1}, {"true", 1}, {"false", 0}, {"YES", 1}, {"no", 0}, {"On", 1}, {"off", 0}};
    for (size_t k = 0; k < sizeof bools / sizeof bools[0]; k++) {
        char kv[64];
        snprintf(kv, sizeof kv, "double_quant=%s", bools[k].text);
        assert_int_equal(parse(&o, kv, NULL), 0);
        assert_int_equal(o.values[2].i, bools[k].value);
        qt_plugin_options_free(&o);
    }
    /* Range ends are inclusive; the empty string is a valid STRING. */
    assert_int_equal(parse(&o, "blocksize=16", "tag="), 0);
    assert_int_equal(o.values[0].i, 16);
    assert_string_equal(o.values[3].s, "");
    qt_plugin_options_free(&o);
    assert_int_equal(parse(&o, "ratio=1", "ratio=0"), 0);
    assert_true(o.values[1].f == 0.0); /* the last value wins */
    qt_plugin_options_free(&o);
}

static void expect_option_error(const char *a, const char *message_start)
{
    qt_plugin_options o;
    memset(&o, 0x5a, sizeof o);
    assert_int_not_equal(parse(&o, a, NULL), 0);
    assert_null(o.values);
    const char *err = qt_last_error();
    char expected[2048];
    snprintf(expected, sizeof expected, "%s; %s", message_start, valid_list);
    if (strcmp(err, expected) != 0) fail_msg("for '%s'\n got: %s\nwant: %s", a, err, expected);
}

static void test_options_errors(void **state)
{
    (void)state;
    expect_option_error("blocksz=64", "fixture_valid: unknown option 'blocksz'");
    expect_option_error("blocksize", "fixture_valid: option 'blocksize' is not KEY=VALUE");
    expect_option_error("=3", "fixture_valid: option '=3' is not KEY=VALUE");
    expect_option_error("blocksize=12x",
                        "fixture_valid: bad value for option 'blocksize': '12x' is not an integer");
    expect_option_error("blocksize=", "fixture_valid: bad value for option 'blocksize': '' is not an integer");
    expect_option_error("blocksize= 64",
                        "fixture_valid: bad value for option 'blocksize': ' 64' is not an integer");
    expect_option_error("blocksize=8192",
                        "fixture_valid: bad value for option 'blocksize': 8192 is outside 16..4096");
    expect_option_error("blocksize=15", "fixture_valid: bad value for option 'blocksize': 15 is outside 16..4096");
    expect_option_error("blocksize=99999999999999999999",
                        "fixture_valid: bad value for option 'blocksize': '99999999999999999999' does not fit a "
                        "64-bit integer");
    expect_option_error("ratio=1.5", "fixture_valid: bad value for option 'ratio': 1.5 is outside 0..1");
    expect_option_error("ratio=nan", "fixture_valid: bad value for option 'ratio': 'nan' is not a finite number");
    expect_option_error("ratio=inf", "fixture_valid: bad value for option 'ratio': 'inf' is not a finite number");
    expect_option_error("ratio=0.5.1", "fixture_valid: bad value for option 'ratio': '0.5.1' is not a number");
    expect_option_error("double_quant=maybe", "fixture_valid: bad value for option 'double_quant': 'maybe' is "
                                              "not a boolean (0/1/true/false/yes/no/on/off)");
    expect_option_error("double_quant=2", "fixture_valid: bad value for option 'double_quant': '2' is not a "
                                          "boolean (0/1/true/false/yes/no/on/off)");
    expect_option_error("dtype=int4", "fixture_valid: bad value for option 'dtype': 'int4' is not one of nf4|fp4");
    expect_option_error("dtype=NF4", "fixture_valid: bad value for option 'dtype': 'NF4' is not one of nf4|fp4");
    expect_option_error("dtype=nf", "fixture_valid: bad value for option 'dtype': 'nf' is not one of nf4|fp4");
}

static void test_option_describe(void **state)
{
    (void)state;
    char buf[256];
    const qtool_option_desc *o = valid_plugin->desc->options;
    qt_option_describe(&o[0], buf, sizeof buf);
    assert_string_equal(buf, "blocksize (int, default 64, 16..4096)");
    qt_option_describe(&o[4], buf, sizeof buf);
    assert_string_equal(buf, "dtype (nf4|fp4, default nf4)");
    assert_string_equal(qt_option_type_name(QTOOL_OPT_FLOAT), "float");
    assert_string_equal(qt_option_type_name(99), "?");
}

static void test_create_passes_options_in_order(void **state)
{
    (void)state;
    void *h = pin(fixture("libvalid.so"));
    qtool_option_value *seen = dlsym(h, "fixture_create_opts");
    uint32_t *seen_n = dlsym(h, "fixture_create_n_opts");
    const qtool_host_services **seen_host = dlsym(h, "fixture_create_host");
    assert_non_null(seen);

    qt_plugin_options o;
    assert_int_equal(parse(&o, "dtype=fp4", "blocksize=128"), 0);
    qtool_instance *inst = NULL;
    assert_int_equal(qt_plugin_create(valid_plugin, &o, -1, NULL, &inst), 0);
    assert_non_null(inst);
    assert_int_equal(*seen_n, 5);
    static const char *const order[] = {"blocksize", "ratio", "double_quant", "tag", "dtype"};
    for (int k = 0; k < 5; k++) assert_string_equal(seen[k].name, order[k]);
    assert_int_equal(seen[0].i, 128);
    assert_int_equal(seen[4].i, 1);
    assert_ptr_equal(*seen_host, &valid_plugin->services.table);
    valid_plugin->desc->destroy(inst);
    qt_plugin_options_free(&o);

    /* Defaults when no options are given; a separate services table for a
     * device and stream, reused for the same pair. */
    void *stream = (void *)0x1234;
    assert_int_equal(qt_plugin_create(valid_plugin, NULL, 0, stream, &inst), 0);
    assert_int_equal(seen[0].i, 64);
    const qtool_host_services *h1 = *seen_host;
    assert_ptr_not_equal(h1, &valid_plugin->services.table);
    assert_int_equal(h1->cuda_device, 0);
    assert_ptr_equal(h1->cuda_stream, stream);
    valid_plugin->desc->destroy(inst);
    assert_int_equal(qt_plugin_create(valid_plugin, NULL, 0, stream, &inst), 0);
    assert_ptr_equal(*seen_host, h1);
    valid_plugin->desc->destroy(inst);

    /* A failing create reports the plugin's message. */
    assert_int_equal(parse(&o, "tag=fail", NULL), 0);
    inst = (qtool_instance *)1;
    assert_int_equal(qt_plugin_create(valid_plugin, &o, -1, NULL, &inst), QTOOL_ERR_INVALID_ARGUMENT);
    assert_null(inst);
    assert_string_equal(qt_last_error(), "fixture_valid: tag 'fail' asks create to fail");
    qt_plugin_options_free(&o);
    dlclose(h);
}

int main(void)
{
    /* Only what the tests name: never the build's or the installed plugins. */
    setenv("QTOOL_NO_DEFAULT_PLUGINS", "1", 1);
    unsetenv("QTOOL_PLUGIN_PATH");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_load_valid),
        cmocka_unit_test(test_optional_slots_respect_struct_size),
        cmocka_unit_test(test_discover_folder),
        cmocka_unit_test(test_discover_same_files_once),
        cmocka_unit_test(test_discover_explicit_file_and_missing),
        cmocka_unit_test(test_resolve),
        cmocka_unit_test_setup_teardown(test_options_defaults, setup_valid, teardown_valid),
        cmocka_unit_test_setup_teardown(test_options_each_type, setup_valid, teardown_valid),
        cmocka_unit_test_setup_teardown(test_options_errors, setup_valid, teardown_valid),
        cmocka_unit_test_setup_teardown(test_option_describe, setup_valid, teardown_valid),
        cmocka_unit_test_setup_teardown(test_create_passes_options_in_order, setup_valid, teardown_valid),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    qt_threads_shutdown();
    return rc;
}
