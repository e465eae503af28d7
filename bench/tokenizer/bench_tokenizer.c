/* Times qt_tokenizer_encode on one thread over the "text" of every line of
 * a JSONL file. Prints one JSON line: bytes, tokens, seconds of the first
 * (cold cache) pass and of the best of the following passes, as CPU time of
 * the process (steady on a shared machine) and as wall time.
 *
 *   bench_tokenizer TOKENIZER.json TEXT.jsonl [PASSES] */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "fsutil.h"
#include "tokenizer.h"

static double clock_s(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double now(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static double cpu(void)
{
    return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s TOKENIZER.json TEXT.jsonl [PASSES]\n", argv[0]);
        return 2;
    }
    int passes = argc > 3 ? atoi(argv[3]) : 3;
    if (passes < 1) passes = 1;
    double t0 = now();
    qt_tokenizer *tok;
    if (qt_tokenizer_load(argv[1], &tok)) {
        fprintf(stderr, "%s\n", qt_last_error());
        return 1;
    }
    double load_s = now() - t0;
    char *data;
    size_t len;
    if (qt_read_file(argv[2], (size_t)1 << 31, &data, &len)) {
        fprintf(stderr, "%s\n", qt_last_error());
        return 1;
    }
    /* The texts, decoded from JSON up front so only encoding is timed. */
    size_t cap = 1024, n = 0, bytes = 0;
    json_t **texts = malloc(cap * sizeof *texts);
    for (char *line = data, *end; line < data + len; line = end + 1) {
        end = memchr(line, '\n', (size_t)(data + len - line));
        if (!end) end = data + len;
        if (end == line) continue;
        json_t *o = json_loadb(line, (size_t)(end - line), JSON_ALLOW_NUL, NULL);
        json_t *t = json_object_get(o, "text");
        if (!json_is_string(t)) {
            fprintf(stderr, "%s: a line without \"text\"\n", argv[2]);
            return 1;
        }
        if (n == cap) texts = realloc(texts, (cap *= 2) * sizeof *texts);
        texts[n++] = json_incref(t);
        bytes += json_string_length(t);
        json_decref(o);
    }
    free(data);
    double first = 0, best = 1e30, first_wall = 0, best_wall = 1e30;
    size_t tokens = 0;
    for (int p = 0; p < passes + 1; p++) {
        size_t total = 0;
        double s = cpu(), sw = now();
        for (size_t i = 0; i < n; i++) {
            int32_t *ids;
            size_t m;
            if (qt_tokenizer_encode(tok, json_string_value(texts[i]), json_string_length(texts[i]), 0, &ids, &m)) {
                fprintf(stderr, "%s\n", qt_last_error());
                return 1;
            }
            total += m;
            free(ids);
        }
        double el = cpu() - s, elw = now() - sw;
        if (p == 0) {
            first = el;
            first_wall = elw;
        } else {
            if (el < best) best = el;
            if (elw < best_wall) best_wall = elw;
        }
        tokens = total;
    }
    printf("{\"bytes\": %zu, \"lines\": %zu, \"tokens\": %zu, \"load_s\": %.4f, \"first_s\": %.4f, "
           "\"best_s\": %.4f, \"first_wall_s\": %.4f, \"best_wall_s\": %.4f}\n",
           bytes, n, tokens, load_s, first, best, first_wall, best_wall);
    for (size_t i = 0; i < n; i++) json_decref(texts[i]);
    free(texts);
    qt_tokenizer_free(tok);
    return 0;
}
