// herald::BoundedQueue against the bounded queues a C++ user would otherwise pick, in one process:
// atomic_queue (two variants), xenium's Vyukov queue, moodycamel's BlockingConcurrentQueue,
// boost::lockfree::queue, tbb::concurrent_bounded_queue and a mutex + condition variable ring.
//
// A custom harness rather than Google Benchmark cases: on a small, noisy machine the only fair
// comparison interleaves repetitions round-robin over the peers (so a burst of background load
// hits everybody alike) and reports medians. Workloads, all with capacity 1024 and 8-byte items:
//   1P1C, 2P2C, 4P1C   throughput with blocking push/pop, items/s (consumers pop fixed quotas);
//   ping-pong           round trip through two queues, ns, twice: the two threads pinned to
//                       two different CPUs, and left to the scheduler (unpinned, it sometimes
//                       puts both on one CPU and every queue's round trip jumps from ~150 ns to
//                       ~1 us: that median measures placement luck as much as the queue, but it
//                       is what an application sees);
//   idle                CPU used by a consumer blocked in pop() with no traffic, ms per second.
// Peers that cannot block (atomic_queue, xenium, boost) wait by spinning with a pause, then
// yielding; moodycamel's unbounded queue is bounded by a LightweightSemaphore of free slots (from
// the same package), so both of its sides block.
//
//   bench_queue [--reps=N] [--only=workload] [--peers=name]   HERALD_BENCH_SMOKE=1: tiny sizes,
//   one repetition
// Google Benchmark flags are accepted and ignored.
#include <herald/bounded_queue.hpp>

#include <atomic_queue/atomic_queue.h>
#include <blockingconcurrentqueue.h>
#include <fmt/core.h>
#include <lightweightsemaphore.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <xenium/vyukov_bounded_queue.hpp>

#if defined(HERALD_HAVE_BOOST)
#include <boost/lockfree/queue.hpp>
#endif
#if defined(HERALD_HAVE_TBB)
#include <tbb/concurrent_queue.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <latch>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "results.hpp"

namespace {

constexpr std::size_t kCapacity = 1024;

// How the spin-only peers wait: a few pauses (the partner is usually running on the other core),
// then yield the core (it may need it).
class Backoff {
 public:
  void operator()() noexcept {
    if (++n_ <= 64) {
      herald::detail::cpu_relax();
    } else {
      std::this_thread::yield();
    }
  }

 private:
  unsigned n_ = 0;
};

// ---- the peers: each offers blocking push(v) / pop() on std::uint64_t (values are never 0) ----

struct Herald {
  static constexpr std::string_view name = "herald::BoundedQueue";
  static constexpr bool spin_only = false;
  herald::BoundedQueue<std::uint64_t> q{kCapacity};
  void push(std::uint64_t v) { q.push(v); }
  std::uint64_t pop() { return *q.pop(); }
};

struct AtomicQueue {  // values stored in the atomics themselves; 0 marks an empty cell
  static constexpr std::string_view name = "atomic_queue::AtomicQueue";
  static constexpr bool spin_only = true;
  atomic_queue::AtomicQueue<std::uint64_t, kCapacity> q;
  void push(std::uint64_t v) {
    for (Backoff b; !q.try_push(v);)
      b();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (Backoff b; !q.try_pop(v);)
      b();
    return v;
  }
};

struct AtomicQueueB2 {  // any T, runtime capacity: the variant comparable to a generic queue
  static constexpr std::string_view name = "atomic_queue::AtomicQueueB2";
  static constexpr bool spin_only = true;
  atomic_queue::AtomicQueueB2<std::uint64_t> q{kCapacity};
  void push(std::uint64_t v) {
    for (Backoff b; !q.try_push(v);)
      b();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (Backoff b; !q.try_pop(v);)
      b();
    return v;
  }
};

struct Xenium {
  static constexpr std::string_view name = "xenium::vyukov_bounded_queue";
  static constexpr bool spin_only = true;
  xenium::vyukov_bounded_queue<std::uint64_t> q{kCapacity};
  void push(std::uint64_t v) {
    for (Backoff b; !q.try_push(v);)
      b();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (Backoff b; !q.try_pop(v);)
      b();
    return v;
  }
};

// moodycamel's queue is unbounded; it is bounded here the way its author suggests, with its own
// LightweightSemaphore counting free slots, so producers block (spin, then sleep) like consumers.
// (Spinning on try_enqueue instead collapses to ~0.5 M items/s on a loaded machine.)
struct Moodycamel {
  static constexpr std::string_view name = "moodycamel::BlockingConcurrentQueue";
  static constexpr bool spin_only = false;
  moodycamel::BlockingConcurrentQueue<std::uint64_t> q{kCapacity};
  moodycamel::LightweightSemaphore free_slots{
      static_cast<moodycamel::LightweightSemaphore::ssize_t>(kCapacity)};
  void push(std::uint64_t v) {
    free_slots.wait();
    q.enqueue(v);
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.wait_dequeue(v);
    free_slots.signal();
    return v;
  }
};

#if defined(HERALD_HAVE_BOOST)
struct BoostLockfree {
  static constexpr std::string_view name = "boost::lockfree::queue";
  static constexpr bool spin_only = true;
  boost::lockfree::queue<std::uint64_t> q{kCapacity};
  void push(std::uint64_t v) {
    for (Backoff b; !q.bounded_push(v);)
      b();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    for (Backoff b; !q.pop(v);)
      b();
    return v;
  }
};
#endif

#if defined(HERALD_HAVE_TBB)
struct Tbb {
  static constexpr std::string_view name = "tbb::concurrent_bounded_queue";
  static constexpr bool spin_only = false;
  tbb::concurrent_bounded_queue<std::uint64_t> q;
  Tbb() { q.set_capacity(kCapacity); }
  void push(std::uint64_t v) { q.push(v); }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    q.pop(v);
    return v;
  }
};
#endif

struct MutexCondvar {  // the plain baseline: what one writes by hand
  static constexpr std::string_view name = "mutex + condvar ring";
  static constexpr bool spin_only = false;
  std::mutex m;
  std::condition_variable not_empty, not_full;
  std::vector<std::uint64_t> ring = std::vector<std::uint64_t>(kCapacity);
  std::size_t head = 0, size = 0;
  void push(std::uint64_t v) {
    {
      std::unique_lock lock(m);
      not_full.wait(lock, [&] { return size < kCapacity; });
      ring[(head + size++) % kCapacity] = v;
    }
    not_empty.notify_one();
  }
  std::uint64_t pop() {
    std::uint64_t v = 0;
    {
      std::unique_lock lock(m);
      not_empty.wait(lock, [&] { return size != 0; });
      v = ring[head];
      head = (head + 1) % kCapacity;
      --size;
    }
    not_full.notify_one();
    return v;
  }
};

// ---- workloads ----

using Clock = std::chrono::steady_clock;

// Waits for every thread to be ready, then releases them together; returns the start time.
/// Pins the calling thread to one CPU (no-op on a single-CPU machine or when not allowed).
void pin_to_cpu(unsigned cpu) {
  if (std::thread::hardware_concurrency() < 2) return;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

struct StartLine {
  std::latch ready;
  std::atomic<bool> go{false};
  explicit StartLine(std::ptrdiff_t n) : ready(n) {}
  void arrive() {
    ready.count_down();
    while (!go.load(std::memory_order_acquire))
      std::this_thread::yield();
  }
  Clock::time_point release() {
    ready.wait();
    const auto t = Clock::now();
    go.store(true, std::memory_order_release);
    return t;
  }
};

bool g_failed = false;

// P producers push `items` distinct non-zero values; C consumers pop fixed quotas summing to
// `items` (so nobody needs a sentinel, which a non-linearizable queue could deliver early).
template <class Q>
double throughput(unsigned producers, unsigned consumers, std::uint64_t items) {
  auto q = std::make_unique<Q>();
  StartLine start(producers + consumers);
  std::vector<std::uint64_t> sums(consumers * 8, 0);  // 8 apart: one cache line each
  std::vector<std::thread> threads;
  for (unsigned c = 0; c < consumers; ++c) {
    const std::uint64_t quota = items / consumers + (c == 0 ? items % consumers : 0);
    threads.emplace_back([&, c, quota] {
      start.arrive();
      std::uint64_t sum = 0;
      for (std::uint64_t i = 0; i < quota; ++i)
        sum += q->pop();
      sums[c * 8] = sum;
    });
  }
  for (unsigned p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      start.arrive();
      for (std::uint64_t v = 1 + p; v <= items; v += producers)
        q->push(v);
    });
  }
  const auto t0 = start.release();
  for (auto& t : threads)
    t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::uint64_t sum = 0;
  for (unsigned c = 0; c < consumers; ++c)
    sum += sums[c * 8];
  if (sum != items * (items + 1) / 2) {
    fmt::print(stderr, "{}: checksum mismatch\n", Q::name);
    g_failed = true;
  }
  return static_cast<double>(items) / secs;
}

// One value bounces A -> B -> A through two queues; returns ns per round trip. Pinned: B on CPU
// 0, A on CPU 1; otherwise the scheduler places them.
template <class Q>
double ping_pong(std::uint64_t rounds, bool pinned) {
  auto there = std::make_unique<Q>();
  auto back = std::make_unique<Q>();
  StartLine start(2);
  std::thread echo([&] {
    if (pinned) pin_to_cpu(0);
    start.arrive();
    for (std::uint64_t i = 0; i < rounds; ++i)
      back->push(there->pop());
  });
  std::thread pinger([&] {
    if (pinned) pin_to_cpu(1);
    start.arrive();
    for (std::uint64_t i = 1; i <= rounds; ++i) {
      there->push(i);
      if (back->pop() != i) g_failed = true;
    }
  });
  const auto t0 = start.release();
  pinger.join();
  echo.join();
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() /
         static_cast<double>(rounds);
}

double thread_cpu_ms() {
  rusage ru{};
  getrusage(RUSAGE_THREAD, &ru);
  const auto ms = [](const timeval& tv) {
    return static_cast<double>(tv.tv_sec) * 1e3 + static_cast<double>(tv.tv_usec) / 1e3;
  };
  return ms(ru.ru_utime) + ms(ru.ru_stime);
}

// A consumer blocks in pop() on an empty queue for `window`; returns its CPU ms per second.
template <class Q>
double idle_cpu(std::chrono::milliseconds window) {
  auto q = std::make_unique<Q>();
  std::atomic<bool> waiting{false};
  double used_ms = 0;
  std::thread consumer([&] {
    const double before = thread_cpu_ms();
    waiting = true;
    if (q->pop() != 42) g_failed = true;
    used_ms = thread_cpu_ms() - before;
  });
  while (!waiting)
    std::this_thread::yield();
  std::this_thread::sleep_for(window);
  q->push(42);
  consumer.join();
  return used_ms * 1000.0 / static_cast<double>(window.count());
}

// ---- harness ----

struct Peer {
  std::string_view name;
  bool spin_only;
  double (*throughput)(unsigned, unsigned, std::uint64_t);
  double (*ping_pong)(std::uint64_t, bool);
  double (*idle)(std::chrono::milliseconds);
};

template <class Q>
Peer peer() {
  return {Q::name, Q::spin_only, &throughput<Q>, &ping_pong<Q>, &idle_cpu<Q>};
}

using herald_bench::median;

std::string display_name(const Peer& p) {
  return std::string(p.name) + (p.spin_only ? " (spin)" : "");
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  const bool smoke = std::getenv("HERALD_BENCH_SMOKE") != nullptr &&
                     std::string_view(std::getenv("HERALD_BENCH_SMOKE")) == "1";
  int reps = smoke ? 1 : 5;
  std::string only;
  std::string peer_filter;
  for (int i = 1; i < argc; ++i) {
    const std::string_view a = argv[i];
    if (a.rfind("--reps=", 0) == 0) reps = std::max(1, std::atoi(argv[i] + 7));
    if (a.rfind("--only=", 0) == 0) only = std::string(a.substr(7));
    if (a.rfind("--peers=", 0) == 0) peer_filter = std::string(a.substr(8));
  }
  const std::uint64_t items_1p1c = smoke ? 20'000 : 2'000'000;
  const std::uint64_t items_multi = smoke ? 20'000 : 1'000'000;
  const std::uint64_t rounds = smoke ? 2'000 : 20'000;
  const auto idle_window = smoke ? std::chrono::milliseconds(50) : std::chrono::milliseconds(1000);

  herald_bench::ResultsFile results_file;
  std::vector<Peer> peers = {
    peer<Herald>(),
    peer<AtomicQueue>(),
    peer<AtomicQueueB2>(),
    peer<Xenium>(),
    peer<Moodycamel>(),
#if defined(HERALD_HAVE_BOOST)
    peer<BoostLockfree>(),
#endif
#if defined(HERALD_HAVE_TBB)
    peer<Tbb>(),
#endif
    peer<MutexCondvar>()
  };
  // herald stays first: the ratios are against it.
  std::erase_if(peers, [&](const Peer& p) {
    return p.name != Herald::name && !peer_filter.empty() &&
           p.name.find(peer_filter) == std::string_view::npos;
  });

  struct Workload {
    std::string name;
    std::string unit;
    bool higher_is_better;
    std::function<double(const Peer&)> run;
  };
  std::vector<Workload> workloads = {
      {"1P1C", "M items/s", true,
       [&](const Peer& p) { return p.throughput(1, 1, items_1p1c) / 1e6; }},
      {"2P2C", "M items/s", true,
       [&](const Peer& p) { return p.throughput(2, 2, items_multi) / 1e6; }},
      {"4P1C", "M items/s", true,
       [&](const Peer& p) { return p.throughput(4, 1, items_multi) / 1e6; }},
      {"ping-pong, pinned", "ns/round trip", false,
       [&](const Peer& p) { return p.ping_pong(rounds, true); }},
      {"ping-pong, unpinned", "ns/round trip", false,
       [&](const Peer& p) { return p.ping_pong(rounds, false); }},
  };
  std::erase_if(workloads, [&](const Workload& w) {
    return !only.empty() && w.name.find(only) == std::string::npos;
  });

  fmt::print("bench_queue: {} | {} cores | {} | {} repetitions interleaved, medians{}\n",
             cpu_model(), std::thread::hardware_concurrency(),
#if defined(__clang__)
             "clang++ " __clang_version__,
#else
             "g++ " __VERSION__,
#endif
             reps, smoke ? " | SMOKE sizes" : "");
  fmt::print(
      "capacity {}, 8-byte items; 1P1C {} items, 2P2C/4P1C {} items, ping-pong {} rounds\n\n",
      kCapacity, items_1p1c, items_multi, rounds);

  // results[workload][peer] = samples
  std::vector<std::vector<std::vector<double>>> results(
      workloads.size(), std::vector<std::vector<double>>(peers.size()));
  for (int rep = 0; rep < reps; ++rep) {
    for (std::size_t w = 0; w < workloads.size(); ++w) {
      for (std::size_t k = 0; k < peers.size(); ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(rep)) % peers.size();  // rotate
        results[w][i].push_back(workloads[w].run(peers[i]));
      }
    }
  }

  std::map<std::string, std::vector<double>> med;  // workload -> median per peer
  for (std::size_t w = 0; w < workloads.size(); ++w) {
    const Workload& wl = workloads[w];
    fmt::print("{:<10} {:<38} {:>12} {:>12} {:>12} {:>9}\n", wl.name, "peer", "median", "min",
               "max", "herald/x");
    std::vector<double>& m = med[wl.name];
    for (std::size_t i = 0; i < peers.size(); ++i) {
      m.push_back(median(results[w][i]));
      results_file.measure("queue", wl.name, "", display_name(peers[i]), wl.unit,
                           wl.higher_is_better, results[w][i]);
    }
    for (std::size_t i = 0; i < peers.size(); ++i) {
      const auto [lo, hi] = std::minmax_element(results[w][i].begin(), results[w][i].end());
      const double ratio = wl.higher_is_better ? m[0] / m[i] : m[i] / m[0];
      fmt::print("{:<10} {:<38} {:>12.3f} {:>12.3f} {:>12.3f} {:>8.2f}x\n", "",
                 display_name(peers[i]), m[i], *lo, *hi, ratio);
    }
    fmt::print("{:<10} ({}; herald/x > 1 means herald is better)\n\n", "", wl.unit);
  }

  std::vector<double> idle_ms;
  if (only.empty() || std::string("idle").find(only) != std::string::npos) {
    fmt::print("{:<10} {:<38} {:>12}\n", "idle", "peer", "CPU ms/s");
    for (const Peer& p : peers) {
      idle_ms.push_back(p.idle(idle_window));
      fmt::print("{:<10} {:<38} {:>12.3f}\n", "", display_name(p), idle_ms.back());
      results_file.measure("queue", "idle consumer", "", display_name(p), "CPU ms/s", false,
                           {idle_ms.back()});
    }
    fmt::print("\n");
  }

  // Targets (DESIGN.md), all as ratios within this run.
  const auto index_of = [&](std::string_view n) {
    for (std::size_t i = 0; i < peers.size(); ++i)
      if (peers[i].name == n) return i;
    return std::size_t{0};
  };
  const std::size_t moody = index_of(Moodycamel::name);
  const std::size_t mutexcv = index_of(MutexCondvar::name);
  const auto verdict = [](bool ok) { return ok ? "met" : "MISSED"; };
  // Records a goal for the report and returns the verdict for the printed line.
  const auto goal = [&](const std::string& what, double measured, std::string_view target,
                        bool met) {
    results_file.goal("queue", what, measured, target, met);
    return verdict(met);
  };
  // The target summary needs every peer (a --peers filter is for diagnosis only).
  const bool all_peers = peer_filter.empty();
  if (all_peers) fmt::print("targets:\n");
  if (all_peers && med.count("1P1C")) {
    const auto& m = med["1P1C"];
    double best_spin = 0;
    std::string_view best_name;
    for (std::size_t i = 0; i < peers.size(); ++i) {
      if (peers[i].spin_only && m[i] > best_spin) {
        best_spin = m[i];
        best_name = peers[i].name;
      }
    }
    const double vs_spin = m[0] / best_spin;
    const double vs_moody = m[0] / m[moody];
    fmt::print("  1P1C  herald / best spin-only ({}) = {:.2f} (>= 0.7: {})\n", best_name, vs_spin,
               goal(fmt::format("1P1C throughput, herald / best spin-only ({})", best_name),
                    vs_spin, ">= 0.7x", vs_spin >= 0.7));
    fmt::print(
        "  1P1C  herald / moodycamel blocking = {:.2f} (>= 2: {})\n", vs_moody,
        goal("1P1C throughput, herald / moodycamel blocking", vs_moody, ">= 2x", vs_moody >= 2));
  }
  for (const char* w : {"2P2C", "4P1C"}) {
    if (!all_peers || !med.count(w)) continue;
    const auto& m = med[w];
    const double vs_moody = m[0] / m[moody];
    const double vs_mutex = m[0] / m[mutexcv];
    goal(fmt::format("{} throughput, herald / moodycamel blocking", w), vs_moody, ">= 2x",
         vs_moody >= 2);
    goal(fmt::format("{} throughput, herald / mutex+condvar", w), vs_mutex, ">= 2x", vs_mutex >= 2);
    fmt::print("  {}  herald / moodycamel = {:.2f}, herald / mutex+condvar = {:.2f} (>= 2: {})\n",
               w, vs_moody, vs_mutex, verdict(vs_moody >= 2 && vs_mutex >= 2));
    if (med.count("1P1C")) {
      const double own = m[0] / med["1P1C"][0];
      fmt::print("  {}  herald / herald 1P1C = {:.2f} (>= 0.5: {})\n", w, own,
                 goal(fmt::format("{} throughput, herald / herald's own 1P1C", w), own, ">= 0.5x",
                      own >= 0.5));
    }
  }
  for (const char* w : {"ping-pong, pinned", "ping-pong, unpinned"}) {
    if (!all_peers || !med.count(w)) continue;
    const auto& m = med[w];
    double best_spin = 1e300;
    std::string_view best_name;
    for (std::size_t i = 0; i < peers.size(); ++i) {
      if (peers[i].spin_only && m[i] < best_spin) {
        best_spin = m[i];
        best_name = peers[i].name;
      }
    }
    const double rt = m[0] / best_spin;
    fmt::print("  {}  herald / best spin-only ({}) round trip = {:.2f} (<= 1.5: {})\n", w,
               best_name, rt,
               goal(fmt::format("{} round trip, herald / best spin-only ({})", w, best_name), rt,
                    "<= 1.5x", rt <= 1.5));
  }
  if (all_peers && !idle_ms.empty()) {
    fmt::print("  idle  herald parked consumer = {:.3f} ms CPU per s (< 5: {})\n", idle_ms[0],
               goal("idle: CPU ms used by a consumer parked for 1 s", idle_ms[0], "< 5 ms",
                    idle_ms[0] < 5));
  }
  if (g_failed) fmt::print(stderr, "a peer delivered wrong values\n");
  return g_failed ? 1 : 0;
}
