import sys
import time
import types

import pytest

from ks_ops import meters
from ks_ops.meters import Meter, MeterUnavailable, WindowTooShort, select_meter


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


class CounterMeter(Meter):
    """A counter meter driven by a fake clock: energy = 50 W x time, update period 10 ms."""

    name = "fake"
    update_period_s = 0.01

    def __init__(self, clock):
        super().__init__("cpu", "test")
        self.clock = clock

    def _start(self, name):
        return 50.0 * self.clock()

    def _stop(self, name, token):
        return 50.0 * self.clock() - token


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(meters.time, "perf_counter", c)
    return c


def test_time_only_meter_has_no_minimum_window():
    m = Meter("cpu", "no counter")
    assert m.min_window_s == 0 and not m.measures_energy
    m.begin_window("w")
    time.sleep(0.01)
    got = m.end_window("w")
    assert got.time_s >= 0.01 and got.energy_j is None and got.power_w is None


def test_counter_window_under_20_updates_is_refused(clock):
    m = CounterMeter(clock)
    assert m.min_window_s == pytest.approx(20 * 0.01)
    m.begin_window("short")
    clock.now += 0.19
    with pytest.raises(WindowTooShort, match="0.190 s, under the meter's minimum 0.200 s") as e:
        m.end_window("short")
    assert e.value.min_window_s == pytest.approx(0.2)
    m.begin_window("short")  # the refused window was closed
    clock.now += 0.5
    got = m.end_window("short")
    assert got.time_s == pytest.approx(0.5) and got.energy_j == pytest.approx(25.0)
    assert got.power_w == pytest.approx(50.0)


def test_windows_nest_and_misuse_is_an_error(clock):
    m = CounterMeter(clock)
    m.begin_window("outer")
    with pytest.raises(ValueError, match="already open"):
        m.begin_window("outer")
    m.begin_window("inner")
    clock.now += 1.0
    assert m.end_window("inner").energy_j == pytest.approx(50.0)
    clock.now += 1.0
    assert m.end_window("outer").energy_j == pytest.approx(100.0)
    with pytest.raises(ValueError, match="no open window"):
        m.end_window("outer")


def test_probe_update_period():
    start = time.perf_counter()
    period = meters.probe_update_period(lambda: int((time.perf_counter() - start) / 0.01))
    assert period == pytest.approx(0.01, abs=0.004)
    assert meters.probe_update_period(lambda: 0, budget_s=0.05) is None


def hide_zeus(monkeypatch):
    for name in ("zeus", "zeus.monitor"):
        monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError


def test_select_meter_on_cpu_without_zeus_is_time_only_with_a_reason(monkeypatch):
    hide_zeus(monkeypatch)
    m = select_meter("cpu")
    assert m.name == "time" and not m.measures_energy
    assert "zeus" in m.reason and "not installed" in m.reason and "\n" not in m.reason
    with pytest.raises(MeterUnavailable, match="meter 'zeus' unavailable for cpu"):
        select_meter("cpu", prefer="zeus")
    with pytest.raises(MeterUnavailable, match="'nvml' does not measure a cpu"):
        select_meter("cpu", prefer="nvml")
    with pytest.raises(ValueError, match="prefer must be one of"):
        select_meter("cpu", prefer="rapl")
    assert select_meter("cpu", prefer="time").name == "time"


class FakeZeusMonitor:
    def __init__(self, gpu_indices=None, cpu_indices=None):
        self.gpu_indices, self.cpu_indices = gpu_indices or [], [0] if cpu_indices is None else cpu_indices
        self.t = 0.0

    def begin_window(self, key, sync_execution=True):
        assert not sync_execution  # the meter synchronizes itself
        self.t0 = self.t

    def end_window(self, key, sync_execution=True):
        self.t += 1.0
        return types.SimpleNamespace(gpu_energy={}, cpu_energy={0: 3.0}, dram_energy={0: 1.0})


def test_zeus_is_preferred_and_measures_cpu_energy_through_rapl(monkeypatch):
    zeus, monitor = types.ModuleType("zeus"), types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = FakeZeusMonitor
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    m = select_meter("cpu")
    assert m.name == "zeus" and m.min_window_s == pytest.approx(20 * meters.RAPL_UPDATE_PERIOD_S)
    m.begin_window("w")
    time.sleep(m.min_window_s)
    assert m.end_window("w").energy_j == pytest.approx(4.0)  # CPU + DRAM


def test_cuda_falls_back_to_nvml_when_zeus_is_missing(monkeypatch):
    hide_zeus(monkeypatch)
    counter = {"mj": 0}
    nvml = types.SimpleNamespace(nvmlDeviceGetTotalEnergyConsumption=lambda h: counter["mj"])
    monkeypatch.setattr(meters, "_nvml_handle", lambda device: (nvml, "handle"))
    monkeypatch.setattr(meters, "probe_update_period", lambda read: None)
    monkeypatch.setattr(meters, "synchronize", lambda device: None)
    m = select_meter("cuda:0")
    assert m.name == "nvml" and m.min_window_s == pytest.approx(2.0)  # 20 x the H200's 100 ms
    m.begin_window("w")
    counter["mj"] += 1500
    with pytest.raises(WindowTooShort):
        m.end_window("w")

    def broken(device):
        raise RuntimeError("NVML Shared Library Not Found\nmore")

    monkeypatch.setattr(meters, "_nvml_handle", broken)
    m = select_meter("cuda:0")
    assert m.name == "time" and "nvml: RuntimeError: NVML Shared Library Not Found" in m.reason
    assert "\n" not in m.reason


def test_zeus_on_a_gpu_measures_that_gpu_only(monkeypatch):
    seen = {}

    class GpuMonitor(FakeZeusMonitor):
        def __init__(self, gpu_indices=None, cpu_indices=None):
            seen.update(gpu_indices=gpu_indices, cpu_indices=cpu_indices)
            super().__init__(gpu_indices, cpu_indices)

        def end_window(self, key, sync_execution=True):
            return types.SimpleNamespace(gpu_energy={1: 250.0}, cpu_energy=None, dram_energy=None)

    zeus, monitor = types.ModuleType("zeus"), types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = GpuMonitor
    monkeypatch.setitem(sys.modules, "zeus", zeus)
    monkeypatch.setitem(sys.modules, "zeus.monitor", monitor)
    monkeypatch.setattr(meters, "synchronize", lambda device: None)
    monkeypatch.setattr(meters, "_nvml_handle", lambda device: (_ for _ in ()).throw(ImportError("pynvml")))
    m = select_meter("cuda:1")
    assert m.name == "zeus" and seen == {"gpu_indices": [1], "cpu_indices": []}
    assert m.update_period_s == meters.NVML_UPDATE_PERIOD_S  # no pynvml: the H200's period
    m.begin_window("w")
    with pytest.raises(WindowTooShort):
        m.end_window("w")
