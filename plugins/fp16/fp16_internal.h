/* Shared state of the fp16 baseline plugin (CPU and CUDA halves). */
#ifndef FP16_INTERNAL_H
#define FP16_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include <qtool/plugin.h>

#define FP16_HIDDEN __attribute__((visibility("hidden")))

/* CPU weights are stored in panels of FP16_NR output rows, k-major, so the
 * GEMM micro-kernel reads each panel contiguously. */
#define FP16_NR 16

typedef struct fp16_cuda_plan fp16_cuda_plan; /* cuBLASLt state of one shape */

struct qtool_instance {
    const qtool_host_services *host;
    int cuda_dtype;           /* QTOOL_DTYPE_F16 or QTOOL_DTYPE_BF16 */
    int64_t workspace_opt;    /* bytes, -1 = choose from the device */
    pthread_mutex_t lock;     /* guards the shared CUDA workspace and layer list */
    /* CUDA (NULL without a CUDA device) */
    void *lt;                 /* cublasLtHandle_t */
    void *workspace;          /* shared by the instance's CUDA layers */
    size_t workspace_bytes;
    qtool_packed *workspace_owner; /* the layer whose memory() reports it (and glu_scratch) */
    void *glu_scratch;             /* GLU epilogue without the Hopper kernel: GEMM rows in chunks */
    size_t glu_scratch_bytes;
    int cc_major;                  /* compute capability of the CUDA device */
    qtool_packed *cuda_layers;     /* live CUDA layers (owner hand-over) */
    void *tuned;                   /* fp16_cuda.c: cuBLASLt algorithms timed per GEMM shape */
    int n_tuned;
};

struct qtool_packed {
    qtool_instance *inst;
    int device;
    int64_t n, k;
    int weight_dtype; /* the dtype the checkpoint gave, for save */
    int bias_dtype;   /* -1 without bias */
    uint64_t mem[QTOOL_MEM_COUNT]; /* bytes allocated through the host */

    /* CPU: ceil(n / FP16_NR) panels of [k][FP16_NR] floats; bias padded. */
    float *panels;
    float *bias;

    /* CUDA: W [n, k] and bias [n] in `dtype`. */
    void *w_dev, *b_dev;
    int dtype;
    void *op_bias, *op_plain;     /* cublasLtMatmulDesc_t with / without the bias epilogue */
    void *a_layout;               /* cublasLtMatrixLayout_t of W */
    fp16_cuda_plan *plans;        /* small cache keyed by M and alignment */
    int n_plans, next_plan;
    qtool_packed *prev, *next;    /* in inst->cuda_layers */
};

/* Allocation through the host, recorded in p->mem. */
FP16_HIDDEN void *fp16_alloc(qtool_packed *p, int device, size_t bytes, int category);
FP16_HIDDEN void fp16_free(qtool_packed *p, int device, void *ptr, size_t bytes, int category);
/* Converts one element of a F32/F16/BF16 buffer to float. */
FP16_HIDDEN float fp16_load_elem(const void *src, int dtype, int64_t i);

/* CPU half. */
FP16_HIDDEN int fp16_cpu_pack(qtool_packed *p, const qtool_tensor *w, const qtool_tensor *b);
FP16_HIDDEN int fp16_cpu_matmul(qtool_packed *p, const qtool_matmul_args *args);
/* Row-major W [n, k] as float. */
FP16_HIDDEN void fp16_cpu_unpack(const qtool_packed *p, float *out);
FP16_HIDDEN void fp16_cpu_free(qtool_packed *p);

/* CUDA half (fp16_cuda.c; stubs without CUDA). */
FP16_HIDDEN int fp16_cuda_instance_init(qtool_instance *inst, char *msg, size_t msg_len);
FP16_HIDDEN void fp16_cuda_instance_fini(qtool_instance *inst);
FP16_HIDDEN int fp16_cuda_pack(qtool_packed *p, const qtool_tensor *w, const qtool_tensor *b);
FP16_HIDDEN int fp16_cuda_matmul(qtool_packed *p, const qtool_matmul_args *args);
/* Copies W [n, k] (and the bias, when `bias_out` is not NULL) back as float. */
FP16_HIDDEN int fp16_cuda_download(const qtool_packed *p, float *w_out, float *bias_out);
FP16_HIDDEN void fp16_cuda_free(qtool_packed *p);
FP16_HIDDEN size_t fp16_cuda_workspace_held(const qtool_packed *p);

#endif
