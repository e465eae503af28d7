/* Quantized checkpoints: saving a packed model as a Hugging Face folder
 * (model.safetensors + config.json with "quantization_config"), reading one
 * back through the plugin that accepts its config, and the calibration
 * examples both `qtool quantize` and `qtool eval` feed to calibrating
 * plugins. docs/quantize.md describes the layout. */
#ifndef QT_QUANTIZE_H
#define QT_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

#include "data.h"
#include "model.h"
#include "plugin_host.h"

/* Suffix (after the Linear's prefix) of an input scale that could not be
 * folded: F32 [K]; the runtime divides the Linear's input by it. */
#define QT_QUANT_INPUT_SCALE_SUFFIX "input_channel_scale"

/* The "quantization_config" object of a config.json as JSON text (*out is
 * NULL when there is none). Errors name the file. */
int qt_quant_config_read(const char *config_path, char **out);
/* Its "quant_method" string, or "?" (copied into buf). */
const char *qt_quant_method(const char *quant_config, char *buf, size_t len);

/* The plugin of the set whose accepts_config takes this checkpoint's
 * quantization_config. With `wanted` (a name or path given by the user), that
 * plugin must accept it. Fails with "<model>: no installed plugin reads
 * quant_method 'awq'" when none does. */
int qt_quant_find_plugin(qt_plugin_set *set, const qt_model *m, const char *wanted, qt_plugin **out);

/* Creates every block Linear of a quantized checkpoint through desc->load
 * for `device`, each reading the tensors under its own prefix; input scales
 * saved beside a layer (QT_QUANT_INPUT_SCALE_SUFFIX) are applied explicitly.
 * The instance must outlive the packed layers. */
int qt_model_load_packed(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device);

/* Refuses an output folder that exists and is not empty (unless `force`),
 * a file in its place, or the model's own folder. */
int qt_quant_check_out(const char *out_dir, const char *model_path, int force);

/* Writes the packed model as a checkpoint folder: model.safetensors (the
 * checkpoint's other tensors as they are, norms changed by folding as F32,
 * each block Linear through the plugin's save under its prefix) and
 * config.json (the model's config, `config_path` or the one beside the
 * model, with "quantization_config"), plus tokenizer files found beside the
 * model. Everything goes into a temporary folder beside `out_dir` that is
 * renamed into place at the end: `out_dir` is never half written. With
 * `force` an existing non-empty folder is replaced. */
int qt_quant_save(const qt_model *m, const char *config_path, const char *out_dir, int force);

/* Calibration examples: the first `samples` examples of a JSONL file
 * (labels ignored; "text" lines need `tok`, which may be NULL), each cut to
 * `max_length` tokens, in batches of at most `batch_tokens` tokens (at least
 * one example each). */
typedef struct qt_calib_set {
    qt_dataset data;
    qt_batch *batches;
    size_t n_batches;
    const int32_t **ids;
    int64_t *lengths;
    int64_t n_examples, n_tokens;
} qt_calib_set;

int qt_calib_set_load(const char *path, const qt_model *m, const struct qt_tokenizer *tok, int64_t samples,
                      int64_t max_length, int64_t batch_tokens, qt_calib_set *out);
void qt_calib_set_free(qt_calib_set *s);

#endif
