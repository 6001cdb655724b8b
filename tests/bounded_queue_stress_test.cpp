// BoundedQueue<T> under concurrency: P producers x C consumers with every flavour of push and pop.
// Items carry (producer, seq); consumers prove exactly-once delivery and per-producer order.
// Randomized parts print their seed; set HERALD_SEED=<n> to replay one.
#include <herald/bounded_queue.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <latch>
#include <random>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

using herald::BoundedQueue;
using herald_test::ThreadChecks;
using namespace std::chrono_literals;

namespace {

#if defined(HERALD_SANITIZED_BUILD)
constexpr std::uint32_t kItemsPerProducer = 25000;
#else
constexpr std::uint32_t kItemsPerProducer = 40000;
#endif

struct Item {
  std::uint32_t producer;
  std::uint32_t seq;
};

enum class Mode { blocking, try_spin, timed, batch, stop_token };

const char* name(Mode m) {
  switch (m) {
    case Mode::blocking:
      return "blocking";
    case Mode::try_spin:
      return "try_";
    case Mode::timed:
      return "timed";
    case Mode::batch:
      return "batch";
    case Mode::stop_token:
      return "stop_token";
  }
  return "?";
}

// What one consumer saw: per producer, the sequence numbers in arrival order.
using Seen = std::vector<std::vector<std::uint32_t>>;

// Checks that, across consumers, producer p's items 0..counts[p]-1 arrived exactly once each, and
// each consumer saw every producer's items in increasing order.
void check_delivery(const std::vector<Seen>& seen, const std::vector<std::uint32_t>& counts) {
  for (std::size_t p = 0; p < counts.size(); ++p) {
    std::vector<std::uint32_t> all;
    for (const Seen& s : seen) {
      const auto& mine = s[p];
      INFO("producer " << p);
      CHECK(std::is_sorted(mine.begin(), mine.end()));
      CHECK(std::adjacent_find(mine.begin(), mine.end()) == mine.end());
      all.insert(all.end(), mine.begin(), mine.end());
    }
    std::sort(all.begin(), all.end());
    INFO("producer " << p << " pushed " << counts[p] << ", consumers got " << all.size());
    REQUIRE(all.size() == counts[p]);
    for (std::uint32_t i = 0; i < counts[p]; ++i) {
      if (all[i] != i) FAIL("producer " << p << ": seq " << i << " missing or duplicated");
    }
  }
}

void run_matrix(std::uint32_t producers, std::uint32_t consumers, std::size_t capacity, Mode mode) {
  INFO(producers << "P x " << consumers << "C, capacity " << capacity << ", " << name(mode));
  BoundedQueue<Item> q(capacity);
  std::vector<Seen> seen(consumers, Seen(producers));
  std::stop_source stop;
  std::atomic<std::uint64_t> consumed{0};
  // Spinning with yield (try_) and short timed waits crawl when the machine is oversubscribed:
  // every yield may hand the core to another process for a whole time slice. Fewer items there.
  const std::uint32_t per_producer =
      (mode == Mode::try_spin || mode == Mode::timed) ? kItemsPerProducer / 4 : kItemsPerProducer;
  const std::uint64_t total = std::uint64_t{producers} * per_producer;
  std::latch start(producers + consumers);
  ThreadChecks producer_checks;

  std::vector<std::jthread> threads;
  for (std::uint32_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      Seen& mine = seen[c];
      const auto record = [&](const Item& it) {
        mine[it.producer].push_back(it.seq);
        consumed.fetch_add(1, std::memory_order_relaxed);
      };
      start.arrive_and_wait();
      switch (mode) {
        case Mode::blocking:
          while (auto it = q.pop())
            record(*it);
          break;
        case Mode::try_spin:
          for (unsigned idle = 0;;) {
            if (auto it = q.try_pop()) {
              record(*it);
            } else if (q.is_closed() && q.approx_size() == 0) {
              while (auto rest = q.try_pop())
                record(*rest);  // anything published late
              break;
            } else if (++idle % 64 == 0) {
              std::this_thread::yield();
            }
          }
          break;
        case Mode::timed:
          for (;;) {
            if (auto it = q.pop_for(50us)) {
              record(*it);
            } else if (q.is_closed() && q.approx_size() == 0) {
              break;
            }
          }
          break;
        case Mode::batch: {
          Item buf[16];
          for (;;) {
            const std::size_t n = q.try_pop_many(buf, 16);
            for (std::size_t i = 0; i < n; ++i)
              record(buf[i]);
            if (n != 0) continue;
            if (auto it = q.pop()) {
              record(*it);
            } else {
              break;  // closed and drained
            }
          }
          break;
        }
        case Mode::stop_token:
          while (auto it = q.pop(stop.get_token()))
            record(*it);
          break;
      }
    });
  }
  for (std::uint32_t p = 0; p < producers; ++p) {
    threads.emplace_back([&, p] {
      start.arrive_and_wait();
      for (std::uint32_t i = 0; i < per_producer; ++i) {
        const Item it{p, i};
        switch (mode) {
          case Mode::blocking:
          case Mode::batch:
            producer_checks.expect(q.push(it));
            break;
          case Mode::try_spin:
            while (!q.try_push(it))
              std::this_thread::yield();
            break;
          case Mode::timed:
            while (!q.push_for(it, 50us)) {
            }
            break;
          case Mode::stop_token:
            producer_checks.expect(q.push(it, stop.get_token()));
            break;
        }
      }
    });
  }
  // Join the producers (the last `producers` threads), then end the consumers.
  for (std::uint32_t p = 0; p < producers; ++p)
    threads[consumers + p].join();
  if (mode == Mode::stop_token) {
    while (consumed.load() != total)
      std::this_thread::yield();
    stop.request_stop();
  } else {
    q.close();
  }
  threads.clear();
  CHECK(producer_checks.failures() == 0);
  CHECK(consumed.load() == total);
  check_delivery(seen, std::vector<std::uint32_t>(producers, per_producer));
  CHECK_FALSE(q.try_pop().has_value());
}

}  // namespace

TEST_CASE("every item is delivered exactly once and in per-producer order", "[stress]") {
  const std::pair<std::uint32_t, std::uint32_t> shapes[] = {{1, 1}, {2, 2}, {4, 1}, {3, 5}};
  const Mode modes[] = {Mode::blocking, Mode::try_spin, Mode::timed, Mode::batch, Mode::stop_token};
  for (const auto& [p, c] : shapes) {
    for (const Mode m : modes) {
      // A tiny ring keeps producers and consumers colliding on full and empty (and parking); a
      // larger one lets them run apart. Alternate by shape and mode.
      const std::size_t capacity = ((p + c + static_cast<std::uint32_t>(m)) % 2 == 0) ? 4 : 256;
      run_matrix(p, c, capacity, m);
    }
  }
}

TEST_CASE("close racing with pushes: every push that returned true is popped exactly once",
          "[stress]") {
  const std::uint64_t seed = herald_test::seed("close race");
  INFO("seed " << seed << " (replay with HERALD_SEED=" << seed << ")");
  std::mt19937_64 rng(seed);
#if defined(HERALD_SANITIZED_BUILD)
  constexpr int rounds = 6;
#else
  constexpr int rounds = 30;
#endif
  for (int round = 0; round < rounds; ++round) {
    const std::uint32_t producers = 1 + static_cast<std::uint32_t>(rng() % 4);
    const std::uint32_t consumers = 1 + static_cast<std::uint32_t>(rng() % 3);
    const std::size_t capacity = std::size_t{1} << (rng() % 7);
    const std::uint32_t close_after = static_cast<std::uint32_t>(rng() % 20000);
    INFO("round " << round << ": " << producers << "P x " << consumers << "C, capacity " << capacity
                  << ", close after " << close_after << " pops");
    BoundedQueue<Item> q(capacity);
    std::vector<Seen> seen(consumers, Seen(producers));
    std::vector<std::uint32_t> pushed(producers, 0);
    std::atomic<std::uint32_t> popped{0};
    std::latch start(producers + consumers + 1);
    ThreadChecks producer_checks;
    std::vector<std::jthread> threads;
    for (std::uint32_t c = 0; c < consumers; ++c) {
      threads.emplace_back([&, c] {
        start.arrive_and_wait();
        while (auto it = q.pop()) {
          seen[c][it->producer].push_back(it->seq);
          popped.fetch_add(1, std::memory_order_relaxed);
        }
      });
    }
    for (std::uint32_t p = 0; p < producers; ++p) {
      threads.emplace_back([&, p] {
        start.arrive_and_wait();
        // Sequence numbers advance only on success, so the successes are exactly 0..n-1.
        std::uint32_t n = 0;
        for (;;) {
          const bool ok = (n % 3 == 0) ? q.try_push(Item{p, n}) : q.push(Item{p, n});
          if (ok) {
            ++n;
          } else if (q.is_closed()) {
            break;
          }
        }
        producer_checks.expect(!q.push(Item{p, n}));  // once closed, stays closed
        pushed[p] = n;
      });
    }
    start.arrive_and_wait();
    while (popped.load() < close_after && popped.load() < 1000000)
      std::this_thread::yield();
    q.close();
    threads.clear();
    CHECK(producer_checks.failures() == 0);
    check_delivery(seen, pushed);
  }
}

TEST_CASE("poppers and pushers parked on both sides all make progress", "[stress]") {
  // Capacity 1 and more threads than cores: nearly every operation parks, exercising the
  // notify-when-someone-waits path and the hand-over of absorbed wake-ups.
  BoundedQueue<Item> q(1);
  constexpr std::uint32_t producers = 3;
  constexpr std::uint32_t consumers = 3;
  const std::uint32_t per = kItemsPerProducer / 4;
  std::vector<Seen> seen(consumers, Seen(producers));
  ThreadChecks pusher_checks;
  std::vector<std::jthread> threads;
  for (std::uint32_t c = 0; c < consumers; ++c) {
    threads.emplace_back([&, c] {
      while (auto it = q.pop())
        seen[c][it->producer].push_back(it->seq);
    });
  }
  std::vector<std::jthread> pushers;
  for (std::uint32_t p = 0; p < producers; ++p) {
    pushers.emplace_back([&, p] {
      for (std::uint32_t i = 0; i < per; ++i)
        pusher_checks.expect(q.push(Item{p, i}));
    });
  }
  pushers.clear();
  q.close();
  threads.clear();
  CHECK(pusher_checks.failures() == 0);
  check_delivery(seen, std::vector<std::uint32_t>(producers, per));
}
