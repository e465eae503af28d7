#!/bin/sh
# End-to-end forward pass of both benchmark models with every plugin that
# runs on this card: ms/example (batch 32 x 256 tokens, CUDA events, median)
# and peak memory, against the fp16 plugin in the same run.
#   bench/model/plugins.sh [BUILD_DIR] [WORK_DIR] [PLUGIN...]
# Calibrating plugins are packed without calibration data here (their
# kernels and memory are what is timed; quality is measured by `qtool eval`).
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
work=${2:-/tmp/qtool-bench-model}
shift 2 2>/dev/null || shift $#
plugins=${*:-fp16 bnb_int8 nf4 awq gptq smoothquant fp8}
py=${PYTHON:-python3}
mkdir -p "$work"
[ -d "$work/ckpt/qwen2" ] || "$py" "$here/make_checkpoints.py" --out "$work/ckpt" || exit 1
for m in modernbert qwen2; do
  for p in $plugins; do
    QTOOL_PLUGIN_DIR="$build/lib/qtool/plugins" "$build/bin/bench_model" --model "$work/ckpt/$m" --name "$m" \
      --plugin "$p" --json "$work/plugin_${m}_$p.json" >/dev/null 2>"$work/plugin_${m}_$p.err" ||
      echo "$m $p: failed: $(tail -1 "$work/plugin_${m}_$p.err")"
  done
done
"$py" - "$work" $plugins <<'PY'
import json, os, sys
work, plugins = sys.argv[1], sys.argv[2:]
print(f"{'model':<11} {'plugin':<12} {'ms/example':>10} {'vs fp16':>8} {'peak GB':>8} {'vs fp16':>8}  card")
for m in ("modernbert", "qwen2"):
    rows = {}
    for p in plugins:
        f = os.path.join(work, f"plugin_{m}_{p}.json")
        if os.path.exists(f):
            rows[p] = json.load(open(f))
    base = rows.get("fp16")
    for p, r in rows.items():
        t, g = r["ms_per_example"], r["peak_alloc_bytes"] / 1e9
        rt = t / base["ms_per_example"] if base else float("nan")
        rg = r["peak_alloc_bytes"] / base["peak_alloc_bytes"] if base else float("nan")
        print(f"{m:<11} {p:<12} {t:>10.4f} {rt:>7.2f}x {g:>8.3f} {rg:>7.2f}x  {r['device']}")
PY
