"""tools/bench_chain.py on the CPU (no timing asserted): the chains it builds (--chains, and the
auto chains of --blocks), argument errors, and the rows it writes (paths that cannot run recorded
as null)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_chain as bc  # noqa: E402

from ks_ops import KSPattern, auto_chain  # noqa: E402


def test_chains_from_the_command_line():
    assert bc.chains_of("3,5,7,2/1,4,15,2;1,7,5,1") == [[(3, 5, 7, 2), (1, 4, 15, 2)], [(1, 7, 5, 1)]]
    with pytest.raises(SystemExit, match="is not the next one's input"):
        bc.chains_of("3,5,7,2/1,4,16,2")
    with pytest.raises(SystemExit, match="--chains"):
        bc.chains_of("3,5,7/1,4,15,2")
    blocks = bc.block_chains("48x192")
    assert blocks == [[p.shape for p in auto_chain(48, 192)], [p.shape for p in auto_chain(192, 48)]]
    for chain, (i, o) in zip(blocks, [(48, 192), (192, 48)]):
        assert KSPattern.of(chain[0]).in_features == i and KSPattern.of(chain[-1]).out_features == o


def test_rows_written(tmp_path):
    out = tmp_path / "chain.jsonl"
    assert bc.main(["--chains", "3,5,7,2/1,4,15,2", "--batch", "1,3", "--dtypes", "fp32", "--samples", "2",
                    "--device", "cpu", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["rows"] for r in rows] == [1, 3]
    for r in rows:
        assert r["chain"] == [[3, 5, 7, 2], [1, 4, 15, 2]] and r["rule"] == "factors" and r["timing"] == "cpu-wall"
        assert r["rule_us"] > 0 and r["factors_us"] > 0 and r["dense_us"] > 0
        assert r["fused_us"] is None and r["stream_us"] is None  # GPU paths: not on the CPU
        assert r["weights"] == "hot" and r["weight_sets"] == r["dense_weight_sets"] == 1
    cold = tmp_path / "cold.jsonl"
    assert bc.main(["--chains", "3,5,7,2/1,4,15,2", "--batch", "2", "--dtypes", "fp32", "--samples", "2",
                    "--device", "cpu", "--cold", "--out", str(cold)]) == 0
    r = json.loads(cold.read_text())
    assert r["weights"] == "cold" and r["weight_sets"] == r["dense_weight_sets"] == 64 and r["rule_us"] > 0


def test_argument_errors():
    with pytest.raises(SystemExit, match="give --chains or --blocks"):
        bc.main(["--device", "cpu"])
    with pytest.raises(SystemExit, match="--batch"):
        bc.main(["--chains", "1,7,5,1", "--batch", "0", "--device", "cpu"])
