// herald::nats::Bridge against a real nats-server (started per test on a free loopback port):
// exchange between two brokers, the same wildcard meaning on both sides, no echo loops, a server
// restart in the middle of a stream with every loss counted, the export queue's overflow policy
// during an outage, clear errors for invalid and oversized subjects and payloads, and message
// headers carried as NATS headers, with herald on both ends and with a nats.go client ("[go]").
#include <herald/metrics.hpp>
#include <herald/nats.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "bridge_errors.hpp"
#include "catch.hpp"
#include "nats_server.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::Overflow;
using herald::nats::Bridge;
using herald::nats::BridgeError;
using herald::nats::ErrorKind;
using herald_test::eventually;  // the tests' only way to wait for the network
using herald_test::NatsServer;

using Errors = herald_test::BridgeErrors;

namespace {

template <class T>
std::vector<T> receive_n(herald::Subscription<T>& sub, std::size_t n,
                         std::chrono::milliseconds each = 10s) {
  std::vector<T> out;
  while (out.size() < n) {
    auto m = sub.receive_for(each);
    if (!m) break;
    out.push_back(**m);
  }
  return out;
}

/// A topic that `pattern` selects: each wildcard token replaced by "s".
std::string sample_topic(const std::string& pattern) {
  std::string out;
  herald::detail::for_each_token(std::string_view(pattern), [&](std::string_view tok) {
    if (!out.empty()) out += '.';
    out += (tok == "*" || tok == ">") ? std::string("s") : std::string(tok);
    return true;
  });
  return out;
}

/// `prefix` followed by `i`. (Not `tagged("e", i)`: g++ 12 warns about it wrongly.)
std::string tagged(std::string prefix, std::size_t i) {
  prefix += std::to_string(i);
  return prefix;
}

void check_export_identity(const herald::nats::BridgeStats& s) {
  CHECK(s.exported == s.sent + s.dropped());
}

}  // namespace

TEST_CASE("two bridged brokers exchange messages both ways, in order, tagged as imported",
          "[nats]") {
  NatsServer server;
  const auto n = static_cast<std::size_t>(herald_test::scaled(2000));
  Broker<std::string> east;
  Broker<std::string> west;
  Bridge<std::string> east_bridge(east, {.url = server.url(),
                                         .exports = {{.pattern = "east.>"}},
                                         .imports = {{.pattern = "west.>"}}});
  Bridge<std::string> west_bridge(west, {.url = server.url(),
                                         .exports = {{.pattern = "west.>"}},
                                         .imports = {{.pattern = "east.>"}}});
  CHECK(east_bridge.id() != west_bridge.id());
  CHECK(east_bridge.is_connected());

  auto at_west = west.subscribe("east.>", {.capacity = 2 * n});
  auto at_east = east.subscribe("west.>", {.capacity = 2 * n});
  auto local_east = east.subscribe("east.>", {.capacity = 2 * n});

  for (std::size_t i = 0; i < n; ++i) {
    east.publish(i % 2 ? "east.orders.created" : "east.orders.paid", tagged("e", i));
    west.publish("west.stock", tagged("w", i));
  }

  // In-process fan-out still happens, once, with a local origin.
  auto first_local = local_east.try_receive();
  REQUIRE(first_local);
  CHECK(first_local->origin() == 0);

  std::vector<std::string> got_west;
  for (std::size_t i = 0; i < n; ++i) {
    auto m = at_west.receive_for(10s);
    REQUIRE(m);
    CHECK(m->origin() == west_bridge.id());
    CHECK(m->topic() == (i % 2 ? "east.orders.created" : "east.orders.paid"));
    got_west.push_back(**m);
  }
  std::vector<std::string> expected_west;
  for (std::size_t i = 0; i < n; ++i)
    expected_west.push_back(tagged("e", i));
  CHECK(got_west == expected_west);

  const auto got_east = receive_n(at_east, n);
  REQUIRE(got_east.size() == n);
  for (std::size_t i = 0; i < n; ++i)
    CHECK(got_east[i] == tagged("w", i));

  REQUIRE(east_bridge.flush(10s));
  REQUIRE(west_bridge.flush(10s));
  // The import callback counts a message just after publishing it into the broker.
  REQUIRE(eventually([&] { return east_bridge.stats().imported == n; }));
  REQUIRE(eventually([&] { return west_bridge.stats().imported == n; }));
  const auto es = east_bridge.stats();
  const auto ws = west_bridge.stats();
  CHECK(es.exported == n);
  CHECK(es.sent == n);
  CHECK(es.dropped() == 0);
  CHECK(es.received == n);
  CHECK(es.imported == n);
  CHECK(ws.sent == n);
  CHECK(ws.received == n);
  CHECK(ws.imported == n);
  CHECK(es.reconnects == 0);
  CHECK(es.errors == 0);
  check_export_identity(es);
  check_export_identity(ws);

  // A real bridge registered in a MetricsRegistry (metrics.hpp knows nothing of NATS).
  herald::MetricsRegistry metrics;
  metrics.add_bridge("east", east_bridge);
  metrics.add_broker("east", east);
  const std::string text = metrics.exposition();
  INFO(text);
  CHECK(text.find("herald_bridge_sent_total{bridge=\"east\"} " + std::to_string(n) + "\n") !=
        std::string::npos);
  CHECK(text.find("herald_bridge_imported_total{bridge=\"east\"} " + std::to_string(n) + "\n") !=
        std::string::npos);
  CHECK(text.find("herald_bridge_connected{bridge=\"east\"} 1\n") != std::string::npos);
}

TEST_CASE("'*' and '>' select the same messages in the local broker and through NATS", "[nats]") {
  NatsServer server;
  const std::vector<std::string> topics = {"a",    "a.b",   "a.c",   "a.b.c", "a.b.c.d",
                                           "x.b",  "x.y.b", "b",     "a*.b",  "a.b*",
                                           "*x.b", "a.>x",  "x.y.c", "a.a.c"};
  const std::vector<std::string> patterns = {"a.*",   "a.>",  "*.b",   ">",   "a.b", "*",
                                             "*.*.c", "a*.b", "a.*.c", "*.>", "x.>"};

  // The exporting side: one broker with a local subscriber per pattern, exporting everything
  // under a prefix. The importing side: one broker per pattern, importing just that pattern.
  Broker<std::string> source;
  std::vector<herald::Subscription<std::string>> local;
  for (const auto& p : patterns)
    local.push_back(source.subscribe(p, {.capacity = 256}));
  Bridge<std::string> exporter(
      source, {.url = server.url(), .exports = {{.pattern = ">", .prefix = "site1"}}});

  std::vector<std::unique_ptr<Broker<std::string>>> sinks;
  std::vector<std::unique_ptr<Bridge<std::string>>> importers;
  std::vector<herald::Subscription<std::string>> remote;
  for (const auto& p : patterns) {
    sinks.push_back(std::make_unique<Broker<std::string>>());
    remote.push_back(sinks.back()->subscribe(">", {.capacity = 256}));
    importers.push_back(std::make_unique<Bridge<std::string>>(
        *sinks.back(), herald::nats::BridgeOptions{
                           .url = server.url(), .imports = {{.pattern = p, .prefix = "site1"}}}));
  }

  for (const auto& t : topics)
    source.publish(t, t);
  // One end marker per pattern, on a topic it selects: NATS keeps one publisher's order, so when
  // a side sees its own marker it has seen everything published before it.
  for (const auto& p : patterns)
    source.publish(sample_topic(p), "END " + p);

  auto collect = [](herald::Subscription<std::string>& sub, const std::string& pattern) {
    std::set<std::string> seen;
    for (;;) {
      auto m = sub.receive_for(10s);
      if (!m) FAIL("no end marker for " << pattern);
      if (**m == "END " + pattern) return seen;
      if ((*m)->rfind("END ", 0) != 0) seen.insert(m->topic());
    }
  };
  for (std::size_t i = 0; i < patterns.size(); ++i) {
    std::set<std::string> expected;
    for (const auto& t : topics) {
      if (herald::matches(t, patterns[i])) expected.insert(t);
    }
    INFO("pattern " << patterns[i]);
    CHECK(collect(local[i], patterns[i]) == expected);
    CHECK(collect(remote[i], patterns[i]) == expected);
  }
}

TEST_CASE("two processes exporting and importing the same pattern never echo a message back",
          "[nats]") {
  NatsServer server;
  const auto k = static_cast<std::size_t>(herald_test::scaled(500));
  Broker<std::uint64_t> a;
  Broker<std::uint64_t> b;
  const herald::nats::BridgeOptions both{
      .url = server.url(), .exports = {{.pattern = "chat.>"}}, .imports = {{.pattern = "chat.>"}}};
  Bridge<std::uint64_t> ab(a, both);
  Bridge<std::uint64_t> bb(b, both);
  auto at_a = a.subscribe("chat.>", {.capacity = 4 * k});
  auto at_b = b.subscribe("chat.>", {.capacity = 4 * k});

  for (std::uint64_t i = 0; i < k; ++i) {
    a.publish("chat.room", i);
    b.publish("chat.room", 1'000'000 + i);
  }
  // Each side sees its own k and the other's k: 2k, and then every export has handled everything
  // (flush), so no re-send can still be on its way.
  REQUIRE(receive_n(at_a, 2 * k).size() == 2 * k);
  REQUIRE(receive_n(at_b, 2 * k).size() == 2 * k);
  REQUIRE(eventually([&] { return ab.stats().imported == k && bb.stats().imported == k; }));
  REQUIRE(ab.flush(10s));
  REQUIRE(bb.flush(10s));
  for (const auto* s : {&ab, &bb}) {
    const auto st = s->stats();
    CHECK(st.exported == k);
    CHECK(st.sent == k);
    CHECK(st.skipped_echo == k);  // what it imported reached its own export, which skipped it
    CHECK(st.received == k);
    CHECK(st.imported == k);
    check_export_identity(st);
  }
  CHECK_FALSE(at_a.try_receive());
  CHECK_FALSE(at_b.try_receive());
}

TEST_CASE("three brokers bridged in a full mesh deliver each message exactly once everywhere",
          "[nats]") {
  NatsServer server;
  const std::uint64_t k = 200;
  std::vector<std::unique_ptr<Broker<std::uint64_t>>> brokers;
  std::vector<herald::Subscription<std::uint64_t>> subs;
  std::vector<std::unique_ptr<Bridge<std::uint64_t>>> bridges;
  for (int i = 0; i < 3; ++i) {
    brokers.push_back(std::make_unique<Broker<std::uint64_t>>());
    subs.push_back(brokers.back()->subscribe(">", {.capacity = 4096}));
    bridges.push_back(std::make_unique<Bridge<std::uint64_t>>(
        *brokers.back(),
        herald::nats::BridgeOptions{
            .url = server.url(), .exports = {{.pattern = ">"}}, .imports = {{.pattern = ">"}}}));
  }
  for (std::uint64_t n = 0; n < k; ++n) {
    for (std::uint64_t i = 0; i < 3; ++i)
      brokers[i]->publish("mesh." + std::to_string(i), i * k + n);
  }
  for (auto& sub : subs) {
    auto got = receive_n(sub, 3 * k);
    REQUIRE(got.size() == 3 * k);
    std::sort(got.begin(), got.end());
    for (std::uint64_t v = 0; v < 3 * k; ++v)
      CHECK(got[v] == v);
  }
  for (auto& b : bridges)
    REQUIRE(eventually([&] { return b->stats().imported == 2 * k; }));
  for (auto& b : bridges)
    REQUIRE(b->flush(10s));
  for (auto& b : bridges) {
    const auto st = b->stats();
    CHECK(st.sent == k);
    CHECK(st.skipped_echo == 2 * k);
    CHECK(st.imported == 2 * k);
  }
  for (auto& sub : subs)
    CHECK_FALSE(sub.try_receive());
}

TEST_CASE("a server restart in the middle of a stream is survived and every loss is counted",
          "[nats]") {
  NatsServer server;
  Broker<std::uint64_t> a;
  Broker<std::uint64_t> b;
  const herald::nats::ReconnectPolicy fast{.initial = 5ms, .max = 50ms};
  Bridge<std::uint64_t> ab(a, {.url = server.url(),
                               .exports = {{.pattern = "stream.>", .queue = {.capacity = 1024}}},
                               .reconnect = fast,
                               .track_loss = true});
  Bridge<std::uint64_t> bb(b, {.url = server.url(),
                               .imports = {{.pattern = "stream.>"}},
                               .reconnect = fast,
                               .track_loss = true});
  auto at_b = b.subscribe("stream.>", {.capacity = 1 << 16});

  std::mutex mutex;
  std::vector<std::uint64_t> received;
  std::atomic<std::uint64_t> last_received{0};
  std::jthread consumer([&](std::stop_token stop) {
    while (auto m = at_b.receive(stop)) {
      std::lock_guard lock(mutex);
      received.push_back(**m);
      last_received.store(**m);
    }
  });

  std::atomic<std::uint64_t> published{0};
  std::atomic<bool> stop_publishing{false};
  std::jthread publisher([&] {
    for (std::uint64_t i = 1; !stop_publishing.load(); ++i) {
      a.publish("stream.ticks", i);
      published.store(i);
      std::this_thread::sleep_for(20us);  // the publication rate: a steady stream, not a flood
    }
  });

  REQUIRE(eventually([&] { return last_received.load() >= 300; }));
  server.stop();
  REQUIRE(eventually([&] { return !ab.is_connected() && !bb.is_connected(); }));
  std::this_thread::sleep_for(200ms);  // simulated: the outage lasts a while
  server.start();
  REQUIRE(eventually([&] { return ab.stats().reconnects >= 1 && bb.stats().reconnects >= 1; }));
  REQUIRE(bb.flush(5s));  // the server has the importer's subscription again
  const std::uint64_t after_restart = published.load();
  REQUIRE(eventually([&] { return last_received.load() > after_restart + 100; }));
  stop_publishing = true;
  publisher.join();
  const std::uint64_t total = published.load();
  REQUIRE(ab.flush(10s));
  REQUIRE(eventually([&] { return last_received.load() == total; }));
  REQUIRE(eventually([&] {
    const auto st = bb.stats();
    return st.imported == st.received;
  }));
  consumer.request_stop();
  consumer.join();

  const auto as = ab.stats();
  const auto bs = bb.stats();
  // Per side: what the exporter could not send is counted there, what the network lost is
  // counted by the importer (gaps in the per-subject sequence), and the rest arrived.
  check_export_identity(as);
  CHECK(as.exported == total);
  CHECK(bs.received + bs.lost == as.sent);
  CHECK(bs.imported == bs.received);
  CHECK(received.size() == bs.imported);
  CHECK(received.size() + bs.lost + as.dropped() == total);
  CHECK(std::is_sorted(received.begin(), received.end()));
  CHECK(std::adjacent_find(received.begin(), received.end()) == received.end());
  CHECK(as.disconnects >= 1);
  CHECK(bs.disconnects >= 1);
  std::cout << "restart: published " << total << ", sent " << as.sent << ", dropped at export "
            << as.dropped() << " (overflow " << as.dropped_overflow << "), lost in transit "
            << bs.lost << ", received " << received.size() << "\n";
}

TEST_CASE(
    "several local publishers keep their order through an export that goes from sending on "
    "their threads to its backlog and back",
    "[nats]") {
  NatsServer server;
  Broker<std::uint64_t> a;
  Broker<std::uint64_t> b;
  const herald::nats::ReconnectPolicy fast{.initial = 5ms, .max = 50ms};
  // block without timeout and room for the whole outage: the export itself drops nothing.
  Bridge<std::uint64_t> ab(
      a,
      {.url = server.url(),
       .exports = {{.pattern = "p.>", .queue = {.capacity = 1 << 15, .overflow = Overflow::block}}},
       .reconnect = fast,
       .track_loss = true});
  Bridge<std::uint64_t> bb(b, {.url = server.url(),
                               .imports = {{.pattern = "p.>"}},
                               .reconnect = fast,
                               .track_loss = true});
  auto at_b = b.subscribe("p.>", {.capacity = 1 << 16});

  constexpr std::uint64_t kPublishers = 3;
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> published{0};
  std::vector<std::jthread> publishers;
  for (std::uint64_t p = 0; p < kPublishers; ++p) {
    publishers.emplace_back([&, p] {
      for (std::uint64_t i = 1; !stop.load(); ++i) {
        a.publish("p.x", (p << 32) | i);  // one topic: a single sequence of subjects to order
        published.fetch_add(1);
        std::this_thread::sleep_for(50us);
      }
    });
  }
  REQUIRE(eventually([&] { return published.load() >= 600; }));
  server.stop();
  REQUIRE(eventually([&] { return !ab.is_connected() && !bb.is_connected(); }));
  std::this_thread::sleep_for(100ms);
  CHECK(ab.stats().queued > 0);  // the outage's messages wait in the backlog
  server.start();
  REQUIRE(eventually([&] { return ab.stats().reconnects >= 1 && bb.stats().reconnects >= 1; }));
  REQUIRE(bb.flush(5s));
  const std::uint64_t after_restart = published.load();
  REQUIRE(eventually([&] { return published.load() > after_restart + 600; }));
  stop = true;
  publishers.clear();
  REQUIRE(ab.flush(10s));
  const auto as = ab.stats();
  CHECK(as.exported == published.load());
  CHECK(as.dropped() == 0);
  CHECK(as.sent == as.exported);
  check_export_identity(as);
  // What the restart lost in transit (handed to the client as the link died) is counted there.
  REQUIRE(eventually([&] {
    const auto st = bb.stats();
    return st.received + st.lost == as.sent && st.imported == st.received;
  }));

  // Whatever arrived, each publisher's values arrive in the order it published them.
  std::vector<std::uint64_t> last(kPublishers, 0);
  std::uint64_t got = 0;
  while (auto m = at_b.receive_for(500ms)) {
    const std::uint64_t p = **m >> 32;
    const std::uint64_t i = **m & 0xffffffffu;
    REQUIRE(p < kPublishers);
    CHECK(i > last[p]);
    last[p] = i;
    ++got;
  }
  CHECK(got == bb.stats().imported);
  CHECK(got > 1200);
}

TEST_CASE("during an outage each export queue applies its overflow policy, exactly counted",
          "[nats]") {
  struct Case {
    const char* name;
    herald::SubscribeOptions queue;
  };
  const std::size_t capacity = 64;
  const Case cases[] = {
      {"drop_incoming", {.capacity = capacity, .overflow = Overflow::drop_incoming}},
      {"drop_oldest", {.capacity = capacity, .overflow = Overflow::drop_oldest}},
      {"block with timeout",
       {.capacity = capacity, .overflow = Overflow::block, .block_timeout = 2ms}},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.name) {
      NatsServer server;
      Broker<std::uint64_t> a;
      Broker<std::uint64_t> b;
      const herald::nats::ReconnectPolicy fast{.initial = 5ms, .max = 50ms};
      Bridge<std::uint64_t> ab(a, {.url = server.url(),
                                   .exports = {{.pattern = "o.>", .queue = c.queue}},
                                   .reconnect = fast,
                                   .track_loss = true});
      Bridge<std::uint64_t> bb(b, {.url = server.url(),
                                   .imports = {{.pattern = "o.>"}},
                                   .reconnect = fast,
                                   .track_loss = true});
      auto at_b = b.subscribe("o.>", {.capacity = 4096});

      a.publish("o.x", 0);
      REQUIRE(at_b.receive_for(10s));
      server.stop();
      REQUIRE(eventually([&] { return !ab.is_connected(); }));

      // The first message is taken by the backlog's thread, which then waits for the connection;
      // the next `capacity` fill the backlog, the rest meet the policy.
      a.publish("o.x", 1);
      REQUIRE(eventually([&] { return ab.stats().queued == 0; }));
      const std::uint64_t extra = 3 * capacity;
      for (std::uint64_t i = 0; i < capacity + extra; ++i)
        a.publish("o.x", 2 + i);
      const auto during = ab.stats();
      CHECK(during.dropped_overflow == extra);
      CHECK(during.queued == capacity);

      server.start();
      REQUIRE(eventually([&] { return ab.is_connected() && bb.is_connected(); }));
      REQUIRE(bb.flush(5s));
      REQUIRE(ab.flush(10s));
      a.publish("o.x", 999'999);  // sent once both are back: it cannot be lost
      std::vector<std::uint64_t> got;
      for (;;) {
        auto m = at_b.receive_for(10s);
        REQUIRE(m);
        if (**m == 999'999) break;
        got.push_back(**m);
      }
      REQUIRE(ab.flush(10s));
      REQUIRE(eventually([&] {
        const auto st = bb.stats();
        return st.imported == st.received;
      }));
      const auto as = ab.stats();
      const auto bs = bb.stats();
      check_export_identity(as);
      CHECK(as.exported == 2 + capacity + extra + 1);
      CHECK(as.dropped_overflow == extra);
      CHECK(as.sent == 2 + capacity + 1);
      CHECK(bs.received + bs.lost == as.sent);
      // What arrived is what the policy kept, in order (minus what the restart lost, counted).
      std::vector<std::uint64_t> kept = {1};
      const std::uint64_t first_kept = c.queue.overflow == Overflow::drop_oldest ? 2 + extra : 2;
      for (std::uint64_t v = first_kept; v < first_kept + capacity; ++v)
        kept.push_back(v);
      CHECK(got.size() + bs.lost == kept.size());
      CHECK(std::includes(kept.begin(), kept.end(), got.begin(), got.end()));
    }
  }
}

TEST_CASE("invalid rules are refused with a clear error before anything is connected", "[nats]") {
  // Nothing listens on the url construction_error sets: reaching the network throws NatsError.
  Broker<std::string> broker;
  auto message_of = [&](herald::nats::BridgeOptions o) {
    return herald_test::construction_error(broker, std::move(o));
  };
  using Catch::Matchers::Contains;
  using Catch::Matchers::StartsWith;
  CHECK_THAT(message_of({.exports = {{.pattern = "foo bar"}}}),
             StartsWith("InvalidTopic") && Contains("whitespace") && Contains("'foo bar'"));
  CHECK_THAT(message_of({.imports = {{.pattern = "a..b"}}}),
             StartsWith("InvalidTopic") && Contains("empty token"));
  CHECK_THAT(message_of({.imports = {{.pattern = "a.>.b"}}}), StartsWith("InvalidTopic"));
  CHECK_THAT(message_of({.exports = {{.pattern = "a.>", .prefix = "site.*"}}}),
             StartsWith("InvalidTopic") && Contains("wildcard"));
  CHECK_THAT(message_of({.imports = {{.pattern = "a.>", .prefix = "site 1"}}}),
             StartsWith("InvalidTopic"));
  CHECK_THAT(message_of({.imports = {{.pattern = "a.>", .prefix = std::string(5000, 'p')}}}),
             StartsWith("length_error") && Contains("max_subject_bytes"));
  CHECK_THAT(message_of({.imports = {{.pattern = "a.>", .queue_group = "workers 1"}}}),
             StartsWith("invalid_argument") && Contains("queue group"));
  CHECK_THAT(
      message_of({.exports = {{.pattern = "a.>", .queue = {.overflow = Overflow::disconnect}}}}),
      StartsWith("invalid_argument") && Contains("disconnect"));
  CHECK_THAT(message_of({.exports = {{.pattern = "a.>", .queue = {.capacity = 0}}}}),
             StartsWith("invalid_argument") && Contains("capacity"));
  // Valid rules do reach the network, and an unreachable server is a clear NatsError.
  CHECK_THAT(message_of({.exports = {{.pattern = "a.>"}}, .connect_timeout = 500ms}),
             StartsWith("NatsError") && Contains("127.0.0.1:1"));
  CHECK(broker.stats().subscriptions == 0);  // nothing was left behind
}

namespace {

/// Two brokers over one server: `a` exports every topic under the prefix "p" and reports to
/// `errors`, `b` imports them, and `at_b` receives what arrives in `b`.
struct ExportedToB {
  NatsServer server;
  Errors errors;
  Broker<std::string> a;
  Broker<std::string> b;
  Bridge<std::string> ab{a,
                         {.url = server.url(),
                          .exports = {{.pattern = ">", .prefix = "p"}},
                          .on_error = errors.sink()}};
  Bridge<std::string> bb{b, {.url = server.url(), .imports = {{.pattern = ">", .prefix = "p"}}}};
  herald::Subscription<std::string> at_b = b.subscribe(">", {.capacity = 64});
};

}  // namespace

TEST_CASE_METHOD(
    ExportedToB,
    "oversized subjects and payloads are dropped at export with a clear error, and the "
    "connection stays up",
    "[nats]") {
  // A topic herald accepts, but whose NATS subject is longer than the server's protocol line.
  const std::string long_topic = "long." + std::string(4200, 't');
  a.publish(long_topic, "x");
  // A payload one byte over the server's max_payload (1 MiB by default).
  const std::string big(1024 * 1024 + 1, 'b');
  a.publish("big", big);
  a.publish("after", "still connected");

  auto m = at_b.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "after");
  CHECK(**m == "still connected");
  REQUIRE(ab.flush(10s));
  const auto s = ab.stats();
  CHECK(s.dropped_subject == 1);
  CHECK(s.dropped_too_large == 1);
  CHECK(s.sent == 1);
  CHECK(s.disconnects == 0);
  CHECK(s.errors == 2);
  check_export_identity(s);

  const auto seen = errors.snapshot();
  REQUIRE(seen.size() == 2);
  CHECK(seen[0].kind == ErrorKind::subject_too_long);
  CHECK(seen[0].subject == "p." + long_topic);
  CHECK_THAT(seen[0].message, Catch::Matchers::Contains("4207 bytes") &&
                                  Catch::Matchers::Contains("max_subject_bytes is 4000"));
  CHECK(seen[1].kind == ErrorKind::payload_too_large);
  CHECK(seen[1].subject == "p.big");
  CHECK_THAT(seen[1].message, Catch::Matchers::Contains("1048577 bytes") &&
                                  Catch::Matchers::Contains("max_payload is 1048576"));

  // Why the subject check exists: the C client sends such a subject and the server closes the
  // connection for good.
  natsConnection* raw = nullptr;
  REQUIRE(natsConnection_ConnectTo(&raw, server.url().c_str()) == NATS_OK);
  const std::string subject = "p." + long_topic;
  natsConnection_Publish(raw, subject.c_str(), "x", 1);
  CHECK(natsConnection_FlushTimeout(raw, 5000) != NATS_OK);
  CHECK(eventually([&] { return natsConnection_IsClosed(raw); }));
  natsConnection_Destroy(raw);
}

TEST_CASE_METHOD(
    ExportedToB,
    "a topic NATS cannot carry intact (a NUL byte) is refused at export, counted and reported, "
    "and nothing goes out under a shorter subject",
    "[nats]") {
  using namespace std::string_literals;

  // Everything that reaches the server under p.>, read with the C client itself.
  natsConnection* raw = nullptr;
  REQUIRE(natsConnection_ConnectTo(&raw, server.url().c_str()) == NATS_OK);
  natsSubscription* wire = nullptr;
  REQUIRE(natsConnection_SubscribeSync(&wire, raw, "p.>") == NATS_OK);
  REQUIRE(natsConnection_FlushTimeout(raw, 5000) == NATS_OK);

  // A valid herald topic (NUL is an ordinary byte in-process) that libnats would cut to
  // "p.orders.eu" and the server would deliver to every subscriber of that subject.
  const std::string secret = "orders.eu\0secret"s;
  REQUIRE(secret.size() == 16);
  auto local = a.subscribe("orders.>", {.capacity = 8});
  CHECK(a.publish(secret, "classified").delivered == 2);  // the local subscriber and the export
  CHECK(local.try_receive()->topic() == secret);          // in-process it is an ordinary topic
  // The other bytes the wire would reinterpret (a space or a tab splits the protocol line's
  // fields, CR and LF end it) are whitespace, which herald topics refuse before any side effect.
  for (const std::string bad :
       {"orders.eu secret", "orders.eu\tsecret", "orders.eu\rsecret", "orders.eu\nsecret"}) {
    CHECK_THROWS_AS(a.publish(bad, "classified"), herald::InvalidTopic);
  }
  a.publish("orders.eu", "public");

  auto m = at_b.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "orders.eu");
  CHECK(**m == "public");
  REQUIRE(ab.flush(10s));
  natsMsg* seen_raw = nullptr;
  REQUIRE(natsSubscription_NextMsg(&seen_raw, wire, 5000) == NATS_OK);
  CHECK(std::string(natsMsg_GetSubject(seen_raw)) == "p.orders.eu");
  CHECK(std::string(natsMsg_GetData(seen_raw), 6) == "public");
  natsMsg_Destroy(seen_raw);
  CHECK(natsSubscription_NextMsg(&seen_raw, wire, 200) == NATS_TIMEOUT);  // nothing else went out
  CHECK_FALSE(at_b.try_receive());

  const auto s = ab.stats();
  CHECK(s.exported == 2);
  CHECK(s.sent == 1);
  CHECK(s.dropped_unsafe_subject == 1);
  CHECK(s.dropped() == 1);
  CHECK(s.errors == 1);
  check_export_identity(s);
  const auto seen = errors.snapshot();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].kind == ErrorKind::subject_unsafe);
  CHECK(seen[0].subject == "p." + secret);
  CHECK_THAT(seen[0].message, Catch::Matchers::Contains("'p.orders.eu\\x00secret'") &&
                                  Catch::Matchers::Contains("a NUL byte at offset 11") &&
                                  Catch::Matchers::Contains("cannot carry"));

  herald::MetricsRegistry metrics;
  metrics.add_bridge("a", ab);
  const std::string text = metrics.exposition();
  INFO(text);
  CHECK(
      text.find("herald_bridge_export_dropped_total{bridge=\"a\",reason=\"unsafe_subject\"} 1\n") !=
      std::string::npos);

  natsSubscription_Destroy(wire);
  natsConnection_Destroy(raw);
}

TEST_CASE("rules whose subjects NATS cannot carry are refused before anything is connected",
          "[nats]") {
  using namespace std::string_literals;
  using Catch::Matchers::Contains;
  Broker<std::string> broker;
  // No server: the rules are checked before connecting.
  const auto message_of = [&](herald::nats::BridgeOptions o) {
    return herald_test::construction_error(broker, std::move(o));
  };
  CHECK_THAT(message_of({.exports = {{.pattern = "a\0b.>"s}}}),
             Contains("export pattern 'a\\x00b.>' holds a NUL byte at offset 1"));
  CHECK_THAT(message_of({.exports = {{.pattern = ">", .prefix = "p\0q"s}}}),
             Contains("export prefix") && Contains("NUL byte"));
  CHECK_THAT(message_of({.imports = {{.pattern = "x.\0"s}}}),
             Contains("import pattern") && Contains("NUL byte at offset 2"));
  CHECK_THAT(message_of({.imports = {{.pattern = ">", .prefix = "\0"s}}}),
             Contains("import prefix") && Contains("NUL byte"));
  CHECK_THAT(message_of({.imports = {{.pattern = ">", .queue_group = "g\0"s}}}),
             Contains("import queue group") && Contains("NUL byte"));
  CHECK(broker.stats().subscriptions == 0);
}

namespace {

/// A client speaking the NATS protocol over a bare socket, to send what no client library
/// sends: subjects with CR or LF. `send` returns false once the server closed the connection.
class RawProtocolClient {
 public:
  explicit RawProtocolClient(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    timeval tv{.tv_sec = 5, .tv_usec = 0};
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    REQUIRE(read_some().rfind("INFO ", 0) == 0);
    REQUIRE(send("CONNECT {\"verbose\":false,\"pedantic\":false}\r\n"));
  }
  RawProtocolClient(const RawProtocolClient&) = delete;
  RawProtocolClient& operator=(const RawProtocolClient&) = delete;
  ~RawProtocolClient() { close(fd_); }
  bool send(std::string_view bytes) {
    return ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
           static_cast<ssize_t>(bytes.size());
  }
  /// What the server sends next ("" once it closed the connection or after 5 s of silence).
  std::string read_some() {
    char buf[4096];
    const ssize_t n = recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
  }

 private:
  int fd_ = -1;
};

}  // namespace

TEST_CASE("what herald imports when a client sends a subject with LF or CR", "[nats]") {
  NatsServer server;
  Errors errors;
  Broker<std::string> b;
  const herald::nats::ReconnectPolicy fast{.initial = 5ms, .max = 50ms};
  Bridge<std::string> bb(b, {.url = server.url(),
                             .imports = {{.pattern = ">", .prefix = "in"}},
                             .reconnect = fast,
                             .on_error = errors.sink()});
  auto at_b = b.subscribe(">", {.capacity = 64});

  // LF ends the protocol line inside the subject: the server cannot parse "PUB in.lf" and
  // closes the sender's connection; nothing is delivered.
  {
    RawProtocolClient lf(server.port());
    lf.send("PUB in.lf\nx 1\r\nx\r\nPING\r\n");
    CHECK(lf.read_some().find("PONG") == std::string::npos);  // closed, no PONG
    CHECK(lf.read_some().empty());
  }
  // CR: nats-server 2.9 takes "in.cr\rx" as the subject and delivers it; libnats 3.4 cannot
  // parse that MSG line and drops the bridge's connection, which reconnects.
  {
    RawProtocolClient cr(server.port());
    REQUIRE(cr.send("PUB in.cr\rx 1\r\nx\r\nPING\r\n"));
    CHECK(cr.read_some().find("PONG") != std::string::npos);
  }
  REQUIRE(eventually([&] { return bb.stats().reconnects >= 1 && bb.is_connected(); }));
  REQUIRE(bb.flush(5s));  // the server has the import's subscription again

  natsConnection* raw = nullptr;
  REQUIRE(natsConnection_ConnectTo(&raw, server.url().c_str()) == NATS_OK);
  REQUIRE(natsConnection_PublishString(raw, "in.after", "ok") == NATS_OK);
  REQUIRE(natsConnection_FlushTimeout(raw, 5000) == NATS_OK);
  natsConnection_Destroy(raw);

  auto m = at_b.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "after");  // the first and only message imported
  CHECK_FALSE(at_b.receive_for(200ms));
  const auto s = bb.stats();
  CHECK(s.imported == 1);
  CHECK(s.received == 1);
  CHECK(s.disconnects >= 1);
}

TEST_CASE("subjects that are not herald topics and undecodable payloads are rejected at import",
          "[nats]") {
  NatsServer server;
  Errors errors;
  Broker<std::uint32_t> b;
  Bridge<std::uint32_t> bb(b, {.url = server.url(),
                               .imports = {{.pattern = ">", .prefix = "in"}},
                               .on_error = errors.sink()});
  auto at_b = b.subscribe(">", {.capacity = 64});

  natsConnection* raw = nullptr;
  REQUIRE(natsConnection_ConnectTo(&raw, server.url().c_str()) == NATS_OK);
  const std::uint32_t ok = 7;
  // The server does not validate published subjects (a wildcard token is delivered as is);
  // herald's rules apply before anything enters the broker.
  REQUIRE(natsConnection_Publish(raw, "in.a.*", &ok, sizeof ok) == NATS_OK);
  REQUIRE(natsConnection_Publish(raw, "in.a..b", &ok, sizeof ok) == NATS_OK);
  REQUIRE(natsConnection_Publish(raw, "in.short", "abc", 3) == NATS_OK);  // not 4 bytes
  REQUIRE(natsConnection_Publish(raw, "in.good", &ok, sizeof ok) == NATS_OK);
  REQUIRE(natsConnection_FlushTimeout(raw, 5000) == NATS_OK);

  auto m = at_b.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "good");
  CHECK(**m == 7u);
  CHECK_FALSE(at_b.try_receive());
  // The callback counts a message once publish_from returns, just after the subscriber got it.
  REQUIRE(eventually([&] {
    const auto st = bb.stats();
    return st.received == st.imported + st.rejected + st.dropped_decode;
  }));
  const auto s = bb.stats();
  // nats-server 2.9 drops "in.a..b" itself; a server that delivers it gets it rejected too.
  CHECK(s.rejected >= 1);
  CHECK(s.received == 3 + (s.rejected - 1));
  CHECK(s.imported == 1);
  CHECK(s.dropped_decode == 1);
  CHECK(s.received == s.imported + s.rejected + s.dropped_decode + s.import_failed + s.echoes);

  const auto seen = errors.snapshot();
  REQUIRE(seen.size() == s.rejected + 1);
  CHECK(seen[0].kind == ErrorKind::invalid_topic);
  CHECK_THAT(seen[0].message, Catch::Matchers::Contains("'in.a.*'") &&
                                  Catch::Matchers::Contains("not a valid herald topic"));
  CHECK(seen.back().kind == ErrorKind::decode_failed);
  CHECK_THAT(seen.back().message, Catch::Matchers::Contains("expected 4 bytes, got 3"));
  natsConnection_Destroy(raw);
}

TEST_CASE("the ready codecs round-trip and refuse bytes of the wrong size", "[nats]") {
  std::string scratch;
  const herald::nats::StringCodec sc;
  CHECK(sc.decode(sc.encode(std::string("h\0llo", 5), scratch)) == std::string("h\0llo", 5));

  const herald::nats::BytesCodec bc;
  const std::vector<std::byte> bytes = {std::byte{0}, std::byte{255}, std::byte{7}};
  CHECK(bc.decode(bc.encode(bytes, scratch)) == bytes);

  struct Point {
    double x;
    std::int32_t y;
  };
  const herald::nats::TrivialCodec<Point> pc;
  const Point p = pc.decode(pc.encode(Point{1.5, -3}, scratch));
  CHECK(p.x == 1.5);
  CHECK(p.y == -3);
  CHECK_THROWS_AS(pc.decode("abc"), herald::nats::DecodeError);

  STATIC_REQUIRE(herald::nats::Codec<herald::nats::DefaultCodec<std::string>, std::string>);
  STATIC_REQUIRE(herald::nats::Codec<herald::nats::DefaultCodec<int>, int>);
}

namespace {
struct Order {
  std::string id;
  int quantity = 0;
};
// A user codec: "id|quantity".
struct OrderCodec {
  std::string_view encode(const Order& o, std::string& scratch) const {
    scratch = o.id + "|" + std::to_string(o.quantity);
    return scratch;
  }
  Order decode(std::string_view bytes) const {
    const auto bar = bytes.find('|');
    if (bar == std::string_view::npos) throw herald::nats::DecodeError("no '|'");
    return Order{std::string(bytes.substr(0, bar)), std::stoi(std::string(bytes.substr(bar + 1)))};
  }
};
}  // namespace

TEST_CASE("a user codec carries a type that is not trivially copyable", "[nats]") {
  NatsServer server;
  Broker<Order> a;
  Broker<Order> b;
  Bridge<Order, OrderCodec> ab(a, {.url = server.url(), .exports = {{.pattern = "orders.>"}}});
  Bridge<Order, OrderCodec> bb(b, {.url = server.url(), .imports = {{.pattern = "orders.*"}}});
  auto at_b = b.subscribe("orders.>");
  a.publish("orders.eu", Order{"A-1", 3});
  a.publish("orders.eu.late", Order{"A-2", 4});  // not selected by orders.*
  a.publish("orders.us", Order{"B-7", 5});
  auto m1 = at_b.receive_for(10s);
  auto m2 = at_b.receive_for(10s);
  REQUIRE(m1);
  REQUIRE(m2);
  CHECK((*m1)->id == "A-1");
  CHECK((*m1)->quantity == 3);
  CHECK((*m2)->id == "B-7");
  CHECK(m2->topic() == "orders.us");
  REQUIRE(ab.flush(10s));
  REQUIRE(eventually([&] { return bb.stats().imported == 2; }));
}

TEST_CASE("imports in one queue group share the messages: each goes to exactly one", "[nats]") {
  NatsServer server;
  const std::uint64_t n = 400;
  Broker<std::uint64_t> source;
  Broker<std::uint64_t> w1;
  Broker<std::uint64_t> w2;
  Bridge<std::uint64_t> src(source, {.url = server.url(), .exports = {{.pattern = "jobs.>"}}});
  const herald::nats::BridgeOptions worker{
      .url = server.url(), .imports = {{.pattern = "jobs.>", .queue_group = "workers"}}};
  Bridge<std::uint64_t> b1(w1, worker);
  Bridge<std::uint64_t> b2(w2, worker);
  auto s1 = w1.subscribe(">", {.capacity = 1024});
  auto s2 = w2.subscribe(">", {.capacity = 1024});
  for (std::uint64_t i = 0; i < n; ++i)
    source.publish("jobs.x", i);
  REQUIRE(src.flush(10s));
  REQUIRE(eventually([&] { return b1.stats().imported + b2.stats().imported == n; }));
  std::vector<std::uint64_t> all;
  while (auto m = s1.try_receive())
    all.push_back(**m);
  while (auto m = s2.try_receive())
    all.push_back(**m);
  std::sort(all.begin(), all.end());
  REQUIRE(all.size() == n);
  for (std::uint64_t i = 0; i < n; ++i)
    CHECK(all[i] == i);
}

TEST_CASE("a bridge is destroyed promptly and cleanly while the server is down", "[nats]") {
  NatsServer server;
  Broker<std::uint64_t> a;
  auto bridge = std::make_unique<Bridge<std::uint64_t>>(
      a, herald::nats::BridgeOptions{.url = server.url(),
                                     .exports = {{.pattern = ">"}},
                                     .imports = {{.pattern = "in.>"}},
                                     .reconnect = {.initial = 5ms, .max = 20ms}});
  server.stop();
  REQUIRE(eventually([&] { return !bridge->is_connected(); }));
  for (std::uint64_t i = 0; i < 100; ++i)
    a.publish("out", i);  // held and queued
  bridge.reset();
  CHECK(a.stats().subscriptions == 0);
  a.publish("out", 1);  // nothing left to receive it
}

namespace {

/// The headers of `m` as (name, value) pairs, in their order.
std::vector<std::pair<std::string, std::string>> fields(const herald::Message<std::string>& m) {
  return {m.headers().begin(), m.headers().end()};
}

}  // namespace

TEST_CASE("headers travel herald -> NATS -> herald: every value of a name, in order", "[nats]") {
  const bool track_loss = GENERATE(false, true);  // true: beside the bridge's own Herald-Seq
  INFO("track_loss " << track_loss);
  NatsServer server;
  Broker<std::string> east;
  Broker<std::string> west;
  Bridge<std::string> out(
      east, {.url = server.url(), .exports = {{.pattern = "h.>"}}, .track_loss = track_loss});
  Bridge<std::string> in(
      west, {.url = server.url(), .imports = {{.pattern = "h.>"}}, .track_loss = track_loss});
  auto at_west = west.subscribe("h.>", {.capacity = 64});

  east.publish("h.a", std::string("with"),
               {.headers = {{"Trace-Id", "t-1"},
                            {"Multi", "1"},
                            {"Multi", "2"},
                            {"lower-case", "kept as written"},
                            {"Multi", "3"},
                            {"Utf8", "\xc3\xa9t\xc3\xa9 \xe2\x82\xac"}}});
  east.publish("h.b", std::string("without"));
  auto publisher = east.publisher("h.c");
  publisher.publish(std::string("publisher"), {.headers = {{"Multi", "solo"}}});
  publisher.publish(std::string("publisher, none"));

  auto with = at_west.receive_for(10s);
  REQUIRE(with);
  CHECK(**with == "with");
  CHECK(with->origin() == in.id());
  const herald::Headers& h = with->headers();
  CHECK(h.get_all("Multi") == std::vector<std::string_view>{"1", "2", "3"});
  CHECK(h.get("Trace-Id") == "t-1");
  CHECK(h.get("lower-case") == "kept as written");
  CHECK_FALSE(h.contains("Lower-Case"));  // names are case-sensitive on the way
  CHECK(h.get("Utf8") == "\xc3\xa9t\xc3\xa9 \xe2\x82\xac");
  CHECK_FALSE(h.contains("Herald-Seq"));  // the bridge's own, never imported
  CHECK(h.size() == 6);
  INFO("headers received: " << h.size());

  auto without = at_west.receive_for(10s);
  REQUIRE(without);
  CHECK(**without == "without");
  CHECK(without->headers().empty());

  auto solo = at_west.receive_for(10s);
  REQUIRE(solo);
  CHECK(fields(*solo) == std::vector<std::pair<std::string, std::string>>{{"Multi", "solo"}});
  auto none = at_west.receive_for(10s);
  REQUIRE(none);
  CHECK(**none == "publisher, none");
  CHECK(none->headers().empty());

  REQUIRE(eventually([&] { return in.stats().imported == 4; }));
  const auto s = in.stats();
  CHECK(s.received == 4);
  CHECK(s.dropped_decode == 0);
  CHECK(s.lost == 0);
}

TEST_CASE("an imported header that breaks herald's rules drops its message, reported", "[nats]") {
  NatsServer server;
  Errors errors;
  Broker<std::string> broker;
  Bridge<std::string> bridge(
      broker, {.url = server.url(), .imports = {{.pattern = "in.>"}}, .on_error = errors.sink()});
  auto sub = broker.subscribe("in.>", {.capacity = 8});

  natsConnection* raw = nullptr;
  REQUIRE(natsConnection_ConnectTo(&raw, server.url().c_str()) == NATS_OK);
  auto publish = [&](const char* subject, const char* name, const std::string& value) {
    natsMsg* msg = nullptr;
    REQUIRE(natsMsg_Create(&msg, subject, nullptr, "v", 1) == NATS_OK);
    REQUIRE(natsMsgHeader_Add(msg, name, value.c_str()) == NATS_OK);
    REQUIRE(natsConnection_PublishMsg(raw, msg) == NATS_OK);
    natsMsg_Destroy(msg);
  };
  publish("in.bad", "Big", std::string(herald::Headers::max_value_bytes + 1, 'x'));
  publish("in.good", "Ok", "1");
  REQUIRE(natsConnection_FlushTimeout(raw, 5000) == NATS_OK);
  natsConnection_Destroy(raw);

  auto m = sub.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "in.good");
  CHECK(m->headers().get("Ok") == "1");
  REQUIRE(eventually([&] { return bridge.stats().imported == 1; }));
  const auto s = bridge.stats();
  CHECK(s.received == 2);
  CHECK(s.dropped_decode == 1);
  const auto seen = errors.snapshot();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].kind == ErrorKind::decode_failed);
  CHECK(seen[0].subject == "in.bad");
  CHECK_THAT(seen[0].message, Catch::Matchers::Contains("header \"Big\"") &&
                                  Catch::Matchers::Contains("at most 65536"));
}

TEST_CASE("the status of a no-responders message is not imported as headers", "[nats]") {
  NatsServer server;
  Broker<std::string> broker;
  Bridge<std::string> bridge(broker, {.url = server.url(), .imports = {{.pattern = "inbox.>"}}});
  auto sub = broker.subscribe("inbox.>", {.capacity = 8});
  // A request nobody serves, answered to a subject the bridge imports: the server sends its
  // "NATS/1.0 503" status there (to the requesting connection, so from the bridge's own).
  REQUIRE(natsConnection_PublishRequestString(bridge.native_handle(), "nobody.home", "inbox.r1",
                                              "?") == NATS_OK);
  auto m = sub.receive_for(10s);
  REQUIRE(m);
  CHECK(m->topic() == "inbox.r1");
  CHECK((*m)->empty());
  CHECK(m->headers().empty());
}

#ifdef HERALD_NATS_GO_PEER
namespace {

/// A child process sharing the test's stdout and stderr; the destructor kills it if it still
/// runs (a failed REQUIRE on the way).
class Child {
 public:
  explicit Child(std::vector<std::string> args) {
    std::vector<char*> argv;
    for (auto& a : args)
      argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      wait();
    }
  }
  [[nodiscard]] bool started() const noexcept { return pid_ > 0; }
  /// Its exit status (-1: killed or not started).
  int wait() {
    int status = 0;
    while (pid_ > 0 && waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    const bool ran = pid_ > 0;
    pid_ = -1;
    return ran && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

 private:
  pid_t pid_ = -1;
};

}  // namespace

TEST_CASE("a nats.go client reads the headers herald exports, and herald imports its headers",
          "[nats][go]") {
  NatsServer server;
  Broker<std::string> broker;
  Bridge<std::string> bridge(
      broker,
      {.url = server.url(), .exports = {{.pattern = "out.>"}}, .imports = {{.pattern = "in.>"}}});
  auto in = broker.subscribe("in.>", {.capacity = 16});
  Child peer({HERALD_NATS_GO_PEER, "-url=" + server.url()});
  REQUIRE(peer.started());

  auto ready = in.receive_for(20s);  // the peer listens on out.>
  REQUIRE(ready);
  REQUIRE(ready->topic() == "in.ready");
  CHECK(ready->headers().empty());  // nats.go sent it without headers

  broker.publish(
      "out.check", std::string("from herald"),
      {.headers = {{"Trace-Id", "abc-123"}, {"Multi", "1"}, {"lower-case", "v"}, {"Multi", "2"}}});

  auto report = in.receive_for(20s);
  REQUIRE(report);
  REQUIRE(report->topic() == "in.report");
  // What nats.go saw: names sorted, the values of each in the order herald added them.
  CHECK(**report ==
        "subject=out.check\npayload=from herald\nMulti=1\nMulti=2\nTrace-Id=abc-123\n"
        "lower-case=v\n");

  auto from_go = in.receive_for(20s);
  REQUIRE(from_go);
  CHECK(from_go->topic() == "in.from-go");
  CHECK(**from_go == "from nats.go");
  CHECK(from_go->origin() == bridge.id());
  const herald::Headers& h = from_go->headers();
  CHECK(h.get("Trace-Id") == "go-42");
  CHECK(h.get_all("Multi") == std::vector<std::string_view>{"x", "y"});
  CHECK(h.size() == 3);

  CHECK(peer.wait() == 0);
}
TEST_CASE("what herald imports when a nats.go client sends subjects herald would not send",
          "[nats][go]") {
  using namespace std::string_literals;
  NatsServer server;
  Errors errors;
  Broker<std::string> broker;
  Bridge<std::string> bridge(
      broker, {.url = server.url(), .imports = {{.pattern = "in.>"}}, .on_error = errors.sink()});
  auto in = broker.subscribe(">", {.capacity = 16});
  Child peer({HERALD_NATS_GO_PEER, "-url=" + server.url(), "-wire"});
  REQUIRE(peer.started());
  CHECK(peer.wait() == 0);

  std::vector<std::string> topics;
  for (;;) {
    auto m = in.receive_for(20s);
    REQUIRE(m);
    topics.push_back(m->topic());
    if (m->topic() == "in.wire.done") break;
  }
  // A NUL: the server delivers the whole subject, the C client's string stops at the NUL; the
  // bridge sees that and rejects the message rather than import it as "in.wire.nul".
  // A space or a tab: the server itself splits the PUB line there and routes the message to
  // "in.wire.space" / "in.wire.tab" (the rest becomes its reply subject): the sender's subject
  // never reaches any subscriber, herald's or another client's.
  // Other control bytes, DEL and bytes >= 0x80 travel intact and are valid herald topic bytes.
  CHECK(topics == std::vector<std::string>{"in.wire.space", "in.wire.tab",
                                           "in.wire.ctl\x01\x7f\xff"s, "in.wire.done"});
  REQUIRE(eventually([&] {
    const auto s = bridge.stats();
    return s.received == s.imported + s.rejected;
  }));
  const auto s = bridge.stats();
  CHECK(s.received == 5);
  CHECK(s.imported == 4);
  CHECK(s.rejected == 1);
  const auto seen = errors.snapshot();
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].kind == ErrorKind::invalid_topic);
  CHECK(seen[0].subject == "in.wire.nul");
  CHECK_THAT(seen[0].message, Catch::Matchers::Contains("cut short by a NUL byte"));
}
#endif
