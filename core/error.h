/* Error reporting inside the runtime: a failing function records one line
 * (thread-local) and returns a qtool_status; the CLI prints it once. */
#ifndef QT_ERROR_H
#define QT_ERROR_H

#include <qtool/plugin.h>

/* Records the message (printf-style) and returns `status`, so callers can
 * write `return qt_fail(QTOOL_ERR_FORMAT, "%s: bad header", path);`. */
int qt_fail(int status, const char *fmt, ...) QTOOL_PRINTF(2, 3);
/* The last recorded message ("" when none). */
const char *qt_last_error(void);
void qt_clear_error(void);

/* Log to stderr, filtered by the global verbosity (default INFO). */
void qt_log(int level, const char *fmt, ...) QTOOL_PRINTF(2, 3);
void qt_set_log_level(int level);
int qt_log_level(void);

const char *qt_status_name(int status);

#endif
