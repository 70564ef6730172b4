#!/usr/bin/env bash
# Builds the sdist and installs it into a fresh venv (which sees the installed torch through
# --system-site-packages: no multi-GB download), then imports ks_ops from there and runs the op
# and the reference on a small problem. Fails if the sdist misses a file the build needs (it
# once lacked csrc/*.h and csrc/cuda/). Run by .ci/run after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" setup.py -q sdist -d "$tmp/dist" > "$tmp/sdist.log" 2>&1 || { tail -20 "$tmp/sdist.log"; exit 1; }
if grep -q "project.license" "$tmp/sdist.log"; then  # the deprecated table form warned here
  grep -A3 "project.license" "$tmp/sdist.log"; exit 1
fi
sdist=$(ls "$tmp"/dist/ks_ops-*.tar.gz)
tar tzf "$sdist" > "$tmp/files.txt"
for f in csrc/ks_checks.h csrc/ks_plan.h csrc/cuda/ks_kernels.h csrc/cuda/ks_matmul.cu profiles/gpt2_medium.yaml; do
  grep -q "/$f\$" "$tmp/files.txt" || { echo "sdist lacks $f"; exit 1; }
done
# --without-pip: the venv uses the installed pip and setuptools (a 3.11 venv bundles setuptools 65,
# too old for the SPDX license field)
"$PY" -m venv --system-site-packages --without-pip "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --no-build-isolation --no-deps "$sdist" > "$tmp/install.log" 2>&1 \
  || { tail -30 "$tmp/install.log"; exit 1; }
cd "$tmp"
"$tmp/venv/bin/python" - <<'PY'
import os, sys
import torch
import ks_ops
assert os.path.realpath(ks_ops.__file__).startswith(os.path.realpath(sys.prefix)), ks_ops.__file__
x, w = torch.randn(5, 42, dtype=torch.float64), torch.randn(3, 5, 7, 2, dtype=torch.float64)
err = (ks_ops.matmul(x, w) - ks_ops.ks_matmul_reference(x, w)).abs().max().item()
assert err < 1e-12, err
assert "--force-reinstall" in ks_ops._native.REBUILD  # not the editable command of a checkout
print(f"sdist ok: {os.path.basename(os.path.dirname(ks_ops.__file__))} from {sys.prefix}, rebuild hint: {ks_ops._native.REBUILD}")
PY
