"""`qtool report` on a results.json shaped like the seed lecture's six
configurations (plus a failed and a refused one, and random extra rows):
the envelope check, Pareto frontiers, recommendation and counterfactuals
against an independent Python implementation of the documented rule (the
counterfactuals by brute force over a dense threshold grid); the CSV and
Markdown contents; report.html well-formed, self-contained and escaped.
Rendering in headless Chromium: test_report_chromium.py."""
import csv
import glob
import json
import math
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import html_check  # noqa: E402

QTOOL = os.environ.get("QTOOL_BIN", "qtool")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def tier(delta, lo, hi, flips, n=200):
    return {"n": n, "classes": 20, "accuracy": 0.5 + delta, "reference_accuracy": 0.5, "delta": delta,
            "ci_low": lo, "ci_high": hi, "flips": flips, "directional": flips < 20}


def row(model, plugin, bits, f1, ms, gb, ece, ece_post, tiers=None, status="ok", reason=None, card="Tesla T4"):
    r = {"model": model, "plugin": plugin, "status": status, "reason": reason, "device": "cuda:0", "card": card,
         "weight_bits": bits, "is_reference": plugin == "fp16", "reference": "fp16"}
    if status != "ok":
        return r
    r.update(accuracy=f1 + 0.35, macro_f1=f1, nll=2.1, ece=ece, ece_post=ece_post, temperature=1.4,
             split_val={"temperature": 1.35, "ece_before": ece + 0.004, "ece_after": ece_post + 0.006,
                        "n_a": 700, "n_b": 701},
             tiers=tiers, ms_per_example=ms, examples_per_s=1000 / ms, peak_vram_bytes=gb * 1e9,
             peak_vram={"allocator_bytes": gb * 1e9, "device_bytes": gb * 1e9 + 3e8},
             load_s=2.0, quantize_s=0.0 if plugin == "fp16" else 3.0, weight_bytes=1.5e8 * bits / 16,
             class_accuracy={"credit_card_late_fee": 0.6 - (16 - bits) * 0.01, "mortgage": 0.4 + bits * 0.005},
             versions={"qtool": "0.1.0", "plugin": "1.0"}, seeds={"bootstrap": 42, "split_val": 42})
    return r


def lecture_results():
    t8 = {"head": tier(-0.002, -0.01, 0.006, 25), "mid": tier(0.001, -0.008, 0.01, 22),
          "tail": tier(0.0, -0.02, 0.02, 21, 210)}
    t4 = {"head": tier(-0.03, -0.05, -0.01, 60), "mid": tier(-0.01, -0.03, 0.01, 40),
          "tail": tier(0.029, 0.005, 0.05, 6, 210)}
    rows = [
        row("encoder", "fp16", 16, 0.210, 2.31, 0.41, 0.062, 0.040),
        row("encoder", "int8", 8, 0.207, 5.8, 0.59, 0.05, 0.035, t8),
        row("encoder", "int4", 4, 0.212, 3.2, 0.62, 0.058, 0.038, t4),
        row("decoder", "fp16", 16, 0.2399, 4.2, 1.15, 0.10, 0.070),
        row("decoder", "int8", 8, 0.2401, 12.65, 1.87, 0.10, 0.070, t8),
        row("decoder", "int4", 4, 0.2380, 6.1, 1.85, 0.11, 0.072, t4),
        row("decoder", "gptq", 4, 0, 0, 0, 0, 0, status="failed", reason="killed by signal 11 (SIGSEGV)"),
        row("decoder", "fp8", 8, 0, 0, 0, 0, 0, status="refused",
            reason="needs compute capability >= 8.9; found 7.5 (Tesla T4)"),
    ]
    return {"schema": "qtool-results/1", "created": "2026-01-01T00:00:00Z", "qtool_version": "0.1.0",
            "envelope": {"device": "T4", "max_ms_per_example": 10, "min_macro_f1": 0.20, "max_ece_post": 0.05,
                         "max_vram_gb": None},
            "named_classes": ["credit_card_late_fee", "mortgage"], "rows": rows}


# ------------------------------------------------------------ reference rule

def metric(r, c):
    return {"max_ms_per_example": r.get("ms_per_example"), "min_macro_f1": r.get("macro_f1"),
            "max_ece_post": r.get("ece_post"),
            "max_vram_gb": None if r.get("peak_vram_bytes") is None else r["peak_vram_bytes"] / 1e9}[c]


def viable(r, env):
    if r["status"] != "ok":
        return False
    if env.get("device") and env["device"].lower() not in (r.get("card") or "").lower() \
            and env["device"].lower() not in (r.get("device") or "").lower():
        return False
    for c in ["max_ms_per_example", "min_macro_f1", "max_ece_post", "max_vram_gb"]:
        t = env.get(c)
        if t is None:
            continue
        v = metric(r, c)
        if v is None or (v < t if c == "min_macro_f1" else v > t):
            return False
    return True


def recommend(rows, env):
    tol = env.get("f1_tolerance", 0.005)
    V = [i for i, r in enumerate(rows) if viable(r, env)]
    if not V:
        return None

    def key(i):
        r = rows[i]
        return (r.get("ms_per_example", math.inf), r.get("peak_vram_bytes", math.inf), -r.get("macro_f1", -math.inf))

    def dom(j, i):
        a, b = key(i), key(j)
        return all(x <= y for x, y in zip(b, a)) and b != a

    F = [i for i in V if not any(dom(j, i) for j in V if j != i)]
    best = max(rows[i]["macro_f1"] for i in F)
    band = [i for i in F if rows[i]["macro_f1"] >= best - tol]
    return min(band, key=lambda i: (key(i), i))


def label(rows, i):
    return None if i is None else f"{rows[i]['model']} / {rows[i]['plugin']}"


def brute_counterfactual(rows, env, c, loosen):
    """Nearest threshold change (dense grid between measured values) that
    changes the recommendation; returns (value, label) or None."""
    cur = recommend(rows, env)
    t = env.get(c)
    vals = sorted({metric(r, c) for r in rows if r["status"] == "ok" and metric(r, c) is not None})
    is_min = c == "min_macro_f1"
    up = (not loosen) if is_min else loosen
    if t is None:
        if loosen:
            return None
        t = -math.inf if is_min else math.inf
    grid = sorted({v + d for v in vals for d in (-1e-9, 0.0, 1e-9)}, reverse=not up)
    for g in grid:
        if (up and g <= t) or (not up and g >= t):
            continue
        e = dict(env)
        e[c] = g
        rec = recommend(rows, e)
        if rec != cur:
            return g, label(rows, rec)
    return None


def pareto(rows, cost):
    pts = [(i, (r["ms_per_example"] if cost == 0 else r["peak_vram_bytes"]), r["macro_f1"])
           for i, r in enumerate(rows) if r["status"] == "ok"]
    return [i for i, x, f in pts if not any((x2 <= x and f2 >= f and (x2 < x or f2 > f)) for j, x2, f2 in pts if j != i)]


# -------------------------------------------------------------------- tests

def run_report(d, *extra, expect_rc=0):
    p = subprocess.run([QTOOL, "report", d, "--json", *extra], capture_output=True, text=True, timeout=60)
    if p.returncode != expect_rc:
        print(p.stdout, p.stderr)
        check(False, f"qtool report {extra}: exit {p.returncode}, expected {expect_rc}")
    return p


def test_lecture():
    res = lecture_results()
    rows = res["rows"]
    with tempfile.TemporaryDirectory() as d:
        json.dump(res, open(f"{d}/results.json", "w"))
        p = run_report(d)
        out = json.loads(p.stdout)
        env = res["envelope"]
        check(out["recommendation"] == "encoder / fp16", f"recommendation {out['recommendation']}")
        check(out["recommendation"] == label(rows, recommend(rows, env)), "matches the reference rule")
        check(out["viable"] == ["encoder / fp16", "encoder / int8", "encoder / int4"], f"viable {out['viable']}")
        cfs = {(c["constraint"], c["loosen"]): c for c in out["counterfactuals"]}
        for c in ["max_ms_per_example", "min_macro_f1", "max_ece_post", "max_vram_gb"]:
            for loosen in (True, False):
                want = brute_counterfactual(rows, env, c, loosen)
                got = cfs.get((c, loosen))
                if want is None:
                    check(got is None, f"{c} loosen={loosen}: no counterfactual expected, got {got}")
                    continue
                check(got is not None, f"{c} loosen={loosen}: counterfactual missing (want {want})")
                if got:
                    check(abs(got["value"] - want[0]) < 1e-6, f"{c} loosen={loosen}: value {got['value']} vs {want[0]}")
                    check(got["recommendation"] == want[1], f"{c} loosen={loosen}: {got['recommendation']} vs {want[1]}")
        # The lecture's own counterfactual: a looser ECE ceiling makes the decoder win.
        ece = cfs.get(("max_ece_post", True))
        check(ece and ece["recommendation"] == "decoder / fp16" and abs(ece["value"] - 0.070) < 1e-12,
              f"ECE counterfactual {ece}")
        tol = cfs.get(("f1_tolerance", False))
        check(tol and tol["recommendation"] == "encoder / int4", f"tie tolerance counterfactual {tol}")
        check(("device", True) not in cfs, "dropping the device changes nothing here")

        md = open(f"{d}/report.md").read()
        for cost, title in [(0, "latency vs macro-F1"), (1, "peak VRAM vs macro-F1")]:
            line = next(x for x in md.splitlines() if x.startswith(f"- {title}:"))
            got = [s.strip() for s in line.split(":", 1)[1].strip().split(",")]
            check(got == [label(rows, i) for i in pareto(rows, cost)], f"{title} frontier {got}")
        check("| encoder / int4 | tail | 210 |" in md and "directional" in md, "tier table marks directional")
        check("**encoder / fp16**" in md, "md recommendation")

        with open(f"{d}/results.csv", newline="") as f:
            table = list(csv.DictReader(f))
        check(len(table) == len(rows), "one CSV row per configuration")
        for t, r in zip(table, rows):
            check(t["model"] == r["model"] and t["plugin"] == r["plugin"] and t["status"] == r["status"], "csv ids")
            if r["status"] == "ok":
                check(abs(float(t["macro_f1"]) - r["macro_f1"]) < 1e-9, "csv macro_f1")
                check(abs(float(t["peak_vram_bytes"]) - r["peak_vram_bytes"]) < 1e-3, "csv vram")
                check(t["viable"] == str(int(viable(r, env))), f"csv viable for {r['model']}/{r['plugin']}")
        check(sum(int(t["recommended"]) for t in table) == 1, "one recommended CSV row")
        check(table[6]["reason"] == "killed by signal 11 (SIGSEGV)", "csv keeps the failure reason")

        html = f"{d}/report.html"
        problems = html_check.well_formed(html)
        check(not problems, f"report.html: {problems}")
        text = open(html).read()
        check(text.count("<svg") >= 7, f"expected the plots, found {text.count('<svg')} svg")
        left = [x for x in os.listdir(d) if ".tmp." in x]
        check(not left, f"temporary files left: {left}")

        # What-if: another envelope from an INI, without rerunning anything.
        with open(f"{d}/alt.ini", "w") as f:
            f.write("[envelope]\ndevice = T4\nmax_ms_per_example = 10\nmin_macro_f1 = 0.2\nmax_ece_post = 0.08\n")
        p = run_report(d, "--envelope", f"{d}/alt.ini")
        out = json.loads(p.stdout)
        check(out["recommendation"] == "decoder / fp16", f"looser ECE ceiling: {out['recommendation']}")
        check("**decoder / fp16**" in open(f"{d}/report.md").read(), "report rebuilt for the new envelope")
        with open(f"{d}/bad.ini", "w") as f:
            f.write("[envelope]\nmax_ece = 0.08\n")
        p = run_report(d, "--envelope", f"{d}/bad.ini", expect_rc=1)
        check("bad.ini:2: unknown key 'max_ece'" in p.stderr, f"bad envelope: {p.stderr.strip()}")


def test_random_decisions():
    """Random results: the recommendation and every numeric counterfactual
    agree with the reference implementation."""
    rnd = random.Random(int.from_bytes(os.urandom(4), "little"))
    for trial in range(25):
        rows = []
        for m in range(rnd.randint(1, 3)):
            for p, bits in [("fp16", 16), ("int8", 8), ("nf4", 4), ("awq", 4)][: rnd.randint(1, 4)]:
                rows.append(row(f"model{m}", p, bits, round(rnd.uniform(0.1, 0.4), 3), round(rnd.uniform(0.5, 15), 2),
                                round(rnd.uniform(0.2, 3), 2), 0.1, round(rnd.uniform(0.01, 0.1), 3),
                                card=rnd.choice(["Tesla T4", "NVIDIA H100 80GB HBM3"])))
        env = {"device": rnd.choice([None, "T4", "H100"]), "max_ms_per_example": rnd.choice([None, 5, 10]),
               "min_macro_f1": rnd.choice([None, 0.2]), "max_ece_post": rnd.choice([None, 0.05, 0.08]),
               "max_vram_gb": rnd.choice([None, 1.5]), "f1_tolerance": rnd.choice([0.005, 0.02])}
        res = {"rows": rows, "envelope": env}
        with tempfile.TemporaryDirectory() as d:
            json.dump(res, open(f"{d}/results.json", "w"))
            p = run_report(d)
            if p.returncode:
                return
            out = json.loads(p.stdout)
            want = label(rows, recommend(rows, env))
            check(out["recommendation"] == want, f"trial {trial}: recommendation {out['recommendation']} vs {want}")
            cfs = {(c["constraint"], c["loosen"]): c for c in out["counterfactuals"]}
            for c in ["max_ms_per_example", "min_macro_f1", "max_ece_post", "max_vram_gb"]:
                for loosen in (True, False):
                    w = brute_counterfactual(rows, env, c, loosen)
                    g = cfs.get((c, loosen))
                    if w is None:
                        check(g is None, f"trial {trial} {c}/{loosen}: unexpected {g}")
                    else:
                        check(g is not None and abs(g["value"] - w[0]) < 1e-6 and g["recommendation"] == w[1],
                              f"trial {trial} {c}/{loosen}: {g} vs {w}")
            check(not html_check.well_formed(f"{d}/report.html"), f"trial {trial}: html well-formed")


def test_hostile_and_errors():
    res = lecture_results()
    res["rows"][0]["model"] = "<script>alert(1)</script>"
    res["rows"][1]["plugin"] = 'x"&|y\nz'
    res["rows"][6]["reason"] = "</td></tr></table><img src=x onerror=alert(1)> | pipe"
    res["named_classes"] = ["<b>bold</b>"]
    with tempfile.TemporaryDirectory() as d:
        json.dump(res, open(f"{d}/results.json", "w"))
        run_report(d)
        html = open(f"{d}/report.html").read()
        check("<script" not in html and "<img" not in html and "<b>bold" not in html, "strings are escaped")
        check(not html_check.well_formed(f"{d}/report.html"), "still well-formed")
        md = open(f"{d}/report.md").read()
        check("<script" not in md and "\\|" in md, "markdown escaped")
        with open(f"{d}/results.csv", newline="") as f:
            table = list(csv.DictReader(f))
        check(table[1]["plugin"] == 'x"&|y\nz', "csv round-trips awkward strings")
    with tempfile.TemporaryDirectory() as d:
        p = run_report(d, expect_rc=1)
        check("results.json" in p.stderr, f"missing results.json named: {p.stderr.strip()}")
        open(f"{d}/results.json", "w").write('{"rows": [1, 2}')
        p = run_report(d, expect_rc=1)
        check("results.json:1:" in p.stderr, f"bad JSON named with its line: {p.stderr.strip()}")
        open(f"{d}/results.json", "w").write('{"rows": [{"model": "m", "status": "ok", "macro_f1": "high"}]}')
        run_report(d)  # wrong types read as missing values, not a crash
        check(not glob.glob(f"{d}/*.tmp.*"), "no temporary files")
    p = run_report("/nonexistent-dir", expect_rc=1)


def main():
    for t in [test_lecture, test_random_decisions, test_hostile_and_errors]:
        print("--", t.__name__, flush=True)
        t()
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
