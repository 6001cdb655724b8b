// DedupWindow: duplicates within the window, eviction of the oldest beyond the count (first
// sight, not refreshed by duplicates), expiry by age on an injected clock, sharded windows that
// still keep exactly the last max_count keys, colliding hashes (backward-shift deletion), object
// lifetimes, a randomized model check, concurrent inserts, and bad input.
#include <herald/dedup_window.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "catch.hpp"
#include "sync_test_support.hpp"
#include "test_support.hpp"

using herald::DedupWindow;
using herald_test::ManualClock;
using namespace std::chrono_literals;

namespace {

herald::DedupWindowOptions with_clock(ManualClock& clock, std::size_t shards = 0) {
  herald::DedupWindowOptions o;
  o.clock = clock.fn();
  o.shards = shards;
  return o;
}

/// Sends every key to the same few home slots, so probe runs are long and deletions shift.
struct CollidingHash {
  std::size_t operator()(std::uint64_t k) const noexcept { return k % 3; }
};

struct CountedHash {
  std::size_t operator()(const herald_test::Counted& c) const noexcept {
    return std::hash<std::uint64_t>{}(c.value);
  }
};
struct CountedEqual {
  bool operator()(const herald_test::Counted& a, const herald_test::Counted& b) const noexcept {
    return a.value == b.value;
  }
};

}  // namespace

TEST_CASE("bad window sizes, ages and shard counts are std::invalid_argument", "[dedup_window]") {
  using W = DedupWindow<std::uint64_t>;
  CHECK_THROWS_AS(W(0), std::invalid_argument);
  CHECK_THROWS_AS(W((std::size_t{1} << 31) + 1), std::invalid_argument);
  CHECK_THROWS_AS(W(10, 0s), std::invalid_argument);
  CHECK_THROWS_AS(W(10, -1s), std::invalid_argument);
  herald::DedupWindowOptions o;
  o.shards = 3;
  CHECK_THROWS_AS(W(10, std::chrono::nanoseconds::max(), o), std::invalid_argument);
  o.shards = 2048;
  CHECK_THROWS_AS(W(10, std::chrono::nanoseconds::max(), o), std::invalid_argument);
  o.shards = 4;
  W w(10, std::chrono::nanoseconds::max(), o);
  CHECK(w.shard_total() == 4);
  CHECK(w.max_count() == 10);
  CHECK(W(10).shard_total() == 1);  // small windows are exact: one shard
}

TEST_CASE("insert is true for a new key and false for a duplicate within the window",
          "[dedup_window]") {
  DedupWindow<std::uint64_t> w(100);
  CHECK(w.insert(7));
  CHECK_FALSE(w.insert(7));
  CHECK_FALSE(w.insert(7));
  CHECK(w.insert(8));
  CHECK(w.contains(7));
  CHECK_FALSE(w.contains(9));
  const auto s = w.stats();
  CHECK(s.inserted == 2);
  CHECK(s.duplicates == 2);
  CHECK(s.size == 2);
  CHECK(w.approx_size() == 2);
}

TEST_CASE("the oldest key is evicted beyond max_count, by first sight", "[dedup_window]") {
  DedupWindow<std::uint64_t> w(3);
  CHECK(w.insert(1));
  CHECK(w.insert(2));
  CHECK(w.insert(3));
  CHECK_FALSE(w.insert(1));  // a duplicate does not refresh key 1
  CHECK(w.insert(4));        // evicts 1, the oldest first sight
  CHECK_FALSE(w.contains(1));
  CHECK(w.contains(2));
  CHECK(w.contains(3));
  CHECK(w.contains(4));
  CHECK(w.insert(1));  // forgotten, so new again; evicts 2
  CHECK_FALSE(w.contains(2));
  const auto s = w.stats();
  CHECK(s.inserted == 5);
  CHECK(s.duplicates == 1);
  CHECK(s.evicted == 2);
  CHECK(s.size == 3);
}

TEST_CASE("keys expire once older than max_age", "[dedup_window]") {
  ManualClock clock;
  DedupWindow<std::string> w(100, 10s, with_clock(clock));
  CHECK(w.insert("a"));
  clock.advance(4s);
  CHECK(w.insert("b"));
  clock.advance(6s);  // a is exactly 10 s old: still within the window
  CHECK(w.contains("a"));
  CHECK_FALSE(w.insert("a"));
  clock.advance(1ns);
  CHECK_FALSE(w.contains("a"));
  CHECK(w.contains("b"));
  CHECK(w.insert("a"));  // new again; b is 6 s old
  clock.advance(5s);
  CHECK_FALSE(w.contains("b"));
  CHECK(w.contains("a"));
  CHECK(w.insert("c"));  // drops b on the way
  const auto s = w.stats();
  CHECK(s.expired == 2);
  CHECK(s.evicted == 0);
  CHECK(s.size == 2);
}

TEST_CASE("a sharded window keeps exactly the last max_count keys", "[dedup_window]") {
  constexpr std::size_t window = 10000;
  constexpr std::uint64_t total = 50000;
  herald::DedupWindowOptions o;
  o.shards = 8;
  DedupWindow<std::uint64_t> w(window, std::chrono::nanoseconds::max(), o);
  for (std::uint64_t k = 0; k < total; ++k)
    REQUIRE(w.insert(k));
  std::uint64_t wrong = 0;
  for (std::uint64_t k = 0; k < total; ++k)
    wrong += w.contains(k) != (k >= total - window) ? 1 : 0;
  CHECK(wrong == 0);
  const auto s = w.stats();
  CHECK(s.evicted == total - window);
  CHECK(s.size == window);
}

TEST_CASE("colliding hashes keep every probe run intact through evictions", "[dedup_window]") {
  DedupWindow<std::uint64_t, CollidingHash> w(100);
  for (std::uint64_t k = 0; k < 1000; ++k) {
    REQUIRE(w.insert(k));
    REQUIRE_FALSE(w.insert(k));
  }
  std::uint64_t wrong = 0;
  for (std::uint64_t k = 0; k < 1000; ++k)
    wrong += w.contains(k) != (k >= 900) ? 1 : 0;
  CHECK(wrong == 0);
}

TEST_CASE("keys are destroyed exactly once: evicted, cleared, and with the window",
          "[dedup_window]") {
  using herald_test::Counted;
  const long before = Counted::live.load();
  {
    DedupWindow<Counted, CountedHash, CountedEqual> w(50);
    for (std::uint64_t k = 0; k < 200; ++k)
      w.insert(Counted(k % 120));
    CHECK(Counted::live.load() - before == 50);
    w.clear();
    CHECK(Counted::live.load() == before);
    CHECK_FALSE(w.contains(Counted(199 % 120)));
    for (std::uint64_t k = 0; k < 30; ++k)
      CHECK(w.insert(Counted(k)));
  }
  CHECK(Counted::live.load() == before);
}

TEST_CASE("a throwing key copy records nothing", "[dedup_window]") {
  using herald_test::Counted;
  DedupWindow<Counted, CountedHash, CountedEqual> w(2);
  const Counted one(1), two(2), three(3);
  CHECK(w.insert(one));
  CHECK(w.insert(two));
  Counted::throw_on_copy = true;
  CHECK_THROWS_AS(w.insert(three), std::runtime_error);
  Counted::throw_on_copy = false;
  CHECK(w.contains(one));  // nothing was evicted for the failed insert
  CHECK(w.contains(two));
  CHECK_FALSE(w.contains(three));
  CHECK(w.stats().inserted == 2);
}

TEST_CASE("random inserts and clock moves match a reference model", "[dedup_window]") {
  const std::uint64_t seed = herald_test::seed("dedup_window model");
  std::mt19937_64 rng(seed);
  ManualClock clock;
  constexpr std::size_t window = 64;
  const auto max_age = 1000ns;
  DedupWindow<std::uint64_t> w(window, max_age, with_clock(clock, 1));
  // The model: a FIFO of (key, time) of first sights and a map of what it holds.
  std::deque<std::pair<std::uint64_t, std::int64_t>> fifo;
  std::unordered_map<std::uint64_t, std::int64_t> held;
  std::int64_t now = 0;
  std::uint64_t mismatches = 0;
  for (int i = 0; i < 200000; ++i) {
    if (rng() % 4 == 0) {
      const auto step = static_cast<std::int64_t>(rng() % 60);
      clock.advance(std::chrono::nanoseconds(step));
      now += step;
    }
    const std::uint64_t key = rng() % 150;
    while (!fifo.empty() && now - fifo.front().second > max_age.count()) {
      held.erase(fifo.front().first);
      fifo.pop_front();
    }
    bool expected = false;
    if (rng() % 3 == 0) {
      mismatches += w.contains(key) != (held.count(key) != 0) ? 1 : 0;
      continue;
    }
    if (held.count(key) == 0) {
      expected = true;
      if (fifo.size() == window) {
        held.erase(fifo.front().first);
        fifo.pop_front();
      }
      fifo.emplace_back(key, now);
      held.emplace(key, now);
    }
    mismatches += w.insert(key) != expected ? 1 : 0;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("concurrent inserts of overlapping keys report each key new exactly once",
          "[dedup_window]") {
  const std::uint64_t seed = herald_test::seed("dedup_window concurrent");
  constexpr int threads_n = 4;
  const std::uint64_t keys = static_cast<std::uint64_t>(herald_test::scaled(40000));
  herald::DedupWindowOptions o;
  o.shards = 8;
  DedupWindow<std::uint64_t> w(static_cast<std::size_t>(keys), std::chrono::nanoseconds::max(), o);
  std::vector<std::atomic<int>> firsts(keys);
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < threads_n; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(seed + static_cast<std::uint64_t>(t));
        // Every thread inserts every key, each in its own order.
        std::vector<std::uint64_t> order(keys);
        for (std::uint64_t k = 0; k < keys; ++k)
          order[k] = k;
        std::shuffle(order.begin(), order.end(), rng);
        for (const std::uint64_t k : order)
          if (w.insert(k)) firsts[k].fetch_add(1);
      });
    }
  }
  std::uint64_t wrong = 0;
  for (const auto& f : firsts)
    wrong += f.load() != 1 ? 1 : 0;
  CHECK(wrong == 0);
  const auto s = w.stats();
  CHECK(s.inserted == keys);
  CHECK(s.duplicates == keys * (threads_n - 1));
  CHECK(s.evicted == 0);
}
