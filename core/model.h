/* Model runtime: Hugging Face sequence classifiers.
 *
 * Architectures: BertForSequenceClassification (and a bare BertModel, for
 * hidden states only), ModernBertForSequenceClassification,
 * Qwen2ForSequenceClassification and LlamaForSequenceClassification.
 *
 * A model is built in three steps:
 *   qt_model_open     config.json + safetensors -> a graph description
 *                     (qt_model): every tensor found and shape-checked,
 *                     norms and the head converted to float32;
 *   qt_model_pack     every Linear inside the encoder/decoder blocks goes
 *                     through a plugin's `pack` for one device;
 *   qt_model_forward  a batch of token-id sequences -> logits, pooled and
 *                     per-token hidden states.
 *
 * The forward pass is written once (model_graph.c) against a small set of
 * device operations (model_backend.h); the CPU implements them in
 * model_cpu.c, a CUDA backend implements the same table. Embeddings, norms,
 * attention, RoPE and pooling belong to the runtime; every block Linear is a
 * plugin matmul; the classification head runs in float32 on the host.
 *
 * Batches are sequences of different lengths. The runtime lays the tokens
 * of a batch end to end (no padding is computed); attention stays inside
 * each sequence, which is what a right-padded batch with an attention mask
 * computes. An example's result does not depend on the rest of its batch as
 * long as the plugin's matmul treats rows independently.
 * docs/model.md describes the semantics mirrored from transformers. */
#ifndef QT_MODEL_H
#define QT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include <qtool/plugin.h>

#include "data.h"
#include "safetensors.h"

/* ---------------------------------------------------------------- config */

typedef enum qt_arch {
    QT_ARCH_BERT = 0,
    QT_ARCH_MODERNBERT = 1,
    QT_ARCH_QWEN2 = 2,
    QT_ARCH_LLAMA = 3
} qt_arch;

typedef enum qt_act {
    QT_ACT_GELU = 0,      /* exact: 0.5 x (1 + erf(x / sqrt 2)) */
    QT_ACT_GELU_TANH = 1, /* gelu_new, gelu_pytorch_tanh, gelu_fast */
    QT_ACT_QUICK_GELU = 2,
    QT_ACT_RELU = 3,
    QT_ACT_SILU = 4,
    QT_ACT_TANH = 5,
    QT_ACT_SIGMOID = 6,
    QT_ACT_IDENTITY = 7
} qt_act;

typedef enum qt_pooling {
    QT_POOL_FIRST = 0, /* the first token ([CLS]) */
    QT_POOL_MEAN = 1,  /* mean over the sequence's tokens */
    QT_POOL_LAST = 2   /* the last token whose id != pad_token_id (decoders) */
} qt_pooling;

typedef enum qt_rope_type {
    QT_ROPE_NONE = 0,
    QT_ROPE_DEFAULT = 1,
    QT_ROPE_LINEAR = 2,
    QT_ROPE_LLAMA3 = 3
} qt_rope_type;

typedef struct qt_rope_config {
    int type; /* qt_rope_type */
    double theta;
    double factor;                   /* linear, llama3 */
    double low_freq_factor, high_freq_factor; /* llama3 */
    int64_t original_max_position_embeddings; /* llama3 */
} qt_rope_config;

/* Limits on what a config may ask for (hostile-input bounds). */
#define QT_MODEL_MAX_LAYERS 1024
#define QT_MODEL_MAX_HIDDEN 65536
#define QT_MODEL_MAX_LABELS 1000000
#define QT_MODEL_MAX_CONFIG_BYTES (16u << 20)

typedef struct qt_model_config {
    int arch;                /* qt_arch */
    char architecture[96];   /* as config.json names it */
    char model_type[32];
    int has_head;            /* 0 for a bare BertModel: no logits */
    int64_t vocab_size, hidden_size, n_layers, n_heads, n_kv_heads, head_dim;
    int64_t intermediate_size, max_position_embeddings, type_vocab_size;
    int64_t num_labels;
    char **id2label;         /* num_labels names; entries may be NULL */
    /* label2id as pairs (names may map to any id), for data files whose
     * labels are names. */
    char **label2id_names;
    int64_t *label2id_ids;
    size_t n_label2id;

    int hidden_act;          /* qt_act */
    double norm_eps;
    int norm_bias;           /* LayerNorm carries a bias (BERT: always) */
    int attention_bias;      /* q/k/v (and out, for Llama and ModernBERT) */
    int attention_out_bias;
    int mlp_bias;
    int has_pad_token;
    int64_t pad_token_id;

    /* Attention windows, per layer: layer_sliding[i] is 1 for a
     * sliding-window layer. Encoders (ModernBERT): a token sees |i-j| <=
     * sliding_window (= local_attention / 2). Decoders: i - j < sliding_window. */
    int *layer_sliding;
    int64_t sliding_window;
    int64_t local_attention;
    qt_rope_config rope_full, rope_sliding;

    int pooling;             /* qt_pooling */
    int classifier_act;      /* ModernBERT head activation */
    int classifier_bias;     /* ModernBERT head.dense bias */
    char dtype_name[16];     /* torch_dtype / dtype, informational */
} qt_model_config;

/* Parses a config.json text; errors start with `path_for_errors`. */
int qt_model_config_parse(const char *json, size_t len, const char *path_for_errors,
                          qt_model_config *out);
int qt_model_config_load(const char *path, qt_model_config *out);
void qt_model_config_free(qt_model_config *c);
const char *qt_arch_name(int arch);
const char *qt_act_name(int act);
/* The class id of a label name (label2id, then id2label, then a decimal
 * number); -1 when unknown. */
int64_t qt_model_label_id(const qt_model_config *c, const char *name);

/* ----------------------------------------------------------------- graph */

/* One Linear (nn.Linear) inside a block: y = x W^T + b through a plugin. */
typedef struct qt_linear {
    qtool_layer_info info;      /* role, name, K (in), N (out), block */
    char *name;                 /* checkpoint name of the weight; info.name points here */
    const qtool_tensor *weight; /* [N, K], the checkpoint's own view (CPU, read-only) */
    const qtool_tensor *bias;   /* [N] or NULL */
    qtool_packed *packed;       /* from the plugin, for `packed_device` */
    float *input_scale;         /* K floats when the plugin asked for x / s, else NULL */
    int input_scale_folded;     /* the plugin's s went into the preceding norm or Linear */
    /* A QTOOL_EPILOGUE_*_GLU when this is a fused gate|up Linear packed with
     * its rows interleaved (gate j, up j) for a plugin with
     * QTOOL_PLUGIN_GLU_EPILOGUE: its matmul returns act(gate) * up, [M, N/2]. */
    int glu_epilogue;
} qt_linear;

typedef enum qt_norm_kind { QT_NORM_NONE = 0, QT_NORM_LAYER = 1, QT_NORM_RMS = 2 } qt_norm_kind;

typedef struct qt_norm {
    int kind;       /* qt_norm_kind; NONE is the identity (ModernBERT layer 0) */
    int64_t dim;
    float eps;
    float *weight;  /* float32 copies, QTOOL_MEM_WEIGHTS */
    float *bias;    /* NULL without bias */
    /* The checkpoint's values while input scales are folded into weight and
     * bias (model_calib.c); qt_model_unpack puts them back. NULL otherwise. */
    float *orig_weight, *orig_bias;
} qt_norm;

/* A dense float32 layer of the head (not a plugin matmul). */
typedef struct qt_dense {
    int64_t in, out;
    float *weight; /* [out, in] */
    float *bias;   /* [out] or NULL */
} qt_dense;

/* One transformer block. Which members are used depends on the
 * architecture:
 *   BERT        q k v o, up down; norm1 after attention, norm2 after the MLP
 *               (post-norm: x = norm(x + sublayer(x)))
 *   ModernBERT  qkv (fused, [3H, H]) o, gate_up (fused Wi, [2I, H]) down;
 *               norm1 before attention (NONE in layer 0), norm2 before the MLP
 *   Qwen2/Llama q k v o, gate up down; norm1/norm2 before attention/MLP */
typedef struct qt_block {
    int index;
    int sliding;                 /* uses the sliding window and rope_sliding */
    /* Decoders packed with qt_model.fuse_linears: qkv holds q|k|v
     * and gate_up holds gate|up, packed as one Linear each (their own names,
     * *_fused); q, k, v, gate, up stay unpacked. */
    int fused;
    qt_norm norm1, norm2;
    qt_linear q, k, v, qkv, o;
    qt_linear gate, up, gate_up, down;
} qt_block;

typedef struct qt_model {
    qt_model_config cfg;
    char *model_path;
    qt_ckpt *ckpt;

    /* Embedding tables stay in the checkpoint (any float dtype); rows are
     * converted as they are gathered. pos/type are BERT only. */
    const qtool_tensor *tok_emb, *pos_emb, *type_emb;
    qt_norm emb_norm;   /* BERT, ModernBERT */
    qt_norm final_norm; /* ModernBERT, decoders */
    qt_block *blocks;

    /* Head, float32: BERT pooler (dense + tanh) -> classifier; ModernBERT
     * head.dense -> act -> head.norm -> classifier; decoders: score. */
    int has_pre; /* pooler / head.dense present */
    qt_dense pre;
    qt_norm head_norm;
    qt_dense classifier;

    /* RoPE inverse frequencies (head_dim / 2 floats), as transformers
     * computes them in float32; NULL for BERT. */
    float *inv_freq_full, *inv_freq_sliding;
    float rope_scaling_full, rope_scaling_sliding; /* attention_scaling (1 here) */

    /* Every block Linear in execution order. */
    qt_linear **linears;
    size_t n_linears;

    /* The plugin that packed the Linears (NULL before qt_model_pack). */
    const qtool_plugin_desc *desc;
    qtool_instance *inst;
    int packed_device;
    /* Set before packing when the model only runs forward passes (never
     * when it is saved): data-free packs by a plugin with
     * QTOOL_PLUGIN_ROW_INDEPENDENT fuse the decoders' q/k/v and gate/up
     * (qt_block.fused). */
    int fuse_linears;

    /* Called with each Linear's input before its matmul (calibration). */
    int (*linear_hook)(void *ctx, qt_linear *l, const qtool_tensor *x);
    void *linear_hook_ctx;
    /* Host copy of the hooked Linear's input (model_graph.c), kept for the
     * next pass; freed with the model and after calibration. */
    float *hook_input;
    size_t hook_input_bytes;

    /* CUDA forward pass (model_cuda.c): activation type, QTOOL_DTYPE_BF16
     * or fp16 (any other value); and the device state the first CUDA pass
     * creates (embedding table, norms, head, cached activation buffers),
     * freed by qt_model_unpack. */
    int cuda_act_dtype;
    void *cuda;

    /* A saved quantized checkpoint: its config's "quantization_config" as
     * JSON text (NULL for a float checkpoint). Its block Linears have no
     * float weight; qt_model_load_packed (quantize.h) reads them through the
     * plugin that accepts this config. */
    char *quant_config;

    /* A model read from a GGUF file (gguf_model.h): the mapping its
     * embedding and Linears come from; NULL for a safetensors checkpoint. */
    struct qt_gguf_model *gguf;
} qt_model;

/* Frees the model's CUDA state (qt_model_unpack calls it). */
void qt_model_cuda_release(qt_model *m);
/* The host-side weights changed while the CUDA state lives (calibration
 * packed a block and folded input scales into its norms): re-uploads the
 * norms and drops the float copies of unpacked Linears. */
int qt_model_cuda_weights_changed(qt_model *m);

/* Opens a checkpoint: `model_path` is a folder (config.json +
 * model.safetensors or a sharded index) or one .safetensors file; then
 * `config_path` (or config.json beside the file) names the config.
 * `config_path` may be NULL. Fails with one line naming the tensor or key
 * at fault ("model.layers.3.mlp.down_proj.weight: expected [896, 4864],
 * found [4864, 896]"). */
int qt_model_open(const char *model_path, const char *config_path, qt_model **out);
void qt_model_close(qt_model *m);

/* Packs every block Linear with the plugin for `device`. The instance stays
 * owned by the caller and must outlive the model's packed layers. */
/* 0 when the plugin has a matmul for `device`, else a reported error
 * ("plugin X has no CPU matmul"). */
int qt_model_check_plugin_device(const qtool_plugin_desc *desc, int device);
int qt_model_pack(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device);
/* Frees the packed layers (free_packed); the model is then unpacked. */
void qt_model_unpack(qt_model *m);
/* Bytes held by the packed layers, by category (the plugin's `memory`). */
int qt_model_packed_memory(const qt_model *m, uint64_t bytes[QTOOL_MEM_COUNT]);

/* -------------------------------------------------------------- forward */

/* A batch: n sequences of token ids, each of length >= 1. */
typedef struct qt_batch {
    int64_t n;
    const int32_t *const *ids;
    const int64_t *lengths;
} qt_batch;

/* What a forward pass writes (host memory; NULL: not wanted). */
typedef struct qt_forward_out {
    float *logits; /* [n, num_labels] */
    float *pooled; /* [n, hidden]: the pooled final hidden state entering the head */
    float *hidden; /* [sum of lengths, hidden]: final hidden state of every token */
} qt_forward_out;

/* Runs the batch on `device` (QTOOL_DEVICE_CPU or QTOOL_DEVICE_CUDA, with
 * `stream` the CUDA stream the plugin instance was created with). Linears
 * must be packed for that device, except that an unpacked model on the CPU
 * multiplies by the checkpoint's float32 weights (used for calibration).
 * Token ids must be in [0, vocab_size) and lengths within
 * max_position_embeddings for BERT. Activations come from the accounted
 * allocator as QTOOL_MEM_ACTIVATIONS; the CPU frees them before returning,
 * CUDA keeps them cached for the next pass until qt_model_unpack/close. */
int qt_model_forward(qt_model *m, const qt_batch *b, int device, void *stream, qt_forward_out *out);

/* Calls desc->calibrate for every Linear with its inputs over the batch,
 * running the model unpacked (float32 checkpoint weights) on the CPU: the
 * float model's activations, every block at once. */
int qt_model_calibrate(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst,
                       const qt_batch *b);

/* Layer-sequential calibration and packing (model_calib.c). The batches run
 * through the embeddings once; then, block by block: the block's Linears see
 * their inputs (float32, CPU) in desc->calibrate, the block is packed (input
 * scales folded where the graph allows), and the batches go on through the
 * packed block, so block l calibrates on the outputs of the already
 * quantized blocks before it. Only the hidden states of the batches and one
 * block's scratch are held at a time. The passes run on `device`: on CUDA
 * in the activation type, unpacked Linears through a copy of the checkpoint
 * weights, the layers packed for CUDA directly. A plugin without a
 * calibrate slot is simply packed (qt_model_pack). */
typedef struct qt_calib_options {
    /* Called after each block; optional. */
    void (*progress)(void *ctx, int64_t block, int64_t n_blocks, int64_t tokens, double seconds);
    void *progress_ctx;
} qt_calib_options;

int qt_model_calibrate_pack(qt_model *m, const qtool_plugin_desc *desc, qtool_instance *inst, int device,
                            const qt_batch *batches, size_t n_batches, const qt_calib_options *o);

/* Packs the Linears of one block, consumers before the Linears that feed
 * them, folding the plugin's input scales (qt_model_pack does every block).
 * The model's desc/inst/packed_device must be set. */
int qt_model_pack_block(qt_model *m, int64_t block, int device);
/* Frees the fused q|k|v and gate|up Linears (qt_block.fused); part of
 * qt_model_unpack. */
void qt_model_unfuse(qt_model *m);
/* Restores the norms changed by folding (qt_model_unpack calls it). */
void qt_model_unfold(qt_model *m);

/* ------------------------------------------------------------ evaluate */

typedef struct qt_eval_options {
    int device;     /* qtool_device_kind; the model must be packed for it */
    void *stream;   /* CUDA stream or NULL */
    int64_t batch;  /* examples per forward pass (<= 0: 32) */
    int want_pooled; /* also keep the pooled hidden states */
    /* Called after each batch; optional. */
    void (*progress)(void *ctx, int64_t done, int64_t total);
    void *progress_ctx;
} qt_eval_options;

/* What one evaluation produced: the inputs of the metrics (logits and
 * labels in input order), accuracy and timing. */
typedef struct qt_eval_result {
    int64_t n, num_labels, hidden;
    float *logits;   /* [n, num_labels] */
    float *pooled;   /* [n, hidden] when asked, else NULL */
    int32_t *labels; /* n; QT_DATA_NO_LABEL for unlabelled examples */
    int32_t *pred;   /* n: first index of the row's maximum */
    int64_t n_labelled, n_correct;
    double accuracy; /* n_correct / n_labelled; NAN without labels */
    double seconds;  /* wall time of the forward passes */
    double ms_per_example;
    int64_t n_batches;
    uint64_t peak_bytes; /* the allocator's peak on the device so far (load and pack included) */
} qt_eval_result;

/* Runs every example of `d` through the model in input order, `batch`
 * examples at a time. */
int qt_model_eval(qt_model *m, const qt_dataset *d, const qt_eval_options *o, qt_eval_result *out);
void qt_eval_result_free(qt_eval_result *r);

/* The latency protocol: `warmup` untimed batches, then `timed` batches of
 * `batch` examples each (taken from the dataset in order, wrapping round),
 * each timed alone (CUDA events on the GPU, the monotonic clock on the CPU);
 * the figure is the median batch time over the batch size. */
#define QT_LATENCY_MAX_TIMED 64
typedef struct qt_latency {
    int warmup, timed;
    int64_t batch;
    double batch_ms[QT_LATENCY_MAX_TIMED];
    double median_batch_ms, ms_per_example, examples_per_s;
    uint64_t device_used_peak; /* max of total - free seen by cudaMemGetInfo (CUDA only) */
} qt_latency;

int qt_model_latency(qt_model *m, const qt_dataset *d, int device, void *stream, int64_t batch, int warmup,
                     int timed, qt_latency *out);

#endif
