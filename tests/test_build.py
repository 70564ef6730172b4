"""Build hygiene: the CUDA kernels use no torch types, so bare nvcc compiles them (no GPU needed)."""
import glob
import os
import shutil
import subprocess

import pytest

import ks_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("source", KERNELS, ids=os.path.basename)
def test_kernel_compiles_with_bare_nvcc(source, tmp_path):
    cmd = ["nvcc", "-c", "-arch=sm_90", "-std=c++17", "-I", os.path.join(ROOT, "csrc", "cuda"),
           source, "-o", str(tmp_path / "kernel.o")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_build_info_matches_torch():
    import torch

    assert ks_ops.BUILD_INFO.TORCH_VERSION == torch.__version__


def test_version_mismatch_message(monkeypatch):
    import importlib

    from ks_ops import _build_info, _native

    monkeypatch.setattr(_build_info, "TORCH_VERSION", "1.0.0")
    with pytest.raises(ImportError, match=r"built for torch 1\.0\.0 but torch .* is installed\. Rebuild it with:  pip install --no-build-isolation"):
        importlib.reload(_native)
    monkeypatch.undo()
    importlib.reload(_native)
