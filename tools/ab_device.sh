#!/usr/bin/env bash
# A/B on the device in one call (rounds 5, 6) (kernel timings only, one set of ceilings):
#   build; pytest -m cuda (once per TEST_ENVS entry, "-" = as is); sanitize (SANITIZE_GROUPS);
#   then benchmark runs "name:env:args"
#   from RUNS (';'-separated). Every row lands in $OUT/rows.jsonl tagged {"variant": name};
#   logs in $OUT/summary.txt (few files: the device returns only a handful).
#   STAGES="build test bench" RUNS="quick:-:--set quick --dtype bf16 --layout bf,bl;..."
# A run name with a "/N" suffix (e.g. grid4/3) takes every N-th grid pattern.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"; W=$(mktemp -d)
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0a MAX_JOBS=$(nproc)
T0=$(date +%s); st() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$OUT/summary.txt"; }
C="$W/ceil.json"
for s in ${STAGES:-build test bench}; do case $s in
  build)
    python3 -m pip install --no-build-isolation --no-deps -e . > "$W/build.log" 2>&1 || { tail -30 "$W/build.log"; st "build FAILED"; exit 1; }
    st "build ok" ;;
  test)
    for v in ${TEST_ENVS:--}; do  # "-": no extra variables
      [ "$v" = - ] && v=""
      env $v python3 -m pytest -q -m cuda -p no:cacheprovider tests/ --maxfail=20 > "$W/pytest.log" 2>&1
      st "pytest ${v:-default} rc=$? $(tail -1 "$W/pytest.log")"
      grep -hE "^(FAILED|ERROR)" "$W/pytest.log" | head -10 | tee -a "$OUT/summary.txt"
      cp "$W/pytest.log" "$OUT/pytest.log"
    done ;;
  sanitize)
    bash tools/sanitize.sh ${SANITIZE_GROUPS:-} > "$W/sanitize.log" 2>&1
    st "sanitize ${SANITIZE_GROUPS:-all}: rc=$? $(grep -E '^(memcheck|racecheck):' "$W/sanitize.log" | tr '\n' ' ')"
    grep -E "MISMATCH|sanitize cases" "$W/sanitize.log" | head -5 | tee -a "$OUT/summary.txt"
    cp "$W/sanitize.log" "$OUT/sanitize.log" ;;
  sass)  # local-memory traffic and instruction counts of the plane kernels' SASS
    cuobjdump -sass "$(ls ks_ops/_C*.so | head -1)" > "$W/all.sass" 2>/dev/null
    python3 - "$W/all.sass" <<'PY' | tee -a "$OUT/summary.txt"
import re, sys
cur, stats = None, {}
for line in open(sys.argv[1]):
    m = re.search(r"Function : (\S+)", line)
    if m:
        cur = m.group(1); stats[cur] = dict(LDL=0, STL=0, HMMA=0, LDSM=0, STSM=0, LDGSTS=0, BAR=0, n=0)
        continue
    if cur and "plane" in cur and re.search(r"/\*[0-9a-f]{4}\*/", line):
        stats[cur]["n"] += 1
        for k in ("LDL", "STL", "HMMA", "LDSM", "STSM", "LDGSTS", "BAR"):
            if re.search(r"\b" + k, line): stats[cur][k] += 1
for f, v in stats.items():
    if "plane" in f: print("sass", f[f.find("PlaneCfg"):][:60], v)
PY
    ;;
  bench)
    python3 -c "import json,sys; sys.path.insert(0,'.'); from ks_ops.bench import measure_ceilings; json.dump(measure_ceilings().as_dict(), open('$C','w'))"
    cp "$C" "$OUT/ceilings.json"; st "ceilings $(cat $C)"
    IFS=';' read -ra runs <<< "${RUNS:-}"
    for r in "${runs[@]}"; do
      name=${r%%:*}; rest=${r#*:}; envs=${rest%%:*}; args=${rest#*:}
      [ "$envs" = - ] && envs=""  # "-": no variables, as in TEST_ENVS (never `env -`)
      stride=1; [[ $name == */* ]] && stride=${name#*/}
      # shellcheck disable=SC2086
      env $envs timeout ${RUN_TIMEOUT_S:-200} python3 -c "
import sys; sys.path.insert(0, 'tools'); import bench_matmul as bm
full = bm.grid_patterns; bm.grid_patterns = lambda B: full(B)[::$stride]
bm.main(sys.argv[1:])" --batch 25088 --backends kernel --ceilings "$C" --out "$W/run.jsonl" --budget-s ${BUDGET_S:-150} $args > "$W/run.log" 2>&1
      st "bench $name ($envs $args): rc=$? $(python3 tools/bench_matmul.py --summary-only --out "$W/run.jsonl" | tail -n +3 | awk -F'|' '{printf "[%s %s %s n=%s med=%s max=%s] ", $2, $4, $5, $7, $8, $9}')"
      python3 -c "
import json
with open('$OUT/rows.jsonl', 'a') as f:
    for l in open('$W/run.jsonl'):
        r = json.loads(l); r['variant'] = '$name'; r['env'] = '$envs'; f.write(json.dumps(r) + '\n')"
      rm -f "$W/run.jsonl" "$W/run.json"
    done ;;
esac; done
cat "$OUT/summary.txt"
