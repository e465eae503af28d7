#include "metrics.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "safetensors.h"
#include "tensor.h"

/* ------------------------------------------------------------------ RNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void qt_rng_seed(qt_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&x);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t qt_rng_next(qt_rng *r)
{
    uint64_t *s = r->s;
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

uint64_t qt_rng_below(qt_rng *r, uint64_t n)
{
    if (n <= 1) return 0;
    /* Rejecting the lowest (2^64 mod n) values leaves a multiple of n. */
    uint64_t threshold = (0 - n) % n;
    for (;;) {
        uint64_t x = qt_rng_next(r);
        if (x >= threshold) return x % n;
    }
}

void qt_rng_shuffle(qt_rng *r, int64_t *idx, int64_t n)
{
    for (int64_t i = n - 1; i >= 1; i--) {
        int64_t j = (int64_t)qt_rng_below(r, (uint64_t)i + 1);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
}

/* ---------------------------------------------------------------- basics */

int qt_logits_validate(const qt_logits *m, const char *what)
{
    if (!m->data || m->n <= 0 || m->c <= 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: empty logits", what);
    if (m->c > INT32_MAX || m->n > INT64_MAX / m->c)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: logits shape too large", what);
    for (int64_t i = 0; i < m->n; i++) {
        const float *row = m->data + i * m->c;
        for (int64_t k = 0; k < m->c; k++)
            if (!isfinite(row[k]))
                return qt_fail(QTOOL_ERR_FORMAT, "%s: logits row %lld class %lld is not finite", what,
                               (long long)i, (long long)k);
        if (m->labels && (m->labels[i] < 0 || m->labels[i] >= m->c))
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: label %d of row %lld is outside [0, %lld)",
                           what, m->labels[i], (long long)i, (long long)m->c);
    }
    return 0;
}

int qt_logits_load(const char *path, const char *name, float **out, int64_t *n, int64_t *c)
{
    *out = NULL;
    qt_st_file *f;
    int rc = qt_st_open(path, &f);
    if (rc) return rc;
    const qt_st_tensor *t = qt_st_find(f, name);
    if (!t) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no tensor \"%s\"", path, name);
    } else if (t->view.ndim != 2 || t->view.shape[0] < 1 || t->view.shape[1] < 1) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: tensor \"%s\" must be 2-D [N, C]", path, name);
    } else if (t->view.dtype != QTOOL_DTYPE_F32 && t->view.dtype != QTOOL_DTYPE_F16 &&
               t->view.dtype != QTOOL_DTYPE_BF16 && t->view.dtype != QTOOL_DTYPE_F64) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: tensor \"%s\" is %s; expected F32 (or F16/BF16/F64)",
                     path, name, t->dtype_name);
    } else {
        int64_t numel = t->view.shape[0] * t->view.shape[1];
        float *buf = malloc((size_t)numel * sizeof *buf);
        if (!buf)
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        else if ((rc = qt_convert_to_f32(buf, t->view.data, t->view.dtype, numel)))
            free(buf);
        else {
            *out = buf;
            *n = t->view.shape[0];
            *c = t->view.shape[1];
        }
    }
    qt_st_close(f);
    return rc;
}

static int32_t row_argmax(const float *row, int64_t c)
{
    int64_t best = 0;
    for (int64_t k = 1; k < c; k++)
        if (row[k] > row[best]) best = k;
    return (int32_t)best;
}

void qt_metrics_argmax(const float *logits, int64_t n, int64_t c, int32_t *pred)
{
    for (int64_t i = 0; i < n; i++) pred[i] = row_argmax(logits + i * c, c);
}

double qt_metrics_accuracy(const int32_t *pred, const int32_t *labels, int64_t n)
{
    if (n <= 0) return NAN;
    int64_t hit = 0;
    for (int64_t i = 0; i < n; i++) hit += pred[i] == labels[i];
    return (double)hit / (double)n;
}

int qt_metrics_per_class(const int32_t *pred, const int32_t *labels, int64_t n, int64_t c,
                         qt_class_stats **out, size_t *n_out, double *macro_f1)
{
    *out = NULL;
    *n_out = 0;
    *macro_f1 = NAN;
    int64_t *cnt = calloc((size_t)c * 3, sizeof *cnt);
    if (!cnt) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t *support = cnt, *predicted = cnt + c, *tp = cnt + 2 * c;
    for (int64_t i = 0; i < n; i++) {
        support[labels[i]]++;
        predicted[pred[i]]++;
        tp[labels[i]] += pred[i] == labels[i];
    }
    size_t present = 0;
    for (int64_t k = 0; k < c; k++) present += support[k] > 0 || predicted[k] > 0;
    qt_class_stats *cs = calloc(present ? present : 1, sizeof *cs);
    if (!cs) {
        free(cnt);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    size_t j = 0;
    double sum_f1 = 0;
    for (int64_t k = 0; k < c; k++) {
        if (support[k] == 0 && predicted[k] == 0) continue;
        qt_class_stats *s = &cs[j++];
        s->label = (int32_t)k;
        s->support = support[k];
        s->predicted = predicted[k];
        s->tp = tp[k];
        s->precision = predicted[k] ? (double)tp[k] / (double)predicted[k] : 0.0;
        s->recall = support[k] ? (double)tp[k] / (double)support[k] : 0.0;
        /* 2tp / (2tp + fp + fn), i.e. the harmonic mean with 0 for 0/0. */
        int64_t denom = support[k] + predicted[k];
        s->f1 = denom ? 2.0 * (double)tp[k] / (double)denom : 0.0;
        sum_f1 += s->f1;
    }
    free(cnt);
    *out = cs;
    *n_out = present;
    *macro_f1 = present ? sum_f1 / (double)present : NAN;
    return 0;
}

/* For one row at inverse temperature beta: the softmax normaliser relative
 * to the row maximum, minus the maximum's own 1, i.e. sum over k != argmax
 * of exp(beta (z_k - max)); also the maximum and the first argmax. Keeping
 * the 1 apart lets log1p keep confident rows' tiny NLL from rounding to 0
 * (the temperature search still sees a slope) and gives the top-class
 * probability 1 / (1 + rest) exactly where the sum is exact. */
static double row_rest(const float *row, int64_t c, double beta, double *zmax, int32_t *arg)
{
    int64_t best = 0;
    for (int64_t k = 1; k < c; k++)
        if (row[k] > row[best]) best = k;
    double m = row[best];
    double rest = 0;
    for (int64_t k = 0; k < c; k++)
        if (k != best) rest += exp(beta * ((double)row[k] - m));
    *zmax = m;
    *arg = (int32_t)best;
    return rest;
}

double qt_metrics_nll(const qt_logits *m, const int64_t *rows, int64_t n_rows, double temperature)
{
    int64_t n = rows ? n_rows : m->n;
    if (n <= 0) return NAN;
    double beta = 1.0 / temperature, sum = 0;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = rows ? rows[j] : j;
        const float *row = m->data + i * m->c;
        double zmax;
        int32_t arg;
        double lse = log1p(row_rest(row, m->c, beta, &zmax, &arg));
        sum += lse - beta * ((double)row[m->labels[i]] - zmax);
    }
    return sum / (double)n;
}

double qt_metrics_ece(const qt_logits *m, const int64_t *rows, int64_t n_rows, double temperature,
                      int n_bins)
{
    int64_t n = rows ? n_rows : m->n;
    if (n <= 0 || n_bins <= 0 || n_bins > 10000) return NAN;
    double *conf_sum = calloc((size_t)n_bins * 2, sizeof *conf_sum);
    int64_t *count = calloc((size_t)n_bins, sizeof *count);
    if (!conf_sum || !count) {
        free(conf_sum);
        free(count);
        return NAN;
    }
    double *hit_sum = conf_sum + n_bins;
    double beta = 1.0 / temperature, step = 1.0 / n_bins;
    for (int64_t j = 0; j < n; j++) {
        int64_t i = rows ? rows[j] : j;
        const float *row = m->data + i * m->c;
        double zmax;
        int32_t arg;
        double conf = 1.0 / (1.0 + row_rest(row, m->c, beta, &zmax, &arg));
        /* Bin b holds (b*step, (b+1)*step]; the last edge is exactly 1. */
        int b = (int)(conf * n_bins);
        if (b >= n_bins) b = n_bins - 1;
        if (b < 0) b = 0;
        while (b > 0 && conf <= b * step) b--;
        while (b < n_bins - 1 && conf > (b + 1) * step) b++;
        count[b]++;
        conf_sum[b] += conf;
        hit_sum[b] += arg == m->labels[i];
    }
    double ece = 0;
    for (int b = 0; b < n_bins; b++) {
        if (!count[b]) continue;
        double cb = (double)count[b];
        ece += fabs(hit_sum[b] / cb - conf_sum[b] / cb) * cb / (double)n;
    }
    free(conf_sum);
    free(count);
    return ece;
}

double qt_metrics_fit_temperature(const qt_logits *m, const int64_t *rows, int64_t n_rows,
                                  int *at_bound)
{
    const double invphi = 0.6180339887498949;
    double lo = log(QT_METRICS_T_MIN), hi = log(QT_METRICS_T_MAX);
    double a = lo, b = hi;
    double c = b - invphi * (b - a), d = a + invphi * (b - a);
    double fc = qt_metrics_nll(m, rows, n_rows, exp(c));
    double fd = qt_metrics_nll(m, rows, n_rows, exp(d));
    while (b - a > 1e-10) {
        /* Ties go left: where NLL is flat to rounding (confident rows
         * saturate as T -> 0) the smallest such T is reported. */
        if (fc <= fd) {
            b = d;
            d = c;
            fd = fc;
            c = b - invphi * (b - a);
            fc = qt_metrics_nll(m, rows, n_rows, exp(c));
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + invphi * (b - a);
            fd = qt_metrics_nll(m, rows, n_rows, exp(d));
        }
    }
    double u = 0.5 * (a + b);
    if (at_bound) *at_bound = (u - lo < 1e-6) || (hi - u < 1e-6);
    return exp(u);
}

/* ---------------------------------------------------------------- tiers */

const char *qt_tier_name(int tier)
{
    static const char *names[] = {"head", "mid", "tail"};
    return tier >= 0 && tier < QT_TIER_COUNT ? names[tier] : "?";
}

typedef struct rank_item {
    int64_t count;
    int64_t label;
} rank_item;

static int rank_cmp(const void *pa, const void *pb)
{
    const rank_item *a = pa, *b = pb;
    if (a->count != b->count) return a->count > b->count ? -1 : 1;
    return (a->label > b->label) - (a->label < b->label);
}

void qt_metrics_assign_tiers(const int64_t *train_counts, int64_t c, int64_t head, int64_t mid,
                             int32_t *tier_of_class)
{
    rank_item *items = malloc((size_t)(c > 0 ? c : 1) * sizeof *items);
    if (!items) {
        /* Fall back to ranking by id only; never leaves the output unset. */
        for (int64_t k = 0; k < c; k++)
            tier_of_class[k] = k < head ? QT_TIER_HEAD : k < head + mid ? QT_TIER_MID : QT_TIER_TAIL;
        return;
    }
    for (int64_t k = 0; k < c; k++) items[k] = (rank_item){train_counts[k], k};
    qsort(items, (size_t)c, sizeof *items, rank_cmp);
    for (int64_t r = 0; r < c; r++)
        tier_of_class[items[r].label] =
            r < head ? QT_TIER_HEAD : r < head + mid ? QT_TIER_MID : QT_TIER_TAIL;
    free(items);
}

void qt_tier_options_default(qt_tier_options *o)
{
    o->resamples = QT_METRICS_BOOTSTRAP;
    o->seed = QT_METRICS_SEED;
    o->level = 0.95;
    o->min_flips = QT_METRICS_MIN_FLIPS;
}

static int cmp_double(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* numpy.percentile's default ("linear") on sorted data, q in [0, 1]. */
static double percentile_sorted(const double *v, int n, double q)
{
    double pos = q * (double)(n - 1);
    int lo = (int)floor(pos);
    if (lo >= n - 1) return v[n - 1];
    if (lo < 0) return v[0];
    double t = pos - lo, a = v[lo], b = v[lo + 1];
    return t >= 0.5 ? b - (b - a) * (1 - t) : a + (b - a) * t;
}

int qt_metrics_tiers(const int32_t *pred, const int32_t *ref_pred, const int32_t *labels, int64_t n,
                     const int32_t *tier_of_class, int64_t c, const qt_tier_options *opt,
                     qt_tier_result out[QT_TIER_COUNT])
{
    qt_tier_options def;
    if (!opt) {
        qt_tier_options_default(&def);
        opt = &def;
    }
    if (opt->resamples < 1 || opt->resamples > 1000000 || !(opt->level > 0 && opt->level < 1))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "bootstrap: bad resamples or level");
    int64_t *rows = malloc((size_t)n * sizeof *rows);
    double *deltas = malloc((size_t)opt->resamples * sizeof *deltas);
    if (!rows || !deltas) {
        free(rows);
        free(deltas);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int t = 0; t < QT_TIER_COUNT; t++) {
        qt_tier_result *r = &out[t];
        memset(r, 0, sizeof *r);
        for (int64_t k = 0; k < c; k++) r->classes += tier_of_class[k] == t;
        int64_t m = 0, hit = 0, ref_hit = 0;
        for (int64_t i = 0; i < n; i++) {
            if (tier_of_class[labels[i]] != t) continue;
            rows[m++] = i;
            hit += pred[i] == labels[i];
            ref_hit += ref_pred[i] == labels[i];
            r->flips += pred[i] != ref_pred[i];
        }
        r->n = m;
        r->directional = r->flips < opt->min_flips;
        if (m == 0) {
            r->accuracy = r->reference_accuracy = r->delta = r->ci_low = r->ci_high = NAN;
            continue;
        }
        r->accuracy = (double)hit / (double)m;
        r->reference_accuracy = (double)ref_hit / (double)m;
        r->delta = r->accuracy - r->reference_accuracy;
        /* Paired: the same resampled rows score both runs. */
        qt_rng rng;
        qt_rng_seed(&rng, opt->seed);
        for (int b = 0; b < opt->resamples; b++) {
            int64_t diff = 0;
            for (int64_t j = 0; j < m; j++) {
                int64_t i = rows[qt_rng_below(&rng, (uint64_t)m)];
                diff += (pred[i] == labels[i]) - (ref_pred[i] == labels[i]);
            }
            deltas[b] = (double)diff / (double)m;
        }
        qsort(deltas, (size_t)opt->resamples, sizeof *deltas, cmp_double);
        double tail = (1.0 - opt->level) / 2.0;
        r->ci_low = percentile_sorted(deltas, opt->resamples, tail);
        r->ci_high = percentile_sorted(deltas, opt->resamples, 1.0 - tail);
    }
    free(rows);
    free(deltas);
    return 0;
}

/* --------------------------------------------------------- full report */

int qt_metrics_compute(const qt_logits *m, const qt_logits *reference, const int64_t *train_counts,
                       int64_t head, int64_t mid, const qt_tier_options *tier_opt,
                       qt_metrics_report *out)
{
    memset(out, 0, sizeof *out);
    if (!m->labels) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "metrics need labels");
    int rc = qt_logits_validate(m, "logits");
    if (rc) return rc;
    if (reference) {
        if (reference->n != m->n || reference->c != m->c)
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                           "reference logits are [%lld, %lld]; logits are [%lld, %lld]",
                           (long long)reference->n, (long long)reference->c, (long long)m->n,
                           (long long)m->c);
        qt_logits ref = *reference;
        ref.labels = NULL;
        rc = qt_logits_validate(&ref, "reference logits");
        if (rc) return rc;
    }
    out->n = m->n;
    out->c = m->c;
    out->head = head;
    out->mid = mid;
    out->pred = malloc((size_t)m->n * sizeof *out->pred);
    if (!out->pred) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    qt_metrics_argmax(m->data, m->n, m->c, out->pred);
    out->accuracy = qt_metrics_accuracy(out->pred, m->labels, m->n);
    rc = qt_metrics_per_class(out->pred, m->labels, m->n, m->c, &out->per_class, &out->n_per_class,
                              &out->macro_f1);
    if (rc) goto fail;
    out->nll = qt_metrics_nll(m, NULL, 0, 1.0);
    out->ece = qt_metrics_ece(m, NULL, 0, 1.0, QT_METRICS_ECE_BINS);
    out->temperature = qt_metrics_fit_temperature(m, NULL, 0, &out->temperature_at_bound);
    out->nll_post = qt_metrics_nll(m, NULL, 0, out->temperature);
    out->ece_post = qt_metrics_ece(m, NULL, 0, out->temperature, QT_METRICS_ECE_BINS);

    qt_split_val *sv = &out->split_val;
    sv->temperature = sv->ece_before = sv->ece_after = NAN;
    if (m->n >= 2) {
        int64_t *idx = malloc((size_t)m->n * sizeof *idx);
        if (!idx) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto fail;
        }
        for (int64_t i = 0; i < m->n; i++) idx[i] = i;
        qt_rng rng;
        qt_rng_seed(&rng, QT_METRICS_SEED);
        qt_rng_shuffle(&rng, idx, m->n);
        sv->n_a = m->n / 2;
        sv->n_b = m->n - sv->n_a;
        sv->temperature = qt_metrics_fit_temperature(m, idx, sv->n_a, &sv->at_bound);
        sv->ece_before = qt_metrics_ece(m, idx + sv->n_a, sv->n_b, 1.0, QT_METRICS_ECE_BINS);
        sv->ece_after = qt_metrics_ece(m, idx + sv->n_a, sv->n_b, sv->temperature, QT_METRICS_ECE_BINS);
        free(idx);
    }

    if (tier_opt)
        out->tier_opt = *tier_opt;
    else
        qt_tier_options_default(&out->tier_opt);
    if (reference && train_counts) {
        int32_t *ref_pred = malloc((size_t)m->n * sizeof *ref_pred);
        int32_t *tier_of = malloc((size_t)m->c * sizeof *tier_of);
        if (!ref_pred || !tier_of) {
            free(ref_pred);
            free(tier_of);
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto fail;
        }
        qt_metrics_argmax(reference->data, m->n, m->c, ref_pred);
        qt_metrics_assign_tiers(train_counts, m->c, head, mid, tier_of);
        rc = qt_metrics_tiers(out->pred, ref_pred, m->labels, m->n, tier_of, m->c, &out->tier_opt,
                              out->tiers);
        free(ref_pred);
        free(tier_of);
        if (rc) goto fail;
        out->has_tiers = 1;
    }
    return 0;
fail:
    qt_metrics_report_free(out);
    return rc;
}

void qt_metrics_report_free(qt_metrics_report *r)
{
    free(r->per_class);
    free(r->pred);
    memset(r, 0, sizeof *r);
}

/* JSON has no NaN: missing numbers are null. */
static json_t *jnum(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *qt_tier_result_json(const qt_tier_result *t)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "n", json_integer(t->n));
    json_object_set_new(o, "classes", json_integer(t->classes));
    json_object_set_new(o, "accuracy", jnum(t->accuracy));
    json_object_set_new(o, "reference_accuracy", jnum(t->reference_accuracy));
    json_object_set_new(o, "delta", jnum(t->delta));
    json_object_set_new(o, "ci_low", jnum(t->ci_low));
    json_object_set_new(o, "ci_high", jnum(t->ci_high));
    json_object_set_new(o, "flips", json_integer(t->flips));
    json_object_set_new(o, "directional", json_boolean(t->directional));
    return o;
}

json_t *qt_metrics_report_json(const qt_metrics_report *r, char *const *names)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "n", json_integer(r->n));
    json_object_set_new(o, "n_classes", json_integer(r->c));
    json_object_set_new(o, "accuracy", jnum(r->accuracy));
    json_object_set_new(o, "macro_f1", jnum(r->macro_f1));
    json_object_set_new(o, "nll", jnum(r->nll));
    json_object_set_new(o, "ece", jnum(r->ece));
    json_object_set_new(o, "ece_bins", json_integer(QT_METRICS_ECE_BINS));
    json_object_set_new(o, "temperature", jnum(r->temperature));
    json_object_set_new(o, "temperature_at_bound", json_boolean(r->temperature_at_bound));
    json_object_set_new(o, "nll_post", jnum(r->nll_post));
    json_object_set_new(o, "ece_post", jnum(r->ece_post));
    json_t *sv = json_object();
    json_object_set_new(sv, "temperature", jnum(r->split_val.temperature));
    json_object_set_new(sv, "ece_before", jnum(r->split_val.ece_before));
    json_object_set_new(sv, "ece_after", jnum(r->split_val.ece_after));
    json_object_set_new(sv, "n_a", json_integer(r->split_val.n_a));
    json_object_set_new(sv, "n_b", json_integer(r->split_val.n_b));
    json_object_set_new(sv, "seed", json_integer(QT_METRICS_SEED));
    json_object_set_new(o, "split_val", sv);
    json_t *pc = json_array();
    for (size_t i = 0; i < r->n_per_class; i++) {
        const qt_class_stats *s = &r->per_class[i];
        json_t *e = json_object();
        json_object_set_new(e, "label", json_integer(s->label));
        if (names && names[s->label]) json_object_set_new(e, "name", json_string(names[s->label]));
        json_object_set_new(e, "support", json_integer(s->support));
        json_object_set_new(e, "predicted", json_integer(s->predicted));
        json_object_set_new(e, "precision", jnum(s->precision));
        json_object_set_new(e, "recall", jnum(s->recall));
        json_object_set_new(e, "f1", jnum(s->f1));
        json_array_append_new(pc, e);
    }
    json_object_set_new(o, "per_class", pc);
    if (r->has_tiers) {
        json_t *t = json_object();
        for (int k = 0; k < QT_TIER_COUNT; k++)
            json_object_set_new(t, qt_tier_name(k), qt_tier_result_json(&r->tiers[k]));
        json_object_set_new(o, "tiers", t);
        json_t *b = json_object();
        json_object_set_new(b, "resamples", json_integer(r->tier_opt.resamples));
        json_object_set_new(b, "seed", json_integer((json_int_t)r->tier_opt.seed));
        json_object_set_new(b, "level", json_real(r->tier_opt.level));
        json_object_set_new(b, "min_flips", json_integer(r->tier_opt.min_flips));
        json_object_set_new(b, "head", json_integer(r->head));
        json_object_set_new(b, "mid", json_integer(r->mid));
        json_object_set_new(b, "rng", json_string("xoshiro256** seeded by splitmix64"));
        json_object_set_new(o, "bootstrap", b);
    }
    return o;
}

/* --------------------------------------------------------------- labels */

#define QT_CONFIG_MAX_BYTES ((size_t)64 << 20)
#define QT_JSONL_MAX_LINE ((size_t)64 << 20)
#define QT_MAX_CLASSES 10000000

/* A whole decimal number in [0, QT_MAX_CLASSES) or -1. */
static int64_t parse_id(const char *s)
{
    if (!s[0] || strlen(s) > 9) return -1;
    int64_t v = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9') return -1;
        v = v * 10 + (*p - '0');
    }
    return v < QT_MAX_CLASSES ? v : -1;
}

void qt_label_names_free(qt_label_names *ln)
{
    if (!ln) return;
    for (int64_t i = 0; i < ln->n; i++) free(ln->names[i]);
    free(ln->names);
    ln->names = NULL;
    ln->n = 0;
}

static int names_set(qt_label_names *ln, int64_t id, const char *name, const char *path)
{
    if (id >= ln->n) {
        int64_t cap = id + 1;
        char **nn = realloc(ln->names, (size_t)cap * sizeof *nn);
        if (!nn) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        for (int64_t i = ln->n; i < cap; i++) nn[i] = NULL;
        ln->names = nn;
        ln->n = cap;
    }
    if (ln->names[id]) return 0; /* id2label wins over label2id */
    ln->names[id] = strdup(name);
    if (!ln->names[id]) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    return 0;
}

int qt_label_names_load(const char *config_path, qt_label_names *out)
{
    memset(out, 0, sizeof *out);
    char *text;
    size_t len;
    int rc = qt_read_file(config_path, QT_CONFIG_MAX_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    free(text);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: not a JSON object (line %d: %s)", config_path,
                       err.line, root ? "top level is not an object" : err.text);
    }
    json_t *id2label = json_object_get(root, "id2label");
    json_t *label2id = json_object_get(root, "label2id");
    const char *key;
    json_t *v;
    if (json_is_object(id2label)) {
        json_object_foreach(id2label, key, v) {
            int64_t id = parse_id(key);
            if (id < 0 || !json_is_string(v)) {
                rc = qt_fail(QTOOL_ERR_FORMAT, "%s: id2label entry \"%.40s\" is not id: name",
                             config_path, key);
                goto done;
            }
            if ((rc = names_set(out, id, json_string_value(v), config_path))) goto done;
        }
    }
    if (json_is_object(label2id)) {
        json_object_foreach(label2id, key, v) {
            if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                json_integer_value(v) >= QT_MAX_CLASSES) {
                rc = qt_fail(QTOOL_ERR_FORMAT, "%s: label2id entry \"%.40s\" is not name: id",
                             config_path, key);
                goto done;
            }
            if ((rc = names_set(out, json_integer_value(v), key, config_path))) goto done;
        }
    }
    if (out->n == 0)
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no id2label or label2id", config_path);
done:
    json_decref(root);
    if (rc) qt_label_names_free(out);
    return rc;
}

int64_t qt_label_names_lookup(const qt_label_names *ln, const char *name)
{
    if (ln)
        for (int64_t i = 0; i < ln->n; i++)
            if (ln->names[i] && strcmp(ln->names[i], name) == 0) return i;
    return parse_id(name);
}

/* A label value (integer or string) to an id, or a message. */
static int64_t label_value_id(json_t *v, const qt_label_names *names, int64_t n_classes,
                              char *why, size_t why_len)
{
    int64_t id;
    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        if (x < 0 || x >= QT_MAX_CLASSES) {
            snprintf(why, why_len, "label %lld is not a valid class id", (long long)x);
            return -1;
        }
        id = x;
    } else if (json_is_string(v)) {
        id = qt_label_names_lookup(names, json_string_value(v));
        if (id < 0) {
            snprintf(why, why_len, "unknown label \"%.60s\"%s", json_string_value(v),
                     names ? "" : " (pass --config with label2id to map names)");
            return -1;
        }
    } else {
        snprintf(why, why_len, "\"label\" must be an integer id or a class name");
        return -1;
    }
    if (n_classes > 0 && id >= n_classes) {
        snprintf(why, why_len, "label %lld is outside the %lld classes", (long long)id,
                 (long long)n_classes);
        return -1;
    }
    return id;
}

int qt_labels_read_jsonl(const char *path, const qt_label_names *names, int64_t n_classes,
                         int32_t **labels, int64_t *n)
{
    *labels = NULL;
    *n = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lineno = 0, count = 0, alloc = 0;
    int32_t *out = NULL;
    int rc = 0;
    while ((len = getline(&line, &cap, fp)) >= 0) {
        lineno++;
        if ((size_t)len > QT_JSONL_MAX_LINE) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%lld: line longer than %zu bytes", path,
                         (long long)lineno, QT_JSONL_MAX_LINE);
            break;
        }
        size_t k = 0;
        while (k < (size_t)len && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r' || line[k] == '\n'))
            k++;
        if (k == (size_t)len) continue; /* blank line */
        json_error_t err;
        json_t *obj = json_loadb(line, (size_t)len, 0, &err);
        if (!obj || !json_is_object(obj)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%lld: %s", path, (long long)lineno,
                         obj ? "not a JSON object" : err.text);
            json_decref(obj);
            break;
        }
        json_t *v = json_object_get(obj, "label");
        char why[160];
        int64_t id = v ? label_value_id(v, names, n_classes, why, sizeof why) : -1;
        if (!v) snprintf(why, sizeof why, "no \"label\" field");
        json_decref(obj);
        if (id < 0) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s:%lld: %s", path, (long long)lineno, why);
            break;
        }
        if (count == alloc) {
            int64_t na = alloc ? alloc * 2 : 1024;
            int32_t *nb = realloc(out, (size_t)na * sizeof *nb);
            if (!nb) {
                rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
                break;
            }
            out = nb;
            alloc = na;
        }
        out[count++] = (int32_t)id;
    }
    if (!rc && ferror(fp)) rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: read error", path);
    if (!rc && count == 0) rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no examples", path);
    free(line);
    fclose(fp);
    if (rc) {
        free(out);
        return rc;
    }
    *labels = out;
    *n = count;
    return 0;
}

int qt_label_counts_from_jsonl(const char *path, const qt_label_names *names, int64_t n_classes,
                               int64_t *counts)
{
    int32_t *labels;
    int64_t n;
    memset(counts, 0, (size_t)n_classes * sizeof *counts);
    int rc = qt_labels_read_jsonl(path, names, n_classes, &labels, &n);
    if (rc) return rc;
    for (int64_t i = 0; i < n; i++) counts[labels[i]]++;
    free(labels);
    return 0;
}

int qt_label_counts_from_json(const char *path, const qt_label_names *names, int64_t n_classes,
                              int64_t *counts)
{
    memset(counts, 0, (size_t)n_classes * sizeof *counts);
    char *text;
    size_t len;
    int rc = qt_read_file(path, QT_CONFIG_MAX_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    free(text);
    if (!root || !json_is_object(root)) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: expected a JSON object {label: count}%s%s", path,
                     root ? "" : ": ", root ? "" : err.text);
        json_decref(root);
        return rc;
    }
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        int64_t id = qt_label_names_lookup(names, key);
        if (id < 0 || id >= n_classes) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: %s label \"%.60s\"", path,
                         id < 0 ? "unknown" : "out-of-range", key);
            break;
        }
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: count of \"%.60s\" is not a non-negative integer",
                         path, key);
            break;
        }
        counts[id] += json_integer_value(v);
    }
    json_decref(root);
    return rc;
}
