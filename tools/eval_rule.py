#!/usr/bin/env python3
"""How close the dispatch rule (csrc/ks_plan.h, through ks_ops.ops.plan_for) comes to the best
measured plan, on rows of tools/bench_matmul.py run with --plans:

    python tools/eval_rule.py benchmarks/results/plans1_h100_bf16.jsonl [more.jsonl ...]

Per (dtype, layout, batch): rows where the rule's plan is within 5 % of the best timed plan, the
geometric mean of rule / best, and rows where the rule's plan is slower than min(bmm, dense) by
> 5 %; the rows > 15 % off are listed. A row whose chosen plan was not timed is counted apart.
Pure CPU: the rule is compiled into the CPU build too."""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics

import torch

from ks_ops.ops import plan_for

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "tf32": torch.float32}


def main(paths: list[str], sm: int = 90) -> None:
    groups: dict[tuple, list] = {}
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            times = {k[5:-3]: v for k, v in r.items() if k.startswith("plan_") and k.endswith("_us") and v}
            if not times:
                continue
            plan = plan_for(r["pattern"], r["batch"], DTYPES[r["dtype"]], batch_last=r["layout"] == "bl",
                            allow_tf32=r["dtype"] == "tf32", sm=sm)
            key = (r["dtype"], r["layout"], r["batch"])
            if plan not in times:
                groups.setdefault(key, []).append(None)
                continue
            best = min(times.values())
            base = min([v for v in (r.get("bmm_us"), r.get("dense_us")) if v] or [times[plan]])
            groups.setdefault(key, []).append((times[plan] / best, times[plan] / base, r["pattern"], plan,
                                               min(times, key=times.get)))
    for key, rows in sorted(groups.items()):
        untimed = sum(r is None for r in rows)
        rows = [r for r in rows if r]
        if not rows:
            continue
        geo = math.exp(statistics.mean(math.log(r[0]) for r in rows))
        print(f"{key}: within 5% of the best plan {sum(r[0] <= 1.05 for r in rows)}/{len(rows)}, "
              f"geomean rule/best {geo:.3f}, > 1.05x min(bmm, dense) {sum(r[1] > 1.05 for r in rows)}"
              + (f", rule's plan not timed {untimed}" if untimed else ""))
        for ratio, _, pattern, plan, best_plan in rows:
            if ratio > 1.15:
                print(f"    {tuple(pattern)}: {plan} is {ratio:.2f}x {best_plan}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="jsonl files of tools/bench_matmul.py --plans")
    ap.add_argument("--sm", type=int, default=90, help="compute capability the rule decides for (90: H100 / H200)")
    args = ap.parse_args()
    missing = [p for p in args.rows if not os.path.isfile(p)]
    if missing:
        ap.error(f"no such file: {', '.join(missing)}")
    main(args.rows, sm=args.sm)
