/* Helper for the GGUF reference tests (test_gguf_reference.py):
 *   gguf_tool quant TYPE ROWS COLS IN.f32 OUT.gguf [IMATRIX.f32]
 *       quantizes a raw float32 matrix row by row with the plugin's
 *       quantizer (with COLS importance weights: the imatrix quantizer);
 *       writes tensor "w" (TYPE) and "deq" (F32, our dequantization of w).
 *   gguf_tool dump FILE      prints the file as JSON (keys, values, tensors)
 *   gguf_tool write FILE     writes a file with every key type and array
 *                            kind through the writer
 * Errors print one line and exit 1. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "gguf.h"
#include "gguf_quants.h"

static int fail(void)
{
    fprintf(stderr, "%s\n", qt_last_error());
    return 1;
}

static int cmd_quant(char **argv, const char *imatrix_path)
{
    const int type = qt_ggml_type_from_name(argv[0]);
    const gq_type *t = gq_type_traits(type);
    const long rows = atol(argv[1]), cols = atol(argv[2]);
    if (!t || !t->dequantize || rows < 1 || cols < 1 || cols % t->block) {
        fprintf(stderr, "gguf_tool quant: bad type or shape\n");
        return 2;
    }
    char *raw;
    size_t len;
    if (qt_read_file(argv[3], (size_t)rows * (size_t)cols * 4 + 1, &raw, &len)) return fail();
    if (len != (size_t)rows * (size_t)cols * 4) {
        fprintf(stderr, "%s: expected %ld x %ld floats\n", argv[3], rows, cols);
        free(raw);
        return 1;
    }
    float *qw = NULL;
    if (imatrix_path) {
        char *qraw;
        size_t qlen;
        if (qt_read_file(imatrix_path, (size_t)cols * 4 + 1, &qraw, &qlen)) {
            free(raw);
            return fail();
        }
        if (qlen != (size_t)cols * 4) {
            fprintf(stderr, "%s: expected %ld floats\n", imatrix_path, cols);
            free(qraw);
            free(raw);
            return 1;
        }
        qw = (float *)qraw;
    }
    const size_t rb = gq_row_size(type, cols);
    uint8_t *q = malloc(rb * (size_t)rows);
    float *deq = malloc((size_t)rows * (size_t)cols * 4);
    const float *x = (const float *)raw;
    for (long r = 0; r < rows; r++) {
        if (qw) t->quantize_imatrix(x + r * cols, q + (size_t)r * rb, cols, qw);
        else t->quantize(x + r * cols, q + (size_t)r * rb, cols);
        t->dequantize(q + (size_t)r * rb, deq + r * cols, cols);
    }
    qt_gguf_writer *w = qt_gguf_writer_new();
    const int64_t ne[2] = {cols, rows};
    int rc = qt_gguf_add_str(w, "general.architecture", "test") || qt_gguf_add_u32(w, "general.quantization_version", 2) ||
             qt_gguf_add_tensor(w, "w", type, 2, ne, q, rb * (size_t)rows) ||
             qt_gguf_add_tensor(w, "deq", QT_GGML_F32, 2, ne, deq, (uint64_t)rows * (uint64_t)cols * 4) ||
             qt_gguf_write(w, argv[4]);
    qt_gguf_writer_free(w);
    free(q);
    free(deq);
    free(raw);
    free(qw);
    return rc ? fail() : 0;
}

/* JSON of one scalar at p. */
static json_t *scalar_json(int type, const void *p)
{
    switch (type) {
    case QT_GGUF_U8: return json_integer(*(const uint8_t *)p);
    case QT_GGUF_I8: return json_integer(*(const int8_t *)p);
    case QT_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); return json_integer(v); }
    case QT_GGUF_I16: { int16_t v; memcpy(&v, p, 2); return json_integer(v); }
    case QT_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); return json_integer(v); }
    case QT_GGUF_I32: { int32_t v; memcpy(&v, p, 4); return json_integer(v); }
    case QT_GGUF_U64: { uint64_t v; memcpy(&v, p, 8); char b[32]; snprintf(b, sizeof b, "%llu", (unsigned long long)v); return json_string(b); }
    case QT_GGUF_I64: { int64_t v; memcpy(&v, p, 8); return json_integer(v); }
    case QT_GGUF_F32: { float v; memcpy(&v, p, 4); return json_real(v); }
    case QT_GGUF_F64: { double v; memcpy(&v, p, 8); return json_real(v); }
    case QT_GGUF_BOOL: return json_boolean(*(const uint8_t *)p);
    default: return json_null();
    }
}

static size_t scalar_size(int type)
{
    switch (type) {
    case QT_GGUF_U8: case QT_GGUF_I8: case QT_GGUF_BOOL: return 1;
    case QT_GGUF_U16: case QT_GGUF_I16: return 2;
    case QT_GGUF_U32: case QT_GGUF_I32: case QT_GGUF_F32: return 4;
    default: return 8;
    }
}

static json_t *str_json(const char *s, uint64_t n)
{
    json_t *j = json_stringn(s, n);
    return j ? j : json_string("<not utf-8>");
}

static int cmd_dump(const char *path)
{
    qt_gguf *g;
    if (qt_gguf_open(path, &g)) return fail();
    json_t *root = json_object(), *kvs = json_array(), *ts = json_array();
    json_object_set_new(root, "version", json_integer(qt_gguf_version(g)));
    json_object_set_new(root, "alignment", json_integer(qt_gguf_alignment(g)));
    json_object_set_new(root, "data_offset", json_integer((json_int_t)qt_gguf_data_offset(g)));
    for (int64_t i = 0; i < qt_gguf_n_kv(g); i++) {
        const char *key = qt_gguf_kv_key(g, i);
        const int type = qt_gguf_kv_type(g, i);
        json_t *kv = json_object(), *val;
        json_object_set_new(kv, "key", json_string(key));
        json_object_set_new(kv, "type", json_string(qt_gguf_type_name(type)));
        if (type == QT_GGUF_STRING) {
            const char *s;
            uint64_t n;
            qt_gguf_get_str(g, key, &s, &n);
            val = str_json(s, n);
        } else if (type == QT_GGUF_ARRAY) {
            int et;
            uint64_t n;
            qt_gguf_get_arr(g, key, &et, &n);
            json_object_set_new(kv, "elem_type", json_string(qt_gguf_type_name(et)));
            val = json_array();
            if (et == QT_GGUF_STRING) {
                for (uint64_t j = 0; j < n; j++) {
                    const char *s;
                    uint64_t sl;
                    qt_gguf_arr_str(g, key, j, &s, &sl);
                    json_array_append_new(val, str_json(s, sl));
                }
            } else if (et == QT_GGUF_ARRAY) {
                json_decref(val);
                val = json_integer((json_int_t)n); /* nested: the count only */
            } else {
                uint8_t *buf = malloc(n * scalar_size(et) + 1);
                qt_gguf_arr_copy(g, key, et, buf, n * scalar_size(et) + 1);
                for (uint64_t j = 0; j < n; j++) json_array_append_new(val, scalar_json(et, buf + j * scalar_size(et)));
                free(buf);
            }
        } else {
            uint8_t buf[8];
            int rc = 0;
            switch (type) {
            case QT_GGUF_U8: rc = qt_gguf_get_u8(g, key, (uint8_t *)buf); break;
            case QT_GGUF_I8: rc = qt_gguf_get_i8(g, key, (int8_t *)buf); break;
            case QT_GGUF_U16: rc = qt_gguf_get_u16(g, key, (uint16_t *)(void *)buf); break;
            case QT_GGUF_I16: rc = qt_gguf_get_i16(g, key, (int16_t *)(void *)buf); break;
            case QT_GGUF_U32: rc = qt_gguf_get_u32(g, key, (uint32_t *)(void *)buf); break;
            case QT_GGUF_I32: rc = qt_gguf_get_i32(g, key, (int32_t *)(void *)buf); break;
            case QT_GGUF_U64: rc = qt_gguf_get_u64(g, key, (uint64_t *)(void *)buf); break;
            case QT_GGUF_I64: rc = qt_gguf_get_i64(g, key, (int64_t *)(void *)buf); break;
            case QT_GGUF_F32: rc = qt_gguf_get_f32(g, key, (float *)(void *)buf); break;
            case QT_GGUF_F64: rc = qt_gguf_get_f64(g, key, (double *)(void *)buf); break;
            case QT_GGUF_BOOL: { int b; rc = qt_gguf_get_bool(g, key, &b); buf[0] = (uint8_t)b; break; }
            }
            if (rc) return fail();
            val = scalar_json(type, buf);
        }
        json_object_set_new(kv, "value", val);
        json_array_append_new(kvs, kv);
    }
    for (int64_t i = 0; i < qt_gguf_n_tensors(g); i++) {
        const qt_gguf_tensor *t = qt_gguf_tensor_at(g, i);
        json_t *o = json_object(), *ne = json_array();
        for (int d = 0; d < t->n_dims; d++) json_array_append_new(ne, json_integer(t->ne[d]));
        json_object_set_new(o, "name", json_string(t->name));
        json_object_set_new(o, "type", json_string(qt_ggml_type_name(t->type)));
        json_object_set_new(o, "ne", ne);
        json_object_set_new(o, "offset", json_integer((json_int_t)t->offset));
        json_object_set_new(o, "nbytes", json_integer((json_int_t)t->nbytes));
        /* FNV-1a of the data, so the caller can compare contents. */
        uint64_t h = 1469598103934665603ull;
        for (uint64_t j = 0; j < t->nbytes; j++) h = (h ^ ((const uint8_t *)t->data)[j]) * 1099511628211ull;
        char hb[24];
        snprintf(hb, sizeof hb, "%016llx", (unsigned long long)h);
        json_object_set_new(o, "fnv1a", json_string(hb));
        json_array_append_new(ts, o);
    }
    json_object_set_new(root, "kv", kvs);
    json_object_set_new(root, "tensors", ts);
    char *s = json_dumps(root, JSON_INDENT(1) | JSON_REAL_PRECISION(17));
    puts(s);
    free(s);
    json_decref(root);
    qt_gguf_close(g);
    return 0;
}

static int cmd_write(const char *path)
{
    static const uint8_t a_u8[] = {0, 1, 255};
    static const int8_t a_i8[] = {-128, 0, 127};
    static const uint16_t a_u16[] = {0, 65535};
    static const int16_t a_i16[] = {-32768, 32767};
    static const uint32_t a_u32[] = {0, 4294967295u};
    static const int32_t a_i32[] = {-2147483647 - 1, 2147483647};
    static const uint64_t a_u64[] = {0, 18446744073709551615ull};
    static const int64_t a_i64[] = {-9223372036854775807ll - 1, 9223372036854775807ll};
    static const float a_f32[] = {-1.5f, 3.25f};
    static const double a_f64[] = {-1e300, 0.1};
    static const uint8_t a_bool[] = {1, 0, 1};
    static const char *const a_str[] = {"alpha", "", "\xc3\xa9t\xc3\xa9"};
    static float t0[6] = {1, 2, 3, 4, 5, 6};
    static uint16_t t1[64];
    for (int i = 0; i < 64; i++) t1[i] = qtool_f32_to_f16((float)i / 8);
    qt_gguf_writer *w = qt_gguf_writer_new();
    const int64_t ne0[2] = {3, 2}, ne1[3] = {4, 4, 4};
    int rc = qt_gguf_add_u32(w, "general.alignment", 64) || qt_gguf_add_u8(w, "t.u8", 200) ||
             qt_gguf_add_i8(w, "t.i8", -100) || qt_gguf_add_u16(w, "t.u16", 60000) || qt_gguf_add_i16(w, "t.i16", -30000) ||
             qt_gguf_add_u32(w, "t.u32", 4000000000u) || qt_gguf_add_i32(w, "t.i32", -2000000000) ||
             qt_gguf_add_u64(w, "t.u64", 10000000000000000000ull) || qt_gguf_add_i64(w, "t.i64", -5000000000000ll) ||
             qt_gguf_add_f32(w, "t.f32", 0.15625f) || qt_gguf_add_f64(w, "t.f64", 2.718281828459045) ||
             qt_gguf_add_bool(w, "t.bool", 1) || qt_gguf_add_str(w, "t.str", "h\xc3\xa9llo") ||
             qt_gguf_add_arr(w, "a.u8", QT_GGUF_U8, a_u8, 3) || qt_gguf_add_arr(w, "a.i8", QT_GGUF_I8, a_i8, 3) ||
             qt_gguf_add_arr(w, "a.u16", QT_GGUF_U16, a_u16, 2) || qt_gguf_add_arr(w, "a.i16", QT_GGUF_I16, a_i16, 2) ||
             qt_gguf_add_arr(w, "a.u32", QT_GGUF_U32, a_u32, 2) || qt_gguf_add_arr(w, "a.i32", QT_GGUF_I32, a_i32, 2) ||
             qt_gguf_add_arr(w, "a.u64", QT_GGUF_U64, a_u64, 2) || qt_gguf_add_arr(w, "a.i64", QT_GGUF_I64, a_i64, 2) ||
             qt_gguf_add_arr(w, "a.f32", QT_GGUF_F32, a_f32, 2) || qt_gguf_add_arr(w, "a.f64", QT_GGUF_F64, a_f64, 2) ||
             qt_gguf_add_arr(w, "a.bool", QT_GGUF_BOOL, a_bool, 3) || qt_gguf_add_arr_str(w, "a.str", a_str, 3) ||
             qt_gguf_add_arr(w, "a.empty", QT_GGUF_I32, NULL, 0) ||
             qt_gguf_add_tensor(w, "t0", QT_GGML_F32, 2, ne0, t0, sizeof t0) ||
             qt_gguf_add_tensor(w, "blk.0.t1", QT_GGML_F16, 3, ne1, t1, sizeof t1) || qt_gguf_write(w, path);
    qt_gguf_writer_free(w);
    return rc ? fail() : 0;
}

int main(int argc, char **argv)
{
    if ((argc == 7 || argc == 8) && strcmp(argv[1], "quant") == 0) return cmd_quant(argv + 2, argc == 8 ? argv[7] : NULL);
    if (argc == 3 && strcmp(argv[1], "dump") == 0) return cmd_dump(argv[2]);
    if (argc == 3 && strcmp(argv[1], "write") == 0) return cmd_write(argv[2]);
    fprintf(stderr, "usage: gguf_tool quant TYPE ROWS COLS IN.f32 OUT.gguf [IMATRIX.f32] | dump FILE | write FILE\n");
    return 2;
}
