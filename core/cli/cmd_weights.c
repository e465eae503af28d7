/* The bare form: `qtool --plugin NAME --model FILE|DIR` quantizes every 2-D
 * weight and prints a weight-level report; with --data it runs the full
 * evaluation instead (`qtool eval`). */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "cli.h"
#include "cuda_rt.h"
#include "error.h"
#include "plugin_host.h"
#include "tensor.h"
#include "weight_report.h"

static void help(void)
{
    printf("Usage: qtool --plugin NAME --model FILE.safetensors|DIR [options]\n\n"
           "Quantizes every 2-D weight of the checkpoint with the plugin and reports, per tensor,\n"
           "the shape, bytes before and after by category, relative Frobenius error, max abs\n"
           "error and SNR, with totals. No config.json is needed. Writes nothing unless --out.\n\n"
           "Options:\n"
           "  --plugin NAME       quantization plugin (see 'qtool plugins')\n"
           "  --model PATH        .safetensors file, sharded index, or checkpoint folder\n"
           "  --opt KEY=VALUE     plugin option (repeatable)\n"
           "  --device cpu|cuda   where to pack and run (default cpu)\n"
           "  --json              print the report as JSON\n"
           "  --out DIR           also save the packed checkpoint (model.safetensors, config.json)\n"
           "  --data FILE.jsonl   run the full evaluation instead (same as 'qtool eval')\n"
           "  -h, --help          this text\n");
}

static void fmt_bytes(char *buf, size_t len, uint64_t b)
{
    if (b >= (1ull << 30)) snprintf(buf, len, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, len, "%.2f MiB", (double)b / (1ull << 20));
    else if (b >= 1024) snprintf(buf, len, "%.1f KiB", (double)b / 1024);
    else snprintf(buf, len, "%llu B", (unsigned long long)b);
}

static json_t *num_or_null(double v) { return isfinite(v) ? json_real(v) : json_null(); }

static void print_json(const qt_weight_report *r)
{
    json_t *root = json_object(), *rows = json_array();
    json_object_set_new(root, "plugin", json_string(r->plugin));
    json_object_set_new(root, "model", json_string(r->model));
    json_object_set_new(root, "device", json_string(r->device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu"));
    for (size_t i = 0; i < r->n_rows; i++) {
        const qt_weight_row *w = &r->rows[i];
        json_t *o = json_object(), *cat = json_object();
        json_object_set_new(o, "name", json_string(w->name));
        json_object_set_new(o, "shape", json_pack("[II]", (json_int_t)w->n, (json_int_t)w->k));
        json_object_set_new(o, "dtype", json_string(qt_dtype_name(w->src_dtype)));
        json_object_set_new(o, "bytes_before", json_integer((json_int_t)w->bytes_before));
        if (w->skipped) {
            json_object_set_new(o, "skipped", json_string(w->note ? w->note : ""));
        } else {
            for (int c = 0; c < QTOOL_MEM_COUNT; c++)
                if (w->bytes_after[c])
                    json_object_set_new(cat, qt_mem_category_name(c), json_integer((json_int_t)w->bytes_after[c]));
            json_object_set_new(o, "bytes_after", json_integer((json_int_t)w->bytes_after_total));
            json_object_set_new(o, "bytes_after_by_category", cat);
            cat = NULL;
            json_object_set_new(o, "rel_fro_error", num_or_null(w->rel_fro));
            json_object_set_new(o, "max_abs_error", num_or_null(w->max_abs));
            json_object_set_new(o, "snr_db", num_or_null(w->snr_db));
            json_object_set_new(o, "pack_seconds", json_real(w->seconds));
        }
        json_decref(cat);
        json_array_append_new(rows, o);
    }
    json_object_set_new(root, "tensors", rows);
    json_t *tot = json_object();
    json_object_set_new(tot, "bytes_before", json_integer((json_int_t)r->total_before));
    json_object_set_new(tot, "bytes_after", json_integer((json_int_t)r->total_after));
    json_object_set_new(tot, "compression", num_or_null(r->total_after ? (double)r->total_before / (double)r->total_after : NAN));
    json_object_set_new(tot, "bytes_kept_unquantized", json_integer((json_int_t)r->other_bytes));
    json_object_set_new(tot, "seconds", json_real(r->seconds));
    json_object_set_new(root, "totals", tot);
    char *s = json_dumps(root, JSON_INDENT(2));
    puts(s);
    free(s);
    json_decref(root);
}

static void print_table(const qt_weight_report *r)
{
    int used[QTOOL_MEM_COUNT] = {0};
    size_t namew = 6;
    for (size_t i = 0; i < r->n_rows; i++) {
        for (int c = 0; c < QTOOL_MEM_COUNT; c++) used[c] |= r->rows[i].bytes_after[c] != 0;
        size_t l = strlen(r->rows[i].name);
        if (l > namew) namew = l;
    }
    if (namew > 60) namew = 60;
    printf("%s on %s (%s)\n\n", r->plugin, r->model, r->device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu");
    printf("%-*s %-14s %11s %11s", (int)namew, "tensor", "shape", "before", "after");
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        if (used[c]) printf(" %13s", qt_mem_category_name(c));
    printf(" %10s %10s %8s %8s\n", "rel_fro", "max_abs", "SNR dB", "ms");
    char b1[32], b2[32], b3[32], shape[48];
    for (size_t i = 0; i < r->n_rows; i++) {
        const qt_weight_row *w = &r->rows[i];
        const char *nm = w->name;
        size_t l = strlen(nm);
        if (l > namew) nm += l - namew;
        snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)w->n, (long long)w->k);
        fmt_bytes(b1, sizeof b1, w->bytes_before);
        if (w->skipped) {
            printf("%-*s %-14s %11s   kept: %s\n", (int)namew, nm, shape, b1, w->note ? w->note : "");
            continue;
        }
        fmt_bytes(b2, sizeof b2, w->bytes_after_total);
        printf("%-*s %-14s %11s %11s", (int)namew, nm, shape, b1, b2);
        for (int c = 0; c < QTOOL_MEM_COUNT; c++)
            if (used[c]) {
                fmt_bytes(b3, sizeof b3, w->bytes_after[c]);
                printf(" %13s", b3);
            }
        printf(" %10.3e %10.3e %8.2f %8.2f\n", w->rel_fro, w->max_abs, w->snr_db, w->seconds * 1e3);
    }
    fmt_bytes(b1, sizeof b1, r->total_before);
    fmt_bytes(b2, sizeof b2, r->total_after);
    fmt_bytes(b3, sizeof b3, r->other_bytes);
    size_t nq = 0;
    for (size_t i = 0; i < r->n_rows; i++) nq += !r->rows[i].skipped;
    printf("\ntotal: %zu tensors quantized, %s -> %s", nq, b1, b2);
    if (r->total_after) printf(" (%.2fx smaller)", (double)r->total_before / (double)r->total_after);
    printf("; %s kept as they are; %.2f s\n", b3, r->seconds);
}

int cmd_weights(int argc, char **argv)
{
    static const struct option opts[] = {
        {"plugin", required_argument, 0, 'p'}, {"model", required_argument, 0, 'm'},
        {"opt", required_argument, 0, 'o'},    {"device", required_argument, 0, 'd'},
        {"json", no_argument, 0, 'j'},         {"out", required_argument, 0, 'O'},
        {"data", required_argument, 0, 'D'},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    const char *plugin = NULL, *model = NULL, *out_dir = NULL, *data = NULL;
    int json = 0, device = QTOOL_DEVICE_CPU, c;
    char **kv = calloc((size_t)argc + 1, sizeof *kv);
    size_t n_kv = 0;
    if (!kv) return qt_cli_runtime_error();
    /* Pass everything through to eval when --data is present. */
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--data") == 0 || strncmp(argv[i], "--data=", 7) == 0) data = argv[i];
    if (data) {
        free(kv);
        argv[0] = (char *)"eval";
        return cmd_eval(argc, argv);
    }
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'p': plugin = optarg; break;
        case 'm': model = optarg; break;
        case 'o': kv[n_kv++] = optarg; break;
        case 'd':
            if (strcmp(optarg, "cpu") == 0) device = QTOOL_DEVICE_CPU;
            else if (strcmp(optarg, "cuda") == 0) device = QTOOL_DEVICE_CUDA;
            else {
                free(kv);
                return qt_cli_usage_error(NULL, "--device must be cpu or cuda, not '%s'", optarg);
            }
            break;
        case 'j': json = 1; break;
        case 'O': out_dir = optarg; break;
        case 'h': help(); free(kv); return QT_EXIT_OK;
        default:
            free(kv);
            return qt_cli_usage_error(NULL, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) {
        free(kv);
        return qt_cli_usage_error(NULL, "unexpected argument '%s'", argv[optind]);
    }
    if (!plugin || !model) {
        free(kv);
        return qt_cli_usage_error(NULL, "the bare form needs --plugin NAME and --model PATH");
    }

    int rc = QT_EXIT_OK;
    qt_plugin_set set = {0};
    qt_plugin_options po = {0};
    qtool_instance *inst = NULL;
    qt_plugin *p = NULL;
    void *stream = NULL;
    qt_weight_report rep = {0};
    if (qt_plugins_discover(&set, qt_cli_plugin_path, 1) || qt_plugins_resolve(&set, plugin, &p)) {
        rc = qt_cli_runtime_error();
        goto done;
    }
    if (qt_plugin_parse_options(p, kv, n_kv, &po)) {
        rc = qt_cli_usage_error(NULL, "%s", qt_last_error());
        goto done;
    }
    if (!(p->desc->devices & (1u << device))) {
        qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s does not run on %s", p->desc->name,
                device == QTOOL_DEVICE_CUDA ? "CUDA" : "the CPU");
        rc = qt_cli_runtime_error();
        goto done;
    }
    if (device == QTOOL_DEVICE_CUDA) {
        char why[256];
        if (qt_cuda_device_count(why, sizeof why) == 0) {
            qt_fail(QTOOL_ERR_UNSUPPORTED, "--device cuda: no CUDA device (%s)", why);
            rc = qt_cli_runtime_error();
            goto done;
        }
        if (qt_cuda_set_device(0) || qt_cuda_stream_create(&stream)) {
            rc = qt_cli_runtime_error();
            goto done;
        }
    }
    if (qt_plugin_create(p, &po, device == QTOOL_DEVICE_CUDA ? 0 : -1, stream, &inst)) {
        rc = qt_cli_runtime_error();
        goto done;
    }
    qt_weight_report_opts wo = {.device = device, .out_dir = out_dir, .progress = !json && qt_log_level() >= QTOOL_LOG_DEBUG};
    if (qt_weight_report_run(p, inst, model, &wo, &rep)) {
        rc = qt_cli_runtime_error();
        goto done;
    }
    if (json) print_json(&rep);
    else print_table(&rep);
    if (out_dir && !json) printf("saved to %s\n", out_dir);
done:
    qt_weight_report_free(&rep);
    if (inst) p->desc->destroy(inst);
    qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    qt_cuda_stream_destroy(stream);
    free(kv);
    return rc;
}
