"""torch.autocast through the ks ops (issue drop-in): ks::matmul and ks::chain run in the
autocast dtype as F.linear does (float32 operands cast, float64 left alone), so KSLinear and
surgered models run under autocast on CPU and CUDA; values within the dtype's own error (what
the dense layer makes of the same product under the same autocast), fp32 gradients for fp32
parameters, and torch.compile under autocast."""
import copy

import pytest
import torch

import ks_ops
from ks_ops import KSLinear, KSPattern, ks_chain_reference, ks_matmul_reference

from support import rel_err

DEVICES = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
           pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=pytest.mark.cuda),
           pytest.param("cuda", torch.float16, id="cuda-fp16", marks=pytest.mark.cuda)]


def dense_of(layer):
    dense = None
    for w in layer.factors:
        k = KSPattern.of_weights(w).to_dense(w)
        dense = k if dense is None else k @ dense
    return dense


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_kslinear_under_autocast(device, dtype):
    layer = KSLinear([(6, 8, 8, 1), (1, 16, 12, 4)], activation="gelu", device=device)
    x = torch.randn(37, 48, device=device)
    with torch.autocast(device, dtype):
        y = layer(x)
        same = torch.nn.functional.gelu(torch.nn.functional.linear(x, dense_of(layer).detach(), layer.bias))
    assert y.dtype == dtype and same.dtype == dtype
    ref = ks_chain_reference(x, list(layer.factors), layer.bias, "gelu")
    assert rel_err(y, ref) <= 3 * rel_err(same, ref) + 1e-6
    y.float().square().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in layer.parameters())


@pytest.mark.parametrize("device,dtype", DEVICES)
def test_matmul_under_autocast_and_float64_untouched(device, dtype):
    p = KSPattern(3, 5, 7, 2)
    x, w = torch.randn(11, p.in_features, device=device), p.random_weights(device=device)
    with torch.autocast(device, dtype):
        y = ks_ops.matmul(x, w)
        y64 = ks_ops.matmul(x.double(), w.double())
    assert y.dtype == dtype and y64.dtype == torch.float64
    ref = ks_matmul_reference(x, w)
    assert rel_err(y64, ref) <= 1e-12
    assert rel_err(y, ref) <= 3 * rel_err(torch.nn.functional.linear(x.to(dtype), p.to_dense(w).to(dtype)), ref) + 1e-6


def test_surgered_gpt2_under_autocast():
    """A surgered GPT-2 runs under CPU autocast (it failed with a dtype mismatch), its logits off
    the float32 run by no more than the dense model's own autocast error allows."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=32, vocab_size=128,
                                  bos_token_id=0, eos_token_id=0)
    dense = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ks = copy.deepcopy(dense)
    ks_ops.ks_surgery(ks, {"*.mlp.c_fc": "auto", "*.mlp.c_proj": "auto"})
    ids = torch.randint(0, 128, (3, 17))
    with torch.no_grad():
        errs = []
        for model in (dense, ks):
            full = model(ids).logits
            with torch.autocast("cpu", torch.bfloat16):
                low = model(ids).logits
            errs.append(rel_err(low, full))
    assert errs[1] <= 3 * errs[0] + 1e-6, errs


def test_compile_under_autocast():
    layer = KSLinear([(3, 5, 7, 2), (1, 4, 15, 2)], activation="silu")
    f = torch.compile(layer, fullgraph=True, dynamic=True, backend="aot_eager")
    x = torch.randn(9, 42)
    with torch.autocast("cpu", torch.bfloat16):
        got, want = f(x), layer(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)
