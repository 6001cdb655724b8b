// Retained messages (Broker::retain, PublishOptions::retain, SubscribeOptions::replay):
//   publish        10k topics, one Publisher each, one pull subscriber on "r.>" drained between
//                  rounds (outside the timing): ns per publish without retention, and with
//                  `.retain = true` once all 10k topics are retained.
//   replay         subscribe(">", {.replay = last_value()}) with 10k retained topics: the
//                  subscribe call's time, its replay queued when it returns.
// Repetitions interleave the two publish variants; medians reported. Goals: publish with
// retention <= 1.2x publish without, at 10k retained topics; subscribe with a replay of 10k
// retained topics < 10 ms. Results also go to $HERALD_BENCH_RESULTS (bench/results.hpp), suite
// "retained".
//
//   bench_retained [--reps=N]     HERALD_BENCH_SMOKE=1: one rep, fewer rounds
#include <herald/broker.hpp>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "results.hpp"

#include <fmt/core.h>

namespace {

using Clock = std::chrono::steady_clock;

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && *s != '\0' && *s != '0';
}

[[noreturn]] void fail(const std::string& what) {
  fmt::print(stderr, "bench_retained: {}\n", what);
  std::exit(1);
}

constexpr std::size_t kTopics = 10'000;

/// ns per publish over `rounds` rounds of one publish to each topic.
double publish_ns(herald::Broker<std::uint64_t>& broker, herald::Subscription<std::uint64_t>& sub,
                  std::vector<herald::Publisher<std::uint64_t>>& pubs, int rounds, bool retain) {
  double total = 0;
  std::uint64_t v = 0;
  for (int r = 0; r < rounds; ++r) {
    const auto t0 = Clock::now();
    for (auto& p : pubs)
      p.publish(++v, {.retain = retain});
    total += std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
    std::size_t got = 0;
    while (sub.try_receive())
      ++got;
    if (got != pubs.size()) fail(fmt::format("received {} of {}", got, pubs.size()));
  }
  (void)broker;
  return total / (static_cast<double>(rounds) * static_cast<double>(pubs.size()));
}

}  // namespace

int main(int argc, char** argv) {
  int reps = smoke() ? 1 : 5;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.starts_with("--reps=")) reps = std::atoi(argv[i] + 7);
  }
  const int rounds = smoke() ? 2 : 20;

  herald::Broker<std::uint64_t> broker;
  auto sub = broker.subscribe("r.>", {.capacity = 16384});
  std::vector<herald::Publisher<std::uint64_t>> pubs;
  pubs.reserve(kTopics);
  for (std::size_t t = 0; t < kTopics; ++t)
    pubs.push_back(broker.publisher("r.sensor." + std::to_string(t)));
  publish_ns(broker, sub, pubs, 1, true);  // warm up: every topic retained
  if (broker.stats().retained_topics != kTopics) fail("not every topic is retained");

  std::vector<double> plain;
  std::vector<double> kept;
  std::vector<double> replay_ms;
  for (int rep = 0; rep < reps; ++rep) {
    plain.push_back(publish_ns(broker, sub, pubs, rounds, false));
    kept.push_back(publish_ns(broker, sub, pubs, rounds, true));
    const auto t0 = Clock::now();
    auto late = broker.subscribe(">", {.capacity = 16384, .replay = herald::Replay::last_value()});
    replay_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    if (late.stats().delivered != kTopics) fail("the replay is short");
  }

  const double p = herald_bench::median(plain);
  const double k = herald_bench::median(kept);
  const double ms = herald_bench::median(replay_ms);
  fmt::print("Retained messages, {} topics, {} repetitions (medians)\n", kTopics, reps);
  fmt::print("{:<44} {:>10.1f} ns\n", "publish, no retention (1 subscriber)", p);
  fmt::print("{:<44} {:>10.1f} ns\n", "publish, .retain = true (1 subscriber)", k);
  fmt::print("{:<44} {:>10.3f} ms\n", "subscribe with replay of 10k topics", ms);
  fmt::print("goal: publish retained / plain = {:.2f} (<= 1.2: {})\n", k / p,
             k / p <= 1.2 ? "met" : "MISSED");
  fmt::print("goal: subscribe with replay of 10k topics = {:.2f} ms (< 10: {})\n", ms,
             ms < 10 ? "met" : "MISSED");

  herald_bench::ResultsFile results;
  results.measure("retained", "publish (ns), 10k topics", "1", "herald publish", "ns", false,
                  plain);
  results.measure("retained", "publish (ns), 10k topics", "1", "herald publish, retain", "ns",
                  false, kept);
  results.measure("retained", "subscribe with replay of 10k topics (ms)", "10000",
                  "herald subscribe + replay", "ms", false, replay_ms);
  results.goal("retained", "publish with retention / without, 10k retained topics", k / p,
               "<= 1.2x", k / p <= 1.2);
  results.goal("retained", "subscribe with replay of 10k retained topics (ms)", ms, "< 10",
               ms < 10);
  return 0;
}
