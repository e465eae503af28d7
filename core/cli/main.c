/* qtool entry point: dispatches to one command per file. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "threads.h"

const char *qt_cli_plugin_path;

typedef struct command {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
} command;

static const command commands[] = {
    {"probe", "CUDA devices and which plugins can run here (and why not)", cmd_probe},
    {"plugins", "installed plugins, their capabilities and options", cmd_plugins},
    {"check-plugin", "run the conformance suite on a plugin (name or .so path)", cmd_check_plugin},
    {"quantize", "pack a checkpoint with a plugin and save it", cmd_quantize},
    {"eval", "evaluate one configuration on a dataset", cmd_eval},
    {"metrics", "accuracy, F1, ECE, temperature, tiers from saved logits", cmd_metrics},
    {"sweep", "every model x every plugin from sweep.ini, then the report", cmd_sweep},
    {"report", "tables, plots, envelope check and recommendation from results/", cmd_report},
    {"tokenize", "tokenize text with a tokenizer.json", cmd_tokenize},
    {"demo", "run the whole measurement on an embedded default", cmd_demo},
};
#define N_COMMANDS (sizeof commands / sizeof commands[0])

int qt_cli_usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "qtool%s%s: ", cmd ? " " : "", cmd ? cmd : "");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\nTry 'qtool %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
    va_end(ap);
    return QT_EXIT_USAGE;
}

int qt_cli_runtime_error(void)
{
    const char *msg = qt_last_error();
    fprintf(stderr, "qtool: error: %s\n", msg[0] ? msg : "unknown failure");
    return QT_EXIT_RUNTIME;
}

static void usage(FILE *out)
{
    fprintf(out,
            "qtool %s: measure quantization methods on your fine-tuned classifier\n\n"
            "Usage: qtool [--plugin-path DIR] [-v|-q] <command> [options]\n"
            "       qtool --plugin NAME --model FILE.safetensors|DIR [--opt K=V]... [--json] [--out DIR]\n"
            "             (weight-level report of one plugin on every 2-D weight)\n\n"
            "Commands:\n",
            QTOOL_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-14s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\n'qtool <command> --help' describes each command.\n");
}

int main(int argc, char **argv)
{
    int i = 1;
    /* Global options before the command. */
    while (i < argc) {
        if (strcmp(argv[i], "--plugin-path") == 0) {
            if (i + 1 >= argc) return qt_cli_usage_error(NULL, "--plugin-path needs a folder");
            qt_cli_plugin_path = argv[i + 1];
            i += 2;
        } else if (strncmp(argv[i], "--plugin-path=", 14) == 0) {
            qt_cli_plugin_path = argv[i] + 14;
            i++;
        } else if (strcmp(argv[i], "-v") == 0 || strcmp(argv[i], "--verbose") == 0) {
            qt_set_log_level(QTOOL_LOG_DEBUG);
            i++;
        } else if (strcmp(argv[i], "-q") == 0 || strcmp(argv[i], "--quiet") == 0) {
            qt_set_log_level(QTOOL_LOG_WARN);
            i++;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return QT_EXIT_USAGE;
    }
    const char *name = argv[i];
    if (strcmp(name, "-h") == 0 || strcmp(name, "--help") == 0 || strcmp(name, "help") == 0) {
        usage(stdout);
        return QT_EXIT_OK;
    }
    if (strcmp(name, "--version") == 0 || strcmp(name, "version") == 0) {
        printf("qtool %s (plugin ABI %d.%d)\n", QTOOL_VERSION, QTOOL_ABI_MAJOR, QTOOL_ABI_MINOR);
        return QT_EXIT_OK;
    }
    int rc;
    if (name[0] == '-') {
        /* The bare form: options straight away, no command. */
        argv[i - 1 >= 0 ? i - 1 : 0] = (char *)"qtool";
        rc = cmd_weights(argc - i + 1, argv + i - 1);
    } else {
        const command *c = NULL;
        for (size_t k = 0; k < N_COMMANDS; k++)
            if (strcmp(commands[k].name, name) == 0) c = &commands[k];
        if (!c) return qt_cli_usage_error(NULL, "unknown command '%s'", name);
        rc = c->run(argc - i, argv + i);
    }
    qt_threads_shutdown();
    return rc;
}
