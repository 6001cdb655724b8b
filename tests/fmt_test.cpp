// herald/fmt.hpp: fmt formatters for every stats struct, the enums, Pattern, InvalidTopic and
// Message<T>.
#include <herald/broker.hpp>
#include <herald/fmt.hpp>

#include <fmt/format.h>

#include <chrono>
#include <string>
#include <vector>

#include "catch.hpp"

TEST_CASE("the enums format as their names", "[fmt]") {
  CHECK(fmt::format("{}", herald::Overflow::drop_oldest) == "drop_oldest");
  CHECK(fmt::format("{:>8}", herald::Overflow::block) == "   block");
  CHECK(fmt::format("{}", herald::CloseReason::slow_consumer) == "slow_consumer");
  CHECK(fmt::format("{}", herald::SubscriptionKind::handler) == "handler");
}

TEST_CASE("stats structs format every field by name", "[fmt]") {
  herald::Broker<int> broker;
  auto sub = broker.subscribe("a.*", {.capacity = 1});
  const auto r1 = broker.publish("a.b", 1);
  broker.publish("a.c", 2);  // the queue holds one: dropped
  CHECK(fmt::format("{}", r1) ==
        "PublishResult{matched: 1, delivered: 1, dropped: 0, evicted: 0, closed: false}");
  CHECK(fmt::format("{}", broker.stats()) ==
        "BrokerStats{published: 2, delivered: 1, dropped: 1, evicted: 0, no_subscriber: 0, "
        "subscriptions: 1, disconnects: 0, replayed: 0, retained_topics: 0, retained_messages: 0, "
        "retained_bytes: 0, retained_evicted: 0, retained_expired: 0}");
  CHECK(fmt::format("{}", sub.stats()) ==
        "SubscriptionStats{offered: 2, delivered: 1, dropped: 1, dropped_full: 1, "
        "dropped_timeout: 0, evicted: 0, received: 0, expired: 0, queue_depth: 1, "
        "high_water_mark: 1, close_reason: open}");
  const std::string handler = fmt::format("{}", herald::HandlerStats{});
  CHECK(handler.find("HandlerStats{offered: 0,") == 0);
  CHECK(handler.find("invocations: 0, failures: 0, retries: 0, dead_lettered: 0, "
                     "breaker_refused: 0, breaker_dead_lettered: 0, deduplicated: 0, "
                     "retries_pending: 0, retries_cancelled: 0, rate_limited: 0, in_flight: 0, "
                     "handler_time_total: 0ns, handler_time_max: 0ns}") != std::string::npos);
  CHECK(fmt::format("{}", herald::WorkerPoolStats{1, 2, 3, 4, 5}) ==
        "WorkerPoolStats{submitted: 1, completed: 2, failed: 3, queued: 4, threads: 5, stolen: 0, "
        "parked: 0, timers_pending: 0, timers_fired: 0, timers_cancelled: 0, "
        "timers_abandoned: 0}");
  herald::DurationHistogram h;
  h.counts[0] = 1;
  h.counts[2] = 2;
  h.counts[herald::DurationHistogram::finite_buckets] = 1;
  h.sum = std::chrono::nanoseconds(5200);
  CHECK(fmt::format("{}", h) ==
        "DurationHistogram{count: 4, sum: 5200ns, le 1024ns: 1, le 2048ns: 2, le +Inf: 1}");
  CHECK(fmt::format("{}", herald::TopicStats{"a.>", 3, 1}) ==
        "TopicStats{pattern: a.>, published: 3, dropped: 1}");
  const std::string bridge = fmt::format("{}", herald::BridgeStats{});
  CHECK(bridge.find("BridgeStats{exported: 0, sent: 0,") == 0);
  CHECK(bridge.find("connected: false}") != std::string::npos);
  CHECK(bridge.find("js_acked: 0, js_retried: 0, js_failed: 0, js_in_flight: 0") !=
        std::string::npos);
  CHECK(bridge.find("js_duplicates: 0") != std::string::npos);
  std::vector<std::string> infos;
  broker.for_each_subscription(
      [&](const herald::SubscriptionInfo& i) { infos.push_back(fmt::format("{}", i)); });
  REQUIRE(infos.size() == 1);
  CHECK(infos[0].find("SubscriptionInfo{id: 1, kind: pull, pattern: a.*, capacity: 1, overflow: "
                      "drop_incoming, queue_group: , offered: 2,") == 0);
}

TEST_CASE("a message formats as topic, sequence and value; the spec applies to the value",
          "[fmt]") {
  const auto m = herald::Message<int>::make("orders.eu", 17, 0, 42);
  CHECK(fmt::format("{}", m) == "orders.eu #17: 42");
  CHECK(fmt::format("{:>4}", m) == "orders.eu #17:   42");
  const auto s = herald::Message<std::string>::make("t", 1, 0, "hi");
  CHECK(fmt::format("{}", s) == "t #1: hi");
}

TEST_CASE("a pattern formats as its text and an invalid topic as its message", "[fmt]") {
  CHECK(fmt::format("{}", herald::Pattern("orders.*.created")) == "orders.*.created");
  try {
    herald::validate_topic("a..b");
    FAIL("validate_topic accepted 'a..b'");
  } catch (const herald::InvalidTopic& e) {
    CHECK(fmt::format("{}", e) == "empty token at offset 2 in topic 'a..b'");
  }
}
