/* Forward-pass benchmark of the CUDA model runtime: one checkpoint folder,
 * one plugin, batches of `batch` sequences of `seq` tokens (deterministic
 * pseudo-random ids, the same formula as hf_reference.py), `warmup` passes,
 * then the median of `iters` passes timed with CUDA events around
 * qt_model_forward (ids in, float32 logits out on the host).
 *
 * Peak memory, two ways:
 *   allocator  the accounted allocator's CUDA peak from just before packing
 *              to the end (packed weights, cuBLASLt workspace, embedding
 *              table and norms, activations), with its split by category;
 *   device     cudaMemGetInfo: free memory before packing minus the lowest
 *              free memory seen after any pass (adds what the CUDA libraries
 *              allocate themselves).
 *
 * Prints one JSON object (also to --json FILE) and can write the logits of
 * the last pass as raw float32 (--logits FILE) for comparison with
 * transformers. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "model.h"
#include "plugin_host.h"
#include "threads.h"

typedef struct bench {
    qt_model *m;
    qt_batch b;
    void *stream;
    float *logits;
    int rc;
} bench;

/* Token ids: splitmix64 of (sequence * 1000003 + position), in [3, min(vocab, 50000)). */
static int32_t token_id(int64_t s, int64_t j, int64_t vocab)
{
    uint64_t z = (uint64_t)(s * 1000003 + j) + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    int64_t hi = vocab < 50000 ? vocab : 50000;
    return (int32_t)(3 + z % (uint64_t)(hi - 3));
}

static void run_once(void *arg)
{
    bench *B = arg;
    qt_forward_out out = {B->logits, NULL, NULL};
    if (!B->rc) B->rc = qt_model_forward(B->m, &B->b, QTOOL_DEVICE_CUDA, B->stream, &out);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_model --model DIR [--name NAME] [--plugin fp16] [--dtype fp16|bf16] [--batch 32]\n"
                    "                   [--seq 256] [--warmup 3] [--iters 5] [--json FILE] [--logits FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    const char *model = NULL, *name = "model", *plugin = "fp16", *dtype = "fp16", *json_path = NULL,
               *logits_path = NULL;
    int64_t batch = 32, seq = 256, warmup = 3, iters = 5;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--name")) name = v;
        else if (!strcmp(a, "--plugin")) plugin = v;
        else if (!strcmp(a, "--dtype")) dtype = v;
        else if (!strcmp(a, "--batch")) batch = atoll(v);
        else if (!strcmp(a, "--seq")) seq = atoll(v);
        else if (!strcmp(a, "--warmup")) warmup = atoll(v);
        else if (!strcmp(a, "--iters")) iters = atoll(v);
        else if (!strcmp(a, "--json")) json_path = v;
        else if (!strcmp(a, "--logits")) logits_path = v;
        else usage();
        i++;
    }
    int bf16 = !strcmp(dtype, "bf16");
    if (!model || batch < 1 || seq < 1 || iters < 1 || warmup < 0 || (!bf16 && strcmp(dtype, "fp16"))) usage();

    char why[256] = "";
    if (qt_cuda_device_count(why, sizeof why) == 0) {
        fprintf(stderr, "bench_model: no CUDA device (%s)\n", why);
        return 1;
    }
    qt_threads_init(0);
    qtool_device_info dev;
    void *stream = NULL;
    qt_plugin_set set = {0};
    qt_plugin *p = NULL;
    qtool_instance *inst = NULL;
    qt_model *m = NULL;
    qt_plugin_options po = {0};
    int rc = qt_cuda_set_device(0);
    if (!rc) rc = qt_cuda_device_info(0, &dev);
    if (!rc) rc = qt_cuda_stream_create(&stream);
    if (!rc) rc = qt_plugins_discover(&set, getenv("QTOOL_PLUGIN_DIR"), 1);
    if (!rc) rc = qt_plugins_resolve(&set, plugin, &p);
    if (!rc) {
        char *kv[1] = {"dtype=bf16"};
        rc = qt_plugin_parse_options(p, kv, bf16 && !strcmp(plugin, "fp16") ? 1 : 0, &po);
    }
    size_t free0 = 0, total_mem = 0, min_free = (size_t)-1;
    if (!rc) rc = qt_cuda_mem_get_info(&free0, &total_mem);
    if (!rc) rc = qt_plugin_create(p, &po, 0, stream, &inst);
    if (!rc) rc = qt_model_open(model, NULL, &m);
    double t_pack = 0;
    if (!rc) {
        m->cuda_act_dtype = bf16 ? QTOOL_DTYPE_BF16 : QTOOL_DTYPE_F16;
        qt_mem_reset_peak();
        double t0 = now_s();
        m->fuse_linears = 1; /* as qtool eval packs for CUDA */
        rc = qt_model_pack(m, p->desc, inst, QTOOL_DEVICE_CUDA);
        t_pack = now_s() - t0;
    }
    if (rc) {
        fprintf(stderr, "bench_model: %s\n", qt_last_error());
        return 1;
    }

    int64_t C = m->cfg.num_labels, V = m->cfg.vocab_size;
    int32_t *ids = malloc((size_t)(batch * seq) * sizeof(int32_t));
    const int32_t **rows = malloc((size_t)batch * sizeof *rows);
    int64_t *lens = malloc((size_t)batch * sizeof *lens);
    float *logits = malloc((size_t)(batch * C) * sizeof(float));
    float *ms = malloc((size_t)iters * sizeof(float));
    if (!ids || !rows || !lens || !logits || !ms) return 1;
    for (int64_t s = 0; s < batch; s++) {
        for (int64_t j = 0; j < seq; j++) ids[s * seq + j] = token_id(s, j, V);
        rows[s] = ids + s * seq;
        lens[s] = seq;
    }
    bench B = {m, {batch, rows, lens}, stream, logits, 0};
    double t_first = 0;
    for (int64_t i = 0; i < warmup + iters && !B.rc; i++) {
        float t = 0;
        double t0 = now_s();
        rc = qt_cuda_time_ms(stream, run_once, &B, &t);
        if (i == 0) t_first = now_s() - t0;
        if (rc || B.rc) break;
        if (i >= warmup) ms[i - warmup] = t;
        size_t fr = 0, tot = 0;
        if (qt_cuda_mem_get_info(&fr, &tot) == 0 && fr < min_free) min_free = fr;
    }
    if (rc || B.rc) {
        fprintf(stderr, "bench_model: %s\n", qt_last_error());
        return 1;
    }
    qsort(ms, (size_t)iters, sizeof *ms, cmp_float);
    double med = iters % 2 ? ms[iters / 2] : 0.5 * (ms[iters / 2 - 1] + ms[iters / 2]);
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    uint64_t peak = st.peak_total[QTOOL_DEVICE_CUDA];
    uint64_t dev_used = min_free == (size_t)-1 ? 0 : (uint64_t)(free0 - min_free);

    if (logits_path) {
        FILE *f = fopen(logits_path, "wb");
        if (!f || fwrite(logits, sizeof(float), (size_t)(batch * C), f) != (size_t)(batch * C) || fclose(f)) {
            fprintf(stderr, "bench_model: cannot write %s\n", logits_path);
            return 1;
        }
    }
    char js[4096];
    int o = snprintf(js, sizeof js,
                     "{\"name\": \"%s\", \"impl\": \"qtool\", \"device\": \"%s\", \"dtype\": \"%s\", \"plugin\": \"%s\", "
                     "\"batch\": %" PRId64 ", \"seq\": %" PRId64 ", \"ms_batch_median\": %.4f, "
                     "\"ms_per_example\": %.5f, \"ms_batch_all\": [",
                     name, dev.name, dtype, plugin, batch, seq, med, med / (double)batch);
    for (int64_t i = 0; i < iters; i++) o += snprintf(js + o, sizeof js - (size_t)o, "%s%.4f", i ? ", " : "", ms[i]);
    o += snprintf(js + o, sizeof js - (size_t)o,
                  "], \"peak_alloc_bytes\": %" PRIu64 ", \"device_used_bytes\": %" PRIu64 ", \"peak_by_category\": {",
                  peak, dev_used);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        o += snprintf(js + o, sizeof js - (size_t)o, "%s\"%s\": %" PRIu64, c ? ", " : "", qt_mem_category_name(c),
                      st.at_peak[QTOOL_DEVICE_CUDA][c]);
    o += snprintf(js + o, sizeof js - (size_t)o, "}, \"pack_s\": %.3f, \"first_pass_s\": %.3f}", t_pack, t_first);
    printf("%s\n", js);
    if (json_path) {
        FILE *f = fopen(json_path, "w");
        if (!f || fprintf(f, "%s\n", js) < 0 || fclose(f)) {
            fprintf(stderr, "bench_model: cannot write %s\n", json_path);
            return 1;
        }
    }
    qt_model_close(m);
    p->desc->destroy(inst);
    qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    qt_cuda_stream_destroy(stream);
    free(ids);
    free(rows);
    free(lens);
    free(logits);
    free(ms);
    qt_threads_shutdown();
    return 0;
}
