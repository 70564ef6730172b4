"""torch.compile and torch.export through ks::matmul: one graph for every batch size, real
backends (aot_eager, inductor), and an exported KSLinear model."""
import pytest
import torch
from torch._dynamo.testing import CompileCounter

import ks_ops
from ks_ops import KSLinear

from support import assert_matches_reference, make_inputs


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("batch_last", [False, True])
def test_one_frame_for_all_batch_sizes(batch_last):
    counter = CompileCounter()

    @torch.compile(backend=counter, fullgraph=True, dynamic=True)
    def f(x, w):
        return torch.relu(ks_ops.matmul(x, w, batch_last=batch_last)) * 2

    w = make_inputs((3, 4, 5, 2), 1)[1]
    # Batch sizes avoid the pattern's own dims (duck sizing would tie them together); 0 and 1 are
    # specialized by dynamo itself, so they may add one frame each and no more.
    for batch in (9, 31, 64, 257, 1000):
        x = make_inputs((3, 4, 5, 2), batch, batch_last=batch_last)[0]
        torch.testing.assert_close(f(x, w), torch.relu(ks_ops.matmul(x, w, batch_last=batch_last)) * 2)
    assert counter.frame_count == 1
    for batch in (0, 1):
        x = make_inputs((3, 4, 5, 2), batch, batch_last=batch_last)[0]
        torch.testing.assert_close(f(x, w), torch.relu(ks_ops.matmul(x, w, batch_last=batch_last)) * 2)
    assert counter.frame_count <= 3


def test_leading_dims_dynamic():
    counter = CompileCounter()
    f = torch.compile(ks_ops.matmul, backend=counter, fullgraph=True, dynamic=True)
    w = make_inputs((2, 3, 5, 7), 1)[1]
    for lead in ((4, 9), (11, 9), (13, 17)):
        x = make_inputs((2, 3, 5, 7), None, lead=lead)[0]
        assert_matches_reference(f(x, w), x, w)
    assert counter.frame_count == 1


@pytest.mark.parametrize("backend, activation", [("aot_eager", "none"), ("inductor", "silu")])
def test_training_step_compiled(backend, activation):
    """Gradients of a compiled KSLinear (one ks::chain call, bias and activation inside) match eager."""
    layer = KSLinear([(6, 8, 8, 1), (1, 16, 12, 4)], activation=activation, dtype=torch.float64)
    compiled = torch.compile(layer, backend=backend, fullgraph=True, dynamic=True)
    for batch in (3, 10):
        x = torch.randn(batch, 48, dtype=torch.float64)
        grads = torch.autograd.grad(compiled(x).square().sum(), list(layer.parameters()))
        ref = torch.autograd.grad(layer(x).square().sum(), list(layer.parameters()))
        for g, r in zip(grads, ref):
            torch.testing.assert_close(g, r)


def test_inductor():
    layer = KSLinear([(2, 8, 12, 1), (1, 12, 8, 2)])
    compiled = torch.compile(layer, backend="inductor", fullgraph=True)
    x = torch.randn(33, 24)
    torch.testing.assert_close(compiled(x), layer(x))


def test_export_with_dynamic_batch():
    model = torch.nn.Sequential(KSLinear([(6, 64, 64, 1), (1, 768, 192, 2)]), torch.nn.GELU(),
                                KSLinear([(6, 64, 256, 1), (1, 128, 128, 3)]))
    batch = torch.export.Dim("batch", min=2, max=4096)
    program = torch.export.export(model, (torch.randn(8, 384),), dynamic_shapes=({0: batch},))
    assert any(n.target is torch.ops.ks.chain.default for n in program.graph.nodes)
    for n in (3, 50):
        x = torch.randn(n, 384)
        torch.testing.assert_close(program.module()(x), model(x))
