"""tools/ab_stream.py on the CPU: its command line and the variants' sources (compiling and timing
them needs nvcc and an sm_90 GPU)."""
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
TOOL = os.path.join(ROOT, "tools", "ab_stream.py")
spec = importlib.util.spec_from_file_location("ab_stream", TOOL)
ab = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ab)


def test_help_runs_and_names_the_variant_syntax():
    r = subprocess.run([sys.executable, TOOL, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "NAME=REF" in r.stdout


@pytest.mark.parametrize("spec", ["base", "=main", "base=", "1x=main"])
def test_bad_variant_is_refused_by_name(spec):
    r = subprocess.run([sys.executable, TOOL, "--variant", spec, "--out", "x.jsonl"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2 and "NAME=REF" in r.stderr and repr(spec) in r.stderr


def test_variants_get_their_ref_files(tmp_path):
    d = ab.extract("tree", ".", str(tmp_path))
    for path in ab.FILES:
        with open(os.path.join(d, os.path.relpath(path, "csrc")), "rb") as got, open(os.path.join(ROOT, path), "rb") as want:
            assert got.read() == want.read()
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    d = ab.extract("head", "HEAD", str(tmp_path))
    head = subprocess.run(["git", "-C", ROOT, "show", "HEAD:csrc/ks_plan.h"], capture_output=True).stdout
    assert open(os.path.join(d, "ks_plan.h"), "rb").read() == head


def test_extracted_folder_is_a_variant(tmp_path):
    r = subprocess.run([sys.executable, TOOL, "--variant", "a=.", "--extract-only", "--build-dir", str(tmp_path / "ab")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    d = ab.extract("b", str(tmp_path / "ab" / "a"), str(tmp_path / "again"))
    assert open(os.path.join(d, "cuda", "ks_stream.cu"), "rb").read() == open(os.path.join(ROOT, ab.FILES[0]), "rb").read()
    with pytest.raises(SystemExit, match="variant c: no .*ks_plan.h"):
        os.makedirs(tmp_path / "half" / "cuda")
        open(tmp_path / "half" / "cuda" / "ks_stream.cu", "w").close()
        ab.extract("c", str(tmp_path / "half"), str(tmp_path / "again"))


def test_out_is_required_to_run():
    r = subprocess.run([sys.executable, TOOL, "--variant", "a=."], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--out is required" in r.stderr


def test_unknown_ref_is_named(tmp_path):
    if subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    with pytest.raises(SystemExit, match="variant x: no csrc/cuda/ks_stream.cu at git ref 'no-such-ref'"):
        ab.extract("x", "no-such-ref", str(tmp_path))


def test_pure_modules_load():
    KSPattern, time_cuda, rotation_count, append_row, matmul_ref, chain_ref = ab.pure_ks_ops()
    assert KSPattern.of((1, 4, 4, 2)).nnz == 32 and callable(time_cuda) and callable(chain_ref)


def test_case_sets_are_valid_patterns_and_batches():
    from ks_ops.pattern import KSPattern
    assert set(ab.CASE_SETS) == {"decode", "wide"}
    for cases in [c for fam in ab.KERNELS.values() for c in fam["cases"].values()]:
        for pat, batches in cases:
            KSPattern.of(pat)  # raises on a malformed pattern
            assert batches and all(isinstance(b, int) and b >= 1 for b in batches)


def test_unknown_case_set_is_refused():
    r = subprocess.run([sys.executable, TOOL, "--variant", "a=.", "--cases", "huge", "--out", "x.jsonl"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "huge" in r.stderr


def test_not_served_is_printed_as_a_dash():
    assert ab.fmt_us(None) == "-" and ab.fmt_us(3.14159) == "3.1"


def test_each_kernel_family_extracts_its_files(tmp_path):
    for name, fam in ab.KERNELS.items():
        d = ab.extract(name, ".", str(tmp_path), fam["files"])
        for path in fam["files"]:
            with open(os.path.join(d, os.path.relpath(path, "csrc")), "rb") as got, open(os.path.join(ROOT, path), "rb") as want:
                assert got.read() == want.read()
        assert os.path.isfile(os.path.join(ROOT, "tools", fam["bind"]))
        assert fam["cases"] and all(cases for cases in fam["cases"].values())


def test_case_set_of_another_family_is_refused():
    r = subprocess.run([sys.executable, TOOL, "--variant", "a=.", "--kernel", "interleaved", "--cases", "wide",
                        "--out", "x.jsonl"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--cases wide is not a case set of --kernel interleaved" in r.stderr


def test_interleaved_planes_are_w_transposed_and_zero_padded():
    import torch
    w = torch.randn(2, 5, 13, 3, dtype=torch.float64)  # c = 13: padded to 16
    wp = ab.prepared("interleaved", w)
    assert wp.shape == (2, 3, 5, 16)
    for i, j, k, l in [(0, 0, 0, 0), (1, 4, 12, 2), (0, 3, 7, 1)]:
        assert wp[i, l, j, k] == w[i, j, k, l]
    assert (wp[..., 13:] == 0).all()
    assert ab.prepared("stream", w) is w
