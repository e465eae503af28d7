// CUDA side of smoothquant: per-token (or static) int8 quantization of the
// activations, then the int8 GEMM: the tensor-core kernel with the scales
// and bias fused into its epilogue (plugins/common/int8_gemm), or int8 x
// int8 -> int32 through cuBLASLt (or a dp4a kernel) followed by an
// epilogue kernel that applies row scale x column scale + bias and writes
// fp16/bf16.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qtool/plugin.h>

#include "int8_gemm.h"
#include "sq_cuda.h"
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

// 8 consecutive 16-bit values from one 16-byte load.
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
        uint4 u;
        __half2 h[4];
#pragma unroll
        for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(v[2 * i], v[2 * i + 1]);
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
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---------------------------------------------------------------- quantize

// The CPU's sq_code: round half to even of x * inv, clamped, NaN -> 0.
__device__ __forceinline__ int code_of(float x, float inv)
{
    float v = __fmul_rn(x, inv);
    if (!(v == v)) return 0;
    v = fminf(fmaxf(v, -127.0f), 127.0f);
    return __float2int_rn(v);
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

// One block per token row; K % 8 == 0 and rows 16-byte aligned: each thread
// keeps C vectors of 8 values in registers between the absmax pass and the
// coding pass, so x is read once.
template <typename T, int C>
__global__ void __launch_bounds__(256)
    k_quant_vec(const T *__restrict__ x, int64_t K, int64_t Kp, int static_act, float act_scale, float act_inv,
                int8_t *__restrict__ qa, float *__restrict__ sa)
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
    float inv = act_inv;
    if (!static_act) {
        amax = block_max(amax, red);
        inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        if (threadIdx.x == 0) sa[m] = __fdiv_rn(amax, 127.0f);
    } else if (threadIdx.x == 0) {
        sa[m] = act_scale;
    }
    int8_t *qr = qa + m * Kp;
#pragma unroll
    for (int c = 0; c < C; c++) {
        int64_t i = threadIdx.x + (int64_t)c * blockDim.x;
        if (i < nv) {
            uint32_t lo = 0, hi = 0;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                lo |= ((uint32_t)(uint8_t)(int8_t)code_of(v[c][j], inv)) << (8 * j);
                hi |= ((uint32_t)(uint8_t)(int8_t)code_of(v[c][j + 4], inv)) << (8 * j);
            }
            *reinterpret_cast<uint2 *>(qr + i * 8) = make_uint2(lo, hi);
        }
    }
    for (int64_t c = K + threadIdx.x; c < Kp; c += blockDim.x) qr[c] = 0;
}

// The shared warp-per-token kernel (token_quant.cuh) with the CPU's sq_code.
struct Int8Code {
    static constexpr float kRange = 127.0f;
    static __device__ __forceinline__ uint2 encode8(const float v[8], float inv)
    {
        uint32_t lo = 0, hi = 0;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            lo |= ((uint32_t)(uint8_t)(int8_t)code_of(v[j], inv)) << (8 * j);
            hi |= ((uint32_t)(uint8_t)(int8_t)code_of(v[j + 4], inv)) << (8 * j);
        }
        return make_uint2(lo, hi);
    }
};

// Any K, any alignment: two passes over the row (the second from cache).
template <typename T>
__global__ void __launch_bounds__(256)
    k_quant_any(const T *__restrict__ x, int64_t K, int64_t Kp, int static_act, float act_scale, float act_inv,
                int8_t *__restrict__ qa, float *__restrict__ sa)
{
    __shared__ float red[33];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * K;
    float inv = act_inv;
    if (!static_act) {
        float amax = 0.0f;
        for (int64_t c = threadIdx.x; c < K; c += blockDim.x) amax = fmaxf(amax, fabsf(to_f<T>(xr[c])));
        amax = block_max(amax, red);
        inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
        if (threadIdx.x == 0) sa[m] = __fdiv_rn(amax, 127.0f);
    } else if (threadIdx.x == 0) {
        sa[m] = act_scale;
    }
    int8_t *qr = qa + m * Kp;
    for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x) qr[c] = c < K ? (int8_t)code_of(to_f<T>(xr[c]), inv) : 0;
}

// ---------------------------------------------------------------- GEMM

// acc[m, n] = sum_k qa[m, k] * w[n, k]; Kp % 4 == 0. For shapes cuBLASLt
// has no int8 algorithm for.
__global__ void __launch_bounds__(256) k_gemm_dp4a(const int8_t *__restrict__ qa, const int8_t *__restrict__ w,
                                                   int32_t *__restrict__ acc, int64_t M, int64_t N, int64_t Kp)
{
    __shared__ int As[16][17], Bs[16][17];
    const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const int64_t m = (int64_t)blockIdx.y * 16 + ty, n = (int64_t)blockIdx.x * 16 + tx;
    const int64_t words = Kp / 4;
    int sum = 0;
    for (int64_t k0 = 0; k0 < words; k0 += 16) {
        int64_t am = (int64_t)blockIdx.y * 16 + ty, bn = (int64_t)blockIdx.x * 16 + ty;
        As[ty][tx] = (am < M && k0 + tx < words) ? reinterpret_cast<const int *>(qa + am * Kp)[k0 + tx] : 0;
        Bs[ty][tx] = (bn < N && k0 + tx < words) ? reinterpret_cast<const int *>(w + bn * Kp)[k0 + tx] : 0;
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 16; j++) sum = __dp4a(As[ty][j], Bs[tx][j], sum);
        __syncthreads();
    }
    if (m < M && n < N) acc[m * N + n] = sum;
}

// A cached cuBLASLt int8 GEMM for one (rows, N, Kp).
struct Plan {
    int64_t rows, n, k;
    int ok; // 1: use it; 0: cuBLASLt has nothing for this shape
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

// Column-major view: acc^T[N, rows] = w (Kp x N, transposed) * qa^T (Kp x rows).
int plan_build(LtCtx *c, Plan &p, int64_t rows, int64_t N, int64_t Kp, size_t ws_bytes, char *msg, size_t len)
{
    memset(&p, 0, sizeof p);
    p.rows = rows;
    p.n = N;
    p.k = Kp;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulPreference_t pref = NULL;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    uint32_t align = 16; // every operand pointer is at least 16-byte aligned (Kp % 16 == 0)
    cublasStatus_t s;
#define LT(call, what)                           \
    do {                                         \
        s = (call);                              \
        if (s != CUBLAS_STATUS_SUCCESS) {        \
            int rc_ = lt_fail(s, what, msg, len); \
            if (pref) cublasLtMatmulPreferenceDestroy(pref); \
            plan_release(p);                     \
            return rc_;                          \
        }                                        \
    } while (0)
    LT(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    LT(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8I, (uint64_t)Kp, (uint64_t)N, Kp), "layout A");
    LT(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8I, (uint64_t)Kp, (uint64_t)rows, Kp), "layout B");
    LT(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32I, (uint64_t)N, (uint64_t)rows, N), "layout D");
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

Plan *plan_get(LtCtx *c, int64_t rows, int64_t N, int64_t Kp, size_t ws_bytes, char *msg, size_t len, int *rc)
{
    *rc = 0;
    for (int i = 0; i < c->n_plans; i++)
        if (c->plans[i].rows == rows && c->plans[i].n == N && c->plans[i].k == Kp) return &c->plans[i];
    int slot = c->n_plans < kPlans ? c->n_plans++ : (c->next++ % kPlans);
    plan_release(c->plans[slot]);
    *rc = plan_build(c, c->plans[slot], rows, N, Kp, ws_bytes, msg, len);
    if (*rc) {
        // Leave a harmless empty slot behind.
        c->plans[slot].rows = -1;
        return NULL;
    }
    return &c->plans[slot];
}

// ---------------------------------------------------------------- epilogue

constexpr int kEpiThreads = 256;

// y[m, n] = acc * sa[m] * ws[n] + bias[n] for rows m0 .. m0 + rows; acc
// holds those rows only. V outputs per thread (V = 8 needs N % 8 == 0 and a
// 16-byte aligned y).
template <typename T, int V>
__global__ void __launch_bounds__(kEpiThreads)
    k_epilogue(const int32_t *__restrict__ acc, int64_t m0, int64_t rows, int64_t N, const float *__restrict__ sa,
               const float *__restrict__ ws, const float *__restrict__ bias, T *__restrict__ y)
{
    const int64_t i = ((int64_t)blockIdx.x * kEpiThreads + threadIdx.x) * V;
    if (i >= rows * N) return;
    const int64_t ml = i / N, n0 = i % N, m = m0 + ml;
    int av[V];
    if (V == 8) {
        int4 a = *reinterpret_cast<const int4 *>(acc + i), b = *reinterpret_cast<const int4 *>(acc + i + 4);
        av[0] = a.x;
        av[1 % V] = a.y;
        av[2 % V] = a.z;
        av[3 % V] = a.w;
        av[4 % V] = b.x;
        av[5 % V] = b.y;
        av[6 % V] = b.z;
        av[7 % V] = b.w;
    } else {
        av[0] = acc[i];
    }
    const float s = sa[m];
    float out[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        float r = __fmul_rn(__fmul_rn((float)av[v], s), ws[n0 + v]);
        out[v] = bias ? __fadd_rn(r, bias[n0 + v]) : __fadd_rn(r, 0.0f);
    }
    if (V == 8)
        Store8<T>::run(y + m * N + n0, out);
    else
        y[m * N + n0] = from_f<T>(out[0]);
}

unsigned blocks_for(int64_t work, int threads) { return (unsigned)((work + threads - 1) / threads); }

int64_t chunk_rows(int64_t M, int64_t N, size_t chunk_bytes)
{
    int64_t r = (int64_t)(chunk_bytes / ((size_t)N * 4));
    if (r < 16) r = 16;
    if (r > (1 << 19)) r = 1 << 19; // keeps the dp4a grid within 65535 rows of blocks
    return r < M ? r : M;
}

template <typename T>
void launch_quant(const sqcu_layer &L, const T *x, int64_t M, int8_t *qa, float *sa, cudaStream_t st)
{
    const int64_t nv = L.K / 8;
    const bool vec = L.K % 8 == 0 && ((uintptr_t)x & 15u) == 0 && nv <= 4 * 256;
    if (qt_token_quant::launch_token_quant<T, Int8Code>(x, M, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv,
                                                        reinterpret_cast<uint8_t *>(qa), sa, st))
        return;
    if (vec) {
        int threads = (int)((nv + 31) / 32 * 32);
        if (threads > 256) threads = 256;
        int c = (int)((nv + threads - 1) / threads);
        switch (c) {
        case 1:
            k_quant_vec<T, 1><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa,
                                                                sa);
            return;
        case 2:
            k_quant_vec<T, 2><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa,
                                                                sa);
            return;
        case 3:
            k_quant_vec<T, 3><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa,
                                                                sa);
            return;
        default:
            k_quant_vec<T, 4><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa,
                                                                sa);
            return;
        }
    }
    int threads = L.K >= 256 ? 256 : (int)((L.K + 31) / 32 * 32);
    k_quant_any<T><<<(unsigned)M, threads, 0, st>>>(x, L.K, L.Kp, L.static_act, L.act_scale, L.act_inv, qa, sa);
}

template <typename T>
int matmul_t(const sqcu_layer &L, const T *x, T *y, int64_t M, int is_bf16, void *ws, size_t ws_bytes, LtCtx *lt,
             void *lt_ws, size_t lt_ws_bytes, int gemm, cudaStream_t st, char *msg, size_t len)
{
    if (ws_bytes < sqcu_workspace_bytes(&L, M, gemm)) {
        snprintf(msg, len, "workspace too small");
        return QTOOL_ERR_INTERNAL;
    }
    uint8_t *base = static_cast<uint8_t *>(ws);
    int8_t *qa = reinterpret_cast<int8_t *>(base);
    float *sa = reinterpret_cast<float *>(base + align256((size_t)(M * L.Kp)));
    int32_t *acc = reinterpret_cast<int32_t *>(base + align256((size_t)(M * L.Kp)) + align256((size_t)M * 4));
    launch_quant<T>(L, x, M, qa, sa, st);
    if (gemm == SQCU_GEMM_FUSED) {
        // ((acc * sa[m]) * ws[n]) * 1 + bias[n]: the CPU's order, the 1 exact.
        int rc = qt_i8gemm(qa, L.w, M, L.N, L.Kp, sa, L.ws, 1.0f, L.bias, y, is_bf16, st, msg, len);
        if (rc) return rc == QTOOL_ERR_INVALID_ARGUMENT ? QTOOL_ERR_UNSUPPORTED : rc;
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "smoothquant kernel launch", msg, len);
        return 0;
    }
    const bool force_builtin = gemm == SQCU_GEMM_BUILTIN;
    const int64_t mc = chunk_rows(M, L.N, L.chunk_bytes);
    const bool vec_out = L.N % 8 == 0 && ((uintptr_t)y & 15u) == 0;
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
        int64_t rows = M - m0 < mc ? M - m0 : mc;
        bool done = false;
        if (lt && !force_builtin) {
            int rc = 0;
            Plan *p = plan_get(lt, rows, L.N, L.Kp, lt_ws_bytes, msg, len, &rc);
            if (rc) return rc;
            if (p->ok) {
                int32_t alpha = 1, beta = 0;
                cublasStatus_t s = cublasLtMatmul(lt->h, p->op, &alpha, L.w, p->a, qa + m0 * L.Kp, p->b, &beta, acc,
                                                  p->d, acc, p->d, &p->algo, lt_ws, lt_ws_bytes, st);
                if (s == CUBLAS_STATUS_SUCCESS)
                    done = true;
                else if (s == CUBLAS_STATUS_NOT_SUPPORTED)
                    p->ok = 0; // same answer next time: go straight to dp4a
                else
                    return lt_fail(s, "cublasLtMatmul (int8)", msg, len);
            }
        }
        if (!done) {
            dim3 grid(blocks_for(L.N, 16), blocks_for(rows, 16));
            k_gemm_dp4a<<<grid, 256, 0, st>>>(qa + m0 * L.Kp, L.w, acc, rows, L.N, L.Kp);
        }
        if (vec_out)
            k_epilogue<T, 8><<<blocks_for(rows * L.N / 8, kEpiThreads), kEpiThreads, 0, st>>>(acc, m0, rows, L.N, sa,
                                                                                             L.ws, L.bias, y);
        else
            k_epilogue<T, 1><<<blocks_for(rows * L.N, kEpiThreads), kEpiThreads, 0, st>>>(acc, m0, rows, L.N, sa, L.ws,
                                                                                         L.bias, y);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "smoothquant kernel launch", msg, len);
    return 0;
}

} // namespace

extern "C" {

size_t sqcu_workspace_bytes(const sqcu_layer *L, int64_t M, int gemm)
{
    size_t b = align256((size_t)(M * L->Kp)) + align256((size_t)M * 4);
    if (gemm != SQCU_GEMM_FUSED) b += (size_t)chunk_rows(M, L->N, L->chunk_bytes) * (size_t)L->N * 4;
    return b;
}

size_t sqcu_lt_workspace_bytes(void) { return kLtWorkspace; }

int sqcu_set_device(int device, char *msg, size_t msg_len)
{
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice", msg, msg_len);
    return 0;
}

int sqcu_lt_create(void **ctx, char *msg, size_t msg_len)
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

void sqcu_lt_destroy(void *ctx)
{
    LtCtx *c = static_cast<LtCtx *>(ctx);
    if (!c) return;
    for (int i = 0; i < c->n_plans; i++) plan_release(c->plans[i]);
    cublasLtDestroy(c->h);
    free(c);
}

int sqcu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

int sqcu_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t cols, size_t rows, int kind,
                 void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, cols, rows,
                                      kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpy2DAsync", msg, msg_len);
    return 0;
}

int sqcu_matmul(const sqcu_layer *L, const void *x, void *y, int64_t M, int is_bf16, void *ws, size_t ws_bytes,
                void *lt_ctx, void *lt_ws, size_t lt_ws_bytes, int gemm, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (M > 0x7FFFFFFF) {
        snprintf(msg, msg_len, "too many rows");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    LtCtx *lt = static_cast<LtCtx *>(lt_ctx);
    if (is_bf16)
        return matmul_t<__nv_bfloat16>(*L, static_cast<const __nv_bfloat16 *>(x), static_cast<__nv_bfloat16 *>(y), M,
                                       1, ws, ws_bytes, lt, lt_ws, lt_ws_bytes, gemm, st, msg, msg_len);
    return matmul_t<__half>(*L, static_cast<const __half *>(x), static_cast<__half *>(y), M, 0, ws, ws_bytes, lt,
                            lt_ws, lt_ws_bytes, gemm, st, msg, msg_len);
}

} // extern "C"
