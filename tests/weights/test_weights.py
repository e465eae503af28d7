"""The bare form `qtool --plugin P --model M`: weight-level report checked
against an independent float64 computation from the safetensors files."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

QTOOL = os.environ["QTOOL_BIN"]
MAKE_SYNTH = sys.argv[1]


def run(*args, expect=0):
    p = subprocess.run([QTOOL, *args], capture_output=True, text=True)
    if p.returncode != expect:
        sys.exit(f"qtool {' '.join(args)}: exit {p.returncode}, expected {expect}\n{p.stdout}\n{p.stderr}")
    return p


def plugins():
    out = json.loads(run("plugins", "--json").stdout)
    return {p["name"]: p for p in out["plugins"]}


def main():
    have = plugins()
    tmp = tempfile.mkdtemp(prefix="qtool-weights-")
    model = os.path.join(tmp, "qwen2")
    subprocess.run([MAKE_SYNTH, "qwen2", model, "7"], check=True)
    st = os.path.join(model, "model.safetensors")
    ref = load_file(st)
    two_d = sorted(k for k, v in ref.items() if v.ndim == 2)

    # fp16 on the CPU keeps the float32 weights exactly: zero error.
    rep = json.loads(run("--plugin", "fp16", "--model", st, "--json").stdout)
    names = [t["name"] for t in rep["tensors"]]
    assert names == two_d, (names, two_d)
    for t in rep["tensors"]:
        assert t["rel_fro_error"] == 0.0 and t["max_abs_error"] == 0.0, t
        assert t["bytes_before"] == ref[t["name"]].nbytes, t
        # float32 kept, perhaps in padded panels for the matmul
        assert ref[t["name"]].nbytes <= t["bytes_after"] <= 1.1 * ref[t["name"]].nbytes + 4096, t
    kept = sum(v.nbytes for k, v in ref.items() if v.ndim != 2)
    assert rep["totals"]["bytes_kept_unquantized"] == kept

    # A quantizing plugin: errors recomputed from its saved checkpoint must
    # agree with the report, and be plausible for the bit width.
    for name, bound in (("nf4", 0.2), ("bnb_int8", 0.03)):
        if name not in have:
            print(f"{name}: not built, skipped")
            continue
        out = os.path.join(tmp, f"out-{name}")
        rep = json.loads(run("--plugin", name, "--model", model, "--json", "--out", out).stdout)
        for t in rep["tensors"]:
            if "skipped" in t:
                continue
            assert 0.0 < t["rel_fro_error"] < bound, (name, t)
            w = ref[t["name"]].astype(np.float64)
            snr = 10 * np.log10((w ** 2).sum() / ((t["rel_fro_error"] ** 2) * (w ** 2).sum()))
            assert abs(snr - t["snr_db"]) < 1e-6, (name, t)
            assert t["bytes_after"] < t["bytes_before"], (name, t)
        cfg = json.load(open(os.path.join(out, "config.json")))
        assert "quantization_config" in cfg, cfg.keys()
        assert os.path.exists(os.path.join(out, "model.safetensors"))
        print(f"{name}: {len(rep['tensors'])} tensors, compression {rep['totals']['compression']:.2f}x")

    # Errors: unknown plugin (runtime error, one line), missing --model (usage).
    p = run("--plugin", "nope", "--model", st, expect=1)
    assert p.stderr.count("\n") == 1 and "nope" in p.stderr, p.stderr
    run("--plugin", "fp16", expect=2)
    p = run("--plugin", "fp16", "--model", os.path.join(tmp, "missing.safetensors"), expect=1)
    assert "missing.safetensors" in p.stderr, p.stderr
    # Nothing is written without --out.
    assert sorted(os.listdir(model)) == ["config.json", "model.safetensors"]
    print("ok")


main()
