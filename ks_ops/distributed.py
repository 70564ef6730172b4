"""KS layers across processes: DTensor sharding rules for the ks ops and a tensor-parallel plan for
KSLinear.

A KS factor (a,b,c,d) is block-diagonal over its ``a`` blocks: block i maps input features
[i·c·d, (i+1)·c·d) to output features [i·b·d, (i+1)·b·d) and nothing else. So when the feature
dim of x is split into W contiguous equal chunks of whole blocks (``Shard(-1)`` with a % W == 0)
and w is split along ``a`` (``Shard(0)``), every rank computes its own chunk of y with no
communication at all; y comes out ``Shard(-1)`` the same way. Between two factors the feature
dim keeps its length, so ``Shard(-1)`` is the same split for both: the next factor runs without
communication too if its own ``a`` is a multiple of W, and otherwise DTensor redistributes x
(these rules offer it nothing else), which is the only collective such a chain needs.

The rules (registered on import, through ``torch.distributed.tensor.experimental.register_sharding``):

- ``ks::matmul``: replicated; x sharded on a batch dim with w replicated (data parallel); x
  sharded on its feature dim with w ``Shard(0)`` when a is a multiple of the mesh size.
- ``ks::weight_grad`` (the backward's weight gradient): replicated; grad_y and x sharded on the
  same batch dim give a ``Partial`` gradient (summed over ranks when needed); both sharded on the
  feature dim give ``Shard(0)`` -- for the pattern ``(-1, b, c, d)`` the backward passes, which
  takes a from each rank's own x.
- ``ks::chain``: replicated; x sharded on a batch dim with every factor and the bias replicated;
  and, when every factor's a is a multiple of the mesh size, x sharded on its feature dim with
  every factor and the bias ``Shard(0)``: the whole chain without a collective.

DDP and FSDP2 need no rules of their own: DDP sees ordinary parameters, FSDP2 all-gathers them
before the forward and hands the ops plain tensors.
"""
from __future__ import annotations

import torch
from torch import nn

from . import ops as _ops  # noqa: F401  (the ks ops are registered before their rules)
from .ops import ACTIVATION_FUNCTIONS

try:
    from torch.distributed.tensor import DeviceMesh, DTensor, Partial, Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.experimental import register_sharding
except ImportError as e:  # a torch built without distributed support
    raise ImportError(f"ks_ops.distributed needs torch.distributed with DTensor support: {e}") from e

__all__ = ["parallelize_ks_linear", "feature_shardable"]


def _mesh_size(spec) -> int:
    return spec.mesh.size()


def _batch_dims(x, batch_last: bool):
    return [x.ndim - 1] if batch_last else list(range(x.ndim - 1))


def _feature_dim(x, batch_last: bool) -> int:
    return 0 if batch_last else x.ndim - 1


@register_sharding(torch.ops.ks.matmul.default)
def _matmul_sharding(x, w, batch_last=False):
    strategies = [([Replicate()], [Replicate(), Replicate()])]
    for dim in _batch_dims(x, batch_last):
        strategies.append(([Shard(dim)], [Shard(dim), Replicate()]))
    if w.shape[0] % _mesh_size(w) == 0:
        f = _feature_dim(x, batch_last)
        strategies.append(([Shard(f)], [Shard(f), Shard(0)]))
    return strategies


@register_sharding(torch.ops.ks.weight_grad.default)
def _weight_grad_sharding(grad_y, x, pattern, batch_last=False):
    strategies = [([Replicate()], [Replicate(), Replicate(), None])]
    for dim in _batch_dims(x, batch_last):
        strategies.append(([Partial()], [Shard(dim), Shard(dim), None]))
    # Feature-sharded only with a = -1 (a taken from each rank's own x): a given a would not match
    # the local blocks.
    f = _feature_dim(x, batch_last)
    if pattern[0] == -1 and (x.shape[f] // (pattern[2] * pattern[3])) % _mesh_size(x) == 0:
        strategies.append(([Shard(0)], [Shard(f), Shard(f), None]))
    return strategies


@register_sharding(torch.ops.ks.chain.default)
def _chain_sharding(x, factors, bias=None, activation="none"):
    n = len(factors)
    extra = [] if bias is None else [Replicate()]

    def inputs(xp):
        return [xp] + [Replicate()] * n + extra + [None]

    strategies = [([Replicate()], inputs(Replicate()))]
    for dim in range(x.ndim - 1):
        strategies.append(([Shard(dim)], inputs(Shard(dim))))
    # Feature-parallel when every factor's blocks split over the ranks: each rank runs its blocks
    # of the whole chain (the intermediates keep the same split), bias and activation included.
    world = _mesh_size(x)
    if all(f.shape[0] % world == 0 for f in factors):
        f = x.ndim - 1
        strategies.append(([Shard(f)], [Shard(f)] + [Shard(0)] * n + ([Shard(0)] if bias is not None else []) + [None]))
    return strategies


def feature_shardable(pattern, world: int) -> bool:
    """Whether factor `pattern` (a,b,c,d) runs feature-parallel over `world` ranks with no
    communication: its a blocks split evenly."""
    return pattern[0] % world == 0


def parallelize_ks_linear(module: nn.Module, mesh: DeviceMesh, *, input_layout=None, output_layout=None) -> nn.Module:
    """Tensor-parallel KSLinear layers over a 1-D `mesh`, in place: every factor whose ``a`` is a
    multiple of the mesh size is sharded along ``a`` (``Shard(0)``), the others are replicated;
    the bias is placed like the last factor's output. The layer then takes x as a plain tensor
    (the same on every rank, split locally to `input_layout`, default ``Replicate()``) or as a
    DTensor. When every factor splits, the layer is one ``ks::chain`` per rank with no
    communication; otherwise its factors run one by one on DTensors: none across consecutive
    sharded factors, one all-to-all from feature- to batch-sharded x before a replicated factor (so
    its work is split over the ranks too). y comes back as `output_layout` (default
    ``Replicate()``: a plain tensor on every rank; ``Shard(-1)`` keeps it a feature-sharded DTensor
    for a layer that takes it so). `module` is a KSLinear or a model holding them; returns it."""
    from .nn import KSLinear

    if mesh.ndim != 1:
        raise ValueError(f"parallelize_ks_linear: the mesh must be 1-D, got {mesh.ndim} dims")
    output_layout = Replicate() if output_layout is None else output_layout
    input_layout = Replicate() if input_layout is None else input_layout
    layers = [module] if isinstance(module, KSLinear) else [m for m in module.modules() if isinstance(m, KSLinear)]
    if not layers:
        raise ValueError("parallelize_ks_linear: no KSLinear layer in the module")
    world = mesh.size()
    for layer in layers:
        for i, w in enumerate(layer.factors):
            placement = Shard(0) if feature_shardable(w.shape, world) else Replicate()
            layer.factors[i] = nn.Parameter(distribute_tensor(w.detach(), mesh, [placement]),
                                            requires_grad=w.requires_grad)
        if layer.bias is not None:
            last_sharded = feature_shardable(layer.factors[-1].shape, world)
            b = layer.bias
            layer.bias = nn.Parameter(distribute_tensor(b.detach(), mesh, [Shard(0) if last_sharded else Replicate()]),
                                      requires_grad=b.requires_grad)
        layer._tp = (mesh, input_layout, output_layout)
    return module


def _normalized(placement, ndim: int):
    if isinstance(placement, Shard) and placement.dim < 0:
        return Shard(placement.dim + ndim)
    return placement


def tp_forward(layer, x: torch.Tensor) -> torch.Tensor:
    """KSLinear.forward under parallelize_ks_linear (KSLinear.forward calls it)."""
    mesh, input_layout, output_layout = layer._tp
    if not isinstance(x, DTensor):
        x = DTensor.from_local(x, mesh, [Replicate()], run_check=False)
        input_layout = _normalized(input_layout, x.ndim)
        if x.placements[0] != input_layout:
            x = x.redistribute(mesh, [input_layout])
    world = mesh.size()
    factors = list(layer.factors)
    if all(feature_shardable(w.shape, world) for w in factors):
        # Every factor splits: the whole layer is one ks::chain per rank (bias and activation in
        # its epilogue), no collective.
        want = Shard(x.ndim - 1)
        if x.placements[0] != want:
            x = x.redistribute(mesh, [want])
        return _output(torch.ops.ks.chain(x, factors, layer.bias, layer.activation), mesh, output_layout)
    for w in factors:
        # A sharded factor takes x feature-sharded (splitting a replicated x is local, free); a
        # replicated factor takes x batch-sharded (one all-to-all from feature-sharded) so that
        # its work is split too; a 1-d x stays whole.
        if feature_shardable(w.shape, world):
            want = Shard(x.ndim - 1)
        else:
            want = Shard(0) if x.ndim > 1 else Replicate()
        if x.placements[0] != want:
            x = x.redistribute(mesh, [want])
        x = torch.ops.ks.matmul(x, w)
    if layer.bias is not None:
        x = x + layer.bias
    return _output(ACTIVATION_FUNCTIONS[layer.activation](x), mesh, output_layout)


def _output(y, mesh, layout):
    layout = _normalized(layout, y.ndim)
    if y.placements[0] != layout:
        y = y.redistribute(mesh, [layout])
    return y.to_local() if isinstance(layout, Replicate) else y
