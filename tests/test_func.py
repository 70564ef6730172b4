"""torch.func and forward-mode AD through ks::matmul and ks::chain (issue drop-in).

vmap: registered rules (not PyTorch's slow generic fallback), equal to per-sample calls, for a
vmapped x (folded into the batch: one call), vmapped weights or bias (one call per sample) and
batch-last x; values against the float64 reference. Forward-mode AD and torch.func's
differentiation transforms are not carried by the ops' autograd yet: they are refused with an
error that names ks_ops and the alternative (they returned zeros or None before)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import ks_ops
from ks_ops import KSPattern, ks_chain_reference, ks_matmul_reference

from support import rel_err


def test_batching_rules_are_registered():
    for op in ("ks::matmul", "ks::chain"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "FuncTorchBatched"), op


def test_vmap_over_x_is_one_batched_call():
    p = KSPattern(3, 5, 7, 2)
    x, w = torch.randn(4, 5, p.in_features, dtype=torch.float64), p.random_weights(dtype=torch.float64)
    for dim in (0, 1):
        y = torch.func.vmap(lambda x: ks_ops.matmul(x, w), in_dims=dim)(x)
        ref = ks_matmul_reference(x.movedim(dim, 0), w)
        assert y.shape == ref.shape and rel_err(y, ref) <= 1e-12


def test_vmap_over_weights_and_batch_last():
    p = KSPattern(2, 3, 5, 4)
    ws = torch.randn(3, *p.shape, dtype=torch.float64)
    x = torch.randn(6, p.in_features, dtype=torch.float64)
    y = torch.func.vmap(lambda w: ks_ops.matmul(x, w))(ws)
    assert rel_err(y, torch.stack([ks_matmul_reference(x, w) for w in ws])) <= 1e-12
    xl = torch.randn(3, p.in_features, 7, dtype=torch.float64)
    y = torch.func.vmap(lambda x, w: ks_ops.matmul(x, w, batch_last=True))(xl, ws)
    assert rel_err(y, torch.stack([ks_matmul_reference(a, w, batch_last=True) for a, w in zip(xl, ws)])) <= 1e-12


def test_vmap_through_chain():
    w1, w2 = KSPattern(3, 5, 7, 2).random_weights(dtype=torch.float64), KSPattern(1, 4, 15, 2).random_weights(dtype=torch.float64)
    x, bs = torch.randn(4, 6, 42, dtype=torch.float64), torch.randn(4, 8, dtype=torch.float64)
    y = torch.func.vmap(lambda x: ks_ops.chain(x, [w1, w2], bs[0], "gelu"))(x)
    assert rel_err(y, ks_chain_reference(x, [w1, w2], bs[0], "gelu")) <= 1e-12
    y = torch.func.vmap(lambda x, b: ks_ops.chain(x, [w1, w2], b, "silu"))(x, bs)
    assert rel_err(y, torch.stack([ks_chain_reference(a, [w1, w2], b, "silu") for a, b in zip(x, bs)])) <= 1e-12


@pytest.mark.parametrize("transform", ["jvp", "jvp-of-the-op", "grad", "jacrev", "jacfwd", "vmap-of-grad"])
def test_func_differentiation_is_refused_not_zero(transform):
    p = KSPattern(3, 5, 7, 2)
    x, w = torch.randn(4, p.in_features, dtype=torch.float64), p.random_weights(dtype=torch.float64)
    f = lambda x: ks_ops.matmul(x, w)  # noqa: E731
    calls = {"jvp": lambda: torch.func.jvp(f, (x,), (torch.randn_like(x),)),
             "jvp-of-the-op": lambda: torch.func.jvp(lambda x: torch.ops.ks.matmul(x, w), (x,), (torch.randn_like(x),)),
             "grad": lambda: torch.func.grad(lambda x: f(x).sum())(x),
             "jacrev": lambda: torch.func.jacrev(lambda x: ks_ops.chain(x, [w]))(x),
             "jacfwd": lambda: torch.func.jacfwd(f)(x),
             "vmap-of-grad": lambda: torch.func.vmap(torch.func.grad(lambda x: f(x).sum()))(x[:, None])}
    with pytest.raises(RuntimeError, match=r"ks::(matmul|chain): torch.func's differentiation transforms"):
        calls[transform]()


def test_forward_ad_is_refused_not_dropped():
    p = KSPattern(3, 5, 7, 2)
    x, w = torch.randn(4, p.in_features, dtype=torch.float64), p.random_weights(dtype=torch.float64)
    with fwAD.dual_level():
        for call in (lambda: torch.ops.ks.matmul(fwAD.make_dual(x, torch.randn_like(x)), w),
                     lambda: torch.ops.ks.matmul(x, fwAD.make_dual(w, torch.randn_like(w))),
                     lambda: ks_ops.chain(fwAD.make_dual(x, torch.randn_like(x)), [w])):
            with pytest.raises(RuntimeError, match="forward-mode AD tangent .* would be dropped"):
                call()
    # reverse mode is untouched
    xr = x.clone().requires_grad_()
    ks_ops.matmul(xr, w).sum().backward()
    assert xr.grad is not None
