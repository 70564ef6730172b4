"""Kronecker-sparse patterns: K (abd x acd) with support I_a ⊗ 1_{b×c} ⊗ I_d.

The nonzeros are a tensor w of shape (a,b,c,d) with K[i·bd + j·d + l, i·cd + k·d + l] = w[i,j,k,l].
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class KSPattern:
    a: int
    b: int
    c: int
    d: int

    def __post_init__(self):
        for name in "abcd":
            v = getattr(self, name)
            # Any exact integer (numpy / torch integer scalars too) is taken as a plain int.
            if not isinstance(v, (bool, int)) and hasattr(v, "__index__"):
                try:  # numpy's bool has __index__ but refuses it: left to the check below
                    v = operator.index(v)
                except TypeError:
                    pass
                else:
                    object.__setattr__(self, name, v)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(
                    f"KSPattern: {name} must be a positive int, got {v!r} in "
                    f"(a,b,c,d)=({self.a!r},{self.b!r},{self.c!r},{self.d!r})"
                )

    @classmethod
    def of(cls, p: "KSPattern | Sequence[int]") -> "KSPattern":
        if isinstance(p, KSPattern):
            return p
        try:
            a, b, c, d = p
        except (TypeError, ValueError):
            raise ValueError(f"KSPattern: expected 4 ints (a,b,c,d), got {p!r}") from None
        return cls(a, b, c, d)

    @classmethod
    def of_weights(cls, w: torch.Tensor) -> "KSPattern":
        if w.dim() != 4:
            raise ValueError(f"KSPattern: weights must be 4-D (a,b,c,d), got shape {tuple(w.shape)}")
        return cls(*(int(s) for s in w.shape))

    def __str__(self) -> str:
        return f"({self.a},{self.b},{self.c},{self.d})"

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.a, self.b, self.c, self.d)

    @property
    def in_features(self) -> int:
        return self.a * self.c * self.d

    @property
    def out_features(self) -> int:
        return self.a * self.b * self.d

    @property
    def nnz(self) -> int:
        return self.a * self.b * self.c * self.d

    @property
    def density(self) -> float:
        return self.nnz / (self.in_features * self.out_features)

    def transpose(self) -> "KSPattern":
        """The pattern of Kᵀ; its weights are w.transpose(1, 2)."""
        return KSPattern(self.a, self.c, self.b, self.d)

    def flops(self, batch: int) -> int:
        return 2 * batch * self.nnz

    def check_weights(self, w: torch.Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"KSPattern {self}: weights must have shape {self.shape}, got {tuple(w.shape)}")

    def dense_indices(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of K for each entry of w, straight from the definition, each (a,b,c,d)."""
        i, j, k, l = torch.meshgrid(
            *(torch.arange(n, device=device) for n in self.shape), indexing="ij"
        )
        rows = i * self.b * self.d + j * self.d + l
        cols = i * self.c * self.d + k * self.d + l
        return rows, cols

    def to_dense(self, w: torch.Tensor) -> torch.Tensor:
        """The (abd x acd) matrix K whose nonzeros are w (differentiable in w)."""
        self.check_weights(w)
        rows, cols = self.dense_indices(w.device)
        dense = w.new_zeros(self.out_features, self.in_features)
        return dense.index_put((rows, cols), w)

    def support_mask(self, device=None) -> torch.Tensor:
        """Boolean (abd x acd) mask of K's support."""
        return self.to_dense(torch.ones(self.shape, dtype=torch.bool, device=device))

    def random_weights(self, *, dtype=None, device=None, generator=None, requires_grad=False) -> torch.Tensor:
        """The paper's init: U[-1/c, 1/c] (c = nonzeros per row of K)."""
        w = torch.empty(self.shape, dtype=dtype, device=device)
        w.uniform_(-1.0 / self.c, 1.0 / self.c, generator=generator)
        return w.requires_grad_(requires_grad)


def check_chain(patterns: Sequence[KSPattern | Sequence[int]]) -> list[KSPattern]:
    """Validates that patterns compose (first listed applied first): out of one = in of the next."""
    chain = [KSPattern.of(p) for p in patterns]
    if not chain:
        raise ValueError("KS chain: needs at least one pattern")
    for n, (p, q) in enumerate(zip(chain, chain[1:])):
        if p.out_features != q.in_features:
            raise ValueError(
                f"KS chain: factor {n} {p} outputs {p.out_features} features but factor {n + 1} {q} "
                f"takes {q.in_features} (a·b·d of one must equal a·c·d of the next)"
            )
    return chain
