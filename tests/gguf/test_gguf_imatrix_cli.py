"""gguf_cpu's importance matrix (--opt imatrix=1) through the CLI on the tiny
Qwen2 checkpoint (tests/model/data/qwen2), calibrated on its data.jsonl.

usage: test_gguf_imatrix_cli.py GGUF_TOOL

1. `qtool eval --plugin gguf_cpu --opt imatrix=1 --calib FILE` runs; the same
   without --calib fails (exit 1) naming the first layer it could not pack,
   and so does `qtool quantize` (leaving no output behind).
2. `qtool quantize ... --opt imatrix=1 --calib FILE --out X.gguf` and
   `--out DIR` write files that record "imatrix": true and evaluate to
   bitwise the logits of the in-memory run.
3. Independent check of what the runtime fed the plugin: the inputs of
   block 0's q/k/v projections are the RMS-normed token embeddings, so their
   importance vector (mean of x_j^2 over every calibration token) is
   computed here in float64 from the checkpoint, and the GGUF file's blocks
   must equal the block quantizer fed with it (gguf_tool). At least 95% of
   the blocks must agree: the runtime's float32 norm and this float64 one
   can differ in the last bit, which can flip a near-tie in the quantizer's
   search (all blocks agreed when this was written). The plain file's
   blocks must differ from them in most blocks, so the check can fail.
"""
import glob
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from safetensors.numpy import load_file
except ImportError as e:
    print(f"skipped: {e}")
    sys.exit(77)

TOOL = sys.argv[1]
QTOOL = os.environ["QTOOL_BIN"]
DATA = os.path.join(os.environ["QTOOL_TEST_DATA"], "model", "data", "qwen2")
MODEL, CALIB = os.path.join(DATA, "model"), os.path.join(DATA, "data.jsonl")
TYPE = "Q4_1"  # hidden 64: every block Linear stays Q4_1 (no k-quant fallback)
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
        print("FAIL:", msg)


def qtool(*args):
    return subprocess.run([QTOOL, *args], capture_output=True, text=True)


def must(r, what):
    if r.returncode != 0:
        print(r.stdout, r.stderr)
        raise SystemExit(f"{what} failed with exit {r.returncode}")
    return r


def logits(path):
    return load_file(path)["logits"]


def tensor(path, name):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}[name]


def field(path, key):
    f = gguf.GGUFReader(path).fields[key]
    return f.contents()


def main():
    with tempfile.TemporaryDirectory() as tmp:
        p = lambda name: os.path.join(tmp, name)
        # 1. eval with and without calibration data
        must(qtool("eval", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", "imatrix=1", "--calib", CALIB,
                   "--data", CALIB), "eval with the default mix, imatrix=1 and --calib")
        must(qtool("eval", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", f"type={TYPE}", "--opt", "imatrix=1",
                   "--calib", CALIB, "--data", CALIB, "--logits-out", p("mem.safetensors")), "eval imatrix=1")
        must(qtool("eval", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", f"type={TYPE}", "--data", CALIB,
                   "--logits-out", p("plain.safetensors")), "eval imatrix=0")
        r = qtool("eval", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", "imatrix=1", "--data", CALIB)
        check(r.returncode == 1, f"eval imatrix=1 without --calib: exit {r.returncode}, expected 1")
        check("imatrix=1 but no calibration data" in r.stderr and "model.layers.0." in r.stderr,
              f"eval imatrix=1 without --calib: message {r.stderr.strip()!r}")
        r = qtool("quantize", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", "imatrix=1", "--out", p("none.gguf"))
        check(r.returncode == 1 and "imatrix=1 but no calibration data" in r.stderr,
              f"quantize imatrix=1 without --calib: exit {r.returncode}, {r.stderr.strip()!r}")
        check(not os.path.exists(p("none.gguf")), "quantize without --calib left a file behind")

        # 2. quantize to a GGUF file and to a checkpoint folder
        must(qtool("quantize", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", f"type={TYPE}", "--opt",
                   "imatrix=1", "--calib", CALIB, "--out", p("im.gguf")), "quantize imatrix=1 to .gguf")
        must(qtool("quantize", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", f"type={TYPE}",
                   "--out", p("plain.gguf")), "quantize imatrix=0 to .gguf")
        must(qtool("quantize", "--model", MODEL, "--plugin", "gguf_cpu", "--opt", f"type={TYPE}", "--opt",
                   "imatrix=1", "--calib", CALIB, "--out", p("im_dir")), "quantize imatrix=1 to a folder")
        qc = json.loads(field(p("im.gguf"), "qtool.quantization_config"))
        check(qc == {"quant_method": "gguf", "type": TYPE, "imatrix": True}, f"im.gguf quantization_config {qc}")
        with open(os.path.join(p("im_dir"), "config.json")) as f:
            qc = json.load(f)["quantization_config"]
        check(qc.get("imatrix") is True, f"im_dir quantization_config {qc}")
        mem = logits(p("mem.safetensors"))
        for src in ("im.gguf", "im_dir"):
            out = p(src + ".logits.safetensors")
            must(qtool("eval", "--model", p(src), "--data", CALIB, "--logits-out", out), f"eval {src}")
            check(np.array_equal(logits(out).view(np.uint32), mem.view(np.uint32)),
                  f"{src}: logits differ from the in-memory imatrix run")
        check(not np.array_equal(mem, logits(p("plain.safetensors"))), "imatrix=1 gave the logits of imatrix=0")

        # 3. block 0's q/k/v against an importance vector computed here
        w = {}
        for f in glob.glob(os.path.join(MODEL, "*.safetensors")):
            w.update(load_file(f))
        with open(os.path.join(MODEL, "config.json")) as f:
            cfg = json.load(f)
        max_len = min(256, cfg["max_position_embeddings"])  # how quantize cuts calibration examples
        ids = []
        with open(CALIB) as f:
            for line in f:
                if line.strip():
                    ids += json.loads(line)["input_ids"][:max_len]
        x = w["model.embed_tokens.weight"][ids].astype(np.float64)
        h = x / np.sqrt(np.mean(x * x, axis=1, keepdims=True) + cfg["rms_norm_eps"])
        h *= w["model.layers.0.input_layernorm.weight"]
        imatrix = np.mean(h * h, axis=0).astype(np.float32)
        imatrix.tofile(p("imatrix.f32"))
        block_bytes = 20  # Q4_1
        for proj, name in (("q", "blk.0.attn_q.weight"), ("k", "blk.0.attn_k.weight"), ("v", "blk.0.attn_v.weight")):
            wt = np.ascontiguousarray(w[f"model.layers.0.self_attn.{proj}_proj.weight"], dtype=np.float32)
            wt.tofile(p("w.f32"))
            rows, cols = wt.shape
            run = lambda *extra: subprocess.run([TOOL, "quant", TYPE, str(rows), str(cols), p("w.f32"), p("e.gguf"),
                                                 *extra], check=True)
            run(p("imatrix.f32"))
            expect = np.asarray(tensor(p("e.gguf"), "w").data).reshape(-1, block_bytes)
            run()
            expect_plain = np.asarray(tensor(p("e.gguf"), "w").data).reshape(-1, block_bytes)
            got = np.asarray(tensor(p("im.gguf"), name).data).reshape(-1, block_bytes)
            got_plain = np.asarray(tensor(p("plain.gguf"), name).data).reshape(-1, block_bytes)
            agree = np.mean(np.all(got == expect, axis=1))
            check(agree >= 0.95, f"{name}: {agree:.1%} of blocks equal the quantizer fed with the float64 imatrix")
            check(np.array_equal(got_plain, expect_plain), f"{name}: imatrix=0 bytes differ from the plain quantizer")
            same_as_plain = np.mean(np.all(got == got_plain, axis=1))
            check(same_as_plain < 0.5, f"{name}: {same_as_plain:.1%} of blocks unchanged by the imatrix")
            print(f"{name}: {agree:.1%} of blocks as expected from the importance vector; "
                  f"{same_as_plain:.1%} equal to the plain quantization")
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("gguf_cpu imatrix CLI checks passed")


if __name__ == "__main__":
    main()
