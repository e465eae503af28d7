#!/bin/sh
# qtool's CUDA forward pass against transformers on the same card:
#   bench/model/run.sh [BUILD_DIR] [WORK_DIR]
# Writes the random-weight checkpoints (make_checkpoints.py), runs
# bench_model and hf_reference.py for each model, and prints the table.
# Needs a CUDA device, and python3 with torch and transformers (PYTHON=...).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
work=${2:-/tmp/qtool-bench-model}
py=${PYTHON:-python3}
mkdir -p "$work"
[ -d "$work/ckpt/qwen2" ] || "$py" "$here/make_checkpoints.py" --out "$work/ckpt"
for m in modernbert qwen2; do
  "$build/bin/bench_model" --model "$work/ckpt/$m" --name "$m" --json "$work/qtool_$m.json" \
    --logits "$work/qtool_$m.logits"
  "$py" "$here/hf_reference.py" --model "$work/ckpt/$m" --name "$m" --json "$work/hf_$m.json" \
    --qtool-logits "$work/qtool_$m.logits"
done
"$py" "$here/table.py" "$work"
