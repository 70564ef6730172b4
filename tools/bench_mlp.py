"""MLP block, dense vs KS: Linear(d, h) -> GELU -> Linear(h, d) against what ks_surgery makes of it,
KSLinear(auto chain, GELU folded into its epilogue) -> KSLinear(auto chain), per token count.

On a GPU each block is timed as CUDA-graph replays (device time; --eager: per-call wall time with
the host's work included), median over rotating fresh inputs (ks_ops.bench.time_cuda), with the
ceilings measured in the same run and each block's roofline floor: every layer reads its input and
weights and writes its output once. On the CPU (a smoke run) wall-clock medians. The issues'
targets: fused-chain (1024 -> 4096 -> 1024 at 25088 tokens, bf16: KS <= 0.6x dense) and decode
(tokens 1-256 under CUDA graphs: KS <= 0.7x dense at 4096 -> 16384, <= 1.0x at 1024 -> 4096).
Rows go to a JSONL file as they finish (a finished row survives Ctrl-C).

Weights: by default each block is one module, so every weight smaller than L2 is read from L2 on
every replay after the first ("hot"). --cold gives each call its own copy of the block (fresh random
weights, copies enough that a rotation exceeds 3x L2, at most 64), as a decoder that streams each
layer's weights from HBM sees them; rows carry "weights" and "weight_sets".

  python tools/bench_mlp.py --blocks 1024x4096,4096x16384 --tokens 1,4,16,64,256 --dtypes bf16,fp16
  python tools/bench_mlp.py --blocks 1024x4096 --tokens 25088 --dtypes bf16
  python tools/bench_mlp.py --blocks 384x1536,1024x4096 --tokens 1,4,16 --cold
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ks_ops import KSLinear, auto_chain  # noqa: E402
from ks_ops.bench import append_row, measure_ceilings, rotation_count, time_cuda  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def blocks_of(spec: str) -> list[tuple[int, int]]:
    out = []
    for item in spec.split(","):
        try:
            d, h = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--blocks: each block is DxH (e.g. 1024x4096), got {item!r}") from None
        if d < 1 or h < 1:
            raise SystemExit(f"--blocks: sizes must be positive, got {item!r}")
        out.append((d, h))
    return out


def dense_block(d: int, h: int, device, dtype) -> nn.Module:
    return nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, d)).to(device=device, dtype=dtype).eval()


def ks_block(d: int, h: int, device, dtype) -> nn.Module:
    return nn.Sequential(KSLinear(auto_chain(d, h), activation="gelu"),
                         KSLinear(auto_chain(h, d))).to(device=device, dtype=dtype).eval()


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def weight_bytes(block: nn.Module) -> int:
    return tensor_bytes(block.parameters())


def copies_of(make, nbytes, cold: bool, device) -> list:
    """One object from make() (hot), or as many independently initialised ones as make a rotation of
    their `nbytes(obj)` larger than 3x L2, at most 64 (cold: time_cuda cycles its argument sets, a
    copy per call)."""
    first = make()
    if not cold:
        return [first]
    n = rotation_count(nbytes(first), device if device.type == "cuda" else None, cap=64)
    return [first] + [make() for _ in range(n - 1)]


def block_copies(make, cold: bool, device) -> list[nn.Module]:
    return copies_of(make, weight_bytes, cold, device)


def sample_s(copies: int) -> float:
    """time_cuda's minimum sample: long enough that one graph replays every copy (at most 64 calls)."""
    return 2e-4 if copies == 1 else 2e-3


def block_bytes_flops(block: nn.Module, tokens: int, esz: int) -> tuple[int, int]:
    """Each linear layer reads its input and its weights and writes its output once."""
    nbytes = flops = 0
    for layer in block:
        if isinstance(layer, nn.Linear):
            i, o = layer.in_features, layer.out_features
            nbytes += esz * (tokens * (i + o) + i * o + o)
            flops += 2 * tokens * i * o
        elif isinstance(layer, KSLinear):
            i, o = layer.in_features, layer.out_features
            weights = sum(p.numel() for p in layer.parameters())
            nbytes += esz * (tokens * (i + o) + weights)
            flops += sum(2 * tokens * f.numel() for f in layer.factors)
    return nbytes, flops


def time_cpu(fn, arg_sets, samples: int) -> dict:
    for a in arg_sets[:2]:
        fn(*a)
    times = []
    for s in range(samples):
        t0 = time.perf_counter()
        fn(*arg_sets[s % len(arg_sets)])
        times.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(times), "min_s": min(times), "samples": len(times), "inner": 1}


def counts_and_dtypes(counts: str, dtypes: str, flag: str) -> tuple[list[int], list[torch.dtype]]:
    """The comma lists of row counts (flag names them in errors) and dtypes."""
    try:
        ns = [int(t) for t in counts.split(",")]
        dts = [DTYPES[t] for t in dtypes.split(",")]
    except (ValueError, KeyError):
        raise SystemExit(f"{flag}: integers; --dtypes: of {list(DTYPES)}; got {counts!r}, {dtypes!r}") from None
    if any(n < 1 for n in ns):
        raise SystemExit(f"{flag}: counts must be positive")
    return ns, dts


def run_meta(device: torch.device, timing: str):
    """(cuda, ceilings measured now on a GPU else None, the fields every row carries)."""
    cuda = device.type == "cuda"
    ceil = measure_ceilings() if cuda else None
    meta = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "torch": torch.__version__,
            "timing": timing if cuda else "cpu-wall", "date": time.strftime("%Y-%m-%d")}
    if ceil is not None:
        meta["ceilings"] = ceil.as_dict()
    return cuda, ceil, meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", default="1024x4096,4096x16384", help="DxH list: d -> h -> d blocks")
    ap.add_argument("--tokens", default="1,4,16,64,256,4096,25088", help="comma list of token counts")
    ap.add_argument("--dtypes", default="bf16", help=f"comma list of {','.join(DTYPES)}")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--eager", action="store_true", help="time eager calls (host included), not graph replays")
    ap.add_argument("--cold", action="store_true", help="a copy of the block per call, weights cold in L2 (see above)")
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--max-row-s", type=float, default=0.5, help="timed seconds per block and row, at most")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_mlp.jsonl"))
    args = ap.parse_args(argv)

    blocks = blocks_of(args.blocks)
    tokens, dtypes = counts_and_dtypes(args.tokens, args.dtypes, "--tokens")
    device = torch.device(args.device)
    cuda, ceil, meta = run_meta(device, "eager" if args.eager else "cuda-graph")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    print(f"{'block':>12} {'dtype':>5} {'tokens':>6} {'dense us':>9} {'ks us':>9} {'ks/dense':>8} {'ks/floor':>8}")
    torch.manual_seed(0)
    for d, h in blocks:
        for dtype in dtypes:
            esz = torch.tensor([], dtype=dtype).element_size()
            # ks: what the op's rule runs (the fused chain kernel where it picks it).
            models = {"dense": block_copies(lambda: dense_block(d, h, device, dtype), args.cold, device),
                      "ks": block_copies(lambda: ks_block(d, h, device, dtype), args.cold, device)}
            for n in tokens:
                row = {"block": [d, h], "dtype": str(dtype).replace("torch.", ""), "tokens": n, **meta,
                       "weights": "cold" if args.cold else "hot"}
                for name, copies in models.items():
                    # (x, block) pairs: at least 3 inputs, every copy once per rotation
                    sets = [(torch.randn(n, d, device=device, dtype=dtype), copies[i % len(copies)])
                            for i in range(max(3, len(copies)))]
                    fn = torch.no_grad()(lambda x, block: block(x))
                    r = (time_cuda(fn, sets, samples=args.samples, max_total_s=args.max_row_s, graph=not args.eager,
                                   min_sample_s=sample_s(len(copies)))
                         if cuda else time_cpu(fn, sets, min(args.samples, 5)))
                    row[f"{name}_weight_sets"] = len(copies)
                    model = copies[0]
                    nbytes, flops = block_bytes_flops(model, n, esz)
                    row[f"{name}_us"] = r["median_s"] * 1e6
                    row[f"{name}_bytes"], row[f"{name}_flops"] = nbytes, flops
                    if ceil is not None:
                        row[f"{name}_floor_us"] = max(flops / ceil.rate(dtype), nbytes / ceil.copy_bytes_per_s) * 1e6
                row["ks_over_dense"] = row["ks_us"] / row["dense_us"]
                append_row(args.out, row)
                floor = f"{row['ks_us'] / row['ks_floor_us']:8.2f}" if ceil is not None else f"{'-':>8}"
                print(f"{d:>5}x{h:<6} {row['dtype']:>5} {n:>6} "
                      f"{row['dense_us']:9.1f} {row['ks_us']:9.1f} {row['ks_over_dense']:8.3f} {floor}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the finished rows are in the output file", file=sys.stderr)
        sys.exit(130)
