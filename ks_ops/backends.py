"""Interchangeable implementations of the KS product, selectable by name.

- ``kernel``: the op ``torch.ops.ks.matmul`` (fused CUDA kernel on GPU, C++ permute+bmm on CPU).
- ``bmm``: the paper's baseline written in PyTorch: permute x, ``torch.bmm`` over the a·d blocks,
  permute y back.
- ``einsum``: one ``torch.einsum``.
- ``dense``: materialize K (abd x acd) and run a dense matmul.
- ``auto``: the op where it has a fused kernel (CUDA build; float32, float16, bfloat16 on a GPU),
  else the fastest measured fallback, which is again the op: its CPU and float64 kernel is the
  permute+bmm method in C++, measured within noise of ``bmm`` and 1.1-20x faster than ``dense``
  (which rebuilds K each call) on the ViT-S/16 factors at B in {1, 64, 2048} on a 2-core CPU,
  and it alone carries fake kernels and autograd for torch.compile and export.

Every backend takes (x, w, *, batch_last=False) with the op's shapes and is differentiable.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import ops
from .pattern import KSPattern

Backend = Callable[..., torch.Tensor]


def dense(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    k = KSPattern.of_weights(w).to_dense(w)
    return k @ x if batch_last else torch.nn.functional.linear(x, k)


def bmm(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    a, b, c, d = w.shape
    if batch_last:
        n = x.shape[1]
        xb = x.reshape(a, c, d, n).permute(0, 2, 1, 3).reshape(a * d, c, n)
        y = torch.bmm(w.permute(0, 3, 1, 2).reshape(a * d, b, c), xb)
        return y.reshape(a, d, b, n).permute(0, 2, 1, 3).reshape(a * b * d, n)
    lead = x.shape[:-1]
    xb = x.reshape(-1, a, c, d).permute(1, 3, 0, 2).reshape(a * d, -1, c)
    y = torch.bmm(xb, w.permute(0, 3, 2, 1).reshape(a * d, c, b))
    return y.reshape(a, d, -1, b).permute(2, 0, 3, 1).reshape(*lead, a * b * d)


def einsum(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    a, b, c, d = w.shape
    if batch_last:
        y = torch.einsum("ijkl,ikln->ijln", w, x.reshape(a, c, d, x.shape[1]))
        return y.reshape(a * b * d, x.shape[1])
    y = torch.einsum("nikl,ijkl->nijl", x.reshape(-1, a, c, d), w)
    return y.reshape(*x.shape[:-1], a * b * d)


def kernel(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    return ops.matmul(x, w, batch_last=batch_last)


BACKENDS: dict[str, Backend] = {"kernel": kernel, "bmm": bmm, "einsum": einsum, "dense": dense}


def resolve(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The concrete backend name that ``name`` (maybe ``auto``) selects for device and dtype."""
    if name == "auto":
        return "kernel"  # fused kernel or the fastest fallback alike: see the module docstring
    if name not in BACKENDS:
        raise ValueError(f"ks backend: unknown backend {name!r}; choose one of {sorted(BACKENDS) + ['auto']}")
    return name


def get_backend(name: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Backend:
    return BACKENDS[resolve(name, device, dtype)]
