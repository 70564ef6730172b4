"""Builds ks_ops._C: the C++ sources always; the CUDA sources when the installed torch has CUDA
and a CUDA toolkit is found, unless KS_OPS_NO_CUDA=1. Build with --no-build-isolation so the
extension is compiled against the torch that will import it."""
import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    if os.environ.get("KS_OPS_NO_CUDA", "0") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def write_build_info(with_cuda: bool) -> None:
    # Read at import time to explain a version mismatch in plain words.
    path = os.path.join(HERE, "ks_ops", "_build_info.py")
    text = (
        "# Written by setup.py at build time; do not edit.\n"
        f"TORCH_VERSION = {torch.__version__!r}\n"
        f"WITH_CUDA = {with_cuda!r}\n"
    )
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def cublas_library() -> str:
    """Path of the cuBLAS shared library to link the cuBLAS plans against: the toolkit's, or the
    one the torch wheel ships (nvidia-cublas: only libcublas.so.N, no unversioned link). At run
    time the process reuses the libcublas that torch has already loaded (same soname)."""
    dirs = [os.path.join(CUDA_HOME, "lib64"), os.path.join(CUDA_HOME, "lib")]
    dirs += glob.glob(os.path.join(CUDA_HOME, "targets", "*", "lib"))
    try:
        import nvidia

        for root in nvidia.__path__:
            dirs += glob.glob(os.path.join(root, "*", "lib")) + glob.glob(os.path.join(root, "cublas", "lib"))
    except ImportError:
        pass
    for d in dirs:
        found = sorted(glob.glob(os.path.join(d, "libcublas.so*")))
        if found:
            return found[0]
    raise RuntimeError(f"ks_ops: libcublas not found (looked in {dirs}); set KS_OPS_NO_CUDA=1 for a CPU-only build")


# The kernels' target: Hopper (sm_90a: wgmma, TMA, clusters; the kernels check the device's capability
# at run time). Used when no GPU is visible to detect one from.
DEFAULT_ARCH_LIST = "9.0a"


def cuda_arch_list(env, capabilities) -> str:
    """TORCH_CUDA_ARCH_LIST for the CUDA build: the user's list when set, else the visible GPUs'
    capabilities, else DEFAULT_ARCH_LIST (torch's detection fails with an IndexError on a machine
    with nvcc and no GPU). A plain 9.0 becomes 9.0a: the sm_90 kernels (hopper/) need wgmma, which
    only the arch-specific target has, and every sm_90 GPU runs sm_90a code."""
    listed = env.get("TORCH_CUDA_ARCH_LIST")
    if listed:
        archs = listed.replace(",", ";").replace(" ", ";").split(";")
    elif capabilities:
        archs = sorted({f"{major}.{minor}" for major, minor in capabilities})
    else:
        return DEFAULT_ARCH_LIST
    out = []
    for arch in archs:
        if not arch:
            continue
        base, ptx = (arch[:-4], "+PTX") if arch.endswith("+PTX") else (arch, "")
        out.append(("9.0a" if base == "9.0" else base) + ptx)
    return ";".join(dict.fromkeys(out))


def has_sm90a(arch_list: str) -> bool:
    return any(a.split("+")[0] == "9.0a" for a in arch_list.split(";"))


def extension():
    with_cuda = want_cuda()
    write_build_info(with_cuda)
    sources = sorted(glob.glob("csrc/*.cpp"))
    # No -std flag: torch's BuildExtension adds the standard the installed torch's headers need
    # (C++17 up to torch 2.12, C++20 from 2.13/2.14); forcing one broke builds against newer torch.
    cxx = ["-O3"]
    # A toolchain that links libstdc++ statically (the GPU machine's /opt/gcc: _C had no NEEDED
    # libstdc++) gives _C a private copy whose locale data clash with the process's libstdc++
    # (unique-symbol data are shared, functions are bound inside _C), and formatting a number in
    # an error message crashed the process. Keeping every static-archive symbol local makes such a
    # copy self-contained; with a shared libstdc++ the flag changes nothing.
    link = ["-Wl,--exclude-libs,ALL"]
    if not with_cuda:
        return CppExtension("ks_ops._C", sources, extra_compile_args={"cxx": cxx}, extra_link_args=link)
    sources += sorted(glob.glob("csrc/cuda/*.cpp") + glob.glob("csrc/cuda/*.cu") + glob.glob("csrc/cuda/*/*.cu"))
    caps = [torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())]
    archs = cuda_arch_list(os.environ, caps)
    if archs != os.environ.get("TORCH_CUDA_ARCH_LIST"):
        print(f"ks_ops: building the CUDA kernels for TORCH_CUDA_ARCH_LIST={archs}")
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    macros = [("KS_OPS_WITH_CUDA", "1")] + ([("KS_OPS_SM90A", "1")] if has_sm90a(archs) else [])
    nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    return CUDAExtension(
        "ks_ops._C",
        sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        define_macros=macros,
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=[cublas_library()] + link,
    )


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    setup(ext_modules=[extension()], cmdclass={"build_ext": BuildExtension})
