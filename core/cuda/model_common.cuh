// Shared device helpers of the model kernels: half <-> float conversion,
// 16-byte vector loads, activations, reductions.
#ifndef QT_MODEL_COMMON_CUH
#define QT_MODEL_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

#include "model_kernels.h"

namespace qtk {

template <typename T> struct Cvt;
template <> struct Cvt<__half> {
    static __device__ __forceinline__ float f(__half x) { return __half2float(x); }
    static __device__ __forceinline__ __half h(float x) { return __float2half_rn(x); }
};
template <> struct Cvt<__nv_bfloat16> {
    static __device__ __forceinline__ float f(__nv_bfloat16 x) { return __bfloat162float(x); }
    static __device__ __forceinline__ __nv_bfloat16 h(float x) { return __float2bfloat16_rn(x); }
};

template <typename T> __device__ __forceinline__ float ld1(const T *p) { return Cvt<T>::f(*p); }
template <typename T> __device__ __forceinline__ void st1(T *p, float v) { *p = Cvt<T>::h(v); }

// Eight consecutive elements through one 16-byte access.
template <typename T> __device__ __forceinline__ void ld8(const T *p, float v[8])
{
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const T *e = reinterpret_cast<const T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) v[i] = Cvt<T>::f(e[i]);
}

template <typename T> __device__ __forceinline__ void st8(T *p, const float v[8])
{
    uint4 u;
    T *e = reinterpret_cast<T *>(&u);
#pragma unroll
    for (int i = 0; i < 8; i++) e[i] = Cvt<T>::h(v[i]);
    *reinterpret_cast<uint4 *>(p) = u;
}

// qt_act (model.h) in float or double; same formulas as qt_act_apply.
template <typename F> __device__ __forceinline__ F act_apply(int act, F x)
{
    if constexpr (std::is_same<F, float>::value) {
        switch (act) {
        case 0: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
        case 1: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
        case 2: return x / (1.0f + expf(-1.702f * x));
        case 3: return x > 0.0f ? x : 0.0f;
        case 4: return x / (1.0f + expf(-x));
        case 5: return tanhf(x);
        case 6: return 1.0f / (1.0f + expf(-x));
        default: return x;
        }
    } else {
        switch (act) {
        case 0: return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
        case 1: return 0.5 * x * (1.0 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        case 2: return x / (1.0 + exp(-1.702 * x));
        case 3: return x > 0.0 ? x : 0.0;
        case 4: return x / (1.0 + exp(-x));
        case 5: return tanh(x);
        case 6: return 1.0 / (1.0 + exp(-x));
        default: return x;
        }
    }
}

template <typename F> __device__ __forceinline__ F warp_sum(F v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// RoPE (rotate_half) of the pair (x1, x2) = (x[i], x[i + head_dim / 2])
// at position `pos`: the angle is pos * inv_freq[i] in float32, as
// transformers computes it; cos and sin are scaled by `scaling`. The
// angle table (qtk_rope_table) holds these; the kernels apply them with
// rope_apply.
__device__ __forceinline__ void rope_cos_sin(int pos, float inv_freq, float scaling, float &cs, float &sn)
{
    sincosf((float)pos * inv_freq, &sn, &cs);
    cs *= scaling;
    sn *= scaling;
}

__device__ __forceinline__ void rope_apply(float x1, float x2, float cs, float sn, float &o1, float &o2)
{
    o1 = x1 * cs - x2 * sn;
    o2 = x2 * cs + x1 * sn;
}

static inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

static inline unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > (1 << 20)) b = 1 << 20; // kernels loop over the rest
    return (unsigned)b;
}

} // namespace qtk

#endif
