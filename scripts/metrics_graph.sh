#!/usr/bin/env bash
# One Prometheus graph from the end-to-end test's data: builds examples/metrics_endpoint, runs
# tests/metrics_e2e/prometheus_e2e.py for 30 scrapes (a real Prometheus, 1 s interval), and plots
# what Prometheus's API returned -- rate() of the handler's delivered counter and the handler's
# p50/p99 from histogram_quantile -- to docs/metrics_graph.png with gnuplot.
#   bash scripts/metrics_graph.sh      (from the repository root; about a minute)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$herald_root"

herald_need_packages cmake make g++ libfmt-dev libcpp-httplib-dev pkg-config prometheus \
  gnuplot-nox python3

build=build/metrics-graph
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ \
  -DHERALD_BUILD_TESTS=OFF -DHERALD_BUILD_EXAMPLES=ON >/dev/null
cmake --build "$build" --target metrics_endpoint -j "$(nproc)"
python3 tests/metrics_e2e/prometheus_e2e.py "$build/examples/metrics_endpoint" \
  "$(command -v prometheus)" "$(command -v promtool)" --keep "$build/graph"
mkdir -p docs
gnuplot <<GP
set terminal pngcairo size 900,420 font "sans,10"
set output "docs/metrics_graph.png"
set multiplot layout 1,2 title "examples/metrics\\\\_endpoint scraped by Prometheus (1 s interval), from its HTTP API"
set xlabel "seconds"
set grid
set key bottom right
set ylabel "messages/s"
set yrange [0:*]
plot "$build/graph/series.tsv" using 1:2 with linespoints title "rate(herald\\\\_subscription\\\\_delivered\\\\_total[3s])"
set ylabel "microseconds"
plot "$build/graph/series.tsv" using 1:3 with linespoints title "handler p50", \
     "$build/graph/series.tsv" using 1:4 with linespoints title "handler p99"
unset multiplot
GP
echo "herald: wrote docs/metrics_graph.png"
