#include "demo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"
#include "model.h"
#include "synth.h"

void qt_demo_default_spec(qt_demo_spec *s)
{
    *s = (qt_demo_spec){.num_labels = 113, .n_eval = 640, .n_train = 20000, .n_calib = 128, .min_len = 12, .max_len = 48,
                        .label_noise = 0.08, .seed = 20261127, .device = "cpu"};
}

/* splitmix64: the demo's only randomness besides the weights. */
static uint64_t mix(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static double unif(uint64_t *x) { return (double)(mix(x) >> 11) * 0x1.0p-53; }

/* A Zipf-like prior over classes: the long tail of a real label set. */
static void zipf_prior(int n, double *p)
{
    double z = 0;
    for (int i = 0; i < n; i++) z += p[i] = 1.0 / pow(i + 1.0, 1.1);
    for (int i = 0; i < n; i++) p[i] /= z;
}

static int draw(const double *p, int n, uint64_t *rng)
{
    double u = unif(rng), c = 0;
    for (int i = 0; i < n; i++)
        if ((c += p[i]) > u) return i;
    return n - 1;
}

static int write_text(const char *dir, const char *name, const char *text)
{
    char *p = qt_path_join(dir, name);
    int rc = p ? qt_write_file_atomic(p, text, strlen(text)) : QTOOL_ERR_OUT_OF_MEMORY;
    free(p);
    return rc;
}

/* Log-softmax of a row into out. */
static void log_softmax(const float *x, int n, double *out)
{
    double m = x[0], s = 0;
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    for (int i = 0; i < n; i++) s += exp(x[i] - m);
    for (int i = 0; i < n; i++) out[i] = x[i] - m - log(s);
}

int qt_demo_generate(const qt_demo_spec *s, const char *dir)
{
    int rc = 0, c = s->num_labels;
    double *prior = malloc((size_t)c * sizeof *prior);
    float *bias = malloc((size_t)c * sizeof *bias);
    char *models = qt_path_join(dir, "models"), *data = qt_path_join(dir, "data");
    char *enc = models ? qt_path_join(models, "encoder") : NULL, *dec = models ? qt_path_join(models, "decoder") : NULL;
    int32_t *ids = NULL;
    int64_t *lens = NULL;
    const int32_t **rows = NULL;
    float *logits[2] = {NULL, NULL};
    double *lp = NULL, *score = NULL;
    qt_model *m = NULL;
    char *buf = NULL;
    size_t cap = 0, len = 0;
    FILE *mf = NULL;
    if (!prior || !bias || !models || !data || !enc || !dec) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    zipf_prior(c, prior);
    /* The prior enters the heads as a logit offset, so the untrained models
     * already predict the frequent classes more often, as trained ones do. */
    for (int i = 0; i < c; i++) bias[i] = (float)(0.8 * log(prior[i] * c));

    const qt_synth_spec specs[2] = {
        {.arch = QT_SYNTH_MODERNBERT, .hidden = 128, .layers = 4, .heads = 4, .intermediate = 256, .vocab = 1024,
         .max_positions = 128, .num_labels = c, .seed = s->seed ^ 0xE1, .class_bias = bias},
        {.arch = QT_SYNTH_QWEN2, .hidden = 128, .layers = 4, .heads = 4, .kv_heads = 2, .intermediate = 384,
         .vocab = 1024, .max_positions = 128, .num_labels = c, .seed = s->seed ^ 0xD2, .class_bias = bias},
    };
    if ((rc = qt_synth_write(&specs[0], enc)) || (rc = qt_synth_write(&specs[1], dec)) || (rc = qt_mkdirs(data)))
        goto done;

    /* Inputs: random token sequences of varied length. */
    uint64_t rng = s->seed;
    int n = s->n_eval;
    lens = malloc((size_t)n * sizeof *lens);
    rows = malloc((size_t)n * sizeof *rows);
    ids = malloc((size_t)n * (size_t)s->max_len * sizeof *ids);
    lp = malloc((size_t)c * sizeof *lp);
    score = calloc((size_t)n * (size_t)c, sizeof *score);
    if (!lens || !rows || !ids || !lp || !score) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    for (int i = 0; i < n; i++) {
        lens[i] = s->min_len + (int64_t)(mix(&rng) % (uint64_t)(s->max_len - s->min_len + 1));
        int32_t *r = ids + (size_t)i * (size_t)s->max_len;
        r[0] = 1; /* a [CLS]-like first token */
        for (int64_t j = 1; j < lens[i]; j++) r[j] = 3 + (int32_t)(mix(&rng) % 1021);
        rows[i] = r;
    }
    /* The teacher: both models in float32 (unquantized), log-probs summed. */
    const char *paths[2] = {enc, dec};
    for (int k = 0; k < 2; k++) {
        if ((rc = qt_model_open(paths[k], NULL, &m))) goto done;
        logits[k] = malloc((size_t)n * (size_t)c * sizeof(float));
        if (!logits[k]) {
            rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
            goto done;
        }
        for (int b0 = 0; b0 < n && !rc; b0 += 64) {
            int bn = n - b0 < 64 ? n - b0 : 64;
            qt_batch b = {.n = bn, .ids = rows + b0, .lengths = lens + b0};
            qt_forward_out out = {.logits = logits[k] + (size_t)b0 * (size_t)c};
            rc = qt_model_forward(m, &b, QTOOL_DEVICE_CPU, NULL, &out);
        }
        qt_model_close(m);
        m = NULL;
        if (rc) goto done;
        for (int i = 0; i < n; i++) {
            log_softmax(logits[k] + (size_t)i * (size_t)c, c, lp);
            for (int j = 0; j < c; j++) score[(size_t)i * (size_t)c + (size_t)j] += lp[j];
        }
    }
    /* eval.jsonl: teacher label, replaced by a prior draw with probability
     * label_noise. Labels are written as names (config.json's label2id). */
    char *ep = qt_path_join(data, "eval.jsonl");
    qt_atomic_file af;
    if (!ep || (rc = qt_atomic_open(&af, ep))) {
        free(ep);
        rc = rc ? rc : QTOOL_ERR_OUT_OF_MEMORY;
        goto done;
    }
    free(ep);
    int *hist = calloc((size_t)c, sizeof *hist);
    for (int i = 0; i < n && hist; i++) {
        const double *sc = score + (size_t)i * (size_t)c;
        int best = 0;
        for (int j = 1; j < c; j++)
            if (sc[j] > sc[best]) best = j;
        if (unif(&rng) < s->label_noise) best = draw(prior, c, &rng);
        hist[best]++;
        fprintf(af.fp, "{\"input_ids\": [");
        for (int64_t j = 0; j < lens[i]; j++) fprintf(af.fp, j ? ", %d" : "%d", rows[i][j]);
        fprintf(af.fp, "], \"label\": \"class_%03d\"}\n", best);
    }
    if (!hist) {
        qt_atomic_abort(&af);
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    if ((rc = qt_atomic_commit(&af))) {
        free(hist);
        goto done;
    }
    int present = 0;
    for (int j = 0; j < c; j++) present += hist[j] > 0;
    free(hist);

    /* train.jsonl: the training-label frequencies the tiers are ranked by
     * (labels drawn from the prior; inputs are placeholders). */
    char *tp = qt_path_join(data, "train.jsonl");
    if (!tp || (rc = qt_atomic_open(&af, tp))) {
        free(tp);
        rc = rc ? rc : QTOOL_ERR_OUT_OF_MEMORY;
        goto done;
    }
    free(tp);
    for (int i = 0; i < s->n_train; i++)
        fprintf(af.fp, "{\"input_ids\": [1], \"label\": \"class_%03d\"}\n", draw(prior, c, &rng));
    if ((rc = qt_atomic_commit(&af))) goto done;

    /* calib.jsonl: unlabelled inputs for the calibrating plugins, drawn
     * apart from the eval set so calibration never sees it. */
    char *cp = qt_path_join(data, "calib.jsonl");
    if (!cp || (rc = qt_atomic_open(&af, cp))) {
        free(cp);
        rc = rc ? rc : QTOOL_ERR_OUT_OF_MEMORY;
        goto done;
    }
    free(cp);
    for (int i = 0; i < s->n_calib; i++) {
        int64_t len = s->min_len + (int64_t)(mix(&rng) % (uint64_t)(s->max_len - s->min_len + 1));
        fprintf(af.fp, "{\"input_ids\": [1");
        for (int64_t j = 1; j < len; j++) fprintf(af.fp, ", %d", 3 + (int)(mix(&rng) % 1021));
        fprintf(af.fp, "]}\n");
    }
    if ((rc = qt_atomic_commit(&af))) goto done;

    mf = open_memstream(&buf, &cap);
    if (!mf) {
        rc = qt_fail(QTOOL_ERR_OUT_OF_MEMORY, "out of memory");
        goto done;
    }
    fprintf(mf,
            "# qtool demo: synthetic models and data (not a real task), generated by 'qtool demo'.\n"
            "[model encoder]\npath = models/encoder\n\n"
            "[model decoder]\npath = models/decoder\n\n"
            "[data]\neval = data/eval.jsonl\ntrain = data/train.jsonl\ncalib = data/calib.jsonl\n\n"
            "[envelope]\ndevice = %s\nmax_ms_per_example = %s\nmin_macro_f1 = 0.05\nmax_ece_post = 0.25\n\n"
            "[named_classes]\nnames = class_000, class_005, class_030, class_080\n\n"
            "[output]\ndir = results\n",
            s->device, strcmp(s->device, "cuda") == 0 ? "1.0" : "20.0");
    fclose(mf);
    mf = NULL;
    len = strlen(buf);
    if ((rc = write_text(dir, "sweep.ini", buf))) goto done;
    printf("demo: synthetic encoder (ModernBERT-shaped) and decoder (Qwen2-shaped), %d classes;\n"
           "      %d eval examples (%d classes present), labels from a float32 teacher with %.0f%% label noise\n",
           c, n, present, 100 * s->label_noise);
    (void)len;
done:
    if (mf) fclose(mf);
    free(buf);
    qt_model_close(m);
    free(logits[0]);
    free(logits[1]);
    free(lp);
    free(score);
    free(ids);
    free(lens);
    free(rows);
    free(prior);
    free(bias);
    free(enc);
    free(dec);
    free(models);
    free(data);
    return rc;
}
