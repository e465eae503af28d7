/* Test helpers for plugin tests: loads a plugin .so from QTOOL_PLUGIN_DIR
 * through the runtime's own plugin host (ABI checks, init, the accounted
 * allocator and thread pool as its services), parses options as `--opt`
 * does, and keeps saved tensors in a memory store usable as both save sink
 * and load source. Shared by the plugin tests. */
#ifndef PLUGIN_HARNESS_H
#define PLUGIN_HARNESS_H

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <qtool/plugin.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "error.h"
#include "host_services.h"
#include "plugin_host.h"

typedef struct harness {
    qt_plugin *p;
    const qtool_plugin_desc *desc; /* the host's copy of the plugin's */
    int cuda_device;               /* what instances are created for */
    void *stream;
    qt_services svc; /* a services table for that device, for tests that call plugin internals */
} harness;

static inline int harness_open(harness *H, const char *plugin, int cuda_device, void *stream)
{
    memset(H, 0, sizeof *H);
    const char *dir = getenv("QTOOL_PLUGIN_DIR");
    char path[1024];
    snprintf(path, sizeof path, "%s/libqtool_%s.so", dir ? dir : ".", plugin);
    if (qt_plugin_load(path, &H->p) != 0) {
        fprintf(stderr, "%s\n", qt_last_error());
        return -1;
    }
    H->desc = H->p->desc;
    H->cuda_device = cuda_device;
    H->stream = stream;
    qt_services_init(&H->svc, plugin, cuda_device, stream);
    return 0;
}

static inline void harness_close(harness *H)
{
    if (H->p) qt_plugin_unload(H->p);
    memset(H, 0, sizeof *H);
}

/* Creates an instance from "name=value" overrides on top of the defaults,
 * parsed as `--opt` is (an unknown name or a value outside the declared
 * type or range fails before the plugin sees it). On failure returns the
 * status with the reason in msg. */
static inline int harness_create(harness *H, const char *const *kv, int n_kv, qtool_instance **inst, char *msg,
                                 size_t msg_len)
{
    qt_plugin_options opts;
    *inst = NULL;
    int rc = qt_plugin_parse_options(H->p, (char *const *)kv, (size_t)n_kv, &opts);
    if (rc == 0) {
        rc = qt_plugin_create(H->p, &opts, H->cuda_device, H->stream, inst);
        qt_plugin_options_free(&opts);
    }
    if (rc != 0) snprintf(msg, msg_len, "%s", qt_last_error());
    return rc;
}

/* ------------------------------------------------------------ tensors */

/* The SDK's view (its second dimension is 0 for 1-D tensors, as every
 * caller here passes). */
static inline qtool_tensor tview(void *data, int dtype, int device, int ndim, int64_t d0, int64_t d1)
{
    return qtool_tensor_view(data, dtype, device, ndim, d0, d1);
}

/* Packs float32 weights [li->out_features, li->in_features] (and bias, or
 * NULL) on `device`. input_scale (K floats) and has_input_scale may be NULL.
 * Returns the plugin's status; *out is NULL unless it is QTOOL_OK. */
static inline int harness_pack(const harness *H, qtool_instance *inst, const qtool_layer_info *li, const float *w,
                               const float *bias, int device, float *input_scale, int32_t *has_input_scale,
                               qtool_packed **out)
{
    const int64_t N = li->out_features, K = li->in_features;
    qtool_tensor wt = tview((void *)w, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, K);
    qtool_tensor bt = tview((void *)bias, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, N, 0);
    qtool_pack_args pa;
    memset(&pa, 0, sizeof pa);
    pa.struct_size = sizeof pa;
    pa.device = device;
    pa.layer = li;
    pa.weight = &wt;
    pa.bias = bias ? &bt : NULL;
    pa.input_scale = input_scale;
    pa.has_input_scale = has_input_scale;
    *out = NULL;
    int rc = H->desc->pack(inst, &pa, out);
    if (rc != QTOOL_OK) *out = NULL;
    return rc;
}

/* ------------------------------------------------------------ store */

#define STORE_MAX 32
typedef struct stored {
    char name[128];
    qtool_tensor t; /* data owned (malloc), on the CPU */
} stored;
typedef struct store {
    stored items[STORE_MAX];
    int n;
} store;

static inline int store_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    store *s = ctx;
    if (s->n >= STORE_MAX) return QTOOL_ERR_OUT_OF_MEMORY;
    stored *it = &s->items[s->n];
    snprintf(it->name, sizeof it->name, "%s", suffix);
    it->t = *t;
    size_t bytes = (size_t)qtool_tensor_numel(t) * qtool_dtype_size(t->dtype);
    it->t.data = malloc(bytes ? bytes : 1);
    if (!it->t.data) return QTOOL_ERR_OUT_OF_MEMORY;
    if (t->device == QTOOL_DEVICE_CUDA) {
        if (qt_cuda_memcpy_d2h(it->t.data, t->data, bytes) != 0) return QTOOL_ERR_DEVICE;
    } else {
        memcpy(it->t.data, t->data, bytes);
    }
    it->t.device = QTOOL_DEVICE_CPU;
    s->n++;
    return QTOOL_OK;
}

static inline stored *store_find(store *s, const char *suffix)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->items[i].name, suffix)) return &s->items[i];
    return NULL;
}

static inline int store_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    stored *it = store_find(ctx, suffix);
    if (!it) return QTOOL_ERR_FORMAT;
    *out = it->t;
    return QTOOL_OK;
}

static inline int store_has(void *ctx, const char *suffix) { return store_find(ctx, suffix) != NULL; }

static inline void store_free(store *s)
{
    for (int i = 0; i < s->n; i++) free(s->items[i].t.data);
    s->n = 0;
}

static inline void store_remove(store *s, const char *suffix)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->items[i].name, suffix)) {
            free(s->items[i].t.data);
            s->items[i] = s->items[--s->n];
            return;
        }
}

/* ------------------------------------------------------------ random */

static uint64_t rng_state;

static inline uint64_t rng_seed_from_env(const char *test)
{
    const char *e = getenv("QTOOL_TEST_SEED");
    uint64_t s;
    if (e) {
        s = strtoull(e, NULL, 0);
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ ((uint64_t)getpid() << 40);
    }
    printf("%s: seed %llu (set QTOOL_TEST_SEED to repeat)\n", test, (unsigned long long)s);
    fflush(stdout);
    rng_state = s;
    return s;
}

static inline uint64_t rng_next(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline double rng_uniform(void) { return (double)(rng_next() >> 11) * (1.0 / 9007199254740992.0); }

static inline float rng_normal(void)
{
    double u1 = rng_uniform(), u2 = rng_uniform();
    if (u1 < 1e-300) u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static inline void fill_normal(float *v, int64_t n, float scale)
{
    for (int64_t i = 0; i < n; i++) v[i] = rng_normal() * scale;
}

/* Rounds through fp16 so CPU and GPU see identical inputs. */
static inline void round_to_f16(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) v[i] = qtool_f16_to_f32(qtool_f32_to_f16(v[i]));
}

static inline int cuda_available(void)
{
    char why[256];
    return qt_cuda_device_count(why, sizeof why) > 0;
}

#endif
