#!/usr/bin/env python3
"""A representative set of ks::matmul launches for compute-sanitizer (tools/sanitize.sh): every
kernel family (small-batch vector/scalar, tiled fast batch-first, fast batch-last, scalar loads),
every dtype, tails in every dimension. Small sizes: the tools slow each launch down a lot.
Checks each result against the float64 reference too, and exits non-zero on a mismatch.
Arguments name the groups to run (matmul, weight_grad, transposed, cublas, chain, hopper, stream;
default all)."""
import sys

import torch

import ks_ops  # noqa: F401
from ks_ops import KSPattern, ks_chain_reference, ks_matmul_reference, ks_weight_grad_reference
from ks_ops.ops import ACTIVATIONS

CASES = [  # pattern, batch
    ((2, 48, 192, 1), 37), ((1, 192, 48, 2), 40), ((4, 64, 64, 4), 33), ((1, 64, 64, 16), 19),
    ((1, 128, 128, 3), 21), ((3, 13, 11, 3), 29), ((1, 200, 300, 1), 18), ((2, 144, 80, 4), 17),
    ((1, 40, 72, 32), 45), ((2, 48, 192, 1), 5), ((1, 64, 64, 12), 3), ((1, 5, 9, 64), 16),
    # 16-bit batch-first plane kernels: tails everywhere, and > 132 tiles (ring across tiles)
    ((3, 50, 24, 8), 70), ((2, 70, 34, 4), 130), ((1, 60, 72, 4), 140), ((8, 64, 16, 8), 1100),
    ((3, 70, 100, 8), 90), ((40, 72, 24, 16), 150),
]
# ks::weight_grad, fused kernel (16-bit batch-first): tails in j, k and rows, d = 4 in both tile
# orientations, several splits of the batch, more tiles than SMs.
WGRAD_CASES = [((3, 50, 24, 8), 70), ((2, 70, 34, 4), 130), ((1, 192, 48, 4), 40), ((1, 16, 16, 64), 3000),
               ((40, 72, 24, 16), 33), ((2, 33, 136, 24), 17)]
# The transposed plan's batched transposition (ks_layout.cu): whole matrices per tile, and
# matrices split into TP x TQ tiles with tails in both dimensions (x and y sides), 2/4-byte data,
# single elements and 16-byte vectors.
TRANSPOSE_CASES = [((3, 13, 11, 3), 29), ((1, 130, 100, 48), 7), ((2, 70, 90, 70), 5), ((1, 5, 9, 64), 3),
                   ((1, 700, 20, 12), 6), ((1, 24, 1032, 12), 5), ((1, 1032, 16, 12), 5),
                   ((1, 16, 136, 72), 3), ((1, 72, 16, 136), 3)]
# The cuBLAS plans' own kernels: the strided plan's pointer kernel (batch-last, a and d > 1) and
# the blockdense plan's densification (both layouts).
CUBLAS_CASES = [((3, 20, 12, 6), 40), ((2, 13, 11, 3), 24), ((1, 5, 9, 64), 8)]
# ks::chain's epilogue (ks_epilogue.cu): rows of whole 16-byte vectors (8 and 40 output features)
# and ragged ones (7), every activation, with and without bias.
CHAIN_CASES = [([(3, 5, 7, 2), (1, 4, 15, 2)], 37), ([(6, 8, 8, 1), (1, 10, 12, 4)], 29), ([(1, 7, 5, 1)], 300)]
# The interleaved GEMM (hopper/interleaved_gemm.cu): d = 2, 3, 4, 6, 8, 12; row, column and k tails,
# padded weight planes (c = 46, 37, 36, 20), and more tiles than SMs at B = 4099 (the persistent
# loop, the stage ring's wrap, the staging buffers' reuse); the last two run in clusters of 4 with
# x multicast (a last column tile 8 wide; 9 tiles, so the last cluster has 3 idle blocks).
INTERLEAVED_CASES = [((3, 36, 20, 2), 37), ((2, 260, 100, 2), 4099), ((3, 70, 46, 4), 4099), ((2, 40, 37, 8), 4099),
                     ((1, 200, 64, 8), 300), ((2, 40, 56, 3), 37), ((2, 136, 64, 3), 4099), ((3, 100, 36, 6), 4099),
                     ((5, 24, 20, 12), 4099), ((1, 456, 520, 4), 300), ((2, 520, 512, 4), 1000)]
# The fused 2-factor chain (hopper/chain_gemm.cu, group hopper): F1's k tail (c1 = 40), a last
# column tile 16 wide with boxes past b2*d2, b2 smaller than a tile, partial and many row tiles.
FUSED_CHAIN_CASES = [([(4, 64, 40, 1), (1, 100, 64, 4)], 37), ([(3, 64, 24, 1), (1, 36, 96, 2)], 4099),
                     ([(6, 64, 64, 1), (1, 768, 192, 2)], 300), ([(6, 64, 64, 1), (1, 896, 192, 2)], 4099),
                     ([(6, 64, 256, 1), (1, 128, 128, 3)], 300), ([(3, 64, 40, 1), (1, 72, 64, 3)], 4099)]
# The Stream plan (ks_stream.cu, group stream, sm_90): plane groups 1, 2, 4 and 8 (d = 24: three
# groups), row tails, K tails, K split over clusters of 2-8 blocks ((1, 300, 2048, 1): 8), column
# tiles of 64 and of 128, groups of 3 and 7 planes (masks turning with the
# position's phase; the last one split over a cluster), four steps of w in flight and, on 272
# blocks (more than the SMs), two; four warps sharing an m16 tile's columns where the grid is small
# ((3, 100, 38, 4) at 16 rows, (2, 33, 136, 24), (1, 130, 36, 2) at 64, (2, 40, 37, 8), and (1, 72,
# 8, 7) without a split); both layouts.
STREAM_CASES = [((1, 7, 8, 1), 3), ((3, 100, 38, 4), 16), ((2, 33, 136, 24), 5), ((1, 300, 2048, 1), 64),
                ((1, 40, 1000, 2), 13), ((1, 130, 36, 2), 64), ((2, 40, 37, 8), 16),
                ((2, 61, 24, 3), 21), ((1, 72, 8, 7), 9), ((1, 128, 1024, 3), 5), ((17, 1024, 8, 1), 7)]
# ks::chain at decode sizes: the last factor on the Stream plan with the bias and the activation in
# its epilogue (a K split over a cluster of 8 in the second).
STREAM_CHAIN_CASES = [([(6, 8, 8, 1), (1, 10, 12, 4)], 7), ([(4, 256, 192, 1), (1, 40, 256, 4)], 5)]
# ks::chain in one Stream launch (plan 'stream': F1's output computed per block for its K slice):
# a K split over a cluster of 8, a padded group of 6 planes, a row tile's tail (b2 = 13) with c1 =
# 24 (F1's k ends inside a step), K = 288 over a cluster of 8 (64 positions each: a half-full slice
# and three empty ones).
STREAM_CHAIN_PLAN_CASES = [([(16, 64, 64, 1), (1, 2048, 512, 2)], 5), ([(3, 32, 16, 1), (1, 24, 16, 6)], 7),
                           ([(2, 64, 24, 1), (1, 13, 32, 4)], 3), ([(9, 32, 16, 1), (1, 40, 144, 2)], 2)]
DTYPES = [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.float16, False)]


def mismatch(y, ref, tol, label) -> int:
    """1 (and a MISMATCH line) when y is off the float64 reference by more than tol, else 0."""
    err = ((y.cpu().double() - ref).norm() / ref.norm()).item()
    if err <= tol:
        return 0
    print(f"MISMATCH {label}: {err:.3g}")
    return 1


def operand(p, batch, dtype, bl):
    shape = (p.in_features, batch) if bl else (batch, p.in_features)
    return torch.randn(shape, dtype=dtype, device="cuda")


ALL_GROUPS = ("matmul", "weight_grad", "transposed", "cublas", "chain", "hopper", "stream")


def main(groups=ALL_GROUPS):
    bad = n = 0
    # References on the CPU: keep cuBLAS out of the tools' view of the kernels under test.
    for (pattern, batch) in CASES if "matmul" in groups else []:
        p = KSPattern.of(pattern)
        for dtype, tf32 in DTYPES:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            w = p.random_weights(dtype=dtype, device="cuda")
            for bl in (False, True):
                x = operand(p, batch, dtype, bl)
                y = torch.ops.ks.matmul(x, w, batch_last=bl)
                tol = 1e-5 if dtype == torch.float32 and not tf32 else 3e-2
                bad += mismatch(y, ks_matmul_reference(x.cpu(), w.cpu(), batch_last=bl), tol,
                                f"{pattern} B={batch} {dtype} tf32={tf32} bl={bl}")
                n += 1
    torch.backends.cuda.matmul.allow_tf32 = False
    for (pattern, batch) in WGRAD_CASES if "weight_grad" in groups else []:
        p = KSPattern.of(pattern)
        for dtype in (torch.bfloat16, torch.float16):
            gy = torch.randn(batch, p.out_features, dtype=dtype, device="cuda")
            x = operand(p, batch, dtype, False)
            gw = torch.ops.ks.weight_grad(gy, x, list(pattern))
            bad += mismatch(gw, ks_weight_grad_reference(gy.cpu(), x.cpu(), pattern), 3e-2,
                            f"weight_grad {pattern} B={batch} {dtype}")
            n += 1
    plan_cases = []
    if "transposed" in groups:
        plan_cases += [(c, "transposed", False) for c in TRANSPOSE_CASES]
    if "cublas" in groups:
        plan_cases += [(c, plan, bl) for c in CUBLAS_CASES
                       for plan, bl in (("strided", True), ("blockdense", True), ("blockdense", False))]
    if "hopper" in groups and torch.cuda.get_device_capability() == (9, 0):
        plan_cases += [(c, "interleaved", False) for c in INTERLEAVED_CASES]
    stream = "stream" in groups and torch.cuda.get_device_capability()[0] >= 9
    if stream:
        plan_cases += [(c, "stream", bl) for c in STREAM_CASES for bl in (False, True)]
    for (pattern, batch), plan, bl in plan_cases:
        p = KSPattern.of(pattern)
        half = plan in ("interleaved", "stream")
        for dtype in (torch.bfloat16, torch.float16) if half else (torch.bfloat16, torch.float32):
            w = p.random_weights(dtype=dtype, device="cuda")
            x = operand(p, batch, dtype, bl)
            y = torch.ops.ks._matmul_plan(x, w, plan, batch_last=bl)
            bad += mismatch(y, ks_matmul_reference(x.cpu(), w.cpu(), batch_last=bl), 3e-2,
                            f"{plan} {pattern} B={batch} {dtype} bl={bl}")
            n += 1
    fused = "hopper" in groups and torch.cuda.get_device_capability() == (9, 0)
    chain_cases = [(c, "factors") for c in CHAIN_CASES] if "chain" in groups else []
    chain_cases += [(c, "fused") for c in FUSED_CHAIN_CASES] if fused else []
    chain_cases += [(c, "factors") for c in STREAM_CHAIN_CASES] if stream else []
    chain_cases += [(c, "stream") for c in STREAM_CHAIN_PLAN_CASES] if stream else []
    for (chain, batch), plan in chain_cases:
        ps = [KSPattern.of(q) for q in chain]
        for dtype in (torch.bfloat16, torch.float16) + ((torch.float32,) if plan == "factors" else ()):
            factors = [q.random_weights(dtype=dtype, device="cuda") for q in ps]
            x = torch.randn(batch, ps[0].in_features, dtype=dtype, device="cuda")
            for bias in (None, torch.randn(ps[-1].out_features, dtype=dtype, device="cuda")):
                for act in ACTIVATIONS:
                    y = torch.ops.ks._chain_plan(x, factors, bias, act, plan)
                    ref = ks_chain_reference(x.cpu(), [f.cpu() for f in factors],
                                             None if bias is None else bias.cpu(), act)
                    bad += mismatch(y, ref, 3e-2, f"chain {plan} {chain} B={batch} {dtype} {act} bias={bias is not None}")
                    n += 1
    torch.cuda.synchronize()
    print(f"sanitize cases: {n} launches, {bad} mismatches")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main(tuple(sys.argv[1:]) or ALL_GROUPS)
