// CUDA side of fp8: per-token (or static per-tensor) E4M3 quantization of
// the activations and the E4M3 x E4M3 GEMM through cuBLASLt, with the
// scales applied either by cuBLASLt's outer-vector scaling (plus its bias
// epilogue) or by an epilogue kernel of ours over an fp32 product.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qtool/plugin.h>

#include "fp8_cuda.h"
#include "token_quant.cuh"

namespace {

constexpr size_t kLtWorkspace = 32u << 20;
constexpr int kPlans = 16;

size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }

int cuda_fail(cudaError_t e, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

int lt_fail(cublasStatus_t s, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s failed (cuBLAS status %d)", what, (int)s);
    return s == CUBLAS_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> __device__ __forceinline__ void load8(const T *p, float f[8])
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const T *h = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) f[i] = to_f<T>(h[i]);
}

template <typename T> struct Store8;
template <> struct Store8<__half> {
    static __device__ __forceinline__ void run(__half *p, const float v[8])
    {
        __half2 h[4];
#pragma unroll
        for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
        uint4 u;
        u.x = *reinterpret_cast<uint32_t *>(&h[0]);
        u.y = *reinterpret_cast<uint32_t *>(&h[1]);
        u.z = *reinterpret_cast<uint32_t *>(&h[2]);
        u.w = *reinterpret_cast<uint32_t *>(&h[3]);
        *reinterpret_cast<uint4 *>(p) = u;
    }
};
template <> struct Store8<__nv_bfloat16> {
    static __device__ __forceinline__ void run(__nv_bfloat16 *p, const float v[8])
    {
        uint32_t w[4];
#pragma unroll
        for (int i = 0; i < 4; i++)
            w[i] = (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i])) |
                   ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(v[2 * i + 1])) << 16);
        *reinterpret_cast<uint4 *>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    }
};

// ---------------------------------------------------------------- quantize

// E4M3 code of x * inv: round to nearest even, saturated to +-448, NaN ->
// 0x7F (the CPU's e4m3_encode).
__device__ __forceinline__ uint32_t code2(float a, float b, float inv)
{
    float2 v = make_float2(__fmul_rn(a, inv), __fmul_rn(b, inv));
    return (uint32_t)__nv_cvt_float2_to_fp8x2(v, __NV_SATFINITE, __NV_E4M3);
}

__device__ __forceinline__ float block_max(float v, float *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float r = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) r = fmaxf(r, __shfl_xor_sync(0xffffffffu, r, o));
        if (threadIdx.x == 0) red[32] = r;
    }
    __syncthreads();
    return red[32];
}

// Dynamic: scale 448 / absmax (correctly rounded), row scale absmax / 448.
__device__ __forceinline__ float row_inv(float amax, int static_act, float act_scale, float act_inv, float *sa_out)
{
    if (static_act) {
        if (threadIdx.x == 0) *sa_out = act_scale;
        return act_inv;
    }
    if (threadIdx.x == 0) *sa_out = __fdiv_rn(amax, 448.0f);
    return amax > 0.0f ? __fdiv_rn(448.0f, amax) : 0.0f;
}

// One block per token row; K % 8 == 0 and 16-byte aligned rows: each thread
// keeps C vectors of 8 values in registers, so x is read once.
template <typename T, int C>
__global__ void __launch_bounds__(256)
    k_quant_vec(const T *__restrict__ x, int64_t K, int64_t Kp, int static_act, float act_scale, float act_inv,
                uint8_t *__restrict__ qa, float *__restrict__ sa)
{
    __shared__ float red[33];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * K;
    const int64_t nv = K / 8;
    float v[C][8];
    float amax = 0.0f;
#pragma unroll
    for (int c = 0; c < C; c++) {
        int64_t i = threadIdx.x + (int64_t)c * blockDim.x;
        if (i < nv) {
            load8<T>(xr + i * 8, v[c]);
#pragma unroll
            for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[c][j]));
        }
    }
    if (!static_act) amax = block_max(amax, red);
    const float inv = row_inv(amax, static_act, act_scale, act_inv, sa + m);
    uint8_t *qr = qa + m * Kp;
#pragma unroll
    for (int c = 0; c < C; c++) {
        int64_t i = threadIdx.x + (int64_t)c * blockDim.x;
        if (i < nv) {
            uint32_t lo = code2(v[c][0], v[c][1], inv) | (code2(v[c][2], v[c][3], inv) << 16);
            uint32_t hi = code2(v[c][4], v[c][5], inv) | (code2(v[c][6], v[c][7], inv) << 16);
            *reinterpret_cast<uint2 *>(qr + i * 8) = make_uint2(lo, hi);
        }
    }
    for (int64_t c = K + threadIdx.x; c < Kp; c += blockDim.x) qr[c] = 0;
}

// The shared warp-per-token kernel (token_quant.cuh) with E4M3 codes.
struct E4M3Code {
    static constexpr float kRange = 448.0f;
    static __device__ __forceinline__ uint2 encode8(const float v[8], float inv)
    {
        return make_uint2(code2(v[0], v[1], inv) | (code2(v[2], v[3], inv) << 16),
                          code2(v[4], v[5], inv) | (code2(v[6], v[7], inv) << 16));
    }
};

// Any K, any alignment: two passes over the row (the second from cache).
template <typename T>
__global__ void __launch_bounds__(256)
    k_quant_any(const T *__restrict__ x, int64_t K, int64_t Kp, int static_act, float act_scale, float act_inv,
                uint8_t *__restrict__ qa, float *__restrict__ sa)
{
    __shared__ float red[33];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * K;
    float amax = 0.0f;
    if (!static_act) {
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x) amax = fmaxf(amax, fabsf(to_f<T>(xr[c])));
        amax = block_max(amax, red);
    }
    const float inv = row_inv(amax, static_act, act_scale, act_inv, sa + m);
    uint8_t *qr = qa + m * Kp;
    for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x)
        qr[c] = c < K ? (uint8_t)(code2(to_f<T>(xr[c]), 0.0f, inv) & 0xFFu) : 0;
}

template <typename T>
void launch_quant(const f8cu_layer &L, const T *x, int64_t M, uint8_t *qa, float *sa, cudaStream_t st)
{
    const int64_t nv = L.K / 8;
    if (qt_token_quant::launch_token_quant<T, E4M3Code>(x, M, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa,
                                                        sa, st))
        return;
    if (L.K % 8 == 0 && ((uintptr_t)x & 15u) == 0 && nv <= 4 * 256) {
        int threads = (int)((nv + 31) / 32 * 32);
        if (threads > 256) threads = 256;
        int c = (int)((nv + threads - 1) / threads);
#define QV(C)                                                                                                   \
    k_quant_vec<T, C><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa, \
                                                        sa)
        if (c == 1) QV(1);
        else if (c == 2) QV(2);
        else if (c == 3) QV(3);
        else QV(4);
#undef QV
        return;
    }
    int threads = L.K >= 256 ? 256 : (int)((L.K + 31) / 32 * 32);
    k_quant_any<T><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa, sa);
}

// ---------------------------------------------------------------- GEMM plans

struct Plan {
    int64_t rows, m, k;
    int dtype; // cudaDataType of D
    int outer, bias;
    int ok;    // 1: use it; 0: cuBLASLt has nothing for this form
    cublasLtMatmulDesc_t op;
    cublasLtMatrixLayout_t a, b, d;
    cublasLtMatmulAlgo_t algo;
};

struct LtCtx {
    cublasLtHandle_t h;
    Plan plans[kPlans];
    int n_plans, next;
};

void plan_release(Plan &p)
{
    if (p.op) cublasLtMatmulDescDestroy(p.op);
    if (p.a) cublasLtMatrixLayoutDestroy(p.a);
    if (p.b) cublasLtMatrixLayoutDestroy(p.b);
    if (p.d) cublasLtMatrixLayoutDestroy(p.d);
    memset(&p, 0, sizeof p);
}

// Column-major view, TN: D^T[m = Np, rows] = W (Kp x Np, transposed) * qa^T
// (Kp x rows). OUTER: A scale = per-channel vector [Np], B scale =
// per-token vector [rows], optional bias epilogue (bias of D's type).
// ptrs: the scale and bias pointers of the first call, set before the
// heuristic runs (later calls set their own before each matmul).
int plan_build(LtCtx *c, Plan &p, int64_t rows, int64_t m, int64_t Kp, cudaDataType_t dt, int outer, int bias,
               const void *const ptrs[3], size_t ws_bytes, char *msg, size_t len)
{
    memset(&p, 0, sizeof p);
    p.rows = rows;
    p.m = m;
    p.k = Kp;
    p.dtype = (int)dt;
    p.outer = outer;
    p.bias = bias;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    uint32_t align = 16;
    cublasStatus_t s;
#define LT(call, what)                                       \
    do {                                                     \
        s = (call);                                          \
        if (s != CUBLAS_STATUS_SUCCESS) {                    \
            int rc_ = lt_fail(s, what, msg, len);            \
            if (pref) cublasLtMatmulPreferenceDestroy(pref); \
            plan_release(p);                                 \
            return rc_;                                      \
        }                                                    \
    } while (0)
    LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
#ifdef F8_HAVE_OUTER_VEC
    if (outer) {
        int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
        s = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof mode);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof mode);
        if (s != CUBLAS_STATUS_SUCCESS) {
            plan_release(p);
            p.rows = rows, p.m = m, p.k = Kp, p.dtype = (int)dt, p.outer = outer, p.bias = bias;
            return 0; // this cuBLASLt knows the attribute but not the mode: ok = 0
        }
    }
#else
    if (outer) return 0; // built against a cuBLASLt without outer-vector scaling: ok = 0
#endif
    if (outer) {
        LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ptrs[0], sizeof ptrs[0]),
           "set A_SCALE_POINTER");
        LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &ptrs[1], sizeof ptrs[1]),
           "set B_SCALE_POINTER");
    }
    if (outer && bias) {
        cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
        int32_t bt = (int32_t)dt;
        LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), "set EPILOGUE");
        LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt),
           "set BIAS_DATA_TYPE");
        LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &ptrs[2], sizeof ptrs[2]),
           "set BIAS_POINTER");
    }
    LT(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, (uint64_t)Kp, (uint64_t)m, Kp), "layout A");
    LT(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, (uint64_t)Kp, (uint64_t)rows, Kp), "layout B");
    LT(cublasLtMatrixLayoutCreate(&p.d, dt, (uint64_t)m, (uint64_t)rows, m), "layout D");
    LT(cublasLtMatmulPreferenceCreate(&pref), "preference");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof ws_bytes),
       "preference workspace");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align, sizeof align),
       "alignment A");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align, sizeof align),
       "alignment B");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align, sizeof align),
       "alignment C");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align, sizeof align),
       "alignment D");
#undef LT
    s = cublasLtMatmulAlgoGetHeuristic(c->h, p.op, p.a, p.b, p.d, p.d, pref, 1, &heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    p.ok = s == CUBLAS_STATUS_SUCCESS && found > 0;
    if (p.ok) p.algo = heur.algo;
    return 0;
}

Plan *plan_get(LtCtx *c, int64_t rows, int64_t m, int64_t Kp, cudaDataType_t dt, int outer, int bias,
               const void *const ptrs[3], size_t ws_bytes, char *msg, size_t len, int *rc)
{
    *rc = 0;
    for (int i = 0; i < c->n_plans; i++) {
        Plan &p = c->plans[i];
        if (p.rows == rows && p.m == m && p.k == Kp && p.dtype == (int)dt && p.outer == outer && p.bias == bias)
            return &p;
    }
    int slot = c->n_plans < kPlans ? c->n_plans++ : (c->next++ % kPlans);
    plan_release(c->plans[slot]);
    *rc = plan_build(c, c->plans[slot], rows, m, Kp, dt, outer, bias, ptrs, ws_bytes, msg, len);
    if (*rc) {
        c->plans[slot].rows = -1;
        return NULL;
    }
    return &c->plans[slot];
}

// ---------------------------------------------------------------- epilogue

constexpr int kEpiThreads = 256;

// y[m, n] = acc[m, n] * sa[m] * ws[n] + bias[n] for rows m0 .. m0 + rows;
// acc holds those rows with leading dimension Np.
template <typename T, int V>
__global__ void __launch_bounds__(kEpiThreads)
    k_epilogue(const float *__restrict__ acc, int64_t m0, int64_t rows, int64_t N, int64_t Np,
               const float *__restrict__ sa, const float *__restrict__ ws, const float *__restrict__ bias,
               T *__restrict__ y)
{
    const int64_t i = ((int64_t)blockIdx.x * kEpiThreads + threadIdx.x) * V;
    if (i >= rows * N) return;
    const int64_t ml = i / N, n0 = i % N, m = m0 + ml;
    const float *ar = acc + ml * Np + n0;
    float av[V];
    if (V == 8) {
        float4 a = *reinterpret_cast<const float4 *>(ar), b = *reinterpret_cast<const float4 *>(ar + 4);
        av[0] = a.x;
        av[1 % V] = a.y;
        av[2 % V] = a.z;
        av[3 % V] = a.w;
        av[4 % V] = b.x;
        av[5 % V] = b.y;
        av[6 % V] = b.z;
        av[7 % V] = b.w;
    } else {
        av[0] = ar[0];
    }
    const float s = sa[m];
    float out[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        float r = __fmul_rn(__fmul_rn(av[v], s), ws[n0 + v]);
        out[v] = bias ? __fadd_rn(r, bias[n0 + v]) : __fadd_rn(r, 0.0f);
    }
    if (V == 8)
        Store8<T>::run(y + m * N + n0, out);
    else
        y[m * N + n0] = from_f<T>(out[0]);
}

unsigned blocks_for(int64_t work, int threads) { return (unsigned)((work + threads - 1) / threads); }

int64_t chunk_rows(int64_t M, int64_t Np, size_t chunk_bytes)
{
    int64_t r = (int64_t)(chunk_bytes / ((size_t)Np * 4));
    if (r < 16) r = 16;
    return r < M ? r : M;
}

bool refusal(cublasStatus_t s) { return s == CUBLAS_STATUS_NOT_SUPPORTED || s == CUBLAS_STATUS_INVALID_VALUE; }

template <typename T>
int matmul_t(const f8cu_layer &L, const T *x, T *y, int64_t M, int is_bf16, int path, void *ws, size_t ws_bytes,
             LtCtx *lt, void *lt_ws, size_t lt_ws_bytes, cudaStream_t st, char *msg, size_t len)
{
    if (ws_bytes < f8cu_workspace_bytes(&L, M, path)) {
        snprintf(msg, len, "workspace too small");
        return QTOOL_ERR_INTERNAL;
    }
    uint8_t *base = static_cast<uint8_t *>(ws);
    uint8_t *qa = base;
    float *sa = reinterpret_cast<float *>(base + align256((size_t)(M * L.Kp)));
    float *acc = reinterpret_cast<float *>(base + align256((size_t)(M * L.Kp)) + align256((size_t)M * 4));
    const float one = 1.0f, zero = 0.0f;
    int rc = 0;
    if (path == F8CU_OUTER) {
        cudaDataType_t dt = is_bf16 ? CUDA_R_16BF : CUDA_R_16F;
        const void *bias = is_bf16 ? L.bias_bf16 : L.bias_f16;
        int has_bias = L.bias != NULL;
        if (L.Np != L.N || (has_bias && !bias) || ((uintptr_t)y & 15u)) {
            snprintf(msg, len, "this layer needs the epilogue path");
            return QTOOL_ERR_UNSUPPORTED;
        }
        const void *ptrs[3] = {L.ws, sa, bias};
        Plan *p = plan_get(lt, M, L.Np, L.Kp, dt, 1, has_bias, ptrs, lt_ws_bytes, msg, len, &rc);
        if (rc) return rc;
        if (!p->ok) {
            snprintf(msg, len, "cuBLASLt has no outer-vector-scaled FP8 GEMM for this shape");
            return QTOOL_ERR_UNSUPPORTED;
        }
        launch_quant<T>(L, x, M, qa, sa, st);
        const void *sw = L.ws, *sx = sa;
        cublasStatus_t s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &sw, sizeof sw);
        if (s == CUBLAS_STATUS_SUCCESS)
            s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &sx, sizeof sx);
        if (s == CUBLAS_STATUS_SUCCESS && has_bias)
            s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias);
        if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "set scale pointers", msg, len);
        s = cublasLtMatmul(lt->h, p->op, &one, L.w, p->a, qa, p->b, &zero, y, p->d, y, p->d, &p->algo, lt_ws,
                           lt_ws_bytes, st);
        if (refusal(s)) {
            p->ok = 0;
            snprintf(msg, len, "cuBLASLt refused the outer-vector-scaled FP8 GEMM (status %d)", (int)s);
            return QTOOL_ERR_UNSUPPORTED;
        }
        if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtMatmul (fp8)", msg, len);
    } else {
        launch_quant<T>(L, x, M, qa, sa, st);
        const int64_t mc = chunk_rows(M, L.Np, L.chunk_bytes);
        const bool vec_out = L.N % 8 == 0 && ((uintptr_t)y & 15u) == 0;
        for (int64_t m0 = 0; m0 < M; m0 += mc) {
            int64_t rows = M - m0 < mc ? M - m0 : mc;
            const void *none[3] = {NULL, NULL, NULL};
            Plan *p = plan_get(lt, rows, L.Np, L.Kp, CUDA_R_32F, 0, 0, none, lt_ws_bytes, msg, len, &rc);
            if (rc) return rc;
            if (!p->ok) {
                snprintf(msg, len, "cuBLASLt has no FP8 GEMM for %lldx%lldx%lld (needs compute capability >= 8.9)",
                         (long long)rows, (long long)L.Np, (long long)L.Kp);
                return QTOOL_ERR_DEVICE;
            }
            cublasStatus_t s = cublasLtMatmul(lt->h, p->op, &one, L.w, p->a, qa + m0 * L.Kp, p->b, &zero, acc, p->d,
                                              acc, p->d, &p->algo, lt_ws, lt_ws_bytes, st);
            if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtMatmul (fp8)", msg, len);
            if (vec_out)
                k_epilogue<T, 8><<<blocks_for(rows * L.N / 8, kEpiThreads), kEpiThreads, 0, st>>>(
                    acc, m0, rows, L.N, L.Np, sa, L.ws, L.bias, y);
            else
                k_epilogue<T, 1><<<blocks_for(rows * L.N, kEpiThreads), kEpiThreads, 0, st>>>(acc, m0, rows, L.N,
                                                                                             L.Np, sa, L.ws, L.bias, y);
        }
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "fp8 kernel launch", msg, len);
    return 0;
}

} // namespace

extern "C" {

size_t f8cu_workspace_bytes(const f8cu_layer *L, int64_t M, int path)
{
    size_t b = align256((size_t)(M * L->Kp)) + align256((size_t)M * 4);
    if (path == F8CU_EPILOGUE) b += (size_t)chunk_rows(M, L->Np, L->chunk_bytes) * (size_t)L->Np * 4;
    return b;
}

size_t f8cu_lt_workspace_bytes(void) { return kLtWorkspace; }

int f8cu_set_device(int device, char *msg, size_t msg_len)
{
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice", msg, msg_len);
    return 0;
}

int f8cu_device_cc(int device, int *cc, char *msg, size_t msg_len)
{
    int major = 0, minor = 0;
    cudaError_t e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaDeviceGetAttribute", msg, msg_len);
    *cc = major * 10 + minor;
    return 0;
}

int f8cu_lt_create(void **ctx, char *msg, size_t msg_len)
{
    LtCtx *c = static_cast<LtCtx *>(calloc(1, sizeof(LtCtx)));
    if (!c) {
        snprintf(msg, msg_len, "out of host memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    cublasStatus_t s = cublasLtCreate(&c->h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        free(c);
        return lt_fail(s, "cublasLtCreate", msg, msg_len);
    }
    *ctx = c;
    return 0;
}

void f8cu_lt_destroy(void *ctx)
{
    LtCtx *c = static_cast<LtCtx *>(ctx);
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++) plan_release(c->plans[i]);
    cublasLtDestroy(c->h);
    free(c);
}

int f8cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

int f8cu_matmul(const f8cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                size_t ws_bytes, void *lt_ctx, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (M > 0x7FFFFFFF) {
        snprintf(msg, msg_len, "too many rows");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    LtCtx *lt = static_cast<LtCtx *>(lt_ctx);
    if (is_bf16)
        return matmul_t<__nv_bfloat16>(*L, static_cast<const __nv_bfloat16 *>(x), static_cast<__nv_bfloat16 *>(y), M,
                                       1, path, ws, ws_bytes, lt, lt_ws, lt_ws_bytes, st, msg, msg_len);
    return matmul_t<__half>(*L, static_cast<const __half *>(x), static_cast<__half *>(y), M, 0, path, ws, ws_bytes, lt,
                            lt_ws, lt_ws_bytes, st, msg, msg_len);
}

} // extern "C"
