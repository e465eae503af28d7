/* The plugin conformance suite (`qtool check-plugin`, tests/conformance):
 * descriptor sanity, matmul against a float64 reference at awkward shapes,
 * CPU/CUDA agreement, memory accounting against the allocator, rejection
 * of bad arguments, save/load round trip. Tolerances and their reasoning:
 * docs/conformance.md. */
#ifndef QT_CONFORMANCE_H
#define QT_CONFORMANCE_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

#include "plugin_host.h"

typedef enum qt_conf_verdict { QT_CONF_PASS = 0, QT_CONF_FAIL = 1, QT_CONF_SKIP = 2 } qt_conf_verdict;

typedef struct qt_conf_result {
    int verdict;       /* qt_conf_verdict */
    char check[48];    /* "descriptor", "matmul K=129 N=17", "memory", ... */
    char device[16];   /* "cpu", "cuda:0", "cpu+cuda:0", or "" */
    char detail[640];
} qt_conf_result;

typedef struct qt_conf_config {
    char *const *options; /* "KEY=VALUE" for create */
    size_t n_options;
    uint32_t devices;     /* QTOOL_DEVMASK_* to test; 0 means both */
    uint64_t seed;        /* inputs are a function of the seed only */
    int cuda_device;      /* ordinal to test on */
    int verbose;          /* keep plugin log lines during bad-argument checks */
    /* Called as each result is recorded (may be NULL). */
    void (*on_result)(const qt_conf_result *r, void *ctx);
    void *ctx;
} qt_conf_config;

typedef struct qt_conf_report {
    qt_conf_result *results;
    size_t n, cap;
    int n_pass, n_fail, n_skip;
    uint64_t seed;
} qt_conf_report;

/* Runs the whole suite on a loaded plugin. Returns 0 when it ran (look at
 * n_fail), non-zero only when the harness itself failed (out of memory,
 * bad options: qt_last_error says which). */
int qt_conformance_run(qt_plugin *p, const qt_conf_config *cfg, qt_conf_report *out);
void qt_conf_report_free(qt_conf_report *r);

/* The error bound of a plugin's matmul on `device` with activations of
 * `io_dtype` (F32 on the CPU; F16/BF16 on CUDA), as a relative Frobenius
 * error normalised by the cancellation-free magnitude
 * sqrt(sum (x^2 W^T^2 + b^2)). */
double qt_conf_tolerance(const qtool_plugin_desc *d, int device, int io_dtype);

/* The check running now, for a crash handler's last words ("" when idle). */
const char *qt_conformance_current(void);

#endif
