"""Runs a profile: per group (workload x dtype) build every variant, warm each up outside the
windows (compilation and autotuning happen there), then measure trials with the variants
interleaved A B A B ..., each window long enough for the meter (``Meter.min_window_s``)."""
from __future__ import annotations

import contextlib
import copy
import datetime
import gc
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from .. import meters
from ..surgery import ks_surgery
from . import models
from .config import DTYPES, Config, ConfigError, compile_mode
from .stats import Trial


@dataclass
class Results:
    meta: dict = field(default_factory=dict)
    surgery: dict[str, list[dict]] = field(default_factory=dict)
    trials: list[Trial] = field(default_factory=list)
    idle: list[dict] = field(default_factory=list)  # idle-baseline windows
    errors: list[str] = field(default_factory=list)
    status: str = "running"  # running | complete | interrupted | failed


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}); use device: auto or cpu")
    return device


def resolve_dtype(name: str, device: torch.device) -> str:
    if name != "auto":
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(name, name)
    return "bfloat16" if device.type == "cuda" else "float32"


def warm_up(step, seconds: float, device: torch.device) -> float:
    """Runs step for about `seconds` (at least twice) and returns its time per call."""
    step()  # first call: compilation, autotuning, allocation
    meters.synchronize(device)
    start, chunk = time.perf_counter(), 1
    while True:
        t0 = time.perf_counter()
        for _ in range(chunk):
            step()
        meters.synchronize(device)
        dt = time.perf_counter() - t0
        if time.perf_counter() - start >= seconds and dt >= 0.02:
            return dt / chunk
        if dt < 0.25:
            chunk *= 2


def measure(meter: meters.Meter, key: str, step, iterations: int,
            target_s: float = 0.0) -> tuple[meters.Measurement, int]:
    """One window of `iterations` steps. Reruns it with more iterations when the meter refuses
    it as too short, or (any meter) when it ran under half of target_s, e.g. after a warm-up
    timed on a busy machine."""
    for attempt in range(4):
        meter.begin_window(key)
        try:
            for _ in range(iterations):
                step()
        except BaseException:
            with contextlib.suppress(Exception):
                meter.end_window(key)  # close it, so the key can be opened again
            raise
        try:
            got = meter.end_window(key)
        except meters.WindowTooShort as e:
            iterations = math.ceil(iterations * 1.2 * e.min_window_s / max(e.elapsed_s, 1e-9))
            continue
        if got.time_s >= target_s / 2 or attempt == 3:
            return got, iterations
        iterations = math.ceil(iterations * 1.1 * target_s / max(got.time_s, 1e-9))
    raise RuntimeError(f"window {key!r} stayed under the meter's minimum of {meter.min_window_s:.2f} s")


def _environment(device: torch.device, meter: meters.Meter, window_s: float) -> dict:
    env = {"torch": torch.__version__, "device": str(device),
           "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "meter": meter.name, "meter_reason": meter.reason, "meter_description": meter.describe(),
           "meter_min_window_s": meter.min_window_s, "window_s": window_s,
           "float32_matmul_precision": torch.get_float32_matmul_precision(),
           "started": datetime.datetime.now().isoformat(timespec="seconds")}
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


class _Variant:
    """A built variant of one group: its model and phases, and its step timing."""

    def __init__(self, cfg: Config, index: int, base, device, dtype_name: str, workload, results: Results):
        spec = cfg.variants[index]
        # Rebuilt per group rather than kept for all: one group's models in memory at a time.
        torch.manual_seed(cfg.seed + 1 + index)  # the same KS weights in every group
        raw = copy.deepcopy(base)
        report = None
        for j, rep in enumerate(spec.replace):
            try:
                r = ks_surgery(raw, {g: rep.chain for g in rep.modules}, backend=rep.backend)
            except ValueError as e:  # a glob that matches nothing, a chain that does not fit
                raise ConfigError(f"variants[{index}].replace[{j}]: {e}") from None
            report = r if report is None else report + r
        results.surgery.setdefault(spec.name, report.as_dicts() if report else [])
        raw = raw.to(dtype=DTYPES[dtype_name]).eval()
        mode = compile_mode(cfg, spec)
        model = raw if mode is None else torch.compile(raw, mode=None if mode == "default" else mode)
        self.name = spec.name
        self.phases = models.phases(model, raw, cfg.model, cfg.input, workload, device,
                                    DTYPES[dtype_name], cfg.seed)
        self.step_s: dict[str, float] = {}


def _idle(meter, window_s, group, trial, t0, results) -> float:
    """Idle power for this round: the device holds the models but computes nothing. Measured
    first in each round, so it includes the tail of the last round's load (a slight overestimate)."""
    start = time.perf_counter() - t0
    meter.begin_window("idle")
    time.sleep(window_s)
    got = meter.end_window("idle")
    results.idle.append({"group": group, "trial": trial, "t_start": start, "time_s": got.time_s,
                         "energy_j": got.energy_j, "power_w": got.power_w})
    return got.power_w


def run(cfg: Config, results: Results, *, on_update: Callable[[Results], None] = lambda r: None,
        progress: bool = True, log: Callable[[str], None] = print) -> Results:
    """Runs the profile into `results` (the caller's, so an interrupt keeps finished trials);
    on_update(results) is called after every window. A variant that fails is dropped from its
    group and the error recorded in results.errors."""
    from tqdm import tqdm

    device = resolve_device(cfg.device)
    meter = meters.select_meter(device, cfg.measure.meter)
    m = cfg.measure
    window_s = meter.target_window_s(m.window_s)
    results.meta.update(config=asdict(cfg), **_environment(device, meter, window_s))
    log(f"meter: {meter.describe()}")
    if window_s > m.window_s:
        log(f"measure.window_s {m.window_s:g} s is under the meter's minimum: windows run {window_s:.2f} s")
    groups = [(w, resolve_dtype(d, device)) for w in cfg.workloads for d in cfg.dtypes]
    idle_on = m.idle_baseline and meter.measures_energy

    def fail(group, name, what, e):
        results.errors.append(f"{group} / {name}: {what} failed: {type(e).__name__}: {e}")
        log(results.errors[-1])

    torch.manual_seed(cfg.seed)
    with torch.device(device):
        base = models.build_model(cfg.model, cfg.input, cfg.workloads)
    windows = sum(len(cfg.variants) * (2 if w.kind == "generate" else 1) + idle_on for w, _ in groups)
    t0 = time.perf_counter()
    with tqdm(total=windows * m.trials, disable=not progress, unit="window", dynamic_ncols=True) as bar:
        for workload, dtype_name in groups:
            group = f"{workload.label} {dtype_name}"
            variants = []
            for i, spec in enumerate(cfg.variants):
                bar.set_description(f"{group}: build {spec.name}")
                try:
                    variants.append(_Variant(cfg, i, base, device, dtype_name, workload, results))
                except ConfigError:
                    raise
                except Exception as e:
                    fail(group, spec.name, "build", e)
            with torch.inference_mode():
                for v in list(variants):
                    bar.set_description(f"{group}: warm-up {v.name}")
                    try:
                        for ph in v.phases:
                            v.step_s[ph.name] = warm_up(ph.step, m.warmup_s / len(v.phases), device)
                    except Exception as e:
                        fail(group, v.name, "warm-up", e)
                        variants.remove(v)
                for trial in range(m.trials):
                    idle_w = None
                    if idle_on:
                        bar.set_description(f"{group}: idle baseline")
                        idle_w = _idle(meter, window_s, group, trial, t0, results)
                        bar.update()
                    for v in list(variants):  # interleaved: A B A B ...
                        for ph in v.phases:
                            bar.set_description(f"{group}: {v.name} {ph.name} {trial + 1}/{m.trials}")
                            start = time.perf_counter() - t0
                            try:
                                got, iters = measure(meter, f"{v.name}/{ph.name}", ph.step,
                                                     max(1, math.ceil(window_s / v.step_s[ph.name])), window_s)
                            except Exception as e:
                                fail(group, v.name, ph.name, e)
                                variants.remove(v)
                                break
                            v.step_s[ph.name] = got.time_s / iters  # keeps later windows on target
                            results.trials.append(Trial(group, ph.name, v.name, trial, iters, ph.units,
                                                        ph.unit, got.time_s, got.energy_j, idle_w, start))
                            on_update(results)
                            bar.update()
            del variants
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    results.status = "complete"
    return results
