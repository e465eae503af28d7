"""qtool probe: every plugin gets a verdict on a simulated sm_75 card, fp16
runs there; an unknown card is a usage error naming the accepted ones; the
plain probe describes the devices here (or says why there is no CUDA
device) and exits 0.

Usage: test_probe.py QTOOL
"""
import glob
import json
import os
import re
import subprocess
import sys

qtool = sys.argv[1]
plugin_dir = os.environ["QTOOL_PLUGIN_DIR"]
env = dict(os.environ, QTOOL_NO_DEFAULT_PLUGINS="1")
failures = []


def run(*args):
    p = subprocess.run([qtool, "--plugin-path", plugin_dir, *args], capture_output=True, text=True,
                       env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


n_files = len(glob.glob(os.path.join(plugin_dir, "lib*.so")))

# --as sm_75 --json: one verdict per plugin, each with a reason when refused.
rc, out, err = run("probe", "--as", "sm_75", "--json")
expect(rc == 0, f"probe --as sm_75 exits 0 (got {rc}: {err})")
doc = json.loads(out)
expect(doc["simulated"] is True, "simulated is true")
sim = doc["simulated_device"]
expect(sim["compute_capability"] == "7.5", f"simulated card is 7.5: {sim}")
verdicts = doc["plugins"]
names = [v["name"] for v in verdicts]
expect(len(names) == len(set(names)), "one verdict per plugin on one simulated device")
expect(len(names) + len(doc["refused"]) == n_files,
       f"every plugin file gets a verdict or a refusal ({len(names)} + {len(doc['refused'])} vs {n_files})")
for v in verdicts:
    expect(isinstance(v["supported"], bool), f"{v['name']}: supported is a bool")
    expect(v["device"] == "cuda:sim", f"{v['name']}: verdict is about the simulated card")
    if not v["supported"]:
        expect(isinstance(v["reason"], str) and v["reason"] and "\n" not in v["reason"],
               f"{v['name']}: a refusal has a one-line reason")
    else:
        expect(v["reason"] is None, f"{v['name']}: no reason when supported")
fp16 = [v for v in verdicts if v["name"] == "fp16"]
expect(len(fp16) == 1, "fp16 is among the plugins")
cuda_fp16 = False
if fp16:
    # Built without CUDA the plugin only lists the CPU, and says so.
    cuda_fp16 = fp16[0]["supported"]
    expect(fp16[0]["supported"] or fp16[0]["reason"] == "CPU only", f"fp16 runs on 7.5: {fp16[0]}")
expect("devices" in doc and "cpu" in doc and doc["cpu"]["threads"] >= 1, "devices and cpu present")

# A card below fp16's floor gets the reason in the documented shape.
rc, out, err = run("probe", "--as", "sm_61")
expect(rc == 0, "probe --as sm_61 exits 0")
if cuda_fp16:
    # 7.0 with CUDA 12 libraries, 7.5 with CUDA 13 (which dropped Volta).
    expect(re.search(r"^  fp16: needs compute capability >= 7\.[05]; found 6\.1 \(sm_61\)$", out, re.M),
           f"fp16 on 6.1:\n{out}")
rc, out, err = run("probe", "--as", "T4")
expect("Plugins on Tesla T4 (simulated, compute capability 7.5):" in out, f"named card:\n{out}")

# Unknown card: usage error listing what is accepted.
rc, out, err = run("probe", "--as", "bogus")
expect(rc == 2, f"--as bogus exits 2 (got {rc})")
for name in ("sm_XY", "t4", "v100", "a10", "a100", "l4", "l40s", "h100", "h200", "b200"):
    expect(name in err, f"--as bogus names '{name}': {err!r}")
expect(out == "", "nothing on stdout for a usage error")
rc, out, err = run("probe", "--frobnicate")
expect(rc == 2, "unknown option exits 2")
rc, out, err = run("probe", "--help")
expect(rc == 0 and "--as" in out, "--help")

# Plain probe: the devices here, the CPU, a verdict per plugin and device.
rc, out, err = run("probe", "--json")
expect(rc == 0, "probe --json exits 0")
doc = json.loads(out)
expect(doc["simulated"] is False, "not simulated")
rc, text, err = run("probe")
expect(rc == 0, "probe exits 0")
if not doc["devices"]:
    expect(text.startswith("no CUDA device: ") and len(text.splitlines()[0]) > len("no CUDA device: "),
           f"says why there is no CUDA device:\n{text}")
    expect(doc["no_cuda_reason"], "JSON says why")
else:
    expect(text.startswith("CUDA devices:"), "lists CUDA devices")
    for d in doc["devices"]:
        expect(d["name"] in text and f"compute capability {d['compute_capability']}" in text,
               f"device {d['name']} described")
        expect(d["driver_version"] and d["runtime_version"], "driver and runtime versions")
expect("\nCPU: " in text, "CPU line")
n_targets = len(doc["devices"]) + 1
expect(len(doc["plugins"]) == len(set(names)) * n_targets, "a verdict per plugin and device")
for v in doc["plugins"]:
    if v["name"] == "fp16" and v["device"] == "cpu":
        expect(v["supported"], "fp16 runs on the CPU")

print("ok" if not failures else f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
