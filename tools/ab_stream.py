#!/usr/bin/env python3
"""Kernel-only A/B of stream-kernel variants (csrc/cuda/ks_stream.cu + csrc/ks_plan.h) in one process,
or, with --kernel interleaved, of the interleaved wgmma GEMM (csrc/cuda/hopper/interleaved_*).

Each variant is the family's files (KERNELS[...]["files"]) at a git ref, in the working tree
("."), or in a folder made by --extract-only, compiled as its own torch extension (the family's
binding, tools/ab_stream_bind.cu or tools/ab_interleaved_bind.cu; the other headers come from the
checkout), so that variants run side by side on the same card, in the same process, on the same
inputs:

    python tools/ab_stream.py --variant base=main --variant new=. --out ab.jsonl

Where the GPU machine gets no git history, extract first and carry the folder:

    python tools/ab_stream.py --variant base=main --variant new=wip/x --extract-only --build-dir scratch/ab
    python tools/ab_stream.py --variant base=scratch/ab/base --variant new=scratch/ab/new --out ab.jsonl

Every case times each variant by CUDA-graph replay over rotated copies of the weights (more than
3x L2 in all, so w comes from HBM as in a model) and nn.Linear on the dense matrix of the same
shape, after checking each variant's y (poisoned with NaN first) against the float64 reference.
ks_ops itself need not be built: only its pure-Python modules are used. Rows are appended to
--out as they finish; Ctrl-C keeps them. benchmarks/results/stream7_h100_nsplit_relaxed_ab.jsonl
came from this harness (then in scratch/)."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A variant's files (its folder holds them as under csrc/): the kernel, its plan, and the PTX
# wrappers it may add to. The kernel includes them first from its own folder; the rest of csrc/
# comes from the checkout.
FILES = ("csrc/cuda/ks_stream.cu", "csrc/ks_plan.h", "csrc/cuda/hopper/ptx.cuh")
# The interleaved GEMM: the kernel, its mainloop and tile headers, its argument header.
INTERLEAVED_FILES = ("csrc/cuda/hopper/interleaved_gemm.cu", "csrc/cuda/hopper/interleaved_gemm.h",
                     "csrc/cuda/hopper/interleaved_mainloop.cuh", "csrc/cuda/hopper/interleaved_tile.cuh",
                     "csrc/cuda/hopper/ptx.cuh")
# (pattern, batches): the MLP blocks' factors at decode sizes, odd d, a huge w, ragged tiles.
CASES = [((1, 128, 128, 8), (8, 16)), ((1, 128, 128, 32), (4, 16)), ((1, 768, 192, 2), (1, 16, 32)),
         ((1, 1536, 384, 2), (1, 16, 32)), ((1, 2048, 512, 2), (1, 4, 16, 32)), ((1, 128, 128, 3), (16, 32)),
         ((4, 384, 384, 6), (8,)), ((1, 8192, 2048, 2), (1, 16)), ((2, 40, 37, 8), (16,)), ((1, 72, 8, 7), (9,))]
# 16-128 rows, where the rule takes Interleaved today and variants may widen the stream kernel past
# 128 columns (a variant whose stream_shape does not serve a case is recorded as not timed).
WIDE_CASES = [((1, 2048, 512, 2), (16, 32, 64, 128)), ((1, 768, 192, 2), (32, 64, 128)), ((1, 1536, 384, 2), (32, 64, 128)),
              ((1, 128, 128, 8), (16, 32)), ((1, 128, 128, 3), (32, 64)), ((1, 768, 192, 3), (32, 64)),
              ((1, 1024, 256, 6), (16, 32)), ((2, 512, 512, 3), (32, 64)), ((1, 8192, 2048, 2), (32, 64, 128))]
CASE_SETS = {"decode": CASES, "wide": WIDE_CASES}
# The interleaved kernel where it has few tiles (17-256 rows: the MLP blocks' factors, the rule's
# plan there) and, for continuity, one large batch.
INTERLEAVED_CASES = [((1, 2048, 512, 2), (64, 128, 256)), ((1, 128, 128, 8), (64, 256)), ((1, 1536, 384, 2), (64, 256)),
                     ((1, 768, 192, 3), (64, 256)), ((2, 512, 512, 3), (64, 256)), ((1, 1024, 256, 6), (64, 256)),
                     ((4, 384, 384, 6), (64, 256)), ((1, 8192, 2048, 2), (64, 256)), ((6, 512, 512, 4), (4096,)),
                     ((3, 512, 512, 6), (4096,)), ((2, 768, 768, 2), (8192,))]
# Per kernel family: its files, its binding (run(x, w_prepared, y, a, b, c, d), blocks(a, b, c, d,
# batch): the grid, 0 where the variant does not serve the case, -1 where it does not say), its
# case sets, and whether it has the one-launch chains.
KERNELS = {"stream": {"files": FILES, "bind": "ab_stream_bind.cu", "cases": CASE_SETS, "chains": True},
           "interleaved": {"files": INTERLEAVED_FILES, "bind": "ab_interleaved_bind.cu",
                           "cases": {"small": INTERLEAVED_CASES}, "chains": False}}
# ks::chain in one stream launch: the auto chains of the 384 and 1024 blocks (fc1, fc2).
CHAINS = [((6, 64, 64, 1), (1, 768, 192, 2)), ((16, 64, 64, 1), (1, 2048, 512, 2)),
          ((6, 64, 256, 1), (1, 128, 128, 3)), ((16, 64, 256, 1), (1, 128, 128, 8))]


def pure_ks_ops():
    """ks_ops's pure-Python modules, without loading its extension (which may not be built)."""
    try:
        import ks_ops  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("ks_ops")
        pkg.__path__ = [os.path.join(ROOT, "ks_ops")]
        sys.modules["ks_ops"] = pkg
    from ks_ops.bench import append_row, rotation_count, time_cuda
    from ks_ops.pattern import KSPattern
    from ks_ops.reference import ks_chain_reference, ks_matmul_reference
    return KSPattern, time_cuda, rotation_count, append_row, ks_matmul_reference, ks_chain_reference


def prepared(kernel: str, w):
    """The weights as the family's kernel reads them: w as it lies (stream), or its planes (a, d, b,
    c8), c zero-padded to a multiple of 8 (interleaved; the op makes them per call, the A/B once)."""
    if kernel != "interleaved":
        return w
    import torch
    a, b, c, d = w.shape
    c8 = (c + 7) // 8 * 8
    wp = torch.zeros(a, d, b, c8, dtype=w.dtype, device=w.device)
    wp[..., :c] = w.permute(0, 3, 1, 2)
    return wp


def fmt_us(t) -> str:
    return "-" if t is None else f"{t:.1f}"


def variant_of(spec: str) -> tuple[str, str]:
    name, sep, ref = spec.partition("=")
    if not sep or not name.isidentifier() or not ref:
        raise argparse.ArgumentTypeError(f"--variant wants NAME=REF (a git ref, or '.' for the working tree), got {spec!r}")
    return name, ref


def extract(name: str, ref: str, build_root: str, files=FILES) -> str:
    """The variant's files (FILES: cuda/ks_stream.cu, ks_plan.h, cuda/hopper/ptx.cuh; or a kernel
    family's) under build_root/name as under csrc/, from the working tree ("."), a folder of that
    layout, or a git ref."""
    d = os.path.join(build_root, name)
    for path in files:
        rel = os.path.relpath(path, "csrc")
        os.makedirs(os.path.join(d, os.path.dirname(rel)), exist_ok=True)
        if ref == "." or os.path.isdir(ref):
            src = os.path.join(ROOT, path) if ref == "." else os.path.join(ref, rel)
            if not os.path.isfile(src):
                raise SystemExit(f"variant {name}: no {src}")
            with open(src, "rb") as f:
                data = f.read()
        else:
            r = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:{path}"], capture_output=True)
            if r.returncode != 0:
                raise SystemExit(f"variant {name}: no {path} at git ref {ref!r}: {r.stderr.decode().strip()}")
            data = r.stdout
        dst = os.path.join(d, rel)
        with open(dst + ".tmp", "wb") as f:
            f.write(data)
        os.replace(dst + ".tmp", dst)
    return d


def build(name: str, d: str, family: str = "stream"):
    """The variant in folder d compiled with its family's binding, as extension ab_<family>_<name>."""
    from torch.utils.cpp_extension import load
    # The variant's folders first: its kernel's quoted includes find their siblings in the variant,
    # the rest in the checkout.
    inc = [os.path.join(d, "cuda", "hopper"), os.path.join(d, "cuda"), os.path.join(ROOT, "csrc", "cuda", "hopper"),
           os.path.join(ROOT, "csrc", "cuda"), os.path.join(ROOT, "csrc")]
    return load(f"ab_{family}_{name}", [os.path.join(ROOT, "tools", KERNELS[family]["bind"])], extra_include_paths=inc,
                extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a"], build_directory=d, verbose=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n", 2)[2],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", type=variant_of, action="append", required=True, help="NAME=REF, two or more")
    ap.add_argument("--out", help="jsonl file the rows are appended to (required unless --extract-only)")
    ap.add_argument("--kernel", choices=sorted(KERNELS), default="stream", help="the kernel family (default stream)")
    ap.add_argument("--cases", choices=sorted({c for k in KERNELS.values() for c in k["cases"]}),
                    help="stream: decode (1-32 rows, the default) or wide (16-128 rows, past the 128 columns main "
                         "serves); interleaved: small (17-256 rows, the default)")
    ap.add_argument("--no-chains", action="store_true", help="skip the one-launch chains")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build", "ab_stream"))
    ap.add_argument("--extract-only", action="store_true", help="write the variants' files under --build-dir, then stop")
    ap.add_argument("--build-only", action="store_true", help="extract and compile, then stop")
    args = ap.parse_args(argv)
    names = [n for n, _ in args.variant]
    if len(set(names)) != len(names):
        ap.error(f"--variant names must differ: {names}")
    if not args.out and not args.extract_only:
        ap.error("--out is required")
    kernel = KERNELS[args.kernel]
    cases = args.cases or next(iter(kernel["cases"]))
    if cases not in kernel["cases"]:
        ap.error(f"--cases {cases} is not a case set of --kernel {args.kernel} ({', '.join(kernel['cases'])})")
    dirs = {n: extract(n, ref, args.build_dir, kernel["files"]) for n, ref in args.variant}
    if args.extract_only:
        print("extracted:", ", ".join(f"{n} -> {d}" for n, d in dirs.items()))
        return 0
    t0 = time.time()
    with ThreadPoolExecutor(len(dirs)) as ex:  # nvcc is single-threaded: one per variant
        mods = dict(zip(dirs, ex.map(lambda n: build(n, dirs[n], args.kernel), dirs)))
    print(f"built {names} in {time.time() - t0:.0f} s", flush=True)
    if args.build_only:
        return 0

    import torch
    KSPattern, time_cuda, rotation_count, append_row, matmul_ref, chain_ref = pure_ks_ops()
    dt, dev = torch.bfloat16, "cuda"

    def sets(nbytes):  # copies of the weights: a rotation of > 3x L2
        return rotation_count(nbytes, cap=64)

    def timed(fn, inputs):
        return time_cuda(fn, inputs, samples=7, max_total_s=0.04, graph=True, max_inner=64, min_sample_s=1e-3)["median_s"] * 1e6

    def check(run, y, ref):
        y.fill_(float("nan"))
        run()
        torch.cuda.synchronize()
        return ((y.double() - ref).norm() / ref.norm()).item()

    for pat, batches in kernel["cases"][cases]:
        p = KSPattern.of(pat)
        for B in batches:
            n = sets(2 * p.nnz)
            ws = [p.random_weights(dtype=dt, device=dev) for _ in range(n)]
            wk = [prepared(args.kernel, w) for w in ws]  # what the kernel reads (outside the timing)
            xs = [torch.randn(B, p.in_features, dtype=dt, device=dev) for _ in range(n)]
            y = torch.empty(B, p.out_features, dtype=dt, device=dev)
            ref = matmul_ref(xs[0], ws[0])
            row = {"pattern": pat, "rows": B, "sets": n, "kernel": args.kernel, "gpu": torch.cuda.get_device_name()}
            for v, m in mods.items():
                blocks = m.blocks(*pat, B)
                row[v + "_blocks"] = blocks if blocks > 0 else None  # (-1: the binding does not say)
                if blocks == 0:  # this variant does not serve the case
                    row[v] = row[v + "_err"] = None
                    continue
                row[v + "_err"] = check(lambda: m.run(xs[0], wk[0], y, *pat), y, ref)
                row[v] = timed(lambda x, w, m=m: m.run(x, w, y, *pat), list(zip(xs, wk)))
            dn = sets(2 * p.in_features * p.out_features)
            dense = [torch.randn(p.out_features, p.in_features, dtype=dt, device=dev) for _ in range(dn)]
            row["dense"] = timed(lambda x, k: torch.nn.functional.linear(x, k), list(zip([xs[0]] * dn, dense)))
            append_row(args.out, row)
            errs = [row[v + "_err"] for v in names if row[v + "_err"] is not None]
            print(pat, B, " ".join(f"{v} {fmt_us(row[v])}" for v in names), f"| dense {row['dense']:.1f} | blocks",
                  [row[v + "_blocks"] for v in names], "err %.1e" % max(errs) if errs else "err -", flush=True)
    if args.no_chains or not kernel["chains"]:
        return 0
    for ch in CHAINS:
        p1, p2 = KSPattern.of(ch[0]), KSPattern.of(ch[1])
        for B in (1, 4, 8, 16, 32):
            if B * {2: 2, 3: 4}.get(ch[1][3], 8) > 64:  # the chain's launch serves <= 64 columns
                continue
            n = sets(2 * (p1.nnz + p2.nnz))
            w1s = [p1.random_weights(dtype=dt, device=dev) for _ in range(n)]
            w2s = [p2.random_weights(dtype=dt, device=dev) for _ in range(n)]
            xs = [torch.randn(B, p1.in_features, dtype=dt, device=dev) for _ in range(n)]
            y = torch.empty(B, p2.out_features, dtype=dt, device=dev)
            ref = chain_ref(xs[0], [w1s[0], w2s[0]], None, "gelu")
            row = {"chain": ch, "rows": B, "sets": n, "gpu": torch.cuda.get_device_name()}
            for v, m in mods.items():
                row[v + "_err"] = check(lambda: m.run_chain(xs[0], w1s[0], w2s[0], y, *ch[1][1:]), y, ref)
                row[v] = timed(lambda x, a, b, m=m: m.run_chain(x, a, b, y, *ch[1][1:]), list(zip(xs, w1s, w2s)))
            append_row(args.out, row)
            print(ch, B, " ".join(f"{v} {row[v]:.1f}" for v in names), "err %.1e" % max(row[v + "_err"] for v in names), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the finished rows are in the output file", file=sys.stderr)
        sys.exit(130)
