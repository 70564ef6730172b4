#!/usr/bin/env bash
# The H200 run of issue 4: installs Zeus from the carried wheels, builds ks_ops for the machine's
# torch, checks that Zeus reads the GPU's energy, then runs the two profiles and the op's energy
# benchmark. Everything lands flat in $OUT, 8 files at most: log.txt, vit_s16.{json,csv,png},
# gpt2_medium.{json,csv,png}, bench_energy.jsonl. Each is written as results arrive, so a run cut
# short still returns what finished.
#
# Here, once (fills the git-ignored .whl/):   ../shared/tools/fetch-device-wheels.sh
# On the GPU machine (carry .whl):             bash tools/gpu_profile.sh [stage ...]
# Stages (default: all four, in this order), with times estimated from their window counts
# (windows of 2.1 s = 20 updates of the H200's 100 ms energy counter plus 5%):
#   check  Zeus measures the GPU (one idle window)                       ~10 s
#   vit    profiles/vit_s16.yaml: 6 variants (2 compiled) x {bf16, fp32}, 3 trials  ~3-4 min
#   vitt   profiles/vit_s16_timm.yaml: timm's ViT-S/16, 4 variants (2 compiled) x {bf16, fp32}  ~3 min
#   gpt2c  profiles/gpt2_medium_compiled.yaml: dense and KS compiled x {fp32, bf16}  ~3-4 min
#   gpt2   profiles/gpt2_medium.yaml: 2 variants x {forward, generate} x {fp32, bf16}, 3 trials  ~2.5 min
#   gpt2d  profiles/gpt2_medium_decode_compiled.yaml: generate under reduce-overhead, static cache, bf16,
#          batch 16  ~5.5 min
#   gpt2d128  the same at batch 128 (profiles/gpt2_medium_decode_compiled_b128.yaml)
#   gpt2e  profiles/gpt2_medium_decode.yaml: eager generate at batch 16, bf16
#   bench  tools/bench_energy.py: the 6 ViT-S/16 factors in fp32 and bf16 and 2 grid patterns in
#          bf16, B = 25088, backends kernel/bmm/dense interleaved, 2 trials  ~3.3 min
# plus the build (~1 min for the C++ op; more if CUDA sources compile): 8-9 minutes in all. The
# stages run in that order and each writes as it goes, so a call cut short at its 10-minute limit
# still returns the finished stages. To be safe, split into two calls ("check vit gpt2", then
# "check bench"); on a warm machine the second skips the build and the bench resumes from
# build/gpu_profile/.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
WORK=build/gpu_profile  # git-ignored, kept between calls on a warm machine
mkdir -p "$OUT" "$WORK"

meter_was_zeus() {
  python3 -c "import json, sys; m = json.load(open(sys.argv[1]))['meta'].get('meter'); print('meter used:', m); sys.exit(m != 'zeus')" "$1" \
    || { echo "SMOKE CHECK FAILED: $1 was not measured with Zeus"; return 1; }
}

# One profile (profiles/NAME.yaml, whose json output is NAME.json) within SECONDS, then the check
# that Zeus measured it; a failure marks the run's status (main's local) and the stages go on.
profile() {
  timeout -s INT -k 30 "$2" python3 -m ks_ops.profile "profiles/$1.yaml" --out-dir "$OUT" --no-progress || status=1
  meter_was_zeus "$OUT/$1.json" || status=1
}

main() {
  local status=0 stages=${*:-check vit gpt2 bench}
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0a}
  nvidia-smi --query-gpu=name,driver_version,power.limit,power.draw,temperature.gpu --format=csv

  # Zeus and its missing dependencies from the carried wheels (the machine has no network).
  local site; site=$(mktemp -d)
  if ls .whl/*.whl >/dev/null 2>&1 && python3 -m pip install -q --no-index --no-deps --no-compile \
       --no-cache-dir --target "$site" .whl/*.whl; then
    export PYTHONPATH="$PWD:$site:${PYTHONPATH:-}"
  else
    echo "WARNING: Zeus wheels missing from .whl/ or not installable (carry .whl): meters fall back to the NVML counter"
    export PYTHONPATH="$PWD:${PYTHONPATH:-}"
  fi

  # ks_ops for this machine's python and torch (skipped when a warm machine has it built).
  if ! python3 -c "import ks_ops" 2>/dev/null; then
    echo "== build ks_ops"
    if ! python3 setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1; then
      tail -n 30 "$WORK/build.log"
      echo "WARNING: the CUDA build failed; building the CPU extension (no fused kernel on the GPU)"
      KS_OPS_NO_CUDA=1 python3 setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1 \
        || { tail -n 30 "$WORK/build.log"; echo "ks_ops build failed"; return 1; }
    fi
  fi
  python3 -c "import torch, ks_ops; print('ks_ops', ks_ops.__version__, 'CUDA build:', ks_ops.BUILD_INFO.WITH_CUDA, '| torch', torch.__version__, '|', torch.cuda.get_device_name())" \
    || return 1

  for stage in $stages; do
    echo "== $stage (t=${SECONDS}s)"
    case $stage in
      check)
        python3 - <<'PY' || status=1
import time
from ks_ops.meters import select_meter
m = select_meter("cuda", prefer="zeus")
print("zeus:", m.describe())
m.begin_window("idle")
time.sleep(m.target_window_s(0))
r = m.end_window("idle")
print(f"idle window: {r.energy_j:.1f} J in {r.time_s:.2f} s = {r.power_w:.0f} W")
PY
        ;;
      vit) profile vit_s16 330 ;;
      vitt) profile vit_s16_timm 330 ;;
      gpt2) profile gpt2_medium 260 ;;
      gpt2c) profile gpt2_medium_compiled 300 ;;
      gpt2d) profile gpt2_medium_decode_compiled 300 ;;
      gpt2d128) profile gpt2_medium_decode_compiled_b128 300 ;;
      gpt2e) profile gpt2_medium_decode 240 ;;
      bench)  # rows go straight to $OUT (kept if the call is cut short) and back to $WORK to resume
        [ -f "$WORK/bench_energy.jsonl" ] && cp "$WORK/bench_energy.jsonl" "$OUT/"
        local common=(--trials 2 --warmup-s 0.3 --out "$OUT/bench_energy.jsonl")
        timeout -s INT -k 30 240 python3 tools/bench_energy.py --patterns vit --dtypes float32,bfloat16 "${common[@]}" || status=1
        timeout -s INT -k 30 60 python3 tools/bench_energy.py --patterns "4,64,64,4;1,256,256,4" --dtypes bfloat16 "${common[@]}" || status=1
        cp "$OUT/bench_energy.jsonl" "$WORK/" 2>/dev/null
        ;;
      *) echo "unknown stage $stage (check, vit, vitt, gpt2, gpt2c, gpt2d, gpt2d128, gpt2e, bench)"; status=2 ;;
    esac
  done
  rm -f "$OUT"/.*.tmp
  echo "== done in ${SECONDS}s, status $status"
  ls -la "$OUT"
  return $status
}

main "$@" 2>&1 | tee "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
