/* Evaluation data: JSONL, one example per line,
 *   {"input_ids": [101, 2023, ...], "label": 3}      (or "label": "sports")
 *   {"text": "the card was charged twice", "label": 3}  (with a tokenizer) Other
 * keys are ignored; an "attention_mask", when present, must be all ones
 * (padding belongs to the runtime). Blank lines are skipped. The file is
 * hostile input: lines, tokens and examples are bounded, and every error is
 * one line "<file>:<line>: <problem>". */
#ifndef QT_DATA_H
#define QT_DATA_H

#include <stddef.h>
#include <stdint.h>

#define QT_DATA_MAX_LINE_BYTES (64u << 20)
#define QT_DATA_MAX_EXAMPLES (INT64_C(1) << 26)
#define QT_DATA_MAX_TOKENS (INT64_C(1) << 31) /* over the whole file, after truncation */
#define QT_DATA_NO_LABEL (-1)

typedef struct qt_example {
    int64_t offset;  /* into qt_dataset.ids */
    int64_t length;  /* tokens kept (after truncation) */
    int64_t original_length;
    int32_t label;   /* class id, or QT_DATA_NO_LABEL */
    int64_t line;    /* 1-based line in the file */
} qt_example;

typedef struct qt_dataset {
    qt_example *examples;
    int64_t n;
    int32_t *ids; /* every example's ids, end to end */
    int64_t n_ids;
    int64_t n_labelled;
    int64_t n_truncated;
    int64_t max_length; /* longest kept example */
} qt_dataset;

/* Label names, for files whose labels are strings: names[i] is class ids[i]. */
typedef struct qt_data_options {
    int64_t vocab_size;   /* ids must be in [0, vocab_size); 0: unchecked */
    int64_t num_labels;   /* integer labels must be in [0, num_labels); 0: unchecked */
    int64_t max_length;   /* keep the first max_length tokens (0: keep all) */
    const char *const *label_names;
    const int64_t *label_ids;
    size_t n_label_names;
    /* Optional lookup instead of the table (e.g. a model config's label2id);
     * returns the id or -1. */
    int64_t (*label_lookup)(void *ctx, const char *name);
    void *label_ctx;
    uint64_t max_file_bytes; /* 0: no limit beyond the per-line/example caps */
    /* Lines may carry "text" instead of "input_ids" when a tokenizer is
     * given: encoded with its special tokens, cut to max_length from the
     * right (the special tokens stay). */
    const struct qt_tokenizer *tokenizer;
} qt_data_options;

int qt_data_load(const char *path, const qt_data_options *opts, qt_dataset *out);
/* Parses JSONL already in memory; `name_for_errors` starts every message. */
int qt_data_parse(const char *text, size_t len, const char *name_for_errors, const qt_data_options *opts,
                  qt_dataset *out);
void qt_dataset_free(qt_dataset *d);

/* Pointer to example i's ids. */
static inline const int32_t *qt_dataset_ids(const qt_dataset *d, int64_t i)
{
    return d->ids + d->examples[i].offset;
}

#endif
