#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "fsutil.h"

/* Index files are small (a few MB even for 1000-shard models). */
#define QT_ST_MAX_INDEX_BYTES (100u * 1000u * 1000u)

/* ------------------------------------------------------------- dtypes */

typedef struct st_dtype {
    const char *name;
    int qt;        /* qtool_dtype, -1 when opaque */
    unsigned bits; /* per element */
} st_dtype;

static const st_dtype st_dtypes[] = {
    {"F64", QTOOL_DTYPE_F64, 64},   {"F32", QTOOL_DTYPE_F32, 32},
    {"F16", QTOOL_DTYPE_F16, 16},   {"BF16", QTOOL_DTYPE_BF16, 16},
    {"I64", QTOOL_DTYPE_I64, 64},   {"I32", QTOOL_DTYPE_I32, 32},
    {"I16", QTOOL_DTYPE_I16, 16},   {"I8", QTOOL_DTYPE_I8, 8},
    {"U8", QTOOL_DTYPE_U8, 8},      {"F8_E4M3", QTOOL_DTYPE_F8_E4M3, 8},
    /* Read as opaque bytes: the runtime has no arithmetic for them, but a
     * checkpoint carrying such buffers must still load. */
    {"BOOL", -1, 8},        {"U16", -1, 16},         {"U32", -1, 32},
    {"U64", -1, 64},        {"F8_E5M2", -1, 8},      {"F8_E8M0", -1, 8},
    {"F8_E4M3FNUZ", -1, 8}, {"F8_E5M2FNUZ", -1, 8},  {"C64", -1, 64},
    {"F4", -1, 4},          {"F6_E2M3", -1, 6},      {"F6_E3M2", -1, 6},
};

static const st_dtype *dtype_lookup(const char *name)
{
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
        if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
    return NULL;
}

unsigned qt_st_dtype_bits(const char *dtype_name)
{
    const st_dtype *d = dtype_name ? dtype_lookup(dtype_name) : NULL;
    return d ? d->bits : 0;
}

int qt_st_dtype_to_qtool(const char *dtype_name)
{
    const st_dtype *d = dtype_name ? dtype_lookup(dtype_name) : NULL;
    return d ? d->qt : -1;
}

/* Bytes an element needs to be aligned to when viewed in place. */
static size_t dtype_align(const st_dtype *d)
{
    return d->bits >= 8 ? d->bits / 8 : 1;
}

/* ------------------------------------------------------ shared checks */

/* Text from the file, made fit for a one-line message: control bytes become
 * '?', and long text is cut at a character boundary. */
static const char *clean(char *dst, size_t cap, const char *src)
{
    const unsigned char *s = (const unsigned char *)src;
    size_t max = cap - 4, i = 0;
    for (; s[i] && i < max; i++) dst[i] = (s[i] < 0x20 || s[i] == 0x7f) ? '?' : (char)s[i];
    if (s[i]) {
        while (i > 0 && (s[i] & 0xC0) == 0x80) i--; /* do not split a UTF-8 sequence */
        memcpy(dst + i, "...", 3);
        i += 3;
    }
    dst[i] = '\0';
    return dst;
}

static const char *shape_text(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, i ? ", %lld" : "%lld", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* Element count of a shape, refusing shapes whose nonzero dimensions
 * multiply past INT64_MAX, so any later product over the dims (in any
 * order, as qtool_tensor_numel does) stays in range. -1 when too large. */
static int64_t checked_numel(int ndim, const int64_t *shape)
{
    int64_t prod = 1;
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] == 0) {
            zero = 1;
            continue;
        }
        if (prod > INT64_MAX / shape[i]) return -1;
        prod *= shape[i];
    }
    return zero ? 0 : prod;
}

/* Bytes of `numel` elements of `d`: -1 when they do not fill whole bytes,
 * -2 when the count overflows. */
static int64_t dtype_bytes(const st_dtype *d, int64_t numel)
{
    uint64_t n = (uint64_t)numel;
    if (n > (uint64_t)INT64_MAX / d->bits) return -2;
    uint64_t bits = n * d->bits;
    return bits % 8 ? -1 : (int64_t)(bits / 8);
}

/* --------------------------------------------------------------- reader */

struct qt_st_file {
    char *path;
    void *map; /* NULL for an image parsed from memory */
    size_t map_len;
    size_t n;
    qt_st_tensor *tensors; /* by name */
    size_t n_meta;
    char **meta; /* key, value pairs by key */
    void *copies; /* aligned copies of misaligned tensors */
};

typedef struct span {
    uint64_t begin, end;
    size_t index;
} span;

static int cmp_span(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    return strcmp(((const qt_st_tensor *)a)->name, ((const qt_st_tensor *)b)->name);
}

static int cmp_meta(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int parse_metadata(qt_st_file *f, json_t *val)
{
    char kb[160];
    if (json_is_null(val)) return 0;
    if (!json_is_object(val))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: __metadata__ is not a JSON object", f->path);
    size_t n = json_object_size(val);
    f->meta = calloc(n * 2 + 1, sizeof *f->meta);
    if (!f->meta) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", f->path);
    const char *key;
    json_t *v;
    json_object_foreach(val, key, v) {
        if (!json_is_string(v))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: __metadata__ value of '%s' is not a string",
                           f->path, clean(kb, sizeof kb, key));
        char *k = strdup(key), *s = strdup(json_string_value(v));
        f->meta[2 * f->n_meta] = k;
        f->meta[2 * f->n_meta + 1] = s;
        f->n_meta++;
        if (!k || !s) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", f->path);
    }
    qsort(f->meta, f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    return 0;
}

/* Validates one tensor entry; fills `t` (data left NULL) and `sp`. */
static int parse_entry(qt_st_file *f, const char *key, json_t *val, uint64_t data_len,
                       qt_st_tensor *t, span *sp)
{
    char nb[160], db[64], shb[160];
    const char *p = f->path, *name = clean(nb, sizeof nb, key);
    if (!json_is_object(val))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': entry is not a JSON object", p, name);

    json_t *jd = json_object_get(val, "dtype");
    if (!json_is_string(jd))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': dtype is missing or not a string", p, name);
    const st_dtype *dt = dtype_lookup(json_string_value(jd));
    if (!dt)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': unknown dtype '%s'", p, name,
                       clean(db, sizeof db, json_string_value(jd)));

    json_t *js = json_object_get(val, "shape");
    if (!json_is_array(js))
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape is missing or not an array", p, name);
    size_t nd = json_array_size(js);
    if (nd > QTOOL_MAX_DIMS)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape has %zu dims; at most %d are supported",
                       p, name, nd, QTOOL_MAX_DIMS);
    for (size_t i = 0; i < nd; i++) {
        json_t *d = json_array_get(js, i);
        if (!json_is_integer(d))
            return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is not an integer", p, name, i);
        if (json_integer_value(d) < 0)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape[%zu] is negative (%lld)", p, name,
                           i, (long long)json_integer_value(d));
        t->shape[i] = (int64_t)json_integer_value(d);
    }
    t->ndim = (int32_t)nd;
    int64_t numel = checked_numel(t->ndim, t->shape);
    if (numel < 0)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape %s has too many elements", p, name,
                       shape_text(shb, sizeof shb, t->ndim, t->shape));

    json_t *jo = json_object_get(val, "data_offsets");
    if (!json_is_array(jo) || json_array_size(jo) != 2)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': data_offsets must be [begin, end]", p, name);
    uint64_t off[2];
    for (size_t i = 0; i < 2; i++) {
        json_t *o = json_array_get(jo, i);
        if (!json_is_integer(o) || json_integer_value(o) < 0)
            return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': data_offsets[%zu] is not a non-negative integer",
                           p, name, i);
        off[i] = (uint64_t)json_integer_value(o);
    }
    if (off[1] < off[0])
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] end before begin", p,
                       name, (unsigned long long)off[0], (unsigned long long)off[1]);
    if (off[1] > data_len)
        return qt_fail(QTOOL_ERR_FORMAT,
                       "%s: tensor '%s': data_offsets [%llu, %llu] go past the %llu bytes of data", p,
                       name, (unsigned long long)off[0], (unsigned long long)off[1],
                       (unsigned long long)data_len);
    int64_t nbytes = dtype_bytes(dt, numel);
    if (nbytes == -1)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': %lld elements of %s do not fill whole bytes",
                       p, name, (long long)numel, dt->name);
    if (nbytes == -2)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s': shape %s of %s has too many bytes", p, name,
                       shape_text(shb, sizeof shb, t->ndim, t->shape), dt->name);
    if ((uint64_t)nbytes != off[1] - off[0])
        return qt_fail(QTOOL_ERR_FORMAT,
                       "%s: tensor '%s': shape %s of %s needs %lld bytes but data_offsets [%llu, %llu] hold %llu",
                       p, name, shape_text(shb, sizeof shb, t->ndim, t->shape), dt->name,
                       (long long)nbytes, (unsigned long long)off[0], (unsigned long long)off[1],
                       (unsigned long long)(off[1] - off[0]));

    t->name = strdup(key);
    if (!t->name) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", p);
    t->dtype_name = dt->name;
    t->nbytes = (uint64_t)nbytes;
    t->view.device = QTOOL_DEVICE_CPU;
    if (dt->qt >= 0) {
        t->view.dtype = dt->qt;
        t->view.ndim = t->ndim;
        memcpy(t->view.shape, t->shape, sizeof t->shape);
    } else {
        t->view.dtype = QTOOL_DTYPE_PACKED;
        t->view.ndim = 1;
        t->view.shape[0] = nbytes;
    }
    sp->begin = off[0];
    sp->end = off[1];
    return 0;
}

/* Points every view into the data section; tensors that would sit at an
 * address not aligned to their element size (files whose header length is
 * not a multiple of 8, or odd offsets) are copied into an aligned block, so
 * consumers may read them as typed arrays. */
static int place_data(qt_st_file *f, const uint8_t *data, const span *spans)
{
    size_t copy_bytes = 0, n_copied = 0;
    for (size_t i = 0; i < f->n; i++) {
        size_t a = dtype_align(dtype_lookup(f->tensors[i].dtype_name));
        const uint8_t *p = data + spans[i].begin;
        if (f->tensors[i].nbytes && (uintptr_t)p % a) {
            copy_bytes += ((size_t)f->tensors[i].nbytes + 63) & ~(size_t)63;
            n_copied++;
        }
    }
    uint8_t *copy = NULL;
    if (copy_bytes) {
        copy = aligned_alloc(64, copy_bytes);
        if (!copy)
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory copying %zu misaligned bytes",
                           f->path, copy_bytes);
        f->copies = copy;
        qt_log(QTOOL_LOG_DEBUG, "%s: %zu tensors are not aligned in the file; copied %zu bytes", f->path,
               n_copied, copy_bytes);
    }
    /* Empty tensors point here: aligned, and not NULL (memcpy of 0 bytes from NULL is undefined). */
    static _Alignas(64) const uint8_t empty_data[64];
    for (size_t i = 0; i < f->n; i++) {
        qt_st_tensor *t = &f->tensors[i];
        size_t a = dtype_align(dtype_lookup(t->dtype_name));
        const uint8_t *p = data + spans[i].begin;
        if (!t->nbytes) {
            p = empty_data;
        } else if ((uintptr_t)p % a) {
            memcpy(copy, p, (size_t)t->nbytes);
            p = copy;
            copy += ((size_t)t->nbytes + 63) & ~(size_t)63;
        }
        /* Read-only data behind a mutable pointer: qtool_tensor has no const variant. */
        t->view.data = (void *)(uintptr_t)p;
    }
    return 0;
}

static int parse_image(qt_st_file *f, const uint8_t *buf, size_t len)
{
    const char *p = f->path;
    char eb[200];
    if (len < 8)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                       p, len);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)buf[i] << (8 * i);
    if (hlen > QT_ST_MAX_HEADER_BYTES)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: header length %llu is over the limit of %llu bytes", p,
                       (unsigned long long)hlen, QT_ST_MAX_HEADER_BYTES);
    if (hlen > len - 8)
        return qt_fail(QTOOL_ERR_FORMAT,
                       "%s: header length %llu exceeds the %zu bytes after the length field (truncated file?)",
                       p, (unsigned long long)hlen, len - 8);
    const char *htext = (const char *)buf + 8;
    const char *nul = memchr(htext, '\0', (size_t)hlen);
    if (nul)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: header contains a NUL byte at header byte %zu", p,
                       (size_t)(nul - htext));
    json_error_t jerr;
    json_t *root = json_loadb(htext, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: header is not valid JSON: %s (header byte %d)", p,
                       clean(eb, sizeof eb, jerr.text), jerr.position);
    int rc = 0;
    span *spans = NULL;
    if (!json_is_object(root)) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: header is not a JSON object", p);
        goto done;
    }

    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = (uint64_t)(len - 8 - (size_t)hlen);
    size_t n_entries = json_object_size(root);
    f->tensors = calloc(n_entries + 1, sizeof *f->tensors);
    spans = calloc(n_entries + 1, sizeof *spans);
    if (!f->tensors || !spans) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", p);
        goto done;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if ((rc = parse_metadata(f, val))) goto done;
            continue;
        }
        rc = parse_entry(f, key, val, data_len, &f->tensors[f->n], &spans[f->n]);
        spans[f->n].index = f->n;
        if (f->tensors[f->n].name) f->n++; /* owned from here on, also on failure */
        if (rc) goto done;
    }

    /* No two tensors may share a byte (empty ones hold none). */
    {
        span *sorted = malloc((f->n + 1) * sizeof *sorted);
        if (!sorted) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", p);
            goto done;
        }
        size_t m = 0;
        for (size_t i = 0; i < f->n; i++)
            if (spans[i].end > spans[i].begin) sorted[m++] = spans[i];
        qsort(sorted, m, sizeof *sorted, cmp_span);
        for (size_t i = 1; i < m && !rc; i++) {
            if (sorted[i].begin < sorted[i - 1].end) {
                char na[160], nb2[160];
                const span *a = &sorted[i - 1], *b = &sorted[i];
                rc = qt_fail(QTOOL_ERR_FORMAT, "%s: tensors '%s' [%llu, %llu] and '%s' [%llu, %llu] overlap",
                             p, clean(na, sizeof na, f->tensors[a->index].name),
                             (unsigned long long)a->begin, (unsigned long long)a->end,
                             clean(nb2, sizeof nb2, f->tensors[b->index].name),
                             (unsigned long long)b->begin, (unsigned long long)b->end);
            }
        }
        free(sorted);
        if (rc) goto done;
    }

    if ((rc = place_data(f, data, spans))) goto done;
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
    /* JSON_REJECT_DUPLICATES already refuses these; kept as a guard because
     * lookups rely on unique names. */
    for (size_t i = 1; i < f->n; i++) {
        if (strcmp(f->tensors[i - 1].name, f->tensors[i].name) == 0) {
            char nb3[160];
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: duplicate tensor name '%s'", p,
                         clean(nb3, sizeof nb3, f->tensors[i].name));
            goto done;
        }
    }

done:
    free(spans);
    json_decref(root);
    return rc;
}

static qt_st_file *file_new(const char *path)
{
    qt_st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(path ? path : "(memory)");
    if (!f || !f->path) {
        free(f);
        qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        return NULL;
    }
    return f;
}

int qt_st_parse(const void *buf, size_t len, const char *name_for_errors, qt_st_file **out)
{
    *out = NULL;
    if (!buf && len) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "qt_st_parse: NULL buffer");
    qt_st_file *f = file_new(name_for_errors);
    if (!f) return QTOOL_ERR_OUT_OF_MEMORY;
    int rc = parse_image(f, buf ? buf : (const void *)"", len);
    if (rc) {
        qt_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

int qt_st_open(const char *path, qt_st_file **out)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: file is too large for this machine's address space", path);
    }
    size_t size = (size_t)st.st_size;
    if (size < 8) {
        close(fd);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: file is %zu bytes, too short for the 8-byte header length",
                       path, size);
    }
    /* A private read-only mapping: tensors are paged in on use, so a
     * multi-GB checkpoint costs only what is touched. */
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot map: %s", path, strerror(e));
    qt_st_file *f = file_new(path);
    if (!f) {
        munmap(map, size);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    f->map = map;
    f->map_len = size;
    int rc = parse_image(f, map, size);
    if (rc) {
        qt_st_close(f);
        return rc;
    }
    *out = f;
    return 0;
}

void qt_st_close(qt_st_file *f)
{
    if (!f) return;
    for (size_t i = 0; i < f->n; i++) free((void *)f->tensors[i].name);
    free(f->tensors);
    for (size_t i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    free(f->meta);
    free(f->copies);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

const char *qt_st_path(const qt_st_file *f) { return f->path; }
size_t qt_st_count(const qt_st_file *f) { return f ? f->n : 0; }

const qt_st_tensor *qt_st_at(const qt_st_file *f, size_t i)
{
    return f && i < f->n ? &f->tensors[i] : NULL;
}

const qt_st_tensor *qt_st_find(const qt_st_file *f, const char *name)
{
    if (!f || !name) return NULL;
    qt_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n, sizeof *f->tensors, cmp_tensor_name);
}

const char *qt_st_metadata(const qt_st_file *f, const char *key)
{
    if (!f || !key || !f->n_meta) return NULL;
    char *const *hit = bsearch(&key, f->meta, f->n_meta, 2 * sizeof *f->meta, cmp_meta);
    return hit ? hit[1] : NULL;
}

size_t qt_st_metadata_count(const qt_st_file *f) { return f ? f->n_meta : 0; }

void qt_st_metadata_at(const qt_st_file *f, size_t i, const char **key, const char **value)
{
    int ok = f && i < f->n_meta;
    if (key) *key = ok ? f->meta[2 * i] : NULL;
    if (value) *value = ok ? f->meta[2 * i + 1] : NULL;
}

/* ----------------------------------------------------------- checkpoint */

typedef struct ckpt_entry {
    const qt_st_tensor *t;
    size_t file;
} ckpt_entry;

struct qt_ckpt {
    size_t n_files;
    qt_st_file **files;
    size_t n;
    const qt_st_tensor **tensors; /* by name */
};

static int cmp_entry_name(const void *a, const void *b)
{
    return strcmp(((const ckpt_entry *)a)->t->name, ((const ckpt_entry *)b)->t->name);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int cmp_tensor_ptr_name(const void *a, const void *b)
{
    return strcmp((*(const qt_st_tensor *const *)a)->name, (*(const qt_st_tensor *const *)b)->name);
}

/* Gathers the tensors of all files, refusing a name held by two of them. */
static int ckpt_index(qt_ckpt *c, const char *what)
{
    size_t total = 0;
    for (size_t i = 0; i < c->n_files; i++) total += qt_st_count(c->files[i]);
    ckpt_entry *all = malloc((total + 1) * sizeof *all);
    c->tensors = malloc((total + 1) * sizeof *c->tensors);
    if (!all || !c->tensors) {
        free(all);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
    }
    size_t k = 0;
    for (size_t i = 0; i < c->n_files; i++)
        for (size_t j = 0; j < qt_st_count(c->files[i]); j++) all[k++] = (ckpt_entry){qt_st_at(c->files[i], j), i};
    qsort(all, total, sizeof *all, cmp_entry_name);
    for (size_t i = 0; i < total; i++) {
        if (i && strcmp(all[i - 1].t->name, all[i].t->name) == 0) {
            char nb[160];
            int rc = qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is in both %s and %s", what,
                             clean(nb, sizeof nb, all[i].t->name), qt_st_path(c->files[all[i - 1].file]),
                             qt_st_path(c->files[all[i].file]));
            free(all);
            return rc;
        }
        c->tensors[i] = all[i].t;
    }
    c->n = total;
    free(all);
    return 0;
}

/* A shard must be a plain file next to the index: no folders, no way out. */
static int plain_file_name(const char *s)
{
    if (!*s || strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p == '/' || *p == '\\' || *p < 0x20 || *p == 0x7f) return 0;
    return 1;
}

static int ckpt_open_index(qt_ckpt *c, const char *index_path, const char *dir)
{
    char nb[160], sb[160], eb[200];
    char *text = NULL;
    size_t len = 0;
    int rc = qt_read_file(index_path, QT_ST_MAX_INDEX_BYTES, &text, &len);
    if (rc) return rc;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!root)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: not valid JSON: %s (byte %d)", index_path,
                       clean(eb, sizeof eb, jerr.text), jerr.position);
    const char **shards = NULL;
    json_t *wm = json_object_get(root, "weight_map");
    if (!json_is_object(root) || !json_is_object(wm)) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: weight_map is missing or not a JSON object", index_path);
        goto done;
    }
    size_t n_map = json_object_size(wm);
    if (n_map == 0) {
        rc = qt_fail(QTOOL_ERR_FORMAT, "%s: weight_map lists no tensors", index_path);
        goto done;
    }
    shards = malloc(n_map * sizeof *shards);
    if (!shards) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
        goto done;
    }
    size_t n_shards = 0;
    const char *name;
    json_t *v;
    json_object_foreach(wm, name, v) {
        if (!json_is_string(v)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: weight_map entry of '%s' is not a string", index_path,
                         clean(nb, sizeof nb, name));
            goto done;
        }
        if (!plain_file_name(json_string_value(v))) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: shard '%s' of tensor '%s' is not a plain file name",
                         index_path, clean(sb, sizeof sb, json_string_value(v)), clean(nb, sizeof nb, name));
            goto done;
        }
        shards[n_shards++] = json_string_value(v);
    }
    qsort(shards, n_shards, sizeof *shards, cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n_shards; i++)
        if (!u || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
    n_shards = u;

    c->files = calloc(n_shards, sizeof *c->files);
    if (!c->files) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
        goto done;
    }
    for (size_t i = 0; i < n_shards; i++) {
        char *sp = qt_path_join(dir, shards[i]);
        if (!sp) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", index_path);
            goto done;
        }
        rc = qt_st_open(sp, &c->files[i]);
        free(sp);
        if (rc) goto done;
        c->n_files++;
    }
    json_object_foreach(wm, name, v) {
        const char *shard = json_string_value(v);
        const char **hit = bsearch(&shard, shards, n_shards, sizeof *shards, cmp_str);
        if (!qt_st_find(c->files[hit - shards], name)) {
            rc = qt_fail(QTOOL_ERR_FORMAT, "%s: tensor '%s' is mapped to %s, which does not hold it",
                         index_path, clean(nb, sizeof nb, name), clean(sb, sizeof sb, shard));
            goto done;
        }
    }
    rc = ckpt_index(c, index_path);
done:
    free(shards);
    json_decref(root);
    return rc;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int ckpt_open_single(qt_ckpt *c, const char *path)
{
    c->files = calloc(1, sizeof *c->files);
    if (!c->files) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    int rc = qt_st_open(path, &c->files[0]);
    if (rc) return rc;
    c->n_files = 1;
    return ckpt_index(c, path);
}

int qt_ckpt_open(const char *path, qt_ckpt **out)
{
    *out = NULL;
    qt_ckpt *c = calloc(1, sizeof *c);
    if (!c) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    int rc;
    if (qt_is_dir(path)) {
        char *single = qt_path_join(path, "model.safetensors");
        char *index = qt_path_join(path, "model.safetensors.index.json");
        if (!single || !index)
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        else if (qt_file_exists(single))
            rc = ckpt_open_single(c, single);
        else if (qt_file_exists(index))
            rc = ckpt_open_index(c, index, path);
        else
            rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                         "%s: folder has neither model.safetensors nor model.safetensors.index.json", path);
        free(single);
        free(index);
    } else if (ends_with(path, ".index.json")) {
        const char *slash = strrchr(path, '/');
        char *dir = slash ? strndup(path, (size_t)(slash - path) + 1) : strdup(".");
        rc = dir ? ckpt_open_index(c, path, dir) : qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        free(dir);
    } else {
        rc = ckpt_open_single(c, path);
    }
    if (rc) {
        qt_ckpt_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

void qt_ckpt_close(qt_ckpt *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n_files; i++) qt_st_close(c->files[i]);
    free(c->files);
    free(c->tensors);
    free(c);
}

size_t qt_ckpt_count(const qt_ckpt *c) { return c ? c->n : 0; }

const qt_st_tensor *qt_ckpt_at(const qt_ckpt *c, size_t i)
{
    return c && i < c->n ? c->tensors[i] : NULL;
}

const qt_st_tensor *qt_ckpt_find(const qt_ckpt *c, const char *name)
{
    if (!c || !name) return NULL;
    qt_st_tensor key = {.name = name};
    const qt_st_tensor *kp = &key;
    const qt_st_tensor *const *hit = bsearch(&kp, c->tensors, c->n, sizeof *c->tensors, cmp_tensor_ptr_name);
    return hit ? *hit : NULL;
}

size_t qt_ckpt_file_count(const qt_ckpt *c) { return c ? c->n_files : 0; }

const qt_st_file *qt_ckpt_file_at(const qt_ckpt *c, size_t i)
{
    return c && i < c->n_files ? c->files[i] : NULL;
}

/* --------------------------------------------------------------- writer */

typedef struct w_entry {
    char *name;
    const st_dtype *dt;
    int ndim;
    int64_t shape[QTOOL_MAX_DIMS];
    uint64_t nbytes;
    void *data; /* qt_alloc'd host copy */
} w_entry;

struct qt_st_writer {
    w_entry *e;
    size_t n, cap;
    json_t *names; /* set of names taken */
    json_t *meta;  /* key -> string */
};

qt_st_writer *qt_st_writer_new(void)
{
    qt_st_writer *w = calloc(1, sizeof *w);
    if (w) {
        w->names = json_object();
        w->meta = json_object();
    }
    if (!w || !w->names || !w->meta) {
        qt_st_writer_free(w);
        qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        return NULL;
    }
    return w;
}

void qt_st_writer_free(qt_st_writer *w)
{
    if (!w) return;
    for (size_t i = 0; i < w->n; i++) {
        free(w->e[i].name);
        qt_free(QTOOL_DEVICE_CPU, w->e[i].data);
    }
    free(w->e);
    json_decref(w->names);
    json_decref(w->meta);
    free(w);
}

static int valid_utf8(const char *s)
{
    json_t *j = json_string(s); /* jansson validates UTF-8 on construction */
    int ok = j != NULL;
    json_decref(j);
    return ok;
}

static int writer_add(qt_st_writer *w, const char *name, const st_dtype *dt, int ndim,
                      const int64_t *shape, const void *data, int64_t given_bytes, int device)
{
    char nb[160], shb[160];
    if (!w || !name) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: NULL argument");
    if (!valid_utf8(name))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor name '%s' is not valid UTF-8",
                       clean(nb, sizeof nb, name));
    const char *cname = clean(nb, sizeof nb, name);
    if (strcmp(name, "__metadata__") == 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: '__metadata__' is reserved");
    if (json_object_get(w->names, name))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' added twice", cname);
    if (ndim < 0 || ndim > QTOOL_MAX_DIMS || (ndim && !shape))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' has %d dims", cname, ndim);
    int64_t numel = checked_numel(ndim, shape);
    if (numel < 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' has a bad shape %s",
                       cname, shape_text(shb, sizeof shb, ndim, shape));
    int64_t nbytes = dtype_bytes(dt, numel);
    if (nbytes < 0)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                       "safetensors writer: tensor '%s': shape %s of %s %s", cname,
                       shape_text(shb, sizeof shb, ndim, shape), dt->name,
                       nbytes == -1 ? "is not a whole number of bytes" : "has too many bytes");
    if (given_bytes >= 0 && given_bytes != nbytes)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                       "safetensors writer: tensor '%s': shape %s of %s needs %lld bytes, got %lld", cname,
                       shape_text(shb, sizeof shb, ndim, shape), dt->name, (long long)nbytes,
                       (long long)given_bytes);
    if (nbytes && !data)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' has no data", cname);
    if ((uint64_t)nbytes > SIZE_MAX)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' is too large", cname);

    if (w->n == w->cap) {
        size_t ncap = w->cap ? w->cap * 2 : 16;
        w_entry *ne = realloc(w->e, ncap * sizeof *ne);
        if (!ne) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        w->e = ne;
        w->cap = ncap;
    }
    w_entry *e = &w->e[w->n];
    memset(e, 0, sizeof *e);
    e->name = strdup(name);
    e->data = qt_alloc(QTOOL_DEVICE_CPU, (size_t)nbytes, QTOOL_MEM_OTHER);
    int rc = 0;
    if (!e->name || !e->data)
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "safetensors writer: out of memory for tensor '%s'", cname);
    else if (nbytes && device == QTOOL_DEVICE_CUDA)
        rc = qt_cuda_memcpy_d2h(e->data, data, (size_t)nbytes);
    else if (nbytes)
        memcpy(e->data, data, (size_t)nbytes);
    if (!rc && json_object_set_new(w->names, name, json_true()) != 0)
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    if (rc) {
        free(e->name);
        qt_free(QTOOL_DEVICE_CPU, e->data);
        return rc;
    }
    e->dt = dt;
    e->ndim = ndim;
    for (int i = 0; i < ndim; i++) e->shape[i] = shape[i];
    e->nbytes = (uint64_t)nbytes;
    w->n++;
    return 0;
}

int qt_st_writer_add(qt_st_writer *w, const char *name, const qtool_tensor *t)
{
    if (!t) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: NULL tensor");
    if (t->dtype < 0 || t->dtype >= QTOOL_DTYPE_COUNT || !qtool_dtype_size(t->dtype))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' has unknown dtype %d",
                       name ? name : "(null)", (int)t->dtype);
    if (t->device != QTOOL_DEVICE_CPU && t->device != QTOOL_DEVICE_CUDA)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: tensor '%s' has unknown device %d",
                       name ? name : "(null)", (int)t->device);
    /* Packed codes have no safetensors dtype of their own: bytes, as U8. */
    int qt = t->dtype == QTOOL_DTYPE_PACKED ? QTOOL_DTYPE_U8 : t->dtype;
    const st_dtype *dt = NULL;
    for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0] && !dt; i++)
        if (st_dtypes[i].qt == qt) dt = &st_dtypes[i];
    if (!dt) return qt_fail(QTOOL_ERR_INTERNAL, "safetensors writer: no name for dtype %d", qt);
    return writer_add(w, name, dt, t->ndim, t->shape, t->data, -1, t->device);
}

int qt_st_writer_add_raw(qt_st_writer *w, const char *name, const char *dtype_name, int ndim,
                         const int64_t *shape, const void *data, uint64_t nbytes)
{
    char db[64];
    const st_dtype *dt = dtype_name ? dtype_lookup(dtype_name) : NULL;
    if (!dt)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: unknown dtype '%s'",
                       dtype_name ? clean(db, sizeof db, dtype_name) : "(null)");
    if (nbytes > (uint64_t)INT64_MAX)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: %llu bytes is too large",
                       (unsigned long long)nbytes);
    return writer_add(w, name, dt, ndim, shape, data, (int64_t)nbytes, QTOOL_DEVICE_CPU);
}

int qt_st_writer_set_metadata(qt_st_writer *w, const char *key, const char *value)
{
    if (!w || !key || !value) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: NULL argument");
    json_t *v = json_string(value);
    if (!v || !valid_utf8(key)) {
        json_decref(v);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: metadata is not valid UTF-8");
    }
    if (json_object_set_new(w->meta, key, v) != 0) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    return 0;
}

/* The reference writer's order: larger elements first, then by name; with
 * the header padded to 8 bytes every tensor lands aligned. */
static int cmp_layout(const void *a, const void *b)
{
    const w_entry *x = *(const w_entry *const *)a, *y = *(const w_entry *const *)b;
    size_t ax = dtype_align(x->dt), ay = dtype_align(y->dt);
    if (ax != ay) return ax > ay ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct w_layout {
    w_entry **order;
    char *header; /* JSON text */
    size_t header_len, padded_len;
    uint64_t data_len;
} w_layout;

static void layout_free(w_layout *l)
{
    free(l->order);
    free(l->header);
}

static int layout(qt_st_writer *w, w_layout *l, const char *what)
{
    memset(l, 0, sizeof *l);
    l->order = malloc((w->n + 1) * sizeof *l->order);
    json_t *root = json_object();
    int rc = 0;
    if (!l->order || !root) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
        goto done;
    }
    for (size_t i = 0; i < w->n; i++) l->order[i] = &w->e[i];
    qsort(l->order, w->n, sizeof *l->order, cmp_layout);
    if (json_object_size(w->meta) && json_object_set(root, "__metadata__", w->meta) != 0) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
        goto done;
    }
    uint64_t off = 0;
    for (size_t i = 0; i < w->n; i++) {
        const w_entry *e = l->order[i];
        json_t *shape = json_array();
        for (int d = 0; shape && d < e->ndim; d++)
            if (json_array_append_new(shape, json_integer(e->shape[d])) != 0) {
                json_decref(shape);
                shape = NULL;
            }
        json_t *ent = shape ? json_pack("{s:s, s:o, s:[I, I]}", "dtype", e->dt->name, "shape", shape,
                                        "data_offsets", (json_int_t)off, (json_int_t)(off + e->nbytes))
                            : NULL;
        if (!ent || json_object_set_new(root, e->name, ent) != 0) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
            goto done;
        }
        off += e->nbytes;
    }
    l->data_len = off;
    l->header = json_dumps(root, JSON_COMPACT);
    if (!l->header) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
        goto done;
    }
    l->header_len = strlen(l->header);
    l->padded_len = (l->header_len + 7) & ~(size_t)7;
    if (l->padded_len > QT_ST_MAX_HEADER_BYTES)
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: header of %zu bytes is over the limit of %llu", what,
                     l->padded_len, QT_ST_MAX_HEADER_BYTES);
done:
    json_decref(root);
    if (rc) layout_free(l);
    return rc;
}

static void put_prefix(uint8_t prefix[8], uint64_t v)
{
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)(v >> (8 * i));
}

int qt_st_writer_commit(qt_st_writer *w, const char *path)
{
    if (!w || !path) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: NULL argument");
    w_layout l;
    int rc = layout(w, &l, path);
    if (rc) return rc;
    qt_atomic_file af;
    rc = qt_atomic_open(&af, path);
    if (rc) {
        layout_free(&l);
        return rc;
    }
    uint8_t prefix[8];
    put_prefix(prefix, l.padded_len);
    int ok = fwrite(prefix, 1, 8, af.fp) == 8 && fwrite(l.header, 1, l.header_len, af.fp) == l.header_len;
    for (size_t i = l.header_len; ok && i < l.padded_len; i++) ok = fputc(' ', af.fp) != EOF;
    for (size_t i = 0; ok && i < w->n; i++) {
        const w_entry *e = l.order[i];
        ok = !e->nbytes || fwrite(e->data, 1, (size_t)e->nbytes, af.fp) == e->nbytes;
    }
    layout_free(&l);
    if (!ok) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: write failed: %s", path, strerror(errno));
        qt_atomic_abort(&af);
        return rc;
    }
    return qt_atomic_commit(&af);
}

int qt_st_writer_to_memory(qt_st_writer *w, void **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    if (!w) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "safetensors writer: NULL argument");
    w_layout l;
    int rc = layout(w, &l, "safetensors writer");
    if (rc) return rc;
    uint64_t total = 8 + (uint64_t)l.padded_len + l.data_len;
    uint8_t *buf = total <= SIZE_MAX ? malloc((size_t)total) : NULL;
    if (!buf) {
        layout_free(&l);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "safetensors writer: out of memory for %llu bytes",
                       (unsigned long long)total);
    }
    put_prefix(buf, l.padded_len);
    memcpy(buf + 8, l.header, l.header_len);
    memset(buf + 8 + l.header_len, ' ', l.padded_len - l.header_len);
    uint8_t *p = buf + 8 + l.padded_len;
    for (size_t i = 0; i < w->n; i++) {
        if (l.order[i]->nbytes) memcpy(p, l.order[i]->data, (size_t)l.order[i]->nbytes);
        p += l.order[i]->nbytes;
    }
    layout_free(&l);
    *out = buf;
    *len = (size_t)total;
    return 0;
}
