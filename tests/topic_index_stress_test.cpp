// TopicIndex under the broker's locking scheme: many concurrent match() calls under a shared
// lock, inserts and erases under an exclusive one. TSan checks that match() only reads.
#include <herald/topic_index.hpp>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <random>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include "catch.hpp"
#include "test_support.hpp"

namespace {

#if defined(HERALD_SANITIZED_BUILD)
constexpr int kWriterOps = 20000;
#else
constexpr int kWriterOps = 200000;
#endif

struct Entry {
  std::string pattern;
  int tag = 0;
  bool permanent = false;
  friend bool operator==(const Entry&, const Entry&) = default;
};

std::string random_tokens(std::mt19937_64& rng, bool pattern) {
  static const char* const kTokens[] = {"a", "b", "c", "*", ">"};
  const std::size_t n = 1 + rng() % 4;
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    if (i != 0) s += '.';
    // '>' only last; no wildcards at all in topics.
    const std::size_t choices = !pattern ? 3 : (i + 1 == n ? 5 : 4);
    s += kTokens[rng() % choices];
  }
  return s;
}

}  // namespace

TEST_CASE("concurrent matches under a shared lock see every permanent entry exactly once",
          "[topic_index][stress]") {
  const std::uint64_t seed = herald_test::seed("topic_index stress");
  INFO("HERALD_SEED=" << seed);

  herald::TopicIndex<Entry> index;
  std::shared_mutex lock;
  // Permanent entries are never erased: every match must visit each matching one exactly once,
  // however the churning entries around them change the trie.
  const std::vector<Entry> permanent = {{">", 0, true}, {"a.*", 1, true}, {"*.b.>", 2, true}};
  for (const auto& e : permanent)
    index.insert(e.pattern, e);

  std::atomic<bool> done{false};
  std::atomic<long> failures{0};
  std::atomic<long> matches{0};
  auto reader = [&](std::uint64_t reader_seed) {
    std::mt19937_64 rng(reader_seed);
    do {  // at least once, however late this thread starts
      const std::string topic = random_tokens(rng, false);
      int seen[3] = {0, 0, 0};
      {
        std::shared_lock guard(lock);
        index.match(topic, [&](const Entry& e) {
          if (!herald::matches(topic, e.pattern)) failures.fetch_add(1);
          if (e.permanent) ++seen[e.tag];
        });
      }
      for (const auto& e : permanent) {
        const int want = herald::matches(topic, e.pattern) ? 1 : 0;
        if (seen[e.tag] != want) failures.fetch_add(1);
      }
      matches.fetch_add(1, std::memory_order_relaxed);
    } while (!done.load(std::memory_order_acquire));
  };
  std::thread r1(reader, seed + 1);
  std::thread r2(reader, seed + 2);

  std::mt19937_64 rng(seed);
  std::vector<Entry> live;
  for (int op = 0; op < kWriterOps; ++op) {
    std::unique_lock guard(lock);
    if (live.size() < 64 && rng() % 2 == 0) {
      Entry e{random_tokens(rng, true), static_cast<int>(rng() % 4)};
      index.insert(e.pattern, e);
      live.push_back(std::move(e));
    } else if (!live.empty()) {
      const std::size_t i = static_cast<std::size_t>(rng() % live.size());
      if (!index.erase(live[i].pattern, live[i])) failures.fetch_add(1);
      live[i] = std::move(live.back());
      live.pop_back();
    }
  }
  done.store(true, std::memory_order_release);
  r1.join();
  r2.join();

  CHECK(failures.load() == 0);
  CHECK(matches.load() > 0);
  std::fprintf(stderr, "%ld matches during %d writer operations\n", matches.load(), kWriterOps);
  for (const auto& e : live)
    CHECK(index.erase(e.pattern, e));
  CHECK(index.size() == permanent.size());
}
