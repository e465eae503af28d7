/* qtool report: rebuilds results.csv, report.md and report.html from a
 * results folder, optionally against another envelope. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "fsutil.h"
#include "report.h"
#include "sweep.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool report DIR [--envelope sweep.ini] [--json]\n\n"
            "Reads DIR/results.json and writes DIR/results.csv, DIR/report.md and a\n"
            "self-contained DIR/report.html: measurements, per-tier deltas, calibration,\n"
            "named-class trajectories, Pareto plots, the envelope check, the recommendation\n"
            "and its counterfactuals.\n\n"
            "  --envelope FILE   take the [envelope] of this INI instead of the one stored\n"
            "                    in results.json (what-if analysis without rerunning)\n"
            "  --json            also print the recommendation and viable set as JSON\n"
            "  -h, --help        this text\n");
}

int cmd_report(int argc, char **argv)
{
    const char *cmd = argv[0];
    static const struct option opts[] = {{"envelope", required_argument, NULL, 'e'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *envelope = NULL, *dir = NULL;
    int json = 0, ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'e': envelope = optarg; break;
        case 'j': json = 1; break;
        case 'h': usage(stdout); return QT_EXIT_OK;
        default: return qt_cli_usage_error(cmd, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) dir = argv[optind++];
    if (optind < argc) return qt_cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
    if (!dir) return qt_cli_usage_error(cmd, "the results folder is required");

    qt_envelope env;
    qt_envelope_init(&env);
    int have_env = 0;
    if (envelope) {
        if (qt_sweep_envelope_load(envelope, &env)) return qt_cli_runtime_error();
        have_env = 1;
    }
    char *path = qt_path_join(dir, "results.json");
    qt_results r;
    int rc = path ? qt_results_load(path, &r) : qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    free(path);
    if (!rc) {
        const qt_envelope *e = have_env ? &env : &r.env;
        rc = qt_report_write(dir, &r, e);
        if (!rc) {
            long rec = qt_recommend(&r, e);
            char label[256];
            if (json) {
                json_t *o = json_object();
                json_object_set_new(o, "recommendation",
                                    rec >= 0 ? json_string(qt_row_label(&r.rows[rec], label, sizeof label)) : json_null());
                json_t *v = json_array();
                for (size_t i = 0; i < r.n; i++)
                    if (qt_row_viable(e, &r.rows[i]))
                        json_array_append_new(v, json_string(qt_row_label(&r.rows[i], label, sizeof label)));
                json_object_set_new(o, "viable", v);
                json_object_set_new(o, "envelope", qt_envelope_json(e));
                char *reason = qt_recommend_reasoning(&r, e, rec);
                json_object_set_new(o, "reasoning", json_string(reason ? reason : ""));
                free(reason);
                qt_counterfactual *cf;
                size_t ncf;
                if (qt_counterfactuals(&r, e, &cf, &ncf) == 0) {
                    json_t *a = json_array();
                    for (size_t i = 0; i < ncf; i++) {
                        json_t *c = json_object();
                        json_object_set_new(c, "constraint", json_string(qt_constraint_key(cf[i].constraint)));
                        json_object_set_new(c, "loosen", json_boolean(cf[i].loosen));
                        if (cf[i].constraint == QT_C_DEVICE)
                            json_object_set_new(c, "device", cf[i].device ? json_string(cf[i].device) : json_null());
                        else
                            json_object_set_new(c, "value", json_real(cf[i].value));
                        json_object_set_new(
                            c, "recommendation",
                            cf[i].choice >= 0 ? json_string(qt_row_label(&r.rows[cf[i].choice], label, sizeof label))
                                              : json_null());
                        json_object_set_new(c, "text", json_string(cf[i].text));
                        json_array_append_new(a, c);
                    }
                    json_object_set_new(o, "counterfactuals", a);
                    qt_counterfactuals_free(cf, ncf);
                }
                char *text = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
                if (text) puts(text);
                free(text);
                json_decref(o);
            } else {
                printf("recommendation: %s\n",
                       rec >= 0 ? qt_row_label(&r.rows[rec], label, sizeof label) : "none (nothing is viable)");
                printf("wrote %s/results.csv, %s/report.md, %s/report.html\n", dir, dir, dir);
            }
        }
        qt_results_free(&r);
    }
    qt_envelope_free(&env);
    return rc ? qt_cli_runtime_error() : QT_EXIT_OK;
}
