// DedupWindow: "have I seen this id recently?" for idempotent consumers, over a window bounded by
// a count of keys and by their age, in O(1) per operation.
//
// The keys are spread over shards by hash; each shard is a mutex, an open-addressing table that
// holds the keys (linear probing, backward-shift deletion, so no tombstones), and a FIFO ring of
// entries in insertion order (number, time, tag) pointing at them. Inserting pushes at the
// ring's tail; eviction by count and expiry by age pop at its head, because the head is both the
// oldest by number and the oldest by time. A key found in the table counts once what is due at
// the head has been dropped, so a lookup reads only the table (one cache miss at 100k keys; a
// hit in a window with a max_age also reads the clock, a miss never does). A global sequence
// numbers the new keys, so "the last max_count keys" means the same whichever shards they
// landed in.
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/hashing.hpp>

#include <algorithm>
#include <atomic>
#include <bit>
#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

namespace herald {

/// Construction options of a DedupWindow.
struct DedupWindowOptions {
  using Clock = std::chrono::steady_clock;
  /// Number of shards, a power of two; 0 picks one from the window size and the hardware (1 for
  /// windows under 4096 keys, where the count bound is then exact per the insertion order).
  std::size_t shards = 0;
  /// The time source for max_age (empty: steady_clock::now). Read once per operation, and only
  /// when max_age is finite. On VMs steady_clock can cost tens of nanoseconds, more than the
  /// lookup itself; coarse_clock() below reads the kernel tick instead.
  std::function<Clock::time_point()> clock{};

  /// steady_clock's timeline at the resolution of the kernel tick (1-4 ms on Linux, where it
  /// reads CLOCK_MONOTONIC_COARSE in a few nanoseconds; elsewhere steady_clock::now()). Fine for
  /// windows of seconds or minutes; entries may then live up to one tick beyond max_age.
  static Clock::time_point coarse_clock() noexcept {
#if defined(__linux__) && defined(CLOCK_MONOTONIC_COARSE)
    timespec ts{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    // CLOCK_MONOTONIC_COARSE is CLOCK_MONOTONIC (steady_clock's clock on Linux) as of the last
    // tick: same origin, same rate.
    return Clock::time_point(std::chrono::duration_cast<Clock::duration>(
        std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec)));
#else
    return Clock::now();
#endif
  }
};

/// Counters of a DedupWindow (exact once no operation is running).
struct DedupWindowStats {
  std::uint64_t inserted = 0;    ///< insert() calls that found the key new
  std::uint64_t duplicates = 0;  ///< insert() calls that found the key within the window
  std::uint64_t evicted = 0;     ///< keys dropped because newer keys filled the window
  std::uint64_t expired = 0;     ///< keys dropped because they grew older than max_age
  std::size_t size = 0;          ///< keys held now (some may be due for dropping)
};

/// A bounded set of recently seen keys: `insert(key)` says whether `key` is new, i.e. not among
/// the last `max_count` new keys nor seen less than `max_age` ago.
///
/// ```
/// herald::DedupWindow<std::uint64_t> seen{100'000, std::chrono::minutes(5)};
/// if (seen.insert(msg->id)) process(*msg);  // false: a duplicate within the window, skip it
/// ```
/// A key stays "seen" from its first insert (a duplicate does not refresh it) until
/// `max_count` newer keys were inserted or it is older than `max_age` (age > max_age), whichever
/// comes first. With several shards, a shard holds at most 1.25 x its share of the window + 64;
/// only a shard that overflows that (a badly skewed hash) forgets its oldest keys early, and
/// those count as evicted.
/// Thread-safety: every member may be called concurrently.
/// Complexity: O(1) expected per operation.
template <class Key, class Hash = std::hash<Key>, class KeyEqual = std::equal_to<Key>>
class DedupWindow {
 public:
  using Options = DedupWindowOptions;
  using Stats = DedupWindowStats;
  using Clock = Options::Clock;

  static_assert(std::is_nothrow_destructible_v<Key>, "Key must be nothrow destructible");
  static_assert(std::is_nothrow_move_constructible_v<Key>,
                "Key must be nothrow move constructible (keys move within the table)");

  /// A window of the last `max_count` new keys, each forgotten once older than `max_age`
  /// (nanoseconds::max(): never).
  /// Throws: std::invalid_argument when max_count is 0 or above 2^31, max_age <= 0, or shards
  /// is not a power of two; std::bad_alloc.
  explicit DedupWindow(std::size_t max_count,
                       std::chrono::nanoseconds max_age = std::chrono::nanoseconds::max(),
                       Options options = {})
      : max_count_(checked_count(max_count)),
        max_age_(checked_age(max_age)),
        clock_(std::move(options.clock)) {
    const std::size_t n = shard_count(options.shards, max_count_);
    shard_bits_ = 0;
    while ((std::size_t{1} << shard_bits_) < n)
      ++shard_bits_;
    // One shard: exactly the window. More: the share plus a quarter plus 64, many standard
    // deviations of a random spread (share 12500: +3189, ~28 sigma; share 512: +192, ~9 sigma).
    const std::size_t share = (max_count_ + n - 1) / n;
    const std::size_t ring = n == 1 ? max_count_ : std::min(max_count_, share + share / 4 + 64);
    shards_ = std::make_unique<Shard[]>(n);
    for (std::size_t i = 0; i < n; ++i)
      shards_[i].init(ring);
  }

  DedupWindow(const DedupWindow&) = delete;
  DedupWindow& operator=(const DedupWindow&) = delete;
  ~DedupWindow() = default;

  /// Records `key` and returns true if it was not within the window (first sight, or forgotten
  /// since); false for a duplicate.
  /// Throws: what copying `key` throws (nothing is recorded then). Key's move constructor
  /// should not throw: one that does can lose the key being inserted.
  bool insert(const Key& key) { return insert_impl(key); }
  bool insert(Key&& key) { return insert_impl(std::move(key)); }

  /// Whether `key` is within the window; records nothing (it may drop keys that are due).
  [[nodiscard]] bool contains(const Key& key) const {
    const std::uint64_t h = hash(key);
    Shard& s = shard_for(h);
    s.prefetch_slot(tag_of(h));  // as in insert: the miss overlaps taking the lock
    const std::lock_guard lock(s.mutex);
    // A key not in the table is not in the window: a miss reads no clock and no ring.
    if (s.find(key, tag_of(h), equal_) == Shard::npos) return false;
    // Found: it counts only if it is not due to be dropped. Dropping what is due (from the
    // ring's head) answers that without reading the key's own entry; deletions may move keys
    // within the table, so look again if anything went.
    if (drop_due(s, timed() ? now() : 0) == 0) return true;
    return s.find(key, tag_of(h), equal_) != Shard::npos;
  }

  /// Forgets every key (the statistics are kept).
  void clear() {
    for (std::size_t i = 0; i < shard_total(); ++i) {
      Shard& s = shards_[i];
      const std::lock_guard lock(s.mutex);
      while (s.size != 0)
        s.pop_head();
    }
  }

  /// Keys held right now, including some that are due to be dropped (see stats()).
  [[nodiscard]] std::size_t approx_size() const noexcept {
    std::size_t n = 0;
    for (std::size_t i = 0; i < shard_total(); ++i)
      n += shards_[i].size_view.load(std::memory_order_relaxed);
    return n;
  }

  /// The counters. Drops what is due first, so that `size` and `evicted` are exact (a shard
  /// otherwise drops old keys only when one of its own keys is inserted).
  [[nodiscard]] Stats stats() const {
    Stats st;
    const std::int64_t now_ns = timed() ? now() : 0;
    for (std::size_t i = 0; i < shard_total(); ++i) {
      Shard& s = shards_[i];
      const std::lock_guard lock(s.mutex);
      drop_due(s, now_ns);
      st.inserted += s.inserted;
      st.duplicates += s.duplicates;
      st.evicted += s.evicted;
      st.expired += s.expired;
      st.size += s.size;
    }
    return st;
  }

  [[nodiscard]] std::size_t max_count() const noexcept { return max_count_; }
  [[nodiscard]] std::chrono::nanoseconds max_age() const noexcept {
    return std::chrono::nanoseconds(max_age_);
  }
  [[nodiscard]] std::size_t shard_total() const noexcept { return std::size_t{1} << shard_bits_; }

 private:
  static constexpr std::int64_t no_age = INT64_MAX;

  /// When a key came: its global number and time, and its tag to find its slot again.
  struct Entry {
    std::uint64_t seq;   // global number of this new key
    std::int64_t stamp;  // ns on the clock when inserted (0 when untimed)
    std::uint32_t tag;   // low 32 bits of the mixed hash: the table's home index and fingerprint
  };

  /// A table slot: the key itself (so that a lookup touches nothing else: one cache miss at
  /// 100k keys instead of two), its tag, and its entry in the ring.
  struct Slot {
    std::uint32_t ring_plus_one;  // 0: empty
    std::uint32_t tag;
    alignas(Key) unsigned char storage[sizeof(Key)];
    Key& key() noexcept { return *std::launder(reinterpret_cast<Key*>(storage)); }
    const Key& key() const noexcept { return *std::launder(reinterpret_cast<const Key*>(storage)); }
  };

  /// One shard: a table of keys (linear probing, at most half full) and a ring of entries in
  /// insertion order (oldest at head), each pointing at the other by index.
  struct alignas(detail::cache_line_size) Shard {
    static constexpr std::size_t npos = ~std::size_t{0};

    mutable std::mutex mutex;
    std::unique_ptr<Entry[]> ring;  // live: [head, head + size), modulo capacity
    std::uint32_t capacity = 0;
    std::uint32_t head = 0;
    std::uint32_t size = 0;
    std::atomic<std::size_t> size_view{0};  // size, for approx_size() without the lock
    std::unique_ptr<Slot[]> table;
    std::size_t mask = 0;
    std::uint64_t inserted = 0, duplicates = 0, evicted = 0, expired = 0;

    Shard() = default;
    Shard(const Shard&) = delete;
    Shard& operator=(const Shard&) = delete;
    ~Shard() {
      while (size != 0)
        pop_head();
    }

    void init(std::size_t cap) {
      capacity = static_cast<std::uint32_t>(cap);
      ring = std::make_unique<Entry[]>(cap);
      // At least 1.5 slots per key the ring can hold (2/3 full at worst, about 40% in a sharded
      // window): short probe runs, and a small table, which is what keeps lookups in cache.
      const std::size_t slots = std::bit_ceil(std::max<std::size_t>(16, cap + cap / 2));
      table = std::make_unique<Slot[]>(slots);  // value-initialised: every slot empty
      mask = slots - 1;
    }

    void prefetch_slot(std::uint32_t tag) const noexcept {
#if defined(__GNUC__) || defined(__clang__)
      __builtin_prefetch(&table[tag & mask], 1);
#else
      (void)tag;
#endif
    }

    template <class Eq>
    std::size_t find(const Key& key, std::uint32_t tag, const Eq& eq) const {
      for (std::size_t i = tag & mask;; i = (i + 1) & mask) {
        const Slot& slot = table[i];
        if (slot.ring_plus_one == 0) return npos;
        if (slot.tag == tag && eq(slot.key(), key)) return i;
      }
    }

    /// Adds a key known to be absent; the ring must have room.
    void push(Key&& key, std::uint64_t seq, std::int64_t stamp, std::uint32_t tag) noexcept {
      std::uint32_t idx = head + size;
      if (idx >= capacity) idx -= capacity;
      ring[idx] = Entry{seq, stamp, tag};
      std::size_t i = tag & mask;
      while (table[i].ring_plus_one != 0)
        i = (i + 1) & mask;
      ::new (static_cast<void*>(table[i].storage)) Key(std::move(key));
      table[i].tag = tag;
      table[i].ring_plus_one = idx + 1;
      ++size;
      size_view.store(size, std::memory_order_relaxed);
    }

    void pop_head() noexcept {
      const Entry& e = ring[head];
      std::size_t i = e.tag & mask;
      while (table[i].ring_plus_one != head + 1)
        i = (i + 1) & mask;
      table[i].key().~Key();
      erase_slot(i);
      if (++head == capacity) head = 0;
      --size;
      size_view.store(size, std::memory_order_relaxed);
    }

    /// Backward-shift deletion of the (already destroyed) key in `hole`: pull later keys of the
    /// probe run into the hole unless their home lies cyclically in (hole, their slot], so every
    /// run stays unbroken and no tombstones are needed.
    void erase_slot(std::size_t hole) noexcept {
      std::size_t j = hole;
      for (;;) {
        j = (j + 1) & mask;
        Slot& slot = table[j];
        if (slot.ring_plus_one == 0) break;
        const std::size_t home = slot.tag & mask;
        const bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        ::new (static_cast<void*>(table[hole].storage)) Key(std::move(slot.key()));
        slot.key().~Key();
        table[hole].tag = slot.tag;
        table[hole].ring_plus_one = slot.ring_plus_one;
        hole = j;
      }
      table[hole].ring_plus_one = 0;
    }
  };

  static std::size_t checked_count(std::size_t n) {
    if (n == 0 || n > (std::size_t{1} << 31))
      throw std::invalid_argument("herald::DedupWindow: max_count must be in [1, 2^31], got " +
                                  std::to_string(n));
    return n;
  }

  static std::int64_t checked_age(std::chrono::nanoseconds age) {
    if (age.count() <= 0)
      throw std::invalid_argument("herald::DedupWindow: max_age must be positive, got " +
                                  std::to_string(age.count()) + " ns");
    return age.count();
  }

  static std::size_t shard_count(std::size_t requested, std::size_t max_count) {
    if (requested != 0) {
      if ((requested & (requested - 1)) != 0 || requested > 1024)
        throw std::invalid_argument(
            "herald::DedupWindow: shards must be a power of two up to 1024, got " +
            std::to_string(requested));
      return requested;
    }
    if (max_count < 4096) return 1;
    const std::size_t threads = std::max(1u, std::thread::hardware_concurrency());
    return std::min({std::bit_ceil(4 * threads), std::bit_ceil(max_count / 1024), std::size_t{64}});
  }

  std::uint64_t hash(const Key& key) const {
    // std::hash of an integer is the identity in libstdc++: the index and shard need spread bits
    return detail::mix64(static_cast<std::uint64_t>(hasher_(key)));
  }
  static std::uint32_t tag_of(std::uint64_t h) noexcept {
    return static_cast<std::uint32_t>(h);
  }
  // The shard comes from the top bits, independent of the tag (the table index).
  Shard& shard_for(std::uint64_t h) const noexcept {
    return shards_[shard_bits_ == 0 ? 0 : static_cast<std::size_t>(h >> (64 - shard_bits_))];
  }

  bool timed() const noexcept {
    return max_age_ != no_age;
  }
  std::int64_t now() const {
    const Clock::time_point t = clock_ ? clock_() : Clock::now();
    return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
  }
  bool aged(const Entry& e, std::int64_t now_ns) const noexcept {
    return timed() && now_ns - e.stamp > max_age_;
  }

  /// Pops the head while it is out of the window that will hold keys numbered >= `first`;
  /// returns how many it popped.
  std::size_t drop_old(Shard& s, std::uint64_t first, std::int64_t now_ns) const noexcept {
    std::size_t dropped = 0;
    for (; s.size != 0; ++dropped) {
      const Entry& e = s.ring[s.head];
      if (e.seq < first) {
        ++s.evicted;
      } else if (aged(e, now_ns)) {
        ++s.expired;
      } else {
        break;
      }
      s.pop_head();
    }
    return dropped;
  }

  /// Drops what is out of the window as it stands (the last max_count numbers, max_age).
  std::size_t drop_due(Shard& s, std::int64_t now_ns) const noexcept {
    const std::uint64_t next = seq_->load(std::memory_order_relaxed);
    return drop_old(s, next > max_count_ ? next - max_count_ : 0, now_ns);
  }

  template <class K>
  bool insert_impl(K&& key) {
    const std::uint64_t h = hash(key);
    const std::uint32_t tag = tag_of(h);
    Shard& s = shard_for(h);
    // The key's home slot is cold at 100k keys: start loading it before the lock, so that its
    // cache miss overlaps taking the lock (the table's address never changes).
    s.prefetch_slot(tag);
    const std::lock_guard lock(s.mutex);
    // In a full window every new key evicts the head's key, whose slot is cold too: start
    // loading it now so that its miss overlaps the lookup's.
    if (s.size != 0) s.prefetch_slot(s.ring[s.head].tag);
    // The clock is read under the lock so that stamps never decrease along a shard's ring.
    const std::int64_t now_ns = timed() ? now() : 0;
    std::size_t at = s.find(key, tag, equal_);
    // As in contains(): a key found counts only if it is not due to be dropped; drop what is
    // due and, if that deleted anything, look again (keys may have moved). A key not found
    // needs no such check: the drop below, after numbering, covers what is due.
    if (at != Shard::npos && drop_due(s, now_ns) != 0) at = s.find(key, tag, equal_);
    if (at != Shard::npos) {
      ++s.duplicates;
      return false;
    }
    // Copied before anything changes: a throwing copy leaves the window as it was.
    Key copy(std::forward<K>(key));
    const std::uint64_t seq = seq_->fetch_add(1, std::memory_order_relaxed);
    // Other shards may have numbered keys meanwhile: the window now starts later.
    drop_old(s, seq + 1 > max_count_ ? seq + 1 - max_count_ : 0, now_ns);
    if (s.size == s.capacity) {  // this shard's share is full (skew): forget its oldest early
      ++s.evicted;
      s.pop_head();
    }
    s.push(std::move(copy), seq, now_ns, tag);
    ++s.inserted;
    return true;
  }

  const std::size_t max_count_;
  const std::int64_t max_age_;
  const std::function<Clock::time_point()> clock_;
  [[no_unique_address]] Hash hasher_{};
  [[no_unique_address]] KeyEqual equal_{};
  unsigned shard_bits_ = 0;
  std::unique_ptr<Shard[]> shards_;
  // The number the next new key gets: written by every new key, alone on its line.
  mutable detail::CachePadded<std::atomic<std::uint64_t>> seq_{std::in_place, std::uint64_t{0}};
};

}  // namespace herald
