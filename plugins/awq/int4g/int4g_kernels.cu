// CUDA kernels for int4 group-quantized weights (awq, gptq): a fused
// dequantize-GEMV for small batches, and dequantize-to-fp16/bf16 +
// cuBLASLt for large ones. Layout: int4g.h.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include <qtool/plugin.h>

#include "int4g_cuda.h"

namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kGemvMaxRows = 16;
constexpr size_t kLtWorkspace = 32u << 20;

int cuda_fail(cudaError_t e, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

int lt_fail(cublasStatus_t s, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s failed (cuBLAS status %d)", what, (int)s);
    return QTOOL_ERR_DEVICE;
}

uint32_t ptr_align(const void *p)
{
    uint32_t a = 256;
    while (a > 1 && ((uintptr_t)p % a) != 0) a >>= 1;
    return a;
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Two 16-bit values of one 32-bit word (element 2j in the low half) to floats.
template <typename T> __device__ __forceinline__ float2 pair_to_f2(uint32_t w);
template <> __device__ __forceinline__ float2 pair_to_f2<__half>(uint32_t w)
{
    __half2 h = *reinterpret_cast<__half2 *>(&w);
    return __half22float2(h);
}
template <> __device__ __forceinline__ float2 pair_to_f2<__nv_bfloat16>(uint32_t w)
{
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xFFFF0000u));
}
template <typename T> __device__ __forceinline__ uint32_t f2_to_pair(float a, float b);
template <> __device__ __forceinline__ uint32_t f2_to_pair<__half>(float a, float b)
{
    __half2 h = __floats2half2_rn(a, b);
    return *reinterpret_cast<uint32_t *>(&h);
}
template <> __device__ __forceinline__ uint32_t f2_to_pair<__nv_bfloat16>(float a, float b)
{
    uint32_t lo = __bfloat16_as_ushort(__float2bfloat16_rn(a));
    uint32_t hi = __bfloat16_as_ushort(__float2bfloat16_rn(b));
    return lo | (hi << 16);
}

__device__ __forceinline__ float scale_at(const i4cu_layer &L, int64_t n, int64_t g)
{
    return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short *>(L.scales) + n * L.ngroups + g)));
}
__device__ __forceinline__ float zero_at(const i4cu_layer &L, int64_t n, int64_t g)
{
    return (float)__ldg(L.zeros + n * L.ngroups + g);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// (q - zero) * scale is exact in float (a 5-bit integer times an fp16).
__device__ __forceinline__ float dq(uint32_t word, int j, float z, float s)
{
    return ((float)((word >> (4 * j)) & 15u) - z) * s;
}

// ---------------------------------------------------------------- dequant

// One thread per 32-bit word (8 consecutive k of one row).
template <typename T, bool GIDX> __global__ void k_dequant(i4cu_layer L, T *__restrict__ out)
{
    const int64_t kw = L.K / 8, words = L.N * kw;
    for (int64_t w = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; w < words;
         w += (int64_t)gridDim.x * blockDim.x) {
        const int64_t n = w / kw, k0 = (w - n * kw) * 8;
        const uint32_t q = __ldg(L.qw + w);
        uint4 o;
        uint32_t *ow = reinterpret_cast<uint32_t *>(&o);
        if (!GIDX) {
            const int64_t g = k0 / L.G;
            const float s = scale_at(L, n, g), z = zero_at(L, n, g);
#pragma unroll
            for (int j = 0; j < 4; j++) ow[j] = f2_to_pair<T>(dq(q, 2 * j, z, s), dq(q, 2 * j + 1, z, s));
        } else {
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int64_t g0 = __ldg(L.g_idx + k0 + 2 * j), g1 = __ldg(L.g_idx + k0 + 2 * j + 1);
                ow[j] = f2_to_pair<T>(dq(q, 2 * j, zero_at(L, n, g0), scale_at(L, n, g0)),
                                      dq(q, 2 * j + 1, zero_at(L, n, g1), scale_at(L, n, g1)));
            }
        }
        *reinterpret_cast<uint4 *>(out + w * 8) = o;
    }
}

template <typename T> __global__ void k_add_bias(T *__restrict__ y, const float *__restrict__ bias, int64_t M, int64_t N)
{
    const int64_t total = M * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(to_f<T>(y[i]) + bias[i % N]);
}

// ---------------------------------------------------------------- GEMV

// One warp per R output features, MT input rows at once. Each lane takes
// 32 consecutive k per step (16 bytes of codes per feature; K % 32 == 0),
// so without g_idx those 32 share one group (G % 32 == 0). VEC: x is
// 16-byte aligned and read as uint4.
template <typename T, int MT, int R, bool GIDX, bool VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
    k_gemv(i4cu_layer L, const T *__restrict__ x, T *__restrict__ y, int rows)
{
    const int lane = threadIdx.x & 31;
    const int64_t n0 = ((int64_t)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5)) * R;
    if (n0 >= L.N) return;
    const int64_t K = L.K, kw = K / 8;
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;

    for (int64_t k0 = (int64_t)lane * 32; k0 < K; k0 += 32 * 32) {
        uint32_t qv[R][4];
        float s[R], z[R];
        int64_t nr[R];
#pragma unroll
        for (int r = 0; r < R; r++) {
            nr[r] = n0 + r < L.N ? n0 + r : L.N - 1; // a missing last feature recomputes one
            const uint4 q = __ldg(reinterpret_cast<const uint4 *>(L.qw + nr[r] * kw + k0 / 8));
            qv[r][0] = q.x;
            qv[r][1] = q.y;
            qv[r][2] = q.z;
            qv[r][3] = q.w;
            if (!GIDX) {
                const int64_t g = k0 / L.G;
                s[r] = scale_at(L, nr[r], g);
                z[r] = zero_at(L, nr[r], g);
            }
        }
#pragma unroll
        for (int sub = 0; sub < 4; sub++) {
            const int64_t kb = k0 + sub * 8;
            float w[R][8];
            if (GIDX) {
                int32_t gi[8];
#pragma unroll
                for (int j = 0; j < 8; j++) gi[j] = __ldg(L.g_idx + kb + j);
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int j = 0; j < 8; j++)
                        w[r][j] = dq(qv[r][sub], j, zero_at(L, nr[r], gi[j]), scale_at(L, nr[r], gi[j]));
            } else {
#pragma unroll
                for (int r = 0; r < R; r++)
#pragma unroll
                    for (int j = 0; j < 8; j++) w[r][j] = dq(qv[r][sub], j, z[r], s[r]);
            }
#pragma unroll
            for (int m = 0; m < MT; m++) {
                if (m < rows) {
                    const T *xr = x + (int64_t)m * K + kb;
                    if (VEC) {
                        const uint4 xv = __ldg(reinterpret_cast<const uint4 *>(xr));
                        const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            const float2 f = pair_to_f2<T>(xw[j]);
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                acc[r][m] = fmaf(w[r][2 * j], f.x, acc[r][m]);
                                acc[r][m] = fmaf(w[r][2 * j + 1], f.y, acc[r][m]);
                            }
                        }
                    } else {
#pragma unroll
                        for (int j = 0; j < 8; j++) {
                            const float f = to_f<T>(xr[j]);
#pragma unroll
                            for (int r = 0; r < R; r++) acc[r][m] = fmaf(w[r][j], f, acc[r][m]);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        const int64_t n = n0 + r;
        const float b = (L.bias && n < L.N) ? L.bias[n] : 0.0f;
#pragma unroll
        for (int m = 0; m < MT; m++) {
            const float v = warp_sum(acc[r][m]);
            if (lane == 0 && m < rows && n < L.N) y[(int64_t)m * L.N + n] = from_f<T>(v + b);
        }
    }
}

template <typename T, int MT, int R, bool GIDX>
void launch_gemv_mt(const i4cu_layer &L, const T *x, T *y, int rows, bool vec, cudaStream_t st)
{
    const int64_t per_block = (int64_t)kWarpsPerBlock * R;
    dim3 grid((unsigned)((L.N + per_block - 1) / per_block)), block(kWarpsPerBlock * 32);
    if (vec)
        k_gemv<T, MT, R, GIDX, true><<<grid, block, 0, st>>>(L, x, y, rows);
    else
        k_gemv<T, MT, R, GIDX, false><<<grid, block, 0, st>>>(L, x, y, rows);
}

template <typename T, bool GIDX> void run_gemv_g(const i4cu_layer &L, const T *x, T *y, int64_t M, cudaStream_t st)
{
    const bool vec = ((uintptr_t)x & 15u) == 0;
    for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxRows) {
        const int rows = (int)(M - m0 < kGemvMaxRows ? M - m0 : kGemvMaxRows);
        const T *xs = x + m0 * L.K;
        T *ys = y + m0 * L.N;
        if (rows == 1)
            launch_gemv_mt<T, 1, 2, GIDX>(L, xs, ys, rows, vec, st);
        else if (rows == 2)
            launch_gemv_mt<T, 2, 2, GIDX>(L, xs, ys, rows, vec, st);
        else if (rows <= 4)
            launch_gemv_mt<T, 4, 2, GIDX>(L, xs, ys, rows, vec, st);
        else if (rows <= 8)
            launch_gemv_mt<T, 8, 2, GIDX>(L, xs, ys, rows, vec, st);
        else
            launch_gemv_mt<T, 16, 1, GIDX>(L, xs, ys, rows, vec, st);
    }
}

template <typename T> void run_gemv(const i4cu_layer &L, const T *x, T *y, int64_t M, cudaStream_t st)
{
    if (L.g_idx)
        run_gemv_g<T, true>(L, x, y, M, st);
    else
        run_gemv_g<T, false>(L, x, y, M, st);
}

unsigned grid_for(int64_t work, int threads)
{
    int64_t g = (work + threads - 1) / threads;
    if (g > 65535 * 8) g = 65535 * 8;
    return (unsigned)(g < 1 ? 1 : g);
}

template <typename T> void launch_dequant(const i4cu_layer &L, T *out, cudaStream_t st)
{
    const unsigned g = grid_for(L.N * (L.K / 8), 256);
    if (L.g_idx)
        k_dequant<T, true><<<g, 256, 0, st>>>(L, out);
    else
        k_dequant<T, false><<<g, 256, 0, st>>>(L, out);
}

// ---------------------------------------------------------------- cuBLASLt

// y[M, N] = x[M, K] @ w[N, K]^T, row-major, fp16/bf16 in and out, fp32 accumulation.
int lt_gemm(cublasLtHandle_t h, const void *w, const void *x, void *y, int64_t M, int64_t N, int64_t K,
            cudaDataType_t dt, void *ws, size_t ws_bytes, cudaStream_t st, char *msg, size_t len)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t s;
    int rc = 0;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    float alpha = 1.0f, beta = 0.0f;
#define LT(call, what)                       \
    do {                                     \
        s = (call);                          \
        if (s != CUBLAS_STATUS_SUCCESS) {    \
            rc = lt_fail(s, what, msg, len); \
            goto done;                       \
        }                                    \
    } while (0)
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    // Column-major view: y^T[N, M] = (w as K x N, transposed) * (x^T as K x M).
    LT(cublasLtMatrixLayoutCreate(&a, dt, (uint64_t)K, (uint64_t)N, K), "layout A");
    LT(cublasLtMatrixLayoutCreate(&b, dt, (uint64_t)K, (uint64_t)M, K), "layout B");
    LT(cublasLtMatrixLayoutCreate(&d, dt, (uint64_t)N, (uint64_t)M, N), "layout D");
    LT(cublasLtMatmulPreferenceCreate(&pref), "preference");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                            sizeof ws_bytes),
       "preference workspace");
    {
        uint32_t al_a = ptr_align(w), al_b = ptr_align(x), al_d = ptr_align(y);
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a),
           "preference alignment A");
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b),
           "preference alignment B");
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d, sizeof al_d),
           "preference alignment C");
        LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d, sizeof al_d),
           "preference alignment D");
    }
    s = cublasLtMatmulAlgoGetHeuristic(h, op, a, b, d, d, pref, 1, &heur, &found);
    if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
        snprintf(msg, len, "cuBLASLt has no GEMM for %lldx%lldx%lld", (long long)M, (long long)N, (long long)K);
        rc = QTOOL_ERR_UNSUPPORTED;
        goto done;
    }
    s = cublasLtMatmul(h, op, &alpha, w, a, x, b, &beta, y, d, y, d, &heur.algo, ws, ws_bytes, st);
    if (s != CUBLAS_STATUS_SUCCESS) {
        rc = s == CUBLAS_STATUS_NOT_SUPPORTED ? QTOOL_ERR_UNSUPPORTED : lt_fail(s, "cublasLtMatmul", msg, len);
        goto done;
    }
#undef LT
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
    return rc;
}

template <typename T>
int matmul_t(const i4cu_layer &L, const T *x, T *y, int64_t M, int path, void *ws, size_t ws_bytes, void *lt,
             void *lt_ws, size_t lt_ws_bytes, cudaStream_t st, cudaDataType_t dt, char *msg, size_t len)
{
    if (path == INT4G_PATH_GEMV) {
        run_gemv<T>(L, x, y, M, st);
    } else {
        const size_t need = (size_t)(L.N * L.K) * sizeof(T);
        if (!ws || ws_bytes < need) {
            snprintf(msg, len, "workspace of %zu bytes is too small (need %zu)", ws_bytes, need);
            return QTOOL_ERR_INTERNAL;
        }
        T *wd = static_cast<T *>(ws);
        launch_dequant<T>(L, wd, st);
        int rc = lt_gemm(static_cast<cublasLtHandle_t>(lt), wd, x, y, M, L.N, L.K, dt, lt_ws, lt_ws_bytes, st, msg,
                         len);
        if (rc == QTOOL_ERR_UNSUPPORTED)
            run_gemv<T>(L, x, y, M, st); // no cuBLASLt algorithm for this shape: the fused kernel takes any
        else if (rc)
            return rc;
        else if (L.bias)
            k_add_bias<T><<<grid_for(M * L.N, 256), 256, 0, st>>>(y, L.bias, M, L.N);
    }
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "int4 kernel launch", msg, len);
    return 0;
}

} // namespace

extern "C" {

size_t i4cu_workspace_bytes(const i4cu_layer *L, int64_t M, int path)
{
    (void)M;
    if (path == INT4G_PATH_GEMV) return 0;
    return (size_t)(L->N * L->K) * 2;
}

size_t i4cu_lt_workspace_bytes(void) { return kLtWorkspace; }

int i4cu_set_device(int device, char *msg, size_t msg_len)
{
    const cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice", msg, msg_len);
    return 0;
}

int i4cu_lt_create(void **handle, char *msg, size_t msg_len)
{
    cublasLtHandle_t h;
    const cublasStatus_t s = cublasLtCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtCreate", msg, msg_len);
    *handle = h;
    return 0;
}

void i4cu_lt_destroy(void *handle)
{
    if (handle) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle));
}

int i4cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

int i4cu_matmul(const i4cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                size_t ws_bytes, void *lt_handle, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (path != INT4G_PATH_GEMV && path != INT4G_PATH_DEQUANT_GEMM) {
        snprintf(msg, msg_len, "unknown kernel path %d", path);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (L->K % 32 != 0 || (!L->g_idx && L->G % 32 != 0)) {
        snprintf(msg, msg_len, "layout needs K and the group size to be multiples of 32 (K %lld, group %lld)",
                 (long long)L->K, (long long)L->G);
        return QTOOL_ERR_INTERNAL;
    }
    if (is_bf16)
        return matmul_t<__nv_bfloat16>(*L, static_cast<const __nv_bfloat16 *>(x), static_cast<__nv_bfloat16 *>(y), M,
                                       path, ws, ws_bytes, lt_handle, lt_ws, lt_ws_bytes, st, CUDA_R_16BF, msg,
                                       msg_len);
    return matmul_t<__half>(*L, static_cast<const __half *>(x), static_cast<__half *>(y), M, path, ws, ws_bytes,
                            lt_handle, lt_ws, lt_ws_bytes, st, CUDA_R_16F, msg, msg_len);
}

int i4cu_dequantize(const i4cu_layer *L, void *out, int is_bf16, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (is_bf16)
        launch_dequant<__nv_bfloat16>(*L, static_cast<__nv_bfloat16 *>(out), st);
    else
        launch_dequant<__half>(*L, static_cast<__half *>(out), st);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "int4 dequantize launch", msg, msg_len);
    return 0;
}

} // extern "C"
