"""ks_ops: Kronecker-sparse matmul for PyTorch.

``torch.ops.ks.matmul`` (also ``ks_ops.matmul``) computes the product with a KS matrix whose
nonzeros w (a,b,c,d) satisfy K[i·bd + j·d + l, i·cd + k·d + l] = w[i,j,k,l]; ``torch.ops.ks.chain``
(``ks_ops.chain``) runs a whole KSLinear: the factors, the bias and an activation.
"""
from . import ops  # noqa: F401  (loads the extension, registers fake kernels and autograd)
from ._native import BUILD_INFO
from .nn import KSLinear, auto_chain, ks_surgery
from .ops import chain, matmul
from .pattern import KSPattern, check_chain
from .reference import ks_chain_reference, ks_matmul_reference, ks_weight_grad_reference

__version__ = "0.1.0"
__all__ = ["KSLinear", "auto_chain", "ks_surgery", "KSPattern", "check_chain", "matmul", "chain", "ks_matmul_reference", "ks_chain_reference", "ks_weight_grad_reference", "BUILD_INFO"]
