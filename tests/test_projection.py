"""KSLinear.from_dense / ks_ops.projection (issue from-dense): a weight that is exactly a chain
product is recovered to float64 round-off for chains of 2 and 3 factors with a > 1 and d > 1
factors; for two factors the projection is never worse than long gradient-descent fits from random
starts (computed here, independently of the method); shapes that do not fit and overlapping
supports are refused."""
import pytest
import torch

from ks_ops import KSLinear, KSPattern
from ks_ops.projection import project_pair

CHAINS = [
    [(6, 8, 8, 1), (1, 16, 12, 4)],
    [(3, 5, 7, 2), (1, 4, 15, 2)],
    [(2, 6, 4, 2), (1, 5, 8, 3)],
    [(2, 3, 5, 1), (3, 2, 2, 1), (1, 7, 6, 1)],
    [(4, 4, 4, 1), (2, 4, 4, 2), (1, 4, 4, 4)],
]


def chain_dense(patterns, weights):
    dense = None
    for p, w in zip(patterns, weights):
        k = KSPattern.of(p).to_dense(w)
        dense = k if dense is None else k @ dense
    return dense


@pytest.mark.parametrize("chain", CHAINS, ids=str)
def test_exact_chain_products_are_recovered(chain):
    weights = [KSPattern.of(p).random_weights(dtype=torch.float64) for p in chain]
    target = chain_dense(chain, weights)
    bias = torch.randn(target.shape[0], dtype=torch.float64)
    layer = KSLinear.from_dense(target, chain, bias)
    got = layer.to_dense()
    assert ((got - target).norm() / target.norm()).item() <= 1e-10
    assert torch.equal(layer.bias, bias)
    x = torch.randn(3, target.shape[1], dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ target.T + bias)


def test_two_factors_never_worse_than_gradient_descent():
    torch.manual_seed(3)
    chain = [(2, 2, 3, 1), (1, 3, 2, 2)]  # 6 -> 4 -> 6
    target = torch.randn(6, 6, dtype=torch.float64)
    proj = (chain_dense(chain, [f for f in KSLinear.from_dense(target, chain).factors]) - target).norm().item()
    best = float("inf")
    for start in range(4):
        g = torch.Generator().manual_seed(start)
        ws = [torch.randn(p, dtype=torch.float64, generator=g).requires_grad_() for p in chain]
        opt = torch.optim.Adam(ws, lr=0.02)
        for _ in range(3000):
            opt.zero_grad()
            loss = (chain_dense(chain, ws) - target).square().sum()
            loss.backward()
            opt.step()
        best = min(best, (chain_dense(chain, ws) - target).norm().item())
    assert proj <= best * (1 + 1e-6) + 1e-12, (proj, best)


def test_keeps_dtype_and_refuses_what_does_not_fit():
    chain = [(3, 5, 7, 2), (1, 4, 15, 2)]
    w32 = torch.randn(8, 42)
    layer = KSLinear.from_dense(w32, chain)
    assert all(f.dtype == torch.float32 for f in layer.factors) and layer.bias is None
    with pytest.raises(ValueError, match=r"needs \(8, 42\)"):
        KSLinear.from_dense(torch.randn(8, 41), chain)
    with pytest.raises(ValueError, match="method must be"):
        KSLinear.from_dense(w32, chain, method="adam")
    overlap_left = torch.tensor([[1, 0], [1, 1]], dtype=torch.bool)
    overlap_right = torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)
    with pytest.raises(ValueError, match="overlap"):
        project_pair(torch.randn(2, 2), overlap_left, overlap_right)


def test_refinement_lowers_the_output_error_on_calibration_data():
    """Data-aware refinement: on inputs that live in a low-dimensional subspace the projection
    (which fits the whole weight) is not the best layer for that data; refinement steps lower the
    output error there, and never end above where they started."""
    torch.manual_seed(5)
    chain = [(3, 5, 7, 2), (1, 4, 15, 2)]
    weight = torch.randn(8, 42, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    basis = torch.randn(5, 42, dtype=torch.float64)
    calibration = torch.randn(512, 5, dtype=torch.float64) @ basis
    from ks_ops.projection import refine

    layer = KSLinear.from_dense(weight, chain, bias)
    history = refine(layer, weight, bias, calibration, steps=300, lr=3e-3, progress=False)
    assert len(history) == 301 and history[-1] < 0.5 * history[0], (history[0], history[-1])
    refined = KSLinear.from_dense(weight, chain, bias, calibration=calibration, steps=300, lr=3e-3, progress=False)
    with torch.no_grad():
        err = ((refined(calibration) - (calibration @ weight.T + bias)).norm() /
               (calibration @ weight.T + bias).norm()).item()
    assert err < 0.5 * history[0]
    with pytest.raises(ValueError, match="inputs have 41 features"):
        refine(layer, weight, bias, calibration[:, :41], steps=1)


@pytest.mark.parametrize("chain", [CHAINS[1], CHAINS[3], CHAINS[4]], ids=str)
def test_certified_lower_bound(chain):
    """lower_bound: no chain of the patterns does better (checked against the projection and a
    long Adam fit); for two factors it is the projection's own error (the optimum)."""
    from ks_ops.projection import lower_bound

    torch.manual_seed(7)
    p0, pn = KSPattern.of(chain[0]), KSPattern.of(chain[-1])
    target = torch.randn(pn.out_features, p0.in_features, dtype=torch.float64)
    bound = lower_bound(target, chain)
    proj = ((KSLinear.from_dense(target, chain).to_dense() - target).norm() / target.norm()).item()
    assert 0 < bound <= proj + 1e-12
    if len(chain) == 2:
        assert proj == pytest.approx(bound, rel=1e-9)
    ws = [torch.randn(p, dtype=torch.float64).mul_(0.3).requires_grad_() for p in chain]
    opt = torch.optim.Adam(ws, lr=0.01)
    for _ in range(1500):
        opt.zero_grad()
        (chain_dense(chain, ws) - target).square().sum().backward()
        opt.step()
    fit = ((chain_dense(chain, ws) - target).norm() / target.norm()).item()
    assert bound <= fit + 1e-9
