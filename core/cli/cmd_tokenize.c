/* qtool tokenize: text to ids (and back) with a Hugging Face tokenizer.json,
 * one JSON object per line. Output is written only when every line was
 * good, so a failed run leaves nothing half-done behind. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "tokenizer.h"

/* Longest input line accepted: the text limit plus room for JSON escapes. */
#define MAX_LINE_BYTES (QT_TOKENIZER_MAX_TEXT_BYTES + (QT_TOKENIZER_MAX_TEXT_BYTES / 2))

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: qtool tokenize --tokenizer FILE.json [--special] [--max-length N] [INPUT.jsonl]\n"
            "       qtool tokenize --tokenizer FILE.json --decode [--skip-special] [INPUT.jsonl]\n\n"
            "Reads one JSON object per line, {\"text\": \"...\"}, from INPUT.jsonl (standard\n"
            "input without it) and writes one line {\"ids\": [...]} for each. Blank lines are\n"
            "skipped. Nothing is written unless every line is good.\n\n"
            "  --tokenizer FILE   a Hugging Face tokenizer.json\n"
            "  --special          add the special tokens of the post-processor\n"
            "                     ([CLS] ... [SEP], <s> ... </s>, a template)\n"
            "  --max-length N     keep at most N ids (special tokens included), cutting\n"
            "                     the text's tokens from the right\n"
            "  --decode           the reverse: lines {\"ids\": [...]} to {\"text\": \"...\"}\n"
            "  --skip-special     with --decode, leave special tokens out\n"
            "  -h, --help         this text\n");
}

/* Lines from a stream, read in large blocks. */
typedef struct line_reader {
    FILE *in;
    char *buf;
    size_t cap, start, end; /* unread bytes are buf[start..end) */
    int eof;
} line_reader;

/* The next line without its newline, as a pointer into the reader's
 * buffer; 1 when a line was read, 0 at the end, -1 on error. */
static int read_line(line_reader *r, char **line, size_t *len, const char *name, size_t line_no)
{
    size_t scan = r->start;
    for (;;) {
        char *nl = r->end > scan ? memchr(r->buf + scan, '\n', r->end - scan) : NULL;
        if (nl) {
            *line = r->buf + r->start;
            *len = (size_t)(nl - *line);
            r->start = (size_t)(nl - r->buf) + 1;
            return 1;
        }
        if (r->eof) {
            if (r->start == r->end) return 0;
            *line = r->buf + r->start;
            *len = r->end - r->start;
            r->start = r->end;
            return 1;
        }
        scan = r->end;
        if (r->end - r->start > MAX_LINE_BYTES) {
            qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: line longer than %zu bytes", name, line_no,
                    (size_t)MAX_LINE_BYTES);
            return -1;
        }
        /* Move the partial line to the front, grow when it fills the buffer. */
        if (r->start) {
            memmove(r->buf, r->buf + r->start, r->end - r->start);
            scan -= r->start;
            r->end -= r->start;
            r->start = 0;
        }
        if (r->cap - r->end < (1 << 16)) {
            size_t nc = r->cap ? r->cap * 2 : 1 << 20;
            char *p = realloc(r->buf, nc);
            if (!p) {
                qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s:%zu: out of memory", name, line_no);
                return -1;
            }
            r->buf = p;
            r->cap = nc;
        }
        size_t got = fread(r->buf + r->end, 1, r->cap - r->end, r->in);
        r->end += got;
        if (got == 0) {
            if (ferror(r->in)) {
                qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: read error: %s", name, line_no, strerror(errno));
                return -1;
            }
            r->eof = 1;
        }
    }
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r') return 0;
    return 1;
}

static int put(char **out, size_t *n, size_t *cap, const char *s, size_t k)
{
    if (*cap - *n < k) {
        size_t nc = *cap ? *cap : 1 << 16;
        while (nc - *n < k) nc *= 2;
        char *p = realloc(*out, nc);
        if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
        *out = p;
        *cap = nc;
    }
    memcpy(*out + *n, s, k);
    *n += k;
    return 0;
}

static int encode_line(const qt_tokenizer *tok, json_t *obj, const char *name, size_t line_no, int special,
                       size_t max_len, char **out, size_t *n_out, size_t *cap)
{
    json_t *text = json_object_get(obj, "text");
    if (!json_is_string(text))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: 'text' must be a string", name, line_no);
    int32_t *ids;
    size_t n;
    if (qt_tokenizer_encode_truncated(tok, json_string_value(text), json_string_length(text), special, max_len, &ids,
                                      &n))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: %s", name, line_no, qt_last_error());
    int rc = put(out, n_out, cap, "{\"ids\": [", 9);
    char num[24];
    for (size_t i = 0; !rc && i < n; i++) {
        int k = snprintf(num, sizeof num, i ? ", %d" : "%d", ids[i]);
        rc = put(out, n_out, cap, num, (size_t)k);
    }
    if (!rc) rc = put(out, n_out, cap, "]}\n", 3);
    free(ids);
    return rc;
}

static int decode_line(const qt_tokenizer *tok, json_t *obj, const char *name, size_t line_no, int skip_special,
                       char **out, size_t *n_out, size_t *cap)
{
    json_t *arr = json_object_get(obj, "ids");
    if (!json_is_array(arr))
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: 'ids' must be an array", name, line_no);
    size_t n = json_array_size(arr);
    int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenize: out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX) {
            free(ids);
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: ids[%zu] is not a token id", name, line_no, i);
        }
        ids[i] = (int32_t)json_integer_value(v);
    }
    char *text;
    size_t len;
    int rc = qt_tokenizer_decode(tok, ids, n, skip_special, &text, &len);
    free(ids);
    if (rc) return qt_fail(rc, "%s:%zu: %s", name, line_no, qt_last_error());
    json_t *o = json_pack("{s:s%}", "text", text, len);
    free(text);
    char *s = o ? json_dumps(o, 0) : NULL;
    json_decref(o);
    if (!s) return qt_fail(QTOOL_ERR_INTERNAL, "%s:%zu: cannot write the decoded text", name, line_no);
    rc = put(out, n_out, cap, s, strlen(s));
    free(s);
    if (!rc) rc = put(out, n_out, cap, "\n", 1);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"tokenizer", required_argument, NULL, 't'},
        {"special", no_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'm'},
        {"decode", no_argument, NULL, 'd'},
        {"skip-special", no_argument, NULL, 'k'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *tok_path = NULL;
    int special = 0, decode = 0, skip_special = 0;
    size_t max_len = 0;
    optind = 0;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1) {
        switch (c) {
        case 't': tok_path = optarg; break;
        case 's': special = 1; break;
        case 'd': decode = 1; break;
        case 'k': skip_special = 1; break;
        case 'm': {
            char *end;
            errno = 0;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (errno || end == optarg || *end || optarg[0] == '-' || v == 0)
                return qt_cli_usage_error(argv[0], "--max-length needs a positive integer, not '%s'", optarg);
            max_len = (size_t)v;
            break;
        }
        case 'h': usage(stdout); return QT_EXIT_OK;
        case ':': return qt_cli_usage_error(argv[0], "option '%s' needs a value", argv[optind - 1]);
        default: return qt_cli_usage_error(argv[0], "unknown option '%s'", argv[optind - 1]);
        }
    }
    if (!tok_path) return qt_cli_usage_error(argv[0], "--tokenizer FILE.json is required");
    if (argc - optind > 1) return qt_cli_usage_error(argv[0], "unexpected argument '%s'", argv[optind + 1]);
    if (decode && (special || max_len)) return qt_cli_usage_error(argv[0], "--decode takes no --special or --max-length");
    if (!decode && skip_special) return qt_cli_usage_error(argv[0], "--skip-special goes with --decode");
    const char *in_path = optind < argc ? argv[optind] : NULL;

    qt_tokenizer *tok;
    if (qt_tokenizer_load(tok_path, &tok)) return qt_cli_runtime_error();
    FILE *in = stdin;
    const char *name = in_path ? in_path : "<stdin>";
    if (in_path && !(in = fopen(in_path, "rb"))) {
        qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: %s", in_path, strerror(errno));
        qt_tokenizer_free(tok);
        return qt_cli_runtime_error();
    }
    line_reader reader = {in, NULL, 0, 0, 0, 0};
    char *line, *out = NULL;
    size_t len = 0, n_out = 0, out_cap = 0, line_no = 0;
    int rc = 0, r;
    while (!rc && (r = read_line(&reader, &line, &len, name, line_no + 1)) == 1) {
        line_no++;
        if (is_blank(line, len)) continue;
        json_error_t jerr;
        json_t *obj = json_loadb(line, len, JSON_ALLOW_NUL, &jerr);
        if (!obj || !json_is_object(obj)) {
            rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s:%zu: %s", name, line_no,
                         obj ? "not a JSON object" : jerr.text);
        } else {
            rc = decode ? decode_line(tok, obj, name, line_no, skip_special, &out, &n_out, &out_cap)
                        : encode_line(tok, obj, name, line_no, special, max_len, &out, &n_out, &out_cap);
        }
        json_decref(obj);
    }
    if (!rc && r < 0) rc = -1;
    free(reader.buf);
    if (in != stdin) fclose(in);
    qt_tokenizer_free(tok);
    if (!rc && n_out && (fwrite(out, 1, n_out, stdout) != n_out || fflush(stdout) != 0)) {
        rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenize: cannot write the output: %s", strerror(errno));
    }
    free(out);
    return rc ? qt_cli_runtime_error() : QT_EXIT_OK;
}
