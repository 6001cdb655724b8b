// BoundedQueue<T>: a bounded MPMC ring without locks that blocks without burning CPU.
//
// Design (Dmitry Vyukov's bounded MPMC queue, plus close and parking):
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
//   the bit is set no claim can succeed: close is linearizable with push (a push that returned true
//   is ordered before the close and will be popped; none can succeed after it).
// - Blocking: pause, yield, then park on an EventCount (detail/parking.hpp). Producers notify the
//   consumers' EventCount after each push, which is a single load unless a consumer is parked (and
//   none is awake already), and vice versa, so the uncontended fast path makes no syscall.
// - Exception safety: T must be nothrow move constructible (static_assert). A copy or a converting
//   construction that may throw is done into a temporary before a slot is claimed, so it can fail
//   without leaving a claimed, unpublished cell; nothing already queued is ever lost.
//
// Example:
//   herald::BoundedQueue<Job> q{1024};
//   std::jthread worker([&] { while (auto job = q.pop()) run(*job); });  // ends after close+drain
//   q.push(Job{...});
//   q.close();
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/parking.hpp>

#include <atomic>
#include <bit>
#include <chrono>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <type_traits>
#include <utility>

namespace herald {

/// A bounded multi-producer multi-consumer FIFO queue: try_ operations that never wait, and
/// blocking ones that spin briefly, then sleep on a futex, costing nothing while nobody sleeps.
///
/// Progress: like every Vyukov ring, not strictly lock-free: a producer stalled between claiming
/// a slot and writing it delays the consumer of that slot (try_pop reports empty meanwhile).
///
/// The capacity is rounded up to a power of two. After close(), pushes fail and pops drain what is
/// left, then report empty. Order: FIFO per producer; elements from different producers are
/// ordered by their (linearizable) claim of a slot.
/// Thread-safety: every member except the destructor may be called concurrently.
template <class T>
class BoundedQueue {
  static_assert(std::is_object_v<T> && !std::is_array_v<T> && !std::is_const_v<T>,
                "T must be a non-const, non-array object type");
  static_assert(std::is_nothrow_move_constructible_v<T>,
                "T must be nothrow move constructible: a move that throws after a slot is claimed "
                "could lose an element (wrap such a type in std::unique_ptr)");
  static_assert(std::is_nothrow_destructible_v<T>, "T must be nothrow destructible");

 public:
  using value_type = T;

  /// Creates an empty queue for at least `capacity` elements (rounded up to a power of two).
  ///
  /// Throws: std::invalid_argument if capacity is 0; std::length_error if it is absurdly large;
  /// std::bad_alloc.
  explicit BoundedQueue(std::size_t capacity) {
    if (capacity == 0) throw std::invalid_argument("herald::BoundedQueue: capacity must be > 0");
    if (capacity > max_capacity)
      throw std::length_error("herald::BoundedQueue: capacity too large");
    const std::size_t n = std::bit_ceil(capacity);
    mask_ = n - 1;
    // Swap the within-line and line bits of the index so consecutive positions fall on different
    // cache lines: a producer writing position p and a consumer reading p-1 then do not fight
    // over one line. Only when the ring spans enough lines for the swap to be a permutation.
    if constexpr (cells_per_line > 1) {
      if (n >= cells_per_line * cells_per_line) shuffle_bits_ = std::countr_zero(cells_per_line);
    }
    const std::size_t bytes =
        (n * sizeof(Cell) + detail::cache_line_size - 1) & ~(detail::cache_line_size - 1);
    cells_ = static_cast<Cell*>(::operator new (bytes, std::align_val_t{detail::cache_line_size}));
    for (std::size_t i = 0; i < n; ++i)
      ::new (static_cast<void*>(&cells_[i])) Cell;
    for (std::uint64_t p = 0; p < n; ++p)
      cell(p).seq.store(free_seq(p), std::memory_order_relaxed);
  }

  /// Destroys the elements still queued.
  ~BoundedQueue() {
    const std::uint64_t tail = tail_->load(std::memory_order_relaxed) & ~closed_bit;
    for (std::uint64_t p = head_->load(std::memory_order_relaxed); p != tail; ++p)
      cell(p).value()->~T();
    ::operator delete (cells_, std::align_val_t{detail::cache_line_size});
  }

  BoundedQueue(const BoundedQueue&) = delete;
  BoundedQueue& operator=(const BoundedQueue&) = delete;

  /// Appends a copy of `v` if there is room and the queue is open.
  ///
  /// Throws: what T's copy constructor throws; the queue is then unchanged.
  /// Complexity: O(1); never waits.
  bool try_push(const T& v) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      return finish_push(claim_and_construct(v));
    } else {
      if (!has_room_hint()) return false;  // spare a copy that could not be pushed
      T copy(v);
      return try_push(std::move(copy));
    }
  }

  /// Moves `v` in if there is room and the queue is open; on failure `v` is untouched.
  ///
  /// Complexity: O(1); never waits.
  bool try_push(T&& v) noexcept { return finish_push(claim_and_construct(std::move(v))); }

  /// Constructs an element from `args` if there is room and the queue is open.
  ///
  /// When T is not nothrow constructible from `args`, the element is built in a temporary before
  /// a slot is claimed; if the queue then turns out to be full, the arguments may have been moved
  /// from.
  /// Throws: what that construction throws; the queue is then unchanged.
  template <class... Args>
  bool try_emplace(Args&&... args) {
    if constexpr (std::is_nothrow_constructible_v<T, Args&&...>) {
      return finish_push(claim_and_construct(std::forward<Args>(args)...));
    } else {
      if (!has_room_hint()) return false;
      T value(std::forward<Args>(args)...);
      return try_push(std::move(value));
    }
  }

  /// Appends a copy of `v`, waiting while the queue is full.
  ///
  /// Returns false only when the queue is (or becomes) closed.
  /// Blocks: while full (pauses, yields, then sleeps on a futex).
  /// Throws: what T's copy constructor throws; the queue is then unchanged.
  bool push(const T& v) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      if (const Claim c = claim_and_construct(v); c != Claim::full) return finish_push(c);
    }
    return push_copy(v, detail::Deadline::forever(), std::stop_token{});
  }
  /// Moves `v` in, waiting while the queue is full; returns false (and leaves `v`) if closed.
  ///
  /// Blocks: while full.
  bool push(T&& v) {
    if (const Claim c = claim_and_construct(std::move(v)); c != Claim::full) return finish_push(c);
    return push_until(std::move(v), detail::Deadline::forever(), std::stop_token{});
  }

  /// As push(v), giving up after `timeout` (0: try once; duration::max(): wait forever).
  ///
  /// Blocks: while full, at most `timeout`.
  template <class Rep, class Period>
  bool push_for(const T& v, std::chrono::duration<Rep, Period> timeout) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      if (const Claim c = claim_and_construct(v); c != Claim::full) return finish_push(c);
    }
    return push_copy(v, detail::Deadline::after(timeout), std::stop_token{});
  }
  template <class Rep, class Period>
  bool push_for(T&& v, std::chrono::duration<Rep, Period> timeout) {
    if (const Claim c = claim_and_construct(std::move(v)); c != Claim::full) return finish_push(c);
    return push_until(std::move(v), detail::Deadline::after(timeout), std::stop_token{});
  }

  /// As push(v); returns false without pushing if a stop is requested on `st` before or while it
  /// waits.
  ///
  /// Blocks: while full, until a stop request.
  bool push(const T& v, std::stop_token st) {
    if (st.stop_requested()) return false;
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      if (const Claim c = claim_and_construct(v); c != Claim::full) return finish_push(c);
    }
    return push_copy(v, detail::Deadline::forever(), st);
  }
  bool push(T&& v, std::stop_token st) {
    if (st.stop_requested()) return false;
    if (const Claim c = claim_and_construct(std::move(v)); c != Claim::full) return finish_push(c);
    return push_until(std::move(v), detail::Deadline::forever(), st);
  }

  /// Removes the oldest element if one is ready.
  ///
  /// May report empty while a producer is between claiming a slot and writing it.
  /// Complexity: O(1); never waits.
  std::optional<T> try_pop() noexcept {
    std::optional<T> out;
    if (claim_and_take(out)) not_full_->notify_one();
    return out;
  }

  /// Removes the oldest element, waiting while the queue is empty; an empty optional means the
  /// queue is closed and drained.
  ///
  /// Blocks: while empty and open.
  std::optional<T> pop() {
    if (std::optional<T> out = try_pop()) return out;
    return pop_until(detail::Deadline::forever(), std::stop_token{});
  }

  /// As pop(), giving up after `timeout` (0: try once; duration::max(): wait forever).
  ///
  /// Blocks: while empty and open, at most `timeout`.
  template <class Rep, class Period>
  std::optional<T> pop_for(std::chrono::duration<Rep, Period> timeout) {
    if (std::optional<T> out = try_pop()) return out;
    return pop_until(detail::Deadline::after(timeout), std::stop_token{});
  }

  /// As pop(); returns empty without popping if a stop is requested on `st` before or while it
  /// waits.
  ///
  /// Blocks: while empty and open, until a stop request.
  std::optional<T> pop(std::stop_token st) {
    if (st.stop_requested()) return std::nullopt;
    if (std::optional<T> out = try_pop()) return out;
    return pop_until(detail::Deadline::forever(), st);
  }

  /// Moves up to `max` ready elements, oldest first, to `out`; returns how many.
  ///
  /// When writing to `out` cannot throw, the whole batch is claimed with one CAS. Otherwise the
  /// elements are claimed one at a time, and if a write throws, the element being written is lost
  /// (destroyed) and the exception propagates; the queue stays consistent.
  /// Complexity: O(number moved); never waits.
  template <class OutputIt>
  std::size_t try_pop_many(OutputIt out, std::size_t max) {
    constexpr bool nothrow_assign = noexcept(*std::declval<OutputIt&>() = std::declval<T&&>());
    constexpr bool nothrow_advance = noexcept(++std::declval<OutputIt&>());
    constexpr bool nothrow_write = nothrow_assign && nothrow_advance;
    std::size_t n = 0;
    if constexpr (nothrow_write) {
      n = take_batch(out, max);
    } else {
      for (; n < max; ++n) {
        if (!take_one_into(out)) break;
      }
    }
    if (n != 0) not_full_->notify(n);
    return n;
  }

  /// Closes the queue: later pushes fail, pops drain what is queued and then report empty, and
  /// every blocked push and pop wakes. Idempotent.
  void close() noexcept {
    tail_->fetch_or(closed_bit, std::memory_order_seq_cst);
    closed_.store(true, std::memory_order_seq_cst);
    not_empty_->wake_all();
    not_full_->wake_all();
  }

  /// Whether the queue is closed (true once close() has returned).
  bool is_closed() const noexcept { return closed_.load(std::memory_order_acquire); }

  /// The number of cells (the requested capacity rounded up to a power of two).
  std::size_t capacity() const noexcept { return mask_ + 1; }

  /// The number of queued elements at some recent moment (racy by nature), in [0, capacity()].
  std::size_t approx_size() const noexcept {
    const std::uint64_t head = head_->load(std::memory_order_acquire);
    const std::uint64_t tail = tail_->load(std::memory_order_acquire) & ~closed_bit;
    // Head first, so tail >= head; the difference overshoots when both moved between the loads.
    const auto used = static_cast<std::int64_t>(tail - head);
    if (used <= 0) return 0;
    return static_cast<std::size_t>(used) > mask_ ? mask_ + 1 : static_cast<std::size_t>(used);
  }

 private:
  struct Cell {
    std::atomic<std::uint64_t> seq;
    alignas(T) unsigned char storage[sizeof(T)];
    T* value() noexcept { return std::launder(reinterpret_cast<T*>(storage)); }
  };

  static constexpr std::uint64_t closed_bit = std::uint64_t{1} << 63;
  static constexpr std::size_t cells_per_line =
      (sizeof(Cell) <= detail::cache_line_size && detail::cache_line_size % sizeof(Cell) == 0)
          ? detail::cache_line_size / sizeof(Cell)
          : 1;
  static constexpr std::size_t max_capacity = std::bit_floor(
      static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max()) / sizeof(Cell) / 2);

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

  enum class Claim : std::uint8_t { pushed, full, closed };

  // Claims the next free position and builds the element there. Only called with arguments T is
  // nothrow constructible from, so a claimed cell is always published.
  template <class... Args>
  Claim claim_and_construct(Args&&... args) noexcept {
    std::uint64_t tail = tail_->load(std::memory_order_relaxed);
    for (;;) {
      if ((tail & closed_bit) != 0) return Claim::closed;
      Cell& c = cell(tail);
      const auto diff =
          static_cast<std::int64_t>(c.seq.load(std::memory_order_acquire) - free_seq(tail));
      if (diff == 0) {
        // seq_cst: this CAS is the state change that a parking consumer's re-check (a seq_cst
        // load of tail_) pairs with; see consumer_may_proceed(). It fails once close() has set
        // the closed bit in the same word.
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

  bool finish_push(Claim claim) noexcept {
    if (claim != Claim::pushed) return false;
    not_empty_->notify_one();
    return true;
  }

  // False when the queue is certainly closed or full right now; a cheap pre-check before a copy.
  bool has_room_hint() const noexcept {
    const std::uint64_t tail = tail_->load(std::memory_order_relaxed);
    if ((tail & closed_bit) != 0) return false;
    const std::uint64_t seq = cell(tail).seq.load(std::memory_order_relaxed);
    return static_cast<std::int64_t>(seq - free_seq(tail)) >= 0;
  }

  // Claims the oldest published position; the caller must move the element out and release().
  bool claim_head(std::uint64_t& head) noexcept {
    head = head_->load(std::memory_order_relaxed);
    for (;;) {
      const auto diff = static_cast<std::int64_t>(cell(head).seq.load(std::memory_order_acquire) -
                                                  full_seq(head));
      if (diff == 0) {
        // seq_cst: pairs with a parking producer's re-check of head_ (producer_may_proceed).
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

  bool claim_and_take(std::optional<T>& out) noexcept {
    std::uint64_t pos = 0;
    if (!claim_head(pos)) return false;
    out.emplace(std::move(*cell(pos).value()));
    release(pos);
    return true;
  }

  // Claims one element and assigns it to *out; used when that assignment may throw.
  template <class OutputIt>
  bool take_one_into(OutputIt& out) {
    std::uint64_t pos = 0;
    if (!claim_head(pos)) return false;
    struct Release {  // the slot is ours: whatever the assignment does, free it
      BoundedQueue* q;
      std::uint64_t pos;
      ~Release() { q->release(pos); }
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

  // The seq_cst re-checks of the event-count protocol (see detail/parking.hpp): head_ must be
  // loaded after the waiter's announcement for producers, tail_ for consumers.
  bool consumer_may_proceed() const noexcept {
    const std::uint64_t head = head_->load(std::memory_order_seq_cst);
    const std::uint64_t tail = tail_->load(std::memory_order_seq_cst);
    return (tail & closed_bit) != 0 || (tail & ~closed_bit) != head;
  }
  bool producer_may_proceed() const noexcept {
    const std::uint64_t tail = tail_->load(std::memory_order_seq_cst);
    const std::uint64_t head = head_->load(std::memory_order_seq_cst);
    if ((tail & closed_bit) != 0) return true;
    return static_cast<std::int64_t>(tail - head) <= static_cast<std::int64_t>(mask_);
  }

  bool closed_and_drained() const noexcept {
    // The flag first: spinning consumers must not keep pulling the producers' hot line.
    if (!closed_.load(std::memory_order_acquire)) return false;
    const std::uint64_t tail = tail_->load(std::memory_order_acquire);
    // Once closed, tail_ never moves again, so head_ reaching it means nothing is left or coming.
    return (tail & closed_bit) != 0 &&
           (tail & ~closed_bit) == head_->load(std::memory_order_acquire);
  }

  // The waiting paths, out of line so the inlined fast paths above stay small. Each starts with
  // one more attempt, so callers may skip theirs (or have failed theirs) before calling.
  [[gnu::noinline]] bool push_copy(const T& v, const detail::Deadline& deadline,
                                   const std::stop_token& st) {
    if constexpr (std::is_nothrow_copy_constructible_v<T>) {
      return push_with(deadline, st, [&] { return claim_and_construct(v); });
    } else {
      if (is_closed()) return false;
      T copy(v);
      return push_until(std::move(copy), deadline, st);
    }
  }

  [[gnu::noinline]] bool push_until(T&& v, const detail::Deadline& deadline,
                                    const std::stop_token& st) {
    return push_with(deadline, st, [&] { return claim_and_construct(std::move(v)); });
  }

  template <class ClaimFn>
  bool push_with(const detail::Deadline& deadline, const std::stop_token& st, ClaimFn claim) {
    bool pushed = false;
    const auto attempt = [&] {
      const Claim c = claim();
      pushed = c == Claim::pushed;
      return c != Claim::full;
    };
    detail::wait_for_progress(
        *not_full_, attempt, [this] { return producer_may_proceed(); }, deadline, st);
    if (pushed) not_empty_->notify_one();
    return pushed;
  }

  [[gnu::noinline]] std::optional<T> pop_until(const detail::Deadline& deadline,
                                               const std::stop_token& st) {
    std::optional<T> out;
    const auto attempt = [&] { return claim_and_take(out) || closed_and_drained(); };
    detail::wait_for_progress(
        *not_empty_, attempt, [this] { return consumer_may_proceed(); }, deadline, st);
    if (out) not_full_->notify_one();
    return out;
  }

  // Read-only after construction, on a line of its own so index writes never evict it.
  alignas(detail::cache_line_size) Cell* cells_ = nullptr;
  std::size_t mask_ = 0;
  int shuffle_bits_ = 0;
  // Mirrors the closed bit of tail_ (set just after it) where waiters can poll it for free.
  std::atomic<bool> closed_{false};
  // Producers write tail_, consumers head_: separate lines.
  detail::CachePadded<std::atomic<std::uint64_t>> tail_{std::in_place, std::uint64_t{0}};
  detail::CachePadded<std::atomic<std::uint64_t>> head_{std::in_place, std::uint64_t{0}};
  // Consumers park on not_empty_, producers on not_full_.
  detail::CachePadded<detail::EventCount> not_empty_;
  detail::CachePadded<detail::EventCount> not_full_;
};

}  // namespace herald
