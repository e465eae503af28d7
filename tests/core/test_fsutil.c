/* Atomic writes never leave a partial or temp file; bounded reads refuse
 * large files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

static char dir[256];

static int count_entries(void)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/qtool-fsutil-XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void test_write_and_read_back(void **state)
{
    (void)state;
    char *path = qt_path_join(dir, "a.bin");
    assert_int_equal(qt_write_file_atomic(path, "hello", 5), 0);
    assert_int_equal(qt_write_file_atomic(path, "bye", 3), 0); /* replaces */
    char *data;
    size_t n;
    assert_int_equal(qt_read_file(path, 100, &data, &n), 0);
    assert_int_equal(n, 3);
    assert_string_equal(data, "bye");
    free(data);
    assert_int_not_equal(qt_read_file(path, 2, &data, &n), 0);
    assert_non_null(strstr(qt_last_error(), "limit"));
    assert_int_equal(count_entries(), 1);
    free(path);
}

static void test_abort_leaves_nothing(void **state)
{
    (void)state;
    char *path = qt_path_join(dir, "b.bin");
    qt_atomic_file f;
    assert_int_equal(qt_atomic_open(&f, path), 0);
    fputs("partial", f.fp);
    qt_atomic_abort(&f);
    assert_false(qt_file_exists(path));
    assert_int_equal(count_entries(), 1); /* only a.bin from before */
    free(path);
}

static void test_missing_folder_is_an_error(void **state)
{
    (void)state;
    char *path = qt_path_join(dir, "no/such/c.bin");
    assert_int_not_equal(qt_write_file_atomic(path, "x", 1), 0);
    assert_non_null(strstr(qt_last_error(), "no/such/c.bin"));
    free(path);
}

static void test_mkdirs(void **state)
{
    (void)state;
    char *path = qt_path_join(dir, "x/y/z");
    assert_int_equal(qt_mkdirs(path), 0);
    assert_true(qt_is_dir(path));
    assert_int_equal(qt_mkdirs(path), 0);
    free(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_write_and_read_back),
        cmocka_unit_test(test_abort_leaves_nothing),
        cmocka_unit_test(test_missing_folder_is_an_error),
        cmocka_unit_test(test_mkdirs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
