/* Writes what the nf4 and bnb_int8 plugins produce for a raw input file,
 * for bnb_compat.py to compare with bitsandbytes:
 *
 *   qtool_bnb_dump nf4   IN DTYPE N K QTYPE BLOCKSIZE DOUBLE_QUANT OUTDIR
 *   qtool_bnb_dump int8w IN DTYPE N K OUTDIR
 *   qtool_bnb_dump int8a IN DTYPE M K THRESHOLD OUTDIR
 *
 * IN holds N*K (or M*K) values of DTYPE (f32, f16 or bf16). nf4/int8w pack
 * the weight through the plugin (loaded from QTOOL_PLUGIN_DIR) and write
 * every saved tensor; int8a quantizes activations with the plugin's
 * row quantizer and outlier rule. OUTDIR/index.txt lists
 * "name dtype ndim d0 d1" per tensor, the data is in OUTDIR/<name>.bin. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "int8_codec.h"
#include "plugin_harness.h"
#include "tensor.h"

static int die(const char *msg)
{
    fprintf(stderr, "qtool_bnb_dump: %s\n", msg);
    return 1;
}

static int parse_dtype(const char *s)
{
    if (!strcmp(s, "f32")) return QTOOL_DTYPE_F32;
    if (!strcmp(s, "f16")) return QTOOL_DTYPE_F16;
    if (!strcmp(s, "bf16")) return QTOOL_DTYPE_BF16;
    return -1;
}

static void *read_all(const char *path, size_t want)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    void *buf = malloc(want ? want : 1);
    size_t got = buf ? fread(buf, 1, want, f) : 0;
    fclose(f);
    if (got != want) {
        free(buf);
        return NULL;
    }
    return buf;
}

static FILE *g_index;
static const char *g_dir;

static int write_tensor(const char *name, const qtool_tensor *t)
{
    char path[2048];
    snprintf(path, sizeof path, "%s/%s.bin", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return QTOOL_ERR_INVALID_ARGUMENT;
    size_t bytes = (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype);
    size_t ok = fwrite(t->data, 1, bytes, f);
    fclose(f);
    if (ok != bytes) return QTOOL_ERR_INVALID_ARGUMENT;
    fprintf(g_index, "%s %s %d %lld %lld\n", name, qt_dtype_name(t->dtype), t->ndim,
            (long long)(t->ndim > 0 ? t->shape[0] : 1), (long long)(t->ndim > 1 ? t->shape[1] : 1));
    return QTOOL_OK;
}

static int sink_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    (void)ctx;
    if (t->device != QTOOL_DEVICE_CPU) return QTOOL_ERR_INVALID_ARGUMENT;
    return write_tensor(suffix, t);
}

static int pack_and_save(const char *plugin, const char *const *kv, int n_kv, void *data, int dtype, int64_t N,
                         int64_t K)
{
    harness H;
    if (harness_open(&H, plugin, -1, NULL)) return die("cannot load the plugin (is QTOOL_PLUGIN_DIR set?)");
    qtool_instance *inst = NULL;
    char msg[256] = "";
    if (harness_create(&H, kv, n_kv, &inst, msg, sizeof msg)) return die(msg);
    qtool_tensor w = tview(data, dtype, QTOOL_DEVICE_CPU, 2, N, K);
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.device = QTOOL_DEVICE_CPU;
    pa.weight = &w;
    qtool_packed *p = NULL;
    if (H.desc->pack(inst, &pa, &p)) return die("pack failed");
    qtool_save_sink sink = {NULL, sink_put};
    if (H.desc->save(p, &sink)) return die("save failed");
    H.desc->free_packed(p);
    H.desc->destroy(inst);
    harness_close(&H);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return die("usage: see the header of bnb_dump.c");
    const char *mode = argv[1];
    int need = !strcmp(mode, "nf4") ? 10 : !strcmp(mode, "int8w") ? 7 : !strcmp(mode, "int8a") ? 8 : 0;
    if (!need || argc != need) return die("bad arguments");
    int dtype = parse_dtype(argv[3]);
    int64_t N = strtoll(argv[4], NULL, 10), K = strtoll(argv[5], NULL, 10);
    if (dtype < 0 || N <= 0 || K <= 0 || N * K > ((int64_t)1 << 32)) return die("bad dtype or shape");
    g_dir = argv[argc - 1];
    if (mkdir(g_dir, 0755) != 0 && errno != EEXIST) return die("cannot create the output folder");
    char ipath[2048];
    snprintf(ipath, sizeof ipath, "%s/index.txt", g_dir);
    g_index = fopen(ipath, "w");
    if (!g_index) return die("cannot write index.txt");
    void *data = read_all(argv[2], (size_t)(N * K) * qtool_dtype_size(dtype));
    if (!data) return die("cannot read the input (size mismatch?)");
    int rc = 0;
    if (!strcmp(mode, "nf4")) {
        char a[64], b[64], c[64];
        snprintf(a, sizeof a, "dtype=%s", argv[6]);
        snprintf(b, sizeof b, "blocksize=%s", argv[7]);
        snprintf(c, sizeof c, "double_quant=%s", argv[8]);
        const char *kv[] = {a, b, c};
        rc = pack_and_save("nf4", kv, 3, data, dtype, N, K);
    } else if (!strcmp(mode, "int8w")) {
        rc = pack_and_save("bnb_int8", NULL, 0, data, dtype, N, K);
    } else {
        float thr = strtof(argv[6], NULL);
        int64_t M = N;
        float *x = malloc((size_t)(M * K) * 4);
        int8_t *q = malloc((size_t)(M * K));
        float *sa = malloc((size_t)M * 4);
        uint8_t *zc = calloc((size_t)K, 1);
        int32_t *cols = malloc((size_t)K * 4);
        qt_convert_to_f32(x, data, dtype, M * K);
        int64_t nc = 0;
        if (thr > 0.0f) {
            for (int64_t i = 0; i < M * K; i++)
                if (i8_absf(x[i]) >= thr) zc[i % K] = 1;
            for (int64_t k = 0; k < K; k++)
                if (zc[k]) cols[nc++] = (int32_t)k;
        }
        for (int64_t m = 0; m < M; m++) sa[m] = i8_quantize_row(x + m * K, K, K, thr, zc, q + m * K);
        qtool_tensor tq = tview(q, QTOOL_DTYPE_I8, QTOOL_DEVICE_CPU, 2, M, K);
        qtool_tensor ts = tview(sa, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, M, 0);
        qtool_tensor tc = tview(cols, QTOOL_DTYPE_I32, QTOOL_DEVICE_CPU, 1, nc, 0);
        rc = write_tensor("q", &tq) || write_tensor("sa", &ts) || write_tensor("cols", &tc);
        free(x);
        free(q);
        free(sa);
        free(zc);
        free(cols);
    }
    free(data);
    if (fclose(g_index) != 0) rc = 1;
    return rc ? 1 : 0;
}
