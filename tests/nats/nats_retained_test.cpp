// ImportRule::seed_from_stream against a real nats-server with JetStream (file storage in a
// temporary directory): the broker's retained messages are seeded from the stream's last message
// per subject before live imports enter, an empty stream seeds nothing at once, a missing stream
// is a clear error with nothing left running, and an update published while the bridge starts is
// never lost (the retained value ends at the last one published).
#include <herald/nats.hpp>

#include <nats/nats.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "jetstream_support.hpp"
#include "nats_server.hpp"
#include "test_support.hpp"

using namespace std::chrono_literals;
using herald::Broker;
using herald::Replay;
using herald::nats::Bridge;
using herald::nats::ImportRule;
using herald_test::eventually;
using herald_test::JetStreamServer;
using herald_test::JsClient;
using herald_test::NatsServer;

namespace {

herald::nats::BridgeOptions seeding(const std::string& url, std::string stream) {
  return {.url = url,
          .imports = {ImportRule{
              .pattern = ">", .prefix = "plant", .seed_from_stream = std::move(stream)}}};
}

}  // namespace

TEST_CASE("a bridge seeds the retained messages from a stream's last message per subject",
          "[nats][retained]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("PLANT", "plant.>");
  other.publish<int>("plant.t1", 1);
  other.publish<int>("plant.t1", 2);
  other.publish<int>("plant.t2", 10);
  other.publish<int>("plant.hall.t3", 20);
  other.publish<int>("plant.t2", 11);

  Broker<int> broker;
  broker.retain(">", {.last = 1});  // live imports keep the retained state current
  auto plain = broker.subscribe(">");
  Bridge<int> bridge(broker, seeding(js.server.url(), "PLANT"));

  // When the constructor returns, the seed is in: one message per subject, the newest.
  REQUIRE(broker.retained("t1"));
  CHECK(**broker.retained("t1") == 2);
  CHECK(**broker.retained("t2") == 11);
  CHECK(**broker.retained("hall.t3") == 20);
  CHECK(broker.retained("t1")->origin() == bridge.id());
  CHECK(broker.stats().retained_topics == 3);
  CHECK(bridge.stats().seeded == 3);
  CHECK(bridge.stats().imported == 3);
  std::size_t seen = 0;
  while (plain.try_receive())
    ++seen;
  CHECK(seen == 3);  // a subscriber already there sees the seed as ordinary messages

  // A late subscriber starts from the seeded state.
  auto late = broker.subscribe(">", {.replay = Replay::last_value()});
  std::vector<int> replayed;
  while (auto m = late.try_receive()) {
    CHECK(m->replayed());
    replayed.push_back(**m);
  }
  std::sort(replayed.begin(), replayed.end());
  CHECK(replayed == std::vector<int>{2, 11, 20});

  // Live messages follow, and keep the retained value current.
  other.publish<int>("plant.t1", 3);
  REQUIRE(eventually([&] { return **broker.retained("t1") == 3; }));
  auto live = late.receive_for(5s);
  REQUIRE(live);
  CHECK(**live == 3);
  CHECK_FALSE(live->replayed());
  CHECK(bridge.stats().seeded == 3);
}

TEST_CASE("seeding from a stream without messages for the subjects returns at once",
          "[nats][retained]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("EMPTY", "plant.>");
  other.add_stream("ELSEWHERE", "elsewhere.>");
  other.publish<int>("elsewhere.x", 1);
  Broker<int> broker;
  const auto t0 = std::chrono::steady_clock::now();
  Bridge<int> bridge(broker, seeding(js.server.url(), "EMPTY"));
  CHECK(std::chrono::steady_clock::now() - t0 < 1500ms);  // never waits out a timeout
  CHECK(bridge.stats().seeded == 0);
  CHECK(broker.stats().retained_topics == 0);
}

TEST_CASE("seeding from a missing stream is a clear error and leaves nothing running",
          "[nats][retained]") {
  JetStreamServer js;
  Broker<int> broker;
  auto sub = broker.subscribe(">");
  CHECK_THROWS_WITH(Bridge<int>(broker, seeding(js.server.url(), "NOPE")),
                    Catch::Matchers::Contains("seeding 'plant.>' from stream 'NOPE'"));
  JsClient other(js.server.url());
  REQUIRE(natsConnection_Publish(other.nc, "plant.a", "1234", 4) == NATS_OK);
  REQUIRE(natsConnection_Flush(other.nc) == NATS_OK);
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(sub.try_receive());  // no import outlived the constructor
}

TEST_CASE("an update published while the bridge seeds is not lost", "[nats][retained]") {
  JetStreamServer js;
  JsClient other(js.server.url());
  other.add_stream("PLANT", "plant.>");
  for (int t = 0; t < 200; ++t)  // a seed of some size, so that the race has room
    other.publish<int>("plant.s" + std::to_string(t), t);
  for (int round = 0; round < 5; ++round) {
    Broker<int> broker;
    broker.retain(">", {.last = 1});
    int last = 0;
    std::thread writer([&] {
      JsClient w(js.server.url());
      for (int v = round * 1000 + 1; v <= round * 1000 + 300; ++v) {
        w.publish<int>("plant.race", v);
        last = v;
      }
    });
    {
      Bridge<int> bridge(broker, seeding(js.server.url(), "PLANT"));
      writer.join();
      // The writer's last update reaches the broker live (or in the seed) and ends retained.
      REQUIRE(eventually([&] {
        const auto r = broker.retained("race");
        return r && **r == last;
      }));
      CHECK(broker.stats().retained_topics == 201);
      CHECK(bridge.stats().seeded >= 200);
    }
  }
}
