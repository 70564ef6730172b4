"""GPU timing helpers shared by the benchmarks (latency here; the energy benchmark reuses them).

- ``time_cuda(fn, arg_sets)``: median time of one call, with CUDA events, after warm-up, over
  rotating argument sets (so that repeated calls do not run out of L2), batching several calls
  per event pair when one call is short (launch gaps overlap as they do in a real model).
- ``measure_ceilings()``: the device's copy bandwidth and GEMM rates (fp32 strict, tf32, bf16,
  fp16), measured in the calling process, for roofline floors.
- ``ks_floor_s(...)``: the roofline floor of one KS product: max(flops / rate, bytes / bandwidth),
  bytes = elem_size * (B*a*c*d + B*a*b*d + a*b*c*d) (x, y and w moved once).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from .pattern import KSPattern

L2_FALLBACK_BYTES = 60 * 2**20


def append_row(path: str, row: dict) -> None:
    """One finished benchmark row as a line of the jsonl file at `path`, flushed to disk: a run cut
    short (Ctrl-C, a time limit) keeps every row it finished."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def l2_bytes(device=None) -> int:
    try:
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    except Exception:  # pragma: no cover - older torch
        return L2_FALLBACK_BYTES


def rotation_count(bytes_per_set: int, device=None, factor: float = 3.0, cap: int = 8) -> int:
    """How many distinct argument sets make a rotation larger than `factor` x L2."""
    if bytes_per_set <= 0:
        return 1
    return max(1, min(cap, math.ceil(factor * l2_bytes(device) / bytes_per_set)))


def time_cuda(
    fn: Callable,
    arg_sets: Sequence[tuple],
    *,
    warmup: int = 3,
    samples: int = 15,
    min_sample_s: float = 2e-4,
    max_total_s: float = 1.0,
    max_inner: int = 64,
    graph: bool = False,
) -> dict:
    """Median seconds per call of fn(*args), args cycling through arg_sets.

    Each sample times `inner` back-to-back calls between two CUDA events (inner grows until a
    sample lasts >= min_sample_s); samples stop early once max_total_s of timed work is done
    (at least 3 samples). graph=True captures the `inner` calls in a CUDA graph and times its
    replays: the device time without the host's per-call overhead (Python, dispatcher), which
    otherwise dominates small problems. Returns {"median_s", "min_s", "samples", "inner"}."""
    n = len(arg_sets)
    assert n > 0
    k = 0
    for _ in range(max(1, warmup)):
        fn(*arg_sets[k % n])
        k += 1
    torch.cuda.synchronize()
    # Calibrate one call.
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn(*arg_sets[k % n])
    k += 1
    end.record()
    end.synchronize()
    one = max(start.elapsed_time(end) * 1e-3, 1e-6)
    inner = int(min(max_inner, max(1, math.ceil(min_sample_s / one))))
    g = None
    if graph:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn(*arg_sets[0])
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for j in range(inner):
                fn(*arg_sets[j % n])
        g.replay()
        torch.cuda.synchronize()
    times = []
    total = 0.0
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(samples)]
    for s in range(samples):
        e0, e1 = events[s]
        e0.record()
        if g is not None:
            g.replay()
        else:
            for _ in range(inner):
                fn(*arg_sets[k % n])
                k += 1
        e1.record()
        e1.synchronize()
        t = e0.elapsed_time(e1) * 1e-3
        times.append(t / inner)
        total += t
        if s >= 2 and total >= max_total_s:
            break
    del g
    return {"median_s": statistics.median(times), "min_s": min(times), "samples": len(times), "inner": inner}


@dataclass
class Ceilings:
    copy_bytes_per_s: float
    fp32_flops: float
    tf32_flops: float
    bf16_flops: float
    fp16_flops: float
    gpu: str = ""

    def rate(self, dtype: torch.dtype, allow_tf32: bool = False) -> float:
        if dtype == torch.bfloat16:
            return self.bf16_flops
        if dtype == torch.float16:
            return self.fp16_flops
        return self.tf32_flops if allow_tf32 else self.fp32_flops

    def as_dict(self) -> dict:
        return asdict(self)


def _gemm_rate(dtype: torch.dtype, tf32: bool, n: int = 8192) -> float:
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        out = torch.empty(n, n, device="cuda", dtype=dtype)
        r = time_cuda(lambda: torch.matmul(a, b, out=out), [()], warmup=3, samples=10, max_total_s=2.0)
        return 2.0 * n**3 / r["median_s"]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_ceilings(copy_bytes: int = 2 * 2**30) -> Ceilings:
    """Copy bandwidth (bytes read + written per second) and GEMM rates on the current GPU."""
    n = copy_bytes // 4
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    r = time_cuda(lambda: dst.copy_(src), [()], warmup=3, samples=10)
    bw = 2.0 * n * 4 / r["median_s"]
    del src, dst
    c = Ceilings(
        copy_bytes_per_s=bw,
        fp32_flops=_gemm_rate(torch.float32, False),
        tf32_flops=_gemm_rate(torch.float32, True),
        bf16_flops=_gemm_rate(torch.bfloat16, False),
        fp16_flops=_gemm_rate(torch.float16, False),
        gpu=torch.cuda.get_device_name(),
    )
    torch.cuda.empty_cache()
    return c


def ks_bytes(pattern: Sequence[int], batch: int, elem_size: int) -> int:
    a, b, c, d = pattern
    return elem_size * (batch * a * c * d + batch * a * b * d + a * b * c * d)


def ks_flops(pattern: Sequence[int], batch: int) -> int:
    return KSPattern.of(pattern).flops(batch)


def ks_floor_s(pattern: Sequence[int], batch: int, dtype: torch.dtype, ceil: Ceilings,
               allow_tf32: bool = False) -> float:
    esz = torch.empty((), dtype=dtype).element_size()
    return max(ks_flops(pattern, batch) / ceil.rate(dtype, allow_tf32),
               ks_bytes(pattern, batch, esz) / ceil.copy_bytes_per_s)
