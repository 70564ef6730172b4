"""ks_ops.bench's CPU helpers: the rows benchmarks append as they finish, and the rotation sizes."""
import json

from ks_ops.bench import L2_FALLBACK_BYTES, append_row, rotation_count


def test_rows_are_appended_one_json_line_each(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"earlier": 1}\n')  # a resumed run keeps what it had
    append_row(str(path), {"pattern": [1, 4, 4, 2], "us": 3.5})
    append_row(str(path), {"pattern": [2, 8, 8, 1], "us": None})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"earlier": 1}, {"pattern": [1, 4, 4, 2], "us": 3.5}, {"pattern": [2, 8, 8, 1], "us": None}]


def test_rotation_count_exceeds_the_cache_within_its_cap(monkeypatch):
    import ks_ops.bench as bench

    monkeypatch.setattr(bench, "l2_bytes", lambda device=None: 50 * 2**20)
    assert rotation_count(0) == 1
    assert rotation_count(200 * 2**20) == 1           # one set already exceeds 3x L2
    assert rotation_count(10 * 2**20) == 8            # 15 sets wanted, capped at 8
    assert rotation_count(10 * 2**20, cap=64) == 15   # ceil(3 x 50 / 10)
    assert rotation_count(10 * 2**20, factor=1.0, cap=64) == 5
    assert L2_FALLBACK_BYTES > 0
