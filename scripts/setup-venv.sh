#!/usr/bin/env bash
# Create or reuse .venv and install lmforge with the given extras; fast and offline-safe:
# torch is pinned to the CPU build of 2.13.0 and installed first, so no resolver pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=".venv/.lmforge-installed${extras:+-$extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
  # llama-cpp-python (extras dev, gguf) compiles llama.cpp: on every core, once (pip caches it).
  # On x86-64, for AVX2 rather than this CPU: a wheel cached on one machine runs on the next,
  # and llama.cpp's AMX kernels (chosen by a native build where the CPU reports AMX) segfault
  # on quantised types inside VMs (ggml-org/llama.cpp#20824). Set CMAKE_ARGS to build otherwise.
  if [ "$(uname -m)" = x86_64 ] && [ -z "${CMAKE_ARGS:-}" ]; then
    export CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  fi
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    .venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
