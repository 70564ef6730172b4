"""Energy and latency of real models, dense and KS side by side: ``python -m ks_ops.profile [model.yaml]``.

Modules: config (YAML schema), models (model sources and workloads), runner (warm-up, interleaved
windows), stats (per-unit figures, CIs, paired ratios), report (table, JSON, CSV, PNG), cli.
"""
