// WorkerPool against the pools a C++ user would otherwise pick, 2 worker threads each:
//   herald::WorkerPool, boost::asio::thread_pool, tbb::task_group (in a 2-thread task_arena),
//   and a mutex + condition_variable pool written here (the usual hand-written baseline).
//
// Workloads
//   empty tasks     one thread submits N empty tasks, then waits until all have run; ns/task.
//                   Each peer waits its own idiomatic way: herald polls stats().completed, asio
//                   joins the pool (created, untimed, before the batch), TBB calls
//                   task_group::wait() (so the submitting thread helps, as TBB users get), the
//                   baseline waits on its condition variable.
//   submit->start   one task at a time: the time from just before submit to the task's first
//                   instruction (steady_clock), median over many tasks; the submitter spins on a
//                   flag until the task ran, so it never runs the task itself (TBB included).
// Repetitions are interleaved round-robin over the peers (so drift hits all of them alike) and
// medians are reported, with ratios against herald. The same workloads are also registered with
// Google Benchmark (one run each) so that --benchmark_filter and the JSON reporters work.
// HERALD_BENCH_SMOKE=1: tiny sizes, one repetition (CI proves the binary runs).
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "results.hpp"

#include <benchmark/benchmark.h>
#include <fmt/core.h>

#if defined(HERALD_HAVE_BOOST)
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#endif
#if defined(HERALD_HAVE_TBB)
#include <tbb/task_arena.h>
#include <tbb/task_group.h>
#endif

namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kThreads = 2;
constexpr std::size_t kHeraldCapacity = 4096;  // per worker queue; the peers are unbounded

bool smoke() {
  const char* s = std::getenv("HERALD_BENCH_SMOKE");
  return s != nullptr && std::string(s) == "1";
}

struct Sizes {
  std::size_t tasks_per_batch;  // empty-task workload
  std::size_t latency_samples;  // per repetition
  int reps;
};

Sizes sizes() {
  if (smoke()) return {2000, 50, 1};
  return {200000, 4000, 11};
}

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::int64_t ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

/// The hand-written baseline: one deque under one mutex, one condvar for work and one for idle.
class MutexPool {
 public:
  explicit MutexPool(std::size_t threads) {
    for (std::size_t i = 0; i < threads; ++i)
      workers_.emplace_back([this] { loop(); });
  }
  ~MutexPool() {
    {
      const std::lock_guard lock(m_);
      stop_ = true;
    }
    work_.notify_all();
    for (auto& t : workers_)
      t.join();
  }
  MutexPool(const MutexPool&) = delete;
  MutexPool& operator=(const MutexPool&) = delete;

  void submit(std::function<void()> f) {
    {
      const std::lock_guard lock(m_);
      queue_.push_back(std::move(f));
      ++pending_;
    }
    work_.notify_one();
  }

  void wait_idle() {
    std::unique_lock lock(m_);
    idle_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  void loop() {
    std::unique_lock lock(m_);
    for (;;) {
      work_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;
      std::function<void()> f = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      f();
      lock.lock();  // one lock per task: bookkeeping and the next pop share it
      if (--pending_ == 0) idle_.notify_all();
    }
  }

  std::mutex m_;
  std::condition_variable work_;
  std::condition_variable idle_;
  std::deque<std::function<void()>> queue_;
  std::size_t pending_ = 0;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// ---------------------------------------------------------------------------------------------
// The peers. Each offers: ns per empty task over a batch, and one submit->start latency sample.

/// State shared by a latency task and its submitter.
struct Probe {
  std::atomic<std::int64_t> started{0};
  std::atomic<bool> done{false};
  void reset() {
    started.store(0, std::memory_order_relaxed);
    done.store(false, std::memory_order_relaxed);
  }
  void hit() {
    started.store(ns(Clock::now()), std::memory_order_relaxed);
    done.store(true, std::memory_order_release);
  }
  // Yields rather than spins: on 2 cores a spinning submitter could keep the very thread that
  // must run the task off the CPU.
  void wait() const {
    while (!done.load(std::memory_order_acquire))
      std::this_thread::yield();
  }
};

/// herald's pool. With P other than normal every task goes to that priority lane (the
/// pool-wide high or low queue instead of the workers' own): what a lane costs against plain
/// submit, which is what P = normal measures.
template <herald::Priority P = herald::Priority::normal>
struct HeraldPeer {
  static constexpr const char* name = P == herald::Priority::normal ? "herald::WorkerPool"
                                      : P == herald::Priority::high ? "herald, Priority::high"
                                                                    : "herald, Priority::low";
  herald::WorkerPool pool{kThreads, kHeraldCapacity};

  template <class F>
  void submit(F&& f) {
    if constexpr (P == herald::Priority::normal) {
      pool.submit(std::forward<F>(f));
    } else {
      pool.submit(std::forward<F>(f), P);
    }
  }

  double empty_tasks(std::size_t n) {
    const std::uint64_t target = pool.stats().completed + n;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i)
      submit([] {});
    while (pool.stats().completed < target)
      std::this_thread::yield();
    return seconds_since(t0) * 1e9 / static_cast<double>(n);
  }

  std::int64_t latency(Probe& p) {
    p.reset();
    const auto t0 = Clock::now();
    submit([&p] { p.hit(); });
    p.wait();
    return p.started.load(std::memory_order_relaxed) - ns(t0);
  }
};
using HeraldHighPeer = HeraldPeer<herald::Priority::high>;
using HeraldLowPeer = HeraldPeer<herald::Priority::low>;

#if defined(HERALD_HAVE_BOOST)
struct AsioPeer {
  static constexpr const char* name = "boost::asio::thread_pool";
  boost::asio::thread_pool pool{kThreads};

  static double empty_tasks(std::size_t n) {
    boost::asio::thread_pool batch{kThreads};  // join() ends a pool: one per batch, untimed
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i)
      boost::asio::post(batch, [] {});
    batch.join();
    return seconds_since(t0) * 1e9 / static_cast<double>(n);
  }

  std::int64_t latency(Probe& p) {
    p.reset();
    const auto t0 = Clock::now();
    boost::asio::post(pool, [&p] { p.hit(); });
    p.wait();
    return p.started.load(std::memory_order_relaxed) - ns(t0);
  }
};
#endif

#if defined(HERALD_HAVE_TBB)
struct TbbPeer {
  static constexpr const char* name = "tbb::task_group";
  // Two threads in all: the arena's one worker plus the thread that calls execute()/wait().
  tbb::task_arena arena{static_cast<int>(kThreads)};
  tbb::task_group group;

  double empty_tasks(std::size_t n) {
    double result = 0;
    arena.execute([&] {
      const auto t0 = Clock::now();
      for (std::size_t i = 0; i < n; ++i)
        group.run([] {});
      group.wait();
      result = seconds_since(t0) * 1e9 / static_cast<double>(n);
    });
    return result;
  }

  std::int64_t latency(Probe& p) {
    p.reset();
    std::int64_t t0 = 0;
    arena.execute([&] {
      t0 = ns(Clock::now());
      group.run([&p] { p.hit(); });
      p.wait();  // not group.wait(): the arena's worker must take it, not this thread
      group.wait();
    });
    return p.started.load(std::memory_order_relaxed) - t0;
  }
};
#endif

struct MutexPeer {
  static constexpr const char* name = "mutex+condvar pool";
  MutexPool pool{kThreads};

  double empty_tasks(std::size_t n) {
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < n; ++i)
      pool.submit([] {});
    pool.wait_idle();
    return seconds_since(t0) * 1e9 / static_cast<double>(n);
  }

  std::int64_t latency(Probe& p) {
    p.reset();
    const auto t0 = Clock::now();
    pool.submit([&p] { p.hit(); });
    p.wait();
    return p.started.load(std::memory_order_relaxed) - ns(t0);
  }
};

using herald_bench::median;

template <class Peer>
double median_latency(Peer& peer, std::size_t samples) {
  Probe probe;
  std::vector<double> lat;
  lat.reserve(samples);
  for (std::size_t i = 0; i < samples; ++i)
    lat.push_back(static_cast<double>(peer.latency(probe)));
  return median(std::move(lat));
}

/// One column of the report: a peer's per-repetition results.
struct Series {
  std::string name;
  std::vector<double> ns_per_task;
  std::vector<double> latency_ns;
};

template <class Peer>
void one_rep(Peer& peer, Series& s, const Sizes& z) {
  s.ns_per_task.push_back(peer.empty_tasks(z.tasks_per_batch));
  s.latency_ns.push_back(median_latency(peer, z.latency_samples));
}

// Prints herald's ns/task over a peer's against a "<= target" goal, and records the goal.
void print_ratio_row(herald_bench::ResultsFile& results, const Series& peer, double target,
                     double herald_value, double peer_value) {
  const double ratio = herald_value / peer_value;
  const bool met = ratio <= target;
  fmt::print("  herald / {:<26} {:>7.2f}x   (target <= {:.1f}x: {})\n", peer.name, ratio, target,
             met ? "met" : "MISSED");
  results.goal("pool", fmt::format("empty tasks, herald ns/task / {}", peer.name), ratio,
               fmt::format("<= {:.1f}x", target), met);
}

void run_round_robin() {
  const Sizes z = sizes();
  HeraldPeer<> herald_peer;
  MutexPeer mutex_peer;
  std::vector<Series> series;
  series.push_back({HeraldPeer<>::name, {}, {}});
#if defined(HERALD_HAVE_BOOST)
  AsioPeer asio_peer;
  series.push_back({AsioPeer::name, {}, {}});
#endif
#if defined(HERALD_HAVE_TBB)
  TbbPeer tbb_peer;
  series.push_back({TbbPeer::name, {}, {}});
#endif
  series.push_back({MutexPeer::name, {}, {}});
  // What the priority lanes cost, beside plain submit (not peers: no goal).
  HeraldHighPeer high_peer;
  HeraldLowPeer low_peer;
  series.push_back({HeraldHighPeer::name, {}, {}});
  series.push_back({HeraldLowPeer::name, {}, {}});

  // Warm-up (threads started, caches and allocators primed), not recorded.
  {
    const Sizes warm{std::min<std::size_t>(z.tasks_per_batch, 20000), 20, 1};
    Series scratch;
    one_rep(herald_peer, scratch, warm);
#if defined(HERALD_HAVE_BOOST)
    one_rep(asio_peer, scratch, warm);
#endif
#if defined(HERALD_HAVE_TBB)
    one_rep(tbb_peer, scratch, warm);
#endif
    one_rep(mutex_peer, scratch, warm);
    one_rep(high_peer, scratch, warm);
    one_rep(low_peer, scratch, warm);
  }

  for (int rep = 0; rep < z.reps; ++rep) {
    std::size_t i = 0;
    one_rep(herald_peer, series[i++], z);
#if defined(HERALD_HAVE_BOOST)
    one_rep(asio_peer, series[i++], z);
#endif
#if defined(HERALD_HAVE_TBB)
    one_rep(tbb_peer, series[i++], z);
#endif
    one_rep(mutex_peer, series[i++], z);
    one_rep(high_peer, series[i++], z);
    one_rep(low_peer, series[i++], z);
  }

  herald_bench::ResultsFile results;
  for (const Series& s : series) {
    results.measure("pool", "empty tasks", "", s.name, "ns/task", false, s.ns_per_task);
    results.measure("pool", "submit-to-start latency", "", s.name, "ns", false, s.latency_ns);
  }
  fmt::print(
      "\npool benchmarks: {} worker threads each, {} repetitions interleaved round-robin, "
      "medians{}\n",
      kThreads, z.reps, smoke() ? " (SMOKE sizes: not meaningful)" : "");
  fmt::print("empty tasks: {} per batch from one thread, then wait for all (ns/task)\n",
             z.tasks_per_batch);
  for (const Series& s : series)
    fmt::print("  {:<30} {:>9.1f} ns/task   (min {:.1f}, max {:.1f})\n", s.name,
               median(s.ns_per_task), *std::min_element(s.ns_per_task.begin(), s.ns_per_task.end()),
               *std::max_element(s.ns_per_task.begin(), s.ns_per_task.end()));
  const double h_tasks = median(series[0].ns_per_task);
  for (std::size_t i = 1; i < series.size(); ++i) {
    const double peer = median(series[i].ns_per_task);
    double target = 0;
    if (series[i].name == "boost::asio::thread_pool") target = 0.5;
    if (series[i].name == "tbb::task_group") target = 1.5;
    if (target > 0) {
      print_ratio_row(results, series[i], target, h_tasks, peer);
    } else {
      fmt::print("  herald / {:<26} {:>7.2f}x\n", series[i].name, h_tasks / peer);
    }
  }
  fmt::print("submit->start latency, one task at a time: {} tasks per repetition (median ns)\n",
             z.latency_samples);
  for (const Series& s : series)
    fmt::print("  {:<30} {:>9.0f} ns\n", s.name, median(s.latency_ns));
  const double h_lat = median(series[0].latency_ns);
  for (std::size_t i = 1; i < series.size(); ++i)
    fmt::print("  herald / {:<26} {:>7.2f}x\n", series[i].name,
               h_lat / median(series[i].latency_ns));
  fmt::print("\n");
}

// ---------------------------------------------------------------------------------------------
// The same workloads as Google Benchmark entries (manual time: one batch per iteration).

template <class Peer>
void BM_empty_tasks(benchmark::State& state) {
  Peer peer;
  const std::size_t n = sizes().tasks_per_batch;
  for (auto _ : state) {
    const double per_task = peer.empty_tasks(n);
    state.SetIterationTime(per_task * static_cast<double>(n) * 1e-9);
  }
  state.SetItemsProcessed(static_cast<std::int64_t>(state.iterations()) *
                          static_cast<std::int64_t>(n));
}

template <class Peer>
void BM_submit_to_start(benchmark::State& state) {
  Peer peer;
  Probe probe;
  for (auto _ : state) {
    state.SetIterationTime(static_cast<double>(peer.latency(probe)) * 1e-9);
  }
}

// Fixed iteration counts: the default (run until 0.5 s of manual time) would spend seconds of
// wall time per latency entry.
void batch_args(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(smoke() ? 1 : 5);
}
void latency_args(benchmark::internal::Benchmark* b) {
  b->UseManualTime()->Unit(benchmark::kNanosecond)->Iterations(smoke() ? 50 : 5000);
}

BENCHMARK_TEMPLATE(BM_empty_tasks, HeraldPeer<>)->Apply(batch_args);
BENCHMARK_TEMPLATE(BM_submit_to_start, HeraldPeer<>)->Apply(latency_args);
BENCHMARK_TEMPLATE(BM_empty_tasks, HeraldHighPeer)->Apply(batch_args);
BENCHMARK_TEMPLATE(BM_submit_to_start, HeraldHighPeer)->Apply(latency_args);
#if defined(HERALD_HAVE_BOOST)
BENCHMARK_TEMPLATE(BM_empty_tasks, AsioPeer)->Apply(batch_args);
BENCHMARK_TEMPLATE(BM_submit_to_start, AsioPeer)->Apply(latency_args);
#endif
#if defined(HERALD_HAVE_TBB)
BENCHMARK_TEMPLATE(BM_empty_tasks, TbbPeer)->Apply(batch_args);
BENCHMARK_TEMPLATE(BM_submit_to_start, TbbPeer)->Apply(latency_args);
#endif
BENCHMARK_TEMPLATE(BM_empty_tasks, MutexPeer)->Apply(batch_args);
BENCHMARK_TEMPLATE(BM_submit_to_start, MutexPeer)->Apply(latency_args);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  run_round_robin();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
