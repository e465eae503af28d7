/* Decoding ids back to text: the ByteLevel and WordPiece decoders (and a
 * Sequence of them), as the `tokenizers` library applies them. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tokenizer_internal.h"

/* Tokens as (offset, length) into one buffer. */
typedef struct toklist {
    tk_buf text;
    tk_spans spans; /* start, end; is_match unused */
} toklist;

static int toklist_add(toklist *l, const char *s, size_t n)
{
    size_t off = l->text.n;
    if (tk_buf_put(&l->text, s, n)) return -1;
    return tk_spans_push(&l->spans, off, off + n, 0);
}

static void toklist_free(toklist *l)
{
    tk_buf_free(&l->text);
    free(l->spans.v);
}

/* Rust's String::from_utf8_lossy: each maximal invalid subsequence becomes
 * one U+FFFD. */
static int utf8_lossy(const unsigned char *s, size_t n, tk_buf *out)
{
    size_t i = 0;
    while (i < n) {
        size_t ok = tk_utf8_check((const char *)s + i, n - i);
        if (tk_buf_put(out, s + i, ok)) return -1;
        i += ok;
        if (i >= n) break;
        unsigned c = s[i];
        size_t len = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) len = 2;
        else if (c >= 0xE0 && c <= 0xEF) {
            len = 3;
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            len = 4;
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        }
        size_t k = 1;
        if (len && i + 1 < n && s[i + 1] >= lo && s[i + 1] <= hi) {
            k = 2;
            while (k < len && i + k < n && (s[i + k] & 0xC0) == 0x80) k++;
        }
        if (tk_buf_put(out, "\xEF\xBF\xBD", 3)) return -1;
        i += k;
    }
    return 0;
}

static int dec_bytelevel(const toklist *in, toklist *out)
{
    tk_buf bytes = {0}, text = {0};
    int rc = 0;
    for (size_t t = 0; !rc && t < in->spans.n; t++) {
        const char *s = in->text.p + in->spans.v[t].start;
        size_t n = in->spans.v[t].end - in->spans.v[t].start;
        size_t mark = bytes.n;
        int all = 1;
        for (size_t i = 0; !rc && i < n;) {
            int32_t cp;
            i += tk_utf8_next(s + i, &cp);
            int b = tk_cp_to_byte(cp);
            if (b < 0) {
                all = 0;
                break;
            }
            rc = tk_buf_putc(&bytes, (char)b);
        }
        if (!rc && !all) {
            bytes.n = mark;
            rc = tk_buf_put(&bytes, s, n);
        }
    }
    if (!rc) rc = utf8_lossy((const unsigned char *)bytes.p, bytes.n, &text);
    if (!rc) rc = toklist_add(out, text.p ? text.p : "", text.n);
    tk_buf_free(&bytes);
    tk_buf_free(&text);
    return rc;
}

/* str::replace of every occurrence, left to right. */
static int replace_all(tk_buf *s, const char *from, const char *to, tk_buf *tmp)
{
    size_t nf = strlen(from), nt = strlen(to);
    tmp->n = 0;
    size_t i = 0;
    int changed = 0;
    while (i < s->n) {
        if (s->n - i >= nf && memcmp(s->p + i, from, nf) == 0) {
            if (tk_buf_put(tmp, to, nt)) return -1;
            i += nf;
            changed = 1;
        } else {
            if (tk_buf_putc(tmp, s->p[i])) return -1;
            i++;
        }
    }
    if (changed) {
        tk_buf t = *s;
        *s = *tmp;
        *tmp = t;
    }
    return 0;
}

static int wordpiece_cleanup(tk_buf *s, tk_buf *tmp)
{
    static const char *const rules[][2] = {{" .", "."},        {" ?", "?"},          {" !", "!"},   {" ,", ","},
                                           {" ' ", "'"},       {" n't", "n't"},      {" 'm", "'m"},
                                           {" do not", " don't"}, {" 's", "'s"},     {" 've", "'ve"},
                                           {" 're", "'re"}};
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        if (replace_all(s, rules[i][0], rules[i][1], tmp)) return -1;
    return 0;
}

static int dec_wordpiece(const tk_dec *d, const toklist *in, toklist *out)
{
    tk_buf cur = {0}, tmp = {0};
    size_t np = strlen(d->prefix);
    int rc = 0;
    for (size_t t = 0; !rc && t < in->spans.n; t++) {
        const char *s = in->text.p + in->spans.v[t].start;
        size_t n = in->spans.v[t].end - in->spans.v[t].start;
        cur.n = 0;
        if (t != 0) {
            if (n >= np && memcmp(s, d->prefix, np) == 0) {
                s += np;
                n -= np;
            } else {
                rc = tk_buf_putc(&cur, ' ');
            }
        }
        if (!rc) rc = tk_buf_put(&cur, s, n);
        if (!rc && d->cleanup) rc = wordpiece_cleanup(&cur, &tmp);
        if (!rc) rc = toklist_add(out, cur.p ? cur.p : "", cur.n);
    }
    tk_buf_free(&cur);
    tk_buf_free(&tmp);
    return rc;
}

int qt_tokenizer_decode(const qt_tokenizer *tok, const int32_t *ids, size_t n_ids, int skip_special, char **text,
                        size_t *len)
{
    *text = NULL;
    if (len) *len = 0;
    if (tok->dec_unsupported)
        return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: decoder type '%s' is not supported", tok->name,
                       tok->dec_unsupported);
    toklist cur = {0}, next = {0};
    int rc = 0;
    for (size_t i = 0; !rc && i < n_ids; i++) {
        size_t n;
        const char *s = qt_tokenizer_id_to_token(tok, ids[i], &n);
        if (!s) continue; /* unknown ids are skipped, as in the library */
        if (skip_special && tk_is_special_content(tok, s, n)) continue;
        rc = toklist_add(&cur, s, n);
    }
    for (size_t d = 0; !rc && d < tok->n_decs; d++) {
        next.text.n = 0;
        next.spans.n = 0;
        rc = tok->decs[d].kind == TK_DEC_BYTELEVEL ? dec_bytelevel(&cur, &next)
                                                   : dec_wordpiece(&tok->decs[d], &cur, &next);
        toklist t = cur;
        cur = next;
        next = t;
    }
    tk_buf out = {0};
    /* Without a decoder the tokens are joined with spaces. */
    const char *sep = tok->have_decoder ? "" : " ";
    for (size_t i = 0; !rc && i < cur.spans.n; i++) {
        if (i && *sep) rc = tk_buf_put(&out, sep, 1);
        if (!rc) rc = tk_buf_put(&out, cur.text.p + cur.spans.v[i].start, cur.spans.v[i].end - cur.spans.v[i].start);
    }
    if (!rc) rc = tk_buf_putc(&out, '\0');
    toklist_free(&cur);
    toklist_free(&next);
    if (rc) {
        tk_buf_free(&out);
        return rc < 0 ? QTOOL_ERR_OUT_OF_MEMORY : rc;
    }
    *text = out.p;
    if (len) *len = out.n - 1;
    return 0;
}
