// BoundedQueue<T>: a bounded MPMC queue without locks that blocks without burning CPU.
//
// The blocking layer over detail::Ring<T> (detail/ring.hpp, the lock-free core: Vyukov cells,
// close linearizable with push). What this layer adds:
// - Blocking: pause, yield, then park on an EventCount (detail/parking.hpp). Producers notify the
//   consumers' EventCount after each push, which is a single load unless a consumer is parked (and
//   none is awake already), and vice versa, so the uncontended fast path makes no syscall.
// - Exception safety for copies: T must be nothrow move constructible (the ring's static_assert).
//   A copy or a converting construction that may throw is done into a temporary before a slot is
//   claimed, so it can fail without leaving a claimed, unpublished cell; nothing already queued
//   is ever lost.
//
// Example:
//   herald::BoundedQueue<Job> q{1024};
//   std::jthread worker([&] { while (auto job = q.pop()) run(*job); });  // ends after close+drain
//   q.push(Job{...});
//   q.close();
#pragma once

#include <herald/detail/cache_line.hpp>
#include <herald/detail/parking.hpp>
#include <herald/detail/ring.hpp>

#include <chrono>
#include <cstddef>
#include <optional>
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
/// The capacity is rounded up to a power of two, at most herald::max_capacity. After close(),
/// pushes fail and pops drain what is left, then report empty. Order: FIFO per producer; elements
/// from different producers are ordered by their (linearizable) claim of a slot. Thread-safety:
/// every member except the destructor may be called concurrently.
template <class T>
class BoundedQueue {
  using Claim = detail::Claim;

 public:
  using value_type = T;

  /// Creates an empty queue for at least `capacity` elements (rounded up to a power of two).
  ///
  /// Throws: std::invalid_argument unless 1 <= capacity <= herald::max_capacity (2^30);
  /// std::bad_alloc.
  explicit BoundedQueue(std::size_t capacity) : ring_(capacity) {}

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
    const std::size_t n = ring_.try_pop_many(out, max);
    if (n != 0) not_full_->notify(n);
    return n;
  }

  /// Closes the queue: later pushes fail, pops drain what is queued and then report empty, and
  /// every blocked push and pop wakes. Idempotent.
  void close() noexcept {
    ring_.close();
    not_empty_->wake_all();
    not_full_->wake_all();
  }

  /// Whether the queue is closed (true once close() has returned, and whenever a push failed
  /// because of a close).
  bool is_closed() const noexcept { return ring_.is_closed(); }

  /// Elements pushed since construction (exact when read; for statistics, not hot paths).
  std::uint64_t push_count() const noexcept { return ring_.push_count(); }
  /// Elements popped since construction (exact when read; for statistics, not hot paths).
  std::uint64_t pop_count() const noexcept { return ring_.pop_count(); }

  /// The number of cells (the requested capacity rounded up to a power of two).
  std::size_t capacity() const noexcept { return ring_.capacity(); }

  /// The number of queued elements at some recent moment (racy by nature), in [0, capacity()].
  std::size_t approx_size() const noexcept { return ring_.approx_size(); }

 private:
  // Builds the element straight into a claimed cell; only for nothrow constructions (see the
  // copy paths, which build a temporary first).
  template <class... Args>
  Claim claim_and_construct(Args&&... args) noexcept {
    return ring_.try_emplace(std::forward<Args>(args)...);
  }

  bool finish_push(Claim claim) noexcept {
    if (claim != Claim::pushed) return false;
    not_empty_->notify_one();
    return true;
  }

  bool has_room_hint() const noexcept { return ring_.has_room_hint(); }

  bool claim_and_take(std::optional<T>& out) noexcept { return ring_.try_pop(out); }

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
        *not_full_, attempt, [this] { return ring_.producer_may_proceed(); }, deadline, st);
    if (pushed) not_empty_->notify_one();
    return pushed;
  }

  [[gnu::noinline]] std::optional<T> pop_until(const detail::Deadline& deadline,
                                               const std::stop_token& st) {
    std::optional<T> out;
    const auto attempt = [&] { return claim_and_take(out) || ring_.closed_and_drained(); };
    detail::wait_for_progress(
        *not_empty_, attempt, [this] { return ring_.consumer_may_proceed(); }, deadline, st);
    if (out) not_full_->notify_one();
    return out;
  }

  detail::Ring<T> ring_;
  // Consumers park on not_empty_, producers on not_full_.
  detail::CachePadded<detail::EventCount> not_empty_;
  detail::CachePadded<detail::EventCount> not_full_;
};

}  // namespace herald
