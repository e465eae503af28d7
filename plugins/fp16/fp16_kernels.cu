// Fallback kernels of the fp16 plugin; the fast path is cuBLASLt.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <qtool/plugin.h>

#include "fp16_kernels.h"

namespace {

constexpr int TILE = 16;

__device__ __forceinline__ float load_any(const void *p, int dtype, int64_t i)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: return __half2float(static_cast<const __half *>(p)[i]);
    case QTOOL_DTYPE_BF16: return __bfloat162float(static_cast<const __nv_bfloat16 *>(p)[i]);
    default: return static_cast<const float *>(p)[i];
    }
}

__device__ __forceinline__ void store_any(void *p, int dtype, int64_t i, float v)
{
    switch (dtype) {
    case QTOOL_DTYPE_F16: static_cast<__half *>(p)[i] = __float2half_rn(v); break;
    case QTOOL_DTYPE_BF16: static_cast<__nv_bfloat16 *>(p)[i] = __float2bfloat16_rn(v); break;
    default: static_cast<float *>(p)[i] = v; break;
    }
}

__global__ void gemm_tiled(const void *x, int xdt, const void *w, int wdt, const void *bias, int bdt,
                           void *y, int64_t m, int64_t n, int64_t k, int accumulate)
{
    __shared__ float xs[TILE][TILE + 1], ws[TILE][TILE + 1];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int64_t col = (int64_t)blockIdx.x * TILE + tx;
    const int64_t wrow = (int64_t)blockIdx.x * TILE + ty;
    for (int64_t mt = blockIdx.y; mt * TILE < m; mt += gridDim.y) {
        const int64_t row = mt * TILE + ty;
        float acc = 0.0f;
        for (int64_t k0 = 0; k0 < k; k0 += TILE) {
            const int64_t kk = k0 + tx;
            xs[ty][tx] = (row < m && kk < k) ? load_any(x, xdt, row * k + kk) : 0.0f;
            ws[ty][tx] = (wrow < n && kk < k) ? load_any(w, wdt, wrow * k + kk) : 0.0f;
            __syncthreads();
#pragma unroll
            for (int i = 0; i < TILE; i++) acc = fmaf(xs[ty][i], ws[tx][i], acc);
            __syncthreads();
        }
        if (row < m && col < n) {
            if (bias) acc += load_any(bias, bdt, col);
            if (accumulate) acc += load_any(y, xdt, row * n + col);
            store_any(y, xdt, row * n + col, acc);
        }
    }
}

__global__ void add_bias(void *y, int ydt, const void *bias, int bdt, int64_t m, int64_t n)
{
    const int64_t total = m * n;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x)
        store_any(y, ydt, i, load_any(y, ydt, i) + load_any(bias, bdt, i % n));
}

// The activation of a GLU epilogue, in float32 (the runtime's formulas).
__device__ __forceinline__ float glu_act(int epilogue, float x)
{
    switch (epilogue) {
    case QTOOL_EPILOGUE_SILU_GLU: return x / (1.0f + expf(-x));
    case QTOOL_EPILOGUE_GELU_GLU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    default: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    }
}

// y[r, j] = act(z[r, 2j]) * z[r, 2j + 1]; rows on grid.y.
__global__ void glu_pairs(const void *z, int64_t ldz, void *y, int64_t ldy, int64_t half, int epilogue, int dtype)
{
    const int64_t r = blockIdx.y;
    for (int64_t j = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; j < half; j += (int64_t)gridDim.x * blockDim.x) {
        const float g = load_any(z, dtype, r * ldz + 2 * j), u = load_any(z, dtype, r * ldz + 2 * j + 1);
        store_any(y, dtype, r * ldy + j, glu_act(epilogue, g) * u);
    }
}

} // namespace

extern "C" int fp16_launch_glu(const void *z, int64_t ldz, void *y, int64_t ldy, int64_t m, int64_t half,
                               int epilogue, int dtype, void *stream)
{
    if (m <= 0 || half <= 0) return cudaSuccess;
    if (m > 65535) return cudaErrorInvalidValue; /* callers pass row chunks */
    int64_t bx = (half + 255) / 256;
    if (bx > 1024) bx = 1024;
    glu_pairs<<<dim3((unsigned)bx, (unsigned)m), 256, 0, static_cast<cudaStream_t>(stream)>>>(z, ldz, y, ldy, half,
                                                                                            epilogue, dtype);
    return cudaGetLastError();
}

extern "C" int fp16_launch_gemm(const void *x, int x_dtype, const void *w, int w_dtype, const void *bias,
                                int bias_dtype, void *y, int64_t m, int64_t n, int64_t k, int accumulate,
                                void *stream)
{
    if (m <= 0 || n <= 0) return cudaSuccess;
    const int64_t tiles_n = (n + TILE - 1) / TILE, tiles_m = (m + TILE - 1) / TILE;
    if (tiles_n > 0x7FFFFFFF) return cudaErrorInvalidValue;
    dim3 block(TILE, TILE);
    dim3 grid((unsigned)tiles_n, (unsigned)(tiles_m < 65535 ? tiles_m : 65535));
    gemm_tiled<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(x, x_dtype, w, w_dtype, bias,
                                                                      bias_dtype, y, m, n, k, accumulate);
    return cudaGetLastError();
}

extern "C" int fp16_launch_add_bias(void *y, int y_dtype, const void *bias, int bias_dtype, int64_t m,
                                    int64_t n, void *stream)
{
    if (m <= 0 || n <= 0) return cudaSuccess;
    const int64_t total = m * n;
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65535) blocks = 65535;
    add_bias<<<(unsigned)blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(y, y_dtype, bias, bias_dtype,
                                                                              m, n);
    return cudaGetLastError();
}
