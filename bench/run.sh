#!/usr/bin/env bash
# Runs every benchmark binary of the bench preset.
#   bash bench/run.sh --smoke     each benchmark once, tiny sizes: proves they build and run
#   bash bench/run.sh             the full comparison, repetitions interleaved, medians
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=${HERALD_BENCH_BUILD:-build/bench}
mode=${1:---full}

for exe in "$build"/bench/bench_*; do
  [ -x "$exe" ] || continue
  name=$(basename "$exe")
  echo "--- $name"
  if [ "$mode" = "--smoke" ]; then
    HERALD_BENCH_SMOKE=1 timeout 300 "$exe" --benchmark_min_time=0.001
  else
    timeout 1800 "$exe" --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true \
      --benchmark_report_aggregates_only=true
  fi
done
