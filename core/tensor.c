#include "tensor.h"

#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "error.h"

static const char *const dtype_names[QTOOL_DTYPE_COUNT] = {
    [QTOOL_DTYPE_F32] = "F32", [QTOOL_DTYPE_F16] = "F16",   [QTOOL_DTYPE_BF16] = "BF16",
    [QTOOL_DTYPE_I8] = "I8",   [QTOOL_DTYPE_U8] = "U8",     [QTOOL_DTYPE_I32] = "I32",
    [QTOOL_DTYPE_I64] = "I64", [QTOOL_DTYPE_F64] = "F64",   [QTOOL_DTYPE_F8_E4M3] = "F8_E4M3",
    [QTOOL_DTYPE_I16] = "I16", [QTOOL_DTYPE_PACKED] = "PACKED"};

const char *qt_dtype_name(int dtype)
{
    return dtype >= 0 && dtype < QTOOL_DTYPE_COUNT && dtype_names[dtype] ? dtype_names[dtype] : "?";
}

int qt_dtype_from_name(const char *name)
{
    for (int i = 0; i < QTOOL_DTYPE_COUNT; i++)
        if (dtype_names[i] && i != QTOOL_DTYPE_PACKED && strcmp(dtype_names[i], name) == 0) return i;
    return -1;
}

size_t qt_tensor_nbytes(const qtool_tensor *t)
{
    return (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype);
}

int qt_tensor_alloc(qtool_tensor *t, int dtype, int device, int ndim, const int64_t *shape,
                    int category)
{
    memset(t, 0, sizeof *t);
    if (ndim < 0 || ndim > QTOOL_MAX_DIMS || qtool_dtype_size(dtype) == 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tensor with %d dims and dtype %d", ndim, dtype);
    uint64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && n > (UINT64_MAX >> 4) / (uint64_t)shape[i]))
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tensor dimension %d out of range", i);
        t->shape[i] = shape[i];
        n *= (uint64_t)shape[i];
    }
    t->dtype = dtype;
    t->device = device;
    t->ndim = ndim;
    t->data = qt_alloc(device, (size_t)n * qtool_dtype_size(dtype), category);
    return t->data ? 0 : QTOOL_ERR_OUT_OF_MEMORY;
}

void qt_tensor_release(qtool_tensor *t)
{
    if (t->data) qt_free(t->device, t->data);
    memset(t, 0, sizeof *t);
}

int qt_convert_to_f32(float *dst, const void *src, int dtype, int64_t n)
{
    switch (dtype) {
    case QTOOL_DTYPE_F32: memmove(dst, src, (size_t)n * 4); return 0;
    case QTOOL_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qtool_f16_to_f32(s[i]);
        return 0;
    }
    case QTOOL_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qtool_bf16_to_f32(s[i]);
        return 0;
    }
    case QTOOL_DTYPE_F64: {
        const double *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
        return 0;
    }
    default:
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "cannot convert %s to F32", qt_dtype_name(dtype));
    }
}

int qt_convert_from_f32(void *dst, int dtype, const float *src, int64_t n)
{
    switch (dtype) {
    case QTOOL_DTYPE_F32: memmove(dst, src, (size_t)n * 4); return 0;
    case QTOOL_DTYPE_F16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = qtool_f32_to_f16(src[i]);
        return 0;
    }
    case QTOOL_DTYPE_BF16: {
        uint16_t *d = dst;
        for (int64_t i = 0; i < n; i++) d[i] = qtool_f32_to_bf16(src[i]);
        return 0;
    }
    default:
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "cannot convert F32 to %s", qt_dtype_name(dtype));
    }
}

const char *qt_shape_str(const qtool_tensor *t, char *buf, size_t len)
{
    size_t o = 0;
    o += (size_t)snprintf(buf + o, len - o, "[");
    for (int i = 0; i < t->ndim && o < len; i++)
        o += (size_t)snprintf(buf + o, len - o, i ? ", %lld" : "%lld", (long long)t->shape[i]);
    if (o < len) snprintf(buf + o, len - o, "]");
    return buf;
}
