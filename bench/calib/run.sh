#!/bin/sh
# Calibration time of the Qwen2.5-0.5B-shaped decoder (random weights from
# bench/model/make_checkpoints.py) for every calibrating plugin:
#   bench/calib/run.sh [BUILD_DIR] [WORK_DIR] [PLUGIN...]
# 128 calibration samples x 256 tokens (ids from a fixed-seed generator),
# `qtool quantize --device cuda`; prints the wall time of the whole command
# (load, calibrate + pack, save) and of calibration + packing alone (the sum
# of the per-block lines), with the card. Needs a CUDA device and python3
# with torch and transformers for the checkpoint.
set -u
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
work=${2:-/tmp/qtool-bench-calib}
shift 2 2>/dev/null || shift $#
plugins=${*:-smoothquant fp8 awq gptq}
py=${PYTHON:-python3}
mkdir -p "$work"
ckpt=$work/ckpt/qwen2
[ -d "$ckpt" ] || "$py" "$here/../model/make_checkpoints.py" --out "$work/ckpt" --only qwen2 || exit 1
"$py" - "$work/calib.jsonl" <<'PY'
import json, random, sys
rng = random.Random(20261127)
with open(sys.argv[1], "w") as f:
    for i in range(128):
        f.write(json.dumps({"input_ids": [rng.randrange(151936) for _ in range(256)], "label": i % 113}) + "\n")
PY
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
printf '%-12s %10s %14s  %s\n' plugin "wall s" "calib+pack s" card
for p in $plugins; do
  rm -rf "$work/out_$p"
  t0=$(date +%s.%N)
  "$build/bin/qtool" quantize --plugin "$p" --model "$ckpt" --calib "$work/calib.jsonl" --calib-samples 128 \
    --max-length 256 --device cuda --out "$work/out_$p" 2>"$work/$p.log"
  rc=$?
  t1=$(date +%s.%N)
  if [ $rc -ne 0 ]; then
    echo "$p: failed: $(tail -1 "$work/$p.log")"
    continue
  fi
  blocks=$(sed -n 's/.* packed in \([0-9.]*\) s.*/\1/p' "$work/$p.log" | awk '{s += $1} END {printf "%.2f", s}')
  printf '%-12s %10.2f %14s  %s\n' "$p" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')" "$blocks" "$card"
done
