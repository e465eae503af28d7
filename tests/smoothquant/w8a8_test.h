/* What the smoothquant and fp8 tests share: an instance from options, a
 * layer's info and calibration, and the compressed-tensors W8A8 layer a
 * plugin saves (smoothquant: int8 codes, fp8: E4M3 codes), read back and
 * checked: weight [N, K] of the code type, weight_scale F32 [N, 1],
 * optional input_scale F32 (one value) and bias (the plugins share
 * ct_layer.h the same way). Needs plugin_harness.h (H, store) and cmocka. */
#ifndef QT_TEST_W8A8_H
#define QT_TEST_W8A8_H

static qtool_instance *make_inst(const char *const *kv, int n)
{
    qtool_instance *inst = NULL;
    char msg[256] = "";
    int rc = harness_create(&H, kv, n, &inst, msg, sizeof msg);
    if (rc != QTOOL_OK) fprintf(stderr, "create: %s\n", msg);
    assert_int_equal(rc, QTOOL_OK);
    return inst;
}

static qtool_layer_info layer_info(const char *name, int64_t N, int64_t K)
{
    qtool_layer_info li = {sizeof li, QTOOL_ROLE_OTHER, name, K, N, 0, 1};
    return li;
}

static void calibrate(qtool_instance *inst, const char *name, const float *x, int64_t T, int64_t N, int64_t K)
{
    qtool_layer_info li = layer_info(name, N, K);
    qtool_tensor t = tview((void *)x, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, T, K);
    assert_int_equal(H.desc->calibrate(inst, &li, &t), QTOOL_OK);
}

typedef struct ct_saved {
    store st;
    union {                /* [N, K]: the codes, typed as the plugin saves them */
        const void *codes;
        const int8_t *i8;  /* int8 (smoothquant) */
        const uint8_t *u8; /* E4M3 bytes (fp8) */
    };
    const float *ws;   /* [N] */
    float act_scale;   /* 0: dynamic */
    const float *bias; /* [N] or NULL */
} ct_saved;

static void ct_save(qtool_packed *p, ct_saved *s, int64_t N, int64_t K, int code_dtype)
{
    memset(s, 0, sizeof *s);
    qtool_save_sink sink = {&s->st, store_put};
    assert_int_equal(H.desc->save(p, &sink), QTOOL_OK);
    stored *w = store_find(&s->st, "weight"), *sc = store_find(&s->st, "weight_scale");
    assert_non_null(w);
    assert_non_null(sc);
    assert_int_equal(w->t.dtype, code_dtype);
    assert_int_equal(w->t.ndim, 2);
    assert_int_equal(w->t.shape[0], N);
    assert_int_equal(w->t.shape[1], K);
    assert_int_equal(sc->t.dtype, QTOOL_DTYPE_F32);
    assert_int_equal(sc->t.ndim, 2);
    assert_int_equal(sc->t.shape[0], N);
    assert_int_equal(sc->t.shape[1], 1);
    s->codes = w->t.data;
    s->ws = sc->t.data;
    stored *is = store_find(&s->st, "input_scale");
    if (is) {
        assert_int_equal(is->t.dtype, QTOOL_DTYPE_F32);
        assert_int_equal(qtool_tensor_numel(&is->t), 1);
        s->act_scale = *(const float *)is->t.data;
    }
    stored *b = store_find(&s->st, "bias");
    s->bias = b ? b->t.data : NULL;
}

#endif
