// CUDA side of bnb_int8: per-token int8 quantization with outlier
// detection, then either the fused int8 tensor-core GEMM of
// plugins/common/int8_gemm (dequantization, outlier columns and bias in its
// epilogue, no int32 product in memory), or int8 x int8 -> int32 through
// cuBLASLt (or a dp4a kernel) followed by one epilogue kernel that
// dequantizes, removes the outlier columns from the int8 product, adds them
// back in floating point and adds the bias.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include <type_traits>

#include <qtool/plugin.h>

#include "bnb_int8_cuda.h"
#include "int8_gemm.h"

namespace {

constexpr size_t kLtWorkspace = 32u << 20;
// The int32 product is produced in row chunks of at most `chunk_bytes`
// (option chunk_mib), so the scratch stays small and the epilogue can read
// it back from L2.
constexpr float kDequant = 6.200012e-05f; // 1 / (127 * 127), bitsandbytes' constant
constexpr float kInv127 = 7.874015718698502e-3f;

size_t align256(size_t v) { return (v + 255) & ~(size_t)255; }

int cuda_fail(cudaError_t e, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

int64_t chunk_rows(int64_t M, int64_t N, size_t chunk_bytes)
{
    int64_t r = (int64_t)(chunk_bytes / ((size_t)N * 4));
    if (r < 16) r = 16;
    if (r > (1 << 19)) r = 1 << 19; // keeps the fallback GEMM grid within 65535 rows of blocks
    return r < M ? r : M;
}

// ---------------------------------------------------------------- quantize

// One block per token row: absmax over |x| < threshold, q = rint(x * 127 /
// absmax), outliers -> 0 and their columns flagged.
template <typename T>
__global__ void __launch_bounds__(256)
    k_quant_rows(const T *__restrict__ x, int64_t K, int64_t Kp, float thr, int8_t *__restrict__ qa,
                 float *__restrict__ sa, uint8_t *__restrict__ flags)
{
    __shared__ float red[8];
    const int64_t m = blockIdx.x;
    const T *xr = x + m * K;
    float amax = 0.0f;
    for (int64_t c = threadIdx.x; c < K; c += blockDim.x) {
        float a = fabsf(to_f<T>(xr[c]));
        if (thr > 0.0f && a >= thr) {
            flags[c] = 1;
            continue;
        }
        amax = fmaxf(amax, a);
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = amax;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    amax = red[0];
    if (threadIdx.x == 0) sa[m] = amax;
    const float scale = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    int8_t *qr = qa + m * Kp;
    for (int64_t c = threadIdx.x; c < Kp; c += blockDim.x) {
        int q = 0;
        if (c < K) {
            float v = to_f<T>(xr[c]);
            if (!(thr > 0.0f && fabsf(v) >= thr)) q = __float2int_rn(__fmul_rn(v, scale));
            q = q > 127 ? 127 : (q < -127 ? -127 : q);
        }
        qr[c] = (int8_t)q;
    }
}

// The largest value of a 128-thread block, in every thread.
__device__ __forceinline__ float block128_max(float v, float *red)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads(); // red may still be read from an earlier call
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    return fmaxf(fmaxf(red[0], red[1]), fmaxf(red[2], red[3]));
}

template <typename T, bool kOutliers>
__device__ __forceinline__ uint2 quant_piece8(const uint4 &raw, float thr, float scale);

// The same with 16-byte loads (8 values) for K % 8 == 0 and x 16-byte
// aligned (then Kp - K is a multiple of 8 too), 128 threads a row. The row
// stays in registers between the absmax and the quantization (one read of
// x) when it has at most 128 * V pieces; longer rows are read again (from
// L1/L2). As in quant_warp8_row, the absmax over every value comes first and
// only a row that reaches the threshold is scanned for outliers.
template <typename T, int V>
__global__ void __launch_bounds__(128)
    k_quant_rows8(const T *__restrict__ x, int64_t K, int64_t Kp, float thr, int8_t *__restrict__ qa,
                  float *__restrict__ sa, uint8_t *__restrict__ flags)
{
    __shared__ float red[4];
    const int64_t m = blockIdx.x;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + m * K);
    const int64_t nv = K / 8, nvp = Kp / 8;
    const bool resident = nv <= 128 * V;
    uint4 keep[V];
    if (resident) {
#pragma unroll
        for (int u = 0; u < V; u++) {
            const int64_t v = threadIdx.x + u * 128;
            keep[u] = v < nv ? xr[v] : make_uint4(0, 0, 0, 0);
        }
    }
    // Piece v of the row (the u-th of this thread), from registers or memory.
    auto piece = [&](int64_t v, int64_t u) {
        if (!resident) return xr[v];
        uint4 w = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < V; i++)
            if (i == u) w = keep[i];
        return w;
    };
    float amax = 0.0f;
    for (int64_t v = threadIdx.x, u = 0; v < nv; v += 128, u++) {
        const uint4 w = piece(v, u);
        const T *h = reinterpret_cast<const T *>(&w);
#pragma unroll
        for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(to_f<T>(h[i])));
    }
    amax = block128_max(amax, red);
    const bool outliers = thr > 0.0f && amax >= thr; // the same in every thread
    if (outliers) {
        amax = 0.0f;
        for (int64_t v = threadIdx.x, u = 0; v < nv; v += 128, u++) {
            const uint4 w = piece(v, u);
            const T *h = reinterpret_cast<const T *>(&w);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float a = fabsf(to_f<T>(h[i]));
                if (a >= thr) {
                    flags[v * 8 + i] = 1;
                    continue;
                }
                amax = fmaxf(amax, a);
            }
        }
        amax = block128_max(amax, red);
    }
    if (threadIdx.x == 0) sa[m] = amax;
    const float scale = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    uint2 *qr = reinterpret_cast<uint2 *>(qa + m * Kp);
    for (int64_t v = threadIdx.x, u = 0; v < nvp; v += 128, u++) {
        if (v >= nv) {
            qr[v] = make_uint2(0, 0);
            continue;
        }
        const uint4 w = piece(v, u);
        qr[v] = outliers ? quant_piece8<T, true>(w, thr, scale) : quant_piece8<T, false>(w, thr, scale);
    }
}

// Compacts the flagged columns into cols[0..count) in increasing order and
// clears the flags for the next call; run by one whole block (a multiple
// of 32 threads). Each thread owns one contiguous run of columns: it counts
// its flags, one block-wide scan gives its first slot, and it writes its
// columns in order; no loop of barriers over K.
__device__ void collect_flags(uint8_t *__restrict__ flags, int64_t K, int *__restrict__ cols,
                              int *__restrict__ count)
{
    __shared__ int warp_base[32];
    __shared__ int total;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int64_t run = (K + blockDim.x - 1) / blockDim.x;
    const int64_t c0 = threadIdx.x * run < K ? threadIdx.x * run : K, c1 = c0 + run < K ? c0 + run : K;
    // Read past L1: in the quantization kernel other blocks set these flags.
    const volatile uint8_t *vflags = flags;
    int n = 0;
    for (int64_t c = c0; c < c1; c++) n += vflags[c] != 0;
    int incl = n;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int v = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += v;
    }
    if (lane == 31) warp_base[warp] = incl;
    __syncthreads();
    if (warp == 0) { // exclusive scan of the per-warp sums
        const int w = lane < nwarps ? warp_base[lane] : 0;
        int wi = w;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int v = __shfl_up_sync(0xffffffffu, wi, o);
            if (lane >= o) wi += v;
        }
        if (lane < nwarps) warp_base[lane] = wi - w;
        if (lane == 31) total = wi;
    }
    __syncthreads();
    int slot = warp_base[warp] + incl - n;
    for (int64_t c = c0; c < c1 && n; c++)
        if (vflags[c]) {
            cols[slot++] = (int)c;
            flags[c] = 0;
        }
    if (threadIdx.x == 0) *count = total;
}

// One block.
__global__ void __launch_bounds__(1024) k_collect(uint8_t *__restrict__ flags, int64_t K, int *__restrict__ cols,
                                                  int *__restrict__ count)
{
    collect_flags(flags, K, cols, count);
}

// k_quant_rows8 for rows of K <= 32 * 8 * kWarpMaxC values: one warp per
// token, 8 tokens per block, each lane's C raw 16-byte vectors held in
// registers; no block barrier, all of a row's loads in flight at once.
constexpr int kWarpMaxC = 20;


// One lane's 8 values of a row quantized and packed; values at or above the
// threshold become 0 when kOutliers (the row has some).
template <typename T, bool kOutliers>
__device__ __forceinline__ uint2 quant_piece8(const uint4 &raw, float thr, float scale)
{
    const T *h = reinterpret_cast<const T *>(&raw);
    uint32_t w2[2] = {0, 0};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float f = to_f<T>(h[i]);
        int q = 0;
        if (!(kOutliers && fabsf(f) >= thr)) q = __float2int_rn(__fmul_rn(f, scale));
        q = q > 127 ? 127 : (q < -127 ? -127 : q);
        w2[i >> 2] |= (uint32_t)(uint8_t)(int8_t)q << ((i & 3) * 8);
    }
    return make_uint2(w2[0], w2[1]);
}

template <typename T, int C, bool kOutliers>
__device__ __forceinline__ void quant_warp8_store(const uint4 (&raw)[C], int64_t nv, float thr, float scale,
                                                  uint2 *__restrict__ qr)
{
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int c = 0; c < C; c++) {
        const int64_t v = lane + c * 32;
        if (v < nv) qr[v] = quant_piece8<T, kOutliers>(raw[c], thr, scale);
    }
}

// One token row, by one warp; true when this lane set an outlier flag.
// The absmax over every value comes first: a row whose values all stay
// below the threshold (nearly every row) then needs no per-value test, and
// only a row that reaches it is scanned again for its outlier columns.
template <typename T, int C>
__device__ __forceinline__ bool quant_warp8_row(const T *__restrict__ x, int64_t m, int64_t K, int64_t Kp, float thr,
                                                int8_t *__restrict__ qa, float *__restrict__ sa,
                                                uint8_t *__restrict__ flags)
{
    const int lane = threadIdx.x & 31;
    const uint4 *xr = reinterpret_cast<const uint4 *>(x + m * K);
    const int64_t nv = K / 8, nvp = Kp / 8;
    uint4 raw[C];
#pragma unroll
    for (int c = 0; c < C; c++) {
        const int64_t v = lane + c * 32;
        raw[c] = v < nv ? xr[v] : make_uint4(0, 0, 0, 0);
    }
    float amax = 0.0f;
#pragma unroll
    for (int c = 0; c < C; c++) {
        const T *h = reinterpret_cast<const T *>(&raw[c]);
#pragma unroll
        for (int i = 0; i < 8; i++) amax = fmaxf(amax, fabsf(to_f<T>(h[i])));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    const bool outliers = thr > 0.0f && amax >= thr; // the same in every lane
    bool flagged = false;
    if (outliers) { // absmax over the values below the threshold; flag the rest
        amax = 0.0f;
#pragma unroll
        for (int c = 0; c < C; c++) {
            const int64_t v = lane + c * 32;
            const T *h = reinterpret_cast<const T *>(&raw[c]);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float a = fabsf(to_f<T>(h[i]));
                if (a >= thr) {
                    if (v < nv) {
                        flags[v * 8 + i] = 1;
                        flagged = true;
                    }
                    continue;
                }
                amax = fmaxf(amax, a);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    }
    if (lane == 0) sa[m] = amax;
    const float scale = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    uint2 *qr = reinterpret_cast<uint2 *>(qa + m * Kp);
    if (outliers)
        quant_warp8_store<T, C, true>(raw, nv, thr, scale, qr);
    else
        quant_warp8_store<T, C, false>(raw, nv, thr, scale, qr);
    for (int64_t v = nv + lane; v < nvp; v += 32) qr[v] = make_uint2(0, 0);
    return flagged;
}

// With a threshold, the last block to finish (the flags of every row are
// set by then) compacts the outlier columns, which saves k_collect's launch:
// `done` counts finished blocks and is reset by that last block.
template <typename T, int C>
__global__ void __launch_bounds__(256)
    k_quant_warp8(const T *__restrict__ x, int64_t M, int64_t K, int64_t Kp, float thr, int8_t *__restrict__ qa,
                  float *__restrict__ sa, uint8_t *__restrict__ flags, unsigned *__restrict__ done,
                  unsigned *__restrict__ any, int *__restrict__ cols, int *__restrict__ count)
{
    const int64_t m = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    const bool flagged = m < M && quant_warp8_row<T, C>(x, m, K, Kp, thr, qa, sa, flags);
    if (!(thr > 0.0f)) return;
    __shared__ bool last;
    if (flagged) {
        __threadfence(); // its flags are visible before the block counts itself done
        atomicOr(any, 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    // Usually no value reaches the threshold: then there is nothing to scan.
    if (*reinterpret_cast<volatile unsigned *>(any)) {
        collect_flags(flags, K, cols, count);
    } else if (threadIdx.x == 0) {
        *count = 0;
    }
    if (threadIdx.x == 0) {
        *any = 0;
        *done = 0;
    }
}

// ---------------------------------------------------------------- GEMM

// acc[m, n] = sum_k qa[m, k] * w[n, k]; Kp % 4 == 0. Used when cuBLASLt
// offers no int8 algorithm for the shape.
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


// acc[M, N] (row-major int32) = qa[M, Kp] @ w[N, Kp]^T. Returns
// QTOOL_ERR_UNSUPPORTED when cuBLASLt has no algorithm for the shape.
int lt_igemm(cublasLtHandle_t h, const int8_t *w, const int8_t *qa, int32_t *acc, int64_t M, int64_t N, int64_t Kp,
             void *ws, size_t ws_bytes, cudaStream_t st, char *msg, size_t len)
{
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t a = NULL, b = NULL, d = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasStatus_t s;
    int rc = 0, found = 0;
    cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
    cublasLtMatmulHeuristicResult_t heur;
    int32_t alpha = 1, beta = 0;
#define LT(call, what)                       \
    do {                                     \
        s = (call);                          \
        if (s != CUBLAS_STATUS_SUCCESS) {    \
            rc = lt_fail(s, what, msg, len); \
            goto done;                       \
        }                                    \
    } while (0)
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32I, CUDA_R_32I), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    // Column-major view: acc^T[N, M] = w (Kp x N, transposed) * qa^T (Kp x M).
    LT(cublasLtMatrixLayoutCreate(&a, CUDA_R_8I, (uint64_t)Kp, (uint64_t)N, Kp), "layout A");
    LT(cublasLtMatrixLayoutCreate(&b, CUDA_R_8I, (uint64_t)Kp, (uint64_t)M, Kp), "layout B");
    LT(cublasLtMatrixLayoutCreate(&d, CUDA_R_32I, (uint64_t)N, (uint64_t)M, N), "layout D");
    LT(cublasLtMatmulPreferenceCreate(&pref), "preference");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                            sizeof ws_bytes),
       "preference workspace");
    {
        // Let the heuristic see the real pointer alignments (row chunks move B).
        uint32_t al_a = ptr_align(w), al_b = ptr_align(qa), al_d = ptr_align(acc);
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
        snprintf(msg, len, "cuBLASLt has no int8 GEMM for %lldx%lldx%lld", (long long)M, (long long)N, (long long)Kp);
        rc = QTOOL_ERR_UNSUPPORTED;
        goto done;
    }
    s = cublasLtMatmul(h, op, &alpha, w, a, qa, b, &beta, acc, d, acc, d, &heur.algo, ws, ws_bytes, st);
    if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
        snprintf(msg, len, "cuBLASLt refused the int8 GEMM %lldx%lldx%lld", (long long)M, (long long)N, (long long)Kp);
        rc = QTOOL_ERR_UNSUPPORTED;
        goto done;
    }
    if (s != CUBLAS_STATUS_SUCCESS) {
        rc = lt_fail(s, "cublasLtMatmul (int8)", msg, len);
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

// ---------------------------------------------------------------- epilogue

// y[m, n] = (acc - sum_j qa[m,c_j] w[n,c_j]) * sa[m] * scb[n] / 127^2
//         + sum_j x[m,c_j] * w[n,c_j] * scb[n] / 127 + bias[n]
// for rows m0 .. m0 + rows; acc holds those rows only.
constexpr int kEpiThreads = 256;
constexpr int kColChunk = 256;

template <typename T> struct Vec4;
template <> struct Vec4<__half> {
    static __device__ __forceinline__ void store(__half *p, const float v[4])
    {
        __half2 a = __floats2half2_rn(v[0], v[1]), b = __floats2half2_rn(v[2], v[3]);
        uint2 u;
        u.x = *reinterpret_cast<uint32_t *>(&a);
        u.y = *reinterpret_cast<uint32_t *>(&b);
        *reinterpret_cast<uint2 *>(p) = u;
    }
};
template <> struct Vec4<__nv_bfloat16> {
    static __device__ __forceinline__ void store(__nv_bfloat16 *p, const float v[4])
    {
        uint32_t h[4];
        for (int j = 0; j < 4; j++) h[j] = __bfloat16_as_ushort(__float2bfloat16_rn(v[j]));
        uint2 u;
        u.x = h[0] | (h[1] << 16);
        u.y = h[2] | (h[3] << 16);
        *reinterpret_cast<uint2 *>(p) = u;
    }
};

// Each thread writes V consecutive outputs of one row (V = 4 needs N % 4 == 0).
template <typename T, int V>
__global__ void __launch_bounds__(kEpiThreads)
    k_epilogue(const int32_t *__restrict__ acc, int64_t m0, int64_t rows, int64_t N, const float *__restrict__ sa,
               const float *__restrict__ scb, const float *__restrict__ bias, const T *__restrict__ x, int64_t K,
               const int8_t *__restrict__ qa, const int8_t *__restrict__ w, int64_t Kp, const int *__restrict__ cols,
               const int *__restrict__ count, T *__restrict__ y)
{
    __shared__ int sc[kColChunk];
    const int64_t i = ((int64_t)blockIdx.x * kEpiThreads + threadIdx.x) * V;
    const bool live = i < rows * N;
    const int64_t ml = live ? i / N : 0, n0 = live ? i % N : 0, m = m0 + ml;
    int corr[V];
    float outl[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        corr[v] = 0;
        outl[v] = 0.0f;
    }
    const int cnt = count ? *count : 0;
    for (int j0 = 0; j0 < cnt; j0 += kColChunk) {
        int nj = cnt - j0 < kColChunk ? cnt - j0 : kColChunk;
        __syncthreads();
        for (int j = threadIdx.x; j < nj; j += kEpiThreads) sc[j] = cols[j0 + j];
        __syncthreads();
        if (live) {
            for (int j = 0; j < nj; j++) {
                const int c = sc[j];
                const int a = qa[m * Kp + c];
                const float xf = to_f<T>(x[m * K + c]);
#pragma unroll
                for (int v = 0; v < V; v++) {
                    const int wq = w[(n0 + v) * Kp + c];
                    corr[v] += a * wq;
                    outl[v] = fmaf(xf, (float)wq, outl[v]);
                }
            }
        }
    }
    if (!live) return;
    int av[V];
    if (V == 4) {
        int4 q = *reinterpret_cast<const int4 *>(acc + i);
        av[0] = q.x;
        av[1 % V] = q.y;
        av[2 % V] = q.z;
        av[3 % V] = q.w;
    } else {
        av[0] = acc[i];
    }
    const float s = sa[m];
    float out[V];
#pragma unroll
    for (int v = 0; v < V; v++) {
        const float sb = scb[n0 + v];
        float r = __fmul_rn(__fmul_rn(__fmul_rn((float)(av[v] - corr[v]), s), sb), kDequant);
        r += outl[v] * __fmul_rn(sb, kInv127);
        if (bias) r += bias[n0 + v];
        out[v] = r;
    }
    if (V == 4)
        Vec4<T>::store(y + m * N + n0, out);
    else
        y[m * N + n0] = from_f<T>(out[0]);
}

// After a GEMM that ran without the outlier columns (the TMA kernels take
// none): y[m, n] += -(sum_j qa[m,c_j] w[n,c_j]) * sa[m] * scb[n] / 127^2
//                   + sum_j x[m,c_j] * w[n,c_j] * scb[n] / 127,
// the same correction k_epilogue applies, on the already rounded y (one more
// rounding than the fused epilogue). Leaves at once when there are no
// outlier columns, which is the common case; count stays on the device.
template <typename T>
__global__ void __launch_bounds__(kEpiThreads)
    k_outlier_fix(int64_t M, int64_t N, const float *__restrict__ sa, const float *__restrict__ scb,
                  const T *__restrict__ x, int64_t K, const int8_t *__restrict__ qa, const int8_t *__restrict__ w,
                  int64_t Kp, const int *__restrict__ cols, const int *__restrict__ count, T *__restrict__ y)
{
    const int cnt = *count;
    if (cnt == 0) return; // uniform: every thread of the grid reads the same count
    __shared__ int sc[kColChunk];
    // Grid-stride over the outputs, the same trip count for the whole block
    // (the column chunks are staged with barriers).
    for (int64_t base = (int64_t)blockIdx.x * kEpiThreads; base < M * N; base += (int64_t)gridDim.x * kEpiThreads) {
        const int64_t i = base + threadIdx.x;
        const bool live = i < M * N;
        const int64_t m = live ? i / N : 0, n = live ? i % N : 0;
        int corr = 0;
        float outl = 0.0f;
        for (int j0 = 0; j0 < cnt; j0 += kColChunk) {
            const int nj = cnt - j0 < kColChunk ? cnt - j0 : kColChunk;
            __syncthreads();
            for (int j = threadIdx.x; j < nj; j += kEpiThreads) sc[j] = cols[j0 + j];
            __syncthreads();
            if (live)
                for (int j = 0; j < nj; j++) {
                    const int c = sc[j];
                    const int wq = w[n * Kp + c];
                    corr += qa[m * Kp + c] * wq;
                    outl = fmaf(to_f<T>(x[m * K + c]), (float)wq, outl);
                }
        }
        if (!live) continue;
        const float sb = scb[n];
        float r = to_f<T>(y[i]) - __fmul_rn(__fmul_rn(__fmul_rn((float)corr, sa[m]), sb), kDequant);
        r += outl * __fmul_rn(sb, kInv127);
        y[i] = from_f<T>(r);
    }
}

unsigned blocks_for(int64_t work, int threads) { return (unsigned)((work + threads - 1) / threads); }

template <typename T>
int matmul_t(const i8cu_layer &L, const T *x, T *y, int64_t M, float thr, void *ws, size_t ws_bytes, void *outl,
             size_t outl_bytes, int fresh, void *lt, void *lt_ws, size_t lt_ws_bytes, int gemm, cudaStream_t st,
             char *msg, size_t len)
{
    if (ws_bytes < i8cu_workspace_bytes(&L, M, gemm) || outl_bytes < i8cu_outlier_bytes(&L)) {
        snprintf(msg, len, "workspace too small");
        return QTOOL_ERR_INTERNAL;
    }
    uint8_t *base = static_cast<uint8_t *>(ws);
    int8_t *qa = reinterpret_cast<int8_t *>(base);
    float *sa = reinterpret_cast<float *>(base + align256((size_t)(M * L.Kp)));
    // One buffer serves every layer of the instance (grown to the largest):
    // the counters first, the flags next, the columns at the end, so layers
    // of different K never see each other's columns in their flags.
    uint8_t *ob = static_cast<uint8_t *>(outl);
    int *count = reinterpret_cast<int *>(ob);
    unsigned *done = reinterpret_cast<unsigned *>(ob + 4), *any = reinterpret_cast<unsigned *>(ob + 8);
    uint8_t *flags = ob + 256;
    int *cols = reinterpret_cast<int *>(ob + ((outl_bytes - (size_t)L.K * 4) & ~(size_t)3));
    cudaError_t e;
    if (fresh) { // counters, flags and columns
        e = cudaMemsetAsync(outl, 0, outl_bytes, st);
        if (e != cudaSuccess) return cuda_fail(e, "cudaMemsetAsync", msg, len);
    }
    const int64_t nv = L.K / 8;
    const bool warp_quant = L.K % 8 == 0 && ((uintptr_t)x & 15u) == 0 && nv <= kWarpMaxC * 32;
    if (warp_quant) { // collects the outlier columns itself
        const unsigned blocks = (unsigned)((M + 7) / 8);
        const int64_t c = (nv + 31) / 32;
#define QW(C) k_quant_warp8<T, C><<<blocks, 256, 0, st>>>(x, M, L.K, L.Kp, thr, qa, sa, flags, done, any, cols, count)
        if (c <= 1) QW(1);
        else if (c <= 2) QW(2);
        else if (c <= 4) QW(4);
        else if (c <= 8) QW(8);
        else if (c <= 12) QW(12);
        else if (c <= 16) QW(16);
        else QW(kWarpMaxC);
#undef QW
    } else if (L.K % 8 == 0 && ((uintptr_t)x & 15u) == 0)
        k_quant_rows8<T, 8><<<(unsigned)M, 128, 0, st>>>(x, L.K, L.Kp, thr, qa, sa, flags);
    else
        k_quant_rows<T><<<(unsigned)M, 256, 0, st>>>(x, L.K, L.Kp, thr, qa, sa, flags);
    const int *dcount = NULL;
    if (thr > 0.0f) {
        if (!warp_quant) k_collect<<<1, 1024, 0, st>>>(flags, L.K, cols, count);
        dcount = count;
    }
    if (gemm == I8CU_GEMM_FUSED) {
        // Kp % 16 == 0 with zero padding in both operands: the padded
        // product is the product.
        qt_i8gemm_args g = {};
        g.A = qa;
        g.B = L.w;
        g.M = M;
        g.N = L.N;
        g.K = L.Kp;
        g.row_scale = sa;
        g.col_scale = L.scb;
        g.alpha = kDequant;
        g.bias = L.bias;
        g.D = y;
        g.d_is_bf16 = std::is_same<T, __nv_bfloat16>::value;
        g.outlier_cols = dcount ? cols : NULL;
        g.outlier_count = dcount;
        g.outlier_x = x;
        g.ldx = L.K;
        g.outlier_w_scale = kInv127;
        g.stream = st;
        e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "bnb_int8 kernel launch", msg, len);
        // Where the library would run a TMA kernel (large M on Hopper), run it
        // without the outlier columns and correct y afterwards: the TMA
        // kernel is so much faster than the ones that fuse the correction
        // that the extra pass (none at all without outliers) still wins.
        qt_i8gemm_args plain = g;
        plain.outlier_cols = NULL;
        plain.outlier_count = NULL;
        plain.outlier_x = NULL;
        plain.config = qt_i8gemm_pick_config(M, L.N, L.Kp);
        const bool tma = dcount &&
                         (plain.config == QT_I8GEMM_TMA_PINGPONG || plain.config == QT_I8GEMM_TMA_COOPERATIVE) &&
                         qt_i8gemm_config_takes(plain.config, &plain);
        if (!tma) return qt_i8gemm_ex(&g, msg, len);
        int rc = qt_i8gemm_ex(&plain, msg, len);
        if (rc) return rc;
        int dev = 0, sms = 0;
        cudaGetDevice(&dev);
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
        // Grid-stride: without outliers only these blocks start and leave.
        unsigned blocks = blocks_for(M * L.N, kEpiThreads);
        if (sms > 0 && blocks > (unsigned)sms * 2u) blocks = (unsigned)sms * 2u;
        k_outlier_fix<T><<<blocks, kEpiThreads, 0, st>>>(M, L.N, sa, L.scb, x, L.K, qa, L.w, L.Kp, cols, dcount, y);
        e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "bnb_int8 outlier correction launch", msg, len);
        return 0;
    }
    int32_t *acc = reinterpret_cast<int32_t *>(base + align256((size_t)(M * L.Kp)) + align256((size_t)M * 4));
    const int64_t mc = chunk_rows(M, L.N, L.chunk_bytes);
    bool use_lt = lt && gemm == I8CU_GEMM_CUBLASLT;
    for (int64_t m0 = 0; m0 < M; m0 += mc) {
        int64_t rows = M - m0 < mc ? M - m0 : mc;
        int rc = QTOOL_ERR_UNSUPPORTED;
        if (use_lt) {
            rc = lt_igemm(static_cast<cublasLtHandle_t>(lt), L.w, qa + m0 * L.Kp, acc, rows, L.N, L.Kp, lt_ws,
                          lt_ws_bytes, st, msg, len);
            if (rc && rc != QTOOL_ERR_UNSUPPORTED) return rc;
            if (rc == QTOOL_ERR_UNSUPPORTED) use_lt = false; // same answer for every chunk
        }
        if (rc) {
            dim3 grid(blocks_for(L.N, 16), blocks_for(rows, 16));
            k_gemm_dp4a<<<grid, 256, 0, st>>>(qa + m0 * L.Kp, L.w, acc, rows, L.N, L.Kp);
        }
        if (L.N % 4 == 0 && ((uintptr_t)y & 7u) == 0)
            k_epilogue<T, 4><<<blocks_for(rows * L.N / 4, kEpiThreads), kEpiThreads, 0, st>>>(
                acc, m0, rows, L.N, sa, L.scb, L.bias, x, L.K, qa, L.w, L.Kp, cols, dcount, y);
        else
            k_epilogue<T, 1><<<blocks_for(rows * L.N, kEpiThreads), kEpiThreads, 0, st>>>(
                acc, m0, rows, L.N, sa, L.scb, L.bias, x, L.K, qa, L.w, L.Kp, cols, dcount, y);
    }
    e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "bnb_int8 kernel launch", msg, len);
    return 0;
}

} // namespace

extern "C" {

size_t i8cu_workspace_bytes(const i8cu_layer *L, int64_t M, int gemm)
{
    size_t b = align256((size_t)(M * L->Kp)) + align256((size_t)M * 4);
    if (gemm != I8CU_GEMM_FUSED) b += (size_t)chunk_rows(M, L->N, L->chunk_bytes) * (size_t)L->N * 4;
    return b;
}

// count, finished-block counter, any-flag (256 bytes), flags [K] (padded), cols [K]
size_t i8cu_outlier_bytes(const i8cu_layer *L) { return 256 + align256((size_t)L->K) + (size_t)L->K * 4; }

size_t i8cu_lt_workspace_bytes(void) { return kLtWorkspace; }

int i8cu_set_device(int device, char *msg, size_t msg_len)
{
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice", msg, msg_len);
    return 0;
}

int i8cu_lt_create(void **handle, char *msg, size_t msg_len)
{
    cublasLtHandle_t h;
    cublasStatus_t s = cublasLtCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtCreate", msg, msg_len);
    *handle = h;
    return 0;
}

void i8cu_lt_destroy(void *handle)
{
    if (handle) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle));
}

int i8cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

int i8cu_copy_2d(void *dst, size_t dpitch, const void *src, size_t spitch, size_t cols, size_t rows, int kind,
                 void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpy2DAsync(dst, dpitch, src, spitch, cols, rows,
                                      kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpy2DAsync", msg, msg_len);
    return 0;
}

int i8cu_matmul(const i8cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, float threshold, void *ws,
                size_t ws_bytes, void *outliers, size_t outlier_bytes, int outliers_fresh, void *lt_handle,
                void *lt_ws, size_t lt_ws_bytes, int gemm, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (M > 0x7FFFFFFF) {
        snprintf(msg, msg_len, "too many rows");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (is_bf16)
        return matmul_t<__nv_bfloat16>(*L, static_cast<const __nv_bfloat16 *>(x), static_cast<__nv_bfloat16 *>(y), M,
                                       threshold, ws, ws_bytes, outliers, outlier_bytes, outliers_fresh, lt_handle,
                                       lt_ws, lt_ws_bytes, gemm, st, msg, msg_len);
    return matmul_t<__half>(*L, static_cast<const __half *>(x), static_cast<__half *>(y), M, threshold, ws, ws_bytes,
                            outliers, outlier_bytes, outliers_fresh, lt_handle, lt_ws, lt_ws_bytes,
                            gemm, st, msg, msg_len);
}

} // extern "C"
