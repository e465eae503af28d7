/* JSONL evaluation data, read line by line with bounded memory. */
#include "data.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "tokenizer.h"

/* Lines longer than this are refused; one example holds at most this many
 * bytes of JSON (about two million token ids). */
#define LINE_CAP ((size_t)16 << 20)

typedef struct builder {
    const char *name;
    const qt_data_options *o;
    qt_dataset *d;
    int64_t cap_ex, cap_ids;
} builder;

static int fail_line(const builder *b, int64_t line, const char *what)
{
    return qt_fail(QTOOL_ERR_FORMAT, "%s:%" PRId64 ": %s", b->name, line, what);
}

static int64_t lookup_label(const qt_data_options *o, const char *name)
{
    if (o->label_lookup) {
        int64_t id = o->label_lookup(o->label_ctx, name);
        if (id >= 0) return id;
    }
    for (size_t i = 0; i < o->n_label_names; i++)
        if (o->label_names[i] && strcmp(o->label_names[i], name) == 0) return o->label_ids[i];
    /* A decimal string ("3") is an id. */
    char *end;
    errno = 0;
    long long v = strtoll(name, &end, 10);
    if (!errno && end != name && !*end && v >= 0 && v <= INT32_MAX) return v;
    return -1;
}

static int add_line(builder *b, const char *text, size_t len, int64_t line)
{
    const qt_data_options *o = b->o;
    qt_dataset *d = b->d;
    char msg[256];
    /* Blank lines (whitespace only) are skipped. */
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r')) i++;
    if (i == len) return 0;
    /* jansson would stop at a NUL byte and accept the text before it. */
    if (memchr(text, '\0', len)) return fail_line(b, line, "contains a NUL byte");
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        snprintf(msg, sizeof msg, "not valid JSON (column %d: %s)", err.column, err.text);
        return fail_line(b, line, msg);
    }
    int rc = 0;
    int32_t *tok_ids = NULL;
    int64_t n_text = -1, n_tok = 0; /* n_text >= 0: ids came from "text" */
    if (!json_is_object(root)) {
        rc = fail_line(b, line, "not a JSON object");
        goto out;
    }
    json_t *ids = json_object_get(root, "input_ids");
    json_t *text_v = json_object_get(root, "text");
    if ((!ids || json_is_null(ids)) && text_v) {
        if (!json_is_string(text_v)) {
            rc = fail_line(b, line, "\"text\" must be a string");
            goto out;
        }
        if (!o->tokenizer) {
            rc = fail_line(b, line, "has \"text\" but there is no tokenizer (no tokenizer.json beside the model); "
                                    "tokenize it first with 'qtool tokenize'");
            goto out;
        }
        size_t n_full = 0;
        const char *s = json_string_value(text_v);
        size_t slen = json_string_length(text_v);
        if (qt_tokenizer_encode(o->tokenizer, s, slen, 1, &tok_ids, &n_full)) {
            snprintf(msg, sizeof msg, "cannot tokenize \"text\": %s", qt_last_error());
            rc = fail_line(b, line, msg);
            goto out;
        }
        n_text = (int64_t)n_full;
        if (o->max_length > 0 && n_full > (size_t)o->max_length) {
            free(tok_ids);
            tok_ids = NULL;
            if (qt_tokenizer_encode_truncated(o->tokenizer, s, slen, 1, (size_t)o->max_length, &tok_ids, &n_full)) {
                snprintf(msg, sizeof msg, "cannot tokenize \"text\": %s", qt_last_error());
                rc = fail_line(b, line, msg);
                goto out;
            }
        }
        n_tok = (int64_t)n_full;
    } else if (!ids || !json_is_array(ids)) {
        rc = fail_line(b, line, o->tokenizer ? "no \"input_ids\" list or \"text\"" : "no \"input_ids\" list");
        goto out;
    }
    int64_t n = tok_ids || n_text >= 0 ? n_text : (int64_t)json_array_size(ids);
    if (n == 0) {
        rc = fail_line(b, line, "\"input_ids\" is empty");
        goto out;
    }
    json_t *mask = json_object_get(root, "attention_mask");
    if (n_text < 0 && mask && !json_is_null(mask)) {
        if (!json_is_array(mask) || (int64_t)json_array_size(mask) != n) {
            rc = fail_line(b, line, "\"attention_mask\" must be a list as long as \"input_ids\"");
            goto out;
        }
        for (int64_t k = 0; k < n; k++) {
            json_t *v = json_array_get(mask, (size_t)k);
            if (!json_is_integer(v) || json_integer_value(v) != 1) {
                snprintf(msg, sizeof msg,
                         "attention_mask[%" PRId64 "] is not 1: give only the real tokens (no padding)", k);
                rc = fail_line(b, line, msg);
                goto out;
            }
        }
    }
    int64_t keep = n_text >= 0 ? n_tok : o->max_length > 0 && n > o->max_length ? o->max_length : n;
    if (d->n >= QT_DATA_MAX_EXAMPLES) {
        snprintf(msg, sizeof msg, "more than %" PRId64 " examples", (int64_t)QT_DATA_MAX_EXAMPLES);
        rc = fail_line(b, line, msg);
        goto out;
    }
    if (keep > QT_DATA_MAX_TOKENS - d->n_ids) {
        snprintf(msg, sizeof msg, "more than %" PRId64 " tokens in the file", (int64_t)QT_DATA_MAX_TOKENS);
        rc = fail_line(b, line, msg);
        goto out;
    }
    if (d->n_ids + keep > b->cap_ids) {
        int64_t nc = b->cap_ids ? b->cap_ids : 4096;
        while (nc < d->n_ids + keep) nc *= 2;
        int32_t *p = realloc(d->ids, (size_t)nc * sizeof *p);
        if (!p) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", b->name);
            goto out;
        }
        d->ids = p;
        b->cap_ids = nc;
    }
    for (int64_t k = 0; k < n_tok; k++) {
        int64_t lim = o->vocab_size > 0 ? o->vocab_size : (int64_t)INT32_MAX + 1;
        if (tok_ids[k] < 0 || tok_ids[k] >= lim) {
            snprintf(msg, sizeof msg, "the tokenizer gives id %d, outside the model's vocabulary [0, %" PRId64 ")",
                     tok_ids[k], lim);
            rc = fail_line(b, line, msg);
            goto out;
        }
        d->ids[d->n_ids + k] = tok_ids[k];
    }
    for (int64_t k = 0; n_text < 0 && k < n; k++) {
        json_t *v = json_array_get(ids, (size_t)k);
        if (!json_is_integer(v)) {
            snprintf(msg, sizeof msg, "input_ids[%" PRId64 "] is not an integer", k);
            rc = fail_line(b, line, msg);
            goto out;
        }
        json_int_t id = json_integer_value(v);
        int64_t lim = o->vocab_size > 0 ? o->vocab_size : (int64_t)INT32_MAX + 1;
        if (id < 0 || id >= lim) {
            snprintf(msg, sizeof msg, "input_ids[%" PRId64 "] is %lld, outside the vocabulary [0, %" PRId64 ")", k,
                     (long long)id, lim);
            rc = fail_line(b, line, msg);
            goto out;
        }
        if (k < keep) d->ids[d->n_ids + k] = (int32_t)id;
    }
    int64_t label = QT_DATA_NO_LABEL;
    json_t *lv = json_object_get(root, "label");
    if (lv && !json_is_null(lv)) {
        if (json_is_integer(lv)) {
            label = json_integer_value(lv);
            if (label < 0 || (o->num_labels > 0 && label >= o->num_labels) || label > INT32_MAX) {
                snprintf(msg, sizeof msg, "label %lld is outside [0, %" PRId64 ")", (long long)json_integer_value(lv),
                         o->num_labels);
                rc = fail_line(b, line, msg);
                goto out;
            }
        } else if (json_is_string(lv)) {
            label = lookup_label(o, json_string_value(lv));
            if (label < 0 || (o->num_labels > 0 && label >= o->num_labels)) {
                snprintf(msg, sizeof msg, "label '%.64s' is not a class of this model", json_string_value(lv));
                rc = fail_line(b, line, msg);
                goto out;
            }
        } else {
            rc = fail_line(b, line, "\"label\" must be an integer class id or a label name");
            goto out;
        }
    }
    if (d->n >= b->cap_ex) {
        int64_t nc = b->cap_ex ? b->cap_ex * 2 : 256;
        qt_example *p = realloc(d->examples, (size_t)nc * sizeof *p);
        if (!p) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", b->name);
            goto out;
        }
        d->examples = p;
        b->cap_ex = nc;
    }
    qt_example *e = &d->examples[d->n++];
    e->offset = d->n_ids;
    e->length = keep;
    e->original_length = n;
    e->label = (int32_t)label;
    e->line = line;
    d->n_ids += keep;
    if (label != QT_DATA_NO_LABEL) d->n_labelled++;
    if (keep < n) d->n_truncated++;
    if (keep > d->max_length) d->max_length = keep;
out:
    free(tok_ids);
    json_decref(root);
    return rc;
}

static int finish(builder *b, int rc)
{
    if (!rc && b->d->n == 0) rc = qt_fail(QTOOL_ERR_FORMAT, "%s: no examples", b->name);
    if (rc) qt_dataset_free(b->d);
    return rc;
}

int qt_data_parse(const char *text, size_t len, const char *name, const qt_data_options *opts, qt_dataset *out)
{
    memset(out, 0, sizeof *out);
    builder b = {name, opts, out, 0, 0};
    size_t p = 0;
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0) p = 3; /* UTF-8 BOM */
    int64_t line = 0;
    int rc = 0;
    while (p < len && !rc) {
        line++;
        const char *nl = memchr(text + p, '\n', len - p);
        size_t e = nl ? (size_t)(nl - text) : len;
        if (e - p > LINE_CAP) {
            char msg[96];
            snprintf(msg, sizeof msg, "line longer than %zu bytes", LINE_CAP);
            rc = fail_line(&b, line, msg);
            break;
        }
        rc = add_line(&b, text + p, e - p, line);
        p = e + 1;
    }
    return finish(&b, rc);
}

int qt_data_load(const char *path, const qt_data_options *opts, qt_dataset *out)
{
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    if (!f) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        fclose(f);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: is a folder, not a JSONL file", path);
    }
    if (opts->max_file_bytes && st.st_size > 0 && (uint64_t)st.st_size > opts->max_file_bytes) {
        fclose(f);
        return qt_fail(QTOOL_ERR_FORMAT, "%s: larger than %" PRIu64 " bytes", path, opts->max_file_bytes);
    }
    builder b = {path, opts, out, 0, 0};
    size_t cap = 1 << 16, used = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    int64_t line = 0;
    int rc = 0, first = 1, too_long = 0;
    for (;;) {
        int ch = getc_unlocked(f);
        if (ch == EOF || ch == '\n') {
            if (ch == EOF && used == 0 && !too_long) break;
            line++;
            if (too_long) {
                char msg[96];
                snprintf(msg, sizeof msg, "line longer than %zu bytes", LINE_CAP);
                rc = fail_line(&b, line, msg);
                break;
            }
            const char *s = buf;
            size_t n = used;
            if (first && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
                s += 3;
                n -= 3;
            }
            first = 0;
            if ((rc = add_line(&b, s, n, line))) break;
            used = 0;
            if (ch == EOF) break;
            continue;
        }
        if (too_long) continue;
        if (used + 1 > LINE_CAP) {
            too_long = 1;
            continue;
        }
        if (used + 1 > cap) {
            size_t nc = cap * 2 > LINE_CAP ? LINE_CAP : cap * 2;
            char *p = realloc(buf, nc);
            if (!p) {
                rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
                break;
            }
            buf = p;
            cap = nc;
        }
        buf[used++] = (char)ch;
    }
    if (!rc && ferror(f)) rc = qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "%s: read error", path);
    free(buf);
    fclose(f);
    return finish(&b, rc);
}

void qt_dataset_free(qt_dataset *d)
{
    free(d->examples);
    free(d->ids);
    memset(d, 0, sizeof *d);
}
