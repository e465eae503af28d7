/* Whole models as GGUF files (docs/gguf.md, section 5).
 *
 * Export: a decoder classifier (Qwen2, Llama) whose block Linears the
 * gguf_cpu plugin has packed becomes one GGUF v3 file that llama.cpp loads:
 * llama.cpp tensor names and dimension order, the Linears as the plugin's
 * block bytes (llama's q/k rows permuted as convert_hf_to_gguf.py does),
 * the token embedding in the checkpoint's float type, norms in F32, the
 * llama.cpp hyper-parameter keys and, with a byte-level BPE tokenizer.json
 * beside the model, the tokenizer keys. What llama.cpp has no place for
 * (the classification head, the config) goes into `qtool.*` keys.
 *
 * Import: qt_model_open on such a file builds the model from the file
 * alone: the config from `qtool.config_json` (cross-checked against the
 * llama.cpp keys), embedding, norms and head read directly, and every block
 * Linear created through the plugin's `load` slot over the GGUF tensors. */
#ifndef QT_GGUF_MODEL_H
#define QT_GGUF_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

#include "model.h"

/* The plugin whose packed layers are GGUF blocks. */
#define QT_GGUF_EXPORT_PLUGIN "gguf_cpu"

/* Does `path` name a GGUF file (a regular file starting with "GGUF")? */
int qt_gguf_model_is_gguf(const char *path);

/* Does `path` end in ".gguf" (any case)? qtool quantize writes a GGUF file
 * then. */
int qt_gguf_model_path_is_gguf(const char *path);

/* Can this model be exported? Decoders only (Qwen2, Llama) with what
 * llama.cpp's graphs compute (SiLU MLP; for Qwen2 q/k/v biases only and
 * heads x head_dim = hidden). Checked before packing. */
int qt_gguf_export_check(const qt_model *m);

/* Refuses an output path that is a folder, or an existing file unless
 * `force`. */
int qt_gguf_check_out(const char *path, int force);

/* What an export wrote, for the command's report. `notes` holds lines
 * ("gguf: ...\n") on what llama.cpp does with the file and what it cannot
 * represent. */
typedef struct qt_gguf_export_info {
    int64_t n_tensors, n_kv;
    uint64_t file_bytes;
    char notes[4096];
} qt_gguf_export_info;

/* Writes the packed model (packed by QT_GGUF_EXPORT_PLUGIN on the CPU) to
 * `out_path` atomically. `config_path` (or config.json beside the model) is
 * stored in the file. */
int qt_gguf_export(const qt_model *m, const char *config_path, const char *out_path, int force,
                   qt_gguf_export_info *info);

/* Fills a fresh model (zeroed apart from packed_device) from a GGUF file
 * written by qt_gguf_export; `config_path`, when given, replaces the
 * file's own config (it must still agree with the file). Errors name the
 * file and the key or tensor at fault. On failure the caller closes the
 * model (qt_model_close). */
int qt_gguf_model_read(qt_model *m, const char *path, const char *config_path);

/* Creates every block Linear through desc->load from the file's tensors
 * (what qt_model_load_packed does for a model read from GGUF). */
int qt_gguf_model_load_packed(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device);

/* Frees what qt_gguf_model_read kept (the mapping); qt_model_close calls it. */
void qt_gguf_model_release(qt_model *m);

#endif
