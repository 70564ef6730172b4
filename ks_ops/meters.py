"""Energy meters with one small Zeus-like API, shared by the profiler and the benchmark tools.

    meter = select_meter("cuda")           # Zeus, else the NVML counter, else time only
    meter.begin_window("step")
    ...                                     # run at least meter.min_window_s of work
    m = meter.end_window("step")           # Measurement(time_s, energy_j or None)

Energy counters advance in steps (the H200's NVML counter every ~100 ms), so a window shorter
than MIN_UPDATES counter updates is refused with WindowTooShort: run more iterations, sized
from ``meter.min_window_s``. The device is synchronized at both window edges. Optional packages
(zeus, pynvml) are imported only when a meter is selected.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

MIN_UPDATES = 20
NVML_UPDATE_PERIOD_S = 0.1  # the H200's, used when probing the counter finds no steady period
RAPL_UPDATE_PERIOD_S = 0.001  # RAPL counters advance about every millisecond
PREFERENCES = ("auto", "zeus", "nvml", "time")


@dataclass(frozen=True)
class Measurement:
    time_s: float
    energy_j: float | None  # None where the meter measures time only

    @property
    def power_w(self) -> float | None:
        return None if self.energy_j is None or self.time_s <= 0 else self.energy_j / self.time_s


class WindowTooShort(RuntimeError):
    """A window spanned too few counter updates to be reported; rerun it with more work."""

    def __init__(self, name: str, elapsed_s: float, min_window_s: float):
        self.elapsed_s, self.min_window_s = elapsed_s, min_window_s
        super().__init__(
            f"window {name!r} lasted {elapsed_s:.3f} s, under the meter's minimum {min_window_s:.3f} s "
            f"({MIN_UPDATES} counter updates): run more iterations"
        )


class MeterUnavailable(RuntimeError):
    pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter:
    """Time-only meter; subclasses add an energy counter through _start/_stop."""

    name = "time"
    update_period_s: float | None = None  # energy counter update period; None: no counter

    def __init__(self, device, reason: str = ""):
        self.device = torch.device(device)
        self.reason = reason
        self._open: dict[str, tuple[float, object]] = {}

    @property
    def measures_energy(self) -> bool:
        return self.update_period_s is not None

    @property
    def min_window_s(self) -> float:
        """Shortest window end_window reports: MIN_UPDATES counter updates (0 for time only)."""
        return 0.0 if self.update_period_s is None else MIN_UPDATES * self.update_period_s

    def target_window_s(self, requested_s: float) -> float:
        """The window to aim at: requested_s, raised a 5% margin above min_window_s where needed."""
        return max(requested_s, 1.05 * self.min_window_s)

    def begin_window(self, name: str) -> None:
        if name in self._open:
            raise ValueError(f"meter: window {name!r} is already open")
        synchronize(self.device)
        self._open[name] = (time.perf_counter(), self._start(name))

    def end_window(self, name: str) -> Measurement:
        if name not in self._open:
            raise ValueError(f"meter: no open window named {name!r}")
        synchronize(self.device)
        end = time.perf_counter()
        start, token = self._open.pop(name)
        energy = self._stop(name, token)
        elapsed = end - start
        if elapsed < self.min_window_s:
            raise WindowTooShort(name, elapsed, self.min_window_s)
        return Measurement(elapsed, energy)

    def describe(self) -> str:
        if not self.measures_energy:
            return f"{self.name} ({self.reason})"
        return (f"{self.name} ({self.reason}; counter update {self.update_period_s * 1e3:.0f} ms, "
                f"min window {self.min_window_s:.2f} s)")

    def _start(self, name: str) -> object:
        return None

    def _stop(self, name: str, token: object) -> float | None:
        return None


class NvmlMeter(Meter):
    """The GPU's cumulative energy counter (nvmlDeviceGetTotalEnergyConsumption, mJ)."""

    name = "nvml"

    def __init__(self, device, reason: str = ""):
        super().__init__(device, reason)
        self._nvml, self._handle = _nvml_handle(self.device)
        self.update_period_s = probe_update_period(self._read_j) or NVML_UPDATE_PERIOD_S

    def _read_j(self) -> float:
        return self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1000.0

    def _start(self, name):
        return self._read_j()

    def _stop(self, name, token):
        return self._read_j() - token


class ZeusMeter(Meter):
    """zeus.monitor.ZeusMonitor: the GPU's energy on CUDA devices, RAPL (CPU + DRAM) on the CPU."""

    name = "zeus"

    def __init__(self, device, reason: str = ""):
        super().__init__(device, reason)
        from zeus.monitor import ZeusMonitor

        if self.device.type == "cuda":
            index = _cuda_index(self.device)
            self._monitor = ZeusMonitor(gpu_indices=[index], cpu_indices=[])
            try:  # Zeus reads the NVML counter: probe its period through pynvml (a Zeus dependency)
                self.update_period_s = NvmlMeter(self.device).update_period_s
            except Exception:
                self.update_period_s = NVML_UPDATE_PERIOD_S
        else:
            self._monitor = ZeusMonitor(gpu_indices=[], cpu_indices=None)
            if not self._monitor.cpu_indices:
                raise MeterUnavailable("zeus found no readable RAPL counter for the CPU")
            self.update_period_s = RAPL_UPDATE_PERIOD_S

    def _start(self, name):
        self._monitor.begin_window(f"ks_ops:{name}", sync_execution=False)  # synchronized already

    def _stop(self, name, token):
        m = self._monitor.end_window(f"ks_ops:{name}", sync_execution=False)
        if self.device.type == "cuda":
            return float(sum(m.gpu_energy.values()))
        return float(sum((m.cpu_energy or {}).values()) + sum((m.dram_energy or {}).values()))


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _nvml_handle(device: torch.device):
    import pynvml

    pynvml.nvmlInit()
    index = _cuda_index(device)
    # NVML numbers GPUs in PCI order, ignoring CUDA_VISIBLE_DEVICES; the UUID names the same GPU.
    uuid = "GPU-" + str(torch.cuda.get_device_properties(index).uuid)
    for key in (uuid, uuid.encode()):
        try:
            return pynvml, pynvml.nvmlDeviceGetHandleByUUID(key)
        except Exception:
            pass
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)


def probe_update_period(read, budget_s: float = 1.0, changes: int = 4) -> float | None:
    """Median interval between changes of a counter polled for at most budget_s seconds."""
    stamps, last = [], read()
    deadline = time.perf_counter() + budget_s
    while len(stamps) < changes and time.perf_counter() < deadline:
        value = read()
        if value != last:
            stamps.append(time.perf_counter())
            last = value
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
    return gaps[len(gaps) // 2] if len(gaps) >= 2 else None


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def select_meter(device, prefer: str = "auto") -> Meter:
    """The best meter for device: Zeus (GPU present, or RAPL readable on the CPU), else the NVML
    counter (GPU), else time only with a one-line reason. A named ``prefer`` must work or raise
    MeterUnavailable."""
    if prefer not in PREFERENCES:
        raise ValueError(f"meter: prefer must be one of {list(PREFERENCES)}, got {prefer!r}")
    device = torch.device(device)
    if prefer == "time":
        return Meter(device, "time only: asked for")
    tries = [("zeus", ZeusMeter)]
    if device.type == "cuda":
        tries.append(("nvml", NvmlMeter))
    if prefer != "auto":
        tries = [t for t in tries if t[0] == prefer]
        if not tries:
            raise MeterUnavailable(f"meter {prefer!r} does not measure a {device.type} device")
    failures = []
    for name, cls in tries:
        try:
            return cls(device, f"selected for {device}")
        except ImportError as e:
            failures.append(f"{name}: {e.name or 'module'} not installed")
        except Exception as e:  # a counter that exists but cannot be read: say why, fall through
            failures.append(f"{name}: {_one_line(e)}")
    if prefer != "auto":
        raise MeterUnavailable(f"meter {prefer!r} unavailable for {device}: {failures[0]}")
    return Meter(device, f"time only, no energy counter for {device}: " + "; ".join(failures))
