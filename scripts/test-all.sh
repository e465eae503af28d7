#!/bin/sh
# Installs dependencies, builds qtool twice and runs every test in both:
#   build/        the normal build (CUDA code too where nvcc exists)
#   build-asan/   CPU-only, under AddressSanitizer + UndefinedBehaviorSanitizer
# Tests that need a GPU print "skipped: no CUDA device" where there is none.
set -eu
cd "$(dirname "$0")/.."
sh scripts/install-deps.sh
jobs=$(nproc)
py="$(pwd)/.venv/bin/python"

cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQTOOL_PYTHON="$py"
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs"
# Why tests were skipped (e.g. "skipped: no CUDA device" without a GPU).
grep -h "^skipped" build/Testing/Temporary/LastTest.log | sort | uniq -c || true

cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQTOOL_SANITIZE=ON -DQTOOL_CUDA=OFF -DQTOOL_PYTHON="$py"
cmake --build build-asan -j "$jobs"
ctest --test-dir build-asan --output-on-failure -j "$jobs" --label-exclude slow
