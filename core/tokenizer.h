/* Hugging Face tokenizer.json: loading and encoding, so evaluation data can
 * be plain text. The components are those of the byte-level BPE tokenizers
 * (GPT-2, Qwen2, Llama 3, ModernBERT, RoBERTa) and of BERT (WordPiece); see
 * docs/tokenizer.md for the list. A component or option that is not
 * implemented is refused at load time with a message naming it; ids are
 * meant to be identical to the `tokenizers` library.
 *
 * A loaded tokenizer is immutable apart from an internal word cache (guarded
 * by a lock), so several threads may encode with one tokenizer at once. */
#ifndef QT_TOKENIZER_H
#define QT_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct qt_tokenizer qt_tokenizer;

/* The largest tokenizer.json accepted (real ones are below 40 MB). */
#define QT_TOKENIZER_MAX_FILE_BYTES ((size_t)512 << 20)
/* The largest text one encode call accepts. */
#define QT_TOKENIZER_MAX_TEXT_BYTES ((size_t)1 << 30)

/* Loads a tokenizer.json. Returns 0, or a qtool_status with qt_last_error()
 * set to "<path>: <problem>". */
int qt_tokenizer_load(const char *path, qt_tokenizer **out);
/* The tokenizer.json of a model folder, when model_path is a folder that
 * has one; *out stays NULL otherwise (a single .safetensors file, or a
 * folder without one). Errors only for a tokenizer.json that is there and
 * cannot be read. */
int qt_tokenizer_load_for_model(const char *model_path, qt_tokenizer **out);
/* The same from JSON in memory; `name` stands for the path in messages. */
int qt_tokenizer_load_json(const char *json, size_t len, const char *name, qt_tokenizer **out);
void qt_tokenizer_free(qt_tokenizer *tok);

/* Encodes UTF-8 `text` of `len` bytes (invalid UTF-8 is an error) into a new
 * array of ids (free with free(); may be NULL when *n_ids is 0). With
 * `add_special`, the post-processor adds its special tokens ([CLS] ... [SEP],
 * <s> ... </s>, a template); without it only the text's own tokens (added
 * tokens written in the text included) come out. Never truncates. */
int qt_tokenizer_encode(const qt_tokenizer *tok, const char *text, size_t len, int add_special,
                        int32_t **ids, size_t *n_ids);

/* Like qt_tokenizer_encode, but keeps at most `max_len` ids in all (0: no
 * limit): the text's tokens are cut from the right to leave room for the
 * special tokens, as the library's right-side truncation does for one
 * sequence. Fails when max_len is smaller than the special tokens alone. */
int qt_tokenizer_encode_truncated(const qt_tokenizer *tok, const char *text, size_t len,
                                  int add_special, size_t max_len, int32_t **ids, size_t *n_ids);

/* truncation.max_length of the file (the model's input limit as saved with
 * it); 0 when the file sets no truncation. */
size_t qt_tokenizer_max_length(const qt_tokenizer *tok);
/* How many special tokens the post-processor adds to one sequence. */
size_t qt_tokenizer_num_special(const qt_tokenizer *tok);
/* padding.pad_id of the file, or -1 when the file sets no padding. */
int32_t qt_tokenizer_pad_id(const qt_tokenizer *tok);

/* Vocabulary size including added tokens (largest id + 1). */
size_t qt_tokenizer_vocab_size(const qt_tokenizer *tok);
/* Id of a token string (added tokens first, then the model's vocabulary);
 * -1 when absent. */
int32_t qt_tokenizer_token_to_id(const qt_tokenizer *tok, const char *token);
/* The token string of an id (not NUL-safe for odd vocabularies: also
 * returns its length), or NULL when unknown. */
const char *qt_tokenizer_id_to_token(const qt_tokenizer *tok, int32_t id, size_t *len);

/* Decodes ids back to text with the file's decoder (ByteLevel, WordPiece,
 * or a Sequence of them; none joins tokens with spaces). Unknown ids are
 * skipped, as the library does. `skip_special` drops special added tokens.
 * The text is NUL-terminated; free with free(). */
int qt_tokenizer_decode(const qt_tokenizer *tok, const int32_t *ids, size_t n_ids,
                        int skip_special, char **text, size_t *len);

#endif
