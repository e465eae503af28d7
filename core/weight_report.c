#include "weight_report.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "fsutil.h"
#include "layer_role.h"
#include "safetensors.h"
#include "tensor.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Identity rows in chunks: y = I[r0:r1, :] @ W_hat^T gives rows r0..r1 of
 * W_hat^T; transposed into out. */
static int dequantize_by_identity(qt_plugin *p, qtool_packed *packed, int device, int64_t n,
                                  int64_t k, float *out)
{
    const qtool_plugin_desc *d = p->desc;
    const int64_t chunk = 64;
    int rc = 0;
    int64_t xs[2] = {chunk, k}, ys[2] = {chunk, n};
    qtool_tensor x = {0}, y = {0};
    int act = device == QTOOL_DEVICE_CPU ? QTOOL_DTYPE_F32 : QTOOL_DTYPE_F16;
    float *hx = malloc((size_t)(chunk * k) * sizeof *hx);
    float *hy = malloc((size_t)(chunk * n) * sizeof *hy);
    void *stage = malloc((size_t)(chunk * (k > n ? k : n)) * 4);
    if (!hx || !hy || !stage) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((rc = qt_tensor_alloc(&x, act, device, 2, xs, QTOOL_MEM_WORKSPACE)) ||
        (rc = qt_tensor_alloc(&y, act, device, 2, ys, QTOOL_MEM_WORKSPACE)))
        goto done;
    for (int64_t r0 = 0; r0 < k; r0 += chunk) {
        int64_t rows = k - r0 < chunk ? k - r0 : chunk;
        memset(hx, 0, (size_t)(rows * k) * sizeof *hx);
        for (int64_t i = 0; i < rows; i++) hx[i * k + r0 + i] = 1.0f;
        x.shape[0] = y.shape[0] = rows;
        qtool_matmul_args a = {.struct_size = sizeof a, .x = &x, .y = &y};
        if (device == QTOOL_DEVICE_CPU) {
            memcpy(x.data, hx, (size_t)(rows * k) * 4);
            rc = d->matmul_cpu(packed, &a);
            if (!rc) memcpy(hy, y.data, (size_t)(rows * n) * 4);
        } else {
            a.stream = p->services.table.cuda_stream;
            qt_convert_from_f32(stage, QTOOL_DTYPE_F16, hx, rows * k);
            rc = qt_cuda_memcpy_h2d(x.data, stage, (size_t)(rows * k) * 2);
            if (!rc) rc = d->matmul_cuda(packed, &a);
            if (!rc) rc = qt_cuda_stream_sync(a.stream);
            if (!rc) rc = qt_cuda_memcpy_d2h(stage, y.data, (size_t)(rows * n) * 2);
            if (!rc) qt_convert_to_f32(hy, stage, QTOOL_DTYPE_F16, rows * n);
        }
        if (rc) {
            if (!qt_last_error()[0]) qt_fail(rc, "%s: matmul failed (%s)", p->desc->name, qt_status_name(rc));
            goto done;
        }
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < n; j++) out[j * k + r0 + i] = hy[i * n + j];
    }
done:
    qt_tensor_release(&x);
    qt_tensor_release(&y);
    free(hx);
    free(hy);
    free(stage);
    return rc;
}

int qt_packed_dequantize(qt_plugin *p, qtool_packed *packed, int device, int64_t n, int64_t k,
                         float *out)
{
    if (p->desc->dequantize) {
        qt_clear_error();
        int rc = p->desc->dequantize(packed, out);
        if (rc && !qt_last_error()[0])
            qt_fail(rc, "%s: dequantize failed (%s)", p->desc->name, qt_status_name(rc));
        return rc;
    }
    return dequantize_by_identity(p, packed, device, n, k, out);
}

/* ------------------------------------------------------------- saving */

typedef struct save_ctx {
    qt_st_writer *w;
    const char *prefix;
} save_ctx;

static int save_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    save_ctx *s = ctx;
    size_t n = strlen(s->prefix) + strlen(suffix) + 1;
    char *name = malloc(n);
    if (!name) return QTOOL_ERR_OUT_OF_MEMORY;
    snprintf(name, n, "%s%s", s->prefix, suffix);
    int rc = qt_st_writer_add(s->w, name, t);
    free(name);
    return rc;
}

/* "a.b.weight" -> "a.b." (the part plugins' suffixes are appended to). */
static char *layer_prefix(const char *name)
{
    const char *dot = strrchr(name, '.');
    size_t len = dot ? (size_t)(dot - name) + 1 : 0;
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, name, len);
        s[len] = '\0';
    }
    return s;
}

/* Copies config.json beside the checkpoint (if any) with the plugin's
 * quantization_config added. */
static int write_config(qt_plugin *p, qtool_instance *inst, const char *model_path, const char *out_dir)
{
    json_t *cfg = NULL;
    if (qt_is_dir(model_path)) {
        char *cp = qt_path_join(model_path, "config.json");
        if (cp && qt_file_exists(cp)) {
            json_error_t err;
            cfg = json_load_file(cp, JSON_REJECT_DUPLICATES, &err);
            if (!cfg || !json_is_object(cfg)) {
                int rc = qt_fail(QTOOL_ERR_FORMAT, "%s: line %d: %s", cp, err.line, err.text);
                free(cp);
                json_decref(cfg);
                return rc;
            }
        }
        free(cp);
    }
    if (!cfg) cfg = json_object();
    if (p->desc->quant_config_json) {
        char buf[8192];
        int rc = p->desc->quant_config_json(inst, buf, sizeof buf);
        if (rc) {
            json_decref(cfg);
            return qt_fail(rc, "%s: cannot describe its quantization_config", p->desc->name);
        }
        json_error_t err;
        json_t *qc = json_loads(buf, 0, &err);
        if (!qc) {
            json_decref(cfg);
            return qt_fail(QTOOL_ERR_INTERNAL, "%s: quantization_config is not JSON: %s", p->desc->name, err.text);
        }
        json_object_set_new(cfg, "quantization_config", qc);
    }
    char *text = json_dumps(cfg, JSON_INDENT(2) | JSON_SORT_KEYS);
    json_decref(cfg);
    char *dst = qt_path_join(out_dir, "config.json");
    int rc = text && dst ? qt_write_file_atomic(dst, text, strlen(text)) : QTOOL_ERR_OUT_OF_MEMORY;
    free(text);
    free(dst);
    return rc;
}

/* ------------------------------------------------------------- the run */

static void measure(const float *w, const float *wq, int64_t count, qt_weight_row *row)
{
    double sw = 0, se = 0, mx = 0;
    for (int64_t i = 0; i < count; i++) {
        double e = (double)w[i] - (double)wq[i];
        sw += (double)w[i] * w[i];
        se += e * e;
        if (fabs(e) > mx || isnan(e)) mx = fabs(e);
    }
    row->rel_fro = sw > 0 ? sqrt(se / sw) : sqrt(se);
    row->max_abs = mx;
    row->snr_db = se > 0 ? 10.0 * log10(sw / se) : INFINITY;
}

static int quantize_one(qt_plugin *p, qtool_instance *inst, const qt_st_tensor *t, int n_blocks,
                        const qt_weight_report_opts *o, qt_st_writer *w, qt_weight_row *row)
{
    const qtool_plugin_desc *d = p->desc;
    int64_t n = t->view.shape[0], k = t->view.shape[1];
    row->n = n;
    row->k = k;
    row->src_dtype = t->view.dtype;
    row->bytes_before = t->nbytes;
    row->role = qt_layer_role_from_name(t->name);
    row->block = qt_layer_block_from_name(t->name);

    qtool_layer_info li = {.struct_size = sizeof li, .role = row->role, .name = t->name, .in_features = k,
                           .out_features = n, .block_index = row->block, .n_blocks = n_blocks};
    float *in_scale = malloc((size_t)k * sizeof *in_scale);
    float *wf = malloc((size_t)(n * k) * sizeof *wf), *wq = malloc((size_t)(n * k) * sizeof *wq);
    if (!in_scale || !wf || !wq) {
        free(in_scale), free(wf), free(wq);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory for %s", t->name);
    }
    int32_t has_scale = 0;
    qtool_pack_args pa = {.struct_size = sizeof pa, .device = o->device, .layer = &li, .weight = &t->view,
                          .bias = NULL, .input_scale = in_scale, .has_input_scale = &has_scale};
    qtool_packed *packed = NULL;
    qt_mem_stats before, after;
    qt_mem_get_stats(&before);
    double t0 = now_s();
    qt_clear_error();
    int rc = d->pack(inst, &pa, &packed);
    row->seconds = now_s() - t0;
    if (rc == QTOOL_ERR_UNSUPPORTED) {
        /* Kept as it is: e.g. a K the block size does not divide. */
        row->skipped = 1;
        row->note = strdup(qt_last_error()[0] ? qt_last_error() : "shape not supported by the plugin");
        qt_clear_error();
        free(in_scale), free(wf), free(wq);
        return w ? qt_st_writer_add(w, t->name, &t->view) : 0;
    }
    if (rc) {
        free(in_scale), free(wf), free(wq);
        if (!qt_last_error()[0]) qt_fail(rc, "%s: pack failed (%s)", d->name, qt_status_name(rc));
        return qt_fail(rc, "%s: %s", t->name, qt_last_error());
    }
    qt_mem_get_stats(&after);
    uint64_t mem[QTOOL_MEM_COUNT] = {0};
    rc = d->memory(packed, mem);
    for (int c = 0; c < QTOOL_MEM_COUNT && !rc; c++) {
        row->bytes_after[c] = mem[c];
        row->bytes_after_total += mem[c];
    }
    if (!rc) rc = qt_convert_to_f32(wf, t->view.data, t->view.dtype, n * k);
    if (!rc) rc = qt_packed_dequantize(p, packed, o->device, n, k, wq);
    if (!rc) {
        if (has_scale) /* the packed weight is W * s: compare like with like */
            for (int64_t i = 0; i < n; i++)
                for (int64_t j = 0; j < k; j++) wq[i * k + j] /= in_scale[j];
        measure(wf, wq, n * k, row);
    }
    if (!rc && w) {
        if (d->save) {
            char *prefix = layer_prefix(t->name);
            save_ctx sc = {w, prefix ? prefix : ""};
            qtool_save_sink sink = {&sc, save_put};
            rc = d->save(packed, &sink);
            if (rc && !qt_last_error()[0]) qt_fail(rc, "%s: save failed for %s", d->name, t->name);
            free(prefix);
        } else {
            rc = qt_fail(QTOOL_ERR_UNSUPPORTED, "plugin %s cannot save packed weights", d->name);
        }
    }
    d->free_packed(packed);
    free(in_scale), free(wf), free(wq);
    return rc;
}

int qt_weight_report_run(qt_plugin *p, qtool_instance *inst, const char *model_path,
                         const qt_weight_report_opts *o, qt_weight_report *out)
{
    memset(out, 0, sizeof *out);
    out->plugin = strdup(p->desc->name);
    out->model = strdup(model_path);
    out->device = o->device;
    qt_ckpt *ck = NULL;
    int rc = qt_ckpt_open(model_path, &ck);
    if (rc) return rc;
    size_t count = qt_ckpt_count(ck);
    out->rows = calloc(count ? count : 1, sizeof *out->rows);
    qt_st_writer *w = NULL;
    if (o->out_dir) {
        if ((rc = qt_mkdirs(o->out_dir))) goto done;
        if (!(w = qt_st_writer_new())) {
            rc = QTOOL_ERR_OUT_OF_MEMORY;
            goto done;
        }
    }
    int n_blocks = 0;
    for (size_t i = 0; i < count; i++) {
        int b = qt_layer_block_from_name(qt_ckpt_at(ck, i)->name);
        if (b + 1 > n_blocks) n_blocks = b + 1;
    }
    double t0 = now_s();
    for (size_t i = 0; i < count; i++) {
        const qt_st_tensor *t = qt_ckpt_at(ck, i);
        int is_float = t->view.dtype == QTOOL_DTYPE_F32 || t->view.dtype == QTOOL_DTYPE_F16 ||
                       t->view.dtype == QTOOL_DTYPE_BF16;
        if (t->view.ndim != 2 || !is_float || t->view.shape[0] == 0 || t->view.shape[1] == 0) {
            out->other_bytes += t->nbytes;
            if (w && (rc = qt_st_writer_add(w, t->name, &t->view))) goto done;
            continue;
        }
        qt_weight_row *row = &out->rows[out->n_rows++];
        row->name = strdup(t->name);
        if (o->progress)
            fprintf(stderr, "[%zu/%zu] %s [%lld, %lld]\n", i + 1, count, t->name, (long long)t->view.shape[0],
                    (long long)t->view.shape[1]);
        if ((rc = quantize_one(p, inst, t, n_blocks, o, w, row))) goto done;
        if (row->skipped) {
            out->other_bytes += t->nbytes;
        } else {
            out->total_before += row->bytes_before;
            out->total_after += row->bytes_after_total;
        }
    }
    out->seconds = now_s() - t0;
    if (w) {
        char *dst = qt_path_join(o->out_dir, "model.safetensors");
        rc = qt_st_writer_set_metadata(w, "format", "pt");
        if (!rc) rc = qt_st_writer_commit(w, dst);
        free(dst);
        if (!rc) rc = write_config(p, inst, model_path, o->out_dir);
    }
done:
    qt_st_writer_free(w);
    qt_ckpt_close(ck);
    return rc;
}

void qt_weight_report_free(qt_weight_report *r)
{
    for (size_t i = 0; i < r->n_rows; i++) {
        free(r->rows[i].name);
        free(r->rows[i].note);
    }
    free(r->rows);
    free(r->plugin);
    free(r->model);
    memset(r, 0, sizeof *r);
}
