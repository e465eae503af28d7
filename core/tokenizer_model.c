/* Tokenizer models: BPE (merge ranks in a hash map, a heap-ordered merge
 * loop over a linked list of symbols) and WordPiece (greedy longest match),
 * with a bounded per-word cache in front of both. */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "tokenizer_internal.h"

/* ---- hashing and maps ----------------------------------------------------- */

static inline uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h;
}

uint64_t tk_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ULL ^ ((uint64_t)n * 0x100000001b3ULL);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, s, 8);
        h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
        h ^= h >> 29;
        s += 8;
        n -= 8;
    }
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) v |= (uint64_t)s[i] << (8 * i);
    h = (h ^ v) * 0x9E3779B97F4A7C15ULL;
    return mix64(h);
}

static int strmap_rehash(tk_strmap *m, size_t nslots)
{
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    size_t mask = nslots - 1;
    for (size_t i = 0; i < m->n; i++) {
        size_t j = (size_t)m->ent[i].hash & mask;
        while (slots[j]) j = (j + 1) & mask;
        slots[j] = (uint32_t)(i + 1);
    }
    free(m->slots);
    m->slots = slots;
    m->mask = mask;
    return 0;
}

int tk_strmap_put(tk_strmap *m, const char *k, size_t n, int32_t value)
{
    if (n > UINT32_MAX) return qt_fail(QTOOL_ERR_FORMAT, "tokenizer: token too long");
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        size_t ns = m->slots ? (m->mask + 1) * 2 : 64;
        if (strmap_rehash(m, ns)) return -1;
    }
    uint64_t h = tk_hash(k, n);
    size_t j = (size_t)h & m->mask;
    while (m->slots[j]) {
        tk_strent *e = &m->ent[m->slots[j] - 1];
        if (e->hash == h && e->len == n && memcmp(m->keys.p + e->off, k, n) == 0) {
            e->value = value;
            return 0;
        }
        j = (j + 1) & m->mask;
    }
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        tk_strent *ne = realloc(m->ent, nc * sizeof *ne);
        if (!ne) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        m->ent = ne;
        m->cap = nc;
    }
    size_t off = m->keys.n;
    if (tk_buf_put(&m->keys, k, n) || tk_buf_putc(&m->keys, '\0')) return -1;
    m->ent[m->n] = (tk_strent){h, off, (uint32_t)n, value};
    m->slots[j] = (uint32_t)(++m->n);
    return 0;
}

int32_t tk_strmap_get(const tk_strmap *m, const char *k, size_t n)
{
    if (!m->slots) return -1;
    uint64_t h = tk_hash(k, n);
    size_t j = (size_t)h & m->mask;
    while (m->slots[j]) {
        const tk_strent *e = &m->ent[m->slots[j] - 1];
        if (e->hash == h && e->len == n && memcmp(m->keys.p + e->off, k, n) == 0) return e->value;
        j = (j + 1) & m->mask;
    }
    return -1;
}

void tk_strmap_free(tk_strmap *m)
{
    free(m->slots);
    free(m->ent);
    tk_buf_free(&m->keys);
    memset(m, 0, sizeof *m);
}

int tk_mergemap_init(tk_mergemap *m, size_t expected)
{
    size_t ns = 64;
    while (ns < expected * 2 + 1) ns *= 2;
    m->keys = calloc(ns, sizeof *m->keys);
    m->vals = malloc(ns * sizeof *m->vals);
    if (!m->keys || !m->vals) {
        tk_mergemap_free(m);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    }
    m->mask = ns - 1;
    m->n = 0;
    return 0;
}

static inline uint64_t pair_key(int32_t a, int32_t b)
{
    return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
}

/* The table is sized for all merges up front, so it never fills. A pair
 * listed twice keeps the later rank, as the library's map does. */
void tk_mergemap_put(tk_mergemap *m, int32_t a, int32_t b, tk_merge_val v)
{
    uint64_t key = pair_key(a, b);
    size_t j = (size_t)mix64(key) & m->mask;
    while (m->keys[j] && m->keys[j] != key) j = (j + 1) & m->mask;
    if (!m->keys[j]) m->n++;
    m->keys[j] = key;
    m->vals[j] = v;
}

const tk_merge_val *tk_mergemap_get(const tk_mergemap *m, int32_t a, int32_t b)
{
    if (!m->keys) return NULL;
    uint64_t key = pair_key(a, b);
    size_t j = (size_t)mix64(key) & m->mask;
    while (m->keys[j]) {
        if (m->keys[j] == key) return &m->vals[j];
        j = (j + 1) & m->mask;
    }
    return NULL;
}

void tk_mergemap_free(tk_mergemap *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- word cache ------------------------------------------------------------ */

#define CACHE_MAX_ENTRIES 16384
#define CACHE_MAX_WORD 256 /* longer words are not cached, as in the library */

int tk_cache_init(tk_cache *c)
{
    memset(c, 0, sizeof *c);
    if (pthread_mutex_init(&c->lock, NULL)) return qt_fail(QTOOL_ERR_INTERNAL, "tokenizer: mutex");
    c->slots = calloc(CACHE_MAX_ENTRIES * 2, sizeof *c->slots);
    c->ent = malloc(CACHE_MAX_ENTRIES * sizeof *c->ent);
    if (!c->slots || !c->ent) {
        tk_cache_free(c);
        return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
    }
    c->mask = CACHE_MAX_ENTRIES * 2 - 1;
    c->cap = CACHE_MAX_ENTRIES;
    return 0;
}

void tk_cache_free(tk_cache *c)
{
    if (c->slots || c->ent) pthread_mutex_destroy(&c->lock);
    free(c->slots);
    free(c->ent);
    tk_buf_free(&c->keys);
    free(c->ids.v);
    memset(c, 0, sizeof *c);
}

/* Appends the cached ids of the word to `out`; 1 when found. */
static int cache_get(tk_cache *c, uint64_t h, const char *k, size_t n, tk_ids *out, int *err)
{
    int found = 0;
    pthread_mutex_lock(&c->lock);
    size_t j = (size_t)h & c->mask;
    while (c->slots[j]) {
        const struct tk_cache_ent *e = &c->ent[c->slots[j] - 1];
        if (e->hash == h && e->key_len == n && memcmp(c->keys.p + e->key_off, k, n) == 0) {
            *err = tk_ids_append(out, c->ids.v + e->ids_off, e->n_ids);
            found = 1;
            break;
        }
        j = (j + 1) & c->mask;
    }
    pthread_mutex_unlock(&c->lock);
    return found;
}

static void cache_put(tk_cache *c, uint64_t h, const char *k, size_t n, const int32_t *ids, size_t n_ids)
{
    pthread_mutex_lock(&c->lock);
    if (c->n == c->cap) { /* full: start over rather than track ages */
        memset(c->slots, 0, (c->mask + 1) * sizeof *c->slots);
        c->n = 0;
        c->keys.n = 0;
        c->ids.n = 0;
    }
    size_t j = (size_t)h & c->mask;
    int present = 0;
    while (c->slots[j]) {
        const struct tk_cache_ent *e = &c->ent[c->slots[j] - 1];
        if (e->hash == h && e->key_len == n && memcmp(c->keys.p + e->key_off, k, n) == 0) {
            present = 1; /* another thread got there first */
            break;
        }
        j = (j + 1) & c->mask;
    }
    size_t key_off = c->keys.n, ids_off = c->ids.n;
    int failed = 0;
    if (!present) {
        if (!tk_buf_put(&c->keys, k, n) && !tk_ids_append(&c->ids, ids, n_ids)) {
            c->ent[c->n] = (struct tk_cache_ent){h, key_off, ids_off, (uint32_t)n, (uint32_t)n_ids};
            c->slots[j] = (uint32_t)(++c->n);
        } else {
            c->keys.n = key_off;
            c->ids.n = ids_off;
            failed = 1;
        }
    }
    pthread_mutex_unlock(&c->lock);
    /* A failed allocation only means the word is not cached. */
    if (failed) qt_clear_error();
}

/* ---- BPE ---------------------------------------------------------------------- */

static int sym_push(tk_work *w, size_t *n, int32_t c, uint32_t len)
{
    if (*n == w->syms_cap) {
        size_t nc = w->syms_cap ? w->syms_cap * 2 : 64;
        void *p = realloc(w->syms, nc * sizeof *w->syms);
        if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        w->syms = p;
        w->syms_cap = nc;
    }
    struct tk_sym *s = w->syms;
    int32_t i = (int32_t)*n;
    if (i > 0) s[i - 1].next = i;
    s[i] = (struct tk_sym){c, i - 1, -1, len};
    (*n)++;
    return 0;
}

/* Min-heap on (rank, pos): the lowest-ranked merge first, the leftmost
 * among equals, which is the library's order. */
static inline int heap_less(const struct tk_heap_ent *a, const struct tk_heap_ent *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static int heap_push(tk_work *w, size_t *n, struct tk_heap_ent e)
{
    if (*n == w->heap_cap) {
        size_t nc = w->heap_cap ? w->heap_cap * 2 : 64;
        void *p = realloc(w->heap, nc * sizeof *w->heap);
        if (!p) return qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "tokenizer: out of memory");
        w->heap = p;
        w->heap_cap = nc;
    }
    struct tk_heap_ent *h = w->heap;
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(&e, &h[parent])) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = e;
    return 0;
}

static struct tk_heap_ent heap_pop(tk_work *w, size_t *n)
{
    struct tk_heap_ent *h = w->heap;
    struct tk_heap_ent top = h[0];
    struct tk_heap_ent last = h[--(*n)];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        const struct tk_heap_ent *bv = &last;
        if (l < m && heap_less(&h[l], bv)) {
            best = l;
            bv = &h[l];
        }
        if (r < m && heap_less(&h[r], bv)) best = r;
        if (best == i) break;
        h[i] = h[best];
        i = best;
    }
    if (m) h[i] = last;
    return top;
}

static int bpe_unk_id(const tk_model *m, int32_t *id)
{
    *id = tk_strmap_get(&m->vocab, m->unk_token, m->unk_len);
    if (*id < 0)
        return qt_fail(QTOOL_ERR_FORMAT, "tokenizer: BPE unk_token '%s' is not in the vocabulary",
                       m->unk_token);
    return 0;
}

static int bpe_word(const tk_model *m, tk_work *w, const char *s, size_t n, tk_ids *out)
{
    size_t ns = 0;
    int have_unk = 0;
    int32_t unk_id = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        int32_t cp;
        size_t k = tk_utf8_next(s + i, &cp);
        int is_first = i == 0, is_last = i + k == n;
        const char *key = s + i;
        size_t key_len = k;
        if ((!is_first && m->prefix) || (is_last && m->suffix)) {
            w->word.n = 0;
            if ((!is_first && m->prefix && tk_buf_put(&w->word, m->prefix, m->prefix_len)) ||
                tk_buf_put(&w->word, s + i, k) ||
                (is_last && m->suffix && tk_buf_put(&w->word, m->suffix, m->suffix_len)))
                return -1;
            key = w->word.p;
            key_len = w->word.n;
        }
        i += k;
        int32_t id = tk_strmap_get(&m->vocab, key, key_len);
        if (id >= 0) {
            if (have_unk) {
                if (sym_push(w, &ns, unk_id, unk_len)) return -1;
                have_unk = 0;
            }
            if (sym_push(w, &ns, id, (uint32_t)k)) return -1;
            continue;
        }
        if (m->byte_fallback) {
            size_t b = 0;
            while (b < key_len && m->byte_token_ids[(unsigned char)key[b]] >= 0) b++;
            if (b == key_len) {
                /* The pending unknown token stays pending here, as in the
                 * library. */
                for (b = 0; b < key_len; b++)
                    if (sym_push(w, &ns, m->byte_token_ids[(unsigned char)key[b]], 1)) return -1;
                continue;
            }
        }
        if (m->unk_token) {
            if (have_unk && m->fuse_unk) {
                unk_len += (uint32_t)k;
            } else {
                if (have_unk && sym_push(w, &ns, unk_id, unk_len)) return -1;
                if (bpe_unk_id(m, &unk_id)) return -1;
                have_unk = 1;
                unk_len = (uint32_t)k;
            }
        }
        /* No unk_token: the character is dropped, as in the library. */
    }
    if (have_unk && sym_push(w, &ns, unk_id, unk_len)) return -1;

    struct tk_sym *sy = w->syms;
    size_t nh = 0;
    for (size_t i = 0; i + 1 < ns; i++) {
        const tk_merge_val *mv = tk_mergemap_get(&m->merges, sy[i].c, sy[i + 1].c);
        if (mv && heap_push(w, &nh, (struct tk_heap_ent){mv->rank, (uint32_t)i, mv->new_id})) return -1;
    }
    while (nh) {
        struct tk_heap_ent top = heap_pop(w, &nh);
        sy = w->syms;
        struct tk_sym *cur = &sy[top.pos];
        if (cur->len == 0 || cur->next == -1) continue;
        int32_t next_pos = cur->next;
        struct tk_sym right = sy[next_pos];
        /* A stale entry: the pair at this place has changed since. */
        const tk_merge_val *mv = tk_mergemap_get(&m->merges, cur->c, right.c);
        if (!mv || mv->new_id != top.new_id) continue;
        cur->c = top.new_id;
        cur->len += right.len;
        cur->next = right.next;
        sy[next_pos].len = 0;
        if (right.next >= 0 && (size_t)right.next < ns) sy[right.next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            mv = tk_mergemap_get(&m->merges, sy[cur->prev].c, cur->c);
            if (mv && heap_push(w, &nh, (struct tk_heap_ent){mv->rank, (uint32_t)cur->prev, mv->new_id}))
                return -1;
            cur = &w->syms[top.pos];
        }
        if (cur->next >= 0 && (size_t)cur->next < ns) {
            mv = tk_mergemap_get(&m->merges, cur->c, w->syms[cur->next].c);
            if (mv && heap_push(w, &nh, (struct tk_heap_ent){mv->rank, top.pos, mv->new_id})) return -1;
        }
    }
    for (size_t i = 0; i < ns; i++)
        if (w->syms[i].len != 0 && tk_ids_push(out, w->syms[i].c)) return -1;
    return 0;
}

/* ---- WordPiece ------------------------------------------------------------------- */

static int wordpiece_unk(const tk_model *m, tk_ids *out)
{
    int32_t id = tk_strmap_get(&m->vocab, m->unk_token, m->unk_len);
    if (id < 0)
        return qt_fail(QTOOL_ERR_FORMAT, "tokenizer: WordPiece unk_token '%s' is not in the vocabulary",
                       m->unk_token);
    return tk_ids_push(out, id);
}

static int wordpiece_word(const tk_model *m, tk_work *w, const char *s, size_t n, tk_ids *out)
{
    size_t chars = 0;
    for (size_t i = 0; i < n; i++) chars += ((unsigned char)s[i] & 0xC0) != 0x80;
    if (chars > m->max_input_chars_per_word) return wordpiece_unk(m, out);
    size_t mark = out->n;
    size_t start = 0;
    while (start < n) {
        size_t end = n;
        size_t pre = start > 0 ? m->prefix_len : 0;
        /* No vocabulary entry is longer than max_key_len: start the search
         * from there (at a character boundary). */
        if (m->max_key_len < pre) end = start;
        else if (end - start > m->max_key_len - pre) {
            end = start + (m->max_key_len - pre);
            while (end > start && ((unsigned char)s[end] & 0xC0) == 0x80) end--;
        }
        int32_t found = -1;
        while (start < end) {
            int32_t id;
            if (pre) {
                w->word.n = 0;
                if (tk_buf_put(&w->word, m->prefix, m->prefix_len) || tk_buf_put(&w->word, s + start, end - start))
                    return -1;
                id = tk_strmap_get(&m->vocab, w->word.p, w->word.n);
            } else {
                id = tk_strmap_get(&m->vocab, s + start, end - start);
            }
            if (id >= 0) {
                found = id;
                break;
            }
            end -= tk_utf8_last_len(s + start, end - start);
        }
        if (found < 0) {
            out->n = mark;
            return wordpiece_unk(m, out);
        }
        if (tk_ids_push(out, found)) return -1;
        start = end;
    }
    return 0;
}

/* ---- entry ------------------------------------------------------------------------- */

int tk_model_tokenize(const qt_tokenizer *tok, tk_work *w, const char *s, size_t n, tk_ids *out)
{
    const tk_model *m = &tok->model;
    if (n == 0) return 0;
    if (m->kind == TK_MODEL_BPE && m->ignore_merges) {
        int32_t id = tk_strmap_get(&m->vocab, s, n);
        if (id >= 0) return tk_ids_push(out, id);
    }
    uint64_t h = 0;
    tk_cache *cache = (tk_cache *)&m->cache; /* the cache is the one mutable part */
    if (n < CACHE_MAX_WORD) {
        int err = 0;
        h = tk_hash(s, n);
        if (cache_get(cache, h, s, n, out, &err)) return err;
    }
    w->word_ids.n = 0;
    int rc = m->kind == TK_MODEL_BPE ? bpe_word(m, w, s, n, &w->word_ids)
                                     : wordpiece_word(m, w, s, n, &w->word_ids);
    if (rc) return rc;
    if (n < CACHE_MAX_WORD) cache_put(cache, h, s, n, w->word_ids.v, w->word_ids.n);
    return tk_ids_append(out, w->word_ids.v, w->word_ids.n);
}

void tk_model_free(tk_model *m)
{
    tk_strmap_free(&m->vocab);
    free(m->rev);
    tk_mergemap_free(&m->merges);
    free(m->unk_token);
    free(m->prefix);
    free(m->suffix);
    tk_cache_free(&m->cache);
    memset(m, 0, sizeof *m);
}
