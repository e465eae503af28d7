/* The tensors of one W8A8 Linear in the compressed-tensors layout vLLM
 * loads (int8 "int-quantized" and FP8 "float-quantized" alike): weight
 * [N, K] of 8-bit codes, weight_scale F32 [N, 1], input_scale F32 [1] for a
 * static activation scale, and the bias. Header-only; shared by the
 * smoothquant and fp8 plugins. */
#ifndef QTOOL_CT_LAYER_H
#define QTOOL_CT_LAYER_H

#include <qtool/plugin.h>

/* Hands the tensors to `sink` in that order; codes and scales on the CPU,
 * the bias where it lives. Returns the first refusal. */
static inline int ct_put_w8a8(const qtool_save_sink *sink, int32_t code_dtype, void *codes, int64_t N, int64_t K,
                              float *weight_scale, int static_act, float act_scale, float *bias, int32_t bias_device)
{
    qtool_tensor t = qtool_tensor_view(codes, code_dtype, QTOOL_DEVICE_CPU, 2, N, K);
    int rc = sink->put(sink->ctx, "weight", &t);
    if (!rc) {
        t = qtool_tensor_view(weight_scale, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 2, N, 1);
        rc = sink->put(sink->ctx, "weight_scale", &t);
    }
    if (!rc && static_act) {
        float v = act_scale;
        t = qtool_tensor_view(&v, QTOOL_DTYPE_F32, QTOOL_DEVICE_CPU, 1, 1, 0);
        rc = sink->put(sink->ctx, "input_scale", &t);
    }
    if (!rc && bias) {
        t = qtool_tensor_view(bias, QTOOL_DTYPE_F32, bias_device, 1, N, 0);
        rc = sink->put(sink->ctx, "bias", &t);
    }
    return rc;
}

#endif
