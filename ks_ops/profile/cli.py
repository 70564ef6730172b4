"""``python -m ks_ops.profile [model.yaml]``: exit 0 ok, 2 config error (a message, no traceback),
1 runtime failure (a variant or the run failed), 130 interrupted (finished trials are kept in
the JSON and CSV). With no config the built-in default runs (``config.DEFAULT``)."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from . import config as config_mod
from .config import ConfigError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ks_ops.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="profile YAML (profiles/*.yaml); none: the built-in default")
    p.add_argument("--out-dir", help="directory for relative output paths (default: the current one)")
    p.add_argument("--device", help="override device (auto, cpu, cuda, cuda:N)")
    p.add_argument("--meter", choices=config_mod.PREFERENCES, help="override measure.meter")
    p.add_argument("--trials", type=int, help="override measure.trials")
    p.add_argument("--warmup-s", type=float, help="override measure.warmup_s")
    p.add_argument("--window-s", type=float, help="override measure.window_s")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG even if output.plot is set")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _with_overrides(cfg, args):
    """Applies command-line overrides through the same validation as the YAML."""
    raw = {k: v for k, v in (("warmup_s", args.warmup_s), ("window_s", args.window_s), ("trials", args.trials),
                             ("meter", args.meter)) if v is not None}
    if raw:
        cfg.measure = config_mod._measure({**cfg.measure.__dict__, **raw}, "command line")
    if args.device is not None:
        cfg.device = args.device
    return cfg


def _outputs(cfg, out_dir: str | None) -> dict[str, Path]:
    base = Path(out_dir) if out_dir else Path.cwd()
    return {k: base / v for k, v in cfg.output.__dict__.items() if v is not None}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models are built from configs; never fetch
    from . import report, runner

    try:
        cfg = config_mod.load(args.config) if args.config else config_mod.default()
        cfg = _with_overrides(cfg, args)
        outputs = _outputs(cfg, args.out_dir)
        # Everything checked before the first window: a bad device or an unwritable output used to
        # surface only after minutes of measuring, as a traceback.
        config_mod.check_runnable(cfg, outputs, "--device" if args.device is not None else "device")
    except ConfigError as e:
        print(f"ks_ops.profile: config error: {e}", file=sys.stderr)
        return 2

    def save(res):
        if "json" in outputs:
            report.write_json(outputs["json"], res)
        if "csv" in outputs:
            report.write_csv(outputs["csv"], res)

    results = runner.Results()
    code = 0
    try:
        runner.run(cfg, results, on_update=save, progress=not args.no_progress)
    except ConfigError as e:
        print(f"ks_ops.profile: config error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        results.status = "interrupted"
        print(f"\nks_ops.profile: interrupted; keeping {len(results.trials)} finished windows", file=sys.stderr)
        code = 130
    except Exception as e:
        traceback.print_exc()
        results.status = "failed"
        results.errors.append(f"{type(e).__name__}: {e}")
        print(f"ks_ops.profile: runtime failure: {type(e).__name__}: {e}", file=sys.stderr)
        code = 1
    save(results)
    if results.trials:
        print(report.table(report.summarize(results.trials)))
    print(f"meter: {results.meta.get('meter_description', 'none selected')}")
    for name, reps in results.surgery.items():
        if reps:
            before, after = sum(r["params_before"] for r in reps), sum(r["params_after"] for r in reps)
            print(f"{name}: {len(reps)} modules replaced, their params {before:,} -> {after:,}")
    if "plot" in outputs and not args.no_plot and results.trials:
        why_not = report.write_plot(outputs["plot"], results)
        if why_not:
            print(why_not)
    for err in results.errors:
        print(f"error: {err}", file=sys.stderr)
    for path in outputs.values():
        if path.exists():
            print(f"wrote {path}")
    return code or (1 if results.errors else 0)
