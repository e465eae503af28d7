/* qtool sweep: every model x every plugin from sweep.ini, then the report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli.h"
#include "device.h"
#include "error.h"
#include "plugin_host.h"
#include "sweep.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool [--plugin-path PATH] sweep --config sweep.ini [options]\n\n"
            "Runs `qtool eval` for every model x every plugin the probe allows, each in its own\n"
            "process (a crash or OOM becomes a failed cell), keeps each finished cell in\n"
            "DIR/cells/ (a rerun skips them), then writes DIR/results.json, results.csv,\n"
            "report.md and report.html. sweep.ini: docs/measurements.md.\n\n"
            "  --config FILE     the sweep description (INI)\n"
            "  --retry-failed    run cells recorded as failed again\n"
            "  --force           run every cell again\n"
            "  --no-report       stop after results.json\n"
            "  --quiet           no progress lines\n"
            "  -h, --help        this text\n\n"
            "QTOOL_SWEEP_CELL_CMD=CMD runs CMD (through /bin/sh, with the eval arguments\n"
            "appended) instead of `qtool eval`, and takes [plugins] list= as runnable.\n");
}

/* Every installed plugin, with whether it can run here, where, and why
 * not. The envelope's device says where the model will be deployed, so
 * cells run there: "cpu" runs everything on the CPU; anything else (or no
 * device) runs on the first CUDA device when there is one and the plugin
 * supports it, else on the CPU. */
static int probe_plugins(const char *env_device, qt_sweep_plugin **out, size_t *n_out)
{
    int cpu_only = env_device && strcasecmp(env_device, "cpu") == 0;
    *out = NULL;
    *n_out = 0;
    qt_plugin_set set = {0};
    int rc = qt_plugins_discover(&set, qt_cli_plugin_path, 1);
    if (rc) return rc;
    qt_device_list devs = {0};
    if ((rc = qt_devices_query(&devs))) {
        qt_plugins_free(&set);
        return rc;
    }
    qt_sweep_plugin *p = calloc(set.n + set.n_refused + 1, sizeof *p);
    if (!p) {
        qt_devices_free(&devs);
        qt_plugins_free(&set);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    size_t n = 0;
    for (size_t i = 0; i < set.n; i++) {
        const qtool_plugin_desc *d = set.plugins[i]->desc;
        qt_sweep_plugin *x = &p[n++];
        x->name = strdup(d->name);
        x->version = d->version ? strdup(d->version) : NULL;
        x->weight_bits = d->weight_bits;
        x->activation_bits = d->activation_bits;
        x->baseline = (d->flags & QTOOL_PLUGIN_BASELINE) != 0;
        x->needs_calibration = (d->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION) != 0;
        char cuda_why[512] = "", cpu_why[512] = "", why[1100];
        int ok = 0;
        if (devs.n_cuda > 0 && !cpu_only) {
            ok = qt_device_plugin_supported(d, &devs.cuda[0], cuda_why, sizeof cuda_why);
            if (ok) x->device = "cuda";
        }
        if (!ok) {
            ok = qt_device_plugin_supported(d, &devs.cpu, cpu_why, sizeof cpu_why);
            if (ok) x->device = "cpu";
        }
        x->allowed = ok;
        if (!ok) {
            if (devs.n_cuda > 0 && !cpu_only)
                snprintf(why, sizeof why, "cuda:0: %s; cpu: %s", cuda_why, cpu_why);
            else if (cpu_only)
                snprintf(why, sizeof why, "%s (the envelope's device is the CPU)", cpu_why);
            else
                snprintf(why, sizeof why, "%s (no CUDA device: %s)", cpu_why, devs.no_cuda_reason);
            x->reason = strdup(why);
        }
    }
    /* Files the host refused to load are listed by path. */
    for (size_t i = 0; i < set.n_refused; i++) {
        const char *path = set.refused[i].path ? set.refused[i].path : "?";
        const char *base = strrchr(path, '/');
        base = base ? base + 1 : path;
        char name[128];
        /* libqtool_NAME.so -> NAME, so a listed plugin gets the real reason. */
        if (strncmp(base, "libqtool_", 9) == 0) base += 9;
        else if (strncmp(base, "lib", 3) == 0) base += 3;
        snprintf(name, sizeof name, "%s", base);
        char *dot = strstr(name, ".so");
        if (dot) *dot = '\0';
        qt_sweep_plugin *x = &p[n++];
        x->name = strdup(name);
        x->weight_bits = x->activation_bits = -1;
        x->reason = strdup(set.refused[i].reason ? set.refused[i].reason : "refused by the plugin host");
    }
    qt_devices_free(&devs);
    qt_plugins_free(&set);
    for (size_t i = 0; i < n; i++)
        if (!p[i].name || (!p[i].allowed && !p[i].reason)) {
            qt_sweep_plugins_free(p, n);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
    *out = p;
    *n_out = n;
    return 0;
}

int cmd_sweep(int argc, char **argv)
{
    const char *cmd = argv[0];
    static const struct option opts[] = {{"config", required_argument, NULL, 'c'},
                                         {"retry-failed", no_argument, NULL, 'r'},
                                         {"force", no_argument, NULL, 'f'},
                                         {"no-report", no_argument, NULL, 'n'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *config = NULL;
    qt_sweep_options so = {0};
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config = optarg; break;
        case 'r': so.retry_failed = 1; break;
        case 'f': so.force = 1; break;
        case 'n': so.no_report = 1; break;
        case 'q': so.quiet = 1; break;
        case 'h': usage(stdout); return QT_EXIT_OK;
        default: return qt_cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return qt_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!config) return qt_cli_usage_error(cmd, "--config sweep.ini is required");

    qt_sweep_config cfg;
    if (qt_sweep_config_load(config, &cfg)) return qt_cli_runtime_error();
    const char *sub = getenv("QTOOL_SWEEP_CELL_CMD");
    so.cell_cmd = sub && *sub ? sub : NULL;
    qt_sweep_plugin *plugins = NULL;
    size_t n_plugins = 0;
    int rc = 0;
    if (!so.cell_cmd) rc = probe_plugins(cfg.env.device, &plugins, &n_plugins);
    size_t n_failed = 0;
    if (!rc) rc = qt_sweep_run(&cfg, plugins, n_plugins, &so, &n_failed);
    qt_sweep_plugins_free(plugins, n_plugins);
    qt_sweep_config_free(&cfg);
    if (rc) return qt_cli_runtime_error();
    if (n_failed && !so.quiet)
        fprintf(stderr, "sweep: %zu cell(s) failed; see the report and DIR/cells/*.stderr.log\n", n_failed);
    return QT_EXIT_OK;
}
