"""The one reference implementation of the KS product: float64, dense, built from the definition
(KSPattern.to_dense). Tests and benchmark correctness checks compare against it, never against the
code under test."""
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
