/* Cost of one plugin's calibrate and pack on single layers of the
 * Qwen2.5-0.5B shapes (q 896->896, gate 896->4864, down 4864->896):
 * random weights and calibration activations with a few large channels,
 * fed in batches as the runtime does, timed on the host clock.
 *   bench_pack PLUGIN [--device cpu|cuda] [--tokens T] [--batch-tokens B]
 *              [--opt KEY=VALUE]... [--plugin-path DIR]
 * Prints per layer: calibrate seconds (all batches), pack seconds. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "plugin_host.h"

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static double urand(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (double)((z ^ (z >> 31)) >> 11) * 0x1.0p-53;
}
static float nrand(void)
{
    double u = urand() + 1e-300, v = urand();
    return (float)(sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v));
}

typedef struct shape {
    const char *name;
    int role;
    int64_t K, N;
} shape;

int main(int argc, char **argv)
{
    const char *plugin = NULL, *plugin_path = NULL;
    int device = QTOOL_DEVICE_CPU;
    int64_t tokens = 32768, batch = 4096;
    char *opts[32];
    size_t n_opts = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            i++;
            device = !strcmp(argv[i], "cuda") ? QTOOL_DEVICE_CUDA : QTOOL_DEVICE_CPU;
        } else if (!strcmp(argv[i], "--tokens") && i + 1 < argc) {
            tokens = atoll(argv[++i]);
        } else if (!strcmp(argv[i], "--batch-tokens") && i + 1 < argc) {
            batch = atoll(argv[++i]);
        } else if (!strcmp(argv[i], "--opt") && i + 1 < argc && n_opts < 32) {
            opts[n_opts++] = argv[++i];
        } else if (!strcmp(argv[i], "--plugin-path") && i + 1 < argc) {
            plugin_path = argv[++i];
        } else if (argv[i][0] != '-' && !plugin) {
            plugin = argv[i];
        } else {
            fprintf(stderr, "usage: bench_pack PLUGIN [--device cpu|cuda] [--tokens T] [--batch-tokens B] "
                            "[--opt KEY=VALUE]... [--plugin-path DIR]\n");
            return 2;
        }
    }
    if (!plugin || tokens < 1 || batch < 1) {
        fprintf(stderr, "bench_pack: name a plugin; --tokens and --batch-tokens must be positive\n");
        return 2;
    }
    qt_plugin_set set = {0};
    qt_plugin *p = NULL;
    qt_plugin_options po = {0};
    qtool_instance *inst = NULL;
    void *stream = NULL;
    int rc = qt_plugins_discover(&set, plugin_path, 1);
    if (!rc) rc = qt_plugins_resolve(&set, plugin, &p);
    if (!rc) rc = qt_plugin_parse_options(p, opts, n_opts, &po);
    if (!rc && device == QTOOL_DEVICE_CUDA) rc = qt_cuda_stream_create(&stream);
    if (!rc) rc = qt_plugin_create(p, &po, device == QTOOL_DEVICE_CUDA ? 0 : -1, stream, &inst);
    if (rc) {
        fprintf(stderr, "bench_pack: %s\n", qt_last_error());
        return 1;
    }
    const qtool_plugin_desc *d = p->desc;
    static const shape shapes[] = {{"q_proj", QTOOL_ROLE_ATTN_Q, 896, 896},
                                   {"gate_proj", QTOOL_ROLE_FFN_GATE, 896, 4864},
                                   {"down_proj", QTOOL_ROLE_FFN_DOWN, 4864, 896}};
    printf("%-10s %6s %6s %8s %12s %9s  (%s, %s, %" PRId64 " tokens in batches of %" PRId64 ")\n", "layer", "K", "N",
           "calib s", "calib GB/s", "pack s", plugin, device == QTOOL_DEVICE_CUDA ? "cuda" : "cpu", tokens, batch);
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0] && !rc; si++) {
        const shape *s = &shapes[si];
        char name[96];
        snprintf(name, sizeof name, "model.layers.0.bench.%s.weight", s->name);
        qtool_layer_info li = {sizeof li, s->role, name, s->K, s->N, 0, 1};
        float *w = malloc((size_t)(s->N * s->K) * sizeof(float));
        float *x = malloc((size_t)(batch * s->K) * sizeof(float));
        float *scale = malloc((size_t)s->K * sizeof(float));
        if (!w || !x || !scale) {
            fprintf(stderr, "bench_pack: out of memory\n");
            return 1;
        }
        for (int64_t i = 0; i < s->N * s->K; i++) w[i] = 0.02f * nrand();
        double t_cal = 0;
        for (int64_t t0 = 0; t0 < tokens && !rc && d->calibrate; t0 += batch) {
            int64_t T = tokens - t0 < batch ? tokens - t0 : batch;
            for (int64_t r = 0; r < T; r++)
                for (int64_t k = 0; k < s->K; k++) x[r * s->K + k] = nrand() * (k % 97 == 0 ? 20.0f : 1.0f);
            qtool_tensor xt = qtool_tensor_view(x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, T, s->K);
            double c0 = now_s();
            rc = d->calibrate(inst, &li, &xt);
            t_cal += now_s() - c0;
        }
        qtool_tensor wt = qtool_tensor_view(w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, s->N, s->K);
        int32_t has_scale = 0;
        qtool_pack_args pa = {sizeof pa, device, &li, &wt, NULL, scale, &has_scale};
        qtool_packed *pk = NULL;
        double c0 = now_s();
        if (!rc) rc = d->pack(inst, &pa, &pk);
        if (!rc && device == QTOOL_DEVICE_CUDA) rc = qt_cuda_stream_sync(stream);
        double t_pack = now_s() - c0;
        if (rc) {
            fprintf(stderr, "bench_pack: %s: %s\n", s->name, qt_last_error());
        } else {
            double gb = (double)tokens * (double)s->K * 4.0 / 1e9;
            printf("%-10s %6" PRId64 " %6" PRId64 " %8.3f %12.2f %9.3f\n", s->name, s->K, s->N, t_cal,
                   t_cal > 0 ? gb / t_cal : 0.0, t_pack);
        }
        if (pk) d->free_packed(pk);
        free(w);
        free(x);
        free(scale);
    }
    if (inst) d->destroy(inst);
    qt_cuda_stream_destroy(stream);
    qt_plugin_options_free(&po);
    qt_plugins_free(&set);
    return rc ? 1 : 0;
}
