/* libFuzzer target for the GGUF reader: any input must be either rejected
 * with a message or accepted with every key, array element and tensor
 * readable inside the buffer. */
#include <stdint.h>
#include <string.h>

#include "error.h"
#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qt_gguf *g;
    if (qt_gguf_open_buffer(data, size, "fuzz.gguf", &g) != 0) {
        if (qt_last_error()[0] == '\0') __builtin_trap(); /* a rejection always says why */
        return 0;
    }
    volatile uint64_t sink = qt_gguf_version(g) + qt_gguf_alignment(g) + qt_gguf_data_offset(g);
    for (int64_t i = 0; i < qt_gguf_n_kv(g); i++) {
        const char *key = qt_gguf_kv_key(g, i);
        int type = qt_gguf_kv_type(g, i);
        int64_t iv;
        double fv;
        const char *s;
        uint64_t len;
        if (qt_gguf_find_key(g, key) != i) __builtin_trap();
        if (type == QT_GGUF_STRING) {
            if (qt_gguf_get_str(g, key, &s, &len) == 0) sink += (uint8_t)s[len];
        } else if (type == QT_GGUF_ARRAY) {
            int et;
            uint64_t n;
            if (qt_gguf_get_arr(g, key, &et, &n) != 0) __builtin_trap();
            for (uint64_t j = 0; j < n && j < 64; j++) {
                if (et == QT_GGUF_STRING && qt_gguf_arr_str(g, key, j, &s, &len) == 0 && len) sink += (uint8_t)s[len - 1];
                if (qt_gguf_arr_int(g, key, j, &iv) == 0) sink += (uint64_t)iv;
                if (qt_gguf_arr_float(g, key, j, &fv) == 0) sink += (uint64_t)(fv == fv);
            }
        } else {
            if (qt_gguf_get_int(g, key, &iv) == 0) sink += (uint64_t)iv;
            if (qt_gguf_get_float(g, key, &fv) == 0) sink += (uint64_t)(fv == fv);
        }
    }
    for (int64_t i = 0; i < qt_gguf_n_tensors(g); i++) {
        const qt_gguf_tensor *t = qt_gguf_tensor_at(g, i);
        if (qt_gguf_find_tensor(g, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) __builtin_trap();
        sink += p[0] + p[t->nbytes - 1];
    }
    (void)sink;
    qt_gguf_close(g);
    return 0;
}
