"""ks::chain (a KSLinear in one op) on the CPU: values against the float64 dense reference for
chains of 1-3 factors with odd sizes, every activation, with and without bias; opcheck; gradcheck
in float64 for x, every factor and the bias; torch.compile (fullgraph, dynamic batch) and export;
errors that name what is wrong; KSLinear runs through it."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import ks_ops
from ks_ops import KSLinear, KSPattern, ks_chain_reference
from ks_ops.ops import ACTIVATIONS

from support import TIGHT_RTOL, rel_err

# Each chain's features line up: a*b*d of one factor = a*c*d of the next.
CHAINS = [
    [(3, 5, 7, 2)],
    [(3, 5, 7, 2), (1, 4, 15, 2)],
    [(6, 8, 8, 1), (1, 16, 12, 4)],
    [(2, 3, 5, 1), (3, 2, 2, 1), (1, 7, 6, 1)],
]


def make_chain(chain, batch, dtype=torch.float64, bias=True, lead=None, device="cpu"):
    ps = [KSPattern.of(p) for p in chain]
    factors = [p.random_weights(dtype=dtype, device=device) for p in ps]
    x = torch.randn(*(lead or (batch,)), ps[0].in_features, dtype=dtype, device=device)
    b = torch.randn(ps[-1].out_features, dtype=dtype, device=device) if bias else None
    return x, factors, b


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chain", CHAINS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_reference(chain, bias, activation, dtype):
    x, factors, b = make_chain(chain, 13, dtype, bias)
    y = ks_ops.chain(x, factors, b, activation)
    ref = ks_chain_reference(x, factors, b, activation)
    assert y.shape == ref.shape and y.dtype == dtype
    assert rel_err(y, ref) <= 10 * TIGHT_RTOL[dtype]


@pytest.mark.parametrize("lead", [(0,), (1,), (2, 3, 5)])
def test_leading_dims_and_empty_batch(lead):
    x, factors, b = make_chain(CHAINS[2], None, lead=lead)
    y = ks_ops.chain(x, factors, b, "gelu")
    assert y.shape == (*lead, 64)
    if y.numel():
        assert rel_err(y, ks_chain_reference(x, factors, b, "gelu")) <= 1e-12


def test_bfloat16_within_the_dtype_error():
    """bf16 against what PyTorch's own dense layer makes of the same chain in bf16 (the error of
    the dtype, FlashAttention's rule), times a small factor."""
    x, factors, b = make_chain(CHAINS[2], 64, torch.bfloat16)
    ref = ks_chain_reference(x, factors, b, "silu")
    dense = None
    for w in factors:
        k = KSPattern.of_weights(w).to_dense(w)
        dense = k if dense is None else k @ dense
    same_dtype = rel_err(torch.nn.functional.silu(torch.nn.functional.linear(x, dense, b)), ref)
    assert rel_err(ks_ops.chain(x, factors, b, "silu"), ref) <= 3 * same_dtype + 1e-6


@pytest.mark.parametrize("activation", ["none", "gelu_tanh"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(activation, bias, requires_grad):
    x, factors, b = make_chain(CHAINS[1], 7, torch.float64, bias)
    for t in [x, *factors] + ([b] if bias else []):
        t.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.ks.chain.default, (x, factors, b, activation))


def test_opcheck_defaults():
    x, factors, _ = make_chain(CHAINS[3], 5)
    torch.library.opcheck(torch.ops.ks.chain.default, (x, factors))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("chain", CHAINS[1:], ids=str)
def test_gradcheck(chain, activation):
    x, factors, b = make_chain(chain, 4, torch.float64)
    inputs = [t.requires_grad_() for t in (x, *factors, b)]
    n = len(factors)
    assert torch.autograd.gradcheck(lambda x, *r: ks_ops.chain(x, r[:n], r[n], activation), inputs)


def test_gradcheck_partial_and_defaults():
    """Gradients for only some inputs; the op called with its defaults (the dispatcher then drops
    bias and activation from the arguments the backward sees)."""
    x, (w1, w2), _ = make_chain(CHAINS[1], 4)
    w2.requires_grad_()
    assert torch.autograd.gradcheck(lambda w2: torch.ops.ks.chain(x, [w1, w2]), (w2,))
    x.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: torch.ops.ks.chain(x, [w1, w2]), (x,))


def test_compile_one_frame_for_all_batch_sizes():
    counter = CompileCounter()
    _, factors, b = make_chain(CHAINS[1], 1, torch.float32)

    @torch.compile(backend=counter, fullgraph=True, dynamic=True)
    def f(x):
        return ks_ops.chain(x, factors, b, "gelu") * 2

    for batch in (9, 31, 257):
        x = torch.randn(batch, 42)
        torch.testing.assert_close(f(x), ks_ops.chain(x, factors, b, "gelu") * 2)
    assert counter.frame_count == 1


def test_kslinear_exports_as_one_chain_op():
    """(Compiled training of KSLinear through ks::chain: tests/test_compile.py.)"""
    layer = KSLinear([(6, 8, 8, 1), (1, 16, 12, 4)], activation="silu", dtype=torch.float64)
    x = torch.randn(5, 48, dtype=torch.float64)
    ep = torch.export.export(layer, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert any(n.target is torch.ops.ks.chain.default for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(torch.randn(7, 48, dtype=torch.float64)).shape, torch.Size([7, 64]))


@pytest.mark.parametrize("backend", ["auto", "bmm", "dense"])
@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_kslinear_backends_agree_with_reference(backend, activation):
    layer = KSLinear([(3, 5, 7, 2), (1, 4, 15, 2)], backend=backend, activation=activation, dtype=torch.float64)
    x = torch.randn(6, 42, dtype=torch.float64)
    ref = ks_chain_reference(x, list(layer.factors), layer.bias, activation)
    assert rel_err(layer(x), ref) <= 1e-12
    assert ("activation=gelu" in repr(layer)) == (activation == "gelu")


def test_kslinear_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation must be one of"):
        KSLinear([(3, 5, 7, 2)], activation="tanh")


def test_errors_name_what_is_wrong():
    x, (w1, w2), b = make_chain(CHAINS[1], 4)
    cases = [
        (lambda: torch.ops.ks.chain(x, []), "factors is empty"),
        (lambda: torch.ops.ks.chain(x, [w2, w1]), r"takes 42"),
        (lambda: torch.ops.ks.chain(x, [w1, w1]), r"factors\[0\] .* gives 30 features but factors\[1\]"),
        (lambda: torch.ops.ks.chain(x, [w1, w2], b[:-1]), r"bias must have shape \(8,\)"),
        (lambda: torch.ops.ks.chain(x, [w1, w2], b, "tanh"), "activation must be one of"),
        (lambda: torch.ops.ks.chain(x, [w1, w2.float()]), r"x and factors\[1\] must have the same dtype"),
        (lambda: torch.ops.ks.chain(x, [w1, w2], b.float()), "x and bias must have the same dtype"),
        (lambda: torch.ops.ks.chain(x[:, :-1], [w1, w2]), "last dim is 41"),
    ]
    for call, match in cases:
        with pytest.raises(RuntimeError, match=match):
            call()
