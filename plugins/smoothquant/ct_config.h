/* Reading and recognising compressed-tensors `quantization_config` objects
 * (the layout vLLM loads for W8A8 int8 and FP8 checkpoints). A small
 * bounded JSON walker, enough to answer "is this an 8-bit weight and
 * activation scheme of type int/float": plugins link nothing but the SDK.
 * Header-only; shared by the smoothquant and fp8 plugins and their tests.
 *
 * Every function takes [p, end) and never reads past `end`; nesting is
 * limited to CTJ_MAX_DEPTH, so hostile text fails cleanly. */
#ifndef QTOOL_CT_CONFIG_H
#define QTOOL_CT_CONFIG_H

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define CTJ_MAX_DEPTH 64
#define CTJ_MAX_TEXT (1u << 20)

static inline const char *ctj_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Past the closing quote of the string starting at p (which is '"'). */
static inline const char *ctj_skip_string(const char *p, const char *end)
{
    if (p >= end || *p != '"') return NULL;
    for (p++; p < end; p++) {
        if (*p == '\\') {
            if (++p >= end) return NULL;
        } else if (*p == '"') {
            return p + 1;
        } else if ((unsigned char)*p < 0x20) {
            return NULL;
        }
    }
    return NULL;
}

static inline const char *ctj_skip_value(const char *p, const char *end, int depth)
{
    p = ctj_ws(p, end);
    if (p >= end || depth > CTJ_MAX_DEPTH) return NULL;
    char c = *p;
    if (c == '"') return ctj_skip_string(p, end);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        p = ctj_ws(p + 1, end);
        if (p < end && *p == close) return p + 1;
        for (;;) {
            if (c == '{') {
                p = ctj_skip_string(ctj_ws(p, end), end);
                if (!p) return NULL;
                p = ctj_ws(p, end);
                if (p >= end || *p != ':') return NULL;
                p++;
            }
            p = ctj_skip_value(p, end, depth + 1);
            if (!p) return NULL;
            p = ctj_ws(p, end);
            if (p >= end) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    /* number, true, false, null */
    const char *s = p;
    while (p < end && (*p == '-' || *p == '+' || *p == '.' || (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
                       (*p >= 'A' && *p <= 'Z')))
        p++;
    return p > s ? p : NULL;
}

/* The value of member `key` of the object at p (top level of that object),
 * or NULL when absent or malformed. */
static inline const char *ctj_member(const char *p, const char *end, const char *key)
{
    if (!p) return NULL;
    p = ctj_ws(p, end);
    if (p >= end || *p != '{') return NULL;
    size_t kl = strlen(key);
    p = ctj_ws(p + 1, end);
    if (p < end && *p == '}') return NULL;
    for (;;) {
        p = ctj_ws(p, end);
        const char *ks = p, *ke = ctj_skip_string(p, end);
        if (!ke) return NULL;
        p = ctj_ws(ke, end);
        if (p >= end || *p != ':') return NULL;
        p = ctj_ws(p + 1, end);
        if ((size_t)(ke - ks) == kl + 2 && memcmp(ks + 1, key, kl) == 0) return p;
        p = ctj_skip_value(p, end, 1);
        if (!p) return NULL;
        p = ctj_ws(p, end);
        if (p >= end || *p != ',') return NULL;
        p++;
    }
}

/* 1 when the value at p is the string `s` (no escapes). */
static inline int ctj_is_string(const char *p, const char *end, const char *s)
{
    if (!p) return 0;
    size_t n = strlen(s);
    return p < end && *p == '"' && (size_t)(end - p) > n + 1 && memcmp(p + 1, s, n) == 0 && p[n + 1] == '"';
}

static inline int ctj_is_literal(const char *p, const char *end, const char *lit)
{
    if (!p) return 0;
    size_t n = strlen(lit);
    if ((size_t)(end - p) < n || memcmp(p, lit, n) != 0) return 0;
    return (size_t)(end - p) == n || !((p[n] >= 'a' && p[n] <= 'z') || (p[n] >= '0' && p[n] <= '9'));
}

/* Integer value at p into *out; 0 on success. */
static inline int ctj_int(const char *p, const char *end, long *out)
{
    if (!p || p >= end) return -1;
    char buf[32];
    size_t n = 0;
    while (p + n < end && n + 1 < sizeof buf && ((p[n] >= '0' && p[n] <= '9') || p[n] == '-')) {
        buf[n] = p[n];
        n++;
    }
    if (n == 0 || n + 1 >= sizeof buf) return -1;
    buf[n] = '\0';
    char *e = NULL;
    long v = strtol(buf, &e, 10);
    if (!e || *e) return -1;
    *out = v;
    return 0;
}

/* Do the quantization args at p say: `bits`-bit `type`, symmetric? */
static inline int ct_args_match(const char *p, const char *end, long bits, const char *type)
{
    long nb = 0;
    if (!p || *p != '{') return 0;
    if (ctj_int(ctj_member(p, end, "num_bits"), end, &nb) != 0 || nb != bits) return 0;
    if (!ctj_is_string(ctj_member(p, end, "type"), end, type)) return 0;
    const char *sym = ctj_member(p, end, "symmetric");
    if (sym && !ctj_is_literal(sym, end, "true")) return 0;
    const char *st = ctj_member(p, end, "strategy");
    /* Group and block scales are other formats. */
    if (st && (ctj_is_string(st, end, "group") || ctj_is_string(st, end, "block") ||
               ctj_is_string(st, end, "tensor_group") || ctj_is_string(st, end, "attn_head")))
        return 0;
    return 1;
}

/* 1 when `json` is a compressed-tensors config whose every config group
 * quantizes weights and input activations to 8-bit `type` ("int" or
 * "float") with per-channel or per-tensor weight scales, stored in
 * `format` ("int-quantized" / "float-quantized"). */
static inline int ct_accepts_w8a8(const char *json, const char *format, const char *type)
{
    if (!json) return 0;
    size_t n = strnlen(json, CTJ_MAX_TEXT + 1);
    if (n > CTJ_MAX_TEXT) return 0;
    const char *p = ctj_ws(json, json + n), *end = json + n;
    const char *after = ctj_skip_value(p, end, 0);
    if (!after || ctj_ws(after, end) != end) return 0; /* one value and nothing else */
    if (!ctj_is_string(ctj_member(p, end, "quant_method"), end, "compressed-tensors")) return 0;
    const char *top_format = ctj_member(p, end, "format");
    const char *groups = ctj_member(p, end, "config_groups");
    if (!groups || *groups != '{') return 0;
    /* Walk the groups. */
    const char *g = ctj_ws(groups + 1, end);
    int n_groups = 0;
    while (g < end && *g != '}') {
        const char *ke = ctj_skip_string(g, end);
        if (!ke) return 0;
        const char *v = ctj_ws(ke, end);
        if (v >= end || *v != ':') return 0;
        v = ctj_ws(v + 1, end);
        if (v >= end || *v != '{') return 0; /* a preset name list: not ours to interpret */
        const char *w = ctj_member(v, end, "weights"), *a = ctj_member(v, end, "input_activations");
        if (!ct_args_match(w, end, 8, type) || !ct_args_match(a, end, 8, type)) return 0;
        const char *gf = ctj_member(v, end, "format");
        int format_ok = ctj_is_string(gf, end, format) ||
                        ((!gf || ctj_is_literal(gf, end, "null")) && ctj_is_string(top_format, end, format));
        if (!format_ok) return 0;
        n_groups++;
        g = ctj_skip_value(v, end, 1);
        if (!g) return 0;
        g = ctj_ws(g, end);
        if (g < end && *g == ',') g = ctj_ws(g + 1, end);
    }
    return n_groups > 0;
}

#endif
