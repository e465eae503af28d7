/* libFuzzer target for the safetensors parser. Besides "no crash, no leak,
 * no out-of-bounds read", it checks properties of every accepted input:
 * each tensor's bytes are readable and aligned, lookups agree, and writing
 * the file back out and parsing that gives the same tensors and metadata. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REQUIRE(cond)                                                            \
    do {                                                                         \
        if (!(cond)) {                                                           \
            fprintf(stderr, "fuzz_safetensors: %s failed (line %d): %s\n", #cond, \
                    __LINE__, qt_last_error());                                  \
            abort();                                                             \
        }                                                                        \
    } while (0)

static size_t elem_align(const qt_st_tensor *t)
{
    size_t s = qtool_dtype_size(t->view.dtype);
    return s ? s : 1;
}

static void same_file(const qt_st_file *a, const qt_st_file *b)
{
    REQUIRE(qt_st_count(a) == qt_st_count(b));
    for (size_t i = 0; i < qt_st_count(a); i++) {
        const qt_st_tensor *x = qt_st_at(a, i), *y = qt_st_at(b, i);
        REQUIRE(strcmp(x->name, y->name) == 0);
        REQUIRE(strcmp(x->dtype_name, y->dtype_name) == 0);
        REQUIRE(x->ndim == y->ndim && x->nbytes == y->nbytes);
        REQUIRE(memcmp(x->shape, y->shape, sizeof x->shape) == 0);
        REQUIRE(memcmp(&x->view.dtype, &y->view.dtype,
                       sizeof(qtool_tensor) - offsetof(qtool_tensor, dtype)) == 0);
        REQUIRE(x->nbytes == 0 || memcmp(x->view.data, y->view.data, x->nbytes) == 0);
    }
    REQUIRE(qt_st_metadata_count(a) == qt_st_metadata_count(b));
    for (size_t i = 0; i < qt_st_metadata_count(a); i++) {
        const char *ka, *va, *kb, *vb;
        qt_st_metadata_at(a, i, &ka, &va);
        qt_st_metadata_at(b, i, &kb, &vb);
        REQUIRE(strcmp(ka, kb) == 0 && strcmp(va, vb) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qt_st_file *f = NULL;
    if (qt_st_parse(data, size, "fuzz", &f) != 0) {
        const char *msg = qt_last_error();
        REQUIRE(f == NULL);
        REQUIRE(strncmp(msg, "fuzz: ", 6) == 0 && strchr(msg, '\n') == NULL);
        return 0;
    }
    qt_st_writer *w = qt_st_writer_new();
    REQUIRE(w != NULL);
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < qt_st_count(f); i++) {
        const qt_st_tensor *t = qt_st_at(f, i);
        REQUIRE(qt_st_find(f, t->name) == t);
        REQUIRE(t->view.device == QTOOL_DEVICE_CPU && t->view.ndim <= QTOOL_MAX_DIMS);
        REQUIRE((uintptr_t)t->view.data % elem_align(t) == 0);
        if (t->nbytes) {
            const uint8_t *p = t->view.data;
            sink ^= p[0];
            sink ^= p[t->nbytes - 1];
        }
        REQUIRE(qt_st_writer_add_raw(w, t->name, t->dtype_name, t->ndim, t->shape, t->view.data,
                                     t->nbytes) == 0);
    }
    for (size_t i = 0; i < qt_st_metadata_count(f); i++) {
        const char *k, *v;
        qt_st_metadata_at(f, i, &k, &v);
        REQUIRE(qt_st_metadata(f, k) == v);
        REQUIRE(qt_st_writer_set_metadata(w, k, v) == 0);
    }
    void *out = NULL;
    size_t out_len = 0;
    REQUIRE(qt_st_writer_to_memory(w, &out, &out_len) == 0);
    qt_st_file *g = NULL;
    REQUIRE(qt_st_parse(out, out_len, "rewritten", &g) == 0);
    same_file(f, g);
    qt_st_close(g);
    free(out);
    qt_st_writer_free(w);
    qt_st_close(f);
    (void)sink;
    return 0;
}
