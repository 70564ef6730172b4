"""Energy of one KS matmul per backend: joules and time per product y = x·Kᵀ for the fused op
(``kernel``), the Monarch-style ``bmm`` baseline and ``dense`` (F.linear on K materialized once),
measured with ks_ops.meters windows (Zeus / NVML counter; at least 20 counter updates each) and
the profiler's warm-up and window logic, backends interleaved within each trial, operands
rotated past the L2 cache as in the latency benchmark (ks_ops.bench, tools/bench_matmul.py).

    python tools/bench_energy.py                                   # ViT-S/16 factors + 16 grid patterns
    python tools/bench_energy.py --patterns vit --dtypes bfloat16 --trials 5
    python tools/bench_energy.py --patterns "4,64,64,4;1,256,256,4" --out my.jsonl

One JSON row per (pattern, dtype, backend) is appended to --out as each pattern finishes; rows
already there (same pattern, dtype, batch, backend, device) are skipped, so a rerun resumes. The
summary gives the kernel's energy ratio to the best baseline (paired over trials, 95% CI).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch
from bench_matmul import QUICK, VIT  # noqa: F401  (this directory; it puts the repo root on sys.path)

from ks_ops import KSPattern, backends
from ks_ops.bench import ks_bytes, ks_flops, rotation_count
from ks_ops.meters import select_meter
from ks_ops.profile.runner import measure, warm_up
from ks_ops.profile.stats import mean_ci

# The latency benchmark's sets: the paper's ViT-S/16 factors, and the 16 baseline patterns of the
# H200 note (a subset of the paper's grid).
PATTERN_SETS = {"vit": VIT, "quick": QUICK}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BASELINES = ("bmm", "dense")


def parse_patterns(text: str) -> list[tuple[int, ...]]:
    """'vit,quick' (set names), '4,64,64,4;1,256,256,4' (patterns) or a mix split by ';'."""
    out = []
    for part in text.split(";"):
        names = [t.strip() for t in part.split(",")]
        if all(n in PATTERN_SETS for n in names):
            found = [p for n in names for p in PATTERN_SETS[n]]
        else:
            found = [KSPattern.of([int(v) for v in names]).shape]
        out += [p for p in found if p not in out]
    return out


def args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patterns", default="vit,quick",
                   help="set names (vit, quick) as 'vit,quick', patterns as 'a,b,c,d;a,b,c,d', or both split by ';'")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--backends", default="kernel,bmm,dense")
    p.add_argument("--batch", type=int, default=25088, help="rows of x (the paper's 128 x 196)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--meter", default="auto", choices=("auto", "zeus", "nvml", "time"))
    p.add_argument("--warmup-s", type=float, default=0.5)
    p.add_argument("--window-s", type=float, default=2.0, help="raised to the meter's minimum window")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--out", default="bench_energy.jsonl")
    return p


def products(pattern, dtype, batch, device, names):
    """The product of each backend as a no-argument step. Steps cycle through enough operand sets
    to exceed the L2 cache (ks_ops.bench.rotation_count), as the latency benchmark does, so that
    repeated calls are not served from L2."""
    p = KSPattern.of(pattern)
    nbytes = ks_bytes(pattern, batch, torch.empty((), dtype=dtype).element_size())
    sets = []
    for _ in range(rotation_count(nbytes, device if device.type == "cuda" else None)):
        w = p.random_weights(device=device, dtype=dtype)
        # dense's matrix is built once per set (backends.dense would rebuild it on every call)
        sets.append((torch.randn(batch, p.in_features, device=device, dtype=dtype), w, p.to_dense(w)))
    table = {"kernel": lambda x, w, k: backends.kernel(x, w), "bmm": lambda x, w, k: backends.bmm(x, w),
             "einsum": lambda x, w, k: backends.einsum(x, w),
             "dense": lambda x, w, k: torch.nn.functional.linear(x, k)}

    def cycling(fn):
        operands = itertools.cycle(sets)
        return lambda: fn(*next(operands))

    return {n: cycling(table[n]) for n in names}, len(sets)


def bench_cell(pattern, dtype_name, args, meter, device_name) -> list[dict]:
    """All backends of one (pattern, dtype), interleaved per trial; one row per backend."""
    device = torch.device(args.device)
    steps, rotation = products(pattern, DTYPES[dtype_name], args.batch, device, args.backends.split(","))
    window = meter.target_window_s(args.window_s)
    per_step, errors = {}, {}
    with torch.inference_mode():
        for name, step in steps.items():
            try:
                per_step[name] = warm_up(step, args.warmup_s, device)
            except Exception as e:  # e.g. no fused kernel for this device: keep the others
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        trials = {name: [] for name in per_step}
        for _ in range(args.trials):
            for name in per_step:
                got, iters = measure(meter, name, steps[name], max(1, math.ceil(window / per_step[name])), window)
                per_step[name] = got.time_s / iters
                trials[name].append((got.time_s / iters, None if got.energy_j is None else got.energy_j / iters))
    rows = []
    for name in steps:
        row = {"pattern": list(pattern), "dtype": dtype_name, "batch": args.batch, "backend": name,
               "device": device_name, "meter": meter.name, "flops": ks_flops(pattern, args.batch),
               "bytes": ks_bytes(pattern, args.batch, torch.empty((), dtype=DTYPES[dtype_name]).element_size()),
               "rotation": rotation}
        if name in errors:
            rows.append({**row, "error": errors[name]})
            continue
        t = [s for s, _ in trials[name]]
        j = [e for _, e in trials[name]]
        row.update(trials=len(t), time_s_trials=t, time_s=mean_ci(t)[0], time_s_ci=mean_ci(t)[1])
        if all(v is not None for v in j):
            row.update(j_trials=j, j=mean_ci(j)[0], j_ci=mean_ci(j)[1], power_w=sum(j) / sum(t))
        rows.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return rows


def _key(row) -> tuple:
    return tuple(row["pattern"]), row["dtype"], row["batch"], row["backend"], row["device"]


def summary(rows: list[dict]) -> str:
    """Per (pattern, dtype): each backend's J (or time) per matmul and the kernel's paired ratio
    to the best baseline; the last line is the geometric mean of the ratios."""
    from tabulate import tabulate

    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((tuple(r["pattern"]), r["dtype"], r["batch"]), {})[r["backend"]] = r
    energy = all("j" in r for r in rows if "error" not in r)
    metric = "j" if energy else "time_s"
    table, logs = [], []
    for (pattern, dtype, batch), by in cells.items():
        line = {"pattern": str(pattern), "dtype": dtype, "batch": batch}
        for name, r in by.items():
            line[f"{name} {'mJ' if energy else 'µs'}"] = (
                r.get("error", "error")[:30] if metric not in r
                else f"{r[metric] * (1e3 if energy else 1e6):.4g}")
        base = [by[b] for b in BASELINES if b in by and metric in by[b]]
        kern = by.get("kernel")
        if base and kern and metric in kern:
            best = min(base, key=lambda r: r[metric])
            ratios = [k / b for k, b in zip(kern[f"{'j' if energy else 'time_s'}_trials"],
                                            best[f"{'j' if energy else 'time_s'}_trials"])]
            mean, ci = mean_ci(ratios)
            line["best baseline"] = best["backend"]
            line["kernel / best"] = f"{mean:.3f}" + ("" if math.isnan(ci) else f" ± {ci:.3f}")
            logs.append(math.log(mean))
        table.append(line)
    text = tabulate(table, headers="keys", tablefmt="github")
    what = "energy" if energy else "time (no energy meter)"
    if logs:
        text += f"\nkernel / best baseline, {what} per matmul, geometric mean over {len(logs)} cells: " \
                f"{math.exp(sum(logs) / len(logs)):.3f}"
    return text


def main(argv=None) -> int:
    args = args_parser().parse_args(argv)
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    meter = select_meter(device, args.meter)
    print(f"meter: {meter.describe()}", flush=True)
    have = {_key(r) for r in done}
    names = args.backends.split(",")
    cells = [(p, d) for p in parse_patterns(args.patterns) for d in args.dtypes.split(",")]
    for i, (pattern, dtype) in enumerate(cells):
        if all((pattern, dtype, args.batch, n, device_name) in have for n in names):
            continue
        try:
            rows = bench_cell(pattern, dtype, args, meter, device_name)
        except KeyboardInterrupt:
            print(f"interrupted: {out} keeps the finished patterns; rerun the same command to resume")
            break
        with out.open("a") as f:  # whole rows per finished cell: an interrupted run resumes cleanly
            f.writelines(json.dumps(r) + "\n" for r in rows)
        done += rows
        brief = ", ".join(f"{r['backend']} " + (r["error"][:40] if "error" in r else
                          f"{r['time_s'] * 1e6:.1f} µs" + (f" {r['j'] * 1e3:.3f} mJ" if "j" in r else ""))
                          for r in rows)
        print(f"[{i + 1}/{len(cells)}] {KSPattern.of(pattern)} {dtype}: {brief}", flush=True)
    mine = [r for r in done if r["batch"] == args.batch and r["device"] == device_name]
    print(summary(mine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
