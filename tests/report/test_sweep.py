"""`qtool sweep` with a substitute cell runner (fake_cell.py through
QTOOL_SWEEP_CELL_CMD): failure recording (SIGSEGV, exit 1, invalid result,
timeout), atomic per-cell results, resume after a killed sweep, the INI
errors, and the assembled results.json (tiers recomputed here from the
cells' logits with the float64 reference)."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

try:
    import numpy as np
    from safetensors.numpy import load_file
except ImportError as e:  # pragma: no cover
    print(f"skipped: reference packages missing ({e})")
    sys.exit(77)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "metrics"))
import html_check  # noqa: E402
import metrics_ref as ref  # noqa: E402

QTOOL = os.environ.get("QTOOL_BIN", "qtool")
PY = os.environ.get("QTOOL_PYTHON") or sys.executable
failures = []

NAMES = ["billing", "fraud", "late_fee", "card", "loan", "other", "mortgage", "atm"]


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def write_fixture(d, plugins, extra_ini="", timeout=None):
    rng = np.random.default_rng(5)
    for m in ["encoder", "decoder"]:
        os.makedirs(f"{d}/{m}", exist_ok=True)
        with open(f"{d}/{m}/config.json", "w") as f:
            json.dump({"id2label": {str(i): n for i, n in enumerate(NAMES)},
                       "label2id": {n: i for i, n in enumerate(NAMES)}}, f)
    y = rng.integers(0, len(NAMES), size=160)
    with open(f"{d}/eval.jsonl", "w") as f:
        for i, v in enumerate(y):
            f.write(json.dumps({"text": f"t{i}", "label": NAMES[v] if i % 2 else int(v)}) + "\n")
    train = rng.choice(len(NAMES), size=800, p=np.array([30, 20, 15, 10, 8, 7, 6, 4]) / 100)
    with open(f"{d}/train.jsonl", "w") as f:
        for v in train:
            f.write(json.dumps({"label": NAMES[v]}) + "\n")
    ini = f"""; a test sweep
[model encoder]
path = encoder

[model decoder]
path = {d}/decoder

[data]
eval = eval.jsonl
train = train.jsonl
head = 2
mid = 3

[plugins]
list = {' '.join(plugins)}
options.int4 = group=128 act_order=1

[envelope]
device = H100
max_ms_per_example = 10
min_macro_f1 = 0.2
max_ece_post = 0.2

[output]
dir = out
{f'cell_timeout_s = {timeout}' if timeout else ''}

[named_classes]
names = billing, fraud,
  atm
{extra_ini}"""
    with open(f"{d}/sweep.ini", "w") as f:
        f.write(ini)
    return y, train


def sweep(d, *extra, env_extra=None, expect_rc=0):
    env = dict(os.environ)
    env["QTOOL_SWEEP_CELL_CMD"] = f"{PY} {HERE}/fake_cell.py"
    env["FAKE_LOG"] = f"{d}/calls.log"
    env.update(env_extra or {})
    p = subprocess.run([QTOOL, "sweep", "--config", f"{d}/sweep.ini", *extra], capture_output=True, text=True,
                       env=env, timeout=300)
    if p.returncode != expect_rc:
        print(p.stdout, p.stderr)
        check(False, f"sweep {extra}: exit {p.returncode}, expected {expect_rc}")
    return p


def calls(d):
    try:
        return [line.split() for line in open(f"{d}/calls.log").read().splitlines()]
    except FileNotFoundError:
        return []


def no_temp_files(d):
    left = [p for p in glob.glob(f"{d}/out/**", recursive=True) if ".tmp." in p or p.endswith(".partial.json")]
    check(not left, f"temporary files left behind: {left}")


def test_full_sweep():
    plugins = ["fp16", "int8", "int4", "nologits", "crashy", "failing", "garbage", "hang"]
    with tempfile.TemporaryDirectory() as d:
        y, train = write_fixture(d, plugins, timeout=4)  # fake cells are Python processes: 1 s failed under a loaded ctest -j
        p = sweep(d)
        err = p.stderr
        check("[1/16] encoder x fp16: ok" in err, f"progress line per cell: {err[:400]}")
        check(err.count(" x ") >= 16, "a progress line for every cell")
        res = json.load(open(f"{d}/out/results.json"))
        rows = {(r["model"], r["plugin"]): r for r in res["rows"]}
        check(len(rows) == 16, f"16 rows, got {len(rows)}")
        check(res["schema"] == "qtool-results/1", "schema")
        for m in ["encoder", "decoder"]:
            r = rows[(m, "crashy")]
            check(r["status"] == "failed" and "signal 11 (SIGSEGV)" in r["reason"], f"crashy: {r.get('reason')}")
            check("loading weights" in r["reason"], "crash reason carries the last stderr line")
            r = rows[(m, "failing")]
            check(r["status"] == "failed" and r["reason"].startswith("exit code 1: ")
                  and "out of device memory" in r["reason"], f"failing: {r.get('reason')}")
            r = rows[(m, "garbage")]
            check(r["status"] == "failed" and "no valid result" in r["reason"], f"garbage: {r.get('reason')}")
            r = rows[(m, "hang")]
            check(r["status"] == "failed" and "timed out" in r["reason"], f"hang: {r.get('reason')}")
            for pl in ["fp16", "int8", "int4", "nologits"]:
                check(rows[(m, pl)]["status"] == "ok", f"{m}/{pl} ok")
            check(rows[(m, "fp16")]["is_reference"] is True, "fp16 is the reference")
            check(rows[(m, "fp16")]["tiers"] is None, "the reference has no tier deltas")
            check(rows[(m, "int4")]["options"] == "group=128 act_order=1", "options recorded")
            check(rows[(m, "nologits")]["metrics_source"] == "cell", "cell metrics kept without logits")
            check(rows[(m, "nologits")]["macro_f1"] == 0.33, "cell's own macro_f1")
            check(rows[(m, "nologits")]["class_accuracy"]["billing"] == 0.25, "named class from the cell's per_class")

            # Recompute every logit-derived number independently.
            z_ref = load_file(f"{d}/out/cells/{m}__fp16.logits.safetensors")["logits"]
            ref_pred = z_ref.argmax(axis=1)
            counts = np.bincount(train, minlength=len(NAMES))
            tier_of = ref.assign_tiers(counts.tolist(), 2, 3)
            for pl in ["fp16", "int8", "int4"]:
                r = rows[(m, pl)]
                z = load_file(f"{d}/out/cells/{m}__{pl}.logits.safetensors")["logits"]
                pred = z.argmax(axis=1)
                check(r["metrics_source"] == "logits", f"{m}/{pl}: metrics from logits")
                check(abs(r["accuracy"] - (pred == y).mean()) < 1e-12, f"{m}/{pl}: accuracy")
                check(abs(r["ece"] - ref.ece(z, y)) < 1e-9, f"{m}/{pl}: ece")
                for k, name in enumerate(["billing", "fraud", "atm"]):
                    cid = NAMES.index(name)
                    want = ((pred == cid) & (y == cid)).sum() / max(1, (y == cid).sum())
                    check(abs(r["class_accuracy"][name] - want) < 1e-12, f"{m}/{pl}: class_accuracy[{name}]")
                if pl == "fp16":
                    continue
                want = ref.tiers(pred, ref_pred, y, tier_of)
                for t in ["head", "mid", "tail"]:
                    g = r["tiers"][t]
                    check(g["n"] == want[t]["n"] and g["flips"] == want[t]["flips"], f"{m}/{pl} {t}: n/flips")
                    check(abs(g["delta"] - want[t]["delta"]) < 1e-12, f"{m}/{pl} {t}: delta")
                    check(abs(g["ci_low"] - want[t]["ci_low"]) < 1e-12, f"{m}/{pl} {t}: ci_low")
            check(rows[(m, "int8")]["ms_per_example"] == 5.8 * (2 if m == "decoder" else 1), "cell latency kept")
            check(rows[(m, "int8")]["versions"]["qtool"], "qtool version recorded")
        # Every cell file is complete JSON; nothing temporary is left.
        for path in glob.glob(f"{d}/out/cells/*.json"):
            json.load(open(path))
        check(len(glob.glob(f"{d}/out/cells/*.json")) == 16, "one record per cell")
        no_temp_files(d)
        for name in ["results.csv", "report.md", "report.html"]:
            check(os.path.getsize(f"{d}/out/{name}") > 0, f"{name} written")
        check(not html_check.well_formed(f"{d}/out/report.html"), "sweep's report.html is well-formed")
        check(len(calls(d)) == 16, f"16 cell runs, got {len(calls(d))}")

        # Resume: nothing runs again; --retry-failed reruns failed cells only.
        sweep(d)
        check(len(calls(d)) == 16, "a rerun skips every finished cell")
        os.remove(f"{d}/out/cells/decoder__int8.json")
        sweep(d)
        check(calls(d)[16:] == [["decoder", "int8"]], f"only the missing cell runs again: {calls(d)[16:]}")
        sweep(d, "--retry-failed")
        again = sorted(c[1] for c in calls(d)[17:])
        check(again == sorted(["crashy", "failing", "garbage", "hang"] * 2), f"--retry-failed reruns: {again}")
        # A changed configuration of one plugin reruns that plugin's cells.
        ini = open(f"{d}/sweep.ini").read().replace("group=128 act_order=1", "group=64")
        open(f"{d}/sweep.ini", "w").write(ini)
        n = len(calls(d))
        sweep(d)
        check(sorted(c[1] for c in calls(d)[n:]) == ["int4", "int4"], "changed options rerun that plugin")


def test_interrupted():
    with tempfile.TemporaryDirectory() as d:
        write_fixture(d, ["fp16", "int8", "int4"])
        env = dict(os.environ)
        env.update(QTOOL_SWEEP_CELL_CMD=f"{PY} {HERE}/fake_cell.py", FAKE_LOG=f"{d}/calls.log",
                   FAKE_HANG_ON="decoder/int8", FAKE_HANG_MARKER=f"{d}/hang.pid")
        proc = subprocess.Popen([QTOOL, "sweep", "--config", f"{d}/sweep.ini"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        t0 = time.time()
        while not os.path.exists(f"{d}/hang.pid") and time.time() - t0 < 60 and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # only the sweep: its cell must die with it
        proc.wait()
        proc.stderr.close()
        pid = int(open(f"{d}/hang.pid").read() or 0)
        t0 = time.time()
        alive = True
        while alive and time.time() - t0 < 10:
            try:
                os.kill(pid, 0)
                with open(f"/proc/{pid}/stat") as f:
                    alive = f.read().split()[2] != "Z"
            except (ProcessLookupError, FileNotFoundError):
                alive = False
            time.sleep(0.05)
        check(not alive, "the running cell dies with the killed sweep")
        check(not os.path.exists(f"{d}/out/results.json"), "no results.json from a killed sweep")
        done = sorted(os.path.basename(p) for p in glob.glob(f"{d}/out/cells/*.json") if ".partial" not in p)
        check(done == ["decoder__fp16.json", "encoder__fp16.json", "encoder__int4.json", "encoder__int8.json"],
              f"finished cells kept: {done}")
        n = len(calls(d))
        sweep(d)
        rerun = calls(d)[n:]
        check(rerun == [["decoder", "int8"], ["decoder", "int4"]], f"resume runs only the rest: {rerun}")
        res = json.load(open(f"{d}/out/results.json"))
        check(all(r["status"] == "ok" for r in res["rows"]) and len(res["rows"]) == 6, "resumed sweep complete")
        no_temp_files(d)


def test_ini_errors():
    # (appended text, message, line of the error counted from the appended text's first line)
    cases = [
        ("[data]\nfoo = 1\n", "unknown key 'foo' in [data]", 1),
        ("[nonsense]\n", "unknown section [nonsense]", 0),
        ("[envelope]\nmax_vram_gb = lots\n", "non-negative number", 1),
        ("[model broken]\nconfig = x.json\n", "[model broken] has no path=", 0),
        ("[plugins]\nlist = fp16\nlist2 = x\n", "unknown key 'list2'", 2),
        ("[output]\ndir = a\n", "duplicate key 'dir'", 1),
        ("this is not ini\n", "syntax error", 0),
    ]
    with tempfile.TemporaryDirectory() as d:
        write_fixture(d, ["fp16"])
        base = open(f"{d}/sweep.ini").read()
        first = base.count("\n") + 2
        for extra, needle, line in cases:
            with open(f"{d}/sweep.ini", "w") as f:
                f.write(base + "\n" + extra)
            p = sweep(d, expect_rc=1)
            msg = p.stderr.strip()
            check(needle in msg, f"INI error {msg!r} should contain {needle!r}")
            check(f"sweep.ini:{first + line}:" in msg, f"INI error {msg!r} should name line {first + line}")
            check(not os.path.exists(f"{d}/out"), "no output for a bad INI")
        # A bad data file fails before any cell runs.
        with open(f"{d}/sweep.ini", "w") as f:
            f.write(base)
        with open(f"{d}/eval.jsonl", "a") as f:
            f.write('{"label": "no_such"}\n')
        p = sweep(d, expect_rc=1)
        check("eval.jsonl:161: unknown label" in p.stderr, f"bad data named: {p.stderr.strip()}")
        check(not calls(d), "no cell ran with bad data")


def main():
    for t in [test_full_sweep, test_interrupted, test_ini_errors]:
        print("--", t.__name__, flush=True)
        t()
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
