// WorkerPool and its task wrapper (detail::UniqueFunction): submission, back-pressure, keyed
// order, futures, failures, shutdown (also from inside a task) and object lifetimes.
#include <herald/detail/unique_function.hpp>
#include <herald/worker_pool.hpp>

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <future>
#include <latch>
#include <memory>
#include <mutex>
#include <set>
#include <stdexcept>
#include <stop_token>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::WorkerPool;
using herald::detail::UniqueFunction;
using herald_test::BlockedProbe;
using herald_test::Gate;
using herald_test::hold_workers;
using herald_test::OpenOnExit;

namespace {

/// Counts live instances and calls of a task; aborts on use after destruction or double destroy.
struct Probe {
  std::atomic<long> live{0};
  std::atomic<long> calls{0};
};

template <std::size_t Padding = 0>
struct CountingTask {
  Probe* probe;
  bool alive = true;
  std::array<unsigned char, Padding + 1> pad{};

  explicit CountingTask(Probe& p) : probe(&p) { ++probe->live; }
  CountingTask(const CountingTask& o) : probe(o.probe) {
    if (!o.alive) std::abort();
    ++probe->live;
  }
  CountingTask(CountingTask&& o) noexcept : probe(o.probe) {
    if (!o.alive) std::abort();
    ++probe->live;
  }
  CountingTask& operator=(const CountingTask&) = delete;
  ~CountingTask() {
    if (!alive) std::abort();
    alive = false;
    --probe->live;
  }
  void operator()() {
    if (!alive) std::abort();
    ++probe->calls;
  }
};

using SmallTask = CountingTask<0>;
using LargeTask = CountingTask<200>;

/// Records where it lives when called, to tell inline storage from heap storage.
struct AddressReporter {
  const void** where;
  void operator()() { *where = this; }
};

bool inside(const void* p, const void* object, std::size_t size) {
  const auto* b = static_cast<const unsigned char*>(object);
  const auto* q = static_cast<const unsigned char*>(p);
  return std::less_equal<>{}(b, q) && std::less<>{}(q, b + size);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// UniqueFunction

TEST_CASE("an empty UniqueFunction is false and throws bad_function_call when called",
          "[unique_function]") {
  UniqueFunction<void()> f;
  CHECK_FALSE(f);
  CHECK(f == nullptr);
  CHECK_THROWS_AS(f(), std::bad_function_call);
  void (*null_fn)() = nullptr;
  UniqueFunction<void()> g(null_fn);
  CHECK_FALSE(g);
  UniqueFunction<void()> h(std::function<void()>{});
  CHECK_FALSE(h);
}

TEST_CASE("a small callable is stored inside the object and a large one on the heap",
          "[unique_function]") {
  const void* where = nullptr;
  UniqueFunction<void()> small(AddressReporter{&where});
  small();
  CHECK(inside(where, &small, sizeof small));

  struct Big {
    const void** where;
    std::array<char, 128> bytes{};
    void operator()() { *where = this; }
  };
  UniqueFunction<void()> big(Big{&where});
  big();
  CHECK_FALSE(inside(where, &big, sizeof big));

  struct alignas(64) OverAligned {
    const void** where;
    void operator()() { *where = this; }
  };
  UniqueFunction<void()> aligned(OverAligned{&where});
  aligned();
  CHECK(reinterpret_cast<std::uintptr_t>(where) % 64 == 0);
}

TEST_CASE("UniqueFunction passes arguments and returns results", "[unique_function]") {
  UniqueFunction<int(int, int)> add([](int a, int b) { return a + b; });
  CHECK(add(2, 3) == 5);
  UniqueFunction<std::unique_ptr<int>(std::unique_ptr<int>)> through(
      [](std::unique_ptr<int> p) { return p; });
  CHECK(*through(std::make_unique<int>(7)) == 7);
  UniqueFunction<int(int)> fn_ptr(+[](int x) { return -x; });
  CHECK(fn_ptr(4) == -4);
}

TEST_CASE("UniqueFunction holds move-only captures and empties the moved-from object",
          "[unique_function]") {
  auto owned = std::make_unique<int>(41);
  UniqueFunction<int()> f([p = std::move(owned)] { return *p + 1; });
  UniqueFunction<int()> g(std::move(f));
  CHECK_FALSE(f);  // NOLINT(bugprone-use-after-move): documented state
  REQUIRE(g);
  CHECK(g() == 42);
  UniqueFunction<int()> h;
  h = std::move(g);
  CHECK_FALSE(g);  // NOLINT(bugprone-use-after-move)
  CHECK(h() == 42);
  h.swap(g);
  CHECK_FALSE(h);
  CHECK(g() == 42);
}

TEMPLATE_TEST_CASE("UniqueFunction destroys its callable exactly once through moves and resets",
                   "[unique_function]", SmallTask, LargeTask) {
  Probe probe;
  {
    UniqueFunction<void()> a(TestType{probe});
    CHECK(probe.live == 1);
    UniqueFunction<void()> b(std::move(a));
    CHECK(probe.live == 1);
    b();
    UniqueFunction<void()> c(TestType{probe});
    CHECK(probe.live == 2);
    c = std::move(b);  // destroys c's callable, takes b's
    CHECK(probe.live == 1);
    c();
    UniqueFunction<void()>& alias = c;
    c = std::move(alias);  // self-move keeps the callable
    CHECK(probe.live == 1);
    c = nullptr;
    CHECK(probe.live == 0);
    UniqueFunction<void()> d(TestType{probe});
    UniqueFunction<void()> e(TestType{probe});
    d.swap(e);
    CHECK(probe.live == 2);
  }
  CHECK(probe.live == 0);
  CHECK(probe.calls == 2);
}

TEST_CASE("UniqueFunction stores a callable whose move may throw on the heap, never moving it",
          "[unique_function]") {
  struct ThrowingMove {
    Probe* probe;
    explicit ThrowingMove(Probe& p) : probe(&p) { ++probe->live; }
    ThrowingMove(const ThrowingMove& o) : probe(o.probe) { ++probe->live; }
    ThrowingMove(ThrowingMove&& o) noexcept(false) : probe(o.probe) { ++probe->live; }
    ~ThrowingMove() { --probe->live; }
    void operator()() { ++probe->calls; }
  };
  Probe probe;
  {
    UniqueFunction<void()> f(ThrowingMove{probe});
    UniqueFunction<void()> g(std::move(f));
    g();
    CHECK(probe.live == 1);
  }
  CHECK(probe.live == 0);
  CHECK(probe.calls == 1);
}

// ---------------------------------------------------------------------------------------------
// WorkerPool: construction and plain submission

TEST_CASE("a pool with 0 threads or 0 capacity is rejected", "[worker_pool]") {
  CHECK_THROWS_AS(WorkerPool(0, 8), std::invalid_argument);
  CHECK_THROWS_AS(WorkerPool(2, 0), std::invalid_argument);
  WorkerPool pool(3, 1);
  CHECK(pool.thread_count() == 3);
  CHECK(pool.stats().threads == 3);
}

TEST_CASE("submitted tasks all run and are counted", "[worker_pool]") {
  constexpr int n = 10000;
  std::atomic<int> ran{0};
  WorkerPool pool(2, 64);
  for (int i = 0; i < n; ++i)
    REQUIRE(pool.submit([&] { ran.fetch_add(1); }));
  pool.shutdown();
  CHECK(ran == n);
  const auto s = pool.stats();
  CHECK(s.submitted == n);
  CHECK(s.completed == n);
  CHECK(s.failed == 0);
  CHECK(s.queued == 0);
}

TEST_CASE("on_worker_thread is true only on the pool's own workers", "[worker_pool]") {
  WorkerPool pool(2, 8);
  WorkerPool other(1, 8);
  CHECK_FALSE(pool.on_worker_thread());
  std::promise<std::array<bool, 2>> seen;
  pool.submit([&] { seen.set_value({pool.on_worker_thread(), other.on_worker_thread()}); });
  const auto flags = seen.get_future().get();
  CHECK(flags[0]);
  CHECK_FALSE(flags[1]);
}

TEST_CASE("try_submit fails when the queue is full and succeeds again once there is room",
          "[worker_pool]") {
  Gate gate;
  WorkerPool pool(1, 2);
  OpenOnExit open_on_exit{gate};
  std::latch started{1};
  REQUIRE(pool.submit([&] {
    started.count_down();
    gate.wait();
  }));
  started.wait();  // the worker is busy: the queue holds exactly what we add now
  std::atomic<int> ran{0};
  CHECK(pool.try_submit([&] { ++ran; }));
  CHECK(pool.try_submit([&] { ++ran; }));
  CHECK(pool.stats().queued == 2);
  CHECK_FALSE(pool.try_submit([&] { ++ran; }));
  gate.open();
  pool.shutdown();
  CHECK(ran == 2);
  CHECK(pool.stats().submitted == 3);
}

TEST_CASE("submit blocks while the queue is full and returns once a task makes room",
          "[worker_pool]") {
  Gate gate;
  WorkerPool pool(1, 1);
  OpenOnExit open_on_exit{gate};
  std::latch started{1};
  REQUIRE(pool.submit([&] {
    started.count_down();
    gate.wait();
  }));
  started.wait();
  std::vector<int> order;  // written by the single worker only
  REQUIRE(pool.try_submit([&] { order.push_back(1); }));
  REQUIRE_FALSE(pool.try_submit([] {}));  // full

  std::atomic<bool> gate_opened{false};
  std::atomic<bool> returned_before_gate{false};
  std::atomic<bool> accepted{false};
  BlockedProbe submitting;
  std::thread submitter([&] {
    submitting.arrive();
    const bool ok = pool.submit([&] { order.push_back(2); });
    // Room appears only when the worker moves on, which it can only do after the gate opened.
    if (!gate_opened.load()) returned_before_gate = true;
    accepted = ok;
  });
  submitting.wait_until_blocked();  // waiting for room
  CHECK_FALSE(returned_before_gate.load());
  gate_opened = true;
  gate.open();
  submitter.join();
  CHECK_FALSE(returned_before_gate.load());
  CHECK(accepted.load());
  pool.shutdown();
  CHECK(order == std::vector<int>{1, 2});
}

TEST_CASE("a stop request cancels a submit that is blocked on a full queue", "[worker_pool]") {
  Probe probe;
  {
    Gate gate;
    WorkerPool pool(1, 1);
    OpenOnExit open_on_exit{gate};
    std::latch started{1};
    REQUIRE(pool.submit([&] {
      started.count_down();
      gate.wait();
    }));
    started.wait();
    REQUIRE(pool.try_submit(SmallTask{probe}));

    std::stop_source stop;
    std::atomic<bool> result{true};
    BlockedProbe submitting;
    std::thread submitter([&] {
      submitting.arrive();
      result = pool.submit(SmallTask{probe}, stop.get_token());
    });
    submitting.wait_until_blocked();  // waiting for room
    stop.request_stop();
    submitter.join();
    CHECK_FALSE(result.load());

    std::stop_source already;
    already.request_stop();
    CHECK_FALSE(pool.submit(SmallTask{probe}, already.get_token()));
    CHECK_FALSE(pool.submit_keyed(1, SmallTask{probe}, already.get_token()));

    gate.open();
    pool.shutdown();
    CHECK(pool.stats().submitted == 2);
  }
  CHECK(probe.calls == 1);  // only the task queued before the stop
  CHECK(probe.live == 0);
}

TEST_CASE("an idle worker takes over plain tasks queued behind a busy one", "[worker_pool]") {
  // Plain tasks are spread round-robin over the workers' queues; if worker A is stuck, worker B
  // must still run the ones that went to A's queue, or this test never gets past `all_ran`.
  Gate gate;
  WorkerPool pool(2, 64);
  OpenOnExit open_on_exit{gate};
  hold_workers(pool, gate);
  constexpr int n = 100;
  std::latch all_ran{n};
  for (int i = 0; i < n; ++i)
    REQUIRE(pool.submit([&] { all_ran.count_down(); }));
  all_ran.wait();
  gate.open();
}

TEST_CASE("a task queued while workers park and wake always finds a worker", "[worker_pool]") {
  // Each round gives a fresh two-worker pool two tasks that block until both run, while its
  // workers are starting, spinning, parking or being woken: if a wake-up is ever lost (a worker
  // left parked with a task in its own queue while the other one is stuck), the round never
  // completes. Found by a CI hang under TSan: a worker that left park() by itself, having seen
  // both tasks queued, was no longer counted as searching, so after taking one it did not hand
  // the other on to the parked worker (the submitter had left that wake-up to it).
  constexpr int rounds = 300;
  int stuck = 0;
  for (int round = 0; round < rounds && stuck == 0; ++round) {
    Gate gate;
    WorkerPool pool(2, 2);
    OpenOnExit open_on_exit{gate};
    // Vary how far the workers got before the first submission: none, spinning, or parked.
    for (int i = 0; i < (round % 3) * 200; ++i)
      std::this_thread::yield();
    auto running = std::make_shared<std::atomic<int>>(0);
    for (int t = 0; t < 2; ++t) {
      REQUIRE(pool.submit([running, &gate] {
        running->fetch_add(1);
        gate.wait();
      }));
    }
    if (!herald_test::eventually([&] { return running->load() == 2; }, std::chrono::seconds(10)))
      ++stuck;
  }
  CHECK(stuck == 0);
}

// ---------------------------------------------------------------------------------------------
// Keyed submission

TEST_CASE("tasks of one key run one at a time in submission order, across many keys",
          "[worker_pool][keyed]") {
  constexpr int submitters = 3;
  constexpr int keys_per_submitter = 20;
  constexpr int per_key = 300;
  constexpr int keys = submitters * keys_per_submitter;
  struct KeyState {
    std::atomic<int> next{0};  // the sequence number expected next
    std::atomic<bool> running{false};
    std::atomic<int> errors{0};
  };
  std::vector<KeyState> state(keys);
  {
    WorkerPool pool(4, 16);
    std::vector<std::thread> threads;
    for (int s = 0; s < submitters; ++s) {
      threads.emplace_back([&, s] {
        // Submitter s owns keys s, s + submitters, ...: only one thread orders a key.
        for (int seq = 0; seq < per_key; ++seq) {
          for (int k = s; k < keys; k += submitters) {
            const bool ok = pool.submit_keyed(static_cast<std::uint64_t>(k), [&state, k, seq] {
              KeyState& ks = state[static_cast<std::size_t>(k)];
              if (ks.running.exchange(true)) ++ks.errors;  // overlapping with the same key
              if (ks.next.load() != seq) ++ks.errors;      // out of order or lost
              ks.next.store(seq + 1);
              ks.running.store(false);
            });
            if (!ok) std::abort();
          }
        }
      });
    }
    for (auto& t : threads)
      t.join();
  }
  for (int k = 0; k < keys; ++k) {
    INFO("key " << k);
    CHECK(state[static_cast<std::size_t>(k)].errors == 0);
    CHECK(state[static_cast<std::size_t>(k)].next == per_key);
  }
}

TEST_CASE("tasks of different keys run in parallel", "[worker_pool][keyed]") {
  WorkerPool pool(2, 8);
  // Find two keys that land on different workers.
  auto thread_of = [&](std::uint64_t key) {
    std::promise<std::thread::id> id;
    pool.submit_keyed(key, [&] { id.set_value(std::this_thread::get_id()); });
    return id.get_future().get();
  };
  const std::thread::id first = thread_of(0);
  std::uint64_t other = 1;
  while (thread_of(other) == first)
    ++other;
  // Each task waits for the other: if the keys were serialised this would never finish.
  std::latch both{2};
  std::latch done{2};
  pool.submit_keyed(std::uint64_t{0}, [&] {
    both.arrive_and_wait();
    done.count_down();
  });
  pool.submit_keyed(other, [&] {
    both.arrive_and_wait();
    done.count_down();
  });
  done.wait();
}

TEST_CASE("keys may be strings and other hashable types", "[worker_pool][keyed]") {
  WorkerPool pool(3, 8);
  std::mutex m;
  std::vector<int> seen;
  for (int i = 0; i < 50; ++i)
    REQUIRE(pool.submit_keyed(std::string("orders"), [&, i] {
      const std::lock_guard lock(m);
      seen.push_back(i);
    }));
  pool.shutdown();
  REQUIRE(seen.size() == 50);
  for (int i = 0; i < 50; ++i)
    CHECK(seen[static_cast<std::size_t>(i)] == i);
}

TEST_CASE("try_submit_keyed fails when that worker's keyed queue is full", "[worker_pool][keyed]") {
  Gate gate;
  WorkerPool pool(1, 1);
  OpenOnExit open_on_exit{gate};
  std::latch started{1};
  REQUIRE(pool.submit_keyed(7, [&] {
    started.count_down();
    gate.wait();
  }));
  started.wait();
  CHECK(pool.try_submit_keyed(7, [] {}));
  CHECK_FALSE(pool.try_submit_keyed(7, [] {}));
  CHECK(pool.try_submit([] {}));  // plain tasks have their own queue
  gate.open();
}

// ---------------------------------------------------------------------------------------------
// Futures and failures

TEST_CASE("async futures carry values, move-only results and exceptions", "[worker_pool]") {
  WorkerPool pool(2, 8);
  auto value = pool.async([] { return 42; });
  auto owned = pool.async([] { return std::make_unique<int>(5); });
  std::atomic<bool> ran{false};
  auto nothing = pool.async([&] { ran = true; });
  auto boom = pool.async([]() -> int { throw std::runtime_error("boom"); });
  auto p = std::make_unique<int>(9);
  auto captured = pool.async([q = std::move(p)] { return *q; });
  // Every task (and the promise it holds) is destroyed before the futures are read. Otherwise a
  // worker may drop the last reference to "boom"'s exception while this thread still reads its
  // message: ordered by the exception's reference count inside libstdc++, which ThreadSanitizer
  // does not see (a reported race that is not one).
  pool.shutdown();
  CHECK(value.get() == 42);
  CHECK(*owned.get() == 5);
  nothing.get();
  CHECK(ran);
  CHECK_THROWS_WITH(boom.get(), "boom");
  CHECK(captured.get() == 9);
  CHECK(pool.stats().failed == 0);  // the exception went to the future
  CHECK(pool.stats().completed == 5);
}

TEST_CASE("a throwing task is counted and reported and its worker carries on", "[worker_pool]") {
  std::mutex m;
  std::vector<std::string> errors;
  herald::WorkerPoolOptions options;
  options.on_error = [&](std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      const std::lock_guard lock(m);
      errors.emplace_back(ex.what());
    }
  };
  WorkerPool pool(1, 8, std::move(options));
  std::promise<std::thread::id> before;
  std::promise<std::thread::id> after;
  pool.submit([&] { before.set_value(std::this_thread::get_id()); });
  pool.submit([] { throw std::runtime_error("first"); });
  pool.submit([] { throw std::logic_error("second"); });
  pool.submit([&] { after.set_value(std::this_thread::get_id()); });
  CHECK(before.get_future().get() == after.get_future().get());  // the same thread survived

  std::atomic<int> replaced{0};
  std::latch handled{1};
  pool.set_error_handler([&](std::exception_ptr) {
    ++replaced;
    handled.count_down();
    throw std::runtime_error("a throwing handler is swallowed");
  });
  pool.submit([] { throw 7; });
  handled.wait();
  pool.set_error_handler({});
  pool.submit([] { throw 8; });  // no handler: only counted
  pool.shutdown();
  CHECK(errors == std::vector<std::string>{"first", "second"});
  CHECK(replaced == 1);
  const auto s = pool.stats();
  CHECK(s.failed == 4);
  CHECK(s.completed == 2);
  CHECK(s.submitted == 6);
}

// ---------------------------------------------------------------------------------------------
// Shutdown

TEST_CASE("shutdown runs every accepted task and rejects everything afterwards",
          "[worker_pool][shutdown]") {
  constexpr int submitters = 3;
  constexpr int per_submitter = 2000;
  Probe probe;
  std::vector<std::atomic<int>> runs(submitters * per_submitter);
  std::vector<std::atomic<bool>> accepted(submitters * per_submitter);
  Gate gate;
  {
    WorkerPool pool(2, 4);
    OpenOnExit open_on_exit{gate};
    hold_workers(pool, gate, 2);
    std::vector<std::thread> threads;
    for (int s = 0; s < submitters; ++s) {
      threads.emplace_back([&, s] {
        for (int i = 0; i < per_submitter; ++i) {
          const auto id = static_cast<std::size_t>(s * per_submitter + i);
          bool ok = false;
          switch (i % 3) {
            case 0:
              ok = pool.submit([&runs, id, t = SmallTask{probe}]() mutable {
                t();
                ++runs[id];
              });
              break;
            case 1:
              ok = pool.submit_keyed(i, [&runs, id] { ++runs[id]; });
              break;
            default:
              while (!(ok = pool.try_submit([&runs, id] { ++runs[id]; })) && !pool.is_shut_down())
                std::this_thread::yield();
          }
          accepted[id] = ok;
        }
      });
    }
    std::thread closer([&] { pool.shutdown(); });
    while (!pool.is_shut_down())
      std::this_thread::yield();
    gate.open();  // the workers were stuck until now: the queues are full
    closer.join();
    for (auto& t : threads)
      t.join();

    CHECK_FALSE(pool.submit([] {}));
    CHECK_FALSE(pool.try_submit([] {}));
    CHECK_FALSE(pool.submit_keyed(1, [] {}));
    auto broken = pool.async([] { return 1; });
    CHECK_THROWS_AS(broken.get(), std::future_error);
    pool.shutdown();  // idempotent

    std::uint64_t n_accepted = 0;
    for (std::size_t id = 0; id < runs.size(); ++id) {
      if (accepted[id]) ++n_accepted;
      if (runs[id] != (accepted[id] ? 1 : 0)) FAIL("task " << id << " ran " << runs[id] << "x");
    }
    const auto s = pool.stats();
    CHECK(s.submitted == n_accepted + 2);
    CHECK(s.completed == s.submitted);
    CHECK(s.queued == 0);
  }
  CHECK(probe.live == 0);
}

TEST_CASE("shutdown from inside a task returns at once and the pool still drains",
          "[worker_pool][shutdown]") {
  std::atomic<int> ran{0};
  std::atomic<bool> submit_after{true};
  std::latch shut{1};
  Gate gate;
  WorkerPool pool(2, 64);
  OpenOnExit open_on_exit{gate};
  REQUIRE(pool.submit_keyed(1, [&] {
    gate.wait();
    pool.shutdown();  // must neither deadlock nor terminate
    submit_after = pool.submit([] {});
    ++ran;
    shut.count_down();
  }));
  for (int i = 0; i < 20; ++i)
    REQUIRE(pool.submit_keyed(1, [&] { ++ran; }));  // behind it
  gate.open();
  shut.wait();
  CHECK_FALSE(submit_after.load());
  pool.shutdown();  // from outside: joins
  CHECK(ran == 21);
}

namespace {

/// Signals when destroyed: proves the pool's shared state (which owns the error handler) is freed.
struct ReleaseSignal {
  std::shared_ptr<std::latch> freed;
  explicit ReleaseSignal(std::shared_ptr<std::latch> l) : freed(std::move(l)) {}
  ReleaseSignal(const ReleaseSignal&) = default;
  ReleaseSignal(ReleaseSignal&& o) noexcept = default;
  ~ReleaseSignal() {
    if (freed && freed.use_count() == 2) freed->count_down();  // last copy besides the test's
  }
  void operator()(std::exception_ptr) const {}
};

}  // namespace

TEST_CASE("a task may destroy the pool that runs it", "[worker_pool][shutdown]") {
  const int mode = GENERATE(0, 1, 2);
  Probe probe;
  auto freed = std::make_shared<std::latch>(1);
  std::atomic<int> after{0};
  {
    herald::WorkerPoolOptions options;
    options.on_error = ReleaseSignal{freed};
    Gate gate;
    auto pool = std::make_unique<WorkerPool>(2, 64, std::move(options));
    WorkerPool* raw = pool.get();
    std::latch destroyed{1};
    switch (mode) {
      case 0:  // the pool lives outside; a task resets the owner
        REQUIRE(raw->submit_keyed(3, [&pool, &gate, &destroyed] {
          gate.wait();
          pool.reset();
          destroyed.count_down();
        }));
        break;
      case 1:  // the task owns the pool and resets it while running
        REQUIRE(raw->submit_keyed(3, [p = std::move(pool), &gate, &destroyed]() mutable {
          gate.wait();
          p.reset();
          destroyed.count_down();
        }));
        break;
      default:  // the task owns the pool; destroying the task (after it ran) destroys the pool
        struct Owner {
          std::unique_ptr<WorkerPool> p;
          Gate* gate;
          std::latch* destroyed;
          Owner(std::unique_ptr<WorkerPool> pp, Gate* g, std::latch* d)
              : p(std::move(pp)), gate(g), destroyed(d) {}
          Owner(Owner&&) noexcept = default;
          ~Owner() {
            if (p) {
              p.reset();
              destroyed->count_down();
            }
          }
          void operator()() { gate->wait(); }
        };
        REQUIRE(raw->submit_keyed(3, Owner{std::move(pool), &gate, &destroyed}));
    }
    // Accepted before the destruction: must still run, on the destroying worker (after it) or on
    // the other one.
    for (int i = 0; i < 10; ++i) {
      REQUIRE(raw->submit_keyed(3, SmallTask{probe}));
      REQUIRE(raw->submit(SmallTask{probe}));
      REQUIRE(raw->submit_keyed(i, [&after] { ++after; }));
    }
    gate.open();
    destroyed.wait();
  }
  freed->wait();  // the last worker released the state: nothing leaked
  CHECK(probe.calls == 20);
  CHECK(probe.live == 0);
  CHECK(after == 10);
}

TEST_CASE("destroying a pool with queued tasks runs them first", "[worker_pool][shutdown]") {
  Probe probe;
  {
    WorkerPool pool(2, 256);
    for (int i = 0; i < 200; ++i) {
      REQUIRE(pool.submit(SmallTask{probe}));
      REQUIRE(pool.submit(LargeTask{probe}));
      REQUIRE(pool.submit_keyed(i, SmallTask{probe}));
    }
  }
  CHECK(probe.calls == 600);
  CHECK(probe.live == 0);
}

TEST_CASE("task objects are destroyed exactly once on every path", "[worker_pool]") {
  Probe probe;
  {
    Gate gate;
    WorkerPool pool(2, 2);
    OpenOnExit open_on_exit{gate};
    hold_workers(pool, gate, 2);
    int accepted = 0;
    for (int i = 0; i < 10; ++i)
      accepted += pool.try_submit(LargeTask{probe}) ? 1 : 0;  // some fail
    CHECK(accepted == 4);                                     // two plain queues of two
    std::stop_source stop;
    stop.request_stop();
    CHECK_FALSE(pool.submit(SmallTask{probe}, stop.get_token()));
    gate.open();
    auto f = pool.async([t = LargeTask{probe}]() mutable {
      t();
      return 1;
    });
    CHECK(f.get() == 1);
    pool.shutdown();
    CHECK_FALSE(pool.submit(SmallTask{probe}));
    CHECK(probe.calls == 5);
  }
  CHECK(probe.live == 0);
}

// ---------------------------------------------------------------------------------------------
// Priority lanes.

namespace {

using herald::Priority;

/// One dispatch as the single worker of a pool saw it: the task's lane and its number there.
struct Dispatch {
  Priority lane;
  int seq;
};

/// Submits `counts[lane]` tasks per lane (in the order `order` gives) to a one-worker pool whose
/// worker is held at a gate meanwhile, then lets it run them all; returns the dispatch order.
std::vector<Dispatch> run_gated(std::uint32_t max_bypass, const std::vector<Priority>& order) {
  std::vector<Dispatch> seen;  // written by the one worker only; read after shutdown joined it
  Gate gate;
  WorkerPool pool(1, 256, {.max_bypass = max_bypass});
  OpenOnExit open_on_exit{gate};
  hold_workers(pool, gate);
  std::array<int, herald::priority_levels> next{};
  for (const Priority p : order) {
    const int seq = next[static_cast<std::size_t>(p)]++;
    REQUIRE(pool.submit([&seen, p, seq] { seen.push_back({p, seq}); }, p));
  }
  gate.open();
  pool.shutdown();
  return seen;
}

std::vector<Priority> repeated(Priority p, std::size_t n) {
  return std::vector<Priority>(n, p);
}

std::vector<Priority> operator+(std::vector<Priority> a, const std::vector<Priority>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("with aging out of reach, one worker runs high, then normal, then low, each in order",
          "[worker_pool][priority]") {
  const auto seen = run_gated(1000, repeated(Priority::low, 5) + repeated(Priority::normal, 5) +
                                        repeated(Priority::high, 5));
  REQUIRE(seen.size() == 15);
  for (std::size_t i = 0; i < seen.size(); ++i) {
    const auto lane = static_cast<Priority>(i / 5);
    INFO("dispatch " << i);
    CHECK(seen[i].lane == lane);
    CHECK(seen[i].seq == static_cast<int>(i % 5));
  }
}

TEST_CASE("a waiting lower-priority task sees at most max_bypass higher dispatches, and no fewer",
          "[worker_pool][priority][aging]") {
  for (const std::uint32_t bypass : {1u, 3u, 7u}) {
    // A flood of high tasks, with normal and low work waiting behind it from the start.
    std::vector<Priority> order =
        repeated(Priority::high, 60) + repeated(Priority::normal, 12) + repeated(Priority::low, 6);
    const auto seen = run_gated(bypass, order);
    REQUIRE(seen.size() == order.size());
    std::array<int, herald::priority_levels> left{60, 12, 6};
    std::array<int, herald::priority_levels> expected_seq{};
    // For each lower lane: higher dispatches since it last ran, while it had work waiting.
    std::array<std::uint32_t, herald::priority_levels> bypassed{};
    std::array<std::uint32_t, herald::priority_levels> worst{};
    for (std::size_t i = 0; i < seen.size(); ++i) {
      const auto lane = static_cast<std::size_t>(seen[i].lane);
      INFO("max_bypass " << bypass << ", dispatch " << i << ", lane " << lane);
      CHECK(seen[i].seq == expected_seq[lane]++);  // FIFO within a lane
      for (std::size_t lower = lane + 1; lower < herald::priority_levels; ++lower) {
        if (left[lower] == 0) continue;
        worst[lower] = std::max(worst[lower], ++bypassed[lower]);
      }
      bypassed[lane] = 0;
      --left[lane];
    }
    INFO("max_bypass " << bypass);
    CHECK(worst[1] == bypass);  // the bound holds, and is what lets the normal lane through
    CHECK(worst[2] == bypass);
    // Priority still means something: the first max_bypass dispatches are all high.
    for (std::size_t i = 0; i < bypass; ++i)
      CHECK(seen[i].lane == Priority::high);
  }
}

TEST_CASE("a flood of normal tasks cannot starve the low lane either", "[worker_pool][priority]") {
  const auto seen = run_gated(4, repeated(Priority::normal, 40) + repeated(Priority::low, 3));
  REQUIRE(seen.size() == 43);
  std::vector<std::size_t> low_at;
  for (std::size_t i = 0; i < seen.size(); ++i)
    if (seen[i].lane == Priority::low) low_at.push_back(i);
  CHECK(low_at == std::vector<std::size_t>{4, 9, 14});
}

TEST_CASE("a low task runs while several workers are flooded with high ones",
          "[worker_pool][priority]") {
  std::atomic<bool> low_ran{false};
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> high_ran{0};
  // After what its tasks touch: the pool's destructor runs the high tasks still queued.
  WorkerPool pool(2, 64, {.max_bypass = 8});
  // Two submitters keep the high lane non-empty until the low task has run (or 10 s passed).
  std::vector<std::jthread> flooders;
  for (int f = 0; f < 2; ++f) {
    flooders.emplace_back([&] {
      while (!stop.load() && !low_ran.load()) {
        pool.try_submit([&] { high_ran.fetch_add(1); }, Priority::high);
      }
    });
  }
  while (high_ran.load() < 1000)
    std::this_thread::yield();
  REQUIRE(pool.submit([&] { low_ran.store(true); }, Priority::low));
  const bool ran =
      herald_test::eventually([&] { return low_ran.load(); }, std::chrono::seconds(10));
  stop.store(true);
  flooders.clear();
  CHECK(ran);
}

TEST_CASE("shutdown runs every accepted task of every lane", "[worker_pool][priority][shutdown]") {
  constexpr int per_lane = 300;
  std::vector<std::atomic<int>> runs(herald::priority_levels * per_lane);
  std::vector<std::atomic<bool>> accepted(runs.size());
  Gate gate;
  {
    WorkerPool pool(2, 8);
    OpenOnExit open_on_exit{gate};
    hold_workers(pool, gate, 2);
    // Each lane's first 8 submissions fit without waiting; the shutdown begins after them, while
    // the rest wait for room.
    std::latch filled{herald::priority_levels};
    std::vector<std::thread> threads;
    for (std::size_t lane = 0; lane < herald::priority_levels; ++lane) {
      threads.emplace_back([&, lane] {
        for (int i = 0; i < per_lane; ++i) {
          const std::size_t id = lane * per_lane + static_cast<std::size_t>(i);
          accepted[id] = pool.submit([&runs, id] { ++runs[id]; }, static_cast<Priority>(lane));
          if (i == 7) filled.count_down();
        }
      });
    }
    std::thread closer([&] {
      filled.wait();
      pool.shutdown();
    });
    while (!pool.is_shut_down())
      std::this_thread::yield();
    gate.open();  // the lanes and queues are full and the workers stuck until now
    closer.join();
    for (auto& t : threads)
      t.join();
    CHECK_FALSE(pool.submit([] {}, Priority::high));
    CHECK_FALSE(pool.try_submit([] {}, Priority::low));

    std::uint64_t n_accepted = 0;
    for (std::size_t id = 0; id < runs.size(); ++id) {
      if (accepted[id]) ++n_accepted;
      if (runs[id] != (accepted[id] ? 1 : 0)) FAIL("task " << id << " ran " << runs[id] << "x");
    }
    const auto s = pool.stats();
    CHECK(n_accepted >= 3 * 8);  // what got in before the shutdown, at least
    CHECK(s.submitted == n_accepted + 2);
    CHECK(s.completed == s.submitted);
    CHECK(s.queued == 0);
  }
}

TEST_CASE("try_submit by priority fails when the lane is full, and a stop cancels a blocked submit",
          "[worker_pool][priority]") {
  Gate gate;
  WorkerPool pool(1, 2);
  OpenOnExit open_on_exit{gate};
  hold_workers(pool, gate);
  REQUIRE(pool.try_submit([] {}, Priority::high));
  REQUIRE(pool.try_submit([] {}, Priority::high));
  CHECK_FALSE(pool.try_submit([] {}, Priority::high));  // the lane holds 2
  CHECK(pool.try_submit([] {}, Priority::low));         // the other lane has room
  std::stop_source stop;
  BlockedProbe probe;
  std::atomic<int> result{-1};
  std::thread submitter([&] {
    probe.arrive();
    result = pool.submit([] {}, Priority::high, stop.get_token()) ? 1 : 0;
  });
  CHECK(probe.wait_until_blocked());
  stop.request_stop();
  submitter.join();
  CHECK(result == 0);
  CHECK_THROWS_AS(pool.submit([] {}, static_cast<Priority>(7)), std::invalid_argument);
  gate.open();
}
