/* qtool eval: one model x one plugin on a JSONL dataset -> accuracy,
 * ms/example, and optionally the logits. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cli.h"
#include "cuda_rt.h"
#include "data.h"
#include "device.h"
#include "error.h"
#include "model.h"
#include "plugin_host.h"
#include "safetensors.h"
#include "tensor.h"
#include "threads.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool eval --model DIR|FILE.safetensors --plugin NAME --data FILE.jsonl [options]\n\n"
            "Runs a Hugging Face sequence classifier (BERT, ModernBERT, Qwen2, Llama) with every Linear of\n"
            "its blocks packed by the plugin, on tokenized examples {\"input_ids\": [...], \"label\": ...},\n"
            "and prints accuracy, ms/example and a one-line summary.\n\n"
            "Options:\n"
            "  --model PATH          checkpoint folder (config.json + safetensors, sharded or not) or a\n"
            "                        .safetensors file (with --config, or config.json beside it)\n"
            "  --config FILE         config.json to use\n"
            "  --plugin NAME|PATH    quantization plugin (see 'qtool plugins')\n"
            "  --opt KEY=VALUE       plugin option (repeatable)\n"
            "  --data FILE.jsonl     evaluation examples; labels are class ids or label names\n"
            "  --device cpu|cuda     where to pack and run (default cpu; cuda uses device 0)\n"
            "  --batch N             examples per forward pass (default 32)\n"
            "  --max-length N        keep the first N tokens of longer examples (default: the\n"
            "                        model's max_position_embeddings)\n"
            "  --calib FILE.jsonl    calibration examples for plugins that need them\n"
            "  --calib-n N           use at most N calibration examples (default 128)\n"
            "  --threads N           CPU threads (default: all, or QTOOL_NUM_THREADS)\n"
            "  --logits-out FILE     write tensor 'logits' F32 [N, num_labels] (input order)\n"
            "  --hidden-out FILE     write tensor 'pooled' F32 [N, hidden]: the pooled final hidden\n"
            "                        state entering the classification head\n"
            "  -h, --help            this text\n");
}

static int parse_pos(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return qt_cli_usage_error(cmd, "%s needs an integer in [%" PRId64 ", %" PRId64 "], not '%s'", opt, lo, hi, s);
    *out = v;
    return 0;
}

static int64_t label_lookup(void *ctx, const char *name)
{
    return qt_model_label_id(ctx, name);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_bytes(char *buf, size_t len, uint64_t b)
{
    if (b >= (1ull << 30)) snprintf(buf, len, "%.2f GiB", (double)b / (1ull << 30));
    else if (b >= (1ull << 20)) snprintf(buf, len, "%.2f MiB", (double)b / (1ull << 20));
    else snprintf(buf, len, "%.1f KiB", (double)b / 1024);
}

/* Writes one F32 tensor as a safetensors file (atomically). */
static int write_tensor(const char *path, const char *name, const float *data, int64_t rows, int64_t cols,
                        const char *model, const char *plugin, const char *dev)
{
    qt_st_writer *w = qt_st_writer_new();
    if (!w) return QTOOL_ERR_OUT_OF_MEMORY;
    qtool_tensor t = {0};
    t.data = (void *)data;
    t.dtype = QTOOL_DTYPE_F32;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = rows;
    t.shape[1] = cols;
    int rc = qt_st_writer_add(w, name, &t);
    if (!rc) rc = qt_st_writer_set_metadata(w, "model", model);
    if (!rc) rc = qt_st_writer_set_metadata(w, "plugin", plugin);
    if (!rc) rc = qt_st_writer_set_metadata(w, "device", dev);
    if (!rc) rc = qt_st_writer_commit(w, path);
    qt_st_writer_free(w);
    return rc;
}

/* Calibration over the first `limit` examples of a JSONL file. */
static int calibrate(qt_model *m, const qt_plugin *p, qtool_instance *inst, const char *path, int64_t limit,
                     int64_t batch, const qt_data_options *dopt)
{
    qt_dataset cd;
    int rc = qt_data_load(path, dopt, &cd);
    if (rc) return rc;
    int64_t n = cd.n < limit ? cd.n : limit;
    const int32_t **ids = malloc((size_t)batch * sizeof *ids);
    int64_t *len = malloc((size_t)batch * sizeof *len);
    if (!ids || !len) rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t s = 0; !rc && s < n; s += batch) {
        int64_t k = n - s < batch ? n - s : batch;
        for (int64_t i = 0; i < k; i++) {
            ids[i] = qt_dataset_ids(&cd, s + i);
            len[i] = cd.examples[s + i].length;
        }
        qt_batch b = {k, ids, len};
        rc = qt_model_calibrate(m, p->desc, inst, &b);
    }
    free(ids);
    free(len);
    qt_dataset_free(&cd);
    if (!rc) qt_log(QTOOL_LOG_INFO, "calibrated on %" PRId64 " examples of %s", n, path);
    return rc;
}

int cmd_eval(int argc, char **argv)
{
    const char *cmd = "eval";
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},      {"config", required_argument, NULL, 'c'},
        {"plugin", required_argument, NULL, 'p'},     {"opt", required_argument, NULL, 'o'},
        {"data", required_argument, NULL, 'd'},       {"device", required_argument, NULL, 'D'},
        {"batch", required_argument, NULL, 'b'},      {"max-length", required_argument, NULL, 'L'},
        {"calib", required_argument, NULL, 'C'},      {"calib-n", required_argument, NULL, 'N'},
        {"threads", required_argument, NULL, 't'},    {"logits-out", required_argument, NULL, 'l'},
        {"hidden-out", required_argument, NULL, 'H'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *model_path = NULL, *config = NULL, *plugin = NULL, *data = NULL, *calib = NULL;
    const char *logits_out = NULL, *hidden_out = NULL;
    int device = QTOOL_DEVICE_CPU, ch;
    int64_t batch = 32, max_length = 0, calib_n = 128, threads = 0;
    char **kv = calloc((size_t)argc + 1, sizeof *kv);
    size_t n_kv = 0;
    if (!kv) return qt_cli_runtime_error();
    optind = 1;
    opterr = 0;
    int rc = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': model_path = optarg; break;
        case 'c': config = optarg; break;
        case 'p': plugin = optarg; break;
        case 'o':
            if (!strchr(optarg, '=')) rc = qt_cli_usage_error(cmd, "--opt needs KEY=VALUE, not '%s'", optarg);
            kv[n_kv++] = optarg;
            break;
        case 'd': data = optarg; break;
        case 'D':
            if (strcmp(optarg, "cpu") == 0) device = QTOOL_DEVICE_CPU;
            else if (strcmp(optarg, "cuda") == 0) device = QTOOL_DEVICE_CUDA;
            else rc = qt_cli_usage_error(cmd, "--device is cpu or cuda, not '%s'", optarg);
            break;
        case 'b': rc = parse_pos(cmd, "--batch", optarg, 1, 1 << 20, &batch); break;
        case 'L': rc = parse_pos(cmd, "--max-length", optarg, 1, INT64_C(1) << 24, &max_length); break;
        case 'C': calib = optarg; break;
        case 'N': rc = parse_pos(cmd, "--calib-n", optarg, 1, INT64_C(1) << 24, &calib_n); break;
        case 't': rc = parse_pos(cmd, "--threads", optarg, 1, 256, &threads); break;
        case 'l': logits_out = optarg; break;
        case 'H': hidden_out = optarg; break;
        case 'h':
            free(kv);
            usage(stdout);
            return QT_EXIT_OK;
        default: rc = qt_cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]); break;
        }
        if (rc) {
            free(kv);
            return QT_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        free(kv);
        return qt_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    }
    if (!model_path || !plugin || !data) {
        free(kv);
        return qt_cli_usage_error(cmd, "--model, --plugin and --data are required");
    }
    void *stream = NULL;
    if (device == QTOOL_DEVICE_CUDA) {
        char why[256] = "";
        if (!qt_cuda_built()) {
            free(kv);
            qt_fail(QTOOL_ERR_UNSUPPORTED, "CUDA forward not available in this build (built without CUDA)");
            return qt_cli_runtime_error();
        }
        if (qt_cuda_device_count(why, sizeof why) < 1) {
            free(kv);
            qt_fail(QTOOL_ERR_UNSUPPORTED, "no CUDA device: %s", why);
            return qt_cli_runtime_error();
        }
        if (qt_cuda_set_device(0) || qt_cuda_stream_create(&stream)) {
            free(kv);
            return qt_cli_runtime_error();
        }
    }
    if (threads > 0) qt_threads_init((int)threads);
    else qt_threads_init(0);

    qt_model *m = NULL;
    qt_dataset ds = {0};
    qt_plugin_set set = {0};
    qt_plugin *p = NULL;
    qt_plugin_options po = {0};
    qtool_instance *inst = NULL;
    qt_eval_result res = {0};
    int have_opts = 0, exit_code = QT_EXIT_RUNTIME;

    if ((rc = qt_model_open(model_path, config, &m))) goto done;
    const qt_model_config *c = &m->cfg;
    if (!c->has_head) {
        rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: %s has no classification head to evaluate", model_path,
                     c->architecture);
        goto done;
    }
    qt_data_options dopt = {0};
    dopt.vocab_size = c->vocab_size;
    dopt.num_labels = c->num_labels;
    dopt.max_length = max_length;
    if (!dopt.max_length && c->arch == QT_ARCH_BERT) dopt.max_length = c->max_position_embeddings;
    dopt.label_lookup = label_lookup;
    dopt.label_ctx = (void *)c;
    if (c->arch == QT_ARCH_BERT && dopt.max_length > c->max_position_embeddings) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--max-length %" PRId64 " exceeds the model's %" PRId64 " positions",
                     dopt.max_length, c->max_position_embeddings);
        goto done;
    }
    if ((rc = qt_data_load(data, &dopt, &ds))) goto done;

    if ((rc = qt_plugins_discover(&set, qt_cli_plugin_path, 1)) || (rc = qt_plugins_resolve(&set, plugin, &p)))
        goto done;
    qtool_device_info dev;
    if (device == QTOOL_DEVICE_CUDA) {
        if ((rc = qt_cuda_device_info(0, &dev))) goto done;
    } else {
        qt_device_cpu_info(&dev);
    }
    char reason[512];
    if (!qt_device_plugin_supported(p->desc, &dev, reason, sizeof reason)) {
        rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot run on %s: %s", p->desc->name,
                     device == QTOOL_DEVICE_CUDA ? dev.name : "the CPU", reason);
        goto done;
    }
    if ((rc = qt_plugin_parse_options(p, kv, n_kv, &po))) goto done;
    have_opts = 1;
    if ((rc = qt_plugin_create(p, &po, device == QTOOL_DEVICE_CUDA ? 0 : -1, stream, &inst))) goto done;
    if (p->desc->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION) {
        if (!calib) {
            qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "plugin %s needs calibration data: pass --calib FILE.jsonl",
                    p->desc->name);
            exit_code = QT_EXIT_USAGE;
            rc = QTOOL_ERR_INVALID_ARGUMENT;
            goto done;
        }
    }
    if (calib && p->desc->calibrate) {
        if ((rc = calibrate(m, p, inst, calib, calib_n, batch, &dopt))) goto done;
    } else if (calib) {
        qt_log(QTOOL_LOG_WARN, "plugin %s takes no calibration data; --calib ignored", p->desc->name);
    }
    double t0 = now_s();
    if ((rc = qt_model_pack(m, p->desc, inst, device))) goto done;
    double pack_s = now_s() - t0;
    uint64_t mem[QTOOL_MEM_COUNT], packed = 0;
    if ((rc = qt_model_packed_memory(m, mem))) goto done;
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) packed += mem[k];

    qt_eval_options eo = {0};
    eo.device = device;
    eo.stream = stream;
    eo.batch = batch;
    eo.want_pooled = hidden_out != NULL;
    if ((rc = qt_model_eval(m, &ds, &eo, &res))) goto done;

    const char *devname = device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu";
    if (logits_out && (rc = write_tensor(logits_out, "logits", res.logits, res.n, res.num_labels, model_path,
                                         p->desc->name, devname)))
        goto done;
    if (hidden_out &&
        (rc = write_tensor(hidden_out, "pooled", res.pooled, res.n, res.hidden, model_path, p->desc->name, devname)))
        goto done;

    /* Report. */
    int64_t min_len = INT64_MAX;
    for (int64_t i = 0; i < ds.n; i++)
        if (ds.examples[i].length < min_len) min_len = ds.examples[i].length;
    char b1[32], b2[32];
    fmt_bytes(b1, sizeof b1, packed);
    fmt_bytes(b2, sizeof b2, res.peak_bytes);
    printf("model     %s: %s, %" PRId64 " layers, hidden %" PRId64 ", %" PRId64 " labels, weights %s\n", model_path,
           c->architecture, c->n_layers, c->hidden_size, c->num_labels, qt_dtype_name(m->tok_emb->dtype));
    if (device == QTOOL_DEVICE_CUDA)
        printf("plugin    %s %s on %s: %zu linears packed in %.1f ms, %s\n", p->desc->name,
               p->desc->version ? p->desc->version : "", dev.name, m->n_linears, 1000.0 * pack_s, b1);
    else
        printf("plugin    %s %s on cpu, %d threads: %zu linears packed in %.1f ms, %s\n", p->desc->name,
               p->desc->version ? p->desc->version : "", qt_threads_count(), m->n_linears, 1000.0 * pack_s, b1);
    printf("data      %s: %" PRId64 " examples (%" PRId64 " labelled), %" PRId64 "..%" PRId64 " tokens, %" PRId64
           " truncated\n",
           data, ds.n, ds.n_labelled, min_len, ds.max_length, ds.n_truncated);
    if (res.n_labelled)
        printf("accuracy  %.4f (%" PRId64 "/%" PRId64 ")\n", res.accuracy, res.n_correct, res.n_labelled);
    else
        printf("accuracy  n/a (no labels)\n");
    printf("latency   %.3f ms/example (%" PRId64 " batches of up to %" PRId64 ", %.1f ms); peak %s memory %s\n",
           res.ms_per_example, res.n_batches, batch, 1000.0 * res.seconds,
           device == QTOOL_DEVICE_CUDA ? "device" : "host", b2);
    if (logits_out) printf("logits    %s [%" PRId64 ", %" PRId64 "]\n", logits_out, res.n, res.num_labels);
    if (hidden_out) printf("pooled    %s [%" PRId64 ", %" PRId64 "]\n", hidden_out, res.n, res.hidden);
    char acc[32];
    if (res.n_labelled) snprintf(acc, sizeof acc, "%.4f", res.accuracy);
    else snprintf(acc, sizeof acc, "n/a");
    printf("eval: model=%s plugin=%s device=%s n=%" PRId64 " accuracy=%s ms_per_example=%.3f batch=%" PRId64 "\n",
           model_path, p->desc->name, devname, res.n, acc, res.ms_per_example, batch);
    exit_code = QT_EXIT_OK;
done:
    if (rc && exit_code != QT_EXIT_OK) {
        if (exit_code == QT_EXIT_USAGE) qt_cli_usage_error(cmd, "%s", qt_last_error());
        else qt_cli_runtime_error();
    }
    qt_eval_result_free(&res);
    if (m) qt_model_close(m); /* packed layers go before their instance */
    if (inst) p->desc->destroy(inst);
    if (have_opts) qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    qt_dataset_free(&ds);
    if (stream) qt_cuda_stream_destroy(stream);
    free(kv);
    return exit_code;
}
