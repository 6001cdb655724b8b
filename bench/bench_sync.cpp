// The sync tools against their goals and the plain baselines a C++ user would otherwise write:
//   semaphore     uncontended acquire+release: WeightedSemaphore (try_acquire and acquire), next
//                 to std::counting_semaphore and a std::mutex lock/unlock pair; goal <= 20 ns.
//   task group    spawn + join per empty task: TaskGroup::spawn x N then wait(), next to bare
//                 WorkerPool::submit x N of a task that bumps a completion counter, then waiting
//                 for the counter; goal: TaskGroup <= 1.5x the bare pool, ns/task.
//   breaker       allow() on the closed path (and allow + record_success); goal <= 5 ns.
//   dedup         DedupWindow<uint64_t> holding 100k keys: contains() hits and misses, insert()
//                 of duplicates and of new keys (each evicts the oldest), with no age limit
//                 (no clock read), with max_age on steady_clock, and on coarse_clock(); next to
//                 std::unordered_set behind a std::mutex; goal: lookup <= 50 ns.
//   rate limiter  accuracy: 2 threads calling acquire() for 5 s at 20k/s (burst 10 and 200) and
//                 at 1k/s (burst 10); achieved rate (tokens beyond the initial burst / elapsed)
//                 over the configured rate; goal: within 2%.
// Single-threaded micro-benchmarks are loops timed in thread CPU time (a shared VM preempts them;
// wall time would count that), repeated `reps` times, medians reported; the task-group batches
// (wall time: several threads) interleave the two contenders. Results also go to
// $HERALD_BENCH_RESULTS (bench/results.hpp) as measure and goal rows, suite "sync". The same
// micro-benchmarks are registered with Google Benchmark for --benchmark_filter and JSON output
// (bench/report.sh can skip them with --benchmark_filter=NONE).
//
//   bench_sync [--reps=N] [--only=semaphore|breaker|dedup|task_group|rate]
//                              HERALD_BENCH_SMOKE=1: tiny sizes, one repetition, 0.5 s of
//                              rate limiting (proves the binary runs; figures not meaningful)
#include <herald/circuit_breaker.hpp>
#include <herald/dedup_window.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/rate_limiter.hpp>
#include <herald/task_group.hpp>
#include <herald/weighted_semaphore.hpp>
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <ctime>
#include <latch>
#include <mutex>
#include <semaphore>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include "results.hpp"

#include <benchmark/benchmark.h>
#include <fmt/core.h>

namespace {

using Clock = std::chrono::steady_clock;

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && *s != '\0' && *s != '0';
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

/// CPU time of the calling thread: on a shared VM a single-threaded loop is often preempted
/// (wall time above CPU time by half under load); what was preempted is not the code's cost.
double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

/// Thread-CPU ns per call of `op`, over `n` calls.
template <class Op>
double ns_per_op(std::uint64_t n, Op&& op) {
  const double t0 = thread_cpu_seconds();
  for (std::uint64_t i = 0; i < n; ++i)
    op(i);
  return (thread_cpu_seconds() - t0) * 1e9 / static_cast<double>(n);
}

/// A named row of samples.
struct Series {
  std::string name;
  std::vector<double> samples;
  double median() const { return herald_bench::median(samples); }
};

void print_series(const Series& s, const char* unit) {
  const auto [lo, hi] = std::minmax_element(s.samples.begin(), s.samples.end());
  fmt::print("  {:<48} {:>9.1f} {}   (min {:.1f}, max {:.1f})\n", s.name, s.median(), unit, *lo,
             *hi);
}

struct Goal {
  std::string what;
  double measured;
  std::string target;
  bool met;
};

std::vector<Goal> goals;

void goal(std::string what, double measured, std::string target, bool met) {
  fmt::print("  GOAL {:<60} {:>8.3f}   target {:<10} {}\n", what, measured, target,
             met ? "met" : "MISSED");
  goals.push_back({std::move(what), measured, std::move(target), met});
}

// -----------------------------------------------------------------------------------------------
// The workloads, shared by the report and the Google Benchmark entries.

constexpr std::size_t kDedupKeys = 100'000;

/// A window full of keys 0..99999 (no age limit, or an age far longer than the run).
template <class W>
void fill(W& w) {
  for (std::uint64_t k = 0; k < kDedupKeys; ++k)
    w.insert(k);
}

herald::DedupWindowOptions dedup_options(bool coarse) {
  herald::DedupWindowOptions o;
  if (coarse) o.clock = herald::DedupWindowOptions::coarse_clock;
  return o;
}

/// The hand-written baseline: a hash set under a mutex (no eviction at all).
struct LockedSet {
  std::mutex m;
  std::unordered_set<std::uint64_t> set;
  bool contains(std::uint64_t k) {
    const std::lock_guard lock(m);
    return set.count(k) != 0;
  }
  bool insert(std::uint64_t k) {
    const std::lock_guard lock(m);
    return set.insert(k).second;
  }
};

/// Pseudo-random probe keys in [0, 2 * kDedupKeys): half hit, half miss (cache-unfriendly like
/// real ids).
inline std::uint64_t probe_key(std::uint64_t i) {
  return herald::detail::mix64(i) % (2 * kDedupKeys);
}

/// TaskGroup vs bare pool: ns per empty task over a batch of n.
double group_batch(herald::WorkerPool& pool, std::size_t n) {
  herald::TaskGroup group(pool);
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i)
    group.spawn([] {});
  group.wait();
  return seconds_since(t0) * 1e9 / static_cast<double>(n);
}

double bare_batch(herald::WorkerPool& pool, std::size_t n) {
  std::atomic<std::size_t> done{0};
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < n; ++i)
    pool.submit([&done] { done.fetch_add(1, std::memory_order_release); });
  while (done.load(std::memory_order_acquire) < n)
    std::this_thread::yield();
  return seconds_since(t0) * 1e9 / static_cast<double>(n);
}

struct RateResult {
  double achieved;  // tokens/s beyond the initial burst
  double ratio;     // achieved / configured
};

RateResult rate_accuracy(double rate, std::int64_t burst, double seconds, int threads) {
  herald::RateLimiter limiter(rate, burst);
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> taken{0};
  std::latch go{1};
  Clock::time_point t0;
  Clock::time_point t_stop;
  {
    std::vector<std::jthread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&] {
        go.wait();
        for (;;) {
          limiter.acquire();
          if (stop.load(std::memory_order_acquire))
            break;  // returned after the window: not counted
          taken.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
    // The clock starts when the consumers do: the bucket is full then (it holds at most `burst`
    // however long ago it was made), so `burst + rate x elapsed` tokens are due by the end.
    t0 = Clock::now();
    go.count_down();
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    t_stop = Clock::now();
    stop.store(true, std::memory_order_release);
  }
  const double elapsed = std::chrono::duration<double>(t_stop - t0).count();
  const double achieved =
      (static_cast<double>(taken.load()) - static_cast<double>(burst)) / elapsed;
  return {achieved, achieved / rate};
}

// -----------------------------------------------------------------------------------------------
// The report.

void run_report(int reps, const std::string& only) {
  auto wanted = [&](const char* section) { return only.empty() || only == section; };
  const bool tiny = smoke();
  const std::uint64_t micro_n = tiny ? 20'000 : 5'000'000;
  const std::uint64_t dedup_n = tiny ? 20'000 : 2'000'000;
  herald_bench::ResultsFile results;
  fmt::print("sync tools: {} repetitions, medians{}\n", reps,
             tiny ? " (SMOKE sizes: not meaningful)" : "");

  // Semaphore.
  if (wanted("semaphore")) {
    herald::WeightedSemaphore sem(1024);
    std::counting_semaphore<1024> std_sem(1024);
    std::mutex mutex;
    Series try_path{"WeightedSemaphore try_acquire(1) + release(1)", {}};
    Series acquire_path{"WeightedSemaphore acquire(1) + release(1)", {}};
    Series std_path{"std::counting_semaphore acquire + release", {}};
    Series mutex_path{"std::mutex lock + unlock (baseline)", {}};
    for (int r = 0; r < reps; ++r) {
      try_path.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        benchmark::DoNotOptimize(sem.try_acquire(1));
        sem.release(1);
      }));
      acquire_path.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        sem.acquire(1);
        sem.release(1);
      }));
      std_path.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        std_sem.acquire();
        std_sem.release();
      }));
      mutex_path.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        mutex.lock();
        benchmark::ClobberMemory();
        mutex.unlock();
      }));
    }
    fmt::print("\nsemaphore, uncontended, one thread (ns per acquire+release pair)\n");
    for (const Series* s : {&try_path, &acquire_path, &std_path, &mutex_path}) {
      print_series(*s, "ns");
      results.measure("sync", "semaphore uncontended acquire+release", "", s->name, "ns", false,
                      s->samples);
    }
    const double worst = std::max(try_path.median(), acquire_path.median());
    goal("semaphore uncontended acquire+release, ns", worst, "<= 20 ns", worst <= 20.0);
  }

  // Circuit breaker.
  if (wanted("breaker")) {
    herald::CircuitBreaker breaker({.consecutive_failures = 5});
    Series allow{"CircuitBreaker allow() closed", {}};
    Series allow_record{"CircuitBreaker allow() + record_success() closed", {}};
    for (int r = 0; r < reps; ++r) {
      allow.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        auto p = breaker.allow();
        benchmark::DoNotOptimize(p);
      }));
      allow_record.samples.push_back(ns_per_op(micro_n, [&](std::uint64_t) {
        auto p = breaker.allow();
        breaker.record_success(p);
      }));
    }
    fmt::print("\ncircuit breaker, closed, one thread (ns per call)\n");
    for (const Series* s : {&allow, &allow_record}) {
      print_series(*s, "ns");
      results.measure("sync", "breaker closed path", "", s->name, "ns", false, s->samples);
    }
    goal("breaker allow() on the closed path, ns", allow.median(), "<= 5 ns",
         allow.median() <= 5.0);
  }

  // Dedup window at 100k keys.
  if (wanted("dedup")) {
    using W = herald::DedupWindow<std::uint64_t>;
    const auto age = std::chrono::hours(1);
    W plain(kDedupKeys);
    W timed(kDedupKeys, age);
    W coarse(kDedupKeys, age, dedup_options(true));
    LockedSet locked;
    fill(plain);
    fill(timed);
    fill(coarse);
    for (std::uint64_t k = 0; k < kDedupKeys; ++k)
      locked.insert(k);
    Series lookups[4] = {{"DedupWindow contains(), count only", {}},
                         {"DedupWindow contains(), max_age, steady_clock", {}},
                         {"DedupWindow contains(), max_age, coarse_clock", {}},
                         {"unordered_set + mutex find (baseline)", {}}};
    Series dup_inserts{"DedupWindow insert() duplicate, count only", {}};
    Series new_inserts{"DedupWindow insert() new key (evicts one), count only", {}};
    Series new_timed{"DedupWindow insert() new key, max_age, steady_clock", {}};
    Series new_coarse{"DedupWindow insert() new key, max_age, coarse_clock", {}};
    std::uint64_t next_key = kDedupKeys;
    for (int r = 0; r < reps; ++r) {
      lookups[0].samples.push_back(ns_per_op(dedup_n, [&](std::uint64_t i) {
        benchmark::DoNotOptimize(plain.contains(probe_key(i)));
      }));
      lookups[1].samples.push_back(ns_per_op(dedup_n, [&](std::uint64_t i) {
        benchmark::DoNotOptimize(timed.contains(probe_key(i)));
      }));
      lookups[2].samples.push_back(ns_per_op(dedup_n, [&](std::uint64_t i) {
        benchmark::DoNotOptimize(coarse.contains(probe_key(i)));
      }));
      lookups[3].samples.push_back(ns_per_op(dedup_n, [&](std::uint64_t i) {
        benchmark::DoNotOptimize(locked.contains(probe_key(i)));
      }));
      // Duplicates: keys of the current window (the last kDedupKeys inserted).
      dup_inserts.samples.push_back(ns_per_op(dedup_n, [&](std::uint64_t i) {
        benchmark::DoNotOptimize(
            plain.insert(next_key - 1 - herald::detail::mix64(i) % kDedupKeys));
      }));
      const std::uint64_t base = next_key;
      new_inserts.samples.push_back(ns_per_op(
          dedup_n, [&](std::uint64_t i) { benchmark::DoNotOptimize(plain.insert(base + i)); }));
      new_timed.samples.push_back(ns_per_op(
          dedup_n, [&](std::uint64_t i) { benchmark::DoNotOptimize(timed.insert(base + i)); }));
      new_coarse.samples.push_back(ns_per_op(
          dedup_n, [&](std::uint64_t i) { benchmark::DoNotOptimize(coarse.insert(base + i)); }));
      next_key = base + dedup_n;
    }
    fmt::print("\ndedup window holding 100k keys, one thread (ns per call; lookups 50% hits)\n");
    for (const Series* s : {&lookups[0], &lookups[1], &lookups[2], &lookups[3], &dup_inserts,
                            &new_inserts, &new_timed, &new_coarse}) {
      print_series(*s, "ns");
      results.measure("sync", "dedup at 100k keys", "100000", s->name, "ns", false, s->samples);
    }
    goal("dedup lookup at 100k keys (count only), ns", lookups[0].median(), "<= 50 ns",
         lookups[0].median() <= 50.0);
    goal("dedup lookup at 100k keys (max_age, coarse_clock), ns", lookups[2].median(), "<= 50 ns",
         lookups[2].median() <= 50.0);
    goal("dedup insert new key at 100k keys (count only), ns", new_inserts.median(), "<= 50 ns",
         new_inserts.median() <= 50.0);
  }

  // TaskGroup vs bare pool, interleaved.
  if (wanted("task_group")) {
    herald::WorkerPool pool{2, 4096};
    const std::size_t n = tiny ? 2000 : 200'000;
    Series group{"TaskGroup spawn + wait", {}};
    Series bare{"WorkerPool submit + completion counter", {}};
    (void)group_batch(pool, std::min<std::size_t>(n, 20'000));  // warm-up
    (void)bare_batch(pool, std::min<std::size_t>(n, 20'000));
    for (int r = 0; r < reps; ++r) {
      if (r % 2 == 0) {
        group.samples.push_back(group_batch(pool, n));
        bare.samples.push_back(bare_batch(pool, n));
      } else {
        bare.samples.push_back(bare_batch(pool, n));
        group.samples.push_back(group_batch(pool, n));
      }
    }
    fmt::print("\ntask group: {} empty tasks per batch from one thread, 2 workers (ns/task)\n", n);
    for (const Series* s : {&group, &bare}) {
      print_series(*s, "ns/task");
      results.measure("sync", "empty tasks spawn+join", "", s->name, "ns/task", false, s->samples);
    }
    const double ratio = group.median() / bare.median();
    goal("TaskGroup ns/task / bare WorkerPool ns/task", ratio, "<= 1.5x", ratio <= 1.5);
  }

  // Rate limiter accuracy. A token bucket forgives a consumer that wakes late only up to the
  // burst: burst 10 at 20k/s is 0.5 ms, which a loaded 2-vCPU machine's wake-up latency can
  // exceed (the tokens then overflow the bucket, as they should); burst 200 is 10 ms.
  if (wanted("rate")) {
    const double seconds = tiny ? 0.5 : 5.0;
    fmt::print("\nrate limiter: 2 threads in acquire() for {} s\n", seconds);
    struct Case {
      double rate;
      std::int64_t burst;
    };
    for (const Case c : {Case{20'000.0, 10}, Case{20'000.0, 200}, Case{1'000.0, 10}}) {
      const RateResult r = rate_accuracy(c.rate, c.burst, seconds, 2);
      fmt::print("  configured {:>8.0f}/s burst {:>4}  achieved {:>10.1f}/s  ratio {:.4f}\n",
                 c.rate, c.burst, r.achieved, r.ratio);
      const std::string x = fmt::format("{:.0f}/s burst {}", c.rate, c.burst);
      results.measure("sync", "rate limiter accuracy", x, "RateLimiter acquire",
                      "achieved/configured", true, {r.ratio});
      goal(fmt::format("rate limiter {} over {} s: achieved / configured", x, seconds), r.ratio,
           "within 2%", std::fabs(r.ratio - 1.0) <= 0.02);
    }
  }

  for (const Goal& g : goals)
    results.goal("sync", g.what, g.measured, g.target, g.met);
  fmt::print("\n");
}

// -----------------------------------------------------------------------------------------------
// Google Benchmark entries (single-threaded micro-benchmarks).

void BM_semaphore_try_acquire_release(benchmark::State& state) {
  herald::WeightedSemaphore sem(1024);
  for (auto _ : state) {
    benchmark::DoNotOptimize(sem.try_acquire(1));
    sem.release(1);
  }
}
BENCHMARK(BM_semaphore_try_acquire_release);

void BM_std_counting_semaphore(benchmark::State& state) {
  std::counting_semaphore<1024> sem(1024);
  for (auto _ : state) {
    sem.acquire();
    sem.release();
  }
}
BENCHMARK(BM_std_counting_semaphore);

void BM_breaker_allow_closed(benchmark::State& state) {
  herald::CircuitBreaker breaker;
  for (auto _ : state) {
    auto p = breaker.allow();
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_breaker_allow_closed);

void BM_breaker_allow_record_closed(benchmark::State& state) {
  herald::CircuitBreaker breaker;
  for (auto _ : state) {
    auto p = breaker.allow();
    breaker.record_success(p);
  }
}
BENCHMARK(BM_breaker_allow_record_closed);

void BM_dedup_contains_100k(benchmark::State& state) {
  herald::DedupWindow<std::uint64_t> w(kDedupKeys);
  fill(w);
  std::uint64_t i = 0;
  for (auto _ : state)
    benchmark::DoNotOptimize(w.contains(probe_key(i++)));
}
BENCHMARK(BM_dedup_contains_100k);

void BM_dedup_insert_new_100k(benchmark::State& state) {
  herald::DedupWindow<std::uint64_t> w(kDedupKeys);
  fill(w);
  std::uint64_t k = kDedupKeys;
  for (auto _ : state)
    benchmark::DoNotOptimize(w.insert(k++));
}
BENCHMARK(BM_dedup_insert_new_100k);

void BM_rate_limiter_try_acquire(benchmark::State& state) {
  herald::RateLimiter limiter(1e9, 1'000'000'000);
  for (auto _ : state)
    benchmark::DoNotOptimize(limiter.try_acquire());
}
BENCHMARK(BM_rate_limiter_try_acquire);

}  // namespace

int main(int argc, char** argv) {
  int reps = smoke() ? 1 : 11;
  std::string only;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    if (a.rfind("--only=", 0) == 0) only = a.substr(7);
  }
  benchmark::Initialize(&argc, argv);
  run_report(reps, only);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
