// Runs the Go request-reply peer (bench/peers/refbroker -workload=request, through
// go_peer.hpp's go_request_reply) with 1 and 8 concurrent requesters and prints its figures:
// the smoke test that the peer builds, runs and answers in the format the harness reads.
// bench/report.sh --smoke runs it; the request-reply benchmark calls go_request_reply itself.
//
//   go_request_peer PATH_TO_REFBROKER [--smoke]     (--smoke: 500 requests each, not 20000)
#include <cstdio>
#include <cstring>
#include <string>

#include "go_peer.hpp"

int main(int argc, char** argv) {
  if (argc < 2 || (argc == 3 && std::strcmp(argv[2], "--smoke") != 0) || argc > 3) {
    std::fprintf(stderr, "usage: go_request_peer PATH_TO_REFBROKER [--smoke]\n");
    return 2;
  }
  const std::uint64_t requests = argc == 3 ? 500 : 20000;
  for (const int requesters : {1, 8}) {
    const auto f = herald_bench::go_request_reply(argv[1], requesters, requests);
    if (!f.ok || !(f.p50_ns > 0) || f.p99_ns < f.p50_ns || !(f.requests_per_s > 0)) {
      std::fprintf(stderr, "go_request_peer: %d requester(s): %s\n", requesters,
                   f.ok ? "implausible figures" : f.error.c_str());
      return 1;
    }
    std::printf(
        "Go reference broker, request-reply, %d requester(s) x %llu: p50 %.0f ns, "
        "p99 %.0f ns, %.0f requests/s\n",
        requesters, static_cast<unsigned long long>(requests), f.p50_ns, f.p99_ns,
        f.requests_per_s);
  }
  return 0;
}
