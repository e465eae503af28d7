/* `qtool demo`: the whole measurement on an embedded default. Generates a
 * synthetic encoder, decoder and long-tailed eval set, then runs the sweep
 * (every plugin the probe allows) and writes the report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cuda_rt.h"
#include "demo.h"
#include "error.h"
#include "fsutil.h"

static void help(void)
{
    printf("Usage: qtool demo [--out DIR] [--device cpu|cuda]\n\n"
           "Runs the whole measurement with no files needed: generates (deterministically) a small\n"
           "ModernBERT-shaped encoder and Qwen2-shaped decoder with trained-looking weight statistics\n"
           "and a long-tailed 113-class eval set labelled by a float32 teacher with label noise, runs\n"
           "every plugin the probe allows on both, and writes the report.\n"
           "The models and data are synthetic: the numbers show how the methods compare, not how\n"
           "well any real model does.\n\n"
           "Options:\n"
           "  --out DIR           where to write models, data and results (default qtool-demo)\n"
           "  --device cpu|cuda   where to run the evaluation (default cpu)\n"
           "  -h, --help          this text\n");
}

int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {{"out", required_argument, 0, 'o'},
                                         {"device", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *out = "qtool-demo";
    qt_demo_spec spec;
    qt_demo_default_spec(&spec);
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'd':
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda"))
                return qt_cli_usage_error("demo", "--device must be cpu or cuda, not '%s'", optarg);
            spec.device = optarg;
            break;
        case 'h': help(); return QT_EXIT_OK;
        default: return qt_cli_usage_error("demo", "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc) return qt_cli_usage_error("demo", "unexpected argument '%s'", argv[optind]);
    if (strcmp(spec.device, "cuda") == 0) {
        char why[256];
        if (qt_cuda_device_count(why, sizeof why) == 0) {
            qt_fail(QTOOL_ERR_UNSUPPORTED, "--device cuda: no CUDA device (%s)", why);
            return qt_cli_runtime_error();
        }
    }
    printf("qtool demo: SYNTHETIC models and data, generated here; not a real task.\n");
    if (qt_mkdirs(out) || qt_demo_generate(&spec, out)) return qt_cli_runtime_error();
    char *ini = qt_path_join(out, "sweep.ini");
    if (!ini) return qt_cli_runtime_error();
    fflush(stdout);
    char *sweep_argv[] = {(char *)"sweep", (char *)"--config", ini, NULL};
    int rc = cmd_sweep(3, sweep_argv);
    if (rc == QT_EXIT_OK)
        printf("\nReport: %s/results/report.html (and report.md, results.csv)\n"
               "The data above are synthetic. For your own fine-tuned checkpoint:\n"
               "  qtool eval --model ./my-model --plugin nf4 --data val.jsonl\n"
               "  qtool sweep --config sweep.ini     (copy %s as a template)\n",
               out, ini);
    free(ini);
    return rc;
}
