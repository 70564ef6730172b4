#!/usr/bin/env python3
"""Launches ks::matmul once for each case given on the command line, for Nsight Compute:
    ncu --clock-control none -k regex:ks_ python3 tools/profile_cases.py bf16:bf:6,64,64,1 ...
A case is dtype:layout:a,b,c,d[:batch] with dtype fp32|tf32|bf16|fp16 and layout bf|bl."""
import sys

import torch

import ks_ops  # noqa: F401
from ks_ops import KSPattern

DT = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
      "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False)}

for case in sys.argv[1:]:
    parts = case.split(":")
    dtype, tf32 = DT[parts[0]]
    bl = parts[1] == "bl"
    p = KSPattern.of([int(v) for v in parts[2].split(",")])
    batch = int(parts[3]) if len(parts) > 3 else 25088
    torch.backends.cuda.matmul.allow_tf32 = tf32
    w = p.random_weights(dtype=dtype, device="cuda")
    x = torch.randn((p.in_features, batch) if bl else (batch, p.in_features), dtype=dtype, device="cuda")
    y = torch.ops.ks.matmul(x, w, batch_last=bl)
    torch.cuda.synchronize()
    print(case, "ok", tuple(y.shape))
