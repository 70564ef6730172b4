"""The fused CUDA kernel of ks::matmul: values against the float64 reference for awkward patterns,
every dtype (strict fp32, tf32, fp16, bf16) and both layouts, every output element written,
opcheck, torch.compile (fullgraph, reduce-overhead) and autograd on the GPU.

Tolerances: strict fp32 is judged by a fixed relative bound; tf32/fp16/bf16 against the error
PyTorch's own dense product makes in the same arithmetic (times a small factor)."""
import pytest
import torch

import ks_ops
from ks_ops import KSPattern, ks_matmul_reference

from ks_ops.ops import PLANS, matmul_with_plan, plan_for
from support import cuda_kernel_ran, make_inputs, rel_err, same_dtype_dense_err, tf32

pytestmark = pytest.mark.cuda
DEV = "cuda"

# (a, b, c, d): b, c not multiples of 8/16, a = 1, d = 1, d large, the ViT factors, and patterns
# that reach every load class of the kernel (fast k-, (k,l)-, l-vectors, batch-last rows, scalar).
PATTERNS = [
    (1, 7, 5, 1), (3, 13, 11, 3), (2, 17, 33, 2), (1, 5, 9, 64), (3, 100, 36, 6),
    (2, 48, 192, 1), (1, 192, 48, 2), (6, 64, 64, 1), (1, 768, 192, 2), (6, 64, 256, 1),
    (1, 128, 128, 3), (4, 64, 64, 4), (1, 64, 64, 16), (2, 96, 40, 8), (1, 200, 300, 1),
    (1, 64, 64, 12), (2, 144, 80, 4), (1, 40, 72, 32),
    # 16-bit batch-first plane kernels (d = 4, 8k): j, k and row tails in every configuration
    (3, 50, 24, 8), (2, 70, 34, 4), (1, 60, 72, 4), (2, 33, 136, 24), (1, 130, 36, 2), (3, 70, 100, 8),
]
BATCHES = [1, 3, 16, 17, 131, 1000]
# name -> (dtype, allow_tf32)
DTYPES = {
    "fp32": (torch.float32, False),
    "tf32": (torch.float32, True),
    "fp16": (torch.float16, False),
    "bf16": (torch.bfloat16, False),
}



def inputs(pattern, batch, dtype, batch_last=False, lead=None):
    return make_inputs(pattern, batch, batch_last=batch_last, dtype=dtype, device=DEV, lead=lead)


def poisoned_call(x, w, batch_last, plan=None):
    """Runs the op right after filling and freeing a NaN buffer of y's size, so that the caching
    allocator hands that buffer to y: an unwritten element stays NaN and fails the check."""
    a, b, c, d = w.shape
    if batch_last:
        shape = (a * b * d, x.shape[1])
    else:
        shape = (*x.shape[:-1], a * b * d)
    poison = torch.full(shape, float("nan"), dtype=x.dtype, device=x.device)
    ptr = poison.data_ptr()
    del poison
    if plan is None:
        y = torch.ops.ks.matmul(x, w, batch_last=batch_last)
    else:
        y = matmul_with_plan(x, w, plan, batch_last=batch_last)
    return y, y.data_ptr() == ptr


def tolerance(x, w, batch_last, dtype_name, factor=4.0):
    if dtype_name == "fp32":
        return 2e-5
    with tf32(dtype_name == "tf32"):
        err = same_dtype_dense_err(x, w, batch_last)
    floor = {"tf32": 2e-4, "fp16": 1e-3, "bf16": 8e-3}[dtype_name]
    return factor * max(err, floor)


def check(x, w, batch_last, dtype_name, plan=None):
    with tf32(dtype_name == "tf32"):
        y, reused = poisoned_call(x, w, batch_last, plan)
    ref = ks_matmul_reference(x, w, batch_last=batch_last)
    assert y.shape == ref.shape and y.dtype == x.dtype and y.is_contiguous()
    if ref.numel() == 0:
        return
    assert torch.isfinite(y).all(), f"unwritten or non-finite outputs (poisoned buffer reused: {reused})"
    err = rel_err(y, ref)
    tol = tolerance(x, w, batch_last, dtype_name)
    assert err <= tol, f"{dtype_name} {tuple(w.shape)} B={x.shape[-1] if batch_last else x.shape[0]}: rel err {err:.3g} > {tol:.3g}"


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_matches_reference(pattern, batch, dtype_name, batch_last):
    dtype, _ = DTYPES[dtype_name]
    x, w = inputs(pattern, batch, dtype, batch_last)
    check(x, w, batch_last, dtype_name)


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("pattern", [(2, 48, 192, 1), (4, 64, 64, 4), (1, 64, 64, 16), (3, 13, 11, 3)], ids=str)
@pytest.mark.parametrize("batch", [2, 257, 1031])  # primes (and one decode size)
def test_prime_batch_and_leading_dims(pattern, batch, dtype_name):
    dtype, _ = DTYPES[dtype_name]
    x, w = inputs(pattern, None, dtype, lead=(batch, 1))
    check(x, w, False, dtype_name)
    x, w = inputs(pattern, None, dtype, lead=(2, 3, batch))
    check(x, w, False, dtype_name)


@pytest.mark.parametrize("dtype_name", ["fp16", "bf16"])
@pytest.mark.parametrize(
    "pattern, batch",
    [((4, 100, 144, 16), 5000), ((8, 64, 16, 8), 3001), ((3, 96, 20, 4), 4099), ((2, 60, 72, 4), 2053),
     ((2, 200, 40, 8), 3067), ((1, 48, 48, 64), 1500), ((40, 72, 24, 16), 700)],
    ids=str,
)
def test_many_tiles_per_block(pattern, batch, dtype_name):
    """More tiles than resident blocks: persistent blocks loop over tiles while their load ring
    runs ahead across tile boundaries (one or several tiles ahead when c has few k-steps); for the
    w-resident kernel (d % 8 == 0, c <= 96) several units (column, run of m-tiles) per block, with
    runs cut short by the batch."""
    dtype, _ = DTYPES[dtype_name]
    x, w = inputs(pattern, batch, dtype)
    check(x, w, False, dtype_name)


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_batch_zero(dtype_name, batch_last):
    dtype, _ = DTYPES[dtype_name]
    x, w = inputs((2, 48, 192, 1), 0, dtype, batch_last)
    y = torch.ops.ks.matmul(x, w, batch_last=batch_last)
    assert y.shape == ((96, 0) if batch_last else (0, 96))


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("pattern", [(2, 48, 192, 1), (4, 64, 64, 4), (1, 64, 64, 16), (1, 192, 48, 2)], ids=str)
@pytest.mark.parametrize("batch", [5, 300])
def test_strided_and_misaligned_inputs(pattern, batch, dtype_name):
    """Row strides (leading dim > features), pointers off 16-byte alignment (scalar loads) and
    non-contiguous weights take the slower load classes; results must not change."""
    dtype, _ = DTYPES[dtype_name]
    p = KSPattern.of(pattern)
    w = p.random_weights(dtype=dtype, device=DEV)
    base = torch.randn(batch, p.in_features + 24, dtype=dtype, device=DEV)
    check(base[:, : p.in_features], w, False, dtype_name)  # ldx > in_features, aligned
    check(base[:, 1 : p.in_features + 1], w, False, dtype_name)  # misaligned pointer
    flat = torch.randn(batch * p.in_features + 1, dtype=dtype, device=DEV)
    check(flat[1:].view(batch, p.in_features), w, False, dtype_name)
    xt = torch.randn(batch + 3, p.in_features, dtype=dtype, device=DEV)[:batch].T  # batch-last, transposed
    check(xt, w, True, dtype_name)
    xl = torch.randn(p.in_features, batch + 5, dtype=dtype, device=DEV)[:, 1 : batch + 1]  # ldx > B, misaligned
    check(xl, w, True, dtype_name)
    wt = torch.randn(p.a, p.c, p.b, p.d, dtype=dtype, device=DEV).transpose(1, 2) / p.c
    check(torch.randn(batch, p.in_features, dtype=dtype, device=DEV), wt, False, dtype_name)


def test_large_offsets_int64():
    """More than 2^31 elements in x: offsets must be 64-bit."""
    free, _ = torch.cuda.mem_get_info()
    p = KSPattern(1, 64, 64, 16)
    batch = (2**31) // p.in_features + 7
    need = batch * (p.in_features + p.out_features) * 2 + (1 << 30)
    if free < need:
        pytest.skip("not enough GPU memory")
    x = torch.randn(batch, p.in_features, dtype=torch.bfloat16, device=DEV)
    w = p.random_weights(dtype=torch.bfloat16, device=DEV)
    y = torch.ops.ks.matmul(x, w)
    tail = slice(batch - 300, batch)
    ref = ks_matmul_reference(x[tail], w)
    assert rel_err(y[tail], ref) < 3e-2
    del x, y


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("batch", [3, 40])
def test_opcheck_cuda(batch, dtype, batch_last):
    x, w = inputs((2, 24, 40, 4), batch, dtype, batch_last)
    torch.library.opcheck(torch.ops.ks.matmul.default, (x, w), {"batch_last": batch_last})
    x.requires_grad_(True)
    w.requires_grad_(True)
    torch.library.opcheck(torch.ops.ks.matmul.default, (x, w), {"batch_last": batch_last})


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
def test_torch_compile(mode, batch_last):
    torch._dynamo.reset()
    x, w = inputs((4, 64, 64, 4), 256, torch.bfloat16, batch_last)

    def f(x, w):
        return torch.relu(torch.ops.ks.matmul(x, w, batch_last=batch_last)) * 2

    cf = torch.compile(f, fullgraph=True, mode=mode)
    expect = f(x, w)
    for _ in range(3):  # graph capture and replays under reduce-overhead
        out = cf(x, w)
        torch.testing.assert_close(out.float(), expect.float(), rtol=0, atol=0)
    x2 = torch.randn_like(x)
    torch.testing.assert_close(cf(x2, w).float(), f(x2, w).float(), rtol=0, atol=0)
    torch._dynamo.reset()


def test_cuda_graph_capture():
    x, w = inputs((2, 48, 192, 1), 512, torch.float32)
    y = torch.ops.ks.matmul(x, w)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        with torch.cuda.graph(g):
            yg = torch.ops.ks.matmul(x, w)
    torch.cuda.current_stream().wait_stream(s)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.testing.assert_close(yg, torch.ops.ks.matmul(x, w), rtol=0, atol=0)
    assert not torch.equal(yg, y)


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("pattern", [(2, 48, 192, 1), (4, 64, 64, 4), (3, 13, 11, 3)], ids=str)
def test_autograd_cuda(pattern, batch_last):
    x, w = inputs(pattern, 77, torch.float32, batch_last)
    x.requires_grad_(True)
    w.requires_grad_(True)
    with tf32(False):
        y = ks_ops.matmul(x, w, batch_last=batch_last)
        gy = torch.randn_like(y)
        gx, gw = torch.autograd.grad(y, (x, w), gy)
    x64 = x.detach().double().requires_grad_(True)
    w64 = w.detach().double().requires_grad_(True)
    y64 = ks_matmul_reference(x64, w64, batch_last=batch_last)
    rx, rw = torch.autograd.grad(y64, (x64, w64), gy.double())
    assert rel_err(gx, rx) < 2e-5
    assert rel_err(gw, rw) < 2e-5


def test_float64_falls_back():
    x, w = inputs((3, 13, 11, 3), 20, torch.float64)
    y = torch.ops.ks.matmul(x, w)
    assert rel_err(y, ks_matmul_reference(x, w)) < 1e-12


def fused_kernel_ran(fn) -> bool:
    return cuda_kernel_ran(fn, ("ks_plane", "ks_tile", "ks_gemv"))


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("plan", PLANS)
def test_plan_runs_its_own_kernels(plan, batch_last):
    """A plan is what it says: the fused kernels run for 'fused' and for no other plan."""
    if not serves(plan, (3, 20, 12, 6), batch_last):
        pytest.skip("plan does not serve this layout / d")
    x, w = inputs((3, 20, 12, 6), 300, torch.bfloat16, batch_last)
    assert fused_kernel_ran(lambda: matmul_with_plan(x, w, plan, batch_last=batch_last)) == (plan == "fused")


# Every plan of the op (csrc/ks_plan.h), forced through ks::_matmul_plan, on odd sizes, both
# layouts where it serves, every dtype: the rule may send any product to any of them.
# The interleaved plan (sm_90a, d = 2, 3, 4, 6, 8, 12 with c*d and b*d % 8 == 0) serves (3, 100, 36, 6),
# (5, 24, 20, 12), (1, 700, 20, 12), (3, 100, 40, 6), (1, 200, 64, 8), (4, 136, 264, 4) and the last
# six: column, k and row tails, c padded to 8 for its weight planes (c = 46, 37, 36, 20), column
# tiles larger than b (b = 36 < 128, 40 < 64), a k tile larger than c (d = 3: 56 < 64).
PLAN_PATTERNS = [(1, 7, 5, 1), (3, 13, 11, 3), (2, 17, 33, 2), (3, 100, 36, 6), (2, 33, 136, 24),
                 (1, 130, 36, 2), (4, 40, 72, 1), (5, 24, 20, 12), (1, 700, 20, 12),
                 (3, 100, 40, 6), (2, 61, 24, 3), (1, 130, 72, 2), (1, 200, 64, 8), (4, 136, 264, 4),
                 (3, 36, 20, 2), (2, 260, 100, 2), (3, 70, 46, 4), (2, 40, 37, 8), (2, 40, 56, 3), (1, 72, 136, 3)]


def stream_group(d):
    return d if d <= 8 else 8 if d % 8 == 0 else 0


def stream_cols(d):  # the group rounded up to a power of two: columns per x row
    return {0: 0, 1: 1, 2: 2, 3: 4, 4: 4}.get(stream_group(d), 8)


def serves(plan, pattern, batch_last, dtype_name="bf16", batch=300):
    d, c = pattern[3], pattern[2]
    # stream: sm_90, 16-bit, batch * Gp <= 128 (Gp: the plane group G rounded up to a power of two),
    # whole 16-byte chunks of w's rows
    if plan == "stream":
        g = stream_group(d)
        return (dtype_name in ("bf16", "fp16") and g > 0 and batch * stream_cols(d) <= 128 and c * d % 8 == 0
                and torch.cuda.get_device_capability()[0] >= 9)
    if plan == "strided":
        return batch_last or d == 1
    if plan == "transposed":
        return not batch_last
    if plan == "interleaved":  # sm_90a, 16-bit, d in {2, 3, 4, 6, 8, 12}, TMA strides of x's and y's blocks
        b = pattern[1]
        return (not batch_last and dtype_name in ("bf16", "fp16") and d in (2, 3, 4, 6, 8, 12) and c * d % 8 == 0
                and b * d % 8 == 0 and torch.cuda.get_device_capability() == (9, 0))
    return True


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("batch", [1, 17, 1000])
@pytest.mark.parametrize("pattern", PLAN_PATTERNS, ids=str)
@pytest.mark.parametrize("plan", PLANS)
def test_every_plan_matches_reference(plan, pattern, batch, dtype_name, batch_last):
    if not serves(plan, pattern, batch_last, dtype_name, batch):
        pytest.skip("plan does not serve this layout / d / dtype")
    x, w = inputs(pattern, batch, DTYPES[dtype_name][0], batch_last)
    check(x, w, batch_last, dtype_name, plan)


# The Stream plan (ks_stream.cu) at every batch it serves (up to B * Gp = 128: 16 n8 tiles, one m16
# tile per warp), both layouts: plane groups G = 1, 2, 4, 8
# (d = 24: three groups of 8 planes per block), row tails (b = 7, 13, 17, 100, 130, 300 against
# blocks of 16-64 rows), K tails (c * G not a multiple of 32), K split over clusters of 2-8
# blocks ((1, 300, 2048, 1), (1, 40, 1000, 2), (1, 2048, 512, 2) at small batches), x rows staged
# with 16-byte loads and, for batch-last, an x 2 bytes off a 16-byte boundary and a row stride
# that is not a multiple of 8, element by element.
STREAM_PATTERNS = [(1, 7, 8, 1), (3, 13, 16, 1), (2, 17, 36, 2), (1, 130, 36, 2), (3, 100, 38, 4), (2, 40, 37, 8),
                   (2, 33, 136, 24), (1, 40, 72, 32), (1, 300, 2048, 1), (1, 40, 1000, 2), (16, 64, 64, 1),
                   (1, 2048, 512, 2),
                   # groups of 3, 5, 6, 7 planes (padded to 4 or 8 columns per x row; masks that turn
                   # with the position's phase); (1, 128, 1024, 3): a K split over a cluster
                   (2, 61, 24, 3), (1, 128, 128, 6), (3, 40, 16, 5), (1, 72, 8, 7), (1, 128, 1024, 3),
                   # 272 blocks (more than an H100's SMs): two steps of w in flight instead of four
                   (17, 1024, 8, 1)]


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype_name", ["bf16", "fp16"])
@pytest.mark.parametrize("pattern", STREAM_PATTERNS, ids=str)
def test_stream_plan_every_batch_it_serves(pattern, dtype_name, batch_last):
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    gp = stream_cols(pattern[3])
    dt = DTYPES[dtype_name][0]
    for batch in sorted({1, 2, 3, 5, 8, 13, 31, 64, 100, 128} & set(range(1, 128 // gp + 1))):
        x, w = inputs(pattern, batch, dt, batch_last)
        check(x, w, batch_last, dtype_name, "stream")
    x, w = inputs(pattern, 128 // gp, dt, batch_last)
    q = KSPattern(*pattern)
    if batch_last:  # rows 2 bytes past a 16-byte boundary, row stride batch + 1
        xs = torch.randn(q.in_features, x.shape[1] + 1, dtype=dt, device=DEV)[:, 1:]
        check(xs, w, True, dtype_name, "stream")
    else:  # leading dims, and rows 2 bytes off the 16-byte boundary (element-wise staging)
        check(x.view(1, x.shape[0], -1), w, False, dtype_name, "stream")
        xs = torch.randn(x.shape[0], q.in_features + 1, dtype=dt, device=DEV)[:, 1:]
        check(xs, w, False, dtype_name, "stream")
    # (Where the rule takes it: tests/test_plan.py, test_rule_streams_w_at_decode_sizes.)


def test_stream_plan_refuses_a_misaligned_w():
    """w 2 bytes past a 16-byte boundary: the forced plan says why; the rule takes another plan."""
    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    x, w = inputs((2, 17, 36, 2), 5, torch.bfloat16)
    wm = torch.randn(w.numel() + 1, dtype=w.dtype, device=DEV)[1:].view(w.shape)
    with pytest.raises(RuntimeError, match="plan 'stream' does not serve these arguments"):
        matmul_with_plan(x, wm, "stream")
    assert_close = torch.testing.assert_close
    assert_close(torch.ops.ks.matmul(x, wm), matmul_with_plan(x, wm, "fused"), rtol=0, atol=0)


# The interleaved plan's persistent loop: more tiles than SMs (each block runs several, its stage
# ring wraps, its staging buffers are reused), for each d; leading dims; a contiguous x that starts
# 2 bytes past a 16-byte boundary (copied for TMA) and rows wider than the features. (1, 456, 520, 4)
# and (2, 520, 512, 4) take its clusters of 4 blocks with x multicast (d = 4, c*d >= 2048, >= 8
# column tiles of 64): the last column tile 8 wide, k and row tails, and 9 column tiles in clusters
# of 4, so that whole blocks of the last cluster have no columns.
@pytest.mark.parametrize("dtype_name", ["bf16", "fp16"])
@pytest.mark.parametrize("pattern", [(2, 260, 100, 2), (3, 70, 46, 4), (2, 40, 37, 8), (1, 768, 192, 2), (2, 136, 64, 3),
                                     (3, 100, 36, 6), (1, 130, 20, 12), (1, 456, 520, 4), (2, 520, 512, 4)], ids=str)
def test_interleaved_plan_many_tiles(pattern, dtype_name):
    if not serves("interleaved", pattern, False, dtype_name):
        pytest.skip("the interleaved plan needs sm_90a")
    dtype = DTYPES[dtype_name][0]
    x, w = inputs(pattern, 5003, dtype)
    check(x, w, False, dtype_name, "interleaved")
    check(x[:4998].view(3, 1666, -1), w, False, dtype_name, "interleaved")
    flat = torch.randn(301 * x.shape[1] + 1, dtype=dtype, device=DEV)[1:].view(301, -1)
    check(flat, w, False, dtype_name, "interleaved")
    wide = torch.randn(301, x.shape[1] + 8, dtype=dtype, device=DEV)[:, 8:]
    check(wide, w, False, dtype_name, "interleaved")


# The transposition kernel's tile shapes (ks_layout.cu), each with 16-byte vectors on both sides
# and tails: x rows of (c, d) = (1032, 12) in slabs of whole d; y rows of (d, b) = (12, 1032) in
# slabs of whole d; (136, 72) and (72, 136) in 64-row pieces; whole small matrices elsewhere.
TRANSPOSE_TILE_PATTERNS = [(1, 24, 1032, 12), (1, 1032, 16, 12), (1, 16, 136, 72), (1, 72, 16, 136)]


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("pattern", TRANSPOSE_TILE_PATTERNS, ids=str)
def test_transposed_plan_tile_shapes(pattern, dtype_name):
    x, w = inputs(pattern, 37, DTYPES[dtype_name][0])
    check(x, w, False, dtype_name, "transposed")
    # a contiguous x that starts 2 bytes past a 16-byte boundary: single-element loads
    flat = torch.randn(37 * x.shape[1] + 1, dtype=x.dtype, device=DEV)[1:].view(37, -1)
    check(flat, w, False, dtype_name, "transposed")


@pytest.mark.parametrize("plan", ["strided", "blockdense", "transposed"])
def test_cublas_plans_strided_and_leading_dims(plan):
    """Leading dims, rows wider than the features, misaligned rows; batch-last x with ldx > B and
    a misaligned start (the strided plan's pointer-array call needs 16-byte planes, else it loops)."""
    pattern = (2, 48, 24, 1) if plan == "strided" else (3, 20, 12, 6)
    p = KSPattern.of(pattern)
    w = p.random_weights(dtype=torch.bfloat16, device=DEV)
    x = torch.randn(3, 5, 7, p.in_features, dtype=torch.bfloat16, device=DEV)
    check(x, w, False, "bf16", plan)
    base = torch.randn(301, p.in_features + 24, dtype=torch.bfloat16, device=DEV)
    check(base[:, : p.in_features], w, False, "bf16", plan)
    check(base[:, 1 : p.in_features + 1], w, False, "bf16", plan)
    if plan == "transposed":
        return
    q = KSPattern(3, 20, 12, 6)  # a, d > 1: the pointer-array path of the strided plan
    wq = q.random_weights(dtype=torch.bfloat16, device=DEV)
    for dtype_name in ("bf16", "fp32"):
        dt = DTYPES[dtype_name][0]
        wq = wq.to(dt)
        check(torch.randn(q.in_features, 304, dtype=dt, device=DEV), wq, True, dtype_name, plan)
        xl = torch.randn(q.in_features, 300 + 5, dtype=dt, device=DEV)[:, 1:301]
        check(xl, wq, True, dtype_name, plan)
        check(torch.randn(301, q.in_features, dtype=dt, device=DEV).T, wq, True, dtype_name, plan)


def test_plan_errors():
    """Errors from the CUDA library are plain RuntimeErrors (formatting their numbers once
    crashed the process: a statically linked libstdc++, see setup.py)."""
    x, w = inputs((2, 8, 8, 4), 5, torch.bfloat16)
    with pytest.raises(RuntimeError, match=r"last dim is 63 but pattern \(a,b,c,d\)=\(2,8,8,4\) needs a\*c\*d=64"):
        torch.ops.ks.matmul(x[:, :63], w)
    with pytest.raises(RuntimeError, match="plan 'strided' does not serve"):
        matmul_with_plan(x, w, "strided")
    with pytest.raises(RuntimeError, match="unknown plan 'nope'"):
        matmul_with_plan(x, w, "nope")
    xl, _ = inputs((2, 8, 8, 4), 5, torch.bfloat16, batch_last=True)
    with pytest.raises(RuntimeError, match="plan 'transposed' does not serve"):
        matmul_with_plan(xl, w, "transposed", batch_last=True)


@pytest.mark.parametrize("plan", PLANS)
def test_plans_under_cuda_graph_capture(plan):
    """Every plan is capturable (no host sync, no allocation outside the graph's pool)."""
    pattern = (2, 48, 24, 4) if plan == "interleaved" else (2, 48, 24, 1)
    if plan == "stream" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    x, w = inputs(pattern, 16 if plan == "stream" else 300, torch.bfloat16)
    fn = lambda: matmul_with_plan(x, w, plan)  # noqa: E731
    expect = fn()
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
        with torch.cuda.graph(g):
            yg = fn()
    torch.cuda.current_stream().wait_stream(s)
    g.replay()
    torch.testing.assert_close(yg, expect, rtol=0, atol=0)
    x.copy_(torch.randn_like(x))
    g.replay()
    torch.testing.assert_close(yg, fn(), rtol=0, atol=0)


# A plan's very first launch in a process happening inside CUDA-graph capture (a decode loop
# captured before any eager call of the op): its one-time host work (shared-memory attributes, the
# cluster occupancy query, device-side pointer arrays) must be legal during capture. A fresh
# process per case, since that work is done once per process. torch.mm runs once before: PyTorch
# creates its cuBLAS handle lazily and cublasCreate fails inside capture, for torch.mm itself too
# (H100: without it every cuBLAS-based plan failed with CUBLAS_STATUS_NOT_INITIALIZED, while the
# fused and interleaved kernels, clusters included, passed).
FIRST_LAUNCH = """
import sys, torch
sys.path.insert(0, {tests!r})
from support import make_inputs
from ks_ops.ops import matmul_with_plan
torch.mm(torch.ones(8, 8, device="cuda"), torch.ones(8, 8, device="cuda"))
torch.cuda.synchronize()
pattern, batch, plan = {pattern!r}, {batch}, {plan!r}
bl = plan == "strided" and pattern[3] > 1  # strided serves d > 1 batch-last
x, w = make_inputs(pattern, batch, batch_last=bl, dtype=torch.bfloat16, device="cuda")
if plan == "chain":  # ks::chain with its bias + activation epilogue; w feeds (1, 10, 12, 4)
    _, w2 = make_inputs((1, 10, 12, 4), 1, dtype=torch.bfloat16, device="cuda")
    bias = torch.randn(40, dtype=torch.bfloat16, device="cuda")
    fn = lambda: torch.ops.ks.chain(x, [w, w2], bias, "gelu")
else:
    fn = lambda: matmul_with_plan(x, w, plan, batch_last=bl)
g = torch.cuda.CUDAGraph()
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    with torch.cuda.graph(g):
        yg = fn()
torch.cuda.current_stream().wait_stream(s)
x.copy_(torch.randn_like(x))
g.replay()
torch.testing.assert_close(yg, fn(), rtol=0, atol=0)
print("ok")
"""


@pytest.mark.parametrize("plan,pattern,batch", [
    ("fused", (2, 48, 24, 4), 300), ("fused", (2, 48, 24, 4), 8), ("strided", (2, 48, 24, 1), 300),
    ("strided", (2, 48, 24, 4), 300), ("blockdense", (2, 48, 24, 4), 300), ("transposed", (2, 48, 24, 4), 300),
    ("bmm", (2, 48, 24, 4), 300), ("dense", (2, 48, 24, 4), 300), ("interleaved", (2, 48, 24, 4), 300),
    ("interleaved", (1, 520, 512, 4), 300), ("chain", (6, 8, 8, 1), 300),  # 520: clusters of 4
    ("stream", (2, 48, 24, 4), 8), ("stream", (1, 300, 2048, 1), 16)], ids=str)  # 2048: clusters of 8
def test_first_launch_inside_graph_capture(plan, pattern, batch):
    import os
    import subprocess
    import sys
    if plan == "interleaved" and torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the interleaved plan needs sm_90a")
    if plan == "stream" and torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the stream plan needs sm_90")
    tests = os.path.dirname(os.path.abspath(__file__))
    code = FIRST_LAUNCH.format(tests=tests, pattern=pattern, batch=batch, plan=plan)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@pytest.mark.parametrize("batch_last", [False, True], ids=["bf", "bl"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("pattern,batch", [((1, 768, 768, 4), 37), ((2, 384, 384, 16), 2053),
                                           ((3, 64, 64, 1), 300), ((1, 48, 48, 6), 4100),
                                           ((4, 64, 256, 12), 999), ((1, 128, 128, 3), 8),
                                           ((1, 2048, 512, 2), 16), ((16, 64, 64, 1), 1)], ids=str)
def test_op_runs_the_rules_plan(pattern, batch, dtype, batch_last):
    """The op and the plan the rule names give the same bits (same kernels, same order)."""
    x, w = inputs(pattern, batch, dtype, batch_last)
    major, minor = torch.cuda.get_device_capability()
    plan = plan_for(pattern, batch, dtype, batch_last=batch_last,
                    allow_tf32=torch.backends.cuda.matmul.allow_tf32, sm=major * 10 + minor)
    torch.testing.assert_close(torch.ops.ks.matmul(x, w, batch_last=batch_last),
                               matmul_with_plan(x, w, plan, batch_last=batch_last), rtol=0, atol=0)
