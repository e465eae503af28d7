/* qtool quantize: pack a checkpoint's block Linears with a plugin (after
 * layer-sequential calibration when the plugin needs it) and save the result
 * as a checkpoint folder that `qtool eval --model` reads without --plugin. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cli.h"
#include "cuda_rt.h"
#include "device.h"
#include "error.h"
#include "model.h"
#include "plugin_host.h"
#include "quantize.h"
#include "fsutil.h"
#include "gguf_model.h"
#include "threads.h"
#include "tokenizer.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool quantize --plugin NAME --model DIR|FILE.safetensors --out DIR|FILE.gguf [options]\n\n"
            "Packs every Linear of the model's blocks with the plugin and saves a checkpoint folder:\n"
            "model.safetensors (the plugin's layout for the Linears, the other tensors as they are),\n"
            "config.json with \"quantization_config\", and the tokenizer files found beside the model.\n"
            "'qtool eval --model DIR' then finds the plugin by itself. Plugins that need calibration\n"
            "see the inputs of each block's Linears, block by block, with the blocks before already\n"
            "quantized.\n"
            "With --plugin gguf_cpu and --out ending in .gguf, a decoder (Qwen2, Llama) is written as one\n"
            "GGUF v3 file that llama.cpp loads and 'qtool eval --model FILE.gguf' runs (docs/gguf.md).\n\n"
            "Options:\n"
            "  --plugin NAME|PATH     quantization plugin (see 'qtool plugins')\n"
            "  --model PATH           checkpoint folder or a .safetensors file\n"
            "  --config FILE          config.json to use (default: the one beside the model)\n"
            "  --out DIR|FILE.gguf    output folder (or GGUF file); written completely or not at all\n"
            "  --force                replace --out when it exists and is not empty\n"
            "  --opt KEY=VALUE        plugin option (repeatable)\n"
            "  --calib FILE.jsonl     calibration examples {\"input_ids\": [...]} or {\"text\": \"...\"} (text\n"
            "                         needs tokenizer.json in the model folder); some plugins need them\n"
            "  --calib-samples N      use the first N examples (default 128)\n"
            "  --max-length N         keep the first N tokens of each (default 256, or the model's\n"
            "                         max_position_embeddings when smaller)\n"
            "  --calib-batch-tokens N tokens per calibration forward pass (default 4096)\n"
            "  --device cpu|cuda      where the layers are packed and the calibration passes run\n"
            "                         (default cpu; cuda: fp16 activations)\n"
            "  --threads N            CPU threads (default: all, or QTOOL_NUM_THREADS)\n"
            "  -h, --help             this text\n");
}

static int parse_int(const char *cmd, const char *opt, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < lo || v > hi)
        return qt_cli_usage_error(cmd, "%s needs an integer in [%" PRId64 ", %" PRId64 "], not '%s'", opt, lo, hi, s);
    *out = v;
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct progress_ctx {
    const qt_model *m;
    int calibrating;
} progress_ctx;

static void on_block(void *ctx, int64_t block, int64_t n_blocks, int64_t tokens, double seconds)
{
    progress_ctx *p = ctx;
    int64_t n = 0;
    for (size_t i = 0; i < p->m->n_linears; i++)
        if (p->m->linears[i]->info.block_index == block) n++;
    if (p->calibrating)
        fprintf(stderr, "quantize: block %" PRId64 "/%" PRId64 ": %" PRId64 " linears calibrated on %" PRId64
                        " tokens and packed in %.2f s\n",
                block + 1, n_blocks, n, tokens, seconds);
    else
        fprintf(stderr, "quantize: block %" PRId64 "/%" PRId64 ": %" PRId64 " linears packed in %.2f s\n", block + 1,
                n_blocks, n, seconds);
}

int cmd_quantize(int argc, char **argv)
{
    const char *cmd = "quantize";
    static const struct option opts[] = {
        {"plugin", required_argument, NULL, 'p'},        {"model", required_argument, NULL, 'm'},
        {"config", required_argument, NULL, 'c'},        {"out", required_argument, NULL, 'O'},
        {"force", no_argument, NULL, 'f'},               {"opt", required_argument, NULL, 'o'},
        {"calib", required_argument, NULL, 'C'},         {"calib-samples", required_argument, NULL, 'N'},
        {"max-length", required_argument, NULL, 'L'},    {"calib-batch-tokens", required_argument, NULL, 'B'},
        {"device", required_argument, NULL, 'D'},        {"threads", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},                {NULL, 0, NULL, 0}};
    const char *plugin = NULL, *model_path = NULL, *config = NULL, *out = NULL, *calib = NULL;
    int force = 0, device = QTOOL_DEVICE_CPU, ch, rc = 0;
    int64_t samples = 128, max_length = 0, batch_tokens = 4096, threads = 0;
    char **kv = calloc((size_t)argc + 1, sizeof *kv);
    size_t n_kv = 0;
    if (!kv) return qt_cli_runtime_error();
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': plugin = optarg; break;
        case 'm': model_path = optarg; break;
        case 'c': config = optarg; break;
        case 'O': out = optarg; break;
        case 'f': force = 1; break;
        case 'o':
            if (!strchr(optarg, '=')) rc = qt_cli_usage_error(cmd, "--opt needs KEY=VALUE, not '%s'", optarg);
            kv[n_kv++] = optarg;
            break;
        case 'C': calib = optarg; break;
        case 'N': rc = parse_int(cmd, "--calib-samples", optarg, 1, INT64_C(1) << 24, &samples); break;
        case 'L': rc = parse_int(cmd, "--max-length", optarg, 1, INT64_C(1) << 24, &max_length); break;
        case 'B': rc = parse_int(cmd, "--calib-batch-tokens", optarg, 1, INT64_C(1) << 28, &batch_tokens); break;
        case 'D':
            if (strcmp(optarg, "cpu") == 0) device = QTOOL_DEVICE_CPU;
            else if (strcmp(optarg, "cuda") == 0) device = QTOOL_DEVICE_CUDA;
            else rc = qt_cli_usage_error(cmd, "--device is cpu or cuda, not '%s'", optarg);
            break;
        case 't': rc = parse_int(cmd, "--threads", optarg, 1, 256, &threads); break;
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
    if (!plugin || !model_path || !out) {
        free(kv);
        return qt_cli_usage_error(cmd, "--plugin, --model and --out are required");
    }
    const int gguf_out = qt_gguf_model_path_is_gguf(out);
    if (gguf_out ? qt_gguf_check_out(out, force) : qt_quant_check_out(out, model_path, force)) {
        free(kv);
        return qt_cli_usage_error(cmd, "%s", qt_last_error());
    }

    int exit_code = QT_EXIT_RUNTIME;
    void *stream = NULL;
    qt_model *m = NULL;
    qt_plugin_set set = {0};
    qt_plugin *p = NULL;
    qt_plugin_options po = {0};
    int have_opts = 0;
    qtool_instance *inst = NULL;
    qt_calib_set cs = {0};
    qt_tokenizer *tok = NULL;
    if (device == QTOOL_DEVICE_CUDA) {
        char why[256] = "";
        if (!qt_cuda_built()) {
            rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "CUDA not available in this build (built without CUDA)");
            goto done;
        }
        if (qt_cuda_device_count(why, sizeof why) < 1) {
            rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "no CUDA device: %s", why);
            goto done;
        }
        if ((rc = qt_cuda_set_device(0)) || (rc = qt_cuda_stream_create(&stream))) goto done;
    }
    qt_threads_init(threads > 0 ? (int)threads : 0);

    if ((rc = qt_plugins_discover(&set, qt_cli_plugin_path, 1))) goto done;
    if ((rc = qt_plugins_resolve(&set, plugin, &p))) {
        exit_code = QT_EXIT_USAGE;
        goto done;
    }
    const qtool_plugin_desc *d = p->desc;
    if (!d->save) {
        rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot save packed layers (no save slot)", d->name);
        goto done;
    }
    if (gguf_out && strcmp(d->name, QT_GGUF_EXPORT_PLUGIN)) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                     "--out %s: a GGUF file holds llama.cpp block types: use --plugin %s (plugin %s saves a "
                     "safetensors checkpoint folder: give --out a folder)",
                     out, QT_GGUF_EXPORT_PLUGIN, d->name);
        exit_code = QT_EXIT_USAGE;
        goto done;
    }
    if (!gguf_out && !strcmp(d->name, QT_GGUF_EXPORT_PLUGIN))
        fprintf(stderr, "quantize: --out %s does not end in .gguf: writing a safetensors checkpoint folder (name it "
                        "FILE.gguf for a GGUF file llama.cpp loads)\n",
                out);
    if ((d->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION) && !calib) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "plugin %s needs calibration data: pass --calib FILE.jsonl", d->name);
        exit_code = QT_EXIT_USAGE;
        goto done;
    }
    if ((rc = qt_plugin_parse_options(p, kv, n_kv, &po))) {
        exit_code = QT_EXIT_USAGE;
        goto done;
    }
    have_opts = 1;

    double t0 = now_s();
    if ((rc = qt_model_open(model_path, config, &m))) goto done;
    if (m->quant_config) {
        char method[64];
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is already quantized (quant_method '%s')", model_path,
                     qt_quant_method(m->quant_config, method, sizeof method));
        goto done;
    }
    if (gguf_out && (rc = qt_gguf_export_check(m))) goto done; /* before the packing work */
    qtool_device_info dev;
    if (device == QTOOL_DEVICE_CUDA) {
        if ((rc = qt_cuda_device_info(0, &dev))) goto done;
    } else {
        qt_device_cpu_info(&dev);
    }
    char reason[512];
    if (!qt_device_plugin_supported(d, &dev, reason, sizeof reason)) {
        rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot run on %s: %s", d->name,
                     device == QTOOL_DEVICE_CUDA ? dev.name : "the CPU", reason);
        goto done;
    }
    if ((rc = qt_plugin_create(p, &po, device == QTOOL_DEVICE_CUDA ? 0 : -1, stream, &inst))) goto done;

    progress_ctx pc = {m, 0};
    qt_calib_options co = {on_block, &pc};
    if (calib && d->calibrate) {
        const qt_model_config *c = &m->cfg;
        int64_t L = max_length ? max_length : 256;
        if (!max_length && c->max_position_embeddings > 0 && c->max_position_embeddings < L)
            L = c->max_position_embeddings;
        if (c->arch == QT_ARCH_BERT && L > c->max_position_embeddings) {
            rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "--max-length %" PRId64 " exceeds the model's %" PRId64 " positions",
                         L, c->max_position_embeddings);
            exit_code = QT_EXIT_USAGE;
            goto done;
        }
        /* Text examples are tokenized with the model folder's tokenizer.json. */
        if ((rc = qt_tokenizer_load_for_model(model_path, &tok))) goto done;
        if ((rc = qt_calib_set_load(calib, m, tok, samples, L, batch_tokens, &cs))) goto done;
        fprintf(stderr, "quantize: calibrating on %" PRId64 " examples of %s (%" PRId64 " tokens, at most %" PRId64
                        " each, %zu batches)\n",
                cs.n_examples, calib, cs.n_tokens, L, cs.n_batches);
        pc.calibrating = 1;
        rc = qt_model_calibrate_pack(m, d, inst, device, cs.batches, cs.n_batches, &co);
    } else {
        if (calib) qt_log(QTOOL_LOG_WARN, "plugin %s takes no calibration data; --calib ignored", d->name);
        rc = qt_model_calibrate_pack(m, d, inst, device, NULL, 0, &co);
    }
    /* Packing may still run on the stream; saving reads the layers. */
    if (!rc && stream) rc = qt_cuda_stream_sync(stream);
    if (rc) goto done;
    double pack_s = now_s() - t0;
    uint64_t mem[QTOOL_MEM_COUNT], packed = 0, before = 0;
    if ((rc = qt_model_packed_memory(m, mem))) goto done;
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) packed += mem[k];
    for (size_t i = 0; i < m->n_linears; i++) {
        const qtool_tensor *w = m->linears[i]->weight;
        before += (uint64_t)qtool_tensor_numel(w) * qtool_dtype_size(w->dtype);
    }
    int64_t folded = 0, explicit_scales = 0;
    for (size_t i = 0; i < m->n_linears; i++) {
        folded += m->linears[i]->input_scale_folded;
        explicit_scales += m->linears[i]->input_scale != NULL;
    }
    double t1 = now_s();
    qt_gguf_export_info gi = {0};
    if ((rc = gguf_out ? qt_gguf_export(m, config, out, force, &gi) : qt_quant_save(m, config, out, force))) goto done;
    printf("quantize: model=%s plugin=%s device=%s linears=%zu weights %.2f MiB -> %.2f MiB, input scales "
           "folded=%" PRId64 " explicit=%" PRId64 ", packed in %.2f s, saved in %.2f s -> %s\n",
           model_path, d->name, device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu", m->n_linears,
           (double)before / (1 << 20), (double)packed / (1 << 20), folded, explicit_scales, pack_s, now_s() - t1, out);
    if (gguf_out)
        printf("gguf: %s: GGUF v3, %" PRId64 " tensors, %" PRId64 " keys, %.2f MiB\n%s", out, gi.n_tensors, gi.n_kv,
               (double)gi.file_bytes / (1 << 20), gi.notes);
    exit_code = QT_EXIT_OK;
done:
    if (exit_code != QT_EXIT_OK) {
        if (exit_code == QT_EXIT_USAGE) qt_cli_usage_error(cmd, "%s", qt_last_error());
        else qt_cli_runtime_error();
    }
    qt_calib_set_free(&cs);
    qt_tokenizer_free(tok);
    if (m) qt_model_close(m); /* packed layers go before their instance */
    if (inst) p->desc->destroy(inst);
    if (have_opts) qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    if (stream) qt_cuda_stream_destroy(stream);
    free(kv);
    return exit_code;
}
