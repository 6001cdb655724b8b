// MetricsRegistry: what each family says after a known workload, label escaping, both formats,
// and promtool's verdict on every exposition written here (promtool check metrics).
#include <herald/circuit_breaker.hpp>
#include <herald/metrics.hpp>
#include <herald/worker_pool.hpp>

#include <unistd.h>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::DurationHistogram;
using herald::ExpositionFormat;
using herald::MetricsRegistry;

namespace {

struct PromtoolResult {
  bool ran = false;
  int status = 0;
  std::string output;
};

// Runs `promtool check metrics` on `text` (the 0.0.4 text format). Not run when the build found
// no promtool (HERALD_PROMTOOL empty): the scripts install it, so that is a local build only.
PromtoolResult promtool(const std::string& text) {
  PromtoolResult r;
  const std::string tool = HERALD_PROMTOOL;
  if (tool.empty()) return r;
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp && *tmp ? tmp : "/tmp";
  std::string in = dir + "/herald_metrics_XXXXXX";
  const int fd = ::mkstemp(in.data());
  if (fd < 0) return r;
  ::close(fd);
  std::ofstream(in) << text;
  const std::string out = in + ".out";
  const std::string cmd = "'" + tool + "' check metrics < '" + in + "' > '" + out + "' 2>&1";
  const int rc = std::system(cmd.c_str());
  r.ran = true;
  r.status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  std::ifstream f(out);
  r.output.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  std::remove(in.c_str());
  std::remove(out.c_str());
  return r;
}

void check_with_promtool(const std::string& text) {
  const PromtoolResult r = promtool(text);
  if (!r.ran) {
    WARN("promtool not found at build time: exposition not checked by promtool");
    return;
  }
  INFO(r.output);
  CHECK(r.status == 0);
  CHECK(r.output.empty());
}

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (l == line) return true;
  }
  return false;
}

/// The lines of `expected` that are not whole lines of `text` (checked as `== {}`, so a failure
/// prints them all).
std::vector<std::string> missing_lines(const std::string& text,
                                       std::initializer_list<std::string> expected) {
  std::vector<std::string> missing;
  for (const std::string& line : expected) {
    if (!has_line(text, line)) missing.push_back(line);
  }
  return missing;
}

struct FakeBridge {
  herald::BridgeStats s;
  herald::BridgeStats stats() const { return s; }
};

}  // namespace

TEST_CASE("duration histogram buckets are log-linear with inclusive upper bounds") {
  CHECK(DurationHistogram::upper_bound_ns(0) == 1024);
  CHECK(DurationHistogram::upper_bound_ns(1) == 1536);
  CHECK(DurationHistogram::upper_bound_ns(2) == 2048);
  CHECK(DurationHistogram::upper_bound_ns(3) == 3072);
  CHECK(DurationHistogram::upper_bound_ns(DurationHistogram::finite_buckets - 1) ==
        (std::uint64_t{1} << 34));
  CHECK(DurationHistogram::bucket_of(0) == 0);
  CHECK(DurationHistogram::bucket_of(1024) == 0);
  CHECK(DurationHistogram::bucket_of(1025) == 1);
  CHECK(DurationHistogram::bucket_of(1536) == 1);
  CHECK(DurationHistogram::bucket_of(1537) == 2);
  CHECK(DurationHistogram::bucket_of(std::uint64_t{1} << 34) ==
        DurationHistogram::finite_buckets - 1);
  CHECK(DurationHistogram::bucket_of((std::uint64_t{1} << 34) + 1) ==
        DurationHistogram::finite_buckets);
  CHECK(DurationHistogram::bucket_of(~std::uint64_t{0}) == DurationHistogram::finite_buckets);
  // Every bound falls in its own bucket, and one more nanosecond in the next.
  for (std::size_t i = 0; i < DurationHistogram::finite_buckets; ++i) {
    const std::uint64_t b = DurationHistogram::upper_bound_ns(i);
    CHECK(DurationHistogram::bucket_of(b) == i);
    CHECK(DurationHistogram::bucket_of(b + 1) == i + 1);
  }
}

TEST_CASE("an exposition reports a broker, its subscriptions, handlers, topics, pools, bridges") {
  Broker<int> broker;
  herald::WorkerPool pool(2, 256);
  broker.track_topics({"orders.>", "audit.*"});
  auto pull = broker.subscribe("orders.*", {.capacity = 4});
  auto grouped = broker.subscribe("orders.>", {.queue_group = "workers"});
  std::atomic<int> handled{0};
  auto handler = broker.subscribe(
      "orders.eu",
      [&](const herald::Message<int>& m) {
        if (*m == 13) throw std::runtime_error("unlucky");
        handled.fetch_add(1);
      },
      pool, {}, herald::HandlerOptions<int>{.retry = {.max_attempts = 2, .initial_backoff = 0ns}});
  for (int i = 0; i < 6; ++i)
    broker.publish("orders.eu", i);  // pull takes 4, drops 2
  broker.publish("orders.eu", 13);   // fails twice
  broker.publish("audit.x", 1);      // tracked, nobody subscribed
  broker.publish("other", 1);        // not tracked
  REQUIRE(handler.wait_idle(10s));
  REQUIRE(pull.try_receive());  // one taken: 3 queued
  REQUIRE(pull.try_receive());
  REQUIRE(pull.try_receive());

  FakeBridge bridge;
  bridge.s.exported = 5;
  bridge.s.sent = 4;
  bridge.s.dropped_overflow = 1;
  bridge.s.connected = true;
  bridge.s.js_acked = 7;
  bridge.s.js_retried = 2;
  bridge.s.js_in_flight = 3;
  bridge.s.js_duplicates = 5;
  bridge.s.js_dead_lettered = 1;

  MetricsRegistry metrics;
  metrics.add_broker("orders", broker, {{"service", "checkout"}});
  metrics.add_pool("handlers", pool);
  metrics.add_bridge("nats", bridge);
  const std::string text = metrics.exposition();
  INFO(text);

  const std::string b = "broker=\"orders\",service=\"checkout\"";
  CHECK(missing_lines(text, {"# TYPE herald_broker_published_total counter",
                             "herald_broker_published_total{" + b + "} 9",
                             "herald_broker_no_subscriber_total{" + b + "} 2",
                             "herald_broker_subscriptions{" + b + "} 3"}) ==
        std::vector<std::string>{});
  const std::string p =
      b + ",subscription=\"1\",pattern=\"orders.*\",queue_group=\"\",kind=\"pull\"";
  CHECK(missing_lines(text, {"herald_subscription_info{" + p + ",policy=\"drop_incoming\"} 1",
                             "herald_subscription_capacity{" + p + "} 4",
                             "herald_subscription_delivered_total{" + p + "} 4",
                             "herald_subscription_received_total{" + p + "} 3",
                             "herald_subscription_queue_depth{" + p + "} 1",
                             "herald_subscription_dropped_total{" + p + ",reason=\"full\"} 3",
                             "herald_subscription_dropped_total{" + p +
                                 ",reason=\"timeout\"} 0"}) == std::vector<std::string>{});
  const std::string g =
      b + ",subscription=\"2\",pattern=\"orders.>\",queue_group=\"workers\",kind=\"pull\"";
  CHECK(has_line(text, "herald_subscription_delivered_total{" + g + "} 7"));
  const std::string h =
      b + ",subscription=\"3\",pattern=\"orders.eu\",queue_group=\"\",kind=\"handler\"";
  CHECK(missing_lines(text, {"herald_handler_invocations_total{" + h + "} 8",
                             "herald_handler_errors_total{" + h + "} 2",
                             "herald_handler_retries_total{" + h + "} 1",
                             "herald_handler_duration_seconds_count{" + h + "} 8",
                             "herald_handler_duration_seconds_bucket{" + h + ",le=\"+Inf\"} 8"}) ==
        std::vector<std::string>{});
  CHECK(text.find("herald_handler_duration_seconds_bucket{" + h + ",le=\"1.024e-06\"}") !=
        std::string::npos);
  CHECK(text.find("herald_handler_duration_seconds_bucket{" + h + ",le=\"17.179869184\"} 8") !=
        std::string::npos);
  CHECK(text.find("herald_handler_invocations_total{" + p) == std::string::npos);  // pull: none
  CHECK(missing_lines(
            text, {"herald_topic_published_total{" + b + ",topic_pattern=\"orders.>\"} 7",
                   "herald_topic_dropped_total{" + b + ",topic_pattern=\"orders.>\"} 3",
                   "herald_topic_published_total{" + b + ",topic_pattern=\"audit.*\"} 1",
                   "herald_pool_threads{pool=\"handlers\"} 2",
                   "herald_bridge_sent_total{bridge=\"nats\"} 4",
                   "herald_bridge_export_dropped_total{bridge=\"nats\",reason=\"overflow\"} 1",
                   "herald_bridge_connected{bridge=\"nats\"} 1",
                   "herald_bridge_js_acked_total{bridge=\"nats\"} 7",
                   "herald_bridge_js_retried_total{bridge=\"nats\"} 2",
                   "herald_bridge_js_failed_total{bridge=\"nats\"} 0",
                   "herald_bridge_js_in_flight{bridge=\"nats\"} 3",
                   "herald_bridge_js_duplicates_total{bridge=\"nats\"} 5",
                   "herald_bridge_js_dead_lettered_total{bridge=\"nats\"} 1",
                   "# TYPE herald_bridge_js_pending_acks gauge"}) == std::vector<std::string>{});
  check_with_promtool(text);

  // The same through a stream.
  std::ostringstream os;
  metrics.write(os);
  CHECK(os.str().size() > 0);
  CHECK(os.str().find("herald_broker_published_total{" + b + "} 9") != std::string::npos);
}

TEST_CASE(
    "a handler's breaker refusals, breaker dead letters and deduplicated messages are exported") {
  Broker<int> broker;
  auto breaker = std::make_shared<herald::CircuitBreaker>();
  breaker->trip();  // open for the default 5 s cooldown
  auto refused = broker.subscribe(
      "guarded", [](const herald::Message<int>&) {}, herald::inline_executor, {},
      herald::HandlerOptions<int>{.breaker = breaker, .when_open = herald::WhenOpen::dead_letter});
  auto dedup = broker.subscribe(
      "dedup", [](const herald::Message<int>&) {}, herald::inline_executor, {},
      herald::HandlerOptions<int>{
          .dedup = {.key = [](const herald::Message<int>& m) { return std::uint64_t(*m); }}});
  for (const int v : {1, 2, 3})
    broker.publish("guarded", v);
  for (const int v : {1, 1, 2, 1})
    broker.publish("dedup", v);
  MetricsRegistry metrics;
  metrics.add_broker("b", broker);
  const std::string text = metrics.exposition();
  INFO(text);
  const std::string g =
      "broker=\"b\",subscription=\"1\",pattern=\"guarded\",queue_group=\"\","
      "kind=\"handler\"";
  const std::string d =
      "broker=\"b\",subscription=\"2\",pattern=\"dedup\",queue_group=\"\","
      "kind=\"handler\"";
  CHECK(missing_lines(text, {"herald_handler_breaker_refused_total{" + g + "} 3",
                             "herald_handler_breaker_dead_letters_total{" + g + "} 3",
                             "herald_handler_deduplicated_total{" + g + "} 0",
                             "herald_handler_deduplicated_total{" + d + "} 2",
                             "herald_handler_breaker_refused_total{" + d + "} 0"}) ==
        std::vector<std::string>{});
  check_with_promtool(text);
}

TEST_CASE("OpenMetrics names counter families without _total, declares units and ends in EOF") {
  Broker<int> broker;
  herald::WorkerPool pool(1, 256);
  auto sub = broker.subscribe(
      "a", [](const herald::Message<int>&) {}, pool);
  broker.publish("a", 1);
  REQUIRE(sub.wait_idle(10s));
  MetricsRegistry metrics;
  metrics.add_broker("b", broker);
  const std::string text = metrics.exposition(ExpositionFormat::openmetrics);
  INFO(text);
  CHECK(missing_lines(text, {"# TYPE herald_broker_published counter",
                             "herald_broker_published_total{broker=\"b\"} 1",
                             "# TYPE herald_subscription info",
                             "# TYPE herald_handler_duration_seconds histogram",
                             "# UNIT herald_handler_duration_seconds seconds"}) ==
        std::vector<std::string>{});
  CHECK(text.size() >= 6);
  CHECK(text.substr(text.size() - 6) == "# EOF\n");
  CHECK(herald::negotiate_format("application/openmetrics-text;version=1.0.0,text/plain;q=0.5") ==
        ExpositionFormat::openmetrics);
  CHECK(herald::negotiate_format("text/plain") == ExpositionFormat::prometheus);
  CHECK(herald::content_type(ExpositionFormat::prometheus) ==
        "text/plain; version=0.0.4; charset=utf-8");
}

TEST_CASE("label values are escaped; label names are validated; names are unique per kind") {
  Broker<int> broker;
  auto sub = broker.subscribe("a", {.queue_group = "q\\\"x"});
  MetricsRegistry metrics;
  metrics.add_broker("we\"ird\\name\nx", broker, {{"note", "multi\nline \"quoted\" \\"}});
  const std::string text = metrics.exposition();
  INFO(text);
  CHECK(text.find("broker=\"we\\\"ird\\\\name\\nx\",note=\"multi\\nline \\\"quoted\\\" \\\\\"") !=
        std::string::npos);
  CHECK(text.find("queue_group=\"q\\\\\\\"x\"") != std::string::npos);
  check_with_promtool(text);

  CHECK_THROWS_AS(metrics.add_broker("we\"ird\\name\nx", broker), std::invalid_argument);
  CHECK_THROWS_AS(metrics.add_broker("x", broker, {{"1bad", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(metrics.add_broker("x", broker, {{"__reserved", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(metrics.add_broker("x", broker, {{"pattern", "v"}}), std::invalid_argument);
  CHECK_THROWS_AS(metrics.add_broker("x", broker, {{"with-dash", "v"}}), std::invalid_argument);
  CHECK(metrics.remove("we\"ird\\name\nx"));
  CHECK_FALSE(metrics.remove("we\"ird\\name\nx"));
  CHECK(metrics.exposition().empty());
  CHECK(metrics.exposition(ExpositionFormat::openmetrics) == "# EOF\n");
}

TEST_CASE("lag is zero for an empty queue and grows while messages wait") {
  Broker<int> broker;
  auto sub = broker.subscribe("a");
  const auto lag = [&] {
    std::chrono::nanoseconds l{-1};
    broker.for_each_subscription([&](const herald::SubscriptionInfo& i) { l = i.lag; });
    return l;
  };
  CHECK(lag() == 0ns);
  broker.publish("a", 1);
  const auto first = lag();
  CHECK(first > 0ns);
  CHECK(herald_test::eventually([&] { return lag() > first; }));
  REQUIRE(sub.try_receive());
  CHECK(lag() == 0ns);
}

TEST_CASE("slow-consumer disconnects are counted by the broker") {
  Broker<int> broker;
  auto sub = broker.subscribe("a", {.capacity = 1, .overflow = herald::Overflow::disconnect});
  broker.publish("a", 1);
  broker.publish("a", 2);  // full: disconnected
  CHECK(sub.close_reason() == herald::CloseReason::slow_consumer);
  CHECK(broker.stats().disconnects == 1);
  MetricsRegistry metrics;
  metrics.add_broker("b", broker);
  CHECK(has_line(metrics.exposition(), "herald_broker_disconnects_total{broker=\"b\"} 1"));
}

TEST_CASE("retained messages, replays and evictions are exported per broker") {
  Broker<int> broker(herald::BrokerOptions{.max_retained_topics = 2});
  broker.publish("s.a", 1, {.retain = true});
  broker.publish("s.b", 2, {.retain = true});
  broker.publish("s.c", 3, {.retain = true});  // a third topic: s.a is evicted
  auto late = broker.subscribe("s.*", {.replay = herald::Replay::last_value()});
  MetricsRegistry metrics;
  metrics.add_broker("b", broker);
  const std::string text = metrics.exposition();
  INFO(text);
  CHECK(missing_lines(text, {"# TYPE herald_broker_retained_topics gauge",
                             "herald_broker_retained_topics{broker=\"b\"} 2",
                             "herald_broker_retained_messages{broker=\"b\"} 2",
                             "herald_broker_retained_evicted_total{broker=\"b\"} 1",
                             "herald_broker_retained_expired_total{broker=\"b\"} 0",
                             "herald_broker_replayed_total{broker=\"b\"} 2"}) ==
        std::vector<std::string>{});
  CHECK(text.find("herald_broker_retained_bytes{broker=\"b\"} ") != std::string::npos);
  check_with_promtool(text);
}

TEST_CASE("flow control is exported: expired messages, pending retries, pool timers") {
  herald::WorkerPool pool(1, 64);
  Broker<int> broker;
  auto old = broker.subscribe("old", {.max_age = 1ms});
  broker.publish("old", 1);
  std::this_thread::sleep_for(5ms);
  CHECK_FALSE(old.try_receive());  // too old: discarded, counted
  auto failing = broker.subscribe(
      "fail", [](const herald::Message<int>&) { throw std::runtime_error("no"); }, pool, {},
      herald::HandlerOptions<int>{.retry = {.max_attempts = 3,
                                            .initial_backoff = std::chrono::hours(1),
                                            .max_backoff = std::chrono::hours(1)}});
  broker.publish("fail", 1);
  REQUIRE(herald_test::eventually([&] { return failing.stats().retries_pending == 1; }));
  herald::WorkerPool timers(1, 8);  // not `pool`: the retry's timer waits there too
  auto timer = timers.schedule_after(std::chrono::hours(1), [] {});
  MetricsRegistry metrics;
  metrics.add_broker("b", broker);
  metrics.add_pool("t", timers);
  const std::string text = metrics.exposition();
  INFO(text);
  // The subscription series carry several labels: find the line by family, pattern and value.
  const auto has_sample = [&](const std::string& family, const std::string& pattern,
                              const std::string& value) {
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind(family + "{", 0) == 0 &&
          line.find("pattern=\"" + pattern + "\"") != std::string::npos &&
          line.size() > value.size() &&
          line.substr(line.size() - value.size() - 1) == " " + value) {
        return true;
      }
    }
    return false;
  };
  CHECK(has_sample("herald_subscription_expired_total", "old", "1"));
  CHECK(has_sample("herald_handler_retries_pending", "fail", "1"));
  CHECK(has_line(text, "herald_pool_timers_pending{pool=\"t\"} 1"));
  check_with_promtool(text);
  CHECK(timer.cancel());
}

TEST_CASE("track_topics validates, bounds and replaces the tracked set") {
  Broker<int> broker;
  CHECK_THROWS_AS(broker.track_topics({"a..b"}), herald::InvalidTopic);
  CHECK_THROWS_AS(broker.track_topics(std::vector<std::string>(300, "a")), std::invalid_argument);
  broker.track_topics({"a.*"});
  auto pub = broker.publisher("a.b");
  pub.publish(1);
  broker.track_topics({"x", "a.*"});  // kept: its counter too; the publisher re-resolves
  pub.publish(2);
  std::vector<std::pair<std::string, std::uint64_t>> seen;
  broker.for_each_topic(
      [&](const herald::TopicStats& t) { seen.emplace_back(std::string(t.pattern), t.published); });
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == std::pair<std::string, std::uint64_t>{"x", 0});
  CHECK(seen[1] == std::pair<std::string, std::uint64_t>{"a.*", 2});
}

TEST_CASE("an exposition of a thousand subscriptions passes promtool") {
  Broker<int> broker;
  herald::WorkerPool pool(1, 256);
  std::vector<herald::Subscription<int>> subs;
  std::vector<herald::HandlerSubscription<int>> handlers;
  for (int i = 0; i < 900; ++i)
    subs.push_back(broker.subscribe("t." + std::to_string(i % 50), {.capacity = 8}));
  for (int i = 0; i < 100; ++i)
    handlers.push_back(broker.subscribe(
        "t.>", [](const herald::Message<int>&) {}, pool));
  for (int i = 0; i < 50; ++i)
    broker.publish("t." + std::to_string(i), i);
  MetricsRegistry metrics;
  metrics.add_broker("big", broker);
  metrics.add_pool("pool", pool);
  const std::string text = metrics.exposition();
  CHECK(text.find("subscription=\"1000\"") != std::string::npos);
  check_with_promtool(text);
}
