/* Runs saved fuzz inputs through a libFuzzer entry point without libFuzzer,
 * so every build (sanitized or not) replays the committed corpus.
 * usage: fuzz_replay_<name> FILE_OR_FOLDER... */
#include <dirent.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "fsutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_INPUT_BYTES (64u << 20)

static int replay_file(const char *path)
{
    char *buf;
    size_t len;
    if (qt_read_file(path, MAX_INPUT_BYTES, &buf, &len) != 0) {
        fprintf(stderr, "%s\n", qt_last_error());
        return -1;
    }
    /* An exact-size copy, so the sanitizers see reads past the input. */
    uint8_t *exact = malloc(len ? len : 1);
    if (!exact) {
        free(buf);
        return -1;
    }
    memcpy(exact, buf, len);
    free(buf);
    LLVMFuzzerTestOneInput(exact, len);
    free(exact);
    return 0;
}

int main(int argc, char **argv)
{
    size_t n = 0;
    for (int a = 1; a < argc; a++) {
        if (!qt_is_dir(argv[a])) {
            if (replay_file(argv[a]) != 0) return 1;
            n++;
            continue;
        }
        DIR *d = opendir(argv[a]);
        if (!d) {
            fprintf(stderr, "%s: cannot open folder\n", argv[a]);
            return 1;
        }
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            char *p = qt_path_join(argv[a], e->d_name);
            if (!p || replay_file(p) != 0) {
                free(p);
                closedir(d);
                return 1;
            }
            free(p);
            n++;
        }
        closedir(d);
    }
    if (n == 0) {
        fprintf(stderr, "no inputs replayed\n");
        return 1;
    }
    printf("replayed %zu inputs\n", n);
    return 0;
}
