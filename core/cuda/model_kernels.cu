// Elementwise, norm, embedding, RoPE, pooling and head kernels of the CUDA
// model backend. Memory-bound: rows are read with 16-byte accesses where
// the layout allows (8 columns per access), otherwise one element at a time.
#include "model_common.cuh"

using namespace qtk;

namespace {

// ------------------------------------------------------------ embedding

template <typename T>
__global__ void embed_kernel(const T *tok, const float *type0, const float *pos_tab, const int32_t *ids,
                             const int32_t *pos, int64_t rows, int64_t H, T *out, int64_t ldo, int vec)
{
    int64_t per_row = vec ? H / 8 : H;
    int64_t n = rows * per_row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = i / per_row, c = (i % per_row) * (vec ? 8 : 1);
        const T *src = tok + (int64_t)ids[r] * H + c;
        T *dst = out + r * ldo + c;
        if (vec) {
            float v[8];
            ld8(src, v);
            if (type0 || pos_tab) {
                const float *p = pos_tab ? pos_tab + (int64_t)pos[r] * H + c : nullptr;
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    // BERT: (words + token_type) + position, in float32.
                    if (type0) v[e] = v[e] + type0[c + e];
                    if (p) v[e] = v[e] + p[e];
                }
            }
            st8(dst, v);
        } else {
            float v = ld1(src);
            if (type0) v = v + type0[c];
            if (pos_tab) v = v + pos_tab[(int64_t)pos[r] * H + c];
            st1(dst, v);
        }
    }
}

// ---------------------------------------------------------------- norms

// One warp per row. Pass 0 (optional) adds the residual and writes the
// rounded sum back; then mean / variance (two passes, float32) and the
// normalised output. A lane touches the same columns in every pass.
template <typename T, bool VEC>
__global__ void norm_kernel(int kind, T *x, int64_t ldx, const T *res, int64_t ldr, T *out, int64_t ldo, int64_t rows,
                            int cols, const float *w, const float *b, float eps)
{
    int lane = threadIdx.x & 31;
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    T *xr = x + row * ldx;
    T *yr = out + row * ldo;
    const T *rr = res ? res + row * ldr : nullptr;
    constexpr int W = VEC ? 8 : 1;
    float sum = 0.0f;
    for (int c = lane * W; c < cols; c += 32 * W) {
        float v[W];
        if constexpr (VEC) ld8(xr + c, v);
        else v[0] = ld1(xr + c);
        if (rr) {
            float r[W];
            if constexpr (VEC) ld8(rr + c, r);
            else r[0] = ld1(rr + c);
#pragma unroll
            for (int e = 0; e < W; e++) v[e] = Cvt<T>::f(Cvt<T>::h(v[e] + r[e]));
            if constexpr (VEC) st8(xr + c, v);
            else st1(xr + c, v[0]);
        }
#pragma unroll
        for (int e = 0; e < W; e++) sum += kind == 2 ? v[e] * v[e] : v[e];
    }
    if (kind == 0) { // identity: copy (the residual, if any, is already in x)
        if (yr == xr) return;
        for (int c = lane * W; c < cols; c += 32 * W) {
            float v[W];
            if constexpr (VEC) {
                ld8(xr + c, v);
                st8(yr + c, v);
            } else {
                st1(yr + c, ld1(xr + c));
            }
        }
        return;
    }
    sum = warp_sum(sum);
    float mean = 0.0f, rstd;
    if (kind == 1) {
        mean = sum / (float)cols;
        float var = 0.0f;
        for (int c = lane * W; c < cols; c += 32 * W) {
            float v[W];
            if constexpr (VEC) ld8(xr + c, v);
            else v[0] = ld1(xr + c);
#pragma unroll
            for (int e = 0; e < W; e++) {
                float d = v[e] - mean;
                var += d * d;
            }
        }
        var = warp_sum(var) / (float)cols;
        rstd = 1.0f / sqrtf(var + eps);
    } else {
        rstd = 1.0f / sqrtf(sum / (float)cols + eps);
    }
    for (int c = lane * W; c < cols; c += 32 * W) {
        float v[W];
        if constexpr (VEC) ld8(xr + c, v);
        else v[0] = ld1(xr + c);
#pragma unroll
        for (int e = 0; e < W; e++) {
            if (kind == 1) {
                float y = (v[e] - mean) * rstd * w[c + e];
                v[e] = b ? y + b[c + e] : y;
            } else {
                v[e] = w[c + e] * (v[e] * rstd);
            }
        }
        if constexpr (VEC) st8(yr + c, v);
        else st1(yr + c, v[0]);
    }
}

// Eight float32 weights through two 16-byte loads.
__device__ __forceinline__ void ld8f(const float *p, float v[8])
{
    const float4 a = reinterpret_cast<const float4 *>(p)[0], b = reinterpret_cast<const float4 *>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}

// The same for rows of at most 256 * NCH columns (16-byte layout, weights
// and bias 16-byte aligned), held in registers: x (and the residual) read
// once, x and the output written once. A warp walks rows `warps` apart
// (the grid fills the card once): it loads the weights once for all of
// them, and the next row's 16-byte pieces are in flight while this row is
// reduced, so a row's load latency hides under the previous one's work.
// Same arithmetic, in the same order, as norm_kernel.
template <typename T, int NCH>
__global__ void norm_reg_kernel(int kind, T *x, int64_t ldx, const T *__restrict__ res, int64_t ldr,
                                T *out, int64_t ldo, int64_t rows, int cols, const float *__restrict__ w,
                                const float *__restrict__ b, float eps)
{
    const int lane = threadIdx.x & 31;
    const int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    int64_t row = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return;
    float wv[NCH][8];
    uint4 nx[NCH], nr[NCH]; // the next row's pieces of x and of the residual
#pragma unroll
    for (int k = 0; k < NCH; k++) {
        const int c = (lane + 32 * k) * 8;
        if (c < cols) {
            if (kind != 0) ld8f(w + c, wv[k]);
            nx[k] = *reinterpret_cast<const uint4 *>(x + row * ldx + c);
            if (res) nr[k] = *reinterpret_cast<const uint4 *>(res + row * ldr + c);
        }
    }
    for (; row < rows; row += warps) {
        T *xr = x + row * ldx;
        T *yr = out + row * ldo;
        float v[NCH][8];
        float sum = 0.0f;
#pragma unroll
        for (int k = 0; k < NCH; k++) {
            const int c = (lane + 32 * k) * 8;
            if (c < cols) {
                const T *px = reinterpret_cast<const T *>(&nx[k]);
#pragma unroll
                for (int e = 0; e < 8; e++) v[k][e] = Cvt<T>::f(px[e]);
                if (res) {
                    const T *pr = reinterpret_cast<const T *>(&nr[k]);
#pragma unroll
                    for (int e = 0; e < 8; e++) v[k][e] = Cvt<T>::f(Cvt<T>::h(v[k][e] + Cvt<T>::f(pr[e])));
                    st8(xr + c, v[k]);
                }
#pragma unroll
                for (int e = 0; e < 8; e++) sum += kind == 2 ? v[k][e] * v[k][e] : v[k][e];
            }
        }
        const int64_t next = row + warps;
        if (next < rows) {
#pragma unroll
            for (int k = 0; k < NCH; k++) {
                const int c = (lane + 32 * k) * 8;
                if (c < cols) {
                    nx[k] = *reinterpret_cast<const uint4 *>(x + next * ldx + c);
                    if (res) nr[k] = *reinterpret_cast<const uint4 *>(res + next * ldr + c);
                }
            }
        }
        if (kind == 0) {
            if (yr != xr) {
#pragma unroll
                for (int k = 0; k < NCH; k++) {
                    const int c = (lane + 32 * k) * 8;
                    if (c < cols) st8(yr + c, v[k]);
                }
            }
            continue;
        }
        sum = warp_sum(sum);
        float mean = 0.0f, rstd;
        if (kind == 1) {
            mean = sum / (float)cols;
            float var = 0.0f;
#pragma unroll
            for (int k = 0; k < NCH; k++) {
                const int c = (lane + 32 * k) * 8;
                if (c < cols) {
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        float d = v[k][e] - mean;
                        var += d * d;
                    }
                }
            }
            var = warp_sum(var) / (float)cols;
            rstd = 1.0f / sqrtf(var + eps);
        } else {
            rstd = 1.0f / sqrtf(sum / (float)cols + eps);
        }
#pragma unroll
        for (int k = 0; k < NCH; k++) {
            const int c = (lane + 32 * k) * 8;
            if (c < cols) {
                if (kind == 1) {
                    float bv[8];
                    if (b) ld8f(b + c, bv);
#pragma unroll
                    for (int e = 0; e < 8; e++) {
                        float y = (v[k][e] - mean) * rstd * wv[k][e];
                        v[k][e] = b ? y + bv[e] : y;
                    }
                } else {
#pragma unroll
                    for (int e = 0; e < 8; e++) v[k][e] = wv[k][e] * (v[k][e] * rstd);
                }
                st8(yr + c, v[k]);
            }
        }
    }
}

// ---------------------------------------------------------- elementwise

enum { EW_ADD = 0, EW_ACT = 1, EW_GLU = 2, EW_SCALE = 3 };

// out = f(a, b) over rows x cols; `per_row` chunks of W columns per row.
template <typename T, int OP, bool VEC>
__global__ void ew_kernel(int act, const T *a, int64_t lda, const T *b, int64_t ldb, const float *s, T *out,
                          int64_t ldo, int64_t rows, int64_t cols)
{
    // Rows on grid.y, vectors of a row on grid.x: no 64-bit division per
    // element (it costs more than the arithmetic of these kernels).
    constexpr int W = VEC ? 8 : 1;
    const int64_t per_row = cols / W;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y)
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < per_row; j += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = j * W;
        float x[W], y[W];
        if constexpr (VEC) ld8(a + r * lda + c, x);
        else x[0] = ld1(a + r * lda + c);
        if constexpr (OP == EW_ADD || OP == EW_GLU) {
            if constexpr (VEC) ld8(b + r * ldb + c, y);
            else y[0] = ld1(b + r * ldb + c);
        }
#pragma unroll
        for (int e = 0; e < W; e++) {
            if constexpr (OP == EW_ADD) x[e] = x[e] + y[e];
            else if constexpr (OP == EW_ACT) x[e] = act_apply<float>(act, x[e]);
            else if constexpr (OP == EW_GLU) x[e] = act_apply<float>(act, x[e]) * y[e];
            else x[e] = x[e] / s[c + e];
        }
        if constexpr (VEC) st8(out + r * ldo + c, x);
        else st1(out + r * ldo + c, x[0]);
    }
}

template <typename T, int OP>
int ew_launch(int act, const void *a, int64_t lda, const void *b, int64_t ldb, const float *s, void *out,
              int64_t ldo, int64_t rows, int64_t cols, void *stream)
{
    if (rows <= 0 || cols <= 0) return 0;
    bool vec = cols % 8 == 0 && lda % 8 == 0 && ldo % 8 == 0 && aligned16(a) && aligned16(out) &&
               (!b || (ldb % 8 == 0 && aligned16(b)));
    const int64_t per_row = vec ? cols / 8 : cols;
    const dim3 grid(grid_for(per_row, 256), (unsigned)(rows < 65535 ? rows : 65535));
    cudaStream_t st = (cudaStream_t)stream;
    if (vec)
        ew_kernel<T, OP, true><<<grid, 256, 0, st>>>(act, (const T *)a, lda, (const T *)b, ldb, s, (T *)out, ldo, rows,
                                                    cols);
    else
        ew_kernel<T, OP, false><<<grid, 256, 0, st>>>(act, (const T *)a, lda, (const T *)b, ldb, s, (T *)out, ldo, rows,
                                                     cols);
    return (int)cudaGetLastError();
}

// ----------------------------------------------------------------- RoPE

// (cos, sin) of every (position, frequency), one thread each.
__global__ void rope_table_kernel(const float *inv_freq, int half, float scaling, int64_t n, float2 *table)
{
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n; t += (int64_t)gridDim.x * blockDim.x) {
        float cs, sn;
        rope_cos_sin((int)(t / half), inv_freq[t % half], scaling, cs, sn);
        table[t] = make_float2(cs, sn);
    }
}

// One thread per (row, i < head_dim / 2): the angle is read once and
// applied to every head of the row.
template <typename T>
__global__ void rope_kernel(T *x, int64_t ldx, const int32_t *pos, int64_t rows, int n_heads, int head_dim,
                            const float2 *table)
{
    int half = head_dim / 2;
    int64_t n = rows * half;
    for (int64_t t = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; t < n; t += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = t / half;
        int i = (int)(t % half);
        const float2 a = table[(int64_t)pos[r] * half + i];
        T *row = x + r * ldx;
        for (int h = 0; h < n_heads; h++) {
            T *v = row + (int64_t)h * head_dim;
            float o1, o2;
            rope_apply(ld1(v + i), ld1(v + i + half), a.x, a.y, o1, o2);
            st1(v + i, o1);
            st1(v + i + half, o2);
        }
    }
}

// -------------------------------------------------------------- pooling

template <typename T>
__global__ void pool_kernel(int mode, const T *x, int64_t ldx, const int64_t *rows, const int64_t *offsets,
                            int64_t H, float *out)
{
    int64_t s = blockIdx.x;
    int64_t c = (int64_t)blockIdx.y * blockDim.x + threadIdx.x;
    if (c >= H) return;
    float v;
    if (mode == 1) {
        int64_t b = offsets[s], e = offsets[s + 1];
        float acc = 0.0f;
        for (int64_t r = b; r < e; r++) acc += ld1(x + r * ldx + c);
        v = acc / (float)(e - b);
    } else {
        v = ld1(x + rows[s] * ldx + c);
    }
    out[s * H + c] = v;
}

template <typename T>
__global__ void to_f32_kernel(const T *x, int64_t ldx, int64_t rows, int64_t cols, float *out)
{
    int64_t n = rows * cols;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        out[i] = ld1(x + (i / cols) * ldx + i % cols);
}

// ----------------------------------------------------------------- head

// One warp per output; float64 accumulation, as the host head.
__global__ void dense_f32_kernel(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t in,
                                 int64_t out)
{
    int lane = threadIdx.x & 31;
    int64_t o = (int64_t)blockIdx.y * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int64_t r = blockIdx.x;
    if (o >= out || r >= n) return;
    const float *xr = x + r * in, *wr = w + o * in;
    double acc = 0.0;
    for (int64_t k = lane; k < in; k += 32) acc += (double)wr[k] * xr[k];
    acc = warp_sum(acc);
    if (lane == 0) y[r * out + o] = (float)(b ? acc + b[o] : acc);
}

__device__ double block_sum(double v, double *sh)
{
    v = warp_sum(v);
    int w = threadIdx.x >> 5, lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) sh[w] = v;
    __syncthreads();
    double t = 0.0;
    for (int i = 0; i < nw; i++) t += sh[i];
    return t;
}

// One block per row: act, then LayerNorm / RMSNorm with float64 statistics
// (what qt_cpu_norm_row computes).
__global__ void head_act_norm_kernel(float *x, int64_t H, int act, int kind, const float *w, const float *b, float eps)
{
    __shared__ double sh[32];
    float *row = x + (int64_t)blockIdx.x * H;
    for (int64_t c = threadIdx.x; c < H; c += blockDim.x) row[c] = (float)act_apply<double>(act, (double)row[c]);
    if (kind == 0) return;
    __syncthreads();
    if (kind == 1) {
        double s = 0.0;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) s += row[c];
        double mean = block_sum(s, sh) / (double)H;
        double v = 0.0;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
            double d = row[c] - mean;
            v += d * d;
        }
        double var = block_sum(v, sh) / (double)H;
        double rstd = 1.0 / sqrt(var + (double)eps);
        __syncthreads();
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) {
            double y = (row[c] - mean) * rstd * w[c];
            if (b) y += b[c];
            row[c] = (float)y;
        }
    } else {
        double s = 0.0;
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) s += (double)row[c] * row[c];
        double ss = block_sum(s, sh);
        float r = (float)(1.0 / sqrt((double)(float)(ss / (double)H) + (double)eps));
        __syncthreads();
        for (int64_t c = threadIdx.x; c < H; c += blockDim.x) row[c] = w[c] * (row[c] * r);
    }
}

// `want` blocks, or as many as the card holds at once if fewer (the
// kernel's warps then take several rows each).
template <typename K> static unsigned reg_grid(K kernel, unsigned want, int threads)
{
    int dev = 0, sms = 0, per_sm = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0) || sms < 1 || per_sm < 1) {
        (void)cudaGetLastError(); // not the launch's error
        return want;              // one row a warp
    }
    const unsigned fill = (unsigned)sms * (unsigned)per_sm;
    return want < fill ? want : fill;
}

template <typename T>
int norm_launch(int kind, void *x, int64_t ldx, const void *res, int64_t ldr, void *out, int64_t ldo, int64_t rows,
                int64_t cols, const float *w, const float *b, float eps, cudaStream_t st)
{
    bool vec = cols % 8 == 0 && ldx % 8 == 0 && ldo % 8 == 0 && aligned16(x) && aligned16(out) &&
               (!res || (ldr % 8 == 0 && aligned16(res)));
    bool vec_w = (!w || aligned16(w)) && (!b || aligned16(b));
    const int warps = 8;
    unsigned grid = (unsigned)((rows + warps - 1) / warps);
    int64_t nch = (cols + 255) / 256;
#define NORM_REG(N)                                                                                                  \
    norm_reg_kernel<T, N><<<reg_grid(norm_reg_kernel<T, N>, grid, warps * 32), warps * 32, 0, st>>>(                 \
        kind, (T *)x, ldx, (const T *)res, ldr, (T *)out, ldo, rows, (int)cols, w, b, eps)
    if (vec && vec_w && nch <= 8) {
        if (nch <= 1) NORM_REG(1);
        else if (nch <= 2) NORM_REG(2);
        else if (nch <= 4) NORM_REG(4);
        else NORM_REG(8);
#undef NORM_REG
        return (int)cudaGetLastError();
    }
    if (vec)
        norm_kernel<T, true><<<grid, warps * 32, 0, st>>>(kind, (T *)x, ldx, (const T *)res, ldr, (T *)out, ldo, rows,
                                                          (int)cols, w, b, eps);
    else
        norm_kernel<T, false><<<grid, warps * 32, 0, st>>>(kind, (T *)x, ldx, (const T *)res, ldr, (T *)out, ldo,
                                                           rows, (int)cols, w, b, eps);
    return (int)cudaGetLastError();
}

} // namespace

// ------------------------------------------------------------- launchers

#define DISPATCH(dt, F, ...) ((dt) == QTK_BF16 ? F<__nv_bfloat16>(__VA_ARGS__) : F<__half>(__VA_ARGS__))

extern "C" int qtk_device_cc(int *major, int *minor)
{
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev);
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(minor, cudaDevAttrComputeCapabilityMinor, dev);
    return (int)e;
}

template <typename T>
static int embed_launch(const void *tok, const float *type0, const float *pos_tab, const int32_t *ids,
                        const int32_t *pos, int64_t rows, int64_t H, void *out, int64_t ldo, cudaStream_t st)
{
    int vec = H % 8 == 0 && ldo % 8 == 0 && aligned16(tok) && aligned16(out);
    int64_t n = rows * (vec ? H / 8 : H);
    embed_kernel<T><<<grid_for(n, 256), 256, 0, st>>>((const T *)tok, type0, pos_tab, ids, pos, rows, H, (T *)out,
                                                      ldo, vec);
    return (int)cudaGetLastError();
}

extern "C" int qtk_embed(int dt, const void *tok, const float *type0, const float *pos_tab, const int32_t *ids,
                         const int32_t *pos, int64_t rows, int64_t H, void *out, int64_t ld_out, void *stream)
{
    if (rows <= 0) return 0;
    return DISPATCH(dt, embed_launch, tok, type0, pos_tab, ids, pos, rows, H, out, ld_out, (cudaStream_t)stream);
}

extern "C" int qtk_norm(int dt, int kind, void *x, int64_t ldx, const void *res, int64_t ldr, void *out, int64_t ldo,
                        int64_t rows, int64_t cols, const float *weight, const float *bias, float eps, void *stream)
{
    if (rows <= 0 || cols <= 0) return 0;
    if (kind == 0 && !res && x == out) return 0;
    return DISPATCH(dt, norm_launch, kind, x, ldx, res, ldr, out, ldo, rows, cols, weight, bias, eps,
                    (cudaStream_t)stream);
}

extern "C" int qtk_add(int dt, void *x, int64_t ldx, const void *y, int64_t ldy, int64_t rows, int64_t cols,
                       void *stream)
{
    if (dt == QTK_BF16)
        return ew_launch<__nv_bfloat16, EW_ADD>(0, x, ldx, y, ldy, nullptr, x, ldx, rows, cols, stream);
    return ew_launch<__half, EW_ADD>(0, x, ldx, y, ldy, nullptr, x, ldx, rows, cols, stream);
}

extern "C" int qtk_act(int dt, int act, void *x, int64_t ldx, int64_t rows, int64_t cols, void *stream)
{
    if (dt == QTK_BF16)
        return ew_launch<__nv_bfloat16, EW_ACT>(act, x, ldx, nullptr, 0, nullptr, x, ldx, rows, cols, stream);
    return ew_launch<__half, EW_ACT>(act, x, ldx, nullptr, 0, nullptr, x, ldx, rows, cols, stream);
}

extern "C" int qtk_glu(int dt, int act, const void *a, int64_t lda, const void *b, int64_t ldb, void *out,
                       int64_t ldo, int64_t rows, int64_t cols, void *stream)
{
    if (dt == QTK_BF16)
        return ew_launch<__nv_bfloat16, EW_GLU>(act, a, lda, b, ldb, nullptr, out, ldo, rows, cols, stream);
    return ew_launch<__half, EW_GLU>(act, a, lda, b, ldb, nullptr, out, ldo, rows, cols, stream);
}

extern "C" int qtk_scale_cols(int dt, const void *x, int64_t ldx, const float *s, void *out, int64_t ldo,
                              int64_t rows, int64_t cols, void *stream)
{
    if (dt == QTK_BF16)
        return ew_launch<__nv_bfloat16, EW_SCALE>(0, x, ldx, nullptr, 0, s, out, ldo, rows, cols, stream);
    return ew_launch<__half, EW_SCALE>(0, x, ldx, nullptr, 0, s, out, ldo, rows, cols, stream);
}

template <typename T>
static int rope_launch(void *x, int64_t ldx, const int32_t *pos, int64_t rows, int n_heads, int head_dim,
                       const float *table, cudaStream_t st)
{
    int64_t n = rows * (head_dim / 2);
    rope_kernel<T><<<grid_for(n, 256), 256, 0, st>>>((T *)x, ldx, pos, rows, n_heads, head_dim,
                                                     (const float2 *)table);
    return (int)cudaGetLastError();
}

extern "C" int qtk_rope_table(const float *inv_freq, int half, float scaling, int64_t n_pos, float *table,
                              void *stream)
{
    if (n_pos <= 0 || half < 1) return 0;
    if (((uintptr_t)table & 7u) != 0) return (int)cudaErrorMisalignedAddress;
    int64_t n = n_pos * half;
    rope_table_kernel<<<grid_for(n, 256), 256, 0, (cudaStream_t)stream>>>(inv_freq, half, scaling, n,
                                                                          (float2 *)table);
    return (int)cudaGetLastError();
}

extern "C" int qtk_rope(int dt, void *x, int64_t ldx, const int32_t *pos, int64_t rows, int n_heads, int head_dim,
                        const float *rope_table, void *stream)
{
    if (rows <= 0 || head_dim < 2) return 0;
    if (((uintptr_t)rope_table & 7u) != 0) return (int)cudaErrorMisalignedAddress;
    return DISPATCH(dt, rope_launch, x, ldx, pos, rows, n_heads, head_dim, rope_table, (cudaStream_t)stream);
}

template <typename T>
static int pool_launch(int mode, const void *x, int64_t ldx, const int64_t *rows, const int64_t *offsets, int64_t n,
                       int64_t H, float *out, cudaStream_t st)
{
    dim3 grid((unsigned)n, (unsigned)((H + 255) / 256));
    pool_kernel<T><<<grid, 256, 0, st>>>(mode, (const T *)x, ldx, rows, offsets, H, out);
    return (int)cudaGetLastError();
}

extern "C" int qtk_pool(int dt, int mode, const void *x, int64_t ldx, const int64_t *rows, const int64_t *offsets,
                        int64_t n, int64_t H, float *out, void *stream)
{
    if (n <= 0 || H <= 0) return 0;
    return DISPATCH(dt, pool_launch, mode, x, ldx, rows, offsets, n, H, out, (cudaStream_t)stream);
}

extern "C" int qtk_dense_f32(const float *x, const float *w, const float *b, float *y, int64_t n, int64_t in,
                             int64_t out, void *stream)
{
    if (n <= 0 || out <= 0) return 0;
    dim3 grid((unsigned)n, (unsigned)((out + 7) / 8));
    dense_f32_kernel<<<grid, 256, 0, (cudaStream_t)stream>>>(x, w, b, y, n, in, out);
    return (int)cudaGetLastError();
}

extern "C" int qtk_head_act_norm(float *x, int64_t n, int64_t H, int act, int norm_kind, const float *weight,
                                 const float *bias, float eps, void *stream)
{
    if (n <= 0) return 0;
    head_act_norm_kernel<<<(unsigned)n, 256, 0, (cudaStream_t)stream>>>(x, H, act, norm_kind, weight, bias, eps);
    return (int)cudaGetLastError();
}

template <typename T>
static int to_f32_launch(const void *x, int64_t ldx, int64_t rows, int64_t cols, float *out, cudaStream_t st)
{
    to_f32_kernel<T><<<grid_for(rows * cols, 256), 256, 0, st>>>((const T *)x, ldx, rows, cols, out);
    return (int)cudaGetLastError();
}

extern "C" int qtk_to_f32(int dt, const void *x, int64_t ldx, int64_t rows, int64_t cols, float *out, void *stream)
{
    if (rows <= 0 || cols <= 0) return 0;
    return DISPATCH(dt, to_f32_launch, x, ldx, rows, cols, out, (cudaStream_t)stream);
}
