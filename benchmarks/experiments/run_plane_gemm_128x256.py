# python benchmarks/experiments/run_plane_gemm_128x256.py  (one H100; writes $OUT/diag4.json)
# The persistent 128x256 diagnostic GEMM (v4) against cuBLAS on the same planes, same run.
import os, json, statistics, torch
from torch.utils.cpp_extension import load
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
v4 = load("ks_v4", [os.path.join(root, "benchmarks/experiments/plane_gemm_128x256.cu")], extra_include_paths=[os.path.join(root, "csrc/cuda")],
          extra_cuda_cflags=["-O3", "-gencode=arch=compute_90a,code=sm_90a", "-DKS_OPS_SM90A"], verbose=False)
def t(fn, reps=20):
    for _ in range(3): fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for s, e in ev:
        s.record(); fn(); e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in ev)
out = {}
for pat in [(1, 768, 192, 12), (2, 1024, 1024, 4), (8, 256, 256, 24), (16, 256, 256, 6), (4, 384, 384, 12), (32, 256, 256, 8), (1, 256, 64, 96)]:
    a, b, c, d = pat; B = 25088; P = a * d
    xt = torch.randn(B, P, c, dtype=torch.bfloat16, device="cuda")
    wp = torch.randn(P, b, c, dtype=torch.bfloat16, device="cuda")
    yt = torch.full((B, P, b), float("nan"), dtype=torch.bfloat16, device="cuda")
    v4.run(xt, wp, yt); torch.cuda.synchronize()
    ref = torch.bmm(xt.transpose(0, 1), wp.transpose(1, 2)).transpose(0, 1)
    err = ((yt.float() - ref.float()).norm() / ref.float().norm()).item()
    r = dict(cublas=t(lambda: torch.bmm(xt.transpose(0, 1), wp.transpose(1, 2))), v4=t(lambda: v4.run(xt, wp, yt)), err=err)
    flops = 2 * B * P * b * c
    r["v4_tflops"] = flops / r["v4"] / 1e6; r["cublas_tflops"] = flops / r["cublas"] / 1e6
    out[str(pat)] = r
    print(pat, {k: (round(v) if k != "err" else f"{v:.2g}") for k, v in r.items()}, flush=True)
json.dump(out, open(os.path.join(os.environ.get("OUT", "."), "diag4.json"), "w"), indent=1)
