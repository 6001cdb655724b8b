#!/usr/bin/env bash
# Builds the Go peers of the benchmark report into OUTDIR (default build/bench/peers):
#   OUTDIR/refbroker   the Go reference broker of DESIGN.md (bench_broker --go-peer=...), also
#                      the request-reply peer (-workload=request; go_peer.hpp: go_request_reply)
#   OUTDIR/sublist     NATS's subscription matcher on bench_topic_index's workloads
#                      (bench_topic_index --go-peer=...)
# Offline and from Debian packages only: golang-go, and nats-server's sources from
# golang-github-nats-io-nats-server-dev (with their dependencies) under /usr/share/gocode, built
# in GOPATH mode (no modules, no proxy, no download). nats-server's import path ends in /v2, which
# the Debian tree does not have: OUTDIR/gopath adds it as a symlink. The build cache stays in
# OUTDIR/gocache. --test also runs go vet and the programs' tests (the broker's NATS matching
# semantics and delivery guarantees, the generator's std::mt19937_64 sequence).
#
#   bash bench/peers/build.sh [--test] [OUTDIR]
set -euo pipefail
peers="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$peers/../.." && pwd)"
test=0
if [ "${1:-}" = --test ]; then
  test=1
  shift
fi
out="${1:-$root/build/bench/peers}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
gocode=/usr/share/gocode/src

if ! command -v go >/dev/null 2>&1; then
  echo "bench/peers/build.sh: no Go toolchain: install the Debian package golang-go" >&2
  exit 1
fi
if [ ! -f "$gocode/github.com/nats-io/nats-server/server/sublist.go" ]; then
  echo "bench/peers/build.sh: nats-server's sources are missing from $gocode: install the" \
    "Debian package golang-github-nats-io-nats-server-dev" >&2
  exit 1
fi

mkdir -p "$out/gopath/src/github.com/nats-io/nats-server"
ln -sfn "$gocode/github.com/nats-io/nats-server" "$out/gopath/src/github.com/nats-io/nats-server/v2"

export GO111MODULE=off GOFLAGS= GOENV=off GOPROXY=off GOSUMDB=off GOTOOLCHAIN=local
export GOPATH="$out/gopath:/usr/share/gocode" GOCACHE="$out/gocache"
for program in refbroker sublist; do
  if ! (cd "$peers/$program" && go build -p 2 -o "$out/$program" .); then
    echo "bench/peers/build.sh: building $program failed (GOPATH=$GOPATH; is every package" \
      "nats-server imports installed under /usr/share/gocode?)" >&2
    exit 1
  fi
  if [ "$test" = 1 ]; then
    (cd "$peers/$program" && go vet . && go test -p 2 -count=1 .)
  fi
done
echo "bench/peers/build.sh: built $out/refbroker and $out/sublist with $(go version | cut -d' ' -f3)"
