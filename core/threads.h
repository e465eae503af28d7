/* The host's thread pool: one fixed set of workers serving parallel_for for
 * the runtime and, through qtool_host_services, for plugins. */
#ifndef QT_THREADS_H
#define QT_THREADS_H

#include <qtool/plugin.h>

/* Starts `n` threads in all (the caller counts as one); n <= 0 picks the
 * number of online CPUs, or QTOOL_NUM_THREADS when set. Idempotent. */
int qt_threads_init(int n);
int qt_threads_count(void);
void qt_threads_shutdown(void);

/* Runs fn over [0, n) in chunks of at least `grain`; blocks until done.
 * Not re-entrant: a nested call runs serially on the calling thread. */
void qt_parallel_for(int64_t n, int64_t grain, qtool_parallel_fn fn, void *arg);

#endif
