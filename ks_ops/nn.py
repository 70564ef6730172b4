"""KSLinear: a chain of Kronecker-sparse factors, a drop-in for nn.Linear."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from . import backends
from .ops import ACTIVATION_FUNCTIONS, ACTIVATIONS
from .pattern import KSPattern, check_chain


class KSLinear(nn.Module):
    """y = act(x · (K_n ⋯ K_1)ᵀ + bias), with K_1 (the first pattern listed) applied first.

    Weights are a ParameterList of (a,b,c,d) tensors with the paper's init U[-1/c, 1/c]; the bias
    is initialized like nn.Linear's. ``backend`` names how the product runs (``ks_ops.backends``);
    with the op (``auto`` / ``kernel``) the whole layer is one ``ks::chain`` call, bias and
    activation included. ``activation`` (``ks_ops.ops.ACTIVATIONS``, default ``none``) is applied
    after the bias: surgery folds a model's activation into it where the model applies one right
    after the linear layer.
    """

    def __init__(
        self,
        patterns: Sequence[KSPattern | Sequence[int]],
        bias: bool = True,
        *,
        backend: str = "auto",
        activation: str = "none",
        device=None,
        dtype=None,
    ):
        super().__init__()
        chain = check_chain(patterns)
        backends.resolve(backend, "cpu", torch.float32)  # fail on unknown names now, not at forward
        self.backend = backend
        if activation not in ACTIVATIONS:
            raise ValueError(f"KSLinear: activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        self.in_features = chain[0].in_features
        self.out_features = chain[-1].out_features
        self.factors = nn.ParameterList(
            nn.Parameter(torch.empty(p.shape, device=device, dtype=dtype)) for p in chain
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(self.out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    @classmethod
    def from_dense(cls, weight: torch.Tensor, chain: Sequence[KSPattern | Sequence[int]],
                   bias: torch.Tensor | None = None, *, method: str = "hierarchical", backend: str = "auto",
                   activation: str = "none", calibration: torch.Tensor | None = None, steps: int = 200,
                   lr: float = 1e-3, progress: bool = True) -> "KSLinear":
        """The KSLinear whose chain best approximates `weight` ((out, in), like nn.Linear.weight):
        for two factors the exact optimum in the Frobenius norm (block-wise truncated SVDs), for
        longer chains the hierarchical algorithm (ks_ops.projection). Computed in float64 on
        weight's device; the layer takes weight's dtype and device, and `bias` if given.
        With `calibration` inputs (..., in), `steps` Adam steps then refine the factors and bias
        on the layer's output error over them (ks_ops.projection.refine)."""
        if method != "hierarchical":
            raise ValueError(f"KSLinear.from_dense: method must be 'hierarchical', got {method!r}")
        from .projection import project_chain

        factors = project_chain(weight.detach(), chain)
        layer = cls(chain, bias=bias is not None, backend=backend, activation=activation,
                    device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            for param, value in zip(layer.factors, factors):
                param.copy_(value)
            if bias is not None:
                layer.bias.copy_(bias)
        if calibration is not None:
            from .projection import refine

            refine(layer, weight, bias, calibration, steps=steps, lr=lr, progress=progress)
        return layer

    def reset_parameters(self) -> None:
        """The paper's init for every factor (U[-1/c, 1/c]) and nn.Linear's for the bias
        (U[-1/sqrt(in_features), 1/sqrt(in_features)]), in place: after ``to_empty`` of a model
        built on the meta device, this gives the layer its values (a no-op on meta tensors)."""
        with torch.no_grad():
            for w in self.factors:
                c = w.shape[2]
                w.uniform_(-1.0 / c, 1.0 / c)
            if self.bias is not None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.bias.uniform_(-bound, bound)

    # No dense `weight`: code that reads or assigns one (nn.init on m.weight, weight norm, weight
    # tying) would act on a matrix the layer never uses. Reading it is an AttributeError (so
    # hasattr(m, "weight") is False and libraries that probe for it skip the layer); assigning one,
    # as transformers' tie_weights() does, is an AttributeError that says what to do instead.
    _NO_WEIGHT = ("KSLinear has no dense `weight`: its parameters are `factors` (one (a,b,c,d) tensor "
                  "per KS factor) and `bias`; `to_dense()` gives the dense matrix K_n...K_1. Weight "
                  "tying, weight norm and nn.init on a dense weight do not apply to it (leave tied "
                  "layers such as an lm_head out of ks_surgery)")

    def __getattr__(self, name):  # only reached when normal lookup fails
        if name == "weight":
            raise AttributeError(self._NO_WEIGHT)
        return super().__getattr__(name)

    def __setattr__(self, name, value):
        if name == "weight":
            raise AttributeError(self._NO_WEIGHT)
        super().__setattr__(name, value)

    @property
    def patterns(self) -> list[KSPattern]:
        return [KSPattern.of_weights(w) for w in self.factors]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ValueError(f"KSLinear: input must have at least 1 dim (..., in_features={self.in_features}), "
                             f"got a 0-d tensor")
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"KSLinear: input last dim is {x.shape[-1]} but the chain "
                f"{[str(p) for p in self.patterns]} takes in_features={self.in_features} "
                f"(input shape {tuple(x.shape)})"
            )
        # Host time matters at decode sizes (issue decode): plain dict lookups below, not nn.Module's
        # __getattr__ (a miss raises and catches an AttributeError) or ParameterList's iterator.
        if self.__dict__.get("_tp") is not None:  # ks_ops.distributed.parallelize_ks_linear
            from .distributed import tp_forward

            return tp_forward(self, x)
        if self.backend == "auto" or backends.resolve(self.backend, x.device, x.dtype) == "kernel":
            params = self.factors._parameters
            # (A ParameterList keeps plain tensors assigned to it outside _parameters.)
            factors = list(params.values()) if len(params) == len(self.factors) else list(self.factors)
            return torch.ops.ks.chain(x, factors, self._parameters.get("bias"), self.activation)
        product = backends.get_backend(self.backend, x.device, x.dtype)
        for w in self.factors:
            x = product(x, w)
        return ACTIVATION_FUNCTIONS[self.activation](x if self.bias is None else x + self.bias)

    def to_dense(self) -> torch.Tensor:
        """The dense (out_features x in_features) matrix K_n ⋯ K_1."""
        dense = None
        for p, w in zip(self.patterns, self.factors):
            k = p.to_dense(w)
            dense = k if dense is None else k @ dense
        return dense

    @property
    def nnz(self) -> int:
        return sum(p.nnz for p in self.patterns)

    def extra_repr(self) -> str:
        chain = ", ".join(str(p) for p in self.patterns)
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"chain=[{chain}], bias={self.bias is not None}, backend={self.backend}"
            + (f", activation={self.activation}" if self.activation != "none" else "")
        )


# Model surgery lives in its own module; re-exported here, beside the layer it installs.
from .surgery import auto_chain, ks_surgery  # noqa: E402
