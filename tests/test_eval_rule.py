"""tools/eval_rule.py: the rule against measured plans (CPU: the rule is compiled into the CPU build)."""
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
TOOL = os.path.join(ROOT, "tools", "eval_rule.py")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_scores_committed_rows_per_group():
    r = run("benchmarks/results/plans12_h100_d3612_bf16.jsonl")
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("('bf16', 'bf', ")]
    assert [line.split(")")[0] for line in lines] == ["('bf16', 'bf', 1024", "('bf16', 'bf', 4096", "('bf16', 'bf', 25088"]
    assert all("within 5% of the best plan" in line and "/21" in line for line in lines)


def test_missing_file_is_named():
    r = run("no_such_rows.jsonl")
    assert r.returncode == 2 and "no such file: no_such_rows.jsonl" in r.stderr


def test_no_argument_prints_usage():
    r = run()
    assert r.returncode == 2 and "usage:" in r.stderr
