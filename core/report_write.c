/* results.csv and report.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "report.h"

/* ------------------------------------------------------------------ CSV */

static void csv_str(FILE *f, const char *s)
{
    if (!s) return;
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"') fputc('"', f);
        fputc(*p, f);
    }
    fputc('"', f);
}

static void csv_num(FILE *f, double v)
{
    if (isfinite(v)) fprintf(f, "%.10g", v);
}

static const char *check_word(int k)
{
    switch (k) {
    case QT_CHECK_PASS: return "pass";
    case QT_CHECK_FAIL: return "fail";
    case QT_CHECK_MISSING: return "missing";
    default: return "";
    }
}

int qt_report_write_csv(FILE *f, const qt_results *r, const qt_envelope *e)
{
    static const char *head[] = {
        "model", "plugin", "status", "reason", "device", "card", "options", "weight_bits",
        "is_reference", "accuracy", "macro_f1", "nll", "ece", "ece_post", "temperature",
        "split_val_temperature", "split_val_ece_before", "split_val_ece_after", "split_val_n_a",
        "split_val_n_b"};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++) fprintf(f, "%s%s", i ? "," : "", head[i]);
    for (int t = 0; t < QT_TIER_COUNT; t++)
        fprintf(f, ",%s_n,%s_accuracy,%s_reference_accuracy,%s_delta,%s_ci_low,%s_ci_high,%s_flips,%s_directional",
                qt_tier_name(t), qt_tier_name(t), qt_tier_name(t), qt_tier_name(t), qt_tier_name(t),
                qt_tier_name(t), qt_tier_name(t), qt_tier_name(t));
    fprintf(f, ",ms_per_example,examples_per_s,peak_vram_bytes,peak_vram_device_bytes,load_s,"
               "quantize_s,weight_bytes");
    for (size_t k = 0; k < r->n_named; k++) {
        fputs(",", f);
        char *h = malloc(strlen(r->named_classes[k]) + 16);
        if (!h) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        sprintf(h, "class_accuracy:%s", r->named_classes[k]);
        csv_str(f, h);
        free(h);
    }
    for (int c = 0; c < QT_C_COUNT; c++) fprintf(f, ",check_%s", qt_constraint_key(c));
    fputs(",viable,recommended\n", f);

    long rec = qt_recommend(r, e);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        csv_str(f, w->model), fputc(',', f);
        csv_str(f, w->plugin), fputc(',', f);
        csv_str(f, w->status), fputc(',', f);
        csv_str(f, w->reason), fputc(',', f);
        csv_str(f, w->device), fputc(',', f);
        csv_str(f, w->card), fputc(',', f);
        csv_str(f, w->options), fputc(',', f);
        if (w->weight_bits > 0) fprintf(f, "%d", w->weight_bits);
        fprintf(f, ",%d", w->is_reference);
        const double v[] = {w->accuracy, w->macro_f1, w->nll, w->ece, w->ece_post, w->temperature,
                            w->sv_temperature, w->sv_ece_before, w->sv_ece_after};
        for (size_t k = 0; k < sizeof v / sizeof v[0]; k++) fputc(',', f), csv_num(f, v[k]);
        fputc(',', f);
        if (w->sv_n_a >= 0) fprintf(f, "%lld", (long long)w->sv_n_a);
        fputc(',', f);
        if (w->sv_n_b >= 0) fprintf(f, "%lld", (long long)w->sv_n_b);
        for (int t = 0; t < QT_TIER_COUNT; t++) {
            const qt_tier_result *x = &w->tiers[t];
            if (!w->has_tiers) {
                fputs(",,,,,,,,", f);
                continue;
            }
            fputc(',', f);
            if (x->n >= 0) fprintf(f, "%lld", (long long)x->n);
            const double tv[] = {x->accuracy, x->reference_accuracy, x->delta, x->ci_low, x->ci_high};
            for (size_t k = 0; k < 5; k++) fputc(',', f), csv_num(f, tv[k]);
            fputc(',', f);
            if (x->flips >= 0) fprintf(f, "%lld", (long long)x->flips);
            fprintf(f, ",%d", x->directional);
        }
        const double pv[] = {w->ms_per_example, w->examples_per_s, w->peak_vram_bytes,
                             w->peak_vram_device_bytes, w->load_s, w->quantize_s, w->weight_bytes};
        for (size_t k = 0; k < sizeof pv / sizeof pv[0]; k++) fputc(',', f), csv_num(f, pv[k]);
        for (size_t k = 0; k < r->n_named; k++) fputc(',', f), csv_num(f, w->class_accuracy[k]);
        for (int c = 0; c < QT_C_COUNT; c++)
            fprintf(f, ",%s", qt_row_ok(w) ? check_word(qt_constraint_check(e, w, c)) : "");
        fprintf(f, ",%d,%d\n", qt_row_viable(e, w), (long)i == rec);
    }
    return ferror(f) ? qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "results.csv: write failed") : 0;
}

/* ------------------------------------------------------------- Markdown */

/* Table-cell text: no pipes or newlines, no raw HTML. */
static void md_str(FILE *f, const char *s)
{
    if (!s) {
        fputs("-", f);
        return;
    }
    for (const char *p = s; *p; p++) {
        switch (*p) {
        case '|': fputs("\\|", f); break;
        case '\n': case '\r': fputc(' ', f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '*': case '_': case '`': case '[': case ']': case '\\': fputc('\\', f); fputc(*p, f); break;
        default: fputc(*p, f);
        }
    }
}

static void md_num(FILE *f, double v, const char *fmt)
{
    if (isfinite(v))
        fprintf(f, fmt, v);
    else
        fputs("-", f);
}

static void md_label(FILE *f, const qt_row *w)
{
    md_str(f, w->model);
    fputs(" / ", f);
    md_str(f, w->plugin);
}

static const char *check_md(int k)
{
    switch (k) {
    case QT_CHECK_PASS: return "pass";
    case QT_CHECK_FAIL: return "**FAIL**";
    case QT_CHECK_MISSING: return "missing";
    default: return "-";
    }
}

static void md_threshold(FILE *f, const qt_envelope *e, int c)
{
    switch (c) {
    case QT_C_DEVICE:
        if (e->device)
            md_str(f, e->device);
        else
            fputs("any", f);
        break;
    case QT_C_LATENCY: md_num(f, e->max_ms_per_example, "<= %g ms"); break;
    case QT_C_F1: md_num(f, e->min_macro_f1, ">= %g"); break;
    case QT_C_ECE: md_num(f, e->max_ece_post, "<= %g"); break;
    case QT_C_VRAM: md_num(f, e->max_vram_gb, "<= %g GB"); break;
    }
}

int qt_report_write_md(FILE *f, const qt_results *r, const qt_envelope *e)
{
    json_t *ver = json_object_get(r->root, "qtool_version");
    json_t *created = json_object_get(r->root, "created");
    fprintf(f, "# qtool report\n\n");
    fprintf(f, "%zu configurations", r->n);
    if (json_is_string(created)) fprintf(f, ", measured %s", json_string_value(created));
    if (json_is_string(ver)) fprintf(f, " with qtool %s", json_string_value(ver));
    fprintf(f, ". The plots are in report.html; every number is in results.csv.\n\n");

    long rec = qt_recommend(r, e);
    char *why = qt_recommend_reasoning(r, e, rec);
    fprintf(f, "## Recommendation\n\n");
    if (rec >= 0) {
        fputs("**", f);
        md_label(f, &r->rows[rec]);
        fputs("**\n\n", f);
    } else {
        fputs("**None**\n\n", f);
    }
    if (why) md_str(f, why);
    free(why);
    fputs("\n\n", f);

    fprintf(f, "## Configurations x measurements\n\n");
    fprintf(f, "| configuration | status | bits | accuracy | macro-F1 | ECE | ECE post | T | ms/example | "
               "examples/s | peak VRAM GB | device peak GB | load s | quantize s | weights MB |\n");
    fprintf(f, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        fputs("| ", f);
        md_label(f, w);
        fputs(w->is_reference ? " (reference) | " : " | ", f);
        md_str(f, w->status);
        fputs(" | ", f);
        if (w->weight_bits > 0)
            fprintf(f, "%d", w->weight_bits);
        else
            fputs("-", f);
        fputs(" | ", f);
        md_num(f, w->accuracy, "%.4f"), fputs(" | ", f);
        md_num(f, w->macro_f1, "%.4f"), fputs(" | ", f);
        md_num(f, w->ece, "%.4f"), fputs(" | ", f);
        md_num(f, w->ece_post, "%.4f"), fputs(" | ", f);
        md_num(f, w->temperature, "%.3f"), fputs(" | ", f);
        md_num(f, w->ms_per_example, "%.3f"), fputs(" | ", f);
        md_num(f, w->examples_per_s, "%.0f"), fputs(" | ", f);
        md_num(f, w->peak_vram_bytes / 1e9, "%.3f"), fputs(" | ", f);
        md_num(f, w->peak_vram_device_bytes / 1e9, "%.3f"), fputs(" | ", f);
        md_num(f, w->load_s, "%.2f"), fputs(" | ", f);
        md_num(f, w->quantize_s, "%.2f"), fputs(" | ", f);
        md_num(f, w->weight_bytes / 1e6, "%.1f"), fputs(" |\n", f);
    }

    fprintf(f, "\n## Envelope check\n\n| configuration |");
    for (int c = 0; c < QT_C_COUNT; c++) {
        fprintf(f, " %s ", qt_constraint_key(c));
        md_threshold(f, e, c);
        fputs(" |", f);
    }
    fprintf(f, " viable |\n|---|");
    for (int c = 0; c < QT_C_COUNT; c++) fputs("---|", f);
    fputs("---|\n", f);
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        fputs("| ", f);
        md_label(f, w);
        fputs(" |", f);
        for (int c = 0; c < QT_C_COUNT; c++)
            fprintf(f, " %s |", qt_row_ok(w) ? check_md(qt_constraint_check(e, w, c)) : "-");
        fprintf(f, " %s |\n", qt_row_viable(e, w) ? "**yes**" : (qt_row_ok(w) ? "no" : w->status));
    }
    fprintf(f, "\nViable set:");
    int any = 0;
    for (size_t i = 0; i < r->n; i++)
        if (qt_row_viable(e, &r->rows[i])) {
            fputs(any ? ", " : " ", f);
            md_label(f, &r->rows[i]);
            any = 1;
        }
    fputs(any ? ".\n" : " none.\n", f);

    int *front = calloc(r->n + 1, sizeof *front);
    if (!front) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    static const char *axis[] = {"latency vs macro-F1", "peak VRAM vs macro-F1"};
    fprintf(f, "\n## Pareto frontiers (all configurations that ran)\n\n");
    for (int a = 0; a < 2; a++) {
        qt_pareto_front(r, a, NULL, front);
        fprintf(f, "- %s:", axis[a]);
        any = 0;
        for (size_t i = 0; i < r->n; i++)
            if (front[i]) {
                fputs(any ? ", " : " ", f);
                md_label(f, &r->rows[i]);
                any = 1;
            }
        fputs(any ? "\n" : " none\n", f);
    }
    free(front);

    fprintf(f, "\n## Per-tier accuracy delta vs the reference\n\n");
    fprintf(f, "Paired bootstrap over examples (1000 resamples, seed 42), 95%% percentile CI. A delta "
               "resting on fewer than %d flipped predictions is marked directional: the CI measures "
               "resampling noise of these examples, not whether another split would show the same "
               "flips; reshuffle replication (other split seeds) is the real test.\n\n",
            QT_METRICS_MIN_FLIPS);
    fprintf(f, "| configuration | tier | n | accuracy | reference | delta | 95%% CI | flips | note |\n");
    fprintf(f, "|---|---|---:|---:|---:|---:|---|---:|---|\n");
    any = 0;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (!qt_row_ok(w) || !w->has_tiers || w->is_reference) continue;
        for (int t = 0; t < QT_TIER_COUNT; t++) {
            const qt_tier_result *x = &w->tiers[t];
            fputs("| ", f);
            md_label(f, w);
            fprintf(f, " | %s | %lld | ", qt_tier_name(t), (long long)x->n);
            md_num(f, x->accuracy, "%.4f"), fputs(" | ", f);
            md_num(f, x->reference_accuracy, "%.4f"), fputs(" | ", f);
            md_num(f, x->delta * 100, "%+.2f pp"), fputs(" | [", f);
            md_num(f, x->ci_low * 100, "%+.2f"), fputs(", ", f);
            md_num(f, x->ci_high * 100, "%+.2f"), fputs("] | ", f);
            fprintf(f, "%lld | ", (long long)x->flips);
            int excl = isfinite(x->ci_low) && (x->ci_low > 0 || x->ci_high < 0);
            fprintf(f, "%s%s |\n", excl ? "CI excludes 0" : "",
                    x->n > 0 && x->directional ? (excl ? "; directional" : "directional") : "");
            any = 1;
        }
    }
    if (!any) fputs("| (no tier results: they need the reference run and training labels) |||||||||\n", f);

    fprintf(f, "\n## Calibration\n\nECE with 15 equal-width bins; T fitted by NLL. Split-val: T fitted "
               "on half A (seed 42), ECE on half B before and after.\n\n");
    fprintf(f, "| configuration | ECE | ECE post | T | split-val T | half-B ECE before | half-B ECE after | "
               "n A / B |\n|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (!qt_row_ok(w)) continue;
        fputs("| ", f);
        md_label(f, w);
        fputs(" | ", f);
        md_num(f, w->ece, "%.4f"), fputs(" | ", f);
        md_num(f, w->ece_post, "%.4f"), fputs(" | ", f);
        md_num(f, w->temperature, "%.3f"), fputs(" | ", f);
        md_num(f, w->sv_temperature, "%.3f"), fputs(" | ", f);
        md_num(f, w->sv_ece_before, "%.4f"), fputs(" | ", f);
        md_num(f, w->sv_ece_after, "%.4f"), fputs(" | ", f);
        if (w->sv_n_a >= 0)
            fprintf(f, "%lld / %lld |\n", (long long)w->sv_n_a, (long long)w->sv_n_b);
        else
            fputs("- |\n", f);
    }

    if (r->n_named) {
        fprintf(f, "\n## Named classes: per-class accuracy (recall)\n\n| configuration |");
        for (size_t k = 0; k < r->n_named; k++) {
            fputc(' ', f);
            md_str(f, r->named_classes[k]);
            fputs(" |", f);
        }
        fputs("\n|---|", f);
        for (size_t k = 0; k < r->n_named; k++) fputs("---:|", f);
        fputc('\n', f);
        for (size_t i = 0; i < r->n; i++) {
            const qt_row *w = &r->rows[i];
            if (!qt_row_ok(w)) continue;
            fputs("| ", f);
            md_label(f, w);
            fputs(" |", f);
            for (size_t k = 0; k < r->n_named; k++) {
                fputc(' ', f);
                md_num(f, w->class_accuracy[k], "%.4f");
                fputs(" |", f);
            }
            fputc('\n', f);
        }
    }

    fprintf(f, "\n## Counterfactuals\n\nEach line is one change to one constraint, the nearest one that "
               "changes the recommendation (computed by re-running the recommendation at every "
               "threshold where some configuration's pass/fail flips).\n\n");
    qt_counterfactual *cf;
    size_t ncf;
    int rc = qt_counterfactuals(r, e, &cf, &ncf);
    if (rc) return rc;
    for (size_t i = 0; i < ncf; i++) {
        fputs("- ", f);
        md_str(f, cf[i].text);
        fputc('\n', f);
    }
    if (!ncf) fputs("- No single constraint change alters the recommendation.\n", f);
    qt_counterfactuals_free(cf, ncf);

    any = 0;
    for (size_t i = 0; i < r->n; i++) {
        const qt_row *w = &r->rows[i];
        if (qt_row_ok(w)) continue;
        if (!any) fprintf(f, "\n## Failed or refused configurations\n\n");
        any = 1;
        fputs("- ", f);
        md_label(f, w);
        fputs(": ", f);
        md_str(f, w->status);
        fputs(" - ", f);
        md_str(f, w->reason ? w->reason : "no reason recorded");
        fputc('\n', f);
    }
    return ferror(f) ? qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "report.md: write failed") : 0;
}
