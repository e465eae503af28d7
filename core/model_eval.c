/* One evaluation pass over a dataset: logits in input order, predictions,
 * accuracy and forward time. The fuller metrics (macro-F1, ECE, tiers) take
 * the logits and labels from qt_eval_result. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
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
