#!/usr/bin/env bash
# Runs the storage-fault tests (tests/it/faults.rs) N times (default 20) and prints, per case,
# how many runs passed. Every run checks that no acknowledged write was lost; a failed run is
# printed with its output.
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-20}"
cargo test --test it --no-run -q
declare -A passed
for i in $(seq 1 "$runs"); do
  out=$(cargo test -q --test it -- faults:: 2>&1) || { echo "run $i failed:"; echo "$out"; exit 1; }
  while read -r name; do
    passed[$name]=$(( ${passed[$name]:-0} + 1 ))
  done < <(cargo test -q --test it -- faults:: --list 2>/dev/null | sed -n 's/^faults::\(.*\): test$/\1/p')
done
echo "| case | runs | acknowledged writes lost |"
echo "|---|---|---|"
for name in "${!passed[@]}"; do
  echo "| ${name//_/ } | ${passed[$name]} | 0 |"
done | sort
