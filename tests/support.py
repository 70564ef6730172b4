"""Shared test helpers: random KS inputs and the accuracy check against the float64 reference."""
import contextlib

import torch

from ks_ops import KSPattern, ks_matmul_reference
from ks_ops.reference import rel_err as _rel_err

# Relative error of a float32/float64 product is far below these; low-precision dtypes are judged
# against the error PyTorch's own dense product makes in that dtype (FlashAttention-style).
TIGHT_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def make_inputs(pattern, batch, *, batch_last=False, dtype=torch.float32, device="cpu", lead=None):
    p = KSPattern.of(pattern)
    w = p.random_weights(dtype=dtype, device=device)
    if batch_last:
        x = torch.randn(p.in_features, batch, dtype=dtype, device=device)
    else:
        x = torch.randn(*(lead or (batch,)), p.in_features, dtype=dtype, device=device)
    return x, w


def rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    assert torch.isfinite(y).all(), "output has non-finite entries (unwritten or overflowed)"
    return _rel_err(y, ref)


def same_dtype_dense_err(x, w, batch_last: bool) -> float:
    """Relative error of the same product done by PyTorch as a dense matmul in x's dtype."""
    k = KSPattern.of_weights(w).to_dense(w)
    y = k @ x if batch_last else torch.nn.functional.linear(x, k)
    return rel_err(y, ks_matmul_reference(x, w, batch_last=batch_last))


def assert_matches_reference(y, x, w, *, batch_last=False, factor=3.0):
    ref = ks_matmul_reference(x, w, batch_last=batch_last)
    assert y.shape == ref.shape, f"shape {tuple(y.shape)} != reference {tuple(ref.shape)}"
    assert y.dtype == x.dtype
    if ref.numel() == 0:
        return
    err = rel_err(y, ref)
    if x.dtype in TIGHT_RTOL:
        tol = TIGHT_RTOL[x.dtype]
    else:
        tol = factor * same_dtype_dense_err(x, w, batch_last) + 1e-6
    assert err <= tol, f"relative error {err:.3g} > {tol:.3g} ({x.dtype}, pattern {tuple(w.shape)})"


def same_dtype_dense_wgrad_err(grad_y, x, pattern, ref) -> float:
    """Relative error of the weight gradient done by PyTorch as the dense gradient in x's dtype
    (grad_yᵀ·x over the batch, batch-first), read at K's support."""
    p = KSPattern.of(pattern)
    rows, cols = p.dense_indices(x.device)
    dense = grad_y.reshape(-1, p.out_features).T @ x.reshape(-1, p.in_features)
    return rel_err(dense[rows, cols], ref)


def cuda_kernel_ran(fn, names) -> bool:
    """Whether running fn launched a CUDA kernel whose name contains one of `names` (profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return any(k in e.name for e in prof.events() for k in names)


@contextlib.contextmanager
def tf32(enabled: bool):
    """cuBLAS / the kernels in TF32 (allow_tf32) inside the block, restored after."""
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
