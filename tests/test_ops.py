"""ks::matmul and ks::weight_grad on the CPU: values against the float64 dense reference, opcheck,
gradients, and bad-input messages."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ks_ops
from ks_ops import KSPattern, ks_matmul_reference, ks_weight_grad_reference

from support import assert_matches_reference, make_inputs

ODD = [(1, 1, 1, 1), (1, 7, 5, 1), (3, 2, 5, 7), (2, 13, 11, 3), (5, 3, 2, 1), (1, 4, 6, 11), (7, 1, 3, 2)]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pattern", ODD)
@pytest.mark.parametrize("batch", [0, 1, 17])
def test_matches_reference(pattern, batch, dtype, batch_last):
    x, w = make_inputs(pattern, batch, batch_last=batch_last, dtype=dtype)
    y = ks_ops.matmul(x, w, batch_last=batch_last)
    assert y.is_contiguous()
    assert_matches_reference(y, x, w, batch_last=batch_last)


@given(
    a=st.integers(1, 6), b=st.integers(1, 20), c=st.integers(1, 20), d=st.integers(1, 6),
    batch=st.integers(0, 40), batch_last=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
@settings(max_examples=60, deadline=None)
def test_random_patterns(a, b, c, d, batch, batch_last, dtype):
    x, w = make_inputs((a, b, c, d), batch, batch_last=batch_last, dtype=dtype)
    assert_matches_reference(ks_ops.matmul(x, w, batch_last=batch_last), x, w, batch_last=batch_last)


@pytest.mark.parametrize("lead", [(2, 3), (0, 4), (1,), (2, 1, 3)])
def test_leading_dims(lead):
    x, w = make_inputs((2, 3, 5, 7), None, lead=lead, dtype=torch.float64)
    y = ks_ops.matmul(x, w)
    assert y.shape == (*lead, 2 * 3 * 7)
    assert_matches_reference(y, x, w)


def test_non_contiguous_inputs():
    p = KSPattern(3, 4, 5, 2)
    w = p.random_weights(dtype=torch.float64)
    base = torch.randn(40, 2 * p.in_features, dtype=torch.float64)
    for x in (base[::3, ::2], base[:, : p.in_features].T.contiguous().T, base.T[: p.in_features].T):
        assert not x.is_contiguous()
        assert_matches_reference(ks_ops.matmul(x, w), x, w)
    xt = torch.randn(11, p.in_features, dtype=torch.float64).T  # batch-last, transposed storage
    assert_matches_reference(ks_ops.matmul(xt, w, batch_last=True), xt, w, batch_last=True)
    wt = torch.randn(3, 5, 4, 2, dtype=torch.float64).transpose(1, 2)  # non-contiguous weights
    x = torch.randn(6, p.in_features, dtype=torch.float64)
    assert_matches_reference(ks_ops.matmul(x, wt), x, wt)


def test_weight_grad_matches_dense_gradient():
    for batch_last in (False, True):
        x, w = make_inputs((3, 4, 5, 2), 9, batch_last=batch_last, dtype=torch.float64)
        gy = torch.randn_like(ks_matmul_reference(x, w, batch_last=batch_last))
        gw = torch.ops.ks.weight_grad(gy, x, list(w.shape), batch_last=batch_last)
        torch.testing.assert_close(gw, ks_weight_grad_reference(gy, x, w.shape, batch_last=batch_last))
        # a = -1: a taken from x's features (what a block-sharded backward passes)
        torch.testing.assert_close(torch.ops.ks.weight_grad(gy, x, [-1, *w.shape[1:]], batch_last=batch_last), gw)
        torch.library.opcheck(torch.ops.ks.weight_grad.default, (gy, x, [-1, *w.shape[1:]]), {"batch_last": batch_last})


def test_weight_grad_strides_are_standard():
    """d = 1 used to leave the permuted strides of the size-1 dim (DDP's buckets warned and copied)."""
    x, w = make_inputs((3, 4, 5, 1), 9, dtype=torch.float64)
    gy = torch.randn(9, 12, dtype=torch.float64)
    assert torch.ops.ks.weight_grad(gy, x, list(w.shape)).stride() == (20, 5, 1, 1)


# (pattern, batch, leading dims, batch_last); leading dims apply to batch-first only.
OPCHECK_CASES = [(p, n, None, bl) for p, n in [((3, 2, 5, 7), 6), ((1, 7, 5, 1), 1), ((2, 13, 11, 3), 0),
                                              ((1, 4, 6, 11), 13)] for bl in (False, True)]
OPCHECK_CASES.append(((5, 3, 2, 1), None, (2, 3), False))


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("pattern,batch,lead,batch_last", OPCHECK_CASES)
def test_opcheck_matmul(pattern, batch, lead, batch_last, dtype, requires_grad):
    x, w = make_inputs(pattern, batch, lead=lead, batch_last=batch_last, dtype=dtype)
    x.requires_grad_(requires_grad)
    w.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.ks.matmul.default, (x, w), {"batch_last": batch_last})


def test_opcheck_matmul_non_contiguous():
    p = KSPattern(3, 4, 5, 2)
    x = torch.randn(8, 2 * p.in_features)[:, ::2]
    torch.library.opcheck(torch.ops.ks.matmul.default, (x, p.random_weights()), {})


@pytest.mark.parametrize("requires_grad", [False, True])
@pytest.mark.parametrize("pattern,batch,lead,batch_last", OPCHECK_CASES)
def test_opcheck_weight_grad(pattern, batch, lead, batch_last, requires_grad):
    x, w = make_inputs(pattern, batch, lead=lead, batch_last=batch_last, dtype=torch.float64)
    gy = torch.randn_like(ks_matmul_reference(x, w, batch_last=batch_last))
    x.requires_grad_(requires_grad)
    gy.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.ks.weight_grad.default, (gy, x, list(pattern)), {"batch_last": batch_last})


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("pattern", [(3, 2, 5, 7), (1, 4, 3, 1), (2, 1, 1, 2)])
def test_gradcheck_and_double_backward(pattern, batch_last):
    x, w = make_inputs(pattern, 5, batch_last=batch_last, dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()

    def f(x, w):
        return torch.ops.ks.matmul(x, w, batch_last=batch_last)

    assert torch.autograd.gradcheck(f, (x, w))
    assert torch.autograd.gradgradcheck(f, (x, w))


def test_gradient_matches_reference_gradient():
    x, w = make_inputs((2, 3, 4, 5), None, lead=(2, 3), dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    gy = torch.randn(2, 3, 30, dtype=torch.float64)
    gx, gw = torch.autograd.grad(ks_ops.matmul(x, w), (x, w), gy)
    rx, rw = torch.autograd.grad(ks_matmul_reference(x, w), (x, w), gy)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


W = torch.randn(2, 3, 4, 5)
BAD_INPUTS = [
    (lambda: torch.ops.ks.matmul(torch.randn(3, 41), W), r"last dim is 41 but pattern \(a,b,c,d\)=\(2,3,4,5\) needs a\*c\*d=40"),
    (lambda: torch.ops.ks.matmul(torch.randn(3, 40), W[0]), r"w must be 4-D \(a,b,c,d\).*\[3, 4, 5\]"),
    (lambda: torch.ops.ks.matmul(torch.randn(3, 40, dtype=torch.float64), W), "same dtype, got x Double and w Float"),
    (lambda: torch.ops.ks.matmul(torch.ones(3, 40, dtype=torch.int64), W.long()), "must be float32, float64, float16 or bfloat16, got Long"),
    (lambda: torch.ops.ks.matmul(torch.randn(3, 40, device="meta"), W), "same device, got meta and cpu"),
    (lambda: torch.ops.ks.matmul(torch.randn(3, 3, 40), W, batch_last=True), r"batch-last x must be 2-D .* got shape \[3, 3, 40\]"),
    (lambda: torch.ops.ks.matmul(torch.randn(41, 3), W, batch_last=True), r"batch-last x has 41 rows but pattern .* needs a\*c\*d=40"),
    (lambda: torch.ops.ks.matmul(torch.randn(3, 0), torch.randn(2, 3, 0, 5)), r"w's dims \(a,b,c,d\) must be positive"),
    (lambda: torch.ops.ks.matmul(torch.tensor(1.0), W), "at least 1 dim"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 40), [2, 3, 4, 0]), "pattern entries must be positive"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 40), [-2, 3, 4, 5]), r"a may be -1"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 42), [-1, 3, 4, 5]),
     r"takes a from x's 42 features, which are not a positive multiple of c\*d=20"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 40), [2, 3, 4]), "pattern must have 4 entries"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 40), [2**40, 2**40, 2**40, 1]),
     r"is too large: a\*b\*c\*d .* overflows a 64-bit integer"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(4, 30), torch.randn(3, 40), [2, 3, 4, 5]), "same batch dims"),
    (lambda: torch.ops.ks.weight_grad(torch.randn(3, 31), torch.randn(3, 40), [2, 3, 4, 5]), r"grad_y last dim is 31 .* needs a\*b\*d=30"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS)
def test_bad_input_message(call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_input_message_under_fake_tensors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.randn(3, 41), torch.randn(2, 3, 4, 5)
        with pytest.raises(RuntimeError, match=r"last dim is 41 but pattern \(2, 3, 4, 5\) needs a\*c\*d=40"):
            torch.ops.ks.matmul(x, w)
        y = torch.ops.ks.matmul(torch.randn(7, 3, 40), w)
        assert y.shape == (7, 3, 30) and y.is_contiguous()
        # a zero-size w: the fake kernel rejects it as the real one does (it used to return (3, 0))
        with pytest.raises(RuntimeError, match=r"w's dims \(a,b,c,d\) must be positive"):
            torch.ops.ks.matmul(torch.randn(3, 0), torch.randn(2, 3, 0, 5))
        with pytest.raises(RuntimeError, match="overflows a 64-bit integer"):
            torch.ops.ks.weight_grad(torch.randn(3, 30), torch.randn(3, 40), [2**40, 2**40, 2**40, 1])
