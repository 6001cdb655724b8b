// Handler subscriptions against the pull path: fan-out deliveries/s with the same broker, the same
// topic and the same number of subscribers, consumed by
//   pull        one consumer thread per subscription, receive() loop
//   pool        handler subscriptions on a 2-thread WorkerPool (strands)
//   dedicated   handler subscriptions, one dedicated thread each
//   inline      handler subscriptions run inside publish
// Repetitions are interleaved round-robin; medians are reported.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Payload {
  std::uint64_t seq;
  std::uint64_t pad[3];
};

using Clock = std::chrono::steady_clock;

bool smoke() {
  return std::getenv("HERALD_BENCH_SMOKE") != nullptr;
}

// Publishes `messages` to `subs` subscriptions consumed the given way; returns deliveries/s.
double run(const std::string& mode, int subs, std::uint64_t messages) {
  herald::Broker<Payload> broker;
  const herald::SubscribeOptions opts{.capacity = 1024, .overflow = herald::Overflow::block};
  std::atomic<std::uint64_t> delivered{0};
  const std::uint64_t expected = messages * static_cast<std::uint64_t>(subs);
  std::vector<herald::Subscription<Payload>> pulls;
  std::vector<herald::HandlerSubscription<Payload>> handlers;
  std::vector<std::jthread> consumers;
  herald::WorkerPool pool(2, 4096);
  auto count = [&](const herald::Message<Payload>&) {
    delivered.fetch_add(1, std::memory_order_relaxed);
  };
  for (int i = 0; i < subs; ++i) {
    if (mode == "pull") {
      pulls.push_back(broker.subscribe("bench.fanout", opts));
    } else if (mode == "pool") {
      handlers.push_back(broker.subscribe("bench.fanout", count, pool, opts));
    } else if (mode == "dedicated") {
      handlers.push_back(broker.subscribe("bench.fanout", count, herald::dedicated_thread, opts));
    } else {
      handlers.push_back(broker.subscribe("bench.fanout", count, herald::inline_executor, opts));
    }
  }
  const auto start = Clock::now();
  for (auto& s : pulls) {
    consumers.emplace_back([&s, &delivered] {
      std::uint64_t n = 0;
      for (const auto& m : s) {
        (void)m;
        ++n;
      }
      delivered.fetch_add(n, std::memory_order_relaxed);
    });
  }
  auto pub = broker.publisher("bench.fanout");
  for (std::uint64_t i = 0; i < messages; ++i)
    pub.publish(Payload{i, {}});
  if (mode == "pull") {
    broker.close();  // consumers drain, then their loops end
    consumers.clear();
  } else {
    while (delivered.load(std::memory_order_relaxed) < expected)
      std::this_thread::yield();
  }
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  if (delivered.load() != expected) {
    fmt::print(stderr, "{}: delivered {} of {}\n", mode, delivered.load(), expected);
    std::exit(1);
  }
  return static_cast<double>(expected) / secs;
}

}  // namespace

int main() {
  const int reps = smoke() ? 1 : 5;
  std::uint64_t messages = smoke() ? 2000 : 200000;
  if (const char* env = std::getenv("HERALD_BENCH_MESSAGES")) messages = std::stoull(env);
  const std::vector<std::string> modes = {"pull", "pool", "dedicated", "inline"};
  const std::vector<int> fanouts = smoke() ? std::vector<int>{1, 8} : std::vector<int>{1, 8, 64};
  fmt::print("handler subscriptions vs pull: deliveries/s (median of {}), {} messages\n", reps,
             messages);
  fmt::print("{:>7} {:>14} {:>14} {:>14} {:>14}\n", "subs", "pull", "pool", "dedicated", "inline");
  for (const int subs : fanouts) {
    std::vector<std::vector<double>> results(modes.size());
    const std::uint64_t n = subs == 64 ? messages / 8 : messages;
    for (int r = 0; r < reps; ++r) {
      for (std::size_t m = 0; m < modes.size(); ++m)
        results[m].push_back(run(modes[m], subs, n));
    }
    fmt::print("{:>7}", subs);
    for (auto& v : results) {
      std::sort(v.begin(), v.end());
      fmt::print(" {:>13.2f}M", v[v.size() / 2] / 1e6);
    }
    fmt::print("\n");
    std::fflush(stdout);
  }
  return 0;
}
