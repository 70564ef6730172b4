#!/usr/bin/env bash
# compute-sanitizer memcheck and racecheck over tools/sanitize_cases.py (every kernel family and
# dtype, tails in every dimension; arguments: the case groups, default all). The caching allocator is off, so that each tensor is its own
# allocation and an out-of-bounds access is seen. Exit status 0 only if both report no error.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in memcheck racecheck; do
  echo "== compute-sanitizer --tool $tool"
  out=$(compute-sanitizer --tool "$tool" --error-exitcode 99 \
        python3 tools/sanitize_cases.py "$@" 2>&1)
  rc=$?
  echo "$out" | tail -25
  summary=$(echo "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY" | tail -1)
  echo "$tool: rc=$rc ${summary:-no summary line}"
  [ $rc -eq 0 ] || status=1
done
exit $status
