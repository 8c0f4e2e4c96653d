#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv with everything it needs.
# CPU torch first, pinned: a bare torch requirement may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" -e ".[all]"
