"""Loads the compiled extension (which registers torch.ops.ks.*), or explains in plain words why
it cannot: not built, or built for another torch."""
import os

import torch


def _rebuild_command() -> str:
    """How to rebuild, as the package was installed: from a source checkout (an editable install:
    setup.py beside the package), or from an sdist / wheel into site-packages."""
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(source, "setup.py")):
        return f'pip install --no-build-isolation -e "{source}[dev]"'
    return ("pip install --no-build-isolation --force-reinstall --no-deps --no-binary ks_ops ks_ops "
            "(or the sdist you installed from)")


REBUILD = _rebuild_command()


def _load():
    try:
        from . import _build_info
    except ImportError:
        raise ImportError(
            f"ks_ops: the native extension ks_ops._C is not built. Build it for the installed "
            f"torch {torch.__version__} with:  {REBUILD}"
        ) from None
    built, running = _build_info.TORCH_VERSION, torch.__version__
    if built != running:
        raise ImportError(
            f"ks_ops: the native extension was built for torch {built} but torch {running} is "
            f"installed. Rebuild it with:  {REBUILD}"
        )
    try:
        from . import _C  # noqa: F401  (importing registers the ops)
    except ImportError as e:
        raise ImportError(
            f"ks_ops: the native extension ks_ops._C failed to load ({e}). It was built for torch "
            f"{built}; torch {running} is installed. Rebuild it with:  {REBUILD}"
        ) from e
    return _build_info


BUILD_INFO = _load()
WITH_CUDA = BUILD_INFO.WITH_CUDA
