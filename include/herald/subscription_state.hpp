// What a subscription is, beside the pool: the state one subscription shares between its handle
// and the broker's routes -- its queue, the overflow policy that publishers apply, its counters
// and its close reason. Handler subscriptions extend it (handler_state.hpp).
#pragma once

#include <herald/bounded_queue.hpp>
#include <herald/detail/cache_line.hpp>
#include <herald/detail/hashing.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

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

/// What an offer did, for the publisher's result and the broker totals. `deferred`: held for a
/// subscription that is joining with a replay, offered when its subscribe call finishes it;
/// `skipped`: that subscription had it (or a newer message of its topic) in its replay.
enum class Offer : std::uint8_t {
  delivered,
  dropped,
  evicted_and_delivered,
  closed,
  deferred,
  skipped
};

/// Per topic, the sequence number of the newest message a subscription was replayed.
using ReplayedUpTo = std::unordered_map<std::string, std::uint64_t, TopicHash, std::equal_to<>>;

template <class T>
class SubscriptionState {
 public:
  /// Throws: std::invalid_argument for an option out of range (see validate()); std::bad_alloc.
  SubscriptionState(std::string pattern, SubscribeOptions options)
      : pattern_(std::move(pattern)),
        options_(validated(std::move(options))),
        group_key_(options_.queue_group.empty() ? std::string()
                                                : pattern_ + ' ' + options_.queue_group),
        queue_(options_.capacity),
        join_(options_.replay.is_none() ? nullptr : std::make_unique<Join>()) {}
  virtual ~SubscriptionState() = default;
  SubscriptionState(const SubscriptionState&) = delete;
  SubscriptionState& operator=(const SubscriptionState&) = delete;

  [[nodiscard]] const std::string& pattern() const noexcept { return pattern_; }
  [[nodiscard]] const SubscribeOptions& options() const noexcept { return options_; }
  [[nodiscard]] BoundedQueue<Message<T>>& queue() noexcept { return queue_; }
  /// Queue groups are per (pattern, name), as in NATS: "pattern name" (patterns have no space).
  /// Built at subscribe time, so that unsubscribing never allocates. Empty without a group.
  [[nodiscard]] const std::string& group_key() const noexcept { return group_key_; }

  /// Its number in its broker (see SubscriptionInfo::id); set under the broker's registry lock
  /// before the broker lists it.
  void set_id(std::uint64_t id) noexcept { id_ = id; }
  [[nodiscard]] std::uint64_t id() const noexcept { return id_; }

  /// The consumer took `m` (or drop_oldest evicted it): remembers when it was published, for
  /// lag(). One relaxed store on a line only consumers write.
  void taken(const Message<T>& m) noexcept {
    last_taken_.store(m.published_at().time_since_epoch().count(), std::memory_order_relaxed);
  }

  /// Expiry (SubscribeOptions::max_age): true when `m`, just taken out of the queue, is too old to
  /// hand to the consumer; it is then counted in `expired` and must be discarded. Reads the clock
  /// only when a max_age is set.
  [[nodiscard]] bool expired(const Message<T>& m) noexcept {
    if (options_.max_age == std::chrono::nanoseconds::max()) return false;
    if (std::chrono::steady_clock::now() - m.published_at() <= options_.max_age) return false;
    expired_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }

  /// An upper bound on how long the oldest queued message has waited at `now`: zero when the
  /// queue is empty, else the time since the message taken last was published (since the
  /// subscription was made when none was taken yet). See SubscriptionInfo::lag.
  [[nodiscard]] std::chrono::nanoseconds lag(
      std::chrono::steady_clock::time_point now) const noexcept {
    if (queue_.approx_size() == 0) return std::chrono::nanoseconds::zero();
    const std::chrono::steady_clock::time_point since{
        std::chrono::steady_clock::duration(last_taken_.load(std::memory_order_relaxed))};
    return now > since ? std::chrono::duration_cast<std::chrono::nanoseconds>(now - since)
                       : std::chrono::nanoseconds::zero();
  }

  /// Set once, before the subscription is registered or visible to any other thread.
  void set_registry(std::weak_ptr<Registry<T>> registry) noexcept {
    registry_ = std::move(registry);
  }

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
  Offer offer(M&& m) {
    if (join_) [[unlikely]] {
      // Moves from `m` only when it returns an outcome.
      if (const std::optional<Offer> o = intercept(std::forward<M>(m))) return *o;
    }
    return offer_now(std::forward<M>(m), true);
  }

  /// True for a subscription made with a replay (SubscribeOptions::replay).
  [[nodiscard]] bool replays() const noexcept { return join_ != nullptr; }

  /// For a subscription made with a replay: while it is joining, holds `m` for finish_join
  /// (Offer::deferred); once joined, Offer::skipped when `m` is no newer than what its replay
  /// had of its topic; otherwise nothing, and `m` is left as it was (offer it).
  template <class M>
  [[gnu::noinline]] std::optional<Offer> intercept(M&& m) {
    if (!join_->joined.load(std::memory_order_acquire)) {
      std::unique_lock lock(join_->mutex);
      if (!join_->joined.load(std::memory_order_relaxed)) {
        join_->pending.emplace_back(std::forward<M>(m));
        return Offer::deferred;
      }
    }
    if (join_->had(m)) return Offer::skipped;
    return std::nullopt;
  }

  /// Ends the join of a subscription made with a replay, on the subscribing thread, once it is
  /// registered (so every later route has it) and `replay` was read from the retained store:
  /// offers `replay` (marked replayed), then what publishers offered meanwhile and the replay
  /// did not have (`up_to`: per topic, the newest sequence replayed; `horizon`: the broker's
  /// last sequence number when the replay was read), then lets publishers offer directly.
  /// Offers made here never wait (Overflow::block tries once: see SubscribeOptions::replay).
  /// `count(Offer, bool replayed)` is told each outcome.
  template <class Count>
  void finish_join(std::vector<Message<T>> replay, ReplayedUpTo up_to, std::uint64_t horizon,
                   Count&& count) {
    {
      const std::lock_guard lock(join_->mutex);
      join_->up_to = std::move(up_to);
      join_->horizon = horizon;
    }
    for (Message<T>& m : replay)
      count(offer_now(std::move(m), false), true);
    for (;;) {
      std::vector<Message<T>> batch;
      {
        const std::lock_guard lock(join_->mutex);
        if (join_->pending.empty()) {
          join_->joined.store(true, std::memory_order_release);
          return;
        }
        batch.swap(join_->pending);
      }
      for (Message<T>& m : batch)
        count(join_->had(m) ? Offer::skipped : offer_now(std::move(m), false), false);
    }
  }

 private:
  // Applies the policy; `may_wait` false: Overflow::block tries once (counted as a timeout).
  template <class M>
  [[gnu::always_inline]] Offer offer_now(M&& m, bool may_wait) {
    if (try_offer(std::forward<M>(m))) return Offer::delivered;
    // Full, or closed. A push fails because of a close only once is_closed() is true.
    if (queue_.is_closed()) return Offer::closed;
    raise_high_water(queue_.capacity());  // full: the depth is the capacity
    switch (options_.overflow) {
      case Overflow::drop_incoming:
        return refuse(dropped_full_);
      case Overflow::disconnect:
        if (overflows_.fetch_add(1, std::memory_order_relaxed) + 1 >= options_.disconnect_after) {
          close_and_leave(CloseReason::slow_consumer);
        }
        return refuse(dropped_full_);
      case Overflow::drop_oldest:
        return evict_and_offer(std::forward<M>(m));
      case Overflow::block:
        if (!may_wait) return refuse(dropped_timeout_);
        return block_and_offer(std::forward<M>(m));
    }
    return Offer::closed;  // unreachable: the options were validated
  }

 public:
  /// Closes once: the first reason wins. True for the call that closed it. After it returns no
  /// enqueue can succeed (the queue's close is linearizable with push); queued messages stay
  /// available to the consumer.
  bool close(CloseReason why) noexcept {
    CloseReason expected = CloseReason::open;
    if (!reason_.compare_exchange_strong(expected, why, std::memory_order_acq_rel)) return false;
    queue_.close();
    return true;
  }

  /// Closes for `why` and, if this call closed it, takes it out of the broker's routes.
  void close_and_leave(CloseReason why) noexcept {
    if (!close(why)) return;
    if (auto r = registry_.lock()) r->remove(*this);
  }

  /// Called once the state is owned by a shared_ptr, before it is registered: handler
  /// subscriptions start watching their executor. Throws: std::bad_alloc.
  virtual void attach() {}

  /// Handler subscriptions: waits until no handler invocation runs or will start. Pull: nothing.
  virtual void quiesce() noexcept {}

  /// The last handle is gone: nothing can receive what is queued any more, so let it go now
  /// rather than when the last route that refers to this state is dropped (an idle Publisher
  /// may hold one for a long time). Called after close; the messages count as received.
  virtual void release() noexcept {
    while (queue_.try_pop()) {
    }
  }

  /// What kind of subscription this is, and its handler's counters and durations (zero for pull
  /// ones).
  [[nodiscard]] virtual SubscriptionKind kind() const noexcept { return SubscriptionKind::pull; }
  [[nodiscard]] virtual HandlerCounters handler_counters() const noexcept { return {}; }
  [[nodiscard]] virtual DurationHistogram handler_durations() const noexcept { return {}; }

  [[nodiscard]] CloseReason close_reason() const noexcept {
    return reason_.load(std::memory_order_acquire);
  }

  /// The counters. `delivered` and `received` are read from the queue's own push and pop counts
  /// (a pop is a receive unless it was an eviction), and `offered` is counted apart, so
  /// `offered == delivered + dropped` is a check, not an identity by construction.
  [[nodiscard]] SubscriptionStats stats() const noexcept {
    SubscriptionStats s;
    s.offered = offered_.load(std::memory_order_relaxed);
    s.delivered = queue_.push_count();
    s.dropped_full = dropped_full_.load(std::memory_order_relaxed);
    s.dropped_timeout = dropped_timeout_.load(std::memory_order_relaxed);
    s.dropped = s.dropped_full + s.dropped_timeout;
    s.evicted = evicted_.load(std::memory_order_relaxed);
    // Pops before evictions: an eviction counts itself after its pop, so this order never
    // makes `received` overshoot by an eviction in flight.
    // Expiries, like evictions, count themselves after their pop.
    s.expired = expired_.load(std::memory_order_relaxed);
    s.received = queue_.pop_count();
    s.received -= std::min<std::uint64_t>(s.received, evicted_.load(std::memory_order_relaxed));
    s.received -= std::min<std::uint64_t>(s.received, s.expired);
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
    validate(o);
    if (!std::is_copy_constructible_v<T> && !o.replay.is_none()) {
      throw std::invalid_argument(
          "herald: SubscribeOptions::replay needs a copyable message type (a replayed message is "
          "the subscriber's copy, marked replayed); use a std::shared_ptr<const T> payload");
    }
    return o;
  }

  void on_delivered() noexcept {
    offered_.fetch_add(1, std::memory_order_relaxed);
    // The high-water mark is sampled: reading the depth means reading the consumer's index, a
    // cache miss per message while the consumer runs. Once every 64 enqueues (the publisher's
    // own index, which it has just written, says when), plus whenever the queue is full.
    if ((queue_.push_count() & (kHighWaterSample - 1)) == 1) raise_high_water(queue_.approx_size());
    after_enqueue();
  }

  void raise_high_water(std::size_t depth) noexcept {
    // Read-mostly: only write when it actually grows.
    std::size_t hw = high_water_.load(std::memory_order_relaxed);
    while (depth > hw && !high_water_.compare_exchange_weak(hw, depth, std::memory_order_relaxed)) {
    }
  }

  Offer refuse(std::atomic<std::uint64_t>& reason) noexcept {
    offered_.fetch_add(1, std::memory_order_relaxed);
    reason.fetch_add(1, std::memory_order_relaxed);
    return Offer::dropped;
  }

  static constexpr std::uint64_t kHighWaterSample = 64;

  // The joint of a subscription made with a replay (see intercept and finish_join).
  struct Join {
    std::mutex mutex;                 // guards pending, and up_to and horizon until joined
    std::vector<Message<T>> pending;  // offered while joining, in order
    std::atomic<bool> joined{false};  // set once; then up_to and horizon are read-only
    ReplayedUpTo up_to;
    std::uint64_t horizon = 0;
    // Whether the replay had `m`'s topic up to `m` or beyond. A message numbered after the
    // replay was read (beyond the horizon) cannot have been in it: no lookup.
    [[nodiscard]] bool had(const Message<T>& m) const {
      if (m.sequence() > horizon) return false;
      const auto it = up_to.find(std::string_view(m.topic()));
      return it != up_to.end() && m.sequence() <= it->second;
    }
  };

  template <class M>
  Offer evict_and_offer(M&& m) {
    bool evicted = false;
    do {
      // Evict one; the consumer may have made room meanwhile, in which case try again.
      if (const std::optional<Message<T>> old = queue_.try_pop()) {
        taken(*old);
        evicted_.fetch_add(1, std::memory_order_relaxed);
        evicted = true;
      }
      if (try_offer(std::forward<M>(m))) {
        return evicted ? Offer::evicted_and_delivered : Offer::delivered;
      }
    } while (!queue_.is_closed());
    return Offer::closed;
  }

  template <class M>
  Offer block_and_offer(M&& m) {
    const bool forever = options_.block_timeout == std::chrono::nanoseconds::max();
    const bool ok = forever ? queue_.push(std::forward<M>(m))
                            : queue_.push_for(std::forward<M>(m), options_.block_timeout);
    if (ok) {
      on_delivered();
      return Offer::delivered;
    }
    // Without a timeout only a close makes push fail; with one, is_closed() tells which it was
    // (a push refused by a close always finds it true).
    if (forever || queue_.is_closed()) return Offer::closed;
    return refuse(dropped_timeout_);
  }

  const std::string pattern_;
  const SubscribeOptions options_;
  const std::string group_key_;
  BoundedQueue<Message<T>> queue_;
  std::atomic<CloseReason> reason_{CloseReason::open};
  std::weak_ptr<Registry<T>> registry_;
  std::uint64_t id_ = 0;
  const std::unique_ptr<Join> join_;  // null unless it replays: one test per offer

  // Written by consumers (the publish time of the message taken last, steady clock ticks).
  alignas(cache_line_size) std::atomic<std::chrono::steady_clock::rep> last_taken_{
      std::chrono::steady_clock::now().time_since_epoch().count()};
  std::atomic<std::uint64_t> expired_{0};  // by consumers: taken out too old (max_age)

  // Written by publishers; kept off the queue's and the consumer's cache lines.
  alignas(cache_line_size) std::atomic<std::uint64_t> offered_{0};
  std::atomic<std::uint64_t> dropped_full_{0};
  std::atomic<std::uint64_t> dropped_timeout_{0};
  std::atomic<std::uint64_t> evicted_{0};
  std::atomic<std::size_t> high_water_{0};
  std::atomic<std::uint32_t> overflows_{0};
};

}  // namespace detail
}  // namespace herald
