#include "conformance.h"

#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "cuda_rt.h"
#include "device.h"
#include "error.h"
#include "tensor.h"

/* ------------------------------------------------------------- shapes */

/* (K, N) pairs: together with M below they cover 1, 3, 17 and 129 in every
 * dimension, plus block-friendly sizes (64, 128, 256, 512) so plugins with
 * block or group constraints run at least some shapes. */
static const struct { int64_t k, n; } shapes[] = {
    {64, 64}, {1, 3}, {3, 17}, {17, 1}, {129, 129}, {256, 17}, {256, 128}, {512, 129},
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
static const int64_t ms[] = {1, 3, 17, 129};
#define N_MS ((int)(sizeof ms / sizeof ms[0]))
/* The original weights come in each checkpoint dtype, in turn. */
static const int shape_wdtype[3] = {QTOOL_DTYPE_F32, QTOOL_DTYPE_F16, QTOOL_DTYPE_BF16};

#define OUTLIER_GAIN 12.0 /* LLM.int8-style outlier input channels */
#define CALIB_TOKENS 256

/* ---------------------------------------------------------- tolerance */

/* Bound on the normalised error of a method with `bits` of precision; see
 * docs/conformance.md for where each number comes from. */
static double bits_tolerance(int bits)
{
    if (bits >= 32) return 0.0;
    if (bits >= 16) return 5e-3;
    if (bits >= 9) return 2e-2;
    if (bits == 8) return 8e-2;
    if (bits == 7) return 0.1;
    if (bits == 6) return 0.12;
    if (bits == 5) return 0.2;
    if (bits == 4) return 0.3;
    if (bits == 3) return 0.6;
    return 1.0;
}

static double io_tolerance(int device, int io_dtype)
{
    if (device == QTOOL_DEVICE_CPU || io_dtype == QTOOL_DTYPE_F32) return 1e-5;
    return io_dtype == QTOOL_DTYPE_BF16 ? 1.5e-2 : 2e-3;
}

/* A baseline promises float32 on the CPU: its bit width does not apply. */
static int exact_baseline(const qtool_plugin_desc *d, int device)
{
    return (d->flags & QTOOL_PLUGIN_BASELINE) && device == QTOOL_DEVICE_CPU;
}

double qt_conf_tolerance(const qtool_plugin_desc *d, int device, int io_dtype)
{
    int b = d->weight_bits < d->activation_bits ? d->weight_bits : d->activation_bits;
    double t = exact_baseline(d, device) ? 0.0 : bits_tolerance(b);
    double io = io_tolerance(device, io_dtype);
    return t > io ? t : io;
}

/* How far W_hat (dequantize) may be from the product matmul computes:
 * only the activation side and the I/O rounding differ. */
static double consistency_tolerance(const qtool_plugin_desc *d, int device, int io_dtype)
{
    double t = exact_baseline(d, device) ? 0.0 : bits_tolerance(d->activation_bits);
    double io = io_tolerance(device, io_dtype);
    return t > io ? t : io;
}

/* CPU and CUDA of one plugin pack the same codes; they differ by
 * activation rounding and accumulation order only. */
static double agreement_tolerance(const qtool_plugin_desc *d)
{
    int b = d->weight_bits < d->activation_bits ? d->weight_bits : d->activation_bits;
    double t = 0.5 * bits_tolerance(b);
    return t > 5e-3 ? t : 5e-3;
}

/* ---------------------------------------------------------------- rng */

static uint64_t mix64(uint64_t z)
{
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct rng_t {
    uint64_t s;
} rng_t;

static rng_t rng_for(uint64_t seed, uint64_t a, uint64_t b, uint64_t c)
{
    rng_t r = {mix64(seed ^ mix64(a ^ mix64(b ^ mix64(c))))};
    return r;
}

static uint64_t rng_next(rng_t *r)
{
    r->s += 0x9E3779B97F4A7C15ULL;
    return mix64(r->s);
}

static double rng_uniform(rng_t *r) { return (double)(rng_next(r) >> 11) * 0x1.0p-53; }

static double rng_normal(rng_t *r)
{
    double u1 = 1.0 - rng_uniform(r), u2 = rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Student t with 5 degrees of freedom: heavy tails like trained weights
 * (kurtosis 9), finite variance 5/3. */
static double rng_student5(rng_t *r)
{
    double chi = 0;
    for (int i = 0; i < 5; i++) {
        double z = rng_normal(r);
        chi += z * z;
    }
    return rng_normal(r) / sqrt(chi / 5.0);
}

/* ------------------------------------------------------------ context */

typedef struct conf {
    qt_plugin *p;
    const qtool_plugin_desc *d;
    const qt_conf_config *cfg;
    qt_conf_report *rep;
    qt_plugin_options opts;
    int fatal;
    /* CUDA */
    int cuda_available;
    char no_cuda[256];
    void *stream;
    /* shapes packed successfully per device (for the agreement check) */
    int ran[2][N_SHAPES];
} conf;

static const char *volatile current_check = "";
const char *qt_conformance_current(void) { return current_check; }

static void add_result(conf *c, int verdict, const char *check, const char *device, const char *fmt, ...)
    QTOOL_PRINTF(5, 6);
static void add_result(conf *c, int verdict, const char *check, const char *device, const char *fmt, ...)
{
    qt_conf_report *r = c->rep;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 32;
        qt_conf_result *g = realloc(r->results, cap * sizeof *g);
        if (!g) {
            c->fatal = 1;
            return;
        }
        r->results = g;
        r->cap = cap;
    }
    qt_conf_result *e = &r->results[r->n++];
    memset(e, 0, sizeof *e);
    e->verdict = verdict;
    snprintf(e->check, sizeof e->check, "%s", check);
    snprintf(e->device, sizeof e->device, "%s", device ? device : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->detail, sizeof e->detail, fmt, ap);
    va_end(ap);
    if (verdict == QT_CONF_PASS) r->n_pass++;
    else if (verdict == QT_CONF_FAIL) r->n_fail++;
    else r->n_skip++;
    if (c->cfg->on_result) c->cfg->on_result(e, c->cfg->ctx);
}

/* A growing "; "-separated list of problems for one result line. */
typedef struct notes {
    char text[600];
    int n;
} notes;

static void note(notes *nt, const char *fmt, ...) QTOOL_PRINTF(2, 3);
static void note(notes *nt, const char *fmt, ...)
{
    size_t len = strlen(nt->text);
    if (len + 8 >= sizeof nt->text) {
        nt->n++;
        return;
    }
    if (nt->n) len += (size_t)snprintf(nt->text + len, sizeof nt->text - len, "; ");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(nt->text + len, sizeof nt->text - len, fmt, ap);
    va_end(ap);
    nt->n++;
}

static const char *status_str(int rc)
{
    static _Thread_local char buf[48];
    snprintf(buf, sizeof buf, "%s (%d)", qt_status_name(rc), rc);
    return buf;
}

static void quiet_logs(conf *c, int *saved)
{
    *saved = qt_log_level();
    if (!c->cfg->verbose) qt_set_log_level(-1);
}

/* -------------------------------------------------------- memory stats */

typedef struct mem_snap {
    uint64_t cur[2][QTOOL_MEM_COUNT];
} mem_snap;

static void snap(mem_snap *s)
{
    qt_mem_stats st;
    qt_mem_get_stats(&st);
    memcpy(s->cur, st.current, sizeof s->cur);
}

/* Bytes allocated since `before`, per category, both devices together
 * (memory() has no device dimension). */
static void mem_delta(const mem_snap *before, int64_t out[QTOOL_MEM_COUNT])
{
    mem_snap now;
    snap(&now);
    for (int k = 0; k < QTOOL_MEM_COUNT; k++)
        out[k] = (int64_t)(now.cur[0][k] - before->cur[0][k]) + (int64_t)(now.cur[1][k] - before->cur[1][k]);
}

/* Compares memory() of `pk` with what the allocator saw since `before`;
 * 0 when equal, else a description in `nt`. */
static int check_memory(conf *c, qtool_packed *pk, const mem_snap *before, const char *when, notes *nt)
{
    uint64_t rep[QTOOL_MEM_COUNT];
    memset(rep, 0, sizeof rep);
    int64_t seen[QTOOL_MEM_COUNT];
    mem_delta(before, seen);
    current_check = "memory";
    int rc = c->d->memory(pk, rep);
    if (rc != QTOOL_OK) {
        note(nt, "%s: memory() failed: %s", when, status_str(rc));
        return 1;
    }
    int bad = 0;
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) {
        if ((int64_t)rep[k] != seen[k]) {
            if (!bad) note(nt, "%s:", when);
            note(nt, "%s reported %llu, allocated %lld", qt_mem_category_name(k), (unsigned long long)rep[k],
                 (long long)seen[k]);
            bad = 1;
        }
    }
    return bad;
}

static int check_no_leak(const mem_snap *before, const char *when, notes *nt)
{
    int64_t d[QTOOL_MEM_COUNT];
    mem_delta(before, d);
    int bad = 0;
    for (int k = 0; k < QTOOL_MEM_COUNT; k++) {
        if (d[k] != 0) {
            note(nt, "%s: %lld bytes of %s still allocated", when, (long long)d[k], qt_mem_category_name(k));
            bad = 1;
        }
    }
    return bad;
}

/* --------------------------------------------------------- test layers */

typedef struct layer_data {
    int64_t k, n;
    int wdtype;
    void *w;          /* as the checkpoint gives it */
    double *wd;       /* the same values in double */
    void *b;          /* bias in wdtype, or NULL */
    double *bd;       /* bias in double (zeros without bias) */
    int *outlier;     /* 1 for outlier input channels */
    qtool_tensor wt, bt;
    qtool_layer_info info;
    char name[64];
} layer_data;

static void free_layer(layer_data *L)
{
    free(L->w);
    free(L->wd);
    free(L->b);
    free(L->bd);
    free(L->outlier);
    memset(L, 0, sizeof *L);
}

static double store_elem(void *buf, int dtype, int64_t i, double v)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: {
        uint16_t h = qtool_f32_to_f16((float)v);
        ((uint16_t *)buf)[i] = h;
        return qtool_f16_to_f32(h);
    }
    case QTOOL_DTYPE_BF16: {
        uint16_t h = qtool_f32_to_bf16((float)v);
        ((uint16_t *)buf)[i] = h;
        return qtool_bf16_to_f32(h);
    }
    default:
        ((float *)buf)[i] = (float)v;
        return (float)v;
    }
}

static int make_layer(conf *c, int si, layer_data *L)
{
    memset(L, 0, sizeof *L);
    L->k = shapes[si].k;
    L->n = shapes[si].n;
    L->wdtype = shape_wdtype[si % 3];
    int has_bias = si % 2 == 0;
    size_t nk = (size_t)(L->n * L->k), es = qtool_dtype_size(L->wdtype);
    L->w = malloc(nk * es);
    L->wd = malloc(nk * sizeof(double));
    L->bd = calloc((size_t)L->n, sizeof(double));
    L->b = has_bias ? malloc((size_t)L->n * es) : NULL;
    L->outlier = calloc((size_t)L->k, sizeof(int));
    if (!L->w || !L->wd || !L->bd || (has_bias && !L->b) || !L->outlier) {
        free_layer(L);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    rng_t r = rng_for(c->rep->seed, 1, (uint64_t)si, 0);
    double ws = 1.0 / sqrt((double)L->k);
    for (size_t i = 0; i < nk; i++) L->wd[i] = store_elem(L->w, L->wdtype, (int64_t)i, rng_student5(&r) * ws);
    if (has_bias)
        for (int64_t j = 0; j < L->n; j++) L->bd[j] = store_elem(L->b, L->wdtype, j, 0.5 * rng_normal(&r));
    /* Outlier input channels, K/64 of them (about 1.5%, as in LLM.int8's
     * measurements): in smaller layers one channel would dominate and make
     * the error of a single weight decide the verdict. */
    int64_t n_out = L->k / 64;
    for (int64_t i = 0; i < n_out; i++) L->outlier[(int64_t)(rng_uniform(&r) * (double)L->k) % L->k] = 1;

    L->wt.data = L->w;
    L->wt.dtype = L->wdtype;
    L->wt.device = QTOOL_DEVICE_CPU;
    L->wt.ndim = 2;
    L->wt.shape[0] = L->n;
    L->wt.shape[1] = L->k;
    if (has_bias) {
        L->bt.data = L->b;
        L->bt.dtype = L->wdtype;
        L->bt.device = QTOOL_DEVICE_CPU;
        L->bt.ndim = 1;
        L->bt.shape[0] = L->n;
    }
    snprintf(L->name, sizeof L->name, "conformance.layers.%d.weight", si);
    L->info.struct_size = sizeof L->info;
    L->info.role = QTOOL_ROLE_OTHER;
    L->info.name = L->name;
    L->info.in_features = L->k;
    L->info.out_features = L->n;
    L->info.block_index = 0;
    L->info.n_blocks = 1;
    return QTOOL_OK;
}

/* Activations [m, k] for shape si, call `purpose` (0: matmul, 1: calibration). */
static void make_input(conf *c, int si, int purpose, int64_t m, const layer_data *L, float *x)
{
    rng_t r = rng_for(c->rep->seed, 2 + (uint64_t)purpose, (uint64_t)si, (uint64_t)m);
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < L->k; j++)
            x[i * L->k + j] = (float)(rng_normal(&r) * (L->outlier[j] ? OUTLIER_GAIN : 1.0));
}

/* Rounds in place to what an activation of `dtype` can hold. */
static void round_to(float *x, size_t n, int dtype)
{
    if (dtype == QTOOL_DTYPE_F16)
        for (size_t i = 0; i < n; i++) x[i] = qtool_f16_to_f32(qtool_f32_to_f16(x[i]));
    else if (dtype == QTOOL_DTYPE_BF16)
        for (size_t i = 0; i < n; i++) x[i] = qtool_bf16_to_f32(qtool_f32_to_bf16(x[i]));
}

/* --------------------------------------------------------- pack/matmul */

typedef struct packed_layer {
    qtool_packed *pk;
    float *input_scale; /* [k]; all ones unless the plugin set one */
    int32_t has_scale;
} packed_layer;

static void release_packed(conf *c, packed_layer *pl)
{
    if (pl->pk) {
        current_check = "free_packed";
        c->d->free_packed(pl->pk);
    }
    free(pl->input_scale);
    memset(pl, 0, sizeof *pl);
}

static int calibrate_layer(conf *c, qtool_instance *inst, int si, const layer_data *L)
{
    if (!c->d->calibrate) return QTOOL_OK;
    float *x = malloc((size_t)(CALIB_TOKENS * L->k) * sizeof(float));
    if (!x) return QTOOL_ERR_OUT_OF_MEMORY;
    make_input(c, si, 1, CALIB_TOKENS, L, x);
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.data = x;
    t.dtype = QTOOL_DTYPE_F32;
    t.device = QTOOL_DEVICE_CPU;
    t.ndim = 2;
    t.shape[0] = CALIB_TOKENS;
    t.shape[1] = L->k;
    current_check = "calibrate";
    int rc = c->d->calibrate(inst, &L->info, &t);
    free(x);
    return rc;
}

static int pack_layer(conf *c, qtool_instance *inst, int device, const layer_data *L, packed_layer *out)
{
    memset(out, 0, sizeof *out);
    out->input_scale = malloc((size_t)L->k * sizeof(float));
    if (!out->input_scale) return QTOOL_ERR_OUT_OF_MEMORY;
    qtool_pack_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.device = device;
    a.layer = &L->info;
    a.weight = &L->wt;
    a.bias = L->b ? &L->bt : NULL;
    a.input_scale = out->input_scale;
    a.has_input_scale = &out->has_scale;
    current_check = "pack";
    int rc = c->d->pack(inst, &a, &out->pk);
    if (rc == QTOOL_OK && !out->pk) rc = QTOOL_ERR_INTERNAL;
    if (rc != QTOOL_OK) {
        out->pk = NULL;
        free(out->input_scale);
        out->input_scale = NULL;
        return rc;
    }
    if (!out->has_scale)
        for (int64_t j = 0; j < L->k; j++) out->input_scale[j] = 1.0f;
    return QTOOL_OK;
}

/* Runs one matmul on `device`. `x` [m, k] holds exactly representable
 * values of `io` (F32 on the CPU); `y` [m, n] receives floats. Returns the
 * plugin's status; a harness failure sets *harness. */
static int run_matmul_ep(conf *c, int device, int io, qtool_packed *pk, const float *x, int64_t m, int64_t k,
                         int64_t n, float *y, int *harness, int epilogue, const float *y_in);

static int run_matmul(conf *c, int device, int io, qtool_packed *pk, const float *x, int64_t m, int64_t k,
                      int64_t n, float *y, int *harness)
{
    return run_matmul_ep(c, device, io, pk, x, m, k, n, y, harness, QTOOL_EPILOGUE_NONE, NULL);
}

/* The same with an epilogue; `n` is then the width of y, which starts as
 * `y_in` (values of `io`) when that is not NULL. */
static int run_matmul_ep(conf *c, int device, int io, qtool_packed *pk, const float *x, int64_t m, int64_t k,
                         int64_t n, float *y, int *harness, int epilogue, const float *y_in)
{
    qtool_tensor xt, yt;
    memset(&xt, 0, sizeof xt);
    memset(&yt, 0, sizeof yt);
    xt.dtype = yt.dtype = io;
    xt.device = yt.device = device;
    xt.ndim = yt.ndim = 2;
    xt.shape[0] = yt.shape[0] = m;
    xt.shape[1] = k;
    yt.shape[1] = n;
    qtool_matmul_args a;
    memset(&a, 0, sizeof a);
    a.struct_size = sizeof a;
    a.epilogue = epilogue;
    a.x = &xt;
    a.y = &yt;
    *harness = 0;
    for (int64_t i = 0; i < m * n; i++) y[i] = y_in ? y_in[i] : NAN; /* unwritten outputs show up */
    if (device == QTOOL_DEVICE_CPU) {
        xt.data = (void *)x;
        yt.data = y;
        current_check = "matmul_cpu";
        return c->d->matmul_cpu(pk, &a);
    }
    size_t xb = (size_t)(m * k) * 2, yb = (size_t)(m * n) * 2;
    uint16_t *hx = malloc(xb ? xb : 2), *hy = malloc(yb ? yb : 2);
    void *dx = NULL, *dy = NULL;
    int rc = QTOOL_OK;
    if (!hx || !hy) {
        *harness = QTOOL_ERR_OUT_OF_MEMORY;
        goto out;
    }
    for (int64_t i = 0; i < m * k; i++)
        hx[i] = io == QTOOL_DTYPE_F16 ? qtool_f32_to_f16(x[i]) : qtool_f32_to_bf16(x[i]);
    for (int64_t i = 0; y_in && i < m * n; i++)
        hy[i] = io == QTOOL_DTYPE_F16 ? qtool_f32_to_f16(y_in[i]) : qtool_f32_to_bf16(y_in[i]);
    if (qt_cuda_malloc(&dx, xb ? xb : 2) || qt_cuda_malloc(&dy, yb ? yb : 2) || qt_cuda_memcpy_h2d(dx, hx, xb) ||
        (y_in ? qt_cuda_memcpy_h2d(dy, hy, yb) : qt_cuda_memset(dy, 0xFF, yb)) || qt_cuda_device_sync()) {
        *harness = QTOOL_ERR_DEVICE;
        goto out;
    }
    xt.data = dx;
    yt.data = dy;
    a.stream = c->stream;
    current_check = "matmul_cuda";
    rc = c->d->matmul_cuda(pk, &a);
    if (qt_cuda_stream_sync(c->stream) != 0 || qt_cuda_memcpy_d2h(hy, dy, yb) != 0) {
        *harness = QTOOL_ERR_DEVICE;
        goto out;
    }
    for (int64_t i = 0; i < m * n; i++)
        y[i] = io == QTOOL_DTYPE_F16 ? qtool_f16_to_f32(hy[i]) : qtool_bf16_to_f32(hy[i]);
out:
    qt_cuda_free(dx);
    qt_cuda_free(dy);
    free(hx);
    free(hy);
    return rc;
}

/* QTOOL_PLUGIN_ROW_INDEPENDENT: a layer packed whole and its rows packed
 * as two layers (data-free, fresh names) give the same outputs, up to the
 * summation order of the GEMM: within a few units of the output type's
 * rounding of sum |x w| + |b|. A plugin whose packing looks across rows
 * (a tensor-wide statistic, groups spanning rows) differs by its
 * quantization error instead. */
static void check_row_independence(conf *c, int device, const char *dev_label, qtool_instance *inst,
                                   const layer_data *L, int io)
{
    if (!(c->d->flags & QTOOL_PLUGIN_ROW_INDEPENDENT)) {
        add_result(c, QT_CONF_SKIP, "row-independence", dev_label, "the plugin does not claim it");
        return;
    }
    const int64_t m = 17, k = L->k, n = L->n, n1 = n / 2 > 0 ? n / 2 : 1, n2 = n - n1;
    if (n2 < 1) {
        add_result(c, QT_CONF_SKIP, "row-independence", dev_label, "a layer of one row");
        return;
    }
    const size_t es = qtool_dtype_size(L->wdtype);
    layer_data whole = *L, top = *L, bottom = *L; /* shallow: views into L's buffers */
    snprintf(whole.name, sizeof whole.name, "conformance.rows.whole.weight");
    snprintf(top.name, sizeof top.name, "conformance.rows.top.weight");
    snprintf(bottom.name, sizeof bottom.name, "conformance.rows.bottom.weight");
    whole.info.name = whole.name;
    top.info.name = top.name;
    bottom.info.name = bottom.name;
    top.n = top.wt.shape[0] = top.info.out_features = n1;
    bottom.n = bottom.wt.shape[0] = bottom.info.out_features = n2;
    bottom.wt.data = (char *)L->w + (size_t)(n1 * k) * es;
    if (L->b) {
        top.bt.shape[0] = n1;
        bottom.bt.shape[0] = n2;
        bottom.bt.data = (char *)L->b + (size_t)n1 * es;
    }
    packed_layer pw, pt, pb;
    memset(&pw, 0, sizeof pw);
    memset(&pt, 0, sizeof pt);
    memset(&pb, 0, sizeof pb);
    float *x = malloc((size_t)(m * k) * sizeof(float)), *y = malloc((size_t)(m * n) * sizeof(float));
    float *yt = malloc((size_t)(m * n1) * sizeof(float)), *yb = malloc((size_t)(m * n2) * sizeof(float));
    notes bad = {{0}, 0};
    int rc = QTOOL_OK, harness = 0;
    double worst = 0;
    if (!x || !y || !yt || !yb) {
        note(&bad, "out of memory");
        goto done;
    }
    if ((rc = pack_layer(c, inst, device, &whole, &pw)) || (rc = pack_layer(c, inst, device, &top, &pt)) ||
        (rc = pack_layer(c, inst, device, &bottom, &pb))) {
        note(&bad, "pack without calibration data: %s", status_str(rc));
        goto done;
    }
    if (pw.has_scale || pt.has_scale || pb.has_scale) {
        note(&bad, "asked for an input scale in a data-free pack");
        goto done;
    }
    make_input(c, 0, 0, m, L, x);
    round_to(x, (size_t)(m * k), io);
    if ((rc = run_matmul(c, device, io, pw.pk, x, m, k, n, y, &harness)) || harness ||
        (rc = run_matmul(c, device, io, pt.pk, x, m, k, n1, yt, &harness)) || harness ||
        (rc = run_matmul(c, device, io, pb.pk, x, m, k, n2, yb, &harness)) || harness) {
        note(&bad, "matmul: %s", harness ? "harness failure" : status_str(rc));
        goto done;
    }
    const double unit = io == QTOOL_DTYPE_F16 ? 0x1p-10 : io == QTOOL_DTYPE_BF16 ? 0x1p-7 : 0x1p-20;
    for (int64_t i = 0; i < m; i++)
        for (int64_t j = 0; j < n; j++) {
            const double part = j < n1 ? yt[i * n1 + j] : yb[i * n2 + (j - n1)], full = y[i * n + j];
            double mag = fabs(L->bd[j]);
            for (int64_t t = 0; t < k; t++) mag += fabs((double)x[i * k + t] * L->wd[j * k + t]);
            const double d = fabs(full - part), allowed = 4.0 * unit * (mag + fabs(full));
            if (!(d <= allowed)) {
                if (bad.n < 3)
                    note(&bad, "row %lld, output %lld: %.9g packed whole, %.9g packed apart", (long long)i,
                         (long long)j, full, part);
                else
                    bad.n++;
            }
            if (mag > 0 && d / mag > worst) worst = d / mag;
        }
done:
    if (bad.n)
        add_result(c, QT_CONF_FAIL, "row-independence", dev_label, "%s", bad.text);
    else
        add_result(c, QT_CONF_PASS, "row-independence", dev_label,
                   "%lldx%lld packed whole and as %lld + %lld rows: outputs within %.2e of sum |x w|", (long long)n,
                   (long long)k, (long long)n1, (long long)n2, worst);
    release_packed(c, &pw);
    release_packed(c, &pt);
    release_packed(c, &pb);
    free(x);
    free(y);
    free(yt);
    free(yb);
}

static double glu_act_ref(int epilogue, double x)
{
    switch (epilogue) {
    case QTOOL_EPILOGUE_SILU_GLU: return x / (1.0 + exp(-x));
    case QTOOL_EPILOGUE_GELU_GLU: return 0.5 * x * (1.0 + erf(x / sqrt(2.0)));
    default: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
    }
}

/* The epilogues of qtool_matmul_args (CUDA), each against the plain matmul z
 * of the same packed layer and input, at M = 17 and 4160 (a plugin may
 * switch kernels with M):
 *   glu-epilogue (QTOOL_PLUGIN_GLU_EPILOGUE): each GLU epilogue against
 *     act(z[2j]) * z[2j + 1] on the host. Gate and up may be summed in
 *     another order and the activation computed another way: allowed 8 units
 *     of the output type's rounding of |act(g) u| + |g u| + |u|.
 *   residual-epilogue (QTOOL_PLUGIN_RESIDUAL_EPILOGUE): y starting as a
 *     residual r ends as r + z, rounded once: within 2 units of the output
 *     type's rounding of |r| + |z|. */
static void check_epilogues(conf *c, int device, const char *dev_label, qtool_instance *inst, const layer_data *L,
                            int io)
{
    const int glu = (c->d->flags & QTOOL_PLUGIN_GLU_EPILOGUE) != 0;
    const int res = (c->d->flags & QTOOL_PLUGIN_RESIDUAL_EPILOGUE) != 0;
    const char *skip = device != QTOOL_DEVICE_CUDA ? "CUDA only" : NULL;
    if (!glu) add_result(c, QT_CONF_SKIP, "glu-epilogue", dev_label, "the plugin does not claim it");
    else if (skip || L->n % 2)
        add_result(c, QT_CONF_SKIP, "glu-epilogue", dev_label, "%s", skip ? skip : "a layer of an odd row count");
    if (!res) add_result(c, QT_CONF_SKIP, "residual-epilogue", dev_label, "the plugin does not claim it");
    else if (skip) add_result(c, QT_CONF_SKIP, "residual-epilogue", dev_label, "%s", skip);
    const int do_glu = glu && !skip && L->n % 2 == 0, do_res = res && !skip;
    if (!do_glu && !do_res) return;

    static const int64_t ms[2] = {17, 4160};
    const int64_t k = L->k, n = L->n, half = n / 2;
    const double unit = io == QTOOL_DTYPE_F16 ? 0x1p-10 : 0x1p-7;
    packed_layer pl;
    memset(&pl, 0, sizeof pl);
    notes bad_glu = {{0}, 0}, bad_res = {{0}, 0}, *both[2] = {&bad_glu, &bad_res};
    double worst_glu = 0, worst_res = 0;
    float *x = NULL, *z = NULL, *r = NULL, *y = NULL;
    int rc = pack_layer(c, inst, device, L, &pl), harness = 0;
    for (int i = 0; rc && i < 2; i++) note(both[i], "pack: %s", status_str(rc));
    for (int mi = 0; mi < 2 && !rc && !bad_glu.n && !bad_res.n; mi++) {
        const int64_t m = ms[mi];
        free(x);
        free(z);
        free(r);
        free(y);
        x = malloc((size_t)(m * k) * sizeof(float));
        z = malloc((size_t)(m * n) * sizeof(float));
        r = malloc((size_t)(m * n) * sizeof(float));
        y = malloc((size_t)(m * n) * sizeof(float));
        if (!x || !z || !r || !y) {
            for (int i = 0; i < 2; i++) note(both[i], "out of memory");
            break;
        }
        make_input(c, 0, 0, m, L, x);
        round_to(x, (size_t)(m * k), io);
        if ((rc = run_matmul(c, device, io, pl.pk, x, m, k, n, z, &harness)) || harness) {
            for (int i = 0; i < 2; i++)
                note(both[i], "plain matmul M=%lld: %s", (long long)m, harness ? "harness failure" : status_str(rc));
            break;
        }
        for (int ep = QTOOL_EPILOGUE_SILU_GLU; do_glu && ep <= QTOOL_EPILOGUE_GELU_TANH_GLU && !bad_glu.n; ep++) {
            if ((rc = run_matmul_ep(c, device, io, pl.pk, x, m, k, half, y, &harness, ep, NULL)) || harness) {
                note(&bad_glu, "epilogue %d M=%lld: %s", ep, (long long)m,
                     harness ? "harness failure" : status_str(rc));
                rc = 0;
                break;
            }
            for (int64_t i = 0; i < m; i++)
                for (int64_t j = 0; j < half; j++) {
                    const double g = z[i * n + 2 * j], u = z[i * n + 2 * j + 1];
                    const double ref = glu_act_ref(ep, g) * u, got = y[i * half + j];
                    const double mag = fabs(ref) + fabs(g * u) + fabs(u), d = fabs(got - ref);
                    if (!(d <= 8.0 * unit * mag)) {
                        if (bad_glu.n < 3)
                            note(&bad_glu, "epilogue %d, M=%lld, row %lld, output %lld: %.6g, plain matmul then GLU %.6g",
                                 ep, (long long)m, (long long)i, (long long)j, got, ref);
                        else
                            bad_glu.n++;
                    }
                    if (mag > 0 && d / mag > worst_glu) worst_glu = d / mag;
                }
        }
        if (!do_res) continue;
        for (int64_t i = 0; i < m * n; i++) r[i] = (float)(((i * 2654435761u) % 2001) / 250.0 - 4.0);
        round_to(r, (size_t)(m * n), io);
        if ((rc = run_matmul_ep(c, device, io, pl.pk, x, m, k, n, y, &harness, QTOOL_EPILOGUE_RESIDUAL, r)) ||
            harness) {
            note(&bad_res, "M=%lld: %s", (long long)m, harness ? "harness failure" : status_str(rc));
            rc = 0;
            continue;
        }
        for (int64_t i = 0; i < m * n; i++) {
            const double ref = (double)r[i] + z[i], mag = fabs(r[i]) + fabs(z[i]), d = fabs(y[i] - ref);
            if (!(d <= 2.0 * unit * mag)) {
                if (bad_res.n < 3)
                    note(&bad_res, "M=%lld, element %lld: %.6g, residual + plain matmul %.6g", (long long)m,
                         (long long)i, y[i], ref);
                else
                    bad_res.n++;
            }
            if (mag > 0 && d / mag > worst_res) worst_res = d / mag;
        }
    }
    if (do_glu) {
        if (bad_glu.n) add_result(c, QT_CONF_FAIL, "glu-epilogue", dev_label, "%s", bad_glu.text);
        else
            add_result(c, QT_CONF_PASS, "glu-epilogue", dev_label,
                       "%lldx%lld, M = 17 and 4160, three activations: within %.2e of the plain matmul then GLU",
                       (long long)n, (long long)k, worst_glu);
    }
    if (do_res) {
        if (bad_res.n) add_result(c, QT_CONF_FAIL, "residual-epilogue", dev_label, "%s", bad_res.text);
        else
            add_result(c, QT_CONF_PASS, "residual-epilogue", dev_label,
                       "%lldx%lld, M = 17 and 4160: within %.2e of residual + plain matmul", (long long)n,
                       (long long)k, worst_res);
    }
    release_packed(c, &pl);
    free(x);
    free(z);
    free(r);
    free(y);
}

/* Squared error of y against x_eff W^T + b in double, and the squared
 * cancellation-free magnitude sum(x^2 W^2 + b^2). */
typedef struct err_sum {
    double e2, s2;
    int64_t nonfinite;
} err_sum;

static void accumulate_error(const layer_data *L, const double *x_eff, int64_t m, const float *y,
                             const double *w_override, err_sum *acc)
{
    const double *W = w_override ? w_override : L->wd;
    for (int64_t i = 0; i < m; i++) {
        const double *xr = x_eff + i * L->k;
        for (int64_t j = 0; j < L->n; j++) {
            const double *wr = W + j * L->k;
            double s = L->bd[j], mag = L->bd[j] * L->bd[j];
            for (int64_t t = 0; t < L->k; t++) {
                s += xr[t] * wr[t];
                mag += xr[t] * xr[t] * wr[t] * wr[t];
            }
            double v = y[i * L->n + j];
            if (!isfinite(v)) {
                acc->nonfinite++;
                continue;
            }
            acc->e2 += (v - s) * (v - s);
            acc->s2 += mag;
        }
    }
}

static double err_of(const err_sum *e) { return e->s2 > 0 ? sqrt(e->e2 / e->s2) : (e->e2 > 0 ? INFINITY : 0); }

/* Outputs of M rows can deviate more than the pooled error by chance:
 * allow (1 + 3/sqrt(outputs)) times the bound for one M. */
static double per_m_factor(int64_t m, int64_t n) { return 1.0 + 3.0 / sqrt((double)(m * n)); }

static const char *dtype_label(int io)
{
    return io == QTOOL_DTYPE_F16 ? "f16" : io == QTOOL_DTYPE_BF16 ? "bf16" : "f32";
}

/* -------------------------------------------------------- (a) descriptor */

static int valid_name(const char *s)
{
    if (!s || !*s || strlen(s) > 63) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) return 0;
    return 1;
}

static void check_descriptor(conf *c)
{
    const qtool_plugin_desc *d = c->d;
    notes bad = {{0}, 0}, soft = {{0}, 0};
    current_check = "descriptor";
    if (QTOOL_ABI_MAJOR_OF(d->abi_version) != QTOOL_ABI_MAJOR)
        note(&bad, "ABI %u.%u, host speaks %d.x", QTOOL_ABI_MAJOR_OF(d->abi_version),
             QTOOL_ABI_MINOR_OF(d->abi_version), QTOOL_ABI_MAJOR);
    if (d->struct_size < QTOOL_PLUGIN_DESC_MIN_SIZE) note(&bad, "struct_size %u too small", d->struct_size);
    if (!valid_name(d->name)) note(&bad, "name must be [a-z0-9_]+, at most 63 characters");
    if (!d->version || !d->version[0]) note(&bad, "no version string");
    if (!d->summary || !d->summary[0]) note(&bad, "no summary");
    if (d->devices == 0 || (d->devices & ~(QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA)))
        note(&bad, "devices mask 0x%x is empty or has unknown bits", d->devices);
    uint32_t known_flags = QTOOL_PLUGIN_NEEDS_CALIBRATION | QTOOL_PLUGIN_THREAD_SAFE_MATMUL | QTOOL_PLUGIN_BASELINE |
                           QTOOL_PLUGIN_ROW_INDEPENDENT | QTOOL_PLUGIN_GLU_EPILOGUE |
                           QTOOL_PLUGIN_RESIDUAL_EPILOGUE;
    if (d->flags & ~known_flags) note(&bad, "unknown flag bits 0x%x", d->flags & ~known_flags);
    if (d->weight_bits < 1 || d->weight_bits > 32) note(&bad, "weight_bits %d outside 1..32", d->weight_bits);
    if (d->activation_bits < 1 || d->activation_bits > 32)
        note(&bad, "activation_bits %d outside 1..32", d->activation_bits);
    if (!d->probe) note(&bad, "no probe slot");
    if (!d->create || !d->destroy) note(&bad, "create and destroy are required");
    if (!d->pack || !d->free_packed) note(&bad, "pack and free_packed are required");
    if (!d->memory) note(&bad, "memory is required");
    if ((d->devices & QTOOL_DEVMASK_CPU) && !d->matmul_cpu) note(&bad, "devices lists cpu but matmul_cpu is NULL");
    if ((d->devices & QTOOL_DEVMASK_CUDA) && !d->matmul_cuda)
        note(&bad, "devices lists cuda but matmul_cuda is NULL");
    if ((d->flags & QTOOL_PLUGIN_NEEDS_CALIBRATION) && !d->calibrate)
        note(&bad, "NEEDS_CALIBRATION is set but calibrate is NULL");
    if (!d->save != !d->load) note(&bad, "save and load come together (one is NULL)");
    if (!(d->devices & QTOOL_DEVMASK_CPU) && d->matmul_cpu) note(&soft, "matmul_cpu set but devices lacks cpu");
    if (!(d->devices & QTOOL_DEVMASK_CUDA) && d->matmul_cuda) note(&soft, "matmul_cuda set but devices lacks cuda");
    if (!d->quant_config_json != !d->accepts_config)
        note(&soft, "quant_config_json and accepts_config usually come together");
    if ((d->flags & QTOOL_PLUGIN_BASELINE) && d->weight_bits < 16) note(&soft, "a baseline with weight_bits < 16");
    for (uint32_t i = 0; i < d->n_options && d->options; i++)
        if (!d->options[i].help || !d->options[i].help[0]) note(&soft, "option '%s' has no help", d->options[i].name);
    if (bad.n)
        add_result(c, QT_CONF_FAIL, "descriptor", "", "%s", bad.text);
    else
        add_result(c, QT_CONF_PASS, "descriptor", "", "%s %s, %d-bit weights, %d-bit activations, devices %s%s%s",
                   d->name, d->version, d->weight_bits, d->activation_bits,
                   (d->devices & QTOOL_DEVMASK_CPU) ? "cpu" : "",
                   (d->devices & QTOOL_DEVMASK_CPU) && (d->devices & QTOOL_DEVMASK_CUDA) ? "+" : "",
                   (d->devices & QTOOL_DEVMASK_CUDA) ? "cuda" : "");
    if (soft.n) add_result(c, QT_CONF_PASS, "descriptor-notes", "", "advice: %s", soft.text);

    /* Options: the defaults must parse, and the values arrive in order. */
    qt_plugin_options defaults;
    if (qt_plugin_parse_options(c->p, NULL, 0, &defaults) != 0) {
        add_result(c, QT_CONF_FAIL, "options", "", "defaults do not parse: %s", qt_last_error());
    } else {
        int ok = defaults.n == d->n_options;
        for (uint32_t i = 0; ok && i < defaults.n; i++)
            ok = defaults.values[i].name && strcmp(defaults.values[i].name, d->options[i].name) == 0;
        if (ok) add_result(c, QT_CONF_PASS, "options", "", "%u option(s); defaults parse", d->n_options);
        else add_result(c, QT_CONF_FAIL, "options", "", "parsed defaults do not line up with the declared options");
        qt_plugin_options_free(&defaults);
    }
}

/* ------------------------------------------------------ (e) bad arguments */

static void expect_rejected(notes *accepted, notes *odd, const char *what, int rc, int *n)
{
    (*n)++;
    if (rc == QTOOL_OK) note(accepted, "%s accepted", what);
    else if (rc < QTOOL_ERR_INVALID_ARGUMENT || rc > QTOOL_ERR_INTERNAL) note(accepted, "%s returned unknown status %d", what, rc);
    else if (rc != QTOOL_ERR_INVALID_ARGUMENT && rc != QTOOL_ERR_UNSUPPORTED)
        note(odd, "%s gave %s", what, qt_status_name(rc));
}

static void check_bad_arguments(conf *c, int device, const char *dev_label, qtool_instance *inst,
                                const layer_data *L)
{
    int saved;
    quiet_logs(c, &saved);
    notes acc = {{0}, 0}, odd = {{0}, 0}, leak = {{0}, 0};
    int n = 0;
    mem_snap before;
    snap(&before);
    const qtool_plugin_desc *d = c->d;

    /* Pack with broken inputs. */
    struct {
        const char *what;
        int kind;
    } packs[] = {{"pack with a NULL weight", 0},     {"pack with an I8 weight", 1},
                 {"pack with a 1-D weight", 2},       {"pack with a bias of N+1", 3},
                 {"pack with layer info K+1", 4}};
    for (size_t t = 0; t < sizeof packs / sizeof packs[0]; t++) {
        qtool_tensor w = L->wt, b = L->bt, bbig;
        qtool_layer_info info = L->info;
        float *bigbias = NULL;
        qtool_pack_args a;
        memset(&a, 0, sizeof a);
        a.struct_size = sizeof a;
        a.device = device;
        a.layer = &info;
        a.weight = &w;
        a.bias = L->b ? &b : NULL;
        switch (packs[t].kind) {
        case 0: a.weight = NULL; break;
        case 1: w.dtype = QTOOL_DTYPE_I8; break; /* the buffer is larger than I8 needs: no overread */
        case 2: w.ndim = 1; w.shape[0] = L->n * L->k; w.shape[1] = 0; break;
        case 3:
            bigbias = calloc((size_t)L->n + 1, sizeof(float));
            if (!bigbias) continue;
            memset(&bbig, 0, sizeof bbig);
            bbig.data = bigbias;
            bbig.dtype = QTOOL_DTYPE_F32;
            bbig.device = QTOOL_DEVICE_CPU;
            bbig.ndim = 1;
            bbig.shape[0] = L->n + 1;
            a.bias = &bbig;
            break;
        case 4: info.in_features = L->k + 1; break;
        default: break;
        }
        qtool_packed *pk = NULL;
        current_check = packs[t].what;
        int rc = d->pack(inst, &a, &pk);
        expect_rejected(&acc, &odd, packs[t].what, rc, &n);
        if (rc == QTOOL_OK && pk) d->free_packed(pk);
        free(bigbias);
    }

    /* Matmul with broken inputs on a good layer. */
    packed_layer pl;
    int rc = pack_layer(c, inst, device, L, &pl);
    if (rc != QTOOL_OK) {
        note(&odd, "could not pack the layer for the matmul checks: %s", status_str(rc));
    } else {
        int64_t m = 3, k = L->k, nn = L->n;
        size_t cap = (size_t)(m * (k + 1) > m * (nn + 1) ? m * (k + 1) : m * (nn + 1)) * sizeof(double);
        void *hx = calloc(1, cap), *hy = calloc(1, cap);
        void *dx = NULL, *dy = NULL;
        int cuda = device == QTOOL_DEVICE_CUDA;
        if (cuda && (qt_cuda_malloc(&dx, cap) || qt_cuda_malloc(&dy, cap) || qt_cuda_memset(dx, 0, cap) ||
                     qt_cuda_memset(dy, 0, cap) || qt_cuda_device_sync())) {
            qt_cuda_free(dx);
            qt_cuda_free(dy);
            dx = dy = NULL;
        }
        int (*mm)(qtool_packed *, const qtool_matmul_args *) = cuda ? d->matmul_cuda : d->matmul_cpu;
        int io = cuda ? QTOOL_DTYPE_F16 : QTOOL_DTYPE_F32;
        if (hx && hy && (!cuda || (dx && dy))) {
            /* Every buffer is large enough for what the bad shape says, so a
             * plugin that misses a check computes garbage, never overreads. */
            enum { XK1, YN1, XDT, XDEV, XNULL, YNULL, XDATANULL, EPI, M0, N_CASES };
            static const char *const names[N_CASES] = {
                "x with K+1 columns", "y with N+1 columns", "x of the wrong dtype", "x on the wrong device",
                "NULL x", "NULL y", "x with NULL data", "an epilogue it does not offer", "M = 0"};
            /* SiLU-GLU where the plugin does not claim GLU epilogues (and on
             * the CPU, which never gets one), else a code no SDK defines. */
            const int bad_epilogue = !cuda || !(d->flags & QTOOL_PLUGIN_GLU_EPILOGUE) ? QTOOL_EPILOGUE_SILU_GLU : 99;
            for (int t = 0; t < N_CASES; t++) {
                /* Device pointers a plugin would dereference blindly can
                 * poison the CUDA context for later checks: skip those. */
                if (cuda && (t == XDEV || t == XDATANULL)) continue;
                qtool_tensor xt, yt;
                memset(&xt, 0, sizeof xt);
                memset(&yt, 0, sizeof yt);
                xt.data = cuda ? dx : hx;
                yt.data = cuda ? dy : hy;
                xt.dtype = yt.dtype = io;
                xt.device = yt.device = device;
                xt.ndim = yt.ndim = 2;
                xt.shape[0] = yt.shape[0] = m;
                xt.shape[1] = k;
                yt.shape[1] = nn;
                qtool_matmul_args a;
                memset(&a, 0, sizeof a);
                a.struct_size = sizeof a;
                a.x = &xt;
                a.y = &yt;
                a.stream = cuda ? c->stream : NULL;
                switch (t) {
                case XK1: xt.shape[1] = k + 1; break;
                case YN1: yt.shape[1] = nn + 1; break;
                case XDT: xt.dtype = cuda ? QTOOL_DTYPE_F32 : QTOOL_DTYPE_F64; break;
                case XDEV: xt.device = QTOOL_DEVICE_CUDA; break;
                case XNULL: a.x = NULL; break;
                case YNULL: a.y = NULL; break;
                case XDATANULL: xt.data = NULL; break;
                case EPI: a.epilogue = bad_epilogue; break;
                case M0: xt.shape[0] = yt.shape[0] = 0; xt.data = yt.data = NULL; break;
                default: break;
                }
                current_check = names[t];
                rc = mm(pl.pk, &a);
                if (t == M0) {
                    n++;
                    if (rc != QTOOL_OK && rc != QTOOL_ERR_INVALID_ARGUMENT && rc != QTOOL_ERR_UNSUPPORTED)
                        note(&odd, "M = 0 gave %s", qt_status_name(rc));
                } else if (t == EPI) {
                    /* Advice, not a failure: the host never sends an epilogue
                     * a plugin does not claim, and plugins built before the
                     * field existed ignore it. */
                    n++;
                    if (rc == QTOOL_OK)
                        note(&odd, "epilogue %d was accepted though not offered (refusing it catches host bugs)",
                             bad_epilogue);
                } else {
                    expect_rejected(&acc, &odd, names[t], rc, &n);
                }
                if (cuda && qt_cuda_stream_sync(c->stream) != 0) {
                    note(&acc, "%s left a CUDA error: %s", names[t], qt_last_error());
                    break;
                }
            }
        }
        qt_cuda_free(dx);
        qt_cuda_free(dy);
        free(hx);
        free(hy);
        release_packed(c, &pl);
    }
    check_no_leak(&before, "after the bad calls", &leak);
    qt_set_log_level(saved);
    if (acc.n || leak.n)
        add_result(c, QT_CONF_FAIL, "bad-arguments", dev_label, "%s%s%s", acc.text, acc.n && leak.n ? "; " : "",
                   leak.text);
    else
        add_result(c, QT_CONF_PASS, "bad-arguments", dev_label, "%d bad calls rejected cleanly%s%s", n,
                   odd.n ? "; note: " : "", odd.text);
}

/* ---------------------------------------------------------- (f) save/load */

typedef struct saved_tensor {
    char *suffix;
    qtool_tensor t; /* data: malloc'd CPU copy */
} saved_tensor;

typedef struct store {
    saved_tensor *items;
    size_t n, cap;
    conf *c;
    void *stream;
    notes problems;
    int skip; /* index hidden from `get`/`has`, or -1; -2 hides all */
} store;

static int valid_suffix(const char *s)
{
    if (!s || !*s || strlen(s) > 200) return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
              *p == '.'))
            return 0;
    return 1;
}

static int store_put(void *ctx, const char *suffix, const qtool_tensor *t)
{
    store *s = ctx;
    if (!valid_suffix(suffix)) {
        note(&s->problems, "put with an invalid suffix");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->items[i].suffix, suffix) == 0) {
            note(&s->problems, "suffix '%s' put twice", suffix);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    if (!t || t->ndim < 0 || t->ndim > QTOOL_MAX_DIMS || qtool_dtype_size(t->dtype) == 0 ||
        (t->device != QTOOL_DEVICE_CPU && t->device != QTOOL_DEVICE_CUDA)) {
        note(&s->problems, "'%s': bad tensor (dtype, ndim or device)", suffix);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t numel = 1;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0 || (t->shape[i] > 0 && numel > ((int64_t)1 << 40) / t->shape[i])) {
            note(&s->problems, "'%s': bad shape", suffix);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
        numel *= t->shape[i];
    }
    size_t bytes = (size_t)numel * qtool_dtype_size(t->dtype);
    if (bytes && !t->data) {
        note(&s->problems, "'%s': NULL data", suffix);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 8;
        saved_tensor *g = realloc(s->items, cap * sizeof *g);
        if (!g) return QTOOL_ERR_OUT_OF_MEMORY;
        s->items = g;
        s->cap = cap;
    }
    saved_tensor *e = &s->items[s->n];
    e->suffix = strdup(suffix);
    void *copy = malloc(bytes ? bytes : 1);
    if (!e->suffix || !copy) {
        free(e->suffix);
        free(copy);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    if (t->device == QTOOL_DEVICE_CUDA) {
        if (qt_cuda_stream_sync(s->stream) != 0 || (bytes && qt_cuda_memcpy_d2h(copy, t->data, bytes) != 0)) {
            note(&s->problems, "'%s': cannot copy from the device: %s", suffix, qt_last_error());
            free(e->suffix);
            free(copy);
            return QTOOL_ERR_DEVICE;
        }
    } else if (bytes) {
        memcpy(copy, t->data, bytes);
    }
    e->t = *t;
    e->t.data = copy;
    e->t.device = QTOOL_DEVICE_CPU;
    s->n++;
    return QTOOL_OK;
}

static int store_visible(const store *s, size_t i) { return s->skip != -2 && (int)i != s->skip; }

static int store_get(void *ctx, const char *suffix, qtool_tensor *out)
{
    store *s = ctx;
    for (size_t i = 0; suffix && out && i < s->n; i++)
        if (store_visible(s, i) && strcmp(s->items[i].suffix, suffix) == 0) {
            *out = s->items[i].t;
            return QTOOL_OK;
        }
    return QTOOL_ERR_FORMAT;
}

static int store_has(void *ctx, const char *suffix)
{
    store *s = ctx;
    for (size_t i = 0; suffix && i < s->n; i++)
        if (store_visible(s, i) && strcmp(s->items[i].suffix, suffix) == 0) return 1;
    return 0;
}

static void store_free(store *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->items[i].suffix);
        free(s->items[i].t.data);
    }
    free(s->items);
    s->items = NULL;
    s->n = s->cap = 0;
}

static void check_save_load(conf *c, int device, const char *dev_label, qtool_instance *inst, int si,
                            const layer_data *L, int io)
{
    const qtool_plugin_desc *d = c->d;
    if (!d->save || !d->load) {
        add_result(c, QT_CONF_SKIP, "save-load", dev_label, "the plugin has no save/load");
        return;
    }
    notes fail = {{0}, 0};
    mem_snap before;
    snap(&before);
    store st;
    memset(&st, 0, sizeof st);
    st.c = c;
    st.stream = c->stream;
    st.skip = -1;
    int64_t m = 17;
    size_t xn = (size_t)(m * L->k), yn = (size_t)(m * L->n);
    float *x = malloc(xn * sizeof(float)), *y1 = malloc(yn * sizeof(float)), *y2 = malloc(yn * sizeof(float));
    packed_layer pl;
    memset(&pl, 0, sizeof pl);
    int harness = 0, rc;
    if (!x || !y1 || !y2) {
        c->fatal = 1;
        goto out;
    }
    if ((rc = pack_layer(c, inst, device, L, &pl)) != QTOOL_OK) {
        note(&fail, "pack failed: %s", status_str(rc));
        goto out;
    }
    make_input(c, si, 0, m, L, x);
    for (size_t i = 0; i < xn; i++) x[i] /= pl.input_scale[i % (size_t)L->k];
    round_to(x, xn, io);
    rc = run_matmul(c, device, io, pl.pk, x, m, L->k, L->n, y1, &harness);
    if (rc != QTOOL_OK || harness) {
        note(&fail, "matmul before saving failed: %s", harness ? qt_last_error() : status_str(rc));
        goto out;
    }
    qtool_save_sink sink = {&st, store_put};
    current_check = "save";
    rc = d->save(pl.pk, &sink);
    if (rc != QTOOL_OK || st.problems.n) {
        note(&fail, "save: %s%s%s", status_str(rc), st.problems.n ? "; " : "", st.problems.text);
        goto out;
    }
    if (st.n == 0) {
        note(&fail, "save put no tensors");
        goto out;
    }
    release_packed(c, &pl);

    qtool_load_source src = {&st, store_get, store_has};
    /* Each tensor left out in turn: must not crash or leak; with nothing
     * at all, load must fail. */
    int saved;
    quiet_logs(c, &saved);
    for (int hide = -2; hide < (int)st.n; hide++) {
        if (hide == -1) continue;
        st.skip = hide;
        mem_snap b2;
        snap(&b2);
        qtool_packed *pk = NULL;
        current_check = "load with a missing tensor";
        rc = d->load(inst, &L->info, device, &src, &pk);
        if (rc == QTOOL_OK && pk) d->free_packed(pk);
        if (hide == -2 && rc == QTOOL_OK) note(&fail, "load succeeded with no tensors at all");
        check_no_leak(&b2, hide == -2 ? "load with no tensors" : "load with a missing tensor", &fail);
    }
    qt_set_log_level(saved);
    st.skip = -1;

    mem_snap b3;
    snap(&b3);
    qtool_packed *pk = NULL;
    current_check = "load";
    rc = d->load(inst, &L->info, device, &src, &pk);
    if (rc != QTOOL_OK || !pk) {
        note(&fail, "load failed: %s", status_str(rc));
        goto out;
    }
    pl.pk = pk;
    pl.input_scale = NULL;
    check_memory(c, pk, &b3, "after load", &fail);
    rc = run_matmul(c, device, io, pk, x, m, L->k, L->n, y2, &harness);
    if (rc != QTOOL_OK || harness) {
        note(&fail, "matmul after loading failed: %s", harness ? qt_last_error() : status_str(rc));
    } else if (memcmp(y1, y2, yn * sizeof(float)) != 0) {
        size_t diff = 0;
        for (size_t i = 0; i < yn; i++) diff += memcmp(&y1[i], &y2[i], sizeof(float)) != 0;
        note(&fail, "%zu of %zu outputs differ after the round trip", diff, yn);
    }
out:
    release_packed(c, &pl);
    check_no_leak(&before, "after save/load", &fail);
    if (fail.n) {
        add_result(c, QT_CONF_FAIL, "save-load", dev_label, "K=%lld N=%lld: %s", (long long)L->k, (long long)L->n,
                   fail.text);
    } else {
        char list[300] = "";
        size_t o = 0;
        for (size_t i = 0; i < st.n && o + 40 < sizeof list; i++) {
            char shp[64];
            o += (size_t)snprintf(list + o, sizeof list - o, "%s%s %s %s", i ? ", " : "", st.items[i].suffix,
                                  qt_dtype_name(st.items[i].t.dtype), qt_shape_str(&st.items[i].t, shp, sizeof shp));
        }
        add_result(c, QT_CONF_PASS, "save-load", dev_label,
                   "identical output after reload; missing tensors handled (%zu tensors: %s)", st.n, list);
    }
    store_free(&st);
    free(x);
    free(y1);
    free(y2);
}

/* ------------------------------------------ (b, d) one device, all shapes */

static void run_device(conf *c, int device)
{
    const qtool_plugin_desc *d = c->d;
    char dev_label[16];
    qtool_device_info info;
    if (device == QTOOL_DEVICE_CPU) {
        qt_device_cpu_info(&info);
        snprintf(dev_label, sizeof dev_label, "cpu");
    } else {
        snprintf(dev_label, sizeof dev_label, "cuda:%d", c->cfg->cuda_device);
        if (!c->cuda_available) {
            add_result(c, QT_CONF_SKIP, "matmul", dev_label, "no CUDA device: %s", c->no_cuda);
            return;
        }
        if (qt_cuda_device_info(c->cfg->cuda_device, &info) != 0) {
            add_result(c, QT_CONF_SKIP, "matmul", dev_label, "cannot read the device: %s", qt_last_error());
            return;
        }
    }
    char reason[512];
    if (!qt_device_plugin_supported(d, &info, reason, sizeof reason)) {
        add_result(c, QT_CONF_SKIP, "matmul", dev_label, "%s", reason);
        return;
    }
    mem_snap at_create;
    snap(&at_create);
    qtool_instance *inst = NULL;
    current_check = "create";
    int rc = qt_plugin_create(c->p, &c->opts, device == QTOOL_DEVICE_CUDA ? c->cfg->cuda_device : -1,
                              device == QTOOL_DEVICE_CUDA ? c->stream : NULL, &inst);
    if (rc != QTOOL_OK) {
        add_result(c, QT_CONF_FAIL, "create", dev_label, "%s", qt_last_error());
        return;
    }
    notes memnotes = {{0}, 0}, deqnotes = {{0}, 0};
    int mem_layers = 0, deq_layers = 0, first_ok = -1, first_bias_ok = -1, any_ran = 0;
    double deq_w_err = 0, deq_cons_err = 0;
    const int ios_cpu[] = {QTOOL_DTYPE_F32}, ios_cuda[] = {QTOOL_DTYPE_F16, QTOOL_DTYPE_BF16};
    const int *ios = device == QTOOL_DEVICE_CPU ? ios_cpu : ios_cuda;
    int n_ios = device == QTOOL_DEVICE_CPU ? 1 : 2;
    int io_supported[2] = {0, 0};

    for (int si = 0; si < N_SHAPES && !c->fatal; si++) {
        layer_data L;
        char check[48];
        snprintf(check, sizeof check, "matmul K=%lld N=%lld", (long long)shapes[si].k, (long long)shapes[si].n);
        if (make_layer(c, si, &L) != QTOOL_OK) {
            c->fatal = 1;
            break;
        }
        rc = calibrate_layer(c, inst, si, &L);
        if (rc == QTOOL_ERR_UNSUPPORTED) {
            add_result(c, QT_CONF_SKIP, check, dev_label, "calibrate: unsupported for this shape");
            free_layer(&L);
            continue;
        } else if (rc != QTOOL_OK) {
            add_result(c, QT_CONF_FAIL, check, dev_label, "calibrate failed: %s", status_str(rc));
            free_layer(&L);
            continue;
        }
        mem_snap before_pack;
        snap(&before_pack);
        packed_layer pl;
        rc = pack_layer(c, inst, device, &L, &pl);
        if (rc == QTOOL_ERR_UNSUPPORTED) {
            add_result(c, QT_CONF_SKIP, check, dev_label, "pack: unsupported for this shape (%s weight)",
                       qt_dtype_name(L.wdtype));
            check_no_leak(&before_pack, "after a refused pack", &memnotes);
            free_layer(&L);
            continue;
        } else if (rc != QTOOL_OK) {
            add_result(c, QT_CONF_FAIL, check, dev_label, "pack failed: %s", status_str(rc));
            check_no_leak(&before_pack, "after a failed pack", &memnotes);
            free_layer(&L);
            continue;
        }
        mem_layers++;
        char when[64];
        snprintf(when, sizeof when, "K=%lld N=%lld after pack", (long long)L.k, (long long)L.n);
        check_memory(c, pl.pk, &before_pack, when, &memnotes);
        uint64_t rep[QTOOL_MEM_COUNT] = {0};
        if (d->memory(pl.pk, rep) == QTOOL_OK) {
            uint64_t tot = 0;
            for (int k = 0; k < QTOOL_MEM_COUNT; k++) tot += rep[k];
            if (tot == 0) note(&memnotes, "K=%lld N=%lld: memory() reports nothing held", (long long)L.k, (long long)L.n);
        }

        /* x_eff = what the plugin was given, times the input scale. */
        int64_t mmax = ms[N_MS - 1];
        float *x = malloc((size_t)(mmax * L.k) * sizeof(float));
        float *y = malloc((size_t)(mmax * L.n) * sizeof(float));
        double *xe = malloc((size_t)(mmax * L.k) * sizeof(double));
        double *what = NULL;
        if (!x || !y || !xe) {
            c->fatal = 1;
            free(x);
            free(y);
            free(xe);
            release_packed(c, &pl);
            free_layer(&L);
            break;
        }

        /* Dequantize: W_hat against W, and against what matmul computes. */
        if (d->dequantize) {
            what = malloc((size_t)(L.n * L.k) * sizeof(double));
            float *wf = malloc((size_t)(L.n * L.k) * sizeof(float));
            if (what && wf) {
                current_check = "dequantize";
                rc = d->dequantize(pl.pk, wf);
                if (rc != QTOOL_OK) {
                    note(&deqnotes, "K=%lld N=%lld: dequantize failed: %s", (long long)L.k, (long long)L.n,
                         status_str(rc));
                    free(what);
                    what = NULL;
                } else {
                    deq_layers++;
                    double e2 = 0, s2 = 0;
                    int exact = 1;
                    for (int64_t i = 0; i < L.n * L.k; i++) {
                        double s = pl.input_scale[i % L.k];
                        what[i] = wf[i];
                        double v = wf[i] / s, dv = v - L.wd[i];
                        e2 += dv * dv;
                        s2 += L.wd[i] * L.wd[i];
                        if (wf[i] != (float)L.wd[i] || !isfinite(wf[i])) exact = 0;
                    }
                    double werr = s2 > 0 ? sqrt(e2 / s2) : 0;
                    if (!isfinite(werr)) werr = INFINITY;
                    if (werr > deq_w_err) deq_w_err = werr;
                    double wtol = exact_baseline(d, device) ? 0.0 : bits_tolerance(d->weight_bits);
                    if (exact_baseline(d, device) && !exact)
                        note(&deqnotes, "K=%lld N=%lld: a baseline must keep the weight exactly on the CPU",
                             (long long)L.k, (long long)L.n);
                    else if (werr > (wtol > 1e-6 ? wtol : 1e-6))
                        note(&deqnotes, "K=%lld N=%lld: W_hat is %.3g away from W (limit %.3g)", (long long)L.k,
                             (long long)L.n, werr, wtol);
                }
            } else {
                free(what);
                what = NULL;
            }
            free(wf);
        }

        int shape_ran = 0;
        for (int ii = 0; ii < n_ios; ii++) {
            int io = ios[ii];
            double tol = qt_conf_tolerance(d, device, io);
            double ctol = consistency_tolerance(d, device, io);
            err_sum pooled = {0, 0, 0};
            double worst_ratio = 0, worst_m_err = 0, worst_cons = 0;
            int64_t worst_m = 0, n_unsup = 0, n_run = 0;
            notes fails = {{0}, 0};
            for (int mi = 0; mi < N_MS; mi++) {
                int64_t m = ms[mi];
                make_input(c, si, 0, m, &L, x);
                for (int64_t i = 0; i < m * L.k; i++) x[i] /= pl.input_scale[i % L.k];
                round_to(x, (size_t)(m * L.k), io);
                for (int64_t i = 0; i < m * L.k; i++) xe[i] = (double)x[i] * pl.input_scale[i % L.k];
                int harness = 0;
                rc = run_matmul(c, device, io, pl.pk, x, m, L.k, L.n, y, &harness);
                if (harness) {
                    note(&fails, "M=%lld: harness error: %s", (long long)m, qt_last_error());
                    c->fatal = harness == QTOOL_ERR_OUT_OF_MEMORY;
                    break;
                }
                if (rc == QTOOL_ERR_UNSUPPORTED) {
                    n_unsup++;
                    continue;
                }
                if (rc != QTOOL_OK) {
                    note(&fails, "M=%lld: matmul failed: %s", (long long)m, status_str(rc));
                    continue;
                }
                n_run++;
                err_sum e = {0, 0, 0};
                accumulate_error(&L, xe, m, y, NULL, &e);
                if (e.nonfinite) {
                    note(&fails, "M=%lld: %lld outputs not finite (unwritten or overflow)", (long long)m,
                         (long long)e.nonfinite);
                    continue;
                }
                pooled.e2 += e.e2;
                pooled.s2 += e.s2;
                double err = err_of(&e), ratio = err / (tol * per_m_factor(m, L.n));
                if (ratio > worst_ratio) {
                    worst_ratio = ratio;
                    worst_m = m;
                    worst_m_err = err;
                }
                if (ratio > 1.0)
                    note(&fails, "M=%lld: error %.3g > %.3g", (long long)m, err, tol * per_m_factor(m, L.n));
                if (what) { /* the product with W_hat itself (x as given, no rescaling) */
                    for (int64_t i = 0; i < m * L.k; i++) xe[i] = (double)x[i];
                    err_sum ec = {0, 0, 0};
                    accumulate_error(&L, xe, m, y, what, &ec);
                    double ce = err_of(&ec);
                    if (ce > worst_cons) worst_cons = ce;
                    if (ce > ctol * per_m_factor(m, L.n))
                        note(&deqnotes, "K=%lld N=%lld M=%lld %s: matmul is %.3g away from x W_hat^T (limit %.3g)",
                             (long long)L.k, (long long)L.n, (long long)m, dtype_label(io), ce,
                             ctol * per_m_factor(m, L.n));
                }
            }
            if (worst_cons > deq_cons_err) deq_cons_err = worst_cons;
            char chk[64];
            snprintf(chk, sizeof chk, "%s%s%s", check, n_ios > 1 ? " " : "", n_ios > 1 ? dtype_label(io) : "");
            double perr = err_of(&pooled);
            if (n_run > 0 && perr > tol) note(&fails, "pooled error %.3g > %.3g", perr, tol);
            if (fails.n) {
                add_result(c, QT_CONF_FAIL, chk, dev_label, "%s", fails.text);
            } else if (n_run == 0) {
                add_result(c, QT_CONF_SKIP, chk, dev_label, "matmul: unsupported for every M");
            } else {
                add_result(c, QT_CONF_PASS, chk, dev_label,
                           "error %.2e (limit %.1e); worst M=%lld %.2e%s%s", perr, tol, (long long)worst_m,
                           worst_m_err, n_unsup ? "; some M unsupported" : "",
                           pl.has_scale ? "; with an input scale" : "");
                shape_ran = 1;
                io_supported[ii] = 1;
            }
        }
        free(what);
        free(x);
        free(y);
        free(xe);
        snprintf(when, sizeof when, "K=%lld N=%lld after matmul", (long long)L.k, (long long)L.n);
        check_memory(c, pl.pk, &before_pack, when, &memnotes);
        release_packed(c, &pl);
        snprintf(when, sizeof when, "K=%lld N=%lld after free_packed", (long long)L.k, (long long)L.n);
        check_no_leak(&before_pack, when, &memnotes);
        if (shape_ran) {
            c->ran[device][si] = 1;
            any_ran = 1;
            if (first_ok < 0) first_ok = si;
            if (first_bias_ok < 0 && si % 2 == 0) first_bias_ok = si;
        }
        free_layer(&L);
    }
    if (!any_ran && !c->fatal)
        add_result(c, QT_CONF_FAIL, "matmul", dev_label, "no shape ran: every (K, N) was refused or failed");

    if (d->dequantize) {
        if (deqnotes.n) add_result(c, QT_CONF_FAIL, "dequantize", dev_label, "%s", deqnotes.text);
        else if (deq_layers)
            add_result(c, QT_CONF_PASS, "dequantize", dev_label,
                       "%d layers: W_hat within %.2e of W, matmul within %.2e of x W_hat^T", deq_layers, deq_w_err,
                       deq_cons_err);
    } else {
        add_result(c, QT_CONF_SKIP, "dequantize", dev_label, "the plugin has no dequantize slot");
    }

    int io_for_checks = device == QTOOL_DEVICE_CPU ? QTOOL_DTYPE_F32
                                                   : (io_supported[0] ? QTOOL_DTYPE_F16 : QTOOL_DTYPE_BF16);
    if (first_ok >= 0) {
        layer_data L;
        if (make_layer(c, first_ok, &L) == QTOOL_OK) {
            check_bad_arguments(c, device, dev_label, inst, &L);
            check_row_independence(c, device, dev_label, inst, &L, io_for_checks);
            check_epilogues(c, device, dev_label, inst, &L, io_for_checks);
            free_layer(&L);
        }
        int sl = first_bias_ok >= 0 ? first_bias_ok : first_ok;
        if (make_layer(c, sl, &L) == QTOOL_OK) {
            check_save_load(c, device, dev_label, inst, sl, &L, io_for_checks);
            free_layer(&L);
        }
    } else {
        add_result(c, QT_CONF_SKIP, "bad-arguments", dev_label, "no layer could be packed");
        add_result(c, QT_CONF_SKIP, "save-load", dev_label, "no layer could be packed");
    }

    current_check = "destroy";
    d->destroy(inst);
    check_no_leak(&at_create, "after destroy", &memnotes);
    if (memnotes.n) add_result(c, QT_CONF_FAIL, "memory", dev_label, "%s", memnotes.text);
    else
        add_result(c, QT_CONF_PASS, "memory", dev_label,
                   "%d layers: memory() matched the allocator by category after pack and matmul; "
                   "nothing left after free_packed and destroy",
                   mem_layers);
}

/* ------------------------------------------------ (c) CPU/CUDA agreement */

static void check_agreement(conf *c)
{
    const qtool_plugin_desc *d = c->d;
    char label[32];
    snprintf(label, sizeof label, "cpu+cuda:%d", c->cfg->cuda_device);
    uint32_t want = c->cfg->devices ? c->cfg->devices : (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA);
    if ((want & (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA)) != (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA)) return;
    if (!c->cuda_available) {
        add_result(c, QT_CONF_SKIP, "agreement", label, "no CUDA device: %s", c->no_cuda);
        return;
    }
    if ((d->devices & (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA)) != (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA)) {
        add_result(c, QT_CONF_SKIP, "agreement", label, "the plugin runs on one device only");
        return;
    }
    qtool_instance *ic = NULL, *ig = NULL;
    if (qt_plugin_create(c->p, &c->opts, -1, NULL, &ic) != 0 ||
        qt_plugin_create(c->p, &c->opts, c->cfg->cuda_device, c->stream, &ig) != 0) {
        add_result(c, QT_CONF_FAIL, "agreement", label, "create failed: %s", qt_last_error());
        if (ic) d->destroy(ic);
        return;
    }
    double tol = agreement_tolerance(d), worst = 0;
    int shapes_done = 0;
    notes fails = {{0}, 0};
    for (int si = 0; si < N_SHAPES && !c->fatal; si++) {
        if (!c->ran[QTOOL_DEVICE_CPU][si] || !c->ran[QTOOL_DEVICE_CUDA][si]) continue;
        layer_data L;
        if (make_layer(c, si, &L) != QTOOL_OK) break;
        packed_layer pc, pg;
        memset(&pc, 0, sizeof pc);
        memset(&pg, 0, sizeof pg);
        int rc1 = calibrate_layer(c, ic, si, &L), rc2 = calibrate_layer(c, ig, si, &L);
        if (rc1 == QTOOL_OK) rc1 = pack_layer(c, ic, QTOOL_DEVICE_CPU, &L, &pc);
        if (rc2 == QTOOL_OK) rc2 = pack_layer(c, ig, QTOOL_DEVICE_CUDA, &L, &pg);
        int64_t mmax = ms[N_MS - 1];
        float *x = malloc((size_t)(mmax * L.k) * sizeof(float)), *xg = malloc((size_t)(mmax * L.k) * sizeof(float));
        float *yc = malloc((size_t)(mmax * L.n) * sizeof(float)), *yg = malloc((size_t)(mmax * L.n) * sizeof(float));
        if (rc1 != QTOOL_OK || rc2 != QTOOL_OK) {
            note(&fails, "K=%lld N=%lld: pack failed (%s / %s)", (long long)L.k, (long long)L.n, qt_status_name(rc1),
                 qt_status_name(rc2));
        } else if (x && xg && yc && yg) {
            shapes_done++;
            for (int mi = 0; mi < N_MS; mi++) {
                int64_t m = ms[mi];
                int h1 = 0, h2 = 0;
                make_input(c, si, 0, m, &L, x);
                /* Both get the same f16-representable input, each divided
                 * by its own input scale. */
                round_to(x, (size_t)(m * L.k), QTOOL_DTYPE_F16);
                for (int64_t i = 0; i < m * L.k; i++) xg[i] = x[i] / pg.input_scale[i % L.k];
                for (int64_t i = 0; i < m * L.k; i++) x[i] /= pc.input_scale[i % L.k];
                round_to(xg, (size_t)(m * L.k), QTOOL_DTYPE_F16);
                rc1 = run_matmul(c, QTOOL_DEVICE_CPU, QTOOL_DTYPE_F32, pc.pk, x, m, L.k, L.n, yc, &h1);
                rc2 = run_matmul(c, QTOOL_DEVICE_CUDA, QTOOL_DTYPE_F16, pg.pk, xg, m, L.k, L.n, yg, &h2);
                if (h1 || h2) {
                    note(&fails, "harness error: %s", qt_last_error());
                    break;
                }
                if (rc1 == QTOOL_ERR_UNSUPPORTED || rc2 == QTOOL_ERR_UNSUPPORTED) continue;
                if (rc1 != QTOOL_OK || rc2 != QTOOL_OK) {
                    note(&fails, "K=%lld N=%lld M=%lld: matmul failed", (long long)L.k, (long long)L.n, (long long)m);
                    continue;
                }
                double e2 = 0, s2 = 0;
                int64_t bad = 0;
                for (int64_t i = 0; i < m * L.n; i++) {
                    if (!isfinite(yc[i]) || !isfinite(yg[i])) {
                        bad++;
                        continue;
                    }
                    double dd = (double)yg[i] - yc[i];
                    e2 += dd * dd;
                }
                /* Same normalisation as the accuracy check, from the CPU's input. */
                for (int64_t i = 0; i < m; i++)
                    for (int64_t j = 0; j < L.n; j++) {
                        double mag = L.bd[j] * L.bd[j];
                        for (int64_t t = 0; t < L.k; t++) {
                            double xv = (double)x[i * L.k + t] * pc.input_scale[t], wv = L.wd[j * L.k + t];
                            mag += xv * xv * wv * wv;
                        }
                        s2 += mag;
                    }
                double err = s2 > 0 ? sqrt(e2 / s2) : 0, lim = tol * per_m_factor(m, L.n);
                if (err > worst) worst = err;
                if (bad) note(&fails, "K=%lld N=%lld M=%lld: %lld outputs not finite", (long long)L.k, (long long)L.n,
                              (long long)m, (long long)bad);
                else if (err > lim)
                    note(&fails, "K=%lld N=%lld M=%lld: CPU and CUDA differ by %.3g (limit %.3g)", (long long)L.k,
                         (long long)L.n, (long long)m, err, lim);
            }
        }
        free(x);
        free(xg);
        free(yc);
        free(yg);
        release_packed(c, &pc);
        release_packed(c, &pg);
        free_layer(&L);
    }
    d->destroy(ic);
    d->destroy(ig);
    if (fails.n) add_result(c, QT_CONF_FAIL, "agreement", label, "%s", fails.text);
    else if (shapes_done == 0) add_result(c, QT_CONF_SKIP, "agreement", label, "no shape ran on both devices");
    else
        add_result(c, QT_CONF_PASS, "agreement", label, "%d shapes, f16 inputs: CPU and CUDA within %.2e (limit %.1e)",
                   shapes_done, worst, tol);
}

/* ----------------------------------------------- quantization_config */

static void check_quant_config(conf *c)
{
    const qtool_plugin_desc *d = c->d;
    if (!d->quant_config_json) {
        add_result(c, QT_CONF_SKIP, "quant-config", "", "the plugin writes no quantization_config");
        return;
    }
    qtool_instance *inst = NULL;
    if (qt_plugin_create(c->p, &c->opts, -1, NULL, &inst) != 0) {
        add_result(c, QT_CONF_FAIL, "quant-config", "", "create failed: %s", qt_last_error());
        return;
    }
    char *buf = calloc(1, 65536);
    notes fails = {{0}, 0};
    if (!buf) {
        c->fatal = 1;
    } else {
        current_check = "quant_config_json";
        int rc = d->quant_config_json(inst, buf, 65536);
        buf[65535] = '\0';
        json_error_t err;
        json_t *j = rc == QTOOL_OK ? json_loads(buf, 0, &err) : NULL;
        if (rc != QTOOL_OK) note(&fails, "quant_config_json failed: %s", status_str(rc));
        else if (!j || !json_is_object(j)) note(&fails, "quant_config_json did not write a JSON object");
        else if (d->accepts_config) {
            current_check = "accepts_config";
            if (d->accepts_config(buf) != 1) note(&fails, "accepts_config refuses the plugin's own config");
            if (d->accepts_config("{\"quant_method\": \"qtool-conformance-unknown\"}") == 1)
                note(&fails, "accepts_config claims an unrelated config");
        }
        json_decref(j);
    }
    d->destroy(inst);
    if (fails.n) add_result(c, QT_CONF_FAIL, "quant-config", "", "%s", fails.text);
    else if (buf) add_result(c, QT_CONF_PASS, "quant-config", "", "valid JSON object%s",
                             d->accepts_config ? "; accepts_config recognises it" : "");
    free(buf);
}

/* ------------------------------------------------------------- driver */

int qt_conformance_run(qt_plugin *p, const qt_conf_config *cfg, qt_conf_report *out)
{
    memset(out, 0, sizeof *out);
    out->seed = cfg->seed;
    conf c;
    memset(&c, 0, sizeof c);
    c.p = p;
    c.d = p->desc;
    c.cfg = cfg;
    c.rep = out;
    if (qt_plugin_parse_options(p, cfg->options, cfg->n_options, &c.opts) != 0) return QTOOL_ERR_INVALID_ARGUMENT;
    uint32_t want = cfg->devices ? cfg->devices : (QTOOL_DEVMASK_CPU | QTOOL_DEVMASK_CUDA);

    check_descriptor(&c);

    if (want & QTOOL_DEVMASK_CUDA) {
        int n = qt_cuda_device_count(c.no_cuda, sizeof c.no_cuda);
        if (n > cfg->cuda_device && cfg->cuda_device >= 0) {
            if (qt_cuda_set_device(cfg->cuda_device) == 0 && qt_cuda_stream_create(&c.stream) == 0)
                c.cuda_available = 1;
            else
                snprintf(c.no_cuda, sizeof c.no_cuda, "%s", qt_last_error());
        } else if (n > 0) {
            snprintf(c.no_cuda, sizeof c.no_cuda, "device %d requested, %d present", cfg->cuda_device, n);
        }
    }
    if (want & QTOOL_DEVMASK_CPU) run_device(&c, QTOOL_DEVICE_CPU);
    if ((want & QTOOL_DEVMASK_CUDA) && !c.fatal) run_device(&c, QTOOL_DEVICE_CUDA);
    if (!c.fatal) check_agreement(&c);
    if (!c.fatal) check_quant_config(&c);

    if (c.stream) qt_cuda_stream_destroy(c.stream);
    qt_plugin_options_free(&c.opts);
    current_check = "";
    if (c.fatal) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "conformance: out of memory");
    return 0;
}

void qt_conf_report_free(qt_conf_report *r)
{
    free(r->results);
    memset(r, 0, sizeof *r);
}
