/* Test helper over the safetensors API, for the compatibility script.
 *   st_tool dump PATH        checkpoint (file, folder or index) as JSON on stdout
 *   st_tool write OUT SPEC   writes OUT from a JSON spec:
 *                            {"metadata": {...}, "tensors": [{"name", "dtype", "shape", "hex"}]}
 *   st_tool check PATH       "ok: N tensors", or the error line and exit 1 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "error.h"
#include "fsutil.h"
#include "safetensors.h"

static char *to_hex(const uint8_t *p, uint64_t n)
{
    static const char digits[] = "0123456789abcdef";
    char *s = malloc(2 * n + 1);
    if (!s) return NULL;
    for (uint64_t i = 0; i < n; i++) {
        s[2 * i] = digits[p[i] >> 4];
        s[2 * i + 1] = digits[p[i] & 15];
    }
    s[2 * n] = '\0';
    return s;
}

static int from_hex(const char *s, uint8_t **out, size_t *n)
{
    size_t len = strlen(s);
    if (len % 2) return -1;
    uint8_t *b = malloc(len / 2 + 1);
    if (!b) return -1;
    for (size_t i = 0; i < len / 2; i++) {
        unsigned v;
        if (sscanf(s + 2 * i, "%2x", &v) != 1) {
            free(b);
            return -1;
        }
        b[i] = (uint8_t)v;
    }
    *out = b;
    *n = len / 2;
    return 0;
}

static int dump(const char *path)
{
    qt_ckpt *c;
    if (qt_ckpt_open(path, &c)) return fprintf(stderr, "%s\n", qt_last_error()), 1;
    json_t *root = json_object(), *files = json_array(), *tensors = json_array();
    for (size_t i = 0; i < qt_ckpt_file_count(c); i++) {
        const qt_st_file *f = qt_ckpt_file_at(c, i);
        json_t *meta = json_object();
        for (size_t m = 0; m < qt_st_metadata_count(f); m++) {
            const char *k, *v;
            qt_st_metadata_at(f, m, &k, &v);
            json_object_set_new(meta, k, json_string(v));
        }
        json_array_append_new(files, json_pack("{s:s, s:o}", "path", qt_st_path(f), "metadata", meta));
    }
    for (size_t i = 0; i < qt_ckpt_count(c); i++) {
        const qt_st_tensor *t = qt_ckpt_at(c, i);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        char *hex = to_hex(t->view.data, t->nbytes);
        json_array_append_new(tensors, json_pack("{s:s, s:s, s:o, s:I, s:i, s:s}", "name", t->name, "dtype",
                                                 t->dtype_name, "shape", shape, "nbytes",
                                                 (json_int_t)t->nbytes, "view_dtype", t->view.dtype, "hex",
                                                 hex));
        free(hex);
    }
    json_object_set_new(root, "files", files);
    json_object_set_new(root, "tensors", tensors);
    json_dumpf(root, stdout, JSON_COMPACT);
    fputc('\n', stdout);
    json_decref(root);
    qt_ckpt_close(c);
    return 0;
}

static int write_spec(const char *out, const char *spec_path)
{
    json_error_t err;
    json_t *spec = json_load_file(spec_path, 0, &err);
    if (!spec) return fprintf(stderr, "%s: %s\n", spec_path, err.text), 1;
    qt_st_writer *w = qt_st_writer_new();
    int rc = 0;
    const char *k;
    json_t *v, *t;
    json_object_foreach(json_object_get(spec, "metadata"), k, v) {
        if (!rc) rc = qt_st_writer_set_metadata(w, k, json_string_value(v));
    }
    size_t i;
    json_array_foreach(json_object_get(spec, "tensors"), i, t) {
        if (rc) break;
        const char *name = json_string_value(json_object_get(t, "name"));
        const char *dtype = json_string_value(json_object_get(t, "dtype"));
        json_t *js = json_object_get(t, "shape");
        int64_t shape[QTOOL_MAX_DIMS] = {0};
        int ndim = (int)json_array_size(js);
        for (int d = 0; d < ndim && d < QTOOL_MAX_DIMS; d++)
            shape[d] = json_integer_value(json_array_get(js, (size_t)d));
        uint8_t *data;
        size_t n;
        if (from_hex(json_string_value(json_object_get(t, "hex")), &data, &n)) {
            fprintf(stderr, "%s: bad hex for %s\n", spec_path, name);
            rc = 1;
            break;
        }
        int qt = qt_st_dtype_to_qtool(dtype);
        if (qt >= 0 && ndim <= QTOOL_MAX_DIMS) {
            /* The typed path, as the runtime uses it. */
            qtool_tensor view = {.data = data, .dtype = qt, .device = QTOOL_DEVICE_CPU, .ndim = ndim};
            memcpy(view.shape, shape, sizeof shape);
            rc = qt_st_writer_add(w, name, &view);
        } else {
            rc = qt_st_writer_add_raw(w, name, dtype, ndim, shape, data, n);
        }
        free(data);
    }
    if (!rc) rc = qt_st_writer_commit(w, out);
    if (rc) fprintf(stderr, "%s\n", qt_last_error());
    qt_st_writer_free(w);
    json_decref(spec);
    return rc ? 1 : 0;
}

static int check(const char *path)
{
    qt_ckpt *c;
    if (qt_ckpt_open(path, &c)) return fprintf(stderr, "%s\n", qt_last_error()), 1;
    printf("ok: %zu tensors\n", qt_ckpt_count(c));
    qt_ckpt_close(c);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "dump") == 0) return dump(argv[2]);
    if (argc == 4 && strcmp(argv[1], "write") == 0) return write_spec(argv[2], argv[3]);
    if (argc == 3 && strcmp(argv[1], "check") == 0) return check(argv[2]);
    fprintf(stderr, "usage: st_tool dump PATH | write OUT SPEC.json | check PATH\n");
    return 2;
}
