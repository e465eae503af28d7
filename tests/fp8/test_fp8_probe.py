"""qtool probe on simulated cards, for the fp8 plugin: refused on Turing and
Ampere with the exact reason, allowed on Ada (8.9) and Hopper (9.0) when the
plugin has CUDA code. Runs the same with and without a GPU.

Usage: test_fp8_probe.py   (QTOOL_BIN and QTOOL_PLUGIN_DIR from the test env)
"""
import json
import os
import subprocess
import sys

qtool = os.environ["QTOOL_BIN"]
plugin_dir = os.environ["QTOOL_PLUGIN_DIR"]
env = dict(os.environ, QTOOL_NO_DEFAULT_PLUGINS="1")
failures = []


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def verdict(card):
    p = subprocess.run([qtool, "--plugin-path", plugin_dir, "probe", "--as", card, "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    expect(p.returncode == 0, f"probe --as {card} exits 0 (got {p.returncode}: {p.stderr})")
    doc = json.loads(p.stdout)
    mine = [v for v in doc["plugins"] if v["name"] == "fp8"]
    expect(len(mine) == 1, f"{card}: one fp8 verdict")
    return doc["simulated_device"], mine[0] if mine else {}


refusals = {
    "t4": "needs compute capability >= 8.9 (FP8 tensor cores); found 7.5 (Tesla T4)",
    "sm_75": "needs compute capability >= 8.9 (FP8 tensor cores); found 7.5 (sm_75)",
    "a100": "needs compute capability >= 8.9 (FP8 tensor cores); found 8.0 (NVIDIA A100-SXM4-80GB)",
    "a10": "needs compute capability >= 8.9 (FP8 tensor cores); found 8.6 (NVIDIA A10)",
}
for card, reason in refusals.items():
    dev, v = verdict(card)
    expect(v.get("supported") is False, f"{card}: fp8 refused: {v}")
    expect(v.get("reason") == reason, f"{card}: reason {v.get('reason')!r}, want {reason!r}")
    expect(v.get("device") == "cuda:sim", f"{card}: verdict about the simulated card")

# Ada and Hopper: allowed, unless this build has no CUDA code (then it says so).
_, h100 = verdict("h100")
cuda_build = h100.get("supported") is True
if not cuda_build:
    expect(h100.get("reason") == "this build of the fp8 plugin has no CUDA code",
           f"h100 without CUDA code: {h100}")
for card in ("l4", "sm_89", "h100", "sm_90", "h200"):
    dev, v = verdict(card)
    if cuda_build:
        expect(v.get("supported") is True and v.get("reason") is None, f"{card}: fp8 allowed: {v}")
    else:
        expect(v.get("supported") is False, f"{card}: no CUDA code, refused: {v}")

# The plain text form carries the same line.
p = subprocess.run([qtool, "--plugin-path", plugin_dir, "probe", "--as", "t4"], capture_output=True, text=True,
                   env=env, timeout=120)
expect("  fp8: needs compute capability >= 8.9 (FP8 tensor cores); found 7.5 (Tesla T4)\n" in p.stdout,
       f"text form:\n{p.stdout}")

if failures:
    print(f"{len(failures)} failure(s)")
    sys.exit(1)
print("ok")
