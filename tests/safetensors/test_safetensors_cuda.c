/* The writer copies CUDA tensors through the host: device data written and
 * read back equals what was uploaded. Skipped (77) without a CUDA device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda_rt.h"
#include "error.h"
#include "safetensors.h"

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #cond,      \
                    qt_last_error());                                                 \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

int main(void)
{
    char why[256] = "";
    if (qt_cuda_device_count(why, sizeof why) == 0) {
        printf("skipped: no CUDA device (%s)\n", why);
        return 77;
    }
    CHECK(qt_cuda_set_device(0) == 0);
    enum { N = 3, K = 1000 };
    uint16_t *host = malloc(N * K * sizeof *host);
    srand((unsigned)getpid());
    for (int i = 0; i < N * K; i++) host[i] = qtool_f32_to_f16((float)((double)rand() / RAND_MAX - 0.5));
    void *dev = NULL;
    CHECK(qt_cuda_malloc(&dev, N * K * sizeof *host) == 0);
    CHECK(qt_cuda_memcpy_h2d(dev, host, N * K * sizeof *host) == 0);

    qt_st_writer *w = qt_st_writer_new();
    qtool_tensor t = {.data = dev, .dtype = QTOOL_DTYPE_F16, .device = QTOOL_DEVICE_CUDA, .ndim = 2,
                      .shape = {N, K}};
    CHECK(qt_st_writer_add(w, "dev.weight", &t) == 0);
    qtool_tensor empty = {.data = NULL, .dtype = QTOOL_DTYPE_F16, .device = QTOOL_DEVICE_CUDA, .ndim = 1};
    CHECK(qt_st_writer_add(w, "dev.empty", &empty) == 0);
    /* The device buffer may change after add: the writer holds its own copy. */
    CHECK(qt_cuda_memset(dev, 0, N * K * sizeof *host) == 0);

    char path[] = "/tmp/qt_st_cuda_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(qt_st_writer_commit(w, path) == 0);
    qt_st_writer_free(w);

    qt_st_file *f = NULL;
    CHECK(qt_st_open(path, &f) == 0);
    const qt_st_tensor *r = qt_st_find(f, "dev.weight");
    CHECK(r && r->view.dtype == QTOOL_DTYPE_F16 && r->view.device == QTOOL_DEVICE_CPU);
    CHECK(r->view.shape[0] == N && r->view.shape[1] == K);
    CHECK(memcmp(r->view.data, host, N * K * sizeof *host) == 0);
    CHECK(qt_st_find(f, "dev.empty")->nbytes == 0);
    qt_st_close(f);
    unlink(path);
    qt_cuda_free(dev);
    free(host);
    printf("ok\n");
    return 0;
}
