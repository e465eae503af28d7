/* Devices qtool can run on: the CPU, each CUDA device, and simulated cards
 * (`qtool probe --as t4`) so the plugins' probe rules can be checked for
 * hardware that is not here. */
#ifndef QT_DEVICE_H
#define QT_DEVICE_H

#include <stddef.h>

#include <qtool/plugin.h>

typedef struct qt_device_list {
    qtool_device_info cpu;
    qtool_device_info *cuda; /* n_cuda entries (malloc'd) */
    int n_cuda;
    char no_cuda_reason[256]; /* why n_cuda is 0 */
} qt_device_list;

/* The CPU: name from /proc/cpuinfo, usable threads, SIMD features. */
void qt_device_cpu_info(qtool_device_info *out);

/* The CPU and every CUDA device. A device whose properties cannot be read
 * is skipped with a warning. 0 on success. */
int qt_devices_query(qt_device_list *out);
void qt_devices_free(qt_device_list *list);

/* A simulated CUDA card from "sm_75", "sm_7.5", "7.5", or a name (t4,
 * v100, a10, a100, l4, l40s, h100, h200, b200; any case). Unknown text
 * fails with QTOOL_ERR_INVALID_ARGUMENT and a message listing what is
 * accepted. */
int qt_device_simulate(const char *card, qtool_device_info *out);
/* "sm_XY, sm_X.Y, X.Y, t4, v100, ..." for help texts. */
const char *qt_device_simulated_names(void);

/* "cpu", "cuda:0"; "cuda:sim" for a simulated card. */
const char *qt_device_label(const qtool_device_info *d, char *buf, size_t len);
/* "avx2 fma avx512f ..." (empty when none). */
const char *qt_cpu_features_str(uint32_t features, char *buf, size_t len);

/* Asks a plugin descriptor whether it can run on `d`: the `devices` mask
 * first ("CPU only" / "CUDA only"), then its probe slot. Returns 1 when it
 * can, 0 with `reason` filled when not. */
int qt_device_plugin_supported(const qtool_plugin_desc *desc, const qtool_device_info *d, char *reason,
                               size_t reason_len);

#endif
