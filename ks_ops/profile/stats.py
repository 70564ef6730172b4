"""Per-trial figures and their summary over trials, and each variant's paired ratio to the first
variant of its group.

One estimator for every positive figure: the geometric mean of the per-trial values, with the 95 %
Student-t interval of their logarithms, exponentiated. So the figures agree with each other (units/s
is units per batch / latency; a time ratio is the ratio of the two latencies over matched trials)
and no interval reaches below zero. Idle-subtracted ("net") energy can be zero or negative in a
noisy window: it keeps the arithmetic mean and a symmetric t interval."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LEVEL = 0.95


def t_two_sided(t: float, df: int) -> float:
    """P(|T| < t) for Student's t with integer df (Abramowitz & Stegun 26.7.3-4, exact)."""
    theta = math.atan(t / math.sqrt(df))
    s, c = math.sin(theta), math.cos(theta)
    if df % 2:  # odd: (2/pi)(theta + s(c + 2/3 c^3 + ...)), powers 1, 3, ..., df-2
        term, total = c, 0.0
        for k in range(1, (df - 1) // 2 + 1):
            total += term
            term *= c * c * (2 * k) / (2 * k + 1)
        return 2 / math.pi * (theta + s * total)
    term, total = 1.0, 0.0  # even: s(1 + 1/2 c^2 + 1·3/(2·4) c^4 + ...), powers 0, 2, ..., df-2
    for k in range(1, df // 2 + 1):
        total += term
        term *= c * c * (2 * k - 1) / (2 * k)
    return s * total


def t_critical(df: int, level: float = LEVEL) -> float:
    """t with P(|T| < t) = level, by bisection."""
    lo, hi = 0.0, 1e4
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_two_sided(mid, df) < level else (lo, mid)
    return (lo + hi) / 2


def geo_ci(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(geometric mean, lower, upper bound of the level CI) of positive values: the t interval of
    the logs, exponentiated. Bounds are nan with fewer than 2 values; all nan if a value is <= 0."""
    if not values or any(not v > 0 for v in values):
        return math.nan, math.nan, math.nan
    mean, half = mean_ci([math.log(v) for v in values], level)
    if math.isnan(half):
        return math.exp(mean), math.nan, math.nan
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def mean_ci(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """(mean, half-width of the level CI); the half-width is nan with fewer than 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_critical(n - 1, level) * sd / math.sqrt(n)


@dataclass
class Trial:
    """One measured window: `iterations` steps of one variant's phase, each on `units` units."""
    group: str
    phase: str
    variant: str
    trial: int
    iterations: int
    units: int
    unit: str
    time_s: float
    energy_j: float | None
    idle_w: float | None = None  # idle power of this trial's round, if measured
    t_start: float = 0.0  # seconds since the profile started

    @property
    def total_units(self) -> int:
        return self.iterations * self.units

    @property
    def time_per_unit(self) -> float:
        return self.time_s / self.total_units

    @property
    def latency_s(self) -> float:
        return self.time_s / self.iterations

    @property
    def j_per_unit(self) -> float | None:
        return None if self.energy_j is None else self.energy_j / self.total_units

    @property
    def net_j_per_unit(self) -> float | None:
        if self.energy_j is None or self.idle_w is None:
            return None
        return (self.energy_j - self.idle_w * self.time_s) / self.total_units

    @property
    def power_w(self) -> float | None:
        return None if self.energy_j is None else self.energy_j / self.time_s

    def as_dict(self) -> dict:
        return {**asdict(self), "latency_s": self.latency_s, "time_per_unit_s": self.time_per_unit,
                "j_per_unit": self.j_per_unit, "net_j_per_unit": self.net_j_per_unit, "power_w": self.power_w}


@dataclass
class Row:
    """Summary of one variant in one (group, phase): geometric means over trials with the bounds
    of their 95 % intervals (*_lo, *_hi); net energy: arithmetic mean and CI half-width."""
    group: str
    phase: str
    variant: str
    unit: str
    trials: int
    latency_s: float
    latency_lo: float
    latency_hi: float
    units_per_s: float  # units per batch / latency_s
    j_per_unit: float | None
    j_per_unit_lo: float | None
    j_per_unit_hi: float | None
    net_j_per_unit: float | None
    net_j_per_unit_ci: float | None
    power_w: float | None
    ratio_j: float | None  # paired per-trial J/unit ratios to the group's first variant
    ratio_j_lo: float | None
    ratio_j_hi: float | None
    ratio_net_j: float | None  # None unless every paired net ratio is positive
    ratio_net_j_lo: float | None
    ratio_net_j_hi: float | None
    ratio_time: float
    ratio_time_lo: float
    ratio_time_hi: float

    def as_dict(self) -> dict:
        return asdict(self)


def _values(trials: list[Trial], key) -> list[float] | None:
    values = [key(t) for t in trials]
    return None if not values or any(v is None for v in values) else values


def _geo(values: list[float] | None) -> tuple[float | None, float | None, float | None]:
    if values is None:
        return None, None, None
    g = geo_ci(values)
    return (None, None, None) if math.isnan(g[0]) else g


def _paired_ratios(trials: list[Trial], base: dict[int, Trial], key) -> list[float] | None:
    """key(trial) / key(baseline trial of the same round), over matched rounds."""
    ratios = []
    for t in trials:
        b = base.get(t.trial)
        if b is None or key(t) is None or not key(b):
            continue
        ratios.append(key(t) / key(b))
    return ratios or None


def summarize(trials: list[Trial]) -> list[Row]:
    """One Row per (group, phase, variant), in first-seen order; the first variant seen in each
    (group, phase) is the baseline of its ratios."""
    cells: dict[tuple[str, str], dict[str, list[Trial]]] = {}
    for t in trials:
        cells.setdefault((t.group, t.phase), {}).setdefault(t.variant, []).append(t)
    rows = []
    for (group, phase), by_variant in cells.items():
        base = {t.trial: t for t in next(iter(by_variant.values()))}
        for variant, ts in by_variant.items():
            lat = geo_ci([t.latency_s for t in ts])
            net = _values(ts, lambda t: t.net_j_per_unit)
            net_mean, net_ci = mean_ci(net) if net else (None, None)
            rows.append(Row(
                group, phase, variant, ts[0].unit, len(ts), *lat,
                units_per_s=ts[0].units / lat[0],
                **dict(zip(("j_per_unit", "j_per_unit_lo", "j_per_unit_hi"), _geo(_values(ts, lambda t: t.j_per_unit)))),
                net_j_per_unit=net_mean, net_j_per_unit_ci=net_ci,
                power_w=_geo(_values(ts, lambda t: t.power_w))[0],
                **dict(zip(("ratio_j", "ratio_j_lo", "ratio_j_hi"),
                           _geo(_paired_ratios(ts, base, lambda t: t.j_per_unit)))),
                **dict(zip(("ratio_net_j", "ratio_net_j_lo", "ratio_net_j_hi"),
                           _geo(_paired_ratios(ts, base, lambda t: t.net_j_per_unit)))),
                **dict(zip(("ratio_time", "ratio_time_lo", "ratio_time_hi"),
                           _geo(_paired_ratios(ts, base, lambda t: t.time_per_unit)))),
            ))
    return rows
