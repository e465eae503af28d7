#include "layer_role.h"

#include <stdlib.h>
#include <string.h>

static int has(const char *s, const char *part) { return strstr(s, part) != NULL; }

int qt_layer_role_from_name(const char *name)
{
    /* Order matters: attention output before the generic "output.dense". */
    if (has(name, "q_proj") || has(name, "attention.self.query")) return QTOOL_ROLE_ATTN_Q;
    if (has(name, "k_proj") || has(name, "attention.self.key")) return QTOOL_ROLE_ATTN_K;
    if (has(name, "v_proj") || has(name, "attention.self.value")) return QTOOL_ROLE_ATTN_V;
    if (has(name, "Wqkv") || has(name, "qkv_proj") || has(name, "c_attn")) return QTOOL_ROLE_ATTN_QKV;
    if (has(name, "o_proj") || has(name, "attention.output.dense") || has(name, "attn.Wo") ||
        has(name, "out_proj"))
        return QTOOL_ROLE_ATTN_OUT;
    if (has(name, "gate_proj")) return QTOOL_ROLE_FFN_GATE;
    if (has(name, "up_proj") || has(name, "intermediate.dense")) return QTOOL_ROLE_FFN_UP;
    if (has(name, "mlp.Wi") || has(name, "gate_up_proj")) return QTOOL_ROLE_FFN_GATE_UP;
    if (has(name, "down_proj") || has(name, "mlp.Wo") || has(name, "output.dense"))
        return QTOOL_ROLE_FFN_DOWN;
    if (has(name, "embed_tokens") || has(name, "word_embeddings") || has(name, "tok_embeddings") ||
        has(name, "embeddings."))
        return QTOOL_ROLE_EMBEDDING;
    if (has(name, "score.") || has(name, "classifier") || has(name, "lm_head") || has(name, "head."))
        return QTOOL_ROLE_HEAD;
    return QTOOL_ROLE_OTHER;
}

int qt_layer_block_from_name(const char *name)
{
    static const char *const keys[] = {"layers.", "layer.", "blocks.", "h."};
    for (size_t k = 0; k < sizeof keys / sizeof *keys; k++) {
        for (const char *p = strstr(name, keys[k]); p; p = strstr(p + 1, keys[k])) {
            if (p != name && p[-1] != '.') continue; /* whole path component */
            const char *d = p + strlen(keys[k]);
            if (*d < '0' || *d > '9') continue;
            long v = strtol(d, NULL, 10);
            return v > 1000000 ? -1 : (int)v;
        }
    }
    return -1;
}

const char *qt_layer_role_name(int role)
{
    static const char *const names[] = {"other", "attn_q",  "attn_k",   "attn_v",      "attn_qkv", "attn_out",
                                        "ffn_gate", "ffn_up", "ffn_gate_up", "ffn_down", "head",     "embedding"};
    return role >= 0 && role < (int)(sizeof names / sizeof *names) ? names[role] : "?";
}
