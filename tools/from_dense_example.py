"""From a trained dense model to a KS model, on the CPU with nothing downloaded (issue
from-dense): an MLP trained on scikit-learn's bundled digits (1797 8×8 images, 10 classes), its two
hidden layers replaced by KS chains four to three times smaller, compared four ways:

  dense                        the trained model
  projected                    ks_surgery(init="project"): each layer starts from its dense weight's
                               projection (the exact optimum for two factors), no training
  projected + fine-tune        then a few epochs of the same training
  KS from random init          the same KS model trained from the paper's init, as long as dense

    python tools/from_dense_example.py [--epochs 300] [--finetune 30] [--out result.json]

Needs scikit-learn (pip install "ks_ops[dev]"). Deterministic (fixed seeds); about 80 s on 2 CPU
cores at the defaults."""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402
from torch import nn  # noqa: E402

from ks_ops import ks_surgery  # noqa: E402
from ks_ops.profile.report import atomic_write  # noqa: E402

# 64 -> 512 -> 512 -> 10; the hidden layers as KS chains (first factor first).
CHAINS = {"0": [(4, 16, 16, 1), (1, 128, 16, 4)],   # 64 -> 512: 9,216 weights instead of 32,768
          "2": [(8, 64, 64, 1), (1, 64, 64, 8)]}    # 512 -> 512: 65,536 instead of 262,144


def load(seed: int = 0):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit("from_dense_example: needs scikit-learn (pip install 'ks_ops[dev]')") from None
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:360], perm[360:]
    return x[train], y[train], x[test], y[test]


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))


def train(model: nn.Module, x, y, epochs: int, lr: float = 2e-3, seed: int = 0) -> nn.Module:
    """Full-batch-ish Adam (batches of 128), fixed order per seed."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x, y) -> float:
    with torch.no_grad():
        return (model(x).argmax(-1) == y).float().mean().item()


def run(epochs: int = 300, finetune: int = 30) -> dict:
    xtr, ytr, xte, yte = load()
    torch.manual_seed(0)
    dense = train(mlp(), xtr, ytr, epochs)
    rows = {"dense": (accuracy(dense, xte, yte), sum(p.numel() for p in dense.parameters()))}
    projected = copy.deepcopy(dense)
    report = ks_surgery(projected, CHAINS, init="project")
    ks_params = sum(p.numel() for p in projected.parameters())
    rows["projected"] = (accuracy(projected.eval(), xte, yte), ks_params)
    rows["projected + fine-tune"] = (accuracy(train(projected, xtr, ytr, finetune, lr=1e-3), xte, yte), ks_params)
    torch.manual_seed(0)
    scratch = mlp()
    ks_surgery(scratch, CHAINS, init="random")
    rows["KS from random init"] = (accuracy(train(scratch, xtr, ytr, epochs), xte, yte), ks_params)
    return {"epochs": epochs, "finetune_epochs": finetune,
            "projection_errors": {r.name: r.approx_error for r in report.replacements},
            "rows": {k: {"test_accuracy": a, "params": p} for k, (a, p) in rows.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--finetune", type=int, default=30)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    result = run(args.epochs, args.finetune)
    print(f"{'model':<24} {'test accuracy':>14} {'params':>9}")
    for name, row in result["rows"].items():
        print(f"{name:<24} {row['test_accuracy']:>14.3f} {row['params']:>9,}")
    print("projection errors (relative, per layer):",
          ", ".join(f"{k}: {v:.3f}" for k, v in result["projection_errors"].items()))
    if args.out:
        atomic_write(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
