/* Unit tests of the tokenizer: refusal of bad and unsupported tokenizer.json
 * files with a message naming the problem, robustness against truncated and
 * mutated files, and the API's edge cases. Ids against the reference
 * library are checked by check_reference.py. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "error.h"
#include "tokenizer.h"

/* A small BERT-style tokenizer. */
static const char *WORDPIECE =
    "{\"version\":\"1.0\",\"truncation\":{\"max_length\":8,\"strategy\":\"LongestFirst\",\"stride\":0},"
    "\"padding\":{\"pad_id\":9,\"pad_token\":\"[PAD]\"},"
    "\"added_tokens\":["
    "{\"id\":0,\"content\":\"[UNK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":1,\"content\":\"[CLS]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":2,\"content\":\"[SEP]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":null,\"lowercase\":true},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",2],\"cls\":[\"[CLS]\",1]},"
    "\"decoder\":{\"type\":\"WordPiece\",\"prefix\":\"##\",\"cleanup\":true},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":100,\"vocab\":{\"[UNK]\":0,\"[CLS]\":1,\"[SEP]\":2,\"hello\":3,"
    "\"world\":4,\"##s\":5,\"!\":6,\"he\":7,\"##llo\":8,\"[PAD]\":9}}}";

/* A small byte-level BPE tokenizer. */
static const char *BPE =
    "{\"version\":\"1.0\",\"added_tokens\":["
    "{\"id\":6,\"content\":\"<eos>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"NFC\"},"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<eos>\",\"type_id\":0}},"
    "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],"
    "\"special_tokens\":{\"<eos>\":{\"id\":\"<eos>\",\"ids\":[6],\"tokens\":[\"<eos>\"]}}},"
    "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,\"use_regex\":true},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"continuing_subword_prefix\":null,"
    "\"end_of_word_suffix\":null,\"fuse_unk\":false,\"byte_fallback\":false,\"ignore_merges\":false,"
    "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"\\u0120\":3,\"\\u0120a\":4,\"\\u0120ab\":5},"
    "\"merges\":[[\"\\u0120\",\"a\"],[\"\\u0120a\",\"b\"],[\"a\",\"b\"]]}}";

/* The pre-tokenizer of BPE, to swap for others. */
static const char *BPE_PRE = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true}";

/* `base` with the first occurrence of `from` replaced by `to` (a new string). */
static char *with(const char *base, const char *from, const char *to)
{
    const char *at = strstr(base, from);
    assert_non_null(at);
    size_t n = strlen(base) - strlen(from) + strlen(to);
    char *s = malloc(n + 1);
    assert_non_null(s);
    size_t pre = (size_t)(at - base);
    memcpy(s, base, pre);
    strcpy(s + pre, to);
    strcat(s, at + strlen(from));
    return s;
}

static qt_tokenizer *load_ok(const char *json)
{
    qt_tokenizer *t = NULL;
    int rc = qt_tokenizer_load_json(json, strlen(json), "t.json", &t);
    if (rc) fprintf(stderr, "unexpected failure: %s\n", qt_last_error());
    assert_int_equal(rc, 0);
    assert_non_null(t);
    return t;
}

/* Loading must fail with `status` and a message containing `needle`. */
static void expect_refusal(const char *json, int status, const char *needle)
{
    qt_tokenizer *t = (qt_tokenizer *)0x1;
    int rc = qt_tokenizer_load_json(json, strlen(json), "t.json", &t);
    if (rc != status || !strstr(qt_last_error(), needle) || !strstr(qt_last_error(), "t.json"))
        fprintf(stderr, "want %d '%s', got %d '%s'\n", status, needle, rc, qt_last_error());
    assert_int_equal(rc, status);
    assert_null(t);
    assert_non_null(strstr(qt_last_error(), needle));
    assert_non_null(strstr(qt_last_error(), "t.json"));
}

static void expect_refusal_with(const char *base, const char *from, const char *to, int status, const char *needle)
{
    char *s = with(base, from, to);
    expect_refusal(s, status, needle);
    free(s);
}

static void encode_str(const qt_tokenizer *t, const char *s, int special, int32_t **ids, size_t *n)
{
    int rc = qt_tokenizer_encode(t, s, strlen(s), special, ids, n);
    if (rc) fprintf(stderr, "encode failed: %s\n", qt_last_error());
    assert_int_equal(rc, 0);
}

static void test_refuses_unsupported(void **state)
{
    (void)state;
    expect_refusal_with(BPE, BPE_PRE,
                        "{\"type\":\"Metaspace\",\"replacement\":\"_\",\"prepend_scheme\":\"always\",\"split\":true}",
                        QTOOL_ERR_UNSUPPORTED, "pre_tokenizer type 'Metaspace' is not supported");
    expect_refusal_with(BPE, "{\"type\":\"NFC\"}", "{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"}",
                        QTOOL_ERR_UNSUPPORTED, "normalizer type 'Precompiled' is not supported");
    expect_refusal_with(BPE, "\"type\":\"BPE\"", "\"type\":\"Unigram\"", QTOOL_ERR_UNSUPPORTED,
                        "model type 'Unigram' is not supported");
    expect_refusal_with(BPE, "\"dropout\":null", "\"dropout\":0.1", QTOOL_ERR_UNSUPPORTED, "dropout");
    expect_refusal_with(BPE, "\"use_regex\":true}", "\"use_regex\":true,\"frobnicate\":1}", QTOOL_ERR_UNSUPPORTED,
                        "option 'frobnicate' is not supported");
    expect_refusal_with(WORDPIECE, "{\"type\":\"BertProcessing\"", "{\"type\":\"BertProcessingX\"", QTOOL_ERR_UNSUPPORTED,
                        "post_processor type 'BertProcessingX' is not supported");
    expect_refusal_with(BPE, "{\"Sequence\":{\"id\":\"A\"", "{\"Sequence\":{\"id\":\"B\"", QTOOL_ERR_UNSUPPORTED,
                        "sequence B");
    expect_refusal_with(BPE, "\"version\":\"1.0\"", "\"version\":\"2.0\"", QTOOL_ERR_UNSUPPORTED, "version 2.0");
    /* Regex constructs with no faithful translation. */
    expect_refusal_with(BPE, BPE_PRE,
                        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[a-z&&[^aeiou]]\"},"
                        "\"behavior\":\"Isolated\",\"invert\":false}",
                        QTOOL_ERR_UNSUPPORTED, "intersection");
}

static void test_refuses_malformed(void **state)
{
    (void)state;
    expect_refusal("", QTOOL_ERR_FORMAT, "invalid JSON");
    expect_refusal("{\"model\":", QTOOL_ERR_FORMAT, "invalid JSON");
    expect_refusal("[1,2]", QTOOL_ERR_FORMAT, "top level");
    expect_refusal("{\"version\":\"1.0\"}", QTOOL_ERR_FORMAT, "'model' is missing");
    expect_refusal("{\"a\":1,\"a\":2}", QTOOL_ERR_FORMAT, "duplicate");
    expect_refusal_with(BPE, "[\"a\",\"b\"]", "[\"a\",\"zz\"]", QTOOL_ERR_FORMAT, "'zz' is not in the vocabulary");
    expect_refusal_with(BPE, "[\"a\",\"b\"]", "\"a b c\"", QTOOL_ERR_FORMAT, "merge 2 is not two tokens");
    expect_refusal_with(BPE, "[\"a\",\"b\"]", "[\"a\"]", QTOOL_ERR_FORMAT, "merge 2 must be");
    expect_refusal_with(BPE, "[\"\\u0120\",\"a\"]", "[\"b\",\"b\"]", QTOOL_ERR_FORMAT, "merged token 'bb'");
    expect_refusal_with(BPE, "\"a\":0", "\"a\":-1", QTOOL_ERR_FORMAT, "out of range");
    expect_refusal_with(BPE, "\"a\":0", "\"a\":\"0\"", QTOOL_ERR_FORMAT, "must be an integer");
    expect_refusal_with(BPE, "\"a\":0", "\"a\":99999999999", QTOOL_ERR_FORMAT, "out of range");
    expect_refusal_with(BPE, "\"merges\":[[\"\\u0120\",\"a\"],[\"\\u0120a\",\"b\"],[\"a\",\"b\"]]", "\"merges\":7",
                        QTOOL_ERR_FORMAT, "'merges' must be an array");
    expect_refusal_with(BPE, "\"fuse_unk\":false", "\"fuse_unk\":\"no\"", QTOOL_ERR_FORMAT, "'fuse_unk' must be true or false");
    expect_refusal_with(WORDPIECE, "\"added_tokens\":[", "\"added_tokens\":5,\"y\":[", QTOOL_ERR_FORMAT,
                        "'added_tokens' must be an array");
    expect_refusal_with(WORDPIECE, "\"content\":\"[CLS]\"", "\"content\":7", QTOOL_ERR_FORMAT, "'content' must be a string");
    expect_refusal_with(WORDPIECE, "\"sep\":[\"[SEP]\",2]", "\"sep\":[\"[SEP]\"]", QTOOL_ERR_FORMAT, "[token, id]");
    expect_refusal_with(BPE, "\"ids\":[6]", "\"ids\":[-6]", QTOOL_ERR_FORMAT, "out of range");
    expect_refusal_with(BPE, "\"<eos>\":{\"id\"", "\"<bos>\":{\"id\"", QTOOL_ERR_FORMAT, "not in special_tokens");
    expect_refusal_with(BPE, BPE_PRE,
                        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(ab\"},"
                        "\"behavior\":\"Isolated\",\"invert\":false}",
                        QTOOL_ERR_FORMAT, "regex");
    expect_refusal_with(BPE, BPE_PRE,
                        "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                        "\"behavior\":\"Sideways\",\"invert\":false}",
                        QTOOL_ERR_FORMAT, "unknown behavior");

    /* Sequences nested deeper than any real file. */
    char deep[4096] = "{\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]},\"normalizer\":";
    for (int i = 0; i < 40; i++) strcat(deep, "{\"type\":\"Sequence\",\"normalizers\":[");
    for (int i = 0; i < 40; i++) strcat(deep, "]}");
    strcat(deep, "}");
    expect_refusal(deep, QTOOL_ERR_FORMAT, "nested too deep");

    qt_tokenizer *t;
    assert_int_not_equal(qt_tokenizer_load("/nonexistent/tokenizer.json", &t), 0);
    assert_null(t);
    assert_non_null(strstr(qt_last_error(), "/nonexistent/tokenizer.json"));
}

/* Every prefix of a valid file, and many random mutations of it, must load
 * or fail cleanly; what loads must encode and decode without trouble (the
 * sanitizer build checks the memory side). */
static void test_truncated_and_mutated(void **state)
{
    (void)state;
    const char *bases[] = {BPE, WORDPIECE};
    const char *texts[] = {"ab ab", "Hello worlds! \xe4\xb8\xad\xe6\x96\x87", "", "<eos>a[CLS]b"};
    int level = qt_log_level();
    qt_set_log_level(QTOOL_LOG_ERROR); /* mutated ids draw warnings */
    uint64_t rng = 0x9E3779B97F4A7C15ULL;
    for (size_t b = 0; b < 2; b++) {
        size_t n = strlen(bases[b]);
        char *buf = malloc(n + 8);
        assert_non_null(buf);
        for (size_t k = 0; k < n; k++) {
            qt_tokenizer *t;
            if (qt_tokenizer_load_json(bases[b], k, "t.json", &t) == 0) qt_tokenizer_free(t);
        }
        static const char alphabet[] = "{}[]\",:0123456789-.eE\\u truefalsnl\x80\xff";
        for (int iter = 0; iter < 3000; iter++) {
            memcpy(buf, bases[b], n + 1);
            int edits = 1 + (int)(rng % 3);
            for (int e = 0; e < edits; e++) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                buf[rng % n] = alphabet[(rng >> 20) % (sizeof alphabet - 1)];
            }
            qt_tokenizer *t;
            if (qt_tokenizer_load_json(buf, n, "t.json", &t) != 0) continue;
            for (size_t s = 0; s < sizeof texts / sizeof texts[0]; s++) {
                int32_t *ids;
                size_t m;
                if (qt_tokenizer_encode(t, texts[s], strlen(texts[s]), 1, &ids, &m) == 0) {
                    char *text;
                    if (qt_tokenizer_decode(t, ids, m, 0, &text, NULL) == 0) free(text);
                    free(ids);
                }
            }
            qt_tokenizer_free(t);
        }
        free(buf);
    }
    qt_set_log_level(level);
}

static void test_encode_basics(void **state)
{
    (void)state;
    qt_tokenizer *t = load_ok(WORDPIECE);
    int32_t *ids;
    size_t n;

    encode_str(t, "", 0, &ids, &n);
    assert_int_equal(n, 0);
    free(ids);
    encode_str(t, "", 1, &ids, &n); /* [CLS] [SEP] */
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 2);
    free(ids);
    assert_int_equal(qt_tokenizer_encode(t, NULL, 0, 0, &ids, &n), 0);
    assert_int_equal(n, 0);
    free(ids);

    /* Greedy longest match: "hellos" is hello ##s; "HeLLo" lowercases. */
    encode_str(t, "HeLLo hellos WORLD!", 0, &ids, &n);
    int32_t want[] = {3, 3, 5, 4, 6};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    encode_str(t, "xyz", 0, &ids, &n); /* no piece of it is known */
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 0);
    free(ids);

    /* Invalid UTF-8 is refused, never guessed at. */
    assert_int_not_equal(qt_tokenizer_encode(t, "ab\xc3(", 4, 0, &ids, &n), 0);
    assert_non_null(strstr(qt_last_error(), "not valid UTF-8"));
    assert_null(ids);
    assert_int_not_equal(qt_tokenizer_encode(t, "\xed\xa0\x80", 3, 0, &ids, &n), 0); /* a surrogate */

    /* Queries. */
    assert_int_equal(qt_tokenizer_max_length(t), 8);
    assert_int_equal(qt_tokenizer_pad_id(t), 9);
    assert_int_equal(qt_tokenizer_num_special(t), 2);
    assert_int_equal(qt_tokenizer_vocab_size(t), 10);
    assert_int_equal(qt_tokenizer_token_to_id(t, "world"), 4);
    assert_int_equal(qt_tokenizer_token_to_id(t, "nope"), -1);
    size_t len;
    const char *s = qt_tokenizer_id_to_token(t, 8, &len);
    assert_non_null(s);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "##llo", 5);
    assert_null(qt_tokenizer_id_to_token(t, 1000, &len));
    qt_tokenizer_free(t);
}

static void test_truncation(void **state)
{
    (void)state;
    qt_tokenizer *t = load_ok(WORDPIECE);
    const char *text = "hello world hello world hello world hello";
    int32_t *full, *cut;
    size_t nf, nc;
    encode_str(t, text, 1, &full, &nf);
    assert_int_equal(nf, 9);
    for (size_t max = 2; max <= 12; max++) {
        assert_int_equal(qt_tokenizer_encode_truncated(t, text, strlen(text), 1, max, &cut, &nc), 0);
        size_t want = max < nf ? max : nf;
        assert_int_equal(nc, want);
        assert_int_equal(cut[0], 1);
        assert_int_equal(cut[nc - 1], 2);
        assert_memory_equal(cut, full, (nc - 1) * sizeof *cut); /* the text's tokens, cut from the right */
        free(cut);
    }
    assert_int_not_equal(qt_tokenizer_encode_truncated(t, text, strlen(text), 1, 1, &cut, &nc), 0);
    assert_non_null(strstr(qt_last_error(), "special"));
    assert_int_equal(qt_tokenizer_encode_truncated(t, text, strlen(text), 0, 3, &cut, &nc), 0);
    assert_int_equal(nc, 3);
    assert_memory_equal(cut, full + 1, 3 * sizeof *cut);
    free(cut);
    free(full);
    qt_tokenizer_free(t);
}

static void test_bpe_and_decode(void **state)
{
    (void)state;
    qt_tokenizer *t = load_ok(BPE);
    int32_t *ids;
    size_t n;
    encode_str(t, "ab ab<eos>a", 1, &ids, &n);
    int32_t want[] = {6, 2, 5, 6, 0};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    char *text;
    size_t len;
    assert_int_equal(qt_tokenizer_decode(t, ids, n, 0, &text, &len), 0);
    assert_string_equal(text, "<eos>ab ab<eos>a");
    assert_int_equal(len, strlen(text));
    free(text);
    assert_int_equal(qt_tokenizer_decode(t, ids, n, 1, &text, &len), 0);
    assert_string_equal(text, "ab aba");
    free(text);
    free(ids);
    /* Characters outside the tiny vocabulary have no token at all. */
    encode_str(t, "c", 0, &ids, &n);
    assert_int_equal(n, 0);
    free(ids);
    qt_tokenizer_free(t);

    /* An unsupported decoder does not stop encoding; decoding names it. */
    char *s = with(BPE, "\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"Metaspace\"");
    t = load_ok(s);
    free(s);
    encode_str(t, "ab", 0, &ids, &n);
    assert_int_equal(n, 1);
    assert_int_not_equal(qt_tokenizer_decode(t, ids, n, 0, &text, &len), 0);
    assert_non_null(strstr(qt_last_error(), "decoder type 'Metaspace' is not supported"));
    free(ids);
    qt_tokenizer_free(t);
}

/* Vocabulary keys with U+0000 (jansson refuses them as object keys; the
 * loader hides them behind a placeholder that is not in the file). */
static void test_nul_in_keys(void **state)
{
    (void)state;
    const char *json =
        "{\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"vocab\":{\"[UNK]\":0,\"a\\u0000\":1,"
        "\"\\udbff\\udffd\":2,\"\\u0000\":3,\"b\":4}},\"pre_tokenizer\":{\"type\":\"WhitespaceSplit\"},"
        "\"added_tokens\":[{\"id\":5,\"content\":\"x\\u0000y\",\"special\":false,\"normalized\":false}]}";
    qt_tokenizer *t = load_ok(json);
    int32_t *ids;
    size_t n;
    static const char text[] = "a\0 \xf4\x8f\xbf\xbd \0 b x\0y";
    assert_int_equal(qt_tokenizer_encode(t, text, sizeof text - 1, 0, &ids, &n), 0);
    int32_t want[] = {1, 2, 3, 4, 5};
    assert_int_equal(n, 5);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    qt_tokenizer_free(t);
}

typedef struct thread_job {
    const qt_tokenizer *t;
    int ok;
} thread_job;

static void *encode_many(void *arg)
{
    thread_job *j = arg;
    j->ok = 1;
    char text[256];
    for (int i = 0; i < 2000 && j->ok; i++) {
        snprintf(text, sizeof text, "hello%d worlds %d HELLO!! he%dllo", i % 37, i, i % 5);
        int32_t *a, *b;
        size_t na, nb;
        if (qt_tokenizer_encode(j->t, text, strlen(text), i & 1, &a, &na) ||
            qt_tokenizer_encode(j->t, text, strlen(text), i & 1, &b, &nb)) {
            j->ok = 0;
            break;
        }
        if (na != nb || memcmp(a, b, na * sizeof *a) != 0) j->ok = 0;
        free(a);
        free(b);
    }
    return NULL;
}

/* One tokenizer, several threads: results do not depend on who else is
 * encoding (the word cache and the scratch pool are shared). */
static void test_threads(void **state)
{
    (void)state;
    qt_tokenizer *t = load_ok(WORDPIECE);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i].t = t;
        assert_int_equal(pthread_create(&th[i], NULL, encode_many, &jobs[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_true(jobs[i].ok);
    }
    qt_tokenizer_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refuses_unsupported), cmocka_unit_test(test_refuses_malformed),
        cmocka_unit_test(test_truncated_and_mutated), cmocka_unit_test(test_encode_basics),
        cmocka_unit_test(test_truncation), cmocka_unit_test(test_bpe_and_decode),
        cmocka_unit_test(test_nul_in_keys), cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
