"""From a dense matrix to a KS chain: the best approximation the chain's supports allow (issue
from-dense).

Two factors: W ≈ K2·K1 with supports S1 (mid × in) of K1 and S2 (out × mid) of K2. The product is
a sum of rank-one terms K2[:, f]·K1[f, :] on the blocks R(f) × C(f) (R(f): rows where S2[:, f],
C(f): columns where S1[f, :]). The f with the same (R, C) form a group; when the groups' blocks
are pairwise disjoint (true of KS chains: the "chainable" supports of Zheng, Riccietti and
Gribonval), each block W[R, C] is fitted on its own by its truncated SVD of rank = the group's
size, which is optimal in the Frobenius norm (Eckart–Young), block by block and so for the whole
projection. Longer chains: the hierarchical algorithm (Le, Zheng, Riccietti, Gribonval, 2024):
split the chain, project W onto the two halves' product supports, then factor each half the same
way. Everything runs in float64 on W's device, the blocks of one shape in one batched SVD; the factors come back as (a,b,c,d) weight tensors."""
from __future__ import annotations

from typing import Sequence

import torch

from .pattern import KSPattern, check_chain


def project_pair(w: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The best (L, R) with L supported on `left` (out × mid), R on `right` (mid × in) and L·R ≈ w
    in the Frobenius norm, for supports whose rank-one blocks do not overlap (else ValueError)."""
    out_f, mid = left.shape
    if right.shape[0] != mid or w.shape != (out_f, right.shape[1]):
        raise ValueError(f"project_pair: shapes do not chain: w {tuple(w.shape)}, left {tuple(left.shape)}, "
                         f"right {tuple(right.shape)}")
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    lcols, rrows = left.T.contiguous().cpu(), right.cpu()
    for f in range(mid):
        if lcols[f].any() and rrows[f].any():
            groups.setdefault((lcols[f].numpy().tobytes(), rrows[f].numpy().tobytes()), []).append(f)
    cover = torch.zeros(w.shape, dtype=torch.int32)
    L = torch.zeros(out_f, mid, dtype=torch.float64, device=w.device)
    R = torch.zeros(mid, right.shape[1], dtype=torch.float64, device=w.device)
    w64 = w.to(torch.float64)
    # Blocks of one shape (every block of a KS chain has the same) go through one batched SVD.
    by_shape: dict[tuple[int, int, int], list[tuple[torch.Tensor, torch.Tensor, list[int]]]] = {}
    for fs in groups.values():
        rows, cols = lcols[fs[0]].nonzero().flatten(), rrows[fs[0]].nonzero().flatten()
        cover[rows[:, None], cols[None, :]] += 1
        by_shape.setdefault((rows.numel(), cols.numel(), len(fs)), []).append((rows, cols, fs))
    if int(cover.max()) > 1:
        raise ValueError("project_pair: the supports' rank-one blocks overlap, so no block-wise projection "
                         "is exact for them (is this a chain of the paper's form?)")
    for (_, _, size), blocks in by_shape.items():
        rows = torch.stack([b[0] for b in blocks]).to(w.device)  # (G, |R|)
        cols = torch.stack([b[1] for b in blocks]).to(w.device)  # (G, |C|)
        fs = torch.tensor([b[2] for b in blocks], device=w.device)  # (G, size)
        u, s, vh = torch.linalg.svd(w64[rows[:, :, None], cols[:, None, :]], full_matrices=False)
        r = min(size, s.shape[-1])
        root = s[:, :r].sqrt()
        L[rows[:, :, None], fs[:, None, :r]] = u[:, :, :r] * root[:, None, :]
        R[fs[:, :r, None], cols[:, None, :]] = root[:, :, None] * vh[:, :r]
    return L, R


def _product_support(masks: list[torch.Tensor]) -> torch.Tensor:
    out = masks[0].to(torch.float64)
    for s in masks[1:]:
        out = s.to(torch.float64) @ out
    return out > 0


def _first_split(w: torch.Tensor, supports: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The hierarchical algorithm's first step: the best (left, right) pair on the products of
    the two halves' supports, and the split point m (right = factors 1..m)."""
    m = len(supports) // 2
    left, right = project_pair(w, _product_support(supports[m:]), _product_support(supports[:m]))
    return left, right, m


def _project(w: torch.Tensor, supports: list[torch.Tensor]) -> list[torch.Tensor]:
    """Dense factors K_1..K_n (first applied first) on `supports`, hierarchically."""
    if len(supports) == 1:
        return [w.to(torch.float64) * supports[0]]
    left, right, m = _first_split(w, supports)
    return _project(right, supports[:m]) + _project(left, supports[m:])


def lower_bound(weight: torch.Tensor, chain: Sequence[KSPattern | Sequence[int]]) -> float:
    """A certified lower bound on the relative error ‖K_n⋯K_1 − W‖ / ‖W‖ of *any* chain with these
    patterns: every such product is a pair (left product, right product) on the supports of the
    hierarchical algorithm's first split, whose best error project_pair attains exactly. For two
    factors it equals the projection's error (the projection is the optimum); for more, the
    projection's error over this bound certifies how far from optimal it can be."""
    patterns = check_chain(chain)
    supports = [p.support_mask(device=weight.device) for p in patterns]
    w64 = weight.detach().to(torch.float64)
    if len(supports) == 1:
        return ((w64 * ~supports[0]).norm() / w64.norm().clamp_min(1e-300)).item()
    left, right, _ = _first_split(w64, supports)
    return ((left @ right - w64).norm() / w64.norm().clamp_min(1e-300)).item()


def project_chain(weight: torch.Tensor, chain: Sequence[KSPattern | Sequence[int]]) -> list[torch.Tensor]:
    """Weights (a,b,c,d), first factor first, whose chain product approximates `weight` (out, in):
    the exact optimum for two factors, the hierarchical algorithm for more. float64; cast after."""
    patterns = check_chain(chain)
    if weight.dim() != 2:
        raise ValueError(f"project_chain: weight must be 2-D (out, in), got shape {tuple(weight.shape)}")
    need = (patterns[-1].out_features, patterns[0].in_features)
    if tuple(weight.shape) != need:
        raise ValueError(f"project_chain: weight is {tuple(weight.shape)} (out, in) but the chain "
                         f"{[str(p) for p in patterns]} is {need[1]} -> {need[0]}, i.e. needs {need}")
    dense = _project(weight, [p.support_mask(device=weight.device) for p in patterns])
    out = []
    for p, k in zip(patterns, dense):
        rows, cols = p.dense_indices(weight.device)
        out.append(k[rows, cols])
    return out


def refine(layer, weight: torch.Tensor, bias: torch.Tensor | None, inputs: torch.Tensor, *, steps: int = 200,
           lr: float = 1e-3, batch_size: int = 256, progress: bool = True) -> list[float]:
    """Data-aware refinement of a KSLinear started from the projection: Adam steps on the layer's
    factors (and bias) that minimise the mean squared error between its output and the dense
    layer's, x·weightᵀ + bias, over the calibration `inputs` (..., in) -- the output error on data
    like the model's, not the weight error. Returns the relative output error after each step
    (the first entry: before any step). A progress bar when tqdm is installed and progress=True."""
    if steps < 0 or not lr > 0 or batch_size < 1:
        raise ValueError(f"refine: steps >= 0, lr > 0 and batch_size >= 1 needed, got {steps}, {lr}, {batch_size}")
    x = inputs.detach().reshape(-1, inputs.shape[-1]).to(device=weight.device, dtype=weight.dtype)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"refine: inputs have {x.shape[-1]} features but the weight takes {weight.shape[1]}")
    with torch.no_grad():
        target = torch.nn.functional.linear(x, weight.detach(), None if bias is None else bias.detach())
    scale = target.square().mean().clamp_min(1e-30)
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    steps_iter = range(steps)
    if progress:
        try:
            from tqdm import tqdm

            steps_iter = tqdm(steps_iter, desc="refine", leave=False)
        except ImportError:
            pass
    was_training = layer.training
    layer.train()

    def error() -> float:
        with torch.no_grad():
            return ((layer(x) - target).square().mean() / scale).sqrt().item()

    history = [error()]
    g = torch.Generator(device="cpu").manual_seed(0)
    for _ in steps_iter:
        idx = torch.randint(0, x.shape[0], (min(batch_size, x.shape[0]),), generator=g).to(x.device)
        opt.zero_grad(set_to_none=True)
        loss = (layer(x[idx]) - target[idx]).square().mean() / scale
        loss.backward()
        opt.step()
        history.append(error())
    layer.train(was_training)
    return history
