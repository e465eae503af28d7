/* core/gguf: writer round trip and hostile files rejected with the
 * expected one-line message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "gguf.h"

/* ------------------------------------------------------ a byte builder */

typedef struct buf {
    uint8_t d[8192];
    size_t n;
} buf;

static void b_raw(buf *b, const void *p, size_t n)
{
    assert_true(b->n + n <= sizeof b->d);
    memcpy(b->d + b->n, p, n);
    b->n += n;
}
static void b_u32(buf *b, uint32_t v) { b_raw(b, &v, 4); }
static void b_u64(buf *b, uint64_t v) { b_raw(b, &v, 8); }
static void b_str(buf *b, const char *s)
{
    b_u64(b, strlen(s));
    b_raw(b, s, strlen(s));
}
static void b_header(buf *b, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    b->n = 0;
    b_raw(b, "GGUF", 4);
    b_u32(b, version);
    b_u64(b, n_tensors);
    b_u64(b, n_kv);
}
/* tensor info: name, dims, type, offset */
static void b_tensor(buf *b, const char *name, uint32_t n_dims, const uint64_t *ne, uint32_t type, uint64_t off)
{
    b_str(b, name);
    b_u32(b, n_dims);
    for (uint32_t i = 0; i < n_dims; i++) b_u64(b, ne[i]);
    b_u32(b, type);
    b_u64(b, off);
}
static void b_pad(buf *b, size_t align, size_t data_bytes)
{
    while (b->n % align) b->d[b->n++] = 0;
    for (size_t i = 0; i < data_bytes; i++) b->d[b->n++] = (uint8_t)i;
}

/* Expects the buffer to be refused with `want` in the message. */
static void expect_reject(const buf *b, const char *want)
{
    qt_gguf *g = NULL;
    qt_clear_error();
    int rc = qt_gguf_open_buffer(b->d, b->n, "bad.gguf", &g);
    if (rc == 0) {
        qt_gguf_close(g);
        fail_msg("accepted a file that should fail with '%s'", want);
    }
    assert_null(g);
    const char *msg = qt_last_error();
    if (!strstr(msg, want) || strncmp(msg, "bad.gguf: ", 10) != 0 || strchr(msg, '\n'))
        fail_msg("message '%s' lacks '%s'", msg, want);
}

static void valid_file(buf *b)
{
    const uint64_t ne[2] = {32, 2};
    b_header(b, 3, 2, 1);
    b_str(b, "general.architecture");
    b_u32(b, QT_GGUF_STRING);
    b_str(b, "llama");
    b_tensor(b, "a", 2, ne, QT_GGML_Q8_0, 0);
    b_tensor(b, "b", 1, ne, QT_GGML_F32, 96);
    b_pad(b, 32, 96 + 128);
}

static void test_valid_and_truncations(void **state)
{
    (void)state;
    buf b;
    valid_file(&b);
    qt_gguf *g;
    assert_int_equal(qt_gguf_open_buffer(b.d, b.n, "ok.gguf", &g), 0);
    assert_int_equal(qt_gguf_n_tensors(g), 2);
    const qt_gguf_tensor *t = qt_gguf_find_tensor(g, "b");
    assert_non_null(t);
    assert_int_equal(t->nbytes, 128);
    assert_int_equal(t->offset, 96);
    assert_ptr_equal(t->data, b.d + qt_gguf_data_offset(g) + 96);
    assert_int_equal(qt_gguf_find_tensor(g, "a")->nbytes, 68);
    const char *s;
    assert_int_equal(qt_gguf_get_str(g, "general.architecture", &s, NULL), 0);
    assert_string_equal(s, "llama");
    qt_gguf_close(g);
    /* Every cut through the header or the data is refused as truncated. */
    const size_t full = b.n;
    for (size_t cut = 0; cut < full; cut++) {
        b.n = cut;
        expect_reject(&b, cut < 4 ? "truncated" : cut < full ? "" : "");
        if (cut < 24 || cut >= full - 128) {
            qt_gguf_open_buffer(b.d, cut, "bad.gguf", &g);
            assert_true(strstr(qt_last_error(), "truncated") || strstr(qt_last_error(), "past the end") ||
                        strstr(qt_last_error(), "too large"));
        }
    }
}

static void test_bad_magic_and_version(void **state)
{
    (void)state;
    buf b;
    valid_file(&b);
    b.d[0] = 'X';
    expect_reject(&b, "bad magic");
    valid_file(&b);
    b.d[4] = 1;
    expect_reject(&b, "unsupported GGUF version 1");
    valid_file(&b);
    memcpy(b.d + 4, "\0\0\0\3", 4);
    expect_reject(&b, "big-endian");
    valid_file(&b);
    b.d[4] = 2; /* version 2 has the same layout: accepted */
    qt_gguf *g;
    assert_int_equal(qt_gguf_open_buffer(b.d, b.n, "v2.gguf", &g), 0);
    assert_int_equal(qt_gguf_version(g), 2);
    qt_gguf_close(g);
}

static void test_huge_counts(void **state)
{
    (void)state;
    buf b;
    b_header(&b, 3, UINT64_MAX, 0);
    expect_reject(&b, "tensor count");
    b_header(&b, 3, 0, 1ull << 40);
    expect_reject(&b, "key/value count");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_ARRAY);
    b_u32(&b, QT_GGUF_U32);
    b_u64(&b, 1ull << 62);
    expect_reject(&b, "does not fit");
}

static void test_strings(void **state)
{
    (void)state;
    buf b;
    b_header(&b, 3, 0, 1);
    b_u64(&b, 1000); /* key length past EOF */
    b_raw(&b, "abcdefghijklmnopqrstuvwxyz", 26);
    expect_reject(&b, "runs past the end");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_STRING);
    b_u64(&b, UINT64_MAX - 3);
    expect_reject(&b, "runs past the end");
    b_header(&b, 3, 0, 1);
    b_u64(&b, 70000);
    b_raw(&b, "abcdefghijklmnopqrstuvwxyz", 26);
    expect_reject(&b, "exceeds the limit");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, 13);
    b_u32(&b, 0);
    expect_reject(&b, "unknown value type 13");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_BOOL);
    b_raw(&b, "\x02", 1);
    expect_reject(&b, "not 0 or 1");
    b_header(&b, 3, 0, 2);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_U8);
    b_raw(&b, "\x01", 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_U8);
    b_raw(&b, "\x01", 1);
    expect_reject(&b, "duplicate key 'k'");
}

static void test_nested_arrays(void **state)
{
    (void)state;
    buf b;
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_ARRAY);
    for (int i = 0; i < 4; i++) {
        b_u32(&b, QT_GGUF_ARRAY);
        b_u64(&b, 1);
    }
    b_u32(&b, QT_GGUF_U8);
    b_u64(&b, 0);
    expect_reject(&b, "nested deeper");
    b_header(&b, 3, 0, 1);
    b_str(&b, "k");
    b_u32(&b, QT_GGUF_ARRAY);
    b_u32(&b, 77);
    b_u64(&b, 0);
    expect_reject(&b, "unknown array element type 77");
}

static void test_tensor_rules(void **state)
{
    (void)state;
    buf b;
    const uint64_t ne[5] = {32, 2, 1, 1, 1};
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 2, ne, QT_GGML_F32, 4);
    b_pad(&b, 32, 300);
    expect_reject(&b, "not a multiple of the alignment");
    b_header(&b, 3, 2, 0);
    b_tensor(&b, "t", 2, ne, QT_GGML_F32, 0);
    b_tensor(&b, "u", 2, ne, QT_GGML_F32, 128);
    b_pad(&b, 32, 600);
    expect_reject(&b, "overlap");
    b_header(&b, 3, 2, 0);
    b_tensor(&b, "t", 1, ne, QT_GGML_F32, 0);
    b_tensor(&b, "t", 1, ne, QT_GGML_F32, 128);
    b_pad(&b, 32, 300);
    expect_reject(&b, "duplicate tensor name 't'");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 2, ne, 4, 0); /* 4 was Q4_2, removed from ggml */
    b_pad(&b, 32, 300);
    expect_reject(&b, "unknown ggml type 4");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 5, ne, QT_GGML_F32, 0);
    b_pad(&b, 32, 300);
    expect_reject(&b, "has 5 dimensions");
    const uint64_t zero[2] = {32, 0};
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 2, zero, QT_GGML_F32, 0);
    expect_reject(&b, "dimension 1 is 0");
    const uint64_t big[4] = {1ull << 32, 1ull << 32, 1ull << 32, 1};
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 4, big, QT_GGML_F32, 0);
    expect_reject(&b, "overflows");
    const uint64_t odd[1] = {48};
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 1, odd, QT_GGML_Q4_0, 0);
    b_pad(&b, 32, 64);
    expect_reject(&b, "not a multiple of the Q4_0 block size");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "t", 2, ne, QT_GGML_F32, 0);
    b_pad(&b, 32, 100); /* needs 256 */
    expect_reject(&b, "runs past the end");
    b_header(&b, 3, 1, 0);
    b_tensor(&b, "this_name_is_longer_than_sixty_four_bytes_which_the_reader_refuses_x", 1, ne, QT_GGML_F32, 0);
    expect_reject(&b, "exceeds the limit 64");
    b_header(&b, 3, 1, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, QT_GGUF_U32);
    b_u32(&b, 48);
    expect_reject(&b, "not a power of two");
}

static void test_alignment_honoured(void **state)
{
    (void)state;
    buf b;
    const uint64_t ne[1] = {8};
    b_header(&b, 3, 1, 1);
    b_str(&b, "general.alignment");
    b_u32(&b, QT_GGUF_U32);
    b_u32(&b, 256);
    b_tensor(&b, "t", 1, ne, QT_GGML_F32, 0);
    b_pad(&b, 256, 32);
    qt_gguf *g;
    assert_int_equal(qt_gguf_open_buffer(b.d, b.n, "a.gguf", &g), 0);
    assert_int_equal(qt_gguf_alignment(g), 256);
    assert_int_equal(qt_gguf_data_offset(g), 256);
    qt_gguf_close(g);
}

static void test_writer_round_trip(void **state)
{
    (void)state;
    char path[] = "/tmp/qtool_gguf_test_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    qt_gguf_writer *w = qt_gguf_writer_new();
    const int32_t ai[3] = {-1, 0, 7};
    const char *const as[2] = {"x", "yz"};
    float data[64];
    for (int i = 0; i < 64; i++) data[i] = (float)i;
    const int64_t ne[2] = {16, 4};
    assert_int_equal(qt_gguf_add_u32(w, "general.alignment", 128), 0);
    assert_int_equal(qt_gguf_add_str(w, "s", "hello"), 0);
    assert_int_equal(qt_gguf_add_i64(w, "i", -5), 0);
    assert_int_equal(qt_gguf_add_f32(w, "f", 0.5f), 0);
    assert_int_equal(qt_gguf_add_bool(w, "b", 1), 0);
    assert_int_equal(qt_gguf_add_arr(w, "ai", QT_GGUF_I32, ai, 3), 0);
    assert_int_equal(qt_gguf_add_arr_str(w, "as", as, 2), 0);
    assert_int_not_equal(qt_gguf_add_u8(w, "s", 1), 0); /* duplicate */
    assert_int_not_equal(qt_gguf_add_u32(w, "x.bad", 0) || qt_gguf_add_u32(w, "general.alignment", 3), 0);
    assert_int_equal(qt_gguf_add_tensor(w, "t", QT_GGML_F32, 2, ne, data, sizeof data), 0);
    assert_int_not_equal(qt_gguf_add_tensor(w, "u", QT_GGML_F32, 2, ne, data, 10), 0); /* wrong size */
    assert_int_not_equal(qt_gguf_add_tensor(w, "t", QT_GGML_F32, 2, ne, data, sizeof data), 0);
    char longname[80];
    memset(longname, 'n', 64);
    longname[64] = 0;
    assert_int_not_equal(qt_gguf_add_tensor(w, longname, QT_GGML_F32, 2, ne, data, sizeof data), 0);
    assert_int_equal(qt_gguf_write(w, path), 0);
    qt_gguf_writer_free(w);

    qt_gguf *g;
    assert_int_equal(qt_gguf_open(path, &g), 0);
    assert_int_equal(qt_gguf_version(g), 3);
    assert_int_equal(qt_gguf_alignment(g), 128);
    assert_int_equal(qt_gguf_data_offset(g) % 128, 0);
    const char *s;
    int64_t iv;
    double fv;
    int bv, et;
    uint64_t n;
    assert_int_equal(qt_gguf_get_str(g, "s", &s, &n), 0);
    assert_string_equal(s, "hello");
    assert_int_equal(qt_gguf_get_int(g, "i", &iv), 0);
    assert_int_equal(iv, -5);
    assert_int_equal(qt_gguf_get_float(g, "f", &fv), 0);
    assert_true(fv == 0.5);
    assert_int_equal(qt_gguf_get_bool(g, "b", &bv), 0);
    assert_int_equal(bv, 1);
    assert_int_equal(qt_gguf_get_arr(g, "ai", &et, &n), 0);
    assert_int_equal(et, QT_GGUF_I32);
    assert_int_equal(n, 3);
    assert_int_equal(qt_gguf_arr_int(g, "ai", 2, &iv), 0);
    assert_int_equal(iv, 7);
    assert_int_not_equal(qt_gguf_arr_int(g, "ai", 3, &iv), 0);
    assert_int_equal(qt_gguf_arr_str(g, "as", 1, &s, &n), 0);
    assert_int_equal(n, 2);
    assert_memory_equal(s, "yz", 2);
    float f32;
    assert_int_not_equal(qt_gguf_get_f32(g, "s", &f32), 0);
    assert_non_null(strstr(qt_last_error(), "key 's' is string, expected f32"));
    assert_int_not_equal(qt_gguf_get_str(g, "missing", &s, NULL), 0);
    assert_non_null(strstr(qt_last_error(), "no key 'missing'"));
    const qt_gguf_tensor *t = qt_gguf_find_tensor(g, "t");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 16);
    assert_int_equal(t->ne[1], 4);
    assert_memory_equal(t->data, data, sizeof data);
    assert_null(qt_gguf_find_tensor(g, "u"));
    qt_gguf_close(g);
    unlink(path);

    /* A file that is not there, and an empty one. */
    assert_int_not_equal(qt_gguf_open("/nonexistent/x.gguf", &g), 0);
    assert_non_null(strstr(qt_last_error(), "/nonexistent/x.gguf: cannot open"));
    char empty[] = "/tmp/qtool_gguf_empty_XXXXXX";
    fd = mkstemp(empty);
    assert_true(fd >= 0);
    close(fd);
    assert_int_not_equal(qt_gguf_open(empty, &g), 0);
    assert_non_null(strstr(qt_last_error(), "truncated"));
    unlink(empty);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_and_truncations), cmocka_unit_test(test_bad_magic_and_version),
        cmocka_unit_test(test_huge_counts),           cmocka_unit_test(test_strings),
        cmocka_unit_test(test_nested_arrays),         cmocka_unit_test(test_tensor_rules),
        cmocka_unit_test(test_alignment_honoured),    cmocka_unit_test(test_writer_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
