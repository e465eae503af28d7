#!/usr/bin/env python3
"""transformers + PyTorch eager on the same checkpoint folder and the same
inputs as bench_model, timed the same way: AutoModelForSequenceClassification
in fp16 on the GPU (the model's default attention implementation, no
torch.compile), `batch` sequences of `seq` tokens with an all-ones attention
mask, `warmup` passes, then the median of `iters` passes timed with CUDA
events around the forward call (ids already on the device, logits left
there).

Peak memory: torch.cuda.max_memory_allocated over load and passes (what the
caching allocator handed out: weights and activations), and device-level
(free memory before loading minus free memory after the passes; includes
the caching allocator's reserve and cuBLAS workspaces).

With --qtool-logits FILE (raw float32 [batch, labels] from bench_model),
prints how far qtool's logits are from these: max |a - b| / max |b|.

  python3 bench/model/hf_reference.py --model DIR --name NAME [--json FILE] [--qtool-logits FILE]
"""
import argparse
import json
import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForSequenceClassification

M64 = (1 << 64) - 1


def token_id(s, j, vocab):
    """splitmix64 of (s * 1000003 + j), in [3, min(vocab, 50000)): bench_model.c's formula."""
    z = (s * 1000003 + j + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    z ^= z >> 31
    hi = min(vocab, 50000)
    return 3 + z % (hi - 3)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", default="model")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    ap.add_argument("--qtool-logits")
    a = ap.parse_args()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[a.dtype]
    cuda = a.device.startswith("cuda")
    if cuda:
        torch.cuda.init()
        torch.zeros(1, device=a.device)
        torch.cuda.synchronize()
        free0 = torch.cuda.mem_get_info()[0]
        torch.cuda.reset_peak_memory_stats()
    model = AutoModelForSequenceClassification.from_pretrained(a.model, dtype=dtype).to(a.device).eval()
    vocab = model.config.vocab_size
    ids = torch.tensor([[token_id(s, j, vocab) for j in range(a.seq)] for s in range(a.batch)], dtype=torch.long,
                       device=a.device)
    mask = torch.ones_like(ids)
    times = []
    with torch.inference_mode():
        for i in range(a.warmup + a.iters):
            if cuda:
                t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                t0.record()
                logits = model(input_ids=ids, attention_mask=mask).logits
                t1.record()
                t1.synchronize()
                ms = t0.elapsed_time(t1)
            else:
                import time
                t = time.perf_counter()
                logits = model(input_ids=ids, attention_mask=mask).logits
                ms = 1e3 * (time.perf_counter() - t)
            if i >= a.warmup:
                times.append(ms)
    med = float(np.median(times))
    res = {"name": a.name, "impl": "transformers", "device": torch.cuda.get_device_name() if cuda else "cpu",
           "dtype": a.dtype, "batch": a.batch, "seq": a.seq, "ms_batch_median": med,
           "ms_per_example": med / a.batch, "ms_batch_all": sorted(times),
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "transformers": transformers.__version__, "torch": torch.__version__}
    if cuda:
        torch.cuda.synchronize()
        res["peak_alloc_bytes"] = torch.cuda.max_memory_allocated()
        res["device_used_bytes"] = free0 - torch.cuda.mem_get_info()[0]
    ref = logits.float().cpu().numpy()
    if a.qtool_logits:
        q = np.fromfile(a.qtool_logits, dtype=np.float32).reshape(ref.shape)
        res["qtool_logits_rel_diff"] = float(np.abs(q - ref).max() / max(np.abs(ref).max(), 1e-30))
        res["argmax_agreement"] = float((q.argmax(1) == ref.argmax(1)).mean())
    print(json.dumps(res))
    if a.json:
        with open(a.json, "w") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
