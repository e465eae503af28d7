/*
 * CUDA half of the fp16 baseline: W [N, K] stored row-major as fp16 or
 * bf16, y = x W^T + b through cuBLASLt (compute 32F, bias epilogue).
 *
 * cuBLASLt is column-major: row-major y [M, N] is column-major y^T [N, M] =
 * W x^T, so A = W seen as a column-major [K, N] matrix with the transposed
 * op, B = x as column-major [K, M], D = y as column-major [N, M]; the bias
 * runs along D's rows, as the BIAS epilogue wants.
 *
 * The cuBLASLt workspace is one buffer per instance, shared by its layers
 * (one per layer would multiply it by the layer count). memory() reports it
 * in exactly one live layer, the owner, which hands it over when freed, so
 * the layers' memory() add up to what was allocated. Only matmuls on the
 * instance's own stream use it, so layers run on other streams cannot race
 * on it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include "fp16_internal.h"
#include "fp16_kernels.h"
#ifdef FP16_HAVE_GLU_TMA
#include "fp16_glu_tma.h"
#endif

#define MAX_PLANS 8

enum { PLAN_LT_BIAS, PLAN_LT_PLAIN, PLAN_FALLBACK };

struct fp16_cuda_plan {
    int64_t m;
    uint32_t align_x, align_y;
    int use_ws;
    int kind;
    int tuned; /* tune_plan has chosen algo */
    cublasLtMatrixLayout_t b_layout, d_layout;
    cublasLtMatmulAlgo_t algo;
};

#define logf_(inst, level, ...) qtool_logf((inst)->host, "fp16", (level), __VA_ARGS__)

static int cuda_fail(const qtool_instance *inst, cudaError_t e, const char *what)
{
    logf_(inst, QTOOL_LOG_ERROR, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

static int lt_fail(const qtool_instance *inst, cublasStatus_t s, const char *what)
{
    logf_(inst, QTOOL_LOG_ERROR, "%s: %s", what, cublasLtGetStatusString(s));
    return s == CUBLAS_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

static cudaDataType_t cuda_type(int dtype) { return dtype == QTOOL_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F; }

/* Largest power of two dividing the address, at most 256 (what the
 * heuristic may assume about a pointer). */
static uint32_t alignment_of(const void *ptr)
{
    uintptr_t a = (uintptr_t)ptr;
    uint32_t al = 256;
    while (al > 1 && (a & (al - 1))) al >>= 1;
    return al;
}

/* ------------------------------------------------------------ instance */

int fp16_cuda_instance_init(qtool_instance *inst, char *msg, size_t msg_len)
{
    const qtool_host_services *h = inst->host;
    if (h->cuda_device < 0) return QTOOL_OK; /* CPU-only instance */
    cublasLtHandle_t lt;
    cublasStatus_t s = cublasLtCreate(&lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        if (msg && msg_len) snprintf(msg, msg_len, "cublasLtCreate failed: %s", cublasLtGetStatusString(s));
        return QTOOL_ERR_DEVICE;
    }
    inst->lt = lt;
    int major = 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, h->cuda_device) != cudaSuccess) major = 0;
    inst->cc_major = major;
    if (inst->workspace_opt >= 0) {
        inst->workspace_bytes = (size_t)inst->workspace_opt;
    } else {
        /* NVIDIA's guidance for cuBLAS: 32 MiB on Hopper and later, 4 MiB before. */
        inst->workspace_bytes = (size_t)(major >= 9 ? 32 : 4) << 20;
    }
    return QTOOL_OK;
}

void fp16_cuda_instance_fini(qtool_instance *inst)
{
    if (inst->workspace) { /* layers outlived their instance: a host bug */
        logf_(inst, QTOOL_LOG_WARN, "instance destroyed with %s live CUDA layers",
              inst->cuda_layers ? "some" : "no");
        inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->workspace);
        inst->workspace = NULL;
        inst->workspace_owner = NULL;
    }
    if (inst->glu_scratch) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, inst->glu_scratch);
    inst->glu_scratch = NULL;
    inst->glu_scratch_bytes = 0;
    if (inst->lt) cublasLtDestroy((cublasLtHandle_t)inst->lt);
    inst->lt = NULL;
    free(inst->tuned);
    inst->tuned = NULL;
    inst->n_tuned = 0;
}

size_t fp16_cuda_workspace_held(const qtool_packed *p)
{
    qtool_instance *inst = p->inst;
    pthread_mutex_lock(&inst->lock);
    size_t r = inst->workspace_owner == p ? (inst->workspace ? inst->workspace_bytes : 0) + inst->glu_scratch_bytes : 0;
    pthread_mutex_unlock(&inst->lock);
    return r;
}

/* ---------------------------------------------------------------- pack */

typedef struct conv_job {
    const qtool_tensor *src;
    uint16_t *dst;
    int dtype;
    int64_t k;
} conv_job;

static void convert_rows(void *arg, int64_t begin, int64_t end)
{
    const conv_job *j = arg;
    for (int64_t i = begin * j->k; i < end * j->k; i++) {
        if (j->src->dtype == j->dtype) {
            j->dst[i] = ((const uint16_t *)j->src->data)[i];
        } else {
            float v = fp16_load_elem(j->src->data, j->src->dtype, i);
            j->dst[i] = j->dtype == QTOOL_DTYPE_F16 ? qtool_f32_to_f16(v) : qtool_f32_to_bf16(v);
        }
    }
}

static int make_desc(qtool_packed *p, int with_bias, void **out)
{
    cublasLtMatmulDesc_t d;
    cublasStatus_t s = cublasLtMatmulDescCreate(&d, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(p->inst, s, "cublasLtMatmulDescCreate");
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    s = cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
    if (s == CUBLAS_STATUS_SUCCESS && with_bias) {
        cublasLtEpilogue_t e = CUBLASLT_EPILOGUE_BIAS;
        s = cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_EPILOGUE, &e, sizeof e);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(d, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &p->b_dev,
                                               sizeof p->b_dev);
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        cublasLtMatmulDescDestroy(d);
        return lt_fail(p->inst, s, "cublasLtMatmulDescSetAttribute");
    }
    *out = d;
    return QTOOL_OK;
}

int fp16_cuda_pack(qtool_packed *p, const qtool_tensor *w, const qtool_tensor *b)
{
    qtool_instance *inst = p->inst;
    const qtool_host_services *h = inst->host;
    if (!inst->lt) {
        logf_(inst, QTOOL_LOG_ERROR, "pack for CUDA on an instance created without a CUDA device");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    p->dtype = inst->cuda_dtype;
    if ((uint64_t)p->n > (UINT64_MAX / 4) / (uint64_t)p->k) return QTOOL_ERR_INVALID_ARGUMENT;
    size_t nk = (size_t)p->n * (size_t)p->k;
    cudaStream_t stream = (cudaStream_t)h->cuda_stream;
    uint16_t *tmp_w = h->alloc(h->ctx, QTOOL_DEVICE_CPU, nk * 2, QTOOL_MEM_OTHER);
    uint16_t *tmp_b = b ? h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)p->n * 2, QTOOL_MEM_OTHER) : NULL;
    int rc = QTOOL_OK, enqueued = 0;
    if (!tmp_w || (b && !tmp_b)) {
        rc = QTOOL_ERR_OUT_OF_MEMORY;
        goto done;
    }
    conv_job cw = {w, tmp_w, p->dtype, p->k};
    h->parallel_for(h->ctx, p->n, 64, convert_rows, &cw);
    p->w_dev = fp16_alloc(p, QTOOL_DEVICE_CUDA, nk * 2, QTOOL_MEM_WEIGHTS);
    if (!p->w_dev) {
        rc = QTOOL_ERR_OUT_OF_MEMORY;
        goto done;
    }
    cudaError_t e = cudaMemcpyAsync(p->w_dev, tmp_w, nk * 2, cudaMemcpyHostToDevice, stream);
    if (e != cudaSuccess) {
        rc = cuda_fail(inst, e, "copying the weight to the device");
        goto done;
    }
    enqueued = 1;
    if (b) {
        conv_job cb = {b, tmp_b, p->dtype, p->n};
        convert_rows(&cb, 0, 1);
        p->b_dev = fp16_alloc(p, QTOOL_DEVICE_CUDA, (size_t)p->n * 2, QTOOL_MEM_WEIGHTS);
        if (!p->b_dev) {
            rc = QTOOL_ERR_OUT_OF_MEMORY;
            goto done;
        }
        e = cudaMemcpyAsync(p->b_dev, tmp_b, (size_t)p->n * 2, cudaMemcpyHostToDevice, stream);
        if (e != cudaSuccess) {
            rc = cuda_fail(inst, e, "copying the bias to the device");
            goto done;
        }
    }
done:
    if (enqueued) { /* the staging buffers must outlive the copies */
        cudaError_t se = cudaStreamSynchronize(stream);
        if (se != cudaSuccess && rc == QTOOL_OK) rc = cuda_fail(inst, se, "copying the weight to the device");
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, tmp_w);
    h->free(h->ctx, QTOOL_DEVICE_CPU, tmp_b);
    if (rc != QTOOL_OK) return rc;

    if (b && (rc = make_desc(p, 1, &p->op_bias)) != QTOOL_OK) return rc;
    if ((rc = make_desc(p, 0, &p->op_plain)) != QTOOL_OK) return rc;
    cublasLtMatrixLayout_t a;
    cublasStatus_t s = cublasLtMatrixLayoutCreate(&a, cuda_type(p->dtype), (uint64_t)p->k, (uint64_t)p->n, p->k);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(inst, s, "cublasLtMatrixLayoutCreate");
    p->a_layout = a;

    pthread_mutex_lock(&inst->lock);
    if (!inst->workspace && inst->workspace_bytes > 0) {
        inst->workspace = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, inst->workspace_bytes, QTOOL_MEM_WORKSPACE);
        if (!inst->workspace) {
            logf_(inst, QTOOL_LOG_WARN, "no memory for a %zu-byte cuBLASLt workspace; running without",
                  inst->workspace_bytes);
            inst->workspace_bytes = 0;
        }
    }
    if (!inst->workspace_owner) inst->workspace_owner = p;
    p->prev = NULL;
    p->next = inst->cuda_layers;
    if (inst->cuda_layers) inst->cuda_layers->prev = p;
    inst->cuda_layers = p;
    pthread_mutex_unlock(&inst->lock);
    return QTOOL_OK;
}

void fp16_cuda_free(qtool_packed *p)
{
    qtool_instance *inst = p->inst;
    const qtool_host_services *h = inst->host;
    pthread_mutex_lock(&inst->lock);
    int linked = p->prev || p->next || inst->cuda_layers == p;
    if (linked) {
        if (p->prev) p->prev->next = p->next;
        else inst->cuda_layers = p->next;
        if (p->next) p->next->prev = p->prev;
        p->prev = p->next = NULL;
    }
    void *ws_to_free = NULL, *scratch_to_free = NULL;
    if (inst->workspace_owner == p) inst->workspace_owner = inst->cuda_layers; /* hand over, or none left */
    if (!inst->cuda_layers) {
        ws_to_free = inst->workspace;
        inst->workspace = NULL;
        scratch_to_free = inst->glu_scratch;
        inst->glu_scratch = NULL;
        inst->glu_scratch_bytes = 0;
    }
    pthread_mutex_unlock(&inst->lock);
    if (ws_to_free) h->free(h->ctx, QTOOL_DEVICE_CUDA, ws_to_free);
    if (scratch_to_free) h->free(h->ctx, QTOOL_DEVICE_CUDA, scratch_to_free);

    for (int i = 0; i < p->n_plans; i++) {
        if (p->plans[i].b_layout) cublasLtMatrixLayoutDestroy(p->plans[i].b_layout);
        if (p->plans[i].d_layout) cublasLtMatrixLayoutDestroy(p->plans[i].d_layout);
    }
    free(p->plans);
    p->plans = NULL;
    p->n_plans = 0;
    if (p->op_bias) cublasLtMatmulDescDestroy((cublasLtMatmulDesc_t)p->op_bias);
    if (p->op_plain) cublasLtMatmulDescDestroy((cublasLtMatmulDesc_t)p->op_plain);
    if (p->a_layout) cublasLtMatrixLayoutDestroy((cublasLtMatrixLayout_t)p->a_layout);
    p->op_bias = p->op_plain = p->a_layout = NULL;
    fp16_free(p, QTOOL_DEVICE_CUDA, p->w_dev, (size_t)p->n * (size_t)p->k * 2, QTOOL_MEM_WEIGHTS);
    fp16_free(p, QTOOL_DEVICE_CUDA, p->b_dev, (size_t)p->n * 2, QTOOL_MEM_WEIGHTS);
    p->w_dev = p->b_dev = NULL;
}

/* -------------------------------------------------------------- matmul */

/* The heuristic's first `want` algorithms for this plan (workspace limit and
 * operand alignments); the number found, 0 on any failure. */
static int heuristic_algos(qtool_packed *p, cublasLtMatmulDesc_t desc, const fp16_cuda_plan *pl, size_t ws_bytes,
                           int want, cublasLtMatmulHeuristicResult_t *res)
{
    qtool_instance *inst = p->inst;
    cublasLtMatmulPreference_t pref;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return 0;
    uint32_t al_a = alignment_of(p->w_dev);
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &ws_bytes, sizeof ws_bytes);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                 sizeof al_a);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                 &pl->align_x, sizeof pl->align_x);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                 &pl->align_y, sizeof pl->align_y);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                 &pl->align_y, sizeof pl->align_y);
    int count = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic((cublasLtHandle_t)inst->lt, desc, (cublasLtMatrixLayout_t)p->a_layout,
                                           pl->b_layout, pl->d_layout, pl->d_layout, pref, want, res, &count);
    cublasLtMatmulPreferenceDestroy(pref);
    return s == CUBLAS_STATUS_SUCCESS ? count : 0;
}

/* Asks the heuristic for one algorithm; 0 when there is one. */
static int find_algo(qtool_packed *p, cublasLtMatmulDesc_t desc, fp16_cuda_plan *pl, size_t ws_bytes)
{
    cublasLtMatmulHeuristicResult_t res;
    if (heuristic_algos(p, desc, pl, ws_bytes, 1, &res) < 1 || res.state != CUBLAS_STATUS_SUCCESS) return -1;
    pl->algo = res.algo;
    return 0;
}

/* ------------------------------------------------------------ tuning */

/* cuBLASLt's heuristic ranks algorithms by a model of the card; its first
 * choice is not always the fastest for a given shape. Large GEMMs (M of at
 * least TUNE_MIN_M rows) time the heuristic's first TUNE_CANDIDATES on their
 * first call, on the real operands, and keep the fastest; the result is
 * shared by every layer of the instance with the same GEMM. The first call
 * of such a shape waits for those timings (a few milliseconds). */
#define TUNE_MIN_M 1024
#define TUNE_CANDIDATES 8
#define TUNE_SLOTS 64

typedef struct tuned_gemm {
    int64_t m, n, k;
    int kind, use_ws;
    uint32_t align_x, align_y;
    cublasLtMatmulAlgo_t algo;
} tuned_gemm;

static int tuned_find(qtool_instance *inst, const qtool_packed *p, const fp16_cuda_plan *pl, cublasLtMatmulAlgo_t *out)
{
    int found = 0;
    pthread_mutex_lock(&inst->lock);
    const tuned_gemm *t = inst->tuned;
    for (int i = 0; i < inst->n_tuned && !found; i++)
        if (t[i].m == pl->m && t[i].n == p->n && t[i].k == p->k && t[i].kind == pl->kind && t[i].use_ws == pl->use_ws &&
            t[i].align_x == pl->align_x && t[i].align_y == pl->align_y) {
            *out = t[i].algo;
            found = 1;
        }
    pthread_mutex_unlock(&inst->lock);
    return found;
}

static void tuned_add(qtool_instance *inst, const qtool_packed *p, const fp16_cuda_plan *pl)
{
    pthread_mutex_lock(&inst->lock);
    if (!inst->tuned) inst->tuned = calloc(TUNE_SLOTS, sizeof(tuned_gemm));
    if (inst->tuned) {
        tuned_gemm *t = (tuned_gemm *)inst->tuned + (inst->n_tuned < TUNE_SLOTS ? inst->n_tuned++ : TUNE_SLOTS - 1);
        t->m = pl->m;
        t->n = p->n;
        t->k = p->k;
        t->kind = pl->kind;
        t->use_ws = pl->use_ws;
        t->align_x = pl->align_x;
        t->align_y = pl->align_y;
        t->algo = pl->algo;
    }
    pthread_mutex_unlock(&inst->lock);
}

/* Times the candidates for this plan and keeps the fastest in pl->algo. A
 * candidate that fails is skipped; when timing itself fails the heuristic's
 * choice stays. */
static void tune_plan(qtool_packed *p, fp16_cuda_plan *pl, const void *x, void *y, cudaStream_t stream)
{
    qtool_instance *inst = p->inst;
    if (tuned_find(inst, p, pl, &pl->algo)) return;
    cublasLtMatmulDesc_t desc = (cublasLtMatmulDesc_t)(pl->kind == PLAN_LT_BIAS ? p->op_bias : p->op_plain);
    void *ws = pl->use_ws ? inst->workspace : NULL;
    size_t ws_bytes = pl->use_ws ? inst->workspace_bytes : 0;
    cublasLtMatmulHeuristicResult_t res[TUNE_CANDIDATES];
    const int count = heuristic_algos(p, desc, pl, ws_bytes, TUNE_CANDIDATES, res);
    if (count < 2) {
        tuned_add(inst, p, pl);
        return;
    }
    cudaEvent_t e0 = NULL, e1 = NULL;
    if (cudaEventCreate(&e0) != cudaSuccess || cudaEventCreate(&e1) != cudaSuccess) {
        if (e0) cudaEventDestroy(e0);
        cudaGetLastError();
        return;
    }
    const float alpha = 1.0f, beta = 0.0f;
    float best = 0.0f;
    int best_i = -1;
    for (int i = 0; i < count; i++) {
        if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
        int ok = 1;
        for (int r = 0; r < 4 && ok; r++) { /* one warm-up, three timed */
            if (r == 1) ok = cudaEventRecord(e0, stream) == cudaSuccess;
            ok = ok && cublasLtMatmul((cublasLtHandle_t)inst->lt, desc, &alpha, p->w_dev,
                                      (cublasLtMatrixLayout_t)p->a_layout, x, pl->b_layout, &beta, y, pl->d_layout,
                                      y, pl->d_layout, &res[i].algo, ws, ws_bytes, stream) == CUBLAS_STATUS_SUCCESS;
        }
        float ms = 0.0f;
        ok = ok && cudaEventRecord(e1, stream) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
             cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
        if (ok && (best_i < 0 || ms < best)) {
            best = ms;
            best_i = i;
        }
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    cudaGetLastError(); /* a failed candidate's error is not the caller's */
    if (best_i >= 0) {
        pl->algo = res[best_i].algo;
        if (best_i > 0)
            logf_(inst, QTOOL_LOG_DEBUG, "M=%lld K=%lld N=%lld: cuBLASLt candidate %d of %d is the fastest",
                  (long long)pl->m, (long long)p->k, (long long)p->n, best_i + 1, count);
    }
    tuned_add(inst, p, pl);
}

static fp16_cuda_plan *get_plan(qtool_packed *p, int64_t m, uint32_t ax, uint32_t ay, int use_ws, int *rc)
{
    qtool_instance *inst = p->inst;
    for (int i = 0; i < p->n_plans; i++) {
        fp16_cuda_plan *pl = &p->plans[i];
        if (pl->m == m && pl->align_x == ax && pl->align_y == ay && pl->use_ws == use_ws) return pl;
    }
    if (!p->plans) {
        p->plans = calloc(MAX_PLANS, sizeof *p->plans);
        if (!p->plans) {
            *rc = QTOOL_ERR_OUT_OF_MEMORY;
            return NULL;
        }
    }
    fp16_cuda_plan *pl;
    if (p->n_plans < MAX_PLANS) {
        pl = &p->plans[p->n_plans++];
    } else { /* evict round-robin */
        pl = &p->plans[p->next_plan];
        p->next_plan = (p->next_plan + 1) % MAX_PLANS;
        if (pl->b_layout) cublasLtMatrixLayoutDestroy(pl->b_layout);
        if (pl->d_layout) cublasLtMatrixLayoutDestroy(pl->d_layout);
    }
    memset(pl, 0, sizeof *pl);
    pl->m = -1; /* not usable until complete */
    cudaDataType_t dt = cuda_type(p->dtype);
    cublasStatus_t s = cublasLtMatrixLayoutCreate(&pl->b_layout, dt, (uint64_t)p->k, (uint64_t)m, p->k);
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatrixLayoutCreate(&pl->d_layout, dt, (uint64_t)p->n, (uint64_t)m, p->n);
    if (s != CUBLAS_STATUS_SUCCESS) {
        *rc = lt_fail(inst, s, "cublasLtMatrixLayoutCreate");
        return NULL;
    }
    pl->align_x = ax;
    pl->align_y = ay;
    pl->use_ws = use_ws;
    size_t ws = use_ws ? inst->workspace_bytes : 0;
    if (p->op_bias && find_algo(p, (cublasLtMatmulDesc_t)p->op_bias, pl, ws) == 0) {
        pl->kind = PLAN_LT_BIAS;
    } else if (find_algo(p, (cublasLtMatmulDesc_t)p->op_plain, pl, ws) == 0) {
        pl->kind = PLAN_LT_PLAIN;
    } else {
        logf_(inst, QTOOL_LOG_DEBUG, "no cuBLASLt algorithm for M=%lld K=%lld N=%lld; using the tiled kernel",
              (long long)m, (long long)p->k, (long long)p->n);
        pl->kind = PLAN_FALLBACK;
    }
    pl->m = m;
    return pl;
}

static int64_t rows_of(const qtool_tensor *t, int64_t last)
{
    if (t->ndim < 1 || t->ndim > QTOOL_MAX_DIMS || t->shape[t->ndim - 1] != last) return -1;
    int64_t r = 1;
    for (int i = 0; i < t->ndim - 1; i++) {
        if (t->shape[i] < 0) return -1;
        r *= t->shape[i];
    }
    return r;
}

/* ------------------------------------------------------ GLU epilogue */

/* The Hopper kernel pays off where the [M, N] product would not stay in L2
 * (measured on an H100: 0.85x of cuBLASLt + GLU at M = 8192, N = 9728, K =
 * 896; 1.2x at M = 1000, where the separate GLU reads the product from L2). */
#define GLU_TMA_MIN_M 4096
/* Without it: the GEMM a chunk of rows at a time into a scratch of this size. */
#define GLU_SCRATCH_BYTES ((size_t)32 << 20)

static int glu_tma(qtool_packed *p, const qtool_matmul_args *args, int64_t m, int *done)
{
    *done = 0;
#ifdef FP16_HAVE_GLU_TMA
    qtool_instance *inst = p->inst;
    const qtool_tensor *x = args->x;
    qtool_tensor *y = args->y;
    /* The kernel: SiLU only (the decoders'), TMA wants 16-byte rows and operands. */
    if (args->epilogue != QTOOL_EPILOGUE_SILU_GLU || inst->cc_major != 9 || m < GLU_TMA_MIN_M ||
        x->dtype != p->dtype || p->k % 8 || alignment_of(x->data) < 16 || alignment_of(p->w_dev) < 16 ||
        m > INT32_MAX || p->n > INT32_MAX || p->k > INT32_MAX)
        return QTOOL_OK;
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, inst->host->cuda_device) != cudaSuccess)
        sms = 0;
    fp16_glu_problem g = {x->data, p->w_dev, p->b_dev, y->data, m, p->n, p->k, p->k, p->n / 2,
                          args->epilogue, p->dtype == QTOOL_DTYPE_BF16, inst->host->cuda_device, sms, args->stream};
    char msg[256];
    int rc = fp16_glu_tma_run(&g, msg, sizeof msg);
    if (rc) {
        logf_(inst, QTOOL_LOG_ERROR, "%s", msg);
        return rc;
    }
    *done = 1;
#else
    (void)p;
    (void)args;
    (void)m;
#endif
    return QTOOL_OK;
}

/* y [M, N/2] = act(z[:, 0::2]) * z[:, 1::2], z = x W^T + b (rows interleaved
 * gate/up by the runtime): the Hopper kernel where it applies, else the
 * GEMM in row chunks into a scratch and a GLU kernel after each. */
static int glu_matmul(qtool_packed *p, const qtool_matmul_args *args)
{
    qtool_instance *inst = p->inst;
    const qtool_host_services *h = inst->host;
    const qtool_tensor *x = args->x;
    qtool_tensor *y = args->y;
    if (args->epilogue < QTOOL_EPILOGUE_SILU_GLU || args->epilogue > QTOOL_EPILOGUE_GELU_TANH_GLU) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: unknown epilogue %d", args->epilogue);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (p->n % 2) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: a GLU epilogue needs an even number of rows, not %lld",
              (long long)p->n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if ((x->dtype != QTOOL_DTYPE_F16 && x->dtype != QTOOL_DTYPE_BF16) || y->dtype != x->dtype ||
        x->device != QTOOL_DEVICE_CUDA || y->device != QTOOL_DEVICE_CUDA) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: x and y must be CUDA tensors, both F16 or both BF16");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const int64_t half = p->n / 2, m = rows_of(x, p->k), my = rows_of(y, half);
    if (m < 0 || my != m) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: with a GLU epilogue x must be [M, %lld] and y [M, %lld]",
              (long long)p->k, (long long)half);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (m == 0) return QTOOL_OK;
    if (!x->data || !y->data) return QTOOL_ERR_INVALID_ARGUMENT;
    int done = 0, rc = glu_tma(p, args, m, &done);
    if (rc || done) return rc;

    /* The scratch belongs to the instance and serves its own stream; a call
     * on another stream gets one of its own for the call. */
    const size_t es = 2, bytes = GLU_SCRATCH_BYTES > (size_t)p->n * es ? GLU_SCRATCH_BYTES : (size_t)p->n * es;
    const int own_stream = args->stream == h->cuda_stream;
    void *scratch = NULL;
    if (own_stream) {
        pthread_mutex_lock(&inst->lock);
        if (!inst->glu_scratch) {
            inst->glu_scratch = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, bytes, QTOOL_MEM_WORKSPACE);
            inst->glu_scratch_bytes = inst->glu_scratch ? bytes : 0;
            if (!inst->workspace_owner) inst->workspace_owner = p;
        }
        scratch = inst->glu_scratch;
        pthread_mutex_unlock(&inst->lock);
    } else {
        scratch = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, bytes, QTOOL_MEM_WORKSPACE);
    }
    if (!scratch) return QTOOL_ERR_OUT_OF_MEMORY;
    int64_t rows = (int64_t)(bytes / ((size_t)p->n * es));
    if (rows > 65535) rows = 65535; /* the GLU kernel's grid */
    for (int64_t r0 = 0; r0 < m && !rc; r0 += rows) {
        const int64_t n_rows = m - r0 < rows ? m - r0 : rows;
        qtool_tensor xs = *x, zs = *y;
        xs.data = (char *)x->data + (size_t)(r0 * p->k) * es;
        xs.ndim = 2;
        xs.shape[0] = n_rows;
        xs.shape[1] = p->k;
        zs.data = scratch;
        zs.ndim = 2;
        zs.shape[0] = n_rows;
        zs.shape[1] = p->n;
        qtool_matmul_args plain = *args;
        plain.epilogue = QTOOL_EPILOGUE_NONE;
        plain.x = &xs;
        plain.y = &zs;
        rc = fp16_cuda_matmul(p, &plain);
        if (!rc) {
            cudaError_t e = (cudaError_t)fp16_launch_glu(scratch, p->n, (char *)y->data + (size_t)(r0 * half) * es,
                                                         half, n_rows, half, args->epilogue, x->dtype, args->stream);
            if (e != cudaSuccess) rc = cuda_fail(inst, e, "GLU kernel launch");
        }
    }
    if (!own_stream) {
        cudaError_t e = cudaStreamSynchronize((cudaStream_t)args->stream);
        if (e != cudaSuccess && !rc) rc = cuda_fail(inst, e, "GLU epilogue");
        h->free(h->ctx, QTOOL_DEVICE_CUDA, scratch);
    }
    return rc;
}

int fp16_cuda_matmul(qtool_packed *p, const qtool_matmul_args *args)
{
    qtool_instance *inst = p->inst;
    if (!args || args->struct_size < offsetof(qtool_matmul_args, stream) + sizeof args->stream || !args->x ||
        !args->y)
        return QTOOL_ERR_INVALID_ARGUMENT;
    const int residual = args->epilogue == QTOOL_EPILOGUE_RESIDUAL;
    if (args->epilogue != QTOOL_EPILOGUE_NONE && !residual) return glu_matmul(p, args);
    const qtool_tensor *x = args->x;
    qtool_tensor *y = args->y;
    if ((x->dtype != QTOOL_DTYPE_F16 && x->dtype != QTOOL_DTYPE_BF16) || y->dtype != x->dtype ||
        x->device != QTOOL_DEVICE_CUDA || y->device != QTOOL_DEVICE_CUDA) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: x and y must be CUDA tensors, both F16 or both BF16");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t m = rows_of(x, p->k), my = rows_of(y, p->n);
    if (m < 0 || my != m) {
        logf_(inst, QTOOL_LOG_ERROR, "matmul_cuda: x must be [M, %lld] and y [M, %lld]", (long long)p->k,
              (long long)p->n);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (m == 0) return QTOOL_OK;
    if (!x->data || !y->data) return QTOOL_ERR_INVALID_ARGUMENT;
    cudaStream_t stream = (cudaStream_t)args->stream;

    int kind = PLAN_FALLBACK;
    fp16_cuda_plan *pl = NULL;
    int use_ws = 0;
    if (x->dtype == p->dtype) {
        use_ws = inst->workspace != NULL && args->stream == inst->host->cuda_stream;
        int rc = QTOOL_OK;
        pl = get_plan(p, m, alignment_of(x->data), alignment_of(y->data), use_ws, &rc);
        if (!pl) return rc;
        kind = pl->kind;
        if (kind != PLAN_FALLBACK && m >= TUNE_MIN_M && !pl->tuned) {
            /* The candidates overwrite their output: a residual call times
             * them on a scratch copy-size buffer, never on y. */
            void *ty = y->data, *tmp = NULL;
            if (residual) {
                const qtool_host_services *h = inst->host;
                ty = tmp = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, (size_t)(m * p->n) * 2, QTOOL_MEM_WORKSPACE);
            }
            if (ty) tune_plan(p, pl, x->data, ty, stream);
            if (tmp) inst->host->free(inst->host->ctx, QTOOL_DEVICE_CUDA, tmp);
            pl->tuned = ty != NULL;
        }
    }
    if (kind == PLAN_FALLBACK) {
        cudaError_t e = (cudaError_t)fp16_launch_gemm(x->data, x->dtype, p->w_dev, p->dtype, p->b_dev, p->dtype,
                                                      y->data, m, p->n, p->k, residual, stream);
        return e == cudaSuccess ? QTOOL_OK : cuda_fail(inst, e, "fp16 tiled GEMM launch");
    }
    /* The residual epilogue is cuBLASLt's C = D = y with beta 1. */
    const float alpha = 1.0f, beta = residual ? 1.0f : 0.0f;
    cublasLtMatmulDesc_t desc = (cublasLtMatmulDesc_t)(kind == PLAN_LT_BIAS ? p->op_bias : p->op_plain);
    cublasStatus_t s = cublasLtMatmul((cublasLtHandle_t)inst->lt, desc, &alpha, p->w_dev,
                                      (cublasLtMatrixLayout_t)p->a_layout, x->data, pl->b_layout, &beta, y->data,
                                      pl->d_layout, y->data, pl->d_layout, &pl->algo,
                                      use_ws ? inst->workspace : NULL, use_ws ? inst->workspace_bytes : 0, stream);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(inst, s, "cublasLtMatmul");
    if (kind == PLAN_LT_PLAIN && p->b_dev) {
        cudaError_t e = (cudaError_t)fp16_launch_add_bias(y->data, y->dtype, p->b_dev, p->dtype, m, p->n, stream);
        if (e != cudaSuccess) return cuda_fail(inst, e, "bias kernel launch");
    }
    return QTOOL_OK;
}

/* ------------------------------------------------------------ download */

int fp16_cuda_download(const qtool_packed *p, float *w_out, float *bias_out)
{
    qtool_instance *inst = p->inst;
    const qtool_host_services *h = inst->host;
    size_t nk = (size_t)p->n * (size_t)p->k;
    cudaStream_t stream = (cudaStream_t)h->cuda_stream;
    uint16_t *tmp = h->alloc(h->ctx, QTOOL_DEVICE_CPU, (nk + (size_t)p->n) * 2, QTOOL_MEM_OTHER);
    if (!tmp) return QTOOL_ERR_OUT_OF_MEMORY;
    cudaError_t e = cudaMemcpyAsync(tmp, p->w_dev, nk * 2, cudaMemcpyDeviceToHost, stream);
    if (e == cudaSuccess && bias_out && p->b_dev)
        e = cudaMemcpyAsync(tmp + nk, p->b_dev, (size_t)p->n * 2, cudaMemcpyDeviceToHost, stream);
    cudaError_t se = cudaStreamSynchronize(stream);
    if (e == cudaSuccess) e = se;
    if (e != cudaSuccess) {
        h->free(h->ctx, QTOOL_DEVICE_CPU, tmp);
        return cuda_fail(inst, e, "copying the weight to the host");
    }
    for (size_t i = 0; i < nk; i++) w_out[i] = fp16_load_elem(tmp, p->dtype, (int64_t)i);
    if (bias_out && p->b_dev)
        for (int64_t i = 0; i < p->n; i++) bias_out[i] = fp16_load_elem(tmp + nk, p->dtype, i);
    h->free(h->ctx, QTOOL_DEVICE_CPU, tmp);
    return QTOOL_OK;
}
