// WorkerPool timers: schedule_after / schedule_at, fire order, cancellation by handle and by
// stop_token, what shutdown does with pending timers, and that idle workers stay parked.
#include <herald/worker_pool.hpp>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::TimerHandle;
using herald::TimerStatus;
using herald::WorkerPool;
using herald_test::Gate;
using herald_test::hold_workers;
using herald_test::OpenOnExit;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

/// Counts live copies and calls of a timer task.
struct Probe {
  std::atomic<long> live{0};
  std::atomic<long> calls{0};
};

struct CountingTask {
  Probe* probe;
  explicit CountingTask(Probe& p) : probe(&p) { ++probe->live; }
  CountingTask(const CountingTask& o) : probe(o.probe) { ++probe->live; }
  CountingTask(CountingTask&& o) noexcept : probe(o.probe) { ++probe->live; }
  CountingTask& operator=(const CountingTask&) = delete;
  ~CountingTask() { --probe->live; }
  void operator()() { ++probe->calls; }
};

/// The process's CPU time (user + system), for "parked threads burn nothing".
std::chrono::microseconds cpu_time() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  const auto us = [](const timeval& t) {
    return std::chrono::seconds(t.tv_sec) + std::chrono::microseconds(t.tv_usec);
  };
  return us(u.ru_utime) + us(u.ru_stime);
}

/// Waits (polling: the condition is a counter of the pool) until every worker is parked.
void wait_all_parked(WorkerPool& pool) {
  const auto until = Clock::now() + 10s;
  while (pool.stats().parked != pool.thread_count()) {
    REQUIRE(Clock::now() < until);
    std::this_thread::yield();
  }
}

}  // namespace

TEST_CASE("timers fire in deadline order, equal deadlines in scheduling order", "[pool][timer]") {
  WorkerPool pool{1, 64};
  std::mutex m;
  std::vector<int> order;
  std::latch fired(6);
  const auto record = [&](int id) {
    return [&, id] {
      {
        const std::lock_guard lock(m);
        order.push_back(id);
      }
      fired.count_down();
    };
  };
  const auto now = Clock::now();
  // Scheduled out of order while the only worker is free, so it sleeps on the earliest one.
  pool.schedule_at(now + 60ms, record(5));
  pool.schedule_at(now + 20ms, record(2));
  pool.schedule_at(now + 40ms, record(4));
  pool.schedule_at(now + 20ms, record(3));  // same deadline as 2: after it
  pool.schedule_after(5ms, record(1));
  pool.schedule_at(now - 1s, record(0));  // in the past: at once
  fired.wait();
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5});
  const auto s = pool.stats();
  CHECK(s.timers_fired == 6);
  CHECK(s.timers_pending == 0);
}

TEST_CASE("a timer never fires before its deadline", "[pool][timer]") {
  WorkerPool pool{2, 64};
  constexpr std::size_t n = 20;
  std::vector<Clock::time_point> due(n), ran(n);
  std::latch fired(static_cast<std::ptrdiff_t>(n));
  for (std::size_t i = 0; i < n; ++i) {
    due[i] = Clock::now() + std::chrono::milliseconds(1 + (i * 7) % 30);
    pool.schedule_at(due[i], [&, i] {
      ran[i] = Clock::now();
      fired.count_down();
    });
  }
  fired.wait();
  for (std::size_t i = 0; i < n; ++i) {
    INFO("timer " << i);
    CHECK(ran[i] >= due[i]);
  }
}

TEST_CASE("cancel() destroys a pending timer's task unrun; once only", "[pool][timer]") {
  Probe probe;
  {
    WorkerPool pool{1, 64};
    TimerHandle h = pool.schedule_after(10s, CountingTask(probe));
    REQUIRE(h);
    CHECK(h.status() == TimerStatus::pending);
    CHECK(probe.live == 1);
    CHECK(h.cancel());
    CHECK(h.status() == TimerStatus::cancelled);
    CHECK(probe.live == 0);
    CHECK_FALSE(h.cancel());
    TimerHandle copy = h;
    CHECK_FALSE(copy.cancel());
    const auto s = pool.stats();
    CHECK(s.timers_cancelled == 1);
    CHECK(s.timers_pending == 0);
  }
  CHECK(probe.calls == 0);
  CHECK(probe.live == 0);
}

TEST_CASE("cancel() after the timer fired returns false", "[pool][timer]") {
  WorkerPool pool{1, 64};
  std::promise<void> ran;
  TimerHandle h = pool.schedule_after(0ms, [&] { ran.set_value(); });
  ran.get_future().wait();
  CHECK(h.status() == TimerStatus::fired);
  CHECK_FALSE(h.cancel());
  CHECK(h.status() == TimerStatus::fired);
}

TEST_CASE("a stop request cancels a pending timer; an already stopped token at once",
          "[pool][timer]") {
  Probe probe;
  WorkerPool pool{1, 64};
  std::stop_source source;
  TimerHandle h = pool.schedule_after(10s, CountingTask(probe), source.get_token());
  CHECK(h.status() == TimerStatus::pending);
  source.request_stop();
  CHECK(h.status() == TimerStatus::cancelled);
  CHECK(probe.live == 0);

  std::stop_source stopped;
  stopped.request_stop();
  TimerHandle g = pool.schedule_after(0ms, CountingTask(probe), stopped.get_token());
  CHECK(g.status() == TimerStatus::cancelled);
  CHECK(probe.live == 0);
  CHECK(probe.calls == 0);
  CHECK(pool.stats().timers_cancelled == 2);
}

TEST_CASE("shutdown abandons pending timers (destroyed unrun, counted) and refuses new ones",
          "[pool][timer]") {
  Probe probe;
  WorkerPool pool{2, 64};
  std::vector<TimerHandle> handles;
  for (int i = 0; i < 10; ++i)
    handles.push_back(pool.schedule_after(std::chrono::seconds(100 + i), CountingTask(probe)));
  std::promise<void> ran;
  pool.schedule_after(0ms, [&] { ran.set_value(); });
  ran.get_future().wait();
  CHECK(probe.live == 10);
  pool.shutdown();
  CHECK(probe.live == 0);
  CHECK(probe.calls == 0);
  for (const TimerHandle& h : handles)
    CHECK(h.status() == TimerStatus::abandoned);
  auto s = pool.stats();
  CHECK(s.timers_abandoned == 10);
  CHECK(s.timers_fired == 1);
  CHECK(s.timers_pending == 0);
  CHECK(s.submitted == s.completed + s.failed);

  TimerHandle late = pool.schedule_after(0ms, CountingTask(probe));
  CHECK_FALSE(late);
  CHECK(late.status() == TimerStatus::refused);
  CHECK(probe.live == 0);
}

TEST_CASE("a throwing timer task is counted as failed and reported; the worker carries on",
          "[pool][timer]") {
  std::atomic<int> errors{0};
  WorkerPool pool{1, 64, {.on_error = [&](std::exception_ptr) { ++errors; }}};
  std::promise<void> after;
  pool.schedule_after(1ms, [] { throw std::runtime_error("timer"); });
  pool.schedule_after(5ms, [&] { after.set_value(); });
  after.get_future().wait();
  pool.shutdown();
  CHECK(errors == 1);
  const auto s = pool.stats();
  CHECK(s.failed == 1);
  CHECK(s.submitted == s.completed + s.failed);
}

TEST_CASE("an earlier timer wakes the worker parked until a later deadline", "[pool][timer]") {
  WorkerPool pool{2, 64};
  std::promise<void> late_ran;
  pool.schedule_after(30s, [] {});
  wait_all_parked(pool);  // one of them until the 30 s deadline
  std::promise<Clock::time_point> ran;
  const auto start = Clock::now();
  pool.schedule_after(20ms, [&] { ran.set_value(Clock::now()); });
  auto f = ran.get_future();
  REQUIRE(f.wait_for(10s) == std::future_status::ready);
  CHECK(f.get() - start >= 20ms);
}

TEST_CASE("timers fire between tasks while every worker is busy", "[pool][timer]") {
  WorkerPool pool{1, 64};
  std::atomic<bool> timer_ran{false};
  std::promise<int> chain_done;
  // A task that resubmits itself until the timer has run (at most 10 s).
  const auto deadline = Clock::now() + 10s;
  struct Chain {
    WorkerPool* pool;
    std::atomic<bool>* flag;
    std::promise<int>* done;
    Clock::time_point deadline;
    int n;
    void operator()() const {
      if (flag->load() || Clock::now() > deadline) {
        done->set_value(n);
        return;
      }
      pool->submit(Chain{pool, flag, done, deadline, n + 1});
    }
  };
  pool.schedule_after(20ms, [&] { timer_ran = true; });
  pool.submit(Chain{&pool, &timer_ran, &chain_done, deadline, 0});
  chain_done.get_future().get();
  CHECK(timer_ran.load());
}

TEST_CASE("idle workers stay parked while timers wait (no early wake-ups)", "[pool][timer]") {
  Probe probe;  // before the pool: the pool's destructor destroys the pending tasks, which count
  WorkerPool pool{2, 64};
  for (int i = 0; i < 1000; ++i)
    pool.schedule_after(std::chrono::seconds(60) + std::chrono::milliseconds(i),
                        CountingTask(probe));
  wait_all_parked(pool);
  const auto cpu0 = cpu_time();
  std::this_thread::sleep_for(300ms);  // measuring what the workers burn, not waiting for them
  const auto burnt = cpu_time() - cpu0;
  INFO("CPU burnt in 300 ms with 1000 pending timers: " << burnt.count() << " us");
  CHECK(burnt < 30ms);
  CHECK(pool.stats().parked == 2);
  CHECK(pool.stats().timers_pending == 1000);
}

TEST_CASE("a task may schedule timers, and a timer task may schedule the next", "[pool][timer]") {
  WorkerPool pool{2, 64};
  std::latch done(1);
  std::atomic<int> hops{0};
  struct Hop {
    WorkerPool* pool;
    std::atomic<int>* hops;
    std::latch* done;
    void operator()() const {
      if (++*hops == 20) {
        done->count_down();
        return;
      }
      pool->schedule_after(1ms, Hop{pool, hops, done});
    }
  };
  pool.submit(Hop{&pool, &hops, &done});
  done.wait();
  CHECK(hops == 20);
}

TEST_CASE("scheduling and cancelling race: every timer runs once or is cancelled, none leaks",
          "[pool][timer][stress]") {
  const std::uint64_t seed = herald_test::seed("timer race");
  Probe probe;
  std::atomic<long> cancelled{0};
  constexpr int threads = 4;
  constexpr int per_thread = 2000;
  {
    WorkerPool pool{2, 256};
    std::vector<std::thread> ts;
    for (int t = 0; t < threads; ++t) {
      ts.emplace_back([&, t] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t));
        std::vector<TimerHandle> mine;
        std::stop_source source;
        for (int i = 0; i < per_thread; ++i) {
          const auto delay = std::chrono::microseconds(rng() % 3000);
          mine.push_back(pool.schedule_after(
              delay, CountingTask(probe), rng() % 4 == 0 ? source.get_token() : std::stop_token{}));
          if (rng() % 3 == 0) {
            const std::size_t k = rng() % mine.size();
            if (mine[k].cancel()) ++cancelled;
          }
        }
        source.request_stop();
      });
    }
    for (auto& t : ts)
      t.join();
    const auto until = Clock::now() + 30s;
    while (pool.stats().timers_pending != 0) {
      REQUIRE(Clock::now() < until);
      std::this_thread::sleep_for(1ms);
    }
    pool.shutdown();  // the last tasks claimed may still be running
    const auto s = pool.stats();
    INFO("seed " << seed);
    CHECK(s.timers_fired + s.timers_cancelled == threads * per_thread);
    CHECK(s.timers_abandoned == 0);
    CHECK(static_cast<long>(s.timers_fired) == probe.calls.load());
    CHECK(static_cast<long>(s.timers_cancelled) >= cancelled.load());
  }
  CHECK(probe.live == 0);
}
