/* Pre-tokenizers: cut normalized text into words for the model. Each step
 * reads the pieces of one buffer and writes those of the other. */
#include <string.h>

#include <utf8proc.h>

#include "error.h"
#include "tokenizer_internal.h"

static int push_text(tk_buf *out_buf, tk_pieces *out, const char *s, size_t len)
{
    if (len == 0) return 0; /* the library drops empty splits */
    size_t off = out_buf->n;
    if (tk_buf_put(out_buf, s, len)) return -1;
    return tk_pieces_push(out, off, len, -1);
}

int tk_apply_behavior(const tk_spans *spans, int behavior, tk_spans *scratch, const char *s,
                      tk_buf *out_buf, tk_pieces *out)
{
    const tk_span *v = spans->v;
    size_t n = spans->n;
    switch (behavior) {
    case TK_SPLIT_ISOLATED:
        for (size_t i = 0; i < n; i++)
            if (push_text(out_buf, out, s + v[i].start, v[i].end - v[i].start)) return -1;
        return 0;
    case TK_SPLIT_REMOVED:
        for (size_t i = 0; i < n; i++)
            if (!v[i].is_match && push_text(out_buf, out, s + v[i].start, v[i].end - v[i].start))
                return -1;
        return 0;
    case TK_SPLIT_CONTIGUOUS:
    case TK_SPLIT_MERGED_WITH_PREVIOUS: {
        /* Folds from the left as the library does: a span joins the one
         * before it when both are matches/non-matches (Contiguous), or when
         * it is a match following a non-match (MergedWithPrevious). */
        scratch->n = 0;
        int prev_match = 0;
        for (size_t i = 0; i < n; i++) {
            int join = behavior == TK_SPLIT_CONTIGUOUS ? v[i].is_match == prev_match
                                                       : (v[i].is_match && !prev_match);
            if (join && scratch->n) scratch->v[scratch->n - 1].end = v[i].end;
            else if (tk_spans_push(scratch, v[i].start, v[i].end, 0)) return -1;
            prev_match = v[i].is_match;
        }
        for (size_t i = 0; i < scratch->n; i++)
            if (push_text(out_buf, out, s + scratch->v[i].start, scratch->v[i].end - scratch->v[i].start))
                return -1;
        return 0;
    }
    case TK_SPLIT_MERGED_WITH_NEXT: {
        scratch->n = 0;
        int prev_match = 0;
        for (size_t i = n; i-- > 0;) {
            if (v[i].is_match && !prev_match && scratch->n) scratch->v[scratch->n - 1].start = v[i].start;
            else if (tk_spans_push(scratch, v[i].start, v[i].end, 0)) return -1;
            prev_match = v[i].is_match;
        }
        for (size_t i = scratch->n; i-- > 0;)
            if (push_text(out_buf, out, s + scratch->v[i].start, scratch->v[i].end - scratch->v[i].start))
                return -1;
        return 0;
    }
    }
    return qt_fail(QTOOL_ERR_INTERNAL, "tokenizer: unknown split behaviour %d", behavior);
}

/* Spans of a character predicate: every matching character is a match of
 * its own, as the library's char patterns are. */
static int char_spans(const char *s, size_t n, int (*pred)(int32_t), tk_spans *out)
{
    size_t last = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = tk_utf8_next(s + i, &cp);
        if (pred(cp)) {
            if (last < i && tk_spans_push(out, last, i, 0)) return -1;
            if (tk_spans_push(out, i, i + k, 1)) return -1;
            last = i + k;
        }
        i += k;
    }
    if (n > last && tk_spans_push(out, last, n, 0)) return -1;
    return 0;
}

/* Rust's char::is_numeric: any N category. */
static int is_numeric(int32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category(cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

/* Byte-level mapping: each byte becomes one character of GPT-2's alphabet. */
static int push_bytelevel(tk_buf *out_buf, tk_pieces *out, const char *s, size_t len)
{
    if (len == 0) return 0;
    size_t off = out_buf->n;
    if (tk_buf_reserve(out_buf, 2 * len)) return -1;
    char *o = out_buf->p + out_buf->n;
    for (size_t i = 0; i < len; i++) {
        unsigned cp = tk_byte_to_cp[(unsigned char)s[i]];
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else {
            *o++ = (char)(0xC0 | (cp >> 6));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    out_buf->n = (size_t)(o - out_buf->p);
    return tk_pieces_push(out, off, out_buf->n - off, -1);
}

static int bert_step(const char *s, size_t n, tk_buf *out_buf, tk_pieces *out)
{
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = tk_utf8_next(s + i, &cp);
        if (tk_is_white_space(cp)) {
            if (push_text(out_buf, out, s + start, i - start)) return -1;
            start = i + k;
        } else if (tk_is_bert_punct(cp)) {
            if (push_text(out_buf, out, s + start, i - start)) return -1;
            if (push_text(out_buf, out, s + i, k)) return -1;
            start = i + k;
        }
        i += k;
    }
    return push_text(out_buf, out, s + start, n - start);
}

static int whitespace_split_step(const char *s, size_t n, tk_buf *out_buf, tk_pieces *out)
{
    size_t start = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = tk_utf8_next(s + i, &cp);
        if (tk_is_white_space(cp)) {
            if (push_text(out_buf, out, s + start, i - start)) return -1;
            start = i + k;
        }
        i += k;
    }
    return push_text(out_buf, out, s + start, n - start);
}

static int step(const qt_tokenizer *tok, const tk_pretok *pt, tk_work *w, const char *s, size_t n,
                tk_buf *out_buf, tk_pieces *out)
{
    switch (pt->kind) {
    case TK_PRE_SPLIT:
    case TK_PRE_WHITESPACE: {
        w->spans.n = 0;
        if (tk_regex_spans(&pt->re, w, s, n, &w->spans)) return -1;
        int behavior = pt->behavior;
        int invert = pt->invert;
        if (pt->kind == TK_PRE_WHITESPACE) { /* keep the matches of \w+|[^\w\s]+ */
            behavior = TK_SPLIT_REMOVED;
            invert = 1;
        }
        if (invert)
            for (size_t i = 0; i < w->spans.n; i++) w->spans.v[i].is_match = !w->spans.v[i].is_match;
        return tk_apply_behavior(&w->spans, behavior, &w->spans2, s, out_buf, out);
    }
    case TK_PRE_BYTELEVEL: {
        const char *src = s;
        size_t len = n;
        if (pt->add_prefix_space && s[0] != ' ') {
            w->word.n = 0;
            if (tk_buf_putc(&w->word, ' ') || tk_buf_put(&w->word, s, n)) return -1;
            src = w->word.p;
            len = w->word.n;
        }
        if (!pt->use_regex) return push_bytelevel(out_buf, out, src, len);
        w->spans.n = 0;
        if (tk_regex_spans(&tok->gpt2_re, w, src, len, &w->spans)) return -1;
        for (size_t i = 0; i < w->spans.n; i++)
            if (push_bytelevel(out_buf, out, src + w->spans.v[i].start,
                               w->spans.v[i].end - w->spans.v[i].start))
                return -1;
        return 0;
    }
    case TK_PRE_BERT: return bert_step(s, n, out_buf, out);
    case TK_PRE_WHITESPACE_SPLIT: return whitespace_split_step(s, n, out_buf, out);
    case TK_PRE_DIGITS:
    case TK_PRE_PUNCTUATION:
        w->spans.n = 0;
        if (char_spans(s, n, pt->kind == TK_PRE_DIGITS ? is_numeric : tk_is_bert_punct, &w->spans))
            return -1;
        return tk_apply_behavior(&w->spans,
                                 pt->kind == TK_PRE_DIGITS
                                     ? (pt->individual_digits ? TK_SPLIT_ISOLATED : TK_SPLIT_CONTIGUOUS)
                                     : pt->behavior,
                                 &w->spans2, s, out_buf, out);
    }
    return qt_fail(QTOOL_ERR_INTERNAL, "tokenizer: unknown pre-tokenizer kind %d", pt->kind);
}

int tk_pretokenize(const qt_tokenizer *tok, tk_work *w)
{
    int cur = 0;
    for (size_t i = 0; i < tok->n_pretoks; i++) {
        tk_buf *in_buf = &w->buf[cur], *out_buf = &w->buf[1 - cur];
        tk_pieces *in = &w->pcs[cur], *out = &w->pcs[1 - cur];
        out_buf->n = 0;
        out->n = 0;
        for (size_t k = 0; k < in->n; k++) {
            tk_piece pc = in->v[k];
            if (pc.id >= 0) {
                if (tk_pieces_push(out, 0, 0, pc.id)) return -1;
                continue;
            }
            if (step(tok, &tok->pretoks[i], w, in_buf->p + pc.off, pc.len, out_buf, out)) return -1;
        }
        cur = 1 - cur;
    }
    if (cur) {
        tk_buf tb = w->buf[0];
        w->buf[0] = w->buf[1];
        w->buf[1] = tb;
        tk_pieces tp = w->pcs[0];
        w->pcs[0] = w->pcs[1];
        w->pcs[1] = tp;
    }
    return 0;
}
