#!/usr/bin/env bash
# Every test: installs what is missing, then runs the release build and tests, ThreadSanitizer,
# AddressSanitizer+UBSan, the format check, the example tour, the benchmark report in smoke size
# (every benchmark once, tiny sizes, Markdown + chart written) and the fuzzer for a bounded time.  bash scripts/test.sh   (from the repository root)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$herald_root"

herald_need_packages cmake make g++ clang clang-format libclang-rt-14-dev catch2 \
  libbenchmark-dev libfmt-dev libatomic-queue-dev libxenium-dev libconcurrentqueue-dev \
  libboost-dev libtbb-dev libzmq3-dev nats-server libnats-dev python3 gnuplot-nox \
  prometheus libcpp-httplib-dev pkg-config golang-go golang-github-nats-io-go-nats-dev

export HERALD_WERROR="${HERALD_WERROR:-ON}"
export CTEST_OUTPUT_ON_FAILURE=1
total_start=$SECONDS

format_check() {
  local files
  files=$(git ls-files '*.hpp' '*.cpp' '*.h' 2>/dev/null || find include tests bench examples -name '*.[ch]pp')
  # shellcheck disable=SC2086
  clang-format --dry-run --Werror $files
}


fuzz() {
  cmake --preset fuzz >/dev/null
  cmake --build --preset fuzz
  bash tests/fuzz/run.sh build/fuzz "${HERALD_FUZZ_SECONDS:-60}"
}

herald_step "format check (clang-format $(clang-format --version | grep -o '[0-9][0-9.]*' | head -1))" format_check
herald_step "release build + tests (g++)" cmake --workflow --preset release
herald_step "example tour (on the release build)" env HERALD_TOUR_BUILD=build/release bash scripts/tour.sh
herald_step "ThreadSanitizer build + tests (clang++)" cmake --workflow --preset tsan
herald_step "AddressSanitizer+UBSan build + tests (clang++)" cmake --workflow --preset asan
herald_step "benchmark report, smoke size" bash bench/report.sh --smoke
herald_step "fuzzing TopicIndex against brute force" fuzz
echo
echo "herald: all checks passed in $((SECONDS - total_start)) s"
