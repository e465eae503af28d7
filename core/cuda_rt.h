/* A small C interface to the CUDA runtime, so the rest of the host code
 * needs no CUDA headers. Built without CUDA, every call fails cleanly with
 * "built without CUDA support". All functions return 0 on success and a
 * qtool_status otherwise, with qt_last_error() set. */
#ifndef QT_CUDA_RT_H
#define QT_CUDA_RT_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

/* 1 when this build has CUDA code in it. */
int qt_cuda_built(void);
/* Number of usable CUDA devices; 0 with `why` filled when there are none
 * (no driver, no device, built without CUDA). */
int qt_cuda_device_count(char *why, size_t why_len);
int qt_cuda_device_info(int index, qtool_device_info *out);
int qt_cuda_set_device(int index);

int qt_cuda_malloc(void **p, size_t bytes);
void qt_cuda_free(void *p);
int qt_cuda_memset(void *p, int value, size_t bytes);
int qt_cuda_memcpy_h2d(void *dst, const void *src, size_t bytes);
int qt_cuda_memcpy_d2h(void *dst, const void *src, size_t bytes);
int qt_cuda_memcpy_d2d(void *dst, const void *src, size_t bytes);
int qt_cuda_mem_get_info(size_t *free_bytes, size_t *total_bytes);

int qt_cuda_stream_create(void **stream);
void qt_cuda_stream_destroy(void *stream);
int qt_cuda_stream_sync(void *stream);
int qt_cuda_device_sync(void);

/* Elapsed milliseconds of work enqueued on `stream` by `fn(arg)`. */
int qt_cuda_time_ms(void *stream, void (*fn)(void *arg), void *arg, float *ms);

/* Checks the last launch error; names `what` in the message. */
int qt_cuda_check(const char *what);

#endif
