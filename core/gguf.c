#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader and writer assume a little-endian host"
#endif

#define FMT QTOOL_ERR_FORMAT

/* ------------------------------------------------------------ type tables */

typedef struct ggml_type_traits {
    const char *name;
    uint32_t block_elems, block_bytes;
} ggml_type_traits;

static const ggml_type_traits ggml_types[QT_GGML_TYPE_LIMIT] = {
    [QT_GGML_F32] = {"F32", 1, 4},
    [QT_GGML_F16] = {"F16", 1, 2},
    [QT_GGML_Q4_0] = {"Q4_0", 32, 18},
    [QT_GGML_Q4_1] = {"Q4_1", 32, 20},
    [QT_GGML_Q5_0] = {"Q5_0", 32, 22},
    [QT_GGML_Q5_1] = {"Q5_1", 32, 24},
    [QT_GGML_Q8_0] = {"Q8_0", 32, 34},
    [QT_GGML_Q8_1] = {"Q8_1", 32, 36},
    [QT_GGML_Q2_K] = {"Q2_K", 256, 84},
    [QT_GGML_Q3_K] = {"Q3_K", 256, 110},
    [QT_GGML_Q4_K] = {"Q4_K", 256, 144},
    [QT_GGML_Q5_K] = {"Q5_K", 256, 176},
    [QT_GGML_Q6_K] = {"Q6_K", 256, 210},
    [QT_GGML_Q8_K] = {"Q8_K", 256, 292},
    [QT_GGML_IQ2_XXS] = {"IQ2_XXS", 256, 66},
    [QT_GGML_IQ2_XS] = {"IQ2_XS", 256, 74},
    [QT_GGML_IQ3_XXS] = {"IQ3_XXS", 256, 98},
    [QT_GGML_IQ1_S] = {"IQ1_S", 256, 50},
    [QT_GGML_IQ4_NL] = {"IQ4_NL", 32, 18},
    [QT_GGML_IQ3_S] = {"IQ3_S", 256, 110},
    [QT_GGML_IQ2_S] = {"IQ2_S", 256, 82},
    [QT_GGML_IQ4_XS] = {"IQ4_XS", 256, 136},
    [QT_GGML_I8] = {"I8", 1, 1},
    [QT_GGML_I16] = {"I16", 1, 2},
    [QT_GGML_I32] = {"I32", 1, 4},
    [QT_GGML_I64] = {"I64", 1, 8},
    [QT_GGML_F64] = {"F64", 1, 8},
    [QT_GGML_IQ1_M] = {"IQ1_M", 256, 56},
    [QT_GGML_BF16] = {"BF16", 1, 2},
    [QT_GGML_TQ1_0] = {"TQ1_0", 256, 54},
    [QT_GGML_TQ2_0] = {"TQ2_0", 256, 66},
    [QT_GGML_MXFP4] = {"MXFP4", 32, 17},
};

const char *qt_ggml_type_name(int type)
{
    if (type < 0 || type >= QT_GGML_TYPE_LIMIT) return NULL;
    return ggml_types[type].name;
}

int qt_ggml_type_from_name(const char *name)
{
    for (int t = 0; t < QT_GGML_TYPE_LIMIT; t++)
        if (ggml_types[t].name && strcmp(ggml_types[t].name, name) == 0) return t;
    return -1;
}

int qt_ggml_type_block(int type, uint32_t *block_elems, uint32_t *block_bytes)
{
    if (!qt_ggml_type_name(type)) return -1;
    if (block_elems) *block_elems = ggml_types[type].block_elems;
    if (block_bytes) *block_bytes = ggml_types[type].block_bytes;
    return 0;
}

int qt_ggml_nbytes(int type, int n_dims, const int64_t *ne, uint64_t *nbytes)
{
    uint32_t be, bb;
    if (qt_ggml_type_block(type, &be, &bb) || n_dims < 1 || n_dims > QT_GGUF_MAX_DIMS) return -1;
    if (ne[0] <= 0 || ne[0] % be) return -1;
    uint64_t total = (uint64_t)(ne[0] / be);
    if (__builtin_mul_overflow(total, (uint64_t)bb, &total)) return -1;
    for (int i = 1; i < n_dims; i++) {
        if (ne[i] <= 0 || __builtin_mul_overflow(total, (uint64_t)ne[i], &total)) return -1;
    }
    if (total > (uint64_t)INT64_MAX) return -1;
    *nbytes = total;
    return 0;
}

static const char *const gguf_type_names[QT_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64"};

const char *qt_gguf_type_name(int type)
{
    if (type < 0 || type >= QT_GGUF_TYPE_COUNT) return "invalid";
    return gguf_type_names[type];
}

/* Size of a fixed-size value type; 0 for string and array. */
static size_t gguf_type_size(int type)
{
    switch (type) {
    case QT_GGUF_U8: case QT_GGUF_I8: case QT_GGUF_BOOL: return 1;
    case QT_GGUF_U16: case QT_GGUF_I16: return 2;
    case QT_GGUF_U32: case QT_GGUF_I32: case QT_GGUF_F32: return 4;
    case QT_GGUF_U64: case QT_GGUF_I64: case QT_GGUF_F64: return 8;
    default: return 0;
    }
}

/* ------------------------------------------------------------- reader */

typedef struct gguf_kv {
    char *key;
    int32_t type;
    int32_t elem_type; /* arrays */
    uint64_t n;        /* arrays: count; strings: length */
    uint64_t off;      /* file offset: the value, or the first array element */
    uint64_t *str_off; /* string arrays: offset of each element's length */
    char *str;         /* string values: NUL-terminated copy */
} gguf_kv;

struct qt_gguf {
    char *path;
    const uint8_t *base;
    size_t size;
    int mapped;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    int64_t n_kv;
    gguf_kv *kv;
    int64_t n_tensors;
    qt_gguf_tensor *tensors;
    qt_gguf_tensor **by_name; /* sorted by name */
};

typedef struct cursor {
    const qt_gguf *g;
    size_t pos;
} cursor;

static size_t remaining(const cursor *c) { return c->g->size - c->pos; }

static int need(cursor *c, uint64_t n, const char *what)
{
    if (n > remaining(c))
        return qt_fail(FMT, "%s: truncated: %s needs %llu bytes at offset %zu, file has %zu",
                       c->g->path, what, (unsigned long long)n, c->pos, c->g->size);
    return 0;
}

static int rd_u32(cursor *c, uint32_t *v, const char *what)
{
    if (need(c, 4, what)) return FMT;
    memcpy(v, c->g->base + c->pos, 4);
    c->pos += 4;
    return 0;
}

static int rd_u64(cursor *c, uint64_t *v, const char *what)
{
    if (need(c, 8, what)) return FMT;
    memcpy(v, c->g->base + c->pos, 8);
    c->pos += 8;
    return 0;
}

/* Reads a string header and checks the bytes are within the file and below
 * `max_len`; leaves the cursor after the bytes. */
static int rd_str(cursor *c, uint64_t max_len, const char *what, uint64_t *off, uint64_t *len)
{
    if (rd_u64(c, len, what)) return FMT;
    if (*len > max_len)
        return qt_fail(FMT, "%s: %s length %llu at offset %zu exceeds the limit %llu", c->g->path, what,
                       (unsigned long long)*len, c->pos - 8, (unsigned long long)max_len);
    if (*len > remaining(c))
        return qt_fail(FMT, "%s: %s length %llu at offset %zu runs past the end of the file", c->g->path,
                       what, (unsigned long long)*len, c->pos - 8);
    *off = c->pos;
    c->pos += *len;
    return 0;
}

static char *dup_bytes(const uint8_t *p, uint64_t n)
{
    char *s = malloc(n + 1);
    if (!s) return NULL;
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

/* Validates one value of `type` (arrays recursively, up to the depth limit).
 * For top-level values `kv` receives what the getters need. */
static int parse_value(cursor *c, int type, int depth, const char *key, gguf_kv *kv)
{
    const qt_gguf *g = c->g;
    size_t fixed = gguf_type_size(type);
    if (fixed) {
        if (need(c, fixed, "value")) return FMT;
        if (type == QT_GGUF_BOOL && g->base[c->pos] > 1)
            return qt_fail(FMT, "%s: key '%s': bool value %u is not 0 or 1", g->path, key, g->base[c->pos]);
        if (kv) kv->off = c->pos;
        c->pos += fixed;
        return 0;
    }
    if (type == QT_GGUF_STRING) {
        uint64_t off, len;
        if (rd_str(c, UINT64_MAX, "string value", &off, &len)) return FMT;
        if (kv) {
            kv->off = off;
            kv->n = len;
            if (!(kv->str = dup_bytes(g->base + off, len))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        }
        return 0;
    }
    /* array */
    if (depth >= QT_GGUF_MAX_ARRAY_DEPTH)
        return qt_fail(FMT, "%s: key '%s': arrays nested deeper than %d", g->path, key, QT_GGUF_MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t n;
    if (rd_u32(c, &et, "array element type") || rd_u64(c, &n, "array length")) return FMT;
    if (et >= QT_GGUF_TYPE_COUNT)
        return qt_fail(FMT, "%s: key '%s': unknown array element type %u", g->path, key, et);
    /* Every element takes at least this many bytes: bounds the count (and
     * any allocation) by the file size before looping. */
    uint64_t min_size = et == QT_GGUF_STRING ? 8 : et == QT_GGUF_ARRAY ? 12 : gguf_type_size(et);
    if (n > remaining(c) / min_size)
        return qt_fail(FMT, "%s: key '%s': array of %llu %s elements does not fit in the file", g->path, key,
                       (unsigned long long)n, qt_gguf_type_name((int)et));
    if (kv) {
        kv->elem_type = (int32_t)et;
        kv->n = n;
        kv->off = c->pos;
    }
    if (gguf_type_size(et)) {
        if (et == QT_GGUF_BOOL) {
            for (uint64_t i = 0; i < n; i++)
                if (g->base[c->pos + i] > 1)
                    return qt_fail(FMT, "%s: key '%s': bool element %llu is %u, not 0 or 1", g->path, key,
                                   (unsigned long long)i, g->base[c->pos + i]);
        }
        c->pos += n * gguf_type_size(et);
        return 0;
    }
    if (et == QT_GGUF_STRING) {
        if (kv && n && !(kv->str_off = malloc(n * sizeof *kv->str_off)))
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        for (uint64_t i = 0; i < n; i++) {
            uint64_t off, len;
            if (kv) kv->str_off[i] = c->pos;
            if (rd_str(c, UINT64_MAX, "string array element", &off, &len)) return FMT;
        }
        return 0;
    }
    for (uint64_t i = 0; i < n; i++)
        if (parse_value(c, QT_GGUF_ARRAY, depth + 1, key, NULL)) return FMT;
    return 0;
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp((*(qt_gguf_tensor *const *)a)->name, (*(qt_gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    uint64_t x = (*(qt_gguf_tensor *const *)a)->offset, y = (*(qt_gguf_tensor *const *)b)->offset;
    return x < y ? -1 : x > y;
}

static int parse_kvs(qt_gguf *g, cursor *c)
{
    for (int64_t i = 0; i < g->n_kv; i++) {
        gguf_kv *kv = &g->kv[i];
        uint64_t off, len;
        if (rd_str(c, QT_GGUF_MAX_KEY_LEN, "key", &off, &len)) return FMT;
        if (len == 0) return qt_fail(FMT, "%s: key %lld is empty", g->path, (long long)i);
        if (memchr(g->base + off, 0, len))
            return qt_fail(FMT, "%s: key %lld contains a NUL byte", g->path, (long long)i);
        if (!(kv->key = dup_bytes(g->base + off, len))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        uint32_t type;
        if (rd_u32(c, &type, "value type")) return FMT;
        if (type >= QT_GGUF_TYPE_COUNT)
            return qt_fail(FMT, "%s: key '%s' has unknown value type %u", g->path, kv->key, type);
        kv->type = (int32_t)type;
        kv->elem_type = -1;
        if (parse_value(c, (int)type, 0, kv->key, kv)) return FMT;
    }
    if (g->n_kv > 1) {
        char **keys = malloc((size_t)g->n_kv * sizeof *keys);
        if (!keys) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        for (int64_t i = 0; i < g->n_kv; i++) keys[i] = g->kv[i].key;
        qsort(keys, (size_t)g->n_kv, sizeof *keys, cmp_str_ptr);
        for (int64_t i = 1; i < g->n_kv; i++) {
            if (strcmp(keys[i - 1], keys[i]) == 0) {
                int rc = qt_fail(FMT, "%s: duplicate key '%s'", g->path, keys[i]);
                free(keys);
                return rc;
            }
        }
        free(keys);
    }
    int64_t ai = qt_gguf_find_key(g, "general.alignment");
    if (ai >= 0) {
        if (g->kv[ai].type != QT_GGUF_U32)
            return qt_fail(FMT, "%s: general.alignment is %s, expected u32", g->path,
                           qt_gguf_type_name(g->kv[ai].type));
        uint32_t a;
        memcpy(&a, g->base + g->kv[ai].off, 4);
        if (a == 0 || (a & (a - 1)) || a > (1u << 30))
            return qt_fail(FMT, "%s: general.alignment %u is not a power of two up to 2^30", g->path, a);
        g->alignment = a;
    }
    return 0;
}

static int parse_tensors(qt_gguf *g, cursor *c)
{
    for (int64_t i = 0; i < g->n_tensors; i++) {
        qt_gguf_tensor *t = &g->tensors[i];
        uint64_t off, len;
        if (rd_str(c, QT_GGUF_MAX_NAME, "tensor name", &off, &len)) return FMT;
        if (len == 0) return qt_fail(FMT, "%s: tensor %lld has an empty name", g->path, (long long)i);
        if (memchr(g->base + off, 0, len))
            return qt_fail(FMT, "%s: tensor %lld name contains a NUL byte", g->path, (long long)i);
        char *name = dup_bytes(g->base + off, len);
        if (!name) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        t->name = name;
        uint32_t n_dims;
        if (rd_u32(c, &n_dims, "tensor n_dims")) return FMT;
        if (n_dims < 1 || n_dims > QT_GGUF_MAX_DIMS)
            return qt_fail(FMT, "%s: tensor '%s' has %u dimensions (1 to %d allowed)", g->path, name, n_dims,
                           QT_GGUF_MAX_DIMS);
        t->n_dims = (int32_t)n_dims;
        for (int d = 0; d < QT_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            uint64_t v;
            if (rd_u64(c, &v, "tensor dimension")) return FMT;
            if (v == 0 || v > (uint64_t)INT64_MAX)
                return qt_fail(FMT, "%s: tensor '%s' dimension %u is %llu", g->path, name, d, (unsigned long long)v);
            t->ne[d] = (int64_t)v;
        }
        uint32_t type;
        if (rd_u32(c, &type, "tensor type")) return FMT;
        uint32_t be;
        if (qt_ggml_type_block((int)type, &be, NULL))
            return qt_fail(FMT, "%s: tensor '%s' has unknown ggml type %u", g->path, name, type);
        t->type = (int32_t)type;
        int64_t nel = 1;
        for (uint32_t d = 0; d < n_dims; d++) {
            if (__builtin_mul_overflow(nel, t->ne[d], &nel))
                return qt_fail(FMT, "%s: tensor '%s' element count overflows", g->path, name);
        }
        if (t->ne[0] % be)
            return qt_fail(FMT, "%s: tensor '%s': ne[0] = %lld is not a multiple of the %s block size %u", g->path,
                           name, (long long)t->ne[0], qt_ggml_type_name((int)type), be);
        if (qt_ggml_nbytes((int)type, (int)n_dims, t->ne, &t->nbytes))
            return qt_fail(FMT, "%s: tensor '%s' size overflows", g->path, name);
        if (rd_u64(c, &t->offset, "tensor offset")) return FMT;
        if (t->offset % g->alignment)
            return qt_fail(FMT, "%s: tensor '%s' offset %llu is not a multiple of the alignment %u", g->path, name,
                           (unsigned long long)t->offset, g->alignment);
    }
    uint64_t pad = (g->alignment - c->pos % g->alignment) % g->alignment;
    g->data_offset = c->pos + pad;
    if (g->n_tensors == 0) return 0;
    if (g->data_offset > g->size)
        return qt_fail(FMT, "%s: truncated: data section starts at %llu, file has %zu bytes", g->path,
                       (unsigned long long)g->data_offset, g->size);
    uint64_t data_size = g->size - g->data_offset;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        qt_gguf_tensor *t = &g->tensors[i];
        if (t->offset > data_size || t->nbytes > data_size - t->offset)
            return qt_fail(FMT, "%s: tensor '%s' data (%llu bytes at offset %llu) runs past the end of the file",
                           g->path, t->name, (unsigned long long)t->nbytes, (unsigned long long)t->offset);
        t->data = g->base + g->data_offset + t->offset;
    }
    size_t n = (size_t)g->n_tensors;
    qt_gguf_tensor **order = malloc(n * sizeof *order);
    g->by_name = malloc(n * sizeof *g->by_name);
    if (!order || !g->by_name) {
        free(order);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (size_t i = 0; i < n; i++) order[i] = g->by_name[i] = &g->tensors[i];
    qsort(order, n, sizeof *order, cmp_tensor_offset);
    qsort(g->by_name, n, sizeof *g->by_name, cmp_tensor_name);
    int rc = 0;
    for (size_t i = 1; i < n && !rc; i++) {
        if (order[i - 1]->offset + order[i - 1]->nbytes > order[i]->offset)
            rc = qt_fail(FMT, "%s: tensors '%s' and '%s' overlap", g->path, order[i - 1]->name, order[i]->name);
        else if (strcmp(g->by_name[i - 1]->name, g->by_name[i]->name) == 0)
            rc = qt_fail(FMT, "%s: duplicate tensor name '%s'", g->path, g->by_name[i]->name);
    }
    free(order);
    return rc;
}

static int parse(qt_gguf *g)
{
    cursor c = {g, 0};
    if (g->size < 4 || memcmp(g->base, "GGUF", 4) != 0) {
        if (g->size < 4) return qt_fail(FMT, "%s: truncated: %zu bytes, not a GGUF file", g->path, g->size);
        return qt_fail(FMT, "%s: bad magic (not a GGUF file)", g->path);
    }
    c.pos = 4;
    uint32_t version;
    if (rd_u32(&c, &version, "version")) return FMT;
    if (version != 2 && version != 3) {
        if ((version & 0xFFFF) == 0 && (version >> 16))
            return qt_fail(FMT, "%s: big-endian GGUF files are not supported", g->path);
        return qt_fail(FMT, "%s: unsupported GGUF version %u (versions 2 and 3 are read)", g->path, version);
    }
    g->version = version;
    uint64_t n_tensors, n_kv;
    if (rd_u64(&c, &n_tensors, "tensor count") || rd_u64(&c, &n_kv, "key/value count")) return FMT;
    /* A key/value pair takes at least 8 + 1 + 4 + 1 bytes and a tensor info
     * at least 8 + 1 + 4 + 8 + 4 + 8: no count the file cannot hold gets an
     * allocation. */
    if (n_tensors > QT_GGUF_MAX_TENSORS || n_tensors > remaining(&c) / 33)
        return qt_fail(FMT, "%s: tensor count %llu is too large", g->path, (unsigned long long)n_tensors);
    if (n_kv > QT_GGUF_MAX_KV || n_kv > remaining(&c) / 14)
        return qt_fail(FMT, "%s: key/value count %llu is too large", g->path, (unsigned long long)n_kv);
    g->n_kv = (int64_t)n_kv;
    g->n_tensors = (int64_t)n_tensors;
    g->alignment = QT_GGUF_DEFAULT_ALIGNMENT;
    if ((n_kv && !(g->kv = calloc(n_kv, sizeof *g->kv))) ||
        (n_tensors && !(g->tensors = calloc(n_tensors, sizeof *g->tensors))))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if (parse_kvs(g, &c)) return FMT;
    return parse_tensors(g, &c);
}

static qt_gguf *gguf_new(const char *name)
{
    qt_gguf *g = calloc(1, sizeof *g);
    if (g && !(g->path = strdup(name ? name : "<buffer>"))) {
        free(g);
        g = NULL;
    }
    return g;
}

static int finish_open(qt_gguf *g, qt_gguf **out)
{
    int rc = parse(g);
    if (rc) {
        qt_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int qt_gguf_open_buffer(const void *data, size_t len, const char *name, qt_gguf **out)
{
    *out = NULL;
    qt_gguf *g = gguf_new(name);
    if (!g) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    g->base = data;
    g->size = data ? len : 0;
    return finish_open(g, out);
}

int qt_gguf_open(const char *path, qt_gguf **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    }
    qt_gguf *g = gguf_new(path);
    if (!g) {
        close(fd);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    if (st.st_size > 0) {
        void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            qt_gguf_close(g);
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot map: %s", path, strerror(e));
        }
        g->base = p;
        g->size = (size_t)st.st_size;
        g->mapped = 1;
    }
    close(fd);
    return finish_open(g, out);
}

void qt_gguf_close(qt_gguf *g)
{
    if (!g) return;
    for (int64_t i = 0; i < g->n_kv && g->kv; i++) {
        free(g->kv[i].key);
        free(g->kv[i].str_off);
        free(g->kv[i].str);
    }
    free(g->kv);
    for (int64_t i = 0; i < g->n_tensors && g->tensors; i++) free((char *)g->tensors[i].name);
    free(g->tensors);
    free(g->by_name);
    if (g->mapped) munmap((void *)g->base, g->size);
    free(g->path);
    free(g);
}

const char *qt_gguf_path(const qt_gguf *g) { return g->path; }
uint32_t qt_gguf_version(const qt_gguf *g) { return g->version; }
uint32_t qt_gguf_alignment(const qt_gguf *g) { return g->alignment; }
uint64_t qt_gguf_data_offset(const qt_gguf *g) { return g->data_offset; }
int64_t qt_gguf_n_kv(const qt_gguf *g) { return g->n_kv; }

const char *qt_gguf_kv_key(const qt_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv ? g->kv[i].key : NULL;
}

int qt_gguf_kv_type(const qt_gguf *g, int64_t i) { return i >= 0 && i < g->n_kv ? g->kv[i].type : -1; }

int qt_gguf_kv_elem_type(const qt_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv && g->kv[i].type == QT_GGUF_ARRAY ? g->kv[i].elem_type : -1;
}

uint64_t qt_gguf_kv_count(const qt_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_kv && g->kv[i].type == QT_GGUF_ARRAY ? g->kv[i].n : 0;
}

int64_t qt_gguf_find_key(const qt_gguf *g, const char *key)
{
    for (int64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key && strcmp(g->kv[i].key, key) == 0) return i;
    return -1;
}

static const gguf_kv *kv_typed(const qt_gguf *g, const char *key, int type)
{
    int64_t i = qt_gguf_find_key(g, key);
    if (i < 0) {
        qt_fail(FMT, "%s: no key '%s'", g->path, key);
        return NULL;
    }
    if (type >= 0 && g->kv[i].type != type) {
        qt_fail(FMT, "%s: key '%s' is %s, expected %s", g->path, key, qt_gguf_type_name(g->kv[i].type),
                qt_gguf_type_name(type));
        return NULL;
    }
    return &g->kv[i];
}

#define GETTER(fn, ctype, gtype)                                                  \
    int fn(const qt_gguf *g, const char *key, ctype *out)                         \
    {                                                                             \
        const gguf_kv *kv = kv_typed(g, key, gtype);                              \
        if (!kv) return FMT;                                                      \
        memcpy(out, g->base + kv->off, sizeof *out);                              \
        return 0;                                                                 \
    }
GETTER(qt_gguf_get_u8, uint8_t, QT_GGUF_U8)
GETTER(qt_gguf_get_i8, int8_t, QT_GGUF_I8)
GETTER(qt_gguf_get_u16, uint16_t, QT_GGUF_U16)
GETTER(qt_gguf_get_i16, int16_t, QT_GGUF_I16)
GETTER(qt_gguf_get_u32, uint32_t, QT_GGUF_U32)
GETTER(qt_gguf_get_i32, int32_t, QT_GGUF_I32)
GETTER(qt_gguf_get_u64, uint64_t, QT_GGUF_U64)
GETTER(qt_gguf_get_i64, int64_t, QT_GGUF_I64)
GETTER(qt_gguf_get_f32, float, QT_GGUF_F32)
GETTER(qt_gguf_get_f64, double, QT_GGUF_F64)
#undef GETTER

int qt_gguf_get_bool(const qt_gguf *g, const char *key, int *out)
{
    const gguf_kv *kv = kv_typed(g, key, QT_GGUF_BOOL);
    if (!kv) return FMT;
    *out = g->base[kv->off] != 0;
    return 0;
}

/* Reads a scalar of `type` at `p` as an integer; -1 when not an integer
 * type or out of the int64 range. */
static int scalar_int(const uint8_t *p, int type, int64_t *out)
{
    switch (type) {
    case QT_GGUF_U8: case QT_GGUF_BOOL: *out = p[0]; return 0;
    case QT_GGUF_I8: *out = (int8_t)p[0]; return 0;
    case QT_GGUF_U16: { uint16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case QT_GGUF_I16: { int16_t v; memcpy(&v, p, 2); *out = v; return 0; }
    case QT_GGUF_U32: { uint32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case QT_GGUF_I32: { int32_t v; memcpy(&v, p, 4); *out = v; return 0; }
    case QT_GGUF_I64: { int64_t v; memcpy(&v, p, 8); *out = v; return 0; }
    case QT_GGUF_U64: {
        uint64_t v;
        memcpy(&v, p, 8);
        if (v > (uint64_t)INT64_MAX) return -1;
        *out = (int64_t)v;
        return 0;
    }
    default: return -1;
    }
}

static int scalar_float(const uint8_t *p, int type, double *out)
{
    if (type == QT_GGUF_F32) { float v; memcpy(&v, p, 4); *out = v; return 0; }
    if (type == QT_GGUF_F64) { memcpy(out, p, 8); return 0; }
    return -1;
}

int qt_gguf_get_int(const qt_gguf *g, const char *key, int64_t *out)
{
    const gguf_kv *kv = kv_typed(g, key, -1);
    if (!kv) return FMT;
    if (scalar_int(g->base + kv->off, kv->type, out))
        return qt_fail(FMT, "%s: key '%s' is %s, expected an integer", g->path, key, qt_gguf_type_name(kv->type));
    return 0;
}

int qt_gguf_get_float(const qt_gguf *g, const char *key, double *out)
{
    const gguf_kv *kv = kv_typed(g, key, -1);
    if (!kv) return FMT;
    if (scalar_float(g->base + kv->off, kv->type, out))
        return qt_fail(FMT, "%s: key '%s' is %s, expected f32 or f64", g->path, key, qt_gguf_type_name(kv->type));
    return 0;
}

int qt_gguf_get_str(const qt_gguf *g, const char *key, const char **s, uint64_t *len)
{
    const gguf_kv *kv = kv_typed(g, key, QT_GGUF_STRING);
    if (!kv) return FMT;
    *s = kv->str;
    if (len) *len = kv->n;
    return 0;
}

int qt_gguf_get_arr(const qt_gguf *g, const char *key, int *elem_type, uint64_t *n)
{
    const gguf_kv *kv = kv_typed(g, key, QT_GGUF_ARRAY);
    if (!kv) return FMT;
    if (elem_type) *elem_type = kv->elem_type;
    if (n) *n = kv->n;
    return 0;
}

static const gguf_kv *arr_elem(const qt_gguf *g, const char *key, uint64_t i)
{
    const gguf_kv *kv = kv_typed(g, key, QT_GGUF_ARRAY);
    if (kv && i >= kv->n) {
        qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: key '%s': index %llu past the %llu elements", g->path, key,
                (unsigned long long)i, (unsigned long long)kv->n);
        return NULL;
    }
    return kv;
}

int qt_gguf_arr_int(const qt_gguf *g, const char *key, uint64_t i, int64_t *out)
{
    const gguf_kv *kv = arr_elem(g, key, i);
    if (!kv) return FMT;
    size_t sz = gguf_type_size(kv->elem_type);
    if (!sz || scalar_int(g->base + kv->off + i * sz, kv->elem_type, out))
        return qt_fail(FMT, "%s: key '%s': element %llu is not an int64 integer", g->path, key, (unsigned long long)i);
    return 0;
}

int qt_gguf_arr_float(const qt_gguf *g, const char *key, uint64_t i, double *out)
{
    const gguf_kv *kv = arr_elem(g, key, i);
    if (!kv) return FMT;
    size_t sz = gguf_type_size(kv->elem_type);
    if (!sz || scalar_float(g->base + kv->off + i * sz, kv->elem_type, out))
        return qt_fail(FMT, "%s: key '%s' is an array of %s, expected f32 or f64", g->path, key,
                       qt_gguf_type_name(kv->elem_type));
    return 0;
}

int qt_gguf_arr_str(const qt_gguf *g, const char *key, uint64_t i, const char **s, uint64_t *len)
{
    const gguf_kv *kv = arr_elem(g, key, i);
    if (!kv) return FMT;
    if (kv->elem_type != QT_GGUF_STRING)
        return qt_fail(FMT, "%s: key '%s' is an array of %s, expected string", g->path, key,
                       qt_gguf_type_name(kv->elem_type));
    uint64_t n;
    memcpy(&n, g->base + kv->str_off[i], 8);
    *s = (const char *)g->base + kv->str_off[i] + 8;
    if (len) *len = n;
    return 0;
}

int qt_gguf_arr_copy(const qt_gguf *g, const char *key, int elem_type, void *dst, size_t dst_bytes)
{
    const gguf_kv *kv = kv_typed(g, key, QT_GGUF_ARRAY);
    if (!kv) return FMT;
    size_t sz = gguf_type_size(kv->elem_type);
    if (kv->elem_type != elem_type || !sz)
        return qt_fail(FMT, "%s: key '%s' is an array of %s, expected %s", g->path, key,
                       qt_gguf_type_name(kv->elem_type), qt_gguf_type_name(elem_type));
    if (kv->n > dst_bytes / sz)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: key '%s': %llu elements do not fit in %zu bytes", g->path,
                       key, (unsigned long long)kv->n, dst_bytes);
    if (kv->n) memcpy(dst, g->base + kv->off, kv->n * sz);
    return 0;
}

int64_t qt_gguf_n_tensors(const qt_gguf *g) { return g->n_tensors; }

const qt_gguf_tensor *qt_gguf_tensor_at(const qt_gguf *g, int64_t i)
{
    return i >= 0 && i < g->n_tensors ? &g->tensors[i] : NULL;
}

const qt_gguf_tensor *qt_gguf_find_tensor(const qt_gguf *g, const char *name)
{
    size_t lo = 0, hi = (size_t)g->n_tensors;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(g->by_name[mid]->name, name);
        if (c == 0) return g->by_name[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* ------------------------------------------------------------- writer */

typedef struct wtensor {
    char *name;
    int32_t type, n_dims;
    int64_t ne[QT_GGUF_MAX_DIMS];
    const void *data;
    uint64_t nbytes;
} wtensor;

struct qt_gguf_writer {
    uint8_t *meta; /* serialised key/value section */
    size_t meta_len, meta_cap;
    char **keys;
    size_t n_keys, keys_cap;
    wtensor *tensors;
    size_t n_tensors, tensors_cap;
    uint32_t alignment;
};

qt_gguf_writer *qt_gguf_writer_new(void)
{
    qt_gguf_writer *w = calloc(1, sizeof *w);
    if (w) w->alignment = QT_GGUF_DEFAULT_ALIGNMENT;
    return w;
}

void qt_gguf_writer_free(qt_gguf_writer *w)
{
    if (!w) return;
    free(w->meta);
    for (size_t i = 0; i < w->n_keys; i++) free(w->keys[i]);
    free(w->keys);
    for (size_t i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    free(w);
}

static int grow(void **p, size_t *cap, size_t need_n, size_t elem)
{
    if (need_n <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need_n) {
        if (c > SIZE_MAX / 2 / elem) return -1;
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q) return -1;
    *p = q;
    *cap = c;
    return 0;
}

static int put(qt_gguf_writer *w, const void *data, size_t n)
{
    if (grow((void **)&w->meta, &w->meta_cap, w->meta_len + n, 1))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if (n) memcpy(w->meta + w->meta_len, data, n);
    w->meta_len += n;
    return 0;
}

static int put_u32(qt_gguf_writer *w, uint32_t v) { return put(w, &v, 4); }
static int put_u64(qt_gguf_writer *w, uint64_t v) { return put(w, &v, 8); }

static int put_str(qt_gguf_writer *w, const char *s)
{
    size_t n = strlen(s);
    return put_u64(w, n) || put(w, s, n) ? QTOOL_ERR_OUT_OF_MEMORY : 0;
}

/* Registers the key and writes it with its type. */
static int begin_kv(qt_gguf_writer *w, const char *key, int type)
{
    size_t n = key ? strlen(key) : 0;
    if (n == 0 || n > QT_GGUF_MAX_KEY_LEN)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: key must have 1 to %u bytes", QT_GGUF_MAX_KEY_LEN);
    for (size_t i = 0; i < w->n_keys; i++)
        if (strcmp(w->keys[i], key) == 0)
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: duplicate key '%s'", key);
    if (strcmp(key, "general.alignment") == 0 && type != QT_GGUF_U32)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: general.alignment must be u32");
    char *copy = strdup(key);
    if (!copy || grow((void **)&w->keys, &w->keys_cap, w->n_keys + 1, sizeof *w->keys)) {
        free(copy);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    w->keys[w->n_keys++] = copy;
    if (put_str(w, key) || put_u32(w, (uint32_t)type)) return QTOOL_ERR_OUT_OF_MEMORY;
    return 0;
}

#define ADDER(fn, ctype, gtype)                                 \
    int fn(qt_gguf_writer *w, const char *key, ctype v)         \
    {                                                           \
        int rc = begin_kv(w, key, gtype);                       \
        return rc ? rc : put(w, &v, sizeof v);                  \
    }
ADDER(qt_gguf_add_u8, uint8_t, QT_GGUF_U8)
ADDER(qt_gguf_add_i8, int8_t, QT_GGUF_I8)
ADDER(qt_gguf_add_u16, uint16_t, QT_GGUF_U16)
ADDER(qt_gguf_add_i16, int16_t, QT_GGUF_I16)
ADDER(qt_gguf_add_i32, int32_t, QT_GGUF_I32)
ADDER(qt_gguf_add_u64, uint64_t, QT_GGUF_U64)
ADDER(qt_gguf_add_i64, int64_t, QT_GGUF_I64)
ADDER(qt_gguf_add_f32, float, QT_GGUF_F32)
ADDER(qt_gguf_add_f64, double, QT_GGUF_F64)
#undef ADDER

int qt_gguf_add_u32(qt_gguf_writer *w, const char *key, uint32_t v)
{
    if (key && strcmp(key, "general.alignment") == 0) {
        if (v == 0 || (v & (v - 1)) || v > (1u << 30))
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: general.alignment %u is not a power of two", v);
    }
    int rc = begin_kv(w, key, QT_GGUF_U32);
    if (rc) return rc;
    if (strcmp(key, "general.alignment") == 0) w->alignment = v;
    return put(w, &v, 4);
}

int qt_gguf_add_bool(qt_gguf_writer *w, const char *key, int v)
{
    uint8_t b = v != 0;
    int rc = begin_kv(w, key, QT_GGUF_BOOL);
    return rc ? rc : put(w, &b, 1);
}

int qt_gguf_add_str(qt_gguf_writer *w, const char *key, const char *v)
{
    if (!v) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: NULL string for key '%s'", key ? key : "");
    int rc = begin_kv(w, key, QT_GGUF_STRING);
    return rc ? rc : put_str(w, v);
}

int qt_gguf_add_arr(qt_gguf_writer *w, const char *key, int elem_type, const void *data, uint64_t n)
{
    size_t sz = elem_type >= 0 && elem_type < QT_GGUF_TYPE_COUNT ? gguf_type_size(elem_type) : 0;
    if (!sz) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: key '%s': arrays of %s need their own call",
                            key ? key : "", qt_gguf_type_name(elem_type));
    if (n && (!data || n > SIZE_MAX / sz))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: key '%s': bad array", key ? key : "");
    if (elem_type == QT_GGUF_BOOL) {
        for (uint64_t i = 0; i < n; i++)
            if (((const uint8_t *)data)[i] > 1)
                return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: key '%s': bool element is not 0 or 1", key);
    }
    int rc = begin_kv(w, key, QT_GGUF_ARRAY);
    if (rc) return rc;
    if (put_u32(w, (uint32_t)elem_type) || put_u64(w, n) || put(w, data, (size_t)(n * sz)))
        return QTOOL_ERR_OUT_OF_MEMORY;
    return 0;
}

int qt_gguf_add_arr_str(qt_gguf_writer *w, const char *key, const char *const *strs, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (!strs[i]) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: key '%s': NULL string", key ? key : "");
    int rc = begin_kv(w, key, QT_GGUF_ARRAY);
    if (rc) return rc;
    if (put_u32(w, QT_GGUF_STRING) || put_u64(w, n)) return QTOOL_ERR_OUT_OF_MEMORY;
    for (uint64_t i = 0; i < n; i++)
        if (put_str(w, strs[i])) return QTOOL_ERR_OUT_OF_MEMORY;
    return 0;
}

int qt_gguf_add_tensor(qt_gguf_writer *w, const char *name, int ggml_type, int n_dims, const int64_t *ne,
                       const void *data, uint64_t nbytes)
{
    size_t len = name ? strlen(name) : 0;
    if (len == 0 || len >= QT_GGUF_MAX_NAME)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: tensor name '%s' must have 1 to %d bytes",
                       name ? name : "", QT_GGUF_MAX_NAME - 1);
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: duplicate tensor '%s'", name);
    uint64_t expect;
    if (n_dims < 1 || n_dims > QT_GGUF_MAX_DIMS || !ne || qt_ggml_nbytes(ggml_type, n_dims, ne, &expect))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: tensor '%s': bad type %d or shape", name, ggml_type);
    if (expect != nbytes || !data)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "gguf writer: tensor '%s': %llu bytes given, %s needs %llu", name,
                       (unsigned long long)nbytes, qt_ggml_type_name(ggml_type), (unsigned long long)expect);
    if (grow((void **)&w->tensors, &w->tensors_cap, w->n_tensors + 1, sizeof *w->tensors))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    wtensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    t->type = ggml_type;
    t->n_dims = n_dims;
    for (int d = 0; d < QT_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    t->data = data;
    t->nbytes = nbytes;
    w->n_tensors++;
    return 0;
}

static uint64_t align_up(uint64_t v, uint32_t a) { return (v + a - 1) / a * a; }

static int write_zeros(FILE *fp, uint64_t n)
{
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        if (fwrite(zeros, 1, k, fp) != k) return -1;
        n -= k;
    }
    return 0;
}

int qt_gguf_write(qt_gguf_writer *w, const char *path)
{
    /* The tensor-info section goes into a second buffer so the header can be
     * written in one pass with the data offsets known. */
    qt_gguf_writer info = {0};
    uint64_t off = 0;
    int rc = 0;
    for (size_t i = 0; i < w->n_tensors && !rc; i++) {
        const wtensor *t = &w->tensors[i];
        rc = put_str(&info, t->name) || put_u32(&info, (uint32_t)t->n_dims);
        for (int d = 0; d < t->n_dims && !rc; d++) rc = put_u64(&info, (uint64_t)t->ne[d]);
        rc = rc || put_u32(&info, (uint32_t)t->type) || put_u64(&info, off);
        off = align_up(off + t->nbytes, w->alignment);
    }
    if (rc) {
        free(info.meta);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    qt_atomic_file f;
    if ((rc = qt_atomic_open(&f, path))) {
        free(info.meta);
        return rc;
    }
    uint32_t version = 3;
    uint64_t counts[2] = {w->n_tensors, w->n_keys};
    uint64_t header_len = 4 + 4 + 16 + w->meta_len + info.meta_len;
    int bad = fwrite("GGUF", 1, 4, f.fp) != 4 || fwrite(&version, 4, 1, f.fp) != 1 ||
              fwrite(counts, 8, 2, f.fp) != 2 ||
              (w->meta_len && fwrite(w->meta, 1, w->meta_len, f.fp) != w->meta_len) ||
              (info.meta_len && fwrite(info.meta, 1, info.meta_len, f.fp) != info.meta_len) ||
              write_zeros(f.fp, align_up(header_len, w->alignment) - header_len);
    free(info.meta);
    for (size_t i = 0; i < w->n_tensors && !bad; i++) {
        const wtensor *t = &w->tensors[i];
        bad = fwrite(t->data, 1, (size_t)t->nbytes, f.fp) != t->nbytes ||
              write_zeros(f.fp, align_up(t->nbytes, w->alignment) - t->nbytes);
    }
    if (bad) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: write failed: %s", path, strerror(errno));
        qt_atomic_abort(&f);
        return rc;
    }
    return qt_atomic_commit(&f);
}
