"""ks::weight_grad on the GPU: the fused kernel (16-bit batch-first, d = 4 or d % 8 == 0, b*d and
c*d multiples of 8) and the bmm path it leaves the other cases to. Values against the float64
reference (the autograd gradient of the dense definition) for odd sizes and batches that split
over many blocks, every element written, bitwise determinism, which path runs, strided and
misaligned inputs, opcheck, and autograd through ks_ops.matmul.

Tolerance: fp32 by a fixed relative bound; fp16/bf16 against the error of PyTorch's own dense
weight gradient (grad_yᵀ·x) in the same dtype, times a small factor."""
import pytest
import torch

import ks_ops
from ks_ops import KSPattern, ks_weight_grad_reference

from support import cuda_kernel_ran, rel_err, same_dtype_dense_wgrad_err

pytestmark = pytest.mark.cuda
DEV = "cuda"

# Served by the fused kernel: tails in j, k and rows in both chunk classes (L = 8 and 4, either
# tile orientation), d = 24 and 64, a > 1.
FUSED = [(1, 64, 64, 8), (3, 50, 24, 8), (2, 70, 34, 4), (1, 60, 72, 4), (2, 33, 136, 24),
         (1, 130, 36, 8), (2, 48, 192, 4), (1, 192, 48, 4), (1, 16, 16, 64), (1, 200, 130, 8)]
# Left to the bmm path: d = 1, 2, 3, and d = 4 with b odd (a chunk would straddle two slabs).
FALLBACK = [(1, 7, 5, 1), (2, 33, 12, 4), (3, 13, 11, 3), (1, 64, 64, 2)]
BATCHES = [1, 3, 17, 131, 1000, 4099]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def grads(pattern, batch, dtype, *, batch_last=False, lead=None):
    p = KSPattern.of(pattern)
    if batch_last:
        return (torch.randn(p.out_features, batch, dtype=dtype, device=DEV),
                torch.randn(p.in_features, batch, dtype=dtype, device=DEV))
    lead = lead or (batch,)
    return (torch.randn(*lead, p.out_features, dtype=dtype, device=DEV),
            torch.randn(*lead, p.in_features, dtype=dtype, device=DEV))


def poisoned_weight_grad(gy, x, pattern, batch_last=False):
    """The op right after freeing a NaN buffer of dw's size: an unwritten element stays NaN."""
    poison = torch.full(tuple(pattern), float("nan"), dtype=x.dtype, device=x.device)
    del poison
    return torch.ops.ks.weight_grad(gy, x, list(pattern), batch_last=batch_last)


def check(gy, x, pattern, batch_last=False):
    gw = poisoned_weight_grad(gy, x, pattern, batch_last)
    ref = ks_weight_grad_reference(gy, x, pattern, batch_last=batch_last)
    assert gw.shape == tuple(pattern) and gw.dtype == x.dtype and gw.is_contiguous()
    err = rel_err(gw, ref)  # asserts every element finite (written)
    if x.dtype == torch.float32:
        tol = 2e-5
    else:
        dense = same_dtype_dense_wgrad_err(gy, x, pattern, ref) if not batch_last else 0.0
        tol = 4 * max(dense, {torch.float16: 1e-3, torch.bfloat16: 8e-3}[x.dtype])
    assert err <= tol, f"{x.dtype} {pattern}: rel err {err:.3g} > {tol:.3g}"


def fused_kernel_ran(fn) -> bool:
    return cuda_kernel_ran(fn, ("ks_wgrad_kernel",))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("pattern", FUSED + FALLBACK, ids=str)
def test_matches_reference(pattern, batch, dtype_name):
    gy, x = grads(pattern, batch, DTYPES[dtype_name])
    check(gy, x, pattern)


@pytest.mark.parametrize("dtype_name", ["bf16", "fp32"])
@pytest.mark.parametrize("pattern", [(1, 64, 64, 8), (2, 70, 34, 4), (3, 13, 11, 3)], ids=str)
def test_batch_last_matches_reference(pattern, dtype_name):
    gy, x = grads(pattern, 131, DTYPES[dtype_name], batch_last=True)
    check(gy, x, pattern, batch_last=True)


@pytest.mark.parametrize("pattern,batch", [((1, 16, 16, 8), 20011), ((40, 72, 24, 16), 300),
                                           ((2, 64, 64, 4), 50000)], ids=str)
def test_many_splits_and_tiles(pattern, batch):
    # One tile and ~1250 ring stages (many splits); 160 tiles (> SMs); d = 4 split many ways.
    gy, x = grads(pattern, batch, torch.bfloat16)
    check(gy, x, pattern)


@pytest.mark.parametrize("pattern", [(2, 70, 34, 4), (1, 16, 16, 64)], ids=str)
def test_deterministic(pattern):
    gy, x = grads(pattern, 9001, torch.bfloat16)
    first = torch.ops.ks.weight_grad(gy, x, list(pattern))
    for _ in range(3):
        assert torch.equal(torch.ops.ks.weight_grad(gy, x, list(pattern)), first)


def test_dispatch_fused_and_fallback():
    gy, x = grads((1, 64, 64, 8), 257, torch.bfloat16)
    call = lambda: torch.ops.ks.weight_grad(gy, x, [1, 64, 64, 8])  # noqa: E731
    assert fused_kernel_ran(call)
    fused = call()
    forced = lambda plan: torch.ops.ks._weight_grad_plan(gy, x, [1, 64, 64, 8], plan)  # noqa: E731
    assert not fused_kernel_ran(lambda: forced("bmm"))
    assert fused_kernel_ran(lambda: forced("fused"))
    assert torch.equal(forced("fused"), fused)
    torch.testing.assert_close(forced("bmm"), fused, rtol=2e-2, atol=2e-2)
    gyo, xo = grads((2, 33, 12, 4), 257, torch.bfloat16)
    with pytest.raises(RuntimeError, match="fused plan does not serve"):
        torch.ops.ks._weight_grad_plan(gyo, xo, [2, 33, 12, 4], "fused")
    with pytest.raises(RuntimeError, match="plan must be 'fused' or 'bmm'"):
        torch.ops.ks._weight_grad_plan(gy, x, [1, 64, 64, 8], "dense")
    gy32, x32 = gy.float(), x.float()
    assert not fused_kernel_ran(lambda: torch.ops.ks.weight_grad(gy32, x32, [1, 64, 64, 8]))
    gyo, xo = grads((2, 33, 12, 4), 257, torch.bfloat16)
    assert not fused_kernel_ran(lambda: torch.ops.ks.weight_grad(gyo, xo, [2, 33, 12, 4]))


def test_leading_dims_strided_and_misaligned_rows():
    pattern = (2, 70, 34, 4)
    p = KSPattern.of(pattern)
    gy, x = grads(pattern, None, torch.bfloat16, lead=(3, 5, 7))
    check(gy, x, pattern)
    # Rows wider than the features (fused, ldx != features), then shifted by one element
    # (unaligned: the bmm path), then a transposed (column-major) grad_y (copied).
    big = torch.randn(301, p.in_features + 24, dtype=torch.bfloat16, device=DEV)
    gyb = torch.randn(301, p.out_features, dtype=torch.bfloat16, device=DEV)
    xs = big[:, :p.in_features]
    assert fused_kernel_ran(lambda: torch.ops.ks.weight_grad(gyb, xs, list(pattern)))
    check(gyb, xs, pattern)
    check(gyb, big[:, 1:1 + p.in_features], pattern)
    check(gyb.T.contiguous().T, xs, pattern)


def test_opcheck_cuda():
    gy, x = grads((3, 50, 24, 8), 37, torch.bfloat16)
    torch.library.opcheck(torch.ops.ks.weight_grad.default, (gy, x, [3, 50, 24, 8]), {"batch_last": False})


@pytest.mark.parametrize("pattern", [(2, 70, 34, 4), (1, 64, 64, 8)], ids=str)
def test_autograd_through_matmul(pattern):
    p = KSPattern.of(pattern)
    w = p.random_weights(dtype=torch.bfloat16, device=DEV, requires_grad=True)
    x = torch.randn(513, p.in_features, dtype=torch.bfloat16, device=DEV)
    y = ks_ops.matmul(x, w)
    gy = torch.randn_like(y)
    (gw,) = torch.autograd.grad(y, w, gy)
    ref = ks_weight_grad_reference(gy, x, pattern)
    assert rel_err(gw, ref) <= 4 * max(same_dtype_dense_wgrad_err(gy, x, pattern, ref), 8e-3)


def test_rule_sends_large_planes_to_bmm_and_forced_fused_runs_them():
    """Where the fused kernel is worth running is the rule's call (ks_plan.h,
    choose_weight_grad_plan): large planes go to bmm, yet the fused plan still serves them."""
    gy, x = grads((1, 768, 768, 16), 33, torch.bfloat16)
    assert not fused_kernel_ran(lambda: torch.ops.ks.weight_grad(gy, x, [1, 768, 768, 16]))
    assert fused_kernel_ran(lambda: torch.ops.ks._weight_grad_plan(gy, x, [1, 768, 768, 16], "fused"))
    torch.testing.assert_close(torch.ops.ks._weight_grad_plan(gy, x, [1, 768, 768, 16], "fused"),
                               torch.ops.ks.weight_grad(gy, x, [1, 768, 768, 16]), rtol=2e-2, atol=2e-2)
