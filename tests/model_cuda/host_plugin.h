/* A test plugin for the CUDA forward pass: its CUDA matmul copies x to the
 * host and multiplies there in float64, one row at a time, so results are
 * independent of the batch and free of GEMM rounding; and it asks for a
 * per-input-channel scale (the AWQ/SmoothQuant path), so the runtime must
 * feed it x / s. */
#ifndef QT_TEST_HOST_PLUGIN_H
#define QT_TEST_HOST_PLUGIN_H

#include <qtool/plugin.h>

extern const qtool_plugin_desc host_plugin_desc;

#endif
