// Retained messages and replay (Broker::retain, PublishOptions::retain, SubscribeOptions::replay):
// what is kept, what a late subscriber is replayed and how it is marked, the memory bounds and
// their counters, max_age, queue groups, handler subscriptions, every overflow policy with a
// replay larger than the queue, and bad input.
#include <herald/broker.hpp>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::BrokerOptions;
using herald::Message;
using herald::Overflow;
using herald::Replay;
using herald_test::Counted;
using herald_test::CountedGuard;

namespace {

constexpr herald::PublishOptions retain{.retain = true};

/// (topic, value, replayed) of everything queued.
struct Seen {
  std::string topic;
  int value;
  bool replayed;
  friend bool operator==(const Seen&, const Seen&) = default;
};

std::vector<Seen> drain(herald::Subscription<int>& sub) {
  std::vector<Seen> out;
  while (auto m = sub.try_receive())
    out.push_back({m->topic(), **m, m->replayed()});
  return out;
}

}  // namespace

TEST_CASE("a retained publish is kept, read back and replayed first, marked", "[retained]") {
  Broker<int> broker;
  broker.publish("room.temp", 20, retain);
  broker.publish("room.temp", 21, retain);
  broker.publish("room.hum", 40);  // not retained
  REQUIRE(broker.retained("room.temp"));
  CHECK(**broker.retained("room.temp") == 21);
  CHECK_FALSE(broker.retained("room.hum"));
  CHECK_FALSE(broker.retained("room.temp")->replayed());

  auto plain = broker.subscribe("room.*");
  auto late = broker.subscribe("room.*", {.replay = Replay::last_value()});
  broker.publish("room.temp", 22, retain);
  CHECK(drain(plain) == std::vector<Seen>{{"room.temp", 22, false}});
  CHECK(drain(late) == std::vector<Seen>{{"room.temp", 21, true}, {"room.temp", 22, false}});
  CHECK(late.stats().offered == 2);
  CHECK(late.stats().delivered == 2);

  const auto s = broker.stats();
  CHECK(s.retained_topics == 1);
  CHECK(s.retained_messages == 1);
  CHECK(s.replayed == 1);
  CHECK(s.delivered == 3);  // the replay is an offer like the others
}

TEST_CASE("Replay::none is the default; a plain subscription gets no retained message",
          "[retained]") {
  Broker<int> broker;
  broker.publish("a.b", 1, retain);
  auto sub = broker.subscribe("a.b");
  CHECK(drain(sub).empty());
  CHECK(herald::SubscribeOptions{}.replay == Replay::none());
  CHECK(Replay::last(0) == Replay::none());
  CHECK(Replay::last(5).count() == 5);
}

TEST_CASE("a replayed message is the subscriber's copy, made once per replay; live ones are not",
          "[retained]") {
  CountedGuard guard;
  {
    Broker<Counted> broker;
    broker.publish("c", Counted(7), retain);
    const long before = Counted::copies;
    auto sub = broker.subscribe("c", {.replay = Replay::last_value()});
    CHECK(Counted::copies == before + 1);  // one copy for this replay
    auto m = sub.try_receive();
    REQUIRE(m);
    CHECK(m->replayed());
    const Message<Counted> copy = *m;  // copying the handle copies no T and keeps the mark
    CHECK(copy.replayed());
    CHECK(&copy.value() == &m->value());
    CHECK(Counted::copies == before + 1);
    const auto kept = broker.retained("c");  // the retained one itself is not marked
    REQUIRE(kept);
    CHECK_FALSE(kept->replayed());
    CHECK(&kept->value() != &m->value());
    CHECK(m->sequence() == kept->sequence());
    CHECK(m->topic() == kept->topic());
    CHECK(m->published_at() == kept->published_at());
    static_assert(sizeof(Message<Counted>) == sizeof(void*));
  }
}

TEST_CASE("replay with a move-only message type is refused by name; retention still works",
          "[retained]") {
  Broker<std::unique_ptr<int>> broker;
  broker.publish("u", std::make_unique<int>(5), retain);
  REQUIRE(broker.retained("u"));
  CHECK(*broker.retained("u")->value() == 5);
  CHECK_THROWS_WITH(broker.subscribe("u", {.replay = Replay::last_value()}),
                    Catch::Matchers::Contains("SubscribeOptions::replay needs a copyable"));
  CHECK(broker.stats().subscriptions == 0);
  auto plain = broker.subscribe("u");  // without replay: fine
  broker.publish("u", std::make_unique<int>(6));
  REQUIRE(plain.try_receive());
}

TEST_CASE("wildcard replay covers every matching topic; for_each_retained and clear_retained",
          "[retained]") {
  Broker<int> broker;
  broker.publish("s.a.t", 1, retain);
  broker.publish("s.b.t", 2, retain);
  broker.publish("s.b.h", 3, retain);
  broker.publish("x.a.t", 4, retain);

  auto star = broker.subscribe("s.*.t", {.replay = Replay::last_value()});
  auto tail = broker.subscribe("s.>", {.replay = Replay::last_value()});
  auto all = broker.subscribe(">", {.replay = Replay::last_value()});
  auto literal = broker.subscribe("x.a.t", {.replay = Replay::last_value()});
  CHECK(drain(star).size() == 2);
  CHECK(drain(tail).size() == 3);
  CHECK(drain(all).size() == 4);
  CHECK(drain(literal) == std::vector<Seen>{{"x.a.t", 4, true}});

  std::map<std::string, int> visited;
  broker.for_each_retained("s.b.*", [&](const Message<int>& m) { visited[m.topic()] = *m; });
  CHECK(visited == std::map<std::string, int>{{"s.b.h", 3}, {"s.b.t", 2}});

  CHECK(broker.clear_retained("s.>") == 3);
  CHECK(broker.stats().retained_topics == 1);
  CHECK_FALSE(broker.retained("s.a.t"));
  CHECK(broker.retained("x.a.t"));
  broker.publish("s.a.t", 5, retain);  // retains again after a clear
  CHECK(**broker.retained("s.a.t") == 5);
}

TEST_CASE("a retain policy keeps the last N per topic; Replay::last(n) takes the newest n",
          "[retained]") {
  Broker<int> broker;
  broker.retain("log.>", {.last = 4});
  for (int i = 1; i <= 6; ++i) {
    broker.publish("log.a", i);  // retained by the policy, without the flag
    broker.publish("log.b", 10 + i);
  }
  broker.publish("other", 1);  // no policy, no flag: not retained
  CHECK(broker.stats().retained_messages == 8);
  CHECK_FALSE(broker.retained("other"));

  auto two = broker.subscribe("log.a", {.replay = Replay::last(2)});
  CHECK(drain(two) == std::vector<Seen>{{"log.a", 5, true}, {"log.a", 6, true}});
  auto many = broker.subscribe("log.b", {.replay = Replay::last(100)});
  std::vector<int> values;
  for (const Seen& s : drain(many))
    values.push_back(s.value);
  CHECK(values == std::vector<int>{13, 14, 15, 16});
  auto one = broker.subscribe("log.*", {.replay = Replay::last_value()});
  CHECK(drain(one).size() == 2);

  broker.retain("log.>", {.last = 1});  // replaced: trims what is kept at once
  CHECK(broker.stats().retained_messages == 2);
  std::vector<int> kept;
  broker.for_each_retained("log.*", [&](const Message<int>& m) { kept.push_back(*m); });
  std::sort(kept.begin(), kept.end());
  CHECK(kept == std::vector<int>{6, 16});

  // Removing the policy: later plain publishes are not retained; what is kept stays.
  CHECK(broker.stop_retaining("log.>"));
  CHECK_FALSE(broker.stop_retaining("log.>"));  // no longer there
  CHECK_FALSE(broker.stop_retaining("log.a"));  // never given
  broker.publish("log.a", 7);
  CHECK(**broker.retained("log.a") == 6);
  broker.publish("log.a", 8, retain);  // the flag still retains
  CHECK(**broker.retained("log.a") == 8);
  CHECK_THROWS_AS(broker.stop_retaining("log..a"), herald::InvalidTopic);
}

TEST_CASE("the memory bounds evict whole topics, least recently published first, counted",
          "[retained]") {
  SECTION("max_retained_topics") {
    Broker<int> broker(BrokerOptions{.max_retained_topics = 3});
    broker.publish("t.1", 1, retain);
    broker.publish("t.2", 2, retain);
    broker.publish("t.3", 3, retain);
    broker.publish("t.1", 11, retain);  // t.1 is now the most recent
    broker.publish("t.4", 4, retain);   // evicts t.2
    CHECK_FALSE(broker.retained("t.2"));
    CHECK(**broker.retained("t.1") == 11);
    CHECK(broker.retained("t.3"));
    CHECK(broker.retained("t.4"));
    const auto s = broker.stats();
    CHECK(s.retained_topics == 3);
    CHECK(s.retained_evicted == 1);
  }
  SECTION("max_retained_bytes: sizeof(T) + topic + headers") {
    // Each message of these is sizeof(int) + 3 bytes of topic.
    const std::size_t each = sizeof(int) + 3;
    Broker<int> broker(BrokerOptions{.max_retained_bytes = 2 * each});
    broker.publish("b.1", 1, retain);
    broker.publish("b.2", 2, retain);
    CHECK(broker.stats().retained_bytes == 2 * each);
    CHECK(broker.stats().retained_evicted == 0);
    broker.publish("b.3", 3, retain);
    CHECK_FALSE(broker.retained("b.1"));
    CHECK(broker.stats().retained_evicted == 1);
    herald::Headers h;
    h.add("k", "vv");
    broker.publish("b.4", 4, {.headers = h, .retain = true});  // each + 3: b.2 and b.3 go
    const auto s = broker.stats();
    CHECK(s.retained_topics == 1);
    CHECK(s.retained_bytes == each + 3);
    CHECK(s.retained_evicted == 3);
    CHECK(broker.retained("b.4")->headers().get("k") == "vv");
  }
  SECTION("a message bigger than the byte bound is kept alone") {
    Broker<int> broker(BrokerOptions{.max_retained_bytes = 1});
    broker.publish("big", 1, retain);
    broker.publish("big", 2, retain);
    CHECK(**broker.retained("big") == 2);
    broker.publish("big2", 3, retain);
    CHECK_FALSE(broker.retained("big"));
    CHECK(broker.stats().retained_evicted == 1);
  }
}

TEST_CASE("max_age: an old retained message is no longer replayed nor read", "[retained]") {
  Broker<int> broker(BrokerOptions{.retained_max_age = 1ms});
  broker.retain("keep.>", {.last = 1, .max_age = 1h});
  broker.publish("gone", 1, retain);
  broker.publish("keep.x", 2);
  std::this_thread::sleep_for(5ms);  // ages the messages past 1 ms (not a hand-off)
  CHECK_FALSE(broker.retained("gone"));
  CHECK(**broker.retained("keep.x") == 2);
  auto sub = broker.subscribe(">", {.replay = Replay::last_value()});
  CHECK(drain(sub) == std::vector<Seen>{{"keep.x", 2, true}});
  const auto s = broker.stats();
  CHECK(s.retained_expired == 1);
  CHECK(s.retained_topics == 1);
}

TEST_CASE("queue groups: the joining member alone is replayed; live messages are shared",
          "[retained]") {
  Broker<int> broker;
  broker.publish("job.a", 1, retain);
  broker.publish("job.b", 2, retain);
  auto first = broker.subscribe("job.*", {.queue_group = "workers"});
  auto second =
      broker.subscribe("job.*", {.queue_group = "workers", .replay = Replay::last_value()});
  CHECK(drain(first).empty());
  CHECK(drain(second).size() == 2);
  for (int i = 0; i < 10; ++i)
    broker.publish("job.a", 100 + i, retain);
  const auto a = drain(first);
  const auto b = drain(second);
  CHECK(a.size() + b.size() == 10);  // each live message to exactly one member
  for (const Seen& s : b)
    CHECK_FALSE(s.replayed);
}

TEST_CASE("handler subscriptions are replayed first, then live", "[retained]") {
  Broker<int> broker;
  broker.publish("h.a", 1, retain);
  broker.publish("h.b", 2, retain);
  std::vector<Seen> seen;
  auto h = broker.subscribe("h.*",
                            [&](const Message<int>& m) {
                              seen.push_back({m.topic(), *m, m.replayed()});
                            },
                            herald::inline_executor, {.replay = Replay::last_value()});
  CHECK(seen.size() == 2);  // inline: handled during the subscribe call
  broker.publish("h.a", 3);
  REQUIRE(seen.size() == 3);
  CHECK(seen[0].replayed);
  CHECK(seen[1].replayed);
  CHECK(seen[2] == Seen{"h.a", 3, false});
  CHECK(h.stats().invocations == 3);
}

TEST_CASE("a replay larger than the queue follows the subscriber's policy, counted", "[retained]") {
  Broker<int> broker;
  for (int i = 0; i < 10; ++i)
    broker.publish("r." + std::to_string(i), i, retain);
  SECTION("drop_incoming") {
    auto sub = broker.subscribe(
        "r.*",
        {.capacity = 4, .overflow = Overflow::drop_incoming, .replay = Replay::last_value()});
    const auto s = sub.stats();
    CHECK(s.offered == 10);
    CHECK(s.delivered == 4);
    CHECK(s.dropped_full == 6);
  }
  SECTION("drop_oldest keeps the newest") {
    auto sub = broker.subscribe(
        "r.*", {.capacity = 4, .overflow = Overflow::drop_oldest, .replay = Replay::last_value()});
    const auto s = sub.stats();
    CHECK(s.offered == 10);
    CHECK(s.delivered == 10);
    CHECK(s.evicted == 6);
    CHECK(drain(sub).size() == 4);
  }
  SECTION("disconnect closes it as a slow consumer, what fitted still drains") {
    auto sub = broker.subscribe("r.*", {.capacity = 4,
                                        .overflow = Overflow::disconnect,
                                        .disconnect_after = 2,
                                        .replay = Replay::last_value()});
    CHECK(sub.close_reason() == herald::CloseReason::slow_consumer);
    CHECK(drain(sub).size() == 4);
    CHECK(broker.stats().disconnects == 1);
  }
  SECTION("block does not wait in the subscribe call: it tries once") {
    auto sub = broker.subscribe(
        "r.*", {.capacity = 4, .overflow = Overflow::block, .replay = Replay::last_value()});
    const auto s = sub.stats();
    CHECK(s.delivered == 4);
    CHECK(s.dropped_timeout == 6);
    CHECK(s.offered == 10);
    // Live messages block as usual once subscribed: make room, then publish.
    CHECK(drain(sub).size() == 4);
    CHECK(broker.publish("r.1", 1).delivered == 1);
  }
  const auto b = broker.stats();
  CHECK(b.replayed == 10);
}

TEST_CASE("bad input gets clear errors and changes nothing", "[retained]") {
  Broker<int> broker;
  CHECK_THROWS_AS(broker.retain("a..b", {}), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.retain("a.>", {.last = 0}), std::invalid_argument);
  CHECK_THROWS_AS(broker.retain("a.>", {.last = Broker<int>::max_retained_per_topic + 1}),
                  std::invalid_argument);
  CHECK_THROWS_AS(broker.retain("a.>", {.max_age = -1ns}), std::invalid_argument);
  CHECK_THROWS_AS(broker.retained("a.*"), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.for_each_retained("a..", [](const Message<int>&) {}),
                  herald::InvalidTopic);
  CHECK_THROWS_AS(broker.clear_retained(""), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.publish("a.*", 1, retain), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.subscribe("a..b", {.replay = Replay::last_value()}), herald::InvalidTopic);
  CHECK_THROWS_AS(Broker<int>(BrokerOptions{.max_retained_topics = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Broker<int>(BrokerOptions{.max_retained_bytes = 0}), std::invalid_argument);
  CHECK_THROWS_AS(Broker<int>(BrokerOptions{.retained_max_age = -1ms}), std::invalid_argument);
  try {
    broker.retain("a.>", {.last = 0});
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("RetainPolicy::last") != std::string::npos);
  }
  const auto s = broker.stats();
  CHECK(s.retained_topics == 0);
  CHECK(s.subscriptions == 0);
}

TEST_CASE("Publisher and publish_from retain too; a closed broker retains nothing", "[retained]") {
  Broker<int> broker;
  auto pub = broker.publisher("p.x");
  pub.publish(1, {.retain = true});
  CHECK(**broker.retained("p.x") == 1);
  broker.publish_from(herald::Origin{7}, retain, "p.y", 2);
  CHECK(broker.retained("p.y")->origin() == 7);
  broker.close();
  CHECK(broker.publish("p.z", 3, retain).closed);
  CHECK_FALSE(broker.retained("p.z"));
  auto sub = broker.subscribe(">", {.replay = Replay::last_value()});
  CHECK(sub.close_reason() == herald::CloseReason::broker_closed);
}
