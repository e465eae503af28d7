#include "fsutil.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

int qt_atomic_open(qt_atomic_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    size_t n = strlen(path);
    f->final_path = strdup(path);
    f->tmp_path = malloc(n + 32);
    if (!f->final_path || !f->tmp_path) {
        qt_atomic_abort(f);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    snprintf(f->tmp_path, n + 32, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(f->tmp_path);
    if (fd < 0) {
        int e = errno;
        free(f->tmp_path);
        f->tmp_path = NULL;
        qt_atomic_abort(f);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot create: %s", path, strerror(e));
    }
    fchmod(fd, 0644);
    f->fp = fdopen(fd, "wb");
    if (!f->fp) {
        close(fd);
        qt_atomic_abort(f);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot open: %s", path, strerror(errno));
    }
    return 0;
}

int qt_atomic_commit(qt_atomic_file *f)
{
    int bad = ferror(f->fp) != 0;
    bad |= fflush(f->fp) != 0;
    bad |= fsync(fileno(f->fp)) != 0;
    int e = errno;
    bad |= fclose(f->fp) != 0;
    f->fp = NULL;
    if (bad) {
        int rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: write failed: %s", f->final_path, strerror(e));
        qt_atomic_abort(f);
        return rc;
    }
    if (rename(f->tmp_path, f->final_path) != 0) {
        int rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot rename into place: %s",
                         f->final_path, strerror(errno));
        qt_atomic_abort(f);
        return rc;
    }
    free(f->tmp_path);
    free(f->final_path);
    memset(f, 0, sizeof *f);
    return 0;
}

void qt_atomic_abort(qt_atomic_file *f)
{
    if (f->fp) fclose(f->fp);
    if (f->tmp_path) unlink(f->tmp_path);
    free(f->tmp_path);
    free(f->final_path);
    memset(f, 0, sizeof *f);
}

int qt_write_file_atomic(const char *path, const void *data, size_t len)
{
    qt_atomic_file f;
    int rc = qt_atomic_open(&f, path);
    if (rc) return rc;
    if (len && fwrite(data, 1, len, f.fp) != len) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: write failed: %s", path, strerror(errno));
        qt_atomic_abort(&f);
        return rc;
    }
    return qt_atomic_commit(&f);
}

int qt_read_file(const char *path, size_t max_bytes, char **data, size_t *len)
{
    *data = NULL;
    if (len) *len = 0;
    FILE *fp = fopen(path, "rb");
    if (!fp) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max_bytes) {
        fclose(fp);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: file is %lld bytes, more than the limit of %zu",
                       path, (long long)st.st_size, max_bytes);
    }
    size_t n = (size_t)st.st_size;
    char *buf = malloc(n + 1);
    if (!buf) {
        fclose(fp);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
    }
    size_t got = fread(buf, 1, n, fp);
    fclose(fp);
    if (got != n) {
        free(buf);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: short read", path);
    }
    buf[n] = '\0';
    *data = buf;
    if (len) *len = n;
    return 0;
}

int qt_is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int qt_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

int qt_mkdirs(const char *path)
{
    char *p = strdup(path);
    if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot create: %s", p, strerror(errno));
            free(p);
            return rc;
        }
        *s = '/';
    }
    int rc = 0;
    if (mkdir(p, 0755) != 0 && errno != EEXIST)
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot create: %s", p, strerror(errno));
    else if (!qt_is_dir(p))
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: exists and is not a folder", p);
    free(p);
    return rc;
}

char *qt_path_join(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    char *s = malloc(a + b + 2);
    if (!s) return NULL;
    memcpy(s, dir, a);
    size_t o = a;
    if (a && dir[a - 1] != '/') s[o++] = '/';
    memcpy(s + o, name, b + 1);
    return s;
}
