/* Classification metrics on logits [N, C] and integer labels: accuracy,
 * macro-F1 (scikit-learn's definition), per-class precision/recall/F1, NLL,
 * ECE, temperature scaling, the split-val calibration experiment and the
 * per-tier paired bootstrap against a reference run. Pure functions: they
 * work on logits from anywhere (qtool eval, another framework's dump).
 * Definitions, RNG and numerical choices are documented in
 * docs/measurements.md; the constants below are the protocol's defaults. */
#ifndef QT_METRICS_H
#define QT_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#define QT_METRICS_ECE_BINS 15
#define QT_METRICS_SEED 42
#define QT_METRICS_BOOTSTRAP 1000
#define QT_METRICS_MIN_FLIPS 20 /* a tier delta with fewer flips is directional */
#define QT_METRICS_HEAD 20
#define QT_METRICS_MID 40
/* Bracket of the temperature search (golden-section on log T). */
#define QT_METRICS_T_MIN 0.01
#define QT_METRICS_T_MAX 100.0

/* ------------------------------------------------------------------ RNG */

/* xoshiro256** seeded through splitmix64: state s[i] = splitmix64 outputs
 * 1..4 of the seed. Bounded draws use rejection (see qt_rng_below) so the
 * stream is reproducible in any language with 64-bit integers. */
typedef struct qt_rng {
    uint64_t s[4];
} qt_rng;

void qt_rng_seed(qt_rng *r, uint64_t seed);
uint64_t qt_rng_next(qt_rng *r);
/* Uniform in [0, n), n >= 1: draws x until x >= (2^64 - n) mod n, returns x mod n. */
uint64_t qt_rng_below(qt_rng *r, uint64_t n);
/* Fisher-Yates: for i = n-1 down to 1, swap idx[i] with idx[qt_rng_below(i + 1)]. */
void qt_rng_shuffle(qt_rng *r, int64_t *idx, int64_t n);

/* ---------------------------------------------------------------- input */

/* Logits [n, c] (row-major F32) with the true label of each row. */
typedef struct qt_logits {
    const float *data;
    int64_t n, c;
    const int32_t *labels; /* n entries in [0, c) */
} qt_logits;

/* Reads a 2-D floating tensor (F32, or F16/BF16/F64 converted) from a
 * safetensors file into a malloc'ed F32 buffer. */
int qt_logits_load(const char *path, const char *tensor, float **data, int64_t *n, int64_t *c);

/* Checks shape, labels in range and that every logit is finite. */
int qt_logits_validate(const qt_logits *m, const char *what);

/* Predicted class of each row: the first index of the row's maximum. */
void qt_metrics_argmax(const float *logits, int64_t n, int64_t c, int32_t *pred);

double qt_metrics_accuracy(const int32_t *pred, const int32_t *labels, int64_t n);

typedef struct qt_class_stats {
    int32_t label;
    int64_t support;   /* rows whose true label is this class */
    int64_t predicted; /* rows predicted as this class */
    int64_t tp;
    double precision, recall, f1; /* 0 where the denominator is 0 */
} qt_class_stats;

/* Per-class statistics over the labels present in the truth or the
 * predictions (ascending), and their unweighted mean F1: exactly
 * sklearn.metrics.f1_score(average="macro", zero_division=0). `*out` is
 * malloc'ed. */
int qt_metrics_per_class(const int32_t *pred, const int32_t *labels, int64_t n, int64_t c,
                         qt_class_stats **out, size_t *n_out, double *macro_f1);

/* Mean negative log-likelihood of softmax(logits / T) over `rows` (NULL:
 * all n rows, else n_rows indices). */
double qt_metrics_nll(const qt_logits *m, const int64_t *rows, int64_t n_rows, double temperature);
/* Expected calibration error of softmax(logits / T): `n_bins` equal-width
 * bins (lo, hi] on the top-class probability, weighted by bin count. */
double qt_metrics_ece(const qt_logits *m, const int64_t *rows, int64_t n_rows, double temperature,
                      int n_bins);
/* The T in [QT_METRICS_T_MIN, QT_METRICS_T_MAX] minimising qt_metrics_nll:
 * golden-section search on log T (NLL is convex in 1/T, hence unimodal in
 * log T) to an interval of 1e-10; where NLL is flat to rounding the search
 * moves toward smaller T. `*at_bound` (may be NULL) is set when the
 * minimum lies on the edge of the bracket. */
double qt_metrics_fit_temperature(const qt_logits *m, const int64_t *rows, int64_t n_rows,
                                  int *at_bound);

/* ---------------------------------------------------------------- tiers */

enum { QT_TIER_HEAD = 0, QT_TIER_MID = 1, QT_TIER_TAIL = 2, QT_TIER_COUNT = 3 };
const char *qt_tier_name(int tier);

/* Ranks classes by training count (descending, ties by ascending label id)
 * and writes tier_of_class[c]: the first `head` ranks are head, the next
 * `mid` mid, the rest tail. Classes absent from training count 0. */
void qt_metrics_assign_tiers(const int64_t *train_counts, int64_t c, int64_t head, int64_t mid,
                             int32_t *tier_of_class);

typedef struct qt_tier_result {
    int64_t n;       /* rows whose true label is in the tier */
    int64_t classes; /* classes in the tier */
    double accuracy, reference_accuracy, delta; /* NAN when n == 0 */
    double ci_low, ci_high;                     /* paired bootstrap percentile CI */
    int64_t flips;                              /* rows predicted differently by the two runs */
    int directional;                            /* flips < min_flips */
} qt_tier_result;

typedef struct qt_tier_options {
    int resamples;   /* QT_METRICS_BOOTSTRAP */
    uint64_t seed;   /* QT_METRICS_SEED; each tier starts a fresh stream */
    double level;    /* 0.95 */
    int64_t min_flips;
} qt_tier_options;

void qt_tier_options_default(qt_tier_options *o);

/* Per-tier accuracy of `pred` and `ref_pred` against `labels`, their
 * difference, a paired bootstrap CI of the difference (resampling rows of
 * the tier with replacement; percentiles with linear interpolation, as
 * numpy's default) and the flips. */
int qt_metrics_tiers(const int32_t *pred, const int32_t *ref_pred, const int32_t *labels, int64_t n,
                     const int32_t *tier_of_class, int64_t c, const qt_tier_options *opt,
                     qt_tier_result out[QT_TIER_COUNT]);

/* --------------------------------------------------------- full report */

typedef struct qt_split_val {
    double temperature, ece_before, ece_after; /* ECE on half B before/after T from half A */
    int64_t n_a, n_b;
    int at_bound;
} qt_split_val;

typedef struct qt_metrics_report {
    int64_t n, c;
    double accuracy, macro_f1, nll, ece;
    double temperature, nll_post, ece_post;
    int temperature_at_bound;
    qt_split_val split_val; /* NAN fields when n < 2 */
    qt_class_stats *per_class;
    size_t n_per_class;
    int32_t *pred; /* n predictions */
    int has_tiers;
    qt_tier_result tiers[QT_TIER_COUNT];
    qt_tier_options tier_opt;
    int64_t head, mid;
} qt_metrics_report;

/* Everything above for one run. `reference` (may be NULL) is the other
 * run's logits on the same rows; tiers need it and `train_counts` (c
 * entries; NULL: tiers are skipped). */
int qt_metrics_compute(const qt_logits *m, const qt_logits *reference, const int64_t *train_counts,
                       int64_t head, int64_t mid, const qt_tier_options *tier_opt,
                       qt_metrics_report *out);
void qt_metrics_report_free(qt_metrics_report *r);

/* The report as JSON (keys in docs/measurements.md); `names` (may be NULL,
 * else c entries, NULL entries allowed) adds class names. NULL on OOM. */
json_t *qt_metrics_report_json(const qt_metrics_report *r, char *const *names);
json_t *qt_tier_result_json(const qt_tier_result *t);

/* --------------------------------------------------------------- labels */

/* Class names by id, from a Hugging Face config.json (id2label, else
 * label2id). names[i] may be NULL for ids the config does not name. */
typedef struct qt_label_names {
    char **names;
    int64_t n;
} qt_label_names;

int qt_label_names_load(const char *config_path, qt_label_names *out);
void qt_label_names_free(qt_label_names *ln);
/* Id of a label given as a name (or, failing that, as a decimal string);
 * -1 when unknown. */
int64_t qt_label_names_lookup(const qt_label_names *ln, const char *name);

/* Reads the "label" of every line of a JSONL file: an integer id or a name
 * mapped through `names` (may be NULL). Ids must be < `n_classes` when it is
 * > 0. Errors name the file and line. `*labels` is malloc'ed. */
int qt_labels_read_jsonl(const char *path, const qt_label_names *names, int64_t n_classes,
                         int32_t **labels, int64_t *n);
/* Training counts per class (`counts` has n_classes entries, zeroed first)
 * from a JSONL file's labels or a JSON object {label: count}. */
int qt_label_counts_from_jsonl(const char *path, const qt_label_names *names, int64_t n_classes,
                               int64_t *counts);
int qt_label_counts_from_json(const char *path, const qt_label_names *names, int64_t n_classes,
                              int64_t *counts);

#endif
