#!/usr/bin/env bash
# The example tour: installs what is missing, builds every example and runs each one in turn.
#   bash scripts/tour.sh            (from the repository root)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$herald_root"

herald_need_packages cmake make g++ libfmt-dev libnats-dev nats-server libcpp-httplib-dev pkg-config

# HERALD_TOUR_BUILD names a build directory that already has the examples configured (release
# builds them): scripts/test.sh passes its release build, so they are not compiled twice.
build=${HERALD_TOUR_BUILD:-build/tour}
if [ -z "${HERALD_TOUR_BUILD:-}" ]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=g++ \
    -DHERALD_BUILD_TESTS=OFF -DHERALD_BUILD_EXAMPLES=ON -DHERALD_WERROR="${HERALD_WERROR:-OFF}" >/dev/null
fi
cmake --build "$build" -j "$(nproc)"

# The order tells a story: basics first, the pipeline that combines them last.
# Each example is bounded in time; one that hangs fails the tour.
failed=0
# A line is an example's name, then optionally its arguments.
while read -r name args; do
  [ -z "$name" ] && continue
  case "$name" in \#*) continue ;; esac
  if [ ! -x "$build/examples/$name" ]; then
    echo "herald tour: example '$name' was not built" >&2
    failed=1
    continue
  fi
  echo
  echo "────────────────────────── $name ──────────────────────────"
  # shellcheck disable=SC2086  # the arguments are words
  if ! timeout 120 "$build/examples/$name" $args; then
    echo "herald tour: example '$name' failed" >&2
    failed=1
  fi
done < examples/tour.txt
exit $failed
