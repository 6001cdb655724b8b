// What a subscription is, beside the pool: the state one subscription shares between its handle
// and the broker's routes -- its queue, the overflow policy that publishers apply, its counters
// and its close reason. Handler subscriptions extend it (handler_state.hpp).
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/detail/cache_line.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

namespace herald {

namespace detail {

template <class T>
class SubscriptionState;

/// What a subscription needs from the broker that owns it: to be taken out of the routing table.
/// The broker implements it; subscriptions hold it weakly so either side may go first.
template <class T>
class Registry {
 public:
  virtual void remove(SubscriptionState<T>& sub) noexcept = 0;

 protected:
  ~Registry() = default;
};

/// What an offer did, for the publisher's result and the broker totals.
enum class Offer : std::uint8_t { delivered, dropped, evicted_and_delivered, closed };

template <class T>
class SubscriptionState {
 public:
  SubscriptionState(std::string pattern, SubscribeOptions options)
      : pattern_(std::move(pattern)),
        options_(validated(std::move(options))),
        queue_(options_.capacity) {}
  virtual ~SubscriptionState() = default;
  SubscriptionState(const SubscriptionState&) = delete;
  SubscriptionState& operator=(const SubscriptionState&) = delete;

  [[nodiscard]] const std::string& pattern() const noexcept { return pattern_; }
  [[nodiscard]] const SubscribeOptions& options() const noexcept { return options_; }
  [[nodiscard]] BoundedQueue<Message<T>>& queue() noexcept { return queue_; }

  /// Tries to enqueue without waiting; true when there was room. Queue groups use this to find
  /// a member with room before applying the policy of one of them.
  // M is Message<T> (const& or &&). An rvalue is moved from only by the push that succeeds, so
  // every retry below may forward it again.
  template <class M>
  bool try_offer(M&& m) {
    if (!queue_.try_push(std::forward<M>(m))) return false;
    // Only consecutive overflows count for Overflow::disconnect. Read before writing so the
    // fast path never dirties the shared line.
    if (overflows_.load(std::memory_order_relaxed) != 0) {
      overflows_.store(0, std::memory_order_relaxed);
    }
    on_delivered();
    return true;
  }

  /// Applies this subscriber's overflow policy to one message. Called by publishers, concurrently.
  template <class M>
  Offer offer(M&& m, Registry<T>& registry) {
    switch (options_.overflow) {
      case Overflow::drop_incoming:
        if (try_offer(std::forward<M>(m))) return Offer::delivered;
        return refuse_full();
      case Overflow::disconnect:
        if (try_offer(std::forward<M>(m))) return Offer::delivered;
        if (queue_.is_closed()) return Offer::closed;
        dropped_full_.fetch_add(1, std::memory_order_relaxed);
        if (overflows_.fetch_add(1, std::memory_order_relaxed) + 1 >= options_.disconnect_after &&
            close(CloseReason::slow_consumer)) {
          registry.remove(*this);
        }
        return Offer::dropped;
      case Overflow::drop_oldest: {
        bool evicted = false;
        while (!try_offer(std::forward<M>(m))) {
          if (queue_.is_closed()) return Offer::closed;
          // Evict one; the consumer may have made room meanwhile, in which case try again.
          if (queue_.try_pop()) {
            evicted_.fetch_add(1, std::memory_order_relaxed);
            evicted = true;
          }
        }
        return evicted ? Offer::evicted_and_delivered : Offer::delivered;
      }
      case Overflow::block: {
        if (try_offer(std::forward<M>(m))) return Offer::delivered;
        if (queue_.is_closed()) return Offer::closed;
        const bool forever = options_.block_timeout == std::chrono::nanoseconds::max();
        const bool ok = forever ? queue_.push(std::forward<M>(m))
                                : queue_.push_for(std::forward<M>(m), options_.block_timeout);
        if (ok) {
          on_delivered();
          return Offer::delivered;
        }
        if (queue_.is_closed()) return Offer::closed;
        dropped_timeout_.fetch_add(1, std::memory_order_relaxed);
        return Offer::dropped;
      }
    }
    return Offer::closed;
  }

  /// Closes once: the first reason wins. True for the call that closed it. After it returns no
  /// enqueue can succeed (the queue's close is linearizable with push); queued messages stay
  /// available to the consumer.
  bool close(CloseReason why) noexcept {
    CloseReason expected = CloseReason::open;
    if (!reason_.compare_exchange_strong(expected, why, std::memory_order_acq_rel)) return false;
    queue_.close();
    return true;
  }

  /// Handler subscriptions: waits until no handler invocation runs or will start. Pull: nothing.
  virtual void quiesce() noexcept {}

  /// What kind of subscription this is, and its handler's counters (zero for pull ones).
  [[nodiscard]] virtual SubscriptionKind kind() const noexcept { return SubscriptionKind::pull; }
  [[nodiscard]] virtual HandlerCounters handler_counters() const noexcept { return {}; }

  [[nodiscard]] CloseReason close_reason() const noexcept {
    return reason_.load(std::memory_order_acquire);
  }

  /// The consumer took one message out of the queue.
  void note_received(std::uint64_t n = 1) noexcept {
    received_.fetch_add(n, std::memory_order_relaxed);
  }

  [[nodiscard]] SubscriptionStats stats() const noexcept {
    SubscriptionStats s;
    s.delivered = delivered_.load(std::memory_order_relaxed);
    s.dropped_full = dropped_full_.load(std::memory_order_relaxed);
    s.dropped_timeout = dropped_timeout_.load(std::memory_order_relaxed);
    s.dropped = s.dropped_full + s.dropped_timeout;
    s.offered = s.delivered + s.dropped;
    s.evicted = evicted_.load(std::memory_order_relaxed);
    s.received = received_.load(std::memory_order_relaxed);
    s.queue_depth = queue_.approx_size();
    s.high_water_mark = high_water_.load(std::memory_order_relaxed);
    s.close_reason = close_reason();
    return s;
  }

 protected:
  /// Hook for handler subscriptions: a message was enqueued; schedule the strand.
  virtual void after_enqueue() noexcept {}

 private:
  static SubscribeOptions validated(SubscribeOptions o) {
    if (o.capacity == 0) throw std::invalid_argument("herald: subscription capacity must be > 0");
    if (o.overflow == Overflow::disconnect && o.disconnect_after == 0) {
      throw std::invalid_argument("herald: disconnect_after must be > 0");
    }
    if (o.block_timeout < std::chrono::nanoseconds::zero()) {
      throw std::invalid_argument("herald: block_timeout must not be negative");
    }
    return o;
  }

  void on_delivered() noexcept {
    delivered_.fetch_add(1, std::memory_order_relaxed);
    // The high-water mark is read-mostly: only write when it actually grows.
    const std::size_t depth = queue_.approx_size();
    std::size_t hw = high_water_.load(std::memory_order_relaxed);
    while (depth > hw && !high_water_.compare_exchange_weak(hw, depth, std::memory_order_relaxed)) {
    }
    after_enqueue();
  }

  Offer refuse_full() noexcept {
    if (queue_.is_closed()) return Offer::closed;
    dropped_full_.fetch_add(1, std::memory_order_relaxed);
    return Offer::dropped;
  }

  const std::string pattern_;
  const SubscribeOptions options_;
  BoundedQueue<Message<T>> queue_;
  std::atomic<CloseReason> reason_{CloseReason::open};

  // Written by publishers; kept off the queue's and the consumer's cache lines.
  alignas(cache_line_size) std::atomic<std::uint64_t> delivered_{0};
  std::atomic<std::uint64_t> dropped_full_{0};
  std::atomic<std::uint64_t> dropped_timeout_{0};
  std::atomic<std::uint64_t> evicted_{0};
  std::atomic<std::size_t> high_water_{0};
  std::atomic<std::uint32_t> overflows_{0};
  // Written by the consumer.
  alignas(cache_line_size) std::atomic<std::uint64_t> received_{0};
};

}  // namespace detail
}  // namespace herald
