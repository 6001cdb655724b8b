// TaskGroup: every task runs exactly once and wait() joins them; the first exception requests
// stop and is rethrown; the limit bounds tasks in flight (spawn blocks, try_spawn refuses);
// spawning from inside a task never deadlocks (inline at the limit or with full queues); wait()
// from a task of the group throws; the destructor joins; bad input.
#include <herald/task_group.hpp>
#include <herald/worker_pool.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <latch>
#include <memory>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "sync_test_support.hpp"
#include "test_support.hpp"

using herald::TaskGroup;
using herald::WorkerPool;
using herald_test::eventually;
using herald_test::Gate;
using namespace std::chrono_literals;

namespace {

/// Tracks how many tasks run at once and the most ever seen.
struct Concurrency {
  std::atomic<int> now{0};
  std::atomic<int> max{0};
  void enter() {
    const int n = now.fetch_add(1) + 1;
    int m = max.load();
    while (n > m && !max.compare_exchange_weak(m, n)) {
    }
  }
  void leave() { now.fetch_sub(1); }
};

/// Counts how often each of n slots was hit: the exactly-once oracle.
struct Hits {
  explicit Hits(std::size_t n) : slots(n) {}
  std::vector<std::atomic<int>> slots;
  void hit(std::size_t i) { slots[i].fetch_add(1); }
  bool exactly_once() const {
    for (const auto& s : slots)
      if (s.load() != 1) return false;
    return true;
  }
};

}  // namespace

TEST_CASE("every spawned task runs exactly once and wait joins them all", "[task_group]") {
  WorkerPool pool{2, 64};
  TaskGroup group(pool);
  constexpr std::size_t n = 5000;
  Hits hits(n);
  for (std::size_t i = 0; i < n; ++i)
    group.spawn([&hits, i] { hits.hit(i); });
  group.wait();
  CHECK(hits.exactly_once());
  CHECK(group.approx_in_flight() == 0);
  // The group can be used again.
  std::atomic<int> again{0};
  group.spawn([&] { ++again; });
  group.wait();
  CHECK(again == 1);
}

TEST_CASE("tasks taking a stop_token get the group's token", "[task_group]") {
  WorkerPool pool{2, 16};
  TaskGroup group(pool);
  std::atomic<int> saw_stop{0};
  std::atomic<int> started{0};
  for (int i = 0; i < 2; ++i) {
    group.spawn([&](std::stop_token stop) {
      ++started;
      if (eventually([&] { return stop.stop_requested(); })) ++saw_stop;
    });
  }
  REQUIRE(eventually([&] { return started == 2; }));
  CHECK(group.request_stop());
  CHECK_FALSE(group.request_stop());  // only the first call makes the request
  group.wait();                       // no exception: a stop request is not an error
  CHECK(saw_stop == 2);
  CHECK(group.stop_token().stop_requested());
}

TEST_CASE("the first exception requests stop, every task still runs, and wait rethrows it",
          "[task_group]") {
  WorkerPool pool{3, 64};
  TaskGroup group(pool);
  std::atomic<int> started{0};
  std::atomic<int> observed_stop{0};
  // Two tasks running when the failure happens: they wait for the stop it requests, then one
  // fails too (a later failure, not the one rethrown).
  for (int i = 0; i < 2; ++i) {
    group.spawn([&, i](std::stop_token stop) {
      ++started;
      if (!eventually([&] { return stop.stop_requested(); })) return;
      ++observed_stop;
      if (i == 0) throw std::logic_error("later failure");
    });
  }
  REQUIRE(eventually([&] { return started == 2; }));  // both hold a worker; the third is free
  group.spawn([] { throw std::runtime_error("first failure"); });
  // Tasks spawned after the failure still run (they can check the token).
  REQUIRE(eventually([&] { return group.stop_token().stop_requested(); }));
  std::atomic<int> late{0};
  for (int i = 0; i < 4; ++i)
    group.spawn([&] { ++late; });
  CHECK_THROWS_WITH(group.wait(), "first failure");
  CHECK(observed_stop == 2);
  CHECK(late == 4);
  CHECK(group.stop_token().stop_requested());
  // A failed group stays failed: wait() rethrows the same first error.
  CHECK_THROWS_WITH(group.wait(), "first failure");
  group.spawn([&] { ++late; });
  CHECK_THROWS_AS(group.wait(), std::runtime_error);
  CHECK(late == 5);
}

TEST_CASE("wait returns only after every task's captures were destroyed", "[task_group]") {
  WorkerPool pool{2, 64};
  auto token = std::make_shared<int>(7);
  {
    TaskGroup group(pool);
    for (int i = 0; i < 100; ++i)
      group.spawn([token] { (void)*token; });
    group.wait();
    CHECK(token.use_count() == 1);
  }
  CHECK(token.use_count() == 1);
}

TEST_CASE("the destructor joins the tasks it did not wait for", "[task_group]") {
  WorkerPool pool{2, 64};
  Gate gate;
  std::atomic<int> started{0};
  std::atomic<int> finished{0};
  std::jthread opener([&] {
    // Opens the gate once both workers are inside a task, i.e. while the destructor waits.
    (void)eventually([&] { return started.load() == 2; });
    gate.open();
  });
  {
    TaskGroup group(pool);
    for (int i = 0; i < 8; ++i) {
      group.spawn([&] {
        ++started;
        gate.wait();
        ++finished;
      });
    }
  }  // ~TaskGroup: joins
  CHECK(finished == 8);
  CHECK(gate.is_open());
}

TEST_CASE("set_limit bounds the tasks in flight and spawn waits for a free slot", "[task_group]") {
  WorkerPool pool{4, 64};
  TaskGroup group(pool);
  group.set_limit(2);
  CHECK(group.limit() == 2);
  Concurrency c;
  std::atomic<std::size_t> max_in_flight{0};
  constexpr std::size_t n = 400;
  Hits hits(n);
  for (std::size_t i = 0; i < n; ++i) {
    group.spawn([&, i] {
      c.enter();
      std::size_t f = group.approx_in_flight();
      std::size_t m = max_in_flight.load();
      while (f > m && !max_in_flight.compare_exchange_weak(m, f)) {
      }
      std::this_thread::yield();
      hits.hit(i);
      c.leave();
    });
  }
  group.wait();
  CHECK(hits.exactly_once());
  CHECK(c.max <= 2);
  CHECK(max_in_flight <= 2);
  group.set_limit(TaskGroup::unlimited);
  CHECK(group.limit() == TaskGroup::unlimited);
}

TEST_CASE("try_spawn refuses at the limit without running the task", "[task_group]") {
  WorkerPool pool{2, 64};
  TaskGroup group(pool);
  group.set_limit(1);
  Gate gate;
  herald_test::OpenOnExit open_on_exit{gate};
  std::atomic<int> ran{0};
  group.spawn([&] { gate.wait(); });
  CHECK_FALSE(group.try_spawn([&] { ++ran; }));
  gate.open();
  group.wait();
  CHECK(ran == 0);
  CHECK(group.try_spawn([&] { ++ran; }));
  group.wait();
  CHECK(ran == 1);
}

TEST_CASE("set_limit(0) is std::invalid_argument", "[task_group]") {
  WorkerPool pool{1, 4};
  TaskGroup group(pool);
  CHECK_THROWS_AS(group.set_limit(0), std::invalid_argument);
  CHECK(group.limit() == TaskGroup::unlimited);
}

TEST_CASE("raising the limit lets a blocked spawner through", "[task_group]") {
  WorkerPool pool{2, 64};
  TaskGroup group(pool);
  group.set_limit(1);
  Gate gate;
  herald_test::OpenOnExit open_on_exit{gate};
  group.spawn([&] { gate.wait(); });
  std::atomic<int> spawned{0};
  std::jthread spawner([&] {
    group.spawn([] {});  // blocks: the only slot is taken
    spawned = 1;
  });
  herald_test::let_others_run();
  CHECK(spawned == 0);
  group.set_limit(2);
  REQUIRE(eventually([&] { return spawned == 1; }));
  gate.open();
  spawner.join();
  group.wait();
}

TEST_CASE("a task spawning at the limit runs the new task inline instead of deadlocking",
          "[task_group]") {
  WorkerPool pool{1, 16};  // one worker: blocking it would deadlock for sure
  TaskGroup group(pool);
  group.set_limit(1);
  std::atomic<int> children{0};
  std::atomic<int> on_parent_thread{0};
  group.spawn([&] {
    const auto parent = std::this_thread::get_id();
    for (int i = 0; i < 10; ++i) {
      group.spawn([&, parent] {
        ++children;
        if (std::this_thread::get_id() == parent) ++on_parent_thread;
      });
    }
  });
  group.wait();
  CHECK(children == 10);
  CHECK(on_parent_thread == 10);
}

TEST_CASE("a task spawning into full pool queues runs the task inline, move-only ones too",
          "[task_group]") {
  WorkerPool pool{1, 1};  // one worker with a one-slot queue
  TaskGroup group(pool);
  constexpr int n = 50;
  Hits hits(n);
  std::atomic<int> sum{0};
  group.spawn([&] {
    for (int i = 0; i < n; ++i) {
      auto owned = std::make_unique<int>(i);  // the callable is move-only
      group.spawn([&hits, &sum, p = std::move(owned)] {
        hits.hit(static_cast<std::size_t>(*p));
        sum += *p;
      });
    }
  });
  group.wait();
  CHECK(hits.exactly_once());
  CHECK(sum == n * (n - 1) / 2);
}

TEST_CASE("wait from one of the group's own tasks throws std::logic_error", "[task_group]") {
  WorkerPool pool{2, 16};
  TaskGroup group(pool);
  std::atomic<int> threw_logic_error{0};
  group.spawn([&] {
    try {
      group.wait();
    } catch (const std::logic_error&) {
      ++threw_logic_error;
    }
  });
  group.wait();
  CHECK(threw_logic_error == 1);
}

TEST_CASE("a nested group inside a task joins its own tasks", "[task_group]") {
  WorkerPool pool{2, 64};
  TaskGroup outer(pool);
  std::atomic<int> leaves{0};
  for (int i = 0; i < 4; ++i) {
    outer.spawn([&] {
      TaskGroup inner(pool);
      for (int j = 0; j < 8; ++j)
        inner.spawn([&] { ++leaves; });
      inner.wait();  // a different group: allowed; the other worker (or inline runs) helps
    });
  }
  outer.wait();
  CHECK(leaves == 32);
}

TEST_CASE("nested groups in more tasks than workers help instead of deadlocking", "[task_group]") {
  WorkerPool pool{2, 4};
  // Recursive fork-join: every node makes a group for its children and waits for it, on a
  // worker. Depth 6 > 2 workers: blocking waits would deadlock.
  std::function<std::uint64_t(int)> sum_tree = [&](int depth) -> std::uint64_t {
    if (depth == 0) return 1;
    TaskGroup children(pool);
    std::atomic<std::uint64_t> sum{1};
    for (int i = 0; i < 3; ++i)
      children.spawn([&] { sum += sum_tree(depth - 1); });
    children.wait();
    return sum.load();
  };
  TaskGroup root(pool);
  CHECK_FALSE(root.is_helping());
  std::atomic<std::uint64_t> total{0};
  std::atomic<int> helping{0};
  root.spawn([&] {
    TaskGroup probe(pool);
    if (probe.is_helping()) ++helping;
    total = sum_tree(6);
  });
  root.wait();
  CHECK(helping == 1);
  CHECK(total == (729 * 3 - 1) / 2);  // 1 + 3 + ... + 3^6 nodes
}

TEST_CASE("a helping group's destructor runs the tasks nobody waited for", "[task_group]") {
  WorkerPool pool{1, 4};  // the only worker is the one inside the outer task
  TaskGroup outer(pool);
  std::atomic<int> ran{0};
  outer.spawn([&] {
    TaskGroup inner(pool);
    for (int i = 0; i < 20; ++i)
      inner.spawn([&] { ++ran; });
  });  // ~inner helps: the pool's single worker is busy right here
  outer.wait();
  CHECK(ran == 20);
}

TEST_CASE("a recursive fan-out spawned from tasks visits every node exactly once", "[task_group]") {
  WorkerPool pool{2, 8};
  TaskGroup group(pool);
  group.set_limit(3);
  constexpr int branching = 4;
  constexpr int depth = 5;  // 1 + 4 + ... + 4^5 = 1365 nodes
  constexpr std::size_t nodes = (1 << (2 * (depth + 1))) / 3;
  Hits hits(nodes);
  std::function<void(std::size_t, int)> visit = [&](std::size_t id, int level) {
    hits.hit(id);
    if (level == depth) return;
    for (int b = 0; b < branching; ++b) {
      const std::size_t child = id * branching + 1 + static_cast<std::size_t>(b);
      group.spawn([&visit, child, level] { visit(child, level + 1); });
    }
  };
  group.spawn([&] { visit(0, 0); });
  group.wait();
  CHECK(hits.exactly_once());
}

TEST_CASE("spawn after the pool is shut down throws and try_spawn refuses", "[task_group]") {
  WorkerPool pool{1, 4};
  TaskGroup group(pool);
  pool.shutdown();
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(group.spawn([&] { ++ran; }), std::runtime_error);
  CHECK_FALSE(group.try_spawn([&] { ++ran; }));
  group.wait();  // nothing in flight: returns
  CHECK(ran == 0);
  CHECK(group.approx_in_flight() == 0);
}

TEST_CASE("lvalue callables are copied and rvalues moved", "[task_group]") {
  WorkerPool pool{2, 16};
  TaskGroup group(pool);
  auto token = std::make_shared<int>(1);
  std::atomic<int> ran{0};
  auto task = [token, &ran] { ran += *token; };
  group.spawn(task);
  group.spawn(task);
  group.spawn(std::move(task));
  group.wait();
  CHECK(ran == 3);
  CHECK(token.use_count() == 1);
}

TEST_CASE("many threads spawning into one limited group concurrently lose nothing",
          "[task_group]") {
  const std::uint64_t seed = herald_test::seed("task_group concurrent spawners");
  WorkerPool pool{2, 16};
  TaskGroup group(pool);
  constexpr int spawners = 3;
  const int per_spawner = herald_test::scaled(3000);
  const std::size_t limit = 1 + seed % 5;
  group.set_limit(limit);
  Hits hits(static_cast<std::size_t>(spawners * per_spawner));
  Concurrency c;
  std::atomic<int> tried{0};
  {
    std::vector<std::jthread> threads;
    for (int s = 0; s < spawners; ++s) {
      threads.emplace_back([&, s] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(s));
        for (int i = 0; i < per_spawner; ++i) {
          const auto id = static_cast<std::size_t>(s * per_spawner + i);
          auto task = [&, id] {
            c.enter();
            hits.hit(id);
            c.leave();
          };
          if (rng() % 4 == 0) {
            while (!group.try_spawn(task)) {
              ++tried;
              std::this_thread::yield();
            }
          } else {
            group.spawn(task);
          }
        }
      });
    }
  }
  group.wait();
  CHECK(hits.exactly_once());
  CHECK(c.max <= static_cast<int>(limit));
  CHECK(group.approx_in_flight() == 0);
}
