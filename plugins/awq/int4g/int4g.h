/* int4g: 4-bit weights quantized in groups along the input dimension with
 * an fp16 scale and an integer zero per (output row, group), optionally
 * with a column -> group map (GPTQ act-order). The packed layer, its CPU
 * and CUDA matmuls, memory accounting, dequantization and calibration
 * statistics store are shared by the awq and gptq plugins; each plugin
 * adds its own quantization algorithm and checkpoint layout.
 *
 * In-memory layout (the same on both devices):
 *   qw     uint32 [N, K/8]   element k of row n in bits 4*(k%8).. of word
 *                            [n, k/8] (LSB first)
 *   scales fp16   [N, ngroups]
 *   zeros  uint8  [N, ngroups]  0..15
 *   g_idx  int32  [K] or NULL   group of input column k (NULL: k / G)
 *   bias   f32    [N] or NULL
 * w[n, k] = (q - zero[n, g]) * scale[n, g], g = g_idx ? g_idx[k] : k / G. */
#ifndef INT4G_H
#define INT4G_H

#include <qtool/plugin.h>

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "int4g_cuda.h" /* INT4G_PATH_*; the functions exist only in CUDA builds */

/* Shared state of one plugin instance: host services and the CUDA scratch
 * every layer of the instance uses in turn. */
typedef struct int4g_ctx {
    const qtool_host_services *host;
    const char *plugin; /* "awq" / "gptq", for messages */
    int cuda_path;
    pthread_mutex_t lock;
    void *ws;
    size_t ws_bytes;
    const struct qtool_packed *ws_owner;
    void *lt_handle;
    void *lt_ws;
    size_t lt_ws_bytes;
} int4g_ctx;

struct qtool_packed {
    int4g_ctx *ctx;
    int device;
    int64_t N, K, G, ngroups;
    uint32_t *qw;
    uint16_t *scales;
    uint8_t *zeros;
    int32_t *g_idx;
    float *bias;
    /* Plugin bits saved with the layer (GPTQ: sym, act-order). */
    int32_t flags;
    uint64_t mem[QTOOL_MEM_COUNT];
};

/* ------------------------------------------------------------ logging */

void int4g_log(const int4g_ctx *c, int level, const char *fmt, ...) QTOOL_PRINTF(3, 4);
/* Logs an error and returns `status`. */
int int4g_fail(const int4g_ctx *c, int status, const char *fmt, ...) QTOOL_PRINTF(3, 4);

/* ------------------------------------------------------------ context */

void int4g_ctx_init(int4g_ctx *c, const qtool_host_services *host, const char *plugin);
void int4g_ctx_destroy(int4g_ctx *c);

/* Host allocation through the host services (category OTHER) for scratch
 * that lives during one call. */
void *int4g_tmp_alloc(const int4g_ctx *c, size_t bytes);
void int4g_tmp_free(const int4g_ctx *c, void *p);

/* Per-call checks shared by the plugins' option parsing. group_size -1
 * means one group per row. */
int int4g_valid_group_size(int64_t g);

/* ------------------------------------------------------------ layers */

/* A CPU layer with every buffer allocated (contents undefined). Returns
 * NULL when out of memory. */
qtool_packed *int4g_new(int4g_ctx *c, int64_t N, int64_t K, int64_t G, int64_t ngroups, int with_g_idx,
                        int with_bias);
void int4g_free(qtool_packed *p);

/* Moves a CPU layer to `device` (frees `cpu` in every case). */
int int4g_finish(qtool_packed *cpu, int device, qtool_packed **out);

/* A CPU copy of any layer (the same layer when it is already on the CPU,
 * *copied = 0). Free a copy with int4g_free. */
int int4g_host_view(const qtool_packed *p, qtool_packed **view, int *copied);

/* Replaces g_idx by NULL when it is k / G with G a multiple of 32 (the
 * kernels then read groups directly). Call before int4g_finish. */
void int4g_drop_trivial_g_idx(qtool_packed *p);

/* Validates a pack request: weight [N, K] F32/F16/BF16 on the CPU, the
 * optional bias, the device; K must be a multiple of 32 and of the group
 * size (QTOOL_ERR_UNSUPPORTED with a message otherwise). `G` is the group
 * size option (-1: K); returns the effective group size through *Geff. */
int int4g_check_pack(const int4g_ctx *c, const qtool_pack_args *args, int64_t G, int64_t *N, int64_t *K,
                     int64_t *Geff);

/* Element i of a float tensor of dtype F32/F16/BF16. */
float int4g_load_elem(const void *data, int dtype, int64_t i);

/* Stores the bias (rounded to fp16, the precision it is saved with). */
void int4g_set_bias(qtool_packed *p, const qtool_tensor *bias);

/* Sets code k of row n (CPU layer; codes must be zeroed first). */
static inline void int4g_put_code(qtool_packed *p, int64_t n, int64_t k, unsigned q)
{
    p->qw[n * (p->K / 8) + k / 8] |= (uint32_t)(q & 15u) << (4 * (k % 8));
}
static inline unsigned int4g_get_code(const qtool_packed *p, int64_t n, int64_t k)
{
    return (p->qw[n * (p->K / 8) + k / 8] >> (4 * (k % 8))) & 15u;
}

/* ------------------------------------------------------------ slots */

int int4g_matmul_cpu(qtool_packed *p, const qtool_matmul_args *a);
int int4g_matmul_cuda(qtool_packed *p, const qtool_matmul_args *a);
int int4g_memory(const qtool_packed *p, uint64_t bytes[QTOOL_MEM_COUNT]);
/* W_hat [N, K] as F32 into out. */
int int4g_dequantize(const qtool_packed *p, float *out);
/* probe: CPU always; CUDA with compute capability >= 7.5 when built with CUDA. */
int int4g_probe(const char *plugin, const qtool_device_info *dev, char *reason, size_t reason_len);

/* ------------------------------------------------------------ fp16 scale */

/* Rounds a positive scale to fp16, kept inside fp16's finite positive
 * range so that w / scale is always defined. */
static inline uint16_t int4g_scale_to_f16(double s)
{
    if (!(s >= 5.9604644775390625e-08)) s = 5.9604644775390625e-08; /* 2^-24, also for NaN */
    if (s > 65504.0) s = 65504.0;
    return qtool_f32_to_f16((float)s);
}

/* ------------------------------------------------------------ calibration store */

/* Per-layer calibration statistics, keyed by the layer's name. Entries of
 * transformer blocks before the one being packed are released at pack
 * time (the runtime calibrates and packs block after block), which keeps
 * the memory of whole-model calibration bounded. */
typedef struct int4g_stats {
    char *name;
    int32_t block;
    int64_t K;
    void *data;
    void (*release)(const int4g_ctx *c, void *data);
    struct int4g_stats *next;
} int4g_stats;

typedef struct int4g_store {
    pthread_mutex_t lock;
    int4g_stats *head;
} int4g_store;

void int4g_store_init(int4g_store *s);
void int4g_store_clear(const int4g_ctx *c, int4g_store *s);
/* The entry of `layer` (created empty with data NULL when absent). Call
 * with s->lock held. NULL when out of memory. */
int4g_stats *int4g_store_get(int4g_store *s, const qtool_layer_info *layer, int create);
/* Releases entries whose block precedes `block` (block >= 0 only). Call
 * with s->lock held. */
void int4g_store_release_before(const int4g_ctx *c, int4g_store *s, int32_t block);

/* ------------------------------------------------------------ calibration input */

/* Checks a calibration batch x [T, K] (F32, CPU, finite); returns T. */
int int4g_check_calib(const int4g_ctx *c, const qtool_layer_info *layer, const qtool_tensor *x, int64_t *T);

/* ------------------------------------------------------------ JSON */

/* Reads top-level members of a JSON object (bounded, hostile-input safe).
 * Return 1 when the key exists with a value of that type, 0 otherwise. */
int int4g_json_string(const char *js, size_t n, const char *key, char *out, size_t out_len);
int int4g_json_number(const char *js, size_t n, const char *key, double *out);
int int4g_json_bool(const char *js, size_t n, const char *key, int *out);
/* 1 when js is one well-formed JSON object. */
int int4g_json_valid_object(const char *js, size_t n);

#endif
