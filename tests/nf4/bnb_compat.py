#!/usr/bin/env python3
"""Bit-compatibility of the nf4 and bnb_int8 plugins with bitsandbytes.

Runs bitsandbytes' own CUDA kernels (quantize_4bit with and without
compress_statistics, quantize_blockwise for the nested absmax,
int8_vectorwise_quant for weights and for activations with threshold 6.0)
on fresh random inputs and compares, byte for byte, with what the plugins
produce (through qtool_bnb_dump). bitsandbytes is built with --use_fast_math,
so its reciprocal of absmax can differ from the correctly rounded one by an
ulp; an element whose scaled value lies within a few ulps of a decision
threshold may then land on the neighbouring code. Those, and only those,
are tolerated, and they must stay rare. Also loads the plugin's saved
checkpoint tensors with bitsandbytes' QuantState.from_dict and checks that
bitsandbytes dequantizes them to the plugin's values.

Exit 77 ("skipped: ...") without bitsandbytes/torch or a CUDA device.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import torch
    import bitsandbytes.functional as F
except Exception as e:  # noqa: BLE001 - any import failure means skip
    print(f"skipped: bitsandbytes not importable ({type(e).__name__}: {e})")
    sys.exit(77)


NF4_THR = np.array([-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
                    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
                    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
                    0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=np.float32)
FP4_THR = np.array([0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333],
                   dtype=np.float32)
FP4_THR = np.concatenate([-FP4_THR[::-1], FP4_THR])

failures = []
DEV = None
STRICT = True  # False when bitsandbytes runs on the CPU: only the plumbing is checked then


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def near(values, thresholds, ulps=4):
    v = values.astype(np.float64)[:, None]
    t = thresholds.astype(np.float64)[None, :]
    tol = ulps * np.spacing(np.abs(thresholds)).astype(np.float64)[None, :]
    if not STRICT:
        tol = tol + 5e-3  # CPU fallback: 4-decimal code tables, 16-bit scaling of a partial block
    return (np.abs(v - t) <= tol).any(axis=1)


def run_dump(tool, args, workdir):
    out = os.path.join(workdir, "out")
    subprocess.run([tool] + [str(a) for a in args] + [out], check=True)
    tensors = {}
    names = {"U8": np.uint8, "I8": np.int8, "F32": np.float32, "I32": np.int32}
    with open(os.path.join(out, "index.txt")) as f:
        for line in f:
            name, dt, ndim, d0, d1 = line.split()
            a = np.fromfile(os.path.join(out, name + ".bin"), dtype=names[dt])
            tensors[name] = a
    for fn in os.listdir(out):
        os.remove(os.path.join(out, fn))
    os.rmdir(out)
    return tensors


def to_file(arr, dtype, path):
    t = torch.from_numpy(arr.astype(np.float32))
    if dtype == "f16":
        t = t.half()
        t.numpy().tofile(path)
    elif dtype == "bf16":
        t = t.bfloat16()
        t.view(torch.int16).numpy().tofile(path)
    else:
        t.numpy().tofile(path)
    return t


def unpack_codes(packed, n):
    codes = np.empty(packed.size * 2, dtype=np.uint8)
    codes[0::2] = packed >> 4
    codes[1::2] = packed & 15
    return codes[:n]


def compare_codes(ours, theirs, scaled, thresholds, lut, what, n):
    co, ct = unpack_codes(ours, n), unpack_codes(theirs, n)
    diff = np.nonzero(co != ct)[0] if STRICT else np.nonzero(lut[co] != lut[ct])[0]
    if diff.size:
        ok = near(scaled[diff], thresholds)
        check(ok.all(), f"{what}: {int((~ok).sum())} codes differ away from any decision threshold "
              f"(first at {int(diff[~ok][0]) if (~ok).any() else -1})")
        check(not STRICT or diff.size <= max(2, n // 1000), f"{what}: {diff.size} near-threshold differences of {n}")
        print(f"  {what}: {diff.size} of {n} codes differ, all within 4 ulps of a threshold")
    # Padding nibble of an odd tail must match too.
    check(ours.size == theirs.size, f"{what}: packed size {ours.size} vs {theirs.size}")


def nf4_case(tool, workdir, rng, qt, cs, bs, dtype, N, K, special):
    n = N * K
    w = rng.standard_normal(n).astype(np.float32) * 0.05
    w[rng.integers(0, n, max(1, n // 500))] *= 30
    if special:
        w[:bs] = 0.0  # all-zero block
        thr = NF4_THR if qt == "nf4" else FP4_THR
        m = min(len(thr), bs - 1)
        w[bs] = 1.0  # absmax 1: values are their own scaled values
        w[bs + 1:bs + 1 + m] = thr[:m]
    path = os.path.join(workdir, "in.bin")
    t = to_file(w, dtype, path)
    ours = run_dump(tool, ["nf4", path, dtype, N, K, qt, bs, int(cs)], workdir)
    A = t.reshape(N, K).to(DEV)
    q, st = F.quantize_4bit(A, blocksize=bs, compress_statistics=cs, quant_type=qt)
    theirs = q.cpu().numpy().ravel()
    wf = t.float().numpy().ravel()
    nb = (n + bs - 1) // bs
    pad = np.zeros(nb * bs, dtype=np.float32)
    pad[:n] = np.abs(wf)
    amax = pad.reshape(nb, bs).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = (np.float32(1.0) / amax).astype(np.float32)
        scaled = (wf * np.repeat(inv, bs)[:n]).astype(np.float32)
    what = f"quantize_4bit {qt} cs={cs} bs={bs} {dtype} [{N},{K}]"
    compare_codes(ours["weight"], theirs, scaled, NF4_THR if qt == "nf4" else FP4_THR, ours["weight.quant_map"], what, n)
    check(np.array_equal(ours["weight.quant_map"], st.code.cpu().numpy()), f"{what}: quant_map")
    qs_name = f"weight.quant_state.bitsandbytes__{qt}"
    qs = json.loads(bytes(ours[qs_name]).decode())
    check(qs["quant_type"] == qt and qs["blocksize"] == bs and qs["shape"] == [N, K], f"{what}: quant_state {qs}")
    check(qs["dtype"] == {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype], f"{what}: dtype")
    if not cs:
        check(np.array_equal(ours["weight.absmax"], st.absmax.cpu().numpy()), f"{what}: absmax")
    else:
        off = qs["nested_offset"]
        check(abs(off - st.offset.item()) <= 1e-6 * abs(st.offset.item()) + 1e-12,
              f"{what}: nested_offset {off} vs {st.offset.item()}")
        bmap = st.state2.code.cpu().numpy()
        omap = ours["weight.nested_quant_map"]
        # (bitsandbytes' CPU kernel overwrites code[0] with -1, so only the GPU run is compared.)
        check(not STRICT or np.array_equal(omap, bmap),
              f"{what}: dynamic map differs from create_dynamic_map() at {np.nonzero(omap != bmap)[0].tolist()}")
        # Nested codes, with the plugin's offset so only the kernel is compared.
        centred = (amax - np.float32(off)).astype(np.float32)
        bq, st2 = F.quantize_blockwise(torch.from_numpy(centred).to(DEV), blocksize=256)
        check(np.array_equal(ours["weight.nested_absmax"], st2.absmax.cpu().numpy()), f"{what}: nested_absmax")
        oq, tq = ours["weight.absmax"], bq.cpu().numpy()
        d = np.nonzero(oq != tq)[0]
        if d.size:
            nab = np.repeat(st2.absmax.cpu().numpy(), 256)[:centred.size]
            sc = (centred * (np.float32(1) / nab)).astype(np.float32)
            mids = ((bmap[:-1] + bmap[1:]) * np.float32(0.5)).astype(np.float32)
            ok = near(sc[d], mids) & (np.abs(oq[d].astype(int) - tq[d].astype(int)) == 1)
            check(ok.all() or not STRICT, f"{what}: nested codes differ away from midpoints at {d[~ok][:5].tolist()}")
    # bitsandbytes reads the plugin's saved tensors and dequantizes them.
    dev = DEV
    qd = {"absmax": torch.from_numpy(ours["weight.absmax"]), "quant_map": torch.from_numpy(ours["weight.quant_map"]),
          "quant_state.bitsandbytes__" + qt: torch.from_numpy(ours[qs_name].copy())}
    if cs:
        qd["nested_absmax"] = torch.from_numpy(ours["weight.nested_absmax"])
        qd["nested_quant_map"] = torch.from_numpy(ours["weight.nested_quant_map"])
    state = F.QuantState.from_dict(qd, device=dev)
    deq = F.dequantize_4bit(torch.from_numpy(ours["weight"].reshape(-1, 1)).to(dev), state).float().cpu().numpy()
    codes = unpack_codes(ours["weight"], n)
    lut = ours["weight.quant_map"]
    if cs:
        code2 = ours["weight.nested_quant_map"]
        ab = (code2[ours["weight.absmax"]] * np.repeat(ours["weight.nested_absmax"], 256)[:nb]).astype(np.float32)
        ab = (ab + np.float32(qs["nested_offset"])).astype(np.float32)
    else:
        ab = ours["weight.absmax"]
    mine = (lut[codes] * np.repeat(ab, bs)[:n]).astype(np.float32)
    tol = {"f32": 1e-6, "f16": 1e-3, "bf16": 8e-3}[dtype] if STRICT else 1e-2
    err = np.abs(deq.ravel() - mine).max()
    check(err <= tol * max(1e-30, np.abs(mine).max()), f"{what}: bitsandbytes dequantizes the save differently ({err})")


def int8_case(tool, workdir, rng, M, N, K):
    # weights: int8_vectorwise_quant without threshold
    w = (rng.standard_normal(N * K) * 0.05).astype(np.float32)
    w[:K] = 0.0  # an all-zero row
    path = os.path.join(workdir, "in.bin")
    t = to_file(w, "f16", path)
    ours = run_dump(tool, ["int8w", path, "f16", N, K], workdir)
    CB, SCB, _ = F.int8_vectorwise_quant(t.reshape(N, K).to(DEV))
    what = f"int8_vectorwise_quant weights [{N},{K}]"
    check(np.array_equal(ours["SCB"], SCB.cpu().numpy()), f"{what}: SCB")
    compare_int8(ours["weight"], CB.cpu().numpy().ravel(), t.float().numpy().reshape(N, K),
                 SCB.cpu().numpy(), 0.0, what)
    # activations with threshold 6 and outlier columns
    x = np.clip(rng.standard_normal(M * K), -5, 5).astype(np.float32)
    for c in range(0, K, 9):
        x[rng.integers(0, M) * K + c] = np.float32(rng.choice([-1, 1]) * (6 + 20 * rng.random()))
    if M > 1:
        x[K + 3] = 6.0  # exactly on the threshold: an outlier (>=)
    t = to_file(x, "f16", path)
    ours = run_dump(tool, ["int8a", path, "f16", M, K, 6.0], workdir)
    q, stats, cols = F.int8_vectorwise_quant(t.reshape(M, K).to(DEV), threshold=6.0)
    what = f"int8_vectorwise_quant activations [{M},{K}] threshold 6"
    check(np.array_equal(ours["sa"], stats.cpu().numpy()), f"{what}: row stats")
    check(cols is not None and np.array_equal(ours["cols"], cols.cpu().numpy().astype(np.int32)),
          f"{what}: outlier columns")
    compare_int8(ours["q"], q.cpu().numpy().ravel(), t.float().numpy().reshape(M, K), stats.cpu().numpy(), 6.0,
                 what)


def compare_int8(ours, theirs, x, absmax, thr, what):
    d = np.nonzero(ours != theirs)[0]
    if not d.size:
        return
    K = x.shape[1]
    r, c = d // K, d % K
    with np.errstate(divide="ignore", invalid="ignore"):
        v = x[r, c].astype(np.float64) * 127.0 / absmax[r].astype(np.float64)
    frac = np.abs(np.abs(v) - np.floor(np.abs(v)) - 0.5)
    ok = (frac < 1e-4) & (np.abs(ours[d].astype(int) - theirs[d].astype(int)) == 1)
    check(ok.all(), f"{what}: {int((~ok).sum())} values differ away from a rounding tie")
    print(f"  {what}: {d.size} values differ at exact .5 ties (fast-math division in bitsandbytes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True, help="path of qtool_bnb_dump")
    ap.add_argument("--device", default="cuda",
                    help="where bitsandbytes runs; 'cpu' only exercises this script (its CPU path breaks ties "
                         "differently and is not the reference)")
    args = ap.parse_args()
    global DEV, STRICT
    DEV = torch.device(args.device)
    STRICT = DEV.type == "cuda"
    if DEV.type == "cuda" and not torch.cuda.is_available():
        print("skipped: no CUDA device for bitsandbytes' kernels")
        return 77
    seed = int(os.environ.get("QTOOL_TEST_SEED", int.from_bytes(os.urandom(4), "little")))
    print(f"bnb_compat: seed {seed} (set QTOOL_TEST_SEED to repeat); bitsandbytes {F.__name__}")
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as wd:
        # bitsandbytes' CPU fallback cannot pack an odd element count; the GPU kernel can.
        odd_k = 67 if DEV.type == "cuda" else 68
        for qt in ("nf4", "fp4"):
            for cs in (False, True):
                for dtype in ("f32", "f16", "bf16"):
                    nf4_case(args.dump, wd, rng, qt, cs, 64, dtype, 33, odd_k, special=True)
                nf4_case(args.dump, wd, rng, qt, cs, 128, "f16", 256, 1000, special=False)
                nf4_case(args.dump, wd, rng, qt, cs, 4096, "f32", 40, 3000, special=True)
        nf4_case(args.dump, wd, rng, "nf4", True, 64, "f16", 896, 4864, special=False)
        for M, N, K in ((1, 33, 67), (17, 64, 256), (129, 40, 1001)):
            int8_case(args.dump, wd, rng, M, N, K)
    passed = not failures
    print(f"{1 if passed else 0} passed, {0 if passed else 1} failed")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
