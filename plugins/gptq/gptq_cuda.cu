// GPTQ's Hessian H = (2/n) sum x x^T accumulated on the GPU in double
// (cuBLAS DSYRK), so that calibration of large layers is not bound by the
// CPU. The factorisations stay on the CPU (gptq_linalg.c).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include <qtool/plugin.h>

#include "gptq_cuda.h"

namespace {

constexpr int64_t kChunkRows = 2048;

int cuda_fail(cudaError_t e, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s: %s", what, cudaGetErrorString(e));
    return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

__global__ void k_widen(const float *__restrict__ in, double *__restrict__ out, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = (double)in[i];
}

} // namespace

extern "C" {

int gpcu_blas_create(void **handle, char *msg, size_t msg_len)
{
    cublasHandle_t h;
    cublasStatus_t s = cublasCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(msg, msg_len, "cublasCreate failed (status %d)", (int)s);
        return QTOOL_ERR_DEVICE;
    }
    *handle = h;
    return 0;
}

void gpcu_blas_destroy(void *handle)
{
    if (handle) cublasDestroy(static_cast<cublasHandle_t>(handle));
}

int64_t gpcu_chunk_rows(void) { return kChunkRows; }

size_t gpcu_staging_bytes(int64_t K) { return (size_t)(kChunkRows * K) * (sizeof(float) + sizeof(double)); }

int gpcu_syrk(void *blas, double *dH, int64_t K, const float *x, int64_t T, double alpha, double beta, void *staging,
              void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cublasHandle_t h = static_cast<cublasHandle_t>(blas);
    cublasStatus_t s = cublasSetStream(h, st);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(msg, msg_len, "cublasSetStream failed (status %d)", (int)s);
        return QTOOL_ERR_DEVICE;
    }
    float *xf = static_cast<float *>(staging);
    double *xd = reinterpret_cast<double *>(xf + kChunkRows * K);
    for (int64_t t0 = 0; t0 < T; t0 += kChunkRows) {
        const int64_t tr = T - t0 < kChunkRows ? T - t0 : kChunkRows;
        cudaError_t e = cudaMemcpyAsync(xf, x + t0 * K, (size_t)(tr * K) * sizeof(float), cudaMemcpyHostToDevice, st);
        if (e != cudaSuccess) return cuda_fail(e, "upload of calibration rows", msg, msg_len);
        int64_t n = tr * K;
        unsigned grid = (unsigned)((n + 255) / 256 < 65535 * 8 ? (n + 255) / 256 : 65535 * 8);
        k_widen<<<grid, 256, 0, st>>>(xf, xd, n);
        e = cudaGetLastError();
        if (e != cudaSuccess) return cuda_fail(e, "widen kernel launch", msg, msg_len);
        // x row-major [tr, K] is column-major K x tr: C = alpha A A^T + beta C = x^T x.
        const double b = t0 == 0 ? beta : 1.0;
        s = cublasDsyrk(h, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, (int)K, (int)tr, &alpha, xd, (int)K, &b, dH, (int)K);
        if (s != CUBLAS_STATUS_SUCCESS) {
            snprintf(msg, msg_len, "cublasDsyrk failed (status %d)", (int)s);
            return QTOOL_ERR_DEVICE;
        }
        // the staging buffer is reused by the next chunk
        e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) return cuda_fail(e, "Hessian accumulation", msg, msg_len);
    }
    return 0;
}

int gpcu_zero(void *dst, size_t bytes, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemsetAsync(dst, 0, bytes, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemsetAsync", msg, msg_len);
    return 0;
}

int gpcu_download(void *dst, const void *src, size_t bytes, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

} // extern "C"
