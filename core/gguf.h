/* GGUF container: a reader that treats every file as hostile input and a
 * writer that commits atomically. Layout (little-endian):
 *   "GGUF" u32 version, u64 n_tensors, u64 n_kv,
 *   n_kv x { string key, u32 type, value },
 *   n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset },
 *   zero padding to `general.alignment` (default 32), tensor data.
 * Strings are u64 length + bytes (no NUL). Versions 2 and 3 share this
 * layout and are both read (version 1 had 32-bit counts and is refused);
 * the writer writes version 3. Big-endian files are refused.
 *
 * Errors: every failing call returns a qtool_status and records one line
 * "<file>: <problem>" (qt_last_error). */
#ifndef QT_GGUF_H
#define QT_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

/* Value types of the key/value section. */
typedef enum qt_gguf_type {
    QT_GGUF_U8 = 0,
    QT_GGUF_I8 = 1,
    QT_GGUF_U16 = 2,
    QT_GGUF_I16 = 3,
    QT_GGUF_U32 = 4,
    QT_GGUF_I32 = 5,
    QT_GGUF_F32 = 6,
    QT_GGUF_BOOL = 7,
    QT_GGUF_STRING = 8,
    QT_GGUF_ARRAY = 9,
    QT_GGUF_U64 = 10,
    QT_GGUF_I64 = 11,
    QT_GGUF_F64 = 12,
    QT_GGUF_TYPE_COUNT
} qt_gguf_type;

/* ggml tensor types (the ids ggml and the gguf package use). */
typedef enum qt_ggml_type {
    QT_GGML_F32 = 0,
    QT_GGML_F16 = 1,
    QT_GGML_Q4_0 = 2,
    QT_GGML_Q4_1 = 3,
    QT_GGML_Q5_0 = 6,
    QT_GGML_Q5_1 = 7,
    QT_GGML_Q8_0 = 8,
    QT_GGML_Q8_1 = 9,
    QT_GGML_Q2_K = 10,
    QT_GGML_Q3_K = 11,
    QT_GGML_Q4_K = 12,
    QT_GGML_Q5_K = 13,
    QT_GGML_Q6_K = 14,
    QT_GGML_Q8_K = 15,
    QT_GGML_IQ2_XXS = 16,
    QT_GGML_IQ2_XS = 17,
    QT_GGML_IQ3_XXS = 18,
    QT_GGML_IQ1_S = 19,
    QT_GGML_IQ4_NL = 20,
    QT_GGML_IQ3_S = 21,
    QT_GGML_IQ2_S = 22,
    QT_GGML_IQ4_XS = 23,
    QT_GGML_I8 = 24,
    QT_GGML_I16 = 25,
    QT_GGML_I32 = 26,
    QT_GGML_I64 = 27,
    QT_GGML_F64 = 28,
    QT_GGML_IQ1_M = 29,
    QT_GGML_BF16 = 30,
    QT_GGML_TQ1_0 = 34,
    QT_GGML_TQ2_0 = 35,
    QT_GGML_MXFP4 = 39,
    QT_GGML_TYPE_LIMIT = 40 /* ids are < this */
} qt_ggml_type;

#define QT_GGUF_DEFAULT_ALIGNMENT 32u
#define QT_GGUF_MAX_DIMS 4
/* llama.cpp stores names in char[64] with a NUL: the writer refuses 64
 * bytes and more; the reader accepts up to 64. */
#define QT_GGUF_MAX_NAME 64
/* Sanity limits of the reader. */
#define QT_GGUF_MAX_TENSORS (1u << 20)
#define QT_GGUF_MAX_KV (1u << 20)
#define QT_GGUF_MAX_KEY_LEN 65535u
#define QT_GGUF_MAX_ARRAY_DEPTH 3 /* array of array of array */

/* Name of a ggml type ("Q4_K"), or NULL when unknown. */
const char *qt_ggml_type_name(int type);
/* Id from a name, -1 when unknown. */
int qt_ggml_type_from_name(const char *name);
/* Elements per block and bytes per block; 0 when known, -1 otherwise. */
int qt_ggml_type_block(int type, uint32_t *block_elems, uint32_t *block_bytes);
/* Bytes of a tensor of this type and shape; -1 when ne[0] is not a multiple
 * of the block size or the size overflows. */
int qt_ggml_nbytes(int type, int n_dims, const int64_t *ne, uint64_t *nbytes);
const char *qt_gguf_type_name(int type); /* "u32", "string", ... */

/* ------------------------------------------------------------- reader */

typedef struct qt_gguf qt_gguf;

typedef struct qt_gguf_tensor {
    const char *name; /* NUL-terminated, owned by the reader */
    int32_t type;     /* qt_ggml_type */
    int32_t n_dims;
    int64_t ne[QT_GGUF_MAX_DIMS]; /* ne[0] is the contiguous dimension; unused are 1 */
    uint64_t offset;              /* relative to the data section */
    uint64_t nbytes;
    const void *data; /* inside the mapping */
} qt_gguf_tensor;

/* Maps and validates a file. */
int qt_gguf_open(const char *path, qt_gguf **out);
/* Validates a buffer the caller keeps alive until qt_gguf_close; `name`
 * stands in for the path in messages. */
int qt_gguf_open_buffer(const void *data, size_t len, const char *name, qt_gguf **out);
void qt_gguf_close(qt_gguf *g);

const char *qt_gguf_path(const qt_gguf *g);
uint32_t qt_gguf_version(const qt_gguf *g);
uint32_t qt_gguf_alignment(const qt_gguf *g);
uint64_t qt_gguf_data_offset(const qt_gguf *g); /* file offset of the data section */

/* Key/value section, in file order. */
int64_t qt_gguf_n_kv(const qt_gguf *g);
const char *qt_gguf_kv_key(const qt_gguf *g, int64_t i);
int qt_gguf_kv_type(const qt_gguf *g, int64_t i);
/* Arrays: element type and count; -1 / 0 for other types. */
int qt_gguf_kv_elem_type(const qt_gguf *g, int64_t i);
uint64_t qt_gguf_kv_count(const qt_gguf *g, int64_t i);
/* Index of a key, -1 when absent. */
int64_t qt_gguf_find_key(const qt_gguf *g, const char *key);

/* Typed getters. A missing key or a different stored type gives
 * QTOOL_ERR_FORMAT ("<file>: key 'k' is u32, expected string"). */
int qt_gguf_get_u8(const qt_gguf *g, const char *key, uint8_t *out);
int qt_gguf_get_i8(const qt_gguf *g, const char *key, int8_t *out);
int qt_gguf_get_u16(const qt_gguf *g, const char *key, uint16_t *out);
int qt_gguf_get_i16(const qt_gguf *g, const char *key, int16_t *out);
int qt_gguf_get_u32(const qt_gguf *g, const char *key, uint32_t *out);
int qt_gguf_get_i32(const qt_gguf *g, const char *key, int32_t *out);
int qt_gguf_get_u64(const qt_gguf *g, const char *key, uint64_t *out);
int qt_gguf_get_i64(const qt_gguf *g, const char *key, int64_t *out);
int qt_gguf_get_f32(const qt_gguf *g, const char *key, float *out);
int qt_gguf_get_f64(const qt_gguf *g, const char *key, double *out);
int qt_gguf_get_bool(const qt_gguf *g, const char *key, int *out);
/* Any integer type that fits int64 (bool too), or any float type. */
int qt_gguf_get_int(const qt_gguf *g, const char *key, int64_t *out);
int qt_gguf_get_float(const qt_gguf *g, const char *key, double *out);
/* NUL-terminated copy owned by the reader; `len` (may be NULL) is the
 * stored length, which may exceed strlen when the value holds NULs. */
int qt_gguf_get_str(const qt_gguf *g, const char *key, const char **s, uint64_t *len);

/* Arrays. qt_gguf_get_arr gives the element type and count. Elements of
 * numeric arrays are read one at a time (converted as by get_int /
 * get_float) or copied out in bulk; string elements are views into the
 * mapping (not NUL-terminated). Nested arrays are validated but their
 * elements are not reachable through this API. */
int qt_gguf_get_arr(const qt_gguf *g, const char *key, int *elem_type, uint64_t *n);
int qt_gguf_arr_int(const qt_gguf *g, const char *key, uint64_t i, int64_t *out);
int qt_gguf_arr_float(const qt_gguf *g, const char *key, uint64_t i, double *out);
int qt_gguf_arr_str(const qt_gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len);
/* Copies the raw little-endian elements of a numeric array whose element
 * type is `elem_type` into dst (n x element size bytes). */
int qt_gguf_arr_copy(const qt_gguf *g, const char *key, int elem_type, void *dst, size_t dst_bytes);

/* Tensors, in file order. */
int64_t qt_gguf_n_tensors(const qt_gguf *g);
const qt_gguf_tensor *qt_gguf_tensor_at(const qt_gguf *g, int64_t i);
const qt_gguf_tensor *qt_gguf_find_tensor(const qt_gguf *g, const char *name);

/* ------------------------------------------------------------- writer */

typedef struct qt_gguf_writer qt_gguf_writer;

qt_gguf_writer *qt_gguf_writer_new(void);
void qt_gguf_writer_free(qt_gguf_writer *w);

/* Keys are unique; a duplicate is an error. Setting `general.alignment`
 * (u32, a power of two) changes the alignment of the data section. */
int qt_gguf_add_u8(qt_gguf_writer *w, const char *key, uint8_t v);
int qt_gguf_add_i8(qt_gguf_writer *w, const char *key, int8_t v);
int qt_gguf_add_u16(qt_gguf_writer *w, const char *key, uint16_t v);
int qt_gguf_add_i16(qt_gguf_writer *w, const char *key, int16_t v);
int qt_gguf_add_u32(qt_gguf_writer *w, const char *key, uint32_t v);
int qt_gguf_add_i32(qt_gguf_writer *w, const char *key, int32_t v);
int qt_gguf_add_u64(qt_gguf_writer *w, const char *key, uint64_t v);
int qt_gguf_add_i64(qt_gguf_writer *w, const char *key, int64_t v);
int qt_gguf_add_f32(qt_gguf_writer *w, const char *key, float v);
int qt_gguf_add_f64(qt_gguf_writer *w, const char *key, double v);
int qt_gguf_add_bool(qt_gguf_writer *w, const char *key, int v);
int qt_gguf_add_str(qt_gguf_writer *w, const char *key, const char *v);
/* Numeric array: `data` holds n elements of `elem_type` in host order. */
int qt_gguf_add_arr(qt_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n);
int qt_gguf_add_arr_str(qt_gguf_writer *w, const char *key, const char *const *strs, uint64_t n);

/* Adds a tensor; `data` (nbytes, which must match type and shape) is
 * borrowed until qt_gguf_write returns. */
int qt_gguf_add_tensor(qt_gguf_writer *w, const char *name, int ggml_type, int n_dims,
                       const int64_t *ne, const void *data, uint64_t nbytes);

/* Writes the file atomically (temp file + rename): nobody sees a partial file. */
int qt_gguf_write(qt_gguf_writer *w, const char *path);

#endif
