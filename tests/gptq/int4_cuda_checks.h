/* CUDA checks shared by the awq and gptq tests: CPU/CUDA agreement of
 * both kernels (fused GEMV, dequantize + cuBLASLt) in fp16 and bf16 at
 * awkward shapes, the float64 reference, save from the device, load onto
 * the device, dequantize from the device, device memory accounting.
 * Include after plugin_harness.h, cmocka and int4_test_util.h; `H` is the
 * test's harness. */
#ifndef INT4_CUDA_CHECKS_H
#define INT4_CUDA_CHECKS_H

static harness H;

/* Runs the CUDA matmul on x (F32 values already representable in dt). */
static void run_cuda(qtool_packed *p, const float *x, float *y, int64_t M, int64_t N, int64_t K, int dt)
{
    uint16_t *hx = malloc((size_t)(M * K) * 2), *hy = malloc((size_t)(M * N) * 2);
    for (int64_t i = 0; i < M * K; i++) hx[i] = dt == QTOOL_DTYPE_BF16 ? qtool_f32_to_bf16(x[i]) : qtool_f32_to_f16(x[i]);
    void *dx = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(M * K) * 2, QTOOL_MEM_ACTIVATIONS);
    void *dy = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)(M * N) * 2, QTOOL_MEM_ACTIVATIONS);
    assert_non_null(dx);
    assert_non_null(dy);
    assert_int_equal(qt_cuda_memcpy_h2d(dx, hx, (size_t)(M * K) * 2), 0);
    assert_int_equal(qt_cuda_memset(dy, 0xFF, (size_t)(M * N) * 2), 0); /* unwritten outputs read as NaN */
    qtool_tensor xt = tview(dx, dt, QTOOL_DEVICE_CUDA, 2, M, K), yt = tview(dy, dt, QTOOL_DEVICE_CUDA, 2, M, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cuda(p, &ma), QTOOL_OK);
    assert_int_equal(qt_cuda_device_sync(), 0);
    assert_int_equal(qt_cuda_memcpy_d2h(hy, dy, (size_t)(M * N) * 2), 0);
    for (int64_t i = 0; i < M * N; i++) y[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(hy[i]) : qtool_f16_to_f32(hy[i]);
    qt_free(QTOOL_DEVICE_CUDA, dx);
    qt_free(QTOOL_DEVICE_CUDA, dy);
    free(hx);
    free(hy);
}

static void round_io(float *x, int64_t n, int dt)
{
    for (int64_t i = 0; i < n; i++)
        x[i] = dt == QTOOL_DTYPE_BF16 ? qtool_bf16_to_f32(qtool_f32_to_bf16(x[i])) : qtool_f16_to_f32(qtool_f32_to_f16(x[i]));
}

static void assert_same_store(store *a, store *b)
{
    assert_int_equal(a->n, b->n);
    for (int i = 0; i < a->n; i++) {
        stored *o = store_find(b, a->items[i].name);
        assert_non_null(o);
        assert_int_equal(qtool_tensor_numel(&o->t), qtool_tensor_numel(&a->items[i].t));
        assert_memory_equal(o->t.data, a->items[i].t.data,
                            (size_t)qtool_tensor_numel(&o->t) * qtool_dtype_size(o->t.dtype));
    }
}

/* One configuration: calibrate, pack on both devices, compare. */
static void check_agreement(const char *const *kv, int nkv, int dt, int64_t N, int64_t K, int with_bias,
                            const int64_t *Ms, int nM)
{
    float *w = malloc((size_t)(N * K) * 4), *b = malloc((size_t)N * 4);
    gen_weights(w, N, K);
    fill_normal(b, N, 0.5f);
    act_dist d = act_dist_new(K, 8, 2, 8.0f);
    int64_t T = 2 * K;
    float *xc = malloc((size_t)(T * K) * 4);
    act_sample(&d, xc, T);
    qtool_instance *inst = make_inst(&H, kv, nkv);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_FFN_DOWN, "model.layers.0.mlp.down_proj.weight", K, N, 0, 1};
    calibrate_rows(&H, inst, &li, xc, T, K, 256);
    float *sc = malloc((size_t)K * 4), *sg = malloc((size_t)K * 4);
    qtool_packed *pc = pack_layer(&H, inst, &li, w, with_bias ? b : NULL, QTOOL_DEVICE_CPU, sc, NULL);
    qtool_packed *pg = pack_layer(&H, inst, &li, w, with_bias ? b : NULL, QTOOL_DEVICE_CUDA, sg, NULL);
    assert_memory_equal(sc, sg, (size_t)K * 4); /* the same search on both */
    /* the same packed bytes */
    store scs = {0}, sgs = {0};
    save_all(&H, pc, &scs);
    save_all(&H, pg, &sgs);
    assert_same_store(&scs, &sgs);
    /* dequantize from the device: the same W_hat */
    float *wc = malloc((size_t)(N * K) * 4), *wg = malloc((size_t)(N * K) * 4);
    assert_int_equal(H.desc->dequantize(pc, wc), QTOOL_OK);
    assert_int_equal(H.desc->dequantize(pg, wg), QTOOL_OK);
    assert_memory_equal(wc, wg, (size_t)(N * K) * 4);
    /* loading the CPU save onto the device */
    qtool_load_source src = {&scs, store_get, store_has};
    qtool_packed *pl = NULL;
    assert_int_equal(H.desc->load(inst, &li, QTOOL_DEVICE_CUDA, &src, &pl), QTOOL_OK);
    for (int mi = 0; mi < nM; mi++) {
        int64_t M = Ms[mi];
        float *x = malloc((size_t)(M * K) * 4), *yc = malloc((size_t)(M * N) * 4), *yg = malloc((size_t)(M * N) * 4);
        float *yl = malloc((size_t)(M * N) * 4);
        act_sample(&d, x, M);
        for (int64_t i = 0; i < M * K; i++) x[i] /= sc[i % K];
        round_io(x, M * K, dt);
        run_cpu(&H, pc, x, yc, M, N, K);
        run_cuda(pg, x, yg, M, N, K, dt);
        run_cuda(pl, x, yl, M, N, K, dt);
        assert_memory_equal(yl, yg, (size_t)(M * N) * 4);
        /* fp16: weights (dequantize path) and output rounded to 11 bits; bf16: 8 bits */
        double rel = dt == QTOOL_DTYPE_BF16 ? 1.6e-2 : 2e-3;
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double mag = with_bias ? fabs(b[n]) : 0.0;
                for (int64_t k = 0; k < K; k++) mag += fabs((double)x[m * K + k] * wc[n * K + k]);
                double err = fabs((double)yg[m * N + n] - yc[m * N + n]);
                if (!(err <= rel * mag + 1e-4)) {
                    fprintf(stderr, "%s dt=%d M=%lld N=%lld K=%lld at [%lld,%lld]: cuda %.6g cpu %.6g\n",
                            nkv ? kv[0] : "defaults", dt, (long long)M, (long long)N, (long long)K, (long long)m,
                            (long long)n, yg[m * N + n], yc[m * N + n]);
                    fail();
                }
            }
        free(x);
        free(yc);
        free(yg);
        free(yl);
    }
    store_free(&scs);
    store_free(&sgs);
    H.desc->free_packed(pl);
    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(inst);
    act_dist_free(&d);
    free(w);
    free(b);
    free(xc);
    free(sc);
    free(sg);
    free(wc);
    free(wg);
}

static void check_device_memory(const char *const *kv, int nkv)
{
    const int64_t N = 64, K = 512, M = 200, T = 512;
    float *w = malloc(N * K * 4), *b = malloc(N * 4), *x = malloc(M * K * 4), *y = malloc(M * N * 4);
    float *xc = malloc(T * K * 4);
    gen_weights(w, N, K);
    fill_normal(b, N, 0.1f);
    fill_normal(x, M * K, 1.0f);
    fill_normal(xc, T * K, 1.0f);
    round_to_f16(x, M * K);
    qtool_instance *inst = make_inst(&H, kv, nkv);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "mem.weight", K, N, 0, 1};
    calibrate_rows(&H, inst, &li, xc, T, K, 256);
    qt_mem_stats s0, s1, s2, s3;
    qt_mem_get_stats(&s0);
    qtool_packed *p = pack_layer(&H, inst, &li, w, b, QTOOL_DEVICE_CUDA, NULL, NULL);
    qt_mem_get_stats(&s1);
    uint64_t bytes[QTOOL_MEM_COUNT];
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++) {
        assert_int_equal(bytes[c], s1.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
        assert_int_equal(s1.current[QTOOL_DEVICE_CPU][c], s0.current[QTOOL_DEVICE_CPU][c]);
    }
    assert_int_equal(bytes[QTOOL_MEM_WEIGHTS], N * K / 2 + N * 4);
    run_cuda(p, x, y, M, N, K, QTOOL_DTYPE_F16); /* M > 64: the dequantize workspace */
    qt_mem_get_stats(&s2);
    assert_int_equal(H.desc->memory(p, bytes), QTOOL_OK);
    assert_true(bytes[QTOOL_MEM_WORKSPACE] >= (uint64_t)(N * K) * 2);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        if (c != QTOOL_MEM_ACTIVATIONS)
            assert_int_equal(bytes[c], s2.current[QTOOL_DEVICE_CUDA][c] - s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->free_packed(p);
    qt_mem_get_stats(&s3);
    for (int c = 0; c < QTOOL_MEM_COUNT; c++)
        assert_int_equal(s3.current[QTOOL_DEVICE_CUDA][c], s0.current[QTOOL_DEVICE_CUDA][c]);
    H.desc->destroy(inst);
    free(w);
    free(b);
    free(x);
    free(y);
    free(xc);
}

/* Errors of the device path: wrong device, wrong dtypes. */
static void check_cuda_rejects(void)
{
    const int64_t N = 8, K = 128;
    float *w = malloc(N * K * 4);
    gen_weights(w, N, K);
    qtool_instance *inst = make_inst(&H, NULL, 0);
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, "rej.weight", K, N, 0, 1};
    qtool_packed *pc = pack_layer(&H, inst, &li, w, NULL, QTOOL_DEVICE_CPU, NULL, NULL);
    qtool_packed *pg = pack_layer(&H, inst, &li, w, NULL, QTOOL_DEVICE_CUDA, NULL, NULL);
    void *dx = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)K * 4, QTOOL_MEM_ACTIVATIONS);
    void *dy = qt_alloc(QTOOL_DEVICE_CUDA, (size_t)N * 4, QTOOL_MEM_ACTIVATIONS);
    qtool_tensor xt = tview(dx, QTOOL_DTYPE_F16, QTOOL_DEVICE_CUDA, 2, 1, K);
    qtool_tensor yt = tview(dy, QTOOL_DTYPE_BF16, QTOOL_DEVICE_CUDA, 2, 1, N);
    qtool_matmul_args ma = {sizeof ma, 0, &xt, &yt, NULL};
    assert_int_equal(H.desc->matmul_cuda(pg, &ma), QTOOL_ERR_INVALID_ARGUMENT); /* mixed dtypes */
    yt.dtype = QTOOL_DTYPE_F16;
    assert_int_equal(H.desc->matmul_cuda(pc, &ma), QTOOL_ERR_INVALID_ARGUMENT); /* a CPU layer */
    xt.dtype = yt.dtype = QTOOL_DTYPE_F32;
    assert_int_equal(H.desc->matmul_cuda(pg, &ma), QTOOL_ERR_INVALID_ARGUMENT);
    xt.dtype = yt.dtype = QTOOL_DTYPE_F16;
    assert_int_equal(H.desc->matmul_cuda(pg, &ma), QTOOL_OK);
    assert_int_equal(qt_cuda_device_sync(), 0);
    qt_free(QTOOL_DEVICE_CUDA, dx);
    qt_free(QTOOL_DEVICE_CUDA, dy);
    H.desc->free_packed(pc);
    H.desc->free_packed(pg);
    H.desc->destroy(inst);
    free(w);
}

#endif
