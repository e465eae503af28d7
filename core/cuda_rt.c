#include "cuda_rt.h"

#include <stdio.h>
#include <string.h>

#include "error.h"

#ifdef QTOOL_HAVE_CUDA
#include <cuda_runtime_api.h>

static int cu_fail(cudaError_t e, const char *what)
{
    return qt_fail(e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE,
                   "CUDA %s failed: %s", what, cudaGetErrorString(e));
}
#define CU(call, what)                              \
    do {                                            \
        cudaError_t e_ = (call);                    \
        if (e_ != cudaSuccess) return cu_fail(e_, what); \
    } while (0)

int qt_cuda_built(void) { return 1; }

int qt_cuda_device_count(char *why, size_t why_len)
{
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        if (why) snprintf(why, why_len, "%s", cudaGetErrorString(e));
        cudaGetLastError(); /* clear the sticky-free error */
        return 0;
    }
    if (n == 0 && why) snprintf(why, why_len, "no CUDA device found");
    return n;
}

int qt_cuda_device_info(int index, qtool_device_info *out)
{
    struct cudaDeviceProp prop;
    CU(cudaGetDeviceProperties(&prop, index), "cudaGetDeviceProperties");
    memset(out, 0, sizeof *out);
    out->struct_size = sizeof *out;
    out->kind = QTOOL_DEVICE_CUDA;
    out->index = index;
    out->cc_major = prop.major;
    out->cc_minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    out->total_memory = prop.totalGlobalMem;
    out->shared_memory_per_block_optin = prop.sharedMemPerBlockOptin;
    memcpy(out->name, prop.name, sizeof out->name - 1);
    out->name[sizeof out->name - 1] = '\0';
    CU(cudaDriverGetVersion(&out->driver_version), "cudaDriverGetVersion");
    CU(cudaRuntimeGetVersion(&out->runtime_version), "cudaRuntimeGetVersion");
    return 0;
}

int qt_cuda_set_device(int index)
{
    CU(cudaSetDevice(index), "cudaSetDevice");
    return 0;
}

int qt_cuda_malloc(void **p, size_t bytes)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaSuccess) {
        *p = NULL;
        cudaGetLastError();
        return qt_fail(e == cudaErrorMemoryAllocation ? QTOOL_ERR_OUT_OF_MEMORY : QTOOL_ERR_DEVICE,
                       "cudaMalloc of %zu bytes failed: %s", bytes, cudaGetErrorString(e));
    }
    return 0;
}

void qt_cuda_free(void *p)
{
    if (p) cudaFree(p);
}

int qt_cuda_memset(void *p, int value, size_t bytes)
{
    CU(cudaMemset(p, value, bytes), "cudaMemset");
    CU(cudaDeviceSynchronize(), "cudaMemset"); /* legacy stream: see qt_cuda_memcpy_h2d */
    return 0;
}

int qt_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes)
{
    CU(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy host to device");
    /* cudaMemcpy runs on the legacy stream, which non-blocking streams do
     * not wait for, and may return before a pageable copy has landed. */
    CU(cudaDeviceSynchronize(), "cudaMemcpy host to device");
    return 0;
}

int qt_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes)
{
    /* The legacy stream does not wait for non-blocking streams either:
     * callers sync the stream that wrote `src` first. */
    CU(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy device to host");
    return 0;
}

int qt_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes)
{
    CU(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice), "cudaMemcpy device to device");
    CU(cudaDeviceSynchronize(), "cudaMemcpy device to device");
    return 0;
}

int qt_cuda_mem_get_info(size_t *free_bytes, size_t *total_bytes)
{
    CU(cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
    return 0;
}

int qt_cuda_stream_create(void **stream)
{
    cudaStream_t s;
    CU(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
    *stream = s;
    return 0;
}

void qt_cuda_stream_destroy(void *stream)
{
    if (stream) cudaStreamDestroy((cudaStream_t)stream);
}

int qt_cuda_stream_sync(void *stream)
{
    CU(cudaStreamSynchronize((cudaStream_t)stream), "cudaStreamSynchronize");
    return 0;
}

int qt_cuda_device_sync(void)
{
    CU(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
    return 0;
}

int qt_cuda_time_ms(void *stream, void (*fn)(void *arg), void *arg, float *ms)
{
    cudaEvent_t a, b;
    CU(cudaEventCreate(&a), "cudaEventCreate");
    cudaError_t e = cudaEventCreate(&b);
    if (e != cudaSuccess) {
        cudaEventDestroy(a);
        return cu_fail(e, "cudaEventCreate");
    }
    e = cudaEventRecord(a, (cudaStream_t)stream);
    if (e == cudaSuccess) {
        fn(arg);
        e = cudaEventRecord(b, (cudaStream_t)stream);
    }
    if (e == cudaSuccess) e = cudaEventSynchronize(b);
    if (e == cudaSuccess) e = cudaEventElapsedTime(ms, a, b);
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return e == cudaSuccess ? 0 : cu_fail(e, "event timing");
}

int qt_cuda_check(const char *what)
{
    CU(cudaGetLastError(), what);
    return 0;
}

#else /* !QTOOL_HAVE_CUDA */

#define NO_CUDA() qt_fail(QTOOL_ERR_UNSUPPORTED, "qtool was built without CUDA support")

int qt_cuda_built(void) { return 0; }
int qt_cuda_device_count(char *why, size_t why_len)
{
    if (why) snprintf(why, why_len, "qtool was built without CUDA support");
    return 0;
}
int qt_cuda_device_info(int index, qtool_device_info *out) { (void)index; (void)out; return NO_CUDA(); }
int qt_cuda_set_device(int index) { (void)index; return NO_CUDA(); }
int qt_cuda_malloc(void **p, size_t bytes) { (void)bytes; *p = NULL; return NO_CUDA(); }
void qt_cuda_free(void *p) { (void)p; }
int qt_cuda_memset(void *p, int v, size_t n) { (void)p; (void)v; (void)n; return NO_CUDA(); }
int qt_cuda_memcpy_h2d(void *d, const void *s, size_t n) { (void)d; (void)s; (void)n; return NO_CUDA(); }
int qt_cuda_memcpy_d2h(void *d, const void *s, size_t n) { (void)d; (void)s; (void)n; return NO_CUDA(); }
int qt_cuda_memcpy_d2d(void *d, const void *s, size_t n) { (void)d; (void)s; (void)n; return NO_CUDA(); }
int qt_cuda_mem_get_info(size_t *f, size_t *t) { (void)f; (void)t; return NO_CUDA(); }
int qt_cuda_stream_create(void **s) { *s = NULL; return NO_CUDA(); }
void qt_cuda_stream_destroy(void *s) { (void)s; }
int qt_cuda_stream_sync(void *s) { (void)s; return NO_CUDA(); }
int qt_cuda_device_sync(void) { return NO_CUDA(); }
int qt_cuda_time_ms(void *s, void (*fn)(void *), void *a, float *ms) { (void)s; (void)fn; (void)a; (void)ms; return NO_CUDA(); }
int qt_cuda_check(const char *what) { (void)what; return NO_CUDA(); }

#endif
