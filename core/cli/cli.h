/* The qtool command line: one file per command, each `int cmd_X(argc, argv)`
 * with argv[0] the command name. Exit codes: 0 success, 1 runtime error
 * (one line on stderr), 2 usage error. The CLI parses and prints; the work
 * happens in core/. */
#ifndef QT_CLI_H
#define QT_CLI_H

#include <getopt.h>
#include <qtool/plugin.h>

#define QT_EXIT_OK 0
#define QT_EXIT_RUNTIME 1
#define QT_EXIT_USAGE 2

/* Prints "qtool CMD: <message>" and a pointer to --help; returns 2. */
int qt_cli_usage_error(const char *cmd, const char *fmt, ...) QTOOL_PRINTF(2, 3);
/* Prints "qtool: error: <qt_last_error()>"; returns 1. */
int qt_cli_runtime_error(void);
/* Short option string for getopt_long from a long option table is not
 * needed: commands use long options only (plus -h). */

/* The plugin search path given by --plugin-path before the command (or
 * NULL); plugin discovery adds it first. */
extern const char *qt_cli_plugin_path;

int cmd_probe(int argc, char **argv);
int cmd_plugins(int argc, char **argv);
int cmd_check_plugin(int argc, char **argv);
int cmd_weights(int argc, char **argv); /* the bare form: qtool --plugin P --model M */
int cmd_quantize(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_demo(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_metrics(int argc, char **argv);
int cmd_report(int argc, char **argv);
int cmd_sweep(int argc, char **argv);

#endif
