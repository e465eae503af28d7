/* qtool plugins: what was found, what each plugin can do and takes as
 * options, and which files were refused and why. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "plugin_host.h"

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool [--plugin-path PATH] plugins [--json]\n\n"
            "Lists the plugins qtool finds, their capabilities and options, and the\n"
            "files it refused with the reason.\n\n"
            "  --json       one JSON object: {\"plugins\": [...], \"refused\": [...]}\n"
            "  -h, --help   this text\n\n"
            "Search order (the first plugin of a name wins):\n"
            "  1. --plugin-path: a folder or a .so, several joined with ':'\n"
            "  2. QTOOL_PLUGIN_PATH, the same form\n"
            "  3. <folder of qtool>/%s\n"
            "  4. %s\n"
            "QTOOL_NO_DEFAULT_PLUGINS=1 skips 3 and 4. In folders, only lib*.so files load.\n",
            QTOOL_PLUGIN_RELDIR, QTOOL_INSTALL_PLUGIN_DIR);
}

static void devices_text(uint32_t devices, char *buf, size_t len)
{
    snprintf(buf, len, "%s%s%s", devices & QTOOL_DEVMASK_CPU ? "cpu" : "",
             (devices & QTOOL_DEVMASK_CPU) && (devices & QTOOL_DEVMASK_CUDA) ? "," : "",
             devices & QTOOL_DEVMASK_CUDA ? "cuda" : "");
}

static int max_int(int a, int b) { return a > b ? a : b; }

static void print_text(const qt_plugin_set *set)
{
    if (set->n == 0) {
        printf("No plugins found.\n");
    } else {
        /* Column widths from the content, so nothing is cut. */
        int wn = 4, wv = 7, wd = 7;
        for (size_t k = 0; k < set->n; k++) {
            const qtool_plugin_desc *d = set->plugins[k]->desc;
            char dev[16];
            devices_text(d->devices, dev, sizeof dev);
            wn = max_int(wn, (int)strlen(d->name));
            wv = max_int(wv, (int)strlen(d->version));
            wd = max_int(wd, (int)strlen(dev));
        }
        printf("%-*s  %-*s  %-5s  %-*s  %-6s  %-6s  %-11s  %s\n", wn, "NAME", wv, "VERSION", "ABI", wd, "DEVICES",
               "W-BITS", "A-BITS", "CALIBRATION", "SUMMARY");
        for (size_t k = 0; k < set->n; k++) {
            const qtool_plugin_desc *d = set->plugins[k]->desc;
            char dev[16], abi[16];
            devices_text(d->devices, dev, sizeof dev);
            snprintf(abi, sizeof abi, "%u.%u", QTOOL_ABI_MAJOR_OF(d->abi_version), QTOOL_ABI_MINOR_OF(d->abi_version));
            printf("%-*s  %-*s  %-5s  %-*s  %-6d  %-6d  %-11s  %s\n", wn, d->name, wv, d->version, abi, wd, dev,
                   (int)d->weight_bits, (int)d->activation_bits,
                   d->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION ? "yes" : "no", d->summary);
        }
        for (size_t k = 0; k < set->n; k++) {
            const qt_plugin *p = set->plugins[k];
            const qtool_plugin_desc *d = p->desc;
            printf("\n%s (%s)\n", d->name, p->path);
            if (d->n_options == 0) {
                printf("  no options\n");
                continue;
            }
            int wo = 4, wt = 4, wdef = 7, wr = 5;
            char range[80];
            for (uint32_t j = 0; j < d->n_options; j++) {
                const qtool_option_desc *o = &d->options[j];
                const char *type = o->type == QTOOL_OPT_ENUM ? o->choices : qt_option_type_name(o->type);
                wo = max_int(wo, (int)strlen(o->name));
                wt = max_int(wt, (int)strlen(type));
                wdef = max_int(wdef, (int)strlen(o->default_value ? o->default_value : ""));
                range[0] = '\0';
                if ((o->type == QTOOL_OPT_INT || o->type == QTOOL_OPT_FLOAT) && o->min_value <= o->max_value)
                    snprintf(range, sizeof range, "%.15g..%.15g", o->min_value, o->max_value);
                wr = max_int(wr, (int)strlen(range));
            }
            printf("  %-*s  %-*s  %-*s  %-*s  %s\n", wo, "--opt", wt, "TYPE", wdef, "DEFAULT", wr, "RANGE", "HELP");
            for (uint32_t j = 0; j < d->n_options; j++) {
                const qtool_option_desc *o = &d->options[j];
                const char *type = o->type == QTOOL_OPT_ENUM ? o->choices : qt_option_type_name(o->type);
                range[0] = '\0';
                if ((o->type == QTOOL_OPT_INT || o->type == QTOOL_OPT_FLOAT) && o->min_value <= o->max_value)
                    snprintf(range, sizeof range, "%.15g..%.15g", o->min_value, o->max_value);
                printf("  %-*s  %-*s  %-*s  %-*s  %s\n", wo, o->name, wt, type, wdef,
                       o->default_value ? o->default_value : "", wr, range, o->help ? o->help : "");
            }
        }
    }
    if (set->n_refused) {
        printf("\nRefused (%zu):\n", set->n_refused);
        for (size_t k = 0; k < set->n_refused; k++) printf("  %s: %s\n", set->refused[k].path, set->refused[k].reason);
    }
    if (set->n == 0) {
        printf("\nSearched:%s\n", set->n_searched ? "" : " nothing (no --plugin-path, QTOOL_PLUGIN_PATH or default folder)");
        for (size_t k = 0; k < set->n_searched; k++) printf("  %s\n", set->searched[k]);
    }
}

/* A JSON string even from bytes that are not UTF-8 (file names, plugin
 * text): those bytes become '?', so one odd file cannot sink the listing. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s ? s : "");
    if (j || !s) return j;
    char *copy = strdup(s);
    if (!copy) return NULL;
    for (char *c = copy; *c; c++)
        if ((unsigned char)*c >= 0x80) *c = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

/* The default as a typed JSON value (the descriptor's text, parsed). */
static json_t *default_json(const qtool_option_desc *o, const qtool_option_value *v)
{
    switch (o->type) {
    case QTOOL_OPT_INT: return json_integer((json_int_t)v->i);
    case QTOOL_OPT_FLOAT: return json_real(v->f);
    case QTOOL_OPT_BOOL: return json_boolean(v->i != 0);
    default: return jstr(v->s);
    }
}

static int add(json_t *obj, const char *key, json_t *value)
{
    return value ? json_object_set_new(obj, key, value) : -1;
}

static json_t *plugin_json(const qt_plugin *p)
{
    const qtool_plugin_desc *d = p->desc;
    qt_plugin_options defaults;
    if (qt_plugin_parse_options(p, NULL, 0, &defaults) != 0) return NULL;
    json_t *o = json_object(), *devices = json_array(), *opts = json_array();
    char abi[16];
    snprintf(abi, sizeof abi, "%u.%u", QTOOL_ABI_MAJOR_OF(d->abi_version), QTOOL_ABI_MINOR_OF(d->abi_version));
    int bad = !o || !devices || !opts;
    if (!bad && (d->devices & QTOOL_DEVMASK_CPU)) bad |= json_array_append_new(devices, json_string("cpu"));
    if (!bad && (d->devices & QTOOL_DEVMASK_CUDA)) bad |= json_array_append_new(devices, json_string("cuda"));
    for (uint32_t j = 0; !bad && j < d->n_options; j++) {
        const qtool_option_desc *od = &d->options[j];
        json_t *oj = json_object(), *choices = json_null();
        int ranged = (od->type == QTOOL_OPT_INT || od->type == QTOOL_OPT_FLOAT) && od->min_value <= od->max_value;
        if (od->type == QTOOL_OPT_ENUM) {
            json_decref(choices);
            choices = json_array();
            const char *c = od->choices;
            while (choices && c) {
                const char *bar = strchr(c, '|');
                size_t n = bar ? (size_t)(bar - c) : strlen(c);
                char *one = strndup(c, n);
                bad |= json_array_append_new(choices, one ? jstr(one) : NULL);
                free(one);
                c = bar ? bar + 1 : NULL;
            }
        }
        bad |= !oj || !choices || json_array_append_new(opts, oj);
        if (bad) {
            json_decref(choices);
            break;
        }
        bad |= add(oj, "name", jstr(od->name));
        bad |= add(oj, "type", json_string(qt_option_type_name(od->type)));
        bad |= add(oj, "default", default_json(od, &defaults.values[j]));
        bad |= add(oj, "help", jstr(od->help));
        bad |= add(oj, "choices", choices);
        bad |= add(oj, "min", ranged ? json_real(od->min_value) : json_null());
        bad |= add(oj, "max", ranged ? json_real(od->max_value) : json_null());
    }
    qt_plugin_options_free(&defaults);
    if (bad) {
        json_decref(o);
        json_decref(devices);
        json_decref(opts);
        return NULL;
    }
    bad |= add(o, "name", jstr(d->name));
    bad |= add(o, "version", jstr(d->version));
    bad |= add(o, "abi", json_string(abi));
    bad |= add(o, "devices", devices);
    bad |= add(o, "weight_bits", json_integer(d->weight_bits));
    bad |= add(o, "activation_bits", json_integer(d->activation_bits));
    bad |= add(o, "needs_calibration", json_boolean(d->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION));
    bad |= add(o, "baseline", json_boolean(d->flags & QTOOL_PLUGIN_BASELINE));
    bad |= add(o, "thread_safe_matmul", json_boolean(d->flags & QTOOL_PLUGIN_THREAD_SAFE_MATMUL));
    bad |= add(o, "summary", jstr(d->summary));
    bad |= add(o, "path", jstr(p->path));
    bad |= add(o, "options", opts);
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

static int print_json(const qt_plugin_set *set)
{
    json_t *root = json_object(), *plugins = json_array(), *refused = json_array(), *searched = json_array();
    int bad = !root || !plugins || !refused || !searched;
    for (size_t k = 0; !bad && k < set->n; k++) bad |= json_array_append_new(plugins, plugin_json(set->plugins[k]));
    for (size_t k = 0; !bad && k < set->n_refused; k++) {
        json_t *r = json_object();
        bad |= !r || json_array_append_new(refused, r);
        if (bad) break;
        bad |= add(r, "path", jstr(set->refused[k].path));
        bad |= add(r, "reason", jstr(set->refused[k].reason));
    }
    for (size_t k = 0; !bad && k < set->n_searched; k++)
        bad |= json_array_append_new(searched, jstr(set->searched[k]));
    char *text = NULL;
    if (!bad) {
        bad |= json_object_set_new(root, "plugins", plugins);
        plugins = NULL;
        bad |= json_object_set_new(root, "refused", refused);
        refused = NULL;
        bad |= json_object_set_new(root, "searched", searched);
        searched = NULL;
        if (!bad) text = json_dumps(root, JSON_INDENT(2));
    }
    json_decref(root);
    json_decref(plugins);
    json_decref(refused);
    json_decref(searched);
    if (!text) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "plugins: cannot build the JSON output");
    puts(text);
    free(text);
    return 0;
}

int cmd_plugins(int argc, char **argv)
{
    int json = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return QT_EXIT_OK;
        } else {
            return qt_cli_usage_error(argv[0], "unexpected argument '%s'", argv[i]);
        }
    }
    qt_plugin_set set;
    /* Quiet: the refusals are part of this command's output. */
    if (qt_plugins_discover(&set, qt_cli_plugin_path, 1) != 0) return qt_cli_runtime_error();
    int rc = QT_EXIT_OK;
    if (json) {
        if (print_json(&set) != 0) rc = qt_cli_runtime_error();
    } else {
        print_text(&set);
    }
    if (fflush(stdout) != 0) {
        qt_fail(QTOOL_ERR_INTERNAL, "plugins: cannot write the output");
        rc = qt_cli_runtime_error();
    }
    qt_plugins_free(&set);
    return rc;
}
