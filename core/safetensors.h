/* safetensors files: a validating, memory-mapped reader, checkpoints made of
 * one file or of shards listed in model.safetensors.index.json, and a writer
 * that never leaves a partial file. Every input is treated as hostile: all
 * sizes and offsets are checked before use, and a bad file gives one line
 * "<path>: <problem>" (qt_last_error) with QTOOL_ERR_FORMAT.
 * docs/safetensors.md lists what is validated and the limits. */
#ifndef QT_SAFETENSORS_H
#define QT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

/* Largest JSON header accepted (the reference implementation's limit). */
#define QT_ST_MAX_HEADER_BYTES 100000000ull

typedef struct qt_st_tensor {
    const char *name;
    /* CPU view of the data. Dtypes qtool knows (F32, F16, BF16, I8, U8, I16,
     * I32, I64, F64, F8_E4M3) keep their dtype and shape. Others (BOOL, U16,
     * U32, U64, F8_E5M2, F8_E8M0, F8_*FNUZ, C64, F4, F6_*) are opaque: the
     * view is QTOOL_DTYPE_PACKED with shape [nbytes]. The data is read-only
     * (it points into the mapping) and aligned to the element size. */
    qtool_tensor view;
    uint64_t nbytes;
    /* The header's own description: dtype as written ("BF16", "BOOL") and shape. */
    const char *dtype_name;
    int32_t ndim;
    int64_t shape[QTOOL_MAX_DIMS];
} qt_st_tensor;

typedef struct qt_st_file qt_st_file;

/* Maps and validates a .safetensors file. Tensors stay valid until close. */
int qt_st_open(const char *path, qt_st_file **out);
/* Validates a file image already in memory; `name_for_errors` starts every
 * message. `buf` is borrowed and must outlive the returned file. */
int qt_st_parse(const void *buf, size_t len, const char *name_for_errors, qt_st_file **out);
void qt_st_close(qt_st_file *f);

const char *qt_st_path(const qt_st_file *f);
/* Tensors in name order (bytewise). */
size_t qt_st_count(const qt_st_file *f);
const qt_st_tensor *qt_st_at(const qt_st_file *f, size_t i);
/* NULL when absent. */
const qt_st_tensor *qt_st_find(const qt_st_file *f, const char *name);

/* `__metadata__` entries: lookup (NULL when absent) and listing in key order. */
const char *qt_st_metadata(const qt_st_file *f, const char *key);
size_t qt_st_metadata_count(const qt_st_file *f);
void qt_st_metadata_at(const qt_st_file *f, size_t i, const char **key, const char **value);

/* Bits per element of a safetensors dtype name, 0 when unknown; and the
 * qtool dtype it maps to (-1 for opaque or unknown ones). */
unsigned qt_st_dtype_bits(const char *dtype_name);
int qt_st_dtype_to_qtool(const char *dtype_name);

/* ------------------------------------------------------------ checkpoint */

/* A model's weights: `path` is a folder holding model.safetensors or
 * model.safetensors.index.json (sharded; tried second, as transformers
 * does), an index file itself, or one .safetensors file. Tensor names are
 * unique across shards; views point into the shards' mappings. */
typedef struct qt_ckpt qt_ckpt;

int qt_ckpt_open(const char *path, qt_ckpt **out);
void qt_ckpt_close(qt_ckpt *c);
/* Tensors of all shards in name order. */
size_t qt_ckpt_count(const qt_ckpt *c);
const qt_st_tensor *qt_ckpt_at(const qt_ckpt *c, size_t i);
const qt_st_tensor *qt_ckpt_find(const qt_ckpt *c, const char *name);
/* The shard files, in file-name order. */
size_t qt_ckpt_file_count(const qt_ckpt *c);
const qt_st_file *qt_ckpt_file_at(const qt_ckpt *c, size_t i);

/* ---------------------------------------------------------------- writer */

typedef struct qt_st_writer qt_st_writer;

/* NULL when out of memory (qt_last_error set). */
qt_st_writer *qt_st_writer_new(void);
void qt_st_writer_free(qt_st_writer *w);
/* Copies the tensor now (CUDA tensors through the host). QTOOL_DTYPE_PACKED
 * is written as U8 with its byte shape. Names are unique, valid UTF-8, and
 * not "__metadata__". */
int qt_st_writer_add(qt_st_writer *w, const char *name, const qtool_tensor *t);
/* Adds host bytes under any dtype the reader knows (opaque ones included);
 * `nbytes` must match the shape. Copied now. */
int qt_st_writer_add_raw(qt_st_writer *w, const char *name, const char *dtype_name, int ndim,
                         const int64_t *shape, const void *data, uint64_t nbytes);
/* Sets (or replaces) one `__metadata__` entry; both must be valid UTF-8. */
int qt_st_writer_set_metadata(qt_st_writer *w, const char *key, const char *value);
/* Writes the file atomically (temp file + fsync + rename); on any failure
 * nothing is left at `path` or beside it. Tensors are laid out by element
 * size (largest first) then name, so every tensor is aligned; the header is
 * padded with spaces to a multiple of 8 bytes. May be called again. */
int qt_st_writer_commit(qt_st_writer *w, const char *path);
/* The same file image in memory (free with free()). */
int qt_st_writer_to_memory(qt_st_writer *w, void **out, size_t *len);

#endif
