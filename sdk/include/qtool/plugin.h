/*
 * qtool plugin SDK, ABI v1.
 *
 * This is the only header a quantization plugin includes. A plugin is a
 * shared object that exports one symbol, `qtool_plugin_entry`, returning a
 * pointer to a constant `qtool_plugin_desc`. Everything else in the plugin
 * should have hidden visibility.
 *
 * Compatibility rules
 *   - `abi_version` encodes MAJOR << 16 | MINOR. The host refuses a plugin
 *     whose major differs from its own and names both versions.
 *   - Structs that cross the boundary start with `struct_size` (or, for the
 *     descriptor, `abi_version` then `struct_size`). Fields are only ever
 *     appended; a reader uses an appended field only if the writer's
 *     `struct_size` covers it.
 *
 * Ownership rules
 *   - Memory a plugin needs for packed weights, scales and workspace comes
 *     from `qtool_host_services.alloc` and goes back through
 *     `qtool_host_services.free`, so the host's accounting is exact. A plugin
 *     never frees memory it did not allocate, and the host never frees memory
 *     inside a plugin object except by calling the plugin's destroy slots.
 *   - Tensors passed into a slot are borrowed for the duration of the call.
 *   - Strings in the descriptor are static and live as long as the library.
 *
 * Call order (the host guarantees it)
 *   entry -> init (once) -> probe* -> create -> [calibrate*] -> pack* ->
 *   { matmul_cpu | matmul_cuda | memory | save }* -> free_packed* -> destroy
 *   -> shutdown (once, before dlclose).
 *   `load` replaces `calibrate`/`pack` when reading a saved checkpoint.
 *   Distinct packed layers may be used from different threads at once; one
 *   packed layer is used by one thread at a time unless the plugin sets
 *   QTOOL_PLUGIN_THREAD_SAFE_MATMUL.
 *
 * Plugins never call exit/abort, never create or destroy CUDA streams and
 * never synchronise the whole device; device work goes on the stream the
 * host passes in.
 */
#ifndef QTOOL_PLUGIN_H
#define QTOOL_PLUGIN_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QTOOL_ABI_MAJOR 1
#define QTOOL_ABI_MINOR 0
#define QTOOL_ABI_VERSION ((uint32_t)((QTOOL_ABI_MAJOR << 16) | QTOOL_ABI_MINOR))
#define QTOOL_ABI_MAJOR_OF(v) ((uint32_t)(v) >> 16)
#define QTOOL_ABI_MINOR_OF(v) ((uint32_t)(v)&0xFFFFu)

#if defined(__GNUC__)
#define QTOOL_EXPORT __attribute__((visibility("default")))
#define QTOOL_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#else
#define QTOOL_EXPORT
#define QTOOL_PRINTF(fmt, args)
#endif

/* Name of the one exported symbol. */
#define QTOOL_PLUGIN_ENTRY_SYMBOL "qtool_plugin_entry"

/* ---------------------------------------------------------------- status */

/* Every slot returns one of these. Details go to the host log or to the
 * caller's message buffer; the status says what kind of failure it was. */
typedef enum qtool_status {
    QTOOL_OK = 0,
    QTOOL_ERR_INVALID_ARGUMENT = 1, /* bad shape, dtype, option value, NULL */
    QTOOL_ERR_UNSUPPORTED = 2,      /* valid request this plugin cannot do */
    QTOOL_ERR_OUT_OF_MEMORY = 3,    /* host or device allocation failed */
    QTOOL_ERR_DEVICE = 4,           /* CUDA or cuBLAS error */
    QTOOL_ERR_FORMAT = 5,           /* malformed saved/loaded data */
    QTOOL_ERR_INTERNAL = 6          /* a bug in the plugin */
} qtool_status;

/* ------------------------------------------------------------ data types */

typedef enum qtool_dtype {
    QTOOL_DTYPE_F32 = 0,
    QTOOL_DTYPE_F16 = 1,
    QTOOL_DTYPE_BF16 = 2,
    QTOOL_DTYPE_I8 = 3,
    QTOOL_DTYPE_U8 = 4,
    QTOOL_DTYPE_I32 = 5,
    QTOOL_DTYPE_I64 = 6,
    QTOOL_DTYPE_F64 = 7,
    QTOOL_DTYPE_F8_E4M3 = 8,
    QTOOL_DTYPE_I16 = 9,
    /* Opaque packed bytes (4-bit codes, GGUF blocks...): shape is in bytes. */
    QTOOL_DTYPE_PACKED = 10,
    QTOOL_DTYPE_COUNT
} qtool_dtype;

typedef enum qtool_device_kind {
    QTOOL_DEVICE_CPU = 0,
    QTOOL_DEVICE_CUDA = 1
} qtool_device_kind;

/* Bit mask of devices a plugin can run on. */
#define QTOOL_DEVMASK_CPU (1u << QTOOL_DEVICE_CPU)
#define QTOOL_DEVMASK_CUDA (1u << QTOOL_DEVICE_CUDA)

#define QTOOL_MAX_DIMS 4

/* A borrowed view of a dense, contiguous, row-major tensor. */
typedef struct qtool_tensor {
    void *data;
    int32_t dtype;  /* qtool_dtype */
    int32_t device; /* qtool_device_kind */
    int32_t ndim;
    int32_t reserved;
    int64_t shape[QTOOL_MAX_DIMS];
} qtool_tensor;

/* ----------------------------------------------------- memory accounting */

typedef enum qtool_mem_category {
    QTOOL_MEM_WEIGHTS = 0,       /* packed codes or full-precision weights */
    QTOOL_MEM_SCALES = 1,        /* scales, zeros, absmax, code tables */
    QTOOL_MEM_NESTED_SCALES = 2, /* scales of scales (double quantization) */
    QTOOL_MEM_OUTLIERS = 3,      /* outlier buffers (LLM.int8) */
    QTOOL_MEM_WORKSPACE = 4,     /* scratch kept between calls */
    QTOOL_MEM_ACTIVATIONS = 5,   /* runtime activations (host use) */
    QTOOL_MEM_OTHER = 6,
    QTOOL_MEM_COUNT
} qtool_mem_category;

/* --------------------------------------------------------------- logging */

typedef enum qtool_log_level {
    QTOOL_LOG_ERROR = 0,
    QTOOL_LOG_WARN = 1,
    QTOOL_LOG_INFO = 2,
    QTOOL_LOG_DEBUG = 3
} qtool_log_level;

/* ------------------------------------------------------------ the device */

/* What `probe` is asked about. For the CPU, `kind` is QTOOL_DEVICE_CPU and
 * the CUDA fields are zero. `simulated` is 1 when the host evaluates the
 * rules for a card it does not have (`qtool probe --as sm_75`). */
typedef struct qtool_device_info {
    uint32_t struct_size;
    int32_t kind; /* qtool_device_kind */
    int32_t index;
    int32_t cc_major, cc_minor; /* compute capability */
    int32_t multiprocessors;
    uint64_t total_memory;  /* bytes */
    uint64_t shared_memory_per_block_optin;
    int32_t driver_version;  /* CUDA driver API version, e.g. 13000 */
    int32_t runtime_version; /* CUDA runtime version */
    int32_t simulated;
    int32_t cpu_threads;
    char name[128];
    /* CPU SIMD features (QTOOL_CPU_*), for CPU plugins. */
    uint32_t cpu_features;
} qtool_device_info;

#define QTOOL_CPU_AVX2 (1u << 0)
#define QTOOL_CPU_FMA (1u << 1)
#define QTOOL_CPU_AVX512F (1u << 2)
#define QTOOL_CPU_AVX512BW (1u << 3)
#define QTOOL_CPU_AVX512VNNI (1u << 4)
#define QTOOL_CPU_F16C (1u << 5)

/* ------------------------------------------------------- host services */

/* Called for i in [0, n) from the host's thread pool; returns when all done. */
typedef void (*qtool_parallel_fn)(void *arg, int64_t begin, int64_t end);

typedef struct qtool_host_services {
    uint32_t struct_size;
    uint32_t reserved;
    void *ctx; /* passed back as the first argument of every service */

    void (*log)(void *ctx, int level, const char *fmt, ...) QTOOL_PRINTF(3, 4);

    /* Accounted allocation: `device` is qtool_device_kind, `category` a
     * qtool_mem_category. Host memory is 64-byte aligned; CUDA memory comes
     * from cudaMalloc (256-byte aligned). Returns NULL on failure. */
    void *(*alloc)(void *ctx, int device, size_t bytes, int category);
    void (*free)(void *ctx, int device, void *ptr);

    /* Splits [0, n) into chunks of at least `grain` and runs them on the
     * host's threads. Safe to call from any slot; not re-entrant. */
    void (*parallel_for)(void *ctx, int64_t n, int64_t grain, qtool_parallel_fn fn, void *arg);
    int32_t num_threads;

    /* The CUDA device ordinal in use, and the stream all work goes on
     * (a cudaStream_t; NULL means the default stream). -1 without CUDA. */
    int32_t cuda_device;
    void *cuda_stream;
} qtool_host_services;

/* --------------------------------------------------------------- options */

typedef enum qtool_option_type {
    QTOOL_OPT_INT = 0,
    QTOOL_OPT_FLOAT = 1,
    QTOOL_OPT_BOOL = 2,   /* accepts 0/1/true/false/yes/no/on/off */
    QTOOL_OPT_STRING = 3,
    QTOOL_OPT_ENUM = 4    /* one of `choices`, a '|'-separated list */
} qtool_option_type;

typedef struct qtool_option_desc {
    const char *name;
    int32_t type; /* qtool_option_type */
    const char *default_value; /* as the user would type it */
    const char *help;
    const char *choices; /* ENUM only */
    double min_value, max_value; /* INT and FLOAT; ignored when min > max */
} qtool_option_desc;

/* The host parses `--opt KEY=VALUE` against the descriptor's options and
 * passes one value per declared option, in declaration order, defaults
 * filled in. */
typedef struct qtool_option_value {
    const char *name;
    int32_t type;
    int32_t reserved;
    int64_t i;       /* INT, BOOL (0/1), ENUM (index into choices) */
    double f;        /* FLOAT */
    const char *s;   /* the text as given (every type) */
} qtool_option_value;

/* ---------------------------------------------------------------- layers */

/* Which Linear of a transformer block this is; plugins with per-tensor rules
 * (GGUF mixes, AWQ clipping) use it. */
typedef enum qtool_layer_role {
    QTOOL_ROLE_OTHER = 0,
    QTOOL_ROLE_ATTN_Q = 1,
    QTOOL_ROLE_ATTN_K = 2,
    QTOOL_ROLE_ATTN_V = 3,
    QTOOL_ROLE_ATTN_QKV = 4, /* fused */
    QTOOL_ROLE_ATTN_OUT = 5,
    QTOOL_ROLE_FFN_GATE = 6,
    QTOOL_ROLE_FFN_UP = 7,
    QTOOL_ROLE_FFN_GATE_UP = 8, /* fused */
    QTOOL_ROLE_FFN_DOWN = 9,
    QTOOL_ROLE_HEAD = 10,
    QTOOL_ROLE_EMBEDDING = 11
} qtool_layer_role;

typedef struct qtool_layer_info {
    uint32_t struct_size;
    int32_t role;        /* qtool_layer_role */
    const char *name;    /* checkpoint name of the weight, e.g. model.layers.3.mlp.down_proj.weight */
    int64_t in_features;  /* K */
    int64_t out_features; /* N */
    int32_t block_index;  /* transformer block, -1 outside blocks */
    int32_t n_blocks;
} qtool_layer_info;

/* ------------------------------------------------------ opaque handles */

typedef struct qtool_instance qtool_instance; /* a configured quantizer */
typedef struct qtool_packed qtool_packed;     /* one packed Linear */

/* -------------------------------------------------------- pack / matmul */

typedef struct qtool_pack_args {
    uint32_t struct_size;
    int32_t device; /* where the packed layer will live and run */
    const qtool_layer_info *layer;
    const qtool_tensor *weight; /* [N, K], F32/F16/BF16, on the CPU */
    const qtool_tensor *bias;   /* [N] or NULL, on the CPU */
    /* Optional out: a per-input-channel scale s[K] the runtime must apply
     * to the layer input (x / s) by folding it into the preceding norm or
     * linear, or explicitly. The plugin writes K floats and sets
     * *has_input_scale = 1; the weight it packed is already W * s. */
    float *input_scale;
    int32_t *has_input_scale;
} qtool_pack_args;

/* y[M, N] = x[M, K] @ W^T + bias.
 * CPU: x and y are F32. CUDA: x and y are F16 or BF16 (same dtype), on the
 * device, work enqueued on `stream`; the call may return before it ends.
 *
 * `epilogue` is QTOOL_EPILOGUE_NONE except for plugins that set the flag
 * of that epilogue, and only in matmul_cuda.
 *
 * GLU epilogues (QTOOL_PLUGIN_GLU_EPILOGUE): the layer's rows are gate and
 * up rows interleaved (2j gate j, 2j+1 up j) and y is [M, N/2]:
 *   y[m, j] = act(g) * u,  g = z[m, 2j], u = z[m, 2j+1],  z = x W^T + bias
 * with g and u rounded to y's dtype first (as a separate GEMM's output
 * would be), act computed in float32.
 *
 * The residual epilogue (QTOOL_PLUGIN_RESIDUAL_EPILOGUE): y holds the
 * residual stream on entry and y = y + x W^T + bias, the sum formed in
 * float32 and rounded once. */
#define QTOOL_EPILOGUE_NONE 0
#define QTOOL_EPILOGUE_SILU_GLU 1      /* x * sigmoid(x) (SwiGLU) */
#define QTOOL_EPILOGUE_GELU_GLU 2      /* exact GELU (erf) (GeGLU) */
#define QTOOL_EPILOGUE_GELU_TANH_GLU 3 /* tanh-approximated GELU */
#define QTOOL_EPILOGUE_RESIDUAL 4      /* y += x W^T + bias */

typedef struct qtool_matmul_args {
    uint32_t struct_size;
    int32_t epilogue; /* QTOOL_EPILOGUE_* */
    const qtool_tensor *x;
    qtool_tensor *y;
    void *stream; /* cudaStream_t for CUDA, NULL for the CPU */
} qtool_matmul_args;

/* ------------------------------------------------------------ save/load */

/* Saving: the plugin hands the host each tensor of the packed layer under a
 * suffix appended to the layer's prefix (for `model.x.weight`: prefix
 * `model.x.`; suffixes such as `weight`, `SCB`, `weight.absmax`, `qweight`).
 * Tensors may live on either device; the host copies them. */
typedef struct qtool_save_sink {
    void *ctx;
    int (*put)(void *ctx, const char *suffix, const qtool_tensor *t);
} qtool_save_sink;

/* Loading: the plugin asks for tensors by the same suffixes. `get` returns
 * QTOOL_ERR_FORMAT (and logs the missing name) when a tensor is absent; the
 * view points at CPU memory valid until `load` returns. */
typedef struct qtool_load_source {
    void *ctx;
    int (*get)(void *ctx, const char *suffix, qtool_tensor *out);
    int (*has)(void *ctx, const char *suffix);
} qtool_load_source;

/* ------------------------------------------------------------ descriptor */

#define QTOOL_PLUGIN_NEEDS_CALIBRATION (1u << 0)
#define QTOOL_PLUGIN_THREAD_SAFE_MATMUL (1u << 1)
#define QTOOL_PLUGIN_BASELINE (1u << 2) /* does not quantize: the reference */
/* Packing (without calibration data) treats every output row on its own:
 * packing [W1; W2] (rows stacked) gives the packed W1 and W2 side by side,
 * and its matmul their two outputs side by side (up to the summation order
 * of its GEMM). The runtime may then pack Linears that read the same input
 * (q, k, v; gate, up) as one for forward passes (evaluation): fewer, larger
 * GEMMs. A host that does not know a flag ignores it. */
#define QTOOL_PLUGIN_ROW_INDEPENDENT (1u << 3)
/* matmul_cuda honours qtool_matmul_args.epilogue (every QTOOL_EPILOGUE_*):
 * the runtime then packs a GLU MLP's gate and up rows interleaved as one
 * Linear and gets the GLU's output from one call, so the [M, 2I] product
 * need not pass through memory. Needs QTOOL_PLUGIN_ROW_INDEPENDENT. */
#define QTOOL_PLUGIN_GLU_EPILOGUE (1u << 4)
/* matmul_cuda honours QTOOL_EPILOGUE_RESIDUAL: the runtime then adds an
 * attention output or MLP projection straight into the residual stream,
 * and the norm that follows reads one matrix instead of two. */
#define QTOOL_PLUGIN_RESIDUAL_EPILOGUE (1u << 5)

typedef struct qtool_plugin_desc {
    uint32_t abi_version; /* QTOOL_ABI_VERSION */
    uint32_t struct_size; /* sizeof(qtool_plugin_desc) as the plugin saw it */

    const char *name;    /* short identifier: [a-z0-9_]+ */
    const char *version; /* the plugin's own version */
    const char *summary; /* one line */
    uint32_t devices;    /* QTOOL_DEVMASK_* */
    uint32_t flags;      /* QTOOL_PLUGIN_* */
    int32_t weight_bits; /* nominal bits per weight (4, 8, 16) */
    int32_t activation_bits;

    const qtool_option_desc *options;
    uint32_t n_options;
    uint32_t reserved;

    /* Once after load, before anything else; optional. A failure refuses
     * the plugin; `msg` says why. */
    int (*init)(const qtool_host_services *host, char *msg, size_t msg_len);
    /* Once before unload; optional. */
    void (*shutdown)(void);

    /* Can this plugin run on `dev`? Return QTOOL_OK when yes, otherwise
     * QTOOL_ERR_UNSUPPORTED with a one-line reason in `reason`, for example
     * "needs compute capability >= 8.9; found 7.5 (Tesla T4)". Pure: it looks
     * only at `dev`, so simulated devices give the same answer as real ones. */
    int (*probe)(const qtool_device_info *dev, char *reason, size_t reason_len);

    /* Configure an instance. `opts` has one value per declared option. */
    int (*create)(const qtool_host_services *host, const qtool_option_value *opts, uint32_t n_opts,
                  qtool_instance **out, char *msg, size_t msg_len);
    void (*destroy)(qtool_instance *inst);

    /* Calibration: called for a layer with a batch of its input activations
     * x [T, K] (F32, CPU), possibly several times; optional. */
    int (*calibrate)(qtool_instance *inst, const qtool_layer_info *layer, const qtool_tensor *x);

    int (*pack)(qtool_instance *inst, const qtool_pack_args *args, qtool_packed **out);
    void (*free_packed)(qtool_packed *p);

    /* Either may be NULL if `devices` does not list that device. */
    int (*matmul_cpu)(qtool_packed *p, const qtool_matmul_args *args);
    int (*matmul_cuda)(qtool_packed *p, const qtool_matmul_args *args);

    /* Bytes held by the packed layer, by category (qtool_mem_category). Must
     * equal what it allocated through the host. */
    int (*memory)(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT]);

    /* Saved-checkpoint support; all optional (NULL: cannot save). */
    int (*save)(const qtool_packed *p, const qtool_save_sink *sink);
    int (*load)(qtool_instance *inst, const qtool_layer_info *layer, int device,
                const qtool_load_source *src, qtool_packed **out);
    /* Writes the `quantization_config` object (JSON text) for config.json. */
    int (*quant_config_json)(const qtool_instance *inst, char *buf, size_t buf_len);
    /* Does a checkpoint's `quantization_config` (JSON text) belong to this
     * plugin? Returns 1 when yes. */
    int (*accepts_config)(const char *quantization_config_json);

    /* Optional: the weight exactly as matmul sees it, W_hat [N, K] as F32
     * into `out` (CPU memory, N*K floats), whichever device the packed layer
     * lives on. Weight-level error reports use it; without it the host
     * recovers W_hat by multiplying the identity, which is much slower. */
    int (*dequantize)(const qtool_packed *p, float *out);
} qtool_plugin_desc;

/* The smallest descriptor a v1 host accepts: everything up to `memory`. */
#define QTOOL_PLUGIN_DESC_MIN_SIZE \
    (offsetof(qtool_plugin_desc, memory) + sizeof(((qtool_plugin_desc *)0)->memory))

typedef const qtool_plugin_desc *(*qtool_plugin_entry_fn)(void);

/* In the plugin:  QTOOL_PLUGIN_ENTRY { return &my_desc; } */
#define QTOOL_PLUGIN_ENTRY QTOOL_EXPORT const qtool_plugin_desc *qtool_plugin_entry(void)

/* Helpers every plugin needs; header-only so plugins link nothing. */
static inline size_t qtool_dtype_size(int dtype)
{
    switch (dtype) {
    case QTOOL_DTYPE_F32: case QTOOL_DTYPE_I32: return 4;
    case QTOOL_DTYPE_F16: case QTOOL_DTYPE_BF16: case QTOOL_DTYPE_I16: return 2;
    case QTOOL_DTYPE_I8: case QTOOL_DTYPE_U8: case QTOOL_DTYPE_F8_E4M3: case QTOOL_DTYPE_PACKED: return 1;
    case QTOOL_DTYPE_I64: case QTOOL_DTYPE_F64: return 8;
    default: return 0;
    }
}

static inline int64_t qtool_tensor_numel(const qtool_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

/* Half-precision conversions on the CPU (round to nearest even). */
static inline float qtool_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400u)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3FFu) << 13);
        }
    } else if (exp == 0x1F) {
        bits = sign | 0x7F800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    union { uint32_t u; float f; } v = { bits };
    return v.f;
}

static inline uint16_t qtool_f32_to_f16(float f)
{
    union { float f; uint32_t u; } v = { f };
    uint32_t x = v.u, sign = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax >= 0x7F800000u) /* inf or nan */
        return (uint16_t)(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u : 0));
    if (ax >= 0x477FF000u) /* rounds to >= 65520: overflow */
        return (uint16_t)(sign | 0x7C00u);
    if (ax < 0x38800000u) { /* result is subnormal or zero */
        if (ax < 0x33000000u) return (uint16_t)sign; /* < 2^-25: rounds to 0 */
        uint32_t e = ax >> 23, m = (ax & 0x7FFFFFu) | 0x800000u;
        uint32_t shift = 126 - e; /* 14..24 */
        uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(sign | r);
    }
    uint32_t r = ((ax >> 13) - (112u << 10)), rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1))) r++;
    return (uint16_t)(sign | r);
}

static inline float qtool_bf16_to_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

static inline uint16_t qtool_f32_to_bf16(float f)
{
    union { float f; uint32_t u; } v = { f };
    if ((v.u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((v.u >> 16) | 0x40u); /* quiet nan */
    uint32_t rounding = 0x7FFFu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + rounding) >> 16);
}

/* Logging from a plugin: the formatted message goes to host->log at
 * `level`; without a host (or its log) to stderr as "<plugin>: message".
 * qtool_log_status returns `status`, so that a failure is one statement:
 *   return qtool_log_status(host, "myplugin", QTOOL_ERR_FORMAT, "%s: bad", name); */
static inline void qtool_vlogf(const qtool_host_services *host, const char *plugin, int level, const char *fmt,
                               va_list ap)
{
    char buf[640];
    vsnprintf(buf, sizeof buf, fmt, ap);
    if (host && host->log)
        host->log(host->ctx, level, "%s", buf);
    else
        fprintf(stderr, "%s: %s\n", plugin ? plugin : "plugin", buf);
}

static inline void qtool_logf(const qtool_host_services *host, const char *plugin, int level, const char *fmt, ...)
    QTOOL_PRINTF(4, 5);
static inline void qtool_logf(const qtool_host_services *host, const char *plugin, int level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    qtool_vlogf(host, plugin, level, fmt, ap);
    va_end(ap);
}

static inline int qtool_log_status(const qtool_host_services *host, const char *plugin, int status, const char *fmt,
                                   ...) QTOOL_PRINTF(4, 5);
static inline int qtool_log_status(const qtool_host_services *host, const char *plugin, int status, const char *fmt,
                                   ...)
{
    va_list ap;
    va_start(ap, fmt);
    qtool_vlogf(host, plugin, QTOOL_LOG_ERROR, fmt, ap);
    va_end(ap);
    return status;
}

/* A tensor description over existing memory (no copy): for save sinks,
 * calibration inputs, matmul arguments. d1 is ignored when ndim < 2. */
static inline qtool_tensor qtool_tensor_view(void *data, int32_t dtype, int32_t device, int32_t ndim, int64_t d0,
                                             int64_t d1)
{
    qtool_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = device;
    t.ndim = ndim;
    t.shape[0] = d0;
    if (ndim > 1) t.shape[1] = d1;
    return t;
}

/* The usual probe of a plugin that runs on the CPU and, when it was built
 * with CUDA code (`has_cuda_code`), on cards of compute capability
 * major.minor or newer. `why` completes "needs compute capability >= M.m"
 * (e.g. " for int8 tensor cores", or ""). */
static inline int qtool_probe_cpu_cuda(const qtool_device_info *dev, const char *plugin, int has_cuda_code, int major,
                                       int minor, const char *why, char *reason, size_t reason_len)
{
    if (!dev) {
        snprintf(reason, reason_len, "no device description");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (dev->kind == QTOOL_DEVICE_CPU) return QTOOL_OK;
    if (!has_cuda_code) {
        snprintf(reason, reason_len, "this build of the %s plugin has no CUDA code", plugin);
        return QTOOL_ERR_UNSUPPORTED;
    }
    if (dev->kind != QTOOL_DEVICE_CUDA) {
        snprintf(reason, reason_len, "unknown device kind %d", dev->kind);
        return QTOOL_ERR_UNSUPPORTED;
    }
    if (dev->cc_major < major || (dev->cc_major == major && dev->cc_minor < minor)) {
        snprintf(reason, reason_len, "needs compute capability >= %d.%d%s; found %d.%d (%s)", major, minor,
                 why ? why : "", dev->cc_major, dev->cc_minor, dev->name);
        return QTOOL_ERR_UNSUPPORTED;
    }
    return QTOOL_OK;
}

/* Argument checks every plugin needs, so all refuse bad input alike. Each
 * returns QTOOL_OK, or QTOOL_ERR_INVALID_ARGUMENT with a one-line message in
 * `msg` for the plugin to log. */
static inline int qtool_check_tensor(const qtool_tensor *t, const char *what, char *msg, size_t msg_len)
{
    if (!t || !t->data) {
        snprintf(msg, msg_len, "%s: missing tensor", what);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (t->ndim < 1 || t->ndim > QTOOL_MAX_DIMS) {
        snprintf(msg, msg_len, "%s: bad rank %d", what, t->ndim);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    for (int i = 0; i < t->ndim; i++)
        if (t->shape[i] <= 0 || t->shape[i] > ((int64_t)1 << 40)) {
            snprintf(msg, msg_len, "%s: bad dimension %lld", what, (long long)t->shape[i]);
            return QTOOL_ERR_INVALID_ARGUMENT;
        }
    return QTOOL_OK;
}

/* x [..., K] and y [..., N] for a layer of K inputs and N outputs, both on
 * `device` with the same number of rows, which goes to *M; no epilogue. */
static inline int qtool_check_matmul_args(const char *plugin, const qtool_matmul_args *a, int device, int64_t K,
                                          int64_t N, int64_t *M, char *msg, size_t msg_len)
{
    char what[96];
    if (!a || !a->x || !a->y) {
        snprintf(msg, msg_len, "%s matmul: missing x or y", plugin);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    snprintf(what, sizeof what, "%s matmul: x", plugin);
    if (qtool_check_tensor(a->x, what, msg, msg_len)) return QTOOL_ERR_INVALID_ARGUMENT;
    snprintf(what, sizeof what, "%s matmul: y", plugin);
    if (qtool_check_tensor(a->y, what, msg, msg_len)) return QTOOL_ERR_INVALID_ARGUMENT;
    const qtool_tensor *x = a->x, *y = a->y;
    if (a->epilogue != QTOOL_EPILOGUE_NONE) { /* plugins with epilogues check their arguments themselves */
        snprintf(msg, msg_len, "%s matmul: epilogue %d is not offered", plugin, (int)a->epilogue);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (x->device != device || y->device != device) {
        snprintf(msg, msg_len, "%s matmul: x and y must be on the %s", plugin,
                 device == QTOOL_DEVICE_CPU ? "CPU" : "CUDA device");
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (x->shape[x->ndim - 1] != K) {
        snprintf(msg, msg_len, "%s matmul: x has %lld input features, the layer %lld", plugin,
                 (long long)x->shape[x->ndim - 1], (long long)K);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    if (y->shape[y->ndim - 1] != N) {
        snprintf(msg, msg_len, "%s matmul: y has %lld output features, the layer %lld", plugin,
                 (long long)y->shape[y->ndim - 1], (long long)N);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    int64_t mx = qtool_tensor_numel(x) / K, my = qtool_tensor_numel(y) / N;
    if (mx != my) {
        snprintf(msg, msg_len, "%s matmul: x has %lld rows, y %lld", plugin, (long long)mx, (long long)my);
        return QTOOL_ERR_INVALID_ARGUMENT;
    }
    *M = mx;
    return QTOOL_OK;
}

#ifdef __cplusplus
}
#endif
#endif /* QTOOL_PLUGIN_H */
