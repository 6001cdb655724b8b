// What a subscriber asks for: queue size, what happens when its queue is full, queue groups;
// and why a subscription closed.
#pragma once

#include <herald/message.hpp>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <string_view>

namespace herald {

/// What `publish` does when this subscriber's queue is full.
enum class Overflow : std::uint8_t {
  /// The publisher waits for room, at most `SubscribeOptions::block_timeout`; after that the
  /// message is dropped for this subscriber and counted.
  block,
  /// The message being published is dropped for this subscriber and counted. The default.
  drop_incoming,
  /// The oldest queued message is evicted (counted) and the new one enqueued.
  drop_oldest,
  /// Like drop_incoming, but after `disconnect_after` consecutive overflows the subscription
  /// closes with CloseReason::slow_consumer; what was queued can still be drained.
  disconnect,
};

/// Why a subscription stopped receiving new messages.
enum class CloseReason : std::uint8_t {
  open,           ///< not closed
  unsubscribed,   ///< unsubscribe() or the handle's destructor
  stopped,        ///< a stop was requested on the subscription's std::stop_token
  slow_consumer,  ///< Overflow::disconnect gave up on it
  broker_closed,  ///< Broker::close() or the broker's destructor
};

/// Per-subscription options. Designated initialisers read well:
/// `broker.subscribe("a.>", {.capacity = 64, .overflow = herald::Overflow::drop_oldest})`.
struct SubscribeOptions {
  /// Queue capacity in messages, rounded up to a power of two; 0 throws std::invalid_argument.
  std::size_t capacity = 1024;
  /// Full-queue policy. The default drops the new message for this subscriber only, so one slow
  /// consumer never stalls publishers or the other subscribers.
  Overflow overflow = Overflow::drop_incoming;
  /// For Overflow::block: how long a publisher waits for room. The default waits forever.
  std::chrono::nanoseconds block_timeout = std::chrono::nanoseconds::max();
  /// For Overflow::disconnect: consecutive overflows tolerated before closing (at least 1).
  std::uint32_t disconnect_after = 1;
  /// Non-empty: join this queue group. Among the subscriptions of one group on the same pattern,
  /// each message goes to exactly one member (one with room when there is one).
  std::string queue_group{};
};

/// Executor for handler subscriptions: the handler runs inside `publish`, in the publisher's
/// thread (like a signal/slot library), still one invocation at a time per subscription.
struct InlineExecutor {};
inline constexpr InlineExecutor inline_executor{};

/// Executor for handler subscriptions: the subscription gets a thread of its own.
struct DedicatedThread {};
inline constexpr DedicatedThread dedicated_thread{};

/// How a handler subscription retries a message whose handler threw.
/// Backoff between attempts uses "decorrelated jitter": each delay is drawn uniformly from
/// [initial_backoff, 3 x the previous delay], capped at max_backoff.
struct RetryPolicy {
  std::uint32_t max_attempts = 1;  ///< 1: no retry
  std::chrono::nanoseconds initial_backoff = std::chrono::milliseconds(1);
  std::chrono::nanoseconds max_backoff = std::chrono::seconds(1);
};

/// What a dead-letter consumer receives for a message whose handler failed every attempt.
template <class T>
struct DeadLetter {
  Message<T> message;          ///< the original message (its topic, value, sequence, ...)
  std::string error;           ///< what() of the last exception, or "unknown exception"
  std::uint32_t attempts = 0;  ///< how many times the handler was called for it
  std::string pattern;         ///< the pattern of the subscription that failed
};

template <class T>
class Broker;

/// The prefix of dead-letter topics: a message on topic `orders.eu` that exhausted its retries is
/// published as DeadLetter<T> on `$DLQ.orders.eu`.
inline constexpr std::string_view dead_letter_prefix = "$DLQ.";

/// Options that only handler subscriptions have: failure handling.
template <class T>
struct HandlerOptions {
  /// Called (on the handler's thread) after every failed attempt. Exceptions from it are ignored.
  std::function<void(const Message<T>&, std::exception_ptr)> on_error{};
  RetryPolicy retry{};
  /// When set, messages that failed every attempt are published there as DeadLetter<T> on
  /// `$DLQ.<original topic>`. It must outlive the subscription.
  Broker<DeadLetter<T>>* dead_letters = nullptr;
  /// How backoff waits are done; tests inject a recorder. Empty: wait on a clock, waking early
  /// when the subscription is unsubscribed.
  std::function<void(std::chrono::nanoseconds)> sleep{};
};

/// The enumerator's name, e.g. "drop_oldest".
[[nodiscard]] constexpr std::string_view to_string(Overflow o) noexcept {
  switch (o) {
    case Overflow::block:
      return "block";
    case Overflow::drop_incoming:
      return "drop_incoming";
    case Overflow::drop_oldest:
      return "drop_oldest";
    case Overflow::disconnect:
      return "disconnect";
  }
  return "?";
}

/// The enumerator's name, e.g. "slow_consumer".
[[nodiscard]] constexpr std::string_view to_string(CloseReason r) noexcept {
  switch (r) {
    case CloseReason::open:
      return "open";
    case CloseReason::unsubscribed:
      return "unsubscribed";
    case CloseReason::stopped:
      return "stopped";
    case CloseReason::slow_consumer:
      return "slow_consumer";
    case CloseReason::broker_closed:
      return "broker_closed";
  }
  return "?";
}

}  // namespace herald
