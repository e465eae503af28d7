#!/usr/bin/env bash
# Times llama.cpp's CPU matmul (ggml_mul_mat on the CPU backend) for the same
# shapes and types as bench_gguf, so the two can be compared on one machine.
#
#   bench/gguf/llamacpp_compare.sh [--install-only] [VENV]
#
# Installs llama-cpp-python from PyPI into VENV (default
# build-gguf/llamacpp-venv); that builds llama.cpp from source with cmake,
# which takes 10+ minutes on two cores. Then runs llamacpp_matmul.py through
# ctypes on the ggml libraries the package ships. Environment:
#   M, K, N        shape (default 256, 896, 4864)
#   THREADS        thread counts, space separated (default "1 2")
#   TYPES          ggml types (default "F32 Q8_0 Q4_0 Q4_1 Q5_0 Q5_1 Q4_K Q5_K Q6_K")
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
install_only=0
if [ "${1:-}" = "--install-only" ]; then install_only=1; shift; fi
venv="${1:-$root/build-gguf/llamacpp-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    command -v cmake >/dev/null || { echo "llamacpp_compare: cmake is needed to build llama-cpp-python" >&2; exit 1; }
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --upgrade pip >/dev/null
    # Native build (AVX2/AVX-512 as the CPU has them), no server or tools.
    CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF}" \
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$venv/bin/pip" install --no-cache-dir --verbose llama-cpp-python numpy
fi
[ "$install_only" = 1 ] && exit 0
exec "$venv/bin/python" "$here/llamacpp_matmul.py"
