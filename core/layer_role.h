/* Which Linear a checkpoint tensor is, from its Hugging Face name: the
 * role (q, k, v, out, gate, up, down, head, embedding) and block index that
 * plugins with per-tensor rules read from qtool_layer_info. */
#ifndef QT_LAYER_ROLE_H
#define QT_LAYER_ROLE_H

#include <qtool/plugin.h>

int qt_layer_role_from_name(const char *name);
/* The transformer block a tensor belongs to ("model.layers.7.…" -> 7), or -1. */
int qt_layer_block_from_name(const char *name);
const char *qt_layer_role_name(int role);

#endif
