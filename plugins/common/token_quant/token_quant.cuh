// Per-token activation quantization on CUDA for the W8A8 plugins
// (smoothquant's int8, fp8's E4M3): one warp per token row, the row held in
// registers as raw 16-byte vectors, so x is read once, all of a row's loads
// are in flight together, and the absmax needs only warp shuffles.
//
//   dynamic: inv = kRange / absmax(row) (correctly rounded), sa[m] = absmax / kRange
//   static:  inv = act_inv,                                 sa[m] = act_scale
//
// `Code` says how 8 values become 8 bytes:
//   struct Code { static constexpr float kRange; // 127, 448
//                 static __device__ uint2 encode8(const float v[8], float inv); };
// Rows need K % 8 == 0, 16-byte alignment and K <= 8 * 32 * kTokenQuantMaxC;
// launch_token_quant returns false for anything else (the caller's general
// kernels serve it). Bytes K .. Kp of each output row are zeroed.
#ifndef QT_TOKEN_QUANT_CUH
#define QT_TOKEN_QUANT_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace qt_token_quant {

constexpr int kMaxC = 20; // vectors of 8 values a lane: K <= 5120

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ void unpack8(const uint4 &u, float f[8])
{
    const T *h = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) f[i] = to_float<T>(h[i]);
}

template <typename T, int C, class Code>
__global__ void __launch_bounds__(256)
    k_token_quant(const T *__restrict__ x, int64_t M, int64_t K, int64_t Kp, int static_act, float act_scale,
                  float act_inv, uint8_t *__restrict__ q, float *__restrict__ sa)
{
    const int lane = threadIdx.x & 31;
    const int64_t m = (int64_t)blockIdx.x * 8 + (threadIdx.x >> 5);
    if (m >= M) return; // the whole warp leaves together
    const T *xr = x + m * K;
    const int64_t nv = K / 8;
    // Raw vectors (4 registers each), converted twice: 8C floats would spill.
    uint4 raw[C];
#pragma unroll
    for (int c = 0; c < C; c++) {
        const int64_t i = lane + c * 32;
        raw[c] = i < nv ? __ldcs(reinterpret_cast<const uint4 *>(xr + i * 8)) : make_uint4(0, 0, 0, 0);
    }
    float inv = act_inv;
    if (!static_act) {
        float amax = 0.0f;
#pragma unroll
        for (int c = 0; c < C; c++) {
            float v[8];
            unpack8<T>(raw[c], v);
#pragma unroll
            for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        inv = amax > 0.0f ? __fdiv_rn(Code::kRange, amax) : 0.0f;
        if (lane == 0) sa[m] = __fdiv_rn(amax, Code::kRange);
    } else if (lane == 0) {
        sa[m] = act_scale;
    }
    uint8_t *qr = q + m * Kp;
#pragma unroll
    for (int c = 0; c < C; c++) {
        const int64_t i = lane + c * 32;
        if (i < nv) {
            float v[8];
            unpack8<T>(raw[c], v);
            *reinterpret_cast<uint2 *>(qr + i * 8) = Code::encode8(v, inv);
        }
    }
    for (int64_t c = K + lane; c < Kp; c += 32) qr[c] = 0;
}

// Launches the warp kernel with the smallest C that holds a row; false when
// the rows do not fit its requirements.
template <typename T, class Code>
bool launch_token_quant(const T *x, int64_t M, int64_t K, int64_t Kp, int static_act, float act_scale,
                        float act_inv, uint8_t *q, float *sa, cudaStream_t st)
{
    const int64_t nv = K / 8;
    if (K % 8 || ((uintptr_t)x & 15u) || nv > (int64_t)kMaxC * 32 || M < 1) return false;
    const unsigned blocks = (unsigned)((M + 7) / 8);
    const int64_t c = (nv + 31) / 32;
#define QT_TQ(C) \
    k_token_quant<T, C, Code><<<blocks, 256, 0, st>>>(x, M, K, Kp, static_act, act_scale, act_inv, q, sa)
    if (c <= 1) QT_TQ(1);
    else if (c <= 2) QT_TQ(2);
    else if (c <= 4) QT_TQ(4);
    else if (c <= 8) QT_TQ(8);
    else if (c <= 12) QT_TQ(12);
    else if (c <= 16) QT_TQ(16);
    else QT_TQ(kMaxC);
#undef QT_TQ
    return true;
}

} // namespace qt_token_quant

#endif
