import pytest
import torch

from ks_ops import KSLinear, KSPattern, backends

from support import make_inputs, assert_matches_reference

VIT_UP = [(6, 64, 64, 1), (1, 768, 192, 2)]


def dense_forward(layer: KSLinear, x: torch.Tensor) -> torch.Tensor:
    y = x.to(torch.float64) @ layer.to_dense().to(torch.float64).T
    return y if layer.bias is None else y + layer.bias.to(torch.float64)


def test_forward_matches_dense_chain():
    layer = KSLinear([(2, 3, 5, 7), (7, 2, 6, 1)], dtype=torch.float64)
    assert (layer.in_features, layer.out_features) == (70, 14)
    x = torch.randn(4, 5, 70, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense_forward(layer, x))


def test_forward_sees_replaced_parameters():
    """forward reads the factors and the bias from the module's parameter dicts (host time): a
    factor or bias replaced by a new Parameter, or the bias removed, is what the next call uses."""
    layer = KSLinear([(2, 3, 5, 7), (7, 2, 6, 1)], dtype=torch.float64)
    x = torch.randn(3, 70, dtype=torch.float64)
    layer.factors[1] = torch.nn.Parameter(torch.randn_like(layer.factors[1]))
    layer.bias = torch.nn.Parameter(torch.randn_like(layer.bias))
    torch.testing.assert_close(layer(x), dense_forward(layer, x))
    layer.bias = None
    torch.testing.assert_close(layer(x), dense_forward(layer, x))


def test_single_factor_matches_reference_and_no_bias():
    layer = KSLinear([(3, 4, 5, 2)], bias=False, dtype=torch.float64)
    x = torch.randn(9, 30, dtype=torch.float64)
    assert_matches_reference(layer(x), x, layer.factors[0])


def test_weights_and_init():
    layer = KSLinear(VIT_UP)
    assert [tuple(w.shape) for w in layer.factors] == VIT_UP
    assert layer.patterns == [KSPattern(*p) for p in VIT_UP]
    assert layer.factors[0].abs().max() <= 1 / 64 and layer.factors[1].abs().max() <= 1 / 192
    assert layer.bias.shape == (1536,) and layer.bias.abs().max() <= 384 ** -0.5
    assert layer.nnz == 6 * 64 * 64 + 768 * 192 * 2


def test_extra_repr():
    text = repr(KSLinear(VIT_UP, bias=False))
    assert "in_features=384, out_features=1536, chain=[(6,64,64,1), (1,768,192,2)], bias=False" in text


def test_state_dict_round_trip():
    src = KSLinear(VIT_UP)
    dst = KSLinear(VIT_UP)
    dst.load_state_dict(src.state_dict())
    x = torch.randn(3, 384)
    torch.testing.assert_close(dst(x), src(x))
    assert set(src.state_dict()) == {"factors.0", "factors.1", "bias"}


def test_to_dtype():
    layer = KSLinear(VIT_UP).to(torch.float64)
    assert all(w.dtype == torch.float64 for w in layer.parameters())
    x = torch.randn(2, 384, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense_forward(layer, x))
    half = KSLinear(VIT_UP).to(torch.bfloat16)
    assert half(torch.randn(2, 384, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_meta_init_then_to_empty_and_reset_parameters():
    """The usual deferred-init loop: build on meta, to_empty, reset_parameters -> the paper's init
    (U[-1/c, 1/c] per factor) and nn.Linear's bias init, finite everywhere."""
    torch.manual_seed(0)
    chain = [(6, 64, 64, 1), (1, 768, 192, 2)]
    m = KSLinear(chain, device="meta")
    assert all(p.is_meta for p in m.parameters())
    m.to_empty(device="cpu")
    m.reset_parameters()
    for p, w in zip(m.patterns, m.factors):
        assert torch.isfinite(w).all() and w.abs().max() <= 1.0 / p.c and w.std() > 0.4 / p.c
    bound = 1.0 / m.in_features ** 0.5
    assert torch.isfinite(m.bias).all() and m.bias.abs().max() <= bound and m.bias.std() > 0.4 * bound
    x = torch.randn(5, m.in_features)
    torch.testing.assert_close(m(x), x @ m.to_dense().T + m.bias)


def test_zero_dim_input_error():
    m = KSLinear([(2, 3, 4, 1)])
    with pytest.raises(ValueError, match="at least 1 dim"):
        m(torch.tensor(1.0))


def test_input_size_error():
    with pytest.raises(ValueError, match=r"input last dim is 100 but the chain .* takes in_features=384"):
        KSLinear(VIT_UP)(torch.randn(2, 100))


def test_chain_and_backend_errors():
    with pytest.raises(ValueError, match="outputs 96 features but factor 1"):
        KSLinear([(2, 48, 192, 1), (6, 64, 64, 1)])
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        KSLinear(VIT_UP, backend="fast")


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("name", sorted(backends.BACKENDS) + ["auto"])
def test_backends_agree_with_reference(name, batch_last):
    x, w = make_inputs((3, 4, 5, 2), 7, batch_last=batch_last, dtype=torch.float64)
    y = backends.get_backend(name, x.device, x.dtype)(x, w, batch_last=batch_last)
    assert_matches_reference(y, x, w, batch_last=batch_last)


@pytest.mark.parametrize("name", sorted(backends.BACKENDS))
def test_backends_differentiable(name):
    x, w = make_inputs((3, 4, 5, 2), None, lead=(2, 3), dtype=torch.float64)
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: backends.BACKENDS[name](x, w), (x, w))


def test_training_reduces_loss():
    torch.manual_seed(1)
    teacher = KSLinear([(4, 8, 8, 1), (1, 16, 16, 2)])
    student = KSLinear([(4, 8, 8, 1), (1, 16, 16, 2)])
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    x = torch.randn(256, 32)
    target = teacher(x).detach()
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(student(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.05 * losses[0], (losses[0], losses[-1])


def test_no_dense_weight_says_what_to_use():
    """KSLinear has no dense weight (issue drop-in): reading or assigning one raises an
    AttributeError that names factors / to_dense (nn.init on m.weight and weight tying would act
    on a matrix the layer never uses); hasattr is False so libraries that probe for it skip it."""
    layer = KSLinear([(3, 5, 7, 2), (1, 4, 15, 2)])
    assert not hasattr(layer, "weight")
    with pytest.raises(AttributeError, match="factors.*to_dense"):
        torch.nn.init.xavier_uniform_(layer.weight)
    with pytest.raises(AttributeError, match="no dense `weight`"):
        layer.weight = torch.nn.Parameter(torch.randn(8, 42))
    assert sorted(n for n, _ in layer.named_parameters()) == ["bias", "factors.0", "factors.1"]
