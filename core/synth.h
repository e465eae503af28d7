/* Deterministic synthetic checkpoints with trained-looking weight
 * statistics (heavy-tailed weights, non-unit norms, a few outlier channels),
 * written as Hugging Face folders (config.json + model.safetensors). The demo
 * and tests use them; nothing here pretends to be a trained model. */
#ifndef QT_SYNTH_H
#define QT_SYNTH_H

#include <stdint.h>

typedef enum qt_synth_arch {
    QT_SYNTH_MODERNBERT = 0, /* ModernBertForSequenceClassification */
    QT_SYNTH_QWEN2 = 1,      /* Qwen2ForSequenceClassification */
    QT_SYNTH_BERT = 2        /* BertForSequenceClassification */
} qt_synth_arch;

typedef struct qt_synth_spec {
    int arch;
    int hidden, layers, heads, kv_heads, intermediate, vocab, max_positions, num_labels;
    uint64_t seed;
    /* Per-class logit offsets added to the head bias (a long-tailed prior);
     * NULL for none. num_labels values. */
    const float *class_bias;
} qt_synth_spec;

/* Writes `dir`/config.json and `dir`/model.safetensors (F32). */
int qt_synth_write(const qt_synth_spec *spec, const char *dir);


#endif
