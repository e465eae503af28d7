/* qtool metrics: the measurement layer on logits saved by any tool. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "metrics.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool metrics --logits FILE.safetensors --data FILE.jsonl [options]\n\n"
            "Accuracy, macro-F1, per-class precision/recall/F1, NLL, ECE (15 bins), temperature\n"
            "scaling, the split-val experiment and, with a reference run, per-tier deltas with a\n"
            "paired bootstrap CI.\n\n"
            "  --logits FILE        safetensors file with a tensor `logits` [N, C]\n"
            "  --tensor NAME        tensor name instead of `logits`\n"
            "  --data FILE.jsonl    one JSON object per line with \"label\" (id or name)\n"
            "  --config FILE        config.json whose id2label/label2id maps label names\n"
            "  --reference FILE     logits of the reference run (e.g. fp16) on the same rows\n"
            "  --train FILE.jsonl   training labels, for tiers by class frequency\n"
            "  --label-counts FILE  JSON {label: count} instead of --train\n"
            "  --head N --mid N     tier sizes in classes (default 20 and 40; the rest is tail)\n"
            "  --json               print JSON (keys: docs/measurements.md)\n");
}

static const char *fmt_num(char *buf, size_t len, double v, const char *fmt)
{
    if (!isfinite(v))
        snprintf(buf, len, "-");
    else
        snprintf(buf, len, fmt, v);
    return buf;
}

static void print_text(const qt_metrics_report *r, const qt_label_names *names)
{
    char a[32], b[32], c[32];
    printf("examples %" PRId64 ", classes %" PRId64 "\n", r->n, r->c);
    printf("accuracy %.4f  macro-F1 %.4f\n", r->accuracy, r->macro_f1);
    printf("NLL %.4f -> %.4f   ECE %.4f -> %.4f   (T = %.4f%s)\n", r->nll, r->nll_post, r->ece,
           r->ece_post, r->temperature, r->temperature_at_bound ? ", at the search bound" : "");
    printf("split-val: T from half A (%" PRId64 ") = %s; ECE on half B (%" PRId64 ") %s -> %s\n",
           r->split_val.n_a, fmt_num(a, sizeof a, r->split_val.temperature, "%.4f"), r->split_val.n_b,
           fmt_num(b, sizeof b, r->split_val.ece_before, "%.4f"),
           fmt_num(c, sizeof c, r->split_val.ece_after, "%.4f"));
    if (r->has_tiers) {
        printf("\n%-5s %6s %7s %9s %9s %9s %20s %6s\n", "tier", "n", "classes", "accuracy", "ref",
               "delta", "95% CI", "flips");
        for (int t = 0; t < QT_TIER_COUNT; t++) {
            const qt_tier_result *x = &r->tiers[t];
            char lo[32], hi[32], acc[32], ref[32], d[32];
            printf("%-5s %6" PRId64 " %7" PRId64 " %9s %9s %9s  [%8s, %8s] %6" PRId64 "%s\n",
                   qt_tier_name(t), x->n, x->classes, fmt_num(acc, sizeof acc, x->accuracy, "%.4f"),
                   fmt_num(ref, sizeof ref, x->reference_accuracy, "%.4f"),
                   fmt_num(d, sizeof d, x->delta, "%+.4f"), fmt_num(lo, sizeof lo, x->ci_low, "%+.4f"),
                   fmt_num(hi, sizeof hi, x->ci_high, "%+.4f"), x->flips,
                   x->n && x->directional ? "  directional (few flips)" : "");
        }
    }
    printf("\n%-24s %8s %8s %9s %8s %8s\n", "class", "support", "pred", "precision", "recall", "F1");
    for (size_t i = 0; i < r->n_per_class; i++) {
        const qt_class_stats *s = &r->per_class[i];
        char label[64];
        if (names && s->label < names->n && names->names[s->label])
            snprintf(label, sizeof label, "%.23s", names->names[s->label]);
        else
            snprintf(label, sizeof label, "%d", s->label);
        printf("%-24s %8" PRId64 " %8" PRId64 " %9.4f %8.4f %8.4f\n", label, s->support, s->predicted,
               s->precision, s->recall, s->f1);
    }
}

static int parse_count(const char *cmd, const char *opt, const char *s, int64_t *out)
{
    char *end;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || v < 0 || v > 100000000)
        return qt_cli_usage_error(cmd, "%s needs a non-negative integer, not '%s'", opt, s);
    *out = v;
    return 0;
}

int cmd_metrics(int argc, char **argv)
{
    const char *cmd = argv[0];
    static const struct option opts[] = {
        {"logits", required_argument, NULL, 'l'},  {"tensor", required_argument, NULL, 't'},
        {"data", required_argument, NULL, 'd'},    {"config", required_argument, NULL, 'c'},
        {"reference", required_argument, NULL, 'r'}, {"train", required_argument, NULL, 'T'},
        {"label-counts", required_argument, NULL, 'L'}, {"head", required_argument, NULL, 'H'},
        {"mid", required_argument, NULL, 'M'},     {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    const char *logits_path = NULL, *tensor = "logits", *data = NULL, *config = NULL, *ref_path = NULL,
               *train = NULL, *counts_path = NULL;
    int64_t head = QT_METRICS_HEAD, mid = QT_METRICS_MID;
    int json = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'l': logits_path = optarg; break;
        case 't': tensor = optarg; break;
        case 'd': data = optarg; break;
        case 'c': config = optarg; break;
        case 'r': ref_path = optarg; break;
        case 'T': train = optarg; break;
        case 'L': counts_path = optarg; break;
        case 'H': if (parse_count(cmd, "--head", optarg, &head)) return QT_EXIT_USAGE; break;
        case 'M': if (parse_count(cmd, "--mid", optarg, &mid)) return QT_EXIT_USAGE; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); return QT_EXIT_OK;
        default:
            return qt_cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return qt_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!logits_path || !data) return qt_cli_usage_error(cmd, "--logits and --data are required");
    if (train && counts_path) return qt_cli_usage_error(cmd, "give --train or --label-counts, not both");

    int rc = 0;
    float *logits = NULL, *ref_logits = NULL;
    int32_t *labels = NULL;
    int64_t *counts = NULL;
    int64_t n = 0, c = 0, n_labels = 0, rn = 0, rcn = 0;
    qt_label_names names = {0};
    qt_metrics_report rep = {0};
    json_t *out = NULL;

    if (config && (rc = qt_label_names_load(config, &names))) goto done;
    if ((rc = qt_logits_load(logits_path, tensor, &logits, &n, &c))) goto done;
    if ((rc = qt_labels_read_jsonl(data, config ? &names : NULL, c, &labels, &n_labels))) goto done;
    if (n_labels != n) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s has %lld examples but %s has %lld rows of logits",
                     data, (long long)n_labels, logits_path, (long long)n);
        goto done;
    }
    if (ref_path) {
        if ((rc = qt_logits_load(ref_path, tensor, &ref_logits, &rn, &rcn))) goto done;
        if (rn != n || rcn != c) {
            rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s is [%lld, %lld]; %s is [%lld, %lld]", ref_path,
                         (long long)rn, (long long)rcn, logits_path, (long long)n, (long long)c);
            goto done;
        }
    }
    if (train || counts_path) {
        counts = calloc((size_t)c, sizeof *counts);
        if (!counts) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        rc = train ? qt_label_counts_from_jsonl(train, config ? &names : NULL, c, counts)
                   : qt_label_counts_from_json(counts_path, config ? &names : NULL, c, counts);
        if (rc) goto done;
    } else if (ref_path) {
        qt_log(QTOOL_LOG_WARN, "metrics: --reference without --train or --label-counts: no tiers");
    }
    qt_logits m = {logits, n, c, labels};
    qt_logits ref = {ref_logits, n, c, labels};
    if ((rc = qt_metrics_compute(&m, ref_path ? &ref : NULL, counts, head, mid, NULL, &rep))) goto done;

    if (json) {
        /* Names indexed by class id, NULL where the config names none. */
        char **nm = config ? calloc((size_t)c, sizeof *nm) : NULL;
        for (int64_t k = 0; nm && k < c && k < names.n; k++) nm[k] = names.names[k];
        out = qt_metrics_report_json(&rep, nm);
        free(nm);
        char *text = out ? json_dumps(out, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
        if (!text) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        puts(text);
        free(text);
    } else {
        print_text(&rep, config ? &names : NULL);
    }
done:
    json_decref(out);
    qt_metrics_report_free(&rep);
    qt_label_names_free(&names);
    free(logits);
    free(ref_logits);
    free(labels);
    free(counts);
    return rc ? qt_cli_runtime_error() : QT_EXIT_OK;
}
