"""Host overhead of the ks ops (issue decode): CPU time per eager call on a tiny problem, where
the device work is negligible and what is left is Python, the dispatcher, the plan choice and the
launches, against torch.mm / F.linear on the same tiny sizes.

    python tools/bench_host.py                      # CUDA if there is one, else the CPU
    python tools/bench_host.py --device cpu --out host.json

For each call: N calls back to back under torch.no_grad (and once with grad-requiring weights),
median of R repeats of the mean per-call wall time; CUDA work is queued asynchronously, and the
tiny kernels finish faster than the host can issue them, so the wall time per call is the host's.
The JSON (written atomically) holds every row and the ratios to torch.mm."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

from ks_ops.profile.report import atomic_write  # noqa: E402

import ks_ops  # noqa: E402
from ks_ops import KSLinear, KSPattern  # noqa: E402


def per_call_us(fn, calls: int, repeats: int, device: torch.device) -> float:
    for _ in range(50):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", help="JSON file for the rows")
    args = ap.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if device.type == "cpu" and dtype != torch.float32:
        dtype = torch.float32  # CPU 16-bit matmuls are not what this measures
    p1, p2 = KSPattern(4, 16, 16, 1), KSPattern(1, 32, 32, 2)  # 64 -> 64 -> 64
    x = torch.randn(1, 64, device=device, dtype=dtype)
    w1, w2 = p1.random_weights(device=device, dtype=dtype), p2.random_weights(device=device, dtype=dtype)
    m, b = torch.randn(64, 64, device=device, dtype=dtype), torch.randn(64, device=device, dtype=dtype)
    layer = KSLinear([p1.shape, p2.shape], activation="gelu", device=device, dtype=dtype)
    dense = torch.nn.Linear(64, 64, device=device, dtype=dtype)
    cases = {
        "torch.mm": lambda: torch.mm(x, m),
        "F.linear + bias": lambda: torch.nn.functional.linear(x, m, b),
        "ks.matmul (1 factor)": lambda: torch.ops.ks.matmul(x, w1),
        "ks.chain (2 factors, bias, gelu)": lambda: torch.ops.ks.chain(x, [w1, w2], b, "gelu"),
        "nn.Linear + GELU module": lambda: torch.nn.functional.gelu(dense(x)),
        "KSLinear (2 factors, bias, gelu)": lambda: layer(x),
    }
    rows = []
    with torch.no_grad():
        for name, fn in cases.items():
            rows.append({"case": name, "grad": False, "us": per_call_us(fn, args.calls, args.repeats, device)})
    for name in ("nn.Linear + GELU module", "KSLinear (2 factors, bias, gelu)"):  # weights requiring grad
        rows.append({"case": name, "grad": True, "us": per_call_us(cases[name], args.calls, args.repeats, device)})
    base = rows[0]["us"]
    for r in rows:
        r["ratio_to_mm"] = r["us"] / base
        print(f"{r['case']:<36} grad={str(r['grad']):<5} {r['us']:8.2f} µs/call  {r['ratio_to_mm']:5.2f}x torch.mm")
    if args.out:
        doc = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
               "torch": torch.__version__, "calls": args.calls, "repeats": args.repeats, "rows": rows}
        atomic_write(args.out, json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
