#!/usr/bin/env bash
# The benchmark report: installs what is missing, builds the bench preset and the Go peers
# (bench/peers/build.sh: the Go reference broker and NATS's sublist, offline, from Debian
# packages), runs every comparison (queue, pool, broker, matching, the concurrency toolkit, and the
# NATS bridge when libnats is installed; the harnesses run the Go peers between their own
# repetitions) and writes build/report/benchmarks.md plus build/report/benchmarks.png (gnuplot).
#
#   bash bench/report.sh              full run, 5 repetitions (about 5 minutes on 2 cores + build)
#   bash bench/report.sh --reps=N     N repetitions
#   bash bench/report.sh --smoke      tiny sizes, one repetition: proves the pipeline (CI runs it)
#   bash bench/report.sh --publish    full run, then copy the report to docs/ and rewrite the
#                                     README's benchmark section from it
# Run it on a quiet machine: every ratio is measured within one run, but a busy machine still
# widens the spread. Results of each binary are kept in the output directory (*.log, *.json).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/common.sh"
cd "$herald_root"

mode=full
reps=5
publish=0
for arg in "$@"; do
  case "$arg" in
    --smoke) mode=smoke ;;
    --reps=*) reps=${arg#--reps=} ;;
    --publish) publish=1 ;;
    *) echo "usage: bash bench/report.sh [--smoke] [--reps=N] [--publish]" >&2; exit 2 ;;
  esac
done
[ "$mode" = smoke ] && reps=1
if [ "$mode" = smoke ] && [ "$publish" = 1 ]; then
  echo "bench/report.sh: --publish needs a full run, not --smoke" >&2
  exit 2
fi

herald_need_packages cmake make g++ python3 gnuplot-nox libbenchmark-dev libfmt-dev \
  libatomic-queue-dev libxenium-dev libconcurrentqueue-dev libboost-dev libtbb-dev libzmq3-dev \
  nats-server libnats-dev golang-go golang-github-nats-io-go-nats-dev \
  golang-github-nats-io-nats-server-dev

cmake --preset bench >/dev/null
cmake --build --preset bench
bin=build/bench/bench
peers=$PWD/build/bench/peers
peer_tests=()
[ "$mode" = smoke ] && peer_tests=(--test)  # CI: the Go peers' own tests too
bash bench/peers/build.sh "${peer_tests[@]}" "$peers"
out=build/report$([ "$mode" = smoke ] && echo -smoke || true)
rm -rf "$out"
mkdir -p "$out"

if [ "$mode" = smoke ]; then
  export HERALD_BENCH_SMOKE=1
else
  unset HERALD_BENCH_SMOKE
fi
export HERALD_BENCH_RESULTS="$PWD/$out/results.tsv"
: >"$HERALD_BENCH_RESULTS"
gbench_flags=(--benchmark_repetitions="$reps" --benchmark_enable_random_interleaving=true
  --benchmark_out_format=json)

flags=$(sed -n 's/^CMAKE_CXX_FLAGS_RELEASE:STRING=//p' build/bench/CMakeCache.txt)
nats=absent
[ -x "$bin/bench_nats_bridge" ] && nats=built
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "cpu: $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
  echo "cores: $(nproc)"
  echo "os: $(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)"
  echo "compiler: $(g++ --version | head -1)"
  echo "go: $(go version | cut -d' ' -f3)"
  echo "flags: -std=c++20 $flags (CMAKE_BUILD_TYPE=Release)"
  echo "repetitions: $reps"
  echo "mode: $mode"
  echo "nats: $nats"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "load_start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/context.txt"

# run NAME ARGS...: one benchmark binary, its output kept in $out/NAME.log.
run() {
  local name=$1
  shift
  echo "=== bench/report.sh: $name"
  local start=$SECONDS
  if ! timeout 3600 "$bin/$name" "$@" >"$out/$name.log" 2>&1; then
    cat "$out/$name.log" >&2
    echo "bench/report.sh: $name failed" >&2
    exit 1
  fi
  echo "    done in $((SECONDS - start)) s"
}

run bench_queue --reps="$reps"
run bench_pool --benchmark_filter=NONE_the_round_robin_report_is_enough
run bench_broker --reps="$reps" --go-peer="$peers/refbroker"
smoke_time=()
[ "$mode" = smoke ] && smoke_time=(--benchmark_min_time=0.01)
# TopicIndex::match against the NATS sublist runs interleaved (--reps, --go-peer); Google Benchmark
# runs the rest (BM_index_match* would only repeat the interleaved rows).
run bench_topic_index --reps="$reps" --go-peer="$peers/sublist" "${gbench_flags[@]}" \
  "${smoke_time[@]}" --benchmark_filter=-BM_index_match --benchmark_out="$out/topic_index.json"
run bench_sync --reps="$reps"
run bench_retained --reps="$reps"
run bench_request --reps="$reps" --go-peer="$peers/refbroker"
run bench_metrics --reps="$reps"
run bench_flow --reps="$reps"
# The Go request-reply peer answers in the format go_peer.hpp reads (CI: smoke size).
[ "$mode" = smoke ] && run go_request_peer "$peers/refbroker" --smoke
if [ "$nats" = built ]; then
  run bench_nats_bridge "${gbench_flags[@]}" --benchmark_out="$out/nats_bridge.json"
  run bench_nats_service "${gbench_flags[@]}" "${smoke_time[@]}" \
    --benchmark_out="$out/nats_service.json"
fi
echo "load_end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/context.txt"

if [ "$publish" = 1 ]; then
  python3 bench/report.py "$out" --publish "$PWD"
else
  python3 bench/report.py "$out"
fi
