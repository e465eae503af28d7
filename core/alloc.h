/* The one allocator of the runtime: host and CUDA memory, accounted in bytes
 * by device and category, with current and peak figures. Plugins reach it
 * through qtool_host_services.alloc/free. Thread-safe. */
#ifndef QT_ALLOC_H
#define QT_ALLOC_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

typedef struct qt_mem_stats {
    uint64_t current[2][QTOOL_MEM_COUNT]; /* [device][category] */
    uint64_t current_total[2];            /* per device */
    uint64_t peak_total[2];               /* per device */
    /* Each category's value at the moment of the device's total peak. */
    uint64_t at_peak[2][QTOOL_MEM_COUNT];
    uint64_t n_allocs[2];
} qt_mem_stats;

/* Host memory is 64-byte aligned; CUDA memory comes from cudaMalloc.
 * Zero bytes returns a valid unique pointer. NULL on failure (with
 * qt_last_error set). */
void *qt_alloc(int device, size_t bytes, int category);
void *qt_alloc_zeroed(int device, size_t bytes, int category);
/* Frees memory from qt_alloc; NULL is ignored. Unknown pointers are a bug
 * and are reported (not freed). */
void qt_free(int device, void *ptr);

/* Size and category of a live allocation; 0 on success. */
int qt_alloc_info(const void *ptr, size_t *bytes, int *category);

void qt_mem_get_stats(qt_mem_stats *out);
/* Peak figures restart from the current state. */
void qt_mem_reset_peak(void);

const char *qt_mem_category_name(int category);

#endif
