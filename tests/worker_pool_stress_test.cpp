// WorkerPool under contention: many submitters x workers, every task identified by
// (submitter, seq) and checked to run exactly once; keyed tasks also checked for per-key order;
// shutdown racing with submitters; pools destroyed from inside their own tasks, repeatedly.
// Randomized parts print their seed; set HERALD_SEED=<n> to replay one.
#include <herald/worker_pool.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <latch>
#include <memory>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::WorkerPool;
using herald_test::scaled;

namespace {

enum class How { submit, try_submit, keyed, stop_token, async };

/// One submitter's sequence of submission methods, drawn from the seed.
std::vector<How> plan(std::uint64_t seed, int submitter, int n) {
  std::mt19937_64 rng(seed + static_cast<std::uint64_t>(submitter) * 0x9e3779b97f4a7c15ULL);
  std::uniform_int_distribution<int> pick(0, 9);
  std::vector<How> out(static_cast<std::size_t>(n));
  for (auto& h : out) {
    const int r = pick(rng);
    h = r < 3   ? How::submit
        : r < 5 ? How::try_submit
        : r < 8 ? How::keyed
        : r < 9 ? How::stop_token
                : How::async;
  }
  return out;
}

/// The kernel ids of a pool's `threads` workers, found by running keyed tasks (each key belongs to
/// one worker) until every worker has run one.
std::vector<pid_t> worker_tids(WorkerPool& pool, std::size_t threads) {
  std::vector<pid_t> tids;
  for (std::uint64_t key = 0; tids.size() < threads; ++key) {
    std::promise<pid_t> ran_on;
    if (!pool.submit_keyed(key, [&] { ran_on.set_value(herald_test::current_tid()); })) break;
    const pid_t tid = ran_on.get_future().get();
    if (std::find(tids.begin(), tids.end(), tid) == tids.end()) tids.push_back(tid);
  }
  return tids;
}

}  // namespace

TEST_CASE("every task of many submitters runs exactly once and keys keep their order",
          "[worker_pool][stress]") {
  const std::uint64_t seed = herald_test::seed("worker_pool exactly-once");
  const int submitters = 4;
  const int per_submitter = scaled(40000);
  const std::size_t threads = GENERATE(as<std::size_t>{}, 1, 2, 4);
  const std::size_t capacity = GENERATE(as<std::size_t>{}, 2, 64);
  INFO("threads " << threads << ", capacity " << capacity << ", seed " << seed);
  constexpr int keys_per_submitter = 8;

  std::vector<std::vector<std::atomic<std::uint8_t>>> runs(submitters);
  for (auto& r : runs)
    r = std::vector<std::atomic<std::uint8_t>>(std::size_t(per_submitter));
  // Per (submitter, key): the seq of the last keyed task that ran, and a "running" flag.
  struct KeyState {
    std::atomic<int> last{-1};
    std::atomic<bool> running{false};
    std::atomic<int> errors{0};
  };
  std::vector<KeyState> keys(submitters * keys_per_submitter);
  std::atomic<std::uint64_t> futures_ok{0};
  std::atomic<int> rejected{0};
  {
    WorkerPool pool(threads, capacity);
    std::vector<std::thread> ts;
    for (int s = 0; s < submitters; ++s) {
      ts.emplace_back([&, s] {
        const std::vector<How> how = plan(seed, s, per_submitter);
        std::stop_source never;
        std::vector<std::future<int>> futures;
        auto& mine = runs[static_cast<std::size_t>(s)];
        for (int i = 0; i < per_submitter; ++i) {
          auto* slot = &mine[static_cast<std::size_t>(i)];
          auto task = [slot] { slot->fetch_add(1, std::memory_order_relaxed); };
          bool ok = false;
          switch (how[static_cast<std::size_t>(i)]) {
            case How::submit:
              ok = pool.submit(task);
              break;
            case How::try_submit:
              while (!(ok = pool.try_submit(task)))
                std::this_thread::yield();
              break;
            case How::keyed: {
              const int k = s * keys_per_submitter + i % keys_per_submitter;
              KeyState* ks = &keys[static_cast<std::size_t>(k)];
              ok = pool.submit_keyed(static_cast<std::uint64_t>(k), [slot, ks, i] {
                if (ks->running.exchange(true, std::memory_order_acquire)) ++ks->errors;
                if (ks->last.load(std::memory_order_relaxed) >= i) ++ks->errors;
                ks->last.store(i, std::memory_order_relaxed);
                ks->running.store(false, std::memory_order_release);
                slot->fetch_add(1, std::memory_order_relaxed);
              });
              break;
            }
            case How::stop_token:
              ok = pool.submit(task, never.get_token());
              break;
            case How::async:
              futures.push_back(pool.async([slot, i] {
                slot->fetch_add(1, std::memory_order_relaxed);
                return i;
              }));
              ok = true;
              break;
          }
          if (!ok) rejected.fetch_add(1);  // Catch's macros are not for other threads
        }
        std::uint64_t good = 0;
        for (auto& f : futures)
          good += f.get() >= 0 ? 1 : 0;
        futures_ok += good;
      });
    }
    for (auto& t : ts)
      t.join();
    pool.shutdown();
    CHECK(rejected == 0);
    const auto st = pool.stats();
    CHECK(st.submitted == std::uint64_t(submitters) * std::uint64_t(per_submitter));
    CHECK(st.completed == st.submitted);
    CHECK(st.failed == 0);
    CHECK(st.queued == 0);
  }
  for (int s = 0; s < submitters; ++s) {
    const auto& mine = runs[static_cast<std::size_t>(s)];
    for (int i = 0; i < per_submitter; ++i) {
      const int n = mine[static_cast<std::size_t>(i)].load();
      if (n != 1) FAIL("task (" << s << ", " << i << ") ran " << n << " times");
    }
  }
  for (auto& k : keys)
    CHECK(k.errors == 0);
}

TEST_CASE("shutdown racing with submitters runs exactly the accepted tasks",
          "[worker_pool][stress][shutdown]") {
  const std::uint64_t seed = herald_test::seed("worker_pool shutdown race");
  std::mt19937_64 rng(seed);
  const int rounds = scaled(40);
  for (int round = 0; round < rounds; ++round) {
    constexpr int submitters = 3;
    const int per_submitter = 3000;
    std::vector<std::atomic<std::uint8_t>> runs(std::size_t(submitters * per_submitter));
    std::vector<std::uint8_t> accepted(runs.size(), 0);
    const auto close_after = std::uniform_int_distribution<int>(0, submitters * per_submitter)(rng);
    std::atomic<int> submitted_so_far{0};
    std::uint64_t stats_submitted = 0;
    std::uint64_t stats_completed = 0;
    {
      WorkerPool pool(2, 16);
      std::vector<std::thread> ts;
      for (int s = 0; s < submitters; ++s) {
        ts.emplace_back([&, s] {
          for (int i = 0; i < per_submitter; ++i) {
            const auto id = static_cast<std::size_t>(s * per_submitter + i);
            auto* slot = &runs[id];
            auto task = [slot] { slot->fetch_add(1, std::memory_order_relaxed); };
            const bool ok = (i % 2 == 0) ? pool.submit(task) : pool.submit_keyed(i, task);
            accepted[id] = ok ? 1 : 0;
            submitted_so_far.fetch_add(1, std::memory_order_relaxed);
          }
        });
      }
      while (submitted_so_far.load(std::memory_order_relaxed) < close_after)
        std::this_thread::yield();
      pool.shutdown();
      for (auto& t : ts)
        t.join();
      const auto st = pool.stats();
      stats_submitted = st.submitted;
      stats_completed = st.completed;
    }
    std::uint64_t n_accepted = 0;
    for (std::size_t id = 0; id < runs.size(); ++id) {
      n_accepted += accepted[id];
      if (runs[id].load() != accepted[id])
        FAIL("round " << round << ": task " << id << " accepted " << int(accepted[id]) << ", ran "
                      << int(runs[id].load()) << "x");
    }
    REQUIRE(stats_submitted == n_accepted);
    REQUIRE(stats_completed == n_accepted);
  }
}

TEST_CASE("pools destroyed from inside their own tasks, over and over",
          "[worker_pool][stress][shutdown]") {
  const int rounds = scaled(300);
  std::atomic<long> ran{0};
  long expected = 0;
  for (int round = 0; round < rounds; ++round) {
    auto freed = std::make_shared<std::latch>(1);
    // The handler is owned by the pool's shared state: its destruction proves the state is gone.
    struct Witness {
      std::shared_ptr<std::latch> l;
      Witness(const Witness&) = default;
      Witness(Witness&&) noexcept = default;
      explicit Witness(std::shared_ptr<std::latch> x) : l(std::move(x)) {}
      ~Witness() {
        if (l && l.use_count() == 2) l->count_down();
      }
      void operator()(std::exception_ptr) const {}
    };
    herald::WorkerPoolOptions options;
    options.on_error = Witness{freed};
    auto pool = std::make_unique<WorkerPool>(1 + static_cast<std::size_t>(round % 3), 8,
                                             std::move(options));
    WorkerPool* raw = pool.get();
    const int before = round % 5;
    std::latch go{1};
    for (int i = 0; i < before; ++i)
      REQUIRE(raw->submit([&ran] { ++ran; }));
    REQUIRE(raw->submit([p = std::move(pool), &ran, &go]() mutable {
      go.wait();
      ++ran;
      if (p->on_worker_thread()) p.reset();
    }));
    // Queued behind the destroying task (or on other workers): all must run, none twice.
    for (int i = 0; i < 3; ++i) {
      if (raw->try_submit_keyed(i, [&ran] { ++ran; })) ++expected;
      if (raw->try_submit([&ran] { ++ran; })) ++expected;
    }
    expected += before + 1;
    go.count_down();  // from here on `raw` may dangle
    freed->wait();
  }
  CHECK(ran == expected);
}

TEST_CASE("tasks submitted one at a time to an idle pool always run (no lost wake-up)",
          "[worker_pool][stress]") {
  // Each task is submitted only once the previous one ran, so the workers keep running dry,
  // spinning and parking: a lost wake-up would hang here (and hit the CTest timeout).
  const std::uint64_t seed = herald_test::seed("worker_pool wake-ups");
  std::mt19937_64 rng(seed);
  const int n = scaled(20000);
  for (std::size_t threads : {std::size_t{1}, std::size_t{2}, std::size_t{4}}) {
    WorkerPool pool(threads, 4);
    const std::vector<pid_t> workers = worker_tids(pool, threads);
    std::atomic<int> done{0};
    for (int i = 0; i < n; ++i) {
      const int r = static_cast<int>(rng() % 8);
      auto task = [&done] { done.fetch_add(1, std::memory_order_release); };
      const bool ok = r < 4 ? pool.submit(task) : pool.submit_keyed(rng() % 16, task);
      REQUIRE(ok);
      while (done.load(std::memory_order_acquire) != i + 1)
        std::this_thread::yield();
      if (r == 7) {
        // Now and then let every worker go all the way to sleep before the next task.
        for (const pid_t tid : workers)
          herald_test::wait_until_blocked(tid);
      }
    }
  }
}
