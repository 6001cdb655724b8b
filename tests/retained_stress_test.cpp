// The joint of a replay under load: publishers publish (topic, per-topic seq) with retention to
// many topics while subscribers with a replay join and leave over and over. The oracle: each
// subscription sees, per topic, a contiguous run of sequence numbers that starts at a retained
// message (or at 1 for a topic never published before it joined), replayed ones first -- no
// gap and no duplicate at the joint.
#include <herald/broker.hpp>
#include <herald/worker_pool.hpp>

#include <atomic>
#include <cstdint>
#include <iostream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::Broker;
using herald::Replay;
using herald_test::Item;
using herald_test::scaled;

namespace {

/// What the oracle counted over every subscription of a run.
struct JointFigures {
  std::atomic<std::uint64_t> subscribes{0};
  std::atomic<std::uint64_t> messages{0};
  std::atomic<std::uint64_t> replayed{0};
  std::atomic<std::uint64_t> gaps{0};
  std::atomic<std::uint64_t> duplicates{0};    // a seq seen again, or going back
  std::atomic<std::uint64_t> bad_starts{0};    // first live message of a fresh topic not seq 1
  std::atomic<std::uint64_t> late_replays{0};  // a replayed message after a live one, or too many
};

/// Checks one subscription's messages, per topic (Item::publisher carries the topic's index).
class Oracle {
 public:
  Oracle(std::size_t topics, std::size_t replay_n)
      : last_(topics, 0), replays_(topics, 0), live_(topics, false), n_(replay_n) {}
  void see(const herald::Message<Item>& m, JointFigures& f) {
    const std::size_t t = m->publisher;
    const std::uint64_t seq = m->seq;
    f.messages.fetch_add(1, std::memory_order_relaxed);
    if (m.replayed()) {
      f.replayed.fetch_add(1, std::memory_order_relaxed);
      if (live_[t] || ++replays_[t] > n_) f.late_replays.fetch_add(1);
    } else if (!live_[t]) {
      live_[t] = true;
      if (last_[t] == 0 && seq != 1) f.bad_starts.fetch_add(1);  // the joint lost its start
    }
    if (last_[t] != 0) {
      if (seq <= last_[t])
        f.duplicates.fetch_add(1);
      else if (seq != last_[t] + 1)
        f.gaps.fetch_add(1);
    }
    last_[t] = seq > last_[t] ? seq : last_[t];
  }

 private:
  std::vector<std::uint64_t> last_;
  std::vector<std::size_t> replays_;
  std::vector<bool> live_;
  std::size_t n_;
};

}  // namespace

TEST_CASE("replay joint: no gap, no duplicate while publishers race subscribers",
          "[retained][stress]") {
  const std::uint64_t seed = herald_test::seed("replay joint");
  const std::size_t topics = 48;
  const int publishers = 3;
  const std::uint64_t per_topic = static_cast<std::uint64_t>(scaled(20000));
  Broker<Item> broker;
  broker.retain("j.odd.>", {.last = 3});  // the other topics retain by the publish flag
  const auto topic_name = [](std::size_t t) {
    return std::string(t % 2 ? "j.odd." : "j.even.") + std::to_string(t);
  };

  JointFigures f;
  std::atomic<int> running{publishers};
  {
    std::vector<std::jthread> threads;
    for (int p = 0; p < publishers; ++p) {
      threads.emplace_back([&, p] {
        // Topics p, p + publishers, ...: each topic has one publisher, so its seq is its order.
        std::vector<std::size_t> mine;
        std::vector<herald::Publisher<Item>> pubs;
        for (std::size_t t = static_cast<std::size_t>(p); t < topics; t += publishers) {
          mine.push_back(t);
          pubs.push_back(broker.publisher(topic_name(t)));
        }
        for (std::uint64_t s = 1; s <= per_topic; ++s) {
          for (std::size_t i = 0; i < mine.size(); ++i) {
            const Item it{static_cast<std::uint32_t>(mine[i]), s};
            if (p == 0) {
              pubs[i].publish(it, {.retain = true});  // a Publisher's own route
            } else {
              broker.publish(topic_name(mine[i]), it, {.retain = true});  // the site cache
            }
          }
        }
        running.fetch_sub(1);
      });
    }
    for (int c = 0; c < 2; ++c) {
      threads.emplace_back([&, c] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(c));
        const char* patterns[] = {"j.>", "j.odd.*", "j.*.*", "j.even.4", "j.odd.7"};
        while (running.load() != 0) {
          const std::size_t n = 1 + rng() % 3;
          const char* pattern = patterns[rng() % 5];
          auto sub = broker.subscribe(pattern, {.capacity = 1 << 16, .replay = Replay::last(n)});
          f.subscribes.fetch_add(1);
          Oracle oracle(topics, n);
          const auto budget = static_cast<int>(rng() % 2000);
          for (int i = 0; i < budget; ++i) {
            auto m = sub.try_receive();
            if (!m)
              std::this_thread::yield();
            else
              oracle.see(*m, f);
          }
          sub.unsubscribe();
          while (auto m = sub.try_receive())  // what was queued before unsubscribe returned
            oracle.see(*m, f);
          if (sub.stats().dropped != 0) f.gaps.fetch_add(1);  // the queue never fills here
        }
      });
    }
  }
  std::cout << "replay joint: " << f.subscribes << " subscribes raced, " << f.messages
            << " messages checked (" << f.replayed << " replayed), " << f.gaps << " gaps, "
            << f.duplicates << " duplicates, " << f.bad_starts << " bad starts, " << f.late_replays
            << " misplaced replays\n";
  CHECK(f.subscribes > 0);
  CHECK(f.gaps == 0);
  CHECK(f.duplicates == 0);
  CHECK(f.bad_starts == 0);
  CHECK(f.late_replays == 0);
  const auto s = broker.stats();
  CHECK(s.retained_topics == topics);
  CHECK(s.retained_messages == topics / 2 + (topics / 2) * 3);
  CHECK(s.published == per_topic * topics);
}

TEST_CASE("replay joint with handler subscriptions and queue-group members", "[retained][stress]") {
  const std::size_t topics = 16;
  const std::uint64_t per_topic = static_cast<std::uint64_t>(scaled(10000));
  Broker<Item> broker;
  JointFigures f;
  std::atomic<bool> done{false};
  herald::WorkerPool pool(2, 1024);
  {
    std::jthread publisher([&] {
      for (std::uint64_t s = 1; s <= per_topic; ++s) {
        for (std::size_t t = 0; t < topics; ++t)
          broker.publish("h." + std::to_string(t), Item{static_cast<std::uint32_t>(t), s},
                         {.retain = true});
      }
      done = true;
    });
    while (!done.load()) {
      Oracle oracle(topics, 1);
      {
        // The strand runs one invocation at a time: the oracle needs no lock.
        auto h = broker.subscribe("h.*", [&](const herald::Message<Item>& m) { oracle.see(m, f); },
                                  pool, {.capacity = 1 << 16, .replay = Replay::last_value()});
        f.subscribes.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(200));  // let it receive some
        h.unsubscribe();  // quiescent: the oracle is ours again
        if (h.stats().dropped != 0) f.gaps.fetch_add(1);
      }
      // A lone member of a group: the whole live stream, after its replay.
      auto g = broker.subscribe(
          "h.>", {.capacity = 1 << 16, .queue_group = "g", .replay = Replay::last_value()});
      Oracle group_oracle(topics, 1);
      for (int i = 0; i < 200; ++i) {
        if (auto m = g.try_receive()) group_oracle.see(*m, f);
      }
      g.unsubscribe();
      while (auto m = g.try_receive())
        group_oracle.see(*m, f);
      f.subscribes.fetch_add(1);
    }
  }
  std::cout << "replay joint (handlers, groups): " << f.subscribes << " subscribes raced, "
            << f.messages << " messages checked, " << f.gaps << " gaps, " << f.duplicates
            << " duplicates\n";
  CHECK(f.gaps == 0);
  CHECK(f.duplicates == 0);
  CHECK(f.bad_starts == 0);
  CHECK(f.late_replays == 0);
}
