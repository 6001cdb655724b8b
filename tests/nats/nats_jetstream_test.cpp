// At-least-once bridging through JetStream (ExportRule::jetstream, ImportRule::jetstream) against a
// real nats-server with JetStream on (file storage in a temporary directory): a stream of
// messages survives the server being killed (SIGKILL) and restarted several times with nothing
// lost and, with the import's dedup window, nothing seen twice by a subscriber, every counter
// adding up; a message no subscriber queues is nak'ed and redelivered, and dead-lettered after
// max_deliver; manual acks; a missing stream or consumer is a clear error with nothing left
// running; bad options are refused; a nats.go JetStream consumer ("[go]") reads what herald
// exported.
//
// HERALD_JS_MESSAGES sets the number of messages of the restart test (default 100,000; 10,000
// in sanitizer builds).
#include <herald/nats.hpp>

#include <nats/nats.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "bridge_errors.hpp"
#include "catch.hpp"
#include "jetstream_support.hpp"
#include "nats_server.hpp"
#include "test_support.hpp"

extern char** environ;

using namespace std::chrono_literals;
using herald::Broker;
using herald::Overflow;
using herald::nats::AckMode;
using herald::nats::Bridge;
using herald::nats::BridgeError;
using herald::nats::ErrorKind;
using herald::nats::JetStreamExport;
using herald::nats::JetStreamImport;
using herald_test::eventually;
using herald_test::JetStreamServer;
using herald_test::JsClient;
using herald_test::NatsServer;

using Errors = herald_test::BridgeErrors;

namespace {

std::size_t message_count() {
  if (const char* env = std::getenv("HERALD_JS_MESSAGES")) return std::stoull(env);
#if defined(HERALD_SANITIZED_BUILD)
  return 10'000;
#else
  return 100'000;
#endif
}

const herald::nats::ReconnectPolicy fast{.initial = 5ms, .max = 100ms};

JetStreamExport to_stream(const char* name) {
  return {.stream = {.name = name, .create = true}, .ack_timeout = 2000ms};
}

JetStreamImport from_stream(const char* name, const char* durable) {
  return {.stream = {.name = name, .create = true}, .durable = durable};
}

/// An export rule with `js`, built field by field: g++ 12 -O3 warns wrongly (maybe-uninitialized,
/// in the rule's queue_group string) when `.exports = {{..., .jetstream = js}}` is braced.
herald::nats::ExportRule js_export(std::string pattern, JetStreamExport js,
                                   herald::SubscribeOptions queue = {.capacity = 8192}) {
  herald::nats::ExportRule rule;
  rule.pattern = std::move(pattern);
  rule.queue = std::move(queue);
  rule.jetstream = std::move(js);
  return rule;
}

}  // namespace

TEST_CASE(
    "at least once through JetStream: kill -9 and restart the server mid-stream, nothing lost, "
    "no duplicate reaches a subscriber, the counters add up",
    "[nats][jetstream]") {
  const std::size_t n = message_count();
  constexpr std::uint64_t kPublishers = 2;
  constexpr int kRestarts = 3;
  JetStreamServer js;
  Errors export_errors;
  Errors import_errors;
  Broker<std::uint64_t> a;
  Broker<std::uint64_t> b;
  auto out = to_stream("ORDERS");
  out.stream.subjects = {"orders.>"};
  out.max_in_flight = 1024;
  Bridge<std::uint64_t> ab(
      a, {.url = js.server.url(),
          .exports = {js_export("orders.>", out, {.capacity = 4096, .overflow = Overflow::block})},
          .reconnect = fast,
          .on_error = export_errors.sink()});
  auto in = from_stream("ORDERS", "importer");
  in.dedup_window = 2 * n;
  in.ack_wait = 5s;
  in.max_deliver = 1000;  // nothing here should be dead-lettered
  // Subscribed before the bridge starts fetching: nothing is imported to nobody.
  auto at_b = b.subscribe("orders.>", {.capacity = n + 1024, .overflow = Overflow::block});
  Bridge<std::uint64_t> bb(b, {.url = js.server.url(),
                               .imports = {{.pattern = "orders.>", .jetstream = in}},
                               .reconnect = fast,
                               .on_error = import_errors.sink()});

  // The oracle: how often each (publisher, sequence) reached the subscriber.
  std::vector<std::vector<std::uint32_t>> seen(kPublishers,
                                               std::vector<std::uint32_t>(n / kPublishers + 1, 0));
  // `seen` is the consumer thread's until it is joined; the test thread watches the atomics.
  std::atomic<std::uint64_t> received{0};
  std::atomic<std::uint64_t> distinct{0};
  std::atomic<std::uint64_t> out_of_range{0};
  std::jthread consumer([&](std::stop_token stop) {
    while (auto m = at_b.receive(stop)) {
      const std::uint64_t p = **m >> 32;
      const std::uint64_t i = **m & 0xffffffffu;
      if (p >= kPublishers || i == 0 || i > n / kPublishers) {
        out_of_range.fetch_add(1);
      } else if (seen[p][i]++ == 0) {
        distinct.fetch_add(1);
      }
      received.fetch_add(1, std::memory_order_release);
    }
  });

  std::atomic<std::uint64_t> published{0};
  std::vector<std::jthread> publishers;
  for (std::uint64_t p = 0; p < kPublishers; ++p) {
    publishers.emplace_back([&, p] {
      auto pub = a.publisher("orders.p" + std::to_string(p));
      for (std::uint64_t i = 1; i <= n / kPublishers; ++i) {
        pub.publish((p << 32) | i);  // block: waits while max_in_flight are unacknowledged
        published.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }

  const std::size_t total = (n / kPublishers) * kPublishers;
  for (int r = 1; r <= kRestarts; ++r) {
    // Each restart in the middle of the stream: once a share of it was published and some of
    // that arrived, so that messages are in flight both ways.
    const std::uint64_t mark = total * static_cast<std::uint64_t>(r) / (kRestarts + 1);
    REQUIRE(eventually([&] { return published.load() >= mark; }, 120s));
    REQUIRE(eventually([&] { return received.load() > 0; }, 60s));
    js.server.stop();  // SIGKILL
    REQUIRE(eventually([&] { return !ab.is_connected() && !bb.is_connected(); }, 30s));
    std::this_thread::sleep_for(200ms);  // the outage lasts a while
    js.server.start();
    REQUIRE(eventually([&] { return ab.is_connected() && bb.is_connected(); }, 30s));
  }
  publishers.clear();
  CHECK(published.load() == total);
  REQUIRE(ab.flush(120s));  // every message acknowledged by the stream
  REQUIRE(eventually([&] { return distinct.load() == total; }, 180s));
  // Settle: what is still being redelivered (an ack lost in the last restart) is suppressed.
  std::this_thread::sleep_for(500ms);
  consumer.request_stop();
  consumer.join();

  std::uint64_t lost = 0;
  std::uint64_t visible_duplicates = 0;
  for (auto& per : seen) {
    for (std::size_t i = 1; i < per.size(); ++i) {
      lost += per[i] == 0;
      visible_duplicates += per[i] > 1 ? per[i] - 1 : 0;
    }
  }
  const auto as = ab.stats();
  const auto bs = bb.stats();
  JsClient other(js.server.url());
  const std::uint64_t stored = other.stream_messages("ORDERS");
  std::cout << "jetstream restart: " << kRestarts << " kill -9 restarts, " << total
            << " messages published; exporter: sent " << as.sent << ", acked " << as.js_acked
            << ", retried " << as.js_retried << ", failed " << as.js_failed << ", dropped "
            << as.dropped() << "; stream holds " << stored << "; importer: received (deliveries) "
            << bs.received << ", imported " << bs.imported << ", duplicates suppressed "
            << bs.js_duplicates << ", acked " << bs.js_acked_in << ", nacked " << bs.js_nacked
            << ", not queued " << bs.js_not_queued << ", ack failures " << bs.js_ack_failed
            << ", dead-lettered " << bs.js_dead_lettered << "; subscriber: delivered "
            << received.load() << ", lost " << lost << ", visible duplicates " << visible_duplicates
            << "; disconnects " << as.disconnects << "/" << bs.disconnects << "\n";
  CHECK(lost == 0);
  CHECK(visible_duplicates == 0);
  CHECK(out_of_range.load() == 0);
  CHECK(received.load() == total);
  // Export: every message sent once, acknowledged once (resends are counted apart).
  CHECK(as.exported == total);
  CHECK(as.dropped() == 0);
  CHECK(as.sent == total);
  CHECK(as.js_acked == total);
  CHECK(as.js_failed == 0);
  CHECK(as.js_in_flight == 0);
  CHECK(as.disconnects >= kRestarts);
  // Import: each delivery ends one way, and one answer went back for each.
  CHECK(bs.imported == total);
  CHECK(bs.received == bs.imported + bs.js_duplicates + bs.js_not_queued + bs.echoes + bs.rejected +
                           bs.dropped_decode + bs.import_failed);
  CHECK(bs.received == bs.js_acked_in + bs.js_nacked + bs.js_dead_lettered + bs.js_ack_failed);
  CHECK(bs.js_not_queued == 0);
  CHECK(bs.js_dead_lettered == 0);
  CHECK(bs.disconnects >= kRestarts);
  // The stream itself dropped the exporter's resends by their Nats-Msg-Id.
  CHECK(stored == total);
  for (const auto& e : export_errors.snapshot())
    CHECK(e.kind == ErrorKind::connection);
}

TEST_CASE(
    "a message a full block subscriber does not queue is nak'ed and delivered once there is room",
    "[nats][jetstream]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("TASKS", "tasks.>");
  Broker<std::uint64_t> broker;
  // Room for one message, and a publisher gives up after 20 ms.
  auto sub = broker.subscribe("tasks.>",
                              {.capacity = 1, .overflow = Overflow::block, .block_timeout = 20ms});
  broker.publish("tasks.local", 1);  // fills it
  auto in = from_stream("TASKS", "worker");
  in.stream.create = false;
  in.nak_initial = 50ms;
  in.nak_max = 200ms;
  in.max_deliver = 1000;
  Bridge<std::uint64_t> bridge(
      broker, {.url = js.server.url(), .imports = {{.pattern = "tasks.>", .jetstream = in}}});
  other.publish<std::uint64_t>("tasks.remote", 42);
  REQUIRE(eventually([&] { return bridge.stats().js_nacked >= 2; }));
  CHECK(bridge.stats().imported == 0);
  // Room again: the next redelivery is queued and acknowledged.
  auto first = sub.receive_for(1s);
  REQUIRE(first);
  CHECK(**first == 1);
  auto remote = sub.receive_for(20s);
  REQUIRE(remote);
  CHECK(**remote == 42);
  CHECK(remote->topic() == "tasks.remote");
  CHECK(remote->headers().get("Nats-Msg-Id") == std::nullopt);  // other published without one
  REQUIRE(eventually([&] { return bridge.stats().js_acked_in == 1; }));
  const auto s = bridge.stats();
  CHECK(s.imported == 1);
  CHECK(s.js_not_queued == s.js_nacked);
  CHECK(s.received == s.js_nacked + 1);
  CHECK(s.js_dead_lettered == 0);
  CHECK_FALSE(sub.receive_for(300ms));  // once
}

TEST_CASE("after max_deliver a message goes to the dead-letter subject with why, and is terminated",
          "[nats][jetstream]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("JOBS", "jobs.>");
  other.add_stream("DEAD", "dead.>");
  Errors errors;
  Broker<std::uint64_t> broker;
  // Never room: every delivery is refused.
  auto sub = broker.subscribe("jobs.>", {.capacity = 1, .overflow = Overflow::drop_incoming});
  broker.publish("jobs.local", 1);
  auto in = from_stream("JOBS", "jobs");
  in.max_deliver = 3;
  in.nak_initial = 10ms;
  in.dead_letter_subject = "dead.jobs";
  Bridge<std::uint64_t> bridge(broker, {.url = js.server.url(),
                                        .imports = {{.pattern = "jobs.>", .jetstream = in}},
                                        .on_error = errors.sink()});
  other.publish<std::uint64_t>("jobs.x", 7);
  REQUIRE(eventually([&] { return bridge.stats().js_dead_lettered == 1; }, 30s));
  auto s = bridge.stats();
  CHECK(s.js_nacked == 2);
  CHECK(s.js_not_queued == 3);
  CHECK(s.received == 3);
  CHECK(s.imported == 0);

  // The dead letter: the payload, and why.
  natsSubscription* dead = nullptr;
  REQUIRE(js_SubscribeSync(&dead, other.js, "dead.>", nullptr, nullptr, nullptr) == NATS_OK);
  natsMsg* m = nullptr;
  REQUIRE(natsSubscription_NextMsg(&m, dead, 10000) == NATS_OK);
  std::uint64_t v = 0;
  REQUIRE(natsMsg_GetDataLength(m) == sizeof v);
  std::memcpy(&v, natsMsg_GetData(m), sizeof v);
  CHECK(v == 7);
  const char* h = nullptr;
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Reason", &h) == NATS_OK);
  CHECK_THAT(std::string(h), Catch::Matchers::Contains("did not queue") &&
                                 Catch::Matchers::Contains("max_deliver 3"));
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Subject", &h) == NATS_OK);
  CHECK(std::string(h) == "jobs.x");
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Deliveries", &h) == NATS_OK);
  CHECK(std::string(h) == "3");
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Stream", &h) == NATS_OK);
  CHECK(std::string(h) == "JOBS");
  natsMsg_Destroy(m);
  natsSubscription_Unsubscribe(dead);
  natsSubscription_Destroy(dead);

  // Terminated: not delivered again.
  std::this_thread::sleep_for(500ms);
  s = bridge.stats();
  CHECK(s.received == 3);
  bool reported = false;
  for (const auto& e : errors.snapshot())
    reported = reported || (e.kind == ErrorKind::dead_lettered && e.subject == "jobs.x");
  CHECK(reported);

  // A payload the codec refuses can never be imported: dead-lettered at its first delivery.
  jsPubAck* ack = nullptr;
  REQUIRE(js_Publish(&ack, other.js, "jobs.bad", "abc", 3, nullptr, nullptr) == NATS_OK);
  jsPubAck_Destroy(ack);
  REQUIRE(eventually([&] { return bridge.stats().js_dead_lettered == 2; }, 30s));
  s = bridge.stats();
  CHECK(s.dropped_decode == 1);
  CHECK(s.received == 4);
  CHECK(s.js_nacked == 2);
  REQUIRE(js_SubscribeSync(&dead, other.js, "dead.>", nullptr, nullptr, nullptr) == NATS_OK);
  REQUIRE(natsSubscription_NextMsg(&m, dead, 10000) == NATS_OK);  // the first dead letter
  natsMsg_Destroy(m);
  REQUIRE(natsSubscription_NextMsg(&m, dead, 10000) == NATS_OK);
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Reason", &h) == NATS_OK);
  CHECK_THAT(std::string(h), Catch::Matchers::Contains("cannot be decoded"));
  REQUIRE(natsMsgHeader_Get(m, "Herald-Dead-Deliveries", &h) == NATS_OK);
  CHECK(std::string(h) == "1");
  CHECK(std::string(natsMsg_GetData(m), 3) == "abc");
  natsMsg_Destroy(m);
  natsSubscription_Unsubscribe(dead);
  natsSubscription_Destroy(dead);
}

TEST_CASE("manual acks: the application acks or naks each message once its handler is done",
          "[nats][jetstream]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("MAIL", "mail.>");
  Broker<std::uint64_t> broker;
  auto sub = broker.subscribe("mail.>", {.capacity = 64});
  auto in = from_stream("MAIL", "mailer");
  in.ack = AckMode::manual;
  in.nak_initial = 10ms;
  Bridge<std::uint64_t> bridge(
      broker, {.url = js.server.url(), .imports = {{.pattern = "mail.>", .jetstream = in}}});
  for (std::uint64_t v = 1; v <= 5; ++v)
    other.publish<std::uint64_t>("mail.out", v);
  std::vector<std::uint64_t> got;
  bool naked_once = false;
  while (got.size() < 5) {
    auto m = sub.receive_for(10s);
    REQUIRE(m);
    CHECK(m->headers().get("Herald-Ack").has_value());
    if (**m == 3 && !naked_once) {
      CHECK(bridge.nak(*m));        // the handler failed: redelivered after the backoff
      CHECK_FALSE(bridge.ack(*m));  // settled already
      naked_once = true;
      continue;
    }
    CHECK(bridge.ack(*m));
    CHECK_FALSE(bridge.ack(*m));
    got.push_back(**m);
  }
  std::sort(got.begin(), got.end());
  CHECK(got == std::vector<std::uint64_t>{1, 2, 3, 4, 5});
  // The fetching thread counts an import once publish returned: the ack may come first.
  REQUIRE(eventually([&] {
    const auto st = bridge.stats();
    return st.js_acked_in == 5 && st.imported == 6;
  }));
  const auto s = bridge.stats();
  INFO("received " << s.received << " imported " << s.imported << " duplicates " << s.js_duplicates
                   << " acked " << s.js_acked_in << " nacked " << s.js_nacked);
  CHECK(s.js_nacked == 1);
  CHECK(s.js_pending_acks == 0);
  CHECK(s.received == 6);
  CHECK(s.imported == 6);
  // A message from elsewhere is not this bridge's to ack.
  herald::Message<std::uint64_t> local = [&] {
    auto probe = broker.subscribe("local", {.capacity = 1});
    broker.publish("local", 9);
    return *probe.receive_for(1s);
  }();
  CHECK_FALSE(bridge.ack(local));
  CHECK_FALSE(sub.receive_for(300ms));
}

TEST_CASE("a missing stream or consumer is a clear NatsError and leaves nothing running",
          "[nats][jetstream]") {
  JetStreamServer js;
  Broker<std::uint64_t> broker;
  auto message_of = [&](herald::nats::BridgeOptions o) -> std::string {
    o.url = js.server.url();
    try {
      Bridge<std::uint64_t> bridge(broker, std::move(o));
    } catch (const herald::nats::NatsError& e) {
      return std::string("NatsError: ") + e.what();
    }
    return "no error";
  };
  using Catch::Matchers::Contains;
  using Catch::Matchers::StartsWith;
  JetStreamExport missing{.stream = {.name = "NOPE"}};
  CHECK_THAT(message_of({.exports = {js_export("x.>", missing)}}),
             StartsWith("NatsError") && Contains("the export of 'x.>'") &&
                 Contains("stream 'NOPE' does not exist"));
  JetStreamImport missing_in{.stream = {.name = "NOPE"}, .durable = "d"};
  CHECK_THAT(message_of({.imports = {{.pattern = "x.>", .jetstream = missing_in}}}),
             StartsWith("NatsError") && Contains("the import of 'x.>'") &&
                 Contains("stream 'NOPE' does not exist"));
  JsClient other(js.server.url());
  other.add_stream("THERE", "x.>");
  JetStreamImport no_consumer{
      .stream = {.name = "THERE"}, .durable = "absent", .create_consumer = false};
  CHECK_THAT(message_of({.imports = {{.pattern = "x.>", .jetstream = no_consumer}}}),
             StartsWith("NatsError") && Contains("consumer 'absent'") &&
                 Contains("does not exist and create_consumer is false"));
  // An export that came before the failing import is gone too.
  CHECK_THAT(message_of({.exports = {js_export("y.>", to_stream("Y"))},
                         .imports = {{.pattern = "x.>", .jetstream = missing_in}}}),
             StartsWith("NatsError"));
  CHECK(broker.stats().subscriptions == 0);
  // JetStream off: said so.
  NatsServer plain;
  try {
    Bridge<std::uint64_t> bridge(
        broker, {.url = plain.url(), .exports = {js_export("x.>", to_stream("S"))}});
    FAIL("no error");
  } catch (const herald::nats::NatsError& e) {
    CHECK_THAT(std::string(e.what()), Contains("JetStream is not enabled"));
  }
}

TEST_CASE("bad JetStream options are refused with a clear error before anything is connected",
          "[nats][jetstream]") {
  Broker<std::uint64_t> broker;
  auto message_of = [&](herald::nats::BridgeOptions o) {
    return herald_test::construction_error(broker, std::move(o));
  };
  using Catch::Matchers::Contains;
  using Catch::Matchers::StartsWith;
  auto out = [](auto change) {
    JetStreamExport o{.stream = {.name = "S"}};
    change(o);
    return herald::nats::BridgeOptions{.exports = {js_export("a.>", o)}};
  };
  auto in = [](auto change) {
    JetStreamImport o{.stream = {.name = "S"}, .durable = "d"};
    change(o);
    return herald::nats::BridgeOptions{.imports = {{.pattern = "a.>", .jetstream = o}}};
  };
  CHECK_THAT(message_of(out([](auto& o) { o.stream.name = ""; })),
             StartsWith("invalid_argument") && Contains("the export of 'a.>'") &&
                 Contains("stream.name is empty"));
  CHECK_THAT(message_of(out([](auto& o) { o.stream.name = "a.b"; })),
             StartsWith("invalid_argument") && Contains("stream.name 'a.b'"));
  CHECK_THAT(message_of(out([](auto& o) { o.max_in_flight = 0; })),
             StartsWith("invalid_argument") && Contains("max_in_flight must be >= 1"));
  CHECK_THAT(message_of(out([](auto& o) { o.ack_timeout = 0ms; })),
             StartsWith("invalid_argument") && Contains("ack_timeout must be > 0"));
  CHECK_THAT(message_of(out([](auto& o) { o.stream.subjects = {"a..b"}; })),
             StartsWith("invalid_argument") && Contains("stream subject 'a..b'"));
  CHECK_THAT(message_of(in([](auto& o) { o.durable = ""; })),
             StartsWith("invalid_argument") && Contains("the import of 'a.>'") &&
                 Contains("jetstream.durable is empty"));
  CHECK_THAT(message_of(in([](auto& o) { o.max_deliver = 0; })),
             StartsWith("invalid_argument") && Contains("max_deliver must be >= 1"));
  CHECK_THAT(message_of(in([](auto& o) { o.fetch_batch = 5000; })),
             StartsWith("invalid_argument") && Contains("fetch_batch"));
  CHECK_THAT(message_of(in([](auto& o) { o.ack_wait = -1ms; })),
             StartsWith("invalid_argument") && Contains("ack_wait must be > 0"));
  CHECK_THAT(message_of(in([](auto& o) { o.nak_max = 1ms; })),
             StartsWith("invalid_argument") && Contains("nak_initial"));
  CHECK_THAT(message_of(in([](auto& o) { o.dead_letter_subject = "dead.*"; })),
             StartsWith("invalid_argument") && Contains("dead_letter_subject 'dead.*'"));
  auto grouped = in([](auto&) {});
  grouped.imports[0].queue_group = "g";
  CHECK_THAT(message_of(grouped),
             StartsWith("invalid_argument") && Contains("no queue_group or seed_from_stream"));
  CHECK(broker.stats().subscriptions == 0);
}

TEST_CASE(
    "destroying an exporter while the server is down waits drain_timeout, then counts and "
    "reports what is unacknowledged",
    "[nats][jetstream]") {
  JetStreamServer js;
  Errors errors;
  Broker<std::uint64_t> broker;
  auto out = to_stream("GONE");
  out.drain_timeout = 300ms;
  {
    Bridge<std::uint64_t> bridge(broker, {.url = js.server.url(),
                                          .exports = {js_export("g.>", out)},
                                          .reconnect = fast,
                                          .on_error = errors.sink()});
    broker.publish("g.a", 1);
    REQUIRE(bridge.flush(10s));
    CHECK(bridge.stats().js_acked == 1);
    js.server.stop();
    REQUIRE(eventually([&] { return !bridge.is_connected(); }));
    for (std::uint64_t v = 2; v <= 6; ++v)
      broker.publish("g.a", v);
    CHECK(bridge.stats().js_in_flight == 5);
    CHECK_FALSE(bridge.flush(100ms));
  }
  bool reported = false;
  for (const auto& e : errors.snapshot()) {
    if (e.kind == ErrorKind::jetstream_failed) {
      reported = true;
      CHECK_THAT(e.message, Catch::Matchers::Contains("5 message(s) not acknowledged"));
    }
  }
  CHECK(reported);
}

TEST_CASE("a nats.go JetStream consumer sees every message herald exported, across a kill -9",
          "[nats][jetstream][go]") {
#if !defined(HERALD_NATS_JS_PEER)
  WARN("SKIPPED: built without Go or nats.go (golang-go, golang-github-nats-io-go-nats-dev)");
#else
  const std::uint64_t n = herald_test::scaled(20'000);
  JetStreamServer js;
  Broker<std::uint64_t> broker;
  auto out = to_stream("PEER");
  out.stream.subjects = {"peer.>"};
  Bridge<std::uint64_t> bridge(
      broker,
      {.url = js.server.url(),
       .exports = {js_export("peer.>", out, {.capacity = 4096, .overflow = Overflow::block})},
       .reconnect = fast});
  std::jthread publisher([&] {
    auto pub = broker.publisher("peer.values");
    for (std::uint64_t v = 1; v <= n; ++v)
      pub.publish(v);
  });
  REQUIRE(eventually([&] { return bridge.stats().js_acked >= n / 3; }, 60s));
  js.server.stop();  // SIGKILL, mid-stream
  std::this_thread::sleep_for(200ms);
  js.server.start();
  publisher.join();
  REQUIRE(bridge.flush(120s));
  CHECK(bridge.stats().js_acked == n);

  const std::string command = std::string(HERALD_NATS_JS_PEER) + " -url=" + js.server.url() +
                              " -stream=PEER -subject='peer.>' -n=" + std::to_string(n);
  FILE* pipe = ::popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string report;
  char buffer[256];
  while (std::fgets(buffer, sizeof buffer, pipe) != nullptr)
    report += buffer;
  const int status = ::pclose(pipe);
  std::cout << "nats.go consumer: " << report;
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK_THAT(report, Catch::Matchers::Contains("distinct=" + std::to_string(n) + " missing=0"));
#endif
}

TEST_CASE("when max_in_flight messages are unacknowledged, the export's overflow policy applies",
          "[nats][jetstream]") {
  struct Case {
    const char* name;
    herald::SubscribeOptions queue;
  };
  const Case cases[] = {
      {"drop_incoming", {.capacity = 64, .overflow = Overflow::drop_incoming}},
      {"drop_oldest (what is in flight is never given up)",
       {.capacity = 64, .overflow = Overflow::drop_oldest}},
      {"block with timeout", {.capacity = 64, .overflow = Overflow::block, .block_timeout = 20ms}},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.name) {
      JetStreamServer js;
      Broker<std::uint64_t> broker;
      auto out = to_stream("BOUND");
      out.max_in_flight = 2;
      Bridge<std::uint64_t> bridge(
          broker,
          {.url = js.server.url(), .exports = {js_export("b.>", out, c.queue)}, .reconnect = fast});
      broker.publish("b.x", 1);
      REQUIRE(bridge.flush(10s));
      js.server.stop();  // nothing is acknowledged now
      REQUIRE(eventually([&] { return !bridge.is_connected(); }));
      for (std::uint64_t v = 2; v <= 11; ++v)
        broker.publish("b.x", v);
      auto s = bridge.stats();
      CHECK(s.js_in_flight == 2);  // 2 and 3
      CHECK(s.dropped_overflow == 8);
      js.server.start();
      REQUIRE(bridge.flush(30s));
      s = bridge.stats();
      CHECK(s.exported == 11);
      CHECK(s.sent == 3);
      CHECK(s.js_acked == 3);
      CHECK(s.exported == s.sent + s.dropped());
      JsClient other(js.server.url());
      CHECK(other.stream_messages("BOUND") == 3);
    }
  }
}

TEST_CASE("a bridge importing the stream it exports to does not import its own messages back",
          "[nats][jetstream]") {
  JetStreamServer js;
  Broker<std::uint64_t> broker;
  auto sub = broker.subscribe("loop.>", {.capacity = 64});
  auto out = to_stream("LOOP");
  auto in = from_stream("LOOP", "loop");
  Bridge<std::uint64_t> bridge(broker, {.url = js.server.url(),
                                        .exports = {js_export("loop.>", out)},
                                        .imports = {{.pattern = "loop.>", .jetstream = in}}});
  JsClient other(js.server.url());
  for (std::uint64_t v = 1; v <= 3; ++v)
    broker.publish("loop.local", v);
  other.publish<std::uint64_t>("loop.remote", 100);
  REQUIRE(bridge.flush(10s));
  REQUIRE(eventually([&] { return bridge.stats().received == 4; }));
  std::vector<std::uint64_t> got;
  while (auto m = sub.receive_for(300ms))
    got.push_back(**m);
  CHECK(got == std::vector<std::uint64_t>{1, 2, 3, 100});  // local ones once, the remote one
  const auto s = bridge.stats();
  CHECK(s.echoes == 3);
  CHECK(s.imported == 1);
  CHECK(s.skipped_echo == 1);  // the imported one was not exported again
  CHECK(s.js_acked_in == 4);
}

TEST_CASE(
    "manual acks: a message redelivered after ack_wait while the application holds it is not "
    "published twice, and the newer delivery is the one acknowledged",
    "[nats][jetstream]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("SLOW", "slow.>");
  Broker<std::uint64_t> broker;
  auto sub = broker.subscribe("slow.>", {.capacity = 16});
  auto in = from_stream("SLOW", "slow");
  in.ack = AckMode::manual;
  in.ack_wait = 300ms;
  Bridge<std::uint64_t> bridge(
      broker, {.url = js.server.url(), .imports = {{.pattern = "slow.>", .jetstream = in}}});
  other.publish<std::uint64_t>("slow.job", 5);
  auto m = sub.receive_for(10s);
  REQUIRE(m);
  // Held past ack_wait: the server redelivers, the bridge keeps the newer delivery.
  REQUIRE(eventually([&] { return bridge.stats().js_duplicates >= 1; }));
  CHECK_FALSE(sub.try_receive());
  CHECK(bridge.stats().js_pending_acks == 1);
  CHECK(bridge.ack(*m));
  CHECK(bridge.stats().js_pending_acks == 0);
  // Acknowledged: nothing more comes (a redelivery in flight at the ack is suppressed).
  std::this_thread::sleep_for(1s);
  CHECK_FALSE(sub.try_receive());
  const auto s = bridge.stats();
  CHECK(s.imported == 1);
  CHECK(s.js_acked_in == 1);
  CHECK(s.received == s.imported + s.js_duplicates);
}
