#!/usr/bin/env bash
# Runs each fuzz target for a bounded time: bash tests/fuzz/run.sh BUILD_DIR SECONDS
set -euo pipefail
build=$1
seconds=${2:-60}
n=0
for exe in "$build"/tests/fuzz/fuzz_*; do
  [ -x "$exe" ] || continue
  n=$((n + 1))
done
[ $n -gt 0 ] || { echo "no fuzz targets in $build" >&2; exit 1; }
per=$(( (seconds + n - 1) / n ))
for exe in "$build"/tests/fuzz/fuzz_*; do
  [ -x "$exe" ] || continue
  corpus=$(mktemp -d)
  echo "--- $(basename "$exe") for ${per} s"
  "$exe" -max_total_time="$per" -max_len=512 -print_final_stats=1 "$corpus" 2>&1 | tail -n 15
  rm -rf "$corpus"
done
