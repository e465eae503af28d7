/* qtool probe: the devices here and which plugins can run on each, and if
 * not, why. `--as CARD` asks the same question for a card that is not here. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "device.h"
#include "error.h"
#include "plugin_host.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool [--plugin-path PATH] probe [--json] [--as CARD]\n\n"
            "Lists the CUDA devices (or why there are none) and the CPU, then tells for\n"
            "every plugin and every device whether it can run there and, if not, why.\n\n"
            "  --as CARD    judge the plugins for a card that is not here instead:\n"
            "               %s\n"
            "  --json       one JSON object: {\"devices\": [...], \"cpu\": {...},\n"
            "               \"plugins\": [{\"name\", \"device\", \"supported\", \"reason\"}], \"simulated\": bool}\n"
            "  -h, --help   this text\n",
            qt_device_simulated_names());
}

static void version_str(int v, char *buf, size_t len)
{
    if (v > 0) snprintf(buf, len, "%d.%d", v / 1000, (v % 1000) / 10);
    else snprintf(buf, len, "unknown");
}

static double gib(uint64_t bytes) { return (double)bytes / (1024.0 * 1024.0 * 1024.0); }

static void print_cuda_line(const qtool_device_info *d)
{
    char drv[16], rt[16];
    version_str(d->driver_version, drv, sizeof drv);
    version_str(d->runtime_version, rt, sizeof rt);
    if (d->simulated) {
        printf("  simulated: %s, compute capability %d.%d", d->name, d->cc_major, d->cc_minor);
        if (d->total_memory) printf(", %.1f GiB", gib(d->total_memory));
        if (d->multiprocessors) printf(", %d multiprocessors", d->multiprocessors);
        printf("\n");
        return;
    }
    printf("  cuda:%d  %s, compute capability %d.%d, %.1f GiB, %d multiprocessors, driver %s, runtime %s\n",
           d->index, d->name, d->cc_major, d->cc_minor, gib(d->total_memory), d->multiprocessors, drv, rt);
}

static json_t *cuda_json(const qtool_device_info *d)
{
    char label[64], cc[16], drv[16], rt[16];
    snprintf(cc, sizeof cc, "%d.%d", d->cc_major, d->cc_minor);
    version_str(d->driver_version, drv, sizeof drv);
    version_str(d->runtime_version, rt, sizeof rt);
    json_t *o = json_object();
    json_object_set_new(o, "device", json_string(qt_device_label(d, label, sizeof label)));
    json_object_set_new(o, "index", json_integer(d->index));
    json_object_set_new(o, "name", json_string(d->name));
    json_object_set_new(o, "compute_capability", json_string(cc));
    json_object_set_new(o, "memory_bytes", json_integer((json_int_t)d->total_memory));
    json_object_set_new(o, "multiprocessors", json_integer(d->multiprocessors));
    json_object_set_new(o, "shared_memory_per_block_optin", json_integer((json_int_t)d->shared_memory_per_block_optin));
    json_object_set_new(o, "driver_version", d->simulated ? json_null() : json_string(drv));
    json_object_set_new(o, "runtime_version", d->simulated ? json_null() : json_string(rt));
    json_object_set_new(o, "simulated", json_boolean(d->simulated));
    return o;
}

static json_t *cpu_json(const qtool_device_info *d)
{
    static const struct { uint32_t bit; const char *name; } feats[] = {
        {QTOOL_CPU_AVX2, "avx2"}, {QTOOL_CPU_FMA, "fma"}, {QTOOL_CPU_AVX512F, "avx512f"},
        {QTOOL_CPU_AVX512BW, "avx512bw"}, {QTOOL_CPU_AVX512VNNI, "avx512vnni"}, {QTOOL_CPU_F16C, "f16c"}};
    json_t *o = json_object(), *f = json_array();
    for (size_t i = 0; i < sizeof feats / sizeof feats[0]; i++)
        if (d->cpu_features & feats[i].bit) json_array_append_new(f, json_string(feats[i].name));
    json_object_set_new(o, "device", json_string("cpu"));
    json_object_set_new(o, "name", json_string(d->name));
    json_object_set_new(o, "threads", json_integer(d->cpu_threads));
    json_object_set_new(o, "memory_bytes", json_integer((json_int_t)d->total_memory));
    json_object_set_new(o, "features", f);
    return o;
}

int cmd_probe(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"as", required_argument, NULL, 'a'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int json = 0;
    const char *as = NULL;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'a': as = optarg; break;
        case 'h': usage(stdout); return QT_EXIT_OK;
        case ':': return qt_cli_usage_error(argv[0], "option '%s' needs a value", argv[optind - 1]);
        default: return qt_cli_usage_error(argv[0], "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return qt_cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind]);

    qtool_device_info sim;
    if (as && qt_device_simulate(as, &sim) != 0) return qt_cli_usage_error(argv[0], "%s", qt_last_error());

    qt_device_list devs;
    if (qt_devices_query(&devs) != 0) return qt_cli_runtime_error();
    qt_plugin_set set;
    memset(&set, 0, sizeof set);
    if (qt_plugins_discover(&set, qt_cli_plugin_path, 1) != 0) {
        qt_devices_free(&devs);
        return qt_cli_runtime_error();
    }

    /* The devices the verdicts are about. */
    int n_targets = as ? 1 : devs.n_cuda + 1;
    qtool_device_info *targets = calloc((size_t)n_targets, sizeof *targets);
    if (!targets) {
        qt_plugins_free(&set);
        qt_devices_free(&devs);
        qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        return qt_cli_runtime_error();
    }
    if (as) {
        targets[0] = sim;
    } else {
        for (int i = 0; i < devs.n_cuda; i++) targets[i] = devs.cuda[i];
        targets[devs.n_cuda] = devs.cpu;
    }

    char feats[128], label[64], reason[512];
    qt_cpu_features_str(devs.cpu.cpu_features, feats, sizeof feats);
    if (json) {
        json_t *root = json_object(), *jd = json_array(), *jp = json_array(), *jr = json_array();
        for (int i = 0; i < devs.n_cuda; i++) json_array_append_new(jd, cuda_json(&devs.cuda[i]));
        json_object_set_new(root, "devices", jd);
        json_object_set_new(root, "no_cuda_reason", devs.n_cuda ? json_null() : json_string(devs.no_cuda_reason));
        json_object_set_new(root, "cpu", cpu_json(&devs.cpu));
        json_object_set_new(root, "simulated", json_boolean(as != NULL));
        if (as) json_object_set_new(root, "simulated_device", cuda_json(&sim));
        for (size_t k = 0; k < set.n; k++) {
            const qtool_plugin_desc *d = set.plugins[k]->desc;
            for (int t = 0; t < n_targets; t++) {
                int ok = qt_device_plugin_supported(d, &targets[t], reason, sizeof reason);
                json_t *e = json_object();
                json_object_set_new(e, "name", json_string(d->name));
                json_object_set_new(e, "device", json_string(qt_device_label(&targets[t], label, sizeof label)));
                json_object_set_new(e, "device_name", json_string(targets[t].name));
                json_object_set_new(e, "supported", json_boolean(ok));
                json_object_set_new(e, "reason", ok ? json_null() : json_string(reason));
                json_array_append_new(jp, e);
            }
        }
        json_object_set_new(root, "plugins", jp);
        for (size_t k = 0; k < set.n_refused; k++) {
            json_t *e = json_object();
            json_object_set_new(e, "path", json_string(set.refused[k].path));
            json_object_set_new(e, "reason", json_string(set.refused[k].reason));
            json_array_append_new(jr, e);
        }
        json_object_set_new(root, "refused", jr);
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text) {
            printf("%s\n", text);
            free(text);
        }
        json_decref(root);
    } else {
        if (devs.n_cuda) {
            printf("CUDA devices:\n");
            for (int i = 0; i < devs.n_cuda; i++) print_cuda_line(&devs.cuda[i]);
        } else {
            printf("no CUDA device: %s\n", devs.no_cuda_reason);
        }
        printf("CPU: %s, %d threads%s%s\n", devs.cpu.name, devs.cpu.cpu_threads, feats[0] ? ", " : "", feats);
        if (as) {
            printf("Simulated card (--as %s):\n", as);
            print_cuda_line(&sim);
        }
        for (int t = 0; t < n_targets; t++) {
            const qtool_device_info *d = &targets[t];
            if (d->kind == QTOOL_DEVICE_CPU)
                printf("\nPlugins on cpu (%s):\n", d->name);
            else if (d->simulated)
                printf("\nPlugins on %s (simulated, compute capability %d.%d):\n", d->name, d->cc_major,
                       d->cc_minor);
            else
                printf("\nPlugins on %s (%s, compute capability %d.%d):\n",
                       qt_device_label(d, label, sizeof label), d->name, d->cc_major, d->cc_minor);
            if (set.n == 0) printf("  no plugins found\n");
            for (size_t k = 0; k < set.n; k++) {
                const qtool_plugin_desc *pd = set.plugins[k]->desc;
                int ok = qt_device_plugin_supported(pd, d, reason, sizeof reason);
                printf("  %s: %s\n", pd->name, ok ? "OK" : reason);
            }
        }
        if (set.n_refused) {
            printf("\nRefused plugin files:\n");
            for (size_t k = 0; k < set.n_refused; k++)
                printf("  %s: %s\n", set.refused[k].path, set.refused[k].reason);
        }
        if (set.n == 0 && set.n_searched) {
            printf("\nSearched for plugins in:");
            for (size_t k = 0; k < set.n_searched; k++) printf(" %s", set.searched[k]);
            printf("\n");
        }
    }
    free(targets);
    qt_plugins_free(&set);
    qt_devices_free(&devs);
    return QT_EXIT_OK;
}
