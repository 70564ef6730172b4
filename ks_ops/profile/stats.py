"""Per-trial figures and their summary: mean and 95% CI (Student t) over trials, idle-subtracted
energy beside gross, and each variant's paired ratio to the first variant of its group."""
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
    """Summary of one variant in one (group, phase): means and CI half-widths over trials."""
    group: str
    phase: str
    variant: str
    unit: str
    trials: int
    latency_s: float
    latency_ci: float
    units_per_s: float
    j_per_unit: float | None
    j_per_unit_ci: float | None
    net_j_per_unit: float | None
    net_j_per_unit_ci: float | None
    power_w: float | None
    ratio_j: float | None  # mean of per-trial J/unit ratios to the group's first variant
    ratio_j_ci: float | None
    ratio_net_j: float | None
    ratio_net_j_ci: float | None
    ratio_time: float
    ratio_time_ci: float

    def as_dict(self) -> dict:
        return asdict(self)


def _stat(trials: list[Trial], key) -> tuple[float | None, float | None]:
    values = [key(t) for t in trials]
    if not values or any(v is None for v in values):
        return None, None
    return mean_ci(values)


def _paired_ratio(trials: list[Trial], base: dict[int, Trial], key) -> tuple[float | None, float | None]:
    """Mean and CI of key(trial) / key(baseline trial of the same round), over matched rounds."""
    ratios = []
    for t in trials:
        b = base.get(t.trial)
        if b is None or key(t) is None or not key(b):
            continue
        ratios.append(key(t) / key(b))
    return mean_ci(ratios) if ratios else (None, None)


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
            lat, lat_ci = mean_ci([t.latency_s for t in ts])
            rows.append(Row(
                group, phase, variant, ts[0].unit, len(ts), lat, lat_ci,
                units_per_s=sum(t.total_units for t in ts) / sum(t.time_s for t in ts),
                j_per_unit=(j := _stat(ts, lambda t: t.j_per_unit))[0], j_per_unit_ci=j[1],
                net_j_per_unit=(n := _stat(ts, lambda t: t.net_j_per_unit))[0], net_j_per_unit_ci=n[1],
                power_w=_stat(ts, lambda t: t.power_w)[0],
                ratio_j=(rj := _paired_ratio(ts, base, lambda t: t.j_per_unit))[0], ratio_j_ci=rj[1],
                ratio_net_j=(rn := _paired_ratio(ts, base, lambda t: t.net_j_per_unit))[0], ratio_net_j_ci=rn[1],
                ratio_time=(rt := _paired_ratio(ts, base, lambda t: t.time_per_unit))[0], ratio_time_ci=rt[1],
            ))
    return rows
