/* qtool eval: one model x one plugin on a JSONL dataset -> accuracy,
 * ms/example, and optionally the logits. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "cli.h"
#include "cuda_rt.h"
#include "data.h"
#include "device.h"
#include "error.h"
#include "fsutil.h"
#include "metrics.h"
#include "model.h"
#include "plugin_host.h"
#include "quantize.h"
#include "safetensors.h"
#include "tensor.h"
#include "threads.h"
#include "tokenizer.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool eval --model DIR|FILE.safetensors --plugin NAME --data FILE.jsonl [options]\n\n"
            "Runs a Hugging Face sequence classifier (BERT, ModernBERT, Qwen2, Llama) with every Linear of\n"
            "its blocks packed by the plugin, on tokenized examples {\"input_ids\": [...], \"label\": ...},\n"
            "and prints accuracy, ms/example and a one-line summary. A quantized checkpoint (one with\n"
            "\"quantization_config\", e.g. from 'qtool quantize') is read by the plugin that accepts its\n"
            "config: --plugin may then be left out.\n\n"
            "Options:\n"
            "  --model PATH          checkpoint folder (config.json + safetensors, sharded or not), a\n"
            "                        .safetensors file (with --config, or config.json beside it), or a\n"
            "                        .gguf file written by 'qtool quantize' (read by gguf_cpu)\n"
            "  --config FILE         config.json to use\n"
            "  --plugin NAME|PATH    quantization plugin (see 'qtool plugins')\n"
            "  --opt KEY=VALUE       plugin option (repeatable)\n"
            "  --data FILE.jsonl     evaluation examples; labels are class ids or label names\n"
            "  --device cpu|cuda     where to pack and run (default cpu; cuda uses device 0)\n"
            "  --batch N             examples per forward pass (default 32)\n"
            "  --max-length N        keep the first N tokens of longer examples (default: the\n"
            "                        model's max_position_embeddings)\n"
            "  --calib FILE.jsonl    calibration examples for plugins that need them\n"
            "  --calib-n N           use at most N calibration examples (default 128; also\n"
            "                        --calib-samples); blocks calibrate one after another on the\n"
            "                        outputs of the blocks already quantized\n"
            "  --threads N           CPU threads (default: all, or QTOOL_NUM_THREADS)\n"
            "  --logits-out FILE     write tensor 'logits' F32 [N, num_labels] (input order)\n"
            "  --hidden-out FILE     write tensor 'pooled' F32 [N, hidden]: the pooled final hidden\n"
            "                        state entering the classification head\n"
            "  --json                print the measurements as JSON instead of text\n"
            "  --json-out FILE       also write them as JSON to FILE (atomically)\n"
            "  --reference FILE      logits of the reference run (e.g. fp16) on the same data, for the\n"
            "                        per-tier accuracy deltas with bootstrap CIs\n"
            "  --train FILE.jsonl    training labels: their frequencies rank the classes into tiers\n"
            "  --label-counts FILE   the same as a JSON object {label: count}\n"
            "  --head N, --mid N     tier sizes in classes (default 20 and 40; the rest is the tail)\n"
            "  --warmup N, --timed N latency protocol: N warm-up and N timed batches (default 3 and 5)\n"
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

static void calib_progress(void *ctx, int64_t block, int64_t n_blocks, int64_t tokens, double seconds)
{
    (void)ctx;
    qt_log(QTOOL_LOG_INFO, "calibration: block %" PRId64 "/%" PRId64 " calibrated on %" PRId64 " tokens and packed in %.2f s",
           block + 1, n_blocks, tokens, seconds);
}

/* Layer-sequential calibration and packing over the first `limit`
 * examples of a JSONL file. */
static int calibrate_pack(qt_model *m, const qt_plugin *p, qtool_instance *inst, int device, const char *path,
                          const qt_tokenizer *tok, int64_t limit, int64_t max_length)
{
    qt_calib_set cs;
    int rc = qt_calib_set_load(path, m, tok, limit, max_length, 4096, &cs);
    if (rc) return rc;
    qt_calib_options co = {calib_progress, NULL};
    rc = qt_model_calibrate_pack(m, p->desc, inst, device, cs.batches, cs.n_batches, &co);
    if (!rc)
        qt_log(QTOOL_LOG_INFO, "calibrated on %" PRId64 " examples (%" PRId64 " tokens) of %s", cs.n_examples,
               cs.n_tokens, path);
    qt_calib_set_free(&cs);
    return rc;
}

/* Macro-F1, calibration and (with a reference and training labels) the
 * per-tier deltas, from the logits of this run. */
static int measure(const qt_model *m, const qt_eval_result *res, const char *reference, const char *train,
                   const char *label_counts, int64_t head, int64_t mid, qt_metrics_report *mr, int *have,
                   char *note, size_t note_len)
{
    const qt_model_config *c = &m->cfg;
    if (res->n == 0 || res->n_labelled != res->n) {
        snprintf(note, note_len, "metrics need a label on every example (%" PRId64 " of %" PRId64 " labelled)",
                 res->n_labelled, res->n);
        return 0;
    }
    qt_logits lg = {res->logits, res->n, res->num_labels, res->labels};
    qt_logits rl = lg;
    qt_st_file *rf = NULL;
    int64_t *counts = NULL;
    int rc = 0;
    if (reference) {
        if ((rc = qt_st_open(reference, &rf))) return rc;
        const qt_st_tensor *t = qt_st_find(rf, "logits");
        if (!t || t->view.dtype != QTOOL_DTYPE_F32 || t->view.ndim != 2 || t->view.shape[0] != res->n ||
            t->view.shape[1] != res->num_labels) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: needs tensor 'logits' F32 [%" PRId64 ", %" PRId64 "] (the same data)",
                         reference, res->n, res->num_labels);
            goto done;
        }
        rl.data = t->view.data;
    }
    if (train || label_counts) {
        counts = calloc((size_t)c->num_labels, sizeof *counts);
        qt_label_names ln = {c->id2label, c->num_labels};
        if (!counts) rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        else if (train) rc = qt_label_counts_from_jsonl(train, &ln, c->num_labels, counts);
        else rc = qt_label_counts_from_json(label_counts, &ln, c->num_labels, counts);
        if (rc) goto done;
    }
    if (reference && !counts)
        snprintf(note, note_len, "tiers need --train or --label-counts besides --reference");
    else if (counts && !reference)
        snprintf(note, note_len, "tiers need --reference besides the training labels");
    qt_tier_options to;
    qt_tier_options_default(&to);
    rc = qt_metrics_compute(&lg, reference ? &rl : NULL, reference ? counts : NULL, head, mid, &to, mr);
    *have = rc == 0;
done:
    free(counts);
    qt_st_close(rf);
    return rc;
}

static json_t *cell_json(const qt_model *m, const qt_plugin *p, const qtool_device_info *dev, int device,
                         const qt_eval_result *res, const qt_latency *lat, const qt_metrics_report *mr,
                         const char *note, double load_s, double quantize_s, const uint64_t *mem, uint64_t packed,
                         uint64_t calib_peak)
{
    json_t *o = mr ? qt_metrics_report_json(mr, m->cfg.id2label) : json_object();
    if (!o) return NULL;
    int di = device == QTOOL_DEVICE_CUDA;
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    json_object_set_new(o, "status", json_string("ok"));
    json_object_set_new(o, "model", json_string(m->model_path ? m->model_path : ""));
    json_object_set_new(o, "architecture", json_string(m->cfg.architecture));
    json_object_set_new(o, "plugin", json_string(p->desc->name));
    json_object_set_new(o, "plugin_version", json_string(p->desc->version ? p->desc->version : ""));
    json_object_set_new(o, "weight_bits", json_integer(p->desc->weight_bits));
    json_object_set_new(o, "activation_bits", json_integer(p->desc->activation_bits));
    json_object_set_new(o, "device", json_string(di ? "cuda:0" : "cpu"));
    json_object_set_new(o, "card", json_string(dev->name));
    json_object_set_new(o, "n", json_integer(res->n));
    if (!mr) json_object_set_new(o, "accuracy", isnan(res->accuracy) ? json_null() : json_real(res->accuracy));
    if (note && note[0]) json_object_set_new(o, "metrics_note", json_string(note));
    json_object_set_new(o, "batch_size", json_integer(lat->batch));
    json_object_set_new(o, "ms_per_example", json_real(lat->ms_per_example));
    json_object_set_new(o, "examples_per_s", json_real(lat->examples_per_s));
    json_t *bm = json_array();
    for (int i = 0; i < lat->timed; i++) json_array_append_new(bm, json_real(lat->batch_ms[i]));
    json_object_set_new(o, "latency", json_pack("{s:i,s:i,s:o,s:s}", "warmup", lat->warmup, "timed", lat->timed,
                                                "batch_ms", bm, "clock", di ? "cuda events" : "monotonic"));
    json_t *cat = json_object(), *wcat = json_object();
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) {
        json_object_set_new(cat, qt_mem_category_name(k), json_integer((json_int_t)st.at_peak[di][k]));
        json_object_set_new(wcat, qt_mem_category_name(k), json_integer((json_int_t)mem[k]));
    }
    /* On the CPU the "VRAM" figures are the host memory the allocator
     * handed out: the memory the model needs where it runs. */
    json_object_set_new(o, "peak_vram_bytes", json_integer((json_int_t)st.peak_total[di]));
    json_t *pv = json_pack("{s:I,s:o,s:s}", "allocator_bytes", (json_int_t)st.peak_total[di], "by_category", cat,
                           "memory", di ? "device" : "host");
    json_object_set_new(pv, "device_bytes", di ? json_integer((json_int_t)lat->device_used_peak) : json_null());
    json_object_set_new(o, "peak_vram", pv);
    json_object_set_new(o, "load_s", json_real(load_s));
    json_object_set_new(o, "quantize_s", json_real(quantize_s));
    if (calib_peak) json_object_set_new(o, "calibration_peak_bytes", json_integer((json_int_t)calib_peak));
    json_object_set_new(o, "eval_s", json_real(res->seconds));
    json_object_set_new(o, "weight_bytes", json_integer((json_int_t)packed));
    json_object_set_new(o, "weight_bytes_by_category", wcat);
    json_t *ver = json_object();
    json_object_set_new(ver, "qtool", json_string(QTOOL_VERSION));
    json_object_set_new(ver, "plugin", json_string(p->desc->version ? p->desc->version : ""));
    if (di) {
        json_object_set_new(ver, "cuda_runtime", json_integer(dev->runtime_version));
        json_object_set_new(ver, "driver", json_integer(dev->driver_version));
    }
    json_object_set_new(o, "versions", ver);
    return o;
}

static void print_summary(const qt_model *m, const qt_plugin *p, const qtool_device_info *dev, int device,
                          const char *model_path, const char *data, const qt_dataset *ds, const qt_eval_result *res,
                          const qt_latency *lat, const qt_metrics_report *mr, const char *note, double pack_s,
                          uint64_t packed, int64_t batch)
{
    const qt_model_config *c = &m->cfg;
    int di = device == QTOOL_DEVICE_CUDA;
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    int64_t min_len = INT64_MAX;
    for (int64_t i = 0; i < ds->n; i++)
        if (ds->examples[i].length < min_len) min_len = ds->examples[i].length;
    char b1[32], b2[32], b3[32];
    fmt_bytes(b1, sizeof b1, packed);
    fmt_bytes(b2, sizeof b2, st.peak_total[di]);
    printf("model     %s: %s, %" PRId64 " layers, hidden %" PRId64 ", %" PRId64 " labels, weights %s\n", model_path,
           c->architecture, c->n_layers, c->hidden_size, c->num_labels, qt_dtype_name(m->tok_emb->dtype));
    if (di)
        printf("plugin    %s %s on %s: %zu linears packed in %.1f ms, %s\n", p->desc->name,
               p->desc->version ? p->desc->version : "", dev->name, m->n_linears, 1000.0 * pack_s, b1);
    else
        printf("plugin    %s %s on cpu, %d threads: %zu linears packed in %.1f ms, %s\n", p->desc->name,
               p->desc->version ? p->desc->version : "", qt_threads_count(), m->n_linears, 1000.0 * pack_s, b1);
    printf("data      %s: %" PRId64 " examples (%" PRId64 " labelled), %" PRId64 "..%" PRId64 " tokens, %" PRId64
           " truncated\n",
           data, ds->n, ds->n_labelled, min_len, ds->max_length, ds->n_truncated);
    if (mr) {
        printf("accuracy  %.4f (%" PRId64 "/%" PRId64 ")\n", mr->accuracy, res->n_correct, res->n_labelled);
        printf("macro-F1  %.4f over %zu classes present in labels or predictions\n", mr->macro_f1, mr->n_per_class);
        printf("calib.    ECE %.4f -> %.4f after temperature %.3f (NLL %.4f -> %.4f); split-val: T %.3f on half A,"
               " ECE on half B %.4f -> %.4f\n",
               mr->ece, mr->ece_post, mr->temperature, mr->nll, mr->nll_post, mr->split_val.temperature,
               mr->split_val.ece_before, mr->split_val.ece_after);
        if (mr->has_tiers)
            for (int t = 0; t < QT_TIER_COUNT; t++) {
                const qt_tier_result *r = &mr->tiers[t];
                printf("tier      %-4s %5" PRId64 " examples: accuracy %.4f vs %.4f, delta %+.4f [%+.4f, %+.4f], %" PRId64
                       " flips%s\n",
                       qt_tier_name(t), r->n, r->accuracy, r->reference_accuracy, r->delta, r->ci_low, r->ci_high,
                       r->flips, r->directional ? " (directional: fewer than 20 flips)" : "");
            }
    } else if (res->n_labelled) {
        printf("accuracy  %.4f (%" PRId64 "/%" PRId64 ")\n", res->accuracy, res->n_correct, res->n_labelled);
    }
    if (note && note[0]) printf("note      %s\n", note);
    printf("latency   %.3f ms/example, %.1f examples/s (batch %" PRId64 ", median of %d timed after %d warm-up, %s)\n",
           lat->ms_per_example, lat->examples_per_s, batch, lat->timed, lat->warmup, di ? "CUDA events" : "monotonic clock");
    if (di) {
        fmt_bytes(b3, sizeof b3, lat->device_used_peak);
        printf("memory    peak %s by the allocator (weights %s), %s at device level\n", b2, b1, b3);
    } else {
        printf("memory    peak %s of host memory by the allocator (weights %s)\n", b2, b1);
    }
    char acc[32];
    if (res->n_labelled) snprintf(acc, sizeof acc, "%.4f", res->accuracy);
    else snprintf(acc, sizeof acc, "n/a");
    printf("eval: model=%s plugin=%s device=%s n=%" PRId64 " accuracy=%s ms_per_example=%.3f batch=%" PRId64 "\n",
           model_path, p->desc->name, di ? "cuda" : "cpu", res->n, acc, lat->ms_per_example, batch);
}

/* A progress bar for the evaluation pass, on a terminal only (a sweep
 * sends each cell's stderr to a log file). */
static void eval_progress(void *ctx, int64_t done, int64_t total)
{
    (void)ctx;
    const int width = 40;
    int filled = total > 0 ? (int)(width * done / total) : width;
    fprintf(stderr, "\reval  [%.*s%*s] %" PRId64 "/%" PRId64 " examples", filled,
            "########################################", width - filled, "", done, total);
    if (done >= total) fputc('\n', stderr);
    fflush(stderr);
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
        {"json", no_argument, NULL, 'J'},             {"json-out", required_argument, NULL, 'O'},
        {"reference", required_argument, NULL, 'R'},  {"train", required_argument, NULL, 'T'},
        {"label-counts", required_argument, NULL, 'K'}, {"head", required_argument, NULL, 'E'},
        {"mid", required_argument, NULL, 'I'},        {"warmup", required_argument, NULL, 'W'},
        {"timed", required_argument, NULL, 'S'},       {"calib-samples", required_argument, NULL, 'N'},
        {NULL, 0, NULL, 0}};
    const char *model_path = NULL, *config = NULL, *plugin = NULL, *data = NULL, *calib = NULL;
    const char *logits_out = NULL, *hidden_out = NULL, *json_out = NULL, *reference = NULL, *train = NULL;
    const char *label_counts = NULL;
    int device = QTOOL_DEVICE_CPU, ch, json = 0;
    int64_t batch = 32, max_length = 0, calib_n = 128, threads = 0, head = QT_METRICS_HEAD, mid = QT_METRICS_MID;
    int64_t warmup = 3, timed = 5;
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
        case 'J': json = 1; break;
        case 'O': json_out = optarg; break;
        case 'R': reference = optarg; break;
        case 'T': train = optarg; break;
        case 'K': label_counts = optarg; break;
        case 'E': rc = parse_pos(cmd, "--head", optarg, 0, INT64_C(1) << 24, &head); break;
        case 'I': rc = parse_pos(cmd, "--mid", optarg, 0, INT64_C(1) << 24, &mid); break;
        case 'W': rc = parse_pos(cmd, "--warmup", optarg, 0, 1000, &warmup); break;
        case 'S': rc = parse_pos(cmd, "--timed", optarg, 1, QT_LATENCY_MAX_TIMED, &timed); break;
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
    if (!model_path || !data) {
        free(kv);
        return qt_cli_usage_error(cmd, "--model and --data are required (and --plugin, unless the model is "
                                       "a quantized checkpoint)");
    }
    if (train && label_counts) {
        free(kv);
        return qt_cli_usage_error(cmd, "--train and --label-counts are alternatives: give one");
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
    qt_tokenizer *tok = NULL;
    qt_metrics_report mr = {0};
    int have_metrics = 0;
    char note[256] = "";
    int have_opts = 0, exit_code = QT_EXIT_RUNTIME;

    double t_load = now_s();
    if ((rc = qt_model_open(model_path, config, &m))) goto done;
    double load_s = now_s() - t_load;
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
    /* Text examples are tokenized with the model folder's tokenizer.json. */
    if ((rc = qt_tokenizer_load_for_model(model_path, &tok))) goto done;
    dopt.tokenizer = tok;
    if (tok && !dopt.max_length) dopt.max_length = c->max_position_embeddings;
    if ((rc = qt_data_load(data, &dopt, &ds))) goto done;
    if (ds.n_truncated)
        qt_log(QTOOL_LOG_WARN, "%s: %" PRId64 " of %" PRId64 " examples truncated to %" PRId64 " tokens", data,
               ds.n_truncated, ds.n, dopt.max_length);

    if ((rc = qt_plugins_discover(&set, qt_cli_plugin_path, 1))) goto done;
    if (m->quant_config) {
        /* A saved quantized checkpoint: the plugin that reads its config. */
        if ((rc = qt_quant_find_plugin(&set, m, plugin, &p))) goto done;
    } else if (!plugin) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--plugin is required: %s has no quantization_config", model_path);
        exit_code = QT_EXIT_USAGE;
        goto done;
    } else if ((rc = qt_plugins_resolve(&set, plugin, &p))) {
        goto done;
    }
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
    if ((p->desc->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION) && !m->quant_config) {
        if (!calib) {
            qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "plugin %s needs calibration data: pass --calib FILE.jsonl",
                    p->desc->name);
            exit_code = QT_EXIT_USAGE;
            rc = QTOOL_ERR_INVALID_ARGUMENT;
            goto done;
        }
    }
    double t_quant = now_s(), t0 = t_quant;
    uint64_t calib_peak = 0;
    if (m->quant_config) {
        if (calib) qt_log(QTOOL_LOG_WARN, "%s is already quantized; --calib ignored", model_path);
        if ((rc = qt_model_load_packed(m, p->desc, inst, device))) goto done;
    } else if (calib && p->desc->calibrate) {
        /* Calibration examples are cut as `qtool quantize` cuts them. */
        int64_t cl = max_length ? max_length : 256;
        if (!max_length && c->max_position_embeddings > 0 && c->max_position_embeddings < cl)
            cl = c->max_position_embeddings;
        if ((rc = calibrate_pack(m, p, inst, device, calib, tok, calib_n, cl))) goto done;
        /* Calibration is an offline step a saved checkpoint never repeats:
         * its peak is recorded apart, and the deployment peak starts from
         * the packed weights. */
        qt_mem_stats cs;
        qt_mem_get_stats(&cs);
        calib_peak = cs.peak_total[device == QTOOL_DEVICE_CUDA];
        qt_mem_reset_peak();
    } else {
        if (calib) qt_log(QTOOL_LOG_WARN, "plugin %s takes no calibration data; --calib ignored", p->desc->name);
        /* Evaluation only runs forward passes: same-input Linears may be
         * packed as one (qt_model.fuse_linears). */
        m->fuse_linears = 1;
        if ((rc = qt_model_pack(m, p->desc, inst, device))) goto done;
    }
    double pack_s = now_s() - t0, quantize_s = now_s() - t_quant;
    uint64_t mem[QTOOL_MEM_COUNT], packed = 0;
    if ((rc = qt_model_packed_memory(m, mem))) goto done;
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) packed += mem[k];

    qt_eval_options eo = {0};
    eo.device = device;
    eo.stream = stream;
    eo.batch = batch;
    eo.want_pooled = hidden_out != NULL;
    if (isatty(STDERR_FILENO) && !json) eo.progress = eval_progress;
    if ((rc = qt_model_eval(m, &ds, &eo, &res))) goto done;

    const char *devname = device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu";
    if (logits_out && (rc = write_tensor(logits_out, "logits", res.logits, res.n, res.num_labels, model_path,
                                         p->desc->name, devname)))
        goto done;
    if (hidden_out &&
        (rc = write_tensor(hidden_out, "pooled", res.pooled, res.n, res.hidden, model_path, p->desc->name, devname)))
        goto done;

    qt_latency lat;
    if ((rc = qt_model_latency(m, &ds, device, stream, batch, (int)warmup, (int)timed, &lat))) goto done;
    if ((rc = measure(m, &res, reference, train, label_counts, head, mid, &mr, &have_metrics, note, sizeof note)))
        goto done;

    json_t *cell = cell_json(m, p, &dev, device, &res, &lat, have_metrics ? &mr : NULL, note, load_s, quantize_s,
                             mem, packed, calib_peak);
    if (!cell) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if (json_out) {
        char *text = json_dumps(cell, JSON_INDENT(2));
        rc = text ? qt_write_file_atomic(json_out, text, strlen(text)) : QTOOL_ERR_OUT_OF_MEMORY;
        free(text);
    }
    if (!rc && json) {
        char *text = json_dumps(cell, JSON_INDENT(2));
        if (text) puts(text);
        free(text);
    }
    json_decref(cell);
    if (rc) goto done;
    if (!json) {
        print_summary(m, p, &dev, device, model_path, data, &ds, &res, &lat, have_metrics ? &mr : NULL, note,
                      pack_s, packed, batch);
        if (logits_out) printf("logits    %s [%" PRId64 ", %" PRId64 "]\n", logits_out, res.n, res.num_labels);
        if (hidden_out) printf("pooled    %s [%" PRId64 ", %" PRId64 "]\n", hidden_out, res.n, res.hidden);
    }
    exit_code = QT_EXIT_OK;
done:
    if (rc && exit_code != QT_EXIT_OK) {
        if (exit_code == QT_EXIT_USAGE) qt_cli_usage_error(cmd, "%s", qt_last_error());
        else qt_cli_runtime_error();
    }
    qt_eval_result_free(&res);
    if (have_metrics) qt_metrics_report_free(&mr);
    if (m) qt_model_close(m); /* packed layers go before their instance */
    if (inst) p->desc->destroy(inst);
    if (have_opts) qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    qt_dataset_free(&ds);
    qt_tokenizer_free(tok);
    if (stream) qt_cuda_stream_destroy(stream);
    free(kv);
    return exit_code;
}
