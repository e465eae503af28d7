/* safetensors reader, checkpoint and writer: round trips of every dtype and
 * awkward shapes, malformed headers, sharded checkpoints, atomic commits. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "error.h"
#include "fsutil.h"
#include "safetensors.h"

/* ------------------------------------------------------------ helpers */

static char tmp_root[512];
static uint64_t rng_state;

static uint64_t rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void fill_random(void *p, size_t n)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++) b[i] = (uint8_t)(rng() >> 24);
}

static char *tmp_path(const char *name)
{
    static char buf[8][1024];
    static int k;
    k = (k + 1) % 8;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmp_root, name);
    return buf[k];
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static int setup_tmp(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmp_root, sizeof tmp_root, "%s/qt_st_test_XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmp_root) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    (void)state;
    return nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* A file image: 8-byte length, the header as given, `data_len` data bytes. */
static uint8_t *image(const char *header, size_t hlen, size_t data_len, size_t *len)
{
    *len = 8 + hlen + data_len;
    uint8_t *b = calloc(1, *len);
    assert_non_null(b);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    memcpy(b + 8, header, hlen);
    for (size_t i = 0; i < data_len; i++) b[8 + hlen + i] = (uint8_t)i;
    return b;
}

static void write_bytes(const char *path, const void *p, size_t n)
{
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(p, 1, n, fp), n);
    assert_int_equal(fclose(fp), 0);
}

static void write_st(const char *path, const char *header, size_t data_len)
{
    size_t len;
    uint8_t *b = image(header, strlen(header), data_len, &len);
    write_bytes(path, b, len);
    free(b);
}

static void expect_error(int rc, const char *prefix, const char *want)
{
    const char *msg = qt_last_error();
    if (rc == 0 || !strstr(msg, want) || strncmp(msg, prefix, strlen(prefix)) != 0 ||
        strchr(msg, '\n'))
        fail_msg("rc %d, message \"%s\", wanted prefix \"%s\" and \"%s\"", rc, msg, prefix, want);
}

/* ---------------------------------------------------------- round trip */

typedef struct shape_case {
    int ndim;
    int64_t shape[4];
} shape_case;

static const shape_case shapes[] = {
    {0, {0}},          {1, {0}},          {1, {7}},          {2, {3, 0}},      {2, {2, 3}},
    {3, {0, 5, 2}},    {4, {2, 3, 4, 5}}, {4, {1, 1, 1, 1}}, {2, {1, 33}},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

static const int qt_dtypes[] = {QTOOL_DTYPE_F32, QTOOL_DTYPE_F16, QTOOL_DTYPE_BF16, QTOOL_DTYPE_I8,
                                QTOOL_DTYPE_U8,  QTOOL_DTYPE_I16, QTOOL_DTYPE_I32,  QTOOL_DTYPE_I64,
                                QTOOL_DTYPE_F64, QTOOL_DTYPE_F8_E4M3};
static const char *const qt_dtype_names[] = {"F32", "F16", "BF16", "I8",  "U8",
                                             "I16", "I32", "I64",  "F64", "F8_E4M3"};
#define N_QT_DTYPES (sizeof qt_dtypes / sizeof qt_dtypes[0])

typedef struct raw_case {
    const char *dtype;
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
} raw_case;

static const raw_case raws[] = {
    {"BOOL", 1, {5}, 5},        {"U16", 2, {2, 3}, 12},    {"U32", 1, {3}, 12},
    {"U64", 0, {0}, 8},         {"F8_E5M2", 1, {4}, 4},    {"F8_E8M0", 1, {2}, 2},
    {"F8_E4M3FNUZ", 1, {1}, 1}, {"F8_E5M2FNUZ", 1, {0}, 0}, {"C64", 1, {3}, 24},
    {"F4", 2, {3, 2}, 3},       {"F6_E2M3", 1, {4}, 3},    {"F6_E3M2", 1, {8}, 6},
};
#define N_RAWS (sizeof raws / sizeof raws[0])

typedef struct expect_tensor {
    char name[64];
    const char *dtype;
    int qt; /* view dtype */
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
    uint8_t *data;
} expect_tensor;

static void check_tensor(const qt_st_tensor *t, const expect_tensor *e)
{
    assert_non_null(t);
    assert_string_equal(t->name, e->name);
    assert_string_equal(t->dtype_name, e->dtype);
    assert_int_equal(t->view.dtype, e->qt);
    assert_int_equal(t->view.device, QTOOL_DEVICE_CPU);
    assert_int_equal(t->ndim, e->ndim);
    for (int d = 0; d < e->ndim; d++) assert_int_equal(t->shape[d], e->shape[d]);
    assert_int_equal(t->nbytes, e->nbytes);
    if (e->qt == QTOOL_DTYPE_PACKED) {
        assert_int_equal(t->view.ndim, 1);
        assert_int_equal(t->view.shape[0], (int64_t)e->nbytes);
    } else {
        assert_int_equal(t->view.ndim, e->ndim);
        for (int d = 0; d < e->ndim; d++) assert_int_equal(t->view.shape[d], e->shape[d]);
        assert_int_equal((uintptr_t)t->view.data % qtool_dtype_size(e->qt), 0);
    }
    if (e->nbytes) assert_memory_equal(t->view.data, e->data, e->nbytes);
}

static void test_round_trip_all_dtypes(void **state)
{
    (void)state;
    size_t n = N_QT_DTYPES * N_SHAPES + N_RAWS + 1;
    expect_tensor *ex = calloc(n, sizeof *ex);
    assert_non_null(ex);
    qt_st_writer *w = qt_st_writer_new();
    assert_non_null(w);
    size_t k = 0;
    for (size_t d = 0; d < N_QT_DTYPES; d++) {
        for (size_t s = 0; s < N_SHAPES; s++, k++) {
            expect_tensor *e = &ex[k];
            snprintf(e->name, sizeof e->name, "layer.%zu.%s.w", s, qt_dtype_names[d]);
            e->dtype = qt_dtype_names[d];
            e->qt = qt_dtypes[d];
            e->ndim = shapes[s].ndim;
            memcpy(e->shape, shapes[s].shape, sizeof e->shape);
            qtool_tensor t = {.dtype = e->qt, .device = QTOOL_DEVICE_CPU, .ndim = e->ndim};
            memcpy(t.shape, e->shape, sizeof t.shape);
            e->nbytes = (uint64_t)qtool_tensor_numel(&t) * qtool_dtype_size(e->qt);
            e->data = malloc(e->nbytes + 1);
            fill_random(e->data, e->nbytes);
            t.data = e->data;
            assert_int_equal(qt_st_writer_add(w, e->name, &t), 0);
        }
    }
    for (size_t r = 0; r < N_RAWS; r++, k++) {
        expect_tensor *e = &ex[k];
        snprintf(e->name, sizeof e->name, "raw.%s", raws[r].dtype);
        e->dtype = raws[r].dtype;
        e->qt = QTOOL_DTYPE_PACKED;
        e->ndim = raws[r].ndim;
        memcpy(e->shape, raws[r].shape, sizeof e->shape);
        e->nbytes = raws[r].nbytes;
        e->data = malloc(e->nbytes + 1);
        fill_random(e->data, e->nbytes);
        assert_int_equal(qt_st_writer_add_raw(w, e->name, e->dtype, e->ndim, e->shape, e->data, e->nbytes), 0);
    }
    { /* packed codes go out as U8 with their byte shape */
        expect_tensor *e = &ex[k++];
        snprintf(e->name, sizeof e->name, "packed.codes");
        e->dtype = "U8";
        e->qt = QTOOL_DTYPE_U8;
        e->ndim = 2;
        e->shape[0] = 4;
        e->shape[1] = 3;
        e->nbytes = 12;
        e->data = malloc(12);
        fill_random(e->data, 12);
        qtool_tensor t = {.data = e->data, .dtype = QTOOL_DTYPE_PACKED, .ndim = 2, .shape = {4, 3}};
        assert_int_equal(qt_st_writer_add(w, e->name, &t), 0);
    }
    assert_int_equal(qt_st_writer_set_metadata(w, "format", "pt"), 0);
    assert_int_equal(qt_st_writer_set_metadata(w, "note", "h\xc3\xa9llo \xe2\x9c\x93 \"quoted\"\n"), 0);
    assert_int_equal(qt_st_writer_set_metadata(w, "empty", ""), 0);
    assert_int_equal(qt_st_writer_set_metadata(w, "format", "np"), 0); /* replaces */

    const char *path = tmp_path("all.safetensors");
    assert_int_equal(qt_st_writer_commit(w, path), 0);

    qt_st_file *f = NULL;
    assert_int_equal(qt_st_open(path, &f), 0);
    assert_int_equal(qt_st_count(f), n);
    for (size_t i = 0; i < n; i++) check_tensor(qt_st_find(f, ex[i].name), &ex[i]);
    for (size_t i = 1; i < n; i++) assert_true(strcmp(qt_st_at(f, i - 1)->name, qt_st_at(f, i)->name) < 0);
    assert_null(qt_st_at(f, n));
    assert_null(qt_st_find(f, "missing"));
    assert_string_equal(qt_st_metadata(f, "format"), "np");
    assert_string_equal(qt_st_metadata(f, "note"), "h\xc3\xa9llo \xe2\x9c\x93 \"quoted\"\n");
    assert_string_equal(qt_st_metadata(f, "empty"), "");
    assert_null(qt_st_metadata(f, "nope"));
    assert_int_equal(qt_st_metadata_count(f), 3);
    const char *mk, *mv;
    qt_st_metadata_at(f, 0, &mk, &mv);
    assert_string_equal(mk, "empty");

    /* The file on disk: header length a multiple of 8, padded with spaces,
     * and the same bytes as the in-memory image. */
    char *disk;
    size_t disk_len;
    assert_int_equal(qt_read_file(path, 1u << 30, &disk, &disk_len), 0);
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) hlen |= (uint64_t)(uint8_t)disk[i] << (8 * i);
    assert_int_equal(hlen % 8, 0);
    assert_true(disk[8] == '{');
    void *mem;
    size_t mem_len;
    assert_int_equal(qt_st_writer_to_memory(w, &mem, &mem_len), 0);
    assert_int_equal(mem_len, disk_len);
    assert_memory_equal(mem, disk, disk_len);
    qt_st_file *g = NULL;
    assert_int_equal(qt_st_parse(mem, mem_len, "mem", &g), 0);
    assert_int_equal(qt_st_count(g), n);
    for (size_t i = 0; i < n; i++) check_tensor(qt_st_find(g, ex[i].name), &ex[i]);
    /* In place: no tensor of an aligned file needed a copy. Empty ones
     * point at a shared aligned non-NULL address. */
    for (size_t i = 0; i < n; i++) {
        const uint8_t *p = qt_st_at(g, i)->view.data;
        assert_non_null(p);
        if (qt_st_at(g, i)->nbytes)
            assert_true(p >= (const uint8_t *)mem && p < (const uint8_t *)mem + mem_len);
    }
    qt_st_close(g);
    free(mem);
    free(disk);

    /* Committing again over the existing file replaces it atomically. */
    assert_int_equal(qt_st_writer_commit(w, path), 0);
    qt_st_close(f);
    assert_int_equal(qt_st_open(path, &f), 0);
    assert_int_equal(qt_st_count(f), n);
    qt_st_close(f);

    qt_st_writer_free(w);
    for (size_t i = 0; i < n; i++) free(ex[i].data);
    free(ex);
}

/* ---------------------------------------------------- valid edge files */

static void test_accepts_edge_cases(void **state)
{
    (void)state;
    qt_st_file *f = NULL;
    size_t len;
    uint8_t *b;

    b = image("{}", 2, 0, &len);
    assert_int_equal(qt_st_parse(b, len, "e", &f), 0);
    assert_int_equal(qt_st_count(f), 0);
    qt_st_close(f);
    free(b);

    /* Leading/trailing whitespace, unknown keys, null metadata, gaps,
     * trailing data, empty tensors anywhere, a scalar. */
    const char *h = "  {\"__metadata__\":null,"
                    "\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]},"
                    "\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"extra\":[1]},"
                    "\"s\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[4,6]},"
                    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[1,1]}}    ";
    b = image(h, strlen(h), 10, &len);
    assert_int_equal(qt_st_parse(b, len, "e", &f), 0);
    assert_int_equal(qt_st_count(f), 4);
    assert_int_equal(qt_st_metadata_count(f), 0);
    const qt_st_tensor *s = qt_st_find(f, "s");
    assert_int_equal(s->view.ndim, 0);
    assert_int_equal(s->nbytes, 2);
    int16_t sv;
    memcpy(&sv, s->view.data, 2);
    assert_int_equal(sv, (int16_t)(4 | 5 << 8));
    assert_int_equal(qt_st_find(f, "a")->nbytes, 2);
    assert_int_equal(qt_st_find(f, "e")->nbytes, 0);
    qt_st_close(f);
    free(b);

    /* A header whose length is not a multiple of 8 and an odd offset: the
     * F32 data sits misaligned in the file and comes back as an aligned
     * copy with the right values. */
    const char *hm = "{\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                     "\"f\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[1,9]},"
                     "\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[9,17]}}";
    size_t hl = strlen(hm) | 1;
    char *hp = malloc(hl + 1);
    memset(hp, ' ', hl);
    memcpy(hp, hm, strlen(hm));
    float fv[2] = {1.5f, -2.25f};
    double dv = 3.125;
    b = image(hp, hl, 17, &len);
    memcpy(b + 8 + hl + 1, fv, 8);
    memcpy(b + 8 + hl + 9, &dv, 8);
    free(hp);
    assert_int_equal(qt_st_parse(b, len, "mis", &f), 0);
    const qt_st_tensor *ft = qt_st_find(f, "f");
    assert_int_equal((uintptr_t)ft->view.data % 4, 0);
    assert_true(((const float *)ft->view.data)[0] == 1.5f);
    assert_true(((const float *)ft->view.data)[1] == -2.25f);
    const qt_st_tensor *dt = qt_st_find(f, "d");
    assert_int_equal((uintptr_t)dt->view.data % 8, 0);
    assert_true(*(const double *)dt->view.data == 3.125);
    qt_st_close(f);
    free(b);
}

/* ------------------------------------------------------ malformed input */

typedef struct bad_case {
    const char *header;
    size_t data_len;
    const char *want;
} bad_case;

#define T(dt, sh, off) "{\"dtype\":" dt ",\"shape\":" sh ",\"data_offsets\":" off "}"

static const bad_case bad_cases[] = {
    {"", 0, "header is not valid JSON"},
    {"{", 0, "header is not valid JSON"},
    {"{\"a\":1} x", 0, "header is not valid JSON"},
    {"\"str\"", 0, "header is not valid JSON"},
    {"[]", 0, "header is not a JSON object"},
    {"[{\"a\":" T("\"U8\"", "[1]", "[0,1]") "}]", 1, "header is not a JSON object"},
    {"{\"a\":5}", 0, "tensor 'a': entry is not a JSON object"},
    {"{\"a\":" T("\"F33\"", "[1]", "[0,4]") "}", 4, "tensor 'a': unknown dtype 'F33'"},
    {"{\"a\":" T("\"f32\"", "[1]", "[0,4]") "}", 4, "unknown dtype 'f32'"},
    {"{\"a\":" T("5", "[1]", "[0,4]") "}", 4, "tensor 'a': dtype is missing or not a string"},
    {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype is missing"},
    {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': shape is missing or not an array"},
    {"{\"a\":" T("\"F32\"", "4", "[0,4]") "}", 4, "shape is missing or not an array"},
    {"{\"a\":" T("\"F32\"", "[-1]", "[0,4]") "}", 4, "tensor 'a': shape[0] is negative (-1)"},
    {"{\"a\":" T("\"F32\"", "[1, -3]", "[0,4]") "}", 4, "shape[1] is negative"},
    {"{\"a\":" T("\"F32\"", "[1.5]", "[0,4]") "}", 4, "shape[0] is not an integer"},
    {"{\"a\":" T("\"F32\"", "[\"1\"]", "[0,4]") "}", 4, "shape[0] is not an integer"},
    {"{\"a\":" T("\"F32\"", "[1,1,1,1,1]", "[0,4]") "}", 4, "tensor 'a': shape has 5 dims; at most 4"},
    {"{\"a\":" T("\"U8\"", "[4611686018427387904,4]", "[0,4]") "}", 4, "has too many elements"},
    {"{\"a\":" T("\"U8\"", "[3037000500,3037000500,2]", "[0,4]") "}", 4, "has too many elements"},
    {"{\"a\":" T("\"F64\"", "[2305843009213693952]", "[0,4]") "}", 4, "has too many bytes"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': data_offsets must be [begin, end]"},
    {"{\"a\":" T("\"F32\"", "[1]", "[0]") "}", 4, "data_offsets must be [begin, end]"},
    {"{\"a\":" T("\"F32\"", "[1]", "[0,4,8]") "}", 8, "data_offsets must be [begin, end]"},
    {"{\"a\":" T("\"F32\"", "[1]", "{}") "}", 8, "data_offsets must be [begin, end]"},
    {"{\"a\":" T("\"F32\"", "[1]", "[-4,0]") "}", 4, "data_offsets[0] is not a non-negative integer"},
    {"{\"a\":" T("\"F32\"", "[1]", "[0,\"4\"]") "}", 4, "data_offsets[1] is not a non-negative integer"},
    {"{\"a\":" T("\"F32\"", "[1]", "[0,4.0]") "}", 4, "data_offsets[1] is not a non-negative integer"},
    {"{\"x.weight\":" T("\"U8\"", "[1]", "[10,4]") "}", 16,
     "tensor 'x.weight': data_offsets [10, 4] end before begin"},
    {"{\"a\":" T("\"F32\"", "[25]", "[0,100]") "}", 8, "data_offsets [0, 100] go past the 8 bytes of data"},
    {"{\"a\":" T("\"U8\"", "[0]", "[9,9]") "}", 8, "go past the 8 bytes of data"},
    {"{\"a\":" T("\"U8\"", "[1]", "[0,18446744073709551615]") "}", 8, "header is not valid JSON"},
    {"{\"a\":" T("\"U8\"", "[1]", "[9223372036854775807,9223372036854775807]") "}", 8, "go past"},
    {"{\"a\":" T("\"F32\"", "[2]", "[0,4]") "}", 8,
     "tensor 'a': shape [2] of F32 needs 8 bytes but data_offsets [0, 4] hold 4"},
    {"{\"a\":" T("\"BF16\"", "[2,3]", "[0,4]") "}", 8, "shape [2, 3] of BF16 needs 12 bytes"},
    {"{\"a\":" T("\"U8\"", "[]", "[0,0]") "}", 8, "needs 1 bytes"},
    {"{\"a\":" T("\"F4\"", "[3]", "[0,2]") "}", 8, "tensor 'a': 3 elements of F4 do not fill whole bytes"},
    {"{\"a\":" T("\"F6_E2M3\"", "[3]", "[0,3]") "}", 8, "do not fill whole bytes"},
    {"{\"a\":" T("\"U8\"", "[8]", "[0,8]") ",\"b\":" T("\"U8\"", "[8]", "[4,12]") "}", 12,
     "tensors 'a' [0, 8] and 'b' [4, 12] overlap"},
    {"{\"a\":" T("\"U8\"", "[4]", "[0,4]") ",\"b\":" T("\"U8\"", "[4]", "[0,4]") "}", 4, "overlap"},
    {"{\"a\":" T("\"U8\"", "[12]", "[0,12]") ",\"b\":" T("\"U8\"", "[1]", "[5,6]") "}", 12, "overlap"},
    {"{\"c\":" T("\"U8\"", "[2]", "[6,8]") ",\"a\":" T("\"U8\"", "[3]", "[0,3]") ",\"b\":" T("\"U8\"", "[2]",
                                                                                           "[2,4]") "}",
     8, "tensors 'a' [0, 3] and 'b' [2, 4] overlap"},
    {"{\"a\":" T("\"U8\"", "[1]", "[0,1]") ",\"a\":" T("\"U8\"", "[1]", "[1,2]") "}", 2, "duplicate object key"},
    {"{\"__metadata__\":[],\"a\":" T("\"U8\"", "[1]", "[0,1]") "}", 1, "__metadata__ is not a JSON object"},
    {"{\"__metadata__\":\"x\"}", 0, "__metadata__ is not a JSON object"},
    {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ value of 'k' is not a string"},
    {"{\"__metadata__\":{\"k\":null}}", 0, "__metadata__ value of 'k' is not a string"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "duplicate object key"},
    {"{\"a\\nb\":5}", 0, "tensor 'a?b': entry is not a JSON object"},
    {"{\"a\":\"\xff\"}", 0, "header is not valid JSON"},
    {"{\"a\\u0000b\":5}", 0, "header is not valid JSON"},
};

static void test_rejects_malformed_headers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        size_t len;
        const bad_case *c = &bad_cases[i];
        uint8_t *b = image(c->header, strlen(c->header), c->data_len, &len);
        qt_st_file *f = (qt_st_file *)1;
        qt_clear_error();
        int rc = qt_st_parse(b, len, "bad.safetensors", &f);
        if (rc != QTOOL_ERR_FORMAT || f != NULL)
            fail_msg("case %zu (%s): rc %d, message \"%s\"", i, c->header, rc, qt_last_error());
        if (!strstr(qt_last_error(), c->want))
            fail_msg("case %zu (%s): message \"%s\" lacks \"%s\"", i, c->header, qt_last_error(), c->want);
        expect_error(rc, "bad.safetensors: ", c->want);
        free(b);
    }
}

static void test_rejects_bad_framing(void **state)
{
    (void)state;
    qt_st_file *f = NULL;
    uint8_t small[7] = {1, 0, 0, 0, 0, 0, 0};
    for (size_t n = 0; n < sizeof small; n++)
        expect_error(qt_st_parse(small, n, "t.st", &f), "t.st: ", "too short for the 8-byte header length");

    size_t len;
    uint8_t *b = image("{}", 2, 0, &len);
    b[0] = 3; /* says 3 header bytes; 2 follow */
    expect_error(qt_st_parse(b, len, "t.st", &f), "t.st: ", "header length 3 exceeds the 2 bytes");
    b[0] = 0xff, b[7] = 0xff;
    expect_error(qt_st_parse(b, len, "t.st", &f), "t.st: ", "is over the limit of 100000000 bytes");
    memset(b, 0, 8);
    b[0] = 0x01, b[1] = 0xe1, b[2] = 0xf5, b[3] = 0x05; /* 100000001 */
    expect_error(qt_st_parse(b, len, "t.st", &f), "t.st: ", "header length 100000001 is over the limit");
    free(b);

    b = image("{}\0   ", 6, 0, &len);
    expect_error(qt_st_parse(b, len, "t.st", &f), "t.st: ", "header contains a NUL byte at header byte 2");
    free(b);

    /* Deep nesting stays within the JSON parser's depth limit. */
    size_t depth = 100000;
    char *deep = malloc(2 * depth + 1);
    memset(deep, '[', depth);
    memset(deep + depth, ']', depth);
    b = image(deep, 2 * depth, 0, &len);
    expect_error(qt_st_parse(b, len, "t.st", &f), "t.st: ", "header is not valid JSON");
    free(b);
    free(deep);

    /* Files: truncated, empty, a folder, missing. */
    const char *p = tmp_path("short.safetensors");
    write_bytes(p, "\x10\0\0\0", 4);
    expect_error(qt_st_open(p, &f), p, "too short");
    write_bytes(p, "", 0);
    expect_error(qt_st_open(p, &f), p, "file is 0 bytes");
    write_st(p, "{\"a\":" T("\"F32\"", "[4]", "[0,16]") "}", 12); /* cut short */
    expect_error(qt_st_open(p, &f), p, "data_offsets [0, 16] go past the 12 bytes of data");
    expect_error(qt_st_open(tmp_root, &f), tmp_root, "not a regular file");
    expect_error(qt_st_open(tmp_path("nope.safetensors"), &f), tmp_root, "cannot open");
    assert_null(f);
}

/* ---------------------------------------------------------- large file */

/* A sparse file past 4 GiB: 64-bit sizes and offsets end to end, without
 * writing gigabytes. */
static void test_large_sparse_file(void **state)
{
    (void)state;
    const uint64_t big = 5000000000ull;
    char header[512];
    snprintf(header, sizeof header,
             "{\"big\":{\"dtype\":\"U8\",\"shape\":[%llu],\"data_offsets\":[0,%llu]},"
             "\"tail\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[%llu,%llu]}}",
             (unsigned long long)big, (unsigned long long)big, (unsigned long long)big,
             (unsigned long long)big + 8);
    size_t hl = (strlen(header) + 7) & ~(size_t)7;
    memset(header + strlen(header), ' ', hl - strlen(header));
    const char *p = tmp_path("big.safetensors");
    int fd = open(p, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    assert_true(fd >= 0);
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    float tail[2] = {42.0f, -7.5f};
    off_t tail_at = (off_t)(8 + hl + big);
    if (ftruncate(fd, tail_at + 8) != 0) {
        close(fd);
        unlink(p);
        skip();
    }
    assert_int_equal(pwrite(fd, prefix, 8, 0), 8);
    assert_int_equal(pwrite(fd, header, hl, 8), (ssize_t)hl);
    assert_int_equal(pwrite(fd, tail, 8, tail_at), 8);
    uint8_t mark = 0x5a;
    assert_int_equal(pwrite(fd, &mark, 1, (off_t)(8 + hl + big - 1)), 1);
    close(fd);

    qt_ckpt *c = NULL;
    assert_int_equal(qt_ckpt_open(p, &c), 0);
    const qt_st_tensor *b = qt_ckpt_find(c, "big");
    assert_int_equal(b->nbytes, big);
    assert_int_equal(b->view.shape[0], (int64_t)big);
    assert_int_equal(((const uint8_t *)b->view.data)[big - 1], 0x5a);
    assert_int_equal(((const uint8_t *)b->view.data)[0], 0);
    const qt_st_tensor *t = qt_ckpt_find(c, "tail");
    assert_true(((const float *)t->view.data)[0] == 42.0f);
    assert_true(((const float *)t->view.data)[1] == -7.5f);
    assert_int_equal((const uint8_t *)t->view.data - (const uint8_t *)b->view.data, (ptrdiff_t)big);
    qt_ckpt_close(c);
    unlink(p);
}

/* ---------------------------------------------------------------- writer */

static int count_entries(const char *dir, const char *contains)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, contains)) n++;
    closedir(d);
    return n;
}

static void test_writer_errors(void **state)
{
    (void)state;
    qt_st_writer *w = qt_st_writer_new();
    float v[6] = {1, 2, 3, 4, 5, 6};
    qtool_tensor t = {.data = v, .dtype = QTOOL_DTYPE_F32, .ndim = 2, .shape = {2, 3}};
    assert_int_equal(qt_st_writer_add(w, "w", &t), 0);
    expect_error(qt_st_writer_add(w, "w", &t), "safetensors writer: ", "tensor 'w' added twice");
    expect_error(qt_st_writer_add(w, "__metadata__", &t), "safetensors writer: ", "reserved");
    expect_error(qt_st_writer_add(w, "bad\xff", &t), "safetensors writer: ", "not valid UTF-8");
    qtool_tensor bad = t;
    bad.dtype = 99;
    expect_error(qt_st_writer_add(w, "x", &bad), "safetensors writer: ", "unknown dtype 99");
    bad = t;
    bad.ndim = 5;
    expect_error(qt_st_writer_add(w, "x", &bad), "safetensors writer: ", "has 5 dims");
    bad = t;
    bad.shape[1] = -3;
    expect_error(qt_st_writer_add(w, "x", &bad), "safetensors writer: ", "bad shape [2, -3]");
    bad = t;
    bad.data = NULL;
    expect_error(qt_st_writer_add(w, "x", &bad), "safetensors writer: ", "has no data");
    bad = t;
    bad.device = 7;
    expect_error(qt_st_writer_add(w, "x", &bad), "safetensors writer: ", "unknown device 7");
    int64_t sh[1] = {3};
    expect_error(qt_st_writer_add_raw(w, "x", "F4", 1, sh, v, 2), "safetensors writer: ",
                 "not a whole number of bytes");
    expect_error(qt_st_writer_add_raw(w, "x", "U32", 1, sh, v, 8), "safetensors writer: ",
                 "needs 12 bytes, got 8");
    expect_error(qt_st_writer_add_raw(w, "x", "Q4_K", 1, sh, v, 8), "safetensors writer: ",
                 "unknown dtype 'Q4_K'");
    expect_error(qt_st_writer_set_metadata(w, "k", "\xc3"), "safetensors writer: ", "not valid UTF-8");
    /* Zero-size and empty-named tensors are fine. */
    qtool_tensor empty = {.data = NULL, .dtype = QTOOL_DTYPE_I64, .ndim = 1, .shape = {0}};
    assert_int_equal(qt_st_writer_add(w, "", &empty), 0);

    /* A commit that fails leaves nothing behind: a missing folder... */
    char dir[600];
    snprintf(dir, sizeof dir, "%s/wdir", tmp_root);
    assert_int_equal(mkdir(dir, 0755), 0);
    char target[700];
    snprintf(target, sizeof target, "%s/missing/out.safetensors", dir);
    expect_error(qt_st_writer_commit(w, target), target, "cannot create");
    assert_int_equal(count_entries(dir, ""), 0);
    /* ...a target that is a folder (fails at the rename, after writing)... */
    snprintf(target, sizeof target, "%s/taken", dir);
    assert_int_equal(mkdir(target, 0755), 0);
    int rc = qt_st_writer_commit(w, target);
    assert_int_not_equal(rc, 0);
    assert_non_null(strstr(qt_last_error(), "taken"));
    assert_int_equal(count_entries(dir, ".tmp"), 0);
    assert_int_equal(count_entries(dir, ""), 1);
    /* ...and a good commit leaves exactly the file. */
    snprintf(target, sizeof target, "%s/ok.safetensors", dir);
    assert_int_equal(qt_st_writer_commit(w, target), 0);
    assert_int_equal(count_entries(dir, ".tmp"), 0);
    assert_int_equal(count_entries(dir, ""), 2);
    qt_st_file *f = NULL;
    assert_int_equal(qt_st_open(target, &f), 0);
    assert_int_equal(qt_st_count(f), 2);
    assert_memory_equal(qt_st_find(f, "w")->view.data, v, sizeof v);
    assert_int_equal(qt_st_find(f, "")->nbytes, 0);
    qt_st_close(f);
    qt_st_writer_free(w);
    qt_st_writer_free(NULL);
}

/* ------------------------------------------------------------ checkpoint */

static void make_dir(const char *name)
{
    assert_int_equal(mkdir(tmp_path(name), 0755), 0);
}

static void write_index(const char *dir, const char *json)
{
    char p[700];
    snprintf(p, sizeof p, "%s/%s/model.safetensors.index.json", tmp_root, dir);
    write_bytes(p, json, strlen(json));
}

static void write_shard(const char *dir, const char *file, const char *const *names, size_t n)
{
    qt_st_writer *w = qt_st_writer_new();
    for (size_t i = 0; i < n; i++) {
        uint16_t v[3];
        fill_random(v, sizeof v);
        qtool_tensor t = {.data = v, .dtype = QTOOL_DTYPE_BF16, .ndim = 1, .shape = {3}};
        assert_int_equal(qt_st_writer_add(w, names[i], &t), 0);
    }
    char p[700];
    snprintf(p, sizeof p, "%s/%s/%s", tmp_root, dir, file);
    assert_int_equal(qt_st_writer_commit(w, p), 0);
    qt_st_writer_free(w);
}

static const char *const shard1[] = {"model.embed.weight", "model.layers.0.w"};
static const char *const shard2[] = {"model.layers.1.w", "lm_head.weight", "extra.buffer"};
#define S1 "model-00001-of-00002.safetensors"
#define S2 "model-00002-of-00002.safetensors"
#define GOOD_MAP                                                                                   \
    "\"model.embed.weight\":\"" S1 "\",\"model.layers.0.w\":\"" S1 "\",\"model.layers.1.w\":\"" S2 \
    "\",\"lm_head.weight\":\"" S2 "\""

static void test_checkpoint_sharded(void **state)
{
    (void)state;
    make_dir("sharded");
    write_shard("sharded", S1, shard1, 2);
    write_shard("sharded", S2, shard2, 3);
    write_index("sharded", "{\"metadata\":{\"total_size\":30},\"weight_map\":{" GOOD_MAP "}}");

    qt_ckpt *c = NULL;
    assert_int_equal(qt_ckpt_open(tmp_path("sharded"), &c), 0);
    /* Every tensor of both shards, the unmapped buffer included, by name. */
    assert_int_equal(qt_ckpt_count(c), 5);
    assert_int_equal(qt_ckpt_file_count(c), 2);
    assert_string_equal(qt_ckpt_at(c, 0)->name, "extra.buffer");
    assert_string_equal(qt_ckpt_at(c, 4)->name, "model.layers.1.w");
    assert_null(qt_ckpt_at(c, 5));
    const qt_st_tensor *t = qt_ckpt_find(c, "lm_head.weight");
    assert_non_null(t);
    assert_int_equal(t->view.dtype, QTOOL_DTYPE_BF16);
    assert_ptr_equal(t, qt_st_find(qt_ckpt_file_at(c, 1), "lm_head.weight"));
    assert_non_null(qt_ckpt_find(c, "model.embed.weight"));
    assert_null(qt_ckpt_find(c, "model.embed"));
    qt_ckpt_close(c);

    /* The index file itself, and a folder with a trailing slash. */
    char p[700];
    snprintf(p, sizeof p, "%s/sharded/model.safetensors.index.json", tmp_root);
    assert_int_equal(qt_ckpt_open(p, &c), 0);
    assert_int_equal(qt_ckpt_count(c), 5);
    qt_ckpt_close(c);
    snprintf(p, sizeof p, "%s/sharded/", tmp_root);
    assert_int_equal(qt_ckpt_open(p, &c), 0);
    qt_ckpt_close(c);

    /* One file: a folder with model.safetensors (preferred over an index),
     * or the file itself. */
    write_shard("sharded", "model.safetensors", shard1, 1);
    assert_int_equal(qt_ckpt_open(tmp_path("sharded"), &c), 0);
    assert_int_equal(qt_ckpt_count(c), 1);
    qt_ckpt_close(c);
    assert_int_equal(qt_ckpt_open(tmp_path("sharded/" S2), &c), 0);
    assert_int_equal(qt_ckpt_count(c), 3);
    assert_int_equal(qt_ckpt_file_count(c), 1);
    qt_ckpt_close(c);
}

typedef struct bad_index {
    const char *json;
    const char *want;
} bad_index;

static const bad_index bad_indexes[] = {
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"../" S1 "\"}}", "shard '../" S1 "' of tensor 'x' is not a plain file name"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"sub/a.safetensors\"}}", "is not a plain file name"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"/etc/passwd\"}}", "is not a plain file name"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"..\"}}", "is not a plain file name"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"\"}}", "is not a plain file name"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":\"a\\nb\"}}", "shard 'a?b'"},
    {"{\"weight_map\":{" GOOD_MAP ",\"x\":7}}", "weight_map entry of 'x' is not a string"},
    {"{\"weight_map\":{" GOOD_MAP ",\"model.gone\":\"" S1 "\"}}",
     "tensor 'model.gone' is mapped to " S1 ", which does not hold it"},
    {"{\"weight_map\":{\"model.embed.weight\":\"" S2 "\"}}", "which does not hold it"},
    {"{\"weight_map\":{" GOOD_MAP ",\"y\":\"missing.safetensors\"}}", "missing.safetensors: cannot open"},
    {"{\"weight_map\":{" GOOD_MAP ",\"lm_head.weight\":\"" S2 "\"}}", "duplicate object key"},
    {"{\"weight_map\":{}}", "weight_map lists no tensors"},
    {"{\"weights\":{}}", "weight_map is missing or not a JSON object"},
    {"{\"weight_map\":[]}", "weight_map is missing or not a JSON object"},
    {"[]", "weight_map is missing or not a JSON object"},
    {"{\"weight_map\":", "not valid JSON"},
    {"{\"weight_map\":{\"model.layers.0.w\":\"" S1 "\",\"a\":\"dup.safetensors\"}}", "is in both"},
    {"{\"weight_map\":{\"b\":\"bad.safetensors\"}}", "bad.safetensors: tensor 'b': shape[0] is negative"},
};

static void test_checkpoint_bad(void **state)
{
    (void)state;
    make_dir("bad");
    write_shard("bad", S1, shard1, 2);
    write_shard("bad", S2, shard2, 3);
    static const char *const dup[] = {"model.embed.weight", "a"};
    write_shard("bad", "dup.safetensors", dup, 2);
    write_st(tmp_path("bad/bad.safetensors"), "{\"b\":" T("\"U8\"", "[-1]", "[0,1]") "}", 1);
    char idx[700];
    snprintf(idx, sizeof idx, "%s/bad/model.safetensors.index.json", tmp_root);
    for (size_t i = 0; i < sizeof bad_indexes / sizeof bad_indexes[0]; i++) {
        write_index("bad", bad_indexes[i].json);
        qt_ckpt *c = (qt_ckpt *)1;
        int rc = qt_ckpt_open(tmp_path("bad"), &c);
        if (rc == 0 || c != NULL || !strstr(qt_last_error(), bad_indexes[i].want) ||
            strchr(qt_last_error(), '\n'))
            fail_msg("index %zu: rc %d, message \"%s\", wanted \"%s\"", i, rc, qt_last_error(),
                     bad_indexes[i].want);
        /* Messages about the index name the index; shard problems name the shard. */
        assert_non_null(strstr(qt_last_error(), "/bad/"));
    }
    /* The "is in both" message names the two shard files. */
    write_index("bad", bad_indexes[16].json);
    qt_ckpt *c = NULL;
    expect_error(qt_ckpt_open(tmp_path("bad"), &c), idx,
                 "tensor 'model.embed.weight' is in both");
    assert_non_null(strstr(qt_last_error(), "dup.safetensors"));
    assert_non_null(strstr(qt_last_error(), S1));

    make_dir("empty");
    expect_error(qt_ckpt_open(tmp_path("empty"), &c), tmp_path("empty"),
                 "neither model.safetensors nor model.safetensors.index.json");
    expect_error(qt_ckpt_open(tmp_path("nothing-here"), &c), tmp_path("nothing-here"), "cannot open");
    assert_null(c);
}

int main(void)
{
    rng_state = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
    if (!rng_state) rng_state = 1;
    printf("# random seed %llu\n", (unsigned long long)rng_state);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_all_dtypes),
        cmocka_unit_test(test_accepts_edge_cases),
        cmocka_unit_test(test_rejects_malformed_headers),
        cmocka_unit_test(test_rejects_bad_framing),
        cmocka_unit_test(test_large_sparse_file),
        cmocka_unit_test(test_writer_errors),
        cmocka_unit_test(test_checkpoint_sharded),
        cmocka_unit_test(test_checkpoint_bad),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
