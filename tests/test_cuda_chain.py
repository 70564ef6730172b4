"""ks::chain on CUDA: every dtype (strict fp32, tf32, fp16, bf16, float64), every activation,
with and without bias, output rows of whole 16-byte vectors and ragged ones, against the float64
reference; the one-pass epilogue kernel runs (not ATen's add + activation); opcheck; autograd
against the reference's; torch.compile and CUDA-graph capture.

Tolerances: strict fp32 and float64 fixed relative bounds; tf32/fp16/bf16 against the error
PyTorch's own dense layer (linear + activation) makes in the same arithmetic, times a small factor."""
import pytest
import torch

import ks_ops
from ks_ops import KSPattern, ks_chain_reference
from ks_ops.ops import ACTIVATIONS
from ks_ops.reference import REFERENCE_ACTIVATIONS

from support import cuda_kernel_ran, rel_err, tf32

pytestmark = pytest.mark.cuda
DEV = "cuda"
DTYPES = {"fp64": (torch.float64, False), "fp32": (torch.float32, False), "tf32": (torch.float32, True),
          "fp16": (torch.float16, False), "bf16": (torch.bfloat16, False)}
# Output features 8 and 40 (whole 16-byte rows in every dtype), 7 and 30 (ragged: single elements).
CHAINS = [[(3, 5, 7, 2), (1, 4, 15, 2)], [(6, 8, 8, 1), (1, 10, 12, 4)], [(1, 7, 5, 1)],
          [(2, 48, 192, 1), (1, 15, 48, 2)], [(2, 3, 5, 1), (3, 2, 2, 1), (1, 7, 6, 1)]]
_F = torch.nn.functional



def make(chain, batch, dtype, bias=True):
    ps = [KSPattern.of(p) for p in chain]
    factors = [p.random_weights(dtype=dtype, device=DEV) for p in ps]
    x = torch.randn(batch, ps[0].in_features, dtype=dtype, device=DEV)
    b = torch.randn(ps[-1].out_features, dtype=dtype, device=DEV) if bias else None
    return x, factors, b


def tolerance(x, factors, b, activation, name):
    if name == "fp64":
        return 1e-11
    if name == "fp32":
        return 1e-5
    dense = None
    for w in factors:
        k = KSPattern.of_weights(w).to_dense(w)
        dense = k if dense is None else k @ dense
    with tf32(name == "tf32"):
        same = REFERENCE_ACTIVATIONS[activation](_F.linear(x, dense, b))
    return 3 * rel_err(same, ks_chain_reference(x, factors, b, activation)) + 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("chain", CHAINS, ids=str)
def test_matches_reference(chain, name, bias, activation):
    dtype, use_tf32 = DTYPES[name]
    x, factors, b = make(chain, 301, dtype, bias)
    with tf32(use_tf32):
        y = ks_ops.chain(x, factors, b, activation)
    ref = ks_chain_reference(x, factors, b, activation)
    assert y.shape == ref.shape and y.dtype == dtype and torch.isfinite(y).all()
    err, tol = rel_err(y, ref), tolerance(x, factors, b, activation, name)
    assert err <= tol, f"{name} {activation} bias={bias}: rel err {err:.3g} > {tol:.3g}"


def test_epilogue_is_one_kernel():
    x, factors, b = make(CHAINS[1], 64, torch.bfloat16)
    assert cuda_kernel_ran(lambda: ks_ops.chain(x, factors, b, "gelu"), ("ks_bias_activation",))
    assert not cuda_kernel_ran(lambda: ks_ops.chain(x, factors, None, "none"), ("ks_bias_activation",))


def test_misaligned_bias_and_empty_batch():
    x, factors, _ = make(CHAINS[1], 33, torch.bfloat16)
    b = torch.randn(41, dtype=torch.bfloat16, device=DEV)[1:]  # 2 bytes past an aligned start
    ref = ks_chain_reference(x, factors, b, "silu")
    assert rel_err(ks_ops.chain(x, factors, b, "silu"), ref) <= tolerance(x, factors, b, "silu", "bf16")
    assert ks_ops.chain(x[:0], factors, b, "silu").shape == (0, 40)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_opcheck(activation):
    x, factors, b = make(CHAINS[0], 17, torch.float32)
    for t in (x, *factors, b):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.ks.chain.default, (x, factors, b, activation))


def test_gradients_match_reference():
    x, factors, b = make(CHAINS[3], 57, torch.float64)
    inputs = [t.requires_grad_() for t in (x, *factors, b)]
    gy = torch.randn(57, 30, dtype=torch.float64, device=DEV)
    got = torch.autograd.grad(ks_ops.chain(x, factors, b, "gelu_tanh"), inputs, gy)
    want = torch.autograd.grad(ks_chain_reference(x, factors, b, "gelu_tanh"), inputs, gy)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-10


def test_compile_and_graph_capture():
    x, factors, b = make(CHAINS[1], 256, torch.bfloat16)
    f = torch.compile(lambda x: ks_ops.chain(x, factors, b, "gelu"), fullgraph=True)
    eager = ks_ops.chain(x, factors, b, "gelu")
    torch.testing.assert_close(f(x), eager)
    static_x = x.clone()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ks_ops.chain(static_x, factors, b, "gelu")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ks_ops.chain(static_x, factors, b, "gelu")
    static_x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, ks_ops.chain(static_x, factors, b, "gelu"))
