#!/bin/bash
# Builds qtool with CUDA on a machine with a GPU and runs what needs one.
#   scripts/gpu-check.sh [tests|bench|calib|all]     (default all)
# tests: the whole test suite (GPU tests included), the conformance suite on
#        CUDA for every plugin, the probe, a compute_75-PTX-only build whose
#        GPU tests exercise the Turing code paths, and the demo on CUDA;
# bench: GEMM benchmarks (against cuBLAS fp16 and, where importable,
#        bitsandbytes), the end-to-end model benchmarks and calibration times;
# calib: the calibration tests and benchmark only.
# Logs go to $OUT (default ./gpu-logs), packed into logs.tgz at the end.
set -u -o pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
OUT=${OUT:-$PWD/gpu-logs}
L=$OUT/logs
mkdir -p "$L"
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
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$L/gpu.txt"
step() { echo "== $*"; }
pack_logs() { tar czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$L"; }
trap pack_logs EXIT

# CUTLASS's headers: from .venv (scripts/install-deps.sh), or else from a
# carried nvidia-cutlass wheel in .whl.
cutlass_opt=""
if ! ls -d .venv/lib/python3*/site-packages/cutlass_library >/dev/null 2>&1; then
    w=$(ls .whl/nvidia_cutlass-*.whl 2>/dev/null | head -1)
    if [ -n "$w" ]; then
        mkdir -p /tmp/qtool-cutlass && "$py" -m zipfile -e "$w" /tmp/qtool-cutlass
        cutlass_opt=-DQTOOL_CUTLASS_DIR=/tmp/qtool-cutlass/cutlass_library/source/include
    fi
fi

step build
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTOOL_PYTHON="$py" $cutlass_opt >"$L/configure.log" 2>&1 || { tail -40 "$L/configure.log"; exit 1; }
cmake --build build-gpu -j"$jobs" >"$L/build.log" 2>&1 || { grep -E "error|Error" "$L/build.log" | head -40; exit 1; }

if [ "$what" = calib ]; then
    step calibration tests
    ctest --test-dir build-gpu --output-on-failure -R "quantize|calib|model_cuda|awq|gptq|smoothquant|fp8" --timeout 300 \
        >"$L/ctest.log" 2>&1
    grep -E "tests passed|\*\*\*Failed|\*\*\*Skipped|Timeout|Not Run" "$L/ctest.log" | tail -40
    step calibration benchmark
    PYTHON="$py" sh bench/calib/run.sh build-gpu /tmp/qtool-bench-calib 2>&1 | tee "$L/bench_calib.log"
    cp /tmp/qtool-bench-calib/*.log "$L/" 2>/dev/null
    exit 0
fi
if [ "$what" != bench ]; then
    step tests
    ctest --test-dir build-gpu --output-on-failure -j4 --timeout 300 >"$L/ctest.log" 2>&1
    grep -E "tests passed|\*\*\*Failed|\*\*\*Skipped|Timeout|Not Run" "$L/ctest.log" | tail -40
    step conformance on CUDA
    for p in $(build-gpu/bin/qtool plugins --json | "$py" -c 'import json,sys; print(" ".join(p["name"] for p in json.load(sys.stdin)["plugins"]))'); do
        build-gpu/bin/qtool check-plugin "$p" --device all >"$L/check-$p.log" 2>&1
        echo "check-plugin $p: exit $?, $(grep -c PASS "$L/check-$p.log") PASS, $(grep -c FAIL "$L/check-$p.log") FAIL, $(grep -c SKIP "$L/check-$p.log") SKIP"
    done
    build-gpu/bin/qtool probe 2>&1 | tee "$L/probe.log"
    step demo on CUDA
    (time build-gpu/bin/qtool demo --out /tmp/qtool-demo-cuda --device cuda) >"$L/demo.log" 2>&1
    grep -E "^\[|real|error" "$L/demo.log" | tail -20
    cp /tmp/qtool-demo-cuda/results/report.md "$L/demo-report.md" 2>/dev/null
    step compute_75 PTX only: the Turing code paths, compiled by the driver
    cmake -S . -B build-sm75 -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTOOL_CUDA_ARCHITECTURES=75-virtual -DQTOOL_PYTHON="$py" >"$L/configure-sm75.log" 2>&1 &&
    cmake --build build-sm75 -j"$jobs" >"$L/build-sm75.log" 2>&1 &&
    ctest --test-dir build-sm75 --output-on-failure -L gpu --timeout 300 >"$L/ctest-sm75.log" 2>&1
    grep -E "tests passed|\*\*\*Failed|Error" "$L/ctest-sm75.log" "$L/build-sm75.log" | tail -20
fi
if [ "$what" != tests ]; then
    step benchmarks
    [ -x build-gpu/bin/qtool_bench_gemm ] && build-gpu/bin/qtool_bench_gemm 2>&1 | tee "$L/bench_gemm.log" | grep -vE "^\s*$" | tail -40
    [ -x build-gpu/bin/qtool_bench_w8a8 ] && build-gpu/bin/qtool_bench_w8a8 2>&1 | tee "$L/bench_w8a8.log" | tail -30
    "$py" bench/gemm/bnb_reference.py >"$L/bnb_reference.log" 2>&1 && grep -E "^[0-9]" "$L/bnb_reference.log"
    PYTHON="$py" sh bench/model/run.sh build-gpu /tmp/qtool-bench-model 2>&1 | tee "$L/bench_model.log" | tail -12
    PYTHON="$py" sh bench/model/plugins.sh build-gpu /tmp/qtool-bench-model 2>&1 | tee "$L/bench_plugins.log"
    PYTHON="$py" sh bench/calib/run.sh build-gpu /tmp/qtool-bench-calib 2>&1 | tee "$L/bench_calib.log"
fi
exit 0
