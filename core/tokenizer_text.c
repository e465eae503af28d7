/* Tokenizer text utilities: buffers, UTF-8, Unicode properties (through
 * utf8proc and PCRE2, no tables of our own) and the normalizers. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <utf8proc.h>

#include "error.h"
#include "tokenizer_internal.h"

/* ---- growable arrays ---------------------------------------------------- */

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) {
        if (c > SIZE_MAX / 2 / elem) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        c *= 2;
    }
    void *q = realloc(*p, c * elem);
    if (!q) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    *p = q;
    *cap = c;
    return 0;
}

int tk_buf_reserve(tk_buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->n) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    return grow((void **)&b->p, &b->cap, b->n + extra, 1);
}

void tk_buf_free(tk_buf *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

int tk_pieces_push(tk_pieces *p, size_t off, size_t len, int32_t id)
{
    if (p->n == p->cap && grow((void **)&p->v, &p->cap, p->n + 1, sizeof *p->v)) return -1;
    p->v[p->n++] = (tk_piece){off, len, id};
    return 0;
}

int tk_ids_push(tk_ids *a, int32_t id)
{
    if (a->n == a->cap && grow((void **)&a->v, &a->cap, a->n + 1, sizeof *a->v)) return -1;
    a->v[a->n++] = id;
    return 0;
}

int tk_ids_append(tk_ids *a, const int32_t *ids, size_t n)
{
    if (a->cap - a->n < n && grow((void **)&a->v, &a->cap, a->n + n, sizeof *a->v)) return -1;
    if (n) memcpy(a->v + a->n, ids, n * sizeof *ids);
    a->n += n;
    return 0;
}

int tk_spans_push(tk_spans *s, size_t start, size_t end, int is_match)
{
    if (s->n == s->cap && grow((void **)&s->v, &s->cap, s->n + 1, sizeof *s->v)) return -1;
    s->v[s->n++] = (tk_span){start, end, is_match};
    return 0;
}

/* ---- UTF-8 --------------------------------------------------------------- */

size_t tk_utf8_check(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t len;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF) {
            len = 2;
        } else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;      /* overlong */
            else if (c == 0xED) hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;      /* overlong */
            else if (c == 0xF4) hi = 0x8F; /* above U+10FFFF */
        } else {
            return i;
        }
        if (n - i < len) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k < len; k++)
            if ((s[i + k] & 0xC0) != 0x80) return i;
        i += len;
    }
    return n;
}

size_t tk_utf8_encode(int32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

size_t tk_utf8_last_len(const char *s, size_t n)
{
    size_t k = 1;
    while (k < n && k < 4 && ((unsigned char)s[n - k] & 0xC0) == 0x80) k++;
    return k;
}

/* ---- Unicode properties ---------------------------------------------------- */

/* White_Space is the space separators plus a few controls; this spells out
 * that derivation rather than a list of code points. */
int tk_is_white_space(int32_t cp)
{
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    if (cp == 0x85) return 1;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

int tk_is_bert_punct(int32_t cp)
{
    if (cp < 0x80)
        return (cp >= 33 && cp <= 47) || (cp >= 58 && cp <= 64) || (cp >= 91 && cp <= 96) ||
               (cp >= 123 && cp <= 126);
    utf8proc_category_t c = utf8proc_category(cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the
 * others take U+0100 onwards in byte order. */
static int32_t byte_cp(int b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256 + b;
    if (b <= 160) return 256 + 33 + (b - 127);
    return 256 + 67; /* 173 */
}

const uint16_t tk_byte_to_cp[256] = {
#define B1(b) (uint16_t)(((b) >= 33 && (b) <= 126) || ((b) >= 161 && (b) <= 172) || (b) >= 174 \
                             ? (b)                                                           \
                         : (b) <= 32  ? 256 + (b)                                            \
                         : (b) <= 160 ? 256 + 33 + ((b) - 127)                               \
                                      : 256 + 67)
#define B4(b) B1(b), B1(b + 1), B1(b + 2), B1(b + 3)
#define B16(b) B4(b), B4(b + 4), B4(b + 8), B4(b + 12)
    B16(0),   B16(16),  B16(32),  B16(48),  B16(64),  B16(80),  B16(96),  B16(112),
    B16(128), B16(144), B16(160), B16(176), B16(192), B16(208), B16(224), B16(240),
#undef B16
#undef B4
#undef B1
};

int tk_cp_to_byte(int32_t cp)
{
    if (cp < 0 || cp > 256 + 67) return -1;
    if (cp < 256) return byte_cp(cp) == cp ? cp : -1;
    int n = cp - 256;
    if (n <= 32) return n;
    if (n <= 66) return 127 + (n - 33);
    return 173;
}

/* ---- normalizers ------------------------------------------------------------- */

static int is_ascii(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] >= 0x80) return 0;
    return 1;
}

static int unicode_form(const char *s, size_t n, utf8proc_option_t opts, tk_buf *out)
{
    /* ASCII is its own NFC/NFD/NFKC/NFKD. */
    if (is_ascii(s, n)) return tk_buf_put(out, s, n);
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst,
                                      (utf8proc_option_t)(opts | UTF8PROC_STABLE));
    if (r < 0) {
        free(dst);
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenizer: Unicode normalization failed: %s",
                       utf8proc_errmsg(r));
    }
    int rc = tk_buf_put(out, dst, (size_t)r);
    free(dst);
    return rc;
}

/* Rust's char::to_lowercase: the simple mapping except for U+0130, the one
 * character whose unconditional full lowercase is two code points. */
static int put_lower(tk_buf *out, int32_t cp)
{
    char u[8];
    if (cp == 0x130) return tk_buf_put(out, "i\xCC\x87", 3);
    if (cp < 0x80) return tk_buf_putc(out, (char)(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp));
    return tk_buf_put(out, u, tk_utf8_encode(utf8proc_tolower(cp), u));
}

static int lowercase(const char *s, size_t n, tk_buf *out)
{
    if (tk_buf_reserve(out, n)) return -1;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += tk_utf8_next(s + i, &cp);
        if (put_lower(out, cp)) return -1;
    }
    return 0;
}

/* unicode_categories' is_other, as BERT's cleaning uses it: control,
 * format, surrogate and private use (unassigned code points stay). */
static int bert_is_control(int32_t cp)
{
    if (cp == '\t' || cp == '\n' || cp == '\r') return 0;
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_CC || c == UTF8PROC_CATEGORY_CF || c == UTF8PROC_CATEGORY_CS ||
           c == UTF8PROC_CATEGORY_CO;
}

/* The CJK ranges of the original BERT code (not a Unicode property). */
static int bert_is_chinese(int32_t c)
{
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

static int bert_normalize(const tk_norm *nm, tk_work *w, const char *s, size_t n, tk_buf *out)
{
    tk_buf *a = &w->tmp[0], *b = &w->tmp[1];
    a->n = 0;
    if (tk_buf_reserve(a, n + n / 4)) return -1;
    char u[8];
    for (size_t i = 0; i < n;) {
        int32_t cp;
        i += tk_utf8_next(s + i, &cp);
        if (nm->clean_text) {
            if (cp == 0 || cp == 0xFFFD || bert_is_control(cp)) continue;
            if (cp == '\t' || cp == '\n' || cp == '\r' || tk_is_white_space(cp)) cp = ' ';
        }
        if (nm->handle_chinese_chars && bert_is_chinese(cp)) {
            if (tk_buf_putc(a, ' ') || tk_buf_put(a, u, tk_utf8_encode(cp, u)) || tk_buf_putc(a, ' '))
                return -1;
            continue;
        }
        if (tk_buf_put(a, u, tk_utf8_encode(cp, u))) return -1;
    }
    if (nm->strip_accents) {
        b->n = 0;
        if (unicode_form(a->p, a->n, UTF8PROC_DECOMPOSE, b)) return -1;
        a->n = 0;
        for (size_t i = 0; i < b->n;) {
            int32_t cp;
            size_t k = tk_utf8_next(b->p + i, &cp);
            if (cp < 0x300 || utf8proc_category(cp) != UTF8PROC_CATEGORY_MN)
                if (tk_buf_put(a, b->p + i, k)) return -1;
            i += k;
        }
    }
    if (nm->lowercase) return lowercase(a->p, a->n, out);
    return tk_buf_put(out, a->p, a->n);
}

static int strip(const tk_norm *nm, const char *s, size_t n, tk_buf *out)
{
    size_t start = 0, end = n;
    if (nm->strip_left)
        while (start < end) {
            int32_t cp;
            size_t k = tk_utf8_next(s + start, &cp);
            if (!tk_is_white_space(cp)) break;
            start += k;
        }
    if (nm->strip_right)
        while (end > start) {
            size_t k = tk_utf8_last_len(s + start, end - start);
            int32_t cp;
            tk_utf8_next(s + end - k, &cp);
            if (!tk_is_white_space(cp)) break;
            end -= k;
        }
    return tk_buf_put(out, s + start, end - start);
}

static int replace(const tk_norm *nm, tk_work *w, const char *s, size_t n, tk_buf *out)
{
    w->spans.n = 0;
    if (tk_regex_spans(&nm->re, w, s, n, &w->spans)) return -1;
    for (size_t i = 0; i < w->spans.n; i++) {
        const tk_span *sp = &w->spans.v[i];
        if (sp->is_match) {
            if (tk_buf_put(out, nm->content, nm->content_len)) return -1;
        } else if (tk_buf_put(out, s + sp->start, sp->end - sp->start)) {
            return -1;
        }
    }
    return 0;
}

int tk_normalize_one(const tk_norm *nm, tk_work *w, const char *s, size_t n, tk_buf *out)
{
    switch (nm->kind) {
    case TK_NORM_NFC: return unicode_form(s, n, UTF8PROC_COMPOSE, out);
    case TK_NORM_NFD: return unicode_form(s, n, UTF8PROC_DECOMPOSE, out);
    case TK_NORM_NFKC: return unicode_form(s, n, UTF8PROC_COMPOSE | UTF8PROC_COMPAT, out);
    case TK_NORM_NFKD: return unicode_form(s, n, UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT, out);
    case TK_NORM_LOWERCASE: return lowercase(s, n, out);
    case TK_NORM_BERT: return bert_normalize(nm, w, s, n, out);
    case TK_NORM_STRIP: return strip(nm, s, n, out);
    case TK_NORM_REPLACE: return replace(nm, w, s, n, out);
    case TK_NORM_PREPEND:
        if (n && tk_buf_put(out, nm->content, nm->content_len)) return -1;
        return tk_buf_put(out, s, n);
    }
    return qt_fail(QTOOL_ERR_INTERNAL, "tokenizer: unknown normalizer kind %d", nm->kind);
}

/* Applies the whole normalizer chain; appends the result to `out`. */
int tk_normalize(const qt_tokenizer *tok, tk_work *w, const char *s, size_t n, tk_buf *out)
{
    if (tok->n_norms == 0) return tk_buf_put(out, s, n);
    if (tok->n_norms == 1) return tk_normalize_one(&tok->norms[0], w, s, n, out);
    /* Ping-pong through two buffers of their own: the BERT normalizer
     * uses w->tmp. */
    tk_buf *cur = &w->nseq[0], *next = &w->nseq[1];
    cur->n = 0;
    if (tk_buf_put(cur, s, n)) return -1;
    for (size_t i = 0; i < tok->n_norms; i++) {
        next->n = 0;
        if (tk_normalize_one(&tok->norms[i], w, cur->p, cur->n, next)) return -1;
        tk_buf *t = cur;
        cur = next;
        next = t;
    }
    return tk_buf_put(out, cur->p, cur->n);
}
