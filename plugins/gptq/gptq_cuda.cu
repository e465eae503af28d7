// GPTQ on the GPU. Calibration: the Hessian H = (2/n) sum x x^T summed in
// double (a cuBLASLt FP64 GEMM x^T x). Pack, when H lives on the device:
// the damped, permuted H, the upper Cholesky factor U of its inverse
// (cuSOLVER potrf + trtri in double, the same reversed-matrix route as
// gptq_linalg.c), and the column loop with lazy-block error feedback (one
// warp per output row, cuBLAS DGEMM for the trailing update). The
// per-column arithmetic uses explicitly rounded operations so that it is
// the CPU's (gptq.c) operation for operation; only the factorisation and
// the GEMM sums run in another order.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

// ------------------------------------------------------------ pack

namespace {

constexpr int kLazy = 128;   // lazy batch width: gptq.c's GPTQ_BLOCK
constexpr int kRowWarps = 4; // output rows (one warp each) per thread block of the column kernel
constexpr unsigned kFull = 0xffffffffu;

struct solver_handles {
    cusolverDnHandle_t dn;
    cublasHandle_t blas;
};

size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

unsigned grid_for(int64_t n, int threads)
{
    int64_t g = (n + threads - 1) / threads;
    return (unsigned)(g < (1 << 20) ? (g > 0 ? g : 1) : (1 << 20));
}

int solver_fail(cusolverStatus_t s, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s failed (cuSOLVER status %d)", what, (int)s);
    return s == CUSOLVER_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

int blas_fail(cublasStatus_t s, const char *what, char *msg, size_t len)
{
    snprintf(msg, len, "%s failed (cuBLAS status %d)", what, (int)s);
    return s == CUBLAS_STATUS_ALLOC_FAILED ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
}

int launch_check(const char *what, char *msg, size_t len)
{
    cudaError_t e = cudaGetLastError();
    return e == cudaSuccess ? 0 : cuda_fail(e, what, msg, len);
}

// gptq.c's qparams and find_params / quant1, with the same operations.
struct qp {
    double s;
    int zero;
    unsigned short s16;
};

__device__ unsigned short scale_to_f16(double s)
{
    if (!(s >= 5.9604644775390625e-08)) s = 5.9604644775390625e-08;
    if (s > 65504.0) s = 65504.0;
    return __half_as_ushort(__float2half_rn(__double2float_rn(s)));
}

__device__ double f16_value(unsigned short h) { return (double)__half2float(__ushort_as_half(h)); }

// Group parameters of w[idx[t]] (or w[t]), t < n, over the 32 lanes of a warp.
__device__ qp find_params_warp(const double *w, const int *idx, int64_t n, int sym, int lane)
{
    double xmin = 0, xmax = 0;
    for (int64_t t = lane; t < n; t += 32) {
        const double v = idx ? w[idx[t]] : w[t];
        xmin = fmin(xmin, v);
        xmax = fmax(xmax, v);
    }
    for (int o = 16; o > 0; o >>= 1) {
        xmin = fmin(xmin, __shfl_xor_sync(kFull, xmin, o));
        xmax = fmax(xmax, __shfl_xor_sync(kFull, xmax, o));
    }
    if (sym) {
        xmax = fmax(fabs(xmin), xmax);
        if (xmin < 0) xmin = -xmax;
    }
    if (xmin == 0 && xmax == 0) {
        xmin = -1;
        xmax = 1;
    }
    const double scale = __ddiv_rn(__dsub_rn(xmax, xmin), 15.0);
    qp q;
    q.zero = sym ? 8 : (int)rint(__ddiv_rn(-xmin, scale));
    q.s16 = scale_to_f16(scale);
    q.s = f16_value(q.s16);
    return q;
}

__device__ int quant1(double w, const qp &q)
{
    const double v = __dadd_rn(rint(__ddiv_rn(w, q.s)), (double)q.zero);
    return v < 0 ? 0 : v > 15 ? 15 : (int)v;
}

__global__ void k_diag(const double *__restrict__ H, int64_t K, double *__restrict__ dg)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < K; i += (int64_t)gridDim.x * blockDim.x)
        dg[i] = H[i * K + i];
}

// partial[k] = sum over i < k with H_ii, H_kk > 0 of 2 H_ik^2 / (H_ii H_kk),
// H_ik read where the CPU path reads it; a fixed-order tree sum.
__global__ void k_offdiag_corr(const double *__restrict__ H, const double *__restrict__ dg, int64_t K,
                               double *__restrict__ partial)
{
    __shared__ double red[256];
    const int64_t k = blockIdx.x;
    const double hkk = dg[k];
    double s = 0;
    if (hkk > 0)
        for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
            const double hii = dg[i];
            if (hii > 0) {
                const double v = H[k * K + i];
                s = __dadd_rn(s, __ddiv_rn(__dmul_rn(__dmul_rn(2.0, v), v), __dmul_rn(hii, hkk)));
            }
        }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) red[threadIdx.x] = __dadd_rn(red[threadIdx.x], red[threadIdx.x + o]);
        __syncthreads();
    }
    if (threadIdx.x == 0) partial[k] = red[0];
}

// W[r, a] = w[r, perm[a]] as double, 0 for dead inputs (int4g_load_elem's conversions).
__global__ void k_load_weights(const void *__restrict__ raw, int dtype, int64_t N, int64_t K,
                               const int *__restrict__ perm, const unsigned char *__restrict__ dead,
                               double *__restrict__ W)
{
    for (int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; x < N * K; x += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = x / K, k = perm[x - r * K], src = r * K + k;
        double v = 0;
        if (!dead[k]) {
            if (dtype == QTOOL_DTYPE_F16)
                v = (double)__half2float(__ushort_as_half(static_cast<const unsigned short *>(raw)[src]));
            else if (dtype == QTOOL_DTYPE_BF16)
                v = (double)__uint_as_float((unsigned)static_cast<const unsigned short *>(raw)[src] << 16);
            else
                v = (double)static_cast<const float *>(raw)[src];
        }
        W[x] = v;
    }
}

// Static groups: parameters of each (row, group) of input columns, found
// through invperm in the permuted weights. One warp per (row, group).
__global__ void k_static_params(const double *__restrict__ W, const int *__restrict__ invperm, int64_t N, int64_t K,
                                int64_t G, int64_t ng, int sym, unsigned short *__restrict__ scales,
                                unsigned char *__restrict__ zeros)
{
    const int lane = threadIdx.x & 31;
    const int64_t nwarps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5; wid < N * ng; wid += nwarps) {
        const int64_t r = wid / ng, g = wid - r * ng;
        const qp q = find_params_warp(W + r * K, invperm + g * G, G, sym, lane);
        if (lane == 0) {
            scales[wid] = q.s16;
            zeros[wid] = (unsigned char)q.zero;
        }
    }
}

// Hr = J Hp J (the flat array reversed), Hp = H[perm][:, perm] with the
// off-diagonal times `off` and the diagonal `diag`, as gptq.c's build_h.
__global__ void k_build(const double *__restrict__ H, int64_t K, const int *__restrict__ perm,
                        const double *__restrict__ diag, double off, double *__restrict__ Hr)
{
    for (int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; x < K * K; x += (int64_t)gridDim.x * blockDim.x) {
        const int64_t ar = x / K, a = K - 1 - ar, b = K - 1 - (x - ar * K);
        if (a == b) {
            Hr[x] = diag[a];
        } else {
            const int64_t i = perm[a], k = perm[b];
            Hr[x] = __dmul_rn(off, i <= k ? H[k * K + i] : H[i * K + k]);
        }
    }
}

__global__ void k_check_factor(const double *__restrict__ L, int64_t K, int *__restrict__ bad)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < K; i += (int64_t)gridDim.x * blockDim.x) {
        const double d = L[i * K + i];
        if (!(d > 0) || !isfinite(d)) *bad = 1;
    }
}

// X = L^-1 (column-major, lower) into U = J X J stored row-major, in place:
// U[a][b] = X[K-1-a][K-1-b] pairs element a*K+b with (K-1-a) + (K-1-b)*K,
// an involution; the strict lower triangle of U is cleared.
__global__ void k_to_u(double *__restrict__ A, int64_t K)
{
    for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < K * K; p += (int64_t)gridDim.x * blockDim.x) {
        const int64_t a = p / K, b = p - a * K;
        if (a > b) {
            A[p] = 0;
        } else {
            const int64_t q = (K - 1 - a) + (K - 1 - b) * K;
            if (p < q) {
                const double t = A[p];
                A[p] = A[q];
                A[q] = t;
            }
        }
    }
}

struct col_args {
    const double *W; // [N, K] processing order, updated up to column i1 by the GEMMs
    const double *U; // [K, K] row-major, upper
    double *Err;     // [N, cnt]
    unsigned char *codes; // [N, K] input order
    unsigned short *scales;
    unsigned char *zeros; // [N, ng]
    const int *perm;
    int64_t N, K, G, ng, i1;
    int cnt, sym, stat;
};

// Columns [i1, i1 + cnt) of every row, one warp per row, as gptq.c's
// gptq_rows: lane l keeps columns l, l+32, l+64, l+96 of the lazy block.
__global__ void __launch_bounds__(kRowWarps * 32) k_columns(col_args a)
{
    const int lane = threadIdx.x & 31;
    const int64_t r = (int64_t)blockIdx.x * kRowWarps + (threadIdx.x >> 5);
    if (r >= a.N) return;
    const int64_t K = a.K, G = a.G, i1 = a.i1;
    const double *Wr = a.W + r * K;
    double w1[4], e[4] = {0, 0, 0, 0};
    int qc[4] = {0, 0, 0, 0};
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int b = lane + 32 * j;
        w1[j] = b < a.cnt ? Wr[i1 + b] : 0.0;
    }
    qp cur;
    cur.s = 1;
    cur.zero = 0;
    cur.s16 = 0;
    if (!a.stat && i1 % G != 0) { // a group that began in an earlier block
        const int64_t gi = r * a.ng + i1 / G;
        cur.s16 = a.scales[gi];
        cur.zero = a.zeros[gi];
        cur.s = f16_value(cur.s16);
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        for (int src = 0; src < 32; src++) {
            const int i = 32 * j + src;
            if (i >= a.cnt) break;
            const int64_t col = i1 + i;
            if (a.stat) {
                const int64_t gi = r * a.ng + a.perm[col] / G;
                cur.s16 = a.scales[gi];
                cur.zero = a.zeros[gi];
                cur.s = f16_value(cur.s16);
            } else if (col % G == 0) {
                // from W as the last lazy update left it, as AutoGPTQ
                cur = find_params_warp(Wr + col, nullptr, G, a.sym, lane);
                if (lane == 0) {
                    a.scales[r * a.ng + col / G] = cur.s16;
                    a.zeros[r * a.ng + col / G] = (unsigned char)cur.zero;
                }
            }
            const double *u = a.U + col * K + i1;
            const double w = __shfl_sync(kFull, w1[j], src);
            const int q = quant1(w, cur);
            const double err =
                __ddiv_rn(__dsub_rn(w, __dmul_rn(cur.s, (double)(q - cur.zero))), u[i]);
            if (lane == src) {
                e[j] = err;
                qc[j] = q;
            }
#pragma unroll
            for (int jj = j; jj < 4; jj++) {
                const int b = lane + 32 * jj;
                if (b > i && b < a.cnt) w1[jj] = __dsub_rn(w1[jj], __dmul_rn(err, u[b]));
            }
        }
    }
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const int b = lane + 32 * j;
        if (b < a.cnt) {
            a.Err[r * a.cnt + b] = e[j];
            a.codes[r * K + a.perm[i1 + b]] = (unsigned char)qc[j];
        }
    }
}

// qw[n, w] = codes n, 8w..8w+7 in nibbles, LSB first (int4g.h's layout).
__global__ void k_pack_codes(const unsigned char *__restrict__ codes, int64_t N, int64_t K, uint32_t *__restrict__ qw)
{
    const int64_t kw = K / 8;
    for (int64_t x = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; x < N * kw; x += (int64_t)gridDim.x * blockDim.x) {
        const unsigned char *c = codes + x * 8; // row n, word w: n * K + 8 w = 8 x
        uint32_t v = 0;
#pragma unroll
        for (int t = 0; t < 8; t++) v |= (uint32_t)(c[t] & 15u) << (4 * t);
        qw[x] = v;
    }
}

} // namespace

struct gpcu_pack {
    solver_handles *sv;
    const qtool_host_services *h;
    cudaStream_t st;
    const double *dH;
    int64_t N, K, G, ng;
    void *mem_factor; // the factor alone, so that cuSOLVER sizes its workspace for it
    void *mem;
    double *Hr;       // [K, K]: Hr, then L, then U
    double *W, *Err, *dg, *dvec, *partial;
    void *raw;
    unsigned char *codes, *zeros, *dead;
    unsigned short *scales;
    uint32_t *qw;
    int *perm, *invperm, *info;
    double *potrf_work;
    int potrf_lwork;
    void *trtri_work;
    size_t trtri_bytes;
    void *trtri_host;
    size_t trtri_host_bytes;
};

extern "C" {

int gpcu_solver_create(void **solver, char *msg, size_t msg_len)
{
    solver_handles *s = static_cast<solver_handles *>(calloc(1, sizeof *s));
    if (!s) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    cusolverStatus_t ss = cusolverDnCreate(&s->dn);
    if (ss != CUSOLVER_STATUS_SUCCESS) {
        free(s);
        return solver_fail(ss, "cusolverDnCreate", msg, msg_len);
    }
    cublasStatus_t bs = cublasCreate(&s->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        cusolverDnDestroy(s->dn);
        free(s);
        return blas_fail(bs, "cublasCreate", msg, msg_len);
    }
    *solver = s;
    return 0;
}

void gpcu_solver_destroy(void *solver)
{
    solver_handles *s = static_cast<solver_handles *>(solver);
    if (!s) return;
    cublasDestroy(s->blas);
    cusolverDnDestroy(s->dn);
    free(s);
}

void gpcu_pack_end(gpcu_pack *pk)
{
    if (!pk) return;
    const qtool_host_services *h = pk->h;
    if (pk->mem || pk->mem_factor) cudaStreamSynchronize(pk->st); // kernels may still use the buffers
    if (pk->mem) h->free(h->ctx, QTOOL_DEVICE_CUDA, pk->mem);
    if (pk->mem_factor) h->free(h->ctx, QTOOL_DEVICE_CUDA, pk->mem_factor);
    free(pk->trtri_host);
    free(pk);
}

int gpcu_pack_begin(void *solver, const qtool_host_services *h, const double *dH, int64_t N, int64_t K, int64_t G,
                    gpcu_pack **out, char *msg, size_t msg_len)
{
    *out = NULL;
    gpcu_pack *pk = static_cast<gpcu_pack *>(calloc(1, sizeof *pk));
    if (!pk) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    pk->sv = static_cast<solver_handles *>(solver);
    pk->h = h;
    pk->st = static_cast<cudaStream_t>(h->cuda_stream);
    pk->dH = dH;
    pk->N = N;
    pk->K = K;
    pk->G = G;
    pk->ng = K / G;
    int rc = 0;
    size_t off = 0, sz[16], total = 0;
    int n = 0;
    unsigned char *base;
    cusolverStatus_t ss = cusolverDnSetStream(pk->sv->dn, pk->st);
    if (ss != CUSOLVER_STATUS_SUCCESS) {
        rc = solver_fail(ss, "cusolverDnSetStream", msg, msg_len);
        goto fail;
    }
    {
        cublasStatus_t bs = cublasSetStream(pk->sv->blas, pk->st);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            rc = blas_fail(bs, "cublasSetStream", msg, msg_len);
            goto fail;
        }
    }
    pk->mem_factor = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, (size_t)(K * K) * sizeof(double), QTOOL_MEM_WORKSPACE);
    if (!pk->mem_factor) {
        snprintf(msg, msg_len, "out of CUDA memory for the %lldx%lld factor", (long long)K, (long long)K);
        rc = QTOOL_ERR_OUT_OF_MEMORY;
        goto fail;
    }
    pk->Hr = static_cast<double *>(pk->mem_factor);
    ss = cusolverDnDpotrf_bufferSize(pk->sv->dn, CUBLAS_FILL_MODE_LOWER, (int)K, pk->Hr, (int)K, &pk->potrf_lwork);
    if (ss != CUSOLVER_STATUS_SUCCESS) {
        rc = solver_fail(ss, "cusolverDnDpotrf_bufferSize", msg, msg_len);
        goto fail;
    }
    ss = cusolverDnXtrtri_bufferSize(pk->sv->dn, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F, pk->Hr,
                                     K, &pk->trtri_bytes, &pk->trtri_host_bytes);
    if (ss != CUSOLVER_STATUS_SUCCESS) {
        rc = solver_fail(ss, "cusolverDnXtrtri_bufferSize", msg, msg_len);
        goto fail;
    }
    if (pk->trtri_host_bytes) {
        pk->trtri_host = malloc(pk->trtri_host_bytes);
        if (!pk->trtri_host) {
            snprintf(msg, msg_len, "out of memory");
            rc = QTOOL_ERR_OUT_OF_MEMORY;
            goto fail;
        }
    }
    {
        const int64_t cnt = K < kLazy ? K : kLazy;
        sz[n++] = (size_t)(N * K) * sizeof(double);   // W
        sz[n++] = (size_t)(N * cnt) * sizeof(double); // Err
        sz[n++] = (size_t)(N * K) * sizeof(float);    // raw weights (at most 4 bytes each)
        sz[n++] = (size_t)(N * K);                    // codes
        sz[n++] = (size_t)(N * K / 2);                // qw
        sz[n++] = (size_t)(N * pk->ng) * 2;           // scales
        sz[n++] = (size_t)(N * pk->ng);               // zeros
        sz[n++] = (size_t)K * sizeof(double);         // dg
        sz[n++] = (size_t)K * sizeof(double);         // dvec
        sz[n++] = (size_t)K * sizeof(double);         // partial
        sz[n++] = (size_t)K * sizeof(int);            // perm
        sz[n++] = (size_t)K * sizeof(int);            // invperm
        sz[n++] = (size_t)K;                          // dead
        sz[n++] = 2 * sizeof(int);                    // info
        sz[n++] = (size_t)pk->potrf_lwork * sizeof(double);
        sz[n++] = pk->trtri_bytes;
    }
    for (int i = 0; i < n; i++) total += align256(sz[i]);
    pk->mem = h->alloc(h->ctx, QTOOL_DEVICE_CUDA, total, QTOOL_MEM_WORKSPACE);
    if (!pk->mem) {
        snprintf(msg, msg_len, "out of CUDA memory for %zu bytes of GPTQ workspace", total);
        rc = QTOOL_ERR_OUT_OF_MEMORY;
        goto fail;
    }
    base = static_cast<unsigned char *>(pk->mem);
#define TAKE(field, type, i)                                  \
    do {                                                      \
        pk->field = reinterpret_cast<type>(base + off);       \
        off += align256(sz[i]);                               \
    } while (0)
    TAKE(W, double *, 0);
    TAKE(Err, double *, 1);
    TAKE(raw, void *, 2);
    TAKE(codes, unsigned char *, 3);
    TAKE(qw, uint32_t *, 4);
    TAKE(scales, unsigned short *, 5);
    TAKE(zeros, unsigned char *, 6);
    TAKE(dg, double *, 7);
    TAKE(dvec, double *, 8);
    TAKE(partial, double *, 9);
    TAKE(perm, int *, 10);
    TAKE(invperm, int *, 11);
    TAKE(dead, unsigned char *, 12);
    TAKE(info, int *, 13);
    TAKE(potrf_work, double *, 14);
    TAKE(trtri_work, void *, 15);
#undef TAKE
    k_diag<<<grid_for(K, 256), 256, 0, pk->st>>>(dH, K, pk->dg);
    rc = launch_check("diagonal kernel", msg, msg_len);
    if (rc) goto fail;
    *out = pk;
    return 0;
fail:
    gpcu_pack_end(pk);
    return rc;
}

int gpcu_pack_diag(gpcu_pack *pk, double *diag, char *msg, size_t msg_len)
{
    cudaError_t e = cudaMemcpyAsync(diag, pk->dg, (size_t)pk->K * sizeof(double), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    return e == cudaSuccess ? 0 : cuda_fail(e, "download of H's diagonal", msg, msg_len);
}

int gpcu_pack_offdiag_corr(gpcu_pack *pk, double *sum, char *msg, size_t msg_len)
{
    const int64_t K = pk->K;
    const qtool_host_services *h = pk->h;
    k_offdiag_corr<<<(unsigned)K, 256, 0, pk->st>>>(pk->dH, pk->dg, K, pk->partial);
    int rc = launch_check("correlation kernel", msg, msg_len);
    if (rc) return rc;
    double *part =
        static_cast<double *>(h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)K * sizeof(double), QTOOL_MEM_OTHER));
    if (!part) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    cudaError_t e = cudaMemcpyAsync(part, pk->partial, (size_t)K * sizeof(double), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    if (e != cudaSuccess) {
        rc = cuda_fail(e, "download of the correlation sums", msg, msg_len);
    } else {
        double s = 0;
        for (int64_t k = 0; k < K; k++) s += part[k];
        *sum = s;
    }
    h->free(h->ctx, QTOOL_DEVICE_CPU, part);
    return rc;
}

int gpcu_pack_weights(gpcu_pack *pk, const void *w, int dtype, const int64_t *perm, const unsigned char *dead, int sym,
                      int static_groups, char *msg, size_t msg_len)
{
    const int64_t N = pk->N, K = pk->K;
    const qtool_host_services *h = pk->h;
    int *p32 = static_cast<int *>(h->alloc(h->ctx, QTOOL_DEVICE_CPU, (size_t)(2 * K) * sizeof(int), QTOOL_MEM_OTHER));
    if (!p32) {
        snprintf(msg, msg_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    for (int64_t a = 0; a < K; a++) {
        p32[a] = (int)perm[a];
        p32[K + perm[a]] = (int)a;
    }
    const size_t esize = dtype == QTOOL_DTYPE_F32 ? 4 : 2;
    int rc = 0;
    cudaError_t e = cudaMemcpyAsync(pk->perm, p32, (size_t)K * sizeof(int), cudaMemcpyHostToDevice, pk->st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(pk->invperm, p32 + K, (size_t)K * sizeof(int), cudaMemcpyHostToDevice, pk->st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(pk->dead, dead, (size_t)K, cudaMemcpyHostToDevice, pk->st);
    if (e == cudaSuccess) e = cudaMemcpyAsync(pk->raw, w, (size_t)(N * K) * esize, cudaMemcpyHostToDevice, pk->st);
    if (e != cudaSuccess) rc = cuda_fail(e, "upload of the weights", msg, msg_len);
    if (!rc) {
        k_load_weights<<<grid_for(N * K, 256), 256, 0, pk->st>>>(pk->raw, dtype, N, K, pk->perm, pk->dead, pk->W);
        rc = launch_check("weight kernel", msg, msg_len);
    }
    if (!rc && static_groups) {
        k_static_params<<<grid_for(N * pk->ng * 32, 128), 128, 0, pk->st>>>(pk->W, pk->invperm, N, K, pk->G, pk->ng,
                                                                            sym, pk->scales, pk->zeros);
        rc = launch_check("static group kernel", msg, msg_len);
    }
    // the host arrays are borrowed
    e = cudaStreamSynchronize(pk->st);
    if (!rc && e != cudaSuccess) rc = cuda_fail(e, "weight upload", msg, msg_len);
    h->free(h->ctx, QTOOL_DEVICE_CPU, p32);
    return rc;
}

int gpcu_pack_factor(gpcu_pack *pk, const double *diag, double offdiag_scale, int *not_pd, char *msg, size_t msg_len)
{
    const int64_t K = pk->K;
    int info[2] = {0, 0};
    *not_pd = 0;
    cudaError_t e = cudaMemcpyAsync(pk->dvec, diag, (size_t)K * sizeof(double), cudaMemcpyHostToDevice, pk->st);
    if (e == cudaSuccess) e = cudaMemsetAsync(pk->info, 0, 2 * sizeof(int), pk->st);
    if (e != cudaSuccess) return cuda_fail(e, "upload of the diagonal", msg, msg_len);
    k_build<<<grid_for(K * K, 256), 256, 0, pk->st>>>(pk->dH, K, pk->perm, pk->dvec, offdiag_scale, pk->Hr);
    int rc = launch_check("Hessian kernel", msg, msg_len);
    if (rc) return rc;
    cusolverStatus_t ss = cusolverDnDpotrf(pk->sv->dn, CUBLAS_FILL_MODE_LOWER, (int)K, pk->Hr, (int)K, pk->potrf_work,
                                           pk->potrf_lwork, pk->info);
    if (ss != CUSOLVER_STATUS_SUCCESS) return solver_fail(ss, "cusolverDnDpotrf", msg, msg_len);
    k_check_factor<<<grid_for(K, 256), 256, 0, pk->st>>>(pk->Hr, K, pk->info + 1);
    rc = launch_check("factor check kernel", msg, msg_len);
    if (rc) return rc;
    e = cudaMemcpyAsync(info, pk->info, sizeof info, cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    if (e != cudaSuccess) return cuda_fail(e, "Cholesky factorisation", msg, msg_len);
    if (info[0] != 0 || info[1] != 0) {
        *not_pd = 1;
        return 0;
    }
    ss = cusolverDnXtrtri(pk->sv->dn, CUBLAS_FILL_MODE_LOWER, CUBLAS_DIAG_NON_UNIT, K, CUDA_R_64F, pk->Hr, K,
                          pk->trtri_work, pk->trtri_bytes, pk->trtri_host, pk->trtri_host_bytes, pk->info);
    if (ss != CUSOLVER_STATUS_SUCCESS) return solver_fail(ss, "cusolverDnXtrtri", msg, msg_len);
    k_to_u<<<grid_for(K * K, 256), 256, 0, pk->st>>>(pk->Hr, K);
    rc = launch_check("transpose kernel", msg, msg_len);
    if (rc) return rc;
    e = cudaMemcpyAsync(info, pk->info, sizeof(int), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    if (e != cudaSuccess) return cuda_fail(e, "triangular inverse", msg, msg_len);
    if (info[0] != 0) *not_pd = 1; // a zero on L's diagonal: cannot happen after the check above
    return 0;
}

int gpcu_pack_factor_download(gpcu_pack *pk, double *U, char *msg, size_t msg_len)
{
    cudaError_t e =
        cudaMemcpyAsync(U, pk->Hr, (size_t)(pk->K * pk->K) * sizeof(double), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    return e == cudaSuccess ? 0 : cuda_fail(e, "download of the factor", msg, msg_len);
}

int gpcu_pack_quantize(gpcu_pack *pk, int sym, int static_groups, uint32_t *qw, uint16_t *scales, uint8_t *zeros,
                       char *msg, size_t msg_len)
{
    const int64_t N = pk->N, K = pk->K;
    const double one = 1.0, minus_one = -1.0;
    for (int64_t i1 = 0; i1 < K; i1 += kLazy) {
        const int64_t i2 = i1 + kLazy < K ? i1 + kLazy : K;
        const int cnt = (int)(i2 - i1);
        col_args a = {pk->W, pk->Hr, pk->Err, pk->codes, pk->scales, pk->zeros, pk->perm,
                      N, K, pk->G, pk->ng, i1, cnt, sym, static_groups};
        k_columns<<<(unsigned)((N + kRowWarps - 1) / kRowWarps), kRowWarps * 32, 0, pk->st>>>(a);
        int rc = launch_check("column kernel", msg, msg_len);
        if (rc) return rc;
        if (i2 < K) {
            // W[:, i2:] -= Err U[i1:i2, i2:], column-major: W^T[i2:, :] -= (U^T)[i2:, i1:i2] Err^T
            cublasStatus_t bs = cublasDgemm(pk->sv->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)(K - i2), (int)N, cnt,
                                            &minus_one, pk->Hr + i2 + i1 * K, (int)K, pk->Err, cnt, &one, pk->W + i2,
                                            (int)K);
            if (bs != CUBLAS_STATUS_SUCCESS) return blas_fail(bs, "cublasDgemm", msg, msg_len);
        }
    }
    k_pack_codes<<<grid_for(N * K / 8, 256), 256, 0, pk->st>>>(pk->codes, N, K, pk->qw);
    int rc = launch_check("packing kernel", msg, msg_len);
    if (rc) return rc;
    cudaError_t e = cudaMemcpyAsync(qw, pk->qw, (size_t)(N * K / 2), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(scales, pk->scales, (size_t)(N * pk->ng) * 2, cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync(zeros, pk->zeros, (size_t)(N * pk->ng), cudaMemcpyDeviceToHost, pk->st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(pk->st);
    return e == cudaSuccess ? 0 : cuda_fail(e, "GPTQ on the device", msg, msg_len);
}

} // extern "C"
