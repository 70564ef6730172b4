"""tools/ncu_one.py: its command line (the profiled call itself needs a GPU and Nsight Compute)."""
import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(__file__), "..", "tools", "ncu_one.py")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=120)


def test_help_names_the_arguments():
    r = run("--help")
    assert r.returncode == 0, r.stderr
    assert "pattern" in r.stdout and "linear" in r.stdout and "stream" in r.stdout and "--batch-last" in r.stdout


def test_unknown_plan_is_refused_by_name():
    r = run("1,4,4,2", "3", "streem")
    assert r.returncode == 2 and "invalid choice: 'streem'" in r.stderr


def test_bad_dtype_is_refused_by_name():
    r = run("1,4,4,2", "3", "stream", "--dtype", "int8")
    assert r.returncode == 2 and "--dtype" in r.stderr and "int8" in r.stderr
