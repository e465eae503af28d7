/* The sweep: every model x every plugin the probe allows, each cell in its
 * own child process (`qtool eval ... --json-out`), so a crash or an OOM
 * kill is recorded as a failed cell and the sweep goes on. Finished cells
 * are kept (one JSON file each, written atomically) and skipped on rerun.
 * At the end: results.json and the report. sweep.ini and the cell
 * contract are documented in docs/measurements.md. */
#ifndef QT_SWEEP_H
#define QT_SWEEP_H

#include <stddef.h>

#include "report.h"

typedef struct qt_sweep_model {
    char *name;   /* [model NAME]: [A-Za-z0-9._-]+ */
    char *path;   /* checkpoint folder or .safetensors (resolved against the INI's folder) */
    char *config; /* config.json (optional) */
} qt_sweep_model;

typedef struct qt_sweep_config {
    char *ini_path;
    qt_sweep_model *models;
    size_t n_models;
    char *eval, *train, *calib; /* [data] */
    int64_t head, mid;          /* [data] head= mid= (tier sizes) */
    char **plugins;             /* [plugins] list= (NULL: all the probe allows) */
    size_t n_plugins;
    char *reference;            /* [plugins] reference= (NULL: the baseline plugin) */
    char **opt_plugin, **opt_value; /* [plugins] options.NAME = K=V K=V */
    size_t n_opts;
    qt_envelope env; /* [envelope] */
    int has_env;
    char *out_dir;          /* [output] dir= (default "results" beside the INI) */
    double cell_timeout_s;  /* [output] cell_timeout_s= (0: none) */
    char **named;           /* [named_classes] names= */
    size_t n_named;
} qt_sweep_config;

/* Parses sweep.ini. An unknown section or key, a bad value or a missing
 * required key fails with "<file>:<line>: <problem>". */
int qt_sweep_config_load(const char *path, qt_sweep_config *out);
void qt_sweep_config_free(qt_sweep_config *c);
/* Only the [envelope] of an INI (the other sections are checked but not
 * required), for `qtool report --envelope`. */
int qt_sweep_envelope_load(const char *path, qt_envelope *env);

/* What the plugin host said about one plugin on this machine. */
typedef struct qt_sweep_plugin {
    char *name;
    char *version;
    int weight_bits, activation_bits;
    int baseline; /* QTOOL_PLUGIN_BASELINE: the reference */
    int needs_calibration; /* QTOOL_PLUGIN_NEEDS_CALIBRATION: refused without [data] calib= */
    int allowed;
    char *reason;       /* why not, when !allowed */
    const char *device; /* "cuda" or "cpu": where its cells run (eval --device) */
} qt_sweep_plugin;

void qt_sweep_plugins_free(qt_sweep_plugin *p, size_t n);

typedef struct qt_sweep_options {
    const char *exe;        /* the qtool binary the cells run (NULL: /proc/self/exe) */
    const char *cell_cmd;   /* substitute cell runner, run through /bin/sh with the eval
                               arguments appended (QTOOL_SWEEP_CELL_CMD; for tests) */
    int retry_failed;       /* rerun cells recorded as failed */
    int force;              /* rerun every cell */
    int no_report;          /* stop after results.json */
    int quiet;              /* no progress lines */
} qt_sweep_options;

/* Runs the sweep. `plugins` lists what the host found and probed (with
 * `cell_cmd` set it may be NULL: the configured list is taken as allowed).
 * Returns 0 when results.json (and the report) were written, whatever
 * the cells' outcomes; `*n_failed` counts failed cells. */
int qt_sweep_run(const qt_sweep_config *cfg, const qt_sweep_plugin *plugins, size_t n_plugins,
                 const qt_sweep_options *opt, size_t *n_failed);

#endif
