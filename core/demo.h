/* The embedded default: a small encoder and decoder with trained-looking
 * weight statistics and a long-tailed, many-class evaluation set whose
 * labels come from a float32 teacher (the two models' summed log-probs)
 * with label noise. Everything is generated deterministically; nothing is
 * a real task. */
#ifndef QT_DEMO_H
#define QT_DEMO_H

#include <stdint.h>

typedef struct qt_demo_spec {
    int num_labels;     /* 113, as the seed's task */
    int n_eval;         /* evaluation examples */
    int n_train;        /* training-label examples (for tiers) */
    int n_calib;        /* calibration inputs (unlabelled, apart from eval) */
    int min_len, max_len;
    double label_noise; /* fraction of labels replaced by a draw from the prior */
    uint64_t seed;
    const char *device; /* "cpu" or "cuda": written into sweep.ini */
} qt_demo_spec;

void qt_demo_default_spec(qt_demo_spec *s);

/* Writes <dir>/models/{encoder,decoder}, <dir>/data/{eval,train,calib}.jsonl and
 * <dir>/sweep.ini (results into <dir>/results). Prints what it made. */
int qt_demo_generate(const qt_demo_spec *s, const char *dir);

#endif
