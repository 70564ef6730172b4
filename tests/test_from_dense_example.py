"""tools/from_dense_example.py (issue from-dense): runs on the CPU with nothing downloaded, and the
projected KS model keeps what the dense model learned (far above chance with no training at all),
with a fraction of the parameters. Short training here; the README's numbers use the defaults."""
import os
import sys

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import from_dense_example  # noqa: E402


def test_projection_keeps_the_trained_function():
    result = from_dense_example.run(epochs=12, finetune=2)
    rows = result["rows"]
    assert set(rows) == {"dense", "projected", "projected + fine-tune", "KS from random init"}
    assert rows["dense"]["test_accuracy"] > 0.85
    assert rows["projected"]["test_accuracy"] > 0.5  # chance is 0.1; no training after projection
    assert rows["projected"]["params"] < rows["dense"]["params"] / 3
    assert all(0 < e < 1 for e in result["projection_errors"].values())
