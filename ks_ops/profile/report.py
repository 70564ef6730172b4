"""Outputs of a profile: the tabulate table, JSON and CSV (each written atomically: a temporary
file, then os.replace, so a reader or a Ctrl-C never sees half a file) and an optional PNG."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from .stats import Row, summarize

_PREFIXES = [(1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]


def _scale(value: float) -> tuple[float, str]:
    for factor, prefix in _PREFIXES:
        if abs(value) >= factor:
            return factor, prefix
    return _PREFIXES[-1]


def _fmt(value, unit: str, lo=None, hi=None, ci=None) -> str:
    """'2.39 mJ [2.31, 2.47]' (or '± 0.01' for a symmetric half-width) in the prefix that suits value."""
    if value is None:
        return "n/a"
    factor, prefix = _scale(value)
    v = value / factor
    decimals = max(0, 2 - math.floor(math.log10(abs(v)))) if v else 2  # 3 significant digits
    text = f"{v:.{decimals}f}"
    if lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi)):
        text += f" [{lo / factor:.{decimals}f}, {hi / factor:.{decimals}f}]"
    elif ci is not None and not math.isnan(ci):
        text += f" ± {ci / factor:.{decimals}f}"
    return f"{text} {prefix}{unit}".rstrip()


def _ratio(value, lo, hi) -> str:
    if value is None:
        return "n/a"
    bounds = lo is not None and hi is not None and not (math.isnan(lo) or math.isnan(hi))
    return f"{value:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if bounds else "")


def table(rows: list[Row]) -> str:
    from tabulate import tabulate

    net = any(r.net_j_per_unit is not None for r in rows)
    energy = any(r.j_per_unit is not None for r in rows)
    out = []
    for r in rows:
        line = {"group": r.group, "phase": r.phase, "variant": r.variant,
                "latency/batch [95% CI]": _fmt(r.latency_s, "s", r.latency_lo, r.latency_hi),
                "units/s": f"{r.units_per_s:,.0f} {r.unit}/s"}
        if energy:  # a time-only meter gets no energy columns at all
            line["J/unit [95% CI]"] = _fmt(r.j_per_unit, f"J/{r.unit}", r.j_per_unit_lo, r.j_per_unit_hi)
            if net:
                line["net J/unit ± CI"] = _fmt(r.net_j_per_unit, f"J/{r.unit}", ci=r.net_j_per_unit_ci)
            line["mean W"] = "n/a" if r.power_w is None else f"{r.power_w:.0f}"
            line["J ratio"] = _ratio(r.ratio_j, r.ratio_j_lo, r.ratio_j_hi)
        line["time ratio"] = _ratio(r.ratio_time, r.ratio_time_lo, r.ratio_time_hi)
        out.append(line)
    return tabulate(out, headers="keys", tablefmt="github")


def _finite(obj):
    """JSON has no NaN: write null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def atomic_write(path: str | Path, data: str | bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def document(results) -> dict:
    return _finite({
        "status": results.status, "meta": results.meta, "errors": results.errors,
        "summary": [r.as_dict() for r in summarize(results.trials)],
        "surgery": results.surgery, "trials": [t.as_dict() for t in results.trials], "idle": results.idle,
    })


def write_json(path, results) -> None:
    atomic_write(path, json.dumps(document(results), indent=1, default=str) + "\n")


def write_csv(path, results) -> None:
    rows = [r.as_dict() for r in summarize(results.trials)]
    buf = io.StringIO()
    fields = list(Row.__dataclass_fields__)
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(_finite(rows))
    atomic_write(path, buf.getvalue())


def _errors(values, los, his, scale: float = 1.0) -> list[list[float]]:
    """matplotlib's asymmetric xerr from interval bounds (0 where a bound is missing)."""
    def gap(a, b):
        return 0.0 if a is None or b is None or math.isnan(a) or math.isnan(b) else abs(a - b) * scale
    return [[gap(v, lo) for v, lo in zip(values, los)], [gap(hi, v) for v, hi in zip(values, his)]]


def write_plot(path, results) -> str | None:
    """J/unit and latency per variant (horizontal bars with 95% CIs) and the power timeline (mean
    power of each window). Returns why not where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    rows = summarize(results.trials)
    energy = bool(rows) and all(r.j_per_unit is not None for r in rows)
    colors: dict[str, str] = {}
    color = [colors.setdefault(r.variant, f"C{len(colors)}") for r in rows]
    labels = [f"{r.variant} | {r.group} {r.phase}" for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(10, 4 + 0.5 * len(rows) * 2 + 3))
    if energy:
        values = [r.j_per_unit for r in rows]
        xerr = _errors(values, [r.j_per_unit_lo for r in rows], [r.j_per_unit_hi for r in rows])
        axes[0].set_xlabel(f"J per unit (gross), meter {results.meta.get('meter')}")
    else:
        values = [1 / r.units_per_s for r in rows]  # latency / units: latency's relative interval
        xerr = _errors(values, [v * r.latency_lo / r.latency_s for v, r in zip(values, rows)],
                       [v * r.latency_hi / r.latency_s for v, r in zip(values, rows)])
        axes[0].set_xlabel("seconds per unit (time-only meter)")
    axes[0].barh(labels, values, xerr=xerr, color=color, capsize=3)
    axes[1].barh(labels, [r.latency_s * 1e3 for r in rows],
                 xerr=_errors([r.latency_s for r in rows], [r.latency_lo for r in rows], [r.latency_hi for r in rows], 1e3),
                 color=color, capsize=3)
    axes[1].set_xlabel("latency per batch (ms)")
    for ax, values in ((axes[0], values), (axes[1], [r.latency_s for r in rows])):
        if values and max(values) > 20 * min(values) > 0:  # phases that differ by orders of magnitude
            ax.set_xscale("log")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=8)
    ax = axes[2]
    windows = [{"variant": "idle", **w} for w in results.idle] + [t.as_dict() for t in results.trials]
    for w in windows:
        if w["power_w"] is not None:
            c = colors.setdefault(w["variant"], f"C{len(colors)}")
            ax.hlines(w["power_w"], w["t_start"], w["t_start"] + w["time_s"], colors=c, lw=3)
    if energy:
        ax.legend([plt.Line2D([], [], color=c, lw=3) for c in colors.values()], list(colors), fontsize=8)
    else:
        ax.text(0.5, 0.5, "no energy meter: no power timeline", ha="center", transform=ax.transAxes)
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("mean power per window (W)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
    return None
