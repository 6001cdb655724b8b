// What observability costs (herald/metrics.hpp). Three figures, each against its goal:
//
//   fan-out overhead   one publisher thread, 8 handler subscriptions on herald::inline_executor
//                      (the publisher runs every handler: one thread, little noise), and the same
//                      with 8 pull subscriptions drained every 256 publishes. "metrics on": the
//                      broker is registered in a MetricsRegistry, its topic is tracked
//                      (track_topics) and another thread writes an exposition every 100 ms
//                      (Prometheus scrapes every 15 s by default: this is pessimistic). Runs of
//                      both alternate; goal: on / off <= 1.03.
//                      What is always on (the handler-duration histogram, the lag's publish time
//                      of the message taken last) is in both: its cost is the next figure.
//   histogram record   the record a handler call makes (bucket index + single-writer add), on
//                      varied durations; goal <= 5 ns.
//   exposition         MetricsRegistry::write for one broker with 10,000 subscriptions (1,000 of
//                      them handler subscriptions, whose histograms are 52 lines each); goal
//                      < 20 ms.
//
//   bench_metrics [--reps=N]     HERALD_BENCH_SMOKE=1: tiny sizes, one repetition
#include <herald/broker.hpp>
#include <herald/metrics.hpp>
#include <herald/worker_pool.hpp>

#include <fmt/core.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "results.hpp"

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

double ns_since(Clock::time_point start, std::uint64_t n) {
  return std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
         static_cast<double>(n);
}

// Scrapes `metrics` every 100 ms until destroyed.
class Scraper {
 public:
  explicit Scraper(const herald::MetricsRegistry& m)
      : thread_([&m](std::stop_token stop) {
          std::string out;
          std::mutex mutex;
          std::condition_variable_any cv;
          std::unique_lock lock(mutex);
          while (!stop.stop_requested()) {
            out.clear();
            m.write(out);
            cv.wait_for(lock, stop, 100ms, [] { return false; });  // one wake-up per scrape
          }
        }) {}

 private:
  std::jthread thread_;
};

// ns per publish: 8 inline handler subscriptions.
double fanout_handlers(bool metrics_on, std::uint64_t messages) {
  herald::Broker<std::uint64_t> broker;
  std::uint64_t sum = 0;
  std::vector<herald::HandlerSubscription<std::uint64_t>> subs;
  for (int i = 0; i < 8; ++i)
    subs.push_back(broker.subscribe(
        "bench.fanout", [&sum](const herald::Message<std::uint64_t>& m) { sum += *m; },
        herald::inline_executor));
  herald::MetricsRegistry registry;
  std::optional<Scraper> scraper;
  if (metrics_on) {
    broker.track_topics({"bench.>"});
    registry.add_broker("bench", broker);
    scraper.emplace(registry);
  }
  auto pub = broker.publisher("bench.fanout");
  const auto start = Clock::now();
  for (std::uint64_t i = 0; i < messages; ++i)
    pub.publish(i);
  const double ns = ns_since(start, messages);
  if (sum == 42) std::abort();  // keep the handlers' work
  return ns;
}

// ns per publish: 8 pull subscriptions, drained by the publisher every 256 publishes.
double fanout_pull(bool metrics_on, std::uint64_t messages) {
  herald::Broker<std::uint64_t> broker;
  std::vector<herald::Subscription<std::uint64_t>> subs;
  for (int i = 0; i < 8; ++i)
    subs.push_back(broker.subscribe("bench.fanout", {.capacity = 512}));
  herald::MetricsRegistry registry;
  std::optional<Scraper> scraper;
  if (metrics_on) {
    broker.track_topics({"bench.>"});
    registry.add_broker("bench", broker);
    scraper.emplace(registry);
  }
  auto pub = broker.publisher("bench.fanout");
  std::uint64_t sum = 0;
  const auto start = Clock::now();
  for (std::uint64_t i = 0; i < messages; ++i) {
    pub.publish(i);
    if ((i & 255) == 255) {
      for (auto& s : subs)
        while (auto m = s.try_receive())
          sum += **m;
    }
  }
  const double ns = ns_since(start, messages);
  if (sum == 42) std::abort();
  return ns;
}

// ns per histogram record, as HandlerState::call makes it.
double histogram_record(std::uint64_t n) {
  std::array<herald::detail::OwnedCounter, herald::DurationHistogram::buckets> buckets;
  std::vector<std::uint64_t> durations(4096);
  std::mt19937_64 rng(7);
  std::lognormal_distribution<double> dist(9.0, 1.5);  // around 8 us, a wide spread
  for (auto& d : durations)
    d = static_cast<std::uint64_t>(dist(rng));
  const auto start = Clock::now();
  for (std::uint64_t i = 0; i < n; ++i)
    buckets[herald::DurationHistogram::bucket_of(durations[i & 4095])].add();
  const double ns = ns_since(start, n);
  std::uint64_t total = 0;
  for (const auto& b : buckets)
    total += b.get();
  if (total != n) std::abort();
  return ns;
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = std::getenv("HERALD_BENCH_SMOKE") != nullptr;
  int reps = smoke ? 1 : 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(a.c_str() + 7));
  }
  const std::uint64_t messages = smoke ? 20'000 : 400'000;
  const std::size_t subscriptions = smoke ? 1'000 : 10'000;
  herald_bench::ResultsFile results;

  // Fan-out, alternating off and on.
  std::vector<double> h_off, h_on, p_off, p_on, ratio_h, ratio_p;
  fanout_handlers(false, messages / 4);  // warm-up (the envelope pool, the caches)
  fanout_pull(false, messages / 4);
  for (int r = 0; r < reps; ++r) {
    // Alternate which goes first, so that neither always runs on a warmer machine.
    const bool on_first = r % 2 == 1;
    double a = 0, b = 0, c = 0, d = 0;
    if (on_first) {
      b = fanout_handlers(true, messages);
      a = fanout_handlers(false, messages);
      d = fanout_pull(true, messages);
      c = fanout_pull(false, messages);
    } else {
      a = fanout_handlers(false, messages);
      b = fanout_handlers(true, messages);
      c = fanout_pull(false, messages);
      d = fanout_pull(true, messages);
    }
    h_off.push_back(a);
    h_on.push_back(b);
    p_off.push_back(c);
    p_on.push_back(d);
    ratio_h.push_back(b / a);
    ratio_p.push_back(d / c);
  }

  // Histogram record.
  std::vector<double> rec;
  for (int r = 0; r < reps; ++r)
    rec.push_back(histogram_record(smoke ? 1'000'000 : 50'000'000));

  // Exposition of many subscriptions.
  std::vector<double> expo_ms;
  std::size_t bytes = 0;
  {
    herald::Broker<int> broker;
    herald::WorkerPool pool(1, 1024);
    std::vector<herald::Subscription<int>> pulls;
    std::vector<herald::HandlerSubscription<int>> handlers;
    for (std::size_t i = 0; i < subscriptions; ++i) {
      const std::string pattern = "orders." + std::to_string(i % 100) + ".>";
      if (i % 10 == 0) {
        handlers.push_back(broker.subscribe(
            pattern, [](const herald::Message<int>&) {}, pool));
      } else {
        pulls.push_back(broker.subscribe(pattern, {.capacity = 16}));
      }
    }
    for (int t = 0; t < 100; ++t)
      broker.publish("orders." + std::to_string(t) + ".x", t);
    herald::MetricsRegistry registry;
    registry.add_broker("bench", broker);
    std::string out;
    registry.write(out);  // warm-up
    for (int r = 0; r < std::max(reps, 3); ++r) {
      out.clear();
      const auto start = Clock::now();
      registry.write(out);
      expo_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
      bytes = out.size();
    }
  }

  const auto s_h_off = herald_bench::summarize(h_off), s_h_on = herald_bench::summarize(h_on),
             s_p_off = herald_bench::summarize(p_off), s_p_on = herald_bench::summarize(p_on);
  const double rh = herald_bench::median(ratio_h), rp = herald_bench::median(ratio_p);
  const double rec_ns = herald_bench::median(rec), expo = herald_bench::median(expo_ms);
  fmt::print("bench_metrics: {} repetitions, {} messages per fan-out run\n", reps, messages);
  fmt::print("  fan-out, 8 inline handlers   off {:7.1f} ns/publish   on {:7.1f}   on/off {:.3f}\n",
             s_h_off.median, s_h_on.median, rh);
  fmt::print("  fan-out, 8 pull subscribers  off {:7.1f} ns/publish   on {:7.1f}   on/off {:.3f}\n",
             s_p_off.median, s_p_on.median, rp);
  fmt::print("  histogram record             {:.2f} ns\n", rec_ns);
  fmt::print("  exposition, {} subscriptions: {:.2f} ms ({} bytes)\n", subscriptions, expo, bytes);

  results.measure("metrics", "fan-out, 8 inline handlers", "", "herald, metrics off", "ns/publish",
                  false, h_off);
  results.measure("metrics", "fan-out, 8 inline handlers", "", "herald, metrics on", "ns/publish",
                  false, h_on);
  results.measure("metrics", "fan-out, 8 pull subscribers", "", "herald, metrics off", "ns/publish",
                  false, p_off);
  results.measure("metrics", "fan-out, 8 pull subscribers", "", "herald, metrics on", "ns/publish",
                  false, p_on);
  results.measure("metrics", "histogram record", "", "herald", "ns", false, rec);
  results.measure("metrics", "exposition", std::to_string(subscriptions), "herald", "ms", false,
                  expo_ms);
  results.goal("metrics", "fan-out (inline handlers): metrics on / off", rh, "<= 1.03", rh <= 1.03);
  results.goal("metrics", "fan-out (pull): metrics on / off", rp, "<= 1.03", rp <= 1.03);
  results.goal("metrics", "histogram record, ns", rec_ns, "<= 5", rec_ns <= 5);
  if (smoke) {
    results.info("metrics", "exposition of 1,000 subscriptions (smoke), ms", expo);
  } else {
    results.goal("metrics", "exposition of 10,000 subscriptions, ms", expo, "< 20", expo < 20);
  }
  return 0;
}
