/* Tensors owned by the runtime. A qtool_tensor (sdk/include/qtool/plugin.h)
 * is the borrowed view every layer passes around; these helpers allocate
 * and convert them through the accounted allocator. */
#ifndef QT_TENSOR_H
#define QT_TENSOR_H

#include <stdint.h>

#include <qtool/plugin.h>

/* Allocates data for `t` with the given dtype/shape/device. 0 on success. */
int qt_tensor_alloc(qtool_tensor *t, int dtype, int device, int ndim, const int64_t *shape,
                    int category);
/* Frees data allocated by qt_tensor_alloc and zeroes the view. */
void qt_tensor_release(qtool_tensor *t);

size_t qt_tensor_nbytes(const qtool_tensor *t);

/* Names as safetensors writes them: "F32", "F16", "BF16", "I8", "U8",
 * "I16", "I32", "I64", "F64", "F8_E4M3". */
const char *qt_dtype_name(int dtype);
/* -1 when unknown. */
int qt_dtype_from_name(const char *name);

/* Converts `n` elements of a floating CPU buffer (F32/F16/BF16/F64) to F32. */
int qt_convert_to_f32(float *dst, const void *src, int dtype, int64_t n);
/* Converts F32 to F32/F16/BF16. */
int qt_convert_from_f32(void *dst, int dtype, const float *src, int64_t n);

/* "[896, 4864]" into buf. */
const char *qt_shape_str(const qtool_tensor *t, char *buf, size_t len);

#endif
