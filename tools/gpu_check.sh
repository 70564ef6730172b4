#!/usr/bin/env bash
# One device call for the fused kernel (issue 3): build, CUDA tests, compute-sanitizer, benchmark.
#   bash tools/gpu_check.sh [stage ...]        stages: build test sanitize bench ncu (default: all but ncu)
# Environment:
#   BENCH   benchmark invocations, ';'-separated argument lists for tools/bench_matmul.py
#           (default: the quick set, every dtype and layout, B = 25088)
#   RESUME  a JSONL of earlier rows to resume from (copied to $OUT/bench.jsonl first)
#   BENCH_BUDGET_S  seconds after which the benchmark starts no new row (default 360)
#   NCU_CASES  cases for the ncu stage (tools/profile_cases.py syntax)
# Everything lands flat in $OUT (8 files at most): build.log pytest.log sanitize.log bench.log
# bench.jsonl bench.json bench.ceilings.json summary.txt. A short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=$(nproc)
stages=${*:-build test sanitize bench}
summary="$OUT/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 ))s]"; }

nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.limit --format=csv,noheader | tee -a "$summary"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$summary"

for stage in $stages; do
  case $stage in
    build)
      if python3 -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
        note "$(stamp) build: ok"
      else
        tail -40 "$OUT/build.log"; note "$(stamp) build: FAILED"; cat "$summary"; exit 1
      fi ;;
    test)
      python3 -m pytest -q -m cuda -p no:cacheprovider tests/ --maxfail=20 --timeout=900 > "$OUT/pytest.log" 2>&1
      rc=$?
      note "$(stamp) pytest -m cuda: rc=$rc $(tail -1 "$OUT/pytest.log")"
      tests_failed=$rc
      [ $rc -eq 0 ] || grep -E "^(FAILED|ERROR)|Error|assert" "$OUT/pytest.log" | head -15 ;;
    sanitize)
      bash tools/sanitize.sh > "$OUT/sanitize.log" 2>&1
      rc=$?
      note "$(stamp) sanitize: rc=$rc $(grep -E '^(memcheck|racecheck):' "$OUT/sanitize.log" | tr '\n' ' ')" ;;
    bench)
      if [ "${tests_failed:-0}" != 0 ]; then note "bench skipped: the tests failed"; continue; fi
      [ -n "${RESUME:-}" ] && [ -f "$RESUME" ] && cp "$RESUME" "$OUT/bench.jsonl"
      IFS=';' read -ra runs <<< "${BENCH:---set quick --dtype fp32,tf32,bf16,fp16 --layout bf,bl --batch 25088}"
      for args in "${runs[@]}"; do
        # shellcheck disable=SC2086
        python3 tools/bench_matmul.py $args --out "$OUT/bench.jsonl" --budget-s "${BENCH_BUDGET_S:-360}" \
          --ceilings "$OUT/bench.ceilings.json" >> "$OUT/bench.log" 2>&1
        note "$(stamp) bench $args: rc=$?"
      done
      python3 tools/bench_matmul.py --summary-only --out "$OUT/bench.jsonl" | tee -a "$summary" ;;
    ncu)
      # Nsight Compute on the cases in $NCU_CASES (see tools/profile_cases.py)
      ncu --clock-control none -k regex:ks_ --section SpeedOfLight --section Occupancy \
          --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
          --section SchedulerStats python3 tools/profile_cases.py ${NCU_CASES:-bf16:bf:6,64,64,1} \
          > "$OUT/ncu.txt" 2>&1
      note "$(stamp) ncu: rc=$? ($(grep -c 'ks_tile_kernel\|ks_gemv' "$OUT/ncu.txt") kernel reports)" ;;
    *) echo "unknown stage $stage"; exit 2 ;;
  esac
done
cat "$summary"
