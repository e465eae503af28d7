#include "alloc.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_rt.h"
#include "error.h"

/* Open-addressing table of live allocations: pointer -> size, category. */
typedef struct entry {
    const void *ptr;
    size_t bytes;
    int device, category;
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry *table;
static size_t table_cap, table_used, table_tombs;
static qt_mem_stats stats;
static const void *const TOMB = (const void *)1;

static size_t slot_of(const void *p, size_t cap)
{
    uint64_t h = (uint64_t)(uintptr_t)p;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    return (size_t)(h & (cap - 1));
}

static int grow(void)
{
    size_t ncap = table_cap ? table_cap * 2 : 1024;
    entry *n = calloc(ncap, sizeof *n);
    if (!n) return -1;
    for (size_t i = 0; i < table_cap; i++) {
        if (table[i].ptr && table[i].ptr != TOMB) {
            size_t s = slot_of(table[i].ptr, ncap);
            while (n[s].ptr) s = (s + 1) & (ncap - 1);
            n[s] = table[i];
        }
    }
    free(table);
    table = n;
    table_cap = ncap;
    table_tombs = 0;
    return 0;
}

static int insert(const void *p, size_t bytes, int device, int category)
{
    if ((table_used + table_tombs + 1) * 2 > table_cap && grow() != 0) return -1;
    size_t s = slot_of(p, table_cap);
    while (table[s].ptr && table[s].ptr != TOMB) s = (s + 1) & (table_cap - 1);
    if (table[s].ptr == TOMB) table_tombs--;
    table[s] = (entry){p, bytes, device, category};
    table_used++;
    return 0;
}

static entry *find(const void *p)
{
    if (!table_cap) return NULL;
    size_t s = slot_of(p, table_cap);
    while (table[s].ptr) {
        if (table[s].ptr == p) return &table[s];
        s = (s + 1) & (table_cap - 1);
    }
    return NULL;
}

static void account_add(int device, int category, size_t bytes)
{
    stats.current[device][category] += bytes;
    stats.current_total[device] += bytes;
    stats.n_allocs[device]++;
    if (stats.current_total[device] > stats.peak_total[device]) {
        stats.peak_total[device] = stats.current_total[device];
        memcpy(stats.at_peak[device], stats.current[device], sizeof stats.at_peak[device]);
    }
}

void *qt_alloc(int device, size_t bytes, int category)
{
    if ((device != QTOOL_DEVICE_CPU && device != QTOOL_DEVICE_CUDA) || category < 0 ||
        category >= QTOOL_MEM_COUNT) {
        qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "allocation with bad device %d or category %d", device,
                category);
        return NULL;
    }
    void *p = NULL;
    size_t real = bytes ? bytes : 1;
    if (device == QTOOL_DEVICE_CPU) {
        size_t rounded = (real + 63) & ~(size_t)63;
        if (rounded < real) return NULL;
        p = aligned_alloc(64, rounded);
        if (!p) {
            qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of host memory allocating %zu bytes", bytes);
            return NULL;
        }
    } else {
        if (qt_cuda_malloc(&p, real) != 0) return NULL; /* message set by qt_cuda_malloc */
    }
    pthread_mutex_lock(&lock);
    int rc = insert(p, bytes, device, category);
    if (rc == 0) account_add(device, category, bytes);
    pthread_mutex_unlock(&lock);
    if (rc != 0) {
        if (device == QTOOL_DEVICE_CPU) free(p);
        else qt_cuda_free(p);
        qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of host memory for the allocation table");
        return NULL;
    }
    return p;
}

void *qt_alloc_zeroed(int device, size_t bytes, int category)
{
    void *p = qt_alloc(device, bytes, category);
    if (!p) return NULL;
    if (device == QTOOL_DEVICE_CPU) {
        memset(p, 0, bytes);
    } else if (qt_cuda_memset(p, 0, bytes) != 0) {
        qt_free(device, p);
        return NULL;
    }
    return p;
}

void qt_free(int device, void *ptr)
{
    if (!ptr) return;
    pthread_mutex_lock(&lock);
    entry *e = find(ptr);
    if (!e || e->device != device) {
        pthread_mutex_unlock(&lock);
        qt_log(QTOOL_LOG_ERROR, "qt_free: %p is not a live %s allocation", ptr,
               device == QTOOL_DEVICE_CPU ? "host" : "CUDA");
        return;
    }
    stats.current[e->device][e->category] -= e->bytes;
    stats.current_total[e->device] -= e->bytes;
    e->ptr = TOMB;
    table_used--;
    table_tombs++;
    pthread_mutex_unlock(&lock);
    if (device == QTOOL_DEVICE_CPU) free(ptr);
    else qt_cuda_free(ptr);
}

int qt_alloc_info(const void *ptr, size_t *bytes, int *category)
{
    pthread_mutex_lock(&lock);
    entry *e = ptr ? find(ptr) : NULL;
    if (e) {
        if (bytes) *bytes = e->bytes;
        if (category) *category = e->category;
    }
    pthread_mutex_unlock(&lock);
    return e ? 0 : -1;
}

void qt_mem_get_stats(qt_mem_stats *out)
{
    pthread_mutex_lock(&lock);
    *out = stats;
    pthread_mutex_unlock(&lock);
}

void qt_mem_reset_peak(void)
{
    pthread_mutex_lock(&lock);
    for (int d = 0; d < 2; d++) {
        stats.peak_total[d] = stats.current_total[d];
        memcpy(stats.at_peak[d], stats.current[d], sizeof stats.at_peak[d]);
    }
    pthread_mutex_unlock(&lock);
}

const char *qt_mem_category_name(int category)
{
    static const char *const names[QTOOL_MEM_COUNT] = {
        "weights", "scales", "nested_scales", "outliers", "workspace", "activations", "other"};
    return category >= 0 && category < QTOOL_MEM_COUNT ? names[category] : "unknown";
}
