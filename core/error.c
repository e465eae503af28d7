#include "error.h"

#include <stdarg.h>
#include <stdio.h>

static _Thread_local char last_error[1024];
static int log_level = QTOOL_LOG_INFO;

int qt_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return status;
}

const char *qt_last_error(void) { return last_error; }
void qt_clear_error(void) { last_error[0] = '\0'; }

void qt_set_log_level(int level) { log_level = level; }
int qt_log_level(void) { return log_level; }

void qt_log(int level, const char *fmt, ...)
{
    static const char *const names[] = {"error", "warning", "info", "debug"};
    if (level > log_level) return;
    va_list ap;
    va_start(ap, fmt);
    if (level <= QTOOL_LOG_WARN) fprintf(stderr, "qtool: %s: ", names[level]);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *qt_status_name(int status)
{
    switch (status) {
    case QTOOL_OK: return "ok";
    case QTOOL_ERR_INVALID_ARGUMENT: return "invalid argument";
    case QTOOL_ERR_UNSUPPORTED: return "unsupported";
    case QTOOL_ERR_OUT_OF_MEMORY: return "out of memory";
    case QTOOL_ERR_DEVICE: return "device error";
    case QTOOL_ERR_FORMAT: return "format error";
    case QTOOL_ERR_INTERNAL: return "internal error";
    default: return "unknown status";
    }
}
