/* Regular expressions of tokenizer.json, run with PCRE2 (UTF + UCP + JIT).
 * The files are written for the Oniguruma engine of the `tokenizers`
 * library, whose escapes differ from PCRE2's in a few places; those are
 * translated so the same pattern matches the same text:
 *   \s \S   White_Space (Oniguruma includes U+0085, PCRE2's \s does not)
 *   \w \W   Alphabetic, marks, numbers, connector punctuation (PCRE2's \w
 *           lacks marks and Alphabetic symbols); inside a class only decimal
 *           numbers count, as Oniguruma does there
 *   \b \B   word boundaries with that \w
 *   \h \H   hexadecimal digits (not horizontal space)
 *   \uHHHH  a code point
 *   (?m)    Ruby's "dot matches newline", PCRE2's (?s)
 *   ^ $     line anchors, as in Ruby syntax
 * Constructs with no PCRE2 equivalent (class intersection &&, nested
 * classes, \W or \H inside a class, (?s) which Oniguruma refuses) fail with
 * a message instead of matching something else. */
#include <stdio.h>
#include <string.h>

#include "error.h"
#include "tokenizer_internal.h"

#define WORD_OUT "[\\p{Alphabetic}\\p{M}\\p{N}\\p{Pc}]"
#define NOT_WORD_OUT "[^\\p{Alphabetic}\\p{M}\\p{N}\\p{Pc}]"
#define WORD_IN "\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}"

static int put_s(tk_buf *b, const char *s)
{
    return tk_buf_put(b, s, strlen(s));
}

static int ishex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static size_t char_len(const char *p, size_t left)
{
    unsigned char c = (unsigned char)p[0];
    size_t k = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    return k > left ? left : k;
}

static int translate(const char *p, size_t n, tk_buf *out, char *err, size_t err_len)
{
    int in_class = 0;
    size_t i = 0;
#define REFUSE(...)                              \
    do {                                         \
        snprintf(err, err_len, __VA_ARGS__);     \
        return QTOOL_ERR_UNSUPPORTED;            \
    } while (0)
    while (i < n) {
        char c = p[i];
        if (c == '\\') {
            if (i + 1 >= n) REFUSE("pattern ends with a lone backslash");
            char e = p[i + 1];
            int rc = 0;
            switch (e) {
            case 's': rc = put_s(out, "\\p{White_Space}"); break;
            case 'S': rc = put_s(out, "\\P{White_Space}"); break;
            case 'w': rc = put_s(out, in_class ? WORD_IN : WORD_OUT); break;
            case 'W':
                if (in_class) REFUSE("\\W inside a character class is not supported");
                rc = put_s(out, NOT_WORD_OUT);
                break;
            case 'h': rc = put_s(out, in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"); break;
            case 'H':
                if (in_class) REFUSE("\\H inside a character class is not supported");
                rc = put_s(out, "[^0-9a-fA-F]");
                break;
            case 'b':
                rc = put_s(out, in_class ? "\\b"
                                         : "(?:(?<=" WORD_OUT ")(?!" WORD_OUT ")|(?<!" WORD_OUT
                                           ")(?=" WORD_OUT "))");
                break;
            case 'B':
                if (in_class) REFUSE("\\B inside a character class is not supported");
                rc = put_s(out, "(?:(?<=" WORD_OUT ")(?=" WORD_OUT ")|(?<!" WORD_OUT ")(?!" WORD_OUT
                                "))");
                break;
            case 'y':
            case 'Y': REFUSE("the text-segment escape \\%c is not supported", e);
            case 'u':
                if (i + 6 <= n && ishex(p[i + 2]) && ishex(p[i + 3]) &&
                    ishex(p[i + 4]) && ishex(p[i + 5])) {
                    rc = put_s(out, "\\x{") || tk_buf_put(out, p + i + 2, 4) || put_s(out, "}");
                    i += 6;
                    if (rc) return -1;
                    continue;
                }
                REFUSE("\\u must be followed by four hexadecimal digits");
            case 'Q': {
                /* Quoted text runs to \E (or the end) untouched. */
                const char *end = NULL;
                for (size_t k = i + 2; k + 1 < n; k++)
                    if (p[k] == '\\' && p[k + 1] == 'E') {
                        end = p + k + 2;
                        break;
                    }
                size_t stop = end ? (size_t)(end - p) : n;
                if (tk_buf_put(out, p + i, stop - i)) return -1;
                i = stop;
                continue;
            }
            default: {
                size_t k = char_len(p + i + 1, n - i - 1);
                rc = tk_buf_put(out, p + i, 1 + k);
                i += 1 + k;
                if (rc) return -1;
                continue;
            }
            }
            if (rc) return -1;
            i += 2;
            continue;
        }
        if (in_class) {
            if (c == ']') {
                in_class = 0;
            } else if (c == '[') {
                if (i + 1 < n && p[i + 1] == ':') {
                    /* POSIX class [:name:] */
                    const char *close = NULL;
                    for (size_t k = i + 2; k + 1 < n; k++)
                        if (p[k] == ':' && p[k + 1] == ']') {
                            close = p + k + 2;
                            break;
                        }
                    if (!close) REFUSE("unterminated POSIX class in a character class");
                    size_t stop = (size_t)(close - p);
                    if (tk_buf_put(out, p + i, stop - i)) return -1;
                    i = stop;
                    continue;
                }
                REFUSE("nested character classes are not supported");
            } else if (c == '&' && i + 1 < n && p[i + 1] == '&') {
                REFUSE("character class intersection (&&) is not supported");
            }
            size_t k = char_len(p + i, n - i);
            if (tk_buf_put(out, p + i, k)) return -1;
            i += k;
            continue;
        }
        if (c == '[') {
            in_class = 1;
            if (tk_buf_putc(out, '[')) return -1;
            i++;
            if (i < n && p[i] == '^') {
                if (tk_buf_putc(out, '^')) return -1;
                i++;
            }
            if (i < n && p[i] == ']') { /* a leading ] is literal */
                if (tk_buf_putc(out, ']')) return -1;
                i++;
            }
            continue;
        }
        if (c == '(' && i + 2 < n && p[i + 1] == '?' && p[i + 2] == '#') {
            /* A comment runs to the next ')' untouched. */
            size_t k = i + 3;
            while (k < n && p[k] != ')') k++;
            if (k < n) k++;
            if (tk_buf_put(out, p + i, k - i)) return -1;
            i = k;
            continue;
        }
        if (c == '(' && i + 1 < n && p[i + 1] == '?') {
            /* An option group (?imx-imx) or (?imx-imx:...): Ruby's m is
             * PCRE2's s. */
            size_t k = i + 2;
            while (k < n && p[k] != '\0' && strchr("imsx-", p[k])) k++;
            if (k > i + 2 && k < n && (p[k] == ')' || p[k] == ':')) {
                if (tk_buf_put(out, "(?", 2)) return -1;
                for (size_t j = i + 2; j < k; j++) {
                    char o = p[j];
                    if (o == 's') REFUSE("the group option (?s) is not supported");
                    if (tk_buf_putc(out, o == 'm' ? 's' : o)) return -1;
                }
                i = k;
                continue;
            }
        }
        size_t k = char_len(p + i, n - i);
        if (tk_buf_put(out, p + i, k)) return -1;
        i += k;
    }
#undef REFUSE
    return 0;
}

int tk_regex_compile(tk_regex *re, const char *pattern, size_t len, int mode, char *err,
                     size_t err_len)
{
    memset(re, 0, sizeof *re);
    err[0] = '\0';
    if (tk_utf8_check(pattern, len) != len) {
        snprintf(err, err_len, "pattern is not valid UTF-8");
        return QTOOL_ERR_FORMAT;
    }
    tk_buf src = {0};
    uint32_t opts = PCRE2_UTF;
    if (mode == TK_RE_LITERAL) {
        opts |= PCRE2_LITERAL; /* which allows no UCP and no MULTILINE */
        if (tk_buf_put(&src, pattern, len)) return QTOOL_ERR_OUT_OF_MEMORY;
    } else if (mode == TK_RE_PCRE2) {
        opts |= PCRE2_UCP;
        if (tk_buf_put(&src, pattern, len)) return QTOOL_ERR_OUT_OF_MEMORY;
    } else {
        opts |= PCRE2_UCP | PCRE2_MULTILINE | PCRE2_NEVER_BACKSLASH_C;
        int rc = translate(pattern, len, &src, err, err_len);
        if (rc) {
            tk_buf_free(&src);
            if (!err[0]) snprintf(err, err_len, "out of memory");
            return rc > 0 ? rc : QTOOL_ERR_OUT_OF_MEMORY;
        }
    }
    pcre2_compile_context *cc = pcre2_compile_context_create(NULL);
    if (!cc) {
        tk_buf_free(&src);
        snprintf(err, err_len, "out of memory");
        return QTOOL_ERR_OUT_OF_MEMORY;
    }
    pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
    int ec;
    PCRE2_SIZE eoff;
    re->code = pcre2_compile((PCRE2_SPTR)(src.p ? src.p : ""), src.n, opts, &ec, &eoff, cc);
    pcre2_compile_context_free(cc);
    tk_buf_free(&src);
    if (!re->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(ec, msg, sizeof msg);
        snprintf(err, err_len, "cannot compile the pattern: %s", (const char *)msg);
        return QTOOL_ERR_FORMAT;
    }
    /* Without JIT (not built in, or no executable memory) the interpreter
     * gives the same matches, only slower. */
    re->jit = pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE) == 0;
    return 0;
}

void tk_regex_free(tk_regex *re)
{
    if (re->code) pcre2_code_free(re->code);
    memset(re, 0, sizeof *re);
}

int tk_regex_spans(const tk_regex *re, tk_work *w, const char *s, size_t n, tk_spans *out)
{
    if (n == 0) return tk_spans_push(out, 0, 0, 0);
    size_t last_end = 0, prev = 0;
    size_t last_match_end = SIZE_MAX;
    while (last_end <= n) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, n, last_end, PCRE2_NO_UTF_CHECK, w->md, w->mctx);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenizer: regex matching failed: %s",
                           (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(w->md);
        size_t st = ov[0], en = ov[1];
        if (en < st) en = st; /* \K can put the start after the end */
        if (st == en && last_match_end == en) {
            /* No empty match right after the previous match: step one
             * character, as the library's iterator does. */
            if (last_end >= n) break;
            last_end += char_len(s + last_end, n - last_end);
            continue;
        }
        last_end = en;
        last_match_end = en;
        if (prev != st && tk_spans_push(out, prev, st, 0)) return -1;
        if (tk_spans_push(out, st, en, 1)) return -1;
        prev = en;
    }
    if (prev != n && tk_spans_push(out, prev, n, 0)) return -1;
    return 0;
}
