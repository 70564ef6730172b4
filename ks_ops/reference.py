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
