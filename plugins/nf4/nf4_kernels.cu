// CUDA kernels of the nf4 plugin: for small batches a fused dequantize
// kernel (tensor cores for 2..16 rows on sm_80+, a GEMV otherwise), and
// dequantize-to-fp16/bf16 + cuBLASLt GEMM for large ones.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdio.h>

#include <qtool/plugin.h>

#include "nf4_codec.h"
#include "nf4_cuda.h"

namespace {

constexpr int kGemvWarps = 8;
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

// Two values packed in a 32-bit word (half2 / bfloat162) to float2.
template <typename T> __device__ __forceinline__ float2 pair_to_f2(uint32_t w);
template <> __device__ __forceinline__ float2 pair_to_f2<__half>(uint32_t w)
{
    __half2 h = *reinterpret_cast<__half2 *>(&w);
    return __half22float2(h);
}
template <> __device__ __forceinline__ float2 pair_to_f2<__nv_bfloat16>(uint32_t w)
{
    // bf16 -> f32 is a shift; exact and valid on every architecture.
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

struct Smem {
    float lut[16];
    float map[256];
};

// The code tables of nf4_codec.h are host constants; device code has its own copy.
__constant__ float c_nf4[16] = {-1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
                                -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
                                0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f,
                                0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
                                0.7229568362236023f, 1.0f};
__constant__ float c_fp4[8] = {0.0f, 0.0625f / 12.0f, 8.0f / 12.0f, 12.0f / 12.0f,
                               4.0f / 12.0f, 6.0f / 12.0f, 2.0f / 12.0f, 3.0f / 12.0f};

__device__ __forceinline__ void load_tables(const nf4cu_layer &L, Smem &s)
{
    if (threadIdx.x < 16) {
        int i = threadIdx.x;
        s.lut[i] = L.quant_type == NF4_TYPE_FP4 ? (i & 8 ? -c_fp4[i & 7] : c_fp4[i & 7]) : c_nf4[i];
    }
    if (L.nested)
        for (int i = threadIdx.x; i < 256; i += blockDim.x) s.map[i] = L.nested_map[i];
    __syncthreads();
}

// Dequantized absmax of block b: code[q] * nested_absmax, then + offset,
// rounded separately as bitsandbytes does (no fused multiply-add).
__device__ __forceinline__ float block_absmax(const nf4cu_layer &L, const Smem &s, int64_t b)
{
    if (!L.nested) return __ldg(L.absmax + b);
    float a = __fmul_rn(s.map[L.qabsmax[b]], __ldg(L.nested_absmax + (b >> 8)));
    return __fadd_rn(a, L.offset);
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// ---------------------------------------------------------------- dequant

template <typename T> __global__ void k_dequant(nf4cu_layer L, T *__restrict__ out)
{
    __shared__ Smem s;
    load_tables(L, s);
    const int64_t n = L.N * L.K;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x * 8;
    for (int64_t e0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; e0 < n; e0 += stride) {
        if (e0 + 8 <= n) {
            // 8 elements = 4 code bytes, all in one absmax block (blocks are >= 64).
            uint32_t q = *reinterpret_cast<const uint32_t *>(L.codes + (e0 >> 1));
            float a = block_absmax(L, s, e0 / L.blocksize);
            uint4 o;
            uint32_t *ow = reinterpret_cast<uint32_t *>(&o);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                uint32_t byte = (q >> (8 * j)) & 0xFFu;
                ow[j] = f2_to_pair<T>(s.lut[byte >> 4] * a, s.lut[byte & 15u] * a);
            }
            *reinterpret_cast<uint4 *>(out + e0) = o;
        } else {
            for (int64_t e = e0; e < n; e++) {
                unsigned c = (L.codes[e >> 1] >> ((e & 1) ? 0 : 4)) & 15u;
                out[e] = from_f<T>(s.lut[c] * block_absmax(L, s, e / L.blocksize));
            }
        }
    }
}

template <typename T> __global__ void k_add_bias(T *__restrict__ y, const float *__restrict__ bias, int64_t M, int64_t N)
{
    int64_t total = M * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x)
        y[i] = from_f<T>(to_f<T>(y[i]) + bias[i % N]);
}

// ---------------------------------------------------------------- GEMV

// A block of kGemvWarps warps; S consecutive warps share R output
// features and split K between them (S = 1, 2, 4 or 8; more warps where N
// is small and K long), MT input rows at once. FAST (K % 8 == 0, aligned x
// and codes): in step g of an iteration the warp covers 256 consecutive
// weights, 8 a lane, so each lane reads 4 code bytes and 16 bytes of every
// input row, and a warp's loads of a row are one contiguous 512-byte piece
// (the fewest L1 wavefronts). The S partial sums meet in shared memory and
// are added in slice order.
template <typename T, int MT, int R, bool FAST>
__global__ void __launch_bounds__(kGemvWarps * 32)
    k_gemv(nf4cu_layer L, const T *__restrict__ x, T *__restrict__ y, int rows, int S)
{
    __shared__ Smem s;
    __shared__ float part[kGemvWarps][R][MT];
    load_tables(L, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int groups = kGemvWarps / S, slice = warp % S;
    const int64_t n0 = ((int64_t)blockIdx.x * groups + warp / S) * R;
    const int64_t K = L.K;
    float acc[R][MT];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) acc[r][m] = 0.0f;

    if (n0 < L.N && FAST) {
        for (int64_t k0 = (int64_t)slice * 1024; k0 < K; k0 += (int64_t)S * 1024) {
#pragma unroll
            for (int g = 0; g < 4; g++) {
                const int64_t kb = k0 + g * 256 + lane * 8;
                if (kb >= K) break; // K % 8 == 0: the lane's 8 weights are all in or all out
                float w[R][8];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    int64_t n = n0 + r < L.N ? n0 + r : L.N - 1; // a missing last feature recomputes one
                    int64_t e = n * K + kb;
                    uint32_t q = __ldg(reinterpret_cast<const uint32_t *>(L.codes + (e >> 1)));
                    float a = block_absmax(L, s, e / L.blocksize);
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        uint32_t byte = (q >> (8 * j)) & 0xFFu;
                        w[r][2 * j] = s.lut[byte >> 4] * a;
                        w[r][2 * j + 1] = s.lut[byte & 15u] * a;
                    }
                }
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    if (m < rows) {
                        uint4 xv = __ldg(reinterpret_cast<const uint4 *>(x + (int64_t)m * K + kb));
                        const uint32_t xw[4] = {xv.x, xv.y, xv.z, xv.w};
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            float2 f = pair_to_f2<T>(xw[j]);
#pragma unroll
                            for (int r = 0; r < R; r++) {
                                acc[r][m] = fmaf(w[r][2 * j], f.x, acc[r][m]);
                                acc[r][m] = fmaf(w[r][2 * j + 1], f.y, acc[r][m]);
                            }
                        }
                    }
                }
            }
        }
    } else if (n0 < L.N) {
        for (int64_t k = (int64_t)slice * 32 + lane; k < K; k += (int64_t)S * 32) {
#pragma unroll
            for (int r = 0; r < R; r++) {
                int64_t n = n0 + r < L.N ? n0 + r : L.N - 1;
                int64_t e = n * K + k;
                unsigned c = (L.codes[e >> 1] >> ((e & 1) ? 0 : 4)) & 15u;
                float w = s.lut[c] * block_absmax(L, s, e / L.blocksize);
#pragma unroll
                for (int m = 0; m < MT; m++)
                    if (m < rows) acc[r][m] = fmaf(w, to_f<T>(x[(int64_t)m * K + k]), acc[r][m]);
            }
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int m = 0; m < MT; m++) {
            float v = warp_sum(acc[r][m]);
            if (lane == 0) part[warp][r][m] = v;
        }
    __syncthreads();
    for (int t = threadIdx.x; t < groups * R * MT; t += blockDim.x) {
        const int fg = t / (R * MT), r = (t / MT) % R, m = t % MT;
        const int64_t n = ((int64_t)blockIdx.x * groups + fg) * R + r;
        if (m >= rows || n >= L.N) continue;
        float v = 0.0f;
        for (int sl = 0; sl < S; sl++) v += part[fg * S + sl][r][m];
        y[(int64_t)m * L.N + n] = from_f<T>(v + (L.bias ? L.bias[n] : 0.0f));
    }
}

// ---------------------------------------------------------------- small-M tensor-core kernel (sm_80+)

// 2..16 input rows (one m16 tile, rows past M read as zero), K % 64 == 0.
// A block of 8 or 16 warps owns one n8 tile (8 output features); its warps
// take the 64-weight chunks of K in turn. Lane (g, t) holds, for a chunk, the 16
// weights 16t..16t+15 of feature n0 + g (8 code bytes, one absmax: a block
// is a multiple of 16 weights) and the same 16 positions of input rows g and
// g + 8. Step s of the four m16n8k16 MMAs takes positions 16t + 4s + {0, 1}
// as its k-slots (2t, 2t+1) and 16t + 4s + {2, 3} as (2t+8, 2t+9), so every
// A and B register is one contiguous pair; A and B use the same order, which
// leaves the dot products unchanged. Weights are rounded to the activation
// type for the MMA (as the dequantize + cuBLASLt path does), sums are fp32;
// the warps' partial sums are added in warp order in shared memory.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
template <typename T> __device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                              uint32_t b1);
template <> __device__ __forceinline__ void mma16816<__half>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                             uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                                                    uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One chunk's operands of a lane: 8 code bytes, the block's absmax, 16
// positions of input rows g and g + 8 (pairs).
struct Chunk {
    uint2 q;
    float am;
    uint4 p0, p1, p2, p3;
};

template <typename T>
__device__ __forceinline__ Chunk load_chunk(const nf4cu_layer &L, const Smem &s, const T *x0, const T *x1, bool in0,
                                            bool in1, int64_t n, int64_t k)
{
    Chunk c;
    const int64_t e = n * L.K + k;
    const uint4 z = make_uint4(0, 0, 0, 0);
    c.q = __ldg(reinterpret_cast<const uint2 *>(L.codes + (e >> 1)));
    c.am = block_absmax(L, s, e / L.blocksize);
    c.p0 = in0 ? __ldg(reinterpret_cast<const uint4 *>(x0 + k)) : z;
    c.p1 = in0 ? __ldg(reinterpret_cast<const uint4 *>(x0 + k + 8)) : z;
    c.p2 = in1 ? __ldg(reinterpret_cast<const uint4 *>(x1 + k)) : z;
    c.p3 = in1 ? __ldg(reinterpret_cast<const uint4 *>(x1 + k + 8)) : z;
    return c;
}

template <typename T> __device__ __forceinline__ void mma_chunk(float (&acc)[4], const Chunk &c, const Smem &s)
{
    const uint32_t r0[8] = {c.p0.x, c.p0.y, c.p0.z, c.p0.w, c.p1.x, c.p1.y, c.p1.z, c.p1.w}; // pairs of row g
    const uint32_t r1[8] = {c.p2.x, c.p2.y, c.p2.z, c.p2.w, c.p3.x, c.p3.y, c.p3.z, c.p3.w}; // of row g + 8
    const uint32_t qw[2] = {c.q.x, c.q.y};
#pragma unroll
    for (int st = 0; st < 4; st++) {
        // Weights 4st..4st+3: code bytes 2st and 2st+1, high nibble first.
        const uint32_t two = (qw[st >> 1] >> (16 * (st & 1))) & 0xFFFFu;
        const uint32_t b0 = f2_to_pair<T>(s.lut[(two >> 4) & 15u] * c.am, s.lut[two & 15u] * c.am);
        const uint32_t b1 = f2_to_pair<T>(s.lut[two >> 12] * c.am, s.lut[(two >> 8) & 15u] * c.am);
        const uint32_t a[4] = {r0[2 * st], r1[2 * st], r0[2 * st + 1], r1[2 * st + 1]};
        mma16816<T>(acc, a, b0, b1);
    }
}

#endif

// WARPS warps a block (8, or 16 for long K); the next chunk's loads are
// issued before the current chunk's MMAs.
template <typename T, int WARPS>
__global__ void __launch_bounds__(WARPS * 32) k_mma16(nf4cu_layer L, const T *__restrict__ x, T *__restrict__ y, int rows)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    __shared__ Smem s;
    __shared__ float part[WARPS][32][4];
    load_tables(L, s);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    const int64_t K = L.K, n0 = (int64_t)blockIdx.x * 8;
    const int64_t n = n0 + g < L.N ? n0 + g : L.N - 1; // a missing feature recomputes the last one
    const bool in0 = g < rows, in1 = g + 8 < rows;
    const T *x0 = x + (int64_t)g * K, *x1 = x + (int64_t)(g + 8) * K;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    int64_t kc = (int64_t)warp * 64;
    if (kc < K) {
        Chunk cur = load_chunk<T>(L, s, x0, x1, in0, in1, n, kc + 16 * t);
        for (kc += WARPS * 64; kc < K; kc += WARPS * 64) {
            Chunk next = load_chunk<T>(L, s, x0, x1, in0, in1, n, kc + 16 * t);
            mma_chunk<T>(acc, cur, s);
            cur = next;
        }
        mma_chunk<T>(acc, cur, s);
    }
#pragma unroll
    for (int i = 0; i < 4; i++) part[warp][lane][i] = acc[i];
    __syncthreads();
    if (threadIdx.x < 128) {
        // acc 0, 1: row g, columns 2t, 2t+1; acc 2, 3: row g + 8.
        const int m = threadIdx.x >> 3, j = threadIdx.x & 7;
        const int src = (m & 7) * 4 + (j >> 1), reg = (m >= 8 ? 2 : 0) + (j & 1);
        const int64_t nn = n0 + j;
        if (m < rows && nn < L.N) {
            float v = 0.0f;
            for (int w = 0; w < WARPS; w++) v += part[w][src][reg];
            y[(int64_t)m * L.N + nn] = from_f<T>(v + (L.bias ? L.bias[nn] : 0.0f));
        }
    }
#else
    (void)L;
    (void)x;
    (void)y;
    (void)rows;
#endif
}

// Whether k_mma16<T> has a body here: compiled from PTX of sm_80 or newer
// (a compute_75-only build running on a newer card has the empty one).
template <typename T> bool mma16_available()
{
    static int cached = -1;
    if (cached < 0) {
        cudaFuncAttributes a;
        cached = cudaFuncGetAttributes(&a, k_mma16<T, 8>) == cudaSuccess && a.ptxVersion >= 80;
        cudaGetLastError();
    }
    return cached == 1;
}

template <typename T> bool use_mma16(const nf4cu_layer &L, const T *x, int64_t M)
{
    return M >= 2 && M <= 16 && L.K % 64 == 0 && L.blocksize % 16 == 0 && ((uintptr_t)x & 15u) == 0 &&
           ((uintptr_t)L.codes & 7u) == 0 && mma16_available<T>();
}

// Warps per output group: split K while the grid is short of about 16
// warps per multiprocessor and each slice keeps two or more 1024-weight
// iterations.
int gemv_split(const nf4cu_layer &L, int R, bool fast)
{
    if (!fast) return 1;
    const int64_t groups = (L.N + R - 1) / R;
    int S = 1;
    while (S < kGemvWarps && groups * S < 2048 && L.K / 1024 >= 2 * S) S *= 2;
    return S;
}

template <typename T, int MT, int R>
void launch_gemv_mt(const nf4cu_layer &L, const T *x, T *y, int rows, bool fast, cudaStream_t st)
{
    const int S = gemv_split(L, R, fast);
    const int64_t per_block = (int64_t)(kGemvWarps / S) * R;
    dim3 grid((unsigned)((L.N + per_block - 1) / per_block)), block(kGemvWarps * 32);
    if (fast)
        k_gemv<T, MT, R, true><<<grid, block, 0, st>>>(L, x, y, rows, S);
    else
        k_gemv<T, MT, R, false><<<grid, block, 0, st>>>(L, x, y, rows, S);
}

template <typename T> int run_gemv(const nf4cu_layer &L, const T *x, T *y, int64_t M, cudaStream_t st)
{
    bool fast = (L.K % 8) == 0 && ((uintptr_t)x & 15u) == 0 && ((uintptr_t)L.codes & 3u) == 0;
    for (int64_t m0 = 0; m0 < M; m0 += kGemvMaxRows) {
        int rows = (int)(M - m0 < kGemvMaxRows ? M - m0 : kGemvMaxRows);
        const T *xs = x + m0 * L.K;
        T *ys = y + m0 * L.N;
        if (rows == 1)
            launch_gemv_mt<T, 1, 1>(L, xs, ys, rows, fast, st);
        else if (rows == 2)
            launch_gemv_mt<T, 2, 1>(L, xs, ys, rows, fast, st);
        else if (rows <= 4)
            launch_gemv_mt<T, 4, 1>(L, xs, ys, rows, fast, st);
        else if (rows <= 8)
            launch_gemv_mt<T, 8, 2>(L, xs, ys, rows, fast, st);
        else
            launch_gemv_mt<T, 16, 2>(L, xs, ys, rows, fast, st);
    }
    return 0;
}

// ---------------------------------------------------------------- cuBLASLt

// y[M, N] = x[M, K] @ w[N, K]^T, row-major, fp16/bf16 with fp32 accumulation.
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
#define LT(call, what)                                   \
    do {                                                 \
        s = (call);                                      \
        if (s != CUBLAS_STATUS_SUCCESS) {                \
            rc = lt_fail(s, what, msg, len);             \
            goto done;                                   \
        }                                                \
    } while (0)
    LT(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
    LT(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
    // Column-major view: y^T[N, M] = w (K x N, transposed) * x^T (K x M).
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
        snprintf(msg, len, "cuBLASLt has no fp16 GEMM for %lldx%lldx%lld", (long long)M, (long long)N,
                 (long long)K);
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

unsigned grid_for(int64_t work, int threads)
{
    int64_t g = (work + threads - 1) / threads;
    if (g > 65535 * 8) g = 65535 * 8;
    return (unsigned)(g < 1 ? 1 : g);
}

template <typename T>
int matmul_t(const nf4cu_layer &L, const T *x, T *y, int64_t M, int path, void *ws, size_t ws_bytes, void *lt,
             void *lt_ws, size_t lt_ws_bytes, cudaStream_t st, cudaDataType_t dt, char *msg, size_t len)
{
    if (path == NF4CU_PATH_GEMV && use_mma16<T>(L, x, M)) {
        // 16 warps where each of 8 would take more than four chunks.
        if (L.K / 64 > 32)
            k_mma16<T, 16><<<(unsigned)((L.N + 7) / 8), 512, 0, st>>>(L, x, y, (int)M);
        else
            k_mma16<T, 8><<<(unsigned)((L.N + 7) / 8), 256, 0, st>>>(L, x, y, (int)M);
    } else if (path == NF4CU_PATH_GEMV) {
        run_gemv<T>(L, x, y, M, st);
    } else {
        size_t need = (size_t)(L.N * L.K) * sizeof(T);
        if (!ws || ws_bytes < need) {
            snprintf(msg, len, "workspace of %zu bytes is too small (need %zu)", ws_bytes, need);
            return QTOOL_ERR_INTERNAL;
        }
        T *wd = static_cast<T *>(ws);
        k_dequant<T><<<grid_for(L.N * L.K / 8 + 1, 256), 256, 0, st>>>(L, wd);
        int rc = lt_gemm(static_cast<cublasLtHandle_t>(lt), wd, x, y, M, L.N, L.K, dt, lt_ws, lt_ws_bytes, st, msg,
                         len);
        if (rc == QTOOL_ERR_UNSUPPORTED)
            run_gemv<T>(L, x, y, M, st); // no cuBLASLt algorithm for this shape: the fused kernel handles any
        else if (rc)
            return rc;
        else if (L.bias)
            k_add_bias<T><<<grid_for(M * L.N, 256), 256, 0, st>>>(y, L.bias, M, L.N);
    }
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "nf4 kernel launch", msg, len);
    return 0;
}

} // namespace

extern "C" {

size_t nf4cu_workspace_bytes(const nf4cu_layer *L, int64_t M, int path)
{
    (void)M;
    if (path == NF4CU_PATH_GEMV) return 0;
    return (size_t)(L->N * L->K) * 2;
}

size_t nf4cu_lt_workspace_bytes(void) { return kLtWorkspace; }

int nf4cu_set_device(int device, char *msg, size_t msg_len)
{
    cudaError_t e = cudaSetDevice(device);
    if (e != cudaSuccess) return cuda_fail(e, "cudaSetDevice", msg, msg_len);
    return 0;
}

int nf4cu_lt_create(void **handle, char *msg, size_t msg_len)
{
    cublasLtHandle_t h;
    cublasStatus_t s = cublasLtCreate(&h);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, "cublasLtCreate", msg, msg_len);
    *handle = h;
    return 0;
}

void nf4cu_lt_destroy(void *handle)
{
    if (handle) cublasLtDestroy(static_cast<cublasLtHandle_t>(handle));
}

int nf4cu_copy(void *dst, const void *src, size_t bytes, int kind, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind == 0 ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost, st);
    if (e == cudaSuccess) e = cudaStreamSynchronize(st);
    if (e != cudaSuccess) return cuda_fail(e, "cudaMemcpyAsync", msg, msg_len);
    return 0;
}

int nf4cu_matmul(const nf4cu_layer *L, const void *x, void *y, int64_t M, int is_bf16, int path, void *ws,
                 size_t ws_bytes, void *lt_handle, void *lt_ws, size_t lt_ws_bytes, void *stream, char *msg,
                 size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    if (path != NF4CU_PATH_GEMV && path != NF4CU_PATH_DEQUANT_GEMM) {
        snprintf(msg, msg_len, "unknown kernel path %d", path);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (is_bf16)
        return matmul_t<__nv_bfloat16>(*L, static_cast<const __nv_bfloat16 *>(x), static_cast<__nv_bfloat16 *>(y), M,
                                       path, ws, ws_bytes, lt_handle, lt_ws, lt_ws_bytes, st, CUDA_R_16BF, msg,
                                       msg_len);
    return matmul_t<__half>(*L, static_cast<const __half *>(x), static_cast<__half *>(y), M, path, ws, ws_bytes,
                            lt_handle, lt_ws, lt_ws_bytes, st, CUDA_R_16F, msg, msg_len);
}

int nf4cu_dequantize(const nf4cu_layer *L, void *out, int is_bf16, void *stream, char *msg, size_t msg_len)
{
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    unsigned g = grid_for(L->N * L->K / 8 + 1, 256);
    if (is_bf16)
        k_dequant<__nv_bfloat16><<<g, 256, 0, st>>>(*L, static_cast<__nv_bfloat16 *>(out));
    else
        k_dequant<__half><<<g, 256, 0, st>>>(*L, static_cast<__half *>(out));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return cuda_fail(e, "nf4 dequantize launch", msg, msg_len);
    return 0;
}

} // extern "C"
