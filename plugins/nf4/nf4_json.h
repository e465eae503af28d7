/* A minimal, bounds-checked reader for the small flat JSON objects this
 * plugin meets (quantization_config, the packed quant_state dict), and a
 * writer of doubles the way Python's repr() prints them, so saved
 * quant_state bytes match what bitsandbytes writes. */
#ifndef NF4_JSON_H
#define NF4_JSON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NF4_JSON_MAX_DEPTH 32

static size_t nf4j_ws(const char *s, size_t n, size_t i)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) i++;
    return i;
}

/* Index just past the string starting at s[i] == '"', or 0 on error. */
static size_t nf4j_skip_string(const char *s, size_t n, size_t i)
{
    if (i >= n || s[i] != '"') return 0;
    for (i++; i < n; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == '"') return i + 1;
    }
    return 0;
}

/* Index just past the value starting at s[i], or 0 on error. */
static size_t nf4j_skip_value(const char *s, size_t n, size_t i, int depth)
{
    if (depth > NF4_JSON_MAX_DEPTH) return 0;
    i = nf4j_ws(s, n, i);
    if (i >= n) return 0;
    if (s[i] == '"') return nf4j_skip_string(s, n, i);
    if (s[i] == '{' || s[i] == '[') {
        char close = s[i] == '{' ? '}' : ']';
        int is_obj = s[i] == '{';
        i = nf4j_ws(s, n, i + 1);
        if (i < n && s[i] == close) return i + 1;
        for (;;) {
            if (is_obj) {
                i = nf4j_skip_string(s, n, nf4j_ws(s, n, i));
                if (!i) return 0;
                i = nf4j_ws(s, n, i);
                if (i >= n || s[i] != ':') return 0;
                i++;
            }
            i = nf4j_skip_value(s, n, i, depth + 1);
            if (!i) return 0;
            i = nf4j_ws(s, n, i);
            if (i >= n) return 0;
            if (s[i] == ',') {
                i++;
                continue;
            }
            if (s[i] == close) return i + 1;
            return 0;
        }
    }
    /* number or literal */
    size_t start = i;
    while (i < n && (s[i] == '-' || s[i] == '+' || s[i] == '.' || (s[i] >= '0' && s[i] <= '9') ||
                     (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z')))
        i++;
    return i > start ? i : 0;
}

/* Finds `key` among the members of the top-level object. Sets *v and *vend
 * to the raw value text; returns 1 when found, 0 when absent, -1 when the
 * text is not a JSON object. */
static int nf4j_find(const char *s, size_t n, const char *key, size_t *v, size_t *vend)
{
    size_t i = nf4j_ws(s, n, 0), klen = strlen(key);
    if (i >= n || s[i] != '{') return -1;
    i = nf4j_ws(s, n, i + 1);
    if (i < n && s[i] == '}') return 0;
    for (;;) {
        i = nf4j_ws(s, n, i);
        size_t ks = i, ke = nf4j_skip_string(s, n, i);
        if (!ke) return -1;
        i = nf4j_ws(s, n, ke);
        if (i >= n || s[i] != ':') return -1;
        size_t vs = nf4j_ws(s, n, i + 1), ve = nf4j_skip_value(s, n, vs, 1);
        if (!ve) return -1;
        if (ke - ks - 2 == klen && memcmp(s + ks + 1, key, klen) == 0) {
            *v = vs;
            *vend = ve;
            return 1;
        }
        i = nf4j_ws(s, n, ve);
        if (i < n && s[i] == ',') {
            i++;
            continue;
        }
        if (i < n && s[i] == '}') return 0;
        return -1;
    }
}

/* String member without escapes into buf; 1 ok, 0 absent/other type. */
static int nf4j_get_string(const char *s, size_t n, const char *key, char *buf, size_t len)
{
    size_t v, ve;
    if (nf4j_find(s, n, key, &v, &ve) != 1 || s[v] != '"' || ve - v < 2) return 0;
    size_t l = ve - v - 2;
    if (l + 1 > len || memchr(s + v + 1, '\\', l)) return 0;
    memcpy(buf, s + v + 1, l);
    buf[l] = '\0';
    return 1;
}

static int nf4j_parse_number(const char *s, size_t v, size_t ve, double *out)
{
    char tmp[64];
    if (ve - v == 0 || ve - v >= sizeof tmp) return 0;
    memcpy(tmp, s + v, ve - v);
    tmp[ve - v] = '\0';
    char *end;
    *out = strtod(tmp, &end);
    return *end == '\0';
}

static int nf4j_get_number(const char *s, size_t n, const char *key, double *out)
{
    size_t v, ve;
    if (nf4j_find(s, n, key, &v, &ve) != 1) return 0;
    return nf4j_parse_number(s, v, ve, out);
}

/* 1 true, 0 false, -1 absent or not a boolean. */
static int nf4j_get_bool(const char *s, size_t n, const char *key)
{
    size_t v, ve;
    if (nf4j_find(s, n, key, &v, &ve) != 1) return -1;
    if (ve - v == 4 && memcmp(s + v, "true", 4) == 0) return 1;
    if (ve - v == 5 && memcmp(s + v, "false", 5) == 0) return 0;
    return -1;
}

/* Array of up to `max` integers; returns the count, or -1. */
static int nf4j_get_int_array(const char *s, size_t n, const char *key, long long *out, int max)
{
    size_t v, ve;
    if (nf4j_find(s, n, key, &v, &ve) != 1 || s[v] != '[') return -1;
    size_t i = nf4j_ws(s, n, v + 1);
    int count = 0;
    if (i < ve && s[i] == ']') return 0;
    for (;;) {
        size_t st = i, e = nf4j_skip_value(s, ve, i, 1);
        double d;
        if (!e || count >= max || !nf4j_parse_number(s, st, e, &d) || d != (double)(long long)d) return -1;
        out[count++] = (long long)d;
        i = nf4j_ws(s, ve, e);
        if (i < ve && s[i] == ',') {
            i = nf4j_ws(s, ve, i + 1);
            continue;
        }
        if (i < ve && s[i] == ']') return count;
        return -1;
    }
}

/* Python repr() of a finite double: shortest round-trip digits, fixed
 * notation for exponents in [-4, 16), otherwise d.ddde+XX. */
static void nf4j_py_repr(double x, char *buf, size_t len)
{
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*e", prec - 1, x);
        if (strtod(tmp, NULL) == x) break;
    }
    /* tmp: [-]d[.ddd]e[+-]XX */
    char digits[24];
    size_t nd = 0;
    const char *p = tmp;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    for (; *p && *p != 'e'; p++)
        if (*p >= '0' && *p <= '9' && nd < sizeof digits - 1) digits[nd++] = *p;
    digits[nd] = '\0';
    int exp10 = *p == 'e' ? atoi(p + 1) : 0;
    while (nd > 1 && digits[nd - 1] == '0') digits[--nd] = '\0';
    char out[64];
    size_t o = 0;
    if (neg) out[o++] = '-';
    if (exp10 >= -4 && exp10 < 16) {
        if (exp10 < 0) {
            out[o++] = '0';
            out[o++] = '.';
            for (int z = 0; z < -exp10 - 1; z++) out[o++] = '0';
            for (size_t d = 0; d < nd; d++) out[o++] = digits[d];
        } else {
            for (int d = 0; d <= exp10; d++) out[o++] = (size_t)d < nd ? digits[d] : '0';
            out[o++] = '.';
            if ((size_t)exp10 + 1 < nd)
                for (size_t d = (size_t)exp10 + 1; d < nd; d++) out[o++] = digits[d];
            else
                out[o++] = '0';
        }
        out[o] = '\0';
    } else {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            for (size_t d = 1; d < nd; d++) out[o++] = digits[d];
        }
        snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
    snprintf(buf, len, "%s", out);
}

#endif
