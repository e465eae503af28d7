"""`qtool metrics --json` against an independent float64 numpy / scikit-learn
computation on fresh random logits (ties, classes absent from the truth or
from the predictions, labels given as ids and as names), plus the CLI's
error paths. Tolerances: counts and F1 exact to 1e-12; NLL/ECE 1e-9;
T relative 1e-4 (the reference is a grid search); bootstrap CI 1e-12 (same
documented RNG) plus properties independent of the RNG."""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    from safetensors.numpy import save_file
    from sklearn.metrics import f1_score, precision_recall_fscore_support
except ImportError as e:  # pragma: no cover
    print(f"skipped: reference packages missing ({e})")
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import metrics_ref as ref  # noqa: E402

QTOOL = os.environ.get("QTOOL_BIN", "qtool")
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def close(a, b, tol, what):
    ok = (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= tol)
    check(ok, f"{what}: qtool {a!r} vs reference {b!r} (tol {tol})")


def run(args, expect_rc=0):
    p = subprocess.run([QTOOL, "metrics"] + args, capture_output=True, text=True)
    if p.returncode != expect_rc:
        print(p.stdout, p.stderr)
        check(False, f"qtool metrics {' '.join(args)}: exit {p.returncode}, expected {expect_rc}")
    return p


def make_case(rng, n, c, absent_truth, never_pred, tie_rows, scale, uniform_rows=0):
    z = rng.normal(0, scale, size=(n, c)).astype(np.float32)
    y = rng.integers(0, c, size=n)
    for k in absent_truth:
        y[y == k] = (k + 1) % c
    # Make the label usually the argmax so accuracy is non-trivial.
    boost = rng.random(n) < 0.45
    z[boost, y[boost]] += np.float32(2.5 * scale)
    for k in never_pred:
        z[:, k] = z.min() - 5
    for i in rng.choice(n, size=tie_rows, replace=False):
        j = int(np.argmax(z[i]))
        k = (j + 1 + int(rng.integers(0, c - 1))) % c
        if k not in never_pred:
            z[i, k] = z[i, j]  # two classes share the top probability exactly
    for i in range(uniform_rows):
        z[i, :] = np.float32(0.25)  # top probability exactly 1/c: on a bin edge when c = 15
    return z, y


def write_inputs(d, z, y, names, ref_z, train_labels, name_every=3):
    save_file({"logits": z}, os.path.join(d, "logits.safetensors"))
    save_file({"logits": ref_z}, os.path.join(d, "ref.safetensors"))
    with open(os.path.join(d, "data.jsonl"), "w") as f:
        for i, lab in enumerate(y):
            lab = names[lab] if i % name_every == 0 else int(lab)
            f.write(json.dumps({"text": f"example {i}", "label": lab}) + "\n")
    with open(os.path.join(d, "train.jsonl"), "w") as f:
        for i, lab in enumerate(train_labels):
            f.write(json.dumps({"label": names[lab] if i % 2 else int(lab)}) + "\n")
    counts = {names[k]: int((train_labels == k).sum()) for k in range(len(names))}
    with open(os.path.join(d, "counts.json"), "w") as f:
        json.dump(counts, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"id2label": {str(k): v for k, v in enumerate(names)},
                   "label2id": {v: k for k, v in enumerate(names)}}, f)


def well_conditioned(z, y, T):
    """T is a sharp interior minimum: NLL rises measurably 5% either side.
    Where NLL is flat to rounding (confident rows saturating as T -> 0),
    any T in the flat stretch is a minimiser and only optimality is checked."""
    f = ref.nll(z, y, T)
    return ref.nll(z, y, T * 1.05) - f > 1e-7 and ref.nll(z, y, T / 1.05) - f > 1e-7


def compare(d, z, y, ref_z, train_labels, head, mid):
    c = z.shape[1]
    args = ["--logits", f"{d}/logits.safetensors", "--data", f"{d}/data.jsonl",
            "--config", f"{d}/config.json", "--reference", f"{d}/ref.safetensors",
            "--train", f"{d}/train.jsonl", "--head", str(head), "--mid", str(mid), "--json"]
    p = run(args)
    if p.returncode:
        return
    got = json.loads(p.stdout)
    pred = z.argmax(axis=1)
    ref_pred = ref_z.argmax(axis=1)

    check(got["n"] == len(y), "n")
    close(got["accuracy"], float((pred == y).mean()), 1e-12, "accuracy")
    close(got["macro_f1"], float(f1_score(y, pred, average="macro", zero_division=0)), 1e-12,
          "macro_f1")
    labels = np.union1d(y, pred)
    P, R, F, S = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    check([e["label"] for e in got["per_class"]] == labels.tolist(), "per_class labels")
    for e, p_, r_, f_, s_ in zip(got["per_class"], P, R, F, S):
        close(e["precision"], float(p_), 1e-12, f"precision[{e['label']}]")
        close(e["recall"], float(r_), 1e-12, f"recall[{e['label']}]")
        close(e["f1"], float(f_), 1e-12, f"f1[{e['label']}]")
        check(e["support"] == int(s_), f"support[{e['label']}]")
        check(e.get("name") == f"class_{e['label']}", f"name[{e['label']}]")

    close(got["nll"], ref.nll(z, y), 1e-9, "nll")
    close(got["ece"], ref.ece(z, y), 1e-9, "ece")
    T_ref = ref.fit_temperature(z, y)
    T = got["temperature"]
    if well_conditioned(z, y, T_ref):
        close(T / T_ref, 1.0, 1e-4, "temperature (ratio to grid-search reference)")
    check(got["nll_post"] <= ref.nll(z, y, T_ref) + 1e-9, "nll_post is at least as low as the reference's")
    close(got["nll_post"], ref.nll(z, y, T), 1e-9, "nll_post at qtool's T")
    close(got["ece_post"], ref.ece(z, y, T), 1e-9, "ece_post at qtool's T")
    close(got["ece_post"], ref.ece(z, y, T_ref), 5e-3, "ece_post at the reference T")

    a, b = ref.split_indices(len(y))
    sv = got["split_val"]
    check(sv["n_a"] == len(a) and sv["n_b"] == len(b), "split_val sizes")
    Ta = ref.fit_temperature(z[a], y[a])
    if well_conditioned(z[a], y[a], Ta):
        close(sv["temperature"] / Ta, 1.0, 1e-4, "split_val temperature")
    check(ref.nll(z[a], y[a], sv["temperature"]) <= ref.nll(z[a], y[a], Ta) + 1e-9,
          "split_val temperature minimises half A's NLL")
    close(sv["ece_before"], ref.ece(z[b], y[b]), 1e-9, "split_val ece_before")
    close(sv["ece_after"], ref.ece(z[b], y[b], sv["temperature"]), 1e-9, "split_val ece_after")

    counts = np.bincount(train_labels, minlength=c)
    tier_of = ref.assign_tiers(counts.tolist(), head, mid)
    want = ref.tiers(pred, ref_pred, y, tier_of)
    for name in ["head", "mid", "tail"]:
        g, w = got["tiers"][name], want[name]
        for k in ["n", "classes", "flips", "directional"]:
            check(g[k] == w[k], f"tiers.{name}.{k}: {g[k]} vs {w[k]}")
        for k in ["accuracy", "reference_accuracy", "delta", "ci_low", "ci_high"]:
            close(g[k], None if w[k] is None else float(w[k]), 1e-12, f"tiers.{name}.{k}")
        if w["n"] >= 30 and w["flips"] >= 10:
            # Properties that hold whatever the RNG: the CI brackets the
            # point estimate and its width is near the normal approximation
            # 2 * 1.96 * sd(d) / sqrt(m) of the paired difference.
            check(g["ci_low"] <= g["delta"] <= g["ci_high"], f"tiers.{name}: CI brackets delta")
            diffs = w["_d"]
            analytic = 2 * 1.96 * diffs.std() / np.sqrt(len(diffs))
            width = g["ci_high"] - g["ci_low"]
            check(0.75 * analytic <= width <= 1.25 * analytic,
                  f"tiers.{name}: CI width {width:.4f} vs analytic {analytic:.4f}")

    # Deterministic across runs; --label-counts gives the same tiers as --train.
    p2 = run(args)
    check(p2.stdout == p.stdout, "two runs give identical output")
    args_c = [a for a in args]
    i = args_c.index("--train")
    args_c[i:i + 2] = ["--label-counts", f"{d}/counts.json"]
    p3 = run(args_c)
    if p3.returncode == 0:
        check(json.loads(p3.stdout)["tiers"] == got["tiers"], "--label-counts tiers equal --train tiers")
    # The text form runs too.
    run(args[:-1])


def error_cases(d, z, y, names):
    def expect_error(args, needle, data_lines=None):
        if data_lines is not None:
            with open(f"{d}/bad.jsonl", "w") as f:
                f.write("\n".join(data_lines) + "\n")
        p = run(args, expect_rc=1)
        msg = p.stderr.strip()
        check(needle in msg, f"error message {msg!r} should contain {needle!r}")
        check(p.stdout == "", "no output on error")

    base = ["--logits", f"{d}/logits.safetensors", "--data", f"{d}/bad.jsonl",
            "--config", f"{d}/config.json", "--json"]
    good = [json.dumps({"label": int(v)}) for v in y]
    lines = list(good)
    lines[6] = json.dumps({"label": "no_such_class"})
    expect_error(base, "bad.jsonl:7: unknown label \"no_such_class\"", lines)
    lines = list(good)
    lines[2] = json.dumps({"label": z.shape[1] + 3})
    expect_error(base, "bad.jsonl:3:", lines)
    lines = list(good)
    lines[4] = "{not json"
    expect_error(base, "bad.jsonl:5:", lines)
    lines = list(good)
    lines[1] = json.dumps({"text": "no label"})
    expect_error(base, "bad.jsonl:2: no \"label\"", lines)
    expect_error(base, "rows of logits", good[:-1])
    expect_error(base[:-3] + ["--json"], "pass --config", [json.dumps({"label": names[0]})] * len(y))
    save_file({"other": z}, f"{d}/nologits.safetensors")
    with open(f"{d}/bad.jsonl", "w") as f:
        f.write("\n".join(good) + "\n")
    args = ["--logits", f"{d}/nologits.safetensors", "--data", f"{d}/bad.jsonl"]
    expect_error(args, "no tensor \"logits\"")
    p = run(["--logits", f"{d}/logits.safetensors"], expect_rc=2)
    check("--data" in p.stderr, "usage error names the missing option")


def main():
    seed = int(os.environ.get("QTOOL_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"random seed {seed}")
    rng = np.random.default_rng(seed)
    cases = [
        # n, c, absent from truth, never predicted, tied rows, logit scale, head, mid, uniform rows
        (700, 37, [3, 11], [5, 20], 40, 1.0, 5, 10, 0),
        (240, 9, [0], [8], 10, 3.0, 2, 3, 0),
        (150, 15, [2], [], 5, 1.5, 4, 4, 12),
        (7, 4, [], [], 2, 0.5, 20, 40, 0),
    ]
    for n, c, absent, never, ties, scale, head, mid, uniform in cases:
        z, y = make_case(rng, n, c, absent, never, ties, scale, uniform)
        # The reference run: the same logits with noise, so some predictions flip.
        ref_z = (z + rng.normal(0, 0.6 * scale, size=z.shape)).astype(np.float32)
        probs = rng.dirichlet(np.ones(c) * 0.5)
        train = rng.choice(c, size=5 * n, p=probs)
        train[: c // 2] = np.arange(c // 2)  # every early class at least once; ties likely
        names = [f"class_{k}" for k in range(c)]
        with tempfile.TemporaryDirectory() as d:
            write_inputs(d, z, y, names, ref_z, train)
            compare(d, z, y, ref_z, train, head, mid)
            if n > 10:
                error_cases(d, z, y, names)
    if failures:
        print(f"{len(failures)} failure(s); random seed {seed}")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
