/* Runs an int4 plugin (awq, gptq) on files, for the Python reference
 * checks: calibrates with x_calib, packs w on the CPU, saves the packed
 * layer and writes what it produced.
 *
 *   int4_tool PLUGIN DIR N K T [option=value ...]
 *
 * Reads DIR/w.f32 ([N, K] float32), DIR/xcal.f32 ([T, K]; T may be 0: no
 * calibration) and, when present, DIR/bias.f32 ([N]). Calibration goes in
 * batches of at most 100 rows (the running average is part of what is
 * checked). Writes DIR/<suffix>.bin for every saved tensor with a line
 * "suffix dtype dims..." in DIR/tensors.txt, DIR/what.f32 (the dequantize
 * slot's W_hat) and DIR/scale.f32 when the plugin returned an input scale.
 * Layer name "test.layers.0.mlp.down_proj.weight", role from ROLE (env,
 * an integer; default 0). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plugin_harness.h"

static float *read_f32(const char *dir, const char *name, int64_t n, int optional)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (!optional) fprintf(stderr, "cannot open %s\n", path);
        return NULL;
    }
    float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    if (v && fread(v, sizeof(float), (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "%s: short file\n", path);
        free(v);
        v = NULL;
    }
    fclose(f);
    return v;
}

static int write_file(const char *dir, const char *name, const void *data, size_t bytes)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, bytes, f) != bytes) {
        fprintf(stderr, "cannot write %s\n", path);
        if (f) fclose(f);
        return -1;
    }
    return fclose(f) == 0 ? 0 : -1;
}

static const char *dtype_name(int dt)
{
    switch (dt) {
    case QTOOL_DTYPE_F32: return "F32";
    case QTOOL_DTYPE_F16: return "F16";
    case QTOOL_DTYPE_I32: return "I32";
    default: return "OTHER";
    }
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s PLUGIN DIR N K T [option=value ...]\n", argv[0]);
        return 2;
    }
    const char *plugin = argv[1], *dir = argv[2];
    int64_t N = atoll(argv[3]), K = atoll(argv[4]), T = atoll(argv[5]);
    if (N <= 0 || K <= 0 || T < 0) return 2;
    harness H;
    if (harness_open(&H, plugin, -1, NULL) != 0) return 1;
    qtool_instance *inst = NULL;
    char msg[256] = "";
    if (harness_create(&H, (const char *const *)(argv + 6), argc - 6, &inst, msg, sizeof msg) != QTOOL_OK) {
        fprintf(stderr, "create: %s\n", msg);
        return 1;
    }
    float *w = read_f32(dir, "w.f32", N * K, 0);
    float *x = T ? read_f32(dir, "xcal.f32", T * K, 0) : NULL;
    float *bias = read_f32(dir, "bias.f32", N, 1);
    if (!w || (T && !x)) return 1;
    const char *role_env = getenv("ROLE");
    qtool_layer_info li = {sizeof li, role_env ? atoi(role_env) : 0, "test.layers.0.mlp.down_proj.weight", K, N, 0, 1};
    for (int64_t t0 = 0; t0 < T; t0 += 100) {
        int64_t tr = T - t0 < 100 ? T - t0 : 100;
        qtool_tensor xt = tview(x + t0 * K, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, tr, K);
        if (H.desc->calibrate(inst, &li, &xt) != QTOOL_OK) {
            fprintf(stderr, "calibrate failed\n");
            return 1;
        }
    }
    float *scale = malloc((size_t)K * sizeof(float));
    int32_t has_scale = 0;
    qtool_packed *p = NULL;
    int rc = harness_pack(&H, inst, &li, w, bias, QTOOL_DEVICE_CPU, scale, &has_scale, &p);
    if (rc != QTOOL_OK) {
        fprintf(stderr, "pack failed: %d\n", rc);
        return rc == QTOOL_ERR_UNSUPPORTED ? 3 : 1;
    }
    store s = {0};
    qtool_save_sink sink = {&s, store_put};
    if (H.desc->save(p, &sink) != QTOOL_OK) return 1;
    char path[1024];
    snprintf(path, sizeof path, "%s/tensors.txt", dir);
    FILE *man = fopen(path, "w");
    if (!man) return 1;
    for (int i = 0; i < s.n; i++) {
        const qtool_tensor *t = &s.items[i].t;
        char fname[160];
        snprintf(fname, sizeof fname, "%s.bin", s.items[i].name);
        if (write_file(dir, fname, t->data, (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype))) return 1;
        fprintf(man, "%s %s", s.items[i].name, dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) fprintf(man, " %lld", (long long)t->shape[d]);
        fprintf(man, "\n");
    }
    fclose(man);
    float *what = malloc((size_t)(N * K) * sizeof(float));
    if (!what || H.desc->dequantize(p, what) != QTOOL_OK) return 1;
    if (write_file(dir, "what.f32", what, (size_t)(N * K) * sizeof(float))) return 1;
    if (has_scale && write_file(dir, "scale.f32", scale, (size_t)K * sizeof(float))) return 1;
    store_free(&s);
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    harness_close(&H);
    free(w);
    free(x);
    free(bias);
    free(scale);
    free(what);
    return 0;
}
