import math

import pytest

from ks_ops import meters
from ks_ops.profile import runner
from ks_ops.profile.stats import Trial, mean_ci, summarize, t_critical


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423), (120, 1.9799)])
def test_t_critical_matches_the_table(df, t):
    assert t_critical(df) == pytest.approx(t, abs=1e-4)


def test_mean_ci():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert math.isnan(mean_ci([5.0])[1]) and mean_ci([5.0])[0] == 5.0


class ScriptedMeter(meters.Meter):
    """Deterministic: each window takes `seconds` per iteration at the power the script gives."""

    name = "scripted"
    update_period_s = 0.1

    def __init__(self, power_w: dict, seconds: dict):
        super().__init__("cpu", "test")
        self.power_w, self.seconds, self.iters = power_w, seconds, 0

    def begin_window(self, name):
        self.iters, self.key = 0, name

    def step(self):
        self.iters += 1

    def end_window(self, name):
        t = self.seconds[name] * self.iters
        if t < self.min_window_s:
            raise meters.WindowTooShort(name, t, self.min_window_s)
        return meters.Measurement(t, self.power_w[name] * t)


def test_measure_reruns_short_windows_with_more_iterations():
    m = ScriptedMeter({"a": 100.0}, {"a": 0.1})  # 0.1 s per step; minimum window 2 s
    got, iters = runner.measure(m, "a", m.step, 3)
    assert iters >= 20 and got.time_s >= 2.0 and got.energy_j == pytest.approx(100.0 * got.time_s)


def trials_from(meter, rounds, units=10, idle_w=None):
    """Runs interleaved rounds through runner.measure, as the runner does."""
    out = []
    for k, script in enumerate(rounds):
        meter.power_w, meter.seconds = script["power"], script["seconds"]
        for variant in ("dense", "ks"):
            got, iters = runner.measure(meter, variant, meter.step, 40)
            out.append(Trial("g", "forward", variant, k, iters, units, "token", got.time_s, got.energy_j,
                             idle_w, 0.0))
    return out


def test_j_per_unit_ci_and_paired_ratio_with_a_fake_meter():
    meter = ScriptedMeter({}, {})
    rounds = [  # per step: dense 0.1 s at 300 W, ks 0.05 s at 280 W / 320 W / 300 W
        {"power": {"dense": 300.0, "ks": p}, "seconds": {"dense": 0.1, "ks": 0.05}} for p in (280.0, 320.0, 300.0)
    ]
    trials = trials_from(meter, rounds, units=10, idle_w=100.0)
    dense, ks = summarize(trials)
    # 40 steps of 10 units: dense 4 s x 300 W = 1200 J over 400 units = 3 J/unit in every trial.
    assert dense.j_per_unit == pytest.approx(3.0) and dense.j_per_unit_lo == pytest.approx(3.0)
    assert dense.j_per_unit_hi == pytest.approx(3.0)
    assert dense.net_j_per_unit == pytest.approx((1200 - 100 * 4) / 400)
    assert dense.latency_s == pytest.approx(0.1) and dense.units_per_s == pytest.approx(100.0)
    assert dense.power_w == pytest.approx(300.0) and dense.ratio_j == pytest.approx(1.0)
    # ks: 40 steps of 0.05 s = 2 s; J/unit = P x 2 / 400 = P / 200 -> 1.4, 1.6, 1.5: their
    # geometric mean, and the t interval of the logs exponentiated.
    logs = [math.log(v) for v in (1.4, 1.6, 1.5)]
    m = sum(logs) / 3
    half = t_critical(2) * math.sqrt(sum((v - m) ** 2 for v in logs) / 2) / math.sqrt(3)
    assert ks.j_per_unit == pytest.approx(math.exp(m))
    assert (ks.j_per_unit_lo, ks.j_per_unit_hi) == (pytest.approx(math.exp(m - half)), pytest.approx(math.exp(m + half)))
    assert ks.net_j_per_unit == pytest.approx((300 * 2 - 100 * 2) / 400)  # arithmetic: may be <= 0
    assert ks.ratio_j == pytest.approx(math.exp(m) / 3) and ks.ratio_j_lo == pytest.approx(math.exp(m - half) / 3)
    assert ks.ratio_time == pytest.approx(0.5) and ks.ratio_time_lo == ks.ratio_time_hi == pytest.approx(0.5)
    assert (ks.trials, ks.unit, ks.variant) == (3, "token", "ks")


def test_time_only_trials_have_no_energy_figures():
    trials = [Trial("g", "decode", v, k, 4, 8, "output token", 0.5 * (1 + (v == "ks")), None)
              for k in range(2) for v in ("dense", "ks")]
    dense, ks = summarize(trials)
    assert dense.j_per_unit is None and dense.net_j_per_unit is None and ks.ratio_j is None
    assert ks.ratio_time == pytest.approx(2.0) and ks.units_per_s == pytest.approx(32.0)


def test_ratio_baseline_is_the_first_variant_per_group_and_phase():
    t = [Trial("fp32", "forward", "a", 0, 1, 1, "token", 1.0, 2.0), Trial("fp32", "forward", "b", 0, 1, 1, "token", 1.0, 1.0),
         Trial("bf16", "forward", "b", 0, 1, 1, "token", 1.0, 4.0), Trial("bf16", "forward", "a", 0, 1, 1, "token", 1.0, 2.0)]
    rows = {(r.group, r.variant): r for r in summarize(t)}
    assert rows["fp32", "b"].ratio_j == 0.5 and rows["bf16", "a"].ratio_j == 0.5 and rows["bf16", "b"].ratio_j == 1.0


def test_measure_lengthens_windows_under_half_the_target_for_any_meter():
    m = ScriptedMeter({"a": 0.0}, {"a": 0.01})
    m.update_period_s = None  # time only: no minimum window, but a 1 s target
    got, iters = runner.measure(m, "a", m.step, 2, target_s=1.0)
    assert got.time_s >= 0.5 and iters >= 50


def test_one_estimator_agrees_with_itself_and_stays_positive():
    """Noisy windows: latency, units/s and the time ratio come from one estimator (geometric means
    of per-trial values), so units/s = units / latency and the ratio = the latency ratio over
    matched trials; intervals of positive figures never reach below zero."""
    times = {"dense": [1.0, 3.0, 0.2], "ks": [0.5, 2.5, 0.3]}
    trials = [Trial("g", "forward", v, k, 2, 8, "token", 2 * times[v][k], 0.01 * times[v][k] ** 2)
              for k in range(3) for v in ("dense", "ks")]
    dense, ks = summarize(trials)
    for r in (dense, ks):
        assert r.units_per_s == pytest.approx(8 / r.latency_s)
        assert 0 < r.latency_lo <= r.latency_s <= r.latency_hi and 0 < r.j_per_unit_lo <= r.j_per_unit
    assert ks.ratio_time == pytest.approx(ks.latency_s / dense.latency_s)
    assert 0 < ks.ratio_time_lo <= ks.ratio_time <= ks.ratio_time_hi
