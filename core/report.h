/* The report: results.json (one row per configuration, schema in
 * docs/measurements.md) -> results.csv, report.md and a self-contained
 * report.html (inline CSS and SVG). Also the decision logic the report
 * presents: the constraint envelope check, Pareto frontiers, the
 * recommendation and its computed counterfactuals. */
#ifndef QT_REPORT_H
#define QT_REPORT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "metrics.h"

#define QT_RESULTS_SCHEMA "qtool-results/1"
#define QT_REPORT_F1_TOLERANCE 0.005

/* ------------------------------------------------------------- envelope */

enum {
    QT_C_DEVICE = 0,
    QT_C_LATENCY, /* ms_per_example <= max_ms_per_example */
    QT_C_F1,      /* macro_f1 >= min_macro_f1 */
    QT_C_ECE,     /* ece_post <= max_ece_post */
    QT_C_VRAM,    /* peak_vram_bytes <= max_vram_gb * 1e9 */
    QT_C_COUNT
};

/* Outcome of one constraint for one configuration. */
enum { QT_CHECK_UNSET = 0, QT_CHECK_PASS, QT_CHECK_FAIL, QT_CHECK_MISSING };

typedef struct qt_envelope {
    char *device; /* NULL: any device */
    double max_ms_per_example, min_macro_f1, max_ece_post, max_vram_gb; /* NAN: not set */
    /* macro-F1 differences up to this are treated as ties by the
     * recommendation (QT_REPORT_F1_TOLERANCE). */
    double f1_tolerance;
} qt_envelope;

void qt_envelope_init(qt_envelope *e);
void qt_envelope_free(qt_envelope *e);
int qt_envelope_copy(qt_envelope *dst, const qt_envelope *src);
/* "max_ms_per_example" etc. */
const char *qt_constraint_key(int constraint);
/* As JSON / from JSON (missing keys stay unset). */
json_t *qt_envelope_json(const qt_envelope *e);
int qt_envelope_from_json(json_t *o, qt_envelope *e, const char *what);

/* ------------------------------------------------------------------ rows */

typedef struct qt_row {
    char *model, *plugin, *status, *reason, *device, *card, *options;
    int weight_bits; /* -1 when unknown */
    int is_reference;
    double accuracy, macro_f1, nll, ece, ece_post, temperature;
    double sv_temperature, sv_ece_before, sv_ece_after;
    int64_t sv_n_a, sv_n_b;
    int has_tiers;
    qt_tier_result tiers[QT_TIER_COUNT];
    double ms_per_example, examples_per_s;
    double peak_vram_bytes, peak_vram_device_bytes;
    double load_s, quantize_s, weight_bytes;
    double *class_accuracy; /* one per qt_results.named_classes, NAN when absent */
    json_t *json;           /* the row as read (borrowed from the results root) */
} qt_row;

typedef struct qt_results {
    qt_row *rows;
    size_t n;
    qt_envelope env;
    int has_env;
    char **named_classes;
    size_t n_named;
    json_t *root;
} qt_results;

/* Reads results.json; fields may be missing or null (NAN / "-"), unknown
 * ones are ignored. Errors name the file. */
int qt_results_load(const char *path, qt_results *out);
int qt_results_from_json(json_t *root, const char *what, qt_results *out);
void qt_results_free(qt_results *r);

/* "model / plugin" into buf. */
const char *qt_row_label(const qt_row *r, char *buf, size_t len);
int qt_row_ok(const qt_row *r);

/* --------------------------------------------------------------- decision */

int qt_constraint_check(const qt_envelope *e, const qt_row *r, int constraint);
/* ok and no constraint FAIL or MISSING. */
int qt_row_viable(const qt_envelope *e, const qt_row *r);

/* on_front[i] = 1 when row i is eligible (`eligible` NULL: every ok row
 * with both values) and no other eligible row has cost <= and F1 >= with
 * one of them strict. `cost` picks the x axis: 0 latency, 1 VRAM. */
void qt_pareto_front(const qt_results *r, int cost, const int *eligible, int *on_front);

/* The recommended row or -1 when nothing is viable. Rule (documented in
 * docs/measurements.md): among viable rows, those not dominated on
 * (latency, VRAM, macro-F1) jointly; of these, the ones within
 * f1_tolerance of the best macro-F1; of these the lowest latency, then
 * lowest VRAM, then highest F1, then the first in the file. */
long qt_recommend(const qt_results *r, const qt_envelope *e);
/* Sentences explaining the choice (or why there is none). malloc'ed. */
char *qt_recommend_reasoning(const qt_results *r, const qt_envelope *e, long choice);

typedef struct qt_counterfactual {
    int constraint;  /* QT_C_*, or QT_C_COUNT for the F1 tie tolerance */
    int loosen;      /* 1: relaxing the constraint, 0: tightening it */
    double value;    /* the new threshold (numeric constraints) */
    char *device;    /* the new device (QT_C_DEVICE; NULL: no device constraint) */
    long choice;     /* the recommendation after the change (-1: none) */
    char *text;      /* one sentence */
} qt_counterfactual;

/* Every single-constraint change nearest to the current envelope (one
 * loosening and one tightening per constraint, where one exists) that
 * changes the recommendation, found by re-running qt_recommend at each
 * threshold where some row's pass/fail flips. */
int qt_counterfactuals(const qt_results *r, const qt_envelope *e, qt_counterfactual **out, size_t *n);
void qt_counterfactuals_free(qt_counterfactual *c, size_t n);

/* ---------------------------------------------------------------- output */

/* Writes results.csv, report.md and report.html into `dir` (atomically,
 * each file). `env` overrides the envelope in the results (may be NULL). */
int qt_report_write(const char *dir, const qt_results *r, const qt_envelope *env);
/* The individual writers (report_write.c, report_html.c). */
int qt_report_write_csv(FILE *f, const qt_results *r, const qt_envelope *e);
int qt_report_write_md(FILE *f, const qt_results *r, const qt_envelope *e);
int qt_report_write_html(FILE *f, const qt_results *r, const qt_envelope *e);

/* Rebuilds the report from DIR/results.json; `env` (may be NULL) replaces
 * the envelope stored there. */
int qt_report_from_dir(const char *dir, const qt_envelope *env);

#endif
