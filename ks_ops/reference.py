"""The one reference implementation of the KS product (and of a chain of them): float64, dense, built from the definition
(KSPattern.to_dense). Tests and benchmark correctness checks compare against it, never against the
code under test."""
from __future__ import annotations

import torch

from .pattern import KSPattern


def ks_matmul_reference(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    """y = x·Kᵀ (batch-first) or K·x (batch-last), computed in float64 on x's device."""
    dense = KSPattern.of_weights(w).to_dense(w.to(torch.float64))
    x64 = x.to(torch.float64)
    return dense @ x64 if batch_last else x64 @ dense.T


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    """‖y − ref‖ / ‖ref‖ in float64 (0-norm references count as 1e-300, never divide by 0)."""
    y64, ref64 = y.to(torch.float64), ref.to(torch.float64)
    return ((y64 - ref64).norm() / ref64.norm().clamp_min(1e-300)).item()


def ks_weight_grad_reference(grad_y: torch.Tensor, x: torch.Tensor, pattern, *, batch_last: bool = False) -> torch.Tensor:
    """∂⟨grad_y, matmul(x, w)⟩/∂w in float64: the autograd gradient of ks_matmul_reference (the
    product is linear in w, so w's value does not matter)."""
    w0 = torch.zeros(tuple(pattern), dtype=torch.float64, device=x.device, requires_grad=True)
    with torch.enable_grad():
        y = ks_matmul_reference(x.detach(), w0, batch_last=batch_last)
        (gw,) = torch.autograd.grad(y, w0, grad_y.detach().to(torch.float64))
    return gw


_F = torch.nn.functional
# ks::chain's activations as torch.nn.functional defines them (the reference's own copy: it does
# not import the code under test).
REFERENCE_ACTIVATIONS = {"none": lambda t: t, "relu": _F.relu, "gelu": _F.gelu,
                         "gelu_tanh": lambda t: _F.gelu(t, approximate="tanh"), "silu": _F.silu}


def ks_chain_reference(x: torch.Tensor, factors, bias: torch.Tensor | None = None,
                       activation: str = "none") -> torch.Tensor:
    """ks::chain in float64 on x's device: x·(K_n ⋯ K_1)ᵀ + bias, then the activation as
    torch.nn.functional defines it (gelu: the erf form; gelu_tanh: its tanh approximation)."""
    dense = None
    for w in factors:
        k = KSPattern.of_weights(w).to_dense(w.to(torch.float64))
        dense = k if dense is None else k @ dense
    z = x.to(torch.float64) @ dense.T
    if bias is not None:
        z = z + bias.to(torch.float64)
    if activation not in REFERENCE_ACTIVATIONS:
        raise ValueError(f"ks_chain_reference: unknown activation {activation!r}")
    return REFERENCE_ACTIVATIONS[activation](z)
