// Handler flow control (issue 16), measured in one run:
//   timers   10k timers pending at once on a 2-thread WorkerPool, deadlines spread uniformly over
//            one second: how late each fires (fire time - deadline), p50 / p99 / max per
//            repetition, beside boost::asio steady_timers on an io_context run by 2 threads.
//            Goal: herald's p99 < 1 ms.
//   keyed    a CPU-bound handler (~2 us of busy work per message) on a hardware_concurrency()
//            pool, messages spread over 64 keys: HandlerOptions::concurrency = 4 (with the key)
//            against concurrency = 1, messages/s. Goal: >= 1.8x on 2 cores.
//   batch    a sink costing 1 us per call + 0.1 us per item (busy work): a batch handler with
//            max_size = 100 against a per-message handler, messages/s. Goal: >= 5x.
//   rate     a handler subscription with HandlerOptions::rate = RateLimiter(2000/s, burst 10),
//            its queue kept full: handled messages beyond the burst over 5 s, as a fraction of
//            the configured rate. Goal: within 2%.
// Repetitions are interleaved over the contenders; medians of the per-repetition figures.
// Usage: bench_flow [--reps=N] [--only=timers|keyed|batch|rate]. HERALD_BENCH_SMOKE=1: tiny sizes,
// one repetition.
#include <herald/broker.hpp>
#include <herald/rate_limiter.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <latch>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "results.hpp"

#include <fmt/core.h>

#if defined(HERALD_HAVE_BOOST)
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#endif

namespace {

using Clock = std::chrono::steady_clock;
using herald_bench::median;

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && std::string(s) == "1";
}

/// Lateness of each timer of one repetition, in nanoseconds: p50, p99, max.
struct Lateness {
  double p50 = 0, p99 = 0, max = 0;
};

Lateness summarize(std::vector<std::int64_t> late) {
  std::sort(late.begin(), late.end());
  const auto at = [&](double q) {
    return static_cast<double>(
        late[static_cast<std::size_t>(q * static_cast<double>(late.size() - 1))]);
  };
  return {at(0.5), at(0.99), static_cast<double>(late.back())};
}

/// The deadlines of one repetition: `n` spread uniformly over [start + 50 ms, start + 1050 ms].
std::vector<Clock::time_point> deadlines(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<std::int64_t> us(50'000, 1'050'000);
  const auto start = Clock::now();
  std::vector<Clock::time_point> d(n);
  for (auto& t : d)
    t = start + std::chrono::microseconds(us(rng));
  return d;
}

Lateness herald_timers(std::size_t n, std::uint64_t seed) {
  herald::WorkerPool pool{2, 1024};
  std::vector<std::int64_t> late(n);
  std::latch fired(static_cast<std::ptrdiff_t>(n));
  const auto when = deadlines(n, seed);
  for (std::size_t i = 0; i < n; ++i) {
    pool.schedule_at(when[i], [&, i] {
      late[i] =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - when[i]).count();
      fired.count_down();
    });
  }
  fired.wait();
  return summarize(std::move(late));
}

#if defined(HERALD_HAVE_BOOST)
Lateness asio_timers(std::size_t n, std::uint64_t seed) {
  boost::asio::io_context io;
  auto guard = boost::asio::make_work_guard(io);
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i)
    threads.emplace_back([&] { io.run(); });
  std::vector<std::int64_t> late(n);
  std::latch fired(static_cast<std::ptrdiff_t>(n));
  const auto when = deadlines(n, seed);
  std::vector<std::unique_ptr<boost::asio::steady_timer>> timers;
  timers.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    timers.push_back(std::make_unique<boost::asio::steady_timer>(io, when[i]));
    timers.back()->async_wait([&, i](const boost::system::error_code&) {
      late[i] =
          std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - when[i]).count();
      fired.count_down();
    });
  }
  fired.wait();
  guard.reset();
  io.stop();
  for (auto& t : threads)
    t.join();
  return summarize(std::move(late));
}
#endif

struct Series {
  std::string name;
  std::function<Lateness(std::size_t, std::uint64_t)> run;
  std::vector<double> p50, p99, max;
};

void timers(int reps, herald_bench::ResultsFile& results) {
  const std::size_t n = smoke() ? 200 : 10'000;
  std::vector<Series> series;
  series.push_back({"herald WorkerPool::schedule_at", herald_timers, {}, {}, {}});
#if defined(HERALD_HAVE_BOOST)
  series.push_back({"asio steady_timer (io_context, 2 threads)", asio_timers, {}, {}, {}});
#endif
  for (int r = 0; r < reps; ++r) {
    for (Series& s : series) {
      const Lateness l = s.run(n, 1234 + static_cast<std::uint64_t>(r));
      s.p50.push_back(l.p50 / 1e3);
      s.p99.push_back(l.p99 / 1e3);
      s.max.push_back(l.max / 1e3);
    }
  }
  fmt::print(
      "timers: {} pending, deadlines uniform over 1 s, 2 threads; lateness in us "
      "(median of {} repetitions)\n",
      n, reps);
  for (const Series& s : series) {
    fmt::print("  {:<44} p50 {:>8.1f}   p99 {:>8.1f}   max {:>8.1f}\n", s.name, median(s.p50),
               median(s.p99), median(s.max));
    results.measure("flow", "timer lateness p99", std::to_string(n), s.name, "us", false, s.p99);
    results.measure("flow", "timer lateness p50", std::to_string(n), s.name, "us", false, s.p50);
  }
  const double p99 = median(series[0].p99);
  fmt::print("  herald p99 {:.1f} us (goal < 1000 us: {})\n\n", p99, p99 < 1000 ? "met" : "MISSED");
  results.goal("flow", fmt::format("timer fire lateness p99 at {} pending, us", n), p99, "< 1000",
               p99 < 1000);
}

// ---- keyed parallelism ------------------------------------------------------------------------

/// ~2 us of CPU: spins on the clock (the work a handler does is irrelevant; its cost is not).
void busy_2us() {
  const auto until = Clock::now() + std::chrono::microseconds(2);
  while (Clock::now() < until) {
  }
}

/// Messages/s: publishes `messages` ints on `topic` through a Publisher and waits until the
/// handler subscription `h` has handled them all.
double publish_and_drain(herald::Broker<int>& broker, const std::string& topic,
                         herald::HandlerSubscription<int>& h, int messages) {
  auto publisher = broker.publisher(topic);
  const auto start = Clock::now();
  for (int i = 0; i < messages; ++i)
    publisher.publish(i);
  h.wait_idle();
  const double s = std::chrono::duration<double>(Clock::now() - start).count();
  return messages / s;
}

/// Messages/s through a handler subscription with `concurrency` lanes keyed over 64 keys.
double keyed_throughput(std::size_t concurrency, int messages) {
  herald::WorkerPool pool{std::max(2u, std::thread::hardware_concurrency()), 4096};
  herald::Broker<int> broker;
  herald::HandlerOptions<int> opts;
  opts.concurrency = concurrency;
  opts.key = [](const herald::Message<int>& m) { return static_cast<std::uint64_t>(*m % 64); };
  auto h = broker.subscribe(
      "work", [](const herald::Message<int>&) { busy_2us(); }, pool,
      {.capacity = 4096, .overflow = herald::Overflow::block}, opts);
  return publish_and_drain(broker, "work", h, messages);
}

void keyed(int reps, herald_bench::ResultsFile& results) {
  const int n = smoke() ? 2000 : 200'000;
  std::vector<double> one, four;
  for (int r = 0; r < reps; ++r) {
    one.push_back(keyed_throughput(1, n));
    four.push_back(keyed_throughput(4, n));
  }
  const double ratio = median(four) / median(one);
  fmt::print(
      "keyed parallelism: ~2 us CPU-bound handler, {} messages over 64 keys, pool of {} "
      "threads (median of {} repetitions)\n",
      n, std::max(2u, std::thread::hardware_concurrency()), reps);
  fmt::print("  {:<44} {:>10.0f} msg/s\n", "herald concurrency = 1", median(one));
  fmt::print("  {:<44} {:>10.0f} msg/s\n", "herald concurrency = 4, key", median(four));
  fmt::print("  concurrency 4 / 1: {:.2f}x (goal >= 1.8x: {})\n\n", ratio,
             ratio >= 1.8 ? "met" : "MISSED");
  results.measure("flow", "CPU-bound handler, 64 keys", "", "herald concurrency = 1", "msg/s", true,
                  one);
  results.measure("flow", "CPU-bound handler, 64 keys", "", "herald concurrency = 4", "msg/s", true,
                  four);
  results.goal("flow", "keyed concurrency 4 / concurrency 1, msg/s", ratio, ">= 1.8x",
               ratio >= 1.8);
}

// ---- batches ----------------------------------------------------------------------------------

void busy_for(std::chrono::nanoseconds d) {
  const auto until = Clock::now() + d;
  while (Clock::now() < until) {
  }
}

/// Messages/s into a sink costing 1 us per call + 0.1 us per item, per message or in batches.
double sink_throughput(bool batched, int messages) {
  herald::WorkerPool pool{2, 4096};
  herald::Broker<int> broker;
  herald::HandlerSubscription<int> h;
  if (batched) {
    herald::HandlerOptions<int> opts;
    opts.batch = {.max_size = 100, .max_wait = std::chrono::milliseconds(5)};
    h = broker.subscribe(
        "sink",
        [](std::span<const herald::Message<int>> batch) {
          busy_for(std::chrono::nanoseconds(1000 + 100 * static_cast<long>(batch.size())));
        },
        pool, {.capacity = 4096, .overflow = herald::Overflow::block}, opts);
  } else {
    h = broker.subscribe(
        "sink", [](const herald::Message<int>&) { busy_for(std::chrono::nanoseconds(1100)); }, pool,
        {.capacity = 4096, .overflow = herald::Overflow::block});
  }
  return publish_and_drain(broker, "sink", h, messages);
}

void batch(int reps, herald_bench::ResultsFile& results) {
  const int n = smoke() ? 2000 : 200'000;
  std::vector<double> single, batched;
  for (int r = 0; r < reps; ++r) {
    single.push_back(sink_throughput(false, n));
    batched.push_back(sink_throughput(true, n));
  }
  const double ratio = median(batched) / median(single);
  fmt::print(
      "batch sink: 1 us per call + 0.1 us per item, {} messages, 2-thread pool (median of "
      "{} repetitions)\n",
      n, reps);
  fmt::print("  {:<44} {:>10.0f} msg/s\n", "herald per-message handler", median(single));
  fmt::print("  {:<44} {:>10.0f} msg/s\n", "herald batch handler, max_size 100", median(batched));
  fmt::print("  batch / per-message: {:.2f}x (goal >= 5x: {})\n\n", ratio,
             ratio >= 5 ? "met" : "MISSED");
  results.measure("flow", "sink 1 us/call + 0.1 us/item", "", "herald per-message handler", "msg/s",
                  true, single);
  results.measure("flow", "sink 1 us/call + 0.1 us/item", "", "herald batch handler (100)", "msg/s",
                  true, batched);
  results.goal("flow", "batch sink (max_size 100) / per-message handler, msg/s", ratio, ">= 5x",
               ratio >= 5);
}

// ---- rate limits ------------------------------------------------------------------------------

/// A handler subscription with HandlerOptions::rate (a RateLimiter of `rate`/s, burst `burst`)
/// on a 2-thread pool, its queue kept full by a publisher: handled messages beyond the initial
/// burst over the elapsed time, as a fraction of `rate`.
double subscription_rate_ratio(double rate, std::int64_t burst, double seconds) {
  herald::WorkerPool pool{2, 4096};
  herald::Broker<int> broker;
  auto limiter = std::make_shared<herald::RateLimiter>(rate, burst);
  std::atomic<std::int64_t> handled{0};
  herald::HandlerOptions<int> opts;
  opts.rate = limiter;
  const auto start = Clock::now();
  auto h = broker.subscribe(
      "notify", [&](const herald::Message<int>&) { handled.fetch_add(1); }, pool,
      {.capacity = 1 << 16, .overflow = herald::Overflow::drop_incoming}, opts);
  auto publisher = broker.publisher("notify");
  const auto total = static_cast<int>(rate * seconds * 2) + 1000;  // never runs dry
  for (int i = 0; i < total && i < (1 << 16); ++i)
    publisher.publish(i);
  const auto end =
      start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::this_thread::sleep_until(end);
  const std::int64_t n = handled.load();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  h.unsubscribe();
  return static_cast<double>(n - burst) / elapsed / rate;
}

void rate(int reps, herald_bench::ResultsFile& results) {
  const double seconds = smoke() ? 0.3 : 5.0;
  const double configured = 2000;
  std::vector<double> ratios;
  for (int r = 0; r < std::min(reps, 3); ++r)
    ratios.push_back(subscription_rate_ratio(configured, 10, seconds));
  const double ratio = median(ratios);
  fmt::print(
      "rate-limited subscription: HandlerOptions::rate = RateLimiter({:.0f}/s, burst 10), 2-thread "
      "pool, {} s (median of {} repetitions)\n",
      configured, seconds, ratios.size());
  fmt::print("  handled / configured rate: {:.4f} (goal within 2%: {})\n\n", ratio,
             std::abs(ratio - 1) <= 0.02 ? "met" : "MISSED");
  results.measure("flow", "rate-limited subscription, achieved / configured", "2000/s",
                  "herald HandlerOptions::rate", "ratio", true, ratios);
  results.goal("flow", "rate-limited subscription over 5 s: achieved / configured", ratio,
               "within 2%", std::abs(ratio - 1) <= 0.02);
}

}  // namespace

int main(int argc, char** argv) {
  int reps = smoke() ? 1 : 5;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    if (a.rfind("--only=", 0) == 0) only = std::string(a.substr(7));
  }
  herald_bench::ResultsFile results;
  if (only.empty() || only == "timers") timers(reps, results);
  if (only.empty() || only == "keyed") keyed(reps, results);
  if (only.empty() || only == "batch") batch(reps, results);
  if (only.empty() || only == "rate") rate(reps, results);
  return 0;
}
