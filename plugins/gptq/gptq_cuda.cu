// GPTQ's Hessian H = (2/n) sum x x^T accumulated on the GPU in double
// (a cuBLASLt FP64 GEMM x^T x; cuBLASLt rather than cuBLAS's DSYRK keeps
// the plugin on the one BLAS library the others use), so that calibration
// of large layers is not bound by the CPU. The factorisations stay on the
// CPU (gptq_linalg.c).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include <qtool/plugin.h>

#include "gptq_cuda.h"

namespace {

constexpr int64_t kChunkRows = 2048;
constexpr size_t kLtWorkspace = 4u << 20;

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
    cublasLtHandle_t h;
    cublasStatus_t s = cublasLtCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) {
        snprintf(msg, msg_len, "cublasLtCreate failed (status %d)", (int)s);
        return QTOOL_ERR_DEVICE;
    }
    *handle = h;
    return 0;
}

void gpcu_blas_destroy(void *handle)
{
    if (handle) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle));
}

int64_t gpcu_chunk_rows(void) { return kChunkRows; }

size_t gpcu_staging_bytes(int64_t K)
{
    return (size_t)(kChunkRows * K) * (sizeof(float) + sizeof(double)) + kLtWorkspace;
}

int gpcu_syrk(void *blas, double *dH, int64_t K, const float *x, int64_t T, double alpha, double beta, void *staging,
              void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cublasLtHandle_t h = static_cast<cublasLtHandle_t>(blas);
    float *xf = static_cast<float *>(staging);
    double *xd = reinterpret_cast<double *>(xf + kChunkRows * K);
    void *lt_ws = xd + kChunkRows * K;
    size_t lt_ws_bytes = kLtWorkspace;
    cublasLtMatmulDesc_t op = NULL;
    cublasLtMatrixLayout_t la = NULL, lc = NULL;
    cublasLtMatmulPreference_t pref = NULL;
    cublasOperation_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_T;
    cublasStatus_t s;
    int rc = 0;
    int64_t built_rows = -1;
#define LT(call, what)                                                         \
    do {                                                                       \
        s = (call);                                                            \
        if (s != CUBLAS_STATUS_SUCCESS) {                                      \
            snprintf(msg, msg_len, "%s failed (cuBLAS status %d)", what, (int)s); \
            rc = QTOOL_ERR_DEVICE;                                             \
            goto done;                                                         \
        }                                                                      \
    } while (0)
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_64F, CUDA_R_64F), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    LT(cublasLtMatrixLayoutCreate(&lc, CUDA_R_64F, (uint64_t)K, (uint64_t)K, K), "layout C");
    LT(cublasLtMatmulPreferenceCreate(&pref), "preference");
    LT(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &lt_ws_bytes,
                                            sizeof lt_ws_bytes),
       "preference workspace");
    for (int64_t t0 = 0; t0 < T; t0 += kChunkRows) {
        const int64_t tr = T - t0 < kChunkRows ? T - t0 : kChunkRows;
        cudaError_t e = cudaMemcpyAsync(xf, x + t0 * K, (size_t)(tr * K) * sizeof(float), cudaMemcpyHostToDevice, st);
        if (e != cudaSuccess) {
            rc = cuda_fail(e, "upload of calibration rows", msg, msg_len);
            goto done;
        }
        const int64_t n = tr * K;
        const unsigned grid = (unsigned)((n + 255) / 256 < 65535 * 8 ? (n + 255) / 256 : 65535 * 8);
        k_widen<<<grid, 256, 0, st>>>(xf, xd, n);
        e = cudaGetLastError();
        if (e != cudaSuccess) {
            rc = cuda_fail(e, "widen kernel launch", msg, msg_len);
            goto done;
        }
        if (tr != built_rows) {
            if (la) cublasLtMatrixLayoutDestroy(la);
            la = NULL;
            // x row-major [tr, K] is column-major K x tr: C = alpha A A^T + beta C = alpha x^T x + beta C
            LT(cublasLtMatrixLayoutCreate(&la, CUDA_R_64F, (uint64_t)K, (uint64_t)tr, K), "layout A");
            built_rows = tr;
        }
        cublasLtMatmulHeuristicResult_t heur;
        int found = 0;
        s = cublasLtMatmulAlgoGetHeuristic(h, op, la, la, lc, lc, pref, 1, &heur, &found);
        if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
            snprintf(msg, msg_len, "cuBLASLt has no FP64 GEMM for %lldx%lldx%lld", (long long)K, (long long)K,
                     (long long)tr);
            rc = QTOOL_ERR_DEVICE;
            goto done;
        }
        const double b = t0 == 0 ? beta : 1.0;
        LT(cublasLtMatmul(h, op, &alpha, xd, la, xd, la, &b, dH, lc, dH, lc, &heur.algo, lt_ws, lt_ws_bytes, st),
           "cublasLtMatmul");
        // the staging buffer is reused by the next chunk
        e = cudaStreamSynchronize(st);
        if (e != cudaSuccess) {
            rc = cuda_fail(e, "Hessian accumulation", msg, msg_len);
            goto done;
        }
    }
#undef LT
done:
    if (pref) cublasLtMatmulPreferenceDestroy(pref);
    if (la) cublasLtMatrixLayoutDestroy(la);
    if (lc) cublasLtMatrixLayoutDestroy(lc);
    if (op) cublasLtMatmulDescDestroy(op);
    return rc;
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
