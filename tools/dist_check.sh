#!/usr/bin/env bash
# Issue distributed on a 2-GPU machine, one call: build, the distributed tests (gloo on CPU and
# NCCL on the GPUs), then the seeded sample swept with 1 and with 2 GPUs under torchrun (wall
# times). Logs and JSON under $OUT (default ./gpu_out).
#   device kind nvidia-h100-x2:  bash tools/dist_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a} MAX_JOBS=$(nproc)
T0=$(date +%s); st() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
nvidia-smi -L | tee -a "$OUT/summary.txt"
python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; st "build FAILED"; exit 1; }
st "build ok"
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/test_distributed.py -rA > "$OUT/pytest_dist.log" 2>&1
st "pytest distributed rc=$? $(tail -1 "$OUT/pytest_dist.log")"
grep -E "^(PASSED|FAILED|ERROR)" "$OUT/pytest_dist.log" | tee -a "$OUT/summary.txt"
python3 -c "import json,sys; sys.path.insert(0,'.'); from ks_ops.bench import measure_ceilings; json.dump(measure_ceilings().as_dict(), open('$OUT/ceilings.json','w'))"
for n in 1 2; do
  s=$(date +%s.%N)
  timeout 300 torchrun --standalone --nproc_per_node $n tools/bench_matmul.py --set sample --batch 25088 --dtype bf16 \
    --layout bf --backends kernel,bmm --max-row-s 0.08 --samples 9 --ceilings "$OUT/ceilings.json" \
    --out "$OUT/sweep_${n}gpu.jsonl" > "$OUT/sweep_${n}gpu.log" 2>&1
  rc=$?; e=$(date +%s.%N)
  st "sweep nproc=$n rc=$rc wall_s=$(python3 -c "print(round($e-$s,1))") rows=$(wc -l < "$OUT/sweep_${n}gpu.jsonl")"
  tail -3 "$OUT/sweep_${n}gpu.log" | tee -a "$OUT/summary.txt"
done
