"""Entry points, fake (meta) kernels and autograd of the ks ops.

The schemas and real kernels live in C++ (csrc/); importing this module loads them."""
from __future__ import annotations

import torch

from . import _native  # noqa: F401  (registers torch.ops.ks.*)


def matmul(x: torch.Tensor, w: torch.Tensor, *, batch_last: bool = False) -> torch.Tensor:
    """KS product with the pattern carried by w (a,b,c,d).

    batch_last=False: x (..., a·c·d) -> (..., a·b·d), y = x·Kᵀ.
    batch_last=True:  x (a·c·d, B) -> (a·b·d, B),    y = K·x.
    """
    return torch.ops.ks.matmul(x, w, batch_last=batch_last)


ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "silu")
# What each name computes, with torch.nn.functional (KSLinear's non-op backends apply these).
_F = torch.nn.functional
ACTIVATION_FUNCTIONS = {"none": lambda t: t, "relu": _F.relu, "gelu": _F.gelu,
                        "gelu_tanh": lambda t: _F.gelu(t, approximate="tanh"), "silu": _F.silu}


def chain(x: torch.Tensor, factors, bias: torch.Tensor | None = None, activation: str = "none") -> torch.Tensor:
    """A KSLinear in one op: batch-first x (..., in) through ``factors`` (each (a,b,c,d); the first
    listed applied first), then ``bias`` (out,), then ``activation`` (one of ACTIVATIONS, as
    torch.nn.functional defines them: gelu is the erf form, gelu_tanh its tanh approximation).
    On CUDA the factors run by the dispatch rule's plans and the bias and activation in one pass."""
    return torch.ops.ks.chain(x, list(factors), bias, activation)


# The plans of ks::matmul, in the order of csrc/ks_plan.h's enum (ks::_plan_for returns an index).
PLANS = ("fused", "bmm", "dense", "strided", "blockdense", "transposed", "interleaved", "stream")
_PRECISIONS = {torch.float64: 0, torch.float32: 1, torch.float16: 3, torch.bfloat16: 4}


def plan_for(pattern, batch: int, dtype: torch.dtype, *, batch_last: bool = False,
             allow_tf32: bool = False, sm: int = 90) -> str:
    """The plan the dispatch rule (csrc/ks_plan.h) picks for a product: a pure function of the
    pattern, batch, dtype (tf32 when float32 and allow_tf32), layout and compute capability
    (major*10 + minor; 0 means the CPU)."""
    return PLANS[torch.ops.ks._plan_for(list(pattern), int(batch), _precision(dtype, allow_tf32), bool(batch_last),
                                        int(sm))]


def plan_serves(plan: str, pattern, batch: int, dtype: torch.dtype, *, batch_last: bool = False,
                allow_tf32: bool = False, sm: int = 90) -> bool:
    """Whether the named plan (one of PLANS) can run the product at all, as the op decides
    (csrc/ks_plan.h, plan_serves; sm 90 means a build with the sm_90a kernels)."""
    return torch.ops.ks._plan_serves(plan, list(pattern), int(batch), _precision(dtype, allow_tf32),
                                     bool(batch_last), int(sm))


def chain_plan_for(patterns, batch: int, dtype: torch.dtype, *, sm: int = 90) -> str:
    """How ks::chain runs a batch-first chain: 'fused' (one kernel, the intermediate on chip; the
    rule of csrc/ks_plan.h, choose_fused_chain, on an sm_90 build with the sm_90a kernels),
    'stream' (decode sizes: one Stream launch that computes the first factor per block;
    choose_stream_chain) or 'factors' (each factor by plan_for's plan, then the bias and activation
    in one pass where the last factor's plan does not apply them)."""
    pats = [tuple(int(v) for v in p) for p in patterns]
    if len(pats) != 2:
        return "factors"
    args = (list(pats[0]), list(pats[1]), int(batch), _precision(dtype, False), int(sm))
    if torch.ops.ks._chain_fused_for(*args):
        return "fused"
    return "stream" if torch.ops.ks._chain_stream_for(*args) else "factors"


def _precision(dtype: torch.dtype, allow_tf32: bool) -> int:
    if dtype not in _PRECISIONS:
        raise ValueError(f"plan_for: dtype must be float64, float32, float16 or bfloat16, got {dtype}")
    return 2 if dtype == torch.float32 and allow_tf32 else _PRECISIONS[dtype]


def matmul_with_plan(x: torch.Tensor, w: torch.Tensor, plan: str, *, batch_last: bool = False) -> torch.Tensor:
    """ks::matmul run by the named plan (one of PLANS) instead of the rule's choice: for
    benchmarks and tests. No autograd."""
    return torch.ops.ks._matmul_plan(x, w, plan, batch_last=batch_last)


def chain_with_plan(x: torch.Tensor, factors, bias=None, activation: str = "none", *, plan: str) -> torch.Tensor:
    """ks::chain run by 'factors' (each factor by the rule's plan, then the epilogue), 'fused' (the
    fused 2-factor kernel) or 'stream' (the 2-factor Stream launch) -- the last two where they
    serve, else an error: for benchmarks and tests. No autograd."""
    return torch.ops.ks._chain_plan(x, list(factors), bias, activation, plan)


def _check_operand(x, features: int, batch_last: bool, name: str, what: str, pattern) -> None:
    if batch_last:
        torch._check(x.dim() == 2, lambda: f"ks: batch-last {name} must be 2-D ({what}={features}, B) "
                     f"for pattern {pattern}, got shape {tuple(x.shape)}")
        torch._check(x.shape[0] == features, lambda: f"ks: batch-last {name} has {x.shape[0]} rows but "
                     f"pattern {pattern} needs {what}={features}")
    else:
        torch._check(x.dim() >= 1, lambda: f"ks: {name} must have at least 1 dim")
        torch._check(x.shape[-1] == features, lambda: f"ks: {name} last dim is {x.shape[-1]} but "
                     f"pattern {pattern} needs {what}={features}")


def _check_pair(x, w, xn: str, wn: str) -> None:
    for t, n in ((x, xn), (w, wn)):
        torch._check(t.dtype.is_floating_point and t.dtype.itemsize >= 2,
                     lambda: f"ks: {n} must be float32, float64, float16 or bfloat16, got {t.dtype}")
    torch._check(x.dtype == w.dtype, lambda: f"ks: {xn} and {wn} must have the same dtype, got {x.dtype} and {w.dtype}")
    torch._check(x.device == w.device, lambda: f"ks: {xn} and {wn} must be on the same device, got {x.device} and {w.device}")


@torch.library.register_fake("ks::matmul")
def _matmul_fake(x, w, *, batch_last=False):
    torch._check(w.dim() == 4, lambda: f"ks: w must be 4-D (a,b,c,d), got shape {tuple(w.shape)}")
    _check_pair(x, w, "x", "w")
    a, b, c, d = w.shape
    # The same rule as the real kernels (csrc/ks_checks.h check_weights).
    torch._check(a > 0 and b > 0 and c > 0 and d > 0,
                 lambda: f"ks: w's dims (a,b,c,d) must be positive, got pattern (a,b,c,d)=({a},{b},{c},{d})")
    _check_operand(x, a * c * d, batch_last, "x", "a*c*d", tuple(w.shape))
    if batch_last:
        return x.new_empty((a * b * d, x.shape[1]))
    return x.new_empty((*x.shape[:-1], a * b * d))


@torch.library.register_fake("ks::chain")
def _chain_fake(x, factors, bias=None, activation="none"):
    torch._check(activation in ACTIVATIONS, lambda: f"ks::chain: activation must be one of none, relu, gelu, "
                 f"gelu_tanh, silu, got '{activation}'")
    torch._check(len(factors) > 0, lambda: "ks::chain: factors is empty; give at least one (a,b,c,d) weight tensor")
    out = x
    for i, w in enumerate(factors):
        if i > 0:
            q, p = factors[i - 1].shape, w.shape
            torch._check(q[0] * q[1] * q[3] == p[0] * p[2] * p[3], lambda: f"ks::chain: factors[{i - 1}] "
                         f"(pattern {tuple(q)}) gives {q[0] * q[1] * q[3]} features but factors[{i}] "
                         f"(pattern {tuple(p)}) takes {p[0] * p[2] * p[3]}")
        torch._check(w.dtype == x.dtype, lambda: f"ks: x and factors[{i}] must have the same dtype, got x "
                     f"{x.dtype} and factors[{i}] {w.dtype}")
        out = _matmul_fake(out, w)
    if bias is not None:
        torch._check(bias.dtype == x.dtype and bias.device == x.device,
                     lambda: f"ks: x and bias must have the same dtype and device, got {bias.dtype} on {bias.device}")
        torch._check(bias.dim() == 1 and bias.shape[0] == out.shape[-1],
                     lambda: f"ks::chain: bias must have shape ({out.shape[-1]},), got {tuple(bias.shape)}")
    return out


@torch.library.register_fake("ks::_matmul_plan")
def _matmul_plan_fake(x, w, plan, *, batch_last=False):
    return _matmul_fake(x, w, batch_last=batch_last)


@torch.library.register_fake("ks::_chain_plan")
def _chain_plan_fake(x, factors, bias, activation, plan):
    return _chain_fake(x, factors, bias, activation)


@torch.library.register_fake("ks::_weight_grad_plan")
def _weight_grad_plan_fake(grad_y, x, pattern, plan, *, batch_last=False):
    return _weight_grad_fake(grad_y, x, pattern, batch_last=batch_last)


@torch.library.register_fake("ks::weight_grad")
def _weight_grad_fake(grad_y, x, pattern, *, batch_last=False):
    torch._check(len(pattern) == 4, lambda: f"ks: pattern must have 4 entries, got {pattern}")
    a, b, c, d = pattern
    if a == -1:  # a from x's features (csrc/ks_checks.h check_weight_grad)
        features = x.shape[0] if batch_last else x.shape[-1]
        torch._check(features > 0 and features % (c * d) == 0, lambda: f"ks: pattern {tuple(pattern)} takes a "
                     f"from x's {features} features, which are not a positive multiple of c*d={c * d}")
        a = features // (c * d)
        pattern = (a, b, c, d)
    # The same rule as the real kernels (csrc/ks_checks.h checked_product).
    torch._check(a * b * c * d <= 2**63 - 1, lambda: f"ks: pattern (a,b,c,d)=({a},{b},{c},{d}) is too large: "
                 f"a*b*c*d (the size of the weight gradient) overflows a 64-bit integer")
    _check_pair(grad_y, x, "grad_y", "x")
    _check_operand(x, a * c * d, batch_last, "x", "a*c*d", tuple(pattern))
    _check_operand(grad_y, a * b * d, batch_last, "grad_y", "a*b*d", tuple(pattern))
    torch._check(batch_last and x.shape[1] == grad_y.shape[1] or not batch_last and x.shape[:-1] == grad_y.shape[:-1],
                 lambda: f"ks: x {tuple(x.shape)} and grad_y {tuple(grad_y.shape)} must have the same batch dims")
    return x.new_empty((a, b, c, d))


# Autograd lives in C++ (csrc/ks_autograd.cpp): the ops' Autograd kernels, which also refuse
# torch.func's differentiation transforms with an error naming what works (before, func.jvp
# returned zeros and func.grad failed with a message that named nothing of ours).


# vmap (torch.func.vmap): for a batch-first product with shared weights, a vmapped dim of x is one
# more leading dim, so the whole vmap is one call; anything else (batched weights, batch-last x)
# runs one call per sample. Without these rules vmap fell back to PyTorch's slow generic loop.
def _select(t, dim, i):
    return t if dim is None else t.select(dim, i)


@torch.library.register_vmap("ks::matmul")
def _matmul_vmap(info, in_dims, x, w, *, batch_last=False):
    x_dim, w_dim = in_dims
    if w_dim is None and not batch_last:
        return torch.ops.ks.matmul(x.movedim(x_dim, 0), w), 0
    out = [torch.ops.ks.matmul(_select(x, x_dim, i), _select(w, w_dim, i), batch_last=batch_last)
           for i in range(info.batch_size)]
    return torch.stack(out), 0


@torch.library.register_vmap("ks::chain")
def _chain_vmap(info, in_dims, x, factors, bias=None, activation="none"):
    x_dim, f_dims, b_dim = in_dims[0], in_dims[1], in_dims[2] if len(in_dims) > 2 else None
    f_dims = list(f_dims) if isinstance(f_dims, (list, tuple)) else [f_dims] * len(factors)
    if all(d is None for d in f_dims) and b_dim is None:
        return torch.ops.ks.chain(x.movedim(x_dim, 0), factors, bias, activation), 0
    out = [torch.ops.ks.chain(_select(x, x_dim, i), [_select(f, d, i) for f, d in zip(factors, f_dims)],
                              None if bias is None else _select(bias, b_dim, i), activation)
           for i in range(info.batch_size)]
    return torch.stack(out), 0
