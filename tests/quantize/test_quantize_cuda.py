#!/usr/bin/env python3
"""`qtool quantize` and saved checkpoints on a CUDA device.

- nf4, bnb_int8: the folder written from CUDA-packed layers equals, tensor by
  tensor, the one written from CPU-packed layers; `qtool eval --device cuda`
  of either gives the logits of `qtool eval --plugin P --device cuda` on the
  original (bitwise when the kernels are deterministic; within 1e-3 relative
  is required).
- smoothquant, awq, gptq (calibrating): with --device cuda the calibration
  passes run on the GPU (fp16 activations), so the statistics differ from
  the CPU's float32 ones by rounding only: smoothquant's block-0 int8 codes
  equal the CPU folder's but for one-step flips (about 1%); for every method the GPU
  folder, evaluated on the CPU, is about as far from the float32 logits as
  the CPU folder (||.||_F, within 1.5x + 0.02: the tiny random models' 4-bit
  error is large and noisy; a wrong input or fold on the GPU is far worse),
  and `eval --calib --device cuda` agrees with evaluating the saved folder
  on the GPU; qwen2, bert and modernbert.
- fp8 (CUDA only, when the card takes it): packed for CUDA directly; the
  saved folder evaluates on the GPU like the in-memory run.

Prints "skipped: no CUDA device" and exits 77 without a device.
Env: QTOOL_BIN, QTOOL_PLUGIN_DIR, QTOOL_TEST_DATA."""
import json
import os
import shutil
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qtool_cli import PLUGINS, failures, qtool, check, model, data  # noqa: E402


def rel_err(a, b):
    return float((np.abs(a - b).max(1) / np.maximum(np.abs(b).max(1), 1e-30)).max())


def fro_err(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def raw(folder):
    with open(os.path.join(folder, "model.safetensors"), "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
        body = fh.read()
    return {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in header.items() if k != "__metadata__"}


def ev(tmp, tag, *args, device="cuda"):
    out = os.path.join(tmp, tag + ".safetensors")
    r = qtool("eval", *args, "--device", device, "--logits-out", out, "--timed", "1", "--warmup", "0")
    if not check(r.returncode == 0, f"{tag}: eval --device {device} ({r.stderr.strip()[-300:]})"):
        return None
    return load_file(out)["logits"]


def ev_cpu(tmp, tag, *args):
    return ev(tmp, tag, *args, device="cpu")


def have(plugin):
    return os.path.exists(os.path.join(PLUGINS, f"libqtool_{plugin}.so"))


def main():
    if not have("nf4") or not have("bnb_int8"):
        print(f"skipped: nf4/bnb_int8 are not built in {PLUGINS!r}")
        return 77
    r = qtool("eval", "--model", model("qwen2"), "--plugin", "nf4", "--data", data("qwen2"), "--device", "cuda",
              "--timed", "1", "--warmup", "0")
    if r.returncode != 0 and ("CUDA" in r.stderr or "cuda" in r.stderr):
        print("skipped: no CUDA device")
        return 77
    tmp = tempfile.mkdtemp(prefix="qtool-quantize-cuda-")
    try:
        for plugin in ["nf4", "bnb_int8"]:
            for name in ["qwen2", "bert", "modernbert"]:
                tag = f"{plugin}-{name}"
                gpu, cpu = os.path.join(tmp, tag + "-gpu"), os.path.join(tmp, tag + "-cpu")
                r1 = qtool("quantize", "--plugin", plugin, "--model", model(name), "--out", gpu, "--device", "cuda")
                r2 = qtool("quantize", "--plugin", plugin, "--model", model(name), "--out", cpu)
                if not check(r1.returncode == 0 and r2.returncode == 0,
                             f"{tag}: quantize on cuda and cpu ({r1.stderr.strip()[-200:]} {r2.stderr.strip()[-200:]})"):
                    continue
                check(raw(gpu) == raw(cpu), f"{tag}: CUDA-packed folder = CPU-packed folder, tensor by tensor")
                a = ev(tmp, tag + "-mem", "--model", model(name), "--plugin", plugin, "--data", data(name))
                b = ev(tmp, tag + "-saved", "--model", gpu, "--data", data(name))
                if a is not None and b is not None:
                    e = rel_err(b, a)
                    check(e <= 1e-3, f"{tag}: saved checkpoint on cuda = in-memory cuda run "
                                     f"({'bitwise' if np.array_equal(a, b) else f'{e:.1e}'})")
        for name in ["qwen2", "bert", "modernbert"]:
            ref = ev_cpu(tmp, name + "-float", "--model", model(name), "--plugin", "fp16", "--data", data(name))
            for plugin in ["smoothquant", "awq", "gptq"]:
                if not have(plugin) or ref is None:
                    continue
                tag = f"{plugin}-{name}"
                gpu, cpu = os.path.join(tmp, tag + "-gpu"), os.path.join(tmp, tag + "-cpu")
                common = ["--plugin", plugin, "--model", model(name), "--calib", data(name)]
                if plugin in ("awq", "gptq"):
                    common += ["--opt", "group_size=32"]  # the tiny models' K: 64, 96, 128
                r1 = qtool("quantize", *common, "--out", gpu, "--device", "cuda")
                r2 = qtool("quantize", *common, "--out", cpu)
                if not check(r1.returncode == 0 and r2.returncode == 0,
                             f"{tag}: quantize on cuda and cpu ({r1.stderr.strip()[-200:]} {r2.stderr.strip()[-200:]})"):
                    continue
                check("calibrated on" in r1.stderr, f"{tag}: progress per block on cuda")
                if plugin == "smoothquant" and name == "qwen2":
                    # Block 0's q/k/v/gate/up read the normalised embeddings, the
                    # same on both devices up to fp16 rounding; later blocks see
                    # the quantized blocks before them, computed differently.
                    g, c = raw(gpu), raw(cpu)
                    first = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
                    codes = [k for k in c if k.endswith(".weight") and c[k][0] == "I8"
                             and k.startswith("model.layers.0.") and any(f in k for f in first)]
                    same = total = worst = 0
                    for k in codes:
                        x = np.frombuffer(g[k][2], np.int8).astype(np.int16)
                        y = np.frombuffer(c[k][2], np.int8).astype(np.int16)
                        same += int((x == y).sum())
                        total += x.size
                        worst = max(worst, int(np.abs(x - y).max()))
                    frac = same / max(total, 1)
                    check(sorted(g) == sorted(c) and codes and frac >= 0.97 and worst <= 1,
                          f"smoothquant: block 0 int8 codes from GPU calibration = CPU's on {frac:.4%}, max step {worst}")
                eg = ev_cpu(tmp, tag + "-gpu-cpu", "--model", gpu, "--data", data(name))
                ec = ev_cpu(tmp, tag + "-cpu-cpu", "--model", cpu, "--data", data(name))
                if eg is not None and ec is not None:
                    dg, dc = fro_err(eg, ref), fro_err(ec, ref)
                    check(dg <= 1.5 * dc + 0.02,
                          f"{tag}: GPU-calibrated error vs float {dg:.2e}, CPU-calibrated {dc:.2e}")
                a = ev(tmp, tag + "-mem", *common, "--data", data(name))
                b = ev(tmp, tag + "-saved", "--model", gpu, "--data", data(name))
                if a is not None and b is not None:
                    check(rel_err(b, a) <= 1e-3, f"{tag}: saved = in memory on cuda ({rel_err(b, a):.1e})")
        for name in ["qwen2", "bert", "modernbert"] if have("fp8") else []:
            out = os.path.join(tmp, "fp8-" + name)
            common = ["--plugin", "fp8", "--model", model(name), "--calib", data(name)]
            r = qtool("quantize", *common, "--out", out, "--device", "cuda")
            if r.returncode != 0 and "cannot run on" in r.stderr:
                print(f"note: fp8 not on this card: {r.stderr.strip()}")
                break
            if check(r.returncode == 0, f"fp8-{name}: quantize --device cuda ({r.stderr.strip()[-300:]})"):
                a = ev(tmp, f"fp8-{name}-mem", *common, "--data", data(name))
                b = ev(tmp, f"fp8-{name}-saved", "--model", out, "--data", data(name))
                if a is not None and b is not None:
                    check(rel_err(b, a) <= 1e-3, f"fp8-{name}: saved = in memory on cuda ({rel_err(b, a):.1e})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
