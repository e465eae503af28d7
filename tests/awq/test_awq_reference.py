"""qtool's awq plugin against independent numpy code:

1. Layout: weights built so that their codes and zeros are known exactly
   (w = c - z per group, every group holding codes 0 and 15: scale 1,
   zero z) are packed by the plugin (no calibration: round-to-nearest) and
   must equal AutoAWQ's WQLinear_GEMM.from_linear packing loop, transcribed
   below, byte for byte.
2. Scale search: with at most calib_rows calibration rows the plugin sees
   every row; numpy recomputes x_mean, w_mean, the 20 candidate scales and
   their output errors in float64. The plugin's scale must be one of the
   candidates (relative difference < 1e-5) and its float64 error within
   0.2% of the best candidate's (the plugin ranks in float32).
3. Quantization after the search: for a q projection (never clipped) the
   codes of Q(W s) must equal numpy's float32 emulation exactly; with
   clipping, numpy's own float64 clipping search must pick the same codes
   in at least 95% of the (row, group) blocks (near-ties may go either way
   between float32 and float64).

usage: test_awq_reference.py INT4_TOOL   (env: QTOOL_PLUGIN_DIR, QTOOL_TEST_SEED)
"""
import os
import subprocess
import sys
import tempfile

import numpy as np

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def autoawq_pack(intweight, zeros):
    """AutoAWQ WQLinear_GEMM.from_linear: intweight [out, in], zeros
    [in/G, out] -> qweight [in, out/8], qzeros [in/G, out/8]."""
    intweight = intweight.T.astype(np.uint32)
    qweight = np.zeros((intweight.shape[0], intweight.shape[1] // 8), dtype=np.uint32)
    for col in range(intweight.shape[1] // 8):
        for i in range(8):
            qweight[:, col] |= intweight[:, col * 8 + AWQ_ORDER[i]] << np.uint32(i * 4)
    zeros = zeros.astype(np.uint32)
    qzeros = np.zeros((zeros.shape[0], zeros.shape[1] // 8), dtype=np.uint32)
    for col in range(zeros.shape[1] // 8):
        for i in range(8):
            qzeros[:, col] |= zeros[:, col * 8 + AWQ_ORDER[i]] << np.uint32(i * 4)
    return qweight.view(np.int32), qzeros.view(np.int32)


def read_tensors(d):
    out = {}
    with open(os.path.join(d, "tensors.txt")) as f:
        for line in f:
            name, dt, *dims = line.split()
            dtype = {"I32": np.int32, "F16": np.float16, "F32": np.float32}[dt]
            out[name] = np.fromfile(os.path.join(d, name + ".bin"), dtype=dtype).reshape([int(x) for x in dims])
    return out


def run_tool(tool, W, X, opts, role=0):
    N, K = W.shape
    with tempfile.TemporaryDirectory() as d:
        W.astype(np.float32).tofile(os.path.join(d, "w.f32"))
        T = 0 if X is None else X.shape[0]
        if T:
            X.astype(np.float32).tofile(os.path.join(d, "xcal.f32"))
        env = dict(os.environ, ROLE=str(role))
        subprocess.run([tool, "awq", d, str(N), str(K), str(T)] + opts, check=True, env=env)
        t = read_tensors(d)
        what = np.fromfile(os.path.join(d, "what.f32"), dtype=np.float32).reshape(N, K)
        sp = os.path.join(d, "scale.f32")
        s = np.fromfile(sp, dtype=np.float32) if os.path.exists(sp) else None
    return t, what, s


def check_layout(tool, rng, N, K, G):
    ng = K // G
    codes = rng.integers(0, 16, size=(N, K))
    zeros = rng.integers(0, 16, size=(N, ng))
    for g in range(ng):  # each group spans 0..15: scale (15 - 0) / 15 = 1
        codes[:, g * G] = 0
        codes[:, g * G + 1] = 15
    W = (codes - np.repeat(zeros, G, axis=1)).astype(np.float32)
    t, what, s = run_tool(tool, W, None, [f"group_size={G}"])
    assert s is None, "no calibration must mean no input scale"
    qweight, qzeros = autoawq_pack(codes, zeros.T)
    assert np.array_equal(t["qweight"], qweight), "qweight differs from AutoAWQ's packing"
    assert np.array_equal(t["qzeros"], qzeros), "qzeros differs from AutoAWQ's packing"
    assert np.all(t["scales"] == np.float16(1.0)), "scales must be 1"
    assert np.array_equal(what, W), "dequantized weights differ"
    print(f"layout N={N} K={K} G={G}: AutoAWQ packing matches")


def f16_scale(rng32):
    """int4g_scale_to_f16((double)range / 15): float32, then fp16."""
    s = np.clip(rng32.astype(np.float64) / 15.0, 2.0 ** -24, 65504.0).astype(np.float32)
    return s.astype(np.float16).astype(np.float32)


def quant_groups(w, G, lim=None):
    """AutoAWQ's zero-point quantizer in float32 as the plugin runs it.
    w [rows, K] float32; lim [rows, K/G] clipping bounds or None."""
    rows, K = w.shape
    wg = w.reshape(rows, K // G, G)
    if lim is not None:
        l32 = lim.astype(np.float32)[..., None]
        wg = np.minimum(np.maximum(wg, -l32), l32)
    mx, mn = wg.max(-1), wg.min(-1)
    rg = np.maximum(mx - mn, np.float32(1e-5))
    s = f16_scale(rg)
    z = np.clip(-np.rint(mn / s), 0, 15).astype(np.float32)
    q = np.clip(np.rint(wg / s[..., None]) + z[..., None], 0, 15)
    deq = (q - z[..., None]) * s[..., None]
    return q.reshape(rows, K), deq.reshape(rows, K).astype(np.float32)


def search_scale(W, X, G, duo=True):
    """AutoAWQ's _compute_best_scale for one Linear, float64 errors."""
    x_mean = np.abs(X.astype(np.float64)).mean(0).astype(np.float32)
    N, K = W.shape
    wg = np.abs(W).reshape(N, K // G, G)
    w_mean = (wg / (wg.max(-1, keepdims=True) + np.float32(1e-6))).reshape(N, K).astype(np.float64).mean(0)
    w_mean = w_mean.astype(np.float32)
    cands, errs = [], []
    X64 = X.astype(np.float64)
    for i in range(20):
        a = np.float32(i / 20)
        if duo:
            s = np.power(x_mean, a) / (np.power(w_mean, np.float32(1) - a) + np.float32(1e-4))
        else:
            s = np.power(x_mean, a)
        s = np.maximum(s, np.float32(1e-4)).astype(np.float32)
        s = s / np.sqrt(s.max() * s.min())
        s[~np.isfinite(s)] = 1
        s = s.astype(np.float32)
        _, deq = quant_groups(W * s, G)
        D = W.astype(np.float64) - deq.astype(np.float64) / s.astype(np.float64)
        errs.append(float(((X64 @ D.T) ** 2).sum()))
        cands.append(s)
    return cands, np.array(errs)


def check_search(tool, rng, N, K, T, G, role, opts):
    W = (rng.standard_t(5, size=(N, K)) / np.sqrt(K)).astype(np.float32)
    r = 16
    B = rng.standard_normal((r, K))
    gain = np.ones(K)
    gain[rng.choice(K, 4, replace=False)] = 15.0
    X = ((rng.standard_normal((T, r)) @ B / np.sqrt(r) + 0.3 * rng.standard_normal((T, K))) * gain).astype(np.float32)
    t, what, s = run_tool(tool, W, X, [f"group_size={G}"] + opts, role=role)
    assert s is not None, "calibrated layer without an input scale"
    cands, errs = search_scale(W, X, G, duo="duo_scaling=0" not in opts)
    rel = [np.max(np.abs(c - s) / c) for c in cands]
    i = int(np.argmin(rel))
    assert rel[i] < 1e-5, f"the plugin's scale is none of the 20 candidates (closest {rel[i]:.2e})"
    best = errs.min()
    print(f"search N={N} K={K} T={T} G={G} role={role}: alpha {i / 20:.2f} (numpy best {np.argmin(errs) / 20:.2f}), "
          f"error {errs[i]:.6g} vs best {best:.6g}")
    assert errs[i] <= best * 1.002, "the plugin's alpha is not the best in float64"
    ws = (W * s).astype(np.float32)  # what the plugin quantizes
    if role == 1:  # q projection: no clipping
        q, deq = quant_groups(ws, G)
        assert np.array_equal(deq, what), "codes of Q(W s) differ"
        return
    # clipping search in float64 (AutoAWQ _compute_best_clip)
    Xs = X.astype(np.float64) / s.astype(np.float64)
    ng = K // G
    amax = np.abs(ws).reshape(N, ng, G).max(-1)
    best_err = np.full((N, ng), np.inf)
    best_lim = amax.copy()
    for st in range(10):
        lim = (amax * np.float32(1.0 - np.float32(st) / np.float32(20))).astype(np.float32)
        _, deq = quant_groups(ws, G, lim)
        D = (ws.astype(np.float64) - deq).reshape(N, ng, G)
        err = np.zeros((N, ng))
        for g in range(ng):
            err[:, g] = ((Xs[:, g * G:(g + 1) * G] @ D[:, g, :].T) ** 2).sum(0)
        better = err < best_err
        best_err[better] = err[better]
        best_lim[better] = lim[better]
    _, deq = quant_groups(ws, G, best_lim)
    same = (deq.reshape(N, ng, G) == what.reshape(N, ng, G)).all(-1)
    frac = same.mean()
    print(f"  clipping: {frac * 100:.1f}% of {N * ng} blocks identical to numpy's choice")
    assert frac >= 0.95


def main():
    tool = sys.argv[1]
    seed = int(os.environ.get("QTOOL_TEST_SEED", np.random.SeedSequence().entropy % (2 ** 32)))
    print(f"seed {seed} (set QTOOL_TEST_SEED to repeat)")
    rng = np.random.default_rng(seed)
    check_layout(tool, rng, 64, 256, 128)
    check_layout(tool, rng, 24, 128, 32)
    check_search(tool, rng, 48, 256, 400, 128, 1, [])
    check_search(tool, rng, 40, 256, 512, 64, 9, [])
    check_search(tool, rng, 32, 128, 300, 128, 0, ["duo_scaling=0"])
    print("ok")


if __name__ == "__main__":
    main()
