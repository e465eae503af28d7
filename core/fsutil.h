/* File helpers: size-limited reads and atomic writes (temp file in the same
 * folder + fsync + rename), so no reader ever sees a partial output file. */
#ifndef QT_FSUTIL_H
#define QT_FSUTIL_H

#include <stddef.h>
#include <stdio.h>

typedef struct qt_atomic_file {
    FILE *fp;
    char *tmp_path;
    char *final_path;
} qt_atomic_file;

/* Opens a temp file next to `path` for writing. */
int qt_atomic_open(qt_atomic_file *f, const char *path);
/* Flushes, syncs and renames onto the final path; on failure removes the temp. */
int qt_atomic_commit(qt_atomic_file *f);
/* Discards the temp file. Safe after a failed commit or on a zeroed struct. */
void qt_atomic_abort(qt_atomic_file *f);

int qt_write_file_atomic(const char *path, const void *data, size_t len);
/* Reads a whole file of at most `max_bytes` into a NUL-terminated buffer
 * (free with free()). */
int qt_read_file(const char *path, size_t max_bytes, char **data, size_t *len);

int qt_is_dir(const char *path);
int qt_file_exists(const char *path);
/* mkdir -p. */
int qt_mkdirs(const char *path);
/* "dir/name" into a new string (free with free()). */
char *qt_path_join(const char *dir, const char *name);

#endif
