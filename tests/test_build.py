"""Build hygiene: the CUDA kernels use no torch types, so bare nvcc compiles them (no GPU needed)."""
import glob
import os
import shutil
import subprocess

import pytest

import ks_ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*", "*.cu")))


# Files with sm_90-only instructions (hopper/ptx.cuh): a build for several architectures
# (TORCH_CUDA_ARCH_LIST="8.0;9.0a") compiles them for sm_80 as well, where they must trap, not fail.
SM90_ONLY = [k for k in KERNELS if "ptx.cuh" in open(k).read() or os.sep + "hopper" + os.sep in k]


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
@pytest.mark.parametrize("source, arch", [(k, "sm_90") for k in KERNELS] + [(k, "sm_80") for k in SM90_ONLY],
                         ids=lambda v: os.path.basename(v) if os.sep in str(v) else v)
def test_kernel_compiles_with_bare_nvcc(source, arch, tmp_path):
    cmd = ["nvcc", "-c", f"-arch={arch}", "-std=c++17", "-I", os.path.join(ROOT, "csrc", "cuda"),
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


def _setup_module():
    """setup.py's helpers (it only calls setup() when run as a script)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ks_setup", os.path.join(ROOT, "setup.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cuda_arch_list():
    """torch's arch detection raised an IndexError on a machine with nvcc and no GPU: the build
    then targets Hopper. A user's list and the visible GPUs are kept, except that a plain 9.0
    becomes 9.0a (the hopper/ kernels need wgmma), and only then is KS_OPS_SM90A defined."""
    setup = _setup_module()
    assert setup.cuda_arch_list({}, []) == "9.0a"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.0"}, []) == "8.0"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "8.0;9.0+PTX"}, [(9, 0)]) == "8.0;9.0a+PTX"
    assert setup.cuda_arch_list({"TORCH_CUDA_ARCH_LIST": "9.0 9.0a"}, []) == "9.0a"
    assert setup.cuda_arch_list({}, [(9, 0), (8, 0), (9, 0)]) == "8.0;9.0a"
    assert setup.has_sm90a("8.0;9.0a+PTX") and not setup.has_sm90a("8.0;9.0")


def test_no_forced_cxx_standard():
    """The C++ standard is the one the installed torch's BuildExtension adds (torch 2.14's headers
    need C++20; a forced -std=c++17 broke the build)."""
    text = open(os.path.join(ROOT, "setup.py")).read()
    assert "-std=c++" not in text
