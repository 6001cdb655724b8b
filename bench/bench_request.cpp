// Request-reply in one process (herald/request.hpp) against its yardsticks, same run:
//   herald Service   requesters call Service::request; one responder (Rep = x + 1) runs on a
//                    WorkerPool of hardware_concurrency() threads; 1 and 8 requester threads.
//   broker ping-pong the floor: thread A publishes on "ping" (pull subscription in B), B
//                    receives and publishes on "pong", A receives -- herald's own round trip
//                    through the broker without the request machinery (1 requester only).
//   inline responder the responder runs in the requester's thread (inline_executor): what the
//                    request machinery costs without a thread hand-over (shown, not judged).
//   Go               the Go reference broker (bench/peers/refbroker's design) carrying each
//                    request with a reply channel made per request; a responder goroutine
//                    answers; 1 and 8 requester goroutines (bench/peers/refbroker
//                    -workload=request).
// Every round trip is timed on its own (steady_clock, on both sides alike), giving p50 and p99;
// requests/s is requests over wall time. Repetitions interleave the contenders; medians
// reported. Goals: herald p50 <= 1.5x the broker ping-pong p50 (1 requester); herald
// requests/s >= 2x Go at 1 and 8 requesters. A wrong or missing reply fails the run loudly.
// Results also go to $HERALD_BENCH_RESULTS (bench/results.hpp), suite "request".
//
//   bench_request [--reps=N] [--go-peer=PATH]     HERALD_BENCH_SMOKE=1: tiny sizes, one rep
#include <herald/broker.hpp>
#include <herald/request.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "go_peer.hpp"
#include "results.hpp"

#include <fmt/core.h>

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && *s != '\0' && *s != '0';
}

[[noreturn]] void fail(const std::string& who, const std::string& what) {
  fmt::print(stderr, "bench_request: {}: {}\n", who, what);
  std::exit(1);
}

/// One run of a contender: latency percentiles (ns) and throughput.
struct Run {
  double p50 = 0;
  double p99 = 0;
  double per_second = 0;
};

Run summarize_run(std::vector<double>& ns, Clock::duration wall) {
  std::sort(ns.begin(), ns.end());
  Run r;
  r.p50 = ns[ns.size() / 2];
  r.p99 = ns[std::min(ns.size() - 1, ns.size() * 99 / 100)];
  r.per_second = static_cast<double>(ns.size()) / std::chrono::duration<double>(wall).count();
  return r;
}

double ns_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

/// herald: `requesters` threads, `each` requests apiece, one responder on `executor` (the pool,
/// or inline_executor: then the responder runs in the requester's thread).
Run herald_service(herald::ExecutorRef executor, int requesters, std::uint64_t each) {
  herald::Service<std::uint64_t, std::uint64_t> svc;
  auto responder =
      svc.serve("svc.inc", [](const herald::Request<std::uint64_t>& r) { return *r + 1; }, executor,
                {.capacity = 4096});
  std::vector<std::vector<double>> lat(static_cast<std::size_t>(requesters));
  std::atomic<std::uint64_t> wrong{0};
  std::latch start(requesters);
  // Wall time from the first requester's start to the last one's end, read by the requesters
  // themselves (the main thread may be scheduled late on a busy machine).
  std::vector<std::pair<Clock::time_point, Clock::time_point>> spans(
      static_cast<std::size_t>(requesters));
  std::vector<std::thread> threads;
  for (int t = 0; t < requesters; ++t) {
    threads.emplace_back([&, t] {
      auto& mine = lat[static_cast<std::size_t>(t)];
      mine.reserve(each);
      start.arrive_and_wait();
      spans[static_cast<std::size_t>(t)].first = Clock::now();
      for (std::uint64_t i = 0; i < each; ++i) {
        const std::uint64_t x = (static_cast<std::uint64_t>(t) << 40) | i;
        const auto t0 = Clock::now();
        const auto reply = svc.request("svc.inc", x, 5s);
        mine.push_back(ns_since(t0));
        if (!reply || *reply != x + 1) wrong.fetch_add(1, std::memory_order_relaxed);
      }
      spans[static_cast<std::size_t>(t)].second = Clock::now();
    });
  }
  for (auto& th : threads)
    th.join();
  auto first = spans.front().first;
  auto last = spans.front().second;
  for (const auto& [b, e] : spans) {
    first = std::min(first, b);
    last = std::max(last, e);
  }
  const auto wall = last - first;
  if (wrong != 0) fail("herald Service", fmt::format("{} wrong or missing replies", wrong.load()));
  std::vector<double> all;
  for (auto& v : lat)
    all.insert(all.end(), v.begin(), v.end());
  return summarize_run(all, wall);
}

/// herald's broker ping-pong: the same hand-over twice, without the request machinery.
Run broker_ping_pong(std::uint64_t rounds) {
  herald::Broker<std::uint64_t> broker;
  const herald::SubscribeOptions options{.capacity = 1024, .overflow = herald::Overflow::block};
  auto pings = broker.subscribe("ping", options);
  auto pongs = broker.subscribe("pong", options);
  auto pong = broker.publisher("pong");
  auto ping = broker.publisher("ping");
  std::thread echo([&] {
    for (std::uint64_t i = 0; i < rounds; ++i) {
      auto m = pings.receive();
      if (!m) return;
      pong.publish(**m + 1);
    }
  });
  std::vector<double> lat;
  lat.reserve(rounds);
  bool ok = true;
  const auto t0 = Clock::now();
  for (std::uint64_t i = 0; i < rounds; ++i) {
    const auto s = Clock::now();
    ping.publish(i);
    auto m = pongs.receive();
    lat.push_back(ns_since(s));
    ok = ok && m && **m == i + 1;
  }
  const auto wall = Clock::now() - t0;
  echo.join();
  if (!ok) fail("broker ping-pong", "a pong was lost or wrong");
  return summarize_run(lat, wall);
}

Run go_peer(const std::string& refbroker, int requesters, std::uint64_t each) {
  const auto f = herald_bench::go_request_reply(refbroker, requesters, each, 5000);
  if (!f.ok) fail("Go reference broker request-reply", f.error);
  return Run{f.p50_ns, f.p99_ns, f.requests_per_s};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = smoke() ? 1 : 7;
  std::string go;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    if (a.rfind("--go-peer=", 0) == 0) go = a.substr(10);
  }
  const std::uint64_t per_run = smoke() ? 2'000 : 100'000;
  const unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  herald::WorkerPool pool(threads, 4096);

  struct Contender {
    std::string name;
    int requesters;
    std::vector<Run> runs;
  };
  std::vector<Contender> all = {{"herald Service", 1, {}},
                                {"herald Service", 8, {}},
                                {"herald broker ping-pong", 1, {}},
                                {"herald Service, inline responder", 1, {}},
                                {"herald Service, inline responder", 8, {}}};
  if (!go.empty()) {
    all.push_back({"Go reference broker, reply channel", 1, {}});
    all.push_back({"Go reference broker, reply channel", 8, {}});
  }
  for (int rep = 0; rep < reps; ++rep) {
    for (std::size_t k = 0; k < all.size(); ++k) {
      Contender& c = all[(k + static_cast<std::size_t>(rep)) % all.size()];  // rotate
      const std::uint64_t each = per_run / static_cast<std::uint64_t>(c.requesters);
      if (c.name == "herald Service") {
        c.runs.push_back(herald_service(pool, c.requesters, each));
      } else if (c.name == "herald Service, inline responder") {
        c.runs.push_back(herald_service(herald::inline_executor, c.requesters, each));
      } else if (c.name == "herald broker ping-pong") {
        c.runs.push_back(broker_ping_pong(each));
      } else {
        c.runs.push_back(go_peer(go, c.requesters, each));
      }
    }
  }

  herald_bench::ResultsFile results;
  fmt::print("Request-reply round trip, {} requests per run, {} repetitions (medians)\n", per_run,
             reps);
  fmt::print("{:<40} {:>10} {:>12} {:>12} {:>14}\n", "contender", "requesters", "p50 ns", "p99 ns",
             "requests/s");
  const auto med = [](const Contender& c, double Run::*field) {
    std::vector<double> v;
    for (const Run& r : c.runs)
      v.push_back(r.*field);
    return v;
  };
  for (const Contender& c : all) {
    const auto p50 = med(c, &Run::p50);
    const auto p99 = med(c, &Run::p99);
    const auto rate = med(c, &Run::per_second);
    fmt::print("{:<40} {:>10} {:>12.0f} {:>12.0f} {:>14.0f}\n", c.name, c.requesters,
               herald_bench::median(p50), herald_bench::median(p99), herald_bench::median(rate));
    const std::string x = std::to_string(c.requesters);
    results.measure("request", "round trip p50 (ns)", x, c.name, "ns", false, p50);
    results.measure("request", "round trip p99 (ns)", x, c.name, "ns", false, p99);
    results.measure("request", "requests/s", x, c.name, "requests/s", true, rate);
  }
  const auto find = [&](const std::string& name, int n) -> const Contender* {
    for (const Contender& c : all) {
      if (c.name == name && c.requesters == n) return &c;
    }
    return nullptr;
  };
  const double herald_p50 = herald_bench::median(med(*find("herald Service", 1), &Run::p50));
  const double floor_p50 =
      herald_bench::median(med(*find("herald broker ping-pong", 1), &Run::p50));
  const double ratio = herald_p50 / floor_p50;
  fmt::print("goal: herald request p50 / broker ping-pong p50 = {:.2f} (<= 1.5: {})\n", ratio,
             ratio <= 1.5 ? "met" : "MISSED");
  results.goal("request", "request p50 / herald broker ping-pong p50, 1 requester", ratio, "<= 1.5",
               ratio <= 1.5);
  if (!go.empty()) {
    for (int n : {1, 8}) {
      const double h = herald_bench::median(med(*find("herald Service", n), &Run::per_second));
      const double g = herald_bench::median(
          med(*find("Go reference broker, reply channel", n), &Run::per_second));
      fmt::print("goal: herald / Go requests/s at {} requester(s) = {:.2f} (>= 2: {})\n", n, h / g,
                 h / g >= 2 ? "met" : "MISSED");
      results.goal("request",
                   fmt::format("requests/s herald / Go reference broker, {} requester(s)", n),
                   h / g, ">= 2x", h / g >= 2);
    }
  }
  return 0;
}
