/* The plugin host: discovery, dlopen(RTLD_NOW | RTLD_LOCAL), ABI checks,
 * option parsing and instance creation. Every refusal is one line naming
 * the file and the cause; the other plugins still load. */
#ifndef QT_PLUGIN_HOST_H
#define QT_PLUGIN_HOST_H

#include <stddef.h>

#include <qtool/plugin.h>

#include "host_services.h"

typedef struct qt_plugin {
    const qtool_plugin_desc *desc;
    char *path;   /* the file it came from */
    void *handle; /* dlopen handle */
    qt_services services;
} qt_plugin;

typedef struct qt_plugin_refusal {
    char *path;
    char *reason; /* "not a shared object: ...", "no qtool_plugin_entry symbol", ... */
} qt_plugin_refusal;

typedef struct qt_plugin_set {
    qt_plugin **plugins; /* loaded, sorted by name */
    size_t n;
    qt_plugin_refusal *refused;
    size_t n_refused;
} qt_plugin_set;

/* Loads one file. On refusal returns non-zero with qt_last_error() set to
 * "<path>: <cause>". */
int qt_plugin_load(const char *path, qt_plugin **out);
void qt_plugin_unload(qt_plugin *p);

/* Loads every plugin from, in order: `explicit_path` (a file or a folder,
 * may be NULL), the folders in QTOOL_PLUGIN_PATH (':'-separated), the
 * folder next to the executable (<exe>/../lib/qtool/plugins), and the
 * install folder. Files are lib*.so. A name already loaded from an earlier
 * place is refused as a duplicate. Refusals are recorded in the set and
 * logged as warnings (unless `quiet`). Returns 0 even when some were
 * refused; non-zero only on a fatal error (out of memory). */
int qt_plugins_discover(qt_plugin_set *set, const char *explicit_path, int quiet);
void qt_plugins_free(qt_plugin_set *set);

qt_plugin *qt_plugins_find(const qt_plugin_set *set, const char *name);
/* A name, or a path to a .so (loaded and added to the set). */
int qt_plugins_resolve(qt_plugin_set *set, const char *name_or_path, qt_plugin **out);

/* Parsed `--opt KEY=VALUE` values: one per declared option, in order. */
typedef struct qt_plugin_options {
    qtool_option_value *values;
    uint32_t n;
    char **owned; /* strings the values point into */
    size_t n_owned;
} qt_plugin_options;

/* Parses "KEY=VALUE" strings against the plugin's declared options,
 * defaults filled in. An unknown key or bad value fails with a message
 * that lists the valid options. */
int qt_plugin_parse_options(const qt_plugin *p, char *const *kv, size_t n_kv, qt_plugin_options *out);
void qt_plugin_options_free(qt_plugin_options *o);

/* Calls desc->create with the plugin's services (set up for `cuda_device`
 * and `stream`; -1 and NULL for CPU only). */
int qt_plugin_create(qt_plugin *p, const qt_plugin_options *opts, int cuda_device, void *stream,
                     qtool_instance **out);

#endif
