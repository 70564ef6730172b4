"""Model surgery: replace nn.Linear and transformers' GPT-2 Conv1D modules with KSLinear chains.

    report = ks_surgery(model, {"*.mlp.c_fc": "auto", "*.attn.c_proj": [(2, 48, 192, 1), (1, 192, 48, 2)]})
    print(report)

Modules are selected by fnmatch globs over their qualified names (``model.named_modules()``).
Each glob maps to a chain (a list of (a,b,c,d), first applied first) or ``"auto"`` (auto_chain).
New factors get the paper's init (KSLinear's); the dense module's bias is kept.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Mapping, Sequence

import torch
from torch import nn

from . import projection
from .nn import KSLinear
from .pattern import KSPattern, check_chain

AUTO = "auto"
Chain = Sequence["KSPattern | Sequence[int]"]


def _nearest_divisor(n: int, target: int, ok=lambda q: True) -> int | None:
    """The divisor q of n nearest target with n // q >= 2 blocks and ok(q); ties go to the larger q."""
    cands = [q for q in range(1, n // 2 + 1) if n % q == 0 and ok(q)]
    return min(cands, key=lambda q: (abs(q - target), -q), default=None)


def auto_chain(in_features: int, out_features: int) -> list[KSPattern]:
    """A 2-factor chain for an in → out layer, modelled on the paper's ViT-S/16 chains (n = 384):

    - square n → n: (2, n/8, n/2, 1) then (1, n/2, n/8, 2): an n/4-wide bottleneck, 4x fewer
      weights (q/k/v: (2,48,192,1), (1,192,48,2)); needs 8 | n.
    - widening n → m: (n/q, q, q, 1) then (1, m/2, n/2, 2), q the block size nearest 64 that
      divides n (MLP up 384 → 1536: (6,64,64,1), (1,768,192,2)); needs n and m even.
    - narrowing n → m: (m/q, q, n·q/m, 1) then (1, r, r, m/r), q nearest 64 with m/q dividing n,
      r nearest 128 dividing m (MLP down 1536 → 384: (6,64,256,1), (1,128,128,3)).

    Block sizes are the nearest divisors that leave at least 2 blocks (ties: the larger block).
    GPT-2's 768/3072 gives (12,64,64,1), (1,1536,384,2) and (12,64,256,1), (1,128,128,6); 1024/4096
    gives (16,64,64,1), (1,2048,512,2) and (16,64,256,1), (1,128,128,8). Raises ValueError where
    no chain fits or the chain would not have fewer weights than the dense layer.
    """
    n, m = in_features, out_features

    def fail(why: str):
        return ValueError(f"auto chain: no 2-factor KS chain for in={n}, out={m}: {why}; "
                          f"give the chain explicitly as a list of (a,b,c,d)")

    if n == m:
        if n % 8:
            raise fail("the square rule needs in divisible by 8")
        chain = [(2, n // 8, n // 2, 1), (1, n // 2, n // 8, 2)]
    elif m > n:
        q = _nearest_divisor(n, 64)
        if q is None or n % 2 or m % 2:
            raise fail("the widening rule needs in and out even and in with a divisor leaving >= 2 blocks")
        chain = [(n // q, q, q, 1), (1, m // 2, n // 2, 2)]
    else:
        q = _nearest_divisor(m, 64, ok=lambda q: n % (m // q) == 0)
        r = _nearest_divisor(m, 128)
        if q is None or r is None:
            raise fail("the narrowing rule needs out with a divisor q (>= 2 blocks) such that out/q divides in")
        a = m // q
        chain = [(a, q, n // a, 1), (1, r, r, m // r)]
    patterns = check_chain(chain)
    if sum(p.nnz for p in patterns) >= n * m:
        raise fail(f"the chain {[str(p) for p in patterns]} has no fewer weights than the dense layer")
    return patterns


@dataclass(frozen=True)
class Replacement:
    name: str
    glob: str
    in_features: int
    out_features: int
    chain: tuple[KSPattern, ...]
    params_before: int
    params_after: int
    activation: str = "none"  # the model's activation folded into the layer (ks::chain's epilogue)
    approx_error: float | None = None  # init="project": ‖K_n⋯K_1 − W‖ / ‖W‖ of the projection
    error_lower_bound: float | None = None  # no chain of these patterns does better (projection.lower_bound)

    def as_dict(self) -> dict:
        return {"name": self.name, "glob": self.glob, "in": self.in_features, "out": self.out_features,
                "chain": [list(p.shape) for p in self.chain],
                "params_before": self.params_before, "params_after": self.params_after,
                "activation": self.activation, "approx_error": self.approx_error,
                "error_lower_bound": self.error_lower_bound}


@dataclass
class SurgeryReport:
    replacements: list[Replacement] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.replacements)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.replacements)

    def __add__(self, other: "SurgeryReport") -> "SurgeryReport":
        return SurgeryReport(self.replacements + other.replacements)

    def as_dicts(self) -> list[dict]:
        return [r.as_dict() for r in self.replacements]

    def __str__(self) -> str:
        lines = [f"{r.name}: {r.in_features}->{r.out_features} chain "
                 f"[{', '.join(str(p) for p in r.chain)}] params {r.params_before} -> {r.params_after}"
                 + (f", {r.activation} folded in" if r.activation != "none" else "")
                 + (f", projection error {r.approx_error:.3g} (any chain of these patterns >= "
                    f"{r.error_lower_bound:.3g})" if r.approx_error is not None else "")
                 for r in self.replacements]
        lines.append(f"replaced {len(self.replacements)} modules: params {self.params_before} -> "
                     f"{self.params_after} in them")
        return "\n".join(lines)


# MLP modules known to apply their activation module right after a linear layer, and nothing in
# between (their forward is fc -> act -> ...): (package, class name) -> (linear attr, act attr).
_FOLDABLE = {
    ("timm", "Mlp"): ("fc1", "act"),
    ("transformers", "GPT2MLP"): ("c_fc", "act"),
    ("transformers", "ViTMLP"): ("fc1", "activation_fn"),
    ("transformers", "CLIPMLP"): ("fc1", "activation_fn"),
    ("transformers", "SiglipMLP"): ("fc1", "activation_fn"),
    ("transformers", "ViTIntermediate"): ("dense", "intermediate_act_fn"),  # transformers < 5
    ("transformers", "BertIntermediate"): ("dense", "intermediate_act_fn"),
}
# Activation modules of transformers that compute exactly one of ks::chain's activations.
_TRANSFORMERS_ACTS = {"GELUActivation": "gelu", "NewGELUActivation": "gelu_tanh", "FastGELUActivation": "gelu_tanh",
                      "GELUTanh": "gelu_tanh", "PytorchGELUTanh": "gelu_tanh", "SiLUActivation": "silu",
                      "ReLUActivation": "relu"}


def _activation_of(module: nn.Module) -> str | None:
    """ks::chain's name for an activation module, None when it is not one of them."""
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.GELU):
        return "gelu" if module.approximate == "none" else "gelu_tanh"
    if type(module).__module__.startswith("transformers."):
        return _TRANSFORMERS_ACTS.get(type(module).__name__)  # GELUActivation: erf form, either code path
    return None


def _fold_activation(model: nn.Module, name: str, layer: "KSLinear") -> str:
    """Moves the activation that the module holding `name` applies right after it into `layer`
    (replacing the model's activation module with nn.Identity); returns its name, or "none"."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    key = (type(parent).__module__.split(".")[0], type(parent).__name__)
    attrs = _FOLDABLE.get(key)
    if attrs is None or attrs[0] != child:
        return "none"
    act_module = getattr(parent, attrs[1], None)
    act = _activation_of(act_module) if isinstance(act_module, nn.Module) else None
    if act is None:
        return "none"
    layer.activation = act
    setattr(parent, attrs[1], nn.Identity())
    return act


def _conv1d_type():
    # A GPT-2 Conv1D can only exist once transformers is imported; don't import it otherwise.
    if "transformers" not in sys.modules:
        return None
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def _dense_shape(module: nn.Module, conv1d) -> tuple[int, int] | None:
    """(in, out) of a replaceable module, None for any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if conv1d is not None and isinstance(module, conv1d):
        return module.weight.shape[0], module.weight.shape[1]  # Conv1D stores (in, out)
    return None


def ks_surgery(model: nn.Module, rules: Mapping[str, "Chain | str"], *, backend: str = "auto",
               fold_activations: bool = True, init: str = "random") -> SurgeryReport:
    """Replaces every nn.Linear / Conv1D whose name matches a glob of ``rules`` with a KSLinear.

    With ``fold_activations`` (default), a replaced layer that is the first linear of a known MLP
    module (timm ``Mlp``; transformers ``GPT2MLP``, ``ViTMLP``, ``CLIPMLP``, ``SiglipMLP``,
    ``BertIntermediate``) also
    takes that module's activation (GELU, its tanh form, SiLU, ReLU) into its ``ks::chain``
    epilogue, and the module's activation becomes ``nn.Identity``: one pass over the layer's
    output instead of two. The report says which were folded.

    ``init="random"`` (default) gives new factors the paper's init; ``init="project"`` starts each
    layer from the projection of its trained dense weight onto the chain (KSLinear.from_dense: the
    exact optimum for two factors), and the report carries each layer's relative error.

    All matches and chains are checked before the model is touched: a glob that matches no
    replaceable module, a module matched by two globs, or a chain that does not fit raises
    ValueError naming the glob, and the model is left as it was.
    """
    if not rules:
        raise ValueError("ks_surgery: rules is empty; map at least one module glob to a chain or 'auto'")
    if init not in ("random", "project"):
        raise ValueError(f"ks_surgery: init must be 'random' or 'project', got {init!r}")
    conv1d = _conv1d_type()
    # The root module is never replaced: there is no parent to hold the KSLinear.
    shapes = {name: s for name, mod in model.named_modules() if name and (s := _dense_shape(mod, conv1d))}
    # Modules holding each parameter (a tied weight is held by two or more).
    holders: dict[int, list[str]] = {}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for p in mod.parameters(recurse=False):
            holders.setdefault(id(p), []).append(mod_name)
    plan: dict[str, tuple[str, list[KSPattern]]] = {}
    for glob, chain in rules.items():
        names = [name for name in shapes if fnmatchcase(name, glob)]
        if not names:
            hint = [n for n, _ in model.named_modules() if fnmatchcase(n, glob)][:3]
            raise ValueError(
                f"ks_surgery: glob {glob!r} matched no nn.Linear or Conv1D module"
                + (f" (it matched only {hint}, of other types)" if hint else "")
                + f"; replaceable modules look like {list(shapes)[:3]}"
            )
        for name in names:
            if name in plan:
                raise ValueError(f"ks_surgery: module {name!r} is matched by globs {plan[name][0]!r} and {glob!r}")
            tied = [h for h in holders.get(id(model.get_submodule(name).weight), []) if h != name]
            if tied:
                raise ValueError(
                    f"ks_surgery: glob {glob!r}, module {name!r} shares its weight with {tied} (tied "
                    f"weights): replacing it would untie them and add parameters; leave it out of the "
                    f"rules, or untie the weights first (e.g. config.tie_word_embeddings=False)")
            n_in, n_out = shapes[name]
            try:
                patterns = auto_chain(n_in, n_out) if chain == AUTO else check_chain(chain)
            except ValueError as e:
                raise ValueError(f"ks_surgery: glob {glob!r}, module {name!r}: {e}") from None
            if (patterns[0].in_features, patterns[-1].out_features) != (n_in, n_out):
                raise ValueError(
                    f"ks_surgery: glob {glob!r}, module {name!r} is {n_in}->{n_out} but the chain "
                    f"{[str(p) for p in patterns]} is {patterns[0].in_features}->{patterns[-1].out_features}"
                )
            plan[name] = (glob, patterns)
    report = SurgeryReport()
    for name, (glob, patterns) in plan.items():
        dense = model.get_submodule(name)
        weight = dense.weight
        error = bound = None
        if init == "project":
            matrix = weight if isinstance(dense, nn.Linear) else weight.T  # Conv1D stores (in, out)
            ks = KSLinear.from_dense(matrix, patterns, dense.bias, backend=backend)
            with torch.no_grad():
                target = matrix.detach().to(torch.float64)
                error = ((ks.to_dense().to(torch.float64) - target).norm() / target.norm().clamp_min(1e-300)).item()
                bound = projection.lower_bound(target, patterns)
        else:
            ks = KSLinear(patterns, bias=dense.bias is not None, backend=backend,
                          device=weight.device, dtype=weight.dtype)
            if dense.bias is not None:
                with torch.no_grad():
                    ks.bias.copy_(dense.bias)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, ks)
        act = _fold_activation(model, name, ks) if fold_activations else "none"
        report.replacements.append(Replacement(
            name, glob, *shapes[name], tuple(patterns),
            sum(p.numel() for p in dense.parameters()), sum(p.numel() for p in ks.parameters()), act, error, bound,
        ))
    return report
