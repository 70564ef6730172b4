#!/usr/bin/env python3
"""Latency of ks::matmul on the GPU against the permute+bmm method, dense F.linear and the
roofline floor (ceilings measured in the same run).

    python tools/bench_matmul.py --set quick --dtype bf16,fp32 --layout bf,bl --batch 25088 \
        --out benchmarks/results/quick.jsonl

Rows are appended to the JSONL as they finish; a rerun skips rows already there (resumable).
At the end an atomic JSON (rows + ceilings + GPU, torch, date) is written next to the JSONL and a
summary table is printed: median time/floor per backend, speedups vs bmm and dense, win rates.
--op weight_grad times ks::weight_grad instead (16-bit batch-first: the fused kernel) against the
bmm path of the same op (ks::_weight_grad_plan "bmm") and the dense weight gradient grad_yᵀ·x; its floor is the
forward's (the same bytes move: x and grad_y read, w-sized output written).
Sets: paper = the paper's full grid (a and d in {1,2,3,...,128}, b,c in {48,...,1024} with b = c,
4c or c/4; 2402 patterns at B = 25088), sample = a fixed, seeded sample of it (--sample N, default
48), grid = the 376-pattern grid of earlier rounds (d in {4,16,64}, with the paper code's skipped
(b,c) pairs; ../shared/notes/h200.md), quick = the 16 baseline patterns of that note, vit = the six
ViT-S/16 factors, mlp = the factors of the `auto` chains of the MLP blocks 384-1536, 768-3072,
1024-4096 and 4096-16384 (both layers; decode sizes: --batch 1,4,16,64,256); --patterns 'a,b,c,d;...' times any others. A pattern too large for a batch
(B*a*c*d or B*a*b*d >= 2^31) is left out at that batch.
--plans fused,bmm,... also times each named plan of the op (ks_ops.ops.PLANS, through the private
ks::_matmul_plan) where it serves the problem: columns plan_<name>_us, plan_<name>_err.

Over several GPUs: ``torchrun --nproc_per_node N tools/bench_matmul.py ...``. Rank r takes every
N-th row of the (deterministic) list of rows still to do and appends its rows to
``<out>.rank<r>.jsonl`` as they finish; at the end rank 0 merges them into ``--out``. A rerun (with
any N) skips every row in ``--out`` or in a rank file, so an interrupted sweep resumes.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ks_ops import KSPattern  # noqa: E402
from ks_ops.backends import bmm as bmm_backend  # noqa: E402
from ks_ops.bench import Ceilings, ks_bytes, ks_floor_s, ks_flops, measure_ceilings, rotation_count, time_cuda  # noqa: E402
from ks_ops.ops import PLANS, matmul_with_plan, plan_for  # noqa: E402
from ks_ops.ops import plan_serves as ops_plan_serves  # noqa: E402
from ks_ops.reference import rel_err  # noqa: E402

GRID_A = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
GRID_BC = [48, 64, 96, 128, 192, 256, 384, 512, 768, 1024]
GRID_SKIP = {(1024, 256), (128, 512), (64, 256)}
QUICK = [
    (2, 48, 192, 1), (1, 192, 48, 2), (6, 64, 64, 1), (1, 768, 192, 2), (6, 64, 256, 1),
    (1, 128, 128, 3), (4, 64, 64, 4), (1, 64, 64, 16), (16, 64, 256, 1), (1, 256, 256, 4),
    (8, 128, 128, 1), (64, 48, 48, 1), (1, 48, 48, 64), (2, 1024, 256, 1), (1, 96, 384, 8),
    (32, 128, 32, 1),
]
VIT = [(2, 48, 192, 1), (1, 192, 48, 2), (6, 64, 64, 1), (1, 768, 192, 2), (6, 64, 256, 1), (1, 128, 128, 3)]
# MLP blocks d -> h -> d of ViT-S, ViT-B / BERT-base, GPT-2 medium, GPT-2 XL-like widths (tools/bench_mlp.py)
MLP_WIDTHS = [(384, 1536), (768, 3072), (1024, 4096), (4096, 16384)]


def mlp_patterns():
    """The factors of the `auto` chains (ks_ops.auto_chain, the chains ks_surgery gives) of both
    layers of the MLP_WIDTHS blocks, each once: the products issue decode's targets run."""
    from ks_ops import auto_chain

    out = []
    for d, h in MLP_WIDTHS:
        for p in auto_chain(d, h) + auto_chain(h, d):
            dims = (p.a, p.b, p.c, p.d)
            if dims not in out:
                out.append(dims)
    return out
DTYPES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
          "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}


def fits(pattern, batch: int) -> bool:
    a, b, c, d = pattern
    return batch * a * c * d < 2**31 and batch * a * b * d < 2**31


def paper_patterns() -> list[tuple[int, int, int, int]]:
    """The paper's full grid at its batch 25088: d ranges like a (2402 patterns)."""
    return [(a, b, c, d) for a in GRID_A for b in GRID_BC for c in GRID_BC for d in GRID_A
            if (b == c or b == 4 * c or c == 4 * b) and fits((a, b, c, d), 25088)]


def sample_patterns(n: int, seed: int = 0) -> list[tuple[int, int, int, int]]:
    """A fixed, seeded sample of the paper's full grid (the same patterns on every machine)."""
    import random

    full = paper_patterns()
    return sorted(random.Random(seed).sample(full, min(n, len(full))))


def grid_patterns(batch: int) -> list[tuple[int, int, int, int]]:
    """The earlier rounds' 376-pattern grid: d in {4, 16, 64}, the paper code's skipped (b, c)."""
    skip = GRID_SKIP | {(c, b) for b, c in GRID_SKIP}
    return [(a, b, c, d) for a in GRID_A for b in GRID_BC for c in GRID_BC for d in (4, 16, 64)
            if (b == c or b == 4 * c or c == 4 * b) and (b, c) not in skip and fits((a, b, c, d), batch)]


def parse_patterns(text: str) -> list[tuple[int, int, int, int]]:
    """'a,b,c,d;a,b,c,d;...' (or '/' or spaces between patterns) -> patterns (set "custom")."""
    out = []
    for item in filter(None, re.split(r"[;/\s]+", text)):
        try:
            dims = tuple(int(v) for v in item.split(","))
            KSPattern.of(dims)  # the pattern's own validation and message
            out.append(dims)
        except ValueError as e:
            raise SystemExit(f"--patterns: {item!r}: {e}") from None
    return out


def patterns_of(name: str, batch: int, custom=(), sample: int = 48):
    pats = _patterns_of(name, custom, sample)
    return [p for p in pats if fits(p, batch)]


def _patterns_of(name: str, custom=(), sample: int = 48):
    if name == "custom":
        return list(custom)
    if name == "paper":
        return paper_patterns()
    if name == "sample":
        return sample_patterns(sample)
    if name == "grid":
        return grid_patterns(25088)  # the paper's grid is defined at its batch
    if name == "quick":
        return list(QUICK)
    if name == "vit":
        return list(VIT)
    if name == "mlp":
        return mlp_patterns()
    raise SystemExit(f"unknown set {name!r}")


def row_key(r: dict) -> tuple:
    return (r.get("op", "matmul"), r["set"], tuple(r["pattern"]), r["batch"], r["dtype"], r["layout"])


def weight_grad_bmm(gy, x, pattern, bl):
    """ks::weight_grad on its ATen permute + bmm path."""
    return torch.ops.ks._weight_grad_plan(gy, x, list(pattern), "bmm", batch_last=bl)


def plan_serves(name, pattern, x, w, bl, args) -> bool:
    """Whether timing plan `name` makes sense here: it serves the problem and its extra memory
    (dense K, densified blocks) stays within --max-dense-bytes."""
    a, b, c, d = pattern
    esz = x.element_size()
    if name == "dense" and a * a * b * c * d * d * esz > args.max_dense_bytes:
        return False
    if name == "blockdense" and a * b * c * d * d * esz > args.max_dense_bytes:
        return False
    major, minor = torch.cuda.get_device_capability()
    batch = x.shape[-1] if bl else x.numel() // x.shape[-1]
    return ops_plan_serves(name, pattern, batch, x.dtype, batch_last=bl,
                           allow_tf32=torch.backends.cuda.matmul.allow_tf32, sm=major * 10 + minor)


def run_row(op, setname, pattern, batch, dname, layout, ceil: Ceilings, args) -> dict:
    dtype, tf32 = DTYPES[dname]
    torch.backends.cuda.matmul.allow_tf32 = tf32
    p = KSPattern.of(pattern)
    bl = layout == "bl"
    esz = torch.empty((), dtype=dtype).element_size()
    nbytes = ks_bytes(pattern, batch, esz)
    flops = ks_flops(pattern, batch)
    floor = ks_floor_s(pattern, batch, dtype, ceil, tf32)
    nsets = rotation_count(nbytes)
    sets = []
    for _ in range(nsets):
        shape = (p.in_features, batch) if bl else (batch, p.in_features)
        x = torch.randn(shape, dtype=dtype, device="cuda")
        if op == "weight_grad":  # (grad_y, x)
            gshape = (p.out_features, batch) if bl else (batch, p.out_features)
            sets.append((torch.randn(gshape, dtype=dtype, device="cuda"), x))
        else:  # (x, w)
            sets.append((x, p.random_weights(dtype=dtype, device="cuda")))
    row = {"op": op, "set": setname, "pattern": list(pattern), "batch": batch, "dtype": dname, "layout": layout,
           "flops": flops, "bytes": nbytes, "floor_us": floor * 1e6, "rotation": nsets,
           "timing": "eager" if args.no_graph else "cuda-graph"}
    samples = args.samples
    budget = args.max_row_s

    if op == "weight_grad":
        def kern(gy, x):
            return torch.ops.ks.weight_grad(gy, x, list(pattern), batch_last=bl)

        def bmm(gy, x):
            return weight_grad_bmm(gy, x, pattern, bl)
    else:
        def kern(x, w):
            return torch.ops.ks.matmul(x, w, batch_last=bl)

        def bmm(x, w):
            return bmm_backend(x, w, batch_last=bl)

    g = not args.no_graph
    r = time_cuda(kern, sets, samples=samples, max_total_s=budget, graph=g)
    row["kernel_us"] = r["median_s"] * 1e6
    row["kernel_min_us"] = r["min_s"] * 1e6
    if "bmm" in args.backends:
        r = time_cuda(bmm, sets, samples=samples, max_total_s=budget, graph=g)
        row["bmm_us"] = r["median_s"] * 1e6
    row["plan"] = plan_for(pattern, batch, dtype, batch_last=bl, allow_tf32=tf32,
                           sm=torch.cuda.get_device_capability()[0] * 10 + torch.cuda.get_device_capability()[1])
    if op == "matmul":
        for name in args.plans:
            if not plan_serves(name, pattern, sets[0][0], sets[0][1], bl, args):
                continue
            fn = lambda x, w, name=name: matmul_with_plan(x, w, name, batch_last=bl)  # noqa: E731
            r = time_cuda(fn, sets, samples=samples, max_total_s=budget, graph=g)
            row[f"plan_{name}_us"] = r["median_s"] * 1e6
            yp = fn(*sets[0])
            row[f"plan_{name}_err"] = rel_err(yp, bmm(*sets[0]))
            del yp
    # Check the kernel against bmm on the first set (same dtype; a loose sanity check only --
    # the tests compare with the float64 reference).
    x0, w0 = sets[0]
    yk, yb = kern(x0, w0), bmm(x0, w0)
    row["err_vs_bmm"] = rel_err(yk, yb)
    row["kernel_finite"] = bool(torch.isfinite(yk).all())
    del yk, yb
    if "dense" in args.backends:
        kbytes = p.out_features * p.in_features * esz
        est = 2.0 * batch * p.out_features * p.in_features / ceil.rate(dtype, tf32)
        if kbytes <= args.max_dense_bytes and est * 1e3 <= args.max_dense_ms:
            k = p.to_dense(w0) if op == "matmul" else None
            if op == "weight_grad":  # the dense layer's weight gradient, (abd x acd)
                if bl:
                    dense = lambda gy, x: gy @ x.T  # noqa: E731
                else:
                    dense = lambda gy, x: gy.T @ x  # noqa: E731
            elif bl:
                dense = lambda x, w: k @ x  # noqa: E731
            else:
                dense = lambda x, w: torch.nn.functional.linear(x, k)  # noqa: E731
            r = time_cuda(dense, sets, samples=samples, max_total_s=budget, graph=g)
            row["dense_us"] = r["median_s"] * 1e6
            del k
        else:
            row["dense_us"] = None
            row["dense_skipped"] = f"K {kbytes / 2**30:.1f} GiB, est {est * 1e3:.1f} ms"
    del sets
    return row


def summarize(rows: list[dict]) -> str:
    try:
        from tabulate import tabulate
    except ImportError:  # pragma: no cover
        tabulate = None
    groups = {}
    for r in rows:
        groups.setdefault((r.get("op", "matmul"), r["set"], r["dtype"], r["layout"], r["batch"]), []).append(r)
    table = []
    for (op, s, dt, lay, batch), rs in sorted(groups.items()):
        kf = [r["kernel_us"] / r["floor_us"] for r in rs]
        bf = [r["bmm_us"] / r["floor_us"] for r in rs if r.get("bmm_us")]
        df = [r["dense_us"] / r["floor_us"] for r in rs if r.get("dense_us")]
        sb = [r["bmm_us"] / r["kernel_us"] for r in rs if r.get("bmm_us")]
        sd = [r["dense_us"] / r["kernel_us"] for r in rs if r.get("dense_us")]
        best = [min(x for x in (r.get("bmm_us"), r.get("dense_us")) if x) / r["kernel_us"]
                for r in rs if r.get("bmm_us") or r.get("dense_us")]
        # the best of everything timed in the row (baselines and plans), and the op against it
        oracle = [min(v for k, v in r.items() if k.endswith("_us") and v and k != "floor_us"
                      and not k.endswith("min_us")) for r in rs]
        of = [o / r["floor_us"] for o, r in zip(oracle, rs)]
        ok = [r["kernel_us"] <= 1.05 * o for o, r in zip(oracle, rs)]
        med = lambda v: f"{statistics.median(v):.2f}" if v else "-"  # noqa: E731
        win = lambda v: f"{100.0 * sum(x > 1 for x in v) / len(v):.0f}%" if v else "-"  # noqa: E731
        table.append([op, s, dt, lay, batch, len(rs), med(kf), f"{max(kf):.2f}", sum(x > 2 for x in kf),
                      med(bf), med(df), med(sb), med(sd), win(sd), win(best), med(of),
                      f"{100.0 * sum(ok) / len(ok):.0f}%",
                      f"{max(r['err_vs_bmm'] for r in rs):.1e}"])
    head = ["op", "set", "dtype", "layout", "B", "n", "kern/floor med", "max", ">2x", "bmm/floor", "dense/floor",
            "x vs bmm", "x vs dense", "win dense", "win best", "best/floor", "op<=1.05best", "max err"]
    if tabulate:
        return tabulate(table, headers=head, tablefmt="github")
    return "\n".join(" | ".join(str(c) for c in row) for row in [head] + table)


def launcher_rank() -> tuple[int, int]:
    """(rank, world size) under torchrun (its RANK / WORLD_SIZE variables), else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_file(out: str, rank: int) -> str:
    return f"{os.path.splitext(out)[0]}.rank{rank}.jsonl"


def rank_files(out: str) -> list[str]:
    import glob

    return sorted(glob.glob(f"{glob.escape(os.path.splitext(out)[0])}.rank*.jsonl"))


def read_rows(path: str) -> dict:
    """The rows of a JSONL file by row_key, the last one of a key winning (none if it does not
    exist). Rows with an error count as done, as the resume has always treated them."""
    rows = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    r = json.loads(line)
                    rows[row_key(r)] = r
    return rows


def merge_rank_files(out: str) -> dict:
    """Moves the rows of every rank file into `out` (rewritten atomically: its own rows, then the
    new ones, each row once), deletes the rank files, returns all rows by key."""
    rows = read_rows(out)
    for path in rank_files(out):
        for key, r in read_rows(path).items():
            rows.setdefault(key, r)
    with open(out + ".tmp", "w") as f:
        for r in rows.values():
            f.write(json.dumps(r) + "\n")
    os.replace(out + ".tmp", out)
    for path in rank_files(out):
        os.remove(path)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", default="quick", help="paper, sample, grid, quick, vit or mlp (comma list)")
    ap.add_argument("--patterns", default=None,
                    help="'a,b,c,d;a,b,c,d;...': time these (the set named custom) instead of --set")
    ap.add_argument("--op", default="matmul", choices=["matmul", "weight_grad"])
    ap.add_argument("--dtype", default="fp32,tf32,bf16,fp16")
    ap.add_argument("--layout", default="bf", help="bf, bl or bf,bl")
    ap.add_argument("--batch", default="25088", help="comma list of batch sizes")
    ap.add_argument("--backends", default="kernel,bmm,dense")
    ap.add_argument("--plans", default="", help=f"comma list of plans to time as well: {','.join(PLANS)}")
    ap.add_argument("--sample", type=int, default=48, help="patterns in the seeded sample of the paper grid")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_matmul.jsonl"))
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--max-row-s", type=float, default=0.25, help="timed seconds per backend and row, at most")
    ap.add_argument("--max-dense-ms", type=float, default=30.0, help="skip dense where its estimate exceeds this")
    ap.add_argument("--max-dense-bytes", type=float, default=4 * 2**30)
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="start no new row after this long")
    ap.add_argument("--ceilings", default=None, help="JSON file of ceilings to reuse (else measured now)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--no-graph", action="store_true",
                    help="time eager calls (host overhead included) instead of CUDA-graph replays")
    args = ap.parse_args(argv)
    args.backends = args.backends.split(",")
    args.plans = [p for p in args.plans.split(",") if p]
    for p in args.plans:
        if p not in PLANS:
            raise SystemExit(f"--plans: unknown plan {p!r}; choose from {', '.join(PLANS)}")
    custom = parse_patterns(args.patterns) if args.patterns else []
    if custom:
        args.set = "custom"

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    rank, world = launcher_rank()
    done = {}
    for path in [args.out] + rank_files(args.out):
        done.update(read_rows(path))
    if args.summary_only:
        print(summarize(list(done.values())))
        return

    if world > 1:
        import torch.distributed as dist

        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
        dist.init_process_group("gloo")  # a barrier before the merge, nothing else
    t0 = time.time()
    meta_path = os.path.splitext(args.out)[0] + ".ceilings.json"
    if args.ceilings and os.path.exists(args.ceilings):
        ceil = Ceilings(**json.load(open(args.ceilings)))
    else:
        ceil = measure_ceilings()
        if rank == 0:
            with open(meta_path + ".tmp", "w") as f:
                json.dump(ceil.as_dict(), f, indent=1)
            os.replace(meta_path + ".tmp", meta_path)
    print(f"ceilings: copy {ceil.copy_bytes_per_s / 1e12:.2f} TB/s, fp32 {ceil.fp32_flops / 1e12:.1f}, "
          f"tf32 {ceil.tf32_flops / 1e12:.0f}, bf16 {ceil.bf16_flops / 1e12:.0f}, "
          f"fp16 {ceil.fp16_flops / 1e12:.0f} TFLOP/s ({ceil.gpu})", flush=True)

    todo = []
    for setname in args.set.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            for dname in args.dtype.split(","):
                for layout in args.layout.split(","):
                    for pat in patterns_of(setname, batch, custom, args.sample):
                        key = (args.op, setname, tuple(pat), batch, dname, layout)
                        if key not in done:
                            todo.append(key)
    todo = todo[rank::world]
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **k: it  # noqa: E731
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
            "date": datetime.date.today().isoformat(), "ceilings": ceil.as_dict()}
    stopped = False
    with open(args.out if world == 1 else rank_file(args.out, rank), "a") as f:
        for key in tqdm(todo, desc="bench_matmul", mininterval=5.0):
            if time.time() - t0 > args.budget_s:
                stopped = True
                break
            op, setname, pat, batch, dname, layout = key
            try:
                row = run_row(op, setname, pat, batch, dname, layout, ceil, args)
            except torch.OutOfMemoryError as e:
                row = {"op": op, "set": setname, "pattern": list(pat), "batch": batch, "dtype": dname,
                       "layout": layout, "error": f"OOM: {e}"[:200]}
                torch.cuda.empty_cache()
            row.update({k: meta[k] for k in ("gpu", "torch", "date")})
            if "error" not in row:
                done[key] = row
            f.write(json.dumps(row) + "\n")
            f.flush()
    torch.backends.cuda.matmul.allow_tf32 = False
    if world > 1:
        import torch.distributed as dist

        flag = torch.tensor([int(stopped)])
        dist.all_reduce(flag)  # every rank is done writing (and whether any stopped early)
        stopped = bool(flag.item())
        dist.destroy_process_group()
        if rank != 0:
            return
        done = merge_rank_files(args.out)
    rows = list(done.values())
    final = os.path.splitext(args.out)[0] + ".json"
    with open(final + ".tmp", "w") as f:
        json.dump({**meta, "complete": not stopped, "rows": rows}, f)
    os.replace(final + ".tmp", final)
    print(summarize(rows))
    if stopped:
        print(f"stopped after --budget-s {args.budget_s}: rerun the same command to resume")


if __name__ == "__main__":
    main()
