/* Weight-level report: quantize every 2-D weight of a checkpoint with one
 * plugin and measure what it did to the weights (bytes before/after by
 * category, relative Frobenius error, max abs error, SNR), optionally saving
 * the packed checkpoint. No model graph needed, so a bare .safetensors file
 * works. */
#ifndef QT_WEIGHT_REPORT_H
#define QT_WEIGHT_REPORT_H

#include <stdint.h>

#include "plugin_host.h"

typedef struct qt_weight_row {
    char *name;
    int role;
    int block;
    int64_t n, k;
    int src_dtype;
    uint64_t bytes_before;
    uint64_t bytes_after[QTOOL_MEM_COUNT];
    uint64_t bytes_after_total;
    double rel_fro;   /* ||W - W_hat||_F / ||W||_F */
    double max_abs;   /* max |W - W_hat| */
    double snr_db;    /* 10 log10(||W||^2 / ||W - W_hat||^2) */
    double seconds;   /* pack time */
    int skipped;      /* the plugin refused this shape */
    char *note;       /* why it was skipped */
} qt_weight_row;

typedef struct qt_weight_report {
    char *plugin;
    char *model;
    int device;
    qt_weight_row *rows;
    size_t n_rows;
    uint64_t total_before, total_after;    /* quantized tensors only */
    uint64_t other_bytes;                  /* tensors kept as they are */
    double seconds;
} qt_weight_report;

typedef struct qt_weight_report_opts {
    int device;            /* qtool_device_kind */
    const char *out_dir;   /* NULL: write nothing */
    /* Print one progress line per tensor to stderr. */
    int progress;
} qt_weight_report_opts;

int qt_weight_report_run(qt_plugin *p, qtool_instance *inst, const char *model_path,
                         const qt_weight_report_opts *opts, qt_weight_report *out);
void qt_weight_report_free(qt_weight_report *r);

/* Recovers W_hat [N, K] (F32, CPU) from a packed layer: the plugin's
 * dequantize slot when it has one, else the identity through matmul. */
int qt_packed_dequantize(qt_plugin *p, qtool_packed *packed, int device, int64_t n, int64_t k,
                         float *out);

#endif
