/* The services table handed to plugins (log, accounted allocation, thread
 * pool, CUDA stream). One per loaded plugin, so log lines name it. */
#ifndef QT_HOST_SERVICES_H
#define QT_HOST_SERVICES_H

#include <qtool/plugin.h>

typedef struct qt_services {
    qtool_host_services table;
    char plugin_name[64];
} qt_services;

/* Fills `s`; `cuda_device` -1 and `stream` NULL when there is no CUDA. */
void qt_services_init(qt_services *s, const char *plugin_name, int cuda_device, void *stream);

#endif
