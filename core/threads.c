#include "threads.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER, done_cv = PTHREAD_COND_INITIALIZER;
static pthread_t *workers;
static int n_threads = 1, started, stopping;
static unsigned long generation;
static pthread_mutex_t job_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static _Thread_local int in_job;

static struct {
    qtool_parallel_fn fn;
    void *arg;
    int64_t n, chunk;
    atomic_llong next;
    int active; /* workers still running this job */
} job;

static void run_chunks(void)
{
    for (;;) {
        int64_t b = atomic_fetch_add(&job.next, job.chunk);
        if (b >= job.n) break;
        int64_t e = b + job.chunk < job.n ? b + job.chunk : job.n;
        job.fn(job.arg, b, e);
    }
}

static void *worker(void *unused)
{
    (void)unused;
    unsigned long seen = 0;
    in_job = 1;
    pthread_mutex_lock(&mu);
    for (;;) {
        while (!stopping && generation == seen) pthread_cond_wait(&work_cv, &mu);
        if (stopping) break;
        seen = generation;
        pthread_mutex_unlock(&mu);
        run_chunks();
        pthread_mutex_lock(&mu);
        if (--job.active == 0) pthread_cond_signal(&done_cv);
    }
    pthread_mutex_unlock(&mu);
    return NULL;
}

int qt_threads_init(int n)
{
    pthread_mutex_lock(&mu);
    if (started) {
        pthread_mutex_unlock(&mu);
        return 0;
    }
    if (n <= 0) {
        const char *env = getenv("QTOOL_NUM_THREADS");
        n = env ? atoi(env) : (int)sysconf(_SC_NPROCESSORS_ONLN);
        if (n <= 0) n = 1;
    }
    if (n > 256) n = 256;
    workers = n > 1 ? calloc((size_t)(n - 1), sizeof *workers) : NULL;
    int made = 0;
    for (int i = 0; i < n - 1 && workers; i++) {
        if (pthread_create(&workers[i], NULL, worker, NULL) != 0) break;
        made++;
    }
    n_threads = made + 1;
    started = 1;
    pthread_mutex_unlock(&mu);
    return 0;
}

int qt_threads_count(void) { return n_threads; }

void qt_threads_shutdown(void)
{
    pthread_mutex_lock(&mu);
    if (!started) {
        pthread_mutex_unlock(&mu);
        return;
    }
    stopping = 1;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < n_threads - 1; i++) pthread_join(workers[i], NULL);
    free(workers);
    workers = NULL;
    pthread_mutex_lock(&mu);
    started = 0;
    stopping = 0;
    n_threads = 1;
    pthread_mutex_unlock(&mu);
}

void qt_parallel_for(int64_t n, int64_t grain, qtool_parallel_fn fn, void *arg)
{
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (!started) qt_threads_init(0);
    if (in_job || n_threads == 1 || n <= grain) {
        fn(arg, 0, n);
        return;
    }
    pthread_mutex_lock(&job_lock);
    /* Aim for a few chunks per thread so uneven chunks balance out. */
    int64_t chunk = (n + (int64_t)n_threads * 4 - 1) / ((int64_t)n_threads * 4);
    if (chunk < grain) chunk = grain;
    pthread_mutex_lock(&mu);
    job.fn = fn;
    job.arg = arg;
    job.n = n;
    job.chunk = chunk;
    atomic_store(&job.next, 0);
    job.active = n_threads - 1;
    generation++;
    pthread_cond_broadcast(&work_cv);
    pthread_mutex_unlock(&mu);
    in_job = 1;
    run_chunks();
    in_job = 0;
    pthread_mutex_lock(&mu);
    while (job.active > 0) pthread_cond_wait(&done_cv, &mu);
    pthread_mutex_unlock(&mu);
    pthread_mutex_unlock(&job_lock);
}
