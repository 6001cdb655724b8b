// Issue 12, "every written promise holds under faults, hostile input and misuse": one regression
// test per finding that needs neither allocation faults (fault_injection_test.cpp) nor option
// validation (options_test.cpp). Each fails (or, under ASan/TSan, reports) on the code of
// 8ab127c and should pass once the finding is fixed. Public API only.
#include <herald/broker.hpp>
#include <herald/subscription.hpp>
#include <herald/worker_pool.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <future>
#include <latch>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "process_support.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::CloseReason;
using herald::HandlerSubscription;
using herald::Message;
using herald::Overflow;
using herald_process::finishes_within;
using herald_process::keep_forever;
using herald_test::Counted;

namespace {

/// The identities SubscriptionStats documents, for a subscription nobody is using right now.
template <class S>
void check_identities(const S& s) {
  CHECK(s.offered == s.delivered + s.dropped);
  CHECK(s.dropped == s.dropped_full + s.dropped_timeout);
  CHECK(s.delivered == s.received + s.evicted + s.queue_depth);
}

const char* executor_name(int kind) {
  return kind == 0 ? "WorkerPool" : kind == 1 ? "inline_executor" : "dedicated_thread";
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Item 1: a WorkerPool destroyed while a handler subscription is still attached.

TEST_CASE(
    "a handler subscription outliving its pool neither touches the freed pool nor loses "
    "a message",
    "[hardening][lifetime][pool][item1]") {
  Broker<int> broker;
  std::atomic<int> handled{0};
  auto pool = std::make_unique<herald::WorkerPool>(1, 16);
  auto h = broker.subscribe("t", [&](const Message<int>&) { ++handled; }, *pool, {.capacity = 8});
  REQUIRE(broker.publish("t", 1).delivered == 1);
  REQUIRE(h.wait_idle(5s));
  pool.reset();  // the subscription is still attached to it

  // On 8ab127c: heap-use-after-free in WorkerPool::try_submit, called from the handler state's
  // post() (ASan); a plain build reads freed memory silently.
  const auto r = broker.publish("t", 2);

  // Either outcome is acceptable, but nothing in between: the subscription kept what it needs of
  // the pool alive and the message is handled, or the offer is refused and counted (or the
  // subscription was closed when its pool went away).
  const bool handled_ok = r.delivered == 1 && h.wait_idle(5s) && handled.load() == 2;
  const bool refused_ok =
      r.delivered == 0 && (r.dropped == 1 || h.close_reason() != CloseReason::open);
  INFO("delivered " << r.delivered << ", dropped " << r.dropped << ", handled " << handled.load()
                    << ", close_reason " << herald::to_string(h.close_reason()));
  CHECK((handled_ok || refused_ok));
  check_identities(h.stats());
}

// ---------------------------------------------------------------------------------------------
// Item 2: unsubscribing, from inside a handler, a handler that runs further up the same thread.

namespace {

struct Nested {
  herald::WorkerPool pool{1, 16};
  Broker<int> broker;
  HandlerSubscription<int> a;
  HandlerSubscription<int> b;
  HandlerSubscription<int> c;
  std::atomic<int> a_calls{0};
  std::promise<void> done;  // set once the nested unsubscribe returned
};

}  // namespace

TEST_CASE(
    "unsubscribing a handler that runs further up the calling thread returns at once, at "
    "any nesting depth",
    "[hardening][quiescent][deadlock][item2]") {
  // A runs on `a_kind` and publishes to B (inline), which publishes to C (inline). One of them
  // unsubscribes a handler that is running further up the same thread's stack.
  const int a_kind = GENERATE(0, 1);  // A on a WorkerPool, or inline
  const int scenario = GENERATE(0, 1, 2);
  const char* what[] = {"B unsubscribes A (A is one level up)",
                        "C unsubscribes A (A is two levels up)",
                        "C unsubscribes B (B is one level up, itself inside A)"};
  INFO("A on " << executor_name(a_kind) << "; " << what[scenario]);

  auto ctx = std::make_shared<Nested>();
  Nested* raw = ctx.get();  // handlers capture the raw pointer: ctx owns them (no cycle)
  ctx->c = ctx->broker.subscribe(
      "c",
      [raw, scenario](const Message<int>&) {
        (scenario == 1 ? raw->a : raw->b).unsubscribe();
        raw->done.set_value();
      },
      herald::inline_executor);
  ctx->b = ctx->broker.subscribe(
      "b",
      [raw, scenario](const Message<int>&) {
        if (scenario == 0) {
          raw->a.unsubscribe();
          raw->done.set_value();
        } else {
          raw->broker.publish("c", 0);
        }
      },
      herald::inline_executor);
  auto a_handler = [raw](const Message<int>&) {
    ++raw->a_calls;
    raw->broker.publish("b", 0);
  };
  ctx->a = a_kind == 0 ? ctx->broker.subscribe("a", a_handler, ctx->pool)
                       : ctx->broker.subscribe("a", a_handler, herald::inline_executor);

  auto done = ctx->done.get_future().share();
  const bool returned = finishes_within(5s, [ctx, done] {
    ctx->broker.publish("a", 1);
    done.wait();
  });
  if (!returned) {
    keep_forever(ctx);  // its threads are stuck for good: never destroy what they use
    FAIL(
        "deadlock: the nested unsubscribe did not return within 5 s (it waits for a handler "
        "that is running further up its own thread)");
  }
  const auto& target = scenario == 2 ? ctx->b : ctx->a;
  CHECK(target.close_reason() == CloseReason::unsubscribed);
  // No further invocation of an unsubscribed A starts; a still subscribed A runs again.
  ctx->broker.publish("a", 2);
  if (scenario == 2) CHECK(ctx->a.wait_idle(5s));
  CHECK(ctx->a_calls.load() == (scenario == 2 ? 2 : 1));
}

// ---------------------------------------------------------------------------------------------
// Item 5: a handler subscription whose pool is shut down.

namespace {

struct ShutDownPool {
  herald::WorkerPool pool{1, 16};
  Broker<int> broker;
  HandlerSubscription<int> h;
  std::atomic<int> handled{0};
  std::atomic<bool> idle_result{false};
};

}  // namespace

TEST_CASE(
    "after pool.shutdown() a handler subscription refuses and counts offers, and "
    "wait_idle returns",
    "[hardening][pool][shutdown][item5]") {
  auto ctx = std::make_shared<ShutDownPool>();
  ctx->h = ctx->broker.subscribe("t", [raw = ctx.get()](const Message<int>&) { ++raw->handled; },
                                 ctx->pool, {.capacity = 8});
  REQUIRE(ctx->broker.publish("t", 1).delivered == 1);
  REQUIRE(ctx->h.wait_idle(5s));
  ctx->pool.shutdown();

  const auto r = ctx->broker.publish("t", 2);
  const bool returned = finishes_within(3s, [ctx] { ctx->idle_result = ctx->h.wait_idle(); });
  if (!returned) keep_forever(ctx);
  const auto s = ctx->h.stats();
  INFO("publish: delivered " << r.delivered << ", dropped " << r.dropped << "; subscription: "
                             << "delivered " << s.delivered << ", dropped " << s.dropped
                             << ", received " << s.received << ", queue_depth " << s.queue_depth
                             << ", invocations " << s.invocations << ", close_reason "
                             << herald::to_string(s.close_reason));
  CHECK(returned);  // on 8ab127c wait_idle() waits forever for a message nobody will handle
  // Refused and counted, or refused because the subscription was closed with the pool.
  CHECK(r.delivered == 0);
  CHECK((r.dropped == 1 || s.close_reason != CloseReason::open));
  CHECK(s.queue_depth == 0);  // nothing is left waiting for a strand that never comes
  CHECK(ctx->handled.load() == 1);
  check_identities(s);
}

// ---------------------------------------------------------------------------------------------
// Item 7: close() racing a publisher blocked on a full Overflow::block subscription.

TEST_CASE(
    "close racing a publisher blocked on a block subscription counts the offer as closed, "
    "never as dropped_timeout",
    "[hardening][race][counters][item7]") {
  // The refused offer must not be counted as a timeout: there is no timeout. On 8ab127c the
  // publisher can see its push fail (closed bit set in the queue's tail) before the queue's
  // separate `closed_` flag is stored, and counts dropped_timeout. The window is a few
  // nanoseconds wide, so the closer is made to close while the publisher spins on the full queue,
  // over many rounds (on 8ab127c: a few hits per run in a plain build, most runs under the
  // sanitizers); the time budget keeps the test short.
  const auto seed = herald_test::seed("close racing a blocked publisher");
  std::mt19937_64 rng(seed);
  // One publisher spins undisturbed; three give more chances per close and a busier closer
  // thread. Rounds alternate.
  constexpr int kMaxPublishers = 3;
  const int max_rounds = 40000;
#if defined(HERALD_SANITIZED_BUILD)
  const auto budget = std::chrono::steady_clock::now() + 15s;  // fewer rounds per second
#else
  const auto budget = std::chrono::steady_clock::now() + 10s;
#endif
  int rounds = 0;
  int misclassified = 0;  // rounds where some counter said dropped/dropped_timeout
  std::string first;
  for (; rounds < max_rounds && std::chrono::steady_clock::now() < budget; ++rounds) {
    Broker<int> broker;
    auto sub = broker.subscribe("t", {.capacity = 1, .overflow = Overflow::block});
    broker.publish("t", 0);  // full now
    std::atomic<int> started{0};
    const int n = rounds % 2 == 0 ? 1 : kMaxPublishers;
    std::array<herald::PublishResult, kMaxPublishers> results{};
    std::vector<std::thread> publishers;
    for (int p = 0; p < n; ++p) {
      publishers.emplace_back([&, p] {
        started.fetch_add(1);
        results[static_cast<std::size_t>(p)] = broker.publish("t", 1);  // blocks: no timeout
      });
    }
    while (started.load() != n)
      std::this_thread::yield();
    // Close while the publishers spin (their first microseconds in the blocking push).
    const auto spins = rng() % 4000;
    for (std::uint64_t i = 0; i < spins; ++i)
      std::atomic_signal_fence(std::memory_order_seq_cst);
    if (rng() % 2 == 0) {
      broker.close();
    } else {
      sub.unsubscribe();
    }
    for (auto& t : publishers)
      t.join();
    const auto s = sub.stats();
    const auto b = broker.stats();
    std::size_t dropped = 0;
    for (const auto& r : results)
      dropped += r.dropped;
    if (s.dropped_timeout != 0 || s.dropped != 0 || dropped != 0 || b.dropped != 0) {
      if (misclassified++ == 0) {
        first = "round " + std::to_string(rounds) + ": subscription dropped_timeout " +
                std::to_string(s.dropped_timeout) + ", PublishResult.dropped (summed) " +
                std::to_string(dropped) + ", BrokerStats.dropped " + std::to_string(b.dropped);
      }
    }
    // Whatever the outcome, the counters add up.
    if (s.offered != s.delivered + s.dropped ||
        s.delivered != s.received + s.evicted + s.queue_depth) {
      FAIL("counters do not add up in round " << rounds);
    }
  }
  INFO("seed " << seed << ", " << rounds << " rounds; first misclassified: " << first);
  CHECK(misclassified == 0);
}

// ---------------------------------------------------------------------------------------------
// Item 8: the Broker destroyed while another thread is inside Broker::publish.

namespace {

/// A payload whose construction (inside publish, after the route was resolved) waits at a gate:
/// it holds a publisher inside Broker::publish for as long as the test wants.
struct Gate {
  std::latch inside{1};
  std::latch open{1};
};
struct GateTag {
  Gate* gate;
};
struct Gated {
  explicit Gated(GateTag t) {
    t.gate->inside.count_down();
    t.gate->open.wait();
  }
};

}  // namespace

TEST_CASE(
    "destroying the broker while another thread is inside Broker::publish aborts with a "
    "message in debug builds",
    "[hardening][lifetime][item8]") {
  // The rule (broker.hpp): no call may be in progress on another thread when the broker is
  // destroyed -- as for any C++ object. Debug builds check it; release builds cannot afford to
  // count publishes in flight, and the rule is documented (README "Guarantees and limits").
#if defined(NDEBUG)
  SUCCEED("release build: the lifetime rule is documented, checked only in debug builds");
#else
  const auto r = herald_process::run_isolated(
      [](herald_process::ChildLog& log) {
        Gate gate;
        auto broker = std::make_unique<Broker<Gated>>();
        Broker<Gated>* b = broker.get();
        auto sub = broker->subscribe("t");
        std::thread publisher([&] { b->publish_from(herald::Origin{}, "t", GateTag{&gate}); });
        gate.inside.wait();
        log.note("destroying the broker while the publisher is inside publish");
        broker.reset();  // must abort here, naming the rule
        log.fail("the broker was destroyed without a word");
        gate.open.count_down();
        publisher.join();
      },
      10s);
  INFO(r.verdict() << "\n" << r.head(20));
  CHECK(r.signal == SIGABRT);
  CHECK(r.output.find("a Broker was destroyed while another thread was publishing") !=
        std::string::npos);
#endif
}

TEST_CASE(
    "a Publisher blocked on a full block subscription while the broker is destroyed returns "
    "safely",
    "[hardening][lifetime][item8]") {
  // A Publisher shares the broker's state, so it may outlive the broker and even be inside
  // publish when the broker goes: destroying the broker closes the subscription, which wakes
  // the publisher; it returns without touching freed memory (ASan/TSan would tell).
  const int rounds = herald_test::scaled(200);
  int wrong = 0;
  for (int round = 0; round < rounds; ++round) {
    auto broker = std::make_unique<Broker<int>>();
    auto full = broker->subscribe("t", {.capacity = 1, .overflow = Overflow::block});
    REQUIRE(broker->publish("t", 0).delivered == 1);  // full now
    auto pub = broker->publisher("t");
    herald::PublishResult r;
    std::atomic<pid_t> tid{0};
    std::thread publisher([&] {
      tid = herald_test::current_tid();
      r = pub.publish(1);
    });
    while (tid.load() == 0)
      std::this_thread::yield();
    herald_test::wait_until_blocked(tid, 10s);  // in the blocking offer, asleep
    broker.reset();                             // wakes the publisher
    full = {};
    publisher.join();
    if (r.delivered != 0 || r.dropped != 0) ++wrong;
    CHECK(pub.publish(2).closed);  // the broker is gone: closed, at once
  }
  INFO("rounds where the refused offer was counted as delivered or dropped");
  CHECK(wrong == 0);
}

// ---------------------------------------------------------------------------------------------
// Item 9: memory amplification from untrusted topics.

TEST_CASE(
    "publishing to many long topics nobody subscribes to retains a bounded amount of "
    "memory",
    "[hardening][memory][item9]") {
  Broker<int> broker;
  auto sub = broker.subscribe("watched");
  std::string topic(16 * 1024, 'x');
  broker.publish(topic, 0);  // first-use allocations out of the way
  const std::size_t before = herald_process::heap_in_use();
  for (int i = 0; i < 4000; ++i) {
    const std::string id = std::to_string(i);
    topic.replace(0, id.size(), id);  // 4000 distinct topics of 16 KiB (the cache holds 4096)
    broker.publish(topic, i);
  }
  const std::size_t after = herald_process::heap_in_use();
  const std::size_t grown = after > before ? after - before : 0;
  INFO("heap grew by " << grown / 1024 << " KiB after publishing to 4000 unsubscribed 16 KiB "
                       << "topics (the route cache keeps each topic twice on 8ab127c)");
  // A byte bound of a few MiB, whatever the entry bound: 16 MiB is generous.
  CHECK(grown <= 16u * 1024 * 1024);
  CHECK(broker.stats().no_subscriber == 4001);
}

TEST_CASE("an idle Publisher does not keep a destroyed subscription or its queued payloads alive",
          "[hardening][memory][lifetime][item9]") {
  Counted::live = 0;
  {
    Broker<Counted> broker;
    auto pub = broker.publisher("t");
    {
      auto sub = broker.subscribe("t", {.capacity = 16});
      for (std::uint64_t i = 0; i < 10; ++i)
        REQUIRE(pub.publish(Counted{i}).delivered == 1);
    }  // unsubscribed with 10 payloads queued; the publisher stays idle
    INFO("payloads alive after the subscription was destroyed: " << Counted::live.load());
    CHECK(Counted::live.load() == 0);
  }
  CHECK(Counted::live.load() == 0);
}

TEST_CASE("InvalidTopic's message stays short and printable whatever the input",
          "[hardening][topic][item9]") {
  Broker<int> broker;
  std::string topic(1 << 20, 'a');
  topic.replace(1000, 7, "\x1b[2J\x07\x01\x7f");  // terminal escapes, BEL, SOH, DEL
  topic += "..end";                               // invalid: an empty token
  std::string what;
  try {
    broker.publish(topic, 1);
  } catch (const herald::InvalidTopic& e) {
    what = e.what();
  }
  REQUIRE_FALSE(what.empty());
  int raw_controls = 0;
  for (const char ch : what) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) ++raw_controls;
  }
  INFO("what() is " << what.size() << " bytes long, with " << raw_controls << " raw control bytes");
  CHECK(what.size() <= 1024);
  CHECK(raw_controls == 0);
  CHECK(what.find("empty token") != std::string::npos);  // it still says why

  std::string pattern = "a.\x1b]0;owned\x07.";  // invalid pattern (trailing dot), OSC escape
  what.clear();
  try {
    (void)broker.subscribe(pattern);
  } catch (const herald::InvalidTopic& e) {
    what = e.what();
  }
  REQUIRE_FALSE(what.empty());
  raw_controls = 0;
  for (const char ch : what) {
    const auto u = static_cast<unsigned char>(ch);
    if (u < 0x20 || u == 0x7f) ++raw_controls;
  }
  CHECK(raw_controls == 0);
}

// ---------------------------------------------------------------------------------------------
// Item 10: the smaller ones.

TEST_CASE("a publish whose copy of T throws does not consume a sequence number",
          "[hardening][sequence][item10]") {
  Counted::live = 0;
  {
    Broker<Counted> broker;
    auto sub = broker.subscribe("t");
    broker.publish("t", Counted{1});
    const Counted c{2};
    Counted::throw_on_copy = true;
    CHECK_THROWS_AS(broker.publish("t", c), std::runtime_error);
    Counted::throw_on_copy = false;
    broker.publish("t", c);
    const auto first = sub.try_receive();
    const auto second = sub.try_receive();
    REQUIRE(first);
    REQUIRE(second);
    CHECK(second->sequence() == first->sequence() + 1);  // 8ab127c: a gap of one
  }
  CHECK(Counted::live.load() == 0);
}

TEST_CASE("dead_lettered counts only letters the dead-letter broker accepted",
          "[hardening][failure][item10]") {
  Broker<herald::DeadLetter<int>> dlq;
  dlq.close();
  Broker<int> broker;
  herald::HandlerOptions<int> options;
  options.dead_letters = &dlq;
  auto h = broker.subscribe(
      "t", [](const Message<int>&) { throw std::runtime_error("refused"); },
      herald::inline_executor, {}, options);
  broker.publish("t", 1);
  const auto s = h.stats();
  CHECK(s.failures >= 1);
  CHECK(s.dead_lettered == 0);  // 8ab127c: 1, although the closed broker refused the letter
}

TEST_CASE("a handler subscription never counts a message received that its handler will not run",
          "[hardening][quiescent][counters][item10]") {
  Broker<int> broker;
  std::latch entered(1);
  std::latch gate(1);
  std::atomic<int> calls{0};
  auto h = broker.subscribe("t",
                            [&](const Message<int>&) {
                              if (calls.fetch_add(1) == 0) {
                                entered.count_down();
                                gate.wait();
                              }
                            },
                            herald::dedicated_thread, {.capacity = 8});
  for (int i = 0; i < 3; ++i)
    REQUIRE(broker.publish("t", i).delivered == 1);
  entered.wait();  // the first message is in the handler, two are queued
  std::thread unsubscriber([&] { h.unsubscribe(); });
  // wait_idle() returns false only once unsubscribe has cancelled the strand (it cannot be idle:
  // the handler is held at the gate). That is the handshake.
  CHECK_FALSE(h.wait_idle());
  gate.count_down();
  unsubscriber.join();
  const auto s = h.stats();
  INFO("delivered " << s.delivered << ", received " << s.received << ", invocations "
                    << s.invocations << ", queue_depth " << s.queue_depth);
  CHECK(s.received == s.invocations);  // 8ab127c: received 2, one of them never run
  CHECK(calls.load() == 1);
  check_identities(s);
}

TEST_CASE("offered counts every offer, independently of how it ended",
          "[hardening][counters][item10]") {
  // `offered` is computed as delivered + dropped on 8ab127c, so it can never disagree with them.
  // An offer that is neither (here: a subscription with an out-of-range policy) shows it. Once
  // subscribe rejects the policy (item 6), nothing is offered and there is nothing to compare.
  Broker<int> broker;
  std::optional<herald::Subscription<int>> sub;
  try {
    sub.emplace(broker.subscribe("t", {.overflow = static_cast<Overflow>(42)}));
  } catch (const std::invalid_argument&) {
    SUCCEED("Overflow(42) rejected at subscribe");
    return;
  }
  for (int i = 0; i < 5; ++i)
    broker.publish("t", i);
  const auto s = sub->stats();
  INFO("offered " << s.offered << ", delivered " << s.delivered << ", dropped " << s.dropped);
  CHECK(s.offered == 5);
  CHECK(s.offered == s.delivered + s.dropped);  // and then every offer has an outcome
}

// ---------------------------------------------------------------------------------------------
// Item 11: promises that had no test of their own.

namespace {

struct Stamp {
  std::uint32_t publisher = 0;
  std::uint64_t seq = 0;
};

}  // namespace

TEST_CASE(
    "block with a finite block_timeout that never expires still delivers exactly once, in "
    "order",
    "[hardening][block][exactly-once][item11]") {
  const auto timeout = GENERATE(std::chrono::nanoseconds(1min), std::chrono::nanoseconds(1h));
  INFO("block_timeout " << timeout.count() << " ns");
  constexpr std::uint32_t kPublishers = 3;
  constexpr int kSubscribers = 3;
  const auto n = static_cast<std::uint64_t>(herald_test::scaled(20000));
  Broker<Stamp> broker;
  std::vector<herald::Subscription<Stamp>> subs;
  for (int i = 0; i < kSubscribers; ++i) {
    subs.push_back(broker.subscribe(
        "p.*", {.capacity = 8, .overflow = Overflow::block, .block_timeout = timeout}));
  }
  // Each consumer records; the main thread asserts.
  std::vector<std::uint64_t> duplicates_or_gaps(kSubscribers, 0);
  std::vector<std::uint64_t> received(kSubscribers, 0);
  std::vector<std::thread> consumers;
  for (int i = 0; i < kSubscribers; ++i) {
    consumers.emplace_back([&, i] {
      std::vector<std::uint64_t> next(kPublishers, 1);
      while (auto m = subs[static_cast<std::size_t>(i)].receive()) {
        auto& expect = next[m->value().publisher];
        if (m->value().seq != expect) ++duplicates_or_gaps[static_cast<std::size_t>(i)];
        expect = m->value().seq + 1;
        ++received[static_cast<std::size_t>(i)];
      }
    });
  }
  {
    std::vector<std::jthread> publishers;
    for (std::uint32_t p = 0; p < kPublishers; ++p) {
      publishers.emplace_back([&, p] {
        auto pub = broker.publisher("p." + std::to_string(p));
        for (std::uint64_t s = 1; s <= n; ++s)
          pub.publish(Stamp{p, s});
      });
    }
  }
  broker.close();
  for (auto& c : consumers)
    c.join();
  for (int i = 0; i < kSubscribers; ++i) {
    const auto s = subs[static_cast<std::size_t>(i)].stats();
    CHECK(duplicates_or_gaps[static_cast<std::size_t>(i)] == 0);
    CHECK(received[static_cast<std::size_t>(i)] == kPublishers * n);
    CHECK(s.dropped == 0);
    CHECK(s.delivered == kPublishers * n);
  }
}

TEST_CASE("several threads receiving from one Subscription get every message exactly once",
          "[hardening][receive][exactly-once][item11]") {
  constexpr std::uint32_t kPublishers = 2;
  constexpr int kConsumers = 4;
  const auto n = static_cast<std::uint64_t>(herald_test::scaled(30000));
  Broker<Stamp> broker;
  auto sub = broker.subscribe("p.*", {.capacity = 16, .overflow = Overflow::block});
  // Consumers record what they got (in their order); the main thread checks.
  std::vector<std::vector<Stamp>> got(kConsumers);
  std::vector<std::thread> consumers;
  for (int i = 0; i < kConsumers; ++i) {
    consumers.emplace_back([&, i] {
      auto& mine = got[static_cast<std::size_t>(i)];
      if (i % 2 == 0) {
        while (auto m = sub.receive())
          mine.push_back(m->value());
      } else {
        for (const Message<Stamp>& m : sub)
          mine.push_back(*m);
      }
    });
  }
  {
    std::vector<std::jthread> publishers;
    for (std::uint32_t p = 0; p < kPublishers; ++p) {
      publishers.emplace_back([&, p] {
        auto pub = broker.publisher("p." + std::to_string(p));
        for (std::uint64_t s = 1; s <= n; ++s)
          pub.publish(Stamp{p, s});
      });
    }
  }
  sub.unsubscribe();  // the consumers drain what is queued, then end
  for (auto& c : consumers)
    c.join();
  std::vector<std::vector<int>> seen(kPublishers, std::vector<int>(n + 1, 0));
  std::uint64_t out_of_order = 0;
  for (const auto& mine : got) {
    std::vector<std::uint64_t> last(kPublishers, 0);
    for (const Stamp& s : mine) {
      ++seen[s.publisher][s.seq];
      if (s.seq <= last[s.publisher]) ++out_of_order;  // one consumer sees FIFO per publisher
      last[s.publisher] = s.seq;
    }
  }
  std::uint64_t missing = 0;
  std::uint64_t duplicated = 0;
  for (const auto& per : seen) {
    for (std::uint64_t s = 1; s <= n; ++s) {
      if (per[s] == 0) ++missing;
      if (per[s] > 1) ++duplicated;
    }
  }
  CHECK(missing == 0);
  CHECK(duplicated == 0);
  CHECK(out_of_order == 0);
  const auto s = sub.stats();
  CHECK(s.received == kPublishers * n);
  CHECK(s.delivered == kPublishers * n);
  CHECK(s.queue_depth == 0);
}

TEST_CASE("destroying or reassigning a handler subscription's handle is quiescent",
          "[hardening][quiescent][item11]") {
  const int kind = GENERATE(0, 1, 2);
  const bool by_assignment = GENERATE(false, true);
  INFO(executor_name(kind) << ", handle " << (by_assignment ? "move-assigned over" : "destroyed"));
  herald::WorkerPool pool(2, 64);
  Broker<int> broker;
  const int rounds = herald_test::scaled(kind == 2 ? 80 : 300);
  int running_after = 0;  // an invocation still running when the destructor returned
  int started_after = 0;  // an invocation that started after it returned
  for (int r = 0; r < rounds; ++r) {
    std::atomic<bool> gone{false};
    std::atomic<bool> late{false};
    std::atomic<int> running{0};
    std::atomic<int> calls{0};
    auto handler = [&](const Message<int>&) {
      ++running;
      if (gone.load()) late = true;
      ++calls;
      for (int i = 0; i < (r % 3) * 2000; ++i)  // some work, of varying length
        std::atomic_signal_fence(std::memory_order_seq_cst);
      if (gone.load()) late = true;
      --running;
    };
    std::optional<HandlerSubscription<int>> h;
    h.emplace(kind == 0   ? broker.subscribe("q", handler, pool)
              : kind == 1 ? broker.subscribe("q", handler, herald::inline_executor)
                          : broker.subscribe("q", handler, herald::dedicated_thread));
    std::atomic<std::uint64_t> published{0};
    std::jthread publisher([&](std::stop_token st) {
      while (!st.stop_requested()) {
        broker.publish("q", 1);
        ++published;
      }
    });
    while (calls.load() < 1 + r % 4)
      std::this_thread::yield();
    if (by_assignment) {
      *h = HandlerSubscription<int>{};
    } else {
      h.reset();
    }
    gone = true;
    if (running.load() != 0) ++running_after;
    // Let the publisher offer a few more messages (nothing may start for them), then stop.
    const auto target = published.load() + 50;
    while (published.load() < target)
      std::this_thread::yield();
    publisher.request_stop();
    publisher.join();
    if (late.load()) ++started_after;
  }
  CHECK(running_after == 0);
  CHECK(started_after == 0);
}
