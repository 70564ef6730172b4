"""One call of ks::matmul by a given plan (or, as "linear", nn.Linear on a dense matrix of K's shape),
wrapped in cudaProfilerStart / Stop, for Nsight Compute. Three warm-up calls run first, outside
the profiled range. Example (benchmarks/results/ncu10_h100/):

    ncu --profile-from-start off --section SpeedOfLight --section WarpStateStats \\
        python tools/ncu_one.py 1,2048,512,2 16 stream
"""
import argparse

import torch

from ks_ops import KSPattern
from ks_ops.ops import PLANS, matmul_with_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pattern", help="a,b,c,d")
    ap.add_argument("batch", type=int)
    ap.add_argument("plan", choices=PLANS + ("linear",), help="a plan of ks::matmul, or the dense Linear baseline")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--batch-last", action="store_true")
    args = ap.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    p = KSPattern.of(tuple(int(v) for v in args.pattern.split(",")))
    shape = (p.in_features, args.batch) if args.batch_last else (args.batch, p.in_features)
    x = torch.randn(*shape, dtype=dtype, device="cuda")
    w = p.random_weights(dtype=dtype, device="cuda")
    if args.plan == "linear":
        dense = torch.randn(p.out_features, p.in_features, dtype=dtype, device="cuda")
        call = (lambda: dense @ x) if args.batch_last else (lambda: torch.nn.functional.linear(x, dense))
    else:
        call = lambda: matmul_with_plan(x, w, args.plan, batch_last=args.batch_last)  # noqa: E731
    for _ in range(3):
        call()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    call()
    torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
