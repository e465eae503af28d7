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
    /* The places searched, in order (for messages such as "no plugins
     * found; searched: ..."). */
    char **searched;
    size_t n_searched;
} qt_plugin_set;

/* Loads one file. On refusal returns non-zero with qt_last_error() set to
 * "<path>: <cause>". `desc` points at the host's copy of the descriptor:
 * slots past the plugin's struct_size read as NULL. init runs once per
 * library and shutdown when its last qt_plugin is unloaded, even when the
 * same file is loaded through several qt_plugin objects. */
int qt_plugin_load(const char *path, qt_plugin **out);
void qt_plugin_unload(qt_plugin *p);

/* Loads every plugin from, in order: `explicit_path` (a file or a folder,
 * may be NULL), the folders in QTOOL_PLUGIN_PATH (':'-separated), the
 * folder next to the executable (<exe>/../lib/qtool/plugins), and the
 * install folder. Files are lib*.so. A name already loaded from an earlier
 * place is refused as a duplicate. Refusals are recorded in the set and
 * logged as warnings (unless `quiet`). Returns 0 even when some were
 * refused; non-zero only on a fatal error (out of memory).
 *
 * Details: `explicit_path` and QTOOL_PLUGIN_PATH entries may each be a
 * folder or a single file, several joined with ':'; a file named
 * explicitly is loaded whatever its name, a folder contributes its lib*.so
 * files (not subfolders) in byte order. A missing explicit path is recorded
 * as a refusal. The same file reached twice (symlinks, the build folder
 * being the install folder) is loaded once. QTOOL_NO_DEFAULT_PLUGINS=1
 * skips the executable's and the install folder, so tests see only what
 * they name. `set` is overwritten: start from a zeroed or freed one. */
int qt_plugins_discover(qt_plugin_set *set, const char *explicit_path, int quiet);
void qt_plugins_free(qt_plugin_set *set);

qt_plugin *qt_plugins_find(const qt_plugin_set *set, const char *name);
/* A name, or a path to a .so (loaded and added to the set). An argument
 * containing '/' or ending in ".so" is a path; a path already in the set
 * returns that plugin, and a new file whose name is already loaded from
 * another file is refused (pass it as the explicit path of discovery to
 * make it win). */
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
 * that lists the valid options. A key given twice: the last value wins
 * (so a script can append overrides). Every value's `s` is a copy owned
 * by `out`; a STRING option declared with a NULL default gets "".
 * Values: INT strtoll of the whole text, within [min, max] when min <= max;
 * FLOAT strtod, finite, same range rule; BOOL 0/1/true/false/yes/no/on/off
 * (any case); ENUM one of the '|'-separated choices (exact), i = its index. */
int qt_plugin_parse_options(const qt_plugin *p, char *const *kv, size_t n_kv, qt_plugin_options *out);
void qt_plugin_options_free(qt_plugin_options *o);

/* Calls desc->create with the plugin's services (set up for `cuda_device`
 * and `stream`; -1 and NULL for CPU only). `opts` NULL means all defaults.
 * One services table per (device, stream) pair lives until unload, so an
 * instance may keep the pointer it was given. */
int qt_plugin_create(qt_plugin *p, const qt_plugin_options *opts, int cuda_device, void *stream,
                     qtool_instance **out);

/* "int", "float", "bool", "string", "enum" ("?" otherwise). */
const char *qt_option_type_name(int type);
/* One option as messages show it: "blocksize (int, default 64, 64..4096)",
 * "dtype (nf4|fp4, default nf4)". Returns what snprintf returns. */
int qt_option_describe(const qtool_option_desc *o, char *buf, size_t len);
/* Parses one value against one option; on failure returns non-zero with a
 * reason ("'12x' is not an integer") in `err`. `v->s` is set to `text`
 * (not copied). */
int qt_option_parse_value(const qtool_option_desc *o, const char *text, qtool_option_value *v,
                          char *err, size_t err_len);

#endif
