// The AWQ scale and clipping searches on a CUDA device (awq_search_cuda.h).
#include "awq_search_cuda.h"

#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>

#include <qtool/plugin.h>

namespace {

int cu_fail(cudaError_t e, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "awq search: %s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

int blas_fail(cublasStatus_t s, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "awq search: %s: cuBLAS status %d", what, (int)s);
    return s == CUBLAS_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

// int4g_scale_to_f16 (int4g.h), then back to float: the scale as stored.
__device__ __forceinline__ float stored_scale(float range)
{
    double s = (double)range / 15.0;
    if (!(s >= 5.9604644775390625e-08)) s = 5.9604644775390625e-08;
    if (s > 65504.0) s = 65504.0;
    return __half2float(__float2half_rn((float)s));
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_min(float v)
{
    for (int o = 16; o; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ double warp_sum(double v)
{
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// D = W - Q(W s) / s, quant_group of awq.c without clipping; one warp per
// (row, group).
__global__ void k_residual(const float *__restrict__ W, const float *__restrict__ s, float *__restrict__ D, int64_t N,
                           int64_t K, int64_t G)
{
    const int64_t ng = K / G;
    const int64_t gid = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (gid >= N * ng) return;
    const int64_t off = (gid / ng) * K + (gid % ng) * G;
    const float *w = W + off, *sg = s + (gid % ng) * G;
    float mx = -INFINITY, mn = INFINITY;
    for (int64_t i = lane; i < G; i += 32) {
        float v = w[i] * sg[i];
        mx = fmaxf(mx, v);
        mn = fminf(mn, v);
    }
    mx = warp_max(mx);
    mn = warp_min(mn);
    float range = mx - mn;
    if (!(range >= 1e-5f)) range = 1e-5f;
    const float sc = stored_scale(range);
    const float z = fminf(fmaxf(-rintf(mn / sc), 0.0f), 15.0f);
    for (int64_t i = lane; i < G; i += 32) {
        float v = w[i] * sg[i];
        float q = fminf(fmaxf(rintf(v / sc) + z, 0.0f), 15.0f);
        float deq = __fmul_rn(q - z, sc);
        D[off + i] = w[i] - deq / sg[i];
    }
}

__global__ void k_sum_squares(const float *__restrict__ e, int64_t n, double *out)
{
    double acc = 0;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        acc += (double)e[i] * e[i];
    __shared__ double part[32];
    acc = warp_sum(acc);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x < 32) {
        acc = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0;
        acc = warp_sum(acc);
        if (threadIdx.x == 0) atomicAdd(out, acc);
    }
}

// xs[t, k] = x[t, k] / s[k]
__global__ void k_div_cols(const float *__restrict__ x, const float *__restrict__ s, float *__restrict__ xs, int64_t T,
                           int64_t K)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < T * K; i += (int64_t)gridDim.x * blockDim.x)
        xs[i] = x[i] / s[i % K];
}

// Block-wide reductions over G threads (G % 32 == 0, <= 1024); `red` holds
// 32 slots. Every thread gets the result.
template <typename T, typename Op> __device__ T block_reduce(T v, T *red, Op op)
{
    for (int o = 16; o; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warps = blockDim.x / 32;
    __syncthreads(); // red may still be read by the previous reduction
    if ((threadIdx.x & 31) == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    v = red[0];
    for (int w = 1; w < warps; w++) v = op(v, red[w]);
    return v;
}

struct MaxOp {
    __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct MinOp {
    __device__ float operator()(float a, float b) const { return fminf(a, b); }
};
struct SumOp {
    __device__ double operator()(double a, double b) const { return a + b; }
};

// clip_rows of awq.c: one block of G threads per (row, group).
__global__ void k_clip(float *__restrict__ W, const float *__restrict__ S, int64_t K, int G, int steps, int grid)
{
    extern __shared__ float d_sh[]; // G
    __shared__ float redf[32];
    __shared__ double redd[32];
    const int64_t ng = K / G;
    const int64_t row = blockIdx.x / ng, g = blockIdx.x % ng;
    const int i = threadIdx.x;
    float *wp = W + row * K + g * G + i;
    const float w = *wp;
    const float *Sg = S + g * (int64_t)G * G;
    const float amax = block_reduce(fabsf(w), redf, MaxOp());
    double best = INFINITY;
    float best_mv = amax;
    for (int st = 0; st < steps; st++) {
        const float mv = amax * (1.0f - (float)st / (float)grid);
        const float v = fminf(fmaxf(w, -mv), mv);
        const float mx = block_reduce(v, redf, MaxOp());
        const float mn = block_reduce(v, redf, MinOp());
        float range = mx - mn;
        if (!(range >= 1e-5f)) range = 1e-5f;
        const float sc = stored_scale(range);
        const float z = fminf(fmaxf(-rintf(mn / sc), 0.0f), 15.0f);
        const float q = fminf(fmaxf(rintf(v / sc) + z, 0.0f), 15.0f);
        const float d = w - __fmul_rn(q - z, sc); // no FMA: the CPU rounds the product
        __syncthreads(); // the previous step's readers of d_sh are done
        d_sh[i] = d;
        __syncthreads();
        float gd = 0;
        for (int j = 0; j < G; j++) gd += Sg[(int64_t)j * G + i] * d_sh[j]; // S symmetric: coalesced column
        const double e = block_reduce((double)d * gd, redd, SumOp());
        if (e < best) {
            best = e;
            best_mv = mv;
        }
    }
    *wp = fminf(fmaxf(w, -best_mv), best_mv);
}

struct Buffers {
    void *p[6] = {};
    ~Buffers()
    {
        for (void *q : p)
            if (q) cudaFree(q);
    }
};

} // namespace

extern "C" int awqcu_blas_create(int device, void **handle, char *msg, size_t msg_len)
{
    *handle = NULL;
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cu_fail(e, "cudaSetDevice", msg, msg_len);
    cublasHandle_t h;
    cublasStatus_t s = cublasCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) return blas_fail(s, "cublasCreate", msg, msg_len);
    // Plain float32 products: the errors compare candidates that may be close.
    cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
    *handle = h;
    return QTOOL_OK;
}

extern "C" void awqcu_blas_destroy(void *handle)
{
    if (handle) cublasDestroy((cublasHandle_t)handle);
}

extern "C" int awqcu_scale_errors(void *blas, const float *W, const float *X, const float *S, int n_cand, int64_t N,
                                  int64_t K, int64_t T, int64_t G, double *err, void *stream, char *msg,
                                  size_t msg_len)
{
    if (N <= 0 || K <= 0 || T <= 0 || G <= 0 || G % 32 || K % G || n_cand <= 0) {
        snprintf(msg, msg_len, "awq search: bad shape N %lld K %lld T %lld G %lld", (long long)N, (long long)K,
                 (long long)T, (long long)G);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    cudaStream_t st = (cudaStream_t)stream;
    cublasHandle_t h = (cublasHandle_t)blas;
    Buffers b;
    float *dW, *dX, *dS, *dD, *dE;
    double *dErr;
    cudaError_t e = cudaMalloc(&b.p[0], (size_t)(N * K) * 4);
    if (!e) e = cudaMalloc(&b.p[1], (size_t)(T * K) * 4);
    if (!e) e = cudaMalloc(&b.p[2], (size_t)n_cand * (size_t)K * 4);
    if (!e) e = cudaMalloc(&b.p[3], (size_t)(N * K) * 4);
    if (!e) e = cudaMalloc(&b.p[4], (size_t)(T * N) * 4);
    if (!e) e = cudaMalloc(&b.p[5], (size_t)n_cand * 8);
    if (e) return cu_fail(e, "device memory", msg, msg_len);
    dW = (float *)b.p[0];
    dX = (float *)b.p[1];
    dS = (float *)b.p[2];
    dD = (float *)b.p[3];
    dE = (float *)b.p[4];
    dErr = (double *)b.p[5];
    e = cudaMemcpyAsync(dW, W, (size_t)(N * K) * 4, cudaMemcpyHostToDevice, st);
    if (!e) e = cudaMemcpyAsync(dX, X, (size_t)(T * K) * 4, cudaMemcpyHostToDevice, st);
    if (!e) e = cudaMemcpyAsync(dS, S, (size_t)n_cand * (size_t)K * 4, cudaMemcpyHostToDevice, st);
    if (!e) e = cudaMemsetAsync(dErr, 0, (size_t)n_cand * 8, st);
    if (e) return cu_fail(e, "copying the layer", msg, msg_len);
    cublasStatus_t bs = cublasSetStream(h, st);
    if (bs) return blas_fail(bs, "cublasSetStream", msg, msg_len);
    const float one = 1.0f, zero = 0.0f;
    const int64_t groups = N * (K / G);
    for (int c = 0; c < n_cand; c++) {
        k_residual<<<(unsigned)((groups + 7) / 8), 256, 0, st>>>(dW, dS + (size_t)c * K, dD, N, K, G);
        // E^T [N, T] (column-major) = D^T... : E = X D^T, row-major [T, N].
        bs = cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)N, (int)T, (int)K, &one, dD, (int)K, dX, (int)K, &zero, dE,
                         (int)N);
        if (bs) return blas_fail(bs, "cublasSgemm", msg, msg_len);
        k_sum_squares<<<264, 256, 0, st>>>(dE, T * N, dErr + c);
    }
    e = cudaGetLastError();
    if (!e) e = cudaMemcpyAsync(err, dErr, (size_t)n_cand * 8, cudaMemcpyDeviceToHost, st);
    if (!e) e = cudaStreamSynchronize(st);
    return e ? cu_fail(e, "scale search", msg, msg_len) : QTOOL_OK;
}

extern "C" int awqcu_clip(void *blas, float *W, const float *X, const float *s, int64_t N, int64_t K, int64_t T,
                          int64_t G, int steps, int grid, void *stream, char *msg, size_t msg_len)
{
    if (N <= 0 || K <= 0 || T <= 0 || G < 32 || G > 1024 || G % 32 || K % G || steps <= 0 || grid <= 0) {
        snprintf(msg, msg_len, "awq clip: bad shape N %lld K %lld T %lld G %lld", (long long)N, (long long)K,
                 (long long)T, (long long)G);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    cudaStream_t st = (cudaStream_t)stream;
    cublasHandle_t h = (cublasHandle_t)blas;
    const int64_t ng = K / G;
    Buffers b;
    cudaError_t e = cudaMalloc(&b.p[0], (size_t)(N * K) * 4);
    if (!e) e = cudaMalloc(&b.p[1], (size_t)(T * K) * 4);
    if (!e) e = cudaMalloc(&b.p[2], (size_t)(T * K) * 4);
    if (!e) e = cudaMalloc(&b.p[3], (size_t)K * 4);
    if (!e) e = cudaMalloc(&b.p[4], (size_t)(ng * G * G) * 4);
    if (e) return cu_fail(e, "device memory", msg, msg_len);
    float *dW = (float *)b.p[0], *dX = (float *)b.p[1], *dXs = (float *)b.p[2], *ds = (float *)b.p[3];
    float *dG = (float *)b.p[4];
    e = cudaMemcpyAsync(dW, W, (size_t)(N * K) * 4, cudaMemcpyHostToDevice, st);
    if (!e) e = cudaMemcpyAsync(dX, X, (size_t)(T * K) * 4, cudaMemcpyHostToDevice, st);
    if (!e) e = cudaMemcpyAsync(ds, s, (size_t)K * 4, cudaMemcpyHostToDevice, st);
    if (e) return cu_fail(e, "copying the layer", msg, msg_len);
    k_div_cols<<<264, 256, 0, st>>>(dX, ds, dXs, T, K);
    cublasStatus_t bs = cublasSetStream(h, st);
    if (bs) return blas_fail(bs, "cublasSetStream", msg, msg_len);
    // Xs is column-major [K, T]; group g is its rows g*G.. (G x T, ld K):
    // S_g = Xs_g Xs_g^T.
    const float one = 1.0f, zero = 0.0f;
    bs = cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, (int)G, (int)G, (int)T, &one, dXs, (int)K, G, dXs,
                                   (int)K, G, &zero, dG, (int)G, G * G, (int)ng);
    if (bs) return blas_fail(bs, "cublasSgemmStridedBatched", msg, msg_len);
    k_clip<<<(unsigned)(N * ng), (unsigned)G, (size_t)G * 4, st>>>(dW, dG, K, (int)G, steps, grid);
    e = cudaGetLastError();
    if (!e) e = cudaMemcpyAsync(W, dW, (size_t)(N * K) * 4, cudaMemcpyDeviceToHost, st);
    if (!e) e = cudaStreamSynchronize(st);
    return e ? cu_fail(e, "clipping search", msg, msg_len) : QTOOL_OK;
}
