"""ks::chain by each of its paths, against the dense layer it replaces: the data that fits the
chain rule (csrc/ks_plan.h: choose_fused_chain, choose_stream_chain).

Per chain, batch and dtype: the rule's path (what `ks_ops.ops.chain_plan_for` names) and each path
of ks::_chain_plan asked for ('factors', 'fused', 'stream'; a path that does not serve the
arguments, or that this build lacks, is recorded as null), plus nn.Linear followed by the same
activation. Chains come from --chains ('a,b,c,d/a,b,c,d;...', the first factor listed applied
first) or --blocks DxH (the `auto` chains of an MLP block's two layers, d -> h and h -> d). On a GPU
CUDA-graph replays (ks_ops.bench.time_cuda), ceilings measured in the same run; on the CPU a
wall-clock smoke run. Rows go to a JSONL file as they finish. --cold: a copy of the factors, bias
and dense layer per call (as bench_mlp --cold), so that weights smaller than L2 come from HBM.

  python tools/bench_chain.py --blocks 384x1536,1024x4096 --batch 1,4,16,64 --dtypes bf16 --out $OUT/chain.jsonl
  python tools/bench_chain.py --chains "16,64,64,1/1,2048,512,2" --batch 1,16 --activation gelu
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_mlp import (DTYPES, blocks_of, copies_of, counts_and_dtypes, run_meta, sample_s, tensor_bytes,  # noqa: E402
                       time_cpu, weight_bytes)
from ks_ops import KSPattern, auto_chain  # noqa: E402
from ks_ops.bench import append_row, time_cuda  # noqa: E402
from ks_ops.ops import ACTIVATIONS, chain_plan_for, chain_with_plan  # noqa: E402

PATHS = ("factors", "fused", "stream")
_ACT = {"none": lambda t: t, "relu": torch.relu, "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu,
        "gelu_tanh": lambda t: torch.nn.functional.gelu(t, approximate="tanh")}


def chains_of(spec: str) -> list[list[tuple[int, ...]]]:
    out = []
    for item in spec.split(";"):
        try:
            chain = [tuple(int(v) for v in f.split(",")) for f in item.split("/")]
            ps = [KSPattern.of(p) for p in chain]
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--chains: factors 'a,b,c,d' joined by '/', chains by ';'; got {item!r} ({e})") from None
        for p, q in zip(ps, ps[1:]):
            if p.out_features != q.in_features:
                raise SystemExit(f"--chains: {item!r}: a factor's output ({p.out_features}) is not the next one's "
                                 f"input ({q.in_features})")
        out.append(chain)
    return out


def block_chains(spec: str) -> list[list[tuple[int, ...]]]:
    out = []
    for d, h in blocks_of(spec):
        for i, o in ((d, h), (h, d)):
            out.append([p.shape for p in auto_chain(i, o)])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", default="", help="'a,b,c,d/a,b,c,d;...' (first factor first)")
    ap.add_argument("--blocks", default="", help="DxH list: the auto chains of d -> h and h -> d")
    ap.add_argument("--batch", default="1,4,16,64", help="comma list of row counts")
    ap.add_argument("--dtypes", default="bf16", help=f"comma list of {','.join(DTYPES)}")
    ap.add_argument("--activation", default="gelu", choices=ACTIVATIONS)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cold", action="store_true", help="a copy of the weights per call (cold in L2)")
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--max-row-s", type=float, default=0.1, help="timed seconds per path and row, at most")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "bench_chain.jsonl"))
    args = ap.parse_args(argv)

    chains = (chains_of(args.chains) if args.chains else []) + (block_chains(args.blocks) if args.blocks else [])
    if not chains:
        raise SystemExit("give --chains or --blocks")
    batches, dtypes = counts_and_dtypes(args.batch, args.dtypes, "--batch")
    device = torch.device(args.device)
    cuda, ceil, meta = run_meta(device, "cuda-graph")
    meta["activation"] = args.activation
    sm = (lambda c: c[0] * 10 + c[1])(torch.cuda.get_device_capability(device)) if cuda else 0
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    act = _ACT[args.activation]
    print(f"{'chain':>40} {'dtype':>5} {'rows':>5} {'rule':>8} " + " ".join(f"{p:>8}" for p in ("rule_us",) + PATHS)
          + f" {'dense':>8}")
    torch.manual_seed(0)
    for chain in chains:
        ps = [KSPattern.of(p) for p in chain]
        for dtype in dtypes:
            # (factors, bias) and dense layers: one of each (hot), or copies (cold)
            ks_w = copies_of(lambda: ([p.random_weights(dtype=dtype, device=device) for p in ps],
                                      torch.randn(ps[-1].out_features, dtype=dtype, device=device)),
                             lambda fb: tensor_bytes(fb[0] + [fb[1]]), args.cold, device)
            denses = copies_of(lambda: torch.nn.Linear(ps[0].in_features, ps[-1].out_features, device=device, dtype=dtype),
                               weight_bytes, args.cold, device)
            for n in batches:
                def timed(fn, weights):
                    sets = [(torch.randn(n, ps[0].in_features, device=device, dtype=dtype), weights[i % len(weights)])
                            for i in range(max(3, len(weights)))]
                    fn = torch.no_grad()(fn)
                    r = (time_cuda(fn, sets, samples=args.samples, max_total_s=args.max_row_s, graph=True,
                                   min_sample_s=sample_s(len(weights)))
                         if cuda else time_cpu(fn, sets, min(args.samples, 5)))
                    return r["median_s"] * 1e6

                row = {"chain": [list(p) for p in chain], "dtype": str(dtype).replace("torch.", ""), "rows": n, **meta,
                       "rule": chain_plan_for(chain, n, dtype, sm=sm), "weights": "cold" if args.cold else "hot",
                       "weight_sets": len(ks_w), "dense_weight_sets": len(denses)}
                row["rule_us"] = timed(lambda x, fb: torch.ops.ks.chain(x, fb[0], fb[1], args.activation), ks_w)
                x0 = torch.randn(n, ps[0].in_features, device=device, dtype=dtype)
                for path in PATHS:
                    try:
                        chain_with_plan(x0, ks_w[0][0], ks_w[0][1], args.activation, plan=path)
                    except RuntimeError:  # does not serve these arguments, or not in this build / device
                        row[f"{path}_us"] = None
                        continue
                    row[f"{path}_us"] = timed(
                        lambda x, fb, p=path: chain_with_plan(x, fb[0], fb[1], args.activation, plan=p), ks_w)
                row["dense_us"] = timed(lambda x, m: act(m(x)), denses)
                append_row(args.out, row)
                cells = " ".join(f"{row[k]:8.1f}" if row[k] is not None else f"{'-':>8}"
                                 for k in ("rule_us",) + tuple(f"{p}_us" for p in PATHS) + ("dense_us",))
                print(f"{str(chain):>40} {row['dtype']:>5} {n:>5} {row['rule']:>8} {cells}", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted: the finished rows are in the output file", file=sys.stderr)
        sys.exit(130)
