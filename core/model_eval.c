/* One evaluation pass over a dataset: logits in input order, predictions,
 * accuracy and forward time. The fuller metrics (macro-F1, ECE, tiers) take
 * the logits and labels from qt_eval_result. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "model.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void qt_eval_result_free(qt_eval_result *r)
{
    free(r->logits);
    free(r->pooled);
    free(r->labels);
    free(r->pred);
    memset(r, 0, sizeof *r);
}

int qt_model_eval(qt_model *m, const qt_dataset *d, const qt_eval_options *o, qt_eval_result *out)
{
    memset(out, 0, sizeof *out);
    const qt_model_config *c = &m->cfg;
    if (!c->has_head) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s has no classification head", c->architecture);
    int64_t n = d->n, C = c->num_labels, H = c->hidden_size;
    int64_t B = o->batch > 0 ? o->batch : 32;
    out->n = n;
    out->num_labels = C;
    out->hidden = H;
    out->logits = malloc((size_t)(n * C) * sizeof(float));
    out->labels = malloc((size_t)n * sizeof(int32_t));
    out->pred = malloc((size_t)n * sizeof(int32_t));
    if (o->want_pooled) out->pooled = malloc((size_t)(n * H) * sizeof(float));
    const int32_t **ids = malloc((size_t)B * sizeof *ids);
    int64_t *len = malloc((size_t)B * sizeof *len);
    int rc = 0;
    if (!out->logits || !out->labels || !out->pred || (o->want_pooled && !out->pooled) || !ids || !len) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    double t0 = now_s();
    for (int64_t s = 0; s < n; s += B) {
        int64_t k = n - s < B ? n - s : B;
        for (int64_t i = 0; i < k; i++) {
            ids[i] = qt_dataset_ids(d, s + i);
            len[i] = d->examples[s + i].length;
        }
        qt_batch b = {k, ids, len};
        qt_forward_out fo = {out->logits + s * C, out->pooled ? out->pooled + s * H : NULL, NULL};
        if ((rc = qt_model_forward(m, &b, o->device, o->stream, &fo))) goto done;
        out->n_batches++;
        if (o->progress) o->progress(o->progress_ctx, s + k, n);
    }
    out->seconds = now_s() - t0;
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    out->peak_bytes = st.peak_total[o->device == QTOOL_DEVICE_CUDA ? 1 : 0];
    out->ms_per_example = n ? 1000.0 * out->seconds / (double)n : 0;
    for (int64_t i = 0; i < n; i++) {
        const float *row = out->logits + i * C;
        int32_t best = 0;
        for (int64_t j = 1; j < C; j++)
            if (row[j] > row[best] || (isnan(row[best]) && !isnan(row[j]))) best = (int32_t)j;
        out->pred[i] = best;
        out->labels[i] = d->examples[i].label;
        if (out->labels[i] != QT_DATA_NO_LABEL) {
            out->n_labelled++;
            out->n_correct += out->labels[i] == best;
        }
    }
    out->accuracy = out->n_labelled ? (double)out->n_correct / (double)out->n_labelled : NAN;
done:
    free(ids);
    free(len);
    if (rc) qt_eval_result_free(out);
    return rc;
}

typedef struct timed_call {
    qt_model *m;
    const qt_batch *b;
    int device;
    void *stream;
    qt_forward_out *fo;
    int rc;
} timed_call;

static void run_forward(void *arg)
{
    timed_call *t = arg;
    t->rc = qt_model_forward(t->m, t->b, t->device, t->stream, t->fo);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void sample_device_memory(qt_latency *out)
{
    size_t free_b = 0, total_b = 0;
    if (qt_cuda_mem_get_info(&free_b, &total_b) == 0 && total_b - free_b > out->device_used_peak)
        out->device_used_peak = total_b - free_b;
}

int qt_model_latency(qt_model *m, const qt_dataset *d, int device, void *stream, int64_t batch, int warmup,
                     int timed, qt_latency *out)
{
    memset(out, 0, sizeof *out);
    if (d->n < 1 || batch < 1 || warmup < 0 || timed < 1 || timed > QT_LATENCY_MAX_TIMED)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "latency: need examples, batch >= 1 and 1..%d timed batches",
                       QT_LATENCY_MAX_TIMED);
    out->warmup = warmup;
    out->timed = timed;
    out->batch = batch;
    int64_t C = m->cfg.num_labels;
    const int32_t **ids = malloc((size_t)batch * sizeof *ids);
    int64_t *len = malloc((size_t)batch * sizeof *len);
    float *logits = malloc((size_t)(batch * C) * sizeof *logits);
    int rc = 0;
    if (!ids || !len || !logits) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if (device == QTOOL_DEVICE_CUDA) sample_device_memory(out);
    int64_t next = 0;
    for (int i = 0; i < warmup + timed && !rc; i++) {
        for (int64_t k = 0; k < batch; k++, next = (next + 1) % d->n) {
            ids[k] = qt_dataset_ids(d, next);
            len[k] = d->examples[next].length;
        }
        qt_batch b = {batch, ids, len};
        qt_forward_out fo = {logits, NULL, NULL};
        timed_call tc = {m, &b, device, stream, &fo, 0};
        double ms = 0;
        if (device == QTOOL_DEVICE_CUDA) {
            float f = 0;
            rc = qt_cuda_time_ms(stream, run_forward, &tc, &f);
            ms = f;
            sample_device_memory(out);
        } else {
            double t0 = now_s();
            run_forward(&tc);
            ms = 1000.0 * (now_s() - t0);
        }
        if (!rc) rc = tc.rc;
        if (!rc && i >= warmup) out->batch_ms[i - warmup] = ms;
    }
    if (!rc) {
        double sorted[QT_LATENCY_MAX_TIMED];
        memcpy(sorted, out->batch_ms, (size_t)timed * sizeof *sorted);
        qsort(sorted, (size_t)timed, sizeof *sorted, cmp_double);
        out->median_batch_ms = timed % 2 ? sorted[timed / 2] : 0.5 * (sorted[timed / 2 - 1] + sorted[timed / 2]);
        out->ms_per_example = out->median_batch_ms / (double)batch;
        out->examples_per_s = out->median_batch_ms > 0 ? 1000.0 * (double)batch / out->median_batch_ms : 0;
    }
done:
    free(ids);
    free(len);
    free(logits);
    return rc;
}
