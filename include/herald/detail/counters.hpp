// Counters written on hot paths: sharded ones that many threads bump without sharing a cache
// line, and owned ones that a single thread writes without a locked instruction.
#pragma once

#include <herald/detail/cache_line.hpp>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>

namespace herald::detail {

/// `Fields` counters that any thread may add to: each thread adds to its own shard (threads are
/// spread over the shards round-robin); readers sum the shards.
template <std::size_t Fields>
class ShardedCounters {
 public:
  /// Adds `n` to counter `field`. Exact: shards are atomics, so two threads that share a shard
  /// lose nothing; they only share a cache line.
  void add(std::size_t field, std::uint64_t n) noexcept {
    shards_[shard_index()].values[field].fetch_add(n, std::memory_order_relaxed);
  }

  /// The sum over all shards (a consistent total once the adding threads have stopped).
  [[nodiscard]] std::uint64_t sum(std::size_t field) const noexcept {
    std::uint64_t total = 0;
    for (const Shard& s : shards_)
      total += s.values[field].load(std::memory_order_relaxed);
    return total;
  }

 private:
  static constexpr std::size_t kShards = 16;

  static std::size_t shard_index() noexcept {
    static std::atomic<std::size_t> next{0};
    thread_local const std::size_t index = next.fetch_add(1, std::memory_order_relaxed) % kShards;
    return index;
  }

  struct alignas(cache_line_size) Shard {
    std::array<std::atomic<std::uint64_t>, Fields> values{};
  };
  std::array<Shard, kShards> shards_{};
};

/// A counter with one writing thread (any number of readers): a plain load and store, no locked
/// read-modify-write.
class OwnedCounter {
 public:
  /// `order`: std::memory_order_release when a reader's acquire load of the value must also see
  /// what the writer did before (e.g. "n messages handled, and their effects").
  /// Each order is spelled as a constant: GCC compiles a store whose order is a run-time value
  /// as seq_cst (an xchg, a full barrier), and did so for the out-of-line copy of add() it made
  /// for the broker's and the bridge's counters.
  void add(std::uint64_t n = 1) noexcept {
    v_.store(v_.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  void add(std::uint64_t n, std::memory_order order) noexcept {
    const std::uint64_t v = v_.load(std::memory_order_relaxed) + n;
    switch (order) {
      case std::memory_order_relaxed:
        v_.store(v, std::memory_order_relaxed);
        break;
      case std::memory_order_release:
        v_.store(v, std::memory_order_release);
        break;
      default:
        v_.store(v, std::memory_order_seq_cst);
        break;
    }
  }
  [[nodiscard]] std::uint64_t get(
      std::memory_order order = std::memory_order_relaxed) const noexcept {
    return v_.load(order);
  }
  /// Raises the value to `v` if it is larger (a maximum; same single writer).
  void raise(std::uint64_t v) noexcept {
    if (v > v_.load(std::memory_order_relaxed)) v_.store(v, std::memory_order_relaxed);
  }

 private:
  std::atomic<std::uint64_t> v_{0};
};

}  // namespace herald::detail
