"""A stand-in for `qtool eval` in sweep tests (QTOOL_SWEEP_CELL_CMD). Takes
the eval arguments of docs/measurements.md and behaves by plugin name:

  fp16, int8, int4   write a cell JSON and logits (int8/int4: noisier)
  nologits           write a cell JSON with its own metrics and no logits
  crashy             die of SIGSEGV after a line on stderr
  failing            print an error and exit 1
  garbage            exit 0 leaving an invalid JSON file
  hang               sleep (the sweep's cell timeout kills it)

Environment: FAKE_LOG (append "model plugin" per call), FAKE_HANG_ON
("model/plugin": write FAKE_HANG_MARKER with the pid, then sleep)."""
import json
import os
import signal
import sys
import time

import numpy as np
from safetensors.numpy import save_file

BITS = {"fp16": 16, "int8": 8, "int4": 4, "nologits": 8}
LATENCY = {"fp16": 2.31, "int8": 5.8, "int4": 3.2, "nologits": 9.0}
VRAM = {"fp16": 0.41e9, "int8": 0.59e9, "int4": 0.62e9, "nologits": 0.5e9}
NOISE = {"fp16": 0.0, "int8": 0.35, "int4": 0.9}


def arg(args, name, default=None):
    return args[args.index(name) + 1] if name in args else default


def main():
    args = sys.argv[1:]
    assert args[0] == "eval", args
    model, plugin = arg(args, "--model"), arg(args, "--plugin")
    data, out, logits_out = arg(args, "--data"), arg(args, "--json-out"), arg(args, "--logits-out")
    name = os.path.basename(model.rstrip("/"))
    if os.environ.get("FAKE_LOG"):
        with open(os.environ["FAKE_LOG"], "a") as f:
            f.write(f"{name} {plugin}\n")
    if os.environ.get("FAKE_HANG_ON") == f"{name}/{plugin}":
        with open(os.environ["FAKE_HANG_MARKER"], "w") as f:
            f.write(str(os.getpid()))
        time.sleep(60)
    if plugin == "crashy":
        print("loading weights", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSEGV)
    if plugin == "failing":
        print("qtool: error: layer 3: out of device memory", file=sys.stderr)
        sys.exit(1)
    if plugin == "garbage":
        with open(out, "w") as f:
            f.write("{not json")
        return
    if plugin == "hang":
        time.sleep(60)

    config = json.load(open(os.path.join(model, "config.json")))
    label2id = config["label2id"]
    c = len(label2id)
    y = []
    for line in open(data):
        if line.strip():
            lab = json.loads(line)["label"]
            y.append(label2id[lab] if isinstance(lab, str) else lab)
    y = np.array(y)
    # The same base logits for every plugin of a model; quantized ones add noise.
    seed = sum(map(ord, name))
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.0, size=(len(y), c))
    z[np.arange(len(y)), y] += 1.4 + (0.6 if name == "decoder" else 0.0)
    if plugin in NOISE and NOISE[plugin] > 0:
        z = z + np.random.default_rng(seed + BITS[plugin]).normal(0, NOISE[plugin], size=z.shape)
    z = z.astype(np.float32)

    cell = {
        "status": "ok",
        "plugin_version": "0.0-test",
        "device": "cuda:0",
        "card": "NVIDIA H100 80GB HBM3",
        "weight_bits": BITS.get(plugin, 16),
        "activation_bits": 16,
        "batch_size": 32,
        "ms_per_example": LATENCY[plugin] * (2.0 if name == "decoder" else 1.0),
        "examples_per_s": 1000.0 / (LATENCY[plugin] * (2.0 if name == "decoder" else 1.0)),
        "peak_vram_bytes": VRAM[plugin] * (2.8 if name == "decoder" else 1.0),
        "peak_vram": {"allocator_bytes": VRAM[plugin], "device_bytes": VRAM[plugin] + 5e8,
                      "by_category": {"weights": VRAM[plugin] * 0.6, "activations": VRAM[plugin] * 0.4}},
        "load_s": 1.5,
        "quantize_s": 0.0 if plugin == "fp16" else 2.5,
        "weight_bytes": 1.4e8 * BITS.get(plugin, 16) / 16,
        "versions": {"cuda_runtime": 12040},
    }
    if plugin == "nologits":
        # A cell that computed its own metrics (no logits file).
        cell.update(accuracy=0.5, macro_f1=0.33, ece=0.04, ece_post=0.03, temperature=1.1,
                    split_val={"temperature": 1.2, "ece_before": 0.05, "ece_after": 0.03,
                               "n_a": 5, "n_b": 5},
                    per_class=[{"label": 0, "name": "billing", "recall": 0.25}])
    else:
        save_file({"logits": z}, logits_out)
    with open(out, "w") as f:
        json.dump(cell, f)


if __name__ == "__main__":
    main()
