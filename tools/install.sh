#!/usr/bin/env bash
# Sets up ks_ops on a fresh machine: torch (the 2.13.0 CPU wheel where no torch is installed yet;
# a GPU machine keeps its own CUDA build), then ks_ops built against it, with the test and
# profiler dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q torch==2.13.0
fi
"$PY" -m pip install -q wheel "setuptools>=77"  # 77: the SPDX license field of pyproject.toml
"$PY" -m pip install -q --no-build-isolation -e ".[dev]"
