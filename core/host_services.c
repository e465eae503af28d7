#include "host_services.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "threads.h"

static void svc_log(void *ctx, int level, const char *fmt, ...) QTOOL_PRINTF(3, 4);
static void svc_log(void *ctx, int level, const char *fmt, ...)
{
    const qt_services *s = ctx;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (level < QTOOL_LOG_ERROR) level = QTOOL_LOG_ERROR;
    if (level > QTOOL_LOG_DEBUG) level = QTOOL_LOG_DEBUG;
    qt_log(level, "[%s] %s", s->plugin_name, msg);
}

static void *svc_alloc(void *ctx, int device, size_t bytes, int category)
{
    (void)ctx;
    return qt_alloc(device, bytes, category);
}

static void svc_free(void *ctx, int device, void *ptr)
{
    (void)ctx;
    qt_free(device, ptr);
}

static void svc_parallel_for(void *ctx, int64_t n, int64_t grain, qtool_parallel_fn fn, void *arg)
{
    (void)ctx;
    qt_parallel_for(n, grain, fn, arg);
}

void qt_services_init(qt_services *s, const char *plugin_name, int cuda_device, void *stream)
{
    memset(s, 0, sizeof *s);
    snprintf(s->plugin_name, sizeof s->plugin_name, "%s", plugin_name ? plugin_name : "plugin");
    s->table.struct_size = sizeof s->table;
    s->table.ctx = s;
    s->table.log = svc_log;
    s->table.alloc = svc_alloc;
    s->table.free = svc_free;
    s->table.parallel_for = svc_parallel_for;
    qt_threads_init(0);
    s->table.num_threads = qt_threads_count();
    s->table.cuda_device = cuda_device;
    s->table.cuda_stream = stream;
}
