/* Reading results.json and the decision logic: envelope checks, Pareto
 * frontiers, the recommendation and its counterfactuals. The writers are
 * in report_write.c (CSV, Markdown) and report_html.c. */
#include "report.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "fsutil.h"

#define QT_RESULTS_MAX_BYTES ((size_t)256 << 20)
#define QT_RESULTS_MAX_ROWS 100000

/* ------------------------------------------------------------- envelope */

void qt_envelope_init(qt_envelope *e)
{
    e->device = NULL;
    e->max_ms_per_example = e->min_macro_f1 = e->max_ece_post = e->max_vram_gb = NAN;
    e->f1_tolerance = QT_REPORT_F1_TOLERANCE;
}

void qt_envelope_free(qt_envelope *e)
{
    free(e->device);
    e->device = NULL;
}

int qt_envelope_copy(qt_envelope *dst, const qt_envelope *src)
{
    *dst = *src;
    dst->device = NULL;
    if (src->device && !(dst->device = strdup(src->device)))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    return 0;
}

const char *qt_constraint_key(int c)
{
    static const char *keys[] = {"device", "max_ms_per_example", "min_macro_f1", "max_ece_post",
                                 "max_vram_gb"};
    if (c >= 0 && c < QT_C_COUNT) return keys[c];
    return "f1_tolerance";
}

static double *env_field(qt_envelope *e, int c)
{
    switch (c) {
    case QT_C_LATENCY: return &e->max_ms_per_example;
    case QT_C_F1: return &e->min_macro_f1;
    case QT_C_ECE: return &e->max_ece_post;
    case QT_C_VRAM: return &e->max_vram_gb;
    case QT_C_COUNT: return &e->f1_tolerance;
    default: return NULL;
    }
}

static json_t *jreal(double v) { return isfinite(v) ? json_real(v) : json_null(); }

json_t *qt_envelope_json(const qt_envelope *e)
{
    json_t *o = json_object();
    qt_envelope tmp = *e;
    json_object_set_new(o, "device", e->device ? json_string(e->device) : json_null());
    for (int c = QT_C_LATENCY; c <= QT_C_COUNT; c++)
        json_object_set_new(o, qt_constraint_key(c), jreal(*env_field(&tmp, c)));
    return o;
}

static double jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_integer(v)) return (double)json_integer_value(v);
    if (json_is_real(v)) return json_real_value(v);
    return NAN;
}

int qt_envelope_from_json(json_t *o, qt_envelope *e, const char *what)
{
    qt_envelope_init(e);
    if (!json_is_object(o)) return 0;
    json_t *d = json_object_get(o, "device");
    if (json_is_string(d) && json_string_length(d) > 0 && !(e->device = strdup(json_string_value(d))))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
    for (int c = QT_C_LATENCY; c <= QT_C_COUNT; c++) {
        double v = jnum(o, qt_constraint_key(c));
        if (isfinite(v)) *env_field(e, c) = v;
    }
    if (!(e->f1_tolerance >= 0)) e->f1_tolerance = QT_REPORT_F1_TOLERANCE;
    return 0;
}

/* ------------------------------------------------------------------ rows */

static char *jdup(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (json_is_string(v)) return strdup(json_string_value(v));
    return NULL;
}

/* Options as "k=v, k=v" whatever form they came in. */
static char *options_text(json_t *v)
{
    if (json_is_string(v)) return strdup(json_string_value(v));
    if (!json_is_object(v) || json_object_size(v) == 0) return strdup("");
    size_t cap = 256, len = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    s[0] = '\0';
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        char *vs = json_is_string(val) ? strdup(json_string_value(val))
                                       : json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
        if (!vs) continue;
        size_t need = len + strlen(key) + strlen(vs) + 4;
        if (need >= cap) {
            while (need >= cap) cap *= 2;
            char *ns = realloc(s, cap);
            if (!ns) {
                free(vs);
                break;
            }
            s = ns;
        }
        len += (size_t)sprintf(s + len, "%s%s=%s", len ? ", " : "", key, vs);
        free(vs);
    }
    return s;
}

static void read_tier(json_t *o, qt_tier_result *t)
{
    memset(t, 0, sizeof *t);
    t->accuracy = jnum(o, "accuracy");
    t->reference_accuracy = jnum(o, "reference_accuracy");
    t->delta = jnum(o, "delta");
    t->ci_low = jnum(o, "ci_low");
    t->ci_high = jnum(o, "ci_high");
    double v = jnum(o, "flips");
    t->flips = isfinite(v) ? (int64_t)v : -1;
    v = jnum(o, "n");
    t->n = isfinite(v) ? (int64_t)v : -1;
    v = jnum(o, "classes");
    t->classes = isfinite(v) ? (int64_t)v : -1;
    json_t *d = json_object_get(o, "directional");
    t->directional = json_is_boolean(d) ? json_is_true(d) : (t->flips >= 0 && t->flips < QT_METRICS_MIN_FLIPS);
}

static int add_named(qt_results *r, const char *name)
{
    for (size_t i = 0; i < r->n_named; i++)
        if (strcmp(r->named_classes[i], name) == 0) return 0;
    char **nn = realloc(r->named_classes, (r->n_named + 1) * sizeof *nn);
    if (!nn) return -1;
    r->named_classes = nn;
    if (!(nn[r->n_named] = strdup(name))) return -1;
    r->n_named++;
    return 0;
}

static int read_row(json_t *o, qt_row *row)
{
    memset(row, 0, sizeof *row);
    row->json = o;
    row->model = jdup(o, "model");
    row->plugin = jdup(o, "plugin");
    row->status = jdup(o, "status");
    row->reason = jdup(o, "reason");
    row->device = jdup(o, "device");
    row->card = jdup(o, "card");
    row->options = options_text(json_object_get(o, "options"));
    if (!row->model) row->model = strdup("?");
    if (!row->plugin) row->plugin = strdup("?");
    if (!row->status) row->status = strdup("failed");
    if (!row->model || !row->plugin || !row->status || !row->options) return -1;
    double wb = jnum(o, "weight_bits");
    row->weight_bits = isfinite(wb) && wb > 0 && wb < 1000 ? (int)wb : -1;
    json_t *ref = json_object_get(o, "is_reference");
    json_t *refname = json_object_get(o, "reference");
    row->is_reference = json_is_true(ref) ||
                        (json_is_string(refname) && strcmp(json_string_value(refname), row->plugin) == 0);
    row->accuracy = jnum(o, "accuracy");
    row->macro_f1 = jnum(o, "macro_f1");
    row->nll = jnum(o, "nll");
    row->ece = jnum(o, "ece");
    row->ece_post = jnum(o, "ece_post");
    row->temperature = jnum(o, "temperature");
    json_t *sv = json_object_get(o, "split_val");
    row->sv_temperature = jnum(sv, "temperature");
    row->sv_ece_before = jnum(sv, "ece_before");
    row->sv_ece_after = jnum(sv, "ece_after");
    double na = jnum(sv, "n_a"), nb = jnum(sv, "n_b");
    row->sv_n_a = isfinite(na) ? (int64_t)na : -1;
    row->sv_n_b = isfinite(nb) ? (int64_t)nb : -1;
    json_t *tiers = json_object_get(o, "tiers");
    if (json_is_object(tiers)) {
        for (int t = 0; t < QT_TIER_COUNT; t++) {
            json_t *x = json_object_get(tiers, qt_tier_name(t));
            read_tier(x, &row->tiers[t]);
            if (json_is_object(x)) row->has_tiers = 1;
        }
    }
    row->ms_per_example = jnum(o, "ms_per_example");
    row->examples_per_s = jnum(o, "examples_per_s");
    if (!isfinite(row->examples_per_s) && row->ms_per_example > 0)
        row->examples_per_s = 1000.0 / row->ms_per_example;
    row->peak_vram_bytes = jnum(o, "peak_vram_bytes");
    json_t *pv = json_object_get(o, "peak_vram");
    row->peak_vram_device_bytes = jnum(pv, "device_bytes");
    if (!isfinite(row->peak_vram_bytes)) row->peak_vram_bytes = jnum(pv, "allocator_bytes");
    row->load_s = jnum(o, "load_s");
    row->quantize_s = jnum(o, "quantize_s");
    row->weight_bytes = jnum(o, "weight_bytes");
    return 0;
}

static void row_free(qt_row *row)
{
    free(row->model);
    free(row->plugin);
    free(row->status);
    free(row->reason);
    free(row->device);
    free(row->card);
    free(row->options);
    free(row->class_accuracy);
}

void qt_results_free(qt_results *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) row_free(&r->rows[i]);
    free(r->rows);
    for (size_t i = 0; i < r->n_named; i++) free(r->named_classes[i]);
    free(r->named_classes);
    qt_envelope_free(&r->env);
    json_decref(r->root);
    memset(r, 0, sizeof *r);
}

int qt_results_from_json(json_t *root, const char *what, qt_results *out)
{
    memset(out, 0, sizeof *out);
    qt_envelope_init(&out->env);
    if (!json_is_object(root)) return qt_fail(QTOOL_ERR_FORMAT, "%s: not a JSON object", what);
    json_t *rows = json_object_get(root, "rows");
    if (!json_is_array(rows)) return qt_fail(QTOOL_ERR_FORMAT, "%s: no \"rows\" array", what);
    if (json_array_size(rows) > QT_RESULTS_MAX_ROWS)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: more than %d rows", what, QT_RESULTS_MAX_ROWS);
    out->root = json_incref(root);
    int rc = 0;
    json_t *env = json_object_get(root, "envelope");
    if (json_is_object(env)) {
        out->has_env = 1;
        if ((rc = qt_envelope_from_json(env, &out->env, what))) goto fail;
    }
    json_t *named = json_object_get(root, "named_classes");
    size_t i;
    json_t *v;
    json_array_foreach(named, i, v) {
        if (json_is_string(v) && add_named(out, json_string_value(v))) goto oom;
    }
    out->rows = calloc(json_array_size(rows) + 1, sizeof *out->rows);
    if (!out->rows) goto oom;
    json_array_foreach(rows, i, v) {
        if (!json_is_object(v)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: row %zu is not an object", what, i);
            goto fail;
        }
        out->n++;
        if (read_row(v, &out->rows[i])) goto oom;
        /* Named classes the envelope did not list still get a column. */
        if (!json_is_array(named)) {
            const char *key;
            json_t *acc;
            json_object_foreach(json_object_get(v, "class_accuracy"), key, acc)
                if (add_named(out, key)) goto oom;
        }
    }
    for (i = 0; i < out->n; i++) {
        qt_row *row = &out->rows[i];
        row->class_accuracy = malloc((out->n_named + 1) * sizeof *row->class_accuracy);
        if (!row->class_accuracy) goto oom;
        json_t *ca = json_object_get(row->json, "class_accuracy");
        for (size_t k = 0; k < out->n_named; k++) row->class_accuracy[k] = jnum(ca, out->named_classes[k]);
    }
    return 0;
oom:
    rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
fail:
    qt_results_free(out);
    return rc;
}

int qt_results_load(const char *path, qt_results *out)
{
    memset(out, 0, sizeof *out);
    char *text;
    size_t len;
    int rc = qt_read_file(path, QT_RESULTS_MAX_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t err;
    json_t *root = json_loadb(text, len, 0, &err);
    free(text);
    if (!root) return qt_fail(QTOOL_ERR_FORMAT, "%s:%d: %s", path, err.line, err.text);
    rc = qt_results_from_json(root, path, out);
    json_decref(root);
    return rc;
}

const char *qt_row_label(const qt_row *r, char *buf, size_t len)
{
    snprintf(buf, len, "%s / %s", r->model, r->plugin);
    return buf;
}

int qt_row_ok(const qt_row *r) { return strcmp(r->status, "ok") == 0; }

/* --------------------------------------------------------------- decision */

static double row_metric(const qt_row *r, int c)
{
    switch (c) {
    case QT_C_LATENCY: return r->ms_per_example;
    case QT_C_F1: return r->macro_f1;
    case QT_C_ECE: return r->ece_post;
    case QT_C_VRAM: return r->peak_vram_bytes / 1e9;
    default: return NAN;
    }
}

static int device_matches(const char *want, const qt_row *r)
{
    if (r->device && strcasecmp(want, r->device) == 0) return 1;
    if (r->device) {
        size_t k = strcspn(r->device, ":");
        if (strlen(want) == k && strncasecmp(want, r->device, k) == 0) return 1;
    }
    if (r->card && *want) {
        size_t n = strlen(want), m = strlen(r->card);
        for (size_t i = 0; i + n <= m; i++)
            if (strncasecmp(r->card + i, want, n) == 0) return 1;
    }
    return 0;
}

int qt_constraint_check(const qt_envelope *e, const qt_row *r, int c)
{
    if (c == QT_C_DEVICE) {
        if (!e->device) return QT_CHECK_UNSET;
        if (!r->device && !r->card) return QT_CHECK_MISSING;
        return device_matches(e->device, r) ? QT_CHECK_PASS : QT_CHECK_FAIL;
    }
    qt_envelope tmp = *e;
    double t = *env_field(&tmp, c);
    if (isnan(t)) return QT_CHECK_UNSET;
    double v = row_metric(r, c);
    if (!isfinite(v)) return QT_CHECK_MISSING;
    int pass = c == QT_C_F1 ? v >= t : v <= t;
    return pass ? QT_CHECK_PASS : QT_CHECK_FAIL;
}

int qt_row_viable(const qt_envelope *e, const qt_row *r)
{
    if (!qt_row_ok(r)) return 0;
    for (int c = 0; c < QT_C_COUNT; c++) {
        int k = qt_constraint_check(e, r, c);
        if (k == QT_CHECK_FAIL || k == QT_CHECK_MISSING) return 0;
    }
    return 1;
}

static double cost_of(const qt_row *r, int cost)
{
    return cost == 0 ? r->ms_per_example : r->peak_vram_bytes;
}

void qt_pareto_front(const qt_results *r, int cost, const int *eligible, int *on_front)
{
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *a = &r->rows[i];
        on_front[i] = (eligible ? eligible[i] : qt_row_ok(a)) && isfinite(a->macro_f1) &&
                      isfinite(cost_of(a, cost));
    }
    for (size_t i = 0; i < r->n; i++) {
        if (!on_front[i]) continue;
        const qt_row *a = &r->rows[i];
        for (size_t j = 0; j < r->n; j++) {
            if (j == i) continue;
            const qt_row *b = &r->rows[j];
            int eligible_j = (eligible ? eligible[j] : qt_row_ok(b)) && isfinite(b->macro_f1) &&
                             isfinite(cost_of(b, cost));
            if (!eligible_j) continue;
            double ca = cost_of(a, cost), cb = cost_of(b, cost);
            if (cb <= ca && b->macro_f1 >= a->macro_f1 && (cb < ca || b->macro_f1 > a->macro_f1)) {
                on_front[i] = 0;
                break;
            }
        }
    }
}

/* Missing costs count as the worst, a missing F1 as the lowest. */
static double cost_or_inf(double v) { return isfinite(v) ? v : INFINITY; }
static double f1_or_ninf(double v) { return isfinite(v) ? v : -INFINITY; }

static int dominates(const qt_row *b, const qt_row *a)
{
    double la = cost_or_inf(a->ms_per_example), lb = cost_or_inf(b->ms_per_example);
    double va = cost_or_inf(a->peak_vram_bytes), vb = cost_or_inf(b->peak_vram_bytes);
    double fa = f1_or_ninf(a->macro_f1), fb = f1_or_ninf(b->macro_f1);
    return lb <= la && vb <= va && fb >= fa && (lb < la || vb < va || fb > fa);
}

/* The viable rows not dominated by another viable row (3 objectives). */
static void viable_front(const qt_results *r, const qt_envelope *e, int *viable, int *front)
{
    for (size_t i = 0; i < r->n; i++) viable[i] = qt_row_viable(e, &r->rows[i]);
    for (size_t i = 0; i < r->n; i++) {
        front[i] = viable[i];
        for (size_t j = 0; j < r->n && front[i]; j++)
            if (j != i && viable[j] && dominates(&r->rows[j], &r->rows[i])) front[i] = 0;
    }
}

static int better_choice(const qt_row *a, const qt_row *b)
{
    double la = cost_or_inf(a->ms_per_example), lb = cost_or_inf(b->ms_per_example);
    if (la != lb) return la < lb;
    double va = cost_or_inf(a->peak_vram_bytes), vb = cost_or_inf(b->peak_vram_bytes);
    if (va != vb) return va < vb;
    return f1_or_ninf(a->macro_f1) > f1_or_ninf(b->macro_f1);
}

static long recommend_with(const qt_results *r, const qt_envelope *e, int *viable, int *front,
                           double *best_f1_out)
{
    viable_front(r, e, viable, front);
    double best = -INFINITY;
    for (size_t i = 0; i < r->n; i++)
        if (front[i] && f1_or_ninf(r->rows[i].macro_f1) > best) best = r->rows[i].macro_f1;
    if (best_f1_out) *best_f1_out = best;
    long choice = -1;
    for (size_t i = 0; i < r->n; i++) {
        if (!front[i]) continue;
        if (isfinite(best) && !(f1_or_ninf(r->rows[i].macro_f1) >= best - e->f1_tolerance)) continue;
        if (choice < 0 || better_choice(&r->rows[i], &r->rows[choice])) choice = (long)i;
    }
    return choice;
}

long qt_recommend(const qt_results *r, const qt_envelope *e)
{
    int *buf = calloc(2 * (r->n + 1), sizeof *buf);
    if (!buf) return -1;
    long c = recommend_with(r, e, buf, buf + r->n + 1, NULL);
    free(buf);
    return c;
}

/* A growing string for generated prose. */
typedef struct sbuf {
    char *s;
    size_t len, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) QTOOL_PRINTF(2, 3);
static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom) return;
    va_list ap;
    va_start(ap, fmt);
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        va_end(ap2);
        return;
    }
    if (b->len + (size_t)n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + (size_t)n + 1 > cap) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            va_end(ap2);
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    vsnprintf(b->s + b->len, (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    b->len += (size_t)n;
}

static char *sb_take(sbuf *b)
{
    if (b->oom) {
        free(b->s);
        return NULL;
    }
    if (!b->s) return strdup("");
    return b->s;
}

/* Short numbers for prose: 4 significant digits. */
static const char *num(char *buf, size_t len, double v)
{
    if (!isfinite(v))
        snprintf(buf, len, "n/a");
    else
        snprintf(buf, len, "%.4g", v);
    return buf;
}

char *qt_recommend_reasoning(const qt_results *r, const qt_envelope *e, long choice)
{
    sbuf b = {0};
    int *buf = calloc(2 * (r->n + 1), sizeof *buf);
    if (!buf) return NULL;
    int *viable = buf, *front = buf + r->n + 1;
    double best = -INFINITY;
    long again = recommend_with(r, e, viable, front, &best);
    (void)again;
    size_t n_viable = 0, n_ok = 0, n_front = 0;
    for (size_t i = 0; i < r->n; i++) {
        n_viable += viable[i];
        n_front += front[i];
        n_ok += qt_row_ok(&r->rows[i]);
    }
    char l1[256], l2[256], a[32], c[32], d[32], ms[32];
    int n_set = 0;
    for (int k = 0; k < QT_C_COUNT; k++) {
        qt_envelope tmp = *e;
        n_set += k == QT_C_DEVICE ? e->device != NULL : !isnan(*env_field(&tmp, k));
    }
    if (choice < 0) {
        if (n_ok == 0)
            sb_printf(&b, "No configuration ran successfully, so there is nothing to recommend.");
        else
            sb_printf(&b,
                      "No configuration meets all %d constraints of the envelope (%zu of %zu ran), "
                      "so there is no recommendation; the counterfactuals below show the smallest "
                      "single change that would make one viable.",
                      n_set, n_ok, r->n);
        free(buf);
        return sb_take(&b);
    }
    const qt_row *w = &r->rows[choice];
    qt_row_label(w, l1, sizeof l1);
    sb_printf(&b, "%s meets all %d constraints of the envelope; %zu of %zu configurations do.", l1, n_set,
              n_viable, r->n);
    sb_printf(&b,
              " Of the viable ones, %zu %s on the Pareto frontier of latency, peak VRAM and macro-F1 "
              "(no other viable configuration is at least as good on all three and better on one), "
              "and %s is one of them.",
              n_front, n_front == 1 ? "is" : "are", l1);
    /* Rows in the quality band, and which of them lost on cost. */
    size_t band = 0;
    long best_row = -1;
    for (size_t i = 0; i < r->n; i++) {
        if (!front[i]) continue;
        if (best_row < 0 || f1_or_ninf(r->rows[i].macro_f1) > f1_or_ninf(r->rows[best_row].macro_f1))
            best_row = (long)i;
        if (f1_or_ninf(r->rows[i].macro_f1) >= best - e->f1_tolerance) band++;
    }
    if (band > 1) {
        sb_printf(&b,
                  " Its macro-F1 %s is within %s of the best viable macro-F1 (%s, %s), a difference "
                  "treated as a tie, so cost decides: among the %zu tied configurations it has the "
                  "lowest latency (%s ms/example",
                  num(a, sizeof a, w->macro_f1), num(c, sizeof c, e->f1_tolerance),
                  qt_row_label(&r->rows[best_row], l2, sizeof l2), num(d, sizeof d, best), band,
                  num(ms, sizeof ms, w->ms_per_example));
        int first = 1;
        for (size_t i = 0; i < r->n; i++) {
            if (!front[i] || (long)i == choice || !(f1_or_ninf(r->rows[i].macro_f1) >= best - e->f1_tolerance))
                continue;
            sb_printf(&b, "%s %s for %s", first ? "; vs" : ",", num(a, sizeof a, r->rows[i].ms_per_example),
                      qt_row_label(&r->rows[i], l2, sizeof l2));
            first = 0;
        }
        sb_printf(&b, ").");
    } else {
        sb_printf(&b, " It has the highest macro-F1 among them (%s)", num(a, sizeof a, w->macro_f1));
        size_t cheaper = 0;
        for (size_t i = 0; i < r->n; i++)
            if (front[i] && (long)i != choice) cheaper++;
        if (cheaper)
            sb_printf(&b,
                      "; the %zu other frontier configuration%s %s cheaper but lose more than %s "
                      "macro-F1.",
                      cheaper, cheaper == 1 ? "" : "s", cheaper == 1 ? "is" : "are",
                      num(c, sizeof c, e->f1_tolerance));
        else
            sb_printf(&b, ".");
    }
    sb_printf(&b, " It runs at %s ms/example with a peak of %s GB VRAM, post-scaling ECE %s.",
              num(a, sizeof a, w->ms_per_example), num(c, sizeof c, w->peak_vram_bytes / 1e9),
              num(l2, sizeof l2, w->ece_post));
    free(buf);
    return sb_take(&b);
}

/* ------------------------------------------------------ counterfactuals */

static int cmp_double_asc(const void *pa, const void *pb)
{
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

static const char *choice_label(const qt_results *r, long c, char *buf, size_t len)
{
    if (c < 0) {
        snprintf(buf, len, "nothing (no configuration would be viable)");
        return buf;
    }
    return qt_row_label(&r->rows[c], buf, len);
}

static int push_cf(qt_counterfactual **arr, size_t *n, qt_counterfactual cf)
{
    qt_counterfactual *na = realloc(*arr, (*n + 1) * sizeof *na);
    if (!na) {
        free(cf.text);
        free(cf.device);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    na[(*n)++] = cf;
    *arr = na;
    return 0;
}

/* Which row(s) change status at the new threshold: for the sentence. */
static void who_changes(const qt_results *r, const qt_envelope *before, const qt_envelope *after,
                        sbuf *b)
{
    char l[256];
    int first = 1;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *row = &r->rows[i];
        int x = qt_row_viable(before, row), y = qt_row_viable(after, row);
        if (x == y) continue;
        sb_printf(b, "%s%s %s", first ? " (" : "; ", y ? "admits" : "excludes", qt_row_label(row, l, sizeof l));
        first = 0;
    }
    if (!first) sb_printf(b, ")");
}

static int numeric_counterfactuals(const qt_results *r, const qt_envelope *e, long current, int c,
                                   qt_counterfactual **out, size_t *n)
{
    static const char *units[] = {"", " ms/example", "", "", " GB", ""};
    double *vals = malloc((r->n + 1) * sizeof *vals);
    if (!vals) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    size_t nv = 0;
    if (c == QT_C_COUNT) {
        /* The tie tolerance flips only where it crosses an F1 gap. */
        double best = -INFINITY;
        for (size_t i = 0; i < r->n; i++)
            if (qt_row_ok(&r->rows[i]) && isfinite(r->rows[i].macro_f1) && r->rows[i].macro_f1 > best)
                best = r->rows[i].macro_f1;
        for (size_t i = 0; i < r->n; i++)
            if (qt_row_ok(&r->rows[i]) && isfinite(r->rows[i].macro_f1))
                vals[nv++] = best - r->rows[i].macro_f1;
    } else {
        for (size_t i = 0; i < r->n; i++) {
            double v = row_metric(&r->rows[i], c);
            if (qt_row_ok(&r->rows[i]) && isfinite(v)) vals[nv++] = v;
        }
    }
    qsort(vals, nv, sizeof *vals, cmp_double_asc);
    qt_envelope tmp = *e;
    double t = *env_field(&tmp, c);
    int is_min = c == QT_C_F1;
    int rc = 0;
    /* dir 1: loosen (only when set), dir 0: tighten. */
    for (int loosen = 1; loosen >= 0 && !rc; loosen--) {
        if (loosen && isnan(t)) continue;
        /* Walk outward from the current threshold. */
        int up = is_min ? !loosen : loosen; /* thresholds increasing? */
        for (size_t k = 0; k < nv; k++) {
            size_t idx = up ? k : nv - 1 - k;
            double v = vals[idx];
            double nt;
            if (loosen) {
                /* The row at v passes once the threshold reaches v. */
                if (up ? !(v > t) : !(v < t)) continue;
                nt = v;
            } else {
                if (!isnan(t) && (up ? !(v >= t) : !(v <= t))) continue;
                /* The row at v fails just beyond it. */
                nt = nextafter(v, up ? INFINITY : -INFINITY);
                if (c == QT_C_COUNT && nt < 0) continue;
            }
            qt_envelope trial = *e;
            *env_field(&trial, c) = nt;
            long choice = qt_recommend(r, &trial);
            if (choice == current) continue;
            sbuf b = {0};
            char a1[32], a2[32], lab[256];
            const char *key = qt_constraint_key(c);
            if (c == QT_C_COUNT) {
                sb_printf(&b, "%s the F1 tie tolerance from %s to %s%s would make the recommendation %s.",
                          loosen ? "Widening" : "Narrowing", num(a1, sizeof a1, t),
                          loosen ? "" : "below ", num(a2, sizeof a2, v),
                          choice_label(r, choice, lab, sizeof lab));
            } else {
                if (isnan(t))
                    sb_printf(&b, "Adding %s %s %s%s", key, is_min ? "above" : "below",
                              num(a2, sizeof a2, v), units[c]);
                else if (loosen)
                    sb_printf(&b, "%s %s from %s to %s%s", is_min ? "Lowering" : "Raising", key,
                              num(a1, sizeof a1, t), num(a2, sizeof a2, v), units[c]);
                else
                    sb_printf(&b, "%s %s from %s to %s %s%s", is_min ? "Raising" : "Lowering", key,
                              num(a1, sizeof a1, t), is_min ? "above" : "below", num(a2, sizeof a2, v),
                              units[c]);
                who_changes(r, e, &trial, &b);
                sb_printf(&b, " would make the recommendation %s.", choice_label(r, choice, lab, sizeof lab));
            }
            qt_counterfactual cf = {c, loosen, v, NULL, choice, sb_take(&b)};
            if (!cf.text) {
                rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
                break;
            }
            rc = push_cf(out, n, cf);
            break;
        }
    }
    free(vals);
    return rc;
}

static int device_counterfactuals(const qt_results *r, const qt_envelope *e, long current,
                                  qt_counterfactual **out, size_t *n)
{
    /* Candidates: each card (or device) some row ran on, and no constraint. */
    int rc = 0;
    for (size_t i = 0; i <= r->n && !rc; i++) {
        const char *cand = NULL;
        if (i < r->n) {
            const qt_row *row = &r->rows[i];
            if (!qt_row_ok(row)) continue;
            cand = row->card && *row->card ? row->card : row->device;
            if (!cand) continue;
            int seen = 0;
            for (size_t j = 0; j < i && !seen; j++) {
                const qt_row *p = &r->rows[j];
                const char *pc = p->card && *p->card ? p->card : p->device;
                seen = qt_row_ok(p) && pc && strcmp(pc, cand) == 0;
            }
            if (seen || (e->device && strcasecmp(cand, e->device) == 0)) continue;
        } else if (!e->device) {
            continue;
        }
        qt_envelope trial = *e;
        trial.device = (char *)cand;
        long choice = qt_recommend(r, &trial);
        if (choice == current) continue;
        sbuf b = {0};
        char lab[256];
        if (cand)
            sb_printf(&b, "Deploying on %s instead of %s", cand, e->device ? e->device : "any device");
        else
            sb_printf(&b, "Dropping the device constraint (%s)", e->device);
        who_changes(r, e, &trial, &b);
        sb_printf(&b, " would make the recommendation %s.", choice_label(r, choice, lab, sizeof lab));
        qt_counterfactual cf = {QT_C_DEVICE, cand == NULL, NAN, cand ? strdup(cand) : NULL, choice,
                                sb_take(&b)};
        if (!cf.text || (cand && !cf.device)) {
            free(cf.text);
            free(cf.device);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        rc = push_cf(out, n, cf);
    }
    return rc;
}

int qt_counterfactuals(const qt_results *r, const qt_envelope *e, qt_counterfactual **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    long current = qt_recommend(r, e);
    int rc = device_counterfactuals(r, e, current, out, n);
    for (int c = QT_C_LATENCY; c <= QT_C_COUNT && !rc; c++)
        rc = numeric_counterfactuals(r, e, current, c, out, n);
    if (rc) {
        qt_counterfactuals_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

void qt_counterfactuals_free(qt_counterfactual *c, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(c[i].text);
        free(c[i].device);
    }
    free(c);
}

/* ---------------------------------------------------------------- output */

typedef int (*writer_fn)(FILE *, const qt_results *, const qt_envelope *);

static int write_one(const char *dir, const char *name, writer_fn fn, const qt_results *r,
                     const qt_envelope *e)
{
    char *path = qt_path_join(dir, name);
    if (!path) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    qt_atomic_file f;
    int rc = qt_atomic_open(&f, path);
    if (!rc) {
        rc = fn(f.fp, r, e);
        if (rc)
            qt_atomic_abort(&f);
        else
            rc = qt_atomic_commit(&f);
    }
    free(path);
    return rc;
}

int qt_report_write(const char *dir, const qt_results *r, const qt_envelope *env)
{
    const qt_envelope *e = env ? env : &r->env;
    int rc = qt_mkdirs(dir);
    if (rc) return rc;
    if ((rc = write_one(dir, "results.csv", qt_report_write_csv, r, e))) return rc;
    if ((rc = write_one(dir, "report.md", qt_report_write_md, r, e))) return rc;
    return write_one(dir, "report.html", qt_report_write_html, r, e);
}

int qt_report_from_dir(const char *dir, const qt_envelope *env)
{
    char *path = qt_path_join(dir, "results.json");
    if (!path) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    qt_results r;
    int rc = qt_results_load(path, &r);
    free(path);
    if (rc) return rc;
    rc = qt_report_write(dir, &r, env);
    qt_results_free(&r);
    return rc;
}
