#!/usr/bin/env python3
"""`qtool quantize` end to end on the tiny committed checkpoints.

- nf4 and bnb_int8: quantize -> save -> `qtool eval --model OUT` without
  --plugin gives bitwise the logits of `qtool eval --plugin P` on the original
  (CPU); the saved folder has the bitsandbytes layout (tensor names and
  dtypes), the other tensors byte for byte, config.json = the original plus
  quantization_config; tokenizer files come along.
- Folding: the fixture plugin with a random positive input scale s per group
  of Linears and no rounding (W * s packed in float32), against the same
  plugin without scales: bitwise equal logits with power-of-two scales (exact
  in float32, so any misplaced scale shows), within 1e-5 relative with
  scales in [1/e, e] (or twice the model's own float32 reassociation noise,
  measured as the distance to fp16, where that is larger), in memory and from
  the saved folder, with the documented number of scales folded and applied
  explicitly.
- Calibration order, from the fixture's record file: block l's calibrate
  calls precede its packs, which precede block l+1's calibrate calls; every
  Linear sees every batch and every token; block 0's inputs are the same with
  and without rounding, block 1's differ (they come from the rounded block 0).
- Errors: exit 2 with a message for no --out, an unknown plugin, a plugin that
  needs --calib without it, an output folder that exists and is not empty
  (unless --force); a failure while saving leaves no output and no temporary
  folder; --plugin that disagrees with a saved checkpoint, an unknown
  quant_method, quantizing a quantized checkpoint: exit 1, one message.

Env: QTOOL_BIN, QTOOL_PLUGIN_DIR, QTOOL_TEST_DATA. argv[1]: the fixture .so."""
import json
import os
import re
import shutil
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import load_file
    from safetensors import safe_open
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qtool_cli import PLUGINS, failures, check, model, data  # noqa: E402
from qtool_cli import qtool as run_qtool  # noqa: E402
FIXTURE = sys.argv[1] if len(sys.argv) > 1 else ""
MODELS = ["bert", "modernbert", "modernbert_mean", "qwen2", "llama"]


def qtool(*args, plugin_path=None):
    """The build's plugins and the test fixture plugin, unless told otherwise."""
    return run_qtool(*args, plugin_path=plugin_path or f"{PLUGINS}:{FIXTURE}")


def logits(path):
    return load_file(path)["logits"]


def rel_err(a, b):
    return float((np.abs(a - b).max(1) / np.abs(b).max(1)).max())


def raw_tensors(folder):
    """name -> (dtype, shape, bytes) over all shards, without numpy conversion."""
    out = {}
    for f in sorted(os.listdir(folder)):
        if not f.endswith(".safetensors"):
            continue
        p = os.path.join(folder, f)
        with open(p, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
            body = fh.read()
        for k, v in header.items():
            if k == "__metadata__":
                continue
            b, e = v["data_offsets"]
            out[k] = (v["dtype"], v["shape"], body[b:e])
    return out


def eval_logits(tmp, tag, *args, plugin_path=None):
    out = os.path.join(tmp, tag + ".safetensors")
    r = qtool("eval", *args, "--logits-out", out, "--timed", "1", "--warmup", "0", plugin_path=plugin_path)
    if not check(r.returncode == 0, f"{tag}: eval exits 0 ({r.stderr.strip()[-300:]})"):
        return None, r
    return logits(out), r


def linear_names(tensors, cfg):
    """Weight names of the block Linears of the original checkpoint."""
    pat = re.compile(r"(layers?\.\d+\.).*\.weight$")
    out = []
    for k, (dt, shape, _) in tensors.items():
        if pat.search(k) and len(shape) == 2 and "norm" not in k.lower() and "LayerNorm" not in k:
            out.append(k)
    return out


def test_round_trip(tmp):
    for plugin in ["nf4", "bnb_int8"]:
        for name in MODELS:
            out = os.path.join(tmp, f"{name}-{plugin}")
            r = qtool("quantize", "--plugin", plugin, "--model", model(name), "--out", out)
            if not check(r.returncode == 0, f"{plugin} {name}: quantize exits 0 ({r.stderr.strip()[-300:]})"):
                continue
            check(re.search(r"block 1/\d+: \d+ linears packed", r.stderr) is not None,
                  f"{plugin} {name}: progress per block on stderr")
            check(sorted(os.listdir(out)) == ["config.json", "model.safetensors"], f"{plugin} {name}: folder contents")
            a, _ = eval_logits(tmp, f"{name}-{plugin}-mem", "--model", model(name), "--plugin", plugin,
                               "--data", data(name))
            b, rb = eval_logits(tmp, f"{name}-{plugin}-saved", "--model", out, "--data", data(name))
            if a is not None and b is not None:
                check(a.shape == b.shape and np.array_equal(a, b),
                      f"{plugin} {name}: saved checkpoint gives bitwise the in-memory logits")
                check(f"plugin={plugin} " in rb.stdout, f"{plugin} {name}: eval found plugin {plugin} by itself")
            # Layout: bitsandbytes names and dtypes; everything else unchanged.
            src = raw_tensors(model(name))
            dst = raw_tensors(out)
            orig_cfg = json.load(open(os.path.join(model(name), "config.json")))
            cfg = json.load(open(os.path.join(out, "config.json")))
            qc = cfg.pop("quantization_config", None)
            check(cfg == orig_cfg, f"{plugin} {name}: config.json keeps the original keys")
            check(qc is not None and qc.get("quant_method") == "bitsandbytes"
                  and qc.get("load_in_4bit" if plugin == "nf4" else "load_in_8bit") is True,
                  f"{plugin} {name}: quantization_config {qc}")
            lins = linear_names(src, orig_cfg)
            ok = len(lins) >= 8
            for w in lins:
                pre = w[: -len("weight")]
                if plugin == "nf4":
                    ok &= dst.get(w, ("",))[0] == "U8" and pre + "weight.absmax" in dst \
                        and pre + "weight.quant_map" in dst and pre + "weight.quant_state.bitsandbytes__nf4" in dst
                else:
                    ok &= dst.get(w, ("",))[0] == "I8" and dst.get(pre + "SCB", ("",))[0] == "F32"
                if pre + "bias" in src:
                    ok &= pre + "bias" in dst
            check(ok, f"{plugin} {name}: {len(lins)} Linears in the bitsandbytes layout")
            lin_set = set(lins) | {w[: -len("weight")] + "bias" for w in lins}
            same = all(k in dst and dst[k] == v for k, v in src.items() if k not in lin_set)
            check(same, f"{plugin} {name}: the other tensors are byte for byte the original's")
    # --plugin that agrees is accepted; one that disagrees is refused.
    out = os.path.join(tmp, "qwen2-nf4")
    c, _ = eval_logits(tmp, "qwen2-nf4-named", "--model", out, "--plugin", "nf4", "--data", data("qwen2"))
    r = qtool("eval", "--model", out, "--plugin", "bnb_int8", "--data", data("qwen2"))
    check(r.returncode == 1 and "quant_method 'bitsandbytes'" in r.stderr and "nf4" in r.stderr
          and len(r.stderr.strip().splitlines()) == 1, f"--plugin bnb_int8 on an nf4 checkpoint refused: {r.stderr.strip()}")
    # An unknown quant_method.
    odd = os.path.join(tmp, "odd")
    shutil.copytree(out, odd)
    cfg = json.load(open(os.path.join(odd, "config.json")))
    cfg["quantization_config"] = {"quant_method": "zzq", "bits": 4}
    json.dump(cfg, open(os.path.join(odd, "config.json"), "w"))
    r = qtool("eval", "--model", odd, "--data", data("qwen2"))
    check(r.returncode == 1 and "no installed plugin reads quant_method 'zzq'" in r.stderr,
          f"unknown quant_method: {r.stderr.strip()}")
    cfg["quantization_config"] = "bitsandbytes"
    json.dump(cfg, open(os.path.join(odd, "config.json"), "w"))
    r = qtool("eval", "--model", odd, "--data", data("qwen2"))
    check(r.returncode == 1 and "config.json: quantization_config must be an object" in r.stderr
          and len(r.stderr.strip().splitlines()) == 1, f"malformed quantization_config: {r.stderr.strip()}")
    # A quantized checkpoint is not quantized again.
    r = qtool("quantize", "--plugin", "nf4", "--model", out, "--out", os.path.join(tmp, "again"))
    check(r.returncode == 1 and "already quantized" in r.stderr and not os.path.exists(os.path.join(tmp, "again")),
          f"quantize of a quantized checkpoint refused: {r.stderr.strip()}")


def test_tokenizer_files(tmp):
    src = os.path.join(tmp, "with-tokenizer")
    shutil.copytree(model("qwen2"), src)
    files = {"tokenizer.json": '{"version": "1.0", "model": {"type": "BPE"}}\n',
             "special_tokens_map.json": '{"pad_token": "<pad>"}\n'}
    for f, t in files.items():
        open(os.path.join(src, f), "w").write(t)
    out = os.path.join(tmp, "with-tokenizer-nf4")
    r = qtool("quantize", "--plugin", "nf4", "--model", src, "--out", out)
    check(r.returncode == 0 and all(open(os.path.join(out, f)).read() == t for f, t in files.items()),
          "tokenizer files copied as they are")
    # A bare .safetensors file with --config.
    out2 = os.path.join(tmp, "from-file")
    r = qtool("quantize", "--plugin", "bnb_int8", "--model", os.path.join(model("bert"), "model.safetensors"),
              "--config", os.path.join(model("bert"), "config.json"), "--out", out2)
    check(r.returncode == 0 and os.path.exists(os.path.join(out2, "config.json")), "a .safetensors file with --config")


# Expected (folded, explicit) input scales with the fixture's shared scales:
# BERT folds only attention output -> v; ModernBERT all but layer 0's Wqkv
# (its norm is the identity); decoders all, once the attention output's
# scale repeats per head (head_dim) so that GQA can take it, else all but it.
FOLDS = {"bert": (2, 10), "modernbert": (11, 1), "modernbert_mean": (11, 1), "qwen2": (14, 0), "llama": (14, 0)}


def counts(stdout):
    m = re.search(r"folded=(\d+) explicit=(\d+)", stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def head_dim_of(name):
    cfg = json.load(open(os.path.join(model(name), "config.json")))
    return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]


def test_folding(tmp):
    for name in MODELS:
        fp16, _ = eval_logits(tmp, f"{name}-fp16", "--model", model(name), "--plugin", "fp16", "--data", data(name))
        # The same float32 arithmetic without scales: the reference.
        base, _ = eval_logits(tmp, f"{name}-base", "--model", model(name), "--plugin", "calib_fixture", "--calib",
                              data(name), "--data", data(name), "--opt", "quantize=0")
        if fp16 is None or base is None:
            continue
        # float32 reassociation alone (the fixture accumulates in double, fp16
        # in its own order) moves this model's logits by `noise`; scales that
        # round may move them as much.
        noise = rel_err(base, fp16)
        check(noise <= 1e-4, f"{name}: fixture without scales = fp16 within 1e-4 ({noise:.1e})")
        tol = max(1e-5, 2 * noise)
        dec = name in ("qwen2", "llama")
        modes = [("shared", ["--opt", f"head_dim={head_dim_of(name)}"] if dec else [], FOLDS[name])]
        if dec:
            modes.append(("shared", [], (12, 2)))   # attention output per channel: GQA cannot fold it
            modes.append(("random", [], (2, 12)))   # q/k/v and gate/up disagree: only down -> up folds
        if name == "bert":
            modes.append(("random", [], (2, 10)))
        for i, (mode, extra, want) in enumerate(modes):
            for pow2 in ("1", "0"):
                opts = ["--opt", "quantize=0", "--opt", f"scale={mode}", "--opt", "seed=7", "--opt", f"pow2={pow2}",
                        *extra]
                tag = f"{name}-fold-{mode}-{i}-pow2{pow2}"
                out = os.path.join(tmp, tag)
                r = qtool("quantize", "--plugin", "calib_fixture", "--model", model(name), "--calib", data(name),
                          "--out", out, *opts)
                if not check(r.returncode == 0, f"{tag}: quantize ({r.stderr.strip()[-300:]})"):
                    continue
                check(counts(r.stdout) == want, f"{tag}: folded/explicit {counts(r.stdout)} == {want}")
                t = raw_tensors(out)
                n_explicit = sum(1 for k in t if k.endswith(".input_channel_scale"))
                check(n_explicit == want[1], f"{tag}: {n_explicit} explicit scales saved")
                mem, _ = eval_logits(tmp, tag + "-mem", "--model", model(name), "--plugin", "calib_fixture",
                                     "--calib", data(name), "--data", data(name), *opts)
                saved, _ = eval_logits(tmp, tag + "-saved", "--model", out, "--data", data(name))
                if mem is None or saved is None:
                    continue
                check(np.array_equal(mem, saved), f"{tag}: saved = in memory, bitwise")
                if pow2 == "1":
                    # Powers of two scale exactly: any mistake shows, nothing else does.
                    check(np.array_equal(mem, base), f"{tag}: power-of-two scales give bitwise the unscaled logits")
                else:
                    e = rel_err(mem, base)
                    check(e <= tol, f"{tag}: scales alone keep the float32 logits within {tol:.1e} ({e:.1e})")
    # The test can fail: a norm left unfolded changes the logits.
    out = os.path.join(tmp, "qwen2-fold-shared-0-pow21")
    if os.path.isdir(out):
        broken = os.path.join(tmp, "broken")
        shutil.copytree(out, broken)
        from safetensors.numpy import save_file
        t = load_file(os.path.join(broken, "model.safetensors"))
        w = "model.layers.0.input_layernorm.weight"
        t[w] = np.ones_like(t[w])
        save_file(t, os.path.join(broken, "model.safetensors"), metadata={"format": "pt"})
        b, _ = eval_logits(tmp, "broken", "--model", broken, "--data", data("qwen2"))
        ref = logits(os.path.join(tmp, "qwen2-base.safetensors"))
        check(b is not None and rel_err(b, ref) > 1e-3, "an unfolded norm is detected")


def parse_record(path):
    ev = []
    for line in open(path):
        p = line.split()
        if p[0] == "calibrate":
            ev.append(("calibrate", p[1], int(p[2]), p[3]))
        else:
            ev.append(("pack", p[1], 0, ""))
    return ev


def block_of(name):
    return int(re.search(r"layers?\.(\d+)\.", name).group(1))


def test_calibration_order(tmp):
    name = "qwen2"
    max_len = 12
    lens = [min(len(json.loads(l)["input_ids"]), max_len) for l in open(data(name)) if l.strip()][:20]
    recs = {}
    for q in ("1", "0"):
        rec = os.path.join(tmp, f"record-{q}.txt")
        out = os.path.join(tmp, f"order-{q}")
        r = qtool("quantize", "--plugin", "calib_fixture", "--model", model(name), "--calib", data(name),
                  "--calib-samples", "20", "--max-length", str(max_len), "--calib-batch-tokens", "40",
                  "--opt", f"record={rec}", "--opt", f"quantize={q}", "--out", out)
        if not check(r.returncode == 0, f"calibration run quantize={q} ({r.stderr.strip()[-300:]})"):
            return
        check(len(re.findall(r"block \d+/2: 7 linears calibrated on \d+ tokens", r.stderr)) == 2,
              "progress line per calibrated block")
        recs[q] = parse_record(rec)
    ev = recs["1"]
    stage, ok = 0, True
    for kind, lname, _, _ in ev:
        s = 2 * block_of(lname) + (kind == "pack")
        ok &= s >= stage
        stage = s
    check(ok and stage == 3, "calibrate(block 0), pack(block 0), calibrate(block 1), pack(block 1)")
    # Batches: greedy, at most 40 tokens each (one example at least).
    batches, cur = [], 0
    for n in lens:
        if cur and cur + n > 40:
            batches.append(cur)
            cur = 0
        cur += n
    batches.append(cur)
    per_layer = {}
    for kind, lname, rows, h in ev:
        if kind == "calibrate":
            per_layer.setdefault(lname, []).append(rows)
    check(len(per_layer) == 14 and all(v == batches for v in per_layer.values()),
          f"each of 14 Linears calibrated once per batch on {sum(lens)} tokens ({len(batches)} batches)")
    check(sum(1 for e in ev if e[0] == "pack") == 14, "14 packs")
    hashes = {q: {} for q in recs}
    for q, evs in recs.items():
        for kind, lname, rows, h in evs:
            if kind == "calibrate":
                hashes[q].setdefault(lname, []).append(h)
    b0 = [l for l in hashes["1"] if block_of(l) == 0]
    b1 = [l for l in hashes["1"] if block_of(l) == 1]
    check(all(hashes["1"][l] == hashes["0"][l] for l in b0 if "q_proj" in l or "k_proj" in l or "v_proj" in l),
          "block 0's q/k/v inputs do not depend on the rounding")
    check(all(hashes["1"][l][j] != hashes["0"][l][j] for l in b1 for j in range(len(batches))),
          "block 1's inputs come from the rounded block 0")


def test_errors(tmp):
    base = ["--model", model("qwen2")]
    r = qtool("quantize", "--plugin", "nf4", *base)
    check(r.returncode == 2 and "--out" in r.stderr, f"no --out: exit 2 ({r.stderr.strip()})")
    out = os.path.join(tmp, "err-out")
    r = qtool("quantize", "--plugin", "no_such_plugin", *base, "--out", out)
    check(r.returncode == 2 and "no_such_plugin" in r.stderr and not os.path.exists(out),
          f"unknown plugin: exit 2 ({r.stderr.strip()})")
    r = qtool("quantize", "--plugin", "calib_fixture", *base, "--out", out)
    check(r.returncode == 2 and "--calib" in r.stderr and not os.path.exists(out),
          f"calibrating plugin without --calib: exit 2 ({r.stderr.strip()})")
    os.makedirs(out)
    open(os.path.join(out, "keep.txt"), "w").write("x")
    r = qtool("quantize", "--plugin", "nf4", *base, "--out", out)
    check(r.returncode == 2 and "--force" in r.stderr and os.listdir(out) == ["keep.txt"],
          f"non-empty --out refused: exit 2 ({r.stderr.strip()})")
    r = qtool("quantize", "--plugin", "nf4", *base, "--out", model("qwen2"), "--force")
    check(r.returncode == 2 and "own folder" in r.stderr, f"--out = the model folder refused ({r.stderr.strip()})")
    # A failure while saving: nothing appears, the old folder stays, no temp folder is left.
    fail = ["--plugin", "calib_fixture", "--calib", data("qwen2"), "--opt",
            "fail_save=model.layers.1.mlp.down_proj.weight"]
    r = qtool("quantize", *fail, *base, "--out", out, "--force")
    check(r.returncode == 1 and os.listdir(out) == ["keep.txt"], f"failed save keeps the old folder ({r.stderr.strip()})")
    fresh = os.path.join(tmp, "never")
    r = qtool("quantize", *fail, *base, "--out", fresh)
    check(r.returncode == 1 and not os.path.exists(fresh), "failed save leaves no output folder")
    left = [f for f in os.listdir(tmp) if ".tmp-" in f or ".old-" in f]
    check(not left, f"no temporary folders left ({left})")
    # --force replaces; an empty folder is simply filled.
    r = qtool("quantize", "--plugin", "nf4", *base, "--out", out, "--force")
    check(r.returncode == 0 and sorted(os.listdir(out)) == ["config.json", "model.safetensors"], "--force replaces")
    empty = os.path.join(tmp, "empty")
    os.makedirs(empty)
    r = qtool("quantize", "--plugin", "nf4", *base, "--out", empty)
    check(r.returncode == 0 and "config.json" in os.listdir(empty), "an empty --out folder is used")
    left = [f for f in os.listdir(tmp) if ".tmp-" in f or ".old-" in f]
    check(not left, f"no temporary folders left after --force ({left})")
    # eval without --plugin on a float checkpoint is a usage error.
    r = qtool("eval", *base, "--data", data("qwen2"))
    check(r.returncode == 2 and "--plugin" in r.stderr, f"eval of a float checkpoint needs --plugin ({r.stderr.strip()})")


def main():
    for f in ["libqtool_nf4.so", "libqtool_bnb_int8.so", "libqtool_fp16.so"]:
        if not os.path.exists(os.path.join(PLUGINS, f)):
            print(f"skipped: {f} is not built in {PLUGINS!r}")
            return 77
    if not os.path.exists(FIXTURE):
        print(f"skipped: no fixture plugin {FIXTURE!r}")
        return 77
    tmp = tempfile.mkdtemp(prefix="qtool-quantize-")
    try:
        test_round_trip(tmp)
        test_tokenizer_files(tmp)
        test_folding(tmp)
        test_calibration_order(tmp)
        test_errors(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
