"""ks::chain on CUDA: every dtype (strict fp32, tf32, fp16, bf16, float64), every activation,
with and without bias, output rows of whole 16-byte vectors and ragged ones, against the float64
reference; the one-pass epilogue kernel runs (not ATen's add + activation); opcheck; autograd
against the reference's; torch.compile and CUDA-graph capture.

Tolerances: strict fp32 and float64 fixed relative bounds; tf32/fp16/bf16 against the error
PyTorch's own dense layer (linear + activation) makes in the same arithmetic, times a small factor."""
import pytest
import torch

import ks_ops
from ks_ops import KSPattern, ks_chain_reference
from ks_ops.ops import ACTIVATIONS, chain_plan_for, chain_with_plan
from ks_ops.reference import REFERENCE_ACTIVATIONS

from support import cuda_kernel_ran, rel_err, tf32

pytestmark = pytest.mark.cuda
DEV = "cuda"
DTYPES = {"fp64": (torch.float64, False), "fp32": (torch.float32, False), "tf32": (torch.float32, True),
          "fp16": (torch.float16, False), "bf16": (torch.bfloat16, False)}
# Output features 8 and 40 (whole 16-byte rows in every dtype), 7 and 30 (ragged: single elements).
CHAINS = [[(3, 5, 7, 2), (1, 4, 15, 2)], [(6, 8, 8, 1), (1, 10, 12, 4)], [(1, 7, 5, 1)],
          [(2, 48, 192, 1), (1, 15, 48, 2)], [(2, 3, 5, 1), (3, 2, 2, 1), (1, 7, 6, 1)]]
_F = torch.nn.functional



def make(chain, batch, dtype, bias=True):
    ps = [KSPattern.of(p) for p in chain]
    factors = [p.random_weights(dtype=dtype, device=DEV) for p in ps]
    x = torch.randn(batch, ps[0].in_features, dtype=dtype, device=DEV)
    b = torch.randn(ps[-1].out_features, dtype=dtype, device=DEV) if bias else None
    return x, factors, b


def tolerance(x, factors, b, activation, name):
    if name == "fp64":
        return 1e-11
    if name == "fp32":
        return 1e-5
    dense = None
    for w in factors:
        k = KSPattern.of_weights(w).to_dense(w)
        dense = k if dense is None else k @ dense
    with tf32(name == "tf32"):
        same = REFERENCE_ACTIVATIONS[activation](_F.linear(x, dense, b))
    return 3 * rel_err(same, ks_chain_reference(x, factors, b, activation)) + 1e-6


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("chain", CHAINS, ids=str)
def test_matches_reference(chain, name, bias, activation):
    dtype, use_tf32 = DTYPES[name]
    x, factors, b = make(chain, 301, dtype, bias)
    with tf32(use_tf32):
        y = ks_ops.chain(x, factors, b, activation)
    ref = ks_chain_reference(x, factors, b, activation)
    assert y.shape == ref.shape and y.dtype == dtype and torch.isfinite(y).all()
    err, tol = rel_err(y, ref), tolerance(x, factors, b, activation, name)
    assert err <= tol, f"{name} {activation} bias={bias}: rel err {err:.3g} > {tol:.3g}"


def test_epilogue_is_one_kernel():
    x, factors, b = make(CHAINS[1], 64, torch.bfloat16)
    assert cuda_kernel_ran(lambda: ks_ops.chain(x, factors, b, "gelu"), ("ks_bias_activation",))
    assert not cuda_kernel_ran(lambda: ks_ops.chain(x, factors, None, "none"), ("ks_bias_activation",))


def test_misaligned_bias_and_empty_batch():
    x, factors, _ = make(CHAINS[1], 33, torch.bfloat16)
    b = torch.randn(41, dtype=torch.bfloat16, device=DEV)[1:]  # 2 bytes past an aligned start
    ref = ks_chain_reference(x, factors, b, "silu")
    assert rel_err(ks_ops.chain(x, factors, b, "silu"), ref) <= tolerance(x, factors, b, "silu", "bf16")
    assert ks_ops.chain(x[:0], factors, b, "silu").shape == (0, 40)


# Decode-sized rows: the last factor runs on the Stream plan (sm_90, 16-bit), which adds the bias
# and applies the activation before its one rounding -- no epilogue kernel. (1, 40, 256, 4): a K
# split over a cluster of 8, so the bias is added once, after the ranks' partial sums. (Last
# factors with d = 4 or 3: the rule streams them at 1-16 rows; d = 2 goes to the gemv kernel at one.)
STREAM_CHAINS = [[(6, 8, 8, 1), (1, 10, 12, 4)], [(4, 256, 192, 1), (1, 40, 256, 4)], [(16, 64, 64, 1), (1, 2048, 256, 4)],
                 [(2, 96, 48, 1), (1, 50, 64, 3)]]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.parametrize("chain", STREAM_CHAINS, ids=str)
def test_stream_epilogue_at_decode_sizes(chain, name, activation):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    dtype = DTYPES[name][0]
    for rows, bias in [(1, True), (5, False), (16, True)]:
        x, factors, b = make(chain, rows, dtype, bias)
        if bias:  # 2 bytes past a 16-byte boundary: the epilogue reads it element by element
            b = torch.cat([b[:1], b])[1:]
        run = lambda: chain_with_plan(x, factors, b, activation, plan="factors")  # noqa: E731
        y = run()
        ref = ks_chain_reference(x, factors, b, activation)
        err, tol = rel_err(y, ref), tolerance(x, factors, b, activation, name)
        assert y.shape == ref.shape and torch.isfinite(y).all()
        assert err <= tol, f"{name} {activation} rows={rows} bias={bias}: rel err {err:.3g} > {tol:.3g}"
        assert not cuda_kernel_ran(run, ("ks_bias_activation",))
        assert cuda_kernel_ran(run, ("stream_kernel",))


# ks::chain at decode sizes in one Stream launch (plan 'stream', ks_stream.cu StreamChainParams):
# each block computes the slice of F1's output its K slice of F2 reads. The `auto` chain of the
# 1024 -> 4096 layer (K split over a cluster of 8 blocks), of the 384-wide fc2 (d = 3, padded to 4
# columns per row), and ragged ones: c1 = 16 and 24 (F1's k steps end inside a 32-k step), d2 = 6
# (padded to 8), b2 = 13 and 40 (row tiles' tails), K = 288 over a cluster of 8 (64 positions a
# block: one slice half past K, three empty).
STREAM_CHAIN_PLAN = [[(16, 64, 64, 1), (1, 2048, 512, 2)], [(6, 64, 256, 1), (1, 128, 128, 3)],
                     [(3, 32, 16, 1), (1, 24, 16, 6)], [(2, 64, 24, 1), (1, 13, 32, 4)],
                     [(9, 32, 16, 1), (1, 40, 144, 2)]]


@pytest.mark.parametrize("activation", ["none", "gelu", "silu"])
@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.parametrize("chain", STREAM_CHAIN_PLAN, ids=str)
def test_stream_chain_in_one_launch(chain, name, activation):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    dtype = DTYPES[name][0]
    gp = {1: 1, 2: 2, 3: 4, 4: 4}.get(chain[1][3], 8)
    for rows, bias in [(1, True), (3, False), (64 // gp, True)]:
        x, factors, b = make(chain, rows, dtype, bias)
        if rows == 3:  # leading dims, and rows 16 bytes past the start of a wider buffer (row stride > in)
            xs = torch.randn(rows, x.shape[1] + 8, dtype=dtype, device=DEV)[:, 8:]
            x = xs.view(1, rows, -1)
        run = lambda: chain_with_plan(x, factors, b, activation, plan="stream")  # noqa: E731
        y = run()
        ref = ks_chain_reference(x, factors, b, activation)
        err, tol = rel_err(y, ref), tolerance(x.reshape(rows, -1), factors, b, activation, name)
        assert y.shape == ref.shape and torch.isfinite(y).all()
        assert err <= tol, f"{name} {activation} rows={rows}: rel err {err:.3g} > {tol:.3g}"
        # one launch: the stream kernel, no GEMM for F1, no epilogue kernel
        assert cuda_kernel_ran(run, ("stream_kernel",))
        assert not cuda_kernel_ran(run, ("gemm", "gemv", "xmma", "cutlass", "ks_", "elementwise", "copy"))
        if chain_plan_for(chain, rows, dtype) == "stream":  # the rule's path gives the same bits
            torch.testing.assert_close(ks_ops.chain(x, factors, b, activation), y, rtol=0, atol=0)


def test_stream_chain_refuses_what_it_does_not_serve():
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    x, factors, b = make([(3, 32, 16, 1), (1, 24, 16, 6)], 17, torch.bfloat16)  # 17 x 8 columns > 128
    with pytest.raises(RuntimeError, match="plan 'stream' does not serve"):
        chain_with_plan(x, factors, b, "gelu", plan="stream")
    x, factors, b = make([(2, 8, 12, 1), (1, 10, 8, 2)], 2, torch.bfloat16)  # c1 = 12: not whole 16-byte chunks
    with pytest.raises(RuntimeError, match="plan 'stream' does not serve"):
        chain_with_plan(x, factors, b, "gelu", plan="stream")
    y, factors2, b2 = make([(3, 48, 16, 1), (1, 24, 36, 4)], 2, torch.bfloat16)  # b1 = 48: F1's m16 tile pairs span two groups
    with pytest.raises(RuntimeError, match="plan 'stream' does not serve"):
        chain_with_plan(y, factors2, b2, "gelu", plan="stream")
    torch.testing.assert_close(ks_ops.chain(x, factors, b, "gelu"), chain_with_plan(x, factors, b, "gelu", plan="factors"),
                               rtol=0, atol=0)


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_opcheck(activation):
    x, factors, b = make(CHAINS[0], 17, torch.float32)
    for t in (x, *factors, b):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.ks.chain.default, (x, factors, b, activation))


def test_gradients_match_reference():
    x, factors, b = make(CHAINS[3], 57, torch.float64)
    inputs = [t.requires_grad_() for t in (x, *factors, b)]
    gy = torch.randn(57, 30, dtype=torch.float64, device=DEV)
    got = torch.autograd.grad(ks_ops.chain(x, factors, b, "gelu_tanh"), inputs, gy)
    want = torch.autograd.grad(ks_chain_reference(x, factors, b, "gelu_tanh"), inputs, gy)
    for g, r in zip(got, want):
        assert rel_err(g, r) <= 1e-10


def test_compile_and_graph_capture():
    x, factors, b = make(CHAINS[1], 256, torch.bfloat16)
    f = torch.compile(lambda x: ks_ops.chain(x, factors, b, "gelu"), fullgraph=True)
    eager = ks_ops.chain(x, factors, b, "gelu")
    torch.testing.assert_close(f(x), eager)
    static_x = x.clone()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        ks_ops.chain(static_x, factors, b, "gelu")
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ks_ops.chain(static_x, factors, b, "gelu")
    static_x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(out, ks_ops.chain(static_x, factors, b, "gelu"))


# The fused 2-factor kernel (hopper/chain_gemm.cu, private plan 'fused' of ks::_chain_plan): F1 =
# (a1, 64, c1, 1), F2 = (1, b2, c2, d2), a1 * 64 <= 384, d2 in {2, 3, 4}. In order: ViT-S/16's fc1
# chain; d2 = 4 with a k tail in F1 (c1 = 40 < 64) and 400 outputs (the last column tile 16 of 64
# wide, its last boxes past b2*d2); one column tile larger than b2 (36 < 128); 7 column tiles, which
# the blocks split unevenly over a row tile at 20011 rows (runs of 4 and 3); ViT-S/16's fc2 chain
# (d2 = 3); d2 = 3 with a k tail in F1 and 216 outputs (the second column tile of 192 holds 24;
# runs of 6 outputs straddle the 64-wide staging boxes). Rows: a partial tile, and more row
# tiles than SMs (the persistent loop, the stage ring wrapping, the staging buffers reused); at 37
# rows every column tile is a block of its own, each recomputing phase 1.
FUSED_CHAINS = [[(6, 64, 64, 1), (1, 768, 192, 2)], [(4, 64, 40, 1), (1, 100, 64, 4)], [(3, 64, 24, 1), (1, 36, 96, 2)],
                [(6, 64, 64, 1), (1, 896, 192, 2)], [(6, 64, 256, 1), (1, 128, 128, 3)],
                [(3, 64, 40, 1), (1, 72, 64, 3)]]


def fused_serves():
    return torch.cuda.get_device_capability() == (9, 0)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("name", ["bf16", "fp16"])
@pytest.mark.parametrize("chain", FUSED_CHAINS, ids=str)
def test_fused_chain_matches_reference(chain, name, bias, activation):
    from ks_ops.ops import chain_with_plan
    if not fused_serves():
        pytest.skip("the fused chain kernel needs sm_90a")
    dtype, _ = DTYPES[name]
    for batch in (37, 20011):
        x, factors, b = make(chain, batch, dtype, bias)
        y = chain_with_plan(x, factors, b, activation, plan="fused")
        ref = ks_chain_reference(x, factors, b, activation)
        assert y.shape == ref.shape and y.dtype == dtype and torch.isfinite(y).all()
        err, tol = rel_err(y, ref), tolerance(x, factors, b, activation, name)
        assert err <= tol, f"{name} {activation} bias={bias} B={batch}: rel err {err:.3g} > {tol:.3g}"


def test_rule_runs_served_chains_fused():
    """ks::chain itself takes the fused kernel where the rule picks it (16-bit, the kernel's form),
    with autograd through it, and keeps the factors one by one elsewhere."""
    if not fused_serves():
        pytest.skip("the fused chain kernel needs sm_90a")
    x, factors, b = make(FUSED_CHAINS[0], 1031, torch.bfloat16)
    assert not cuda_kernel_ran(lambda: ks_ops.chain(x[:301], factors, b, "gelu"), ("chain_kernel",))  # < 1024 rows
    assert cuda_kernel_ran(lambda: ks_ops.chain(x, factors, b, "gelu"), ("chain_kernel",))
    assert not cuda_kernel_ran(lambda: ks_ops.chain(x, factors, b, "gelu"), ("ks_bias_activation",))
    ref = ks_chain_reference(x, factors, b, "gelu")
    assert rel_err(ks_ops.chain(x, factors, b, "gelu"), ref) <= tolerance(x, factors, b, "gelu", "bf16")
    for t in (x, *factors, b):
        t.requires_grad_()
    torch.library.opcheck(torch.ops.ks.chain.default, (x, factors, b, "gelu"))
    # Gradients of x and the bias against float64, within 3x the error of PyTorch's dense layer in
    # bf16 (the same product as one matrix) plus a rounding floor.
    gy = torch.randn(1031, 1536, dtype=torch.bfloat16, device=DEV)
    got = torch.autograd.grad(ks_ops.chain(x, factors, b, "gelu"), (x, b), gy)
    ref_in = [t.detach().double().requires_grad_() for t in (x, *factors, b)]
    want = torch.autograd.grad(ks_chain_reference(ref_in[0], ref_in[1:3], ref_in[3], "gelu"),
                               (ref_in[0], ref_in[3]), gy.double())
    dense = KSPattern.of_weights(factors[1]).to_dense(factors[1].detach()) @ \
        KSPattern.of_weights(factors[0]).to_dense(factors[0].detach())
    xd, bd = x.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    same = torch.autograd.grad(_F.gelu(_F.linear(xd, dense, bd)), (xd, bd), gy)
    for g, r, d in zip(got, want, same):
        assert rel_err(g, r) <= 3 * rel_err(d, r) + 1e-6
    xf, ff, bf = make(FUSED_CHAINS[0], 1031, torch.float32)
    assert not cuda_kernel_ran(lambda: ks_ops.chain(xf, ff, bf, "gelu"), ("chain_kernel",))


def _identity_chain(dtype):
    """F1 = (6, 64, 64, 1) and F2 = (1, 768, 192, 2) (the fused kernel's form) whose product copies
    input feature f % 384 to output f: every output is one input times 1, exact in any dtype."""
    w1 = torch.eye(64, dtype=dtype, device=DEV).expand(6, 64, 64).unsqueeze(-1).contiguous()
    j = torch.arange(768, device=DEV)
    w2 = (torch.arange(192, device=DEV)[None, :] == (j % 192)[:, None]).to(dtype)
    return [w1, w2[None, :, :, None].expand(1, 768, 192, 2).contiguous()]


def _ordered(t):
    """16-bit floats as integers in value order (sign-magnitude to two's complement)."""
    b = t.view(torch.int16).int()
    return torch.where(b < 0, -(b & 0x7FFF), b)


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_gelu_within_one_unit_on_every_16bit_value(name):
    """GELU on 16-bit outputs (the epilogue kernel's and the fused kernel's fast form) is within one
    unit in the last place of the float64 GELU for every normal value in [-6, 6], and within 1e-8 |x|
    beyond, up to 10 (its Phi(x) stops at Phi(-6) ~ 1e-9; fp16 rounds those values to 0)."""
    from ks_ops.ops import chain_with_plan
    dtype = DTYPES[name][0]
    v = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).float()
    v = v[torch.isfinite(v) & (v.abs() <= 10) & (v.abs() >= torch.finfo(dtype).tiny)].unique()
    rows = -(-v.numel() // 384)
    x = torch.zeros(rows * 384)
    x[:v.numel()] = v
    x = x.view(rows, 384).to(dtype).to(DEV)
    xd = x.double()[:, torch.arange(1536, device=DEV) % 384]
    want = (xd * 0.5 * torch.special.erfc(-xd / 2 ** 0.5)).to(dtype)
    inner = xd.abs() <= 6
    for plan in ["factors"] + (["fused"] if fused_serves() else []):
        y = chain_with_plan(x, _identity_chain(dtype), None, "gelu", plan=plan)
        ulps = (_ordered(y) - _ordered(want))[inner].abs().max().item()
        assert ulps <= 1, f"{plan}: GELU {ulps} units from the float64 value"
        assert ((y.double() - want.double()).abs() <= 1e-8 * xd.abs())[~inner].all()


def test_fused_chain_layouts_and_refusals():
    from ks_ops.ops import chain_with_plan
    if not fused_serves():
        pytest.skip("the fused chain kernel needs sm_90a")
    chain = FUSED_CHAINS[0]
    x, factors, b = make(chain, 999, torch.bfloat16)
    ref = ks_chain_reference(x, factors, b, "gelu")
    tol = tolerance(x, factors, b, "gelu", "bf16")
    lead = chain_with_plan(x[:996].view(3, 332, -1), factors, b, "gelu", plan="fused")
    assert lead.shape == (3, 332, 1536) and rel_err(lead.reshape(996, -1), ref[:996]) <= tol
    off = torch.randn(999 * 384 + 1, dtype=torch.bfloat16, device=DEV)[1:].view(999, 384)  # 2 bytes off
    off.copy_(x)
    assert rel_err(chain_with_plan(off, factors, b, "gelu", plan="fused"), ref) <= tol
    b_off = torch.randn(1537, dtype=torch.bfloat16, device=DEV)[1:]  # the bias 2 bytes off 16
    b_off.copy_(b)
    assert rel_err(chain_with_plan(x, factors, b_off, "gelu", plan="fused"), ref) <= tol
    assert chain_with_plan(x[:0], factors, b, "gelu", plan="fused").shape == (0, 1536)
    with pytest.raises(RuntimeError, match=r"fused chain kernel does not serve"):
        chain_with_plan(x.float(), [f.float() for f in factors], b.float(), "gelu", plan="fused")
    w1, w2 = make([(6, 32, 64, 1), (1, 384, 96, 2)], 1, torch.bfloat16)[1]  # b1 = 32
    with pytest.raises(RuntimeError, match=r"fused chain kernel does not serve"):
        chain_with_plan(x, [w1, w2], None, "none", plan="fused")
    with pytest.raises(RuntimeError, match=r"plan must be 'factors', 'fused' or 'stream', got 'nope'"):
        chain_with_plan(x, factors, b, "gelu", plan="nope")
