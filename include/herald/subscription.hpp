// Subscription<T>: the handle of a pull subscription. The consumer takes messages out with
// receive() or range-for; destroying the handle unsubscribes.
#pragma once

#include <herald/detail/parking.hpp>
#include <herald/handler_state.hpp>
#include <herald/message.hpp>
#include <herald/policy.hpp>
#include <herald/stats.hpp>
#include <herald/subscription_state.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace herald {

template <class T>
class Broker;

namespace detail {

/// Runs on a stop request: closes the subscription and takes it out of the broker's routes,
/// without a helper thread. Holds the state strongly (the state knows its broker weakly).
template <class T>
struct StopUnsubscribe {
  std::shared_ptr<SubscriptionState<T>> state;
  void operator()() const noexcept {
    state->close_and_leave(CloseReason::stopped);
    state->quiesce();
  }
};

/// Where a handle's stop callback lives: allocated before the subscription is registered (so
/// that registering is the last step that can fail), constructed after (which cannot fail).
template <class T>
using StopSlot = std::optional<std::stop_callback<StopUnsubscribe<T>>>;

/// What pull and handler subscription handles share: ownership, unsubscribe, stop_token, stats.
template <class T>
class SubscriptionHandle {
 public:
  SubscriptionHandle() = default;
  /// Takes ownership of a registered `state`; `slot` (non-null when `stop` can be requested)
  /// receives the stop callback. If the stop is already requested, the callback runs here.
  SubscriptionHandle(std::shared_ptr<SubscriptionState<T>> state, std::stop_token stop,
                     std::unique_ptr<StopSlot<T>> slot) noexcept
      : state_(std::move(state)), on_stop_(std::move(slot)) {
    static_assert(std::is_nothrow_constructible_v<std::stop_callback<StopUnsubscribe<T>>,
                                                  std::stop_token, StopUnsubscribe<T>>);
    if (on_stop_) on_stop_->emplace(std::move(stop), StopUnsubscribe<T>{state_});
  }
  SubscriptionHandle(SubscriptionHandle&&) noexcept = default;
  SubscriptionHandle& operator=(SubscriptionHandle&& other) noexcept {
    if (this != &other) {
      reset();
      state_ = std::move(other.state_);
      on_stop_ = std::move(other.on_stop_);
    }
    return *this;
  }
  ~SubscriptionHandle() { reset(); }

  void unsubscribe() noexcept {
    if (!state_) return;
    // First make sure a concurrent stop callback has finished (the destructor waits for it),
    // then close: the first reason wins, so a stop that got there first keeps its reason.
    on_stop_.reset();
    state_->close_and_leave(CloseReason::unsubscribed);
    state_->quiesce();  // handler subscriptions: no invocation runs or will start after this
  }

  [[nodiscard]] SubscriptionState<T>* state() const noexcept { return state_.get(); }

  [[nodiscard]] CloseReason close_reason() const noexcept {
    return state_ ? state_->close_reason() : CloseReason::unsubscribed;
  }

  [[nodiscard]] const std::string& pattern() const noexcept {
    static const std::string none;
    return state_ ? state_->pattern() : none;
  }

 private:
  // The handle is going away: unsubscribe, and let go of what nobody can receive any more.
  void reset() noexcept {
    if (!state_) return;
    unsubscribe();
    state_->release();
    state_.reset();
  }

  std::shared_ptr<SubscriptionState<T>> state_;
  std::unique_ptr<StopSlot<T>> on_stop_;
};

}  // namespace detail

/// A pull subscription: messages published to matching topics wait in its own bounded queue
/// until the consumer takes them.
///
///     auto sub = broker.subscribe("orders.>");
///     for (const herald::Message<Order>& m : sub) handle(*m);  // ends when it closes
///
/// Move-only; destroying it unsubscribes. After unsubscribe() (or a stop request, a slow-consumer
/// disconnect, or the broker closing) no new message is enqueued, and the receive calls still
/// return what was already queued, then return empty.
/// Thread-safety: receive calls may be made from several threads (each message goes to one).
template <class T>
class Subscription {
 public:
  /// An empty handle: closed, receives nothing.
  Subscription() = default;

  /// Takes the oldest queued message, if there is one. Never blocks.
  [[nodiscard]] std::optional<Message<T>> try_receive() {
    return take([&](auto& queue) { return queue.try_pop(); });
  }

  /// Takes the oldest message, waiting for one.
  /// Blocks: until a message arrives or the subscription closes (then returns empty once the
  /// queue is drained).
  [[nodiscard]] std::optional<Message<T>> receive() {
    return take([&](auto& queue) { return queue.pop(); });
  }

  /// Like receive(), waiting at most `timeout` (zero: try once; duration::max(): forever).
  template <class Rep, class Period>
  [[nodiscard]] std::optional<Message<T>> receive_for(std::chrono::duration<Rep, Period> timeout) {
    if (!expiring()) return take([&](auto& queue) { return queue.pop_for(timeout); });
    // Expired messages are skipped: what is left of the timeout goes to the next pop.
    const detail::Deadline deadline = detail::Deadline::after(timeout);
    return take([&](auto& queue) {
      if (deadline.is_forever()) return queue.pop();
      if (deadline.passed()) return queue.try_pop();
      return queue.pop_for(deadline.when() - std::chrono::steady_clock::now());
    });
  }

  /// Like receive(), also returning empty once a stop is requested on `stop`.
  [[nodiscard]] std::optional<Message<T>> receive(std::stop_token stop) {
    return take([&](auto& queue) { return queue.pop(std::move(stop)); });
  }

  /// Appends up to `max` messages to `out`: what is queued at once, then waiting for more until
  /// `max` are there or `max_wait` has passed since the call (zero: take what is queued, never
  /// wait). Returns how many it appended: 0 on timeout with nothing, or once closed and drained.
  /// Blocks: at most `max_wait`. Throws: what growing `out` throws (reserve room first to rule
  /// that out; a message taken when it throws is lost).
  template <class Rep, class Period>
  std::size_t receive_many(std::vector<Message<T>>& out, std::size_t max,
                           std::chrono::duration<Rep, Period> max_wait) {
    const detail::Deadline deadline = detail::Deadline::after(max_wait);
    std::size_t n = 0;
    while (n < max) {
      std::optional<Message<T>> m = try_receive();
      if (!m) {
        if (deadline.passed()) break;
        m = take([&](auto& queue) {
          if (deadline.is_forever()) return queue.pop();
          if (deadline.passed()) return queue.try_pop();
          return queue.pop_for(deadline.when() - std::chrono::steady_clock::now());
        });
        if (!m) break;
      }
      out.push_back(std::move(*m));
      ++n;
    }
    return n;
  }

  /// Stops delivery. Idempotent. When it returns, nothing more is enqueued; what is already queued
  /// can still be received.
  void unsubscribe() noexcept { handle_.unsubscribe(); }

  /// Why it closed, or CloseReason::open.
  [[nodiscard]] CloseReason close_reason() const noexcept { return handle_.close_reason(); }
  [[nodiscard]] bool is_open() const noexcept { return close_reason() == CloseReason::open; }

  /// Its counters (see SubscriptionStats for the identities they satisfy).
  [[nodiscard]] SubscriptionStats stats() const noexcept {
    return state() ? state()->stats() : SubscriptionStats{};
  }

  /// The pattern it was subscribed with.
  [[nodiscard]] const std::string& pattern() const noexcept { return handle_.pattern(); }

  /// Input iterator over received messages: each increment calls receive().
  class iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Message<T>;
    using difference_type = std::ptrdiff_t;
    using pointer = const Message<T>*;
    using reference = const Message<T>&;

    iterator() = default;
    reference operator*() const noexcept { return *current_; }
    pointer operator->() const noexcept { return &*current_; }
    iterator& operator++() {
      current_ = sub_->receive();
      return *this;
    }
    void operator++(int) { ++*this; }
    friend bool operator==(const iterator& it, std::default_sentinel_t) noexcept {
      return !it.current_.has_value();
    }

   private:
    friend class Subscription;
    explicit iterator(Subscription* sub) : sub_(sub), current_(sub->receive()) {}
    Subscription* sub_ = nullptr;
    std::optional<Message<T>> current_;
  };

  /// Blocks for the first message (see receive()).
  [[nodiscard]] iterator begin() { return iterator(this); }
  [[nodiscard]] std::default_sentinel_t end() const noexcept { return {}; }

 private:
  friend class Broker<T>;
  explicit Subscription(detail::SubscriptionHandle<T> handle) noexcept
      : handle_(std::move(handle)) {}

  detail::SubscriptionState<T>* state() const noexcept { return handle_.state(); }

  bool expiring() const noexcept {
    return state() && state()->options().max_age != std::chrono::nanoseconds::max();
  }

  // The receive calls: `pop(queue)` takes a message, which is then noted for the lag metric;
  // one older than max_age is discarded (counted) and `pop` called again.
  template <class Pop>
  std::optional<Message<T>> take(Pop pop) {
    if (!state()) return std::nullopt;
    for (;;) {
      std::optional<Message<T>> m = pop(state()->queue());
      if (!m) return m;
      state()->taken(*m);
      if (!state()->expired(*m)) return m;
    }
  }

  detail::SubscriptionHandle<T> handle_;
};

/// The handle of a handler subscription: `handler(const Message<T>&)` runs on the chosen
/// executor, at most one invocation at a time, in publish order.
///
///     auto h = broker.subscribe("orders.>", [](const herald::Message<Order>& m) { ... }, pool);
///
/// Move-only; destroying it unsubscribes. Unsubscribe is quiescent: when unsubscribe() (or the
/// destructor, or a stop request's callback) returns, no invocation of the handler is running
/// and none will start. Called from inside the handler itself, it returns at once and no further
/// invocation starts.
template <class T>
class HandlerSubscription {
 public:
  HandlerSubscription() = default;

  /// Stops delivery and waits for a running invocation to finish (see the class comment).
  /// Idempotent.
  void unsubscribe() noexcept { handle_.unsubscribe(); }

  /// Waits until every message delivered to this subscription before the call has been handled
  /// (evictions by drop_oldest count as done), at most `timeout` (duration::max(): forever).
  /// Graceful shutdown is `broker.close(); h.wait_idle();`: a closed subscription still handles
  /// what it had accepted. Returns false on timeout, once the subscription is unsubscribed or
  /// stopped with messages unhandled, from inside its own handler, and for an empty handle.
  /// Blocks: yes. Called from a task on the WorkerPool that runs this handler, it can wait for a
  /// worker that never comes; wait from outside the pool.
  template <class Rep = std::int64_t, class Period = std::nano>
  bool wait_idle(std::chrono::duration<Rep, Period> timeout =
                     std::chrono::duration<Rep, Period>::max()) const noexcept {
    auto* s = state();
    if (s == nullptr) return false;
    return s->wait_idle(detail::Deadline::after(timeout));
  }

  /// Why it closed, or CloseReason::open.
  [[nodiscard]] CloseReason close_reason() const noexcept { return handle_.close_reason(); }
  [[nodiscard]] bool is_open() const noexcept { return close_reason() == CloseReason::open; }

  /// Queue and handler counters, including handler duration (count, total, max).
  [[nodiscard]] HandlerStats stats() const noexcept {
    return state() ? state()->handler_stats() : HandlerStats{};
  }

  /// The pattern it was subscribed with.
  [[nodiscard]] const std::string& pattern() const noexcept { return handle_.pattern(); }

 private:
  friend class Broker<T>;
  explicit HandlerSubscription(detail::SubscriptionHandle<T> handle) noexcept
      : handle_(std::move(handle)) {}

  detail::HandlerState<T>* state() const noexcept {
    return static_cast<detail::HandlerState<T>*>(handle_.state());
  }

  detail::SubscriptionHandle<T> handle_;
};

}  // namespace herald
