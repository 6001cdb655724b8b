// Ring<T>: the non-blocking core of BoundedQueue, a bounded MPMC ring without locks. It never
// waits and includes no threading header, so value types (Message's envelope pool) can use it.
//
// Design (Dmitry Vyukov's bounded MPMC queue, plus close):
// - A ring of 2^k cells, each holding a sequence number and storage for one T. The cell for
//   position p is free when its seq is 2p and holds p's element when it is 2p+1. A producer that
//   sees 2p claims p by moving `tail_` from p to p+1 with a CAS, builds the element and publishes
//   it with seq = 2p+1; a consumer that sees 2p+1 claims p by moving `head_` the same way, moves
//   the element out and frees the cell for the next lap with seq = 2(p + capacity). Producers and
//   consumers never write each other's index, and a cell changes hands with one release/acquire
//   pair. (Vyukov's original uses p and p+1, which coincide with the next lap's p + capacity when
//   the capacity is 1; doubling keeps the two states apart for every capacity.)
// - The capacity is rounded up to a power of two so a position maps to a cell with a mask.
// - close() sets the top bit of `tail_`. Every producer claim is a CAS on that same word, so once
//   the bit is set no claim can succeed: close is linearizable with push (a push that returned
//   `pushed` is ordered before the close and will be popped; none can succeed after it).
// - The index CASes are seq_cst: they are the state changes that a blocking layer's parked
//   waiters re-check (consumer_may_proceed / producer_may_proceed) in the event-count protocol of
//   detail/parking.hpp. The ring itself never waits.
#pragma once

#include <herald/detail/cache_line.hpp>

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace herald {

/// The largest capacity any herald queue accepts (BoundedQueue, subscriptions, WorkerPool
/// queues): 2^30 elements. Beyond that a request is a mistake whose memory could not be had;
/// it is refused with std::invalid_argument before anything is allocated.
inline constexpr std::size_t max_capacity = std::size_t{1} << 30;

}  // namespace herald

namespace herald::detail {

/// The outcome of a push attempt.
enum class Claim : std::uint8_t { pushed, full, closed };

/// A bounded multi-producer multi-consumer ring: every operation is O(1) and never waits.
///
/// Progress: like every Vyukov ring, not strictly lock-free: a producer stalled between claiming
/// a slot and writing it delays the consumer of that slot (try_pop reports empty meanwhile).
/// Thread-safety: every member except the destructor may be called concurrently.
template <class T>
class Ring {
  static_assert(std::is_object_v<T> && !std::is_array_v<T> && !std::is_const_v<T>,
                "T must be a non-const, non-array object type");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "T must be nothrow move constructible: a move that throws after a slot is claimed "
                "could lose an element (wrap such a type in std::unique_ptr)");
  static_assert(std::is_nothrow_destructible_v<T>, "T must be nothrow destructible");

  struct Cell {
    std::atomic<std::uint64_t> seq;
    alignas(T) unsigned char storage[sizeof(T)];
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };

 public:
  /// Creates an empty ring for at least `capacity` elements (rounded up to a power of two).
  ///
  /// Throws: std::invalid_argument unless 1 <= capacity <= herald::max_capacity;
  /// std::bad_alloc.
  explicit Ring(std::size_t capacity) {
    if (capacity == 0 || capacity > max_capacity) {
      throw std::invalid_argument("herald: queue capacity is " + std::to_string(capacity) +
                                  "; it must be in [1, " + std::to_string(max_capacity) + "]");
    }
    const std::size_t n = std::bit_ceil(capacity);
    mask_ = n - 1;
    // Swap the within-line and line bits of the index so consecutive positions fall on different
    // cache lines: a producer writing position p and a consumer reading p-1 then do not fight
    // over one line. Only when the ring spans enough lines for the swap to be a permutation.
    if constexpr (cells_per_line > 1) {
      if (n >= cells_per_line * cells_per_line) shuffle_bits_ = std::countr_zero(cells_per_line);
    }
    const std::size_t bytes = (n * sizeof(Cell) + cache_line_size - 1) & ~(cache_line_size - 1);
    cells_ = static_cast<Cell*>(::operator new (bytes, std::align_val_t{cache_line_size}));
    for (std::size_t i = 0; i < n; ++i)
      ::new (static_cast<void*>(&cells_[i])) Cell;
    for (std::uint64_t p = 0; p < n; ++p)
      cell(p).seq.store(free_seq(p), std::memory_order_relaxed);
  }

  /// Destroys the elements still in the ring.
  ~Ring() {
    const std::uint64_t tail = tail_->load(std::memory_order_relaxed) & ~closed_bit;
    for (std::uint64_t p = head_->load(std::memory_order_relaxed); p != tail; ++p)
      cell(p).value()->~T();
    ::operator delete (cells_, std::align_val_t{cache_line_size});
  }

  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  /// Claims the next free position and builds the element there from `args`. Only for arguments
  /// T is nothrow constructible from, so that a claimed cell is always published; an rvalue
  /// argument is moved from only when the result is Claim::pushed.
  template <class... Args>
  requires(std::is_nothrow_constructible_v<T, Args&&...>) Claim try_emplace(Args&&... args)
  noexcept {
    std::uint64_t tail = tail_->load(std::memory_order_relaxed);
    for (;;) {
      if ((tail & closed_bit) != 0) return Claim::closed;
      Cell& c = cell(tail);
      const auto diff =
          static_cast<std::int64_t>(c.seq.load(std::memory_order_acquire) - free_seq(tail));
      if (diff == 0) {
        // seq_cst: pairs with a parked consumer's re-check of tail_ (consumer_may_proceed). It
        // fails once close() has set the closed bit in the same word.
        if (tail_->compare_exchange_weak(tail, tail + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
          ::new (static_cast<void*>(c.storage)) T(std::forward<Args>(args)...);
          c.seq.store(full_seq(tail), std::memory_order_release);
          return Claim::pushed;
        }
      } else if (diff < 0) {
        return Claim::full;  // the cell still holds (or is handing out) the last lap's element
      } else {
        tail = tail_->load(std::memory_order_relaxed);  // another producer got there first
      }
    }
  }

  /// False when the ring is certainly closed or full right now: a cheap check before building a
  /// value that could not be pushed.
  [[nodiscard]] bool has_room_hint() const noexcept {
    const std::uint64_t tail = tail_->load(std::memory_order_relaxed);
    if ((tail & closed_bit) != 0) return false;
    const std::uint64_t seq = cell(tail).seq.load(std::memory_order_relaxed);
    return static_cast<std::int64_t>(seq - free_seq(tail)) >= 0;
  }

  /// Moves the oldest element into `out` if one is ready; false when empty (or its producer has
  /// not finished writing it).
  bool try_pop(std::optional<T>& out) noexcept {
    std::uint64_t pos = 0;
    if (!claim_head(pos)) return false;
    out.emplace(std::move(*cell(pos).value()));
    release(pos);
    return true;
  }

  /// Moves up to `max` ready elements, oldest first, to `out`; returns how many.
  ///
  /// When writing to `out` cannot throw, the whole batch is claimed with one CAS. Otherwise the
  /// elements are claimed one at a time, and if a write throws, the element being written is lost
  /// (destroyed) and the exception propagates; the ring stays consistent.
  template <class OutputIt>
  std::size_t try_pop_many(OutputIt& out, std::size_t max) {
    constexpr bool nothrow_write = noexcept(
        *std::declval<OutputIt&>() = std::declval<T&&>())&& noexcept(++std::declval<OutputIt&>());
    if constexpr (nothrow_write) {
      return take_batch(out, max);
    } else {
      std::size_t n = 0;
      while (n < max && take_one_into(out))
        ++n;
      return n;
    }
  }

  /// Closes the ring: later pushes fail with Claim::closed; what is queued stays poppable.
  void close() noexcept {
    tail_->fetch_or(closed_bit, std::memory_order_seq_cst);
    closed_.store(true, std::memory_order_seq_cst);
  }

  /// Whether the ring is closed. Reads the closed bit of the producers' index itself, so a push
  /// that failed because of a close always finds is_closed() true afterwards.
  [[nodiscard]] bool is_closed() const noexcept {
    return (tail_->load(std::memory_order_acquire) & closed_bit) != 0;
  }

  /// Elements pushed since construction (a count of successful claims, exact at the moment of
  /// the load). Reads the producers' index: for statistics, not for hot paths.
  [[nodiscard]] std::uint64_t push_count() const noexcept {
    return tail_->load(std::memory_order_acquire) & ~closed_bit;
  }
  /// Elements popped since construction (see push_count).
  [[nodiscard]] std::uint64_t pop_count() const noexcept {
    return head_->load(std::memory_order_acquire);
  }

  /// The number of cells (the requested capacity rounded up to a power of two).
  [[nodiscard]] std::size_t capacity() const noexcept { return mask_ + 1; }

  /// The number of queued elements at some recent moment (racy by nature), in [0, capacity()].
  [[nodiscard]] std::size_t approx_size() const noexcept {
    const std::uint64_t head = head_->load(std::memory_order_acquire);
    const std::uint64_t tail = tail_->load(std::memory_order_acquire) & ~closed_bit;
    // Head first, so tail >= head; the difference overshoots when both moved between the loads.
    const auto used = static_cast<std::int64_t>(tail - head);
    if (used <= 0) return 0;
    return static_cast<std::size_t>(used) > mask_ ? mask_ + 1 : static_cast<std::size_t>(used);
  }

  // The seq_cst re-checks of the event-count protocol (detail/parking.hpp) for a blocking layer:
  // true when a consumer's (producer's) attempt might now succeed, or the ring is closed.
  [[nodiscard]] bool consumer_may_proceed() const noexcept {
    const std::uint64_t head = head_->load(std::memory_order_seq_cst);
    const std::uint64_t tail = tail_->load(std::memory_order_seq_cst);
    return (tail & closed_bit) != 0 || (tail & ~closed_bit) != head;
  }
  [[nodiscard]] bool producer_may_proceed() const noexcept {
    const std::uint64_t tail = tail_->load(std::memory_order_seq_cst);
    const std::uint64_t head = head_->load(std::memory_order_seq_cst);
    if ((tail & closed_bit) != 0) return true;
    return static_cast<std::int64_t>(tail - head) <= static_cast<std::int64_t>(mask_);
  }

  /// True once the ring is closed and every element pushed before the close has been popped.
  [[nodiscard]] bool closed_and_drained() const noexcept {
    // The flag first: spinning consumers must not keep pulling the producers' hot line.
    if (!closed_.load(std::memory_order_acquire)) return false;
    const std::uint64_t tail = tail_->load(std::memory_order_acquire);
    // Once closed, tail_ never moves again, so head_ reaching it means nothing is left or coming.
    return (tail & closed_bit) != 0 &&
           (tail & ~closed_bit) == head_->load(std::memory_order_acquire);
  }

 private:
  static constexpr std::uint64_t closed_bit = std::uint64_t{1} << 63;
  static constexpr std::size_t cells_per_line =
      (sizeof(Cell) <= cache_line_size && cache_line_size % sizeof(Cell) == 0)
          ? cache_line_size / sizeof(Cell)
          : 1;

  Cell& cell(std::uint64_t pos) const noexcept {
    const auto i = static_cast<std::size_t>(pos) & mask_;
    const std::size_t low = (std::size_t{1} << shuffle_bits_) - 1;
    const std::size_t mix = (i ^ (i >> shuffle_bits_)) & low;
    return cells_[i ^ mix ^ (mix << shuffle_bits_)];
  }

  // Sequence values of the cell for position `pos`; compared by signed difference, so they may
  // wrap.
  static constexpr std::uint64_t free_seq(std::uint64_t pos) noexcept { return pos << 1; }
  static constexpr std::uint64_t full_seq(std::uint64_t pos) noexcept { return (pos << 1) | 1; }

  // Claims the oldest published position; the caller must move the element out and release().
  bool claim_head(std::uint64_t& head) noexcept {
    head = head_->load(std::memory_order_relaxed);
    for (;;) {
      const auto diff = static_cast<std::int64_t>(cell(head).seq.load(std::memory_order_acquire) -
                                                  full_seq(head));
      if (diff == 0) {
        // seq_cst: pairs with a parked producer's re-check of head_ (producer_may_proceed).
        if (head_->compare_exchange_weak(head, head + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed))
          return true;
      } else if (diff < 0) {
        return false;  // not yet written: empty, or a producer is between claim and publish
      } else {
        head = head_->load(std::memory_order_relaxed);  // another consumer got there first
      }
    }
  }

  // Destroys the element at claimed position `pos` and frees its cell for the next lap.
  void release(std::uint64_t pos) noexcept {
    Cell& c = cell(pos);
    c.value()->~T();
    c.seq.store(free_seq(pos + mask_ + 1), std::memory_order_release);
  }

  // Claims one element and assigns it to *out; used when that assignment may throw.
  template <class OutputIt>
  bool take_one_into(OutputIt& out) {
    std::uint64_t pos = 0;
    if (!claim_head(pos)) return false;
    struct Release {  // the slot is ours: whatever the assignment does, free it
      Ring* ring;
      std::uint64_t pos;
      ~Release() { ring->release(pos); }
    } guard{this, pos};
    *out = std::move(*cell(pos).value());
    ++out;
    return true;
  }

  // Claims up to `max` consecutive published positions with a single CAS, then moves them out.
  template <class OutputIt>
  std::size_t take_batch(OutputIt& out, std::size_t max) noexcept {
    if (max == 0) return 0;
    std::uint64_t head = head_->load(std::memory_order_relaxed);
    for (;;) {
      std::uint64_t n = 0;
      while (n < max && cell(head + n).seq.load(std::memory_order_acquire) == full_seq(head + n))
        ++n;
      if (n == 0) {
        const auto diff = static_cast<std::int64_t>(cell(head).seq.load(std::memory_order_acquire) -
                                                    full_seq(head));
        if (diff < 0) return 0;
        head = head_->load(std::memory_order_relaxed);  // stale head: others popped meanwhile
        continue;
      }
      // Every cell in [head, head+n) was seen published and head_ had not moved past them, so
      // winning this CAS makes all n ours (positions are 64-bit: no ABA).
      if (head_->compare_exchange_weak(head, head + n, std::memory_order_seq_cst,
                                       std::memory_order_relaxed)) {
        for (std::uint64_t i = 0; i < n; ++i) {
          *out = std::move(*cell(head + i).value());
          ++out;
          release(head + i);
        }
        return static_cast<std::size_t>(n);
      }
    }
  }

  // Read-only after construction, on a line of its own so index writes never evict it.
  alignas(cache_line_size) Cell* cells_ = nullptr;
  std::size_t mask_ = 0;
  int shuffle_bits_ = 0;
  // Mirrors the closed bit of tail_ (set just after it) where spinning consumers can poll it
  // without pulling the producers' hot line (closed_and_drained).
  std::atomic<bool> closed_{false};
  // Producers write tail_, consumers head_: separate lines.
  CachePadded<std::atomic<std::uint64_t>> tail_{std::in_place, std::uint64_t{0}};
  CachePadded<std::atomic<std::uint64_t>> head_{std::in_place, std::uint64_t{0}};
};

}  // namespace herald::detail
