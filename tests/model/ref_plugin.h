/* The float32 reference plugin descriptor used by the model tests. */
#ifndef QT_TEST_REF_PLUGIN_H
#define QT_TEST_REF_PLUGIN_H

#include <qtool/plugin.h>

extern const qtool_plugin_desc ref_plugin_desc;
int ref_plugin_calibrated(const qtool_instance *i);
int ref_plugin_packed(const qtool_instance *i);
/* When set, pack returns a per-input-channel scale (and packs W * s). */
extern int ref_plugin_input_scale;

#endif
