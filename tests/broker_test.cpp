// Broker<T> with pull subscriptions: routing, every overflow policy's exact behaviour when full,
// lifetime (unsubscribe, stop_token, close), queue groups, publishers and counters.
#include <herald/broker.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::CloseReason;
using herald::Overflow;
using herald_test::BlockedProbe;
using herald_test::Counted;
using herald_test::CountedGuard;

namespace {

template <class T>
std::vector<T> drain(herald::Subscription<T>& sub) {
  std::vector<T> out;
  while (auto m = sub.try_receive())
    out.push_back(**m);
  return out;
}

std::vector<int> iota(int from, int to) {
  std::vector<int> v;
  for (int i = from; i <= to; ++i)
    v.push_back(i);
  return v;
}

}  // namespace

TEST_CASE("a subscriber receives what is published to its topic, with metadata", "[broker]") {
  Broker<int> broker;
  auto sub = broker.subscribe("orders.eu.created");
  CHECK(sub.pattern() == "orders.eu.created");
  CHECK(sub.is_open());

  const auto before = std::chrono::steady_clock::now();
  const auto r = broker.publish("orders.eu.created", 42);
  CHECK(r.matched == 1);
  CHECK(r.delivered == 1);
  CHECK(r.dropped == 0);
  CHECK_FALSE(r.closed);
  CHECK(static_cast<bool>(r));
  broker.publish("orders.eu.created", 43);

  auto m = sub.try_receive();
  REQUIRE(m);
  CHECK(m->topic() == "orders.eu.created");
  CHECK(m->value() == 42);
  CHECK(**m == 42);
  CHECK(m->origin() == 0);
  CHECK(m->published_at() >= before);
  auto m2 = sub.receive();
  REQUIRE(m2);
  CHECK(m2->sequence() > m->sequence());
  CHECK_FALSE(sub.try_receive());
}

TEST_CASE("wildcards fan a message out to every matching subscription", "[broker]") {
  Broker<int> broker;
  auto exact = broker.subscribe("a.b");
  auto star = broker.subscribe("a.*");
  auto tail = broker.subscribe("a.>");
  auto all = broker.subscribe(">");
  auto other = broker.subscribe("x.*");
  auto deeper = broker.subscribe("a.b.*");

  CHECK(broker.publish("a.b", 1).delivered == 4);
  CHECK(broker.publish("a.b.c", 2).delivered == 3);  // tail, all, deeper
  CHECK(broker.publish("x.y", 3).delivered == 2);    // other, all
  const auto none = broker.publish("q", 4);
  CHECK(none.delivered == 1);  // only '>'

  CHECK(drain(exact) == std::vector<int>{1});
  CHECK(drain(star) == std::vector<int>{1});
  CHECK(drain(tail) == std::vector<int>{1, 2});
  CHECK(drain(all) == std::vector<int>{1, 2, 3, 4});
  CHECK(drain(other) == std::vector<int>{3});
  CHECK(drain(deeper) == std::vector<int>{2});
}

TEST_CASE("invalid patterns and topics throw InvalidTopic and change nothing", "[broker]") {
  Broker<int> broker;
  auto sub = broker.subscribe(">");
  CHECK_THROWS_AS(broker.subscribe("a..b"), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.subscribe("a.>.b"), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.subscribe(""), herald::InvalidTopic);
  CHECK(broker.stats().subscriptions == 1);

  CHECK_THROWS_AS(broker.publish("a.*", 1), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.publish("a b", 1), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.publisher("a..b"), herald::InvalidTopic);
  CHECK_FALSE(sub.try_receive());
  CHECK(broker.stats().published == 0);

  CHECK_THROWS_AS(broker.subscribe("a", {.capacity = 0}), std::invalid_argument);
  CHECK_THROWS_AS(broker.subscribe("a", {.overflow = Overflow::disconnect, .disconnect_after = 0}),
                  std::invalid_argument);
  CHECK(broker.stats().subscriptions == 1);
}

TEST_CASE("fan-out shares one payload: no copy of T per subscriber", "[broker]") {
  CountedGuard guard;
  {
    Broker<Counted> broker;
    std::vector<herald::Subscription<Counted>> subs;
    for (int i = 0; i < 8; ++i)
      subs.push_back(broker.subscribe("t"));
    CHECK(broker.publish("t", Counted{7}).delivered == 8);
    CHECK(Counted::copies == 0);  // moved in once
    const Counted c{8};
    broker.publish("t", c);
    CHECK(Counted::copies == 1);  // copied in once

    const Counted* first = nullptr;
    for (auto& s : subs) {
      auto m = s.try_receive();
      REQUIRE(m);
      if (!first) first = &m->value();
      CHECK(&m->value() == first);  // the very same object
      CHECK(m->value().value == 7);
    }
  }
  CHECK(Counted::live == 0);
}

TEST_CASE("move-only payloads work", "[broker]") {
  Broker<std::unique_ptr<int>> broker;
  auto a = broker.subscribe("t");
  auto b = broker.subscribe("t");
  broker.publish("t", std::make_unique<int>(5));
  auto ma = a.try_receive();
  auto mb = b.try_receive();
  REQUIRE(ma);
  REQUIRE(mb);
  CHECK(*ma->value() == 5);
  CHECK(ma->value().get() == mb->value().get());
}

TEST_CASE("drop_incoming keeps the first messages and counts the rest", "[broker][policy]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t", {.capacity = 4, .overflow = Overflow::drop_incoming});
  for (int i = 1; i <= 10; ++i) {
    const auto r = broker.publish("t", i);
    CHECK(r.matched == 1);
    CHECK(r.delivered == (i <= 4 ? 1u : 0u));
    CHECK(r.dropped == (i <= 4 ? 0u : 1u));
  }
  const auto s = sub.stats();
  CHECK(s.offered == 10);
  CHECK(s.delivered == 4);
  CHECK(s.dropped == 6);
  CHECK(s.dropped_full == 6);
  CHECK(s.queue_depth == 4);
  CHECK(s.high_water_mark == 4);
  CHECK(drain(sub) == iota(1, 4));
  CHECK(sub.stats().received == 4);
  CHECK(broker.stats().dropped == 6);
}

TEST_CASE("drop_oldest evicts the oldest queued message when full", "[broker][policy]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t", {.capacity = 4, .overflow = Overflow::drop_oldest});
  for (int i = 1; i <= 10; ++i) {
    const auto r = broker.publish("t", i);
    CHECK(r.delivered == 1);
    CHECK(r.evicted == (i <= 4 ? 0u : 1u));
  }
  const auto s = sub.stats();
  CHECK(s.delivered == 10);
  CHECK(s.dropped == 0);
  CHECK(s.evicted == 6);
  CHECK(drain(sub) == iota(7, 10));
  const auto after = sub.stats();
  CHECK(after.delivered == after.received + after.evicted + after.queue_depth);
  CHECK(broker.stats().evicted == 6);
}

TEST_CASE("block waits for room, and drops after block_timeout", "[broker][policy]") {
  Broker<int> broker;
  SECTION("with a timeout the message is dropped for this subscriber and counted") {
    auto sub =
        broker.subscribe("t", {.capacity = 2, .overflow = Overflow::block, .block_timeout = 20ms});
    broker.publish("t", 1);
    broker.publish("t", 2);
    const auto start = std::chrono::steady_clock::now();
    const auto r = broker.publish("t", 3);
    CHECK(std::chrono::steady_clock::now() - start >= 20ms);
    CHECK(r.dropped == 1);
    CHECK(sub.stats().dropped_timeout == 1);
    CHECK(drain(sub) == iota(1, 2));
  }
  SECTION("without a timeout the publisher waits until the consumer makes room") {
    auto sub = broker.subscribe("t", {.capacity = 2, .overflow = Overflow::block});
    broker.publish("t", 1);
    broker.publish("t", 2);
    std::atomic<bool> published{false};
    BlockedProbe publishing;
    std::thread publisher([&] {
      publishing.arrive();
      broker.publish("t", 3);
      published = true;
    });
    publishing.wait_until_blocked();
    CHECK_FALSE(published.load());  // still waiting for room
    CHECK(sub.receive().value().value() == 1);
    publisher.join();
    CHECK(published.load());
    CHECK(drain(sub) == iota(2, 3));
    CHECK(sub.stats().dropped == 0);
  }
  SECTION("a publisher blocked on a full queue is released when the subscription closes") {
    auto sub = broker.subscribe("t", {.capacity = 1, .overflow = Overflow::block});
    broker.publish("t", 1);
    BlockedProbe publishing;
    std::atomic<std::size_t> delivered{99};
    std::thread publisher([&] {
      publishing.arrive();
      delivered = broker.publish("t", 2).delivered;
    });
    publishing.wait_until_blocked();
    sub.unsubscribe();
    publisher.join();
    CHECK(delivered.load() == 0);
    CHECK(drain(sub) == iota(1, 1));
  }
}

TEST_CASE("disconnect closes a slow consumer after disconnect_after overflows",
          "[broker][policy]") {
  Broker<int> broker;
  auto slow = broker.subscribe(
      "t", {.capacity = 2, .overflow = Overflow::disconnect, .disconnect_after = 3});
  auto fast = broker.subscribe("t", {.capacity = 64});
  for (int i = 1; i <= 4; ++i)
    broker.publish("t", i);  // 3 and 4 overflow
  CHECK(slow.is_open());
  CHECK(slow.try_receive().value().value() == 1);  // room again: the overflow streak resets
  broker.publish("t", 5);                          // fits
  for (int i = 6; i <= 8; ++i)
    broker.publish("t", i);  // three consecutive overflows
  CHECK(slow.close_reason() == CloseReason::slow_consumer);
  CHECK(broker.publish("t", 9).matched == 1);    // only `fast` now
  CHECK(drain(slow) == std::vector<int>{2, 5});  // what was queued can still be drained
  CHECK_FALSE(slow.receive());                   // then it ends
  const auto s = slow.stats();
  CHECK(s.delivered == 3);
  CHECK(s.dropped_full == 5);
  CHECK(drain(fast) == iota(1, 9));
  CHECK(broker.stats().subscriptions == 1);
}

TEST_CASE("unsubscribe is idempotent and stops delivery at once", "[broker][lifetime]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t");
  broker.publish("t", 1);
  sub.unsubscribe();
  sub.unsubscribe();
  CHECK(sub.close_reason() == CloseReason::unsubscribed);
  const auto r = broker.publish("t", 2);
  CHECK(r.matched == 0);
  CHECK(broker.stats().no_subscriber == 1);
  CHECK(drain(sub) == iota(1, 1));  // queued before unsubscribe: still there
  CHECK_FALSE(sub.receive());       // closed: does not block
  CHECK(broker.stats().subscriptions == 0);

  {
    auto scoped = broker.subscribe("t");
    CHECK(broker.stats().subscriptions == 1);
  }
  CHECK(broker.stats().subscriptions == 0);  // the destructor unsubscribed

  auto moved_from = broker.subscribe("t");
  auto moved_to = std::move(moved_from);
  CHECK(broker.stats().subscriptions == 1);
  moved_to = broker.subscribe("u");  // assigning unsubscribes the old one
  CHECK(broker.stats().subscriptions == 1);
}

TEST_CASE("range-for ends after the queued messages once the subscription closes",
          "[broker][lifetime]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t");
  for (int i = 1; i <= 3; ++i)
    broker.publish("t", i);
  sub.unsubscribe();
  std::vector<int> seen;
  for (const herald::Message<int>& m : sub)
    seen.push_back(*m);
  CHECK(seen == iota(1, 3));
}

TEST_CASE("a stop_token stop unsubscribes and the consumer drains then ends", "[broker][stop]") {
  Broker<int> broker;
  SECTION("stop requested before subscribe: nothing is ever delivered") {
    std::stop_source stop;
    stop.request_stop();
    auto sub = broker.subscribe("t", {}, stop.get_token());
    CHECK(sub.close_reason() == CloseReason::stopped);
    CHECK(broker.stats().subscriptions == 0);
    CHECK(broker.publish("t", 1).matched == 0);
    CHECK_FALSE(sub.receive());
  }
  SECTION("stop requested after subscribe: queued messages drain, then range-for ends") {
    std::stop_source stop;
    auto sub = broker.subscribe("t", {}, stop.get_token());
    broker.publish("t", 1);
    broker.publish("t", 2);
    stop.request_stop();
    CHECK(sub.close_reason() == CloseReason::stopped);
    CHECK(broker.publish("t", 3).matched == 0);
    std::vector<int> seen;
    for (const auto& m : sub)
      seen.push_back(*m);
    CHECK(seen == iota(1, 2));
    CHECK(broker.stats().subscriptions == 0);
  }
  SECTION("a stop wakes a consumer blocked in range-for on another thread") {
    std::stop_source stop;
    auto sub = broker.subscribe("t", {}, stop.get_token());
    BlockedProbe consuming;
    std::latch got_first{1};
    int n = 0;  // read after the join
    std::jthread consumer([&] {
      consuming.arrive();
      for (const auto& m : sub) {
        if (n == 0) got_first.count_down();
        n += *m;
      }
    });
    broker.publish("t", 5);
    got_first.wait();
    consuming.wait_until_blocked();  // waiting for the next message
    stop.request_stop();
    consumer.join();
    CHECK(n == 5);
  }
  SECTION("a jthread's own stop token ends its subscription") {
    BlockedProbe consuming;
    std::optional<CloseReason> reason;  // read after the join
    std::jthread worker([&](std::stop_token st) {
      auto sub = broker.subscribe("t", {}, st);
      consuming.arrive();
      for (const auto& m : sub)
        (void)m;
      reason = sub.close_reason();
    });
    consuming.wait_until_blocked();  // in the range-for, waiting for a message
    worker.request_stop();
    worker.join();
    CHECK(reason == CloseReason::stopped);
  }
  SECTION("unsubscribe after a stop keeps the reason 'stopped'") {
    std::stop_source stop;
    auto sub = broker.subscribe("t", {}, stop.get_token());
    stop.request_stop();
    sub.unsubscribe();
    CHECK(sub.close_reason() == CloseReason::stopped);
  }
}

TEST_CASE("receive with a stop token returns empty on stop without closing", "[broker][stop]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t");
  std::stop_source stop;
  BlockedProbe receiving;
  std::atomic<bool> got_message{true};
  std::thread t([&] {
    receiving.arrive();
    got_message = sub.receive(stop.get_token()).has_value();
  });
  receiving.wait_until_blocked();
  stop.request_stop();
  t.join();
  CHECK_FALSE(got_message.load());
  CHECK(sub.is_open());
  CHECK_FALSE(sub.receive_for(0ms));
  broker.publish("t", 1);
  CHECK(sub.receive_for(1h).value().value() == 1);
}

TEST_CASE("close() closes every subscription and later publishes return closed", "[broker]") {
  Broker<int> broker;
  auto sub = broker.subscribe("t");
  auto blocked = broker.subscribe("u");
  BlockedProbe receiving;
  std::atomic<bool> got_message{true};
  std::thread consumer([&] {
    receiving.arrive();
    got_message = blocked.receive().has_value();
  });
  broker.publish("t", 1);
  receiving.wait_until_blocked();
  broker.close();
  broker.close();  // idempotent
  consumer.join();
  CHECK_FALSE(got_message.load());
  CHECK(broker.is_closed());
  CHECK(sub.close_reason() == CloseReason::broker_closed);
  const auto r = broker.publish("t", 2);
  CHECK(r.closed);
  CHECK(r.matched == 0);
  CHECK(drain(sub) == iota(1, 1));  // what was accepted is drained
  auto late = broker.subscribe("t");
  CHECK(late.close_reason() == CloseReason::broker_closed);
  CHECK_FALSE(late.receive());
  CHECK(broker.stats().subscriptions == 0);
}

TEST_CASE("destroying the broker with live subscriptions and blocked consumers is clean",
          "[broker][lifetime]") {
  CountedGuard guard;
  herald::Subscription<Counted> survivor;
  {
    auto broker = std::make_unique<Broker<Counted>>();
    survivor = broker->subscribe("t");
    auto other = broker->subscribe("t");
    BlockedProbe consuming;
    std::latch got_first{1};
    int received = 0;  // read after the join
    std::thread consumer([&] {
      consuming.arrive();
      while (other.receive()) {
        if (++received == 1) got_first.count_down();
      }
    });
    broker->publish("t", Counted{1});
    got_first.wait();
    consuming.wait_until_blocked();  // blocked in receive() when the broker goes
    broker.reset();
    consumer.join();
    CHECK(received == 1);
    CHECK(other.close_reason() == CloseReason::broker_closed);
  }
  CHECK(survivor.close_reason() == CloseReason::broker_closed);
  auto m = survivor.try_receive();
  REQUIRE(m);
  CHECK(m->value().value == 1);
  survivor.unsubscribe();  // the broker is gone: must not touch it
  m.reset();
  survivor = {};
  CHECK(Counted::live == 0);
}

TEST_CASE("a queue group gives each message to exactly one member", "[broker][group]") {
  Broker<int> broker;
  std::vector<herald::Subscription<int>> members;
  for (int i = 0; i < 3; ++i) {
    members.push_back(broker.subscribe("jobs.>", {.capacity = 256, .queue_group = "workers"}));
  }
  auto plain = broker.subscribe("jobs.>", {.capacity = 512});
  auto other_group = broker.subscribe("jobs.*", {.capacity = 512, .queue_group = "workers"});
  for (int i = 0; i < 300; ++i) {
    const auto r = broker.publish("jobs.x", i);
    CHECK(r.matched == 3);  // plain + one member of each group
    CHECK(r.delivered == 3);
  }
  std::vector<int> seen;
  for (auto& m : members) {
    auto got = drain(m);
    CHECK(got.size() == 100);  // round-robin while every member has room
    seen.insert(seen.end(), got.begin(), got.end());
  }
  std::sort(seen.begin(), seen.end());
  CHECK(seen == iota(0, 299));
  CHECK(drain(plain).size() == 300);
  CHECK(drain(other_group).size() == 300);  // same name, other pattern: a separate group
}

TEST_CASE("a queue group prefers a member with room", "[broker][group]") {
  Broker<int> broker;
  auto full = broker.subscribe("t", {.capacity = 1, .queue_group = "g"});
  auto roomy = broker.subscribe("t", {.capacity = 64, .queue_group = "g"});
  for (int i = 0; i < 20; ++i)
    CHECK(broker.publish("t", i).delivered == 1);
  CHECK(full.stats().delivered + roomy.stats().delivered == 20);
  CHECK(full.stats().dropped == 0);
  CHECK(roomy.stats().dropped == 0);
  full.unsubscribe();
  for (int i = 0; i < 5; ++i)
    CHECK(broker.publish("t", i).delivered == 1);
  CHECK(roomy.stats().delivered == 24);
}

TEST_CASE("a prepared publisher follows subscribe and unsubscribe", "[broker][publisher]") {
  Broker<int> broker;
  auto pub = broker.publisher("a.b");
  CHECK(pub.topic() == "a.b");
  CHECK(pub.publish(1).matched == 0);
  auto sub = broker.subscribe("a.*");
  CHECK(pub.publish(2).delivered == 1);
  auto sub2 = broker.subscribe(">");
  CHECK(pub.publish(3).delivered == 2);
  sub.unsubscribe();
  CHECK(pub.publish(4).delivered == 1);
  CHECK(drain(sub) == iota(2, 3));
  CHECK(drain(sub2) == iota(3, 4));
  broker.close();
  CHECK(pub.publish(5).closed);
}

TEST_CASE("broker and subscription counters add up", "[broker][stats]") {
  Broker<int> broker;
  auto a = broker.subscribe("t", {.capacity = 2});
  auto b = broker.subscribe("t.>", {.capacity = 2});
  for (int i = 0; i < 5; ++i)
    broker.publish("t", i);
  broker.publish("t.x", 9);
  broker.publish("nobody", 0);
  const auto s = broker.stats();
  CHECK(s.published == 7);
  CHECK(s.delivered == 3);
  CHECK(s.dropped == 3);
  CHECK(s.no_subscriber == 1);
  CHECK(s.subscriptions == 2);
  CHECK(a.stats().offered == 5);
  CHECK(b.stats().offered == 1);
}

TEST_CASE("a throwing copy of T fails the publish and leaves every queue consistent",
          "[broker][lifetime]") {
  CountedGuard guard;
  {
    Broker<Counted> broker;
    auto sub = broker.subscribe("t");
    broker.publish("t", Counted{1});
    const Counted c{2};
    Counted::throw_on_copy = true;
    CHECK_THROWS_AS(broker.publish("t", c), std::runtime_error);
    Counted::throw_on_copy = false;
    broker.publish("t", c);
    CHECK(sub.try_receive().value().value().value == 1);
    CHECK(sub.try_receive().value().value().value == 2);
    CHECK_FALSE(sub.try_receive());
    CHECK(sub.stats().delivered == 2);
  }
  CHECK(Counted::live == 0);
}
