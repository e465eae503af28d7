/* tokenizer.json: loading (every field type-checked, every component or
 * option we do not implement refused by name), added tokens, the encode
 * pipeline and the post-processors. The steps follow the `tokenizers`
 * library: added tokens are split out of the raw text, then out of each
 * normalized piece; the rest is pre-tokenized and run through the model. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "fsutil.h"
#include "tokenizer_internal.h"

/* ---- reading the file ---------------------------------------------------------- */

typedef struct loader {
    const char *name;
    qt_tokenizer *tok;
    /* Stands for U+0000 in object keys (see hide_nul_keys); 0 when unused. */
    char placeholder[4];
    int have_placeholder;
} loader;

/* A key as the file meant it: the placeholder back to NUL bytes. */
static int unhide_key(const loader *L, const char *key, size_t n, tk_buf *out)
{
    out->n = 0;
    for (size_t i = 0; i < n;) {
        if (L->have_placeholder && n - i >= 4 && memcmp(key + i, L->placeholder, 4) == 0) {
            if (tk_buf_putc(out, '\0')) return -1;
            i += 4;
        } else {
            if (tk_buf_putc(out, key[i])) return -1;
            i++;
        }
    }
    return 0;
}

static int lfail(const loader *L, int status, const char *fmt, ...) QTOOL_PRINTF(3, 4);
static int lfail(const loader *L, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return qt_fail(status, "%s: %s", L->name, msg);
}

#define BAD(...) lfail(L, QTOOL_ERR_FORMAT, __VA_ARGS__)
#define UNSUPPORTED(...) lfail(L, QTOOL_ERR_UNSUPPORTED, __VA_ARGS__)

/* Refuses keys outside `allowed` (NULL-terminated): an option we do not
 * know might change the result. */
static int check_keys(const loader *L, json_t *obj, const char *what, const char *const *allowed)
{
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(obj, key, klen, v)
    {
        (void)v;
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strlen(*a) == klen && memcmp(*a, key, klen) == 0) ok = 1;
        if (!ok) return UNSUPPORTED("%s: option '%.*s' is not supported", what, (int)klen, key);
    }
    return 0;
}

/* Optional bool: absent or null gives `def`. */
static int get_bool(const loader *L, json_t *obj, const char *key, int def, int *out, const char *what)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v)) return BAD("%s: '%s' must be true or false", what, key);
    *out = json_is_true(v);
    return 0;
}

/* Optional string: absent or null gives NULL. The copy is NUL-terminated. */
static int get_str(const loader *L, json_t *obj, const char *key, char **out, size_t *len,
                   const char *what)
{
    *out = NULL;
    if (len) *len = 0;
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) return BAD("%s: '%s' must be a string", what, key);
    size_t n = json_string_length(v);
    char *s = malloc(n + 1);
    if (!s) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    memcpy(s, json_string_value(v), n);
    s[n] = '\0';
    *out = s;
    if (len) *len = n;
    return 0;
}

static int get_int(const loader *L, json_t *v, int64_t lo, int64_t hi, int64_t *out, const char *what)
{
    if (!json_is_integer(v)) return BAD("%s must be an integer", what);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) return BAD("%s is out of range (%lld)", what, (long long)x);
    *out = (int64_t)x;
    return 0;
}

static const char *type_of(const loader *L, json_t *obj, const char *what, int *rc)
{
    *rc = 0;
    if (!json_is_object(obj)) {
        *rc = BAD("%s must be an object", what);
        return NULL;
    }
    json_t *t = json_object_get(obj, "type");
    if (!json_is_string(t)) {
        *rc = BAD("%s has no 'type'", what);
        return NULL;
    }
    return json_string_value(t);
}

static int compile_pattern(const loader *L, json_t *pat, tk_regex *re, const char *what)
{
    if (!json_is_object(pat) || json_object_size(pat) != 1)
        return BAD("%s: 'pattern' must be {\"String\": ...} or {\"Regex\": ...}", what);
    json_t *s = json_object_get(pat, "String");
    json_t *r = json_object_get(pat, "Regex");
    json_t *v = s ? s : r;
    if (!json_is_string(v)) return BAD("%s: 'pattern' must be {\"String\": ...} or {\"Regex\": ...}", what);
    char err[256];
    int rc = tk_regex_compile(re, json_string_value(v), json_string_length(v), s ? TK_RE_LITERAL : TK_RE_ONIGURUMA,
                              err, sizeof err);
    if (rc == QTOOL_ERR_UNSUPPORTED) return UNSUPPORTED("%s: regex: %s", what, err);
    if (rc) return BAD("%s: regex: %s", what, err);
    return 0;
}

static int parse_behavior(const loader *L, json_t *obj, int def, int *out, const char *what)
{
    json_t *v = json_object_get(obj, "behavior");
    if (!v) {
        if (def < 0) return BAD("%s: 'behavior' is missing", what);
        *out = def;
        return 0;
    }
    static const struct {
        const char *name;
        int value;
    } names[] = {{"Removed", TK_SPLIT_REMOVED},
                 {"Isolated", TK_SPLIT_ISOLATED},
                 {"MergedWithPrevious", TK_SPLIT_MERGED_WITH_PREVIOUS},
                 {"MergedWithNext", TK_SPLIT_MERGED_WITH_NEXT},
                 {"Contiguous", TK_SPLIT_CONTIGUOUS}};
    if (json_is_string(v))
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            if (strcmp(json_string_value(v), names[i].name) == 0) {
                *out = names[i].value;
                return 0;
            }
    return BAD("%s: unknown behavior %s", what, json_is_string(v) ? json_string_value(v) : "(not a string)");
}

/* ---- normalizers ----------------------------------------------------------------- */

static int add_norm(const loader *L, tk_norm nm)
{
    qt_tokenizer *t = L->tok;
    tk_norm *p = realloc(t->norms, (t->n_norms + 1) * sizeof *p);
    if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    t->norms = p;
    t->norms[t->n_norms++] = nm;
    return 0;
}

static int parse_normalizer(const loader *L, json_t *j, int depth)
{
    if (depth > 16) return BAD("normalizer: sequences nested too deep");
    int rc;
    const char *type = type_of(L, j, "normalizer", &rc);
    if (!type) return rc;
    tk_norm nm;
    memset(&nm, 0, sizeof nm);
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "normalizers", NULL};
        if ((rc = check_keys(L, j, "normalizer Sequence", keys))) return rc;
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr)) return BAD("normalizer Sequence: 'normalizers' must be an array");
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) if ((rc = parse_normalizer(L, e, depth + 1))) return rc;
        return 0;
    }
    static const struct {
        const char *name;
        int kind;
    } plain[] = {{"NFC", TK_NORM_NFC},
                 {"NFD", TK_NORM_NFD},
                 {"NFKC", TK_NORM_NFKC},
                 {"NFKD", TK_NORM_NFKD},
                 {"Lowercase", TK_NORM_LOWERCASE}};
    for (size_t i = 0; i < sizeof plain / sizeof plain[0]; i++)
        if (strcmp(type, plain[i].name) == 0) {
            static const char *const keys[] = {"type", NULL};
            if ((rc = check_keys(L, j, "normalizer", keys))) return rc;
            nm.kind = plain[i].kind;
            return add_norm(L, nm);
        }
    if (strcmp(type, "BertNormalizer") == 0) {
        static const char *const keys[] = {"type", "clean_text", "handle_chinese_chars", "strip_accents",
                                           "lowercase", NULL};
        const char *w = "normalizer BertNormalizer";
        if ((rc = check_keys(L, j, w, keys))) return rc;
        nm.kind = TK_NORM_BERT;
        if ((rc = get_bool(L, j, "clean_text", 1, &nm.clean_text, w)) ||
            (rc = get_bool(L, j, "handle_chinese_chars", 1, &nm.handle_chinese_chars, w)) ||
            (rc = get_bool(L, j, "lowercase", 1, &nm.lowercase, w)))
            return rc;
        /* strip_accents null means "follow lowercase". */
        if ((rc = get_bool(L, j, "strip_accents", nm.lowercase, &nm.strip_accents, w))) return rc;
        return add_norm(L, nm);
    }
    if (strcmp(type, "Strip") == 0) {
        static const char *const keys[] = {"type", "strip_left", "strip_right", NULL};
        const char *w = "normalizer Strip";
        if ((rc = check_keys(L, j, w, keys))) return rc;
        nm.kind = TK_NORM_STRIP;
        if ((rc = get_bool(L, j, "strip_left", 1, &nm.strip_left, w)) ||
            (rc = get_bool(L, j, "strip_right", 1, &nm.strip_right, w)))
            return rc;
        return add_norm(L, nm);
    }
    if (strcmp(type, "Replace") == 0 || strcmp(type, "Prepend") == 0) {
        int is_replace = type[0] == 'R';
        static const char *const rkeys[] = {"type", "pattern", "content", NULL};
        static const char *const pkeys[] = {"type", "prepend", NULL};
        const char *w = is_replace ? "normalizer Replace" : "normalizer Prepend";
        if ((rc = check_keys(L, j, w, is_replace ? rkeys : pkeys))) return rc;
        nm.kind = is_replace ? TK_NORM_REPLACE : TK_NORM_PREPEND;
        if ((rc = get_str(L, j, is_replace ? "content" : "prepend", &nm.content, &nm.content_len, w)))
            return rc;
        if (!nm.content) return BAD("%s: '%s' is missing", w, is_replace ? "content" : "prepend");
        if (is_replace && (rc = compile_pattern(L, json_object_get(j, "pattern"), &nm.re, w))) {
            free(nm.content);
            return rc;
        }
        if ((rc = add_norm(L, nm))) {
            free(nm.content);
            tk_regex_free(&nm.re);
        }
        return rc;
    }
    return UNSUPPORTED("normalizer type '%s' is not supported", type);
}

/* ---- pre-tokenizers -------------------------------------------------------------- */

static int add_pretok(const loader *L, tk_pretok pt)
{
    qt_tokenizer *t = L->tok;
    tk_pretok *p = realloc(t->pretoks, (t->n_pretoks + 1) * sizeof *p);
    if (!p) {
        tk_regex_free(&pt.re);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    }
    t->pretoks = p;
    t->pretoks[t->n_pretoks++] = pt;
    return 0;
}

static const char GPT2_PATTERN[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static int parse_pretok(const loader *L, json_t *j, int depth)
{
    if (depth > 16) return BAD("pre_tokenizer: sequences nested too deep");
    int rc;
    const char *type = type_of(L, j, "pre_tokenizer", &rc);
    if (!type) return rc;
    tk_pretok pt;
    memset(&pt, 0, sizeof pt);
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "pretokenizers", NULL};
        if ((rc = check_keys(L, j, "pre_tokenizer Sequence", keys))) return rc;
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr)) return BAD("pre_tokenizer Sequence: 'pretokenizers' must be an array");
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) if ((rc = parse_pretok(L, e, depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "Split") == 0) {
        static const char *const keys[] = {"type", "pattern", "behavior", "invert", NULL};
        const char *w = "pre_tokenizer Split";
        if ((rc = check_keys(L, j, w, keys))) return rc;
        pt.kind = TK_PRE_SPLIT;
        if ((rc = parse_behavior(L, j, -1, &pt.behavior, w)) ||
            (rc = get_bool(L, j, "invert", 0, &pt.invert, w)))
            return rc;
        if ((rc = compile_pattern(L, json_object_get(j, "pattern"), &pt.re, w))) return rc;
        return add_pretok(L, pt);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
        const char *w = "pre_tokenizer ByteLevel";
        int trim;
        if ((rc = check_keys(L, j, w, keys))) return rc;
        pt.kind = TK_PRE_BYTELEVEL;
        /* trim_offsets only moves offsets, which we do not report. */
        if ((rc = get_bool(L, j, "add_prefix_space", 1, &pt.add_prefix_space, w)) ||
            (rc = get_bool(L, j, "trim_offsets", 1, &trim, w)) ||
            (rc = get_bool(L, j, "use_regex", 1, &pt.use_regex, w)))
            return rc;
        if (pt.use_regex && !L->tok->have_gpt2_re) {
            char err[256];
            if (tk_regex_compile(&L->tok->gpt2_re, GPT2_PATTERN, strlen(GPT2_PATTERN), TK_RE_ONIGURUMA, err,
                                 sizeof err))
                return qt_fail(QTOOL_ERR_INTERNAL, "%s: GPT-2 pattern: %s", L->name, err);
            L->tok->have_gpt2_re = 1;
        }
        return add_pretok(L, pt);
    }
    if (strcmp(type, "BertPreTokenizer") == 0 || strcmp(type, "WhitespaceSplit") == 0 ||
        strcmp(type, "Whitespace") == 0) {
        static const char *const keys[] = {"type", NULL};
        if ((rc = check_keys(L, j, type, keys))) return rc;
        pt.kind = type[0] == 'B' ? TK_PRE_BERT : strlen(type) > 10 ? TK_PRE_WHITESPACE_SPLIT : TK_PRE_WHITESPACE;
        if (pt.kind == TK_PRE_WHITESPACE) {
            /* \\w+|[^\\w\\s]+ of the Rust regex crate (which this one uses,
             * not Oniguruma): \\w has Join_Control, \\s is White_Space. */
            static const char pat[] =
                "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]+"
                "|[^\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}\\p{White_Space}]+";
            char err[256];
            if (tk_regex_compile(&pt.re, pat, strlen(pat), TK_RE_PCRE2, err, sizeof err))
                return qt_fail(QTOOL_ERR_INTERNAL, "%s: Whitespace pattern: %s", L->name, err);
        }
        return add_pretok(L, pt);
    }
    if (strcmp(type, "Digits") == 0) {
        static const char *const keys[] = {"type", "individual_digits", NULL};
        if ((rc = check_keys(L, j, "pre_tokenizer Digits", keys))) return rc;
        pt.kind = TK_PRE_DIGITS;
        if ((rc = get_bool(L, j, "individual_digits", 0, &pt.individual_digits, "pre_tokenizer Digits")))
            return rc;
        return add_pretok(L, pt);
    }
    if (strcmp(type, "Punctuation") == 0) {
        static const char *const keys[] = {"type", "behavior", NULL};
        if ((rc = check_keys(L, j, "pre_tokenizer Punctuation", keys))) return rc;
        pt.kind = TK_PRE_PUNCTUATION;
        if ((rc = parse_behavior(L, j, TK_SPLIT_ISOLATED, &pt.behavior, "pre_tokenizer Punctuation")))
            return rc;
        return add_pretok(L, pt);
    }
    return UNSUPPORTED("pre_tokenizer type '%s' is not supported", type);
}

/* ---- model ------------------------------------------------------------------------- */

static int parse_vocab(const loader *L, json_t *vocab, tk_model *m, const char *what)
{
    if (!json_is_object(vocab)) return BAD("%s: 'vocab' must be an object", what);
    tk_buf keybuf = {0};
    const char *key;
    size_t klen;
    json_t *v;
    json_object_keylen_foreach(vocab, key, klen, v)
    {
        int64_t id = 0;
        char w[96];
        snprintf(w, sizeof w, "%s: vocab id of '%.40s'", what, key);
        if (get_int(L, v, 0, INT32_MAX - 1, &id, w)) {
            tk_buf_free(&keybuf);
            return -1;
        }
        if (tk_utf8_check(key, klen) != klen) {
            tk_buf_free(&keybuf);
            return BAD("%s: a vocab token is not valid UTF-8", what);
        }
        /* (key itself must stay: the foreach loop steps from it) */
        const char *tk = key;
        size_t tn = klen;
        if (L->have_placeholder) {
            if (unhide_key(L, key, klen, &keybuf)) return -1;
            tk = keybuf.p;
            tn = keybuf.n;
        }
        if (tk_strmap_put(&m->vocab, tk, tn, (int32_t)id)) {
            tk_buf_free(&keybuf);
            return -1;
        }
        if (tn > m->max_key_len) m->max_key_len = tn;
    }
    tk_buf_free(&keybuf);
    return 0;
}

static int rev_cmp(const void *a, const void *b)
{
    const struct tk_rev *x = a, *y = b;
    if (x->id != y->id) return x->id < y->id ? -1 : 1;
    return x->off < y->off ? -1 : x->off > y->off;
}

static int build_rev(const loader *L, tk_model *m)
{
    m->rev = malloc((m->vocab.n ? m->vocab.n : 1) * sizeof *m->rev);
    if (!m->rev) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    for (size_t i = 0; i < m->vocab.n; i++)
        m->rev[i] = (struct tk_rev){m->vocab.ent[i].value, m->vocab.ent[i].len, m->vocab.ent[i].off};
    m->n_rev = m->vocab.n;
    qsort(m->rev, m->n_rev, sizeof *m->rev, rev_cmp);
    return 0;
}

/* One merge: "a b" or ["a", "b"]. */
static int merge_parts(const loader *L, json_t *e, size_t i, const char **a, size_t *na, const char **b,
                       size_t *nb, int *skip)
{
    *skip = 0;
    if (json_is_string(e)) {
        const char *s = json_string_value(e);
        size_t n = json_string_length(e);
        if (n >= 8 && memcmp(s, "#version", 8) == 0) {
            *skip = 1;
            return 0;
        }
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return BAD("model BPE: merge %zu is not two tokens separated by one space", i);
        *a = s;
        *na = (size_t)(sp - s);
        *b = sp + 1;
        *nb = n - *na - 1;
        return 0;
    }
    if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
        json_is_string(json_array_get(e, 1))) {
        *a = json_string_value(json_array_get(e, 0));
        *na = json_string_length(json_array_get(e, 0));
        *b = json_string_value(json_array_get(e, 1));
        *nb = json_string_length(json_array_get(e, 1));
        return 0;
    }
    return BAD("model BPE: merge %zu must be \"a b\" or [\"a\", \"b\"]", i);
}

static int parse_bpe(const loader *L, json_t *j, tk_model *m)
{
    static const char *const keys[] = {"type", "dropout", "unk_token", "continuing_subword_prefix",
                                       "end_of_word_suffix", "fuse_unk", "byte_fallback", "ignore_merges",
                                       "vocab", "merges", NULL};
    const char *w = "model BPE";
    int rc;
    if ((rc = check_keys(L, j, w, keys))) return rc;
    m->kind = TK_MODEL_BPE;
    json_t *dropout = json_object_get(j, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return UNSUPPORTED("model BPE: dropout must be null (random merges are not supported)");
    if ((rc = get_str(L, j, "unk_token", &m->unk_token, &m->unk_len, w)) ||
        (rc = get_str(L, j, "continuing_subword_prefix", &m->prefix, &m->prefix_len, w)) ||
        (rc = get_str(L, j, "end_of_word_suffix", &m->suffix, &m->suffix_len, w)) ||
        (rc = get_bool(L, j, "fuse_unk", 0, &m->fuse_unk, w)) ||
        (rc = get_bool(L, j, "byte_fallback", 0, &m->byte_fallback, w)) ||
        (rc = get_bool(L, j, "ignore_merges", 0, &m->ignore_merges, w)))
        return rc;
    /* An empty prefix or suffix adds nothing. */
    if (m->prefix && !m->prefix_len) {
        free(m->prefix);
        m->prefix = NULL;
    }
    if (m->suffix && !m->suffix_len) {
        free(m->suffix);
        m->suffix = NULL;
    }
    if ((rc = parse_vocab(L, json_object_get(j, "vocab"), m, w))) return rc;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_token_ids[b] = tk_strmap_get(&m->vocab, name, 6);
    }
    json_t *merges = json_object_get(j, "merges");
    if (!merges) merges = json_array(); /* borrowed below; freed at the end */
    else json_incref(merges);
    if (!json_is_array(merges)) {
        json_decref(merges);
        return BAD("model BPE: 'merges' must be an array");
    }
    rc = tk_mergemap_init(&m->merges, json_array_size(merges));
    tk_buf joined = {0};
    size_t rank = 0;
    for (size_t i = 0; !rc && i < json_array_size(merges); i++) {
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        int skip;
        if ((rc = merge_parts(L, json_array_get(merges, i), i, &a, &na, &b, &nb, &skip))) break;
        if (skip) continue;
        int32_t ida = tk_strmap_get(&m->vocab, a, na), idb = tk_strmap_get(&m->vocab, b, nb);
        if (ida < 0 || idb < 0) {
            rc = BAD("model BPE: merge %zu: token '%.*s' is not in the vocabulary", i,
                     (int)(ida < 0 ? na : nb), ida < 0 ? a : b);
            break;
        }
        if (nb < m->prefix_len) {
            rc = BAD("model BPE: merge %zu: '%.*s' is shorter than continuing_subword_prefix", i, (int)nb, b);
            break;
        }
        joined.n = 0;
        if ((rc = tk_buf_put(&joined, a, na)) || (rc = tk_buf_put(&joined, b + m->prefix_len, nb - m->prefix_len)))
            break;
        int32_t idn = tk_strmap_get(&m->vocab, joined.p, joined.n);
        if (idn < 0) {
            rc = BAD("model BPE: merge %zu: the merged token '%.*s' is not in the vocabulary", i,
                     (int)joined.n, joined.p);
            break;
        }
        tk_mergemap_put(&m->merges, ida, idb, (tk_merge_val){(uint32_t)rank, idn});
        rank++;
    }
    tk_buf_free(&joined);
    json_decref(merges);
    return rc;
}

static int parse_wordpiece(const loader *L, json_t *j, tk_model *m)
{
    static const char *const keys[] = {"type", "unk_token", "continuing_subword_prefix",
                                       "max_input_chars_per_word", "vocab", NULL};
    const char *w = "model WordPiece";
    int rc;
    if ((rc = check_keys(L, j, w, keys))) return rc;
    m->kind = TK_MODEL_WORDPIECE;
    if ((rc = get_str(L, j, "unk_token", &m->unk_token, &m->unk_len, w)) ||
        (rc = get_str(L, j, "continuing_subword_prefix", &m->prefix, &m->prefix_len, w)))
        return rc;
    if (!m->unk_token && !(m->unk_token = strdup("[UNK]")))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    if (!json_object_get(j, "unk_token")) m->unk_len = 5;
    else if (json_is_null(json_object_get(j, "unk_token"))) return BAD("%s: 'unk_token' must be a string", w);
    if (!m->prefix) {
        if (json_object_get(j, "continuing_subword_prefix"))
            return BAD("%s: 'continuing_subword_prefix' must be a string", w);
        if (!(m->prefix = strdup("##"))) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        m->prefix_len = 2;
    }
    m->max_input_chars_per_word = 100;
    json_t *mx = json_object_get(j, "max_input_chars_per_word");
    if (mx) {
        int64_t v = 0;
        if (get_int(L, mx, 0, INT64_MAX, &v, "model WordPiece: max_input_chars_per_word")) return -1;
        m->max_input_chars_per_word = (size_t)v;
    }
    return parse_vocab(L, json_object_get(j, "vocab"), m, w);
}

static int parse_model(const loader *L, json_t *j)
{
    int rc;
    if (!j) return BAD("'model' is missing");
    const char *type = type_of(L, j, "model", &rc);
    if (!type) return rc;
    tk_model *m = &L->tok->model;
    if ((rc = tk_cache_init(&m->cache))) return rc;
    if (strcmp(type, "BPE") == 0) rc = parse_bpe(L, j, m);
    else if (strcmp(type, "WordPiece") == 0) rc = parse_wordpiece(L, j, m);
    else return UNSUPPORTED("model type '%s' is not supported", type);
    if (!rc) rc = build_rev(L, m);
    return rc;
}

/* ---- added tokens ---------------------------------------------------------------- */

static tk_work *work_acquire(const qt_tokenizer *tok);
static void work_release(const qt_tokenizer *tok, tk_work *w);

static int32_t model_token_to_id(const qt_tokenizer *t, const char *s, size_t n)
{
    return tk_strmap_get(&t->model.vocab, s, n);
}

static int32_t token_to_id(const qt_tokenizer *t, const char *s, size_t n)
{
    int32_t id = tk_strmap_get(&t->added_map, s, n);
    return id >= 0 ? id : model_token_to_id(t, s, n);
}

static int added_equal(const tk_added *a, const tk_added *b)
{
    return a->len == b->len && memcmp(a->content, b->content, a->len) == 0 &&
           a->single_word == b->single_word && a->lstrip == b->lstrip && a->rstrip == b->rstrip &&
           a->normalized == b->normalized && a->special == b->special;
}

/* The trie of a match set; of patterns with the same text the first one
 * listed (special tokens come first) is the one matched. */
static int build_trie(const loader *L, tk_matchset *ms)
{
    size_t total = 1;
    for (size_t i = 0; i < ms->n; i++) total += ms->pat[i].n;
    if (total > INT32_MAX) return BAD("added tokens too long");
    if (tk_mergemap_init(&ms->edges, total)) return -1;
    ms->term = malloc(total * sizeof *ms->term);
    if (!ms->term) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    ms->term[0] = -1;
    ms->n_nodes = 1;
    for (size_t i = 0; i < ms->n; i++) {
        const struct tk_pat *p = &ms->pat[i];
        int32_t node = 0;
        ms->starts[(unsigned char)p->s[0]] = 1;
        for (size_t k = 0; k < p->n; k++) {
            unsigned char b = (unsigned char)p->s[k];
            const tk_merge_val *e = tk_mergemap_get(&ms->edges, node, b);
            if (e) {
                node = e->new_id;
                continue;
            }
            int32_t child = (int32_t)ms->n_nodes++;
            ms->term[child] = -1;
            tk_mergemap_put(&ms->edges, node, b, (tk_merge_val){0, child});
            node = child;
        }
        if (ms->term[node] < 0) ms->term[node] = (int32_t)i;
    }
    return 0;
}

static const tk_added *added_by_id(const qt_tokenizer *t, int32_t id)
{
    size_t lo = 0, hi = t->n_added_rev;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (t->added_rev[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < t->n_added_rev && t->added_rev[lo].id == id) return &t->added[t->added_rev[lo].index];
    return NULL;
}

static int added_rev_cmp(const void *x, const void *y)
{
    const struct tk_added_rev *a = x, *b = y;
    return a->id < b->id ? -1 : a->id > b->id;
}

static int parse_added_tokens(const loader *L, json_t *arr)
{
    qt_tokenizer *t = L->tok;
    if (!arr || json_is_null(arr)) return 0;
    if (!json_is_array(arr)) return BAD("'added_tokens' must be an array");
    size_t n = json_array_size(arr);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    size_t *specials = malloc((n ? n : 1) * sizeof *specials), n_specials = 0;
    size_t *plain = malloc((n ? n : 1) * sizeof *plain), n_plain = 0;
    tk_strmap id_to_index = {0}; /* 4-byte id -> index into t->added */
    int64_t max_added = -1;
    int rc = 0;
    if (!t->added || !specials || !plain) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        char w[64];
        snprintf(w, sizeof w, "added_tokens[%zu]", i);
        static const char *const keys[] = {"id", "content", "single_word", "lstrip", "rstrip",
                                           "normalized", "special", NULL};
        if (!json_is_object(e)) {
            rc = BAD("%s must be an object", w);
            goto done;
        }
        tk_added tk = {0};
        int64_t file_id = 0;
        json_t *jid = json_object_get(e, "id");
        if ((rc = check_keys(L, e, w, keys)) || (rc = get_int(L, jid, 0, INT32_MAX - 1, &file_id, w)) ||
            (rc = get_bool(L, e, "single_word", 0, &tk.single_word, w)) ||
            (rc = get_bool(L, e, "lstrip", 0, &tk.lstrip, w)) || (rc = get_bool(L, e, "rstrip", 0, &tk.rstrip, w)) ||
            (rc = get_bool(L, e, "special", 0, &tk.special, w)) ||
            (rc = get_bool(L, e, "normalized", !tk.special, &tk.normalized, w)) ||
            (rc = get_str(L, e, "content", &tk.content, &tk.len, w)))
            goto done;
        if (!tk.content) {
            rc = BAD("%s: 'content' is missing", w);
            goto done;
        }
        if (tk_utf8_check(tk.content, tk.len) != tk.len) {
            free(tk.content);
            rc = BAD("%s: 'content' is not valid UTF-8", w);
            goto done;
        }
        t->added[t->n_added] = tk;
        size_t idx = t->n_added++;
        const tk_added *cur = &t->added[idx];
        /* The library's AddedVocabulary::add_tokens, one token at a time. */
        if (tk.special && tk.len && tk_strmap_get(&t->special_set, tk.content, tk.len) < 0) {
            specials[n_specials++] = idx;
            if ((rc = tk_strmap_put(&t->special_set, tk.content, tk.len, 1))) goto done;
        }
        if (!tk.len) continue;
        int32_t known = tk_strmap_get(&t->added_map, tk.content, tk.len);
        if (known >= 0) {
            int32_t at = tk_strmap_get(&id_to_index, (const char *)&known, sizeof known);
            if (at >= 0 && added_equal(&t->added[at], cur)) continue;
        }
        int32_t new_id = token_to_id(t, tk.content, tk.len);
        if (new_id < 0) {
            int64_t max = max_added; /* the largest id in added_map */
            int64_t vs = (int64_t)t->model.vocab.n;
            int64_t nid = max < 0 ? vs : (max >= vs || vs == 0) ? max + 1 : vs;
            if (nid > INT32_MAX - 1) {
                rc = BAD("%s: too many tokens", w);
                goto done;
            }
            new_id = (int32_t)nid;
        }
        if (new_id > max_added) max_added = new_id;
        if ((rc = tk_strmap_put(&t->added_map, tk.content, tk.len, new_id)) ||
            (rc = tk_strmap_put(&id_to_index, (const char *)&new_id, sizeof new_id, (int32_t)idx)))
            goto done;
        if (tk_strmap_get(&t->special_set, tk.content, tk.len) < 0) plain[n_plain++] = idx;
        if (new_id != (int32_t)file_id)
            qt_log(QTOOL_LOG_WARN, "%s: added token '%s' has id %d, not %lld as the file says", L->name,
                   tk.content, new_id, (long long)file_id);
    }
    /* id -> token (the latest one given that id), sorted for lookups. */
    t->added_rev = malloc((id_to_index.n ? id_to_index.n : 1) * sizeof *t->added_rev);
    if (!t->added_rev) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        goto done;
    }
    for (size_t k = 0; k < id_to_index.n; k++) {
        int32_t id;
        memcpy(&id, id_to_index.keys.p + id_to_index.ent[k].off, sizeof id);
        t->added_rev[k] = (struct tk_added_rev){id, (size_t)id_to_index.ent[k].value};
    }
    t->n_added_rev = id_to_index.n;
    qsort(t->added_rev, t->n_added_rev, sizeof *t->added_rev, added_rev_cmp);

    /* Normalized tokens match, and decode to, their normalized form. */
    for (size_t k = 0; k < t->n_added; k++) {
        tk_added *a = &t->added[k];
        tk_buf content = {0};
        if (a->normalized) {
            tk_work *w = work_acquire(t);
            if (!w) {
                rc = QTOOL_ERR_OUT_OF_MEMORY;
                goto done;
            }
            rc = tk_normalize(t, w, a->content, a->len, &content);
            work_release(t, w);
        } else {
            rc = tk_buf_put(&content, a->content, a->len);
        }
        if (!rc) rc = tk_buf_putc(&content, '\0');
        if (rc) {
            tk_buf_free(&content);
            goto done;
        }
        a->shown = content.p;
        a->shown_len = content.n - 1;
    }

    /* The two match sets: special tokens first, then the others; split by
     * the listed token's `normalized` flag. */
    for (int set = 0; set < 2; set++) {
        tk_matchset *ms = set ? &t->norm_set : &t->raw_set;
        ms->pat = calloc(n_specials + n_plain + 1, sizeof *ms->pat);
        if (!ms->pat) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
            goto done;
        }
        for (size_t k = 0; k < n_specials + n_plain; k++) {
            const tk_added *a = &t->added[k < n_specials ? specials[k] : plain[k - n_specials]];
            if (a->normalized != set) continue;
            int32_t id = token_to_id(t, a->content, a->len);
            struct tk_pat *p = &ms->pat[ms->n];
            p->id = id;
            p->tok = added_by_id(t, id);
            if (!p->tok) p->tok = a;
            tk_buf content = {0};
            if ((rc = tk_buf_put(&content, a->shown, a->shown_len))) goto done;
            /* An empty pattern would match everywhere; it cannot come from
             * a real token, so it is left out. */
            if (content.n == 0) {
                tk_buf_free(&content);
                continue;
            }
            p->s = content.p;
            p->n = content.n;
            ms->n++;
        }
        if ((rc = build_trie(L, ms))) goto done;
    }
done:
    free(specials);
    free(plain);
    tk_strmap_free(&id_to_index);
    return rc;
}

/* ---- post-processor and decoder ------------------------------------------------------ */

static int add_post(const loader *L, tk_post_piece *pieces, size_t n)
{
    qt_tokenizer *t = L->tok;
    tk_post *p = realloc(t->post, (t->n_post + 1) * sizeof *p);
    if (!p) {
        for (size_t i = 0; i < n; i++) free(pieces[i].ids);
        free(pieces);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    }
    t->post = p;
    t->post[t->n_post++] = (tk_post){pieces, n};
    return 0;
}

static int token_pair(const loader *L, json_t *j, const char *key, int32_t *id, const char *what)
{
    json_t *v = json_object_get(j, key);
    int64_t x = 0;
    if (!json_is_array(v) || json_array_size(v) != 2 || !json_is_string(json_array_get(v, 0)))
        return BAD("%s: '%s' must be [token, id]", what, key);
    if (get_int(L, json_array_get(v, 1), 0, INT32_MAX - 1, &x, what)) return -1;
    *id = (int32_t)x;
    return 0;
}

/* One template piece: {"Sequence": {"id": "A", ...}} or {"SpecialToken": {"id": name, ...}},
 * or the string forms "$A", "$B:1", "[CLS]", "[CLS]:0". */
static int template_piece(const loader *L, json_t *piece, json_t *specials, tk_post_piece *out)
{
    const char *what = "post_processor TemplateProcessing";
    const char *name = NULL;
    size_t name_len = 0;
    int is_seq = 0;
    char seq_id = 'A';
    if (json_is_string(piece)) {
        const char *s = json_string_value(piece);
        size_t n = json_string_length(piece);
        const char *colon = memchr(s, ':', n);
        size_t base = colon ? (size_t)(colon - s) : n;
        if (n && s[0] == '$') {
            is_seq = 1;
            if (base == 1 || (base == 2 && (s[1] == 'A' || s[1] == '0'))) seq_id = 'A';
            else if (base == 2 && (s[1] == 'B' || s[1] == '1')) seq_id = 'B';
            else return BAD("%s: bad sequence piece '%s'", what, s);
        } else {
            name = s;
            name_len = base;
        }
    } else if (json_is_object(piece) && json_object_size(piece) == 1) {
        json_t *sq = json_object_get(piece, "Sequence");
        json_t *sp = json_object_get(piece, "SpecialToken");
        json_t *body = sq ? sq : sp;
        json_t *id = json_object_get(body, "id");
        if (!json_is_object(body) || !json_is_string(id)) return BAD("%s: bad template piece", what);
        if (sq) {
            is_seq = 1;
            const char *v = json_string_value(id);
            if (strcmp(v, "A") == 0) seq_id = 'A';
            else if (strcmp(v, "B") == 0) seq_id = 'B';
            else return BAD("%s: bad sequence id '%s'", what, v);
        } else {
            name = json_string_value(id);
            name_len = json_string_length(id);
        }
    } else {
        return BAD("%s: bad template piece", what);
    }
    memset(out, 0, sizeof *out);
    if (is_seq) {
        if (seq_id != 'A') return UNSUPPORTED("%s: the single-sequence template refers to sequence B", what);
        out->is_sequence = 1;
        return 0;
    }
    /* The keys of special_tokens hide NUL bytes the way vocab keys do. */
    tk_buf hidden = {0};
    for (size_t i = 0; i < name_len; i++) {
        int rc = name[i] == '\0' && L->have_placeholder ? tk_buf_put(&hidden, L->placeholder, 4)
                                                         : tk_buf_putc(&hidden, name[i]);
        if (rc) return -1;
    }
    json_t *st = json_is_object(specials) ? json_object_getn(specials, hidden.p ? hidden.p : "", hidden.n) : NULL;
    tk_buf_free(&hidden);
    if (!json_is_object(st)) return BAD("%s: special token '%.*s' is not in special_tokens", what, (int)name_len, name);
    json_t *ids = json_object_get(st, "ids");
    if (!json_is_array(ids)) return BAD("%s: special token '%.*s' has no 'ids'", what, (int)name_len, name);
    out->n = json_array_size(ids);
    out->ids = malloc((out->n ? out->n : 1) * sizeof *out->ids);
    if (!out->ids) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    for (size_t i = 0; i < out->n; i++) {
        int64_t x = 0;
        if (get_int(L, json_array_get(ids, i), 0, INT32_MAX - 1, &x, "TemplateProcessing: a special token id")) {
            free(out->ids);
            out->ids = NULL;
            return -1;
        }
        out->ids[i] = (int32_t)x;
    }
    return 0;
}

static int parse_post(const loader *L, json_t *j, int depth)
{
    if (!j || json_is_null(j)) return 0;
    if (depth > 16) return BAD("post_processor: sequences nested too deep");
    int rc;
    const char *type = type_of(L, j, "post_processor", &rc);
    if (!type) return rc;
    if (strcmp(type, "Sequence") == 0) {
        static const char *const keys[] = {"type", "processors", NULL};
        if ((rc = check_keys(L, j, "post_processor Sequence", keys))) return rc;
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr)) return BAD("post_processor Sequence: 'processors' must be an array");
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) if ((rc = parse_post(L, e, depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        /* Only trims offsets: the ids stay as they are. */
        static const char *const keys[] = {"type", "add_prefix_space", "trim_offsets", "use_regex", NULL};
        int dummy;
        const char *w = "post_processor ByteLevel";
        if ((rc = check_keys(L, j, w, keys)) || (rc = get_bool(L, j, "add_prefix_space", 1, &dummy, w)) ||
            (rc = get_bool(L, j, "trim_offsets", 1, &dummy, w)) || (rc = get_bool(L, j, "use_regex", 1, &dummy, w)))
            return rc;
        return add_post(L, NULL, 0);
    }
    if (strcmp(type, "BertProcessing") == 0 || strcmp(type, "RobertaProcessing") == 0) {
        static const char *const bkeys[] = {"type", "sep", "cls", NULL};
        static const char *const rkeys[] = {"type", "sep", "cls", "trim_offsets", "add_prefix_space", NULL};
        int roberta = type[0] == 'R';
        const char *w = roberta ? "post_processor RobertaProcessing" : "post_processor BertProcessing";
        int32_t cls, sep;
        int dummy;
        if ((rc = check_keys(L, j, w, roberta ? rkeys : bkeys)) || (rc = token_pair(L, j, "cls", &cls, w)) ||
            (rc = token_pair(L, j, "sep", &sep, w)) || (rc = get_bool(L, j, "trim_offsets", 1, &dummy, w)) ||
            (rc = get_bool(L, j, "add_prefix_space", 1, &dummy, w)))
            return rc;
        tk_post_piece *pc = calloc(3, sizeof *pc);
        int32_t *a = malloc(sizeof *a), *b = malloc(sizeof *b);
        if (!pc || !a || !b) {
            free(pc);
            free(a);
            free(b);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        }
        *a = cls;
        *b = sep;
        pc[0] = (tk_post_piece){0, a, 1};
        pc[1] = (tk_post_piece){1, NULL, 0};
        pc[2] = (tk_post_piece){0, b, 1};
        return add_post(L, pc, 3);
    }
    if (strcmp(type, "TemplateProcessing") == 0) {
        static const char *const keys[] = {"type", "single", "pair", "special_tokens", NULL};
        const char *w = "post_processor TemplateProcessing";
        if ((rc = check_keys(L, j, w, keys))) return rc;
        json_t *single = json_object_get(j, "single");
        json_t *specials = json_object_get(j, "special_tokens");
        json_t *list = single;
        int own = 0;
        if (json_is_string(single)) { /* "[CLS] $A [SEP]" */
            list = json_array();
            own = 1;
            const char *s = json_string_value(single);
            size_t n = json_string_length(single);
            for (size_t i = 0; list && i < n;) {
                while (i < n && s[i] == ' ') i++;
                size_t st = i;
                while (i < n && s[i] != ' ') i++;
                if (i > st) json_array_append_new(list, json_stringn(s + st, i - st));
            }
        }
        if (!json_is_array(list)) {
            if (own) json_decref(list);
            return BAD("%s: 'single' must be a template", w);
        }
        size_t n = json_array_size(list);
        tk_post_piece *pc = calloc(n ? n : 1, sizeof *pc);
        if (!pc) {
            if (own) json_decref(list);
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        }
        for (size_t i = 0; i < n; i++)
            if ((rc = template_piece(L, json_array_get(list, i), specials, &pc[i]))) {
                for (size_t k = 0; k < i; k++) free(pc[k].ids);
                free(pc);
                if (own) json_decref(list);
                return rc;
            }
        if (own) json_decref(list);
        return add_post(L, pc, n);
    }
    return UNSUPPORTED("post_processor type '%s' is not supported", type);
}

static int add_dec(const loader *L, tk_dec d)
{
    qt_tokenizer *t = L->tok;
    tk_dec *p = realloc(t->decs, (t->n_decs + 1) * sizeof *p);
    if (!p) {
        free(d.prefix);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    }
    t->decs = p;
    t->decs[t->n_decs++] = d;
    return 0;
}

/* Decoders are only needed by qt_tokenizer_decode: one we do not implement
 * is remembered and reported there, so encoding still works. */
static int parse_decoder(const loader *L, json_t *j, int depth)
{
    if (!j || json_is_null(j)) return 0;
    if (depth > 16) return BAD("decoder: sequences nested too deep");
    int rc;
    const char *type = type_of(L, j, "decoder", &rc);
    if (!type) return rc;
    L->tok->have_decoder = 1;
    tk_dec d = {0};
    if (strcmp(type, "Sequence") == 0) {
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr)) return BAD("decoder Sequence: 'decoders' must be an array");
        size_t i;
        json_t *e;
        json_array_foreach(arr, i, e) if ((rc = parse_decoder(L, e, depth + 1))) return rc;
        return 0;
    }
    if (strcmp(type, "ByteLevel") == 0) {
        d.kind = TK_DEC_BYTELEVEL;
        return add_dec(L, d);
    }
    if (strcmp(type, "WordPiece") == 0) {
        static const char *const keys[] = {"type", "prefix", "cleanup", NULL};
        const char *w = "decoder WordPiece";
        if ((rc = check_keys(L, j, w, keys)) || (rc = get_bool(L, j, "cleanup", 1, &d.cleanup, w)) ||
            (rc = get_str(L, j, "prefix", &d.prefix, NULL, w)))
            return rc;
        if (!d.prefix && !(d.prefix = strdup("##")))
            return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
        d.kind = TK_DEC_WORDPIECE;
        return add_dec(L, d);
    }
    if (!L->tok->dec_unsupported && !(L->tok->dec_unsupported = strdup(type)))
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", L->name);
    return 0;
}

/* ---- load / free ------------------------------------------------------------------------ */

static void work_free(tk_work *w)
{
    for (int i = 0; i < 2; i++) {
        tk_buf_free(&w->buf[i]);
        tk_buf_free(&w->tmp[i]);
        tk_buf_free(&w->nseq[i]);
        free(w->pcs[i].v);
    }
    tk_buf_free(&w->norm);
    free(w->spans.v);
    free(w->spans2.v);
    if (w->md) pcre2_match_data_free(w->md);
    if (w->mctx) pcre2_match_context_free(w->mctx);
    if (w->jit_stack) pcre2_jit_stack_free(w->jit_stack);
    free(w->syms);
    free(w->heap);
    tk_buf_free(&w->word);
    free(w->word_ids.v);
    free(w->ids.v);
    free(w);
}

void qt_tokenizer_free(qt_tokenizer *t)
{
    if (!t) return;
    free(t->name);
    for (size_t i = 0; i < t->n_norms; i++) {
        tk_regex_free(&t->norms[i].re);
        free(t->norms[i].content);
    }
    free(t->norms);
    for (size_t i = 0; i < t->n_pretoks; i++) tk_regex_free(&t->pretoks[i].re);
    free(t->pretoks);
    tk_regex_free(&t->gpt2_re);
    tk_model_free(&t->model);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].shown);
    }
    free(t->added);
    tk_strmap_free(&t->added_map);
    tk_strmap_free(&t->special_set);
    free(t->added_rev);
    for (int s = 0; s < 2; s++) {
        tk_matchset *ms = s ? &t->norm_set : &t->raw_set;
        for (size_t i = 0; i < ms->n; i++) free(ms->pat[i].s);
        free(ms->pat);
        tk_mergemap_free(&ms->edges);
        free(ms->term);
    }
    for (size_t i = 0; i < t->n_post; i++) {
        for (size_t k = 0; k < t->post[i].n; k++) free(t->post[i].pieces[k].ids);
        free(t->post[i].pieces);
    }
    free(t->post);
    for (size_t i = 0; i < t->n_decs; i++) free(t->decs[i].prefix);
    free(t->decs);
    free(t->dec_unsupported);
    while (t->pool) {
        tk_work *w = t->pool;
        t->pool = w->next;
        work_free(w);
    }
    pthread_mutex_destroy(&t->pool_lock);
    free(t);
}

static int parse_root(const loader *L, json_t *root)
{
    qt_tokenizer *t = L->tok;
    int rc;
    if (!json_is_object(root)) return BAD("the top level must be an object");
    json_t *ver = json_object_get(root, "version");
    if (ver && !(json_is_string(ver) && strcmp(json_string_value(ver), "1.0") == 0))
        return UNSUPPORTED("version %s is not supported (1.0 is)",
                           json_is_string(ver) ? json_string_value(ver) : "(not a string)");
    json_t *trunc = json_object_get(root, "truncation");
    if (json_is_object(trunc)) {
        int64_t ml = 0;
        if ((rc = get_int(L, json_object_get(trunc, "max_length"), 0, INT64_MAX, &ml, "truncation.max_length")))
            return rc;
        t->max_length = (size_t)ml;
    } else if (trunc && !json_is_null(trunc)) {
        return BAD("'truncation' must be an object or null");
    }
    t->pad_id = -1;
    json_t *pad = json_object_get(root, "padding");
    if (json_is_object(pad)) {
        int64_t pid = 0;
        if ((rc = get_int(L, json_object_get(pad, "pad_id"), 0, INT32_MAX - 1, &pid, "padding.pad_id")))
            return rc;
        t->pad_id = (int32_t)pid;
    } else if (pad && !json_is_null(pad)) {
        return BAD("'padding' must be an object or null");
    }
    if ((rc = parse_model(L, json_object_get(root, "model")))) return rc;
    json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm) && (rc = parse_normalizer(L, norm, 0))) return rc;
    json_t *pre = json_object_get(root, "pre_tokenizer");
    if (pre && !json_is_null(pre) && (rc = parse_pretok(L, pre, 0))) return rc;
    if ((rc = parse_post(L, json_object_get(root, "post_processor"), 0))) return rc;
    if ((rc = parse_decoder(L, json_object_get(root, "decoder"), 0))) return rc;
    return parse_added_tokens(L, json_object_get(root, "added_tokens"));
}

static int contains_ci(const char *hay, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (const char *p = hay; (p = memchr(p, needle[0], (size_t)(hay + n - p))) && (size_t)(hay + n - p) >= k; p++)
        if (strncasecmp(p, needle, k) == 0) return 1;
    return 0;
}

/* jansson refuses NUL bytes in object keys, and vocabularies can hold the
 * token "\u0000". Such escapes in keys are rewritten to a private-use code
 * point that occurs nowhere in the file, and mapped back when the keys are
 * read. `*out` is NULL when nothing needed rewriting. */
static int hide_nul_keys(loader *L, const char *in, size_t n, char **out, size_t *out_len)
{
    *out = NULL;
    if (!memmem(in, n, "\\u0000", 6)) return 0;
    int32_t ph = 0;
    char esc[16];
    for (int32_t cp = 0x10FFFD; cp >= 0x100000 && !ph; cp--) {
        char u[4];
        tk_utf8_encode(cp, u);
        snprintf(esc, sizeof esc, "\\u%04X\\u%04X", 0xD800 + ((cp - 0x10000) >> 10), 0xDC00 + ((cp - 0x10000) & 0x3FF));
        if (!memmem(in, n, u, 4) && !contains_ci(in, n, esc)) ph = cp;
    }
    if (!ph) return qt_fail(QTOOL_ERR_UNSUPPORTED, "%s: NUL characters in keys, and no free placeholder", L->name);
    tk_utf8_encode(ph, L->placeholder);
    L->have_placeholder = 1;
    snprintf(esc, sizeof esc, "\\u%04X\\u%04X", 0xD800 + ((ph - 0x10000) >> 10), 0xDC00 + ((ph - 0x10000) & 0x3FF));
    tk_buf o = {0};
    if (tk_buf_reserve(&o, n + 64)) return -1;
    size_t i = 0;
    while (i < n) {
        if (in[i] != '"') {
            size_t k = i;
            while (k < n && in[k] != '"') k++;
            if (tk_buf_put(&o, in + i, k - i)) goto oom;
            i = k;
            continue;
        }
        size_t j = i + 1;
        int has_nul = 0;
        while (j < n && in[j] != '"') {
            if (in[j] == '\\') {
                if (n - j >= 6 && memcmp(in + j, "\\u0000", 6) == 0) has_nul = 1;
                j += 2;
            } else {
                j++;
            }
        }
        if (j >= n) { /* unterminated: let the parser say so */
            if (tk_buf_put(&o, in + i, n - i)) goto oom;
            break;
        }
        size_t k = j + 1;
        while (k < n && (in[k] == ' ' || in[k] == '\t' || in[k] == '\n' || in[k] == '\r')) k++;
        if (has_nul && k < n && in[k] == ':') {
            for (size_t p = i; p <= j;) {
                if (in[p] == '\\' && n - p >= 6 && memcmp(in + p, "\\u0000", 6) == 0) {
                    if (tk_buf_put(&o, esc, 12)) goto oom;
                    p += 6;
                } else if (in[p] == '\\') {
                    if (tk_buf_put(&o, in + p, 2)) goto oom;
                    p += 2;
                } else {
                    if (tk_buf_putc(&o, in[p])) goto oom;
                    p++;
                }
            }
        } else if (tk_buf_put(&o, in + i, j + 1 - i)) {
            goto oom;
        }
        i = j + 1;
    }
    *out = o.p;
    *out_len = o.n;
    return 0;
oom:
    tk_buf_free(&o);
    return -1;
}

int qt_tokenizer_load_json(const char *json, size_t len, const char *name, qt_tokenizer **out)
{
    *out = NULL;
    if (!name) name = "tokenizer.json";
    if (len > QT_TOKENIZER_MAX_FILE_BYTES)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: %zu bytes is more than the limit of %zu", name, len,
                       QT_TOKENIZER_MAX_FILE_BYTES);
    loader L;
    memset(&L, 0, sizeof L);
    L.name = name;
    char *rewritten = NULL;
    size_t rlen = 0;
    int hr = hide_nul_keys(&L, json, len, &rewritten, &rlen);
    if (hr) return hr > 0 ? hr : qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    json_error_t jerr;
    json_t *root = json_loadb(rewritten ? rewritten : json, rewritten ? rlen : len,
                              JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
    free(rewritten);
    if (!root)
        return qt_fail(QTOOL_ERR_FORMAT, "%s: invalid JSON at line %d column %d: %s", name, jerr.line,
                       jerr.column, jerr.text);
    qt_tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->name = strdup(name))) {
        free(t);
        json_decref(root);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "%s: out of memory", name);
    }
    pthread_mutex_init(&t->pool_lock, NULL);
    L.tok = t;
    int rc = parse_root(&L, root);
    json_decref(root);
    if (rc) {
        if (rc < 0) rc = QTOOL_ERR_FORMAT;
        qt_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int qt_tokenizer_load(const char *path, qt_tokenizer **out)
{
    *out = NULL;
    char *data;
    size_t len;
    int rc = qt_read_file(path, QT_TOKENIZER_MAX_FILE_BYTES, &data, &len);
    if (rc) return rc;
    rc = qt_tokenizer_load_json(data, len, path, out);
    free(data);
    return rc;
}

int qt_tokenizer_load_for_model(const char *model_path, qt_tokenizer **out)
{
    *out = NULL;
    if (!qt_is_dir(model_path)) return 0;
    char *tp = qt_path_join(model_path, "tokenizer.json");
    if (!tp) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
    int rc = qt_file_exists(tp) ? qt_tokenizer_load(tp, out) : 0;
    free(tp);
    return rc;
}

/* ---- encoding ------------------------------------------------------------------------------ */

static tk_work *work_acquire(const qt_tokenizer *tok)
{
    qt_tokenizer *t = (qt_tokenizer *)tok; /* the pool is internal state */
    pthread_mutex_lock(&t->pool_lock);
    tk_work *w = t->pool;
    if (w) t->pool = w->next;
    pthread_mutex_unlock(&t->pool_lock);
    if (w) return w;
    w = calloc(1, sizeof *w);
    if (!w) goto oom;
    w->md = pcre2_match_data_create(1, NULL);
    w->mctx = pcre2_match_context_create(NULL);
    w->jit_stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, NULL);
    if (!w->md || !w->mctx) goto oom;
    if (w->jit_stack) pcre2_jit_stack_assign(w->mctx, NULL, w->jit_stack);
    return w;
oom:
    if (w) work_free(w);
    qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    return NULL;
}

static void work_release(const qt_tokenizer *tok, tk_work *w)
{
    qt_tokenizer *t = (qt_tokenizer *)tok;
    pthread_mutex_lock(&t->pool_lock);
    w->next = t->pool;
    t->pool = w;
    pthread_mutex_unlock(&t->pool_lock);
}

static pthread_once_t word_once = PTHREAD_ONCE_INIT;
static pcre2_code *word_code;

/* The `\w` of the Rust regex crate, which the library uses for single_word. */
static void word_init(void)
{
    int ec;
    PCRE2_SIZE eo;
    static const char pat[] = "[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\x{200C}\\x{200D}]";
    word_code = pcre2_compile((PCRE2_SPTR)pat, sizeof pat - 1, PCRE2_UTF | PCRE2_UCP | PCRE2_ANCHORED, &ec,
                              &eo, NULL);
}

static int is_word_at(tk_work *w, const char *s, size_t k)
{
    pthread_once(&word_once, word_init);
    if (!word_code) return 0;
    return pcre2_match(word_code, (PCRE2_SPTR)s, k, 0, PCRE2_NO_UTF_CHECK, w->md, NULL) >= 0;
}

/* AddedVocabulary::find_matches: spans of s[0..n), is_match = id + 1 for
 * an added token, 0 for text. Spans can overlap when rstrip reaches into
 * the next match, as in the library. */
static int find_added(const qt_tokenizer *tok, const tk_matchset *ms, tk_work *w, const char *s, size_t n,
                      tk_spans *out)
{
    (void)tok;
    out->n = 0;
    if (n == 0) return 0;
    size_t start_offset = 0, i = 0;
    while (ms->n && i < n) {
        const struct tk_pat *hit = NULL;
        if (ms->starts[(unsigned char)s[i]]) {
            int32_t node = 0;
            for (size_t k = i; k < n; k++) {
                const tk_merge_val *e = tk_mergemap_get(&ms->edges, node, (unsigned char)s[k]);
                if (!e) break;
                node = e->new_id;
                if (ms->term[node] >= 0) hit = &ms->pat[ms->term[node]]; /* the longest so far */
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t st = i, en = i + hit->n;
        i = en;
        const tk_added *a = hit->tok;
        if (a->single_word) {
            int start_space = st == 0 || !is_word_at(w, s + st - tk_utf8_last_len(s, st), tk_utf8_last_len(s, st));
            int stop_space = en == n;
            if (!stop_space) {
                int32_t cp;
                size_t k = tk_utf8_next(s + en, &cp);
                stop_space = !is_word_at(w, s + en, k);
            }
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = st;
            while (ns > 0) {
                size_t k = tk_utf8_last_len(s, ns);
                int32_t cp;
                tk_utf8_next(s + ns - k, &cp);
                if (!tk_is_white_space(cp)) break;
                ns -= k;
            }
            st = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip) {
            while (en < n) {
                int32_t cp;
                size_t k = tk_utf8_next(s + en, &cp);
                if (!tk_is_white_space(cp)) break;
                en += k;
            }
        }
        if (start_offset < st && tk_spans_push(out, start_offset, st, 0)) return -1;
        if (tk_spans_push(out, st, en, hit->id + 1)) return -1;
        start_offset = en;
    }
    if (start_offset != n && tk_spans_push(out, start_offset, n, 0)) return -1;
    return 0;
}

/* Added tokens, normalization, pre-tokenization and the model: the ids of
 * the text without special tokens, into w->ids. */
static int run_pipeline(const qt_tokenizer *tok, tk_work *w, const char *text, size_t len)
{
    tk_spans *raw = &w->spans2;
    if (find_added(tok, &tok->raw_set, w, text, len, raw)) return -1;
    /* raw spans are consumed into pcs[1] first: the normalized matching
     * below reuses spans2. */
    tk_pieces *p1 = &w->pcs[1];
    p1->n = 0;
    for (size_t i = 0; i < raw->n; i++)
        if (tk_pieces_push(p1, raw->v[i].start, raw->v[i].end - raw->v[i].start, raw->v[i].is_match - 1))
            return -1;
    tk_buf *b0 = &w->buf[0];
    tk_pieces *p0 = &w->pcs[0];
    b0->n = 0;
    p0->n = 0;
    for (size_t i = 0; i < p1->n; i++) {
        tk_piece pc = p1->v[i];
        if (pc.id >= 0) {
            if (tk_pieces_push(p0, 0, 0, pc.id)) return -1;
            continue;
        }
        if (pc.len == 0) continue;
        w->norm.n = 0;
        if (tk_normalize(tok, w, text + pc.off, pc.len, &w->norm)) return -1;
        if (w->norm.n == 0) continue;
        if (find_added(tok, &tok->norm_set, w, w->norm.p, w->norm.n, &w->spans2)) return -1;
        for (size_t k = 0; k < w->spans2.n; k++) {
            tk_span sp = w->spans2.v[k];
            if (sp.is_match) {
                if (tk_pieces_push(p0, 0, 0, (int32_t)(sp.is_match - 1))) return -1;
            } else if (sp.end > sp.start) {
                size_t off = b0->n;
                if (tk_buf_put(b0, w->norm.p + sp.start, sp.end - sp.start) ||
                    tk_pieces_push(p0, off, sp.end - sp.start, -1))
                    return -1;
            }
        }
    }
    if (tk_pretokenize(tok, w)) return -1;
    w->ids.n = 0;
    for (size_t i = 0; i < w->pcs[0].n; i++) {
        tk_piece pc = w->pcs[0].v[i];
        if (pc.id >= 0) {
            if (tk_ids_push(&w->ids, pc.id)) return -1;
        } else if (tk_model_tokenize(tok, w, w->buf[0].p + pc.off, pc.len, &w->ids)) {
            return -1;
        }
    }
    return 0;
}

size_t qt_tokenizer_num_special(const qt_tokenizer *tok)
{
    size_t n = 0;
    for (size_t i = 0; i < tok->n_post; i++)
        for (size_t k = 0; k < tok->post[i].n; k++)
            if (!tok->post[i].pieces[k].is_sequence) n += tok->post[i].pieces[k].n;
    return n;
}

/* Applies the post-processors to `cur`, using `tmp` as working space. */
static int post_process(const qt_tokenizer *tok, tk_ids *cur, tk_ids *tmp)
{
    for (size_t i = 0; i < tok->n_post; i++) {
        const tk_post *p = &tok->post[i];
        if (!p->pieces) continue;
        tmp->n = 0;
        for (size_t k = 0; k < p->n; k++) {
            const tk_post_piece *pc = &p->pieces[k];
            if (pc->is_sequence ? tk_ids_append(tmp, cur->v, cur->n) : tk_ids_append(tmp, pc->ids, pc->n))
                return -1;
        }
        tk_ids t = *cur;
        *cur = *tmp;
        *tmp = t;
    }
    return 0;
}

int qt_tokenizer_encode_truncated(const qt_tokenizer *tok, const char *text, size_t len, int add_special,
                                  size_t max_len, int32_t **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    if (!tok || (!text && len)) return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenizer: NULL argument");
    if (len > QT_TOKENIZER_MAX_TEXT_BYTES)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenizer: text of %zu bytes is more than the limit of %zu",
                       len, QT_TOKENIZER_MAX_TEXT_BYTES);
    size_t bad = tk_utf8_check(text, len);
    if (bad != len)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT, "tokenizer: text is not valid UTF-8 (at byte %zu)", bad);
    size_t n_special = add_special ? qt_tokenizer_num_special(tok) : 0;
    if (max_len && max_len < n_special)
        return qt_fail(QTOOL_ERR_INVALID_ARGUMENT,
                       "tokenizer: max length %zu leaves no room for the %zu special tokens", max_len, n_special);
    tk_work *w = work_acquire(tok);
    if (!w) return QTOOL_ERR_OUT_OF_MEMORY;
    int rc = run_pipeline(tok, w, text ? text : "", len);
    if (!rc) {
        if (max_len && w->ids.n > max_len - n_special) w->ids.n = max_len - n_special;
        tk_ids tmp = {0};
        if (add_special) rc = post_process(tok, &w->ids, &tmp);
        free(tmp.v);
    }
    if (!rc) {
        *n_ids = w->ids.n;
        if (w->ids.n) {
            *ids = malloc(w->ids.n * sizeof **ids);
            if (!*ids) rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
            else memcpy(*ids, w->ids.v, w->ids.n * sizeof **ids);
        }
    }
    if (rc) {
        *n_ids = 0;
        rc = rc < 0 ? QTOOL_ERR_INVALID_ARGUMENT : rc;
    }
    /* Large buffers are not kept in the pool. */
    if (w->buf[0].cap > ((size_t)16 << 20) || w->buf[1].cap > ((size_t)16 << 20)) {
        work_free(w);
    } else {
        work_release(tok, w);
    }
    return rc;
}

int qt_tokenizer_encode(const qt_tokenizer *tok, const char *text, size_t len, int add_special, int32_t **ids,
                        size_t *n_ids)
{
    return qt_tokenizer_encode_truncated(tok, text, len, add_special, 0, ids, n_ids);
}

/* ---- small queries ---------------------------------------------------------------------------- */

size_t qt_tokenizer_max_length(const qt_tokenizer *tok)
{
    return tok->max_length;
}

int32_t qt_tokenizer_pad_id(const qt_tokenizer *tok)
{
    return tok->pad_id;
}

size_t qt_tokenizer_vocab_size(const qt_tokenizer *tok)
{
    int64_t max = -1;
    if (tok->model.n_rev) max = tok->model.rev[tok->model.n_rev - 1].id;
    if (tok->n_added_rev && tok->added_rev[tok->n_added_rev - 1].id > max)
        max = tok->added_rev[tok->n_added_rev - 1].id;
    return (size_t)(max + 1);
}

int32_t qt_tokenizer_token_to_id(const qt_tokenizer *tok, const char *token)
{
    return token_to_id(tok, token, strlen(token));
}

const char *qt_tokenizer_id_to_token(const qt_tokenizer *tok, int32_t id, size_t *len)
{
    const tk_added *a = added_by_id(tok, id);
    if (a) {
        if (len) *len = a->shown_len;
        return a->shown;
    }
    const tk_model *m = &tok->model;
    size_t lo = 0, hi = m->n_rev;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (m->rev[mid].id < id) lo = mid + 1;
        else hi = mid;
    }
    if (lo < m->n_rev && m->rev[lo].id == id) {
        if (len) *len = m->rev[lo].len;
        return m->vocab.keys.p + m->rev[lo].off;
    }
    return NULL;
}

int tk_is_special_content(const qt_tokenizer *tok, const char *s, size_t n)
{
    return tk_strmap_get(&tok->special_set, s, n) >= 0;
}
