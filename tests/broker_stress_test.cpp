// Broker<T> under concurrency: DESIGN.md reliability invariants 1-9 for pull subscriptions,
// with (publisher, seq) payloads and a lifetime-counting payload.
#include <herald/broker.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
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
using herald_test::Item;
using herald_test::scaled;

namespace {

/// Checks per-publisher order of everything one subscriber received; records counts.
struct Checker {
  explicit Checker(std::size_t publishers) : last(publishers, 0), count(publishers, 0) {}
  std::vector<std::uint64_t> last;
  std::vector<std::uint64_t> count;
  bool in_order = true;
  bool gap_free = true;
  void see(const Item& it) {
    if (it.seq <= last[it.publisher]) in_order = false;
    if (it.seq != last[it.publisher] + 1) gap_free = false;
    last[it.publisher] = it.seq;
    ++count[it.publisher];
  }
};

}  // namespace

TEST_CASE("block: every subscriber sees every message of every publisher once, in order",
          "[broker][stress]") {
  const int publishers = 3;
  const int subscribers = 4;
  const std::uint64_t per_publisher = static_cast<std::uint64_t>(scaled(20000));
  Broker<Item> broker;
  std::vector<herald::Subscription<Item>> subs;
  for (int i = 0; i < subscribers; ++i) {
    // Different patterns, same topics: wildcard routing is part of what is tested.
    const char* pattern = i % 3 == 0 ? "load.>" : i % 3 == 1 ? "load.*" : ">";
    subs.push_back(broker.subscribe(pattern, {.capacity = 64, .overflow = Overflow::block}));
  }
  std::vector<Checker> checks(subscribers, Checker(publishers));
  std::atomic<int> short_deliveries{0};  // Catch2 assertions are not thread-safe: count instead
  {
    std::vector<std::jthread> consumers;
    for (int i = 0; i < subscribers; ++i) {
      consumers.emplace_back([&, i] {
        for (const auto& m : subs[static_cast<std::size_t>(i)]) {
          checks[static_cast<std::size_t>(i)].see(*m);
        }
      });
    }
    {
      std::vector<std::jthread> producers;
      for (int p = 0; p < publishers; ++p) {
        producers.emplace_back([&, p] {
          auto pub = p == 0 ? std::optional<herald::Publisher<Item>>(broker.publisher("load.p0"))
                            : std::nullopt;
          const std::string topic = "load.p" + std::to_string(p);
          for (std::uint64_t s = 1; s <= per_publisher; ++s) {
            const Item it{static_cast<std::uint32_t>(p), s};
            const auto r = pub ? pub->publish(it) : broker.publish(topic, it);
            if (r.delivered != static_cast<std::size_t>(subscribers)) ++short_deliveries;
          }
        });
      }
    }
    broker.close();  // consumers drain what was accepted, then their range-for ends
  }
  CHECK(short_deliveries == 0);
  for (const auto& c : checks) {
    CHECK(c.in_order);
    CHECK(c.gap_free);
    for (auto n : c.count)
      CHECK(n == per_publisher);
  }
  const auto s = broker.stats();
  CHECK(s.delivered == per_publisher * publishers * subscribers);
  CHECK(s.dropped == 0);
}

TEST_CASE("drop policies: per-publisher FIFO and exact accounting under load", "[broker][stress]") {
  const int publishers = 2;
  const std::uint64_t per_publisher = static_cast<std::uint64_t>(scaled(30000));
  const Overflow policy = GENERATE(Overflow::drop_incoming, Overflow::drop_oldest);
  INFO("policy " << herald::to_string(policy));
  Broker<Item> broker;
  auto slow = broker.subscribe("t.*", {.capacity = 8, .overflow = policy});
  auto fast = broker.subscribe("t.*", {.capacity = 1024, .overflow = policy});
  Checker slow_check(publishers);
  Checker fast_check(publishers);
  {
    std::jthread slow_consumer([&] {
      std::uint64_t n = 0;
      for (const auto& m : slow) {
        slow_check.see(*m);
        if (++n % 64 == 0) std::this_thread::sleep_for(50us);  // deliberately slow: it overflows
      }
    });
    std::jthread fast_consumer([&] {
      for (const auto& m : fast)
        fast_check.see(*m);
    });
    {
      std::vector<std::jthread> producers;
      for (int p = 0; p < publishers; ++p) {
        producers.emplace_back([&, p] {
          auto pub = broker.publisher("t.p" + std::to_string(p));
          for (std::uint64_t s = 1; s <= per_publisher; ++s) {
            pub.publish(Item{static_cast<std::uint32_t>(p), s});
          }
        });
      }
    }
    slow.unsubscribe();
    fast.unsubscribe();
  }
  const std::uint64_t offered = per_publisher * publishers;
  for (auto* sub : {&slow, &fast}) {
    const auto st = sub->stats();
    CHECK(st.offered == offered);
    CHECK(st.delivered + st.dropped == offered);  // exact, for every subscriber
    CHECK(st.delivered == st.received + st.evicted + st.queue_depth);
    CHECK(st.queue_depth == 0);
  }
  CHECK(slow_check.in_order);
  CHECK(fast_check.in_order);
  std::uint64_t slow_received = 0;
  for (auto n : slow_check.count)
    slow_received += n;
  CHECK(slow_received == slow.stats().received);
}

TEST_CASE("disconnect: a stalled subscriber gets a gap-free prefix and never slows the others",
          "[broker][stress]") {
  const int publishers = 2;
  const std::uint64_t per_publisher = static_cast<std::uint64_t>(scaled(20000));
  Broker<Item> broker;
  auto stalled = broker.subscribe(
      "t.*", {.capacity = 16, .overflow = Overflow::disconnect, .disconnect_after = 4});
  auto healthy = broker.subscribe("t.*", {.capacity = 64, .overflow = Overflow::block});
  Checker healthy_check(publishers);
  {
    std::jthread consumer([&] {
      for (const auto& m : healthy)
        healthy_check.see(*m);
    });
    {
      std::vector<std::jthread> producers;
      for (int p = 0; p < publishers; ++p) {
        producers.emplace_back([&, p] {
          auto pub = broker.publisher("t.p" + std::to_string(p));
          for (std::uint64_t s = 1; s <= per_publisher; ++s) {
            pub.publish(Item{static_cast<std::uint32_t>(p), s});
          }
        });
      }
    }
    healthy.unsubscribe();
  }
  CHECK(stalled.close_reason() == CloseReason::slow_consumer);
  Checker stalled_check(publishers);
  std::uint64_t n = 0;
  for (const auto& m : stalled) {
    stalled_check.see(*m);
    ++n;
  }
  CHECK(n == 16);                 // exactly the queue's worth, then closed
  CHECK(stalled_check.gap_free);  // per publisher, a prefix: 1, 2, 3, ...
  CHECK(healthy_check.gap_free);
  for (auto c : healthy_check.count)
    CHECK(c == per_publisher);
}

TEST_CASE("nothing is delivered after unsubscribe returns, even racing publishers",
          "[broker][stress][lifetime]") {
  const int rounds = scaled(200);
  Broker<Item> broker;
  std::vector<herald::Subscription<Item>> subs;
  std::vector<std::chrono::steady_clock::time_point> unsubscribed_at;
  {
    std::atomic<std::uint64_t> published[2] = {0, 0};
    std::vector<std::jthread> producers;
    for (int p = 0; p < 2; ++p) {
      producers.emplace_back([&, p](std::stop_token st) {
        std::uint64_t s = 0;
        while (!st.stop_requested()) {
          broker.publish("race.p" + std::to_string(p), Item{static_cast<std::uint32_t>(p), ++s});
          published[p].store(s);
        }
      });
    }
    for (int r = 0; r < rounds; ++r) {
      auto sub = broker.subscribe("race.*", {.capacity = 32, .overflow = Overflow::drop_oldest});
      while (sub.stats().delivered < 4)
        std::this_thread::yield();
      sub.unsubscribe();
      unsubscribed_at.push_back(std::chrono::steady_clock::now());
      // Publishers keep going meanwhile: each completes two more publishes before the next round.
      for (auto& n : published) {
        const std::uint64_t before = n.load();
        while (n.load() < before + 2)
          std::this_thread::yield();
      }
      subs.push_back(std::move(sub));
    }
  }  // producers stop and join
  int late = 0;
  for (std::size_t i = 0; i < subs.size(); ++i) {
    const auto st = subs[i].stats();  // final now: every publisher has returned
    std::uint64_t received = 0;
    while (auto m = subs[i].try_receive()) {
      ++received;
      if (m->published_at() > unsubscribed_at[i]) ++late;  // published after unsubscribe returned
    }
    // A drop_oldest eviction racing the unsubscribe may still remove one queued message; it is
    // counted, so the books balance exactly.
    CHECK(received + st.evicted == st.delivered);
  }
  CHECK(late == 0);
}

TEST_CASE("subscribe, unsubscribe, stop and close race with publishers cleanly",
          "[broker][stress][lifetime]") {
  herald_test::CountedGuard guard;
  const auto seed = herald_test::seed("broker churn");
  const int churn_rounds = scaled(400);
  {
    Broker<herald_test::Counted> broker;
    std::atomic<bool> stop_publishing{false};
    std::atomic<std::uint64_t> published[2] = {0, 0};
    // Subscriptions closed by a stop or an unsubscribe, kept (with what they hold) until the
    // publishers have joined: only then is a snapshot of their counters free of offers in flight.
    std::vector<herald::Subscription<herald_test::Counted>> closed[2];
    std::atomic<int> churned[2] = {0, 0};
    std::vector<std::jthread> threads;
    for (int p = 0; p < 2; ++p) {
      threads.emplace_back([&, p] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(p));
        const char* topics[] = {"a.b", "a.c", "x.y.z", "a.b.c"};
        while (!stop_publishing.load()) {
          const auto r = broker.publish(topics[rng() % 4], herald_test::Counted{rng()});
          if (r.closed) break;
          ++published[p];
        }
      });
    }
    for (int c = 0; c < 2; ++c) {
      threads.emplace_back([&, c] {
        std::mt19937_64 rng(seed + 100 + static_cast<std::uint64_t>(c));
        const char* patterns[] = {"a.*", "a.>", ">", "x.*.z", "a.b"};
        const Overflow policies[] = {Overflow::block, Overflow::drop_incoming,
                                     Overflow::drop_oldest, Overflow::disconnect};
        for (int i = 0; i < churn_rounds; ++i) {
          std::stop_source stop;
          herald::SubscribeOptions o{
              .capacity = 1 + rng() % 16, .overflow = policies[rng() % 4], .block_timeout = 1ms};
          if (rng() % 3 == 0) o.queue_group = "g";
          auto sub = broker.subscribe(patterns[rng() % 5], o, stop.get_token());
          for (int k = 0; k < static_cast<int>(rng() % 8); ++k)
            (void)sub.try_receive();
          switch (rng() % 3) {
            case 0:
              stop.request_stop();
              closed[c].push_back(std::move(sub));
              break;
            case 1:
              sub.unsubscribe();
              closed[c].push_back(std::move(sub));
              break;
            default:
              break;  // the destructor unsubscribes
          }
          ++churned[c];
        }
      });
    }
    // Close in the middle of the churn: once every thread has done a good part of its work.
    for (int i = 0; i < 2; ++i) {
      while (published[i].load() < 1000 || churned[i].load() < churn_rounds / 4)
        std::this_thread::yield();
    }
    broker.close();
    const auto after = broker.publish("a.b", herald_test::Counted{1});
    CHECK(after.closed);
    stop_publishing = true;
    threads.clear();
    int bad_accounting = 0;
    std::size_t checked = 0;
    for (auto& subs : closed) {
      for (const auto& sub : subs) {
        const auto st = sub.stats();
        if (st.offered != st.delivered + st.dropped) ++bad_accounting;
        if (st.delivered != st.received + st.evicted + st.queue_depth) ++bad_accounting;
        ++checked;
      }
    }
    CHECK(checked > 0);
    CHECK(bad_accounting == 0);
  }
  CHECK(herald_test::Counted::live == 0);
}
