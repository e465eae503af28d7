#!/usr/bin/env python3
"""Prints the benchmark table (markdown) from the JSON files run.sh wrote:
DIR/qtool_NAME.json and DIR/hf_NAME.json for each model NAME.

  python3 bench/model/table.py DIR
"""
import json
import os
import sys

GB = 1e9


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "."
    rows = []
    for name in ("modernbert", "qwen2"):
        qp, hp = os.path.join(d, f"qtool_{name}.json"), os.path.join(d, f"hf_{name}.json")
        if not (os.path.exists(qp) and os.path.exists(hp)):
            continue
        q, h = load(qp), load(hp)
        rows.append((name, q, h))
    if not rows:
        print("no results in", d)
        return 1
    print(f"card: {rows[0][1]['device']}; batch {rows[0][1]['batch']} x {rows[0][1]['seq']} tokens, "
          f"{rows[0][1]['dtype']}; transformers {rows[0][2].get('transformers')}, torch {rows[0][2].get('torch')}")
    print()
    print("| model | qtool ms/example | transformers ms/example | speed-up | qtool peak (allocator) GB "
          "| qtool peak (device) GB | transformers peak (max_memory_allocated) GB | transformers peak (device) GB "
          "| peak ratio (allocator) | logits max diff / max | argmax agreement |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, q, h in rows:
        print(f"| {name} | {q['ms_per_example']:.4f} | {h['ms_per_example']:.4f} "
              f"| {h['ms_per_example'] / q['ms_per_example']:.2f}x "
              f"| {q['peak_alloc_bytes'] / GB:.3f} | {q['device_used_bytes'] / GB:.3f} "
              f"| {h['peak_alloc_bytes'] / GB:.3f} | {h['device_used_bytes'] / GB:.3f} "
              f"| {q['peak_alloc_bytes'] / h['peak_alloc_bytes']:.2f} "
              f"| {h.get('qtool_logits_rel_diff', float('nan')):.2e} | {h.get('argmax_agreement', float('nan')):.3f} |")
    print()
    for name, q, h in rows:
        cats = ", ".join(f"{k} {v / GB:.3f}" for k, v in q["peak_by_category"].items() if v)
        print(f"{name}: qtool allocator peak by category (GB): {cats}; pack {q['pack_s']:.2f} s, "
              f"first pass {q['first_pass_s']:.2f} s; transformers attention: {h.get('attn_implementation')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
