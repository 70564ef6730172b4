"""The profiler end to end on the CPU: in subprocesses with the real meter selection, and in-process
with a fake energy meter (the energy columns, idle baseline and plot); the energy bench too."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ks_ops import meters
from ks_ops.meters import select_meter

ROOT = Path(__file__).resolve().parents[1]
CPU_SMALL = str(ROOT / "profiles" / "cpu_small.yaml")
CMD = [sys.executable, "-m", "ks_ops.profile"]


def test_cpu_profile_end_to_end(tmp_path):
    r = subprocess.run([*CMD, CPU_SMALL, "--out-dir", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "cpu_small.json").read_text())
    meter = select_meter("cpu")
    assert doc["status"] == "complete" and not doc["errors"]
    assert doc["meta"]["meter"] == meter.name and doc["meta"]["meter_reason"]
    # forward: 2 variants x 2 trials; generate: 2 variants x (prefill + decode) x 2 trials
    assert len(doc["trials"]) == 12
    assert all(t["time_s"] >= max(0.05, meter.min_window_s) for t in doc["trials"])  # >= half of 0.1 s
    rows = {(s["group"], s["phase"], s["variant"]): s for s in doc["summary"]}
    assert set(rows) == {(g, p, v) for g, p in [("forward float32", "forward"), ("generate(8+4) float32", "prefill"),
                                                ("generate(8+4) float32", "decode")] for v in ("dense", "ks")}
    decode = rows["generate(8+4) float32", "decode", "ks"]
    assert decode["unit"] == "output token" and decode["trials"] == 2 and decode["ratio_time"] > 0
    assert rows["forward float32", "forward", "dense"]["ratio_time"] == pytest.approx(1.0)
    if not meter.measures_energy:
        assert decode["j_per_unit"] is None and "J/unit" not in r.stdout
    assert [s["name"] for s in doc["surgery"]["ks"]] == ["transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    with open(tmp_path / "cpu_small.csv") as f:
        assert len(list(csv.DictReader(f))) == 6
    assert "| variant" in r.stdout and f"meter: {meter.name}" in r.stdout
    assert not list(tmp_path.glob(".*.tmp"))


def test_ctrl_c_keeps_finished_trials(tmp_path):
    out = tmp_path / "cpu_small.json"
    p = subprocess.Popen([*CMD, CPU_SMALL, "--out-dir", str(tmp_path), "--trials", "1000", "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out.exists() and len(json.loads(out.read_text())["trials"]) >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode == 130, stderr
    doc = json.loads(out.read_text())
    assert doc["status"] == "interrupted" and len(doc["trials"]) >= 2
    assert "interrupted; keeping" in stderr and "| variant" in stdout


def test_default_profile_runs_without_a_config(tmp_path):
    # The README's main-job command, shortened here: 1 trial of 0.1 s windows.
    r = subprocess.run([*CMD, "--out-dir", str(tmp_path), "--trials", "1", "--window-s", "0.1",
                        "--warmup-s", "0", "--no-progress", "--device", "cpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "ks_profile.json").read_text())
    assert {t["variant"] for t in doc["trials"]} == {"dense", "ks"}


def test_runtime_failure_exits_1(tmp_path):
    """A failure only the run can find (the model's own forward raises) exits 1 and keeps a JSON
    that says so."""
    (tmp_path / "failing_model.py").write_text(
        "import torch\n"
        "class Broken(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = torch.nn.Linear(8, 8)\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('broken forward')\n"
        "def build():\n"
        "    return Broken()\n")
    cfg = {"model": {"source": "python", "target": "failing_model:build"}, "input": {"batch_size": 2, "image_size": 8},
           "device": "cpu", "variants": [{"name": "dense"}], "measure": {"warmup_s": 0, "window_s": 0.1, "trials": 1},
           "output": {"json": "broken.json"}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*CMD, str(path), "--out-dir", str(tmp_path), "--no-progress"], capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1, r.stderr
    assert "warm-up failed: RuntimeError: broken forward" in r.stderr
    doc = json.loads((tmp_path / "broken.json").read_text())
    assert any("broken forward" in e for e in doc["errors"]) and not doc["trials"]


@pytest.mark.parametrize("args, message", [
    (["--device", "foo"], "--device: must be auto, cpu, cuda or cuda:N, got 'foo'"),
    (["--warmup-s", "inf"], "warmup_s: must be a finite non-negative number, got inf"),
    (["--window-s", "nan"], "window_s: must be a finite positive number, got nan"),
    (["--out-dir", "/proc/ks_ops_nowhere"], "output.json: cannot write"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "--device: 'cuda' was asked for but torch")]))
def test_bad_settings_exit_2_before_measuring(tmp_path, args, message):
    """Bad settings are config errors (exit 2, the field named, no traceback), found before any
    window is measured: an unwritable output once surfaced after the whole run, .inf warm-up hung,
    a device that does not exist gave a traceback."""
    argv = [*CMD, CPU_SMALL, "--no-progress", "--trials", "1", "--window-s", "0.1"]
    if "--out-dir" not in args:
        argv += ["--out-dir", str(tmp_path)]
    r = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr
    assert not list(tmp_path.glob("*.json"))


def test_missing_extra_names_the_install_command(tmp_path):
    code = ("import sys; sys.modules['tqdm'] = None; from ks_ops.profile import cli; "
            f"sys.exit(cli.main([{CPU_SMALL!r}, '--out-dir', {str(tmp_path)!r}]))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "pip install 'ks_ops[profile]'" in r.stderr and "'tqdm'" in r.stderr


def test_energy_bench_runs_and_resumes(tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, str(ROOT / "tools" / "bench_energy.py"), "--batch", "64", "--window-s", "0.02",
           "--warmup-s", "0", "--trials", "2", "--patterns", "2,48,192,1", "--dtypes", "float32",
           "--device", "cpu", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["backend"] for row in rows] == ["kernel", "bmm", "dense"]
    assert all(row["trials"] == 2 and row["time_s"] > 0 for row in rows)
    assert "kernel / best" in r.stdout and "geometric mean over 1 cells" in r.stdout
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 3  # resumed: nothing rerun


class HundredWattMeter(meters.Meter):
    """A counter meter on the real clock: 100 W, 1 ms updates (so a 20 ms minimum window)."""

    name = "fake100w"
    update_period_s = 0.001

    def _start(self, name):
        return time.perf_counter()

    def _stop(self, name, token):
        return 100.0 * (time.perf_counter() - token)


def test_energy_path_in_process(tmp_path, monkeypatch, capsys):
    from ks_ops.profile import cli

    monkeypatch.setattr(meters, "select_meter", lambda device, prefer="auto": HundredWattMeter(device, "test"))
    raw = yaml.safe_load(Path(CPU_SMALL).read_text())
    raw["output"]["plot"] = "cpu_small.png"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    assert cli.main([str(cfg), "--out-dir", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "cpu_small.json").read_text())
    assert doc["meta"]["meter"] == "fake100w" and len(doc["idle"]) == 4  # 2 groups x 2 trials
    for row in doc["summary"]:
        assert row["power_w"] == pytest.approx(100.0, rel=0.05)
        assert row["net_j_per_unit"] == pytest.approx(0.0, abs=0.05 * row["j_per_unit"])  # idle is 100 W too
        assert row["ratio_j"] > 0 and row["j_per_unit_lo"] is not None
    out = capsys.readouterr().out
    assert "J/unit ± CI" in out and "net J/unit ± CI" in out and "J ratio" in out
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot skipped: matplotlib is not installed" in out
    else:
        assert (tmp_path / "cpu_small.png").stat().st_size > 10_000
