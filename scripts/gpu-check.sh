#!/bin/bash
# Builds qtool with CUDA on a machine with a GPU and runs everything that
# needs one: the full test suite (GPU tests included), the conformance suite
# on CUDA for every plugin, a compute_75-PTX-only build of the Turing paths,
# and the GEMM benchmark. Logs go to $OUT (default ./gpu-logs).
#   scripts/gpu-check.sh [quick]
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
jobs=$(nproc)
# Debian packages carried in .whl/debs where the machine lacks them.
if ! pkg-config --exists cmocka jansson inih libutf8proc libpcre2-8 2>/dev/null && [ -d .whl/debs ]; then
    for f in .whl/debs/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
command -v pkg-config >/dev/null || { command -v pkgconf >/dev/null && ln -sf "$(command -v pkgconf)" /usr/local/bin/pkg-config; }
export PYTHONUNBUFFERED=1
[ -d .whl/bnb ] && export PYTHONPATH=$PWD/.whl/bnb${PYTHONPATH:+:$PYTHONPATH}
py=$(command -v python3)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"

step() { echo "== $*"; }
step configure
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTOOL_PYTHON="$py" >"$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
step build
cmake --build build-gpu -j"$jobs" >"$OUT/build.log" 2>&1 || { grep -E "error|Error" "$OUT/build.log" | head -40; exit 1; }
step tests
ctest --test-dir build-gpu --output-on-failure -j4 --timeout 300 >"$OUT/ctest.log" 2>&1
grep -E "tests passed|Failed|\*\*\*|Skipped" "$OUT/ctest.log" | tail -40
step conformance on CUDA
for p in $(build-gpu/bin/qtool plugins --json | "$py" -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["plugins"]))'); do
    build-gpu/bin/qtool check-plugin "$p" --device all >"$OUT/check-$p.log" 2>&1
    echo "check-plugin $p: exit $? $(grep -c FAIL "$OUT/check-$p.log") FAIL lines"
done
build-gpu/bin/qtool probe >"$OUT/probe.log" 2>&1; cat "$OUT/probe.log"
[ "${1:-}" = quick ] && exit 0
step compute_75 PTX only: the Turing code paths, compiled by the driver
cmake -S . -B build-sm75 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTOOL_CUDA_ARCHITECTURES=75-virtual -DQTOOL_PYTHON="$py" >"$OUT/configure-sm75.log" 2>&1 &&
cmake --build build-sm75 -j"$jobs" >"$OUT/build-sm75.log" 2>&1 &&
ctest --test-dir build-sm75 --output-on-failure -L gpu --timeout 300 >"$OUT/ctest-sm75.log" 2>&1
grep -E "tests passed|Failed|\*\*\*" "$OUT/ctest-sm75.log" | tail -20
step benchmarks
[ -x build-gpu/bin/qtool_bench_gemm ] && build-gpu/bin/qtool_bench_gemm 2>&1 | tee "$OUT/bench_gemm.log"
[ -f bench/gemm/bnb_reference.py ] && "$py" bench/gemm/bnb_reference.py 2>&1 | tee "$OUT/bnb_reference.log"
exit 0
