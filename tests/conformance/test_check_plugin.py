"""qtool check-plugin as a command: verdicts, exit status, JSON, seeds, and
that each deliberately broken rule of the fixture plugin is caught by the
check meant to catch it.

Usage: test_check_plugin.py QTOOL FP16_SO BROKEN_FIXTURE_SO
"""
import json
import subprocess
import sys

qtool, fp16, broken = sys.argv[1:4]
failures = []


def run(*args):
    p = subprocess.run([qtool, *args], capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout, p.stderr


def expect(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


# A correct plugin passes; the output names every check once per device.
rc, out, err = run("check-plugin", broken, "--opt", "bug=none", "--seed", "5")
expect(rc == 0, f"a rule-abiding plugin passes (rc {rc}):\n{out}{err}")
for check in ("descriptor", "matmul K=129 N=129", "bad-arguments", "save-load", "memory", "row-independence"):
    expect(check in out, f"'{check}' reported")
expect("seed 5" in out, "the seed is printed for reruns")

# Each broken rule fails the check that owns it, and only that one.
cases = {
    "bias": "matmul K=64 N=64",
    "memory": "memory",
    "leak": "memory",
    "lax": "bad-arguments",
    "load": "save-load",
    "rows": "row-independence",
}
for bug, check in cases.items():
    rc, out, err = run("check-plugin", broken, "--opt", f"bug={bug}", "--json")
    expect(rc == 1, f"bug={bug}: exit 1 (got {rc}) {err}")
    try:
        doc = json.loads(out)
    except ValueError:
        expect(False, f"bug={bug}: JSON output parses:\n{out}")
        continue
    failed = {r["check"] for r in doc["results"] if r["verdict"] == "FAIL"}
    expect(check in failed, f"bug={bug}: '{check}' fails (failed: {sorted(failed)})")
    # A wrong memory() is wrong for reloaded layers too; a leak shows
    # wherever layers are freed.
    allowed = {"memory": {check, "save-load"}, "leak": {check, "save-load", "bad-arguments"}}.get(bug, {check})
    if bug != "bias":
        expect(failed <= allowed, f"bug={bug}: only {sorted(allowed)} fail (failed: {sorted(failed)})")
    expect(doc["failed"] == len([r for r in doc["results"] if r["verdict"] == "FAIL"]), "failed count")

# fp16: passes on the CPU; the same seed gives the same report.
rc1, out1, _ = run("check-plugin", fp16, "--device", "cpu", "--seed", "77")
rc2, out2, _ = run("check-plugin", fp16, "--device", "cpu", "--seed", "77")
expect(rc1 == 0, f"fp16 passes on the CPU:\n{out1}")
expect(out1 == out2, "a seed reproduces the report exactly")
body1 = out1.split("\n", 1)[1] if "\n" in out1 else ""  # the first line names the plugin's path
expect("cuda" not in body1.replace("cpu+cuda", ""), "--device cpu runs no CUDA checks")
rc, out, _ = run("check-plugin", fp16, "--json", "--seed", "3")
doc = json.loads(out)
expect(doc["plugin"]["name"] == "fp16" and doc["seed"] == 3, "JSON names the plugin and seed")
expect(all(r["verdict"] in ("PASS", "SKIP") for r in doc["results"]), "fp16 has no FAIL")
expect(rc == 0, "exit 0 without FAIL")

# Usage errors exit 2; a file that is not a plugin exits 1 with one line.
for args in (["check-plugin"], ["check-plugin", fp16, "--device", "gpu"], ["check-plugin", fp16, "--opt", "x"],
             ["check-plugin", fp16, "--opt", "nosuch=1"], ["check-plugin", fp16, "--seed", "-1"]):
    rc, out, err = run(*args)
    expect(rc == 2, f"{args[1:]}: usage error exits 2 (got {rc})")
rc, out, err = run("check-plugin", "/nonexistent/libqtool_x.so")
expect(rc == 1 and err.count("\n") == 1 and "/nonexistent/libqtool_x.so" in err, f"missing file: {err!r}")
rc, out, err = run("check-plugin", "no_such_plugin_name")
expect(rc == 1 and "no_such_plugin_name" in err, f"unknown name: {err!r}")

print("ok" if not failures else f"{len(failures)} failure(s)")
sys.exit(1 if failures else 0)
