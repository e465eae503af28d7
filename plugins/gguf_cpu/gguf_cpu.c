/* gguf_cpu: llama.cpp's block quantization (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
 * Q4_K, Q5_K, Q6_K and the Q4_K_M / Q5_K_S mixes) with a CPU matmul that
 * quantizes activations per row exactly as ggml's vec_dot pairs do (Q8_0
 * for Q4_0/Q5_0/Q8_0, Q8_1 for Q4_1/Q5_1, Q8_K for the k-quants) and sums
 * integer products in AVX-512 / AVX2 / scalar tiles chosen at run time.
 * Optionally (imatrix=1) the calibration pass's mean squared input per
 * column weighs the quantizers' rounding error, as llama.cpp's importance
 * matrix does. */
#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qtool/plugin.h>

#include "gguf_quants.h"

enum choice { C_Q8_0, C_Q4_0, C_Q4_1, C_Q5_0, C_Q5_1, C_Q4_K, C_Q5_K, C_Q6_K, C_Q4_K_M, C_Q5_K_S, C_COUNT };
static const char *const choice_names[C_COUNT] = {"Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
                                                  "Q4_K", "Q5_K", "Q6_K", "Q4_K_M", "Q5_K_S"};
static const int choice_types[C_COUNT] = {GQ_Q8_0, GQ_Q4_0, GQ_Q4_1, GQ_Q5_0, GQ_Q5_1,
                                          GQ_Q4_K, GQ_Q5_K, GQ_Q6_K, GQ_Q4_K, GQ_Q5_K};

static const qtool_option_desc options[] = {
    {"type", QTOOL_OPT_ENUM, "Q4_K_M",
     "GGUF type: one block type for every layer, or a llama.cpp mix (Q4_K_M, Q5_K_S)",
     "Q8_0|Q4_0|Q4_1|Q5_0|Q5_1|Q4_K|Q5_K|Q6_K|Q4_K_M|Q5_K_S", 0, -1},
    {"isa", QTOOL_OPT_ENUM, "auto", "CPU kernel: best available (auto), or at most avx2 / scalar",
     "auto|avx2|scalar", 0, -1},
    {"imatrix", QTOOL_OPT_BOOL, "0",
     "weigh each input column's rounding error by its mean squared activation over the calibration data "
     "(llama.cpp's importance matrix); needs --calib",
     NULL, 0, -1},
};

/* Per-layer calibration statistics for the importance matrix: the sum of
 * x_j^2 over every calibration token, per input column j, and the token
 * count; imatrix_j = sum_sq_j / count. */
typedef struct calib_stats {
    char *name; /* the layer's checkpoint name */
    int64_t k;
    int64_t count;
    double *sum_sq; /* [k], from the host allocator */
} calib_stats;

struct qtool_instance {
    const qtool_host_services *host;
    int choice;
    int isa;       /* GQ_ISA_*: GQ_ISA_AVX512 runs the outer-product kernel */
    gq_tile_fn tile; /* otherwise */
    const char *isa_name;
    int imatrix;
    int warned_unused; /* calibration data arrived with imatrix=0 */
    calib_stats *stats;
    size_t n_stats, cap_stats;
};

struct qtool_packed {
    qtool_instance *inst;
    int type; /* ggml type */
    int64_t n, k;
    size_t row_bytes;
    uint8_t *data;
    float *bias;
};

#define LOG(inst, lvl, ...) (inst)->host->log((inst)->host->ctx, (lvl), __VA_ARGS__)

static int plugin_probe(const qtool_device_info *dev, char *reason, size_t reason_len)
{
    if (dev->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    snprintf(reason, reason_len, "gguf_cpu runs on the CPU only");
    return QTOOL_ERR_UNSUPPORTED;
}

static int plugin_create(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                         qtool_instance **out, char *msg, size_t msg_len)
{
    int choice = C_Q4_K_M, isa = 0, imatrix = 0;
    for (uint32_t i = 0; i < n_opts; i++) {
        if (strcmp(opts[i].name, "type") == 0) choice = (int)opts[i].i;
        else if (strcmp(opts[i].name, "isa") == 0) isa = (int)opts[i].i;
        else if (strcmp(opts[i].name, "imatrix") == 0) imatrix = opts[i].i != 0;
    }
    if (choice < 0 || choice >= C_COUNT || isa < 0 || isa > 2) {
        snprintf(msg, msg_len, "bad option value");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    qtool_instance *inst = calloc(1, sizeof *inst);
    if (!inst) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    inst->host = host;
    inst->choice = choice;
    inst->imatrix = imatrix;
    inst->isa = gq_select_isa(isa == 0 ? GQ_ISA_AVX512 : isa == 1 ? GQ_ISA_AVX2 : GQ_ISA_SCALAR, &inst->tile,
                              &inst->isa_name);
    LOG(inst, QTOOL_LOG_DEBUG, "type %s, %s kernels%s", choice_names[choice], inst->isa_name,
        imatrix ? ", importance matrix from calibration" : "");
    *out = inst;
    return QTOOL_OK;
}

static void plugin_destroy(qtool_instance *inst)
{
    if (!inst) return;
    for (size_t i = 0; i < inst->n_stats; i++) {
        free(inst->stats[i].name);
        inst->host->free(inst->host->ctx, QTOOL_DEVICE_CPU, inst->stats[i].sum_sq);
    }
    free(inst->stats);
    free(inst);
}

/* ----------------------------------------------------------- calibrate */

static calib_stats *find_stats(qtool_instance *inst, const char *name)
{
    for (size_t i = 0; i < inst->n_stats; i++)
        if (strcmp(inst->stats[i].name, name) == 0) return &inst->stats[i];
    return NULL;
}

static calib_stats *new_stats(qtool_instance *inst, const char *name, int64_t k)
{
    if (inst->n_stats == inst->cap_stats) {
        const size_t cap = inst->cap_stats ? 2 * inst->cap_stats : 64;
        calib_stats *s = realloc(inst->stats, cap * sizeof *s);
        if (!s) return NULL;
        inst->stats = s;
        inst->cap_stats = cap;
    }
    calib_stats *s = &inst->stats[inst->n_stats];
    s->name = strdup(name);
    s->sum_sq = inst->host->alloc(inst->host->ctx, QTOOL_DEVICE_CPU, (size_t)k * sizeof(double), QTOOL_MEM_WORKSPACE);
    if (!s->name || !s->sum_sq) {
        free(s->name);
        if (s->sum_sq) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CPU, s->sum_sq);
        return NULL;
    }
    memset(s->sum_sq, 0, (size_t)k * sizeof(double));
    s->k = k;
    s->count = 0;
    inst->n_stats++;
    return s;
}

typedef struct sq_job {
    const float *x;
    int64_t t, k;
    double *acc;       /* [k] this call's sums */
    atomic_int bad_row; /* first row with a non-finite value + 1 */
} sq_job;

/* Columns [c0, c1) of every row: sums of squares, in double so that long
 * calibration runs do not lose the small terms. */
static void sum_squares(void *arg, int64_t begin, int64_t end)
{
    sq_job *job = arg;
    const int64_t c0 = begin * 64, c1 = end * 64 < job->k ? end * 64 : job->k;
    for (int64_t r = 0; r < job->t; r++) {
        const float *row = job->x + r * job->k;
        int finite = 1;
        for (int64_t c = c0; c < c1; c++) {
            finite &= isfinite(row[c]) != 0;
            job->acc[c] += (double)row[c] * (double)row[c];
        }
        if (!finite) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->bad_row, &expected, (int)(r < INT32_MAX - 1 ? r + 1 : INT32_MAX));
        }
    }
}

/* Accumulates the layer's sum of x_j^2 and its token count when the
 * importance matrix is on; otherwise the data is not needed (said once). */
static int plugin_calibrate(qtool_instance *inst, const qtool_layer_info *L, const qtool_tensor *x)
{
    const char *name = L && L->name ? L->name : "layer";
    if (!L || !L->name || !x || !x->data || x->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU ||
        x->ndim < 1 || L->in_features < 1 || x->shape[x->ndim - 1] != L->in_features) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: calibrate needs a named layer and input [T, K] F32 on the CPU with K = %lld",
            name, L ? (long long)L->in_features : 0LL);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (!inst->imatrix) {
        if (!inst->warned_unused)
            LOG(inst, QTOOL_LOG_WARN, "calibration data is not used: the importance matrix is off (imatrix=0)");
        inst->warned_unused = 1;
        return QTOOL_OK;
    }
    const int64_t k = L->in_features, t = qtool_tensor_numel(x) / k;
    if (t == 0) return QTOOL_OK;
    calib_stats *s = find_stats(inst, L->name);
    if (s && s->k != k) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: calibrated with K = %lld before, now K = %lld", name, (long long)s->k,
            (long long)k);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const qtool_host_services *host = inst->host;
    double *acc = host->alloc(host->ctx, QTOOL_DEVICE_CPU, (size_t)k * sizeof(double), QTOOL_MEM_WORKSPACE);
    if (!acc) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: out of memory for calibration statistics", name);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    memset(acc, 0, (size_t)k * sizeof(double));
    sq_job job = {.x = x->data, .t = t, .k = k, .acc = acc};
    atomic_init(&job.bad_row, 0);
    host->parallel_for(host->ctx, (k + 63) / 64, 4, sum_squares, &job);
    int rc = QTOOL_OK;
    if (atomic_load(&job.bad_row)) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: calibration input row %d has a non-finite value", name,
            atomic_load(&job.bad_row) - 1);
        rc = QTOOL_ERR_INVALID_ARGUMENT;
    } else if (!s && !(s = new_stats(inst, L->name, k))) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: out of memory for calibration statistics", name);
        rc = QTOOL_ERR_OUT_OF_MEMORY;
    } else {
        for (int64_t c = 0; c < k; c++) s->sum_sq[c] += acc[c];
        s->count += t;
    }
    host->free(host->ctx, QTOOL_DEVICE_CPU, acc);
    return rc;
}

/* The layer's importance matrix (mean of x_j^2) into qw[k]; an error when
 * the layer saw no calibration data, since quantizing it without would
 * silently drop the weighting the user asked for. */
static int layer_imatrix(qtool_instance *inst, const qtool_layer_info *L, float *qw)
{
    const char *name = L->name ? L->name : "layer";
    const calib_stats *s = L->name ? find_stats(inst, L->name) : NULL;
    if (!s || s->count == 0) {
        LOG(inst, QTOOL_LOG_ERROR,
            "%s: imatrix=1 but no calibration data reached this layer (pass --calib FILE.jsonl)", name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (s->k != L->in_features) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: calibrated with K = %lld, packed with K = %lld", name, (long long)s->k,
            (long long)L->in_features);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    for (int64_t c = 0; c < s->k; c++) {
        const double m = s->sum_sq[c] / (double)s->count;
        if (!(m <= FLT_MAX)) {
            LOG(inst, QTOOL_LOG_ERROR, "%s: mean squared calibration input of column %lld (%g) overflows a float",
                name, (long long)c, m);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
        qw[c] = (float)m;
    }
    return QTOOL_OK;
}

/* llama.cpp's use_more_bits: the first and last eighth of the blocks and
 * every third block in between get more bits. */
static int use_more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

/* The ggml type of one layer: the mix rules of llama.cpp's
 * llama_tensor_get_type (src/llama-quant.cpp) for the roles a runtime
 * Linear can have, then its fallbacks for rows that are not a multiple of
 * 256. Returns -1 when K is not a multiple of 32 (llama.cpp keeps such
 * tensors in F16). */
static int layer_type(int choice, const qtool_layer_info *L)
{
    int t = choice_types[choice];
    const int64_t k = L->in_features;
    if (choice == C_Q4_K_M || choice == C_Q5_K_S) {
        if (L->role == QTOOL_ROLE_HEAD) {
            t = k % GQ_QK_K ? GQ_Q8_0 : GQ_Q6_K;
        } else if (choice == C_Q4_K_M && L->block_index >= 0 && L->n_blocks > 0) {
            /* attn_v (and fused qkv, which llama.cpp counts as attn_v) and
             * ffn_down of the more-bits blocks go to Q6_K. */
            const int v_like = L->role == QTOOL_ROLE_ATTN_V || L->role == QTOOL_ROLE_ATTN_QKV;
            if ((v_like || L->role == QTOOL_ROLE_FFN_DOWN) && use_more_bits(L->block_index, L->n_blocks))
                t = GQ_Q6_K;
        }
    }
    if (k % GQ_QK_K) {
        if (t == GQ_Q4_K) t = GQ_Q5_0;
        else if (t == GQ_Q5_K) t = GQ_Q5_1;
        else if (t == GQ_Q6_K) t = GQ_Q8_0;
    }
    return k % GQ_QK ? -1 : t;
}

/* ------------------------------------------------------------------ pack */

typedef struct pack_job {
    qtool_packed *p;
    const qtool_tensor *w;
    const float *qw; /* importance weights [k], or NULL */
    atomic_int bad_row; /* first non-finite row + 1, 0 when none */
    atomic_int oom;
} pack_job;

static void to_f32(float *dst, const void *src, int dtype, int64_t n)
{
    if (dtype == QTOOL_DTYPE_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (dtype == QTOOL_DTYPE_F16) {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qtool_f16_to_f32(h[i]);
    } else {
        const uint16_t *h = src;
        for (int64_t i = 0; i < n; i++) dst[i] = qtool_bf16_to_f32(h[i]);
    }
}

static void pack_rows(void *arg, int64_t begin, int64_t end)
{
    pack_job *job = arg;
    qtool_packed *p = job->p;
    const qtool_host_services *host = p->inst->host;
    float *row = host->alloc(host->ctx, QTOOL_DEVICE_CPU, (size_t)p->k * 4, QTOOL_MEM_WORKSPACE);
    if (!row) {
        atomic_store(&job->oom, 1);
        return;
    }
    const gq_type *t = gq_type_traits(p->type);
    const size_t esz = qtool_dtype_size(job->w->dtype);
    for (int64_t r = begin; r < end; r++) {
        to_f32(row, (const uint8_t *)job->w->data + (size_t)r * (size_t)p->k * esz, job->w->dtype, p->k);
        int finite = 1;
        for (int64_t i = 0; i < p->k; i++) finite &= isfinite(row[i]) != 0;
        if (!finite) {
            int expected = 0;
            atomic_compare_exchange_strong(&job->bad_row, &expected, (int)r + 1);
            continue;
        }
        if (job->qw) t->quantize_imatrix(row, p->data + (size_t)r * p->row_bytes, p->k, job->qw);
        else t->quantize(row, p->data + (size_t)r * p->row_bytes, p->k);
    }
    host->free(host->ctx, QTOOL_DEVICE_CPU, row);
}

static void free_packed(qtool_packed *p)
{
    if (!p) return;
    const qtool_host_services *host = p->inst->host;
    if (p->data) host->free(host->ctx, QTOOL_DEVICE_CPU, p->data);
    if (p->bias) host->free(host->ctx, QTOOL_DEVICE_CPU, p->bias);
    free(p);
}

/* A packed layer of type `type` for N x K, data uninitialised. */
static int new_packed(qtool_instance *inst, int type, int64_t n, int64_t k, int with_bias, qtool_packed **out)
{
    qtool_packed *p = calloc(1, sizeof *p);
    if (!p) return QTOOL_ERR_OUT_OF_MEMORY;
    p->inst = inst;
    p->type = type;
    p->n = n;
    p->k = k;
    p->row_bytes = gq_row_size(type, k);
    const qtool_host_services *host = inst->host;
    p->data = host->alloc(host->ctx, QTOOL_DEVICE_CPU, p->row_bytes * (size_t)n, QTOOL_MEM_WEIGHTS);
    if (with_bias) p->bias = host->alloc(host->ctx, QTOOL_DEVICE_CPU, (size_t)n * 4, QTOOL_MEM_OTHER);
    if (!p->data || (with_bias && !p->bias)) {
        free_packed(p);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    *out = p;
    return QTOOL_OK;
}

static int plugin_pack(qtool_instance *inst, const qtool_pack_args *args, qtool_packed **out)
{
    *out = NULL;
    const qtool_tensor *w = args->weight, *b = args->bias;
    const qtool_layer_info *L = args->layer;
    const char *name = L && L->name ? L->name : "layer";
    if (!w || !L || args->device != QTOOL_DEVICE_CPU) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: pack needs a weight, layer info and the CPU device", name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (!w->data || w->ndim != 2 || w->device != QTOOL_DEVICE_CPU ||
        (w->dtype != QTOOL_DTYPE_F32 && w->dtype != QTOOL_DTYPE_F16 && w->dtype != QTOOL_DTYPE_BF16) ||
        w->shape[0] < 1 || w->shape[1] < 1 || w->shape[0] != L->out_features || w->shape[1] != L->in_features) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: weight must be [N, K] F32/F16/BF16 on the CPU matching the layer", name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (b && (!b->data || b->ndim != 1 || b->device != QTOOL_DEVICE_CPU || b->shape[0] != w->shape[0] ||
              (b->dtype != QTOOL_DTYPE_F32 && b->dtype != QTOOL_DTYPE_F16 && b->dtype != QTOOL_DTYPE_BF16))) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: bias must be [N] F32/F16/BF16 on the CPU", name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (w->shape[0] > INT32_MAX) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: too many rows", name);
        return QTOOL_ERR_UNSUPPORTED;
    }
    const int type = layer_type(inst->choice, L);
    if (type < 0) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: K = %lld is not a multiple of 32, which every GGUF block type needs", name,
            (long long)L->in_features);
        return QTOOL_ERR_UNSUPPORTED;
    }
    if (type != choice_types[inst->choice] && inst->choice < C_Q4_K_M)
        LOG(inst, QTOOL_LOG_INFO, "%s: K = %lld is not a multiple of 256: %s instead of %s", name,
            (long long)L->in_features, gq_type_traits(type)->name, choice_names[inst->choice]);
    const qtool_host_services *host = inst->host;
    float *qw = NULL;
    if (inst->imatrix) {
        qw = host->alloc(host->ctx, QTOOL_DEVICE_CPU, (size_t)w->shape[1] * sizeof(float), QTOOL_MEM_WORKSPACE);
        if (!qw) {
            LOG(inst, QTOOL_LOG_ERROR, "%s: out of memory", name);
            return QTOOL_ERR_OUT_OF_MEMORY;
        }
        int rc = layer_imatrix(inst, L, qw);
        if (rc) {
            host->free(host->ctx, QTOOL_DEVICE_CPU, qw);
            return rc;
        }
    }
    qtool_packed *p;
    int rc = new_packed(inst, type, w->shape[0], w->shape[1], b != NULL, &p);
    if (rc) {
        if (qw) host->free(host->ctx, QTOOL_DEVICE_CPU, qw);
        LOG(inst, QTOOL_LOG_ERROR, "%s: out of memory", name);
        return rc;
    }
    pack_job job = {.p = p, .w = w, .qw = qw};
    atomic_init(&job.bad_row, 0);
    atomic_init(&job.oom, 0);
    host->parallel_for(host->ctx, p->n, 4, pack_rows, &job);
    if (qw) host->free(host->ctx, QTOOL_DEVICE_CPU, qw);
    if (atomic_load(&job.oom)) {
        free_packed(p);
        LOG(inst, QTOOL_LOG_ERROR, "%s: out of memory", name);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    if (atomic_load(&job.bad_row)) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: row %d of the weight has a non-finite value", name,
            atomic_load(&job.bad_row) - 1);
        free_packed(p);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (b) to_f32(p->bias, b->data, b->dtype, p->n);
    LOG(inst, QTOOL_LOG_DEBUG, "%s: %s%s", name, gq_type_traits(type)->name, qw ? " (importance matrix)" : "");
    *out = p;
    return QTOOL_OK;
}

/* ---------------------------------------------------------------- matmul */

/* Weight rows unpacked together (the AVX-512 kernel's interleave width);
 * their unpacked form stays in L1/L2 while every activation row passes by. */
#define UNIT_ROWS 16

typedef struct mm_job {
    const qtool_packed *p;
    const float *x;
    float *y;
    int64_t m;
    gq_act *act; /* m rows */
    atomic_int oom;
} mm_job;

static void quantize_acts(void *arg, int64_t begin, int64_t end)
{
    mm_job *job = arg;
    for (int64_t i = begin; i < end; i++) gq_act_quantize(job->p->type, job->x + i * job->p->k, job->p->k, &job->act[i]);
}

/* AVX-512 path: up to OP_UNITS units are interleaved at once, then blocks
 * of OP_MBLOCK activation rows (which stay in L2) pass over all of them, so
 * a large M does not stream every activation row from memory once per unit. */
#define OP_UNITS 32
#define OP_MBLOCK 64

static void matmul_units(void *arg, int64_t begin, int64_t end)
{
    mm_job *job = arg;
    const qtool_packed *p = job->p;
    const qtool_host_services *host = p->inst->host;
    const int64_t k = p->k, n = p->n;
    const int flags = gq_tile_flags(p->type);
    const int op = p->inst->isa == GQ_ISA_AVX512;
    /* per row, each part rounded up to 64 bytes: k/4 lane scales (k bytes),
     * k/32 sum coefficients, k codes; then the interleaved units */
#define UP64(v) (((size_t)(v) + 63) & ~(size_t)63)
    const size_t row_scratch = UP64(k) + UP64(k / 8) + UP64(k);
    const size_t unit_bytes = UP64(gq_unit_bytes(k));
    const size_t n_units = op ? (size_t)(end - begin < OP_UNITS ? end - begin : OP_UNITS) : 0;
    uint8_t *scratch = host->alloc(host->ctx, QTOOL_DEVICE_CPU, row_scratch * UNIT_ROWS + unit_bytes * n_units,
                                   QTOOL_MEM_WORKSPACE);
    if (!scratch) {
        atomic_store(&job->oom, 1);
        return;
    }
    gq_wrow rows[UNIT_ROWS];
    for (int r = 0; r < UNIT_ROWS; r++) {
        uint8_t *base = scratch + row_scratch * r;
        rows[r].sv = (float *)base;
        rows[r].mn = (float *)(base + UP64(k));
        rows[r].q = (int8_t *)(base + UP64(k) + UP64(k / 8));
    }
    uint8_t *unit_mem = scratch + row_scratch * UNIT_ROWS;
#undef UP64
    if (op) {
        gq_unit units[OP_UNITS];
        for (int64_t u0 = begin; u0 < end; u0 += OP_UNITS) {
            const int64_t u1 = end - u0 < OP_UNITS ? end : u0 + OP_UNITS;
            for (int64_t u = u0; u < u1; u++) {
                const int64_t n0 = u * UNIT_ROWS;
                const int nw = (int)(n - n0 < UNIT_ROWS ? n - n0 : UNIT_ROWS);
                for (int r = 0; r < nw; r++)
                    gq_unpack_row(p->type, p->data + (size_t)(n0 + r) * p->row_bytes, k, &rows[r]);
                gq_op_repack(p->type, k, rows, nw, unit_mem + (size_t)(u - u0) * unit_bytes, &units[u - u0]);
            }
            for (int64_t i0 = 0; i0 < job->m; i0 += OP_MBLOCK) {
                const int mb = (int)(job->m - i0 < OP_MBLOCK ? job->m - i0 : OP_MBLOCK);
                for (int64_t u = u0; u < u1; u++)
                    gq_op_matmul_avx512(k, &units[u - u0], job->act + i0, mb, job->y + i0 * n + u * UNIT_ROWS, n);
            }
        }
    } else {
        for (int64_t u = begin; u < end; u++) {
            const int64_t n0 = u * UNIT_ROWS;
            const int nw = (int)(n - n0 < UNIT_ROWS ? n - n0 : UNIT_ROWS);
            for (int r = 0; r < nw; r++)
                gq_unpack_row(p->type, p->data + (size_t)(n0 + r) * p->row_bytes, k, &rows[r]);
            /* 12 activation rows a call: whole tiles for the 4-row kernels */
            for (int64_t i = 0; i < job->m; i += 12) {
                const int na = (int)(job->m - i < 12 ? job->m - i : 12);
                p->inst->tile(k, flags, rows, nw, job->act + i, na, job->y + i * n + n0, n);
            }
        }
    }
    if (p->bias) {
        const int64_t c0 = begin * UNIT_ROWS, c1 = end * UNIT_ROWS < n ? end * UNIT_ROWS : n;
        for (int64_t i = 0; i < job->m; i++)
            for (int64_t c = c0; c < c1; c++) job->y[i * n + c] += p->bias[c];
    }
    host->free(host->ctx, QTOOL_DEVICE_CPU, scratch);
}

static int plugin_matmul_cpu(qtool_packed *p, const qtool_matmul_args *args)
{
    const qtool_host_services *host = p->inst->host;
    const qtool_tensor *x = args->x;
    qtool_tensor *y = args->y;
    if (args->epilogue != QTOOL_EPILOGUE_NONE) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: epilogue %d is not offered", (int)args->epilogue);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (!x || !y || x->dtype != QTOOL_DTYPE_F32 || y->dtype != QTOOL_DTYPE_F32 || x->device != QTOOL_DEVICE_CPU ||
        y->device != QTOOL_DEVICE_CPU || x->ndim < 1 || y->ndim != x->ndim || x->shape[x->ndim - 1] != p->k ||
        y->shape[y->ndim - 1] != p->n) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: x must be [..., %lld] and y [..., %lld], F32 on the CPU",
            (long long)p->k, (long long)p->n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const int64_t m = qtool_tensor_numel(x) / p->k;
    if (m > INT32_MAX) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: %lld rows is too many", (long long)m);
        return QTOOL_ERR_UNSUPPORTED;
    }
    if (qtool_tensor_numel(y) / p->n != m) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: x and y have different row counts");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (m == 0) return QTOOL_OK;
    if (!x->data || !y->data) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: x or y has no data");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const int64_t k = p->k, ng = k / GQ_QK;
    const int64_t n16 = gq_type_traits(p->type)->act_type == GQ_Q8_K ? k / 16 : 0; /* Q8_K: 16-code sums */
    const int64_t nf = 2 * ng + n16; /* floats per row */
    const size_t act_bytes = (size_t)m * ((size_t)k + (size_t)nf * 4) + (size_t)m * sizeof(gq_act);
    uint8_t *buf = host->alloc(host->ctx, QTOOL_DEVICE_CPU, act_bytes, QTOOL_MEM_WORKSPACE);
    if (!buf) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: out of memory for %lld activation rows", (long long)m);
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    gq_act *act = (gq_act *)buf;
    float *ds = (float *)(buf + (size_t)m * sizeof(gq_act));
    int8_t *qs = (int8_t *)(ds + (size_t)m * (size_t)nf);
    for (int64_t i = 0; i < m; i++) {
        act[i].d = ds + (size_t)i * (size_t)nf;
        act[i].s = act[i].d + ng;
        act[i].s16 = n16 ? act[i].s + ng : NULL;
        act[i].q = qs + (size_t)i * (size_t)k;
    }
    mm_job job = {.p = p, .x = x->data, .y = y->data, .m = m, .act = act};
    atomic_init(&job.oom, 0);
    host->parallel_for(host->ctx, m, 4, quantize_acts, &job);
    host->parallel_for(host->ctx, (p->n + UNIT_ROWS - 1) / UNIT_ROWS, 1, matmul_units, &job);
    host->free(host->ctx, QTOOL_DEVICE_CPU, buf);
    if (atomic_load(&job.oom)) {
        LOG(p->inst, QTOOL_LOG_ERROR, "matmul: out of memory for the kernel scratch");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    return QTOOL_OK;
}

static int plugin_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT])
{
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) bytes[c] = 0;
    /* GGUF blocks interleave codes and their scales: one buffer, counted as
     * weights (docs/gguf.md gives the scale share per type). */
    bytes[QTOOL_MEM_WEIGHTS] = (uint64_t)p->row_bytes * (uint64_t)p->n;
    if (p->bias) bytes[QTOOL_MEM_OTHER] = (uint64_t)p->n * 4;
    return QTOOL_OK;
}

/* W_hat as matmul sees it: ggml's dequantization of the blocks. */
static int plugin_dequantize(const qtool_packed *p, float *out)
{
    if (!out) return QTOOL_ERR_INVALID_ARGUMENT;
    const gq_type *t = gq_type_traits(p->type);
    for (int64_t r = 0; r < p->n; r++) t->dequantize(p->data + (size_t)r * p->row_bytes, out + r * p->k, p->k);
    return QTOOL_OK;
}

/* ------------------------------------------------------------- save/load */

/* Saved form: `weight` = the GGUF block bytes, PACKED [N, row bytes] (a
 * safetensors file stores them as U8, read back the same);
 * `ggml_type` = I32 [1], the ggml type id; `bias` = F32 [N] when present. */
static int plugin_save(const qtool_packed *p, const qtool_save_sink *sink)
{
    int32_t type = p->type;
    qtool_tensor w = {.data = p->data, .dtype = QTOOL_DTYPE_PACKED, .device = QTOOL_DEVICE_CPU, .ndim = 2,
                      .shape = {p->n, (int64_t)p->row_bytes}};
    qtool_tensor t = {.data = &type, .dtype = QTOOL_DTYPE_I32, .device = QTOOL_DEVICE_CPU, .ndim = 1, .shape = {1}};
    int rc = sink->put(sink->ctx, "weight", &w);
    if (!rc) rc = sink->put(sink->ctx, "ggml_type", &t);
    if (!rc && p->bias) {
        qtool_tensor b = {.data = p->bias, .dtype = QTOOL_DTYPE_F32, .device = QTOOL_DEVICE_CPU, .ndim = 1,
                          .shape = {p->n}};
        rc = sink->put(sink->ctx, "bias", &b);
    }
    return rc;
}

static int plugin_load(qtool_instance *inst, const qtool_layer_info *L, int device, const qtool_load_source *src,
                       qtool_packed **out)
{
    *out = NULL;
    const char *name = L && L->name ? L->name : "layer";
    if (!L || device != QTOOL_DEVICE_CPU) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: load needs layer info and the CPU device", name);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    qtool_tensor w, t, b;
    int rc = src->get(src->ctx, "weight", &w);
    if (!rc) rc = src->get(src->ctx, "ggml_type", &t);
    if (rc) return rc;
    int32_t type = -1;
    if (t.dtype == QTOOL_DTYPE_I32 && t.ndim == 1 && t.shape[0] == 1) memcpy(&type, t.data, 4);
    const gq_type *tt = gq_type_traits(type);
    if (!tt || !tt->vec_dot) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: ggml_type must be one I32 naming a type this plugin runs", name);
        return QTOOL_ERR_FORMAT;
    }
    const int64_t n = L->out_features, k = L->in_features;
    if (k <= 0 || n <= 0 || k % tt->block || (w.dtype != QTOOL_DTYPE_PACKED && w.dtype != QTOOL_DTYPE_U8) || w.ndim != 2 || w.shape[0] != n ||
        w.shape[1] != (int64_t)gq_row_size(type, k)) {
        LOG(inst, QTOOL_LOG_ERROR, "%s: weight must be PACKED [%lld, %zu] for %s with K = %lld", name, (long long)n,
            k % tt->block ? (size_t)0 : gq_row_size(type, k), tt->name, (long long)k);
        return QTOOL_ERR_FORMAT;
    }
    int has_bias = src->has && src->has(src->ctx, "bias");
    if (has_bias) {
        if ((rc = src->get(src->ctx, "bias", &b))) return rc;
        if (b.dtype != QTOOL_DTYPE_F32 || b.ndim != 1 || b.shape[0] != n) {
            LOG(inst, QTOOL_LOG_ERROR, "%s: bias must be F32 [%lld]", name, (long long)n);
            return QTOOL_ERR_FORMAT;
        }
    }
    qtool_packed *p;
    if ((rc = new_packed(inst, type, n, k, has_bias, &p))) return rc;
    memcpy(p->data, w.data, p->row_bytes * (size_t)n);
    if (has_bias) memcpy(p->bias, b.data, (size_t)n * 4);
    *out = p;
    return QTOOL_OK;
}

static int plugin_quant_config_json(const qtool_instance *inst, char *buf, size_t buf_len)
{
    int n = snprintf(buf, buf_len, "{\"quant_method\": \"gguf\", \"type\": \"%s\"%s}", choice_names[inst->choice],
                     inst->imatrix ? ", \"imatrix\": true" : "");
    return n < 0 || (size_t)n >= buf_len ? QTOOL_ERR_INVALID_ARGUMENT : QTOOL_OK;
}

/* Looks for "quant_method" followed by the string "gguf". */
static int plugin_accepts_config(const char *json)
{
    const char *p = json ? strstr(json, "\"quant_method\"") : NULL;
    if (!p) return 0;
    p += strlen("\"quant_method\"");
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (*p++ != ':') return 0;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    return strncmp(p, "\"gguf\"", 6) == 0;
}

static const qtool_plugin_desc desc = {
    .abi_version = QTOOL_ABI_VERSION,
    .struct_size = sizeof(qtool_plugin_desc),
    .name = "gguf_cpu",
    .version = "1.1.0",
    .summary = "llama.cpp GGUF block types (Q8_0 ... Q6_K, Q4_K_M, Q5_K_S), integer CPU matmul",
    .devices = QTOOL_DEVMASK_CPU,
    .flags = QTOOL_PLUGIN_THREAD_SAFE_MATMUL,
    .weight_bits = 4,
    .activation_bits = 8,
    .options = options,
    .n_options = sizeof options / sizeof options[0],
    .probe = plugin_probe,
    .create = plugin_create,
    .destroy = plugin_destroy,
    .calibrate = plugin_calibrate,
    .pack = plugin_pack,
    .free_packed = free_packed,
    .matmul_cpu = plugin_matmul_cpu,
    .memory = plugin_memory,
    .save = plugin_save,
    .load = plugin_load,
    .quant_config_json = plugin_quant_config_json,
    .accepts_config = plugin_accepts_config,
    .dequantize = plugin_dequantize,
};

QTOOL_PLUGIN_ENTRY { return &desc; }
