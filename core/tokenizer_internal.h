/* Internals of the tokenizer (core/tokenizer*.c), shared between its files.
 * Not part of the runtime's interface: use core/tokenizer.h. */
#ifndef QT_TOKENIZER_INTERNAL_H
#define QT_TOKENIZER_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "tokenizer.h"

/* ---- growable arrays ---------------------------------------------------- */

typedef struct tk_buf {
    char *p;
    size_t n, cap;
} tk_buf;

int tk_buf_reserve(tk_buf *b, size_t extra);
void tk_buf_free(tk_buf *b);
static inline int tk_buf_put(tk_buf *b, const void *s, size_t n)
{
    if (b->cap - b->n < n && tk_buf_reserve(b, n)) return -1;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    return 0;
}
static inline int tk_buf_putc(tk_buf *b, char c)
{
    if (b->n == b->cap && tk_buf_reserve(b, 1)) return -1;
    b->p[b->n++] = c;
    return 0;
}

/* A stretch of text in some buffer, or an added token (id >= 0, no text). */
typedef struct tk_piece {
    size_t off, len;
    int32_t id;
} tk_piece;

typedef struct tk_pieces {
    tk_piece *v;
    size_t n, cap;
} tk_pieces;

int tk_pieces_push(tk_pieces *p, size_t off, size_t len, int32_t id);

typedef struct tk_ids {
    int32_t *v;
    size_t n, cap;
} tk_ids;

int tk_ids_push(tk_ids *a, int32_t id);
int tk_ids_append(tk_ids *a, const int32_t *ids, size_t n);

/* Match spans of a regex (or of the added tokens) within one piece. */
typedef struct tk_span {
    size_t start, end;
    int is_match;
} tk_span;

typedef struct tk_spans {
    tk_span *v;
    size_t n, cap;
} tk_spans;

int tk_spans_push(tk_spans *s, size_t start, size_t end, int is_match);

/* ---- UTF-8 and Unicode (tokenizer_text.c) ------------------------------- */

/* Index of the first byte that starts an invalid sequence, or n when valid. */
size_t tk_utf8_check(const char *s, size_t n);
/* Decodes one code point of valid UTF-8; returns its length. */
static inline size_t tk_utf8_next(const char *s, int32_t *cp)
{
    const unsigned char *u = (const unsigned char *)s;
    if (u[0] < 0x80) {
        *cp = u[0];
        return 1;
    }
    if (u[0] < 0xE0) {
        *cp = ((u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        return 2;
    }
    if (u[0] < 0xF0) {
        *cp = ((u[0] & 0x0F) << 12) | ((u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        return 3;
    }
    *cp = ((u[0] & 0x07) << 18) | ((u[1] & 0x3F) << 12) | ((u[2] & 0x3F) << 6) | (u[3] & 0x3F);
    return 4;
}
size_t tk_utf8_encode(int32_t cp, char *out);
/* Length of the code point that ends at s[n-1] (valid UTF-8). */
size_t tk_utf8_last_len(const char *s, size_t n);

/* Rust's char::is_whitespace (the White_Space property). */
int tk_is_white_space(int32_t cp);
/* ASCII punctuation or a Unicode P* category (BERT's punctuation). */
int tk_is_bert_punct(int32_t cp);

/* The byte-level alphabet of GPT-2: each byte as one code point. */
extern const uint16_t tk_byte_to_cp[256];
/* Inverse: code point -> byte, -1 when not a byte-level character. */
int tk_cp_to_byte(int32_t cp);

/* ---- regular expressions (tokenizer_regex.c) ----------------------------- */

typedef struct tk_regex {
    pcre2_code *code;
    int jit;
} tk_regex;

enum tk_regex_mode {
    TK_RE_ONIGURUMA, /* a pattern of tokenizer.json, for the library's Oniguruma */
    TK_RE_LITERAL,   /* a plain string */
    TK_RE_PCRE2      /* a pattern of our own, in PCRE2 syntax */
};

/* Compiles a pattern; in TK_RE_ONIGURUMA mode the escapes whose meaning
 * differs in PCRE2 are translated. On failure fills `err`. */
int tk_regex_compile(tk_regex *re, const char *pattern, size_t len, int mode, char *err,
                     size_t err_len);
void tk_regex_free(tk_regex *re);

typedef struct tk_work tk_work;

/* All non-overlapping matches in s[0..n), as the library iterates them
 * (an empty match right after a match is skipped), as alternating spans
 * covering the whole text (is_match 1 for matches). Appends to `out`. */
int tk_regex_spans(const tk_regex *re, tk_work *w, const char *s, size_t n, tk_spans *out);

/* ---- maps (tokenizer_model.c) -------------------------------------------- */

uint64_t tk_hash(const void *p, size_t n);

/* String -> int32 map, open addressing; keys copied into an arena. */
typedef struct tk_strent {
    uint64_t hash;
    size_t off;
    uint32_t len;
    int32_t value;
} tk_strent;

typedef struct tk_strmap {
    uint32_t *slots; /* entry index + 1; 0 is empty */
    size_t mask;
    tk_strent *ent;
    size_t n, cap;
    tk_buf keys;
} tk_strmap;

/* Inserts or, when the key exists, overwrites. */
int tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t value);
/* -1 when absent. */
int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n);
void tk_strmap_free(tk_strmap *m);

/* (id, id) -> (rank, new id). */
typedef struct tk_merge_val {
    uint32_t rank;
    int32_t new_id;
} tk_merge_val;

typedef struct tk_mergemap {
    uint64_t *keys; /* (a << 32 | b) + 1; 0 is empty */
    tk_merge_val *vals;
    size_t mask, n;
} tk_mergemap;

int tk_mergemap_init(tk_mergemap *m, size_t expected);
void tk_mergemap_put(tk_mergemap *m, int32_t a, int32_t b, tk_merge_val v);
const tk_merge_val *tk_mergemap_get(const tk_mergemap *m, int32_t a, int32_t b);
void tk_mergemap_free(tk_mergemap *m);

/* word -> ids of the model, bounded; emptied when full. */
typedef struct tk_cache {
    pthread_mutex_t lock;
    uint32_t *slots;
    size_t mask;
    struct tk_cache_ent {
        uint64_t hash;
        size_t key_off, ids_off;
        uint32_t key_len, n_ids;
    } *ent;
    size_t n, cap;
    tk_buf keys;
    tk_ids ids;
} tk_cache;

/* ---- components ----------------------------------------------------------- */

enum tk_norm_kind {
    TK_NORM_NFC,
    TK_NORM_NFD,
    TK_NORM_NFKC,
    TK_NORM_NFKD,
    TK_NORM_LOWERCASE,
    TK_NORM_BERT,
    TK_NORM_STRIP,
    TK_NORM_REPLACE,
    TK_NORM_PREPEND
};

typedef struct tk_norm {
    int kind;
    int clean_text, handle_chinese_chars, strip_accents, lowercase; /* Bert */
    int strip_left, strip_right;                                    /* Strip */
    tk_regex re;                                                    /* Replace */
    char *content;                                                  /* Replace, Prepend */
    size_t content_len;
} tk_norm;

enum tk_behavior {
    TK_SPLIT_REMOVED,
    TK_SPLIT_ISOLATED,
    TK_SPLIT_MERGED_WITH_PREVIOUS,
    TK_SPLIT_MERGED_WITH_NEXT,
    TK_SPLIT_CONTIGUOUS
};

enum tk_pretok_kind {
    TK_PRE_SPLIT,
    TK_PRE_BYTELEVEL,
    TK_PRE_BERT,
    TK_PRE_WHITESPACE,
    TK_PRE_WHITESPACE_SPLIT,
    TK_PRE_DIGITS,
    TK_PRE_PUNCTUATION
};

typedef struct tk_pretok {
    int kind;
    tk_regex re;  /* Split, Whitespace */
    int behavior; /* Split, Punctuation */
    int invert;
    int add_prefix_space, use_regex; /* ByteLevel */
    int individual_digits;           /* Digits */
} tk_pretok;

enum tk_model_kind { TK_MODEL_BPE, TK_MODEL_WORDPIECE };

typedef struct tk_model {
    int kind;
    tk_strmap vocab;
    /* id -> token, sorted by id, for decoding */
    struct tk_rev {
        int32_t id;
        uint32_t len;
        size_t off; /* into vocab.keys */
    } *rev;
    size_t n_rev;
    size_t max_key_len;
    /* BPE */
    tk_mergemap merges;
    char *unk_token; /* NULL: none (BPE) */
    size_t unk_len;
    char *prefix, *suffix;
    size_t prefix_len, suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_token_ids[256]; /* "<0xXX>" ids, -1 when absent */
    /* WordPiece */
    size_t max_input_chars_per_word;
    tk_cache cache;
} tk_model;

typedef struct tk_added {
    char *content;
    size_t len;
    /* What the token decodes to: its normalized form when `normalized`,
     * as the library shows it. */
    char *shown;
    size_t shown_len;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
} tk_added;

/* Added tokens matched leftmost-longest (as Aho-Corasick does), through a
 * byte trie. */
typedef struct tk_matchset {
    struct tk_pat {
        char *s; /* normalized content for the normalized set */
        size_t n;
        int32_t id;
        const tk_added *tok;
    } *pat;
    size_t n;
    tk_mergemap edges; /* (node, byte) -> child node (in new_id) */
    int32_t *term;     /* per node: the pattern ending there, or -1 */
    size_t n_nodes;
    unsigned char starts[256]; /* bytes some pattern starts with */
} tk_matchset;

/* A post-processor step on one sequence: pieces of ids around the text. */
typedef struct tk_post_piece {
    int is_sequence;
    int32_t *ids;
    size_t n;
} tk_post_piece;

typedef struct tk_post {
    tk_post_piece *pieces; /* NULL pieces: identity (ByteLevel) */
    size_t n;
} tk_post;

enum tk_dec_kind { TK_DEC_BYTELEVEL, TK_DEC_WORDPIECE };

typedef struct tk_dec {
    int kind;
    char *prefix; /* WordPiece */
    int cleanup;
} tk_dec;

/* Per-call scratch, pooled by the tokenizer. */
struct tk_work {
    tk_buf buf[2];
    tk_pieces pcs[2];
    tk_buf tmp[2];  /* inside one normalizer */
    tk_buf nseq[2]; /* between the normalizers of a sequence */
    tk_buf norm;    /* one normalized piece */
    tk_spans spans, spans2;
    pcre2_match_data *md;
    pcre2_match_context *mctx;
    pcre2_jit_stack *jit_stack;
    /* BPE merge loop */
    struct tk_sym {
        int32_t c;
        int32_t prev, next;
        uint32_t len;
    } *syms;
    size_t syms_cap;
    struct tk_heap_ent {
        uint32_t rank;
        uint32_t pos;
        int32_t new_id;
    } *heap;
    size_t heap_cap;
    tk_buf word;
    tk_ids word_ids;
    tk_ids ids;
    struct tk_work *next;
};

struct qt_tokenizer {
    char *name;
    tk_norm *norms;
    size_t n_norms;
    tk_pretok *pretoks;
    size_t n_pretoks;
    tk_regex gpt2_re; /* for ByteLevel use_regex */
    int have_gpt2_re;
    tk_model model;
    tk_added *added;
    size_t n_added;
    tk_strmap added_map;   /* content -> id */
    tk_strmap special_set; /* contents of special tokens (value unused) */
    struct tk_added_rev {
        int32_t id;
        size_t index;
    } *added_rev; /* sorted by id */
    size_t n_added_rev;
    tk_matchset raw_set, norm_set;
    tk_post *post;
    size_t n_post;
    tk_dec *decs;
    size_t n_decs;
    int have_decoder;
    char *dec_unsupported; /* decoder type refused at decode time */
    size_t max_length;
    int32_t pad_id;
    pthread_mutex_t pool_lock;
    tk_work *pool;
};

/* ---- stages ---------------------------------------------------------------- */

int tk_normalize(const qt_tokenizer *tok, tk_work *w, const char *s, size_t n, tk_buf *out);
int tk_normalize_one(const tk_norm *nm, tk_work *w, const char *s, size_t n, tk_buf *out);
/* Runs the pre-tokenizers over w->buf[0]/w->pcs[0]; the result is left in
 * w->buf[0]/w->pcs[0]. */
int tk_pretokenize(const qt_tokenizer *tok, tk_work *w);
int tk_model_tokenize(const qt_tokenizer *tok, tk_work *w, const char *s, size_t n, tk_ids *out);
void tk_model_free(tk_model *m);
int tk_is_special_content(const qt_tokenizer *tok, const char *s, size_t n);
int tk_cache_init(tk_cache *c);
void tk_cache_free(tk_cache *c);

/* Splits text `s` whose alternating match spans are `spans` according to
 * a Split behaviour; pushes the kept non-empty parts onto `out`, their text
 * copied into `out_buf`. `scratch` is working space. */
int tk_apply_behavior(const tk_spans *spans, int behavior, tk_spans *scratch, const char *s,
                      tk_buf *out_buf, tk_pieces *out);

#endif
