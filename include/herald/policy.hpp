// What a subscriber asks for: queue size, what happens when its queue is full, queue groups,
// failure handling for handlers; and why a subscription closed.
#pragma once

#include <herald/detail/ring.hpp>
#include <herald/message.hpp>
#include <herald/topic.hpp>

#include <chrono>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

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

/// The lanes of a WorkerPool: a worker takes high before normal before low, except that a lane
/// whose head has been passed over by WorkerPoolOptions::max_bypass dispatches of higher lanes
/// goes next (aging), so no lane starves. Plain submissions and keyed ones are normal.
enum class Priority : std::uint8_t {
  high,    ///< control messages, cancellations: ahead of everything else
  normal,  ///< the default
  low,     ///< background work: runs when nothing else waits, or once it has aged
};

/// The number of Priority levels.
inline constexpr std::size_t priority_levels = 3;

/// Why a subscription stopped receiving new messages.
enum class CloseReason : std::uint8_t {
  open,              ///< not closed
  unsubscribed,      ///< unsubscribe() or the handle's destructor
  stopped,           ///< a stop was requested on the subscription's std::stop_token
  slow_consumer,     ///< Overflow::disconnect gave up on it
  broker_closed,     ///< Broker::close() or the broker's destructor
  executor_stopped,  ///< handler subscriptions: the executor refused work (e.g. a WorkerPool was
                     ///< shut down or destroyed); what it had queued stays unhandled, counted
                     ///< in queue_depth
};

/// What a new subscription receives of the retained messages (Broker::retain, PublishOptions::
/// retain) of the topics its pattern matches, before the live ones. A value type:
/// `{.replay = herald::Replay::last_value()}`.
class Replay {
 public:
  /// Nothing: only messages published from now on (the default).
  [[nodiscard]] static constexpr Replay none() noexcept { return Replay(0); }
  /// The last retained message of every matching topic.
  [[nodiscard]] static constexpr Replay last_value() noexcept { return Replay(1); }
  /// Up to the last `n` retained messages of every matching topic, oldest first (as many as
  /// the topic retains). `last(0)` is none().
  [[nodiscard]] static constexpr Replay last(std::size_t n) noexcept { return Replay(n); }

  /// How many messages per topic it asks for (0: none).
  [[nodiscard]] constexpr std::size_t count() const noexcept { return n_; }
  [[nodiscard]] constexpr bool is_none() const noexcept { return n_ == 0; }
  friend constexpr bool operator==(Replay, Replay) noexcept = default;

 private:
  constexpr explicit Replay(std::size_t n) noexcept : n_(n) {}
  std::size_t n_ = 0;
};

/// Per-subscription options; Broker::subscribe validates every field (see validate()).
/// Designated initialisers read well:
/// `broker.subscribe("a.>", {.capacity = 64, .overflow = herald::Overflow::drop_oldest})`.
struct SubscribeOptions {
  /// Queue capacity in messages, in [1, max_capacity], rounded up to a power of two.
  std::size_t capacity = 1024;
  /// Full-queue policy. The default drops the new message for this subscriber only, so one slow
  /// consumer never stalls publishers or the other subscribers.
  Overflow overflow = Overflow::drop_incoming;
  /// For Overflow::block: how long a publisher waits for room (>= 0; 0 tries once). The default
  /// waits forever; only then is every message delivered exactly once.
  std::chrono::nanoseconds block_timeout = std::chrono::nanoseconds::max();
  /// For Overflow::disconnect: consecutive overflows tolerated before closing (at least 1).
  std::uint32_t disconnect_after = 1;
  /// Non-empty: join this queue group. Named like a topic (dot-separated non-empty tokens, no
  /// whitespace or control characters, no wildcard token), at most 256 bytes.
  /// Among the subscriptions of one group on the same pattern, each message goes to exactly one
  /// member (one with room when there is one).
  std::string queue_group{};
  /// Retained messages to receive first (see Replay and Broker::retain): per topic in publish
  /// order, then the live messages, with none missed or repeated at the joint. Replayed
  /// messages go through this subscription's overflow policy like any other offer, except that
  /// Overflow::block does not wait while the subscribe call runs (see Broker::subscribe).
  Replay replay = Replay::none();
  /// Handler subscriptions: the lane their strand is scheduled in on a WorkerPool (each batch of
  /// up to 64 messages is one task of that priority). Executors without lanes ignore it
  /// (inline_executor, dedicated_thread, and your own unless they take
  /// `execute(task, Priority)`). Pull subscriptions ignore it.
  Priority priority = Priority::normal;
  /// Expiry: a message older than this (since it was published) when it would be handed to the
  /// consumer -- taken by a receive call, or by a handler subscription's strand -- is discarded
  /// instead and counted in SubscriptionStats::expired. > 0; the default: no limit (and no
  /// clock read per message).
  std::chrono::nanoseconds max_age = std::chrono::nanoseconds::max();
};

/// Per-publish options (Broker::publish, Publisher::publish, Broker::publish_from).
struct PublishOptions {
  /// Carried with the message to every subscriber (Message::headers), and by the NATS bridge as
  /// NATS headers. Empty: no headers, and nothing allocated for them.
  Headers headers{};
  /// Keep this message as its topic's retained message (the last one; the last N when a
  /// Broker::retain policy covers the topic), replayed to later subscribers that ask for it
  /// (SubscribeOptions::replay) and read by Broker::retained. Bounded by BrokerOptions.
  bool retain = false;
};

/// How a broker retains the messages of the topics matching a pattern (Broker::retain): every
/// publish to such a topic is retained, with or without PublishOptions::retain.
struct RetainPolicy {
  /// Messages kept per topic, the newest ones, in [1, Broker::max_retained_per_topic].
  std::size_t last = 1;
  /// A retained message older than this (since its publish, steady clock) is no longer
  /// replayed nor returned; zero: kept until replaced, cleared or evicted.
  std::chrono::nanoseconds max_age = std::chrono::nanoseconds::zero();
};

/// Broker-wide options (Broker(BrokerOptions)): the bounds of its retained messages.
/// A retained message is estimated at sizeof(T) + its topic's length + its headers' names and
/// values; what T owns on the heap is not counted. When a publish takes the store over a bound,
/// whole topics are evicted, least recently published first (BrokerStats::retained_evicted).
struct BrokerOptions {
  /// Topics with retained messages, at least 1.
  std::size_t max_retained_topics = 100'000;
  /// Estimated bytes of the retained messages, at least 1.
  std::size_t max_retained_bytes = std::size_t{64} << 20;
  /// max_age of the messages retained by PublishOptions::retain on topics no retain policy
  /// covers (see RetainPolicy::max_age); zero: no age limit.
  std::chrono::nanoseconds retained_max_age = std::chrono::nanoseconds::zero();
};

/// Throws std::invalid_argument, naming the field, unless the bounds are at least 1 and the
/// age is not negative.
inline void validate(const BrokerOptions& options) {
  const auto fail = [](const std::string& what) {
    throw std::invalid_argument("herald: BrokerOptions::" + what);
  };
  if (options.max_retained_topics == 0) fail("max_retained_topics is 0; it must be at least 1");
  if (options.max_retained_bytes == 0) fail("max_retained_bytes is 0; it must be at least 1");
  if (options.retained_max_age < std::chrono::nanoseconds::zero()) {
    fail("retained_max_age is negative (" + std::to_string(options.retained_max_age.count()) +
         " ns)");
  }
}

/// How a handler subscription retries a message whose handler threw.
/// Backoff between attempts uses "decorrelated jitter": each delay is drawn uniformly from
/// [initial_backoff, 3 x the previous delay], capped at max_backoff.
struct RetryPolicy {
  std::uint32_t max_attempts = 1;                                           ///< >= 1; 1: no retry
  std::chrono::nanoseconds initial_backoff = std::chrono::milliseconds(1);  ///< >= 0
  std::chrono::nanoseconds max_backoff = std::chrono::seconds(1);           ///< >= initial_backoff
};

/// What a dead-letter consumer receives for a message whose handler failed every attempt.
template <class T>
struct DeadLetter {
  Message<T> message;          ///< the original message (its topic, value, sequence, ...)
  std::string error;           ///< what() of the last exception, or "unknown exception"
  std::uint32_t attempts = 0;  ///< how many times the handler was called for it
  std::string pattern;         ///< the pattern of the subscription that failed
};

/// The prefix of dead-letter topics: a message on topic `orders.eu` that exhausted its retries is
/// published as DeadLetter<T> on `$DLQ.orders.eu` when the sink is a broker.
inline constexpr std::string_view dead_letter_prefix = "$DLQ.";

/// Something with `publish(topic, DeadLetter<T>)` returning a result with a `closed` flag: a
/// Broker<DeadLetter<T>> (named by what it can do, so this floor needs no broker header).
template <class B, class T>
concept DeadLetterPublisher = requires(B& b, std::string_view topic, DeadLetter<T>&& letter) {
  { b.publish(topic, std::move(letter)).closed } -> std::convertible_to<bool>;
};

/// Where a handler subscription sends the messages whose handler failed every attempt: any
/// callable `bool(DeadLetter<T>&&)` (true when it accepted the letter), or a pointer to a
/// Broker<DeadLetter<T>>, which receives each letter on `$DLQ.<original topic>` (accepted unless
/// that broker is closed). Empty: failed messages are only counted.
template <class T>
class DeadLetterSink {
 public:
  DeadLetterSink() = default;
  DeadLetterSink(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

  template <class F>
  requires(std::is_invocable_r_v<bool, F&, DeadLetter<T>&&> && !std::is_pointer_v<F>)
      DeadLetterSink(F f)
      : sink_(std::move(f)) {}  // NOLINT(google-explicit-constructor)

  template <class B>
  requires(DeadLetterPublisher<B, T>)
      DeadLetterSink(B* broker) {  // NOLINT(google-explicit-constructor)
    if (broker == nullptr) return;
    sink_ = [broker](DeadLetter<T>&& letter) {
      std::string topic(dead_letter_prefix);
      topic += letter.message.topic();
      return !broker->publish(topic, std::move(letter)).closed;
    };
  }

  explicit operator bool() const noexcept { return static_cast<bool>(sink_); }

  /// Hands over one letter; true when the sink accepted it.
  /// Throws: what the sink throws.
  bool operator()(DeadLetter<T>&& letter) const { return sink_(std::move(letter)); }

 private:
  std::function<bool(DeadLetter<T>&&)> sink_;
};

/// What a handler subscription does with a message its circuit breaker refuses.
enum class WhenOpen : std::uint8_t {
  /// Hold it (and the queue behind it, under the subscription's overflow policy, whatever the
  /// ordering) until the breaker lets a call through. It waits on a timer of the executor, as
  /// retry backoff does: no thread is held (HandlerOptions::sleep, a test hook, waits in place).
  wait,
  /// Give it up at once: to the dead-letter sink if there is one, counted in
  /// breaker_dead_lettered either way; the next message asks the breaker again.
  dead_letter,
};

/// Something a handler subscription can put in front of its handler (HandlerOptions::breaker):
/// `allow()` returns a permit that converts to bool (false: refused), and `record_success(p)` /
/// `record_failure(p)` report the outcome of a permitted call. herald::CircuitBreaker is one;
/// this floor names it by what it can do, so it needs no breaker header. An optional
/// `retry_after()` (a duration) says how long it will refuse; without it a waiting subscription
/// asks again every HandlerOptions::breaker_recheck.
template <class B>
concept CallBreaker = requires(B& b, decltype(std::declval<B&>().allow())& permit) {
  static_cast<bool>(b.allow());
  b.record_success(permit);
  b.record_failure(permit);
};

/// A shared reference to a CallBreaker (a std::shared_ptr, so the breaker lives as long as its
/// last holder: several subscriptions, and the application, may share one breaker in front of
/// one dependency). Empty: no breaker.
class BreakerRef {
 public:
  /// How a guarded call went.
  enum class Outcome : std::uint8_t { refused, succeeded, failed };

  BreakerRef() = default;
  BreakerRef(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

  template <class B>
  requires(CallBreaker<B>) BreakerRef(std::shared_ptr<B> breaker)
  noexcept  // NOLINT
      : guard_(breaker ? &guard_on<B> : nullptr),
        retry_after_(breaker ? &retry_after_on<B> : nullptr),
        target_(std::move(breaker)) {}

  explicit operator bool() const noexcept { return guard_ != nullptr; }

  /// Asks the breaker for a permit; if it grants one, runs `attempt()` (true: the call
  /// succeeded) and records the outcome. Throws: what the breaker throws.
  template <class F>
  Outcome guard(F& attempt) const {
    return guard_(target_.get(), &attempt, [](void* f) { return (*static_cast<F*>(f))(); });
  }

  /// How long the breaker says it will keep refusing (zero when it cannot tell).
  [[nodiscard]] std::chrono::nanoseconds retry_after() const { return retry_after_(target_.get()); }

 private:
  template <class B>
  static Outcome guard_on(void* target, void* f, bool (*attempt)(void*)) {
    B& breaker = *static_cast<B*>(target);
    auto permit = breaker.allow();
    if (!static_cast<bool>(permit)) return Outcome::refused;
    if (attempt(f)) {
      breaker.record_success(permit);
      return Outcome::succeeded;
    }
    breaker.record_failure(permit);
    return Outcome::failed;
  }

  template <class B>
  static std::chrono::nanoseconds retry_after_on(void* target) {
    if constexpr (requires(B & b) { b.retry_after(); }) {
      return std::chrono::duration_cast<std::chrono::nanoseconds>(
          static_cast<B*>(target)->retry_after());
    } else {
      return std::chrono::nanoseconds::zero();
    }
  }

  Outcome (*guard_)(void*, void*, bool (*)(void*)) = nullptr;
  std::chrono::nanoseconds (*retry_after_)(void*) = nullptr;
  std::shared_ptr<void> target_;
};

/// Something a handler subscription can take its pace from (HandlerOptions::rate):
/// `try_acquire()` takes one token if there is one, `time_until_available()` says how long until
/// there is. herald::RateLimiter is one; named by what it can do, so this floor needs no
/// rate_limiter header.
template <class L>
concept TokenSource = requires(L& l) {
  { l.try_acquire() } -> std::convertible_to<bool>;
  { l.time_until_available() } -> std::convertible_to<std::chrono::nanoseconds>;
};

/// A shared reference to a TokenSource (several subscriptions may share one limiter, as one
/// downstream API's quota). Empty: no limit.
class RateRef {
 public:
  RateRef() = default;
  RateRef(std::nullptr_t) noexcept {}  // NOLINT(google-explicit-constructor)

  template <class L>
  requires(TokenSource<L>) RateRef(std::shared_ptr<L> limiter)
  noexcept  // NOLINT
      : try_acquire_(limiter ? &try_on<L> : nullptr),
        wait_(limiter ? &wait_on<L> : nullptr),
        target_(std::move(limiter)) {}

  explicit operator bool() const noexcept { return try_acquire_ != nullptr; }
  /// Throws: what the limiter throws.
  [[nodiscard]] bool try_acquire() const { return try_acquire_(target_.get()); }
  /// Throws: what the limiter throws.
  [[nodiscard]] std::chrono::nanoseconds time_until_available() const {
    return wait_(target_.get());
  }

 private:
  template <class L>
  static bool try_on(void* l) {
    return static_cast<bool>(static_cast<L*>(l)->try_acquire());
  }
  template <class L>
  static std::chrono::nanoseconds wait_on(void* l) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
        static_cast<L*>(l)->time_until_available());
  }

  bool (*try_acquire_)(void*) = nullptr;
  std::chrono::nanoseconds (*wait_)(void*) = nullptr;
  std::shared_ptr<void> target_;
};

/// Skipping messages a handler subscription has already handled (HandlerOptions::dedup): an
/// idempotent consumer fed duplicates (redeliveries, retried publishes).
template <class T>
struct DedupOptions {
  /// The message's identity, e.g. an id in its payload. Empty: no deduplication.
  std::function<std::uint64_t(const Message<T>&)> key{};
  /// Remember the keys of the last this many handled messages, in [1, 2^31]...
  std::size_t max_count = 10'000;
  /// ... each for at most this long (> 0; the default: no age limit).
  std::chrono::nanoseconds max_age = std::chrono::nanoseconds::max();
};

/// What a handler subscription's later messages do while an earlier one waits for a retry
/// (HandlerOptions::ordering). Retries wait on a timer, never on a thread, in every mode.
enum class Ordering : std::uint8_t {
  /// Later messages of this subscription wait (in its queue, under its overflow policy) until
  /// the retried one succeeds or is given up: publish order, always. Other subscriptions never
  /// wait. The default.
  strict,
  /// Later messages with the same HandlerOptions::key wait behind the retried one (held in
  /// order, at most `capacity` of them); other keys go ahead.
  per_key,
  /// Later messages go ahead; the retried one runs again when its backoff ends.
  none,
};

/// When a batch handler subscription (`handler(std::span<const Message<T>>)`) calls its handler:
/// once `max_size` messages are waiting, or once the oldest of them was published `max_wait`
/// ago, whichever comes first (HandlerOptions::batch).
struct BatchOptions {
  std::size_t max_size = 100;                                         ///< in [1, 2^20]
  std::chrono::nanoseconds max_wait = std::chrono::milliseconds(10);  ///< > 0
};

/// Options that only handler subscriptions have: failure handling, a circuit breaker,
/// deduplication.
template <class T>
struct HandlerOptions {
  /// Called (on the handler's thread) after every failed attempt. Exceptions from it are ignored.
  std::function<void(const Message<T>&, std::exception_ptr)> on_error{};
  RetryPolicy retry{};
  /// Where messages that failed every attempt go (see DeadLetterSink): a callable, or a pointer
  /// to a Broker<DeadLetter<T>> (which must outlive the subscription). Empty: only counted.
  DeadLetterSink<T> dead_letters{};
  /// How backoff waits (and waits for the breaker) are done; tests inject a recorder. When set,
  /// a retry waits by calling it on the handler's thread (blocking the strand, as a sleep
  /// would; `ordering` is then moot). Empty: a retry waits on a timer of the executor
  /// (WorkerPool::schedule_at, or herald's timer thread) and no thread waits for it; waits for
  /// the breaker are on a clock, cut short by an unsubscribe.
  std::function<void(std::chrono::nanoseconds)> sleep{};
  /// What later messages do while a message waits for its retry (see Ordering).
  Ordering ordering = Ordering::strict;
  /// The ordering key of a message: messages with equal keys are handled in publish order
  /// (Ordering::per_key, which requires it), and with `concurrency` > 1 messages with equal keys
  /// go to the same lane.
  std::function<std::uint64_t(const Message<T>&)> key{};
  /// Invocations of this subscription's handler that may run at once, in [1, 1024]. 1: one at a
  /// time, in publish order (a strand). N > 1: N lanes, each a strand with its own queue of
  /// `capacity` messages; a message goes to the lane of hash(key(m)) % N when there is a `key`
  /// (equal keys: in publish order; different keys: in parallel), else to the next lane in turn
  /// (unordered, up to N at once). The handler must then be safe to call concurrently. Retries,
  /// breaker and dedup work per lane (Ordering::strict holds the retried message's lane);
  /// SubscribeOptions::max_age is checked when a message is handed to its lane.
  std::size_t concurrency = 1;
  /// Batch handler subscriptions only: when the handler is called (see BatchOptions). A batch
  /// whose call throws is counted as one failure and each of its messages goes to the
  /// dead-letter sink; batch subscriptions take no retries, breaker, dedup or concurrency.
  BatchOptions batch{};
  /// A pace for the handler, e.g. `.rate = std::make_shared<herald::RateLimiter>(100.0, 10)`:
  /// each message takes a token before its first attempt. Without one, the strand lets go of
  /// its thread and a timer of the executor resumes it when the next token is due: messages
  /// wait in the subscription's queue (under its overflow policy) and no worker sleeps. With
  /// `concurrency` > 1 the lanes share the limiter. Not for batch handlers. Empty: no limit.
  RateRef rate{};
  /// A circuit breaker in front of what the handler calls, e.g.
  /// `.breaker = std::make_shared<herald::CircuitBreaker>(...)`; the subscription shares its
  /// ownership. Every handler call, retries included, first asks it for a permit and then
  /// reports its outcome (returned: success; threw: failure), so retries stop as soon as the
  /// breaker opens. A refused message waits or is dead-lettered, per `when_open`. Empty: none.
  BreakerRef breaker{};
  /// What happens to a message the breaker refuses (see WhenOpen).
  WhenOpen when_open = WhenOpen::wait;
  /// WhenOpen::wait: how long to wait before asking the breaker again when it cannot say how
  /// long it will refuse (a CircuitBreaker says so while open; half-open with every probe slot
  /// taken it cannot). > 0.
  std::chrono::nanoseconds breaker_recheck = std::chrono::milliseconds(10);
  /// Deduplication (see DedupOptions): a message whose key is among those of the messages this
  /// subscription handled successfully within the window is skipped, counted as deduplicated.
  /// Keys are recorded once the handler succeeded, so a message that failed every attempt (or
  /// that the breaker refused) is handled again if it is redelivered.
  DedupOptions<T> dedup{};
};

/// Throws std::invalid_argument, naming the field and the value, unless every field of
/// `options` is in range: capacity in [1, max_capacity], a known Overflow, block_timeout >= 0,
/// disconnect_after >= 1, a queue group named like a topic (at most 256 bytes), a known Priority,
/// max_age > 0.
inline void validate(const SubscribeOptions& options) {
  const auto fail = [](const std::string& what) {
    throw std::invalid_argument("herald: SubscribeOptions::" + what);
  };
  if (options.capacity == 0 || options.capacity > max_capacity) {
    fail("capacity is " + std::to_string(options.capacity) + "; it must be in [1, " +
         std::to_string(max_capacity) + "]");
  }
  switch (options.overflow) {
    case Overflow::block:
    case Overflow::drop_incoming:
    case Overflow::drop_oldest:
    case Overflow::disconnect:
      break;
    default:
      fail("overflow is " + std::to_string(static_cast<int>(options.overflow)) +
           ", not an Overflow policy");
  }
  if (options.block_timeout < std::chrono::nanoseconds::zero()) {
    fail("block_timeout is negative (" + std::to_string(options.block_timeout.count()) + " ns)");
  }
  if (options.disconnect_after == 0) fail("disconnect_after is 0; it must be at least 1");
  if (options.max_age <= std::chrono::nanoseconds::zero()) {
    fail("max_age is " + std::to_string(options.max_age.count()) + " ns; it must be positive");
  }
  if (static_cast<std::size_t>(options.priority) >= priority_levels) {
    fail("priority is " + std::to_string(static_cast<int>(options.priority)) +
         ", not a Priority (high, normal or low)");
  }
  if (options.queue_group.size() > 256) {
    fail("queue_group is " + std::to_string(options.queue_group.size()) +
         " bytes long; at most 256");
  }
  for (const char c : options.queue_group) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) {
      fail("queue_group contains a space or control character (byte " + std::to_string(u) + ")");
    }
  }
  // As in NATS, queue group names follow the rules of subjects: dot-separated non-empty tokens,
  // no wildcard token.
  if (!options.queue_group.empty() && !is_valid_topic(options.queue_group)) {
    fail("queue_group '" + options.queue_group +
         "' is not a valid name (non-empty tokens separated by '.', no '*' or '>' token)");
  }
}

/// Throws std::invalid_argument, naming the field, unless the retry policy is in range:
/// max_attempts >= 1, 0 <= initial_backoff <= max_backoff.
inline void validate(const RetryPolicy& retry) {
  const auto fail = [](const std::string& what) {
    throw std::invalid_argument("herald: RetryPolicy::" + what);
  };
  if (retry.max_attempts == 0) fail("max_attempts is 0; it must be at least 1 (1: no retry)");
  if (retry.initial_backoff < std::chrono::nanoseconds::zero()) {
    fail("initial_backoff is negative (" + std::to_string(retry.initial_backoff.count()) + " ns)");
  }
  if (retry.max_backoff < retry.initial_backoff) {
    fail("max_backoff (" + std::to_string(retry.max_backoff.count()) +
         " ns) is below initial_backoff (" + std::to_string(retry.initial_backoff.count()) +
         " ns)");
  }
}

/// Throws std::invalid_argument, naming the field, unless every field of `options` is in range:
/// the retry policy (see above), a known WhenOpen, a known Ordering (per_key with a key),
/// breaker_recheck > 0, and with a dedup key
/// dedup.max_count in [1, 2^31] and dedup.max_age > 0.
template <class T>
void validate(const HandlerOptions<T>& options) {
  validate(options.retry);
  const auto fail = [](const std::string& what) {
    throw std::invalid_argument("herald: HandlerOptions::" + what);
  };
  if (options.when_open != WhenOpen::wait && options.when_open != WhenOpen::dead_letter) {
    fail("when_open is " + std::to_string(static_cast<int>(options.when_open)) +
         ", not a WhenOpen (wait or dead_letter)");
  }
  if (options.ordering != Ordering::strict && options.ordering != Ordering::per_key &&
      options.ordering != Ordering::none) {
    fail("ordering is " + std::to_string(static_cast<int>(options.ordering)) +
         ", not an Ordering (strict, per_key or none)");
  }
  if (options.ordering == Ordering::per_key && !options.key) {
    fail("ordering is per_key but HandlerOptions::key is empty: per_key needs a key function");
  }
  if (options.batch.max_size == 0 || options.batch.max_size > (std::size_t{1} << 20)) {
    fail("batch.max_size is " + std::to_string(options.batch.max_size) +
         "; it must be in [1, 2^20]");
  }
  if (options.batch.max_wait <= std::chrono::nanoseconds::zero()) {
    fail("batch.max_wait is " + std::to_string(options.batch.max_wait.count()) +
         " ns; it must be positive");
  }
  if (options.concurrency == 0 || options.concurrency > 1024) {
    fail("concurrency is " + std::to_string(options.concurrency) + "; it must be in [1, 1024]");
  }
  if (options.breaker_recheck <= std::chrono::nanoseconds::zero()) {
    fail("breaker_recheck is " + std::to_string(options.breaker_recheck.count()) +
         " ns; it must be positive");
  }
  if (options.dedup.key) {
    if (options.dedup.max_count == 0 || options.dedup.max_count > (std::size_t{1} << 31)) {
      fail("dedup.max_count is " + std::to_string(options.dedup.max_count) +
           "; it must be in [1, 2^31]");
    }
    if (options.dedup.max_age <= std::chrono::nanoseconds::zero()) {
      fail("dedup.max_age is " + std::to_string(options.dedup.max_age.count()) +
           " ns; it must be positive");
    }
  }
}

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

/// The enumerator's name, e.g. "per_key".
[[nodiscard]] constexpr std::string_view to_string(Ordering o) noexcept {
  switch (o) {
    case Ordering::strict:
      return "strict";
    case Ordering::per_key:
      return "per_key";
    case Ordering::none:
      return "none";
  }
  return "?";
}

/// The enumerator's name, e.g. "high".
[[nodiscard]] constexpr std::string_view to_string(Priority p) noexcept {
  switch (p) {
    case Priority::high:
      return "high";
    case Priority::normal:
      return "normal";
    case Priority::low:
      return "low";
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
    case CloseReason::executor_stopped:
      return "executor_stopped";
  }
  return "?";
}

}  // namespace herald
