"""tools/bench_mlp.py on the CPU (no timing asserted): the blocks it compares (the KS one with the
GELU folded into its first KSLinear, as surgery makes it), its byte and flop counts, argument
errors, and the rows it writes."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import bench_mlp as bm  # noqa: E402

from ks_ops import KSLinear  # noqa: E402


def test_ks_block_folds_the_gelu_into_its_first_layer():
    torch.manual_seed(0)
    dense = bm.dense_block(48, 192, "cpu", torch.float64)
    ks = bm.ks_block(48, 192, "cpu", torch.float64)
    assert [type(m) for m in dense] == [torch.nn.Linear, torch.nn.GELU, torch.nn.Linear]
    assert [type(m) for m in ks] == [KSLinear, KSLinear] and [m.activation for m in ks] == ["gelu", "none"]
    assert (ks[0].in_features, ks[0].out_features, ks[1].out_features) == (48, 192, 48)
    x = torch.randn(5, 48, dtype=torch.float64)
    unfolded = ks[1](torch.nn.functional.gelu(torch.ops.ks.chain(x, list(ks[0].factors), ks[0].bias, "none")))
    torch.testing.assert_close(ks(x), unfolded)


def test_cold_copies_are_independent():
    copies = bm.block_copies(lambda: bm.dense_block(32, 128, torch.device("cpu"), torch.float32), True,
                             torch.device("cpu"))
    assert len(copies) == 64 and not torch.equal(copies[0][0].weight, copies[1][0].weight)
    assert len(bm.block_copies(lambda: bm.dense_block(32, 128, torch.device("cpu"), torch.float32), False,
                               torch.device("cpu"))) == 1


def test_bytes_and_flops():
    dense = bm.dense_block(64, 256, "cpu", torch.float32)
    nbytes, flops = bm.block_bytes_flops(dense, 10, 4)
    assert flops == 2 * 10 * 64 * 256 * 2
    assert nbytes == 4 * (10 * (64 + 256) * 2 + 2 * 64 * 256 + 256 + 64)
    ks = bm.ks_block(64, 256, "cpu", torch.float32)
    kbytes, kflops = bm.block_bytes_flops(ks, 10, 4)
    weights = sum(p.numel() for p in ks.parameters())
    assert kbytes == 4 * (10 * (64 + 256) * 2 + weights)
    assert kflops == sum(2 * 10 * f.numel() for layer in ks for f in layer.factors) < flops


def test_rows_and_errors(tmp_path):
    out = tmp_path / "mlp.jsonl"
    assert bm.main(["--blocks", "32x128", "--tokens", "3", "--dtypes", "fp32", "--device", "cpu",
                    "--samples", "2", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["block"] == [32, 128] and rows[0]["tokens"] == 3
    assert rows[0]["dense_us"] > 0 and rows[0]["ks_us"] > 0 and rows[0]["timing"] == "cpu-wall"
    assert rows[0]["weights"] == "hot" and rows[0]["dense_weight_sets"] == rows[0]["ks_weight_sets"] == 1
    cold = tmp_path / "cold.jsonl"
    assert bm.main(["--blocks", "32x128", "--tokens", "2", "--dtypes", "fp32", "--device", "cpu", "--cold",
                    "--samples", "2", "--out", str(cold)]) == 0
    row = json.loads(cold.read_text())
    assert row["weights"] == "cold" and row["dense_weight_sets"] == row["ks_weight_sets"] == 64  # tiny: the cap
    with pytest.raises(SystemExit, match="--blocks: each block is DxH"):
        bm.main(["--blocks", "32by128", "--device", "cpu", "--out", str(out)])
    with pytest.raises(SystemExit, match="--tokens"):
        bm.main(["--blocks", "32x128", "--tokens", "0", "--device", "cpu", "--out", str(out)])
    with pytest.raises(SystemExit, match="--dtypes"):
        bm.main(["--blocks", "32x128", "--dtypes", "int8", "--device", "cpu", "--out", str(out)])
