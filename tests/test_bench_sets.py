"""The benchmark's pattern sets (tools/bench_matmul.py): the paper's full grid, its seeded sample,
the batch filter, --patterns parsing, and the merge of a sweep sharded over GPUs. Pure CPU: no
timing here."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_matmul as bm  # noqa: E402


def test_paper_grid_is_the_2402_patterns():
    grid = bm.paper_patterns()
    assert len(grid) == len(set(grid)) == 2402
    for a, b, c, d in grid:
        assert a in bm.GRID_A and d in bm.GRID_A and b in bm.GRID_BC and c in bm.GRID_BC
        assert b == c or b == 4 * c or c == 4 * b
        assert bm.fits((a, b, c, d), 25088)
    # d ranges like a (the old grid had only d in {4, 16, 64})
    assert {p[3] for p in grid} == set(bm.GRID_A)


def test_sample_is_fixed_and_seeded():
    s1, s2 = bm.sample_patterns(48), bm.sample_patterns(48)
    assert s1 == s2 and len(set(s1)) == 48
    assert set(s1) <= set(bm.paper_patterns())
    assert bm.sample_patterns(48, seed=1) != s1
    assert len({p[3] for p in s1}) >= 8  # odd d (3, 6, 12, ...) are in it


def test_batch_filter_drops_patterns_too_large_for_the_batch():
    big = (128, 1024, 1024, 128)
    assert not bm.fits(big, 25088) and bm.fits(big, 1)
    assert all(bm.fits(p, 2**20) for p in bm.patterns_of("paper", 2**20))
    assert len(bm.patterns_of("paper", 2**20)) < 2402


def test_mlp_set_is_the_auto_chains_factors():
    """--set mlp: every factor of the auto chains of both layers of the four MLP blocks, once each,
    chaining in order (each factor's input is the previous one's output)."""
    from ks_ops import KSPattern, auto_chain

    mlp = bm.mlp_patterns()
    assert len(mlp) == len(set(mlp)) and (1, 8192, 2048, 2) in mlp and (1, 128, 128, 32) in mlp
    for d, h in bm.MLP_WIDTHS:
        for i, o in ((d, h), (h, d)):
            chain = [(p.a, p.b, p.c, p.d) for p in auto_chain(i, o)]
            assert set(chain) <= set(mlp)
            ps = [KSPattern(*c) for c in chain]
            assert ps[0].in_features == i and ps[-1].out_features == o
            assert all(x.out_features == y.in_features for x, y in zip(ps, ps[1:]))
    assert bm.patterns_of("mlp", 16) == mlp


def test_parse_patterns():
    assert bm.parse_patterns("1,2,3,4; 5,6,7,8/2,2,2,2") == [(1, 2, 3, 4), (5, 6, 7, 8), (2, 2, 2, 2)]
    with pytest.raises(SystemExit, match="--patterns"):
        bm.parse_patterns("1,2,x,4")


def _row(pattern, us):
    return {"op": "matmul", "set": "sample", "pattern": list(pattern), "batch": 25088, "dtype": "bf16",
            "layout": "bf", "kernel_us": us}


def test_sharded_sweep_merge(tmp_path, monkeypatch):
    """Under torchrun each rank appends to <out>.rank<r>.jsonl; rank 0 merges them into --out
    (each row once, --out's own rows first) and removes them; the resume reads every file."""
    out = str(tmp_path / "sweep.jsonl")
    with open(out, "w") as f:
        f.write(json.dumps(_row((1, 2, 3, 4), 1.0)) + "\n")
    for rank, rows in ((0, [_row((2, 2, 3, 4), 2.0)]), (1, [_row((3, 2, 3, 4), 3.0), _row((1, 2, 3, 4), 9.0)])):
        with open(bm.rank_file(out, rank), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    assert [os.path.basename(p) for p in bm.rank_files(out)] == ["sweep.rank0.jsonl", "sweep.rank1.jsonl"]
    merged = bm.merge_rank_files(out)
    assert bm.rank_files(out) == []
    on_disk = [json.loads(line) for line in open(out)]
    assert [r["pattern"][0] for r in on_disk] == [1, 2, 3] and len(merged) == 3
    assert on_disk[0]["kernel_us"] == 1.0  # --out's own row wins over a rank's repeat of it

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert bm.launcher_rank() == (0, 1)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert bm.launcher_rank() == (1, 2)
