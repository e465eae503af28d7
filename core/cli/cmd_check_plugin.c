/* qtool check-plugin: the conformance suite (core/conformance.c) over one
 * plugin, by name or by path. Exit 0 only when no check failed. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "conformance.h"
#include "error.h"
#include "plugin_host.h"

#if defined(__SANITIZE_ADDRESS__)
#define QT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QT_ASAN 1
#endif
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool [--plugin-path PATH] check-plugin PATH|NAME [--opt K=V]... [--device cpu|cuda|all]\n"
            "                                  [--seed N] [--cuda-device N] [--json] [-v]\n\n"
            "Runs the conformance suite on one plugin (a .so path or the name of an\n"
            "installed plugin): descriptor sanity; matmul against a float64 reference at\n"
            "M in {1, 3, 17, 129} and awkward (K, N); CPU/CUDA agreement; memory() against\n"
            "the allocator, no leaks; bad arguments rejected; save/load round trip.\n"
            "Each check prints PASS, FAIL or SKIP with details. Tolerances: docs/conformance.md.\n\n"
            "  --opt K=V         plugin option (repeatable)\n"
            "  --device D        cpu, cuda or all (default all; CUDA checks skip without a device)\n"
            "  --seed N          input seed (default: from the clock; printed for reruns)\n"
            "  --cuda-device N   CUDA ordinal to test on (default 0)\n"
            "  --json            one JSON object instead of lines\n"
            "  -v, --verbose     keep the plugin's log lines during bad-argument checks\n"
            "  -h, --help        this text\n\n"
            "Exit status: 0 when nothing failed, 1 when a check failed or the plugin did\n"
            "not load, 2 on a usage error.\n");
}

static const char *verdict_name(int v) { return v == QT_CONF_PASS ? "PASS" : v == QT_CONF_FAIL ? "FAIL" : "SKIP"; }

static void print_result(const qt_conf_result *r, void *ctx)
{
    (void)ctx;
    printf("%s  %-10s %-26s %s\n", verdict_name(r->verdict), r->device[0] ? r->device : "-", r->check, r->detail);
    fflush(stdout);
}

#ifndef QT_ASAN
/* A plugin that crashes takes the process down; say which check it was. */
static void on_crash(int sig)
{
    const char *what = qt_conformance_current();
    char buf[256];
    int n = snprintf(buf, sizeof buf, "FAIL  plugin crashed with signal %d during '%s'\n", sig, what);
    if (n > 0) {
        ssize_t w = write(STDOUT_FILENO, buf, (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
        (void)w;
    }
    _exit(QT_EXIT_RUNTIME);
}
#endif

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || s[0] == '-') return -1;
    *out = v;
    return 0;
}

int cmd_check_plugin(int argc, char **argv)
{
    static const struct option opts[] = {
        {"opt", required_argument, NULL, 'o'},       {"device", required_argument, NULL, 'd'},
        {"seed", required_argument, NULL, 's'},      {"cuda-device", required_argument, NULL, 'c'},
        {"json", no_argument, NULL, 'j'},            {"verbose", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},            {NULL, 0, NULL, 0},
    };
    int json = 0, verbose = 0, have_seed = 0;
    uint64_t seed = 0, cuda_dev = 0;
    uint32_t devices = 0;
    char **kv = calloc((size_t)argc + 1, sizeof *kv);
    size_t n_kv = 0;
    if (!kv) {
        qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        return qt_cli_runtime_error();
    }
    optind = 0;
    opterr = 0;
    int c, rc = QT_EXIT_OK;
    while ((c = getopt_long(argc, argv, ":hv", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            if (!strchr(optarg, '=')) {
                rc = qt_cli_usage_error(argv[0], "--opt wants KEY=VALUE, got '%s'", optarg);
                goto done;
            }
            kv[n_kv++] = optarg;
            break;
        case 'd':
            if (strcmp(optarg, "cpu") == 0) devices = QTOOL_DEVMASK_CPU;
            else if (strcmp(optarg, "cuda") == 0) devices = QTOOL_DEVMASK_CUDA;
            else if (strcmp(optarg, "all") == 0) devices = QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA;
            else {
                rc = qt_cli_usage_error(argv[0], "--device must be cpu, cuda or all, not '%s'", optarg);
                goto done;
            }
            break;
        case 's':
            if (parse_u64(optarg, &seed) != 0) {
                rc = qt_cli_usage_error(argv[0], "--seed wants a non-negative integer, not '%s'", optarg);
                goto done;
            }
            have_seed = 1;
            break;
        case 'c':
            if (parse_u64(optarg, &cuda_dev) != 0 || cuda_dev > 1024) {
                rc = qt_cli_usage_error(argv[0], "--cuda-device wants a device ordinal, not '%s'", optarg);
                goto done;
            }
            break;
        case 'j': json = 1; break;
        case 'v': verbose = 1; break;
        case 'h':
            usage(stdout);
            goto done;
        case ':': rc = qt_cli_usage_error(argv[0], "option '%s' needs a value", argv[optind - 1]); goto done;
        default: rc = qt_cli_usage_error(argv[0], "unknown option '%s'", argv[optind - 1]); goto done;
        }
    }
    if (optind >= argc) {
        rc = qt_cli_usage_error(argv[0], "which plugin? give a name or a path to a .so");
        goto done;
    }
    if (optind + 1 < argc) {
        rc = qt_cli_usage_error(argv[0], "one plugin at a time; unexpected '%s'", argv[optind + 1]);
        goto done;
    }
    const char *target = argv[optind];
    if (!have_seed) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        seed = ((uint64_t)ts.tv_sec * 1000003u) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 20);
        seed %= 1000000000u; /* short enough to retype */
    }

    /* A path is loaded on its own (an installed plugin of the same name
     * must not shadow the file under test); a name goes through discovery. */
    qt_plugin_set set;
    memset(&set, 0, sizeof set);
    qt_plugin *p = NULL, *own = NULL;
    int is_path = strchr(target, '/') != NULL ||
                  (strlen(target) > 3 && strcmp(target + strlen(target) - 3, ".so") == 0);
    if (is_path) {
        if (qt_plugin_load(target, &own) != 0) {
            rc = qt_cli_runtime_error();
            goto done;
        }
        p = own;
    } else {
        if (qt_plugins_discover(&set, qt_cli_plugin_path, 1) != 0) {
            rc = qt_cli_runtime_error();
            goto done;
        }
        p = qt_plugins_find(&set, target);
        if (!p) {
            qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "no plugin named '%s' (%zu found; 'qtool plugins' lists them)",
                    target, set.n);
            rc = qt_cli_runtime_error();
            qt_plugins_free(&set);
            goto done;
        }
    }

    /* Options are checked before anything runs, as a usage error. */
    qt_plugin_options probe_opts;
    if (qt_plugin_parse_options(p, kv, n_kv, &probe_opts) != 0) {
        rc = qt_cli_usage_error(argv[0], "%s", qt_last_error());
        goto unload;
    }
    qt_plugin_options_free(&probe_opts);

#ifndef QT_ASAN
    signal(SIGSEGV, on_crash);
    signal(SIGBUS, on_crash);
    signal(SIGFPE, on_crash);
    signal(SIGILL, on_crash);
    signal(SIGABRT, on_crash);
#endif
    qt_conf_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.options = kv;
    cfg.n_options = n_kv;
    cfg.devices = devices;
    cfg.seed = seed;
    cfg.cuda_device = (int)cuda_dev;
    cfg.verbose = verbose;
    if (!json) {
        cfg.on_result = print_result;
        printf("qtool check-plugin: %s %s (%s), seed %" PRIu64 "\n", p->desc->name, p->desc->version, p->path, seed);
        fflush(stdout);
    }
    qt_conf_report rep;
    int run_rc = qt_conformance_run(p, &cfg, &rep);
#ifndef QT_ASAN
    signal(SIGSEGV, SIG_DFL);
    signal(SIGBUS, SIG_DFL);
    signal(SIGFPE, SIG_DFL);
    signal(SIGILL, SIG_DFL);
    signal(SIGABRT, SIG_DFL);
#endif
    if (json) {
        json_t *root = json_object(), *res = json_array(), *pl = json_object();
        json_object_set_new(pl, "name", json_string(p->desc->name));
        json_object_set_new(pl, "version", json_string(p->desc->version));
        json_object_set_new(pl, "path", json_string(p->path));
        json_object_set_new(root, "plugin", pl);
        json_object_set_new(root, "seed", json_integer((json_int_t)(seed & 0x7FFFFFFFFFFFFFFFULL)));
        for (size_t i = 0; i < rep.n; i++) {
            json_t *e = json_object();
            json_object_set_new(e, "verdict", json_string(verdict_name(rep.results[i].verdict)));
            json_object_set_new(e, "check", json_string(rep.results[i].check));
            json_object_set_new(e, "device", json_string(rep.results[i].device));
            json_object_set_new(e, "detail", json_string(rep.results[i].detail));
            json_array_append_new(res, e);
        }
        json_object_set_new(root, "results", res);
        json_object_set_new(root, "passed", json_integer(rep.n_pass));
        json_object_set_new(root, "failed", json_integer(rep.n_fail));
        json_object_set_new(root, "skipped", json_integer(rep.n_skip));
        if (run_rc != 0) json_object_set_new(root, "error", json_string(qt_last_error()));
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text) {
            printf("%s\n", text);
            free(text);
        }
        json_decref(root);
    } else {
        printf("%d passed, %d failed, %d skipped (seed %" PRIu64 ")\n", rep.n_pass, rep.n_fail, rep.n_skip, seed);
    }
    if (run_rc != 0) {
        if (!json) rc = qt_cli_runtime_error();
        else rc = QT_EXIT_RUNTIME;
    } else {
        rc = rep.n_fail ? QT_EXIT_RUNTIME : QT_EXIT_OK;
    }
    qt_conf_report_free(&rep);
unload:
    if (own) qt_plugin_unload(own);
    else qt_plugins_free(&set);
done:
    free(kv);
    return rc;
}
