// int8 tensor-core GEMM with a fused dequantization epilogue (int8_gemm.h).
//
// Tiled kernel: a CTA computes a BM x BN tile of D; K is walked in BK-byte
// steps through a STAGES-deep cp.async ring in shared memory (16-byte
// pieces, XOR-swizzled so ldmatrix and the async copies are free of bank
// conflicts); each warp owns a (BM/WARPS_M) x (BN/WARPS_N) sub-tile of
// int32 accumulators fed by ldmatrix.x4 and mma.sync m16n8k32. The
// epilogue applies the outlier-column correction (optional), the scales
// and the bias in fp32, stages the 16-bit tile in shared memory and writes
// it with 16-byte stores.
//
// Skinny kernel (M <= 64, decode): no shared-memory pipeline; each CTA owns
// 8 output columns and its 8 warps split K, loading A and B fragments
// straight from global memory with 16-byte loads. A and B use the same
// permutation of K inside each 64-byte piece, which leaves the dot product
// unchanged and makes every fragment one 16-byte load. The warps' partial
// sums meet in shared memory.
//
// wgmma kernel (sm_90a builds, compute capability 9.0): the tiled kernel's
// loads and epilogue around Hopper's warpgroup MMA (see its section).
//
// sm_75: the same code with m8n8k16 IMMA (two per m16n8k32 half) and plain
// synchronous loads in place of cp.async.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qtool/plugin.h>

#include "int8_gemm.h"
#if defined(QT_I8GEMM_HAVE_TMA)
#include "int8_gemm_tma.h"
#endif

namespace {

// ---------------------------------------------------------------- device primitives

__device__ __forceinline__ uint32_t smem_addr(const void *p)
{
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; zero-filled when !pred (gmem is not read then).
__device__ __forceinline__ void cp_async16(void *smem, const void *gmem, bool pred)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(smem)), "l"(gmem),
                 "r"(pred ? 16 : 0)
                 : "memory");
#else
    int4 v = make_int4(0, 0, 0, 0);
    if (pred) v = *reinterpret_cast<const int4 *>(gmem);
    *reinterpret_cast<int4 *>(smem) = v;
#endif
}

__device__ __forceinline__ void cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N> __device__ __forceinline__ void cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t &r0, uint32_t &r1, uint32_t &r2, uint32_t &r3, const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(smem_addr(p)));
}

// c[16x8] += a[16x32] * b[32x8], s8 inputs, s32 accumulators, in the
// m16n8k32 fragment layout: a0 rows g, k 4t..4t+3; a1 rows g+8; a2, a3 the
// same rows at k+16; b0 k 4t.., column g; b1 k+16; c0,c1 row g, columns
// 2t, 2t+1; c2, c3 row g+8 (g = lane / 4, t = lane % 4).
__device__ __forceinline__ void mma_s8(int (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                       uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    // Turing: m8n8k16 has the same per-thread layout for one 8-row half and
    // one 16-wide K half.
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
        : "+r"(c[0]), "+r"(c[1])
        : "r"(a0), "r"(b0));
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
        : "+r"(c[0]), "+r"(c[1])
        : "r"(a2), "r"(b1));
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
        : "+r"(c[2]), "+r"(c[3])
        : "r"(a1), "r"(b0));
    asm("mma.sync.aligned.m8n8k16.row.col.s32.s8.s8.s32 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
        : "+r"(c[2]), "+r"(c[3])
        : "r"(a3), "r"(b1));
#endif
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ uint16_t to_bits(float v);
template <> __device__ __forceinline__ uint16_t to_bits<__half>(float v) { return __half_as_ushort(__float2half_rn(v)); }
template <> __device__ __forceinline__ uint16_t to_bits<__nv_bfloat16>(float v)
{
    return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

// Everything the kernels need, passed by value.
struct Params {
    const int8_t *A, *B;
    int M, N, K;
    int64_t lda, ldb, ldd, ldx;
    const float *rs;
    int rs_bcast;
    const float *cs;
    float alpha;
    const float *bias;
    void *D;
    int vec_store; // 16-byte stores allowed (D aligned, ldd % 8 == 0)
    const int *ocols, *ocount;
    const void *ox;
    float ow_scale;
};

__device__ __forceinline__ float row_scale(const Params &p, int m)
{
    return p.rs ? (p.rs_bcast ? __ldg(p.rs) : __ldg(p.rs + m)) : 1.0f;
}
__device__ __forceinline__ float col_scale(const Params &p, int n) { return p.cs ? __ldg(p.cs + n) : 1.0f; }

// ((acc * rs) * cs) * alpha, each product rounded, as the plugins' CPU paths do.
__device__ __forceinline__ float dequant(int acc, float rs, float cs, float alpha)
{
    return __fmul_rn(__fmul_rn(__fmul_rn(static_cast<float>(acc), rs), cs), alpha);
}

// ---------------------------------------------------------------- tiled kernel

constexpr int kOutlierChunk = 32; // outlier columns staged in shared memory at once

template <int BM_, int BN_, int BK_, int WM_, int WN_, int STAGES_> struct Tile {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WARPS_N = WN_, STAGES = STAGES_;
    static constexpr int kThreads = WM_ * WN_ * 32;
    static constexpr int WTM = BM / WM_, WTN = BN / WN_; // warp tile
    static constexpr int MI = WTM / 16, NI = WTN / 8;     // mma tiles per warp
    static constexpr int CPR = BK / 16;                   // 16-byte pieces per shared row
    static constexpr int kStageBytes = (BM + BN) * BK;
    static constexpr int kPipeBytes = kStageBytes * STAGES;
    static constexpr int kOutPitch = BN + 8; // halves; row stride = 4 banks mod 32: conflict-free fragment stores
    static constexpr int kOutBytes = BM * kOutPitch * 2;
    static constexpr int kOcBytes = kOutlierChunk * (4 + (BM + BN) * 5);
    static constexpr int kEpiBytes = kOutBytes > kOcBytes ? kOutBytes : kOcBytes;
    // The epilogue has its own region, so the next tile's first loads run
    // while a tile's results are written.
    static constexpr int kSmem = kPipeBytes + kEpiBytes;
    static_assert(BK == 64 || BK == 128, "BK: 64 or 128 bytes");
    static_assert(WTM % 16 == 0 && WTN % 16 == 0, "warp tile");
    static_assert((BM * CPR) % kThreads == 0 && (BN * CPR) % kThreads == 0, "tile loads");
    static_assert(STAGES >= 2, "stages");
    static_assert(kPipeBytes % 128 == 0, "epilogue region alignment");
};

// Byte offset of 16-byte piece `chunk` of shared row `row` (BK bytes a row).
// The XOR makes the 8 rows read by one ldmatrix phase hit 8 distinct
// 16-byte bank groups.
template <int BK> __device__ __forceinline__ int swz(int row, int chunk)
{
    constexpr int CPR = BK / 16;
    return row * BK + ((chunk ^ ((row / (8 / CPR)) % CPR)) << 4);
}

// Tile order: groups of 8 row tiles sweep the column tiles, so tiles in
// flight together share A rows and B columns in L2.
__device__ __forceinline__ void tile_origin(int t, int tiles_m, int tiles_n, int bm, int bn, int &m0, int &n0)
{
    constexpr int kGroup = 8;
    const int per_group = kGroup * tiles_n, group = t / per_group;
    const int first_m = group * kGroup, gsize = min(tiles_m - first_m, kGroup);
    const int in_group = t - group * per_group;
    m0 = (first_m + in_group % gsize) * bm;
    n0 = (in_group / gsize) * bn;
}

template <class C>
__device__ __forceinline__ void load_stage(const Params &p, int8_t *sA, int8_t *sB, int m0, int n0, int k0, int tid)
{
#pragma unroll
    for (int i = 0; i < C::BM * C::CPR / C::kThreads; i++) {
        int idx = tid + i * C::kThreads, row = idx / C::CPR, ch = idx % C::CPR;
        int gm = m0 + row, gk = k0 + ch * 16;
        bool ok = gm < p.M && gk < p.K;
        const int8_t *src = ok ? p.A + (int64_t)gm * p.lda + gk : p.A;
        cp_async16(sA + swz<C::BK>(row, ch), src, ok);
    }
#pragma unroll
    for (int i = 0; i < C::BN * C::CPR / C::kThreads; i++) {
        int idx = tid + i * C::kThreads, row = idx / C::CPR, ch = idx % C::CPR;
        int gn = n0 + row, gk = k0 + ch * 16;
        bool ok = gn < p.N && gk < p.K;
        const int8_t *src = ok ? p.B + (int64_t)gn * p.ldb + gk : p.B;
        cp_async16(sB + swz<C::BK>(row, ch), src, ok);
    }
}

// Stages outlier columns j0 .. j0 + nj of A, B, x and the dequantized B
// ((float)B * cs) * w_scale, transposed ([column][row]) for conflict-free
// reads. Rows and columns outside the matrix read as zero.
template <class C, typename T>
__device__ __forceinline__ void stage_outliers(const Params &p, int8_t *epi, int m0, int n0, int j0, int nj, int tid)
{
    int *s_col = reinterpret_cast<int *>(epi);
    float *s_x = reinterpret_cast<float *>(epi + 4 * kOutlierChunk);
    float *s_bf = s_x + kOutlierChunk * C::BM;
    int8_t *s_a = reinterpret_cast<int8_t *>(s_bf + kOutlierChunk * C::BN);
    int8_t *s_b = s_a + kOutlierChunk * C::BM;
    if (tid < kOutlierChunk) s_col[tid] = tid < nj ? __ldg(p.ocols + j0 + tid) : 0;
    __syncthreads();
    const T *x = static_cast<const T *>(p.ox);
    for (int i = tid; i < kOutlierChunk * C::BM; i += C::kThreads) {
        int j = i / C::BM, r = i % C::BM, gm = m0 + r;
        bool ok = j < nj && gm < p.M;
        int c = s_col[j];
        s_x[i] = ok ? to_f<T>(x[(int64_t)gm * p.ldx + c]) : 0.0f;
        s_a[i] = ok ? p.A[(int64_t)gm * p.lda + c] : (int8_t)0;
    }
    for (int i = tid; i < kOutlierChunk * C::BN; i += C::kThreads) {
        int j = i / C::BN, r = i % C::BN, gn = n0 + r;
        bool ok = j < nj && gn < p.N;
        int c = s_col[j];
        int8_t b = ok ? p.B[(int64_t)gn * p.ldb + c] : (int8_t)0;
        s_b[i] = b;
        s_bf[i] = ok ? __fmul_rn(__fmul_rn(static_cast<float>(b), col_scale(p, gn)), p.ow_scale) : 0.0f;
    }
    __syncthreads();
}

// Writes one finished tile: outlier correction, scales, bias, 16-bit
// conversion, staging in `epi`, 16-byte stores. Every thread of the CTA
// calls it (it has barriers). `epi` is free on entry: the main loop passed
// a barrier since the previous tile's epilogue last read it.
template <class C, typename T>
__device__ __forceinline__ void epilogue(const Params &p, int8_t *epi, int (&acc)[C::MI][C::NI][4], int m0, int n0,
                                         int tid, int lane, int wm, int wn)
{
    // Fragment coordinates inside the tile: element (i, q, r) sits at row
    // r0 + i*16 + (r >> 1) * 8, column c0 + q*8 + (r & 1).
    const int r0 = wm * C::WTM + (lane >> 2), c0 = wn * C::WTN + (lane & 3) * 2;

    // Outlier columns: subtract their int8 products exactly (int pass),
    // dequantize, then add x * dequantized B in fp32 (float pass).
    const int n_out = p.ocount ? __ldg(p.ocount) : 0;
    if (n_out > 0) {
        const int8_t *s_a = epi + 4 * kOutlierChunk + 4 * kOutlierChunk * (C::BM + C::BN);
        const int8_t *s_b = s_a + kOutlierChunk * C::BM;
        for (int j0 = 0; j0 < n_out; j0 += kOutlierChunk) {
            const int nj = min(kOutlierChunk, n_out - j0);
            stage_outliers<C, T>(p, epi, m0, n0, j0, nj, tid);
            for (int j = 0; j < nj; j++) {
                int av[C::MI][2], bv[C::NI][2];
#pragma unroll
                for (int i = 0; i < C::MI; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++) av[i][h] = s_a[j * C::BM + r0 + i * 16 + h * 8];
#pragma unroll
                for (int q = 0; q < C::NI; q++)
#pragma unroll
                    for (int e = 0; e < 2; e++) bv[q][e] = s_b[j * C::BN + c0 + q * 8 + e];
#pragma unroll
                for (int i = 0; i < C::MI; i++)
#pragma unroll
                    for (int q = 0; q < C::NI; q++)
#pragma unroll
                        for (int r = 0; r < 4; r++) acc[i][q][r] -= av[i][r >> 1] * bv[q][r & 1];
            }
            if (n_out > kOutlierChunk) __syncthreads(); // the next chunk overwrites the staging
        }
    }

    float out[C::MI][C::NI][4];
    {
        float rsv[C::MI][2], csv[C::NI][2];
#pragma unroll
        for (int i = 0; i < C::MI; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int gm = m0 + r0 + i * 16 + h * 8;
                rsv[i][h] = gm < p.M ? row_scale(p, gm) : 0.0f;
            }
#pragma unroll
        for (int q = 0; q < C::NI; q++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int gn = n0 + c0 + q * 8 + e;
                csv[q][e] = gn < p.N ? col_scale(p, gn) : 0.0f;
            }
#pragma unroll
        for (int i = 0; i < C::MI; i++)
#pragma unroll
            for (int q = 0; q < C::NI; q++)
#pragma unroll
                for (int r = 0; r < 4; r++) out[i][q][r] = dequant(acc[i][q][r], rsv[i][r >> 1], csv[q][r & 1], p.alpha);
    }

    if (n_out > 0) {
        const float *s_x = reinterpret_cast<const float *>(epi + 4 * kOutlierChunk);
        const float *s_bf = s_x + kOutlierChunk * C::BM;
        for (int j0 = 0; j0 < n_out; j0 += kOutlierChunk) {
            const int nj = min(kOutlierChunk, n_out - j0);
            if (n_out > kOutlierChunk) stage_outliers<C, T>(p, epi, m0, n0, j0, nj, tid); // else still staged
            for (int j = 0; j < nj; j++) {
                float xv[C::MI][2], wv[C::NI][2];
#pragma unroll
                for (int i = 0; i < C::MI; i++)
#pragma unroll
                    for (int h = 0; h < 2; h++) xv[i][h] = s_x[j * C::BM + r0 + i * 16 + h * 8];
#pragma unroll
                for (int q = 0; q < C::NI; q++)
#pragma unroll
                    for (int e = 0; e < 2; e++) wv[q][e] = s_bf[j * C::BN + c0 + q * 8 + e];
#pragma unroll
                for (int i = 0; i < C::MI; i++)
#pragma unroll
                    for (int q = 0; q < C::NI; q++)
#pragma unroll
                        for (int r = 0; r < 4; r++) out[i][q][r] = fmaf(xv[i][r >> 1], wv[q][r & 1], out[i][q][r]);
            }
            if (n_out > kOutlierChunk) __syncthreads();
        }
        __syncthreads(); // the output staging below reuses the outlier staging
    }

    // Bias, 16-bit conversion, staging in shared memory.
    uint16_t *s_out = reinterpret_cast<uint16_t *>(epi);
#pragma unroll
    for (int q = 0; q < C::NI; q++) {
        float bv[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            int gn = n0 + c0 + q * 8 + e;
            bv[e] = (p.bias && gn < p.N) ? __ldg(p.bias + gn) : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < C::MI; i++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                uint32_t lo = to_bits<T>(out[i][q][h * 2] + bv[0]), hi = to_bits<T>(out[i][q][h * 2 + 1] + bv[1]);
                *reinterpret_cast<uint32_t *>(s_out + (r0 + i * 16 + h * 8) * C::kOutPitch + c0 + q * 8) =
                    lo | (hi << 16);
            }
    }
    __syncthreads();

    uint16_t *D = static_cast<uint16_t *>(p.D);
    constexpr int kPieces = C::BN / 8; // 16-byte pieces a row
    for (int idx = tid; idx < C::BM * kPieces; idx += C::kThreads) {
        const int r = idx / kPieces, c = (idx % kPieces) * 8, gm = m0 + r, gn = n0 + c;
        if (gm >= p.M || gn >= p.N) continue;
        const uint16_t *src = s_out + r * C::kOutPitch + c;
        uint16_t *dst = D + (int64_t)gm * p.ldd + gn;
        if (p.vec_store && gn + 8 <= p.N) {
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
        } else {
            for (int e = 0; e < 8 && gn + e < p.N; e++) dst[e] = src[e];
        }
    }
}

// Persistent: CTA b computes tiles b, b + gridDim.x, ... The cp.async ring
// runs over the concatenated K loops of all its tiles, so the first stages
// of the next tile load while the current one is finished.
template <class C, typename T>
__global__ void __launch_bounds__(C::kThreads, 1) k_i8gemm_tiled(const Params p)
{
    extern __shared__ __align__(128) int8_t smem[];
    int8_t *epi = smem + C::kPipeBytes;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / C::WARPS_N, wn = warp % C::WARPS_N;
    const int tiles_m = (p.M + C::BM - 1) / C::BM, tiles_n = (p.N + C::BN - 1) / C::BN;
    const int tiles = tiles_m * tiles_n;
    if ((int)blockIdx.x >= tiles) return;
    const int KT = (p.K + C::BK - 1) / C::BK;
    const int my_tiles = (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1;
    const int64_t total = (int64_t)my_tiles * KT;

    // Producer position (next k-step to load) and consumer position.
    int ld_tile = blockIdx.x, ld_kt = 0, ld_m0, ld_n0;
    tile_origin(ld_tile, tiles_m, tiles_n, C::BM, C::BN, ld_m0, ld_n0);
    int ld_stage = 0;
    auto issue = [&]() {
        int8_t *sA = smem + ld_stage * C::kStageBytes;
        load_stage<C>(p, sA, sA + C::BM * C::BK, ld_m0, ld_n0, ld_kt * C::BK, tid);
        if (++ld_stage == C::STAGES) ld_stage = 0;
        if (++ld_kt == KT) {
            ld_kt = 0;
            ld_tile += gridDim.x;
            if (ld_tile < tiles) tile_origin(ld_tile, tiles_m, tiles_n, C::BM, C::BN, ld_m0, ld_n0);
        }
    };
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < total) issue();
        cp_async_commit();
    }

    int acc[C::MI][C::NI][4];
#pragma unroll
    for (int i = 0; i < C::MI; i++)
#pragma unroll
        for (int j = 0; j < C::NI; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[i][j][r] = 0;

    // Per-lane ldmatrix rows: A matrices are (rows 0-7 | 8-15) x (k 0-15 |
    // 16-31); B matrices (n 0-7, k lo), (n 0-7, k hi), (n 8-15, k lo), (n 8-15, k hi).
    const int a_row = wm * C::WTM + (lane & 15), a_hi = lane >> 4;
    const int b_row = wn * C::WTN + (lane & 7) + ((lane >> 4) << 3), b_hi = (lane >> 3) & 1;

    int rd_stage = 0, kt = 0, tile = blockIdx.x;
    for (int64_t it = 0; it < total; it++) {
        cp_async_wait<C::STAGES - 2>();
        __syncthreads();
        if (it + C::STAGES - 1 < total) issue(); // into the stage consumed last iteration
        cp_async_commit();
        const int8_t *sA = smem + rd_stage * C::kStageBytes, *sB = sA + C::BM * C::BK;
        if (++rd_stage == C::STAGES) rd_stage = 0;
#pragma unroll
        for (int kk = 0; kk < C::BK / 32; kk++) {
            uint32_t af[C::MI][4], bfr[C::NI][2];
#pragma unroll
            for (int i = 0; i < C::MI; i++)
                ldmatrix_x4(af[i][0], af[i][1], af[i][2], af[i][3], sA + swz<C::BK>(a_row + i * 16, kk * 2 + a_hi));
#pragma unroll
            for (int j = 0; j < C::NI / 2; j++)
                ldmatrix_x4(bfr[2 * j][0], bfr[2 * j][1], bfr[2 * j + 1][0], bfr[2 * j + 1][1],
                            sB + swz<C::BK>(b_row + j * 16, kk * 2 + b_hi));
#pragma unroll
            for (int i = 0; i < C::MI; i++)
#pragma unroll
                for (int j = 0; j < C::NI; j++)
                    mma_s8(acc[i][j], af[i][0], af[i][1], af[i][2], af[i][3], bfr[j][0], bfr[j][1]);
        }
        if (++kt == KT) {
            int m0, n0;
            tile_origin(tile, tiles_m, tiles_n, C::BM, C::BN, m0, n0);
            epilogue<C, T>(p, epi, acc, m0, n0, tid, lane, wm, wn);
#pragma unroll
            for (int i = 0; i < C::MI; i++)
#pragma unroll
                for (int j = 0; j < C::NI; j++)
#pragma unroll
                    for (int r = 0; r < 4; r++) acc[i][j][r] = 0;
            kt = 0;
            tile += gridDim.x;
        }
    }
    cp_async_wait<0>();
}

// ---------------------------------------------------------------- wgmma kernel (sm_90a)
//
// Hopper's warpgroup MMA: each of the CTA's two warpgroups multiplies a
// 64 x 256 slice (m64n256k32 per instruction) with both operands read
// straight from shared memory through matrix descriptors. The shared tiles
// use the same layout as the tiled kernel with BK = 128: 128-byte rows whose
// 16-byte pieces are XORed with (row % 8), which is wgmma's canonical
// K-major 128-byte swizzle when every stage starts on a 1024-byte boundary.
// Loads are cp.async (16-byte pieces, zero-filled at the edges) through a
// 3-deep ring; the accumulator layout per warp equals eight warps of 16 rows
// of the mma.sync fragments, so the same epilogue serves.

using CfgWg = Tile<128, 256, 128, 8, 1, 3>;
static_assert(CfgWg::WARPS_N == 1 && CfgWg::MI == 1 && CfgWg::NI == 32, "one m64n256 accumulator set a warpgroup");

// The helpers exist only where the kernel body does (sm_90a and the host pass).
#if !defined(__CUDA_ARCH__) || defined(__CUDA_ARCH_FEAT_SM90_ALL)

// Shared-memory matrix descriptor: start address, leading byte offset
// (unused for swizzled K-major operands), stride byte offset (1024: from one
// 8-row group to the next), 128-byte swizzle.
__device__ __forceinline__ uint64_t wg_desc(const void *p)
{
    const uint64_t addr = smem_addr(p);
    return ((addr & 0x3FFFFull) >> 4) | (1ull << 16) | ((uint64_t)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// Keeps the compiler from moving accumulator reads or writes across the
// asynchronous MMA's issue and completion.
__device__ __forceinline__ void wg_fence_operands(int (&d)[128])
{
#pragma unroll
    for (int i = 0; i < 128; i++) asm volatile("" : "+r"(d[i])::"memory");
}

// d[64 x 256] += A[64 x 32] * B[256 x 32]^T, s8 inputs, s32 accumulators.
__device__ __forceinline__ void wgmma_m64n256k32(int (&d)[128], uint64_t da, uint64_t db)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    asm volatile(
        "{\n"
        ".reg .pred p;\n"
        "setp.ne.b32 p, %130, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 "
        "{"
        "%0, %1, %2, %3, %4, %5, %6, %7, "
        "%8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, "
        "%24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, "
        "%40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, "
        "%56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, "
        "%72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, "
        "%88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, "
        "%104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, "
        "%120, %121, %122, %123, %124, %125, %126, %127"
        "}, %128, %129, p;\n"
        "}\n"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
          "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
          "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
          "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
          "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
          "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
          "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
          "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63]),
          "+r"(d[64]), "+r"(d[65]), "+r"(d[66]), "+r"(d[67]), "+r"(d[68]), "+r"(d[69]), "+r"(d[70]), "+r"(d[71]),
          "+r"(d[72]), "+r"(d[73]), "+r"(d[74]), "+r"(d[75]), "+r"(d[76]), "+r"(d[77]), "+r"(d[78]), "+r"(d[79]),
          "+r"(d[80]), "+r"(d[81]), "+r"(d[82]), "+r"(d[83]), "+r"(d[84]), "+r"(d[85]), "+r"(d[86]), "+r"(d[87]),
          "+r"(d[88]), "+r"(d[89]), "+r"(d[90]), "+r"(d[91]), "+r"(d[92]), "+r"(d[93]), "+r"(d[94]), "+r"(d[95]),
          "+r"(d[96]), "+r"(d[97]), "+r"(d[98]), "+r"(d[99]), "+r"(d[100]), "+r"(d[101]), "+r"(d[102]), "+r"(d[103]),
          "+r"(d[104]), "+r"(d[105]), "+r"(d[106]), "+r"(d[107]), "+r"(d[108]), "+r"(d[109]), "+r"(d[110]), "+r"(d[111]),
          "+r"(d[112]), "+r"(d[113]), "+r"(d[114]), "+r"(d[115]), "+r"(d[116]), "+r"(d[117]), "+r"(d[118]), "+r"(d[119]),
          "+r"(d[120]), "+r"(d[121]), "+r"(d[122]), "+r"(d[123]), "+r"(d[124]), "+r"(d[125]), "+r"(d[126]), "+r"(d[127])
        : "l"(da), "l"(db), "r"(1));
#else
    (void)d;
    (void)da;
    (void)db;
#endif
}
#endif

template <typename T>
__global__ void __launch_bounds__(CfgWg::kThreads, 1) k_i8gemm_wgmma(const Params p)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
    using C = CfgWg;
    extern __shared__ __align__(128) int8_t smem_raw[];
    // Stages on 1024-byte boundaries (the swizzle pattern is taken from
    // address bits 7-9); the launch adds 1 KB of slack for this.
    int8_t *smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
    int8_t *epi = smem + C::kPipeBytes;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wgrp = warp >> 2;
    const int tiles_m = (p.M + C::BM - 1) / C::BM, tiles_n = (p.N + C::BN - 1) / C::BN;
    const int tiles = tiles_m * tiles_n;
    if ((int)blockIdx.x >= tiles) return;
    const int KT = (p.K + C::BK - 1) / C::BK;
    const int my_tiles = (tiles - 1 - (int)blockIdx.x) / (int)gridDim.x + 1;
    const int64_t total = (int64_t)my_tiles * KT;

    int ld_tile = blockIdx.x, ld_kt = 0, ld_m0, ld_n0;
    tile_origin(ld_tile, tiles_m, tiles_n, C::BM, C::BN, ld_m0, ld_n0);
    int ld_stage = 0;
    auto issue = [&]() {
        int8_t *sA = smem + ld_stage * C::kStageBytes;
        load_stage<C>(p, sA, sA + C::BM * C::BK, ld_m0, ld_n0, ld_kt * C::BK, tid);
        if (++ld_stage == C::STAGES) ld_stage = 0;
        if (++ld_kt == KT) {
            ld_kt = 0;
            ld_tile += gridDim.x;
            if (ld_tile < tiles) tile_origin(ld_tile, tiles_m, tiles_n, C::BM, C::BN, ld_m0, ld_n0);
        }
    };
#pragma unroll
    for (int s = 0; s < C::STAGES - 1; s++) {
        if (s < total) issue();
        cp_async_commit();
    }

    int acc[1][32][4];
#pragma unroll
    for (int j = 0; j < 32; j++)
#pragma unroll
        for (int r = 0; r < 4; r++) acc[0][j][r] = 0;
    int(&d)[128] = *reinterpret_cast<int(*)[128]>(&acc[0][0][0]);

    int rd_stage = 0, kt = 0, tile = blockIdx.x;
    for (int64_t it = 0; it < total; it++) {
        cp_async_wait<C::STAGES - 2>();
        fence_proxy_async(); // this thread's cp.async writes -> the tensor cores' reads
        __syncthreads();
        const int8_t *sA = smem + rd_stage * C::kStageBytes, *sB = sA + C::BM * C::BK;
        if (++rd_stage == C::STAGES) rd_stage = 0;
        const uint64_t da = wg_desc(sA + wgrp * 64 * C::BK), db = wg_desc(sB);
        wg_fence_operands(d);
        wg_fence();
#pragma unroll
        for (int k = 0; k < C::BK / 32; k++) wgmma_m64n256k32(d, da + 2 * k, db + 2 * k); // +32 bytes along K
        wg_commit();
        // While the MMAs run: the next loads, into the stage read last
        // iteration (its MMAs completed before this iteration's barrier).
        if (it + C::STAGES - 1 < total) issue();
        cp_async_commit();
        wg_wait0();
        wg_fence_operands(d);
        if (++kt == KT) {
            int m0, n0;
            tile_origin(tile, tiles_m, tiles_n, C::BM, C::BN, m0, n0);
            epilogue<C, T>(p, epi, acc, m0, n0, tid, lane, warp / C::WARPS_N, warp % C::WARPS_N);
#pragma unroll
            for (int j = 0; j < 32; j++)
#pragma unroll
                for (int r = 0; r < 4; r++) acc[0][j][r] = 0;
            kt = 0;
            tile += gridDim.x;
        }
    }
    cp_async_wait<0>();
#else
    (void)p;
#endif
}

// ---------------------------------------------------------------- skinny kernel

constexpr int kSkWarps = 8;
constexpr int kSkUnroll = 4;

__device__ __forceinline__ int4 ldg16(const int8_t *p) { return __ldg(reinterpret_cast<const int4 *>(p)); }

// One CTA per 8 output columns; MT m16 tiles cover M <= 16 * MT.
template <typename T, int MT>
__global__ void __launch_bounds__(kSkWarps * 32) k_i8gemm_skinny(const Params p)
{
    __shared__ int red[kSkWarps][MT * 4 * 32];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int n0 = blockIdx.x * 8;
    const int g = lane >> 2, t = lane & 3;
    const int gn = n0 + g;
    const bool n_ok = gn < p.N;
    const int8_t *brow = p.B + (int64_t)(n_ok ? gn : 0) * p.ldb + t * 16;
    const int8_t *arow[MT][2];
    bool a_ok[MT][2];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int m = i * 16 + h * 8 + g;
            a_ok[i][h] = m < p.M;
            arow[i][h] = p.A + (int64_t)(a_ok[i][h] ? m : 0) * p.lda + t * 16;
        }
    int acc[MT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int r = 0; r < 4; r++) acc[i][r] = 0;

    const int pieces = (p.K + 63) / 64; // 64-byte pieces of K; lane t covers bytes 16t .. 16t+15
    for (int base = warp; base < pieces; base += kSkWarps * kSkUnroll) {
        int4 bv[kSkUnroll], av[kSkUnroll][MT][2];
#pragma unroll
        for (int u = 0; u < kSkUnroll; u++) {
            const int pc = base + u * kSkWarps, k = pc * 64;
            const bool k_ok = pc < pieces && k + t * 16 < p.K;
            bv[u] = (k_ok && n_ok) ? ldg16(brow + k) : make_int4(0, 0, 0, 0);
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int h = 0; h < 2; h++) av[u][i][h] = (k_ok && a_ok[i][h]) ? ldg16(arow[i][h] + k) : make_int4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < kSkUnroll; u++)
#pragma unroll
            for (int i = 0; i < MT; i++) {
                mma_s8(acc[i], av[u][i][0].x, av[u][i][1].x, av[u][i][0].y, av[u][i][1].y, bv[u].x, bv[u].y);
                mma_s8(acc[i], av[u][i][0].z, av[u][i][1].z, av[u][i][0].w, av[u][i][1].w, bv[u].z, bv[u].w);
            }
    }
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int r = 0; r < 4; r++) red[warp][(i * 4 + r) * 32 + lane] = acc[i][r];
    __syncthreads();

    // One thread per output element: sum over warps, then the epilogue.
    for (int e = tid; e < MT * 4 * 32; e += kSkWarps * 32) {
        const int i = e / 128, r = (e / 32) % 4, l = e % 32;
        const int m = i * 16 + (r >> 1) * 8 + (l >> 2), n = n0 + (l & 3) * 2 + (r & 1);
        if (m >= p.M || n >= p.N) continue;
        int a = 0;
#pragma unroll
        for (int w = 0; w < kSkWarps; w++) a += red[w][e];
        const int n_out = p.ocount ? __ldg(p.ocount) : 0;
        const T *x = static_cast<const T *>(p.ox);
        for (int j = 0; j < n_out; j++) {
            const int c = __ldg(p.ocols + j);
            a -= (int)p.A[(int64_t)m * p.lda + c] * (int)p.B[(int64_t)n * p.ldb + c];
        }
        const float cs = col_scale(p, n);
        float v = dequant(a, row_scale(p, m), cs, p.alpha);
        for (int j = 0; j < n_out; j++) {
            const int c = __ldg(p.ocols + j);
            const float wf = __fmul_rn(__fmul_rn(static_cast<float>(p.B[(int64_t)n * p.ldb + c]), cs), p.ow_scale);
            v = fmaf(to_f<T>(x[(int64_t)m * p.ldx + c]), wf, v);
        }
        if (p.bias) v += __ldg(p.bias + n);
        static_cast<uint16_t *>(p.D)[(int64_t)m * p.ldd + n] = to_bits<T>(v);
    }
}

// ---------------------------------------------------------------- host side

using Cfg128x256 = Tile<128, 256, 64, 2, 4, 4>;
using Cfg128x128 = Tile<128, 128, 64, 2, 2, 4>;
using Cfg64x128 = Tile<64, 128, 64, 2, 2, 3>;
using Cfg64x64 = Tile<64, 64, 64, 2, 2, 2>; // fits Turing's 64 KB of shared memory with room to spare

constexpr int kMaxDevices = 64;

struct DevInfo {
    std::atomic<int> ready{0};
    int sms = 0, cc = 0, smem_optin = 0;
};
DevInfo g_dev[kMaxDevices];

int dev_info(int &dev, int &sms, int &cc, int &smem_optin, char *msg, size_t len)
{
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) {
        snprintf(msg, len, "cudaGetDevice: %s", cudaGetErrorString(e));
        return QTOOL_ERR_DEVICE;
    }
    DevInfo *d = dev >= 0 && dev < kMaxDevices ? &g_dev[dev] : nullptr;
    if (d && d->ready.load(std::memory_order_acquire)) {
        sms = d->sms;
        cc = d->cc;
        smem_optin = d->smem_optin;
        return 0;
    }
    int major = 0, minor = 0;
    e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (e != cudaSuccess) {
        snprintf(msg, len, "cudaDeviceGetAttribute: %s", cudaGetErrorString(e));
        return QTOOL_ERR_DEVICE;
    }
    cc = major * 10 + minor;
    if (d) {
        d->sms = sms;
        d->cc = cc;
        d->smem_optin = smem_optin;
        d->ready.store(1, std::memory_order_release);
    }
    return 0;
}

// The persistent kernels by config: the function and its dynamic shared memory.
template <class C, typename T> struct TiledKernel {
    static constexpr int kSmem = C::kSmem;
    static void (*fn())(const Params) { return k_i8gemm_tiled<C, T>; }
};
struct WgmmaTag {};
template <typename T> struct TiledKernel<WgmmaTag, T> {
    static constexpr int kSmem = CfgWg::kSmem + 1024; // + alignment slack
    static void (*fn())(const Params) { return k_i8gemm_wgmma<T>; }
};
template <class C> struct TileShape {
    static constexpr int BM = C::BM, BN = C::BN, kThreads = C::kThreads;
};
template <> struct TileShape<WgmmaTag> {
    static constexpr int BM = CfgWg::BM, BN = CfgWg::BN, kThreads = CfgWg::kThreads;
};

// Raises a kernel's dynamic shared-memory limit once per device.
template <class C, typename T> int prepare_tiled(int dev, char *msg, size_t len)
{
    static std::atomic<uint64_t> done{0};
    const uint64_t bit = 1ull << (dev & 63);
    if (done.load(std::memory_order_acquire) & bit) return 0;
    cudaError_t e = cudaFuncSetAttribute(TiledKernel<C, T>::fn(), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         TiledKernel<C, T>::kSmem);
    if (e != cudaSuccess) {
        snprintf(msg, len, "cudaFuncSetAttribute: %s", cudaGetErrorString(e));
        return QTOOL_ERR_DEVICE;
    }
    done.fetch_or(bit, std::memory_order_acq_rel);
    return 0;
}

// Resident CTAs of a config per multiprocessor (registers and shared
// memory), asked once per device; 0 when it does not fit at all.
template <class C> int occupancy(int dev)
{
    static std::atomic<int> cache[kMaxDevices];
    const int slot = dev & (kMaxDevices - 1);
    int n = cache[slot].load(std::memory_order_relaxed);
    if (n > 0) return n - 1;
    char msg[128];
    n = 0;
    if (prepare_tiled<C, __half>(dev, msg, sizeof msg) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, TiledKernel<C, __half>::fn(), TileShape<C>::kThreads,
                                                      TiledKernel<C, __half>::kSmem) != cudaSuccess) {
        cudaGetLastError();
        n = 0;
    }
    if (n < 0) n = 0;
    cache[slot].store(n + 1, std::memory_order_relaxed);
    return n;
}

template <class C, typename T>
int launch_tiled(const Params &p, int dev, int sms, cudaStream_t st, char *msg, size_t len)
{
    int rc = prepare_tiled<C, T>(dev, msg, len);
    if (rc) return rc;
    using S = TileShape<C>;
    const int64_t tiles = (int64_t)((p.M + S::BM - 1) / S::BM) * ((p.N + S::BN - 1) / S::BN);
    if (tiles > 0x7FFFFFFF) {
        snprintf(msg, len, "int8 GEMM %dx%d has too many tiles", p.M, p.N);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const int per_sm = occupancy<C>(dev);
    if (per_sm < 1) {
        snprintf(msg, len, "int8 GEMM: a %dx%d tile does not fit on this device", S::BM, S::BN);
        return QTOOL_ERR_UNSUPPORTED;
    }
    const int64_t slots = (int64_t)sms * per_sm, grid = tiles < slots ? tiles : slots;
    TiledKernel<C, T>::fn()<<<(unsigned)grid, S::kThreads, TiledKernel<C, T>::kSmem, st>>>(p);
    return 0;
}

constexpr int kSkinnyMaxM = 64;

template <typename T> int launch(int config, const Params &p, int dev, int sms, cudaStream_t st, char *msg, size_t len)
{
    switch (config) {
    case QT_I8GEMM_128x256: return launch_tiled<Cfg128x256, T>(p, dev, sms, st, msg, len);
    case QT_I8GEMM_128x128: return launch_tiled<Cfg128x128, T>(p, dev, sms, st, msg, len);
    case QT_I8GEMM_64x128: return launch_tiled<Cfg64x128, T>(p, dev, sms, st, msg, len);
    case QT_I8GEMM_64x64: return launch_tiled<Cfg64x64, T>(p, dev, sms, st, msg, len);
    case QT_I8GEMM_WGMMA: return launch_tiled<WgmmaTag, T>(p, dev, sms, st, msg, len);
    case QT_I8GEMM_SKINNY: {
        const unsigned blocks = (unsigned)((p.N + 7) / 8);
        if (p.M <= 16)
            k_i8gemm_skinny<T, 1><<<blocks, kSkWarps * 32, 0, st>>>(p);
        else if (p.M <= 32)
            k_i8gemm_skinny<T, 2><<<blocks, kSkWarps * 32, 0, st>>>(p);
        else
            k_i8gemm_skinny<T, 4><<<blocks, kSkWarps * 32, 0, st>>>(p);
        return 0;
    }
    default: snprintf(msg, len, "unknown int8 GEMM config %d", config); return QTOOL_ERR_INVALID_ARGUMENT;
    }
}

int config_smem(int config)
{
    switch (config) {
    case QT_I8GEMM_128x256: return Cfg128x256::kSmem;
    case QT_I8GEMM_128x128: return Cfg128x128::kSmem;
    case QT_I8GEMM_64x128: return Cfg64x128::kSmem;
    case QT_I8GEMM_64x64: return Cfg64x64::kSmem;
    case QT_I8GEMM_WGMMA: return TiledKernel<WgmmaTag, __half>::kSmem;
    default: return 0;
    }
}

int ctas_per_sm(int config, int dev)
{
    switch (config) {
    case QT_I8GEMM_128x256: return occupancy<Cfg128x256>(dev);
    case QT_I8GEMM_128x128: return occupancy<Cfg128x128>(dev);
    case QT_I8GEMM_64x128: return occupancy<Cfg64x128>(dev);
    case QT_I8GEMM_64x64: return occupancy<Cfg64x64>(dev);
    case QT_I8GEMM_WGMMA: return occupancy<WgmmaTag>(dev);
    default: return 1;
    }
}

// wgmma needs this file's sm_90a code and a compute capability 9.0 device;
// QTOOL_I8GEMM_NO_WGMMA=1 in the environment turns it off (diagnostics).
#if defined(QT_I8GEMM_SM90A)
// An environment switch read once: set to anything but "" or "0".
bool env_switch(const char *name, std::atomic<int> &cached)
{
    int v = cached.load(std::memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv(name);
        v = e && *e && strcmp(e, "0") ? 1 : 0;
        cached.store(v, std::memory_order_relaxed);
    }
    return v != 0;
}
#endif

bool wgmma_available(int cc)
{
#if defined(QT_I8GEMM_SM90A)
    static std::atomic<int> off{-1};
    return cc == 90 && !env_switch("QTOOL_I8GEMM_NO_WGMMA", off);
#else
    (void)cc;
    return false;
#endif
}

bool is_tma(int config) { return config == QT_I8GEMM_TMA_PINGPONG || config == QT_I8GEMM_TMA_COOPERATIVE; }

// The CUTLASS TMA kernels: wgmma's requirements, CUTLASS at build time, and
// not turned off by QTOOL_I8GEMM_NO_TMA=1.
bool tma_available(int cc)
{
#if defined(QT_I8GEMM_HAVE_TMA)
    static std::atomic<int> off{-1};
    return wgmma_available(cc) && !env_switch("QTOOL_I8GEMM_NO_TMA", off);
#else
    (void)cc;
    return false;
#endif
}

// What the TMA kernels cannot do; NULL when they take these arguments.
const char *tma_refusal(const qt_i8gemm_args *a, int64_t ldd)
{
    if (a->outlier_count) return "outlier columns";
    if (a->row_scale && a->row_scale_broadcast) return "a broadcast row scale";
    if (((uintptr_t)a->D & 15) || ldd % 8) return "a D that is not 16-byte aligned with ldd % 8 == 0";
    return NULL;
}

bool config_available(int config, int64_t M, int cc, int smem_optin)
{
    if (config <= QT_I8GEMM_AUTO || config >= QT_I8GEMM_CONFIG_COUNT) return false;
    if (config == QT_I8GEMM_SKINNY) return M <= kSkinnyMaxM;
    if (is_tma(config)) return tma_available(cc);
    if (config == QT_I8GEMM_WGMMA && !wgmma_available(cc)) return false;
    return config_smem(config) <= smem_optin;
}

// Measured on an H100 (docs/bnb_int8.md): decode-sized M runs best on the
// skinny kernel; large problems on the CUTLASS TMA kernels (ping-pong, whose
// epilogue overlaps the next tile's MMAs, for short K; cooperative for long
// K, 1.03 vs 0.94 PFLOP/s at 8192 x 896 x 4864), then wgmma (sm_90a; it
// still wins with half the multiprocessors busy) or else the 128x128 tiles
// (two CTAs a multiprocessor); in between, the largest tile that still
// gives every multiprocessor at least one tile.
int pick(int64_t M, int64_t N, int64_t K, bool tma_ok, int sms, int cc, int smem_optin)
{
    if (M <= 32 || (M <= kSkinnyMaxM && K >= 2048)) return QT_I8GEMM_SKINNY;
    const int64_t t128x256 = ((M + 127) / 128) * ((N + 255) / 256), t128x128 = ((M + 127) / 128) * ((N + 127) / 128),
                  t64x128 = ((M + 63) / 64) * ((N + 127) / 128);
    if (tma_ok && t128x128 >= sms && config_available(QT_I8GEMM_TMA_PINGPONG, M, cc, smem_optin)) {
        const int64_t t256x128 = ((M + 255) / 256) * ((N + 127) / 128);
        return K >= 2048 && t256x128 >= sms ? QT_I8GEMM_TMA_COOPERATIVE : QT_I8GEMM_TMA_PINGPONG;
    }
    if (2 * t128x256 >= sms && config_available(QT_I8GEMM_WGMMA, M, cc, smem_optin)) return QT_I8GEMM_WGMMA;
    if (t128x128 >= 2 * (int64_t)sms && config_available(QT_I8GEMM_128x128, M, cc, smem_optin))
        return QT_I8GEMM_128x128;
    if (t64x128 >= sms && config_available(QT_I8GEMM_64x128, M, cc, smem_optin)) return QT_I8GEMM_64x128;
    if (config_available(QT_I8GEMM_64x64, M, cc, smem_optin)) return QT_I8GEMM_64x64;
    return M <= kSkinnyMaxM ? QT_I8GEMM_SKINNY : QT_I8GEMM_64x64;
}

int run(const qt_i8gemm_args *a, char *msg, size_t len)
{
    if (!a || !a->A || !a->B || !a->D) {
        snprintf(msg, len, "int8 GEMM: missing A, B or D");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    const int64_t M = a->M, N = a->N, K = a->K;
    const int64_t lda = a->lda ? a->lda : K, ldb = a->ldb ? a->ldb : K, ldd = a->ldd ? a->ldd : N;
    if (M < 1 || N < 1 || K < 16 || M > 0x7FFFFFFF || N > 0x7FFFFFFF || K > (1 << 30)) {
        snprintf(msg, len, "int8 GEMM: bad shape M=%lld N=%lld K=%lld", (long long)M, (long long)N, (long long)K);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (K % 16 || lda % 16 || ldb % 16 || lda < K || ldb < K || ldd < N || ((uintptr_t)a->A & 15) ||
        ((uintptr_t)a->B & 15) || ((uintptr_t)a->D & 1)) {
        snprintf(msg, len,
                 "int8 GEMM: K (%lld) and the row strides of A and B (%lld, %lld) must be multiples of 16 and A, B "
                 "16-byte aligned",
                 (long long)K, (long long)lda, (long long)ldb);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (a->outlier_count && (!a->outlier_cols || !a->outlier_x || (a->ldx ? a->ldx : K) < 1)) {
        snprintf(msg, len, "int8 GEMM: outlier columns need cols, count and x");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int dev = 0, sms = 0, cc = 0, smem_optin = 0;
    int rc = dev_info(dev, sms, cc, smem_optin, msg, len);
    if (rc) return rc;
    if (cc < 75) {
        snprintf(msg, len, "int8 GEMM: needs compute capability >= 7.5, found %d.%d", cc / 10, cc % 10);
        return QTOOL_ERR_UNSUPPORTED;
    }
    const char *tma_no = tma_refusal(a, ldd);
    int config = a->config ? a->config : pick(M, N, K, tma_no == NULL, sms, cc, smem_optin);
    if (config <= 0 || config >= QT_I8GEMM_CONFIG_COUNT) {
        snprintf(msg, len, "int8 GEMM: unknown config %d", config);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (config == QT_I8GEMM_SKINNY && M > kSkinnyMaxM) {
        snprintf(msg, len, "int8 GEMM: the skinny kernel takes M <= %d, got %lld", kSkinnyMaxM, (long long)M);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (!config_available(config, M, cc, smem_optin)) {
        snprintf(msg, len, "int8 GEMM: config %s is not available on this device (compute capability %d.%d, %d bytes "
                 "of shared memory a block)",
                 qt_i8gemm_config_name(config), cc / 10, cc % 10, smem_optin);
        return QTOOL_ERR_UNSUPPORTED;
    }
    cudaStream_t st = static_cast<cudaStream_t>(a->stream);
    if (is_tma(config)) {
        if (tma_no) {
            snprintf(msg, len, "int8 GEMM: config %s does not take %s", qt_i8gemm_config_name(config), tma_no);
            return QTOOL_ERR_UNSUPPORTED;
        }
#if defined(QT_I8GEMM_HAVE_TMA)
        const qt_i8gemm_tma_problem tp = {a->A,         a->B,         M,       N,    K,
                                          lda,          ldb,          ldd,     a->row_scale,
                                          a->col_scale, a->bias,      a->alpha, a->D,
                                          a->d_is_bf16, dev,          sms,     a->stream};
        return qt_i8gemm_tma_run(config == QT_I8GEMM_TMA_PINGPONG ? QT_I8GEMM_TMA_PINGPONG_128x128
                                                                   : QT_I8GEMM_TMA_COOPERATIVE_256x128,
                                 &tp, msg, len);
#endif
    }
    Params p;
    p.A = a->A;
    p.B = a->B;
    p.M = (int)M;
    p.N = (int)N;
    p.K = (int)K;
    p.lda = lda;
    p.ldb = ldb;
    p.ldd = ldd;
    p.ldx = a->ldx ? a->ldx : K;
    p.rs = a->row_scale;
    p.rs_bcast = a->row_scale_broadcast != 0;
    p.cs = a->col_scale;
    p.alpha = a->alpha;
    p.bias = a->bias;
    p.D = a->D;
    p.vec_store = ((uintptr_t)a->D % 16 == 0) && (ldd % 8 == 0);
    p.ocols = a->outlier_cols;
    p.ocount = a->outlier_count;
    p.ox = a->outlier_x;
    p.ow_scale = a->outlier_w_scale;
    rc = a->d_is_bf16 ? launch<__nv_bfloat16>(config, p, dev, sms, st, msg, len)
                      : launch<__half>(config, p, dev, sms, st, msg, len);
    if (rc) return rc;
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) {
        snprintf(msg, len, "int8 GEMM launch (%s): %s", qt_i8gemm_config_name(config), cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE;
    }
    return 0;
}

} // namespace

extern "C" {

int qt_i8gemm_ex(const qt_i8gemm_args *args, char *msg, size_t msg_len)
{
    char scratch[128];
    if (!msg || !msg_len) {
        msg = scratch;
        msg_len = sizeof scratch;
    }
    return run(args, msg, msg_len);
}

int qt_i8gemm(const int8_t *A, const int8_t *B, int64_t M, int64_t N, int64_t K, const float *row_scale,
              const float *col_scale, float alpha, const float *bias, void *D, int d_is_bf16, void *stream,
              char *msg, size_t msg_len)
{
    qt_i8gemm_args a = {};
    a.A = A;
    a.B = B;
    a.M = M;
    a.N = N;
    a.K = K;
    a.row_scale = row_scale;
    a.col_scale = col_scale;
    a.alpha = alpha;
    a.bias = bias;
    a.D = D;
    a.d_is_bf16 = d_is_bf16;
    a.stream = stream;
    return qt_i8gemm_ex(&a, msg, msg_len);
}

int qt_i8gemm_pick_config(int64_t M, int64_t N, int64_t K)
{
    char msg[128];
    int dev = 0, sms = 0, cc = 0, smem_optin = 0;
    if (dev_info(dev, sms, cc, smem_optin, msg, sizeof msg)) return QT_I8GEMM_AUTO;
    (void)dev;
    return pick(M, N, K, true, sms, cc, smem_optin);
}

int qt_i8gemm_config_available(int config, int64_t M)
{
    char msg[128];
    int dev = 0, sms = 0, cc = 0, smem_optin = 0;
    if (dev_info(dev, sms, cc, smem_optin, msg, sizeof msg)) return 0;
    return config_available(config, M, cc, smem_optin) && (config == QT_I8GEMM_SKINNY || ctas_per_sm(config, dev) > 0);
}

int qt_i8gemm_config_takes(int config, const qt_i8gemm_args *args)
{
    if (!args) return 0;
    if (config == QT_I8GEMM_AUTO) return 1;
    if (!qt_i8gemm_config_available(config, args->M)) return 0;
    if (is_tma(config)) return tma_refusal(args, args->ldd ? args->ldd : args->N) == NULL;
    return 1;
}

const char *qt_i8gemm_config_name(int config)
{
    switch (config) {
    case QT_I8GEMM_AUTO: return "auto";
    case QT_I8GEMM_128x256: return "128x256";
    case QT_I8GEMM_128x128: return "128x128";
    case QT_I8GEMM_64x128: return "64x128";
    case QT_I8GEMM_SKINNY: return "skinny";
    case QT_I8GEMM_64x64: return "64x64";
    case QT_I8GEMM_WGMMA: return "wgmma128x256";
    case QT_I8GEMM_TMA_PINGPONG: return "tma128x128pp";
    case QT_I8GEMM_TMA_COOPERATIVE: return "tma256x128co";
    default: return "unknown";
    }
}

} // extern "C"
