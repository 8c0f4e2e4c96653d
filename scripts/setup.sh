#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything it needs.
# torch is pinned to the version the suite runs against. Which build pip installs depends on its index: from PyPI on
# Linux x86_64 it is the CUDA build (with about twenty nvidia-* packages, several GB), on macOS and Windows the CPU
# one. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup.sh takes PyTorch's CPU-only build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url "$TORCH_INDEX_URL"
fi
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[all,test]"
# Build the C++ STPN kernel now (cached under ~/.cache/torch_extensions, one folder per source, torch
# version and CPU) rather than at the first forward; without a compiler the layer logs one line and runs
# its plain PyTorch path instead.
.venv/bin/python -c "from sb3_stpn.ops.stpn import cpp_kernel_available; print('C++ STPN kernel:', 'ready' if cpp_kernel_available() else 'unavailable, using PyTorch ops')"
