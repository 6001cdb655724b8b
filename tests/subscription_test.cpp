// Handler (push) subscriptions: executors, strand order and exclusivity, quiescent unsubscribe,
// failures, retries with backoff, dead letters, handler durations.
#include <herald/broker.hpp>
#include <herald/circuit_breaker.hpp>
#include <herald/worker_pool.hpp>

#include <atomic>
#include <chrono>
#include <future>
#include <latch>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::CloseReason;
using herald::Message;
using herald::Overflow;
using herald_test::BlockedProbe;
using herald_test::eventually;
using herald_test::Gate;
using herald_test::Item;
using herald_test::OpenOnExit;

namespace {

/// Records order and overlap of invocations.
struct StrandProbe {
  std::atomic<int> inside{0};
  std::atomic<bool> overlapped{false};
  std::atomic<bool> out_of_order{false};
  std::atomic<std::uint64_t> count{0};
  std::vector<std::uint64_t> last = std::vector<std::uint64_t>(8, 0);
  void operator()(std::uint32_t publisher, std::uint64_t seq) {
    if (inside.fetch_add(1) != 0) overlapped = true;
    // Safe without a lock only because invocations never overlap: TSan checks that claim too.
    if (seq <= last[publisher]) out_of_order = true;
    last[publisher] = seq;
    std::this_thread::yield();
    inside.fetch_sub(1);
    ++count;
  }
};

}  // namespace

TEST_CASE("inline_executor runs the handler inside publish, in the publisher's thread",
          "[handler]") {
  Broker<int> broker;
  std::thread::id ran_on;
  int sum = 0;
  auto h = broker.subscribe(
      "t",
      [&](const Message<int>& m) {
        ran_on = std::this_thread::get_id();
        sum += *m;
      },
      herald::inline_executor);
  CHECK(broker.publish("t", 2).delivered == 1);
  CHECK(sum == 2);  // already ran when publish returned
  CHECK(ran_on == std::this_thread::get_id());
  broker.publish("t", 3);
  CHECK(sum == 5);
  const auto s = h.stats();
  CHECK(s.invocations == 2);
  CHECK(s.received == 2);
  CHECK(s.queue_depth == 0);
  CHECK(h.pattern() == "t");
}

TEST_CASE("handlers on a pool or a dedicated thread run one at a time, in publish order",
          "[handler][strand]") {
  herald::WorkerPool pool(2, 256);
  Broker<Item> broker;
  StrandProbe on_pool;
  StrandProbe on_thread;
  StrandProbe on_inline;
  std::thread::id publisher_id;
  std::atomic<bool> thread_was_publisher{false};
  auto a = broker.subscribe("s.*", [&](const Message<Item>& m) { on_pool(m->publisher, m->seq); },
                            pool, {.capacity = 64, .overflow = Overflow::block});
  auto b =
      broker.subscribe("s.*",
                       [&](const Message<Item>& m) {
                         if (std::this_thread::get_id() == publisher_id)
                           thread_was_publisher = true;
                         on_thread(m->publisher, m->seq);
                       },
                       herald::dedicated_thread, {.capacity = 64, .overflow = Overflow::block});
  // Inline: a publisher that finds the strand busy leaves its message in the queue for the
  // publisher running the handler. That drainer is slower than two enqueuers (the probe yields),
  // so without `block` the default drop_incoming would (correctly) drop some.
  auto c = broker.subscribe("s.*", [&](const Message<Item>& m) { on_inline(m->publisher, m->seq); },
                            herald::inline_executor, {.capacity = 64, .overflow = Overflow::block});
  const std::uint64_t n = static_cast<std::uint64_t>(herald_test::scaled(5000));
  {
    std::vector<std::jthread> publishers;
    for (std::uint32_t p = 0; p < 3; ++p) {
      publishers.emplace_back([&, p] {
        auto pub = broker.publisher("s.p" + std::to_string(p));
        for (std::uint64_t i = 1; i <= n; ++i)
          pub.publish(Item{p, i});
      });
    }
  }
  CHECK(eventually([&] { return on_pool.count == 3 * n && on_thread.count == 3 * n; }));
  CHECK(on_inline.count == 3 * n);
  CHECK(c.stats().dropped == 0);
  for (auto* probe : {&on_pool, &on_thread, &on_inline}) {
    CHECK_FALSE(probe->overlapped);
    CHECK_FALSE(probe->out_of_order);
  }
  CHECK_FALSE(thread_was_publisher);
}

TEST_CASE("unsubscribe is quiescent: no invocation runs or starts after it returns",
          "[handler][quiescent]") {
  const int kind = GENERATE(0, 1, 2);
  INFO("executor " << (kind == 0 ? "pool" : kind == 1 ? "dedicated_thread" : "inline"));
  Broker<int> broker;
  const int rounds = herald_test::scaled(kind == 1 ? 300 : 1500);
  int violations = 0;
  for (int r = 0; r < rounds; ++r) {
    // A pool per round: shutting it down runs whatever was posted to it, so an invocation that
    // would start late has started before the round looks at `late`.
    std::optional<herald::WorkerPool> pool;
    if (kind == 0) pool.emplace(2, 64);
    std::atomic<bool> unsubscribed{false};
    std::atomic<bool> late{false};
    std::atomic<int> running{0};
    std::atomic<int> calls{0};
    std::atomic<int> published{0};
    auto handler = [&](const Message<int>&) {
      ++running;
      if (unsubscribed.load()) late = true;  // started after unsubscribe returned
      ++calls;
      // Deliberately slow every third round, so that unsubscribe meets a running invocation.
      std::this_thread::sleep_for(std::chrono::microseconds(r % 3 == 0 ? 200 : 0));
      if (unsubscribed.load()) late = true;  // still running after unsubscribe returned
      --running;
    };
    auto h = kind == 0   ? broker.subscribe("q", handler, *pool)
             : kind == 1 ? broker.subscribe("q", handler, herald::dedicated_thread)
                         : broker.subscribe("q", handler, herald::inline_executor);
    std::jthread publisher([&](std::stop_token st) {
      while (!st.stop_requested()) {
        broker.publish("q", 1);
        ++published;
      }
    });
    while (calls.load() < 1 + r % 4)
      std::this_thread::yield();
    h.unsubscribe();
    unsubscribed = true;
    if (running.load() != 0) ++violations;
    // The publisher goes on after unsubscribe returned: two whole publishes more.
    const int before = published.load();
    while (published.load() < before + 2)
      std::this_thread::yield();
    publisher.request_stop();
    publisher.join();
    // Nothing more can run: the inline handler runs inside publish, unsubscribe joined the
    // dedicated thread, and shutdown runs what the pool had.
    if (pool) pool->shutdown();
    if (late.load()) ++violations;
  }
  CHECK(violations == 0);
}

TEST_CASE("unsubscribe from inside the handler returns at once and stops further calls",
          "[handler][quiescent]") {
  herald::WorkerPool pool(2, 64);
  const int kind = GENERATE(0, 1, 2);
  INFO("executor " << (kind == 0 ? "pool" : kind == 1 ? "dedicated_thread" : "inline"));
  Broker<int> broker;
  std::atomic<int> calls{0};
  std::atomic<pid_t> handler_thread{0};
  herald::HandlerSubscription<int> h;
  std::atomic<bool> ready{false};
  auto handler = [&](const Message<int>&) {
    handler_thread = herald_test::current_tid();
    while (!ready.load())
      std::this_thread::yield();
    if (++calls == 3) h.unsubscribe();  // must not deadlock waiting for itself
  };
  h = kind == 0   ? broker.subscribe("q", handler, pool, {.capacity = 64})
      : kind == 1 ? broker.subscribe("q", handler, herald::dedicated_thread, {.capacity = 64})
                  : broker.subscribe("q", handler, herald::inline_executor, {.capacity = 64});
  ready = true;
  for (int i = 0; i < 10; ++i)
    broker.publish("q", i);
  // The third call unsubscribes: wait for that, not just for the call, before shutting the pool
  // down (a pool's shutdown closes its subscriptions with executor_stopped; the first reason
  // wins).
  CHECK(eventually([&] { return h.close_reason() != CloseReason::open; }));
  // Count once no further call can start: inline calls ran inside publish; the pool runs what
  // was posted to it before shutdown returns; the dedicated thread ends with the unsubscribe.
  if (kind == 0) pool.shutdown();
  if (kind == 1) CHECK(herald_test::wait_until_exited(handler_thread.load()));
  CHECK(calls.load() == 3);
  CHECK(h.close_reason() == CloseReason::unsubscribed);
}

TEST_CASE("a stop request's callback is quiescent too", "[handler][quiescent][stop]") {
  herald::WorkerPool pool(2, 64);
  Broker<int> broker;
  std::stop_source stop;
  std::atomic<bool> stopped{false};
  std::atomic<bool> late{false};
  std::atomic<int> calls{0};
  auto h = broker.subscribe(
      "q",
      [&](const Message<int>&) {
        ++calls;
        std::this_thread::sleep_for(1ms);  // a slow handler: the stop meets one running
        if (stopped.load()) late = true;
      },
      pool, {}, stop.get_token());
  std::jthread publisher([&](std::stop_token st) {
    while (!st.stop_requested())
      broker.publish("q", 1);
  });
  while (calls.load() < 3)
    std::this_thread::yield();
  stop.request_stop();  // runs the callback: returns once no handler runs
  stopped = true;
  publisher.request_stop();
  publisher.join();
  CHECK(h.close_reason() == CloseReason::stopped);

  std::stop_source already;
  already.request_stop();
  std::atomic<int> never{0};
  auto dead = broker.subscribe(
      "q", [&](const Message<int>&) { ++never; }, pool, {}, already.get_token());
  broker.publish("q", 1);
  pool.shutdown();  // runs whatever was posted: a late or unwanted call has happened by now
  CHECK_FALSE(late.load());
  CHECK(never == 0);
}

TEST_CASE("a throwing handler is counted and reported; the pool thread lives on",
          "[handler][failure]") {
  herald::WorkerPool pool(1, 64);
  Broker<int> broker;
  std::atomic<int> reported{0};
  std::atomic<int> ok{0};
  herald::HandlerOptions<int> ho;
  ho.on_error = [&](const Message<int>& m, std::exception_ptr e) {
    try {
      std::rethrow_exception(e);
    } catch (const std::runtime_error& err) {
      if (std::string(err.what()) == "odd " + std::to_string(*m)) ++reported;
    }
  };
  auto h = broker.subscribe(
      "t",
      [&](const Message<int>& m) {
        if (*m % 2) throw std::runtime_error("odd " + std::to_string(*m));
        ++ok;
      },
      pool, {}, ho);
  for (int i = 0; i < 10; ++i)
    broker.publish("t", i);
  // on_error runs after the failed call is counted: wait for the callbacks themselves.
  CHECK(eventually([&] { return reported.load() == 5 && ok.load() == 5; }));
  CHECK(h.stats().invocations == 10);
  CHECK(h.stats().failures == 5);
  CHECK(pool.async([] { return 7; }).get() == 7);  // the worker survived
}

TEST_CASE("retries back off with decorrelated jitter, then succeed", "[handler][failure]") {
  Broker<int> broker;
  std::mutex mu;
  std::vector<std::chrono::nanoseconds> sleeps;
  herald::HandlerOptions<int> ho;
  ho.retry = {.max_attempts = 4, .initial_backoff = 10ms, .max_backoff = 25ms};
  ho.sleep = [&](std::chrono::nanoseconds d) {
    std::lock_guard lock(mu);
    sleeps.push_back(d);
  };
  int attempts = 0;
  auto h = broker.subscribe(
      "t",
      [&](const Message<int>&) {
        if (++attempts < 4) throw std::runtime_error("not yet");
      },
      herald::inline_executor, {}, ho);
  broker.publish("t", 1);
  CHECK(attempts == 4);
  const auto s = h.stats();
  CHECK(s.failures == 3);
  CHECK(s.retries == 3);
  CHECK(s.invocations == 4);
  CHECK(s.dead_lettered == 0);
  REQUIRE(sleeps.size() == 3);
  for (auto d : sleeps) {
    CHECK(d >= 10ms);
    CHECK(d <= 25ms);
  }
}

TEST_CASE("messages that exhaust their retries go to the dead-letter topic, and only they",
          "[handler][failure][dlq]") {
  herald::WorkerPool pool(2, 64);
  Broker<int> broker;
  Broker<herald::DeadLetter<int>> dead;
  auto dlq = dead.subscribe("$DLQ.>", {.capacity = 256});
  herald::HandlerOptions<int> ho;
  ho.retry = {.max_attempts = 2, .initial_backoff = 1us, .max_backoff = 10us};
  ho.dead_letters = &dead;
  std::atomic<int> handled{0};
  auto h = broker.subscribe(
      "orders.*",
      [&](const Message<int>& m) {
        ++handled;
        if (*m % 3 == 0) throw std::invalid_argument("bad order " + std::to_string(*m));
      },
      pool, {.capacity = 256}, ho);
  for (int i = 1; i <= 30; ++i)
    broker.publish(i % 2 ? "orders.eu" : "orders.us", i);
  CHECK(eventually([&] { return h.stats().received == 30 && dlq.stats().delivered == 10; }));
  std::vector<int> dead_values;
  while (auto m = dlq.try_receive()) {
    const herald::DeadLetter<int>& d = **m;
    dead_values.push_back(*d.message);
    CHECK(m->topic() == "$DLQ." + d.message.topic());
    CHECK(d.error == "bad order " + std::to_string(*d.message));
    CHECK(d.attempts == 2);
    CHECK(d.pattern == "orders.*");
  }
  CHECK(dead_values == std::vector<int>{3, 6, 9, 12, 15, 18, 21, 24, 27, 30});
  CHECK(h.stats().dead_lettered == 10);
  CHECK(handled == 40);  // 20 good + 10 bad twice
}

TEST_CASE("handler durations are counted per subscription", "[handler][stats]") {
  Broker<int> broker;
  auto h = broker.subscribe(
      "t",
      [](const Message<int>& m) {
        std::this_thread::sleep_for(std::chrono::milliseconds(*m));  // the duration measured
      },
      herald::inline_executor);
  broker.publish("t", 1);
  broker.publish("t", 3);
  const auto s = h.stats();
  CHECK(s.invocations == 2);
  CHECK(s.handler_time_max >= 3ms);
  CHECK(s.handler_time_total >= 4ms);
  CHECK(s.handler_time_total >= s.handler_time_max);
}

TEST_CASE("a slow handler only fills its own queue; its overflow policy applies",
          "[handler][policy]") {
  herald::WorkerPool pool(2, 64);
  Broker<int> broker;
  Gate release;
  auto slow = broker.subscribe("t", [&](const Message<int>&) { release.wait(); }, pool,
                               {.capacity = 4, .overflow = Overflow::drop_incoming});
  OpenOnExit open_on_exit{release};  // after `slow`, whose unsubscribe waits for the handler
  std::atomic<int> fast_count{0};
  auto fast =
      broker.subscribe("t", [&](const Message<int>&) { ++fast_count; }, pool, {.capacity = 256});
  for (int i = 0; i < 100; ++i)
    broker.publish("t", i);  // never blocks
  CHECK(eventually([&] { return fast_count.load() == 100; }));
  release.open();
  CHECK(eventually([&] {
    const auto s = slow.stats();
    return s.received == s.delivered;
  }));
  const auto s = slow.stats();
  CHECK(s.offered == 100);
  CHECK(s.delivered + s.dropped == 100);
  CHECK(s.dropped >= 90);
}

TEST_CASE("closing the broker lets handlers finish what was queued", "[handler][lifetime]") {
  herald::WorkerPool pool(1, 64);
  std::atomic<int> seen{0};
  herald::HandlerSubscription<int> h;
  {
    Broker<int> broker;
    std::atomic<bool> go{false};
    h = broker.subscribe("t",
                         [&](const Message<int>&) {
                           while (!go.load())
                             std::this_thread::yield();
                           ++seen;
                         },
                         pool, {.capacity = 64});
    for (int i = 0; i < 20; ++i)
      broker.publish("t", i);
    broker.close();
    go = true;
    CHECK(eventually([&] { return seen.load() == 20; }));
  }
  CHECK(h.close_reason() == CloseReason::broker_closed);
  h.unsubscribe();
  CHECK(seen == 20);
}

TEST_CASE("wait_idle after close: every accepted message is handled first", "[handler][idle]") {
  herald::WorkerPool pool(2, 64);
  const int kind = GENERATE(0, 1, 2);
  INFO("executor " << (kind == 0 ? "pool" : kind == 1 ? "dedicated_thread" : "inline"));
  Broker<int> broker;
  std::atomic<int> handled{0};
  auto handler = [&](const Message<int>&) {
    std::this_thread::sleep_for(20us);  // a slow handler: close finds messages still queued
    ++handled;
  };
  const herald::SubscribeOptions block{.capacity = 64, .overflow = Overflow::block};
  auto h = kind == 0   ? broker.subscribe("q", handler, pool, block)
           : kind == 1 ? broker.subscribe("q", handler, herald::dedicated_thread, block)
                       : broker.subscribe("q", handler, herald::inline_executor, block);
  const int n = herald_test::scaled(500);
  for (int i = 0; i < n; ++i)
    broker.publish("q", i);
  broker.close();
  CHECK(h.wait_idle(10s));
  CHECK(handled.load() == n);
  CHECK(h.stats().invocations == static_cast<std::uint64_t>(n));
  CHECK(h.wait_idle(0s));  // nothing new: idle at once
}

TEST_CASE("wait_idle times out while the handler is busy, and succeeds once it is done",
          "[handler][idle]") {
  herald::WorkerPool pool(2, 64);
  Broker<int> broker;
  Gate gate;
  std::atomic<int> handled{0};
  auto h = broker.subscribe(
      "q",
      [&](const Message<int>&) {
        gate.wait();
        ++handled;
      },
      pool);
  OpenOnExit open_on_exit{gate};  // after `h`, whose unsubscribe waits for the handler
  for (int i = 0; i < 3; ++i)
    broker.publish("q", i);
  CHECK_FALSE(h.wait_idle(20ms));
  // The gate opens once this thread is parked in the wait_idle below.
  BlockedProbe waiting;
  std::jthread opener([&] {
    waiting.wait_until_blocked();
    gate.open();
  });
  waiting.arrive();
  CHECK(h.wait_idle(10s));  // woken by the last message finishing, not by the timeout
  CHECK(handled.load() == 3);
}

TEST_CASE("wait_idle returns false when unsubscribed with messages left, and inside the handler",
          "[handler][idle]") {
  Broker<int> broker;
  Gate gate;
  std::atomic<bool> entered{false};
  std::atomic<bool> inside_result{true};
  herald::HandlerSubscription<int> h;
  OpenOnExit open_on_exit{gate};  // after `h`, whose unsubscribe waits for the handler
  h = broker.subscribe(
      "q",
      [&](const Message<int>& m) {
        if (*m == 0) {
          inside_result = h.wait_idle(1s);  // must not wait for itself
          entered = true;
        }
        gate.wait();
      },
      herald::dedicated_thread);
  for (int i = 0; i < 5; ++i)
    broker.publish("q", i);
  // Unsubscribing before the first invocation starts would skip it (correctly): wait for it.
  REQUIRE(eventually([&] { return entered.load(); }));
  std::atomic<bool> waited{true};
  std::latch answered{1};
  std::jthread waiter([&] {
    waited = h.wait_idle(std::chrono::hours(1));
    answered.count_down();
  });
  // The gate opens only once the waiter has its answer: unsubscribe cancels first (which must
  // wake the waiter), then waits for the invocation blocked on the gate. No timing involved.
  std::jthread opener([&] {
    answered.wait();
    gate.open();
  });
  h.unsubscribe();  // 4 messages stay unhandled
  waiter.join();
  CHECK_FALSE(waited.load());
  CHECK_FALSE(inside_result.load());
  CHECK_FALSE(herald::HandlerSubscription<int>{}.wait_idle(0s));
}

TEST_CASE("a handler subscription's strand runs in the pool lane of its priority",
          "[handler][priority]") {
  herald::WorkerPool pool(1, 64, {.max_bypass = 100});
  Broker<int> broker;
  std::vector<std::string> order;  // the one worker appends; read after wait_idle
  const auto record = [&order](const Message<int>& m) { order.emplace_back(m.topic()); };
  auto low = broker.subscribe("low", record, pool, {.priority = herald::Priority::low});
  auto normal = broker.subscribe("normal", record, pool, {});
  auto high = broker.subscribe("high", record, pool, {.priority = herald::Priority::high});
  Gate gate;
  OpenOnExit open_on_exit{gate};
  herald_test::hold_workers(pool, gate);
  for (const char* topic : {"low", "normal", "high"})
    REQUIRE(broker.publish(topic, 1).delivered == 1);
  gate.open();
  for (auto* h : {&low, &normal, &high})
    REQUIRE(h->wait_idle(10s));
  CHECK(order == std::vector<std::string>{"high", "normal", "low"});
}

namespace {

/// An executor with lanes of its own: records the priority it is asked for, runs the task.
struct LaneRecorder {
  std::mutex mutex;
  std::vector<herald::Priority> seen;
  bool execute(herald::Task&& task) { return execute(std::move(task), herald::Priority::normal); }
  bool execute(herald::Task&& task, herald::Priority p) {
    {
      const std::lock_guard lock(mutex);
      seen.push_back(p);
    }
    task();
    return true;
  }
};

}  // namespace

TEST_CASE("executors with lanes get the subscription's priority; the others ignore it",
          "[handler][priority]") {
  Broker<int> broker;
  LaneRecorder lanes;
  std::atomic<int> calls{0};
  const auto count = [&calls](const Message<int>&) { ++calls; };
  {
    auto a = broker.subscribe("t", count, lanes, {.priority = herald::Priority::low});
    auto b = broker.subscribe("t", count, herald::dedicated_thread,
                              {.priority = herald::Priority::high});
    auto c =
        broker.subscribe("t", count, herald::inline_executor, {.priority = herald::Priority::high});
    REQUIRE(broker.publish("t", 1).delivered == 3);
    REQUIRE(b.wait_idle(10s));
  }
  CHECK(calls == 3);
  const std::lock_guard lock(lanes.mutex);
  CHECK(lanes.seen == std::vector<herald::Priority>{herald::Priority::low});
}

// ---------------------------------------------------------------------------------------------
// HandlerOptions::breaker and HandlerOptions::dedup.

namespace {

/// A clock the test moves by hand, and a sleep hook that moves it instead of sleeping: the
/// strand's waits for the breaker become deterministic.
struct ManualTime {
  std::atomic<std::int64_t> now_ns{0};
  std::vector<std::chrono::nanoseconds> slept;  // inline executor: the publisher's thread only

  std::function<herald::CircuitBreaker::Clock::time_point()> clock() {
    return [this] {
      return herald::CircuitBreaker::Clock::time_point(std::chrono::nanoseconds(now_ns.load()));
    };
  }
  std::function<void(std::chrono::nanoseconds)> sleep() {
    return [this](std::chrono::nanoseconds d) {
      slept.push_back(d);
      now_ns += d.count();
    };
  }
};

/// Collects dead letters (inline executor: the publisher's thread only).
struct Letters {
  std::vector<herald::DeadLetter<int>> got;
  herald::DeadLetterSink<int> sink() {
    return [this](herald::DeadLetter<int>&& d) {
      got.push_back(std::move(d));
      return true;
    };
  }
};

/// A dependency that is down until told otherwise.
struct Dependency {
  bool down = true;
  std::vector<int> served;
  void call(int v) {
    if (down) throw std::runtime_error("dependency down");
    served.push_back(v);
  }
};

}  // namespace

TEST_CASE(
    "WhenOpen::wait: while the breaker is open the handler is not called; the message "
    "waits for the cooldown and then goes through as the probe",
    "[handler][breaker]") {
  ManualTime time;
  auto breaker = std::make_shared<herald::CircuitBreaker>(herald::CircuitBreakerOptions{
      .consecutive_failures = 3, .cooldown = 1s, .clock = time.clock()});
  const std::weak_ptr<herald::CircuitBreaker> alive = breaker;
  Dependency dep;
  int calls = 0;
  Broker<int> broker;
  std::optional<herald::HandlerSubscription<int>> handle;
  auto& h = handle.emplace(broker.subscribe(
      "t",
      [&](const Message<int>& m) {
        ++calls;
        dep.call(*m);
      },
      herald::inline_executor, {},
      herald::HandlerOptions<int>{.sleep = time.sleep(), .breaker = breaker}));
  breaker.reset();  // the subscription shares ownership: the breaker lives on
  REQUIRE_FALSE(alive.expired());
  for (int i = 1; i <= 3; ++i)
    broker.publish("t", i);  // three failures in a row: the breaker opens
  CHECK(alive.lock()->state() == herald::CircuitState::open);
  CHECK(calls == 3);
  dep.down = false;
  time.now_ns += std::chrono::nanoseconds(400ms).count();
  broker.publish("t", 4);  // refused; waits the 600 ms left, then is the half-open probe
  CHECK(time.slept == std::vector<std::chrono::nanoseconds>{600ms});
  CHECK(calls == 4);
  CHECK(dep.served == std::vector<int>{4});
  CHECK(alive.lock()->state() == herald::CircuitState::closed);
  const auto s = h.stats();
  CHECK(s.breaker_refused == 1);
  CHECK(s.breaker_dead_lettered == 0);
  CHECK(s.failures == 3);
  CHECK(s.invocations == 4);
  handle.reset();
  CHECK(alive.expired());  // the subscription let go of its share with its last handle
}

TEST_CASE("WhenOpen::dead_letter: refused messages go to the dead-letter sink at once, counted",
          "[handler][breaker]") {
  ManualTime time;
  auto breaker = std::make_shared<herald::CircuitBreaker>(herald::CircuitBreakerOptions{
      .consecutive_failures = 2, .cooldown = 1s, .clock = time.clock()});
  Dependency dep;
  Letters box;
  auto& letters = box.got;
  Broker<int> broker;
  auto h = broker.subscribe(
      "t", [&](const Message<int>& m) { dep.call(*m); }, herald::inline_executor, {},
      herald::HandlerOptions<int>{.dead_letters = box.sink(),
                                  .sleep = time.sleep(),
                                  .breaker = breaker,
                                  .when_open = herald::WhenOpen::dead_letter});
  for (int i = 1; i <= 4; ++i)
    broker.publish("t", i);  // 1 and 2 fail and open the breaker; 3 and 4 are refused
  REQUIRE(letters.size() == 4);
  CHECK(letters[0].attempts == 1);
  CHECK(letters[0].error == "dependency down");
  for (const std::size_t i : {2u, 3u}) {
    CHECK(*letters[i].message == static_cast<int>(i) + 1);
    CHECK(letters[i].attempts == 0);  // never called
    CHECK(letters[i].error.find("circuit breaker") != std::string::npos);
  }
  CHECK(time.slept.empty());
  dep.down = false;
  time.now_ns += std::chrono::nanoseconds(1s).count();
  broker.publish("t", 5);  // the cooldown is over: 5 is the probe, and closes the breaker
  CHECK(dep.served == std::vector<int>{5});
  const auto s = h.stats();
  CHECK(s.breaker_refused == 2);
  CHECK(s.breaker_dead_lettered == 2);
  CHECK(s.dead_lettered == 4);
  CHECK(s.invocations == 3);
  CHECK(breaker->state() == herald::CircuitState::closed);
}

TEST_CASE("every attempt asks the breaker: retries stop once it opens", "[handler][breaker]") {
  ManualTime time;
  auto breaker = std::make_shared<herald::CircuitBreaker>(herald::CircuitBreakerOptions{
      .consecutive_failures = 2, .cooldown = 1h, .clock = time.clock()});
  Letters box;
  auto& letters = box.got;
  Broker<int> broker;
  auto h = broker.subscribe(
      "t", [&](const Message<int>&) { throw std::runtime_error("down"); }, herald::inline_executor,
      {},
      herald::HandlerOptions<int>{.retry = {.max_attempts = 10, .initial_backoff = 1ms},
                                  .dead_letters = box.sink(),
                                  .sleep = time.sleep(),
                                  .breaker = breaker,
                                  .when_open = herald::WhenOpen::dead_letter});
  broker.publish("t", 1);
  const auto s = h.stats();
  CHECK(s.invocations == 2);  // not 10: the third attempt was refused
  CHECK(s.breaker_refused == 1);
  REQUIRE(letters.size() == 1);
  CHECK(letters[0].attempts == 2);
  CHECK(breaker->stats().failures == 2);
}

TEST_CASE("unsubscribe cuts short a strand waiting for an open breaker, and is quiescent",
          "[handler][breaker][quiescent]") {
  auto breaker = std::make_shared<herald::CircuitBreaker>(
      herald::CircuitBreakerOptions{.consecutive_failures = 1, .cooldown = 1h});
  breaker->trip();
  herald::WorkerPool pool(1, 8);
  Broker<int> broker;
  std::atomic<int> calls{0};
  auto h = broker.subscribe(
      "t", [&](const Message<int>&) { ++calls; }, pool, {},
      herald::HandlerOptions<int>{.breaker = breaker, .breaker_recheck = 1h});
  REQUIRE(broker.publish("t", 1).delivered == 1);
  REQUIRE(broker.publish("t", 2).delivered == 1);
  REQUIRE(eventually([&] { return h.stats().breaker_refused == 1; }));  // it is waiting
  h.unsubscribe();  // returns although the cooldown has an hour to go
  CHECK(calls == 0);
  const auto s = h.stats();
  CHECK(s.received == 1);           // the waiting message was taken, and left unhandled
  CHECK(s.queue_depth == 1);        // the next one stayed queued
  CHECK(s.retries_cancelled == 0);  // it was waiting for the breaker, not for a retry
  // The pool's worker is free again.
  auto done = pool.async([] { return 7; });
  CHECK(done.get() == 7);
}

TEST_CASE(
    "WhenOpen::wait holds no worker: while the breaker is open the pool's one thread serves other "
    "work, and the whole subscription waits, whatever its ordering",
    "[handler][breaker]") {
  const auto ordering =
      GENERATE(herald::Ordering::strict, herald::Ordering::per_key, herald::Ordering::none);
  CAPTURE(ordering);
  ManualTime time;  // the breaker's clock; the timers run on the real one
  auto breaker = std::make_shared<herald::CircuitBreaker>(herald::CircuitBreakerOptions{
      .consecutive_failures = 1, .cooldown = 1s, .clock = time.clock()});
  breaker->trip();
  time.now_ns = std::chrono::nanoseconds(1s - 20ms).count();  // retry_after(): 20 ms, every time
  herald::WorkerPool pool(1, 256);
  Broker<int> broker;
  std::mutex mutex;
  std::vector<int> served;
  auto guarded = broker.subscribe(
      "g",
      [&](const Message<int>& m) {
        const std::lock_guard lock(mutex);
        served.push_back(*m);
      },
      pool, {},
      herald::HandlerOptions<int>{
          .ordering = ordering,
          .key = [](const Message<int>& m) { return static_cast<std::uint64_t>(*m); },
          .breaker = breaker});
  std::atomic<int> others{0};
  auto other = broker.subscribe(
      "o", [&](const Message<int>&) { ++others; }, pool);
  for (int i = 1; i <= 3; ++i)
    REQUIRE(broker.publish("g", i).delivered == 1);
  // Refused, then asked again after the 20 ms the breaker said: the wait is a timer.
  REQUIRE(eventually([&] { return guarded.stats().breaker_refused >= 2; }));
  for (int i = 0; i < 100; ++i)
    REQUIRE(broker.publish("o", i).delivered == 1);
  CHECK(eventually([&] { return others.load() == 100; }));  // the worker is not held
  auto answer = pool.async([] { return 7; });
  REQUIRE(answer.wait_for(10s) == std::future_status::ready);
  CHECK(answer.get() == 7);
  {
    const auto s = guarded.stats();
    CHECK(s.received == 1);     // the refused message, waiting
    CHECK(s.queue_depth == 2);  // nothing went ahead of it, under any ordering
    CHECK(s.invocations == 0);
    const std::lock_guard lock(mutex);
    CHECK(served.empty());
  }
  time.now_ns = std::chrono::nanoseconds(2s).count();  // the cooldown is over: 1 is the probe
  REQUIRE(eventually([&] {
    const std::lock_guard lock(mutex);
    return served.size() == 3;
  }));
  {
    const std::lock_guard lock(mutex);
    CHECK(served == std::vector<int>{1, 2, 3});
  }
  REQUIRE(guarded.wait_idle(10s));
  const auto s = guarded.stats();
  CHECK(s.invocations == 3);
  CHECK(s.retries == 0);  // waiting for the breaker is not a retry
  CHECK(s.retries_pending == 0);
  CHECK(s.retries_cancelled == 0);
  CHECK(breaker->state() == herald::CircuitState::closed);
}

TEST_CASE("dedup skips messages whose key was handled within the window, and counts them",
          "[handler][dedup]") {
  Broker<int> broker;
  std::vector<int> handled;
  bool fail_sevens = true;
  auto h = broker.subscribe(
      "t",
      [&](const Message<int>& m) {
        if (*m == 7 && fail_sevens) {
          fail_sevens = false;
          throw std::runtime_error("first 7 fails");
        }
        handled.push_back(*m);
      },
      herald::inline_executor, {},
      herald::HandlerOptions<int>{
          .dedup = {.key = [](const Message<int>& m) { return static_cast<std::uint64_t>(*m); },
                    .max_count = 3}});
  for (const int v : {1, 2, 1, 3, 2})
    broker.publish("t", v);
  CHECK(handled == std::vector<int>{1, 2, 3});
  CHECK(h.stats().deduplicated == 2);
  // A message that failed is not recorded: its redelivery is handled, the next copy is not.
  for (const int v : {7, 7, 7})
    broker.publish("t", v);
  CHECK(handled == std::vector<int>{1, 2, 3, 7});
  CHECK(h.stats().deduplicated == 3);
  CHECK(h.stats().failures == 1);
  // The window holds the last 3 handled keys (2, 3, 7 now): 1 has been forgotten.
  broker.publish("t", 1);
  broker.publish("t", 3);
  CHECK(handled == std::vector<int>{1, 2, 3, 7, 1});
  CHECK(h.stats().deduplicated == 4);
}

TEST_CASE("a throwing dedup key goes to on_error and the message is handled anyway",
          "[handler][dedup]") {
  Broker<int> broker;
  int handled = 0;
  int errors = 0;
  auto h = broker.subscribe(
      "t", [&](const Message<int>&) { ++handled; }, herald::inline_executor, {},
      herald::HandlerOptions<int>{
          .on_error = [&](const Message<int>&, std::exception_ptr) { ++errors; },
          .dedup = {.key = [](const Message<int>& m) -> std::uint64_t {
            if (*m < 0) throw std::runtime_error("no id");
            return static_cast<std::uint64_t>(*m);
          }}});
  for (const int v : {-1, -1, 5, 5})
    broker.publish("t", v);
  CHECK(handled == 3);
  CHECK(errors == 2);
  CHECK(h.stats().deduplicated == 1);
}
