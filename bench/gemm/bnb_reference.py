#!/usr/bin/env python3
"""Times bitsandbytes' own kernels at the shapes of qtool_bench_gemm:
LLM.int8 (Linear8bitLt, threshold 6.0: bnb.matmul) and NF4 with double
quantization (Linear4bit: bnb.matmul_4bit), against torch's fp16 linear,
with CUDA events (3 warm-up runs, median of the timed runs).

    python bench/gemm/bnb_reference.py [--reps N]

Prints "skipped: ..." and exits 77 without bitsandbytes, torch or a GPU.
"""
import argparse
import statistics
import sys

try:
    import torch
    import bitsandbytes as bnb
except Exception as e:  # noqa: BLE001
    print(f"skipped: bitsandbytes not importable ({type(e).__name__}: {e})")
    sys.exit(77)

if not torch.cuda.is_available():
    print("skipped: no CUDA device")
    sys.exit(77)


def time_ms(fn, reps):
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; bitsandbytes {bnb.__version__}")
    print(f"timing: CUDA events, 3 warm-up runs, median of {args.reps}; TFLOP/s = 2*M*N*K / time\n")
    print(f"{'M':<6} {'K':<6} {'N':<6} {'method':<28} {'ms':>10} {'TFLOP/s':>10} {'time/fp16':>9}")
    torch.manual_seed(0)
    for K, N in ((896, 4864), (4864, 896)):
        w = (torch.randn(N, K) * 0.02).half()
        lin16 = torch.nn.Linear(K, N, bias=False).half().to(dev)
        lin16.weight.data.copy_(w.to(dev))
        lin8 = bnb.nn.Linear8bitLt(K, N, bias=False, has_fp16_weights=False, threshold=6.0)
        lin8.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
        lin8 = lin8.to(dev)
        lin4 = bnb.nn.Linear4bit(K, N, bias=False, compute_dtype=torch.float16, compress_statistics=True,
                                 quant_type="nf4")
        lin4.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, compress_statistics=True, quant_type="nf4")
        lin4 = lin4.to(dev)
        for M in (1, 16, 8192):
            x = torch.randn(M, K, device=dev).half()
            reps = min(args.reps, 20) if M >= 4096 else args.reps
            flop = 2.0 * M * N * K
            with torch.inference_mode():
                t16 = time_ms(lambda: lin16(x), reps)
                t8 = time_ms(lambda: lin8(x), reps)
                t4 = time_ms(lambda: lin4(x), reps)
            for name, t in (("torch fp16 linear", t16), ("bnb int8 (threshold 6)", t8), ("bnb nf4 (double quant)", t4)):
                print(f"{M:<6} {K:<6} {N:<6} {name:<28} {t:>10.4f} {flop / (t * 1e-3) / 1e12:>10.2f} {t / t16:>9.2f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
